//! Socket syscalls std does not offer: `epoll` and `recvmmsg`.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Readable.
pub(crate) const EPOLLIN: u32 = libc::EPOLLIN as u32;
/// Writable.
pub(crate) const EPOLLOUT: u32 = libc::EPOLLOUT as u32;
/// The peer closed its writing side.
pub(crate) const EPOLLRDHUP: u32 = libc::EPOLLRDHUP as u32;
/// Error or hang-up (always reported).
pub(crate) const EPOLLERR_HUP: u32 = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
/// Edge-triggered.
pub(crate) const EPOLLET: u32 = libc::EPOLLET as u32;

/// An epoll instance; closed on drop.
#[derive(Debug)]
pub(crate) struct Epoll {
    fd: OwnedFd,
}

/// One readiness event: the token registered with the fd, and the event bits.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Ready {
    pub(crate) token: u64,
    pub(crate) events: u32,
}

impl Epoll {
    /// `epoll_create1(EPOLL_CLOEXEC)`.
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: no pointer arguments; the result is checked below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid `epoll_event` for the duration of the call; the kernel
        // copies it. `fd` validity is the kernel's to check (EBADF).
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Watches `fd` for `events`, reporting `token`.
    pub(crate) fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    /// Stops watching `fd` (closing it does that too).
    pub(crate) fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits up to `timeout_ms` (0: poll, -1: forever) and fills `out` with what is ready;
    /// returns how many. EINTR is zero events, not an error.
    pub(crate) fn wait(&self, out: &mut [Ready], timeout_ms: i32) -> io::Result<usize> {
        const MAX: usize = 256;
        let mut raw: [libc::epoll_event; MAX] = [libc::epoll_event { events: 0, u64: 0 }; MAX];
        let max = out.len().min(MAX) as libc::c_int;
        // SAFETY: `raw` has room for `max` events, and the kernel writes at most `max`.
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), raw.as_mut_ptr(), max, timeout_ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(err)
            };
        }
        let n = n as usize;
        for (dst, src) in out.iter_mut().zip(&raw[..n]) {
            *dst = Ready {
                token: src.u64,
                events: src.events,
            };
        }
        Ok(n)
    }
}

/// Buffers for `recvmmsg`: `batch` datagrams of up to `size` bytes each, allocated once.
pub(crate) struct RecvBatch {
    bufs: Vec<u8>,
    size: usize,
    lens: Vec<usize>,
    truncated: Vec<bool>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside `iovecs` and `headers` point into `bufs` / `iovecs`, which
// this value owns and moves with it (heap buffers do not move when the Vec does); nothing
// else aliases them.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// Room for `batch` datagrams of `size` bytes.
    pub(crate) fn new(batch: usize, size: usize) -> Self {
        let batch = batch.max(1);
        let size = size.max(1);
        let mut this = Self {
            bufs: vec![0; batch * size],
            size,
            lens: vec![0; batch],
            truncated: vec![false; batch],
            iovecs: Vec::with_capacity(batch),
            headers: Vec::with_capacity(batch),
        };
        // One base pointer per buffer, offsets from it: taking a fresh `&mut` of the whole
        // Vec per element would invalidate the pointers taken before (Stacked Borrows).
        let base = this.bufs.as_mut_ptr();
        for i in 0..batch {
            this.iovecs.push(libc::iovec {
                // SAFETY: `i * size < batch * size = bufs.len()`: inside the allocation.
                iov_base: unsafe { base.add(i * size) }.cast(),
                iov_len: size,
            });
        }
        // `iovecs` is complete and never pushed to again: its buffer stays where it is.
        let iov = this.iovecs.as_mut_ptr();
        for i in 0..batch {
            // SAFETY: all zeroes is a valid `mmsghdr` (null pointers, zero lengths).
            let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
            // SAFETY: `i < batch = iovecs.len()`.
            h.msg_hdr.msg_iov = unsafe { iov.add(i) };
            h.msg_hdr.msg_iovlen = 1;
            this.headers.push(h);
        }
        this
    }

    /// One `recvmmsg(MSG_DONTWAIT)` on `fd`: how many datagrams arrived (0 when none).
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for h in &mut self.headers {
            h.msg_len = 0;
            h.msg_hdr.msg_flags = 0;
        }
        // SAFETY: `headers` holds `len()` initialised `mmsghdr`s whose single iovec points at
        // a distinct `size`-byte region of `bufs`, all owned by `self` and alive for the call;
        // no address buffers are given (msg_name is null); a null timeout is allowed.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                self.headers.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(err),
            };
        }
        let n = n as usize;
        for i in 0..n {
            self.lens[i] = self.headers[i].msg_len as usize;
            self.truncated[i] = self.headers[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        Ok(n)
    }

    /// Datagram `i` of the last `recv`, and whether the kernel cut it to the buffer size.
    pub(crate) fn datagram(&self, i: usize) -> (&[u8], bool) {
        let start = i * self.size;
        (
            &self.bufs[start..start + self.lens[i].min(self.size)],
            self.truncated[i],
        )
    }
}

/// Sets the kernel's send buffer of a socket (`SO_SNDBUF`; Linux doubles the value for its
/// bookkeeping and clamps it to `net.core.wmem_max`).
pub(crate) fn set_send_buffer(fd: RawFd, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `value` is a live c_int and the length passed is its size; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw const value).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
