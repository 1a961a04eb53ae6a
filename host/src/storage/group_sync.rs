//! Group commit across logs: [`GroupSync`] fdatasyncs several logs at once on helper
//! threads started once. [`GroupSync::start`] writes the logs' buffers and hands the
//! fdatasyncs out; the caller goes on (appending to the logs, which the syncs do not
//! cover) until [`GroupSync::finish`] waits for them and ends each in its log.
//!
//! The engine commits up to five logs per group commit (realtime, transactional, batch,
//! dead letters, aggregates). One after the other, their fdatasyncs add up; at the same time, the disk
//! and ext4's journal serve them together. Measured on this machine's virtual disk (ext4; a
//! small C program appending 40 KB to each file, then syncing them one after the other or on
//! threads woken through a barrier; 400 rounds, two runs):
//!
//! | logs synced | one after the other, p50 | at the same time, p50 |
//! | ---: | ---: | ---: |
//! | 2 | 501–589 µs | 422–484 µs |
//! | 3 | 808–866 µs | 560–609 µs |
//! | 4 | 1 184–1 242 µs | 636–639 µs |
//!
//! In the engine (`pinstream loadgen --events 5000000 --priority
//! critical:1,high:1,medium:1,low:1,batch:1`, three logs per commit, three runs each, fresh
//! engine): one after the other, 1.64–1.90 M events/s stored and 1.75–1.92 s spent in
//! commits (`pinstream_stage_latency_seconds_sum{stage="commit"}`); at the same time,
//! 2.30–2.82 M/s and 1.07–1.22 s. See the README's issue-12 table for the whole story.
//!
//! The helpers are plain threads, not pinned (they inherit the creating thread's CPU mask),
//! asleep on a condition variable between commits; handing them a sync moves a
//! [`SyncJob`] (a reference-counted file) through a mutex-guarded slot: no allocation per
//! commit. Every sync's outcome is given back to its log ([`Log::end_sync`]), so a failure
//! poisons that log exactly as a sync on the calling thread would, and the log's sync count
//! counts the fdatasyncs that really ran.

use std::io;
use std::mem;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{Log, StorageError, SyncJob};

/// What a helper's slot holds.
#[derive(Debug)]
enum State {
    /// Nothing to do.
    Idle,
    /// A sync to run, for the log at this index.
    Job(usize, SyncJob),
    /// A sync that ran, with its outcome.
    Done(usize, SyncJob, io::Result<Duration>),
    /// The helper ends.
    Stop,
}

/// The hand-over point between the caller and one helper.
#[derive(Debug)]
struct Slot {
    state: Mutex<State>,
    /// Notified when `state` changes (a job posted, a job done, stop).
    changed: Condvar,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A helper never panics while holding the lock; if one did, the state is still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, state: State) {
        *self.lock() = state;
        self.changed.notify_all();
    }
}

#[derive(Debug)]
struct Helper {
    slot: Arc<Slot>,
    thread: Option<JoinHandle<()>>,
}

/// Syncs several [`Log`]s at the same time (see the module docs).
#[derive(Debug)]
pub struct GroupSync {
    /// Started once by [`new`](Self::new); never grows.
    helpers: Vec<Helper>,
    /// Helpers `0..posted` hold a sync of the group in flight (given out by `start`, not yet
    /// ended by `finish`).
    posted: usize,
}

impl GroupSync {
    /// Starts `helpers` helper threads: a group sync then runs up to `helpers` fdatasyncs
    /// off the caller's thread. With 0 it starts none and syncs on the caller's thread.
    ///
    /// # Errors
    /// When a thread cannot be started (those started are stopped again).
    pub fn new(helpers: usize) -> io::Result<Self> {
        let mut group = GroupSync {
            helpers: Vec::with_capacity(helpers),
            posted: 0,
        };
        for n in 0..helpers {
            let slot = Arc::new(Slot {
                state: Mutex::new(State::Idle),
                changed: Condvar::new(),
            });
            let theirs = Arc::clone(&slot);
            // On failure `group` is dropped, which stops the helpers already started.
            let thread = thread::Builder::new()
                .name(format!("pinstream-sync-{}", n + 1))
                .spawn(move || serve(&theirs))?;
            group.helpers.push(Helper {
                slot,
                thread: Some(thread),
            });
        }
        Ok(group)
    }

    /// fdatasyncs every log of `logs` whose `which` entry is true and that has written data
    /// not yet synced, at the same time, and returns when all have ended:
    /// [`start`](Self::start) then [`finish`](Self::finish).
    ///
    /// # Errors
    /// As [`start`](Self::start) and [`finish`](Self::finish).
    pub fn sync(&mut self, logs: &mut [Log], which: &[bool]) -> Result<(), (usize, StorageError)> {
        self.start(logs, which)?;
        self.finish(logs)
    }

    /// Begins the sync of every log of `logs` whose `which` entry is true and that has
    /// written data not yet synced ([`Log::begin_sync`]: the buffer is written now) and
    /// hands each fdatasync to a helper, then returns: the caller may append to the logs
    /// meanwhile (that is not covered). A sync beyond the helpers' number runs here.
    /// [`finish`](Self::finish) ends them.
    ///
    /// # Errors
    /// The first failure in log order, with the log's index, of a write or of a sync run
    /// here; the syncs already handed out are finished first (their logs stay
    /// consistent). The failed log is poisoned.
    ///
    /// # Panics
    /// When the previous group sync was not finished.
    pub fn start(&mut self, logs: &mut [Log], which: &[bool]) -> Result<(), (usize, StorageError)> {
        assert_eq!(
            self.posted, 0,
            "GroupSync::start: the last one was not finished"
        );
        for (i, log) in logs.iter_mut().enumerate() {
            if !which.get(i).copied().unwrap_or(false) {
                continue;
            }
            let outcome = match log.begin_sync() {
                Ok(Some(job)) => match self.helpers.get(self.posted) {
                    Some(helper) => {
                        helper.slot.set(State::Job(i, job));
                        self.posted += 1;
                        Ok(())
                    }
                    None => {
                        let result = job.run();
                        log.end_sync(job, result, Instant::now())
                    }
                },
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                self.finish(logs)?;
                return Err((i, e));
            }
        }
        Ok(())
    }

    /// Whether the syncs handed out by [`start`](Self::start) have all returned (then
    /// [`finish`](Self::finish) does not wait); true when none are out.
    pub fn is_done(&self) -> bool {
        self.helpers[..self.posted]
            .iter()
            .all(|h| matches!(*h.slot.lock(), State::Done(..)))
    }

    /// Whether syncs handed out by [`start`](Self::start) wait for [`finish`](Self::finish).
    pub fn in_flight(&self) -> bool {
        self.posted > 0
    }

    /// Waits for the syncs handed out by [`start`](Self::start) and ends each in its log
    /// ([`Log::end_sync`]) with the same end time: every log's next interval counts from the
    /// end of the whole group. Nothing to do when none are out.
    ///
    /// # Errors
    /// The first failed fdatasync in log order, with the log's index (every other sync
    /// still ran and was ended). The failed log is poisoned.
    pub fn finish(&mut self, logs: &mut [Log]) -> Result<(), (usize, StorageError)> {
        let now = self.wait_all(self.posted);
        let posted = std::mem::replace(&mut self.posted, 0);
        self.collect(logs, posted, now, Ok(()))
    }

    /// Waits until the first `posted` helpers are done; returns when the last finished.
    fn wait_all(&self, posted: usize) -> Instant {
        for helper in &self.helpers[..posted] {
            let mut state = helper.slot.lock();
            while !matches!(*state, State::Done(..)) {
                state = helper
                    .slot
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
        Instant::now()
    }

    /// Ends the syncs of the first `posted` helpers (all done) in their logs; returns
    /// `first`, or else the first failure among them.
    fn collect(
        &self,
        logs: &mut [Log],
        posted: usize,
        now: Instant,
        first: Result<(), (usize, StorageError)>,
    ) -> Result<(), (usize, StorageError)> {
        let mut outcome = first;
        for helper in &self.helpers[..posted] {
            let State::Done(i, job, result) = mem::replace(&mut *helper.slot.lock(), State::Idle)
            else {
                unreachable!("wait_all returned before the helper was done");
            };
            let ended = logs[i].end_sync(job, result, now);
            if let (Ok(()), Err(e)) = (&outcome, ended) {
                outcome = Err((i, e));
            }
        }
        outcome
    }
}

impl Drop for GroupSync {
    fn drop(&mut self) {
        // A helper still syncing would overwrite `Stop` with `Done`: let it finish first.
        self.wait_all(self.posted);
        for helper in &mut self.helpers {
            helper.slot.set(State::Stop);
            if let Some(thread) = helper.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// A helper thread: runs each job posted to `slot` and hands it back with its outcome.
fn serve(slot: &Slot) {
    let mut state = slot.lock();
    loop {
        match mem::replace(&mut *state, State::Idle) {
            State::Job(i, job) => {
                drop(state);
                let result = job.run();
                state = slot.lock();
                *state = State::Done(i, job, result);
                slot.changed.notify_all();
            }
            State::Stop => return,
            other => {
                *state = other;
                state = slot
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
    }
}
