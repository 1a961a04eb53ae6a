//! Producer sessions found again in the logs after a restart.
//!
//! Every record of a producer session (protocol version 2) carries the producer's id, its
//! frame's seq, the event's index in the frame and the highest seq of that producer the
//! engine had resolved when it took the frame in ([`Origin`]). From the newest records of
//! each log [`scan`] rebuilds, per producer:
//!
//! - `last_seq`: the highest such resolved seq. Every frame at or below it was resolved
//!   (its events stored, dead-lettered or refused) before the engine stopped, so a resend of
//!   it is a duplicate as a whole;
//! - the events it holds of the frames above `last_seq` ([`HeldFrames`]): frames that were in
//!   flight when the engine stopped, stored in part or in whole. A resend of such a frame is
//!   dispatched again except for the events the logs hold.
//!
//! What is scanned: in each log, the records from the newest segment whose first event was
//! received at or before a cutoff (the engine's start minus [`SESSION_SCAN`] or the dedup
//! window, whichever is longer); in a log without events (dead letters) the newest two
//! segments. A frame still unresolved longer than that before a crash (storage stalled for a
//! minute) may have records outside the scan: resent, those events would be stored again.
//!
//! [`Origin`]: pinstream_core::event::Origin

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::record::{self, RecordBody};
use super::{LogReader, StorageError};

/// How far back (in received time) the logs are read at least.
pub const SESSION_SCAN: Duration = Duration::from_secs(60);

/// Segments read at the end of a log whose records carry no wall time (dead letters).
const UNTIMED_SEGMENTS: usize = 2;

/// The events of a producer's frames above its `last_seq` that the logs hold.
#[derive(Debug, Default)]
pub struct HeldFrames {
    max_seq: u64,
    events: HashSet<(u64, u32)>,
}

impl HeldFrames {
    /// Whether the logs hold event `index` of frame `seq`.
    pub fn holds(&self, seq: u64, index: u32) -> bool {
        seq <= self.max_seq && self.events.contains(&(seq, index))
    }

    /// The highest frame seq with an event held.
    pub fn max_seq(&self) -> u64 {
        self.max_seq
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// One producer as the logs left it.
#[derive(Clone, Debug)]
pub struct ProducerState {
    /// Its id.
    pub id: u64,
    /// Frames at or below this seq were resolved.
    pub last_seq: u64,
    /// What the logs hold of its frames above `last_seq` (`None`: nothing).
    pub held: Option<Arc<HeldFrames>>,
}

/// What [`scan`] found.
#[derive(Debug, Default)]
pub struct SessionScan {
    /// The producers, in no particular order.
    pub producers: Vec<ProducerState>,
    /// Records read.
    pub scanned: u64,
    /// Events held of frames above the producers' `last_seq`.
    pub held: u64,
    /// How long it took.
    pub took: Duration,
}

/// One producer while the logs are read.
#[derive(Default)]
struct Acc {
    resolved: u64,
    events: Vec<(u64, u32)>,
    /// `events.len()` after the last pruning.
    kept: usize,
}

impl Acc {
    fn add(&mut self, seq: u64, index: u32, resolved: u64) {
        self.resolved = self.resolved.max(resolved);
        if seq > self.resolved {
            self.events.push((seq, index));
        }
        // Events of frames resolved since are dropped now and then, so the memory held is
        // about one window of frames in flight, not the scan's length.
        if self.events.len() >= 2 * self.kept + 1024 {
            let r = self.resolved;
            self.events.retain(|&(s, _)| s > r);
            self.kept = self.events.len();
        }
    }
}

/// Reads the newest records of the logs in `dirs` (missing or empty logs are skipped) and
/// rebuilds the producer sessions they hold. `cutoff`: nanoseconds since the Unix epoch;
/// records received before it are not needed.
///
/// # Errors
/// A log that cannot be listed or read.
pub fn scan(dirs: &[&Path], cutoff: u64) -> Result<SessionScan, StorageError> {
    let t0 = Instant::now();
    let mut accs: HashMap<u64, Acc> = HashMap::new();
    let mut scanned = 0u64;
    for dir in dirs {
        if !dir.exists() {
            continue;
        }
        let segments = super::segment_bases(dir)?;
        if segments.is_empty() {
            continue;
        }
        let mut reader = LogReader::open(dir)?;
        let first = first_segment(&mut reader, &segments, cutoff)?;
        reader.seek(segments[first])?;
        while let Some(rec) = reader.next_record() {
            let rec = rec?;
            scanned += 1;
            let origin = match record::decode(rec.kind, &rec.body) {
                Ok(RecordBody::Event(e)) => e.origin,
                Ok(RecordBody::DeadLetter(d)) => d.origin,
                _ => continue,
            };
            if origin.producer != 0 {
                accs.entry(origin.producer).or_default().add(
                    origin.seq,
                    origin.index,
                    origin.resolved,
                );
            }
        }
    }
    let mut out = SessionScan {
        scanned,
        ..SessionScan::default()
    };
    for (id, acc) in accs {
        let last_seq = acc.resolved;
        let events: HashSet<(u64, u32)> = acc
            .events
            .into_iter()
            .filter(|&(s, _)| s > last_seq)
            .collect();
        out.held += events.len() as u64;
        let held = (!events.is_empty()).then(|| {
            Arc::new(HeldFrames {
                max_seq: events.iter().map(|&(s, _)| s).max().unwrap_or(0),
                events,
            })
        });
        out.producers.push(ProducerState { id, last_seq, held });
    }
    out.took = t0.elapsed();
    Ok(out)
}

/// The index of the segment to read from: the newest whose first event was received at or
/// before `cutoff`; without events, [`UNTIMED_SEGMENTS`] from the end.
fn first_segment(
    reader: &mut LogReader,
    segments: &[u64],
    cutoff: u64,
) -> Result<usize, StorageError> {
    let mut untimed = 0;
    for (i, &base) in segments.iter().enumerate().rev() {
        reader.seek(base)?;
        let mut received = None;
        while let Some(rec) = reader.next_record() {
            let rec = rec?;
            match record::decode(rec.kind, &rec.body) {
                Ok(RecordBody::Event(e)) => {
                    received = Some(e.received);
                    break;
                }
                Ok(RecordBody::DeadLetter(_)) => break,
                _ => {}
            }
        }
        match received {
            Some(r) if r <= cutoff => return Ok(i),
            Some(_) => {}
            None => {
                untimed += 1;
                if untimed >= UNTIMED_SEGMENTS {
                    return Ok(i);
                }
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;

    use pinstream_core::event::{EventHeader, Lane, Origin, Priority};
    use pinstream_core::lanes::DeadLetter;
    use pinstream_core::process::StoredEvent;
    use pinstream_core::reason::Reason;

    use super::*;
    use crate::storage::{Log, LogConfig};

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn dir(tag: &str) -> Dir {
        let path =
            std::env::temp_dir().join(format!("pinstream-sessions-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        Dir(path)
    }

    fn event(log: &mut Log, origin: Origin, received: u64) {
        let header = EventHeader::new(
            origin.seq * 100 + u64::from(origin.index),
            0,
            Priority::High,
            0,
        );
        let ev = StoredEvent {
            lane: Lane::Realtime,
            header: &header,
            origin,
            received,
            payload: b"x",
        };
        let (kind, len) = record::event_shape(&ev);
        log.append_with(kind, len, |dst| record::encode_event(dst, &ev))
            .unwrap();
    }

    /// Frames 1–3 of producer 7 are resolved by the time frame 5 is taken in; frames 4 and 5
    /// were in flight: the logs hold parts of them (one in the dead-letter log). Producer 9
    /// has only resolved frames; a connection without a producer is not a session.
    #[test]
    fn resolved_seq_and_held_events_are_rebuilt() {
        let root = dir("rebuild");
        let (rt, dl) = (root.0.join("realtime"), root.0.join("dead-letter"));
        let p7 = |seq, resolved| Origin::new(1, seq).with_producer(7, resolved);
        let mut log = Log::open(LogConfig::new(&rt)).unwrap().0;
        // Old records, before the cutoff, are read too when their segment starts earlier.
        event(&mut log, p7(1, 0).at(0), 10);
        event(&mut log, p7(2, 1).at(0), 1_000);
        event(&mut log, p7(3, 1).at(0), 1_000);
        event(&mut log, p7(4, 3).at(0), 1_000);
        event(&mut log, p7(4, 3).at(2), 1_000);
        event(&mut log, p7(5, 3).at(1), 1_000);
        event(&mut log, Origin::new(2, 8).with_producer(9, 6).at(0), 1_000);
        event(&mut log, Origin::new(3, 1), 1_000);
        log.close().unwrap();
        let mut dead = Log::open(LogConfig::new(&dl)).unwrap().0;
        let letter = DeadLetter {
            header: EventHeader::new(1, 0, Priority::High, 0),
            origin: p7(4, 2).at(1),
            reason: Reason::RateLimited,
            tick: 0,
            events: 1,
        };
        let (kind, len) = record::dead_letter_shape(&letter);
        dead.append_with(kind, len, |dst| record::encode_dead_letter(dst, &letter))
            .unwrap();
        dead.close().unwrap();
        let missing = root.0.join("batch");
        let scan = scan(&[&rt, &missing, &dl], 500).unwrap();
        assert_eq!(scan.scanned, 9);
        assert_eq!(scan.held, 5, "four of producer 7, one of producer 9");
        let mut producers = scan.producers;
        producers.sort_by_key(|p| p.id);
        assert_eq!(producers.len(), 2);
        let (p7, p9) = (&producers[0], &producers[1]);
        assert_eq!((p7.id, p7.last_seq), (7, 3));
        let held = p7.held.as_ref().unwrap();
        assert_eq!((held.len(), held.max_seq()), (4, 5));
        for (seq, index, holds) in [
            (4, 0, true),
            (4, 1, true),
            (4, 2, true),
            (4, 3, false),
            (5, 0, false),
            (5, 1, true),
            (3, 0, false),
            (6, 0, false),
        ] {
            assert_eq!(held.holds(seq, index), holds, "frame {seq} event {index}");
        }
        assert_eq!((p9.id, p9.last_seq), (9, 6));
        assert!(p9.held.is_some(), "frame 8 is above 6");
    }

    /// Many resolved frames in a row keep the scan's memory at the frames in flight.
    #[test]
    fn resolved_frames_are_pruned_while_reading() {
        let mut acc = Acc::default();
        for seq in 1..100_000u64 {
            acc.add(seq, 0, seq.saturating_sub(4));
        }
        assert!(acc.events.len() < 3_000, "{}", acc.events.len());
        assert_eq!(acc.resolved, 99_995);
    }
}
