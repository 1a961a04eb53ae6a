//! What start-up restores from the logs besides the logs themselves, before the engine's
//! threads start: the transactional lane's dedup window ([`DedupRefill`]) and the producer
//! sessions ([`SessionsRestored`]), so that a producer resending after a restart gets
//! duplicates, not a second copy.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pinstream_core::process::transactional::TransactionalProcessor;

use super::capacity::{DEDUP, EngineIngest};
use super::{EngineConfig, EngineStats};
use crate::storage::layout::LogId;
use crate::storage::{LogReader, StorageError, record, sessions};

/// The producer sessions (protocol version 2) rebuilt at start-up from the logs' newest
/// records ([`storage::sessions`](crate::storage::sessions)): a producer that resends after
/// a restart gets what the logs hold answered as duplicates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionsRestored {
    /// Producers put back into the table.
    pub producers: usize,
    /// Producers found that did not fit the table (`tcp.max_producers`).
    pub left_out: usize,
    /// Events held of frames that were in flight when the engine stopped.
    pub held: u64,
    /// Producers whose in-flight frames held too many events to remember
    /// ([`sessions::MAX_HELD`]): resent, those frames may be stored twice.
    pub forgotten: usize,
    /// Logs whose scan ended early at a record that could not be read (with the error).
    pub unreadable: Vec<String>,
    /// Records read to find them.
    pub scanned: u64,
    /// How long it took.
    pub took: Duration,
}

/// What start-up restored from the logs besides the logs themselves.
pub(super) struct Restored {
    /// See [`Started::dedup_refill`](super::Started::dedup_refill).
    pub(super) dedup: Option<DedupRefill>,
    /// See [`Started::sessions`](super::Started::sessions).
    pub(super) sessions: Option<SessionsRestored>,
}

/// Nanoseconds of `d`, saturated.
fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Refills the dedup window of `tx` from the transactional log and gives `ingest` the
/// producer sessions found in the logs. Runs on the supervisor thread before the engine's
/// threads start (so it may write the processors' counters).
///
/// # Errors
/// A log that cannot be read, as a message for the start-up report.
pub(super) fn restore(
    cfg: &EngineConfig,
    stats: &EngineStats,
    tx: &mut TransactionalProcessor<DEDUP>,
    ingest: &mut EngineIngest<'_>,
) -> Result<Restored, String> {
    let window = ns(cfg.dedup_window);
    // Ids stored within the last dedup window before this start are remembered again, so a
    // producer resending them after a restart gets duplicates, not a second copy.
    let dedup = refill_dedup(
        &cfg.data_dir.join(LogId::Transactional.name()),
        tx,
        stats.shared.start_wall,
        window,
    )
    .map_err(|e| format!("refilling the dedup window: {e}"))?;
    // Evictions the refill made (a table too small for the window's ids) are evictions too;
    // the processors are not running yet, so this thread may write their counter.
    stats.process.dedup_evictions.add(tx.evictions());
    // Producer sessions: what each producer had resolved, and what the logs hold of its
    // frames that were in flight, so that its resends are duplicates, not copies.
    let cutoff = stats
        .shared
        .start_wall
        .saturating_sub(window.max(ns(sessions::SESSION_SCAN)));
    let dirs: Vec<PathBuf> = LogId::ALL
        .iter()
        .map(|log| cfg.data_dir.join(log.name()))
        .collect();
    let dirs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    let scan = sessions::scan(&dirs, cutoff)
        .map_err(|e| format!("rebuilding the producer sessions: {e}"))?;
    let producers = scan.producers.len();
    let left_out = ingest.restore_producers(scan.producers);
    let sessions = (producers > 0 || !scan.unreadable.is_empty()).then_some(SessionsRestored {
        producers: producers - left_out,
        left_out,
        held: scan.held,
        forgotten: scan.forgotten,
        unreadable: scan.unreadable,
        scanned: scan.scanned,
        took: scan.took,
    });
    Ok(Restored { dedup, sessions })
}

/// The dedup window refilled at start-up from the transactional log: ids stored within the
/// last `pipeline.dedup_window_ms` are duplicates again for the rest of their window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupRefill {
    /// Ids remembered.
    pub ids: u64,
    /// Records read to find them.
    pub scanned: u64,
    /// Segments read.
    pub segments: usize,
    /// How long it took.
    pub took: Duration,
}

/// Reads the transactional log's records of the last `window` ns (wall clock, before
/// `start_wall`) into the dedup table, oldest first, each at its first-seen time in the new
/// engine's ticks (ticks before the start wrap around: the table's ages are modular). Walks
/// back segment by segment from the newest to the first whose first record is older than
/// the window, then reads forward from there; at most a window's worth of records plus one
/// segment. Records of older engines (their `received` was a tick, not a wall time) look
/// decades old and are skipped.
fn refill_dedup(
    dir: &Path,
    tx: &mut TransactionalProcessor<DEDUP>,
    start_wall: u64,
    window: u64,
) -> Result<Option<DedupRefill>, StorageError> {
    let t0 = Instant::now();
    let cutoff = start_wall.saturating_sub(window);
    let segments = crate::storage::segment_bases(dir)?;
    if segments.is_empty() || window == 0 {
        return Ok(None);
    }
    let mut reader = LogReader::open(dir)?;
    // The newest segment whose first event record is at or before the cutoff: reading
    // starts there (everything before it is older than the window; segments without events
    // are walked past).
    let first =
        crate::storage::sessions::first_segment(&mut reader, &segments, cutoff, usize::MAX)?;
    reader.seek(segments[first])?;
    let (mut ids, mut scanned) = (0u64, 0u64);
    while let Some(rec) = reader.next_record() {
        let rec = rec?;
        scanned += 1;
        if let Ok(record::RecordBody::Event(e)) = record::decode(rec.kind, &rec.body) {
            if e.received > cutoff && e.received <= start_wall.saturating_add(window) {
                // Tick of the sighting in the new engine's clock (before 0: wraps).
                tx.remember(e.header.id, e.received.wrapping_sub(start_wall));
                ids += 1;
            }
        }
    }
    Ok((ids > 0).then(|| DedupRefill {
        ids,
        scanned,
        segments: segments.len() - first,
        took: t0.elapsed(),
    }))
}
