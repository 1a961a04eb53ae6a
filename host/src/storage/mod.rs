//! Durable storage: an append-only segmented log per lane's events, the dead-letter log and
//! the batch lane's aggregates log ([`LogId`]).
//!
//! # Layout of a log directory
//!
//! The names are defined once in [`layout`].
//!
//! | file | what it holds |
//! | --- | --- |
//! | `{base:020}.log` | a segment: records with offsets `base, base+1, …`, back to back |
//! | `{base:020}.index` | sparse hint: `(offset u64, position u64)` little-endian pairs, one per `index_interval_bytes` of segment; rebuilt when missing or inconsistent, never trusted over the data |
//! | `checkpoint` | hint: a known-good `(segment, position, next offset)` written after each sync: the bytes before it were synced, so damage there is never truncated as a torn tail; ignored when it disagrees with the data |
//! | `{base:020}.log.quarantined[.N]` | a segment in which intact records followed a damaged one; kept, never deleted, never read by [`LogReader`] |
//! | `….quarantined[.N].repaired` | a quarantined segment whose intact records [`repair_log`] re-appended to the log; kept |
//!
//! The data directory above the logs holds [`LOCK_FILE`], locked by the one process that
//! writes the logs ([`DataDirLock`]).
//!
//! # Record framing (little-endian, [`RECORD_HEADER_LEN`] = 20 bytes, then the body)
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | body length `len` (at most `max_record_bytes`) |
//! | 4..8 | CRC32C of bytes `0..4` and `8..20+len` (the length, the rest of the header and the body) |
//! | 8..16 | offset (dense per log: 0, 1, 2, …) |
//! | 16 | kind (1 event, 2 dead letter, 3 aggregate: see [`record`]) |
//! | 17 | format version (1) |
//! | 18..20 | reserved, zero |
//!
//! The CRC covers every byte of the record except itself, so a flipped bit anywhere (the
//! length included) fails the check, and a CRC is checked on every record on recovery and on
//! every read.
//!
//! # Durability
//!
//! [`Durability::None`] leaves written data in the page cache; [`Durability::Interval`] is
//! group commit: the writer calls [`Log::sync`] when [`Log::sync_due`] says so;
//! [`Durability::Always`] means the writer syncs before each acknowledgement batch.
//! [`Log::durable_offset`] is the acknowledgement bound: offsets below it are durable under
//! the mode. A failed `write(2)` or `fdatasync` poisons the log: the failed sync is never
//! retried (after a failed fdatasync the state of the page cache is unknown), every later
//! write returns [`StorageError::Poisoned`] with the first error, and the log must be
//! reopened, which runs recovery.
//!
//! # Recovery ([`Log::open`])
//!
//! Every record of every segment is read and CRC-checked on every open, through one
//! [`SCAN_BUFFER_BYTES`] buffer (a record larger than it has its CRC streamed), so recovery's
//! memory does not grow with the segment. The checkpoint is never trusted over the data: it
//! only says which bytes were synced. Indexes are rebuilt when they disagree with the data. At
//! the first invalid record of a segment the rest of that segment is searched byte by byte for
//! intact records:
//! - none, it is the last segment, and the damage lies beyond what the checkpoint says was
//!   synced: a torn tail. The file is truncated there, then the file and the directory are
//!   fsynced.
//! - otherwise (intact records follow, later segments exist, or the damage is in synced data):
//!   the segment is *quarantined*. Its valid prefix is copied to a new file that takes the
//!   segment's name (so it stays readable), the original is renamed to
//!   `{base:020}.log.quarantined` (never deleted), and the log continues in a new segment at an
//!   offset above every offset seen and the checkpoint's, so offsets are never reused and
//!   nothing is appended after damage. [`repair_log`] (`pinstream log repair`) later
//!   re-appends the intact records found after the damage under new offsets and marks the file
//!   `.repaired`.
//!
//! A record of an unknown format version stops recovery with [`StorageError::UnknownFormat`]
//! and changes nothing; a segment that cannot be read stops it with [`StorageError::Io`]
//! naming the file. Offsets missing between segments (or below the checkpoint's next offset)
//! that no quarantined file accounts for are reported in [`RecoveryReport::missing`] on every
//! open. [`check_segment`] is the same scan for `pinstream log verify`: it lists every damaged
//! region.
//!
//! The dead-letter log is a [`Log`] of its own directory whose records are kind
//! [`record::KIND_DEAD_LETTER`], each carrying its reason code; the aggregates log one whose
//! records are kind [`record::KIND_AGGREGATE`] (in a data directory written before it
//! existed, the batch log holds them among its events).

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub(crate) mod files;
mod format;
mod group_sync;
pub mod layout;
mod lock;
mod log;
mod reader;
pub use pinstream_core::record;
mod recovery;
mod repair;
mod scan;
pub mod sessions;
#[cfg(test)]
mod tests;

pub use self::format::{MAX_RECORD_LIMIT, RECORD_HEADER_LEN, SyncedPoint, synced_point};
pub use self::layout::{LOCK_FILE, LogId, parse_segment_name};

/// The base offsets of the segments in the log directory `dir`, oldest first (empty when
/// the directory holds none or does not exist).
///
/// # Errors
/// [`StorageError::Io`] when the directory exists but cannot be listed.
pub fn segment_bases(dir: &std::path::Path) -> Result<Vec<u64>, StorageError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    format::list_segments(dir)
}
pub use self::group_sync::GroupSync;
pub use self::lock::DataDirLock;
pub use self::log::{Log, LogStats, RetentionReport, SegmentMark, SyncJob};
pub use self::reader::{LogReader, StoredRecord};
pub use self::recovery::{
    CheckpointStatus, MissingRange, QuarantinedSegment, RecoveryReport, TornTail,
};
pub use self::repair::{
    LogRepair, QuarantineState, QuarantinedFile, RepairOutcome, SalvageScan, SalvagedRecord,
    SegmentRepair, quarantined_files, repair_log,
};
pub use self::scan::{DamagedRegion, SCAN_BUFFER_BYTES, SegmentCheck, check_segment};

/// When appended records become durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Page cache only: [`Log::durable_offset`] counts what was written with `write(2)`.
    /// A machine crash can lose any of it.
    None,
    /// Group commit: [`Log::sync_due`] turns true once `max_delay` has passed since the last
    /// sync or `max_bytes` are unsynced, and the writer then calls [`Log::sync`].
    Interval {
        /// Longest time between syncs while there is unsynced data.
        max_delay: Duration,
        /// Unsynced bytes (record headers included) that make a sync due at once.
        max_bytes: u64,
    },
    /// The writer calls [`Log::sync`] before acknowledging each batch:
    /// [`Log::durable_offset`] counts only synced records.
    Always,
}

/// The configuration of one log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// The log's directory (created if missing).
    pub dir: PathBuf,
    /// A segment rolls over when the next record would take it past this many bytes (a
    /// segment holds at least one record, whatever its size).
    pub segment_bytes: u64,
    /// One sparse index entry per this many bytes of segment.
    pub index_interval_bytes: u32,
    /// The write buffer, allocated once at open: at least
    /// `RECORD_HEADER_LEN + max_record_bytes`.
    pub write_buffer_bytes: usize,
    /// The largest record body accepted, at most [`MAX_RECORD_LIMIT`].
    pub max_record_bytes: u32,
    /// Remove the oldest closed segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// Remove the oldest closed segments last written longer ago than this.
    pub retention_age: Option<Duration>,
    /// When records become durable.
    pub durability: Durability,
}

impl LogConfig {
    /// Defaults: 64 MiB segments, an index entry per 4 KiB, a 256 KiB write buffer, records up
    /// to 64 KiB, no retention, [`Durability::Always`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            index_interval_bytes: 4096,
            write_buffer_bytes: 256 << 10,
            max_record_bytes: 64 << 10,
            retention_bytes: None,
            retention_age: None,
            durability: Durability::Always,
        }
    }

    /// Checks the values that would make the log unusable.
    ///
    /// # Errors
    /// [`StorageError::Config`] naming the key and the value.
    pub fn validate(&self) -> Result<(), StorageError> {
        let bad = |key: &'static str, value: String, why: &'static str| {
            Err(StorageError::Config { key, value, why })
        };
        if self.max_record_bytes == 0 || self.max_record_bytes > MAX_RECORD_LIMIT {
            return bad(
                "max_record_bytes",
                self.max_record_bytes.to_string(),
                "must be between 1 and MAX_RECORD_LIMIT (1 GiB)",
            );
        }
        let need = RECORD_HEADER_LEN + self.max_record_bytes as usize;
        if self.write_buffer_bytes < need {
            return bad(
                "write_buffer_bytes",
                self.write_buffer_bytes.to_string(),
                "must hold one whole record: at least 20 + max_record_bytes",
            );
        }
        if self.segment_bytes == 0 {
            return bad("segment_bytes", "0".into(), "must be above 0");
        }
        if let Durability::Interval {
            max_delay,
            max_bytes,
        } = self.durability
        {
            if max_delay.is_zero() && max_bytes == 0 {
                return bad(
                    "durability",
                    format!("{:?}", self.durability),
                    "an interval of 0 ms and 0 bytes is `Always`: say so",
                );
            }
        }
        Ok(())
    }
}

/// What went wrong in the storage layer; the message names the file and what to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum StorageError {
    /// A file system call failed.
    Io {
        /// The operation (`"open"`, `"write"`, `"fdatasync"`, `"fsync directory"`, …).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// An earlier write or sync failed; the log accepts nothing more until it is reopened
    /// (which runs recovery). A failed fdatasync is never retried.
    Poisoned {
        /// The first failure.
        first: Arc<StorageError>,
    },
    /// A record body above `max_record_bytes`.
    RecordTooLarge {
        /// Body length offered.
        len: usize,
        /// The configured maximum.
        max: u32,
    },
    /// A record's body could not be encoded; nothing of it was appended.
    Encode {
        /// The record kind.
        kind: u8,
        /// What the encoder said.
        error: record::RecordError,
    },
    /// A record's body was encoded to another length than announced (a bug in the caller);
    /// nothing of it was appended.
    BodyLength {
        /// The record kind.
        kind: u8,
        /// The body length announced.
        expected: usize,
        /// The bytes written.
        written: usize,
    },
    /// Stored bytes fail their check (CRC, framing, offset sequence).
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte position of the bad record in the file.
        position: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// A record of a format version this build cannot read (written by a newer pinstream):
    /// recovery stops rather than take it for damage, and changes nothing.
    UnknownFormat {
        /// The segment file.
        path: PathBuf,
        /// Byte position of the record in the file.
        position: u64,
        /// Its version byte.
        version: u8,
    },
    /// Another process (or another [`DataDirLock`] of this one) holds the data directory's
    /// lock: one engine per data directory.
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// The pid written in its LOCK file (`None`: not written yet, or unreadable).
        holder: Option<u32>,
    },
    /// A configuration value the log cannot work with.
    Config {
        /// The `LogConfig` field.
        key: &'static str,
        /// Its value.
        value: String,
        /// What it must be.
        why: &'static str,
    },
}

/// Sets the process umask that makes the files the engine creates `mode` (see
/// [`StorageSection::umask`](crate::config::StorageSection::umask)); returns the previous
/// mask. Process-wide: `pinstream run` and `pinstream log repair` call it before they create
/// anything; an application embedding the engine decides for itself.
pub fn set_process_umask(mask: u32) -> u32 {
    crate::sys::fs::set_umask(mask)
}

impl StorageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        // ELOOP from an `O_NOFOLLOW` open (storage::files): say what it means.
        let source = if source.raw_os_error() == Some(libc::ELOOP) {
            io::Error::new(
                source.kind(),
                "it is a symbolic link, and pinstream does not follow links to the files of \
                 its logs (replace the link with the file itself)",
            )
        } else {
            source
        };
        StorageError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// A copy of this error (an `io::Error` is copied as its kind and message), so the first
    /// failure can be both returned and kept by a poisoned log.
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            StorageError::Io { op, path, source } => StorageError::Io {
                op,
                path: path.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            StorageError::Poisoned { first } => StorageError::Poisoned {
                first: Arc::clone(first),
            },
            StorageError::RecordTooLarge { len, max } => StorageError::RecordTooLarge {
                len: *len,
                max: *max,
            },
            StorageError::Encode { kind, error } => StorageError::Encode {
                kind: *kind,
                error: *error,
            },
            StorageError::BodyLength {
                kind,
                expected,
                written,
            } => StorageError::BodyLength {
                kind: *kind,
                expected: *expected,
                written: *written,
            },
            StorageError::Corrupt {
                path,
                position,
                why,
            } => StorageError::Corrupt {
                path: path.clone(),
                position: *position,
                why,
            },
            StorageError::UnknownFormat {
                path,
                position,
                version,
            } => StorageError::UnknownFormat {
                path: path.clone(),
                position: *position,
                version: *version,
            },
            StorageError::Locked { dir, holder } => StorageError::Locked {
                dir: dir.clone(),
                holder: *holder,
            },
            StorageError::Config { key, value, why } => StorageError::Config {
                key,
                value: value.clone(),
                why,
            },
        }
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Io { op, path, source } => {
                write!(f, "{op} of {} failed: {source}", path.display())
            }
            StorageError::Poisoned { first } => write!(
                f,
                "the log stopped accepting writes after an earlier failure (reopen it to run \
                 recovery; records above the durable offset may be lost): {first}"
            ),
            StorageError::RecordTooLarge { len, max } => write!(
                f,
                "record body of {len} bytes exceeds max_record_bytes = {max} (raise it or split \
                 the record)"
            ),
            StorageError::Encode { kind, error } => {
                write!(f, "a record of kind {kind} could not be encoded: {error}")
            }
            StorageError::BodyLength {
                kind,
                expected,
                written,
            } => write!(
                f,
                "a record of kind {kind} was encoded to {written} bytes, {expected} announced \
                 (not appended)"
            ),
            StorageError::Corrupt {
                path,
                position,
                why,
            } => write!(
                f,
                "{} is damaged at byte {position}: {why} (reopening the log with Log::open \
                 recovers or quarantines it)",
                path.display()
            ),
            StorageError::UnknownFormat {
                path,
                position,
                version,
            } => write!(
                f,
                "{} holds a record of format version {version} at byte {position}; this build \
                 reads version {FORMAT}: it was written by a newer pinstream (run that one), or \
                 the byte is damaged beyond a flipped bit (move the file out of the log \
                 directory to start without it); nothing was changed",
                path.display(),
                FORMAT = format::FORMAT_VERSION
            ),
            StorageError::Locked { dir, holder } => {
                write!(
                    f,
                    "the data directory {} is in use by another pinstream process",
                    dir.display()
                )?;
                match holder {
                    Some(pid) => write!(f, " (pid {pid}, from its {LOCK_FILE} file)")?,
                    None => write!(f, " (its pid is not in its {LOCK_FILE} file yet)")?,
                }
                write!(
                    f,
                    ": one engine per data directory; stop that process first, or use another \
                     storage.dir"
                )
            }
            StorageError::Config { key, value, why } => {
                write!(f, "invalid log config: {key} = {value}: {why}")
            }
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Io { source, .. } => Some(source),
            StorageError::Poisoned { first } => Some(&**first),
            _ => None,
        }
    }
}
