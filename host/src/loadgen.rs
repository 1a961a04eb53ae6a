//! A load generator: BATCH frames over TCP as fast as the server's acknowledgements allow,
//! with the acknowledgement latency of every frame measured.
//!
//! One connection per [`LoadConfig`]: a writer thread encodes and sends frames while at most
//! `window` frames are unacknowledged; a reader thread takes the ACKs and records, per frame,
//! the time from its send to the first ACK whose watermark covers it (an hdrhistogram in
//! nanoseconds). Events cycle through `priorities`, topic ids `0..topics`, ids unique per
//! run (`id_base + n`).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pinstream_core::event::{EventHeader, Priority};
use pinstream_core::wire::{BatchEncoder, Frame, FrameKind, Hello, encode_hello};

/// What to send.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// The server's TCP address.
    pub addr: SocketAddr,
    /// Events in all.
    pub events: u64,
    /// Payload bytes per event.
    pub payload: usize,
    /// Events per BATCH frame.
    pub batch: u32,
    /// Frames sent and not yet acknowledged at most (keep it within the server's
    /// `tcp.inflight_frames`).
    pub window: usize,
    /// Priorities to cycle through.
    pub priorities: Vec<Priority>,
    /// Topic ids `0..topics` are used in turn.
    pub topics: u16,
    /// First event id.
    pub id_base: u64,
    /// Give up waiting for acknowledgements after this long without one.
    pub ack_timeout: Duration,
}

impl LoadConfig {
    /// 100-byte events, 64 per frame, 256 frames in flight, all `Medium` on topic 0.
    pub fn new(addr: SocketAddr, events: u64) -> Self {
        Self {
            addr,
            events,
            payload: 100,
            batch: 64,
            window: 256,
            priorities: vec![Priority::Medium],
            topics: 1,
            id_base: 1,
            ack_timeout: Duration::from_secs(10),
        }
    }
}

/// What happened.
#[derive(Debug)]
pub struct LoadReport {
    /// Events sent.
    pub sent: u64,
    /// Frames sent.
    pub frames: u64,
    /// From the first send to the last acknowledgement.
    pub elapsed: Duration,
    /// The last ACK's cumulative counts.
    pub stored: u64,
    /// Dead-lettered, per the last ACK.
    pub dead_lettered: u64,
    /// Rejected, per the last ACK.
    pub rejected: u64,
    /// Send-to-ACK latency per frame, nanoseconds.
    pub ack_latency: Histogram<u64>,
}

impl LoadReport {
    /// Events per second over `elapsed`.
    pub fn events_per_sec(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs one connection's load to the end (every frame acknowledged).
///
/// # Errors
/// Connecting, a socket error, a server that stops acknowledging for `ack_timeout`, or a
/// HELLO refused.
pub fn run(cfg: &LoadConfig) -> io::Result<LoadReport> {
    if cfg.batch == 0 || cfg.window == 0 || cfg.priorities.is_empty() || cfg.topics == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "batch, window, priorities and topics must not be empty or zero",
        ));
    }
    let stream = TcpStream::connect(cfg.addr)?;
    stream.set_nodelay(true)?;
    let mut reader = stream.try_clone()?;
    let mut writer = stream;
    // HELLO first; the reply comes to the reader.
    let mut buf = vec![0u8; 64];
    let n = encode_hello(&mut buf, 0, &Hello::client(1, 1, 1 << 20))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e:?}")))?;
    writer.write_all(&buf[..n])?;

    let frames = cfg.events.div_ceil(u64::from(cfg.batch));
    let slots = cfg.window.next_power_of_two() * 2;
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..slots).map(|_| AtomicU64::new(0)).collect());
    let acked = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    reader.set_read_timeout(Some(cfg.ack_timeout))?;

    let reader_thread = {
        let (sent_at, acked) = (Arc::clone(&sent_at), Arc::clone(&acked));
        thread::spawn(move || read_acks(&mut reader, frames, &sent_at, &acked, start))
    };

    let mut frame = vec![0u8; 28 + cfg.batch as usize * (32 + cfg.payload)];
    let payload = vec![0xA5u8; cfg.payload];
    let mut sent = 0u64;
    let mut pri = 0usize;
    writer.set_write_timeout(Some(cfg.ack_timeout))?;
    for seq in 1..=frames {
        while seq - acked.load(Ordering::Acquire) > cfg.window as u64 {
            if reader_thread.is_finished() {
                // The reader stopped early: its error says why; sending more is pointless.
                return match reader_thread.join() {
                    Ok(Ok(_)) => Err(io::Error::other("the ACK reader ended early")),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(io::Error::other("the ACK reader panicked")),
                };
            }
            std::hint::spin_loop();
            thread::yield_now();
        }
        let mut enc = BatchEncoder::new(&mut frame, seq)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e:?}")))?;
        let n = u64::from(cfg.batch).min(cfg.events - sent);
        for _ in 0..n {
            let id = cfg.id_base + sent;
            let h = EventHeader::new(
                id,
                (sent % u64::from(cfg.topics)) as u16,
                cfg.priorities[pri],
                start.elapsed().as_nanos() as u64,
            )
            .with_value(id as i64);
            pri = (pri + 1) % cfg.priorities.len();
            enc.push(&h, &payload)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e:?}")))?;
            sent += 1;
        }
        let len = enc
            .finish()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e:?}")))?;
        sent_at[(seq as usize) % slots].store(start.elapsed().as_nanos() as u64, Ordering::Release);
        if let Err(e) = writer.write_all(&frame[..len]) {
            let _ = writer.shutdown(std::net::Shutdown::Both);
            return match reader_thread.join() {
                Ok(Err(reader)) => Err(reader),
                _ => Err(e),
            };
        }
    }
    let acks = reader_thread
        .join()
        .map_err(|_| io::Error::other("the ACK reader panicked"))??;
    Ok(LoadReport {
        sent,
        frames,
        elapsed: acks.last_at,
        stored: acks.stored,
        dead_lettered: acks.dead,
        rejected: acks.rejected,
        ack_latency: acks.latency,
    })
}

struct Acks {
    stored: u64,
    dead: u64,
    rejected: u64,
    last_at: Duration,
    latency: Histogram<u64>,
}

fn read_acks(
    stream: &mut TcpStream,
    frames: u64,
    sent_at: &[AtomicU64],
    acked: &AtomicU64,
    start: Instant,
) -> io::Result<Acks> {
    let mut latency = Histogram::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| io::Error::other(format!("histogram: {e}")))?;
    let mut out = Acks {
        stored: 0,
        dead: 0,
        rejected: 0,
        last_at: Duration::ZERO,
        latency: Histogram::new(3).map_err(|e| io::Error::other(format!("{e}")))?,
    };
    let mut buf = vec![0u8; 1 << 16];
    let (mut start_at, mut end) = (0usize, 0usize);
    let mut through = 0u64;
    while through < frames {
        if end == buf.len() {
            buf.copy_within(start_at..end, 0);
            end -= start_at;
            start_at = 0;
        }
        let n = match stream.read(&mut buf[end..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the server closed the connection after acknowledging {through} of {frames} frames"
                    ),
                ));
            }
            Ok(n) => n,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no acknowledgement for the ack timeout; {through} of {frames} frames acknowledged"
                    ),
                ));
            }
            Err(e) => return Err(e),
        };
        end += n;
        loop {
            let avail = &buf[start_at..end];
            if avail.len() < 4 {
                break;
            }
            let len = u32::from_le_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
            if len > buf.len() || len < 20 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the server sent a frame of length {len}"),
                ));
            }
            if avail.len() < len {
                break;
            }
            let frame = Frame::new_checked(&avail[..len], len)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e:?}")))?;
            start_at += len;
            match frame.kind() {
                FrameKind::Ack => {
                    let Some(ack) = frame.ack() else { continue };
                    let now = start.elapsed().as_nanos() as u64;
                    for seq in through + 1..=ack.through_seq.min(frames) {
                        let t = sent_at[(seq as usize) % sent_at.len()].load(Ordering::Acquire);
                        latency.saturating_record(now.saturating_sub(t).max(1));
                    }
                    through = through.max(ack.through_seq);
                    acked.store(through, Ordering::Release);
                    out.stored = ack.stored;
                    out.dead = ack.dead_lettered;
                    out.rejected = ack.rejected;
                    out.last_at = start.elapsed();
                }
                FrameKind::Hello if frame.hello().is_none() => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "bad HELLO reply",
                    ));
                }
                // REJECTs are counted in the ACKs.
                _ => {}
            }
        }
    }
    out.latency = latency;
    Ok(out)
}
