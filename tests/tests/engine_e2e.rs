//! The engine end to end over loopback: TCP frames in, acknowledgements back, records in the
//! logs; bad clients of every kind while a good one keeps being served; UDP.

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use pinstream_core::event::{EventHeader, Priority};
use pinstream_core::process::BatchStore;
use pinstream_core::reason::Reason;
use pinstream_core::wire::{BatchEncoder, Hello, encode_event};
use pinstream_host::engine::{Engine, EngineConfig, EngineHandle};
use pinstream_host::ingest::AckMode;
use pinstream_host::storage::record::{self, RecordBody};
use pinstream_host::storage::{Durability, LogId, LogReader};
use pinstream_tests::TempDir;
use pinstream_tests::client::{Client, Reply, set_recv_buffer};

const WAIT: Duration = Duration::from_secs(20);

fn config(dir: &TempDir) -> EngineConfig {
    let mut cfg = EngineConfig::local(dir.path());
    cfg.topics = vec!["a".into(), "b".into()];
    cfg.aggregate_window = Duration::from_millis(20);
    cfg
}

/// Every record of one log.
fn read_log(dir: &TempDir, name: &str) -> Vec<(u8, Vec<u8>)> {
    let mut reader = LogReader::open(&dir.path().join(name)).expect("open log");
    let mut out = Vec::new();
    while let Some(r) = reader.next_record() {
        let r = r.expect("a valid record");
        out.push((r.kind, r.body.to_vec()));
    }
    out
}

fn header(id: u64, topic: u16, priority: Priority) -> EventHeader {
    EventHeader::new(id, topic, priority, 0).with_value(id as i64)
}

/// Waits until `f` holds (the engine's counters are updated by its threads).
fn eventually(what: &str, f: impl Fn() -> bool) {
    let until = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn durable_acks_cover_every_event_and_the_logs_hold_them() {
    let dir = TempDir::new("e2e-durable");
    let mut cfg = config(&dir);
    // A 256-byte arena beside the 256-byte slots: the 300-byte payload below is too large.
    cfg.payload_arena_bytes = 256;
    let engine = Engine::start(cfg).expect("start");
    let addr = engine.started.tcp.expect("tcp");
    let mut client = Client::connect(addr).unwrap();
    let hello = client.hello().unwrap();
    assert_eq!(hello.max_version, 1);
    assert_ne!(hello.source, 0, "the server names the connection");

    let priorities = Priority::ALL;
    let (frames, per_frame) = (200u64, 10u64);
    let mut expect_events = [0u64; 3];
    let mut id = 0;
    for seq in 1..=frames {
        let events: Vec<_> = (0..per_frame)
            .map(|i| {
                id += 1;
                let p = priorities[((seq * per_frame + i) % 5) as usize];
                header(id, (id % 2) as u16, p)
            })
            .collect();
        for h in &events {
            expect_events[h.priority.lane().index()] += 1;
        }
        client
            .send(&Client::batch(seq, &events, |i| vec![i as u8; 100]))
            .unwrap();
    }
    // A duplicate (transactional), an unknown topic (dead letters) and an oversized payload
    // (rejected), in one more frame.
    let extra = [
        header(3, 0, Priority::Medium),
        header(999_001, 9, Priority::Medium),
        header(999_002, 0, Priority::High),
    ];
    // Event id 3 went out in frame 1 at index 2: priority (10 + 2) % 5 = Medium, so its
    // resend is a duplicate in the transactional lane.
    let dup_is_medium = priorities[((per_frame + 2) % 5) as usize] == Priority::Medium;
    assert!(dup_is_medium);
    client
        .send(&Client::batch(frames + 1, &extra, |i| {
            vec![7; if i == 2 { 300 } else { 10 }]
        }))
        .unwrap();
    let (ack, rejects) = client.wait_ack(frames + 1, WAIT).unwrap();
    let total = frames * per_frame + 3;
    assert_eq!(
        ack.stored + ack.dead_lettered + ack.rejected,
        total,
        "{ack:?}"
    );
    assert_eq!(ack.rejected, 1, "the oversized payload");
    assert_eq!(
        rejects
            .iter()
            .filter_map(|r| r.reason())
            .collect::<Vec<_>>(),
        [Reason::PayloadTooLarge]
    );
    // The duplicate is no dead letter: its event is stored, and protocol version 1
    // acknowledges it as stored (already).
    assert_eq!(ack.dead_lettered, 1, "the unknown topic only");
    assert_eq!(
        engine.stats().process.reason(Reason::Duplicate).get(),
        u64::from(dup_is_medium)
    );
    engine.stop().unwrap();

    // The logs hold exactly what was acknowledged as stored.
    let realtime = read_log(&dir, LogId::Realtime.name());
    let transactional = read_log(&dir, LogId::Transactional.name());
    let batch = read_log(&dir, LogId::Batch.name());
    let dead = read_log(&dir, LogId::DeadLetter.name());
    let aggregates = read_log(&dir, LogId::Aggregates.name());
    assert_eq!(realtime.len() as u64, expect_events[0]);
    assert_eq!(
        transactional.len() as u64,
        expect_events[1] + 1 - u64::from(dup_is_medium)
    );
    for (kind, body) in realtime.iter().chain(&transactional) {
        let RecordBody::Event(e) = record::decode(*kind, body).unwrap() else {
            panic!("an event record expected");
        };
        let want = if e.header.id > 999_000 { 10 } else { 100 };
        assert_eq!(e.payload.len(), want, "{:?}", e.header);
    }
    // The batch log holds every batch-lane event (`pipeline.batch_store = "events"`) and
    // nothing else; the aggregates log the per-window aggregates that summarise them, and
    // nothing else (a consumer subscribes to one log, one kind of record).
    let mut batch_events = 0u64;
    for (k, b) in &batch {
        match record::decode(*k, b).unwrap() {
            RecordBody::Event(_) => batch_events += 1,
            other => panic!("only events expected in the batch log, got {other:?}"),
        }
    }
    let mut aggregated = 0u64;
    for (k, b) in &aggregates {
        match record::decode(*k, b).unwrap() {
            RecordBody::Aggregate(a) => aggregated += a.count,
            other => panic!("only aggregates expected in the aggregates log, got {other:?}"),
        }
    }
    assert_eq!(batch_events, expect_events[2]);
    assert_eq!(aggregated, expect_events[2]);
    assert_eq!(
        realtime.len() as u64
            + transactional.len() as u64
            + batch_events
            + u64::from(dup_is_medium),
        ack.stored,
        "stored, and the duplicate acknowledged as stored"
    );
    let reasons: Vec<Reason> = dead
        .iter()
        .map(|(k, b)| match record::decode(*k, b).unwrap() {
            RecordBody::DeadLetter(d) => d.reason,
            other => panic!("a dead letter expected, got {other:?}"),
        })
        .collect();
    assert!(reasons.contains(&Reason::UnknownTopic), "{reasons:?}");
    assert!(
        !reasons.contains(&Reason::Duplicate),
        "a duplicate is not dead-lettered: {reasons:?}"
    );
}

#[test]
fn every_ack_mode_and_durability_settles_every_frame() {
    for (ack, durability) in [
        (AckMode::Accepted, Durability::None),
        (AckMode::Durable, Durability::None),
        (AckMode::Durable, Durability::Always),
    ] {
        let dir = TempDir::new("e2e-modes");
        let mut cfg = config(&dir);
        cfg.ack = ack;
        cfg.log.durability = durability;
        let engine = Engine::start(cfg).unwrap();
        let mut client = Client::connect(engine.started.tcp.unwrap()).unwrap();
        for seq in 1..=50u64 {
            let events: Vec<_> = (0..20)
                .map(|i| header(seq * 100 + i, 0, Priority::ALL[(i % 5) as usize]))
                .collect();
            client
                .send(&Client::batch(seq, &events, |_| vec![1; 50]))
                .unwrap();
        }
        let (a, _) = client.wait_ack(50, WAIT).unwrap();
        assert_eq!(
            (a.stored, a.dead_lettered, a.rejected),
            (1000, 0, 0),
            "{ack:?} {durability:?}"
        );
        engine.stop().unwrap();
    }
}

/// A client that behaves, to show the engine keeps serving while others misbehave.
fn good_round(client: &mut Client, seq: u64) {
    let events = [header(1_000_000 + seq, 0, Priority::High)];
    client
        .send(&Client::batch(seq, &events, |_| b"ok".to_vec()))
        .unwrap();
    let (ack, _) = client.wait_ack(seq, WAIT).unwrap();
    assert_eq!(ack.through_seq, seq);
}

fn start_for_bad_input(dir: &TempDir) -> EngineHandle {
    let mut cfg = config(dir);
    cfg.tcp_limits.max_rejects = 3;
    cfg.tcp_limits.stall_timeout = Duration::from_millis(300);
    cfg.tcp_limits.send_buffer = 4096;
    // A 256-byte arena beside the 256-byte slots: 300-byte payloads are too large.
    cfg.payload_arena_bytes = 256;
    Engine::start(cfg).unwrap()
}

#[test]
fn bad_clients_are_rejected_closed_and_counted_while_a_good_one_is_served() {
    let dir = TempDir::new("e2e-bad");
    let engine = start_for_bad_input(&dir);
    let addr = engine.started.tcp.unwrap();
    let stats = engine.stats().clone();
    let mut good = Client::connect(addr).unwrap();
    let mut seq = 0;
    seq += 1;
    good_round(&mut good, seq);

    // Garbage: a length field of 0x67676767 is beyond the maximum: framing lost, REJECT, close.
    let mut c = Client::connect(addr).unwrap();
    c.send(&[0x67; 64]).unwrap();
    match c.next_reply().unwrap() {
        Reply::Reject(r) => assert_eq!(r.reason(), Some(Reason::TooLong)),
        other => panic!("{other:?}"),
    }
    assert!(c.closed_by_server(WAIT));
    seq += 1;
    good_round(&mut good, seq);

    // A length below 20.
    let mut c = Client::connect(addr).unwrap();
    c.send(&[5, 0, 0, 0, 1, 2, 0, 0]).unwrap();
    match c.next_reply().unwrap() {
        Reply::Reject(r) => assert_eq!(r.reason(), Some(Reason::BadLength)),
        other => panic!("{other:?}"),
    }
    assert!(c.closed_by_server(WAIT));

    // Bad CRCs: each one REJECTed, the connection kept until max_rejects (3), then closed.
    let mut c = Client::connect(addr).unwrap();
    let mut frame = [0u8; 128];
    let n = encode_event(&mut frame, 1, &header(5, 0, Priority::High), b"x").unwrap();
    frame[n - 1] ^= 0xFF;
    c.send(&frame[..n]).unwrap();
    match c.next_reply().unwrap() {
        Reply::Reject(r) => assert_eq!(r.reason(), Some(Reason::BadCrc)),
        other => panic!("{other:?}"),
    }
    // Still served: a valid frame is acknowledged.
    let n2 = encode_event(&mut frame, 2, &header(6, 0, Priority::High), b"y").unwrap();
    c.send(&frame[..n2]).unwrap();
    let (ack, _) = c.wait_ack(2, WAIT).unwrap();
    assert_eq!((ack.stored, ack.rejected), (1, 1));
    let n = encode_event(&mut frame, 3, &header(7, 0, Priority::High), b"x").unwrap();
    frame[n - 1] ^= 0xFF;
    for _ in 0..3 {
        c.send(&frame[..n]).unwrap();
    }
    assert!(c.closed_by_server(WAIT), "closed after max_rejects");
    seq += 1;
    good_round(&mut good, seq);

    // A truncated frame, then the client hangs up: nothing of it is dispatched, the
    // connection goes.
    let (ingested, closed) = (stats.dispatch.ingested.get(), stats.host.tcp_closed.get());
    let mut c = TcpStream::connect(addr).unwrap();
    let n = encode_event(&mut frame, 1, &header(8, 0, Priority::High), b"truncated").unwrap();
    c.write_all(&frame[..n - 5]).unwrap();
    drop(c);
    eventually("the truncated client closed", || {
        stats.host.tcp_closed.get() > closed
    });
    assert_eq!(stats.dispatch.ingested.get(), ingested);

    // 1000 connections opened and dropped.
    let before = stats.host.tcp_accepted.get();
    for _ in 0..1000 {
        drop(TcpStream::connect(addr).unwrap());
    }
    eventually("1000 accepted", || {
        stats.host.tcp_accepted.get() >= before + 1000
    });
    eventually("them closed", || stats.host.tcp_open.get() == 1);
    seq += 1;
    good_round(&mut good, seq);

    // A client that sends and never reads: its output fills, it stalls, it is closed.
    let mut slow = TcpStream::connect(addr).unwrap();
    set_recv_buffer(&slow, 4096).unwrap();
    slow.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let stalled_before = stats.host.tcp_closed_stalled.get();
    let mut s = 0u64;
    let deadline = Instant::now() + WAIT;
    while stats.host.tcp_closed_stalled.get() == stalled_before {
        assert!(
            Instant::now() < deadline,
            "the stalled client was never closed: sent {s}, {:?}",
            stats.host
        );
        // Every event is too large for a pool slot: 100 REJECTs per frame the client never
        // reads (ACKs alone are coalesced and would not pile up).
        s += 1;
        let events: Vec<_> = (0..100)
            .map(|i| header(2_000_000 + s * 100 + i, 0, Priority::High))
            .collect();
        let oversized = Client::batch(s, &events, |_| vec![0; 300]);
        if slow.write_all(&oversized).is_err() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    seq += 1;
    good_round(&mut good, seq);

    let h = &stats.host;
    assert!(
        h.tcp_closed_malformed.get() >= 3,
        "garbage, bad length, bad CRCs"
    );
    assert!(h.tcp_rejects_sent.get() >= 6);
    assert_eq!(stats.dispatch.reason(Reason::BadCrc).get(), 4);
    assert!(stats.dispatch.reason(Reason::TooLong).get() >= 1);
    assert!(stats.dispatch.reason(Reason::BadLength).get() >= 1);
    engine.stop().unwrap();
}

#[test]
fn over_the_connection_limit_is_refused_and_counted() {
    let dir = TempDir::new("e2e-limit");
    let mut cfg = config(&dir);
    cfg.tcp_limits.max_connections = 4;
    let engine = Engine::start(cfg).unwrap();
    let addr = engine.started.tcp.unwrap();
    let mut keep: Vec<Client> = (0..4).map(|_| Client::connect(addr).unwrap()).collect();
    for (i, c) in keep.iter_mut().enumerate() {
        good_round(c, i as u64 + 1);
    }
    let mut extra = Client::connect(addr).unwrap();
    assert!(extra.closed_by_server(WAIT));
    assert_eq!(engine.stats().host.tcp_refused.get(), 1);
    good_round(&mut keep[0], 10);
    engine.stop().unwrap();
}

#[test]
fn udp_datagrams_are_stored_and_malformed_ones_counted() {
    let dir = TempDir::new("e2e-udp");
    let engine = Engine::start(config(&dir)).unwrap();
    let addr = engine.started.udp.unwrap();
    let stats = engine.stats().clone();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut buf = vec![0u8; 8192];
    for d in 0..20u64 {
        let mut enc = BatchEncoder::new(&mut buf, d + 1).unwrap();
        for i in 0..10 {
            enc.push(&header(d * 10 + i + 1, 0, Priority::High), &[3; 100])
                .unwrap();
        }
        let n = enc.finish().unwrap();
        socket.send_to(&buf[..n], addr).unwrap();
    }
    socket
        .send_to(b"not a frame at all, just bytes", addr)
        .unwrap();
    eventually("200 UDP events stored", || {
        stats.process.stored.get() >= 200
    });
    eventually("the bad datagram counted", || {
        stats.host.udp_malformed.get() >= 1
    });
    assert_eq!(stats.host.udp_datagrams.get(), 21);
    engine.stop().unwrap();
    assert_eq!(read_log(&dir, LogId::Realtime.name()).len(), 200);
}

#[test]
fn events_acknowledged_before_a_restart_are_there_after_it() {
    let dir = TempDir::new("e2e-restart");
    let engine = Engine::start(config(&dir)).unwrap();
    let mut client = Client::connect(engine.started.tcp.unwrap()).unwrap();
    for seq in 1..=10u64 {
        let events: Vec<_> = (0..10)
            .map(|i| header(seq * 10 + i, 0, Priority::High))
            .collect();
        client
            .send(&Client::batch(seq, &events, |_| vec![9; 64]))
            .unwrap();
    }
    client.wait_ack(10, WAIT).unwrap();
    engine.stop().unwrap();
    let engine = Engine::start(config(&dir)).unwrap();
    assert!(
        engine.started.recovery.iter().all(|r| r.is_clean()),
        "{:?}",
        engine.started.recovery
    );
    let mut client = Client::connect(engine.started.tcp.unwrap()).unwrap();
    let events: Vec<_> = (0..10)
        .map(|i| header(5000 + i, 0, Priority::High))
        .collect();
    client
        .send(&Client::batch(1, &events, |_| vec![9; 64]))
        .unwrap();
    client.wait_ack(1, WAIT).unwrap();
    engine.stop().unwrap();
    assert_eq!(read_log(&dir, LogId::Realtime.name()).len(), 110);
}

/// GET `path` from the admin endpoint: (status line, body).
fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use std::io::Read;
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

#[test]
fn the_admin_endpoint_shows_the_engine() {
    let dir = TempDir::new("e2e-admin");
    let engine = Engine::start(config(&dir)).unwrap();
    let source: std::sync::Arc<dyn pinstream_host::admin::AdminSource> = engine.stats().clone();
    let admin = pinstream_host::admin::start("127.0.0.1:0".parse().unwrap(), source).unwrap();
    let mut client = Client::connect(engine.started.tcp.unwrap()).unwrap();
    let events: Vec<_> = (0..50).map(|i| header(i + 1, 0, Priority::High)).collect();
    client
        .send(&Client::batch(1, &events, |_| vec![1; 10]))
        .unwrap();
    client.wait_ack(1, WAIT).unwrap();

    let (status, body) = http_get(admin.local_addr(), "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    for needle in [
        "pinstream_events_ingested_total{stage=\"dispatch\"} 50",
        "pinstream_events_stored_total{stage=\"process\"} 50",
        "pinstream_stage_latency_seconds_count{stage=\"dispatch\"}",
        "pinstream_thread_busy_ratio{thread=\"ingest\"}",
        "pinstream_tcp_connections_open 1",
        "pinstream_admin_refusals_total{status=\"408\"} 0",
        "pinstream_admin_connections_open 1",
    ] {
        assert!(body.contains(needle), "{needle} missing from\n{body}");
    }
    // The free space of the data directory's file system, read at the scrape.
    let free: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("pinstream_storage_free_bytes "))
        .expect("pinstream_storage_free_bytes")
        .parse()
        .unwrap();
    let space = pinstream_host::disk::DiskSpace::of(dir.path()).unwrap();
    assert!(
        free > 0.0 && free <= space.total as f64,
        "{free} of {space:?}"
    );
    if let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (status, body) = http_get(admin.local_addr(), "/health");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains("\"level\":\"healthy\""), "{body}");
    admin.stop();
    engine.stop().unwrap();
}

#[test]
fn frames_resolved_during_shutdown_are_still_acknowledged() {
    let dir = TempDir::new("e2e-shutdown");
    let engine = Engine::start(config(&dir)).unwrap();
    let mut client = Client::connect(engine.started.tcp.unwrap()).unwrap();
    for seq in 1..=20u64 {
        // Realtime and batch lane events: the batch ones wait for their window to close.
        let events: Vec<_> = (0..10)
            .map(|i| {
                header(
                    seq * 10 + i,
                    0,
                    if i % 2 == 0 {
                        Priority::High
                    } else {
                        Priority::Batch
                    },
                )
            })
            .collect();
        client
            .send(&Client::batch(seq, &events, |_| vec![2; 20]))
            .unwrap();
    }
    // Stop as soon as the engine has read the frames, while they are in flight (the batch
    // events wait for their window); the ACKs must still come. (Frames not yet read when
    // intake stops are not taken: the client resends those.)
    let stats = engine.stats().clone();
    eventually("20 frames read", || stats.host.tcp_frames_in.get() >= 20);
    let stopper = std::thread::spawn(move || engine.stop());
    let (ack, _) = client.wait_ack(20, WAIT).unwrap();
    assert_eq!((ack.stored, ack.dead_lettered, ack.rejected), (200, 0, 0));
    assert!(client.closed_by_server(WAIT));
    stopper.join().unwrap().unwrap();
    assert_eq!(read_log(&dir, LogId::Realtime.name()).len(), 100);
}

#[test]
fn a_half_closed_client_gets_its_acks() {
    let dir = TempDir::new("e2e-half-close");
    let engine = Engine::start(config(&dir)).unwrap();
    let mut client = Client::connect(engine.started.tcp.unwrap()).unwrap();
    for seq in 1..=10u64 {
        let events: Vec<_> = (0..10)
            .map(|i| header(seq * 10 + i, 0, Priority::Batch))
            .collect();
        client
            .send(&Client::batch(seq, &events, |_| vec![4; 20]))
            .unwrap();
    }
    client.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let (ack, _) = client.wait_ack(10, WAIT).unwrap();
    assert_eq!(ack.stored, 100);
    assert!(
        client.closed_by_server(WAIT),
        "closed once everything is acknowledged"
    );
    engine.stop().unwrap();
}

/// A frame that fails its CRC cannot vouch for its seq: one flipped bit in the seq field
/// (2^40 + 2 instead of 2) must not move the ACK watermark there, or every later ACK would
/// claim frames never stored. Nor does an ACK frame sent to the server.
#[test]
fn unverified_frames_do_not_move_the_watermark() {
    let dir = TempDir::new("e2e-watermark");
    let engine = Engine::start(config(&dir)).unwrap();
    let mut client = Client::connect(engine.started.tcp.unwrap()).unwrap();
    let one = |seq: u64, id: u64| Client::batch(seq, &[header(id, 0, Priority::High)], |_| vec![1]);
    client.send(&one(1, 1)).unwrap();
    let (ack, _) = client.wait_ack(1, WAIT).unwrap();
    assert_eq!(ack.through_seq, 1);
    // Frame 2 with a bit flipped in its seq: the CRC no longer matches.
    let mut bad = one(2, 2);
    bad[8 + 5] ^= 0x01; // seq 2 -> 2 + 2^40
    client.send(&bad).unwrap();
    // An ACK frame sent to the server, with a seq far ahead.
    let mut ack_frame = [0u8; 64];
    let n = pinstream_core::wire::encode_ack(&mut ack_frame, 1 << 50, &Default::default()).unwrap();
    client.send(&ack_frame[..n]).unwrap();
    client.send(&one(3, 3)).unwrap();
    let (ack, rejects) = client.wait_ack(3, WAIT).unwrap();
    assert_eq!(ack.through_seq, 3, "{ack:?}");
    assert_eq!((ack.stored, ack.rejected), (2, 2), "{ack:?}");
    let reasons: Vec<_> = rejects.iter().map(|r| r.reason()).collect();
    assert_eq!(
        reasons,
        [Some(Reason::BadCrc), Some(Reason::UnexpectedKind)],
        "{rejects:?}"
    );
    // Later frames: the watermark follows the real seqs, never beyond.
    client.send(&one(4, 4)).unwrap();
    let (ack, _) = client.wait_ack(4, WAIT).unwrap();
    assert_eq!(ack.through_seq, 4);
    engine.stop().unwrap();
}

#[test]
fn seqs_must_increase_on_a_connection() {
    let dir = TempDir::new("e2e-seq");
    let engine = Engine::start(config(&dir)).unwrap();
    let mut client = Client::connect(engine.started.tcp.unwrap()).unwrap();
    for (seq, id) in [(5u64, 1u64), (5, 2), (3, 3), (6, 4)] {
        client
            .send(&Client::batch(
                seq,
                &[header(id, 0, Priority::High)],
                |_| vec![1],
            ))
            .unwrap();
    }
    let (ack, rejects) = client.wait_ack(6, WAIT).unwrap();
    assert_eq!((ack.stored, ack.rejected), (2, 2), "{ack:?}");
    let reasons: Vec<_> = rejects.iter().map(|r| (r.frame_seq, r.reason())).collect();
    assert_eq!(
        reasons,
        [
            (5, Some(Reason::SeqNotIncreasing)),
            (3, Some(Reason::SeqNotIncreasing))
        ]
    );
    assert_eq!(
        engine
            .stats()
            .dispatch
            .reason(Reason::SeqNotIncreasing)
            .get(),
        2
    );
    engine.stop().unwrap();
}

#[test]
fn batch_lane_acks_advance_under_sustained_batch_load() {
    // Both ways of storing the batch lane: events one by one (settled by completions), and
    // aggregates only (settled by the batch watermark).
    for store in [BatchStore::Events, BatchStore::Aggregates] {
        batch_lane_acks_advance(store);
    }
}

fn batch_lane_acks_advance(store: BatchStore) {
    let dir = TempDir::new("e2e-batch-load");
    let mut cfg = config(&dir);
    cfg.batch_store = store;
    let engine = Engine::start(cfg).unwrap();
    let udp_addr = engine.started.udp.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A UDP flood of batch-lane events: the batch lane never stays empty for long.
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut buf = vec![0u8; 8192];
            let mut id = 10_000_000u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut enc = BatchEncoder::new(&mut buf, id).unwrap();
                for _ in 0..50 {
                    id += 1;
                    enc.push(&header(id, 0, Priority::Batch), &[5; 40]).unwrap();
                }
                let n = enc.finish().unwrap();
                let _ = socket.send_to(&buf[..n], udp_addr);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let mut client = Client::connect(engine.started.tcp.unwrap()).unwrap();
    for seq in 1..=5u64 {
        let events: Vec<_> = (0..10)
            .map(|i| header(seq * 10 + i, 0, Priority::Batch))
            .collect();
        client
            .send(&Client::batch(seq, &events, |_| vec![6; 10]))
            .unwrap();
    }
    let result = client.wait_ack(5, WAIT);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flood.join().unwrap();
    let (ack, _) = result.expect("batch frames acknowledged while the flood goes on");
    assert_eq!(ack.stored + ack.dead_lettered, 50, "{store:?}: {ack:?}");
    engine.stop().unwrap();
    // What the batch log holds: the events themselves only when they are stored one by one,
    // and never an aggregate; the aggregates are in their own log, whatever is stored.
    let batch = read_log(&dir, LogId::Batch.name());
    for (k, b) in &batch {
        let rec = record::decode(*k, b).unwrap();
        assert!(
            matches!(rec, RecordBody::Event(_)),
            "{store:?}: only events in the batch log, got {rec:?}"
        );
    }
    match store {
        BatchStore::Events => assert!(batch.len() >= 50, "{} batch events", batch.len()),
        BatchStore::Aggregates => assert!(batch.is_empty(), "{} batch records", batch.len()),
    }
    let mut aggregated = 0u64;
    for (k, b) in &read_log(&dir, LogId::Aggregates.name()) {
        match record::decode(*k, b).unwrap() {
            RecordBody::Aggregate(a) => aggregated += a.count,
            other => panic!("{store:?}: only aggregates in the aggregates log, got {other:?}"),
        }
    }
    // Under "aggregates" the 50 acknowledged events are acknowledged because their
    // windows' aggregates were stored (in the aggregates log).
    assert!(
        aggregated >= 50,
        "{store:?}: {aggregated} events aggregated"
    );
}

/// Issue 15, item 3: one kind of record per log. Low-priority events go to the `batch` log
/// (events only; none under `pipeline.batch_store = "aggregates"`), their windows'
/// aggregates to the `aggregates` log (aggregates only), whatever is stored; every event is
/// acknowledged as stored either way (under "aggregates", once its aggregate is committed in
/// the aggregates log).
#[test]
fn batch_lane_events_and_aggregates_have_a_log_each() {
    for store in [BatchStore::Events, BatchStore::Aggregates] {
        let dir = TempDir::new("e2e-aggregates-log");
        let mut cfg = config(&dir);
        cfg.batch_store = store;
        let engine = Engine::start(cfg).unwrap();
        let mut client = Client::connect(engine.started.tcp.unwrap()).unwrap();
        let (frames, per_frame) = (20u64, 10u64);
        for seq in 1..=frames {
            let events: Vec<_> = (0..per_frame)
                .map(|i| header(seq * 100 + i, (i % 2) as u16, Priority::Low))
                .collect();
            client
                .send(&Client::batch(seq, &events, |_| vec![4; 30]))
                .unwrap();
        }
        let (ack, _) = client.wait_ack(frames, WAIT).unwrap();
        assert_eq!(ack.stored, frames * per_frame, "{store:?}: {ack:?}");
        engine.stop().unwrap();

        let batch = read_log(&dir, LogId::Batch.name());
        let mut ids = Vec::new();
        for (k, b) in &batch {
            match record::decode(*k, b).unwrap() {
                RecordBody::Event(e) => {
                    assert_eq!(e.header.priority, Priority::Low);
                    ids.push(e.header.id);
                }
                other => panic!("{store:?}: only events in the batch log, got {other:?}"),
            }
        }
        match store {
            BatchStore::Events => assert_eq!(ids.len() as u64, frames * per_frame),
            BatchStore::Aggregates => assert!(ids.is_empty(), "{store:?}: {ids:?}"),
        }
        let mut aggregated = 0;
        for (k, b) in &read_log(&dir, LogId::Aggregates.name()) {
            match record::decode(*k, b).unwrap() {
                RecordBody::Aggregate(a) => aggregated += a.count,
                other => panic!("{store:?}: only aggregates in their log, got {other:?}"),
            }
        }
        assert_eq!(aggregated, frames * per_frame, "{store:?}");
        // The other logs hold none of it.
        for log in [LogId::Realtime, LogId::Transactional, LogId::DeadLetter] {
            assert!(read_log(&dir, log.name()).is_empty(), "{store:?}: {log:?}");
        }
    }
}

/// Protocol version 2: a producer that reconnects with its id learns the last sequence the
/// engine resolved and gets what it resends up to there acknowledged as duplicates, not
/// stored again; in the realtime lane, which has no id window, only the session can tell.
#[test]
fn producer_sessions_answer_resends_as_duplicates() {
    let dir = TempDir::new("e2e-producer");
    let engine = Engine::start(config(&dir)).unwrap();
    let addr = engine.started.tcp.unwrap();
    let frame = |seq: u64| {
        let events: Vec<_> = (0..10)
            .map(|i| header(seq * 100 + i, 0, Priority::High))
            .collect();
        Client::batch(seq, &events, |_| vec![3; 20])
    };
    let mut c = Client::connect(addr).unwrap();
    let hello = c.hello_producer(0).unwrap();
    assert_eq!((hello.min_version, hello.max_version), (2, 2));
    assert_ne!(hello.producer_id, 0, "an id is assigned");
    assert_eq!(hello.last_seq, 0);
    assert_eq!(hello.max_payload, 256);
    assert_eq!(
        u64::from(hello.dedup_window_ms),
        EngineConfig::local(dir.path()).dedup_window.as_millis() as u64
    );
    let id = hello.producer_id;
    for seq in 1..=5 {
        c.send(&frame(seq)).unwrap();
    }
    let (ack, _) = c.wait_ack(5, WAIT).unwrap();
    assert_eq!((ack.stored, ack.duplicates), (50, 0));
    drop(c);

    // Reconnect as the same producer: frames 3 to 5 were resolved (their ACK may have been
    // lost), 6 and 7 are new.
    let mut c = Client::connect(addr).unwrap();
    let hello = c.hello_producer(id).unwrap();
    assert_eq!((hello.producer_id, hello.last_seq), (id, 5));
    for seq in 3..=7 {
        c.send(&frame(seq)).unwrap();
    }
    let (ack, _) = c.wait_ack(7, WAIT).unwrap();
    assert_eq!(
        (ack.stored, ack.duplicates, ack.dead_lettered, ack.rejected),
        (20, 30, 0, 0),
        "{ack:?}"
    );
    let stats = std::sync::Arc::clone(engine.stats());
    assert_eq!(stats.dispatch.reason(Reason::Duplicate).get(), 30);
    // A second HELLO on a connection is refused and changes nothing.
    let mut buf = [0u8; 64];
    let n = pinstream_core::wire::encode_hello(&mut buf, 8, &Hello::producer(65_536, 99)).unwrap();
    c.send(&buf[..n]).unwrap();
    c.send(&frame(8)).unwrap();
    let (ack, rejects) = c.wait_ack(8, WAIT).unwrap();
    assert_eq!((ack.stored, ack.rejected), (30, 1), "{ack:?}");
    assert_eq!(rejects[0].reason(), Some(Reason::UnexpectedKind));

    // Another connection taking the producer over fences this one.
    let mut d = Client::connect(addr).unwrap();
    let hello = d.hello_producer(id).unwrap();
    assert_eq!(hello.last_seq, 8);
    assert!(c.closed_by_server(WAIT), "the old connection is fenced");
    assert_eq!(stats.host.tcp_producers_fenced.get(), 1);

    // A connection that goes away with frames in flight: the next HELLO's last_seq covers
    // whatever the engine took of them (its reply waits for them to resolve), so resending
    // everything from there stores nothing twice.
    for seq in 9..=40 {
        d.send(&frame(seq)).unwrap();
    }
    drop(d);
    let mut e = Client::connect(addr).unwrap();
    let hello = e.hello_producer(id).unwrap();
    assert!((8..=40).contains(&hello.last_seq), "{hello:?}");
    for seq in 9..=41 {
        e.send(&frame(seq)).unwrap();
    }
    // The watermark starts at the HELLO's last_seq (those frames are resolved), so an ACK
    // through 40 may come before the resends are counted; frame 41 is new, and its ACK
    // comes after every frame before it was taken.
    let (ack, _) = e.wait_ack(41, WAIT).unwrap();
    assert_eq!(ack.stored + ack.duplicates, 330, "{ack:?}");
    assert_eq!(ack.duplicates, (hello.last_seq - 8) * 10, "{ack:?}");
    engine.stop().unwrap();

    // Every event stored once.
    let ids: Vec<u64> = read_log(&dir, LogId::Realtime.name())
        .iter()
        .map(|(k, b)| match record::decode(*k, b).unwrap() {
            RecordBody::Event(e) => e.header.id,
            other => panic!("{other:?}"),
        })
        .collect();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!((ids.len(), unique.len()), (410, 410));
}

/// HELLO errors close the connection (PROTOCOL.md §5); a version-1 client is still served.
#[test]
fn hello_errors_close_and_version_1_clients_are_served() {
    let dir = TempDir::new("e2e-hello");
    let engine = Engine::start(config(&dir)).unwrap();
    let addr = engine.started.tcp.unwrap();
    // No common version.
    let mut c = Client::connect(addr).unwrap();
    let mut buf = [0u8; 64];
    let n = pinstream_core::wire::encode_hello(&mut buf, 0, &Hello::client(3, 4, 65_536)).unwrap();
    c.send(&buf[..n]).unwrap();
    match c.next_reply().unwrap() {
        Reply::Reject(r) => assert_eq!(r.reason(), Some(Reason::UnsupportedVersion)),
        other => panic!("{other:?}"),
    }
    assert!(c.closed_by_server(WAIT));
    // An empty range (0/0, 2/1): not a valid HELLO at all.
    for (min, max) in [(0u8, 0u8), (2, 1)] {
        let mut c = Client::connect(addr).unwrap();
        let n =
            pinstream_core::wire::encode_hello(&mut buf, 0, &Hello::client(1, 1, 65_536)).unwrap();
        buf[16] = min;
        buf[17] = max;
        let crc = pinstream_core::wire::crc32c(&buf[..n - 4]);
        buf[n - 4..n].copy_from_slice(&crc.to_le_bytes());
        c.send(&buf[..n]).unwrap();
        c.send(&Client::batch(1, &[header(1, 0, Priority::High)], |_| {
            vec![1]
        }))
        .unwrap();
        match c.next_reply().unwrap() {
            Reply::Reject(r) => assert!(r.reason().is_some(), "{r:?}"),
            other => panic!("{other:?}"),
        }
        assert!(c.closed_by_server(WAIT), "range {min}/{max}");
    }
    // Version 1 still works, with version-1 ACKs.
    let mut c = Client::connect(addr).unwrap();
    let hello = c.hello().unwrap();
    assert_eq!((hello.max_version, hello.producer_id), (1, 0));
    c.send(&Client::batch(1, &[header(2, 0, Priority::High)], |_| {
        vec![1]
    }))
    .unwrap();
    let (ack, _) = c.wait_ack(1, WAIT).unwrap();
    assert_eq!((ack.stored, ack.duplicates), (1, 0));
    engine.stop().unwrap();
    // The frame sent after a refused HELLO was never stored.
    assert_eq!(read_log(&dir, LogId::Realtime.name()).len(), 1);
}

/// When every producer session is held by a connection, a HELLO for a new producer is
/// refused with `too_many_producers` and the connection closed.
#[test]
fn a_full_producer_table_refuses_new_producers() {
    let dir = TempDir::new("e2e-producers-full");
    let mut cfg = config(&dir);
    cfg.tcp_limits.max_producers = 1;
    let engine = Engine::start(cfg).unwrap();
    let addr = engine.started.tcp.unwrap();
    let mut a = Client::connect(addr).unwrap();
    a.hello_producer(11).unwrap();
    let mut b = Client::connect(addr).unwrap();
    let mut buf = [0u8; 64];
    let n = pinstream_core::wire::encode_hello(&mut buf, 0, &Hello::producer(65_536, 12)).unwrap();
    b.send(&buf[..n]).unwrap();
    match b.next_reply().unwrap() {
        Reply::Reject(r) => assert_eq!(r.reason(), Some(Reason::TooManyProducers)),
        other => panic!("{other:?}"),
    }
    assert!(b.closed_by_server(WAIT));
    assert_eq!(engine.stats().host.tcp_producers_refused.get(), 1);
    // Once the first producer's connection is gone, its session may give way.
    drop(a);
    let mut c = Client::connect(addr).unwrap();
    eventually("the first producer detached", || {
        engine.stats().host.tcp_open.get() <= 1
    });
    let hello = c.hello_producer(13).unwrap();
    assert_eq!(hello.producer_id, 13);
    assert_eq!(engine.stats().host.tcp_producers_evicted.get(), 1);
    engine.stop().unwrap();
}

/// The payload arena full is back-pressure for TCP: with an arena of 64 KiB and 30 000-byte
/// payloads (two fit at a time) and 128 frames in flight, the connection waits for room
/// instead of losing events: every event is stored, none dead-lettered, and the logs hold
/// every payload whole.
#[test]
fn a_full_payload_arena_makes_tcp_wait_not_dead_letter() {
    let dir = TempDir::new("e2e-arena-full");
    let mut cfg = config(&dir);
    cfg.payload_arena_bytes = 64 << 10;
    let engine = Engine::start(cfg).unwrap();
    let stats = engine.stats().clone();
    let mut client = Client::connect(engine.started.tcp.unwrap()).unwrap();
    client.hello().unwrap();
    let frames = 200u64;
    for seq in 1..=frames {
        let events = [header(seq, 0, Priority::High)];
        client
            .send(&Client::batch(seq, &events, |_| vec![seq as u8; 30_000]))
            .unwrap();
    }
    let (ack, rejects) = client.wait_ack(frames, WAIT).unwrap();
    assert!(rejects.is_empty(), "{rejects:?}");
    assert_eq!(
        (ack.stored, ack.dead_lettered, ack.rejected),
        (frames, 0, 0),
        "{ack:?}"
    );
    assert_eq!(stats.dispatch.reason(Reason::PoolExhausted).get(), 0);
    eprintln!(
        "arena waits: {} (tcp_waits_pool)",
        stats.host.tcp_waits_pool.get()
    );
    engine.stop().unwrap();
    let mut r = LogReader::open(&dir.path().join("realtime")).unwrap();
    let mut n = 0u64;
    while let Some(rec) = r.next_record() {
        let rec = rec.unwrap();
        let RecordBody::Event(e) = record::decode(rec.kind, &rec.body).unwrap() else {
            panic!("an event record");
        };
        assert_eq!(e.payload.len(), 30_000);
        assert!(e.payload.iter().all(|&b| b == e.header.id as u8));
        n += 1;
    }
    assert_eq!(n, frames);
}

/// A HELLO after data frames is refused (the connection speaks version 1; the watermark
/// never moves back), and on a fresh producer session a frame with seq 0 is stored, not
/// taken for a duplicate of "nothing resolved yet".
#[test]
fn a_late_hello_is_refused_and_seq_0_is_not_a_duplicate() {
    let dir = TempDir::new("e2e-late-hello");
    let engine = Engine::start(config(&dir)).unwrap();
    let addr = engine.started.tcp.unwrap();
    let one = |seq: u64, id: u64| Client::batch(seq, &[header(id, 0, Priority::High)], |_| vec![1]);
    let mut c = Client::connect(addr).unwrap();
    for seq in 1..=3 {
        c.send(&one(seq, seq)).unwrap();
    }
    c.wait_ack(3, WAIT).unwrap();
    let mut buf = [0u8; 64];
    let n = pinstream_core::wire::encode_hello(&mut buf, 4, &Hello::producer(65_536, 5)).unwrap();
    c.send(&buf[..n]).unwrap();
    c.send(&one(5, 5)).unwrap();
    let (ack, rejects) = c.wait_ack(5, WAIT).unwrap();
    assert_eq!(
        (ack.through_seq, ack.stored, ack.rejected),
        (5, 4, 1),
        "{ack:?}"
    );
    assert_eq!(rejects[0].reason(), Some(Reason::UnexpectedKind));

    let mut d = Client::connect(addr).unwrap();
    let hello = d.hello_producer(0).unwrap();
    assert_eq!(hello.last_seq, 0);
    d.send(&one(0, 100)).unwrap();
    let (ack, _) = d.wait_ack(0, WAIT).unwrap();
    assert_eq!((ack.stored, ack.duplicates), (1, 0), "{ack:?}");
    engine.stop().unwrap();
    assert_eq!(read_log(&dir, LogId::Realtime.name()).len(), 5);
}
