//! Consumers (`docs/PROTOCOL.md` §12) against a real engine on loopback: a small raw
//! consumer built on the core codec subscribes, reads DATA frames, grants credit and
//! commits, and every frame it receives is checked against the contract (whole records,
//! never past the high watermark, never over the consumer's `max_frame_len` or credit).

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pinstream_client::{Producer, ProducerOptions};
use pinstream_core::event::{EventHeader, Priority};
use pinstream_core::reason::Reason;
use pinstream_core::record::{self, RecordBody};
use pinstream_core::wire::{
    self, Frame, FrameKind, Hello, Reject, Start, StreamDecoder, StreamLog, Subscribe, Subscribed,
};
use pinstream_host::consumers::ConsumerSettings;
use pinstream_host::engine::{Engine, EngineConfig, EngineHandle};
use pinstream_host::storage::{LogId, LogReader};
use pinstream_tests::TempDir;

/// The largest frame the test consumer receives (and its decoder holds).
const MAX_FRAME: usize = 256 << 10;
/// How long a read waits before the test calls it "nothing arrived".
const WAIT: Duration = Duration::from_secs(10);

/// One stored record as the consumer got it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rec {
    offset: u64,
    kind: u8,
    body: Vec<u8>,
}

/// What the server sent.
#[derive(Debug)]
enum Got {
    Hello(Hello),
    Subscribed(Subscribed),
    Data {
        first: u64,
        end: u64,
        high_watermark: u64,
        records_len: u32,
        records: Vec<Rec>,
    },
    Committed(u64),
    Reject(Reject),
}

/// A consumer speaking the raw protocol.
struct RawConsumer {
    s: TcpStream,
    dec: Box<StreamDecoder<MAX_FRAME>>,
    seq: u64,
    queue: std::collections::VecDeque<Got>,
    /// Credit the server may still use; every DATA frame is checked against it.
    credit: u64,
}

impl RawConsumer {
    fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut c = Self {
            s,
            dec: Box::new(StreamDecoder::new()),
            seq: 0,
            queue: Default::default(),
            credit: 0,
        };
        let mut buf = [0u8; 128];
        let n = wire::encode_hello(&mut buf, 0, &Hello::consumer(MAX_FRAME as u32)).unwrap();
        c.s.write_all(&buf[..n]).unwrap();
        match c.next().expect("a HELLO reply") {
            Got::Hello(h) => assert_eq!((h.min_version, h.max_version), (3, 3)),
            other => panic!("expected HELLO, got {other:?}"),
        }
        c
    }

    fn send_subscribe(&mut self, log: u8, start: Start, credit: u64, name: &[u8]) {
        let mut sub = Subscribe::new(StreamLog::Realtime, start, credit, name);
        sub.log = log;
        self.seq += 1;
        let mut buf = [0u8; 256];
        let n = wire::encode_subscribe(&mut buf, self.seq, &sub).unwrap();
        self.s.write_all(&buf[..n]).unwrap();
        self.credit = credit;
    }

    /// SUBSCRIBE, expecting SUBSCRIBED.
    fn subscribe(&mut self, log: LogId, start: Start, credit: u64, name: &str) -> Subscribed {
        self.send_subscribe(log.index() as u8, start, credit, name.as_bytes());
        match self.next().expect("a SUBSCRIBED") {
            Got::Subscribed(s) => s,
            other => panic!("expected SUBSCRIBED, got {other:?}"),
        }
    }

    fn grant(&mut self, bytes: u64) {
        self.seq += 1;
        let mut buf = [0u8; 64];
        let n = wire::encode_credit(&mut buf, self.seq, bytes).unwrap();
        self.s.write_all(&buf[..n]).unwrap();
        self.credit += bytes;
    }

    fn send_commit(&mut self, offset: u64) {
        self.seq += 1;
        let mut buf = [0u8; 64];
        let n = wire::encode_commit(&mut buf, self.seq, offset).unwrap();
        self.s.write_all(&buf[..n]).unwrap();
    }

    /// The next frame, or `None` when the connection closed or nothing came within the
    /// read timeout.
    fn next(&mut self) -> Option<Got> {
        let mut buf = vec![0u8; 64 << 10];
        while self.queue.is_empty() {
            let n = match self.s.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None;
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            };
            let queue = &mut self.queue;
            self.dec.feed(&buf[..n], |r| {
                let f: Frame<'_> = r.expect("a valid frame from the server");
                assert!(
                    f.as_bytes().len() <= MAX_FRAME,
                    "a frame over max_frame_len"
                );
                queue.push_back(match f.kind() {
                    FrameKind::Hello => Got::Hello(f.hello().unwrap()),
                    FrameKind::Subscribed => Got::Subscribed(f.subscribed().unwrap()),
                    FrameKind::Committed => Got::Committed(f.committed().unwrap()),
                    FrameKind::Reject => Got::Reject(f.reject().unwrap()),
                    FrameKind::Data => {
                        let p = f.data().unwrap();
                        Got::Data {
                            first: p.first_offset,
                            end: p.end_offset,
                            high_watermark: p.high_watermark,
                            records_len: p.records_len,
                            records: f
                                .records()
                                .map(|r| Rec {
                                    offset: r.offset(),
                                    kind: r.kind(),
                                    body: r.body().to_vec(),
                                })
                                .collect(),
                        }
                    }
                    k => panic!("unexpected kind {k:?} from the server"),
                });
            });
        }
        let got = self.queue.pop_front();
        if let Some(Got::Data {
            first,
            end,
            high_watermark,
            records_len,
            records,
        }) = &got
        {
            // The contract of every DATA frame.
            assert!(end > first);
            assert!(
                *end <= *high_watermark,
                "records at or past the high watermark"
            );
            assert_eq!(records.len() as u64, end - first, "one record per offset");
            assert!(
                u64::from(*records_len) <= self.credit,
                "a DATA frame of {records_len} bytes with {} bytes of credit",
                self.credit
            );
            self.credit -= u64::from(*records_len);
        }
        got
    }

    /// DATA frames until the records reach `end` (offset), granting `grant` bytes whenever
    /// the credit left falls below half of it (0: never).
    fn read_until(&mut self, end: u64, grant: u64) -> Vec<Rec> {
        let mut out: Vec<Rec> = Vec::new();
        while out.last().is_none_or(|r| r.offset + 1 < end) {
            if grant > 0 && self.credit < grant / 2 {
                self.grant(grant);
            }
            match self.next() {
                Some(Got::Data { records, .. }) => out.extend(records),
                other => panic!(
                    "expected DATA up to {end} (have {:?}), got {other:?}",
                    out.last().map(|r| r.offset)
                ),
            }
        }
        out
    }

    /// Expects a REJECT with `reason`, then the connection closed.
    fn expect_reject(&mut self, reason: Reason) {
        match self.next() {
            Some(Got::Reject(r)) => assert_eq!(r.reason(), Some(reason), "{r:?}"),
            other => panic!("expected REJECT {reason:?}, got {other:?}"),
        }
        assert!(
            self.next().is_none(),
            "the connection is closed after a REJECT"
        );
    }
}

fn config(dir: &TempDir) -> EngineConfig {
    let mut cfg = EngineConfig::local(dir.path());
    cfg.consumers = ConsumerSettings::on("127.0.0.1:0".parse().unwrap());
    cfg
}

fn start(dir: &TempDir) -> EngineHandle {
    Engine::start(config(dir)).unwrap()
}

/// A payload that says which event it is.
fn payload(id: u64) -> Vec<u8> {
    let len = (id % 97) as usize;
    (0..len).map(|i| (id as usize + i) as u8).collect()
}

const PRIORITIES: [Priority; 5] = [
    Priority::Critical,
    Priority::High,
    Priority::Medium,
    Priority::Low,
    Priority::Batch,
];

/// Produces events `ids` with rotating priorities (all three lanes); waits for every ack.
fn produce(engine: &EngineHandle, ids: std::ops::Range<u64>) {
    let mut p = Producer::connect(engine.started.tcp.unwrap(), ProducerOptions::default()).unwrap();
    let n = ids.end - ids.start;
    for id in ids {
        let prio = PRIORITIES[(id % 5) as usize];
        p.push(&EventHeader::new(id, 0, prio, 0), &payload(id))
            .unwrap();
    }
    let t = p.flush().unwrap();
    assert_eq!(t.stored, n, "{t:?}");
}

/// Produces realtime events `ids`.
fn produce_realtime(engine: &EngineHandle, ids: std::ops::Range<u64>) {
    let mut p = Producer::connect(engine.started.tcp.unwrap(), ProducerOptions::default()).unwrap();
    let n = ids.end - ids.start;
    for id in ids {
        p.push(&EventHeader::new(id, 0, Priority::High, 0), &payload(id))
            .unwrap();
    }
    assert_eq!(p.flush().unwrap().stored, n);
}

/// Every record of `log` as the engine's own reader sees it.
fn stored(dir: &TempDir, log: LogId) -> Vec<Rec> {
    let mut r = LogReader::open(&dir.path().join(log.name())).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next_record() {
        let rec = rec.unwrap();
        out.push(Rec {
            offset: rec.offset,
            kind: rec.kind,
            body: rec.body.to_vec(),
        });
    }
    out
}

/// `got == expected`, reporting the first difference only (the records are many).
fn same(got: &[Rec], expected: &[Rec], what: &str) {
    if let Some(i) = (0..got.len().min(expected.len())).find(|&i| got[i] != expected[i]) {
        panic!(
            "{what}: record {i} differs: got {:?}, stored {:?}",
            got[i], expected[i]
        );
    }
    assert_eq!(got.len(), expected.len(), "{what}: record counts");
}

fn event_of(r: &Rec) -> (u64, Vec<u8>, u64) {
    match record::decode(r.kind, &r.body).unwrap() {
        RecordBody::Event(e) => (e.header.id, e.payload.to_vec(), e.received),
        other => panic!("not an event: {other:?}"),
    }
}

#[test]
fn every_log_is_read_back_whole_and_in_order() {
    let dir = TempDir::new("consumers-all");
    let engine = start(&dir);
    let addr = engine.consumer_addr().unwrap();
    produce(&engine, 0..20_000);
    let mut seen = 0;
    for log in [LogId::Realtime, LogId::Transactional, LogId::Batch] {
        let expected = stored(&dir, log);
        assert!(!expected.is_empty(), "{log:?} has records");
        let mut c = RawConsumer::connect(addr);
        // A small credit, granted again and again: frames stay within it.
        let s = c.subscribe(log, Start::Earliest, 50_000, "");
        assert_eq!((s.start_offset, s.first_offset), (0, 0));
        // The batch log may have a window's aggregate written but not yet durable: the
        // consumer gets it once it is (read_until waits), not before.
        let mut got = c.read_until(expected.len() as u64, 50_000);
        // The batch log may take an aggregate more (a window closing) after the snapshot.
        got.truncate(expected.len());
        same(&got, &expected, &format!("{log:?}"));
        for r in &got {
            if r.kind == record::KIND_AGGREGATE {
                // The batch log holds its windows' aggregates too.
                continue;
            }
            let (id, body, _) = event_of(r);
            assert_eq!(body, payload(id));
            let lane = match PRIORITIES[(id % 5) as usize] {
                Priority::Critical | Priority::High => LogId::Realtime,
                Priority::Medium => LogId::Transactional,
                _ => LogId::Batch,
            };
            assert_eq!(lane, log);
            seen += 1;
        }
    }
    assert_eq!(seen, 20_000);
    // The dead-letter log is empty: subscribing works, nothing arrives.
    let mut c = RawConsumer::connect(addr);
    let s = c.subscribe(LogId::DeadLetter, Start::Earliest, 1 << 20, "");
    assert_eq!(s.high_watermark, 0);
    engine.stop().unwrap();
}

#[test]
fn start_at_an_offset_at_latest_and_at_a_time() {
    let dir = TempDir::new("consumers-start");
    let engine = start(&dir);
    let addr = engine.consumer_addr().unwrap();
    produce_realtime(&engine, 0..2000);
    let expected = stored(&dir, LogId::Realtime);

    let mut c = RawConsumer::connect(addr);
    let s = c.subscribe(LogId::Realtime, Start::Offset(1234), 1 << 20, "");
    assert_eq!(s.start_offset, 1234);
    let got = c.read_until(2000, 1 << 20);
    same(&got, &expected[1234..], "from 1234");

    // Latest: only what is stored from now on, woken as soon as it is durable.
    let mut c = RawConsumer::connect(addr);
    let s = c.subscribe(LogId::Realtime, Start::Latest, 1 << 20, "");
    assert_eq!(s.start_offset, 2000);
    let t0 = Instant::now();
    produce_realtime(&engine, 5000..5050);
    let got = c.read_until(2050, 0);
    assert_eq!(got.first().unwrap().offset, 2000);
    let ids: Vec<u64> = got.iter().map(|r| event_of(r).0).collect();
    assert_eq!(ids, (5000..5050).collect::<Vec<_>>());
    assert!(t0.elapsed() < WAIT);

    // A time: the first record received at or after it.
    let times: Vec<u64> = expected.iter().map(|r| event_of(r).2).collect();
    let k = 777;
    let t = times[k];
    let first = times.iter().position(|&x| x >= t).unwrap();
    let mut c = RawConsumer::connect(addr);
    let s = c.subscribe(LogId::Realtime, Start::Time(t), 1 << 20, "");
    assert_eq!(s.start_offset, first as u64);
    let got = c.read_until(first as u64 + 1, 0);
    assert_eq!(got[0], expected[first]);
    // A time after everything: the high watermark.
    let mut c = RawConsumer::connect(addr);
    let s = c.subscribe(LogId::Realtime, Start::Time(u64::MAX), 1 << 20, "");
    assert_eq!(s.start_offset, s.high_watermark);
    engine.stop().unwrap();
}

#[test]
fn no_credit_no_data() {
    let dir = TempDir::new("consumers-credit");
    let engine = start(&dir);
    let addr = engine.consumer_addr().unwrap();
    produce_realtime(&engine, 0..100);
    let mut c = RawConsumer::connect(addr);
    c.subscribe(LogId::Realtime, Start::Earliest, 0, "");
    c.s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(c.next().is_none(), "nothing before a CREDIT");
    // Less than one record: still nothing.
    c.grant(10);
    assert!(
        c.next().is_none(),
        "nothing while the next record is larger than the credit"
    );
    c.s.set_read_timeout(Some(WAIT)).unwrap();
    c.grant(1 << 20);
    let got = c.read_until(100, 0);
    same(&got, &stored(&dir, LogId::Realtime), "after CREDIT");
    engine.stop().unwrap();
}

/// SUBSCRIBE under `name`, retrying while the server has not yet seen the previous
/// connection under the name go (`consumer_busy`).
fn subscribe_named(addr: SocketAddr, log: LogId, name: &str) -> (RawConsumer, Subscribed) {
    let until = Instant::now() + WAIT;
    loop {
        let mut c = RawConsumer::connect(addr);
        c.send_subscribe(log.index() as u8, Start::Earliest, 1 << 20, name.as_bytes());
        c.credit = 1 << 20;
        match c.next() {
            Some(Got::Subscribed(s)) => return (c, s),
            Some(Got::Reject(r))
                if r.reason() == Some(Reason::ConsumerBusy) && Instant::now() < until =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => panic!("expected SUBSCRIBED, got {other:?}"),
        }
    }
}

#[test]
fn a_named_consumer_resumes_at_its_commit_across_restarts() {
    let dir = TempDir::new("consumers-named");
    let engine = start(&dir);
    let addr = engine.consumer_addr().unwrap();
    produce_realtime(&engine, 0..1000);
    let (mut c, s) = subscribe_named(addr, LogId::Realtime, "app-1");
    assert_eq!(s.committed, wire::NO_COMMIT);
    c.read_until(600, 0);
    c.send_commit(500);
    // DATA may still be in flight before the COMMITTED.
    loop {
        match c.next() {
            Some(Got::Committed(o)) => {
                assert_eq!(o, 500);
                break;
            }
            Some(Got::Data { .. }) => {}
            other => panic!("expected COMMITTED, got {other:?}"),
        }
    }
    drop(c);
    let m = metrics(&engine);
    assert!(m.contains("pinstream_consumer_commits_total 1"), "{m}");
    assert!(
        m.contains("pinstream_consumer_lag_records{log=\"realtime\",consumer=\"app-1\"} 500"),
        "{m}"
    );
    promtool_check(&m);
    let (mut c, s) = subscribe_named(addr, LogId::Realtime, "app-1");
    assert_eq!((s.committed, s.start_offset), (500, 500));
    assert_eq!(c.read_until(501, 0)[0].offset, 500);
    drop(c);
    // Another name starts where its SUBSCRIBE says.
    let (_other, s) = subscribe_named(addr, LogId::Realtime, "app-2");
    assert_eq!((s.committed, s.start_offset), (wire::NO_COMMIT, 0));
    engine.stop().unwrap();

    let engine = start(&dir);
    let addr = engine.consumer_addr().unwrap();
    let (mut c, s) = subscribe_named(addr, LogId::Realtime, "app-1");
    assert_eq!((s.committed, s.start_offset), (500, 500));
    assert_eq!(c.read_until(501, 0)[0].offset, 500);
    engine.stop().unwrap();
}

#[test]
fn refusals_are_rejects_then_close() {
    let dir = TempDir::new("consumers-refusals");
    let engine = start(&dir);
    let addr = engine.consumer_addr().unwrap();
    produce_realtime(&engine, 0..10);

    // COMMIT on an anonymous subscription.
    let mut c = RawConsumer::connect(addr);
    c.subscribe(LogId::Realtime, Start::Earliest, 0, "");
    c.send_commit(1);
    c.expect_reject(Reason::NotSubscribed);

    // CREDIT before SUBSCRIBE.
    let mut c = RawConsumer::connect(addr);
    c.grant(1);
    c.expect_reject(Reason::NotSubscribed);

    // A bad name.
    let mut c = RawConsumer::connect(addr);
    c.send_subscribe(0, Start::Earliest, 0, b"../etc");
    c.expect_reject(Reason::BadConsumerName);

    // An unknown log.
    let mut c = RawConsumer::connect(addr);
    c.send_subscribe(9, Start::Earliest, 0, b"");
    c.expect_reject(Reason::UnknownLog);

    // A start offset above the high watermark.
    let mut c = RawConsumer::connect(addr);
    c.send_subscribe(0, Start::Offset(1_000_000), 0, b"");
    c.expect_reject(Reason::OffsetOutOfRange);

    // A commit above the high watermark.
    let (mut c, _) = subscribe_named(addr, LogId::Realtime, "x");
    c.send_commit(1_000_000);
    loop {
        match c.next() {
            Some(Got::Data { .. }) => {}
            Some(Got::Reject(r)) => {
                assert_eq!(r.reason(), Some(Reason::OffsetOutOfRange));
                break;
            }
            other => panic!("expected REJECT, got {other:?}"),
        }
    }

    // A second connection under a name in use.
    let (_first, _) = subscribe_named(addr, LogId::Realtime, "busy");
    let mut c = RawConsumer::connect(addr);
    c.send_subscribe(0, Start::Earliest, 0, b"busy");
    c.expect_reject(Reason::ConsumerBusy);
    // The same name on another log is another consumer.
    let (_other_log, _) = subscribe_named(addr, LogId::Batch, "busy");

    // A HELLO without version 3.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 128];
    let n = wire::encode_hello(&mut buf, 0, &Hello::client(1, 2, 1 << 20)).unwrap();
    s.write_all(&buf[..n]).unwrap();
    let mut c = RawConsumer {
        s,
        dec: Box::new(StreamDecoder::new()),
        seq: 0,
        queue: Default::default(),
        credit: 0,
    };
    c.expect_reject(Reason::UnsupportedVersion);

    // A frame with a bad CRC.
    let mut c = RawConsumer::connect(addr);
    let mut buf = [0u8; 64];
    let n = wire::encode_credit(&mut buf, 1, 5).unwrap();
    buf[n - 1] ^= 0xFF;
    c.s.write_all(&buf[..n]).unwrap();
    c.expect_reject(Reason::BadCrc);

    let m = metrics(&engine);
    assert!(
        m.contains("pinstream_consumer_rejects_total{reason=\"consumer_busy\"} 1"),
        "{m}"
    );
    engine.stop().unwrap();
}

/// `promtool check metrics` on `text`, when promtool is installed.
fn promtool_check(text: &str) {
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not on PATH: skipping `promtool check metrics`");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn metrics(engine: &EngineHandle) -> String {
    use pinstream_host::admin::AdminSource;
    let mut out = String::new();
    engine.stats().render_metrics(&mut out);
    out
}

#[test]
fn a_stalled_consumer_does_not_stop_the_producers() {
    let dir = TempDir::new("consumers-stalled");
    let engine = start(&dir);
    let addr = engine.consumer_addr().unwrap();
    // Subscribed with all the credit in the world, never reading.
    let mut c = RawConsumer::connect(addr);
    c.subscribe(LogId::Realtime, Start::Earliest, u64::MAX, "");
    let mut p = Producer::connect(engine.started.tcp.unwrap(), ProducerOptions::default()).unwrap();
    for id in 0..200_000u64 {
        p.push(&EventHeader::new(id, 0, Priority::High, 0), &[7u8; 16])
            .unwrap();
    }
    assert_eq!(p.flush().unwrap().stored, 200_000);
    // It still gets everything once it reads.
    let got = c.read_until(200_000, 0);
    assert_eq!(got.len(), 200_000);
    let m = metrics(&engine);
    assert!(
        m.contains("pinstream_consumer_records_sent_total{log=\"realtime\"} 200000"),
        "{m}"
    );
    assert!(
        m.contains("pinstream_log_high_watermark{log=\"realtime\"} 200000"),
        "{m}"
    );
    assert!(m.contains("pinstream_consumers_connected 1"), "{m}");
    promtool_check(&m);
    engine.stop().unwrap();
}

#[test]
fn durable_acks_show_only_durable_records() {
    let dir = TempDir::new("consumers-durable");
    let mut cfg = config(&dir);
    cfg.log.durability = pinstream_host::storage::Durability::Always;
    // Small segments: the log rolls while the consumers read.
    cfg.log.segment_bytes = 16 << 10;
    let engine = Engine::start(cfg).unwrap();
    let addr = engine.consumer_addr().unwrap();
    let mut c = RawConsumer::connect(addr);
    c.subscribe(LogId::Realtime, Start::Earliest, u64::MAX, "");
    let mut small = RawConsumer::connect(addr);
    small.subscribe(LogId::Realtime, Start::Earliest, 0, "");
    let small_reader = std::thread::spawn(move || small.read_until(5_000, 3_000).len());
    // Read while producing: every DATA frame is checked (in `next`) to end at or below the
    // high watermark it carries, which is the durable offset.
    let reader = std::thread::spawn(move || {
        let got = c.read_until(5_000, 0);
        let mut by_id: HashMap<u64, u64> = HashMap::new();
        for r in &got {
            by_id.insert(event_of(r).0, r.offset);
        }
        by_id.len()
    });
    produce_realtime(&engine, 0..5_000);
    assert_eq!(reader.join().unwrap(), 5_000);
    assert_eq!(small_reader.join().unwrap(), 5_000);
    engine.stop().unwrap();
}

#[test]
fn small_segments_are_read_across_their_boundaries() {
    let dir = TempDir::new("consumers-segments");
    let mut cfg = config(&dir);
    // Many segments, an index entry every 512 bytes; acks when accepted (the watermark is
    // then the written offset).
    cfg.log.segment_bytes = 24 << 10;
    cfg.log.index_interval_bytes = 512;
    cfg.ack = pinstream_host::ingest::AckMode::Accepted;
    let engine = Engine::start(cfg).unwrap();
    let addr = engine.consumer_addr().unwrap();
    // Subscribed before anything is stored: woken as records arrive, segment after segment.
    let mut early = RawConsumer::connect(addr);
    early.subscribe(LogId::Realtime, Start::Earliest, 0, "");
    produce_realtime(&engine, 0..6000);
    // The high watermark under `accepted` may trail the acks by a commit: wait for it.
    let until = Instant::now() + WAIT;
    while engine
        .stats()
        .consumers
        .marks
        .high_watermark(LogId::Realtime)
        < 6000
    {
        assert!(Instant::now() < until, "the watermark reaches 6000");
        std::thread::sleep(Duration::from_millis(5));
    }
    let segments = std::fs::read_dir(dir.path().join("realtime"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".log")
        })
        .count();
    assert!(segments > 10, "{segments} segments");
    let expected = stored(&dir, LogId::Realtime);
    assert_eq!(expected.len(), 6000);
    // Credits of odd sizes: frames end inside index intervals and at segment ends.
    for grant in [7_919u64, 65_700, 1 << 20] {
        let mut c = RawConsumer::connect(addr);
        c.subscribe(LogId::Realtime, Start::Earliest, 0, "");
        let got = c.read_until(6000, grant);
        same(&got, &expected, &format!("credit {grant}"));
    }
    for start in [0u64, 1, 511, 2999, 5999] {
        let mut c = RawConsumer::connect(addr);
        let s = c.subscribe(LogId::Realtime, Start::Offset(start), 1 << 20, "");
        assert_eq!(s.start_offset, start);
        let got = c.read_until(6000, 1 << 20);
        same(&got, &expected[start as usize..], &format!("from {start}"));
    }
    early.grant(u64::MAX / 2);
    same(&early.read_until(6000, 0), &expected, "subscribed early");
    engine.stop().unwrap();
}

/// Not a test: a measurement (`cargo test -p pinstream-tests --test consumers
/// tail_latency -- --ignored --nocapture`). One event at a time, from the producer's send
/// to the DATA frame at a consumer waiting at the end of the log: the wake-up path, storage
/// thread → eventfd → serving thread → sendfile, under `ack = durable` with a 1 ms group
/// commit (the fdatasync included) and under `ack = accepted` without syncs.
#[test]
#[ignore = "a measurement, run on demand"]
fn tail_latency() {
    for durable in [true, false] {
        let dir = TempDir::new("consumers-tail");
        let mut cfg = config(&dir);
        if !durable {
            cfg.ack = pinstream_host::ingest::AckMode::Accepted;
            cfg.log.durability = pinstream_host::storage::Durability::None;
        }
        let engine = Engine::start(cfg).unwrap();
        let mut c = RawConsumer::connect(engine.consumer_addr().unwrap());
        c.subscribe(LogId::Realtime, Start::Latest, u64::MAX, "");
        let options = ProducerOptions {
            max_batch: 1,
            ..ProducerOptions::default()
        };
        let mut p = Producer::connect(engine.started.tcp.unwrap(), options).unwrap();
        let mut lat = Vec::new();
        for id in 0..500u64 {
            let t0 = Instant::now();
            p.push(&EventHeader::new(id, 0, Priority::High, 0), b"x")
                .unwrap();
            match c.next() {
                Some(Got::Data { .. }) => lat.push(t0.elapsed()),
                other => panic!("{other:?}"),
            }
        }
        p.flush().unwrap();
        lat.sort();
        let q = |f: f64| lat[((lat.len() - 1) as f64 * f) as usize];
        println!(
            "durable {durable}: send -> DATA at the consumer: p50 {:?} p90 {:?} p99 {:?} max {:?}",
            q(0.5),
            q(0.9),
            q(0.99),
            q(1.0)
        );
        engine.stop().unwrap();
    }
}

#[test]
fn the_consumer_server_never_takes_a_pinned_engine_cpu() {
    let dir = TempDir::new("consumers-cpu");
    let mut cfg = config(&dir);
    cfg.placement.mode = pinstream_host::placement::PlacementMode::Pinned;
    cfg.placement.overprovisioned = false;
    cfg.consumers.cpu = Some(cfg.placement.process_cpu);
    match Engine::start(cfg) {
        Err(pinstream_host::engine::EngineError::Config(msg)) => {
            assert!(msg.contains("consumers.cpu"), "{msg}");
        }
        // This machine cannot pin CPUs 0 and 1 at all: nothing to check here.
        Err(pinstream_host::engine::EngineError::Placement(r)) => eprintln!("skipped: {r}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("the engine started with its consumer server on a pinned engine CPU"),
    }
}

#[test]
fn pipelined_commits_are_answered_in_order() {
    let dir = TempDir::new("consumers-commits");
    let engine = start(&dir);
    let addr = engine.consumer_addr().unwrap();
    produce_realtime(&engine, 0..100);
    let (mut c, _) = subscribe_named(addr, LogId::Realtime, "many");
    c.read_until(100, 0);
    // More COMMITs at once than the server stores at once for one connection: its input
    // waits while they are made durable, then is read on.
    for offset in 1..=40 {
        c.send_commit(offset);
    }
    for offset in 1..=40 {
        match c.next() {
            Some(Got::Committed(o)) => assert_eq!(o, offset),
            other => panic!("expected COMMITTED {offset}, got {other:?}"),
        }
    }
    drop(c);
    let (_c, s) = subscribe_named(addr, LogId::Realtime, "many");
    assert_eq!(s.committed, 40);
    assert!(metrics(&engine).contains("pinstream_consumer_commits_total 40"));
    engine.stop().unwrap();
}

#[test]
fn connections_past_the_limit_are_told_too_many_consumers() {
    let dir = TempDir::new("consumers-limit");
    let mut cfg = config(&dir);
    cfg.consumers.max_connections = 2;
    cfg.consumers.max_named = 1;
    let engine = Engine::start(cfg).unwrap();
    let addr = engine.consumer_addr().unwrap();
    // One name kept at most: a second name cannot commit a place, it is refused at once.
    let (mut a, _) = subscribe_named(addr, LogId::Realtime, "first");
    a.send_commit(0);
    assert!(matches!(a.next(), Some(Got::Committed(0))));
    let mut b = RawConsumer::connect(addr);
    b.send_subscribe(0, Start::Earliest, 0, b"second");
    b.expect_reject(Reason::TooManyConsumers);
    // Two connections served; the third is told so.
    let _b = RawConsumer::connect(addr);
    let mut c = RawConsumer::connect(addr);
    c.send_subscribe(0, Start::Earliest, 0, b"");
    c.expect_reject(Reason::TooManyConsumers);
    let m = metrics(&engine);
    assert!(
        m.contains("pinstream_consumer_rejects_total{reason=\"too_many_consumers\"} 2"),
        "{m}"
    );
    engine.stop().unwrap();
}

#[test]
fn a_connection_that_never_subscribes_is_closed() {
    let dir = TempDir::new("consumers-handshake");
    let mut cfg = config(&dir);
    cfg.consumers.handshake_timeout = Duration::from_millis(300);
    let engine = Engine::start(cfg).unwrap();
    let addr = engine.consumer_addr().unwrap();
    let mut subscribed = RawConsumer::connect(addr);
    subscribed.subscribe(LogId::Realtime, Start::Latest, 1 << 20, "");
    let mut silent = TcpStream::connect(addr).unwrap();
    silent.set_read_timeout(Some(WAIT)).unwrap();
    let t0 = Instant::now();
    let mut byte = [0u8; 1];
    assert!(matches!(silent.read(&mut byte), Ok(0) | Err(_)), "closed");
    assert!(t0.elapsed() < WAIT);
    // The subscribed one is still served.
    produce_realtime(&engine, 0..3);
    assert_eq!(subscribed.read_until(3, 0).len(), 3);
    assert!(metrics(&engine).contains("pinstream_consumer_handshake_timeouts_total 1"));
    engine.stop().unwrap();
}
