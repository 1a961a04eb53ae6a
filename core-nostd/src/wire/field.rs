//! Where each field lies in a frame: one named byte range per field of `docs/PROTOCOL.md`,
//! defined here once and used by the decoder, the encoders and every reader outside the
//! codec ([`frame_seq`](super::frame_seq), [`frame_kind`](super::frame_kind),
//! [`frame_event_count`](super::frame_event_count)).
//!
//! The names are the specification's field names. Header fields count from the start of the
//! frame; every other module's fields count from the start of the body (the header's 16
//! bytes later) or, for [`event`], from the start of the record. A one-byte field is a
//! `usize` offset, a wider one a [`Field`] range; reserved fields are named `RESERVED` (or
//! `RESERVED_*` when a body has two).
//!
//! ```
//! use pinstream_core::wire::{HEADER_LEN, field};
//!
//! let mut frame = [0u8; 36];
//! frame[field::header::SEQ].copy_from_slice(&7u64.to_le_bytes());
//! frame[HEADER_LEN + field::hello::MAX_VERSION] = 2;
//! assert_eq!(pinstream_core::wire::frame_seq(&frame), Some(7));
//! assert_eq!(field::header::SEQ, 8..16);
//! ```

/// A multi-byte field: its bytes, little-endian (smoltcp's `Field`).
pub type Field = core::ops::Range<usize>;

/// The 16-byte frame header, from the start of the frame. Frozen: every version keeps it.
pub mod header {
    use super::Field;

    /// `len` (u32): total frame length, header and trailer included.
    pub const LEN: Field = 0..4;
    /// `version` (u8): the protocol version of this frame.
    pub const VERSION: usize = 4;
    /// `kind` (u8): the [`FrameKind`](crate::wire::FrameKind) code.
    pub const KIND: usize = 5;
    /// `flags` (u16): reserved, 0.
    pub const FLAGS: Field = 6..8;
    /// `seq` (u64): the sender's sequence number of this frame.
    pub const SEQ: Field = 8..16;
}

/// An event record's fixed part, from the start of the record (the body of an EVENT frame,
/// or one record of a BATCH). The payload follows it.
pub mod event {
    use super::Field;

    /// `id` (u64): the producer's idempotency key.
    pub const ID: Field = 0..8;
    /// `timestamp` (u64): the producer's timestamp.
    pub const TIMESTAMP: Field = 8..16;
    /// `value` (i64): 0 unless the has-value flag is set.
    pub const VALUE: Field = 16..24;
    /// `topic` (u16): the topic id.
    pub const TOPIC: Field = 24..26;
    /// `priority` (u8): 0 critical … 4 batch.
    pub const PRIORITY: usize = 26;
    /// `flags` (u8): bit 0 has-value, the others reserved.
    pub const FLAGS: usize = 27;
    /// `payload_len` (u16): payload bytes after the record.
    pub const PAYLOAD_LEN: Field = 28..30;
    /// reserved (u16), 0.
    pub const RESERVED: Field = 30..32;
}

/// A BATCH body's prefix, from the start of the body; the records follow it.
pub mod batch {
    use super::Field;

    /// `count` (u32): event records in the batch, at least 1.
    pub const COUNT: Field = 0..4;
    /// reserved (u32), 0.
    pub const RESERVED: Field = 4..8;
}

/// An ACK body, from the start of the body. Version 1 ends after `rejected`.
pub mod ack {
    use super::Field;

    /// `through_seq` (u64): the watermark.
    pub const THROUGH_SEQ: Field = 0..8;
    /// `stored` (u64): events stored so far.
    pub const STORED: Field = 8..16;
    /// `dead_lettered` (u64): events dead-lettered so far.
    pub const DEAD_LETTERED: Field = 16..24;
    /// `rejected` (u64): units rejected so far.
    pub const REJECTED: Field = 24..32;
    /// `duplicates` (u64, version 2 only): events not taken again.
    pub const DUPLICATES: Field = 32..40;
}

/// A REJECT body, from the start of the body.
pub mod reject {
    use super::Field;

    /// `frame_seq` (u64): the `seq` of the frame concerned.
    pub const FRAME_SEQ: Field = 0..8;
    /// `reason` (u16): the reason code.
    pub const REASON: Field = 8..10;
    /// `index` (u16): the event's index in its batch, or the whole frame.
    pub const INDEX: Field = 10..12;
    /// reserved (u32), 0.
    pub const RESERVED: Field = 12..16;
    /// `event_id` (u64): the event's id, or 0.
    pub const EVENT_ID: Field = 16..24;
}

/// A HELLO body, from the start of the body. The version-1 body ends after `RESERVED_1`;
/// the version-2 (long) body goes on to `dedup_window_ms`.
pub mod hello {
    use super::Field;

    /// `min_version` (u8): the lowest version the sender speaks.
    pub const MIN_VERSION: usize = 0;
    /// `max_version` (u8): the highest version the sender speaks.
    pub const MAX_VERSION: usize = 1;
    /// reserved (u16), 0.
    pub const RESERVED_0: Field = 2..4;
    /// `max_frame_len` (u32): the largest frame the sender will send or accept.
    pub const MAX_FRAME_LEN: Field = 4..8;
    /// `source` (u32): the server's id for the connection; 0 from a client.
    pub const SOURCE: Field = 8..12;
    /// reserved (u32), 0.
    pub const RESERVED_1: Field = 12..16;
    /// `producer_id` (u64, version 2): the producer the connection sends for.
    pub const PRODUCER_ID: Field = 16..24;
    /// `last_seq` (u64, version 2): the producer's highest resolved `seq`.
    pub const LAST_SEQ: Field = 24..32;
    /// `max_payload` (u32, version 2): the largest payload the server accepts.
    pub const MAX_PAYLOAD: Field = 32..36;
    /// `dedup_window_ms` (u32, version 2): the transactional lane's memory of ids.
    pub const DEDUP_WINDOW_MS: Field = 36..40;
    /// `token_len` (u16, optional, after the long body): bytes of the client's
    /// authentication token that follow, 1 to [`HELLO_TOKEN_MAX`](crate::wire::HELLO_TOKEN_MAX).
    pub const TOKEN_LEN: Field = 40..42;
    /// Where the token's bytes start (`token_len` of them end the body).
    pub const TOKEN: usize = 42;
}

/// `fields` tile `0..end`: each starts where the one before ends (a one-byte field `at` is
/// `at..at + 1`).
#[allow(
    dead_code,
    reason = "used by the `const _` checks below, which rustc before 1.88 does not count as uses"
)]
const fn tiles(fields: &[(usize, usize)], end: usize) -> bool {
    let mut at = 0;
    let mut i = 0;
    while i < fields.len() {
        if fields[i].0 != at || fields[i].1 <= at {
            return false;
        }
        at = fields[i].1;
        i += 1;
    }
    at == end
}

/// A one-byte field as a `(start, end)` pair for [`tiles`].
#[allow(
    dead_code,
    reason = "used by the `const _` checks below, which rustc before 1.88 does not count as uses"
)]
const fn byte(at: usize) -> (usize, usize) {
    (at, at + 1)
}

/// A range as a `(start, end)` pair for [`tiles`].
#[allow(
    dead_code,
    reason = "used by the `const _` checks below, which rustc before 1.88 does not count as uses"
)]
const fn span(f: Field) -> (usize, usize) {
    (f.start, f.end)
}

// The layouts have no gap and no overlap, and end at the lengths the codec uses.
const _: () = {
    use super::{
        ACK_BODY_LEN, ACK_BODY_LEN_V2, BATCH_PREFIX_LEN, EVENT_RECORD_LEN, HEADER_LEN,
        HELLO_BODY_LEN, HELLO_BODY_LEN_V2, REJECT_BODY_LEN,
    };
    use header as h;
    assert!(tiles(
        &[
            span(h::LEN),
            byte(h::VERSION),
            byte(h::KIND),
            span(h::FLAGS),
            span(h::SEQ)
        ],
        HEADER_LEN
    ));
    use event as e;
    assert!(tiles(
        &[
            span(e::ID),
            span(e::TIMESTAMP),
            span(e::VALUE),
            span(e::TOPIC),
            byte(e::PRIORITY),
            byte(e::FLAGS),
            span(e::PAYLOAD_LEN),
            span(e::RESERVED),
        ],
        EVENT_RECORD_LEN
    ));
    assert!(tiles(
        &[span(batch::COUNT), span(batch::RESERVED)],
        BATCH_PREFIX_LEN
    ));
    use ack as a;
    let ack_v1 = [
        span(a::THROUGH_SEQ),
        span(a::STORED),
        span(a::DEAD_LETTERED),
        span(a::REJECTED),
    ];
    assert!(tiles(&ack_v1, ACK_BODY_LEN));
    assert!(a::DUPLICATES.start == ACK_BODY_LEN && a::DUPLICATES.end == ACK_BODY_LEN_V2);
    use reject as r;
    assert!(tiles(
        &[
            span(r::FRAME_SEQ),
            span(r::REASON),
            span(r::INDEX),
            span(r::RESERVED),
            span(r::EVENT_ID),
        ],
        REJECT_BODY_LEN
    ));
    use hello as o;
    let hello_v1 = [
        byte(o::MIN_VERSION),
        byte(o::MAX_VERSION),
        span(o::RESERVED_0),
        span(o::MAX_FRAME_LEN),
        span(o::SOURCE),
        span(o::RESERVED_1),
    ];
    assert!(tiles(&hello_v1, HELLO_BODY_LEN));
    assert!(tiles(
        &[
            (0, HELLO_BODY_LEN),
            span(o::PRODUCER_ID),
            span(o::LAST_SEQ),
            span(o::MAX_PAYLOAD),
            span(o::DEDUP_WINDOW_MS),
        ],
        HELLO_BODY_LEN_V2
    ));
    assert!(o::TOKEN_LEN.start == HELLO_BODY_LEN_V2 && o::TOKEN == o::TOKEN_LEN.end);
};

/// A SUBSCRIBE body (version 3), from the start of the body; the name follows at
/// [`NAME`](subscribe::NAME).
pub mod subscribe {
    use super::Field;

    /// `log` (u8): which log, [`StreamLog`](crate::wire::StreamLog) code.
    pub const LOG: usize = 0;
    /// `start` (u8): where to start, [`Start`](crate::wire::Start) code.
    pub const START: usize = 1;
    /// `name_len` (u8): bytes of the consumer's name.
    pub const NAME_LEN: usize = 2;
    /// Reserved, 0.
    pub const RESERVED_0: Field = 3..8;
    /// `start_value` (u64): the start offset or time.
    pub const START_VALUE: Field = 8..16;
    /// `credit` (u64): the initial credit in bytes of records.
    pub const CREDIT: Field = 16..24;
    /// Reserved, 0.
    pub const RESERVED_1: Field = 24..32;
    /// Where the name starts.
    pub const NAME: usize = 32;
}

/// A SUBSCRIBED body (version 3).
pub mod subscribed {
    use super::Field;

    /// `start_offset` (u64).
    pub const START_OFFSET: Field = 0..8;
    /// `first_offset` (u64).
    pub const FIRST_OFFSET: Field = 8..16;
    /// `high_watermark` (u64).
    pub const HIGH_WATERMARK: Field = 16..24;
    /// `committed` (u64).
    pub const COMMITTED: Field = 24..32;
}

/// The prefix of a DATA body (version 3); the records follow at
/// [`DATA_PREFIX_LEN`](crate::wire::DATA_PREFIX_LEN).
pub mod data {
    use super::Field;

    /// `first_offset` (u64).
    pub const FIRST_OFFSET: Field = 0..8;
    /// `end_offset` (u64).
    pub const END_OFFSET: Field = 8..16;
    /// `high_watermark` (u64).
    pub const HIGH_WATERMARK: Field = 16..24;
    /// `records_len` (u32).
    pub const RECORDS_LEN: Field = 24..28;
    /// `log` (u8).
    pub const LOG: usize = 28;
    /// Reserved, 0.
    pub const RESERVED: Field = 29..32;
}

/// The 8-byte body of CREDIT (`bytes`), COMMIT and COMMITTED (`offset`) (version 3).
pub mod position {
    use super::Field;

    /// The one u64 of the body.
    pub const VALUE: Field = 0..8;
}

const _: () = {
    use super::{DATA_PREFIX_LEN, SUBSCRIBE_PREFIX_LEN, SUBSCRIBED_BODY_LEN};
    assert!(tiles(
        &[
            byte(subscribe::LOG),
            byte(subscribe::START),
            byte(subscribe::NAME_LEN),
            span(subscribe::RESERVED_0),
            span(subscribe::START_VALUE),
            span(subscribe::CREDIT),
            span(subscribe::RESERVED_1),
        ],
        SUBSCRIBE_PREFIX_LEN
    ));
    assert!(subscribe::NAME == SUBSCRIBE_PREFIX_LEN);
    assert!(tiles(
        &[
            span(subscribed::START_OFFSET),
            span(subscribed::FIRST_OFFSET),
            span(subscribed::HIGH_WATERMARK),
            span(subscribed::COMMITTED),
        ],
        SUBSCRIBED_BODY_LEN
    ));
    assert!(tiles(
        &[
            span(data::FIRST_OFFSET),
            span(data::END_OFFSET),
            span(data::HIGH_WATERMARK),
            span(data::RECORDS_LEN),
            byte(data::LOG),
            span(data::RESERVED),
        ],
        DATA_PREFIX_LEN
    ));
};
