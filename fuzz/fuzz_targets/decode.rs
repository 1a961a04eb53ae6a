//! Fuzzes the wire decoder: arbitrary bytes through `Frame::new_checked`, `wire::frames` and a
//! `StreamDecoder` fed in data-driven pieces. Checks that nothing panics, that every split of
//! the input gives the same callbacks as one feed, and that every frame accepted re-encodes to
//! the identical bytes (the decoder accepts canonical encodings only).
//!
//! Input layout: 4 control bytes, then the bytes to decode.
//! - control bytes 0–1: the maximum frame length (20 + value, so 20..=65_555);
//! - control byte 2: the seed of the split points;
//! - control byte 3, bit 0: first rewrite the CRC of every frame the length fields delimit,
//!   so that the checks after the CRC see arbitrary input too.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run decode -- -max_total_time=60`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pinstream_core::event::EventHeader;
use pinstream_core::wire::{
    self, BatchEncoder, DEFAULT_MAX_FRAME_LEN, Frame, FrameError, FrameKind, StreamDecoder,
};

/// The decoder's buffer: the largest maximum the control bytes can ask for is clamped to it.
const CAP: usize = 70_000;

fuzz_target!(|data: &[u8]| {
    let Some((ctrl, bytes)) = data.split_first_chunk::<4>() else {
        return;
    };
    let max = 20 + usize::from(u16::from_le_bytes([ctrl[0], ctrl[1]]));
    let mut owned;
    let bytes = if ctrl[3] & 1 != 0 {
        owned = bytes.to_vec();
        fix_crcs(&mut owned);
        &owned[..]
    } else {
        bytes
    };

    for limit in [max, DEFAULT_MAX_FRAME_LEN] {
        if let Ok(frame) = Frame::new_checked(bytes, limit) {
            check_round_trip(&frame);
        }
        for frame in wire::frames(bytes, limit).flatten() {
            check_round_trip(&frame);
        }
    }

    let whole = feed(bytes, max, &[]);
    let splits = split_points(bytes.len(), ctrl[2]);
    assert_eq!(
        feed(bytes, max, &splits),
        whole,
        "a split changed the result"
    );
    if bytes.len() <= 512 {
        let every: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(
            feed(bytes, max, &every),
            whole,
            "byte-by-byte changed the result"
        );
    }
});

/// What a stream decoder reports for `bytes` cut at `splits`: every callback (the frame's
/// bytes or the error) and the discarded byte count.
fn feed(bytes: &[u8], max: usize, splits: &[usize]) -> (Vec<Result<Vec<u8>, FrameError>>, u64) {
    let mut decoder: Box<StreamDecoder<CAP>> = Box::default();
    *decoder = StreamDecoder::with_max_frame_len(max);
    let mut out = Vec::new();
    let mut at = 0;
    for &cut in splits.iter().chain([bytes.len()].iter()) {
        decoder.feed_detailed(&bytes[at..cut], |r| {
            if let Ok(frame) = &r {
                check_round_trip(frame);
            }
            out.push(r.map(|f| f.as_bytes().to_vec()));
        });
        at = cut;
    }
    (out, decoder.discarded_bytes())
}

/// Up to 16 increasing cut points in `0..=len`, from a small xorshift seeded by `seed`.
fn split_points(len: usize, seed: u8) -> Vec<usize> {
    let mut x = u32::from(seed) | 0x100;
    let mut at = 0;
    let mut cuts = Vec::new();
    while cuts.len() < 16 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        at += (x % 64) as usize;
        if at > len {
            break;
        }
        cuts.push(at);
    }
    cuts
}

/// Rewrites the CRC trailer of each frame the length fields delimit.
fn fix_crcs(bytes: &mut [u8]) {
    let mut at = 0;
    while let Some(len) = wire::frame_len(&bytes[at..]) {
        if len < wire::MIN_FRAME_LEN || bytes.len() - at < len {
            return;
        }
        let frame = &mut bytes[at..at + len];
        let crc = wire::crc32c(&frame[..len - 4]);
        frame[len - 4..].copy_from_slice(&crc.to_le_bytes());
        at += len;
    }
}

/// Re-encodes a decoded frame from its accessors and checks the bytes are identical.
fn check_round_trip(frame: &Frame<'_>) {
    let mut buf = vec![0u8; frame.as_bytes().len()];
    let seq = frame.seq();
    let n = match frame.kind() {
        FrameKind::Event => {
            let events: Vec<_> = frame.events().collect();
            assert_eq!(events.len(), 1);
            wire::encode_event(&mut buf, seq, &events[0].header(), events[0].payload())
        }
        FrameKind::Batch => {
            let mut b = BatchEncoder::new(&mut buf, seq).unwrap();
            let mut count = 0u32;
            for e in frame.events() {
                let h: EventHeader = e.header();
                b.push(&h, e.payload()).unwrap();
                count += 1;
            }
            assert_eq!(count, frame.event_count());
            b.finish()
        }
        FrameKind::Ack => wire::encode_ack(&mut buf, seq, &frame.ack().unwrap()),
        FrameKind::Reject => wire::encode_reject(&mut buf, seq, &frame.reject().unwrap()),
        FrameKind::Hello => wire::encode_hello(&mut buf, seq, &frame.hello().unwrap()),
        // The consumer kinds of version 3 (and any later ones: `FrameKind` is non-exhaustive)
        // have their round trips in the codec's property tests (wire::consumer).
        _ => return,
    }
    .expect("a decoded frame encodes");
    assert_eq!(n, buf.len());
    assert_eq!(&buf[..], frame.as_bytes(), "re-encoding differs");
}
