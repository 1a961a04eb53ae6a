//! The HTTP/1.1 server: connections within `http.max_connections`, hyper with a header
//! deadline, bodies bounded in size and time, and `POST /v1/events`.

use std::convert::Infallible;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use pinstream_core::event::EventHeader;
use pinstream_core::reason::Reason;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use super::auth::{AuthError, Tokens};
use super::events::{self, BodyKind, EventRules, HttpEvent};
use super::pump::{Hub, NotTaken, Outcome};
use super::{GatewayCounters, HttpSettings};
use crate::ingest::Shared;

/// What every request's task shares.
pub(crate) struct State {
    pub(crate) hub: Arc<Hub>,
    pub(crate) settings: HttpSettings,
    pub(crate) tokens: std::sync::Arc<Tokens>,
    pub(crate) topics: Vec<String>,
    pub(crate) counters: Arc<GatewayCounters>,
    /// Gateway start, for the rate limits' ticks.
    pub(crate) start: Instant,
    /// The high bits of generated ids (see [`State::next_id`]).
    pub(crate) id_prefix: u64,
    pub(crate) next_id: std::sync::atomic::AtomicU64,
    /// The engine's ack mode is `durable`.
    pub(crate) engine_durable: bool,
    pub(crate) open: AtomicUsize,
    /// The engine's per-client rate for requests without a token, by address.
    pub(crate) clients: super::auth::ClientLimits,
    /// HTTPS: every connection's TLS handshake first (`http.tls_cert`).
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
}

impl State {
    /// An id for an event that has none: the gateway's start time in seconds (23 bits, the
    /// top bit set so it never collides with a producer-generated id's small prefixes) above
    /// a 40-bit counter.
    pub(crate) fn next_id(&self) -> u64 {
        self.id_prefix | (self.next_id.fetch_add(1, Ordering::Relaxed) & ((1 << 40) - 1))
    }
}

/// Accepts connections until the engine stops.
pub(crate) async fn accept_loop(listener: TcpListener, state: Arc<State>, shared: &Shared) {
    loop {
        if shared.stop.load(Ordering::Acquire) || shared.ingest_exited.load(Ordering::Acquire) {
            return;
        }
        let accepted = tokio::time::timeout(Duration::from_millis(20), listener.accept()).await;
        let (mut stream, peer) = match accepted {
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
            state.counters.status(503);
            let retry = state.settings.retry_after_secs;
            tokio::spawn(async move {
                let msg = format!(
                    "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {retry}\r\nContent-Type: application/json\r\nContent-Length: 40\r\nConnection: close\r\n\r\n{{\"error\":\"too many connections (http)\"}}\n"
                );
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), stream.write_all(msg.as_bytes()))
                        .await;
            });
            continue;
        }
        let _ = stream.set_nodelay(true);
        state.open.fetch_add(1, Ordering::Relaxed);
        let st = Arc::clone(&state);
        tokio::spawn(async move {
            match st.tls.clone() {
                None => serve(stream, &st, peer.ip()).await,
                // The handshake runs in the connection's own task, under the header deadline:
                // a slow or failing client holds only its own connection.
                Some(acceptor) => {
                    let hs =
                        tokio::time::timeout(st.settings.header_timeout, acceptor.accept(stream))
                            .await;
                    match hs {
                        Ok(Ok(tls)) => serve(tls, &st, peer.ip()).await,
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

/// Serves one connection's requests (plain TCP or TLS) until it closes.
async fn serve<S>(stream: S, st: &Arc<State>, ip: std::net::IpAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let st = Arc::clone(st);
        service_fn(move |req| answer(req, Arc::clone(&st), ip))
    };
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(st.settings.header_timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// A JSON answer.
fn reply(state: &State, status: StatusCode, body: String) -> Response<String> {
    state.counters.status(status.as_u16());
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if matches!(
        status,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
    ) {
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(state.settings.retry_after_secs),
        );
    }
    r
}

/// `{"error": …}` plus optional fields.
fn error(
    state: &State,
    status: StatusCode,
    message: &str,
    extra: &[(&str, &str)],
) -> Response<String> {
    let mut m = serde_json::Map::new();
    m.insert("error".into(), message.into());
    for (k, v) in extra {
        m.insert((*k).into(), (*v).into());
    }
    reply(
        state,
        status,
        serde_json::Value::Object(m).to_string() + "\n",
    )
}

/// When to answer a request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AckParam {
    None,
    Accepted,
    Durable,
}

async fn answer(
    req: Request<Incoming>,
    state: Arc<State>,
    peer: std::net::IpAddr,
) -> Result<Response<String>, Infallible> {
    let (parts, mut body) = req.into_parts();
    let mut r = handle(&parts, &mut body, &state, peer).await;
    // Refused before its body was read (401, 404, …): a body within the limit is read and
    // thrown away so that the connection can serve the next request; a larger one closes it.
    if !body.is_end_stream() {
        let small = body.size_hint().lower() <= state.settings.max_body_bytes as u64;
        let drained = small
            && tokio::time::timeout(state.settings.body_timeout, async {
                let mut left = state.settings.max_body_bytes;
                while let Some(Ok(frame)) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                    if let Ok(d) = frame.into_data() {
                        if d.len() > left {
                            return false;
                        }
                        left -= d.len();
                    }
                }
                true
            })
            .await
            .unwrap_or(false);
        if !drained {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    Ok(r)
}

/// `POST /v1/events`: each step refuses with its answer, or hands on.
async fn handle(
    req: &hyper::http::request::Parts,
    body: &mut Incoming,
    state: &State,
    peer: std::net::IpAddr,
) -> Response<String> {
    match events_request(req, body, state, peer).await {
        Ok(r) => r,
        Err(r) => *r,
    }
}

/// A step's result: go on with `T`, or answer this refusal (boxed: refusals are the rare
/// path, and a `Response` is large).
type Step<T> = Result<T, Box<Response<String>>>;

/// Refuses with `r`.
fn refuse<T>(r: Response<String>) -> Step<T> {
    Err(Box::new(r))
}

async fn events_request(
    req: &hyper::http::request::Parts,
    body: &mut Incoming,
    state: &State,
    peer: std::net::IpAddr,
) -> Step<Response<String>> {
    route(req, state)?;
    // Authentication before anything is read.
    let token = authenticate(req, state)?;
    let ack = ack_param(req, state)?;
    let kind = body_kind(req);
    let buf = read_body(body, state).await?;
    let mut parsed = parse_events(&buf, kind, state)?;
    admit(&parsed, token, peer, state)?;
    Ok(submit(&mut parsed, ack, state).await)
}

/// 404 for another path, 405 for another method.
fn route(req: &hyper::http::request::Parts, state: &State) -> Step<()> {
    if req.uri.path() != "/v1/events" {
        return refuse(error(
            state,
            StatusCode::NOT_FOUND,
            "no such path: POST /v1/events",
            &[],
        ));
    }
    if req.method != Method::POST {
        let mut r = error(state, StatusCode::METHOD_NOT_ALLOWED, "POST only", &[]);
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return refuse(r);
    }
    Ok(())
}

/// The request's token when tokens are configured (401 without a known one).
fn authenticate<'s>(
    req: &hyper::http::request::Parts,
    state: &'s State,
) -> Step<Option<&'s super::auth::Token>> {
    if !state.tokens.enabled() {
        return Ok(None);
    }
    let h = req
        .headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match state.tokens.check(h) {
        Ok(t) => Ok(Some(t)),
        Err(e) => {
            state.counters.auth_failed.fetch_add(1, Ordering::Relaxed);
            let msg = match e {
                AuthError::Missing => "missing Authorization: Bearer <token>",
                AuthError::Wrong => "unknown token",
            };
            let mut r = error(state, StatusCode::UNAUTHORIZED, msg, &[]);
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"pinstream\""),
            );
            refuse(r)
        }
    }
}

/// `?ack=`, or the engine's mode (400 for another value, or `durable` the engine cannot keep).
fn ack_param(req: &hyper::http::request::Parts, state: &State) -> Step<AckParam> {
    let ack = match query_ack(req.uri.query()) {
        Ok(Some(a)) => a,
        Ok(None) if state.engine_durable => AckParam::Durable,
        Ok(None) => AckParam::Accepted,
        Err(v) => {
            return refuse(error(
                state,
                StatusCode::BAD_REQUEST,
                &format!("ack={v}: expected durable, accepted or none"),
                &[("field", "ack")],
            ));
        }
    };
    if ack == AckParam::Durable && !state.engine_durable {
        return refuse(error(
            state,
            StatusCode::BAD_REQUEST,
            "ack=durable: the engine acknowledges on acceptance (engine.ack); ask for accepted or none",
            &[("field", "ack")],
        ));
    }
    Ok(ack)
}

/// NDJSON by its content type, else JSON.
fn body_kind(req: &hyper::http::request::Parts) -> BodyKind {
    match req
        .headers
        .get(header::CONTENT_TYPE)
        .map(HeaderValue::as_bytes)
    {
        Some(ct)
            if ct.starts_with(b"application/x-ndjson")
                || ct.starts_with(b"application/jsonlines")
                || ct.starts_with(b"application/jsonl") =>
        {
            BodyKind::Ndjson
        }
        _ => BodyKind::Json,
    }
}

/// The body: its announced length checked first (413 before a byte is read), then read
/// within the limit (413) and the deadline (408, the connection closed).
async fn read_body(body: &mut Incoming, state: &State) -> Step<Vec<u8>> {
    let limit = state.settings.max_body_bytes;
    let announced = body.size_hint().lower();
    if announced > limit as u64 {
        return refuse(too_large(state, announced));
    }
    let mut buf: Vec<u8> = Vec::with_capacity(usize::try_from(announced).unwrap_or(0).min(limit));
    let read = tokio::time::timeout(state.settings.body_timeout, async {
        loop {
            match poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
                None => return Ok(()),
                Some(Err(e)) => return Err(Some(e.to_string())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if buf.len() + data.len() > limit {
                            // Over the limit (`None`).
                            return Err(None);
                        }
                        buf.extend_from_slice(&data);
                    }
                }
            }
        }
    })
    .await;
    match read {
        Err(_) => {
            state.counters.body_timeouts.fetch_add(1, Ordering::Relaxed);
            let mut r = error(
                state,
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive within http.body_timeout_ms",
                &[],
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            refuse(r)
        }
        Ok(Err(None)) => refuse(too_large(state, buf.len() as u64 + 1)),
        Ok(Err(Some(e))) => refuse(error(
            state,
            StatusCode::BAD_REQUEST,
            &format!("reading the body: {e}"),
            &[],
        )),
        Ok(Ok(())) => Ok(buf),
    }
}

/// The events of the body (400 naming the field and the place; 413 for too many).
fn parse_events<'b>(buf: &'b [u8], kind: BodyKind, state: &State) -> Step<Vec<HttpEvent<'b>>> {
    let now_wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let rules = EventRules {
        topics: &state.topics,
        now_wall,
        max_events: state.settings.max_events_per_request,
    };
    events::parse(buf, kind, &rules).map_err(|bad| {
        if bad.message.starts_with("more than") {
            return Box::new(error(
                state,
                StatusCode::PAYLOAD_TOO_LARGE,
                &bad.message,
                &[("at", &bad.at)],
            ));
        }
        let mut extra = vec![("at", bad.at.as_str())];
        if let Some(f) = bad.field {
            extra.push(("field", f));
        }
        Box::new(error(state, StatusCode::BAD_REQUEST, &bad.message, &extra))
    })
}

/// The token's topics (403) and rate (429), or without a token the address's share of the
/// engine's per-client rate (429).
fn admit(
    parsed: &[HttpEvent<'_>],
    token: Option<&super::auth::Token>,
    peer: std::net::IpAddr,
    state: &State,
) -> Step<()> {
    let n = u32::try_from(parsed.len()).unwrap_or(u32::MAX);
    let now = u64::try_from(state.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let Some(t) = token else {
        if state.clients.admit(peer, n, now) {
            return Ok(());
        }
        state.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
        return refuse(error(
            state,
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "{peer} is over the per-client rate (pipeline.rate_per_source, burst_per_source)"
            ),
            &[],
        ));
    };
    if let Some((i, e)) = parsed
        .iter()
        .enumerate()
        .find(|(_, e)| !t.allows(e.header.topic))
    {
        state.counters.forbidden.fetch_add(1, Ordering::Relaxed);
        let topic = state
            .topics
            .get(usize::from(e.header.topic))
            .map_or("?", String::as_str);
        return refuse(error(
            state,
            StatusCode::FORBIDDEN,
            &format!("token {:?} may not send to topic {topic:?}", t.name),
            &[("at", &format!("event {i}")), ("field", "topic")],
        ));
    }
    if !t.admit(n, now) {
        state.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
        return refuse(error(
            state,
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "token {:?} is over its rate ([[auth.tokens]] rate, burst)",
                t.name
            ),
            &[],
        ));
    }
    Ok(())
}

/// Gives ids to the events without one, hands them to the ingest thread and answers: at
/// once for `ack=none` (202), else with their outcome (200), or 503.
async fn submit(parsed: &mut [HttpEvent<'_>], ack: AckParam, state: &State) -> Response<String> {
    for e in parsed.iter_mut().filter(|e| !e.id_given) {
        e.header.id = state.next_id();
    }
    let Some(bytes) = state
        .hub
        .encoded_len(parsed.iter().map(|e| e.payload.len()))
    else {
        return error(
            state,
            StatusCode::PAYLOAD_TOO_LARGE,
            "an event does not fit one frame of tcp.max_frame_len",
            &[],
        );
    };
    let list: Vec<(EventHeader, &[u8])> = parsed.iter().map(|e| (e.header, &*e.payload)).collect();
    let rx = match state
        .hub
        .submit(&list, bytes, state.settings.backpressure_wait)
        .await
    {
        Ok(rx) => rx,
        Err(why) => return unavailable(state, why),
    };
    let events = list.len() as u64;
    if ack == AckParam::None {
        // Handed to the ingest thread; its outcome is counted when it comes, unseen here.
        let counters = Arc::clone(&state.counters);
        tokio::spawn(async move {
            match rx.await {
                Ok(Ok(o)) => counters.outcome(&o),
                // The engine stopped with these still queued (its drain ran out of time):
                // counted and said, never lost unseen.
                _ => {
                    counters
                        .not_taken_at_stop
                        .fetch_add(events, Ordering::Relaxed);
                    tracing::warn!(
                        "http: {events} event(s) of an ack=none request answered 202 were not \
                         taken in before the engine stopped"
                    );
                }
            }
        });
        return reply(
            state,
            StatusCode::ACCEPTED,
            format!("{{\"ack\":\"none\",\"events\":{events}}}\n"),
        );
    }
    match rx.await {
        Ok(Ok(outcome)) => {
            state.counters.outcome(&outcome);
            let ack_name = if state.engine_durable {
                "durable"
            } else {
                "accepted"
            };
            reply(state, StatusCode::OK, outcome_json(&outcome, ack_name))
        }
        Ok(Err(why)) => unavailable(state, why),
        Err(_) => unavailable(state, NotTaken::Stopped),
    }
}

fn too_large(state: &State, len: u64) -> Response<String> {
    let mut r = error(
        state,
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!(
            "body of {len} bytes or more: at most {} (http.max_body_bytes)",
            state.settings.max_body_bytes
        ),
        &[],
    );
    // The rest of the body is not read: the connection cannot be reused.
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn unavailable(state: &State, why: NotTaken) -> Response<String> {
    let msg = match why {
        NotTaken::Full => {
            state.counters.backpressure.fetch_add(1, Ordering::Relaxed);
            "the engine is full: nothing of this request was taken; retry after Retry-After"
        }
        NotTaken::Stopped => {
            "the engine stopped before acknowledging this request; it may be retried"
        }
    };
    error(state, StatusCode::SERVICE_UNAVAILABLE, msg, &[])
}

fn query_ack(query: Option<&str>) -> Result<Option<AckParam>, String> {
    let Some(q) = query else { return Ok(None) };
    for pair in q.split('&') {
        if let Some(v) = pair.strip_prefix("ack=") {
            return match v {
                "durable" => Ok(Some(AckParam::Durable)),
                "accepted" => Ok(Some(AckParam::Accepted)),
                "none" => Ok(Some(AckParam::None)),
                other => Err(other.to_owned()),
            };
        }
    }
    Ok(None)
}

/// `{"stored":…,"duplicates":…,"dead_lettered":…,"rejected":…,"ack":…,"refusals":[…]}`,
/// written directly (the common answer has no refusals: no `Value` tree for it).
fn outcome_json(o: &Outcome, ack: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(128 + o.refusals.len() * 96);
    let _ = write!(
        out,
        "{{\"stored\":{},\"duplicates\":{},\"dead_lettered\":{},\"rejected\":{},\"ack\":\"{ack}\",\"refusals\":[",
        o.stored, o.duplicates, o.dead_lettered, o.rejected
    );
    for (i, &(index, id, code)) in o.refusals.iter().enumerate() {
        let reason = Reason::from_code(code);
        let outcome = match reason {
            Some(r) if !r.is_rejection() => "dead_lettered",
            _ => "rejected",
        };
        // Reason names are snake_case identifiers: nothing to escape.
        let name = reason.map_or("unknown", Reason::name);
        let _ = write!(
            out,
            "{}{{\"index\":{index},\"id\":{id},\"outcome\":\"{outcome}\",\"reason\":\"{name}\",\"code\":{code}}}",
            if i == 0 { "" } else { "," }
        );
    }
    out.push_str("]}\n");
    out
}
