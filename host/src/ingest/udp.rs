//! UDP ingest: `recvmmsg` batches into buffers allocated once; each datagram holds whole
//! frames (one EVENT or BATCH frame, or several back to back).
//!
//! What is thrown away is counted: a malformed frame is one rejected unit
//! (`udp_malformed`); the bytes after a length field that lost the framing
//! (`udp_unframed_bytes_dropped`); a datagram cut by the kernel to `udp.max_datagram`
//! (`udp_truncated`, its cut frame also lost framing); datagrams the kernel dropped with the
//! receive queue full (`udp_kernel_drops`, from `SO_RXQ_OVFL`).

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use pinstream_core::dispatch::{Dispatcher, Flow, FrameProgress};
use pinstream_core::wire::frames;

use super::SourceId;
use super::ratekeys::{Client, RateKeys, SHARED};
use crate::stats::HostCounters;
use crate::sys::net::{RecvBatch, enable_drop_count};

/// A bound UDP socket and its receive batch.
pub struct UdpIngest {
    socket: UdpSocket,
    batch: RecvBatch,
    max_datagram: usize,
    /// The kernel's cumulative drop count last seen (`SO_RXQ_OVFL`, wraps at 2^32).
    kernel_drops: u32,
}

impl UdpIngest {
    /// Receives up to `batch` datagrams of up to `max_datagram` bytes per system call, and
    /// asks the kernel to report the datagrams it drops on the socket. A kernel (or sandbox)
    /// that refuses `SO_RXQ_OVFL` is logged once (a `tracing` warning); UDP works, its kernel drops are
    /// then not counted.
    ///
    /// # Errors
    /// None today (the signature keeps room for set-up that can fail).
    pub fn new(socket: UdpSocket, batch: usize, max_datagram: usize) -> std::io::Result<Self> {
        if let Err(e) = enable_drop_count(socket.as_raw_fd()) {
            tracing::warn!(
                "the kernel refused SO_RXQ_OVFL on the UDP socket ({e}): \
                 datagrams it drops will not be counted in pinstream_udp_kernel_drops_total"
            );
        }
        Ok(Self {
            socket,
            batch: RecvBatch::new(batch, max_datagram),
            max_datagram,
            kernel_drops: 0,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }

    /// Receives what is waiting (one `recvmmsg` per batch, until the socket is empty or a
    /// few batches went by) and dispatches every frame; returns the datagrams taken.
    pub(crate) fn poll<const P: usize, const POOL: usize, const LANE: usize, const DL: usize>(
        &mut self,
        dispatcher: &mut Dispatcher<'_, P, POOL, LANE, DL>,
        keys: &mut RateKeys,
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
                // Rate-limited per sender address (the port ignored).
                let key = match self.batch.peer(i) {
                    Some(ip) => keys.touch(Client::address(ip), now, counters),
                    None => SHARED,
                };
                let mut it = frames(datagram, self.max_datagram);
                let mut left = datagram.len();
                while let Some(result) = it.next_detailed() {
                    match result {
                        Ok(frame) => {
                            counters.udp_frames_in.incr();
                            let mut progress = FrameProgress::new().with_rate_key(key);
                            dispatcher.dispatch_frame_flow(
                                &frame,
                                SourceId::UDP.get(),
                                now,
                                Flow::Lossy,
                                &mut progress,
                                |_, _, _| {},
                            );
                        }
                        Err(e) => {
                            counters.udp_malformed.incr();
                            dispatcher.reject_frame(e.error);
                            if e.seq.is_none() {
                                // The length field lost the framing: the iteration ends and
                                // every byte from this frame on is thrown away, whatever
                                // frames they hold.
                                counters.udp_unframed_bytes_dropped.add(left as u64);
                            }
                        }
                    }
                    left = it.remainder().len();
                }
            }
            if let Some(drops) = self.batch.kernel_drops() {
                counters
                    .udp_kernel_drops
                    .add(u64::from(drops.wrapping_sub(self.kernel_drops)));
                self.kernel_drops = drops;
            }
            total += n;
            if n == 0 {
                break;
            }
        }
        total
    }
}
