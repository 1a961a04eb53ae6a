//! Socket syscalls std does not offer: `epoll`, `recvmmsg` (with sender addresses and the
//! kernel's drop count, `SO_RXQ_OVFL`) and socket options.

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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
    /// The sender of each datagram of the last `recv` (`None`: not an IPv4/IPv6 address).
    peers: Vec<Option<IpAddr>>,
    /// The kernel's cumulative drop count of the socket (`SO_RXQ_OVFL`) as the newest
    /// datagram of the last `recv` that carried one reported it.
    drops: Option<u32>,
    iovecs: Vec<libc::iovec>,
    /// One sender address per datagram (`msg_name`).
    names: Vec<libc::sockaddr_storage>,
    /// [`CONTROL_WORDS`] words of control messages per datagram (`msg_control`), u64 for
    /// the alignment a `cmsghdr` needs.
    controls: Vec<u64>,
    headers: Vec<libc::mmsghdr>,
}

/// Control-message room per datagram, in u64 words: 64 bytes, more than the one
/// `SO_RXQ_OVFL` message needs (`CMSG_SPACE(4)` = 24 bytes on 64-bit Linux).
const CONTROL_WORDS: usize = 8;

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
            peers: vec![None; batch],
            drops: None,
            iovecs: Vec::with_capacity(batch),
            // SAFETY: all zeroes is a valid `sockaddr_storage` (family AF_UNSPEC).
            names: vec![unsafe { mem::zeroed() }; batch],
            controls: vec![0; batch * CONTROL_WORDS],
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
        // `names` and `controls` are complete too and never grow: their buffers stay put.
        let names = this.names.as_mut_ptr();
        let controls = this.controls.as_mut_ptr();
        for i in 0..batch {
            // SAFETY: all zeroes is a valid `mmsghdr` (null pointers, zero lengths).
            let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
            // SAFETY: `i < batch = iovecs.len()`.
            h.msg_hdr.msg_iov = unsafe { iov.add(i) };
            h.msg_hdr.msg_iovlen = 1;
            // SAFETY: `i < batch = names.len()`.
            h.msg_hdr.msg_name = unsafe { names.add(i) }.cast();
            // SAFETY: `i * CONTROL_WORDS < batch * CONTROL_WORDS = controls.len()`.
            h.msg_hdr.msg_control = unsafe { controls.add(i * CONTROL_WORDS) }.cast();
            this.headers.push(h);
        }
        this.reset_lengths();
        this
    }

    /// The lengths the kernel overwrites on each call: the room of each name and control
    /// buffer, the flags and the datagram length.
    fn reset_lengths(&mut self) {
        for h in &mut self.headers {
            h.msg_len = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_controllen = CONTROL_WORDS * mem::size_of::<u64>();
        }
    }

    /// One `recvmmsg(MSG_DONTWAIT)` on `fd`: how many datagrams arrived (0 when none).
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.reset_lengths();
        self.drops = None;
        // SAFETY: `headers` holds `len()` initialised `mmsghdr`s whose single iovec points at
        // a distinct `size`-byte region of `bufs`, whose name points at a distinct
        // `sockaddr_storage` of `names` with `msg_namelen` its size, and whose control
        // buffer is a distinct, 8-byte aligned `msg_controllen`-byte region of `controls`,
        // all owned by `self` and alive for the call; a null timeout is allowed.
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
            let h = &self.headers[i];
            self.lens[i] = h.msg_len as usize;
            self.truncated[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.peers[i] = peer_ip(&self.names[i], h.msg_hdr.msg_namelen);
            if let Some(d) = rxq_overflow(&h.msg_hdr) {
                self.drops = Some(d);
            }
        }
        Ok(n)
    }

    /// The sender's IP address of datagram `i` of the last `recv`.
    pub(crate) fn peer(&self, i: usize) -> Option<IpAddr> {
        self.peers.get(i).copied().flatten()
    }

    /// The socket's cumulative count of datagrams the kernel dropped (receive queue full),
    /// as the newest datagram of the last `recv` that carried it reported it: the count
    /// arrives with the first datagram queued after a drop. Needs
    /// [`enable_drop_count`] on the socket.
    pub(crate) fn kernel_drops(&self) -> Option<u32> {
        self.drops
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

/// The IP address in a `sockaddr_storage` the kernel filled with `len` bytes.
fn peer_ip(name: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<IpAddr> {
    let len = len as usize;
    match libc::c_int::from(name.ss_family) {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the kernel wrote an AF_INET address of at least `sockaddr_in`'s size
            // into this storage, which is larger and at least as aligned.
            let v4 = unsafe { &*(&raw const *name).cast::<libc::sockaddr_in>() };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for an AF_INET6 address and `sockaddr_in6`.
            let v6 = unsafe { &*(&raw const *name).cast::<libc::sockaddr_in6>() };
            Some(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// The `SO_RXQ_OVFL` drop count among the control messages `recvmmsg` returned in `hdr`.
fn rxq_overflow(hdr: &libc::msghdr) -> Option<u32> {
    if hdr.msg_control.is_null() || hdr.msg_controllen == 0 {
        return None;
    }
    // SAFETY: `hdr` is a header the kernel just filled: `msg_control` points at our aligned
    // control buffer and `msg_controllen` is the length of the messages it wrote there
    // (at most the room we gave). CMSG_FIRSTHDR / CMSG_NXTHDR only return headers that
    // lie within that length, or null.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(hdr) };
    let mut found = None;
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is non-null and within the control buffer (see above).
        let c = unsafe { &*cmsg };
        if c.cmsg_level == libc::SOL_SOCKET
            && c.cmsg_type == libc::SO_RXQ_OVFL
            && c.cmsg_len as usize >= mem::size_of::<libc::cmsghdr>() + mem::size_of::<u32>()
        {
            // SAFETY: the message's length covers a u32 of data after its header;
            // CMSG_DATA points at it, maybe unaligned for a u32, hence read_unaligned.
            found = Some(unsafe { libc::CMSG_DATA(cmsg).cast::<u32>().read_unaligned() });
        }
        // SAFETY: `hdr` and `cmsg` as above; the next header or null.
        cmsg = unsafe { libc::CMSG_NXTHDR(hdr, cmsg) };
    }
    found
}

/// Asks the kernel to report with received datagrams how many it dropped on this socket
/// (`SO_RXQ_OVFL`: a control message with the cumulative count, read by [`RecvBatch`]).
pub(crate) fn enable_drop_count(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `on` is a live c_int and the length passed is its size; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RXQ_OVFL,
            (&raw const on).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
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
