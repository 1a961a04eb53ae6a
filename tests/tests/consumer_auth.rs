//! Tokens on the consumer listener (`consumers.auth = "token"`, PROTOCOL.md §12), over real
//! loopback sockets: a HELLO without a known token, or a SUBSCRIBE, CREDIT or COMMIT before
//! any HELLO, or a token whose entry says `read = false`, is refused `unauthenticated` and
//! the connection closed, each counted in
//! `pinstream_consumer_auth_refusals_total`; the right token reads and commits; without
//! `consumers.auth` consumers need no token. Every engine is bound to 127.0.0.1 port 0 and
//! stopped with `engine.stop()`; one left by a failing assertion is stopped by its handle's
//! `Drop`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pinstream_client::{Consumer, ConsumerOptions, Producer, ProducerOptions, rejection};
use pinstream_core::event::{EventHeader, Priority};
use pinstream_core::reason::Reason;
use pinstream_core::wire::{self, Frame, FrameKind, Hello, Start, StreamLog, Subscribe};
use pinstream_host::config::TokenSection;
use pinstream_host::consumers::ConsumerSettings;
use pinstream_host::engine::{Engine, EngineConfig, EngineHandle};
use pinstream_host::gateway::hash_token;
use pinstream_tests::TempDir;

const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "reader-secret";
/// A token that may send but not read (`read = false`).
const WRITER: &str = "writer-secret";

/// A consumer listener on an ephemeral loopback port, `consumers.auth` as given, one token
/// (`reader-secret`, every topic) and one that may not read (`writer-secret`). Producers
/// need none (`tcp.auth = "none"`).
fn start(dir: &TempDir, auth: bool) -> (EngineHandle, SocketAddr) {
    let mut cfg = EngineConfig::local(dir.path());
    cfg.udp = None;
    cfg.consumers = ConsumerSettings {
        auth,
        ..ConsumerSettings::on("127.0.0.1:0".parse().unwrap())
    };
    cfg.http.tokens = vec![
        TokenSection {
            name: "reader".into(),
            sha256: hash_token(TOKEN),
            topics: vec!["*".into()],
            rate: 0,
            burst: 0,
            read: true,
        },
        TokenSection {
            name: "writer".into(),
            sha256: hash_token(WRITER),
            topics: vec!["*".into()],
            read: false,
            ..TokenSection::default()
        },
    ];
    let engine = Engine::start(cfg).expect("engine starts");
    let addr = engine.started.consumers.expect("consumers listening");
    (engine, addr)
}

/// Stores `n` high-priority events (the realtime log) and waits for their acks.
fn produce(engine: &EngineHandle, n: u64) {
    let mut p = Producer::connect(engine.started.tcp.unwrap(), ProducerOptions::default()).unwrap();
    for id in 1..=n {
        p.push(&EventHeader::new(id, 0, Priority::High, id), b"payload")
            .unwrap();
    }
    assert_eq!(p.flush().unwrap().stored, n);
}

fn options(token: Option<&str>, name: Option<&str>) -> ConsumerOptions {
    ConsumerOptions {
        name: name.map(str::to_owned),
        token: token.map(|t| t.as_bytes().to_vec()),
        timeout: WAIT,
        ..ConsumerOptions::new(StreamLog::Realtime, Start::Earliest)
    }
}

fn metrics(engine: &EngineHandle) -> String {
    use pinstream_host::admin::AdminSource;
    let mut out = String::new();
    engine.stats().render_metrics(&mut out);
    out
}

/// The value of `pinstream_consumer_auth_refusals_total{reason="<reason>"}`.
fn refusals(engine: &EngineHandle, reason: &str) -> u64 {
    let key = format!("pinstream_consumer_auth_refusals_total{{reason=\"{reason}\"}} ");
    let page = metrics(engine);
    page.lines()
        .find_map(|l| l.strip_prefix(&key))
        .unwrap_or_else(|| panic!("no {key} in\n{page}"))
        .trim()
        .parse()
        .unwrap()
}

/// `Consumer::connect` refused `unauthenticated`.
fn refused(r: io::Result<Consumer>) {
    // Not `expect_err`: a consumer's Debug prints its whole receive buffer.
    let Err(e) = r else {
        panic!("the consumer must be refused, it subscribed");
    };
    assert_eq!(
        rejection(&e).and_then(|r| r.reason()),
        Some(Reason::Unauthenticated),
        "{e}"
    );
}

/// Sends `bytes` on a raw connection and expects one REJECT `unauthenticated` of frame
/// `frame_seq`, then the end of the stream (the server closed).
fn raw_refused(addr: SocketAddr, bytes: &[u8], frame_seq: u64) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let until = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < until, "no close after {} bytes", buf.len());
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading: {e}"),
        }
    }
    let len = wire::frame_len(&buf).expect("one whole frame before the close");
    assert_eq!(len, buf.len(), "only the REJECT: {buf:?}");
    let frame = Frame::new_checked(&buf, 4096).unwrap();
    assert_eq!(frame.kind(), FrameKind::Reject);
    let r = frame.reject().unwrap();
    assert_eq!(r.reason(), Some(Reason::Unauthenticated), "{r:?}");
    assert_eq!(r.frame_seq, frame_seq);
}

fn hello(token: Option<&[u8]>) -> Vec<u8> {
    let mut buf = [0u8; 512];
    let h = Hello::consumer(1 << 20);
    let n = match token {
        Some(t) => wire::encode_hello_token(&mut buf, 0, &h, t),
        None => wire::encode_hello(&mut buf, 0, &h),
    }
    .unwrap();
    buf[..n].to_vec()
}

fn subscribe(seq: u64, name: &[u8]) -> Vec<u8> {
    let mut buf = [0u8; 256];
    let sub = Subscribe::new(StreamLog::Realtime, Start::Earliest, 1 << 20, name);
    let n = wire::encode_subscribe(&mut buf, seq, &sub).unwrap();
    buf[..n].to_vec()
}

#[test]
fn without_a_known_token_a_consumer_is_refused_closed_and_counted() {
    let dir = TempDir::new("consumer-auth-refused");
    let (engine, addr) = start(&dir, true);
    produce(&engine, 10);
    // The client without a token, with a wrong one, and with one a byte off.
    refused(Consumer::connect(addr, options(None, None)));
    refused(Consumer::connect(addr, options(Some("nope"), Some("x"))));
    refused(Consumer::connect(
        addr,
        options(Some("reader-secreT"), None),
    ));
    // A known token that may not read.
    refused(Consumer::connect(addr, options(Some(WRITER), Some("w"))));
    // On the wire: the HELLO's REJECT, nothing after it (the SUBSCRIBE sent with it is not
    // answered), then the close.
    let mut bytes = hello(None);
    bytes.extend(subscribe(1, b""));
    raw_refused(addr, &bytes, 0);
    let mut bytes = hello(Some(b"wrong"));
    bytes.extend(subscribe(1, b"named"));
    raw_refused(addr, &bytes, 0);
    // A SUBSCRIBE, and a COMMIT, before any HELLO.
    raw_refused(addr, &subscribe(1, b"named"), 1);
    let mut commit = [0u8; 64];
    let n = wire::encode_commit(&mut commit, 4, 5).unwrap();
    raw_refused(addr, &commit[..n], 4);
    assert_eq!(refusals(&engine, "no_token"), 2);
    assert_eq!(refusals(&engine, "unknown_token"), 3);
    assert_eq!(refusals(&engine, "before_hello"), 2);
    assert_eq!(refusals(&engine, "read_denied"), 1);
    let m = metrics(&engine);
    assert!(
        m.contains("pinstream_consumer_rejects_total{reason=\"unauthenticated\"} 8"),
        "{m}"
    );
    // Nothing was read, no position moved.
    assert!(
        m.contains("pinstream_consumer_records_sent_total{log=\"realtime\"} 0"),
        "{m}"
    );
    assert!(!m.contains("pinstream_consumer_lag_records"), "{m}");
    engine.stop().unwrap();
}

#[test]
fn the_right_token_reads_and_commits() {
    let dir = TempDir::new("consumer-auth-ok");
    let (engine, addr) = start(&dir, true);
    produce(&engine, 20);
    let mut c = Consumer::connect(addr, options(Some(TOKEN), Some("reader"))).unwrap();
    let mut seen = 0;
    let until = Instant::now() + WAIT;
    while seen < 20 {
        assert!(Instant::now() < until, "{seen} of 20 records");
        if c.next_timeout(Duration::from_millis(200))
            .unwrap()
            .is_some()
        {
            seen += 1;
        }
    }
    assert_eq!(c.commit_position().unwrap(), 20);
    drop(c);
    // Reopened with the token, the name resumes at its commit.
    let c = Consumer::connect(addr, options(Some(TOKEN), Some("reader"))).unwrap();
    assert_eq!(c.subscribed().committed, 20);
    assert_eq!(c.position(), 20);
    drop(c);
    for reason in ["no_token", "unknown_token", "before_hello", "read_denied"] {
        assert_eq!(refusals(&engine, reason), 0, "{reason}");
    }
    engine.stop().unwrap();
}

#[test]
fn without_consumers_auth_no_token_is_needed_and_one_shown_is_ignored() {
    let dir = TempDir::new("consumer-auth-none");
    let (engine, addr) = start(&dir, false);
    produce(&engine, 5);
    for token in [None, Some("anything")] {
        let mut c = Consumer::connect(addr, options(token, Some("plain"))).unwrap();
        let until = Instant::now() + WAIT;
        while c.position() < 5 {
            assert!(Instant::now() < until, "{token:?}: at {}", c.position());
            c.next_timeout(Duration::from_millis(200)).unwrap();
        }
        assert_eq!(c.commit_position().unwrap(), 5);
    }
    assert_eq!(refusals(&engine, "no_token"), 0);
    engine.stop().unwrap();
}
