//! The consumer against a fake consumer listener: a thread speaking protocol version 3 with
//! the core's encoders (`docs/PROTOCOL.md` §12), so that each test controls exactly which
//! frames arrive when (credit, interleaved COMMITTED, damage, a dropped connection).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use pinstream_client::{Consumer, ConsumerOptions, rejection};
use pinstream_core::event::{EventHeader, Lane, Origin, Priority};
use pinstream_core::process::StoredEvent;
use pinstream_core::reason::Reason;
use pinstream_core::record::{self, RECORD_HEADER_LEN, RecordBody};
use pinstream_core::wire::{
    self, DataPrefix, Frame, FrameKind, Hello, MAX_STORED_RECORD, NO_COMMIT, Reject, Start,
    StreamLog, Subscribed,
};

const SHORT: Duration = Duration::from_millis(200);

/// A stored event record at `offset` with id `offset + 1000` and `payload`.
fn event_record(offset: u64, payload: &[u8]) -> Vec<u8> {
    let header = EventHeader::new(offset + 1000, 0, Priority::High, 42);
    let ev = StoredEvent {
        lane: Lane::Realtime,
        header: &header,
        origin: Origin::new(1, offset),
        received: 7,
        payload,
    };
    let mut rec = vec![0u8; RECORD_HEADER_LEN + record::event_len(payload.len())];
    let n = record::encode_event(&mut rec[RECORD_HEADER_LEN..], &ev).unwrap();
    assert_eq!(RECORD_HEADER_LEN + n, rec.len());
    record::seal(&mut rec, offset, record::KIND_EVENT);
    rec
}

/// A DATA frame of the realtime log carrying records `first..end`, each with `payload`.
fn data_frame(seq: u64, first: u64, end: u64, hw: u64, payload: &[u8]) -> Vec<u8> {
    let records: Vec<u8> = (first..end)
        .flat_map(|o| event_record(o, payload))
        .collect();
    data_frame_of(seq, first, end, hw, &records)
}

fn data_frame_of(seq: u64, first: u64, end: u64, hw: u64, records: &[u8]) -> Vec<u8> {
    let prefix = DataPrefix::new(StreamLog::Realtime, first, end, hw, records.len());
    let mut buf = vec![0u8; prefix.frame_len()];
    let n = wire::encode_data(&mut buf, seq, &prefix, records).unwrap();
    assert_eq!(n, buf.len());
    buf
}

fn read_frame(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    let mut frame = vec![0u8; len];
    frame[..4].copy_from_slice(&(len as u32).to_le_bytes());
    s.read_exact(&mut frame[4..])?;
    Frame::new_checked(&frame, 1 << 20).expect("the consumer sends valid frames");
    Ok(frame)
}

/// What the fake server saw of a subscription.
#[derive(Debug)]
struct Sub {
    start: Start,
    credit: u64,
    name: Vec<u8>,
}

/// Reads the HELLO and the SUBSCRIBE, answers HELLO and (unless `reject`) SUBSCRIBED.
fn handshake(s: &mut TcpStream, answer: Subscribed, reject: Option<Reason>) -> Sub {
    let hello = read_frame(s).unwrap();
    let hello = Frame::new_checked(&hello, 1 << 20)
        .unwrap()
        .hello()
        .unwrap();
    assert_eq!((hello.min_version, hello.max_version), (3, 3));
    assert!(hello.max_frame_len as usize >= wire::MIN_CONSUMER_FRAME_LEN);
    let mut out = [0u8; 128];
    let n = wire::encode_hello(&mut out, 1, &Hello::reply(3, 65_536, 9)).unwrap();
    s.write_all(&out[..n]).unwrap();
    let sub = read_frame(s).unwrap();
    let frame = Frame::new_checked(&sub, 1 << 20).unwrap();
    assert_eq!(frame.seq(), 1);
    let sub = frame.subscribe().unwrap();
    let seen = Sub {
        start: sub.start_at().unwrap(),
        credit: sub.credit,
        name: sub.name.to_vec(),
    };
    let n = match reject {
        Some(r) => wire::encode_reject(&mut out, 2, &Reject::frame(1, r)).unwrap(),
        None => wire::encode_subscribed(&mut out, 2, &answer).unwrap(),
    };
    s.write_all(&out[..n]).unwrap();
    seen
}

fn subscribed(start: u64, hw: u64) -> Subscribed {
    Subscribed {
        start_offset: start,
        first_offset: 0,
        high_watermark: hw,
        committed: NO_COMMIT,
    }
}

fn server<T: Send + 'static>(
    f: impl FnOnce(TcpListener) -> T + Send + 'static,
) -> (SocketAddr, thread::JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, thread::spawn(move || f(listener)))
}

fn options() -> ConsumerOptions {
    ConsumerOptions {
        timeout: Duration::from_secs(5),
        ..ConsumerOptions::new(StreamLog::Realtime, Start::Earliest)
    }
}

#[test]
fn reads_records_in_order_across_data_frames() {
    let (addr, srv) = server(|l| {
        let (mut s, _) = l.accept().unwrap();
        let sub = handshake(&mut s, subscribed(0, 12), None);
        for (i, first) in [0u64, 4, 8].into_iter().enumerate() {
            s.write_all(&data_frame(3 + i as u64, first, first + 4, 12, b"hello"))
                .unwrap();
        }
        // Keep the connection open until the consumer is done.
        let _ = read_frame(&mut s);
        sub
    });
    let mut c = Consumer::connect(addr, options()).unwrap();
    assert_eq!(c.subscribed().high_watermark, 12);
    for want in 0..12u64 {
        let rec = c.next_timeout(Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(rec.offset(), want);
        assert_eq!(rec.kind(), record::KIND_EVENT);
        match rec.decode().unwrap() {
            RecordBody::Event(e) => {
                assert_eq!(e.header.id, want + 1000);
                assert_eq!(e.payload, b"hello");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        c.next_timeout(SHORT).unwrap().is_none(),
        "nothing more came"
    );
    assert_eq!((c.position(), c.high_watermark(), c.lag()), (12, 12, 0));
    assert_eq!(c.records(), 12);
    drop(c);
    let sub = srv.join().unwrap();
    assert_eq!(sub.start, Start::Earliest);
    assert_eq!(sub.credit, 4 << 20, "the initial credit is the window");
    assert!(sub.name.is_empty());
}

#[test]
fn credit_is_granted_back_and_never_exceeded() {
    const RECORDS: u64 = 40;
    let payload = vec![b'x'; 10_000];
    let (addr, srv) = server(move |l| {
        let (mut s, _) = l.accept().unwrap();
        let sub = handshake(&mut s, subscribed(0, RECORDS), None);
        let mut credit = sub.credit;
        let (mut sent, mut credits, mut seq) = (0u64, 0u32, 3u64);
        while sent < RECORDS {
            let frame = data_frame(seq, sent, sent + 1, RECORDS, &payload);
            let records_len = (frame.len() - wire::DATA_OVERHEAD) as u64;
            if records_len <= credit {
                s.write_all(&frame).unwrap();
                credit -= records_len;
                sent += 1;
                seq += 1;
                continue;
            }
            // Out of credit: only a CREDIT can let us go on.
            let f = read_frame(&mut s).unwrap();
            let f = Frame::new_checked(&f, 1 << 20).unwrap();
            assert_eq!(f.kind(), FrameKind::Credit);
            credit = credit.saturating_add(f.credit().unwrap());
            credits += 1;
        }
        // Read until the consumer goes away: closing first would reset a CREDIT it sends
        // after the last record, and the consumer would take that for a lost connection.
        while read_frame(&mut s).is_ok() {}
        credits
    });
    let opts = ConsumerOptions {
        window_bytes: MAX_STORED_RECORD as u64,
        ..options()
    };
    let mut c = Consumer::connect(addr, opts).unwrap();
    for want in 0..RECORDS {
        let rec = c.next_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(rec.map(|r| r.offset()), Some(want));
    }
    drop(c);
    let credits = srv.join().unwrap();
    assert!(
        credits >= 5,
        "{credits} CREDIT frames for 6 windows of records"
    );
}

#[test]
fn commit_waits_for_committed_and_keeps_the_data_around_it() {
    let (addr, srv) = server(|l| {
        let (mut s, _) = l.accept().unwrap();
        let sub = handshake(&mut s, subscribed(0, 6), None);
        s.write_all(&data_frame(3, 0, 2, 6, b"a")).unwrap();
        let commit = read_frame(&mut s).unwrap();
        let offset = Frame::new_checked(&commit, 1 << 20)
            .unwrap()
            .commit()
            .expect("a COMMIT");
        // DATA before and after the COMMITTED: none may be lost.
        s.write_all(&data_frame(4, 2, 4, 6, b"b")).unwrap();
        let mut out = [0u8; 64];
        let n = wire::encode_committed(&mut out, 5, offset).unwrap();
        s.write_all(&out[..n]).unwrap();
        s.write_all(&data_frame(6, 4, 6, 6, b"c")).unwrap();
        let _ = read_frame(&mut s);
        (sub, offset)
    });
    let opts = ConsumerOptions {
        name: Some("app-1".into()),
        ..options()
    };
    let mut c = Consumer::connect(addr, opts).unwrap();
    let first: Vec<u64> = (0..2)
        .map(|_| {
            c.next_timeout(Duration::from_secs(5))
                .unwrap()
                .unwrap()
                .offset()
        })
        .collect();
    assert_eq!(first, [0, 1]);
    assert_eq!(c.commit_position().unwrap(), 2);
    let rest: Vec<u64> = (0..4)
        .map(|_| {
            c.next_timeout(Duration::from_secs(5))
                .unwrap()
                .unwrap()
                .offset()
        })
        .collect();
    assert_eq!(rest, [2, 3, 4, 5]);
    drop(c);
    let (sub, offset) = srv.join().unwrap();
    assert_eq!(sub.name, b"app-1");
    assert_eq!(offset, 2);
}

#[test]
fn an_anonymous_consumer_cannot_commit() {
    let (addr, srv) = server(|l| {
        let (mut s, _) = l.accept().unwrap();
        handshake(&mut s, subscribed(0, 0), None);
        let _ = read_frame(&mut s);
    });
    let mut c = Consumer::connect(addr, options()).unwrap();
    let e = c.commit(0).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    drop(c);
    srv.join().unwrap();
}

#[test]
fn a_damaged_record_is_an_error_not_a_silent_skip() {
    let (addr, srv) = server(|l| {
        let (mut s, _) = l.accept().unwrap();
        handshake(&mut s, subscribed(0, 2), None);
        let mut records = event_record(0, b"fine");
        let mut bad = event_record(1, b"damaged");
        let last = bad.len() - 1;
        bad[last] ^= 0x20; // one bit of the payload, after sealing
        records.extend_from_slice(&bad);
        // The frame's own trailer covers only its head: it is still valid.
        s.write_all(&data_frame_of(3, 0, 2, 2, &records)).unwrap();
        let _ = read_frame(&mut s);
    });
    let mut c = Consumer::connect(addr, options()).unwrap();
    let e = c.next_timeout(Duration::from_secs(5)).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("BadCrc"), "{e}");
    drop(c);
    srv.join().unwrap();
}

#[test]
fn a_dropped_connection_resumes_without_duplicates() {
    let (addr, srv) = server(|l| {
        // First connection: records 0..5 and half of the frame 5..8, then gone.
        let (mut s, _) = l.accept().unwrap();
        let first = handshake(&mut s, subscribed(0, 8), None);
        s.write_all(&data_frame(3, 0, 5, 8, b"one")).unwrap();
        let next = data_frame(4, 5, 8, 8, b"one");
        s.write_all(&next[..next.len() / 2]).unwrap();
        drop(s);
        // Second: the name's committed position (3) is below where the consumer was.
        let (mut s, _) = l.accept().unwrap();
        let again = handshake(
            &mut s,
            Subscribed {
                committed: 3,
                ..subscribed(3, 8)
            },
            None,
        );
        s.write_all(&data_frame(3, 3, 8, 8, b"two")).unwrap();
        let _ = read_frame(&mut s);
        (first, again)
    });
    let opts = ConsumerOptions {
        name: Some("resumer".into()),
        ..options()
    };
    let mut c = Consumer::connect(addr, opts).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 8 {
        let rec = c.next_timeout(Duration::from_secs(5)).unwrap().unwrap();
        let payload = match rec.decode().unwrap() {
            RecordBody::Event(e) => e.payload.to_vec(),
            other => panic!("{other:?}"),
        };
        seen.push((rec.offset(), payload));
    }
    let offsets: Vec<u64> = seen.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (0..8).collect::<Vec<_>>(),
        "each record once, in order"
    );
    assert_eq!(seen[4].1, b"one");
    assert_eq!(seen[5].1, b"two", "5.. came over the second connection");
    assert_eq!(c.reconnects(), 1);
    assert_eq!(c.subscribed().committed, 3);
    drop(c);
    let (first, again) = srv.join().unwrap();
    assert_eq!(first.start, Start::Earliest);
    assert_eq!(
        again.start,
        Start::Offset(5),
        "resubscribed at the position"
    );
    assert_eq!(again.name, b"resumer");
}

#[test]
fn a_lost_connection_without_reconnect_is_an_error() {
    let (addr, srv) = server(|l| {
        let (mut s, _) = l.accept().unwrap();
        handshake(&mut s, subscribed(0, 1), None);
    });
    let opts = ConsumerOptions {
        reconnect: false,
        ..options()
    };
    let mut c = Consumer::connect(addr, opts).unwrap();
    srv.join().unwrap();
    let e = c.next_timeout(Duration::from_secs(5)).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
}

#[test]
fn unknown_log_is_a_clear_refusal() {
    let (addr, srv) = server(|l| {
        let (mut s, _) = l.accept().unwrap();
        handshake(&mut s, subscribed(0, 0), Some(Reason::UnknownLog));
    });
    let opts = ConsumerOptions::new(StreamLog::Aggregates, Start::Latest);
    let e = Consumer::connect(addr, opts).unwrap_err();
    srv.join().unwrap();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    let text = e.to_string();
    assert!(text.contains("unknown_log (code 23)"), "{text}");
    assert!(text.contains("aggregates"), "{text}");
    assert_eq!(rejection(&e).unwrap().reason(), Some(Reason::UnknownLog));
}

#[test]
fn bad_names_are_refused_before_connecting() {
    // Nothing listens on port 1: a name error must come first.
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    for name in ["", "has space", "../up", ".", &"n".repeat(65)] {
        let opts = ConsumerOptions {
            name: Some(name.to_owned()),
            ..options()
        };
        let e = Consumer::connect(addr, opts).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{name:?}: {e}");
    }
}
