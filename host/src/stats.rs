//! Counters and load figures the host threads publish for the admin endpoint.
//!
//! Every field is written by one thread and read by the admin thread with relaxed loads:
//! the figures are monitoring, never used to make a decision elsewhere.
//!
//! | type | written by | read by |
//! | --- | --- | --- |
//! | [`Gauge`] | one thread, relaxed atomics | anyone |
//! | [`HostCounters`] | ingest and storage threads | the admin thread ([`crate::prom`]) |
//! | [`crate::idle::ThreadLoad`] | the thread it describes | the admin thread (busy/idle ratio) |
//! | [`LatencyRecorder`] | one engine thread, no allocation, no lock | publishes into a [`SharedLatency`] |
//! | [`SharedLatency`] | `try_lock` by the recorder | `lock` by the admin thread ([`LatencySummary`]) |
//! | [`LatencyWindow`] | — | a reader wanting the latencies since its previous read (the runner's status line) |
//!
//! ```
//! use std::sync::Arc;
//! use pinstream_host::stats::{LatencyRecorder, SharedLatency};
//!
//! let shared = Arc::new(SharedLatency::new());
//! let mut recorder = LatencyRecorder::new(Arc::clone(&shared));
//! for ns in [1_000, 2_000, 3_000] {
//!     recorder.record(ns);
//! }
//! assert!(recorder.publish());
//! let summary = shared.summary();
//! assert_eq!(summary.count, 3);
//! assert_eq!(summary.sum_ns, 6_000);
//! assert!(summary.max_ns.abs_diff(3_000) <= 3); // 3 significant digits
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// A relaxed `u64` cell, for both kinds of figure the host exports: monotonic counters
/// (only [`add`](Self::add) / [`incr`](Self::incr): events stored, syncs, errors) and
/// levels that go up and down ([`set`](Self::set) / [`sub`](Self::sub): open connections,
/// events in flight, lane depths). Which one a field is, its doc and its Prometheus type
/// (`counter` or `gauge`) say; nothing here enforces it.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Zero.
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Adds one.
    #[inline]
    pub fn incr(&self) {
        self.add(1);
    }
    /// Subtracts `n`, saturating at zero (for levels such as open connections).
    #[inline]
    pub fn sub(&self, n: u64) {
        // A failed update only means the value is already below `n`: store zero then.
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }
    /// Sets the value (for levels such as open connections).
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// The current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The host's own counters: sockets and storage. The core's per-stage outcome counters live in
/// [`pinstream_core::accounting::StageCounters`]; these are what only the host sees.
///
/// All fields are monotonic counters except [`tcp_open`](Self::tcp_open),
/// [`tls_open`](Self::tls_open) and
/// [`storage_segments`](Self::storage_segments), which are levels.
#[derive(Debug, Default)]
pub struct HostCounters {
    /// TCP connections accepted.
    pub tcp_accepted: Gauge,
    /// TCP connections open now (a level: accepted minus closed).
    pub tcp_open: Gauge,
    /// TCP connections refused: `tcp.max_connections` were open, or their address had
    /// `tcp.max_connections_per_ip` open (also counted in
    /// [`tcp_refused_per_ip`](Self::tcp_refused_per_ip)), or storage had failed.
    pub tcp_refused: Gauge,
    /// TCP connections refused because their address had `tcp.max_connections_per_ip`
    /// open (a subset of [`tcp_refused`](Self::tcp_refused)).
    pub tcp_refused_per_ip: Gauge,
    /// `accept` calls that failed (out of file descriptors or memory: the listener then
    /// rests 100 ms; or a connection reset before it was accepted).
    pub tcp_accept_errors: Gauge,
    /// TCP connections the TLS terminator accepted on a `tcp.tls_cert` port (before their
    /// handshake; those that finish it are counted again in
    /// [`tcp_accepted`](Self::tcp_accepted) when the ingest thread admits them).
    pub tls_accepted: Gauge,
    /// TLS handshakes finished on the binary port (the connection was handed over).
    pub tls_handshakes: Gauge,
    /// TLS handshakes that failed on the binary port: not TLS (a plaintext client), no or a
    /// refused client certificate, a protocol error, or the client closed mid-handshake.
    pub tls_handshake_failures: Gauge,
    /// TLS handshakes not finished within `tcp.tls_handshake_timeout_ms` (not in
    /// [`tls_handshake_failures`](Self::tls_handshake_failures)).
    pub tls_handshake_timeouts: Gauge,
    /// TLS connections open now in the terminator (a level).
    pub tls_open: Gauge,
    /// TLS connections the terminator closed at once: `tcp.max_connections` TLS sessions
    /// were open, or the hand-over ring to the ingest thread was full.
    pub tls_refused: Gauge,
    /// TCP connections closed, for any reason: the sum of the `tcp_closed_*` counters and
    /// [`tcp_drains_abandoned`](Self::tcp_drains_abandoned) (`/metrics` exports the parts as
    /// `pinstream_tcp_connections_closed_total{reason}`).
    pub tcp_closed: Gauge,
    /// Connections closed because they sent more than `tcp.max_rejects` malformed frames or
    /// lost framing.
    pub tcp_closed_malformed: Gauge,
    /// Connections closed because the client did not read its acks for
    /// `tcp.stall_timeout_ms`.
    pub tcp_closed_stalled: Gauge,
    /// Connections closed because they were silent for `tcp.idle_timeout_ms`.
    pub tcp_closed_idle: Gauge,
    /// Connections closed because a frame they began was not whole within
    /// `tcp.frame_timeout_ms`.
    pub tcp_closed_frame_timeout: Gauge,
    /// Connections the client closed (or reset).
    pub tcp_closed_peer: Gauge,
    /// Connections closed on a socket error, or failing their set-up right after `accept`.
    pub tcp_closed_error: Gauge,
    /// Connections closed because storage failed (the engine takes nothing it cannot store).
    pub tcp_closed_storage_failed: Gauge,
    /// Connections closed because the engine was shutting down.
    pub tcp_closed_shutdown: Gauge,
    /// Connections closed because another connection took over their producer id.
    pub tcp_closed_fenced: Gauge,
    /// Bytes received over TCP.
    pub tcp_bytes_in: Gauge,
    /// Frames received over TCP (well-formed or not).
    pub tcp_frames_in: Gauge,
    /// REJECT frames sent over TCP.
    pub tcp_rejects_sent: Gauge,
    /// REJECT frames that did not fit a connection's output buffer (the ACK still counts
    /// their units).
    pub tcp_rejects_dropped: Gauge,
    /// ACK frames sent over TCP.
    pub tcp_acks_sent: Gauge,
    /// Times a connection was paused because its in-flight window (frames or events) was full.
    pub tcp_credit_waits: Gauge,
    /// Times a connection's frame stopped and waited for room in a lane (back-pressure
    /// instead of a `lane_full` dead letter).
    pub tcp_waits_lane: Gauge,
    /// Times a connection's frame waited for a free pool slot.
    pub tcp_waits_pool: Gauge,
    /// Times a connection's frame was held back by the control plane (a priority its level
    /// sheds and the config does not name sheddable).
    pub tcp_waits_control: Gauge,
    /// Producer sessions (protocol version 2) in the table.
    pub tcp_producers: Gauge,
    /// Producer sessions forgotten: idle past `tcp.producer_idle_ms`, or the oldest idle one
    /// when the table was full.
    pub tcp_producers_evicted: Gauge,
    /// Version-2 HELLOs refused because every producer session was held by a connection.
    pub tcp_producers_refused: Gauge,
    /// Connections closed because another connection took over their producer.
    pub tcp_producers_fenced: Gauge,
    /// `tcp.auth = "token"`: connections refused `unauthenticated` (a HELLO without a
    /// token or with an unknown one, or a data frame before any HELLO).
    pub tcp_auth_unauthenticated: Gauge,
    /// `tcp.auth = "token"`: events rejected `forbidden_topic` (a topic their connection's
    /// token may not use).
    pub tcp_auth_forbidden_topic: Gauge,
    /// Times a connection's frame waited for tokens of the engine's per-client rate limit
    /// (the producer slowed down, not dead-lettered `rate_limited`: that is for UDP).
    pub rate_limit_waits_client: Gauge,
    /// `tcp.auth = "token"`: times a connection's frame waited for tokens of its token's
    /// rate (slowed down, nothing refused).
    pub rate_limit_waits_token: Gauge,
    /// Closed producer connections whose frames did not resolve within the drain timeout.
    pub tcp_drains_abandoned: Gauge,
    /// Connections that ended (closed by the peer with FIN or RST, or by the engine for any
    /// reason) with an incomplete frame in their receive buffer: the frame is dropped, never
    /// dispatched nor acknowledged (the client resends it).
    pub tcp_partial_frames_dropped: Gauge,
    /// The bytes of those incomplete frames.
    pub tcp_partial_frame_bytes_dropped: Gauge,
    /// Whole frames received and never dispatched because their connection was closed
    /// first: behind a refused HELLO, behind a frame that lost framing, behind a frame that
    /// waited for room when the connection went, or unread at shutdown. Never acknowledged.
    pub tcp_unread_frames_dropped: Gauge,
    /// Bytes received and thrown away without being dispatched, other than partial frames:
    /// the frames of `tcp_unread_frames_dropped`, everything after a length field that lost
    /// the framing, and input left unread at shutdown.
    pub tcp_unread_bytes_dropped: Gauge,
    /// UDP datagrams received.
    pub udp_datagrams: Gauge,
    /// Bytes received over UDP.
    pub udp_bytes_in: Gauge,
    /// Frames received over UDP.
    pub udp_frames_in: Gauge,
    /// Malformed frames received over UDP (each also one rejected unit).
    pub udp_malformed: Gauge,
    /// UDP datagrams longer than `udp.max_datagram` (truncated by the kernel, dropped).
    pub udp_truncated: Gauge,
    /// Receive calls on the UDP socket that failed.
    pub udp_recv_errors: Gauge,
    /// Clients (producers, addresses) holding a rate-limit key now (a level).
    pub rate_keys: Gauge,
    /// Times a new client found every rate-limit key taken and shared the overflow key.
    pub rate_keys_exhausted: Gauge,
    /// Datagrams the kernel dropped because the socket's receive queue was full
    /// (`SO_RXQ_OVFL`; learnt with the next datagram received after the drops).
    pub udp_kernel_drops: Gauge,
    /// Bytes of UDP datagrams thrown away after a frame length that lost the framing (too
    /// short, below 20, above the maximum, or a frame cut by truncation): the frames they
    /// hold, valid or not, cannot be told apart from garbage and are not dispatched. The
    /// frame whose length failed is also one rejected unit.
    pub udp_unframed_bytes_dropped: Gauge,
    /// Records appended to the log.
    pub storage_records: Gauge,
    /// Bytes appended to the log.
    pub storage_bytes: Gauge,
    /// Records appended to the dead-letter log.
    pub storage_dead_letters: Gauge,
    /// `fdatasync` calls made on the logs since start (none under durability `none`).
    pub storage_syncs: Gauge,
    /// `fdatasync` calls that failed.
    pub storage_sync_errors: Gauge,
    /// Writes to the log that failed.
    pub storage_write_errors: Gauge,
    /// Segments on disk now (a level: created minus removed by retention).
    pub storage_segments: Gauge,
    /// Events covered by a completed sync (durable, may be acknowledged as such).
    pub durable_events: Gauge,
    /// Events the pipeline stored (counted `stored`) that are not in the logs because
    /// storage failed before they were written; never acknowledged.
    pub storage_lost_events: Gauge,
    /// Dead letters (counted dead-lettered) that are not in the dead-letter log because
    /// storage failed.
    pub storage_lost_dead_letters: Gauge,
}

impl HostCounters {
    /// All zero.
    pub const fn new() -> Self {
        Self {
            tcp_accepted: Gauge::new(),
            tcp_open: Gauge::new(),
            tcp_refused: Gauge::new(),
            tcp_refused_per_ip: Gauge::new(),
            tcp_accept_errors: Gauge::new(),
            tls_accepted: Gauge::new(),
            tls_handshakes: Gauge::new(),
            tls_handshake_failures: Gauge::new(),
            tls_handshake_timeouts: Gauge::new(),
            tls_open: Gauge::new(),
            tls_refused: Gauge::new(),
            tcp_closed: Gauge::new(),
            tcp_closed_malformed: Gauge::new(),
            tcp_closed_stalled: Gauge::new(),
            tcp_closed_idle: Gauge::new(),
            tcp_closed_frame_timeout: Gauge::new(),
            tcp_closed_peer: Gauge::new(),
            tcp_closed_error: Gauge::new(),
            tcp_closed_storage_failed: Gauge::new(),
            tcp_closed_shutdown: Gauge::new(),
            tcp_closed_fenced: Gauge::new(),
            tcp_bytes_in: Gauge::new(),
            tcp_frames_in: Gauge::new(),
            tcp_rejects_sent: Gauge::new(),
            tcp_rejects_dropped: Gauge::new(),
            tcp_acks_sent: Gauge::new(),
            tcp_credit_waits: Gauge::new(),
            tcp_waits_lane: Gauge::new(),
            tcp_waits_pool: Gauge::new(),
            tcp_waits_control: Gauge::new(),
            tcp_producers: Gauge::new(),
            tcp_producers_evicted: Gauge::new(),
            tcp_producers_refused: Gauge::new(),
            tcp_producers_fenced: Gauge::new(),
            tcp_auth_unauthenticated: Gauge::new(),
            tcp_auth_forbidden_topic: Gauge::new(),
            rate_limit_waits_client: Gauge::new(),
            rate_limit_waits_token: Gauge::new(),
            tcp_drains_abandoned: Gauge::new(),
            tcp_partial_frames_dropped: Gauge::new(),
            tcp_partial_frame_bytes_dropped: Gauge::new(),
            tcp_unread_frames_dropped: Gauge::new(),
            tcp_unread_bytes_dropped: Gauge::new(),
            udp_datagrams: Gauge::new(),
            udp_bytes_in: Gauge::new(),
            udp_frames_in: Gauge::new(),
            udp_malformed: Gauge::new(),
            udp_truncated: Gauge::new(),
            udp_recv_errors: Gauge::new(),
            rate_keys: Gauge::new(),
            rate_keys_exhausted: Gauge::new(),
            udp_kernel_drops: Gauge::new(),
            udp_unframed_bytes_dropped: Gauge::new(),
            storage_records: Gauge::new(),
            storage_bytes: Gauge::new(),
            storage_dead_letters: Gauge::new(),
            storage_syncs: Gauge::new(),
            storage_sync_errors: Gauge::new(),
            storage_write_errors: Gauge::new(),
            storage_segments: Gauge::new(),
            durable_events: Gauge::new(),
            storage_lost_events: Gauge::new(),
            storage_lost_dead_letters: Gauge::new(),
        }
    }
}

/// The busy fraction `busy / (busy + idle)`, 0 when no time was accounted.
pub fn busy_ratio(busy_ns: u64, idle_ns: u64) -> f64 {
    let total = busy_ns as f64 + idle_ns as f64;
    if total == 0.0 {
        0.0
    } else {
        busy_ns as f64 / total
    }
}

/// The smallest latency a [`LatencyRecorder`] tells apart: 1 ns.
pub const LATENCY_LOWEST_NS: u64 = 1;
/// The largest latency a [`LatencyRecorder`] records; longer ones are recorded as this (60 s).
pub const LATENCY_HIGHEST_NS: u64 = 60_000_000_000;
/// Significant decimal digits of every latency histogram.
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;
/// How often [`LatencyRecorder::maybe_publish`] publishes by default.
pub const DEFAULT_PUBLISH_INTERVAL: Duration = Duration::from_millis(100);

/// A histogram with the fixed latency bounds (1 ns..60 s, 3 digits), auto-resize off.
fn latency_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(
        LATENCY_LOWEST_NS,
        LATENCY_HIGHEST_NS,
        LATENCY_SIGNIFICANT_DIGITS,
    ) {
        Ok(h) => h,
        // The bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low,
        // digits <= 5): this arm cannot be reached, a unit test constructs them.
        Err(e) => unreachable!("constant latency bounds rejected by hdrhistogram: {e:?}"),
    }
}

/// The cumulative latencies of one stage: what the recorders published so far.
#[derive(Debug)]
struct LatencyTotals {
    histogram: Histogram<u64>,
    /// Exact sum of the recorded values (after saturation), for the summary's `_sum`.
    sum_ns: u128,
}

/// A stage's latencies, shared between the recording thread(s) and the admin thread.
///
/// Recorders add into it with `try_lock` (they never wait: if the admin thread holds the lock,
/// they keep their figures and try at their next publish); the admin thread reads it with
/// [`summary`](Self::summary). Figures are cumulative since start-up.
#[derive(Debug)]
pub struct SharedLatency(Mutex<LatencyTotals>);

impl Default for SharedLatency {
    fn default() -> Self {
        Self::new()
    }
}

/// The quantiles a [`LatencySummary`] carries.
pub const SUMMARY_QUANTILES: [f64; 6] = [0.5, 0.9, 0.99, 0.999, 0.9999, 1.0];

/// The upper bounds (`le`) of the latency histograms `/metrics` exports, in nanoseconds:
/// 1 µs to 10 s in 1-2.5-5 steps (22 buckets, then `+Inf`). Cumulative since start-up, as
/// Prometheus histograms are: `histogram_quantile(0.99, rate(…_bucket[1m]))` gives a
/// windowed quantile, where the old cumulative summary froze.
pub const LATENCY_BUCKETS_NS: [u64; 22] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A [`SharedLatency`] as a Prometheus histogram ([`SharedLatency::buckets`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencyBuckets {
    /// Values recorded (the `+Inf` bucket and `_count`).
    pub count: u64,
    /// Their sum in nanoseconds.
    pub sum_ns: u128,
    /// `le[i]`: values at most [`LATENCY_BUCKETS_NS`]`[i]`.
    pub le: [u64; LATENCY_BUCKETS_NS.len()],
}

/// A read-out of a [`SharedLatency`]: what the admin thread renders.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencySummary {
    /// Values recorded.
    pub count: u64,
    /// Their sum in nanoseconds.
    pub sum_ns: u128,
    /// The largest value, to 3 significant digits (0 when empty).
    pub max_ns: u64,
    /// `(quantile, nanoseconds)` for each of [`SUMMARY_QUANTILES`] (values 0 when empty).
    pub quantiles: [(f64, u64); SUMMARY_QUANTILES.len()],
}

impl SharedLatency {
    /// Empty, with the fixed latency bounds (allocates the histogram: call at start-up).
    pub fn new() -> Self {
        Self(Mutex::new(LatencyTotals {
            histogram: latency_histogram(),
            sum_ns: 0,
        }))
    }

    /// The count, sum, max and quantiles so far. Takes the lock (the admin thread may wait a
    /// moment; the recorders never do).
    pub fn summary(&self) -> LatencySummary {
        // A recorder that panicked while adding leaves counts that are still meaningful.
        let totals = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        summarize(&totals.histogram, totals.sum_ns)
    }

    /// The cumulative histogram in Prometheus' shape: for each bound of
    /// [`LATENCY_BUCKETS_NS`], how many values were at most that bound, plus the count and
    /// the sum. Takes the lock like [`summary`](Self::summary).
    pub fn buckets(&self) -> LatencyBuckets {
        let totals = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let h = &totals.histogram;
        let mut le = [0u64; LATENCY_BUCKETS_NS.len()];
        for (slot, &bound) in le.iter_mut().zip(&LATENCY_BUCKETS_NS) {
            // hdrhistogram counts a value into the bucket of its equivalent range: a value
            // within 3 significant digits of `bound` may land either side of it.
            *slot = h.count_between(0, bound);
        }
        LatencyBuckets {
            count: h.len(),
            sum_ns: totals.sum_ns,
            le,
        }
    }

    /// Copies the cumulative histogram into `into` (same bounds: no allocation) and returns
    /// the cumulative sum. Holds the lock for the copy only.
    fn copy_into(&self, into: &mut Histogram<u64>) -> u128 {
        let totals = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        into.reset();
        // Same bounds, auto-resize off: `add` sums count arrays and cannot fail.
        let _ = into.add(&totals.histogram);
        totals.sum_ns
    }
}

fn summarize(h: &Histogram<u64>, sum_ns: u128) -> LatencySummary {
    let mut quantiles = [(0.0, 0); SUMMARY_QUANTILES.len()];
    for (slot, q) in quantiles.iter_mut().zip(SUMMARY_QUANTILES) {
        *slot = (
            q,
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(q)
            },
        );
    }
    LatencySummary {
        count: h.len(),
        sum_ns,
        max_ns: if h.is_empty() { 0 } else { h.max() },
        quantiles,
    }
}

/// The latencies a [`SharedLatency`] received since the previous
/// [`since_last`](Self::since_last) call: the difference of two snapshots of its cumulative
/// histogram.
///
/// Its three histograms are allocated once, by [`new`](Self::new); a read copies the shared
/// histogram into one of them under the lock and computes the difference outside it, without
/// allocating. The recorders and the engine threads are not involved.
///
/// ```
/// use std::sync::Arc;
/// use pinstream_host::stats::{LatencyRecorder, LatencyWindow, SharedLatency};
/// let shared = Arc::new(SharedLatency::new());
/// let mut rec = LatencyRecorder::new(Arc::clone(&shared));
/// let mut window = LatencyWindow::new();
/// rec.record(1_000);
/// rec.publish();
/// assert_eq!(window.since_last(&shared).count, 1);
/// rec.record(5_000_000);
/// rec.publish();
/// let last = window.since_last(&shared);
/// assert_eq!(last.count, 1); // only what came since the previous read
/// assert!(last.quantiles[0].1.abs_diff(5_000_000) <= 5_000);
/// ```
#[derive(Debug)]
pub struct LatencyWindow {
    /// The cumulative histogram at the previous read.
    last: Histogram<u64>,
    /// The cumulative histogram now (scratch, swapped into `last`).
    current: Histogram<u64>,
    /// `current - last`.
    delta: Histogram<u64>,
    last_sum: u128,
}

impl Default for LatencyWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyWindow {
    /// A window whose first read covers everything since start (allocates its histograms).
    pub fn new() -> Self {
        Self {
            last: latency_histogram(),
            current: latency_histogram(),
            delta: latency_histogram(),
            last_sum: 0,
        }
    }

    /// The latencies `shared` received since the previous call (since start on the first).
    /// No allocation.
    pub fn since_last(&mut self, shared: &SharedLatency) -> LatencySummary {
        let sum = shared.copy_into(&mut self.current);
        self.delta.reset();
        // Same bounds everywhere, and the cumulative histogram only grows: neither step can
        // fail. Were one to, report everything since start rather than a wrong window.
        let sum_ns =
            if self.delta.add(&self.current).is_ok() && self.delta.subtract(&self.last).is_ok() {
                sum.saturating_sub(self.last_sum)
            } else {
                self.delta.reset();
                let _ = self.delta.add(&self.current);
                sum
            };
        std::mem::swap(&mut self.last, &mut self.current);
        self.last_sum = sum;
        summarize(&self.delta, sum_ns)
    }
}

/// Records one stage's latencies on the thread that measures them, without locks or
/// allocation, and publishes them now and then into a [`SharedLatency`].
///
/// The histogram is sized at construction for 1 ns..60 s at 3 significant digits; values
/// beyond 60 s are recorded as 60 s. [`record`](Self::record) and
/// [`publish`](Self::publish) never allocate (the engine's counting allocator checks it).
#[derive(Debug)]
pub struct LatencyRecorder {
    local: Histogram<u64>,
    local_sum: u128,
    shared: Arc<SharedLatency>,
    interval: Duration,
    last_publish: Instant,
}

impl LatencyRecorder {
    /// A recorder publishing into `shared` every [`DEFAULT_PUBLISH_INTERVAL`] (allocates its
    /// histogram: call at start-up).
    pub fn new(shared: Arc<SharedLatency>) -> Self {
        Self::with_interval(shared, DEFAULT_PUBLISH_INTERVAL)
    }

    /// A recorder that [`maybe_publish`](Self::maybe_publish) publishes every `interval`.
    pub fn with_interval(shared: Arc<SharedLatency>, interval: Duration) -> Self {
        Self {
            local: latency_histogram(),
            local_sum: 0,
            shared,
            interval,
            last_publish: Instant::now(),
        }
    }

    /// Records one latency in nanoseconds (clamped to 60 s). No allocation, no lock.
    #[inline]
    pub fn record(&mut self, ns: u64) {
        let ns = ns.min(LATENCY_HIGHEST_NS);
        self.local.saturating_record(ns);
        self.local_sum += u128::from(ns);
    }

    /// Values recorded since the last successful publish.
    pub fn pending(&self) -> u64 {
        self.local.len()
    }

    /// Adds what was recorded since the last publish into the shared histogram and starts
    /// afresh. Returns `false` (keeping the figures for next time) when the admin thread holds
    /// the lock. No allocation: both histograms have the same bounds.
    pub fn publish(&mut self) -> bool {
        if self.local.is_empty() {
            return true;
        }
        let mut totals = match self.shared.0.try_lock() {
            Ok(t) => t,
            Err(TryLockError::WouldBlock) => return false,
            // Counts stay meaningful after a panic elsewhere; keep publishing.
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
        };
        // Same bounds and auto-resize off: `add` copies or sums the count arrays; it cannot
        // fail, and if it somehow did the figures would only be missing from the export.
        if totals.histogram.add(&self.local).is_ok() {
            totals.sum_ns += self.local_sum;
        }
        drop(totals);
        self.local.reset();
        self.local_sum = 0;
        true
    }

    /// [`publish`](Self::publish) if the interval has passed since the last publish; `now` is
    /// the caller's clock reading (one `Instant::now()` per round serves every recorder).
    /// Returns whether it published.
    #[inline]
    pub fn maybe_publish(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.last_publish) < self.interval {
            return false;
        }
        let done = self.publish();
        if done {
            self.last_publish = now;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_values_at_most_each_bound() {
        let shared = Arc::new(SharedLatency::new());
        let mut rec = LatencyRecorder::new(Arc::clone(&shared));
        for us in 1..=1000u64 {
            rec.record(us * 1_000);
        }
        rec.record(30_000_000_000); // 30 s: past the last bound, only in +Inf
        assert!(rec.publish());
        let b = shared.buckets();
        assert_eq!(b.count, 1001);
        let at = |ns: u64| b.le[LATENCY_BUCKETS_NS.iter().position(|&x| x == ns).unwrap()];
        assert_eq!(at(1_000), 1);
        assert_eq!(at(500_000), 500);
        assert_eq!(at(1_000_000), 1000);
        assert_eq!(at(10_000_000_000), 1000);
        assert!(b.le.windows(2).all(|p| p[0] <= p[1]));
    }

    #[test]
    fn gauge_levels_saturate() {
        let g = Gauge::new();
        g.add(3);
        g.sub(1);
        assert_eq!(g.get(), 2);
        g.sub(10);
        assert_eq!(g.get(), 0);
        g.set(7);
        g.incr();
        assert_eq!(g.get(), 8);
    }

    #[test]
    fn busy_ratio_of_nothing_is_zero() {
        assert_eq!(busy_ratio(300, 100), 0.75);
        assert_eq!(busy_ratio(0, 0), 0.0);
    }

    #[test]
    fn recording_saturates_and_publishes_cumulatively() {
        let shared = Arc::new(SharedLatency::new());
        let mut r = LatencyRecorder::new(Arc::clone(&shared));
        assert_eq!(shared.summary().count, 0);
        assert_eq!(shared.summary().max_ns, 0);
        r.record(0);
        r.record(120 * 1_000_000_000); // 120 s: recorded as 60 s
        assert_eq!(r.pending(), 2);
        assert!(r.publish());
        assert_eq!(r.pending(), 0);
        let s = shared.summary();
        assert_eq!(s.count, 2);
        assert_eq!(s.sum_ns, u128::from(LATENCY_HIGHEST_NS));
        // 3 significant digits: the max is within 0.1 % of 60 s.
        assert!(s.max_ns.abs_diff(LATENCY_HIGHEST_NS) <= LATENCY_HIGHEST_NS / 1000);
        for _ in 0..1000 {
            r.record(1_000);
        }
        assert!(r.publish());
        let s = shared.summary();
        assert_eq!(s.count, 1002);
        let p50 = s.quantiles[0];
        assert_eq!(p50.0, 0.5);
        assert!(p50.1.abs_diff(1_000) <= 1, "p50 {}", p50.1);
    }

    #[test]
    fn publish_does_not_wait_for_the_reader() {
        let shared = Arc::new(SharedLatency::new());
        let mut r = LatencyRecorder::new(Arc::clone(&shared));
        r.record(5);
        let guard = shared.0.lock().unwrap();
        assert!(!r.publish(), "lock held: must give up, not wait");
        assert_eq!(r.pending(), 1, "figures kept for next time");
        drop(guard);
        assert!(r.publish());
        assert_eq!(shared.summary().count, 1);
    }

    #[test]
    fn a_window_sees_only_what_came_since_its_last_read() {
        let shared = Arc::new(SharedLatency::new());
        let mut r = LatencyRecorder::new(Arc::clone(&shared));
        let mut w = LatencyWindow::new();
        for _ in 0..1000 {
            r.record(1_000);
        }
        assert!(r.publish());
        let first = w.since_last(&shared);
        assert_eq!((first.count, first.sum_ns), (1000, 1_000_000));
        assert!(first.quantiles[0].1.abs_diff(1_000) <= 1);
        // A slower second interval: its median is its own, not the blend since start.
        for _ in 0..1000 {
            r.record(5_000_000);
        }
        assert!(r.publish());
        let second = w.since_last(&shared);
        assert_eq!(second.count, 1000);
        assert_eq!(second.sum_ns, 5_000_000_000);
        assert!(
            second.quantiles[0].1.abs_diff(5_000_000) <= 5_000,
            "{second:?}"
        );
        assert!(
            shared.summary().quantiles[0].1.abs_diff(1_000) <= 1,
            "cumulative p50"
        );
        // Nothing new: an empty window.
        let third = w.since_last(&shared);
        assert_eq!((third.count, third.max_ns, third.quantiles[0].1), (0, 0, 0));
    }

    #[test]
    fn maybe_publish_waits_for_the_interval() {
        let shared = Arc::new(SharedLatency::new());
        let mut r = LatencyRecorder::with_interval(Arc::clone(&shared), Duration::from_secs(3600));
        r.record(5);
        assert!(!r.maybe_publish(Instant::now()));
        assert_eq!(shared.summary().count, 0);
        assert!(r.maybe_publish(Instant::now() + Duration::from_secs(3601)));
        assert_eq!(shared.summary().count, 1);
    }
}
