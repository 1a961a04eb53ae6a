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
    let (conn, hello) = Connection::connect(
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
        },
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
    let cfg = &plan.cfg;
    let slots = cfg.window.next_power_of_two().saturating_mul(2);
    let window = Arc::new(Window {
        sent_at: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        last_seq: AtomicU64::new(0),
        final_seq: AtomicU64::new(u64::MAX),
        final_at: AtomicU64::new(0),
        acked: AtomicU64::new(0),
    });
    match socket {
        Socket::Udp(socket) => {
            let sent = send_frames(plan, progress, &window, |frame| {
                socket.send(frame).map(drop).map_err(|e| {
                    let hint = if e.kind() == io::ErrorKind::ConnectionRefused {
                        "; nothing listens on that UDP port"
                    } else {
                        ""
                    };
                    io::Error::new(
                        e.kind(),
                        format!("sending to {} over UDP: {e}{hint}", cfg.addr),
                    )
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
        Socket::Tcp(conn) => {
            let (mut writer, mut reader) = conn.split();
            let closer = writer.stream().try_clone()?;
            reader.stream().set_read_timeout(Some(READ_POLL))?;
            let reader_thread = {
                let (window, progress) = (Arc::clone(&window), Arc::clone(progress));
                let (ack, timeout, start) = (cfg.ack, cfg.ack_timeout, plan.start);
                let (index, addr) = (plan.index, cfg.addr);
                thread::Builder::new()
                    .name(format!("loadgen-acks-{}", plan.index))
                    .spawn(move || {
                        let result = read_replies(
                            &mut reader,
                            addr,
                            ack,
                            timeout,
                            start,
                            &window,
                            &progress,
                        );
                        if result.is_err() {
                            // Unblock the writer (it may be waiting for the window or the
                            // socket) and stop the other connections.
                            progress.abort(index);
                            let _ = reader.stream().shutdown(Shutdown::Both);
                        }
                        result
                    })?
            };
            let addr = cfg.addr;
            let sent = send_frames(plan, progress, &window, |frame| {
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
                // Half close: the server acknowledges what it got, then closes.
                let _ = closer.shutdown(Shutdown::Write);
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
                // Otherwise the reader's error explains the writer's (a closed connection,
                // an ACK timeout, a failure elsewhere).
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
    }
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
    let cycle = cfg.priorities.len() as u64;
    let topics = u64::from(cfg.topics);
    let wait = cfg.transport == Transport::Tcp && cfg.ack == AckWait::Wait;
    let mut out = Sent {
        events: 0,
        frames: 0,
        bytes: 0,
        end: Duration::ZERO,
    };
    let mut seq = 0u64;
    while out.events < plan.events {
        if let Some(limit) = cfg.duration {
            let t = if plan.rate > 0 {
                plan.due(out.events)
            } else {
                plan.start.elapsed()
            };
            if t >= limit {
                break;
            }
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
            let mut spins = 0u32;
            while seq - window.acked.load(Ordering::Acquire) > cfg.window as u64 {
                if progress.aborted() {
                    return Err(stopped());
                }
                // Yield a little, then sleep: on a small machine a spinning load generator
                // takes the CPU the engine needs.
                spins += 1;
                if spins < 64 {
                    thread::yield_now();
                } else {
                    thread::sleep(Duration::from_micros(20));
                }
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
        let header = |k: u64| {
            let id = plan.id_first.wrapping_add(k.wrapping_mul(plan.id_stride));
            // `k % cycle` indexes `priorities`; the topic moves once per cycle, so every
            // priority meets every topic.
            let priority = cfg.priorities[(k % cycle) as usize];
            let topic = ((k / cycle) % topics) as u16;
            EventHeader::new(id, topic, priority, ts).with_value(id as i64)
        };
        let encode_error = |e: wire::EncodeError| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("encoding a frame: {e:?}"),
            )
        };
        let len = if cfg.batch == 1 {
            encode_event(&mut frame, seq, &header(out.events), &payload).map_err(encode_error)?
        } else {
            let mut enc = BatchEncoder::new(&mut frame, seq).map_err(encode_error)?;
            for k in out.events..out.events + n {
                enc.push(&header(k), &payload).map_err(encode_error)?;
            }
            enc.finish().map_err(encode_error)?
        };
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

/// The reader: ACKs and REJECTs until every frame is acknowledged ([`AckWait::Wait`]) or
/// the server closes the connection after the writer's half close ([`AckWait::None`]).
fn read_replies(
    reader: &mut Reader,
    addr: SocketAddr,
    ack: AckWait,
    timeout: Duration,
    start: Instant,
    window: &Window,
    progress: &Progress,
) -> io::Result<Acks> {
    let mut out = Acks {
        outcomes: None,
        reject_frames: 0,
        first_reject: None,
        last_at: Duration::ZERO,
        latency: Histogram::new_with_bounds(1, 60_000_000_000, 3)
            .map_err(|e| io::Error::other(format!("histogram: {e}")))?,
    };
    let timeout_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    let slots = window.sent_at.len();
    let mut through = 0u64;
    loop {
        let fin = window.final_seq.load(Ordering::Acquire);
        if ack == AckWait::Wait && through >= fin {
            return Ok(out);
        }
        match reader.next_reply() {
            Ok(Some(Reply::Ack(a))) => {
                let now = start.elapsed();
                let now_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
                let last = window.last_seq.load(Ordering::Acquire);
                let upto = a.through_seq.min(last);
                if ack == AckWait::Wait {
                    for seq in through + 1..=upto {
                        let t =
                            window.sent_at[(seq as usize) & (slots - 1)].load(Ordering::Acquire);
                        out.latency
                            .saturating_record(now_ns.saturating_sub(t).max(1));
                    }
                }
                if upto > through {
                    progress
                        .frames_acked
                        .fetch_add(upto - through, Ordering::Relaxed);
                    through = upto;
                    window.acked.store(through, Ordering::Release);
                }
                out.outcomes = Some(Outcomes {
                    stored: a.stored,
                    duplicates: a.duplicates,
                    dead_lettered: a.dead_lettered,
                    rejected: a.rejected,
                });
                out.last_at = now;
            }
            Ok(Some(Reply::Reject(r))) => {
                out.reject_frames += 1;
                out.first_reject.get_or_insert(r);
            }
            Ok(Some(Reply::Hello(_) | Reply::Other(_))) => {}
            Ok(None) => {
                if ack == AckWait::None {
                    return Ok(out);
                }
                let fin = window.final_seq.load(Ordering::Acquire);
                if through >= fin {
                    return Ok(out);
                }
                let last = window.last_seq.load(Ordering::Acquire);
                let hint = if through == 0 && fin != u64::MAX {
                    // It took every frame and the half close without a word: it does not
                    // acknowledge.
                    "; if it runs with engine.ack = \"none\", use --ack none"
                } else {
                    ""
                };
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the server at {addr} closed the connection after acknowledging {through} of the {last} frames sent{}{hint}",
                        first_reject_text(out.first_reject)
                    ),
                ));
            }
            Err(e) if is_timeout(&e) => {
                if progress.aborted() {
                    return Err(io::Error::new(
                        io::ErrorKind::Interrupted,
                        "stopped: another connection failed",
                    ));
                }
                let now_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                match ack {
                    AckWait::Wait => {
                        let last = window.last_seq.load(Ordering::Acquire);
                        if last > through {
                            let seq = through + 1;
                            let t = window.sent_at[(seq as usize) & (slots - 1)]
                                .load(Ordering::Acquire);
                            if now_ns.saturating_sub(t) > timeout_ns {
                                return Err(io::Error::new(
                                    io::ErrorKind::TimedOut,
                                    format!(
                                        "the server at {addr} did not acknowledge frame {seq} within {timeout:?} ({through} of {last} frames acknowledged); if it runs with engine.ack = \"none\", use --ack none{}",
                                        first_reject_text(out.first_reject)
                                    ),
                                ));
                            }
                        }
                    }
                    AckWait::None => {
                        // Done sending and the server has not closed: stop waiting for it.
                        let fin_at = window.final_at.load(Ordering::Acquire);
                        if fin != u64::MAX && now_ns.saturating_sub(fin_at) > timeout_ns {
                            return Ok(out);
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Err(e),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("reading from {addr}: {e}"),
                ));
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
