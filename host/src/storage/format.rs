//! The on-disk format: record framing, index entries and the checkpoint. File names come
//! from [`layout`](super::layout) (re-exported here for the storage code that reads and writes
//! the files). Everything here is pure (bytes in, values out) except the directory helpers at
//! the end.

use std::fs::{self, File};
use std::path::Path;

use pinstream_core::record::{self, record_crc};
use pinstream_core::wire::{crc32c, crc32c_update};

use super::StorageError;
use super::layout::parse_segment_name;
// Re-exported for the log writer, which takes its file names from here.
pub(crate) use super::layout::{CHECKPOINT_FILE, index_path, segment_path};

pub use pinstream_core::record::RECORD_HEADER_LEN;
/// The largest `max_record_bytes` a log accepts (1 GiB); readers use it as their bound.
pub const MAX_RECORD_LIMIT: u32 = 1 << 30;
pub(crate) use pinstream_core::record::FORMAT_VERSION;
/// Bytes per sparse index entry: `offset u64 | position u64`.
pub(crate) const INDEX_ENTRY_LEN: usize = 16;
/// The checkpoint's length on disk.
pub(crate) const CHECKPOINT_LEN: usize = 48;
const CHECKPOINT_MAGIC: &[u8; 8] = b"PSCKPT01";

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Fills in the header of `record` (header + body, body already in place) for `offset` and
/// `kind`, CRC last: the framing of [`pinstream_core::record`], defined there once.
pub(crate) fn seal(record: &mut [u8], offset: u64, kind: u8) {
    debug_assert!(record.len() >= RECORD_HEADER_LEN);
    record::seal(record, offset, kind);
}

/// What the bytes at a position hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A whole record that passes its CRC.
    Record {
        /// Its offset.
        offset: u64,
        /// Its kind.
        kind: u8,
        /// Header + body bytes.
        total: usize,
    },
    /// The header is plausible but the bytes end before the record does.
    Incomplete,
    /// Not a valid record.
    Invalid(&'static str),
    /// A record whose format version byte (17) is neither [`FORMAT_VERSION`] nor a damaged
    /// copy of it: written by a newer pinstream. Nothing can say where it ends or whether it
    /// is intact, so it must never be taken for damage and deleted.
    UnknownVersion(u8),
}

/// Why a record whose version byte is wrong but whose CRC passes with it restored is invalid.
pub(crate) const DAMAGED_VERSION: &str = "damaged format version byte (CRC32C mismatch)";

/// Checks the framing of a header (at least [`RECORD_HEADER_LEN`] bytes): the body length it
/// announces, or what the header is.
pub(crate) fn header_check(header: &[u8], max_body: u32) -> Result<u32, Decoded> {
    let len = u32_at(header, 0);
    let version = header[17];
    let known = version == FORMAT_VERSION;
    if len > max_body {
        // Whatever the version: a record of any version above the limit is not one this
        // build could have been configured to keep.
        return Err(Decoded::Invalid(
            "length field above the maximum record size",
        ));
    }
    if version == 0 || (known && (header[18] != 0 || header[19] != 0)) {
        return Err(Decoded::Invalid(
            "format version 0 or reserved bytes not zero",
        ));
    }
    Ok(len)
}

/// The CRC of `record` as if its version byte were `version`.
fn crc_with_version(record: &[u8], version: u8) -> u32 {
    let mut head = [0u8; RECORD_HEADER_LEN - 8];
    head.copy_from_slice(&record[8..RECORD_HEADER_LEN]);
    head[17 - 8] = version;
    let crc = crc32c_update(crc32c(&record[0..4]), &head);
    crc32c_update(crc, &record[RECORD_HEADER_LEN..])
}

/// Decodes the record at the start of `buf`, checking its framing and CRC.
///
/// A version byte other than [`FORMAT_VERSION`] (and 0) is [`Decoded::UnknownVersion`] only
/// when the record's CRC passes as stored (a record a newer build wrote is whole under the
/// framing's CRC); when it passes with the byte set back to [`FORMAT_VERSION`] it is a
/// flipped bit, and otherwise plain damage: both [`Decoded::Invalid`], never a reason to
/// refuse the log.
pub(crate) fn decode_at(buf: &[u8], max_body: u32) -> Decoded {
    if buf.len() < RECORD_HEADER_LEN {
        return Decoded::Incomplete;
    }
    let len = match header_check(buf, max_body) {
        Ok(len) => len,
        Err(d) => return d,
    };
    let total = RECORD_HEADER_LEN + len as usize;
    if buf.len() < total {
        return Decoded::Incomplete;
    }
    let stored = u32_at(buf, 4);
    if buf[17] != FORMAT_VERSION {
        return if record_crc(&buf[..total]) == stored {
            Decoded::UnknownVersion(buf[17])
        } else if crc_with_version(&buf[..total], FORMAT_VERSION) == stored {
            Decoded::Invalid(DAMAGED_VERSION)
        } else {
            Decoded::Invalid("CRC32C mismatch")
        };
    }
    if record_crc(&buf[..total]) != stored {
        return Decoded::Invalid("CRC32C mismatch");
    }
    Decoded::Record {
        offset: u64_at(buf, 8),
        kind: buf[16],
        total,
    }
}

/// The body length a header announces (for readers that fetch the body separately).
pub(crate) fn header_body_len(header: &[u8]) -> u32 {
    u32_at(header, 0)
}

/// Whether a header (at least [`RECORD_HEADER_LEN`] bytes) could start a current-version
/// record: the cheap test a byte-by-byte search makes before computing a CRC.
pub(crate) fn plausible_header(header: &[u8]) -> bool {
    header[17] == FORMAT_VERSION && header[18] == 0 && header[19] == 0
}

/// The first position `>= from` where a CRC-valid record starts, if any.
pub(crate) fn find_valid_record(buf: &[u8], from: usize, max_body: u32) -> Option<usize> {
    (from..buf.len().saturating_sub(RECORD_HEADER_LEN - 1)).find(|&p| {
        plausible_header(&buf[p..])
            && matches!(decode_at(&buf[p..], max_body), Decoded::Record { .. })
    })
}

/// One intact record found by [`intact_iter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Intact {
    /// Its byte position in the buffer.
    pub position: usize,
    /// Its offset (as written; not necessarily in sequence).
    pub offset: u64,
    /// Its kind.
    pub kind: u8,
    /// Header + body bytes.
    pub total: usize,
}

/// The intact (CRC-valid) records in `buf[from..]`, found byte by byte and skipped whole: what
/// recovery counts after damage and what a repair re-appends.
pub(crate) fn intact_iter(buf: &[u8], from: usize, max_body: u32) -> impl Iterator<Item = Intact> {
    let mut p = from;
    std::iter::from_fn(move || {
        let q = find_valid_record(buf, p, max_body)?;
        match decode_at(&buf[q..], max_body) {
            Decoded::Record {
                offset,
                kind,
                total,
            } => {
                p = q + total;
                Some(Intact {
                    position: q,
                    offset,
                    kind,
                    total,
                })
            }
            // `find_valid_record` found a record at `q`: unreachable, but never loop on it.
            _ => None,
        }
    })
}

/// Intact (CRC-valid) records in `buf[from..]`, found byte by byte and skipped whole:
/// their count and highest offset.
#[cfg(test)]
pub(crate) fn intact_records(buf: &[u8], from: usize, max_body: u32) -> (u64, Option<u64>) {
    intact_iter(buf, from, max_body).fold((0, None), |(count, max), r| {
        (
            count + 1,
            Some(max.map_or(r.offset, |m: u64| m.max(r.offset))),
        )
    })
}

/// One sparse index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    /// A record's offset.
    pub offset: u64,
    /// Its byte position in the segment.
    pub position: u64,
}

impl IndexEntry {
    pub(crate) fn to_bytes(self) -> [u8; INDEX_ENTRY_LEN] {
        let mut b = [0u8; INDEX_ENTRY_LEN];
        b[0..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..16].copy_from_slice(&self.position.to_le_bytes());
        b
    }
}

/// Parses an index file of a segment with base `base` and `seg_len` bytes; an error says why
/// it cannot be used (then it is rebuilt, or ignored by readers).
pub(crate) fn parse_index(
    bytes: &[u8],
    base: u64,
    seg_len: u64,
) -> Result<Vec<IndexEntry>, &'static str> {
    if bytes.len() % INDEX_ENTRY_LEN != 0 {
        return Err("length is not a whole number of entries");
    }
    let mut out: Vec<IndexEntry> = Vec::with_capacity(bytes.len() / INDEX_ENTRY_LEN);
    for chunk in bytes.chunks_exact(INDEX_ENTRY_LEN) {
        let e = IndexEntry {
            offset: u64_at(chunk, 0),
            position: u64_at(chunk, 8),
        };
        match out.last() {
            None if e.offset != base || e.position != 0 => {
                return Err("first entry is not the segment's first record");
            }
            Some(prev) if e.offset <= prev.offset || e.position <= prev.position => {
                return Err("entries are not increasing");
            }
            _ => {}
        }
        if e.position >= seg_len {
            return Err("entry points past the end of the segment");
        }
        out.push(e);
    }
    Ok(out)
}

/// What a log's checkpoint says was synced: the bytes of segment `segment` before `position`
/// and every record below `next_offset`. A hint, as the checkpoint is: it is rewritten after
/// each sync (before the high watermark that sync allows is published to consumers), so what
/// it names is durable, and a power cut may take anything after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncedPoint {
    /// Base offset of the segment the checkpoint is in.
    pub segment: u64,
    /// Bytes of that segment known synced.
    pub position: u64,
    /// Offsets below this were synced.
    pub next_offset: u64,
}

/// The checkpoint of the log in `dir` (see [`SyncedPoint`]); `None` when it is missing or
/// not valid (a stale or torn hint, or durability `none`, which keeps none).
pub fn synced_point(dir: &Path) -> Option<SyncedPoint> {
    let bytes = super::files::read(&dir.join(CHECKPOINT_FILE)).ok()?;
    let c = Checkpoint::from_bytes(&bytes).ok()?;
    Some(SyncedPoint {
        segment: c.segment,
        position: c.position,
        next_offset: c.next_offset,
    })
}

/// A known-good point of the log: everything before `position` in segment `segment` was
/// synced, and the next record there has offset `next_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub segment: u64,
    pub position: u64,
    pub next_offset: u64,
    /// Position of the record just before `position` (unused when `position == 0`).
    pub last_record_pos: u64,
}

impl Checkpoint {
    pub(crate) fn to_bytes(self) -> [u8; CHECKPOINT_LEN] {
        let mut b = [0u8; CHECKPOINT_LEN];
        b[0..8].copy_from_slice(CHECKPOINT_MAGIC);
        b[8..16].copy_from_slice(&self.segment.to_le_bytes());
        b[16..24].copy_from_slice(&self.position.to_le_bytes());
        b[24..32].copy_from_slice(&self.next_offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.last_record_pos.to_le_bytes());
        let crc = crc32c(&b[0..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub(crate) fn from_bytes(b: &[u8]) -> Result<Self, &'static str> {
        if b.len() != CHECKPOINT_LEN {
            return Err("wrong length");
        }
        if &b[0..8] != CHECKPOINT_MAGIC {
            return Err("bad magic");
        }
        if crc32c(&b[0..40]) != u32_at(b, 40) {
            return Err("CRC32C mismatch");
        }
        Ok(Self {
            segment: u64_at(b, 8),
            position: u64_at(b, 16),
            next_offset: u64_at(b, 24),
            last_record_pos: u64_at(b, 32),
        })
    }
}

/// The segments in `dir`, ascending by base offset.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<u64>, StorageError> {
    let rd = fs::read_dir(dir).map_err(|e| StorageError::io("list directory", dir, e))?;
    let mut bases = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| StorageError::io("list directory", dir, e))?;
        if let Some(base) = entry.file_name().to_str().and_then(parse_segment_name) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// fsyncs a directory so that file creations, renames and removals in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("fsync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: u64, kind: u8, body: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; RECORD_HEADER_LEN + body.len()];
        r[RECORD_HEADER_LEN..].copy_from_slice(body);
        seal(&mut r, offset, kind);
        r
    }

    #[test]
    fn every_single_bit_flip_in_a_record_is_detected() {
        let r = record(7, 1, b"some body bytes");
        assert_eq!(
            decode_at(&r, 1024),
            Decoded::Record {
                offset: 7,
                kind: 1,
                total: r.len()
            }
        );
        for bit in 0..r.len() * 8 {
            let mut f = r.clone();
            f[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(decode_at(&f, 1024), Decoded::Record { .. }),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn truncated_records_are_incomplete_and_scans_skip_garbage() {
        let r = record(1, 2, b"abc");
        for cut in 0..r.len() {
            assert_eq!(decode_at(&r[..cut], 1024), Decoded::Incomplete);
        }
        let mut buf = vec![0xEEu8; 5];
        buf.extend_from_slice(&r);
        buf.extend_from_slice(&record(9, 2, b""));
        assert_eq!(find_valid_record(&buf, 0, 1024), Some(5));
        assert_eq!(intact_records(&buf, 0, 1024), (2, Some(9)));
        assert_eq!(intact_records(&buf[..buf.len() - 1], 6, 1024), (0, None));
    }

    #[test]
    fn index_and_checkpoint_parse_only_when_consistent() {
        let e0 = IndexEntry {
            offset: 10,
            position: 0,
        };
        let e1 = IndexEntry {
            offset: 12,
            position: 100,
        };
        let mut b = e0.to_bytes().to_vec();
        b.extend_from_slice(&e1.to_bytes());
        assert_eq!(parse_index(&b, 10, 200), Ok(vec![e0, e1]));
        assert!(parse_index(&b, 10, 100).is_err());
        assert!(parse_index(&b, 11, 200).is_err());
        assert!(parse_index(&b[..20], 10, 200).is_err());
        let mut rev = e1.to_bytes().to_vec();
        rev.extend_from_slice(&e0.to_bytes());
        assert!(parse_index(&rev, 10, 200).is_err());

        let c = Checkpoint {
            segment: 5,
            position: 77,
            next_offset: 9,
            last_record_pos: 40,
        };
        let bytes = c.to_bytes();
        assert_eq!(Checkpoint::from_bytes(&bytes), Ok(c));
        for i in 0..44 {
            let mut f = bytes;
            f[i] ^= 0x10;
            assert!(Checkpoint::from_bytes(&f).is_err());
        }
    }

    #[test]
    fn synced_point_reads_a_valid_checkpoint_only() {
        let dir =
            std::env::temp_dir().join(format!("pinstream-synced-point-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        assert_eq!(synced_point(&dir), None, "no checkpoint file");
        let c = Checkpoint {
            segment: 3,
            position: 4096,
            next_offset: 21,
            last_record_pos: 3900,
        };
        let path = dir.join(CHECKPOINT_FILE);
        fs::write(&path, c.to_bytes()).unwrap();
        assert_eq!(
            synced_point(&dir),
            Some(SyncedPoint {
                segment: 3,
                position: 4096,
                next_offset: 21
            })
        );
        let mut torn = c.to_bytes();
        torn[20] ^= 1;
        fs::write(&path, torn).unwrap();
        assert_eq!(
            synced_point(&dir),
            None,
            "a damaged checkpoint says nothing"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod version_tests {
    use super::*;

    #[test]
    fn a_newer_version_is_unknown_and_a_flipped_version_bit_is_damage() {
        let mut r = vec![7u8; RECORD_HEADER_LEN + 9];
        seal(&mut r, 3, 1);
        let mut v2 = r.clone();
        v2[17] = 2;
        let crc = crc32c_update(crc32c(&v2[0..4]), &v2[8..]);
        v2[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_at(&v2, 1024), Decoded::UnknownVersion(2));
        for bit in 0..8 {
            let mut f = r.clone();
            f[17] ^= 1 << bit;
            let want = if f[17] == 0 {
                Decoded::Invalid("format version 0 or reserved bytes not zero")
            } else {
                Decoded::Invalid(DAMAGED_VERSION)
            };
            assert_eq!(decode_at(&f, 1024), want, "bit {bit}");
        }
        // Garbage whose version byte is neither 0 nor 1 and whose CRC passes either way is
        // damage, not a newer format (it must never stop start-up).
        let mut g = r.clone();
        g[17] = 7;
        g[9] ^= 0x40;
        assert_eq!(decode_at(&g, 1024), Decoded::Invalid("CRC32C mismatch"));
        // A byte-by-byte search never stops at a record it cannot read.
        assert_eq!(find_valid_record(&v2, 0, 1024), None);
    }
}
