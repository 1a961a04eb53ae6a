//! The HELLO exchange: version negotiation and, for version 2, the producer session a
//! connection attaches to (fencing the connection that held it, waiting for one that
//! drains).

use pinstream_core::reason::Reason;
use pinstream_core::wire::{self, Frame, Hello, MAX_VERSION, Reject, encode_hello};

use crate::stats::HostCounters;

use super::conn::{self, CloseReason, Conn};
use super::parse::reject;
use super::{Ingest, producers, ratekeys};

/// What [`Ingest::attach_producer`] did.
enum Attached {
    /// The connection speaks for its producer: answer the HELLO.
    Ready,
    /// The HELLO was refused (the producer table is full): REJECT queued, the connection
    /// closes.
    Refused,
    /// A closed connection of the producer still drains (or the connection is gone): ask
    /// again next round.
    Waits,
}

impl<const P: usize, const POOL: usize, const LANE: usize, const DL: usize>
    Ingest<'_, P, POOL, LANE, DL>
{
    /// Answers the HELLO at the front of the connection's input: negotiates the version and,
    /// for version 2, attaches the producer (fencing a connection that held it). While a
    /// closed connection of the producer still drains, the answer waits (the HELLO stays at
    /// the front, nothing after it is read), so the sequence it reports covers every frame
    /// the engine took from the producer. Returns whether it did anything.
    pub(super) fn answer_hello(&mut self, slot: usize) -> bool {
        let Some(conn) = self.conns[slot].as_mut() else {
            return false;
        };
        let at = conn.rstart;
        let Some(len) = conn.rbuf.get(at..).and_then(wire::frame_len) else {
            conn.hello_pending = false;
            return false;
        };
        let Some(client) = conn
            .rbuf
            .get(at..at + len)
            .and_then(|b| Frame::new_checked(b, conn.max_frame).ok())
            .and_then(|f| {
                // `tcp.auth = "token"`: the token it shows, if the engine knows it (a hash
                // and a constant-time compare per configured token; no allocation).
                let token = self
                    .auth
                    .as_deref()
                    .zip(f.hello_token())
                    .and_then(|(tokens, t)| tokens.find(t));
                f.hello().map(|h| (h, f.seq(), token))
            })
        else {
            conn.hello_pending = false;
            return false;
        };
        let (client, hello_seq, token) = client;
        if self.auth.is_some() && !conn.gateway {
            let Some(token) = token else {
                // No token, or one the engine does not know: REJECT and close (§5).
                self.counters.tcp_auth_unauthenticated.incr();
                refuse_hello(conn, self.counters, hello_seq, Reason::Unauthenticated, len);
                return true;
            };
            conn.token = Some(token);
        }
        let Some(version) = client.negotiate(1, MAX_VERSION) else {
            // No common version: REJECT and close (PROTOCOL.md §5).
            refuse_hello(
                conn,
                self.counters,
                hello_seq,
                Reason::UnsupportedVersion,
                len,
            );
            return true;
        };
        let mut reply = Hello::reply(version, self.limits.max_frame_len as u32, conn.source.get());
        if version >= 2 {
            match self.attach_producer(slot, client.producer_id, hello_seq, len, &mut reply) {
                Attached::Ready => {}
                Attached::Refused => return true,
                Attached::Waits => return false,
            }
        }
        let Some(conn) = self.conns[slot].as_mut() else {
            return false;
        };
        let mut buf = [0u8; conn::CONTROL_FRAME_MAX];
        if let Ok(n) = encode_hello(&mut buf, conn.out_seq + 1, &reply) {
            if conn.queue_bytes(&buf[..n]) {
                conn.out_seq += 1;
            }
        }
        conn.version = version;
        conn.hello_seen = true;
        conn.hello_pending = false;
        conn.rstart += len;
        true
    }

    /// Version 2: attaches the connection to the producer `producer_id` names (once per
    /// connection; the HELLO may be asked again while the producer drains) and fills in the
    /// reply's session: the producer's id, its last resolved seq, the payload and dedup
    /// limits. From then on the connection is rate-limited as its producer.
    fn attach_producer(
        &mut self,
        slot: usize,
        producer_id: u64,
        hello_seq: u64,
        len: usize,
        reply: &mut Hello,
    ) -> Attached {
        let now = self.now;
        let Some(conn) = self.conns[slot].as_mut() else {
            return Attached::Waits;
        };
        let index = match conn.producer {
            Some(index) => index,
            None => match self.producers.attach(producer_id, slot, now) {
                Ok(a) => {
                    conn.producer = Some(a.index);
                    if a.evicted {
                        self.counters.tcp_producers_evicted.incr();
                    }
                    self.counters.tcp_producers.set(self.producers.len() as u64);
                    if let Some(old) = a.fenced {
                        // The connection that held this producer gives way.
                        self.counters.tcp_producers_fenced.incr();
                        self.close(old, CloseReason::Fenced);
                    }
                    a.index
                }
                Err(producers::AttachError::Full) => {
                    self.counters.tcp_producers_refused.incr();
                    refuse_hello(
                        conn,
                        self.counters,
                        hello_seq,
                        Reason::TooManyProducers,
                        len,
                    );
                    return Attached::Refused;
                }
            },
        };
        if self.producers.draining(index) {
            return Attached::Waits; // asked again next round
        }
        let Some(conn) = self.conns[slot].as_mut() else {
            return Attached::Waits;
        };
        let last = self.producers.last_seq(index);
        conn.resolved_before = last;
        conn.through = last;
        conn.producer_id = self.producers.id(index);
        conn.producer_epoch = self.producers.epoch(index);
        conn.held = self.producers.held(index);
        // From now on limited as its producer, whatever connection it uses.
        let key = self.rate_keys.acquire(
            ratekeys::Client::Producer(conn.producer_id),
            now,
            self.counters,
        );
        self.rate_keys
            .release(std::mem::replace(&mut conn.rate_key, key), now);
        reply.producer_id = conn.producer_id;
        reply.last_seq = last;
        reply.max_payload = self.limits.max_payload;
        reply.dedup_window_ms =
            u32::try_from(self.limits.dedup_window.as_millis()).unwrap_or(u32::MAX);
        Attached::Ready
    }
}

/// Refuses the HELLO of `len` bytes at the front of the connection's input with `reason`:
/// REJECT, the HELLO consumed, the connection closed once the REJECT is out.
fn refuse_hello(conn: &mut Conn, counters: &HostCounters, seq: u64, reason: Reason, len: usize) {
    reject(conn, counters, &Reject::frame(seq, reason));
    conn.closing = Some(CloseReason::Malformed);
    conn.rstart += len;
    conn.hello_pending = false;
}
