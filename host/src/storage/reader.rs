//! [`LogReader`]: iterates stored records from an offset, read-only.
//!
//! The reader runs no recovery and never modifies a file. It checks every record's CRC and
//! that offsets follow each other; a record that fails is returned as
//! [`StorageError::Corrupt`] and the reader then moves on to the next segment (the caller
//! decides whether to go on). Bytes that end short of a whole record at the end of the *last*
//! segment are taken as a record still being written: `next_record` returns `None` and a
//! later call reads on from the same place. Quarantined files are not read: the valid prefix
//! of a quarantined segment lives under the segment's own name.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::StorageError;
use super::files;
use super::format::{
    Decoded, MAX_RECORD_LIMIT, RECORD_HEADER_LEN, decode_at, header_body_len, list_segments,
    parse_index,
};
use super::layout::{index_path, segment_path};

/// One record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    /// Its offset.
    pub offset: u64,
    /// Its kind (see [`record`](super::record)).
    pub kind: u8,
    /// Its body.
    pub body: Vec<u8>,
}

#[derive(Debug)]
struct Cursor {
    /// Index into `LogReader::segments`.
    idx: usize,
    path: PathBuf,
    file: BufReader<File>,
    position: u64,
    expected: u64,
}

/// Reads a log directory from an offset. See the module docs.
#[derive(Debug)]
pub struct LogReader {
    dir: PathBuf,
    segments: Vec<u64>,
    cursor: Option<Cursor>,
    /// The next segment to open when `cursor` is `None`.
    next_idx: usize,
    /// Records below this offset are skipped.
    target: u64,
}

/// Reads into `buf` until it is full or the file ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

enum Step {
    Record(StoredRecord),
    /// The segment ended cleanly.
    End,
    /// Bytes short of a whole record at the end of the segment.
    Partial,
    Corrupt(u64, &'static str),
}

impl LogReader {
    /// Opens the log in `dir` for reading, positioned at its first record.
    ///
    /// # Errors
    /// [`StorageError::Io`] when the directory cannot be listed.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let segments = list_segments(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            segments,
            cursor: None,
            next_idx: 0,
            target: 0,
        })
    }

    /// Positions the reader so the next record returned is the first with an offset
    /// `>= offset` (the sparse index, checked against the record it points to, saves the
    /// scan from the segment's start).
    ///
    /// # Errors
    /// [`StorageError::Io`] when the directory or segment cannot be read.
    pub fn seek(&mut self, offset: u64) -> Result<(), StorageError> {
        self.segments = list_segments(&self.dir)?;
        self.target = offset;
        self.cursor = None;
        let idx = self
            .segments
            .partition_point(|&b| b <= offset)
            .saturating_sub(1);
        self.next_idx = idx;
        let Some(&base) = self.segments.get(idx) else {
            return Ok(());
        };
        let path = segment_path(&self.dir, base);
        let file = match files::open_read(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StorageError::io("open", &path, e)),
        };
        let len = file
            .metadata()
            .map_err(|e| StorageError::io("stat", &path, e))?
            .len();
        let mut file = BufReader::new(file);
        let (mut position, mut expected) = (0, base);
        if let Ok(bytes) = files::read(&index_path(&self.dir, base)) {
            if let Ok(entries) = parse_index(&bytes, base, len) {
                let i = entries.partition_point(|e| e.offset <= offset);
                if let Some(e) = i.checked_sub(1).and_then(|i| entries.get(i)) {
                    if Self::record_at(&mut file, e.position) == Some(e.offset) {
                        (position, expected) = (e.position, e.offset);
                    }
                }
            }
        }
        file.seek(SeekFrom::Start(position))
            .map_err(|e| StorageError::io("seek", &path, e))?;
        self.cursor = Some(Cursor {
            idx,
            path,
            file,
            position,
            expected,
        });
        self.next_idx = idx + 1;
        Ok(())
    }

    /// The offset of the valid record at `position`, if there is one (an index hint check).
    fn record_at(file: &mut BufReader<File>, position: u64) -> Option<u64> {
        file.seek(SeekFrom::Start(position)).ok()?;
        let mut header = [0u8; RECORD_HEADER_LEN];
        if read_full(file, &mut header).ok()? < RECORD_HEADER_LEN {
            return None;
        }
        let len = header_body_len(&header);
        if len > MAX_RECORD_LIMIT {
            return None;
        }
        let mut rec = header.to_vec();
        rec.resize(RECORD_HEADER_LEN + len as usize, 0);
        if read_full(file, &mut rec[RECORD_HEADER_LEN..]).ok()? < len as usize {
            return None;
        }
        match decode_at(&rec, MAX_RECORD_LIMIT) {
            Decoded::Record { offset, .. } => Some(offset),
            _ => None,
        }
    }

    /// The next record at or above the sought offset, `None` at the end of the log (a later
    /// call sees records appended since).
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] for a record that fails its CRC, framing or offset sequence
    /// (the reader then continues with the next segment); [`StorageError::Io`] when a file
    /// cannot be read.
    pub fn next_record(&mut self) -> Option<Result<StoredRecord, StorageError>> {
        loop {
            if self.cursor.is_none() {
                if self.next_idx >= self.segments.len() {
                    match list_segments(&self.dir) {
                        Ok(s) => self.segments = s,
                        Err(e) => return Some(Err(e)),
                    }
                    if self.next_idx >= self.segments.len() {
                        return None;
                    }
                }
                let idx = self.next_idx;
                let base = self.segments[idx];
                let path = segment_path(&self.dir, base);
                self.next_idx = idx + 1;
                match files::open_read(&path) {
                    Ok(f) => {
                        self.cursor = Some(Cursor {
                            idx,
                            path,
                            file: BufReader::new(f),
                            position: 0,
                            expected: base,
                        });
                    }
                    // Removed by retention since it was listed.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Some(Err(StorageError::io("open", &path, e))),
                }
            }
            let Some(mut cursor) = self.cursor.take() else {
                continue;
            };
            let step = match Self::step(&mut cursor) {
                Ok(s) => s,
                Err(e) => return Some(Err(StorageError::io("read", &cursor.path, e))),
            };
            let (position, why) = match step {
                Step::Record(r) => {
                    self.cursor = Some(cursor);
                    if r.offset >= self.target {
                        return Some(Ok(r));
                    }
                    continue;
                }
                Step::End | Step::Partial => {
                    if cursor.idx + 1 >= self.segments.len() {
                        // Maybe the writer rolled since we listed: look again before ending.
                        match list_segments(&self.dir) {
                            Ok(s) => self.segments = s,
                            Err(e) => return Some(Err(e)),
                        }
                    }
                    if cursor.idx + 1 >= self.segments.len() {
                        // The end of the log, or a record still being written.
                        let pos = cursor.position;
                        let sought = cursor.file.seek(SeekFrom::Start(pos));
                        let path = cursor.path.clone();
                        self.cursor = Some(cursor);
                        return match sought {
                            Ok(_) => None,
                            Err(e) => Some(Err(StorageError::io("seek", path, e))),
                        };
                    }
                    if matches!(step, Step::End) {
                        continue;
                    }
                    (
                        cursor.position,
                        "a record is cut short at the end of a closed segment",
                    )
                }
                Step::Corrupt(position, why) => (position, why),
            };
            // The cursor stays dropped: the next call continues with the next segment.
            return Some(Err(StorageError::Corrupt {
                path: cursor.path,
                position,
                why,
            }));
        }
    }

    fn step(c: &mut Cursor) -> io::Result<Step> {
        let mut header = [0u8; RECORD_HEADER_LEN];
        let n = read_full(&mut c.file, &mut header)?;
        if n == 0 {
            return Ok(Step::End);
        }
        if n < RECORD_HEADER_LEN {
            return Ok(Step::Partial);
        }
        let len = header_body_len(&header);
        if len > MAX_RECORD_LIMIT {
            return Ok(Step::Corrupt(
                c.position,
                "length field above the record size limit",
            ));
        }
        let file_len = c.file.get_ref().metadata()?.len();
        let total = RECORD_HEADER_LEN as u64 + u64::from(len);
        if c.position + total > file_len {
            // Either a record still being written, or a damaged length field.
            return Ok(Step::Partial);
        }
        let mut rec = header.to_vec();
        rec.resize(total as usize, 0);
        if read_full(&mut c.file, &mut rec[RECORD_HEADER_LEN..])? < len as usize {
            return Ok(Step::Partial);
        }
        match decode_at(&rec, MAX_RECORD_LIMIT) {
            Decoded::Record { offset, kind, .. } => {
                if offset != c.expected {
                    return Ok(Step::Corrupt(c.position, "offset out of sequence"));
                }
                c.position += total;
                c.expected = offset + 1;
                rec.drain(..RECORD_HEADER_LEN);
                Ok(Step::Record(StoredRecord {
                    offset,
                    kind,
                    body: rec,
                }))
            }
            Decoded::Incomplete => Ok(Step::Partial),
            Decoded::Invalid(why) => Ok(Step::Corrupt(c.position, why)),
            Decoded::UnknownVersion(_) => Ok(Step::Corrupt(
                c.position,
                "a record of an unknown format version (written by a newer pinstream?)",
            )),
        }
    }
}
