//! What the engine's threads publish: [`EngineStats`], read by the handle and the admin
//! endpoint, its Prometheus rendering and its health, and the one-line summary of what
//! start-up recovery found.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pinstream_core::accounting::{Accounting, StageCounters};
use pinstream_core::control::ControlSignal;
use pinstream_core::event::Lane;

use crate::admin::{AdminSource, Health, HealthValue};
use crate::disk::DiskSpace;
use crate::idle::ThreadLoad;
use crate::ingest::Shared;
use crate::prom::{self, MetricType, PromWriter};
use crate::stats::{Gauge, HostCounters, SharedLatency};
use crate::storage::RecoveryReport;

use super::capacity;

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
    pub in_flight: Gauge,
    /// The dedup table's effective window over the last second, in nanoseconds.
    pub dedup_effective_window_ns: Gauge,
    /// Control-plane level changes.
    pub control_transitions: Gauge,
    /// Events waiting in each lane (by `Lane::index`), as the storage thread last saw them.
    pub lane_depths: [Gauge; 3],
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
    /// The logs' high watermarks (published by the storage thread) and the consumer
    /// server's counters.
    pub consumers: Arc<crate::consumers::ConsumerShared>,
    /// The HTTP gateway's counters (zero while it is off).
    pub http: Arc<crate::gateway::GatewayCounters>,
    /// The gRPC gateway's counters (zero while it is off).
    pub grpc: Arc<crate::gateway::GrpcCounters>,
}

impl EngineStats {
    /// Everything at zero, before the threads start: `recovery` is what start-up recovery
    /// found ([`recovery_summary`]), `data_dir` the directory whose free space is reported.
    pub(super) fn new(
        recovery: String,
        data_dir: PathBuf,
        consumers: Arc<crate::consumers::ConsumerShared>,
    ) -> Self {
        Self {
            shared: Shared::new(),
            host: HostCounters::new(),
            dispatch: StageCounters::new(),
            process: StageCounters::new(),
            control: ControlSignal::new(),
            ingest_load: Arc::new(ThreadLoad::new()),
            storage_load: Arc::new(ThreadLoad::new()),
            placement: Mutex::new(Vec::new()),
            storage_error: Mutex::new(None),
            recovery,
            in_flight: Gauge::new(),
            dedup_effective_window_ns: Gauge::new(),
            control_transitions: Gauge::new(),
            lane_depths: [const { Gauge::new() }; 3],
            dispatch_latency: Arc::new(SharedLatency::new()),
            commit_latency: Arc::new(SharedLatency::new()),
            durable_latency: Arc::new(SharedLatency::new()),
            ack_latency: Arc::new(SharedLatency::new()),
            data_dir,
            consumers,
            http: Arc::new(crate::gateway::GatewayCounters::default()),
            grpc: Arc::new(crate::gateway::GrpcCounters::default()),
        }
    }

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
                ("dispatch", &self.dispatch_latency.buckets()),
                ("ack", &self.ack_latency.buckets()),
                ("commit", &self.commit_latency.buckets()),
                ("durable", &self.durable_latency.buckets()),
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
        self.http.render(&mut w);
        self.grpc.render(&mut w);
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
        w.family(
            "pinstream_lane_capacity",
            MetricType::Gauge,
            "Events each lane holds at most (this build's size; a lane at capacity makes producers wait).",
        );
        for lane in Lane::ALL {
            w.sample_u64(
                "pinstream_lane_capacity",
                &[("lane", lane.name())],
                capacity::LANE as u64,
            );
        }
        w.single(
            "pinstream_pool_slots",
            MetricType::Gauge,
            "Event slots in the pool (this build's size), shared by the lanes.",
            capacity::POOL as f64,
        );
        w.single(
            "pinstream_dead_letter_capacity",
            MetricType::Gauge,
            "Dead letters the ring between the pipeline and the dead-letter log holds at most.",
            capacity::DEAD_LETTERS as f64,
        );
        crate::consumers::write_metrics(&mut w, &self.consumers.stats, &self.consumers.marks);
        prom::write_process(&mut w, self.shared.start_wall);
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
pub(super) fn recovery_summary(reports: &[RecoveryReport]) -> String {
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
