//! Counters and load figures the host threads publish for the admin endpoint.
//!
//! Every field is written by one thread and read by the admin thread with relaxed loads:
//! the figures are monitoring, never used to make a decision elsewhere.

use std::sync::atomic::{AtomicU64, Ordering};

/// A relaxed monotonic counter.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Zero.
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Adds one.
    #[inline]
    pub fn incr(&self) {
        self.add(1);
    }
    /// Sets the value (for levels such as open connections).
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// The current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters of the host's threads (TEMPORARY, replaced at merge).
#[derive(Debug, Default)]
#[allow(missing_docs)]
pub struct HostCounters {
    pub tcp_accepted: Gauge,
    pub tcp_open: Gauge,
    pub tcp_refused: Gauge,
    pub tcp_closed: Gauge,
    pub tcp_closed_malformed: Gauge,
    pub tcp_closed_stalled: Gauge,
    pub tcp_closed_idle: Gauge,
    pub tcp_bytes_in: Gauge,
    pub tcp_frames_in: Gauge,
    pub tcp_rejects_sent: Gauge,
    pub tcp_acks_sent: Gauge,
    pub tcp_credit_waits: Gauge,
    pub udp_datagrams: Gauge,
    pub udp_bytes_in: Gauge,
    pub udp_frames_in: Gauge,
    pub udp_malformed: Gauge,
    pub udp_truncated: Gauge,
    pub udp_errors: Gauge,
    pub storage_records: Gauge,
    pub storage_bytes: Gauge,
    pub storage_syncs: Gauge,
    pub storage_sync_errors: Gauge,
    pub storage_segments: Gauge,
    pub durable_events: Gauge,
}
