//! Taking frames in: every whole frame in a connection's receive buffer is decoded in
//! place, checked against the connection's credit and output room, and dispatched (or
//! rejected, or answered as a duplicate); a frame that finds no room in the engine, or no
//! tokens of its rate limits (the per-client one, its token's), keeps its place and goes on
//! later from where it stopped.

use std::sync::Arc;
use std::time::Instant;

use pinstream_core::dispatch::{Dispatcher, Flow, FrameProgress, Outcome};
use pinstream_core::event::Lane;
use pinstream_core::reason::Reason;
use pinstream_core::wire::{self, DecodeError, Frame, FrameKind, MIN_FRAME_LEN, Reject};

use crate::gateway::{Token, Tokens};
use crate::stats::{HostCounters, LatencyRecorder};

use super::conn::{self, CloseReason, Conn, Track};
use super::{AckMode, TcpLimits};

/// What [`dispatch_buffered`] did.
pub(super) struct Parsed {
    pub(super) frames: u32,
    pub(super) out_of_credit: bool,
    /// The frame at the front waits for room in the engine (lane, pool, control plane).
    pub(super) waiting: Option<Reason>,
    /// A frame that had waited is done: the connection's turn is over for this round.
    pub(super) turn_over: bool,
    /// A HELLO is at the front of the input: the ingest thread answers it.
    pub(super) hello: bool,
    /// The output buffer cannot hold the REJECTs the next frame may cause: wait for it to
    /// drain.
    pub(super) out_of_room: bool,
    pub(super) close: Option<CloseReason>,
}

impl Parsed {
    /// The frame of `len` bytes at the front of the input is taken: counted, and the input
    /// moves past it.
    fn consume(&mut self, conn: &mut Conn, counters: &HostCounters, len: usize) {
        conn.rstart += len;
        self.frames += 1;
        counters.tcp_frames_in.incr();
    }
}

/// Decodes and dispatches every whole frame in the connection's receive buffer, in place.
#[allow(
    clippy::too_many_arguments,
    reason = "the ingest thread's parts, borrowed apart from the connection for one pass"
)]
pub(super) fn dispatch_buffered<
    const P: usize,
    const POOL: usize,
    const LANE: usize,
    const DL: usize,
>(
    conn: &mut Conn,
    latency: &mut LatencyRecorder,
    dispatcher: &mut Dispatcher<'_, P, POOL, LANE, DL>,
    counters: &HostCounters,
    ack: AckMode,
    limits: &TcpLimits,
    auth: Option<&Tokens>,
    now: u64,
) -> Parsed {
    // The frames borrow the receive buffer while the rest of the connection (its window,
    // its output) is updated: lend the buffer out for the pass (an empty box allocates
    // nothing).
    let rbuf = std::mem::take(&mut conn.rbuf);
    let mut take = TakeIn {
        latency,
        dispatcher,
        counters,
        ack,
        limits,
        auth,
        now,
    };
    let parsed = take.frames(conn, &rbuf);
    conn.rbuf = rbuf;
    parsed
}

/// What a pass over one connection's input works with besides the connection: the
/// ingest thread's dispatcher, counters and settings (borrowed for the pass).
struct TakeIn<'i, 'a, const P: usize, const POOL: usize, const LANE: usize, const DL: usize> {
    latency: &'i mut LatencyRecorder,
    dispatcher: &'i mut Dispatcher<'a, P, POOL, LANE, DL>,
    counters: &'i HostCounters,
    ack: AckMode,
    limits: &'i TcpLimits,
    /// `tcp.auth = "token"`: the tokens (the gateway's connection is exempt).
    auth: Option<&'i Tokens>,
    now: u64,
}

impl<const P: usize, const POOL: usize, const LANE: usize, const DL: usize>
    TakeIn<'_, '_, P, POOL, LANE, DL>
{
    /// Takes the frames of `rbuf` (the connection's receive buffer, lent out) one by one
    /// until one cannot be taken now.
    fn frames(&mut self, conn: &mut Conn, rbuf: &[u8]) -> Parsed {
        let mut parsed = Parsed {
            frames: 0,
            out_of_credit: false,
            out_of_room: false,
            waiting: None,
            turn_over: false,
            hello: false,
            close: None,
        };
        loop {
            let Some(len) = self.front(conn, rbuf, &mut parsed) else {
                return parsed;
            };
            let at = conn.rstart;
            if !self.frame(conn, &rbuf[at..at + len], &mut parsed) {
                return parsed;
            }
            parsed.consume(conn, self.counters, len);
        }
    }

    /// The length of the whole frame at the front of the input, if it may be taken now:
    /// `None` when it is not all here, its framing is lost (`parsed.close`), or it must
    /// wait for room for its replies (`parsed.out_of_room`) or for credit
    /// (`parsed.out_of_credit`).
    fn front(&mut self, conn: &mut Conn, rbuf: &[u8], parsed: &mut Parsed) -> Option<usize> {
        let avail = conn.rend - conn.rstart;
        let at = conn.rstart;
        // `None`: the length field is not all here yet.
        let len = wire::frame_len(&rbuf[at..conn.rend])?;
        if len < MIN_FRAME_LEN || len > conn.max_frame {
            // The framing is lost: nothing after this can be trusted. REJECT and close; the
            // bytes from here on are thrown away, counted.
            self.counters
                .tcp_unread_bytes_dropped
                .add((conn.rend - conn.rstart) as u64);
            let error = if len < MIN_FRAME_LEN {
                DecodeError::BadLength
            } else {
                DecodeError::TooLong
            };
            self.dispatcher.reject_frame(error);
            conn.rejected += 1;
            conn.ack_owed = true;
            reject(conn, self.counters, &Reject::frame(0, error.reason()));
            conn.rstart = conn.rend;
            parsed.close = Some(CloseReason::Malformed);
            return None;
        }
        if avail < len {
            return None;
        }
        let bytes = &rbuf[at..at + len];
        // Credit before acceptance: the frame's events must fit the window (a lone frame
        // larger than the window is let through, or it could never be sent). A frame that
        // waits for room in the engine took its credit when it started.
        // 1 for an EVENT, the claimed count of a BATCH (at least 1: validated later), and 1
        // for what is no data frame (it is rejected, or a HELLO answered, as one unit).
        let events = wire::frame_event_count(bytes).unwrap_or(0).max(1);
        // Room for every REJECT the frame may cause (one per event at worst, and an ACK),
        // unless the buffer is empty and still too small (then the excess is counted).
        let worst = (events as usize + 1) * conn::REJECT_FRAME_LEN + conn::CONTROL_FRAME_MAX;
        if conn.has_output() && conn.out_free() < worst {
            parsed.out_of_room = true;
            return None;
        }
        if self.ack != AckMode::None && conn.progress.is_none() {
            let full = conn.tracks.len() >= self.limits.inflight_frames
                || (!conn.tracks.is_empty()
                    && conn.inflight_events + u64::from(events) > self.limits.inflight_events);
            if full {
                parsed.out_of_credit = true;
                return None;
            }
        }
        Some(len)
    }

    /// Takes the whole frame `bytes` at the front of the input by what it is (the guards'
    /// order is the protocol's precedence). Returns whether to consume it and go on with the
    /// next; `false` when the pass stops here (`parsed` says why; the frame is consumed
    /// already if it should be).
    fn frame(&mut self, conn: &mut Conn, bytes: &[u8], parsed: &mut Parsed) -> bool {
        let (ack, counters) = (self.ack, self.counters);
        match Frame::new_checked(bytes, conn.max_frame) {
            Ok(frame) if conn.progress.is_some() => {
                // The frame that waited: go on where it stopped.
                if let Some(cause) = self.continue_timed(conn, &frame) {
                    parsed.waiting = Some(cause);
                    return false;
                }
                // Done: that was this connection's turn. Its next frame waits for the next
                // round, behind whoever queued meanwhile (or the room it freed would go to
                // it again and again).
                parsed.consume(conn, counters, bytes.len());
                parsed.turn_over = true;
                return false;
            }
            Ok(frame)
                if (frame.kind() == FrameKind::Hello
                    && (conn.hello_seen || conn.last_seq.is_some() || !conn.tracks.is_empty()))
                    || matches!(frame.kind(), FrameKind::Ack | FrameKind::Reject) =>
            {
                // One HELLO per connection, before any data frame (the connection speaks
                // version 1 once data came first): a later one is one rejected unit and
                // changes nothing. A server's frame (ACK, REJECT) sent to the server is one
                // too. Either seq is read from a valid frame but belongs to no data frame:
                // the watermark stays.
                self.dispatcher.reject_unit(Reason::UnexpectedKind);
                settle(conn, ack, Track::unverified());
                reject(
                    conn,
                    counters,
                    &Reject::frame(frame.seq(), Reason::UnexpectedKind),
                );
            }
            Ok(frame)
                if self.auth.is_some()
                    && !conn.hello_seen
                    && !conn.gateway
                    && matches!(frame.kind(), FrameKind::Event | FrameKind::Batch) =>
            {
                // A port that requires a token takes no data frame before a HELLO that
                // showed one: refused as a HELLO without a token is (REJECT, close), never
                // dispatched (PROTOCOL.md §5).
                counters.tcp_auth_unauthenticated.incr();
                reject(
                    conn,
                    counters,
                    &Reject::frame(frame.seq(), Reason::Unauthenticated),
                );
                parsed.consume(conn, counters, bytes.len());
                parsed.close = Some(CloseReason::Malformed);
                return false;
            }
            Ok(frame) if frame.kind() == FrameKind::Hello => {
                // Answered by the ingest thread, which owns the producer table: it stays at
                // the front of the input until then.
                let _ = frame;
                conn.hello_pending = true;
                parsed.hello = true;
                return false;
            }
            Ok(frame)
                if conn.producer.is_some()
                    && conn.resolved_before != 0
                    && matches!(frame.kind(), FrameKind::Event | FrameKind::Batch)
                    && frame.seq() <= conn.resolved_before =>
            {
                // A producer resending a frame the engine resolved (its ACK was lost with
                // the old connection): every event is already stored, dead-lettered or
                // rejected. Answered as duplicates, not dispatched again.
                self.dispatcher.duplicate_frame(frame.event_count());
                settle(
                    conn,
                    ack,
                    Track::duplicate(frame.seq(), frame.event_count()),
                );
            }
            Ok(frame) if conn.last_seq.is_some_and(|last| frame.seq() <= last) => {
                // Acknowledgements are watermarks over seqs: a seq that does not increase
                // could be taken for an earlier frame's.
                self.dispatcher.reject_unit(Reason::SeqNotIncreasing);
                settle(conn, ack, Track::settled(frame.seq(), 0, 0, 1));
                reject(
                    conn,
                    counters,
                    &Reject::frame(frame.seq(), Reason::SeqNotIncreasing),
                );
                conn.malformed += 1;
                if conn.malformed > self.limits.max_rejects {
                    parsed.consume(conn, counters, bytes.len());
                    parsed.close = Some(CloseReason::Malformed);
                    return false;
                }
            }
            Ok(frame) => {
                if let Some(cause) = self.start_frame(conn, &frame) {
                    parsed.waiting = Some(cause);
                    return false;
                }
            }
            Err(error) => return self.bad_frame(conn, bytes, error, parsed),
        }
        true
    }

    /// Starts dispatching a valid data frame with a new seq: books it in the window and
    /// dispatches what fits. Returns the cause when it stopped for room in the engine.
    fn start_frame(&mut self, conn: &mut Conn, frame: &Frame<'_>) -> Option<Reason> {
        let ack = self.ack;
        conn.last_seq = Some(frame.seq());
        // Its token's rate is a limit of this side's own on top of the per-client one: asked
        // in `continue_frame` for the events still to go, it makes the frame wait.
        let token_limited = token(self.auth, conn).is_some();
        if ack != AckMode::None {
            conn.inflight_events += u64::from(frame.event_count());
            conn.tracks.push_back(Track::dispatching(
                frame.seq(),
                frame.event_count(),
                self.now,
            ));
        }
        // A producer's events carry its id, session and how far it was resolved, so
        // that a restart can rebuild its session from the logs (not without
        // acknowledgements: nothing is resolved then, and nothing is resent).
        let progress = match conn.producer_id {
            id if id != 0 && ack != AckMode::None => {
                FrameProgress::producing(id, conn.producer_epoch, conn.through)
            }
            _ => FrameProgress::new(),
        }
        .with_rate_key(conn.rate_key);
        conn.progress = Some(if token_limited {
            progress.with_caller_limit()
        } else {
            progress
        });
        self.continue_timed(conn, frame)
    }

    /// A sane length, a bad frame: REJECT it and go on with the next one. Its seq cannot be
    /// trusted (a flipped bit may be in it): the REJECT names it for the client's
    /// information, the watermark does not move. Returns whether to go on (see
    /// [`frame`](Self::frame)).
    fn bad_frame(
        &mut self,
        conn: &mut Conn,
        bytes: &[u8],
        error: DecodeError,
        parsed: &mut Parsed,
    ) -> bool {
        self.dispatcher.reject_frame(error);
        let seq = wire::frame_seq(bytes).unwrap_or(0);
        settle(conn, self.ack, Track::unverified());
        reject(conn, self.counters, &Reject::frame(seq, error.reason()));
        conn.malformed += 1;
        // A HELLO that is not valid leaves the session undefined: close.
        let was_hello = wire::frame_kind(bytes) == Some(FrameKind::Hello);
        if was_hello || conn.malformed > self.limits.max_rejects {
            parsed.consume(conn, self.counters, bytes.len());
            parsed.close = Some(CloseReason::Malformed);
            return false;
        }
        true
    }

    /// [`continue_frame`], its time recorded in the per-frame latency.
    fn continue_timed(&mut self, conn: &mut Conn, frame: &Frame<'_>) -> Option<Reason> {
        let t0 = Instant::now();
        let waiting = continue_frame(
            conn,
            self.dispatcher,
            self.counters,
            self.ack,
            token(self.auth, conn),
            frame,
            self.now,
        );
        let elapsed = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.latency.record(elapsed);
        waiting
    }
}

/// Dispatches the valid data frame at the front of the connection's input, from where its
/// [`FrameProgress`] says, and books its events in the frame's track (the newest one). The
/// connection's source waits ([`Flow::Waits`]): returns the cause when the frame stopped for
/// room in the engine (`conn.progress` keeps its place), `None` when it is done.
/// With a `token` (the connection authenticated with it), its events are screened first:
/// a topic it may not use is rejected `forbidden_topic` (the frame's other events go on);
/// its rate is asked for the events still to go, and the frame waits (`RateLimited`) at the
/// first event neither it nor the per-client limit granted (`conn.rate_wait_token` says
/// whether the token's was exhausted there): the producer is slowed, nothing dropped.
fn continue_frame<const P: usize, const POOL: usize, const LANE: usize, const DL: usize>(
    conn: &mut Conn,
    dispatcher: &mut Dispatcher<'_, P, POOL, LANE, DL>,
    counters: &HostCounters,
    ack: AckMode,
    token: Option<&Token>,
    frame: &Frame<'_>,
    now: u64,
) -> Option<Reason> {
    let seq = frame.seq();
    let mut progress = conn.progress.take().unwrap_or_default();
    let mut rejects = 0u32;
    let mut refused = 0u32;
    // A frame the producer resends that was in flight when the engine last stopped: the
    // events the logs held then are not taken again (an `Arc` clone, no allocation).
    let held = conn
        .held
        .as_ref()
        .filter(|h| seq <= h.max_seq())
        .map(Arc::clone);
    let source = conn.source.get();
    if let Some(t) = token {
        // Only the events neither granted nor dispatched yet: a partial grant is progress.
        let want = progress.caller_wanted(frame.event_count());
        if want > 0 {
            progress.add_caller_grant(t.grant(want, now));
        }
    }
    let step = dispatcher.dispatch_frame_screened(
        frame,
        source,
        now,
        Flow::Waits,
        &mut progress,
        |i, header, payload| {
            held.as_ref()
                .is_some_and(|h| h.holds(seq, i, header, payload))
        },
        |_, header| {
            // Called once per event that is then resolved with the reason given (a refused
            // event never waits), so each refusal is counted once.
            let t = token?;
            if t.allows(header.topic) {
                None
            } else {
                counters.tcp_auth_forbidden_topic.incr();
                Some(Reason::ForbiddenTopic)
            }
        },
        |i, header, outcome| {
            if let Outcome::Rejected(reason) = outcome {
                refused += 1;
                let index = u16::try_from(i).unwrap_or(u16::MAX - 1);
                if conn.queue_reject(&Reject::event(seq, reason, index, header.id)) {
                    rejects += 1;
                }
            } else if let Outcome::DeadLettered(reason) = outcome {
                // A gateway answers per event, so it is told of the dead letters made at
                // dispatch too (with their reason; the ACK's counts cover them either way,
                // so one that finds no room is only not itemised).
                if conn.gateway {
                    let index = u16::try_from(i).unwrap_or(u16::MAX - 1);
                    let _ = conn.queue_reject(&Reject::event(seq, reason, index, header.id));
                }
            }
            if ack == AckMode::None {
                return;
            }
            if let Some(track) = conn.tracks.back_mut() {
                match outcome {
                    // In a lane counts as stored when acknowledging on acceptance.
                    Outcome::Queued(_) if ack == AckMode::Accepted => track.stored += 1,
                    // Stored one by one: settled by their completions, like the others.
                    Outcome::Queued(Lane::Batch) if conn.batch_events_stored => track.pending += 1,
                    Outcome::Queued(Lane::Batch) => {
                        // The batch watermark settles events pushed before a tick: the
                        // frame's is the last push of one of its batch events (a frame that
                        // waited pushes them later than it started).
                        track.batch_events += 1;
                        track.tick = now;
                    }
                    Outcome::Queued(_) => track.pending += 1,
                    Outcome::DeadLettered(_) => track.dead += 1,
                    Outcome::Rejected(_) => track.rejected += 1,
                    Outcome::Duplicate => track.duplicates += 1,
                    // An outcome newer than this host (`Outcome` is non-exhaustive) settles
                    // the frame as a refusal rather than leaving its acknowledgement waiting.
                    _ => track.rejected += 1,
                }
            }
        },
    );
    counters.tcp_rejects_sent.add(u64::from(rejects));
    counters
        .tcp_rejects_dropped
        .add(u64::from(refused - rejects));
    if step.waiting.is_some() {
        conn.rate_wait_token = step.waiting == Some(Reason::RateLimited)
            && progress.next() >= progress.caller_granted();
        conn.progress = Some(progress);
        return step.waiting;
    }
    if ack != AckMode::None {
        if let Some(track) = conn.tracks.back_mut() {
            debug_assert_eq!(track.seq, seq, "the newest track is the frame's");
            track.open = false;
        }
    }
    None
}

/// The token the connection authenticated with, if any (and if tokens are required).
#[inline]
fn token<'t>(auth: Option<&'t Tokens>, conn: &Conn) -> Option<&'t Token> {
    auth.zip(conn.token).and_then(|(tokens, i)| tokens.get(i))
}

/// Queues a REJECT and counts it, or counts it dropped (output full; the ACK still counts
/// the unit).
pub(super) fn reject(conn: &mut Conn, counters: &HostCounters, r: &Reject) {
    if conn.queue_reject(r) {
        counters.tcp_rejects_sent.incr();
    } else {
        counters.tcp_rejects_dropped.incr();
    }
}

/// Books a frame in the connection's window (nothing when acknowledgements are off).
fn settle(conn: &mut Conn, ack: AckMode, track: Track) {
    if ack == AckMode::None {
        return;
    }
    conn.inflight_events += u64::from(track.events);
    conn.tracks.push_back(track);
}
