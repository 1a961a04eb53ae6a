//! `[capacity]`: the sizes compiled into this build, and the payload arena's size.

use std::fmt;

use serde::Deserialize;

/// `[capacity]`: sizes compiled into the engine as const generics. The configured values must
/// equal one of [`CAPACITY_PRESETS`](super::CAPACITY_PRESETS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapacitySection {
    /// Payload bytes an event slot holds.
    pub payload_bytes: usize,
    /// Event slots in the pool.
    pub pool_slots: usize,
    /// Events each lane holds.
    pub lane_capacity: usize,
    /// Dead letters waiting to be written.
    pub dead_letter_capacity: usize,
    /// Most topics `pipeline.topics` may register.
    pub topics: usize,
    /// Longest topic name, bytes.
    pub topic_name_bytes: usize,
    /// Most alert rules.
    pub alert_rules: usize,
    /// Ids the dedup table holds.
    pub dedup_slots: usize,
    /// Records parked for a sink retry.
    pub retry_queue: usize,
    /// Bytes of the payload arena, allocated once at start-up: where payloads longer than
    /// `payload_bytes` live, shared by all events. Not compiled in: any value in
    /// `0 ..= 1 GiB` (0: payloads longer than `payload_bytes` are rejected).
    pub payload_arena_bytes: usize,
}

impl CapacitySection {
    /// The default preset.
    pub const DEFAULT: Self = Self {
        payload_bytes: 256,
        pool_slots: 65_536,
        lane_capacity: 16_384,
        dead_letter_capacity: 4096,
        topics: 64,
        topic_name_bytes: 32,
        alert_rules: 16,
        dedup_slots: 1_048_576,
        retry_queue: 256,
        payload_arena_bytes: 16 << 20,
    };

    /// The compiled sizes only (the arena's size is a run-time setting).
    pub(super) fn compiled(&self) -> Self {
        Self {
            payload_arena_bytes: Self::DEFAULT.payload_arena_bytes,
            ..*self
        }
    }
}

impl Default for CapacitySection {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for CapacitySection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{{ payload_bytes = {}, pool_slots = {}, lane_capacity = {}, dead_letter_capacity = {}, \
             topics = {}, topic_name_bytes = {}, alert_rules = {}, dedup_slots = {}, retry_queue = {}, \
             payload_arena_bytes = {} }}",
            self.payload_bytes,
            self.pool_slots,
            self.lane_capacity,
            self.dead_letter_capacity,
            self.topics,
            self.topic_name_bytes,
            self.alert_rules,
            self.dedup_slots,
            self.retry_queue,
            self.payload_arena_bytes
        )
    }
}
