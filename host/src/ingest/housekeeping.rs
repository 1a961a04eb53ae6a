//! Housekeeping, every few milliseconds: the idle, stall, frame and drain timeouts, and
//! once a second the sweep of idle producer sessions and rate-limit keys.

use super::Ingest;
use super::conn::CloseReason;

/// The longest a closed producer connection drains (at least the stall timeout), in ticks.
const DRAIN_TIMEOUT: u64 = 60_000_000_000;
/// How often idle producer sessions are looked for, in ticks (1 s).
const PRODUCER_SWEEP: u64 = 1_000_000_000;

impl<const P: usize, const POOL: usize, const LANE: usize, const DL: usize>
    Ingest<'_, P, POOL, LANE, DL>
{
    pub(super) fn housekeeping(&mut self) {
        let stall = u64::try_from(self.limits.stall_timeout.as_nanos()).unwrap_or(u64::MAX);
        let idle = u64::try_from(self.limits.idle_timeout.as_nanos()).unwrap_or(u64::MAX);
        let frame = match u64::try_from(self.limits.frame_timeout.as_nanos()) {
            Ok(0) => u64::MAX,
            Ok(t) => t,
            Err(_) => u64::MAX,
        };
        let mut i = 0;
        while i < self.open.len() {
            let slot = self.open[i];
            let now = self.now;
            let verdict = self.conns[slot].as_mut().and_then(|c| {
                if c.gateway {
                    // Its peer is a thread of this process: no timeout applies.
                    return None;
                }
                // Bytes alone do not hold a slot: a frame begun must arrive whole in time.
                if c.partial_frame_age(now).is_some_and(|age| age > frame) {
                    return Some(CloseReason::FrameTimeout);
                }
                if c.draining {
                    // Its frames resolve as storage goes (milliseconds); a drain that takes
                    // longer than DRAIN_TIMEOUT (storage stuck) is given up and counted: the
                    // producer's sequence then stops short of those frames, and their resend
                    // may store them twice (medium events are recognised by id).
                    let limit = stall.max(DRAIN_TIMEOUT);
                    return (self.now - c.last_input > limit)
                        .then_some(CloseReason::DrainAbandoned);
                }
                if c.stalled_since != 0 && self.now - c.stalled_since > stall {
                    Some(CloseReason::Stalled)
                } else if (c.closing.is_some() || c.peer_closed) && self.now - c.last_input > stall
                {
                    Some(c.closing.unwrap_or(CloseReason::Peer))
                } else if c.tracks.is_empty()
                    && c.progress.is_none()
                    && self.now - c.last_input > idle
                {
                    // (A frame that waits, e.g. for rate-limit tokens, is no silence.)
                    Some(CloseReason::Idle)
                } else {
                    None
                }
            });
            match verdict {
                Some(reason) => {
                    self.close(slot, reason);
                    // A connection that started draining stays at `i`: it is looked at
                    // once more, as a draining one.
                    if self.conns[slot].as_ref().is_some_and(|c| c.draining)
                        && self.open.get(i) == Some(&slot)
                    {
                        i += 1;
                    }
                }
                None => i += 1,
            }
        }
        // The sweep reads the whole table: once a second is plenty for an idle limit counted
        // in minutes, and keeps it out of the ingest thread's cache the rest of the time.
        if self.now - self.last_producer_sweep >= PRODUCER_SWEEP {
            self.last_producer_sweep = self.now;
            self.rate_keys.sweep(self.now, self.counters);
            let evicted = self.producers.evict_idle(self.now);
            if evicted > 0 {
                self.counters.tcp_producers_evicted.add(evicted);
                self.counters.tcp_producers.set(self.producers.len() as u64);
            }
        }
    }
}
