//! `[pipeline]`: topics, rate limits, dedup and aggregation windows, retries, alert rules.

use pinstream_core::process::RetryPolicy;
use pinstream_core::process::realtime::Condition;
use serde::Deserialize;

/// `pipeline.batch_store`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchStoreSetting {
    /// Every batch-lane event is stored (and acknowledged) on its own, in the `batch` log;
    /// the per-window aggregates are stored besides, as summaries, in the `aggregates` log.
    #[default]
    Events,
    /// Only the aggregates (the `batch` log gets no events): an event counts as stored (and
    /// is acknowledged) when the aggregate of its window is.
    Aggregates,
}

impl BatchStoreSetting {
    /// The core's setting.
    pub const fn to_core(self) -> pinstream_core::process::BatchStore {
        match self {
            Self::Events => pinstream_core::process::BatchStore::Events,
            Self::Aggregates => pinstream_core::process::BatchStore::Aggregates,
        }
    }
}

/// `[pipeline]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSection {
    /// Registered topic names; ids are given in this order, from 0.
    pub topics: Vec<String>,
    /// Events per second per client (a version-2 producer, else an IP address); 0 =
    /// unlimited.
    pub rate_per_source: u64,
    /// Token-bucket depth per client.
    pub burst_per_source: u64,
    /// Transactional dedup window, milliseconds.
    pub dedup_window_ms: u64,
    /// Batch aggregation window, milliseconds.
    pub aggregate_window_ms: u64,
    /// What the batch lane stores: every event (in the `batch` log) and the aggregates (in
    /// the `aggregates` log) (`"events"`), or only the aggregates (`"aggregates"`).
    pub batch_store: BatchStoreSetting,
    /// Sink attempts in all, the first included.
    pub retry_attempts: u32,
    /// Wait before the first retry, microseconds.
    pub retry_backoff_us: u64,
    /// Longest wait between two attempts, microseconds.
    pub retry_max_backoff_us: u64,
    /// Events per lane per processing round.
    pub budget: usize,
    /// Alert rules of the realtime lane.
    pub alert_rules: Vec<AlertRuleSection>,
}

impl Default for PipelineSection {
    fn default() -> Self {
        Self {
            topics: vec!["default".to_owned()],
            rate_per_source: 0,
            burst_per_source: 0,
            dedup_window_ms: 10_000,
            aggregate_window_ms: 100,
            batch_store: BatchStoreSetting::Events,
            retry_attempts: 4,
            retry_backoff_us: 100,
            retry_max_backoff_us: 10_000,
            budget: 256,
            alert_rules: Vec::new(),
        }
    }
}

impl PipelineSection {
    /// The sink retry policy in nanosecond ticks.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.retry_attempts,
            backoff: self.retry_backoff_us.saturating_mul(1_000),
            max_backoff: self.retry_max_backoff_us.saturating_mul(1_000),
        }
    }

    /// The id of topic `name` (its index in [`topics`](Self::topics)).
    pub fn topic_id(&self, name: &str) -> Option<u16> {
        self.topics
            .iter()
            .position(|t| t == name)
            .and_then(|i| u16::try_from(i).ok())
    }
}

/// One alert rule: `{ topic = "default", when = "above", value = 100 }`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRuleSection {
    /// The topic name (must be in `pipeline.topics`).
    pub topic: String,
    /// When it fires.
    pub when: AlertWhen,
    /// The threshold of `above` / `below` (ignored for `always`).
    #[serde(default)]
    pub value: i64,
}

impl AlertRuleSection {
    /// The core's condition.
    pub const fn condition(&self) -> Condition {
        match self.when {
            AlertWhen::Always => Condition::Always,
            AlertWhen::Above => Condition::Above(self.value),
            AlertWhen::Below => Condition::Below(self.value),
        }
    }
}

/// When an alert rule fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertWhen {
    /// Every event of the topic.
    Always,
    /// Value strictly above the threshold.
    Above,
    /// Value strictly below the threshold.
    Below,
}
