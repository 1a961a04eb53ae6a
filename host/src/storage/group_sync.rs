//! Group commit across logs: [`GroupSync`] fdatasyncs several logs at once, one on the
//! calling thread and the others on helper threads started once, and returns when all are
//! done.
//!
//! The engine commits up to four logs per group commit (realtime, transactional, batch,
//! dead letters). One after the other, their fdatasyncs add up; at the same time, the disk
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
}

impl GroupSync {
    /// Starts `helpers` helper threads: [`sync`](Self::sync) then syncs up to
    /// `helpers + 1` logs at once. With 0 it starts none and syncs on the caller's thread.
    ///
    /// # Errors
    /// When a thread cannot be started (those started are stopped again).
    pub fn new(helpers: usize) -> io::Result<Self> {
        let mut group = GroupSync {
            helpers: Vec::with_capacity(helpers),
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
    /// not yet synced ([`Log::begin_sync`]), at the same time, and ends each sync in its
    /// log ([`Log::end_sync`]) with the same end time. Returns when all have ended.
    ///
    /// # Errors
    /// The first failure in log order, with the log's index: a failed write (then nothing
    /// was synced) or a failed fdatasync (every other sync still ran and was ended). The
    /// failed log is poisoned.
    ///
    /// # Panics
    /// When more logs need a sync than there are helpers plus one.
    pub fn sync(&mut self, logs: &mut [Log], which: &[bool]) -> Result<(), (usize, StorageError)> {
        let mut own: Option<(usize, SyncJob)> = None;
        let mut posted = 0;
        for (i, log) in logs.iter_mut().enumerate() {
            if !which.get(i).copied().unwrap_or(false) {
                continue;
            }
            let job = match log.begin_sync() {
                Ok(Some(job)) => job,
                Ok(None) => continue,
                Err(e) => {
                    // Jobs already posted still run and end: their logs stay consistent.
                    let now = self.wait_all(posted);
                    self.collect(logs, posted, now, Ok(()))?;
                    return Err((i, e));
                }
            };
            if own.is_none() {
                own = Some((i, job));
                continue;
            }
            let helper = self
                .helpers
                .get(posted)
                .expect("GroupSync: more logs to sync than helpers + 1");
            helper.slot.set(State::Job(i, job));
            posted += 1;
        }
        let Some((i, job)) = own else {
            return Ok(());
        };
        let result = job.run();
        // Every log's next interval counts from the end of the whole commit: nothing was
        // appended to any of them in between.
        let wait_end = self.wait_all(posted);
        let first = logs[i].end_sync(job, result, wait_end).map_err(|e| (i, e));
        self.collect(logs, posted, wait_end, first)
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
