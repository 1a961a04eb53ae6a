//! A subscription's read position in its log ([`LogCursor`]): which segment, which byte,
//! which offset; where the next DATA frame starts and ends, given the published high
//! watermark and the credit. It holds one segment file open (a retention delete while it is
//! open is harmless on Linux: the file lives until closed) and reads no record bytes except
//! the headers [`Segment`] needs.

use std::io;
use std::path::{Path, PathBuf};

use pinstream_core::record::{self, RECORD_HEADER_LEN, RecordBody};

use super::segment::{Boundary, Cut, Segment};
use super::watermark::Visible;
use crate::storage::segment_bases;

/// What the next frame of a subscription is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing to send below the high watermark.
    Nothing,
    /// The records from `from` to `to` (positions in the open segment).
    Frame {
        /// The first record.
        from: Boundary,
        /// After the last one.
        to: Boundary,
    },
    /// The next record is `len` bytes, more than the limit.
    TooBig(u64),
}

/// Where a subscription reads.
#[derive(Debug)]
pub struct LogCursor {
    dir: PathBuf,
    /// The offset of the next record to send (or of the gap's start before it).
    next: u64,
    /// The open segment and the boundary of `next` in it.
    open: Option<(Segment, Boundary)>,
}

fn list(dir: &Path) -> io::Result<Vec<u64>> {
    segment_bases(dir).map_err(|e| io::Error::other(e.to_string()))
}

impl LogCursor {
    /// A cursor of the log in `dir` at `next`.
    pub fn new(dir: PathBuf, next: u64) -> Self {
        Self {
            dir,
            next,
            open: None,
        }
    }

    /// The open segment's file (for `sendfile` of the frame [`next_frame`](Self::next_frame)
    /// returned last).
    pub fn file(&self) -> Option<&std::fs::File> {
        self.open.as_ref().map(|(s, _)| s.file())
    }

    /// Where the open segment's visible records end under `vis`.
    fn end_of(seg: &mut Segment, vis: &Visible) -> io::Result<Boundary> {
        let m = vis.mark;
        if seg.base == m.base {
            Ok(Boundary {
                position: m.position,
                offset: m.offset,
            })
        } else if seg.base < m.base {
            // Closed: a roll wrote (and, when the mark is the durable one, synced) all of it
            // before the next segment began.
            seg.closed_end()
        } else {
            Ok(Boundary {
                position: 0,
                offset: seg.base,
            })
        }
    }

    /// Opens the segment holding `self.next` (or the first one after it) and finds the
    /// position; `false` when there is none yet.
    fn open_at_next(&mut self, vis: &Visible) -> io::Result<bool> {
        // A segment removed by retention between the listing and the open: list again.
        for _ in 0..4 {
            let bases = list(&self.dir)?;
            let base = match bases.iter().rev().find(|&&b| b <= self.next) {
                Some(&b) => b,
                None => match bases.first() {
                    Some(&b) => {
                        self.next = b;
                        b
                    }
                    None => return Ok(false),
                },
            };
            let mut seg = match Segment::open(&self.dir, base) {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let end = Self::end_of(&mut seg, vis)?;
            match seg.locate(self.next, end)? {
                Some(b) => {
                    self.next = b.offset;
                    self.open = Some((seg, b));
                    return Ok(true);
                }
                None if base < vis.mark.base => {
                    // `next` is past this closed segment's records (a gap): the next one.
                    match bases.iter().find(|&&b| b > base) {
                        Some(&b) => self.next = self.next.max(b),
                        None => return Ok(false),
                    }
                }
                None => return Ok(false),
            }
        }
        Ok(false)
    }

    /// The next frame to send under `vis`, of at most `limit` bytes of records. When it is a
    /// [`Next::Frame`], the cursor has moved past it.
    ///
    /// # Errors
    /// A segment cannot be listed, opened or read as its framing says.
    pub fn next_frame(&mut self, vis: &Visible, limit: u64) -> io::Result<Next> {
        for _ in 0..64 {
            if self.next >= vis.mark.offset {
                return Ok(Next::Nothing);
            }
            if self.next < vis.first {
                // Retention removed what was next: jump (the consumer sees the gap).
                self.next = vis.first;
                self.open = None;
                continue;
            }
            if self.open.is_none() && !self.open_at_next(vis)? {
                return Ok(Next::Nothing);
            }
            let Some((seg, at)) = self.open.as_mut() else {
                return Ok(Next::Nothing);
            };
            let end = Self::end_of(seg, vis)?;
            if at.position >= end.position {
                if seg.base >= vis.mark.base {
                    return Ok(Next::Nothing);
                }
                // This closed segment is done: the next one starts at its base (a jump
                // when segments are missing in between).
                let base = seg.base;
                let after = list(&self.dir)?.into_iter().find(|&b| b > base);
                match after {
                    Some(b) => self.next = self.next.max(b),
                    None => return Ok(Next::Nothing),
                }
                self.open = None;
                continue;
            }
            if limit == 0 {
                return Ok(Next::TooBig(0));
            }
            return match seg.cut(*at, end, limit)? {
                Cut::Until(to) => {
                    let from = *at;
                    *at = to;
                    self.next = to.offset;
                    Ok(Next::Frame { from, to })
                }
                Cut::TooBig(len) => Ok(Next::TooBig(len)),
            };
        }
        Ok(Next::Nothing)
    }
}

/// The engine's reception time of a stored record: an event's `received`, a dead letter's
/// `tick`, an aggregate's window `end`.
fn record_time(kind: u8, body: &[u8]) -> Option<u64> {
    match record::decode(kind, body).ok()? {
        RecordBody::Event(e) => Some(e.received),
        RecordBody::DeadLetter(d) => Some(d.tick),
        RecordBody::Aggregate(a) => Some(a.end),
    }
}

/// The record at `position` of `seg`: `(offset, total length, time)`; `buf` is scratch.
fn timed_record_at(
    seg: &Segment,
    position: u64,
    buf: &mut Vec<u8>,
) -> io::Result<(u64, u64, Option<u64>)> {
    use std::os::unix::fs::FileExt;
    let mut h = [0u8; RECORD_HEADER_LEN];
    seg.file().read_exact_at(&mut h, position)?;
    let body_len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let offset = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
    buf.resize(body_len, 0);
    seg.file()
        .read_exact_at(buf, position + RECORD_HEADER_LEN as u64)?;
    Ok((
        offset,
        (RECORD_HEADER_LEN + body_len) as u64,
        record_time(h[16], buf),
    ))
}

/// The offset of the first visible record of the log in `dir` whose reception time is at
/// or after `time` (nanoseconds since the Unix epoch); the high watermark when there is
/// none. Reads each segment's first record to find the segment, then bisects its index
/// entries and reads at most one index interval record by record (a cold path: once per
/// SUBSCRIBE with a time).
///
/// # Errors
/// A segment cannot be listed, opened or read.
pub fn offset_at_time(dir: &Path, time: u64, vis: &Visible) -> io::Result<u64> {
    let mut buf = Vec::new();
    let bases: Vec<u64> = list(dir)?
        .into_iter()
        .filter(|&b| b >= vis.first && b < vis.mark.offset)
        .collect();
    // The last segment whose first record is older than `time`: the record looked for is in
    // it or is the first of the next one.
    let mut from = 0;
    for (i, &base) in bases.iter().enumerate() {
        let Ok(seg) = Segment::open(dir, base) else {
            continue;
        };
        match timed_record_at(&seg, 0, &mut buf) {
            Ok((_, _, Some(t))) if t < time => from = i,
            Ok(_) => break,
            Err(_) => continue,
        }
    }
    for &base in bases.get(from..).unwrap_or(&[]) {
        let mut seg = match Segment::open(dir, base) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let end = LogCursor::end_of(&mut seg, vis)?;
        // Reception times grow along a log (one storage thread stores in order): the index
        // entries before the record looked for are a prefix, found by bisection; then at
        // most one index interval is read record by record. Where times are not in order
        // (dead letters of two stages may interleave their ticks), the answer is a record
        // at or after the time, not necessarily the first one.
        let before = |e: Boundary| {
            e.position < end.position
                && timed_record_at(&seg, e.position, &mut Vec::new())
                    .is_ok_and(|(_, _, t)| t.is_some_and(|t| t < time))
        };
        let mut position = seg.last_entry_where(before).map_or(0, |e| e.position);
        while position < end.position {
            let (offset, len, t) = timed_record_at(&seg, position, &mut buf)?;
            if t.is_some_and(|t| t >= time) {
                return Ok(offset);
            }
            position += len;
        }
    }
    Ok(vis.mark.offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Durability, Log, LogConfig, SegmentMark};

    /// A closed log of `n` records of 100 bytes in segments of 1 KiB (10 per segment);
    /// returns its directory and the visible state of all of it.
    fn log(tag: &str, n: u64) -> (PathBuf, Visible) {
        let dir =
            std::env::temp_dir().join(format!("pinstream-cursor-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = LogConfig::new(&dir);
        cfg.segment_bytes = 1000;
        cfg.index_interval_bytes = 300;
        cfg.durability = Durability::Always;
        let (mut log, _) = Log::open(cfg).unwrap();
        for i in 0..n {
            log.append(1, &[i as u8; 80]).unwrap();
            if i % 7 == 0 {
                log.sync().unwrap();
            }
        }
        log.sync().unwrap();
        let vis = Visible {
            mark: log.visible_mark(true),
            first: log.first_offset(),
        };
        log.close().unwrap();
        (dir, vis)
    }

    /// Every offset the cursor sends, frame by frame, with `limit`.
    fn read_all(dir: &Path, start: u64, vis: &Visible, limit: u64) -> Vec<u64> {
        let mut c = LogCursor::new(dir.to_path_buf(), start);
        let mut out = Vec::new();
        loop {
            match c.next_frame(vis, limit).unwrap() {
                Next::Frame { from, to } => {
                    assert!(to.position - from.position <= limit);
                    out.extend(from.offset..to.offset);
                }
                Next::Nothing => return out,
                Next::TooBig(len) => panic!("a record of {len} bytes over {limit}"),
            }
        }
    }

    #[test]
    fn the_cursor_crosses_segments_and_stops_at_the_watermark() {
        let (dir, vis) = log("cross", 95);
        assert_eq!(vis.mark.offset, 95);
        assert_eq!(vis.mark.base, 90, "the active segment holds the last 5");
        for limit in [100, 250, 1000, 1 << 20] {
            assert_eq!(read_all(&dir, 0, &vis, limit), (0..95).collect::<Vec<_>>());
            assert_eq!(
                read_all(&dir, 37, &vis, limit),
                (37..95).collect::<Vec<_>>()
            );
        }
        // A watermark inside a segment: nothing at or past it.
        let part = Visible {
            mark: SegmentMark {
                offset: 45,
                base: 40,
                position: 500,
            },
            first: 0,
        };
        assert_eq!(
            read_all(&dir, 0, &part, 1 << 20),
            (0..45).collect::<Vec<_>>()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn removed_segments_are_jumped_over() {
        let (dir, vis) = log("gaps", 95);
        // Retention removed the first two segments; a quarantine the fifth.
        for base in [0u64, 10, 40] {
            std::fs::remove_file(crate::storage::layout::segment_path(&dir, base)).unwrap();
        }
        let vis = Visible { first: 20, ..vis };
        let want: Vec<u64> = (20..40).chain(50..95).collect();
        assert_eq!(read_all(&dir, 0, &vis, 1 << 20), want);
        assert_eq!(read_all(&dir, 42, &vis, 300), (50..95).collect::<Vec<_>>());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_time_finds_the_first_record_received_at_or_after_it() {
        use pinstream_core::event::{EventHeader, Lane, Origin, Priority};
        use pinstream_core::process::StoredEvent;
        let dir =
            std::env::temp_dir().join(format!("pinstream-cursor-time-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = LogConfig::new(&dir);
        cfg.segment_bytes = 2000;
        cfg.index_interval_bytes = 150;
        cfg.durability = Durability::None;
        let (mut log, _) = Log::open(cfg).unwrap();
        // Times 1000, 1010, 1020, … over segments of a dozen records each, an index entry
        // every record or two.
        for i in 0..60u64 {
            let header = EventHeader::new(i, 0, Priority::High, 0);
            let ev = StoredEvent {
                lane: Lane::Realtime,
                header: &header,
                origin: Origin::new(1, i),
                received: 1000 + 10 * i,
                payload: &[1; 40],
            };
            let (kind, len) = record::event_shape(&ev);
            log.append_with(kind, len, |dst| record::encode_event(dst, &ev))
                .unwrap();
        }
        log.flush().unwrap();
        let vis = Visible {
            mark: log.visible_mark(false),
            first: log.first_offset(),
        };
        log.close().unwrap();
        assert!(crate::storage::segment_bases(&dir).unwrap().len() > 3);
        let every: Vec<(u64, u64)> = (0..=600u64).map(|t| (1000 + t, t.div_ceil(10))).collect();
        for (time, want) in [(0, 0), (1591, 60), (u64::MAX, 60)]
            .into_iter()
            .chain(every)
        {
            assert_eq!(
                offset_at_time(&dir, time, &vis).unwrap(),
                want,
                "time {time}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
