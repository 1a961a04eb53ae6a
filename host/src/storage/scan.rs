//! Streaming scans of segment files through one fixed-size buffer: what recovery runs over
//! every segment at start-up and what [`check_segment`] (`pinstream log verify`) runs to list
//! every damaged region.
//!
//! A [`SegmentFile`] holds a window of [`SCAN_BUFFER_BYTES`] of the file. A record that fits
//! in the window is checked in place; a larger one (bodies may reach [`MAX_RECORD_LIMIT`]) has
//! its CRC computed chunk by chunk through the same buffer, so the memory a scan takes does not
//! grow with the segment or the record size.
//!
//! After damage, the next CRC-valid record is searched byte by byte ([`SegmentFile::find_valid`]),
//! as repair's salvage scan does in memory.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use pinstream_core::wire::{crc32c, crc32c_update};

use super::StorageError;
use super::format::{
    DAMAGED_VERSION, Decoded, FORMAT_VERSION, RECORD_HEADER_LEN, decode_at, header_check,
    plausible_header,
};

/// The scan buffer: the bytes of a segment held in memory at once, whatever its size.
pub const SCAN_BUFFER_BYTES: usize = 1 << 20;

/// A segment file read through a fixed window.
pub(crate) struct SegmentFile {
    path: PathBuf,
    file: File,
    /// The file's length when it was opened; nothing past it is read.
    len: u64,
    /// `buf[..held]` holds the file's bytes from `at`.
    buf: Box<[u8]>,
    at: u64,
    held: usize,
}

impl SegmentFile {
    /// Opens `path` read-only.
    ///
    /// # Errors
    /// [`StorageError::Io`] naming the file when it cannot be opened or stat'ed.
    pub(crate) fn open(path: &Path) -> Result<Self, StorageError> {
        let file = super::files::open_read(path).map_err(|e| StorageError::io("open", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| StorageError::io("stat", path, e))?
            .len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            len,
            buf: vec![0u8; SCAN_BUFFER_BYTES].into_boxed_slice(),
            at: 0,
            held: 0,
        })
    }

    /// The file's length when opened.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Makes the window hold `[pos, pos + need)` (`need` at most the buffer) or as much of it
    /// as the file has; returns how many bytes from `pos` are held.
    fn fill(&mut self, pos: u64, need: usize) -> Result<usize, StorageError> {
        debug_assert!(need <= SCAN_BUFFER_BYTES);
        let end = self.at + self.held as u64;
        let want = need.min(usize::try_from(self.len.saturating_sub(pos)).unwrap_or(usize::MAX));
        if pos >= self.at && pos + want as u64 <= end {
            return Ok((end - pos) as usize);
        }
        let room = usize::try_from(self.len.saturating_sub(pos))
            .unwrap_or(usize::MAX)
            .min(SCAN_BUFFER_BYTES);
        let mut n = 0;
        while n < room {
            match self.file.read_at(&mut self.buf[n..room], pos + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.held = 0;
                    return Err(StorageError::io("read", &self.path, e));
                }
            }
        }
        self.at = pos;
        self.held = n;
        Ok(n)
    }

    /// The CRC a record with `header` and the `len` body bytes at `body_pos` would carry;
    /// `None` when the file ends first.
    fn stream_crc(
        &mut self,
        header: &[u8; RECORD_HEADER_LEN],
        body_pos: u64,
        len: u64,
    ) -> Result<Option<u32>, StorageError> {
        let mut crc = crc32c_update(crc32c(&header[0..4]), &header[8..]);
        let mut done = 0u64;
        while done < len {
            let chunk = usize::try_from(len - done)
                .unwrap_or(usize::MAX)
                .min(SCAN_BUFFER_BYTES);
            let have = self.fill(body_pos + done, chunk)?;
            if have < chunk {
                return Ok(None);
            }
            let off = (body_pos + done - self.at) as usize;
            crc = crc32c_update(crc, &self.buf[off..off + chunk]);
            done += chunk as u64;
        }
        Ok(Some(crc))
    }

    /// Decodes the record at `pos` as [`decode_at`] does, reading as little as it needs.
    ///
    /// # Errors
    /// [`StorageError::Io`] when the file cannot be read.
    pub(crate) fn decode(&mut self, pos: u64, max_body: u32) -> Result<Decoded, StorageError> {
        let have = self.fill(pos, RECORD_HEADER_LEN)?;
        if have < RECORD_HEADER_LEN {
            return Ok(Decoded::Incomplete);
        }
        let off = (pos - self.at) as usize;
        let mut header = [0u8; RECORD_HEADER_LEN];
        header.copy_from_slice(&self.buf[off..off + RECORD_HEADER_LEN]);
        let len = match header_check(&header, max_body) {
            Ok(len) => len,
            Err(d) => return Ok(d),
        };
        let total = RECORD_HEADER_LEN + len as usize;
        if pos + total as u64 > self.len {
            return Ok(Decoded::Incomplete);
        }
        if total <= SCAN_BUFFER_BYTES {
            let have = self.fill(pos, total)?;
            if have < total {
                return Ok(Decoded::Incomplete);
            }
            let off = (pos - self.at) as usize;
            return Ok(decode_at(&self.buf[off..off + total], max_body));
        }
        // A record larger than the window: stream its body through it.
        let stored = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let body_pos = pos + RECORD_HEADER_LEN as u64;
        let Some(crc) = self.stream_crc(&header, body_pos, u64::from(len))? else {
            return Ok(Decoded::Incomplete);
        };
        if header[17] != FORMAT_VERSION {
            // An unknown version only when the record is whole as stored; a damaged version
            // byte or plain damage otherwise, as `decode_at` decides.
            if crc == stored {
                return Ok(Decoded::UnknownVersion(header[17]));
            }
            let mut restored = header;
            restored[17] = FORMAT_VERSION;
            return Ok(
                match self.stream_crc(&restored, body_pos, u64::from(len))? {
                    Some(c) if c == stored => Decoded::Invalid(DAMAGED_VERSION),
                    _ => Decoded::Invalid("CRC32C mismatch"),
                },
            );
        }
        if crc != stored {
            return Ok(Decoded::Invalid("CRC32C mismatch"));
        }
        Ok(Decoded::Record {
            offset: u64::from_le_bytes([
                header[8], header[9], header[10], header[11], header[12], header[13], header[14],
                header[15],
            ]),
            kind: header[16],
            total,
        })
    }

    /// The first position `>= from` where a CRC-valid record starts, with the record.
    ///
    /// # Errors
    /// [`StorageError::Io`] when the file cannot be read.
    pub(crate) fn find_valid(
        &mut self,
        from: u64,
        max_body: u32,
    ) -> Result<Option<(u64, Decoded)>, StorageError> {
        let mut q = from;
        while q + RECORD_HEADER_LEN as u64 <= self.len {
            let have = self.fill(q, SCAN_BUFFER_BYTES)?;
            if have < RECORD_HEADER_LEN {
                return Ok(None);
            }
            let off = (q - self.at) as usize;
            let window_at = self.at;
            let window_to_eof = window_at + self.held as u64 >= self.len;
            let mut i = off;
            let mut long_candidate = None;
            while i + RECORD_HEADER_LEN <= off + have {
                if !plausible_header(&self.buf[i..]) {
                    i += 1;
                    continue;
                }
                match decode_at(&self.buf[i..off + have], max_body) {
                    d @ Decoded::Record { .. } => return Ok(Some((window_at + i as u64, d))),
                    // A plausible header whose record runs past the window, not the file.
                    Decoded::Incomplete if !window_to_eof => {
                        long_candidate = Some(window_at + i as u64);
                        break;
                    }
                    _ => i += 1,
                }
            }
            match long_candidate {
                Some(p) => {
                    if let d @ Decoded::Record { .. } = self.decode(p, max_body)? {
                        return Ok(Some((p, d)));
                    }
                    q = p + 1;
                }
                None if window_to_eof => return Ok(None),
                None => q = window_at + i as u64,
            }
        }
        Ok(None)
    }

    /// The CRC-valid records from `from` on, found byte by byte and skipped whole: their
    /// count and highest offset.
    ///
    /// # Errors
    /// [`StorageError::Io`] when the file cannot be read.
    pub(crate) fn intact_after(
        &mut self,
        from: u64,
        max_body: u32,
    ) -> Result<(u64, Option<u64>), StorageError> {
        let (mut count, mut highest) = (0u64, None::<u64>);
        let mut p = from;
        while let Some((q, d)) = self.find_valid(p, max_body)? {
            let Decoded::Record { offset, total, .. } = d else {
                break;
            };
            count += 1;
            highest = Some(highest.map_or(offset, |h| h.max(offset)));
            p = q + total as u64;
        }
        Ok((count, highest))
    }

    /// The body of the record of `total` bytes at `pos`, when the window can hold it.
    fn body(&mut self, pos: u64, total: usize) -> Result<Option<&[u8]>, StorageError> {
        if total > SCAN_BUFFER_BYTES {
            return Ok(None);
        }
        let have = self.fill(pos, total)?;
        if have < total {
            return Ok(None);
        }
        let off = (pos - self.at) as usize;
        Ok(Some(&self.buf[off + RECORD_HEADER_LEN..off + total]))
    }
}

/// A damaged region of a segment found by [`check_segment`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedRegion {
    /// The bytes that hold no record in sequence: from the first bad byte to the next
    /// CRC-valid record (or the end of the file).
    pub bytes: Range<u64>,
    /// What was wrong at its first byte.
    pub why: &'static str,
    /// The offsets the region stands in place of: from the record expected there to the
    /// offset of the next valid record (empty when that record does not continue above it).
    pub offsets: Range<u64>,
    /// The region runs to the end of the file.
    pub at_end: bool,
}

/// What [`check_segment`] found in one segment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentCheck {
    /// The file's length.
    pub len: u64,
    /// CRC-valid records read (after damage too).
    pub records: u64,
    /// The lowest and highest offset read.
    pub first_offset: Option<u64>,
    /// The highest offset read.
    pub last_offset: Option<u64>,
    /// The offset after the last record read (the segment's base when it holds none).
    pub next_offset: u64,
    /// Every damaged region, in file order.
    pub damage: Vec<DamagedRegion>,
}

/// Reads every record of segment file `path` (base offset `base`) through the fixed scan
/// buffer, checking each CRC and that offsets follow each other; after damage it searches for
/// the next CRC-valid record and goes on from there, so every damaged region is listed.
/// `on_record(position, offset, kind, body)` sees every valid record (`body` is `None` for a
/// record larger than the scan buffer). Changes nothing.
///
/// # Errors
/// [`StorageError::Io`] naming the file when it cannot be opened or read.
pub fn check_segment(
    path: &Path,
    base: u64,
    max_body: u32,
    mut on_record: impl FnMut(u64, u64, u8, Option<&[u8]>),
) -> Result<SegmentCheck, StorageError> {
    let mut seg = SegmentFile::open(path)?;
    let mut check = SegmentCheck {
        len: seg.len(),
        next_offset: base,
        ..SegmentCheck::default()
    };
    let mut p = 0u64;
    let mut expected = base;
    while p < seg.len() {
        let why = match seg.decode(p, max_body)? {
            Decoded::Record {
                offset,
                kind,
                total,
            } if offset == expected => {
                check.records += 1;
                check.first_offset.get_or_insert(offset);
                check.last_offset = Some(offset);
                let body = seg.body(p, total)?;
                on_record(p, offset, kind, body);
                p += total as u64;
                expected += 1;
                check.next_offset = expected;
                continue;
            }
            Decoded::Record { .. } => "a valid record with an offset out of sequence",
            Decoded::Incomplete => "record runs past the end of the file",
            Decoded::Invalid(why) => why,
            Decoded::UnknownVersion(_) => {
                "a record of an unknown format version (written by a newer pinstream?)"
            }
        };
        match seg.find_valid(p + 1, max_body)? {
            Some((q, Decoded::Record { offset, .. })) => {
                check.damage.push(DamagedRegion {
                    bytes: p..q,
                    why,
                    offsets: expected..offset.max(expected),
                    at_end: false,
                });
                expected = offset;
                p = q;
            }
            _ => {
                check.damage.push(DamagedRegion {
                    bytes: p..seg.len(),
                    why,
                    offsets: expected..expected,
                    at_end: true,
                });
                break;
            }
        }
    }
    Ok(check)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::storage::format::seal;

    fn record(offset: u64, body_len: usize, fill: u8) -> Vec<u8> {
        let mut r = vec![fill; RECORD_HEADER_LEN + body_len];
        seal(&mut r, offset, 1);
        r
    }

    fn file(tag: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("pinstream-scan-{}-{tag}", std::process::id()));
        fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn records_larger_than_the_buffer_are_streamed_and_checked() {
        let big = 3 * SCAN_BUFFER_BYTES + 17;
        let mut bytes = record(0, 10, 1);
        bytes.extend_from_slice(&record(1, big, 2));
        bytes.extend_from_slice(&record(2, 5, 3));
        let p = file("big", &bytes);
        let mut seg = SegmentFile::open(&p).unwrap();
        let at = (RECORD_HEADER_LEN + 10) as u64;
        let d = seg.decode(at, MAX).unwrap();
        assert_eq!(d, decode_at(&bytes[at as usize..], MAX));
        assert!(matches!(d, Decoded::Record { offset: 1, .. }), "{d:?}");
        // A flipped bit deep in the body; then the record cut short.
        let mut flipped = bytes.clone();
        flipped[at as usize + 2 * SCAN_BUFFER_BYTES] ^= 4;
        fs::write(&p, &flipped).unwrap();
        let mut seg = SegmentFile::open(&p).unwrap();
        assert_eq!(
            seg.decode(at, MAX).unwrap(),
            Decoded::Invalid("CRC32C mismatch")
        );
        // The next valid record is found past the damaged one, across windows.
        let next = at + (RECORD_HEADER_LEN + big) as u64;
        assert!(matches!(seg.find_valid(at + 1, MAX).unwrap(), Some((q, _)) if q == next));
        fs::write(&p, &bytes[..next as usize - 1]).unwrap();
        let mut seg = SegmentFile::open(&p).unwrap();
        assert_eq!(seg.decode(at, MAX).unwrap(), Decoded::Incomplete);
        let _ = fs::remove_file(&p);
    }

    const MAX: u32 = 64 << 20;

    #[test]
    fn check_segment_lists_every_damaged_region_and_reads_on() {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for i in 0..10 {
            starts.push(bytes.len());
            bytes.extend_from_slice(&record(100 + i, 30 + i as usize, i as u8));
        }
        bytes[starts[2] + RECORD_HEADER_LEN + 3] ^= 1; // record 102
        bytes[starts[5]..starts[7]].fill(0); // records 105 and 106
        bytes.truncate(starts[9] + 7); // record 109 torn
        let p = file("regions", &bytes);
        let mut seen = Vec::new();
        let check = check_segment(&p, 100, MAX, |_, o, _, body| {
            assert!(body.is_some());
            seen.push(o);
        })
        .unwrap();
        assert_eq!(seen, [100, 101, 103, 104, 107, 108]);
        assert_eq!(check.records, 6);
        let regions: Vec<(Range<u64>, Range<u64>, bool)> = check
            .damage
            .iter()
            .map(|d| (d.bytes.clone(), d.offsets.clone(), d.at_end))
            .collect();
        let s = |i: usize| starts[i] as u64;
        assert_eq!(
            regions,
            [
                (s(2)..s(3), 102..103, false),
                (s(5)..s(7), 105..107, false),
                (s(9)..bytes.len() as u64, 109..109, true),
            ]
        );
        assert_eq!(check.next_offset, 109);
        let _ = fs::remove_file(&p);
    }
}
