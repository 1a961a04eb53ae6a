//! The system calls of the consumer server (`crate::consumers`): an `eventfd` the storage
//! thread writes to wake the serving thread, `sendfile(2)` of record ranges from a segment
//! file to a socket, and `send(2)` with `MSG_MORE` for a DATA frame's head (so the head, the
//! records and the trailer leave in full segments, not three small ones).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// An `eventfd` (non-blocking, close-on-exec): a counter one thread adds to and another
/// drains; readable (for epoll) while non-zero.
#[derive(Debug)]
pub(crate) struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// `eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)`.
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: no pointer arguments; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Adds 1: wakes a thread waiting for it to be readable. Never blocks (the counter
    /// saturating at `u64::MAX - 1` would be `EAGAIN`, and the reader is then awake anyway).
    pub(crate) fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: `one` is a live u64 and 8 bytes are written from it; an eventfd write
        // takes exactly 8 bytes.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Resets the counter to 0 (nothing to do when it is 0 already).
    pub(crate) fn drain(&self) {
        let mut value: u64 = 0;
        // SAFETY: `value` is a live, writable u64 and the read is of 8 bytes into it.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut value).cast(), 8) };
    }

    /// The descriptor, for epoll.
    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// `sendfile(2)`: up to `count` bytes of `file` from `*offset` to the socket `sock`,
/// advancing `*offset`; returns the bytes sent (0: the file ends at `*offset`).
///
/// # Errors
/// `WouldBlock` when the socket is full; the socket's or the file's error.
pub(crate) fn sendfile(
    sock: RawFd,
    file: &File,
    offset: &mut u64,
    count: usize,
) -> io::Result<usize> {
    let mut off = libc::off_t::try_from(*offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file offset above off_t"))?;
    loop {
        // SAFETY: `off` is a live off_t the kernel reads and updates; the descriptors'
        // validity is the kernel's to check (EBADF).
        let n = unsafe { libc::sendfile(sock, file.as_raw_fd(), &mut off, count) };
        if n >= 0 {
            *offset = off as u64;
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
}

/// `send(2)` of `buf` on the non-blocking socket `sock` (`MSG_NOSIGNAL`, and `MSG_MORE` when
/// `more`: more of the same frame follows); returns the bytes sent.
///
/// # Errors
/// `WouldBlock` when the socket is full; the socket's error (`EPIPE` for a closed peer,
/// not a signal).
pub(crate) fn send(sock: RawFd, buf: &[u8], more: bool) -> io::Result<usize> {
    let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT | if more { libc::MSG_MORE } else { 0 };
    loop {
        // SAFETY: `buf` is a live slice and the length passed is its length; the kernel only
        // reads it.
        let n = unsafe { libc::send(sock, buf.as_ptr().cast(), buf.len(), flags) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
}
