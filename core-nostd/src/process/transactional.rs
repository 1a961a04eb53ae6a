//! The transactional lane's processor: drops repeats of an event id within a window.
//!
//! Each event's id (the producer's idempotency key) goes through a [`DedupTable`] owned by
//! this processor (the single-owner fast path). A repeat within the window is answered
//! `Duplicate` (the event is already stored: the producer is told so, nothing is
//! dead-lettered). The table never refuses an id: when every slot an id may use holds a live
//! one, the oldest of them is evicted (counted, with its age: the effective window). An event
//! admitted here and then dead-lettered after all (the sink refused it on every retry) is
//! forgotten again, so the producer's resend is not taken for a duplicate of something that
//! was never stored.

use crate::dedup::{DedupTable, Verdict};
use crate::reason::Reason;

/// Deduplication over `D` slots (a power of two; size it at about four times the ids live
/// within one window, see [`DedupTable`]).
///
/// ```
/// use pinstream_core::process::transactional::TransactionalProcessor;
/// use pinstream_core::reason::Reason;
///
/// let mut tx: TransactionalProcessor<64> = TransactionalProcessor::new(1_000);
/// assert_eq!(tx.admit(7, 0), Ok(()));
/// assert_eq!(tx.admit(7, 999), Err(Reason::Duplicate));
/// assert_eq!(tx.admit(7, 1_000), Ok(())); // the window counts from the first sighting
/// ```
pub struct TransactionalProcessor<const D: usize> {
    dedup: DedupTable<D>,
    /// Entries evicted before their window ended, since start.
    evictions: u64,
    /// The youngest evicted entry's age since the last
    /// [`take_youngest_evicted`](Self::take_youngest_evicted) (`u64::MAX`: none).
    youngest_evicted: u64,
}

impl<const D: usize> TransactionalProcessor<D> {
    crate::sync::const_fn! {
        /// A processor remembering ids for `window` ticks.
        pub fn new(window: u64) -> Self {
            Self { dedup: DedupTable::new(window), evictions: 0, youngest_evicted: u64::MAX }
        }
    }

    /// Whether the event with `id` may go on to the sink at tick `now`.
    ///
    /// # Errors
    /// `Reason::Duplicate` for a repeat within the window (the only refusal).
    #[inline]
    pub fn admit(&mut self, id: u64, now: u64) -> Result<(), Reason> {
        match self.dedup.check_and_insert_mut(id, now) {
            Verdict::New => Ok(()),
            Verdict::NewEvicting { evicted_age } => {
                self.evictions += 1;
                self.youngest_evicted = self.youngest_evicted.min(evicted_age);
                Ok(())
            }
            Verdict::Duplicate => Err(Reason::Duplicate),
        }
    }

    /// Starts loading what [`admit`](Self::admit) of `id` will read (see
    /// [`DedupTable::prefetch`]): call it for the next event while admitting this one.
    #[inline(always)]
    pub fn prefetch(&self, id: u64) {
        self.dedup.prefetch(id);
    }

    /// Records `id` as first seen at tick `first_seen` (which may lie before this engine's
    /// tick 0: ticks are modular, see [`DedupTable`]), as a refill from a log at start-up
    /// does. A repeat is counted as nothing; an eviction is counted as one.
    pub fn remember(&mut self, id: u64, first_seen: u64) {
        if let Verdict::NewEvicting { evicted_age } =
            self.dedup.check_and_insert_mut(id, first_seen)
        {
            self.evictions += 1;
            self.youngest_evicted = self.youngest_evicted.min(evicted_age);
        }
    }

    /// Entries evicted before their window ended, since start.
    pub const fn evictions(&self) -> u64 {
        self.evictions
    }

    /// The age in ticks of the youngest entry evicted since the last call, and resets it:
    /// how far back the table surely remembered over that time (its effective window).
    /// `None` when nothing was evicted: it remembered the whole window.
    pub fn take_youngest_evicted(&mut self) -> Option<u64> {
        let age = core::mem::replace(&mut self.youngest_evicted, u64::MAX);
        (age != u64::MAX).then_some(age)
    }

    /// Forgets `id` as admitted at tick `admitted` (its event was dead-lettered after
    /// being admitted); a later admission of the same id is kept.
    pub fn forget(&mut self, id: u64, admitted: u64) {
        self.dedup.forget_mut(id, admitted);
    }

    /// The deduplication window in ticks.
    pub const fn window(&self) -> u64 {
        self.dedup.window()
    }
}

impl<const D: usize> core::fmt::Debug for TransactionalProcessor<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TransactionalProcessor")
            .field("dedup", &self.dedup)
            .finish()
    }
}
