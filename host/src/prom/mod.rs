//! A small writer for the Prometheus text exposition format, version 0.0.4.
//!
//! [`PromWriter`] appends to a `String`: [`family`](PromWriter::family) writes the `# HELP`
//! and `# TYPE` lines of a metric family (once; a second call for the same family is a bug and
//! is ignored), [`sample`](PromWriter::sample) writes one series. Label values are escaped
//! (`\\`, `\"`, `\n`), help texts too (`\\`, `\n`); floats are written so Go's `ParseFloat`
//! reads them (`NaN`, `+Inf`, `-Inf`). Counters end in `_total`, latencies are histograms in
//! seconds (`_bucket` with `le` labels from 1 µs to 10 s, `_sum`, `_count`), so a windowed
//! quantile is `histogram_quantile(0.99, rate(…_bucket[1m]))`: `promtool check metrics`
//! accepts the output (the admin tests run it when `promtool` is on `PATH`).
//!
//! The `write_*` functions render pinstream's figures: the core's
//! [`StageCounters`], the host's [`HostCounters`](crate::stats::HostCounters), latency histograms, the busy ratio of each
//! polling thread and the control plane's level.
//!
//! ```
//! use pinstream_host::prom::{MetricType, PromWriter};
//!
//! let mut out = String::new();
//! let mut w = PromWriter::new(&mut out);
//! w.family("demo_requests_total", MetricType::Counter, "Requests served.");
//! w.sample("demo_requests_total", &[("path", "/a\"b")], 3.0);
//! let expected = concat!(
//!     "# HELP demo_requests_total Requests served.\n",
//!     "# TYPE demo_requests_total counter\n",
//!     "demo_requests_total{path=\"/a\\\"b\"} 3\n",
//! );
//! assert_eq!(out, expected);
//! ```

use std::fmt::Write as _;

use pinstream_core::accounting::StageCounters;
use pinstream_core::control::Level;
use pinstream_core::event::Lane;
use pinstream_core::metrics::{
    BUCKETS as CORE_BUCKETS, Histogram as CoreHistogram, bucket_upper as core_bucket_upper,
};
use pinstream_core::reason::Reason;

use crate::stats::{LATENCY_BUCKETS_NS, LatencyBuckets, busy_ratio};

/// The `# TYPE` of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricType {
    /// A monotonic count; the name ends in `_total`.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Quantiles plus `_sum` and `_count`.
    Summary,
    /// Cumulative `_bucket`s with an `le` label, plus `_sum` and `_count`.
    Histogram,
}

impl MetricType {
    /// The word in the `# TYPE` line.
    pub const fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Summary => "summary",
            MetricType::Histogram => "histogram",
        }
    }
}

/// Whether `name` matches `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_' | b':'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// Whether `name` matches `[a-zA-Z_][a-zA-Z0-9_]*` and does not start with `__` (reserved).
pub fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.starts_with("__")
}

/// Appends the exposition-format text of metric families to a `String`.
///
/// Names and label names are pinstream's own constants: a malformed one is a programming error,
/// caught by `debug_assert!` and by the admin tests' format checker.
#[derive(Debug)]
pub struct PromWriter<'a> {
    out: &'a mut String,
    /// The family whose samples are being written (samples must follow their header).
    current: String,
    current_type: Option<MetricType>,
}

impl<'a> PromWriter<'a> {
    /// A writer appending to `out`.
    pub fn new(out: &'a mut String) -> Self {
        Self {
            out,
            current: String::new(),
            current_type: None,
        }
    }

    /// Starts the family `name`: its `# HELP` and `# TYPE` lines. Write every sample of a
    /// family right after its header, and each family once.
    pub fn family(&mut self, name: &str, kind: MetricType, help: &str) {
        debug_assert!(is_metric_name(name), "bad metric name {name:?}");
        debug_assert_eq!(
            kind == MetricType::Counter,
            name.ends_with("_total"),
            "counters, and only counters, end in _total: {name}"
        );
        let _ = write!(self.out, "# HELP {name} ");
        escape_into(self.out, help, false);
        let _ = writeln!(self.out, "\n# TYPE {name} {}", kind.as_str());
        self.current.clear();
        self.current.push_str(name);
        self.current_type = Some(kind);
    }

    /// Writes one sample `name{labels} value`. For a summary family `name` is the family name
    /// (with a `quantile` label), or it with `_sum` / `_count`; for a histogram family it is
    /// the family name with `_bucket` (with an `le` label), `_sum` or `_count`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let suffix = name.strip_prefix(self.current.as_str());
        debug_assert!(
            match self.current_type {
                Some(MetricType::Summary) => matches!(suffix, Some("" | "_sum" | "_count")),
                Some(MetricType::Histogram) => {
                    matches!(suffix, Some("_bucket" | "_sum" | "_count"))
                }
                _ => name == self.current,
            },
            "sample {name} outside its family (current: {})",
            self.current
        );
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                debug_assert!(is_label_name(k), "bad label name {k:?}");
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_into(self.out, v, true);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        write_float(self.out, value);
        self.out.push('\n');
    }

    /// [`sample`](Self::sample) for an integer count (exact up to 2^53).
    pub fn sample_u64(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.sample(name, labels, value as f64);
    }

    /// Writes a whole family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, kind: MetricType, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Appends `s` escaped: `\` → `\\`, newline → `\n`, and for label values `"` → `\"`.
fn escape_into(out: &mut String, s: &str, quote: bool) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Appends `v` the way Prometheus parses it: integers without a fraction, `NaN`, `±Inf`.
fn write_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        // Rust's `Display` for f64 is the shortest round-trip decimal, never an exponent.
        let _ = write!(out, "{v}");
    }
}

/// Renders the core's outcome counters of each stage, labelled `stage` (and `reason` or
/// `lane`): `pinstream_events_{ingested,stored,rejected,dead_lettered}_total`, lane
/// throughput, frames, alerts, aggregates, sink retries, dead-letter overflow, and the lane
/// wait as a histogram in seconds (`seconds_per_tick` converts the core's ticks).
pub fn write_stage_counters(
    w: &mut PromWriter<'_>,
    stages: &[(&str, &StageCounters)],
    seconds_per_tick: f64,
) {
    type Pick = fn(&StageCounters) -> u64;
    let simple: [(&str, &str, Pick); 10] = [
        (
            "pinstream_events_ingested_total",
            "Units (events, or malformed frames) that entered the engine.",
            |s| s.ingested.get(),
        ),
        (
            "pinstream_events_stored_total",
            "Events handed to storage successfully.",
            |s| s.stored.get(),
        ),
        (
            "pinstream_frames_dispatched_total",
            "Well-formed frames dispatched.",
            |s| s.frames.get(),
        ),
        ("pinstream_alerts_total", "Alert handler calls.", |s| {
            s.alerts.get()
        }),
        (
            "pinstream_aggregates_stored_total",
            "Aggregate records stored by the batch lane.",
            |s| s.aggregates.get(),
        ),
        (
            "pinstream_aggregates_dropped_total",
            "Aggregates refused by storage on every attempt while their events were stored one by one (a summary lost, no event).",
            |s| s.aggregates_dropped.get(),
        ),
        (
            "pinstream_sink_retries_total",
            "Sink hand-offs that failed and were scheduled again.",
            |s| s.sink_retries.get(),
        ),
        (
            "pinstream_dead_letter_overflow_total",
            "Dead letters counted but not recorded because the dead-letter ring was full.",
            |s| s.dead_letter_overflow.get(),
        ),
        (
            "pinstream_events_duplicates_total",
            "Events not stored again because an event with their id is stored (transactional dedup window); acknowledged, not dead letters.",
            |s| s.reason(Reason::Duplicate).get(),
        ),
        (
            "pinstream_dedup_evictions_total",
            "Dedup table entries evicted before their window ended to record a new id (the table is small for the rate).",
            |s| s.dedup_evictions.get(),
        ),
    ];
    for (name, help, pick) in simple {
        w.family(name, MetricType::Counter, help);
        for (stage, c) in stages {
            w.sample_u64(name, &[("stage", stage)], pick(c));
        }
    }
    for (name, help, rejection) in [
        (
            "pinstream_events_rejected_total",
            "Units rejected at the door, by reason.",
            true,
        ),
        (
            "pinstream_events_dead_lettered_total",
            "Events dead-lettered, by reason.",
            false,
        ),
    ] {
        w.family(name, MetricType::Counter, help);
        for (stage, c) in stages {
            let of_kind = |r: &&Reason| r.is_rejection() == rejection && !r.is_duplicate();
            for r in Reason::ALL.iter().filter(of_kind) {
                w.sample_u64(
                    name,
                    &[("stage", stage), ("reason", r.name())],
                    c.reason(*r).get(),
                );
            }
        }
    }
    type PickLane = fn(&StageCounters, usize) -> u64;
    let lanes: [(&str, &str, PickLane); 2] = [
        (
            "pinstream_lane_queued_total",
            "Events put into each lane.",
            |s, i| s.queued[i].get(),
        ),
        (
            "pinstream_lane_processed_total",
            "Events taken out of each lane by the processors.",
            |s, i| s.processed[i].get(),
        ),
    ];
    for (name, help, pick) in lanes {
        w.family(name, MetricType::Counter, help);
        for (stage, c) in stages {
            for lane in Lane::ALL {
                w.sample_u64(
                    name,
                    &[("stage", stage), ("lane", lane.name())],
                    pick(c, lane.index()),
                );
            }
        }
    }
    let name = "pinstream_lane_wait_seconds";
    w.family(
        name,
        MetricType::Histogram,
        "Time from dispatch into a lane to a processor taking the event out.",
    );
    for (stage, c) in stages {
        write_core_histogram(w, name, stage, &c.lane_wait, seconds_per_tick);
    }
}

/// A core histogram (log-linear, 16 sub-buckets per power of two) as a Prometheus histogram
/// with the `le` bounds of [`LATENCY_BUCKETS_NS`]: a core bucket counts towards a bound when
/// its largest value is at most the bound, so each `le` count is exact to one core bucket
/// (6.25 % of the value).
fn write_core_histogram(
    w: &mut PromWriter<'_>,
    name: &str,
    stage: &str,
    h: &CoreHistogram,
    seconds_per_tick: f64,
) {
    let mut le = [0u64; LATENCY_BUCKETS_NS.len()];
    let mut b = 0;
    let mut below = 0u64;
    for (slot, &bound_ns) in le.iter_mut().zip(&LATENCY_BUCKETS_NS) {
        let bound_ticks = (bound_ns as f64 * 1e-9 / seconds_per_tick) as u64;
        while b < CORE_BUCKETS && core_bucket_upper(b) <= bound_ticks {
            below += h.bucket_count(b);
            b += 1;
        }
        *slot = below;
    }
    let buckets = LatencyBuckets {
        count: h.count(),
        sum_ns: (h.sum() as f64 * seconds_per_tick * 1e9) as u128,
        le,
    };
    write_buckets(w, name, stage, &buckets);
}

/// One stage's `_bucket` series (22 bounds and `+Inf`), `_sum` and `_count`.
fn write_buckets(w: &mut PromWriter<'_>, name: &str, stage: &str, b: &LatencyBuckets) {
    let bucket = suffixed(name, "_bucket");
    let mut label = String::new();
    for (&bound_ns, &count) in LATENCY_BUCKETS_NS.iter().zip(&b.le) {
        label.clear();
        write_float(&mut label, bound_ns as f64 / 1e9);
        // The counts are cumulative by construction; never let one exceed the total (a
        // recorder publishing between two reads of the same lock cannot, but be safe).
        w.sample_u64(
            &bucket,
            &[("stage", stage), ("le", &label)],
            count.min(b.count),
        );
    }
    w.sample_u64(&bucket, &[("stage", stage), ("le", "+Inf")], b.count);
    w.sample(
        &suffixed(name, "_sum"),
        &[("stage", stage)],
        b.sum_ns as f64 / 1e9,
    );
    w.sample_u64(&suffixed(name, "_count"), &[("stage", stage)], b.count);
}

fn suffixed(name: &str, suffix: &str) -> String {
    let mut s = String::with_capacity(name.len() + suffix.len());
    s.push_str(name);
    s.push_str(suffix);
    s
}

mod host;
mod process;

pub use host::{HOST_METRICS, HostMetric, TCP_CLOSE_REASONS, write_host_counters};
pub use process::write_process;

/// Renders latency histograms as the family `name` (which should end in `_seconds`), one
/// set of series per `(stage, buckets)`, bounds from [`LATENCY_BUCKETS_NS`].
pub fn write_latency(
    w: &mut PromWriter<'_>,
    name: &str,
    help: &str,
    stages: &[(&str, &LatencyBuckets)],
) {
    w.family(name, MetricType::Histogram, help);
    for (stage, b) in stages {
        write_buckets(w, name, stage, b);
    }
}

/// Renders the time split of polling threads, from `(thread, busy_ns, idle_ns)`:
/// `pinstream_thread_busy_seconds_total`, `pinstream_thread_idle_seconds_total` (take a
/// `rate()` of them for a windowed load) and `pinstream_thread_busy_ratio` since start-up.
pub fn write_thread_load(w: &mut PromWriter<'_>, threads: &[(&str, u64, u64)]) {
    let name = "pinstream_thread_busy_seconds_total";
    w.family(
        name,
        MetricType::Counter,
        "Time a polling thread spent in rounds that did work.",
    );
    for (t, busy, _) in threads {
        w.sample(name, &[("thread", t)], *busy as f64 / 1e9);
    }
    let name = "pinstream_thread_idle_seconds_total";
    w.family(
        name,
        MetricType::Counter,
        "Time a polling thread spent spinning, yielding or parked without work.",
    );
    for (t, _, idle) in threads {
        w.sample(name, &[("thread", t)], *idle as f64 / 1e9);
    }
    let name = "pinstream_thread_busy_ratio";
    w.family(
        name,
        MetricType::Gauge,
        "busy / (busy + idle) since start-up: the real load of a thread top shows 100% busy.",
    );
    for (t, busy, idle) in threads {
        w.sample(name, &[("thread", t)], busy_ratio(*busy, *idle));
    }
}

/// Renders the control plane's state: `pinstream_control_level` (0 = healthy ..
/// 4 = emergency), `pinstream_control_state{level=...}` (1 for the current level, 0 for the
/// others) and `pinstream_control_transitions_total`.
pub fn write_control(w: &mut PromWriter<'_>, level: Level, transitions: u64) {
    w.single(
        "pinstream_control_level",
        MetricType::Gauge,
        "Control-plane level: 0 healthy, 1 elevated, 2 degraded, 3 critical, 4 emergency.",
        level.index() as f64,
    );
    let name = "pinstream_control_state";
    w.family(
        name,
        MetricType::Gauge,
        "1 for the control plane's current level, 0 for the others.",
    );
    for l in Level::ALL {
        w.sample(
            name,
            &[("level", l.name())],
            if l == level { 1.0 } else { 0.0 },
        );
    }
    w.single(
        "pinstream_control_transitions_total",
        MetricType::Counter,
        "Control-plane level changes.",
        transitions as f64,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_metric_name("a_b:c9"));
        assert!(!is_metric_name("9a"));
        assert!(!is_metric_name(""));
        assert!(!is_metric_name("a-b"));
        assert!(is_label_name("stage"));
        assert!(!is_label_name("__x"));
        assert!(!is_label_name("a:b"));
        for &(name, kind, _, _) in HOST_METRICS {
            assert!(is_metric_name(name), "{name}");
            assert_eq!(
                kind == MetricType::Counter,
                name.ends_with("_total"),
                "{name}"
            );
        }
    }

    #[test]
    fn core_histogram_as_prometheus_buckets() {
        let h = CoreHistogram::new();
        for _ in 0..1000 {
            h.record(2_000); // 2 µs
        }
        for _ in 0..10 {
            h.record(20_000_000); // 20 ms
        }
        let mut out = String::new();
        let mut w = PromWriter::new(&mut out);
        w.family("x_seconds", MetricType::Histogram, "x.");
        write_core_histogram(&mut w, "x_seconds", "s", &h, 1e-9);
        for line in [
            "x_seconds_bucket{stage=\"s\",le=\"0.000001\"} 0\n",
            "x_seconds_bucket{stage=\"s\",le=\"0.0000025\"} 1000\n",
            "x_seconds_bucket{stage=\"s\",le=\"0.01\"} 1000\n",
            "x_seconds_bucket{stage=\"s\",le=\"0.025\"} 1010\n",
            "x_seconds_bucket{stage=\"s\",le=\"+Inf\"} 1010\n",
            "x_seconds_count{stage=\"s\"} 1010\n",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
        // The buckets never decrease.
        let counts: Vec<u64> = out
            .lines()
            .filter(|l| l.starts_with("x_seconds_bucket"))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(counts.len(), LATENCY_BUCKETS_NS.len() + 1);
        assert!(counts.windows(2).all(|p| p[0] <= p[1]), "{counts:?}");
    }

    #[test]
    fn escaping_and_floats() {
        let mut out = String::new();
        let mut w = PromWriter::new(&mut out);
        w.family("x", MetricType::Gauge, "a \\ b\nc \"q\"");
        w.sample("x", &[("l", "a\\b\"c\nd")], f64::NAN);
        w.sample("x", &[("l", "inf")], f64::INFINITY);
        w.sample("x", &[("l", "-inf")], f64::NEG_INFINITY);
        w.sample("x", &[("l", "small")], 1e-9);
        w.sample("x", &[("l", "int")], 42.0);
        assert_eq!(
            out,
            "# HELP x a \\\\ b\\nc \"q\"\n# TYPE x gauge\n\
             x{l=\"a\\\\b\\\"c\\nd\"} NaN\n\
             x{l=\"inf\"} +Inf\n\
             x{l=\"-inf\"} -Inf\n\
             x{l=\"small\"} 0.000000001\n\
             x{l=\"int\"} 42\n"
        );
    }

    #[test]
    fn control_state_marks_one_level() {
        let mut out = String::new();
        write_control(&mut PromWriter::new(&mut out), Level::Degraded, 7);
        assert!(out.contains("pinstream_control_level 2\n"));
        assert!(out.contains("pinstream_control_state{level=\"degraded\"} 1\n"));
        assert!(out.contains("pinstream_control_state{level=\"healthy\"} 0\n"));
        assert!(out.contains("pinstream_control_transitions_total 7\n"));
    }
}
