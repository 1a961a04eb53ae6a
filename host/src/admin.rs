//! The admin endpoint: a minimal HTTP/1.1 server on loopback for `/metrics` and `/health`.
//!
//! It runs on its own threads, never on an engine thread, so it may allocate. The engine
//! exposes itself through an [`AdminSource`]; the server asks it for the metrics text and
//! the health on each request.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /metrics` | `200`, `text/plain; version=0.0.4`: the Prometheus exposition format ([`crate::prom`]) |
//! | `GET /health` | `200` when healthy, `503` otherwise; `application/json`: `{"level":…,"healthy":…,"detail":{…}}` |
//! | `HEAD` of either | the same status and headers, no body |
//! | another path | `404` |
//! | another method | `405` with `Allow: GET, HEAD` |
//! | not HTTP/1.x | `400` |
//! | a head over 8 KiB | `431` |
//! | nothing complete within the request timeout | `408`, then the connection is closed |
//! | more than `max_connections` at once | `503` at once |
//!
//! One request per connection (`Connection: close`). Each connection is served on a short-lived
//! thread with a deadline for its request, so a slow or silent client holds only its own
//! thread, never the accept loop; [`AdminHandle::stop`] (or dropping the handle) shuts every
//! open connection down and joins all threads.
//!
//! ```
//! use std::io::{Read, Write};
//! use std::net::TcpStream;
//! use std::sync::Arc;
//! use pinstream_host::admin::{self, AdminSource, Health};
//!
//! struct Demo;
//! impl AdminSource for Demo {
//!     fn render_metrics(&self, out: &mut String) {
//!         out.push_str("# HELP demo_up Up.\n# TYPE demo_up gauge\ndemo_up 1\n");
//!     }
//!     fn health(&self) -> Health {
//!         Health::new("healthy", true)
//!     }
//! }
//!
//! let server = admin::start("127.0.0.1:0".parse().unwrap(), Arc::new(Demo)).unwrap();
//! let mut s = TcpStream::connect(server.local_addr()).unwrap();
//! s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
//! let mut reply = String::new();
//! s.read_to_string(&mut reply).unwrap();
//! assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"));
//! assert!(reply.ends_with("{\"level\":\"healthy\",\"healthy\":true,\"detail\":{}}\n"));
//! server.stop();
//! ```

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::config::AdminConfig;

/// The longest request head (request line and headers) the server reads.
pub const MAX_HEAD: usize = 8 * 1024;

/// How often the accept loop looks at the stop flag when no client is connecting.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// What the admin endpoint serves; implemented by the engine.
pub trait AdminSource: Send + Sync {
    /// Appends the Prometheus text exposition (format 0.0.4) of every metric to `out`.
    fn render_metrics(&self, out: &mut String);
    /// The control plane's state now.
    fn health(&self) -> Health;
}

/// The answer of `/health`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// The control plane's level name (`healthy`, `elevated`, …).
    pub level: &'static str,
    /// Whether `/health` answers `200` (else `503`).
    pub healthy: bool,
    /// Further figures, in order (`"transitions": 3`, `"storage": "ok"`, …).
    pub detail: Vec<(String, HealthValue)>,
}

/// A value in [`Health::detail`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthValue {
    /// A JSON string.
    Text(String),
    /// A JSON number.
    Count(u64),
    /// A JSON boolean.
    Flag(bool),
}

impl Health {
    /// A health without detail.
    pub fn new(level: &'static str, healthy: bool) -> Self {
        Self {
            level,
            healthy,
            detail: Vec::new(),
        }
    }

    /// Adds a detail entry.
    pub fn with(mut self, key: impl Into<String>, value: HealthValue) -> Self {
        self.detail.push((key.into(), value));
        self
    }

    /// The JSON document `/health` sends, with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut out = String::from("{\"level\":");
        json_string(&mut out, self.level);
        let _ = write!(out, ",\"healthy\":{},\"detail\":{{", self.healthy);
        for (i, (k, v)) in self.detail.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_string(&mut out, k);
            out.push(':');
            match v {
                HealthValue::Text(s) => json_string(&mut out, s),
                HealthValue::Count(n) => {
                    let _ = write!(out, "{n}");
                }
                HealthValue::Flag(b) => {
                    let _ = write!(out, "{b}");
                }
            }
        }
        out.push_str("}}\n");
        out
    }
}

/// Appends `s` as a JSON string literal (RFC 8259 escapes); shared with the command line's
/// JSON output.
pub fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Limits of the admin server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminOptions {
    /// A client must send its whole request head within this time.
    pub request_timeout: Duration,
    /// Connections served at once; more are answered `503`.
    pub max_connections: usize,
}

impl Default for AdminOptions {
    /// The defaults of `[admin]`: 2 s, 16 connections.
    fn default() -> Self {
        Self::from_config(&AdminConfig::default())
    }
}

impl AdminOptions {
    /// The limits `[admin]` sets.
    pub fn from_config(c: &AdminConfig) -> Self {
        Self {
            request_timeout: c.request_timeout(),
            max_connections: c.max_connections.max(1),
        }
    }
}

/// A configured admin server, not yet listening.
#[derive(Clone, Copy, Debug, Default)]
pub struct AdminServer {
    options: AdminOptions,
}

impl AdminServer {
    /// A server with these limits.
    pub const fn new(options: AdminOptions) -> Self {
        Self { options }
    }

    /// Binds `addr` and serves `source` on a thread of its own until the handle is stopped or
    /// dropped.
    ///
    /// # Errors
    /// The bind error (address in use, not permitted), or the error of spawning the thread.
    pub fn start(self, addr: SocketAddr, source: Arc<dyn AdminSource>) -> io::Result<AdminHandle> {
        let listener = TcpListener::bind(addr).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("admin endpoint cannot listen on {addr} (admin.listen): {e}"),
            )
        })?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let options = self.options;
        let thread = thread::Builder::new()
            .name("pinstream-admin".into())
            .spawn(move || accept_loop(&listener, &source, options, &flag))?;
        Ok(AdminHandle {
            addr: local,
            stop,
            thread: Some(thread),
        })
    }
}

/// [`AdminServer::start`] with the default limits.
///
/// # Errors
/// The bind error, or the error of spawning the thread.
pub fn start(addr: SocketAddr, source: Arc<dyn AdminSource>) -> io::Result<AdminHandle> {
    AdminServer::default().start(addr, source)
}

/// A running admin server. Dropping it stops the server and joins its threads.
#[derive(Debug)]
pub struct AdminHandle {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AdminHandle {
    /// The address bound (with the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes open connections and joins every thread.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // A panic in the accept loop has already been reported by the panic hook; there
            // is nothing left to clean up.
            let _ = t.join();
        }
    }
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// One connection being served: its thread and a handle to shut its socket down.
struct Worker {
    thread: JoinHandle<()>,
    socket: TcpStream,
}

fn accept_loop(
    listener: &TcpListener,
    source: &Arc<dyn AdminSource>,
    options: AdminOptions,
    stop: &AtomicBool,
) {
    let mut workers: Vec<Worker> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                reap(&mut workers);
                if workers.len() >= options.max_connections {
                    refuse_busy(stream);
                    continue;
                }
                let Ok(socket) = stream.try_clone() else {
                    continue;
                };
                let source = Arc::clone(source);
                let spawned = thread::Builder::new()
                    .name("pinstream-admin-conn".into())
                    .spawn(move || serve(stream, &*source, options));
                if let Ok(thread) = spawned {
                    workers.push(Worker { thread, socket });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // WouldBlock: nobody is connecting. Anything else (out of file descriptors, a
            // connection reset before accept): wait a moment rather than spin on it.
            Err(_) => {
                reap(&mut workers);
                thread::sleep(ACCEPT_POLL);
            }
        }
    }
    for w in &workers {
        let _ = w.socket.shutdown(Shutdown::Both);
    }
    for w in workers {
        let _ = w.thread.join();
    }
}

/// Joins the workers that are done.
fn reap(workers: &mut Vec<Worker>) {
    let mut i = 0;
    while i < workers.len() {
        if workers[i].thread.is_finished() {
            let w = workers.swap_remove(i);
            let _ = w.thread.join();
        } else {
            i += 1;
        }
    }
}

fn refuse_busy(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let body = "admin endpoint busy: too many connections (admin.max_connections); retry\n";
    let _ = stream
        .write_all(response_head(503, "text/plain; charset=utf-8", body.len(), &[]).as_bytes());
    let _ = stream.write_all(body.as_bytes());
    let _ = stream.shutdown(Shutdown::Write);
}

/// What the head of a request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Request<'a> {
    /// A well-formed request line and headers.
    Ok { method: &'a str, path: &'a str },
    /// Not HTTP/1.x: the reason.
    Bad(&'static str),
}

/// Reads the request head within the deadline: `Ok(head)`, or `Err(status)` to answer with.
/// `Err(0)` means the client went away: answer nothing.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, u16> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(408);
        }
        stream.set_read_timeout(Some(left)).map_err(|_| 0u16)?;
        match stream.read(&mut chunk) {
            Ok(0) => return Err(0),
            Ok(n) => {
                let from = head.len().saturating_sub(3);
                head.extend_from_slice(&chunk[..n]);
                if let Some(end) = find_head_end(&head[from..]) {
                    head.truncate(from + end);
                    return Ok(head);
                }
                if head.len() > MAX_HEAD {
                    return Err(431);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(408);
            }
            Err(_) => return Err(0),
        }
    }
}

/// The length of the head up to and including its blank line, if complete.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn parse_head(head: &[u8]) -> Request<'_> {
    let Ok(text) = std::str::from_utf8(head) else {
        return Request::Bad("the request head is not UTF-8");
    };
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let Some(request_line) = lines.next() else {
        return Request::Bad("no request line");
    };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad("the request line is not \"METHOD /path HTTP/1.1\"");
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !token(method) {
        return Request::Bad("the method is not a token");
    }
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Request::Bad("the target is not an absolute path");
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Request::Bad("only HTTP/1.0 and HTTP/1.1 are spoken");
    }
    for line in lines.filter(|l| !l.is_empty()) {
        match line.split_once(':') {
            Some((name, _)) if token(name) => {}
            _ => return Request::Bad("a header line is not \"Name: value\""),
        }
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Request::Ok { method, path }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn response_head(status: u16, content_type: &str, len: usize, extra: &[(&str, &str)]) -> String {
    let mut h = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\
         Connection: close\r\nCache-Control: no-store\r\n",
        reason_phrase(status)
    );
    for (k, v) in extra {
        let _ = write!(h, "{k}: {v}\r\n");
    }
    h.push_str("\r\n");
    h
}

const TEXT: &str = "text/plain; charset=utf-8";
const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON: &str = "application/json";

/// Serves one request on `stream`, then closes it.
fn serve(mut stream: TcpStream, source: &dyn AdminSource, options: AdminOptions) {
    let deadline = Instant::now() + options.request_timeout;
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(
        options.request_timeout.max(Duration::from_millis(100)),
    ));
    let (status, content_type, body, extra, send_body): (u16, &str, String, &[(&str, &str)], bool) =
        match read_head(&mut stream, deadline) {
            Err(0) => return,
            Err(408) => (
                408,
                TEXT,
                "request not received in time (admin.request_timeout_ms)\n".into(),
                &[],
                true,
            ),
            Err(status) => (
                status,
                TEXT,
                format!("request head over {MAX_HEAD} bytes\n"),
                &[],
                true,
            ),
            Ok(head) => match parse_head(&head) {
                Request::Bad(why) => (400, TEXT, format!("bad request: {why}\n"), &[], true),
                Request::Ok { method, path } => route(source, method, path),
            },
        };
    let mut reply = response_head(status, content_type, body.len(), extra).into_bytes();
    if send_body {
        reply.extend_from_slice(body.as_bytes());
    }
    if stream.write_all(&reply).is_err() {
        return;
    }
    // Close gracefully: unread request bytes at close would make the kernel send a reset that
    // can destroy the response before the client reads it.
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut sink = [0u8; 1024];
    let mut drained = 0;
    while drained < 64 * 1024 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

type Reply = (
    u16,
    &'static str,
    String,
    &'static [(&'static str, &'static str)],
    bool,
);

fn route(source: &dyn AdminSource, method: &str, path: &str) -> Reply {
    const ALLOW: &[(&str, &str)] = &[("Allow", "GET, HEAD")];
    if path != "/metrics" && path != "/health" {
        return (
            404,
            TEXT,
            format!("not found: {path}; try /metrics or /health\n"),
            &[],
            true,
        );
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return (
            405,
            TEXT,
            format!("method {method} not allowed; use GET or HEAD\n"),
            ALLOW,
            true,
        );
    }
    let produced = catch_unwind(AssertUnwindSafe(|| {
        if path == "/metrics" {
            let mut out = String::with_capacity(16 * 1024);
            source.render_metrics(&mut out);
            (200, METRICS_TYPE, out)
        } else {
            let h = source.health();
            (if h.healthy { 200 } else { 503 }, JSON, h.to_json())
        }
    }));
    match produced {
        Ok((status, ct, body)) => (status, ct, body, &[], !head_only),
        Err(_) => (
            500,
            TEXT,
            "the engine failed to produce this page\n".into(),
            &[],
            !head_only,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_heads() {
        assert_eq!(
            parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Request::Ok {
                method: "GET",
                path: "/metrics"
            }
        );
        assert_eq!(
            parse_head(b"POST /health HTTP/1.0\n\n"),
            Request::Ok {
                method: "POST",
                path: "/health"
            }
        );
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/2\r\n\r\n",
            b"G(T /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
        ] {
            assert!(matches!(parse_head(bad), Request::Bad(_)), "{bad:?}");
        }
    }

    #[test]
    fn head_end() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn health_json_escapes() {
        let h = Health::new("critical", false)
            .with("note", HealthValue::Text("a\"b\\c\n\u{1}".into()))
            .with("transitions", HealthValue::Count(3))
            .with("warm", HealthValue::Flag(true));
        assert_eq!(
            h.to_json(),
            "{\"level\":\"critical\",\"healthy\":false,\"detail\":{\"note\":\"a\\\"b\\\\c\\n\\u0001\",\
             \"transitions\":3,\"warm\":true}}\n"
        );
    }
}
