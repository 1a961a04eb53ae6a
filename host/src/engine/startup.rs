//! The engine's start-up steps before any thread runs: binding the sockets, deciding the
//! placement, binding the consumer listener, keeping helper threads off the engine CPUs and
//! opening (recovering) the logs. [`Engine::start`](super::Engine::start) calls them in turn.

use std::net::{TcpListener, UdpSocket};

use super::{EngineConfig, EngineError, Placement};
use crate::consumers::{POSITIONS_DIR, Positions};
use crate::numa;
use crate::pin::{self, PinPlan};
use crate::placement::{self, PlacementDecision};
use crate::storage::layout::LogId;
use crate::storage::{Log, RecoveryReport};
use crate::topology::Topology;

/// The engine's sockets, bound by [`Engine::start`](super::Engine::start), polled by the ingest thread.
pub(super) struct Sockets {
    /// The TCP listener, if any, when the ingest thread accepts itself (no `tcp.tls_cert`).
    pub(super) listener: Option<TcpListener>,
    /// The TCP listener when the port speaks TLS: the terminator thread's.
    pub(super) tls_listener: Option<TcpListener>,
    /// The UDP socket, datagrams per `recvmmsg`, largest datagram.
    pub(super) udp: Option<(UdpSocket, usize, usize)>,
    /// The HTTP gateway's listener, if any.
    pub(super) http: Option<TcpListener>,
    /// The gRPC gateway's listener, if any.
    pub(super) grpc: Option<TcpListener>,
}

impl Sockets {
    /// Binds what `cfg` asks for.
    ///
    /// # Errors
    /// [`EngineError::Socket`], naming the address.
    pub(super) fn bind(cfg: &EngineConfig) -> Result<Self, EngineError> {
        let mut listener = match cfg.tcp {
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
        let http = match cfg.http.listen {
            Some(addr) => {
                Some(
                    crate::gateway::bind(addr).map_err(|source| EngineError::Socket {
                        what: format!("cannot listen for HTTP on {addr}"),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let grpc = match cfg.grpc.listen {
            Some(addr) => {
                Some(
                    crate::gateway::bind(addr).map_err(|source| EngineError::Socket {
                        what: format!("cannot listen for gRPC on {addr}"),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let tls_listener = if cfg.tcp_tls.is_some() {
            listener.take()
        } else {
            None
        };
        Ok(Self {
            listener,
            tls_listener,
            udp,
            http,
            grpc,
        })
    }
}

/// Where the threads run, as decided at start.
pub(super) struct Placed {
    /// Whether they are pinned, and why.
    pub(super) decision: PlacementDecision,
    /// The CPU of each thread (nothing pinned when not pinning).
    pub(super) plan: PinPlan,
    /// What was asked and got, warnings.
    pub(super) notes: Vec<String>,
    /// The NUMA node to bind the lanes and pools to.
    pub(super) node: Option<usize>,
}

/// Decides whether to pin, plans the threads' CPUs, locks memory if asked.
///
/// # Errors
/// [`EngineError::Config`]: the topology cannot be read or the CPUs are not usable.
pub(super) fn place(p: &Placement) -> Result<Placed, EngineError> {
    let topology = Topology::live().map_err(|e| EngineError::Config(e.to_string()))?;
    let allowed = pin::current_affinity().ok();
    // The one placement decision (`pinstream run` and `host-check` make it the same way).
    let placement::Resolved { decision, plan, .. } = placement::resolve(
        &placement::PlacementRequest {
            mode: p.mode,
            overprovisioned: p.overprovisioned,
            cpus: [p.ingest_cpu, p.process_cpu],
            default_config: false,
        },
        allowed.as_deref(),
        &topology,
    )
    .map_err(|refused| EngineError::Placement(Box::new(refused)))?;
    let mut notes: Vec<String> = plan.warnings().to_vec();
    if p.mlock {
        match numa::lock_all_memory() {
            Ok(()) => notes.push("memory locked (mlockall)".into()),
            Err(e) => notes.push(format!("mlockall refused: {e}; continuing unlocked")),
        }
    }
    let node = if p.numa && plan.is_pinning() {
        plan.node_of("ingest")
    } else {
        None
    };
    Ok(Placed {
        decision,
        plan,
        notes,
        node,
    })
}

/// The consumer listener, bound, and the named positions, loaded, when `consumers.listen`
/// is on.
///
/// # Errors
/// [`EngineError::Socket`] naming the address; [`EngineError::Config`] when the positions
/// directory cannot be listed.
pub(super) fn bind_consumers(
    cfg: &EngineConfig,
) -> Result<Option<(TcpListener, Positions, Vec<String>)>, EngineError> {
    let Some(addr) = cfg.consumers.listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr).map_err(|source| EngineError::Socket {
        what: format!("cannot listen for consumers on {addr}"),
        source,
    })?;
    let (positions, warnings) =
        Positions::load(&cfg.data_dir, cfg.consumers.max_named).map_err(|e| {
            EngineError::Config(format!(
                "cannot read the consumer positions in {}: {e}",
                cfg.data_dir.join(POSITIONS_DIR).display()
            ))
        })?;
    Ok(Some((listener, positions, warnings)))
}

/// A helper thread (the consumer server, the HTTP gateway) never runs on a pinned engine
/// thread's CPU: `key` is its config key, `what` names it in the message.
///
/// # Errors
/// [`EngineError::Config`] when `cpu` is one of them under the plan.
pub(super) fn check_helper_cpu(
    key: &str,
    what: &str,
    cpu: Option<usize>,
    plan: &PinPlan,
) -> Result<(), EngineError> {
    let Some(cpu) = cpu else {
        return Ok(());
    };
    let engine_cpus = [plan.cpu_of("ingest"), plan.cpu_of("storage")];
    if plan.is_pinning() && engine_cpus.contains(&Some(cpu)) {
        return Err(EngineError::Config(format!(
            "{key} = {cpu} is the CPU of a pinned engine thread: {what} must never run there \
             (choose another, or -1 for none)"
        )));
    }
    Ok(())
}

/// Opens (recovering) every log below the data directory, in [`LogId::ALL`] order.
///
/// # Errors
/// [`EngineError::Storage`]: a log that cannot be opened.
pub(super) fn open_logs(
    cfg: &EngineConfig,
) -> Result<(Vec<Log>, Vec<RecoveryReport>), EngineError> {
    let mut logs = Vec::with_capacity(LogId::COUNT);
    let mut recovery = Vec::with_capacity(LogId::COUNT);
    for id in LogId::ALL {
        let mut lc = cfg.log.clone();
        lc.dir = cfg.data_dir.join(id.name());
        let (log, report) = Log::open(lc).map_err(EngineError::Storage)?;
        logs.push(log);
        recovery.push(report);
    }
    Ok((logs, recovery))
}
