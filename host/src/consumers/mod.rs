//! Serving the stored stream to consumers (`docs/PROTOCOL.md` §12, version 3).
//!
//! A thread of its own, never an engine thread (pinned to `consumers.cpu` when set, which
//! may not be a pinned engine thread's CPU), listens on `consumers.listen`. Consumers
//! subscribe to one log and receive its records in DATA frames as far as their credit and
//! the log's high watermark allow; the records go from the page cache to the socket with
//! `sendfile`, never through this process's memory, so a stalled consumer costs its socket
//! buffer and one open segment file, nothing more. Named consumers commit positions the
//! engine keeps durably.
//!
//! ```text
//!  storage thread                          serving thread (this module)
//!  commit ends -> Watermarks::publish ---> seqlock per log; eventfd if the server sleeps
//!                                          epoll: listener, consumer sockets, eventfd
//!                                          per connection: frames in, DATA out (sendfile)
//!                                          COMMIT -> <storage.dir>/consumers/<log>/<name>
//! ```
//!
//! | file | its job |
//! | --- | --- |
//! | `watermark.rs` | [`Watermarks`]: the high watermarks, published without locks, and the wake-up |
//! | `segment.rs` | record boundaries in a segment from its index, the watermark and headers |
//! | `reader.rs` | a subscription's position across segments; start at a time |
//! | `output.rs` | a connection's pending output: control frames, one DATA frame in progress |
//! | `conn.rs` | one connection: HELLO, SUBSCRIBE, CREDIT, COMMIT, DATA |
//! | `server.rs` | the epoll loop |
//! | `positions.rs` | [`Positions`]: named consumers' committed positions on disk |
//! | `committer.rs` | the helper thread that makes COMMITs durable off the serving thread |
//! | `stats.rs` | [`ConsumerStats`] and the Prometheus families |
//!
//! **Measured** (`cargo test -p pinstream-tests --test consumers tail_latency -- --ignored
//! --nocapture`; debug build, 2-vCPU VM shared with other builds, 500 events one at a time):
//! from the producer's send to the DATA frame at a consumer waiting at the end of the log.
//!
//! | mode | p50 | p90 | p99 |
//! | --- | --- | --- | --- |
//! | `ack = durable`, 1 ms group commit (fdatasync included) | 1.3 ms | 4.1 ms | 11 ms |
//! | `ack = accepted`, `durability = none` | 0.7 ms | 1.2 ms | 6 ms |

mod committer;
mod conn;
mod output;
mod positions;
mod reader;
mod segment;
mod server;
mod stats;
mod watermark;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use crate::gateway::Tokens;

pub use self::positions::{POSITIONS_DIR, Positions};
pub use self::segment::{Boundary, Cut, Segment};
pub use self::stats::{AuthRefusal, ConsumerStats, write_metrics};
pub use self::watermark::{Visible, Watermarks};

/// The consumer server's settings (`[consumers]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerSettings {
    /// Where to listen; `None`: no consumer server.
    pub listen: Option<SocketAddr>,
    /// The CPU to pin the serving thread to; `None`: not pinned.
    pub cpu: Option<usize>,
    /// Consumer connections served at once.
    pub max_connections: usize,
    /// Named positions kept (all logs together).
    pub max_named: usize,
    /// A connection that has not subscribed within this is closed.
    pub handshake_timeout: std::time::Duration,
    /// `consumers.auth = "token"`: a HELLO must carry a token of `[[auth.tokens]]`.
    pub auth: bool,
}

impl ConsumerSettings {
    /// No consumer server (the default of [`EngineConfig::local`](crate::engine::EngineConfig::local)).
    pub const OFF: Self = Self {
        listen: None,
        cpu: None,
        max_connections: 64,
        max_named: 1024,
        handshake_timeout: std::time::Duration::from_secs(10),
        auth: false,
    };

    /// Serving on `addr`, with the default limits.
    pub fn on(addr: SocketAddr) -> Self {
        Self {
            listen: Some(addr),
            ..Self::OFF
        }
    }
}

/// What the storage thread, the serving thread and the admin endpoint share.
#[derive(Debug)]
pub struct ConsumerShared {
    /// The logs' high watermarks (written by the storage thread).
    pub marks: Watermarks,
    /// The server's counters.
    pub stats: ConsumerStats,
    /// Set to stop the serving thread (then wake it).
    stop: AtomicBool,
}

impl ConsumerShared {
    /// Nothing published yet.
    ///
    /// # Errors
    /// The eventfd could not be made.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            marks: Watermarks::new()?,
            stats: ConsumerStats::new(),
            stop: AtomicBool::new(false),
        })
    }
}

/// A running consumer server.
#[derive(Debug)]
pub struct ConsumerServer {
    addr: SocketAddr,
    shared: Arc<ConsumerShared>,
    thread: Option<thread::JoinHandle<io::Result<()>>>,
}

impl ConsumerServer {
    /// Starts the serving thread over `listener`; with `tokens` (`consumers.auth =
    /// "token"`) every HELLO must carry one of them. The thread runs `hook` first (the engine's
    /// `thread_hook`, which tests use to watch its allocations).
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn start(
        settings: &ConsumerSettings,
        shared: Arc<ConsumerShared>,
        listener: TcpListener,
        positions: Positions,
        data_dir: PathBuf,
        tokens: Option<Arc<Tokens>>,
        hook: Option<fn()>,
    ) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        {
            let mut named = shared.stats.named.lock().unwrap_or_else(|p| p.into_inner());
            named.clear();
            named.extend(positions.iter().map(|(l, n, o)| (l, n.to_owned(), o)));
        }
        let s = Arc::clone(&shared);
        let cpu = settings.cpu;
        let max = settings.max_connections;
        let handshake = settings.handshake_timeout;
        let thread = thread::Builder::new()
            .name("pinstream-consumers".into())
            .spawn(move || {
                if let Some(hook) = hook {
                    hook();
                }
                if let Some(cpu) = cpu {
                    if let Err(e) = crate::pin::pin_current_thread(cpu) {
                        tracing::warn!("consumer server: {e}; running unpinned");
                    }
                }
                server::serve(s, listener, positions, data_dir, max, handshake, tokens)
            })?;
        Ok(Self {
            addr,
            shared,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the serving thread and closes every consumer connection.
    ///
    /// # Errors
    /// The thread's failure (an epoll error), or its panic.
    pub fn stop(&mut self) -> Result<(), String> {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.marks.wake_now();
        match self.thread.take() {
            Some(t) => match t.join() {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("consumer server: {e}")),
                Err(_) => Err("the consumer server thread panicked".into()),
            },
            None => Ok(()),
        }
    }
}

impl Drop for ConsumerServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
