//! `pinstream consume` and `pinstream publish` run as the real binary against fake servers
//! (a thread speaking the protocol with the core's encoders): what they print, what they
//! send, their exit codes. The end-to-end test against the engine comes with its consumer
//! listener.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Output;
use std::thread;

use pinstream_core::event::{EventHeader, Lane, Origin, Priority};
use pinstream_core::process::StoredEvent;
use pinstream_core::record::{self, RECORD_HEADER_LEN};
use pinstream_core::wire::{
    self, Ack, DataPrefix, Frame, FrameKind, Hello, NO_COMMIT, StreamLog, Subscribed,
};

mod common;
use common::pinstream as run;

/// What the fake consumer listener saw: the name subscribed with, the offsets committed.
type ConsumerSeen = (Vec<u8>, Vec<u64>);
/// What the fake producer port received: id, topic and payload of each event.
type ProducerSeen = Vec<(u64, u16, Vec<u8>)>;

fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let n = u32::from_le_bytes(len) as usize;
    let mut frame = vec![0u8; n];
    frame[..4].copy_from_slice(&len);
    s.read_exact(&mut frame[4..]).ok()?;
    Some(frame)
}

fn event_record(offset: u64, payload: &[u8]) -> Vec<u8> {
    let header = EventHeader::new(offset + 100, 1, Priority::High, 5).with_value(-2);
    let ev = StoredEvent {
        lane: Lane::Realtime,
        header: &header,
        origin: Origin::new(1, offset),
        received: 9,
        payload,
    };
    let mut rec = vec![0u8; RECORD_HEADER_LEN + record::event_len(payload.len())];
    record::encode_event(&mut rec[RECORD_HEADER_LEN..], &ev).unwrap();
    record::seal(&mut rec, offset, record::KIND_EVENT);
    rec
}

/// A fake consumer listener: answers the handshake with a high watermark of `hw`, sends
/// `hw` records in one DATA frame, then answers COMMITs until the consumer leaves; returns
/// the name it subscribed with and the offsets committed.
fn consumer_server(hw: u64) -> (SocketAddr, thread::JoinHandle<ConsumerSeen>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut out = vec![0u8; 1 << 16];
        read_frame(&mut s).unwrap(); // HELLO
        let n = wire::encode_hello(&mut out, 1, &Hello::reply(3, 65_536, 4)).unwrap();
        s.write_all(&out[..n]).unwrap();
        let sub = read_frame(&mut s).unwrap();
        let name = Frame::new_checked(&sub, 1 << 16)
            .unwrap()
            .subscribe()
            .unwrap()
            .name
            .to_vec();
        let answer = Subscribed {
            start_offset: 0,
            first_offset: 0,
            high_watermark: hw,
            committed: NO_COMMIT,
        };
        let n = wire::encode_subscribed(&mut out, 2, &answer).unwrap();
        s.write_all(&out[..n]).unwrap();
        let mut records = Vec::new();
        for o in 0..hw {
            let payload: &[u8] = if o == 1 { &[0xff, 0x00] } else { b"hi" };
            records.extend(event_record(o, payload));
        }
        let prefix = DataPrefix::new(StreamLog::Realtime, 0, hw, hw, records.len());
        let n = wire::encode_data(&mut out, 3, &prefix, &records).unwrap();
        s.write_all(&out[..n]).unwrap();
        let mut commits = Vec::new();
        while let Some(f) = read_frame(&mut s) {
            let f = Frame::new_checked(&f, 1 << 16).unwrap();
            if let Some(offset) = f.commit() {
                commits.push(offset);
                let n = wire::encode_committed(&mut out, 4, offset).unwrap();
                s.write_all(&out[..n]).unwrap();
            }
        }
        (name, commits)
    });
    (addr, h)
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn consume_prints_json_lines_up_to_the_high_watermark() {
    let (addr, srv) = consumer_server(3);
    let out = run(
        &["consume", "--addr", &addr.to_string(), "--from", "earliest"],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["log"], "realtime");
        assert_eq!(l["offset"], i as u64);
        assert_eq!(l["kind"], "event");
        assert_eq!(l["id"], 100 + i as u64);
        assert_eq!(l["topic"], 1);
        assert_eq!(l["priority"], "high");
        assert_eq!(l["value"], -2);
        assert_eq!(l["received"], 9);
    }
    assert_eq!(lines[0]["payload"], "hi");
    assert_eq!(lines[1]["payload_base64"], "/wA=");
    assert!(lines[1].get("payload").is_none());
    let (name, commits) = srv.join().unwrap();
    assert!(name.is_empty() && commits.is_empty());
}

#[test]
fn consume_with_a_name_commits_what_it_printed() {
    let (addr, srv) = consumer_server(4);
    let out = run(
        &[
            "consume",
            "--addr",
            &addr.to_string(),
            "--consumer",
            "ops-1",
            "--count",
            "2",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json_lines(&out).len(), 2);
    let (name, commits) = srv.join().unwrap();
    assert_eq!(name, b"ops-1");
    assert_eq!(commits, [2], "the position after the last record printed");
}

#[test]
fn consume_refuses_bad_flags() {
    for args in [
        &["consume", "--log", "nope"][..],
        &["consume", "--from", "tomorrow"],
        &["consume", "--consumer", "bad name", "--addr", "127.0.0.1:1"],
    ] {
        let out = run(args, "");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

/// A fake producer port: assigns producer 5, stores every event but dead-letters none,
/// acknowledges each frame; returns the ids it received.
fn producer_server() -> (SocketAddr, thread::JoinHandle<ProducerSeen>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut out = [0u8; 128];
        read_frame(&mut s).unwrap();
        let reply = Hello {
            producer_id: 5,
            max_payload: 65_535,
            ..Hello::reply(2, 1 << 20, 3)
        };
        let n = wire::encode_hello(&mut out, 1, &reply).unwrap();
        s.write_all(&out[..n]).unwrap();
        let mut seen = Vec::new();
        let mut ack = Ack::default();
        while let Some(f) = read_frame(&mut s) {
            let f = Frame::new_checked(&f, 1 << 20).unwrap();
            assert!(matches!(f.kind(), FrameKind::Event | FrameKind::Batch));
            for e in f.events() {
                seen.push((e.id(), e.topic(), e.payload().to_vec()));
                ack.stored += 1;
            }
            ack.through_seq = f.seq();
            let n = wire::encode_ack_v2(&mut out, 2, &ack).unwrap();
            s.write_all(&out[..n]).unwrap();
        }
        seen
    });
    (addr, h)
}

#[test]
fn publish_sends_lines_and_reports_bad_ones() {
    let (addr, srv) = producer_server();
    let input = "{\"id\": 7, \"topic\": \"default\", \"payload\": \"text\", \"priority\": \"high\"}\n\
                 this is not json\n\
                 {\"topic\": 3, \"payload_base64\": \"AAE=\"}\n";
    let out = run(&["publish", "--addr", &addr.to_string(), "--json"], input);
    assert_eq!(out.status.code(), Some(1), "a bad line fails the run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 2: not a JSON event"), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(report["sent"], 2);
    assert_eq!(report["stored"], 2);
    assert_eq!(report["bad_lines"], 1);
    assert_eq!(report["producer_id"], 5);
    let seen = srv.join().unwrap();
    assert_eq!(
        seen,
        [(7, 0, b"text".to_vec()), ((5 << 40) | 1, 3, vec![0, 1])],
        "the second id is generated: producer id << 40 | counter"
    );
}

#[test]
fn publish_of_good_lines_exits_zero_with_a_text_report() {
    let (addr, srv) = producer_server();
    let out = run(
        &["publish", "--addr", &addr.to_string()],
        "{\"payload\": \"a\"}\n{}\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("stored 2, duplicates 0, dead-lettered 0, rejected 0"),
        "{stdout}"
    );
    assert_eq!(srv.join().unwrap().len(), 2);
}

/// `pinstream token-hash` prints the SHA-256 that `[[auth.tokens]] sha256` takes, of the
/// token read on stdin (its newline dropped), and refuses an empty one.
#[test]
fn token_hash_prints_the_sha256_of_stdin() {
    let run = |input: &str| common::pinstream(&["token-hash"], input);
    let out = run("abc\n");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let out = run("\n");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
