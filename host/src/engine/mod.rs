//! The engine: the core pipeline wired to sockets and logs on two pinned threads.
//!
//! ```text
//!  ingest thread (CPU engine.ingest_cpu)          storage thread (CPU engine.process_cpu)
//!  epoll: TCP connections, UDP recvmmsg           Processors: alerts, dedup, aggregation
//!  decode in place -> Dispatcher -> lanes  ====>  Sink: append to the lane's log
//!  ACK / REJECT per connection            <====   group commit (fdatasync) -> Completions
//!                                                 dead letters -> dead-letter log
//!                                                 batch aggregates -> aggregates log
//!                                                 control plane -> ControlSignal
//!                                                 fdatasyncs on sync helpers (unpinned)
//! ```
//!
//! [`Engine::start`] builds everything (all allocation happens here: lanes, pools, buffers,
//! logs), binds the sockets, recovers the logs, then runs the two threads inside a
//! supervisor thread that owns the memory; [`EngineHandle::stop`] drains and syncs before
//! it returns, so nothing acknowledged is lost and nothing accepted is left unresolved.
//!
//! The lanes' sizes are const generics of the core; this build has the sizes of
//! [`PAYLOAD`], [`POOL`], [`LANE`], [`DEAD_LETTERS`] (the config's `[capacity]` is
//! checked against them).
//!
//! | file | its job |
//! | --- | --- |
//! | `settings.rs` | [`EngineConfig`]: the engine's settings, translated from the TOML config |
//! | `capacity.rs` | the compiled sizes and the checks of settings against them |
//! | `stats.rs` | [`EngineStats`]: counters, Prometheus rendering, health |
//! | `supervisor.rs` | [`Engine::start`], the set-up, [`EngineHandle::stop`], [`EngineError`] |
//! | `threads.rs` | running the ingest, storage and helper threads and joining them |
//! | `restore.rs` | the dedup window and producer sessions restored from the logs at start |
//! | `storage_loop.rs` | the storage thread's loop |
//! | `sink.rs` | the sink: appends, group commits, completions, lost-record counting |

mod capacity;
mod restore;
mod settings;
mod sink;
mod startup;
mod stats;
mod storage_loop;
mod supervisor;
mod threads;

pub use self::capacity::{
    DEAD_LETTERS, DEDUP, LANE, PAYLOAD, POOL, RETRY_QUEUE, RULES, SOURCES, TOPICS,
};
pub use self::restore::{DedupRefill, SessionsRestored};
pub use self::settings::{EngineConfig, Placement};
pub use self::stats::EngineStats;
pub use self::supervisor::{BooksAtStop, Engine, EngineError, EngineHandle, Started};
