//! Starting and stopping the engine: [`Engine::start`] builds the memory, binds the
//! sockets, recovers the logs and runs the ingest and storage threads under a supervisor
//! thread that owns the memory; [`EngineHandle::stop`] drains, syncs, joins and checks the
//! books. Also what start-up reports ([`Started`]) and why the engine could not start or
//! stop ([`EngineError`]).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use pinstream_core::accounting::Accounting;
use pinstream_core::dispatch::{Admission, Dispatcher, Unlimited};
use pinstream_core::lanes::Lanes;
use pinstream_core::process::{BatchStore, LaneProcessors, Processors};
use pinstream_core::ratelimit::{RateConfig, RateLimiter};
use pinstream_core::ring::Spsc;

use super::capacity::{
    self, EngineLaneProcessors, EngineLanes, EngineProcessors, PAYLOAD, RULES, SOURCES,
};
use super::restore::{self, DedupRefill, Restored, SessionsRestored};
use super::sink::StoreSink;
use super::startup::{Sockets, bind_consumers, check_helper_cpu, open_logs, place};
use super::stats::recovery_summary;
use super::storage_loop::StorageParts;
use super::threads::{Threads, run_threads};
use super::{EngineConfig, EngineStats};
use crate::config::TcpAuth;
use crate::consumers::{ConsumerServer, ConsumerShared};
use crate::fdlimit::{self, FdBudget, FdLimit};
use crate::gateway::{GatewayRun, Tokens};
use crate::ingest::{
    AckMode, COMPLETIONS, Completion, GatewayRings, HandoffRing, Ingest, IngestContext, TcpLimits,
};
use crate::numa;
use crate::pin::PinPlan;
use crate::placement::{self, PlacementDecision};
use crate::stats::LatencyRecorder;
use crate::storage::layout::LogId;
use crate::storage::{DataDirLock, Log, RecoveryReport, StorageError};
use crate::tlsport::TlsPortRun;

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
    /// The CPUs asked for cannot be used as the placement decision needs
    /// ([`placement::resolve`]): the same refusal `pinstream host-check` shows.
    Placement(Box<placement::Refused>),
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
            EngineError::Placement(refused) => {
                write!(f, "{refused} (or set engine.placement = \"unpinned\")")
            }
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

/// Where the engine listens and what recovery found.
#[derive(Debug)]
pub struct Started {
    /// TCP address, if listening.
    pub tcp: Option<SocketAddr>,
    /// UDP address, if listening.
    pub udp: Option<SocketAddr>,
    /// The consumer listener's address, if serving consumers.
    pub consumers: Option<SocketAddr>,
    /// The HTTP gateway's address, if it runs.
    pub http: Option<SocketAddr>,
    /// The gRPC gateway's address, if it runs.
    pub grpc: Option<SocketAddr>,
    /// Consumer positions that could not be loaded (torn, corrupt, over `max_named`).
    pub consumer_warnings: Vec<String>,
    /// One report per log ([`LogId::ALL`] order).
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

/// A running engine.
pub struct EngineHandle {
    stats: Arc<EngineStats>,
    supervisor: Option<thread::JoinHandle<Result<(), String>>>,
    /// The consumer server, if serving.
    consumers: Option<ConsumerServer>,
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

    /// Where consumers connect (`consumers.listen`, with the port the OS chose for port 0),
    /// if the engine serves them.
    pub fn consumer_addr(&self) -> Option<SocketAddr> {
        self.started.consumers
    }

    /// Where the HTTP gateway listens (`http.listen`, with the port the OS chose for port
    /// 0), if it runs.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.started.http
    }

    /// Where the gRPC gateway listens (`grpc.listen`, with the port the OS chose for port
    /// 0), if it runs.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.started.grpc
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
        // Consumers first: they only read; the engine's drain does not wait for them.
        let consumers = self.consumers.take().map(|mut c| c.stop());
        self.stats.shared.stop.store(true, Ordering::Release);
        match self.supervisor.take() {
            Some(h) => match h.join() {
                Ok(Ok(())) => {
                    // Every thread has returned: the counters are final.
                    let books = BooksAtStop::of(&self.stats);
                    if !books.balanced() {
                        Err(EngineError::Accounting(Box::new(books)))
                    } else if let Some(Err(msg)) = consumers {
                        Err(EngineError::Thread(msg))
                    } else {
                        Ok(())
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
            tracing::error!("{e}");
        }
    }
}

/// The engine (see the module docs).
pub struct Engine;

/// The rate-limit key of the HTTP gateway's connection: the last of the table, unlimited
/// (the gateway limits its own clients).
const GATEWAY_RATE_KEY: u32 = SOURCES as u32 - 1;

/// The memory the threads share by reference, owned by the supervisor thread.
struct Memory {
    lanes: EngineLanes,
    completions: Spsc<Completion, COMPLETIONS>,
    limiter: RateLimiter<SOURCES>,
    procs: EngineLaneProcessors,
    /// The HTTP gateway's rings, when it runs.
    gateway: Option<Box<GatewayRings>>,
    /// The TLS terminator's hand-over ring, when the TCP port speaks TLS.
    tls_handoff: Option<Box<HandoffRing>>,
}

impl Engine {
    /// Builds the engine from `cfg`, binds its sockets, recovers its logs and starts its
    /// threads.
    ///
    /// # Errors
    /// A bad setting, a socket that cannot be bound, a log that cannot be opened; another
    /// process holding the data directory ([`StorageError::Locked`], naming its pid).
    pub fn start(cfg: EngineConfig) -> Result<EngineHandle, EngineError> {
        capacity::check(&cfg)?;
        // Descriptors for every connection the config allows, or no start (a connection the
        // engine cannot accept for want of one is refused by accident, not by the config).
        let fds = fdlimit::ensure(FdBudget::new(
            cfg.tcp_limits.max_connections,
            // A consumer connection holds its socket and one segment file (and, briefly, its
            // index); counted with the admin endpoint's connections.
            cfg.admin_connections
                // A TLS connection holds its TCP socket and both ends of its socket pair.
                + if cfg.tcp_tls.is_some() {
                    2 * cfg.tcp_limits.max_connections + 2
                } else {
                    0
                }
                + if cfg.http.listen.is_some() {
                    cfg.http.max_connections + 1
                } else {
                    0
                }
                + if cfg.grpc.listen.is_some() {
                    cfg.grpc.max_connections + 1
                } else {
                    0
                }
                + if cfg.consumers.listen.is_some() {
                    3 * (cfg.consumers.max_connections + 16) + 4
                } else {
                    0
                },
            LogId::COUNT,
        ))
        .map_err(EngineError::Limit)?;
        // One engine per data directory, checked before anything else is touched (a second
        // engine on the default config would otherwise fail on the TCP port first).
        let lock = DataDirLock::acquire(&cfg.data_dir).map_err(EngineError::Storage)?;
        let sockets = Sockets::bind(&cfg)?;
        let tcp_addr = sockets
            .listener
            .as_ref()
            .or(sockets.tls_listener.as_ref())
            .and_then(|l| l.local_addr().ok());
        let udp_addr = sockets
            .udp
            .as_ref()
            .and_then(|(s, _, _)| s.local_addr().ok());
        let http_addr = sockets.http.as_ref().and_then(|l| l.local_addr().ok());
        let grpc_addr = sockets.grpc.as_ref().and_then(|l| l.local_addr().ok());
        let consumer_socket = bind_consumers(&cfg)?;
        // `consumers.auth = "token"`: the serving thread checks HELLOs against a table of
        // its own built from the same `[[auth.tokens]]` (it uses only their hashes).
        let consumer_tokens = if cfg.consumers.auth && cfg.consumers.listen.is_some() {
            if cfg.http.tokens.is_empty() {
                return Err(EngineError::Config(
                    "consumers.auth = \"token\" with no [[auth.tokens]]: no consumer could connect"
                        .into(),
                ));
            }
            Some(Arc::new(
                Tokens::new(&cfg.http.tokens, &cfg.topics).map_err(EngineError::Config)?,
            ))
        } else {
            None
        };
        let (logs, recovery) = open_logs(&cfg)?;
        let shared = ConsumerShared::new().map_err(|source| EngineError::Socket {
            what: "cannot make the consumer server's eventfd".into(),
            source,
        })?;
        let stats = Arc::new(EngineStats::new(
            recovery_summary(&recovery),
            cfg.data_dir.clone(),
            Arc::new(shared),
        ));
        let placed = place(&cfg.placement)?;
        check_helper_cpu(
            "consumers.cpu",
            "the consumer server",
            cfg.consumers.cpu,
            &placed.plan,
        )?;
        check_helper_cpu("http.cpu", "the HTTP gateway", cfg.http.cpu, &placed.plan)?;
        check_helper_cpu(
            "tcp.tls_cpu",
            "the TLS terminator",
            cfg.tcp_tls.as_ref().and_then(|t| t.cpu),
            &placed.plan,
        )?;
        let consumer_settings = cfg.consumers.clone();
        let data_dir = cfg.data_dir.clone();
        let hook = cfg.thread_hook;
        let (tx, rx) = mpsc::channel();
        let supervision = Supervision {
            stats: Arc::clone(&stats),
            plan: placed.plan,
            node: placed.node,
            sockets,
            logs,
            started: tx,
            cfg,
        };
        // The lanes are built by value before they are boxed: without optimisation that
        // needs their size on the stack (a few times over), so the supervisor gets a stack
        // to match. Untouched stack pages cost address space, not memory.
        let stack = 4 * std::mem::size_of::<Memory>() + (16 << 20);
        let supervisor = thread::Builder::new()
            .name("pinstream-engine".into())
            .stack_size(stack)
            .spawn(move || supervise(supervision))
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
        // Started last: nothing above can fail once it runs.
        let (consumers, consumer_addr, consumer_warnings) = match consumer_socket {
            Some((listener, positions, warnings)) => {
                let server = ConsumerServer::start(
                    &consumer_settings,
                    Arc::clone(&stats.consumers),
                    listener,
                    positions,
                    data_dir,
                    consumer_tokens,
                    hook,
                );
                match server {
                    Ok(s) => {
                        let addr = s.local_addr();
                        (Some(s), Some(addr), warnings)
                    }
                    Err(e) => {
                        stats.shared.stop.store(true, Ordering::Release);
                        let _ = supervisor.join();
                        return Err(EngineError::Thread(format!(
                            "cannot start the consumer server thread: {e}"
                        )));
                    }
                }
            }
            None => (None, None, Vec::new()),
        };
        Ok(EngineHandle {
            stats,
            supervisor: Some(supervisor),
            consumers,
            started: Started {
                tcp: tcp_addr,
                udp: udp_addr,
                consumers: consumer_addr,
                http: http_addr,
                grpc: grpc_addr,
                consumer_warnings,
                recovery,
                decision: placed.decision,
                placement: placed.notes,
                dedup_refill: restored.dedup,
                sessions: restored.sessions,
                fds,
            },
            _lock: lock,
        })
    }
}

/// What the supervisor thread is given: everything [`Engine::start`] prepared.
struct Supervision {
    cfg: EngineConfig,
    plan: PinPlan,
    /// The NUMA node for the lanes, pools and payload arena.
    node: Option<usize>,
    stats: Arc<EngineStats>,
    sockets: Sockets,
    /// One per [`LogId`], in [`LogId::ALL`] order.
    logs: Vec<Log>,
    /// Start-up's outcome, sent once before the threads run.
    started: mpsc::Sender<Result<Restored, String>>,
}

/// Nanoseconds of `d`, saturated.
fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The supervisor: owns the memory, runs the two threads in a scope, reports start-up.
fn supervise(s: Supervision) -> Result<(), String> {
    let Supervision {
        cfg,
        plan,
        node,
        stats,
        sockets,
        logs,
        started,
    } = s;
    // Large: built on the heap in place (the lanes are tens of MiB).
    let mut memory: Box<Memory> = Box::new(Memory {
        lanes: Lanes::new(),
        completions: Spsc::new(),
        limiter: RateLimiter::new(cfg.rate),
        procs: LaneProcessors::new(ns(cfg.dedup_window), ns(cfg.aggregate_window).max(1)),
        gateway: (sockets.http.is_some() || sockets.grpc.is_some())
            .then(|| Box::new(GatewayRings::new())),
        tls_handoff: sockets
            .tls_listener
            .as_ref()
            .map(|_| Box::new(HandoffRing::new())),
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
    let threads = match set_up(&cfg, &stats, &mut memory, &mut arena, sockets, logs) {
        Ok((threads, restored)) => {
            let _ = started.send(Ok(restored));
            threads
        }
        Err(msg) => {
            let _ = started.send(Err(msg));
            return Ok(());
        }
    };
    run_threads(&cfg, &plan, &stats, threads)
}

/// Wires the pipeline over `memory` and `arena`: the alert rules, the dispatcher and the
/// ingest thread's state, the processors, the sink over `logs`; then restores the dedup
/// window and the producer sessions from the logs.
///
/// # Errors
/// A message for the start-up report; the engine does not start.
fn set_up<'m>(
    cfg: &EngineConfig,
    stats: &'m EngineStats,
    memory: &'m mut Memory,
    arena: &'m mut [u8],
    sockets: Sockets,
    logs: Vec<Log>,
) -> Result<(Threads<'m>, Restored), String> {
    for rule in &cfg.alerts {
        if memory.procs.realtime.add_rule(*rule).is_err() {
            return Err(format!("more than {RULES} alert rules"));
        }
    }
    let Memory {
        lanes,
        completions,
        limiter,
        procs,
        gateway: gateway_rings,
        tls_handoff,
    } = memory;
    let Sockets {
        listener: tcp_listener,
        tls_listener,
        udp: udp_socket,
        http: http_listener,
        grpc: grpc_listener,
    } = sockets;
    let (input, output, dead) = lanes.split_with_arena(arena);
    let (done_tx, done_rx) = completions.split();
    // The HTTP gateway limits its clients itself (429 before anything is queued) and is
    // never limited as one client of the engine: its key's bucket is unlimited, and the
    // ingest thread hands out the keys below it.
    let gateway_on = http_listener.is_some() || grpc_listener.is_some();
    if gateway_on
        && limiter
            .set_config(GATEWAY_RATE_KEY, RateConfig::UNLIMITED)
            .is_err()
    {
        return Err(format!(
            "rate-limit key {GATEWAY_RATE_KEY} is not in the table"
        ));
    }
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
    let mut ingest = Ingest::new(
        IngestContext {
            shared: &stats.shared,
            counters: &stats.host,
            latency: LatencyRecorder::new(Arc::clone(&stats.dispatch_latency)),
            ack_latency: LatencyRecorder::new(Arc::clone(&stats.ack_latency)),
        },
        dispatcher,
        done_rx,
        cfg.ack,
        TcpLimits {
            // What a version-2 HELLO reply announces comes from the engine's own settings.
            dedup_window: cfg.dedup_window,
            max_payload: u32::try_from(PAYLOAD).unwrap_or(u32::MAX),
            ..cfg.tcp_limits.clone()
        },
        tcp_listener,
        udp_socket,
    )
    .map_err(|e| format!("ingest set-up: {e}"))?;
    let mut processors: EngineProcessors<'_> = Processors::new(output, cfg.retry, &stats.process);
    processors.set_batch_store(cfg.batch_store);
    let batch_events = cfg.batch_store == BatchStore::Events;
    ingest.set_batch_events_stored(batch_events);
    // One table of `[[auth.tokens]]` for the gateways and the binary port: a token's rate
    // bucket is shared by all (built here, at start-up; the ingest thread only reads it).
    let tcp_auth = cfg.tcp_auth == TcpAuth::Token;
    if tcp_auth && cfg.http.tokens.is_empty() {
        return Err("tcp.auth = \"token\" with no [[auth.tokens]]: no client could connect".into());
    }
    let tokens = Arc::new(Tokens::new(&cfg.http.tokens, &cfg.topics)?);
    if tcp_auth {
        ingest.set_auth(Arc::clone(&tokens));
        if let Some((addr, _, _)) = cfg.udp {
            // The config refuses this unless udp.allow_unauthenticated says so; an
            // EngineConfig built in code is told here.
            tracing::warn!(
                "tcp.auth = \"token\" but UDP listens on {addr}: UDP has no HELLO, its events \
                 are taken without a token"
            );
        }
    }
    let gateway = match (gateway_on, gateway_rings.as_deref_mut()) {
        (true, Some(rings)) => {
            let (end, link) = rings.split();
            ingest
                .set_gateway(end, GATEWAY_RATE_KEY)
                .map_err(|e| format!("http gateway set-up: {e}"))?;
            Some(GatewayRun {
                listener: http_listener,
                settings: cfg.http.clone(),
                grpc: grpc_listener,
                grpc_settings: cfg.grpc.clone(),
                grpc_counters: Arc::clone(&stats.grpc),
                link,
                shared: &stats.shared,
                counters: Arc::clone(&stats.http),
                topics: cfg.topics.clone(),
                max_frame: cfg.tcp_limits.max_frame_len,
                engine_durable: cfg.ack == AckMode::Durable,
                rate: cfg.rate,
                tokens,
            })
        }
        _ => None,
    };
    if let Some(g) = &gateway {
        crate::gateway::check(g)?;
    }
    let tls = match (tls_listener, tls_handoff.as_deref_mut(), &cfg.tcp_tls) {
        (Some(listener), Some(ring), Some(settings)) => {
            let config = crate::gateway::tcp_server_config(&settings.files)?;
            let (tx, rx) = ring.split();
            ingest.set_tls_handoff(rx);
            Some(TlsPortRun {
                listener,
                config,
                handshake_timeout: settings.handshake_timeout,
                max_sessions: cfg.tcp_limits.max_connections,
                handoff: tx,
                shared: &stats.shared,
                counters: &stats.host,
            })
        }
        _ => None,
    };
    ingest.set_rate_limit(if gateway_on { SOURCES - 1 } else { SOURCES }, cfg.rate);
    let mut sink = StoreSink::new(logs, stats, cfg.ack)?;
    sink.batch_events = batch_events;
    stats
        .dedup_effective_window_ns
        .set(ns(cfg.dedup_window).max(1));
    let restored = restore::restore(cfg, stats, &mut procs.transactional, &mut ingest)?;
    let storage = StorageParts {
        processors,
        procs,
        dead,
        done_tx,
    };
    Ok((
        Threads {
            ingest,
            storage,
            sink,
            gateway,
            tls,
        },
        restored,
    ))
}
