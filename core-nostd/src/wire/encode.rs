//! Encoders: each writes one frame into the caller's buffer and returns its length.
//!
//! They write the canonical form the decoder demands: reserved fields zero, and an event's
//! value written as 0 when its has-value flag is clear. A header with flag bits this version
//! does not define is refused ([`EncodeError::UnknownFlags`]) rather than silently changed.
//! The encoders do not know the peer's maximum frame length: pass a buffer no longer than it
//! (`&mut buf[..max]`) and a frame that would exceed it fails with
//! [`BufferTooSmall`](EncodeError::BufferTooSmall).

use super::field::{self, Field, batch, event, header};
use super::{
    ACK_BODY_LEN, ACK_BODY_LEN_V2, Ack, BATCH_PREFIX_LEN, EVENT_RECORD_LEN, EncodeError, FrameKind,
    HEADER_LEN, HELLO_BODY_LEN, HELLO_BODY_LEN_V2, HELLO_TOKEN_MAX, Hello, MAX_PAYLOAD_LEN,
    MIN_FRAME_LEN, REJECT_BODY_LEN, Reject, TRAILER_LEN, VERSION, crc32c, event_frame_len, put,
    set,
};
use crate::event::{EventHeader, FLAG_HAS_VALUE, KNOWN_FLAGS};

// Small fields are assembled into little-endian words and written a word at a time (see
// `record_head`). A field's shift is its bit offset in the word that holds it; `shift`
// stops the build if a field does not lie inside that word.

/// The bit offset of the `width`-byte field at byte `at` inside the 8-byte word at `word`.
const fn shift(at: usize, width: usize, word: usize) -> u32 {
    assert!(
        at >= word && at + width <= word + 8,
        "field outside its word"
    );
    ((at - word) * 8) as u32
}

/// The header's first word: `len`, `version`, `kind` and `flags` (0); `seq` is the second.
const HEADER_WORD: Field = 0..8;
const LEN_SHIFT: u32 = shift(header::LEN.start, 4, HEADER_WORD.start);
const VERSION_SHIFT: u32 = shift(header::VERSION, 1, HEADER_WORD.start);
const KIND_SHIFT: u32 = shift(header::KIND, 1, HEADER_WORD.start);
const _: u32 = shift(header::FLAGS.start, 2, HEADER_WORD.start);

/// An event record's last word: `topic`, `priority`, `flags`, `payload_len`, reserved (0).
const RECORD_TAIL: Field = event::TOPIC.start..event::RESERVED.end;
const TOPIC_SHIFT: u32 = shift(event::TOPIC.start, 2, RECORD_TAIL.start);
const PRIORITY_SHIFT: u32 = shift(event::PRIORITY, 1, RECORD_TAIL.start);
const FLAGS_SHIFT: u32 = shift(event::FLAGS, 1, RECORD_TAIL.start);
const PAYLOAD_LEN_SHIFT: u32 = shift(event::PAYLOAD_LEN.start, 2, RECORD_TAIL.start);
const _: u32 = shift(event::RESERVED.start, 2, RECORD_TAIL.start);

/// A frame header (flags, reserved, 0).
#[inline]
fn header_bytes(len: u32, kind: FrameKind, seq: u64) -> [u8; HEADER_LEN] {
    let first = u64::from(len) << LEN_SHIFT
        | u64::from(VERSION) << VERSION_SHIFT
        | u64::from(kind.as_u8()) << KIND_SHIFT;
    let mut h = [0u8; HEADER_LEN];
    set(&mut h, HEADER_WORD, &first.to_le_bytes());
    set(&mut h, header::SEQ, &seq.to_le_bytes());
    h
}

/// The fixed 32 bytes of an event record as four little-endian words, normalised (value 0
/// without the has-value flag). Whole words, not bytes: assembling a record byte by byte on
/// the stack and copying it out stalls store forwarding (measured 2× slower pushes).
#[inline]
fn record_head(header: &EventHeader, payload: &[u8]) -> Result<[u64; 4], EncodeError> {
    let Ok(payload_len) = u16::try_from(payload.len()) else {
        return Err(EncodeError::PayloadTooLarge { len: payload.len() });
    };
    if header.flags & !KNOWN_FLAGS != 0 {
        return Err(EncodeError::UnknownFlags {
            flags: header.flags,
        });
    }
    let value = if header.flags & FLAG_HAS_VALUE != 0 {
        header.raw_value
    } else {
        0
    };
    let tail = u64::from(header.topic) << TOPIC_SHIFT
        | u64::from(header.priority.as_u8()) << PRIORITY_SHIFT
        | u64::from(header.flags) << FLAGS_SHIFT
        | u64::from(payload_len) << PAYLOAD_LEN_SHIFT;
    Ok([header.id, header.timestamp, value as u64, tail])
}

/// Writes `words` (from [`record_head`]: `id`, `timestamp`, `value`, the tail) into `dst`.
#[inline(always)]
fn write_head(dst: &mut [u8; EVENT_RECORD_LEN], words: [u64; 4]) {
    let [id, timestamp, value, tail] = words;
    set(dst, event::ID, &id.to_le_bytes());
    set(dst, event::TIMESTAMP, &timestamp.to_le_bytes());
    set(dst, event::VALUE, &value.to_le_bytes());
    set(dst, RECORD_TAIL, &tail.to_le_bytes());
}

/// Writes the CRC32C trailer of `frame` (exactly one frame, header and body written).
#[inline]
fn seal(frame: &mut [u8]) {
    let at = frame.len().saturating_sub(TRAILER_LEN);
    let crc = crc32c(frame.get(..at).unwrap_or(&[]));
    put(frame, at, &crc.to_le_bytes());
}

/// The first `needed` bytes of `buf`, or `BufferTooSmall`.
#[inline]
fn frame_buf(buf: &mut [u8], needed: usize) -> Result<&mut [u8], EncodeError> {
    let have = buf.len();
    buf.get_mut(..needed)
        .ok_or(EncodeError::BufferTooSmall { needed, have })
}

/// Writes a frame whose body is the fixed-size `body`.
fn encode_fixed<const N: usize>(
    buf: &mut [u8],
    kind: FrameKind,
    seq: u64,
    body: &[u8; N],
) -> Result<usize, EncodeError> {
    let total = HEADER_LEN + N + TRAILER_LEN;
    let frame = frame_buf(buf, total)?;
    // `N` is 16, 24 or 32: the length fits a u32.
    put(frame, 0, &header_bytes(total as u32, kind, seq));
    put(frame, HEADER_LEN, body);
    seal(frame);
    Ok(total)
}

/// Writes an EVENT frame carrying `header` and `payload` into `buf`; returns its length,
/// [`event_frame_len`]`(payload.len())`.
///
/// # Errors
/// [`PayloadTooLarge`](EncodeError::PayloadTooLarge) above 65 535 bytes,
/// [`UnknownFlags`](EncodeError::UnknownFlags), or
/// [`BufferTooSmall`](EncodeError::BufferTooSmall) (checked in that order).
///
/// ```
/// use pinstream_core::event::{EventHeader, Priority};
/// use pinstream_core::wire::{self, Frame, encode_event};
///
/// let mut buf = [0u8; 128];
/// let header = EventHeader::new(42, 3, Priority::High, 1_000).with_value(-7);
/// let n = encode_event(&mut buf, 1, &header, b"temperature").unwrap();
/// assert_eq!(n, wire::event_frame_len(11));
/// let frame = Frame::new_checked(&buf[..n], wire::DEFAULT_MAX_FRAME_LEN).unwrap();
/// assert_eq!(frame.events().next().unwrap().header(), header);
/// ```
pub fn encode_event(
    buf: &mut [u8],
    seq: u64,
    header: &EventHeader,
    payload: &[u8],
) -> Result<usize, EncodeError> {
    let head = record_head(header, payload)?;
    // At most 16 + 32 + 65 535 + 4 bytes: fits a u32.
    let total = event_frame_len(payload.len());
    let frame = frame_buf(buf, total)?;
    put(frame, 0, &header_bytes(total as u32, FrameKind::Event, seq));
    if let Some((dst_head, dst_payload)) = frame
        .get_mut(HEADER_LEN..total - TRAILER_LEN)
        .and_then(<[u8]>::split_first_chunk_mut::<EVENT_RECORD_LEN>)
    {
        write_head(dst_head, head);
        // `total - 20 == 32 + payload.len()`: the lengths agree.
        dst_payload.copy_from_slice(payload);
    }
    seal(frame);
    Ok(total)
}

/// Writes a version-1 ACK frame; returns its length (52). Version 1 has no `duplicates`
/// field: they are counted in `stored` ([`Ack::folded`]).
///
/// # Errors
/// [`BufferTooSmall`](EncodeError::BufferTooSmall).
pub fn encode_ack(buf: &mut [u8], seq: u64, ack: &Ack) -> Result<usize, EncodeError> {
    let ack = ack.folded();
    let mut body = [0u8; ACK_BODY_LEN];
    ack_body(&mut body, &ack);
    encode_fixed(buf, FrameKind::Ack, seq, &body)
}

/// Writes the fields of `ack` that fit `body` (a version-1 body ends before `duplicates`).
fn ack_body(body: &mut [u8], a: &Ack) {
    set(body, field::ack::THROUGH_SEQ, &a.through_seq.to_le_bytes());
    set(body, field::ack::STORED, &a.stored.to_le_bytes());
    set(
        body,
        field::ack::DEAD_LETTERED,
        &a.dead_lettered.to_le_bytes(),
    );
    set(body, field::ack::REJECTED, &a.rejected.to_le_bytes());
    set(body, field::ack::DUPLICATES, &a.duplicates.to_le_bytes());
}

/// Writes a version-2 ACK frame (header version 2, `duplicates` after `rejected`); returns
/// its length (60).
///
/// # Errors
/// [`BufferTooSmall`](EncodeError::BufferTooSmall).
pub fn encode_ack_v2(buf: &mut [u8], seq: u64, ack: &Ack) -> Result<usize, EncodeError> {
    let mut body = [0u8; ACK_BODY_LEN_V2];
    ack_body(&mut body, ack);
    let n = encode_fixed(buf, FrameKind::Ack, seq, &body)?;
    // The header's version byte, then the CRC again over the changed header.
    let frame = frame_buf(buf, n)?;
    put(frame, header::VERSION, &[2]);
    seal(frame);
    Ok(n)
}

/// Writes a REJECT frame; returns its length (44). The reason code is written as given
/// (codes this build does not know are allowed, for forward compatibility).
///
/// # Errors
/// [`BufferTooSmall`](EncodeError::BufferTooSmall).
pub fn encode_reject(buf: &mut [u8], seq: u64, reject: &Reject) -> Result<usize, EncodeError> {
    let mut body = [0u8; REJECT_BODY_LEN];
    set(
        &mut body,
        field::reject::FRAME_SEQ,
        &reject.frame_seq.to_le_bytes(),
    );
    set(
        &mut body,
        field::reject::REASON,
        &reject.reason.to_le_bytes(),
    );
    set(&mut body, field::reject::INDEX, &reject.index.to_le_bytes());
    // `field::reject::RESERVED`: 0.
    set(
        &mut body,
        field::reject::EVENT_ID,
        &reject.event_id.to_le_bytes(),
    );
    encode_fixed(buf, FrameKind::Reject, seq, &body)
}

/// Writes a HELLO frame; returns its length: 36, or 60 when `max_version` is 2 or more (the
/// long body with the producer session and the server's limits). HELLO frames always carry
/// header version 1 (see `docs/PROTOCOL.md`, "Versions").
///
/// # Errors
/// [`BadVersionRange`](EncodeError::BadVersionRange) (`min_version` 0 or above
/// `max_version`), [`BadHelloFrameLen`](EncodeError::BadHelloFrameLen) (`max_frame_len`
/// below 20), [`BufferTooSmall`](EncodeError::BufferTooSmall).
pub fn encode_hello(buf: &mut [u8], seq: u64, hello: &Hello) -> Result<usize, EncodeError> {
    let body = hello_body(hello)?;
    if hello.max_version < 2 {
        let short: &[u8; HELLO_BODY_LEN] = body[..HELLO_BODY_LEN]
            .try_into()
            .unwrap_or(&[0; HELLO_BODY_LEN]);
        return encode_fixed(buf, FrameKind::Hello, seq, short);
    }
    encode_fixed(buf, FrameKind::Hello, seq, &body)
}

/// Writes a client's HELLO carrying an authentication token after the long body
/// (`docs/PROTOCOL.md` §5): `token_len` (u16) and the token's bytes. Returns its length,
/// 62 + `token.len()`. A server that requires tokens (`tcp.auth = "token"`) hashes it and
/// compares it with its configured hashes.
///
/// # Errors
/// [`BadToken`](EncodeError::BadToken) for an empty token, one longer than
/// [`HELLO_TOKEN_MAX`], or a `max_version` below 2; otherwise as [`encode_hello`].
pub fn encode_hello_token(
    buf: &mut [u8],
    seq: u64,
    hello: &Hello,
    token: &[u8],
) -> Result<usize, EncodeError> {
    if token.is_empty() || token.len() > HELLO_TOKEN_MAX || hello.max_version < 2 {
        return Err(EncodeError::BadToken { len: token.len() });
    }
    let body = hello_body(hello)?;
    let body_len = field::hello::TOKEN + token.len();
    let total = HEADER_LEN + body_len + TRAILER_LEN;
    let frame = frame_buf(buf, total)?;
    // At most 16 + 42 + 256 + 4 bytes: the length fits a u32, the token's a u16.
    put(frame, 0, &header_bytes(total as u32, FrameKind::Hello, seq));
    put(frame, HEADER_LEN, &body);
    put(
        frame,
        HEADER_LEN + field::hello::TOKEN_LEN.start,
        &(token.len() as u16).to_le_bytes(),
    );
    put(frame, HEADER_LEN + field::hello::TOKEN, token);
    seal(frame);
    Ok(total)
}

/// The long HELLO body of `hello` (a version-1 sender uses its first 16 bytes), checked.
fn hello_body(hello: &Hello) -> Result<[u8; HELLO_BODY_LEN_V2], EncodeError> {
    if hello.min_version == 0 || hello.min_version > hello.max_version {
        return Err(EncodeError::BadVersionRange);
    }
    if (hello.max_frame_len as usize) < MIN_FRAME_LEN {
        return Err(EncodeError::BadHelloFrameLen);
    }
    let mut body = [0u8; HELLO_BODY_LEN_V2];
    body[field::hello::MIN_VERSION] = hello.min_version;
    body[field::hello::MAX_VERSION] = hello.max_version;
    // `field::hello::RESERVED_0`: 0.
    set(
        &mut body,
        field::hello::MAX_FRAME_LEN,
        &hello.max_frame_len.to_le_bytes(),
    );
    set(&mut body, field::hello::SOURCE, &hello.source.to_le_bytes());
    // `field::hello::RESERVED_1`: 0.
    if hello.max_version < 2 {
        return Ok(body);
    }
    set(
        &mut body,
        field::hello::PRODUCER_ID,
        &hello.producer_id.to_le_bytes(),
    );
    set(
        &mut body,
        field::hello::LAST_SEQ,
        &hello.last_seq.to_le_bytes(),
    );
    set(
        &mut body,
        field::hello::MAX_PAYLOAD,
        &hello.max_payload.to_le_bytes(),
    );
    set(
        &mut body,
        field::hello::DEDUP_WINDOW_MS,
        &hello.dedup_window_ms.to_le_bytes(),
    );
    Ok(body)
}

/// Builds a BATCH frame in the caller's buffer, one event at a time.
///
/// [`push`](Self::push) copies each event in place; [`finish`](Self::finish) writes the
/// header, the count and the CRC and returns the frame's length. A push that does not fit
/// fails and leaves the events pushed before intact, so a sender fills a frame until
/// `BufferTooSmall`, finishes it and starts the next with that event.
///
/// ```
/// use pinstream_core::event::{EventHeader, Priority};
/// use pinstream_core::wire::{BatchEncoder, EncodeError, Frame};
///
/// let mut buf = [0u8; 128];
/// let mut batch = BatchEncoder::new(&mut buf, 5).unwrap();
/// let h = EventHeader::new(1, 0, Priority::Batch, 0);
/// batch.push(&h, &[0xAB; 40]).unwrap(); // 16 + 8 + (32 + 40) + 4 = 100 bytes
/// assert!(matches!(batch.push(&h, b""), Err(EncodeError::BufferTooSmall { needed: 132, have: 128 })));
/// assert_eq!(batch.len(), 1);
/// let n = batch.finish().unwrap();
/// assert_eq!(n, 100);
/// assert_eq!(Frame::new_checked(&buf[..n], 128).unwrap().event_count(), 1);
/// ```
#[derive(Debug)]
pub struct BatchEncoder<'a> {
    /// The destination; the frame is built from offset 0.
    buf: &'a mut [u8],
    /// The frame's sequence number.
    seq: u64,
    /// End of the records written so far: `HEADER_LEN + BATCH_PREFIX_LEN <= end`, and
    /// `end + TRAILER_LEN <= buf.len()`.
    end: usize,
    /// Records written.
    count: u32,
}

impl<'a> BatchEncoder<'a> {
    /// Bytes of a BATCH frame before its first record (header, count, reserved).
    const START: usize = HEADER_LEN + BATCH_PREFIX_LEN;

    /// Starts a BATCH frame with sequence number `seq` at the start of `buf`.
    ///
    /// # Errors
    /// [`BufferTooSmall`](EncodeError::BufferTooSmall) when `buf` cannot hold even the 28
    /// bytes of header, batch prefix and trailer.
    pub fn new(buf: &'a mut [u8], seq: u64) -> Result<Self, EncodeError> {
        let needed = Self::START + TRAILER_LEN;
        if buf.len() < needed {
            return Err(EncodeError::BufferTooSmall {
                needed,
                have: buf.len(),
            });
        }
        Ok(Self {
            buf,
            seq,
            end: Self::START,
            count: 0,
        })
    }

    /// Appends one event.
    ///
    /// # Errors
    /// [`PayloadTooLarge`](EncodeError::PayloadTooLarge),
    /// [`UnknownFlags`](EncodeError::UnknownFlags),
    /// [`FrameTooLong`](EncodeError::FrameTooLong) (the frame would pass 4 GiB), or
    /// [`BufferTooSmall`](EncodeError::BufferTooSmall) with the bytes the frame would need.
    /// On error nothing is written and the batch is as before.
    pub fn push(&mut self, header: &EventHeader, payload: &[u8]) -> Result<(), EncodeError> {
        let head = record_head(header, payload)?;
        // `end` and a payload of at most 65 535 bytes cannot overflow a usize of 32 bits or
        // more unless the buffer nearly fills the address space; saturate to be safe.
        let end = self
            .end
            .saturating_add(EVENT_RECORD_LEN)
            .saturating_add(payload.len());
        let needed = end.saturating_add(TRAILER_LEN);
        if u32::try_from(needed).is_err() {
            return Err(EncodeError::FrameTooLong { len: needed });
        }
        if needed > self.buf.len() {
            return Err(EncodeError::BufferTooSmall {
                needed,
                have: self.buf.len(),
            });
        }
        // Every record takes at least 32 of the frame's < 2^32 bytes: the count stays below
        // 2^27.
        let count = self
            .count
            .checked_add(1)
            .ok_or(EncodeError::FrameTooLong { len: needed })?;
        if let Some((dst_head, dst_payload)) = self
            .buf
            .get_mut(self.end..end)
            .and_then(<[u8]>::split_first_chunk_mut::<EVENT_RECORD_LEN>)
        {
            write_head(dst_head, head);
            // `end - self.end == 32 + payload.len()`: the lengths agree.
            dst_payload.copy_from_slice(payload);
        }
        self.end = end;
        self.count = count;
        Ok(())
    }

    /// Whether an event with a payload of `payload_len` bytes would fit.
    pub fn fits(&self, payload_len: usize) -> bool {
        payload_len <= MAX_PAYLOAD_LEN
            && self
                .end
                .saturating_add(EVENT_RECORD_LEN + TRAILER_LEN)
                .saturating_add(payload_len)
                <= self.buf.len()
    }

    /// Events pushed so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no event has been pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The length [`finish`](Self::finish) would return now.
    pub fn frame_len(&self) -> usize {
        self.end + TRAILER_LEN
    }

    /// The frame's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Writes the header, the count and the CRC; returns the frame's length. The frame is
    /// `buf[..len]`.
    ///
    /// # Errors
    /// [`EmptyBatch`](EncodeError::EmptyBatch) when no event was pushed.
    pub fn finish(self) -> Result<usize, EncodeError> {
        if self.count == 0 {
            return Err(EncodeError::EmptyBatch);
        }
        let total = self.end + TRAILER_LEN;
        let frame = frame_buf(self.buf, total)?;
        // `push` kept `total` within a u32.
        put(
            frame,
            0,
            &header_bytes(total as u32, FrameKind::Batch, self.seq),
        );
        if let Some(body) = frame.get_mut(HEADER_LEN..) {
            set(body, batch::COUNT, &self.count.to_le_bytes());
            set(body, batch::RESERVED, &[0; 4]);
        }
        seal(frame);
        Ok(total)
    }
}
