//! Ingest: the thread that takes events in over TCP and UDP and dispatches them into the
//! lanes, and sends the acknowledgements back.
//!
//! One thread serves every socket with `epoll` (edge-triggered, non-blocking). Each TCP
//! connection reads into its own receive buffer and frames are decoded **in place** there:
//! a payload is copied once, into its pool slot, by the dispatcher. Limits, all from the
//! config: connections, frame length, receive and send buffer sizes, an in-flight window in
//! frames and in events (credit is taken before a frame is accepted: a connection out of
//! credit is not read, so TCP pushes back on the client), malformed frames before the
//! connection is closed, an idle timeout and a stall timeout for a client that stops
//! reading its acks. A bad client costs its own connection, never the engine.
//!
//! **Acknowledgements** ([`AckMode`]): `none` sends none; `accepted` acknowledges a frame
//! once its events are in lanes (or dead-lettered or rejected); `durable` waits for the
//! storage thread's [`Completion`]s, which it sends after the log write (`none` durability)
//! or the fdatasync (`interval`, `always`) that covers the events. Batch-lane events are
//! resolved by a tick watermark, [`Shared::batch_resolved`]: their aggregate is stored when
//! their window closes.
//!
//! UDP: `recvmmsg` batches into buffers allocated at start; a datagram holds whole frames;
//! what is malformed or truncated is counted. UDP has no acknowledgements (source id 0).

mod addrs;
mod conn;
mod producers;
mod ratekeys;
mod source;
mod udp;

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pinstream_core::dispatch::{Dispatcher, Flow, FrameProgress, Outcome};
use pinstream_core::event::Lane;
use pinstream_core::ratelimit::RateConfig;
use pinstream_core::reason::Reason;
use pinstream_core::ring::Consumer;
use pinstream_core::wire::{
    self, DecodeError, Frame, FrameKind, Hello, MAX_VERSION, MIN_FRAME_LEN, Reject, encode_hello,
};

use crate::stats::{HostCounters, LatencyRecorder};
use crate::sys::net::{
    EPOLLERR_HUP, EPOLLET, EPOLLIN, EPOLLOUT, EPOLLRDHUP, Epoll, Ready, set_send_buffer,
};

use self::addrs::PeerCounts;
use self::conn::{CloseReason, Conn, Track};
pub use self::source::SourceId;
pub use self::udp::UdpIngest;

/// When to acknowledge a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckMode {
    /// Never (fire and forget).
    None,
    /// Once every event of the frame is in a lane, dead-lettered or rejected.
    Accepted,
    /// Once every event of the frame is stored under the storage's durability mode,
    /// dead-lettered or rejected.
    Durable,
}

/// The storage thread's report on events of one frame: how many were stored (durably) and
/// how many dead-lettered after dispatch (duplicates, retries exhausted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    /// The connection's source id.
    pub source: u32,
    /// The frame's seq.
    pub seq: u64,
    /// Events stored.
    pub stored: u32,
    /// Events dead-lettered.
    pub dead: u32,
    /// Events not stored again because an event with their id is stored (the transactional
    /// lane's dedup window): acknowledged as stored, which they are.
    pub duplicates: u32,
}

/// Capacity of the completion ring from the storage thread.
pub const COMPLETIONS: usize = 16_384;

/// What the ingest and storage threads share besides the lanes.
#[derive(Debug)]
pub struct Shared {
    /// The ingest thread's tick watermark: every event dispatched at a tick below it is in
    /// its lane (the ingest thread's ticks strictly increase per loop).
    pub pushed_before: AtomicU64,
    /// The storage thread's batch watermark: every batch-lane event dispatched at a tick
    /// below it is resolved (its window's aggregate stored under the durability mode).
    pub batch_resolved: AtomicU64,
    /// Set to stop: ingest stops reading, the storage thread drains and syncs.
    pub stop: AtomicBool,
    /// The ingest thread stopped dispatching.
    pub ingest_done: AtomicBool,
    /// The storage thread has stored and synced everything and sent its last completions.
    pub storage_done: AtomicBool,
    /// The ingest thread has returned (normally or not): nobody takes completions any more.
    pub ingest_exited: AtomicBool,
    /// Storage failed: the ingest thread closes every connection and takes no more input.
    pub storage_failed: AtomicBool,
    /// Engine start: ticks are nanoseconds since it.
    pub start: Instant,
    /// The wall clock at `start`, nanoseconds since the Unix epoch: tick `t` happened at
    /// wall time `start_wall + t` (what the logs record, so a restart can tell how old a
    /// record is).
    pub start_wall: u64,
}

impl Shared {
    /// Fresh state, ticks from now.
    pub fn new() -> Self {
        Self {
            pushed_before: AtomicU64::new(0),
            batch_resolved: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            ingest_done: AtomicBool::new(false),
            storage_done: AtomicBool::new(false),
            ingest_exited: AtomicBool::new(false),
            storage_failed: AtomicBool::new(false),
            start: Instant::now(),
            start_wall: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        }
    }

    /// Nanoseconds since start.
    #[inline]
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

/// TCP limits (every one a config key, see `config.rs`).
#[derive(Clone, Debug)]
pub struct TcpLimits {
    /// Open connections at most; more are accepted and closed at once (counted).
    pub max_connections: usize,
    /// Largest frame accepted (also announced in the HELLO reply).
    pub max_frame_len: usize,
    /// Receive buffer per connection (at least `max_frame_len`).
    pub recv_buffer: usize,
    /// Send buffer per connection (ACKs and REJECTs).
    pub send_buffer: usize,
    /// Frames accepted and not yet acknowledged, per connection.
    pub inflight_frames: usize,
    /// Events accepted and not yet acknowledged, per connection.
    pub inflight_events: u64,
    /// Malformed frames before the connection is closed.
    pub max_rejects: u32,
    /// Silence after which a connection with nothing in flight is closed.
    pub idle_timeout: Duration,
    /// Time output may wait unread by the client before the connection is closed.
    pub stall_timeout: Duration,
    /// Time a frame begun may take to arrive whole before the connection is closed
    /// (`Duration::ZERO`: no limit).
    pub frame_timeout: Duration,
    /// Open connections from one address at most; more are accepted and closed at once
    /// (counted).
    pub max_connections_per_ip: usize,
    /// Producer sessions remembered at once.
    pub max_producers: usize,
    /// A producer without a connection is forgotten after this long.
    pub producer_idle: Duration,
    /// Announced in a version-2 HELLO reply: the largest payload accepted.
    pub max_payload: u32,
    /// Announced in a version-2 HELLO reply: the transactional lane's id window.
    pub dedup_window: Duration,
}

impl TcpLimits {
    /// The limits a `[tcp]` config section sets.
    pub fn from_config(t: &crate::config::TcpConfig) -> Self {
        Self {
            max_connections: t.max_connections,
            max_frame_len: usize::try_from(t.max_frame_len).unwrap_or(usize::MAX),
            recv_buffer: usize::try_from(t.recv_buffer).unwrap_or(usize::MAX),
            send_buffer: usize::try_from(t.send_buffer).unwrap_or(usize::MAX),
            inflight_frames: t.inflight_frames,
            inflight_events: t.inflight_events as u64,
            max_rejects: t.max_rejects,
            idle_timeout: t.idle_timeout(),
            stall_timeout: t.stall_timeout(),
            frame_timeout: Duration::from_millis(t.frame_timeout_ms),
            max_connections_per_ip: t.max_connections_per_ip,
            max_producers: t.max_producers,
            producer_idle: Duration::from_millis(t.producer_idle_ms),
            max_payload: crate::engine::PAYLOAD as u32,
            dedup_window: Duration::from_millis(
                crate::config::PipelineConfig::default().dedup_window_ms,
            ),
        }
    }
}

impl TcpLimits {
    /// The bytes a connection slot holds once it has served a connection: its receive and
    /// send buffers and its in-flight window. Allocated on the slot's first connection and
    /// kept for the later ones.
    pub fn slot_bytes(&self) -> usize {
        self.recv_buffer
            + self.send_buffer.max(conn::CONTROL_FRAME_MAX * 2)
            + self.inflight_frames * std::mem::size_of::<Track>()
    }

    /// The most the connection slots hold: [`slot_bytes`](Self::slot_bytes) times
    /// `max_connections`, once that many connections have been open at once.
    pub fn buffer_bytes(&self) -> usize {
        self.slot_bytes().saturating_mul(self.max_connections)
    }
}

impl Default for TcpLimits {
    /// The embedded default config's `[tcp]` limits.
    fn default() -> Self {
        Self::from_config(&crate::config::TcpConfig::default())
    }
}

const LISTENER: u64 = 0;
const UDP: u64 = u64::MAX;
/// The longest a closed producer connection drains (at least the stall timeout), in ticks.
const DRAIN_TIMEOUT: u64 = 60_000_000_000;
/// How often idle producer sessions are looked for, in ticks (1 s).
const PRODUCER_SWEEP: u64 = 1_000_000_000;
/// How often timeouts are checked.
const HOUSEKEEPING: u64 = 10_000_000;
/// How long the listener is not polled after `accept` failed for want of a resource (file
/// descriptors, memory), in ticks (100 ms): the kernel keeps the connections queued
/// meanwhile, and the ingest thread does not spin on a listener it cannot serve.
const ACCEPT_BACKOFF: u64 = 100_000_000;

/// The ingest thread's state. `P, POOL, LANE, DL` are the lanes' sizes.
pub struct Ingest<'a, const P: usize, const POOL: usize, const LANE: usize, const DL: usize> {
    /// Decode + dispatch time per frame.
    latency: LatencyRecorder,
    /// Dispatch to ACK owed, per frame.
    ack_latency: LatencyRecorder,
    dispatcher: Dispatcher<'a, P, POOL, LANE, DL>,
    completions: Consumer<'a, Completion, COMPLETIONS>,
    shared: &'a Shared,
    counters: &'a HostCounters,
    ack: AckMode,
    limits: TcpLimits,
    epoll: Epoll,
    listener: Option<TcpListener>,
    udp: Option<UdpIngest>,
    /// Connection slots; a slot keeps its buffers after its connection closes.
    conns: Vec<Option<Conn>>,
    /// Generation per slot (the high half of source ids).
    generations: Vec<u16>,
    /// Open slots, in no order.
    open: Vec<usize>,
    /// Slots with buffers and no connection, for reuse.
    free: Vec<usize>,
    /// Connections waiting for room in the engine (a frame stopped part-way, or input held
    /// back behind such a one), oldest first. Each has `queued` set.
    waiting: VecDeque<usize>,
    /// Producer sessions (protocol version 2).
    producers: producers::Producers,
    /// Open connections per peer address (`tcp.max_connections_per_ip`).
    peers: PeerCounts,
    /// The listener is out of epoll until this tick (`accept` failed for want of a
    /// resource).
    accept_paused_until: Option<u64>,
    /// Who each rate limit applies to: producers and peer addresses, by key.
    rate_keys: ratekeys::RateKeys,
    /// Batch-lane events are stored one by one (their completions come per frame, like the
    /// other lanes'), not only aggregated (settled by the batch watermark).
    batch_events_stored: bool,
    ready: Vec<Ready>,
    now: u64,
    last_housekeeping: u64,
    /// Tick of the last sweep of idle producer sessions.
    last_producer_sweep: u64,
    batch_watermark: u64,
}

impl<'a, const P: usize, const POOL: usize, const LANE: usize, const DL: usize>
    Ingest<'a, P, POOL, LANE, DL>
{
    /// An ingest thread's state: binds nothing itself; give it bound sockets.
    ///
    /// # Errors
    /// `epoll_create1` or registering a socket failed, or a limit is out of range.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        latency: LatencyRecorder,
        ack_latency: LatencyRecorder,
        dispatcher: Dispatcher<'a, P, POOL, LANE, DL>,
        completions: Consumer<'a, Completion, COMPLETIONS>,
        shared: &'a Shared,
        counters: &'a HostCounters,
        ack: AckMode,
        limits: TcpLimits,
        listener: Option<TcpListener>,
        udp: Option<(UdpSocket, usize, usize)>,
    ) -> io::Result<Self> {
        if limits.max_frame_len < MIN_FRAME_LEN || limits.recv_buffer < limits.max_frame_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "tcp.max_frame_len {} must be at least {MIN_FRAME_LEN} and at most tcp.recv_buffer {}",
                    limits.max_frame_len, limits.recv_buffer
                ),
            ));
        }
        if limits.max_connections == 0 || limits.max_connections > SourceId::MAX_SLOTS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "tcp.max_connections {} must be in 1..={}",
                    limits.max_connections,
                    SourceId::MAX_SLOTS
                ),
            ));
        }
        let epoll = Epoll::new()?;
        if let Some(l) = &listener {
            l.set_nonblocking(true)?;
            epoll.add(l.as_raw_fd(), EPOLLIN, LISTENER)?;
        }
        let udp = match udp {
            Some((socket, batch, size)) => {
                socket.set_nonblocking(true)?;
                epoll.add(socket.as_raw_fd(), EPOLLIN, UDP)?;
                Some(UdpIngest::new(socket, batch, size)?)
            }
            None => None,
        };
        let n = limits.max_connections;
        let producers = producers::Producers::new(
            limits.max_producers.max(1),
            u64::try_from(limits.producer_idle.as_nanos()).unwrap_or(u64::MAX),
            shared.start_wall,
        );
        Ok(Self {
            latency,
            ack_latency,
            dispatcher,
            completions,
            shared,
            counters,
            ack,
            limits,
            epoll,
            listener,
            udp,
            conns: (0..n).map(|_| None).collect(),
            generations: vec![0; n],
            open: Vec::with_capacity(n),
            free: Vec::with_capacity(n),
            waiting: VecDeque::with_capacity(n),
            producers,
            peers: PeerCounts::new(n),
            accept_paused_until: None,
            rate_keys: ratekeys::RateKeys::new(0, RateConfig::UNLIMITED),
            batch_events_stored: false,
            ready: vec![Ready::default(); 256],
            now: 0,
            last_housekeeping: 0,
            last_producer_sweep: 0,
            batch_watermark: 0,
        })
    }

    /// Puts the producer sessions found in the logs into the producer table (before the
    /// engine takes input). Returns how many did not fit.
    pub fn restore_producers(
        &mut self,
        found: Vec<crate::storage::sessions::ProducerState>,
    ) -> usize {
        let left_out = self.producers.restore(found, self.now);
        self.counters.tcp_producers.set(self.producers.len() as u64);
        left_out
    }

    /// Rate limits apply per client with `config`'s buckets in a limiter of `keys` keys
    /// (the dispatcher's admission, asked with these keys): a version-2 producer by its
    /// id, anyone else by its IP address.
    pub fn set_rate_limit(&mut self, keys: usize, config: RateConfig) {
        self.rate_keys = ratekeys::RateKeys::new(keys, config);
    }

    /// Whether batch-lane events are stored one by one (`pipeline.batch_store = "events"`):
    /// their frames then wait for their completions, not for the batch watermark.
    pub fn set_batch_events_stored(&mut self, stored: bool) {
        self.batch_events_stored = stored;
    }

    /// The TCP address, if listening.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// One round: new connections, input, completions, acknowledgements, housekeeping.
    /// Returns whether it did any work (the caller idles on `false`).
    ///
    /// # Errors
    /// Only `epoll_wait` failing (a bug or a resource exhaustion); a bad client never is one.
    pub fn poll(&mut self) -> io::Result<bool> {
        // Strictly increasing ticks, so `pushed_before` = this round's tick + 1 is exact.
        self.now = self.shared.now().max(self.now + 1);
        let mut work = false;
        if self.shared.storage_failed.load(Ordering::Relaxed) && !self.open.is_empty() {
            // Nothing more can be stored: do not take what would never be acknowledged.
            while let Some(&slot) = self.open.last() {
                self.close(slot, CloseReason::StorageFailed);
            }
            work = true;
        }
        if self.accept_paused_until.is_some_and(|t| self.now >= t) {
            self.resume_accepting();
        }
        let n = self.epoll.wait(&mut self.ready, 0)?;
        for i in 0..n {
            let Ready { token, events } = self.ready[i];
            match token {
                LISTENER => self.accept(),
                UDP => {}
                t => {
                    let slot = (t - 1) as usize;
                    if let Some(conn) = self.conns[slot].as_mut() {
                        if events & (EPOLLIN | EPOLLRDHUP | EPOLLERR_HUP) != 0 {
                            conn.readable = true;
                        }
                        if events & (EPOLLOUT | EPOLLERR_HUP) != 0 {
                            conn.writable = true;
                        }
                    }
                }
            }
            work = true;
        }
        if let Some(udp) = self.udp.as_mut() {
            work |= udp.poll(
                &mut self.dispatcher,
                &mut self.rate_keys,
                self.counters,
                self.now,
            ) > 0;
        }
        work |= self.take_completions();
        // Connections whose frame waits for room go first, oldest first; once one of them
        // still finds none, no other connection dispatches this round (they queue behind
        // it), so room goes to whoever waited longest.
        let mut blocked = false;
        let mut k = 0;
        while k < self.waiting.len() {
            let slot = self.waiting[k];
            let allowed = !blocked;
            let (did, close) = self.serve(slot, allowed);
            work |= did;
            // Served: it leaves the queue unless its frame still waits. Held back: it keeps
            // its place. Only a wait for room in the engine holds the others back (not one
            // for the connection's own output buffer: its client reads slowly).
            let (waits, for_engine) = self.conns[slot]
                .as_ref()
                .map_or((false, false), |c| (c.progress.is_some(), c.engine_wait));
            if let Some(reason) = close {
                self.close(slot, reason); // also leaves the queue
            } else if !allowed || waits {
                blocked |= !allowed || for_engine;
                k += 1;
            } else {
                self.unqueue(slot);
            }
        }
        let mut i = 0;
        while i < self.open.len() {
            let slot = self.open[i];
            if self.conns[slot].as_ref().is_some_and(|c| c.queued) {
                i += 1;
                continue; // served above
            }
            let (did, close) = self.serve(slot, !blocked);
            work |= did;
            if let Some(reason) = close {
                self.close(slot, reason);
                // `close` swapped the last open slot into `i`.
                continue;
            }
            if let Some(conn) = self.conns[slot].as_mut() {
                let held = blocked && conn.wants_input();
                if conn.progress.is_some() || held {
                    blocked |= conn.engine_wait;
                    conn.queued = true;
                    self.waiting.push_back(slot);
                }
            }
            i += 1;
        }
        self.shared
            .pushed_before
            .store(self.now + 1, Ordering::Release);
        if work {
            let now = Instant::now();
            self.latency.maybe_publish(now);
            self.ack_latency.maybe_publish(now);
        }
        if self.now - self.last_housekeeping >= HOUSEKEEPING {
            self.last_housekeeping = self.now;
            self.housekeeping();
        }
        Ok(work)
    }

    /// Stops taking input; keeps acknowledging what the storage thread reports until it is
    /// done and every reply is written (or `deadline` passes), then closes every connection.
    pub fn shut_down(&mut self, deadline: Duration) {
        self.shared.ingest_done.store(true, Ordering::Release);
        if let Some(l) = self.listener.take() {
            let _ = self.epoll.delete(l.as_raw_fd());
        }
        let until = Instant::now() + deadline;
        loop {
            let done = self.shared.storage_done.load(Ordering::Acquire);
            self.take_completions();
            let mut pending_output = false;
            for i in 0..self.open.len() {
                let slot = self.open[i];
                if let Some(conn) = self.conns[slot].as_mut() {
                    conn.resolve_front(self.batch_watermark, self.now, &mut self.ack_latency);
                    if conn.queue_ack() {
                        self.counters.tcp_acks_sent.incr();
                    }
                    // Blocked writers get a chance every round until the deadline.
                    conn.writable = true;
                    if conn.flush().is_err() {
                        conn.wstart = conn.wend;
                    }
                    pending_output |= conn.has_output() || conn.ack_owed;
                }
            }
            if (done && !pending_output) || Instant::now() >= until {
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        for &slot in &self.open {
            if let Some(stream) = self.conns[slot].as_mut().and_then(|c| c.stream.as_mut()) {
                // FIN after the last ACK; input left unread is discarded (and counted) so
                // that closing does not turn into a reset that could destroy ACKs in flight.
                let _ = stream.shutdown(std::net::Shutdown::Write);
                let mut sink = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut sink) {
                    self.counters.tcp_bytes_in.add(n as u64);
                    self.counters.tcp_unread_bytes_dropped.add(n as u64);
                }
            }
        }
        while let Some(&slot) = self.open.last() {
            self.close(slot, CloseReason::Shutdown);
        }
    }

    fn accept(&mut self) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((stream, addr)) => {
                    self.counters.tcp_accepted.incr();
                    let peer = PeerCounts::key(addr.ip());
                    if self.peers.count(peer) as usize >= self.limits.max_connections_per_ip {
                        // This address has its share: closed at once, counted.
                        self.counters.tcp_refused.incr();
                        self.counters.tcp_refused_per_ip.incr();
                        continue;
                    }
                    let refuse = self.shared.storage_failed.load(Ordering::Relaxed);
                    let slot = if refuse { None } else { self.take_slot() };
                    let Some(slot) = slot else {
                        // Over the limit (or storage failed): closed at once, counted.
                        self.counters.tcp_refused.incr();
                        continue;
                    };
                    match self.open_conn(slot, stream, addr) {
                        Ok(()) => {
                            self.peers.add(peer);
                            if let Some(conn) = self.conns[slot].as_mut() {
                                conn.peer = Some(peer);
                            }
                        }
                        Err(_e) => {
                            self.counters.tcp_closed.incr();
                            self.free.push(slot);
                        }
                    }
                }
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

    /// Takes the listener out of epoll for [`ACCEPT_BACKOFF`].
    fn pause_accepting(&mut self) {
        if let Some(l) = &self.listener {
            let _ = self.epoll.delete(l.as_raw_fd());
            self.accept_paused_until = Some(self.now + ACCEPT_BACKOFF);
        }
    }

    /// Puts the listener back into epoll (level-triggered: queued connections are reported
    /// at once).
    fn resume_accepting(&mut self) {
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
        let used = self.open.len() + self.free.len();
        (used < self.conns.len()).then_some(used)
    }

    fn open_conn(
        &mut self,
        slot: usize,
        stream: std::net::TcpStream,
        peer: SocketAddr,
    ) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
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

    /// Answers the HELLO at the front of the connection's input: negotiates the version and,
    /// for version 2, attaches the producer (fencing a connection that held it). While a
    /// closed connection of the producer still drains, the answer waits (the HELLO stays at
    /// the front, nothing after it is read), so the sequence it reports covers every frame
    /// the engine took from the producer. Returns whether it did anything.
    fn answer_hello(&mut self, slot: usize) -> bool {
        let now = self.now;
        let Some(conn) = self.conns[slot].as_mut() else {
            return false;
        };
        let at = conn.rstart;
        let Some(len) = conn.rbuf.get(at..).and_then(wire::frame_len) else {
            conn.hello_pending = false;
            return false;
        };
        let Some(client) = conn
            .rbuf
            .get(at..at + len)
            .and_then(|b| Frame::new_checked(b, conn.max_frame).ok())
            .and_then(|f| f.hello().map(|h| (h, f.seq())))
        else {
            conn.hello_pending = false;
            return false;
        };
        let (client, hello_seq) = client;
        let Some(version) = client.negotiate(1, MAX_VERSION) else {
            // No common version: REJECT and close (PROTOCOL.md §5).
            refuse_hello(
                conn,
                self.counters,
                hello_seq,
                Reason::UnsupportedVersion,
                len,
            );
            return true;
        };
        let mut reply = Hello::reply(version, self.limits.max_frame_len as u32, conn.source.get());
        if version >= 2 {
            let index = match conn.producer {
                Some(index) => index,
                None => match self.producers.attach(client.producer_id, slot, now) {
                    Ok(a) => {
                        conn.producer = Some(a.index);
                        if a.evicted {
                            self.counters.tcp_producers_evicted.incr();
                        }
                        self.counters.tcp_producers.set(self.producers.len() as u64);
                        if let Some(old) = a.fenced {
                            // The connection that held this producer gives way.
                            self.counters.tcp_producers_fenced.incr();
                            self.close(old, CloseReason::Fenced);
                        }
                        a.index
                    }
                    Err(producers::AttachError::Full) => {
                        self.counters.tcp_producers_refused.incr();
                        refuse_hello(
                            conn,
                            self.counters,
                            hello_seq,
                            Reason::TooManyProducers,
                            len,
                        );
                        return true;
                    }
                },
            };
            if self.producers.draining(index) {
                return false; // asked again next round
            }
            let Some(conn) = self.conns[slot].as_mut() else {
                return false;
            };
            let last = self.producers.last_seq(index);
            conn.resolved_before = last;
            conn.through = last;
            conn.producer_id = self.producers.id(index);
            conn.producer_epoch = self.producers.epoch(index);
            conn.held = self.producers.held(index);
            // From now on limited as its producer, whatever connection it uses.
            let key = self.rate_keys.acquire(
                ratekeys::Client::Producer(conn.producer_id),
                now,
                self.counters,
            );
            self.rate_keys
                .release(std::mem::replace(&mut conn.rate_key, key), now);
            reply.producer_id = conn.producer_id;
            reply.last_seq = last;
            reply.max_payload = self.limits.max_payload;
            reply.dedup_window_ms =
                u32::try_from(self.limits.dedup_window.as_millis()).unwrap_or(u32::MAX);
        }
        let Some(conn) = self.conns[slot].as_mut() else {
            return false;
        };
        let mut buf = [0u8; conn::CONTROL_FRAME_MAX];
        if let Ok(n) = encode_hello(&mut buf, conn.out_seq + 1, &reply) {
            if conn.queue_bytes(&buf[..n]) {
                conn.out_seq += 1;
            }
        }
        conn.version = version;
        conn.hello_seen = true;
        conn.hello_pending = false;
        conn.rstart += len;
        true
    }

    /// A closed connection of a producer whose frames are still in flight: resolves them
    /// (moving the producer's sequence), sends nothing, and is done when none is left.
    fn drain(&mut self, slot: usize) -> (bool, Option<CloseReason>) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return (false, None);
        };
        let work = conn.resolve_front(self.batch_watermark, self.now, &mut self.ack_latency) > 0;
        if let Some(p) = conn.producer {
            self.producers.resolved(p, conn.through);
        }
        // Nobody reads replies any more.
        conn.wstart = 0;
        conn.wend = 0;
        conn.ack_owed = false;
        let done = conn.tracks.is_empty();
        (work, done.then_some(CloseReason::Drained))
    }

    /// Takes `slot` out of the queue of connections waiting for room.
    fn unqueue(&mut self, slot: usize) {
        if let Some(conn) = self.conns[slot].as_mut() {
            if conn.queued {
                conn.queued = false;
                if let Some(pos) = self.waiting.iter().position(|&s| s == slot) {
                    self.waiting.remove(pos);
                }
            }
        }
    }

    fn close(&mut self, slot: usize, reason: CloseReason) {
        self.unqueue(slot);
        if let Some(conn) = self.conns[slot].as_mut() {
            // Whatever it sent and the engine did not dispatch is thrown away: counted.
            let dropped = conn.drop_input();
            let c = self.counters;
            if dropped.partial_bytes > 0 {
                c.tcp_partial_frames_dropped.incr();
                c.tcp_partial_frame_bytes_dropped
                    .add(dropped.partial_bytes as u64);
            }
            c.tcp_unread_frames_dropped
                .add(dropped.unread_frames as u64);
            c.tcp_unread_bytes_dropped.add(dropped.unread_bytes as u64);
            // It sends no more: its key may go once idle (a draining connection too).
            let key = std::mem::replace(&mut conn.rate_key, ratekeys::SHARED);
            self.rate_keys.release(key, self.now);
        }
        if self.start_drain(slot, reason) {
            self.count_close(reason);
            return;
        }
        if let Some(conn) = self.conns[slot].as_mut() {
            if let Some(p) = conn.producer.take() {
                if conn.draining {
                    self.producers.drained(p, self.now);
                } else {
                    self.producers.detach(p, slot, false, self.now);
                }
            }
            if let Some(stream) = conn.stream.take() {
                let _ = self.epoll.delete(stream.as_raw_fd());
            }
            if let Some(peer) = conn.peer.take() {
                self.peers.remove(peer);
            }
            conn.tracks.clear();
            // A frame that waited for room was never taken whole: the client resends it.
            conn.progress = None;
        }
        if let Some(pos) = self.open.iter().position(|&s| s == slot) {
            self.open.swap_remove(pos);
            self.free.push(slot);
        }
        if reason != CloseReason::Drained {
            self.count_close(reason);
        }
        self.counters.tcp_open.set(self.open.len() as u64);
    }

    /// Counts a connection closed for `reason`.
    fn count_close(&self, reason: CloseReason) {
        let c = self.counters;
        c.tcp_closed.incr();
        match reason {
            CloseReason::Malformed => c.tcp_closed_malformed.incr(),
            CloseReason::Stalled => c.tcp_closed_stalled.incr(),
            CloseReason::Idle => c.tcp_closed_idle.incr(),
            CloseReason::FrameTimeout => c.tcp_closed_frame_timeout.incr(),
            CloseReason::Peer
            | CloseReason::Error
            | CloseReason::Shutdown
            | CloseReason::StorageFailed
            | CloseReason::Fenced
            | CloseReason::Drained => {}
            CloseReason::DrainAbandoned => c.tcp_drains_abandoned.incr(),
        }
    }

    /// A connection of a producer closing with frames in flight stays (draining) until
    /// they resolve, so the producer's sequence covers them: a reconnecting producer then
    /// gets duplicates, not copies, for frames the engine took. Not at shutdown or after a
    /// storage failure (nothing more resolves then). Returns whether it drains.
    fn start_drain(&mut self, slot: usize, reason: CloseReason) -> bool {
        if matches!(
            reason,
            CloseReason::Shutdown
                | CloseReason::StorageFailed
                | CloseReason::Drained
                | CloseReason::DrainAbandoned
        ) {
            return false;
        }
        let Some(conn) = self.conns[slot].as_mut() else {
            return false;
        };
        let Some(p) = conn.producer else {
            return false;
        };
        if conn.draining || conn.tracks.is_empty() || self.ack == AckMode::None {
            return false;
        }
        if let Some(stream) = conn.stream.take() {
            let _ = self.epoll.delete(stream.as_raw_fd());
        }
        if let Some(peer) = conn.peer.take() {
            self.peers.remove(peer);
        }
        if conn.progress.take().is_some() {
            // The frame that waited for room will not be finished: what it dispatched
            // resolves, but it must not count as resolved for the producer (the rest of it
            // is resent).
            if let Some(t) = conn.tracks.back_mut() {
                t.open = false;
                t.moves_watermark = false;
            }
        }
        conn.draining = true;
        conn.last_input = self.now; // the drain's start, for its deadline
        conn.readable = false;
        conn.peer_closed = true;
        conn.closing = None;
        conn.wstart = 0;
        conn.wend = 0;
        self.producers.detach(p, slot, true, self.now);
        true
    }

    /// Applies the storage thread's completions and the batch watermark.
    fn take_completions(&mut self) -> bool {
        let mut work = false;
        while let Some(c) = self.completions.pop() {
            work = true;
            let source = SourceId::from_raw(c.source);
            let Some(slot) = source.slot().filter(|&s| s < self.conns.len()) else {
                continue;
            };
            if let Some(conn) = self.conns[slot].as_mut() {
                if (conn.stream.is_some() || conn.draining) && conn.source == source {
                    conn.complete(c.seq, c.stored, c.dead, c.duplicates);
                }
            }
        }
        self.batch_watermark = self.shared.batch_resolved.load(Ordering::Acquire);
        work
    }

    /// Serves one connection: resolves frames, reads and dispatches while it has credit and
    /// room for replies, writes replies. Returns (did work, close reason).
    /// `dispatch`: whether it may take input now (false while older connections wait for
    /// room in the engine).
    fn serve(&mut self, slot: usize, dispatch: bool) -> (bool, Option<CloseReason>) {
        if self.conns[slot].as_ref().is_some_and(|c| c.draining) {
            return self.drain(slot);
        }
        let mut work = false;
        if dispatch && self.conns[slot].as_ref().is_some_and(|c| c.hello_pending) {
            work |= self.answer_hello(slot);
        }
        let Some(conn) = self.conns[slot].as_mut() else {
            return (false, None);
        };
        conn.engine_wait = false;
        if conn.resolve_front(self.batch_watermark, self.now, &mut self.ack_latency) > 0 {
            work = true;
            if let Some(p) = conn.producer {
                self.producers.resolved(p, conn.through);
            }
        }
        let mut close = conn.closing;
        while dispatch
            && close.is_none()
            && conn.readable
            && !conn.peer_closed
            && !conn.hello_pending
        {
            // Room for the replies one buffer of input can cause is kept free; credit is
            // checked per frame in `dispatch_buffered`.
            if conn.out_room() < conn.wbuf.len() / 2 && conn.has_output() {
                break;
            }
            let parsed = dispatch_buffered(
                conn,
                &mut self.latency,
                &mut self.dispatcher,
                self.counters,
                self.ack,
                &self.limits,
                self.now,
            );
            work |= parsed.frames > 0;
            if let Some(reason) = parsed.close {
                close = Some(reason);
                conn.closing = close;
                break;
            }
            if parsed.out_of_credit {
                self.counters.tcp_credit_waits.incr();
                break;
            }
            if parsed.turn_over || parsed.hello {
                break;
            }
            if let Some(cause) = parsed.waiting {
                conn.engine_wait = true;
                // Back-pressure: the frame keeps its place, the connection is not read, the
                // client's window and then its socket fill, and it waits. Counted once per
                // wait.
                if !conn.queued {
                    match cause {
                        Reason::PoolExhausted => self.counters.tcp_waits_pool.incr(),
                        Reason::Shed => self.counters.tcp_waits_control.incr(),
                        _ => self.counters.tcp_waits_lane.incr(),
                    }
                }
                break;
            }
            if parsed.out_of_room {
                break;
            }
            match conn.fill() {
                Ok(0) => {
                    // End of input (a half close, or the client is gone): what it sent is
                    // still acknowledged; the connection closes once its window is empty.
                    // A partial frame left in the buffer is dropped with it.
                    conn.readable = false;
                    conn.peer_closed = true;
                    break;
                }
                Ok(n) => {
                    work = true;
                    conn.last_input = self.now;
                    self.counters.tcp_bytes_in.add(n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    close = Some(CloseReason::Error);
                    break;
                }
            }
        }
        if conn.resolve_front(self.batch_watermark, self.now, &mut self.ack_latency) > 0 {
            work = true;
            if let Some(p) = conn.producer {
                self.producers.resolved(p, conn.through);
            }
        }
        if conn.queue_ack() {
            self.counters.tcp_acks_sent.incr();
        }
        if conn.has_output() && conn.writable {
            match conn.flush() {
                Ok(n) => {
                    if n > 0 {
                        work = true;
                        conn.stalled_since = 0;
                    }
                }
                Err(_) => close = close.or(Some(CloseReason::Error)),
            }
        }
        if conn.has_output() {
            if conn.stalled_since == 0 {
                conn.stalled_since = self.now;
            }
        } else {
            conn.stalled_since = 0;
            if conn.peer_closed && conn.tracks.is_empty() && !conn.ack_owed {
                close = close.or(Some(CloseReason::Peer));
            }
        }
        // A connection being closed for bad input goes once its REJECT is out (or cannot be).
        match close {
            Some(CloseReason::Malformed) if conn.has_output() && conn.writable => (work, None),
            other => (work, other),
        }
    }

    fn housekeeping(&mut self) {
        let stall = u64::try_from(self.limits.stall_timeout.as_nanos()).unwrap_or(u64::MAX);
        let idle = u64::try_from(self.limits.idle_timeout.as_nanos()).unwrap_or(u64::MAX);
        let frame = match u64::try_from(self.limits.frame_timeout.as_nanos()) {
            Ok(0) => u64::MAX,
            Ok(t) => t,
            Err(_) => u64::MAX,
        };
        let mut i = 0;
        while i < self.open.len() {
            let slot = self.open[i];
            let now = self.now;
            let verdict = self.conns[slot].as_mut().and_then(|c| {
                // Bytes alone do not hold a slot: a frame begun must arrive whole in time.
                if c.partial_frame_age(now).is_some_and(|age| age > frame) {
                    return Some(CloseReason::FrameTimeout);
                }
                if c.draining {
                    // Its frames resolve as storage goes (milliseconds); a drain that takes
                    // longer than DRAIN_TIMEOUT (storage stuck) is given up and counted: the
                    // producer's sequence then stops short of those frames, and their resend
                    // may store them twice (medium events are recognised by id).
                    let limit = stall.max(DRAIN_TIMEOUT);
                    return (self.now - c.last_input > limit)
                        .then_some(CloseReason::DrainAbandoned);
                }
                if c.stalled_since != 0 && self.now - c.stalled_since > stall {
                    Some(CloseReason::Stalled)
                } else if (c.closing.is_some() || c.peer_closed) && self.now - c.last_input > stall
                {
                    Some(c.closing.unwrap_or(CloseReason::Peer))
                } else if c.tracks.is_empty() && self.now - c.last_input > idle {
                    Some(CloseReason::Idle)
                } else {
                    None
                }
            });
            match verdict {
                Some(reason) => {
                    self.close(slot, reason);
                    // A connection that started draining stays at `i`: it is looked at
                    // once more, as a draining one.
                    if self.conns[slot].as_ref().is_some_and(|c| c.draining)
                        && self.open.get(i) == Some(&slot)
                    {
                        i += 1;
                    }
                }
                None => i += 1,
            }
        }
        // The sweep reads the whole table: once a second is plenty for an idle limit counted
        // in minutes, and keeps it out of the ingest thread's cache the rest of the time.
        if self.now - self.last_producer_sweep >= PRODUCER_SWEEP {
            self.last_producer_sweep = self.now;
            self.rate_keys.sweep(self.now, self.counters);
            let evicted = self.producers.evict_idle(self.now);
            if evicted > 0 {
                self.counters.tcp_producers_evicted.add(evicted);
                self.counters.tcp_producers.set(self.producers.len() as u64);
            }
        }
    }
}

/// What [`dispatch_buffered`] did.
struct Parsed {
    frames: u32,
    out_of_credit: bool,
    /// The frame at the front waits for room in the engine (lane, pool, control plane).
    waiting: Option<Reason>,
    /// A frame that had waited is done: the connection's turn is over for this round.
    turn_over: bool,
    /// A HELLO is at the front of the input: the ingest thread answers it.
    hello: bool,
    /// The output buffer cannot hold the REJECTs the next frame may cause: wait for it to
    /// drain.
    out_of_room: bool,
    close: Option<CloseReason>,
}

impl Parsed {
    /// The frame of `len` bytes at the front of the input is taken: counted, and the input
    /// moves past it.
    fn consume(&mut self, conn: &mut Conn, counters: &HostCounters, len: usize) {
        conn.rstart += len;
        self.frames += 1;
        counters.tcp_frames_in.incr();
    }
}

/// Decodes and dispatches every whole frame in the connection's receive buffer, in place.
fn dispatch_buffered<const P: usize, const POOL: usize, const LANE: usize, const DL: usize>(
    conn: &mut Conn,
    latency: &mut LatencyRecorder,
    dispatcher: &mut Dispatcher<'_, P, POOL, LANE, DL>,
    counters: &HostCounters,
    ack: AckMode,
    limits: &TcpLimits,
    now: u64,
) -> Parsed {
    // The frames borrow the receive buffer while the rest of the connection (its window,
    // its output) is updated: lend the buffer out for the pass (an empty box allocates
    // nothing).
    let rbuf = std::mem::take(&mut conn.rbuf);
    let parsed = dispatch_from(conn, &rbuf, latency, dispatcher, counters, ack, limits, now);
    conn.rbuf = rbuf;
    parsed
}

#[allow(clippy::too_many_arguments)]
fn dispatch_from<const P: usize, const POOL: usize, const LANE: usize, const DL: usize>(
    conn: &mut Conn,
    rbuf: &[u8],
    latency: &mut LatencyRecorder,
    dispatcher: &mut Dispatcher<'_, P, POOL, LANE, DL>,
    counters: &HostCounters,
    ack: AckMode,
    limits: &TcpLimits,
    now: u64,
) -> Parsed {
    let mut parsed = Parsed {
        frames: 0,
        out_of_credit: false,
        out_of_room: false,
        waiting: None,
        turn_over: false,
        hello: false,
        close: None,
    };
    loop {
        let avail = conn.rend - conn.rstart;
        let at = conn.rstart;
        let Some(len) = wire::frame_len(&rbuf[at..conn.rend]) else {
            return parsed; // the length field is not all here yet
        };
        if len < MIN_FRAME_LEN || len > conn.max_frame {
            // The framing is lost: nothing after this can be trusted. REJECT and close; the
            // bytes from here on are thrown away, counted.
            counters
                .tcp_unread_bytes_dropped
                .add((conn.rend - conn.rstart) as u64);
            let error = if len < MIN_FRAME_LEN {
                DecodeError::BadLength
            } else {
                DecodeError::TooLong
            };
            dispatcher.reject_frame(error);
            conn.rejected += 1;
            conn.ack_owed = true;
            reject(conn, counters, &Reject::frame(0, error.reason()));
            conn.rstart = conn.rend;
            parsed.close = Some(CloseReason::Malformed);
            return parsed;
        }
        if avail < len {
            return parsed;
        }
        let bytes = &rbuf[at..at + len];
        // Credit before acceptance: the frame's events must fit the window (a lone frame
        // larger than the window is let through, or it could never be sent). A frame that
        // waits for room in the engine took its credit when it started.
        // 1 for an EVENT, the claimed count of a BATCH (at least 1: validated later), and 1
        // for what is no data frame (it is rejected, or a HELLO answered, as one unit).
        let events = wire::frame_event_count(bytes).unwrap_or(0).max(1);
        // Room for every REJECT the frame may cause (one per event at worst, and an ACK),
        // unless the buffer is empty and still too small (then the excess is counted).
        let worst = (events as usize + 1) * conn::REJECT_FRAME_LEN + conn::CONTROL_FRAME_MAX;
        if conn.has_output() && conn.out_free() < worst {
            parsed.out_of_room = true;
            return parsed;
        }
        if ack != AckMode::None && conn.progress.is_none() {
            let full = conn.tracks.len() >= limits.inflight_frames
                || (!conn.tracks.is_empty()
                    && conn.inflight_events + u64::from(events) > limits.inflight_events);
            if full {
                parsed.out_of_credit = true;
                return parsed;
            }
        }
        match Frame::new_checked(bytes, conn.max_frame) {
            Ok(frame) if conn.progress.is_some() => {
                // The frame that waited: go on where it stopped.
                let waiting = timed(latency, || {
                    continue_frame(conn, dispatcher, counters, ack, &frame, now)
                });
                if let Some(cause) = waiting {
                    parsed.waiting = Some(cause);
                    return parsed;
                }
                // Done: that was this connection's turn. Its next frame waits for the next
                // round, behind whoever queued meanwhile (or the room it freed would go to
                // it again and again).
                parsed.consume(conn, counters, len);
                parsed.turn_over = true;
                return parsed;
            }
            Ok(frame)
                if frame.kind() == FrameKind::Hello
                    && (conn.hello_seen || conn.last_seq.is_some() || !conn.tracks.is_empty()) =>
            {
                // One HELLO per connection, before any data frame (the connection speaks
                // version 1 once data came first): a later one is one rejected unit and
                // changes nothing.
                dispatcher.reject_unit(Reason::UnexpectedKind);
                settle(conn, ack, Track::unverified());
                reject(
                    conn,
                    counters,
                    &Reject::frame(frame.seq(), Reason::UnexpectedKind),
                );
            }
            Ok(frame) if frame.kind() == FrameKind::Hello => {
                // Answered by the ingest thread, which owns the producer table: it stays at
                // the front of the input until then.
                let _ = frame;
                conn.hello_pending = true;
                parsed.hello = true;
                return parsed;
            }
            Ok(frame)
                if conn.producer.is_some()
                    && conn.resolved_before != 0
                    && matches!(frame.kind(), FrameKind::Event | FrameKind::Batch)
                    && frame.seq() <= conn.resolved_before =>
            {
                // A producer resending a frame the engine resolved (its ACK was lost with
                // the old connection): every event is already stored, dead-lettered or
                // rejected. Answered as duplicates, not dispatched again.
                dispatcher.duplicate_frame(frame.event_count());
                settle(
                    conn,
                    ack,
                    Track::duplicate(frame.seq(), frame.event_count()),
                );
            }
            Ok(frame) if matches!(frame.kind(), FrameKind::Ack | FrameKind::Reject) => {
                // A server's frame sent to the server: one unit rejected. Its seq is read
                // from a valid frame but belongs to no data frame: the watermark stays.
                dispatcher.reject_unit(Reason::UnexpectedKind);
                settle(conn, ack, Track::unverified());
                reject(
                    conn,
                    counters,
                    &Reject::frame(frame.seq(), Reason::UnexpectedKind),
                );
            }
            Ok(frame) if conn.last_seq.is_some_and(|last| frame.seq() <= last) => {
                // Acknowledgements are watermarks over seqs: a seq that does not increase
                // could be taken for an earlier frame's.
                dispatcher.reject_unit(Reason::SeqNotIncreasing);
                settle(conn, ack, Track::settled(frame.seq(), 0, 0, 1));
                reject(
                    conn,
                    counters,
                    &Reject::frame(frame.seq(), Reason::SeqNotIncreasing),
                );
                conn.malformed += 1;
                if conn.malformed > limits.max_rejects {
                    parsed.consume(conn, counters, len);
                    parsed.close = Some(CloseReason::Malformed);
                    return parsed;
                }
            }
            Ok(frame) => {
                conn.last_seq = Some(frame.seq());
                if ack != AckMode::None {
                    conn.inflight_events += u64::from(frame.event_count());
                    conn.tracks.push_back(Track::dispatching(
                        frame.seq(),
                        frame.event_count(),
                        now,
                    ));
                }
                // A producer's events carry its id, session and how far it was resolved, so
                // that a restart can rebuild its session from the logs (not without
                // acknowledgements: nothing is resolved then, and nothing is resent).
                conn.progress = Some(
                    match conn.producer_id {
                        id if id != 0 && ack != AckMode::None => {
                            FrameProgress::producing(id, conn.producer_epoch, conn.through)
                        }
                        _ => FrameProgress::new(),
                    }
                    .with_rate_key(conn.rate_key),
                );
                let waiting = timed(latency, || {
                    continue_frame(conn, dispatcher, counters, ack, &frame, now)
                });
                if let Some(cause) = waiting {
                    parsed.waiting = Some(cause);
                    return parsed;
                }
            }
            Err(error) => {
                // A sane length, a bad frame: REJECT it and go on with the next one. Its
                // seq cannot be trusted (a flipped bit may be in it): the REJECT names it
                // for the client's information, the watermark does not move.
                dispatcher.reject_frame(error);
                let seq = wire::frame_seq(bytes).unwrap_or(0);
                settle(conn, ack, Track::unverified());
                reject(conn, counters, &Reject::frame(seq, error.reason()));
                conn.malformed += 1;
                // A HELLO that is not valid leaves the session undefined: close.
                let was_hello = wire::frame_kind(bytes) == Some(FrameKind::Hello);
                if was_hello || conn.malformed > limits.max_rejects {
                    parsed.consume(conn, counters, len);
                    parsed.close = Some(CloseReason::Malformed);
                    return parsed;
                }
            }
        }
        parsed.consume(conn, counters, len);
    }
}

/// Dispatches the valid data frame at the front of the connection's input, from where its
/// [`FrameProgress`] says, and books its events in the frame's track (the newest one). The
/// connection's source waits ([`Flow::Waits`]): returns the cause when the frame stopped for
/// room in the engine (`conn.progress` keeps its place), `None` when it is done.
fn continue_frame<const P: usize, const POOL: usize, const LANE: usize, const DL: usize>(
    conn: &mut Conn,
    dispatcher: &mut Dispatcher<'_, P, POOL, LANE, DL>,
    counters: &HostCounters,
    ack: AckMode,
    frame: &Frame<'_>,
    now: u64,
) -> Option<Reason> {
    let seq = frame.seq();
    let mut progress = conn.progress.take().unwrap_or_default();
    let mut rejects = 0u32;
    let mut refused = 0u32;
    // A frame the producer resends that was in flight when the engine last stopped: the
    // events the logs held then are not taken again (an `Arc` clone, no allocation).
    let held = conn
        .held
        .as_ref()
        .filter(|h| seq <= h.max_seq())
        .map(Arc::clone);
    let source = conn.source.get();
    let step = dispatcher.dispatch_frame_resent(
        frame,
        source,
        now,
        Flow::Waits,
        &mut progress,
        |i, header, payload| {
            held.as_ref()
                .is_some_and(|h| h.holds(seq, i, header, payload))
        },
        |i, header, outcome| {
            if let Outcome::Rejected(reason) = outcome {
                refused += 1;
                let index = u16::try_from(i).unwrap_or(u16::MAX - 1);
                if conn.queue_reject(&Reject::event(seq, reason, index, header.id)) {
                    rejects += 1;
                }
            }
            if ack == AckMode::None {
                return;
            }
            if let Some(track) = conn.tracks.back_mut() {
                match outcome {
                    // In a lane counts as stored when acknowledging on acceptance.
                    Outcome::Queued(_) if ack == AckMode::Accepted => track.stored += 1,
                    // Stored one by one: settled by their completions, like the others.
                    Outcome::Queued(Lane::Batch) if conn.batch_events_stored => track.pending += 1,
                    Outcome::Queued(Lane::Batch) => {
                        // The batch watermark settles events pushed before a tick: the
                        // frame's is the last push of one of its batch events (a frame that
                        // waited pushes them later than it started).
                        track.batch_events += 1;
                        track.tick = now;
                    }
                    Outcome::Queued(_) => track.pending += 1,
                    Outcome::DeadLettered(_) => track.dead += 1,
                    Outcome::Rejected(_) => track.rejected += 1,
                    Outcome::Duplicate => track.duplicates += 1,
                }
            }
        },
    );
    counters.tcp_rejects_sent.add(u64::from(rejects));
    counters
        .tcp_rejects_dropped
        .add(u64::from(refused - rejects));
    if step.waiting.is_some() {
        conn.progress = Some(progress);
        return step.waiting;
    }
    if ack != AckMode::None {
        if let Some(track) = conn.tracks.back_mut() {
            debug_assert_eq!(track.seq, seq, "the newest track is the frame's");
            track.open = false;
        }
    }
    None
}

/// Refuses the HELLO of `len` bytes at the front of the connection's input with `reason`:
/// REJECT, the HELLO consumed, the connection closed once the REJECT is out.
fn refuse_hello(conn: &mut Conn, counters: &HostCounters, seq: u64, reason: Reason, len: usize) {
    reject(conn, counters, &Reject::frame(seq, reason));
    conn.closing = Some(CloseReason::Malformed);
    conn.rstart += len;
    conn.hello_pending = false;
}

/// Runs `f`, recording how long it took in `latency`.
fn timed<T>(latency: &mut LatencyRecorder, f: impl FnOnce() -> T) -> T {
    let t0 = Instant::now();
    let out = f();
    latency.record(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
    out
}

/// Queues a REJECT and counts it, or counts it dropped (output full; the ACK still counts
/// the unit).
fn reject(conn: &mut Conn, counters: &HostCounters, r: &Reject) {
    if conn.queue_reject(r) {
        counters.tcp_rejects_sent.incr();
    } else {
        counters.tcp_rejects_dropped.incr();
    }
}

/// Books a frame in the connection's window (nothing when acknowledgements are off).
fn settle(conn: &mut Conn, ack: AckMode, track: Track) {
    if ack == AckMode::None {
        return;
    }
    conn.inflight_events += u64::from(track.events);
    conn.tracks.push_back(track);
}
