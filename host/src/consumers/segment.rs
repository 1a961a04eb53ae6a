//! Finding record boundaries in a log's segment files without reading the records
//! ([`Segment`]), for the DATA frames the server sends with `sendfile`.
//!
//! Known boundaries come free: the segment's sparse index (`offset → position` per
//! `storage.index_interval_bytes`, written after the records it points at) and the
//! published high watermark (offset and byte position). A frame ends at the furthest known
//! boundary within its limit. Record headers are read (`pread`, 4 KiB at a time) only
//! where no known boundary helps: to find a start offset from the index entry before it,
//! to cut a frame shorter than the next index entry (small credit), to step over a record
//! larger than the gap, and to find where a closed segment's last record ends. Every index
//! entry used is checked against the record header it points at (one 20-byte `pread`),
//! so a stale or damaged index costs a slower walk, never a frame cut mid-record.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use pinstream_core::record::RECORD_HEADER_LEN;

use crate::storage::files;
use crate::storage::layout::{index_path, segment_path};

/// Bytes of one index entry: `offset u64 | position u64`.
const INDEX_ENTRY_LEN: u64 = 16;
/// Bytes of headers read at once while walking records.
const WALK_CHUNK: usize = 4096;

/// A boundary between records: the byte `position` in the segment where the record with
/// `offset` starts (or the segment's records end).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Boundary {
    /// Byte position in the segment.
    pub position: u64,
    /// The offset of the record starting there.
    pub offset: u64,
}

/// Where the next frame of a connection can end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Records from the start to this boundary fit the limit (at least one record).
    Until(Boundary),
    /// The next record alone is `len` bytes, more than the limit.
    TooBig(u64),
}

/// One segment file open for reading, and its index if it has one.
#[derive(Debug)]
pub struct Segment {
    /// Its base offset.
    pub base: u64,
    file: File,
    index: Option<File>,
    /// Where its records end, once it is known to be closed and the end was found.
    closed_end: Option<Boundary>,
}

/// What a record header at a position says: `(offset, total length)`.
fn parse_header(h: &[u8]) -> Option<(u64, u64)> {
    let h = h.get(..RECORD_HEADER_LEN)?;
    let body_len = u32::from_le_bytes(h[0..4].try_into().ok()?);
    let offset = u64::from_le_bytes(h[8..16].try_into().ok()?);
    Some((offset, RECORD_HEADER_LEN as u64 + u64::from(body_len)))
}

fn corrupt(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl Segment {
    /// Opens segment `base` of the log in `dir` (its index too, if it can).
    ///
    /// # Errors
    /// The segment cannot be opened (`NotFound` when retention removed it).
    pub fn open(dir: &Path, base: u64) -> io::Result<Self> {
        let file = files::open_read(&segment_path(dir, base))?;
        let index = files::open_read(&index_path(dir, base)).ok();
        Ok(Self {
            base,
            file,
            index,
            closed_end: None,
        })
    }

    /// The file, for `sendfile`.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The record header at `position`: `(offset, total length)`.
    fn header_at(&self, position: u64) -> io::Result<(u64, u64)> {
        let mut h = [0u8; RECORD_HEADER_LEN];
        self.file.read_exact_at(&mut h, position)?;
        parse_header(&h).ok_or_else(|| corrupt(format!("short header at {position}")))
    }

    /// Index entries in the index file (0 without one).
    fn index_len(&self) -> u64 {
        self.index
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len() / INDEX_ENTRY_LEN)
    }

    /// Index entry `i`.
    fn entry(&self, i: u64) -> Option<Boundary> {
        let f = self.index.as_ref()?;
        let mut b = [0u8; INDEX_ENTRY_LEN as usize];
        f.read_exact_at(&mut b, i * INDEX_ENTRY_LEN).ok()?;
        Some(Boundary {
            offset: u64::from_le_bytes(b[0..8].try_into().ok()?),
            position: u64::from_le_bytes(b[8..16].try_into().ok()?),
        })
    }

    /// The last index entry for which `pred` holds, `pred` being true for a prefix of the
    /// entries (binary search over `pread`s); checked against the record it points at.
    pub(super) fn last_entry_where(&self, pred: impl Fn(Boundary) -> bool) -> Option<Boundary> {
        let (mut lo, mut hi) = (0u64, self.index_len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(self.entry(mid)?) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let e = self.entry(lo.checked_sub(1)?)?;
        // A stale index is not trusted: the entry must name the record it points at.
        match self.header_at(e.position) {
            Ok((offset, _)) if offset == e.offset => Some(e),
            _ => None,
        }
    }

    /// Walks record headers from `from` while the records end at or before `limit_pos` and
    /// `stop(offset)` is false; returns the boundary reached, and the length of the record
    /// that stopped the walk by not fitting (if any).
    fn walk(
        &self,
        from: Boundary,
        limit_pos: u64,
        stop: impl Fn(u64) -> bool,
    ) -> io::Result<(Boundary, Option<u64>)> {
        let mut at = from;
        let mut buf = [0u8; WALK_CHUNK];
        loop {
            if at.position >= limit_pos || stop(at.offset) {
                return Ok((at, None));
            }
            let want = usize::try_from((limit_pos - at.position).min(WALK_CHUNK as u64))
                .unwrap_or(WALK_CHUNK)
                .max(RECORD_HEADER_LEN);
            let n = self.file.read_at(&mut buf[..want], at.position)?;
            if n < RECORD_HEADER_LEN {
                return Err(corrupt(format!(
                    "segment {} ends inside a record header at {}",
                    self.base, at.position
                )));
            }
            let mut i = 0usize;
            while i + RECORD_HEADER_LEN <= n {
                let (offset, len) =
                    parse_header(&buf[i..n]).ok_or_else(|| corrupt("unreadable header".into()))?;
                if offset != at.offset {
                    return Err(corrupt(format!(
                        "segment {}: record at {} has offset {offset}, expected {}",
                        self.base, at.position, at.offset
                    )));
                }
                if at.position + len > limit_pos {
                    return Ok((at, Some(len)));
                }
                at = Boundary {
                    position: at.position + len,
                    offset: at.offset + 1,
                };
                if at.position >= limit_pos || stop(at.offset) {
                    return Ok((at, None));
                }
                // The next header may start past what was read.
                match usize::try_from(len).ok().and_then(|l| i.checked_add(l)) {
                    Some(next) if next + RECORD_HEADER_LEN <= n => i = next,
                    _ => break,
                }
            }
        }
    }

    /// Where the record with `offset` starts, if this segment holds it below `end`; the
    /// first record after it when `offset` falls in a gap; `None` when the segment's
    /// records below `end` are all before `offset`.
    ///
    /// # Errors
    /// The file cannot be read, or its records are not where their framing says.
    pub fn locate(&self, offset: u64, end: Boundary) -> io::Result<Option<Boundary>> {
        if offset >= end.offset {
            return Ok(None);
        }
        let from = self
            .last_entry_where(|e| e.offset <= offset && e.position < end.position)
            .unwrap_or(Boundary {
                position: 0,
                offset: self.base,
            });
        let (at, _) = self.walk(from, end.position, |o| o >= offset)?;
        Ok((at.position < end.position).then_some(at))
    }

    /// Where the next frame from `from` can end: at most `limit` bytes, not past `end`.
    ///
    /// # Errors
    /// As [`locate`](Self::locate).
    pub fn cut(&self, from: Boundary, end: Boundary, limit: u64) -> io::Result<Cut> {
        debug_assert!(from.position < end.position);
        let max = from.position.saturating_add(limit);
        if end.position <= max {
            return Ok(Cut::Until(end));
        }
        if let Some(e) = self.last_entry_where(|e| e.position <= max) {
            if e.position > from.position && e.offset > from.offset {
                return Ok(Cut::Until(e));
            }
        }
        let (at, stopped) = self.walk(from, max, |_| false)?;
        if at.position > from.position {
            return Ok(Cut::Until(at));
        }
        let len = match stopped {
            Some(len) => len,
            None => self.header_at(from.position)?.1,
        };
        Ok(Cut::TooBig(len))
    }

    /// Where a closed segment's records end (found once, from its last index entry).
    ///
    /// # Errors
    /// As [`locate`](Self::locate).
    pub fn closed_end(&mut self) -> io::Result<Boundary> {
        if let Some(e) = self.closed_end {
            return Ok(e);
        }
        let len = self.file.metadata()?.len();
        let from = self
            .last_entry_where(|e| e.position < len)
            .unwrap_or(Boundary {
                position: 0,
                offset: self.base,
            });
        let (at, stopped) = self.walk(from, len, |_| false)?;
        if stopped.is_some() || at.position != len {
            return Err(corrupt(format!(
                "closed segment {} ends inside a record at {}",
                self.base, at.position
            )));
        }
        self.closed_end = Some(at);
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Durability, Log, LogConfig};

    fn temp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("pinstream-seg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// A log of `n` records with bodies of 1 + (i % 50) bytes, index every 256 bytes.
    fn log_with(dir: &Path, n: u64) -> Vec<u64> {
        let mut cfg = LogConfig::new(dir);
        cfg.index_interval_bytes = 256;
        cfg.durability = Durability::None;
        let (mut log, _) = Log::open(cfg).unwrap();
        let mut positions = Vec::new();
        let mut pos = 0;
        for i in 0..n {
            positions.push(pos);
            let body = vec![i as u8; 1 + (i % 50) as usize];
            pos += (RECORD_HEADER_LEN + body.len()) as u64;
            log.append(1, &body).unwrap();
        }
        positions.push(pos);
        log.close().unwrap();
        positions
    }

    #[test]
    fn locate_finds_every_offset() {
        let d = temp("locate");
        let pos = log_with(&d, 300);
        let mut seg = Segment::open(&d, 0).unwrap();
        let end = seg.closed_end().unwrap();
        assert_eq!(
            end,
            Boundary {
                position: pos[300],
                offset: 300
            }
        );
        for o in 0..300u64 {
            let b = seg.locate(o, end).unwrap().unwrap();
            assert_eq!(
                b,
                Boundary {
                    position: pos[o as usize],
                    offset: o
                }
            );
        }
        assert_eq!(seg.locate(300, end).unwrap(), None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn cuts_are_whole_records_within_the_limit() {
        let d = temp("cut");
        let pos = log_with(&d, 300);
        let mut seg = Segment::open(&d, 0).unwrap();
        let end = seg.closed_end().unwrap();
        for limit in [70u64, 100, 300, 1000, 5000, 1 << 20] {
            let mut at = Boundary {
                position: 0,
                offset: 0,
            };
            while at.offset < 300 {
                match seg.cut(at, end, limit).unwrap() {
                    Cut::Until(b) => {
                        assert!(b.offset > at.offset);
                        assert!(b.position - at.position <= limit);
                        assert_eq!(b.position, pos[b.offset as usize], "a record boundary");
                        at = b;
                    }
                    Cut::TooBig(len) => {
                        assert!(len > limit);
                        assert_eq!(len, pos[at.offset as usize + 1] - at.position);
                        break;
                    }
                }
            }
        }
        // A limit below the next record: too big, with its length.
        assert_eq!(
            seg.cut(
                Boundary {
                    position: pos[49],
                    offset: 49
                },
                end,
                10
            )
            .unwrap(),
            Cut::TooBig(70)
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_stale_index_is_not_trusted() {
        let d = temp("stale");
        let pos = log_with(&d, 100);
        // An index that points into the middle of records.
        let mut bad = Vec::new();
        for (o, p) in [(0u64, 0u64), (10, 7), (20, 300)] {
            bad.extend_from_slice(&o.to_le_bytes());
            bad.extend_from_slice(&p.to_le_bytes());
        }
        std::fs::write(index_path(&d, 0), bad).unwrap();
        let mut seg = Segment::open(&d, 0).unwrap();
        let end = seg.closed_end().unwrap();
        assert_eq!(end.offset, 100);
        assert_eq!(seg.locate(42, end).unwrap().unwrap().position, pos[42]);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
