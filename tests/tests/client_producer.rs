//! The client crate's `Producer` against a real engine: events in, totals out, and a lost
//! connection resumed under the same producer id without anything stored twice.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use pinstream_client::{Producer, ProducerOptions};
use pinstream_core::event::{EventHeader, Priority};
use pinstream_host::engine::{Engine, EngineConfig};
use pinstream_host::storage::record::{self, RecordBody};
use pinstream_host::storage::{LogId, LogReader};
use pinstream_tests::TempDir;

/// The event ids in the realtime log, in order.
fn realtime_ids(dir: &TempDir) -> Vec<u64> {
    let mut reader = LogReader::open(&dir.path().join(LogId::Realtime.name())).unwrap();
    let mut ids = Vec::new();
    while let Some(r) = reader.next_record() {
        let r = r.unwrap();
        if let Ok(RecordBody::Event(e)) = record::decode(r.kind, &r.body) {
            ids.push(e.header.id);
        }
    }
    ids
}

#[test]
fn a_producer_stores_every_event_once() {
    let dir = TempDir::new("client-producer");
    let engine = Engine::start(EngineConfig::local(dir.path())).unwrap();
    let options = ProducerOptions {
        max_batch: 16,
        window: 4,
        ..ProducerOptions::default()
    };
    let mut producer = Producer::connect(engine.started.tcp.unwrap(), options).unwrap();
    assert_ne!(producer.producer_id(), 0, "the server assigned an id");
    for id in 0..1000u64 {
        let payload = vec![(id % 251) as u8; (id % 300) as usize];
        producer
            .push(&EventHeader::new(id, 0, Priority::High, 0), &payload)
            .unwrap();
    }
    let totals = producer.flush().unwrap();
    assert_eq!(
        (
            totals.stored,
            totals.duplicates,
            totals.dead_lettered,
            totals.rejected
        ),
        (1000, 0, 0, 0)
    );
    assert!(producer.take_rejects().is_empty());
    engine.stop().unwrap();
    assert_eq!(realtime_ids(&dir), (0..1000).collect::<Vec<_>>());
}

/// A proxy that cuts the first connection after `cut` bytes from the client (both ways
/// closed, as a lost network would), then passes every later connection through.
fn cutting_proxy(to: SocketAddr, cut: u64) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    listener.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        let mut first = true;
        while !stopping.load(Ordering::Relaxed) {
            let Ok((client, _)) = listener.accept() else {
                thread::sleep(Duration::from_millis(5));
                continue;
            };
            client.set_nonblocking(false).unwrap();
            let server = TcpStream::connect(to).unwrap();
            let limit = if first { cut } else { u64::MAX };
            first = false;
            let passed = Arc::new(AtomicU64::new(0));
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            // Server to client: as is.
            thread::spawn(move || pump(s2, c2, u64::MAX, Arc::new(AtomicU64::new(0))));
            // Client to server: until the cut, then both sockets are shut.
            thread::spawn(move || pump(client, server, limit, passed));
        }
    });
    (addr, stop)
}

fn pump(mut from: TcpStream, mut to: TcpStream, limit: u64, passed: Arc<AtomicU64>) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let before = passed.fetch_add(n as u64, Ordering::Relaxed);
        let n = if before + n as u64 > limit {
            (limit.saturating_sub(before)) as usize
        } else {
            n
        };
        if to.write_all(&buf[..n]).is_err() || before + (n as u64) >= limit {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// The connection is cut in the middle of a frame while frames are in flight: the producer
/// reconnects with its id, resends what was not acknowledged, and every event is in the log
/// once; the totals count each event once (stored, or duplicate for what the engine had).
#[test]
fn a_lost_connection_is_resumed_without_copies() {
    let dir = TempDir::new("client-resume");
    let engine = Engine::start(EngineConfig::local(dir.path())).unwrap();
    let (proxy, stop) = cutting_proxy(engine.started.tcp.unwrap(), 40_000);
    let options = ProducerOptions {
        producer_id: 0xC11E_0001,
        max_batch: 32,
        window: 8,
        ..ProducerOptions::default()
    };
    let mut producer = Producer::connect(proxy, options).unwrap();
    for id in 0..5000u64 {
        producer
            .push(&EventHeader::new(id, 0, Priority::High, 0), &[7; 40])
            .unwrap();
    }
    let totals = producer.flush().unwrap();
    stop.store(true, Ordering::Relaxed);
    assert!(
        producer.reconnects() >= 1,
        "the proxy cut the first connection"
    );
    assert_eq!(totals.total(), 5000, "{totals:?}");
    assert_eq!(
        (totals.dead_lettered, totals.rejected),
        (0, 0),
        "{totals:?}"
    );
    engine.stop().unwrap();
    let ids = realtime_ids(&dir);
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "an event stored twice");
    assert_eq!(sorted, (0..5000).collect::<Vec<_>>(), "every event stored");
}
