//! The firmware's line framing (`firmware/src/line.rs`: the core's stream decoder plus the
//! resynchronisation after noise), compiled for the host and checked without QEMU: the same
//! source file, which needs only `pinstream-core`.

#[allow(dead_code)]
#[path = "../../src/line.rs"]
mod line;

use line::Line;
use pinstream_core::event::{EventHeader, Priority};
use pinstream_core::wire::DecodeError;
use pinstream_firmware_host_test::{MAX_FRAME, batch_frame, noise};

/// What the line handed out: `Ok(seq)` per frame, `Err(error)` per error.
fn run(line: &mut Line<MAX_FRAME>, bytes: &[u8]) -> Vec<Result<u64, DecodeError>> {
    let mut out = Vec::new();
    for &b in bytes {
        line.push(b, &mut |r, _, _| {
            out.push(r.map(|f| f.seq()).map_err(|e| e.error));
        });
    }
    out
}

fn frame(seq: u64, events: u64) -> Vec<u8> {
    let events: Vec<_> = (0..events)
        .map(|i| (EventHeader::new(seq * 100 + i, 1, Priority::High, i), 6))
        .collect();
    batch_frame(seq, &events)
}

#[test]
fn frames_without_noise_pass_through() {
    let mut line = Line::<MAX_FRAME>::new();
    let bytes: Vec<u8> = (1..=5).flat_map(|s| frame(s, s)).collect();
    assert_eq!(run(&mut line, &bytes), [Ok(1), Ok(2), Ok(3), Ok(4), Ok(5)]);
    assert_eq!((line.discarded(), line.resyncs()), (0, 0));
    assert_eq!(line.frames(), (5, 0));
}

#[test]
fn noise_of_every_length_is_dropped_exactly_and_the_next_frame_found() {
    for len in 4..200 {
        let mut line = Line::<MAX_FRAME>::new();
        let mut bytes = frame(1, 2);
        bytes.extend(noise(len));
        bytes.extend(frame(2, 3));
        bytes.extend(frame(3, 1));
        let got = run(&mut line, &bytes);
        assert_eq!(
            got,
            [Ok(1), Err(DecodeError::TooLong), Ok(2), Ok(3)],
            "{len} bytes of noise"
        );
        assert_eq!(line.discarded(), len as u64, "{len} bytes of noise");
        assert_eq!(line.resyncs(), 1);
        assert!(!line.is_hunting());
    }
}

#[test]
fn a_length_field_below_the_minimum_loses_the_framing_too() {
    let mut line = Line::<MAX_FRAME>::new();
    let mut bytes = vec![5, 0, 0, 0, 0x77, 0x99];
    bytes.extend(frame(7, 2));
    assert_eq!(run(&mut line, &bytes), [Err(DecodeError::BadLength), Ok(7)]);
    assert_eq!(line.discarded(), 6);
}

#[test]
fn a_frame_starting_inside_the_bad_length_field_is_found() {
    // One byte of noise that makes a length too long together with the frame's first three
    // bytes: the hunt must look at those three again, not skip them.
    let mut line = Line::<MAX_FRAME>::new();
    let mut bytes = vec![0xEE];
    let f = frame(4, 1);
    bytes.extend(&f);
    // 0xEE + f[0..3] as a length: f[0] is the low byte of the frame's length (> 3), so the
    // value is far above 768.
    assert!(f[0] > 3);
    assert_eq!(run(&mut line, &bytes), [Err(DecodeError::TooLong), Ok(4)]);
    assert_eq!(line.discarded(), 1);
}

#[test]
fn a_corrupted_frame_is_reported_and_skipped_by_its_length() {
    let mut line = Line::<MAX_FRAME>::new();
    let mut bad = frame(2, 3);
    let at = bad.len() - 8;
    bad[at] ^= 0x01;
    let bytes: Vec<u8> = [frame(1, 1), bad, frame(3, 1)].concat();
    assert_eq!(
        run(&mut line, &bytes),
        [Ok(1), Err(DecodeError::BadCrc), Ok(3)]
    );
    assert_eq!((line.discarded(), line.resyncs()), (0, 0));
    assert_eq!(line.frames(), (2, 1));
}

#[test]
fn noise_that_never_ends_keeps_the_line_hunting_and_counts_every_byte() {
    let mut line = Line::<MAX_FRAME>::new();
    let got = run(&mut line, &noise(5000));
    assert_eq!(
        got,
        [Err(DecodeError::TooLong)],
        "one report per loss of framing"
    );
    assert!(line.is_hunting());
    // Bytes still held in the probe (a possible header start) are not counted yet.
    assert!(line.discarded() >= 5000 - 7 && line.discarded() <= 5000);
}
