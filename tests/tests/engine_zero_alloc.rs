//! The engine's steady state allocates nothing: ingest -> lanes -> storage over loopback,
//! counted on the engine's own threads (debug profile, counting global allocator).

use std::time::{Duration, Instant};

use pinstream_core::event::{EventHeader, Priority};
use pinstream_core::wire::{self, Hello, Start, StreamLog, Subscribe};
use pinstream_host::config::{TcpAuth, TokenSection};
use pinstream_host::consumers::ConsumerSettings;
use pinstream_host::engine::{Engine, EngineConfig};
use pinstream_host::gateway::hash_token;
use pinstream_tests::client::Client;
use pinstream_tests::{CountingAllocator, TempDir};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

/// The token the TCP client's HELLO and the HTTP requests carry.
const TOKEN: &str = "zero-alloc-token";

fn watch() {
    ALLOC.watch_this_thread();
}

/// The sanity case: the probe sees an allocation on a watched thread. Called from the one
/// test of this binary, before the engine starts: the counter is process-wide.
fn a_watched_thread_allocating_is_counted() {
    let before = ALLOC.watched_count();
    std::thread::spawn(|| {
        watch();
        ALLOC.arm_watched();
        let b = std::hint::black_box(Box::new(7u64));
        ALLOC.disarm_watched();
        drop(b);
    })
    .join()
    .unwrap();
    assert_eq!(ALLOC.watched_count() - before, 1);
}

/// A consumer of the realtime log with all the credit it needs, its bytes read and counted
/// by a thread of the test (not watched).
fn reading_consumer(
    addr: std::net::SocketAddr,
) -> (
    std::thread::JoinHandle<()>,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    // `consumers.auth = "token"`: the HELLO carries the token.
    let mut buf = [0u8; 512];
    let n =
        wire::encode_hello_token(&mut buf, 0, &Hello::consumer(1 << 20), TOKEN.as_bytes()).unwrap();
    s.write_all(&buf[..n]).unwrap();
    let sub = Subscribe::new(StreamLog::Realtime, Start::Earliest, u64::MAX, b"");
    let n = wire::encode_subscribe(&mut buf, 1, &sub).unwrap();
    s.write_all(&buf[..n]).unwrap();
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = std::sync::Arc::clone(&received);
    let t = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            counted.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
    });
    (t, received)
}

/// Posts NDJSON requests of 20 events on one keep-alive connection until `stop`, each
/// answered once durable; returns the events answered as stored.
fn http_load(addr: std::net::SocketAddr, stop: &std::sync::atomic::AtomicBool) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let body: String = (0..20)
        .map(|i| {
            format!(
                "{{\"priority\":\"{}\",\"payload\":\"http-{i}\"}}\n",
                ["high", "medium", "low"][i % 3]
            )
        })
        .collect();
    let req = format!(
        "POST /v1/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stored = 0;
    let mut buf = vec![0u8; 4096];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        s.write_all(req.as_bytes()).unwrap();
        let mut got = 0;
        // One small answer: read until its JSON line ends.
        while !buf[..got].ends_with(b"}\n") {
            let n = s.read(&mut buf[got..]).unwrap();
            assert!(n > 0, "the gateway closed the connection");
            got += n;
        }
        let text = String::from_utf8_lossy(&buf[..got]);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        stored += text
            .split("\"stored\":")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    stored
}

#[test]
fn steady_state_ingest_to_storage_allocates_nothing_on_engine_threads() {
    a_watched_thread_allocating_is_counted();
    let dir = TempDir::new("zero-alloc");
    let mut cfg = EngineConfig::local(dir.path());
    cfg.thread_hook = Some(watch);
    cfg.aggregate_window = Duration::from_millis(5);
    // A consumer reads the realtime log as it grows: every commit's new high watermark
    // wakes the consumer server (the storage thread publishes it and writes the server's
    // eventfd), which sends the new records with sendfile. The serving thread is watched
    // too (the hook runs on it). Moving to a new segment lists the log's directory (an
    // allocation, once per segment): the 64 MiB segments do not roll within the window.
    // With `consumers.auth = "token"` (the token checked at the HELLO, nothing per record).
    cfg.consumers = ConsumerSettings {
        auth: true,
        ..ConsumerSettings::on("127.0.0.1:0".parse().unwrap())
    };
    // The HTTP gateway runs too (its own thread, not watched: it parses JSON and allocates
    // as it likes); its events reach the ingest thread through its ring, which the ingest
    // thread polls on every round, and must cost that thread no allocation either.
    cfg.http.listen = Some("127.0.0.1:0".parse().unwrap());
    // Tokens on the binary port too: every event of the TCP connection is screened (its
    // token's topic bits, a grant of its rate per frame) on the ingest thread, and the
    // gateway's requests carry the same token. The rate is far above what the test sends,
    // so nothing is refused, but the bucket is asked every frame.
    cfg.tcp_auth = TcpAuth::Token;
    cfg.http.tokens = vec![TokenSection {
        name: "load".into(),
        sha256: hash_token(TOKEN),
        topics: vec!["default".into()],
        rate: 1_000_000_000,
        burst: 10_000_000,
        read: true,
    }];
    let engine = Engine::start(cfg).unwrap();
    let http_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let http_client = {
        let addr = engine.http_addr().unwrap();
        let stop = std::sync::Arc::clone(&http_stop);
        std::thread::spawn(move || http_load(addr, &stop))
    };
    let (_consumer, received) = reading_consumer(engine.consumer_addr().unwrap());
    let mut client = Client::connect(engine.started.tcp.unwrap()).unwrap();
    client.hello_token(TOKEN.as_bytes()).unwrap();
    let mut seq = 0u64;
    let mut round = |client: &mut Client, n: u64| {
        for _ in 0..n {
            seq += 1;
            let events: Vec<_> = (0..32)
                .map(|i| {
                    EventHeader::new(seq * 32 + i, 0, Priority::ALL[(i % 5) as usize], 0)
                        .with_value(i as i64)
                })
                .collect();
            client
                // Every eighth payload (1 500 bytes) is longer than the slot: the arena.
                .send(&Client::batch(seq, &events, |i| {
                    vec![1; if i % 8 == 7 { 1_500 } else { 100 }]
                }))
                .unwrap();
        }
        client.wait_ack(seq, Duration::from_secs(20)).unwrap();
    };
    // Warm-up: every buffer touched, every window opened and closed, a sync or two.
    round(&mut client, 200);
    std::thread::sleep(Duration::from_millis(50));
    round(&mut client, 50);

    let before = ALLOC.watched_count();
    ALLOC.arm_watched();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1500) {
        round(&mut client, 50);
    }
    ALLOC.disarm_watched();
    let allocations = ALLOC.watched_count() - before;
    http_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let http_stored = http_client.join().unwrap();
    let stored = engine.stats().process.stored.get();
    // The consumer was served all along.
    let c = &engine.stats().consumers;
    assert_eq!(c.stats.connected.get(), 1);
    assert!(c.stats.data_frames[0].get() > 0);
    assert!(received.load(std::sync::atomic::Ordering::Relaxed) > 0);
    engine.stop().unwrap();
    assert!(
        http_stored > 1_000,
        "the gateway's ring was used: {http_stored} events"
    );
    assert!(
        stored > 10_000,
        "the engine did real work: {stored} events stored"
    );
    assert_eq!(
        allocations, 0,
        "allocations on the engine threads in steady state"
    );
}
