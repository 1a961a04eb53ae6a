//! The streaming decoder: frames out of a byte stream that arrives in pieces of any size.

use super::{DecodeError, Frame, FrameError, MIN_FRAME_LEN, frame_len, frame_seq};

/// Decodes a byte stream (a TCP connection) into frames, whatever the split of the input.
///
/// [`feed`](Self::feed) takes the bytes as they arrive and calls back once per complete frame
/// or per error, in stream order. Frames lying whole in the input are handed out as views of
/// it (zero-copy); only a frame cut by the end of the input is copied into the decoder's own
/// `CAP`-byte buffer and completed from the next input. `CAP` is also the largest frame
/// accepted; [`with_max_frame_len`](Self::with_max_frame_len) sets a lower limit at run time.
///
/// ## Errors
/// - A frame whose length field is sane (`20..=max_frame_len`) but which fails validation
///   (CRC, version, a field) is reported and skipped: its length still says where the next
///   frame starts, so decoding goes on.
/// - A length field below 20 ([`BadLength`](DecodeError::BadLength)) or above the maximum
///   ([`TooLong`](DecodeError::TooLong)) means the framing is lost. It is reported once; the
///   decoder is then *poisoned*: everything after it, in this input and later ones, is
///   discarded and counted in [`discarded_bytes`](Self::discarded_bytes), and
///   [`status`](Self::status) says [`StreamPoisoned`](DecodeError::StreamPoisoned), until
///   [`reset`](Self::reset). The receiver should answer with a REJECT and close the
///   connection.
///
/// For UDP, do not use a stream decoder: a datagram holds whole frames, decode each one with
/// [`frames`](super::frames) (stateless, a truncated tail is one `TooShort` error).
///
/// ```
/// use pinstream_core::event::{EventHeader, Priority};
/// use pinstream_core::wire::{DecodeError, StreamDecoder, encode_event};
///
/// let mut stream = [0u8; 200];
/// let h = EventHeader::new(7, 1, Priority::Critical, 0);
/// let n = encode_event(&mut stream, 1, &h, b"abc").unwrap();
/// stream[n..n + 4].copy_from_slice(&5u32.to_le_bytes()); // a length field below 20
///
/// let mut decoder: StreamDecoder<256> = StreamDecoder::new();
/// let mut got = Vec::new();
/// for byte in stream.chunks(1) {
///     decoder.feed(byte, |r| got.push(r.map(|f| f.seq())));
/// }
/// assert_eq!(got, [Ok(1), Err(DecodeError::BadLength)]);
/// assert!(decoder.is_poisoned());
/// assert_eq!(decoder.status(), Err(DecodeError::StreamPoisoned));
/// assert_eq!(decoder.discarded_bytes(), (200 - n) as u64);
/// decoder.reset();
/// assert!(!decoder.is_poisoned());
/// ```
#[derive(Clone, Debug)]
pub struct StreamDecoder<const CAP: usize> {
    /// A frame cut by the end of the last input: `buf[..filled]`.
    buf: [u8; CAP],
    /// Bytes held in `buf`. Invariant: `filled < 4`, or `buf[..4]` is a sane length field
    /// `L` (`MIN_FRAME_LEN <= L <= max_frame_len`) and `filled < L`; 0 while poisoned.
    filled: usize,
    /// The largest frame accepted: `MIN_FRAME_LEN <= max_frame_len <= CAP`.
    max_frame_len: usize,
    /// The length error that lost the framing, while poisoned.
    poison: Option<DecodeError>,
    /// Valid frames handed out.
    frames_ok: u64,
    /// Frames with a sane length that failed validation.
    frames_invalid: u64,
    /// Bytes dropped since framing was lost (the bad length field included).
    discarded_bytes: u64,
}

impl<const CAP: usize> StreamDecoder<CAP> {
    /// A decoder accepting frames of up to `CAP` bytes.
    ///
    /// `CAP` below 20 (the smallest frame) does not compile.
    pub const fn new() -> Self {
        const {
            assert!(
                CAP >= MIN_FRAME_LEN,
                "CAP must hold the smallest frame (20 bytes)"
            )
        };
        Self {
            buf: [0; CAP],
            filled: 0,
            max_frame_len: CAP,
            poison: None,
            frames_ok: 0,
            frames_invalid: 0,
            discarded_bytes: 0,
        }
    }

    /// A decoder accepting frames of up to `max_frame_len` bytes, clamped to
    /// `20..=CAP` (read the result back with [`max_frame_len`](Self::max_frame_len)).
    pub const fn with_max_frame_len(max_frame_len: usize) -> Self {
        let mut d = Self::new();
        d.max_frame_len = if max_frame_len > CAP {
            CAP
        } else if max_frame_len < MIN_FRAME_LEN {
            MIN_FRAME_LEN
        } else {
            max_frame_len
        };
        d
    }

    /// The largest frame accepted.
    pub const fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Feeds the next bytes of the stream. Calls `on_frame` once for each frame completed by
    /// them (a view into `input` or into the decoder's buffer) and once for each error.
    ///
    /// While the decoder is poisoned, `input` is only counted as discarded.
    #[inline]
    pub fn feed(&mut self, input: &[u8], mut on_frame: impl FnMut(Result<Frame<'_>, DecodeError>)) {
        self.feed_detailed(input, |r| on_frame(r.map_err(|e| e.error)));
    }

    /// [`feed`](Self::feed), with the `seq` of a frame that failed validation, for the REJECT
    /// that answers it ([`FrameError::to_reject`]). A length error that loses the framing
    /// carries no `seq` (the bytes after a bad length field are not trusted), so the result
    /// never depends on how the input was split.
    pub fn feed_detailed(
        &mut self,
        mut input: &[u8],
        mut on_frame: impl FnMut(Result<Frame<'_>, FrameError>),
    ) {
        if self.poison.is_some() {
            self.discard(input.len());
            return;
        }
        if self.filled > 0 {
            input = self.complete_held(input, &mut on_frame);
            if self.filled > 0 || self.poison.is_some() {
                // `input` was used up (or discarded).
                return;
            }
        }
        while !input.is_empty() {
            let Some(len) = frame_len(input) else {
                self.hold(input);
                return;
            };
            if let Err(error) = self.check_len(len) {
                let error = FrameError { error, seq: None };
                self.lose_framing(input.len(), error, &mut on_frame);
                return;
            }
            let Some((frame, rest)) = input.split_at_checked(len) else {
                self.hold(input);
                return;
            };
            self.deliver_from(frame, &mut on_frame);
            input = rest;
        }
    }

    /// Completes the frame held in `buf` from `input`, delivers it if complete, and returns
    /// the input left over.
    fn complete_held<'i>(
        &mut self,
        input: &'i [u8],
        on_frame: &mut impl FnMut(Result<Frame<'_>, FrameError>),
    ) -> &'i [u8] {
        let mut input = input;
        // First the length field, if not all of it is here yet.
        if self.filled < 4 {
            let take = (4 - self.filled).min(input.len());
            let (head, rest) = split_at_most(input, take);
            self.append(head);
            input = rest;
            if self.filled < 4 {
                return input;
            }
            let len = frame_len(&self.buf).unwrap_or(0);
            if let Err(error) = self.check_len(len) {
                let held = self.filled;
                self.filled = 0;
                self.lose_framing(
                    held + input.len(),
                    FrameError { error, seq: None },
                    on_frame,
                );
                return &[];
            }
        }
        let len = frame_len(&self.buf).unwrap_or(0);
        let take = len.saturating_sub(self.filled).min(input.len());
        let (body, rest) = split_at_most(input, take);
        self.append(body);
        if self.filled == len {
            self.filled = 0;
            let frame = self.buf.get(..len).unwrap_or(&[]);
            let result =
                Frame::new_checked(frame, self.max_frame_len).map_err(|error| FrameError {
                    error,
                    seq: frame_seq(frame),
                });
            match result {
                Ok(_) => self.frames_ok += 1,
                Err(_) => self.frames_invalid += 1,
            }
            on_frame(result);
        }
        rest
    }

    /// Validates one whole frame lying in the input and hands it out.
    #[inline]
    fn deliver_from(
        &mut self,
        frame: &[u8],
        on_frame: &mut impl FnMut(Result<Frame<'_>, FrameError>),
    ) {
        let result = Frame::new_checked(frame, self.max_frame_len).map_err(|error| FrameError {
            error,
            seq: frame_seq(frame),
        });
        match result {
            Ok(_) => self.frames_ok += 1,
            Err(_) => self.frames_invalid += 1,
        }
        on_frame(result);
    }

    /// `Ok` for a sane length field.
    #[inline]
    fn check_len(&self, len: usize) -> Result<(), DecodeError> {
        if len < MIN_FRAME_LEN {
            Err(DecodeError::BadLength)
        } else if len > self.max_frame_len {
            Err(DecodeError::TooLong)
        } else {
            Ok(())
        }
    }

    /// Reports `error`, poisons the decoder and discards the `dropped` bytes from the bad
    /// length field on.
    fn lose_framing(
        &mut self,
        dropped: usize,
        error: FrameError,
        on_frame: &mut impl FnMut(Result<Frame<'_>, FrameError>),
    ) {
        self.filled = 0;
        self.poison = Some(error.error);
        self.discard(dropped);
        on_frame(Err(error));
    }

    /// Starts holding `part`, the beginning of a frame (its length field, if present, is
    /// sane), which the input ended in.
    fn hold(&mut self, part: &[u8]) {
        self.filled = 0;
        self.append(part);
    }

    /// Appends to the held bytes. Callers never pass more than fits (`filled` stays below a
    /// sane length field, at most `max_frame_len <= CAP`).
    fn append(&mut self, bytes: &[u8]) {
        let end = self.filled.saturating_add(bytes.len());
        if let Some(dst) = self.buf.get_mut(self.filled..end) {
            dst.copy_from_slice(bytes);
            self.filled = end;
        }
    }

    fn discard(&mut self, bytes: usize) {
        self.discarded_bytes = self.discarded_bytes.saturating_add(bytes as u64);
    }

    /// `Ok` while the stream is framed; [`DecodeError::StreamPoisoned`] once a length field
    /// out of bounds has lost the framing (until [`reset`](Self::reset)).
    ///
    /// # Errors
    /// `StreamPoisoned` as said.
    pub fn status(&self) -> Result<(), DecodeError> {
        match self.poison {
            Some(_) => Err(DecodeError::StreamPoisoned),
            None => Ok(()),
        }
    }

    /// Whether the framing was lost ([`status`](Self::status) is `StreamPoisoned`).
    pub fn is_poisoned(&self) -> bool {
        self.poison.is_some()
    }

    /// The length error ([`TooLong`](DecodeError::TooLong) or
    /// [`BadLength`](DecodeError::BadLength)) that poisoned the decoder, if it is.
    pub fn poison_cause(&self) -> Option<DecodeError> {
        self.poison
    }

    /// Bytes of an incomplete frame held, waiting for the rest.
    pub fn buffered(&self) -> usize {
        self.filled
    }

    /// Valid frames handed out so far.
    pub fn frames_ok(&self) -> u64 {
        self.frames_ok
    }

    /// Frames with a sane length that failed validation, reported and skipped so far.
    pub fn frames_invalid(&self) -> u64 {
        self.frames_invalid
    }

    /// Bytes discarded because the framing was lost, the bad length field included.
    pub fn discarded_bytes(&self) -> u64 {
        self.discarded_bytes
    }

    /// Starts a new stream: drops any held partial frame and the poisoned state. The
    /// counters go on accumulating (see [`clear_counters`](Self::clear_counters)).
    pub fn reset(&mut self) {
        self.filled = 0;
        self.poison = None;
    }

    /// Zeroes the counters.
    pub fn clear_counters(&mut self) {
        self.frames_ok = 0;
        self.frames_invalid = 0;
        self.discarded_bytes = 0;
    }
}

/// `s` split after its first `n` bytes (all of it when shorter).
#[inline]
fn split_at_most(s: &[u8], n: usize) -> (&[u8], &[u8]) {
    s.split_at_checked(n).unwrap_or((s, &[]))
}

impl<const CAP: usize> Default for StreamDecoder<CAP> {
    fn default() -> Self {
        Self::new()
    }
}
