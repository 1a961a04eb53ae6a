//! Connections handed over by the TLS terminator ([`crate::tlsport`]): with `tcp.tls_cert`
//! set, the ingest thread has no TCP listener. The terminator thread accepts, does the TLS
//! handshake, and hands the ingest thread one end of a `socketpair(AF_UNIX, SOCK_STREAM)`
//! carrying the plaintext, with the client's real address, through a bounded lock-free ring.
//!
//! The ingest thread admits such a connection exactly as an accepted TCP one (the same
//! per-address limit, slot, rate key by address, buffers and books): no TLS work and no
//! allocation happen on it. What it does with a stream socket (`read`, `write` with
//! `MSG_NOSIGNAL`, `shutdown`, `SO_SNDBUF`, epoll) means the same on a Unix stream socket;
//! `TCP_NODELAY` does not apply and is not set.

use std::net::SocketAddr;
use std::os::unix::net::UnixStream;

use pinstream_core::ring::{Consumer, Producer, Spsc};

/// Connections the terminator may have handed over and the ingest thread not taken yet;
/// the terminator closes (and counts) one that finds the ring full.
pub const TLS_HANDOFF: usize = 256;

/// One handed-over connection.
#[derive(Debug)]
pub struct Handoff {
    /// The ingest thread's end of the socket pair (non-blocking).
    pub stream: UnixStream,
    /// The TLS client's address (per-address limits and rate keys).
    pub peer: SocketAddr,
}

/// The ring between the terminator and the ingest thread (owned by the engine's supervisor).
pub type HandoffRing = Spsc<Handoff, TLS_HANDOFF>;
/// The terminator's end.
pub type HandoffTx<'a> = Producer<'a, Handoff, TLS_HANDOFF>;
/// The ingest thread's end.
pub type HandoffRx<'a> = Consumer<'a, Handoff, TLS_HANDOFF>;
