//! A blocking test client of the wire protocol: HELLO, EVENT / BATCH frames, and a reader of
//! the server's ACK, REJECT and HELLO frames.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pinstream_core::event::EventHeader;
use pinstream_core::wire::{Ack, BatchEncoder, Frame, FrameKind, Hello, Reject, encode_hello};

/// What the server sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// An ACK.
    Ack(Ack),
    /// A REJECT.
    Reject(Reject),
    /// A HELLO reply.
    Hello(Hello),
}

/// One connection.
pub struct Client {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Client {
    /// Connects (with a read timeout of 10 s).
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Self {
            stream,
            buf: vec![0; 1 << 16],
            start: 0,
            end: 0,
        })
    }

    /// Sends a HELLO and returns the server's reply.
    pub fn hello(&mut self) -> io::Result<Hello> {
        self.hello_with(&Hello::client(1, 1, 65_536))
    }

    /// Sends a version-2 HELLO for `producer_id` (0: let the server assign one) and returns
    /// the server's reply.
    pub fn hello_producer(&mut self, producer_id: u64) -> io::Result<Hello> {
        self.hello_with(&Hello::producer(65_536, producer_id))
    }

    /// Sends `hello` and returns the server's reply.
    pub fn hello_with(&mut self, hello: &Hello) -> io::Result<Hello> {
        let mut buf = [0u8; 64];
        let n = encode_hello(&mut buf, 0, hello).expect("encode HELLO");
        self.stream.write_all(&buf[..n])?;
        match self.next_reply()? {
            Reply::Hello(h) => Ok(h),
            other => Err(io::Error::other(format!(
                "expected a HELLO reply, got {other:?}"
            ))),
        }
    }

    /// Encodes one BATCH frame of `events` with payloads from `payload(i)`.
    pub fn batch(seq: u64, events: &[EventHeader], payload: impl Fn(usize) -> Vec<u8>) -> Vec<u8> {
        let payloads: Vec<Vec<u8>> = (0..events.len()).map(payload).collect();
        // Frame header and trailer, then per event its header, length and payload.
        let len = 64 + payloads.iter().map(|p| 64 + p.len()).sum::<usize>();
        let mut frame = vec![0u8; len];
        let mut enc = BatchEncoder::new(&mut frame, seq).expect("batch");
        for (h, p) in events.iter().zip(&payloads) {
            enc.push(h, p).expect("push");
        }
        let n = enc.finish().expect("finish");
        frame.truncate(n);
        frame
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next frame from the server.
    pub fn next_reply(&mut self) -> io::Result<Reply> {
        loop {
            let avail = &self.buf[self.start..self.end];
            if avail.len() >= 4 {
                let len = u32::from_le_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
                if avail.len() >= len {
                    let frame = Frame::new_checked(&avail[..len], len).map_err(|e| {
                        io::Error::other(format!("bad frame from the server: {e:?}"))
                    })?;
                    self.start += len;
                    return match frame.kind() {
                        FrameKind::Ack => Ok(Reply::Ack(frame.ack().expect("ACK body"))),
                        FrameKind::Reject => Ok(Reply::Reject(frame.reject().expect("REJECT"))),
                        FrameKind::Hello => Ok(Reply::Hello(frame.hello().expect("HELLO"))),
                        k => Err(io::Error::other(format!(
                            "unexpected {k:?} from the server"
                        ))),
                    };
                }
            }
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            } else if self.end == self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let n = self.stream.read(&mut self.buf[self.end..])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed",
                ));
            }
            self.end += n;
        }
    }

    /// Reads replies until an ACK covers `seq`; returns it and the REJECTs seen on the way.
    pub fn wait_ack(&mut self, seq: u64, timeout: Duration) -> io::Result<(Ack, Vec<Reject>)> {
        let until = Instant::now() + timeout;
        let mut rejects = Vec::new();
        loop {
            if Instant::now() > until {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no ACK for seq {seq}"),
                ));
            }
            match self.next_reply()? {
                Reply::Ack(a) if a.through_seq >= seq => return Ok((a, rejects)),
                Reply::Reject(r) => rejects.push(r),
                _ => {}
            }
        }
    }

    /// Whether the server closed the connection (reads until EOF or `timeout`).
    pub fn closed_by_server(&mut self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        let _ = self
            .stream
            .set_read_timeout(Some(Duration::from_millis(50)));
        let mut scratch = [0u8; 4096];
        while Instant::now() < until {
            match self.stream.read(&mut scratch) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut => {}
                Err(_) => return true,
            }
        }
        false
    }
}

/// Shrinks a socket's kernel receive buffer (`SO_RCVBUF`, which also turns off its
/// autotuning), so a client that stops reading makes the server's output back up quickly.
pub fn set_recv_buffer(stream: &TcpStream, bytes: i32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `bytes` is a live c_int and the length passed is its size; the fd is open for
    // the lifetime of `stream`.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const bytes).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
