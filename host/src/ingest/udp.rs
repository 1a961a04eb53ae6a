//! UDP ingest: `recvmmsg` batches into buffers allocated once; each datagram holds whole
//! frames (one EVENT or BATCH frame, or several back to back).

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use pinstream_core::dispatch::Dispatcher;
use pinstream_core::wire::frames;

use crate::stats::HostCounters;
use crate::sys::net::RecvBatch;

/// The source id of everything that arrives over UDP (it has no acknowledgements, so no
/// per-sender books).
pub const UDP_SOURCE: u32 = 0;

/// A bound UDP socket and its receive batch.
pub struct UdpIngest {
    socket: UdpSocket,
    batch: RecvBatch,
    max_datagram: usize,
}

impl UdpIngest {
    /// Receives up to `batch` datagrams of up to `max_datagram` bytes per system call.
    pub fn new(socket: UdpSocket, batch: usize, max_datagram: usize) -> Self {
        Self {
            socket,
            batch: RecvBatch::new(batch, max_datagram),
            max_datagram,
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }

    /// Receives what is waiting (one `recvmmsg` per batch, until the socket is empty or a
    /// few batches went by) and dispatches every frame; returns the datagrams taken.
    pub fn poll<const P: usize, const POOL: usize, const LANE: usize, const DL: usize>(
        &mut self,
        dispatcher: &mut Dispatcher<'_, P, POOL, LANE, DL>,
        counters: &HostCounters,
        now: u64,
    ) -> usize {
        let mut total = 0;
        for _ in 0..4 {
            let n = match self.batch.recv(self.socket.as_raw_fd()) {
                Ok(n) => n,
                Err(_) => {
                    counters.udp_recv_errors.incr();
                    return total;
                }
            };
            for i in 0..n {
                let (datagram, truncated) = self.batch.datagram(i);
                counters.udp_datagrams.incr();
                counters.udp_bytes_in.add(datagram.len() as u64);
                if truncated {
                    // Cut by the kernel to our buffer: its last frame is incomplete and
                    // comes out as an error below; counted here as well.
                    counters.udp_truncated.incr();
                }
                let mut it = frames(datagram, self.max_datagram);
                while let Some(result) = it.next_detailed() {
                    match result {
                        Ok(frame) => {
                            counters.udp_frames_in.incr();
                            dispatcher.dispatch_frame(&frame, UDP_SOURCE, now);
                        }
                        Err(e) => {
                            counters.udp_malformed.incr();
                            dispatcher.reject_frame(e.error);
                        }
                    }
                }
            }
            total += n;
            if n == 0 {
                break;
            }
        }
        total
    }
}
