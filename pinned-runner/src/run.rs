//! `pinstream run`: the engine from the command line.
//!
//! Loads the config (the embedded default, or `--config FILE`), starts the engine and its
//! admin endpoint, prints where it listens and what it pinned, then one status line per
//! second. SIGINT or SIGTERM stops it cleanly: intake stops, the lanes drain, the logs are
//! synced, the last acknowledgements go out, exit 0. A second signal exits at once (130).
//!
//! When storage fails (a full disk, an I/O error) the engine stays up for the operator: it
//! takes no more input (connections are closed and refused), `/health` answers 503 with the
//! error, the status line says `STORAGE FAILED`; a signal then stops it with exit 1.
//! Everything acknowledged before the failure is in the logs.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pinstream_core::accounting::Accounting;
use pinstream_core::event::Lane;
use pinstream_host::admin::{self, AdminHandle, AdminOptions, AdminServer};
use pinstream_host::config::{Config, ConsumerAuth, DEFAULT_TOML, TcpAuth};
use pinstream_host::disk::{self, DiskSpace};
use pinstream_host::engine::{Engine, EngineConfig, EngineError, EngineHandle, EngineStats};
use pinstream_host::pin;
use pinstream_host::placement::{self, PlacementRequest};
use pinstream_host::stats::{LatencySummary, LatencyWindow};
use pinstream_host::storage::StorageError;
use pinstream_host::topology::Topology;

use crate::Failure;
use crate::bridge::{self, Bridges, WithBridges};

/// `pinstream run` flags.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// TOML config file. Every key is optional; without a file the embedded default is used
    /// (print it with --print-default-config): loopback addresses 127.0.0.1:7070 (TCP),
    /// :7071 (UDP), :9090 (admin), data in ./pinstream-data, durable acks, 1 ms group commit.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the embedded default config (every key, with its meaning) and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Seconds between status lines on stdout; 0 turns them off.
    #[arg(long, default_value_t = 1, value_name = "SECS")]
    status_every: u64,
}

impl Default for RunArgs {
    fn default() -> Self {
        Self {
            config: None,
            print_default_config: false,
            status_every: 1,
        }
    }
}

/// Exit code after a second signal.
const FORCED_EXIT: i32 = 130;

/// Logs a start-up or stop line (`crate::logging`: stdout in text, JSON with --log-format
/// json); a closed stdout (`pinstream run | head`) stops the printing, never the engine.
macro_rules! say {
    ($($arg:tt)*) => {
        tracing::info!($($arg)*)
    };
}

/// Runs the engine until a signal.
///
/// # Errors
/// A bad config (exit 2), an engine that cannot start (exit 3), a failure while running
/// (exit 1).
pub fn main(args: &RunArgs) -> Result<(), Failure> {
    if args.print_default_config {
        print!("{DEFAULT_TOML}");
        return Ok(());
    }
    let (config, warnings) = match &args.config {
        Some(path) => Config::load_checked(path).map_err(|e| Failure::usage(e.to_string()))?,
        None => {
            let c = Config::embedded_default();
            let w = c.validate().map_err(|e| Failure::usage(e.to_string()))?;
            (c, w)
        }
    };
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let mut engine_cfg = EngineConfig::from_config(&config).map_err(Failure::usage)?;
    let origin = args.config.as_ref().map_or_else(
        || "the embedded default config".to_string(),
        |p| p.display().to_string(),
    );
    say!("pinstream {} on {origin}", env!("CARGO_PKG_VERSION"));

    // Where the threads run, decided as `pinstream host-check` decides it.
    place(&mut engine_cfg, args.config.is_none())?;

    // Files and directories the engine creates get `storage.mode` (validated above).
    if let Some(mask) = config.storage.umask() {
        pinstream_host::storage::set_process_umask(mask);
    }
    let signals = Signals::install()?;
    let handle = Engine::start(engine_cfg.clone()).map_err(|e| match e {
        EngineError::Socket { .. } => Failure::start(format!(
            "{e} (is another pinstream or another program using it? change tcp.listen / udp.listen / consumers.listen)"
        )),
        // Another engine holds storage.dir: the message names the directory and its pid. A
        // record of a newer format: the message names the file and byte and what to do.
        EngineError::Storage(StorageError::Locked { .. } | StorageError::UnknownFormat { .. }) => {
            Failure::start(e.to_string())
        }
        EngineError::Storage(_) => Failure::start(format!(
            "{e} (check that storage.dir = {} is writable)",
            engine_cfg.data_dir.display()
        )),
        other => Failure::start(other.to_string()),
    })?;
    let stats = Arc::clone(handle.stats());
    // `/metrics` shows the bridges' families too, once they run.
    let with_bridges = Arc::new(WithBridges {
        engine: stats.clone(),
        bridges: std::sync::OnceLock::new(),
    });
    let admin = match config.admin.listen {
        Some(addr) => {
            let source: Arc<dyn admin::AdminSource> = with_bridges.clone();
            match AdminServer::new(AdminOptions::from_config(&config.admin)).start(addr, source) {
                Ok(a) => Some(a),
                Err(e) => {
                    let _ = handle.stop();
                    return Err(Failure::start(format!(
                        "cannot serve the admin endpoint on {addr}: {e} (change admin.listen, or \"off\")"
                    )));
                }
            }
        }
        None => None,
    };

    report_start(&handle, admin.as_ref(), &config, &engine_cfg, &stats);
    // The bridges read the engine like any consumer, on their own unpinned threads, once it
    // serves.
    let mut bridges = match Bridges::start(
        &config,
        handle
            .consumer_addr()
            .unwrap_or_else(|| bridge::default_engine_addr(&config)),
    ) {
        Ok(b) => b,
        Err(f) => {
            if let Some(a) = admin {
                a.stop();
            }
            let _ = handle.stop();
            return Err(f);
        }
    };
    if bridges.len() > 0 {
        say!("{} bridge(s) to NATS JetStream started", bridges.len());
    }
    let _ = with_bridges.bridges.set(bridges.metrics_source());
    let failed = wait_for_stop(args, &signals, &stats, &mut bridges);
    // The bridges first: they commit what JetStream acknowledged while the engine still
    // serves.
    bridges.stop();
    match &failed {
        Some(_) => tracing::error!("stopping after the storage failure"),
        None => say!("stopping: intake closed, draining the lanes, syncing the logs"),
    }
    if let Some(a) = admin {
        a.stop();
    }
    let result = stop_and_report(handle, &stats);
    match (failed, result) {
        (Some(e), _) => Err(Failure::runtime(format!(
            "storage failed: {e} (acknowledged events are safe; restart to recover the logs)"
        ))),
        (None, Err(e)) => Err(Failure::runtime(e.to_string())),
        (None, Ok(())) => Ok(()),
    }
}

/// Chooses the engine's CPUs with [`placement::resolve`] (with the embedded default, CPUs 0
/// and 1 move to the first two this process may use when 0 and 1 are not both among them:
/// taskset, a container's cpuset). A refused plan stops here, typed.
fn place(engine_cfg: &mut EngineConfig, default_config: bool) -> Result<(), Failure> {
    let p = &engine_cfg.placement;
    let request = PlacementRequest {
        mode: p.mode,
        overprovisioned: p.overprovisioned,
        cpus: [p.ingest_cpu, p.process_cpu],
        default_config,
    };
    let topology =
        Topology::live().map_err(|e| Failure::start(format!("invalid engine settings: {e}")))?;
    let allowed = pin::current_affinity().ok();
    let resolved = placement::resolve(&request, allowed.as_deref(), &topology).map_err(|e| {
        Failure::start(format!(
            "{e} (or set engine.placement = \"unpinned\" to run without pinning)"
        ))
    })?;
    if let Some(note) = request.moved_note(resolved.cpus) {
        say!("{note}");
    }
    [
        engine_cfg.placement.ingest_cpu,
        engine_cfg.placement.process_cpu,
    ] = resolved.cpus;
    Ok(())
}

/// Prints where the engine listens, what it recovered and where its threads run.
fn report_start(
    handle: &EngineHandle,
    admin: Option<&AdminHandle>,
    config: &Config,
    engine_cfg: &EngineConfig,
    stats: &EngineStats,
) {
    let show =
        |a: Option<std::net::SocketAddr>| a.map_or_else(|| "off".to_string(), |a| a.to_string());
    // One stable line for scripts and tests, then the details.
    say!(
        "listening tcp={} udp={} admin={} consumers={} http={} grpc={}",
        show(handle.started.tcp),
        show(handle.started.udp),
        show(admin.map(AdminHandle::local_addr)),
        show(handle.consumer_addr()),
        show(handle.http_addr()),
        show(handle.grpc_addr())
    );
    if handle.grpc_addr().is_some() {
        say!(
            "grpc gateway: pinstream.v1.Ingest (Publish, PublishStream), health, reflection, {}{}",
            if config.auth.tokens.is_empty() {
                "no authentication ([[auth.tokens]] is empty)".to_string()
            } else {
                format!("{} token(s)", config.auth.tokens.len())
            },
            if config.grpc.tls_cert.is_some() {
                ", TLS"
            } else {
                ""
            }
        );
    }
    if handle.http_addr().is_some() {
        say!(
            "http gateway: POST /v1/events, {}",
            if config.auth.tokens.is_empty() {
                "no authentication ([[auth.tokens]] is empty)".to_string()
            } else {
                format!("{} token(s)", config.auth.tokens.len())
            }
        );
    }
    if handle.started.tcp.is_some() {
        say!(
            "tcp auth: {}",
            match config.tcp.auth {
                TcpAuth::Token => format!(
                    "token ({} token(s); a HELLO without a known one is refused)",
                    config.auth.tokens.len()
                ),
                TcpAuth::None => "none (any client may send)".to_string(),
            }
        );
    }
    if handle.started.consumers.is_some() {
        say!(
            "consumer auth: {}",
            match config.consumers.auth {
                ConsumerAuth::Token => format!(
                    "token ({} token(s); a HELLO without a known one is refused; a token reads \
                     every log)",
                    config.auth.tokens.len()
                ),
                ConsumerAuth::None => "none (anyone who reaches it may read)".to_string(),
            }
        );
    }
    for w in &handle.started.consumer_warnings {
        tracing::warn!("{w}");
    }
    say!(
        "data {} (durability {}, acks {}), {} topic(s)",
        engine_cfg.data_dir.display(),
        config.storage.durability.as_str(),
        config.engine.ack.as_str(),
        engine_cfg.topics.len()
    );
    say!("{}", handle.started.fds);
    let tcp = &engine_cfg.tcp_limits;
    if handle.started.tcp.is_some() {
        say!(
            "connection buffers: up to {} bytes = tcp.max_connections {} x {} bytes \
             (recv_buffer + send_buffer + the in-flight window), {:.1} MiB; a slot's buffers \
             are allocated at its first connection and kept for the next",
            tcp.buffer_bytes(),
            tcp.max_connections,
            tcp.slot_bytes(),
            tcp.buffer_bytes() as f64 / f64::from(1 << 20)
        );
    }
    for report in &handle.started.recovery {
        say!("{report}");
    }
    // The logs keep everything unless bounded: say so when the disk is small (the rule is
    // `disk::DiskSpace::is_low`).
    let space = DiskSpace::of(&engine_cfg.data_dir);
    match space
        .map(|s| disk::low_space_warning(&engine_cfg.data_dir, config.storage.retention_bytes, s))
    {
        Ok(Some(w)) => tracing::warn!("{w}"),
        Ok(None) => {}
        Err(e) => tracing::warn!(
            "cannot read the free space of storage.dir {}: {e}",
            engine_cfg.data_dir.display()
        ),
    }
    report_restored(handle);
    // One line: pinned or not, and why (`pinstream host-check` prints the same line).
    say!("placement decision: {}", handle.started.decision);
    for note in &handle.started.placement {
        say!("placement: {note}");
    }
    // The threads report their pinning as they start (one note each).
    let until = Instant::now() + Duration::from_secs(5);
    while stats.placement.lock().map_or(0, |n| n.len()) < 2 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    for note in stats
        .placement
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        say!("placement: {note}");
    }
}

/// Prints what the engine restored from its logs: the dedup window, producer sessions.
fn report_restored(handle: &EngineHandle) {
    if let Some(r) = handle.started.dedup_refill {
        say!(
            "dedup window refilled: {} id(s) stored within the last pipeline.dedup_window_ms are duplicates again ({} record(s) of {} segment(s) read in {:.2} s)",
            r.ids,
            r.scanned,
            r.segments,
            r.took.as_secs_f64()
        );
    }
    if let Some(r) = &handle.started.sessions {
        say!(
            "producer sessions restored: {} producer(s), {} event(s) held of frames in flight at the last stop ({} record(s) read in {:.2} s){}",
            r.producers,
            r.held,
            r.scanned,
            r.took.as_secs_f64(),
            if r.left_out > 0 {
                format!(
                    "; {} more did not fit tcp.max_producers and start again from seq 0",
                    r.left_out
                )
            } else {
                String::new()
            }
        );
        if r.forgotten > 0 {
            say!(
                "producer sessions: {} producer(s) had too many events in flight to remember; \
                 resent, those frames may be stored twice",
                r.forgotten
            );
        }
        for log in &r.unreadable {
            say!(
                "producer sessions: the scan of {log} stopped at a record it could not read; \
                 resends of what it did not see may be stored twice (`pinstream log verify`)"
            );
        }
    }
}

/// Prints a status line every `--status-every` seconds until a signal; reports a storage
/// failure once. Returns the failure, if any.
fn wait_for_stop(
    args: &RunArgs,
    signals: &Signals,
    stats: &EngineStats,
    bridges: &mut Bridges,
) -> Option<String> {
    let mut status = Status::new(stats);
    let every = Duration::from_secs(args.status_every);
    let mut next = Instant::now() + every;
    let mut failed: Option<String> = None;
    while !signals.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        for f in bridges.failures() {
            tracing::error!("{f} (the engine goes on)");
        }
        for e in bridges.new_errors() {
            tracing::error!("{e}");
        }
        if args.status_every != 0 && Instant::now() >= next {
            next += every;
            crate::logging::status(&format!("{}{}", status.line(stats), bridges.status()));
        }
        let error = stats
            .storage_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let (Some(e), None) = (error, &failed) {
            // Stay up: health says 503, the operator decides (a signal stops the engine).
            tracing::error!(
                "storage failed: {e}; intake closed, /health answers 503, nothing \
                 acknowledged is lost; stop with SIGTERM (exit 1), free the space or fix the \
                 disk, restart to recover the logs"
            );
            failed = Some(e);
        }
    }
    failed
}

/// Stops the engine (intake closed, lanes drained, logs synced) and prints the totals.
fn stop_and_report(handle: EngineHandle, stats: &EngineStats) -> Result<(), EngineError> {
    let t0 = Instant::now();
    let result = handle.stop();
    // Stored and dead-lettered count what is in the logs: what storage lost when it failed
    // is counted apart (taken in, never acknowledged).
    let lost_events = stats.host.storage_lost_events.get();
    let lost_dead = stats.host.storage_lost_dead_letters.get();
    let lost = if lost_events + lost_dead > 0 {
        format!(
            ", {} not in the logs (storage failed; never acknowledged)",
            lost_events + lost_dead
        )
    } else {
        String::new()
    };
    say!(
        "stopped in {:.1} s: {} events in, {} stored, {} dead-lettered, {} rejected{lost}",
        t0.elapsed().as_secs_f64(),
        stats.dispatch.ingested.get(),
        stats.process.stored.get().saturating_sub(lost_events),
        books(stats).dead_lettered.saturating_sub(lost_dead),
        books(stats).rejected
    );
    result
}

/// SIGINT / SIGTERM: the first sets `stop`, the second exits at once.
struct Signals {
    stop: Arc<AtomicBool>,
}

impl Signals {
    fn install() -> Result<Self, Failure> {
        let stop = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // Order matters: the conditional exit sees the flag as it was before this
            // signal, so only a second signal exits.
            signal_hook::flag::register_conditional_shutdown(
                signal,
                FORCED_EXIT,
                Arc::clone(&stop),
            )
            .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&stop)))
            .map_err(|e| Failure::start(format!("cannot install the signal handlers: {e}")))?;
        }
        Ok(Self { stop })
    }
}

/// Outcomes summed over the dispatcher and the processors.
fn books(stats: &EngineStats) -> Accounting {
    Accounting::of(&[&stats.dispatch, &stats.process])
}

/// The live status line: rates and ack latency percentiles over the last interval, and the
/// free space of the data directory's file system with the time to fill it at the last
/// interval's write rate.
struct Status {
    started: Instant,
    last: Instant,
    ingested: u64,
    stored: u64,
    dead: u64,
    /// Bytes written to the logs.
    written: u64,
    acks: LatencyWindow,
}

impl Status {
    fn new(stats: &EngineStats) -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now,
            ingested: stats.dispatch.ingested.get(),
            stored: stats.process.stored.get(),
            dead: books(stats).dead_lettered,
            written: stats.host.storage_bytes.get(),
            acks: {
                // Start the window now: the first line covers its own interval only.
                let mut w = LatencyWindow::new();
                w.since_last(&stats.ack_latency);
                w
            },
        }
    }

    fn line(&mut self, stats: &EngineStats) -> String {
        let now = Instant::now();
        let secs = now.duration_since(self.last).as_secs_f64().max(1e-3);
        let (ingested, stored, dead) = (
            stats.dispatch.ingested.get(),
            stats.process.stored.get(),
            books(stats).dead_lettered,
        );
        let rate = |now: u64, before: u64| rate(now.saturating_sub(before) as f64 / secs);
        let acks = ack_text(&self.acks.since_last(&stats.ack_latency), secs);
        let d = |lane: Lane| stats.lane_depths[lane.index()].get();
        let written = stats.host.storage_bytes.get();
        let disk = disk_text(
            DiskSpace::of(&stats.data_dir).ok(),
            written.saturating_sub(self.written) as f64 / secs,
        );
        let line = format!(
            "{:>6.0}s in {}/s stored {}/s dead {}/s lanes rt={} tx={} batch={} {} conns {} consumers {} {disk} {acks}",
            now.duration_since(self.started).as_secs_f64(),
            rate(ingested, self.ingested),
            rate(stored, self.stored),
            rate(dead, self.dead),
            d(Lane::Realtime),
            d(Lane::Transactional),
            d(Lane::Batch),
            if stats.shared.storage_failed.load(Ordering::Relaxed) {
                "STORAGE FAILED (intake closed, /health 503)"
            } else {
                stats.control.level().name()
            },
            stats.host.tcp_open.get(),
            stats.consumers.stats.connected.get(),
        );
        (self.last, self.ingested, self.stored, self.dead) = (now, ingested, stored, dead);
        self.written = written;
        line
    }
}

/// `disk 41 GiB free (full in 3.5 h)` at `bytes_per_sec`; `(not filling)` when nothing was
/// written, `disk ?` when the space cannot be read.
fn disk_text(space: Option<DiskSpace>, bytes_per_sec: f64) -> String {
    let Some(space) = space else {
        return "disk ?".into();
    };
    let full = space.time_to_full(bytes_per_sec).map_or_else(
        || "not filling".into(),
        |t| format!("full in {}", disk::duration(t)),
    );
    format!("disk {} free ({full})", disk::bytes(space.available))
}

/// `ack p50 … ms p99 … ms (last N s)` from the acks of one interval of `secs` seconds.
fn ack_text(acks: &LatencySummary, secs: f64) -> String {
    if acks.count == 0 {
        return format!("ack p50 - p99 - (no acks in the last {secs:.0} s)");
    }
    let q = |i: usize| {
        acks.quantiles
            .get(i)
            .map_or(0.0, |&(_, ns)| ns as f64 / 1e6)
    };
    format!(
        "ack p50 {:.2} ms p99 {:.2} ms (last {secs:.0} s)",
        q(QUANTILE_P50),
        q(QUANTILE_P99)
    )
}

/// Indices of p50 and p99 in [`pinstream_host::stats::SUMMARY_QUANTILES`].
const QUANTILE_P50: usize = 0;
const QUANTILE_P99: usize = 2;

/// `1.23M`, `45.6k`, `789`.
fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pinstream_host::stats::{LatencyRecorder, SharedLatency};

    use super::*;

    #[test]
    fn the_status_line_shows_the_free_space_and_the_time_to_full() {
        let space = DiskSpace {
            available: 36 << 30,
            total: 100 << 30,
        };
        // 10 MiB/s fills 36 GiB in 3 686 s.
        assert_eq!(
            disk_text(Some(space), 10.0 * 1024.0 * 1024.0),
            "disk 36 GiB free (full in 61 min)"
        );
        assert_eq!(
            disk_text(Some(space), 0.0),
            "disk 36 GiB free (not filling)"
        );
        assert_eq!(disk_text(None, 1e6), "disk ?");
    }

    #[test]
    fn the_status_line_shows_the_acks_of_its_own_interval() {
        let shared = Arc::new(SharedLatency::new());
        let mut rec = LatencyRecorder::new(Arc::clone(&shared));
        let mut window = LatencyWindow::new();
        // A fast first second, then a slow one: the second line shows the slow one only.
        for _ in 0..1000 {
            rec.record(100_000); // 0.1 ms
        }
        rec.publish();
        let first = ack_text(&window.since_last(&shared), 1.0);
        assert_eq!(first, "ack p50 0.10 ms p99 0.10 ms (last 1 s)");
        for _ in 0..1000 {
            rec.record(20_000_000); // 20 ms
        }
        rec.publish();
        let second = ack_text(&window.since_last(&shared), 1.0);
        assert_eq!(second, "ack p50 20.00 ms p99 20.00 ms (last 1 s)");
        // A quiet second says so instead of repeating old figures.
        let third = ack_text(&window.since_last(&shared), 1.0);
        assert_eq!(third, "ack p50 - p99 - (no acks in the last 1 s)");
    }
}
