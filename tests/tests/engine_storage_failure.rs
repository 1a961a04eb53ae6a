//! A storage failure under load: the engine stops taking input, acknowledges nothing it did
//! not commit, says so in its health, and still stops cleanly.
//!
//! The failure is real: a file-size limit (`RLIMIT_FSIZE`) makes the log's `write(2)` fail
//! with `EFBIG` (SIGXFSZ is ignored). The limit is process-wide, so this binary holds this
//! one test only.

use std::time::{Duration, Instant};

use pinstream_core::event::{EventHeader, Priority};
use pinstream_host::admin::AdminSource;
use pinstream_host::engine::{Engine, EngineConfig};
use pinstream_host::storage::Durability;
use pinstream_tests::TempDir;
use pinstream_tests::client::Client;

fn limit_file_size(bytes: u64) {
    // SAFETY: plain libc calls with a valid, initialised rlimit; ignoring SIGXFSZ turns the
    // kill into an EFBIG error from write(2).
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let lim = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: libc::RLIM_INFINITY,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
}

#[test]
fn a_failed_write_stops_intake_and_acks_nothing_uncommitted() {
    let dir = TempDir::new("storage-failure");
    let mut cfg = EngineConfig::local(dir.path());
    cfg.log.durability = Durability::Always;
    let engine = Engine::start(cfg).unwrap();
    let stats = engine.stats().clone();
    let mut client = Client::connect(engine.started.tcp.unwrap()).unwrap();
    let header = |id: u64| EventHeader::new(id, 0, Priority::High, 0);
    // Some events stored and acknowledged first.
    let events: Vec<_> = (1..=10).map(header).collect();
    client
        .send(&Client::batch(1, &events, |_| vec![1; 100]))
        .unwrap();
    let (ack, _) = client.wait_ack(1, Duration::from_secs(20)).unwrap();
    assert_eq!(ack.stored, 10);

    // Then no file may grow past 64 KiB: the next writes fail.
    limit_file_size(64 << 10);
    let mut last_ack = ack;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seq = 1;
    let mut closed = false;
    while Instant::now() < deadline && !closed {
        seq += 1;
        let events: Vec<_> = (0..50).map(|i| header(seq * 100 + i)).collect();
        if client
            .send(&Client::batch(seq, &events, |_| vec![2; 200]))
            .is_err()
        {
            closed = true;
            break;
        }
        loop {
            match client.next_reply() {
                Ok(pinstream_tests::client::Reply::Ack(a)) => {
                    last_ack = a;
                    if a.through_seq >= seq {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
    }
    assert!(
        closed,
        "the engine closed the connection after the storage failure"
    );
    assert!(
        stats
            .shared
            .storage_failed
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    let health = stats.health();
    assert!(!health.healthy, "{health:?}");
    // The write fails inside an append (buffer full) or inside the commit's flush.
    assert!(stats.host.storage_write_errors.get() + stats.host.storage_sync_errors.get() >= 1);
    assert!(
        health.to_json().contains("File too large"),
        "{}",
        health.to_json()
    );
    // Every event acknowledged as stored was committed before the failure: at most what the
    // log holds, and no connection is taken any more.
    let durable = stats.host.durable_events.get();
    assert!(
        last_ack.stored <= durable,
        "{last_ack:?} acked, {durable} durable"
    );
    assert!(
        Client::connect(engine.started.tcp.unwrap())
            .map(|mut c| c.closed_by_server(Duration::from_secs(10)))
            .unwrap_or(true)
    );
    // And it still stops.
    let t0 = Instant::now();
    let _ = engine.stop();
    assert!(t0.elapsed() < Duration::from_secs(30));
    // What the pipeline counted stored, less what storage lost, is what the log holds
    // (records written whole before the failure included; the torn one is not).
    let mut reader =
        pinstream_host::storage::LogReader::open(&dir.path().join("realtime")).unwrap();
    let mut in_log = 0u64;
    while let Some(Ok(_)) = reader.next_record() {
        in_log += 1;
    }
    let stored = stats.process.stored.get();
    let lost = stats.host.storage_lost_events.get();
    assert_eq!(
        stored - lost,
        in_log,
        "{stored} counted stored, {lost} counted lost, {in_log} in the log"
    );
}
