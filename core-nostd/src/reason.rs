//! Why an event was not stored: one registry of reason codes for the whole engine.
//!
//! Every event that enters is accounted for exactly once: **stored**, a **duplicate** of one
//! already stored (code 36, [`Reason::Duplicate`]: acknowledged as such, not a dead letter),
//! **dead-lettered** with a reason, or **rejected** with a reason. Rejections happen at the door (the input could not
//! be decoded, or the engine cannot hold it); dead letters were valid events the pipeline
//! could not place or store. The numeric codes are stable: they travel in REJECT frames and
//! in the dead-letter log (`docs/PROTOCOL.md` lists them).

use core::fmt;

/// A reason code. Codes 1–31 are rejections, 32–63 dead letters.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Reason {
    // ---- rejected: malformed input (one frame counts as one rejected unit) ----
    /// Fewer bytes than the frame header and trailer, or than the frame's length field says.
    TooShort = 1,
    /// The length field exceeds the receiver's maximum frame length.
    TooLong = 2,
    /// The length field is below the minimum frame size or disagrees with the bytes given.
    BadLength = 3,
    /// The CRC32C trailer does not match the frame's bytes.
    BadCrc = 4,
    /// The frame's version is not one the receiver speaks.
    UnsupportedVersion = 5,
    /// The frame kind is not defined.
    UnknownKind = 6,
    /// A reserved field or flag bit is not zero.
    ReservedNonZero = 7,
    /// An event's priority code is above 4.
    BadPriority = 8,
    /// A fixed-size body (hello, ack, reject) has the wrong length.
    BadBodyLength = 9,
    /// An event's payload length runs past the end of its frame.
    BadEventLength = 10,
    /// A batch's event count is zero or its events do not fill the body exactly.
    BadCount = 11,
    /// The stream lost framing earlier (a length field out of bounds); the rest of it is
    /// discarded until the connection is reset.
    StreamPoisoned = 12,
    /// A well-formed frame of a kind this side does not accept (an ACK sent to the server).
    UnexpectedKind = 13,
    // ---- rejected: valid, but the engine cannot take it (one event, one unit) ----
    /// The payload is larger than the engine's event slot.
    PayloadTooLarge = 20,
    /// A data frame whose seq is not above the previous data frame's on the connection
    /// (acknowledgements are watermarks over seqs; the whole frame is one unit).
    SeqNotIncreasing = 21,
    /// A version-2 HELLO for a new producer when every producer session the server keeps is
    /// held by a connection; the connection is closed.
    TooManyProducers = 22,
    // ---- rejected: consumer requests (protocol version 3; the connection is closed) ----
    /// A SUBSCRIBE names a log the engine does not have.
    UnknownLog = 23,
    /// A consumer name with bytes outside `[A-Za-z0-9._-]`.
    BadConsumerName = 24,
    /// A start offset or a commit above the log's high watermark, or an unknown start mode.
    OffsetOutOfRange = 25,
    /// CREDIT or COMMIT before SUBSCRIBE, COMMIT on an anonymous subscription, or a second
    /// SUBSCRIBE.
    NotSubscribed = 26,
    /// The engine serves as many consumers, or keeps as many consumer names, as configured.
    TooManyConsumers = 27,
    /// Another connection is subscribed under the same name to the same log.
    ConsumerBusy = 28,
    // ---- rejected: authentication (`docs/PROTOCOL.md` §5, tokens) ----
    /// The port requires a token and the connection's HELLO carried none, or one the server
    /// does not know (or a data frame came before any HELLO); the connection is closed.
    Unauthenticated = 29,
    /// The connection's token may not send to the event's topic: that event is rejected,
    /// the others of its frame go on.
    ForbiddenTopic = 30,

    // ---- dead-lettered (one event, one unit) ----
    /// The event's lane was full.
    LaneFull = 32,
    /// The source exceeded its rate limit. Only a source that cannot be slowed down
    /// ([`Flow::Lossy`](crate::dispatch::Flow::Lossy), UDP) is dead-lettered for it; one with
    /// flow control waits for tokens instead (a [`FrameStep::waiting`] cause).
    ///
    /// [`FrameStep::waiting`]: crate::dispatch::FrameStep::waiting
    RateLimited = 33,
    /// The control plane is shedding this priority.
    Shed = 34,
    /// The topic id is not registered.
    UnknownTopic = 35,
    /// The transactional lane saw this event id within its deduplication window: the event
    /// is already stored. Counted as a duplicate, not as a dead letter (see
    /// [`Reason::is_duplicate`]).
    Duplicate = 36,
    /// The sink refused the event (or its aggregate) on every allowed attempt.
    RetriesExhausted = 37,
    /// No free event slot in the pool.
    PoolExhausted = 38,
    /// The deduplication table had no free slot for the id, so it could not be checked. No
    /// longer produced: the table evicts its oldest entry instead of refusing. The code keeps
    /// its meaning for old dead-letter logs.
    DedupFull = 39,
}

impl Reason {
    /// Every reason, in code order.
    pub const ALL: [Reason; 32] = [
        Reason::TooShort,
        Reason::TooLong,
        Reason::BadLength,
        Reason::BadCrc,
        Reason::UnsupportedVersion,
        Reason::UnknownKind,
        Reason::ReservedNonZero,
        Reason::BadPriority,
        Reason::BadBodyLength,
        Reason::BadEventLength,
        Reason::BadCount,
        Reason::StreamPoisoned,
        Reason::UnexpectedKind,
        Reason::PayloadTooLarge,
        Reason::SeqNotIncreasing,
        Reason::TooManyProducers,
        Reason::UnknownLog,
        Reason::BadConsumerName,
        Reason::OffsetOutOfRange,
        Reason::NotSubscribed,
        Reason::TooManyConsumers,
        Reason::ConsumerBusy,
        Reason::Unauthenticated,
        Reason::ForbiddenTopic,
        Reason::LaneFull,
        Reason::RateLimited,
        Reason::Shed,
        Reason::UnknownTopic,
        Reason::Duplicate,
        Reason::RetriesExhausted,
        Reason::PoolExhausted,
        Reason::DedupFull,
    ];

    /// The number of distinct reasons: the length of per-reason counter arrays.
    pub const COUNT: usize = Self::ALL.len();

    /// The stable numeric code.
    #[inline]
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// The reason with this code, if any.
    pub const fn from_code(code: u16) -> Option<Self> {
        let mut i = 0;
        while i < Self::COUNT {
            if Self::ALL[i] as u16 == code {
                return Some(Self::ALL[i]);
            }
            i += 1;
        }
        None
    }

    /// A dense index in `0..COUNT`, for per-reason counter arrays.
    #[inline]
    pub const fn index(self) -> usize {
        match self as u16 {
            c @ 1..=13 => c as usize - 1,
            c @ 20..=30 => c as usize - 20 + 13,
            c => c as usize - 32 + 24,
        }
    }

    /// Whether this reason rejects (at the door) rather than dead-letters.
    #[inline]
    pub const fn is_rejection(self) -> bool {
        (self as u16) < 32
    }

    /// Whether this reason marks a repeat of an event already stored ([`Reason::Duplicate`]):
    /// its own class in the books, neither stored again nor dead-lettered.
    pub const fn is_duplicate(self) -> bool {
        matches!(self, Reason::Duplicate)
    }

    /// A short snake_case name, stable for metrics and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::TooShort => "too_short",
            Reason::TooLong => "too_long",
            Reason::BadLength => "bad_length",
            Reason::BadCrc => "bad_crc",
            Reason::UnsupportedVersion => "unsupported_version",
            Reason::UnknownKind => "unknown_kind",
            Reason::ReservedNonZero => "reserved_non_zero",
            Reason::BadPriority => "bad_priority",
            Reason::BadBodyLength => "bad_body_length",
            Reason::BadEventLength => "bad_event_length",
            Reason::BadCount => "bad_count",
            Reason::StreamPoisoned => "stream_poisoned",
            Reason::UnexpectedKind => "unexpected_kind",
            Reason::PayloadTooLarge => "payload_too_large",
            Reason::SeqNotIncreasing => "seq_not_increasing",
            Reason::TooManyProducers => "too_many_producers",
            Reason::UnknownLog => "unknown_log",
            Reason::BadConsumerName => "bad_consumer_name",
            Reason::OffsetOutOfRange => "offset_out_of_range",
            Reason::NotSubscribed => "not_subscribed",
            Reason::TooManyConsumers => "too_many_consumers",
            Reason::ConsumerBusy => "consumer_busy",
            Reason::Unauthenticated => "unauthenticated",
            Reason::ForbiddenTopic => "forbidden_topic",
            Reason::LaneFull => "lane_full",
            Reason::RateLimited => "rate_limited",
            Reason::Shed => "shed",
            Reason::UnknownTopic => "unknown_topic",
            Reason::Duplicate => "duplicate",
            Reason::RetriesExhausted => "retries_exhausted",
            Reason::PoolExhausted => "pool_exhausted",
            Reason::DedupFull => "dedup_full",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn codes_indices_and_names_are_consistent() {
        let mut seen = [false; Reason::COUNT];
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r.code()), Some(r));
            assert!(!seen[r.index()], "index {} used twice", r.index());
            seen[r.index()] = true;
            assert_eq!(r.is_rejection(), r.code() < 32);
        }
        assert!(seen.iter().all(|&s| s));
        for code in [0, 14, 19, 31, 40, 63, u16::MAX] {
            assert_eq!(Reason::from_code(code), None, "code {code}");
        }
    }
}
