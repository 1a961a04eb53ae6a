//! Producer sessions found again in the logs after a restart.
//!
//! Every record of a producer session (protocol version 2, acknowledgements on) carries the
//! producer's id, the session's epoch, its frame's seq, the event's index in the frame and
//! how far the producer's frames were resolved when the engine took the frame in
//! ([`Origin`]). From the newest records of each log [`scan`] rebuilds, per producer and
//! from its newest epoch only (a producer forgotten and back started a new session, whose
//! seqs start again):
//!
//! - `last_seq`: the highest resolved seq the records carry. Every frame at or below it was
//!   resolved (its events stored, dead-lettered or refused) before the engine stopped, so a
//!   resend of it is a duplicate as a whole;
//! - the events it holds of the frames above `last_seq` ([`HeldFrames`]): frames that were in
//!   flight when the engine stopped, stored in part or in whole. A resend of such a frame is
//!   dispatched again except for the events the logs hold *with the same header and
//!   payload* at the same place: a frame with that seq carrying other events (a producer
//!   that numbered new frames from `last_seq`) is taken in full.
//!
//! What is scanned: in each log, the records from the newest segment whose first event was
//! received at or before a cutoff (the engine's start minus [`SESSION_SCAN`] or the dedup
//! window, whichever is longer); in a log without events (dead letters) the newest two
//! segments. A frame still unresolved longer than that before a crash (storage stalled for a
//! minute) may have records outside the scan: resent, those events would be stored again.
//! A record that cannot be read ends the scan of its log (reported): what is missed can only
//! make a resend be stored again, never refuse a new event. At most [`MAX_HELD`] events are
//! remembered per producer; beyond that, its in-flight frames are forgotten (counted).
//!
//! [`Origin`]: pinstream_core::event::Origin

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pinstream_core::event::{EventHeader, Origin};
use pinstream_core::wire::crc32c;

use super::record::{self, RecordBody};
use super::{LogReader, StorageError};

/// How far back (in received time) the logs are read at least.
pub const SESSION_SCAN: Duration = Duration::from_secs(60);

/// Events of in-flight frames remembered per producer at most.
pub const MAX_HELD: usize = 1 << 18;

/// Segments read at the end of a log whose records carry no wall time (dead letters).
const UNTIMED_SEGMENTS: usize = 2;

/// What the logs hold at one place (frame seq, index) of a producer: the event's header and
/// its payload's CRC32C (`None` for a dead letter, whose record has no payload).
type Held = (EventHeader, Option<u32>);

/// The events of a producer's frames above its `last_seq` that the logs hold.
#[derive(Debug, Default)]
pub struct HeldFrames {
    max_seq: u64,
    events: HashMap<(u64, u32), Held>,
}

impl HeldFrames {
    /// Whether the logs hold event `index` of frame `seq`, with this header and payload.
    pub fn holds(&self, seq: u64, index: u32, header: &EventHeader, payload: &[u8]) -> bool {
        if seq > self.max_seq {
            return false;
        }
        match self.events.get(&(seq, index)) {
            Some((h, crc)) => h == header && crc.is_none_or(|c| c == crc32c(payload)),
            None => false,
        }
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
    /// Its session's epoch.
    pub epoch: u32,
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
    /// Producers whose in-flight frames held more than [`MAX_HELD`] events: not
    /// remembered (resent, they may be stored twice).
    pub forgotten: usize,
    /// Logs whose scan ended early at a record that could not be read, with the error.
    pub unreadable: Vec<String>,
    /// How long it took.
    pub took: Duration,
}

/// One producer while the logs are read.
#[derive(Default)]
struct Acc {
    epoch: u32,
    resolved: u64,
    events: Vec<(u64, u32, Held)>,
    /// `events.len()` after the last pruning.
    kept: usize,
    /// More than [`MAX_HELD`] events in flight: none is remembered.
    overflow: bool,
}

impl Acc {
    fn add(&mut self, origin: &Origin, held: Held) {
        if origin.epoch < self.epoch {
            return; // an older session of the same id
        }
        if origin.epoch > self.epoch {
            *self = Acc {
                epoch: origin.epoch,
                ..Acc::default()
            };
        }
        self.resolved = self.resolved.max(origin.resolved());
        if origin.seq > self.resolved && !self.overflow {
            self.events.push((origin.seq, origin.index, held));
        }
        // Events of frames resolved since are dropped now and then, so the memory held is
        // about one window of frames in flight, not the scan's length.
        if self.events.len() >= 2 * self.kept + 1024 {
            let r = self.resolved;
            self.events.retain(|&(s, _, _)| s > r);
            self.kept = self.events.len();
            if self.kept > MAX_HELD {
                self.overflow = true;
                self.events = Vec::new();
                self.kept = 0;
            }
        }
    }
}

/// Reads the newest records of the logs in `dirs` (missing or empty logs are skipped) and
/// rebuilds the producer sessions they hold. `cutoff`: nanoseconds since the Unix epoch;
/// records received before it are not needed.
///
/// # Errors
/// A log directory that cannot be listed or opened. A record that cannot be read only ends
/// its log's scan ([`SessionScan::unreadable`]).
pub fn scan(dirs: &[&Path], cutoff: u64) -> Result<SessionScan, StorageError> {
    let t0 = Instant::now();
    let mut accs: HashMap<u64, Acc> = HashMap::new();
    let mut out = SessionScan::default();
    for dir in dirs {
        if !dir.exists() {
            continue;
        }
        let segments = super::segment_bases(dir)?;
        if segments.is_empty() {
            continue;
        }
        let mut reader = LogReader::open(dir)?;
        let read =
            first_segment(&mut reader, &segments, cutoff, UNTIMED_SEGMENTS).and_then(|first| {
                reader.seek(segments[first])?;
                while let Some(rec) = reader.next_record() {
                    let rec = rec?;
                    out.scanned += 1;
                    let (origin, held) = match record::decode(rec.kind, &rec.body) {
                        Ok(RecordBody::Event(e)) => (e.origin, (e.header, Some(crc32c(e.payload)))),
                        Ok(RecordBody::DeadLetter(d)) => (d.origin, (d.header, None)),
                        _ => continue,
                    };
                    if origin.producer != 0 {
                        accs.entry(origin.producer).or_default().add(&origin, held);
                    }
                }
                Ok(())
            });
        if let Err(e) = read {
            out.unreadable.push(format!("{}: {e}", dir.display()));
        }
    }
    for (id, acc) in accs {
        let last_seq = acc.resolved;
        out.forgotten += usize::from(acc.overflow);
        let events: HashMap<(u64, u32), Held> = acc
            .events
            .into_iter()
            .filter(|&(s, _, _)| s > last_seq)
            .map(|(s, i, h)| ((s, i), h))
            .collect();
        let held = if events.len() > MAX_HELD {
            out.forgotten += 1;
            None
        } else {
            out.held += events.len() as u64;
            (!events.is_empty()).then(|| {
                Arc::new(HeldFrames {
                    max_seq: events.keys().map(|&(s, _)| s).max().unwrap_or(0),
                    events,
                })
            })
        };
        out.producers.push(ProducerState {
            id,
            epoch: acc.epoch,
            last_seq,
            held,
        });
    }
    out.took = t0.elapsed();
    Ok(out)
}

/// The index of the segment to read from: the newest whose first event was received at or
/// before `cutoff`; after `untimed` segments without events (a dead-letter log), the last of
/// them. Everything before the segment returned is older than the cutoff.
pub(crate) fn first_segment(
    reader: &mut LogReader,
    segments: &[u64],
    cutoff: u64,
    untimed_limit: usize,
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
                if untimed >= untimed_limit {
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

    fn header(origin: &Origin) -> EventHeader {
        EventHeader::new(
            origin.seq * 100 + u64::from(origin.index),
            0,
            Priority::High,
            0,
        )
    }

    fn event(log: &mut Log, origin: Origin, received: u64) {
        let header = header(&origin);
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
        let p7 = |seq, resolved| Origin::new(1, seq).with_producer(7, 1, resolved);
        let mut log = Log::open(LogConfig::new(&rt)).unwrap().0;
        // Old records, before the cutoff, are read too when their segment starts earlier.
        event(&mut log, p7(1, 0).at(0), 10);
        event(&mut log, p7(2, 1).at(0), 1_000);
        event(&mut log, p7(3, 1).at(0), 1_000);
        event(&mut log, p7(4, 3).at(0), 1_000);
        event(&mut log, p7(4, 3).at(2), 1_000);
        event(&mut log, p7(5, 3).at(1), 1_000);
        event(
            &mut log,
            Origin::new(2, 8).with_producer(9, 1, 6).at(0),
            1_000,
        );
        event(&mut log, Origin::new(3, 1), 1_000);
        log.close().unwrap();
        let mut dead = Log::open(LogConfig::new(&dl)).unwrap().0;
        let letter = DeadLetter {
            header: header(&p7(4, 2).at(1)),
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
        assert!(scan.unreadable.is_empty() && scan.forgotten == 0);
        let mut producers = scan.producers;
        producers.sort_by_key(|p| p.id);
        assert_eq!(producers.len(), 2);
        let (p7s, p9) = (&producers[0], &producers[1]);
        assert_eq!((p7s.id, p7s.epoch, p7s.last_seq), (7, 1, 3));
        let held = p7s.held.as_ref().unwrap();
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
            let h = header(&p7(seq, 0).at(index));
            assert_eq!(
                held.holds(seq, index, &h, b"x"),
                holds,
                "frame {seq} event {index}"
            );
        }
        // The same place with another event (a producer numbering new frames from its
        // last_seq) or another payload is not held: it is taken.
        let other = EventHeader::new(999, 0, Priority::High, 0);
        assert!(!held.holds(4, 0, &other, b"x"));
        assert!(!held.holds(4, 0, &header(&p7(4, 0)), b"y"));
        // A dead letter has no payload: its header decides.
        assert!(held.holds(4, 1, &header(&p7(4, 0).at(1)), b"anything"));
        assert_eq!((p9.id, p9.last_seq), (9, 6));
        assert!(p9.held.is_some(), "frame 8 is above 6");
    }

    /// A producer forgotten and back starts a new session (a higher epoch) whose seqs start
    /// again: only its newest session counts, whatever the order of the records.
    #[test]
    fn only_the_newest_session_of_a_producer_counts() {
        let root = dir("epochs");
        let (rt, tx) = (root.0.join("realtime"), root.0.join("transactional"));
        let mut a = Log::open(LogConfig::new(&rt)).unwrap().0;
        // The old session went up to 900; the new one (epoch 2) is at 3.
        event(&mut a, Origin::new(1, 900).with_producer(5, 1, 899), 1_000);
        event(&mut a, Origin::new(1, 3).with_producer(5, 2, 2), 1_000);
        a.close().unwrap();
        let mut b = Log::open(LogConfig::new(&tx)).unwrap().0;
        event(&mut b, Origin::new(1, 950).with_producer(5, 1, 940), 1_000);
        b.close().unwrap();
        let scan = scan(&[&rt, &tx], 500).unwrap();
        let p = &scan.producers[0];
        assert_eq!((p.id, p.epoch, p.last_seq), (5, 2, 2));
        let held = p.held.as_ref().unwrap();
        assert_eq!((held.len(), held.max_seq()), (1, 3));
    }

    /// Many resolved frames in a row keep the scan's memory at the frames in flight; a
    /// producer with more in flight than [`MAX_HELD`] is forgotten, not kept at any size.
    #[test]
    fn resolved_frames_are_pruned_and_the_held_events_bounded() {
        let mut acc = Acc::default();
        let h = (EventHeader::new(0, 0, Priority::High, 0), None);
        for seq in 1..100_000u64 {
            acc.add(
                &Origin::new(1, seq).with_producer(3, 1, seq.saturating_sub(4)),
                h,
            );
        }
        assert!(acc.events.len() < 3_000, "{}", acc.events.len());
        assert_eq!(acc.resolved, 99_995);
        // Nothing resolved (acknowledgements off): everything would be held.
        let mut acc = Acc::default();
        for seq in 1..(3 * MAX_HELD as u64) {
            acc.add(&Origin::new(1, seq).with_producer(3, 1, 0), h);
        }
        assert!(acc.overflow && acc.events.len() <= MAX_HELD);
    }
}
