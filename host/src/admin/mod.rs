//! The admin endpoint: an HTTP/1.1 server on loopback for `/metrics` and `/health`.
//!
//! It runs [hyper](https://hyper.rs)'s HTTP/1.1 server on a single-threaded tokio runtime
//! on a thread of its own, never on an engine thread, so it may allocate; the engine's figures
//! are rendered on a small pool of helper threads, so a slow render never stalls the server.
//! The engine exposes itself through an [`AdminSource`]; the server asks it for the metrics
//! text and the health on each request.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /metrics` | `200`, `text/plain; version=0.0.4`: the Prometheus exposition format ([`crate::prom`]), the source's figures then the server's own (below) |
//! | `GET /health` | `200` when healthy, `503` otherwise; `application/json`: `{"level":…,"healthy":…,"detail":{…}}` |
//! | `HEAD` of either | the same status and headers, no body |
//! | another path | `404` |
//! | another method | `405` with `Allow: GET, HEAD` |
//! | not HTTP/1.x | `400` (an HTTP/2 preface is closed without an answer) |
//! | a head over 8 KiB or with over 100 headers | `431` |
//! | nothing complete within the request timeout | `408`, then the connection is closed |
//! | a connection arrives while `max_connections` are open | the oldest connection still sending its request head is answered `408` and closed to make room; when every open connection is past its head, the newcomer is answered `503` at once |
//!
//! **Limits.** One request per connection: keep-alive is off (`Connection: close`), so no
//! connection idles between requests. The request timeout (`admin.request_timeout_ms`) is a
//! deadline for the whole exchange, from accept to the last byte of the answer: it is the
//! header read timeout (answered `408`) and it cuts off a client that reads its answer too
//! slowly (closed). At most `admin.max_connections` connections are open at once. A connection
//! costs a socket and a few KiB, not a thread, so slow or idle clients do not hold up others:
//! `/health` is answered while any number of them are connected (the newest
//! `max_connections` are kept, older ones are closed as newer ones arrive).
//!
//! **Counted.** `pinstream_admin_refusals_total{status}` counts the connections refused with
//! `400`, `408` (also those cut off mid-answer by the deadline), `431` and `503` (busy; an
//! unhealthy `/health` is an answer, not a refusal); `pinstream_admin_connections_open` is the
//! number open now. The server appends both families to every `/metrics` answer.
//!
//! **Measured** (`PINSTREAM_ADMIN_SLOW_CLIENTS=N cargo test -p pinstream-host --test admin_http
//! health_answers -- --nocapture`; debug build, 2-vCPU VM shared with other builds): N slow
//! clients, half idle, half trickling a byte per 10 ms, each reconnecting at once when
//! closed, against `max_connections = 16` (the old default), so the server keeps closing the
//! oldest incomplete request to make room; meanwhile 20 `/health` scrapes, all answered `200`:
//!
//! | slow clients | median | slowest of 20 | closed to make room (`408`) |
//! | --- | --- | --- | --- |
//! | 64 | 0.5 ms | 4–7 ms | about 5 000 |
//! | 512 | 0.7–0.9 ms | 1–8 ms | 700–6 500 |
//! | 64, six such tests at once on the 2 CPUs | 31–40 ms | 52–96 ms | about 3 500 each |
//!
//! The thread-per-connection server this replaced answered `503` to all 20 scrapes with 64.
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

mod server;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde::Serialize;
use serde::ser::{SerializeStruct, Serializer};
use tokio::sync::Notify;

use crate::config::AdminSection;

/// The longest request head (request line and headers) the server reads.
pub const MAX_HEAD: usize = 8 * 1024;

/// Threads that render the source's figures at once (more requests wait for one).
const RENDER_THREADS: usize = 2;

/// How long [`AdminHandle::stop`] waits for a render under way before leaving it behind.
const STOP_GRACE: Duration = Duration::from_secs(1);

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
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
        // Cannot fail: the keys are strings and every value is a string, number or boolean.
        let mut out = serde_json::to_string(self).expect("a health serialises to JSON");
        out.push('\n');
        out
    }
}

/// `{"level":…,"healthy":…,"detail":{…}}`, the detail's keys in their order.
impl Serialize for Health {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// The detail as a JSON object (a list of pairs in Rust, to keep its order).
        struct Detail<'a>(&'a [(String, HealthValue)]);
        impl Serialize for Detail<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
            }
        }
        let mut s = serializer.serialize_struct("Health", 3)?;
        s.serialize_field("level", self.level)?;
        s.serialize_field("healthy", &self.healthy)?;
        s.serialize_field("detail", &Detail(&self.detail))?;
        s.end()
    }
}

/// Limits of the admin server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminOptions {
    /// A deadline for each connection's whole exchange: the request head must be complete
    /// within it (else `408`), and the answer written.
    pub request_timeout: Duration,
    /// Connections open at once; when full, the oldest one still sending its head is closed
    /// to make room, else the newcomer is answered `503`.
    pub max_connections: usize,
}

impl Default for AdminOptions {
    /// The defaults of `[admin]`: 2 s, 128 connections.
    fn default() -> Self {
        Self::from_config(&AdminSection::default())
    }
}

impl AdminOptions {
    /// The limits `[admin]` sets.
    pub fn from_config(c: &AdminSection) -> Self {
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
    /// The bind error (address in use, not permitted), or the error of building the runtime
    /// or spawning the thread.
    pub fn start(self, addr: SocketAddr, source: Arc<dyn AdminSource>) -> io::Result<AdminHandle> {
        let listener = std::net::TcpListener::bind(addr).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("admin endpoint cannot listen on {addr} (admin.listen): {e}"),
            )
        })?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .max_blocking_threads(RENDER_THREADS)
            .thread_name("pinstream-admin-render")
            .build()?;
        let listener = {
            let _inside = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let stop = Arc::new(Notify::new());
        let signal = Arc::clone(&stop);
        let shared = Arc::new(server::Shared::new(source, self.options));
        let thread = thread::Builder::new()
            .name("pinstream-admin".into())
            .spawn(move || {
                runtime.block_on(server::accept_loop(listener, shared, &signal));
                // Drops every connection's task, which closes its socket.
                runtime.shutdown_timeout(STOP_GRACE);
            })?;
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
/// The bind error, or the error of building the runtime or spawning the thread.
pub fn start(addr: SocketAddr, source: Arc<dyn AdminSource>) -> io::Result<AdminHandle> {
    AdminServer::default().start(addr, source)
}

/// A running admin server. Dropping it stops the server and joins its threads.
#[derive(Debug)]
pub struct AdminHandle {
    addr: SocketAddr,
    stop: Arc<Notify>,
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
        // A permit is kept if the accept loop is not waiting yet: the stop is never lost.
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            // A panic on the server thread has already been reported by the panic hook; there
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

#[cfg(test)]
mod tests {
    use super::*;

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
