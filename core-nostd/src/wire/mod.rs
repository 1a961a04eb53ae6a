//! The wire protocol (version 1): frames, their zero-copy views, encoders into the caller's
//! buffer, and a streaming decoder. `docs/PROTOCOL.md` is the specification, with test
//! vectors; this module implements it without allocating and without panicking on any input.
//!
//! A frame is a 16-byte header, a body and a 4-byte CRC32C trailer, all little-endian:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | `len`: total frame bytes, header and trailer included (at least 20) |
//! | 4 | 1 | `version`: 1 |
//! | 5 | 1 | `kind`: [`FrameKind`] |
//! | 6 | 2 | `flags`: reserved, 0 |
//! | 8 | 8 | `seq`: the sender's sequence number of this frame on this connection |
//! | 16 | `len - 20` | body (depends on the kind) |
//! | `len - 4` | 4 | CRC32C of bytes `0..len - 4` ([`crc32c`]) |
//!
//! ## Reading
//! - [`Frame::new_checked`] validates one frame completely (length, CRC, version, kind,
//!   every reserved field, every event record); the accessors after it cannot fail.
//! - [`StreamDecoder`] takes a byte stream (TCP) in pieces of any size and hands out each
//!   frame once complete: frames whole in the input are views into it, only a frame split
//!   across inputs is copied (into the decoder's `CAP`-byte buffer).
//! - [`frames`] iterates over frames packed in one buffer (a UDP datagram), without state.
//! - [`field`] names the bytes of every field, once; [`frame_len`], [`frame_seq`],
//!   [`frame_kind`] and [`frame_event_count`] read a header before its frame is validated
//!   (to frame a stream, to take credit, to name a bad frame in its REJECT).
//!
//! A frame whose length field is sane but whose content is not (bad CRC, bad field) is
//! reported and skipped; a length field out of bounds loses the framing of a stream, which
//! then stays *poisoned* (see [`StreamDecoder`]).
//!
//! ## Writing
//! [`encode_event`], [`BatchEncoder`], [`encode_ack`], [`encode_reject`] and [`encode_hello`]
//! write one frame into a `&mut [u8]` and return its length.
//!
//! ```
//! use pinstream_core::event::{EventHeader, Priority};
//! use pinstream_core::wire::{self, BatchEncoder, Frame, FrameKind, StreamDecoder};
//!
//! let mut buf = [0u8; 256];
//! let mut batch = BatchEncoder::new(&mut buf, 7)?;
//! batch.push(&EventHeader::new(1, 3, Priority::High, 100).with_value(-5), b"hot")?;
//! batch.push(&EventHeader::new(2, 3, Priority::Low, 101), b"")?;
//! let n = batch.finish()?;
//!
//! let frame = Frame::new_checked(&buf[..n], wire::DEFAULT_MAX_FRAME_LEN)?;
//! assert_eq!((frame.kind(), frame.seq(), frame.event_count()), (FrameKind::Batch, 7, 2));
//! let first = frame.events().next().unwrap();
//! assert_eq!((first.id(), first.header().value(), first.payload()), (1, Some(-5), &b"hot"[..]));
//!
//! // The same bytes arriving in two pieces.
//! let mut decoder: StreamDecoder<1024> = StreamDecoder::new();
//! let mut seen = 0;
//! for piece in [&buf[..10], &buf[10..n]] {
//!     decoder.feed(piece, |frame| {
//!         assert_eq!(frame.unwrap().event_count(), 2);
//!         seen += 1;
//!     });
//! }
//! assert_eq!(seen, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Measured on this machine (2-vCPU AMD EPYC Zen 3), release build, while other builds
//! ran (ranges over repeated runs;
//! `cargo test -p pinstream-core --release --lib -- wire::tests::throughput --ignored --nocapture`):
//!
//! | operation, BATCH of 64 events with 64-byte payloads (6 172 bytes) | per frame | per event |
//! | --- | --- | --- |
//! | `Frame::new_checked` + `events()` + `header()` | 0.63–0.81 µs | 9.8–12.6 ns |
//! | `BatchEncoder`: 64 `push` + `finish` | 0.59–1.07 µs | 9.2–16.7 ns |
//!
//! About half of each is the CRC ([`crc32c`]: 16–20 GB/s on 6 KiB with SSE4.2).

mod consumer;
mod crc;
mod decoder;
mod encode;
pub mod field;
mod frame;

#[cfg(all(test, not(loom)))]
mod consumer_tests;
#[cfg(all(test, not(loom)))]
mod proptests;
#[cfg(all(test, not(loom)))]
mod tests;

use core::fmt;

pub use self::consumer::{
    CONSUMER_VERSION, DATA_HEAD_LEN, DATA_OVERHEAD, DATA_PREFIX_LEN, DataPrefix, MAX_CONSUMER_NAME,
    MAX_STORED_RECORD, MIN_CONSUMER_FRAME_LEN, NO_COMMIT, POSITION_BODY_LEN, Records,
    SUBSCRIBE_PREFIX_LEN, SUBSCRIBED_BODY_LEN, Start, StreamLog, Subscribe, Subscribed,
    encode_commit, encode_committed, encode_credit, encode_data, encode_data_head,
    encode_subscribe, encode_subscribed, valid_consumer_name,
};
pub use self::crc::{Crc32c, crc32c, crc32c_update};
pub use self::decoder::StreamDecoder;
pub use self::encode::{
    BatchEncoder, encode_ack, encode_ack_v2, encode_event, encode_hello, encode_hello_token,
    encode_reject,
};
pub use self::field::Field;
pub use self::frame::{Ack, EventView, Events, Frame, FrameError, Frames, Hello, Reject, frames};
use crate::reason::Reason;

/// The protocol version encoders write by default (version 1: what every peer reads).
pub const VERSION: u8 = 1;
/// The highest protocol version of producer connections. Version 2 adds producer sessions to
/// the HELLO ([`Hello::producer_id`]) and a `duplicates` count to the ACK; every other frame's
/// layout is the same in both versions. Version 3 ([`CONSUMER_VERSION`]) is the consumers'
/// (kinds 6–11), spoken on the engine's consumer listener.
pub const MAX_VERSION: u8 = 2;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 16;
/// Bytes in a frame trailer (the CRC32C).
pub const TRAILER_LEN: usize = 4;
/// The smallest possible frame: a header and a trailer around an empty body.
pub const MIN_FRAME_LEN: usize = HEADER_LEN + TRAILER_LEN;
/// The largest frame a receiver accepts unless configured otherwise (64 KiB).
pub const DEFAULT_MAX_FRAME_LEN: usize = 65_536;
/// Bytes in an event record before its payload.
pub const EVENT_RECORD_LEN: usize = 32;
/// The largest payload an event record can carry (its length is a `u16`).
pub const MAX_PAYLOAD_LEN: usize = u16::MAX as usize;
/// Bytes before the first event record of a BATCH body (`count`, reserved).
pub const BATCH_PREFIX_LEN: usize = 8;
/// Bytes in an ACK body (version 1).
pub const ACK_BODY_LEN: usize = 32;
/// Bytes in an ACK body of version 2 and later (with `duplicates`).
pub const ACK_BODY_LEN_V2: usize = 40;
/// Bytes in a REJECT body.
pub const REJECT_BODY_LEN: usize = 24;
/// Bytes in a HELLO body of a sender that speaks only version 1.
pub const HELLO_BODY_LEN: usize = 16;
/// Bytes in a HELLO body of a sender that speaks version 2 or later (the version-1 part,
/// then the producer session and the server's limits).
pub const HELLO_BODY_LEN_V2: usize = 40;
/// The longest authentication token a HELLO may carry (its optional `token` field, after the
/// long body: `docs/PROTOCOL.md` §5).
pub const HELLO_TOKEN_MAX: usize = 256;
/// [`Reject::index`] when the rejection concerns the whole frame, not one event of a batch.
pub const WHOLE_FRAME: u16 = 0xFFFF;

/// The length of an EVENT frame carrying `payload_len` bytes of payload.
///
/// ```
/// assert_eq!(pinstream_core::wire::event_frame_len(64), 116);
/// ```
#[inline]
pub const fn event_frame_len(payload_len: usize) -> usize {
    HEADER_LEN
        .saturating_add(EVENT_RECORD_LEN)
        .saturating_add(payload_len)
        .saturating_add(TRAILER_LEN)
}

/// The length field of the frame starting at `prefix`, once its first 4 bytes are there
/// (`None` before). Lengths beyond `usize` saturate to `usize::MAX`.
///
/// ```
/// assert_eq!(pinstream_core::wire::frame_len(&[60, 0, 0, 0, 1]), Some(60));
/// assert_eq!(pinstream_core::wire::frame_len(&[60, 0]), None);
/// ```
#[inline]
pub fn frame_len(prefix: &[u8]) -> Option<usize> {
    let len = u32::from_le_bytes(read(prefix, field::header::LEN)?);
    Some(usize::try_from(len).unwrap_or(usize::MAX))
}

/// The `seq` field of the frame starting at `prefix`, once its 16-byte header is there; the
/// frame need not be valid (a REJECT names the frame it is about by this number).
///
/// ```
/// let mut header = [0u8; 16];
/// header[8] = 9;
/// assert_eq!(pinstream_core::wire::frame_seq(&header), Some(9));
/// assert_eq!(pinstream_core::wire::frame_seq(&header[..15]), None);
/// ```
#[inline]
pub fn frame_seq(prefix: &[u8]) -> Option<u64> {
    let header = prefix.first_chunk::<HEADER_LEN>()?;
    Some(get_u64(header, field::header::SEQ))
}

/// The `kind` field of the frame starting at `prefix`, once it is there and if it is a
/// defined kind; the frame need not be valid.
///
/// ```
/// use pinstream_core::wire::{FrameKind, frame_kind};
///
/// assert_eq!(frame_kind(&[36, 0, 0, 0, 1, 1]), Some(FrameKind::Hello));
/// assert_eq!(frame_kind(&[36, 0, 0, 0, 1, 12]), None); // not a kind
/// assert_eq!(frame_kind(&[36, 0, 0, 0, 1]), None); // not there yet
/// ```
#[inline]
pub fn frame_kind(prefix: &[u8]) -> Option<FrameKind> {
    FrameKind::from_u8(*prefix.get(field::header::KIND)?)
}

/// The number of events the frame starting at `prefix` claims to carry, before it is
/// validated (a receiver's credit check): 1 for an EVENT, the `count` field of a BATCH (which
/// may be 0 or a lie; [`Frame::new_checked`] checks it), 0 for the other kinds. `None` when
/// the kind is not a defined one or the bytes it needs are not there yet.
///
/// ```
/// use pinstream_core::event::{EventHeader, Priority};
/// use pinstream_core::wire::{BatchEncoder, encode_ack, frame_event_count, Ack};
///
/// let mut buf = [0u8; 128];
/// let mut batch = BatchEncoder::new(&mut buf, 1)?;
/// batch.push(&EventHeader::new(1, 0, Priority::Low, 0), b"")?;
/// batch.push(&EventHeader::new(2, 0, Priority::Low, 0), b"")?;
/// let n = batch.finish()?;
/// assert_eq!(frame_event_count(&buf[..n]), Some(2));
/// assert_eq!(frame_event_count(&buf[..19]), None); // the count is not there yet
/// let n = encode_ack(&mut buf, 1, &Ack::default())?;
/// assert_eq!(frame_event_count(&buf[..n]), Some(0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[inline]
pub fn frame_event_count(prefix: &[u8]) -> Option<u32> {
    match frame_kind(prefix)? {
        FrameKind::Event => Some(1),
        FrameKind::Batch => {
            let body = prefix.get(HEADER_LEN..)?;
            Some(u32::from_le_bytes(read(body, field::batch::COUNT)?))
        }
        _ => Some(0),
    }
}

/// The kind of a frame (the header's [`kind`](field::header::KIND) byte).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
// Protocol versions add kinds (version 3 added six): a match elsewhere needs a `_` arm.
#[non_exhaustive]
pub enum FrameKind {
    /// Version negotiation, the first frame each way.
    Hello = 1,
    /// One event.
    Event = 2,
    /// One or more events.
    Batch = 3,
    /// The receiver's watermark and counts, back to the sender.
    Ack = 4,
    /// A frame or an event was refused, with a reason.
    Reject = 5,
    /// Version 3, consumer → server: read a log.
    Subscribe = 6,
    /// Version 3, server → consumer: the subscription's start.
    Subscribed = 7,
    /// Version 3, server → consumer: stored records.
    Data = 8,
    /// Version 3, consumer → server: more credit, in bytes.
    Credit = 9,
    /// Version 3, consumer → server: a named consumer's position.
    Commit = 10,
    /// Version 3, server → consumer: the position is stored durably.
    Committed = 11,
}

impl FrameKind {
    /// Every kind, in code order.
    pub const ALL: [FrameKind; 11] = [
        FrameKind::Hello,
        FrameKind::Event,
        FrameKind::Batch,
        FrameKind::Ack,
        FrameKind::Reject,
        FrameKind::Subscribe,
        FrameKind::Subscribed,
        FrameKind::Data,
        FrameKind::Credit,
        FrameKind::Commit,
        FrameKind::Committed,
    ];

    /// The kind with wire code `code`, if defined.
    #[inline]
    pub const fn from_u8(code: u8) -> Option<Self> {
        match code {
            1 => Some(FrameKind::Hello),
            2 => Some(FrameKind::Event),
            3 => Some(FrameKind::Batch),
            4 => Some(FrameKind::Ack),
            5 => Some(FrameKind::Reject),
            6 => Some(FrameKind::Subscribe),
            7 => Some(FrameKind::Subscribed),
            8 => Some(FrameKind::Data),
            9 => Some(FrameKind::Credit),
            10 => Some(FrameKind::Commit),
            11 => Some(FrameKind::Committed),
            _ => None,
        }
    }

    /// The wire code.
    #[inline]
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The upper-case name used in `docs/PROTOCOL.md` (`"EVENT"`, …).
    pub const fn name(self) -> &'static str {
        match self {
            FrameKind::Hello => "HELLO",
            FrameKind::Event => "EVENT",
            FrameKind::Batch => "BATCH",
            FrameKind::Ack => "ACK",
            FrameKind::Reject => "REJECT",
            FrameKind::Subscribe => "SUBSCRIBE",
            FrameKind::Subscribed => "SUBSCRIBED",
            FrameKind::Data => "DATA",
            FrameKind::Credit => "CREDIT",
            FrameKind::Commit => "COMMIT",
            FrameKind::Committed => "COMMITTED",
        }
    }

    /// Whether this is a consumer kind of version 3 (SUBSCRIBE to COMMITTED), whose frames
    /// carry header version 3.
    #[inline]
    pub const fn is_consumer(self) -> bool {
        self as u8 >= FrameKind::Subscribe as u8
    }
}

impl fmt::Display for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why bytes are not a valid frame. Each maps to a rejection code of the reason registry
/// through [`reason`](Self::reason).
///
/// [`Frame::new_checked`] runs its checks in the order of `docs/PROTOCOL.md` ("Validation")
/// and reports the first that fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the 4-byte length field, or than the length field says.
    TooShort,
    /// The length field exceeds the receiver's maximum frame length.
    TooLong,
    /// The length field is below 20, or the buffer holds more bytes than it says.
    BadLength,
    /// The CRC32C trailer does not match.
    BadCrc,
    /// The header's version is not 1.
    UnsupportedVersion,
    /// A HELLO's version range is empty (`min_version` 0 or above `max_version`).
    BadVersionRange,
    /// The kind byte is not a defined [`FrameKind`].
    UnknownKind,
    /// A reserved field or flag bit is not zero, or an event without the has-value flag has
    /// a non-zero value.
    ReservedNonZero,
    /// An event's priority is above 4.
    BadPriority,
    /// An ACK, REJECT or HELLO body has the wrong size, or a BATCH body is shorter than its
    /// 8-byte prefix.
    BadBodyLength,
    /// A HELLO's `max_frame_len` is below the minimum frame length (20).
    BadHelloFrameLen,
    /// An event record is cut short or its payload runs past the end of the body; or an EVENT
    /// body is not exactly one record.
    BadEventLength,
    /// A BATCH's `count` is zero, or its records do not fill the body exactly.
    BadCount,
    /// The stream lost framing earlier; its bytes are discarded until the decoder is reset.
    StreamPoisoned,
    /// A valid frame of a kind this side does not accept ([`Frame::require_kind`]).
    UnexpectedKind,
}

impl DecodeError {
    /// Every variant.
    pub const ALL: [DecodeError; 15] = [
        DecodeError::TooShort,
        DecodeError::TooLong,
        DecodeError::BadLength,
        DecodeError::BadCrc,
        DecodeError::UnsupportedVersion,
        DecodeError::BadVersionRange,
        DecodeError::UnknownKind,
        DecodeError::ReservedNonZero,
        DecodeError::BadPriority,
        DecodeError::BadBodyLength,
        DecodeError::BadHelloFrameLen,
        DecodeError::BadEventLength,
        DecodeError::BadCount,
        DecodeError::StreamPoisoned,
        DecodeError::UnexpectedKind,
    ];

    /// The registry code that reports this error (in a REJECT frame, in counters).
    pub const fn reason(self) -> Reason {
        match self {
            DecodeError::TooShort => Reason::TooShort,
            DecodeError::TooLong => Reason::TooLong,
            DecodeError::BadLength | DecodeError::BadHelloFrameLen => Reason::BadLength,
            DecodeError::BadCrc => Reason::BadCrc,
            DecodeError::UnsupportedVersion | DecodeError::BadVersionRange => {
                Reason::UnsupportedVersion
            }
            DecodeError::UnknownKind => Reason::UnknownKind,
            DecodeError::ReservedNonZero => Reason::ReservedNonZero,
            DecodeError::BadPriority => Reason::BadPriority,
            DecodeError::BadBodyLength => Reason::BadBodyLength,
            DecodeError::BadEventLength => Reason::BadEventLength,
            DecodeError::BadCount => Reason::BadCount,
            DecodeError::StreamPoisoned => Reason::StreamPoisoned,
            DecodeError::UnexpectedKind => Reason::UnexpectedKind,
        }
    }

    fn message(self) -> &'static str {
        match self {
            DecodeError::TooShort => "frame shorter than its length field or the minimum",
            DecodeError::TooLong => "frame length above the maximum",
            DecodeError::BadLength => "frame length field below 20 or disagreeing with the bytes",
            DecodeError::BadCrc => "CRC32C mismatch",
            DecodeError::UnsupportedVersion => "unsupported protocol version",
            DecodeError::BadVersionRange => "empty HELLO version range",
            DecodeError::UnknownKind => "unknown frame kind",
            DecodeError::ReservedNonZero => "reserved field or flag not zero",
            DecodeError::BadPriority => "event priority above 4",
            DecodeError::BadBodyLength => "wrong body length for the frame kind",
            DecodeError::BadHelloFrameLen => "HELLO max_frame_len below 20",
            DecodeError::BadEventLength => "event record length disagrees with its body",
            DecodeError::BadCount => "batch count zero or not filling the body",
            DecodeError::StreamPoisoned => "stream framing lost earlier",
            DecodeError::UnexpectedKind => "frame kind not accepted here",
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl core::error::Error for DecodeError {}

/// Why a frame could not be encoded. The destination buffer is left in an unspecified state
/// except where a method says otherwise ([`BatchEncoder::push`] keeps earlier events).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum EncodeError {
    /// The buffer is shorter than the frame.
    BufferTooSmall {
        /// Bytes the frame (or the batch with this event) needs.
        needed: usize,
        /// Bytes the buffer has.
        have: usize,
    },
    /// A payload longer than [`MAX_PAYLOAD_LEN`].
    PayloadTooLarge {
        /// The payload's length.
        len: usize,
    },
    /// [`BatchEncoder::finish`] with no event pushed: a BATCH holds at least one.
    EmptyBatch,
    /// The frame would be longer than its `u32` length field can say.
    FrameTooLong {
        /// The frame's length.
        len: usize,
    },
    /// The event header sets flag bits this version does not define.
    UnknownFlags {
        /// The header's flags.
        flags: u8,
    },
    /// A HELLO whose version range is empty (`min_version` 0 or above `max_version`).
    BadVersionRange,
    /// A HELLO whose `max_frame_len` is below [`MIN_FRAME_LEN`].
    BadHelloFrameLen,
    /// A consumer name longer than [`MAX_CONSUMER_NAME`] bytes.
    NameTooLong {
        /// The name's length.
        len: usize,
    },
    /// A HELLO token that is empty or longer than [`HELLO_TOKEN_MAX`] bytes, or given with a
    /// HELLO whose `max_version` is below 2 (the token follows the long body only).
    BadToken {
        /// The token's length.
        len: usize,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EncodeError::BufferTooSmall { needed, have } => {
                write!(f, "frame needs {needed} bytes, the buffer has {have}")
            }
            EncodeError::PayloadTooLarge { len } => {
                write!(f, "payload of {len} bytes exceeds {MAX_PAYLOAD_LEN}")
            }
            EncodeError::EmptyBatch => f.write_str("a batch needs at least one event"),
            EncodeError::FrameTooLong { len } => {
                write!(f, "frame of {len} bytes exceeds the u32 length field")
            }
            EncodeError::UnknownFlags { flags } => {
                write!(f, "event flags {flags:#04x} set undefined bits")
            }
            EncodeError::BadVersionRange => f.write_str("empty HELLO version range"),
            EncodeError::BadHelloFrameLen => f.write_str("HELLO max_frame_len below 20"),
            EncodeError::BadToken { len } => write!(
                f,
                "a HELLO token of {len} bytes: it must be 1 to {HELLO_TOKEN_MAX} bytes, in a HELLO offering version 2"
            ),
            EncodeError::NameTooLong { len } => {
                write!(
                    f,
                    "consumer name of {len} bytes exceeds {MAX_CONSUMER_NAME}"
                )
            }
        }
    }
}

impl core::error::Error for EncodeError {}

// ---- little-endian field access that cannot panic ----
// Callers check lengths first; a read out of range yields 0 and a write out of range does
// nothing, so a bug shows up as a failed round trip in the tests, never as a panic. The
// fields are constants: after inlining, the range checks fold away.

/// The `N` bytes of field `f` of `b`, if `b` holds them and `f` is `N` bytes long.
#[inline(always)]
pub(crate) fn read<const N: usize>(b: &[u8], f: Field) -> Option<[u8; N]> {
    b.get(f).and_then(|s| <[u8; N]>::try_from(s).ok())
}

#[inline(always)]
pub(crate) fn get_u16(b: &[u8], f: Field) -> u16 {
    read(b, f).map_or(0, u16::from_le_bytes)
}

#[inline(always)]
pub(crate) fn get_u32(b: &[u8], f: Field) -> u32 {
    read(b, f).map_or(0, u32::from_le_bytes)
}

#[inline(always)]
pub(crate) fn get_u64(b: &[u8], f: Field) -> u64 {
    read(b, f).map_or(0, u64::from_le_bytes)
}

/// Writes `bytes` into field `f` of `b` (nothing when `b` is too short or the sizes differ).
#[inline(always)]
pub(crate) fn set(b: &mut [u8], f: Field, bytes: &[u8]) {
    if let Some(dst) = b.get_mut(f).filter(|d| d.len() == bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// Writes `bytes` at offset `at` of `b` (a block: a header, a body, the trailer).
#[inline(always)]
pub(crate) fn put(b: &mut [u8], at: usize, bytes: &[u8]) {
    set(b, at..at.saturating_add(bytes.len()), bytes);
}
