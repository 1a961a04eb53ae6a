//! `[control]`: the control plane's thresholds and the priorities it may shed.

use pinstream_core::control::ControlConfig;
use pinstream_core::event::Priority;
use serde::Deserialize;

/// `[control]`: one key per field of [`ControlConfig`], and which priorities may be shed.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlSection {
    /// Priorities the control plane may shed (dead-letter `shed`) from TCP connections too.
    /// Every other priority of a TCP connection is held back instead (the producer waits);
    /// UDP, which cannot be slowed, is shed at every level. Empty by default.
    pub sheddable: Vec<String>,
    /// Fullest lane's depth (permille) entering elevated, degraded, critical, emergency.
    pub depth_permille: [u16; 4],
    /// Drop rate (permille) entering each level.
    pub drop_permille: [u16; 4],
    /// A level is left below this fraction (permille) of its thresholds.
    pub recover_permille: u16,
    /// No decision before this many events were offered.
    pub warmup_events: u64,
}

impl Default for ControlSection {
    fn default() -> Self {
        let c = ControlConfig::DEFAULT;
        Self {
            sheddable: Vec::new(),
            depth_permille: c.depth_permille,
            drop_permille: c.drop_permille,
            recover_permille: c.recover_permille,
            warmup_events: c.warmup_events,
        }
    }
}

impl ControlSection {
    /// The priorities named in `sheddable` (unknown names are config errors, checked).
    pub fn sheddable_priorities(&self) -> Vec<Priority> {
        self.sheddable
            .iter()
            .filter_map(|n| Priority::from_name(n))
            .collect()
    }

    /// The core's control configuration.
    pub const fn to_core(&self) -> ControlConfig {
        ControlConfig {
            depth_permille: self.depth_permille,
            drop_permille: self.drop_permille,
            recover_permille: self.recover_permille,
            warmup_events: self.warmup_events,
        }
    }
}
