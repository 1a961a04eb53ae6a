//! The ingest thread's end of a gateway's rings: the HTTP gateway (issue 17) hands its
//! events over as binary-protocol BATCH frames written into a bounded lock-free byte ring,
//! and reads the ACK and REJECT frames the ingest thread writes into a second one.
//!
//! To the ingest thread a gateway is one more connection in a reserved slot (after the
//! `tcp.max_connections` TCP slots): the same decoding in place, credit window, dispatch,
//! back-pressure (a frame that finds no room keeps its place and the ring is not read, so
//! it fills and the gateway answers 503) and acknowledgement books as a TCP client's. Only
//! its transport differs: [`Conn::fill_from`](super::conn::Conn) and `flush_to` copy between
//! the rings and the connection's buffers (no system call, no allocation). Two more
//! differences: it is acknowledged after every frame (one ACK per frame, so the gateway can
//! tell each request's counts apart), and housekeeping never closes it (it has no idle,
//! stall or frame timeout: its peer is in the process).

use pinstream_core::ring::{Consumer, Producer, Spsc};

/// Bytes of frames a gateway may have written and the ingest thread not read yet.
pub const GATEWAY_FRAMES: usize = 1 << 20;
/// Bytes of ACK and REJECT frames the ingest thread may have written and the gateway not
/// read yet.
pub const GATEWAY_REPLIES: usize = 1 << 18;

/// The two rings of one gateway thread (owned by the engine's supervisor, which splits them).
pub struct GatewayRings {
    /// Gateway → ingest: whole BATCH frames.
    pub frames: Spsc<u8, GATEWAY_FRAMES>,
    /// Ingest → gateway: ACK and REJECT frames.
    pub replies: Spsc<u8, GATEWAY_REPLIES>,
}

impl GatewayRings {
    /// Empty rings.
    pub fn new() -> Self {
        Self {
            frames: Spsc::new(),
            replies: Spsc::new(),
        }
    }

    /// The ingest thread's end and the gateway's end.
    pub fn split(&mut self) -> (GatewayEnd<'_>, GatewayLink<'_>) {
        let (frames_tx, frames_rx) = self.frames.split();
        let (replies_tx, replies_rx) = self.replies.split();
        (
            GatewayEnd {
                frames: frames_rx,
                replies: replies_tx,
            },
            GatewayLink {
                frames: frames_tx,
                replies: replies_rx,
            },
        )
    }
}

impl Default for GatewayRings {
    fn default() -> Self {
        Self::new()
    }
}

/// The ingest thread's end: frames in, replies out.
pub struct GatewayEnd<'a> {
    pub(crate) frames: Consumer<'a, u8, GATEWAY_FRAMES>,
    pub(crate) replies: Producer<'a, u8, GATEWAY_REPLIES>,
}

/// The gateway's end: frames out, replies in.
pub struct GatewayLink<'a> {
    /// Whole frames are pushed only when they fit (`slots()`), so the ingest thread never
    /// waits on half a frame.
    pub frames: Producer<'a, u8, GATEWAY_FRAMES>,
    /// ACK and REJECT frames, in the order the ingest thread wrote them.
    pub replies: Consumer<'a, u8, GATEWAY_REPLIES>,
}
