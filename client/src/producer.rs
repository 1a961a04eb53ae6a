//! A blocking producer over a version-2 producer session.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pinstream_core::event::EventHeader;
use pinstream_core::wire::{Ack, BatchEncoder, Hello, Reject};

use crate::connection::{ConnectOptions, Connection, Reply, is_timeout};
use crate::tls::TlsOptions;

/// How a [`Producer`] sends.
#[derive(Clone, Debug)]
pub struct ProducerOptions {
    /// The producer id to keep across reconnects; 0 lets the server assign one (the producer
    /// then keeps that one: [`Producer::producer_id`]).
    pub producer_id: u64,
    /// Events per frame at most (a frame also ends when the next event would not fit
    /// `max_frame_len`).
    pub max_batch: usize,
    /// The largest frame to send, in bytes (lowered to what the server accepts).
    pub max_frame_len: usize,
    /// Frames in flight (sent, not yet acknowledged) at most; a push that would pass it
    /// waits for acknowledgements.
    pub window: usize,
    /// Bound on connecting, on each write and on waiting for acknowledgements without any
    /// arriving.
    pub timeout: Duration,
    /// Attempts to connect again after a lost connection (with a doubling pause from 50 ms)
    /// before giving up.
    pub reconnects: u32,
    /// The authentication token its HELLOs carry (a server with `tcp.auth = "token"`
    /// requires one); `None`: none.
    pub token: Option<Vec<u8>>,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        Self {
            producer_id: 0,
            max_batch: 64,
            max_frame_len: 65_536,
            window: 128,
            timeout: Duration::from_secs(10),
            reconnects: 5,
            token: None,
        }
    }
}

/// What the server answered for the events sent so far (every connection of the producer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Stored (as durably as the server's ack mode promises).
    pub stored: u64,
    /// Not stored again: the server had them (a resend after a lost connection, or an id
    /// within its dedup window). A version-1 server counts them in `stored`.
    pub duplicates: u64,
    /// Dead-lettered with a reason.
    pub dead_lettered: u64,
    /// Rejected with a reason ([`Producer::take_rejects`] says which).
    pub rejected: u64,
}

impl Totals {
    fn add(&mut self, a: &Ack) {
        self.stored += a.stored;
        self.duplicates += a.duplicates;
        self.dead_lettered += a.dead_lettered;
        self.rejected += a.rejected;
    }

    /// Events answered, whatever the answer.
    pub fn total(&self) -> u64 {
        self.stored + self.duplicates + self.dead_lettered + self.rejected
    }
}

/// A frame sent and not acknowledged yet (kept to resend).
#[derive(Debug)]
struct Pending {
    seq: u64,
    events: u32,
    frame: Vec<u8>,
}

/// A blocking producer: events in, frames out, acknowledgements counted, resends after a
/// lost connection. One thread drives it.
#[derive(Debug)]
pub struct Producer {
    addr: SocketAddr,
    options: ProducerOptions,
    /// TLS, for every connection (the first and the reconnects).
    tls: Option<TlsOptions>,
    conn: Connection,
    producer_id: u64,
    max_frame_len: usize,
    next_seq: u64,
    in_flight: VecDeque<Pending>,
    /// Events pushed and not framed yet: headers with their payload's range in
    /// `staged_payload`.
    staged: Vec<(EventHeader, usize, usize)>,
    staged_payload: Vec<u8>,
    /// Frame buffers given back by acknowledged frames.
    spare: Vec<Vec<u8>>,
    /// Counts of the connections before this one, and this one's last ACK.
    before: Totals,
    last_ack: Ack,
    rejects: Vec<Reject>,
    reconnected: u64,
}

impl Producer {
    /// Connects to `addr` and opens the producer session.
    ///
    /// # Errors
    /// As [`Connection::connect`]; `Unsupported` when the server does not speak version 2.
    pub fn connect(addr: SocketAddr, options: ProducerOptions) -> io::Result<Producer> {
        Self::connect_with(addr, options, None)
    }

    /// [`connect`](Self::connect), over TLS when `tls` is given (reconnects too).
    ///
    /// # Errors
    /// As [`Connection::connect_with`]; `Unsupported` when the server does not speak
    /// version 2.
    pub fn connect_with(
        addr: SocketAddr,
        options: ProducerOptions,
        tls: Option<TlsOptions>,
    ) -> io::Result<Producer> {
        let (conn, hello) = open(addr, &options, options.producer_id, tls.as_ref())?;
        let (window, max_batch, max_frame_len) =
            (options.window, options.max_batch, options.max_frame_len);
        let mut producer = Producer {
            addr,
            options,
            tls,
            conn,
            producer_id: hello.producer_id,
            max_frame_len: max_frame_len
                .min(hello.max_frame_len as usize)
                .max(pinstream_core::wire::MIN_FRAME_LEN + 8),
            next_seq: hello.last_seq + 1,
            in_flight: VecDeque::with_capacity(window),
            staged: Vec::with_capacity(max_batch),
            staged_payload: Vec::new(),
            spare: Vec::new(),
            before: Totals::default(),
            last_ack: Ack::default(),
            rejects: Vec::new(),
            reconnected: 0,
        };
        producer.last_ack.through_seq = hello.last_seq;
        Ok(producer)
    }

    /// The producer id (the one asked for, or the one the server assigned).
    pub fn producer_id(&self) -> u64 {
        self.producer_id
    }

    /// The largest frame this producer sends (its option, lowered to the server's limit).
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// The seq the next frame gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Times the connection was lost and opened again.
    pub fn reconnects(&self) -> u64 {
        self.reconnected
    }

    /// Adds one event; a frame goes out when `max_batch` events are staged (waiting for
    /// room in the window if needed).
    ///
    /// # Errors
    /// The connection lost for good (every reconnect failed), or no acknowledgement within
    /// the timeout while the window is full.
    pub fn push(&mut self, header: &EventHeader, payload: &[u8]) -> io::Result<()> {
        let at = self.staged_payload.len();
        self.staged_payload.extend_from_slice(payload);
        self.staged.push((*header, at, payload.len()));
        if self.staged.len() >= self.options.max_batch {
            self.send_staged()?;
        }
        Ok(())
    }

    /// Sends the staged events (as many frames as they need) and waits until every frame is
    /// acknowledged; returns the totals.
    ///
    /// # Errors
    /// As [`push`](Self::push); `TimedOut` when acknowledgements stop arriving.
    pub fn flush(&mut self) -> io::Result<Totals> {
        self.send_staged()?;
        while !self.in_flight.is_empty() {
            self.read_one()?;
        }
        Ok(self.totals())
    }

    /// Sends the staged events now, without waiting for their acknowledgements (a source
    /// that paused, e.g. an interactive one, should not leave events staged). Reads any
    /// acknowledgements only when the window is full, as [`push`](Self::push) does.
    ///
    /// # Errors
    /// As [`push`](Self::push).
    pub fn send_now(&mut self) -> io::Result<()> {
        self.send_staged()
    }

    /// What the server answered so far.
    pub fn totals(&self) -> Totals {
        let mut t = self.before;
        t.add(&self.last_ack);
        t
    }

    /// The REJECTs received since the last call (which events, or frames, and why).
    pub fn take_rejects(&mut self) -> Vec<Reject> {
        std::mem::take(&mut self.rejects)
    }

    /// Frames the staged events into one or more frames and sends them.
    fn send_staged(&mut self) -> io::Result<()> {
        let mut from = 0;
        while from < self.staged.len() {
            let mut buf = self.spare.pop().unwrap_or_default();
            buf.resize(self.max_frame_len, 0);
            let seq = self.next_seq;
            let mut enc = BatchEncoder::new(&mut buf, seq).map_err(encode_error)?;
            let start = from;
            while from < self.staged.len() && from - start < self.options.max_batch {
                let (header, at, len) = self.staged[from];
                let payload = &self.staged_payload[at..at + len];
                match enc.push(&header, payload) {
                    Ok(()) => from += 1,
                    // Full: this event starts the next frame (unless it is alone and too
                    // large for any frame, which is the caller's error).
                    Err(_) if from > start => break,
                    Err(e) => return Err(encode_error(e)),
                }
            }
            let n = enc.finish().map_err(encode_error)?;
            buf.truncate(n);
            self.next_seq += 1;
            let events = u32::try_from(from - start).unwrap_or(u32::MAX);
            self.send_frame(Pending {
                seq,
                events,
                frame: buf,
            })?;
        }
        self.staged.clear();
        self.staged_payload.clear();
        Ok(())
    }

    /// Sends one frame once the window has room; after a lost connection, reconnects and
    /// resends.
    fn send_frame(&mut self, pending: Pending) -> io::Result<()> {
        while self.in_flight.len() >= self.options.window.max(1) {
            self.read_one()?;
        }
        let sent = self.conn.send(&pending.frame);
        self.in_flight.push_back(pending);
        if let Err(e) = sent {
            self.reconnect(e)?;
        }
        Ok(())
    }

    /// Reads replies until one arrives (an ACK moves the window), reconnecting if the
    /// connection is lost.
    fn read_one(&mut self) -> io::Result<()> {
        let until = Instant::now() + self.options.timeout;
        loop {
            match self.conn.next_reply() {
                Ok(Some(Reply::Ack(a))) => {
                    self.last_ack = a;
                    while self
                        .in_flight
                        .front()
                        .is_some_and(|p| p.seq <= a.through_seq)
                    {
                        if let Some(p) = self.in_flight.pop_front() {
                            self.spare.push(p.frame);
                        }
                    }
                    return Ok(());
                }
                Ok(Some(Reply::Reject(r))) => {
                    self.rejects.push(r);
                    return Ok(());
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    return self.reconnect(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    ));
                }
                Err(e) if is_timeout(&e) => {
                    if Instant::now() >= until {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "no acknowledgement from {} within {:?} ({} frame(s) in flight)",
                                self.addr,
                                self.options.timeout,
                                self.in_flight.len()
                            ),
                        ));
                    }
                }
                Err(e) => return self.reconnect(e),
            }
        }
    }

    /// Opens a new connection under the same producer id and resends every frame in
    /// flight, in order: the server answers those it has as duplicates.
    fn reconnect(&mut self, cause: io::Error) -> io::Result<()> {
        let mut pause = Duration::from_millis(50);
        let mut last = cause;
        for _ in 0..self.options.reconnects {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(2));
            let (conn, hello) = match open(
                self.addr,
                &self.options,
                self.producer_id,
                self.tls.as_ref(),
            ) {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            self.before.add(&self.last_ack);
            self.last_ack = Ack {
                through_seq: hello.last_seq,
                ..Ack::default()
            };
            self.conn = conn;
            self.reconnected += 1;
            // Frames at or below the session's last_seq were resolved (their ACK was lost
            // with the connection): the server has them. They are not resent; their events
            // count as duplicates, as the server would answer them.
            while self
                .in_flight
                .front()
                .is_some_and(|p| p.seq <= hello.last_seq)
            {
                if let Some(p) = self.in_flight.pop_front() {
                    self.before.duplicates += u64::from(p.events);
                    self.spare.push(p.frame);
                }
            }
            let mut resent = Ok(());
            for p in &self.in_flight {
                resent = self.conn.send(&p.frame);
                if resent.is_err() {
                    break;
                }
            }
            match resent {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(io::Error::new(
            last.kind(),
            format!(
                "lost the connection to {} and could not resume after {} attempt(s): {last}",
                self.addr, self.options.reconnects
            ),
        ))
    }
}

/// Connects and opens the session of `producer_id` (0: assigned).
fn open(
    addr: SocketAddr,
    options: &ProducerOptions,
    producer_id: u64,
    tls: Option<&TlsOptions>,
) -> io::Result<(Connection, Hello)> {
    let max_frame = u32::try_from(options.max_frame_len).unwrap_or(u32::MAX);
    let (conn, hello) = Connection::connect_with(
        addr,
        &ConnectOptions {
            timeout: options.timeout,
            hello: Some(Hello::producer(max_frame, producer_id)),
            token: options.token.clone(),
        },
        tls,
    )?;
    let hello = hello.unwrap_or_default();
    if hello.max_version < 2 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "the server at {addr} speaks protocol version {}; a producer session needs 2",
                hello.max_version
            ),
        ));
    }
    Ok((conn, hello))
}

fn encode_error(e: pinstream_core::wire::EncodeError) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("an event does not fit a frame: {e:?}"),
    )
}
