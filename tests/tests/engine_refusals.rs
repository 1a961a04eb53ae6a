//! What the engine refuses, end to end: bad HELLOs close the connection (PROTOCOL.md §5, §7),
//! every byte and event thrown away is counted under a reason, and rate limits apply per
//! producer or per client address, not per connection.

use std::time::Duration;

use pinstream_core::event::{EventHeader, Priority};
use pinstream_core::reason::Reason;
use pinstream_core::wire::{Hello, crc32c, encode_hello};
use pinstream_host::engine::{Engine, EngineConfig, LOG_NAMES};
use pinstream_host::storage::LogReader;
use pinstream_tests::TempDir;
use pinstream_tests::client::{Client, Reply};

const WAIT: Duration = Duration::from_secs(20);

fn config(dir: &TempDir) -> EngineConfig {
    let mut cfg = EngineConfig::local(dir.path());
    cfg.topics = vec!["a".into()];
    cfg
}

/// Records in one log.
fn records(dir: &TempDir, name: &str) -> usize {
    let mut reader = LogReader::open(&dir.path().join(name)).expect("open log");
    let mut n = 0;
    while let Some(r) = reader.next_record() {
        r.expect("a valid record");
        n += 1;
    }
    n
}

/// One high-priority event (realtime lane) in a BATCH frame.
fn event(seq: u64, id: u64) -> Vec<u8> {
    Client::batch(seq, &[EventHeader::new(id, 0, Priority::High, 0)], |_| {
        vec![1]
    })
}

// ---------------------------------------------------------------------------------------
// HELLO errors (item 8): REJECT 5, the connection closed, what follows never stored.

/// A version-1 HELLO with its version range and header version overwritten (CRC fixed up).
fn raw_hello(min: u8, max: u8, header_version: u8) -> Vec<u8> {
    let mut buf = [0u8; 64];
    let n = encode_hello(&mut buf, 0, &Hello::client(1, 1, 65_536)).unwrap();
    buf[4] = header_version;
    buf[16] = min;
    buf[17] = max;
    let crc = crc32c(&buf[..n - 4]);
    buf[n - 4..n].copy_from_slice(&crc.to_le_bytes());
    buf[..n].to_vec()
}

/// Sends `hello` and an event in one write: the engine answers REJECT 5 (unsupported_version)
/// for the HELLO, closes the connection and stores nothing.
fn bad_hello_is_refused_and_closes(name: &str, hello: Vec<u8>) {
    let dir = TempDir::new(name);
    let engine = Engine::start(config(&dir)).unwrap();
    let mut c = Client::connect(engine.started.tcp.unwrap()).unwrap();
    let mut bytes = hello;
    bytes.extend_from_slice(&event(1, 1));
    c.send(&bytes).unwrap();
    match c.next_reply() {
        Ok(Reply::Reject(r)) => {
            assert_eq!(r.reason(), Some(Reason::UnsupportedVersion), "{r:?}");
            assert_eq!(r.frame_seq, 0);
        }
        other => panic!("a REJECT expected, got {other:?}"),
    }
    assert!(c.closed_by_server(WAIT), "the connection is closed");
    let stats = engine.stats().clone();
    engine.stop().unwrap();
    assert_eq!(records(&dir, LOG_NAMES[0]), 0, "the event was not stored");
    assert_eq!(stats.process.stored.get(), 0);
    assert_eq!(stats.host.tcp_closed_malformed.get(), 1);
}

#[test]
fn hello_range_0_0_is_refused_and_closes() {
    bad_hello_is_refused_and_closes("hello-0-0", raw_hello(0, 0, 1));
}

#[test]
fn hello_range_0_1_is_refused_and_closes() {
    bad_hello_is_refused_and_closes("hello-0-1", raw_hello(0, 1, 1));
}

#[test]
fn hello_range_2_1_is_refused_and_closes() {
    bad_hello_is_refused_and_closes("hello-2-1", raw_hello(2, 1, 1));
}

/// HELLO frames always carry header version 1 (PROTOCOL.md §5), so that any server can read
/// any client's range: one with header version 2 is not a HELLO this server can trust.
#[test]
fn hello_with_header_version_2_is_refused_and_closes() {
    bad_hello_is_refused_and_closes("hello-header-v2", raw_hello(1, 1, 2));
}
