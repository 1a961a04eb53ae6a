//! The engine: the core pipeline wired to sockets and logs on two pinned threads.
//!
//! ```text
//!  ingest thread (CPU engine.ingest_cpu)          storage thread (CPU engine.process_cpu)
//!  epoll: TCP connections, UDP recvmmsg           Processors: alerts, dedup, aggregation
//!  decode in place -> Dispatcher -> lanes  ====>  Sink: append to the lane's log
//!  ACK / REJECT per connection            <====   group commit (fdatasync) -> Completions
//!                                                 dead letters -> dead-letter log
//!                                                 control plane -> ControlSignal
//!                                                 fdatasyncs on sync helpers (unpinned)
//! ```
//!
//! [`Engine::start`] builds everything (all allocation happens here: lanes, pools, buffers,
//! logs), binds the sockets, recovers the logs, then runs the two threads inside a
//! supervisor thread that owns the memory; [`EngineHandle::stop`] drains and syncs before
//! it returns, so nothing acknowledged is lost and nothing accepted is left unresolved.
//!
//! The lanes' sizes are const generics of the core; this build has the sizes of
//! [`PAYLOAD`], [`POOL`], [`LANE`], [`DEAD_LETTERS`] (the config's `[capacity]` is
//! checked against them).

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use pinstream_core::accounting::{Accounting, StageCounters};
use pinstream_core::control::{
    ControlConfig, ControlPlane, ControlSignal, Observation, depth_permille,
};
use pinstream_core::dispatch::{Admission, Dispatcher, Unlimited};
use pinstream_core::event::{EventHeader, Lane, Origin, Priority};
use pinstream_core::lanes::{DeadLetter, DeadLetters, Lanes};
use pinstream_core::process::realtime::{AlertRule, CountAlerts};
use pinstream_core::process::{
    BatchStore, LaneProcessors, Processors, Record, RetryPolicy, Sink, SinkError, StoredEvent,
};
use pinstream_core::ratelimit::{RateConfig, RateLimiter};
use pinstream_core::reason::Reason;
use pinstream_core::ring::{Producer, Spsc};

use crate::admin::{AdminSource, Health, HealthValue};
use crate::disk::DiskSpace;
use crate::fdlimit::{self, FdBudget, FdLimit};
use crate::idle::{IdleStrategy, Idler, ThreadLoad};
use crate::ingest::{AckMode, COMPLETIONS, Completion, Ingest, Shared, TcpLimits};
use crate::numa;
use crate::pin::{self, PinPlan};
use crate::placement::{self, PlacementDecision, PlacementInput, PlacementMode};
use crate::prom::{self, MetricType, PromWriter};
use crate::stats::{HostCounters, LatencyRecorder, SharedLatency};
use crate::storage::sessions;
use crate::storage::{
    DataDirLock, Durability, GroupSync, Log, LogConfig, LogReader, RecoveryReport, StorageError,
    record,
};
use crate::topology::Topology;

/// Payload bytes per event slot.
pub const PAYLOAD: usize = 256;
/// Event slots in the pool.
pub const POOL: usize = 65_536;
/// Capacity of each lane.
pub const LANE: usize = 16_384;
/// Capacity of the dead-letter ring.
pub const DEAD_LETTERS: usize = 4_096;
/// Records parked for retry at most.
pub const RETRY_QUEUE: usize = 256;
/// Alert rules at most.
pub const RULES: usize = 16;
/// Entries of the transactional lane's dedup table.
pub const DEDUP: usize = 1 << 20;
/// Topics at most.
pub const TOPICS: usize = 64;
/// Rate-limit keys: one shared overflow key (0) and one per client (version-2 producer, or
/// IP address), handed out by the ingest thread.
pub const SOURCES: usize = 4_096;

// `tcp.max_connections` is checked against this build's sources when the config is
// validated (exit 2 with the line), not only here at start.
const _: () = assert!(crate::config::MAX_TCP_CONNECTIONS < SOURCES);

// The config's `[capacity]` presets describe this build: keep them equal.
const _: () = {
    let c = crate::config::CapacityConfig::DEFAULT;
    assert!(c.payload_bytes == PAYLOAD && c.pool_slots == POOL && c.lane_capacity == LANE);
    assert!(c.dead_letter_capacity == DEAD_LETTERS && c.retry_queue == RETRY_QUEUE);
    assert!(c.topics == TOPICS && c.alert_rules == RULES && c.dedup_slots == DEDUP);
};

type EngineLanes = Lanes<PAYLOAD, POOL, LANE, DEAD_LETTERS>;
type EngineProcessors<'a> = Processors<'a, PAYLOAD, POOL, LANE, DEAD_LETTERS, RETRY_QUEUE>;
type EngineLaneProcessors = LaneProcessors<RULES, DEDUP, TOPICS>;

/// Where the threads run and how they wait.
#[derive(Clone, Debug)]
pub struct Placement {
    /// Whether to pin: decided at start by [`placement::decide`].
    pub mode: PlacementMode,
    /// No pinning, no busy polling (containers, CI, a laptop); wins over `mode`.
    pub overprovisioned: bool,
    /// CPU of the ingest thread.
    pub ingest_cpu: usize,
    /// CPU of the storage thread.
    pub process_cpu: usize,
    /// How an idle thread waits.
    pub idle: IdleStrategy,
    /// Bind the lanes and pools to the NUMA node of the ingest CPU (their writer).
    pub numa: bool,
    /// `mlockall` at start-up.
    pub mlock: bool,
}

/// Everything [`Engine::start`] needs (the runner builds it from the TOML config).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// TCP listen address (`None`: no TCP).
    pub tcp: Option<SocketAddr>,
    /// TCP limits.
    pub tcp_limits: TcpLimits,
    /// UDP listen address, datagrams per `recvmmsg`, largest datagram.
    pub udp: Option<(SocketAddr, usize, usize)>,
    /// When frames are acknowledged.
    pub ack: AckMode,
    /// The data directory: one log per lane output and the dead-letter log below it.
    pub data_dir: PathBuf,
    /// The logs' settings (the directory is set per log from `data_dir`).
    pub log: LogConfig,
    /// Registered topic names, ids in order.
    pub topics: Vec<String>,
    /// Per-source rate limit.
    pub rate: RateConfig,
    /// Dedup window of the transactional lane.
    pub dedup_window: Duration,
    /// Aggregation window of the batch lane.
    pub aggregate_window: Duration,
    /// What the batch lane stores (every event and the aggregates, or the aggregates).
    pub batch_store: BatchStore,
    /// Retries of refused records.
    pub retry: RetryPolicy,
    /// Alert rules of the realtime lane.
    pub alerts: Vec<AlertRule>,
    /// Events per lane per processing round.
    pub budget: usize,
    /// Bytes of the payload arena (payloads longer than [`PAYLOAD`]), allocated and
    /// pre-faulted at start-up.
    pub payload_arena_bytes: usize,
    /// Control-plane thresholds.
    pub control: ControlConfig,
    /// Priorities the control plane may shed from TCP connections (which otherwise wait).
    pub sheddable: Vec<Priority>,
    /// Threads.
    pub placement: Placement,
    /// Called first thing on each engine thread (ingest, storage), e.g. to register it
    /// with a profiler or an allocation probe.
    pub thread_hook: Option<fn()>,
    /// Connections the admin endpoint serves at once (0: it is off): counted in the file
    /// descriptors the process needs ([`crate::fdlimit`]).
    pub admin_connections: usize,
}

impl EngineConfig {
    /// A config for tests and examples: loopback TCP and UDP on ephemeral ports, data in
    /// `dir`, durable acks with `interval` group commit of 1 ms, no pinning.
    pub fn local(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        let mut log = LogConfig::new(dir.clone());
        log.durability = Durability::Interval {
            max_delay: Duration::from_millis(1),
            max_bytes: 1 << 20,
        };
        Self {
            tcp: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            tcp_limits: TcpLimits::default(),
            udp: Some((SocketAddr::from(([127, 0, 0, 1], 0)), 64, 65_507)),
            ack: AckMode::Durable,
            data_dir: dir,
            log,
            topics: vec!["default".into()],
            rate: RateConfig::UNLIMITED,
            dedup_window: Duration::from_secs(10),
            aggregate_window: Duration::from_millis(100),
            batch_store: BatchStore::Events,
            retry: RetryPolicy::DEFAULT,
            alerts: Vec::new(),
            budget: 256,
            payload_arena_bytes: crate::config::CapacityConfig::DEFAULT.payload_arena_bytes,
            control: ControlConfig::DEFAULT,
            sheddable: Vec::new(),
            placement: Placement {
                mode: PlacementMode::Auto,
                overprovisioned: true,
                ingest_cpu: 0,
                process_cpu: 1,
                idle: IdleStrategy::default(),
                numa: false,
                mlock: false,
            },
            thread_hook: None,
            admin_connections: 0,
        }
    }
}

impl EngineConfig {
    /// The engine's settings from a validated TOML [`Config`](crate::config::Config).
    ///
    /// # Errors
    /// A value this build cannot run with (e.g. more connections than its rate-limiter
    /// slots, a rate limit the core refuses), named by its key.
    pub fn from_config(c: &crate::config::Config) -> Result<Self, String> {
        use crate::config::{AckMode as A, DurabilityMode as D, IdleKind as I};
        let ms = Duration::from_millis;
        let mut log = LogConfig::new(c.storage.dir.clone());
        log.segment_bytes = c.storage.segment_bytes;
        log.index_interval_bytes = u32::try_from(c.storage.index_interval_bytes)
            .map_err(|_| "storage.index_interval_bytes is above 4 GiB".to_string())?;
        log.write_buffer_bytes = usize::try_from(c.storage.write_buffer_bytes)
            .map_err(|_| "storage.write_buffer_bytes does not fit this machine".to_string())?;
        log.retention_bytes = (c.storage.retention_bytes != 0).then_some(c.storage.retention_bytes);
        log.retention_age = (c.storage.retention_hours != 0)
            .then(|| Duration::from_secs(c.storage.retention_hours.saturating_mul(3600)));
        log.durability = match c.storage.durability {
            D::None => Durability::None,
            D::Interval => Durability::Interval {
                max_delay: ms(c.storage.interval_ms),
                max_bytes: c.storage.interval_bytes,
            },
            D::Always => Durability::Always,
        };
        let rate = if c.pipeline.rate_per_source == 0 {
            RateConfig::UNLIMITED
        } else {
            let burst = u32::try_from(c.pipeline.burst_per_source).unwrap_or(u32::MAX);
            RateConfig::new(c.pipeline.rate_per_source, 1_000_000_000, burst).map_err(|e| {
                format!(
                    "pipeline.rate_per_source = {} / burst_per_source = {}: {e:?}",
                    c.pipeline.rate_per_source, c.pipeline.burst_per_source
                )
            })?
        };
        let mut alerts = Vec::with_capacity(c.pipeline.alert_rules.len());
        for rule in &c.pipeline.alert_rules {
            let topic = c.pipeline.topic_id(&rule.topic).ok_or_else(|| {
                format!(
                    "pipeline.alert_rules: topic {:?} is not in pipeline.topics",
                    rule.topic
                )
            })?;
            alerts.push(AlertRule {
                topic,
                condition: rule.condition(),
            });
        }
        let e = &c.engine;
        let park = Duration::from_micros(e.idle_park_us);
        Ok(Self {
            tcp: c.tcp.listen,
            tcp_limits: TcpLimits::from_config(&c.tcp),
            udp: c.udp.listen.map(|a| (a, c.udp.batch, c.udp.max_datagram)),
            ack: match e.ack {
                A::None => AckMode::None,
                A::Accepted => AckMode::Accepted,
                A::Durable => AckMode::Durable,
            },
            data_dir: c.storage.dir.clone(),
            log,
            topics: c.pipeline.topics.clone(),
            rate,
            dedup_window: ms(c.pipeline.dedup_window_ms),
            aggregate_window: ms(c.pipeline.aggregate_window_ms),
            batch_store: c.pipeline.batch_store.to_core(),
            retry: c.pipeline.retry_policy(),
            alerts,
            budget: c.pipeline.budget,
            payload_arena_bytes: c.capacity.payload_arena_bytes,
            control: c.control.to_core(),
            sheddable: c.control.sheddable_priorities(),
            placement: Placement {
                mode: e.placement,
                overprovisioned: e.overprovisioned,
                ingest_cpu: e.ingest_cpu,
                process_cpu: e.process_cpu,
                idle: match e.idle {
                    I::Spin => IdleStrategy::Spin,
                    I::SpinYield => IdleStrategy::SpinYield {
                        spins: e.idle_spins,
                    },
                    I::SpinPark => IdleStrategy::SpinPark {
                        spins: e.idle_spins,
                        yields: e.idle_yields,
                        park,
                    },
                },
                numa: e.numa,
                mlock: e.mlock,
            },
            thread_hook: None,
            admin_connections: if c.admin.listen.is_some() {
                c.admin.max_connections
            } else {
                0
            },
        })
    }
}

/// Why the engine could not start.
#[derive(Debug)]
pub enum EngineError {
    /// A setting is out of range.
    Config(String),
    /// A socket could not be bound or set up.
    Socket {
        /// What was being done.
        what: String,
        /// The OS error.
        source: io::Error,
    },
    /// A log could not be opened or recovered.
    Storage(StorageError),
    /// A thread could not be started or died.
    Thread(String),
    /// The machine's limits are below what the config needs (e.g. file descriptors).
    Limit(String),
    /// The engine stopped cleanly but its books do not balance: some unit that entered is
    /// neither stored, a duplicate, dead-lettered, rejected nor still in flight, or events
    /// were left in flight after the drain. A bug; the message gives every figure.
    Accounting(Box<BooksAtStop>),
}

/// The outcome counts when the engine stopped, for [`EngineError::Accounting`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BooksAtStop {
    /// Summed over the dispatcher and the processors.
    pub books: Accounting,
    /// Events still inside the engine after the drain (0 when it is complete).
    pub in_flight: u64,
}

impl BooksAtStop {
    /// The books of `stats` once the engine's threads have returned.
    pub fn of(stats: &EngineStats) -> Self {
        Self {
            books: stats.books(),
            in_flight: stats.in_flight.get(),
        }
    }

    /// Whether they balance with nothing left in flight:
    /// `ingested == stored + duplicates + dead_lettered + rejected`.
    pub fn balanced(&self) -> bool {
        self.in_flight == 0 && self.books.check(0).is_ok()
    }
}

impl fmt::Display for BooksAtStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.books;
        let accounted = b.resolved() + self.in_flight;
        write!(
            f,
            "accounting invariant broken at shutdown: {} units ingested, {} accounted for \
             (stored {}, duplicates {}, dead-lettered {}, rejected {}, left in flight {}); \
             difference {}. This is a bug in the engine: keep this line and the logs",
            b.ingested,
            accounted,
            b.stored,
            b.duplicates,
            b.dead_lettered,
            b.rejected,
            self.in_flight,
            i128::from(b.ingested) - i128::from(accounted),
        )
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Config(msg) => write!(f, "invalid engine settings: {msg}"),
            EngineError::Socket { what, source } => write!(f, "{what}: {source}"),
            EngineError::Storage(e) => write!(f, "storage: {e}"),
            EngineError::Thread(msg) => write!(f, "engine thread: {msg}"),
            EngineError::Limit(msg) => write!(f, "{msg}"),
            EngineError::Accounting(books) => books.fmt(f),
        }
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EngineError::Socket { source, .. } => Some(source),
            EngineError::Storage(e) => Some(e),
            _ => None,
        }
    }
}

/// The names of the logs below the data directory, by lane index, then the dead letters
/// (defined in [`storage::layout`](crate::storage::layout)).
pub use crate::storage::layout::LOG_NAMES;

/// What the engine's threads publish, read by the handle and the admin endpoint.
#[derive(Debug)]
pub struct EngineStats {
    /// Ticks, watermarks and the stop flags.
    pub shared: Shared,
    /// Host counters (sockets, storage).
    pub host: HostCounters,
    /// The dispatcher's counters.
    pub dispatch: StageCounters,
    /// The processors' counters.
    pub process: StageCounters,
    /// The control plane's level.
    pub control: ControlSignal,
    /// Busy/idle of the ingest thread.
    pub ingest_load: Arc<ThreadLoad>,
    /// Busy/idle of the storage thread.
    pub storage_load: Arc<ThreadLoad>,
    /// What each thread asked for and got (CPU, node), as the threads report it.
    pub placement: Mutex<Vec<String>>,
    /// The first storage failure (the engine stops storing; health says so).
    pub storage_error: Mutex<Option<String>>,
    /// What start-up recovery found, for `/health`: `clean`, or the damage it quarantined and
    /// the offsets it found missing (kept until the next start; the report has the details).
    pub recovery: String,
    /// Events in flight inside the engine, as last seen by the storage thread.
    pub in_flight: crate::stats::Gauge,
    /// The dedup table's effective window over the last second, in nanoseconds.
    pub dedup_effective_window_ns: crate::stats::Gauge,
    /// Control-plane level changes.
    pub control_transitions: crate::stats::Gauge,
    /// Events waiting in each lane (by `Lane::index`), as the storage thread last saw them.
    pub lane_depths: [crate::stats::Gauge; 3],
    /// Decode + dispatch of one frame (ingest thread).
    pub dispatch_latency: Arc<SharedLatency>,
    /// One commit: write and fdatasync of every log written to (storage thread).
    pub commit_latency: Arc<SharedLatency>,
    /// From the dispatch of the oldest event a commit covers to the end of that commit.
    pub durable_latency: Arc<SharedLatency>,
    /// Per TCP frame, from its dispatch to its ACK being owed (in `durable` mode: its
    /// events committed).
    pub ack_latency: Arc<SharedLatency>,
    /// The data directory, whose file system's free space `/metrics` reports.
    pub data_dir: PathBuf,
}

impl EngineStats {
    /// Outcomes summed over the dispatcher and the processors (see [`Accounting`]).
    pub fn books(&self) -> Accounting {
        Accounting::of(&[&self.dispatch, &self.process])
    }
}

impl AdminSource for EngineStats {
    fn render_metrics(&self, out: &mut String) {
        let mut w = PromWriter::new(out);
        prom::write_stage_counters(
            &mut w,
            &[("dispatch", &self.dispatch), ("process", &self.process)],
            1e-9,
        );
        prom::write_host_counters(&mut w, &self.host);
        prom::write_latency(
            &mut w,
            "pinstream_stage_latency_seconds",
            "Latency per stage: dispatch (decode and route one frame), commit (start to end of a group commit: write the logs, their fdatasyncs overlapping processing), durable (oldest event of a commit, dispatch to durable), ack (one TCP frame, dispatch to its ACK being owed).",
            &[
                ("dispatch", &self.dispatch_latency.summary()),
                ("ack", &self.ack_latency.summary()),
                ("commit", &self.commit_latency.summary()),
                ("durable", &self.durable_latency.summary()),
            ],
        );
        let (i, s) = (self.ingest_load.snapshot(), self.storage_load.snapshot());
        prom::write_thread_load(
            &mut w,
            &[
                ("ingest", i.busy_ns, i.idle_ns),
                ("storage", s.busy_ns, s.idle_ns),
            ],
        );
        prom::write_control(&mut w, self.control.level(), self.control_transitions.get());
        w.single(
            "pinstream_dedup_effective_window_seconds",
            MetricType::Gauge,
            "How far back the transactional dedup table surely remembered ids over the last second: the configured window, or the age of the youngest entry it had to evict.",
            self.dedup_effective_window_ns.get() as f64 * 1e-9,
        );
        w.family(
            "pinstream_lane_depth",
            MetricType::Gauge,
            "Events waiting in each lane.",
        );
        for lane in Lane::ALL {
            w.sample_u64(
                "pinstream_lane_depth",
                &[("lane", lane.name())],
                self.lane_depths[lane.index()].get(),
            );
        }
        // A statvfs at each scrape, on the admin endpoint's thread; NaN if it fails.
        let free = DiskSpace::of(&self.data_dir).map_or(f64::NAN, |s| s.available as f64);
        w.single(
            "pinstream_storage_free_bytes",
            MetricType::Gauge,
            "Bytes still free for pinstream on the file system of storage.dir (statvfs f_bavail), read at the scrape.",
            free,
        );
        w.single(
            "pinstream_events_in_flight",
            MetricType::Gauge,
            "Events inside the engine: in lanes, parked for retry, in open aggregation windows.",
            self.in_flight.get() as f64,
        );
    }

    fn health(&self) -> Health {
        let error = self
            .storage_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let level = self.control.level();
        Health::new(level.name(), error.is_none())
            .with(
                "storage",
                HealthValue::Text(error.unwrap_or_else(|| "ok".into())),
            )
            .with("recovery", HealthValue::Text(self.recovery.clone()))
            .with(
                "tcp_connections",
                HealthValue::Count(self.host.tcp_open.get()),
            )
            .with("events_in_flight", HealthValue::Count(self.in_flight.get()))
            .with(
                "events_durable",
                HealthValue::Count(self.host.durable_events.get()),
            )
    }
}

/// What recovery found in the logs, in one line for `/health`: `clean`, or per damaged log
/// what was quarantined, cut as a torn tail and found missing.
fn recovery_summary(reports: &[RecoveryReport]) -> String {
    let damaged: Vec<String> = reports
        .iter()
        .filter(|r| !r.quarantined.is_empty() || !r.missing.is_empty())
        .map(|r| {
            let name = r.dir.file_name().map_or_else(
                || r.dir.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            let missing: u64 = r
                .missing
                .iter()
                .map(|m| m.offsets.end - m.offsets.start)
                .sum();
            format!(
                "{name}: {} segment(s) quarantined, {missing} offset(s) missing",
                r.quarantined.len()
            )
        })
        .collect();
    if damaged.is_empty() {
        "clean".to_owned()
    } else {
        format!(
            "damage found at start-up ({}); see the start-up report and `pinstream log verify`",
            damaged.join("; ")
        )
    }
}

/// Where the engine listens and what recovery found.
#[derive(Debug)]
pub struct Started {
    /// TCP address, if listening.
    pub tcp: Option<SocketAddr>,
    /// UDP address, if listening.
    pub udp: Option<SocketAddr>,
    /// One report per log ([`LOG_NAMES`] order).
    pub recovery: Vec<RecoveryReport>,
    /// Whether the threads are pinned, and why.
    pub decision: PlacementDecision,
    /// Placement notes (what was asked, what was got, warnings).
    pub placement: Vec<String>,
    /// What the transactional lane's dedup window was refilled with from its log (`None`
    /// when the log holds nothing recent).
    pub dedup_refill: Option<DedupRefill>,
    /// The producer sessions rebuilt from the logs (`None` when they hold none recent).
    pub sessions: Option<SessionsRestored>,
    /// The file descriptors the config needs and the limit the process runs with.
    pub fds: FdLimit,
}

/// The producer sessions (protocol version 2) rebuilt at start-up from the logs' newest
/// records ([`storage::sessions`](crate::storage::sessions)): a producer that resends after
/// a restart gets what the logs hold answered as duplicates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionsRestored {
    /// Producers put back into the table.
    pub producers: usize,
    /// Producers found that did not fit the table (`tcp.max_producers`).
    pub left_out: usize,
    /// Events held of frames that were in flight when the engine stopped.
    pub held: u64,
    /// Producers whose in-flight frames held too many events to remember
    /// ([`sessions::MAX_HELD`]): resent, those frames may be stored twice.
    pub forgotten: usize,
    /// Logs whose scan ended early at a record that could not be read (with the error).
    pub unreadable: Vec<String>,
    /// Records read to find them.
    pub scanned: u64,
    /// How long it took.
    pub took: Duration,
}

/// What start-up restored from the logs besides the logs themselves.
struct Restored {
    dedup: Option<DedupRefill>,
    sessions: Option<SessionsRestored>,
}

/// The dedup window refilled at start-up from the transactional log: ids stored within the
/// last `pipeline.dedup_window_ms` are duplicates again for the rest of their window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupRefill {
    /// Ids remembered.
    pub ids: u64,
    /// Records read to find them.
    pub scanned: u64,
    /// Segments read.
    pub segments: usize,
    /// How long it took.
    pub took: Duration,
}

/// Reads the transactional log's records of the last `window` ns (wall clock, before
/// `start_wall`) into the dedup table, oldest first, each at its first-seen time in the new
/// engine's ticks (ticks before the start wrap around: the table's ages are modular). Walks
/// back segment by segment from the newest to the first whose first record is older than
/// the window, then reads forward from there; at most a window's worth of records plus one
/// segment. Records of older engines (their `received` was a tick, not a wall time) look
/// decades old and are skipped.
fn refill_dedup(
    dir: &std::path::Path,
    tx: &mut pinstream_core::process::transactional::TransactionalProcessor<DEDUP>,
    start_wall: u64,
    window: u64,
) -> Result<Option<DedupRefill>, StorageError> {
    let t0 = Instant::now();
    let cutoff = start_wall.saturating_sub(window);
    let segments = crate::storage::segment_bases(dir)?;
    if segments.is_empty() || window == 0 {
        return Ok(None);
    }
    let mut reader = LogReader::open(dir)?;
    // The newest segment whose first event record is at or before the cutoff: reading
    // starts there (everything before it is older than the window).
    let mut first = 0;
    for (i, &base) in segments.iter().enumerate().rev() {
        reader.seek(base)?;
        let mut oldest = None;
        while let Some(rec) = reader.next_record() {
            let rec = rec?;
            if let Ok(record::RecordBody::Event(e)) = record::decode(rec.kind, &rec.body) {
                oldest = Some(e.received);
                break;
            }
        }
        if oldest.is_some_and(|w| w <= cutoff) {
            first = i;
            break;
        }
    }
    reader.seek(segments[first])?;
    let (mut ids, mut scanned) = (0u64, 0u64);
    while let Some(rec) = reader.next_record() {
        let rec = rec?;
        scanned += 1;
        if let Ok(record::RecordBody::Event(e)) = record::decode(rec.kind, &rec.body) {
            if e.received > cutoff && e.received <= start_wall.saturating_add(window) {
                // Tick of the sighting in the new engine's clock (before 0: wraps).
                tx.remember(e.header.id, e.received.wrapping_sub(start_wall));
                ids += 1;
            }
        }
    }
    Ok((ids > 0).then(|| DedupRefill {
        ids,
        scanned,
        segments: segments.len() - first,
        took: t0.elapsed(),
    }))
}

/// A running engine.
pub struct EngineHandle {
    stats: Arc<EngineStats>,
    supervisor: Option<thread::JoinHandle<Result<(), String>>>,
    /// Addresses and recovery reports.
    pub started: Started,
    /// `data_dir/LOCK`, held until the handle is gone: dropped after the supervisor has
    /// closed the logs (fields drop after `Drop::drop` has stopped the engine).
    _lock: DataDirLock,
}

impl EngineHandle {
    /// The shared counters and flags.
    pub fn stats(&self) -> &Arc<EngineStats> {
        &self.stats
    }

    /// Stops taking input, processes and stores everything accepted, syncs the logs, sends
    /// the last acknowledgements, closes the connections and joins the threads. Then checks
    /// the books: every unit that entered is stored, a duplicate, dead-lettered or rejected,
    /// and nothing is left in flight.
    ///
    /// # Errors
    /// A thread's failure (a storage error is reported here too);
    /// [`EngineError::Accounting`] when the threads stopped cleanly and the books do not
    /// balance.
    pub fn stop(mut self) -> Result<(), EngineError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), EngineError> {
        self.stats.shared.stop.store(true, Ordering::Release);
        match self.supervisor.take() {
            Some(h) => match h.join() {
                Ok(Ok(())) => {
                    // Every thread has returned: the counters are final.
                    let books = BooksAtStop::of(&self.stats);
                    if books.balanced() {
                        Ok(())
                    } else {
                        Err(EngineError::Accounting(Box::new(books)))
                    }
                }
                Ok(Err(msg)) => Err(EngineError::Thread(msg)),
                Err(_) => Err(EngineError::Thread("an engine thread panicked".into())),
            },
            None => Ok(()),
        }
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        // Nobody sees the result here: a broken invariant must still not pass in silence.
        if let Err(e @ EngineError::Accounting(_)) = self.stop_inner() {
            eprintln!("pinstream: {e}");
        }
    }
}

/// The engine (see the module docs).
pub struct Engine;

/// The memory the threads share by reference, owned by the supervisor thread.
struct Memory {
    lanes: EngineLanes,
    completions: Spsc<Completion, COMPLETIONS>,
    limiter: RateLimiter<SOURCES>,
    procs: EngineLaneProcessors,
}

impl Engine {
    /// Builds the engine from `cfg`, binds its sockets, recovers its logs and starts its
    /// threads.
    ///
    /// # Errors
    /// A bad setting, a socket that cannot be bound, a log that cannot be opened; another
    /// process holding the data directory ([`StorageError::Locked`], naming its pid).
    pub fn start(cfg: EngineConfig) -> Result<EngineHandle, EngineError> {
        if cfg.topics.is_empty() || cfg.topics.len() > TOPICS {
            return Err(EngineError::Config(format!(
                "pipeline.topics has {} names: between 1 and {TOPICS}",
                cfg.topics.len()
            )));
        }
        if cfg.tcp_limits.max_connections >= SOURCES {
            return Err(EngineError::Config(format!(
                "tcp.max_connections {} is above this build's {} (each connection may hold its own rate-limit key)",
                cfg.tcp_limits.max_connections,
                SOURCES - 1
            )));
        }
        // Descriptors for every connection the config allows, or no start (a connection the
        // engine cannot accept for want of one is refused by accident, not by the config).
        let fds = fdlimit::ensure(FdBudget::new(
            cfg.tcp_limits.max_connections,
            cfg.admin_connections,
            LOG_NAMES.len(),
        ))
        .map_err(EngineError::Limit)?;
        // One engine per data directory, checked before anything else is touched (a second
        // engine on the default config would otherwise fail on the TCP port first).
        let lock = DataDirLock::acquire(&cfg.data_dir).map_err(EngineError::Storage)?;
        let listener = match cfg.tcp {
            Some(addr) => Some(
                TcpListener::bind(addr).map_err(|source| EngineError::Socket {
                    what: format!("cannot listen on TCP {addr}"),
                    source,
                })?,
            ),
            None => None,
        };
        let udp = match cfg.udp {
            Some((addr, batch, size)) => Some((
                UdpSocket::bind(addr).map_err(|source| EngineError::Socket {
                    what: format!("cannot bind UDP {addr}"),
                    source,
                })?,
                batch,
                size,
            )),
            None => None,
        };
        let tcp_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let udp_addr = udp.as_ref().and_then(|(s, _, _)| s.local_addr().ok());

        let mut logs = Vec::with_capacity(4);
        let mut recovery = Vec::with_capacity(4);
        for name in LOG_NAMES {
            let mut lc = cfg.log.clone();
            lc.dir = cfg.data_dir.join(name);
            let (log, report) = Log::open(lc).map_err(EngineError::Storage)?;
            logs.push(log);
            recovery.push(report);
        }
        let stats = Arc::new(EngineStats {
            shared: Shared::new(),
            host: HostCounters::new(),
            dispatch: StageCounters::new(),
            process: StageCounters::new(),
            control: ControlSignal::new(),
            ingest_load: Arc::new(ThreadLoad::new()),
            storage_load: Arc::new(ThreadLoad::new()),
            placement: Mutex::new(Vec::new()),
            storage_error: Mutex::new(None),
            recovery: recovery_summary(&recovery),
            in_flight: crate::stats::Gauge::new(),
            dedup_effective_window_ns: crate::stats::Gauge::new(),
            control_transitions: crate::stats::Gauge::new(),
            lane_depths: [const { crate::stats::Gauge::new() }; 3],
            dispatch_latency: Arc::new(SharedLatency::new()),
            commit_latency: Arc::new(SharedLatency::new()),
            durable_latency: Arc::new(SharedLatency::new()),
            ack_latency: Arc::new(SharedLatency::new()),
            data_dir: cfg.data_dir.clone(),
        });
        let p = &cfg.placement;
        let topology = Topology::live().map_err(|e| EngineError::Config(e.to_string()))?;
        let allowed = pin::current_affinity().ok();
        let decision = placement::decide(&PlacementInput {
            mode: p.mode,
            overprovisioned: p.overprovisioned,
            cpus: [p.ingest_cpu, p.process_cpu],
            allowed: allowed.as_deref(),
            isolated: topology.isolated(),
        });
        let plan = pin::plan(
            &[("ingest", p.ingest_cpu), ("storage", p.process_cpu)],
            &topology,
            !decision.pinned,
        )
        .map_err(|e| EngineError::Config(format!("engine.ingest_cpu / engine.process_cpu: {e}")))?;
        let mut placement: Vec<String> = plan.warnings().to_vec();
        if p.mlock {
            match numa::lock_all_memory() {
                Ok(()) => placement.push("memory locked (mlockall)".into()),
                Err(e) => placement.push(format!("mlockall refused: {e}; continuing unlocked")),
            }
        }
        let node = if p.numa && plan.is_pinning() {
            plan.node_of("ingest")
        } else {
            None
        };
        let (tx, rx) = mpsc::channel();
        let thread_stats = Arc::clone(&stats);
        // The lanes are built by value before they are boxed: without optimisation that
        // needs their size on the stack (a few times over), so the supervisor gets a stack
        // to match. Untouched stack pages cost address space, not memory.
        let stack = 4 * std::mem::size_of::<Memory>() + (16 << 20);
        let supervisor = thread::Builder::new()
            .name("pinstream-engine".into())
            .stack_size(stack)
            .spawn(move || supervise(cfg, plan, node, thread_stats, listener, udp, logs, tx))
            .map_err(|e| EngineError::Thread(format!("cannot start the engine thread: {e}")))?;
        let restored = match rx.recv() {
            Ok(Ok(restored)) => restored,
            Ok(Err(msg)) => {
                let _ = supervisor.join();
                return Err(EngineError::Config(msg));
            }
            Err(_) => {
                let _ = supervisor.join();
                return Err(EngineError::Thread(
                    "the engine thread died at start-up".into(),
                ));
            }
        };
        Ok(EngineHandle {
            stats,
            supervisor: Some(supervisor),
            started: Started {
                tcp: tcp_addr,
                udp: udp_addr,
                recovery,
                decision,
                placement,
                dedup_refill: restored.dedup,
                sessions: restored.sessions,
                fds,
            },
            _lock: lock,
        })
    }
}

/// The supervisor: owns the memory, runs the two threads in a scope, reports start-up.
#[allow(clippy::too_many_arguments)]
fn supervise(
    cfg: EngineConfig,
    plan: PinPlan,
    node: Option<usize>,
    stats: Arc<EngineStats>,
    listener: Option<TcpListener>,
    udp: Option<(UdpSocket, usize, usize)>,
    logs: Vec<Log>,
    started: mpsc::Sender<Result<Restored, String>>,
) -> Result<(), String> {
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    // Large: built on the heap in place (the lanes are tens of MiB).
    let mut memory: Box<Memory> = Box::new(Memory {
        lanes: Lanes::new(),
        completions: Spsc::new(),
        limiter: RateLimiter::new(cfg.rate),
        procs: LaneProcessors::new(ns(cfg.dedup_window), ns(cfg.aggregate_window).max(1)),
    });
    // The payload arena: once, here; every page written now so none faults later (a
    // memset of a non-zero byte cannot be skipped the way zeroed pages are).
    let mut arena: Box<[u8]> = vec![0u8; cfg.payload_arena_bytes].into_boxed_slice();
    arena.fill(0xA5);
    if let Some(node) = node {
        let report = numa::place_existing(&*memory, node);
        let arena_report = numa::place_existing(&*arena, node);
        let mut placement = stats.placement.lock().unwrap_or_else(|p| p.into_inner());
        placement.push(format!("lanes and pools: {report}"));
        placement.push(format!("payload arena: {arena_report}"));
    }
    for rule in &cfg.alerts {
        if memory.procs.realtime.add_rule(*rule).is_err() {
            let _ = started.send(Err(format!("more than {RULES} alert rules")));
            return Ok(());
        }
    }
    let Memory {
        lanes,
        completions,
        limiter,
        procs,
    } = &mut *memory;
    let (input, output, dead) = lanes.split_with_arena(&mut arena);
    let (done_tx, done_rx) = completions.split();
    // Keyed per client (producer or address) by the ingest thread: see `set_rate_limit`.
    let limiter: &RateLimiter<SOURCES> = limiter;
    let admission: &dyn Admission = if cfg.rate.is_unlimited() {
        &Unlimited
    } else {
        limiter
    };
    let mut dispatcher = Dispatcher::new(
        input,
        admission,
        &stats.control,
        cfg.topics.len(),
        &stats.dispatch,
    );
    dispatcher.set_sheddable(&cfg.sheddable);
    let mut ingest = match Ingest::new(
        LatencyRecorder::new(Arc::clone(&stats.dispatch_latency)),
        LatencyRecorder::new(Arc::clone(&stats.ack_latency)),
        dispatcher,
        done_rx,
        &stats.shared,
        &stats.host,
        cfg.ack,
        TcpLimits {
            // What a version-2 HELLO reply announces comes from the engine's own settings.
            dedup_window: cfg.dedup_window,
            max_payload: u32::try_from(PAYLOAD).unwrap_or(u32::MAX),
            ..cfg.tcp_limits.clone()
        },
        listener,
        udp,
    ) {
        Ok(i) => i,
        Err(e) => {
            let _ = started.send(Err(format!("ingest set-up: {e}")));
            return Ok(());
        }
    };
    let mut processors: EngineProcessors<'_> = Processors::new(output, cfg.retry, &stats.process);
    processors.set_batch_store(cfg.batch_store);
    let batch_events = cfg.batch_store == BatchStore::Events;
    ingest.set_batch_events_stored(batch_events);
    ingest.set_rate_limit(SOURCES, cfg.rate);
    let mut sink = match StoreSink::new(logs, &stats, cfg.ack) {
        Ok(mut s) => {
            s.batch_events = batch_events;
            s
        }
        Err(e) => {
            let _ = started.send(Err(e));
            return Ok(());
        }
    };
    stats
        .dedup_effective_window_ns
        .set(ns(cfg.dedup_window).max(1));
    // Ids stored within the last dedup window before this start are remembered again, so a
    // producer resending them after a restart gets duplicates, not a second copy.
    let refill = match refill_dedup(
        &cfg.data_dir.join(LOG_NAMES[1]),
        &mut procs.transactional,
        stats.shared.start_wall,
        ns(cfg.dedup_window),
    ) {
        Ok(r) => r,
        Err(e) => {
            let _ = started.send(Err(format!("refilling the dedup window: {e}")));
            return Ok(());
        }
    };
    // Evictions the refill made (a table too small for the window's ids) are evictions too;
    // the processors are not running yet, so this thread may write their counter.
    stats
        .process
        .dedup_evictions
        .add(procs.transactional.evictions());
    // Producer sessions: what each producer had resolved, and what the logs hold of its
    // frames that were in flight, so that its resends are duplicates, not copies.
    let cutoff = stats
        .shared
        .start_wall
        .saturating_sub(ns(cfg.dedup_window).max(ns(sessions::SESSION_SCAN)));
    let dirs: Vec<std::path::PathBuf> = LOG_NAMES.iter().map(|n| cfg.data_dir.join(n)).collect();
    let dirs: Vec<&std::path::Path> = dirs.iter().map(|d| d.as_path()).collect();
    let sessions = match sessions::scan(&dirs, cutoff) {
        Ok(scan) => {
            let producers = scan.producers.len();
            let left_out = ingest.restore_producers(scan.producers);
            (producers > 0 || !scan.unreadable.is_empty()).then_some(SessionsRestored {
                producers: producers - left_out,
                left_out,
                held: scan.held,
                forgotten: scan.forgotten,
                unreadable: scan.unreadable,
                scanned: scan.scanned,
                took: scan.took,
            })
        }
        Err(e) => {
            let _ = started.send(Err(format!("rebuilding the producer sessions: {e}")));
            return Ok(());
        }
    };
    let _ = started.send(Ok(Restored {
        dedup: refill,
        sessions,
    }));
    let placement = &cfg.placement;
    let budget = cfg.budget.max(1);
    let window = ns(cfg.aggregate_window).max(1);
    let control_cfg = cfg.control;
    let stats_ref: &EngineStats = &stats;
    let hook = cfg.thread_hook;
    let plan = &plan;
    thread::scope(|s| {
        let ingest_thread = thread::Builder::new()
            .name("pinstream-ingest".into())
            .spawn_scoped(s, move || {
                // However this thread ends (stop, an epoll error, a panic), the storage
                // thread must learn that no more input and no more ACK sending will come.
                let _exit = IngestExit(&stats_ref.shared);
                prepare_thread(plan, "ingest", stats_ref, hook);
                let mut idler = Idler::new(
                    placement.idle.effective(!plan.is_pinning()),
                    Arc::clone(&stats_ref.ingest_load),
                );
                while !stats_ref.shared.stop.load(Ordering::Acquire) {
                    let work = match ingest.poll() {
                        Ok(w) => w,
                        Err(e) => return Err(format!("ingest: epoll failed: {e}")),
                    };
                    idler.step(work);
                }
                ingest.shut_down(Duration::from_secs(10));
                Ok(())
            })
            .map_err(|e| format!("cannot start the ingest thread: {e}"))?;
        let storage_thread = thread::Builder::new()
            .name("pinstream-storage".into())
            .spawn_scoped(s, move || {
                prepare_thread(plan, "storage", stats_ref, hook);
                let mut run = StorageLoop {
                    processors,
                    procs,
                    dead,
                    done_tx,
                    sink: &mut sink,
                    stats: stats_ref,
                    control: ControlPlane::new(control_cfg),
                    budget,
                    window,
                    candidate: None,
                    last_control: 0,
                    last_offered: 0,
                    last_dropped: 0,
                    commit_latency: LatencyRecorder::new(Arc::clone(&stats_ref.commit_latency)),
                    durable_latency: LatencyRecorder::new(Arc::clone(&stats_ref.durable_latency)),
                    last_retention: 0,
                    last_dedup_window: 0,
                };
                run.run(placement.idle.effective(!plan.is_pinning()))
            })
            .map_err(|e| format!("cannot start the storage thread: {e}"))?;
        let a = ingest_thread
            .join()
            .unwrap_or_else(|_| Err("the ingest thread panicked".into()));
        let b = storage_thread
            .join()
            .unwrap_or_else(|_| Err("the storage thread panicked".into()));
        a.and(b)
    })
}

/// Marks the ingest thread's end (see its use).
struct IngestExit<'a>(&'a Shared);

impl Drop for IngestExit<'_> {
    fn drop(&mut self) {
        self.0.ingest_done.store(true, Ordering::Release);
        self.0.ingest_exited.store(true, Ordering::Release);
    }
}

/// Runs the hook, pins the calling thread per the plan (nothing when overprovisioned) and
/// records what it got. A refusal is reported, not fatal: the engine still works unpinned.
fn prepare_thread(plan: &PinPlan, thread: &'static str, stats: &EngineStats, hook: Option<fn()>) {
    if let Some(hook) = hook {
        hook();
    }
    let note = match plan.pin_current(thread) {
        Ok(report) => report.to_string(),
        Err(e) => format!("{thread}: {e}; running unpinned"),
    };
    stats
        .placement
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(note);
}

/// The storage thread's state.
struct StorageLoop<'a, 's> {
    processors: EngineProcessors<'a>,
    procs: &'a mut EngineLaneProcessors,
    dead: DeadLetters<'a, DEAD_LETTERS>,
    done_tx: Producer<'a, Completion, COMPLETIONS>,
    sink: &'s mut StoreSink<'a>,
    stats: &'a EngineStats,
    control: ControlPlane,
    budget: usize,
    window: u64,
    /// A batch watermark waiting for its events to be taken and their windows to close.
    candidate: Option<BatchMark>,
    last_control: u64,
    last_offered: u64,
    last_dropped: u64,
    commit_latency: LatencyRecorder,
    durable_latency: LatencyRecorder,
    last_retention: u64,
    last_dedup_window: u64,
}

/// A batch watermark on its way (see [`StorageLoop::batch_watermark`]).
#[derive(Clone, Copy, Debug)]
struct BatchMark {
    /// The ingest thread's `pushed_before` it stands for.
    mark: u64,
    /// Batch-lane events the dispatcher had queued by then.
    queued: u64,
    /// The window boundary by which their windows close, once they are all taken.
    end: Option<u64>,
}

/// How often the dedup table's effective window is published: 1 s.
const DEDUP_WINDOW_EVERY: u64 = 1_000_000_000;
/// How often the control plane looks at the lanes.
const CONTROL_EVERY: u64 = 1_000_000;
/// How often retention is applied (when configured), in ticks: 10 s.
const RETENTION_EVERY: u64 = 10_000_000_000;

impl StorageLoop<'_, '_> {
    fn run(&mut self, idle: IdleStrategy) -> Result<(), String> {
        let mut idler = Idler::new(idle, Arc::clone(&self.stats.storage_load));
        loop {
            let stopping = self.stats.shared.ingest_done.load(Ordering::Acquire);
            let work = self.round(stopping);
            if stopping && !work {
                break;
            }
            idler.step(work);
        }
        // Nothing comes in any more: process what is left, close every window, sync.
        let now = self.stats.shared.now();
        self.drain_dead_letters();
        self.sink.round_now = now;
        self.processors
            .drain(self.procs, &mut CountAlerts::default(), self.sink, now);
        self.drain_dead_letters();
        self.sink.pending_batch = Some(self.stats.shared.pushed_before.load(Ordering::Acquire));
        let result = self.commit(true);
        // What the drain left inside the engine (nothing, unless storage failed): the
        // handle checks the books with it once the threads are joined.
        let in_flight = self.processors.in_flight(self.procs);
        self.stats.in_flight.set(in_flight);
        self.stats
            .shared
            .storage_done
            .store(true, Ordering::Release);
        let closed = self.sink.close();
        result
            .and(closed)
            .map(|_| ())
            .map_err(|e| format!("storage: {e}"))
    }

    /// One round; whether it did anything.
    fn round(&mut self, stopping: bool) -> bool {
        let now = self.stats.shared.now();
        self.sink.round_now = now;
        let pushed_before = self.stats.shared.pushed_before.load(Ordering::Acquire);
        let mut work = self.drain_dead_letters() > 0;
        let summary = self.processors.poll(
            self.procs,
            &mut CountAlerts::default(),
            self.sink,
            now,
            self.budget,
        );
        work |= summary.did_work();
        self.batch_watermark(pushed_before, now);
        if now - self.last_control >= CONTROL_EVERY {
            self.observe(now);
        }
        if now - self.last_retention >= RETENTION_EVERY {
            self.last_retention = now;
            self.sink.enforce_retention();
        }
        let force = stopping || !work;
        // An error was recorded by the sink (`fail`): writes have stopped, health says why.
        if let Ok(c) = self.commit(force) {
            work |= c;
        }
        work
    }

    /// Writes the dispatcher's dead letters to the dead-letter log.
    fn drain_dead_letters(&mut self) -> usize {
        let sink = &mut *self.sink;
        self.dead
            .drain(usize::MAX, |record| sink.write_dead_letter(&record, false))
    }

    /// Advances the batch watermark. The batch lane has one producer, so it is FIFO: once
    /// the processors have taken as many batch events as the dispatcher had queued when it
    /// published `pushed_before`, every batch event dispatched before that tick has been
    /// taken; once every window open at that moment has closed (and nothing is parked), their
    /// aggregates are in the sink, and the next commit makes the watermark true.
    fn batch_watermark(&mut self, pushed_before: u64, now: u64) {
        let batch = Lane::Batch.index();
        let parked = self.processors.parked();
        if self.candidate.is_none() {
            if self.processors.depths()[batch] == 0
                && self.procs.batch.pending() == 0
                && parked == 0
            {
                // Nothing batch-side in flight: every batch event before it is settled.
                self.sink.pending_batch = Some(pushed_before);
                return;
            }
            // Read after `pushed_before` (acquire): at least the count queued before it.
            let queued = self.stats.dispatch.queued(Lane::Batch).get();
            self.candidate = Some(BatchMark {
                mark: pushed_before,
                queued,
                end: None,
            });
        }
        let Some(c) = self.candidate.as_mut() else {
            return;
        };
        if c.end.is_none() && self.stats.process.processed[batch].get() >= c.queued {
            // All taken by `now`: they sit in windows that end by the next boundary.
            c.end = Some(now - now % self.window + self.window);
        }
        if let Some(end) = c.end {
            if now >= end && !self.procs.batch.due(now) && parked == 0 {
                self.sink.pending_batch = Some(c.mark);
                self.candidate = None;
            }
        }
    }

    /// Feeds the control plane.
    fn observe(&mut self, now: u64) {
        self.last_control = now;
        let d = &self.stats.dispatch;
        let offered = d.ingested.get();
        let dropped = d.reason(Reason::LaneFull).get() + d.reason(Reason::PoolExhausted).get();
        let depths = self.processors.depths();
        for (gauge, &d) in self.stats.lane_depths.iter().zip(&depths) {
            gauge.set(d as u64);
        }
        let depth = depths
            .iter()
            .map(|&n| depth_permille(n, LANE))
            .max()
            .unwrap_or(0);
        let obs = Observation {
            depth_permille: depth,
            offered: offered - self.last_offered,
            dropped: dropped - self.last_dropped,
        };
        self.last_offered = offered;
        self.last_dropped = dropped;
        self.control.evaluate_and_publish(obs, &self.stats.control);
        self.stats
            .control_transitions
            .set(self.control.transitions());
        let in_flight = self.processors.in_flight(self.procs);
        self.stats.in_flight.set(in_flight);
        if now - self.last_dedup_window >= DEDUP_WINDOW_EVERY {
            self.last_dedup_window = now;
            let tx = &mut self.procs.transactional;
            let effective = tx.take_youngest_evicted().unwrap_or(tx.window());
            self.stats.dedup_effective_window_ns.set(effective);
        }
    }

    /// Makes what was written durable per the mode and tells the ingest thread, in two
    /// halves so that the fdatasyncs overlap the next rounds' processing: a commit starts
    /// (buffers written, the fdatasyncs handed to the sync helpers, its completions set
    /// aside) when one is due, and ends (its completions published) once every sync has
    /// returned. One commit is out at a time. `force`: end the one out and commit
    /// whatever is left now, waiting for it (idle, or stopping). Returns whether it did
    /// anything.
    fn commit(&mut self, force: bool) -> Result<bool, StorageError> {
        let mut did = false;
        if self.sink.committing {
            // The next batch of completions may not outgrow its buffer: past half of it,
            // wait for the commit out.
            let wait = force || self.sink.completions.len() >= MAX_PENDING_COMPLETIONS / 2;
            if !wait && !self.sink.group_sync.is_done() {
                return Ok(false);
            }
            self.end_commit()?;
            did = true;
        }
        if !self.sink.dirty() {
            // Nothing unsynced: a batch watermark can go out at once (not counted as work,
            // it moves every round).
            if let Some(mark) = self.sink.pending_batch.take().filter(|_| !self.sink.failed) {
                self.stats
                    .shared
                    .batch_resolved
                    .fetch_max(mark, Ordering::Release);
            }
            return Ok(did);
        }
        let now = Instant::now();
        if !force && !self.sink.commit_due(now) {
            return Ok(did);
        }
        self.sink.start_commit(now)?;
        if force || !self.sink.group_sync.in_flight() {
            self.end_commit()?;
        }
        Ok(true)
    }

    /// Waits for the commit out to be durable, then publishes its completions.
    fn end_commit(&mut self) -> Result<(), StorageError> {
        let started = self.sink.commit_started;
        self.sink.finish_commit()?;
        let end = self.stats.shared.now();
        let now = Instant::now();
        let took = now.duration_since(started);
        self.commit_latency
            .record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
        if self.sink.in_flight_oldest != u64::MAX {
            self.durable_latency
                .record(end.saturating_sub(self.sink.in_flight_oldest));
            self.sink.in_flight_oldest = u64::MAX;
        }
        self.sink.publish(&mut self.done_tx, &self.stats.shared);
        self.commit_latency.maybe_publish(now);
        self.durable_latency.maybe_publish(now);
        Ok(())
    }
}

/// The engine's sink: appends records to the lane logs and the dead-letter log, collects
/// the completions a commit will publish.
struct StoreSink<'a> {
    logs: Vec<Log>,
    /// Syncs the dirty logs of a commit at the same time.
    group_sync: GroupSync,
    stats: &'a EngineStats,
    ack: AckMode,
    /// Completions waiting for the next commit (allocated once).
    completions: Vec<Completion>,
    /// A batch watermark waiting for the next commit.
    pending_batch: Option<u64>,
    /// A commit is out: started, its syncs not yet ended.
    committing: bool,
    /// When the commit out started.
    commit_started: Instant,
    /// The completions of the commit out, published when it ends (allocated once; swapped
    /// with `completions`).
    in_flight: Vec<Completion>,
    /// The batch watermark of the commit out.
    in_flight_batch: Option<u64>,
    /// Dispatch tick of the oldest event of the commit out (`u64::MAX`: none).
    in_flight_oldest: u64,
    /// Logs with records since the last commit.
    dirty: [bool; 4],
    /// A storage failure stops writes (no retry of a failed fsync).
    failed: bool,
    /// Logs a failed write or sync poisoned (their lost records are counted).
    poisoned: [bool; 4],
    /// Dispatch tick of the oldest event stored since the last commit (`u64::MAX`: none).
    oldest: u64,
    /// Batch-lane events are stored (and settled) one by one, like the other lanes'.
    batch_events: bool,
    /// The storage thread's tick of the current processing round (what the processors were
    /// given as `now`).
    round_now: u64,
}

/// The records of log `i` ([`LOG_NAMES`] order) not written to its file yet: events (lane
/// logs) and dead letters (the dead-letter log).
fn unwritten(log: &Log, i: usize) -> (u64, u64) {
    if i == 3 {
        let dead = [record::KIND_DEAD_LETTER, record::KIND_PRODUCER_DEAD_LETTER];
        (0, log.unwritten(&dead))
    } else {
        (
            log.unwritten(&[record::KIND_EVENT, record::KIND_PRODUCER_EVENT]),
            0,
        )
    }
}

/// Why [`StoreSink::append`] wrote nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AppendError {
    /// Storage failed earlier: nothing is written any more.
    Failed,
    /// This append failed (the error is recorded: counter, health, `storage_error`).
    Now,
}

/// Completions collected before a commit is forced.
const MAX_PENDING_COMPLETIONS: usize = 65_536;

impl<'a> StoreSink<'a> {
    fn new(logs: Vec<Log>, stats: &'a EngineStats, ack: AckMode) -> Result<Self, String> {
        // Each log's fdatasync runs on a helper, off the storage thread (none when no log is
        // ever synced).
        let synced = logs
            .iter()
            .filter(|l| l.config().durability != Durability::None)
            .count();
        let group_sync = GroupSync::new(synced)
            .map_err(|e| format!("cannot start the storage sync threads: {e}"))?;
        Ok(Self {
            logs,
            group_sync,
            stats,
            ack,
            completions: Vec::with_capacity(MAX_PENDING_COMPLETIONS),
            pending_batch: None,
            committing: false,
            commit_started: Instant::now(),
            in_flight: Vec::with_capacity(MAX_PENDING_COMPLETIONS),
            in_flight_batch: None,
            in_flight_oldest: u64::MAX,
            dirty: [false; 4],
            failed: false,
            poisoned: [false; 4],
            oldest: u64::MAX,
            batch_events: false,
            round_now: 0,
        })
    }

    /// Syncs and closes every log (dropping a log would leave its buffer unwritten).
    fn close(&mut self) -> Result<bool, StorageError> {
        if self.committing {
            // Only after a failure (a forced commit ends the one out): it was reported.
            self.committing = false;
            let _ = self.group_sync.finish(&mut self.logs);
        }
        let mut first = Ok(true);
        for (i, log) in std::mem::take(&mut self.logs).into_iter().enumerate() {
            // What is still buffered is written by the close, or lost with it.
            let pending = unwritten(&log, i);
            if let Err(e) = log.close() {
                if !self.poisoned[i] {
                    self.stats.host.storage_lost_events.add(pending.0);
                    self.stats.host.storage_lost_dead_letters.add(pending.1);
                }
                if first.is_ok() && !self.failed {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Removes the oldest closed segments past the configured retention, if any (rarely:
    /// every [`RETENTION_EVERY`]; this may allocate, it lists directories). A failure is
    /// reported like any storage failure.
    fn enforce_retention(&mut self) {
        if self.failed {
            return;
        }
        for i in 0..self.logs.len() {
            let c = self.logs[i].config();
            if c.retention_bytes.is_none() && c.retention_age.is_none() {
                continue;
            }
            if let Err(e) = self.logs[i].enforce_retention(std::time::SystemTime::now()) {
                self.fail(&e, &self.stats.host.storage_write_errors, None);
                return;
            }
        }
    }

    /// Records or completions wait for a commit.
    fn dirty(&self) -> bool {
        self.dirty.iter().any(|&d| d) || !self.completions.is_empty()
    }

    fn commit_due(&self, now: Instant) -> bool {
        self.completions.len() >= MAX_PENDING_COMPLETIONS / 2
            || self
                .logs
                .iter()
                .zip(self.dirty)
                .any(|(log, dirty)| dirty && log.sync_due(now))
    }

    /// Starts a commit: flushes (durability `none`) every log written to, or writes it and
    /// hands its fdatasync to a sync helper (`interval`, `always`; [`GroupSync`]); sets the
    /// completions and the batch watermark collected so far aside for
    /// [`finish_commit`](Self::finish_commit). What is stored meanwhile waits for the next.
    fn start_commit(&mut self, now: Instant) -> Result<(), StorageError> {
        debug_assert!(!self.committing && self.in_flight.is_empty());
        // After a failure nothing is written any more; only dead letters are reported.
        let mut to_sync = [false; 4];
        for (i, log) in self.logs.iter_mut().enumerate() {
            if !self.dirty[i] || self.failed {
                continue;
            }
            if log.config().durability == Durability::None {
                if let Err(e) = log.flush() {
                    self.fail_io(&e, i);
                    return Err(e);
                }
            } else {
                to_sync[i] = true;
            }
        }
        if let Err((i, e)) = self.group_sync.start(&mut self.logs, &to_sync) {
            self.fail_io(&e, i);
            return Err(e);
        }
        self.dirty = [false; 4];
        std::mem::swap(&mut self.completions, &mut self.in_flight);
        self.in_flight_batch = self.pending_batch.take();
        self.in_flight_oldest = std::mem::replace(&mut self.oldest, u64::MAX);
        self.committing = true;
        self.commit_started = now;
        Ok(())
    }

    /// Ends the commit out: waits for its syncs; the commit fails if any of them does.
    fn finish_commit(&mut self) -> Result<(), StorageError> {
        debug_assert!(self.committing);
        self.committing = false;
        if let Err((i, e)) = self.group_sync.finish(&mut self.logs) {
            self.fail_io(&e, i);
            return Err(e);
        }
        let (mut segments, mut syncs) = (0, 0);
        for log in &self.logs {
            let s = log.stats();
            segments += s.segments as u64;
            // The fdatasyncs the log really made (rolls included; none under `none`, where a
            // commit only writes to the page cache).
            syncs += s.syncs;
        }
        self.stats.host.storage_segments.set(segments);
        self.stats.host.storage_syncs.set(syncs);
        Ok(())
    }

    /// Sends the ended commit's completions and batch watermark to the ingest thread.
    fn publish(&mut self, tx: &mut Producer<'_, Completion, COMPLETIONS>, shared: &Shared) {
        let mut sent = 0;
        while sent < self.in_flight.len() {
            sent += tx.push_slice(&self.in_flight[sent..]);
            if sent < self.in_flight.len() {
                if shared.ingest_exited.load(Ordering::Acquire) {
                    // Nobody takes completions any more (the ingest thread is gone).
                    break;
                }
                std::hint::spin_loop();
                thread::yield_now();
            }
        }
        self.stats.host.durable_events.add(
            self.in_flight
                .iter()
                .map(|c| u64::from(c.stored))
                .sum::<u64>(),
        );
        self.in_flight.clear();
        // After a storage failure, aggregates are not stored: the batch watermark stops.
        if let Some(mark) = self.in_flight_batch.take().filter(|_| !self.failed) {
            shared.batch_resolved.fetch_max(mark, Ordering::Release);
        }
    }

    /// Notes events of `(source, seq)` stored, dead-lettered or found duplicate.
    fn note(&mut self, source: u32, seq: u64, stored: u32, dead: u32, duplicates: u32) {
        if self.ack != AckMode::Durable || source == crate::ingest::SourceId::UDP.get() {
            return;
        }
        if let Some(last) = self.completions.last_mut() {
            if last.source == source && last.seq == seq {
                last.stored += stored;
                last.dead += dead;
                last.duplicates += duplicates;
                return;
            }
        }
        self.completions.push(Completion {
            source,
            seq,
            stored,
            dead,
            duplicates,
        });
    }

    /// Appends one record to log `log`, the body encoded in place by `fill`. A failed log
    /// refuses everything after its first error (no retry of a failed fsync).
    fn append(
        &mut self,
        log: usize,
        kind: u8,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, record::RecordError>,
    ) -> Result<u64, AppendError> {
        if self.failed {
            return Err(AppendError::Failed);
        }
        match self.logs[log].append_with(kind, len, fill) {
            Ok(offset) => {
                self.dirty[log] = true;
                self.stats.host.storage_records.incr();
                self.stats.host.storage_bytes.add(len as u64);
                Ok(offset)
            }
            Err(e) => {
                // Any refusal stops the writes, an encoding bug included: the record's
                // events must not be acknowledged, and a sink that skipped a record and
                // went on would store a log with a hole the acks do not show. Only a failed
                // write or sync poisons the log (its buffer is lost); after an encoding
                // error the buffer is still written at close.
                let poisoned = !matches!(
                    e,
                    StorageError::Encode { .. } | StorageError::BodyLength { .. }
                );
                self.fail(
                    &e,
                    &self.stats.host.storage_write_errors,
                    poisoned.then_some(log),
                );
                Err(AppendError::Now)
            }
        }
    }

    /// A failed write or sync of log `log` (which it poisoned): counted as a write error
    /// when the write failed, a sync error otherwise.
    fn fail_io(&mut self, e: &StorageError, log: usize) {
        let stats = self.stats;
        let counter = match e {
            StorageError::Io { op: "write", .. } => &stats.host.storage_write_errors,
            _ => &stats.host.storage_sync_errors,
        };
        self.fail(e, counter, Some(log));
    }

    /// Records the first storage failure: writes stop, health reports it.
    ///
    /// `poisoned`: the log the failure poisoned, whose write buffer will never be written:
    /// its records were counted stored (or dead-lettered) by the pipeline and are not in
    /// the log. The other logs write theirs when they are closed.
    fn fail(&mut self, e: &StorageError, counter: &crate::stats::Gauge, poisoned: Option<usize>) {
        counter.incr();
        self.failed = true;
        if let Some(i) = poisoned {
            self.poisoned[i] = true;
            let (events, dead) = unwritten(&self.logs[i], i);
            self.stats.host.storage_lost_events.add(events);
            self.stats.host.storage_lost_dead_letters.add(dead);
        }
        // What was written since the last commit is not known to be durable: those frames
        // are never acknowledged (the producer resends; recovery on restart keeps what
        // reached the disk intact). From now on only dead letters are reported.
        self.completions.clear();
        self.pending_batch = None;
        self.in_flight.clear();
        self.in_flight_batch = None;
        // Nothing will be synced any more: a failed log is not "dirty", it is done.
        self.dirty = [false; 4];
        self.stats
            .shared
            .storage_failed
            .store(true, Ordering::Relaxed);
        let mut slot = self
            .stats
            .storage_error
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e.to_string());
        }
    }

    /// Writes a dead letter to the dead-letter log; `settle`: tell the producer (a
    /// processor-stage dead letter; the dispatcher's are settled by the ingest thread).
    fn write_dead_letter(&mut self, record: &DeadLetter, settle: bool) {
        // A dead letter whose record cannot be written is still a dead letter (counted by
        // the core); the failure is reported through health and the error counter.
        let (kind, len) = record::dead_letter_shape(record);
        if self
            .append(3, kind, len, |dst| record::encode_dead_letter(dst, record))
            .is_ok()
        {
            self.stats.host.storage_dead_letters.incr();
        } else {
            // Counted dead-lettered by the core, but not in the log: say so.
            self.stats
                .host
                .storage_lost_dead_letters
                .add(u64::from(record.events));
        }
        // Batch-lane events that are only aggregated are settled by the batch watermark, not
        // per frame (a dead letter of one would otherwise consume a realtime event's place in
        // its frame); stored one by one, they are settled like the other lanes' events.
        if settle && (self.batch_events || record.header.priority.lane() != Lane::Batch) {
            self.note(record.origin.source, record.origin.seq, 0, record.events, 0);
        }
    }
}

impl Sink for StoreSink<'_> {
    fn store(&mut self, rec: &Record<'_>) -> Result<(), SinkError> {
        match rec {
            Record::Event(e) => {
                // The log records, as wall-clock time, the processing round that stored the
                // event: for the transactional lane the very tick its id was first seen by the
                // dedup table, so a restart refills the table with exact ages.
                let wall = StoredEvent {
                    received: self.stats.shared.start_wall.saturating_add(self.round_now),
                    ..*e
                };
                let (kind, len) = record::event_shape(&wall);
                self.append(e.lane.index(), kind, len, |dst| {
                    record::encode_event(dst, &wall)
                })
                .map_err(|_| SinkError)?;
                self.oldest = self.oldest.min(e.received);
                self.note(e.origin.source, e.origin.seq, 1, 0, 0);
            }
            Record::Aggregate(a) => {
                self.append(2, record::KIND_AGGREGATE, record::AGGREGATE_LEN, |dst| {
                    record::encode_aggregate(dst, a)
                })
                .map_err(|_| SinkError)?;
            }
        }
        Ok(())
    }

    fn dead_letter(&mut self, record: &DeadLetter) -> bool {
        self.write_dead_letter(record, true);
        true
    }

    fn duplicate(&mut self, _header: &EventHeader, origin: Origin) {
        // Nothing is written: the event with this id is in the log. Its frame's ACK waits
        // for the commit that covers what was stored before it, like any other outcome.
        self.note(origin.source, origin.seq, 0, 0, 1);
    }
}
