//! Record bodies of the engine's logs: encoders into a caller's buffer (no allocation) and
//! borrowing decoders, so the log tool and tests can print what is stored.
//!
//! All integers little-endian. An [`EventHeader`] is stored as `id u64 | topic u16 |
//! priority u8 | flags u8 | timestamp u64 | raw_value i64` (28 bytes), an [`Origin`] as
//! `source u32 | seq u64` (12 bytes).
//!
//! | kind | body |
//! | --- | --- |
//! | [`KIND_EVENT`] | `lane u8 | header | origin | received u64 | payload…` (49 bytes + payload) |
//! | [`KIND_DEAD_LETTER`] | `reason u16 | header | origin | tick u64 | events u32` (54 bytes) |
//! | [`KIND_AGGREGATE`] | `topic u16 | start u64 | end u64 | count u64 | bytes u64 | values u64 | min i64 | max i64 | sum i128` (74 bytes) |
//! | [`KIND_PRODUCER_EVENT`] | as [`KIND_EVENT`], the origin followed by `index u32 | producer u64 | epoch u32 | behind u32` (69 bytes + payload) |
//! | [`KIND_PRODUCER_DEAD_LETTER`] | as [`KIND_DEAD_LETTER`], the origin followed by `index u32 | producer u64 | epoch u32 | behind u32` (74 bytes) |
//!
//! The last two are written for events of a producer session (protocol version 2; an
//! [`Origin`] whose `producer` is not 0): the event's index in its frame, the producer's id,
//! the session's epoch and how far behind its frame seq the producer's resolved seq was when
//! the engine took the frame in. From them a restarted engine rebuilds its producer table (which frames of each
//! producer are complete, which events of the others it holds), so a producer's resends
//! after a crash are answered as duplicates. Other events keep the shorter kinds (their
//! decoded origin has index, producer and resolved 0).
//!
//! An event's `received` is when the engine took it in, in nanoseconds since the Unix epoch
//! (the engine's start time plus its tick), so a restarted engine can tell a record's age:
//! it refills the transactional lane's dedup window from the records of the last
//! `pipeline.dedup_window_ms`. Logs written before this rule hold the engine's tick there
//! (nanoseconds since that engine started), which reads as decades old.
//!
//! The reason code is stored as the full `u16` of [`Reason::code`] (every code fits a byte
//! today; the registry's type is `u16`, so the format does not narrow it).
//!
//! ```
//! use pinstream_core::event::{EventHeader, Lane, Origin, Priority};
//! use pinstream_core::process::StoredEvent;
//! use pinstream_core::record::{self, RecordBody};
//!
//! let header = EventHeader::new(7, 2, Priority::High, 100).with_value(-3);
//! let ev = StoredEvent { lane: Lane::Realtime, header: &header, origin: Origin::new(1, 9),
//!                        received: 55, payload: b"hot" };
//! let mut buf = [0u8; 64];
//! let n = record::encode_event(&mut buf, &ev).unwrap();
//! match record::decode(record::KIND_EVENT, &buf[..n]).unwrap() {
//!     RecordBody::Event(e) => {
//!         assert_eq!((e.header, e.payload, e.received), (header, &b"hot"[..], 55));
//!     }
//!     other => panic!("{other:?}"),
//! }
//! ```

use core::fmt;

use crate::event::{EventHeader, KNOWN_FLAGS, Lane, Origin, Priority};
use crate::lanes::DeadLetter;
use crate::process::{Aggregate, StoredEvent};
use crate::reason::Reason;

/// Kind of a stored event.
pub const KIND_EVENT: u8 = 1;
/// Kind of a dead letter.
pub const KIND_DEAD_LETTER: u8 = 2;
/// Kind of a batch-lane aggregate.
pub const KIND_AGGREGATE: u8 = 3;
/// Kind of a stored event of a producer session.
pub const KIND_PRODUCER_EVENT: u8 = 4;
/// Kind of a dead letter of a producer session.
pub const KIND_PRODUCER_DEAD_LETTER: u8 = 5;

const HEADER_LEN: usize = 28;
const ORIGIN_LEN: usize = 12;
/// Bytes of an event body before its payload.
pub const EVENT_FIXED_LEN: usize = 1 + HEADER_LEN + ORIGIN_LEN + 8;
/// Bytes of a dead-letter body.
pub const DEAD_LETTER_LEN: usize = 2 + HEADER_LEN + ORIGIN_LEN + 8 + 4;
/// Bytes of an aggregate body.
pub const AGGREGATE_LEN: usize = 2 + 5 * 8 + 2 * 8 + 16;
/// Bytes a producer session's origin adds: `index u32 | producer u64 | epoch u32 | behind u32`.
pub const PRODUCER_LEN: usize = 4 + 8 + 8;
/// Bytes of a producer session's event body before its payload.
pub const PRODUCER_EVENT_FIXED_LEN: usize = EVENT_FIXED_LEN + PRODUCER_LEN;
/// Bytes of a producer session's dead-letter body.
pub const PRODUCER_DEAD_LETTER_LEN: usize = DEAD_LETTER_LEN + PRODUCER_LEN;

/// The body length of an event with `payload_len` payload bytes and no producer session.
pub const fn event_len(payload_len: usize) -> usize {
    EVENT_FIXED_LEN + payload_len
}

/// The kind and body length [`encode_event`] writes for `ev`.
pub const fn event_shape(ev: &StoredEvent<'_>) -> (u8, usize) {
    if ev.origin.producer == 0 {
        (KIND_EVENT, EVENT_FIXED_LEN + ev.payload.len())
    } else {
        (
            KIND_PRODUCER_EVENT,
            PRODUCER_EVENT_FIXED_LEN + ev.payload.len(),
        )
    }
}

/// The kind and body length [`encode_dead_letter`] writes for `dl`.
pub const fn dead_letter_shape(dl: &DeadLetter) -> (u8, usize) {
    if dl.origin.producer == 0 {
        (KIND_DEAD_LETTER, DEAD_LETTER_LEN)
    } else {
        (KIND_PRODUCER_DEAD_LETTER, PRODUCER_DEAD_LETTER_LEN)
    }
}

/// Why a body could not be encoded or decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    /// The output buffer is too small.
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// A kind this version does not define.
    UnknownKind(u8),
    /// The body length does not fit the kind.
    WrongLength {
        /// The record kind.
        kind: u8,
        /// The length (or minimum length, for events) the kind needs.
        expected: usize,
        /// The body's length.
        got: usize,
    },
    /// A lane code above 2.
    BadLane(u8),
    /// A priority code above 4.
    BadPriority(u8),
    /// Flag bits this version does not define.
    UnknownFlags(u8),
    /// A reason code the registry does not know.
    UnknownReason(u16),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::BufferTooSmall { need, have } => {
                write!(f, "record body needs {need} bytes, the buffer has {have}")
            }
            RecordError::UnknownKind(k) => {
                write!(f, "unknown record kind {k} (known: 1 to 5)")
            }
            RecordError::WrongLength {
                kind,
                expected,
                got,
            } => write!(
                f,
                "record of kind {kind} has a {got}-byte body, {expected} bytes expected"
            ),
            RecordError::BadLane(l) => write!(f, "lane code {l} is not 0, 1 or 2"),
            RecordError::BadPriority(p) => write!(f, "priority code {p} is above 4"),
            RecordError::UnknownFlags(x) => write!(f, "unknown event flag bits {x:#04x}"),
            RecordError::UnknownReason(c) => write!(f, "unknown reason code {c}"),
        }
    }
}

impl core::error::Error for RecordError {}

/// A decoded event body; the payload borrows the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventRecord<'a> {
    /// The lane it came through.
    pub lane: Lane,
    /// Its header.
    pub header: EventHeader,
    /// Who sent it, in which frame.
    pub origin: Origin,
    /// When the engine took it in: nanoseconds since the Unix epoch (see the module docs).
    pub received: u64,
    /// Its payload.
    pub payload: &'a [u8],
}

/// A decoded body of any kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordBody<'a> {
    /// Kind 1 or 4.
    Event(EventRecord<'a>),
    /// Kind 2 or 5.
    DeadLetter(DeadLetter),
    /// Kind 3.
    Aggregate(Aggregate),
}

struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.out[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }

    fn header(&mut self, h: &EventHeader) {
        self.put(&h.id.to_le_bytes());
        self.put(&h.topic.to_le_bytes());
        self.put(&[h.priority.as_u8(), h.flags]);
        self.put(&h.timestamp.to_le_bytes());
        self.put(&h.raw_value.to_le_bytes());
    }

    /// The origin: the short form, and the producer's fields when it has a producer.
    fn origin(&mut self, o: &Origin) {
        self.put(&o.source.to_le_bytes());
        self.put(&o.seq.to_le_bytes());
        if o.producer != 0 {
            self.put(&o.index.to_le_bytes());
            self.put(&o.producer.to_le_bytes());
            self.put(&o.epoch.to_le_bytes());
            self.put(&o.behind.to_le_bytes());
        }
    }
}

/// A cursor over a body whose length was checked beforehand.
struct Cur<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cur<'a> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.b[self.at..self.at + N]);
        self.at += N;
        a
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.take())
    }
    fn rest(&self) -> &'a [u8] {
        &self.b[self.at..]
    }

    fn header(&mut self) -> Result<EventHeader, RecordError> {
        let id = self.u64();
        let topic = self.u16();
        let p = self.u8();
        let priority = Priority::from_u8(p).ok_or(RecordError::BadPriority(p))?;
        let flags = self.u8();
        if flags & !KNOWN_FLAGS != 0 {
            return Err(RecordError::UnknownFlags(flags));
        }
        let timestamp = self.u64();
        let raw_value = self.i64();
        Ok(EventHeader {
            id,
            topic,
            priority,
            flags,
            timestamp,
            raw_value,
        })
    }

    /// The origin, in its long form (a producer kind) when `long`.
    fn origin(&mut self, long: bool) -> Origin {
        let source = self.u32();
        let origin = Origin::new(source, self.u64());
        if !long {
            return origin;
        }
        let index = self.u32();
        let producer = self.u64();
        let epoch = self.u32();
        let behind = self.u32();
        Origin {
            index,
            producer,
            epoch,
            behind,
            ..origin
        }
    }
}

fn writer(out: &mut [u8], need: usize) -> Result<Writer<'_>, RecordError> {
    if out.len() < need {
        return Err(RecordError::BufferTooSmall {
            need,
            have: out.len(),
        });
    }
    Ok(Writer { out, at: 0 })
}

/// Encodes an event body into `out`, of the kind [`event_shape`] says; returns its length.
///
/// # Errors
/// [`RecordError::BufferTooSmall`].
pub fn encode_event(out: &mut [u8], ev: &StoredEvent<'_>) -> Result<usize, RecordError> {
    let mut w = writer(out, event_shape(ev).1)?;
    w.put(&[ev.lane as u8]);
    w.header(ev.header);
    w.origin(&ev.origin);
    w.put(&ev.received.to_le_bytes());
    w.put(ev.payload);
    Ok(w.at)
}

/// Encodes a dead-letter body into `out`, of the kind [`dead_letter_shape`] says; returns
/// its length.
///
/// # Errors
/// [`RecordError::BufferTooSmall`].
pub fn encode_dead_letter(out: &mut [u8], dl: &DeadLetter) -> Result<usize, RecordError> {
    let mut w = writer(out, dead_letter_shape(dl).1)?;
    w.put(&dl.reason.code().to_le_bytes());
    w.header(&dl.header);
    w.origin(&dl.origin);
    w.put(&dl.tick.to_le_bytes());
    w.put(&dl.events.to_le_bytes());
    Ok(w.at)
}

/// Encodes an aggregate body into `out`; returns [`AGGREGATE_LEN`].
///
/// # Errors
/// [`RecordError::BufferTooSmall`].
pub fn encode_aggregate(out: &mut [u8], a: &Aggregate) -> Result<usize, RecordError> {
    let mut w = writer(out, AGGREGATE_LEN)?;
    w.put(&a.topic.to_le_bytes());
    for v in [a.start, a.end, a.count, a.bytes, a.values] {
        w.put(&v.to_le_bytes());
    }
    w.put(&a.min.to_le_bytes());
    w.put(&a.max.to_le_bytes());
    w.put(&a.sum.to_le_bytes());
    Ok(w.at)
}

fn check_len(kind: u8, body: &[u8], expected: usize, exact: bool) -> Result<(), RecordError> {
    let ok = if exact {
        body.len() == expected
    } else {
        body.len() >= expected
    };
    if ok {
        Ok(())
    } else {
        Err(RecordError::WrongLength {
            kind,
            expected,
            got: body.len(),
        })
    }
}

/// Decodes an event body of kind [`KIND_EVENT`].
///
/// # Errors
/// [`RecordError::WrongLength`] below [`EVENT_FIXED_LEN`]; bad lane, priority or flags.
pub fn decode_event(body: &[u8]) -> Result<EventRecord<'_>, RecordError> {
    decode_event_kind(KIND_EVENT, body)
}

fn decode_event_kind(kind: u8, body: &[u8]) -> Result<EventRecord<'_>, RecordError> {
    let long = kind == KIND_PRODUCER_EVENT;
    let fixed = if long {
        PRODUCER_EVENT_FIXED_LEN
    } else {
        EVENT_FIXED_LEN
    };
    check_len(kind, body, fixed, false)?;
    let mut c = Cur { b: body, at: 0 };
    let l = c.u8();
    let lane = *Lane::ALL
        .get(usize::from(l))
        .ok_or(RecordError::BadLane(l))?;
    let header = c.header()?;
    let origin = c.origin(long);
    let received = c.u64();
    Ok(EventRecord {
        lane,
        header,
        origin,
        received,
        payload: c.rest(),
    })
}

/// Decodes a dead-letter body of kind [`KIND_DEAD_LETTER`].
///
/// # Errors
/// [`RecordError::WrongLength`] unless exactly [`DEAD_LETTER_LEN`] bytes; an unknown reason
/// code; bad priority or flags.
pub fn decode_dead_letter(body: &[u8]) -> Result<DeadLetter, RecordError> {
    decode_dead_letter_kind(KIND_DEAD_LETTER, body)
}

fn decode_dead_letter_kind(kind: u8, body: &[u8]) -> Result<DeadLetter, RecordError> {
    let long = kind == KIND_PRODUCER_DEAD_LETTER;
    let len = if long {
        PRODUCER_DEAD_LETTER_LEN
    } else {
        DEAD_LETTER_LEN
    };
    check_len(kind, body, len, true)?;
    let mut c = Cur { b: body, at: 0 };
    let code = c.u16();
    let reason = Reason::from_code(code).ok_or(RecordError::UnknownReason(code))?;
    let header = c.header()?;
    let origin = c.origin(long);
    let tick = c.u64();
    let events = c.u32();
    Ok(DeadLetter {
        header,
        origin,
        reason,
        tick,
        events,
    })
}

/// Decodes an aggregate body.
///
/// # Errors
/// [`RecordError::WrongLength`] unless exactly [`AGGREGATE_LEN`] bytes.
pub fn decode_aggregate(body: &[u8]) -> Result<Aggregate, RecordError> {
    check_len(KIND_AGGREGATE, body, AGGREGATE_LEN, true)?;
    let mut c = Cur { b: body, at: 0 };
    let topic = c.u16();
    let (start, end, count, bytes, values) = (c.u64(), c.u64(), c.u64(), c.u64(), c.u64());
    let (min, max) = (c.i64(), c.i64());
    let sum = i128::from_le_bytes(c.take());
    Ok(Aggregate {
        topic,
        start,
        end,
        count,
        bytes,
        values,
        min,
        max,
        sum,
    })
}

/// Decodes a body of `kind`.
///
/// # Errors
/// [`RecordError::UnknownKind`], or the kind's decoder's error.
pub fn decode(kind: u8, body: &[u8]) -> Result<RecordBody<'_>, RecordError> {
    match kind {
        KIND_EVENT | KIND_PRODUCER_EVENT => decode_event_kind(kind, body).map(RecordBody::Event),
        KIND_DEAD_LETTER | KIND_PRODUCER_DEAD_LETTER => {
            decode_dead_letter_kind(kind, body).map(RecordBody::DeadLetter)
        }
        KIND_AGGREGATE => decode_aggregate(body).map(RecordBody::Aggregate),
        k => Err(RecordError::UnknownKind(k)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> EventHeader {
        EventHeader::new(u64::MAX - 1, 513, Priority::Medium, 123_456).with_value(i64::MIN)
    }

    #[test]
    fn every_kind_round_trips() {
        let h = header();
        let mut buf = [0u8; 256];
        for lane in Lane::ALL {
            let ev = StoredEvent {
                lane,
                header: &h,
                origin: Origin::new(u32::MAX, 77),
                received: 9,
                payload: b"payload",
            };
            let n = encode_event(&mut buf, &ev).unwrap();
            assert_eq!(n, event_len(7));
            let d = decode_event(&buf[..n]).unwrap();
            assert_eq!(
                (d.lane, d.header, d.origin, d.received, d.payload),
                (lane, h, ev.origin, 9, &b"payload"[..])
            );
        }
        for reason in Reason::ALL {
            let dl = DeadLetter {
                header: h,
                origin: Origin::new(3, 4),
                reason,
                tick: 5,
                events: 6,
            };
            let n = encode_dead_letter(&mut buf, &dl).unwrap();
            assert_eq!(n, DEAD_LETTER_LEN);
            assert_eq!(
                decode(KIND_DEAD_LETTER, &buf[..n]),
                Ok(RecordBody::DeadLetter(dl))
            );
        }
        // A producer session's records keep the index, the producer and its resolved seq.
        let origin = Origin::new(3, 40)
            .with_producer(u64::MAX, 7, 38)
            .at(u32::MAX);
        let ev = StoredEvent {
            lane: Lane::Realtime,
            header: &h,
            origin,
            received: 9,
            payload: b"p",
        };
        let (kind, len) = event_shape(&ev);
        assert_eq!(
            (kind, len),
            (KIND_PRODUCER_EVENT, PRODUCER_EVENT_FIXED_LEN + 1)
        );
        assert_eq!(encode_event(&mut buf, &ev), Ok(len));
        match decode(kind, &buf[..len]) {
            Ok(RecordBody::Event(e)) => assert_eq!((e.origin, e.payload), (origin, &b"p"[..])),
            other => panic!("{other:?}"),
        }
        let dl = DeadLetter {
            header: h,
            origin,
            reason: Reason::RateLimited,
            tick: 5,
            events: 1,
        };
        let (kind, len) = dead_letter_shape(&dl);
        assert_eq!(
            (kind, len),
            (KIND_PRODUCER_DEAD_LETTER, PRODUCER_DEAD_LETTER_LEN)
        );
        assert_eq!(encode_dead_letter(&mut buf, &dl), Ok(len));
        assert_eq!(decode(kind, &buf[..len]), Ok(RecordBody::DeadLetter(dl)));
        let a = Aggregate {
            topic: 9,
            start: 1,
            end: 2,
            count: 3,
            bytes: 4,
            values: 5,
            min: -6,
            max: 7,
            sum: i128::MIN + 1,
        };
        let n = encode_aggregate(&mut buf, &a).unwrap();
        assert_eq!(n, AGGREGATE_LEN);
        assert_eq!(
            decode(KIND_AGGREGATE, &buf[..n]),
            Ok(RecordBody::Aggregate(a))
        );
    }

    #[test]
    fn bad_bodies_are_errors_never_panics() {
        let h = header();
        let mut buf = [0u8; 128];
        assert_eq!(
            encode_dead_letter(
                &mut buf[..10],
                &DeadLetter {
                    header: h,
                    origin: Origin::default(),
                    reason: Reason::Shed,
                    tick: 0,
                    events: 1,
                }
            ),
            Err(RecordError::BufferTooSmall {
                need: DEAD_LETTER_LEN,
                have: 10
            })
        );
        assert_eq!(decode(6, &[]), Err(RecordError::UnknownKind(6)));
        // Every length short of (or, for fixed kinds, other than) the right one is an error.
        for kind in [
            KIND_EVENT,
            KIND_DEAD_LETTER,
            KIND_AGGREGATE,
            KIND_PRODUCER_EVENT,
            KIND_PRODUCER_DEAD_LETTER,
        ] {
            for len in 0..buf.len() {
                let r = decode(kind, &buf[..len]);
                let right = match kind {
                    KIND_EVENT => len >= EVENT_FIXED_LEN,
                    KIND_DEAD_LETTER => len == DEAD_LETTER_LEN,
                    KIND_PRODUCER_EVENT => len >= PRODUCER_EVENT_FIXED_LEN,
                    KIND_PRODUCER_DEAD_LETTER => len == PRODUCER_DEAD_LETTER_LEN,
                    _ => len == AGGREGATE_LEN,
                };
                if !right {
                    assert!(
                        matches!(r, Err(RecordError::WrongLength { .. })),
                        "{kind} {len}"
                    );
                }
            }
        }
        // Field checks.
        let dl = DeadLetter {
            header: h,
            origin: Origin::default(),
            reason: Reason::LaneFull,
            tick: 0,
            events: 1,
        };
        let n = encode_dead_letter(&mut buf, &dl).unwrap();
        let mut bad = buf;
        bad[0..2].copy_from_slice(&999u16.to_le_bytes());
        assert_eq!(
            decode_dead_letter(&bad[..n]),
            Err(RecordError::UnknownReason(999))
        );
        let mut bad = buf;
        bad[2 + 10] = 9; // priority
        assert_eq!(
            decode_dead_letter(&bad[..n]),
            Err(RecordError::BadPriority(9))
        );
        let mut bad = buf;
        bad[2 + 11] = 0x80; // flags
        assert_eq!(
            decode_dead_letter(&bad[..n]),
            Err(RecordError::UnknownFlags(0x80))
        );
        let mut ev = [0u8; EVENT_FIXED_LEN];
        ev[0] = 3;
        assert_eq!(decode_event(&ev), Err(RecordError::BadLane(3)));
    }
}
