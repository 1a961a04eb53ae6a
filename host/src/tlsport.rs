//! TLS on the binary TCP port (`tcp.tls_cert`, `tcp.tls_key`, `tcp.tls_client_ca`): a
//! terminator thread off the pinned engine CPUs, so the ingest thread stays as it is (no TLS
//! work, no allocation; kernel TLS is not assumed).
//!
//! The terminator owns the public listener. For each connection it does the rustls
//! handshake (within `tcp.tls_handshake_timeout_ms`), then makes a
//! `socketpair(AF_UNIX, SOCK_STREAM)` and hands one end, with the client's real address, to
//! the ingest thread through a bounded ring ([`crate::ingest::Handoff`]); the ingest thread
//! serves it as an accepted TCP connection. The terminator then pumps bytes both ways
//! between the TLS session and its end of the pair, on its own edge-triggered epoll.
//!
//! **Back-pressure**: every buffer is bounded and nothing is dropped. Client → engine: TLS
//! records are read only while rustls wants them (its plaintext buffer has room) and the
//! plaintext only while the connection's buffer (`tcp.recv_buffer` bytes) has room, which
//! empties only as fast as the ingest thread reads; so a full engine fills the client's TCP
//! window, as on a plain port. Engine → client: replies are read from the pair only once
//! rustls has written everything it holds to the client.
//!
//! **Closing**: a client's `close_notify` or end of stream becomes a `shutdown(SHUT_WR)` of
//! the pair once its plaintext is delivered (the ingest thread sees the end of stream it
//! would see on TCP); the engine closing the connection (a REJECT limit, a timeout,
//! shutdown) becomes a `close_notify` and a TCP `shutdown(SHUT_WR)` after the last reply
//! (a client that does not read them is closed 10 s after the engine let go); a reset or
//! error on either side closes both.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustls::ServerConnection;

use crate::ingest::{Handoff, HandoffTx, Shared};
use crate::stats::HostCounters;
use crate::sys::net::{EPOLLET, EPOLLIN, EPOLLOUT, EPOLLRDHUP, Epoll, Ready};

/// `tcp.tls_*` as the engine runs them.
#[derive(Clone, Debug)]
pub struct TcpTlsSettings {
    /// The certificate, key and optional client CA files.
    pub files: crate::gateway::TlsFiles,
    /// `tcp.tls_handshake_timeout_ms`.
    pub handshake_timeout: Duration,
    /// `tcp.tls_cpu`: the terminator thread's CPU (`None`: not pinned).
    pub cpu: Option<usize>,
}

impl TcpTlsSettings {
    /// `[tcp]`'s TLS settings, `None` when `tcp.tls_cert` is not set.
    pub fn from_config(t: &crate::config::TcpSection) -> Option<Self> {
        Some(Self {
            files: t.tls_files()?,
            handshake_timeout: Duration::from_millis(t.tls_handshake_timeout_ms),
            cpu: t.tls_cpu,
        })
    }
}

/// What the terminator thread is given.
pub struct TlsPortRun<'a> {
    /// The public listener (`tcp.listen`).
    pub listener: TcpListener,
    /// The rustls server configuration ([`crate::gateway::tcp_server_config`]).
    pub config: Arc<rustls::ServerConfig>,
    /// `tcp.tls_handshake_timeout_ms`.
    pub handshake_timeout: Duration,
    /// TLS sessions open at once at most (`tcp.max_connections`): more are closed at once.
    pub max_sessions: usize,
    /// Where handed-over connections go.
    pub handoff: HandoffTx<'a>,
    /// The engine's flags: the thread ends once the ingest thread has.
    pub shared: &'a Shared,
    /// The `tls_*` counters.
    pub counters: &'a HostCounters,
}

const LISTENER: u64 = 0;
/// How often handshake and closing deadlines are checked.
const TICK: Duration = Duration::from_millis(50);
/// How long a connection the engine closed waits for the client's end of stream after the
/// `close_notify` before it is closed anyway.
const LINGER: Duration = Duration::from_secs(1);
/// How long the last replies and the `close_notify` of a connection the engine closed may
/// wait for a client that does not read before the connection is closed anyway (the engine
/// has let go of it; its own stall timeout has usually passed already).
const LAST_REPLIES: Duration = Duration::from_secs(10);
/// How long the thread keeps flushing the last replies once the ingest thread has ended.
const LAST_FLUSH: Duration = Duration::from_secs(2);
/// Bytes of client plaintext a session holds for the ingest thread (beyond what rustls
/// holds): enough for a few records, so the pair's socket buffer is the queue.
const PLAINTEXT: usize = 64 * 1024;
/// Replies read from the pair per round (rustls seals them into one or two records).
const REPLY_CHUNK: usize = 16 * 1024;

/// Token of a session's TCP socket and of its end of the pair.
fn tokens(slot: usize) -> (u64, u64) {
    let t = 2 * slot as u64;
    (t + 1, t + 2)
}

/// One client.
struct Session {
    tcp: TcpStream,
    tls: ServerConnection,
    peer: SocketAddr,
    /// The handshake must finish before this (`None` once handed over).
    deadline: Option<Instant>,
    /// The terminator's end of the pair, once handed over.
    pair: Option<UnixStream>,
    /// Client plaintext not yet written to the pair: `buf[start..end]`.
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The client's TCP stream has ended.
    tcp_eof: bool,
    /// The client's plaintext has ended (`close_notify`, or end of stream).
    client_done: bool,
    /// The pair's write side is shut (the ingest thread saw the end of stream).
    pair_shut: bool,
    /// The engine closed its end: replies are over, `close_notify` queued; the session ends
    /// by this time at the latest.
    engine_done: Option<Instant>,
    /// The TCP write side is shut; close by this time at the latest.
    tcp_shut: Option<Instant>,
}

/// Why a session ends.
enum End {
    /// Both sides finished (or one reset).
    Closed,
    /// The handshake failed.
    Handshake,
    /// The hand-over ring was full.
    Refused,
}

impl Session {
    /// Moves every byte it can, until nothing moves. `Ok(true)`: the session is over.
    fn pump(&mut self, handoff: &mut HandoffTx<'_>, counters: &HostCounters) -> Result<bool, End> {
        let mut scratch = [0u8; REPLY_CHUNK];
        loop {
            let mut progress = false;
            // TLS records in, while rustls has room for their plaintext.
            if !self.tcp_eof && !self.client_done && self.tls.wants_read() {
                match self.tls.read_tls(&mut self.tcp) {
                    Ok(0) => {
                        if self.pair.is_none() {
                            return Err(End::Handshake);
                        }
                        // rustls hands out the plaintext it holds, then `UnexpectedEof`
                        // (no close_notify), which `plaintext_in` takes as the end.
                        self.tcp_eof = true;
                        progress = true;
                    }
                    Ok(_) => {
                        progress = true;
                        if let Err(_e) = self.tls.process_new_packets() {
                            // Send the alert if the socket takes it; the session is over.
                            let _ = self.tls.write_tls(&mut self.tcp);
                            return Err(if self.pair.is_none() {
                                End::Handshake
                            } else {
                                End::Closed
                            });
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(_) => {
                        return Err(if self.pair.is_none() {
                            End::Handshake
                        } else {
                            End::Closed
                        });
                    }
                }
            }
            // Handshake done: hand the connection over.
            if self.pair.is_none() && !self.tls.is_handshaking() {
                self.hand_over(handoff)?;
                counters.tls_handshakes.incr();
                progress = true;
            }
            if self.pair.is_some() {
                progress |= self.plaintext_in();
                progress |= self.plaintext_to_pair();
                progress |= self.replies_in(&mut scratch);
            }
            // TLS records out.
            while self.tls.wants_write() {
                match self.tls.write_tls(&mut self.tcp) {
                    Ok(_) => progress = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Err(End::Closed),
                }
            }
            if self.engine_done.is_some() && !self.tls.wants_write() && self.tcp_shut.is_none() {
                let _ = self.tcp.shutdown(Shutdown::Write);
                self.tcp_shut = Some(Instant::now() + LINGER);
                progress = true;
            }
            if self.tcp_shut.is_some() && self.client_done {
                return Ok(true);
            }
            if !progress {
                return Ok(false);
            }
        }
    }

    /// Client plaintext from rustls into the buffer, while it has room.
    fn plaintext_in(&mut self) -> bool {
        let mut progress = false;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        while !self.client_done && self.end < self.buf.len() {
            match self.tls.reader().read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    // close_notify.
                    self.client_done = true;
                    progress = true;
                }
                Ok(n) => {
                    self.end += n;
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // End of stream without close_notify: the end all the same.
                Err(_) => {
                    self.client_done = true;
                    progress = true;
                }
            }
        }
        progress
    }

    /// The buffer to the pair; its write side shut once the client's plaintext is over.
    fn plaintext_to_pair(&mut self) -> bool {
        let Some(pair) = self.pair.as_mut() else {
            return false;
        };
        let mut progress = false;
        let mut gone = false;
        while self.start < self.end {
            match pair.write(&self.buf[self.start..self.end]) {
                Ok(n) => {
                    self.start += n;
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The engine closed the connection: what it did not read is gone, as on
                // TCP (the reply side tells the client).
                Err(_) => {
                    self.start = self.end;
                    gone = true;
                    progress = true;
                }
            }
        }
        if self.client_done && self.start == self.end && !self.pair_shut {
            let _ = pair.shutdown(Shutdown::Write);
            self.pair_shut = true;
            progress = true;
        }
        if gone {
            self.engine_gone();
        }
        progress
    }

    /// Replies from the pair into rustls, once it has sent what it held.
    fn replies_in(&mut self, scratch: &mut [u8]) -> bool {
        let mut progress = false;
        while self.engine_done.is_none() && !self.tls.wants_write() {
            let Some(pair) = self.pair.as_mut() else {
                break;
            };
            match pair.read(scratch) {
                Ok(0) => {
                    self.engine_gone();
                    progress = true;
                }
                Ok(n) => {
                    // No buffer limit is set: rustls takes it all (one read at most waits
                    // in it, `wants_write` holds the next back).
                    let _ = self.tls.writer().write_all(&scratch[..n]);
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.engine_gone();
                    progress = true;
                }
            }
        }
        progress
    }

    /// The engine closed its end: no more replies; `close_notify` follows the last one.
    fn engine_gone(&mut self) {
        if self.engine_done.is_none() {
            self.engine_done = Some(Instant::now() + LAST_REPLIES);
            self.tls.send_close_notify();
        }
    }

    /// Makes the pair and hands one end over.
    fn hand_over(&mut self, handoff: &mut HandoffTx<'_>) -> Result<(), End> {
        let (ours, theirs) = UnixStream::pair().map_err(|_| End::Closed)?;
        ours.set_nonblocking(true).map_err(|_| End::Closed)?;
        theirs.set_nonblocking(true).map_err(|_| End::Closed)?;
        handoff
            .push(Handoff {
                stream: theirs,
                peer: self.peer,
            })
            .map_err(|_| End::Refused)?;
        self.pair = Some(ours);
        self.deadline = None;
        Ok(())
    }
}

/// Runs the terminator until the ingest thread has ended (then flushes the last replies for
/// up to 2 s).
///
/// # Errors
/// Only epoll failing (a bug or resource exhaustion); a bad client never is one.
pub fn run(r: TlsPortRun<'_>) -> Result<(), String> {
    let TlsPortRun {
        listener,
        config,
        handshake_timeout,
        max_sessions,
        mut handoff,
        shared,
        counters,
    } = r;
    let epoll = Epoll::new().map_err(|e| format!("tls terminator: epoll: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("tls terminator: {e}"))?;
    epoll
        .add(listener.as_raw_fd(), EPOLLIN, LISTENER)
        .map_err(|e| format!("tls terminator: epoll: {e}"))?;
    let mut listener = Some(listener);
    let mut sessions: Vec<Option<Session>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut ready = vec![Ready::default(); 256];
    let mut last_tick = Instant::now();
    let mut flush_until: Option<Instant> = None;
    loop {
        if flush_until.is_none() && shared.ingest_exited.load(Ordering::Acquire) {
            flush_until = Some(Instant::now() + LAST_FLUSH);
        }
        if shared.stop.load(Ordering::Acquire) {
            // No new connections once the engine stops.
            if let Some(l) = listener.take() {
                let _ = epoll.delete(l.as_raw_fd());
            }
        }
        let open = sessions.iter().filter(|s| s.is_some()).count();
        if flush_until.is_some_and(|t| Instant::now() >= t || open == 0) {
            break;
        }
        let n = epoll
            .wait(&mut ready, TICK.as_millis() as i32)
            .map_err(|e| format!("tls terminator: epoll_wait: {e}"))?;
        for r in &ready[..n] {
            if r.token == LISTENER {
                let Some(l) = listener.as_ref() else { continue };
                accept(
                    l,
                    &epoll,
                    &config,
                    handshake_timeout,
                    max_sessions,
                    &mut sessions,
                    &mut free,
                    counters,
                );
                continue;
            }
            let slot = ((r.token - 1) / 2) as usize;
            serve(
                slot,
                &epoll,
                &mut sessions,
                &mut free,
                &mut handoff,
                counters,
            );
        }
        let now = Instant::now();
        if now.duration_since(last_tick) >= TICK {
            last_tick = now;
            for slot in 0..sessions.len() {
                let Some(s) = sessions[slot].as_ref() else {
                    continue;
                };
                if s.deadline.is_some_and(|d| now >= d) {
                    counters.tls_handshake_timeouts.incr();
                    close(slot, &epoll, &mut sessions, &mut free, counters);
                } else if s.tcp_shut.is_some_and(|d| now >= d)
                    || s.engine_done.is_some_and(|d| now >= d)
                {
                    close(slot, &epoll, &mut sessions, &mut free, counters);
                }
            }
        }
    }
    for slot in 0..sessions.len() {
        if sessions[slot].is_some() {
            close(slot, &epoll, &mut sessions, &mut free, counters);
        }
    }
    Ok(())
}

/// Accepts every waiting connection and starts its handshake.
#[allow(clippy::too_many_arguments)] // the loop's state, passed apart to keep borrows simple
fn accept(
    listener: &TcpListener,
    epoll: &Epoll,
    config: &Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
    max_sessions: usize,
    sessions: &mut Vec<Option<Session>>,
    free: &mut Vec<usize>,
    counters: &HostCounters,
) {
    loop {
        let (tcp, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // WouldBlock, or a resource shortage: the listener is level-triggered, so the
            // next round tries again.
            Err(_) => return,
        };
        counters.tls_accepted.incr();
        let open = sessions.len() - free.len();
        if open >= max_sessions {
            counters.tls_refused.incr();
            continue;
        }
        let tls = match ServerConnection::new(Arc::clone(config)) {
            Ok(t) => t,
            Err(_) => {
                counters.tls_handshake_failures.incr();
                continue;
            }
        };
        if tcp.set_nonblocking(true).is_err() {
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let slot = free.pop().unwrap_or_else(|| {
            sessions.push(None);
            sessions.len() - 1
        });
        let (t, _) = tokens(slot);
        if epoll
            .add(
                tcp.as_raw_fd(),
                EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                t,
            )
            .is_err()
        {
            free.push(slot);
            continue;
        }
        sessions[slot] = Some(Session {
            tcp,
            tls,
            peer,
            deadline: Some(Instant::now() + handshake_timeout),
            pair: None,
            buf: vec![0u8; PLAINTEXT].into_boxed_slice(),
            start: 0,
            end: 0,
            tcp_eof: false,
            client_done: false,
            pair_shut: false,
            engine_done: None,
            tcp_shut: None,
        });
        counters.tls_open.set((sessions.len() - free.len()) as u64);
    }
}

/// Pumps one session after an event on one of its sockets.
fn serve(
    slot: usize,
    epoll: &Epoll,
    sessions: &mut [Option<Session>],
    free: &mut Vec<usize>,
    handoff: &mut HandoffTx<'_>,
    counters: &HostCounters,
) {
    let Some(s) = sessions.get_mut(slot).and_then(Option::as_mut) else {
        return;
    };
    let had_pair = s.pair.is_some();
    let outcome = s.pump(handoff, counters);
    if !had_pair {
        if let Some(pair) = &s.pair {
            let (_, p) = tokens(slot);
            if epoll
                .add(
                    pair.as_raw_fd(),
                    EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                    p,
                )
                .is_err()
            {
                close(slot, epoll, sessions, free, counters);
                return;
            }
            // Events on the pair before it was watched are not lost: edge-triggered
            // registration reports the current state once.
        }
    }
    match outcome {
        Ok(false) => {}
        Ok(true) | Err(End::Closed) => close(slot, epoll, sessions, free, counters),
        Err(End::Handshake) => {
            counters.tls_handshake_failures.incr();
            close(slot, epoll, sessions, free, counters);
        }
        Err(End::Refused) => {
            counters.tls_refused.incr();
            close(slot, epoll, sessions, free, counters);
        }
    }
}

/// Closes both sockets of a session and frees its slot.
fn close(
    slot: usize,
    epoll: &Epoll,
    sessions: &mut [Option<Session>],
    free: &mut Vec<usize>,
    counters: &HostCounters,
) {
    if let Some(s) = sessions[slot].take() {
        let _ = epoll.delete(s.tcp.as_raw_fd());
        if let Some(p) = &s.pair {
            let _ = epoll.delete(p.as_raw_fd());
        }
        free.push(slot);
        counters.tls_open.set((sessions.len() - free.len()) as u64);
    }
}
