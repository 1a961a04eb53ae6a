//! The plain values a [`Log`](super::Log) reports: where its visible records end, its
//! counters, what retention removed.

use std::time::Duration;

/// An offset of a log and where it lies on disk: every record below `offset` is in the
/// segment files, and those of segment `base` end at byte `position` of it. Published to
/// the consumer server ([`Log::visible_mark`](super::Log::visible_mark)) so that it finds the last record boundary it
/// may send without reading the files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentMark {
    /// Offsets below this are in the files.
    pub offset: u64,
    /// The base offset of the segment `offset` ends in (the active one, or the one just
    /// closed when `offset` is a new segment's base).
    pub base: u64,
    /// Bytes of that segment holding records below `offset`.
    pub position: u64,
}

/// Counters of one log since it was opened, and its current bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// The offset the next append gets.
    pub next_offset: u64,
    /// Offsets below this are durable under the mode ([`Log::durable_offset`](super::Log::durable_offset)).
    pub durable_offset: u64,
    /// The lowest offset still stored (the base of the oldest segment).
    pub first_offset: u64,
    /// Records appended since open.
    pub records_appended: u64,
    /// Bytes appended since open, record headers included.
    pub bytes_appended: u64,
    /// Bytes in the write buffer, not yet written.
    pub buffered_bytes: usize,
    /// Bytes appended since the last sync.
    pub unsynced_bytes: u64,
    /// Successful fdatasyncs (a roll's sync of the old segment included).
    pub syncs: u64,
    /// How long the last fdatasync took.
    pub last_sync_latency: Option<Duration>,
    /// The longest fdatasync since open.
    pub max_sync_latency: Option<Duration>,
    /// Live segments, the active one included.
    pub segments: usize,
    /// Bytes in live segments, buffered bytes included.
    pub stored_bytes: u64,
    /// Failed writes of the index (a hint: the index of that segment stops being written
    /// and is rebuilt at the next open).
    pub index_write_failures: u64,
    /// Failed writes of the checkpoint (a hint: the next open scans more).
    pub checkpoint_write_failures: u64,
    /// True once a write or sync failed: the log accepts nothing more until reopened.
    pub poisoned: bool,
}

/// What [`Log::enforce_retention`](super::Log::enforce_retention) removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Whole segments removed (oldest first).
    pub segments_removed: usize,
    /// Their bytes.
    pub bytes_removed: u64,
    /// The lowest offset still stored.
    pub first_offset: u64,
}
