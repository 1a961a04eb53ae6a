//! `pinstream bridge` and the bridges inside `pinstream run`: the `[[bridge]]` tables of the
//! config forwarded to NATS JetStream by [`pinstream_bridge`] (issue 16).
//!
//! Each bridge runs on its own unpinned threads (unless its `cpu` says otherwise) and reads
//! the engine's consumer listener like any consumer: it never slows ingest or storage. Its
//! figures go to the engine's `/metrics` ([`WithBridges`]) and to the status line.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pinstream_host::admin::{AdminSource, Health};
use pinstream_host::config::Config;

use crate::Failure;

/// `pinstream bridge` flags.
#[derive(clap::Args, Debug)]
#[command(
    about = "Forward a running engine's logs to NATS JetStream, exactly once ([[bridge]] tables)",
    long_about = "Run the [[bridge]] tables of FILE alone, against a running engine's consumer \
listener (--engine, by default the config's consumers.listen): each bridge reads one log as a \
named consumer and publishes every stored record to a JetStream stream (created with file \
storage when missing), with Nats-Msg-Id = {source}-{log}-{offset}, up to max_in_flight \
publishes awaiting their PubAck. Its position is committed only up to the lowest offset whose \
PubAck and every earlier one's came, so a crash or kill re-sends at most the uncommitted \
records, which JetStream's duplicate window drops; on start (and after a retry later than half \
that window) the bridge also reads the stream's tail and skips what it holds, so an outage \
longer than the window adds no duplicate either. Failures (NATS down, no stream, engine \
restarting) are retried with backoff, nothing is dropped; the status line shows each bridge's \
lag (high watermark − committed), acks and errors. `pinstream run` starts the same bridges \
itself once the engine is up. Stop with Ctrl-C: the PubAcks in flight are awaited (5 s at \
most) and the position committed.

Keys of a [[bridge]] table (see `pinstream run --print-default-config`): name, log, source, \
nats_url, stream, subjects, replicas, subject (template: {log} {topic} {topic_name} \
{source}), headers (fields | id), max_in_flight, commit_interval_ms, ack_timeout_ms, max_backoff_ms, token | \
user + password | nkey_seed | creds_file (NATS auth), ca_file, client_cert + client_key, tls_required, \
engine_token (the engine's consumers.auth = \"token\"), cpu.",
    after_help = "Example config:\n  [[bridge]]\n  name = \"to-nats\"\n  log = \"realtime\"\n  \
nats_url = \"nats://127.0.0.1:4222\"\n  stream = \"PINSTREAM\"\n  subjects = [\"pinstream.>\"]\n  \
subject = \"pinstream.{log}.{topic_name}\"\n\nExample:\n  pinstream bridge --config edge.toml \
--engine 127.0.0.1:7072"
)]
pub struct BridgeArgs {
    /// The engine's config file with the `[[bridge]]` tables.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    /// The engine's consumer listener (default: the config's consumers.listen, else
    /// 127.0.0.1:7072).
    #[arg(long, value_name = "HOST:PORT")]
    engine: Option<String>,
    /// Seconds between status lines on stdout; 0 turns them off.
    #[arg(long, default_value_t = 1, value_name = "SECS")]
    status_every: u64,
}

/// The running bridges of a config.
#[derive(Debug, Default)]
pub struct Bridges {
    #[cfg(feature = "bridge")]
    handles: Vec<pinstream_bridge::BridgeHandle>,
}

impl Bridges {
    /// Starts one bridge per `[[bridge]]` table against `engine`.
    ///
    /// # Errors
    /// A table the bridge refuses, threads that cannot start; without the `bridge` feature,
    /// any table at all.
    pub fn start(config: &Config, engine: SocketAddr) -> Result<Self, Failure> {
        #[cfg(feature = "bridge")]
        {
            let mut handles = Vec::new();
            for b in &config.bridge {
                let h = pinstream_bridge::start(b, engine, config.pipeline.topics.clone())
                    .map_err(|e| Failure::start(format!("bridge {}: {e}", b.name)))?;
                handles.push(h);
            }
            Ok(Self { handles })
        }
        #[cfg(not(feature = "bridge"))]
        {
            let _ = engine;
            if config.bridge.is_empty() {
                Ok(Self::default())
            } else {
                Err(Failure::usage(
                    "the config has [[bridge]] tables but this pinstream was built without the \
                     `bridge` feature (cargo build -p pinstream --features bridge; needs rust 1.89)",
                ))
            }
        }
    }

    /// How many run.
    pub fn len(&self) -> usize {
        #[cfg(feature = "bridge")]
        return self.handles.len();
        #[cfg(not(feature = "bridge"))]
        0
    }

    /// ` | bridge NAME lag … ` for each bridge (empty without bridges).
    pub fn status(&self) -> String {
        #[cfg(feature = "bridge")]
        return self
            .handles
            .iter()
            .map(|h| format!(" | {}", h.metrics().status()))
            .collect();
        #[cfg(not(feature = "bridge"))]
        String::new()
    }

    /// The metrics renderer `/metrics` appends.
    pub fn metrics_source(&self) -> BridgeMetricsSource {
        #[cfg(feature = "bridge")]
        return BridgeMetricsSource(
            self.handles
                .iter()
                .map(|h| Arc::clone(h.metrics()))
                .collect(),
        );
        #[cfg(not(feature = "bridge"))]
        BridgeMetricsSource()
    }

    /// Errors of bridges that stopped on their own since the last call, to print once.
    pub fn failures(&mut self) -> Vec<String> {
        #[cfg(feature = "bridge")]
        let failures = {
            let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.handles)
                .into_iter()
                .partition(|h| h.is_finished());
            self.handles = running;
            done.into_iter()
                .filter_map(|h| {
                    let name = h.metrics().name.clone();
                    h.stop()
                        .err()
                        .map(|e| format!("bridge {name} stopped: {e}"))
                })
                .collect()
        };
        #[cfg(not(feature = "bridge"))]
        let failures = Vec::new();
        failures
    }

    /// Errors the bridges met since the last call, each once (`bridge NAME: …`): the engine
    /// unreachable, NATS down, a publish retried. They go on by themselves.
    pub fn new_errors(&self) -> Vec<String> {
        #[cfg(feature = "bridge")]
        let errors = self
            .handles
            .iter()
            .filter_map(|h| {
                let m = h.metrics();
                m.take_new_error()
                    .map(|e| format!("bridge {}: {e}", m.name))
            })
            .collect();
        #[cfg(not(feature = "bridge"))]
        let errors = Vec::new();
        errors
    }

    /// Stops every bridge (PubAcks in flight awaited, positions committed).
    pub fn stop(self) {
        #[cfg(feature = "bridge")]
        for h in self.handles {
            let name = h.metrics().name.clone();
            if let Err(e) = h.stop() {
                tracing::error!("bridge {name}: {e}");
            }
        }
    }
}

/// The bridges' figures, for `/metrics`.
#[derive(Debug, Default)]
pub struct BridgeMetricsSource(
    #[cfg(feature = "bridge")] Vec<Arc<pinstream_bridge::BridgeMetrics>>,
);

impl BridgeMetricsSource {
    fn render(&self, out: &mut String) {
        #[cfg(feature = "bridge")]
        {
            let all: Vec<&pinstream_bridge::BridgeMetrics> =
                self.0.iter().map(Arc::as_ref).collect();
            pinstream_bridge::metrics::render(&all, out);
        }
        #[cfg(not(feature = "bridge"))]
        let _ = out;
    }
}

/// The engine's admin source with the bridges' families appended (set once they start).
pub struct WithBridges {
    /// The engine's own source.
    pub engine: Arc<dyn AdminSource>,
    /// The bridges, once started.
    pub bridges: OnceLock<BridgeMetricsSource>,
}

impl AdminSource for WithBridges {
    fn render_metrics(&self, out: &mut String) {
        self.engine.render_metrics(out);
        if let Some(b) = self.bridges.get() {
            b.render(out);
        }
    }

    fn health(&self) -> Health {
        self.engine.health()
    }
}

/// `pinstream bridge`: the bridges alone until a signal.
///
/// # Errors
/// A bad config or address (exit 2), a bridge that cannot start (3), one that stops on its
/// own (1).
pub fn main(args: &BridgeArgs) -> Result<(), Failure> {
    let (config, warnings) =
        Config::load_checked(&args.config).map_err(|e| Failure::usage(e.to_string()))?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    if config.bridge.is_empty() {
        return Err(Failure::usage(format!(
            "{}: no [[bridge]] table: nothing to run (see pinstream bridge --help)",
            args.config.display()
        )));
    }
    let engine = match &args.engine {
        Some(a) => a
            .to_socket_addrs()
            .ok()
            .and_then(|mut i| i.next())
            .ok_or_else(|| Failure::usage(format!("--engine {a:?}: expected HOST:PORT")))?,
        None => default_engine_addr(&config),
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for s in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(s, 130, Arc::clone(&stop))
            .and_then(|_| signal_hook::flag::register(s, Arc::clone(&stop)))
            .map_err(|e| Failure::start(format!("cannot install the signal handlers: {e}")))?;
    }
    let mut bridges = Bridges::start(&config, engine)?;
    tracing::info!(
        "pinstream bridge: {} bridge(s) reading the engine at {engine}",
        bridges.len()
    );
    let every = Duration::from_secs(args.status_every);
    let (t0, mut next) = (Instant::now(), Instant::now() + every);
    let mut failed = None;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        for f in bridges.failures() {
            tracing::error!("{f}");
            failed = Some(f);
        }
        for e in bridges.new_errors() {
            tracing::error!("{e}");
        }
        if failed.is_some() && bridges.len() == 0 {
            break;
        }
        if args.status_every != 0 && Instant::now() >= next {
            next += every;
            crate::logging::status(&format!(
                "{:>6.0}s{}",
                t0.elapsed().as_secs_f64(),
                bridges.status()
            ));
        }
    }
    bridges.stop();
    failed.map_or(Ok(()), |f| Err(Failure::runtime(f)))
}

/// Where the engine of `config` serves consumers: `consumers.listen` (an unspecified IP
/// such as 0.0.0.0 is reached on loopback), else the default 127.0.0.1:7072.
pub fn default_engine_addr(config: &Config) -> SocketAddr {
    match config.consumers.listen {
        Some(a) if a.ip().is_unspecified() => SocketAddr::from(([127, 0, 0, 1], a.port())),
        Some(a) => a,
        None => SocketAddr::from(([127, 0, 0, 1], 7072)),
    }
}
