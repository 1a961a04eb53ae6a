//! Version 3: consumers (`docs/PROTOCOL.md` §12). A consumer subscribes to one of the
//! engine's logs ([`Subscribe`]), receives its stored records in DATA frames as far as the
//! credit it grants allows, and commits its position under a name.
//!
//! A DATA frame carries the records exactly as they lie in the engine's files, so that the
//! server can send them without reading them (`sendfile`): its trailer is the CRC32C of its
//! header and prefix only ([`DATA_HEAD_LEN`] bytes), and each record carries its own CRC
//! ([`crate::record`]). [`Frame::new_checked`] checks both, and that the records' offsets
//! run from `first_offset` to `end_offset - 1`.
//!
//! ```
//! use pinstream_core::record::{self, RECORD_HEADER_LEN};
//! use pinstream_core::wire::{self, DataPrefix, Frame, FrameKind, Start, StreamLog, Subscribe};
//!
//! // The consumer's SUBSCRIBE.
//! let mut buf = [0u8; 256];
//! let sub = Subscribe::new(StreamLog::Realtime, Start::Earliest, 1 << 20, b"billing");
//! let n = wire::encode_subscribe(&mut buf, 1, &sub)?;
//! let frame = Frame::new_checked(&buf[..n], 1024)?;
//! assert_eq!(frame.subscribe(), Some(sub));
//!
//! // The server's DATA with two stored records, offsets 7 and 8.
//! let mut records = [0u8; 2 * (RECORD_HEADER_LEN + 3)];
//! let (a, b) = records.split_at_mut(RECORD_HEADER_LEN + 3);
//! record::seal(a, 7, record::KIND_EVENT);
//! record::seal(b, 8, record::KIND_EVENT);
//! let prefix = DataPrefix::new(StreamLog::Realtime, 7, 9, 9, records.len());
//! let n = wire::encode_data(&mut buf, 1, &prefix, &records)?;
//! let frame = Frame::new_checked(&buf[..n], 1024)?;
//! assert_eq!(frame.kind(), FrameKind::Data);
//! let offsets: Vec<u64> = frame.records().map(|r| r.offset()).collect();
//! assert_eq!(offsets, [7, 8]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::fmt;
use core::iter::FusedIterator;

use super::field::{self, data, position, subscribe, subscribed};
use super::{
    DecodeError, EncodeError, Frame, FrameKind, HEADER_LEN, TRAILER_LEN, crc32c, get_u32, get_u64,
    put, set,
};
use crate::record::{FramingError, RecordView};

/// The protocol version of consumer connections: kinds 6–11 carry it in their header.
pub const CONSUMER_VERSION: u8 = 3;
/// Bytes of a SUBSCRIBE body before the name.
pub const SUBSCRIBE_PREFIX_LEN: usize = 32;
/// The longest consumer name.
pub const MAX_CONSUMER_NAME: usize = 64;
/// Bytes of a SUBSCRIBED body.
pub const SUBSCRIBED_BODY_LEN: usize = 32;
/// Bytes of a DATA body before the records.
pub const DATA_PREFIX_LEN: usize = 32;
/// Bytes of a DATA frame covered by its trailer: the header and the prefix.
pub const DATA_HEAD_LEN: usize = HEADER_LEN + DATA_PREFIX_LEN;
/// Bytes of a DATA frame around its records: header, prefix and trailer.
pub const DATA_OVERHEAD: usize = DATA_HEAD_LEN + TRAILER_LEN;
/// Bytes of a CREDIT, COMMIT or COMMITTED body.
pub const POSITION_BODY_LEN: usize = 8;
/// The largest stored record an engine writes: a 20-byte header and a producer event's body
/// (69 bytes) with the largest payload (65 535).
pub const MAX_STORED_RECORD: usize = 20 + 69 + 65_535;
/// The smallest `max_frame_len` a consumer's HELLO may state: one DATA frame carrying the
/// largest stored record.
pub const MIN_CONSUMER_FRAME_LEN: usize = MAX_STORED_RECORD + DATA_OVERHEAD;
/// [`Subscribed::committed`] when the name has no stored position (or there is no name).
pub const NO_COMMIT: u64 = u64::MAX;

/// The logs a consumer can read, by their code on the wire.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StreamLog {
    /// The realtime lane's events (critical and high priority).
    Realtime = 0,
    /// The transactional lane's events (medium priority).
    Transactional = 1,
    /// The batch lane's events (low and batch priority).
    Batch = 2,
    /// The dead letters.
    DeadLetter = 3,
    /// The batch lane's aggregates.
    Aggregates = 4,
}

impl StreamLog {
    /// Every log, in code order.
    pub const ALL: [StreamLog; 5] = [
        StreamLog::Realtime,
        StreamLog::Transactional,
        StreamLog::Batch,
        StreamLog::DeadLetter,
        StreamLog::Aggregates,
    ];

    /// The log with wire code `code`, if defined.
    pub const fn from_u8(code: u8) -> Option<Self> {
        match code {
            0 => Some(StreamLog::Realtime),
            1 => Some(StreamLog::Transactional),
            2 => Some(StreamLog::Batch),
            3 => Some(StreamLog::DeadLetter),
            4 => Some(StreamLog::Aggregates),
            _ => None,
        }
    }

    /// The wire code.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// Its name (the engine's directory name): `"realtime"`, `"transactional"`, `"batch"`,
    /// `"dead-letter"`, `"aggregates"`.
    pub const fn name(self) -> &'static str {
        match self {
            StreamLog::Realtime => "realtime",
            StreamLog::Transactional => "transactional",
            StreamLog::Batch => "batch",
            StreamLog::DeadLetter => "dead-letter",
            StreamLog::Aggregates => "aggregates",
        }
    }

    /// The log named `name` ([`name`](Self::name)).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.name() == name)
    }
}

impl fmt::Display for StreamLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a subscription starts (for a name with a committed position: only when it has
/// none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Start {
    /// The log's first stored record.
    Earliest,
    /// The high watermark: only records stored from now on.
    Latest,
    /// This offset (below the first stored one: the first stored one).
    Offset(u64),
    /// The first record the engine received at or after this time (nanoseconds since the
    /// Unix epoch).
    Time(u64),
}

impl Start {
    /// The `start` code and `start_value` on the wire.
    pub const fn to_wire(self) -> (u8, u64) {
        match self {
            Start::Earliest => (0, 0),
            Start::Latest => (1, 0),
            Start::Offset(o) => (2, o),
            Start::Time(t) => (3, t),
        }
    }

    /// The start a `start` code and `start_value` say, if the code is defined.
    pub const fn from_wire(code: u8, value: u64) -> Option<Self> {
        match code {
            0 => Some(Start::Earliest),
            1 => Some(Start::Latest),
            2 => Some(Start::Offset(value)),
            3 => Some(Start::Time(value)),
            _ => None,
        }
    }
}

/// A SUBSCRIBE body. The fields are as on the wire (a server checks them and answers
/// `unknown_log`, `offset_out_of_range` or `bad_consumer_name`); [`Subscribe::new`] builds
/// a valid one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Subscribe<'a> {
    /// The log's code ([`StreamLog`]).
    pub log: u8,
    /// The start code ([`Start::to_wire`]).
    pub start: u8,
    /// The start offset or time.
    pub start_value: u64,
    /// The initial credit, in bytes of stored records.
    pub credit: u64,
    /// The consumer's name; empty for an anonymous consumer.
    pub name: &'a [u8],
}

impl<'a> Subscribe<'a> {
    /// A subscription to `log` from `start` with `credit` bytes, under `name` (empty:
    /// anonymous).
    pub const fn new(log: StreamLog, start: Start, credit: u64, name: &'a [u8]) -> Self {
        let (start, start_value) = start.to_wire();
        Self {
            log: log.as_u8(),
            start,
            start_value,
            credit,
            name,
        }
    }

    /// The log, if the code is defined.
    pub const fn stream_log(&self) -> Option<StreamLog> {
        StreamLog::from_u8(self.log)
    }

    /// Where to start, if the code is defined.
    pub const fn start_at(&self) -> Option<Start> {
        Start::from_wire(self.start, self.start_value)
    }
}

/// Whether `name` is a usable consumer name: 1 to [`MAX_CONSUMER_NAME`] bytes of ASCII
/// letters, digits, `.`, `_` and `-` (so that it can name a file).
///
/// ```
/// use pinstream_core::wire::valid_consumer_name;
/// assert!(valid_consumer_name(b"billing-v2.eu_1"));
/// assert!(!valid_consumer_name(b""));
/// assert!(!valid_consumer_name(b"../etc"));
/// assert!(!valid_consumer_name(b"."));
/// ```
pub fn valid_consumer_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CONSUMER_NAME
        && name != b"."
        && name != b".."
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A SUBSCRIBED body: where the subscription starts and what the log holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Subscribed {
    /// The offset of the first record the server will send.
    pub start_offset: u64,
    /// The log's lowest stored offset.
    pub first_offset: u64,
    /// Records below this offset are visible.
    pub high_watermark: u64,
    /// The name's stored position, [`NO_COMMIT`] when none.
    pub committed: u64,
}

/// The prefix of a DATA body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DataPrefix {
    /// The offset of the first record carried.
    pub first_offset: u64,
    /// The offset after the last record carried.
    pub end_offset: u64,
    /// The log's high watermark when the frame was sent.
    pub high_watermark: u64,
    /// Bytes of records after the prefix.
    pub records_len: u32,
    /// The log's code ([`StreamLog`]).
    pub log: u8,
}

impl DataPrefix {
    /// The prefix of a frame carrying the records `first..end` of `log` in `records_len`
    /// bytes (saturating at `u32::MAX`: such a frame cannot be encoded).
    pub fn new(
        log: StreamLog,
        first: u64,
        end: u64,
        high_watermark: u64,
        records_len: usize,
    ) -> Self {
        Self {
            first_offset: first,
            end_offset: end,
            high_watermark,
            records_len: u32::try_from(records_len).unwrap_or(u32::MAX),
            log: log.as_u8(),
        }
    }

    /// Records carried: `end_offset - first_offset`.
    pub const fn count(&self) -> u64 {
        self.end_offset.saturating_sub(self.first_offset)
    }

    /// The whole frame's length: [`DATA_OVERHEAD`] + `records_len`.
    pub const fn frame_len(&self) -> usize {
        DATA_OVERHEAD + self.records_len as usize
    }
}

// ---- validation (called by `Frame::new_checked`) ----

/// Checks the body of a version-3 kind. `version` is the header's.
pub(super) fn check_body(kind: FrameKind, version: u8, body: &[u8]) -> Result<(), DecodeError> {
    if version != CONSUMER_VERSION {
        return Err(DecodeError::UnsupportedVersion);
    }
    match kind {
        FrameKind::Subscribe => check_subscribe(body),
        FrameKind::Subscribed => fixed(body, SUBSCRIBED_BODY_LEN),
        FrameKind::Data => check_data(body),
        FrameKind::Credit | FrameKind::Commit | FrameKind::Committed => {
            fixed(body, POSITION_BODY_LEN)
        }
        // Not a version-3 kind: the caller does not send these here.
        _ => Err(DecodeError::UnexpectedKind),
    }
}

fn fixed(body: &[u8], len: usize) -> Result<(), DecodeError> {
    if body.len() == len {
        Ok(())
    } else {
        Err(DecodeError::BadBodyLength)
    }
}

fn check_subscribe(body: &[u8]) -> Result<(), DecodeError> {
    let Some(prefix) = body.first_chunk::<SUBSCRIBE_PREFIX_LEN>() else {
        return Err(DecodeError::BadBodyLength);
    };
    let name_len = usize::from(prefix[subscribe::NAME_LEN]);
    if name_len > MAX_CONSUMER_NAME || body.len() != SUBSCRIBE_PREFIX_LEN + name_len {
        return Err(DecodeError::BadBodyLength);
    }
    let zero = |f: field::Field| prefix.get(f).is_some_and(|b| b.iter().all(|&x| x == 0));
    if !zero(subscribe::RESERVED_0) || !zero(subscribe::RESERVED_1) {
        return Err(DecodeError::ReservedNonZero);
    }
    Ok(())
}

/// A DATA body: the prefix, then `end - first` (≥ 1) intact records with consecutive
/// offsets filling `records_len` bytes exactly.
fn check_data(body: &[u8]) -> Result<(), DecodeError> {
    let Some((prefix, records)) = body.split_first_chunk::<DATA_PREFIX_LEN>() else {
        return Err(DecodeError::BadBodyLength);
    };
    if get_u32(prefix, data::RECORDS_LEN) as usize != records.len() {
        return Err(DecodeError::BadBodyLength);
    }
    if prefix
        .get(data::RESERVED)
        .is_none_or(|r| r.iter().any(|&x| x != 0))
    {
        return Err(DecodeError::ReservedNonZero);
    }
    let first = get_u64(prefix, data::FIRST_OFFSET);
    let end = get_u64(prefix, data::END_OFFSET);
    if end <= first {
        return Err(DecodeError::BadCount);
    }
    let mut rest = records;
    let mut expect = first;
    while !rest.is_empty() {
        let (rec, len) = RecordView::new_checked(rest, u32::MAX).map_err(|e| match e {
            FramingError::BadCrc => DecodeError::BadCrc,
            FramingError::UnknownFormat => DecodeError::ReservedNonZero,
            _ => DecodeError::BadCount,
        })?;
        if rec.offset() != expect || expect >= end {
            return Err(DecodeError::BadCount);
        }
        expect += 1;
        rest = rest.get(len..).unwrap_or(&[]);
    }
    if expect != end {
        return Err(DecodeError::BadCount);
    }
    Ok(())
}

// ---- views ----

impl<'a> Frame<'a> {
    /// The contents of a SUBSCRIBE frame.
    pub fn subscribe(&self) -> Option<Subscribe<'a>> {
        let b = self.body();
        let name_len = usize::from(b.get(subscribe::NAME_LEN).copied().unwrap_or(0));
        (self.kind() == FrameKind::Subscribe).then(|| Subscribe {
            log: b.get(subscribe::LOG).copied().unwrap_or(0),
            start: b.get(subscribe::START).copied().unwrap_or(0),
            start_value: get_u64(b, subscribe::START_VALUE),
            credit: get_u64(b, subscribe::CREDIT),
            name: b
                .get(subscribe::NAME..subscribe::NAME + name_len)
                .unwrap_or(&[]),
        })
    }

    /// The contents of a SUBSCRIBED frame.
    pub fn subscribed(&self) -> Option<Subscribed> {
        let b = self.body();
        (self.kind() == FrameKind::Subscribed).then(|| Subscribed {
            start_offset: get_u64(b, subscribed::START_OFFSET),
            first_offset: get_u64(b, subscribed::FIRST_OFFSET),
            high_watermark: get_u64(b, subscribed::HIGH_WATERMARK),
            committed: get_u64(b, subscribed::COMMITTED),
        })
    }

    /// The prefix of a DATA frame.
    pub fn data(&self) -> Option<DataPrefix> {
        let b = self.body();
        (self.kind() == FrameKind::Data).then(|| DataPrefix {
            first_offset: get_u64(b, data::FIRST_OFFSET),
            end_offset: get_u64(b, data::END_OFFSET),
            high_watermark: get_u64(b, data::HIGH_WATERMARK),
            records_len: get_u32(b, data::RECORDS_LEN),
            log: b.get(data::LOG).copied().unwrap_or(0),
        })
    }

    /// The stored records of a DATA frame, in order (none for other kinds).
    pub fn records(&self) -> Records<'a> {
        let rest = match self.kind() {
            FrameKind::Data => self.body().get(DATA_PREFIX_LEN..).unwrap_or(&[]),
            _ => &[],
        };
        Records { rest }
    }

    /// The `bytes` of a CREDIT frame.
    pub fn credit(&self) -> Option<u64> {
        self.position(FrameKind::Credit)
    }

    /// The `offset` of a COMMIT frame.
    pub fn commit(&self) -> Option<u64> {
        self.position(FrameKind::Commit)
    }

    /// The `offset` of a COMMITTED frame.
    pub fn committed(&self) -> Option<u64> {
        self.position(FrameKind::Committed)
    }

    fn position(&self, kind: FrameKind) -> Option<u64> {
        (self.kind() == kind).then(|| get_u64(self.body(), position::VALUE))
    }
}

/// The stored records of a DATA frame ([`Frame::records`]), checked by
/// [`Frame::new_checked`].
#[derive(Clone, Debug)]
pub struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Records<'a> {
    type Item = RecordView<'a>;

    fn next(&mut self) -> Option<RecordView<'a>> {
        match RecordView::new_checked(self.rest, u32::MAX) {
            Ok((rec, len)) => {
                self.rest = self.rest.get(len..).unwrap_or(&[]);
                Some(rec)
            }
            // Unreachable after `new_checked` (and at the end); end cleanly.
            Err(_) => {
                self.rest = &[];
                None
            }
        }
    }
}

impl FusedIterator for Records<'_> {}

// ---- encoders ----

/// A version-3 frame header.
fn header(len: usize, kind: FrameKind, seq: u64) -> Result<[u8; HEADER_LEN], EncodeError> {
    let len32 = u32::try_from(len).map_err(|_| EncodeError::FrameTooLong { len })?;
    let mut h = [0u8; HEADER_LEN];
    set(&mut h, field::header::LEN, &len32.to_le_bytes());
    put(&mut h, field::header::VERSION, &[CONSUMER_VERSION]);
    put(&mut h, field::header::KIND, &[kind.as_u8()]);
    set(&mut h, field::header::SEQ, &seq.to_le_bytes());
    Ok(h)
}

/// Writes a version-3 frame of `kind` whose body is `parts` back to back; the trailer covers
/// everything before it.
fn encode_parts(
    buf: &mut [u8],
    kind: FrameKind,
    seq: u64,
    parts: &[&[u8]],
) -> Result<usize, EncodeError> {
    let body: usize = parts.iter().map(|p| p.len()).sum();
    let total = HEADER_LEN + body + TRAILER_LEN;
    let have = buf.len();
    let frame = buf.get_mut(..total).ok_or(EncodeError::BufferTooSmall {
        needed: total,
        have,
    })?;
    put(frame, 0, &header(total, kind, seq)?);
    let mut at = HEADER_LEN;
    for p in parts {
        put(frame, at, p);
        at += p.len();
    }
    let crc = crc32c(frame.get(..at).unwrap_or(&[]));
    put(frame, at, &crc.to_le_bytes());
    Ok(total)
}

/// Writes a SUBSCRIBE frame; returns its length (52 + the name's length).
///
/// # Errors
/// [`NameTooLong`](EncodeError::NameTooLong) for a name over [`MAX_CONSUMER_NAME`] bytes,
/// [`BufferTooSmall`](EncodeError::BufferTooSmall).
pub fn encode_subscribe(
    buf: &mut [u8],
    seq: u64,
    sub: &Subscribe<'_>,
) -> Result<usize, EncodeError> {
    let name_len = u8::try_from(sub.name.len())
        .ok()
        .filter(|&n| usize::from(n) <= MAX_CONSUMER_NAME)
        .ok_or(EncodeError::NameTooLong {
            len: sub.name.len(),
        })?;
    let mut prefix = [0u8; SUBSCRIBE_PREFIX_LEN];
    put(&mut prefix, subscribe::LOG, &[sub.log]);
    put(&mut prefix, subscribe::START, &[sub.start]);
    put(&mut prefix, subscribe::NAME_LEN, &[name_len]);
    set(
        &mut prefix,
        subscribe::START_VALUE,
        &sub.start_value.to_le_bytes(),
    );
    set(&mut prefix, subscribe::CREDIT, &sub.credit.to_le_bytes());
    encode_parts(buf, FrameKind::Subscribe, seq, &[&prefix, sub.name])
}

/// Writes a SUBSCRIBED frame; returns its length (52).
///
/// # Errors
/// [`BufferTooSmall`](EncodeError::BufferTooSmall).
pub fn encode_subscribed(buf: &mut [u8], seq: u64, s: &Subscribed) -> Result<usize, EncodeError> {
    let mut body = [0u8; SUBSCRIBED_BODY_LEN];
    set(
        &mut body,
        subscribed::START_OFFSET,
        &s.start_offset.to_le_bytes(),
    );
    set(
        &mut body,
        subscribed::FIRST_OFFSET,
        &s.first_offset.to_le_bytes(),
    );
    set(
        &mut body,
        subscribed::HIGH_WATERMARK,
        &s.high_watermark.to_le_bytes(),
    );
    set(&mut body, subscribed::COMMITTED, &s.committed.to_le_bytes());
    encode_parts(buf, FrameKind::Subscribed, seq, &[&body])
}

/// The first [`DATA_HEAD_LEN`] bytes of a DATA frame (header and prefix) and its trailer:
/// a server writes the head, then `prefix.records_len` bytes of records straight from its
/// files, then the trailer.
///
/// # Errors
/// [`FrameTooLong`](EncodeError::FrameTooLong) when the frame's length does not fit its
/// `u32` field.
pub fn encode_data_head(
    seq: u64,
    prefix: &DataPrefix,
) -> Result<([u8; DATA_HEAD_LEN], [u8; TRAILER_LEN]), EncodeError> {
    let mut head = [0u8; DATA_HEAD_LEN];
    put(
        &mut head,
        0,
        &header(prefix.frame_len(), FrameKind::Data, seq)?,
    );
    let mut p = [0u8; DATA_PREFIX_LEN];
    set(
        &mut p,
        data::FIRST_OFFSET,
        &prefix.first_offset.to_le_bytes(),
    );
    set(&mut p, data::END_OFFSET, &prefix.end_offset.to_le_bytes());
    set(
        &mut p,
        data::HIGH_WATERMARK,
        &prefix.high_watermark.to_le_bytes(),
    );
    set(&mut p, data::RECORDS_LEN, &prefix.records_len.to_le_bytes());
    put(&mut p, data::LOG, &[prefix.log]);
    put(&mut head, HEADER_LEN, &p);
    Ok((head, crc32c(&head).to_le_bytes()))
}

/// Writes a whole DATA frame with `records` (whose length must be `prefix.records_len`);
/// returns its length.
///
/// # Errors
/// [`BufferTooSmall`](EncodeError::BufferTooSmall); [`FrameTooLong`](EncodeError::FrameTooLong)
/// when `records` is not `prefix.records_len` bytes long (the frame would lie about its
/// length) or too long for the length field.
pub fn encode_data(
    buf: &mut [u8],
    seq: u64,
    prefix: &DataPrefix,
    records: &[u8],
) -> Result<usize, EncodeError> {
    let total = DATA_OVERHEAD + records.len();
    if records.len() != prefix.records_len as usize {
        return Err(EncodeError::FrameTooLong { len: total });
    }
    let (head, trailer) = encode_data_head(seq, prefix)?;
    let have = buf.len();
    let frame = buf.get_mut(..total).ok_or(EncodeError::BufferTooSmall {
        needed: total,
        have,
    })?;
    put(frame, 0, &head);
    put(frame, DATA_HEAD_LEN, records);
    put(frame, total - TRAILER_LEN, &trailer);
    Ok(total)
}

/// Writes a CREDIT frame granting `bytes` more; returns its length (28).
///
/// # Errors
/// [`BufferTooSmall`](EncodeError::BufferTooSmall).
pub fn encode_credit(buf: &mut [u8], seq: u64, bytes: u64) -> Result<usize, EncodeError> {
    encode_parts(buf, FrameKind::Credit, seq, &[&bytes.to_le_bytes()])
}

/// Writes a COMMIT frame for `offset` (everything below it is processed); returns its
/// length (28).
///
/// # Errors
/// [`BufferTooSmall`](EncodeError::BufferTooSmall).
pub fn encode_commit(buf: &mut [u8], seq: u64, offset: u64) -> Result<usize, EncodeError> {
    encode_parts(buf, FrameKind::Commit, seq, &[&offset.to_le_bytes()])
}

/// Writes a COMMITTED frame for `offset`; returns its length (28).
///
/// # Errors
/// [`BufferTooSmall`](EncodeError::BufferTooSmall).
pub fn encode_committed(buf: &mut [u8], seq: u64, offset: u64) -> Result<usize, EncodeError> {
    encode_parts(buf, FrameKind::Committed, seq, &[&offset.to_le_bytes()])
}

/// Where the trailer of the frame starting at `prefix` (of length `len`) has its CRC
/// computed over: the header and prefix for a version-3 DATA frame, everything before the
/// trailer for the others.
#[inline]
pub(super) fn crc_covered_len(prefix: &[u8], len: usize) -> usize {
    let is_data = prefix.get(field::header::KIND) == Some(&FrameKind::Data.as_u8())
        && prefix.get(field::header::VERSION) == Some(&CONSUMER_VERSION);
    if is_data && len >= DATA_OVERHEAD {
        DATA_HEAD_LEN
    } else {
        len - TRAILER_LEN
    }
}
