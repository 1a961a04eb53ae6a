//! The engine's steady state allocates nothing: ingest -> lanes -> storage over loopback,
//! counted on the engine's own threads (debug profile, counting global allocator).

use std::time::{Duration, Instant};

use pinstream_core::event::{EventHeader, Priority};
use pinstream_core::wire::{self, Hello, Start, StreamLog, Subscribe};
use pinstream_host::consumers::ConsumerSettings;
use pinstream_host::engine::{Engine, EngineConfig};
use pinstream_tests::client::Client;
use pinstream_tests::{CountingAllocator, TempDir};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

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
    let mut buf = [0u8; 256];
    let n = wire::encode_hello(&mut buf, 0, &Hello::consumer(1 << 20)).unwrap();
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
    cfg.consumers = ConsumerSettings::on("127.0.0.1:0".parse().unwrap());
    let engine = Engine::start(cfg).unwrap();
    let (_consumer, received) = reading_consumer(engine.consumer_addr().unwrap());
    let mut client = Client::connect(engine.started.tcp.unwrap()).unwrap();
    client.hello().unwrap();
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
    let stored = engine.stats().process.stored.get();
    // The consumer was served all along.
    let c = &engine.stats().consumers;
    assert_eq!(c.stats.connected.get(), 1);
    assert!(c.stats.data_frames[0].get() > 0);
    assert!(received.load(std::sync::atomic::Ordering::Relaxed) > 0);
    engine.stop().unwrap();
    assert!(
        stored > 10_000,
        "the engine did real work: {stored} events stored"
    );
    assert_eq!(
        allocations, 0,
        "allocations on the engine threads in steady state"
    );
}
