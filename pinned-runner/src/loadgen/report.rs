//! What `pinstream loadgen` prints: the progress bar on stderr, the text summary and the
//! `--json` line, from a [`LoadReport`].

use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::Duration;

use hdrhistogram::Histogram;
use pinstream_host::loadgen::{AckWait, LoadConfig, LoadReport, Transport};
use serde::Serialize;
use serde_json::value::RawValue;

/// Stored events per second over the run (`None` without acknowledgements): the only
/// throughput figure; dead-lettered and rejected events are not throughput.
fn stored_per_sec(report: &LoadReport) -> Option<f64> {
    report
        .outcomes
        .map(|o| o.stored as f64 / report.elapsed.as_secs_f64().max(1e-9))
}

/// A one-line progress bar on stderr.
pub(super) struct ProgressBar {
    /// Events in all, or `None` when the run is bounded by a duration.
    total: Option<u64>,
    duration: Option<Duration>,
    /// Redraw in place (`\r`) on a terminal; one line per update otherwise.
    terminal: bool,
    last: (Duration, u64),
}

impl ProgressBar {
    const WIDTH: usize = 30;

    pub(super) fn new(cfg: &LoadConfig, terminal: bool) -> Self {
        Self {
            total: cfg.duration.is_none().then_some(cfg.events),
            duration: cfg.duration,
            terminal,
            last: (Duration::ZERO, 0),
        }
    }

    pub(super) fn line(&mut self, sent: u64, elapsed: Duration) -> String {
        let (t0, n0) = self.last;
        let dt = elapsed.saturating_sub(t0).as_secs_f64();
        let rate = if dt > 0.0 {
            sent.saturating_sub(n0) as f64 / dt
        } else {
            0.0
        };
        self.last = (elapsed, sent);
        let (fraction, what) = match (self.total, self.duration) {
            (Some(total), _) => (
                sent as f64 / total.max(1) as f64,
                format!("{sent}/{total} events"),
            ),
            (None, Some(d)) => (
                elapsed.as_secs_f64() / d.as_secs_f64().max(1e-9),
                format!(
                    "{:.1}/{:.1} s, {sent} events",
                    elapsed.as_secs_f64(),
                    d.as_secs_f64()
                ),
            ),
            (None, None) => (0.0, format!("{sent} events")),
        };
        let fraction = fraction.clamp(0.0, 1.0);
        let filled = (fraction * Self::WIDTH as f64).round() as usize;
        format!(
            "[{}{}] {:>5.1}% {what}  {:.0} events/s",
            "#".repeat(filled),
            ".".repeat(Self::WIDTH - filled),
            fraction * 100.0,
            rate
        )
    }

    pub(super) fn draw(&mut self, sent: u64, elapsed: Duration) {
        let line = self.line(sent, elapsed);
        let mut err = io::stderr().lock();
        // A progress bar that cannot be drawn is not worth failing the run for.
        let _ = if self.terminal {
            write!(err, "\r{line}\x1b[K")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }

    pub(super) fn finish(&mut self, sent: u64, elapsed: Duration) {
        self.draw(sent, elapsed);
        if self.terminal {
            let _ = writeln!(io::stderr());
        }
    }
}

/// Latency quantiles in microseconds: p50, p90, p99, p99.9, max.
fn quantiles_us(h: &Histogram<u64>) -> [f64; 5] {
    let us = |ns: u64| ns as f64 / 1000.0;
    [
        us(h.value_at_quantile(0.5)),
        us(h.value_at_quantile(0.9)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
        us(h.max()),
    ]
}

/// `v` as a JSON number written with `decimals` digits after the point (`0.500000`, as the
/// `--json` line always showed them); `None` (JSON `null`) for no value or a value JSON
/// cannot hold (NaN, infinity).
fn fixed(v: Option<f64>, decimals: usize) -> Option<Box<RawValue>> {
    RawValue::from_string(format!("{:.*}", decimals, v?)).ok()
}

/// The `--json` line: keys in this order (see the module docs), `null` for what a run
/// without acknowledgements cannot know.
#[derive(Serialize)]
struct LoadJson {
    system: &'static str,
    transport: &'static str,
    events: u64,
    seconds: Option<Box<RawValue>>,
    events_per_sec: Option<Box<RawValue>>,
    bytes_per_sec: Option<Box<RawValue>>,
    stored_per_sec: Option<Box<RawValue>>,
    stored: Option<u64>,
    duplicates: Option<u64>,
    dead_lettered: Option<u64>,
    rejected: Option<u64>,
    ack_p50_us: Option<Box<RawValue>>,
    ack_p90_us: Option<Box<RawValue>>,
    ack_p99_us: Option<Box<RawValue>>,
    ack_p999_us: Option<Box<RawValue>>,
    ack_max_us: Option<Box<RawValue>>,
    /// The consumers' part, only with `--consumers`: the line without it is unchanged.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    consume: Option<ConsumeJson>,
}

/// `--consumers`' part of the `--json` line.
#[derive(Serialize)]
struct ConsumeJson {
    consumers: usize,
    /// Events each consumer read.
    consumed: Vec<u64>,
    consumer_reconnects: u64,
    e2e_p50_us: Option<Box<RawValue>>,
    e2e_p99_us: Option<Box<RawValue>>,
    e2e_p999_us: Option<Box<RawValue>>,
    e2e_max_us: Option<Box<RawValue>>,
    /// Why a consumer's count differs from the events stored; null when each matches.
    consume_mismatch: Option<String>,
}

/// The report as one JSON line (keys fixed; see the module docs).
pub fn json(report: &LoadReport) -> String {
    let q = report.ack_latency.as_ref().map(quantiles_us);
    let quantile = |i: usize| fixed(q.map(|q| q[i]), 1);
    let o = report.outcomes;
    let line = LoadJson {
        system: "pinstream",
        transport: report.transport.name(),
        events: report.sent,
        seconds: fixed(Some(report.elapsed.as_secs_f64()), 6),
        events_per_sec: fixed(Some(report.events_per_sec()), 1),
        bytes_per_sec: fixed(Some(report.bytes_per_sec()), 1),
        stored_per_sec: fixed(stored_per_sec(report), 1),
        stored: o.map(|o| o.stored),
        duplicates: o.map(|o| o.duplicates),
        dead_lettered: o.map(|o| o.dead_lettered),
        rejected: o.map(|o| o.rejected),
        ack_p50_us: quantile(0),
        ack_p90_us: quantile(1),
        ack_p99_us: quantile(2),
        ack_p999_us: quantile(3),
        ack_max_us: quantile(4),
        consume: report.consume.as_ref().map(|c| {
            let q = quantiles_us(&c.latency);
            let e2e = |i: usize| fixed((!c.latency.is_empty()).then_some(q[i]), 1);
            ConsumeJson {
                consumers: c.consumers,
                consumed: c.consumed.clone(),
                consumer_reconnects: c.reconnects,
                e2e_p50_us: e2e(0),
                e2e_p99_us: e2e(2),
                e2e_p999_us: e2e(3),
                e2e_max_us: e2e(4),
                consume_mismatch: report.consume_error(),
            }
        }),
    };
    // Cannot fail: no maps, and every field's `Serialize` is serde's or serde_json's own.
    let mut s = serde_json::to_string(&line).expect("the load report serialises to JSON");
    s.push('\n');
    s
}

/// The text summary.
pub(super) fn summary(cfg: &LoadConfig, report: &LoadReport) -> String {
    let mut s = String::new();
    let rate = if cfg.rate == 0 {
        "flat out".to_string()
    } else {
        format!("{} events/s", cfg.rate)
    };
    let _ = writeln!(
        s,
        "pinstream loadgen: {} {}, {} connection(s), {} events/frame, {}-byte payloads, {rate}, ack {}",
        report.transport.name(),
        cfg.addr,
        report.connections,
        cfg.batch,
        cfg.payload,
        match report.ack {
            AckWait::Wait => "wait",
            AckWait::None => "none",
        }
    );
    let _ = writeln!(
        s,
        "  events sent     {} in {} frames",
        report.sent, report.frames
    );
    match report.outcomes {
        Some(o) => {
            let _ = writeln!(s, "  stored          {}", o.stored);
            let _ = writeln!(s, "  duplicates      {}", o.duplicates);
            let _ = writeln!(s, "  dead-lettered   {}", o.dead_lettered);
            let _ = writeln!(s, "  rejected        {}", o.rejected);
        }
        None => {
            let why = if report.transport == Transport::Udp {
                "UDP has no acknowledgements"
            } else {
                "the server sent no ACK"
            };
            let _ = writeln!(s, "  stored etc.     unknown ({why})");
        }
    }
    if let Some(r) = report.first_reject {
        let _ = writeln!(
            s,
            "  REJECT frames   {} (first: frame {}, reason code {})",
            report.reject_frames, r.frame_seq, r.reason
        );
    }
    let _ = writeln!(s, "  seconds         {:.3}", report.elapsed.as_secs_f64());
    if let Some(r) = stored_per_sec(report) {
        let _ = writeln!(s, "  stored/s        {r:.0}");
    }
    let _ = writeln!(
        s,
        "  offered/s       {:.0} (events sent per second)",
        report.events_per_sec()
    );
    let _ = writeln!(
        s,
        "  MB/s            {:.2} (frame bytes, 1 MB = 10^6 bytes)",
        report.bytes_per_sec() / 1e6
    );
    match &report.ack_latency {
        Some(h) => {
            let [p50, p90, p99, p999, max] = quantiles_us(h);
            // Over HTTP the acknowledgement is the answer: a request's latency.
            let what = if report.transport == Transport::Http {
                "request latency us"
            } else {
                "ack latency us "
            };
            let _ = writeln!(
                s,
                "  {what} p50 {p50:.1}  p90 {p90:.1}  p99 {p99:.1}  p99.9 {p999:.1}  max {max:.1}"
            );
        }
        None => {
            let _ = writeln!(s, "  ack latency     not measured (--ack none)");
        }
    }
    if let Some(c) = &report.consume {
        let logs: Vec<&str> = c.logs.iter().map(|l| l.name()).collect();
        let _ = writeln!(
            s,
            "  consumers       {} on {} ({} log(s): {}), {} reconnect(s)",
            c.consumers,
            cfg.consumer_addr(),
            logs.len(),
            logs.join(", "),
            c.reconnects
        );
        let counts: Vec<String> = c.consumed.iter().map(u64::to_string).collect();
        let _ = writeln!(s, "  consumed        {} (per consumer)", counts.join(" "));
        if c.latency.is_empty() {
            let _ = writeln!(s, "  e2e latency     no event read");
        } else {
            let [p50, _, p99, p999, max] = quantiles_us(&c.latency);
            let _ = writeln!(
                s,
                "  e2e latency us  p50 {p50:.1}  p99 {p99:.1}  p99.9 {p999:.1}  max {max:.1} \
                 (send to consume)"
            );
        }
        match report.consume_error() {
            Some(e) => {
                let _ = writeln!(s, "  consumed != stored: {e}");
            }
            None => {
                let _ = writeln!(s, "  consumed == stored for every consumer");
            }
        }
    }
    s
}
