//! One TCP connection to a pinstream server: HELLO, sending frames, reading replies.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pinstream_core::reason::Reason;
use pinstream_core::wire::{
    self, Ack, Frame, FrameKind, HELLO_TOKEN_MAX, Hello, Reject, encode_hello, encode_hello_token,
};

use crate::tls::{TlsOptions, TlsReader, TlsWriter};

/// What the server sent, copied out of the receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// An acknowledgement: a watermark and cumulative counts.
    Ack(Ack),
    /// A refusal of a frame or of one event.
    Reject(Reject),
    /// The server's answer to a HELLO.
    Hello(Hello),
    /// A valid frame of a kind a client does not expect (a client ignores it).
    Other(FrameKind),
}

/// How to connect.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Bound on connecting, on each read and on each write (a server that stops answering
    /// is an error of kind `TimedOut` or `WouldBlock`, not a hang).
    pub timeout: Duration,
    /// The HELLO to say; `None` sends none (the connection speaks version 1).
    pub hello: Option<Hello>,
    /// The authentication token the HELLO carries (1 to 256 bytes; the HELLO must offer
    /// version 2), for a server with `tcp.auth = "token"`; `None`: none.
    pub token: Option<Vec<u8>>,
}

impl Default for ConnectOptions {
    /// A 10 s timeout and a version-2 HELLO asking the server for a producer id, with frames
    /// of up to 64 KiB.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            hello: Some(Hello::producer(65_536, 0)),
            token: None,
        }
    }
}

/// `"name (code N)"` for a reason code, or `"unknown reason code N"`.
pub fn reason_text(code: u16) -> String {
    match Reason::from_code(code) {
        Some(r) => format!("{} (code {code})", r.name()),
        None => format!("unknown reason code {code}"),
    }
}

/// Reads the server's frames from a stream, through a buffer as large as the largest frame
/// a server sends.
#[derive(Debug)]
pub struct Reader {
    stream: TcpStream,
    /// The TLS session's reading side, on a TLS connection.
    tls: Option<TlsReader>,
    addr: SocketAddr,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Reader {
    fn new(stream: TcpStream, tls: Option<TlsReader>, addr: SocketAddr) -> Self {
        Self {
            stream,
            tls,
            addr,
            buf: vec![0; 1 << 16],
            start: 0,
            end: 0,
        }
    }

    /// The next frame; `Ok(None)` when the server closed the connection. A read timeout
    /// comes back as an error of kind `WouldBlock` or `TimedOut` with nothing lost: call
    /// again.
    ///
    /// # Errors
    /// The socket's errors; `InvalidData` for a frame that does not decode (not a pinstream
    /// server, or a damaged stream).
    pub fn next_reply(&mut self) -> io::Result<Option<Reply>> {
        loop {
            let avail = &self.buf[self.start..self.end];
            if let Some(len) = wire::frame_len(avail) {
                if !(wire::MIN_FRAME_LEN..=self.buf.len()).contains(&len) {
                    return Err(self.invalid(format!(
                        "sent a frame of length {len}: not a pinstream server?"
                    )));
                }
                if avail.len() >= len {
                    let frame = Frame::new_checked(&avail[..len], len)
                        .map_err(|e| self.invalid(format!("sent a bad frame: {e:?}")))?;
                    let kind = frame.kind();
                    let reply = match kind {
                        FrameKind::Ack => frame.ack().map(Reply::Ack),
                        FrameKind::Reject => frame.reject().map(Reply::Reject),
                        FrameKind::Hello => frame.hello().map(Reply::Hello),
                        k => Some(Reply::Other(k)),
                    };
                    self.start += len;
                    return reply.map(Some).ok_or_else(|| {
                        self.invalid(format!("sent a {} frame with a bad body", kind.name()))
                    });
                }
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let read = match self.tls.as_mut() {
                Some(t) => t.read(&mut self.stream, &mut self.buf[self.end..]),
                None => self.stream.read(&mut self.buf[self.end..]),
            };
            match read {
                Ok(0) => return Ok(None),
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn invalid(&self, what: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the server at {} {what}", self.addr),
        )
    }

    /// The socket.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

/// The sending half of a connection.
#[derive(Debug)]
pub struct Writer {
    stream: TcpStream,
    /// The TLS session's writing side, on a TLS connection.
    tls: Option<TlsWriter>,
}

impl Writer {
    /// Sends whole frames (encoded by the caller, e.g. with
    /// [`BatchEncoder`](pinstream_core::wire::BatchEncoder)).
    ///
    /// # Errors
    /// The socket's errors.
    pub fn send(&mut self, frames: &[u8]) -> io::Result<()> {
        match self.tls.as_mut() {
            Some(t) => t.write_all(&mut self.stream, frames),
            None => self.stream.write_all(frames),
        }
    }

    /// Closes the sending side (the server sees the end of the input): on TLS, a
    /// `close_notify` first.
    ///
    /// # Errors
    /// The socket's errors.
    pub fn finish(&mut self) -> io::Result<()> {
        if let Some(t) = self.tls.as_mut() {
            t.close_notify(&mut self.stream)?;
        }
        self.stream.shutdown(Shutdown::Write)
    }

    /// The socket.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

/// A connection: [`Writer`] and [`Reader`] over one socket.
#[derive(Debug)]
pub struct Connection {
    writer: Writer,
    reader: Reader,
    addr: SocketAddr,
    timeout: Duration,
}

/// Whether an error is a read timeout (nothing lost; read again).
pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl Connection {
    /// Connects to `addr` and says the HELLO of `options` (if any); returns the connection
    /// and the server's HELLO reply (`None` without a HELLO).
    ///
    /// # Errors
    /// Connecting, the HELLO refused (`ConnectionRefused`, with the reason), no reply within
    /// the timeout, the server closing first (`UnexpectedEof`: too many connections?).
    pub fn connect(
        addr: SocketAddr,
        options: &ConnectOptions,
    ) -> io::Result<(Connection, Option<Hello>)> {
        Self::connect_with(addr, options, None)
    }

    /// [`connect`](Self::connect), over TLS when `tls` is given (a server with
    /// `tcp.tls_cert`): the handshake comes before the HELLO.
    ///
    /// # Errors
    /// As [`connect`](Self::connect); and the TLS handshake failing (an untrusted
    /// certificate, a client certificate the server refuses, not a TLS server).
    pub fn connect_with(
        addr: SocketAddr,
        options: &ConnectOptions,
        tls: Option<&TlsOptions>,
    ) -> io::Result<(Connection, Option<Hello>)> {
        let mut stream = TcpStream::connect_timeout(&addr, options.timeout).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot connect to {addr} over TCP: {e}; is a pinstream engine listening there?"
                ),
            )
        })?;
        let context =
            |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{addr}: {what}: {e}"));
        stream
            .set_nodelay(true)
            .map_err(|e| context("setting TCP_NODELAY", e))?;
        stream
            .set_read_timeout(Some(options.timeout))
            .map_err(|e| context("setting a read timeout", e))?;
        stream
            .set_write_timeout(Some(options.timeout))
            .map_err(|e| context("setting a write timeout", e))?;
        let session = match tls {
            Some(t) => Some(t.handshake(addr, &mut stream)?),
            None => None,
        };
        let reading = stream
            .try_clone()
            .map_err(|e| context("cloning the socket", e))?;
        let mut conn = Connection {
            writer: Writer {
                stream,
                tls: session.clone().map(TlsWriter::new),
            },
            reader: Reader::new(reading, session.map(TlsReader::new), addr),
            addr,
            timeout: options.timeout,
        };
        let reply = match &options.hello {
            Some(hello) => Some(conn.hello_with_token(hello, options.token.as_deref())?),
            None => None,
        };
        Ok((conn, reply))
    }

    /// Says `hello` and returns the server's reply (REJECTs and ACKs before it are errors:
    /// a HELLO comes first).
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub fn hello(&mut self, hello: &Hello) -> io::Result<Hello> {
        self.hello_with_token(hello, None)
    }

    /// [`hello`](Self::hello), the HELLO carrying `token` (if any) for a server that
    /// requires one; a server that does not know it refuses the HELLO (`unauthenticated`).
    ///
    /// # Errors
    /// As [`connect`](Self::connect); `InvalidInput` for a token the HELLO cannot carry.
    pub fn hello_with_token(&mut self, hello: &Hello, token: Option<&[u8]>) -> io::Result<Hello> {
        let addr = self.addr;
        let mut buf = [0u8; 64 + 2 + HELLO_TOKEN_MAX];
        let n = match token {
            Some(t) => encode_hello_token(&mut buf, 0, hello, t).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("the HELLO's token: {e}"),
                )
            })?,
            None => encode_hello(&mut buf, 0, hello)
                .map_err(|e| io::Error::other(format!("encoding the HELLO: {e:?}")))?,
        };
        self.send(&buf[..n])
            .map_err(|e| io::Error::new(e.kind(), format!("{addr}: sending the HELLO: {e}")))?;
        loop {
            match self.reader.next_reply() {
                Ok(Some(Reply::Hello(h))) => return Ok(h),
                Ok(Some(Reply::Reject(r))) => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        format!(
                            "the server at {addr} refused the HELLO: {}",
                            reason_text(r.reason)
                        ),
                    ));
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the server at {addr} closed the connection before answering the \
                             HELLO (too many connections?)"
                        ),
                    ));
                }
                Err(e) if is_timeout(&e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the server at {addr} did not answer the HELLO within {:?}",
                            self.timeout
                        ),
                    ));
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{addr}: reading the HELLO reply: {e}"),
                    ));
                }
            }
        }
    }

    /// Sends whole frames.
    ///
    /// # Errors
    /// The socket's errors.
    pub fn send(&mut self, frames: &[u8]) -> io::Result<()> {
        self.writer.send(frames)
    }

    /// The next frame from the server ([`Reader::next_reply`]).
    ///
    /// # Errors
    /// As [`Reader::next_reply`].
    pub fn next_reply(&mut self) -> io::Result<Option<Reply>> {
        self.reader.next_reply()
    }

    /// Reads replies until an ACK covers `seq`, for at most `timeout`; returns it and the
    /// REJECTs read on the way.
    ///
    /// # Errors
    /// `TimedOut` when no such ACK came in time, `UnexpectedEof` when the server closed the
    /// connection first, and the socket's errors.
    pub fn wait_ack(&mut self, seq: u64, timeout: Duration) -> io::Result<(Ack, Vec<Reject>)> {
        let until = Instant::now() + timeout;
        let mut rejects = Vec::new();
        loop {
            match self.reader.next_reply() {
                Ok(Some(Reply::Ack(a))) if a.through_seq >= seq => return Ok((a, rejects)),
                Ok(Some(Reply::Reject(r))) => rejects.push(r),
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the server at {} closed the connection before acknowledging seq \
                             {seq}",
                            self.addr
                        ),
                    ));
                }
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(e),
            }
            if Instant::now() > until {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no ACK for seq {seq} from {} within {timeout:?}", self.addr),
                ));
            }
        }
    }

    /// Whether the server closes the connection within `timeout` (replies read meanwhile
    /// are dropped).
    pub fn closed_by_server(&mut self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            match self.reader.next_reply() {
                Ok(None) => return true,
                Ok(Some(_)) => {}
                Err(e) if is_timeout(&e) => {}
                Err(_) => return true,
            }
        }
        false
    }

    /// Closes the sending side (the server sees the end of the input).
    ///
    /// # Errors
    /// The socket's errors.
    pub fn finish_sending(&mut self) -> io::Result<()> {
        self.writer.finish()
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The socket.
    pub fn stream(&self) -> &TcpStream {
        &self.writer.stream
    }

    /// The two halves, for sending from one thread and reading on another.
    pub fn split(self) -> (Writer, Reader) {
        (self.writer, self.reader)
    }
}
