//! A load generator: EVENT or BATCH frames over TCP or UDP, flat out or at a fixed rate, on
//! one or more connections, with the acknowledgement latency of every frame measured.
//!
//! [`spawn`] opens the connections (TCP: connect and HELLO, so an unreachable server or a
//! frame the server would refuse is reported before anything is sent), then runs each on
//! its own threads:
//!
//! - a **writer** encodes frames into one buffer allocated up front and sends them: flat
//!   out, or paced by a schedule (frame `k` is due when the events before it are due at
//!   `rate` events per second; the writer sleeps until the next frame is due, never per
//!   event). With [`AckWait::Wait`] at most `window` frames are unacknowledged.
//! - a **reader** (TCP only) takes the server's ACKs and REJECTs and records, per frame,
//!   the time from its send to the first ACK whose watermark covers it (an hdrhistogram in
//!   nanoseconds). A frame left unacknowledged for `ack_timeout`, a connection closed
//!   before every frame is acknowledged, or any socket error ends the whole run with an
//!   error that says which.
//!
//! UDP sends one frame per datagram (at most [`MAX_DATAGRAM`] bytes, which is what the
//! server's `recvmmsg` takes whole) and has no acknowledgements: nothing says whether the
//! server got them.
//!
//! Events: priorities cycle through [`LoadConfig::priorities`] (see [`PriorityMix`] for a
//! weighted cycle), topic ids `0..topics` change once per cycle, so every priority meets
//! every topic; event `k` of connection `c` of `n` has id `id_base + c + k * n` (unique in
//! the run) and its id as value. Payload bytes are `0xA5`.
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use pinstream_host::loadgen::{self, LoadConfig};
//!
//! let addr: SocketAddr = "127.0.0.1:7070".parse().unwrap();
//! let report = loadgen::run(&LoadConfig::new(addr, 100_000))?;
//! println!("{:.0} events/s", report.events_per_sec());
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::net::{Shutdown, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pinstream_client::{ConnectOptions, Connection, Reader, Reply, reason_text};
use pinstream_core::event::{EventHeader, Priority};
use pinstream_core::wire::{self, BatchEncoder, Hello, Reject, encode_event};

/// The largest UDP payload over IPv4 (65 535 − 8 − 20): a frame sent over UDP must fit.
pub const MAX_DATAGRAM: usize = 65_507;

/// Bytes of a BATCH frame besides its records: header, count and reserved, trailer.
const BATCH_OVERHEAD: usize = wire::HEADER_LEN + wire::BATCH_PREFIX_LEN + wire::TRAILER_LEN;

/// How often a blocked reader wakes to check timeouts and the end of the run.
const READ_POLL: Duration = Duration::from_millis(20);

/// The largest sum of [`PriorityMix`] weights (after dividing by their common divisor): the
/// cycle is this long at most.
pub const MAX_MIX_WEIGHT: u32 = 1 << 16;

/// How events travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// One TCP connection each, HELLO first, ACKs back.
    Tcp,
    /// One UDP socket each, one frame per datagram, no acknowledgements.
    Udp,
}

impl Transport {
    /// `"tcp"` or `"udp"`.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

/// Whether to wait for acknowledgements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckWait {
    /// Keep at most `window` frames unacknowledged, measure ACK latency, and finish only
    /// when every frame is acknowledged (TCP only).
    Wait,
    /// Fire and forget: for servers with `engine.ack = "none"`, and for UDP. Over TCP the
    /// replies are still read (so the server never stalls on them) and counted if any come.
    None,
}

/// A weighted mix of priorities, e.g. `critical:1,high:2,medium:4,low:1,batch:1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriorityMix {
    /// Weight per priority, by wire code.
    weights: [u32; 5],
}

impl PriorityMix {
    /// Every event with priority `p`.
    pub fn single(p: Priority) -> Self {
        let mut weights = [0; 5];
        weights[usize::from(p.as_u8())] = 1;
        Self { weights }
    }

    /// Parses `name[:weight],...` with the names of [`Priority::name`] (`critical`, `high`,
    /// `medium`, `low`, `batch`, in any case) and weights 0 or more (1 when left out); a name appears once at most.
    ///
    /// ```
    /// use pinstream_core::event::Priority;
    /// use pinstream_host::loadgen::PriorityMix;
    ///
    /// let mix = PriorityMix::parse("high:1,medium:3").unwrap();
    /// assert_eq!(mix.weight(Priority::Medium), 3);
    /// assert_eq!(mix.schedule().len(), 4);
    /// assert!(PriorityMix::parse("urgent").is_err());
    /// ```
    ///
    /// # Errors
    /// An unknown name, a weight that is not a number, a name given twice, weights that sum
    /// to 0 or (divided by their greatest common divisor) above [`MAX_MIX_WEIGHT`].
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut weights = [0u32; 5];
        let mut seen = [false; 5];
        for part in s.split(',') {
            let part = part.trim();
            let (name, weight) = match part.split_once(':') {
                Some((n, w)) => {
                    let w = w.trim().parse::<u32>().map_err(|e| {
                        format!(
                            "priority mix {s:?}: weight {w:?} of {n:?} is not a whole number ({e})"
                        )
                    })?;
                    (n.trim(), w)
                }
                None => (part, 1),
            };
            let Some(p) = Priority::ALL
                .into_iter()
                .find(|p| p.name().eq_ignore_ascii_case(name))
            else {
                let names: Vec<_> = Priority::ALL.iter().map(|p| p.name()).collect();
                return Err(format!(
                    "priority mix {s:?}: unknown priority {name:?}; use {} with optional :weight, e.g. critical:1,medium:4",
                    names.join(", ")
                ));
            };
            let i = usize::from(p.as_u8());
            if seen[i] {
                return Err(format!("priority mix {s:?}: {} is given twice", p.name()));
            }
            seen[i] = true;
            weights[i] = weight;
        }
        let divisor = weights.iter().fold(0, |g, &w| gcd(g, w));
        if divisor == 0 {
            return Err(format!(
                "priority mix {s:?}: the weights sum to 0; give at least one priority a weight above 0"
            ));
        }
        let total: u64 = weights.iter().map(|&w| u64::from(w / divisor)).sum();
        if total > u64::from(MAX_MIX_WEIGHT) {
            return Err(format!(
                "priority mix {s:?}: the weights (divided by their common divisor {divisor}) sum to {total}, above {MAX_MIX_WEIGHT}; use smaller weights"
            ));
        }
        for w in &mut weights {
            *w /= divisor;
        }
        Ok(Self { weights })
    }

    /// The weight of `p` (after dividing by the weights' common divisor).
    pub fn weight(&self, p: Priority) -> u32 {
        self.weights[usize::from(p.as_u8())]
    }

    /// One cycle of priorities, each as often as its weight, spread out evenly (smooth
    /// weighted round robin): `high:1,medium:3` gives `medium, high, medium, medium`. Every
    /// whole number of cycles has the mix's proportions exactly.
    pub fn schedule(&self) -> Vec<Priority> {
        let total: i64 = self.weights.iter().map(|&w| i64::from(w)).sum();
        let mut current = [0i64; 5];
        let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for _ in 0..total {
            let mut best = 0;
            for i in 0..5 {
                current[i] += i64::from(self.weights[i]);
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            // `best` indexes `weights`, by wire code: a valid one.
            out.extend(Priority::from_u8(best as u8));
        }
        out
    }
}

impl std::fmt::Display for PriorityMix {
    /// `name:weight` for every priority with a weight, comma separated.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for p in Priority::ALL {
            let w = self.weight(p);
            if w > 0 {
                if !first {
                    f.write_str(",")?;
                }
                write!(f, "{}:{w}", p.name())?;
                first = false;
            }
        }
        Ok(())
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// What to send. `events` and `rate` are totals, split between the connections by
/// [`spawn`].
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// The server's address (TCP or UDP per `transport`).
    pub addr: SocketAddr,
    /// TCP or UDP.
    pub transport: Transport,
    /// Wait for acknowledgements or not ([`AckWait::Wait`] needs TCP).
    pub ack: AckWait,
    /// Events in all, at most (`u64::MAX` with a `duration`: as many as fit in it).
    pub events: u64,
    /// Stop sending after this long (paced: once the next frame would be due after it).
    pub duration: Option<Duration>,
    /// Events per second in all; 0 = as fast as the server (or the socket) takes them.
    pub rate: u64,
    /// Payload bytes per event (at most 65 535).
    pub payload: usize,
    /// Events per frame: 1 sends EVENT frames, more sends BATCH frames.
    pub batch: u32,
    /// Frames sent and not yet acknowledged at most, per connection (with
    /// [`AckWait::Wait`]; keep it within the server's `tcp.inflight_frames`).
    pub window: usize,
    /// Priorities to cycle through ([`PriorityMix::schedule`] makes a weighted cycle).
    pub priorities: Vec<Priority>,
    /// Topic ids `0..topics` are used in turn.
    pub topics: u16,
    /// First event id.
    pub id_base: u64,
    /// Give up on a connect, a HELLO, or a frame not acknowledged after this long.
    pub ack_timeout: Duration,
}

impl LoadConfig {
    /// TCP, waiting for ACKs, flat out: 100-byte events, 64 per frame, 256 frames in
    /// flight, all `Medium` on topic 0, ids from 1, a 10 s timeout.
    pub fn new(addr: SocketAddr, events: u64) -> Self {
        Self {
            addr,
            transport: Transport::Tcp,
            ack: AckWait::Wait,
            events,
            duration: None,
            rate: 0,
            payload: 100,
            batch: 64,
            window: 256,
            priorities: vec![Priority::Medium],
            topics: 1,
            id_base: 1,
            ack_timeout: Duration::from_secs(10),
        }
    }

    /// The length of a full frame: `52 + payload` for EVENT frames (`batch` 1),
    /// `28 + batch × (32 + payload)` for BATCH frames.
    pub fn frame_len(&self) -> usize {
        if self.batch == 1 {
            wire::event_frame_len(self.payload)
        } else {
            (self.batch as usize)
                .saturating_mul(wire::EVENT_RECORD_LEN.saturating_add(self.payload))
                .saturating_add(BATCH_OVERHEAD)
        }
    }

    /// Checks what can be checked without a server.
    ///
    /// # Errors
    /// A zero `batch`, `window`, `topics`, `ack_timeout` or empty `priorities`; a payload
    /// above 65 535 bytes; no `events` and no `duration`; [`AckWait::Wait`] over UDP; a
    /// frame above [`wire::DEFAULT_MAX_FRAME_LEN`] (TCP, checked again against the server's
    /// HELLO) or [`MAX_DATAGRAM`] (UDP). The message names the setting and what to do.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch == 0 {
            return Err("batch must be at least 1 event per frame".into());
        }
        if self.window == 0 {
            return Err("the window (frames in flight) must be at least 1".into());
        }
        if self.priorities.is_empty() {
            return Err("at least one priority is needed".into());
        }
        if self.topics == 0 {
            return Err("topics must be at least 1 (topic ids 0..topics)".into());
        }
        if self.ack_timeout.is_zero() {
            return Err("the ack timeout must be above 0".into());
        }
        if self.payload > wire::MAX_PAYLOAD_LEN {
            return Err(format!(
                "a payload of {} bytes is above the protocol's limit of {} bytes",
                self.payload,
                wire::MAX_PAYLOAD_LEN
            ));
        }
        if self.events == 0 && self.duration.is_none() {
            return Err("nothing to send: events is 0 and no duration is given".into());
        }
        if self.transport == Transport::Udp && self.ack == AckWait::Wait {
            return Err(
                "UDP has no acknowledgements: use ack mode none with UDP (--ack none)".into(),
            );
        }
        let len = self.frame_len();
        let (limit, what) = match self.transport {
            Transport::Tcp => (wire::DEFAULT_MAX_FRAME_LEN, "the default maximum frame"),
            Transport::Udp => (MAX_DATAGRAM, "the largest UDP datagram"),
        };
        if len > limit {
            return Err(format!(
                "a frame of {} events of {} payload bytes is {len} bytes, above {what} ({limit} bytes); lower the batch to {} or the payload",
                self.batch,
                self.payload,
                max_batch(limit, self.payload)
            ));
        }
        Ok(())
    }
}

/// The most events of `payload` bytes a BATCH frame of `limit` bytes holds (at least 1).
fn max_batch(limit: usize, payload: usize) -> usize {
    (limit.saturating_sub(BATCH_OVERHEAD) / (wire::EVENT_RECORD_LEN + payload)).max(1)
}

/// What the server said it did with the events, per its last ACKs (cumulative counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// Events stored.
    pub stored: u64,
    /// Events not stored again because they were stored already (a repeated id within the
    /// dedup window; 0 from a version-1 server, which counts them in `stored`).
    pub duplicates: u64,
    /// Events dead-lettered.
    pub dead_lettered: u64,
    /// Units rejected (an undecodable frame counts 1).
    pub rejected: u64,
}

impl Outcomes {
    /// `stored + duplicates + dead_lettered + rejected`.
    pub fn total(&self) -> u64 {
        self.stored + self.duplicates + self.dead_lettered + self.rejected
    }
}

/// What happened.
#[derive(Debug)]
pub struct LoadReport {
    /// TCP or UDP.
    pub transport: Transport,
    /// Whether acknowledgements were waited for.
    pub ack: AckWait,
    /// Connections (or UDP sockets) used.
    pub connections: usize,
    /// Events sent.
    pub sent: u64,
    /// Frames sent.
    pub frames: u64,
    /// Bytes of the data frames sent (headers and trailers included; not the HELLO).
    pub bytes: u64,
    /// From the first send to the last acknowledgement ([`AckWait::Wait`]) or the last
    /// send; the longest of the connections.
    pub elapsed: Duration,
    /// The sum over the connections of their last ACK's counts; `None` when some
    /// connection got no ACK (UDP, or a server that does not acknowledge).
    pub outcomes: Option<Outcomes>,
    /// REJECT frames received.
    pub reject_frames: u64,
    /// The first REJECT received, if any.
    pub first_reject: Option<Reject>,
    /// Send-to-ACK latency per frame, nanoseconds ([`AckWait::Wait`] only).
    pub ack_latency: Option<Histogram<u64>>,
}

impl LoadReport {
    /// Events per second over `elapsed`.
    pub fn events_per_sec(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Frame bytes per second over `elapsed`.
    pub fn bytes_per_sec(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// With [`AckWait::Wait`], says what is wrong when the ACKs do not account for every
    /// event sent exactly once (`stored + dead_lettered + rejected != sent`); `None` when
    /// they do, or when acknowledgements were not waited for.
    pub fn accounting_error(&self) -> Option<String> {
        if self.ack != AckWait::Wait {
            return None;
        }
        match self.outcomes {
            Some(o) if o.total() == self.sent => None,
            Some(o) => Some(format!(
                "the server's ACKs account for {} events (stored {}, duplicates {}, dead-lettered {}, rejected {}) but {} were sent",
                o.total(),
                o.stored,
                o.duplicates,
                o.dead_lettered,
                o.rejected,
                self.sent
            )),
            None => Some(format!(
                "{} events were sent but some connection received no ACK",
                self.sent
            )),
        }
    }
}

/// Counters a running load publishes (read them while it runs, e.g. for a progress bar).
#[derive(Debug)]
pub struct Progress {
    events_sent: AtomicU64,
    frames_acked: AtomicU64,
    /// The index of the first connection that failed (`usize::MAX`: none): the others
    /// stop, and its error is the run's.
    abort_by: AtomicUsize,
}

impl Progress {
    fn new() -> Self {
        Self {
            events_sent: AtomicU64::new(0),
            frames_acked: AtomicU64::new(0),
            abort_by: AtomicUsize::new(usize::MAX),
        }
    }

    /// Events sent so far, all connections.
    pub fn events_sent(&self) -> u64 {
        self.events_sent.load(Ordering::Relaxed)
    }

    /// Frames acknowledged so far, all connections.
    pub fn frames_acked(&self) -> u64 {
        self.frames_acked.load(Ordering::Relaxed)
    }

    fn aborted(&self) -> bool {
        self.abort_by.load(Ordering::Acquire) != usize::MAX
    }

    /// Connection `c` failed; the first to say so is the cause.
    fn abort(&self, c: usize) {
        let _ = self
            .abort_by
            .compare_exchange(usize::MAX, c, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// A load running on its threads.
#[derive(Debug)]
pub struct LoadRun {
    progress: Arc<Progress>,
    start: Instant,
    transport: Transport,
    ack: AckWait,
    connections: Vec<JoinHandle<io::Result<ConnReport>>>,
}

impl LoadRun {
    /// The live counters.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Time since sending started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Whether every connection has finished (successfully or not).
    pub fn is_finished(&self) -> bool {
        self.connections.iter().all(JoinHandle::is_finished)
    }

    /// Waits for every connection and merges their reports.
    ///
    /// # Errors
    /// The first connection's failure (the others stop when one fails): a socket error, a
    /// server that closed the connection or left a frame unacknowledged for the timeout.
    pub fn join(self) -> io::Result<LoadReport> {
        let n = self.connections.len();
        let mut results: Vec<io::Result<ConnReport>> = Vec::with_capacity(n);
        for (c, handle) in self.connections.into_iter().enumerate() {
            results.push(handle.join().unwrap_or_else(|_| {
                Err(io::Error::other(format!(
                    "connection {c}: its thread panicked"
                )))
            }));
        }
        // The connection that failed first explains the others' failures.
        let cause = self.progress.abort_by.load(Ordering::Acquire);
        if cause < n && results[cause].is_err() {
            results.swap(0, cause);
        }
        let mut reports = Vec::with_capacity(n);
        for result in results {
            reports.push(result?);
        }
        let mut report = LoadReport {
            transport: self.transport,
            ack: self.ack,
            connections: n,
            sent: 0,
            frames: 0,
            bytes: 0,
            elapsed: Duration::ZERO,
            outcomes: Some(Outcomes::default()),
            reject_frames: 0,
            first_reject: None,
            ack_latency: None,
        };
        for r in reports {
            report.sent += r.sent;
            report.frames += r.frames;
            report.bytes += r.bytes;
            report.elapsed = report.elapsed.max(r.end);
            report.outcomes = match (report.outcomes, r.outcomes) {
                (Some(a), Some(b)) => Some(Outcomes {
                    stored: a.stored + b.stored,
                    duplicates: a.duplicates + b.duplicates,
                    dead_lettered: a.dead_lettered + b.dead_lettered,
                    rejected: a.rejected + b.rejected,
                }),
                _ => None,
            };
            report.reject_frames += r.reject_frames;
            report.first_reject = report.first_reject.or(r.first_reject);
            report.ack_latency = match (report.ack_latency, r.latency) {
                (Some(mut a), Some(b)) => {
                    a.add(&b)
                        .map_err(|e| io::Error::other(format!("merging histograms: {e}")))?;
                    Some(a)
                }
                (a, b) => a.or(b),
            };
        }
        if report.ack == AckWait::None {
            // Without waiting, the ACK latencies are not meaningful (frames are not tracked).
            report.ack_latency = None;
        }
        Ok(report)
    }
}

/// Runs the load on one connection (or UDP socket) to the end.
///
/// # Errors
/// As [`spawn`] and [`LoadRun::join`].
pub fn run(cfg: &LoadConfig) -> io::Result<LoadReport> {
    spawn(cfg, 1)?.join()
}

/// Opens `connections` connections (TCP: connect and HELLO; UDP: a connected socket each)
/// and starts sending on them, `events` and `rate` split between them.
///
/// # Errors
/// An invalid config ([`LoadConfig::validate`], or fewer events or events per second than
/// connections; kind `InvalidInput`), a server that cannot be reached or refuses the HELLO,
/// or a frame longer than the server accepts (kind `InvalidInput`). Messages name the
/// address.
pub fn spawn(cfg: &LoadConfig, connections: usize) -> io::Result<LoadRun> {
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    cfg.validate().map_err(invalid)?;
    if connections == 0 {
        return Err(invalid("at least one connection is needed".into()));
    }
    let n = connections as u64;
    if cfg.duration.is_none() && cfg.events < n {
        return Err(invalid(format!(
            "{} events cannot be split between {connections} connections; send at least one per connection",
            cfg.events
        )));
    }
    if cfg.rate != 0 && cfg.rate < n {
        return Err(invalid(format!(
            "a rate of {} events/s cannot be split between {connections} connections; use at least {connections} events/s",
            cfg.rate
        )));
    }
    let mut sockets = Vec::with_capacity(connections);
    for c in 0..connections {
        sockets.push(match cfg.transport {
            Transport::Tcp => Socket::Tcp(connect_tcp(cfg, c)?),
            Transport::Udp => Socket::Udp(connect_udp(cfg, c)?),
        });
    }
    let progress = Arc::new(Progress::new());
    let start = Instant::now();
    let mut handles = Vec::with_capacity(connections);
    for (c, socket) in sockets.into_iter().enumerate() {
        let c64 = c as u64;
        let share = |total: u64| {
            if total == u64::MAX {
                u64::MAX
            } else {
                total / n + u64::from(c64 < total % n)
            }
        };
        let plan = Plan {
            cfg: cfg.clone(),
            index: c,
            events: share(cfg.events),
            rate: share(cfg.rate),
            id_stride: n,
            id_first: cfg.id_base.wrapping_add(c64),
            start,
        };
        let progress = Arc::clone(&progress);
        let handle = thread::Builder::new()
            .name(format!("loadgen-{c}"))
            .spawn(move || {
                let result = run_connection(&plan, socket, &progress);
                if result.is_err() {
                    progress.abort(c);
                }
                result
            })?;
        handles.push(handle);
    }
    Ok(LoadRun {
        progress,
        start,
        transport: cfg.transport,
        ack: cfg.ack,
        connections: handles,
    })
}

/// One connection's share of the load.
struct Plan {
    cfg: LoadConfig,
    /// Connection index, for messages.
    index: usize,
    /// Events for this connection (`u64::MAX`: until the duration ends).
    events: u64,
    /// Events per second for this connection (0: flat out).
    rate: u64,
    /// Ids: `id_first + k * id_stride` for event `k`.
    id_stride: u64,
    id_first: u64,
    /// The run's start, shared by every connection.
    start: Instant,
}

impl Plan {
    /// When the frame whose first event is event `sent` is due, from the start.
    fn due(&self, sent: u64) -> Duration {
        let nanos = u128::from(sent) * 1_000_000_000 / u128::from(self.rate.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

enum Socket {
    Tcp(Connection),
    Udp(UdpSocket),
}

/// What one connection did.
struct ConnReport {
    sent: u64,
    frames: u64,
    bytes: u64,
    end: Duration,
    outcomes: Option<Outcomes>,
    reject_frames: u64,
    first_reject: Option<Reject>,
    latency: Option<Histogram<u64>>,
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Connects, says HELLO and checks the server's reply against the frame size.
fn connect_tcp(cfg: &LoadConfig, c: usize) -> io::Result<Connection> {
    let addr = cfg.addr;
    let frame_len = cfg.frame_len();
    let (conn, hello) = Connection::connect(
        addr,
        &ConnectOptions {
            timeout: cfg.ack_timeout,
            // Version 2, a producer session per connection (the server assigns its id), so
            // the ACKs count duplicates apart from stored events; a version-1 server
            // answers 1.
            hello: Some(Hello::producer(
                u32::try_from(frame_len).unwrap_or(u32::MAX),
                0,
            )),
        },
    )
    .map_err(|e| io::Error::new(e.kind(), format!("{e} (connection {c})")))?;
    let h = hello.unwrap_or_default();
    if (h.max_frame_len as usize) < frame_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the server at {addr} accepts frames of at most {} bytes, and {} events of {} payload bytes make {frame_len}; lower the batch to {} or the payload",
                h.max_frame_len,
                cfg.batch,
                cfg.payload,
                max_batch(h.max_frame_len as usize, cfg.payload)
            ),
        ));
    }
    Ok(conn)
}

fn connect_udp(cfg: &LoadConfig, c: usize) -> io::Result<UdpSocket> {
    let addr = cfg.addr;
    let local: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = UdpSocket::bind(local).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("binding a UDP socket (connection {c}): {e}"),
        )
    })?;
    socket.connect(addr).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot send to {addr} over UDP (connection {c}): {e}"),
        )
    })?;
    Ok(socket)
}

/// State shared by a connection's writer and reader.
struct Window {
    /// Send time (ns from the start) per frame, at `seq % len`; `len` is a power of two at
    /// least twice the window, so a slot is not reused while its frame is unacknowledged.
    sent_at: Vec<AtomicU64>,
    /// The highest seq sent.
    last_seq: AtomicU64,
    /// The last seq once the writer is done, `u64::MAX` before.
    final_seq: AtomicU64,
    /// When the writer finished (ns from the start).
    final_at: AtomicU64,
    /// The ACK watermark.
    acked: AtomicU64,
}

fn run_connection(plan: &Plan, socket: Socket, progress: &Arc<Progress>) -> io::Result<ConnReport> {
    let cfg = &plan.cfg;
    let slots = cfg.window.next_power_of_two().saturating_mul(2);
    let window = Arc::new(Window {
        sent_at: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        last_seq: AtomicU64::new(0),
        final_seq: AtomicU64::new(u64::MAX),
        final_at: AtomicU64::new(0),
        acked: AtomicU64::new(0),
    });
    match socket {
        Socket::Udp(socket) => {
            let sent = send_frames(plan, progress, &window, |frame| {
                socket.send(frame).map(drop).map_err(|e| {
                    let hint = if e.kind() == io::ErrorKind::ConnectionRefused {
                        "; nothing listens on that UDP port"
                    } else {
                        ""
                    };
                    io::Error::new(
                        e.kind(),
                        format!("sending to {} over UDP: {e}{hint}", cfg.addr),
                    )
                })
            })?;
            Ok(ConnReport {
                sent: sent.events,
                frames: sent.frames,
                bytes: sent.bytes,
                end: sent.end,
                outcomes: None,
                reject_frames: 0,
                first_reject: None,
                latency: None,
            })
        }
        Socket::Tcp(conn) => {
            let (mut writer, mut reader) = conn.split();
            let closer = writer.stream().try_clone()?;
            reader.stream().set_read_timeout(Some(READ_POLL))?;
            let reader_thread = {
                let (window, progress) = (Arc::clone(&window), Arc::clone(progress));
                let (ack, timeout, start) = (cfg.ack, cfg.ack_timeout, plan.start);
                let (index, addr) = (plan.index, cfg.addr);
                thread::Builder::new()
                    .name(format!("loadgen-acks-{}", plan.index))
                    .spawn(move || {
                        let result = read_replies(
                            &mut reader,
                            addr,
                            ack,
                            timeout,
                            start,
                            &window,
                            &progress,
                        );
                        if result.is_err() {
                            // Unblock the writer (it may be waiting for the window or the
                            // socket) and stop the other connections.
                            progress.abort(index);
                            let _ = reader.stream().shutdown(Shutdown::Both);
                        }
                        result
                    })?
            };
            let addr = cfg.addr;
            let sent = send_frames(plan, progress, &window, |frame| {
                writer.send(frame).map_err(|e| {
                    let what = if is_timeout(&e) {
                        format!(
                            "the server at {addr} took no data for {:?} (it stopped reading)",
                            cfg.ack_timeout
                        )
                    } else {
                        format!("sending to {addr} over TCP: {e}")
                    };
                    io::Error::new(e.kind(), what)
                })
            });
            if sent.is_ok() {
                // Half close: the server acknowledges what it got, then closes.
                let _ = closer.shutdown(Shutdown::Write);
            } else {
                let _ = closer.shutdown(Shutdown::Both);
            }
            let acks = reader_thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the ACK reader panicked")));
            let (sent, acks) = match (sent, acks) {
                (Ok(s), Ok(a)) => (s, a),
                // The writer timed out: the server stopped reading; that says most.
                (Err(e), _) if is_timeout(&e) => return Err(e),
                // Otherwise the reader's error explains the writer's (a closed connection,
                // an ACK timeout, a failure elsewhere).
                (_, Err(e)) | (Err(e), Ok(_)) => return Err(e),
            };
            Ok(ConnReport {
                sent: sent.events,
                frames: sent.frames,
                bytes: sent.bytes,
                end: if cfg.ack == AckWait::Wait {
                    acks.last_at.max(sent.end)
                } else {
                    sent.end
                },
                outcomes: acks.outcomes,
                reject_frames: acks.reject_frames,
                first_reject: acks.first_reject,
                latency: (cfg.ack == AckWait::Wait).then_some(acks.latency),
            })
        }
    }
}

/// Bytes of ready frames gathered into one write when sending flat out over TCP.
const COALESCE_BYTES: usize = 64 * 1024;

/// What a writer sent.
struct Sent {
    events: u64,
    frames: u64,
    bytes: u64,
    /// Time of the last send, from the start.
    end: Duration,
}

/// The writer: encodes and sends frames until the events or the duration run out.
fn send_frames(
    plan: &Plan,
    progress: &Progress,
    window: &Window,
    mut send: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<Sent> {
    let cfg = &plan.cfg;
    let stopped = || {
        io::Error::new(
            io::ErrorKind::Interrupted,
            format!("connection {} stopped: another one failed", plan.index),
        )
    };
    let mut frame = vec![0u8; cfg.frame_len()];
    // Flat out over TCP, frames ready together go out in one write (as NATS clients
    // buffer their publishes): one system call per frame would make the client, not the
    // server, the limit for small frames. Flushed before any wait for the window and at
    // the end, so the server never waits for bytes the client holds.
    let coalesce = cfg.transport == Transport::Tcp && plan.rate == 0;
    let mut pending: Vec<u8> = Vec::with_capacity(if coalesce { COALESCE_BYTES } else { 0 });
    let payload = vec![0xA5u8; cfg.payload];
    let cycle = cfg.priorities.len() as u64;
    let topics = u64::from(cfg.topics);
    let wait = cfg.transport == Transport::Tcp && cfg.ack == AckWait::Wait;
    let mut out = Sent {
        events: 0,
        frames: 0,
        bytes: 0,
        end: Duration::ZERO,
    };
    let mut seq = 0u64;
    while out.events < plan.events {
        if let Some(limit) = cfg.duration {
            let t = if plan.rate > 0 {
                plan.due(out.events)
            } else {
                plan.start.elapsed()
            };
            if t >= limit {
                break;
            }
        }
        if progress.aborted() {
            return Err(stopped());
        }
        seq += 1;
        if wait && seq - window.acked.load(Ordering::Acquire) > cfg.window as u64 {
            if !pending.is_empty() {
                send(&pending)?;
                pending.clear();
            }
            let mut spins = 0u32;
            while seq - window.acked.load(Ordering::Acquire) > cfg.window as u64 {
                if progress.aborted() {
                    return Err(stopped());
                }
                // Yield a little, then sleep: on a small machine a spinning load generator
                // takes the CPU the engine needs.
                spins += 1;
                if spins < 64 {
                    thread::yield_now();
                } else {
                    thread::sleep(Duration::from_micros(20));
                }
            }
        }
        if plan.rate > 0 {
            pace_until(plan.start + plan.due(out.events), progress);
        }
        let n = u64::from(cfg.batch).min(plan.events - out.events);
        // At a fixed rate, latency counts from when the frame was due, not from when it
        // went out: a sender held back by the window or the server would otherwise hide
        // that wait (coordinated omission).
        let now = if plan.rate > 0 {
            plan.due(out.events).min(plan.start.elapsed())
        } else {
            plan.start.elapsed()
        };
        let ts = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        let header = |k: u64| {
            let id = plan.id_first.wrapping_add(k.wrapping_mul(plan.id_stride));
            // `k % cycle` indexes `priorities`; the topic moves once per cycle, so every
            // priority meets every topic.
            let priority = cfg.priorities[(k % cycle) as usize];
            let topic = ((k / cycle) % topics) as u16;
            EventHeader::new(id, topic, priority, ts).with_value(id as i64)
        };
        let encode_error = |e: wire::EncodeError| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("encoding a frame: {e:?}"),
            )
        };
        let len = if cfg.batch == 1 {
            encode_event(&mut frame, seq, &header(out.events), &payload).map_err(encode_error)?
        } else {
            let mut enc = BatchEncoder::new(&mut frame, seq).map_err(encode_error)?;
            for k in out.events..out.events + n {
                enc.push(&header(k), &payload).map_err(encode_error)?;
            }
            enc.finish().map_err(encode_error)?
        };
        let slot = (seq as usize) & (window.sent_at.len() - 1);
        window.sent_at[slot].store(ts, Ordering::Release);
        window.last_seq.store(seq, Ordering::Release);
        if coalesce {
            if pending.len() + len > COALESCE_BYTES && !pending.is_empty() {
                send(&pending)?;
                pending.clear();
            }
            pending.extend_from_slice(&frame[..len]);
        } else {
            send(&frame[..len])?;
        }
        out.events += n;
        out.frames += 1;
        out.bytes += len as u64;
        progress.events_sent.fetch_add(n, Ordering::Relaxed);
    }
    if !pending.is_empty() {
        send(&pending)?;
    }
    out.end = plan.start.elapsed();
    window.final_at.store(
        u64::try_from(out.end.as_nanos()).unwrap_or(u64::MAX),
        Ordering::Release,
    );
    window.final_seq.store(seq, Ordering::Release);
    Ok(out)
}

/// Waits until `due`: sleeps while more than a few hundred microseconds remain (the
/// scheduler's granularity), then yields.
fn pace_until(due: Instant, progress: &Progress) {
    loop {
        let now = Instant::now();
        if now >= due || progress.aborted() {
            return;
        }
        let left = due - now;
        if left > Duration::from_micros(500) {
            thread::sleep((left - Duration::from_micros(200)).min(Duration::from_millis(50)));
        } else {
            thread::yield_now();
        }
    }
}

/// What a reader saw.
struct Acks {
    outcomes: Option<Outcomes>,
    reject_frames: u64,
    first_reject: Option<Reject>,
    /// Time of the last ACK, from the start.
    last_at: Duration,
    latency: Histogram<u64>,
}

/// The reader: ACKs and REJECTs until every frame is acknowledged ([`AckWait::Wait`]) or
/// the server closes the connection after the writer's half close ([`AckWait::None`]).
fn read_replies(
    reader: &mut Reader,
    addr: SocketAddr,
    ack: AckWait,
    timeout: Duration,
    start: Instant,
    window: &Window,
    progress: &Progress,
) -> io::Result<Acks> {
    let mut out = Acks {
        outcomes: None,
        reject_frames: 0,
        first_reject: None,
        last_at: Duration::ZERO,
        latency: Histogram::new_with_bounds(1, 60_000_000_000, 3)
            .map_err(|e| io::Error::other(format!("histogram: {e}")))?,
    };
    let timeout_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    let slots = window.sent_at.len();
    let mut through = 0u64;
    loop {
        let fin = window.final_seq.load(Ordering::Acquire);
        if ack == AckWait::Wait && through >= fin {
            return Ok(out);
        }
        match reader.next_reply() {
            Ok(Some(Reply::Ack(a))) => {
                let now = start.elapsed();
                let now_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
                let last = window.last_seq.load(Ordering::Acquire);
                let upto = a.through_seq.min(last);
                if ack == AckWait::Wait {
                    for seq in through + 1..=upto {
                        let t =
                            window.sent_at[(seq as usize) & (slots - 1)].load(Ordering::Acquire);
                        out.latency
                            .saturating_record(now_ns.saturating_sub(t).max(1));
                    }
                }
                if upto > through {
                    progress
                        .frames_acked
                        .fetch_add(upto - through, Ordering::Relaxed);
                    through = upto;
                    window.acked.store(through, Ordering::Release);
                }
                out.outcomes = Some(Outcomes {
                    stored: a.stored,
                    duplicates: a.duplicates,
                    dead_lettered: a.dead_lettered,
                    rejected: a.rejected,
                });
                out.last_at = now;
            }
            Ok(Some(Reply::Reject(r))) => {
                out.reject_frames += 1;
                out.first_reject.get_or_insert(r);
            }
            Ok(Some(Reply::Hello(_) | Reply::Other(_))) => {}
            Ok(None) => {
                if ack == AckWait::None {
                    return Ok(out);
                }
                let fin = window.final_seq.load(Ordering::Acquire);
                if through >= fin {
                    return Ok(out);
                }
                let last = window.last_seq.load(Ordering::Acquire);
                let hint = if through == 0 && fin != u64::MAX {
                    // It took every frame and the half close without a word: it does not
                    // acknowledge.
                    "; if it runs with engine.ack = \"none\", use --ack none"
                } else {
                    ""
                };
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the server at {addr} closed the connection after acknowledging {through} of the {last} frames sent{}{hint}",
                        first_reject_text(out.first_reject)
                    ),
                ));
            }
            Err(e) if is_timeout(&e) => {
                if progress.aborted() {
                    return Err(io::Error::new(
                        io::ErrorKind::Interrupted,
                        "stopped: another connection failed",
                    ));
                }
                let now_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                match ack {
                    AckWait::Wait => {
                        let last = window.last_seq.load(Ordering::Acquire);
                        if last > through {
                            let seq = through + 1;
                            let t = window.sent_at[(seq as usize) & (slots - 1)]
                                .load(Ordering::Acquire);
                            if now_ns.saturating_sub(t) > timeout_ns {
                                return Err(io::Error::new(
                                    io::ErrorKind::TimedOut,
                                    format!(
                                        "the server at {addr} did not acknowledge frame {seq} within {timeout:?} ({through} of {last} frames acknowledged); if it runs with engine.ack = \"none\", use --ack none{}",
                                        first_reject_text(out.first_reject)
                                    ),
                                ));
                            }
                        }
                    }
                    AckWait::None => {
                        // Done sending and the server has not closed: stop waiting for it.
                        let fin_at = window.final_at.load(Ordering::Acquire);
                        if fin != u64::MAX && now_ns.saturating_sub(fin_at) > timeout_ns {
                            return Ok(out);
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Err(e),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("reading from {addr}: {e}"),
                ));
            }
        }
    }
}

fn first_reject_text(r: Option<Reject>) -> String {
    match r {
        Some(r) => format!(
            "; its first REJECT: frame {}, {}",
            r.frame_seq,
            reason_text(r.reason)
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_names_weights_and_defaults() {
        let mix = PriorityMix::parse("critical:1, HIGH:2,medium:4,low:1,batch").unwrap();
        let w: Vec<u32> = Priority::ALL.iter().map(|&p| mix.weight(p)).collect();
        assert_eq!(w, [1, 2, 4, 1, 1]);
        assert_eq!(mix.to_string(), "critical:1,high:2,medium:4,low:1,batch:1");
        assert_eq!(
            PriorityMix::parse("medium").unwrap(),
            PriorityMix::single(Priority::Medium)
        );
        // Common divisors are removed: the cycle stays short.
        let mix = PriorityMix::parse("high:500,low:1500").unwrap();
        assert_eq!(mix.schedule().len(), 4);
    }

    #[test]
    fn mix_errors_name_the_problem() {
        let err = |s: &str| PriorityMix::parse(s).unwrap_err();
        assert!(err("urgent:1").contains("unknown priority \"urgent\""));
        assert!(err("high:x").contains("weight \"x\""));
        assert!(err("high,high:2").contains("high is given twice"));
        assert!(err("high:0,low:0").contains("sum to 0"));
        assert!(err("high:1,low:100000").contains("above 65536"));
        assert!(err("").contains("unknown priority"));
    }

    #[test]
    fn schedule_has_exact_proportions_spread_out() {
        let mix = PriorityMix::parse("critical:1,high:2,medium:4,low:1,batch:1").unwrap();
        let s = mix.schedule();
        assert_eq!(s.len(), 9);
        for p in Priority::ALL {
            let n = s.iter().filter(|&&q| q == p).count() as u32;
            assert_eq!(n, mix.weight(p), "{p:?}");
        }
        // Spread: medium (4 of 9) never comes three times in a row.
        let twice = s
            .windows(3)
            .any(|w| w.iter().all(|&p| p == Priority::Medium));
        assert!(!twice, "{s:?}");
        assert_eq!(
            PriorityMix::parse("high:1,medium:3").unwrap().schedule(),
            [
                Priority::Medium,
                Priority::High,
                Priority::Medium,
                Priority::Medium
            ]
        );
    }

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9))
    }

    #[test]
    fn frame_lengths_and_limits() {
        let mut cfg = LoadConfig::new(addr(), 10);
        assert_eq!(cfg.frame_len(), 28 + 64 * 132);
        cfg.batch = 1;
        assert_eq!(cfg.frame_len(), 152);
        assert_eq!(cfg.validate(), Ok(()));
        cfg.batch = 600;
        let e = cfg.validate().unwrap_err();
        assert!(
            e.contains("above the default maximum frame (65536 bytes)"),
            "{e}"
        );
        assert!(e.contains("lower the batch to 496"), "{e}");
        cfg.transport = Transport::Udp;
        cfg.ack = AckWait::None;
        let e = cfg.validate().unwrap_err();
        assert!(e.contains("largest UDP datagram (65507 bytes)"), "{e}");
        cfg.batch = 496;
        assert_eq!(cfg.validate(), Ok(()));
        cfg.ack = AckWait::Wait;
        assert!(cfg.validate().unwrap_err().contains("--ack none"));
    }

    #[test]
    fn validate_refuses_empty_settings() {
        let base = LoadConfig::new(addr(), 10);
        let check = |f: &dyn Fn(&mut LoadConfig), needle: &str| {
            let mut cfg = base.clone();
            f(&mut cfg);
            let e = cfg.validate().unwrap_err();
            assert!(e.contains(needle), "{e} lacks {needle}");
        };
        check(&|c| c.batch = 0, "batch");
        check(&|c| c.window = 0, "window");
        check(&|c| c.topics = 0, "topics");
        check(&|c| c.priorities.clear(), "priority");
        check(&|c| c.payload = 70_000, "70000 bytes");
        check(&|c| c.events = 0, "nothing to send");
        check(&|c| c.ack_timeout = Duration::ZERO, "timeout");
    }

    #[test]
    fn spawn_refuses_splits_that_leave_a_connection_empty() {
        let mut cfg = LoadConfig::new(addr(), 2);
        let e = spawn(&cfg, 3).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("between 3 connections"), "{e}");
        cfg.events = 100;
        cfg.rate = 2;
        let e = spawn(&cfg, 3).unwrap_err();
        assert!(e.to_string().contains("rate of 2 events/s"), "{e}");
    }

    #[test]
    fn pacing_schedule_is_per_event() {
        let plan = Plan {
            cfg: LoadConfig::new(addr(), 10),
            index: 0,
            events: 10,
            rate: 20_000,
            id_stride: 1,
            id_first: 1,
            start: Instant::now(),
        };
        assert_eq!(plan.due(0), Duration::ZERO);
        assert_eq!(plan.due(64), Duration::from_micros(3200));
        assert_eq!(plan.due(20_000), Duration::from_secs(1));
    }

    #[test]
    fn unreachable_server_is_named() {
        // Bind then drop a listener: the port is (almost certainly) closed afterwards.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let cfg = LoadConfig::new(SocketAddr::from(([127, 0, 0, 1], port)), 10);
        let e = run(&cfg).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("cannot connect to 127.0.0.1:{port} over TCP")),
            "{e}"
        );
    }
}
