//! The client crate's `Consumer` against a real engine: what it reads is exactly what the
//! engine's logs hold, in order, from every start; a named consumer resumes at its commit
//! after it is dropped (its process gone) and after an engine restart; a stalled consumer
//! does not hold up producers.

use std::time::{Duration, Instant};

use pinstream_client::{Consumer, ConsumerOptions, Producer, ProducerOptions};
use pinstream_core::event::{EventHeader, Priority};
use pinstream_core::wire::{Start, StreamLog};
use pinstream_host::consumers::ConsumerSettings;
use pinstream_host::engine::{Engine, EngineConfig, EngineHandle};
use pinstream_host::storage::record::{self, RecordBody};
use pinstream_host::storage::{LogId, LogReader};
use pinstream_tests::TempDir;

/// How long a test waits for records it expects.
const WAIT: Duration = Duration::from_secs(20);

fn start(dir: &TempDir) -> EngineHandle {
    let mut cfg = EngineConfig::local(dir.path());
    cfg.consumers = ConsumerSettings::on("127.0.0.1:0".parse().unwrap());
    Engine::start(cfg).unwrap()
}

const PRIORITIES: [Priority; 5] = [
    Priority::Critical,
    Priority::High,
    Priority::Medium,
    Priority::Low,
    Priority::Batch,
];

fn payload(id: u64) -> Vec<u8> {
    (0..(id % 61)).map(|i| (id + i) as u8).collect()
}

/// Produces `ids` with rotating priorities (every lane) and waits for every ack.
fn produce(engine: &EngineHandle, ids: std::ops::Range<u64>) {
    let mut p = Producer::connect(engine.started.tcp.unwrap(), ProducerOptions::default()).unwrap();
    let n = ids.end - ids.start;
    for id in ids {
        let header = EventHeader::new(id, 0, PRIORITIES[(id % 5) as usize], id);
        p.push(&header, &payload(id)).unwrap();
    }
    assert_eq!(p.flush().unwrap().stored, n);
}

/// `(offset, kind, body)` of every record the engine's own reader finds in `log`.
fn stored(dir: &TempDir, log: LogId) -> Vec<(u64, u8, Vec<u8>)> {
    let mut r = LogReader::open(&dir.path().join(log.name())).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next_record() {
        let rec = rec.unwrap();
        out.push((rec.offset, rec.kind, rec.body.to_vec()));
    }
    out
}

fn options(log: StreamLog, start: Start, name: Option<&str>) -> ConsumerOptions {
    ConsumerOptions {
        name: name.map(str::to_string),
        // Small enough that the reads take many DATA frames and CREDIT round trips.
        window_bytes: 256 * 1024,
        ..ConsumerOptions::new(log, start)
    }
}

/// Reads `n` records (fails after `WAIT` without one).
fn read(consumer: &mut Consumer, n: usize) -> Vec<(u64, u8, Vec<u8>)> {
    let mut out = Vec::with_capacity(n);
    let until = Instant::now() + WAIT;
    while out.len() < n {
        assert!(Instant::now() < until, "{} of {n} records", out.len());
        if let Some(r) = consumer.next_timeout(Duration::from_millis(200)).unwrap() {
            out.push((r.offset(), r.kind(), r.body().to_vec()));
        }
    }
    out
}

/// Nothing more arrives within `wait`.
fn nothing_more(consumer: &mut Consumer, wait: Duration) {
    if let Some(r) = consumer.next_timeout(wait).unwrap() {
        panic!("unexpected record at offset {}", r.offset());
    }
}

#[test]
fn a_consumer_reads_exactly_what_every_log_holds_in_order() {
    let dir = TempDir::new("client-consumer-all");
    let engine = start(&dir);
    let addr = engine.consumer_addr().unwrap();
    produce(&engine, 0..10_000);
    let mut ids = Vec::new();
    for (log, id) in [
        (StreamLog::Realtime, LogId::Realtime),
        (StreamLog::Transactional, LogId::Transactional),
        (StreamLog::Batch, LogId::Batch),
        (StreamLog::Aggregates, LogId::Aggregates),
    ] {
        let expected = stored(&dir, id);
        assert!(!expected.is_empty(), "{log}: nothing stored");
        let mut c = Consumer::connect(addr, options(log, Start::Earliest, None)).unwrap();
        assert_eq!(c.subscribed().high_watermark, expected.len() as u64);
        let got = read(&mut c, expected.len());
        assert_eq!(got, expected, "{log}: the consumer's records are the log's");
        nothing_more(&mut c, Duration::from_millis(300));
        for (_, kind, body) in &got {
            if let RecordBody::Event(e) = record::decode(*kind, body).unwrap() {
                assert_eq!(e.payload, payload(e.header.id));
                ids.push(e.header.id);
            }
        }
    }
    ids.sort_unstable();
    assert_eq!(ids, (0..10_000).collect::<Vec<_>>(), "every event once");
    engine.stop().unwrap();
}

#[test]
fn every_start_position_and_the_live_tail() {
    let dir = TempDir::new("client-consumer-starts");
    let engine = start(&dir);
    let addr = engine.consumer_addr().unwrap();
    produce(&engine, 0..2_000);
    let all = stored(&dir, LogId::Realtime);
    let n = all.len();

    let mut c =
        Consumer::connect(addr, options(StreamLog::Realtime, Start::Offset(100), None)).unwrap();
    assert_eq!(read(&mut c, n - 100), all[100..]);

    // At a time: the first record received at or after the reception time of record 300.
    let received = |(_, kind, body): &(u64, u8, Vec<u8>)| match record::decode(*kind, body) {
        Ok(RecordBody::Event(e)) => e.received,
        other => panic!("{other:?}"),
    };
    let t = received(&all[300]);
    let first_at_t = all.iter().position(|r| received(r) >= t).unwrap();
    let mut c =
        Consumer::connect(addr, options(StreamLog::Realtime, Start::Time(t), None)).unwrap();
    assert_eq!(read(&mut c, n - first_at_t), all[first_at_t..]);

    // At latest: nothing of the past; what is produced afterwards arrives (the tail).
    let mut c = Consumer::connect(addr, options(StreamLog::Realtime, Start::Latest, None)).unwrap();
    assert_eq!(c.subscribed().start_offset, n as u64);
    nothing_more(&mut c, Duration::from_millis(200));
    produce(&engine, 2_000..3_000);
    let after = stored(&dir, LogId::Realtime);
    assert_eq!(read(&mut c, after.len() - n), after[n..]);
    engine.stop().unwrap();
}

#[test]
fn a_named_consumer_resumes_at_its_commit_after_its_end_and_an_engine_restart() {
    let dir = TempDir::new("client-consumer-named");
    let engine = start(&dir);
    produce(&engine, 0..3_000);
    let all = stored(&dir, LogId::Realtime);
    let opts = || options(StreamLog::Realtime, Start::Earliest, Some("billing"));

    let mut c = Consumer::connect(engine.consumer_addr().unwrap(), opts()).unwrap();
    assert_eq!(read(&mut c, 500), all[..500]);
    assert_eq!(c.commit_position().unwrap(), 500);
    // Read past the commit, then go away without committing: those are delivered again.
    assert_eq!(read(&mut c, 100), all[500..600]);
    drop(c);

    let mut c = Consumer::connect(engine.consumer_addr().unwrap(), opts()).unwrap();
    assert_eq!(c.subscribed().committed, 500);
    assert_eq!(read(&mut c, 200), all[500..700]);
    assert_eq!(c.commit(700).unwrap(), 700);
    drop(c);
    engine.stop().unwrap();

    // The position is durable: a restarted engine resumes the name there.
    let engine = start(&dir);
    let mut c = Consumer::connect(engine.consumer_addr().unwrap(), opts()).unwrap();
    assert_eq!(c.subscribed().committed, 700);
    assert_eq!(read(&mut c, all.len() - 700), all[700..]);
    // Another name is independent of it.
    let mut other = Consumer::connect(
        engine.consumer_addr().unwrap(),
        options(StreamLog::Realtime, Start::Earliest, Some("audit")),
    )
    .unwrap();
    assert_eq!(read(&mut other, 10), all[..10]);
    engine.stop().unwrap();
}

#[test]
fn a_stalled_consumer_does_not_hold_up_producers() {
    let dir = TempDir::new("client-consumer-stalled");
    let engine = start(&dir);
    let addr = engine.consumer_addr().unwrap();
    produce(&engine, 0..1_000);
    // A consumer with a large window that reads one record, then nothing at all.
    let mut stalled = Consumer::connect(
        addr,
        ConsumerOptions {
            window_bytes: 64 << 20,
            ..ConsumerOptions::new(StreamLog::Realtime, Start::Earliest)
        },
    )
    .unwrap();
    read(&mut stalled, 1);
    // The producers store everything regardless (the producer's own timeout bounds the wait).
    produce(&engine, 1_000..100_000);
    // And the stalled consumer, once it reads again, gets every record in order.
    let all = stored(&dir, LogId::Realtime);
    assert_eq!(read(&mut stalled, all.len() - 1), all[1..]);
    engine.stop().unwrap();
}
