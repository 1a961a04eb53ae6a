//! One TCP connection: its buffers, its in-flight window and its acknowledgement books.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use crate::stats::LatencyRecorder;
use crate::storage::sessions::HeldFrames;
use pinstream_core::dispatch::FrameProgress;
use pinstream_core::wire::{
    self, Ack, MIN_FRAME_LEN, REJECT_BODY_LEN, Reject, encode_ack, encode_ack_v2, encode_reject,
};

use pinstream_core::ring::{Consumer, Producer};

use super::SourceId;
use super::gateway::{GATEWAY_FRAMES, GATEWAY_REPLIES};

/// Largest control frame the server sends: a version-2 ACK or HELLO reply (header 16 + body
/// 40 + trailer 4).
pub(crate) const CONTROL_FRAME_MAX: usize = 64;
/// A REJECT frame's length.
pub(crate) const REJECT_FRAME_LEN: usize = MIN_FRAME_LEN + REJECT_BODY_LEN;

/// Input a closing connection had received and not dispatched ([`Conn::drop_input`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DroppedInput {
    /// Whole frames.
    pub(crate) unread_frames: usize,
    /// Their bytes, and any after a length field that lost the framing.
    pub(crate) unread_bytes: usize,
    /// The bytes of the incomplete frame at the end (0: none).
    pub(crate) partial_bytes: usize,
}

/// One frame taken in on a connection and not yet acknowledged.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Track {
    /// The client's frame seq.
    pub(crate) seq: u64,
    /// Events in the realtime and transactional lanes whose fate the storage thread has not
    /// reported yet.
    pub(crate) pending: u32,
    /// Events queued in the batch lane, resolved when the batch watermark passes `tick`.
    pub(crate) batch_events: u32,
    /// The dispatch tick (meaningful when `batch_events != 0`).
    pub(crate) tick: u64,
    /// Events of the frame (credit to give back when it resolves).
    pub(crate) events: u32,
    /// Events stored so far.
    pub(crate) stored: u32,
    /// Events dead-lettered so far.
    pub(crate) dead: u32,
    /// Units rejected.
    pub(crate) rejected: u32,
    /// Events not stored again: stored already (a resent frame, or an id within the dedup
    /// window).
    pub(crate) duplicates: u32,
    /// The frame is still being dispatched (it waits for room): more events will come, so
    /// it is not resolved even when nothing is pending.
    pub(crate) open: bool,
    /// Whether resolving this frame moves the ACK watermark to `seq`. False for a frame
    /// whose seq cannot be trusted (its CRC failed, or it could not be read): its unit is
    /// counted, but a flipped bit in its seq must not acknowledge frames never stored.
    pub(crate) moves_watermark: bool,
}

impl Track {
    /// A frame whose fate is known at once (rejected, or acknowledged on acceptance).
    pub(crate) fn settled(seq: u64, stored: u32, dead: u32, rejected: u32) -> Self {
        Self {
            seq,
            pending: 0,
            batch_events: 0,
            tick: 0,
            events: stored + dead + rejected,
            stored,
            dead,
            rejected,
            duplicates: 0,
            open: false,
            moves_watermark: true,
        }
    }

    /// A frame its producer resent after it was resolved: all its `events` are duplicates.
    pub(crate) fn duplicate(seq: u64, events: u32) -> Self {
        Self {
            duplicates: events,
            events,
            ..Self::settled(seq, 0, 0, 0)
        }
    }

    /// A rejected unit whose seq cannot be trusted: counted, the watermark left alone.
    pub(crate) fn unverified() -> Self {
        Self {
            moves_watermark: false,
            ..Self::settled(0, 0, 0, 1)
        }
    }

    /// A data frame about to be dispatched: `events` of credit, nothing resolved yet.
    pub(crate) fn dispatching(seq: u64, events: u32, tick: u64) -> Self {
        Self {
            seq,
            pending: 0,
            batch_events: 0,
            tick,
            events,
            stored: 0,
            dead: 0,
            rejected: 0,
            duplicates: 0,
            open: true,
            moves_watermark: true,
        }
    }

    fn resolved(&self, batch_watermark: u64) -> bool {
        !self.open && self.pending == 0 && (self.batch_events == 0 || self.tick < batch_watermark)
    }
}

/// Why a connection was closed (each one is counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The client closed it.
    Peer,
    /// Too many malformed frames, or the framing was lost.
    Malformed,
    /// The client stopped reading its acknowledgements.
    Stalled,
    /// Nothing arrived for the idle timeout.
    Idle,
    /// A frame begun was not complete within the frame timeout.
    FrameTimeout,
    /// A socket error.
    Error,
    /// Storage failed: the engine takes nothing it cannot store.
    StorageFailed,
    /// The engine is shutting down.
    Shutdown,
    /// Another connection took over its producer (protocol version 2).
    Fenced,
    /// A closed connection of a producer finished resolving its frames.
    Drained,
    /// A closed connection of a producer did not finish resolving its frames in time.
    DrainAbandoned,
}

/// A connection's state. Buffers are allocated once per slot and reused by later
/// connections in the same slot.
pub(crate) struct Conn {
    pub(crate) stream: Option<TcpStream>,
    /// The source id of this connection: its slot and the slot's generation.
    pub(crate) source: SourceId,
    pub(crate) rbuf: Box<[u8]>,
    pub(crate) rstart: usize,
    pub(crate) rend: usize,
    pub(crate) wbuf: Box<[u8]>,
    pub(crate) wstart: usize,
    pub(crate) wend: usize,
    pub(crate) tracks: VecDeque<Track>,
    pub(crate) inflight_events: u64,
    /// Cumulative counts of resolved frames (what ACKs report).
    pub(crate) stored: u64,
    pub(crate) dead: u64,
    pub(crate) rejected: u64,
    pub(crate) duplicates: u64,
    /// The watermark to report, and whether an ACK for it is owed.
    pub(crate) through: u64,
    pub(crate) ack_owed: bool,
    /// The server's own frame seq for ACK / REJECT / HELLO frames.
    pub(crate) out_seq: u64,
    /// Malformed frames so far.
    pub(crate) malformed: u32,
    /// Kernel said readable (edge-triggered: until a read returns WouldBlock).
    pub(crate) readable: bool,
    /// The client closed its sending side: no more input; the connection stays until its
    /// window is acknowledged (or the stall timeout passes).
    pub(crate) peer_closed: bool,
    /// The seq of the last data frame taken (seqs must increase).
    pub(crate) last_seq: Option<u64>,
    /// Kernel said writable.
    pub(crate) writable: bool,
    /// Close once the output is flushed (framing lost, too many errors).
    pub(crate) closing: Option<CloseReason>,
    /// Tick of the last byte read.
    pub(crate) last_input: u64,
    /// Bytes read from the socket since the connection opened.
    pub(crate) received: u64,
    /// The incomplete frame at the front of the input, as (where it starts in the stream,
    /// the tick it was first found incomplete); `None` when there is none.
    pub(crate) partial: Option<(u64, u64)>,
    /// The peer's address, as [`PeerCounts`](super::addrs::PeerCounts) keys it, while the
    /// connection holds a socket.
    pub(crate) peer: Option<u128>,
    /// Tick since which output has been waiting without progress (0: none waiting).
    pub(crate) stalled_since: u64,
    /// The client's largest frame from its HELLO, or the server's.
    pub(crate) max_frame: usize,
    /// Rejects that did not fit the output buffer (the ACK counts still cover them).
    pub(crate) rejects_dropped: u64,
    /// The frame at `rstart` is partly dispatched and waits for room in the engine: how far
    /// it got. The connection is not read until it is done.
    pub(crate) progress: Option<FrameProgress>,
    /// In the ingest thread's queue of connections waiting for room (oldest first).
    pub(crate) queued: bool,
    /// Its frame found no room in the engine on its last turn (it holds the others back).
    pub(crate) engine_wait: bool,
    /// The negotiated protocol version (1 until a HELLO says otherwise).
    pub(crate) version: u8,
    /// A HELLO was answered on this connection (a second one is refused).
    pub(crate) hello_seen: bool,
    /// The frame at `rstart` is a HELLO the ingest thread answers (possibly after waiting
    /// for its producer's old connection to drain).
    pub(crate) hello_pending: bool,
    /// Version 2: the producer-table entry of the producer this connection sends for.
    pub(crate) producer: Option<usize>,
    /// Version 2: frames with a seq at or below this were resolved before this connection's
    /// HELLO was answered; resent, they are duplicates.
    pub(crate) resolved_before: u64,
    /// Version 2: the producer's id (0: none), which its events' records carry.
    pub(crate) producer_id: u64,
    /// Version 2: the producer session's epoch, which its events' records carry.
    pub(crate) producer_epoch: u32,
    /// The rate-limit key its frames are admitted under: its producer's once a version-2
    /// HELLO named one, its peer address's before ([`super::ratekeys`]).
    pub(crate) rate_key: u32,
    /// Version 2: the events of the producer's frames above `resolved_before` that the logs
    /// held at start-up (frames in flight when the engine last stopped): resent, those
    /// events are duplicates, the others of the frame are taken.
    pub(crate) held: Option<Arc<HeldFrames>>,
    /// Closed, but its frames are still resolving so that its producer's sequence covers
    /// them (no input, no output).
    pub(crate) draining: bool,
    /// Batch-lane events are stored one by one (settled by completions, not the batch
    /// watermark).
    pub(crate) batch_events_stored: bool,
    /// A gateway's connection ([`super::gateway`]): its bytes come and go through rings,
    /// each frame is acknowledged on its own, and housekeeping leaves it alone.
    pub(crate) gateway: bool,
    /// The index of the token its HELLO showed (`tcp.auth = "token"`), in the engine's
    /// [`Tokens`](crate::gateway::Tokens); `None`: none shown (or none required).
    pub(crate) token: Option<usize>,
    /// Its frame waits (`RateLimited`) and its token's rate was exhausted there (else the
    /// per-client limit's was): which limit to count the wait under and retry by.
    pub(crate) rate_wait_token: bool,
    /// Its frame waits for a rate limit's tokens: not retried before this tick (about when
    /// one more token is due), so a long rate wait does not re-read its frame every round.
    pub(crate) rate_retry_at: u64,
}

impl Conn {
    /// A connection with fresh buffers.
    pub(crate) fn with_buffers(recv: usize, send: usize, frames: usize) -> Self {
        Self {
            stream: None,
            source: SourceId::UDP, // none until `reset` opens it
            rbuf: vec![0; recv].into_boxed_slice(),
            rstart: 0,
            rend: 0,
            wbuf: vec![0; send.max(CONTROL_FRAME_MAX * 2)].into_boxed_slice(),
            wstart: 0,
            wend: 0,
            tracks: VecDeque::with_capacity(frames),
            inflight_events: 0,
            stored: 0,
            dead: 0,
            rejected: 0,
            through: 0,
            ack_owed: false,
            out_seq: 0,
            malformed: 0,
            readable: false,
            peer_closed: false,
            last_seq: None,
            writable: false,
            closing: None,
            last_input: 0,
            received: 0,
            partial: None,
            peer: None,
            stalled_since: 0,
            max_frame: 0,
            rejects_dropped: 0,
            progress: None,
            queued: false,
            engine_wait: false,
            version: 1,
            hello_seen: false,
            hello_pending: false,
            producer: None,
            resolved_before: 0,
            producer_id: 0,
            producer_epoch: 0,
            rate_key: super::ratekeys::SHARED,
            held: None,
            draining: false,
            duplicates: 0,
            batch_events_stored: false,
            gateway: false,
            token: None,
            rate_wait_token: false,
            rate_retry_at: 0,
        }
    }

    /// Resets the books for a new client on this slot (buffers kept).
    pub(crate) fn reset(
        &mut self,
        stream: TcpStream,
        source: SourceId,
        now: u64,
        max_frame: usize,
    ) {
        self.stream = Some(stream);
        self.source = source;
        self.rstart = 0;
        self.rend = 0;
        self.wstart = 0;
        self.wend = 0;
        self.tracks.clear();
        self.inflight_events = 0;
        self.stored = 0;
        self.dead = 0;
        self.rejected = 0;
        self.through = 0;
        self.ack_owed = false;
        self.out_seq = 0;
        self.malformed = 0;
        self.readable = true;
        self.peer_closed = false;
        self.last_seq = None;
        self.writable = true;
        self.closing = None;
        self.last_input = now;
        self.received = 0;
        self.partial = None;
        self.peer = None;
        self.stalled_since = 0;
        self.max_frame = max_frame;
        self.rejects_dropped = 0;
        self.progress = None;
        self.queued = false;
        self.engine_wait = false;
        self.version = 1;
        self.hello_seen = false;
        self.hello_pending = false;
        self.producer = None;
        self.resolved_before = 0;
        self.producer_id = 0;
        self.producer_epoch = 0;
        self.rate_key = super::ratekeys::SHARED;
        self.held = None;
        self.draining = false;
        self.duplicates = 0;
        self.token = None;
        self.rate_wait_token = false;
        self.rate_retry_at = 0;
    }

    /// Free bytes at the end of the output buffer.
    pub(crate) fn out_room(&self) -> usize {
        self.wbuf.len() - self.wend
    }

    /// Free bytes in the output buffer, counting what compaction would reclaim.
    pub(crate) fn out_free(&self) -> usize {
        self.wbuf.len() - (self.wend - self.wstart)
    }

    /// Makes the output buffer's free space contiguous.
    fn compact_out(&mut self) {
        if self.wstart == self.wend {
            self.wstart = 0;
            self.wend = 0;
        } else if self.wstart > 0 && self.out_room() < CONTROL_FRAME_MAX {
            self.wbuf.copy_within(self.wstart..self.wend, 0);
            self.wend -= self.wstart;
            self.wstart = 0;
        }
    }

    /// Queues a REJECT; `false` if the output buffer had no room (counted in
    /// `rejects_dropped`; the ACK counts still cover the unit).
    pub(crate) fn queue_reject(&mut self, reject: &Reject) -> bool {
        self.compact_out();
        self.out_seq += 1;
        match encode_reject(&mut self.wbuf[self.wend..], self.out_seq, reject) {
            Ok(n) => {
                self.wend += n;
                true
            }
            Err(_) => {
                self.rejects_dropped += 1;
                false
            }
        }
    }

    /// Queues an ACK for the current books if one is owed and there is room.
    pub(crate) fn queue_ack(&mut self) -> bool {
        if !self.ack_owed {
            return false;
        }
        self.compact_out();
        let ack = Ack {
            through_seq: self.through,
            stored: self.stored,
            dead_lettered: self.dead,
            rejected: self.rejected,
            duplicates: self.duplicates,
        };
        let out = &mut self.wbuf[self.wend..];
        let encoded = if self.version >= 2 {
            encode_ack_v2(out, self.out_seq + 1, &ack)
        } else {
            // Version 1 counts duplicates as stored (they are).
            encode_ack(out, self.out_seq + 1, &ack)
        };
        match encoded {
            Ok(n) => {
                self.out_seq += 1;
                self.wend += n;
                self.ack_owed = false;
                true
            }
            Err(_) => false,
        }
    }

    /// Appends raw bytes (a HELLO reply) if they fit.
    pub(crate) fn queue_bytes(&mut self, bytes: &[u8]) -> bool {
        self.compact_out();
        if bytes.len() > self.out_room() {
            return false;
        }
        self.wbuf[self.wend..self.wend + bytes.len()].copy_from_slice(bytes);
        self.wend += bytes.len();
        true
    }

    /// Pops every resolved frame off the front of the window into the cumulative books,
    /// recording each dispatched frame's time from dispatch to now (its ACK is owed from
    /// here) in `latency`; returns the events whose credit came back.
    pub(crate) fn resolve_front(
        &mut self,
        batch_watermark: u64,
        now: u64,
        latency: &mut LatencyRecorder,
    ) -> u64 {
        let mut freed = 0;
        while let Some(&front) = self.tracks.front() {
            if !front.resolved(batch_watermark) {
                break;
            }
            // A gateway learns each frame's counts from its own ACK: the one owed for the
            // frame before goes out first (or this one waits for room).
            if self.gateway && self.ack_owed && !self.queue_ack() {
                break;
            }
            let t = front;
            self.tracks.pop_front();
            // Resolved once, whole: every event (or the one unit) of the frame has exactly
            // one outcome when its track leaves the window.
            debug_assert_eq!(
                t.stored + t.batch_events + t.dead + t.rejected + t.duplicates,
                t.events,
                "frame {} resolved with outcomes that do not add up to its events",
                t.seq
            );
            if t.tick != 0 {
                latency.record(now.saturating_sub(t.tick));
            }
            // Batch-lane events count as stored once their window's aggregate is durable.
            self.stored += u64::from(t.stored + t.batch_events);
            self.dead += u64::from(t.dead);
            self.rejected += u64::from(t.rejected);
            self.duplicates += u64::from(t.duplicates);
            if t.moves_watermark {
                self.through = self.through.max(t.seq);
            }
            self.ack_owed = true;
            freed += u64::from(t.events);
        }
        self.inflight_events -= freed;
        freed
    }

    /// Applies a completion from the storage thread to the oldest unsettled frame with this
    /// seq. `false` if no such frame (a stale report).
    pub(crate) fn complete(&mut self, seq: u64, stored: u32, dead: u32, duplicates: u32) -> bool {
        let n = stored + dead + duplicates;
        for t in self.tracks.iter_mut() {
            if t.seq == seq && t.pending >= n {
                t.pending -= n;
                t.stored += stored;
                t.dead += dead;
                t.duplicates += duplicates;
                return true;
            }
        }
        false
    }

    /// Throws away the input not dispatched (the connection is closing) and says what it
    /// was: whole frames, then at most one incomplete frame at the end. Bytes after a length
    /// field that lost the framing count as whole-frame bytes of no frame.
    pub(crate) fn drop_input(&mut self) -> DroppedInput {
        let mut dropped = DroppedInput::default();
        let mut at = self.rstart;
        while at < self.rend {
            let left = self.rend - at;
            let len = self.rbuf.get(at..).and_then(wire::frame_len);
            match len {
                Some(len) if !(MIN_FRAME_LEN..=self.max_frame).contains(&len) => {
                    dropped.unread_bytes += left;
                    break;
                }
                Some(len) if len <= left => {
                    dropped.unread_frames += 1;
                    dropped.unread_bytes += len;
                    at += len;
                }
                _ => {
                    dropped.partial_bytes = left;
                    break;
                }
            }
        }
        self.rstart = 0;
        self.rend = 0;
        dropped
    }

    /// Reads what the socket has into the free end of the receive buffer (after making room
    /// by moving the unparsed bytes to the front). `Ok(0)` is end of stream.
    pub(crate) fn fill(&mut self) -> io::Result<usize> {
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        } else if self.rend == self.rbuf.len() && self.rstart > 0 {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
        let n = stream.read(&mut self.rbuf[self.rend..])?;
        self.rend += n;
        self.received += n as u64;
        Ok(n)
    }

    /// How long the frame at the front of the input has been incomplete, with every byte
    /// the client sent read (`None`: no such frame; the input is whole frames, the socket
    /// has unread bytes, or the connection is on its way out). The first call that finds a
    /// frame incomplete starts its clock, so the age is within a housekeeping period of the
    /// time since its first byte.
    pub(crate) fn partial_frame_age(&mut self, now: u64) -> Option<u64> {
        let avail = self.rend - self.rstart;
        let incomplete = avail > 0
            && wire::frame_len(&self.rbuf[self.rstart..self.rend]).is_none_or(|len| avail < len);
        let waiting_on_client = incomplete
            && !self.readable
            && !self.peer_closed
            && !self.draining
            && self.closing.is_none();
        if !waiting_on_client {
            self.partial = None;
            return None;
        }
        // Where the frame starts in the client's byte stream tells one frame from the next.
        let start = self.received - avail as u64;
        match self.partial {
            Some((at, since)) if at == start => Some(now.saturating_sub(since)),
            _ => {
                self.partial = Some((start, now));
                Some(0)
            }
        }
    }

    /// A gateway's [`fill`](Self::fill): takes what its frame ring holds into the receive
    /// buffer. `WouldBlock` when the ring is empty (a gateway never ends its stream).
    pub(crate) fn fill_from(
        &mut self,
        ring: &mut Consumer<'_, u8, GATEWAY_FRAMES>,
    ) -> io::Result<usize> {
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        } else if self.rend == self.rbuf.len() && self.rstart > 0 {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        let n = ring.pop_slice(&mut self.rbuf[self.rend..]);
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.rend += n;
        self.received += n as u64;
        Ok(n)
    }

    /// A gateway's [`flush`](Self::flush): copies queued output into its reply ring, as much
    /// as fits (`writable` is cleared when nothing did).
    pub(crate) fn flush_to(&mut self, ring: &mut Producer<'_, u8, GATEWAY_REPLIES>) -> usize {
        if self.wstart == self.wend {
            return 0;
        }
        let n = ring.push_slice(&self.wbuf[self.wstart..self.wend]);
        self.wstart += n;
        if self.wstart == self.wend {
            self.wstart = 0;
            self.wend = 0;
        }
        if n == 0 {
            self.writable = false;
        }
        n
    }

    /// Writes queued output; returns bytes written (0 when it would block or nothing waits).
    pub(crate) fn flush(&mut self) -> io::Result<usize> {
        if self.wstart == self.wend {
            return Ok(0);
        }
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
        match stream.write(&self.wbuf[self.wstart..self.wend]) {
            Ok(n) => {
                self.wstart += n;
                if self.wstart == self.wend {
                    self.wstart = 0;
                    self.wend = 0;
                }
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.writable = false;
                Ok(0)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Whether it has input to take (readable, not closing): held back, it queues for room.
    pub(crate) fn wants_input(&self) -> bool {
        self.readable && !self.peer_closed && self.closing.is_none()
    }

    /// Whether output is waiting.
    pub(crate) fn has_output(&self) -> bool {
        self.wstart != self.wend
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_entry_is_the_size_the_docs_give() {
        // docs/HOST.md (Limits) states the connection-buffer bound with 48 bytes per entry.
        assert_eq!(std::mem::size_of::<Track>(), 48);
    }

    #[test]
    fn a_partial_frame_ages_until_it_is_whole() {
        let mut c = Conn::with_buffers(256, 256, 4);
        let frame_len = 40u32;
        c.rbuf[..4].copy_from_slice(&frame_len.to_le_bytes());
        // Ten bytes of a 40-byte frame read, the socket drained.
        c.rend = 10;
        c.received = 10;
        c.readable = false;
        assert_eq!(c.partial_frame_age(100), Some(0));
        assert_eq!(c.partial_frame_age(350), Some(250));
        // More of the same frame: still the same frame's clock.
        c.rend = 30;
        c.received = 30;
        assert_eq!(c.partial_frame_age(400), Some(300));
        // Unread bytes in the socket: not the client's delay.
        c.readable = true;
        assert_eq!(c.partial_frame_age(450), None);
        c.readable = false;
        // Whole, taken, and the next frame begun: a new clock.
        c.rend = 50;
        c.received = 50;
        c.rstart = 40;
        c.rbuf[40..44].copy_from_slice(&frame_len.to_le_bytes());
        assert_eq!(c.partial_frame_age(500), Some(0));
        assert_eq!(c.partial_frame_age(900), Some(400));
        // Only whole frames buffered: nothing ages.
        c.rend = 80;
        c.received = 80;
        assert_eq!(c.partial_frame_age(950), None);
    }
}
