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
//! reading its acks. A bad client costs its own connection, never the engine. A connection
//! past its rate limit (per client, or its token's) is slowed the same way, its frame
//! waiting for tokens; UDP, which cannot be slowed, has its events past the limit
//! dead-lettered `rate_limited`.
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

mod accept;
mod addrs;
mod close;
mod conn;
mod gateway;
mod handoff;
mod hello;
mod housekeeping;
mod parse;
mod producers;
mod ratekeys;
mod serve;
mod source;
mod udp;

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pinstream_core::dispatch::Dispatcher;
use pinstream_core::ratelimit::RateConfig;
use pinstream_core::ring::Consumer;
use pinstream_core::wire::MIN_FRAME_LEN;

use crate::gateway::Tokens;
use crate::stats::{HostCounters, LatencyRecorder};
use crate::sys::net::{EPOLLERR_HUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP, Epoll, Ready};

use self::addrs::PeerCounts;
use self::conn::{CloseReason, Conn, Track};
pub use self::gateway::{GATEWAY_FRAMES, GATEWAY_REPLIES, GatewayEnd, GatewayLink, GatewayRings};
pub use self::handoff::{Handoff, HandoffRing, HandoffRx, HandoffTx, TLS_HANDOFF};
pub use self::source::SourceId;
pub use self::udp::UdpIngest;

pub(crate) use self::ratekeys::token_ticks;

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
    /// After `stop`, the gateway has taken nothing more and pushed every frame it had taken
    /// into its ring (so the ingest thread, reading the ring dry, takes them all in).
    pub gateway_drained: AtomicBool,
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
            gateway_drained: AtomicBool::new(false),
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
    pub fn from_config(t: &crate::config::TcpSection) -> Self {
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
                crate::config::PipelineSection::default().dedup_window_ms,
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
        Self::from_config(&crate::config::TcpSection::default())
    }
}

const LISTENER: u64 = 0;
const UDP: u64 = u64::MAX;
/// How often timeouts are checked.
const HOUSEKEEPING: u64 = 10_000_000;

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
    /// The HTTP gateway's rings, if it runs ([`gateway`]).
    gateway: Option<GatewayEnd<'a>>,
    /// The gateway's connection slot (after the TCP slots), while it is open.
    gateway_slot: Option<usize>,
    /// `tcp.auth = "token"`: the tokens a TCP connection's HELLO must show one of (the
    /// gateway's slot is exempt: the gateway authenticates its own clients).
    auth: Option<Arc<Tokens>>,
    /// Connections from the TLS terminator, if `tcp.tls_cert` is set ([`handoff`]).
    tls: Option<HandoffRx<'a>>,
}

/// What the ingest thread shares with the engine: the flags and counters, and where it
/// records its latencies.
pub struct IngestContext<'a> {
    /// The engine's shared flags and clocks.
    pub shared: &'a Shared,
    /// The host counters it moves.
    pub counters: &'a HostCounters,
    /// Per frame, the time to dispatch it.
    pub latency: LatencyRecorder,
    /// Per TCP frame, the time from its dispatch to its ACK being owed.
    pub ack_latency: LatencyRecorder,
}

impl<'a, const P: usize, const POOL: usize, const LANE: usize, const DL: usize>
    Ingest<'a, P, POOL, LANE, DL>
{
    /// An ingest thread's state: binds nothing itself; give it bound sockets (`udp`: the
    /// socket, datagrams per `recvmmsg`, the largest datagram).
    ///
    /// # Errors
    /// `epoll_create1` or registering a socket failed, or a limit is out of range.
    pub fn new(
        context: IngestContext<'a>,
        dispatcher: Dispatcher<'a, P, POOL, LANE, DL>,
        completions: Consumer<'a, Completion, COMPLETIONS>,
        ack: AckMode,
        limits: TcpLimits,
        listener: Option<TcpListener>,
        udp: Option<(UdpSocket, usize, usize)>,
    ) -> io::Result<Self> {
        let IngestContext {
            shared,
            counters,
            latency,
            ack_latency,
        } = context;
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
            gateway: None,
            gateway_slot: None,
            auth: None,
            tls: None,
        })
    }

    /// Requires every TCP connection to show one of `tokens` in its HELLO (`tcp.auth =
    /// "token"`, `docs/PROTOCOL.md` §5): without one it is refused (`unauthenticated`) and
    /// closed; its events are limited to its token's topics (`forbidden_topic`) and rate
    /// (its frames wait for tokens). The gateway's slot is exempt. Call before the engine takes input.
    pub fn set_auth(&mut self, tokens: Arc<Tokens>) {
        self.auth = Some(tokens);
    }

    /// Serves a gateway thread's rings as one more connection, in a slot of its own after
    /// the TCP slots (see [`GatewayRings`]). It is acknowledged like TCP clients (under the
    /// engine's ack mode; `accepted` when that is `none`, so the gateway can answer), with
    /// one ACK per frame, and sends as a version-2 client without a producer session.
    /// Its events are admitted under `rate_key` (the engine gives it an unlimited one: the
    /// gateway limits its own clients). Call after
    /// [`set_batch_events_stored`](Self::set_batch_events_stored) and
    /// [`set_rate_limit`](Self::set_rate_limit), which must leave `rate_key` out.
    ///
    /// # Errors
    /// A gateway is served already, or the slots would exceed [`SourceId::MAX_SLOTS`].
    pub fn set_gateway(&mut self, end: GatewayEnd<'a>, rate_key: u32) -> io::Result<()> {
        let slot = self.conns.len();
        if self.gateway.is_some() || slot + 1 > SourceId::MAX_SLOTS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "one gateway at most, within the connection slots",
            ));
        }
        let limits = &self.limits;
        let mut conn = Conn::with_buffers(
            limits.recv_buffer,
            limits.send_buffer,
            limits.inflight_frames,
        );
        self.generations.push(1);
        conn.source = SourceId::tcp(slot, 1);
        conn.max_frame = limits.max_frame_len;
        conn.version = 2;
        conn.hello_seen = true;
        conn.writable = true;
        conn.last_input = self.now;
        conn.gateway = true;
        conn.batch_events_stored = self.batch_events_stored;
        conn.rate_key = rate_key;
        self.conns.push(Some(conn));
        // Room for it in the lists sized for the TCP slots (nothing grows later).
        self.open.reserve(1);
        self.waiting.reserve(1);
        self.open.push(slot);
        self.gateway = Some(end);
        self.gateway_slot = Some(slot);
        self.counters.tcp_open.set(self.open.len() as u64);
        Ok(())
    }

    /// Takes connections from the TLS terminator's ring (see [`Handoff`]) besides (or,
    /// with no listener, instead of) accepting TCP connections.
    pub fn set_tls_handoff(&mut self, rx: HandoffRx<'a>) {
        self.tls = Some(rx);
    }

    /// The ack mode a gateway's frames are settled under.
    fn gateway_ack(&self) -> AckMode {
        match self.ack {
            AckMode::None => AckMode::Accepted,
            mode => mode,
        }
    }

    /// Marks the gateway's connection readable when its ring holds frames, and writable
    /// (its reply ring is tried on every round).
    fn poll_gateway(&mut self) {
        let (Some(slot), Some(end)) = (self.gateway_slot, self.gateway.as_mut()) else {
            return;
        };
        if let Some(conn) = self.conns[slot].as_mut() {
            if !end.frames.is_empty() {
                conn.readable = true;
            }
            conn.writable = true;
        }
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
        work |= self.take_handoffs();
        work |= self.take_completions();
        self.poll_gateway();
        work |= self.serve_connections();
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

    /// After `stop`, before [`shut_down`](Self::shut_down): keeps serving (every
    /// connection, as [`poll`](Self::poll) does) until the gateway has pushed every frame it
    /// took into its ring and this thread has read the ring dry and dispatched what it read,
    /// or until `deadline`. A request the gateway answered `202` (`ack=none`) was taken: it
    /// must be stored, not left in the ring at a clean stop. Without a gateway: at once.
    ///
    /// # Errors
    /// As [`poll`](Self::poll).
    pub fn drain_gateway(&mut self, deadline: Duration) -> io::Result<()> {
        let Some(slot) = self.gateway_slot else {
            return Ok(());
        };
        let until = Instant::now() + deadline;
        loop {
            // Read before polling: a drained gateway pushes nothing after it.
            let drained = self.shared.gateway_drained.load(Ordering::Acquire);
            let work = self.poll()?;
            let ring_empty = self
                .gateway
                .as_mut()
                .is_none_or(|end| end.frames.is_empty());
            let conn_idle = self.conns[slot].as_ref().is_none_or(|c| c.rstart == c.rend);
            if (drained && ring_empty && conn_idle) || Instant::now() >= until {
                return Ok(());
            }
            if !work {
                std::thread::yield_now();
            }
        }
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
                    if conn.gateway {
                        if let Some(end) = self.gateway.as_mut() {
                            conn.flush_to(&mut end.replies);
                        }
                    } else if conn.flush().is_err() {
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
}
