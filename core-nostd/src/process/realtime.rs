//! The realtime lane's processor: alert rules per topic, evaluated on every event.
//!
//! A rule fires for an event of its topic `Always`, or when the event's value is `Above` /
//! `Below` a threshold (strictly; an event without a value never fires a threshold rule).
//! Firing calls the [`AlertHandler`] the caller passes in; the event then goes to the sink
//! like any other.

use core::fmt;

use crate::event::EventHeader;

/// When a rule fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Condition {
    /// For every event of the topic.
    Always,
    /// When the event's value is strictly greater than this.
    Above(i64),
    /// When the event's value is strictly less than this.
    Below(i64),
}

impl Condition {
    /// Whether an event with `value` meets the condition.
    #[inline]
    pub const fn matches(&self, value: Option<i64>) -> bool {
        match (self, value) {
            (Condition::Always, _) => true,
            (Condition::Above(t), Some(v)) => v > *t,
            (Condition::Below(t), Some(v)) => v < *t,
            (_, None) => false,
        }
    }
}

/// An alert rule: a topic and a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AlertRule {
    /// The topic id the rule watches.
    pub topic: u16,
    /// When it fires.
    pub condition: Condition,
}

/// Receives fired alerts. Called on the processor thread, inline: keep it short (record,
/// set a flag, push to a ring), never block.
pub trait AlertHandler {
    /// Rule number `rule` (its index in the processor) fired for the event.
    fn alert(&mut self, rule: usize, alert: &AlertRule, header: &EventHeader, payload: &[u8]);
}

/// An [`AlertHandler`] that only counts (for tests and benchmarks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountAlerts(pub u64);

impl AlertHandler for CountAlerts {
    #[inline]
    fn alert(&mut self, _rule: usize, _alert: &AlertRule, _h: &EventHeader, _p: &[u8]) {
        self.0 += 1;
    }
}

/// The rule table has no room for another rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RulesFull {
    /// The table's capacity.
    pub capacity: usize,
}

impl fmt::Display for RulesFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "alert rule table is full ({} rules)", self.capacity)
    }
}

impl core::error::Error for RulesFull {}

/// Up to `R` alert rules.
///
/// ```
/// use pinstream_core::event::{EventHeader, Priority};
/// use pinstream_core::process::realtime::{AlertRule, Condition, CountAlerts, RealtimeProcessor};
///
/// let mut rt: RealtimeProcessor<4> = RealtimeProcessor::new();
/// rt.add_rule(AlertRule { topic: 1, condition: Condition::Above(100) }).unwrap();
/// let mut alerts = CountAlerts::default();
/// let hot = EventHeader::new(1, 1, Priority::Critical, 0).with_value(120);
/// let cool = EventHeader::new(2, 1, Priority::Critical, 0).with_value(80);
/// assert_eq!(rt.evaluate(&hot, b"", &mut alerts), 1);
/// assert_eq!(rt.evaluate(&cool, b"", &mut alerts), 0);
/// assert_eq!(alerts.0, 1);
/// ```
#[derive(Clone, Debug)]
pub struct RealtimeProcessor<const R: usize> {
    /// Invariant: `len <= R`; `rules[..len]` are set.
    rules: [AlertRule; R],
    len: usize,
}

impl<const R: usize> RealtimeProcessor<R> {
    /// No rules.
    pub const fn new() -> Self {
        Self {
            rules: [AlertRule {
                topic: 0,
                condition: Condition::Always,
            }; R],
            len: 0,
        }
    }

    /// Adds a rule; returns its number.
    ///
    /// # Errors
    /// [`RulesFull`] when `R` rules are set already.
    pub fn add_rule(&mut self, rule: AlertRule) -> Result<usize, RulesFull> {
        let slot = self
            .rules
            .get_mut(self.len)
            .ok_or(RulesFull { capacity: R })?;
        *slot = rule;
        self.len += 1;
        Ok(self.len - 1)
    }

    /// The rules, in number order.
    pub fn rules(&self) -> &[AlertRule] {
        &self.rules[..self.len]
    }

    /// Calls `handler` for every rule the event fires; returns how many fired.
    #[inline]
    pub fn evaluate(
        &self,
        header: &EventHeader,
        payload: &[u8],
        handler: &mut impl AlertHandler,
    ) -> u32 {
        let mut fired = 0;
        let value = header.value();
        for (i, rule) in self.rules().iter().enumerate() {
            if rule.topic == header.topic && rule.condition.matches(value) {
                handler.alert(i, rule, header, payload);
                fired += 1;
            }
        }
        fired
    }
}

impl<const R: usize> Default for RealtimeProcessor<R> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::event::Priority;

    #[test]
    fn conditions_are_strict_and_need_a_value() {
        assert!(Condition::Always.matches(None));
        assert!(Condition::Above(5).matches(Some(6)));
        assert!(!Condition::Above(5).matches(Some(5)));
        assert!(!Condition::Above(5).matches(None));
        assert!(Condition::Below(5).matches(Some(4)));
        assert!(!Condition::Below(5).matches(Some(5)));
        assert!(!Condition::Below(i64::MIN).matches(Some(i64::MIN)));
    }

    #[test]
    fn rules_fire_per_topic_and_table_fills() {
        let mut rt: RealtimeProcessor<2> = RealtimeProcessor::new();
        assert_eq!(
            rt.add_rule(AlertRule {
                topic: 3,
                condition: Condition::Always
            }),
            Ok(0)
        );
        rt.add_rule(AlertRule {
            topic: 3,
            condition: Condition::Below(0),
        })
        .unwrap();
        assert_eq!(
            rt.add_rule(AlertRule {
                topic: 4,
                condition: Condition::Always
            }),
            Err(RulesFull { capacity: 2 })
        );
        let mut alerts = CountAlerts::default();
        let h = EventHeader::new(1, 3, Priority::High, 0);
        assert_eq!(rt.evaluate(&h, b"", &mut alerts), 1);
        assert_eq!(rt.evaluate(&h.with_value(-1), b"", &mut alerts), 2);
        let other = EventHeader::new(1, 4, Priority::High, 0);
        assert_eq!(rt.evaluate(&other, b"", &mut alerts), 0);
        assert_eq!(alerts.0, 3);
    }
}
