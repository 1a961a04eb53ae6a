//! Unit tests of the wire codec: CRC, every decode error, every kind's round trip, encoder
//! edges, the stream decoder and `frames`.

use std::format;
use std::string::ToString;
use std::vec;
use std::vec::Vec;

use super::crc::imp;
use super::*;
use crate::event::{EventHeader, FLAG_HAS_VALUE, Priority};
use crate::reason::Reason;

// ---------------------------------------------------------------- helpers

/// A deterministic byte generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A frame built byte by byte, without the encoder: header, `body`, correct CRC.
fn raw_frame(version: u8, kind: u8, seq: u64, body: &[u8]) -> Vec<u8> {
    let len = (HEADER_LEN + body.len() + TRAILER_LEN) as u32;
    let mut f = Vec::new();
    f.extend_from_slice(&len.to_le_bytes());
    f.push(version);
    f.push(kind);
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&seq.to_le_bytes());
    f.extend_from_slice(body);
    let crc = crc32c(&f);
    f.extend_from_slice(&crc.to_le_bytes());
    f
}

/// Rewrites the CRC trailer after a test has changed bytes.
fn reseal(f: &mut [u8]) {
    let n = f.len();
    let crc = crc32c(&f[..n - 4]);
    f[n - 4..].copy_from_slice(&crc.to_le_bytes());
}

/// `f` with `bytes` written at `at`, CRC recomputed.
fn patched(f: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut g = f.to_vec();
    g[at..at + bytes.len()].copy_from_slice(bytes);
    reseal(&mut g);
    g
}

fn event_frame(seq: u64, h: &EventHeader, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; event_frame_len(payload.len())];
    let n = encode_event(&mut buf, seq, h, payload).unwrap();
    assert_eq!(n, buf.len());
    buf
}

fn batch_frame(seq: u64, events: &[(EventHeader, &[u8])]) -> Vec<u8> {
    let mut buf = vec![0u8; 1 << 17];
    let mut b = BatchEncoder::new(&mut buf, seq).unwrap();
    for (h, p) in events {
        b.push(h, p).unwrap();
    }
    let n = b.finish().unwrap();
    buf.truncate(n);
    buf
}

fn ack_frame(seq: u64, ack: &Ack) -> Vec<u8> {
    let mut buf = vec![0u8; 52];
    assert_eq!(encode_ack(&mut buf, seq, ack), Ok(52));
    buf
}

fn reject_frame(seq: u64, r: &Reject) -> Vec<u8> {
    let mut buf = vec![0u8; 44];
    assert_eq!(encode_reject(&mut buf, seq, r), Ok(44));
    buf
}

fn hello_frame(seq: u64, h: &Hello) -> Vec<u8> {
    // The long body (60-byte frame) for senders that speak version 2 or later.
    let len = if h.max_version >= 2 { 60 } else { 36 };
    let mut buf = vec![0u8; len];
    assert_eq!(encode_hello(&mut buf, seq, h), Ok(len));
    buf
}

fn check(f: &[u8]) -> Result<Frame<'_>, DecodeError> {
    Frame::new_checked(f, DEFAULT_MAX_FRAME_LEN)
}

fn sample_header() -> EventHeader {
    EventHeader::new(0x0102_0304_0506_0708, 513, Priority::Medium, 99).with_value(-12_345)
}

/// The offset of the first event record in an EVENT frame.
const REC: usize = HEADER_LEN;
/// The offset of the first event record in a BATCH frame.
const BREC: usize = HEADER_LEN + BATCH_PREFIX_LEN;

// ---------------------------------------------------------------- CRC

#[test]
fn crc_known_values() {
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c(b""), 0);
    // RFC 3720 (iSCSI), appendix B.4.
    assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
    let inc: Vec<u8> = (0..32).collect();
    assert_eq!(crc32c(&inc), 0x46DD_794E);
    let dec: Vec<u8> = (0..32).rev().collect();
    assert_eq!(crc32c(&dec), 0x113F_DB5C);
    assert_eq!(imp::software(!0, b"123456789"), !0xE306_9283);
}

#[test]
fn crc_incremental_forms_agree_at_every_split() {
    let data = Rng(7).bytes(if cfg!(miri) { 40 } else { 200 });
    let whole = crc32c(&data);
    for cut in 0..=data.len() {
        let (a, b) = data.split_at(cut);
        assert_eq!(crc32c_update(crc32c(a), b), whole, "cut {cut}");
        assert_eq!(crc32c_update(crc32c_update(0, a), b), whole);
        let mut c = Crc32c::new();
        c.update(a);
        c.update(b);
        assert_eq!(c.finish(), whole);
        let mut r = Crc32c::resume(crc32c(a));
        r.update(b);
        assert_eq!(r.finish(), whole);
    }
    assert_eq!(Crc32c::default().finish(), 0);
}

#[test]
fn crc_dispatch_matches_software_on_every_length_and_alignment() {
    let max_len = if cfg!(miri) { 40 } else { 300 };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let buf = rng.bytes(max_len + 8);
    for align in 0..8 {
        for len in 0..=max_len {
            let data = &buf[align..align + len];
            let reg = rng.next() as u32;
            let sw = imp::software(reg, data);
            assert_eq!(!crc32c_update(!reg, data), sw, "len {len} align {align}");
            if let Some(hw) = imp::hardware(reg, data) {
                assert_eq!(hw, sw, "len {len} align {align}");
            }
        }
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "long inputs: too slow under Miri, and Miri runs the software path only"
)]
fn crc_three_stream_path_matches_software_on_long_inputs() {
    let mut rng = Rng(3);
    let data = rng.bytes(70_000);
    for len in [
        767, 768, 769, 775, 776, 1535, 1536, 1537, 2303, 2304, 2311, 4096, 5000, 65_536, 70_000,
    ] {
        for align in [0, 1, 5] {
            let d = &data[align..align + len - align];
            let reg = rng.next() as u32;
            let sw = imp::software(reg, d);
            assert_eq!(!crc32c_update(!reg, d), sw, "len {}", d.len());
            if let Some(hw) = imp::hardware(reg, d) {
                assert_eq!(hw, sw, "len {}", d.len());
            }
        }
    }
}

#[test]
fn crc_zero_append_math_matches_processing_zeros() {
    for n in [0u64, 1, 3, 8, 256, 300] {
        for reg in [1u32, 0x8000_0000, 0xDEAD_BEEF, !0] {
            let zeros = vec![0u8; n as usize];
            let expect = imp::software(reg, &zeros);
            assert_eq!(imp::append_zeros(reg, n), expect, "n {n} reg {reg:#x}");
            assert_eq!(
                imp::append_zeros_by_table(reg, n),
                expect,
                "n {n} reg {reg:#x}"
            );
        }
    }
}

// ---------------------------------------------------------------- round trips

#[test]
fn event_round_trip_with_and_without_value() {
    let with = sample_header();
    let without = EventHeader::new(u64::MAX, u16::MAX, Priority::Critical, u64::MAX);
    for (h, payload) in [(with, &b"payload"[..]), (without, &b""[..])] {
        let f = event_frame(42, &h, payload);
        let frame = check(&f).unwrap();
        assert_eq!(frame.kind(), FrameKind::Event);
        assert_eq!(frame.version(), VERSION);
        assert_eq!(frame.seq(), 42);
        assert_eq!(frame.as_bytes(), &f[..]);
        assert_eq!(frame.body().len(), 32 + payload.len());
        assert_eq!(
            frame.crc(),
            u32::from_le_bytes(f[f.len() - 4..].try_into().unwrap())
        );
        assert_eq!(frame.event_count(), 1);
        let events: Vec<_> = frame.events().collect();
        assert_eq!(events.len(), 1);
        let e = events[0];
        assert_eq!(e.header(), h);
        assert_eq!(
            (e.id(), e.topic(), e.priority()),
            (h.id, h.topic, h.priority)
        );
        assert_eq!(
            (e.timestamp(), e.value(), e.flags()),
            (h.timestamp, h.value(), h.flags)
        );
        assert_eq!(e.payload(), payload);
        assert_eq!(e.record_len(), 32 + payload.len());
        assert_eq!(
            (frame.ack(), frame.reject(), frame.hello()),
            (None, None, None)
        );
    }
}

#[test]
fn batch_round_trip_keeps_order_and_payloads() {
    let payloads: [&[u8]; 4] = [b"", b"a", &[0xEE; 300], b"last"];
    let events: Vec<(EventHeader, &[u8])> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let h = EventHeader::new(
                i as u64 + 10,
                i as u16,
                Priority::ALL[i % 5],
                1000 + i as u64,
            );
            (
                if i % 2 == 0 {
                    h.with_value(i as i64 - 2)
                } else {
                    h
                },
                *p,
            )
        })
        .collect();
    let f = batch_frame(9, &events);
    let frame = check(&f).unwrap();
    assert_eq!(
        (frame.kind(), frame.seq(), frame.event_count()),
        (FrameKind::Batch, 9, 4)
    );
    let mut it = frame.events();
    assert_eq!(it.len(), 4);
    for (h, p) in &events {
        let e = it.next().unwrap();
        assert_eq!(e.header(), *h);
        assert_eq!(e.payload(), *p);
    }
    assert_eq!(it.len(), 0);
    assert!(it.next().is_none());
    assert!(it.next().is_none(), "fused");
}

#[test]
fn ack_reject_hello_round_trip() {
    let ack = Ack {
        through_seq: u64::MAX - 1,
        stored: 1,
        dead_lettered: 2,
        rejected: 3,
        duplicates: 0,
    };
    let f = ack_frame(5, &ack);
    let frame = check(&f).unwrap();
    assert_eq!(
        (frame.kind(), frame.seq(), frame.ack()),
        (FrameKind::Ack, 5, Some(ack))
    );
    assert_eq!((frame.event_count(), frame.events().count()), (0, 0));
    assert_eq!((frame.reject(), frame.hello()), (None, None));

    for r in [
        Reject::frame(77, Reason::BadCrc),
        Reject::event(78, Reason::LaneFull, 3, 0xABCD),
        Reject {
            frame_seq: 1,
            reason: 999, // unknown to this build: kept raw
            index: 0,
            event_id: 0,
        },
    ] {
        let f = reject_frame(6, &r);
        let frame = check(&f).unwrap();
        assert_eq!(frame.reject(), Some(r));
        assert_eq!(
            frame.reject().unwrap().reason(),
            Reason::from_code(r.reason)
        );
    }
    assert_eq!(Reject::frame(1, Reason::BadCrc).index, WHOLE_FRAME);
    assert_eq!(
        Reject::frame(1, Reason::BadCrc).reason(),
        Some(Reason::BadCrc)
    );

    for h in [Hello::client(1, 3, 65_536), Hello::reply(1, 20, u32::MAX)] {
        let f = hello_frame(0, &h);
        let frame = check(&f).unwrap();
        assert_eq!(frame.hello(), Some(h));
        assert_eq!(frame.event_count(), 0);
    }
}

#[test]
fn hello_negotiation_picks_the_highest_common_version() {
    assert_eq!(Hello::client(1, 1, 100).negotiate(1, 1), Some(1));
    assert_eq!(Hello::client(1, 5, 100).negotiate(2, 3), Some(3));
    assert_eq!(Hello::client(3, 5, 100).negotiate(1, 2), None);
    assert_eq!(Hello::client(1, 2, 100).negotiate(3, 4), None);
    assert_eq!(Hello::client(0, 0, 100).negotiate(0, 0), None);
}

// ---------------------------------------------------------------- every decode error

#[test]
fn too_short() {
    let f = ack_frame(1, &Ack::default());
    for n in [0, 1, 3] {
        assert_eq!(check(&f[..n]), Err(DecodeError::TooShort), "{n} bytes");
    }
    for n in [4, 20, 51] {
        assert_eq!(check(&f[..n]), Err(DecodeError::TooShort), "{n} bytes");
    }
}

#[test]
fn bad_length() {
    let f = ack_frame(1, &Ack::default());
    for len in [0u32, 4, 19] {
        let g = patched(&f, 0, &len.to_le_bytes());
        assert_eq!(check(&g), Err(DecodeError::BadLength), "len {len}");
    }
    let mut longer = f.clone();
    longer.push(0);
    assert_eq!(check(&longer), Err(DecodeError::BadLength));
}

#[test]
fn too_long() {
    let f = ack_frame(1, &Ack::default());
    assert_eq!(Frame::new_checked(&f, 51), Err(DecodeError::TooLong));
    assert!(Frame::new_checked(&f, 52).is_ok());
    let g = patched(&f, 0, &u32::MAX.to_le_bytes());
    assert_eq!(check(&g), Err(DecodeError::TooLong));
}

#[test]
fn bad_crc_on_any_single_bit_flip() {
    let f = event_frame(3, &sample_header(), b"xyz");
    for byte in 4..f.len() {
        for bit in 0..8 {
            let mut g = f.clone();
            g[byte] ^= 1 << bit;
            assert_eq!(check(&g), Err(DecodeError::BadCrc), "byte {byte} bit {bit}");
        }
    }
}

#[test]
fn a_hello_with_a_header_version_other_than_1_is_unsupported() {
    for h in [Hello::client(1, 1, 100), Hello::producer(100, 7)] {
        let f = hello_frame(0, &h);
        assert!(check(&f).is_ok());
        for v in [2u8, 0, 3] {
            assert_eq!(
                check(&patched(&f, 4, &[v])),
                Err(DecodeError::UnsupportedVersion),
                "header version {v}, {h:?}"
            );
        }
    }
}

#[test]
fn unsupported_version() {
    let f = ack_frame(1, &Ack::default());
    for v in [0u8, 3, 255] {
        assert_eq!(
            check(&patched(&f, 4, &[v])),
            Err(DecodeError::UnsupportedVersion)
        );
    }
}

#[test]
fn bad_version_range() {
    let f = hello_frame(0, &Hello::client(1, 1, 100));
    let body = HEADER_LEN;
    assert_eq!(
        check(&patched(&f, body, &[0, 1])),
        Err(DecodeError::BadVersionRange)
    );
    assert_eq!(
        check(&patched(&f, body, &[3, 2])),
        Err(DecodeError::BadVersionRange)
    );
    assert!(check(&patched(&f, body, &[1, 1])).is_ok());
    // A version-2 speaker sends the long body: in the short one, [2, 2] is malformed.
    assert_eq!(
        check(&patched(&f, body, &[2, 2])),
        Err(DecodeError::BadBodyLength)
    );
    let long = hello_frame(0, &Hello::client(1, 2, 100));
    assert!(check(&patched(&long, body, &[2, 2])).is_ok());
}

#[test]
fn unknown_kind() {
    for k in [0u8, 12, 255] {
        assert_eq!(
            check(&raw_frame(1, k, 0, &[])),
            Err(DecodeError::UnknownKind),
            "kind {k}"
        );
    }
    for k in FrameKind::ALL {
        assert_eq!(FrameKind::from_u8(k.as_u8()), Some(k));
    }
    assert_eq!(FrameKind::from_u8(0), None);
}

#[test]
fn reserved_non_zero_everywhere() {
    let ev = event_frame(1, &EventHeader::new(1, 2, Priority::Low, 3), b"p");
    let batch = batch_frame(1, &[(sample_header(), b"p")]);
    let rej = reject_frame(1, &Reject::frame(1, Reason::BadCrc));
    let hello = hello_frame(1, &Hello::client(1, 1, 100));
    let cases: [(&str, Vec<u8>); 10] = [
        ("header flags low", patched(&ev, 6, &[1, 0])),
        ("header flags high", patched(&ev, 7, &[0x80])),
        ("event flag bit 1", patched(&ev, REC + 27, &[0x02])),
        (
            "event flag bit 7 with value",
            patched(&batch, BREC + 27, &[0x81]),
        ),
        ("event reserved", patched(&ev, REC + 30, &[0, 1])),
        ("value without the flag", patched(&ev, REC + 16, &[1])),
        (
            "batch reserved",
            patched(&batch, HEADER_LEN + 4, &[0, 0, 0, 1]),
        ),
        ("reject reserved", patched(&rej, HEADER_LEN + 12, &[1])),
        ("hello reserved u16", patched(&hello, HEADER_LEN + 2, &[1])),
        ("hello reserved u32", patched(&hello, HEADER_LEN + 15, &[1])),
    ];
    for (name, g) in &cases {
        assert_eq!(check(g), Err(DecodeError::ReservedNonZero), "{name}");
    }
    // The same value with the flag set is fine.
    let g = patched(&ev, REC + 27, &[FLAG_HAS_VALUE]);
    let g = patched(&g, REC + 16, &[1]);
    assert_eq!(check(&g).unwrap().events().next().unwrap().value(), Some(1));
}

#[test]
fn bad_priority() {
    let ev = event_frame(1, &sample_header(), b"");
    for p in [5u8, 200, 255] {
        assert_eq!(
            check(&patched(&ev, REC + 26, &[p])),
            Err(DecodeError::BadPriority)
        );
    }
    for p in 0..=4u8 {
        let g = patched(&ev, REC + 26, &[p]);
        assert_eq!(
            check(&g)
                .unwrap()
                .events()
                .next()
                .unwrap()
                .priority()
                .as_u8(),
            p
        );
    }
    let batch = batch_frame(1, &[(sample_header(), b"ab"), (sample_header(), b"")]);
    let second = BREC + 32 + 2;
    assert_eq!(
        check(&patched(&batch, second + 26, &[5])),
        Err(DecodeError::BadPriority)
    );
}

#[test]
fn bad_body_length() {
    let ack = [0u8; ACK_BODY_LEN];
    assert_eq!(
        check(&raw_frame(1, 4, 0, &ack[..31])),
        Err(DecodeError::BadBodyLength)
    );
    assert_eq!(
        check(&raw_frame(1, 4, 0, &[0; 33])),
        Err(DecodeError::BadBodyLength)
    );
    assert!(check(&raw_frame(1, 4, 0, &ack)).is_ok());
    assert_eq!(
        check(&raw_frame(1, 5, 0, &[0; 23])),
        Err(DecodeError::BadBodyLength)
    );
    assert_eq!(
        check(&raw_frame(1, 5, 0, &[0; 25])),
        Err(DecodeError::BadBodyLength)
    );
    let mut hello = [0u8; 17];
    hello[..2].copy_from_slice(&[1, 1]);
    hello[4] = 100;
    assert_eq!(
        check(&raw_frame(1, 1, 0, &hello[..15])),
        Err(DecodeError::BadBodyLength)
    );
    assert_eq!(
        check(&raw_frame(1, 1, 0, &hello)),
        Err(DecodeError::BadBodyLength)
    );
    assert!(check(&raw_frame(1, 1, 0, &hello[..16])).is_ok());
    for n in [0, 4, 7] {
        let prefix = [1u8, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            check(&raw_frame(1, 3, 0, &prefix[..n])),
            Err(DecodeError::BadBodyLength)
        );
    }
    assert_eq!(
        check(&raw_frame(1, 1, 0, &[])),
        Err(DecodeError::BadBodyLength)
    );
}

#[test]
fn bad_hello_frame_len() {
    let f = hello_frame(0, &Hello::client(1, 1, 20));
    assert!(check(&f).is_ok());
    for len in [0u32, 19] {
        let g = patched(&f, HEADER_LEN + 4, &len.to_le_bytes());
        assert_eq!(check(&g), Err(DecodeError::BadHelloFrameLen));
    }
}

#[test]
fn bad_event_length() {
    let ev = event_frame(1, &sample_header(), b"four");
    // The record's payload_len says more than the body holds.
    assert_eq!(
        check(&patched(&ev, REC + 28, &[5, 0])),
        Err(DecodeError::BadEventLength)
    );
    assert_eq!(
        check(&patched(&ev, REC + 28, &[0xFF, 0xFF])),
        Err(DecodeError::BadEventLength)
    );
    // ... or less: the body is longer than one record.
    assert_eq!(
        check(&patched(&ev, REC + 28, &[3, 0])),
        Err(DecodeError::BadEventLength)
    );
    // A body shorter than a record.
    assert_eq!(
        check(&raw_frame(1, 2, 0, &[0; 31])),
        Err(DecodeError::BadEventLength)
    );
    assert_eq!(
        check(&raw_frame(1, 2, 0, &[])),
        Err(DecodeError::BadEventLength)
    );
    // A batch's last payload running past the body.
    let batch = batch_frame(1, &[(sample_header(), b"ab"), (sample_header(), b"cd")]);
    let second = BREC + 32 + 2;
    assert_eq!(
        check(&patched(&batch, second + 28, &[3, 0])),
        Err(DecodeError::BadEventLength)
    );
}

#[test]
fn bad_count() {
    let two = batch_frame(1, &[(sample_header(), b"ab"), (sample_header(), b"")]);
    let count_at = HEADER_LEN;
    // Zero.
    assert_eq!(
        check(&patched(&two, count_at, &[0, 0, 0, 0])),
        Err(DecodeError::BadCount)
    );
    // Fewer than the records: bytes left over.
    assert_eq!(
        check(&patched(&two, count_at, &[1, 0, 0, 0])),
        Err(DecodeError::BadCount)
    );
    // More than the body can hold.
    assert_eq!(
        check(&patched(&two, count_at, &[3, 0, 0, 0])),
        Err(DecodeError::BadCount)
    );
    assert_eq!(
        check(&patched(&two, count_at, &[0xFF; 4])),
        Err(DecodeError::BadCount)
    );
    // Count fits by the 32-byte bound, but a payload eats the room of the last record.
    let three = batch_frame(
        1,
        &[
            (sample_header(), &[7; 40]),
            (sample_header(), b""),
            (sample_header(), b""),
        ],
    );
    let g = patched(&three, count_at, &[4, 0, 0, 0]);
    assert_eq!(check(&g), Err(DecodeError::BadCount));
    // A batch body of only the prefix.
    let mut prefix = [0u8; 8];
    prefix[0] = 1;
    assert_eq!(
        check(&raw_frame(1, 3, 0, &prefix)),
        Err(DecodeError::BadCount)
    );
}

#[test]
fn stream_poisoned_and_unexpected_kind() {
    let mut d: StreamDecoder<64> = StreamDecoder::new();
    assert_eq!(d.status(), Ok(()));
    d.feed(&100u32.to_le_bytes(), |_| {});
    assert_eq!(d.status(), Err(DecodeError::StreamPoisoned));
    assert_eq!(d.poison_cause(), Some(DecodeError::TooLong));

    let f = ack_frame(1, &Ack::default());
    let frame = check(&f).unwrap();
    let client_kinds = [FrameKind::Hello, FrameKind::Event, FrameKind::Batch];
    assert_eq!(
        frame.require_kind(&client_kinds),
        Err(DecodeError::UnexpectedKind)
    );
    assert_eq!(frame.require_kind(&[FrameKind::Ack]), Ok(frame));
}

#[test]
fn every_decode_error_maps_to_a_distinct_rejection_code_and_message() {
    let mut codes: Vec<u16> = DecodeError::ALL.iter().map(|e| e.reason().code()).collect();
    for e in DecodeError::ALL {
        assert!(e.reason().is_rejection());
        assert!((1..=13).contains(&e.reason().code()), "{e:?}");
        assert!(!e.to_string().is_empty());
    }
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(
        codes,
        (1..=13).collect::<Vec<u16>>(),
        "every code 1..=13 is produced"
    );
    let mut messages: Vec<_> = DecodeError::ALL.iter().map(|e| e.to_string()).collect();
    messages.sort();
    messages.dedup();
    assert_eq!(messages.len(), DecodeError::ALL.len());
    let fe = FrameError {
        error: DecodeError::BadCrc,
        seq: Some(4),
    };
    assert_eq!(fe.reason(), Reason::BadCrc);
    assert_eq!(fe.to_reject(), Reject::frame(4, Reason::BadCrc));
    assert_eq!(fe.to_string(), "frame seq 4: CRC32C mismatch");
    let none = FrameError {
        error: DecodeError::TooShort,
        seq: None,
    };
    assert_eq!(none.to_reject().frame_seq, 0);
}

// ---------------------------------------------------------------- encoder edges

#[test]
fn encoders_fit_exactly_and_fail_one_byte_short() {
    let h = sample_header();
    let n = event_frame_len(5);
    let mut buf = vec![0u8; n];
    assert_eq!(encode_event(&mut buf, 1, &h, b"12345"), Ok(n));
    assert_eq!(
        encode_event(&mut buf[..n - 1], 1, &h, b"12345"),
        Err(EncodeError::BufferTooSmall {
            needed: n,
            have: n - 1
        })
    );
    type Enc = fn(&mut [u8]) -> Result<usize, EncodeError>;
    let fixed: [(Enc, usize); 3] = [
        (|b| encode_ack(b, 1, &Ack::default()), 52),
        (
            |b| encode_reject(b, 1, &Reject::frame(1, Reason::BadCrc)),
            44,
        ),
        (|b| encode_hello(b, 1, &Hello::client(1, 1, 64)), 36),
    ];
    for (enc, len) in fixed {
        let mut buf = vec![0u8; len + 1];
        assert_eq!(enc(&mut buf[..len]), Ok(len));
        assert_eq!(enc(&mut buf), Ok(len), "longer buffer: same frame");
        assert!(check(&buf[..len]).is_ok());
        assert_eq!(
            enc(&mut buf[..len - 1]),
            Err(EncodeError::BufferTooSmall {
                needed: len,
                have: len - 1
            })
        );
    }
}

#[test]
fn encoder_refuses_bad_input_and_normalises_the_value() {
    let mut buf = vec![0u8; 70_000];
    let big = vec![0u8; MAX_PAYLOAD_LEN + 1];
    let h = sample_header();
    assert_eq!(
        encode_event(&mut buf, 1, &h, &big),
        Err(EncodeError::PayloadTooLarge { len: 65_536 })
    );
    let n = encode_event(&mut buf, 1, &h, &big[..MAX_PAYLOAD_LEN]).unwrap();
    assert_eq!(n, 16 + 32 + 65_535 + 4);
    assert_eq!(
        Frame::new_checked(&buf[..n], n)
            .unwrap()
            .events()
            .next()
            .unwrap()
            .payload()
            .len(),
        65_535
    );

    let mut odd = h;
    odd.flags = 0x02;
    assert_eq!(
        encode_event(&mut buf, 1, &odd, b""),
        Err(EncodeError::UnknownFlags { flags: 0x02 })
    );
    // A stale raw value without the flag goes out as 0.
    let mut stale = EventHeader::new(1, 1, Priority::High, 1);
    stale.raw_value = 55;
    let f = event_frame(1, &stale, b"");
    let back = check(&f).unwrap().events().next().unwrap().header();
    assert_eq!(back.raw_value, 0);
    assert_eq!(back.value(), None);
    assert_eq!(
        back,
        EventHeader {
            raw_value: 0,
            ..stale
        }
    );

    assert_eq!(
        encode_hello(&mut buf, 1, &Hello::client(0, 1, 100)),
        Err(EncodeError::BadVersionRange)
    );
    assert_eq!(
        encode_hello(&mut buf, 1, &Hello::client(2, 1, 100)),
        Err(EncodeError::BadVersionRange)
    );
    assert_eq!(
        encode_hello(&mut buf, 1, &Hello::client(1, 1, 19)),
        Err(EncodeError::BadHelloFrameLen)
    );
    for e in [
        EncodeError::BufferTooSmall { needed: 2, have: 1 },
        EncodeError::PayloadTooLarge { len: 70_000 },
        EncodeError::EmptyBatch,
        EncodeError::FrameTooLong { len: 1 << 33 },
        EncodeError::UnknownFlags { flags: 2 },
        EncodeError::BadVersionRange,
        EncodeError::BadHelloFrameLen,
    ] {
        assert!(!format!("{e}").is_empty());
    }
}

#[test]
fn batch_encoder_edges() {
    let h = sample_header();
    let mut small = [0u8; 27];
    assert_eq!(
        BatchEncoder::new(&mut small, 1).err(),
        Some(EncodeError::BufferTooSmall {
            needed: 28,
            have: 27
        })
    );
    let mut buf = [0u8; 28];
    let b = BatchEncoder::new(&mut buf, 1).unwrap();
    assert!(b.is_empty());
    assert!(!b.fits(0));
    assert_eq!(b.finish(), Err(EncodeError::EmptyBatch));

    // Room for exactly two events of 10 bytes: 24 + 2 * 42 + 4 = 112.
    let mut buf = [0u8; 112];
    let mut b = BatchEncoder::new(&mut buf, 77).unwrap();
    assert_eq!(b.seq(), 77);
    b.push(&h, &[1; 10]).unwrap();
    assert!(b.fits(10));
    assert!(!b.fits(11));
    assert_eq!(
        b.push(&h, &[2; 11]),
        Err(EncodeError::BufferTooSmall {
            needed: 113,
            have: 112
        })
    );
    let mut odd = h;
    odd.flags = 0x80;
    assert_eq!(
        b.push(&odd, b""),
        Err(EncodeError::UnknownFlags { flags: 0x80 })
    );
    assert_eq!(
        b.push(&h, &[0; MAX_PAYLOAD_LEN + 1]),
        Err(EncodeError::PayloadTooLarge {
            len: MAX_PAYLOAD_LEN + 1
        })
    );
    assert_eq!((b.len(), b.frame_len()), (1, 70));
    b.push(&h, &[2; 10]).unwrap();
    assert!(!b.fits(0));
    assert_eq!(b.len(), 2);
    assert_eq!(b.finish(), Ok(112));
    let frame = check(&buf).unwrap();
    let payloads: Vec<_> = frame.events().map(|e| e.payload().to_vec()).collect();
    assert_eq!(payloads, [vec![1; 10], vec![2; 10]]);

    // A failed push leaves the first event intact in a finished frame.
    let mut buf = [0u8; 100];
    let mut b = BatchEncoder::new(&mut buf, 1).unwrap();
    b.push(&h, b"kept").unwrap();
    assert!(b.push(&h, &[9; 50]).is_err());
    let n = b.finish().unwrap();
    let frame = check(&buf[..n]).unwrap();
    assert_eq!(frame.event_count(), 1);
    assert_eq!(frame.events().next().unwrap().payload(), b"kept");
}

#[test]
fn frame_len_and_seq_peek() {
    let f = event_frame(0xAABB, &sample_header(), b"x");
    assert_eq!(frame_len(&f), Some(f.len()));
    assert_eq!(frame_len(&f[..3]), None);
    assert_eq!(frame_seq(&f), Some(0xAABB));
    assert_eq!(frame_seq(&f[..15]), None);
    assert_eq!(event_frame_len(0), 52);
    assert_eq!(event_frame_len(usize::MAX), usize::MAX);
}

// ---------------------------------------------------------------- stream decoder

/// Three frames of different kinds back to back, and their seqs.
fn sample_stream() -> (Vec<u8>, Vec<u64>) {
    let mut s = event_frame(1, &sample_header(), b"first");
    s.extend(batch_frame(
        2,
        &[(sample_header(), b"b1"), (sample_header(), &[3; 100])],
    ));
    s.extend(ack_frame(3, &Ack::default()));
    s.extend(event_frame(
        4,
        &EventHeader::new(9, 9, Priority::Batch, 9),
        b"",
    ));
    (s, vec![1, 2, 3, 4])
}

/// Feeds `pieces` and returns every callback as (seq or error).
fn decode_pieces<const CAP: usize>(
    d: &mut StreamDecoder<CAP>,
    pieces: &[&[u8]],
) -> Vec<Result<u64, DecodeError>> {
    let mut out = Vec::new();
    for p in pieces {
        d.feed(p, |r| out.push(r.map(|f| f.seq())));
    }
    out
}

#[test]
fn decoder_whole_stream_in_one_feed_is_zero_copy() {
    let (s, seqs) = sample_stream();
    let mut d: StreamDecoder<1024> = StreamDecoder::new();
    let range = s.as_ptr_range();
    let mut got = Vec::new();
    d.feed(&s, |r| {
        let f = r.unwrap();
        assert!(
            range.contains(&f.as_bytes().as_ptr()),
            "a view into the input"
        );
        got.push(f.seq());
    });
    assert_eq!(got, seqs);
    assert_eq!((d.frames_ok(), d.frames_invalid(), d.buffered()), (4, 0, 0));
}

#[test]
fn decoder_byte_by_byte() {
    let (s, seqs) = sample_stream();
    let mut d: StreamDecoder<1024> = StreamDecoder::new();
    let pieces: Vec<&[u8]> = s.chunks(1).collect();
    let got = decode_pieces(&mut d, &pieces);
    assert_eq!(got, seqs.into_iter().map(Ok).collect::<Vec<_>>());
    assert_eq!(d.buffered(), 0);
}

#[test]
fn decoder_frames_straddling_every_split_point() {
    let (s, seqs) = sample_stream();
    let expect: Vec<_> = seqs.into_iter().map(Ok).collect();
    let step = if cfg!(miri) { 37 } else { 1 };
    for cut in (0..=s.len()).step_by(step) {
        for cut2 in [cut, (cut + 3).min(s.len()), (cut + 60).min(s.len())] {
            let mut d: StreamDecoder<512> = StreamDecoder::new();
            let got = decode_pieces(&mut d, &[&s[..cut], &s[cut..cut2], &s[cut2..]]);
            assert_eq!(got, expect, "cuts {cut} {cut2}");
        }
    }
}

#[test]
fn decoder_held_frame_comes_from_its_buffer_and_carries_on() {
    let (s, _) = sample_stream();
    let first = frame_len(&s).unwrap();
    let mut d: StreamDecoder<1024> = StreamDecoder::new();
    d.feed(&s[..first - 1], |_| panic!("incomplete"));
    assert_eq!(d.buffered(), first - 1);
    let rest = &s[first - 1..];
    let range = rest.as_ptr_range();
    let mut from_input = Vec::new();
    d.feed(rest, |r| {
        from_input.push(range.contains(&r.unwrap().as_bytes().as_ptr()))
    });
    assert_eq!(from_input, [false, true, true, true]);
}

#[test]
fn decoder_skips_a_bad_frame_in_the_middle() {
    let (mut s, _) = sample_stream();
    let first = frame_len(&s).unwrap();
    s[first + 20] ^= 0x40; // inside the batch: its CRC fails
    for pieces in [vec![&s[..]], s.chunks(1).collect(), s.chunks(7).collect()] {
        let mut d: StreamDecoder<1024> = StreamDecoder::new();
        let mut got = Vec::new();
        for p in &pieces {
            d.feed_detailed(p, |r| got.push(r.map(|f| f.seq())));
        }
        assert_eq!(
            got,
            [
                Ok(1),
                Err(FrameError {
                    error: DecodeError::BadCrc,
                    seq: Some(2)
                }),
                Ok(3),
                Ok(4)
            ]
        );
        assert_eq!((d.frames_ok(), d.frames_invalid()), (3, 1));
        assert!(!d.is_poisoned());
    }
}

#[test]
fn decoder_poisons_on_a_length_out_of_bounds_until_reset() {
    let (s, _) = sample_stream();
    let first = frame_len(&s).unwrap();
    for bad_len in [0u32, 19, 1025, u32::MAX] {
        let expect_err = if bad_len < 20 {
            DecodeError::BadLength
        } else {
            DecodeError::TooLong
        };
        let mut broken = s.clone();
        broken[first..first + 4].copy_from_slice(&bad_len.to_le_bytes());
        let after = (s.len() - first) as u64;
        for chunk in [s.len(), 1, 5, 16, 50] {
            let mut d: StreamDecoder<1024> = StreamDecoder::new();
            let pieces: Vec<&[u8]> = broken.chunks(chunk).collect();
            let mut got = Vec::new();
            for p in &pieces {
                d.feed_detailed(p, |r| got.push(r.map(|f| f.seq()).map_err(|e| e.error)));
            }
            assert_eq!(got, [Ok(1), Err(expect_err)], "len {bad_len} chunk {chunk}");
            assert!(d.is_poisoned());
            assert_eq!(d.poison_cause(), Some(expect_err));
            assert_eq!(d.discarded_bytes(), after, "len {bad_len} chunk {chunk}");
            // Later input: discarded and counted, no callback.
            d.feed(&s, |_| panic!("poisoned decoders report nothing"));
            assert_eq!(d.discarded_bytes(), after + s.len() as u64);
            assert_eq!(d.buffered(), 0);
            d.reset();
            assert_eq!(d.status(), Ok(()));
            let got = decode_pieces(&mut d, &[&s]);
            assert_eq!(got, [Ok(1), Ok(2), Ok(3), Ok(4)]);
            assert_eq!(d.frames_ok(), 5);
            d.clear_counters();
            assert_eq!(
                (d.frames_ok(), d.frames_invalid(), d.discarded_bytes()),
                (0, 0, 0)
            );
        }
    }
}

#[test]
fn decoder_length_errors_carry_no_seq_whatever_the_split() {
    let mut f = ack_frame(33, &Ack::default());
    f[..4].copy_from_slice(&5000u32.to_le_bytes());
    let mut d: StreamDecoder<1024> = StreamDecoder::new();
    let mut got = Vec::new();
    d.feed_detailed(&f, |r| got.push(r.err()));
    assert_eq!(
        got,
        [Some(FrameError {
            error: DecodeError::TooLong,
            seq: None
        })]
    );
    let mut d: StreamDecoder<1024> = StreamDecoder::new();
    let mut got = Vec::new();
    for p in f.chunks(2) {
        d.feed_detailed(p, |r| got.push(r.err()));
    }
    assert_eq!(
        got,
        [Some(FrameError {
            error: DecodeError::TooLong,
            seq: None
        })]
    );
}

#[test]
fn decoder_runtime_limit_is_clamped_and_enforced() {
    let d: StreamDecoder<64> = StreamDecoder::with_max_frame_len(1000);
    assert_eq!(d.max_frame_len(), 64);
    let d: StreamDecoder<64> = StreamDecoder::with_max_frame_len(3);
    assert_eq!(d.max_frame_len(), 20);
    let mut d: StreamDecoder<256> = StreamDecoder::with_max_frame_len(51);
    let f = ack_frame(1, &Ack::default()); // 52 bytes
    assert_eq!(decode_pieces(&mut d, &[&f]), [Err(DecodeError::TooLong)]);
    let mut d: StreamDecoder<52> = StreamDecoder::default();
    assert_eq!(decode_pieces(&mut d, &[&f[..30], &f[30..]]), [Ok(1)]);
    static STATIC_DECODER: StreamDecoder<64> = StreamDecoder::new();
    assert_eq!(STATIC_DECODER.max_frame_len(), 64);
}

#[test]
fn decoder_empty_feeds_change_nothing() {
    let f = ack_frame(1, &Ack::default());
    let mut d: StreamDecoder<64> = StreamDecoder::new();
    let got = decode_pieces(&mut d, &[&[], &f[..2], &[], &f[2..], &[]]);
    assert_eq!(got, [Ok(1)]);
}

// ---------------------------------------------------------------- frames()

#[test]
fn frames_iterates_a_datagram() {
    let (s, seqs) = sample_stream();
    let got: Vec<_> = frames(&s, 1024).map(|r| r.unwrap().seq()).collect();
    assert_eq!(got, seqs);
    assert_eq!(frames(&[], 1024).count(), 0);

    // A bad CRC in the middle: reported, iteration goes on.
    let mut bad = s.clone();
    let first = frame_len(&s).unwrap();
    bad[first + 30] ^= 1;
    let got: Vec<_> = frames(&bad, 1024).map(|r| r.map(|f| f.seq())).collect();
    assert_eq!(got, [Ok(1), Err(DecodeError::BadCrc), Ok(3), Ok(4)]);

    // A truncated tail: one TooShort, then the end.
    for cut in [1, 3, 10, 30] {
        let mut it = frames(&s[..s.len() - cut], 1024);
        let got: Vec<_> = it.by_ref().map(|r| r.map(|f| f.seq())).collect();
        assert_eq!(
            got,
            [Ok(1), Ok(2), Ok(3), Err(DecodeError::TooShort)],
            "cut {cut}"
        );
        assert!(it.next().is_none());
        assert!(it.remainder().is_empty());
    }

    // A length field out of bounds: one error, then the end.
    let mut lost = s.clone();
    lost[first..first + 4].copy_from_slice(&7u32.to_le_bytes());
    let got: Vec<_> = frames(&lost, 1024).map(|r| r.map(|f| f.seq())).collect();
    assert_eq!(got, [Ok(1), Err(DecodeError::BadLength)]);
    let got: Vec<_> = frames(&s, first).map(|r| r.map(|f| f.seq())).collect();
    assert_eq!(got, [Ok(1), Err(DecodeError::TooLong)]);

    // The detailed form names the bad frame's seq.
    let mut it = frames(&bad, 1024);
    let mut details = Vec::new();
    while let Some(r) = it.next_detailed() {
        details.push(r.err());
    }
    assert_eq!(
        details,
        [
            None,
            Some(FrameError {
                error: DecodeError::BadCrc,
                seq: Some(2)
            }),
            None,
            None
        ]
    );
}

// ---------------------------------------------------------------- measurement

/// Prints CRC and decode throughput. Ignored: run it in release with
/// `cargo test -p pinstream-core --release --lib -- wire::tests::throughput --ignored --nocapture`.
/// Never asserts timing, only that the work was done right.
#[test]
#[ignore = "measurement: run in release with --ignored --nocapture"]
fn throughput() {
    use core::hint::black_box;
    use std::println;
    use std::time::Instant;

    let all = Rng(11).bytes(1 << 20);
    for len in [1 << 20, 6 << 10, 100] {
        let data = &all[..len];
        let expect = !imp::software(!0, data);
        for (name, f) in [
            ("crc32c (dispatch)", crc32c as fn(&[u8]) -> u32),
            ("crc32c software", |d: &[u8]| !imp::software(!0, d)),
        ] {
            let rounds = (200 << 20) / len;
            let t = Instant::now();
            for _ in 0..rounds {
                assert_eq!(f(black_box(data)), expect);
            }
            let secs = t.elapsed().as_secs_f64();
            let gbs = (rounds * len) as f64 / secs / 1e9;
            println!("{name}: {gbs:.2} GB/s over {len} bytes");
        }
    }

    let payload = [0x5Au8; 64];
    let events: Vec<(EventHeader, &[u8])> = (0..64)
        .map(|i| {
            (
                EventHeader::new(i, 1, Priority::ALL[i as usize % 5], i).with_value(7),
                &payload[..],
            )
        })
        .collect();
    let f = batch_frame(1, &events);
    let rounds = 200_000;
    let t = Instant::now();
    let mut sum = 0u64;
    for _ in 0..rounds {
        let frame = Frame::new_checked(black_box(&f), DEFAULT_MAX_FRAME_LEN).unwrap();
        for e in frame.events() {
            let h = e.header();
            sum = sum.wrapping_add(h.id ^ e.payload().len() as u64);
        }
    }
    let per_frame = t.elapsed().as_secs_f64() / rounds as f64;
    assert_eq!(sum, rounds as u64 * (0..64u64).map(|i| i ^ 64).sum::<u64>());
    println!(
        "new_checked + events + header, BATCH of 64 x 64 B ({} bytes): {:.3} us/frame, {:.2} ns/event, {:.1} M events/s",
        f.len(),
        per_frame * 1e6,
        per_frame * 1e9 / 64.0,
        64.0 / per_frame / 1e6
    );

    let mut buf = vec![0u8; f.len()];
    let t = Instant::now();
    for _ in 0..rounds {
        let mut b = BatchEncoder::new(black_box(&mut buf), 1).unwrap();
        for (h, p) in &events {
            b.push(h, p).unwrap();
        }
        black_box(b.finish().unwrap());
    }
    let per_frame = t.elapsed().as_secs_f64() / rounds as f64;
    assert_eq!(buf, f);
    println!(
        "BatchEncoder, 64 x 64 B: {:.3} us/frame, {:.2} ns/event",
        per_frame * 1e6,
        per_frame * 1e9 / 64.0
    );
}

#[test]
fn version_2_ack_carries_duplicates_and_version_1_folds_them() {
    let ack = Ack {
        through_seq: 9,
        stored: 10,
        dead_lettered: 1,
        rejected: 2,
        duplicates: 5,
    };
    let mut buf = [0u8; 64];
    let n = encode_ack_v2(&mut buf, 3, &ack).unwrap();
    assert_eq!(n, 60);
    let frame = check(&buf[..n]).unwrap();
    assert_eq!((frame.version(), frame.ack()), (2, Some(ack)));
    let n = encode_ack(&mut buf, 3, &ack).unwrap();
    assert_eq!(n, 52);
    let frame = check(&buf[..n]).unwrap();
    let v1 = frame.ack().unwrap();
    assert_eq!((frame.version(), v1.stored, v1.duplicates), (1, 15, 0));
    // A version-2 header with a version-1 body (or the reverse) is malformed.
    let mut bad = [0u8; 64];
    let n = encode_ack(&mut bad, 3, &ack).unwrap();
    bad[4] = 2;
    let crc = crate::wire::crc32c(&bad[..n - 4]);
    bad[n - 4..n].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(check(&bad[..n]).unwrap_err(), DecodeError::BadBodyLength);
    // Versions above the highest spoken are refused.
    bad[4] = 3;
    let crc = crate::wire::crc32c(&bad[..n - 4]);
    bad[n - 4..n].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(
        check(&bad[..n]).unwrap_err(),
        DecodeError::UnsupportedVersion
    );
}

#[test]
fn hello_long_form_for_version_2_speakers() {
    let mut buf = [0u8; 64];
    let short = Hello::client(1, 1, 4096);
    let n = encode_hello(&mut buf, 0, &short).unwrap();
    assert_eq!(n, 36);
    assert_eq!(check(&buf[..n]).unwrap().hello(), Some(short));
    let reply = Hello {
        last_seq: 77,
        max_payload: 256,
        dedup_window_ms: 10_000,
        ..Hello::reply(2, 65_536, 5)
    };
    let reply = Hello {
        producer_id: 0xABCD,
        ..reply
    };
    let n = encode_hello(&mut buf, 1, &reply).unwrap();
    assert_eq!(n, 60);
    let frame = check(&buf[..n]).unwrap();
    assert_eq!((frame.version(), frame.hello()), (1, Some(reply)));
    assert_eq!(Hello::producer(4096, 9).negotiate(1, 2), Some(2));
    assert_eq!(Hello::producer(4096, 9).negotiate(1, 1), Some(1));
    // A short body from a version-2 speaker (or a long one from a version-1 one) is
    // malformed: the reader could not tell which form to expect back.
    let n = encode_hello(&mut buf, 0, &short).unwrap();
    buf[16 + 1] = 2; // max_version 2 in a 16-byte body
    let crc = crate::wire::crc32c(&buf[..n - 4]);
    buf[n - 4..n].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(check(&buf[..n]).unwrap_err(), DecodeError::BadBodyLength);
}

#[test]
fn a_hello_token_follows_the_long_body_and_is_bounded() {
    use crate::wire::{EncodeError, HELLO_TOKEN_MAX, encode_hello_token};
    let mut buf = [0u8; 512];
    let hello = Hello::producer(65_536, 7);
    for token in [&b"t"[..], b"s3cret-token", &[0xAB; HELLO_TOKEN_MAX]] {
        let n = encode_hello_token(&mut buf, 0, &hello, token).unwrap();
        assert_eq!(n, 16 + 42 + token.len() + 4);
        let frame = check(&buf[..n]).unwrap();
        assert_eq!(
            frame.hello(),
            Some(hello),
            "the HELLO's fields are unchanged"
        );
        assert_eq!(frame.hello_token(), Some(token));
    }
    // What cannot be encoded: nothing, too much, or a token in a version-1 (short) HELLO.
    for (h, token) in [
        (hello, &[][..]),
        (hello, &[1; HELLO_TOKEN_MAX + 1][..]),
        (Hello::client(1, 1, 4096), &b"t"[..]),
    ] {
        assert_eq!(
            encode_hello_token(&mut buf, 0, &h, token),
            Err(EncodeError::BadToken { len: token.len() })
        );
    }
    // A token_len that disagrees with the bytes, or is 0, or above the maximum: malformed.
    let n = encode_hello_token(&mut buf, 0, &hello, b"abcd").unwrap();
    for bad_len in [0u16, 3, 5, HELLO_TOKEN_MAX as u16 + 1] {
        let mut f = buf[..n].to_vec();
        f[16 + 40..16 + 42].copy_from_slice(&bad_len.to_le_bytes());
        reseal(&mut f);
        assert_eq!(
            check(&f).unwrap_err(),
            DecodeError::BadBodyLength,
            "{bad_len}"
        );
    }
    // A 41-byte body (a token_len cut short) is malformed too.
    let mut f = buf[..16 + 41].to_vec();
    f[..4].copy_from_slice(&(16u32 + 41 + 4).to_le_bytes());
    f.extend_from_slice(&[0; 4]);
    reseal(&mut f);
    assert_eq!(check(&f).unwrap_err(), DecodeError::BadBodyLength);
    // A token after a body claiming version 1 only: malformed, as a long body would be.
    let mut f = buf[..n].to_vec();
    f[16 + 1] = 1;
    reseal(&mut f);
    assert_eq!(check(&f).unwrap_err(), DecodeError::BadBodyLength);
    // Without a token, or on another kind, there is none.
    let n = encode_hello(&mut buf, 0, &hello).unwrap();
    assert_eq!(check(&buf[..n]).unwrap().hello_token(), None);
}
