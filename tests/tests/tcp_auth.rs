//! Tokens on the binary TCP port (`tcp.auth = "token"`, issue 17 item 4, PROTOCOL.md §5),
//! over real loopback sockets: a HELLO without a known token, or data before any HELLO, is
//! refused `unauthenticated` and closed; an event to a topic the token may not use is
//! rejected `forbidden_topic` alone; a connection past its token's rate is slowed (its frame
//! waits for tokens), nothing of it dead-lettered; the HTTP gateway's slot is exempt and
//! shares the token's bucket; without
//! `tcp.auth` old clients are unaffected. Every test stops its engine with
//! `engine.stop().unwrap()`, which checks `ingested == stored + duplicates + dead-lettered +
//! rejected`; an engine left by a failing assertion is stopped by its handle's `Drop`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use pinstream_core::event::{EventHeader, Priority};
use pinstream_core::reason::Reason;
use pinstream_host::config::{TcpAuth, TokenSection};
use pinstream_host::engine::{Engine, EngineConfig, EngineHandle};
use pinstream_host::gateway::{HttpSettings, hash_token};
use pinstream_host::storage::{LogId, LogReader};
use pinstream_tests::TempDir;
use pinstream_tests::client::{Client, Reply};

const WAIT: Duration = Duration::from_secs(20);
/// Topic ids of [`config`].
const DEFAULT: u16 = 0;
const METRICS: u16 = 1;

/// Two topics, two tokens (`tok-metrics`: topic `metrics` only, 1 event/s with a burst of
/// 5; `tok-all`: every topic, unlimited), no UDP (it has no HELLO), `tcp.auth` as given.
fn config(dir: &TempDir, auth: TcpAuth) -> EngineConfig {
    let mut cfg = EngineConfig::local(dir.path());
    cfg.topics = vec!["default".into(), "metrics".into()];
    cfg.udp = None;
    cfg.tcp_auth = auth;
    cfg.http.tokens = vec![
        TokenSection {
            name: "metrics-only".into(),
            sha256: hash_token("tok-metrics"),
            topics: vec!["metrics".into()],
            rate: 1,
            burst: 5,
            read: true,
        },
        TokenSection {
            name: "all".into(),
            sha256: hash_token("tok-all"),
            topics: vec!["*".into()],
            rate: 0,
            burst: 0,
            read: true,
        },
    ];
    cfg
}

fn start(cfg: EngineConfig) -> (EngineHandle, SocketAddr) {
    let engine = Engine::start(cfg).expect("engine starts");
    let addr = engine.started.tcp.expect("tcp listening");
    (engine, addr)
}

/// High-priority events (realtime lane) to `topics`, ids from 1, in one BATCH frame.
fn batch(seq: u64, topics: &[u16]) -> Vec<u8> {
    let events: Vec<EventHeader> = topics
        .iter()
        .enumerate()
        .map(|(i, &t)| EventHeader::new(i as u64 + 1, t, Priority::High, 0))
        .collect();
    Client::batch(seq, &events, |_| vec![7; 100])
}

/// Records in the realtime log.
fn stored(dir: &TempDir) -> usize {
    let mut reader = LogReader::open(&dir.path().join(LogId::Realtime.name())).expect("open");
    let mut n = 0;
    while let Some(r) = reader.next_record() {
        r.expect("a valid record");
        n += 1;
    }
    n
}

fn metrics(engine: &EngineHandle) -> String {
    let mut page = String::new();
    pinstream_host::admin::AdminSource::render_metrics(&**engine.stats(), &mut page);
    page
}

/// The HELLO refusal's error names the reason.
fn refused_unauthenticated(r: std::io::Result<pinstream_core::wire::Hello>) {
    let e = r.expect_err("the HELLO must be refused");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    assert!(e.to_string().contains("unauthenticated (code 29)"), "{e}");
}

#[test]
fn without_a_known_token_the_connection_is_refused_closed_and_counted() {
    let dir = TempDir::new("tcp-auth-refused");
    let (engine, addr) = start(config(&dir, TcpAuth::Token));
    // A version-2 HELLO without a token.
    let mut c = Client::connect(addr).unwrap();
    refused_unauthenticated(c.hello_producer(0));
    assert!(c.closed_by_server(WAIT), "closed after the REJECT");
    // A version-1 HELLO (the short form cannot carry one).
    let mut c = Client::connect(addr).unwrap();
    refused_unauthenticated(c.hello());
    assert!(c.closed_by_server(WAIT));
    // A token the engine does not know, and one that differs in its last byte.
    for wrong in [&b"nope"[..], b"tok-metricz"] {
        let mut c = Client::connect(addr).unwrap();
        refused_unauthenticated(c.hello_token(wrong));
        assert!(c.closed_by_server(WAIT));
    }
    // Data before any HELLO: REJECT 29 naming its seq, closed, never dispatched.
    let mut c = Client::connect(addr).unwrap();
    c.send(&batch(1, &[METRICS, METRICS])).unwrap();
    match c.next_reply() {
        Ok(Reply::Reject(r)) => {
            assert_eq!(r.reason(), Some(Reason::Unauthenticated), "{r:?}");
            assert_eq!((r.frame_seq, r.index), (1, 0xFFFF));
        }
        other => panic!("a REJECT expected, got {other:?}"),
    }
    assert!(c.closed_by_server(WAIT));
    let stats = engine.stats().clone();
    let page = metrics(&engine);
    engine.stop().unwrap();
    assert_eq!(stats.host.tcp_auth_unauthenticated.get(), 5);
    assert!(
        page.contains("pinstream_tcp_auth_refusals_total{reason=\"unauthenticated\"} 5"),
        "{page}"
    );
    assert_eq!(stats.dispatch.ingested.get(), 0, "nothing was taken in");
    assert_eq!(stored(&dir), 0);
}

#[test]
fn a_good_token_stores_and_a_forbidden_topic_is_rejected_alone() {
    let dir = TempDir::new("tcp-auth-topics");
    let (engine, addr) = start(config(&dir, TcpAuth::Token));
    let mut c = Client::connect(addr).unwrap();
    let reply = c.hello_token(b"tok-metrics").unwrap();
    assert_eq!(reply.max_version, 2);
    // The middle event is to a topic the token may not use: that one is rejected, the
    // others stored.
    c.send(&batch(1, &[METRICS, DEFAULT, METRICS])).unwrap();
    let (ack, rejects) = c.wait_ack(1, WAIT).unwrap();
    assert_eq!(
        (ack.stored, ack.rejected, ack.dead_lettered),
        (2, 1, 0),
        "{ack:?}"
    );
    assert_eq!(rejects.len(), 1, "{rejects:?}");
    assert_eq!(rejects[0].reason(), Some(Reason::ForbiddenTopic));
    assert_eq!((rejects[0].index, rejects[0].event_id), (1, 2));
    // A token for every topic, on another connection.
    let mut all = Client::connect(addr).unwrap();
    all.hello_token(b"tok-all").unwrap();
    all.send(&batch(1, &[DEFAULT, METRICS])).unwrap();
    let (ack, rejects) = all.wait_ack(1, WAIT).unwrap();
    assert_eq!((ack.stored, ack.rejected), (2, 0), "{ack:?} {rejects:?}");
    let stats = engine.stats().clone();
    let page = metrics(&engine);
    engine.stop().unwrap(); // the accounting invariant holds
    assert_eq!(stats.host.tcp_auth_forbidden_topic.get(), 1);
    assert_eq!(stats.dispatch.reason(Reason::ForbiddenTopic).get(), 1);
    assert!(
        page.contains("pinstream_tcp_auth_refusals_total{reason=\"forbidden_topic\"} 1"),
        "{page}"
    );
    assert_eq!(stored(&dir), 4);
}

/// Never drop what can be slowed down: a connection past its token's rate waits for tokens
/// (its frame keeps its place), and every event is stored, none dead-lettered.
#[test]
fn a_connection_past_its_tokens_rate_is_slowed_not_dead_lettered() {
    let dir = TempDir::new("tcp-auth-rate");
    let (engine, addr) = start(config(&dir, TcpAuth::Token));
    let mut c = Client::connect(addr).unwrap();
    c.hello_token(b"tok-metrics").unwrap();
    // A burst of 5 at 1/s: 8 events at once, the last ones over the rate: the frame waits
    // for them (about 3 s), partial grants moving it on.
    c.send(&batch(1, &[METRICS; 8])).unwrap();
    let (ack, _) = c.wait_ack(1, WAIT).unwrap();
    assert_eq!(
        (ack.stored, ack.dead_lettered, ack.rejected),
        (8, 0, 0),
        "{ack:?}"
    );
    let stats = engine.stats().clone();
    let page = metrics(&engine);
    engine.stop().unwrap();
    assert!(
        stats.host.rate_limit_waits_token.get() > 0,
        "the producer was slowed"
    );
    assert!(
        page.contains("pinstream_rate_limit_waits_total{limit=\"token\"} ")
            && !page.contains("pinstream_rate_limit_waits_total{limit=\"token\"} 0\n")
            && !page.contains("pinstream_tcp_auth_refusals_total{reason=\"rate_limited\"}"),
        "the wait is visible in /metrics: {page}"
    );
    assert_eq!(stats.host.rate_limit_waits_client.get(), 0);
    assert_eq!(stats.dispatch.reason(Reason::RateLimited).get(), 0);
    assert_eq!(stored(&dir), 8);
}

#[test]
fn without_tcp_auth_old_clients_are_unaffected_and_a_token_is_ignored() {
    let dir = TempDir::new("tcp-auth-off");
    let (engine, addr) = start(config(&dir, TcpAuth::None));
    // Version 1, data without a HELLO, and a HELLO with an unknown token: all stored.
    let mut v1 = Client::connect(addr).unwrap();
    v1.hello().unwrap();
    v1.send(&batch(1, &[DEFAULT])).unwrap();
    assert_eq!(v1.wait_ack(1, WAIT).unwrap().0.stored, 1);
    let mut bare = Client::connect(addr).unwrap();
    bare.send(&batch(1, &[DEFAULT, METRICS])).unwrap();
    assert_eq!(bare.wait_ack(1, WAIT).unwrap().0.stored, 2);
    let mut t = Client::connect(addr).unwrap();
    t.hello_token(b"whatever").unwrap();
    t.send(&batch(1, &[DEFAULT])).unwrap();
    assert_eq!(t.wait_ack(1, WAIT).unwrap().0.stored, 1);
    let stats = engine.stats().clone();
    engine.stop().unwrap();
    assert_eq!(stats.host.tcp_auth_unauthenticated.get(), 0);
    assert_eq!(stored(&dir), 4);
}

/// One HTTP/1.1 request on its own connection; returns the status and the body.
fn post(addr: SocketAddr, token: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let req = format!(
        "POST /v1/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

#[test]
fn the_gateway_is_exempt_and_shares_the_tokens_bucket() {
    let dir = TempDir::new("tcp-auth-gateway");
    let mut cfg = config(&dir, TcpAuth::Token);
    let mut http = HttpSettings::off();
    http.listen = Some("127.0.0.1:0".parse().unwrap());
    http.tokens = cfg.http.tokens.clone();
    cfg.http = http;
    let (engine, addr) = start(cfg);
    let http = engine.http_addr().expect("gateway listening");
    // The gateway's own slot in the ingest thread sends without a HELLO token: stored.
    let three: String = (0..3)
        .map(|_| "{\"topic\":\"metrics\",\"priority\":\"high\"}\n")
        .collect();
    let (status, body) = post(http, "tok-metrics", &three);
    assert_eq!(status, 200, "{body}");
    // The same token over TCP: its bucket (burst 5) has 2 left, so 4 events wait for
    // tokens (with a bucket of its own the connection would not have waited).
    let mut c = Client::connect(addr).unwrap();
    c.hello_token(b"tok-metrics").unwrap();
    c.send(&batch(1, &[METRICS; 4])).unwrap();
    let (ack, _) = c.wait_ack(1, WAIT).unwrap();
    assert_eq!((ack.stored, ack.dead_lettered), (4, 0), "{ack:?}");
    let stats = engine.stats().clone();
    engine.stop().unwrap();
    assert_eq!(stats.host.tcp_auth_unauthenticated.get(), 0);
    assert!(
        stats.host.rate_limit_waits_token.get() > 0,
        "one bucket for both: the connection waited"
    );
    assert_eq!(stats.dispatch.reason(Reason::RateLimited).get(), 0);
    assert_eq!(stored(&dir), 3 + 4);
}
