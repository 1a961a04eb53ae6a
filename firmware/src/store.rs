//! The application's sink: records kept in a fixed RAM ring, as a small part keeps them
//! before it forwards them or writes them to flash.
//!
//! The ring holds the newest [`KEPT`] records; a new one overwrites the oldest, which is
//! counted ([`RecordRing::overwritten`]): the store never refuses, so the processors never
//! need to retry (a flash log that erases its oldest sector behaves the same). Dead letters
//! go to a ring of their own ([`DEAD_KEPT`] records, same rule).

use pinstream_core::event::Lane;
use pinstream_core::lanes::DeadLetter;
use pinstream_core::process::{Record, Sink, SinkError};
use pinstream_core::reason::Reason;
use pinstream_core::wire::crc32c;

/// Records the RAM ring keeps.
pub const KEPT: usize = 128;
/// Dead-letter records kept.
pub const DEAD_KEPT: usize = 32;

/// One stored record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    /// A realtime or transactional event.
    Event {
        /// The producer's id.
        id: u64,
        /// Topic id.
        topic: u16,
        /// The lane it came through.
        lane: Lane,
        /// Its value, if it carried one.
        value: Option<i64>,
        /// Payload bytes.
        payload_len: u16,
        /// CRC32C of the payload (the payload itself is not kept).
        payload_crc: u32,
    },
    /// A batch-lane aggregate.
    Aggregate {
        /// Topic id.
        topic: u16,
        /// Events it stands for.
        count: u64,
        /// Sum of their values (saturated to `i64`).
        sum: i64,
    },
}

/// A ring of the newest `N` items; `push` never fails, it overwrites the oldest.
pub struct Ring<T: Copy, const N: usize> {
    items: [Option<T>; N],
    /// Items pushed ever; the next goes to `written % N`.
    written: u64,
}

impl<T: Copy, const N: usize> Ring<T, N> {
    /// An empty ring.
    pub const fn new() -> Self {
        const { assert!(N > 0) };
        Self {
            items: [None; N],
            written: 0,
        }
    }

    /// Keeps `item`, overwriting the oldest when full.
    pub fn push(&mut self, item: T) {
        self.items[(self.written % N as u64) as usize] = Some(item);
        self.written += 1;
    }

    /// Items pushed ever.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Items held now (at most `N`).
    pub fn held(&self) -> usize {
        self.items.iter().filter(|i| i.is_some()).count()
    }

    /// Items overwritten before anyone read them.
    pub fn overwritten(&self) -> u64 {
        self.written.saturating_sub(N as u64)
    }

    /// The newest item.
    pub fn newest(&self) -> Option<T> {
        let at = self.written.checked_sub(1)?;
        self.items[(at % N as u64) as usize]
    }
}

impl<T: Copy, const N: usize> Default for Ring<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

/// The records and dead letters of the application, in RAM.
pub struct RecordRing {
    /// Stored records.
    pub records: Ring<Kept, KEPT>,
    /// Dead-letter records (from the dispatcher's ring and the processors' own).
    pub dead: Ring<DeadLetter, DEAD_KEPT>,
    /// Events stored (an aggregate counts the events it stands for).
    pub events: u64,
    /// Dead letters by reason, as recorded here (the accounting counts them too).
    pub dead_by_reason: [u32; Reason::COUNT],
}

impl RecordRing {
    /// Empty.
    pub const fn new() -> Self {
        Self {
            records: Ring::new(),
            dead: Ring::new(),
            events: 0,
            dead_by_reason: [0; Reason::COUNT],
        }
    }

    /// Keeps one dead letter.
    pub fn keep_dead_letter(&mut self, record: &DeadLetter) {
        self.dead.push(*record);
        self.dead_by_reason[record.reason.index()] += 1;
    }
}

impl Default for RecordRing {
    fn default() -> Self {
        Self::new()
    }
}

impl Sink for RecordRing {
    fn store(&mut self, record: &Record<'_>) -> Result<(), SinkError> {
        let kept = match record {
            Record::Event(e) => {
                self.events += 1;
                Kept::Event {
                    id: e.header.id,
                    topic: e.header.topic,
                    lane: e.lane,
                    value: e.header.value(),
                    payload_len: e.payload.len() as u16,
                    payload_crc: crc32c(e.payload),
                }
            }
            Record::Aggregate(a) => {
                self.events += a.count;
                Kept::Aggregate {
                    topic: a.topic,
                    count: a.count,
                    sum: a.sum.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64,
                }
            }
            // A kind newer than this firmware (`Record` is non-exhaustive): refused, so the
            // pipeline retries and then dead-letters it with a reason, never loses it.
            _ => return Err(SinkError),
        };
        self.records.push(kept);
        Ok(())
    }

    fn dead_letter(&mut self, record: &DeadLetter) -> bool {
        self.keep_dead_letter(record);
        true
    }
}
