//! Property tests of the wire codec: round trips of arbitrary frames, canonical decoding,
//! no panic on any bytes, and stream decoding independent of how the input is split.
//! Skipped under Miri (too slow there; the unit tests cover the same code).

use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::event::{EventHeader, Priority};

/// One frame's content.
#[derive(Clone, Debug, PartialEq)]
enum Msg {
    Event(EventHeader, Vec<u8>),
    Batch(Vec<(EventHeader, Vec<u8>)>),
    Ack(Ack),
    Reject(Reject),
    /// The HELLO and its token (empty: none; only after the long body).
    Hello(Hello, Vec<u8>),
    /// log, start code, start value, credit, name.
    Subscribe(u8, u8, u64, u64, Vec<u8>),
    Subscribed(Subscribed),
    /// first offset, high watermark, the records' bodies (kind 1, consecutive offsets).
    Data(u64, u64, Vec<Vec<u8>>),
    Credit(u64),
    Commit(u64),
    Committed(u64),
}

/// Stored records with consecutive offsets from `first`, back to back.
fn stored_records(first: u64, bodies: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, b) in bodies.iter().enumerate() {
        let at = out.len();
        out.resize(at + crate::record::RECORD_HEADER_LEN, 0);
        out.extend_from_slice(b);
        crate::record::seal(&mut out[at..], first + i as u64, crate::record::KIND_EVENT);
    }
    out
}

fn arb_header() -> impl Strategy<Value = EventHeader> {
    (
        any::<u64>(),
        any::<u16>(),
        0u8..=4,
        any::<u64>(),
        proptest::option::of(any::<i64>()),
    )
        .prop_map(|(id, topic, p, ts, value)| {
            let h = EventHeader::new(id, topic, Priority::from_u8(p).unwrap(), ts);
            match value {
                Some(v) => h.with_value(v),
                None => h,
            }
        })
}

fn arb_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..80),
        1 => proptest::collection::vec(any::<u8>(), 0..1000),
    ]
}

fn arb_msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        (arb_header(), arb_payload()).prop_map(|(h, p)| Msg::Event(h, p)),
        proptest::collection::vec((arb_header(), arb_payload()), 1..12).prop_map(Msg::Batch),
        any::<[u64; 4]>().prop_map(|[a, b, c, d]| Msg::Ack(Ack {
            through_seq: a,
            stored: b,
            dead_lettered: c,
            rejected: d,
            duplicates: 0,
        })),
        (any::<u64>(), any::<u16>(), any::<u16>(), any::<u64>()).prop_map(
            |(frame_seq, reason, index, event_id)| Msg::Reject(Reject {
                frame_seq,
                reason,
                index,
                event_id
            })
        ),
        (
            1u8..=255,
            any::<u8>(),
            20u32..,
            any::<u32>(),
            any::<[u64; 2]>(),
            any::<[u32; 2]>(),
            proptest::collection::vec(any::<u8>(), 0..=HELLO_TOKEN_MAX)
        )
            .prop_map(
                |(min, span, len, source, [id, last], [payload, window], token)| {
                    let max = min.saturating_add(span);
                    // The long body (producer session, limits) only from version-2 speakers,
                    // and a token only after it.
                    let long = max >= 2;
                    let token = if long { token } else { Vec::new() };
                    Msg::Hello(
                        Hello {
                            min_version: min,
                            max_version: max,
                            max_frame_len: len,
                            source,
                            producer_id: if long { id } else { 0 },
                            last_seq: if long { last } else { 0 },
                            max_payload: if long { payload } else { 0 },
                            dedup_window_ms: if long { window } else { 0 },
                        },
                        token,
                    )
                }
            ),
        (
            any::<u8>(),
            any::<u8>(),
            any::<[u64; 2]>(),
            proptest::collection::vec(any::<u8>(), 0..=64)
        )
            .prop_map(|(log, start, [value, credit], name)| Msg::Subscribe(
                log, start, value, credit, name
            )),
        any::<[u64; 4]>().prop_map(|[a, b, c, d]| Msg::Subscribed(Subscribed {
            start_offset: a,
            first_offset: b,
            high_watermark: c,
            committed: d,
        })),
        (
            0u64..u64::MAX / 2,
            any::<u64>(),
            proptest::collection::vec(arb_payload(), 1..8)
        )
            .prop_map(|(first, hw, bodies)| Msg::Data(first, hw, bodies)),
        any::<u64>().prop_map(Msg::Credit),
        any::<u64>().prop_map(Msg::Commit),
        any::<u64>().prop_map(Msg::Committed),
    ]
}

fn encode(seq: u64, msg: &Msg) -> Vec<u8> {
    let mut buf = vec![0u8; 1 << 17];
    let n = match msg {
        Msg::Event(h, p) => encode_event(&mut buf, seq, h, p).unwrap(),
        Msg::Batch(events) => {
            let mut b = BatchEncoder::new(&mut buf, seq).unwrap();
            for (h, p) in events {
                b.push(h, p).unwrap();
            }
            b.finish().unwrap()
        }
        Msg::Ack(a) => encode_ack(&mut buf, seq, a).unwrap(),
        Msg::Reject(r) => encode_reject(&mut buf, seq, r).unwrap(),
        Msg::Hello(h, t) if t.is_empty() => encode_hello(&mut buf, seq, h).unwrap(),
        Msg::Hello(h, t) => encode_hello_token(&mut buf, seq, h, t).unwrap(),
        Msg::Subscribe(log, start, start_value, credit, name) => {
            let sub = Subscribe {
                log: *log,
                start: *start,
                start_value: *start_value,
                credit: *credit,
                name,
            };
            encode_subscribe(&mut buf, seq, &sub).unwrap()
        }
        Msg::Subscribed(x) => encode_subscribed(&mut buf, seq, x).unwrap(),
        Msg::Data(first, hw, bodies) => {
            let records = stored_records(*first, bodies);
            let end = first + bodies.len() as u64;
            let prefix = DataPrefix::new(StreamLog::Batch, *first, end, *hw, records.len());
            encode_data(&mut buf, seq, &prefix, &records).unwrap()
        }
        Msg::Credit(x) => encode_credit(&mut buf, seq, *x).unwrap(),
        Msg::Commit(x) => encode_commit(&mut buf, seq, *x).unwrap(),
        Msg::Committed(x) => encode_committed(&mut buf, seq, *x).unwrap(),
    };
    buf.truncate(n);
    buf
}

/// The content of a valid frame, read back through the accessors.
fn decode(frame: &Frame<'_>) -> Msg {
    let events = || -> Vec<(EventHeader, Vec<u8>)> {
        frame
            .events()
            .map(|e| (e.header(), e.payload().to_vec()))
            .collect()
    };
    match frame.kind() {
        FrameKind::Event => {
            let mut one = events();
            assert_eq!(one.len(), 1);
            let (h, p) = one.remove(0);
            Msg::Event(h, p)
        }
        FrameKind::Batch => {
            let all = events();
            assert_eq!(all.len(), frame.event_count() as usize);
            Msg::Batch(all)
        }
        FrameKind::Ack => Msg::Ack(frame.ack().unwrap()),
        FrameKind::Reject => Msg::Reject(frame.reject().unwrap()),
        FrameKind::Hello => Msg::Hello(
            frame.hello().unwrap(),
            frame.hello_token().map(<[u8]>::to_vec).unwrap_or_default(),
        ),
        FrameKind::Subscribe => {
            let s = frame.subscribe().unwrap();
            Msg::Subscribe(s.log, s.start, s.start_value, s.credit, s.name.to_vec())
        }
        FrameKind::Subscribed => Msg::Subscribed(frame.subscribed().unwrap()),
        FrameKind::Data => {
            let p = frame.data().unwrap();
            assert_eq!(p.log, StreamLog::Batch.as_u8());
            let bodies: Vec<Vec<u8>> = frame.records().map(|r| r.body().to_vec()).collect();
            assert_eq!(bodies.len() as u64, p.count());
            Msg::Data(p.first_offset, p.high_watermark, bodies)
        }
        FrameKind::Credit => Msg::Credit(frame.credit().unwrap()),
        FrameKind::Commit => Msg::Commit(frame.commit().unwrap()),
        FrameKind::Committed => Msg::Committed(frame.committed().unwrap()),
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Every callback of a decoder fed `pieces`: the frame's bytes or the error.
fn feed_all(pieces: &[&[u8]], max: usize) -> (Vec<Result<Vec<u8>, FrameError>>, u64) {
    let mut d: StreamDecoder<32_768> = StreamDecoder::with_max_frame_len(max);
    let mut out = Vec::new();
    for p in pieces {
        d.feed_detailed(p, |r| out.push(r.map(|f| f.as_bytes().to_vec())));
    }
    (out, d.discarded_bytes())
}

/// `s` cut at the given points (taken modulo its length, sorted).
fn split<'s>(s: &'s [u8], cuts: &[usize]) -> Vec<&'s [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (s.len() + 1)).collect();
    points.sort_unstable();
    let mut pieces = Vec::new();
    let mut at = 0;
    for p in points {
        pieces.push(&s[at..p]);
        at = p;
    }
    pieces.push(&s[at..]);
    pieces
}

proptest! {
    #![proptest_config(config())]

    #[test]
    #[cfg_attr(miri, ignore)]
    fn round_trip_every_kind(seq in any::<u64>(), msg in arb_msg()) {
        let bytes = encode(seq, &msg);
        let frame = Frame::new_checked(&bytes, bytes.len()).unwrap();
        prop_assert_eq!(frame.seq(), seq);
        let back = decode(&frame);
        prop_assert_eq!(&back, &msg);
        prop_assert_eq!(&encode(seq, &back), &bytes);
        // A limit one byte lower refuses it; a datagram of it yields it.
        prop_assert_eq!(Frame::new_checked(&bytes, bytes.len() - 1), Err(DecodeError::TooLong));
        let all: Vec<_> = frames(&bytes, DEFAULT_MAX_FRAME_LEN).collect();
        prop_assert_eq!(all, vec![Ok(frame)]);
    }

    /// Whatever single byte is changed (CRC recomputed), the frame is refused or decodes to
    /// something that encodes back to the very same bytes: the decoder accepts only
    /// canonical encodings.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn decoding_is_canonical(seq in any::<u64>(), msg in arb_msg(), at in any::<usize>(), byte in any::<u8>()) {
        let mut bytes = encode(seq, &msg);
        let n = bytes.len();
        let at = 4 + at % (n - 8); // keep the length field and the trailer
        bytes[at] = byte;
        let crc = crc32c(&bytes[..n - 4]);
        bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
        if let Ok(frame) = Frame::new_checked(&bytes, DEFAULT_MAX_FRAME_LEN) {
            prop_assert_eq!(encode(frame.seq(), &decode(&frame)), bytes);
        }
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        max in 0usize..700,
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        for m in [max, DEFAULT_MAX_FRAME_LEN, usize::MAX] {
            if let Ok(frame) = Frame::new_checked(&bytes, m) {
                let _ = decode(&frame);
            }
            for frame in frames(&bytes, m).flatten() {
                let _ = decode(&frame);
            }
        }
        let (whole, discarded) = feed_all(&[&bytes], max.clamp(20, 4096));
        let (pieces, discarded2) = feed_all(&split(&bytes, &cuts), max.clamp(20, 4096));
        prop_assert_eq!(whole, pieces);
        prop_assert_eq!(discarded, discarded2);
    }

    /// Random bytes almost never carry a valid CRC: give them one, so the checks after the
    /// CRC see arbitrary input too.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn arbitrary_bodies_with_valid_crc_never_panic(
        kind in 0u8..7,
        seq in any::<u64>(),
        body in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let len = (HEADER_LEN + body.len() + TRAILER_LEN) as u32;
        let mut f = Vec::new();
        f.extend_from_slice(&len.to_le_bytes());
        f.extend_from_slice(&[VERSION, kind, 0, 0]);
        f.extend_from_slice(&seq.to_le_bytes());
        f.extend_from_slice(&body);
        let crc = crc32c(&f);
        f.extend_from_slice(&crc.to_le_bytes());
        if let Ok(frame) = Frame::new_checked(&f, DEFAULT_MAX_FRAME_LEN) {
            prop_assert_eq!(encode(seq, &decode(&frame)), f);
        }
    }

    /// Any split of a stream of several frames (one of them corrupt, optionally followed by a
    /// length field out of bounds) yields exactly what feeding it whole does.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn any_split_yields_the_same_frames(
        msgs in proptest::collection::vec(arb_msg(), 1..6),
        corrupt in any::<Option<(usize, usize)>>(),
        poison in any::<bool>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let mut stream = Vec::new();
        let mut starts = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            starts.push(stream.len());
            stream.extend(encode(i as u64, m));
        }
        if let Some((which, at)) = corrupt {
            let start = starts[which % starts.len()];
            let len = frame_len(&stream[start..]).unwrap();
            stream[start + 4 + at % (len - 4)] ^= 0x10; // not the length field
        }
        if poison {
            stream.extend_from_slice(&9u32.to_le_bytes());
            stream.extend_from_slice(&[0xAB; 40]);
        }
        let (whole, discarded) = feed_all(&[&stream], 32_768);
        prop_assert_eq!(whole.len(), msgs.len() + usize::from(poison));
        prop_assert_eq!(discarded, if poison { 44 } else { 0 });
        let oks = whole.iter().filter(|r| r.is_ok()).count();
        prop_assert_eq!(oks, msgs.len() - usize::from(corrupt.is_some()));
        let pieces = split(&stream, &cuts);
        prop_assert_eq!(feed_all(&pieces, 32_768), (whole.clone(), discarded));
        let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
        prop_assert_eq!(feed_all(&bytewise, 32_768), (whole, discarded));
    }
}
