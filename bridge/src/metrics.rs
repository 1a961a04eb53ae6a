//! A bridge's figures: counters the bridge's threads bump, read by `/metrics` and the
//! runner's status line.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pinstream_host::prom::{MetricType, PromWriter};

/// The last error and when one was last reported.
#[derive(Debug, Default)]
struct ErrorLog {
    last: Option<String>,
    reported: bool,
    at: Option<Instant>,
    /// Errors not reported since the last report.
    unreported: u64,
}

/// At most one error line per bridge this often.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// One bridge's counters and gauges (relaxed atomics: figures, not synchronisation).
#[derive(Debug, Default)]
pub struct BridgeMetrics {
    /// The bridge's name (the `bridge` label).
    pub name: String,
    /// Publishes sent, retries included.
    pub published: AtomicU64,
    /// PubAcks received (one per record, duplicates included).
    pub acked: AtomicU64,
    /// PubAcks that said the message was a duplicate (a resend JetStream dropped).
    pub duplicates: AtomicU64,
    /// Failed publishes (a PubAck error, a timeout, no stream): each is retried.
    pub errors: AtomicU64,
    /// Records found already in the stream by the resume scan, not sent again.
    pub skipped: AtomicU64,
    /// Connections to NATS lost (the client reconnects).
    pub nats_reconnects: AtomicU64,
    /// Consumer connections to the engine reopened.
    pub engine_reconnects: AtomicU64,
    /// The position committed to the engine.
    pub committed: AtomicU64,
    /// The log's high watermark as the engine last reported it.
    pub high_watermark: AtomicU64,
    /// Sum of publish-to-PubAck latencies, nanoseconds, and their count.
    pub latency_ns_sum: AtomicU64,
    /// See `latency_ns_sum`.
    pub latency_count: AtomicU64,
    /// 1 while connected to NATS.
    pub nats_connected: AtomicU64,
    /// The last error, for the status line and the logs, and how it was reported
    /// ([`take_new_error`](Self::take_new_error)).
    last_error: Mutex<ErrorLog>,
}

impl BridgeMetrics {
    /// Zeroed figures for the bridge `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    /// Records stored and visible but not yet committed: high watermark − committed.
    pub fn lag(&self) -> u64 {
        self.high_watermark
            .load(Ordering::Relaxed)
            .saturating_sub(self.committed.load(Ordering::Relaxed))
    }

    /// Keeps `e` as the last error.
    pub fn set_error(&self, e: String) {
        let mut log = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        log.last = Some(e);
        log.reported = false;
        log.unreported += 1;
    }

    /// The last error, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last
            .clone()
    }

    /// The last error if it was not reported yet and none was in the last 5 s, with how
    /// many came since the last report: the runner prints errors without flooding.
    pub fn take_new_error(&self) -> Option<String> {
        let mut log = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        if log.reported || log.at.is_some_and(|t| t.elapsed() < REPORT_EVERY) {
            return None;
        }
        let e = log.last.clone()?;
        let more = log.unreported.saturating_sub(1);
        (log.reported, log.at, log.unreported) = (true, Some(Instant::now()), 0);
        Some(if more > 0 {
            format!("{e} ({more} more error(s) since the last report)")
        } else {
            e
        })
    }

    /// `bridge NAME lag N published/s …`: one part of the runner's status line.
    pub fn status(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "bridge {} lag {} acked {} errors {}{}{}{}",
            self.name,
            self.lag(),
            g(&self.acked),
            g(&self.errors),
            match g(&self.skipped) {
                0 => String::new(),
                s => format!(" skipped {s}"),
            },
            match g(&self.duplicates) {
                0 => String::new(),
                d => format!(" duplicates {d}"),
            },
            if g(&self.nats_connected) == 1 {
                ""
            } else {
                " NATS DOWN"
            }
        )
    }
}

/// Reads one counter of a bridge.
type Field = fn(&BridgeMetrics) -> &AtomicU64;

/// Appends the families of every bridge in `bridges` (none: nothing).
pub fn render(bridges: &[&BridgeMetrics], out: &mut String) {
    if bridges.is_empty() {
        return;
    }
    let mut w = PromWriter::new(out);
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let gauge =
        |w: &mut PromWriter<'_>, name: &str, help: &str, f: &dyn Fn(&BridgeMetrics) -> u64| {
            w.family(name, MetricType::Gauge, help);
            for b in bridges {
                w.sample_u64(name, &[("bridge", &b.name)], f(b));
            }
        };
    gauge(
        &mut w,
        "pinstream_bridge_lag_events",
        "Records below the log's high watermark not yet committed by the bridge (in JetStream or on their way).",
        &|b| b.lag(),
    );
    gauge(
        &mut w,
        "pinstream_bridge_committed_offset",
        "The bridge's committed consumer position: every record below it has its PubAck.",
        &|b| g(&b.committed),
    );
    gauge(
        &mut w,
        "pinstream_bridge_nats_connected",
        "1 while the bridge is connected to NATS.",
        &|b| g(&b.nats_connected),
    );
    let counters: [(&str, &str, Field); 6] = [
        (
            "pinstream_bridge_published_total",
            "Publishes sent to JetStream, retries included.",
            |b| &b.published,
        ),
        (
            "pinstream_bridge_acked_total",
            "PubAcks received, one per record.",
            |b| &b.acked,
        ),
        (
            "pinstream_bridge_duplicates_total",
            "PubAcks that reported a duplicate: a resend JetStream's duplicate window dropped.",
            |b| &b.duplicates,
        ),
        (
            "pinstream_bridge_errors_total",
            "Failed publishes (PubAck error, timeout, no stream); each is retried, none dropped.",
            |b| &b.errors,
        ),
        (
            "pinstream_bridge_skipped_total",
            "Records the resume scan found in the stream already and did not send again.",
            |b| &b.skipped,
        ),
        (
            "pinstream_bridge_nats_reconnects_total",
            "Connections to NATS lost and reopened.",
            |b| &b.nats_reconnects,
        ),
    ];
    for (name, help, f) in counters {
        w.family(name, MetricType::Counter, help);
        for b in bridges {
            w.sample_u64(name, &[("bridge", &b.name)], g(f(b)));
        }
    }
    w.family(
        "pinstream_bridge_engine_reconnects_total",
        MetricType::Counter,
        "Consumer connections to the engine reopened.",
    );
    for b in bridges {
        w.sample_u64(
            "pinstream_bridge_engine_reconnects_total",
            &[("bridge", &b.name)],
            g(&b.engine_reconnects),
        );
    }
    let lat = "pinstream_bridge_publish_latency_seconds";
    w.family(
        lat,
        MetricType::Summary,
        "From a publish to its PubAck (retries counted from their own send).",
    );
    for b in bridges {
        let l = [("bridge", b.name.as_str())];
        w.sample(&format!("{lat}_sum"), &l, g(&b.latency_ns_sum) as f64 / 1e9);
        w.sample_u64(&format!("{lat}_count"), &l, g(&b.latency_count));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_labelled_by_bridge() {
        let a = BridgeMetrics::new("a");
        a.high_watermark.store(100, Ordering::Relaxed);
        a.committed.store(40, Ordering::Relaxed);
        let b = BridgeMetrics::new("b");
        let mut out = String::new();
        render(&[&a, &b], &mut out);
        assert!(
            out.contains("pinstream_bridge_lag_events{bridge=\"a\"} 60\n"),
            "{out}"
        );
        assert!(
            out.contains("pinstream_bridge_lag_events{bridge=\"b\"} 0\n"),
            "{out}"
        );
        assert!(out.contains("pinstream_bridge_publish_latency_seconds_count{bridge=\"b\"} 0"));
        assert_eq!(a.status(), "bridge a lag 60 acked 0 errors 0 NATS DOWN");
        // `promtool check metrics` accepts it, where promtool is installed (CI installs it).
        if let Ok(mut child) = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(out.as_bytes())
                .unwrap();
            let o = child.wait_with_output().unwrap();
            assert!(
                o.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}
