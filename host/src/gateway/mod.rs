//! The HTTP/JSON ingest gateway (issue 17): `POST /v1/events` on its own thread, outside the
//! pinned engine threads.
//!
//! The gateway thread runs a current-thread tokio runtime with hyper's HTTP/1.1 server. It
//! authenticates (`auth`: bearer tokens stored as SHA-256 hashes, each with topics and a
//! rate), reads the body within `http.max_body_bytes` and `http.body_timeout_ms`, parses the
//! events (`events`), and hands them to the ingest thread as binary-protocol BATCH frames
//! through a bounded lock-free ring ([`crate::ingest::GatewayRings`]); the ingest thread
//! serves that ring like a TCP connection and answers one ACK per frame (and a REJECT per
//! refused event) through a second ring, which the gateway's pump (`pump`) books per
//! request. The pinned threads never parse JSON, never run async code and allocate nothing
//! for it.
//!
//! Back-pressure: when the ingest thread cannot take a frame (a full lane or pool, the
//! control plane pausing intake, the connection's credit window used up), it stops reading
//! the ring; the ring and then the gateway's queue fill, and a request that finds no room
//! within `http.backpressure_wait_ms` is answered `503` with `Retry-After` and nothing of it
//! was taken. A request once taken is answered with its outcome (or `503` if the engine
//! stops first).

mod auth;
mod events;
pub mod grpc;
mod pump;
mod server;
mod tls;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use self::auth::{Token, Tokens, hash_token};
pub use self::grpc::{GrpcCounters, GrpcSettings};
pub use self::tls::{
    TlsFiles, server_config as tls_server_config, server_config_for as tls_server_config_for,
    tcp_server_config,
};
use crate::config::{Config, TokenSection};
use crate::ingest::{GatewayLink, Shared};
use crate::prom::{MetricType, PromWriter};

/// The gateway's settings (`[http]` and `[auth]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpSettings {
    /// Where to listen; `None`: no gateway.
    pub listen: Option<SocketAddr>,
    /// The gateway thread's CPU (`None`: not pinned).
    pub cpu: Option<usize>,
    /// The largest body.
    pub max_body_bytes: usize,
    /// Connections open at once.
    pub max_connections: usize,
    /// Deadline of a request head.
    pub header_timeout: Duration,
    /// Deadline of a request body.
    pub body_timeout: Duration,
    /// Events per request at most.
    pub max_events_per_request: usize,
    /// How long a request waits for room before `503`.
    pub backpressure_wait: Duration,
    /// `Retry-After` seconds.
    pub retry_after_secs: u32,
    /// `[[auth.tokens]]`.
    pub tokens: Vec<TokenSection>,
    /// `http.tls_*`: HTTPS only when set.
    pub tls: Option<TlsFiles>,
}

impl HttpSettings {
    /// No gateway.
    pub fn off() -> Self {
        Self::from_config(&Config::default())
    }

    /// The settings of `[http]` and `[auth]`.
    pub fn from_config(c: &Config) -> Self {
        let h = &c.http;
        Self {
            listen: h.listen,
            cpu: h.cpu,
            max_body_bytes: h.max_body_bytes,
            max_connections: h.max_connections,
            header_timeout: h.header_timeout(),
            body_timeout: h.body_timeout(),
            max_events_per_request: h.max_events_per_request,
            backpressure_wait: h.backpressure_wait(),
            retry_after_secs: h.retry_after_secs,
            tokens: c.auth.tokens.clone(),
            tls: h
                .tls_cert
                .clone()
                .zip(h.tls_key.clone())
                .map(|(cert, key)| TlsFiles {
                    cert,
                    key,
                    client_ca: h.tls_client_ca.clone(),
                }),
        }
    }
}

/// The statuses answered, each counted.
const STATUSES: [u16; 11] = [200, 202, 400, 401, 403, 404, 405, 408, 413, 429, 503];

/// What the gateway counts (rendered on `/metrics`).
#[derive(Debug, Default)]
pub struct GatewayCounters {
    requests: [AtomicU64; STATUSES.len()],
    /// Events by outcome: stored, duplicates, dead-lettered, rejected.
    events: [AtomicU64; 4],
    /// Requests answered `503` because no room came within the wait.
    pub backpressure: AtomicU64,
    /// Requests refused `401`.
    pub auth_failed: AtomicU64,
    /// Requests refused `403`.
    pub forbidden: AtomicU64,
    /// Requests refused `429`.
    pub rate_limited: AtomicU64,
    /// Bodies cut off by the deadline (`408`).
    pub body_timeouts: AtomicU64,
    /// Connections refused over `http.max_connections`.
    pub connections_refused: AtomicU64,
    /// TLS handshakes that failed or did not finish within `http.header_timeout_ms`.
    pub tls_handshake_failures: AtomicU64,
    /// Events of `ack=none` requests (answered `202`) that the engine stopped before
    /// taking in: the stop's drain of the gateway ran out of time (storage stuck).
    pub not_taken_at_stop: AtomicU64,
}

impl GatewayCounters {
    fn status(&self, status: u16) {
        if let Some(i) = STATUSES.iter().position(|&s| s == status) {
            self.requests[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn outcome(&self, o: &pump::Outcome) {
        for (c, n) in self
            .events
            .iter()
            .zip([o.stored, o.duplicates, o.dead_lettered, o.rejected])
        {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Requests answered with `status` so far.
    pub fn requests(&self, status: u16) -> u64 {
        STATUSES
            .iter()
            .position(|&s| s == status)
            .map_or(0, |i| self.requests[i].load(Ordering::Relaxed))
    }

    /// Renders the gateway's families.
    pub fn render(&self, w: &mut PromWriter<'_>) {
        let name = "pinstream_http_requests_total";
        w.family(
            name,
            MetricType::Counter,
            "HTTP gateway requests answered, by status (401 no or unknown token, 403 topic not allowed, 413 body or events over the limit, 429 token over its rate, 503 back-pressure or stopping).",
        );
        for (s, c) in STATUSES.iter().zip(&self.requests) {
            w.sample_u64(
                name,
                &[("status", &s.to_string())],
                c.load(Ordering::Relaxed),
            );
        }
        let name = "pinstream_http_events_total";
        w.family(
            name,
            MetricType::Counter,
            "Events of acknowledged HTTP requests, by outcome.",
        );
        for (o, c) in ["stored", "duplicate", "dead_lettered", "rejected"]
            .iter()
            .zip(&self.events)
        {
            w.sample_u64(name, &[("outcome", o)], c.load(Ordering::Relaxed));
        }
        let name = "pinstream_http_refusals_total";
        w.family(
            name,
            MetricType::Counter,
            "HTTP requests refused before their events reached the engine, by reason.",
        );
        for (r, c) in [
            ("backpressure", &self.backpressure),
            ("unauthenticated", &self.auth_failed),
            ("topic_forbidden", &self.forbidden),
            ("rate_limited", &self.rate_limited),
            ("body_timeout", &self.body_timeouts),
            ("too_many_connections", &self.connections_refused),
        ] {
            w.sample_u64(name, &[("reason", r)], c.load(Ordering::Relaxed));
        }
        let name = "pinstream_http_events_not_taken_at_stop_total";
        w.family(
            name,
            MetricType::Counter,
            "Events of ack=none requests (answered 202) the engine stopped before taking in: the stop's drain of the gateway ran out of time.",
        );
        w.sample_u64(name, &[], self.not_taken_at_stop.load(Ordering::Relaxed));
        let name = "pinstream_http_tls_handshake_failures_total";
        w.family(
            name,
            MetricType::Counter,
            "HTTPS connections closed before a request: the TLS handshake failed (plain HTTP, an untrusted or missing client certificate, a bad hello) or did not finish within http.header_timeout_ms.",
        );
        w.sample_u64(
            name,
            &[],
            self.tls_handshake_failures.load(Ordering::Relaxed),
        );
    }
}

/// Binds the gateway's listener (at start-up, so a bad address stops the start).
///
/// # Errors
/// The address cannot be bound.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let l = TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// What the gateway thread is given.
pub(crate) struct GatewayRun<'a> {
    /// The HTTP listener (`http.listen`), if any.
    pub(crate) listener: Option<TcpListener>,
    pub(crate) settings: HttpSettings,
    /// The gRPC listener (`grpc.listen`), if any: served on the same thread and rings.
    pub(crate) grpc: Option<TcpListener>,
    pub(crate) grpc_settings: GrpcSettings,
    pub(crate) grpc_counters: Arc<GrpcCounters>,
    pub(crate) link: GatewayLink<'a>,
    pub(crate) shared: &'a Shared,
    pub(crate) counters: Arc<GatewayCounters>,
    pub(crate) topics: Vec<String>,
    pub(crate) max_frame: usize,
    pub(crate) engine_durable: bool,
    /// The engine's per-client rate, applied per address to requests without a token.
    pub(crate) rate: pinstream_core::ratelimit::RateConfig,
    /// `[[auth.tokens]]`, built once by the engine: a token's bucket is shared with the
    /// binary TCP port.
    pub(crate) tokens: Arc<Tokens>,
}

/// Checks what the gateway will be given before the engine starts (its tokens).
///
/// # Errors
/// A token entry that is bad (a hash that is not 64 hex digits, an unknown topic, a rate the
/// core refuses).
pub(crate) fn check(g: &GatewayRun<'_>) -> Result<(), String> {
    auth::Tokens::new(&g.settings.tokens, &g.topics)?;
    if let Some(f) = &g.settings.tls {
        tls::server_config(f)?;
    }
    if let Some(f) = &g.grpc_settings.tls {
        tls::server_config_for("grpc", f, b"h2")?;
    }
    Ok(())
}

/// Runs the gateway on the calling thread until the ingest thread has exited.
///
/// # Errors
/// The runtime or the listener cannot be set up, or a token entry is bad.
pub(crate) fn run(g: GatewayRun<'_>) -> Result<(), String> {
    let GatewayRun {
        listener,
        settings,
        grpc,
        grpc_settings,
        grpc_counters,
        link,
        shared,
        counters,
        topics,
        max_frame,
        engine_durable,
        rate,
        tokens,
    } = g;
    let tls = match &settings.tls {
        Some(f) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(f)?)),
        None => None,
    };
    let grpc_tls = match &grpc_settings.tls {
        Some(f) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config_for(
            "grpc", f, b"h2",
        )?)),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("http gateway runtime: {e}"))?;
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let hub = Arc::new(pump::Hub::new(max_frame));
    let state = Arc::new(server::State {
        hub: Arc::clone(&hub),
        settings,
        tokens,
        topics,
        counters,
        // The engine's clock: the token buckets are shared with the ingest thread, which
        // counts nanoseconds from the same instant.
        start: shared.start,
        id_prefix: ((secs & 0x3F_FFFF) | 0x40_0000) << 40,
        next_id: AtomicU64::new(1),
        engine_durable,
        open: std::sync::atomic::AtomicUsize::new(0),
        clients: auth::ClientLimits::new(rate, 4096),
        tls,
    });
    let grpc_state = Arc::new(grpc::GrpcState {
        base: Arc::clone(&state),
        settings: grpc_settings,
        counters: grpc_counters,
        open: std::sync::atomic::AtomicUsize::new(0),
        tls: grpc_tls,
    });
    rt.block_on(async {
        let listener = listener
            .map(tokio::net::TcpListener::from_std)
            .transpose()
            .map_err(|e| format!("http gateway listener: {e}"))?;
        let grpc = grpc
            .map(tokio::net::TcpListener::from_std)
            .transpose()
            .map_err(|e| format!("grpc gateway listener: {e}"))?;
        // The accept loops borrow `shared` (not 'static): they run in this future, beside
        // the pump, not as spawned tasks; connections are spawned tasks.
        let accept = async {
            if let Some(l) = listener {
                server::accept_loop(l, Arc::clone(&state), shared).await;
            }
        };
        let accept_grpc = async {
            if let Some(l) = grpc {
                grpc::accept_loop(l, Arc::clone(&grpc_state), shared).await;
            }
        };
        let pump = pump::pump(&hub, link, shared);
        let mut accept = std::pin::pin!(accept);
        let mut accept_grpc = std::pin::pin!(accept_grpc);
        let mut pump = std::pin::pin!(pump);
        let mut accept_done = false;
        let mut grpc_done = false;
        std::future::poll_fn(|cx| {
            if !accept_done && accept.as_mut().poll(cx).is_ready() {
                accept_done = true;
            }
            if !grpc_done && accept_grpc.as_mut().poll(cx).is_ready() {
                grpc_done = true;
            }
            pump.as_mut().poll(cx)
        })
        .await;
        // Let the answers of the last requests go out.
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok::<(), String>(())
    })
}
