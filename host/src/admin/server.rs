//! The admin server proper: accepts connections, keeps them within `max_connections`, serves
//! each with hyper's HTTP/1.1 under one deadline, answers and counts the refusals.
//!
//! Everything here runs on the admin thread's single-threaded runtime, except the source's
//! renders, which run on the runtime's blocking threads (a render that takes long holds a
//! helper thread, never the server).

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io::Write as _;
use std::net::Shutdown;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::{Instant, sleep, sleep_until};

use super::{AdminOptions, AdminSource, MAX_HEAD};
use crate::prom::{MetricType, PromWriter};

/// How long the accept loop waits after a failed `accept` (out of file descriptors, …)
/// rather than spin on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// The statuses a connection is refused with, each with its own count.
const REFUSALS: [(u16, &str); 4] = [(400, "400"), (408, "408"), (431, "431"), (503, "503")];

const TEXT: &str = "text/plain; charset=utf-8";
const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON: &str = "application/json";

/// What the server counts; rendered after the source's figures on `/metrics`.
#[derive(Debug, Default)]
struct Counters {
    /// By [`REFUSALS`] index.
    refusals: [AtomicU64; REFUSALS.len()],
    /// Connections open now (served or being refused with `408`).
    open: AtomicU64,
}

impl Counters {
    fn refused(&self, status: u16) {
        let i = REFUSALS.iter().position(|&(s, _)| s == status);
        debug_assert!(i.is_some(), "{status} is not a refusal status");
        if let Some(i) = i {
            self.refusals[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn render(&self, out: &mut String) {
        let mut w = PromWriter::new(out);
        let name = "pinstream_admin_refusals_total";
        w.family(
            name,
            MetricType::Counter,
            "Admin connections refused, by the status answered: 400 not HTTP/1.x, 408 request not complete within admin.request_timeout_ms (or closed to make room for a newer connection, or cut off mid-answer), 431 request head over 8 KiB, 503 admin.max_connections all busy.",
        );
        for ((_, status), count) in REFUSALS.iter().zip(&self.refusals) {
            w.sample_u64(name, &[("status", status)], count.load(Ordering::Relaxed));
        }
        w.single(
            "pinstream_admin_connections_open",
            MetricType::Gauge,
            "Admin connections open now.",
            self.open.load(Ordering::Relaxed) as f64,
        );
    }
}

/// What every connection's task shares.
pub(super) struct Shared {
    source: Arc<dyn AdminSource>,
    options: AdminOptions,
    counters: Counters,
}

impl Shared {
    pub(super) fn new(source: Arc<dyn AdminSource>, options: AdminOptions) -> Self {
        Self {
            source,
            options,
            counters: Counters::default(),
        }
    }
}

/// One open connection as the accept loop sees it. The connection's task holds the other
/// reference: a slot whose count has dropped to one is closed.
struct Slot {
    /// Set once hyper has read the whole request head; from then on the connection is being
    /// answered and is never evicted.
    started: AtomicBool,
    /// Set once any byte arrived: a client sending its head piecemeal (or slowly) has shown
    /// it is slow; one that has sent nothing yet may simply not have been scheduled.
    got_bytes: AtomicBool,
    /// When it was accepted.
    born: Instant,
    /// Wakes the task to answer `408` and close (room for a newer connection).
    evict: Notify,
}

/// Accepts connections until `stop` is notified; the caller drops the runtime afterwards,
/// which closes the connections still open.
pub(super) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: &Notify) {
    // In accept order: the oldest first.
    let mut slots: Vec<Arc<Slot>> = Vec::new();
    let mut stopped = pin!(stop.notified());
    loop {
        let accepted = poll_fn(|cx| {
            if stopped.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            listener.poll_accept(cx).map(Some)
        })
        .await;
        let stream = match accepted {
            None => break,
            Some(Ok((stream, _))) => stream,
            Some(Err(_)) => {
                sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        slots.retain(|s| Arc::strong_count(s) > 1);
        if slots.len() >= shared.options.max_connections {
            // The oldest incomplete request that has shown it is slow (bytes came, the head
            // is not whole, or nothing came for `EVICT_GRACE`); failing that, the oldest
            // incomplete one. A scrape whose head has not arrived yet because its sender
            // was not scheduled is thus not the first to go.
            let now = Instant::now();
            let unstarted = |s: &Arc<Slot>| !s.started.load(Ordering::Relaxed);
            let slow = |s: &Arc<Slot>| {
                unstarted(s)
                    && (s.got_bytes.load(Ordering::Relaxed)
                        || now.duration_since(s.born) >= EVICT_GRACE)
            };
            match slots
                .iter()
                .position(slow)
                .or_else(|| slots.iter().position(unstarted))
            {
                Some(oldest) => slots.remove(oldest).evict.notify_one(),
                None => {
                    refuse(
                        stream,
                        503,
                        "admin endpoint busy: too many connections (admin.max_connections); retry\n",
                    );
                    shared.counters.refused(503);
                    continue;
                }
            }
        }
        let slot = Arc::new(Slot {
            started: AtomicBool::new(false),
            got_bytes: AtomicBool::new(false),
            born: Instant::now(),
            evict: Notify::new(),
        });
        slots.push(Arc::clone(&slot));
        tokio::spawn(serve(stream, slot, Arc::clone(&shared)));
        // Let the new connection read a head that has already arrived before accepting more:
        // a burst of newer connections cannot evict it before it had its chance.
        tokio::task::yield_now().await;
    }
}

/// A connection younger than this that has sent nothing is evicted only when every other
/// incomplete one is too.
const EVICT_GRACE: Duration = Duration::from_millis(100);

/// The connection's stream, noting in its slot when the first byte arrives.
struct Counting {
    stream: TcpStream,
    slot: Arc<Slot>,
}

impl tokio::io::AsyncRead for Counting {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.slot.got_bytes.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl tokio::io::AsyncWrite for Counting {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// How a connection's exchange ended.
enum End {
    /// hyper finished: answered (`Ok`), or refused a malformed head, or the client left.
    Done(hyper::Result<()>),
    /// The request deadline passed.
    Deadline,
    /// Closed to make room for a newer connection.
    Evicted,
}

/// Counts the connection open while it lives.
struct Open<'a>(&'a Counters);

impl<'a> Open<'a> {
    fn new(c: &'a Counters) -> Self {
        c.open.fetch_add(1, Ordering::Relaxed);
        Self(c)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one request on `stream` within the deadline, then closes it.
async fn serve(stream: TcpStream, slot: Arc<Slot>, shared: Arc<Shared>) {
    let _open = Open::new(&shared.counters);
    let deadline = Instant::now() + shared.options.request_timeout;
    let _ = stream.set_nodelay(true);
    let service = {
        let (slot, shared) = (Arc::clone(&slot), Arc::clone(&shared));
        service_fn(move |req| {
            slot.started.store(true, Ordering::Relaxed);
            answer(req, Arc::clone(&shared))
        })
    };
    let mut conn = http1::Builder::new()
        .keep_alive(false)
        // The old server's header spelling, for scripts that grep for `Content-Type`.
        .title_case_headers(true)
        .max_header_size(MAX_HEAD)
        // Our deadline replaces hyper's: it answers 408 where hyper's closes silently.
        .header_read_timeout(None)
        .serve_connection(
            TokioIo::new(Counting {
                stream,
                slot: Arc::clone(&slot),
            }),
            service,
        );
    let mut expired = pin!(sleep_until(deadline));
    let mut evicted = pin!(slot.evict.notified());
    // The deadline and the eviction are looked at first, so that they win a tie.
    let end = poll_fn(|cx| {
        if expired.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::Deadline);
        }
        if evicted.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::Evicted);
        }
        Pin::new(&mut conn).poll(cx).map(End::Done)
    })
    .await;
    let started = slot.started.load(Ordering::Relaxed);
    let stream = conn.into_parts().io.into_inner().stream;
    match end {
        End::Done(Ok(())) => {}
        End::Done(Err(e)) => {
            // hyper answered 431 or 400 itself (nothing for an HTTP/2 preface).
            if e.is_parse_too_large() {
                shared.counters.refused(431);
            } else if e.is_parse() {
                shared.counters.refused(400);
            }
        }
        End::Deadline | End::Evicted => {
            shared.counters.refused(408);
            if !started {
                let why = if matches!(end, End::Evicted) {
                    "request not received in time: the admin endpoint is full \
                     (admin.max_connections) and this was its oldest incomplete request\n"
                } else {
                    "request not received in time (admin.request_timeout_ms)\n"
                };
                refuse(stream, 408, why);
                return;
            }
            // Cut off mid-answer: nothing more can be said on this connection.
        }
    }
    close(stream);
}

/// Answers `status` with `body` on a connection that has been sent nothing yet, and closes it.
fn refuse(stream: TcpStream, status: u16, body: &str) {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let reply = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {TEXT}\r\nContent-Length: {}\r\n\
         Connection: close\r\nCache-Control: no-store\r\n\r\n{body}",
        body.len()
    );
    let Ok(mut s) = stream.into_std() else {
        return;
    };
    // Nothing was sent on this socket yet, so its send buffer is empty: one non-blocking
    // write takes the whole reply (a client that shrank its window to nothing gets what
    // fits). Written on the std socket: tokio's `try_write` would refuse until the reactor
    // has seen the socket writable.
    let _ = s.write(reply.as_bytes());
    let _ = s.shutdown(Shutdown::Write);
}

/// Closes gracefully: the end of stream goes out before the socket is closed, so the client
/// reads the whole answer and then its end even if unread request bytes make the kernel reset
/// the connection at close.
fn close(stream: TcpStream) {
    if let Ok(s) = stream.into_std() {
        let _ = s.shutdown(Shutdown::Write);
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<String> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Routes a request whose head hyper has read.
async fn answer(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<String>, Infallible> {
    let path = req.uri().path();
    if path != "/metrics" && path != "/health" {
        let body = format!("not found: {path}; try /metrics or /health\n");
        return Ok(reply(StatusCode::NOT_FOUND, TEXT, body));
    }
    let head_only = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head_only {
        let body = format!("method {} not allowed; use GET or HEAD\n", req.method());
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, body);
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    let metrics = path == "/metrics";
    // A panic in the source comes back as an error (the panic hook has reported it).
    let produced = tokio::task::spawn_blocking(move || {
        if metrics {
            let mut out = String::with_capacity(16 * 1024);
            shared.source.render_metrics(&mut out);
            shared.counters.render(&mut out);
            (StatusCode::OK, METRICS_TYPE, out)
        } else {
            let h = shared.source.health();
            let status = if h.healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, JSON, h.to_json())
        }
    })
    .await;
    let (status, content_type, body) = produced.unwrap_or_else(|_| {
        let body = "the engine failed to produce this page\n".to_owned();
        (StatusCode::INTERNAL_SERVER_ERROR, TEXT, body)
    });
    if !head_only {
        return Ok(reply(status, content_type, body));
    }
    // HEAD: the headers GET would send, without the body.
    let mut r = reply(status, content_type, String::new());
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Ok(r)
}
