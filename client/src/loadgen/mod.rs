//! A load generator: EVENT or BATCH frames over TCP or UDP (or NDJSON over HTTP), flat out or at a fixed rate, on
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
//! HTTP ([`Transport::Http`]) sends NDJSON requests of `batch` events to the engine's HTTP
//! gateway (`POST /v1/events`), one at a time per keep-alive connection, optionally over
//! TLS and with a bearer token ([`HttpOptions`]; over TCP the same token goes in each
//! connection's HELLO); the answer's counts are the
//! acknowledgement and the latency recorded is each request's, send to answer. `429` and
//! `503` (nothing taken) are retried after a pause.
//!
//! UDP sends one frame per datagram (at most [`MAX_DATAGRAM`] bytes, which is what the
//! server's `recvmmsg` takes whole) and has no acknowledgements: nothing says whether the
//! server got them.
//!
//! Events: priorities cycle through [`LoadConfig::priorities`] (see [`PriorityMix`] for a
//! weighted cycle), topic ids `0..topics` change once per cycle, so every priority meets
//! every topic; event `k` of connection `c` of `n` has id `id_base + c + k * n` (unique in
//! the run) and its id as value. Payload bytes are `0xA5`. An event's `timestamp` is when
//! its frame was sent (at a fixed rate: when it was due), in nanoseconds since the Unix
//! epoch.
//!
//! With [`LoadConfig::consumers`] above 0, consumers subscribed at `latest` on the engine's
//! consumer listener read the events back and measure produce→consume latency
//! ([`ConsumeReport`]).
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use pinstream_client::loadgen::{self, LoadConfig};
//!
//! let addr: SocketAddr = "127.0.0.1:7070".parse().unwrap();
//! let report = loadgen::run(&LoadConfig::new(addr, 100_000))?;
//! println!("{:.0} events/s", report.events_per_sec());
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use pinstream_core::event::Priority;
use pinstream_core::wire::{self, Reject};

mod conn;
mod consume;
mod http;
mod mix;

pub use consume::{ConsumeReport, DRAIN_IDLE, logs_of};
pub use http::HttpOptions;
pub use mix::PriorityMix;

/// The engine's default consumer listener port (`consumers.listen`).
pub const DEFAULT_CONSUMER_PORT: u16 = 7072;

use conn::{ConnReport, Plan, Socket, connect_tcp, connect_udp, run_connection};

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
    /// One keep-alive HTTP/1.1 connection each to the HTTP gateway, NDJSON requests of
    /// `batch` events, one at a time; the answer's counts are the acknowledgement.
    Http,
    /// gRPC to the engine's gRPC gateway (`pinstream.v1.Ingest`): run by the `pinstream`
    /// command's loadgen (it has the tonic client); [`spawn`] refuses it.
    Grpc,
}

impl Transport {
    /// `"tcp"` or `"udp"`.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
            Transport::Http => "http",
            Transport::Grpc => "grpc",
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
    /// Consumers reading the events back (each subscribed to every log the priorities go
    /// to); 0 for none.
    pub consumers: usize,
    /// The engine's consumer listener; `None`: `addr`'s host with port
    /// [`DEFAULT_CONSUMER_PORT`].
    pub consumer_addr: Option<SocketAddr>,
    /// Token and TLS for [`Transport::Http`].
    pub http: HttpOptions,
    /// TLS for [`Transport::Tcp`] (a server with `tcp.tls_cert`); `None`: plain TCP.
    pub tls: Option<crate::TlsOptions>,
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
            consumers: 0,
            consumer_addr: None,
            http: HttpOptions::default(),
            tls: None,
        }
    }

    /// Where the consumers connect: [`consumer_addr`](Self::consumer_addr), or `addr`'s
    /// host with port [`DEFAULT_CONSUMER_PORT`].
    pub fn consumer_addr(&self) -> SocketAddr {
        self.consumer_addr
            .unwrap_or_else(|| SocketAddr::new(self.addr.ip(), DEFAULT_CONSUMER_PORT))
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
        if !matches!(self.transport, Transport::Http | Transport::Grpc)
            && self.http.tls_ca.is_some()
        {
            return Err("HTTPS is for the HTTP and gRPC transports (--transport http|grpc)".into());
        }
        // With consumers the token is theirs (`consumers.auth = "token"`).
        if self.transport == Transport::Udp && self.http.token.is_some() && self.consumers == 0 {
            return Err(
                "UDP has no HELLO to carry a token: use a token with --transport tcp, http or \
                 grpc, or with consumers"
                    .into(),
            );
        }
        if self.transport != Transport::Tcp && self.tls.is_some() {
            return Err("TLS on the binary port is for the TCP transport (--transport tcp)".into());
        }
        let len = self.frame_len();
        let (limit, what) = match self.transport {
            Transport::Tcp => (wire::DEFAULT_MAX_FRAME_LEN, "the default maximum frame"),
            Transport::Udp => (MAX_DATAGRAM, "the largest UDP datagram"),
            // NDJSON requests: the gateway's http.max_body_bytes and max_events_per_request
            // decide (413, reported with the server's words).
            Transport::Http | Transport::Grpc => return Ok(()),
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
    /// What the consumers read ([`LoadConfig::consumers`] above 0).
    pub consume: Option<ConsumeReport>,
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

    /// With consumers, says what is wrong when one did not read every event the server
    /// stored (per its ACKs; events sent without ACKs); `None` when each did.
    pub fn consume_error(&self) -> Option<String> {
        let stored = self.outcomes.map_or(self.sent, |o| o.stored);
        self.consume.as_ref().and_then(|c| c.mismatch(stored))
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
    consume: Option<consume::ConsumeRun>,
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

    /// Waits for every connection and merges their reports; with consumers, then waits
    /// for them to read what the server stored.
    ///
    /// # Errors
    /// The first connection's failure (the others stop when one fails): a socket error, a
    /// server that closed the connection or left a frame unacknowledged for the timeout;
    /// a consumer's failure.
    pub fn join(mut self) -> io::Result<LoadReport> {
        let consume = self.consume.take();
        match (self.join_writers(), consume) {
            (Ok(mut report), Some(c)) => {
                let stored = report.outcomes.map_or(report.sent, |o| o.stored);
                report.consume = Some(c.finish(stored)?);
                Ok(report)
            }
            (Err(e), Some(c)) => {
                // Nothing more to wait for: the consumers stop at their next poll.
                let _ = c.finish(0);
                Err(e)
            }
            (result, None) => result,
        }
    }

    fn join_writers(self) -> io::Result<LoadReport> {
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
            consume: None,
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
            Transport::Http => Socket::Http(http::connect_http(cfg, c)?),
            Transport::Grpc => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "--transport grpc is run by the pinstream command's loadgen (tonic), not by this library",
                ));
            }
        });
    }
    // Subscribed before the first send: every event of the run is above their start.
    let consume = match cfg.consumers {
        0 => None,
        n => Some(consume::spawn(
            cfg.consumer_addr(),
            n,
            logs_of(&cfg.priorities),
            cfg.ack_timeout,
            // The producers' token serves the consumers too (`consumers.auth = "token"`).
            cfg.http.token.as_ref().map(|t| t.as_bytes().to_vec()),
        )?),
    };
    let progress = Arc::new(Progress::new());
    let start = Instant::now();
    let epoch_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
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
            epoch_ns,
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
        consume,
    })
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
            epoch_ns: 0,
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
