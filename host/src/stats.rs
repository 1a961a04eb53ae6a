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
