//! The engine's settings and the one place that translates the TOML config into them
//! ([`EngineConfig::from_config`]): the config's sections say what an operator writes, these
//! say what the engine runs with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pinstream_core::control::ControlConfig;
use pinstream_core::event::Priority;
use pinstream_core::process::realtime::AlertRule;
use pinstream_core::process::{BatchStore, RetryPolicy};
use pinstream_core::ratelimit::RateConfig;

use crate::config::{
    AckSetting, CapacitySection, Config, DurabilitySetting, EngineSection, IdleSetting,
    PipelineSection, StorageSection,
};
use crate::idle::IdleStrategy;
use crate::ingest::{AckMode, TcpLimits};
use crate::placement::PlacementMode;
use crate::storage::{Durability, LogConfig};

/// Where the threads run and how they wait.
#[derive(Clone, Debug)]
pub struct Placement {
    /// Whether to pin: decided at start by [`crate::placement::decide`].
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

/// Everything [`Engine::start`](super::Engine::start) needs (the runner builds it from the TOML config).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// TCP listen address (`None`: no TCP).
    pub tcp: Option<SocketAddr>,
    /// TCP limits.
    pub tcp_limits: TcpLimits,
    /// `tcp.auth`: whether a TCP connection must show a token of `http.tokens`
    /// (`[[auth.tokens]]`) in its HELLO.
    pub tcp_auth: crate::config::TcpAuth,
    /// TLS on the TCP port (`tcp.tls_*`): served by a terminator thread
    /// ([`crate::tlsport`]) that hands the ingest thread plaintext connections.
    pub tcp_tls: Option<crate::tlsport::TcpTlsSettings>,
    /// UDP listen address, datagrams per `recvmmsg`, largest datagram.
    pub udp: Option<(SocketAddr, usize, usize)>,
    /// When frames are acknowledged.
    pub ack: AckMode,
    /// The data directory: one log per lane's events, the dead-letter log and the aggregates
    /// log below it ([`LogId`](crate::storage::LogId)).
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
    /// Bytes of the payload arena (payloads longer than [`PAYLOAD`](super::PAYLOAD)), allocated and
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
    /// The consumer server (`[consumers]`); off in [`local`](Self::local).
    pub consumers: crate::consumers::ConsumerSettings,
    /// The HTTP/JSON gateway (`[http]`, `[auth]`); off in [`local`](Self::local).
    pub http: crate::gateway::HttpSettings,
    /// The gRPC gateway (`[grpc]`, on the HTTP gateway's thread); off in
    /// [`local`](Self::local).
    pub grpc: crate::gateway::GrpcSettings,
}

/// The idle strategy of [`EngineConfig::local`]: what tests and examples have always run
/// with (a 500 µs park; the config's default, [`IdleStrategy::default`], parks 50 µs).
/// Kept apart on purpose: `engine_e2e`'s `producer_sessions_answer_resends_as_duplicates`
/// fails about one run in eight with the shorter park, a race in the ingest thread's
/// session hand-over that a restructuring must not paper over by changing timing.
const LOCAL_IDLE: IdleStrategy = IdleStrategy::SpinPark {
    spins: 1_000,
    yields: 100,
    park: Duration::from_micros(500),
};

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
            tcp_auth: crate::config::TcpAuth::None,
            tcp_tls: None,
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
            payload_arena_bytes: CapacitySection::DEFAULT.payload_arena_bytes,
            control: ControlConfig::DEFAULT,
            sheddable: Vec::new(),
            placement: Placement {
                mode: PlacementMode::Auto,
                overprovisioned: true,
                ingest_cpu: 0,
                process_cpu: 1,
                idle: LOCAL_IDLE,
                numa: false,
                mlock: false,
            },
            thread_hook: None,
            admin_connections: 0,
            consumers: crate::consumers::ConsumerSettings::OFF,
            http: crate::gateway::HttpSettings::off(),
            grpc: crate::gateway::GrpcSettings::off(),
        }
    }

    /// The engine's settings from a validated TOML [`Config`].
    ///
    /// # Errors
    /// A value this build cannot run with (e.g. more connections than its rate-limiter
    /// slots, a rate limit the core refuses), named by its key.
    pub fn from_config(c: &Config) -> Result<Self, String> {
        let ms = Duration::from_millis;
        Ok(Self {
            tcp: c.tcp.listen,
            tcp_limits: TcpLimits::from_config(&c.tcp),
            tcp_auth: c.tcp.auth,
            tcp_tls: crate::tlsport::TcpTlsSettings::from_config(&c.tcp),
            udp: c.udp.listen.map(|a| (a, c.udp.batch, c.udp.max_datagram)),
            ack: ack_mode(c.engine.ack),
            data_dir: c.storage.dir.clone(),
            log: log_config(&c.storage)?,
            topics: c.pipeline.topics.clone(),
            rate: rate_config(&c.pipeline)?,
            dedup_window: ms(c.pipeline.dedup_window_ms),
            aggregate_window: ms(c.pipeline.aggregate_window_ms),
            batch_store: c.pipeline.batch_store.to_core(),
            retry: c.pipeline.retry_policy(),
            alerts: alert_rules(&c.pipeline)?,
            budget: c.pipeline.budget,
            payload_arena_bytes: c.capacity.payload_arena_bytes,
            control: c.control.to_core(),
            sheddable: c.control.sheddable_priorities(),
            placement: Placement::from_config(&c.engine),
            thread_hook: None,
            admin_connections: if c.admin.listen.is_some() {
                c.admin.max_connections
            } else {
                0
            },
            consumers: c.consumers.to_settings(),
            http: crate::gateway::HttpSettings::from_config(c),
            grpc: crate::gateway::GrpcSettings::from_config(c),
        })
    }
}

impl Placement {
    /// The threads' placement from the config's `[engine]` section.
    fn from_config(e: &EngineSection) -> Self {
        Placement {
            mode: e.placement,
            overprovisioned: e.overprovisioned,
            ingest_cpu: e.ingest_cpu,
            process_cpu: e.process_cpu,
            idle: match e.idle {
                IdleSetting::Spin => IdleStrategy::Spin,
                IdleSetting::SpinYield => IdleStrategy::SpinYield {
                    spins: e.idle_spins,
                },
                IdleSetting::SpinPark => IdleStrategy::SpinPark {
                    spins: e.idle_spins,
                    yields: e.idle_yields,
                    park: Duration::from_micros(e.idle_park_us),
                },
            },
            numa: e.numa,
            mlock: e.mlock,
        }
    }
}

/// When frames are acknowledged, from `engine.ack`.
fn ack_mode(ack: AckSetting) -> AckMode {
    match ack {
        AckSetting::None => AckMode::None,
        AckSetting::Accepted => AckMode::Accepted,
        AckSetting::Durable => AckMode::Durable,
    }
}

/// The logs' settings from `[storage]` (the directory is set per log at start).
fn log_config(s: &StorageSection) -> Result<LogConfig, String> {
    let mut log = LogConfig::new(s.dir.clone());
    log.segment_bytes = s.segment_bytes;
    log.index_interval_bytes = u32::try_from(s.index_interval_bytes)
        .map_err(|_| "storage.index_interval_bytes is above 4 GiB".to_string())?;
    log.write_buffer_bytes = usize::try_from(s.write_buffer_bytes)
        .map_err(|_| "storage.write_buffer_bytes does not fit this machine".to_string())?;
    log.retention_bytes = (s.retention_bytes != 0).then_some(s.retention_bytes);
    log.retention_age = (s.retention_hours != 0)
        .then(|| Duration::from_secs(s.retention_hours.saturating_mul(3600)));
    log.durability = match s.durability {
        DurabilitySetting::None => Durability::None,
        DurabilitySetting::Interval => Durability::Interval {
            max_delay: Duration::from_millis(s.interval_ms),
            max_bytes: s.interval_bytes,
        },
        DurabilitySetting::Always => Durability::Always,
    };
    Ok(log)
}

/// The per-source rate limit from `pipeline.rate_per_source` and `burst_per_source`.
fn rate_config(p: &PipelineSection) -> Result<RateConfig, String> {
    if p.rate_per_source == 0 {
        return Ok(RateConfig::UNLIMITED);
    }
    let burst = u32::try_from(p.burst_per_source).unwrap_or(u32::MAX);
    RateConfig::new(p.rate_per_source, 1_000_000_000, burst).map_err(|e| {
        format!(
            "pipeline.rate_per_source = {} / burst_per_source = {}: {e:?}",
            p.rate_per_source, p.burst_per_source
        )
    })
}

/// The realtime lane's alert rules from `pipeline.alert_rules`, topics resolved to ids.
fn alert_rules(p: &PipelineSection) -> Result<Vec<AlertRule>, String> {
    p.alert_rules
        .iter()
        .map(|rule| {
            let topic = p.topic_id(&rule.topic).ok_or_else(|| {
                format!(
                    "pipeline.alert_rules: topic {:?} is not in pipeline.topics",
                    rule.topic
                )
            })?;
            Ok(AlertRule {
                topic,
                condition: rule.condition(),
            })
        })
        .collect()
}
