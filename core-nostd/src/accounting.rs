//! Counters for every outcome, and the accounting invariant.
//!
//! Every unit that enters the engine is resolved exactly once:
//!
//! ```text
//! ingested == stored + duplicates + dead_lettered + rejected + in_flight
//! ```
//!
//! A unit is one event of a well-formed frame, or one malformed frame (which cannot be split
//! into events). `in_flight` counts events still inside the engine: in a lane, waiting for a
//! sink retry, or folded into an aggregation window not yet closed. Once the engine is
//! drained (`in_flight == 0`) the invariant is the one the design promises:
//! `ingested == stored + duplicates + dead_lettered + rejected`, and per reason. A duplicate
//! is an event whose id the transactional lane had already stored within its window: it is
//! not stored again, and it is not a dead letter either (the producer's event *is* stored).
//!
//! Each stage (a dispatcher, the processors) writes its own [`StageCounters`]; counters are
//! single-writer (a relaxed load and store, no read-modify-write) and readable from any
//! thread. [`Accounting`] sums stages into one snapshot and checks the invariant.

use core::fmt;

use crate::event::Lane;
use crate::metrics::Counter;
#[cfg(feature = "latency-histograms")]
use crate::metrics::Histogram;
use crate::reason::Reason;
use crate::sync::array_of;

/// The counters one stage writes. One writer thread per instance.
pub struct StageCounters {
    /// Units that entered the engine through this stage (dispatchers only).
    pub ingested: Counter,
    /// Events handed to the sink successfully (batch-lane events: when the aggregate that
    /// covers them was stored).
    pub stored: Counter,
    /// Units dead-lettered or rejected, by [`Reason::index`].
    pub by_reason: [Counter; Reason::COUNT],
    /// Events put into each lane (by [`Lane::index`]).
    pub queued: [Counter; 3],
    /// Events taken out of each lane by the processors.
    pub processed: [Counter; 3],
    /// Frames dispatched (well-formed ones).
    pub frames: Counter,
    /// Alert handler calls.
    pub alerts: Counter,
    /// Aggregate records stored.
    pub aggregates: Counter,
    /// Aggregates the sink refused on every attempt while their events were stored on their
    /// own ([`BatchStore::Events`](crate::process::BatchStore)): summaries lost, no event.
    pub aggregates_dropped: Counter,
    /// Sink hand-offs that failed and were scheduled again.
    pub sink_retries: Counter,
    /// Entries the transactional lane's dedup table evicted before their window ended to
    /// record a new id (its effective window shrank; see
    /// [`Verdict::NewEvicting`](crate::dedup::Verdict::NewEvicting)).
    pub dedup_evictions: Counter,
    /// Dead letters counted but not written to the dead-letter ring because it was full
    /// (the count by reason still includes them; only the record is missing).
    pub dead_letter_overflow: Counter,
    /// Ticks between the dispatcher taking an event in and a processor taking it out (only
    /// with the `latency-histograms` feature, on by default: 7.8 KB per stage).
    #[cfg(feature = "latency-histograms")]
    pub lane_wait: Histogram,
}

impl StageCounters {
    crate::sync::const_fn! {
        /// All zero.
        pub fn new() -> Self {
            Self {
                ingested: Counter::new(),
                stored: Counter::new(),
                by_reason: array_of!(Reason::COUNT, Counter::new()),
                queued: array_of!(3, Counter::new()),
                processed: array_of!(3, Counter::new()),
                frames: Counter::new(),
                alerts: Counter::new(),
                aggregates: Counter::new(),
                aggregates_dropped: Counter::new(),
                sink_retries: Counter::new(),
                dedup_evictions: Counter::new(),
                dead_letter_overflow: Counter::new(),
                #[cfg(feature = "latency-histograms")]
                lane_wait: Histogram::new(),
            }
        }
    }

    /// The counter of `reason`.
    #[inline]
    pub fn reason(&self, reason: Reason) -> &Counter {
        &self.by_reason[reason.index()]
    }

    /// The `queued` counter of `lane`.
    #[inline]
    pub fn queued(&self, lane: Lane) -> &Counter {
        &self.queued[lane.index()]
    }
}

impl Default for StageCounters {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for StageCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StageCounters")
            .field("ingested", &self.ingested.get())
            .field("stored", &self.stored.get())
            .finish_non_exhaustive()
    }
}

/// A snapshot of outcome counts summed over stages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accounting {
    /// Units that entered.
    pub ingested: u64,
    /// Events stored.
    pub stored: u64,
    /// Events not stored again because an event with their id is (reason `duplicate`).
    pub duplicates: u64,
    /// Units dead-lettered (sum of the dead-letter reasons but `duplicate`).
    pub dead_lettered: u64,
    /// Units rejected (sum of the rejection reasons).
    pub rejected: u64,
    /// Per reason, by [`Reason::index`].
    pub by_reason: [u64; Reason::COUNT],
}

impl Accounting {
    /// Sums the counters of `stages`.
    pub fn of(stages: &[&StageCounters]) -> Self {
        let mut a = Self::default();
        for s in stages {
            a.ingested += s.ingested.get();
            a.stored += s.stored.get();
            for r in Reason::ALL {
                let n = s.reason(r).get();
                a.by_reason[r.index()] += n;
                if r.is_rejection() {
                    a.rejected += n;
                } else if r.is_duplicate() {
                    a.duplicates += n;
                } else {
                    a.dead_lettered += n;
                }
            }
        }
        a
    }

    /// The count for `reason`.
    pub const fn reason(&self, reason: Reason) -> u64 {
        self.by_reason[reason.index()]
    }

    /// Units accounted for: stored, duplicates, dead-lettered or rejected.
    pub const fn resolved(&self) -> u64 {
        self.stored + self.duplicates + self.dead_lettered + self.rejected
    }

    /// Checks `ingested == stored + duplicates + dead_lettered + rejected + in_flight`.
    ///
    /// # Errors
    /// [`Imbalance`] with both sides when the books do not balance.
    pub const fn check(&self, in_flight: u64) -> Result<(), Imbalance> {
        let accounted = self.resolved() + in_flight;
        if accounted == self.ingested {
            Ok(())
        } else {
            Err(Imbalance {
                ingested: self.ingested,
                accounted,
            })
        }
    }
}

/// The accounting invariant failed: `ingested` units entered, `accounted` are resolved or in
/// flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Imbalance {
    /// Units that entered.
    pub ingested: u64,
    /// Stored + duplicates + dead-lettered + rejected + in flight.
    pub accounted: u64,
}

impl fmt::Display for Imbalance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accounting imbalance: {} ingested but {} stored, duplicates, dead-lettered, rejected or in flight",
            self.ingested, self.accounted
        )
    }
}

impl core::error::Error for Imbalance {}
