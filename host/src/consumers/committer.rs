//! Named consumers' COMMITs are made durable off the serving thread ([`Committer`]): a
//! helper thread writes and fsyncs each position file (a few hundred microseconds to many
//! milliseconds on a busy disk) while the serving thread goes on sending every consumer's
//! DATA. Each result comes back through a channel, and the helper wakes the serving thread
//! through the watermarks' eventfd; the connection then gets its COMMITTED. One helper, first
//! in first out: a connection's COMMITTEDs keep the order of its COMMITs.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;

use super::ConsumerShared;
use super::positions;
use crate::storage::layout::LogId;

/// A position to store, for the connection behind `token`.
#[derive(Debug)]
pub struct Job {
    /// The connection's epoll token.
    pub token: u64,
    /// The log.
    pub log: LogId,
    /// The consumer's name.
    pub name: String,
    /// The offset to store.
    pub offset: u64,
}

/// A job done: stored, or why not.
#[derive(Debug)]
pub struct Done {
    /// The job.
    pub job: Job,
    /// `Err`: the position could not be stored (the old one stays).
    pub result: Result<(), String>,
}

/// The helper thread and its two channels.
#[derive(Debug)]
pub struct Committer {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Committer {
    /// Starts the helper, storing below `dir` and waking the server through `shared`.
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn start(dir: PathBuf, shared: Arc<ConsumerShared>) -> io::Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (tx, done) = mpsc::channel::<Done>();
        let thread = thread::Builder::new()
            .name("pinstream-commits".into())
            .spawn(move || {
                for job in rx {
                    let result = positions::store(&dir, job.log, &job.name, job.offset)
                        .map_err(|e| e.to_string());
                    if tx.send(Done { job, result }).is_err() {
                        return;
                    }
                    shared.marks.wake_now();
                }
            })?;
        Ok(Self {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }

    /// Hands a position to the helper; `false` when it is gone (it never is while the
    /// server runs).
    pub fn submit(&self, job: Job) -> bool {
        self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok())
    }

    /// The next job done, if any.
    pub fn try_done(&self) -> Option<Done> {
        // Empty, or the helper is gone (it never is while the server runs): nothing.
        self.done.try_recv().ok()
    }
}

impl Drop for Committer {
    /// Lets the helper finish the positions handed to it (they are made durable), then joins
    /// it.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
