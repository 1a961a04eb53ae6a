//! A blocking consumer over protocol version 3 (`docs/PROTOCOL.md` §12): subscribe to one of
//! the engine's logs, read its stored records one at a time, commit a position under a name.
//!
//! **Buffering.** One receive buffer of `max_frame_len` bytes holds the DATA frame being
//! read; [`Consumer::next_timeout`] hands out its records borrowed from it, so reading costs
//! no allocation per record (nor per frame) in steady state. While [`Consumer::commit`]
//! waits for its COMMITTED, DATA frames that arrive meanwhile stay in the buffer unread (the
//! COMMITTED is cut out from between them); only then may the buffer grow, and by at most
//! what the credit let the server send.
//!
//! **Credit.** The subscription grants `window_bytes`; each DATA frame taken in counts its
//! records' bytes, and once half the window (or whatever would leave the server less than
//! the largest record) has been taken, one CREDIT gives it back. A consumer that keeps up
//! therefore never leaves the server waiting for credit, and one that falls behind stops
//! the server after at most a window: the records wait in the engine's files.
//!
//! **Reconnecting.** A lost connection (end of stream, reset, broken pipe; a read timeout
//! while waiting for data is not one) is reopened with a doubling pause and the subscription
//! resumes at [`Consumer::position`]. A named consumer resumes at its committed position,
//! which may be earlier: records below the position are skipped, so the application never
//! sees a record twice within one `Consumer`'s life.

use std::error::Error;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use pinstream_core::reason::Reason;
use pinstream_core::record::{RECORD_HEADER_LEN, RecordView};
use pinstream_core::wire::{
    self, CONSUMER_VERSION, DATA_PREFIX_LEN, Frame, FrameKind, HEADER_LEN, Hello,
    MAX_STORED_RECORD, MIN_CONSUMER_FRAME_LEN, MIN_FRAME_LEN, Start, StreamLog, Subscribe,
    Subscribed, TRAILER_LEN, field,
};

use crate::connection::{is_timeout, reason_text};

/// One stored record, borrowed from the consumer's receive buffer: its offset, kind and
/// body ([`RecordView::decode`] decodes the body). Its CRC was checked.
pub type Record<'a> = RecordView<'a>;

/// How a [`Consumer`] subscribes.
#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    /// The log to read.
    pub log: StreamLog,
    /// Where to start (for a name with a committed position, the server resumes there
    /// instead).
    pub start: Start,
    /// The consumer's name, under which it can commit its position; `None`: anonymous.
    /// 1 to 64 bytes of ASCII letters, digits, `.`, `_` and `-`.
    pub name: Option<String>,
    /// The credit window in bytes of stored records: at most this much is in flight from
    /// the server. At least [`MAX_STORED_RECORD`] (the largest record must fit).
    pub window_bytes: u64,
    /// The largest DATA frame to receive, and the receive buffer's size. At least
    /// [`MIN_CONSUMER_FRAME_LEN`].
    pub max_frame_len: u32,
    /// Bound on connecting, on each write, on waiting for the HELLO, SUBSCRIBED and
    /// COMMITTED replies.
    pub timeout: Duration,
    /// Reconnect after a lost connection (else the loss is an error).
    pub reconnect: bool,
    /// Attempts to reconnect in a row (pauses doubling from 50 ms to 2 s) before giving up.
    pub max_reconnect_attempts: u32,
}

impl ConsumerOptions {
    /// Reading `log` from `start`, anonymous, with the defaults.
    pub fn new(log: StreamLog, start: Start) -> Self {
        Self {
            log,
            start,
            ..Self::default()
        }
    }
}

impl Default for ConsumerOptions {
    /// The realtime log from the earliest record, anonymous, a 4 MiB window, 1 MiB frames,
    /// a 10 s timeout, reconnecting up to 8 times in a row (about 10 s of pauses).
    fn default() -> Self {
        Self {
            log: StreamLog::Realtime,
            start: Start::Earliest,
            name: None,
            window_bytes: 4 << 20,
            max_frame_len: 1 << 20,
            timeout: Duration::from_secs(10),
            reconnect: true,
            max_reconnect_attempts: 8,
        }
    }
}

/// A REJECT from the server, carried inside the [`io::Error`] a refused subscription or
/// commit returns (`err.get_ref()` and `downcast_ref::<Rejected>()` give the reason code).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The reason code (`docs/PROTOCOL.md` §7 and §12).
    pub reason: u16,
    /// The seq of our frame it refused.
    pub frame_seq: u64,
    message: String,
}

impl Rejected {
    /// The reason, if the code is known.
    pub fn reason(&self) -> Option<Reason> {
        Reason::from_code(self.reason)
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for Rejected {}

/// The [`Rejected`] inside `e`, if the server refused something.
pub fn rejection(e: &io::Error) -> Option<&Rejected> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<Rejected>())
}

/// What a read into the buffer gave.
enum Fill {
    /// Bytes came.
    Read,
    /// Nothing came before the deadline.
    Timeout,
    /// The server closed the connection.
    Closed,
}

/// The records of the DATA frame being read: `at..end` in the buffer (absolute indexes).
#[derive(Clone, Copy, Debug)]
struct Current {
    at: usize,
    end: usize,
}

/// A blocking consumer of one log (see the module docs). One thread drives it.
#[derive(Debug)]
pub struct Consumer {
    addr: SocketAddr,
    options: ConsumerOptions,
    stream: TcpStream,
    /// The seq of the last frame sent on this connection (HELLO 0, SUBSCRIBE 1).
    seq: u64,
    /// Receive buffer: bytes `start..end` are not parsed yet; `cur`'s range, before
    /// `start`, holds the records of the DATA frame being handed out.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    cur: Option<Current>,
    /// The offset after the last record returned (the subscription's start before any).
    next: u64,
    high_watermark: u64,
    subscribed: Subscribed,
    /// Record bytes taken in since the last CREDIT, and the amount that triggers one.
    ungranted: u64,
    grant_at: u64,
    reconnects: u64,
    records: u64,
}

impl Consumer {
    /// Connects to `addr` (the engine's consumer listener, by default 127.0.0.1:7072), says
    /// HELLO and subscribes with the whole window as initial credit.
    ///
    /// # Errors
    /// `InvalidInput` for options out of range (a bad name, a window below the largest
    /// record, frames below [`MIN_CONSUMER_FRAME_LEN`]); connecting; `ConnectionRefused`
    /// with a [`Rejected`] inside when the server refuses the HELLO or the subscription
    /// (e.g. `unknown_log`, `consumer_busy`); `TimedOut` when it does not answer.
    pub fn connect(addr: SocketAddr, options: ConsumerOptions) -> io::Result<Consumer> {
        check_options(&options)?;
        let stream = open_stream(addr, options.timeout)?;
        let window = options.window_bytes;
        let grant_at = (window / 2)
            .min(window.saturating_sub(MAX_STORED_RECORD as u64))
            .max(1);
        let mut consumer = Consumer {
            addr,
            stream,
            seq: 0,
            buf: vec![0; options.max_frame_len as usize],
            start: 0,
            end: 0,
            cur: None,
            next: 0,
            high_watermark: 0,
            subscribed: Subscribed::default(),
            ungranted: 0,
            grant_at,
            reconnects: 0,
            records: 0,
            options,
        };
        let start = consumer.options.start;
        consumer.handshake(start)?;
        consumer.next = consumer.subscribed.start_offset;
        Ok(consumer)
    }

    /// The next record, waiting at most `timeout` for one; `Ok(None)` when none came in
    /// that time (the subscription goes on: call again). Records come in offset order,
    /// none twice; a jump in offsets means the log has none in between (retention).
    ///
    /// # Errors
    /// `InvalidData` for a frame or record that fails its checks (a CRC, a gap within a
    /// frame, another log's frame): the consumer does not hand out damaged records; a
    /// REJECT (with a [`Rejected`] inside); a lost connection when `reconnect` is off or
    /// reconnecting failed.
    pub fn next_timeout(&mut self, timeout: Duration) -> io::Result<Option<Record<'_>>> {
        match self.next_range(Some(Instant::now() + timeout))? {
            Some((at, len)) => view(&self.buf[at..at + len]).map(Some),
            None => Ok(None),
        }
    }

    /// The next record, waiting for one as long as it takes.
    ///
    /// # Errors
    /// As [`next_timeout`](Self::next_timeout).
    pub fn next_record(&mut self) -> io::Result<Record<'_>> {
        let (at, len) = self
            .next_range(None)?
            .expect("without a deadline a record or an error comes");
        view(&self.buf[at..at + len])
    }

    /// Commits `offset` for the consumer's name (everything below it is processed) and
    /// waits for the server's COMMITTED; returns the position it stored. DATA frames that
    /// arrive meanwhile are kept for [`next_timeout`](Self::next_timeout).
    ///
    /// # Errors
    /// `InvalidInput` for an anonymous consumer; a REJECT (`offset_out_of_range` above the
    /// high watermark), `TimedOut` without an answer within the timeout, a lost connection
    /// that could not be reopened (after a reconnect the COMMIT is sent again).
    pub fn commit(&mut self, offset: u64) -> io::Result<u64> {
        if self.options.name.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an anonymous consumer cannot commit: give it a name",
            ));
        }
        loop {
            match self.try_commit(offset) {
                Err(e) if is_loss(&e) && self.options.reconnect => self.reconnect(e)?,
                other => return other,
            }
        }
    }

    /// Commits [`position`](Self::position): every record returned so far is processed.
    ///
    /// # Errors
    /// As [`commit`](Self::commit).
    pub fn commit_position(&mut self) -> io::Result<u64> {
        self.commit(self.next)
    }

    /// The offset after the last record returned (the subscription's start before any).
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The highest high watermark the server reported (SUBSCRIBED, DATA frames).
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
    }

    /// Records visible on the server and not read yet: high watermark − position.
    pub fn lag(&self) -> u64 {
        self.high_watermark.saturating_sub(self.next)
    }

    /// The latest subscription's SUBSCRIBED (after a reconnect, the new one's).
    pub fn subscribed(&self) -> Subscribed {
        self.subscribed
    }

    /// Connections reopened after a loss.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Records returned so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The options it was opened with.
    pub fn options(&self) -> &ConsumerOptions {
        &self.options
    }
}

// ---- the machinery ----

impl Consumer {
    /// The buffer range of the next record to hand out, waiting until `deadline` (`None`:
    /// for ever); reconnects on a loss when allowed.
    fn next_range(&mut self, deadline: Option<Instant>) -> io::Result<Option<(usize, usize)>> {
        loop {
            if let Some(range) = self.take_record() {
                return Ok(Some(range));
            }
            match self.next_data(deadline) {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                Err(e) if is_loss(&e) && self.options.reconnect => self.reconnect(e)?,
                Err(e) => return Err(e),
            }
        }
    }

    /// The next record of the current DATA frame at or above `next` (those below it were
    /// returned before a reconnect), as (start, length) in the buffer.
    fn take_record(&mut self) -> Option<(usize, usize)> {
        while let Some(cur) = self.cur.as_mut() {
            if cur.at >= cur.end {
                self.cur = None;
                break;
            }
            let at = cur.at;
            // `Frame::new_checked` checked the framing: lengths and offsets are sound.
            let body_len = u32::from_le_bytes(self.buf[at..at + 4].try_into().unwrap_or([0; 4]));
            let len = RECORD_HEADER_LEN + body_len as usize;
            let offset = u64::from_le_bytes(self.buf[at + 8..at + 16].try_into().unwrap_or([0; 8]));
            cur.at += len;
            debug_assert!(cur.at <= cur.end, "a record runs past its frame");
            if offset < self.next {
                continue;
            }
            self.next = offset + 1;
            self.records += 1;
            return Some((at, len));
        }
        None
    }

    /// Takes the next DATA frame into `cur`: `Ok(false)` when none came before `deadline`.
    fn next_data(&mut self, deadline: Option<Instant>) -> io::Result<bool> {
        loop {
            if let Some(len) = self.complete_frame(self.start)? {
                let at = self.start;
                self.start += len;
                let frame = self.check(at, len)?;
                match frame.kind() {
                    FrameKind::Data => {
                        let prefix = frame.data().unwrap_or_default();
                        if prefix.log != self.options.log.as_u8() {
                            return Err(self.invalid(format!(
                                "sent a DATA frame of log code {} on a subscription to {}",
                                prefix.log, self.options.log
                            )));
                        }
                        self.high_watermark = self.high_watermark.max(prefix.high_watermark);
                        self.cur = Some(Current {
                            at: at + HEADER_LEN + DATA_PREFIX_LEN,
                            end: at + len - TRAILER_LEN,
                        });
                        self.ungranted += u64::from(prefix.records_len);
                        if self.ungranted >= self.grant_at {
                            self.grant()?;
                        }
                        return Ok(true);
                    }
                    FrameKind::Reject => return Err(self.rejected(&frame, "the subscription")),
                    // A COMMITTED whose COMMIT was abandoned (its wait timed out): stale.
                    FrameKind::Committed => {}
                    other => return Err(self.unexpected(other)),
                }
                continue;
            }
            match self.fill(deadline)? {
                Fill::Read => {}
                Fill::Timeout => return Ok(false),
                Fill::Closed => return Err(self.closed("while streaming")),
            }
        }
    }

    /// Gives the server back the credit taken in since the last CREDIT.
    fn grant(&mut self) -> io::Result<()> {
        let mut out = [0u8; 32];
        let n = wire::encode_credit(&mut out, self.seq + 1, self.ungranted)
            .map_err(|e| io::Error::other(format!("encoding a CREDIT: {e:?}")))?;
        self.send(&out[..n], "a CREDIT")?;
        self.seq += 1;
        self.ungranted = 0;
        Ok(())
    }

    /// One COMMIT and its COMMITTED, on the current connection.
    fn try_commit(&mut self, offset: u64) -> io::Result<u64> {
        let mut out = [0u8; 32];
        let n = wire::encode_commit(&mut out, self.seq + 1, offset)
            .map_err(|e| io::Error::other(format!("encoding a COMMIT: {e:?}")))?;
        self.send(&out[..n], "a COMMIT")?;
        self.seq += 1;
        let deadline = Instant::now() + self.options.timeout;
        // Frames are scanned from `start + skip`: DATA frames stay where they are (relative
        // to `start`, which a compaction moves), the COMMITTED is cut out.
        let mut skip = 0;
        loop {
            while let Some(len) = self.complete_frame(self.start + skip)? {
                let at = self.start + skip;
                let is_data = self.buf[at + field::header::KIND] == FrameKind::Data.as_u8()
                    && self.buf[at + field::header::VERSION] == CONSUMER_VERSION;
                if is_data {
                    skip += len;
                    continue;
                }
                let frame = self.check(at, len)?;
                match frame.kind() {
                    FrameKind::Committed => {
                        let stored = frame.committed().unwrap_or(offset);
                        self.buf.copy_within(at + len..self.end, at);
                        self.end -= len;
                        return Ok(stored);
                    }
                    FrameKind::Reject => {
                        return Err(self.rejected(&frame, &format!("the COMMIT of {offset}")));
                    }
                    other => return Err(self.unexpected(other)),
                }
            }
            match self.fill(Some(deadline))? {
                Fill::Read => {}
                Fill::Timeout => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the server at {} did not answer the COMMIT of {offset} within {:?}",
                            self.addr, self.options.timeout
                        ),
                    ));
                }
                Fill::Closed => return Err(self.closed("before answering a COMMIT")),
            }
        }
    }

    /// HELLO and SUBSCRIBE on a fresh connection (sent together), then their replies.
    fn handshake(&mut self, start: Start) -> io::Result<()> {
        self.start = 0;
        self.end = 0;
        self.cur = None;
        self.ungranted = 0;
        let mut out = [0u8; 256];
        let n = wire::encode_hello(&mut out, 0, &Hello::consumer(self.options.max_frame_len))
            .map_err(|e| io::Error::other(format!("encoding the HELLO: {e:?}")))?;
        let name = self.options.name.as_deref().unwrap_or("").as_bytes();
        let sub = Subscribe::new(self.options.log, start, self.options.window_bytes, name);
        let m = wire::encode_subscribe(&mut out[n..], 1, &sub)
            .map_err(|e| io::Error::other(format!("encoding the SUBSCRIBE: {e:?}")))?;
        self.send(&out[..n + m], "the HELLO and SUBSCRIBE")?;
        self.seq = 1;
        let deadline = Instant::now() + self.options.timeout;
        let hello = self.handshake_frame(deadline, "the HELLO")?;
        let hello = self.check(hello.0, hello.1)?;
        match hello.kind() {
            FrameKind::Hello => {
                let h = hello.hello().unwrap_or_default();
                if h.max_version != CONSUMER_VERSION {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!(
                            "the server at {} answered the HELLO with version {}: not a consumer \
                             listener (the engine's consumers.listen, by default port 7072)?",
                            self.addr, h.max_version
                        ),
                    ));
                }
            }
            FrameKind::Reject => return Err(self.rejected(&hello, "the HELLO")),
            other => return Err(self.unexpected(other)),
        }
        let reply = self.handshake_frame(deadline, "the SUBSCRIBE")?;
        let reply = self.check(reply.0, reply.1)?;
        match reply.kind() {
            FrameKind::Subscribed => {
                let s = reply.subscribed().unwrap_or_default();
                self.subscribed = s;
                self.high_watermark = self.high_watermark.max(s.high_watermark);
                Ok(())
            }
            FrameKind::Reject => {
                let what = format!("the subscription to the {} log", self.options.log);
                Err(self.rejected(&reply, &what))
            }
            other => Err(self.unexpected(other)),
        }
    }

    /// The next frame during the handshake, as (start, length), consumed.
    fn handshake_frame(&mut self, deadline: Instant, what: &str) -> io::Result<(usize, usize)> {
        loop {
            if let Some(len) = self.complete_frame(self.start)? {
                let at = self.start;
                self.start += len;
                return Ok((at, len));
            }
            match self.fill(Some(deadline))? {
                Fill::Read => {}
                Fill::Timeout => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the server at {} did not answer {what} within {:?}",
                            self.addr, self.options.timeout
                        ),
                    ));
                }
                Fill::Closed => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!(
                            "the server at {} closed the connection before answering {what} \
                             (too many connections?)",
                            self.addr
                        ),
                    ));
                }
            }
        }
    }

    /// Opens a new connection and subscribes from [`position`](Self::position), pausing
    /// between attempts; the buffered frames of the old connection are dropped (what was
    /// not returned yet is sent again).
    fn reconnect(&mut self, cause: io::Error) -> io::Result<()> {
        let mut pause = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = open_stream(self.addr, self.options.timeout).and_then(|stream| {
                self.stream = stream;
                self.handshake(Start::Offset(self.next))
            });
            match result {
                Ok(()) => {
                    self.reconnects += 1;
                    return Ok(());
                }
                Err(e) if retryable(&e) && attempt < self.options.max_reconnect_attempts => {
                    thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "lost the connection to {} ({cause}); reconnecting failed after \
                             {attempt} attempt(s): {e}",
                            self.addr
                        ),
                    ));
                }
            }
        }
    }

    /// The length of the complete frame at `at`, if the buffer holds one.
    ///
    /// # Errors
    /// `InvalidData` for a length outside `20..=max_frame_len`: the stream cannot be
    /// followed any further.
    fn complete_frame(&self, at: usize) -> io::Result<Option<usize>> {
        let avail = &self.buf[at..self.end];
        let Some(len) = wire::frame_len(avail) else {
            return Ok(None);
        };
        if !(MIN_FRAME_LEN..=self.options.max_frame_len as usize).contains(&len) {
            return Err(self.invalid(format!(
                "sent a frame of length {len} (at most {} asked for): not a pinstream consumer \
                 listener?",
                self.options.max_frame_len
            )));
        }
        Ok((avail.len() >= len).then_some(len))
    }

    /// The frame at `at..at + len`, checked (trailer, and for DATA every record's CRC and
    /// consecutive offsets).
    fn check(&self, at: usize, len: usize) -> io::Result<Frame<'_>> {
        Frame::new_checked(&self.buf[at..at + len], self.options.max_frame_len as usize)
            .map_err(|e| self.invalid(format!("sent a frame that fails its checks: {e:?}")))
    }

    /// Reads more bytes, making room first: the buffer keeps the current frame's records
    /// and the unparsed bytes, moved to its front; it grows only when they fill it (DATA
    /// frames held while a COMMIT waits).
    fn fill(&mut self, deadline: Option<Instant>) -> io::Result<Fill> {
        if self.end == self.buf.len() {
            let keep = self.cur.map_or(self.start, |c| c.at.min(self.start));
            if keep > 0 {
                self.buf.copy_within(keep..self.end, 0);
                self.start -= keep;
                self.end -= keep;
                if let Some(c) = self.cur.as_mut() {
                    c.at -= keep;
                    c.end -= keep;
                }
            }
            if self.end == self.buf.len() {
                let more = self.options.max_frame_len as usize;
                self.buf.resize(self.buf.len() + more, 0);
            }
        }
        let wait = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => left,
                _ => return Ok(Fill::Timeout),
            },
            None => self.options.timeout,
        };
        self.stream.set_read_timeout(Some(wait))?;
        match self.stream.read(&mut self.buf[self.end..]) {
            Ok(0) => Ok(Fill::Closed),
            Ok(n) => {
                self.end += n;
                Ok(Fill::Read)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Fill::Read),
            Err(e) if is_timeout(&e) => Ok(if deadline.is_some() {
                Fill::Timeout
            } else {
                Fill::Read
            }),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("reading from {}: {e}", self.addr),
            )),
        }
    }

    fn send(&mut self, frames: &[u8], what: &str) -> io::Result<()> {
        self.stream
            .write_all(frames)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: sending {what}: {e}", self.addr)))
    }

    fn invalid(&self, what: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the server at {} {what}", self.addr),
        )
    }

    fn unexpected(&self, kind: FrameKind) -> io::Error {
        self.invalid(format!("sent an unexpected {} frame", kind.name()))
    }

    fn closed(&self, when: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the server at {} closed the connection {when}", self.addr),
        )
    }

    fn rejected(&self, frame: &Frame<'_>, what: &str) -> io::Error {
        let r = frame.reject().unwrap_or_default();
        let message = format!(
            "the server at {} refused {what}: {}",
            self.addr,
            reason_text(r.reason)
        );
        io::Error::new(
            io::ErrorKind::ConnectionRefused,
            Rejected {
                reason: r.reason,
                frame_seq: r.frame_seq,
                message,
            },
        )
    }
}

/// A record view over bytes `Frame::new_checked` checked.
fn view(bytes: &[u8]) -> io::Result<Record<'_>> {
    RecordView::new_checked(bytes, u32::MAX)
        .map(|(rec, _)| rec)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("stored record: {e}")))
}

fn check_options(o: &ConsumerOptions) -> io::Result<()> {
    let bad = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
    if let Some(name) = &o.name {
        if !wire::valid_consumer_name(name.as_bytes()) {
            return bad(format!(
                "consumer name {name:?}: must be 1 to {} bytes of ASCII letters, digits, '.', \
                 '_' and '-' (not \".\" or \"..\")",
                wire::MAX_CONSUMER_NAME
            ));
        }
    }
    if o.window_bytes < MAX_STORED_RECORD as u64 {
        return bad(format!(
            "credit window of {} bytes: must be at least {MAX_STORED_RECORD} (the largest stored \
             record), or the server could never send it",
            o.window_bytes
        ));
    }
    if (o.max_frame_len as usize) < MIN_CONSUMER_FRAME_LEN {
        return bad(format!(
            "max_frame_len {}: must be at least {MIN_CONSUMER_FRAME_LEN} (a DATA frame with the \
             largest stored record)",
            o.max_frame_len
        ));
    }
    Ok(())
}

fn open_stream(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot connect to {addr} over TCP: {e}; is a pinstream engine's consumer \
                 listener (consumers.listen) there?"
            ),
        )
    })?;
    let context =
        |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{addr}: {what}: {e}"));
    stream
        .set_nodelay(true)
        .map_err(|e| context("setting TCP_NODELAY", e))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| context("setting a write timeout", e))?;
    Ok(stream)
}

/// Whether `e` means the connection is gone (reconnect), as opposed to a refusal or damage.
fn is_loss(e: &io::Error) -> bool {
    rejection(e).is_none()
        && matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::NotConnected
        )
}

/// Whether a failed reconnect attempt is worth another: the engine restarting (refused,
/// reset, timed out) or still holding our old connection's name (`consumer_busy`).
fn retryable(e: &io::Error) -> bool {
    match rejection(e) {
        Some(r) => {
            r.reason() == Some(Reason::ConsumerBusy) || r.reason() == Some(Reason::TooManyConsumers)
        }
        None => {
            is_loss(e)
                || is_timeout(e)
                || matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::Interrupted
                )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked_before_connecting() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut o = ConsumerOptions {
            name: Some("../etc".into()),
            ..ConsumerOptions::default()
        };
        let e = Consumer::connect(addr, o.clone()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("consumer name"), "{e}");
        o.name = Some("ok-name".into());
        o.window_bytes = 1000;
        let e = Consumer::connect(addr, o.clone()).unwrap_err();
        assert!(e.to_string().contains("credit window"), "{e}");
        o.window_bytes = 1 << 20;
        o.max_frame_len = 4096;
        let e = Consumer::connect(addr, o).unwrap_err();
        assert!(e.to_string().contains("max_frame_len"), "{e}");
    }

    #[test]
    fn losses_and_refusals_are_told_apart() {
        assert!(is_loss(&io::Error::from(io::ErrorKind::ConnectionReset)));
        assert!(!is_loss(&io::Error::from(io::ErrorKind::TimedOut)));
        let refused = io::Error::new(
            io::ErrorKind::ConnectionRefused,
            Rejected {
                reason: Reason::ConsumerBusy.code(),
                frame_seq: 1,
                message: "busy".into(),
            },
        );
        assert!(!is_loss(&refused));
        assert!(retryable(&refused));
        assert_eq!(
            rejection(&refused).unwrap().reason(),
            Some(Reason::ConsumerBusy)
        );
    }
}
