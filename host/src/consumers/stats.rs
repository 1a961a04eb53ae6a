//! What the consumer server counts ([`ConsumerStats`]) and its Prometheus families
//! ([`write_metrics`]). The serving thread updates relaxed atomics; the admin endpoint reads
//! them (and locks the small list of named positions, a cold path) at each scrape.

use std::sync::Mutex;

use pinstream_core::reason::Reason;

use super::watermark::Watermarks;
use crate::prom::{MetricType, PromWriter};
use crate::stats::Gauge;
use crate::storage::layout::LogId;

/// The consumer server's counters.
#[derive(Debug)]
pub struct ConsumerStats {
    /// Consumer connections open now.
    pub connected: Gauge,
    /// Records sent in DATA frames, per log ([`LogId::index`]).
    pub records_sent: [Gauge; LogId::COUNT],
    /// Bytes of records sent, per log.
    pub bytes_sent: [Gauge; LogId::COUNT],
    /// DATA frames sent, per log.
    pub data_frames: [Gauge; LogId::COUNT],
    /// Connections closed at once because `consumers.max_connections` (and a small slack
    /// of connections told `too_many_consumers`) were open.
    pub refused_connections: Gauge,
    /// Connections closed for not subscribing within `consumers.handshake_timeout_ms`.
    pub handshake_timeouts: Gauge,
    /// COMMITs answered with COMMITTED.
    pub commits: Gauge,
    /// COMMITs whose position could not be stored (the connection is closed).
    pub commit_failures: Gauge,
    /// REJECTs sent, by reason ([`Reason::index`]).
    pub rejects: [Gauge; Reason::COUNT],
    /// Connections closed because their segment files could not be read as expected.
    pub read_errors: Gauge,
    /// `consumers.auth = "token"`: connections refused `unauthenticated`, by
    /// [`AuthRefusal`] (its discriminant is the index).
    pub auth_refusals: [Gauge; AuthRefusal::ALL.len()],
    /// The named positions, `(log, name, committed offset)`, as the server last stored them.
    pub named: Mutex<Vec<(LogId, String, u64)>>,
}

impl ConsumerStats {
    /// All at zero.
    pub fn new() -> Self {
        Self {
            connected: Gauge::new(),
            records_sent: [const { Gauge::new() }; LogId::COUNT],
            bytes_sent: [const { Gauge::new() }; LogId::COUNT],
            data_frames: [const { Gauge::new() }; LogId::COUNT],
            refused_connections: Gauge::new(),
            handshake_timeouts: Gauge::new(),
            commits: Gauge::new(),
            commit_failures: Gauge::new(),
            rejects: [const { Gauge::new() }; Reason::COUNT],
            read_errors: Gauge::new(),
            auth_refusals: [const { Gauge::new() }; AuthRefusal::ALL.len()],
            named: Mutex::new(Vec::new()),
        }
    }
}

/// Why `consumers.auth = "token"` refused a connection (REJECT `unauthenticated`, closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthRefusal {
    /// Its HELLO carried no token.
    NoToken = 0,
    /// Its HELLO carried a token the engine does not know.
    UnknownToken = 1,
    /// It sent a SUBSCRIBE, CREDIT or COMMIT before any HELLO.
    BeforeHello = 2,
    /// Its HELLO carried a known token whose entry says `read = false`.
    ReadDenied = 3,
}

impl AuthRefusal {
    /// Every reason, in index order.
    pub const ALL: [AuthRefusal; 4] = [
        AuthRefusal::NoToken,
        AuthRefusal::UnknownToken,
        AuthRefusal::BeforeHello,
        AuthRefusal::ReadDenied,
    ];

    /// The metric's `reason` label.
    pub const fn name(self) -> &'static str {
        match self {
            AuthRefusal::NoToken => "no_token",
            AuthRefusal::UnknownToken => "unknown_token",
            AuthRefusal::BeforeHello => "before_hello",
            AuthRefusal::ReadDenied => "read_denied",
        }
    }
}

impl Default for ConsumerStats {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes the consumer families: the server's counters and, per log, the high watermark.
pub fn write_metrics(w: &mut PromWriter<'_>, s: &ConsumerStats, marks: &Watermarks) {
    w.single(
        "pinstream_consumers_connected",
        MetricType::Gauge,
        "Consumer connections open on the consumer listener.",
        s.connected.get() as f64,
    );
    let per_log: [(&str, &str, &[Gauge; LogId::COUNT]); 3] = [
        (
            "pinstream_consumer_records_sent_total",
            "Stored records sent to consumers in DATA frames.",
            &s.records_sent,
        ),
        (
            "pinstream_consumer_bytes_sent_total",
            "Bytes of stored records sent to consumers (sendfile), frame heads not included.",
            &s.bytes_sent,
        ),
        (
            "pinstream_consumer_data_frames_total",
            "DATA frames sent to consumers.",
            &s.data_frames,
        ),
    ];
    for (name, help, gauges) in per_log {
        w.family(name, MetricType::Counter, help);
        for id in LogId::ALL {
            w.sample_u64(name, &[("log", id.name())], gauges[id.index()].get());
        }
    }
    w.single(
        "pinstream_consumer_commits_total",
        MetricType::Counter,
        "Consumer positions stored durably (COMMIT answered with COMMITTED).",
        s.commits.get() as f64,
    );
    w.single(
        "pinstream_consumer_commit_failures_total",
        MetricType::Counter,
        "COMMITs whose position could not be stored (the connection was closed).",
        s.commit_failures.get() as f64,
    );
    w.single(
        "pinstream_consumer_connections_refused_total",
        MetricType::Counter,
        "Consumer connections closed at once: consumers.max_connections were open, and as many again were being told too_many_consumers.",
        s.refused_connections.get() as f64,
    );
    w.single(
        "pinstream_consumer_handshake_timeouts_total",
        MetricType::Counter,
        "Consumer connections closed for not subscribing within consumers.handshake_timeout_ms.",
        s.handshake_timeouts.get() as f64,
    );
    w.single(
        "pinstream_consumer_read_errors_total",
        MetricType::Counter,
        "Consumer connections closed because a segment file could not be read as its framing says.",
        s.read_errors.get() as f64,
    );
    let name = "pinstream_consumer_auth_refusals_total";
    w.family(
        name,
        MetricType::Counter,
        "Consumer connections refused by consumers.auth = \"token\" (REJECT 29 unauthenticated, closed), by reason: no_token (a HELLO without a token), unknown_token (a token not in [[auth.tokens]]), before_hello (a SUBSCRIBE, CREDIT or COMMIT before the HELLO), read_denied (a token whose entry says read = false).",
    );
    for r in AuthRefusal::ALL {
        w.sample_u64(
            name,
            &[("reason", r.name())],
            s.auth_refusals[r as usize].get(),
        );
    }
    w.family(
        "pinstream_consumer_rejects_total",
        MetricType::Counter,
        "REJECT frames sent on the consumer listener, by reason (the connection is closed after each).",
    );
    for r in Reason::ALL {
        let n = s.rejects[r.index()].get();
        // The version-3 reasons always (the family is never empty), others once seen.
        if n > 0 || r.code() >= Reason::UnknownLog.code() && r.code() <= Reason::ConsumerBusy.code()
        {
            w.sample_u64(
                "pinstream_consumer_rejects_total",
                &[("reason", r.name())],
                n,
            );
        }
    }
    w.family(
        "pinstream_log_high_watermark",
        MetricType::Gauge,
        "Per log, the offset below which records are visible to consumers (durable under engine.ack = durable, written otherwise).",
    );
    let mut hw = [0u64; LogId::COUNT];
    for id in LogId::ALL {
        hw[id.index()] = marks.high_watermark(id);
        w.sample_u64(
            "pinstream_log_high_watermark",
            &[("log", id.name())],
            hw[id.index()],
        );
    }
    let named = s.named.lock().unwrap_or_else(|p| p.into_inner());
    if named.is_empty() {
        return;
    }
    w.family(
        "pinstream_consumer_lag_records",
        MetricType::Gauge,
        "Per named consumer, records between its committed position and the log's high watermark.",
    );
    for (log, name, committed) in named.iter() {
        w.sample_u64(
            "pinstream_consumer_lag_records",
            &[("log", log.name()), ("consumer", name)],
            hw[log.index()].saturating_sub(*committed),
        );
    }
}
