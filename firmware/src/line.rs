//! Frames out of a serial line: the core's [`StreamDecoder`], plus the resynchronisation a
//! line needs and a TCP connection does not.
//!
//! A TCP server closes a connection whose framing is lost (a length field out of bounds). A
//! serial line cannot be closed: noise, a sender restarted mid-frame or a baud mismatch must
//! not silence the device for good. So the bytes go to the decoder one at a time (it
//! delivers the same frames whatever the split), and when it reports the framing lost,
//! [`Line`] *hunts*: it resets the decoder and drops bytes one by one until the next 8 look
//! like a frame header (a length in `20..=MAX_FRAME`, version 1, kind HELLO, EVENT or BATCH,
//! flags 0), then feeds the decoder from there. The bytes dropped are counted
//! ([`Line::discarded`]); the caller answers the lost framing with one REJECT (seq 0).
//!
//! Limit: noise whose first four bytes read as a sane length is taken for a frame; it fails
//! its CRC (one REJECT `bad_crc`), and the bytes it swallowed, possibly the start of the next
//! real frame, go with it. That frame then gets no answer at all; the sender resends what
//! no ACK or REJECT answered.

use pinstream_core::wire::{
    DecodeError, Frame, FrameError, FrameKind, MIN_FRAME_LEN, StreamDecoder, VERSION, field,
};

/// Bytes of a header the hunt checks before trusting a position: length, version, kind,
/// flags.
const PROBE: usize = 8;

/// The decoder of one serial line, with resynchronisation.
pub struct Line<const CAP: usize> {
    decoder: StreamDecoder<CAP>,
    /// The last four bytes given to the decoder (the newest in the low byte): when a length
    /// field loses the framing, these are that field.
    recent: u32,
    /// Hunting: `probe[..held]` are the bytes after the lost framing not yet dropped or
    /// handed to the decoder. Invariant: `held < PROBE` between calls.
    hunting: bool,
    probe: [u8; PROBE],
    held: usize,
    /// Bytes dropped while hunting, the bad length field included.
    discarded: u64,
    /// Times the framing was lost.
    resyncs: u32,
}

impl<const CAP: usize> Line<CAP> {
    /// A line in sync, taking frames of up to `CAP` bytes.
    pub const fn new() -> Self {
        Self {
            decoder: StreamDecoder::new(),
            recent: 0,
            hunting: false,
            probe: [0; PROBE],
            held: 0,
            discarded: 0,
            resyncs: 0,
        }
    }

    /// Takes the next byte of the line; calls `on_frame` for the frame it completes, or the
    /// error it reveals (a length error, once per loss of framing, with `seq: None`), with
    /// [`discarded`](Self::discarded) and [`resyncs`](Self::resyncs) as they are then.
    pub fn push(
        &mut self,
        byte: u8,
        on_frame: &mut impl FnMut(Result<Frame<'_>, FrameError>, u64, u32),
    ) {
        if self.hunting {
            self.hunt(byte, on_frame);
        } else {
            self.feed(byte, on_frame);
        }
    }

    fn feed(
        &mut self,
        byte: u8,
        on_frame: &mut impl FnMut(Result<Frame<'_>, FrameError>, u64, u32),
    ) {
        self.recent = (self.recent << 8) | u32::from(byte);
        let (discarded, resyncs) = (self.discarded, self.resyncs);
        self.decoder
            .feed_detailed(&[byte], |result| on_frame(result, discarded, resyncs));
        if self.decoder.is_poisoned() {
            // Fed one byte at a time, the decoder loses the framing exactly on the fourth
            // byte of a bad length field: `recent`. Its first byte is dropped; the other
            // three may begin the next frame, so the hunt starts with them.
            self.decoder.reset();
            self.hunting = true;
            self.resyncs = self.resyncs.wrapping_add(1);
            self.discarded += 1;
            let [_, b1, b2, b3] = self.recent.to_be_bytes();
            self.probe[..3].copy_from_slice(&[b1, b2, b3]);
            self.held = 3;
            self.settle(on_frame);
        }
    }

    fn hunt(
        &mut self,
        byte: u8,
        on_frame: &mut impl FnMut(Result<Frame<'_>, FrameError>, u64, u32),
    ) {
        self.probe[self.held] = byte;
        self.held += 1;
        self.settle(on_frame);
    }

    /// Drops bytes from the front of the probe until what is left could start a frame; hands
    /// the probe to the decoder once it holds a whole plausible header.
    fn settle(&mut self, on_frame: &mut impl FnMut(Result<Frame<'_>, FrameError>, u64, u32)) {
        while self.held > 0 && !plausible::<CAP>(&self.probe[..self.held]) {
            self.probe.copy_within(1..self.held, 0);
            self.held -= 1;
            self.discarded += 1;
        }
        if self.held == PROBE {
            self.hunting = false;
            self.held = 0;
            let probe = self.probe;
            for &b in &probe {
                self.feed(b, on_frame);
            }
        }
    }

    /// Starts a new stream (a new connection): drops a partial frame and the hunt; the
    /// counters go on.
    pub fn reset(&mut self) {
        self.decoder.reset();
        self.hunting = false;
        self.held = 0;
        self.recent = 0;
    }

    /// Bytes dropped to find the framing again.
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// Times the framing was lost.
    pub fn resyncs(&self) -> u32 {
        self.resyncs
    }

    /// Whether the line is looking for the next frame.
    pub fn is_hunting(&self) -> bool {
        self.hunting
    }

    /// Valid frames and frames that failed validation (with a sane length), so far.
    pub fn frames(&self) -> (u64, u64) {
        (self.decoder.frames_ok(), self.decoder.frames_invalid())
    }
}

impl<const CAP: usize> Default for Line<CAP> {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether `head` (1 to [`PROBE`] bytes) can be the start of a frame this device takes.
fn plausible<const CAP: usize>(head: &[u8]) -> bool {
    // The length field's bytes seen so far (little-endian): the rest can only add to it.
    let len_so_far = head
        .iter()
        .take(field::header::LEN.end)
        .rev()
        .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    if len_so_far > CAP {
        return false;
    }
    if head.len() >= field::header::LEN.end && len_so_far < MIN_FRAME_LEN {
        return false;
    }
    if head
        .get(field::header::VERSION)
        .is_some_and(|&v| v != VERSION)
    {
        return false;
    }
    let taken = [FrameKind::Hello, FrameKind::Event, FrameKind::Batch];
    if head
        .get(field::header::KIND)
        .is_some_and(|&k| !taken.iter().any(|t| t.as_u8() == k))
    {
        return false;
    }
    head.iter()
        .skip(field::header::FLAGS.start)
        .take(field::header::FLAGS.len())
        .all(|&b| b == 0)
}

/// Whether `error` means the framing was lost (the decoder's length errors).
pub fn loses_framing(error: DecodeError) -> bool {
    matches!(error, DecodeError::BadLength | DecodeError::TooLong)
}
