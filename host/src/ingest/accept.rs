//! Taking connections in: `accept`, the per-address limit, the connection slots (a slot
//! keeps its buffers for the next connection), and the rest the listener takes when
//! `accept` fails for want of file descriptors or memory.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use crate::sys::net::{EPOLLET, EPOLLIN, EPOLLOUT, EPOLLRDHUP, set_send_buffer};

use super::addrs::PeerCounts;
use super::conn::Conn;
use super::{Ingest, LISTENER, SourceId, ratekeys};

/// How long the listener is not polled after `accept` failed for want of a resource (file
/// descriptors, memory), in ticks (100 ms): the kernel keeps the connections queued
/// meanwhile, and the ingest thread does not spin on a listener it cannot serve.
const ACCEPT_BACKOFF: u64 = 100_000_000;

impl<const P: usize, const POOL: usize, const LANE: usize, const DL: usize>
    Ingest<'_, P, POOL, LANE, DL>
{
    pub(super) fn accept(&mut self) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((stream, addr)) => self.admit(stream, addr, false),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The peer reset before it was accepted: that connection is gone, the next
                // one may be fine.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {
                    self.counters.tcp_accept_errors.incr();
                }
                // Out of file descriptors (EMFILE, ENFILE) or memory: the listener stays
                // readable, so polling it again at once would spin. Rest it a while; the
                // kernel keeps the connections queued.
                Err(_) => {
                    self.counters.tcp_accept_errors.incr();
                    self.pause_accepting();
                    return;
                }
            }
        }
    }

    /// Admits an accepted connection (`handed_over`: a Unix socket from the TLS terminator
    /// with its client's address), or refuses it (closed at once, counted) at the limits.
    fn admit(&mut self, stream: std::net::TcpStream, addr: SocketAddr, handed_over: bool) {
        self.counters.tcp_accepted.incr();
        let peer = PeerCounts::key(addr.ip());
        if self.peers.count(peer) as usize >= self.limits.max_connections_per_ip {
            // This address has its share: closed at once, counted.
            self.counters.tcp_refused.incr();
            self.counters.tcp_refused_per_ip.incr();
            return;
        }
        let refuse = self.shared.storage_failed.load(Ordering::Relaxed);
        let slot = if refuse { None } else { self.take_slot() };
        let Some(slot) = slot else {
            // Over the limit (or storage failed): closed at once, counted.
            self.counters.tcp_refused.incr();
            return;
        };
        match self.open_conn(slot, stream, addr, handed_over) {
            Ok(()) => {
                self.peers.add(peer);
                if let Some(conn) = self.conns[slot].as_mut() {
                    conn.peer = Some(peer);
                }
            }
            Err(_e) => {
                self.counters.tcp_closed.incr();
                self.counters.tcp_closed_error.incr();
                self.free.push(slot);
            }
        }
    }

    /// Admits the connections the TLS terminator handed over. Returns whether there were
    /// any.
    pub(super) fn take_handoffs(&mut self) -> bool {
        let mut any = false;
        while let Some(h) = self.tls.as_mut().and_then(|rx| rx.pop()) {
            any = true;
            // A stream socket all the same (see `handoff`): read, write, shutdown and
            // epoll are what the connection does with it.
            let stream = std::net::TcpStream::from(std::os::fd::OwnedFd::from(h.stream));
            self.admit(stream, h.peer, true);
        }
        any
    }

    /// Takes the listener out of epoll for [`ACCEPT_BACKOFF`].
    fn pause_accepting(&mut self) {
        if let Some(l) = &self.listener {
            let _ = self.epoll.delete(l.as_raw_fd());
            self.accept_paused_until = Some(self.now + ACCEPT_BACKOFF);
        }
    }

    /// Puts the listener back into epoll (level-triggered: queued connections are reported
    /// at once).
    pub(super) fn resume_accepting(&mut self) {
        self.accept_paused_until = None;
        if let Some(l) = &self.listener {
            if self.epoll.add(l.as_raw_fd(), EPOLLIN, LISTENER).is_err() {
                // Out of memory for the epoll entry too: try again after another rest.
                self.accept_paused_until = Some(self.now + ACCEPT_BACKOFF);
            }
        }
    }

    /// A slot for a new connection: a free one with buffers, or a never-used one.
    fn take_slot(&mut self) -> Option<usize> {
        if let Some(slot) = self.free.pop() {
            return Some(slot);
        }
        // The gateway's slot, after the TCP slots, is never handed out.
        let gateway = usize::from(self.gateway_slot.is_some_and(|s| self.open.contains(&s)));
        let used = self.open.len() - gateway + self.free.len();
        (used < self.limits.max_connections).then_some(used)
    }

    fn open_conn(
        &mut self,
        slot: usize,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        handed_over: bool,
    ) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        if !handed_over {
            // A Unix socket has no Nagle to turn off.
            stream.set_nodelay(true)?;
        }
        // The kernel's buffer for our replies is bounded like ours: a client that does not
        // read shows up as a stall within about twice `send_buffer` bytes, not megabytes.
        set_send_buffer(stream.as_raw_fd(), self.limits.send_buffer)?;
        self.epoll.add(
            stream.as_raw_fd(),
            EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
            slot as u64 + 1,
        )?;
        self.generations[slot] = self.generations[slot].wrapping_add(1);
        let source = SourceId::tcp(slot, self.generations[slot]);
        let limits = &self.limits;
        let conn = self.conns[slot].get_or_insert_with(|| {
            Conn::with_buffers(
                limits.recv_buffer,
                limits.send_buffer,
                limits.inflight_frames,
            )
        });
        conn.reset(stream, source, self.now, limits.max_frame_len);
        conn.batch_events_stored = self.batch_events_stored;
        // Limited as its address until a version-2 HELLO names a producer.
        conn.rate_key = self.rate_keys.acquire(
            ratekeys::Client::address(peer.ip()),
            self.now,
            self.counters,
        );
        self.open.push(slot);
        self.counters.tcp_open.set(self.open.len() as u64);
        Ok(())
    }
}
