//! The event model: what one event is, from the wire to the sink.
//!
//! An event is a fixed 32-byte [`EventHeader`] (idempotency key, topic, priority, producer
//! timestamp, flags, an optional numeric value) and a payload. An [`Event<P>`] is the slot
//! type of the [`EventPool`](crate::pool::EventPool): a payload of at most `P` bytes is held
//! inline in the slot (the fast path for small events), a longer one lives in the payload
//! arena and the slot holds its [`ArenaRef`] (see [`arena`](crate::arena)); [`Event::payload`]
//! says which.
//! Beside them the engine records the event's [`Origin`] (which source sent it, in which
//! frame) so acknowledgements can be sent back once the event is resolved.
//!
//! The [`Priority`] decides the [`Lane`]:
//!
//! | priority | lane |
//! | --- | --- |
//! | `Critical`, `High` | `Realtime` |
//! | `Medium` | `Transactional` |
//! | `Low`, `Batch` | `Batch` |
//!
//! ```
//! use pinstream_core::event::{Event, EventHeader, Lane, Origin, Priority};
//!
//! let header = EventHeader::new(42, 3, Priority::High, 1_000).with_value(-7);
//! let event: Event<64> = Event::new(header, Origin::new(1, 9), b"temperature").unwrap();
//! assert_eq!(event.header.priority.lane(), Lane::Realtime);
//! assert_eq!(event.header.value(), Some(-7));
//! assert_eq!(event.inline_payload(), Some(&b"temperature"[..]));
//! ```

use core::fmt;

/// How urgent an event is; it decides the [`Lane`]. Lower numbers are more urgent.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Priority {
    /// Must get through even in an emergency: realtime lane, never shed.
    Critical = 0,
    /// Realtime lane.
    High = 1,
    /// Transactional lane: deduplicated, retried.
    Medium = 2,
    /// Batch lane: aggregated per window.
    Low = 3,
    /// Batch lane: aggregated per window.
    Batch = 4,
}

impl Priority {
    /// Every priority, most urgent first.
    pub const ALL: [Priority; 5] = [
        Priority::Critical,
        Priority::High,
        Priority::Medium,
        Priority::Low,
        Priority::Batch,
    ];

    /// The priority with wire code `code`, or `None` for codes above 4.
    #[inline]
    pub const fn from_u8(code: u8) -> Option<Self> {
        match code {
            0 => Some(Priority::Critical),
            1 => Some(Priority::High),
            2 => Some(Priority::Medium),
            3 => Some(Priority::Low),
            4 => Some(Priority::Batch),
            _ => None,
        }
    }

    /// The wire code (0 = `Critical` … 4 = `Batch`).
    #[inline]
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// A lower-case name: `"critical"`, `"high"`, `"medium"`, `"low"`, `"batch"`.
    pub const fn name(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
            Priority::Batch => "batch",
        }
    }

    /// The priority with this [`name`](Self::name), if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The lane events of this priority travel in.
    #[inline]
    pub const fn lane(self) -> Lane {
        match self {
            Priority::Critical | Priority::High => Lane::Realtime,
            Priority::Medium => Lane::Transactional,
            Priority::Low | Priority::Batch => Lane::Batch,
        }
    }
}

/// One of the three lanes between the dispatcher and the processors.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Lane {
    /// `Critical` and `High`: single-producer ring, alert handlers.
    Realtime = 0,
    /// `Medium`: multi-producer ring, deduplication and bounded retry.
    Transactional = 1,
    /// `Low` and `Batch`: multi-producer ring, windowed aggregation.
    Batch = 2,
}

impl Lane {
    /// Every lane, in index order.
    pub const ALL: [Lane; 3] = [Lane::Realtime, Lane::Transactional, Lane::Batch];

    /// `0`, `1` or `2`: an index into per-lane arrays.
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// A short lower-case name (`"realtime"`, `"transactional"`, `"batch"`).
    pub const fn name(self) -> &'static str {
        match self {
            Lane::Realtime => "realtime",
            Lane::Transactional => "transactional",
            Lane::Batch => "batch",
        }
    }
}

/// Bit in [`EventHeader::flags`]: the event carries a numeric [`value`](EventHeader::value).
pub const FLAG_HAS_VALUE: u8 = 0x01;
/// Flag bits this version defines; the others are reserved and must be zero on the wire.
pub const KNOWN_FLAGS: u8 = FLAG_HAS_VALUE;

/// The fixed part of an event (32 bytes on the wire, see `docs/PROTOCOL.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EventHeader {
    /// The producer's idempotency key: a retried event carries the same id, and the
    /// transactional lane drops repeats within its window.
    pub id: u64,
    /// Topic id, registered in the [`TopicTable`](crate::topic::TopicTable).
    pub topic: u16,
    /// Urgency; decides the lane.
    pub priority: Priority,
    /// Bit set: [`FLAG_HAS_VALUE`]; other bits reserved (zero).
    pub flags: u8,
    /// The producer's timestamp, in the producer's ticks (opaque to the engine).
    pub timestamp: u64,
    /// The numeric value for alert rules and aggregation; meaningful only when
    /// [`FLAG_HAS_VALUE`] is set (read it through [`value`](Self::value)).
    pub raw_value: i64,
}

impl EventHeader {
    /// A header without a value.
    #[inline]
    pub const fn new(id: u64, topic: u16, priority: Priority, timestamp: u64) -> Self {
        Self {
            id,
            topic,
            priority,
            flags: 0,
            timestamp,
            raw_value: 0,
        }
    }

    /// The same header carrying `value` (sets [`FLAG_HAS_VALUE`]).
    #[inline]
    pub const fn with_value(mut self, value: i64) -> Self {
        self.flags |= FLAG_HAS_VALUE;
        self.raw_value = value;
        self
    }

    /// The numeric value, if the event carries one.
    #[inline]
    pub const fn value(&self) -> Option<i64> {
        if self.flags & FLAG_HAS_VALUE != 0 {
            Some(self.raw_value)
        } else {
            None
        }
    }
}

/// Where an event came from, so the engine can acknowledge it: the source (a connection or
/// producer, numbered by the ingest side), the sequence number of the frame it arrived in
/// and its place in that frame; for a producer session (protocol version 2) also the
/// producer's id, the session's epoch (a producer forgotten and back starts a new one) and
/// how far the producer's frames were resolved when the engine took this one in. Stored
/// with each record, they let a restarted engine tell which frames of a producer are
/// complete in its logs and which events of the others it has
/// ([`Dispatcher::dispatch_frame_resent`](crate::dispatch::Dispatcher::dispatch_frame_resent)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Origin {
    /// The ingest side's number for the sender; also the rate limiter's key unless the
    /// frame's [`FrameProgress`](crate::dispatch::FrameProgress) names another.
    pub source: u32,
    /// The event's index in its frame (0 for the first), set by the dispatcher.
    pub index: u32,
    /// The sequence number of the frame that carried the event.
    pub seq: u64,
    /// The producer session's id (0: the sender has none).
    pub producer: u64,
    /// The producer session's epoch (larger for a later session of the same id).
    pub epoch: u32,
    /// `seq` minus the producer's highest resolved frame seq when this frame was taken in
    /// (saturating at `u32::MAX`, which then understates the resolved seq); see
    /// [`resolved`](Self::resolved).
    pub behind: u32,
}

impl Origin {
    /// An origin without a producer session, index 0.
    #[inline]
    pub const fn new(source: u32, seq: u64) -> Self {
        Self {
            source,
            index: 0,
            seq,
            producer: 0,
            epoch: 0,
            behind: 0,
        }
    }

    /// The same origin from producer `producer` in session `epoch`, whose frames through
    /// `resolved` were resolved (call after the seq is set).
    #[inline]
    #[must_use]
    pub const fn with_producer(mut self, producer: u64, epoch: u32, resolved: u64) -> Self {
        self.producer = producer;
        self.epoch = epoch;
        let behind = self.seq.saturating_sub(resolved);
        self.behind = if behind > u32::MAX as u64 {
            u32::MAX
        } else {
            behind as u32
        };
        self
    }

    /// The producer's highest resolved frame seq when this frame was taken in, or less (when
    /// `behind` saturated); 0 without a producer.
    #[inline]
    pub const fn resolved(&self) -> u64 {
        if self.producer == 0 {
            0
        } else {
            self.seq.saturating_sub(self.behind as u64)
        }
    }

    /// The same origin for the event at `index` of its frame.
    #[inline]
    #[must_use]
    pub const fn at(mut self, index: u32) -> Self {
        self.index = index;
        self
    }
}

/// The payload did not fit: `len` bytes offered, `capacity` available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PayloadTooLarge {
    /// Bytes offered.
    pub len: usize,
    /// Bytes an event of this type holds (`P`).
    pub capacity: usize,
}

impl fmt::Display for PayloadTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "payload of {} bytes exceeds the event capacity of {} bytes",
            self.len, self.capacity
        )
    }
}

impl core::error::Error for PayloadTooLarge {}

/// Where a payload too long for its slot lives in the payload arena: offset, length, block
/// descriptor and the arena split it belongs to. Made only by
/// [`ArenaWriter::alloc`](crate::arena::ArenaWriter::alloc); read through the arena's reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ArenaRef {
    /// Physical offset of the first byte; `offset + len <= ` the arena's size.
    pub(crate) offset: u32,
    /// Bytes.
    pub(crate) len: u32,
    /// Index of the block's descriptor.
    pub(crate) block: u32,
    /// The arena split the block belongs to; a reference from an earlier split reads as
    /// empty and releases nothing.
    pub(crate) epoch: u32,
}

impl ArenaRef {
    /// A reference to nothing (length 0); what event slots start with.
    pub const NONE: Self = Self {
        offset: 0,
        len: 0,
        block: 0,
        epoch: u32::MAX,
    };

    /// The payload's length in bytes.
    #[inline]
    pub const fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the payload is empty.
    #[inline]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// An event's payload as its slot holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    /// In the slot (at most `P` bytes).
    Inline(&'a [u8]),
    /// In the payload arena (longer than `P` bytes).
    Arena(ArenaRef),
}

impl Payload<'_> {
    /// The payload's length in bytes.
    #[inline]
    pub const fn len(&self) -> usize {
        match self {
            Payload::Inline(b) => b.len(),
            Payload::Arena(r) => r.len(),
        }
    }

    /// Whether the payload is empty.
    #[inline]
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One event: the slot type of the event pool. `Copy`, so it can sit in a `static` pool and
/// be moved through rings by index. A payload of up to `P` bytes is inline; a longer one is
/// an [`ArenaRef`] into the payload arena.
///
/// `P` is the inline payload capacity in bytes, at most 65 535 (a compile error otherwise).
#[derive(Clone, Copy)]
pub struct Event<const P: usize> {
    /// The fixed part.
    pub header: EventHeader,
    /// Who sent it, in which frame.
    pub origin: Origin,
    /// The engine's tick when the dispatcher took the event in (0 until then); processors
    /// measure time spent in the lanes from it.
    pub received: u64,
    /// Payload bytes. Invariant: `len <= P` means inline in `payload[..len]`; `len > P`
    /// means in the arena at `ext` (and `ext.len == len`).
    len: u32,
    /// Where the payload is when it is not inline.
    ext: ArenaRef,
    payload: [u8; P],
}

impl<const P: usize> Event<P> {
    const CAPACITY_FITS: () = assert!(P <= u16::MAX as usize, "payload capacity above 65535");

    /// An event with an empty payload and a zero header (id 0, topic 0, `Batch`): the value
    /// pool slots start with.
    pub const EMPTY: Self = {
        #[allow(clippy::let_unit_value)]
        let () = Self::CAPACITY_FITS;
        Self {
            header: EventHeader::new(0, 0, Priority::Batch, 0),
            origin: Origin::new(0, 0),
            received: 0,
            len: 0,
            ext: ArenaRef::NONE,
            payload: [0; P],
        }
    };

    /// An event holding a copy of `payload`.
    ///
    /// # Errors
    /// [`PayloadTooLarge`] when `payload` is longer than `P`.
    pub fn new(
        header: EventHeader,
        origin: Origin,
        payload: &[u8],
    ) -> Result<Self, PayloadTooLarge> {
        let mut event = Self::EMPTY;
        event.fill(header, origin, payload)?;
        Ok(event)
    }

    /// Overwrites this event in place (a pool slot) with `header`, `origin` and a copy of
    /// `payload`. On error the event is left unchanged.
    ///
    /// # Errors
    /// [`PayloadTooLarge`] when `payload` is longer than `P`.
    #[inline]
    pub fn fill(
        &mut self,
        header: EventHeader,
        origin: Origin,
        payload: &[u8],
    ) -> Result<(), PayloadTooLarge> {
        let Some(dst) = self.payload.get_mut(..payload.len()) else {
            return Err(PayloadTooLarge {
                len: payload.len(),
                capacity: P,
            });
        };
        dst.copy_from_slice(payload);
        self.header = header;
        self.origin = origin;
        // `payload.len() <= P <= u16::MAX` (checked above and at compile time).
        self.len = payload.len() as u32;
        Ok(())
    }

    /// Overwrites this event in place with `header`, `origin` and a payload that lives in
    /// the arena at `ext` (its bytes written there by the caller); `ext` must be longer
    /// than `P` (shorter payloads are inline).
    #[inline]
    // Its caller, the dispatcher, needs CAS (see `lib.rs`).
    #[cfg_attr(not(pinstream_cas), allow(dead_code))]
    pub(crate) fn fill_arena(&mut self, header: EventHeader, origin: Origin, ext: ArenaRef) {
        debug_assert!(ext.len() > P, "payloads up to P bytes are inline");
        self.header = header;
        self.origin = origin;
        self.len = ext.len;
        self.ext = ext;
    }

    /// The payload: inline bytes, or where it lives in the arena.
    #[inline]
    pub fn payload(&self) -> Payload<'_> {
        match self.inline_payload() {
            Some(bytes) => Payload::Inline(bytes),
            None => Payload::Arena(self.ext),
        }
    }

    /// The payload bytes when they are inline (at most `P` bytes), else `None`.
    #[inline]
    pub fn inline_payload(&self) -> Option<&[u8]> {
        self.payload.get(..self.len as usize)
    }

    /// Where the payload lives in the arena, when it is not inline.
    #[inline]
    pub fn arena_ref(&self) -> Option<ArenaRef> {
        if self.len as usize > P {
            Some(self.ext)
        } else {
            None
        }
    }

    /// The payload length in bytes.
    #[inline]
    pub const fn payload_len(&self) -> usize {
        self.len as usize
    }

    /// The payload capacity, `P`.
    #[inline]
    pub const fn capacity(&self) -> usize {
        P
    }
}

impl<const P: usize> Default for Event<P> {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl<const P: usize> fmt::Debug for Event<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("header", &self.header)
            .field("origin", &self.origin)
            .field("payload_len", &self.len)
            .finish()
    }
}

impl<const P: usize> PartialEq for Event<P> {
    fn eq(&self, other: &Self) -> bool {
        self.header == other.header
            && self.origin == other.origin
            && self.payload() == other.payload()
    }
}

impl<const P: usize> Eq for Event<P> {}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn priorities_map_to_lanes_and_codes_round_trip() {
        for p in Priority::ALL {
            assert_eq!(Priority::from_u8(p.as_u8()), Some(p));
        }
        assert_eq!(Priority::from_u8(5), None);
        assert_eq!(Priority::from_u8(255), None);
        assert_eq!(Priority::Critical.lane(), Lane::Realtime);
        assert_eq!(Priority::High.lane(), Lane::Realtime);
        assert_eq!(Priority::Medium.lane(), Lane::Transactional);
        assert_eq!(Priority::Low.lane(), Lane::Batch);
        assert_eq!(Priority::Batch.lane(), Lane::Batch);
        for (i, lane) in Lane::ALL.iter().enumerate() {
            assert_eq!(lane.index(), i);
        }
    }

    #[test]
    fn value_is_present_only_with_the_flag() {
        let h = EventHeader::new(1, 2, Priority::Low, 3);
        assert_eq!(h.value(), None);
        assert_eq!(h.with_value(0).value(), Some(0));
        assert_eq!(h.with_value(i64::MIN).value(), Some(i64::MIN));
    }

    #[test]
    fn payload_fits_up_to_capacity_and_no_further() {
        let h = EventHeader::new(1, 2, Priority::Low, 3);
        let mut e: Event<4> = Event::new(h, Origin::new(5, 6), b"abcd").unwrap();
        assert_eq!(e.payload(), Payload::Inline(b"abcd"));
        assert_eq!(e.arena_ref(), None);
        assert_eq!(
            e.fill(h, Origin::default(), b"abcde"),
            Err(PayloadTooLarge {
                len: 5,
                capacity: 4
            })
        );
        // Unchanged on error.
        assert_eq!(e.inline_payload(), Some(&b"abcd"[..]));
        assert_eq!(e.origin, Origin::new(5, 6));
        e.fill(h, Origin::default(), b"").unwrap();
        assert_eq!(e.payload(), Payload::Inline(b""));
        let r = ArenaRef {
            len: 9,
            ..ArenaRef::NONE
        };
        e.fill_arena(h, Origin::default(), r);
        assert_eq!((e.payload(), e.payload_len()), (Payload::Arena(r), 9));
        assert_eq!(e.inline_payload(), None);
        let zero: Event<0> = Event::new(h, Origin::default(), b"").unwrap();
        assert_eq!(zero.payload_len(), 0);
    }
}
