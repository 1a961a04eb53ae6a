//! `loadgen` with consumers against a miniature engine: a producer port that stores every
//! event it is sent as a record of its lane's log and acknowledges it, and a consumer
//! listener that streams those logs (protocol version 3) to its subscribers. Checks that
//! every consumer reads every stored event once and that latencies are measured.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use pinstream_client::loadgen::{self, LoadConfig};
use pinstream_core::event::{Lane, Origin, Priority};
use pinstream_core::process::StoredEvent;
use pinstream_core::record::{self, RECORD_HEADER_LEN};
use pinstream_core::wire::{
    self, Ack, DataPrefix, Frame, Hello, NO_COMMIT, Start, StreamLog, Subscribed,
};

/// Sealed records per log code.
type Logs = Arc<Mutex<[Vec<Vec<u8>>; 5]>>;

fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let n = u32::from_le_bytes(len) as usize;
    let mut frame = vec![0u8; n];
    frame[..4].copy_from_slice(&len);
    s.read_exact(&mut frame[4..]).ok()?;
    Some(frame)
}

fn producer_port(logs: Logs) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut out = [0u8; 128];
        read_frame(&mut s).unwrap();
        let reply = Hello {
            producer_id: 1,
            max_payload: 65_535,
            ..Hello::reply(2, 65_536, 1)
        };
        let n = wire::encode_hello(&mut out, 1, &reply).unwrap();
        s.write_all(&out[..n]).unwrap();
        let mut ack = Ack::default();
        while let Some(f) = read_frame(&mut s) {
            let f = Frame::new_checked(&f, 65_536).unwrap();
            let mut logs = logs.lock().unwrap();
            for e in f.events() {
                let header = e.header();
                let lane = header.priority.lane();
                let log = &mut logs[lane as usize];
                let ev = StoredEvent {
                    lane,
                    header: &header,
                    origin: Origin::new(1, f.seq()),
                    received: 0,
                    payload: e.payload(),
                };
                let mut rec = vec![0u8; RECORD_HEADER_LEN + record::event_len(e.payload().len())];
                record::encode_event(&mut rec[RECORD_HEADER_LEN..], &ev).unwrap();
                record::seal(&mut rec, log.len() as u64, record::KIND_EVENT);
                log.push(rec);
                ack.stored += 1;
            }
            drop(logs);
            ack.through_seq = f.seq();
            let n = wire::encode_ack_v2(&mut out, 2, &ack).unwrap();
            s.write_all(&out[..n]).unwrap();
        }
    });
    addr
}

fn consumer_listener(logs: Logs, stop: Arc<AtomicBool>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let (logs, stop) = (Arc::clone(&logs), Arc::clone(&stop));
            thread::spawn(move || serve(s.unwrap(), &logs, &stop));
        }
    });
    addr
}

/// One subscription: everything from `latest` on, as it is stored (the credit window is
/// far above what the test sends, so it is not tracked here; client/tests/consumer.rs
/// checks it).
fn serve(mut s: TcpStream, logs: &Logs, stop: &AtomicBool) {
    let mut out = vec![0u8; 1 << 20];
    read_frame(&mut s).unwrap();
    let n = wire::encode_hello(&mut out, 1, &Hello::reply(3, 65_536, 2)).unwrap();
    s.write_all(&out[..n]).unwrap();
    let sub = read_frame(&mut s).unwrap();
    let sub = Frame::new_checked(&sub, 65_536)
        .unwrap()
        .subscribe()
        .unwrap();
    assert_eq!(sub.start_at(), Some(Start::Latest));
    let log = sub.stream_log().unwrap();
    let mut next = logs.lock().unwrap()[log as usize].len() as u64;
    let answer = Subscribed {
        start_offset: next,
        first_offset: 0,
        high_watermark: next,
        committed: NO_COMMIT,
    };
    let n = wire::encode_subscribed(&mut out, 2, &answer).unwrap();
    s.write_all(&out[..n]).unwrap();
    let mut seq = 3;
    while !stop.load(Ordering::Relaxed) {
        let (end, records) = {
            let logs = logs.lock().unwrap();
            let stored = &logs[log as usize];
            let end = (next + 100).min(stored.len() as u64);
            let records: Vec<u8> = stored[next as usize..end as usize]
                .iter()
                .flatten()
                .copied()
                .collect();
            (end, records)
        };
        if records.is_empty() {
            thread::sleep(Duration::from_millis(2));
            continue;
        }
        let prefix = DataPrefix::new(log, next, end, end, records.len());
        let n = wire::encode_data(&mut out, seq, &prefix, &records).unwrap();
        if s.write_all(&out[..n]).is_err() {
            return;
        }
        seq += 1;
        next = end;
    }
}

#[test]
fn every_consumer_reads_every_stored_event() {
    let logs: Logs = Arc::new(Mutex::new(Default::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let addr = producer_port(Arc::clone(&logs));
    let caddr = consumer_listener(Arc::clone(&logs), Arc::clone(&stop));
    let mut cfg = LoadConfig::new(addr, 2_000);
    cfg.priorities = vec![Priority::High, Priority::Medium];
    cfg.batch = 50;
    cfg.consumers = 2;
    cfg.consumer_addr = Some(caddr);
    let report = loadgen::spawn(&cfg, 1).unwrap().join().unwrap();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(report.outcomes.unwrap().stored, 2_000);
    let c = report.consume.as_ref().expect("consumers ran");
    assert_eq!(c.logs, [StreamLog::Realtime, StreamLog::Transactional]);
    assert_eq!(c.consumed, [2_000, 2_000]);
    assert_eq!(report.consume_error(), None);
    assert_eq!(c.latency.len(), 4_000, "one latency per event read");
    // Timestamps are the send time since the Unix epoch: latencies are small, not decades.
    assert!(c.latency.max() < 60_000_000_000, "{}", c.latency.max());
    let stored = logs.lock().unwrap();
    assert_eq!(stored[Lane::Realtime as usize].len(), 1_000);
}
