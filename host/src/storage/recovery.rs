//! Recovery on open: read every record of every segment (CRC checked, through one fixed-size
//! buffer), truncate a torn tail, quarantine segments in which damage is followed by data or
//! lies in what was synced, report offsets missing between segments, rebuild indexes, and say
//! what was done in a [`RecoveryReport`].
//!
//! The rules (see the module docs of [`storage`](super)): data wins over metadata (a
//! checkpoint or index is never trusted over the data: the checkpoint only says which bytes
//! were synced, so damage there is never taken for a torn tail); nothing is deleted, nothing
//! unreadable is taken for damage (a record of an unknown format version stops recovery);
//! offsets are never reused.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::files;
use super::format::{
    Checkpoint, Decoded, INDEX_ENTRY_LEN, IndexEntry, MAX_RECORD_LIMIT, RECORD_HEADER_LEN,
    list_segments, sync_dir,
};
use super::layout::{self, CHECKPOINT_FILE, index_path, segment_path};
use super::scan::SegmentFile;
use super::{Durability, LogConfig, StorageError, quarantined_files};

/// What recovery made of the checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckpointStatus {
    /// No checkpoint file.
    Missing,
    /// The checkpoint agreed with the data. Every segment is scanned all the same; the
    /// checkpoint says which bytes were synced, so damage before it is never truncated.
    Used {
        /// Its segment's base offset.
        segment: u64,
        /// Byte position in that segment.
        position: u64,
    },
    /// The checkpoint disagreed with the data or was unreadable. When its own CRC passed, the
    /// bytes it says were synced are still never truncated.
    Ignored {
        /// Why.
        why: String,
    },
}

/// A torn tail that recovery cut off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub path: PathBuf,
    /// Its length now: the end of its last valid record.
    pub position: u64,
    /// Bytes removed after it.
    pub bytes_removed: u64,
    /// Why the first removed byte did not start a valid record.
    pub why: &'static str,
}

/// A segment set aside because intact records followed a damaged one (or later segments
/// hold data). Nothing of it was deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuarantinedSegment {
    /// The segment's base offset.
    pub base: u64,
    /// The original file, renamed to `quarantined_as`.
    pub quarantined_as: PathBuf,
    /// Where the valid prefix now lives (the segment's own name), `None` when the damage was
    /// at byte 0.
    pub prefix: Option<PathBuf>,
    /// Byte position of the first damaged record; the prefix holds the bytes before it.
    pub damaged_position: u64,
    /// What was wrong there.
    pub why: &'static str,
    /// The damage lies in bytes the checkpoint says were synced (so it is not a torn tail,
    /// even with nothing valid after it).
    pub synced: bool,
    /// CRC-valid records after the damage, left in the quarantined file.
    pub intact_records_after: u64,
    /// The highest offset among them (the log continues above it).
    pub highest_offset_after: Option<u64>,
}

/// Offsets missing from the log: between two segments (or before the end the checkpoint
/// names) no segment or quarantined file holds them. A segment was deleted, emptied or cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingRange {
    /// The offsets missing.
    pub offsets: Range<u64>,
    /// The segment file they should be in or after.
    pub after: PathBuf,
    /// The segment that starts where they end (`None`: the end is the checkpoint's).
    pub before: Option<PathBuf>,
}

/// What recovery found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The log directory.
    pub dir: PathBuf,
    /// The directory held no segment (a first start): there was nothing to recover and a new,
    /// empty log was started.
    pub created: bool,
    /// What became of the checkpoint.
    pub checkpoint: CheckpointStatus,
    /// Segments scanned record by record (all of them).
    pub segments_scanned: usize,
    /// CRC-valid records the scans kept.
    pub records_scanned: u64,
    /// The torn tail cut off, if any.
    pub torn_tail: Option<TornTail>,
    /// Segments quarantined.
    pub quarantined: Vec<QuarantinedSegment>,
    /// Offsets no segment holds (reported, never filled: they are not reused).
    pub missing: Vec<MissingRange>,
    /// Indexes written because they were missing or disagreed with the data.
    pub indexes_rebuilt: usize,
    /// Quarantines an earlier crash interrupted, completed now.
    pub quarantines_completed: usize,
    /// Live segments after recovery (the active one included).
    pub segments: usize,
    /// The offset the next append gets.
    pub next_offset: u64,
    /// How long recovery took (reading every record is most of it).
    pub took: Duration,
}

impl RecoveryReport {
    /// Bytes cut off as a torn tail.
    pub fn bytes_truncated(&self) -> u64 {
        self.torn_tail.as_ref().map_or(0, |t| t.bytes_removed)
    }

    /// True when recovery changed no data file and found nothing missing (no torn tail,
    /// nothing quarantined, no offsets missing).
    pub fn is_clean(&self) -> bool {
        self.torn_tail.is_none()
            && self.quarantined.is_empty()
            && self.quarantines_completed == 0
            && self.missing.is_empty()
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.created && self.is_clean() {
            return write!(
                f,
                "created {}: new empty log, next offset {}",
                self.dir.display(),
                self.next_offset
            );
        }
        write!(
            f,
            "recovered {}: {} segments, {} scanned ({} valid records) in {:.2} s, next offset {}",
            self.dir.display(),
            self.segments,
            self.segments_scanned,
            self.records_scanned,
            self.took.as_secs_f64(),
            self.next_offset
        )?;
        match &self.checkpoint {
            CheckpointStatus::Missing => write!(f, "; no checkpoint")?,
            CheckpointStatus::Used { segment, position } => {
                write!(
                    f,
                    "; every record CRC-checked, the checkpoint agrees (segment {segment}, byte \
                     {position})"
                )?;
            }
            CheckpointStatus::Ignored { why } => write!(f, "; checkpoint ignored: {why}")?,
        }
        if self.indexes_rebuilt > 0 {
            write!(f, "; {} index(es) rebuilt", self.indexes_rebuilt)?;
        }
        if let Some(t) = &self.torn_tail {
            write!(
                f,
                "\n  torn tail: {} truncated at byte {} ({} bytes removed: {})",
                t.path.display(),
                t.position,
                t.bytes_removed,
                t.why
            )?;
        }
        if self.quarantines_completed > 0 {
            write!(
                f,
                "\n  completed {} quarantine(s) interrupted by a crash",
                self.quarantines_completed
            )?;
        }
        for m in &self.missing {
            write!(
                f,
                "\n  MISSING offsets {}..={} ({} record(s)): not in {} nor in {}, and no \
                 quarantined file accounts for them (a segment deleted, emptied or cut?); they \
                 are not reused; nothing was changed",
                m.offsets.start,
                m.offsets.end - 1,
                m.offsets.end - m.offsets.start,
                m.after.display(),
                m.before.as_ref().map_or_else(
                    || "the end of the log the checkpoint names".to_string(),
                    |p| format!("the next segment, {}", p.display())
                ),
            )?;
        }
        for q in &self.quarantined {
            write!(
                f,
                "\n  QUARANTINED segment {}: damaged at byte {} ({}{}), {} intact record(s) after it \
                 (highest offset {}) kept in {}; the valid prefix is {}; nothing was deleted; with \
                 the engine stopped, `pinstream log repair` re-appends the intact records to the log",
                q.base,
                q.damaged_position,
                q.why,
                if q.synced {
                    "; in synced data, not a torn tail"
                } else {
                    ""
                },
                q.intact_records_after,
                q.highest_offset_after
                    .map_or_else(|| "none".to_string(), |o| o.to_string()),
                q.quarantined_as.display(),
                q.prefix
                    .as_ref()
                    .map_or_else(|| "empty".to_string(), |p| p.display().to_string()),
            )?;
        }
        Ok(())
    }
}

/// The state the writer resumes from.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// Closed segments, ascending: `(base, length)`.
    pub closed: Vec<(u64, u64)>,
    /// The segment to append to.
    pub active_base: u64,
    /// Its length (the end of its last valid record).
    pub active_len: u64,
    /// Position of its last record.
    pub last_record_pos: Option<u64>,
    /// Position of its last index entry.
    pub last_index_pos: Option<u64>,
    /// The next offset.
    pub next_offset: u64,
}

/// How a segment's scan ended.
struct Scan {
    /// Absolute end of the last valid record in sequence.
    valid_end: u64,
    next_offset: u64,
    records: u64,
    last_record_pos: Option<u64>,
    index: Vec<IndexEntry>,
    damage: Option<Damage>,
}

/// The first record of a segment that is not the next in sequence.
struct Damage {
    position: u64,
    why: &'static str,
    /// CRC-valid records after it, and the highest offset among them.
    after: u64,
    highest: Option<u64>,
}

struct Live {
    base: u64,
    len: u64,
    next_offset: Option<u64>,
    last_record_pos: Option<u64>,
    last_index_pos: Option<u64>,
    quarantined: bool,
}

fn file_len(path: &Path) -> Result<u64, StorageError> {
    fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| StorageError::io("stat", path, e))
}

/// Reads an index file; `Ok(None)` when it is missing.
fn read_index(path: &Path) -> Result<Option<Vec<u8>>, StorageError> {
    match files::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::io("read", path, e)),
    }
}

fn index_bytes(entries: &[IndexEntry]) -> Vec<u8> {
    let mut b = Vec::with_capacity(entries.len() * INDEX_ENTRY_LEN);
    for e in entries {
        b.extend_from_slice(&e.to_bytes());
    }
    b
}

/// Writes `entries` as the index of `base` unless the file already holds exactly them;
/// returns whether it wrote. The index is a hint: it is not fsynced.
fn write_index(
    dir: &Path,
    base: u64,
    entries: &[IndexEntry],
    old: Option<&[u8]>,
) -> Result<bool, StorageError> {
    let bytes = index_bytes(entries);
    if old == Some(&bytes[..]) {
        return Ok(false);
    }
    let path = index_path(dir, base);
    files::write(&path, &bytes).map_err(|e| StorageError::io("write", &path, e))?;
    Ok(true)
}

/// Reads segment `seg` (base offset `base`) from its first byte through the fixed scan buffer.
///
/// # Errors
/// [`StorageError::UnknownFormat`] at a record of an unknown format version (nothing can say
/// whether it is damage); [`StorageError::Io`] when the file cannot be read.
fn scan(
    seg: &mut SegmentFile,
    path: &Path,
    base: u64,
    interval: u32,
) -> Result<Scan, StorageError> {
    let mut p = 0u64;
    let mut next = base;
    let mut records = 0u64;
    let mut index = Vec::new();
    let mut last_index_pos: Option<u64> = None;
    let mut last_record_pos = None;
    let mut damage = None;
    while p < seg.len() {
        let why = match seg.decode(p, MAX_RECORD_LIMIT)? {
            Decoded::Record { offset, total, .. } if offset == next => {
                if last_index_pos.is_none_or(|l| p - l >= u64::from(interval)) {
                    index.push(IndexEntry {
                        offset,
                        position: p,
                    });
                    last_index_pos = Some(p);
                }
                last_record_pos = Some(p);
                p += total as u64;
                next += 1;
                records += 1;
                continue;
            }
            Decoded::Record { .. } => "a valid record with an offset out of sequence",
            Decoded::Incomplete => "record runs past the end of the file",
            Decoded::Invalid(why) => why,
            Decoded::UnknownVersion(version) => {
                return Err(StorageError::UnknownFormat {
                    path: path.to_path_buf(),
                    position: p,
                    version,
                });
            }
        };
        let (after, highest) = seg.intact_after(p, MAX_RECORD_LIMIT)?;
        damage = Some(Damage {
            position: p,
            why,
            after,
            highest,
        });
        break;
    }
    Ok(Scan {
        valid_end: p,
        next_offset: next,
        records,
        last_record_pos,
        index,
        damage,
    })
}

/// Moves segment `base` aside (never deleting it) and puts its first `prefix_len` bytes back
/// under its name. Order: copy + fsync the prefix, rename the original, fsync the directory,
/// rename the prefix in, fsync the directory; [`complete_interrupted`] finishes a crash
/// between the renames.
fn quarantine(dir: &Path, base: u64, prefix_len: u64) -> Result<PathBuf, StorageError> {
    let seg = segment_path(dir, base);
    let mut n = 0u32;
    let target = loop {
        let candidate = layout::quarantined_path(dir, base, n);
        if !candidate.exists() {
            break candidate;
        }
        n += 1;
    };
    let tmp = layout::prefix_path(dir, base);
    if prefix_len > 0 {
        let src = files::open_read(&seg).map_err(|e| StorageError::io("open", &seg, e))?;
        let mut dst = files::create(&tmp).map_err(|e| StorageError::io("create", &tmp, e))?;
        let copied = io::copy(&mut src.take(prefix_len), &mut dst)
            .map_err(|e| StorageError::io("copy valid prefix", &tmp, e))?;
        if copied != prefix_len {
            return Err(StorageError::io(
                "copy valid prefix",
                &seg,
                io::Error::new(io::ErrorKind::UnexpectedEof, "segment shrank while copying"),
            ));
        }
        dst.flush()
            .and_then(|()| dst.sync_all())
            .map_err(|e| StorageError::io("fsync", &tmp, e))?;
    }
    fs::rename(&seg, &target).map_err(|e| StorageError::io("rename to quarantine", &seg, e))?;
    sync_dir(dir)?;
    if prefix_len > 0 {
        fs::rename(&tmp, &seg).map_err(|e| StorageError::io("rename prefix", &tmp, e))?;
        sync_dir(dir)?;
    }
    Ok(target)
}

/// A `{base}.log.prefix` whose segment is missing is a quarantine interrupted between its two
/// renames: the prefix was already synced, so it takes the segment's name now.
fn complete_interrupted(dir: &Path) -> Result<usize, StorageError> {
    let rd = fs::read_dir(dir).map_err(|e| StorageError::io("list directory", dir, e))?;
    let mut done = 0;
    for entry in rd {
        let entry = entry.map_err(|e| StorageError::io("list directory", dir, e))?;
        let name = entry.file_name();
        let Some(base) = name.to_str().and_then(layout::parse_prefix_name) else {
            continue;
        };
        let seg = segment_path(dir, base);
        if !seg.exists() {
            let tmp = entry.path();
            fs::rename(&tmp, &seg).map_err(|e| StorageError::io("rename prefix", &tmp, e))?;
            sync_dir(dir)?;
            done += 1;
        }
    }
    Ok(done)
}

/// Offsets that no live segment holds and no quarantined file accounts for: between
/// consecutive live segments, and between the end of the log and the checkpoint's next offset.
/// A quarantined file whose base lies in the segment before a gap (or in the gap) accounts
/// for it: its records are kept there, and `pinstream log repair` brings them back.
fn missing_ranges(
    dir: &Path,
    live: &[Live],
    synced_to: Option<Checkpoint>,
) -> Result<Vec<MissingRange>, StorageError> {
    let quarantined: Vec<u64> = quarantined_files(dir)?.iter().map(|q| q.base).collect();
    let accounted = |from: u64, to: u64| quarantined.iter().any(|&q| from <= q && q < to);
    let mut out = Vec::new();
    for pair in live.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let end = a.next_offset.unwrap_or(a.base);
        if end < b.base && !accounted(a.base, b.base) {
            out.push(MissingRange {
                offsets: end..b.base,
                after: segment_path(dir, a.base),
                before: Some(segment_path(dir, b.base)),
            });
        }
    }
    if let (Some(c), Some(last)) = (synced_to, live.last()) {
        let end = last.next_offset.unwrap_or(last.base);
        if end < c.next_offset && !accounted(last.base, u64::MAX) {
            out.push(MissingRange {
                offsets: end..c.next_offset,
                after: segment_path(dir, last.base),
                before: None,
            });
        }
    }
    Ok(out)
}

/// Reads the checkpoint and checks it against the data. The checkpoint is returned whenever
/// its own CRC passes, agreeing or not: it says which bytes were synced.
fn load_checkpoint(
    dir: &Path,
    bases: &[u64],
) -> Result<(CheckpointStatus, Option<Checkpoint>), StorageError> {
    let path = dir.join(CHECKPOINT_FILE);
    let bytes = match files::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok((CheckpointStatus::Missing, None));
        }
        Err(e) => return Err(StorageError::io("read", &path, e)),
    };
    let c = match Checkpoint::from_bytes(&bytes) {
        Ok(c) => c,
        Err(why) => {
            let why = format!("{}: {why}", path.display());
            return Ok((CheckpointStatus::Ignored { why }, None));
        }
    };
    let ignored = |why: String| Ok((CheckpointStatus::Ignored { why }, Some(c)));
    if !bases.contains(&c.segment) {
        return ignored(format!("its segment {} does not exist", c.segment));
    }
    let seg = segment_path(dir, c.segment);
    let len = file_len(&seg)?;
    if c.position > len {
        return ignored(format!(
            "position {} is past the end of {} ({len} bytes)",
            c.position,
            seg.display()
        ));
    }
    if c.position == 0 {
        if c.next_offset != c.segment {
            return ignored("position 0 but next offset is not the segment's base".into());
        }
    } else {
        let fits = c.last_record_pos < c.position
            && c.position - c.last_record_pos
                <= (RECORD_HEADER_LEN as u64) + u64::from(MAX_RECORD_LIMIT);
        if !fits {
            return ignored("its last record position is impossible".into());
        }
        // Through the scan buffer: a checkpoint naming a huge record costs no memory.
        let mut f = SegmentFile::open(&seg)?;
        match f.decode(c.last_record_pos, MAX_RECORD_LIMIT)? {
            Decoded::Record { offset, total, .. }
                if c.last_record_pos + total as u64 == c.position
                    && Some(offset) == c.next_offset.checked_sub(1) => {}
            Decoded::Record { .. } => {
                // An intact record that is not the one it names: the checkpoint is wrong, and
                // says nothing about what was synced.
                let why = format!(
                    "the record at byte {} of {} is not offset {} ending at byte {}",
                    c.last_record_pos,
                    seg.display(),
                    c.next_offset.wrapping_sub(1),
                    c.position
                );
                return Ok((CheckpointStatus::Ignored { why }, None));
            }
            _ => {
                return ignored(format!(
                    "no valid record with offset {} ends at byte {} of {}",
                    c.next_offset.wrapping_sub(1),
                    c.position,
                    seg.display()
                ));
            }
        }
    }
    Ok((
        CheckpointStatus::Used {
            segment: c.segment,
            position: c.position,
        },
        Some(c),
    ))
}

/// Runs recovery over `cfg.dir` (created if missing) and leaves an active segment to
/// append to.
pub(crate) fn recover(cfg: &LogConfig) -> Result<(Recovered, RecoveryReport), StorageError> {
    let started = Instant::now();
    let dir = cfg.dir.as_path();
    if !dir.is_dir() {
        fs::create_dir_all(dir).map_err(|e| StorageError::io("create directory", dir, e))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    let mut report = RecoveryReport {
        dir: dir.to_path_buf(),
        created: false,
        checkpoint: CheckpointStatus::Missing,
        segments_scanned: 0,
        records_scanned: 0,
        torn_tail: None,
        quarantined: Vec::new(),
        missing: Vec::new(),
        indexes_rebuilt: 0,
        quarantines_completed: complete_interrupted(dir)?,
        segments: 0,
        next_offset: 0,
        took: Duration::ZERO,
    };
    let bases = list_segments(dir)?;
    report.created = bases.is_empty();
    let (status, synced_to) = if cfg.durability == Durability::None {
        // Under `None` the checkpoint is not maintained: a leftover one may name data that
        // was never synced.
        (CheckpointStatus::Missing, None)
    } else {
        load_checkpoint(dir, &bases)?
    };
    report.checkpoint = status;

    let interval = cfg.index_interval_bytes;
    let mut live: Vec<Live> = Vec::with_capacity(bases.len() + 1);
    let mut floor = 0u64;
    for (i, &base) in bases.iter().enumerate() {
        let is_last = i + 1 == bases.len();
        let path = segment_path(dir, base);
        let ipath = index_path(dir, base);
        floor = floor.max(base);
        let old_index = read_index(&ipath)?;
        let mut seg = SegmentFile::open(&path)?;
        let len = seg.len();
        let s = scan(&mut seg, &path, base, interval)?;
        drop(seg);
        report.segments_scanned += 1;
        report.records_scanned += s.records;
        floor = floor.max(s.next_offset);
        let entries = s.index;
        let last_index_pos = entries.last().map(|e| e.position);
        // The bytes of this segment the checkpoint says were synced: damage there was
        // acknowledged data, never a torn tail.
        let synced = match synced_to {
            Some(c) if base < c.segment => len,
            Some(c) if base == c.segment => c.position,
            _ => 0,
        };
        match s.damage {
            None => {
                if write_index(dir, base, &entries, old_index.as_deref())? {
                    report.indexes_rebuilt += 1;
                }
                live.push(Live {
                    base,
                    len: s.valid_end,
                    next_offset: Some(s.next_offset),
                    last_record_pos: s.last_record_pos,
                    quarantined: false,
                    last_index_pos,
                });
            }
            Some(d) if is_last && d.after == 0 && d.position >= synced => {
                let position = d.position;
                let f = files::options()
                    .write(true)
                    .open(&path)
                    .map_err(|e| StorageError::io("open", &path, e))?;
                f.set_len(position)
                    .map_err(|e| StorageError::io("truncate torn tail", &path, e))?;
                f.sync_all()
                    .map_err(|e| StorageError::io("fsync", &path, e))?;
                sync_dir(dir)?;
                report.torn_tail = Some(TornTail {
                    path: path.clone(),
                    position,
                    bytes_removed: len - position,
                    why: d.why,
                });
                if write_index(dir, base, &entries, old_index.as_deref())? {
                    report.indexes_rebuilt += 1;
                }
                live.push(Live {
                    base,
                    len: position,
                    next_offset: Some(s.next_offset),
                    last_record_pos: s.last_record_pos,
                    last_index_pos,
                    quarantined: false,
                });
            }
            Some(d) => {
                let position = d.position;
                let quarantined_as = quarantine(dir, base, position)?;
                if let Some(h) = d.highest {
                    floor = floor.max(h.saturating_add(1));
                }
                let prefix = (position > 0).then(|| path.clone());
                if position > 0 {
                    write_index(dir, base, &entries, None)?;
                    live.push(Live {
                        base,
                        len: position,
                        next_offset: Some(s.next_offset),
                        last_record_pos: s.last_record_pos,
                        last_index_pos,
                        quarantined: true,
                    });
                }
                report.quarantined.push(QuarantinedSegment {
                    base,
                    quarantined_as,
                    prefix,
                    damaged_position: position,
                    why: d.why,
                    synced: position < synced,
                    intact_records_after: d.after,
                    highest_offset_after: d.highest,
                });
            }
        }
    }
    report.missing = missing_ranges(dir, &live, synced_to)?;
    if let Some(c) = synced_to {
        // Offsets the checkpoint says were synced are never handed out again, found or not.
        floor = floor.max(c.next_offset);
    }

    // The active segment: the last live one if recovery left it whole and nothing above its
    // end was seen; otherwise a new segment above every offset seen.
    let reuse = live
        .last()
        .is_some_and(|l| !l.quarantined && l.next_offset == Some(floor));
    let active = if reuse { live.pop() } else { None };
    let (active_base, active_len, last_record_pos, last_index_pos) = match active {
        Some(l) => (l.base, l.len, l.last_record_pos, l.last_index_pos),
        None => {
            let path = segment_path(dir, floor);
            files::create_new(&path).map_err(|e| StorageError::io("create segment", &path, e))?;
            let ipath = index_path(dir, floor);
            files::create(&ipath).map_err(|e| StorageError::io("create index", &ipath, e))?;
            sync_dir(dir)?;
            (floor, 0, None, None)
        }
    };
    let closed: Vec<(u64, u64)> = live.iter().map(|l| (l.base, l.len)).collect();
    report.segments = closed.len() + 1;
    report.next_offset = floor;
    report.took = started.elapsed();
    Ok((
        Recovered {
            closed,
            active_base,
            active_len,
            last_record_pos,
            last_index_pos,
            next_offset: floor,
        },
        report,
    ))
}
