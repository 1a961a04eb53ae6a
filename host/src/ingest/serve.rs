//! One connection's round: the storage thread's completions applied, frames resolved,
//! input read and handed to [`parse`](super::parse), ACKs and REJECTs written out.

use std::io;
use std::sync::atomic::Ordering;

use pinstream_core::reason::Reason;

use super::conn::CloseReason;
use super::parse::dispatch_buffered;
use super::{Ingest, SourceId};

impl<const P: usize, const POOL: usize, const LANE: usize, const DL: usize>
    Ingest<'_, P, POOL, LANE, DL>
{
    /// Applies the storage thread's completions and the batch watermark.
    pub(super) fn take_completions(&mut self) -> bool {
        let mut work = false;
        while let Some(c) = self.completions.pop() {
            work = true;
            let source = SourceId::from_raw(c.source);
            let Some(slot) = source.slot().filter(|&s| s < self.conns.len()) else {
                continue;
            };
            if let Some(conn) = self.conns[slot].as_mut() {
                if (conn.stream.is_some() || conn.draining || conn.gateway) && conn.source == source
                {
                    conn.complete(c.seq, c.stored, c.dead, c.duplicates);
                }
            }
        }
        self.batch_watermark = self.shared.batch_resolved.load(Ordering::Acquire);
        work
    }

    /// Serves every open connection once. Connections whose frame waits for room go first,
    /// oldest first; once one of them still finds none, no other connection dispatches this
    /// round (they queue behind it), so room goes to whoever waited longest. Returns whether
    /// it did any work.
    pub(super) fn serve_connections(&mut self) -> bool {
        let (mut work, blocked) = self.serve_waiting();
        work |= self.serve_others(blocked);
        work
    }

    /// Serves the connections waiting for room, oldest first. Returns (did work, blocked:
    /// no other connection may dispatch this round).
    ///
    /// A connection waiting for rate-limit tokens holds nobody back (the limit is its
    /// client's, not the engine's) and is retried by time: every round once the tick when
    /// one more token is due has come (its replies are served meanwhile), whether or not
    /// anything else wakes it.
    fn serve_waiting(&mut self) -> (bool, bool) {
        let mut work = false;
        let mut blocked = false;
        let mut k = 0;
        while k < self.waiting.len() {
            let slot = self.waiting[k];
            let allowed = !blocked;
            let due = self.conns[slot]
                .as_ref()
                .is_none_or(|c| c.rate_retry_at <= self.now);
            let (did, close) = self.serve(slot, allowed && due);
            work |= did;
            // Served: it leaves the queue unless its frame still waits. Held back: it keeps
            // its place. Only a wait for room in the engine holds the others back (not one
            // for the connection's own output buffer: its client reads slowly).
            let (waits, for_engine) = self.conns[slot]
                .as_ref()
                .map_or((false, false), |c| (c.progress.is_some(), c.engine_wait));
            if let Some(reason) = close {
                self.close(slot, reason); // also leaves the queue
            } else if !allowed || waits {
                blocked |= !allowed || for_engine;
                k += 1;
            } else {
                self.unqueue(slot);
            }
        }
        (work, blocked)
    }

    /// Serves the open connections that are not waiting for room (they may dispatch unless
    /// `blocked`); one whose frame now waits, or that wants input while held back, joins the
    /// queue. Returns whether it did any work.
    fn serve_others(&mut self, mut blocked: bool) -> bool {
        let mut work = false;
        let mut i = 0;
        while i < self.open.len() {
            let slot = self.open[i];
            if self.conns[slot].as_ref().is_some_and(|c| c.queued) {
                i += 1;
                continue; // served above
            }
            let (did, close) = self.serve(slot, !blocked);
            work |= did;
            if let Some(reason) = close {
                self.close(slot, reason);
                // `close` swapped the last open slot into `i`.
                continue;
            }
            if let Some(conn) = self.conns[slot].as_mut() {
                let held = blocked && conn.wants_input();
                if conn.progress.is_some() || held {
                    blocked |= conn.engine_wait;
                    conn.queued = true;
                    self.waiting.push_back(slot);
                }
            }
            i += 1;
        }
        work
    }

    /// Serves one connection: resolves frames, reads and dispatches while it has credit and
    /// room for replies, writes replies. Returns (did work, close reason).
    /// `dispatch`: whether it may take input now (false while older connections wait for
    /// room in the engine).
    fn serve(&mut self, slot: usize, dispatch: bool) -> (bool, Option<CloseReason>) {
        if self.conns[slot].as_ref().is_some_and(|c| c.draining) {
            return self.drain(slot);
        }
        let mut work = false;
        if dispatch && self.conns[slot].as_ref().is_some_and(|c| c.hello_pending) {
            work |= self.answer_hello(slot);
        }
        let Some(conn) = self.conns[slot].as_mut() else {
            return (false, None);
        };
        conn.engine_wait = false;
        work |= self.resolve(slot);
        let (did, close) = self.take_input(slot, dispatch);
        work |= did;
        work |= self.resolve(slot);
        let (did, close) = self.write_replies(slot, close);
        (work | did, close)
    }

    /// Resolves the frames at the front of the connection's window, moving its producer's
    /// sequence. Returns whether any was resolved.
    fn resolve(&mut self, slot: usize) -> bool {
        let Some(conn) = self.conns[slot].as_mut() else {
            return false;
        };
        if conn.resolve_front(self.batch_watermark, self.now, &mut self.ack_latency) == 0 {
            return false;
        }
        if let Some(p) = conn.producer {
            self.producers.resolved(p, conn.through);
        }
        true
    }

    /// Reads and dispatches while the connection has input, credit, room in the engine and
    /// room for replies (`dispatch`: whether it may take input at all). Returns (did work,
    /// close reason).
    fn take_input(&mut self, slot: usize, dispatch: bool) -> (bool, Option<CloseReason>) {
        let ack = if self.conns[slot].as_ref().is_some_and(|c| c.gateway) {
            self.gateway_ack()
        } else {
            self.ack
        };
        let Some(conn) = self.conns[slot].as_mut() else {
            return (false, None);
        };
        let mut work = false;
        let mut close = conn.closing;
        while dispatch
            && close.is_none()
            && conn.readable
            && !conn.peer_closed
            && !conn.hello_pending
        {
            // Room for the replies one buffer of input can cause is kept free; credit is
            // checked per frame in `dispatch_buffered`.
            if conn.out_room() < conn.wbuf.len() / 2 && conn.has_output() {
                break;
            }
            let parsed = dispatch_buffered(
                conn,
                &mut self.latency,
                &mut self.dispatcher,
                self.counters,
                ack,
                &self.limits,
                self.auth.as_deref(),
                self.now,
            );
            work |= parsed.frames > 0;
            if let Some(reason) = parsed.close {
                close = Some(reason);
                conn.closing = close;
                break;
            }
            if parsed.out_of_credit {
                self.counters.tcp_credit_waits.incr();
                break;
            }
            if parsed.turn_over || parsed.hello {
                break;
            }
            if let Some(cause) = parsed.waiting {
                // Back-pressure: the frame keeps its place, the connection is not read, the
                // client's window and then its socket fill, and it waits. Counted once per
                // wait.
                if cause == Reason::RateLimited {
                    // Its own client's limit: the others go on. Asked again once one more
                    // token of the exhausted limit is due.
                    let (ticks, counter) = if conn.rate_wait_token {
                        let ticks = self
                            .auth
                            .as_deref()
                            .zip(conn.token)
                            .and_then(|(tokens, i)| tokens.get(i))
                            .map_or(0, |t| t.token_ticks());
                        (ticks, &self.counters.rate_limit_waits_token)
                    } else {
                        (
                            self.rate_keys.token_ticks(),
                            &self.counters.rate_limit_waits_client,
                        )
                    };
                    conn.rate_retry_at = self.now.saturating_add(ticks);
                    if !conn.queued {
                        counter.incr();
                    }
                    break;
                }
                conn.engine_wait = true;
                if !conn.queued {
                    match cause {
                        Reason::PoolExhausted => self.counters.tcp_waits_pool.incr(),
                        Reason::Shed => self.counters.tcp_waits_control.incr(),
                        _ => self.counters.tcp_waits_lane.incr(),
                    }
                }
                break;
            }
            if parsed.out_of_room {
                break;
            }
            let filled = match (conn.gateway, self.gateway.as_mut()) {
                (false, _) => conn.fill(),
                (true, Some(end)) => conn.fill_from(&mut end.frames),
                (true, None) => Err(io::ErrorKind::NotConnected.into()),
            };
            match filled {
                Ok(0) => {
                    // End of input (a half close, or the client is gone): what it sent is
                    // still acknowledged; the connection closes once its window is empty.
                    // A partial frame left in the buffer is dropped with it.
                    conn.readable = false;
                    conn.peer_closed = true;
                    break;
                }
                Ok(n) => {
                    work = true;
                    conn.last_input = self.now;
                    self.counters.tcp_bytes_in.add(n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    close = Some(CloseReason::Error);
                    break;
                }
            }
        }
        (work, close)
    }

    /// Queues the ACK owed and writes out what the connection's output holds; notes when its
    /// client stopped reading (the stall timeout counts from then), and when a connection
    /// whose client closed is done. Returns (did work, close reason).
    fn write_replies(
        &mut self,
        slot: usize,
        mut close: Option<CloseReason>,
    ) -> (bool, Option<CloseReason>) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return (false, close);
        };
        let mut work = false;
        if conn.queue_ack() {
            self.counters.tcp_acks_sent.incr();
        }
        if conn.has_output() && conn.writable {
            let flushed = match (conn.gateway, self.gateway.as_mut()) {
                (false, _) => conn.flush(),
                (true, Some(end)) => Ok(conn.flush_to(&mut end.replies)),
                (true, None) => Err(io::ErrorKind::NotConnected.into()),
            };
            match flushed {
                Ok(n) => {
                    if n > 0 {
                        work = true;
                        conn.stalled_since = 0;
                    }
                }
                Err(_) => close = close.or(Some(CloseReason::Error)),
            }
        }
        if conn.has_output() {
            if conn.stalled_since == 0 {
                conn.stalled_since = self.now;
            }
        } else {
            conn.stalled_since = 0;
            if conn.peer_closed && conn.tracks.is_empty() && !conn.ack_owed {
                close = close.or(Some(CloseReason::Peer));
            }
        }
        // A connection being closed for bad input goes once its REJECT is out (or cannot be).
        match close {
            Some(CloseReason::Malformed) if conn.has_output() && conn.writable => (work, None),
            other => (work, other),
        }
    }
}
