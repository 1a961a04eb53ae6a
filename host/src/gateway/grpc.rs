//! The gRPC ingest gateway (`[grpc]`, issue 17): `pinstream.v1.Ingest` (`Publish`,
//! `PublishStream`), `grpc.health.v1.Health` and server reflection, on the HTTP gateway's
//! thread and runtime.
//!
//! It shares everything after the parsing with the HTTP gateway: the tokens and their rate
//! buckets, the per-address limits of requests without a token, the id generator, and the
//! pump (`pump::Hub`) that hands BATCH frames to the ingest thread and books its
//! ACK and REJECT frames per request. Connections are served by hyper's HTTP/2 server (no
//! tonic transport): at most `grpc.max_connections`, each with at most
//! `grpc.max_concurrent_streams` streams and hyper's bounds on reset streams (the "rapid
//! reset" flood), TLS with the HTTP gateway's rustls set-up and ALPN `h2`.
//!
//! Back-pressure: `Publish` waits `grpc.backpressure_wait_ms` for room, then `UNAVAILABLE`
//! (nothing taken). `PublishStream` waits for room as long as it takes and reads no further
//! message meanwhile, so HTTP/2 flow control holds the client back: nothing is dropped.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pinstream_core::event::{EventHeader, Priority};
use pinstream_core::reason::Reason;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tonic::codegen::Service as _;
use tonic::{Code, Request, Response, Status};

use super::auth::{AuthError, Token};
use super::pump::{NotTaken, Outcome};
use super::server::State;
use super::tls::TlsFiles;
use crate::config::Config;
use crate::ingest::Shared;
use crate::prom::{MetricType, PromWriter};

/// The code generated from `proto/pinstream/v1/ingest.proto` (messages, server, client).
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    clippy::restriction
)]
pub mod proto {
    tonic::include_proto!("pinstream.v1");

    /// The encoded `FileDescriptorSet` of `pinstream/v1/ingest.proto` (for reflection).
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/pinstream_v1_descriptor.bin"));
}

use proto::ingest_server::{Ingest, IngestServer};
use proto::{
    Priority as ProtoPriority, PublishAck, PublishRequest, PublishResponse, Refusal, RefusalOutcome,
};

/// The gRPC gateway's settings (`[grpc]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcSettings {
    /// Where to listen; `None`: no gRPC.
    pub listen: Option<SocketAddr>,
    /// Connections open at once.
    pub max_connections: usize,
    /// Streams per connection at once.
    pub max_concurrent_streams: u32,
    /// The largest request message.
    pub max_message_bytes: usize,
    /// Events per request at most.
    pub max_events_per_request: usize,
    /// How long a `Publish` waits for room before `UNAVAILABLE`.
    pub backpressure_wait: Duration,
    /// Deadline of a TLS handshake (and of a keep-alive ping's answer).
    pub handshake_timeout: Duration,
    /// Requests of one stream in flight at most.
    pub stream_window: usize,
    /// `grpc.tls_*`: TLS only when set.
    pub tls: Option<TlsFiles>,
}

impl GrpcSettings {
    /// No gRPC.
    pub fn off() -> Self {
        Self::from_config(&Config::default())
    }

    /// The settings of `[grpc]`.
    pub fn from_config(c: &Config) -> Self {
        let g = &c.grpc;
        Self {
            listen: g.listen,
            max_connections: g.max_connections,
            max_concurrent_streams: g.max_concurrent_streams,
            max_message_bytes: g.max_message_bytes,
            max_events_per_request: g.max_events_per_request,
            backpressure_wait: g.backpressure_wait(),
            handshake_timeout: g.handshake_timeout(),
            stream_window: g.stream_window,
            tls: g
                .tls_cert
                .clone()
                .zip(g.tls_key.clone())
                .map(|(cert, key)| TlsFiles {
                    cert,
                    key,
                    client_ca: g.tls_client_ca.clone(),
                }),
        }
    }
}

/// The status codes counted.
const CODES: [Code; 8] = [
    Code::Ok,
    Code::InvalidArgument,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::Unavailable,
    Code::Unauthenticated,
    Code::OutOfRange,
    Code::Internal,
];

/// What the gRPC gateway counts (rendered on `/metrics`).
#[derive(Debug, Default)]
pub struct GrpcCounters {
    /// Requests (unary calls and stream messages) answered, by code.
    requests: [AtomicU64; CODES.len()],
    /// Events by outcome: stored, duplicates, dead-lettered, rejected.
    events: [AtomicU64; 4],
    /// `PublishStream` calls opened.
    pub streams: AtomicU64,
    /// Times a stream's message waited for room (flow control), each counted once.
    pub stream_waits: AtomicU64,
    /// Connections refused over `grpc.max_connections`.
    pub connections_refused: AtomicU64,
    /// TLS handshakes that failed or did not finish within `grpc.handshake_timeout_ms`.
    pub tls_handshake_failures: AtomicU64,
}

impl GrpcCounters {
    fn code(&self, code: Code) {
        let i = CODES
            .iter()
            .position(|&c| c == code)
            .unwrap_or(CODES.len() - 1);
        self.requests[i].fetch_add(1, Ordering::Relaxed);
    }

    fn outcome(&self, o: &Outcome) {
        for (c, n) in self
            .events
            .iter()
            .zip([o.stored, o.duplicates, o.dead_lettered, o.rejected])
        {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Requests answered with `code` so far.
    pub fn requests(&self, code: Code) -> u64 {
        CODES
            .iter()
            .position(|&c| c == code)
            .map_or(0, |i| self.requests[i].load(Ordering::Relaxed))
    }

    /// Events stored of answered requests so far.
    pub fn stored(&self) -> u64 {
        self.events[0].load(Ordering::Relaxed)
    }

    /// Renders the gateway's families.
    pub fn render(&self, w: &mut PromWriter<'_>) {
        let name = "pinstream_grpc_requests_total";
        w.family(
            name,
            MetricType::Counter,
            "gRPC gateway requests (Publish calls and PublishStream messages) answered, by status code (other codes are counted as internal).",
        );
        for (c, n) in CODES.iter().zip(&self.requests) {
            w.sample_u64(name, &[("code", code_name(*c))], n.load(Ordering::Relaxed));
        }
        let name = "pinstream_grpc_events_total";
        w.family(
            name,
            MetricType::Counter,
            "Events of acknowledged gRPC requests, by outcome.",
        );
        for (o, c) in ["stored", "duplicate", "dead_lettered", "rejected"]
            .iter()
            .zip(&self.events)
        {
            w.sample_u64(name, &[("outcome", o)], c.load(Ordering::Relaxed));
        }
        for (name, help, c) in [
            (
                "pinstream_grpc_streams_total",
                "PublishStream calls opened.",
                &self.streams,
            ),
            (
                "pinstream_grpc_stream_backpressure_waits_total",
                "PublishStream messages that waited for room on the way to the ingest thread (the stream was not read meanwhile: flow control).",
                &self.stream_waits,
            ),
            (
                "pinstream_grpc_connections_refused_total",
                "gRPC connections closed at once over grpc.max_connections.",
                &self.connections_refused,
            ),
            (
                "pinstream_grpc_tls_handshake_failures_total",
                "gRPC connections closed before HTTP/2: the TLS handshake failed or did not finish within grpc.handshake_timeout_ms.",
                &self.tls_handshake_failures,
            ),
        ] {
            w.family(name, MetricType::Counter, help);
            w.sample_u64(name, &[], c.load(Ordering::Relaxed));
        }
    }
}

fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "ok",
        Code::InvalidArgument => "invalid_argument",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::Unavailable => "unavailable",
        Code::Unauthenticated => "unauthenticated",
        Code::OutOfRange => "out_of_range",
        _ => "internal",
    }
}

/// What the gRPC services share: the HTTP gateway's state (tokens, limits, ids, the pump)
/// and their own settings and counters.
pub(crate) struct GrpcState {
    pub(crate) base: Arc<State>,
    pub(crate) settings: GrpcSettings,
    pub(crate) counters: Arc<GrpcCounters>,
    pub(crate) open: AtomicUsize,
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
}

/// The client's address, put into each request's extensions by the connection.
#[derive(Clone, Copy)]
struct PeerIp(IpAddr);

/// The `Ingest` service.
#[derive(Clone)]
struct IngestService(Arc<GrpcState>);

/// A request's events, checked and admitted, ready for the pump.
struct Ready<'m> {
    list: Vec<(EventHeader, &'m [u8])>,
    bytes: usize,
}

impl GrpcState {
    fn fail(&self, code: Code, msg: impl Into<String>) -> Status {
        self.counters.code(code);
        Status::new(code, msg)
    }

    /// The token of the call's metadata when tokens are configured.
    fn authenticate(&self, md: &tonic::metadata::MetadataMap) -> Result<Option<&Token>, Status> {
        let tokens = &self.base.tokens;
        if !tokens.enabled() {
            return Ok(None);
        }
        let h = md.get("authorization").map(|v| v.as_bytes());
        tokens.check(h).map(Some).map_err(|e| {
            self.fail(
                Code::Unauthenticated,
                match e {
                    AuthError::Missing => "missing authorization: Bearer <token> metadata",
                    AuthError::Wrong => "unknown token",
                },
            )
        })
    }

    /// Checks the request's events (`INVALID_ARGUMENT`), the token's topics
    /// (`PERMISSION_DENIED`) and rate or the address's (`RESOURCE_EXHAUSTED`), and gives ids
    /// to the events without one.
    fn prepare<'m>(
        &self,
        req: &'m PublishRequest,
        token: Option<&Token>,
        peer: Option<IpAddr>,
    ) -> Result<Ready<'m>, Status> {
        let st = &self.base;
        if req.events.is_empty() {
            return Err(self.fail(Code::InvalidArgument, "events: empty"));
        }
        if req.events.len() > self.settings.max_events_per_request {
            return Err(self.fail(
                Code::InvalidArgument,
                format!(
                    "events: {} events, at most {} (grpc.max_events_per_request)",
                    req.events.len(),
                    self.settings.max_events_per_request
                ),
            ));
        }
        let now_wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let mut list = Vec::with_capacity(req.events.len());
        for (i, e) in req.events.iter().enumerate() {
            let bad = |field: &str, msg: String| {
                self.fail(Code::InvalidArgument, format!("events[{i}].{field}: {msg}"))
            };
            let topic = if e.topic.is_empty() {
                0
            } else {
                // A name, or (as the HTTP gateway takes) the topic's id as a number.
                st.topics
                    .iter()
                    .position(|t| *t == e.topic)
                    .or_else(|| {
                        e.topic
                            .parse::<usize>()
                            .ok()
                            .filter(|&i| i < st.topics.len())
                    })
                    .and_then(|i| u16::try_from(i).ok())
                    .ok_or_else(|| {
                        bad(
                            "topic",
                            format!(
                                "unknown topic {:?} (pipeline.topics: {})",
                                e.topic,
                                st.topics.join(", ")
                            ),
                        )
                    })?
            };
            let priority = match ProtoPriority::try_from(e.priority) {
                Ok(ProtoPriority::Unspecified | ProtoPriority::Medium) => Priority::Medium,
                Ok(ProtoPriority::Critical) => Priority::Critical,
                Ok(ProtoPriority::High) => Priority::High,
                Ok(ProtoPriority::Low) => Priority::Low,
                Ok(ProtoPriority::Batch) => Priority::Batch,
                Err(_) => {
                    return Err(bad(
                        "priority",
                        format!("unknown value {}: 1 to 5", e.priority),
                    ));
                }
            };
            if e.payload.len() > pinstream_core::wire::MAX_PAYLOAD_LEN {
                return Err(bad(
                    "payload",
                    format!(
                        "{} bytes, at most {}",
                        e.payload.len(),
                        pinstream_core::wire::MAX_PAYLOAD_LEN
                    ),
                ));
            }
            let id = if e.id == 0 { st.next_id() } else { e.id };
            let ts = if e.timestamp == 0 {
                now_wall
            } else {
                e.timestamp
            };
            let mut h = EventHeader::new(id, topic, priority, ts);
            if let Some(v) = e.value {
                h = h.with_value(v);
            }
            list.push((h, &e.payload[..]));
        }
        let n = u32::try_from(list.len()).unwrap_or(u32::MAX);
        let now = u64::try_from(st.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        match token {
            None => {
                if let Some(ip) = peer {
                    if !st.clients.admit(ip, n, now) {
                        return Err(self.fail(
                            Code::ResourceExhausted,
                            format!(
                                "{ip} is over the per-client rate (pipeline.rate_per_source, burst_per_source)"
                            ),
                        ));
                    }
                }
            }
            Some(t) => {
                if let Some((i, (h, _))) = list
                    .iter()
                    .enumerate()
                    .find(|(_, (h, _))| !t.allows(h.topic))
                {
                    let topic = st
                        .topics
                        .get(usize::from(h.topic))
                        .map_or("?", String::as_str);
                    return Err(self.fail(
                        Code::PermissionDenied,
                        format!(
                            "events[{i}].topic: token {:?} may not send to topic {topic:?}",
                            t.name
                        ),
                    ));
                }
                if !t.admit(n, now) {
                    return Err(self.fail(
                        Code::ResourceExhausted,
                        format!(
                            "token {:?} is over its rate ([[auth.tokens]] rate, burst)",
                            t.name
                        ),
                    ));
                }
            }
        }
        let bytes = st
            .hub
            .encoded_len(list.iter().map(|(_, p)| p.len()))
            .ok_or_else(|| {
                self.fail(
                    Code::InvalidArgument,
                    "an event does not fit one frame of tcp.max_frame_len",
                )
            })?;
        Ok(Ready { list, bytes })
    }

    fn response(&self, o: &Outcome) -> PublishResponse {
        self.counters.code(Code::Ok);
        self.counters.outcome(o);
        PublishResponse {
            stored: o.stored,
            duplicates: o.duplicates,
            dead_lettered: o.dead_lettered,
            rejected: o.rejected,
            refusals: o
                .refusals
                .iter()
                .map(|&(index, id, code)| {
                    let reason = Reason::from_code(code);
                    let outcome = match reason {
                        Some(r) if !r.is_rejection() => RefusalOutcome::DeadLettered,
                        _ => RefusalOutcome::Rejected,
                    };
                    Refusal {
                        index: u32::try_from(index).unwrap_or(u32::MAX),
                        id,
                        outcome: outcome.into(),
                        reason: reason.map_or("unknown", Reason::name).to_owned(),
                        code: code.into(),
                    }
                })
                .collect(),
            durable: self.base.engine_durable,
        }
    }

    fn not_taken(&self, why: NotTaken) -> Status {
        match why {
            NotTaken::Full => self.fail(
                Code::Unavailable,
                "the engine is full: nothing of this request was taken; retry",
            ),
            NotTaken::Stopped => self.fail(
                Code::Unavailable,
                "the engine stopped before acknowledging this request; it may be retried",
            ),
        }
    }
}

type Answer = oneshot::Receiver<Result<Outcome, NotTaken>>;

/// One stream request on its way: refused at once, or waiting for its outcome.
enum Pending {
    Refused(u64, Status),
    Waiting(u64, Answer),
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn publish(
        &self,
        req: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let st = &self.0;
        let token = st.authenticate(req.metadata())?;
        let peer = req.extensions().get::<PeerIp>().map(|p| p.0);
        let msg = req.get_ref();
        let ready = st.prepare(msg, token, peer)?;
        let rx = st
            .base
            .hub
            .submit(&ready.list, ready.bytes, st.settings.backpressure_wait)
            .await
            .map_err(|w| st.not_taken(w))?;
        match rx.await {
            Ok(Ok(o)) => Ok(Response::new(st.response(&o))),
            Ok(Err(w)) => Err(st.not_taken(w)),
            Err(_) => Err(st.not_taken(NotTaken::Stopped)),
        }
    }

    type PublishStreamStream = tokio_stream::wrappers::ReceiverStream<Result<PublishAck, Status>>;

    async fn publish_stream(
        &self,
        req: Request<tonic::Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let st = Arc::clone(&self.0);
        // The token is the call's: checked once, before any message is read.
        st.authenticate(req.metadata())?;
        let auth = req.metadata().get("authorization").cloned();
        st.counters.streams.fetch_add(1, Ordering::Relaxed);
        let peer = req.extensions().get::<PeerIp>().map(|p| p.0);
        let mut stream = req.into_inner();
        let window = st.settings.stream_window;
        let (pend_tx, mut pend_rx) = mpsc::channel::<Pending>(window);
        let (out_tx, out_rx) = mpsc::channel(window);
        // The reader: one message at a time, each waiting for room before the next is read.
        let reader = Arc::clone(&st);
        tokio::spawn(async move {
            let st = reader;
            // Checked above: found again (by its hash) for the task's own borrow.
            let token = if st.base.tokens.enabled() {
                st.base
                    .tokens
                    .check(auth.as_ref().map(|v| v.as_bytes()))
                    .ok()
            } else {
                None
            };
            loop {
                let msg = match stream.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) | Err(_) => return,
                };
                let seq = msg.sequence;
                let p = match st.prepare(&msg, token, peer) {
                    Err(s) => Pending::Refused(seq, s),
                    Ok(ready) => {
                        let mut waited = false;
                        loop {
                            match st
                                .base
                                .hub
                                .submit(&ready.list, ready.bytes, Duration::from_millis(200))
                                .await
                            {
                                Ok(rx) => break Pending::Waiting(seq, rx),
                                Err(NotTaken::Full) => {
                                    if !waited {
                                        waited = true;
                                        st.counters.stream_waits.fetch_add(1, Ordering::Relaxed);
                                    }
                                    if pend_tx.is_closed() {
                                        return;
                                    }
                                }
                                Err(NotTaken::Stopped) => {
                                    break Pending::Refused(seq, st.not_taken(NotTaken::Stopped));
                                }
                            }
                        }
                    }
                };
                if pend_tx.send(p).await.is_err() {
                    return;
                }
            }
        });
        // The acker: the answers in the order of the requests.
        tokio::spawn(async move {
            while let Some(p) = pend_rx.recv().await {
                let ack = match p {
                    Pending::Refused(seq, s) => PublishAck {
                        sequence: seq,
                        response: None,
                        code: s.code() as u32,
                        message: s.message().to_owned(),
                    },
                    Pending::Waiting(seq, rx) => match rx.await {
                        Ok(Ok(o)) => PublishAck {
                            sequence: seq,
                            response: Some(st.response(&o)),
                            code: 0,
                            message: String::new(),
                        },
                        Ok(Err(w)) => {
                            let _ = out_tx.send(Err(st.not_taken(w))).await;
                            return;
                        }
                        Err(_) => {
                            let _ = out_tx.send(Err(st.not_taken(NotTaken::Stopped))).await;
                            return;
                        }
                    },
                };
                if out_tx.send(Ok(ack)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            out_rx,
        )))
    }
}

/// Accepts gRPC connections until the engine stops.
pub(crate) async fn accept_loop(listener: TcpListener, state: Arc<GrpcState>, shared: &Shared) {
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_service_status("pinstream.v1.Ingest", tonic_health::ServingStatus::Serving)
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .ok();
    // v1alpha too: older grpcurl and grpc_cli ask for it.
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .ok();
    let ingest = IngestServer::new(IngestService(Arc::clone(&state)))
        .max_decoding_message_size(state.settings.max_message_bytes);
    let router = Router {
        ingest,
        health: health_svc,
        reflection,
        reflection_alpha,
    };
    loop {
        if shared.stop.load(Ordering::Acquire) || shared.ingest_exited.load(Ordering::Acquire) {
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            return;
        }
        let accepted = tokio::time::timeout(Duration::from_millis(20), listener.accept()).await;
        let (stream, peer) = match accepted {
            Err(_) => continue,
            Ok(Ok(s)) => s,
            Ok(Err(_)) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if state.open.load(Ordering::Relaxed) >= state.settings.max_connections {
            state
                .counters
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        state.open.fetch_add(1, Ordering::Relaxed);
        let st = Arc::clone(&state);
        let router = router.clone();
        tokio::spawn(async move {
            match st.tls.clone() {
                None => serve(stream, &st, router, peer.ip()).await,
                Some(acceptor) => {
                    let hs = tokio::time::timeout(
                        st.settings.handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await;
                    match hs {
                        Ok(Ok(tls)) => serve(tls, &st, router, peer.ip()).await,
                        Ok(Err(_)) | Err(_) => {
                            st.counters
                                .tls_handshake_failures
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            st.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// A gRPC service as the router calls it (the generated servers, health, reflection).
trait GrpcService:
    tonic::codegen::Service<
        hyper::Request<Incoming>,
        Response = HttpResponse,
        Error = std::convert::Infallible,
        Future: Send,
    > + Clone
    + Send
    + 'static
{
}

impl<T> GrpcService for T where
    T: tonic::codegen::Service<
            hyper::Request<Incoming>,
            Response = HttpResponse,
            Error = std::convert::Infallible,
            Future: Send,
        > + Clone
        + Send
        + 'static
{
}

/// The services by path.
#[derive(Clone)]
struct Router<H, R, A> {
    ingest: IngestServer<IngestService>,
    health: H,
    reflection: Option<R>,
    reflection_alpha: Option<A>,
}

type HttpResponse = hyper::Response<tonic::body::Body>;

impl<H: GrpcService, R: GrpcService, A: GrpcService> Router<H, R, A> {
    async fn route(mut self, mut req: hyper::Request<Incoming>, ip: IpAddr) -> HttpResponse {
        req.extensions_mut().insert(PeerIp(ip));
        let path = req.uri().path();
        let r = if path.starts_with("/pinstream.v1.Ingest/") {
            self.ingest.call(req).await
        } else if path.starts_with("/grpc.health.v1.Health/") {
            self.health.call(req).await
        } else if let (true, Some(refl)) = (
            path.starts_with("/grpc.reflection.v1.ServerReflection/"),
            self.reflection.as_mut(),
        ) {
            refl.call(req).await
        } else if let (true, Some(refl)) = (
            path.starts_with("/grpc.reflection.v1alpha.ServerReflection/"),
            self.reflection_alpha.as_mut(),
        ) {
            refl.call(req).await
        } else {
            Ok(Status::unimplemented(format!("no such method: {path}")).into_http())
        };
        match r {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }
}

/// Serves one connection's calls (plain TCP or TLS) until it closes.
async fn serve<S, H, R, A>(stream: S, st: &GrpcState, router: Router<H, R, A>, ip: IpAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: GrpcService,
    R: GrpcService,
    A: GrpcService,
{
    let service = service_fn(move |req| {
        let r = router.clone();
        async move { Ok::<_, std::convert::Infallible>(r.route(req, ip).await) }
    });
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(st.settings.max_concurrent_streams)
        // The "rapid reset" flood: streams a client opens and resets at once are bounded.
        .max_pending_accept_reset_streams(Some(64))
        .max_local_error_reset_streams(Some(1024))
        .max_header_list_size(16 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(st.settings.handshake_timeout)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_frame_size(1 << 16);
    let _ = b.serve_connection(TokioIo::new(stream), service).await;
}
