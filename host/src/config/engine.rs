//! `[engine]`: threads, pinning, idling, acknowledgements.

use serde::Deserialize;

use crate::idle;
use crate::placement::PlacementMode;

/// `[engine]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// Whether the engine's threads are pinned: auto, pinned, unpinned (see
    /// [`crate::placement`]).
    pub placement: PlacementMode,
    /// No pinning and no busy polling (containers, CI, shared machines): the older spelling
    /// of `placement = "unpinned"`, and it wins over `placement`.
    pub overprovisioned: bool,
    /// CPU of the ingest thread (TCP and UDP).
    pub ingest_cpu: usize,
    /// CPU of the processing and storage thread.
    pub process_cpu: usize,
    /// What a polling thread does when it finds no work.
    pub idle: IdleSetting,
    /// Empty polls spun before yielding or parking.
    pub idle_spins: u32,
    /// `sched_yield` calls before parking.
    pub idle_yields: u32,
    /// Length of one park, microseconds.
    pub idle_park_us: u64,
    /// Bind lanes, pools and buffers to the NUMA node of the CPU that uses them.
    pub numa: bool,
    /// `mlockall` at start-up.
    pub mlock: bool,
    /// When events are acknowledged.
    pub ack: AckSetting,
}

impl Default for EngineSection {
    fn default() -> Self {
        Self {
            placement: PlacementMode::Auto,
            overprovisioned: false,
            ingest_cpu: 0,
            process_cpu: 1,
            idle: IdleSetting::SpinPark,
            idle_spins: idle::DEFAULT_SPINS,
            idle_yields: idle::DEFAULT_YIELDS,
            idle_park_us: idle::DEFAULT_PARK_US,
            numa: true,
            mlock: false,
            ack: AckSetting::Durable,
        }
    }
}

/// What a polling thread does between empty polls (`engine.idle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdleSetting {
    /// Spin forever: lowest latency, a whole CPU.
    Spin,
    /// Spin, then `sched_yield`.
    SpinYield,
    /// Spin, yield, then park for `idle_park_us`.
    SpinPark,
}

impl IdleSetting {
    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            IdleSetting::Spin => "spin",
            IdleSetting::SpinYield => "spin-yield",
            IdleSetting::SpinPark => "spin-park",
        }
    }
}

/// When an event is acknowledged to its producer (`engine.ack`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckSetting {
    /// Never: fire and forget.
    None,
    /// When the engine accepted it into a lane (lost on a crash before the sync).
    Accepted,
    /// After the sync that makes it durable.
    Durable,
}

impl AckSetting {
    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            AckSetting::None => "none",
            AckSetting::Accepted => "accepted",
            AckSetting::Durable => "durable",
        }
    }
}
