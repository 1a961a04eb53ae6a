//! The writer: [`Log`] appends records to the active segment through a write buffer sized
//! once at open, rolls segments by size, syncs by durability mode, enforces retention.
//!
//! `append`, `append_with`, `flush` and `sync` do not allocate (the buffer and the pending
//! index entries are fixed-capacity `Vec`s that never grow); rolling a segment does (a path,
//! a closed-segment entry). Errors allocate, which is fine: they end the hot path.
//!
//! The checkpoint is rewritten in place (one 48-byte `pwrite`, not fsynced: it is a hint)
//! after every sync and roll under `Interval` and `Always`; it always names synced data, so a
//! stale or torn checkpoint costs only a longer scan. Under `None` nothing is synced, so no
//! checkpoint is kept and every open scans every segment.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::files;
use super::format::{
    CHECKPOINT_FILE, Checkpoint, INDEX_ENTRY_LEN, IndexEntry, RECORD_HEADER_LEN, index_path, seal,
    segment_path, sync_dir,
};
use super::record::RecordError;
use super::recovery::{self, RecoveryReport};
use super::{Durability, LogConfig, StorageError};

mod reports;

pub use self::reports::{LogStats, RetentionReport, SegmentMark};

/// Index entries buffered between flushes (4 KiB).
const INDEX_PENDING_ENTRIES: usize = 256;

/// One fdatasync of a log's active segment, taken out of the log ([`Log::begin_sync`]) so
/// that another thread can run it; back to the log with [`Log::end_sync`]. It holds the
/// segment file open (a reference count: making one does not allocate).
#[derive(Debug)]
pub struct SyncJob {
    file: Arc<File>,
    /// The log's written offset when the job was made: what the sync makes durable.
    target: u64,
    /// Where `target` lies: the segment's base and the byte position of the end of the
    /// records below `target` in it (the consumer server sends records up to there).
    mark: SegmentMark,
    /// Bytes unsynced when the job was made (they are synced when it ends).
    bytes: u64,
    /// The checkpoint naming `target`, when the mode keeps one and the segment has a
    /// record (written when the sync ends, if no roll came in between).
    checkpoint: Option<Checkpoint>,
    /// Test seam: the log's injected fdatasync failure.
    #[cfg(test)]
    fail: Option<io::ErrorKind>,
}

impl SyncJob {
    /// fdatasyncs the segment; returns how long it took.
    ///
    /// # Errors
    /// The fdatasync's error (give it to [`Log::end_sync`], which poisons the log).
    pub fn run(&self) -> io::Result<Duration> {
        #[cfg(test)]
        if let Some(kind) = self.fail {
            return Err(io::Error::from(kind));
        }
        let t0 = Instant::now();
        self.file.sync_data()?;
        Ok(t0.elapsed())
    }
}

/// The segment being appended to.
#[derive(Debug)]
struct Active {
    base: u64,
    path: PathBuf,
    /// Shared with a [`SyncJob`] while another thread syncs it (a reference count).
    file: Arc<File>,
    index: File,
    /// False after an index write failed: entries stop being written (the index is rebuilt
    /// at the next open).
    index_ok: bool,
    /// Bytes written to `file` (the buffer not included).
    written: u64,
    /// Position of the last appended record (buffered included).
    last_record_pos: Option<u64>,
    /// Position of the last index entry (pending included).
    last_index_pos: Option<u64>,
}

impl Active {
    /// Opens an existing segment (recovered) for appending.
    fn reopen(dir: &Path, base: u64, written: u64) -> Result<Self, StorageError> {
        let path = segment_path(dir, base);
        let file = files::options()
            .append(true)
            .open(&path)
            .map_err(|e| StorageError::io("open segment", &path, e))?;
        let ipath = index_path(dir, base);
        let index = files::options()
            .append(true)
            .create(true)
            .open(&ipath)
            .map_err(|e| StorageError::io("open index", &ipath, e))?;
        Ok(Self {
            base,
            path,
            file: Arc::new(file),
            index,
            index_ok: true,
            written,
            last_record_pos: None,
            last_index_pos: None,
        })
    }

    /// Creates a new, empty segment and its index, and fsyncs the directory.
    fn create(dir: &Path, base: u64) -> Result<Self, StorageError> {
        let path = segment_path(dir, base);
        let file = files::options()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StorageError::io("create segment", &path, e))?;
        let ipath = index_path(dir, base);
        let index = files::options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&ipath)
            .map_err(|e| StorageError::io("create index", &ipath, e))?;
        sync_dir(dir)?;
        Ok(Self {
            base,
            path,
            file: Arc::new(file),
            index,
            index_ok: true,
            written: 0,
            last_record_pos: None,
            last_index_pos: None,
        })
    }
}

/// An append-only segmented log. One writer thread owns it.
///
/// ```
/// use pinstream_host::storage::{Durability, Log, LogConfig, LogReader};
/// # let dir = std::env::temp_dir().join(format!("pinstream-doc-log-{}", std::process::id()));
/// let mut cfg = LogConfig::new(&dir);
/// cfg.durability = Durability::Always;
/// let (mut log, report) = Log::open(cfg)?;
/// assert!(report.is_clean());
/// let first = log.append(1, b"hello")?;
/// log.append(1, b"world")?;
/// log.sync()?; // under `Always`, acknowledge only after this
/// assert_eq!(log.durable_offset(), first + 2);
///
/// let mut reader = LogReader::open(&dir)?;
/// reader.seek(first + 1)?;
/// let rec = reader.next_record().expect("a record")?;
/// assert_eq!((rec.offset, rec.kind, &rec.body[..]), (first + 1, 1, &b"world"[..]));
/// # drop(log); std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), pinstream_host::storage::StorageError>(())
/// ```
#[derive(Debug)]
pub struct Log {
    cfg: LogConfig,
    /// Closed segments, ascending: `(base, length)`.
    closed: Vec<(u64, u64)>,
    active: Active,
    /// The write buffer: capacity fixed at open, never grown.
    buf: Vec<u8>,
    /// Index entries not yet written: capacity fixed at open, never grown.
    index_pending: Vec<u8>,
    next_offset: u64,
    /// Offsets below this were written to the file.
    written_offset: u64,
    /// Records in the write buffer (not written to the file yet), per kind (`kind & 7`).
    buffered: [u64; 8],
    /// Offsets below this were fdatasynced.
    synced_offset: u64,
    /// Where `synced_offset` lies on disk.
    synced_mark: SegmentMark,
    unsynced_bytes: u64,
    last_sync: Instant,
    checkpoint: File,
    poison: Option<Arc<StorageError>>,
    /// A [`SyncJob`] of this log is out (between `begin_sync` and `end_sync`).
    sync_out: bool,
    stats: LogStats,
    /// Test seam: the next `write(2)` of the segment fails with this error kind.
    #[cfg(test)]
    pub(crate) fail_next_write: Option<io::ErrorKind>,
    /// Test seam: the next fdatasync fails with this error kind.
    #[cfg(test)]
    pub(crate) fail_next_sync: Option<io::ErrorKind>,
}

impl Log {
    /// Opens (creating the directory if missing) and recovers the log in `cfg.dir`, then
    /// syncs the active segment, so everything recovered counts as durable.
    ///
    /// # Errors
    /// [`StorageError::Config`] for an unusable config; [`StorageError::Io`] when a file
    /// cannot be read, truncated, renamed or synced (nothing is deleted on any path).
    pub fn open(cfg: LogConfig) -> Result<(Log, RecoveryReport), StorageError> {
        cfg.validate()?;
        let (rec, report) = recovery::recover(&cfg)?;
        let mut active = Active::reopen(&cfg.dir, rec.active_base, rec.active_len)?;
        active.last_record_pos = rec.last_record_pos;
        active.last_index_pos = rec.last_index_pos;
        active
            .file
            .sync_data()
            .map_err(|e| StorageError::io("fdatasync", &active.path, e))?;
        let cpath = cfg.dir.join(CHECKPOINT_FILE);
        let checkpoint = files::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&cpath)
            .map_err(|e| StorageError::io("open checkpoint", &cpath, e))?;
        let mut log = Log {
            buf: Vec::with_capacity(cfg.write_buffer_bytes),
            index_pending: Vec::with_capacity(INDEX_PENDING_ENTRIES * INDEX_ENTRY_LEN),
            closed: rec.closed,
            active,
            next_offset: rec.next_offset,
            written_offset: rec.next_offset,
            buffered: [0; 8],
            synced_offset: rec.next_offset,
            synced_mark: SegmentMark::default(),
            unsynced_bytes: 0,
            last_sync: Instant::now(),
            checkpoint,
            poison: None,
            sync_out: false,
            stats: LogStats::default(),
            cfg,
            #[cfg(test)]
            fail_next_write: None,
            #[cfg(test)]
            fail_next_sync: None,
        };
        // Everything recovered was synced above.
        log.synced_mark = log.written_mark();
        log.write_checkpoint();
        Ok((log, report))
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.cfg
    }

    fn check_poison(&self) -> Result<(), StorageError> {
        match &self.poison {
            Some(first) => Err(StorageError::Poisoned {
                first: Arc::clone(first),
            }),
            None => Ok(()),
        }
    }

    /// Keeps a copy of `e` as the first failure and returns `e`.
    fn poison_with(&mut self, e: StorageError) -> StorageError {
        if self.poison.is_none() {
            self.poison = Some(Arc::new(e.duplicate()));
            self.stats.poisoned = true;
        }
        e
    }

    /// Appends one record of `kind` with `body` and returns its offset. The record goes to
    /// the write buffer; the buffer is written when full. Durable only once
    /// [`durable_offset`](Self::durable_offset) passes the offset.
    ///
    /// # Errors
    /// [`StorageError::RecordTooLarge`]; [`StorageError::Poisoned`] after an earlier failure;
    /// [`StorageError::Io`] when writing the buffer or rolling fails (the log is then
    /// poisoned).
    pub fn append(&mut self, kind: u8, body: &[u8]) -> Result<u64, StorageError> {
        self.append_with(kind, body.len(), |dst| {
            dst.copy_from_slice(body);
            Ok(body.len())
        })
    }

    /// Appends one record of `kind` whose `body_len`-byte body `fill` writes in place in the
    /// write buffer (e.g. with the encoders of [`record`](super::record)): no copy, no
    /// allocation. `fill` returns the bytes it wrote, which must be `body_len`: a record is
    /// sealed (its CRC computed) only over a body written whole, never over zeroes an
    /// encoder left.
    ///
    /// # Errors
    /// As [`append`](Self::append); [`StorageError::Encode`] when `fill` fails and
    /// [`StorageError::BodyLength`] when it wrote another length (a bug in the caller). The
    /// record is then not appended and the log stays usable.
    pub fn append_with(
        &mut self,
        kind: u8,
        body_len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, RecordError>,
    ) -> Result<u64, StorageError> {
        self.check_poison()?;
        if body_len > self.cfg.max_record_bytes as usize {
            return Err(StorageError::RecordTooLarge {
                len: body_len,
                max: self.cfg.max_record_bytes,
            });
        }
        let total = RECORD_HEADER_LEN + body_len;
        let seg_len = self.active.written + self.buf.len() as u64;
        if seg_len > 0 && seg_len + total as u64 > self.cfg.segment_bytes {
            self.roll()?;
        }
        if self.buf.capacity() - self.buf.len() < total
            || self.index_pending.capacity() - self.index_pending.len() < INDEX_ENTRY_LEN
        {
            self.write_buffered()?;
        }
        let position = self.active.written + self.buf.len() as u64;
        let offset = self.next_offset;
        // Offsets only grow: nothing at or above this one was written or synced yet.
        debug_assert!(offset >= self.written_offset && offset >= self.synced_offset);
        let start = self.buf.len();
        // Within capacity (checked above; `validate` makes one record fit): no allocation.
        self.buf.resize(start + total, 0);
        let record = &mut self.buf[start..];
        let written = fill(&mut record[RECORD_HEADER_LEN..]);
        match written {
            Ok(n) if n == body_len => {}
            Ok(written) => {
                self.buf.truncate(start);
                return Err(StorageError::BodyLength {
                    kind,
                    expected: body_len,
                    written,
                });
            }
            Err(error) => {
                self.buf.truncate(start);
                return Err(StorageError::Encode { kind, error });
            }
        }
        let record = &mut self.buf[start..];
        seal(record, offset, kind);
        let interval = u64::from(self.cfg.index_interval_bytes);
        if self
            .active
            .last_index_pos
            .is_none_or(|l| position - l >= interval)
        {
            let entry = IndexEntry { offset, position };
            self.index_pending.extend_from_slice(&entry.to_bytes());
            self.active.last_index_pos = Some(position);
        }
        self.active.last_record_pos = Some(position);
        self.next_offset += 1;
        self.unsynced_bytes += total as u64;
        self.stats.records_appended += 1;
        self.buffered[usize::from(kind & 7)] += 1;
        self.stats.bytes_appended += total as u64;
        Ok(offset)
    }

    /// Writes the buffer to the segment (one `write(2)`; page cache only), then the pending
    /// index entries.
    ///
    /// # Errors
    /// [`StorageError::Poisoned`] after an earlier failure; [`StorageError::Io`] when the
    /// write fails (the log is then poisoned).
    pub fn flush(&mut self) -> Result<(), StorageError> {
        self.check_poison()?;
        self.write_buffered()
    }

    fn write_buffered(&mut self) -> Result<(), StorageError> {
        if !self.buf.is_empty() {
            #[cfg(test)]
            let injected = self.fail_next_write.take().map(io::Error::from);
            #[cfg(not(test))]
            let injected: Option<io::Error> = None;
            let mut done = 0;
            let result = match injected {
                Some(e) => Err(e),
                None => write_counted(&self.active.file, &self.buf, &mut done),
            };
            if let Err(e) = result {
                // The records that reached the file whole are in the log (recovery keeps
                // them, truncating the torn one after them): only the rest is unwritten.
                self.forget_written(done);
                return Err(self.poison_with(StorageError::io("write", &self.active.path, e)));
            }
            self.active.written += self.buf.len() as u64;
            self.buf.clear();
            self.buffered = [0; 8];
            self.written_offset = self.next_offset;
        }
        if !self.index_pending.is_empty() {
            // Data first, then the index that points into it.
            if self.active.index_ok && self.active.index.write_all(&self.index_pending).is_err() {
                self.active.index_ok = false;
                self.stats.index_write_failures += 1;
            }
            self.index_pending.clear();
        }
        Ok(())
    }

    /// Writes the buffer and fdatasyncs the segment; then every appended offset is durable.
    /// Does nothing when nothing was written since the last sync.
    ///
    /// # Errors
    /// [`StorageError::Poisoned`] after an earlier failure; [`StorageError::Io`] when the
    /// write or the fdatasync fails. Either poisons the log: a failed fdatasync is never
    /// retried (the page cache state is unknown after it); reopen the log to recover.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        match self.begin_sync()? {
            None => Ok(()),
            Some(job) => {
                let result = job.run();
                self.end_sync(job, result, Instant::now())
            }
        }
    }

    /// [`sync`](Self::sync) in three steps, so that the fdatasync can run on another thread
    /// while other logs sync and this one takes more appends: writes the buffer and returns
    /// the fdatasync to run ([`SyncJob::run`]), or `None` when everything written is
    /// already synced. Hand the job and its result back to [`end_sync`](Self::end_sync)
    /// before beginning another; what is appended meanwhile is not covered by this job.
    ///
    /// # Errors
    /// As [`sync`](Self::sync) for the write (the log is then poisoned); nothing is synced.
    ///
    /// # Panics
    /// When a job of this log is still out (not given to `end_sync`).
    pub fn begin_sync(&mut self) -> Result<Option<SyncJob>, StorageError> {
        assert!(
            !self.sync_out,
            "begin_sync: the log's previous sync has not ended"
        );
        self.check_poison()?;
        self.write_buffered()?;
        if self.synced_offset == self.written_offset {
            return Ok(None);
        }
        self.sync_out = true;
        Ok(Some(self.sync_job()))
    }

    /// Ends a sync that [`begin_sync`](Self::begin_sync) began: on success every offset
    /// written by then is durable and the checkpoint is rewritten; `now` is when the sync
    /// ended (the interval to the next sync counts from it).
    ///
    /// # Errors
    /// [`StorageError::Io`] when `result` is the fdatasync's failure: the log is poisoned,
    /// the sync is never retried.
    ///
    /// # Panics
    /// When no job of this log is out, or `job` covers more than was written.
    pub fn end_sync(
        &mut self,
        job: SyncJob,
        result: io::Result<Duration>,
        now: Instant,
    ) -> Result<(), StorageError> {
        assert!(
            self.sync_out && job.target <= self.written_offset,
            "end_sync: no sync of this log is out, or the job is another log's"
        );
        self.sync_out = false;
        self.finish_sync(&job, result, now)?;
        // A roll since `begin_sync` synced the old segment itself and wrote a newer
        // checkpoint; otherwise the job's checkpoint names what is now synced.
        if let Some(c) = job.checkpoint.filter(|c| c.segment == self.active.base) {
            if self.checkpoint.write_all_at(&c.to_bytes(), 0).is_err() {
                self.stats.checkpoint_write_failures += 1;
            }
        }
        Ok(())
    }

    /// The fdatasync that makes everything written so far durable.
    fn sync_job(&mut self) -> SyncJob {
        let position = self.active.written;
        let last_record_pos = match (position, self.active.last_record_pos) {
            (0, _) => Some(0),
            (_, p) => p,
        };
        let checkpoint = last_record_pos
            .filter(|_| self.cfg.durability != Durability::None)
            .map(|last_record_pos| Checkpoint {
                segment: self.active.base,
                position,
                next_offset: self.written_offset,
                last_record_pos,
            });
        SyncJob {
            file: Arc::clone(&self.active.file),
            target: self.written_offset,
            mark: self.written_mark(),
            bytes: self.unsynced_bytes - self.buf.len() as u64,
            checkpoint,
            #[cfg(test)]
            fail: self.fail_next_sync.take(),
        }
    }

    /// Syncs the active segment on this thread (a roll). A job of this log that is out
    /// may still end later: it covers less than this sync did.
    fn sync_active(&mut self) -> Result<(), StorageError> {
        let job = self.sync_job();
        let result = job.run();
        self.finish_sync(&job, result, Instant::now())
    }

    fn finish_sync(
        &mut self,
        job: &SyncJob,
        result: io::Result<Duration>,
        now: Instant,
    ) -> Result<(), StorageError> {
        let took = match result {
            Ok(took) => took,
            Err(e) => {
                return Err(self.poison_with(StorageError::io("fdatasync", &self.active.path, e)));
            }
        };
        self.stats.syncs += 1;
        self.stats.last_sync_latency = Some(took);
        self.stats.max_sync_latency =
            Some(self.stats.max_sync_latency.map_or(took, |m| m.max(took)));
        // A roll may have synced past the job's target in the meantime (and counted its
        // bytes as synced then).
        if job.target > self.synced_offset {
            debug_assert_eq!(job.mark.offset, job.target);
            self.synced_offset = job.target;
            self.synced_mark = job.mark;
            self.unsynced_bytes = self.unsynced_bytes.saturating_sub(job.bytes);
        }
        self.last_sync = now;
        Ok(())
    }

    /// Rewrites the checkpoint (a hint; a failure is counted, not fatal). Only under
    /// `Interval` and `Always`, and only at a synced point.
    fn write_checkpoint(&mut self) {
        if self.cfg.durability == Durability::None || self.synced_offset != self.written_offset {
            return;
        }
        let position = self.active.written;
        let last_record_pos = match (position, self.active.last_record_pos) {
            (0, _) => 0,
            (_, Some(p)) => p,
            (_, None) => return,
        };
        let c = Checkpoint {
            segment: self.active.base,
            position,
            next_offset: self.written_offset,
            last_record_pos,
        };
        if self.checkpoint.write_all_at(&c.to_bytes(), 0).is_err() {
            self.stats.checkpoint_write_failures += 1;
        }
    }

    /// Closes the active segment and starts a new one at the next offset: the old segment is
    /// synced first (unless the mode is `None`), the directory is synced after the creation.
    fn roll(&mut self) -> Result<(), StorageError> {
        self.write_buffered()?;
        if self.cfg.durability != Durability::None && self.synced_offset != self.written_offset {
            self.sync_active()?;
        }
        let new = match Active::create(&self.cfg.dir, self.next_offset) {
            Ok(a) => a,
            Err(e) => return Err(self.poison_with(e)),
        };
        let old = std::mem::replace(&mut self.active, new);
        self.closed.push((old.base, old.written));
        self.write_checkpoint();
        Ok(())
    }

    /// True when the writer should call [`sync`](Self::sync) now: under `Interval`, when
    /// there is unsynced data and `max_delay` has passed since the last sync or `max_bytes`
    /// are unsynced; under `Always`, whenever there is unsynced data; under `None`, never.
    pub fn sync_due(&self, now: Instant) -> bool {
        let pending = self.synced_offset < self.next_offset;
        match self.cfg.durability {
            Durability::None => false,
            Durability::Always => pending,
            Durability::Interval {
                max_delay,
                max_bytes,
            } => {
                pending
                    && (self.unsynced_bytes >= max_bytes
                        || now.saturating_duration_since(self.last_sync) >= max_delay)
            }
        }
    }

    /// Offsets below this are durable under the mode: written to the page cache under
    /// `None`, fdatasynced otherwise. Acknowledge nothing at or above it.
    pub fn durable_offset(&self) -> u64 {
        match self.cfg.durability {
            Durability::None => self.written_offset,
            Durability::Interval { .. } | Durability::Always => self.synced_offset,
        }
    }

    /// Where the written offset lies: every record below it was written to the files with
    /// `write(2)` (the write buffer is not included). Between appends, the active segment
    /// ends at `written` bytes exactly at the written offset (a roll writes the buffer
    /// before it starts the next segment, whose base is the written offset).
    fn written_mark(&self) -> SegmentMark {
        SegmentMark {
            offset: self.written_offset,
            base: self.active.base,
            position: self.active.written,
        }
    }

    /// What a consumer may read: the records below [`durable_offset`](Self::durable_offset)
    /// when `durable` (`engine.ack = "durable"`), else those written to the files; and where
    /// the last of them ends on disk. Never past what `write(2)` put in the files.
    pub fn visible_mark(&self, durable: bool) -> SegmentMark {
        match self.cfg.durability {
            Durability::Interval { .. } | Durability::Always if durable => self.synced_mark,
            _ => self.written_mark(),
        }
    }

    /// After a failed write of the buffer of which `done` bytes reached the file: the
    /// records among them that are whole no longer count as buffered.
    fn forget_written(&mut self, done: usize) {
        let mut at = 0;
        while at + RECORD_HEADER_LEN <= done {
            let mut len = [0u8; 4];
            len.copy_from_slice(&self.buf[at..at + 4]);
            let total = RECORD_HEADER_LEN + u32::from_le_bytes(len) as usize;
            if at + total > done {
                break;
            }
            let kind = usize::from(self.buf[at + 16] & 7);
            self.buffered[kind] = self.buffered[kind].saturating_sub(1);
            at += total;
        }
    }

    /// Records of `kinds` appended but not written to the file yet (in the write buffer).
    /// After a failed write they never will be: the log is poisoned and they are not in it.
    pub fn unwritten(&self, kinds: &[u8]) -> u64 {
        kinds
            .iter()
            .map(|&k| self.buffered[usize::from(k & 7)])
            .sum()
    }

    /// The offset the next append gets.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// The lowest offset still stored (the base of the oldest segment).
    pub fn first_offset(&self) -> u64 {
        self.closed.first().map_or(self.active.base, |&(b, _)| b)
    }

    /// Removes whole closed segments, oldest first, while the log is above `retention_bytes`
    /// or the oldest was last written `retention_age` or longer before `now` (file mtime).
    /// The active segment is never removed, nor a segment newer than one that is kept.
    ///
    /// # Errors
    /// [`StorageError::Io`] when a segment's metadata cannot be read or it cannot be removed
    /// (what was removed before stays removed; the report of a later call says the rest).
    pub fn enforce_retention(&mut self, now: SystemTime) -> Result<RetentionReport, StorageError> {
        let mut total: u64 = self.closed.iter().map(|&(_, len)| len).sum::<u64>()
            + self.active.written
            + self.buf.len() as u64;
        let mut report = RetentionReport::default();
        while let Some(&(base, len)) = self.closed.first() {
            let path = segment_path(&self.cfg.dir, base);
            let by_size = self.cfg.retention_bytes.is_some_and(|max| total > max);
            let by_age = match self.cfg.retention_age {
                Some(age) if !by_size => {
                    let mtime = fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .map_err(|e| StorageError::io("stat", &path, e))?;
                    now.duration_since(mtime).is_ok_and(|d| d >= age)
                }
                _ => false,
            };
            if !by_size && !by_age {
                break;
            }
            fs::remove_file(&path)
                .map_err(|e| StorageError::io("remove segment (retention)", &path, e))?;
            let ipath = index_path(&self.cfg.dir, base);
            match fs::remove_file(&ipath) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io("remove index (retention)", &ipath, e)),
            }
            self.closed.remove(0);
            total -= len;
            report.segments_removed += 1;
            report.bytes_removed += len;
        }
        if report.segments_removed > 0 {
            sync_dir(&self.cfg.dir)?;
        }
        report.first_offset = self.first_offset();
        Ok(report)
    }

    /// Counters and bounds.
    pub fn stats(&self) -> LogStats {
        let buffered = self.buf.len();
        LogStats {
            next_offset: self.next_offset,
            durable_offset: self.durable_offset(),
            first_offset: self.first_offset(),
            buffered_bytes: buffered,
            unsynced_bytes: self.unsynced_bytes,
            segments: self.closed.len() + 1,
            stored_bytes: self.closed.iter().map(|&(_, len)| len).sum::<u64>()
                + self.active.written
                + buffered as u64,
            ..self.stats
        }
    }

    /// Writes what is buffered and, unless the mode is `None`, syncs it, then closes the
    /// log. Dropping a `Log` writes nothing (like a crash): call this on shutdown.
    ///
    /// # Errors
    /// As [`sync`](Self::sync) (or [`flush`](Self::flush) under `None`).
    pub fn close(mut self) -> Result<(), StorageError> {
        match self.cfg.durability {
            Durability::None => self.flush(),
            Durability::Interval { .. } | Durability::Always => self.sync(),
        }
    }
}

/// `write_all` that says how far it got: `done` is the number of bytes of `buf` written,
/// also when it fails part way (a full disk).
fn write_counted(mut file: &File, buf: &[u8], done: &mut usize) -> io::Result<()> {
    while *done < buf.len() {
        match file.write(&buf[*done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
