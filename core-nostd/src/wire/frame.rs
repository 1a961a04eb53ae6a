//! Zero-copy views: [`Frame`] over one validated frame, [`EventView`] over one event record,
//! and [`frames`] over the frames packed in one buffer.

use core::fmt;
use core::iter::FusedIterator;

use super::consumer::{self, CONSUMER_VERSION};
use super::field::{self, ack, batch, event, hello, reject};
use super::{
    ACK_BODY_LEN, ACK_BODY_LEN_V2, BATCH_PREFIX_LEN, DecodeError, EVENT_RECORD_LEN, FrameKind,
    HEADER_LEN, HELLO_BODY_LEN, HELLO_BODY_LEN_V2, HELLO_TOKEN_MAX, MAX_VERSION, MIN_FRAME_LEN,
    REJECT_BODY_LEN, TRAILER_LEN, VERSION, WHOLE_FRAME, crc32c, frame_len, frame_seq, get_u16,
    get_u32, get_u64,
};
use crate::event::{EventHeader, FLAG_HAS_VALUE, KNOWN_FLAGS, Priority};
use crate::reason::Reason;

/// A view of one complete, valid frame in a borrowed buffer.
///
/// Only [`new_checked`](Self::new_checked) makes one, after checking every byte; the
/// accessors then cannot fail and never copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Exactly one frame: `bytes.len()` equals its length field, and it passed every check.
    bytes: &'a [u8],
    /// The header's kind byte, decoded.
    kind: FrameKind,
}

impl<'a> Frame<'a> {
    /// Validates `buf`, which must hold exactly one frame (its length field equals
    /// `buf.len()`), of at most `max_frame_len` bytes.
    ///
    /// Checks, in this order, reporting the first failure: the length field is readable
    /// ([`TooShort`](DecodeError::TooShort)), at least 20 ([`BadLength`](DecodeError::BadLength)),
    /// at most `max_frame_len` ([`TooLong`](DecodeError::TooLong)) and equal to `buf.len()`
    /// (`TooShort` / `BadLength`); the CRC ([`BadCrc`](DecodeError::BadCrc)); the version, the
    /// kind and the header flags; then the body of that kind (`docs/PROTOCOL.md`,
    /// "Validation", lists every check).
    ///
    /// # Errors
    /// The first check that fails, as a [`DecodeError`].
    ///
    /// ```
    /// use pinstream_core::wire::{DecodeError, Frame, encode_ack, Ack};
    ///
    /// let mut buf = [0u8; 64];
    /// let ack = Ack { through_seq: 9, stored: 10, dead_lettered: 1, rejected: 0, duplicates: 0 };
    /// let n = encode_ack(&mut buf, 3, &ack).unwrap();
    /// assert_eq!(Frame::new_checked(&buf[..n], 1024).unwrap().ack(), Some(ack));
    /// buf[20] ^= 1; // one bit flipped
    /// assert_eq!(Frame::new_checked(&buf[..n], 1024), Err(DecodeError::BadCrc));
    /// ```
    pub fn new_checked(buf: &'a [u8], max_frame_len: usize) -> Result<Self, DecodeError> {
        let len = frame_len(buf).ok_or(DecodeError::TooShort)?;
        if len < MIN_FRAME_LEN {
            return Err(DecodeError::BadLength);
        }
        if len > max_frame_len {
            return Err(DecodeError::TooLong);
        }
        if buf.len() < len {
            return Err(DecodeError::TooShort);
        }
        if buf.len() > len {
            return Err(DecodeError::BadLength);
        }
        // `len >= MIN_FRAME_LEN > TRAILER_LEN`, and `buf.len() == len`.
        let (before, trailer) = buf
            .split_at_checked(len - TRAILER_LEN)
            .ok_or(DecodeError::TooShort)?;
        // A DATA frame's trailer covers its header and prefix only (its records carry their
        // own CRCs); every other frame's covers all that precedes it.
        let covered = before
            .get(..consumer::crc_covered_len(buf, len))
            .ok_or(DecodeError::TooShort)?;
        if crc32c(covered) != get_u32(trailer, 0..TRAILER_LEN) {
            return Err(DecodeError::BadCrc);
        }
        let (header, body) = before
            .split_first_chunk::<HEADER_LEN>()
            .ok_or(DecodeError::TooShort)?;
        let version = header[field::header::VERSION];
        if version == 0 || version > CONSUMER_VERSION {
            return Err(DecodeError::UnsupportedVersion);
        }
        let kind =
            FrameKind::from_u8(header[field::header::KIND]).ok_or(DecodeError::UnknownKind)?;
        if get_u16(header, field::header::FLAGS) != 0 {
            return Err(DecodeError::ReservedNonZero);
        }
        if kind.is_consumer() {
            consumer::check_body(kind, version, body)?;
            return Ok(Self { bytes: buf, kind });
        }
        // The producer kinds keep versions 1 and 2.
        if version > MAX_VERSION {
            return Err(DecodeError::UnsupportedVersion);
        }
        match kind {
            FrameKind::Event => check_event_body(body)?,
            FrameKind::Batch => check_batch_body(body)?,
            FrameKind::Ack => {
                let want = if version >= 2 {
                    ACK_BODY_LEN_V2
                } else {
                    ACK_BODY_LEN
                };
                if body.len() != want {
                    return Err(DecodeError::BadBodyLength);
                }
            }
            FrameKind::Reject => {
                if body.len() != REJECT_BODY_LEN {
                    return Err(DecodeError::BadBodyLength);
                }
                if get_u32(body, reject::RESERVED) != 0 {
                    return Err(DecodeError::ReservedNonZero);
                }
            }
            // HELLO frames carry header version 1 whatever versions they offer, so any
            // receiver can read the range: another header version is not a HELLO to trust.
            FrameKind::Hello if version != VERSION => {
                return Err(DecodeError::UnsupportedVersion);
            }
            FrameKind::Hello => check_hello_body(body)?,
            // Handled above.
            _ => return Err(DecodeError::UnexpectedKind),
        }
        Ok(Self { bytes: buf, kind })
    }

    /// The whole frame, header to trailer.
    #[inline]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The protocol version of the header (1 to [`MAX_VERSION`] for a valid frame).
    #[inline]
    pub fn version(&self) -> u8 {
        self.bytes
            .get(field::header::VERSION)
            .copied()
            .unwrap_or(VERSION)
    }

    /// The frame's kind.
    #[inline]
    pub fn kind(&self) -> FrameKind {
        self.kind
    }

    /// The sender's sequence number of this frame.
    #[inline]
    pub fn seq(&self) -> u64 {
        get_u64(self.bytes, field::header::SEQ)
    }

    /// The body: the bytes between header and trailer.
    #[inline]
    pub fn body(&self) -> &'a [u8] {
        let end = self.bytes.len().saturating_sub(TRAILER_LEN);
        self.bytes.get(HEADER_LEN..end).unwrap_or(&[])
    }

    /// The CRC32C trailer.
    #[inline]
    pub fn crc(&self) -> u32 {
        let at = self.bytes.len().saturating_sub(TRAILER_LEN);
        get_u32(self.bytes, at..self.bytes.len())
    }

    /// Events in the frame: 1 for EVENT, the count for BATCH, 0 for other kinds.
    #[inline]
    pub fn event_count(&self) -> u32 {
        match self.kind {
            FrameKind::Event => 1,
            FrameKind::Batch => get_u32(self.body(), batch::COUNT),
            _ => 0,
        }
    }

    /// The events of this frame after the first `returned`, given the
    /// [`rest_len`](Events::rest_len) an iterator over it had after returning them: resumes
    /// where that iterator stopped without walking the records again. Arguments that no
    /// iterator of this frame could have had give no events.
    #[inline]
    pub fn events_from(&self, returned: u32, rest_len: usize) -> Events<'a> {
        let mut events = self.events();
        match events.rest.len().checked_sub(rest_len) {
            Some(skip) if returned <= events.remaining => {
                events.rest = &events.rest[skip..];
                events.remaining -= returned;
            }
            _ => {
                events.rest = &[];
                events.remaining = 0;
            }
        }
        events
    }

    /// The events of an EVENT or BATCH frame, in order (none for other kinds).
    #[inline]
    pub fn events(&self) -> Events<'a> {
        let body = self.body();
        match self.kind {
            FrameKind::Event => Events {
                rest: body,
                remaining: 1,
            },
            FrameKind::Batch => Events {
                rest: body.get(BATCH_PREFIX_LEN..).unwrap_or(&[]),
                remaining: get_u32(body, batch::COUNT),
            },
            _ => Events {
                rest: &[],
                remaining: 0,
            },
        }
    }

    /// The contents of an ACK frame.
    pub fn ack(&self) -> Option<Ack> {
        let b = self.body();
        (self.kind == FrameKind::Ack).then(|| Ack {
            through_seq: get_u64(b, ack::THROUGH_SEQ),
            stored: get_u64(b, ack::STORED),
            dead_lettered: get_u64(b, ack::DEAD_LETTERED),
            rejected: get_u64(b, ack::REJECTED),
            // Version 1 has no such field (the read gives 0): its `stored` counts duplicates.
            duplicates: get_u64(b, ack::DUPLICATES),
        })
    }

    /// The contents of a REJECT frame.
    pub fn reject(&self) -> Option<Reject> {
        let b = self.body();
        (self.kind == FrameKind::Reject).then(|| Reject {
            frame_seq: get_u64(b, reject::FRAME_SEQ),
            reason: get_u16(b, reject::REASON),
            index: get_u16(b, reject::INDEX),
            event_id: get_u64(b, reject::EVENT_ID),
        })
    }

    /// The contents of a HELLO frame.
    pub fn hello(&self) -> Option<Hello> {
        let b = self.body();
        (self.kind == FrameKind::Hello).then(|| Hello {
            min_version: b.get(hello::MIN_VERSION).copied().unwrap_or(0),
            max_version: b.get(hello::MAX_VERSION).copied().unwrap_or(0),
            max_frame_len: get_u32(b, hello::MAX_FRAME_LEN),
            source: get_u32(b, hello::SOURCE),
            // A version-1 body ends before these: the reads give 0.
            producer_id: get_u64(b, hello::PRODUCER_ID),
            last_seq: get_u64(b, hello::LAST_SEQ),
            max_payload: get_u32(b, hello::MAX_PAYLOAD),
            dedup_window_ms: get_u32(b, hello::DEDUP_WINDOW_MS),
        })
    }

    /// The authentication token a client's HELLO carries after its long body (`None`: a
    /// HELLO without one, or not a HELLO). Validated by [`new_checked`](Self::new_checked):
    /// 1 to [`HELLO_TOKEN_MAX`] bytes.
    ///
    /// ```
    /// use pinstream_core::wire::{Frame, Hello, encode_hello, encode_hello_token};
    ///
    /// let mut buf = [0u8; 128];
    /// let n = encode_hello_token(&mut buf, 0, &Hello::producer(65_536, 0), b"s3cret")?;
    /// assert_eq!(n, 60 + 2 + 6);
    /// let frame = Frame::new_checked(&buf[..n], 65_536)?;
    /// assert_eq!(frame.hello_token(), Some(&b"s3cret"[..]));
    /// assert_eq!(frame.hello().unwrap().max_version, 2);
    /// let n = encode_hello(&mut buf, 0, &Hello::producer(65_536, 0))?;
    /// assert_eq!(Frame::new_checked(&buf[..n], 65_536)?.hello_token(), None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn hello_token(&self) -> Option<&'a [u8]> {
        if self.kind != FrameKind::Hello {
            return None;
        }
        self.body().get(hello::TOKEN..).filter(|t| !t.is_empty())
    }

    /// The frame itself if its kind is one of `accepted`.
    ///
    /// # Errors
    /// [`DecodeError::UnexpectedKind`] otherwise (e.g. an ACK sent to the server).
    ///
    /// ```
    /// use pinstream_core::wire::{Ack, DecodeError, Frame, FrameKind, encode_ack};
    ///
    /// let mut buf = [0u8; 64];
    /// let n = encode_ack(&mut buf, 1, &Ack::default()).unwrap();
    /// let frame = Frame::new_checked(&buf[..n], 64).unwrap();
    /// let from_client = [FrameKind::Hello, FrameKind::Event, FrameKind::Batch];
    /// assert_eq!(frame.require_kind(&from_client), Err(DecodeError::UnexpectedKind));
    /// ```
    pub fn require_kind(self, accepted: &[FrameKind]) -> Result<Self, DecodeError> {
        if accepted.contains(&self.kind) {
            Ok(self)
        } else {
            Err(DecodeError::UnexpectedKind)
        }
    }
}

/// Checks one event record at the start of `rest` and returns its length (32 + payload).
/// `cut_short` is the error when fewer than 32 bytes remain.
#[inline(always)]
fn check_record(rest: &[u8], cut_short: DecodeError) -> Result<usize, DecodeError> {
    let Some(head) = rest.first_chunk::<EVENT_RECORD_LEN>() else {
        return Err(cut_short);
    };
    if head[event::PRIORITY] > Priority::Batch.as_u8() {
        return Err(DecodeError::BadPriority);
    }
    let flags = head[event::FLAGS];
    if flags & !KNOWN_FLAGS != 0 || get_u16(head, event::RESERVED) != 0 {
        return Err(DecodeError::ReservedNonZero);
    }
    if flags & FLAG_HAS_VALUE == 0 && get_u64(head, event::VALUE) != 0 {
        return Err(DecodeError::ReservedNonZero);
    }
    let total = EVENT_RECORD_LEN + usize::from(get_u16(head, event::PAYLOAD_LEN));
    if rest.len() < total {
        return Err(DecodeError::BadEventLength);
    }
    Ok(total)
}

/// An EVENT body: exactly one record.
fn check_event_body(body: &[u8]) -> Result<(), DecodeError> {
    let len = check_record(body, DecodeError::BadEventLength)?;
    if len != body.len() {
        return Err(DecodeError::BadEventLength);
    }
    Ok(())
}

/// A BATCH body: `count` (≥ 1), reserved 0, then `count` records filling it exactly.
fn check_batch_body(body: &[u8]) -> Result<(), DecodeError> {
    let Some((prefix, mut rest)) = body.split_first_chunk::<BATCH_PREFIX_LEN>() else {
        return Err(DecodeError::BadBodyLength);
    };
    let count = get_u32(prefix, batch::COUNT);
    if count == 0 {
        return Err(DecodeError::BadCount);
    }
    if get_u32(prefix, batch::RESERVED) != 0 {
        return Err(DecodeError::ReservedNonZero);
    }
    // Each record takes at least 32 bytes: a larger count cannot fit (and this bounds the loop
    // by the body's size, whatever the count says).
    if usize::try_from(count).map_or(true, |c| c > rest.len() / EVENT_RECORD_LEN) {
        return Err(DecodeError::BadCount);
    }
    for _ in 0..count {
        let len = check_record(rest, DecodeError::BadCount)?;
        rest = rest.get(len..).unwrap_or(&[]);
    }
    if !rest.is_empty() {
        return Err(DecodeError::BadCount);
    }
    Ok(())
}

/// A HELLO body: 16 bytes, or 40 (the long form), or 40 followed by a token (`token_len`,
/// 1 to [`HELLO_TOKEN_MAX`], then as many bytes); a non-empty version range, a usable frame
/// length, reserved 0.
fn check_hello_body(body: &[u8]) -> Result<(), DecodeError> {
    let long = match body.len() {
        HELLO_BODY_LEN => false,
        HELLO_BODY_LEN_V2 => true,
        n if n > hello::TOKEN => {
            // The token extension: its length field must say exactly what follows.
            let token_len = usize::from(get_u16(body, hello::TOKEN_LEN));
            if token_len == 0 || token_len > HELLO_TOKEN_MAX || n - hello::TOKEN != token_len {
                return Err(DecodeError::BadBodyLength);
            }
            true
        }
        _ => return Err(DecodeError::BadBodyLength),
    };
    if get_u16(body, hello::RESERVED_0) != 0 || get_u32(body, hello::RESERVED_1) != 0 {
        return Err(DecodeError::ReservedNonZero);
    }
    let (min, max) = (
        body.get(hello::MIN_VERSION).copied().unwrap_or(0),
        body.get(hello::MAX_VERSION).copied().unwrap_or(0),
    );
    if min == 0 || min > max {
        return Err(DecodeError::BadVersionRange);
    }
    if (get_u32(body, hello::MAX_FRAME_LEN) as usize) < MIN_FRAME_LEN {
        return Err(DecodeError::BadHelloFrameLen);
    }
    // The long form belongs to senders that speak version 2 or later, the short one to the
    // others: each side can tell from the length what the other will read.
    if long != (max >= 2) {
        return Err(DecodeError::BadBodyLength);
    }
    Ok(())
}

/// The events of a frame, in order ([`Frame::events`]).
#[derive(Clone, Debug)]
pub struct Events<'a> {
    /// The records not yet returned, back to back (validated by `Frame::new_checked`).
    rest: &'a [u8],
    /// Records left in `rest`.
    remaining: u32,
}

impl Events<'_> {
    /// Bytes of records not yet returned: with the count of records returned, where to
    /// resume ([`Frame::events_from`]).
    #[inline]
    pub fn rest_len(&self) -> usize {
        self.rest.len()
    }
}

impl<'a> Iterator for Events<'a> {
    type Item = EventView<'a>;

    #[inline]
    fn next(&mut self) -> Option<EventView<'a>> {
        if self.remaining == 0 {
            return None;
        }
        let parsed = self
            .rest
            .split_first_chunk::<EVENT_RECORD_LEN>()
            .and_then(|(head, after)| {
                let payload_len = get_u16(head, event::PAYLOAD_LEN);
                let (payload, rest) = after.split_at_checked(usize::from(payload_len))?;
                Some((head, payload, rest))
            });
        match parsed {
            Some((head, payload, rest)) => {
                self.rest = rest;
                self.remaining -= 1;
                Some(EventView { head, payload })
            }
            None => {
                // Unreachable after `new_checked`; end cleanly rather than panic.
                self.remaining = 0;
                None
            }
        }
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        (n, Some(n))
    }
}

impl ExactSizeIterator for Events<'_> {}
impl FusedIterator for Events<'_> {}

/// A view of one event record inside a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventView<'a> {
    /// The record's fixed 32 bytes (validated).
    head: &'a [u8; EVENT_RECORD_LEN],
    /// The payload, `payload_len` bytes.
    payload: &'a [u8],
}

impl<'a> EventView<'a> {
    /// The decoded fixed part.
    #[inline]
    pub fn header(&self) -> EventHeader {
        EventHeader {
            id: self.id(),
            topic: self.topic(),
            priority: self.priority(),
            flags: self.flags(),
            timestamp: self.timestamp(),
            raw_value: get_u64(self.head, event::VALUE) as i64,
        }
    }

    /// The event's id (idempotency key).
    #[inline]
    pub fn id(&self) -> u64 {
        get_u64(self.head, event::ID)
    }

    /// The producer's timestamp.
    #[inline]
    pub fn timestamp(&self) -> u64 {
        get_u64(self.head, event::TIMESTAMP)
    }

    /// The numeric value, when the has-value flag is set.
    #[inline]
    pub fn value(&self) -> Option<i64> {
        (self.flags() & FLAG_HAS_VALUE != 0).then(|| get_u64(self.head, event::VALUE) as i64)
    }

    /// The topic id.
    #[inline]
    pub fn topic(&self) -> u16 {
        get_u16(self.head, event::TOPIC)
    }

    /// The priority.
    #[inline]
    pub fn priority(&self) -> Priority {
        // Validated to be 0..=4; the fallback is never taken.
        Priority::from_u8(self.head[event::PRIORITY]).unwrap_or(Priority::Batch)
    }

    /// The flags byte ([`FLAG_HAS_VALUE`] or 0).
    #[inline]
    pub fn flags(&self) -> u8 {
        self.head[event::FLAGS]
    }

    /// The payload bytes, borrowed from the frame.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Bytes this record takes in its frame: 32 + the payload.
    #[inline]
    pub fn record_len(&self) -> usize {
        EVENT_RECORD_LEN + self.payload.len()
    }
}

/// An ACK body: the receiver's watermark and its cumulative counts for this connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Ack {
    /// Every event in frames with `seq <= through_seq` is resolved (stored durably,
    /// dead-lettered or rejected); the sender may drop its copies of those frames.
    pub through_seq: u64,
    /// Events stored so far on this connection.
    pub stored: u64,
    /// Events dead-lettered so far on this connection.
    pub dead_lettered: u64,
    /// Events (or undecodable frames, one each) rejected so far on this connection.
    pub rejected: u64,
    /// Events not taken again because the server had them already (version 2 and later; a
    /// version-1 ACK counts them in `stored`): a transactional event whose id it stored
    /// within the dedup window, or an event of a frame resent at or below the producer's
    /// last sequence (resolved the first time: stored, dead-lettered or rejected).
    pub duplicates: u64,
}

impl Ack {
    /// The counts as a version-1 ACK reports them: duplicates are in `stored` (they are
    /// stored), `duplicates` is 0.
    pub const fn folded(&self) -> Self {
        Self {
            through_seq: self.through_seq,
            stored: self.stored.saturating_add(self.duplicates),
            dead_lettered: self.dead_lettered,
            rejected: self.rejected,
            duplicates: 0,
        }
    }
}

/// A REJECT body: which frame or event was refused, and why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Reject {
    /// The `seq` of the frame concerned (0 when its header could not be read).
    pub frame_seq: u64,
    /// The raw reason code ([`Reason::code`]); see [`reason`](Self::reason).
    pub reason: u16,
    /// The event's index in its batch, or [`WHOLE_FRAME`].
    pub index: u16,
    /// The event's id, or 0 when the rejection is not about one event.
    pub event_id: u64,
}

impl Reject {
    /// A rejection of a whole frame.
    pub const fn frame(frame_seq: u64, reason: Reason) -> Self {
        Self {
            frame_seq,
            reason: reason.code(),
            index: WHOLE_FRAME,
            event_id: 0,
        }
    }

    /// A rejection of event `index` (0 for an EVENT frame) with id `event_id`.
    pub const fn event(frame_seq: u64, reason: Reason, index: u16, event_id: u64) -> Self {
        Self {
            frame_seq,
            reason: reason.code(),
            index,
            event_id,
        }
    }

    /// The reason, if the code is one this build knows (a newer peer may send others).
    pub const fn reason(&self) -> Option<Reason> {
        Reason::from_code(self.reason)
    }
}

/// A HELLO body: version negotiation.
///
/// ```
/// use pinstream_core::wire::Hello;
///
/// let client = Hello::client(1, 3, 65_536);
/// assert_eq!(client.negotiate(1, 1), Some(1));
/// assert_eq!(Hello::client(2, 3, 65_536).negotiate(1, 1), None); // REJECT(UnsupportedVersion)
/// let reply = Hello::reply(1, 65_536, 17);
/// assert_eq!((reply.min_version, reply.max_version, reply.source), (1, 1, 17));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Hello {
    /// The lowest version the sender speaks (the chosen one in a server's reply).
    pub min_version: u8,
    /// The highest version the sender speaks (the chosen one in a server's reply).
    pub max_version: u8,
    /// The largest frame the sender will send (client) or accept (server).
    pub max_frame_len: u32,
    /// In a server's reply, the server's id for this connection; 0 from a client.
    pub source: u32,
    /// Version 2: the producer this connection sends for. A client names the id it keeps
    /// across reconnects, or 0 to have the server assign one; the server's reply carries the
    /// id. Data frames' `seq` then numbers the producer's frames across its connections.
    pub producer_id: u64,
    /// Version 2, server's reply: the highest `seq` of this producer the server has resolved
    /// (0: none). A frame at or below it is answered as duplicates, not stored again.
    pub last_seq: u64,
    /// Version 2, server's reply: the largest event payload it accepts, in bytes.
    pub max_payload: u32,
    /// Version 2, server's reply: how long the transactional lane remembers event ids
    /// (milliseconds).
    pub dedup_window_ms: u32,
}

impl Hello {
    /// A client's HELLO: its version range and the largest frame it will send.
    pub const fn client(min_version: u8, max_version: u8, max_frame_len: u32) -> Self {
        Self {
            min_version,
            max_version,
            max_frame_len,
            source: 0,
            producer_id: 0,
            last_seq: 0,
            max_payload: 0,
            dedup_window_ms: 0,
        }
    }

    /// A version-2 client's HELLO for producer `producer_id` (0: let the server assign one).
    pub const fn producer(max_frame_len: u32, producer_id: u64) -> Self {
        Self {
            producer_id,
            ..Self::client(1, 2, max_frame_len)
        }
    }

    /// A consumer's HELLO (version 3, `docs/PROTOCOL.md` §12): `max_frame_len` is the
    /// largest frame it receives (at least [`MIN_CONSUMER_FRAME_LEN`](super::MIN_CONSUMER_FRAME_LEN)).
    pub const fn consumer(max_frame_len: u32) -> Self {
        Self::client(CONSUMER_VERSION, CONSUMER_VERSION, max_frame_len)
    }

    /// A server's reply: the chosen version, its own maximum frame length, the source id.
    pub const fn reply(version: u8, max_frame_len: u32, source: u32) -> Self {
        Self {
            source,
            ..Self::client(version, version, max_frame_len)
        }
    }

    /// The highest version in both this HELLO's range and `ours_min..=ours_max`, if any.
    pub const fn negotiate(&self, ours_min: u8, ours_max: u8) -> Option<u8> {
        let lo = if self.min_version > ours_min {
            self.min_version
        } else {
            ours_min
        };
        let hi = if self.max_version < ours_max {
            self.max_version
        } else {
            ours_max
        };
        if lo == 0 || lo > hi { None } else { Some(hi) }
    }
}

/// A decode error with the `seq` of the frame it concerns (for the REJECT frame that answers
/// it). Given by [`StreamDecoder::feed_detailed`] and [`Frames::next_detailed`].
///
/// `seq` is `Some` when the frame could be cut out by its length field and then failed a
/// later check; `None` when the length field itself was the problem (`TooShort`,
/// `BadLength`, `TooLong`): then the bytes after it are not trusted.
///
/// [`StreamDecoder::feed_detailed`]: super::StreamDecoder::feed_detailed
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FrameError {
    /// What was wrong.
    pub error: DecodeError,
    /// The header's `seq` field, when the frame was cut out by a sane length (it may be
    /// corrupt too: a CRC failure does not say where).
    pub seq: Option<u64>,
}

impl FrameError {
    /// The registry code of the error.
    pub const fn reason(&self) -> Reason {
        self.error.reason()
    }

    /// The REJECT that answers this error: the whole frame, its seq or 0.
    pub const fn to_reject(&self) -> Reject {
        let seq = match self.seq {
            Some(s) => s,
            None => 0,
        };
        Reject::frame(seq, self.error.reason())
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "frame seq {seq}: {}", self.error),
            None => fmt::Display::fmt(&self.error, f),
        }
    }
}

impl core::error::Error for FrameError {}

/// The frames packed back to back in `buf` (a datagram), each validated with
/// [`Frame::new_checked`]. Stateless: meant for UDP, where each datagram holds whole frames.
///
/// A frame that fails validation is yielded as an error and iteration goes on after it. A
/// length field below 20 or above `max_frame_len` (framing lost) or a truncated tail yields
/// one error and ends the iteration.
///
/// ```
/// use pinstream_core::event::{EventHeader, Priority};
/// use pinstream_core::wire::{self, DecodeError, encode_event};
///
/// let mut datagram = [0u8; 256];
/// let h = EventHeader::new(1, 0, Priority::Medium, 5);
/// let a = encode_event(&mut datagram, 1, &h, b"x").unwrap();
/// let b = encode_event(&mut datagram[a..], 2, &h, b"y").unwrap();
/// let seqs: Vec<_> = wire::frames(&datagram[..a + b + 3], 1024)
///     .map(|r| r.map(|f| f.seq()))
///     .collect();
/// assert_eq!(seqs, [Ok(1), Ok(2), Err(DecodeError::TooShort)]);
/// ```
pub fn frames(buf: &[u8], max_frame_len: usize) -> Frames<'_> {
    Frames {
        rest: buf,
        max_frame_len,
    }
}

/// The iterator of [`frames`].
#[derive(Clone, Debug)]
pub struct Frames<'a> {
    /// Bytes not yet looked at; emptied when iteration ends.
    rest: &'a [u8],
    /// Frames above this are `TooLong` (and end the iteration).
    max_frame_len: usize,
}

impl<'a> Frames<'a> {
    /// The next frame or error, with the `seq` of a frame that failed validation.
    pub fn next_detailed(&mut self) -> Option<Result<Frame<'a>, FrameError>> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = core::mem::take(&mut self.rest);
        let fail = |error| Some(Err(FrameError { error, seq: None }));
        let Some(len) = frame_len(rest) else {
            return fail(DecodeError::TooShort);
        };
        if len < MIN_FRAME_LEN {
            return fail(DecodeError::BadLength);
        }
        if len > self.max_frame_len {
            return fail(DecodeError::TooLong);
        }
        let Some((this, after)) = rest.split_at_checked(len) else {
            return fail(DecodeError::TooShort);
        };
        self.rest = after;
        Some(
            Frame::new_checked(this, self.max_frame_len).map_err(|error| FrameError {
                error,
                seq: frame_seq(this),
            }),
        )
    }

    /// The bytes not yet looked at (empty once iteration has ended).
    pub fn remainder(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, DecodeError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        self.next_detailed().map(|r| r.map_err(|e| e.error))
    }
}

impl FusedIterator for Frames<'_> {}
