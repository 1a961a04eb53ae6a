//! Repair of quarantined segments: the intact records recovery left behind, re-appended.
//!
//! Recovery quarantines a segment in which intact records follow a damaged one: the original
//! is renamed `{base:020}.log.quarantined[.N]` (kept, never read by [`LogReader`]), its valid
//! prefix stays live under the segment's name, and the log goes on above every offset seen.
//! The records after the damage are then out of the log. [`repair_log`] brings them back:
//!
//! 1. every quarantined file is read and scanned like recovery scans: the records in sequence
//!    from the segment's base are the prefix (already live); from the first damaged byte on,
//!    every CRC-valid record is found byte by byte ([`intact_iter`]) and the bytes between
//!    them are reported as skipped;
//! 2. the log is opened (which runs recovery) and the intact records are appended with their
//!    kind and body unchanged, under new offsets at the end of the log (offsets are never
//!    reused: the old ones may overlap what the log wrote since), then synced;
//! 3. the quarantined file is renamed with a `.repaired` suffix, kept. While its records are
//!    being appended it carries a `.repairing` suffix, so a crash in the middle is seen (and
//!    not repaired twice, which would store its records twice).
//!
//! Nothing is deleted. A dry run does step 1 only and changes nothing. The caller must hold the
//! data directory's [`DataDirLock`](super::DataDirLock): the engine must not be running.
//!
//! [`LogReader`]: super::LogReader

use std::fmt;
use std::fs;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};

use super::format::{
    Decoded, MAX_RECORD_LIMIT, RECORD_HEADER_LEN, decode_at, intact_iter, sync_dir,
};
pub use super::layout::QuarantineState;
use super::layout::{parse_quarantined_name, with_state};
use super::{Durability, Log, LogConfig, RecoveryReport, StorageError};

/// A quarantined segment file in a log directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuarantinedFile {
    /// The file.
    pub path: PathBuf,
    /// The base offset of the segment it was.
    pub base: u64,
    /// Where it stands.
    pub state: QuarantineState,
}

/// The quarantined files of the log in `dir` (repaired ones included), by base offset then
/// name.
///
/// # Errors
/// [`StorageError::Io`] when the directory cannot be listed.
pub fn quarantined_files(dir: &Path) -> Result<Vec<QuarantinedFile>, StorageError> {
    let rd = fs::read_dir(dir).map_err(|e| StorageError::io("list directory", dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| StorageError::io("list directory", dir, e))?;
        let name = entry.file_name();
        if let Some((base, state)) = name.to_str().and_then(parse_quarantined_name) {
            out.push(QuarantinedFile {
                path: entry.path(),
                base,
                state,
            });
        }
    }
    out.sort_by(|a, b| (a.base, &a.path).cmp(&(b.base, &b.path)));
    Ok(out)
}

/// An intact record found after the damage of a quarantined segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SalvagedRecord {
    /// Its byte position in the quarantined file.
    pub position: u64,
    /// The offset it was written with (it gets a new one when re-appended).
    pub old_offset: u64,
    /// Its kind.
    pub kind: u8,
    /// Its body length.
    pub body_len: u32,
}

/// What a quarantined file holds beyond its valid prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SalvageScan {
    /// The first byte that is not a record in sequence, and why (`None`: the whole file reads
    /// in sequence, there is no damage).
    pub damage: Option<(u64, &'static str)>,
    /// The intact records after the damage, in file order.
    pub records: Vec<SalvagedRecord>,
    /// The byte ranges after the damage that hold no intact record.
    pub skipped: Vec<Range<u64>>,
}

impl SalvageScan {
    /// The lowest and highest old offsets of the salvaged records.
    pub fn old_offsets(&self) -> Option<RangeInclusive<u64>> {
        let min = self.records.iter().map(|r| r.old_offset).min()?;
        let max = self.records.iter().map(|r| r.old_offset).max()?;
        Some(min..=max)
    }
}

/// Scans the bytes of a quarantined segment whose base offset is `base`.
fn salvage(data: &[u8], base: u64) -> SalvageScan {
    let mut p = 0usize;
    let mut expected = base;
    let why = loop {
        if p == data.len() {
            break None;
        }
        match decode_at(&data[p..], MAX_RECORD_LIMIT) {
            Decoded::Record { offset, total, .. } if offset == expected => {
                p += total;
                expected += 1;
            }
            Decoded::Record { .. } => break Some("a valid record with an offset out of sequence"),
            Decoded::Incomplete => break Some("record runs past the end of the file"),
            Decoded::Invalid(why) => break Some(why),
            Decoded::UnknownVersion(_) => {
                break Some(
                    "a record of an unknown format version (written by a newer pinstream?)",
                );
            }
        }
    };
    let Some(why) = why else {
        return SalvageScan {
            damage: None,
            records: Vec::new(),
            skipped: Vec::new(),
        };
    };
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    let mut cursor = p;
    for r in intact_iter(data, p, MAX_RECORD_LIMIT) {
        if r.position > cursor {
            skipped.push(cursor as u64..r.position as u64);
        }
        cursor = r.position + r.total;
        records.push(SalvagedRecord {
            position: r.position as u64,
            old_offset: r.offset,
            kind: r.kind,
            body_len: (r.total - RECORD_HEADER_LEN) as u32,
        });
    }
    if cursor < data.len() {
        skipped.push(cursor as u64..data.len() as u64);
    }
    SalvageScan {
        damage: Some((p as u64, why)),
        records,
        skipped,
    }
}

/// What became of one quarantined file.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RepairOutcome {
    /// Its intact records were appended under `offsets`; the file was renamed `renamed_to`.
    Repaired {
        /// The new offsets of the re-appended records, in file order.
        offsets: RangeInclusive<u64>,
        /// The file's new name (`….repaired`).
        renamed_to: PathBuf,
    },
    /// A dry run: the records would be re-appended; nothing was changed.
    WouldRepair,
    /// No intact record follows the damage: nothing to re-append; left quarantined.
    NothingIntact,
    /// The file reads in sequence to its end: every record is in the live prefix already.
    NoDamage,
    /// A `.repairing` file: an earlier repair was interrupted after it began appending.
    Interrupted,
    /// Repaired earlier (`.repaired`).
    AlreadyRepaired,
}

/// One quarantined file, what it holds and what was done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentRepair {
    /// The file as found.
    pub file: QuarantinedFile,
    /// What it holds after its valid prefix (empty for files not scanned: interrupted or
    /// already repaired ones).
    pub scan: SalvageScan,
    /// What was done.
    pub outcome: RepairOutcome,
}

/// What [`repair_log`] did in one log directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRepair {
    /// The log directory.
    pub dir: PathBuf,
    /// The recovery that ran when the log was opened to append (`None`: the log was not
    /// opened, nothing needed appending or it was a dry run).
    pub recovery: Option<RecoveryReport>,
    /// One entry per quarantined file.
    pub segments: Vec<SegmentRepair>,
}

impl LogRepair {
    /// Records re-appended (or, in a dry run, that would be).
    pub fn records_recovered(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| {
                matches!(
                    s.outcome,
                    RepairOutcome::Repaired { .. } | RepairOutcome::WouldRepair
                )
            })
            .map(|s| s.scan.records.len())
            .sum()
    }
}

fn ranges(skipped: &[Range<u64>]) -> String {
    let list: Vec<String> = skipped
        .iter()
        .map(|r| format!("{}..{} ({} bytes)", r.start, r.end, r.end - r.start))
        .collect();
    list.join(", ")
}

impl fmt::Display for SegmentRepair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file.path.display())?;
        let s = &self.scan;
        if let Some((at, why)) = s.damage {
            write!(f, "damaged at byte {at} ({why}); ")?;
        }
        let n = s.records.len();
        let old = s.old_offsets().map_or_else(String::new, |r| {
            format!(" (old offsets {}..={})", r.start(), r.end())
        });
        match &self.outcome {
            RepairOutcome::Repaired {
                offsets,
                renamed_to,
            } => {
                write!(
                    f,
                    "{n} intact record(s){old} recovered as offsets {}..={}",
                    offsets.start(),
                    offsets.end()
                )?;
                if !s.skipped.is_empty() {
                    write!(f, "; skipped bytes {}", ranges(&s.skipped))?;
                }
                write!(f, "; kept as {}", renamed_to.display())
            }
            RepairOutcome::WouldRepair => {
                write!(f, "would recover {n} intact record(s){old}")?;
                if !s.skipped.is_empty() {
                    write!(f, "; would skip bytes {}", ranges(&s.skipped))?;
                }
                write!(f, " (dry run: nothing changed)")
            }
            RepairOutcome::NothingIntact => write!(
                f,
                "no intact record after the damage (bytes {} unreadable): nothing to recover, \
                 left quarantined",
                ranges(&s.skipped)
            ),
            RepairOutcome::NoDamage => write!(
                f,
                "every record reads in sequence: they are all in the live segment already; \
                 nothing to recover, left as is"
            ),
            RepairOutcome::Interrupted => write!(
                f,
                "an earlier repair was interrupted while appending its records, so some may be \
                 in the log already (see `pinstream log inspect`); left as is. If none of them \
                 are, remove the .repairing suffix and repair again"
            ),
            RepairOutcome::AlreadyRepaired => write!(f, "repaired earlier; kept, nothing to do"),
        }
    }
}

/// Renames `from` to `to` (refusing to replace a file) and fsyncs the directory.
fn rename_new(dir: &Path, from: &Path, to: &Path) -> Result<(), StorageError> {
    if to.exists() {
        return Err(StorageError::io(
            "rename quarantined segment",
            to,
            std::io::Error::new(std::io::ErrorKind::AlreadyExists, "the target exists"),
        ));
    }
    fs::rename(from, to).map_err(|e| StorageError::io("rename quarantined segment", from, e))?;
    sync_dir(dir)
}

/// Re-appends the intact records of every quarantined segment of the log in `dir` (see the
/// module docs); with `dry_run`, only says what it would do.
///
/// The log is opened (and so recovered) only when there is something to append. Records keep
/// their kind and body and get new offsets; the log is synced before each file is marked
/// `.repaired`.
///
/// # Errors
/// [`StorageError`] from reading a quarantined file, opening (recovering), appending to or
/// syncing the log, or renaming; what was done before the error stays done and is durable
/// up to the last sync.
pub fn repair_log(dir: &Path, dry_run: bool) -> Result<LogRepair, StorageError> {
    let mut segments = Vec::new();
    let mut data = Vec::new();
    for file in quarantined_files(dir)? {
        let (scan, outcome, bytes) = match file.state {
            QuarantineState::Repaired => (empty_scan(), RepairOutcome::AlreadyRepaired, None),
            QuarantineState::Repairing => (empty_scan(), RepairOutcome::Interrupted, None),
            QuarantineState::Quarantined => {
                let bytes =
                    fs::read(&file.path).map_err(|e| StorageError::io("read", &file.path, e))?;
                let scan = salvage(&bytes, file.base);
                let outcome = match (scan.damage, scan.records.is_empty()) {
                    (None, _) => RepairOutcome::NoDamage,
                    (Some(_), true) => RepairOutcome::NothingIntact,
                    // A real run turns it into `Repaired` below, once the records are in.
                    (Some(_), false) => RepairOutcome::WouldRepair,
                };
                let keep = matches!(outcome, RepairOutcome::WouldRepair) && !dry_run;
                (scan, outcome, keep.then_some(bytes))
            }
        };
        segments.push(SegmentRepair {
            file,
            scan,
            outcome,
        });
        data.push(bytes);
    }
    let mut report = LogRepair {
        dir: dir.to_path_buf(),
        recovery: None,
        segments,
    };
    if data.iter().all(Option::is_none) {
        return Ok(report);
    }

    let largest = report
        .segments
        .iter()
        .flat_map(|s| s.scan.records.iter().map(|r| r.body_len))
        .max()
        .unwrap_or(0);
    let mut cfg = LogConfig::new(dir);
    cfg.durability = Durability::Always;
    cfg.max_record_bytes = cfg.max_record_bytes.max(largest);
    cfg.write_buffer_bytes = cfg
        .write_buffer_bytes
        .max(RECORD_HEADER_LEN + largest as usize);
    let (mut log, recovery) = Log::open(cfg)?;
    report.recovery = Some(recovery);
    for (seg, bytes) in report.segments.iter_mut().zip(&data) {
        let Some(bytes) = bytes else { continue };
        let repairing = with_state(&seg.file.path, QuarantineState::Repairing);
        rename_new(dir, &seg.file.path, &repairing)?;
        let mut offsets = None::<(u64, u64)>;
        for r in &seg.scan.records {
            let start = r.position as usize + RECORD_HEADER_LEN;
            let body = &bytes[start..start + r.body_len as usize];
            let at = log.append(r.kind, body)?;
            offsets = Some(offsets.map_or((at, at), |(first, _)| (first, at)));
        }
        log.sync()?;
        let repaired = with_state(&seg.file.path, QuarantineState::Repaired);
        rename_new(dir, &repairing, &repaired)?;
        if let Some((first, last)) = offsets {
            seg.outcome = RepairOutcome::Repaired {
                offsets: first..=last,
                renamed_to: repaired,
            };
        }
    }
    log.close()?;
    Ok(report)
}

fn empty_scan() -> SalvageScan {
    SalvageScan {
        damage: None,
        records: Vec::new(),
        skipped: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::format::seal;

    fn record(offset: u64, body: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; RECORD_HEADER_LEN + body.len()];
        r[RECORD_HEADER_LEN..].copy_from_slice(body);
        seal(&mut r, offset, 1);
        r
    }

    #[test]
    fn salvage_finds_the_prefix_the_intact_records_and_the_gaps() {
        let mut data = record(10, b"a");
        data.extend(record(11, b"bb"));
        let damaged_at = data.len() as u64;
        let mut bad = record(12, b"ccc");
        bad[RECORD_HEADER_LEN] ^= 1;
        data.extend(&bad);
        let first = data.len() as u64;
        data.extend(record(13, b"dddd"));
        data.extend(record(14, b"e"));
        data.extend([0xAB; 7]);
        let scan = salvage(&data, 10);
        assert_eq!(scan.damage, Some((damaged_at, "CRC32C mismatch")));
        let offs: Vec<u64> = scan.records.iter().map(|r| r.old_offset).collect();
        assert_eq!(offs, [13, 14]);
        assert_eq!(scan.records[0].position, first);
        assert_eq!(scan.records[0].body_len, 4);
        let end = data.len() as u64;
        assert_eq!(scan.skipped, [damaged_at..first, end - 7..end]);
        assert_eq!(scan.old_offsets(), Some(13..=14));

        // No damage: nothing to salvage.
        let clean = record(10, b"a");
        assert_eq!(salvage(&clean, 10).damage, None);
        // Damage at byte 0 and nothing after.
        let scan = salvage(&[0u8; 30], 0);
        assert_eq!(scan.damage.map(|d| d.0), Some(0));
        assert!(scan.records.is_empty());
        assert_eq!(scan.skipped.len(), 1);
        assert_eq!(scan.skipped[0], 0..30);
    }
}
