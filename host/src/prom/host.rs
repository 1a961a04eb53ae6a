//! The table of [`HostCounters`] fields and how each is exported.

use super::{MetricType, PromWriter};
use crate::stats::{Gauge, HostCounters};

/// One row of [`HOST_METRICS`]: metric name, type, help, and the field it reads.
pub type HostMetric = (
    &'static str,
    MetricType,
    &'static str,
    fn(&HostCounters) -> &Gauge,
);

/// How each [`HostCounters`] field is exported.
pub const HOST_METRICS: &[HostMetric] = &[
    (
        "pinstream_tcp_connections_accepted_total",
        MetricType::Counter,
        "TCP connections accepted.",
        |c| &c.tcp_accepted,
    ),
    (
        "pinstream_tcp_connections_open",
        MetricType::Gauge,
        "TCP connections open now.",
        |c| &c.tcp_open,
    ),
    (
        "pinstream_tcp_connections_refused_total",
        MetricType::Counter,
        "TCP connections refused at tcp.max_connections or tcp.max_connections_per_ip.",
        |c| &c.tcp_refused,
    ),
    (
        "pinstream_tcp_connections_refused_per_ip_total",
        MetricType::Counter,
        "TCP connections refused at tcp.max_connections_per_ip (also in refused_total).",
        |c| &c.tcp_refused_per_ip,
    ),
    (
        "pinstream_tcp_accept_errors_total",
        MetricType::Counter,
        "accept() calls that failed (out of descriptors or memory: the listener rests 100 ms).",
        |c| &c.tcp_accept_errors,
    ),
    (
        "pinstream_tcp_tls_connections_accepted_total",
        MetricType::Counter,
        "TCP connections accepted on the TLS port (tcp.tls_cert), before their handshake.",
        |c| &c.tls_accepted,
    ),
    (
        "pinstream_tcp_tls_handshakes_total",
        MetricType::Counter,
        "TLS handshakes finished on the binary port (connections handed to the ingest thread).",
        |c| &c.tls_handshakes,
    ),
    (
        "pinstream_tcp_tls_handshake_failures_total",
        MetricType::Counter,
        "TLS handshakes failed on the binary port (not TLS, bad or missing client certificate, protocol error).",
        |c| &c.tls_handshake_failures,
    ),
    (
        "pinstream_tcp_tls_handshake_timeouts_total",
        MetricType::Counter,
        "TLS handshakes not finished within tcp.tls_handshake_timeout_ms.",
        |c| &c.tls_handshake_timeouts,
    ),
    (
        "pinstream_tcp_tls_connections_open",
        MetricType::Gauge,
        "TLS connections open now in the terminator thread.",
        |c| &c.tls_open,
    ),
    (
        "pinstream_tcp_tls_connections_refused_total",
        MetricType::Counter,
        "TLS connections closed at once by the terminator (tcp.max_connections sessions, or the hand-over ring full).",
        |c| &c.tls_refused,
    ),
    (
        "pinstream_tcp_received_bytes_total",
        MetricType::Counter,
        "Bytes received over TCP.",
        |c| &c.tcp_bytes_in,
    ),
    (
        "pinstream_tcp_frames_received_total",
        MetricType::Counter,
        "Frames received over TCP.",
        |c| &c.tcp_frames_in,
    ),
    (
        "pinstream_tcp_rejects_sent_total",
        MetricType::Counter,
        "REJECT frames sent over TCP.",
        |c| &c.tcp_rejects_sent,
    ),
    (
        "pinstream_tcp_rejects_dropped_total",
        MetricType::Counter,
        "REJECT frames that did not fit a connection's output buffer (ACKs still count their units).",
        |c| &c.tcp_rejects_dropped,
    ),
    (
        "pinstream_tcp_acks_sent_total",
        MetricType::Counter,
        "ACK frames sent over TCP.",
        |c| &c.tcp_acks_sent,
    ),
    (
        "pinstream_tcp_credit_waits_total",
        MetricType::Counter,
        "Times a connection paused on a full in-flight window.",
        |c| &c.tcp_credit_waits,
    ),
    (
        "pinstream_tcp_waits_lane_full_total",
        MetricType::Counter,
        "Times a connection's frame waited for room in its lane (back-pressure, not a dead letter).",
        |c| &c.tcp_waits_lane,
    ),
    (
        "pinstream_tcp_waits_pool_total",
        MetricType::Counter,
        "Times a connection's frame waited for a free event slot (back-pressure, not a dead letter).",
        |c| &c.tcp_waits_pool,
    ),
    (
        "pinstream_tcp_waits_control_total",
        MetricType::Counter,
        "Times a connection's frame was held back by the control plane instead of shed.",
        |c| &c.tcp_waits_control,
    ),
    (
        "pinstream_tcp_producers",
        MetricType::Gauge,
        "Producer sessions (protocol version 2) the engine remembers.",
        |c| &c.tcp_producers,
    ),
    (
        "pinstream_tcp_producers_evicted_total",
        MetricType::Counter,
        "Producer sessions forgotten (idle past tcp.producer_idle_ms, or the oldest idle one when the table was full).",
        |c| &c.tcp_producers_evicted,
    ),
    (
        "pinstream_tcp_producers_refused_total",
        MetricType::Counter,
        "Version-2 HELLOs refused: every producer session was held by a connection.",
        |c| &c.tcp_producers_refused,
    ),
    (
        "pinstream_tcp_producers_fenced_total",
        MetricType::Counter,
        "Connections closed because another connection took over their producer.",
        |c| &c.tcp_producers_fenced,
    ),
    (
        "pinstream_tcp_partial_frames_dropped_total",
        MetricType::Counter,
        "Incomplete frames left in a connection's buffer when it ended (peer FIN or RST, or closed by the engine): dropped, never acknowledged.",
        |c| &c.tcp_partial_frames_dropped,
    ),
    (
        "pinstream_tcp_partial_frame_bytes_dropped_total",
        MetricType::Counter,
        "Bytes of the incomplete frames dropped when their connection ended.",
        |c| &c.tcp_partial_frame_bytes_dropped,
    ),
    (
        "pinstream_tcp_unread_frames_dropped_total",
        MetricType::Counter,
        "Whole frames received but never dispatched because their connection closed first (after a refused HELLO or lost framing, or at shutdown).",
        |c| &c.tcp_unread_frames_dropped,
    ),
    (
        "pinstream_tcp_unread_bytes_dropped_total",
        MetricType::Counter,
        "Bytes received and thrown away undispatched, other than partial frames (unread frames, bytes after lost framing, input unread at shutdown).",
        |c| &c.tcp_unread_bytes_dropped,
    ),
    (
        "pinstream_udp_datagrams_received_total",
        MetricType::Counter,
        "UDP datagrams received.",
        |c| &c.udp_datagrams,
    ),
    (
        "pinstream_udp_received_bytes_total",
        MetricType::Counter,
        "Bytes received over UDP.",
        |c| &c.udp_bytes_in,
    ),
    (
        "pinstream_udp_frames_received_total",
        MetricType::Counter,
        "Frames received over UDP.",
        |c| &c.udp_frames_in,
    ),
    (
        "pinstream_udp_datagrams_malformed_total",
        MetricType::Counter,
        "Malformed frames in UDP datagrams (each one rejected unit).",
        |c| &c.udp_malformed,
    ),
    (
        "pinstream_udp_datagrams_truncated_total",
        MetricType::Counter,
        "UDP datagrams longer than udp.max_datagram, dropped.",
        |c| &c.udp_truncated,
    ),
    (
        "pinstream_udp_receive_errors_total",
        MetricType::Counter,
        "UDP receive calls that failed.",
        |c| &c.udp_recv_errors,
    ),
    (
        "pinstream_rate_limit_keys",
        MetricType::Gauge,
        "Clients (version-2 producers, or IP addresses) holding a rate-limit bucket of their own.",
        |c| &c.rate_keys,
    ),
    (
        "pinstream_rate_limit_keys_exhausted_total",
        MetricType::Counter,
        "Times a new client found every rate-limit bucket taken and shared the overflow bucket.",
        |c| &c.rate_keys_exhausted,
    ),
    (
        "pinstream_udp_kernel_drops_total",
        MetricType::Counter,
        "UDP datagrams the kernel dropped because the socket's receive queue was full (SO_RXQ_OVFL).",
        |c| &c.udp_kernel_drops,
    ),
    (
        "pinstream_udp_unframed_bytes_dropped_total",
        MetricType::Counter,
        "Bytes of UDP datagrams thrown away after a frame length that lost the framing (whatever frames they held).",
        |c| &c.udp_unframed_bytes_dropped,
    ),
    (
        "pinstream_storage_records_total",
        MetricType::Counter,
        "Records appended to the log.",
        |c| &c.storage_records,
    ),
    (
        "pinstream_storage_written_bytes_total",
        MetricType::Counter,
        "Bytes appended to the log.",
        |c| &c.storage_bytes,
    ),
    (
        "pinstream_storage_dead_letters_total",
        MetricType::Counter,
        "Records appended to the dead-letter log.",
        |c| &c.storage_dead_letters,
    ),
    (
        "pinstream_storage_syncs_total",
        MetricType::Counter,
        "fdatasync calls made.",
        |c| &c.storage_syncs,
    ),
    (
        "pinstream_storage_sync_errors_total",
        MetricType::Counter,
        "fdatasync calls that failed.",
        |c| &c.storage_sync_errors,
    ),
    (
        "pinstream_storage_write_errors_total",
        MetricType::Counter,
        "Log writes that failed.",
        |c| &c.storage_write_errors,
    ),
    (
        "pinstream_storage_segments",
        MetricType::Gauge,
        "Log segments on disk now.",
        |c| &c.storage_segments,
    ),
    (
        "pinstream_storage_durable_events_total",
        MetricType::Counter,
        "Events covered by a completed sync.",
        |c| &c.durable_events,
    ),
    (
        "pinstream_storage_lost_events_total",
        MetricType::Counter,
        "Events counted stored that are not in the logs: storage failed before they were written (never acknowledged).",
        |c| &c.storage_lost_events,
    ),
    (
        "pinstream_storage_lost_dead_letters_total",
        MetricType::Counter,
        "Dead letters not in the dead-letter log because storage failed.",
        |c| &c.storage_lost_dead_letters,
    ),
];

/// Which [`HostCounters`] field a row reads.
pub type CounterField = fn(&HostCounters) -> &Gauge;

/// Why TCP connections closed: the `reason` label of `pinstream_tcp_connections_closed_total`
/// and the field that counts it. The reasons partition the closes.
pub const TCP_CLOSE_REASONS: &[(&str, CounterField)] = &[
    ("peer", |c| &c.tcp_closed_peer),
    ("malformed", |c| &c.tcp_closed_malformed),
    ("stalled", |c| &c.tcp_closed_stalled),
    ("idle", |c| &c.tcp_closed_idle),
    ("frame_timeout", |c| &c.tcp_closed_frame_timeout),
    ("error", |c| &c.tcp_closed_error),
    ("storage_failed", |c| &c.tcp_closed_storage_failed),
    ("shutdown", |c| &c.tcp_closed_shutdown),
    ("fenced", |c| &c.tcp_closed_fenced),
    ("drain_abandoned", |c| &c.tcp_drains_abandoned),
];

/// Renders every [`HostCounters`] field (see [`HOST_METRICS`] for the names, and
/// [`TCP_CLOSE_REASONS`] for the closes by reason).
pub fn write_host_counters(w: &mut PromWriter<'_>, counters: &HostCounters) {
    for &(name, kind, help, field) in HOST_METRICS {
        w.single(name, kind, help, field(counters).get() as f64);
    }
    let name = "pinstream_tcp_connections_closed_total";
    w.family(
        name,
        MetricType::Counter,
        "TCP connections closed, by reason: peer (the client closed), malformed (past tcp.max_rejects or framing lost), stalled (acks unread for tcp.stall_timeout_ms), idle (tcp.idle_timeout_ms of silence), frame_timeout (a frame not whole within tcp.frame_timeout_ms), error (socket error or set-up failure), storage_failed, shutdown, fenced (another connection took over the producer id), drain_abandoned (a closed producer's frames not resolved in time).",
    );
    for &(reason, field) in TCP_CLOSE_REASONS {
        w.sample_u64(name, &[("reason", reason)], field(counters).get());
    }
    let name = "pinstream_tcp_auth_refusals_total";
    w.family(
        name,
        MetricType::Counter,
        "Refusals of tcp.auth = \"token\" on the binary port, by reason: unauthenticated (connections whose HELLO showed no known token, or that sent data before a HELLO: REJECT 29, closed), forbidden_topic (events to a topic their token may not use: REJECT 30). A token's rate refuses nothing on TCP: it slows the connection (pinstream_rate_limit_waits_total{limit=\"token\"}).",
    );
    for &(reason, field) in TCP_AUTH_REFUSALS {
        w.sample_u64(name, &[("reason", reason)], field(counters).get());
    }
    let name = "pinstream_rate_limit_waits_total";
    w.family(
        name,
        MetricType::Counter,
        "Times a TCP connection's frame waited for rate-limit tokens (the producer slowed down through its credit window, nothing dead-lettered), by limit: client (the engine's per-client limit), token (its tcp.auth token's rate). UDP cannot be slowed: its events past the limit are dead-lettered rate_limited.",
    );
    for &(limit, field) in RATE_LIMIT_WAITS {
        w.sample_u64(name, &[("limit", limit)], field(counters).get());
    }
}

/// The waits for rate-limit tokens, by limit (the registry's names).
pub const RATE_LIMIT_WAITS: &[(&str, CounterField)] = &[
    ("client", |c| &c.rate_limit_waits_client),
    ("token", |c| &c.rate_limit_waits_token),
];

/// The refusals of `tcp.auth = "token"`, by reason (the registry's names).
pub const TCP_AUTH_REFUSALS: &[(&str, CounterField)] = &[
    ("unauthenticated", |c| &c.tcp_auth_unauthenticated),
    ("forbidden_topic", |c| &c.tcp_auth_forbidden_topic),
];
