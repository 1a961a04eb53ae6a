//! The configuration: TOML, typed, with an embedded default that serves out of the box.
//!
//! Every limit and capacity has a key; a file names only what it changes (every section and
//! key has a default, equal to the embedded `default.toml`, which documents each key). Loading
//! has two steps:
//!
//! 1. [`Config::from_toml`] / [`Config::load`] parse: syntax, types, unknown keys (at any
//!    depth), enum values and listen addresses. The error names the file, the key path, the
//!    line and column, and what is allowed.
//! 2. [`Config::validate`] checks ranges and relations between keys; it reports every
//!    problem at once, each naming its key, and returns warnings (e.g. a server listening
//!    beyond loopback) for the runner to print.
//!
//! [`Config::load_checked`] does both.
//!
//! ```
//! use pinstream_host::config::{AckMode, Config};
//!
//! let cfg = Config::from_toml("[engine]\nack = \"accepted\"\n", "inline.toml").unwrap();
//! assert_eq!(cfg.engine.ack, AckMode::Accepted);
//! assert_eq!(cfg.tcp, Config::embedded_default().tcp); // untouched sections keep defaults
//! assert!(cfg.validate().unwrap().is_empty());
//!
//! let err = Config::from_toml("[tcp]\nmax_frame_lenn = 10\n", "bad.toml").unwrap_err();
//! assert!(err.to_string().starts_with("bad.toml:2:1: tcp.max_frame_lenn: unknown field"));
//! ```

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pinstream_core::control::ControlConfig;
use pinstream_core::event::Priority;
use pinstream_core::process::RetryPolicy;
use pinstream_core::process::realtime::Condition;
use pinstream_core::wire::{
    ACK_BODY_LEN, BATCH_PREFIX_LEN, EVENT_RECORD_LEN, MIN_FRAME_LEN, REJECT_BODY_LEN,
};
use serde::{Deserialize, Deserializer};

pub use crate::placement::PlacementMode;

/// The embedded default configuration file (`host/src/default.toml`).
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// The origin [`Config::embedded_default`] reports in errors.
pub const EMBEDDED_ORIGIN: &str = "<embedded default config>";

/// The largest frame length `tcp.max_frame_len` may set: 16 MiB.
pub const MAX_FRAME_LEN_LIMIT: u64 = 16 * 1024 * 1024;

/// The most connections `tcp.max_connections` may set: each connection may hold its own
/// rate-limit key (a producer or an address), and the build has 4,096 (`engine::SOURCES`)
/// of them, key 0 being the shared overflow one.
pub const MAX_TCP_CONNECTIONS: usize = 4_095;

/// The largest UDP payload over IPv4.
pub const MAX_UDP_DATAGRAM: usize = 65_507;

/// The highest CPU number the kernel's affinity mask can name (`CPU_SETSIZE - 1`).
pub const MAX_CPU: usize = 1023;

/// The capacity presets this build is compiled for: `[capacity]` must equal one of them.
pub const CAPACITY_PRESETS: &[CapacityConfig] = &[CapacityConfig::DEFAULT];

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Threads, pinning, idling, acknowledgements.
    pub engine: EngineConfig,
    /// TCP ingest.
    pub tcp: TcpConfig,
    /// UDP ingest.
    pub udp: UdpConfig,
    /// The log on disk.
    pub storage: StorageConfig,
    /// Topics, rate limits, processing.
    pub pipeline: PipelineConfig,
    /// Compiled sizes.
    pub capacity: CapacityConfig,
    /// Control-plane thresholds.
    pub control: ControlSection,
    /// The admin HTTP endpoint.
    pub admin: AdminConfig,
}

/// `[engine]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Whether the engine's threads are pinned: auto, pinned, unpinned (see
    /// [`crate::placement`]).
    pub placement: PlacementMode,
    /// No pinning and no busy polling (containers, CI, shared machines): the older spelling
    /// of `placement = "unpinned"`, and it wins over `placement`.
    pub overprovisioned: bool,
    /// CPU of the ingest thread (TCP and UDP).
    pub ingest_cpu: usize,
    /// CPU of the processing and storage thread.
    pub process_cpu: usize,
    /// What a polling thread does when it finds no work.
    pub idle: IdleKind,
    /// Empty polls spun before yielding or parking.
    pub idle_spins: u32,
    /// `sched_yield` calls before parking.
    pub idle_yields: u32,
    /// Length of one park, microseconds.
    pub idle_park_us: u64,
    /// Bind lanes, pools and buffers to the NUMA node of the CPU that uses them.
    pub numa: bool,
    /// `mlockall` at start-up.
    pub mlock: bool,
    /// When events are acknowledged.
    pub ack: AckMode,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            placement: PlacementMode::Auto,
            overprovisioned: false,
            ingest_cpu: 0,
            process_cpu: 1,
            idle: IdleKind::SpinPark,
            idle_spins: 10_000,
            idle_yields: 100,
            idle_park_us: 50,
            numa: true,
            mlock: false,
            ack: AckMode::Durable,
        }
    }
}

impl EngineConfig {
    /// `idle_park_us` as a duration.
    pub fn idle_park(&self) -> Duration {
        Duration::from_micros(self.idle_park_us)
    }
}

/// What a polling thread does between empty polls (`engine.idle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdleKind {
    /// Spin forever: lowest latency, a whole CPU.
    Spin,
    /// Spin, then `sched_yield`.
    SpinYield,
    /// Spin, yield, then park for `idle_park_us`.
    SpinPark,
}

impl IdleKind {
    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            IdleKind::Spin => "spin",
            IdleKind::SpinYield => "spin-yield",
            IdleKind::SpinPark => "spin-park",
        }
    }
}

/// When an event is acknowledged to its producer (`engine.ack`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// Never: fire and forget.
    None,
    /// When the engine accepted it into a lane (lost on a crash before the sync).
    Accepted,
    /// After the sync that makes it durable.
    Durable,
}

impl AckMode {
    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            AckMode::None => "none",
            AckMode::Accepted => "accepted",
            AckMode::Durable => "durable",
        }
    }
}

/// When the log is synced to disk (`storage.durability`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// Never explicitly: the kernel writes back when it likes.
    None,
    /// Group commit: every `interval_ms` or `interval_bytes`, whichever comes first.
    Interval,
    /// After every write.
    Always,
}

impl DurabilityMode {
    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            DurabilityMode::None => "none",
            DurabilityMode::Interval => "interval",
            DurabilityMode::Always => "always",
        }
    }
}

/// `[tcp]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpConfig {
    /// Where to listen; `None` (`""` or `"off"`) disables TCP ingest.
    #[serde(deserialize_with = "de_listen")]
    pub listen: Option<SocketAddr>,
    /// Connections open at once; more are refused.
    pub max_connections: usize,
    /// The longest frame accepted, bytes.
    pub max_frame_len: u64,
    /// Per-connection receive buffer, bytes.
    pub recv_buffer: u64,
    /// Per-connection ack/reject buffer, bytes.
    pub send_buffer: u64,
    /// Frames accepted but not yet acknowledged, per connection.
    pub inflight_frames: usize,
    /// Events accepted but not yet acknowledged, per connection.
    pub inflight_events: usize,
    /// Malformed frames before the connection is closed.
    pub max_rejects: u32,
    /// A silent connection is closed after this long, milliseconds.
    pub idle_timeout_ms: u64,
    /// A client not reading its acks is closed after this long, milliseconds.
    pub stall_timeout_ms: u64,
    /// A frame begun must arrive whole within this, milliseconds (0: no limit).
    pub frame_timeout_ms: u64,
    /// Connections open at once from one address; more are refused.
    pub max_connections_per_ip: usize,
    /// Producer sessions (protocol version 2) remembered at once.
    pub max_producers: usize,
    /// A producer without a connection is forgotten after this long, milliseconds.
    pub producer_idle_ms: u64,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 7070))),
            max_connections: 1024,
            max_frame_len: 65_536,
            recv_buffer: 262_144,
            send_buffer: 65_536,
            inflight_frames: 1024,
            inflight_events: 65_536,
            max_rejects: 100,
            idle_timeout_ms: 300_000,
            stall_timeout_ms: 10_000,
            frame_timeout_ms: 10_000,
            max_connections_per_ip: 256,
            max_producers: 4096,
            producer_idle_ms: 3_600_000,
        }
    }
}

impl TcpConfig {
    /// `idle_timeout_ms` as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    /// `stall_timeout_ms` as a duration.
    pub fn stall_timeout(&self) -> Duration {
        Duration::from_millis(self.stall_timeout_ms)
    }
    /// The most events one frame of `max_frame_len` bytes can carry.
    pub fn max_events_per_frame(&self) -> u64 {
        self.max_frame_len
            .saturating_sub((MIN_FRAME_LEN + BATCH_PREFIX_LEN) as u64)
            / EVENT_RECORD_LEN as u64
    }
}

/// `[udp]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UdpConfig {
    /// Where to listen; `None` (`""` or `"off"`) disables UDP ingest.
    #[serde(deserialize_with = "de_listen")]
    pub listen: Option<SocketAddr>,
    /// Datagrams per `recvmmsg`.
    pub batch: usize,
    /// The longest datagram accepted, bytes.
    pub max_datagram: usize,
}

impl Default for UdpConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 7071))),
            batch: 64,
            max_datagram: MAX_UDP_DATAGRAM,
        }
    }
}

/// `[storage]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// The data directory.
    pub dir: PathBuf,
    /// When the log is synced.
    pub durability: DurabilityMode,
    /// `interval` mode: sync at least this often while data is pending, milliseconds.
    pub interval_ms: u64,
    /// `interval` mode: or as soon as this many bytes are pending.
    pub interval_bytes: u64,
    /// A segment file is closed past this size.
    pub segment_bytes: u64,
    /// One index entry per this many log bytes.
    pub index_interval_bytes: u64,
    /// Bytes gathered before a write.
    pub write_buffer_bytes: u64,
    /// Oldest segments are removed beyond this total; 0 keeps everything.
    pub retention_bytes: u64,
    /// Segments older than this are removed; 0 keeps everything.
    pub retention_hours: u64,
    /// Permissions of the files the engine creates, in octal (`"0600"`); directories get the
    /// same plus `x` where `r` is set (`0700`). [`StorageConfig::umask`] turns it into the
    /// process umask `pinstream run` sets.
    pub mode: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./pinstream-data"),
            durability: DurabilityMode::Interval,
            interval_ms: 1,
            interval_bytes: 1_048_576,
            segment_bytes: 134_217_728,
            index_interval_bytes: 4096,
            write_buffer_bytes: 1_048_576,
            retention_bytes: 0,
            retention_hours: 0,
            mode: "0600".into(),
        }
    }
}

impl StorageConfig {
    /// `mode` as a number, if it is octal and gives the owner read and write (the engine
    /// must reopen its own files) and nobody execute.
    pub fn file_mode(&self) -> Option<u32> {
        let digits = self.mode.strip_prefix("0o").unwrap_or(&self.mode);
        let mode = u32::from_str_radix(digits, 8).ok()?;
        (mode & !0o666 == 0 && mode & 0o600 == 0o600).then_some(mode)
    }

    /// The umask that makes new files `mode` and new directories `mode` plus `x` where `r`
    /// is set (`0600` → `0o077`; `0640` → `0o027`).
    pub fn umask(&self) -> Option<u32> {
        let mode = self.file_mode()?;
        Some(0o777 & !(mode | ((mode & 0o444) >> 2)))
    }

    /// `interval_ms` as a duration.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
}

/// `pipeline.batch_store`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchStoreSection {
    /// Every batch-lane event is stored (and acknowledged) on its own; the per-window
    /// aggregates are stored besides, as summaries.
    #[default]
    Events,
    /// Only the aggregates: an event counts as stored (and is acknowledged) when the
    /// aggregate of its window is.
    Aggregates,
}

impl BatchStoreSection {
    /// The core's setting.
    pub const fn to_core(self) -> pinstream_core::process::BatchStore {
        match self {
            Self::Events => pinstream_core::process::BatchStore::Events,
            Self::Aggregates => pinstream_core::process::BatchStore::Aggregates,
        }
    }
}

/// `[pipeline]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Registered topic names; ids are given in this order, from 0.
    pub topics: Vec<String>,
    /// Events per second per client (a version-2 producer, else an IP address); 0 =
    /// unlimited.
    pub rate_per_source: u64,
    /// Token-bucket depth per client.
    pub burst_per_source: u64,
    /// Transactional dedup window, milliseconds.
    pub dedup_window_ms: u64,
    /// Batch aggregation window, milliseconds.
    pub aggregate_window_ms: u64,
    /// What the batch lane stores: every event and the aggregates (`"events"`), or only the
    /// aggregates (`"aggregates"`).
    pub batch_store: BatchStoreSection,
    /// Sink attempts in all, the first included.
    pub retry_attempts: u32,
    /// Wait before the first retry, microseconds.
    pub retry_backoff_us: u64,
    /// Longest wait between two attempts, microseconds.
    pub retry_max_backoff_us: u64,
    /// Events per lane per processing round.
    pub budget: usize,
    /// Alert rules of the realtime lane.
    pub alert_rules: Vec<AlertRuleConfig>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            topics: vec!["default".to_owned()],
            rate_per_source: 0,
            burst_per_source: 0,
            dedup_window_ms: 10_000,
            aggregate_window_ms: 100,
            batch_store: BatchStoreSection::Events,
            retry_attempts: 4,
            retry_backoff_us: 100,
            retry_max_backoff_us: 10_000,
            budget: 256,
            alert_rules: Vec::new(),
        }
    }
}

impl PipelineConfig {
    /// The sink retry policy in nanosecond ticks.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.retry_attempts,
            backoff: self.retry_backoff_us.saturating_mul(1_000),
            max_backoff: self.retry_max_backoff_us.saturating_mul(1_000),
        }
    }

    /// The id of topic `name` (its index in [`topics`](Self::topics)).
    pub fn topic_id(&self, name: &str) -> Option<u16> {
        self.topics
            .iter()
            .position(|t| t == name)
            .and_then(|i| u16::try_from(i).ok())
    }
}

/// One alert rule: `{ topic = "default", when = "above", value = 100 }`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRuleConfig {
    /// The topic name (must be in `pipeline.topics`).
    pub topic: String,
    /// When it fires.
    pub when: AlertWhen,
    /// The threshold of `above` / `below` (ignored for `always`).
    #[serde(default)]
    pub value: i64,
}

impl AlertRuleConfig {
    /// The core's condition.
    pub const fn condition(&self) -> Condition {
        match self.when {
            AlertWhen::Always => Condition::Always,
            AlertWhen::Above => Condition::Above(self.value),
            AlertWhen::Below => Condition::Below(self.value),
        }
    }
}

/// When an alert rule fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertWhen {
    /// Every event of the topic.
    Always,
    /// Value strictly above the threshold.
    Above,
    /// Value strictly below the threshold.
    Below,
}

/// `[capacity]`: sizes compiled into the engine as const generics. The configured values must
/// equal one of [`CAPACITY_PRESETS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapacityConfig {
    /// Payload bytes an event slot holds.
    pub payload_bytes: usize,
    /// Event slots in the pool.
    pub pool_slots: usize,
    /// Events each lane holds.
    pub lane_capacity: usize,
    /// Dead letters waiting to be written.
    pub dead_letter_capacity: usize,
    /// Most topics `pipeline.topics` may register.
    pub topics: usize,
    /// Longest topic name, bytes.
    pub topic_name_bytes: usize,
    /// Most alert rules.
    pub alert_rules: usize,
    /// Ids the dedup table holds.
    pub dedup_slots: usize,
    /// Records parked for a sink retry.
    pub retry_queue: usize,
    /// Bytes of the payload arena, allocated once at start-up: where payloads longer than
    /// `payload_bytes` live, shared by all events. Not compiled in: any value in
    /// `0 ..= 1 GiB` (0: payloads longer than `payload_bytes` are rejected).
    pub payload_arena_bytes: usize,
}

impl CapacityConfig {
    /// The default preset.
    pub const DEFAULT: Self = Self {
        payload_bytes: 256,
        pool_slots: 65_536,
        lane_capacity: 16_384,
        dead_letter_capacity: 4096,
        topics: 64,
        topic_name_bytes: 32,
        alert_rules: 16,
        dedup_slots: 1_048_576,
        retry_queue: 256,
        payload_arena_bytes: 16 << 20,
    };

    /// The compiled sizes only (the arena's size is a run-time setting).
    fn compiled(&self) -> Self {
        Self {
            payload_arena_bytes: Self::DEFAULT.payload_arena_bytes,
            ..*self
        }
    }
}

impl Default for CapacityConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for CapacityConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{{ payload_bytes = {}, pool_slots = {}, lane_capacity = {}, dead_letter_capacity = {}, \
             topics = {}, topic_name_bytes = {}, alert_rules = {}, dedup_slots = {}, retry_queue = {}, \
             payload_arena_bytes = {} }}",
            self.payload_bytes,
            self.pool_slots,
            self.lane_capacity,
            self.dead_letter_capacity,
            self.topics,
            self.topic_name_bytes,
            self.alert_rules,
            self.dedup_slots,
            self.retry_queue,
            self.payload_arena_bytes
        )
    }
}

/// `[control]`: one key per field of [`ControlConfig`], and which priorities may be shed.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlSection {
    /// Priorities the control plane may shed (dead-letter `shed`) from TCP connections too.
    /// Every other priority of a TCP connection is held back instead (the producer waits);
    /// UDP, which cannot be slowed, is shed at every level. Empty by default.
    pub sheddable: Vec<String>,
    /// Fullest lane's depth (permille) entering elevated, degraded, critical, emergency.
    pub depth_permille: [u16; 4],
    /// Drop rate (permille) entering each level.
    pub drop_permille: [u16; 4],
    /// A level is left below this fraction (permille) of its thresholds.
    pub recover_permille: u16,
    /// No decision before this many events were offered.
    pub warmup_events: u64,
}

impl Default for ControlSection {
    fn default() -> Self {
        let c = ControlConfig::DEFAULT;
        Self {
            sheddable: Vec::new(),
            depth_permille: c.depth_permille,
            drop_permille: c.drop_permille,
            recover_permille: c.recover_permille,
            warmup_events: c.warmup_events,
        }
    }
}

impl ControlSection {
    /// The priorities named in `sheddable` (unknown names are config errors, checked).
    pub fn sheddable_priorities(&self) -> Vec<Priority> {
        self.sheddable
            .iter()
            .filter_map(|n| Priority::from_name(n))
            .collect()
    }

    /// The core's control configuration.
    pub const fn to_core(&self) -> ControlConfig {
        ControlConfig {
            depth_permille: self.depth_permille,
            drop_permille: self.drop_permille,
            recover_permille: self.recover_permille,
            warmup_events: self.warmup_events,
        }
    }
}

/// `[admin]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where to listen; `None` (`""` or `"off"`) disables the endpoint.
    #[serde(deserialize_with = "de_listen")]
    pub listen: Option<SocketAddr>,
    /// A deadline for each connection's whole exchange, milliseconds: the request head must
    /// be complete within it (else `408`), and the answer written.
    pub request_timeout_ms: u64,
    /// Connections open at once; when full, the oldest one still sending its request is
    /// closed (`408`) to make room, else the newcomer is answered `503`.
    pub max_connections: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            request_timeout_ms: 2000,
            max_connections: 128,
        }
    }
}

impl AdminConfig {
    /// `request_timeout_ms` as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// Parses a listen address: `""` or `"off"` is `None`, else `ip:port`.
fn de_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    let t = s.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    t.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid listen address {s:?}: expected \"ip:port\" (e.g. \"127.0.0.1:7070\" or \
             \"[::1]:7070\"; host names are not resolved), or \"off\" / \"\" to disable"
        ))
    })
}

/// Why a configuration could not be used.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type or
    /// spelling.
    Parse {
        /// The file (or `<embedded default config>`).
        origin: String,
        /// The dotted key path (e.g. `tcp.max_frame_len`), as far as it could be found.
        key: String,
        /// 1-based line.
        line: usize,
        /// 1-based column (characters).
        column: usize,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// Values out of range or contradicting each other; every problem names its key.
    Invalid {
        /// The file (or `<embedded default config>`).
        origin: String,
        /// One line per problem.
        problems: Vec<String>,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "cannot read config file {}: {source}", path.display())
            }
            ConfigError::Parse {
                origin,
                key,
                line,
                column,
                message,
            } => write!(f, "{origin}:{line}:{column}: {key}: {message}"),
            ConfigError::Invalid { origin, problems } => {
                write!(f, "{origin}: invalid configuration:")?;
                for p in problems {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Config {
    /// The embedded default (`default.toml`), parsed.
    pub fn embedded_default() -> Self {
        match Self::from_toml(DEFAULT_TOML, EMBEDDED_ORIGIN) {
            Ok(c) => c,
            // The embedded file is a constant; the config tests parse and validate it.
            Err(e) => unreachable!("the embedded default config does not parse: {e}"),
        }
    }

    /// Parses `text`; `origin` names it in errors (a path, or `<inline>`). Keys not in `text`
    /// keep their defaults. Does not check ranges: call [`validate`](Self::validate).
    ///
    /// # Errors
    /// [`ConfigError::Parse`] with the key path, line and column of the first problem.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let (line, column) = line_column(text, span.start);
            ConfigError::Parse {
                origin: origin.to_owned(),
                key: key_path_at(text, span),
                line,
                column,
                message: e.message().trim_end().to_owned(),
            }
        })
    }

    /// Reads and parses the file at `path`.
    ///
    /// # Errors
    /// [`ConfigError::Read`] if it cannot be read, else as [`from_toml`](Self::from_toml).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// [`load`](Self::load), then [`validate`](Self::validate): the config and its warnings.
    ///
    /// # Errors
    /// Any [`ConfigError`]; an invalid config's error names `path`.
    pub fn load_checked(path: &Path) -> Result<(Self, Vec<String>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg = Self::from_toml(&text, &path.display().to_string())?;
        match cfg.validate() {
            Ok(warnings) => Ok((cfg, warnings)),
            Err(ConfigError::Invalid { problems, .. }) => Err(ConfigError::Invalid {
                origin: path.display().to_string(),
                problems: problems.into_iter().map(|p| with_line(&text, p)).collect(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Checks ranges and relations between keys.
    ///
    /// Returns warnings the runner should print (a server reachable beyond loopback, keys that
    /// have no effect).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing every problem, each starting with its key and value
    /// and saying what is allowed. (Its origin is `"config"`; [`load_checked`](Self::load_checked)
    /// puts the file's path there.)
    pub fn validate(&self) -> Result<Vec<String>, ConfigError> {
        let mut v = Validator::default();
        self.check_engine(&mut v);
        self.check_tcp(&mut v);
        self.check_udp(&mut v);
        self.check_storage(&mut v);
        self.check_pipeline(&mut v);
        self.check_capacity(&mut v);
        self.check_control(&mut v);
        self.check_admin(&mut v);
        if v.problems.is_empty() {
            Ok(v.warnings)
        } else {
            Err(ConfigError::Invalid {
                origin: "config".to_owned(),
                problems: v.problems,
            })
        }
    }

    fn check_engine(&self, v: &mut Validator) {
        let e = &self.engine;
        v.range(
            "engine.ingest_cpu",
            e.ingest_cpu as u64,
            0,
            MAX_CPU as u64,
            "the affinity mask's size",
        );
        v.range(
            "engine.process_cpu",
            e.process_cpu as u64,
            0,
            MAX_CPU as u64,
            "the affinity mask's size",
        );
        let unpinned = e.overprovisioned || e.placement == PlacementMode::Unpinned;
        if !unpinned && e.ingest_cpu == e.process_cpu {
            v.problem(format!(
                "engine.process_cpu = {}: must differ from engine.ingest_cpu = {} (two pinned, \
                 busy-polling threads on one CPU starve each other); set \
                 engine.placement = \"unpinned\" to share CPUs",
                e.process_cpu, e.ingest_cpu
            ));
        }
        if e.overprovisioned && e.placement == PlacementMode::Pinned {
            v.problem(
                "engine.placement = \"pinned\" contradicts engine.overprovisioned = true (which \
                 means unpinned): remove one of them"
                    .to_owned(),
            );
        }
        v.range("engine.idle_spins", e.idle_spins.into(), 0, 100_000_000, "");
        v.range("engine.idle_yields", e.idle_yields.into(), 0, 1_000_000, "");
        v.range(
            "engine.idle_park_us",
            e.idle_park_us,
            1,
            1_000_000,
            "one park of up to 1 s",
        );
        if unpinned && e.idle != IdleKind::SpinPark {
            let why = if e.overprovisioned {
                "engine.overprovisioned = true"
            } else {
                "engine.placement = \"unpinned\""
            };
            v.warn(format!(
                "engine.idle = \"{}\" has no effect with {why}: threads do not busy-poll, they \
                 park when idle",
                e.idle.as_str()
            ));
        }
        if e.ack == AckMode::Durable && self.storage.durability == DurabilityMode::None {
            v.warn(
                "engine.ack = \"durable\" with storage.durability = \"none\": acks go out once \
                 events are written to the page cache, not synced; a crash of the machine (not \
                 only of the process) can lose acknowledged events"
                    .to_owned(),
            );
        }
    }

    fn check_tcp(&self, v: &mut Validator) {
        let t = &self.tcp;
        v.listen("tcp.listen", t.listen);
        v.range("tcp.max_producers", t.max_producers as u64, 1, 1 << 20, "");
        v.range(
            "tcp.producer_idle_ms",
            t.producer_idle_ms,
            1,
            u64::MAX >> 24,
            "",
        );
        v.range(
            "tcp.max_connections",
            t.max_connections as u64,
            1,
            MAX_TCP_CONNECTIONS as u64,
            "each connection may hold its own rate-limit key, of which this build has 4,096",
        );
        if t.max_frame_len < MIN_FRAME_LEN as u64 {
            v.problem(format!(
                "tcp.max_frame_len = {}: must be at least {MIN_FRAME_LEN} (a frame header and trailer)",
                t.max_frame_len
            ));
        } else {
            v.range(
                "tcp.max_frame_len",
                t.max_frame_len,
                0,
                MAX_FRAME_LEN_LIMIT,
                "16 MiB",
            );
        }
        if t.recv_buffer < t.max_frame_len {
            v.problem(format!(
                "tcp.recv_buffer = {}: must be at least tcp.max_frame_len = {} (a whole frame \
                 must fit)",
                t.recv_buffer, t.max_frame_len
            ));
        }
        v.range("tcp.recv_buffer", t.recv_buffer, 0, 1 << 30, "1 GiB");
        let min_send = (MIN_FRAME_LEN + ACK_BODY_LEN.max(REJECT_BODY_LEN)) as u64;
        if t.send_buffer < min_send {
            v.problem(format!(
                "tcp.send_buffer = {}: must be at least {min_send} (one ACK or REJECT frame)",
                t.send_buffer
            ));
        }
        v.range("tcp.send_buffer", t.send_buffer, 0, 1 << 30, "1 GiB");
        v.range(
            "tcp.inflight_frames",
            t.inflight_frames as u64,
            1,
            1 << 24,
            "",
        );
        let per_frame = t.max_events_per_frame();
        if (t.inflight_events as u64) < per_frame.max(1) {
            v.problem(format!(
                "tcp.inflight_events = {}: must be at least {} (the events one frame of \
                 tcp.max_frame_len = {} bytes can carry), or such a frame could never be accepted",
                t.inflight_events,
                per_frame.max(1),
                t.max_frame_len
            ));
        }
        v.range(
            "tcp.inflight_events",
            t.inflight_events as u64,
            1,
            1 << 32,
            "",
        );
        v.range(
            "tcp.max_rejects",
            t.max_rejects.into(),
            1,
            u32::MAX.into(),
            "",
        );
        v.range(
            "tcp.idle_timeout_ms",
            t.idle_timeout_ms,
            1,
            7 * 24 * 3_600_000,
            "a week",
        );
        v.range(
            "tcp.stall_timeout_ms",
            t.stall_timeout_ms,
            1,
            7 * 24 * 3_600_000,
            "a week",
        );
        v.range(
            "tcp.frame_timeout_ms",
            t.frame_timeout_ms,
            0,
            7 * 24 * 3_600_000,
            "a week; 0 = no limit",
        );
        v.range(
            "tcp.max_connections_per_ip",
            t.max_connections_per_ip as u64,
            1,
            MAX_TCP_CONNECTIONS as u64,
            "",
        );

        if let (Some(tcp), Some(admin)) = (t.listen, self.admin.listen) {
            if tcp == admin && tcp.port() != 0 {
                v.problem(format!(
                    "admin.listen = \"{admin}\": the same address as tcp.listen; give one of \
                     them another port"
                ));
            }
        }
    }

    fn check_udp(&self, v: &mut Validator) {
        let u = &self.udp;
        v.listen("udp.listen", u.listen);
        v.range(
            "udp.batch",
            u.batch as u64,
            1,
            1024,
            "UIO_MAXIOV, the most recvmmsg takes",
        );
        v.range(
            "udp.max_datagram",
            u.max_datagram as u64,
            MIN_FRAME_LEN as u64,
            MAX_UDP_DATAGRAM as u64,
            "the largest UDP payload",
        );
        if self.tcp.listen.is_none() && u.listen.is_none() {
            v.warn("tcp.listen and udp.listen are both off: the engine takes no input".to_owned());
        }
    }

    fn check_storage(&self, v: &mut Validator) {
        let s = &self.storage;
        if s.dir.as_os_str().is_empty() {
            v.problem(
                "storage.dir = \"\": must name a directory (e.g. \"./pinstream-data\")".to_owned(),
            );
        }
        v.range("storage.interval_ms", s.interval_ms, 1, 60_000, "a minute");
        v.range("storage.interval_bytes", s.interval_bytes, 1, 1 << 40, "");
        v.range(
            "storage.segment_bytes",
            s.segment_bytes,
            1 << 20,
            1 << 40,
            "1 TiB",
        );
        if s.write_buffer_bytes > s.segment_bytes {
            v.problem(format!(
                "storage.write_buffer_bytes = {}: must be at most storage.segment_bytes = {}",
                s.write_buffer_bytes, s.segment_bytes
            ));
        }
        v.range(
            "storage.write_buffer_bytes",
            s.write_buffer_bytes,
            4096,
            1 << 30,
            "1 GiB",
        );
        if s.index_interval_bytes == 0 || s.index_interval_bytes > s.segment_bytes {
            v.problem(format!(
                "storage.index_interval_bytes = {}: must be 1 ..= storage.segment_bytes = {}",
                s.index_interval_bytes, s.segment_bytes
            ));
        }
        if s.retention_bytes != 0 && s.retention_bytes < s.segment_bytes {
            v.problem(format!(
                "storage.retention_bytes = {}: must be 0 (keep everything) or at least \
                 storage.segment_bytes = {} (retention removes whole segments)",
                s.retention_bytes, s.segment_bytes
            ));
        }
        v.range(
            "storage.retention_hours",
            s.retention_hours,
            0,
            1_000_000,
            "",
        );
        if s.file_mode().is_none() {
            v.problem(format!(
                "storage.mode = {:?}: must be an octal file mode within 0666 that gives the \
                 owner read and write, e.g. \"0600\" (the default: owner only) or \"0640\" \
                 (group may read)",
                s.mode
            ));
        }
    }

    fn check_pipeline(&self, v: &mut Validator) {
        let p = &self.pipeline;
        let cap = &self.capacity;
        if p.topics.is_empty() || p.topics.len() > cap.topics {
            v.problem(format!(
                "pipeline.topics has {} names: must have 1 ..= {} (capacity.topics)",
                p.topics.len(),
                cap.topics
            ));
        }
        for (i, name) in p.topics.iter().enumerate() {
            if name.is_empty() || name.len() > cap.topic_name_bytes {
                v.problem(format!(
                    "pipeline.topics[{i}] = {name:?}: must be 1 ..= {} bytes \
                     (capacity.topic_name_bytes)",
                    cap.topic_name_bytes
                ));
            } else if name.chars().any(char::is_control) {
                v.problem(format!(
                    "pipeline.topics[{i}] = {name:?}: must not contain control characters"
                ));
            }
            if p.topics[..i].contains(name) {
                v.problem(format!("pipeline.topics[{i}] = {name:?}: listed twice"));
            }
        }
        if p.rate_per_source > 0 && p.burst_per_source == 0 {
            v.problem(format!(
                "pipeline.burst_per_source = 0: must be at least 1 when pipeline.rate_per_source \
                 = {} (a bucket of depth 0 admits nothing)",
                p.rate_per_source
            ));
        }
        if p.rate_per_source == 0 && p.burst_per_source != 0 {
            v.warn(format!(
                "pipeline.burst_per_source = {} has no effect: pipeline.rate_per_source = 0 \
                 means unlimited",
                p.burst_per_source
            ));
        }
        v.range(
            "pipeline.dedup_window_ms",
            p.dedup_window_ms,
            1,
            86_400_000,
            "a day",
        );
        v.range(
            "pipeline.aggregate_window_ms",
            p.aggregate_window_ms,
            1,
            3_600_000,
            "an hour",
        );
        v.range(
            "pipeline.retry_attempts",
            p.retry_attempts.into(),
            1,
            1000,
            "",
        );
        v.range(
            "pipeline.retry_max_backoff_us",
            p.retry_max_backoff_us,
            0,
            60_000_000,
            "a minute",
        );
        if p.retry_backoff_us > p.retry_max_backoff_us {
            v.problem(format!(
                "pipeline.retry_backoff_us = {}: must be at most pipeline.retry_max_backoff_us = {}",
                p.retry_backoff_us, p.retry_max_backoff_us
            ));
        }
        if p.budget == 0 || p.budget > cap.lane_capacity {
            v.problem(format!(
                "pipeline.budget = {}: must be 1 ..= capacity.lane_capacity = {}",
                p.budget, cap.lane_capacity
            ));
        }
        if p.alert_rules.len() > cap.alert_rules {
            v.problem(format!(
                "pipeline.alert_rules has {} rules: at most {} (capacity.alert_rules)",
                p.alert_rules.len(),
                cap.alert_rules
            ));
        }
        for (i, rule) in p.alert_rules.iter().enumerate() {
            if p.topic_id(&rule.topic).is_none() {
                v.problem(format!(
                    "pipeline.alert_rules[{i}].topic = {:?}: not in pipeline.topics {:?}",
                    rule.topic, p.topics
                ));
            }
        }
    }

    fn check_capacity(&self, v: &mut Validator) {
        let arena = self.capacity.payload_arena_bytes;
        if arena > pinstream_core::arena::MAX_REGION {
            v.problem(format!(
                "capacity.payload_arena_bytes = {arena}: must be 0 ..= {} (1 GiB)",
                pinstream_core::arena::MAX_REGION
            ));
        }
        if !CAPACITY_PRESETS
            .iter()
            .any(|p| p.compiled() == self.capacity.compiled())
        {
            let mut msg = format!(
                "[capacity] = {}: these sizes are compiled into this build (const generics) and \
                 must equal one of its presets:",
                self.capacity
            );
            for p in CAPACITY_PRESETS {
                msg.push_str(&format!("\n      {p}"));
            }
            v.problem(msg);
        }
    }

    fn check_control(&self, v: &mut Validator) {
        let c = &self.control;
        for name in &c.sheddable {
            if Priority::from_name(name).is_none() {
                v.problem(format!(
                    "control.sheddable: {name:?} is not a priority: one of critical, high, \
                     medium, low, batch"
                ));
            }
        }
        for (key, values) in [
            ("control.depth_permille", c.depth_permille),
            ("control.drop_permille", c.drop_permille),
        ] {
            if values.iter().any(|&x| x > 1000) {
                v.problem(format!(
                    "{key} = {values:?}: each must be at most 1000 (100 %)"
                ));
            } else if values.windows(2).any(|w| w[1] < w[0]) {
                v.problem(format!(
                    "{key} = {values:?}: must not decrease (elevated, degraded, critical, \
                     emergency)"
                ));
            }
        }
        v.range(
            "control.recover_permille",
            c.recover_permille.into(),
            0,
            1000,
            "1000 disables hysteresis",
        );
    }

    fn check_admin(&self, v: &mut Validator) {
        let a = &self.admin;
        v.listen("admin.listen", a.listen);
        v.range(
            "admin.request_timeout_ms",
            a.request_timeout_ms,
            10,
            60_000,
            "a minute",
        );
        v.range(
            "admin.max_connections",
            a.max_connections as u64,
            1,
            1024,
            "",
        );
    }
}

/// Collects problems and warnings.
#[derive(Default)]
struct Validator {
    problems: Vec<String>,
    warnings: Vec<String>,
}

impl Validator {
    fn problem(&mut self, p: String) {
        self.problems.push(p);
    }

    fn warn(&mut self, w: String) {
        self.warnings.push(w);
    }

    /// `key = value: must be lo ..= hi` (with `why` after the upper bound when given).
    fn range(&mut self, key: &str, value: u64, lo: u64, hi: u64, why: &str) {
        if value < lo || value > hi {
            let why = if why.is_empty() {
                String::new()
            } else {
                format!(" ({why})")
            };
            self.problem(format!("{key} = {value}: must be {lo} ..= {hi}{why}"));
        }
    }

    fn listen(&mut self, key: &str, addr: Option<SocketAddr>) {
        if let Some(a) = addr {
            if !a.ip().is_loopback() {
                self.warn(format!(
                    "{key} = \"{a}\" is not a loopback address: the server is reachable from \
                     other hosts, with no authentication"
                ));
            }
        }
    }
}

/// `problem` with ` (line N)` appended when a key it names (the first one the file sets)
/// is set on line N of `src`.
fn with_line(src: &str, problem: String) -> String {
    let line = problem
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '['))
        .map(|w| w.split('[').next().unwrap_or(w))
        .filter(|w| w.contains('.') && !w.starts_with('.') && !w.ends_with('.'))
        .find_map(|key| line_of_key(src, key));
    match line {
        Some(n) => format!("{problem} (line {n})"),
        None => problem,
    }
}

/// The 1-based line that sets the dotted `key` (`tcp.max_connections`) in `src`: `name =`
/// under its table header, or the whole dotted key at the top level.
fn line_of_key(src: &str, key: &str) -> Option<usize> {
    let (table, name) = key.rsplit_once('.')?;
    let mut current = "";
    for (i, line) in src.lines().enumerate() {
        if let Some(h) = table_header(line) {
            current = h;
            continue;
        }
        let wanted = if current == table {
            name
        } else if current.is_empty() {
            key
        } else {
            continue;
        };
        let t = line.trim_start();
        if t.strip_prefix(wanted)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return Some(i + 1);
        }
    }
    None
}

/// 1-based line and column (in characters) of byte `offset` in `src`.
fn line_column(src: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(src, offset);
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The dotted key path at `span` in `src`: the enclosing `[table]` header, the key at the
/// start of the line, and the innermost key of an inline table on that line.
fn key_path_at(src: &str, span: std::ops::Range<usize>) -> String {
    let start = floor_char_boundary(src, span.start);
    let end = floor_char_boundary(src, span.end.max(start));
    let line_start = src[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = src[start..].find('\n').map_or(src.len(), |i| start + i);
    let line = &src[line_start..line_end];
    if let Some(h) = table_header(line) {
        return h.to_owned();
    }
    let header = src[..line_start]
        .lines()
        .rev()
        .find_map(table_header)
        .unwrap_or("");
    // The line up to the end of the span, plus an `=` right after it (when the span is a key).
    let mut upto = end.min(line_end);
    let rest = &src[upto..line_end];
    let trimmed = rest.trim_start();
    if trimmed.starts_with('=') {
        upto += rest.len() - trimmed.len() + 1;
    }
    let keys = keys_before_equals(&src[line_start..upto]);
    let mut parts: Vec<&str> = Vec::new();
    if !header.is_empty() {
        parts.push(header);
    }
    if let (Some(first), Some(last)) = (keys.first(), keys.last()) {
        parts.push(first);
        if keys.len() > 1 {
            parts.push(last);
        }
    }
    if parts.is_empty() {
        "(top level)".to_owned()
    } else {
        parts.join(".")
    }
}

/// `name` if `line` is a table header `[name]` or `[[name]]` (with an optional comment).
fn table_header(line: &str) -> Option<&str> {
    let t = line.trim();
    let inner = t.strip_prefix('[')?;
    let inner = inner.strip_prefix('[').unwrap_or(inner);
    let close = inner.find(']')?;
    let name = inner[..close].trim();
    let after = inner[close..].trim_start_matches(']').trim_start();
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '"' | '\'' | ' '));
    (valid_name && (after.is_empty() || after.starts_with('#'))).then_some(name)
}

/// The keys written as `key =` in `text`, outside strings, in order.
fn keys_before_equals(text: &str) -> Vec<&str> {
    let mut keys = Vec::new();
    let mut in_str: Option<char> = None;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if let Some(q) = in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' && q == '"' {
                escaped = true;
            } else if c == q {
                in_str = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => in_str = Some(c),
            '#' => break,
            '=' => {
                let before = text[..i].trim_end();
                let key_start = before
                    .rfind(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.')))
                    .map_or(0, |j| j + 1);
                let key = &before[key_start..];
                if !key.is_empty() {
                    keys.push(key);
                }
            }
            _ => {}
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths() {
        let src = "[tcp]\nmax_frame_len = 10\n[pipeline]\nalert_rules = [{ topic = \"a=b\", when = \"x\" }]\n";
        let at = |needle: &str| {
            let s = src.find(needle).unwrap();
            key_path_at(src, s..s + needle.len())
        };
        assert_eq!(at("10"), "tcp.max_frame_len");
        assert_eq!(at("max_frame_len"), "tcp.max_frame_len");
        assert_eq!(at("\"x\""), "pipeline.alert_rules.when");
        assert_eq!(at("[pipeline]"), "pipeline");
        assert_eq!(key_path_at("a = 1", 4..5), "a");
        assert_eq!(line_column("ab\ncé\nx", 7), (3, 1));
        assert_eq!(line_column("ab\ncéx", 6), (2, 3));
    }

    #[test]
    fn problems_name_the_line_of_their_key() {
        let src =
            "[engine]\nack = \"none\"\n[tcp]\n# max_connections = 1\nmax_connections  = 9000\n";
        assert_eq!(line_of_key(src, "tcp.max_connections"), Some(5));
        assert_eq!(line_of_key(src, "engine.max_connections"), None);
        assert_eq!(
            line_of_key("tcp.max_connections = 1\n", "tcp.max_connections"),
            Some(1)
        );
        assert_eq!(
            with_line(src, "tcp.max_connections = 9000: must be 1 ..= 4095".into()),
            "tcp.max_connections = 9000: must be 1 ..= 4095 (line 5)"
        );
        // The first key the file sets.
        assert_eq!(
            with_line(
                src,
                "tcp.recv_buffer = 1: must be at least tcp.max_connections".into()
            ),
            "tcp.recv_buffer = 1: must be at least tcp.max_connections (line 5)"
        );
        assert_eq!(with_line(src, "udp.batch = 0".into()), "udp.batch = 0");
    }

    #[test]
    fn headers() {
        assert_eq!(table_header("[tcp]"), Some("tcp"));
        assert_eq!(table_header("  [[a.b]] # c"), Some("a.b"));
        assert_eq!(table_header("[1, 2],"), None);
        assert_eq!(table_header("x = [1]"), None);
    }
}
