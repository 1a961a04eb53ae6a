//! Closing connections: what a closed connection leaves behind is counted and released,
//! and a producer's connection with frames in flight drains before its slot is free.

use std::os::fd::AsRawFd;

use super::conn::CloseReason;
use super::{AckMode, Ingest, ratekeys};

impl<const P: usize, const POOL: usize, const LANE: usize, const DL: usize>
    Ingest<'_, P, POOL, LANE, DL>
{
    /// A closed connection of a producer whose frames are still in flight: resolves them
    /// (moving the producer's sequence), sends nothing, and is done when none is left.
    pub(super) fn drain(&mut self, slot: usize) -> (bool, Option<CloseReason>) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return (false, None);
        };
        let work = conn.resolve_front(self.batch_watermark, self.now, &mut self.ack_latency) > 0;
        if let Some(p) = conn.producer {
            self.producers.resolved(p, conn.through);
        }
        // Nobody reads replies any more.
        conn.wstart = 0;
        conn.wend = 0;
        conn.ack_owed = false;
        let done = conn.tracks.is_empty();
        (work, done.then_some(CloseReason::Drained))
    }

    /// Takes `slot` out of the queue of connections waiting for room.
    pub(super) fn unqueue(&mut self, slot: usize) {
        if let Some(conn) = self.conns[slot].as_mut() {
            if conn.queued {
                conn.queued = false;
                if let Some(pos) = self.waiting.iter().position(|&s| s == slot) {
                    self.waiting.remove(pos);
                }
            }
        }
    }

    pub(super) fn close(&mut self, slot: usize, reason: CloseReason) {
        self.unqueue(slot);
        if let Some(conn) = self.conns[slot].as_mut() {
            // Whatever it sent and the engine did not dispatch is thrown away: counted.
            let dropped = conn.drop_input();
            let c = self.counters;
            if dropped.partial_bytes > 0 {
                c.tcp_partial_frames_dropped.incr();
                c.tcp_partial_frame_bytes_dropped
                    .add(dropped.partial_bytes as u64);
            }
            c.tcp_unread_frames_dropped
                .add(dropped.unread_frames as u64);
            c.tcp_unread_bytes_dropped.add(dropped.unread_bytes as u64);
            // It sends no more: its key may go once idle (a draining connection too).
            let key = std::mem::replace(&mut conn.rate_key, ratekeys::SHARED);
            self.rate_keys.release(key, self.now);
        }
        if self.start_drain(slot, reason) {
            self.count_close(reason);
            return;
        }
        if let Some(conn) = self.conns[slot].as_mut() {
            if let Some(p) = conn.producer.take() {
                if conn.draining {
                    self.producers.drained(p, self.now);
                } else {
                    self.producers.detach(p, slot, false, self.now);
                }
            }
            if let Some(stream) = conn.stream.take() {
                let _ = self.epoll.delete(stream.as_raw_fd());
            }
            if let Some(peer) = conn.peer.take() {
                self.peers.remove(peer);
            }
            conn.tracks.clear();
            // A frame that waited for room was never taken whole: the client resends it.
            conn.progress = None;
        }
        if let Some(pos) = self.open.iter().position(|&s| s == slot) {
            self.open.swap_remove(pos);
            self.free.push(slot);
        }
        if reason != CloseReason::Drained {
            self.count_close(reason);
        }
        self.counters.tcp_open.set(self.open.len() as u64);
    }

    /// Counts a connection closed for `reason`.
    fn count_close(&self, reason: CloseReason) {
        let c = self.counters;
        c.tcp_closed.incr();
        match reason {
            CloseReason::Malformed => c.tcp_closed_malformed.incr(),
            CloseReason::Stalled => c.tcp_closed_stalled.incr(),
            CloseReason::Idle => c.tcp_closed_idle.incr(),
            CloseReason::FrameTimeout => c.tcp_closed_frame_timeout.incr(),
            CloseReason::Peer => c.tcp_closed_peer.incr(),
            CloseReason::Error => c.tcp_closed_error.incr(),
            CloseReason::Shutdown => c.tcp_closed_shutdown.incr(),
            CloseReason::StorageFailed => c.tcp_closed_storage_failed.incr(),
            CloseReason::Fenced => c.tcp_closed_fenced.incr(),
            CloseReason::Drained => {}
            CloseReason::DrainAbandoned => c.tcp_drains_abandoned.incr(),
        }
    }

    /// A connection of a producer closing with frames in flight stays (draining) until
    /// they resolve, so the producer's sequence covers them: a reconnecting producer then
    /// gets duplicates, not copies, for frames the engine took. Not at shutdown or after a
    /// storage failure (nothing more resolves then). Returns whether it drains.
    fn start_drain(&mut self, slot: usize, reason: CloseReason) -> bool {
        if matches!(
            reason,
            CloseReason::Shutdown
                | CloseReason::StorageFailed
                | CloseReason::Drained
                | CloseReason::DrainAbandoned
        ) {
            return false;
        }
        let Some(conn) = self.conns[slot].as_mut() else {
            return false;
        };
        let Some(p) = conn.producer else {
            return false;
        };
        if conn.draining || conn.tracks.is_empty() || self.ack == AckMode::None {
            return false;
        }
        if let Some(stream) = conn.stream.take() {
            let _ = self.epoll.delete(stream.as_raw_fd());
        }
        if let Some(peer) = conn.peer.take() {
            self.peers.remove(peer);
        }
        if conn.progress.take().is_some() {
            // The frame that waited for room will not be finished: what it dispatched
            // resolves, but it must not count as resolved for the producer (the rest of it
            // is resent).
            if let Some(t) = conn.tracks.back_mut() {
                t.open = false;
                t.moves_watermark = false;
            }
        }
        conn.draining = true;
        conn.last_input = self.now; // the drain's start, for its deadline
        conn.readable = false;
        conn.peer_closed = true;
        conn.closing = None;
        conn.wstart = 0;
        conn.wend = 0;
        self.producers.detach(p, slot, true, self.now);
        true
    }
}
