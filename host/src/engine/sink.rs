//! The engine's sink ([`StoreSink`]): appends the processors' records to the lane logs, the
//! dead-letter log and the aggregates log, starts and ends group commits ([`GroupSync`] runs
//! their fdatasyncs), collects the completions a commit publishes to the ingest thread, and
//! counts the records a storage failure loses.

use std::sync::atomic::Ordering;
use std::thread;
use std::time::Instant;

use pinstream_core::event::{EventHeader, Lane, Origin};
use pinstream_core::lanes::DeadLetter;
use pinstream_core::process::{Record, Sink, SinkError, StoredEvent};
use pinstream_core::ring::Producer;

use super::EngineStats;
use crate::consumers::{ConsumerShared, Visible};
use crate::ingest::{AckMode, COMPLETIONS, Completion, Shared};
use crate::stats::Gauge;
use crate::storage::layout::LogId;
use crate::storage::{Durability, GroupSync, Log, StorageError, record};

/// The engine's sink: appends records to the lane logs, the dead-letter log and the
/// aggregates log, collects the completions a commit will publish.
pub(super) struct StoreSink<'a> {
    logs: Vec<Log>,
    /// Syncs the dirty logs of a commit at the same time.
    pub(super) group_sync: GroupSync,
    stats: &'a EngineStats,
    ack: AckMode,
    /// Completions waiting for the next commit (allocated once).
    pub(super) completions: Vec<Completion>,
    /// A batch watermark waiting for the next commit.
    pub(super) pending_batch: Option<u64>,
    /// A commit is out: started, its syncs not yet ended.
    pub(super) committing: bool,
    /// When the commit out started.
    pub(super) commit_started: Instant,
    /// The completions of the commit out, published when it ends (allocated once; swapped
    /// with `completions`).
    in_flight: Vec<Completion>,
    /// The batch watermark of the commit out.
    in_flight_batch: Option<u64>,
    /// Dispatch tick of the oldest event of the commit out (`u64::MAX`: none).
    pub(super) in_flight_oldest: u64,
    /// Logs with records since the last commit (by [`LogId::index`]).
    dirty: [bool; LogId::COUNT],
    /// A storage failure stops writes (no retry of a failed fsync).
    pub(super) failed: bool,
    /// Logs a failed write or sync poisoned (their lost records are counted; by
    /// [`LogId::index`]).
    poisoned: [bool; LogId::COUNT],
    /// Dispatch tick of the oldest event stored since the last commit (`u64::MAX`: none).
    oldest: u64,
    /// Batch-lane events are stored (and settled) one by one, like the other lanes'.
    pub(super) batch_events: bool,
    /// The storage thread's tick of the current processing round (what the processors were
    /// given as `now`).
    pub(super) round_now: u64,
}

/// The records of log `id` not written to its file yet: events (lane logs) and dead letters
/// (the dead-letter log); the aggregates log holds neither (its records are not counted as
/// lost: no event's outcome hangs on one alone).
fn unwritten(log: &Log, id: LogId) -> (u64, u64) {
    if id == LogId::DeadLetter {
        let dead = [record::KIND_DEAD_LETTER, record::KIND_PRODUCER_DEAD_LETTER];
        (0, log.unwritten(&dead))
    } else {
        (
            log.unwritten(&[record::KIND_EVENT, record::KIND_PRODUCER_EVENT]),
            0,
        )
    }
}

/// Publishes each log's high watermark to the consumer server: durable under
/// `engine.ack = "durable"`, written otherwise (no lock, no allocation; a syscall only to
/// wake a sleeping server).
fn publish_marks(logs: &[Log], consumers: &ConsumerShared, ack: AckMode) {
    let durable = ack == AckMode::Durable;
    for (id, log) in LogId::ALL.into_iter().zip(logs) {
        consumers.marks.publish(
            id,
            Visible {
                mark: log.visible_mark(durable),
                first: log.first_offset(),
            },
        );
    }
}

/// Why [`StoreSink::append`] wrote nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AppendError {
    /// Storage failed earlier: nothing is written any more.
    Failed,
    /// This append failed (the error is recorded: counter, health, `storage_error`).
    Now,
}

/// Completions collected before a commit is forced.
pub(super) const MAX_PENDING_COMPLETIONS: usize = 65_536;

impl<'a> StoreSink<'a> {
    /// A sink over `logs`, one per [`LogId`] in [`LogId::ALL`] order.
    ///
    /// # Errors
    /// The sync helpers could not be started.
    pub(super) fn new(
        logs: Vec<Log>,
        stats: &'a EngineStats,
        ack: AckMode,
    ) -> Result<Self, String> {
        // What recovery left is durable: consumers may read it from the start.
        publish_marks(&logs, &stats.consumers, ack);
        assert_eq!(logs.len(), LogId::COUNT, "one log per LogId");
        // Each log's fdatasync runs on a helper, off the storage thread (none when no log is
        // ever synced).
        let synced = logs
            .iter()
            .filter(|l| l.config().durability != Durability::None)
            .count();
        let group_sync = GroupSync::new(synced)
            .map_err(|e| format!("cannot start the storage sync threads: {e}"))?;
        Ok(Self {
            logs,
            group_sync,
            stats,
            ack,
            completions: Vec::with_capacity(MAX_PENDING_COMPLETIONS),
            pending_batch: None,
            committing: false,
            commit_started: Instant::now(),
            in_flight: Vec::with_capacity(MAX_PENDING_COMPLETIONS),
            in_flight_batch: None,
            in_flight_oldest: u64::MAX,
            dirty: [false; LogId::COUNT],
            failed: false,
            poisoned: [false; LogId::COUNT],
            oldest: u64::MAX,
            batch_events: false,
            round_now: 0,
        })
    }

    /// Syncs and closes every log (dropping a log would leave its buffer unwritten).
    pub(super) fn close(&mut self) -> Result<bool, StorageError> {
        if self.committing {
            // Only after a failure (a forced commit ends the one out): it was reported.
            self.committing = false;
            let _ = self.group_sync.finish(&mut self.logs);
        }
        let mut first = Ok(true);
        for (id, log) in LogId::ALL.into_iter().zip(std::mem::take(&mut self.logs)) {
            // What is still buffered is written by the close, or lost with it.
            let pending = unwritten(&log, id);
            if let Err(e) = log.close() {
                if !self.poisoned[id.index()] {
                    self.stats.host.storage_lost_events.add(pending.0);
                    self.stats.host.storage_lost_dead_letters.add(pending.1);
                }
                if first.is_ok() && !self.failed {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Removes the oldest closed segments past the configured retention, if any (rarely:
    /// every [`RETENTION_EVERY`](super::storage_loop::RETENTION_EVERY); this may allocate, it lists directories). A failure is
    /// reported like any storage failure.
    pub(super) fn enforce_retention(&mut self) {
        if self.failed {
            return;
        }
        for i in 0..self.logs.len() {
            let c = self.logs[i].config();
            if c.retention_bytes.is_none() && c.retention_age.is_none() {
                continue;
            }
            if let Err(e) = self.logs[i].enforce_retention(std::time::SystemTime::now()) {
                self.fail(&e, &self.stats.host.storage_write_errors, None);
                return;
            }
        }
        publish_marks(&self.logs, &self.stats.consumers, self.ack);
    }

    /// Records or completions wait for a commit.
    pub(super) fn dirty(&self) -> bool {
        self.dirty.iter().any(|&d| d) || !self.completions.is_empty()
    }

    pub(super) fn commit_due(&self, now: Instant) -> bool {
        self.completions.len() >= MAX_PENDING_COMPLETIONS / 2
            || self
                .logs
                .iter()
                .zip(self.dirty)
                .any(|(log, dirty)| dirty && log.sync_due(now))
    }

    /// Starts a commit: flushes (durability `none`) every log written to, or writes it and
    /// hands its fdatasync to a sync helper (`interval`, `always`; [`GroupSync`]); sets the
    /// completions and the batch watermark collected so far aside for
    /// [`finish_commit`](Self::finish_commit). What is stored meanwhile waits for the next.
    pub(super) fn start_commit(&mut self, now: Instant) -> Result<(), StorageError> {
        debug_assert!(!self.committing && self.in_flight.is_empty());
        // After a failure nothing is written any more; only dead letters are reported.
        let mut to_sync = [false; LogId::COUNT];
        for (id, log) in LogId::ALL.into_iter().zip(self.logs.iter_mut()) {
            if !self.dirty[id.index()] || self.failed {
                continue;
            }
            if log.config().durability == Durability::None {
                if let Err(e) = log.flush() {
                    self.fail_io(&e, id);
                    return Err(e);
                }
            } else {
                to_sync[id.index()] = true;
            }
        }
        // `GroupSync` names a log by its position in `logs`: its `LogId::index`.
        if let Err((i, e)) = self.group_sync.start(&mut self.logs, &to_sync) {
            self.fail_io(&e, LogId::ALL[i]);
            return Err(e);
        }
        self.dirty = [false; LogId::COUNT];
        if self.ack != AckMode::Durable {
            // Written to the files: visible under `accepted` and `none`.
            publish_marks(&self.logs, &self.stats.consumers, self.ack);
        }
        std::mem::swap(&mut self.completions, &mut self.in_flight);
        self.in_flight_batch = self.pending_batch.take();
        self.in_flight_oldest = std::mem::replace(&mut self.oldest, u64::MAX);
        self.committing = true;
        self.commit_started = now;
        Ok(())
    }

    /// Ends the commit out: waits for its syncs; the commit fails if any of them does.
    pub(super) fn finish_commit(&mut self) -> Result<(), StorageError> {
        debug_assert!(self.committing);
        self.committing = false;
        if let Err((i, e)) = self.group_sync.finish(&mut self.logs) {
            self.fail_io(&e, LogId::ALL[i]);
            return Err(e);
        }
        let (mut segments, mut syncs) = (0, 0);
        for log in &self.logs {
            let s = log.stats();
            segments += s.segments as u64;
            // The fdatasyncs the log really made (rolls included; none under `none`, where a
            // commit only writes to the page cache).
            syncs += s.syncs;
        }
        self.stats.host.storage_segments.set(segments);
        self.stats.host.storage_syncs.set(syncs);
        publish_marks(&self.logs, &self.stats.consumers, self.ack);
        Ok(())
    }

    /// Sends the ended commit's completions and batch watermark to the ingest thread.
    pub(super) fn publish(
        &mut self,
        tx: &mut Producer<'_, Completion, COMPLETIONS>,
        shared: &Shared,
    ) {
        let mut sent = 0;
        while sent < self.in_flight.len() {
            sent += tx.push_slice(&self.in_flight[sent..]);
            if sent < self.in_flight.len() {
                if shared.ingest_exited.load(Ordering::Acquire) {
                    // Nobody takes completions any more (the ingest thread is gone).
                    break;
                }
                std::hint::spin_loop();
                thread::yield_now();
            }
        }
        self.stats.host.durable_events.add(
            self.in_flight
                .iter()
                .map(|c| u64::from(c.stored))
                .sum::<u64>(),
        );
        self.in_flight.clear();
        // After a storage failure, aggregates are not stored: the batch watermark stops.
        if let Some(mark) = self.in_flight_batch.take().filter(|_| !self.failed) {
            shared.batch_resolved.fetch_max(mark, Ordering::Release);
        }
    }

    /// Notes events of `(source, seq)` stored, dead-lettered or found duplicate.
    fn note(&mut self, source: u32, seq: u64, stored: u32, dead: u32, duplicates: u32) {
        if self.ack != AckMode::Durable || source == crate::ingest::SourceId::UDP.get() {
            return;
        }
        if let Some(last) = self.completions.last_mut() {
            if last.source == source && last.seq == seq {
                last.stored += stored;
                last.dead += dead;
                last.duplicates += duplicates;
                return;
            }
        }
        self.completions.push(Completion {
            source,
            seq,
            stored,
            dead,
            duplicates,
        });
    }

    /// Appends one record to log `log`, the body encoded in place by `fill`. A failed log
    /// refuses everything after its first error (no retry of a failed fsync).
    fn append(
        &mut self,
        log: LogId,
        kind: u8,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, record::RecordError>,
    ) -> Result<u64, AppendError> {
        if self.failed {
            return Err(AppendError::Failed);
        }
        match self.logs[log.index()].append_with(kind, len, fill) {
            Ok(offset) => {
                self.dirty[log.index()] = true;
                self.stats.host.storage_records.incr();
                self.stats.host.storage_bytes.add(len as u64);
                Ok(offset)
            }
            Err(e) => {
                // Any refusal stops the writes, an encoding bug included: the record's
                // events must not be acknowledged, and a sink that skipped a record and
                // went on would store a log with a hole the acks do not show. Only a failed
                // write or sync poisons the log (its buffer is lost); after an encoding
                // error the buffer is still written at close.
                let poisoned = !matches!(
                    e,
                    StorageError::Encode { .. } | StorageError::BodyLength { .. }
                );
                self.fail(
                    &e,
                    &self.stats.host.storage_write_errors,
                    poisoned.then_some(log),
                );
                Err(AppendError::Now)
            }
        }
    }

    /// A failed write or sync of log `log` (which it poisoned): counted as a write error
    /// when the write failed, a sync error otherwise.
    fn fail_io(&mut self, e: &StorageError, log: LogId) {
        let stats = self.stats;
        let counter = match e {
            StorageError::Io { op: "write", .. } => &stats.host.storage_write_errors,
            _ => &stats.host.storage_sync_errors,
        };
        self.fail(e, counter, Some(log));
    }

    /// Records the first storage failure: writes stop, health reports it.
    ///
    /// `poisoned`: the log the failure poisoned, whose write buffer will never be written:
    /// its records were counted stored (or dead-lettered) by the pipeline and are not in
    /// the log. The other logs write theirs when they are closed.
    fn fail(&mut self, e: &StorageError, counter: &Gauge, poisoned: Option<LogId>) {
        counter.incr();
        self.failed = true;
        if let Some(id) = poisoned {
            self.poisoned[id.index()] = true;
            let (events, dead) = unwritten(&self.logs[id.index()], id);
            self.stats.host.storage_lost_events.add(events);
            self.stats.host.storage_lost_dead_letters.add(dead);
        }
        // What was written since the last commit is not known to be durable: those frames
        // are never acknowledged (the producer resends; recovery on restart keeps what
        // reached the disk intact). From now on only dead letters are reported.
        self.completions.clear();
        self.pending_batch = None;
        self.in_flight.clear();
        self.in_flight_batch = None;
        // Nothing will be synced any more: a failed log is not "dirty", it is done.
        self.dirty = [false; LogId::COUNT];
        self.stats
            .shared
            .storage_failed
            .store(true, Ordering::Relaxed);
        let mut slot = self
            .stats
            .storage_error
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e.to_string());
        }
    }

    /// Writes a dead letter to the dead-letter log; `settle`: tell the producer (a
    /// processor-stage dead letter; the dispatcher's are settled by the ingest thread).
    pub(super) fn write_dead_letter(&mut self, record: &DeadLetter, settle: bool) {
        // A dead letter whose record cannot be written is still a dead letter (counted by
        // the core); the failure is reported through health and the error counter.
        let (kind, len) = record::dead_letter_shape(record);
        if self
            .append(LogId::DeadLetter, kind, len, |dst| {
                record::encode_dead_letter(dst, record)
            })
            .is_ok()
        {
            self.stats.host.storage_dead_letters.incr();
        } else {
            // Counted dead-lettered by the core, but not in the log: say so.
            self.stats
                .host
                .storage_lost_dead_letters
                .add(u64::from(record.events));
        }
        // Batch-lane events that are only aggregated are settled by the batch watermark, not
        // per frame (a dead letter of one would otherwise consume a realtime event's place in
        // its frame); stored one by one, they are settled like the other lanes' events.
        if settle && (self.batch_events || record.header.priority.lane() != Lane::Batch) {
            self.note(record.origin.source, record.origin.seq, 0, record.events, 0);
        }
    }
}

impl Sink for StoreSink<'_> {
    fn store(&mut self, rec: &Record<'_>) -> Result<(), SinkError> {
        match rec {
            Record::Event(e) => {
                // The log records, as wall-clock time, the processing round that stored the
                // event: for the transactional lane the very tick its id was first seen by the
                // dedup table, so a restart refills the table with exact ages.
                let wall = StoredEvent {
                    received: self.stats.shared.start_wall.saturating_add(self.round_now),
                    ..*e
                };
                let (kind, len) = record::event_shape(&wall);
                self.append(LogId::from(e.lane), kind, len, |dst| {
                    record::encode_event(dst, &wall)
                })
                .map_err(|_| SinkError)?;
                self.oldest = self.oldest.min(e.received);
                self.note(e.origin.source, e.origin.seq, 1, 0, 0);
            }
            Record::Aggregate(a) => {
                // Aggregates have their own log, so the batch log holds only events (a
                // consumer subscribes to one log, one kind of record).
                self.append(
                    LogId::Aggregates,
                    record::KIND_AGGREGATE,
                    record::AGGREGATE_LEN,
                    |dst| record::encode_aggregate(dst, a),
                )
                .map_err(|_| SinkError)?;
            }
            // A record kind newer than this host (`Record` is non-exhaustive) has no log to
            // go to: refused like a failed write, so the pipeline counts it, never drops it.
            _ => return Err(SinkError),
        }
        Ok(())
    }

    fn dead_letter(&mut self, record: &DeadLetter) -> bool {
        self.write_dead_letter(record, true);
        true
    }

    fn duplicate(&mut self, _header: &EventHeader, origin: Origin) {
        // Nothing is written: the event with this id is in the log. Its frame's ACK waits
        // for the commit that covers what was stored before it, like any other outcome.
        self.note(origin.source, origin.seq, 0, 0, 1);
    }
}
