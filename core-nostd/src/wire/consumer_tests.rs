//! Unit tests of the version-3 consumer frames: what the validator refuses, and why.

use std::vec;
use std::vec::Vec;

use super::*;
use crate::record::{self, RECORD_HEADER_LEN};

/// `n` sealed records with 3-byte bodies from offset `first` (offsets as given by `offsets`
/// when not consecutive).
fn records(offsets: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    for &o in offsets {
        let at = out.len();
        out.resize(at + RECORD_HEADER_LEN, 0);
        out.extend_from_slice(b"abc");
        record::seal(&mut out[at..], o, record::KIND_EVENT);
    }
    out
}

fn data_frame(first: u64, end: u64, recs: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let prefix = DataPrefix::new(StreamLog::Realtime, first, end, end, recs.len());
    let n = encode_data(&mut buf, 1, &prefix, recs).unwrap();
    buf.truncate(n);
    buf
}

fn check(frame: &[u8]) -> Result<Frame<'_>, DecodeError> {
    Frame::new_checked(frame, 1 << 20)
}

/// Rewrites the trailer of a DATA frame (over its first 48 bytes) after a change there.
fn reseal_data(frame: &mut [u8]) {
    let n = frame.len();
    let crc = crc32c(&frame[..DATA_HEAD_LEN]);
    frame[n - 4..].copy_from_slice(&crc.to_le_bytes());
}

/// Rewrites the trailer of any other frame.
fn reseal(frame: &mut [u8]) {
    let n = frame.len();
    let crc = crc32c(&frame[..n - 4]);
    frame[n - 4..].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn data_frames_round_trip_and_name_their_records() {
    let recs = records(&[5, 6, 7]);
    let f = data_frame(5, 8, &recs);
    let frame = check(&f).unwrap();
    assert_eq!(frame.kind(), FrameKind::Data);
    assert_eq!(frame.data().unwrap().count(), 3);
    let offsets: Vec<u64> = frame.records().map(|r| r.offset()).collect();
    assert_eq!(offsets, [5, 6, 7]);
    assert!(frame.records().all(|r| r.body() == b"abc"));
    // The head and trailer a server writes around records it sends from a file.
    let prefix = frame.data().unwrap();
    let (head, trailer) = encode_data_head(1, &prefix).unwrap();
    assert_eq!(&f[..DATA_HEAD_LEN], &head[..]);
    assert_eq!(&f[f.len() - 4..], &trailer[..]);
}

#[test]
fn data_frames_with_wrong_records_are_refused() {
    // A gap, a repeat, fewer records than the offsets say, more than they say.
    assert_eq!(
        check(&data_frame(5, 8, &records(&[5, 7, 8]))),
        Err(DecodeError::BadCount)
    );
    assert_eq!(
        check(&data_frame(5, 8, &records(&[5, 5, 6]))),
        Err(DecodeError::BadCount)
    );
    assert_eq!(
        check(&data_frame(5, 8, &records(&[5, 6]))),
        Err(DecodeError::BadCount)
    );
    assert_eq!(
        check(&data_frame(5, 7, &records(&[5, 6, 7]))),
        Err(DecodeError::BadCount)
    );
    // No record at all.
    assert_eq!(check(&data_frame(5, 5, &[])), Err(DecodeError::BadCount));
    // A record cut short inside the frame.
    let recs = records(&[5, 6]);
    assert_eq!(
        check(&data_frame(5, 7, &recs[..recs.len() - 1])),
        Err(DecodeError::BadCount)
    );
    // A flipped bit in a record's body: the frame's trailer does not cover it, its CRC does.
    let mut f = data_frame(5, 7, &recs);
    f[DATA_HEAD_LEN + RECORD_HEADER_LEN + 1] ^= 0x10;
    assert_eq!(check(&f), Err(DecodeError::BadCrc));
    // A flipped bit in the prefix: the frame's trailer covers it.
    let mut f = data_frame(5, 7, &recs);
    f[HEADER_LEN + 1] ^= 1;
    assert_eq!(check(&f), Err(DecodeError::BadCrc));
    // `records_len` disagreeing with the body; reserved bytes set.
    let mut f = data_frame(5, 7, &recs);
    f[HEADER_LEN + 24] ^= 1;
    reseal_data(&mut f);
    assert_eq!(check(&f), Err(DecodeError::BadBodyLength));
    let mut f = data_frame(5, 7, &recs);
    f[HEADER_LEN + 30] = 1;
    reseal_data(&mut f);
    assert_eq!(check(&f), Err(DecodeError::ReservedNonZero));
}

#[test]
fn consumer_kinds_need_version_3_and_producer_kinds_refuse_it() {
    let mut buf = [0u8; 64];
    let n = encode_credit(&mut buf, 1, 10).unwrap();
    let mut f = buf[..n].to_vec();
    f[4] = 1;
    reseal(&mut f);
    assert_eq!(check(&f), Err(DecodeError::UnsupportedVersion));
    let n = encode_ack(&mut buf, 1, &Ack::default()).unwrap();
    let mut f = buf[..n].to_vec();
    f[4] = 3;
    reseal(&mut f);
    assert_eq!(check(&f), Err(DecodeError::UnsupportedVersion));
    // Version 4 is nobody's.
    let n = encode_commit(&mut buf, 1, 10).unwrap();
    let mut f = buf[..n].to_vec();
    f[4] = 4;
    reseal(&mut f);
    assert_eq!(check(&f), Err(DecodeError::UnsupportedVersion));
}

#[test]
fn subscribe_bodies_are_checked() {
    let mut buf = [0u8; 256];
    let name = [b'a'; MAX_CONSUMER_NAME];
    let sub = Subscribe::new(StreamLog::DeadLetter, Start::Time(9), 0, &name);
    let n = encode_subscribe(&mut buf, 1, &sub).unwrap();
    let frame = check(&buf[..n]).unwrap();
    let got = frame.subscribe().unwrap();
    assert_eq!(got, sub);
    assert_eq!(got.stream_log(), Some(StreamLog::DeadLetter));
    assert_eq!(got.start_at(), Some(Start::Time(9)));
    let long = [b'a'; MAX_CONSUMER_NAME + 1];
    let sub = Subscribe::new(StreamLog::Batch, Start::Earliest, 0, &long);
    assert_eq!(
        encode_subscribe(&mut buf, 1, &sub),
        Err(EncodeError::NameTooLong { len: 65 })
    );
    // name_len disagreeing with the body; a reserved byte set.
    let sub = Subscribe::new(StreamLog::Batch, Start::Earliest, 0, b"ab");
    let n = encode_subscribe(&mut buf, 1, &sub).unwrap();
    let mut f = buf[..n].to_vec();
    f[HEADER_LEN + 2] = 3;
    reseal(&mut f);
    assert_eq!(check(&f), Err(DecodeError::BadBodyLength));
    let mut f = buf[..n].to_vec();
    f[HEADER_LEN + 25] = 1;
    reseal(&mut f);
    assert_eq!(check(&f), Err(DecodeError::ReservedNonZero));
    // Unknown log and start codes decode (the server refuses them with its own reasons).
    let odd = Subscribe {
        log: 9,
        start: 7,
        start_value: 0,
        credit: 0,
        name: b"",
    };
    let n = encode_subscribe(&mut buf, 1, &odd).unwrap();
    let got = check(&buf[..n]).unwrap().subscribe().unwrap();
    assert_eq!((got.stream_log(), got.start_at()), (None, None));
}

#[test]
fn fixed_bodies_of_the_wrong_size_are_refused() {
    let mut buf = [0u8; 64];
    let n = encode_committed(&mut buf, 1, 10).unwrap();
    // One byte more in the body: the length field and the CRC agree, the size does not.
    let mut f = buf[..n - 4].to_vec();
    f.push(0);
    f.extend_from_slice(&[0; 4]);
    let len = f.len() as u32;
    f[0..4].copy_from_slice(&len.to_le_bytes());
    reseal(&mut f);
    assert_eq!(check(&f), Err(DecodeError::BadBodyLength));
}

#[test]
fn logs_and_starts_have_one_code_and_name_each() {
    for (i, log) in StreamLog::ALL.into_iter().enumerate() {
        assert_eq!(log.as_u8() as usize, i);
        assert_eq!(StreamLog::from_u8(log.as_u8()), Some(log));
        assert_eq!(StreamLog::from_name(log.name()), Some(log));
    }
    assert_eq!(StreamLog::from_u8(5), None);
    for s in [
        Start::Earliest,
        Start::Latest,
        Start::Offset(3),
        Start::Time(4),
    ] {
        let (code, value) = s.to_wire();
        assert_eq!(Start::from_wire(code, value), Some(s));
    }
    assert_eq!(Start::from_wire(4, 0), None);
    assert_eq!(MIN_CONSUMER_FRAME_LEN, 65_676);
}
