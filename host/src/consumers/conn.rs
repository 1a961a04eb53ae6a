//! One consumer connection ([`Conn`]): its frames in (HELLO, SUBSCRIBE, CREDIT, COMMIT,
//! decoded by a [`StreamDecoder`] with a small maximum: consumers send small frames), its
//! replies out, and its subscription's DATA frames as far as the credit and the high
//! watermark allow. Every refusal is a REJECT, then the connection closes once it is out.
//!
//! With `consumers.auth = "token"` the HELLO must carry a token of `[[auth.tokens]]` (the
//! producer HELLO's token form, `docs/PROTOCOL.md` §5): it is hashed and compared in
//! constant time while the frame is still borrowed ([`Msg::of`]), with no allocation. A
//! HELLO without a known token, or a frame before any HELLO, is refused `unauthenticated`
//! and the connection closed; so is a token whose entry says `read = false`. A token
//! grants reading every log and committing any named position: logs are per lane, not per
//! topic, so a token's topics do not apply here.

use std::collections::HashSet;
use std::io::{self, Read};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::Path;

use pinstream_core::reason::Reason;
use pinstream_core::wire::{
    self, CONSUMER_VERSION, DATA_OVERHEAD, DataPrefix, Frame, FrameKind, Hello, MAX_CONSUMER_NAME,
    MIN_CONSUMER_FRAME_LEN, NO_COMMIT, Reject, Start, StreamDecoder, StreamLog, Subscribed,
    valid_consumer_name,
};

use super::committer::{Committer, Job};
use super::output::{CTL_CAP, DataSend, Flushed, Output};
use super::positions::Positions;
use super::reader::{self, LogCursor, Next};
use super::stats::AuthRefusal;
use super::stats::ConsumerStats;
use super::watermark::Watermarks;
use crate::gateway::Tokens;
use crate::storage::layout::LogId;

/// The largest frame the server accepts from a consumer (its HELLO reply says so).
pub const MAX_IN: usize = 4096;
/// COMMITs of one connection being stored at once; past it, its input waits.
const MAX_PENDING_COMMITS: usize = 16;

/// What the serving thread lends a connection while it handles it.
pub struct Ctx<'a> {
    /// The logs' high watermarks.
    pub marks: &'a Watermarks,
    /// Counters.
    pub stats: &'a ConsumerStats,
    /// Named positions.
    pub positions: &'a mut Positions,
    /// `(log index, name)` of every named subscription open now.
    pub busy: &'a mut HashSet<(usize, String)>,
    /// The data directory (`storage.dir`).
    pub data_dir: &'a Path,
    /// Frames decoded from one read (scratch, reused).
    pub msgs: &'a mut Vec<Msg>,
    /// Stores positions off the serving thread.
    pub commits: &'a Committer,
    /// The epoll token of the connection being handled (names it in commit jobs).
    pub token: u64,
    /// `consumers.auth = "token"`: the tokens a HELLO must show one of.
    pub tokens: Option<&'a Tokens>,
}

/// What a HELLO's token proved, looked up while the frame was still borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shown {
    /// No token in the HELLO.
    Nothing,
    /// A token the engine does not know (or tokens are not checked).
    Unknown,
    /// A token of `[[auth.tokens]]` that may not read (`read = false`).
    Denied,
    /// A token of `[[auth.tokens]]` that may read.
    Known,
}

/// A consumer frame, decoded and copied out of the read buffer.
#[derive(Clone, Copy, Debug)]
pub enum Msg {
    /// HELLO, and what its token proved.
    Hello(u64, Hello, Shown),
    /// SUBSCRIBE (the name copied, `name_len` bytes of it).
    Subscribe {
        /// Its seq.
        seq: u64,
        /// The log code.
        log: u8,
        /// The start code.
        start: u8,
        /// The start value.
        value: u64,
        /// Initial credit.
        credit: u64,
        /// The name's bytes.
        name: [u8; MAX_CONSUMER_NAME],
        /// Its length.
        name_len: usize,
    },
    /// CREDIT.
    Credit(u64, u64),
    /// COMMIT.
    Commit(u64, u64),
    /// A frame that is refused as it is.
    Refuse(Reject),
}

impl Msg {
    /// The frame copied out; a HELLO's token looked up in `tokens` (a hash and a
    /// constant-time compare per configured token, nothing allocated).
    fn of(frame: &Frame<'_>, tokens: Option<&Tokens>) -> Self {
        let seq = frame.seq();
        match frame.kind() {
            FrameKind::Hello => match frame.hello() {
                Some(h) => {
                    let shown = match (frame.hello_token(), tokens) {
                        (None, _) => Shown::Nothing,
                        (Some(t), Some(tokens)) => {
                            match tokens.find(t).and_then(|i| tokens.get(i)) {
                                Some(token) if token.reads() => Shown::Known,
                                Some(_) => Shown::Denied,
                                None => Shown::Unknown,
                            }
                        }
                        (Some(_), None) => Shown::Unknown,
                    };
                    Msg::Hello(seq, h, shown)
                }
                None => Msg::Refuse(Reject::frame(seq, Reason::UnexpectedKind)),
            },
            FrameKind::Subscribe => match frame.subscribe() {
                Some(s) => {
                    let mut name = [0u8; MAX_CONSUMER_NAME];
                    let name_len = s.name.len().min(MAX_CONSUMER_NAME);
                    name[..name_len].copy_from_slice(&s.name[..name_len]);
                    Msg::Subscribe {
                        seq,
                        log: s.log,
                        start: s.start,
                        value: s.start_value,
                        credit: s.credit,
                        name,
                        name_len,
                    }
                }
                None => Msg::Refuse(Reject::frame(seq, Reason::UnexpectedKind)),
            },
            FrameKind::Credit => Msg::Credit(seq, frame.credit().unwrap_or(0)),
            FrameKind::Commit => Msg::Commit(seq, frame.commit().unwrap_or(0)),
            _ => Msg::Refuse(Reject::frame(seq, Reason::UnexpectedKind)),
        }
    }
}

/// Where a connection is in its conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the HELLO.
    Hello,
    /// Waiting for the SUBSCRIBE.
    Subscribe,
    /// Subscribed: DATA flows.
    Streaming,
}

/// A subscription.
#[derive(Debug)]
struct Sub {
    log: LogId,
    name: Option<String>,
    credit: u64,
    cursor: LogCursor,
}

/// The connection must be closed (the REJECT, if any, is out; or the peer is gone). The
/// message is empty for the ordinary ends; otherwise it says what went wrong on the
/// engine's side, and the server reports it.
#[derive(Debug)]
pub struct Close(pub String);

/// One consumer connection.
pub struct Conn {
    stream: TcpStream,
    source: u32,
    decoder: Box<StreamDecoder<MAX_IN>>,
    phase: Phase,
    /// The consumer's HELLO `max_frame_len`: no DATA frame is larger.
    max_frame: u64,
    /// The seq of the next frame the server sends.
    seq: u64,
    sub: Option<Sub>,
    out: Output,
    /// A REJECT was queued: close once the output is out.
    closing: bool,
    /// Input is waiting unread because replies are piling up (see [`CTL_CAP`]).
    read_paused: bool,
    /// Accepted past `consumers.max_connections`: its SUBSCRIBE is refused.
    over_limit: bool,
    /// COMMITs handed to the committer, not yet answered.
    pending_commits: usize,
    /// When it was accepted (a connection not subscribed within the handshake timeout is
    /// closed).
    accepted: std::time::Instant,
}

impl Conn {
    /// A new connection (non-blocking already), its id `source`.
    pub fn new(stream: TcpStream, source: u32, over_limit: bool) -> Self {
        Self {
            stream,
            source,
            decoder: Box::new(StreamDecoder::new()),
            phase: Phase::Hello,
            max_frame: 0,
            seq: 1,
            sub: None,
            out: Output::new(),
            closing: false,
            read_paused: false,
            over_limit,
            pending_commits: 0,
            accepted: std::time::Instant::now(),
        }
    }

    /// The socket.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.stream.as_raw_fd()
    }

    /// Whether input waits for replies to drain.
    pub fn read_paused(&self) -> bool {
        self.read_paused
    }

    /// Whether the connection has not subscribed yet (it is on the handshake clock).
    pub fn handshaking(&self) -> bool {
        self.phase != Phase::Streaming && !self.closing
    }

    /// Whether it has been handshaking for longer than `timeout`.
    pub fn handshake_expired(&self, now: std::time::Instant, timeout: std::time::Duration) -> bool {
        self.handshaking() && now.saturating_duration_since(self.accepted) >= timeout
    }

    /// Whether the connection is subscribed and idle (a new high watermark may give it
    /// something to send).
    pub fn wants_data(&self) -> bool {
        self.phase == Phase::Streaming && self.out.is_empty() && !self.closing
    }

    /// Frees the connection's name (when it closes).
    pub fn release(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(Sub {
            log,
            name: Some(name),
            ..
        }) = self.sub.take()
        {
            ctx.busy.remove(&(log.index(), name));
        }
    }

    fn next_seq(&mut self) -> u64 {
        let s = self.seq;
        self.seq += 1;
        s
    }

    /// Queues a REJECT and closes after it.
    fn reject(&mut self, ctx: &Ctx<'_>, frame_seq: u64, reason: Reason) {
        let seq = self.next_seq();
        let reject = Reject::frame(frame_seq, reason);
        if let Ok(n) = wire::encode_reject(self.out.ctl_room(), seq, &reject) {
            self.out.ctl_commit(n);
        }
        ctx.stats.rejects[reason.index()].incr();
        self.closing = true;
    }

    /// Reads what the socket has and answers it.
    ///
    /// # Errors
    /// [`Close`] when the peer closed or the socket failed.
    pub fn on_readable(&mut self, ctx: &mut Ctx<'_>) -> Result<(), Close> {
        let mut buf = [0u8; MAX_IN];
        loop {
            if self.out.ctl_pending() > CTL_CAP / 2 || self.pending_commits >= MAX_PENDING_COMMITS {
                self.read_paused = true;
                return Ok(());
            }
            self.read_paused = false;
            let n = match self.stream.read(&mut buf) {
                Ok(0) => return Err(Close(String::new())),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(Close(String::new())),
            };
            if self.closing {
                continue;
            }
            ctx.msgs.clear();
            let msgs = &mut *ctx.msgs;
            let tokens = ctx.tokens;
            self.decoder.feed_detailed(&buf[..n], |r| {
                msgs.push(match r {
                    Ok(f) => Msg::of(&f, tokens),
                    Err(e) => Msg::Refuse(e.to_reject()),
                });
            });
            let msgs = std::mem::take(ctx.msgs);
            for m in &msgs {
                if self.closing {
                    break;
                }
                self.handle(*m, ctx)?;
            }
            *ctx.msgs = msgs;
        }
    }

    fn handle(&mut self, msg: Msg, ctx: &mut Ctx<'_>) -> Result<(), Close> {
        match (self.phase, msg) {
            (_, Msg::Refuse(r)) => {
                let reason = r.reason().unwrap_or(Reason::UnexpectedKind);
                self.reject(ctx, r.frame_seq, reason);
            }
            (Phase::Hello, Msg::Hello(seq, _, shown))
                if ctx.tokens.is_some() && shown != Shown::Known =>
            {
                let why = match shown {
                    Shown::Nothing => AuthRefusal::NoToken,
                    Shown::Denied => AuthRefusal::ReadDenied,
                    Shown::Unknown | Shown::Known => AuthRefusal::UnknownToken,
                };
                ctx.stats.auth_refusals[why as usize].incr();
                self.reject(ctx, seq, Reason::Unauthenticated);
            }
            (
                Phase::Hello,
                Msg::Subscribe { seq, .. } | Msg::Credit(seq, _) | Msg::Commit(seq, _),
            ) if ctx.tokens.is_some() => {
                // Nothing before an authenticated HELLO.
                ctx.stats.auth_refusals[AuthRefusal::BeforeHello as usize].incr();
                self.reject(ctx, seq, Reason::Unauthenticated);
            }
            (Phase::Hello, Msg::Hello(seq, h, _)) => {
                if h.negotiate(CONSUMER_VERSION, CONSUMER_VERSION).is_none() {
                    self.reject(ctx, seq, Reason::UnsupportedVersion);
                } else if (h.max_frame_len as usize) < MIN_CONSUMER_FRAME_LEN {
                    self.reject(ctx, seq, Reason::BadLength);
                } else {
                    self.max_frame = u64::from(h.max_frame_len);
                    let reply = Hello::reply(CONSUMER_VERSION, MAX_IN as u32, self.source);
                    let s = self.next_seq();
                    if let Ok(n) = wire::encode_hello(self.out.ctl_room(), s, &reply) {
                        self.out.ctl_commit(n);
                    }
                    self.phase = Phase::Subscribe;
                }
            }
            (_, Msg::Hello(seq, ..)) => self.reject(ctx, seq, Reason::UnexpectedKind),
            (Phase::Hello, Msg::Subscribe { seq, .. }) => {
                self.reject(ctx, seq, Reason::UnexpectedKind);
            }
            (
                Phase::Subscribe,
                Msg::Subscribe {
                    seq,
                    log,
                    start,
                    value,
                    credit,
                    name,
                    name_len,
                },
            ) => self.subscribe(ctx, seq, log, (start, value), credit, &name[..name_len])?,
            (Phase::Streaming, Msg::Credit(_, bytes)) => {
                if let Some(s) = self.sub.as_mut() {
                    s.credit = s.credit.saturating_add(bytes);
                }
            }
            (Phase::Streaming, Msg::Commit(seq, offset)) => self.commit(ctx, seq, offset)?,
            (_, Msg::Subscribe { seq, .. } | Msg::Credit(seq, _) | Msg::Commit(seq, _)) => {
                self.reject(ctx, seq, Reason::NotSubscribed);
            }
        }
        Ok(())
    }

    fn subscribe(
        &mut self,
        ctx: &mut Ctx<'_>,
        seq: u64,
        log: u8,
        (start, value): (u8, u64),
        credit: u64,
        name: &[u8],
    ) -> Result<(), Close> {
        let Some(&id) = LogId::ALL.get(usize::from(log)) else {
            self.reject(ctx, seq, Reason::UnknownLog);
            return Ok(());
        };
        let name = match name {
            [] => None,
            n if valid_consumer_name(n) => Some(String::from_utf8_lossy(n).into_owned()),
            _ => {
                self.reject(ctx, seq, Reason::BadConsumerName);
                return Ok(());
            }
        };
        let Some(start) = Start::from_wire(start, value) else {
            self.reject(ctx, seq, Reason::OffsetOutOfRange);
            return Ok(());
        };
        if self.over_limit {
            self.reject(ctx, seq, Reason::TooManyConsumers);
            return Ok(());
        }
        if let Some(n) = &name {
            if ctx.busy.contains(&(id.index(), n.clone())) {
                self.reject(ctx, seq, Reason::ConsumerBusy);
                return Ok(());
            }
            if !ctx.positions.has_room_for(id, n) {
                self.reject(ctx, seq, Reason::TooManyConsumers);
                return Ok(());
            }
        }
        let vis = ctx.marks.read(id);
        let (first, hw) = (vis.first, vis.mark.offset);
        let dir = ctx.data_dir.join(id.name());
        let committed = name.as_deref().and_then(|n| ctx.positions.get(id, n));
        let start_offset = match (committed, start) {
            // A stored position wins; retention may have removed it, a crash under
            // `accepted` may have taken records back above it.
            (Some(c), _) => c.max(first).min(hw),
            (None, Start::Earliest) => first,
            (None, Start::Latest) => hw,
            (None, Start::Offset(o)) if o > hw => {
                self.reject(ctx, seq, Reason::OffsetOutOfRange);
                return Ok(());
            }
            (None, Start::Offset(o)) => o.max(first),
            (None, Start::Time(t)) => reader::offset_at_time(&dir, t, &vis).map_err(|e| {
                ctx.stats.read_errors.incr();
                Close(format!("finding the start time in {}: {e}", dir.display()))
            })?,
        };
        if let Some(n) = &name {
            ctx.busy.insert((id.index(), n.clone()));
        }
        let reply = Subscribed {
            start_offset,
            first_offset: first,
            high_watermark: hw,
            committed: committed.unwrap_or(NO_COMMIT),
        };
        let s = self.next_seq();
        if let Ok(n) = wire::encode_subscribed(self.out.ctl_room(), s, &reply) {
            self.out.ctl_commit(n);
        }
        self.sub = Some(Sub {
            log: id,
            name,
            credit,
            cursor: LogCursor::new(dir, start_offset),
        });
        self.phase = Phase::Streaming;
        Ok(())
    }

    fn commit(&mut self, ctx: &mut Ctx<'_>, seq: u64, offset: u64) -> Result<(), Close> {
        let Some(sub) = self.sub.as_ref() else {
            self.reject(ctx, seq, Reason::NotSubscribed);
            return Ok(());
        };
        let (log, Some(name)) = (sub.log, sub.name.clone()) else {
            self.reject(ctx, seq, Reason::NotSubscribed);
            return Ok(());
        };
        if offset > ctx.marks.high_watermark(log) {
            self.reject(ctx, seq, Reason::OffsetOutOfRange);
            return Ok(());
        }
        let job = Job {
            token: ctx.token,
            log,
            name,
            offset,
        };
        if !ctx.commits.submit(job) {
            return Err(Close(
                "the consumer positions' helper thread is gone".into(),
            ));
        }
        self.pending_commits += 1;
        Ok(())
    }

    /// A COMMIT of this connection was stored (`Ok`) or could not be (`Err`: the
    /// connection is closed, the consumer commits again elsewhere or later).
    ///
    /// # Errors
    /// [`Close`] when the position could not be stored.
    pub fn committed(&mut self, offset: u64, result: &Result<(), String>) -> Result<(), Close> {
        self.pending_commits = self.pending_commits.saturating_sub(1);
        if let Err(e) = result {
            return Err(Close(format!("cannot store a consumer position: {e}")));
        }
        let s = self.next_seq();
        if let Ok(n) = wire::encode_committed(self.out.ctl_room(), s, offset) {
            self.out.ctl_commit(n);
        }
        Ok(())
    }

    /// Queues the next DATA frame if there is one to send; whether it did.
    fn fill(&mut self, ctx: &Ctx<'_>) -> Result<bool, Close> {
        let Some(sub) = self.sub.as_mut() else {
            return Ok(false);
        };
        let room = self.max_frame.saturating_sub(DATA_OVERHEAD as u64);
        let limit = sub.credit.min(room).min(u64::from(u32::MAX));
        let vis = ctx.marks.read(sub.log);
        let next = sub.cursor.next_frame(&vis, limit).map_err(|e| {
            ctx.stats.read_errors.incr();
            Close(format!("reading log {}: {e}", sub.log.name()))
        })?;
        match next {
            Next::Nothing => Ok(false),
            Next::TooBig(len) if len > room => Err(Close(format!(
                "a record of {len} bytes in log {} does not fit the consumer's frames",
                sub.log.name()
            ))),
            Next::TooBig(_) => Ok(false),
            Next::Frame { from, to } => {
                let len = to.position - from.position;
                debug_assert!(len <= limit && to.offset > from.offset);
                debug_assert!(to.offset <= vis.mark.offset, "never past the watermark");
                let stream_log = StreamLog::from_u8(sub.log.index() as u8)
                    .ok_or_else(|| Close("a log without a wire code".into()))?;
                let prefix = DataPrefix::new(
                    stream_log,
                    from.offset,
                    to.offset,
                    vis.mark.offset,
                    len as usize,
                );
                let (head, trailer) = wire::encode_data_head(self.seq, &prefix)
                    .map_err(|e| Close(format!("encoding DATA: {e:?}")))?;
                self.seq += 1;
                sub.credit -= len;
                let i = sub.log.index();
                ctx.stats.records_sent[i].add(to.offset - from.offset);
                ctx.stats.bytes_sent[i].add(len);
                ctx.stats.data_frames[i].incr();
                self.out.data = Some(DataSend::new(head, from.position, to.position, trailer));
                Ok(true)
            }
        }
    }

    /// Sends what it can: pending output, then new DATA frames while credit, the high
    /// watermark and the socket allow.
    ///
    /// # Errors
    /// [`Close`] when the connection is done (a REJECT is out) or failed.
    pub fn pump(&mut self, ctx: &Ctx<'_>) -> Result<(), Close> {
        loop {
            let file = self.sub.as_ref().and_then(|s| s.cursor.file());
            match self.out.flush(self.stream.as_raw_fd(), file) {
                Ok(Flushed::Blocked) => return Ok(()),
                Ok(Flushed::All) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(Close("a segment file is shorter than its records".into()));
                }
                Err(_) => return Err(Close(String::new())),
            }
            if self.closing {
                return Err(Close(String::new()));
            }
            if self.phase != Phase::Streaming || !self.fill(ctx)? {
                return Ok(());
            }
        }
    }
}
