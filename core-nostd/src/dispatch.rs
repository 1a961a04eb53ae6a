//! The dispatcher: takes decoded events in, puts each into its lane or accounts for why not.
//!
//! For every event of a frame, in order (the first check that fails decides):
//!
//! 1. **rate limit**: a frame asks its source's [`Admission`] for as many tokens as it has
//!    events (and no more than the caller's own limit granted, see
//!    [`FrameProgress::with_caller_limit`]); for a source without flow control
//!    ([`Flow::Lossy`]) once, and the events past the grant are dead-lettered `RateLimited`;
//!    a source with flow control waits instead (below);
//! 2. **size**: a payload larger than both the pool slot's `P` bytes and the payload arena
//!    (see [`arena`](crate::arena)) is rejected `PayloadTooLarge`;
//! 3. **topic**: an id not registered is dead-lettered `UnknownTopic`;
//! 4. **control plane**: a priority the current [`Level`](crate::control::Level) sheds is
//!    dead-lettered `Shed`;
//! 5. **pool**: no free slot, or (for a payload longer than `P`) no room in the payload
//!    arena, dead-lettered `PoolExhausted`;
//! 6. **lane**: the event is copied into its slot (a payload longer than `P` into the arena,
//!    the slot keeping its reference) and the slot index pushed into the lane of
//!    its priority; a full lane gives the slot back and dead-letters the event `LaneFull`.
//!    Within a frame, slots are staged per lane and pushed in one batch per lane (one claim
//!    on the ring instead of one per event); the events that do not fit are the ones
//!    dead-lettered, so the order inside a lane is kept.
//!
//! **Sources that wait.** Steps 4 to 6 are the engine's load, not the event's fault. For a
//! source with flow control ([`Flow::Waits`], a TCP connection with a credit window)
//! [`Dispatcher::dispatch_frame_flow`] does not dead-letter there: the frame stops before
//! the event that finds no room, keeps its place in a [`FrameProgress`], and continues from
//! it on a later call, so the producer waits (its connection is not read meanwhile) and
//! loses nothing. Lane room is checked before a slot is taken (the dispatcher is the lanes'
//! only producer, so the room it sees cannot shrink), which keeps the events of a lane in
//! order across the wait. Only priorities named by [`Dispatcher::set_sheddable`] are shed
//! from such a source. Sources without flow control ([`Flow::Lossy`], UDP) keep the
//! dead letters.
//!
//! A rate limit (step 1) slows such a source the same way: never drop what can be slowed
//! down. The frame stops at the first event not granted (waiting `RateLimited`), and each
//! later call asks again, only for the events still to go, so partial grants make progress
//! and a burst smaller than the frame never deadlocks it. The caller retries when tokens
//! may have refilled (the host by time; nothing else need wake it). Only [`Flow::Lossy`]
//! sources get `RateLimited` dead letters.
//!
//! Free slots come in batches too: the dispatcher keeps up to [`SLOT_BATCH`] of them,
//! refilled from the slots the processors handed back (see [`Lanes`](crate::lanes::Lanes))
//! or, failing that, from the pool with one CAS.
//!
//! Dead-lettered events get a [`DeadLetter`](crate::lanes::DeadLetter) record in the
//! dead-letter ring. Every event is counted in the dispatcher's [`StageCounters`] as
//! `ingested` and, unless queued, under its reason; a malformed frame is one ingested unit
//! rejected with its decode error's reason ([`Dispatcher::reject_frame`]).

use crate::accounting::StageCounters;
use crate::control::ControlSignal;
use crate::event::{Event, EventHeader, Lane, Origin, Priority};
use crate::lanes::LaneInput;
use crate::pool::Handle;
use crate::ratelimit::RateLimiter;
use crate::reason::Reason;
use crate::wire::{DecodeError, Frame, FrameKind};

/// Decides how many events a source may send now: the dispatcher's view of a rate limiter.
/// `Sync`, so a dispatcher can move to its ingest thread.
pub trait Admission: Sync {
    /// Grants up to `n` events to `source` at tick `now`; returns how many (`0..=n`).
    fn admit(&self, source: u32, n: u32, now: u64) -> u32;
}

/// Admits everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unlimited;

impl Admission for Unlimited {
    #[inline]
    fn admit(&self, _source: u32, n: u32, _now: u64) -> u32 {
        n
    }
}

impl<const SOURCES: usize> Admission for RateLimiter<SOURCES> {
    /// A source id outside the table gets nothing: the ingest side numbers its sources, so
    /// one out of range is a configuration error, and it shows as `RateLimited` counts (a
    /// lossy source's) or as a frame that never stops waiting (a source that waits).
    #[inline]
    fn admit(&self, source: u32, n: u32, now: u64) -> u32 {
        self.try_acquire(source, n, now).unwrap_or(0)
    }
}

/// What happened to one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
// New outcomes may come with new lanes or checks: a match elsewhere needs a `_` arm.
#[non_exhaustive]
pub enum Outcome {
    /// In its lane.
    Queued(Lane),
    /// Dead-lettered with this reason.
    DeadLettered(Reason),
    /// Rejected with this reason.
    Rejected(Reason),
    /// Not taken again: the engine holds it already
    /// ([`Dispatcher::dispatch_frame_resent`]).
    Duplicate,
}

/// Counts for one frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FrameOutcome {
    /// Events put into lanes.
    pub queued: u32,
    /// Events dead-lettered.
    pub dead_lettered: u32,
    /// Events (or the whole frame, as one unit) rejected.
    pub rejected: u32,
    /// Events not taken again: the engine holds them already.
    pub duplicates: u32,
}

impl FrameOutcome {
    #[inline]
    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Queued(_) => self.queued += 1,
            Outcome::DeadLettered(_) => self.dead_lettered += 1,
            Outcome::Rejected(_) => self.rejected += 1,
            Outcome::Duplicate => self.duplicates += 1,
        }
    }
}

/// Whether a source can be slowed down, which decides what happens to an event that finds
/// no room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Flow {
    /// The source cannot be slowed (UDP, a replay that does not wait): what does not fit is
    /// dead-lettered (`LaneFull`, `PoolExhausted`) and what the control plane sheds is
    /// dead-lettered `Shed`.
    Lossy,
    /// The source waits when told to (a TCP connection with a credit window): what does not
    /// fit, or what the control plane holds back, stops the frame until there is room.
    /// Nothing of such a source is dead-lettered for the engine's own load, except the
    /// priorities named sheddable ([`Dispatcher::set_sheddable`]).
    Waits,
}

/// How far a frame of a [`Flow::Waits`] source got: kept by the caller between calls of
/// [`Dispatcher::dispatch_frame_flow`] while the frame waits. A new frame starts with
/// [`FrameProgress::new`], or [`FrameProgress::producing`] when it comes from a producer
/// session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameProgress {
    /// The producer session's id, epoch and resolved seq the events' [`Origin`]s carry.
    producer: u64,
    epoch: u32,
    resolved: u64,
    /// The index of the first event not dispatched yet.
    next: u32,
    /// Events of the frame the rate limit granted so far (asked on the first call, and for a
    /// [`Flow::Waits`] source again on later calls for the events not granted yet).
    /// Invariant: `granted <= caller_grant.max(next)` (events before `next` are resolved,
    /// and need no grant any more).
    granted: u32,
    /// Events of the frame the caller's own rate limit granted ([`Self::with_caller_limit`]);
    /// `u32::MAX`: the caller limits nothing.
    caller_grant: u32,
    /// Whether the first call happened (the frame is counted, the rate limit asked).
    started: bool,
    /// Bytes of the frame's records from event `next` on ([`Events::rest_len`]): where to
    /// resume without walking the records before it again.
    ///
    /// [`Events::rest_len`]: crate::wire::Events::rest_len
    rest_len: usize,
    /// The key the rate limit is asked with (`None`: the frame's source id).
    rate_key: Option<u32>,
}

impl Default for FrameProgress {
    /// [`FrameProgress::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl FrameProgress {
    /// A frame not started.
    pub const fn new() -> Self {
        Self {
            producer: 0,
            epoch: 0,
            resolved: 0,
            next: 0,
            granted: 0,
            caller_grant: u32::MAX,
            started: false,
            rest_len: 0,
            rate_key: None,
        }
    }

    /// The same progress, with the rate limit asked for `key` instead of the frame's source
    /// id: the ingest side names who is limited (a producer, a client address), which need
    /// not be the connection the frame came on.
    #[must_use]
    pub const fn with_rate_key(mut self, key: u32) -> Self {
        self.rate_key = Some(key);
        self
    }

    /// A frame not started, from session `epoch` of producer `producer`, whose frames
    /// through `resolved` the engine has resolved: its events' [`Origin`]s say so
    /// ([`Origin::with_producer`]).
    pub const fn producing(producer: u64, epoch: u32, resolved: u64) -> Self {
        Self {
            producer,
            epoch,
            resolved,
            ..Self::new()
        }
    }

    /// The same progress, with a rate limit of the caller's own on top of the dispatcher's
    /// [`Admission`] (a token's bucket): no event is granted until the caller grants it with
    /// [`add_caller_grant`](Self::add_caller_grant), and the [`Admission`] is asked only for
    /// events the caller granted. An event past the caller's grant waits (`RateLimited`) for
    /// a [`Flow::Waits`] source, and is dead-lettered `RateLimited` for a lossy one.
    #[must_use]
    pub const fn with_caller_limit(mut self) -> Self {
        self.caller_grant = 0;
        self
    }

    /// Grants `n` more events of the frame under the caller's own limit (see
    /// [`with_caller_limit`](Self::with_caller_limit)), counted from the first event neither
    /// granted nor dispatched yet; call before each dispatch call with what the caller's
    /// limit granted for the [`caller_wanted`](Self::caller_wanted) events still to go.
    pub fn add_caller_grant(&mut self, n: u32) {
        self.caller_grant = self.caller_grant.max(self.next).saturating_add(n);
    }

    /// How many events of a frame of `count` still need the caller's grant: those neither
    /// granted nor dispatched yet (events the frame resolved without a grant, refused by a
    /// screen or held already, need none).
    pub const fn caller_wanted(&self, count: u32) -> u32 {
        let from = if self.caller_grant > self.next {
            self.caller_grant
        } else {
            self.next
        };
        count.saturating_sub(from)
    }

    /// Events the caller's own limit granted so far (`u32::MAX` without one).
    pub const fn caller_granted(&self) -> u32 {
        self.caller_grant
    }

    /// Events the dispatcher's [`Admission`] granted so far.
    pub const fn granted(&self) -> u32 {
        self.granted
    }

    /// The index of the first event not dispatched yet.
    pub const fn next(&self) -> u32 {
        self.next
    }
}

/// What one [`Dispatcher::dispatch_frame_flow`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FrameStep {
    /// The events this call dispatched.
    pub outcome: FrameOutcome,
    /// `None`: the frame is done. `Some(cause)`: it waits, for room in a lane (`LaneFull`),
    /// a free pool slot or room in the payload arena (`PoolExhausted`), the control plane
    /// (`Shed`) or tokens of a rate limit (`RateLimited`: the [`Admission`]'s or the
    /// caller's own, [`FrameProgress::with_caller_limit`]); call again later.
    pub waiting: Option<Reason>,
}

/// What [`Dispatcher::judge`] decided for one event.
enum Judged {
    /// On to its pool slot and lane.
    Go,
    /// Rejected with this reason.
    Reject(Reason),
    /// Dead-lettered with this reason.
    Dead(Reason),
    /// It waits (a [`Flow::Waits`] source), for this cause.
    Wait(Reason),
}

/// Routes events into the lanes. One per ingest thread that owns the realtime lane's
/// producer side (see [`Lanes`](crate::lanes::Lanes)).
///
/// ```
/// use pinstream_core::accounting::StageCounters;
/// use pinstream_core::control::ControlSignal;
/// use pinstream_core::dispatch::{Dispatcher, Outcome, Unlimited};
/// use pinstream_core::event::{EventHeader, Lane, Origin, Priority};
/// use pinstream_core::lanes::Lanes;
/// use pinstream_core::reason::Reason;
///
/// let mut lanes: Lanes<64, 16, 8, 8> = Lanes::new();
/// let (input, _output, mut dead_letters) = lanes.split();
/// let (signal, counters) = (ControlSignal::new(), StageCounters::new());
/// let mut dispatcher = Dispatcher::new(input, &Unlimited, &signal, 2, &counters);
///
/// let event = EventHeader::new(1, 0, Priority::High, 0);
/// assert_eq!(dispatcher.dispatch(&event, b"hi", Origin::new(7, 1), 10), Outcome::Queued(Lane::Realtime));
/// let unknown = EventHeader::new(2, 9, Priority::High, 0); // topic 9 is not registered
/// assert_eq!(
///     dispatcher.dispatch(&unknown, b"", Origin::new(7, 1), 10),
///     Outcome::DeadLettered(Reason::UnknownTopic)
/// );
/// assert_eq!(dead_letters.pop().unwrap().reason, Reason::UnknownTopic);
/// assert_eq!(counters.ingested.get(), 2);
/// ```
pub struct Dispatcher<'a, const P: usize, const POOL: usize, const LANE: usize, const DL: usize> {
    lanes: LaneInput<'a, P, POOL, LANE, DL>,
    admission: &'a dyn Admission,
    control: &'a ControlSignal,
    /// Topic ids `0..topics` are registered (a [`TopicTable`](crate::topic::TopicTable)
    /// gives out dense ids).
    topics: u32,
    counters: &'a StageCounters,
    /// Free pool slots taken in batches (one CAS per batch instead of one per event).
    /// Invariant: `cache[..cached]` are slot indices this dispatcher owns.
    cache: [usize; SLOT_BATCH],
    cached: usize,
    /// Per lane, the current frame's events waiting for their batch push (empty between
    /// calls).
    stage: [Stage; 3],
    /// Priorities (bit `1 << priority`) the control plane may shed even from a source that
    /// waits; none by default.
    sheddable: u8,
}

/// Events of one frame staged per lane before one batch push.
const STAGE: usize = 64;

/// Slots filled for one lane and not yet pushed, with what the outcome report needs.
/// Invariant: `slots[..n]` are slot indices the dispatcher owns.
struct Stage {
    slots: [u32; STAGE],
    /// Each staged event's index in its frame.
    at: [u32; STAGE],
    headers: [EventHeader; STAGE],
    n: usize,
}

impl Stage {
    const EMPTY: Self = Self {
        slots: [0; STAGE],
        at: [0; STAGE],
        headers: [EventHeader::new(0, 0, crate::event::Priority::Batch, 0); STAGE],
        n: 0,
    };
}

/// Most free slots the dispatcher keeps at hand (taken from the pool in batches of at most
/// an eighth of it, or handed back by the processors); they count as in use for the pool.
pub const SLOT_BATCH: usize = 32;

impl<'a, const P: usize, const POOL: usize, const LANE: usize, const DL: usize>
    Dispatcher<'a, P, POOL, LANE, DL>
{
    /// A dispatcher over `lanes`, admitting through `admission`, shedding what `control`
    /// says, accepting topic ids below `topics` (a `TopicTable`'s `len()`), counting into
    /// `counters` (which this dispatcher alone writes).
    pub fn new(
        lanes: LaneInput<'a, P, POOL, LANE, DL>,
        admission: &'a dyn Admission,
        control: &'a ControlSignal,
        topics: usize,
        counters: &'a StageCounters,
    ) -> Self {
        Self {
            lanes,
            admission,
            control,
            topics: u32::try_from(topics).unwrap_or(u32::MAX),
            counters,
            cache: [0; SLOT_BATCH],
            cached: 0,
            stage: [Stage::EMPTY, Stage::EMPTY, Stage::EMPTY],
            sheddable: 0,
        }
    }

    /// How many slots to take per refill: `SLOT_BATCH`, less for small pools so a refill
    /// takes at most an eighth of them (at least 1).
    const BATCH: usize = {
        let eighth = POOL / 8;
        if eighth >= SLOT_BATCH {
            SLOT_BATCH
        } else if eighth == 0 {
            1
        } else {
            eighth
        }
    };

    /// A free slot: from the cache, refilled in a batch when empty, first from the slots the
    /// processors handed back, then from the pool.
    #[inline]
    fn take_slot(&mut self) -> Option<Handle<'a, Event<P>, POOL>> {
        if self.cached == 0 {
            self.refill();
            if self.cached == 0 {
                return None;
            }
        }
        self.cached -= 1;
        // SAFETY: the index came from the recycle ring, `acquire_many` or a handle's
        // `into_index`, all slots of this pool owned by this dispatcher now, and it leaves
        // the cache here, once.
        Some(unsafe { self.lanes.pool.from_index(self.cache[self.cached]) })
    }

    #[cold]
    fn refill(&mut self) {
        let mut back = [0u32; SLOT_BATCH];
        let n = self.lanes.recycle.pop_slice(&mut back[..Self::BATCH]);
        for (dst, &src) in self.cache.iter_mut().zip(&back[..n]) {
            *dst = src as usize;
        }
        self.cached = if n != 0 {
            n
        } else {
            self.lanes.pool.acquire_many(&mut self.cache[..Self::BATCH])
        };
    }

    /// Puts a slot back into the cache (there is room: it was taken from it just before).
    #[inline]
    fn return_slot(&mut self, slot: Handle<'a, Event<P>, POOL>) {
        if self.cached < SLOT_BATCH {
            self.cache[self.cached] = slot.into_index();
            self.cached += 1;
        }
        // else: `slot` drops here and goes straight back to the pool.
    }

    /// Writes the event into its slot: a payload of up to `P` bytes inline, a longer one
    /// into the payload arena. `false` (the slot untouched) when the arena has no room now;
    /// the caller checked the length against `P` and the arena's size (`judge`).
    #[inline(always)]
    fn fill(
        &mut self,
        slot: &mut Event<P>,
        header: &EventHeader,
        origin: Origin,
        payload: &[u8],
        now: u64,
    ) -> bool {
        if payload.len() <= P {
            let filled = slot.fill(*header, origin, payload);
            debug_assert!(filled.is_ok(), "payload length checked above");
        } else {
            match self.lanes.arena.alloc(payload.len()) {
                Ok((r, dst)) => {
                    dst.copy_from_slice(payload);
                    slot.fill_arena(*header, origin, r);
                }
                Err(_) => return false,
            }
        }
        slot.received = now;
        true
    }

    /// Gives back a filled slot that did not enter its lane: its arena block (if any) is
    /// released, the slot goes back to the cache.
    #[inline]
    fn give_back(&mut self, slot: Handle<'a, Event<P>, POOL>) {
        if let Some(r) = slot.arena_ref() {
            // SAFETY: the block was allocated by this dispatcher's writer for this slot in
            // `fill` and never published (the slot did not enter a lane); released once.
            unsafe { self.lanes.arena.release(r) };
        }
        self.return_slot(slot);
    }

    /// The priorities the control plane may shed from sources that wait ([`Flow::Waits`]):
    /// their events are dead-lettered `Shed` at the levels that shed them, as a lossy
    /// source's are. Every other priority of such a source waits instead. None by default.
    pub fn set_sheddable(&mut self, priorities: &[Priority]) {
        self.sheddable = priorities.iter().fold(0, |m, &p| m | 1 << p as u8);
    }

    /// The counters this dispatcher writes.
    pub fn counters(&self) -> &'a StageCounters {
        self.counters
    }

    /// Events waiting in each lane (by [`Lane::index`]).
    pub fn depths(&self) -> [usize; 3] {
        self.lanes.depths()
    }

    /// Dispatches one event that arrived outside a frame (or from a frame the caller
    /// decoded itself), taking one token from `origin.source`'s rate limit.
    pub fn dispatch(
        &mut self,
        header: &EventHeader,
        payload: &[u8],
        origin: Origin,
        now: u64,
    ) -> Outcome {
        self.counters.ingested.incr();
        let outcome = if self.admission.admit(origin.source, 1, now) == 0 {
            self.dead_letter(header, origin, Reason::RateLimited, now)
        } else {
            let level = self.control.level();
            self.place(header, payload, origin, level, now)
        };
        if let Outcome::Queued(lane) = outcome {
            self.counters.queued(lane).incr();
        }
        outcome
    }

    /// Dispatches every event of an EVENT or BATCH frame from `source`, for a source without
    /// flow control ([`Flow::Lossy`]). Any other kind is one unit rejected `UnexpectedKind`
    /// (HELLO and ACK are the connection's business, not the pipeline's).
    pub fn dispatch_frame(&mut self, frame: &Frame<'_>, source: u32, now: u64) -> FrameOutcome {
        self.dispatch_frame_with(frame, source, now, |_, _, _| {})
    }

    /// [`dispatch_frame`](Self::dispatch_frame), calling `each(index, header, outcome)` for
    /// every event (the host answers rejected events with REJECT frames from it).
    pub fn dispatch_frame_with(
        &mut self,
        frame: &Frame<'_>,
        source: u32,
        now: u64,
        each: impl FnMut(u32, &EventHeader, Outcome),
    ) -> FrameOutcome {
        let mut progress = FrameProgress::new();
        let step = self.dispatch_frame_flow(frame, source, now, Flow::Lossy, &mut progress, each);
        debug_assert!(step.waiting.is_none(), "a lossy source never waits");
        step.outcome
    }

    /// Dispatches the events of `frame` from where `progress` says, for a source that is
    /// slowed down as `flow` says.
    ///
    /// With [`Flow::Waits`], an event that finds no room (its lane full, no free pool slot,
    /// or a priority the control plane holds back and [`set_sheddable`](Self::set_sheddable)
    /// does not name) is not dead-lettered: the call stops before it and returns
    /// [`FrameStep::waiting`] with the cause. Every event before it is dispatched (and
    /// reported to `each`); call again with the same `progress` (and the same frame) once the
    /// engine has drained, and it continues with that event. An event is counted `ingested`
    /// when it is dispatched, so a frame that waits is in the books only as far as it went.
    /// The rate limit is asked with the key of [`FrameProgress::with_rate_key`] or else
    /// `source`, on the first call for the whole frame (up to the caller's own grant), and on
    /// each later call again for the events not granted yet: with [`Flow::Waits`] an event
    /// past the grant waits (`RateLimited`) instead of being dead-lettered, and the frame
    /// goes on with what later calls are granted.
    ///
    /// With [`Flow::Lossy`] the call never waits: what does not fit is dead-lettered
    /// (`LaneFull`, `PoolExhausted`, `Shed`).
    pub fn dispatch_frame_flow(
        &mut self,
        frame: &Frame<'_>,
        source: u32,
        now: u64,
        flow: Flow,
        progress: &mut FrameProgress,
        each: impl FnMut(u32, &EventHeader, Outcome),
    ) -> FrameStep {
        self.dispatch_inner(
            frame,
            source,
            now,
            flow,
            progress,
            |_, _, _| false,
            |_, _| None,
            each,
        )
    }

    /// [`dispatch_frame_flow`](Self::dispatch_frame_flow) for a frame a producer sends
    /// again that the engine may hold in part (a frame in flight when it stopped): the
    /// events for which `held(index, header, payload)` is true are stored already and are
    /// not taken again
    /// ([`Outcome::Duplicate`], counted as [`Reason::Duplicate`]); the others are
    /// dispatched as usual.
    #[allow(clippy::too_many_arguments)]
    pub fn dispatch_frame_resent(
        &mut self,
        frame: &Frame<'_>,
        source: u32,
        now: u64,
        flow: Flow,
        progress: &mut FrameProgress,
        held: impl FnMut(u32, &EventHeader, &[u8]) -> bool,
        each: impl FnMut(u32, &EventHeader, Outcome),
    ) -> FrameStep {
        self.dispatch_inner(frame, source, now, flow, progress, held, |_, _| None, each)
    }

    /// [`dispatch_frame_resent`](Self::dispatch_frame_resent) with a `screen` the ingest
    /// side applies to every event before anything else judges it (after `held`): an event
    /// for which it names a reason is refused with it, at once and without taking a slot
    /// (rejected for a rejection code, dead-lettered for a dead-letter code); the others of
    /// the frame go on. An authenticated connection screens the topics its token may not use
    /// ([`Reason::ForbiddenTopic`]); its token's rate is no screen (a refusal) but a caller
    /// limit ([`FrameProgress::with_caller_limit`]), which makes a waiting source wait.
    #[allow(clippy::too_many_arguments)]
    pub fn dispatch_frame_screened(
        &mut self,
        frame: &Frame<'_>,
        source: u32,
        now: u64,
        flow: Flow,
        progress: &mut FrameProgress,
        held: impl FnMut(u32, &EventHeader, &[u8]) -> bool,
        screen: impl FnMut(u32, &EventHeader) -> Option<Reason>,
        each: impl FnMut(u32, &EventHeader, Outcome),
    ) -> FrameStep {
        self.dispatch_inner(frame, source, now, flow, progress, held, screen, each)
    }

    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn dispatch_inner(
        &mut self,
        frame: &Frame<'_>,
        source: u32,
        now: u64,
        flow: Flow,
        progress: &mut FrameProgress,
        mut held: impl FnMut(u32, &EventHeader, &[u8]) -> bool,
        mut screen: impl FnMut(u32, &EventHeader) -> Option<Reason>,
        mut each: impl FnMut(u32, &EventHeader, Outcome),
    ) -> FrameStep {
        let mut step = FrameStep::default();
        if !matches!(frame.kind(), FrameKind::Event | FrameKind::Batch) {
            if !progress.started {
                progress.started = true;
                self.counters.ingested.incr();
                self.counters.reason(Reason::UnexpectedKind).incr();
                step.outcome.rejected = 1;
            }
            return step;
        }
        let count = frame.event_count();
        if !progress.started {
            progress.started = true;
            self.counters.frames.incr();
        }
        // Ask the rate limit for the events not granted yet (and granted by the caller's
        // own limit): the whole frame on the first call; on a later call (a waiting source)
        // only what is still to go, so a partial grant is progress.
        // Events before `next` are resolved already (some without a grant: refused by the
        // screen, or held): no token is asked for them.
        progress.granted = progress.granted.max(progress.next);
        let upto = count.min(progress.caller_grant);
        if progress.granted < upto {
            let key = match progress.rate_key {
                Some(key) => key,
                None => source,
            };
            let want = upto - progress.granted;
            progress.granted += self.admission.admit(key, want, now).min(want);
        }
        let level = self.control.level();
        let frame_origin = Origin::new(source, frame.seq()).with_producer(
            progress.producer,
            progress.epoch,
            progress.resolved,
        );
        // Free room per lane minus what is staged, refreshed when it runs out (Waits only).
        let mut room = [0usize; 3];
        if flow == Flow::Waits {
            for lane in Lane::ALL {
                room[lane.index()] = self.lanes.room(lane);
            }
        }
        let first = progress.next;
        let mut next = count;
        // Resume where the last call stopped, without walking the records before it again.
        let mut events = if first == 0 {
            frame.events()
        } else {
            frame.events_from(first, progress.rest_len)
        };
        // Events counted `ingested` so far: each is counted before anything can resolve it
        // (a dead letter, a rejection, a push a processor may store at once), so a reader
        // of the counters never sees more resolved than ingested.
        let mut counted = first;
        let mut i = first;
        loop {
            let rest_len = events.rest_len();
            let Some(view) = events.next() else { break };
            let header = view.header();
            let payload = view.payload();
            let origin = frame_origin.at(i);
            if held(i, &header, payload) {
                self.count_ingested(&mut counted, i + 1);
                self.counters.reason(Reason::Duplicate).incr();
                step.outcome.add(Outcome::Duplicate);
                each(i, &header, Outcome::Duplicate);
                i += 1;
                continue;
            }
            let judged = if let Some(reason) = screen(i, &header) {
                if reason.is_rejection() {
                    Judged::Reject(reason)
                } else {
                    Judged::Dead(reason)
                }
            } else if i < progress.granted {
                self.judge(&header, payload.len(), level, flow)
            } else if flow == Flow::Waits {
                // Slowed, not dropped: the frame waits here for tokens.
                Judged::Wait(Reason::RateLimited)
            } else {
                Judged::Dead(Reason::RateLimited)
            };
            let stopped = match judged {
                Judged::Wait(cause) => {
                    step.waiting = Some(cause);
                    progress.rest_len = rest_len;
                    next = i;
                    break;
                }
                Judged::Reject(reason) => {
                    self.count_ingested(&mut counted, i + 1);
                    self.counters.reason(reason).incr();
                    Outcome::Rejected(reason)
                }
                Judged::Dead(reason) => {
                    self.count_ingested(&mut counted, i + 1);
                    self.dead_letter(&header, origin, reason, now)
                }
                Judged::Go => {
                    let lane = header.priority.lane();
                    let li = lane.index();
                    if flow == Flow::Waits && room[li] == 0 {
                        // What is staged for this lane was counted against its room, so it
                        // fits: push it, then look at the lane again.
                        self.count_ingested(&mut counted, i);
                        self.flush_stage(lane, frame_origin, now, &mut step.outcome, &mut each);
                        room[li] = self.lanes.room(lane);
                        if room[li] == 0 {
                            step.waiting = Some(Reason::LaneFull);
                            progress.rest_len = rest_len;
                            next = i;
                            break;
                        }
                    }
                    let slot = match self.take_slot() {
                        Some(mut slot) => {
                            if self.fill(&mut slot, &header, origin, payload, now) {
                                Some(slot)
                            } else {
                                // No room in the payload arena: as if no slot were free.
                                self.return_slot(slot);
                                None
                            }
                        }
                        None => None,
                    };
                    match slot {
                        Some(slot) => {
                            if flow == Flow::Waits {
                                room[li] -= 1;
                            }
                            // Lanes are filled per batch: one claim per lane and frame.
                            let stage = &mut self.stage[li];
                            stage.slots[stage.n] = slot.into_index() as u32;
                            stage.at[stage.n] = i;
                            stage.headers[stage.n] = header;
                            stage.n += 1;
                            if stage.n == STAGE {
                                self.count_ingested(&mut counted, i + 1);
                                self.flush_stage(
                                    lane,
                                    frame_origin,
                                    now,
                                    &mut step.outcome,
                                    &mut each,
                                );
                            }
                            i += 1;
                            continue;
                        }
                        None if flow == Flow::Waits => {
                            step.waiting = Some(Reason::PoolExhausted);
                            progress.rest_len = rest_len;
                            next = i;
                            break;
                        }
                        None => {
                            self.count_ingested(&mut counted, i + 1);
                            self.dead_letter(&header, origin, Reason::PoolExhausted, now)
                        }
                    }
                }
            };
            step.outcome.add(stopped);
            each(i, &header, stopped);
            i += 1;
        }
        self.count_ingested(&mut counted, next);
        for lane in Lane::ALL {
            self.flush_stage(lane, frame_origin, now, &mut step.outcome, &mut each);
        }
        progress.next = next;
        step
    }

    /// Pushes the slots staged for `lane` in one batch; those that do not fit are given back
    /// and dead-lettered `LaneFull`.
    #[inline]
    fn flush_stage(
        &mut self,
        lane: Lane,
        origin: Origin,
        now: u64,
        summary: &mut FrameOutcome,
        each: &mut impl FnMut(u32, &EventHeader, Outcome),
    ) {
        let li = lane.index();
        let n = self.stage[li].n;
        if n == 0 {
            return;
        }
        let staged = &self.stage[li].slots[..n];
        let pushed = match lane {
            Lane::Realtime => self.lanes.realtime.push_slice(staged),
            Lane::Transactional => self.lanes.transactional.push_slice(staged),
            Lane::Batch => self.lanes.batch.push_slice(staged),
        };
        self.counters.queued(lane).add(pushed as u64);
        // Settle every slot's ownership before calling back: the pushed ones belong to the
        // lane now; the rest come back and are dead-lettered. A panicking callback then
        // leaks nothing.
        for j in pushed..n {
            // SAFETY: a staged index is a slot this dispatcher owns (from `into_index` in
            // `dispatch_frame_with`); it did not enter the lane, and leaves the stage here,
            // once.
            let slot = unsafe { self.lanes.pool.from_index(self.stage[li].slots[j] as usize) };
            self.give_back(slot);
            let (header, at) = (self.stage[li].headers[j], self.stage[li].at[j]);
            self.dead_letter(&header, origin.at(at), Reason::LaneFull, now);
        }
        self.stage[li].n = 0;
        for j in 0..n {
            let (header, at) = (self.stage[li].headers[j], self.stage[li].at[j]);
            let outcome = if j < pushed {
                Outcome::Queued(lane)
            } else {
                Outcome::DeadLettered(Reason::LaneFull)
            };
            summary.add(outcome);
            each(at, &header, outcome);
        }
    }

    /// Counts the `events` events of a frame its producer resent after it was resolved (its
    /// `seq` is at or below the producer's last resolved one): ingested, and resolved as
    /// duplicates ([`Reason::Duplicate`]), not dispatched again.
    pub fn duplicate_frame(&mut self, events: u32) {
        self.counters.ingested.add(u64::from(events));
        self.counters
            .reason(Reason::Duplicate)
            .add(u64::from(events));
    }

    /// Counts a frame that failed to decode: one unit, ingested and rejected with the
    /// error's reason.
    pub fn reject_frame(&mut self, error: DecodeError) {
        self.reject_unit(error.reason());
    }

    /// Counts one unit ingested and rejected with `reason` (input the caller refused before
    /// it reached the dispatcher, e.g. a frame from a connection that was not set up).
    pub fn reject_unit(&mut self, reason: Reason) {
        self.counters.ingested.incr();
        self.counters.reason(reason).incr();
    }

    /// Steps 2 to 4 of the module docs for one event already admitted by the rate limiter,
    /// without acting on it (the caller counts the event first): whether it may go on to its
    /// pool slot and lane. With [`Flow::Waits`], a priority the control plane holds back
    /// waits unless it is sheddable.
    #[inline]
    fn judge(
        &self,
        header: &EventHeader,
        payload_len: usize,
        level: crate::control::Level,
        flow: Flow,
    ) -> Judged {
        if payload_len > P && payload_len > self.lanes.arena.capacity() {
            Judged::Reject(Reason::PayloadTooLarge)
        } else if u32::from(header.topic) >= self.topics {
            Judged::Dead(Reason::UnknownTopic)
        } else if !level.sheds(header.priority) {
            Judged::Go
        } else if flow == Flow::Waits && self.sheddable & (1 << header.priority as u8) == 0 {
            Judged::Wait(Reason::Shed)
        } else {
            Judged::Dead(Reason::Shed)
        }
    }

    /// Counts events `*counted..upto` of the current frame as ingested.
    #[inline]
    fn count_ingested(&self, counted: &mut u32, upto: u32) {
        if upto > *counted {
            self.counters.ingested.add(u64::from(upto - *counted));
            *counted = upto;
        }
    }

    /// Steps 2 to 6 for a single event from a source without flow control: pushed into its
    /// lane at once.
    fn place(
        &mut self,
        header: &EventHeader,
        payload: &[u8],
        origin: Origin,
        level: crate::control::Level,
        now: u64,
    ) -> Outcome {
        match self.judge(header, payload.len(), level, Flow::Lossy) {
            Judged::Go => {}
            Judged::Reject(reason) => {
                self.counters.reason(reason).incr();
                return Outcome::Rejected(reason);
            }
            Judged::Dead(reason) | Judged::Wait(reason) => {
                return self.dead_letter(header, origin, reason, now);
            }
        }
        let Some(mut slot) = self.take_slot() else {
            return self.dead_letter(header, origin, Reason::PoolExhausted, now);
        };
        if !self.fill(&mut slot, header, origin, payload, now) {
            self.return_slot(slot);
            return self.dead_letter(header, origin, Reason::PoolExhausted, now);
        }
        let lane = header.priority.lane();
        match self.lanes.push(lane, slot) {
            Ok(()) => Outcome::Queued(lane),
            Err(slot) => {
                self.give_back(slot);
                self.dead_letter(header, origin, Reason::LaneFull, now)
            }
        }
    }

    #[cold]
    fn dead_letter(
        &mut self,
        header: &EventHeader,
        origin: Origin,
        reason: Reason,
        now: u64,
    ) -> Outcome {
        self.lanes
            .dead
            .record(self.counters, header, origin, reason, now, 1);
        Outcome::DeadLettered(reason)
    }
}

impl<const P: usize, const POOL: usize, const LANE: usize, const DL: usize> Drop
    for Dispatcher<'_, P, POOL, LANE, DL>
{
    fn drop(&mut self) {
        // SAFETY: `cache[..cached]` are slots this dispatcher owns (the field's invariant),
        // given back once; the dispatcher is going away.
        unsafe { self.lanes.pool.release_many(&self.cache[..self.cached]) };
        // Staged slots are left only if a callback panicked mid-frame; they are ours too.
        for stage in &self.stage {
            for &index in &stage.slots[..stage.n] {
                // SAFETY: `slots[..n]` are owned slot indices (the stage's invariant).
                let slot = unsafe { self.lanes.pool.from_index(index as usize) };
                if let Some(r) = slot.arena_ref() {
                    // SAFETY: filled by this dispatcher, never published; released once.
                    unsafe { self.lanes.arena.release(r) };
                }
            }
        }
    }
}

impl<const P: usize, const POOL: usize, const LANE: usize, const DL: usize> core::fmt::Debug
    for Dispatcher<'_, P, POOL, LANE, DL>
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("topics", &self.topics)
            .field("level", &self.control.level())
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::control::Level;
    use crate::lanes::Lanes;
    use crate::wire::BatchEncoder;

    extern crate std;
    use std::vec::Vec;

    fn batch(events: &[(u64, Priority)]) -> Vec<u8> {
        let mut buf = std::vec![0u8; 64 * 1024];
        let mut enc = BatchEncoder::new(&mut buf, 1).unwrap();
        for &(id, p) in events {
            enc.push(&EventHeader::new(id, 0, p, 0), b"xy").unwrap();
        }
        let n = enc.finish().unwrap();
        buf.truncate(n);
        buf
    }

    /// Frames of two sources that name one rate key share its bucket; a frame without a key
    /// is limited by its source id.
    #[test]
    fn frames_with_one_rate_key_share_one_limit() {
        let mut lanes: Lanes<64, 64, 64, 64> = Lanes::new();
        let (input, _output, _dead) = lanes.split();
        let (signal, counters) = (ControlSignal::new(), StageCounters::new());
        let limiter: crate::ratelimit::RateLimiter<8> = crate::ratelimit::RateLimiter::new(
            crate::ratelimit::RateConfig::new(1, 1 << 40, 4).unwrap(),
        );
        let mut d = Dispatcher::new(input, &limiter, &signal, 1, &counters);
        let bytes = batch(&[
            (1, Priority::High),
            (2, Priority::High),
            (3, Priority::High),
        ]);
        let frame = Frame::new_checked(&bytes, bytes.len()).unwrap();
        let mut send = |source: u32, progress: FrameProgress| {
            let mut progress = progress;
            d.dispatch_frame_flow(&frame, source, 0, Flow::Lossy, &mut progress, |_, _, _| {})
                .outcome
        };
        // Sources 1 and 2 under key 5: 3 + 1 of a burst of 4 pass.
        assert_eq!(
            send(1, FrameProgress::new().with_rate_key(5)).dead_lettered,
            0
        );
        assert_eq!(
            send(2, FrameProgress::new().with_rate_key(5)).dead_lettered,
            2
        );
        // Without a key, source 2's own bucket (full) decides.
        assert_eq!(send(2, FrameProgress::new()).dead_lettered, 0);
        assert_eq!(counters.reason(Reason::RateLimited).get(), 2);
    }

    /// An [`Admission`] that grants from a fixed allowance, refilled by the test, and
    /// records what it was asked for.
    struct Allowance {
        left: std::sync::Mutex<u32>,
        asked: std::sync::Mutex<Vec<u32>>,
    }

    impl Allowance {
        fn new(left: u32) -> Self {
            Self {
                left: std::sync::Mutex::new(left),
                asked: std::sync::Mutex::new(Vec::new()),
            }
        }
        fn refill(&self, n: u32) {
            *self.left.lock().unwrap() += n;
        }
    }

    impl Admission for Allowance {
        fn admit(&self, _source: u32, n: u32, _now: u64) -> u32 {
            self.asked.lock().unwrap().push(n);
            let mut left = self.left.lock().unwrap();
            let granted = n.min(*left);
            *left -= granted;
            granted
        }
    }

    /// A waiting source is slowed by its rate limit, never dead-lettered: a frame of 10
    /// events granted 3 stops at the 4th, goes on later from there (asking only for the
    /// events still to go), and every event reaches its lane once, in order.
    #[test]
    fn rate_limit_makes_a_waiting_source_wait() {
        let mut lanes: Lanes<8, 64, 64, 8> = Lanes::new();
        let (input, mut output, mut dead) = lanes.split();
        let (signal, counters) = (ControlSignal::new(), StageCounters::new());
        let allowance = Allowance::new(3);
        let mut d = Dispatcher::new(input, &allowance, &signal, 1, &counters);
        let evs: Vec<(u64, Priority)> = (0..10).map(|i| (i, Priority::Medium)).collect();
        let bytes = batch(&evs);
        let frame = Frame::new_checked(&bytes, bytes.len()).unwrap();
        let mut progress = FrameProgress::new();
        let mut seen = Vec::new();
        let mut call = |d: &mut Dispatcher<'_, 8, 64, 64, 8>, progress: &mut FrameProgress| {
            d.dispatch_frame_flow(&frame, 3, 0, Flow::Waits, progress, |i, _, o| {
                assert_eq!(o, Outcome::Queued(Lane::Transactional));
                seen.push(i);
            })
        };
        let step = call(&mut d, &mut progress);
        assert_eq!(step.waiting, Some(Reason::RateLimited));
        assert_eq!((step.outcome.queued, progress.next()), (3, 3));
        assert_eq!(counters.ingested.get(), 3, "only what went is in the books");
        // No tokens: it waits again, having dispatched nothing.
        let step = call(&mut d, &mut progress);
        assert_eq!((step.waiting, step.outcome.queued), (Some(Reason::RateLimited), 0));
        // Partial grants make progress: 2, then 4, then the rest.
        allowance.refill(2);
        let step = call(&mut d, &mut progress);
        assert_eq!((step.waiting, progress.next()), (Some(Reason::RateLimited), 5));
        allowance.refill(4);
        let step = call(&mut d, &mut progress);
        assert_eq!((step.waiting, progress.next()), (Some(Reason::RateLimited), 9));
        allowance.refill(100);
        let step = call(&mut d, &mut progress);
        assert_eq!((step.waiting, step.outcome.queued), (None, 1));
        assert_eq!(*allowance.asked.lock().unwrap(), [10, 7, 7, 5, 1]);
        assert_eq!(seen, (0..10).collect::<Vec<u32>>());
        let mut taken = Vec::new();
        while let Some(slot) = output.pop(Lane::Transactional) {
            taken.push(slot.header.id);
        }
        assert_eq!(taken, (0..10).collect::<Vec<u64>>());
        assert!(dead.pop().is_none(), "nothing dead-lettered");
        assert_eq!(counters.reason(Reason::RateLimited).get(), 0);
        assert_eq!((counters.ingested.get(), counters.frames.get()), (10, 1));
    }

    /// The same grant from a lossy source dead-letters the events past it.
    #[test]
    fn rate_limit_dead_letters_a_lossy_source() {
        let mut lanes: Lanes<8, 64, 64, 8> = Lanes::new();
        let (input, _output, mut dead) = lanes.split();
        let (signal, counters) = (ControlSignal::new(), StageCounters::new());
        let allowance = Allowance::new(3);
        let mut d = Dispatcher::new(input, &allowance, &signal, 1, &counters);
        let evs: Vec<(u64, Priority)> = (0..10).map(|i| (i, Priority::Medium)).collect();
        let bytes = batch(&evs);
        let frame = Frame::new_checked(&bytes, bytes.len()).unwrap();
        let out = d.dispatch_frame(&frame, 3, 0);
        assert_eq!((out.queued, out.dead_lettered), (3, 7));
        assert_eq!(counters.reason(Reason::RateLimited).get(), 7);
        assert_eq!(dead.pop().unwrap().reason, Reason::RateLimited);
    }

    /// A caller's own limit (a token's bucket) slows a waiting source too, and the
    /// dispatcher's admission is asked only for the events the caller granted.
    #[test]
    fn a_caller_limit_makes_a_waiting_source_wait() {
        let mut lanes: Lanes<8, 64, 64, 8> = Lanes::new();
        let (input, _output, mut dead) = lanes.split();
        let (signal, counters) = (ControlSignal::new(), StageCounters::new());
        let allowance = Allowance::new(100);
        let mut d = Dispatcher::new(input, &allowance, &signal, 1, &counters);
        let evs: Vec<(u64, Priority)> = (0..6).map(|i| (i, Priority::High)).collect();
        let bytes = batch(&evs);
        let frame = Frame::new_checked(&bytes, bytes.len()).unwrap();
        let mut progress = FrameProgress::new().with_caller_limit();
        progress.add_caller_grant(2);
        let step = d.dispatch_frame_flow(&frame, 3, 0, Flow::Waits, &mut progress, |_, _, _| {});
        assert_eq!((step.waiting, progress.next()), (Some(Reason::RateLimited), 2));
        assert_eq!((progress.granted(), progress.caller_granted()), (2, 2));
        progress.add_caller_grant(4);
        let step = d.dispatch_frame_flow(&frame, 3, 0, Flow::Waits, &mut progress, |_, _, _| {});
        assert_eq!((step.waiting, progress.next()), (None, 6));
        assert_eq!(*allowance.asked.lock().unwrap(), [2, 4]);
        assert!(dead.pop().is_none());
        assert_eq!(counters.ingested.get(), 6);
    }

    /// Events a screen refuses past the grant are resolved without a token, and a later
    /// call asks (the caller and the admission) only for the events still to go.
    #[test]
    fn refused_events_past_the_grant_cost_no_tokens_later() {
        let mut lanes: Lanes<8, 64, 64, 8> = Lanes::new();
        let (input, _output, mut dead) = lanes.split();
        let (signal, counters) = (ControlSignal::new(), StageCounters::new());
        let allowance = Allowance::new(2);
        let mut d = Dispatcher::new(input, &allowance, &signal, 1, &counters);
        let evs: Vec<(u64, Priority)> = (0..6).map(|i| (i, Priority::High)).collect();
        let bytes = batch(&evs);
        let frame = Frame::new_checked(&bytes, bytes.len()).unwrap();
        let mut progress = FrameProgress::new().with_caller_limit();
        let forbidden = |i: u32, _: &EventHeader| (i == 2 || i == 3).then_some(Reason::ForbiddenTopic);
        let go = |d: &mut Dispatcher<'_, 8, 64, 64, 8>, progress: &mut FrameProgress| {
            d.dispatch_frame_screened(
                &frame,
                3,
                0,
                Flow::Waits,
                progress,
                |_, _, _| false,
                forbidden,
                |_, _, _| {},
            )
        };
        progress.add_caller_grant(2);
        // 0 and 1 granted, 2 and 3 refused, 4 waits.
        let step = go(&mut d, &mut progress);
        assert_eq!((step.waiting, progress.next()), (Some(Reason::RateLimited), 4));
        assert_eq!((step.outcome.queued, step.outcome.rejected), (2, 2));
        assert_eq!(progress.caller_wanted(6), 2, "events 4 and 5 only");
        progress.add_caller_grant(2);
        allowance.refill(2);
        let step = go(&mut d, &mut progress);
        assert_eq!((step.waiting, step.outcome.queued), (None, 2));
        assert_eq!(*allowance.asked.lock().unwrap(), [2, 2]);
        assert!(dead.pop().is_none());
        assert_eq!(counters.ingested.get(), 6);
    }

    /// A screen refuses the events it names, each with its reason (a rejection or a dead
    /// letter), and the others of the frame go on; everything is accounted once.
    #[test]
    fn a_screen_refuses_single_events_and_the_frame_goes_on() {
        let mut lanes: Lanes<64, 64, 64, 64> = Lanes::new();
        let (input, _output, _dead) = lanes.split();
        let (signal, counters) = (ControlSignal::new(), StageCounters::new());
        let mut d = Dispatcher::new(input, &Unlimited, &signal, 4, &counters);
        let bytes = batch(&[
            (1, Priority::High),
            (2, Priority::High),
            (3, Priority::High),
            (4, Priority::High),
        ]);
        let frame = Frame::new_checked(&bytes, bytes.len()).unwrap();
        let mut progress = FrameProgress::new();
        let mut seen = Vec::new();
        let step = d.dispatch_frame_screened(
            &frame,
            1,
            0,
            Flow::Waits,
            &mut progress,
            |_, _, _| false,
            |i, h| match (i, h.id) {
                (1, 2) => Some(Reason::ForbiddenTopic),
                (3, _) => Some(Reason::RateLimited),
                _ => None,
            },
            |i, _, o| seen.push((i, o)),
        );
        assert_eq!(step.waiting, None);
        assert_eq!(
            (step.outcome.queued, step.outcome.rejected, step.outcome.dead_lettered),
            (2, 1, 1)
        );
        assert!(seen.contains(&(1, Outcome::Rejected(Reason::ForbiddenTopic))));
        assert!(seen.contains(&(3, Outcome::DeadLettered(Reason::RateLimited))));
        assert_eq!(counters.reason(Reason::ForbiddenTopic).get(), 1);
        assert_eq!(counters.reason(Reason::RateLimited).get(), 1);
        assert_eq!(counters.ingested.get(), 4);
    }

    /// A source that waits loses nothing to a full lane: the frame stops, the lane drains,
    /// the frame goes on, and the lane gets every event once, in order.
    #[test]
    fn waiting_source_resumes_where_it_stopped() {
        let mut lanes: Lanes<8, 64, 8, 8> = Lanes::new();
        let (input, mut output, mut dead) = lanes.split();
        let (signal, counters) = (ControlSignal::new(), StageCounters::new());
        let mut d = Dispatcher::new(input, &Unlimited, &signal, 1, &counters);
        // 20 medium events and 3 high ones into lanes of 8.
        let mut evs: Vec<(u64, Priority)> = (0..20).map(|i| (i, Priority::Medium)).collect();
        evs.insert(5, (100, Priority::High));
        evs.insert(15, (101, Priority::High));
        evs.push((102, Priority::High));
        let bytes = batch(&evs);
        let frame = Frame::new_checked(&bytes, bytes.len()).unwrap();
        let mut progress = FrameProgress::new();
        let mut seen = Vec::new();
        let mut taken = Vec::new();
        let mut rounds = 0;
        loop {
            rounds += 1;
            let step =
                d.dispatch_frame_flow(&frame, 3, 0, Flow::Waits, &mut progress, |i, _, o| {
                    assert!(matches!(o, Outcome::Queued(_)), "{o:?}");
                    seen.push(i);
                });
            assert_eq!(step.outcome.dead_lettered, 0);
            // Every event reported so far is counted ingested, and no more.
            assert_eq!(counters.ingested.get(), u64::from(progress.next()));
            if step.waiting.is_none() {
                break;
            }
            assert_eq!(step.waiting, Some(Reason::LaneFull));
            while let Some(slot) = output.pop(Lane::Transactional) {
                taken.push(slot.header.id);
            }
            assert!(rounds < 10);
        }
        while let Some(slot) = output.pop(Lane::Transactional) {
            taken.push(slot.header.id);
        }
        assert!(rounds > 1, "the lane of 8 must have made the frame wait");
        assert_eq!(taken, (0..20).collect::<Vec<u64>>());
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..23).collect::<Vec<u32>>(),
            "each event reported once"
        );
        assert_eq!(counters.ingested.get(), 23);
        assert_eq!(counters.frames.get(), 1);
        assert!(dead.pop().is_none());
    }

    /// A resent frame: the events the engine holds are answered as duplicates (counted
    /// ingested and `duplicate`), the others go on, and every event's origin names its
    /// producer, the producer's resolved seq and its index in the frame.
    #[test]
    fn resent_frame_takes_only_what_is_not_held() {
        let mut lanes: Lanes<8, 64, 8, 8> = Lanes::new();
        let (input, mut output, mut dead) = lanes.split();
        let (signal, counters) = (ControlSignal::new(), StageCounters::new());
        let mut d = Dispatcher::new(input, &Unlimited, &signal, 1, &counters);
        let evs: Vec<(u64, Priority)> = (0..6).map(|i| (i, Priority::High)).collect();
        let bytes = batch(&evs);
        let frame = Frame::new_checked(&bytes, bytes.len()).unwrap();
        let mut progress = FrameProgress::producing(77, 5, 40);
        let mut outcomes = Vec::new();
        let step = d.dispatch_frame_resent(
            &frame,
            3,
            0,
            Flow::Waits,
            &mut progress,
            |i, _, _| i % 2 == 0,
            |i, _, o| outcomes.push((i, o)),
        );
        assert_eq!(step.waiting, None);
        assert_eq!((step.outcome.queued, step.outcome.duplicates), (3, 3));
        outcomes.sort_by_key(|&(i, _)| i);
        for (i, o) in outcomes {
            let expected = if i % 2 == 0 {
                Outcome::Duplicate
            } else {
                Outcome::Queued(Lane::Realtime)
            };
            assert_eq!(o, expected, "event {i}");
        }
        let mut origins = Vec::new();
        while let Some(slot) = output.pop(Lane::Realtime) {
            origins.push((slot.header.id, slot.origin));
        }
        let seq = frame.seq();
        let want: Vec<(u64, Origin)> = [1u32, 3, 5]
            .iter()
            .map(|&i| {
                (
                    u64::from(i),
                    Origin::new(3, seq).with_producer(77, 5, 40).at(i),
                )
            })
            .collect();
        assert_eq!(origins, want);
        assert_eq!(counters.ingested.get(), 6);
        assert_eq!(counters.reason(Reason::Duplicate).get(), 3);
        assert!(dead.pop().is_none());
    }

    /// The same overload from a lossy source dead-letters what does not fit.
    #[test]
    fn lossy_source_dead_letters_what_does_not_fit() {
        let mut lanes: Lanes<8, 64, 8, 8> = Lanes::new();
        let (input, _output, _dead) = lanes.split();
        let (signal, counters) = (ControlSignal::new(), StageCounters::new());
        let mut d = Dispatcher::new(input, &Unlimited, &signal, 1, &counters);
        let evs: Vec<(u64, Priority)> = (0..20).map(|i| (i, Priority::Medium)).collect();
        let bytes = batch(&evs);
        let frame = Frame::new_checked(&bytes, bytes.len()).unwrap();
        let out = d.dispatch_frame(&frame, 3, 0);
        assert_eq!((out.queued, out.dead_lettered), (8, 12));
        assert_eq!(counters.reason(Reason::LaneFull).get(), 12);
    }

    /// An exhausted pool makes a waiting source wait, a lossy one dead-letter.
    #[test]
    fn pool_exhaustion_waits() {
        let mut lanes: Lanes<8, 4, 8, 8> = Lanes::new();
        let (input, mut output, _dead) = lanes.split();
        let (signal, counters) = (ControlSignal::new(), StageCounters::new());
        let mut d = Dispatcher::new(input, &Unlimited, &signal, 1, &counters);
        let evs: Vec<(u64, Priority)> = (0..6).map(|i| (i, Priority::High)).collect();
        let bytes = batch(&evs);
        let frame = Frame::new_checked(&bytes, bytes.len()).unwrap();
        let mut progress = FrameProgress::new();
        let step = d.dispatch_frame_flow(&frame, 3, 0, Flow::Waits, &mut progress, |_, _, _| {});
        assert_eq!(step.waiting, Some(Reason::PoolExhausted));
        assert_eq!(step.outcome.queued, 4);
        assert_eq!(progress.next(), 4);
        // Processing frees slots (dropped handles go back to the pool).
        while output.pop(Lane::Realtime).is_some() {}
        let step = d.dispatch_frame_flow(&frame, 3, 0, Flow::Waits, &mut progress, |_, _, _| {});
        assert_eq!(step.waiting, None);
        assert_eq!(step.outcome.queued, 2);
        assert_eq!(counters.reason(Reason::PoolExhausted).get(), 0);
    }

    fn batch_sized(events: &[(u64, usize)]) -> Vec<u8> {
        let mut buf = std::vec![0u8; 64 * 1024];
        let mut enc = BatchEncoder::new(&mut buf, 1).unwrap();
        for &(id, len) in events {
            let payload = std::vec![id as u8; len];
            enc.push(&EventHeader::new(id, 0, Priority::High, 0), &payload)
                .unwrap();
        }
        let n = enc.finish().unwrap();
        buf.truncate(n);
        buf
    }

    /// Payloads longer than the slot go to the arena and come out whole; a full arena makes
    /// a waiting source wait (no dead letter) until the processors release blocks, and a
    /// payload larger than the whole arena is rejected.
    #[test]
    fn arena_exhaustion_waits_and_large_payloads_read_back() {
        let mut lanes: Lanes<8, 16, 16, 8> = Lanes::new();
        let mut region = [0u8; 100];
        let (input, mut output, mut dead) = lanes.split_with_arena(&mut region);
        let (signal, counters) = (ControlSignal::new(), StageCounters::new());
        let mut d = Dispatcher::new(input, &Unlimited, &signal, 1, &counters);
        // 40 + 40 fit in 100 bytes, the third 40 waits; 4 bytes are inline; 101 never fits.
        let bytes = batch_sized(&[(1, 40), (2, 40), (3, 4), (4, 40), (5, 101)]);
        let frame = Frame::new_checked(&bytes, bytes.len()).unwrap();
        let mut progress = FrameProgress::new();
        let step = d.dispatch_frame_flow(&frame, 3, 0, Flow::Waits, &mut progress, |_, _, _| {});
        assert_eq!(step.waiting, Some(Reason::PoolExhausted));
        assert_eq!((step.outcome.queued, progress.next()), (3, 3));
        // Waiting again changes nothing while the arena is full.
        let step = d.dispatch_frame_flow(&frame, 3, 0, Flow::Waits, &mut progress, |_, _, _| {});
        assert_eq!(
            (step.waiting, step.outcome.queued),
            (Some(Reason::PoolExhausted), 0)
        );
        for (id, len) in [(1u64, 40usize), (2, 40), (3, 4)] {
            let slot = output.pop(Lane::Realtime).unwrap();
            assert_eq!(slot.header.id, id);
            let payload = output.payload(&slot);
            assert_eq!(payload, &std::vec![id as u8; len][..]);
            output.release_payload(&slot);
        }
        output.reclaim_payloads();
        let step = d.dispatch_frame_flow(&frame, 3, 0, Flow::Waits, &mut progress, |_, _, _| {});
        assert_eq!(step.waiting, None);
        assert_eq!((step.outcome.queued, step.outcome.rejected), (1, 1));
        assert_eq!(counters.reason(Reason::PayloadTooLarge).get(), 1);
        assert_eq!(counters.reason(Reason::PoolExhausted).get(), 0);
        let slot = output.pop(Lane::Realtime).unwrap();
        assert_eq!(output.payload(&slot), &[4u8; 40][..]);
        assert!(dead.pop().is_none(), "a waiting source loses nothing");
        assert_eq!(counters.ingested.get(), 5);
    }

    /// The same full arena dead-letters a lossy source's event `PoolExhausted`.
    #[test]
    fn arena_exhaustion_dead_letters_a_lossy_source() {
        let mut lanes: Lanes<8, 16, 16, 8> = Lanes::new();
        let mut region = [0u8; 100];
        let (input, mut output, mut dead) = lanes.split_with_arena(&mut region);
        let (signal, counters) = (ControlSignal::new(), StageCounters::new());
        let mut d = Dispatcher::new(input, &Unlimited, &signal, 1, &counters);
        let bytes = batch_sized(&[(1, 40), (2, 40), (3, 40), (4, 4)]);
        let frame = Frame::new_checked(&bytes, bytes.len()).unwrap();
        let out = d.dispatch_frame(&frame, 3, 0);
        assert_eq!((out.queued, out.dead_lettered), (3, 1));
        let letter = dead.pop().unwrap();
        assert_eq!(
            (letter.header.id, letter.reason),
            (3, Reason::PoolExhausted)
        );
        assert_eq!(counters.reason(Reason::PoolExhausted).get(), 1);
        let slot = output.pop(Lane::Realtime).unwrap();
        assert_eq!(output.payload(&slot), &[1u8; 40][..]);
    }

    /// Without an arena (`split`), a payload longer than the slot is rejected, as before.
    #[test]
    fn without_an_arena_long_payloads_are_too_large() {
        let mut lanes: Lanes<8, 16, 16, 8> = Lanes::new();
        let (input, _output, _dead) = lanes.split();
        let (signal, counters) = (ControlSignal::new(), StageCounters::new());
        let mut d = Dispatcher::new(input, &Unlimited, &signal, 1, &counters);
        let header = EventHeader::new(1, 0, Priority::High, 0);
        assert_eq!(
            d.dispatch(&header, &[0; 9], Origin::new(1, 1), 0),
            Outcome::Rejected(Reason::PayloadTooLarge)
        );
        assert_eq!(
            d.dispatch(&header, &[0; 8], Origin::new(1, 1), 0),
            Outcome::Queued(Lane::Realtime)
        );
    }

    /// The control plane holds a waiting source back instead of shedding it, except for the
    /// priorities named sheddable; problems that are the event's own fault still dead-letter.
    #[test]
    fn control_plane_holds_back_waiting_sources() {
        let mut lanes: Lanes<8, 64, 8, 8> = Lanes::new();
        let (input, _output, _dead) = lanes.split();
        let (signal, counters) = (ControlSignal::new(), StageCounters::new());
        let mut d = Dispatcher::new(input, &Unlimited, &signal, 1, &counters);
        signal.publish(Level::Degraded); // sheds Low and Batch
        let bytes = batch(&[(1, Priority::High), (2, Priority::Low), (3, Priority::High)]);
        let frame = Frame::new_checked(&bytes, bytes.len()).unwrap();
        let mut progress = FrameProgress::new();
        let step = d.dispatch_frame_flow(&frame, 3, 0, Flow::Waits, &mut progress, |_, _, _| {});
        assert_eq!(step.waiting, Some(Reason::Shed));
        assert_eq!((step.outcome.queued, progress.next()), (1, 1));
        signal.publish(Level::Healthy);
        let step = d.dispatch_frame_flow(&frame, 3, 0, Flow::Waits, &mut progress, |_, _, _| {});
        assert_eq!((step.waiting, step.outcome.queued), (None, 2));

        // Low named sheddable: shed as before; an unknown topic is dead-lettered at once.
        d.set_sheddable(&[Priority::Low, Priority::Batch]);
        signal.publish(Level::Degraded);
        let bytes = batch(&[(4, Priority::Low), (5, Priority::High)]);
        let frame = Frame::new_checked(&bytes, bytes.len()).unwrap();
        let mut progress = FrameProgress::new();
        let step = d.dispatch_frame_flow(&frame, 3, 0, Flow::Waits, &mut progress, |_, _, _| {});
        assert_eq!(step.waiting, None);
        assert_eq!((step.outcome.queued, step.outcome.dead_lettered), (1, 1));
        assert_eq!(counters.reason(Reason::Shed).get(), 1);
    }
}
