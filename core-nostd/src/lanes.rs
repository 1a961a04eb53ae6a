//! The engine's shared memory: the event pool, the three lanes and the dead-letter ring.
//!
//! [`Lanes`] owns them all, sized by const generics, and can live in a `static`:
//!
//! - `P`: payload bytes an event slot holds inline (longer payloads go to the payload arena);
//! - `POOL`: event slots (at most `u32::MAX`);
//! - `LANE`: capacity of each lane, a power of two (the transactional and batch lanes are
//!   [`Mpsc`] rings);
//! - `DL`: capacity of the dead-letter ring, a power of two.
//!
//! Lanes carry pool slot indices, never events: an event is written once into its slot by the
//! dispatcher and read in place by the processor.
//!
//! A payload longer than `P` bytes is written into the **payload arena** instead (see
//! [`arena`](crate::arena)): a byte region the caller lends to [`Lanes::split_with_arena`]
//! (or [`Lanes::try_split_with_arena`] for a `static`), shared by all events, with `POOL`
//! block descriptors kept here. [`Lanes::split`] lends none: payloads longer than `P` are then
//! rejected `PayloadTooLarge`. [`Lanes::split`] hands out the two sides,
//! [`LaneInput`] (for a [`Dispatcher`](crate::dispatch::Dispatcher)) and [`LaneOutput`] (for
//! the [`Processors`](crate::process::Processors)), plus the [`DeadLetters`] reader. The
//! realtime lane is a single-producer ring, so there is one `LaneInput`; more ingest threads
//! share one dispatcher or need lanes of their own.
//!
//! The rings are private to this module and its users in the crate: only indices taken from
//! the pool by the dispatcher ever enter them, which is what makes turning an index back
//! into a slot handle sound.

use core::fmt;

use crate::accounting::StageCounters;
use crate::arena::{ArenaReader, ArenaState, ArenaWriter};
use crate::event::{Event, EventHeader, Lane, Origin, Payload};
use crate::pool::{EventPool, Handle};
use crate::reason::Reason;
use crate::ring::{Consumer, Mpsc, MpscConsumer, Producer, Spsc};

/// Capacity of the ring that hands free slots from the processors back to the dispatcher.
const RECYCLE: usize = 64;

/// A record of an event that was dead-lettered: what it was, where from, why and when.
/// The payload is not kept (the producer, told by its ack, resends by id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DeadLetter {
    /// The event's header.
    pub header: EventHeader,
    /// Who sent it, in which frame.
    pub origin: Origin,
    /// Why it was not stored.
    pub reason: Reason,
    /// The engine tick of the decision.
    pub tick: u64,
    /// How many events this record stands for: 1, or the event count of an aggregate whose
    /// storing failed (then `header` describes the aggregate's topic and window).
    pub events: u32,
}

impl DeadLetter {
    /// A record of `events` events (saturating at `u32::MAX`).
    pub fn new(
        header: &EventHeader,
        origin: Origin,
        reason: Reason,
        tick: u64,
        events: u64,
    ) -> Self {
        Self {
            header: *header,
            origin,
            reason,
            tick,
            events: u32::try_from(events).unwrap_or(u32::MAX),
        }
    }
}

/// The pool, the lanes and the dead-letter ring. See the module docs for the parameters.
pub struct Lanes<const P: usize, const POOL: usize, const LANE: usize, const DL: usize> {
    pool: EventPool<Event<P>, POOL>,
    realtime: Spsc<u32, LANE>,
    transactional: Mpsc<u32, LANE>,
    batch: Mpsc<u32, LANE>,
    dead: Mpsc<DeadLetter, DL>,
    /// Slots the processors are done with, on their way back to the dispatcher. Going
    /// through the pool's free list instead would cost the dispatcher one cache miss per
    /// slot (walking links the other core just wrote); this ring hands them over in a few
    /// contiguous cache lines. It is small on purpose: slots that do not fit go back to the
    /// pool's free list, so the slots in circulation stay few and warm in cache (a ring as
    /// large as the pool would cycle through every slot).
    recycle: Spsc<u32, RECYCLE>,
    /// The payload arena's descriptors; its bytes are lent at split.
    arena: ArenaState<POOL>,
}

impl<const P: usize, const POOL: usize, const LANE: usize, const DL: usize>
    Lanes<P, POOL, LANE, DL>
{
    crate::sync::const_fn! {
        /// Empty lanes and a pool of `POOL` free slots.
        pub fn new() -> Self {
            const { assert!(POOL <= u32::MAX as usize, "pool slot indices travel as u32") };
            Self {
                pool: EventPool::new(Event::EMPTY),
                realtime: Spsc::new(),
                transactional: Mpsc::new(),
                batch: Mpsc::new(),
                dead: Mpsc::new(),
                recycle: Spsc::new(),
                arena: ArenaState::new(),
            }
        }
    }

    /// The dispatcher's side, the processors' side and the dead-letter reader, without a
    /// payload arena (payloads longer than `P` are rejected). Borrows the lanes mutably, so
    /// it can be called once per borrow.
    pub fn split(
        &mut self,
    ) -> (
        LaneInput<'_, P, POOL, LANE, DL>,
        LaneOutput<'_, P, POOL, LANE, DL>,
        DeadLetters<'_, DL>,
    ) {
        self.split_with_arena(&mut [])
    }

    /// [`split`](Self::split) with `arena` as the payload arena's bytes: payloads longer
    /// than `P` bytes, up to `arena.len()` (at most [`MAX_REGION`](crate::arena::MAX_REGION)),
    /// are stored there. Events still in the lanes from an earlier split lose an arena
    /// payload (it reads as empty).
    pub fn split_with_arena<'a>(
        &'a mut self,
        arena: &'a mut [u8],
    ) -> (
        LaneInput<'a, P, POOL, LANE, DL>,
        LaneOutput<'a, P, POOL, LANE, DL>,
        DeadLetters<'a, DL>,
    ) {
        // No side of an earlier split can exist while we hold `&mut self`; one that was
        // leaked would otherwise keep its consumer marked as taken.
        self.transactional.reclaim_consumer();
        self.batch.reclaim_consumer();
        self.dead.reclaim_consumer();
        let (rt_in, rt_out) = self.realtime.split();
        let (back_in, back_out) = self.recycle.split();
        let arena = self.arena.split(arena);
        Self::sides(
            &self.pool,
            (rt_in, rt_out),
            (back_in, back_out),
            arena,
            &self.transactional,
            &self.batch,
            &self.dead,
        )
        // The consumers were reclaimed above, so `sides` cannot fail here.
        .expect("consumers are free while the lanes are borrowed mutably")
    }

    /// [`split`](Self::split) for lanes in a `static`; `None` after the first call.
    pub fn try_split(
        &'static self,
    ) -> Option<(
        LaneInput<'static, P, POOL, LANE, DL>,
        LaneOutput<'static, P, POOL, LANE, DL>,
        DeadLetters<'static, DL>,
    )> {
        self.try_split_with_arena(&mut [])
    }

    /// [`split_with_arena`](Self::split_with_arena) for lanes in a `static`, with an arena
    /// region that lives as long (e.g. from an [`ArenaRegion`](crate::arena::ArenaRegion));
    /// `None` after the first call.
    pub fn try_split_with_arena(
        &'static self,
        arena: &'static mut [u8],
    ) -> Option<(
        LaneInput<'static, P, POOL, LANE, DL>,
        LaneOutput<'static, P, POOL, LANE, DL>,
        DeadLetters<'static, DL>,
    )> {
        let realtime = self.realtime.try_split()?;
        let recycle = self.recycle.try_split()?;
        // SAFETY: the realtime ring's `try_split` succeeds once for a `static`, so this is
        // the only split of this state, which is fresh (`new`); `arena` is ours for good.
        let arena = unsafe { self.arena.sides(arena) };
        Self::sides(
            &self.pool,
            realtime,
            recycle,
            arena,
            &self.transactional,
            &self.batch,
            &self.dead,
        )
    }

    #[allow(clippy::type_complexity)]
    fn sides<'a>(
        pool: &'a EventPool<Event<P>, POOL>,
        (rt_in, rt_out): (Producer<'a, u32, LANE>, Consumer<'a, u32, LANE>),
        (back_in, back_out): (Producer<'a, u32, RECYCLE>, Consumer<'a, u32, RECYCLE>),
        (arena_in, arena_out): (ArenaWriter<'a, POOL>, ArenaReader<'a, POOL>),
        transactional: &'a Mpsc<u32, LANE>,
        batch: &'a Mpsc<u32, LANE>,
        dead: &'a Mpsc<DeadLetter, DL>,
    ) -> Option<(
        LaneInput<'a, P, POOL, LANE, DL>,
        LaneOutput<'a, P, POOL, LANE, DL>,
        DeadLetters<'a, DL>,
    )> {
        let tx_out = transactional.consumer()?;
        let batch_out = batch.consumer()?;
        let dead_out = dead.consumer()?;
        Some((
            LaneInput {
                pool,
                realtime: rt_in,
                transactional,
                batch,
                dead: DeadLetterWriter { ring: dead },
                recycle: back_out,
                arena: arena_in,
            },
            LaneOutput {
                pool,
                realtime: rt_out,
                transactional: tx_out,
                batch: batch_out,
                dead: DeadLetterWriter { ring: dead },
                recycle: back_in,
                arena: arena_out,
            },
            DeadLetters { ring: dead_out },
        ))
    }
}

impl<const P: usize, const POOL: usize, const LANE: usize, const DL: usize> Default
    for Lanes<P, POOL, LANE, DL>
{
    fn default() -> Self {
        Self::new()
    }
}

impl<const P: usize, const POOL: usize, const LANE: usize, const DL: usize> fmt::Debug
    for Lanes<P, POOL, LANE, DL>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lanes")
            .field("payload", &P)
            .field("pool", &POOL)
            .field("lane", &LANE)
            .field("dead_letters", &DL)
            .finish()
    }
}

/// Writes dead-letter records; a full ring is counted, never blocks.
pub(crate) struct DeadLetterWriter<'a, const DL: usize> {
    ring: &'a Mpsc<DeadLetter, DL>,
}

impl<const DL: usize> DeadLetterWriter<'_, DL> {
    /// Dead-letters `events` events described by `header` / `origin`: counts them under
    /// `reason` in `counters` and pushes one record; when the ring is full, counts the
    /// missing record in `dead_letter_overflow` instead (the events stay counted).
    pub(crate) fn record(
        &self,
        counters: &StageCounters,
        header: &EventHeader,
        origin: Origin,
        reason: Reason,
        tick: u64,
        events: u64,
    ) {
        counters.reason(reason).add(events);
        self.push(
            counters,
            DeadLetter::new(header, origin, reason, tick, events),
        );
    }

    /// Pushes a record already counted; a full ring is counted, never waited on.
    pub(crate) fn push(&self, counters: &StageCounters, record: DeadLetter) {
        if self.ring.push(record).is_err() {
            counters.dead_letter_overflow.incr();
        }
    }
}

/// The dead-letter ring's reader (the host writes the records to its dead-letter log).
pub struct DeadLetters<'a, const DL: usize> {
    ring: MpscConsumer<'a, DeadLetter, DL>,
}

impl<const DL: usize> DeadLetters<'_, DL> {
    /// The next record, if any.
    #[inline]
    pub fn pop(&mut self) -> Option<DeadLetter> {
        self.ring.pop()
    }

    /// Calls `f` on up to `max` records; returns how many.
    pub fn drain(&mut self, max: usize, f: impl FnMut(DeadLetter)) -> usize {
        self.ring.pop_each(max, f)
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

impl<const DL: usize> fmt::Debug for DeadLetters<'_, DL> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetters")
            .field("waiting", &self.ring.len())
            .finish()
    }
}

/// The dispatcher's side of the lanes: the pool to take slots from, the lane producers and
/// the dead-letter writer.
pub struct LaneInput<'a, const P: usize, const POOL: usize, const LANE: usize, const DL: usize> {
    pub(crate) pool: &'a EventPool<Event<P>, POOL>,
    pub(crate) realtime: Producer<'a, u32, LANE>,
    pub(crate) transactional: &'a Mpsc<u32, LANE>,
    pub(crate) batch: &'a Mpsc<u32, LANE>,
    pub(crate) dead: DeadLetterWriter<'a, DL>,
    /// Slots handed back by the processors; every index in it is a slot owned by the ring.
    pub(crate) recycle: Consumer<'a, u32, RECYCLE>,
    /// Where payloads longer than `P` go.
    pub(crate) arena: ArenaWriter<'a, POOL>,
}

impl<'a, const P: usize, const POOL: usize, const LANE: usize, const DL: usize>
    LaneInput<'a, P, POOL, LANE, DL>
{
    /// Puts the event in `slot` into `lane`; gives the slot back when the lane is full.
    #[inline]
    pub(crate) fn push(
        &mut self,
        lane: Lane,
        slot: Handle<'a, Event<P>, POOL>,
    ) -> Result<(), Handle<'a, Event<P>, POOL>> {
        // `into_index` gives up the handle; the index becomes a handle again either in the
        // processor (after the pop) or right here if the push fails. POOL <= u32::MAX.
        let index = slot.into_index() as u32;
        let pushed = match lane {
            Lane::Realtime => self.realtime.push(index).is_ok(),
            Lane::Transactional => self.transactional.push(index).is_ok(),
            Lane::Batch => self.batch.push(index).is_ok(),
        };
        if pushed {
            Ok(())
        } else {
            // SAFETY: `index` came from `into_index` on a handle of this pool just above
            // and did not enter a ring, so this is its only way back.
            Err(unsafe { self.pool.from_index(index as usize) })
        }
    }

    /// Events waiting in each lane (by [`Lane::index`]).
    pub fn depths(&self) -> [usize; 3] {
        [
            self.realtime.len(),
            self.transactional.len(),
            self.batch.len(),
        ]
    }

    /// Slots free in `lane` now: that many pushes (or one batch push of that many) cannot
    /// fail. Exact as a lower bound because this `LaneInput` is the only producer of all
    /// three lanes (there is one per [`Lanes`]) and consumers only ever free slots: the
    /// realtime ring's producer reloads the consumer's index; an [`Mpsc`] consumer releases a
    /// slot before it publishes its `dequeue` position, from which `len` is computed.
    #[inline]
    pub(crate) fn room(&mut self, lane: Lane) -> usize {
        match lane {
            Lane::Realtime => self.realtime.slots(),
            Lane::Transactional => LANE - self.transactional.len(),
            Lane::Batch => LANE - self.batch.len(),
        }
    }
}

/// The processors' side of the lanes: the lane consumers, the pool the slots go back to and
/// the dead-letter writer.
pub struct LaneOutput<'a, const P: usize, const POOL: usize, const LANE: usize, const DL: usize> {
    pub(crate) pool: &'a EventPool<Event<P>, POOL>,
    pub(crate) realtime: Consumer<'a, u32, LANE>,
    pub(crate) transactional: MpscConsumer<'a, u32, LANE>,
    pub(crate) batch: MpscConsumer<'a, u32, LANE>,
    pub(crate) dead: DeadLetterWriter<'a, DL>,
    /// Where the processors put slots they are done with (see [`Lanes`]).
    pub(crate) recycle: Producer<'a, u32, RECYCLE>,
    /// Reads and releases the payloads longer than `P`.
    pub(crate) arena: ArenaReader<'a, POOL>,
}

impl<'a, const P: usize, const POOL: usize, const LANE: usize, const DL: usize>
    LaneOutput<'a, P, POOL, LANE, DL>
{
    /// Takes the next event of `lane` as its pool slot.
    #[inline]
    pub(crate) fn pop(&mut self, lane: Lane) -> Option<Handle<'a, Event<P>, POOL>> {
        let index = match lane {
            Lane::Realtime => self.realtime.pop(),
            Lane::Transactional => self.transactional.pop(),
            Lane::Batch => self.batch.pop(),
        }?;
        // SAFETY: only `LaneInput::push` puts indices into the lanes (the rings are private
        // to `Lanes`), each from `into_index` on a handle of this pool, and each index is
        // popped once.
        Some(unsafe { self.pool.from_index(index as usize) })
    }

    /// The payload bytes of `event`, a slot popped from a lane and not recycled yet (the
    /// returned borrow of `self` keeps the arena block from being released meanwhile: that
    /// takes `&mut self`).
    #[inline]
    pub(crate) fn payload<'s>(&'s self, event: &'s Event<P>) -> &'s [u8] {
        match event.payload() {
            Payload::Inline(bytes) => bytes,
            // SAFETY: `event` sits in a slot popped from a lane (the processors hold its
            // handle), so its block was allocated by this split's writer and published
            // with the lane push; blocks are released only by `release_payload` (which
            // needs `&mut self`) when the slot is recycled, after this borrow ends.
            Payload::Arena(r) => unsafe { self.arena.read(r) },
        }
    }

    /// Releases `event`'s arena block, if it has one; called once per event as its slot is
    /// recycled.
    #[inline]
    pub(crate) fn release_payload(&mut self, event: &Event<P>) {
        if let Some(r) = event.arena_ref() {
            // SAFETY: the slot's block came from this split's writer (or an earlier split,
            // which `release` ignores); the slot is being recycled, so this is the block's
            // one release and no read follows.
            unsafe { self.arena.release(r) };
        }
    }

    /// Reclaims the arena blocks released so far (in allocation order).
    #[inline]
    pub(crate) fn reclaim_payloads(&mut self) {
        self.arena.reclaim();
    }

    /// Events waiting in each lane (by [`Lane::index`]).
    pub fn depths(&mut self) -> [usize; 3] {
        [
            self.realtime.len(),
            self.transactional.len(),
            self.batch.len(),
        ]
    }
}
