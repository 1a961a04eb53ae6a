//! The control plane: watches lane depths and drop rates, decides how much load to shed.
//!
//! Each tick the owner hands [`ControlPlane::evaluate`] an [`Observation`] (the fullest
//! lane's depth and the counts of offered and dropped events since the last tick). It answers
//! with a [`Level`] and publishes it through a [`ControlSignal`] that the dispatcher reads
//! once per frame. What each level sheds (dead-lettered with reason
//! [`Shed`](crate::reason::Reason::Shed), so producers learn of it from their acks):
//!
//! | level | sheds | in words |
//! | --- | --- | --- |
//! | `Healthy` | nothing | |
//! | `Elevated` | `Batch` | lowest priority first |
//! | `Degraded` | `Low`, `Batch` | the whole batch lane |
//! | `Critical` | `Medium`, `Low`, `Batch` | transactional intake paused too |
//! | `Emergency` | all but `Critical` | emergency drop |
//!
//! **Rising** is immediate: the level becomes the highest one whose depth *or* drop-rate
//! threshold the observation reaches. **Falling** needs hysteresis: the level drops only to
//! the highest level whose thresholds scaled by `recover_permille / 1000` are still reached,
//! so a load hovering at a threshold does not flap. **Warm-up**: until `warmup_events` events
//! were offered, no decision is taken (the level stays `Healthy`).
//!
//! Drops, for the drop rate, are events dead-lettered because a lane was full or the pool
//! empty: the symptoms of overload. Events shed by the control plane itself do not count, or
//! shedding would keep itself going.
//!
//! ```
//! use pinstream_core::control::{ControlConfig, ControlPlane, Level, Observation};
//!
//! let mut control = ControlPlane::new(ControlConfig::DEFAULT);
//! let busy = Observation { depth_permille: 900, offered: 50_000, dropped: 0 };
//! assert_eq!(control.evaluate(busy), Level::Critical); // 90 % full
//! let calmer = Observation { depth_permille: 700, offered: 50_000, dropped: 0 };
//! assert_eq!(control.evaluate(calmer), Level::Critical); // not yet below 80 % of 85 %
//! let calm = Observation { depth_permille: 100, offered: 50_000, dropped: 0 };
//! assert_eq!(control.evaluate(calm), Level::Healthy);
//! assert_eq!(control.transitions(), 2);
//! ```

use core::fmt;

use crate::event::Priority;
use crate::sync::{AtomicUsize, Ordering};

/// How much load the engine sheds. Ordered: `Healthy < Elevated < … < Emergency`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Level {
    /// Shed nothing.
    Healthy = 0,
    /// Shed `Batch` priority.
    Elevated = 1,
    /// Shed the batch lane (`Low`, `Batch`).
    Degraded = 2,
    /// Shed everything but the realtime lane (`Critical`, `High`).
    Critical = 3,
    /// Shed everything but `Critical`.
    Emergency = 4,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 5] = [
        Level::Healthy,
        Level::Elevated,
        Level::Degraded,
        Level::Critical,
        Level::Emergency,
    ];

    /// The level with this index (0 = `Healthy`); out of range saturates at `Emergency`.
    #[inline]
    pub const fn from_index(i: usize) -> Self {
        match i {
            0 => Level::Healthy,
            1 => Level::Elevated,
            2 => Level::Degraded,
            3 => Level::Critical,
            _ => Level::Emergency,
        }
    }

    /// `0..=4`.
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Whether events of `priority` are shed at this level.
    #[inline]
    pub const fn sheds(self, priority: Priority) -> bool {
        // Priorities at or above this code (less urgent) are shed.
        let first_shed = 5 - self as u8;
        priority as u8 >= first_shed
    }

    /// A lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Level::Healthy => "healthy",
            Level::Elevated => "elevated",
            Level::Degraded => "degraded",
            Level::Critical => "critical",
            Level::Emergency => "emergency",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Thresholds of the control plane. Depths and rates are in permille (1000 = 100 %).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ControlConfig {
    /// Lane depth (fullest lane, permille of its capacity) that enters `Elevated`,
    /// `Degraded`, `Critical`, `Emergency`. Must not decrease.
    pub depth_permille: [u16; 4],
    /// Drop rate (dropped per offered since the last tick, permille) that enters each level.
    /// Must not decrease.
    pub drop_permille: [u16; 4],
    /// A level is left only when both measures fall below its thresholds times
    /// `recover_permille / 1000`. `1000` disables hysteresis; must be at most 1000.
    pub recover_permille: u16,
    /// No decision until this many events were offered in total.
    pub warmup_events: u64,
}

impl ControlConfig {
    /// Defaults: depth 50 / 70 / 85 / 95 %, drop rate 1 / 5 / 10 / 25 %, recover below 80 %
    /// of a threshold, warm-up 10 000 events.
    pub const DEFAULT: Self = Self {
        depth_permille: [500, 700, 850, 950],
        drop_permille: [10, 50, 100, 250],
        recover_permille: 800,
        warmup_events: 10_000,
    };

    /// Checks the thresholds are in order and the recovery fraction is at most 1000.
    ///
    /// # Errors
    /// [`ControlConfigError`] naming the first problem.
    pub const fn validate(&self) -> Result<(), ControlConfigError> {
        let mut i = 1;
        while i < 4 {
            if self.depth_permille[i] < self.depth_permille[i - 1] {
                return Err(ControlConfigError::DepthThresholdsDecrease);
            }
            if self.drop_permille[i] < self.drop_permille[i - 1] {
                return Err(ControlConfigError::DropThresholdsDecrease);
            }
            i += 1;
        }
        if self.recover_permille > 1000 {
            return Err(ControlConfigError::RecoverAbove1000);
        }
        Ok(())
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A [`ControlConfig`] that makes no sense.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ControlConfigError {
    /// `depth_permille` must not decrease from one level to the next.
    DepthThresholdsDecrease,
    /// `drop_permille` must not decrease from one level to the next.
    DropThresholdsDecrease,
    /// `recover_permille` above 1000 would recover above the threshold.
    RecoverAbove1000,
}

impl fmt::Display for ControlConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ControlConfigError::DepthThresholdsDecrease => {
                "depth thresholds must not decrease from one level to the next"
            }
            ControlConfigError::DropThresholdsDecrease => {
                "drop-rate thresholds must not decrease from one level to the next"
            }
            ControlConfigError::RecoverAbove1000 => "recover_permille must be at most 1000",
        })
    }
}

impl core::error::Error for ControlConfigError {}

/// What the control plane looks at each tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Observation {
    /// The fullest lane's depth, permille of its capacity.
    pub depth_permille: u16,
    /// Events offered to the dispatcher since the last tick.
    pub offered: u64,
    /// Of those, events dropped for overload (lane full, pool exhausted).
    pub dropped: u64,
}

impl Observation {
    /// The drop rate in permille (0 when nothing was offered).
    pub const fn drop_permille(&self) -> u16 {
        if self.offered == 0 {
            return 0;
        }
        let d = if self.dropped > self.offered {
            self.offered
        } else {
            self.dropped
        };
        // d <= offered, so the result is at most 1000.
        ((d as u128 * 1000) / self.offered as u128) as u16
    }
}

/// Depth of a ring in permille of its capacity (saturating at 1000).
#[inline]
pub const fn depth_permille(len: usize, capacity: usize) -> u16 {
    if capacity == 0 || len >= capacity {
        return 1000;
    }
    ((len as u128 * 1000) / capacity as u128) as u16
}

/// The decision loop. Owned by one thread (whichever ticks it); its level is published to
/// the dispatchers through a [`ControlSignal`].
#[derive(Debug)]
pub struct ControlPlane {
    config: ControlConfig,
    level: Level,
    offered_total: u64,
    transitions: u64,
    entered: [u64; 5],
}

impl ControlPlane {
    /// A control plane at `Healthy`. Call [`ControlConfig::validate`] first on configs read
    /// from outside; an invalid one still gives defined answers (levels are judged threshold
    /// by threshold, and `recover_permille` above 1000 counts as 1000).
    pub const fn new(config: ControlConfig) -> Self {
        Self {
            config,
            level: Level::Healthy,
            offered_total: 0,
            transitions: 0,
            entered: [0; 5],
        }
    }

    /// The current level.
    pub const fn level(&self) -> Level {
        self.level
    }

    /// The configuration.
    pub const fn config(&self) -> &ControlConfig {
        &self.config
    }

    /// How many times the level changed.
    pub const fn transitions(&self) -> u64 {
        self.transitions
    }

    /// How many times each level was entered (index = [`Level::index`]).
    pub const fn entered(&self) -> [u64; 5] {
        self.entered
    }

    /// Whether the warm-up is over.
    pub const fn warmed_up(&self) -> bool {
        self.offered_total >= self.config.warmup_events
    }

    /// The highest level whose thresholds, scaled by `scale / 1000`, `obs` reaches.
    fn reached(&self, obs: &Observation, scale: u16) -> Level {
        let drop = obs.drop_permille() as u32;
        let depth = obs.depth_permille as u32;
        let scale = scale.min(1000) as u32;
        // A positive threshold stays positive when scaled, or its level could never be left.
        let scaled = |th: u16| {
            let th = th as u32;
            if th == 0 {
                0
            } else {
                (th * scale / 1000).max(1)
            }
        };
        let mut level = 0;
        for i in 0..4 {
            let depth_th = scaled(self.config.depth_permille[i]);
            let drop_th = scaled(self.config.drop_permille[i]);
            // A zero drop threshold would mean "any tick": only a positive rate reaches it.
            if depth >= depth_th || (drop > 0 && drop >= drop_th) {
                level = i + 1;
            }
        }
        Level::from_index(level)
    }

    /// Takes one tick's observation and returns the level to apply.
    pub fn evaluate(&mut self, obs: Observation) -> Level {
        self.offered_total = self.offered_total.saturating_add(obs.offered);
        if !self.warmed_up() {
            return self.level;
        }
        let target = self.reached(&obs, 1000);
        let next = if target >= self.level {
            target
        } else {
            // Falling: only as far as the recovery thresholds allow, never below the target.
            let hold = self.reached(&obs, self.config.recover_permille);
            hold.min(self.level).max(target)
        };
        if next != self.level {
            self.level = next;
            self.transitions += 1;
            self.entered[next.index()] += 1;
        }
        self.level
    }

    /// [`evaluate`](Self::evaluate), then publishes the level to `signal`.
    pub fn evaluate_and_publish(&mut self, obs: Observation, signal: &ControlSignal) -> Level {
        let level = self.evaluate(obs);
        signal.publish(level);
        level
    }
}

/// The control plane's current level, shared with the dispatchers (one relaxed load per
/// frame). Needs only atomic loads and stores.
#[derive(Debug)]
pub struct ControlSignal(AtomicUsize);

impl ControlSignal {
    crate::sync::const_fn! {
        /// A signal at `Healthy`.
        pub fn new() -> Self {
            Self(AtomicUsize::new(0))
        }
    }

    /// Sets the level the dispatchers apply.
    #[inline]
    pub fn publish(&self, level: Level) {
        self.0.store(level.index(), Ordering::Relaxed);
    }

    /// The level to apply.
    #[inline]
    pub fn level(&self) -> Level {
        Level::from_index(self.0.load(Ordering::Relaxed))
    }
}

impl Default for ControlSignal {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn obs(depth: u16, offered: u64, dropped: u64) -> Observation {
        Observation {
            depth_permille: depth,
            offered,
            dropped,
        }
    }

    #[test]
    fn shedding_table() {
        use Priority::*;
        let shed = |l: Level| Priority::ALL.map(|p| l.sheds(p));
        assert_eq!(shed(Level::Healthy), [false; 5]);
        assert_eq!(shed(Level::Elevated), [false, false, false, false, true]);
        assert_eq!(shed(Level::Degraded), [false, false, false, true, true]);
        assert_eq!(shed(Level::Critical), [false, false, true, true, true]);
        assert_eq!(shed(Level::Emergency), [false, true, true, true, true]);
        assert!(!Level::Emergency.sheds(Critical));
    }

    #[test]
    fn no_decision_during_warm_up() {
        let config = ControlConfig {
            warmup_events: 1_000,
            ..ControlConfig::DEFAULT
        };
        let mut c = ControlPlane::new(config);
        assert_eq!(c.evaluate(obs(1000, 999, 999)), Level::Healthy);
        assert!(!c.warmed_up());
        assert_eq!(c.evaluate(obs(1000, 1, 1)), Level::Emergency);
        assert_eq!(c.transitions(), 1);
    }

    #[test]
    fn rises_at_once_and_falls_with_hysteresis() {
        let config = ControlConfig {
            warmup_events: 0,
            ..ControlConfig::DEFAULT
        };
        let mut c = ControlPlane::new(config);
        // Depth thresholds 500/700/850/950, recover at 80 %: 400/560/680/760.
        assert_eq!(c.evaluate(obs(499, 10, 0)), Level::Healthy);
        assert_eq!(c.evaluate(obs(500, 10, 0)), Level::Elevated);
        assert_eq!(c.evaluate(obs(950, 10, 0)), Level::Emergency);
        assert_eq!(c.evaluate(obs(900, 10, 0)), Level::Emergency, "900 >= 760");
        assert_eq!(c.evaluate(obs(760, 10, 0)), Level::Emergency, "edge: 760");
        assert_eq!(
            c.evaluate(obs(759, 10, 0)),
            Level::Critical,
            "below 760, >= 680"
        );
        assert_eq!(c.evaluate(obs(600, 10, 0)), Level::Degraded);
        assert_eq!(c.evaluate(obs(0, 0, 0)), Level::Healthy);
        assert_eq!(c.transitions(), 5);
        assert_eq!(c.entered(), [1, 1, 1, 1, 1]);
    }

    #[test]
    fn drop_rate_alone_raises_the_level() {
        let config = ControlConfig {
            warmup_events: 0,
            ..ControlConfig::DEFAULT
        };
        let mut c = ControlPlane::new(config);
        assert_eq!(c.evaluate(obs(0, 1000, 9)), Level::Healthy, "0.9 %");
        assert_eq!(c.evaluate(obs(0, 1000, 10)), Level::Elevated, "1 %");
        assert_eq!(c.evaluate(obs(0, 1000, 300)), Level::Emergency);
        // Nothing offered: rate 0, depth 0: recover.
        assert_eq!(c.evaluate(obs(0, 0, 0)), Level::Healthy);
        assert_eq!(
            obs(0, 10, 20).drop_permille(),
            1000,
            "dropped > offered saturates"
        );
    }

    #[test]
    fn invalid_configs_do_not_flap() {
        let mut c = ControlPlane::new(ControlConfig {
            recover_permille: 2000,
            warmup_events: 0,
            ..ControlConfig::DEFAULT
        });
        assert_eq!(c.evaluate(obs(1000, 1, 0)), Level::Emergency);
        assert_eq!(
            c.evaluate(obs(900, 1, 0)),
            Level::Critical,
            "down to the target"
        );
        assert_eq!(c.evaluate(obs(900, 1, 0)), Level::Critical, "and stays");
        // A threshold of 1 permille scaled by 80 % stays at 1: the level can be left.
        let mut tiny = ControlPlane::new(ControlConfig {
            depth_permille: [1, 700, 850, 950],
            warmup_events: 0,
            ..ControlConfig::DEFAULT
        });
        assert_eq!(tiny.evaluate(obs(1, 1, 0)), Level::Elevated);
        assert_eq!(tiny.evaluate(obs(0, 1, 0)), Level::Healthy);
    }

    #[test]
    fn validation_and_signal() {
        assert_eq!(ControlConfig::DEFAULT.validate(), Ok(()));
        let mut bad = ControlConfig::DEFAULT;
        bad.depth_permille = [500, 400, 850, 950];
        assert_eq!(
            bad.validate(),
            Err(ControlConfigError::DepthThresholdsDecrease)
        );
        bad = ControlConfig::DEFAULT;
        bad.drop_permille[3] = 0;
        assert_eq!(
            bad.validate(),
            Err(ControlConfigError::DropThresholdsDecrease)
        );
        bad = ControlConfig::DEFAULT;
        bad.recover_permille = 1001;
        assert_eq!(bad.validate(), Err(ControlConfigError::RecoverAbove1000));

        let s = ControlSignal::new();
        assert_eq!(s.level(), Level::Healthy);
        let mut c = ControlPlane::new(ControlConfig {
            warmup_events: 0,
            ..ControlConfig::DEFAULT
        });
        c.evaluate_and_publish(obs(1000, 1, 0), &s);
        assert_eq!(s.level(), Level::Emergency);
        assert_eq!(depth_permille(3, 4), 750);
        assert_eq!(depth_permille(5, 4), 1000);
        assert_eq!(depth_permille(0, 0), 1000);
    }
}
