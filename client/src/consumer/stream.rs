//! The consumer's machinery: the receive buffer, frames in and out, the handshake,
//! credit, commits and reconnecting (the module docs of [`super`] say how it works).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::Range;
use std::thread;
use std::time::{Duration, Instant};

use pinstream_core::reason::Reason;
use pinstream_core::record::RECORD_HEADER_LEN;
use pinstream_core::wire::{
    self, CONSUMER_VERSION, DATA_PREFIX_LEN, Frame, FrameKind, HEADER_LEN, Hello, MIN_FRAME_LEN,
    Start, Subscribe, TRAILER_LEN, field,
};

use super::{Consumer, Rejected, rejection};
use crate::connection::{is_timeout, reason_text};

/// A stored record's `body_len` field (`docs/PROTOCOL.md` §12, stored record).
const RECORD_BODY_LEN: Range<usize> = 0..4;
/// A stored record's `offset` field.
const RECORD_OFFSET: Range<usize> = 8..16;

/// What a read into the buffer gave.
pub(super) enum Fill {
    /// Bytes came.
    Read,
    /// Nothing came before the deadline.
    Timeout,
    /// The server closed the connection.
    Closed,
}

/// The records of the DATA frame being read: `at..end` in the buffer (absolute indexes).
#[derive(Clone, Copy, Debug)]
pub(super) struct Current {
    pub(super) at: usize,
    pub(super) end: usize,
}

impl Consumer {
    /// The buffer range of the next record to hand out, waiting until `deadline` (`None`:
    /// for ever); reconnects on a loss when allowed.
    pub(super) fn next_range(
        &mut self,
        deadline: Option<Instant>,
    ) -> io::Result<Option<(usize, usize)>> {
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
            let field = |r: Range<usize>| &self.buf[at + r.start..at + r.end];
            let body_len = u32::from_le_bytes(field(RECORD_BODY_LEN).try_into().unwrap_or([0; 4]));
            let len = RECORD_HEADER_LEN + body_len as usize;
            let offset = u64::from_le_bytes(field(RECORD_OFFSET).try_into().unwrap_or([0; 8]));
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
    pub(super) fn try_commit(&mut self, offset: u64) -> io::Result<u64> {
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
                Fill::Timeout => return Err(self.no_answer(&format!("the COMMIT of {offset}"))),
                Fill::Closed => return Err(self.closed("before answering a COMMIT")),
            }
        }
    }

    /// HELLO and SUBSCRIBE on a fresh connection (sent together), then their replies.
    pub(super) fn handshake(&mut self, start: Start) -> io::Result<()> {
        self.start = 0;
        self.end = 0;
        self.cur = None;
        self.ungranted = 0;
        // A HELLO with the largest token (322 bytes) and a SUBSCRIBE with the longest name.
        let mut out = [0u8; 512];
        let hello = Hello::consumer(self.options.max_frame_len);
        let n = match self.options.token.as_deref() {
            Some(t) => wire::encode_hello_token(&mut out, 0, &hello, t),
            None => wire::encode_hello(&mut out, 0, &hello),
        }
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

    /// The error of a server that did not answer `what` within the timeout.
    fn no_answer(&self, what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the server at {} did not answer {what} within {:?}",
                self.addr, self.options.timeout
            ),
        )
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
                Fill::Timeout => return Err(self.no_answer(what)),
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
    pub(super) fn reconnect(&mut self, cause: io::Error) -> io::Result<()> {
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

pub(super) fn open_stream(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
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
pub(super) fn is_loss(e: &io::Error) -> bool {
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
pub(super) fn retryable(e: &io::Error) -> bool {
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
