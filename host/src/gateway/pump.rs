//! The gateway's side of the rings: requests' frames go into the ring to the ingest thread in
//! seq order, and the ACK and REJECT frames that come back are booked per request, which is
//! answered once all its frames are acknowledged.
//!
//! The request tasks and the pump run on the gateway thread's one runtime thread: a
//! request task encodes its frames and queues them ([`Hub::submit`]) in one synchronous step,
//! so seqs are taken in queue order. The pump alone owns the rings' gateway halves.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pinstream_core::event::EventHeader;
use pinstream_core::wire::{self, BatchEncoder, Frame, FrameKind, MIN_FRAME_LEN, WHOLE_FRAME};
use tokio::sync::{Notify, oneshot};

use crate::ingest::{GATEWAY_FRAMES, GatewayLink, Shared};

/// Bytes of a BATCH frame besides its records (header 16, count and reserved 8, trailer 4).
pub(crate) const BATCH_OVERHEAD: usize = 16 + 8 + 4;
/// Bytes of a record besides its payload.
pub(crate) const RECORD_OVERHEAD: usize = 32;

/// What became of one request's events.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) stored: u64,
    pub(crate) duplicates: u64,
    pub(crate) dead_lettered: u64,
    pub(crate) rejected: u64,
    /// Refused events: (index in the request, event id, reason code), in the order the
    /// engine reported them.
    pub(crate) refusals: Vec<(usize, u64, u16)>,
}

/// Why a request was not answered with an [`Outcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotTaken {
    /// No room on the way to the ingest thread within the wait: `503`.
    Full,
    /// The engine stopped before acknowledging it: `503`.
    Stopped,
}

/// A request's frames, encoded, waiting for the ring.
struct Submission {
    bytes: Vec<u8>,
    /// (seq, length in bytes, index of its first event in the request).
    frames: Vec<(u64, usize, usize)>,
    /// Frames pushed into the ring so far.
    pushed: usize,
    /// Bytes pushed so far.
    offset: usize,
    request: u64,
}

/// A request whose frames are in flight.
struct Book {
    frames_left: usize,
    outcome: Outcome,
    reply: Option<oneshot::Sender<Result<Outcome, NotTaken>>>,
}

#[derive(Default)]
struct Inbox {
    queue: VecDeque<Submission>,
    bytes: usize,
    next_seq: u64,
    next_request: u64,
    books: HashMap<u64, Book>,
    /// The engine stopped: nothing more is taken.
    closed: bool,
}

/// What the request tasks and the pump share.
pub(crate) struct Hub {
    inbox: Mutex<Inbox>,
    /// Wakes the pump when work was queued.
    work: Notify,
    /// Wakes requests waiting for room.
    room: Notify,
    /// Bytes queued before the ring at most (beyond it, requests wait, then `503`).
    cap: usize,
    /// The largest frame the engine takes (`tcp.max_frame_len`).
    pub(crate) max_frame: usize,
}

impl Hub {
    pub(crate) fn new(max_frame: usize) -> Self {
        Self {
            inbox: Mutex::new(Inbox {
                next_seq: 1,
                ..Inbox::default()
            }),
            work: Notify::new(),
            room: Notify::new(),
            cap: GATEWAY_FRAMES,
            max_frame,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bytes `events` take as frames of at most `max_frame` bytes, or `None` when one
    /// event alone does not fit a frame.
    pub(crate) fn encoded_len(&self, payload_lens: impl Iterator<Item = usize>) -> Option<usize> {
        let mut total = 0;
        let mut frame = BATCH_OVERHEAD;
        let mut in_frame = 0;
        for len in payload_lens {
            let rec = RECORD_OVERHEAD + len;
            if BATCH_OVERHEAD + rec > self.max_frame {
                return None;
            }
            if frame + rec > self.max_frame {
                total += frame;
                frame = BATCH_OVERHEAD;
                in_frame = 0;
            }
            frame += rec;
            in_frame += 1;
        }
        if in_frame > 0 {
            total += frame;
        }
        Some(total)
    }

    /// Encodes `events` as BATCH frames with the next seqs and queues them for the ingest
    /// thread, waiting up to `wait` for room; the receiver gets the outcome once every frame
    /// is acknowledged (or [`NotTaken::Stopped`]). `bytes` is their
    /// [`encoded_len`](Self::encoded_len).
    ///
    /// # Errors
    /// [`NotTaken::Full`] when no room came within `wait`; [`NotTaken::Stopped`] once the
    /// engine stopped.
    pub(crate) async fn submit(
        &self,
        events: &[(EventHeader, &[u8])],
        bytes: usize,
        wait: Duration,
    ) -> Result<oneshot::Receiver<Result<Outcome, NotTaken>>, NotTaken> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let room = self.room.notified();
            {
                let mut inbox = self.lock();
                if inbox.closed {
                    return Err(NotTaken::Stopped);
                }
                // A request larger than the cap goes in alone (or it could never go).
                if inbox.bytes + bytes <= self.cap || inbox.bytes == 0 {
                    let (tx, rx) = oneshot::channel();
                    self.enqueue(&mut inbox, events, bytes, tx);
                    drop(inbox);
                    self.work.notify_one();
                    return Ok(rx);
                }
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(NotTaken::Full);
            }
        }
    }

    fn enqueue(
        &self,
        inbox: &mut Inbox,
        events: &[(EventHeader, &[u8])],
        bytes: usize,
        reply: oneshot::Sender<Result<Outcome, NotTaken>>,
    ) {
        let mut buf = vec![0u8; bytes];
        let mut frames = Vec::new();
        let mut at = 0;
        let mut first = 0;
        while first < events.len() {
            let seq = inbox.next_seq;
            inbox.next_seq += 1;
            let (n, len) = {
                let mut enc = match BatchEncoder::new(&mut buf[at..], seq) {
                    Ok(e) => e,
                    Err(e) => unreachable!("sized by encoded_len: {e:?}"),
                };
                let mut n = 0;
                let mut len = BATCH_OVERHEAD;
                for (h, p) in &events[first..] {
                    let rec = RECORD_OVERHEAD + p.len();
                    if len + rec > self.max_frame {
                        break;
                    }
                    if let Err(e) = enc.push(h, p) {
                        unreachable!("sized by encoded_len: {e:?}");
                    }
                    len += rec;
                    n += 1;
                }
                let written = enc.finish().unwrap_or(0);
                assert_eq!(written, len, "a BATCH frame's length is as computed");
                (n, len)
            };
            frames.push((seq, len, first));
            at += len;
            first += n;
        }
        assert_eq!(at, bytes, "the frames take the bytes encoded_len said");
        let request = inbox.next_request;
        inbox.next_request += 1;
        inbox.books.insert(
            request,
            Book {
                frames_left: frames.len(),
                outcome: Outcome::default(),
                reply: Some(reply),
            },
        );
        inbox.bytes += bytes;
        inbox.queue.push_back(Submission {
            bytes: buf,
            frames,
            pushed: 0,
            offset: 0,
            request,
        });
    }
}

/// A frame in the ring or in the engine, waiting for its ACK.
struct InFlight {
    seq: u64,
    request: u64,
    first_event: usize,
}

/// Moves frames into the ring and books the replies until the ingest thread has exited,
/// then answers every request still waiting with [`NotTaken::Stopped`].
pub(crate) async fn pump(hub: &Hub, mut link: GatewayLink<'_>, shared: &Shared) {
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    let mut replies = vec![0u8; crate::ingest::GATEWAY_REPLIES];
    let mut rend = 0usize;
    // The cumulative counts of the last ACK.
    let mut last = wire::Ack::default();
    let mut idle_rounds = 0u32;
    loop {
        let exited = shared.ingest_exited.load(Ordering::Acquire);
        // The engine stops: nothing more is taken (a new request is answered 503), what
        // was taken goes into the ring, and the ingest thread reads it dry before it stops.
        let stopping = shared.stop.load(Ordering::Acquire);
        let mut did = false;
        // Frames out, whole ones only, in queue order.
        {
            let mut inbox = hub.lock();
            if stopping {
                inbox.closed = true;
            }
            let mut freed = 0;
            while let Some(sub) = inbox.queue.front_mut() {
                let mut blocked = false;
                while sub.pushed < sub.frames.len() {
                    let (seq, len, first_event) = sub.frames[sub.pushed];
                    if link.frames.slots() < len {
                        blocked = true;
                        break;
                    }
                    let n = link
                        .frames
                        .push_slice(&sub.bytes[sub.offset..sub.offset + len]);
                    assert_eq!(n, len, "a frame that fits goes in whole");
                    sub.offset += len;
                    sub.pushed += 1;
                    inflight.push_back(InFlight {
                        seq,
                        request: sub.request,
                        first_event,
                    });
                    did = true;
                }
                if blocked {
                    break;
                }
                freed += sub.bytes.len();
                inbox.queue.pop_front();
            }
            if freed > 0 {
                inbox.bytes -= freed;
                hub.room.notify_waiters();
            }
            if stopping && inbox.queue.is_empty() {
                shared.gateway_drained.store(true, Ordering::Release);
            }
        }
        // Replies in.
        let n = link.replies.pop_slice(&mut replies[rend..]);
        if n > 0 {
            did = true;
            rend += n;
            let used = book_replies(hub, &replies[..rend], &mut inflight, &mut last);
            replies.copy_within(used..rend, 0);
            rend -= used;
        }
        if exited && n == 0 {
            break;
        }
        if did {
            idle_rounds = 0;
            tokio::task::yield_now().await;
            continue;
        }
        idle_rounds = idle_rounds.saturating_add(1);
        let waiting = !inflight.is_empty() || !hub.lock().queue.is_empty();
        if waiting && idle_rounds < 256 {
            // Replies are due soon: stay on the CPU a little (serving HTTP meanwhile).
            tokio::task::yield_now().await;
        } else {
            let work = hub.work.notified();
            let nap = if waiting {
                Duration::from_micros(200)
            } else {
                Duration::from_millis(10)
            };
            let _ = tokio::time::timeout(nap, work).await;
        }
    }
    // The ingest thread is gone: what it did not acknowledge never will be.
    let mut inbox = hub.lock();
    inbox.closed = true;
    inbox.queue.clear();
    inbox.bytes = 0;
    for (_, mut book) in inbox.books.drain() {
        if let Some(tx) = book.reply.take() {
            let _ = tx.send(Err(NotTaken::Stopped));
        }
    }
    hub.room.notify_waiters();
}

/// Books the whole frames at the front of `buf`; returns the bytes used.
fn book_replies(
    hub: &Hub,
    buf: &[u8],
    inflight: &mut VecDeque<InFlight>,
    last: &mut wire::Ack,
) -> usize {
    let mut at = 0;
    let mut inbox = hub.lock();
    while let Some(len) = wire::frame_len(&buf[at..]) {
        if len < MIN_FRAME_LEN || buf.len() - at < len {
            break;
        }
        let bytes = &buf[at..at + len];
        at += len;
        let Ok(frame) = Frame::new_checked(bytes, len) else {
            // The ingest thread writes valid frames; a bad one is a bug worth stopping on in
            // tests, and skipped in production.
            debug_assert!(false, "the ingest thread wrote a bad frame");
            continue;
        };
        match frame.kind() {
            FrameKind::Ack => {
                let Some(ack) = frame.ack() else { continue };
                // One ACK per frame: it is the oldest in flight's.
                let Some(front) = inflight.front() else {
                    continue;
                };
                debug_assert_eq!(front.seq, ack.through_seq, "one ACK per frame, in order");
                if front.seq != ack.through_seq {
                    continue;
                }
                let f = inflight.pop_front().map_or(0, |f| f.request);
                let d = wire::Ack {
                    through_seq: ack.through_seq,
                    stored: ack.stored - last.stored,
                    dead_lettered: ack.dead_lettered - last.dead_lettered,
                    rejected: ack.rejected - last.rejected,
                    duplicates: ack.duplicates - last.duplicates,
                };
                *last = ack;
                if let Some(book) = inbox.books.get_mut(&f) {
                    book.outcome.stored += d.stored;
                    book.outcome.dead_lettered += d.dead_lettered;
                    book.outcome.rejected += d.rejected;
                    book.outcome.duplicates += d.duplicates;
                    book.frames_left -= 1;
                    if book.frames_left == 0 {
                        if let Some(mut done) = inbox.books.remove(&f) {
                            if let Some(tx) = done.reply.take() {
                                let _ = tx.send(Ok(done.outcome));
                            }
                        }
                    }
                }
            }
            FrameKind::Reject => {
                let Some(r) = frame.reject() else { continue };
                let Some(f) = inflight.iter().find(|f| f.seq == r.frame_seq) else {
                    continue;
                };
                let index = if r.index == WHOLE_FRAME {
                    f.first_event
                } else {
                    f.first_event + usize::from(r.index)
                };
                if let Some(book) = inbox.books.get_mut(&f.request) {
                    book.outcome.refusals.push((index, r.event_id, r.reason));
                }
            }
            _ => {}
        }
    }
    at
}
