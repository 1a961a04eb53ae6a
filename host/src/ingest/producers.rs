//! Producer sessions (protocol version 2): per producer id, the highest frame `seq` the
//! engine has resolved, so that a producer that reconnects and resends gets what was already
//! resolved answered as duplicates instead of stored again.
//!
//! The table is fixed at start-up (`tcp.max_producers` entries, one `HashMap` sized once):
//! its memory depends on the number of producers, not on the event rate (besides what a
//! restart found of frames in flight, at most `sessions::MAX_HELD` events per producer,
//! dropped once the producer's sequence has passed them). An entry without a
//! connection is evicted after `tcp.producer_idle_ms`, or earlier, oldest first, when a new
//! producer needs its place; a HELLO that finds every entry attached to a connection is
//! refused. Each eviction and refusal is counted.
//!
//! One connection at a time sends for a producer. A HELLO naming a producer that another
//! connection holds fences that connection (it is closed); while a closed connection of a
//! producer still has frames in flight it *drains* (its frames resolve and move the
//! producer's sequence), and a new connection's HELLO for that producer is answered only
//! once the draining is over, so the sequence it reports covers everything the engine took
//! from the producer.
//!
//! At start-up the table is filled from the logs ([`Producers::restore`], the scan of
//! [`sessions`](crate::storage::sessions)): each producer's resolved seq, and the events of
//! its frames that were in flight when the engine stopped.

use std::collections::HashMap;
use std::sync::Arc;

use crate::storage::sessions::{HeldFrames, ProducerState};

/// One producer.
#[derive(Clone, Debug)]
struct Entry {
    id: u64,
    /// Highest resolved frame seq (0: none).
    last_seq: u64,
    /// The connection slot sending for it now.
    conn: Option<usize>,
    /// Closed connections of this producer with frames still in flight.
    draining: u32,
    /// Tick of the last attach or detach.
    active: u64,
    /// The session's epoch: a producer forgotten and back gets a larger one.
    epoch: u32,
    /// What the logs held at start-up of its frames above `last_seq`.
    held: Option<Arc<HeldFrames>>,
}

/// Why a producer could not be attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AttachError {
    /// Every entry is held by a live connection (or draining one).
    Full,
}

/// What [`Producers::attach`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Attached {
    /// The entry (stable while the producer is attached or draining).
    pub(crate) index: usize,
    /// The producer id (the one asked for, or the one assigned).
    pub(crate) id: u64,
    /// A connection that held the producer and must be fenced (closed).
    pub(crate) fenced: Option<usize>,
    /// Whether an idle entry was evicted to make room.
    pub(crate) evicted: bool,
}

/// The producer table. One owner: the ingest thread.
pub(crate) struct Producers {
    entries: Vec<Option<Entry>>,
    by_id: HashMap<u64, usize>,
    /// Free entries (indices into `entries`).
    free: Vec<usize>,
    idle: u64,
    /// The next id to try when assigning one (never 0).
    next_id: u64,
    /// The last epoch given to a session: at least the wall clock's seconds and above every
    /// epoch restored, so a later session of an id always has a larger one.
    last_epoch: u32,
}

impl Producers {
    /// A table of `max` producers whose idle entries are evicted after `idle` ticks; ids the
    /// server assigns start from `seed` (any value: it is mixed; 0 is never assigned).
    pub(crate) fn new(max: usize, idle: u64, seed: u64) -> Self {
        Self {
            entries: vec![None; max],
            by_id: HashMap::with_capacity(max),
            free: (0..max).rev().collect(),
            idle,
            next_id: seed | 1,
            last_epoch: 0,
        }
    }

    /// An epoch above every one given or restored, and not below the wall clock's seconds
    /// (so above those of an earlier run whose records the logs no longer show).
    fn new_epoch(&mut self) -> u32 {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        self.last_epoch = self.last_epoch.saturating_add(1).max(wall);
        self.last_epoch
    }

    /// Producers in the table.
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Attaches connection `slot` to producer `id` (0: assign a new id) at tick `now`.
    pub(crate) fn attach(
        &mut self,
        id: u64,
        slot: usize,
        now: u64,
    ) -> Result<Attached, AttachError> {
        if let Some(&index) = self.by_id.get(&id).filter(|_| id != 0) {
            let e = self.entries[index].as_mut().expect("indexed entries exist");
            let fenced = e.conn.filter(|&old| old != slot);
            e.conn = Some(slot);
            e.active = now;
            return Ok(Attached {
                index,
                id,
                fenced,
                evicted: false,
            });
        }
        let id = if id == 0 { self.assign() } else { id };
        let mut evicted = false;
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                // The entry idle the longest (no connection, nothing draining) gives way.
                let victim = self
                    .entries
                    .iter()
                    .enumerate()
                    .filter_map(|(i, e)| e.as_ref().map(|e| (i, e)))
                    .filter(|(_, e)| e.conn.is_none() && e.draining == 0)
                    .min_by_key(|(_, e)| e.active)
                    .map(|(i, _)| i)
                    .ok_or(AttachError::Full)?;
                self.remove(victim);
                evicted = true;
                self.free.pop().expect("an entry was just freed")
            }
        };
        let epoch = self.new_epoch();
        self.entries[index] = Some(Entry {
            id,
            last_seq: 0,
            conn: Some(slot),
            draining: 0,
            active: now,
            epoch,
            held: None,
        });
        self.by_id.insert(id, index);
        Ok(Attached {
            index,
            id,
            fenced: None,
            evicted,
        })
    }

    /// A fresh id not in the table (a 64-bit mix of a counter: unpredictable enough that two
    /// engines rarely hand out the same one; a client that needs ids unique across engines
    /// picks its own).
    fn assign(&mut self) -> u64 {
        loop {
            self.next_id = self.next_id.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.next_id;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            if z != 0 && !self.by_id.contains_key(&z) {
                return z;
            }
        }
    }

    fn remove(&mut self, index: usize) {
        if let Some(e) = self.entries[index].take() {
            self.by_id.remove(&e.id);
            self.free.push(index);
        }
    }

    /// Puts the producers a scan of the logs found into the table, without a connection,
    /// active at `now` (idle from then on). Returns how many did not fit (the table holds
    /// `tcp.max_producers`): those start again from seq 0 if they come back.
    pub(crate) fn restore(&mut self, found: Vec<ProducerState>, now: u64) -> usize {
        let mut left_out = 0;
        for p in found {
            self.last_epoch = self.last_epoch.max(p.epoch);
            if p.id == 0 || self.by_id.contains_key(&p.id) {
                continue;
            }
            let Some(index) = self.free.pop() else {
                left_out += 1;
                continue;
            };
            self.entries[index] = Some(Entry {
                id: p.id,
                last_seq: p.last_seq,
                conn: None,
                draining: 0,
                active: now,
                epoch: p.epoch,
                held: p.held,
            });
            self.by_id.insert(p.id, index);
        }
        left_out
    }

    /// The producer's id.
    pub(crate) fn id(&self, index: usize) -> u64 {
        self.entries[index].as_ref().map_or(0, |e| e.id)
    }

    /// The producer session's epoch.
    pub(crate) fn epoch(&self, index: usize) -> u32 {
        self.entries[index].as_ref().map_or(0, |e| e.epoch)
    }

    /// The producer's highest resolved seq.
    pub(crate) fn last_seq(&self, index: usize) -> u64 {
        self.entries[index].as_ref().map_or(0, |e| e.last_seq)
    }

    /// What the logs held at start-up of the producer's frames above its resolved seq
    /// (dropped once its sequence has passed them).
    pub(crate) fn held(&self, index: usize) -> Option<Arc<HeldFrames>> {
        self.entries[index].as_ref().and_then(|e| e.held.clone())
    }

    /// Whether closed connections of the producer still have frames in flight (a HELLO
    /// for it waits until they are resolved).
    pub(crate) fn draining(&self, index: usize) -> bool {
        self.entries[index].as_ref().is_some_and(|e| e.draining > 0)
    }

    /// Frames through `seq` of the producer are resolved.
    pub(crate) fn resolved(&mut self, index: usize, seq: u64) {
        if let Some(e) = self.entries[index].as_mut() {
            e.last_seq = e.last_seq.max(seq);
            if e.held.as_ref().is_some_and(|h| h.max_seq() <= e.last_seq) {
                e.held = None;
            }
        }
    }

    /// Connection `slot` no longer sends for the producer; `draining`: it still has frames
    /// in flight (call [`drained`](Self::drained) when they are resolved).
    pub(crate) fn detach(&mut self, index: usize, slot: usize, draining: bool, now: u64) {
        if let Some(e) = self.entries[index].as_mut() {
            if e.conn == Some(slot) {
                e.conn = None;
            }
            if draining {
                e.draining += 1;
            }
            e.active = now;
        }
    }

    /// A draining connection of the producer is done.
    pub(crate) fn drained(&mut self, index: usize, now: u64) {
        if let Some(e) = self.entries[index].as_mut() {
            e.draining = e.draining.saturating_sub(1);
            e.active = now;
        }
    }

    /// Evicts the entries without a connection idle for longer than the idle limit; returns
    /// how many.
    pub(crate) fn evict_idle(&mut self, now: u64) -> u64 {
        let mut n = 0;
        for i in 0..self.entries.len() {
            let stale = self.entries[i].as_ref().is_some_and(|e| {
                e.conn.is_none() && e.draining == 0 && now.saturating_sub(e.active) > self.idle
            });
            if stale {
                self.remove(i);
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_kept_assigned_fenced_and_evicted_oldest_first() {
        let mut p = Producers::new(2, 100, 7);
        let a = p.attach(42, 0, 1).unwrap();
        assert_eq!((a.id, a.fenced, a.evicted), (42, None, false));
        p.resolved(a.index, 9);
        // Another connection for 42: the first is fenced, the sequence is kept.
        let again = p.attach(42, 1, 2).unwrap();
        assert_eq!((again.index, again.fenced), (a.index, Some(0)));
        assert_eq!(p.last_seq(again.index), 9);
        // An assigned id is never 0 and not in use.
        let b = p.attach(0, 2, 3).unwrap();
        assert!(b.id != 0 && b.id != 42);
        // Full, everything attached: refused.
        assert_eq!(p.attach(77, 3, 4), Err(AttachError::Full));
        // Detached and draining: still not evictable; drained: the oldest idle goes.
        p.detach(again.index, 1, true, 5);
        assert_eq!(p.attach(77, 3, 6), Err(AttachError::Full));
        assert!(p.draining(again.index));
        p.drained(again.index, 7);
        let c = p.attach(77, 3, 8).unwrap();
        assert!(c.evicted);
        assert_eq!(p.len(), 2);
        // 42 is gone: a new session starts from 0.
        p.detach(c.index, 3, false, 9);
        let d = p.attach(42, 4, 10).unwrap();
        assert_eq!(p.last_seq(d.index), 0);
        // Idle eviction after the limit only.
        p.detach(d.index, 4, false, 20);
        assert_eq!(p.evict_idle(100), 0);
        assert_eq!(p.evict_idle(121), 1);
        assert_eq!(p.len(), 1);
    }
}
