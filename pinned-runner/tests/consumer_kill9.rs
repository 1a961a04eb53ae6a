//! Consumers across a `kill -9` of the real `pinstream run` (acks durable): a named consumer
//! resumes at its last commit on the restarted engine, nothing skipped, only what came after
//! the commit delivered again; a `pinstream consume --consumer` process killed with `-9`
//! resumes at the last position it committed; and nothing a consumer saw before the kill is what a power cut
//! at that moment could take (the log is cut back to what its checkpoint says was synced,
//! recovery truncates the torn tail, and every record the consumer saw is still there).

use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pinstream_client::{Consumer, ConsumerOptions, Producer, ProducerOptions, rejection};
use pinstream_core::event::{EventHeader, Priority};
use pinstream_core::reason::Reason;
use pinstream_core::wire::{Start, StreamLog};
use pinstream_host::storage::layout::segment_path;
use pinstream_host::storage::{LogId, LogReader, segment_bases, synced_point};
use pinstream_tests::TempDir;

mod common;
use common::{Runner, WAIT};

/// One record as a consumer got it or the log holds it: offset, kind, body.
type Rec = (u64, u8, Vec<u8>);

/// Acks durable (the default, said here because the tests depend on it), group commit.
const DURABLE: &str = "[engine]\nack = \"durable\"\n[storage]\ndurability = \"interval\"\n";

/// A 100-byte payload that says which event it is.
fn payload(id: u64) -> Vec<u8> {
    (0..100u64)
        .map(|i| (id.wrapping_mul(31) + i) as u8)
        .collect()
}

/// Produces high-priority (realtime) events `ids` and waits until every one is stored.
fn produce(tcp: SocketAddr, ids: std::ops::Range<u64>) {
    let mut p = Producer::connect(tcp, ProducerOptions::default()).unwrap();
    let n = ids.end - ids.start;
    for id in ids {
        p.push(&EventHeader::new(id, 0, Priority::High, id), &payload(id))
            .unwrap();
    }
    assert_eq!(p.flush().unwrap().stored, n);
}

/// Every record of the realtime log as the engine's own reader finds it (engine stopped).
fn stored(dir: &Path) -> Vec<Rec> {
    let mut r = LogReader::open(&dir.join("data").join(LogId::Realtime.name())).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next_record() {
        let rec = rec.expect("every record CRC-valid");
        out.push((rec.offset, rec.kind, rec.body.to_vec()));
    }
    out
}

fn named(name: &str) -> ConsumerOptions {
    ConsumerOptions {
        name: Some(name.to_string()),
        // Many DATA frames and CREDIT round trips per read.
        window_bytes: 256 * 1024,
        // The engine's death is the test's doing: an error, not a reconnect to nobody.
        reconnect: false,
        ..ConsumerOptions::new(StreamLog::Realtime, Start::Earliest)
    }
}

/// Reads `n` records (fails after `WAIT` without them).
fn read(consumer: &mut Consumer, n: usize) -> Vec<Rec> {
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

#[test]
fn a_named_consumer_resumes_at_its_commit_after_kill_9_of_the_engine() {
    let dir = TempDir::new("consumer-kill9-resume");
    let mut runner = Runner::start(dir.path(), DURABLE);
    produce(runner.tcp, 0..20_000);
    let mut c = Consumer::connect(runner.consumers, named("billing")).unwrap();
    assert_eq!(c.subscribed().committed, pinstream_core::wire::NO_COMMIT);
    let mut seen = read(&mut c, 12_000);
    assert_eq!(c.commit(8_000).unwrap(), 8_000);
    // Read further without committing, then the engine dies under the consumer.
    seen.extend(read(&mut c, 3_000));
    runner.signal(libc::SIGKILL);
    assert!(!runner.wait().success());
    drop(c);
    drop(runner);
    // Every acknowledged event survived the kill; the consumer read the log's own records.
    let before = stored(dir.path());
    assert_eq!(before.len(), 20_000);
    assert!(seen == before[..15_000], "first session read the log");

    let mut again = Runner::start(dir.path(), DURABLE);
    let mut c = Consumer::connect(again.consumers, named("billing")).unwrap();
    let s = c.subscribed();
    assert_eq!((s.committed, s.start_offset), (8_000, 8_000));
    // Re-delivery of 8 000..15 000 only (what came after the commit), then the rest.
    let resumed = read(&mut c, 12_000);
    assert!(resumed == before[8_000..], "resumed at the commit");
    // The restarted engine's live tail reaches the same consumer.
    produce(again.tcp, 20_000..21_000);
    let live = read(&mut c, 1_000);
    assert_eq!(c.commit_position().unwrap(), 21_000);
    drop(c);
    again.signal(libc::SIGTERM);
    assert!(again.wait().success(), "{}", again.output());
    drop(again);
    let after = stored(dir.path());
    assert!(after[..20_000] == before[..], "recovery kept the log");
    assert!(live == after[20_000..], "live records after the restart");
}

/// What an anonymous consumer following the live tail saw until the engine went away;
/// `count` follows its progress.
fn follow(addr: SocketAddr, count: &AtomicU64) -> io::Result<Vec<Rec>> {
    let options = ConsumerOptions {
        reconnect: false,
        ..ConsumerOptions::new(StreamLog::Realtime, Start::Earliest)
    };
    let mut c = Consumer::connect(addr, options)?;
    let mut seen = Vec::new();
    loop {
        match c.next_timeout(WAIT) {
            Ok(Some(r)) => {
                seen.push((r.offset(), r.kind(), r.body().to_vec()));
                count.store(seen.len() as u64, Ordering::Relaxed);
            }
            // The engine was killed: the connection ends (a timeout would be a hang).
            Ok(None) => return Err(io::Error::other("no record and no end within WAIT")),
            Err(_) => return Ok(seen),
        }
    }
}

/// A kill lands inside a commit (records written, their fdatasync out) only part of the
/// time, and only then could a watermark that ran ahead of the sync show: several rounds.
#[test]
fn nothing_a_consumer_saw_before_kill_9_is_lost_by_a_power_cut_then() {
    for round in 0..4 {
        kill_a_followed_engine_and_cut_power(&TempDir::new(&format!(
            "consumer-kill9-synced-{round}"
        )));
    }
}

/// One round: an engine under a producer and a consumer following the tail is killed, the
/// log cut back to its checkpoint plus a torn part, and recovered.
fn kill_a_followed_engine_and_cut_power(dir: &TempDir) {
    let mut runner = Runner::start(dir.path(), DURABLE);
    let count = Arc::new(AtomicU64::new(0));
    let follower = {
        let (addr, count) = (runner.consumers, Arc::clone(&count));
        std::thread::spawn(move || follow(addr, &count))
    };
    // A producer that never stops on its own: the kill lands mid-stream, with records
    // written but not yet synced.
    let producer = {
        let tcp = runner.tcp;
        std::thread::spawn(move || {
            let options = ProducerOptions {
                reconnects: 0,
                ..ProducerOptions::default()
            };
            let mut p = Producer::connect(tcp, options).unwrap();
            let mut id = 0u64;
            while p
                .push(&EventHeader::new(id, 0, Priority::High, id), &payload(id))
                .is_ok()
            {
                id += 1;
            }
            id
        })
    };
    // Once the consumer is following (records became durable and visible), a little more.
    let until = Instant::now() + WAIT;
    while count.load(Ordering::Relaxed) < 1_000 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    runner.signal(libc::SIGKILL);
    assert!(!runner.wait().success());
    let seen = follower.join().unwrap().unwrap();
    let pushed = producer.join().unwrap();
    drop(runner);
    assert!(!seen.is_empty(), "the consumer saw records before the kill");
    for (i, r) in seen.iter().enumerate() {
        assert_eq!(r.0, i as u64, "the consumer saw the log in order, from 0");
    }

    // A power cut at the moment of the kill keeps what was synced and may take the rest.
    // The checkpoint names what was synced (it is rewritten before the watermark moves).
    let log = dir.path().join("data").join(LogId::Realtime.name());
    let synced = synced_point(&log).expect("a valid checkpoint after syncs");
    let last_seen = seen.last().unwrap().0;
    assert!(
        last_seen < synced.next_offset,
        "the consumer saw offset {last_seen}, the log was synced below {} only",
        synced.next_offset
    );
    assert_eq!(
        segment_bases(&log).unwrap().last(),
        Some(&synced.segment),
        "the checkpoint is in the last segment"
    );
    // Keep the synced bytes and a torn part of what followed, as a power cut can.
    let segment = segment_path(&log, synced.segment);
    let len = std::fs::metadata(&segment).unwrap().len();
    let unsynced = len - synced.position;
    if unsynced > 1 {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap();
        f.set_len(synced.position + unsynced.min(37)).unwrap();
    }

    let mut again = Runner::start(dir.path(), DURABLE);
    again.wait_line(&format!("recovered {}", log.display()));
    again.signal(libc::SIGTERM);
    assert!(again.wait().success(), "{}", again.output());
    drop(again);
    let after = stored(dir.path());
    assert_eq!(
        after.len() as u64,
        synced.next_offset,
        "recovery kept the synced records"
    );
    assert!(
        after.len() as u64 <= pushed,
        "{} records, {pushed} pushed",
        after.len()
    );
    assert!(
        seen[..] == after[..seen.len()],
        "every record the consumer saw is in the recovered log, byte for byte"
    );
}

/// Connects `options`, retrying while the engine still holds the name for a connection
/// that is going away (`consumer_busy`).
fn connect_retrying(addr: SocketAddr, options: &ConsumerOptions) -> Consumer {
    let until = Instant::now() + WAIT;
    loop {
        match Consumer::connect(addr, options.clone()) {
            Ok(c) => return c,
            Err(e)
                if rejection(&e).and_then(|r| r.reason()) == Some(Reason::ConsumerBusy)
                    && Instant::now() < until =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("connecting a consumer: {e}"),
        }
    }
}

#[test]
fn a_consume_process_killed_with_9_resumes_at_its_last_commit() {
    let dir = TempDir::new("consumer-kill9-process");
    let runner = Runner::start(dir.path(), DURABLE);
    produce(runner.tcp, 0..20_000);
    // `pinstream consume --consumer tail --follow` commits what it printed every 1000 records
    // or second; it is killed once it has printed 5 000 lines.
    let mut consume = Command::new(env!("CARGO_BIN_EXE_pinstream"))
        .args(["consume", "--addr", &runner.consumers.to_string()])
        .args(["--consumer", "tail", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(consume.stdout.take().unwrap()).lines();
    let mut printed = 0u64;
    while printed < 5_000 {
        let line = lines.next().expect("consume printed 5 000 lines").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v["offset"], printed,
            "printed in order from the first record"
        );
        assert_eq!(v["id"], printed, "the event stored at that offset");
        printed += 1;
    }
    consume.kill().unwrap();
    consume.wait().unwrap();
    // What it wrote before the kill is still in the pipe (a line may be cut by the kill).
    while let Some(Ok(line)) = lines.next() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            assert!(lines.next().is_none(), "only the last line is cut");
            break;
        };
        assert_eq!(v["offset"], printed, "printed in order");
        printed += 1;
    }
    // Its last commit covers only what it printed: nothing is skipped on resuming.
    let options = named("tail");
    let mut c = connect_retrying(runner.consumers, &options);
    let committed = c.subscribed().committed;
    assert!(
        (1_000..=printed).contains(&committed),
        "a commit of the killed process landed, within the {printed} records it printed: {committed}"
    );
    assert_eq!(c.subscribed().start_offset, committed);
    let rest = read(&mut c, (20_000 - committed) as usize);
    drop(c);
    runner.signal(libc::SIGTERM);
    let mut runner = runner;
    assert!(runner.wait().success(), "{}", runner.output());
    drop(runner);
    let stored = stored(dir.path());
    assert!(
        rest == stored[committed as usize..],
        "resumed at the commit"
    );
}
