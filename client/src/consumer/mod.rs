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

mod stream;

use std::error::Error;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pinstream_core::reason::Reason;
use pinstream_core::record::RecordView;
use pinstream_core::wire::{
    self, MAX_STORED_RECORD, MIN_CONSUMER_FRAME_LEN, Start, StreamLog, Subscribed,
};

use self::stream::{Current, is_loss, open_stream};

/// One stored record, borrowed from the consumer's receive buffer: its offset, kind and
/// body ([`RecordView::decode`] decodes the body). Its CRC was checked.
pub type Record<'a> = RecordView<'a>;

/// The largest `max_frame_len` a consumer accepts (64 MiB): the receive buffer is that
/// large, so a typo must not allocate gigabytes.
pub const MAX_RECEIVE_FRAME_LEN: u32 = 64 << 20;

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
    /// [`MIN_CONSUMER_FRAME_LEN`], at most [`MAX_RECEIVE_FRAME_LEN`].
    pub max_frame_len: u32,
    /// Bound on connecting, on each write, on waiting for the HELLO, SUBSCRIBED and
    /// COMMITTED replies.
    pub timeout: Duration,
    /// Reconnect after a lost connection (else the loss is an error).
    pub reconnect: bool,
    /// Attempts to reconnect in a row (pauses doubling from 50 ms to 2 s) before giving up.
    pub max_reconnect_attempts: u32,
    /// The token the HELLO carries (1 to [`HELLO_TOKEN_MAX`](wire::HELLO_TOKEN_MAX)
    /// bytes) for an engine with `consumers.auth = "token"`; `None`: none. Without a known
    /// one such an engine refuses the HELLO `unauthenticated` (not retried).
    pub token: Option<Vec<u8>>,
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
            token: None,
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
    if let Some(t) = &o.token {
        if t.is_empty() || t.len() > wire::HELLO_TOKEN_MAX {
            return bad(format!(
                "a token of {} bytes: must be 1 to {} bytes",
                t.len(),
                wire::HELLO_TOKEN_MAX
            ));
        }
    }
    if o.max_frame_len > MAX_RECEIVE_FRAME_LEN {
        return bad(format!(
            "max_frame_len {}: at most {MAX_RECEIVE_FRAME_LEN} (the receive buffer is that large)",
            o.max_frame_len
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

#[cfg(test)]
mod tests {
    use super::stream::retryable;
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
        let e = Consumer::connect(addr, o.clone()).unwrap_err();
        assert!(e.to_string().contains("max_frame_len"), "{e}");
        o.max_frame_len = u32::MAX;
        let e = Consumer::connect(addr, o).unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
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
