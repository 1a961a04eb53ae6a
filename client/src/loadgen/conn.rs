//! One connection of a load run: connecting (TCP with its HELLO, or UDP), the writer that
//! paces and sends frames, and the reader that takes the acknowledgements.

use std::io;
use std::net::{Shutdown, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pinstream_core::event::EventHeader;
use pinstream_core::wire::{self, BatchEncoder, Hello, Reject, encode_event};

use super::{AckWait, LoadConfig, Outcomes, Progress, READ_POLL, Transport, max_batch};
use crate::{ConnectOptions, Connection, Reader, Reply, reason_text};

/// One connection's share of the load.
pub(super) struct Plan {
    pub(super) cfg: LoadConfig,
    /// Connection index, for messages.
    pub(super) index: usize,
    /// Events for this connection (`u64::MAX`: until the duration ends).
    pub(super) events: u64,
    /// Events per second for this connection (0: flat out).
    pub(super) rate: u64,
    /// Ids: `id_first + k * id_stride` for event `k`.
    pub(super) id_stride: u64,
    pub(super) id_first: u64,
    /// The run's start, shared by every connection.
    pub(super) start: Instant,
    /// `start` in nanoseconds since the Unix epoch: events' timestamps are `epoch_ns` plus
    /// their send time from `start`, so a consumer can tell how old an event is.
    pub(super) epoch_ns: u64,
}

impl Plan {
    /// When the frame whose first event is event `sent` is due, from the start.
    pub(super) fn due(&self, sent: u64) -> Duration {
        let nanos = u128::from(sent) * 1_000_000_000 / u128::from(self.rate.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

pub(super) enum Socket {
    Tcp(Connection),
    Udp(UdpSocket),
    Http(super::http::HttpConn),
}

/// What one connection did.
pub(super) struct ConnReport {
    pub(super) sent: u64,
    pub(super) frames: u64,
    pub(super) bytes: u64,
    pub(super) end: Duration,
    pub(super) outcomes: Option<Outcomes>,
    pub(super) reject_frames: u64,
    pub(super) first_reject: Option<Reject>,
    pub(super) latency: Option<Histogram<u64>>,
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Connects, says HELLO and checks the server's reply against the frame size.
pub(super) fn connect_tcp(cfg: &LoadConfig, c: usize) -> io::Result<Connection> {
    let addr = cfg.addr;
    let frame_len = cfg.frame_len();
    let (conn, hello) = Connection::connect_with(
        addr,
        &ConnectOptions {
            timeout: cfg.ack_timeout,
            // Version 2, a producer session per connection (the server assigns its id), so
            // the ACKs count duplicates apart from stored events; a version-1 server
            // answers 1.
            hello: Some(Hello::producer(
                u32::try_from(frame_len).unwrap_or(u32::MAX),
                0,
            )),
            // The same token as over HTTP, carried in the HELLO (`tcp.auth = "token"`).
            token: cfg.http.token.as_ref().map(|t| t.as_bytes().to_vec()),
        },
        cfg.tls.as_ref(),
    )
    .map_err(|e| io::Error::new(e.kind(), format!("{e} (connection {c})")))?;
    let h = hello.unwrap_or_default();
    if (h.max_frame_len as usize) < frame_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the server at {addr} accepts frames of at most {} bytes, and {} events of {} payload bytes make {frame_len}; lower the batch to {} or the payload",
                h.max_frame_len,
                cfg.batch,
                cfg.payload,
                max_batch(h.max_frame_len as usize, cfg.payload)
            ),
        ));
    }
    Ok(conn)
}

pub(super) fn connect_udp(cfg: &LoadConfig, c: usize) -> io::Result<UdpSocket> {
    let addr = cfg.addr;
    let local: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = UdpSocket::bind(local).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("binding a UDP socket (connection {c}): {e}"),
        )
    })?;
    socket.connect(addr).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot send to {addr} over UDP (connection {c}): {e}"),
        )
    })?;
    Ok(socket)
}

/// State shared by a connection's writer and reader.
pub(super) struct Window {
    /// Send time (ns from the start) per frame, at `seq % len`; `len` is a power of two at
    /// least twice the window, so a slot is not reused while its frame is unacknowledged.
    sent_at: Vec<AtomicU64>,
    /// The highest seq sent.
    last_seq: AtomicU64,
    /// The last seq once the writer is done, `u64::MAX` before.
    final_seq: AtomicU64,
    /// When the writer finished (ns from the start).
    final_at: AtomicU64,
    /// The ACK watermark.
    acked: AtomicU64,
}

pub(super) fn run_connection(
    plan: &Plan,
    socket: Socket,
    progress: &Arc<Progress>,
) -> io::Result<ConnReport> {
    let slots = plan.cfg.window.next_power_of_two().saturating_mul(2);
    let window = Arc::new(Window {
        sent_at: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        last_seq: AtomicU64::new(0),
        final_seq: AtomicU64::new(u64::MAX),
        final_at: AtomicU64::new(0),
        acked: AtomicU64::new(0),
    });
    match socket {
        Socket::Udp(socket) => run_udp(plan, &socket, progress, &window),
        Socket::Tcp(conn) => run_tcp(plan, conn, progress, &window),
        Socket::Http(conn) => super::http::run_http(plan, conn, progress),
    }
}

/// A UDP connection: the writer alone (no acknowledgements).
fn run_udp(
    plan: &Plan,
    socket: &UdpSocket,
    progress: &Arc<Progress>,
    window: &Arc<Window>,
) -> io::Result<ConnReport> {
    let addr = plan.cfg.addr;
    let sent = send_frames(plan, progress, window, |frame| {
        socket.send(frame).map(drop).map_err(|e| {
            let hint = if e.kind() == io::ErrorKind::ConnectionRefused {
                "; nothing listens on that UDP port"
            } else {
                ""
            };
            io::Error::new(e.kind(), format!("sending to {addr} over UDP: {e}{hint}"))
        })
    })?;
    Ok(ConnReport {
        sent: sent.events,
        frames: sent.frames,
        bytes: sent.bytes,
        end: sent.end,
        outcomes: None,
        reject_frames: 0,
        first_reject: None,
        latency: None,
    })
}

/// A TCP connection: the writer on this thread, the reader of acknowledgements on its own.
fn run_tcp(
    plan: &Plan,
    conn: Connection,
    progress: &Arc<Progress>,
    window: &Arc<Window>,
) -> io::Result<ConnReport> {
    let cfg = &plan.cfg;
    let (mut writer, reader) = conn.split();
    let closer = writer.stream().try_clone()?;
    reader.stream().set_read_timeout(Some(READ_POLL))?;
    let reader_thread = spawn_reader(plan, reader, progress, window)?;
    let addr = cfg.addr;
    let sent = send_frames(plan, progress, window, |frame| {
        writer.send(frame).map_err(|e| {
            let what = if is_timeout(&e) {
                format!(
                    "the server at {addr} took no data for {:?} (it stopped reading)",
                    cfg.ack_timeout
                )
            } else {
                format!("sending to {addr} over TCP: {e}")
            };
            io::Error::new(e.kind(), what)
        })
    });
    if sent.is_ok() {
        // Half close (on TLS after a close_notify): the server acknowledges what it got,
        // then closes.
        let _ = writer.finish();
    } else {
        let _ = closer.shutdown(Shutdown::Both);
    }
    let acks = reader_thread
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the ACK reader panicked")));
    let (sent, acks) = match (sent, acks) {
        (Ok(s), Ok(a)) => (s, a),
        // The writer timed out: the server stopped reading; that says most.
        (Err(e), _) if is_timeout(&e) => return Err(e),
        // Otherwise the reader's error explains the writer's (a closed connection, an ACK
        // timeout, a failure elsewhere).
        (_, Err(e)) | (Err(e), Ok(_)) => return Err(e),
    };
    Ok(ConnReport {
        sent: sent.events,
        frames: sent.frames,
        bytes: sent.bytes,
        end: if cfg.ack == AckWait::Wait {
            acks.last_at.max(sent.end)
        } else {
            sent.end
        },
        outcomes: acks.outcomes,
        reject_frames: acks.reject_frames,
        first_reject: acks.first_reject,
        latency: (cfg.ack == AckWait::Wait).then_some(acks.latency),
    })
}

/// Starts the thread that reads the connection's ACKs and REJECTs ([`read_replies`]); on
/// its error it stops the writer and the other connections.
fn spawn_reader(
    plan: &Plan,
    mut reader: Reader,
    progress: &Arc<Progress>,
    window: &Arc<Window>,
) -> io::Result<thread::JoinHandle<io::Result<Acks>>> {
    let cfg = &plan.cfg;
    let (window, progress) = (Arc::clone(window), Arc::clone(progress));
    let (ack, timeout, start) = (cfg.ack, cfg.ack_timeout, plan.start);
    let (index, addr) = (plan.index, cfg.addr);
    thread::Builder::new()
        .name(format!("loadgen-acks-{}", plan.index))
        .spawn(move || {
            let result = Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .map_err(|e| io::Error::other(format!("histogram: {e}")))
                .and_then(|latency| {
                    let acks = AckReader {
                        addr,
                        ack,
                        timeout,
                        start,
                        window: &window,
                        progress: &progress,
                        through: 0,
                        out: Acks {
                            outcomes: None,
                            reject_frames: 0,
                            first_reject: None,
                            last_at: Duration::ZERO,
                            latency,
                        },
                    };
                    read_replies(&mut reader, acks)
                });
            if result.is_err() {
                // Unblock the writer (it may be waiting for the window or the socket) and
                // stop the other connections.
                progress.abort(index);
                let _ = reader.stream().shutdown(Shutdown::Both);
            }
            result
        })
}

/// Bytes of ready frames gathered into one write when sending flat out over TCP.
const COALESCE_BYTES: usize = 64 * 1024;

/// What a writer sent.
pub(super) struct Sent {
    events: u64,
    frames: u64,
    bytes: u64,
    /// Time of the last send, from the start.
    end: Duration,
}

/// Waits until frame `seq` fits the window of `limit` unacknowledged frames; `false` when
/// the run was stopped meanwhile.
fn wait_for_window(seq: u64, limit: u64, window: &Window, progress: &Progress) -> bool {
    let mut spins = 0u32;
    while seq - window.acked.load(Ordering::Acquire) > limit {
        if progress.aborted() {
            return false;
        }
        // Yield a little, then sleep: on a small machine a spinning load generator takes
        // the CPU the engine needs.
        spins += 1;
        if spins < 64 {
            thread::yield_now();
        } else {
            thread::sleep(Duration::from_micros(20));
        }
    }
    true
}

impl Plan {
    /// Whether `--duration` is over once `sent` events are out (by the schedule when paced).
    fn past_duration(&self, sent: u64) -> bool {
        self.cfg.duration.is_some_and(|limit| {
            let t = if self.rate > 0 {
                self.due(sent)
            } else {
                self.start.elapsed()
            };
            t >= limit
        })
    }

    /// Encodes events `events` (this connection's numbering) as frame `seq` into `frame`,
    /// stamped `ts` from the start (`epoch_ns + ts` in their timestamps); returns its length.
    fn encode(
        &self,
        frame: &mut [u8],
        seq: u64,
        events: std::ops::Range<u64>,
        ts: u64,
        payload: &[u8],
    ) -> io::Result<usize> {
        let cfg = &self.cfg;
        let cycle = cfg.priorities.len() as u64;
        let topics = u64::from(cfg.topics);
        let header = |k: u64| {
            let id = self.id_first.wrapping_add(k.wrapping_mul(self.id_stride));
            // `k % cycle` indexes `priorities`; the topic moves once per cycle, so every
            // priority meets every topic.
            let priority = cfg.priorities[(k % cycle) as usize];
            let topic = ((k / cycle) % topics) as u16;
            EventHeader::new(id, topic, priority, self.epoch_ns.saturating_add(ts))
                .with_value(id as i64)
        };
        let encode_error = |e: wire::EncodeError| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("encoding a frame: {e:?}"),
            )
        };
        if cfg.batch == 1 {
            return encode_event(frame, seq, &header(events.start), payload).map_err(encode_error);
        }
        let mut enc = BatchEncoder::new(frame, seq).map_err(encode_error)?;
        for k in events {
            enc.push(&header(k), payload).map_err(encode_error)?;
        }
        enc.finish().map_err(encode_error)
    }
}

/// The writer: encodes and sends frames until the events or the duration run out.
fn send_frames(
    plan: &Plan,
    progress: &Progress,
    window: &Window,
    mut send: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<Sent> {
    let cfg = &plan.cfg;
    let stopped = || {
        io::Error::new(
            io::ErrorKind::Interrupted,
            format!("connection {} stopped: another one failed", plan.index),
        )
    };
    let mut frame = vec![0u8; cfg.frame_len()];
    // Flat out over TCP, frames ready together go out in one write (as NATS clients
    // buffer their publishes): one system call per frame would make the client, not the
    // server, the limit for small frames. Flushed before any wait for the window and at
    // the end, so the server never waits for bytes the client holds.
    let coalesce = cfg.transport == Transport::Tcp && plan.rate == 0;
    let mut pending: Vec<u8> = Vec::with_capacity(if coalesce { COALESCE_BYTES } else { 0 });
    let payload = vec![0xA5u8; cfg.payload];
    let wait = cfg.transport == Transport::Tcp && cfg.ack == AckWait::Wait;
    let mut out = Sent {
        events: 0,
        frames: 0,
        bytes: 0,
        end: Duration::ZERO,
    };
    let mut seq = 0u64;
    while out.events < plan.events {
        if plan.past_duration(out.events) {
            break;
        }
        if progress.aborted() {
            return Err(stopped());
        }
        seq += 1;
        if wait && seq - window.acked.load(Ordering::Acquire) > cfg.window as u64 {
            if !pending.is_empty() {
                send(&pending)?;
                pending.clear();
            }
            if !wait_for_window(seq, cfg.window as u64, window, progress) {
                return Err(stopped());
            }
        }
        if plan.rate > 0 {
            pace_until(plan.start + plan.due(out.events), progress);
        }
        let n = u64::from(cfg.batch).min(plan.events - out.events);
        // At a fixed rate, latency counts from when the frame was due, not from when it
        // went out: a sender held back by the window or the server would otherwise hide
        // that wait (coordinated omission).
        let now = if plan.rate > 0 {
            plan.due(out.events).min(plan.start.elapsed())
        } else {
            plan.start.elapsed()
        };
        let ts = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        let len = plan.encode(&mut frame, seq, out.events..out.events + n, ts, &payload)?;
        let slot = (seq as usize) & (window.sent_at.len() - 1);
        window.sent_at[slot].store(ts, Ordering::Release);
        window.last_seq.store(seq, Ordering::Release);
        if coalesce {
            if pending.len() + len > COALESCE_BYTES && !pending.is_empty() {
                send(&pending)?;
                pending.clear();
            }
            pending.extend_from_slice(&frame[..len]);
        } else {
            send(&frame[..len])?;
        }
        out.events += n;
        out.frames += 1;
        out.bytes += len as u64;
        progress.events_sent.fetch_add(n, Ordering::Relaxed);
    }
    if !pending.is_empty() {
        send(&pending)?;
    }
    out.end = plan.start.elapsed();
    window.final_at.store(
        u64::try_from(out.end.as_nanos()).unwrap_or(u64::MAX),
        Ordering::Release,
    );
    window.final_seq.store(seq, Ordering::Release);
    Ok(out)
}

/// Waits until `due`: sleeps while more than a few hundred microseconds remain (the
/// scheduler's granularity), then yields.
fn pace_until(due: Instant, progress: &Progress) {
    loop {
        let now = Instant::now();
        if now >= due || progress.aborted() {
            return;
        }
        let left = due - now;
        if left > Duration::from_micros(500) {
            thread::sleep((left - Duration::from_micros(200)).min(Duration::from_millis(50)));
        } else {
            thread::yield_now();
        }
    }
}

/// What a reader saw.
pub(super) struct Acks {
    outcomes: Option<Outcomes>,
    reject_frames: u64,
    first_reject: Option<Reject>,
    /// Time of the last ACK, from the start.
    last_at: Duration,
    latency: Histogram<u64>,
}

/// What the reader needs to know of its connection.
struct AckReader<'a> {
    addr: SocketAddr,
    ack: AckWait,
    timeout: Duration,
    start: Instant,
    window: &'a Window,
    progress: &'a Progress,
    /// The ACK watermark seen so far.
    through: u64,
    out: Acks,
}

/// The reader: ACKs and REJECTs until every frame is acknowledged ([`AckWait::Wait`]) or
/// the server closes the connection after the writer's half close ([`AckWait::None`]).
fn read_replies(reader: &mut Reader, mut r: AckReader<'_>) -> io::Result<Acks> {
    loop {
        let fin = r.window.final_seq.load(Ordering::Acquire);
        if r.ack == AckWait::Wait && r.through >= fin {
            return Ok(r.out);
        }
        match reader.next_reply() {
            Ok(Some(Reply::Ack(a))) => r.take_ack(&a),
            Ok(Some(Reply::Reject(rej))) => {
                r.out.reject_frames += 1;
                r.out.first_reject.get_or_insert(rej);
            }
            Ok(Some(Reply::Hello(_) | Reply::Other(_))) => {}
            Ok(None) => return r.closed(),
            Err(e) if is_timeout(&e) => {
                if r.progress.aborted() {
                    return Err(io::Error::new(
                        io::ErrorKind::Interrupted,
                        "stopped: another connection failed",
                    ));
                }
                if r.timed_out(fin)? {
                    return Ok(r.out);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Err(e),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("reading from {}: {e}", r.addr),
                ));
            }
        }
    }
}

impl AckReader<'_> {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The send time of frame `seq` (ns from the start).
    fn sent_at(&self, seq: u64) -> u64 {
        let slots = self.window.sent_at.len();
        self.window.sent_at[(seq as usize) & (slots - 1)].load(Ordering::Acquire)
    }

    /// An ACK: the latency of every frame it newly covers, the watermark, the counts.
    fn take_ack(&mut self, a: &pinstream_core::wire::Ack) {
        let now = self.start.elapsed();
        let now_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        let last = self.window.last_seq.load(Ordering::Acquire);
        let upto = a.through_seq.min(last);
        if self.ack == AckWait::Wait {
            for seq in self.through + 1..=upto {
                let t = self.sent_at(seq);
                self.out
                    .latency
                    .saturating_record(now_ns.saturating_sub(t).max(1));
            }
        }
        if upto > self.through {
            self.progress
                .frames_acked
                .fetch_add(upto - self.through, Ordering::Relaxed);
            self.through = upto;
            self.window.acked.store(self.through, Ordering::Release);
        }
        self.out.outcomes = Some(Outcomes {
            stored: a.stored,
            duplicates: a.duplicates,
            dead_lettered: a.dead_lettered,
            rejected: a.rejected,
        });
        self.out.last_at = now;
    }

    /// The server closed the connection: the end of the run, or an error saying how far it
    /// got.
    fn closed(self) -> io::Result<Acks> {
        let fin = self.window.final_seq.load(Ordering::Acquire);
        if self.ack == AckWait::None || self.through >= fin {
            return Ok(self.out);
        }
        let (through, addr) = (self.through, self.addr);
        let last = self.window.last_seq.load(Ordering::Acquire);
        let hint = if through == 0 && fin != u64::MAX {
            // It took every frame and the half close without a word: it does not
            // acknowledge.
            "; if it runs with engine.ack = \"none\", use --ack none"
        } else {
            ""
        };
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "the server at {addr} closed the connection after acknowledging {through} of the {last} frames sent{}{hint}",
                first_reject_text(self.out.first_reject)
            ),
        ))
    }

    /// Nothing arrived for a poll interval: an error when the oldest unacknowledged frame
    /// waited longer than the timeout; `true` when (without acks) the writer finished long
    /// enough ago to stop waiting for the server to close.
    fn timed_out(&self, fin: u64) -> io::Result<bool> {
        let now_ns = self.now_ns();
        let timeout_ns = u64::try_from(self.timeout.as_nanos()).unwrap_or(u64::MAX);
        match self.ack {
            AckWait::Wait => {
                let last = self.window.last_seq.load(Ordering::Acquire);
                let seq = self.through + 1;
                if last > self.through && now_ns.saturating_sub(self.sent_at(seq)) > timeout_ns {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the server at {} did not acknowledge frame {seq} within {:?} ({} of {last} frames acknowledged); if it runs with engine.ack = \"none\", use --ack none{}",
                            self.addr,
                            self.timeout,
                            self.through,
                            first_reject_text(self.out.first_reject)
                        ),
                    ));
                }
                Ok(false)
            }
            AckWait::None => {
                // Done sending and the server has not closed: stop waiting for it.
                let fin_at = self.window.final_at.load(Ordering::Acquire);
                Ok(fin != u64::MAX && now_ns.saturating_sub(fin_at) > timeout_ns)
            }
        }
    }
}

pub(super) fn first_reject_text(r: Option<Reject>) -> String {
    match r {
        Some(r) => format!(
            "; its first REJECT: frame {}, {}",
            r.frame_seq,
            reason_text(r.reason)
        ),
        None => String::new(),
    }
}
