//! The engine's compiled sizes: the const generics the core's lanes, pools and tables are
//! built with, the checks that keep the config's `[capacity]` presets equal to them, and
//! the start-time checks of settings against them.

use pinstream_core::lanes::Lanes;
use pinstream_core::process::{LaneProcessors, Processors};

use super::{EngineConfig, EngineError};
use crate::ingest::Ingest;

/// Payload bytes per event slot.
pub const PAYLOAD: usize = 256;
/// Event slots in the pool.
pub const POOL: usize = 65_536;
/// Capacity of each lane.
pub const LANE: usize = 16_384;
/// Capacity of the dead-letter ring.
pub const DEAD_LETTERS: usize = 4_096;
/// Records parked for retry at most.
pub const RETRY_QUEUE: usize = 256;
/// Alert rules at most.
pub const RULES: usize = 16;
/// Entries of the transactional lane's dedup table.
pub const DEDUP: usize = 1 << 20;
/// Topics at most.
pub const TOPICS: usize = 64;
/// Rate-limit keys: one shared overflow key (0) and one per client (version-2 producer, or
/// IP address), handed out by the ingest thread.
pub const SOURCES: usize = 4_096;

// `tcp.max_connections` is checked against this build's sources when the config is
// validated (exit 2 with the line), not only here at start.
const _: () = assert!(crate::config::MAX_TCP_CONNECTIONS < SOURCES);

// The config's `[capacity]` presets describe this build: keep them equal.
const _: () = {
    let c = crate::config::CapacitySection::DEFAULT;
    assert!(c.payload_bytes == PAYLOAD && c.pool_slots == POOL && c.lane_capacity == LANE);
    assert!(c.dead_letter_capacity == DEAD_LETTERS && c.retry_queue == RETRY_QUEUE);
    assert!(c.topics == TOPICS && c.alert_rules == RULES && c.dedup_slots == DEDUP);
};

/// The lanes, pools and dead-letter ring of this build.
pub(super) type EngineLanes = Lanes<PAYLOAD, POOL, LANE, DEAD_LETTERS>;
/// The processors of this build, over the lanes' output.
pub(super) type EngineProcessors<'a> =
    Processors<'a, PAYLOAD, POOL, LANE, DEAD_LETTERS, RETRY_QUEUE>;
/// The per-lane processing state of this build (alert rules, dedup table, topics).
pub(super) type EngineLaneProcessors = LaneProcessors<RULES, DEDUP, TOPICS>;
/// The ingest thread's state, over the lanes' input.
pub(super) type EngineIngest<'a> = Ingest<'a, PAYLOAD, POOL, LANE, DEAD_LETTERS>;

/// Refuses settings this build cannot hold: the topic count and the connections (each may
/// hold its own rate-limit key).
///
/// # Errors
/// [`EngineError::Config`], naming the key.
pub(super) fn check(cfg: &EngineConfig) -> Result<(), EngineError> {
    if cfg.topics.is_empty() || cfg.topics.len() > TOPICS {
        return Err(EngineError::Config(format!(
            "pipeline.topics has {} names: between 1 and {TOPICS}",
            cfg.topics.len()
        )));
    }
    if cfg.tcp_limits.max_connections >= SOURCES {
        return Err(EngineError::Config(format!(
            "tcp.max_connections {} is above this build's {} (each connection may hold its own rate-limit key)",
            cfg.tcp_limits.max_connections,
            SOURCES - 1
        )));
    }
    Ok(())
}
