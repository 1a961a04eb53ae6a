//! Advisory whole-file locks: `flock(2)`.
//!
//! A `flock` lock belongs to the open file description: it is released when the last
//! descriptor of it is closed, and by the kernel when the process dies (even by `kill -9`),
//! so a lock file left behind by a dead process never blocks anyone.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Whether [`try_lock_exclusive`] got the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flock {
    /// The lock is now held through `file`.
    Acquired,
    /// Another open file description holds a lock on the file.
    Held,
}

/// `flock(fd, LOCK_EX | LOCK_NB)`: takes an exclusive lock on `file` without waiting.
///
/// # Errors
/// Any `flock` error other than `EWOULDBLOCK` (e.g. `ENOLCK`), retried on `EINTR`.
pub(crate) fn try_lock_exclusive(file: &File) -> io::Result<Flock> {
    loop {
        // SAFETY: `file` is an open file for the duration of the call, so its descriptor is
        // valid; flock reads no memory of ours.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Flock::Acquired);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(Flock::Held),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}
