//! pinstream → NATS JetStream, exactly once (issue 16).
//!
//! A bridge reads one of the engine's logs as a named consumer (`docs/PROTOCOL.md` §12) and
//! publishes each stored record to a JetStream stream with `Nats-Msg-Id` =
//! `{source}-{log}-{offset}` ([`message`]), many publishes in flight ([`window`]); its
//! position is committed only up to the lowest offset whose PubAck, and every earlier one's,
//! came. After a crash it sends again at most what was not committed: JetStream's duplicate
//! window drops those, and a resume scan of the stream's tail (module `publisher`) skips what
//! the stream holds even when the window has passed.
//!
//! Configured by `[[bridge]]` tables ([`pinstream_host::config::BridgeSection`]); the runner
//! starts one per table ([`start`]) inside `pinstream run` or alone with `pinstream bridge`.

mod bridge;
pub mod message;
pub mod metrics;
mod publisher;
pub mod window;

pub use bridge::{BridgeHandle, start};
pub use metrics::BridgeMetrics;

// The README is compiled with the doc tests (it has no code block today; it stays checked
// if one is added).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
