//! The tests' client: [`pinstream_client::Connection`] with the conveniences the tests use
//! (a HELLO of any shape, raw bytes, BATCH frames from headers, a reply that is an error at
//! the end of the stream).

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use pinstream_client::{ConnectOptions, Connection};
use pinstream_core::event::EventHeader;
use pinstream_core::wire::{Ack, BatchEncoder, Hello, Reject};

pub use pinstream_client::Reply;

/// One connection (no HELLO until [`hello`](Self::hello) or a variant is called).
pub struct Client {
    /// The socket (a clone of the connection's).
    pub stream: TcpStream,
    conn: Connection,
}

impl Client {
    /// Connects (reads and writes time out after 10 s).
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        let (conn, _) = Connection::connect(
            addr,
            &ConnectOptions {
                timeout: Duration::from_secs(10),
                hello: None,
                token: None,
            },
        )?;
        Ok(Self {
            stream: conn.stream().try_clone()?,
            conn,
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

    /// Sends `hello` and returns the server's reply (an error when it refuses).
    pub fn hello_with(&mut self, hello: &Hello) -> io::Result<Hello> {
        self.conn.hello(hello)
    }

    /// Sends a version-2 HELLO carrying `token` (for `tcp.auth = "token"`) and returns the
    /// server's reply (an error when it refuses).
    pub fn hello_token(&mut self, token: &[u8]) -> io::Result<Hello> {
        self.conn
            .hello_with_token(&Hello::producer(65_536, 0), Some(token))
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
        self.conn.send(bytes)
    }

    /// The next frame from the server; the end of the stream is an `UnexpectedEof` error.
    pub fn next_reply(&mut self) -> io::Result<Reply> {
        self.conn
            .next_reply()?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "server closed"))
    }

    /// Reads replies until an ACK covers `seq`; returns it and the REJECTs seen on the way.
    pub fn wait_ack(&mut self, seq: u64, timeout: Duration) -> io::Result<(Ack, Vec<Reject>)> {
        self.conn.wait_ack(seq, timeout)
    }

    /// Whether the server closed the connection (reads until EOF or `timeout`).
    pub fn closed_by_server(&mut self, timeout: Duration) -> bool {
        let _ = self
            .stream
            .set_read_timeout(Some(Duration::from_millis(50)));
        self.conn.closed_by_server(timeout)
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
