//! The processors: take events out of the lanes, process them, hand them to the [`Sink`].
//!
//! [`Processors`] drives all three lanes from one thread; each lane's own logic lives in its
//! module and is bundled in [`LaneProcessors`]:
//!
//! | lane | logic | to the sink |
//! | --- | --- | --- |
//! | realtime | [`realtime`]: alert rules call an [`AlertHandler`] | every event |
//! | transactional | [`transactional`]: repeats within the window are answered `Duplicate` ([`Sink::duplicate`]) | every new event |
//! | batch | [`batch`]: per-topic windowed aggregation | one [`Aggregate`] per topic per window, and with [`BatchStore::Events`] every event too |
//!
//! **Bounded retry.** When the sink refuses a record, the record is parked (its pool slot
//! kept) in a retry queue of `RQ` entries and tried again after a backoff that doubles per
//! attempt ([`RetryPolicy`]); after `max_attempts` refusals it is dead-lettered
//! `RetriesExhausted` (a transactional event's id is then forgotten by the dedup window, so a
//! resend is not a duplicate). While the retry queue is full the processors stop taking
//! events out of the realtime and transactional lanes and stop closing windows, and the
//! batch lane waits as soon as a window is due: the lanes fill and the dispatcher
//! dead-letters `LaneFull`, so a stuck sink turns into visible back-pressure, not loss.
//!
//! Batch-lane events count as stored when the aggregate covering them is stored, and as
//! dead-lettered (one record standing for them all) when it is not.

pub mod batch;
pub mod realtime;
pub mod transactional;

use core::fmt;

use crate::accounting::StageCounters;
use crate::event::{Event, EventHeader, Lane, Origin, Priority};
use crate::lanes::{DeadLetter, LaneOutput};
use crate::pool::Handle;
use crate::reason::Reason;

use self::batch::BatchProcessor;
use self::realtime::{AlertHandler, RealtimeProcessor};
use self::transactional::TransactionalProcessor;

/// One topic's aggregate over one window, as emitted by the batch lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Aggregate {
    /// Topic id.
    pub topic: u16,
    /// First tick of the window.
    pub start: u64,
    /// First tick after the window.
    pub end: u64,
    /// Events in the window.
    pub count: u64,
    /// Payload bytes of those events.
    pub bytes: u64,
    /// Events that carried a value.
    pub values: u64,
    /// Smallest value (0 when `values == 0`).
    pub min: i64,
    /// Largest value (0 when `values == 0`).
    pub max: i64,
    /// Sum of the values.
    pub sum: i128,
}

/// An event as handed to the sink.
#[derive(Clone, Copy, Debug)]
pub struct StoredEvent<'a> {
    /// The lane it came through.
    pub lane: Lane,
    /// Its header.
    pub header: &'a EventHeader,
    /// Who sent it, in which frame.
    pub origin: Origin,
    /// The engine tick it was dispatched at.
    pub received: u64,
    /// Its payload.
    pub payload: &'a [u8],
}

/// What the processors hand to the sink.
#[derive(Clone, Copy, Debug)]
// New stored kinds may come (the aggregates became one): a sink needs a `_` arm.
#[non_exhaustive]
pub enum Record<'a> {
    /// A realtime or transactional event.
    Event(StoredEvent<'a>),
    /// A batch-lane aggregate.
    Aggregate(&'a Aggregate),
}

/// What the batch lane hands to the sink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BatchStore {
    /// One [`Aggregate`] per topic per window; the events count as stored when the aggregate
    /// covering them is (the default: small parts keep only summaries).
    #[default]
    Aggregates,
    /// Every event, as the other lanes do (stored, and so acknowledged, on its own), and the
    /// aggregates besides, as summaries: an aggregate that cannot be stored is counted
    /// ([`StageCounters::aggregates_dropped`](crate::accounting::StageCounters)), its events
    /// are stored already.
    Events,
}

/// The sink refused a record for now; the processors will try again later.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SinkError;

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sink refused the record")
    }
}

impl core::error::Error for SinkError {}

/// Where processed records go: the host's append-only log, the firmware's own store.
pub trait Sink {
    /// Takes `record`. `Ok` means the sink owns it now (it is counted as stored); `Err` means
    /// it did not take it and the processors will retry.
    ///
    /// # Errors
    /// [`SinkError`] when the record cannot be taken now.
    fn store(&mut self, record: &Record<'_>) -> Result<(), SinkError>;

    /// Offered each dead letter the processors decide (a duplicate, a record whose retries
    /// ran out, an event of a topic the batch lane does not know), already counted, before
    /// it would go to the dead-letter ring. Return `true` when the sink recorded it itself:
    /// the host writes it to its dead-letter log at once, in order with the records it
    /// stores, and so can settle the producer's acknowledgement without a ring that may be
    /// full. The default returns `false`: the record goes to the ring
    /// ([`DeadLetters`](crate::lanes::DeadLetters)), which the dispatcher's dead letters
    /// share.
    fn dead_letter(&mut self, record: &DeadLetter) -> bool {
        let _ = record;
        false
    }

    /// Told of each event the transactional lane did not store because an event with its id
    /// is stored already (within the dedup window): already counted under
    /// [`Reason::Duplicate`], which is its own class in the books, not a dead letter. The
    /// host acknowledges it to the producer as a duplicate. The default does nothing.
    fn duplicate(&mut self, header: &EventHeader, origin: Origin) {
        let _ = (header, origin);
    }
}

/// How often and how patiently a refused record is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1; 1 means no retry).
    pub max_attempts: u32,
    /// Ticks before the first retry; each further retry waits twice as long.
    pub backoff: u64,
    /// The longest wait between two attempts.
    pub max_backoff: u64,
}

impl RetryPolicy {
    /// 4 attempts, waits of 100 000, 200 000, 400 000 ticks (100, 200, 400 µs in
    /// nanosecond ticks), capped at 10 000 000.
    pub const DEFAULT: Self = Self {
        max_attempts: 4,
        backoff: 100_000,
        max_backoff: 10_000_000,
    };

    /// The wait after the `attempt`-th refusal (1-based).
    pub const fn wait(&self, attempt: u32) -> u64 {
        let shift = if attempt == 0 { 0 } else { attempt - 1 };
        let wait = if shift >= 63 {
            u64::MAX
        } else {
            self.backoff.saturating_mul(1 << shift)
        };
        if wait > self.max_backoff {
            self.max_backoff
        } else {
            wait
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The three lanes' processors: `R` alert rules, `D` dedup slots, `T` aggregated topics.
#[derive(Debug)]
pub struct LaneProcessors<const R: usize, const D: usize, const T: usize> {
    /// Alert rules.
    pub realtime: RealtimeProcessor<R>,
    /// Deduplication.
    pub transactional: TransactionalProcessor<D>,
    /// Windowed aggregation.
    pub batch: BatchProcessor<T>,
}

impl<const R: usize, const D: usize, const T: usize> LaneProcessors<R, D, T> {
    crate::sync::const_fn! {
        /// No alert rules, a dedup window of `dedup_window` ticks and aggregation windows of
        /// `aggregate_window` ticks.
        pub fn new(dedup_window: u64, aggregate_window: u64) -> Self {
            Self {
                realtime: RealtimeProcessor::new(),
                transactional: TransactionalProcessor::new(dedup_window),
                batch: BatchProcessor::new(aggregate_window),
            }
        }
    }
}

/// What one [`Processors::poll`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollSummary {
    /// Events taken out of the lanes.
    pub taken: u32,
    /// Records the sink accepted (events and aggregates).
    pub stored: u32,
    /// Sink attempts that were refused.
    pub refused: u32,
    /// Aggregates emitted (stored or parked).
    pub aggregates: u32,
}

impl PollSummary {
    /// Whether the poll did anything at all (a caller spins or parks on `false`).
    pub const fn did_work(&self) -> bool {
        self.taken != 0 || self.stored != 0 || self.refused != 0 || self.aggregates != 0
    }
}

enum Parked<'a, const P: usize, const POOL: usize> {
    Event {
        slot: Handle<'a, Event<P>, POOL>,
        lane: Lane,
        /// The tick the transactional lane admitted it at (its dedup entry's first
        /// sighting), to forget exactly that entry if it is dead-lettered.
        admitted: u64,
    },
    Aggregate(Aggregate),
}

struct RetryEntry<'a, const P: usize, const POOL: usize> {
    parked: Parked<'a, P, POOL>,
    /// Attempts made so far (at least 1).
    attempts: u32,
    /// Earliest tick of the next attempt.
    due: u64,
}

/// Takes events out of the lanes and drives them through the lane processors to the sink.
/// `RQ` is the capacity of the retry queue. One thread owns it.
pub struct Processors<
    'a,
    const P: usize,
    const POOL: usize,
    const LANE: usize,
    const DL: usize,
    const RQ: usize,
> {
    lanes: LaneOutput<'a, P, POOL, LANE, DL>,
    retry: [Option<RetryEntry<'a, P, POOL>>; RQ],
    /// Entries in `retry` that are `Some`.
    parked: usize,
    /// Events those entries stand for (an aggregate stands for its count).
    parked_events: u64,
    policy: RetryPolicy,
    counters: &'a StageCounters,
    /// What the batch lane stores.
    batch_store: BatchStore,
    /// Slots done with, handed back to the dispatcher in batches (one publication per
    /// batch). Invariant: `free[..nfree]` are slot indices these processors own.
    free: [u32; FREE_BATCH],
    nfree: usize,
}

/// Slots the processors collect before giving them back to the pool in one go.
const FREE_BATCH: usize = 32;

impl<'a, const P: usize, const POOL: usize, const LANE: usize, const DL: usize, const RQ: usize>
    Processors<'a, P, POOL, LANE, DL, RQ>
{
    /// Processors over `lanes`, retrying refused records by `policy`, counting into
    /// `counters` (which they alone write).
    pub fn new(
        lanes: LaneOutput<'a, P, POOL, LANE, DL>,
        policy: RetryPolicy,
        counters: &'a StageCounters,
    ) -> Self {
        const { assert!(RQ >= 1, "the retry queue needs at least one entry") };
        Self {
            lanes,
            retry: [const { None }; RQ],
            parked: 0,
            parked_events: 0,
            policy,
            counters,
            batch_store: BatchStore::Aggregates,
            free: [0; FREE_BATCH],
            nfree: 0,
        }
    }

    /// What the batch lane stores from now on ([`BatchStore::Aggregates`] by default).
    pub fn set_batch_store(&mut self, store: BatchStore) {
        self.batch_store = store;
    }

    /// Done with `slot`: queue it to go back to the dispatcher.
    #[inline]
    fn recycle(&mut self, slot: Handle<'a, Event<P>, POOL>) {
        self.lanes.release_payload(&slot);
        // `POOL <= u32::MAX` (checked in `Lanes::new`).
        self.free[self.nfree] = slot.into_index() as u32;
        self.nfree += 1;
        if self.nfree == FREE_BATCH {
            self.flush_free();
        }
    }

    /// Hands the queued slots back to the dispatcher through the recycle ring; those that
    /// do not fit go back to the pool's free list in one batch.
    #[inline]
    fn flush_free(&mut self) {
        // Once per batch, not per event: the arena's room follows the released blocks.
        self.lanes.reclaim_payloads();
        if self.nfree == 0 {
            return;
        }
        let pushed = self.lanes.recycle.push_slice(&self.free[..self.nfree]);
        if pushed < self.nfree {
            let mut rest = [0usize; FREE_BATCH];
            for (dst, &src) in rest.iter_mut().zip(&self.free[pushed..self.nfree]) {
                *dst = src as usize;
            }
            // SAFETY: owned slot indices (the field's invariant), each from `into_index` on
            // a handle of this pool, given back once.
            unsafe { self.lanes.pool.release_many(&rest[..self.nfree - pushed]) };
        }
        self.nfree = 0;
    }

    /// The counters these processors write.
    pub fn counters(&self) -> &'a StageCounters {
        self.counters
    }

    /// Events inside the engine on this side: in the lanes, parked for retry, or folded into
    /// open aggregation windows of `procs`.
    pub fn in_flight<const R: usize, const D: usize, const T: usize>(
        &mut self,
        procs: &LaneProcessors<R, D, T>,
    ) -> u64 {
        let lanes: usize = self.lanes.depths().iter().sum();
        // Events in open windows are in flight only while their aggregate stands for them.
        let windows = match self.batch_store {
            BatchStore::Aggregates => procs.batch.pending(),
            BatchStore::Events => 0,
        };
        lanes as u64 + self.parked_events + windows
    }

    /// Records parked for retry.
    pub fn parked(&self) -> usize {
        self.parked
    }

    /// Events waiting in each lane (by [`Lane::index`]).
    pub fn depths(&mut self) -> [usize; 3] {
        self.lanes.depths()
    }

    /// One round: retries that are due, then up to `budget` events from each lane (realtime
    /// first); aggregation windows that ended by `now` are closed before batch-lane events
    /// are folded.
    pub fn poll<const R: usize, const D: usize, const T: usize>(
        &mut self,
        procs: &mut LaneProcessors<R, D, T>,
        alerts: &mut impl AlertHandler,
        sink: &mut impl Sink,
        now: u64,
        budget: usize,
    ) -> PollSummary {
        let mut summary = PollSummary::default();
        if self.parked != 0 {
            self.retry_due(procs, sink, now, now, &mut summary);
        }
        self.take_realtime(procs, alerts, sink, now, budget, &mut summary);
        self.take_transactional(procs, sink, now, budget, &mut summary);
        self.take_batch(procs, sink, now, budget, &mut summary);
        self.flush_free();
        summary
    }

    /// At shutdown: processes everything left in the lanes, closes every aggregation window
    /// and makes every remaining retry attempt without waiting for its backoff (a record
    /// still refused on its last attempt is dead-lettered). Afterwards nothing is in flight.
    /// With a sink that refuses everything it makes `max_attempts` rounds, so keep that
    /// bound small.
    pub fn drain<const R: usize, const D: usize, const T: usize>(
        &mut self,
        procs: &mut LaneProcessors<R, D, T>,
        alerts: &mut impl AlertHandler,
        sink: &mut impl Sink,
        now: u64,
    ) {
        loop {
            let mut summary = PollSummary::default();
            // Due by `u64::MAX`: every parked record is tried now.
            self.retry_due(procs, sink, now, u64::MAX, &mut summary);
            self.take_realtime(procs, alerts, sink, now, usize::MAX, &mut summary);
            self.take_transactional(procs, sink, now, usize::MAX, &mut summary);
            self.take_batch(procs, sink, now, usize::MAX, &mut summary);
            if self.parked < RQ {
                self.close_windows(procs, sink, now, true, &mut summary);
            }
            self.flush_free();
            if !summary.did_work() && self.parked == 0 && procs.batch.pending() == 0 {
                return;
            }
        }
    }

    /// The next event of `lane`, its time in the lane recorded (with the
    /// `latency-histograms` feature).
    #[inline(always)]
    fn take(&mut self, lane: Lane, now: u64) -> Option<Handle<'a, Event<P>, POOL>> {
        let slot = self.lanes.pop(lane)?;
        #[cfg(feature = "latency-histograms")]
        self.counters
            .lane_wait
            .record(now.saturating_sub(slot.received));
        #[cfg(not(feature = "latency-histograms"))]
        let _ = now;
        Some(slot)
    }

    /// Counts `taken` events out of `lane` (once per loop, not per event).
    #[inline(always)]
    fn count_taken(&self, lane: Lane, taken: usize, summary: &mut PollSummary) {
        self.counters.processed[lane.index()].add(taken as u64);
        summary.taken += taken as u32;
    }

    fn take_realtime<const R: usize, const D: usize, const T: usize>(
        &mut self,
        procs: &mut LaneProcessors<R, D, T>,
        alerts: &mut impl AlertHandler,
        sink: &mut impl Sink,
        now: u64,
        budget: usize,
        summary: &mut PollSummary,
    ) {
        let mut taken = 0;
        while taken < budget && self.parked < RQ {
            let Some(slot) = self.take(Lane::Realtime, now) else {
                break;
            };
            taken += 1;
            let fired = procs
                .realtime
                .evaluate(&slot.header, self.lanes.payload(&slot), alerts);
            if fired != 0 {
                self.counters.alerts.add(u64::from(fired));
            }
            self.store_event(procs, slot, Lane::Realtime, sink, now, summary);
        }
        self.count_taken(Lane::Realtime, taken, summary);
    }

    fn take_transactional<const R: usize, const D: usize, const T: usize>(
        &mut self,
        procs: &mut LaneProcessors<R, D, T>,
        sink: &mut impl Sink,
        now: u64,
        budget: usize,
        summary: &mut PollSummary,
    ) {
        let mut taken = 0;
        // One event is taken ahead, so its dedup lines load while this one is admitted and
        // stored (the table is far larger than the caches). It is taken only when this loop
        // surely processes it: within the budget, with room in the retry queue for both
        // (processing one event parks at most one entry).
        let mut ahead = None;
        while taken < budget && self.parked < RQ {
            let Some(slot) = ahead.take().or_else(|| self.take(Lane::Transactional, now)) else {
                break;
            };
            taken += 1;
            if taken < budget && self.parked + 1 < RQ {
                ahead = self.take(Lane::Transactional, now);
                if let Some(next) = &ahead {
                    procs.transactional.prefetch(next.header.id);
                }
            }
            let evictions = procs.transactional.evictions();
            let admitted = procs.transactional.admit(slot.header.id, now);
            if procs.transactional.evictions() != evictions {
                self.counters.dedup_evictions.incr();
            }
            match admitted {
                Ok(()) => self.store_event(procs, slot, Lane::Transactional, sink, now, summary),
                Err(reason) if reason.is_duplicate() => {
                    self.counters.reason(reason).incr();
                    sink.duplicate(&slot.header, slot.origin);
                    self.recycle(slot);
                }
                Err(reason) => {
                    self.dead_letter(sink, &slot.header, slot.origin, reason, now, 1);
                    self.recycle(slot);
                }
            }
        }
        assert!(ahead.is_none(), "an event taken ahead was left unprocessed");
        self.count_taken(Lane::Transactional, taken, summary);
    }

    fn take_batch<const R: usize, const D: usize, const T: usize>(
        &mut self,
        procs: &mut LaneProcessors<R, D, T>,
        sink: &mut impl Sink,
        now: u64,
        budget: usize,
        summary: &mut PollSummary,
    ) {
        // Windows that ended by `now` are closed first, so no event lands in a window that
        // is over; while they cannot all close (retry queue full), the lane waits.
        if procs.batch.due(now) && self.parked < RQ {
            self.close_windows(procs, sink, now, false, summary);
        }
        if procs.batch.due(now) {
            return;
        }
        let events = self.batch_store == BatchStore::Events;
        let mut taken = 0;
        // Stored one by one, a batch event may need a retry entry, as the other lanes' do.
        while taken < budget && (!events || self.parked < RQ) {
            let Some(slot) = self.take(Lane::Batch, now) else {
                break;
            };
            taken += 1;
            let h = &slot.header;
            if procs
                .batch
                .fold(h.topic, slot.payload_len(), h.value(), now)
                .is_err()
            {
                // The dispatcher knows more topics than the batch processor was built for.
                self.dead_letter(
                    sink,
                    &slot.header,
                    slot.origin,
                    Reason::UnknownTopic,
                    now,
                    1,
                );
                self.recycle(slot);
            } else if events {
                self.store_event(procs, slot, Lane::Batch, sink, now, summary);
            } else {
                self.recycle(slot);
            }
        }
        self.count_taken(Lane::Batch, taken, summary);
    }

    fn close_windows<const R: usize, const D: usize, const T: usize>(
        &mut self,
        procs: &mut LaneProcessors<R, D, T>,
        sink: &mut impl Sink,
        now: u64,
        all: bool,
        summary: &mut PollSummary,
    ) {
        // Close at most as many windows as there is retry room for, so every refused
        // aggregate can be parked; the others stay open until the next poll.
        let free = RQ - self.parked;
        let mut closed = [None; 8];
        let mut left = free;
        while left > 0 {
            // Collect a few at a time: the batch processor is borrowed while it emits.
            let mut n = 0;
            let max = left.min(closed.len());
            let emitted = if all {
                procs.batch.flush(max, |agg| {
                    closed[n] = Some(agg);
                    n += 1;
                })
            } else {
                procs.batch.close_due_max(now, max, |agg| {
                    closed[n] = Some(agg);
                    n += 1;
                })
            };
            for agg in closed.iter_mut().take(n).filter_map(Option::take) {
                summary.aggregates += 1;
                self.store_aggregate(agg, sink, now, summary);
            }
            left -= emitted;
            if emitted < max {
                break;
            }
        }
    }

    /// Hands an event to the sink; parks it on refusal.
    #[inline]
    fn store_event<const R: usize, const D: usize, const T: usize>(
        &mut self,
        procs: &mut LaneProcessors<R, D, T>,
        slot: Handle<'a, Event<P>, POOL>,
        lane: Lane,
        sink: &mut impl Sink,
        now: u64,
        summary: &mut PollSummary,
    ) {
        let record = Record::Event(StoredEvent {
            lane,
            header: &slot.header,
            origin: slot.origin,
            received: slot.received,
            payload: self.lanes.payload(&slot),
        });
        let result = sink.store(&record);
        match result {
            Ok(()) => {
                self.counters.stored.incr();
                summary.stored += 1;
                self.recycle(slot);
            }
            Err(SinkError) => {
                summary.refused += 1;
                self.park(
                    procs,
                    sink,
                    Parked::Event {
                        slot,
                        lane,
                        admitted: now,
                    },
                    1,
                    now,
                );
            }
        }
    }

    fn store_aggregate(
        &mut self,
        agg: Aggregate,
        sink: &mut impl Sink,
        now: u64,
        summary: &mut PollSummary,
    ) {
        match sink.store(&Record::Aggregate(&agg)) {
            Ok(()) => {
                self.count_aggregate_stored(&agg);
                summary.stored += 1;
            }
            Err(SinkError) => {
                summary.refused += 1;
                if self.policy.max_attempts <= 1 {
                    self.aggregate_exhausted(sink, &agg, now);
                } else {
                    self.park_entry(Parked::Aggregate(agg), 1, now);
                }
            }
        }
    }

    /// Counts a stored aggregate, and its events as stored when it stands for them.
    fn count_aggregate_stored(&self, agg: &Aggregate) {
        if self.batch_store == BatchStore::Aggregates {
            self.counters.stored.add(agg.count);
        }
        self.counters.aggregates.incr();
    }

    /// Events an aggregate stands for in the books: its count, or none when its events are
    /// stored on their own.
    fn aggregate_events(&self, agg: &Aggregate) -> u64 {
        match self.batch_store {
            BatchStore::Aggregates => agg.count,
            BatchStore::Events => 0,
        }
    }

    /// Parks a refused record after its `attempts`-th refusal, or dead-letters it when that
    /// was the last attempt allowed.
    fn park<const R: usize, const D: usize, const T: usize>(
        &mut self,
        procs: &mut LaneProcessors<R, D, T>,
        sink: &mut impl Sink,
        parked: Parked<'a, P, POOL>,
        attempts: u32,
        now: u64,
    ) {
        if attempts >= self.policy.max_attempts {
            self.exhausted(procs, sink, parked, now);
        } else {
            self.park_entry(parked, attempts, now);
        }
    }

    fn park_entry(&mut self, parked: Parked<'a, P, POOL>, attempts: u32, now: u64) {
        let events = match &parked {
            Parked::Event { .. } => 1,
            Parked::Aggregate(agg) => self.aggregate_events(agg),
        };
        let entry = RetryEntry {
            parked,
            attempts,
            due: now.saturating_add(self.policy.wait(attempts)),
        };
        // Callers check `parked < RQ` before taking work that may need a retry entry.
        if let Some(free) = self.retry.iter_mut().find(|e| e.is_none()) {
            *free = Some(entry);
            self.parked += 1;
            self.parked_events += events;
            self.counters.sink_retries.incr();
        } else {
            debug_assert!(false, "retry queue overflow: callers check for room");
        }
    }

    /// Tries again every parked record due by `due_by`; `now` is the tick for new
    /// backoffs and dead-letter records.
    fn retry_due<const R: usize, const D: usize, const T: usize>(
        &mut self,
        procs: &mut LaneProcessors<R, D, T>,
        sink: &mut impl Sink,
        now: u64,
        due_by: u64,
        summary: &mut PollSummary,
    ) {
        for i in 0..RQ {
            let due = matches!(&self.retry[i], Some(e) if e.due <= due_by);
            if !due {
                continue;
            }
            let Some(entry) = self.retry[i].take() else {
                continue;
            };
            self.parked -= 1;
            let RetryEntry {
                parked, attempts, ..
            } = entry;
            let (result, events) = match &parked {
                Parked::Event { slot, lane, .. } => (
                    sink.store(&Record::Event(StoredEvent {
                        lane: *lane,
                        header: &slot.header,
                        origin: slot.origin,
                        received: slot.received,
                        payload: self.lanes.payload(slot),
                    })),
                    1,
                ),
                Parked::Aggregate(agg) => (
                    sink.store(&Record::Aggregate(agg)),
                    self.aggregate_events(agg),
                ),
            };
            self.parked_events -= events;
            match result {
                Ok(()) => {
                    match parked {
                        // Recycled, not dropped: its arena block is released with it.
                        Parked::Event { slot, .. } => {
                            self.counters.stored.incr();
                            self.recycle(slot);
                        }
                        Parked::Aggregate(agg) => self.count_aggregate_stored(&agg),
                    }
                    summary.stored += 1;
                }
                Err(SinkError) => {
                    summary.refused += 1;
                    self.park(procs, sink, parked, attempts.saturating_add(1), now);
                }
            }
        }
    }

    /// Dead-letters a record the sink refused on every attempt.
    fn exhausted<const R: usize, const D: usize, const T: usize>(
        &mut self,
        procs: &mut LaneProcessors<R, D, T>,
        sink: &mut impl Sink,
        parked: Parked<'a, P, POOL>,
        now: u64,
    ) {
        match parked {
            Parked::Event {
                slot,
                lane,
                admitted,
            } => {
                if lane == Lane::Transactional {
                    procs.transactional.forget(slot.header.id, admitted);
                }
                self.dead_letter(
                    sink,
                    &slot.header,
                    slot.origin,
                    Reason::RetriesExhausted,
                    now,
                    1,
                );
                // Recycled, not dropped: its arena block is released with it.
                self.recycle(slot);
            }
            Parked::Aggregate(agg) => self.aggregate_exhausted(sink, &agg, now),
        }
    }

    /// Dead-letters a refused aggregate: one record standing for its events, with a header
    /// naming the topic and the window's start.
    fn aggregate_exhausted(&mut self, sink: &mut impl Sink, agg: &Aggregate, now: u64) {
        if self.batch_store == BatchStore::Events {
            // Its events are stored on their own: only the summary is lost.
            self.counters.aggregates_dropped.incr();
            return;
        }
        let header = EventHeader::new(0, agg.topic, Priority::Batch, agg.start);
        self.dead_letter(
            sink,
            &header,
            Origin::default(),
            Reason::RetriesExhausted,
            now,
            agg.count,
        );
    }

    /// Counts a dead letter and offers it to the sink ([`Sink::dead_letter`]); the
    /// dead-letter ring gets it when the sink does not take it.
    fn dead_letter(
        &mut self,
        sink: &mut impl Sink,
        header: &EventHeader,
        origin: Origin,
        reason: Reason,
        now: u64,
        events: u64,
    ) {
        let record = DeadLetter::new(header, origin, reason, now, events);
        self.counters.reason(reason).add(events);
        if !sink.dead_letter(&record) {
            self.lanes.dead.push(self.counters, record);
        }
    }
}

impl<const P: usize, const POOL: usize, const LANE: usize, const DL: usize, const RQ: usize> Drop
    for Processors<'_, P, POOL, LANE, DL, RQ>
{
    fn drop(&mut self) {
        self.flush_free();
    }
}

impl<const P: usize, const POOL: usize, const LANE: usize, const DL: usize, const RQ: usize>
    fmt::Debug for Processors<'_, P, POOL, LANE, DL, RQ>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Processors")
            .field("parked", &self.parked)
            .field("parked_events", &self.parked_events)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
