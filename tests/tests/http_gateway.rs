//! The HTTP/JSON gateway (issue 17) over real sockets: every status it answers, NDJSON stored
//! exactly once and found in the logs, durable answers, back-pressure as 503 + Retry-After
//! with nothing lost, hostile inputs (a huge body, deep nesting, a slow body, a slow head).
//! Requests are written by hand on a `TcpStream` (keep-alive, chunked, half-sent bodies), and
//! once with `curl` when it is installed. Engines bind 127.0.0.1 on ephemeral ports and are
//! stopped by their handles' `Drop` even when an assertion fails.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pinstream_host::config::TokenSection;
use pinstream_host::engine::{Engine, EngineConfig, EngineHandle};
use pinstream_host::gateway::{HttpSettings, hash_token};
use pinstream_host::ingest::AckMode;
use pinstream_host::storage::LogReader;
use pinstream_tests::TempDir;

const WAIT: Duration = Duration::from_secs(20);

fn config(dir: &TempDir) -> EngineConfig {
    let mut cfg = EngineConfig::local(dir.path());
    cfg.topics = vec!["default".into(), "metrics".into()];
    cfg.udp = None;
    let mut http = HttpSettings::off();
    http.listen = Some("127.0.0.1:0".parse().unwrap());
    http.max_body_bytes = 64 * 1024;
    http.max_events_per_request = 1000;
    http.body_timeout = Duration::from_millis(300);
    http.header_timeout = Duration::from_millis(300);
    http.backpressure_wait = Duration::from_millis(20);
    http.retry_after_secs = 2;
    cfg.http = http;
    cfg
}

fn with_tokens(mut cfg: EngineConfig) -> EngineConfig {
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

/// One HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// A number field of the JSON body.
    fn count(&self, field: &str) -> u64 {
        let key = format!("\"{field}\":");
        let at = self
            .body
            .find(&key)
            .unwrap_or_else(|| panic!("no {field} in {}", self.body))
            + key.len();
        self.body[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    }
}

/// A keep-alive HTTP/1.1 connection.
struct Http {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    fn post(&mut self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.stream.write_all(req.as_bytes()).unwrap();
        self.stream.write_all(body).unwrap();
        self.answer()
    }

    /// Reads one answer (its body by Content-Length).
    fn answer(&mut self) -> Answer {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    let body = String::from_utf8_lossy(&self.buf[end + 4..end + 4 + len]).into();
                    self.buf.drain(..end + 4 + len);
                    let status = head[9..12].parse().unwrap();
                    return Answer { status, head, body };
                }
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).expect("an answer");
            assert!(n > 0, "closed before an answer; got {:?}", self.buf);
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whether the server closes the connection within `WAIT`.
    fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn eventually(what: &str, f: impl Fn() -> bool) {
    let until = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every record body of one log.
fn records(dir: &TempDir, name: &str) -> Vec<Vec<u8>> {
    let mut reader = LogReader::open(&dir.path().join(name)).expect("open log");
    let mut out = Vec::new();
    while let Some(r) = reader.next_record() {
        out.push(r.expect("a valid record").body.to_vec());
    }
    out
}

fn start(cfg: EngineConfig) -> (EngineHandle, SocketAddr) {
    let engine = Engine::start(cfg).unwrap();
    let addr = engine.http_addr().expect("the gateway listens");
    (engine, addr)
}

const NDJSON: (&str, &str) = ("Content-Type", "application/x-ndjson");

#[test]
fn ndjson_events_are_stored_exactly_once_and_found_in_the_logs() {
    let dir = TempDir::new("http-ndjson");
    let (engine, addr) = start(config(&dir));
    let mut c = Http::connect(addr);
    let mut stored = 0;
    // 20 requests of 100 events on one keep-alive connection, durable answers.
    for r in 0..20u64 {
        let body: String = (0..100u64)
            .map(|i| {
                let n = r * 100 + i;
                format!(
                    "{{\"id\":{},\"topic\":\"metrics\",\"value\":{n},\"payload\":\"ev-{n:06}\"}}\n",
                    n + 1
                )
            })
            .collect();
        let a = c.post("/v1/events?ack=durable", &[NDJSON], body.as_bytes());
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.count("rejected") + a.count("dead_lettered"), 0, "{a:?}");
        assert!(a.body.contains("\"ack\":\"durable\""), "{a:?}");
        stored += a.count("stored");
    }
    assert_eq!(stored, 2000);
    // Durable: in the log when the answer came (read before the engine stops).
    let bodies = records(&dir, "transactional");
    for n in 0..2000u64 {
        let p = format!("ev-{n:06}");
        let found = bodies.iter().filter(|b| b.ends_with(p.as_bytes())).count();
        assert_eq!(found, 1, "{p} stored {found} times");
    }
    // The same ids again: duplicates, not stored twice.
    let again: String = (1..=100u64)
        .map(|id| format!("{{\"id\":{id},\"topic\":1}}\n"))
        .collect();
    let a = c.post("/v1/events", &[NDJSON], again.as_bytes());
    assert_eq!(
        (a.status, a.count("duplicates"), a.count("stored")),
        (200, 100, 0),
        "{a:?}"
    );
    let stats = std::sync::Arc::clone(engine.stats());
    engine.stop().unwrap();
    assert_eq!(stats.http.requests(200), 21);
}

#[test]
fn one_object_an_array_and_acks_answer_as_asked_and_errors_name_the_field() {
    let dir = TempDir::new("http-shapes");
    let (engine, addr) = start(config(&dir));
    let mut c = Http::connect(addr);
    let a = c.post("/v1/events", &[], br#"{"payload":"one","priority":"high"}"#);
    assert_eq!((a.status, a.count("stored")), (200, 1), "{a:?}");
    let a = c.post(
        "/v1/events?ack=accepted",
        &[("Content-Type", "application/json")],
        br#"[{"payload_base64":"AAEC"},{"priority":"critical","value":-4}]"#,
    );
    assert_eq!((a.status, a.count("stored")), (200, 2), "{a:?}");
    let a = c.post("/v1/events?ack=none", &[], br#"{"payload":"fire"}"#);
    assert_eq!(a.status, 202, "{a:?}");
    // 400: the field and the place named; nothing of the request taken.
    let a = c.post(
        "/v1/events",
        &[NDJSON],
        b"{\"id\":5}\n{\"priority\":\"urgent\"}\n",
    );
    assert_eq!(a.status, 400, "{a:?}");
    assert!(
        a.body.contains("\"field\":\"priority\"") && a.body.contains("line 2"),
        "{a:?}"
    );
    let a = c.post("/v1/events", &[], br#"[{"id":1},{"value":"x"}]"#);
    assert!(
        a.status == 400 && a.body.contains("index 1") && a.body.contains("\"field\":\"value\""),
        "{a:?}"
    );
    let a = c.post("/v1/events", &[], br#"{"topik":"metrics"}"#);
    assert!(a.status == 400 && a.body.contains("topik"), "{a:?}");
    let a = c.post("/v1/events?ack=sometimes", &[], b"{}");
    assert!(
        a.status == 400 && a.body.contains("\"field\":\"ack\""),
        "{a:?}"
    );
    // 404, 405.
    let a = c.post("/v2/events", &[], b"{}");
    assert_eq!(a.status, 404);
    c.stream
        .write_all(b"GET /v1/events HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let a = c.answer();
    assert_eq!((a.status, a.header("allow")), (405, Some("POST")), "{a:?}");
    // 413: too many events.
    let many: String = (0..1001).map(|_| "{}\n").collect();
    let a = c.post("/v1/events", &[NDJSON], many.as_bytes());
    assert_eq!(a.status, 413, "{a:?}");
    let stats = std::sync::Arc::clone(engine.stats());
    engine.stop().unwrap();
    assert_eq!(stats.process.stored.get(), 4);
}

#[test]
fn the_engines_refusals_come_back_per_event_with_reason_names() {
    let dir = TempDir::new("http-refusals");
    let mut cfg = config(&dir);
    // No payload arena: a payload longer than a pool slot (256 bytes) is refused by the
    // engine's dispatcher, event by event.
    cfg.payload_arena_bytes = 0;
    let (engine, addr) = start(cfg);
    let mut c = Http::connect(addr);
    let long = "L".repeat(300);
    let body = format!(
        "{{\"id\":1,\"payload\":\"ok\"}}\n{{\"id\":2,\"payload\":\"{long}\"}}\n{{\"id\":3}}\n"
    );
    let a = c.post("/v1/events", &[NDJSON], body.as_bytes());
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!((a.count("stored"), a.count("rejected")), (2, 1), "{a:?}");
    let item = format!(
        "{{\"index\":1,\"id\":2,\"outcome\":\"rejected\",\"reason\":\"payload_too_large\",\"code\":{}}}",
        pinstream_core::reason::Reason::PayloadTooLarge.code()
    );
    assert!(a.body.contains(&item), "{item} not in {a:?}");
    engine.stop().unwrap();
}

#[test]
fn clients_without_a_token_get_the_engines_per_client_rate_as_429() {
    let dir = TempDir::new("http-rate");
    let mut cfg = config(&dir);
    // Two events per second per client, a burst of 3.
    cfg.rate = pinstream_core::ratelimit::RateConfig::new(2, 1_000_000_000, 3).unwrap();
    let (engine, addr) = start(cfg);
    let mut c = Http::connect(addr);
    let a = c.post("/v1/events", &[NDJSON], b"{}\n{}\n{}\n");
    assert_eq!((a.status, a.count("stored")), (200, 3), "{a:?}");
    let a = c.post("/v1/events", &[NDJSON], b"{}\n{}\n{}\n");
    assert_eq!(
        (a.status, a.header("retry-after")),
        (429, Some("2")),
        "{a:?}"
    );
    let stats = std::sync::Arc::clone(engine.stats());
    engine.stop().unwrap();
    // Refused at the gateway: never dead-lettered by the engine's limiter.
    assert_eq!(stats.process.stored.get(), 3);
    assert_eq!(stats.http.rate_limited.load(Ordering::Relaxed), 1);
    assert_eq!(stats.books().dead_lettered, 0);
}

#[test]
fn tokens_authenticate_restrict_topics_and_rate_limit() {
    let dir = TempDir::new("http-auth");
    let (engine, addr) = start(with_tokens(config(&dir)));
    let mut c = Http::connect(addr);
    let ev = br#"{"topic":"metrics","payload":"x"}"#;
    let a = c.post("/v1/events", &[], ev);
    assert_eq!(a.status, 401, "{a:?}");
    assert!(a.header("www-authenticate").is_some());
    let a = c.post("/v1/events", &[("Authorization", "Bearer wrong")], ev);
    assert_eq!(a.status, 401);
    let metrics_only = ("Authorization", "Bearer tok-metrics");
    let a = c.post("/v1/events", &[metrics_only], br#"{"topic":"default"}"#);
    assert!(a.status == 403 && a.body.contains("default"), "{a:?}");
    let a = c.post("/v1/events", &[metrics_only], ev);
    assert_eq!((a.status, a.count("stored")), (200, 1), "{a:?}");
    // A burst of 5 at 1/s: four more pass, then the bucket is empty.
    let four: String = (0..4).map(|_| "{\"topic\":\"metrics\"}\n").collect();
    let a = c.post("/v1/events", &[metrics_only, NDJSON], four.as_bytes());
    assert_eq!(a.status, 200, "{a:?}");
    let a = c.post("/v1/events", &[metrics_only], ev);
    assert_eq!(a.status, 429, "{a:?}");
    assert_eq!(a.header("retry-after"), Some("2"));
    let a = c.post(
        "/v1/events",
        &[("Authorization", "Bearer tok-all")],
        br#"{"topic":"default"}"#,
    );
    assert_eq!(a.status, 200, "{a:?}");
    // Counted by reason on /metrics.
    let mut page = String::new();
    pinstream_host::admin::AdminSource::render_metrics(&**engine.stats(), &mut page);
    for line in [
        "pinstream_http_requests_total{status=\"401\"} 2",
        "pinstream_http_requests_total{status=\"403\"} 1",
        "pinstream_http_requests_total{status=\"429\"} 1",
        "pinstream_http_refusals_total{reason=\"unauthenticated\"} 2",
        "pinstream_http_events_total{outcome=\"stored\"} 6",
    ] {
        assert!(page.contains(line), "{line} not in\n{page}");
    }
    engine.stop().unwrap();
}

#[test]
fn hostile_bodies_are_refused_without_harm() {
    let dir = TempDir::new("http-hostile");
    let (engine, addr) = start(config(&dir));
    // A huge announced body: 413 before a byte of it is read.
    let mut c = Http::connect(addr);
    c.stream
        .write_all(b"POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000000\r\n\r\n")
        .unwrap();
    let a = c.answer();
    assert_eq!(a.status, 413, "{a:?}");
    // A chunked body that grows past the limit: 413 once it does.
    let mut c = Http::connect(addr);
    c.stream
        .write_all(b"POST /v1/events HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 16 * 1024, "x".repeat(16 * 1024));
    let mut status = None;
    for _ in 0..8 {
        if c.stream.write_all(chunk.as_bytes()).is_err() {
            break;
        }
    }
    let _ = c.stream.write_all(b"0\r\n\r\n");
    if let Ok(a) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.answer())) {
        status = Some(a.status);
    }
    assert_eq!(status, Some(413));
    // Deep nesting: 400, the server alive.
    let mut c = Http::connect(addr);
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let a = c.post("/v1/events", &[], deep.as_bytes());
    assert_eq!(a.status, 400, "{a:?}");
    let deep_obj = format!(
        "{{\"payload\":{}1{}}}",
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let a = c.post("/v1/events", &[], deep_obj.as_bytes());
    assert_eq!(a.status, 400, "{a:?}");
    // A slow body: 408 once the body deadline passes, and the connection closes.
    let mut c = Http::connect(addr);
    c.stream
        .write_all(b"POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"id\":")
        .unwrap();
    let a = c.answer();
    assert_eq!(a.status, 408, "{a:?}");
    assert!(c.closed());
    // A slow head: the connection is closed at the header deadline.
    let mut c = Http::connect(addr);
    c.stream
        .write_all(b"POST /v1/events HTTP/1.1\r\nHo")
        .unwrap();
    assert!(c.closed());
    // Still serving.
    let mut c = Http::connect(addr);
    let a = c.post("/v1/events", &[], br#"{"payload":"after"}"#);
    assert_eq!((a.status, a.count("stored")), (200, 1), "{a:?}");
    let stats = std::sync::Arc::clone(engine.stats());
    engine.stop().unwrap();
    assert_eq!(stats.process.stored.get(), 1);
}

/// Set while the storage thread must not start: the lanes fill, the ingest thread stops
/// reading the gateway's ring, the ring fills.
static HOLD_STORAGE: AtomicBool = AtomicBool::new(false);

fn hold_storage() {
    if std::thread::current().name() == Some("pinstream-storage") {
        while HOLD_STORAGE.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn back_pressure_is_503_with_retry_after_and_nothing_taken_is_lost() {
    let dir = TempDir::new("http-backpressure");
    let mut cfg = config(&dir);
    cfg.http.max_body_bytes = 1 << 20;
    HOLD_STORAGE.store(true, Ordering::Release);
    cfg.thread_hook = Some(hold_storage);
    let (engine, addr) = start(cfg);
    let mut c = Http::connect(addr);
    // 50 events of 1 000 bytes per request (a 53 KB frame), answered on hand-off.
    let payload = "p".repeat(1000);
    let body: String = (0..50)
        .map(|_| format!("{{\"priority\":\"high\",\"payload\":\"{payload}\"}}\n"))
        .collect();
    let mut taken = 0u64;
    let mut refused = 0u64;
    for _ in 0..2_000 {
        let a = c.post("/v1/events?ack=none", &[NDJSON], body.as_bytes());
        match a.status {
            202 => taken += 50,
            503 => {
                assert_eq!(a.header("retry-after"), Some("2"), "{a:?}");
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
            s => panic!("unexpected {s}: {a:?}"),
        }
    }
    assert_eq!(
        refused, 3,
        "the engine never pushed back ({taken} events taken)"
    );
    HOLD_STORAGE.store(false, Ordering::Release);
    let stats = std::sync::Arc::clone(engine.stats());
    // Everything taken is stored; nothing refused is.
    eventually("every event taken stored", || {
        stats.process.stored.get() == taken
    });
    // Once room came back, requests are served again (and answered with their outcome).
    let a = c.post("/v1/events", &[NDJSON], body.as_bytes());
    assert_eq!((a.status, a.count("stored")), (200, 50), "{a:?}");
    engine.stop().unwrap(); // checks ingested == stored + duplicates + dead + rejected
    assert_eq!(stats.process.stored.get(), taken + 50);
    assert!(stats.http.backpressure.load(Ordering::Relaxed) >= 3);
}

#[test]
fn curl_posts_ndjson_when_installed() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("curl is not installed: skipped (CI installs it)");
        return;
    }
    let dir = TempDir::new("http-curl");
    let (engine, addr) = start(config(&dir));
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/x-ndjson",
            "--data-binary",
            "{\"payload\":\"a\"}\n{\"payload\":\"b\",\"priority\":\"high\"}\n",
            &format!("http://{addr}/v1/events?ack=durable"),
        ])
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(body.contains("\"stored\":2"), "{body}");
    engine.stop().unwrap();
}

#[test]
fn connections_over_the_limit_are_answered_503_and_closed() {
    let dir = TempDir::new("http-conns");
    let mut cfg = config(&dir);
    cfg.http.max_connections = 2;
    let (engine, addr) = start(cfg);
    let mut held: Vec<Http> = (0..2).map(|_| Http::connect(addr)).collect();
    for c in &mut held {
        let a = c.post("/v1/events", &[], b"{}");
        assert_eq!(a.status, 200, "{a:?}");
    }
    let mut third = Http::connect(addr);
    let a = third.answer();
    assert_eq!(
        (a.status, a.header("retry-after")),
        (503, Some("2")),
        "{a:?}"
    );
    assert!(third.closed());
    // A held connection closes: room for the next one.
    drop(held.pop());
    let until = Instant::now() + WAIT;
    let mut next = loop {
        // A refused connection is answered at once; an accepted one hears nothing until it
        // asks (so nothing is sent on a connection the server may be closing).
        let c = Http::connect(addr);
        c.stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut byte = [0u8; 1];
        match c.stream.peek(&mut byte) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                c.stream.set_read_timeout(Some(WAIT)).unwrap();
                break c;
            }
            _ => {
                assert!(Instant::now() < until, "no room came back");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let a = next.post("/v1/events", &[], b"{}");
    assert_eq!(a.status, 200, "{a:?}");
    let stats = std::sync::Arc::clone(engine.stats());
    engine.stop().unwrap();
    assert!(stats.http.connections_refused.load(Ordering::Relaxed) >= 1);
    assert_eq!(stats.process.stored.get(), 3);
}

/// Stopping the engine while requests are in flight: each is answered with its outcome, or
/// `503` (nothing of it was read by the ingest thread), or loses its connection as the
/// gateway closes; every event stored belongs to a request answered `200` or to one that
/// got no answer, and the engine's books balance (`stop` checks them).
#[test]
fn stopping_with_requests_in_flight_answers_each_or_closes_and_the_books_balance() {
    let dir = TempDir::new("http-stop");
    let (engine, addr) = start(config(&dir));
    let body: String = (0..50).map(|_| "{\"payload\":\"s\"}\n").collect();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || {
                // (events answered stored, requests answered 503, requests without answer)
                let (mut stored, mut unavailable, mut unanswered) = (0u64, 0u64, 0u64);
                let mut c = Http::connect(addr);
                loop {
                    let req = format!(
                        "POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if c.stream.write_all(req.as_bytes()).is_err() {
                        break;
                    }
                    let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.answer()));
                    match answered {
                        Ok(a) if a.status == 200 => stored += a.count("stored"),
                        Ok(a) if a.status == 503 => {
                            unavailable += 1;
                            break;
                        }
                        Ok(a) => panic!("unexpected {a:?}"),
                        Err(_) => {
                            unanswered += 1;
                            break;
                        }
                    }
                }
                (stored, unavailable, unanswered)
            })
        })
        .collect();
    let stats = std::sync::Arc::clone(engine.stats());
    eventually("requests flowing", || stats.process.stored.get() > 2_000);
    engine.stop().unwrap();
    let mut answered_stored = 0;
    let mut unanswered = 0;
    for t in clients {
        let (s, _, u) = t.join().unwrap();
        answered_stored += s;
        unanswered += u;
    }
    let stored = stats.process.stored.get();
    eprintln!("{stored} stored, {answered_stored} answered stored, {unanswered} unanswered");
    assert!(
        answered_stored <= stored,
        "{answered_stored} answered, {stored} stored"
    );
    assert!(
        stored - answered_stored <= unanswered * 50,
        "{stored} stored: {answered_stored} answered, {unanswered} requests without an answer"
    );
}

/// Under `engine.ack = "accepted"` or `"none"` the gateway answers on acceptance (it is
/// acknowledged as `accepted` either way) and refuses `ack=durable`, which it cannot keep.
#[test]
fn without_durable_acks_the_answer_says_accepted_and_durable_is_refused() {
    for mode in [AckMode::Accepted, AckMode::None] {
        let dir = TempDir::new("http-accepted");
        let mut cfg = config(&dir);
        cfg.ack = mode;
        let (engine, addr) = start(cfg);
        let mut c = Http::connect(addr);
        let a = c.post("/v1/events", &[NDJSON], b"{\"priority\":\"low\"}\n{}\n");
        assert_eq!((a.status, a.count("stored")), (200, 2), "{mode:?}: {a:?}");
        assert!(a.body.contains("\"ack\":\"accepted\""), "{a:?}");
        let a = c.post("/v1/events?ack=durable", &[], b"{}");
        assert!(
            a.status == 400 && a.body.contains("\"field\":\"ack\""),
            "{a:?}"
        );
        let stats = std::sync::Arc::clone(engine.stats());
        engine.stop().unwrap();
        assert_eq!(stats.process.stored.get(), 2, "{mode:?}");
    }
}

/// Events dead-lettered at dispatch come back itemised too: here the control plane sits at
/// `elevated` (a depth threshold of 0), which sheds the batch priority, configured sheddable.
#[test]
fn dead_letters_at_dispatch_are_itemised_by_reason() {
    use pinstream_core::control::{ControlConfig, Level};
    use pinstream_core::event::Priority;
    let dir = TempDir::new("http-shed");
    let mut cfg = config(&dir);
    cfg.control = ControlConfig {
        depth_permille: [0, 1000, 1000, 1000],
        drop_permille: [1000; 4],
        recover_permille: 1000,
        warmup_events: 0,
    };
    cfg.sheddable = vec![Priority::Batch];
    let (engine, addr) = start(cfg);
    let stats = std::sync::Arc::clone(engine.stats());
    let mut c = Http::connect(addr);
    // The level is decided on the storage thread's ticks: the first events may be taken
    // before it is `elevated`.
    let until = Instant::now() + WAIT;
    let a = loop {
        let a = c.post(
            "/v1/events",
            &[NDJSON],
            b"{\"id\":11,\"priority\":\"high\"}\n{\"id\":12,\"priority\":\"batch\"}\n",
        );
        assert_eq!(a.status, 200, "{a:?}");
        if stats.control.level() == Level::Elevated && a.count("dead_lettered") == 1 {
            break a;
        }
        assert!(Instant::now() < until, "never shed: {a:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let item = format!(
        "{{\"index\":1,\"id\":12,\"outcome\":\"dead_lettered\",\"reason\":\"shed\",\"code\":{}}}",
        pinstream_core::reason::Reason::Shed.code()
    );
    assert!(a.body.contains(&item), "{item} not in {a:?}");
    engine.stop().unwrap();
}

/// A request answered `202` (`ack=none`) was taken: a clean stop right after it stores its
/// events (the gateway's queue and ring are drained before the ingest thread stops), and
/// nothing is counted as not taken.
#[test]
fn events_answered_202_are_stored_by_a_stop_right_after() {
    for round in 0..5 {
        let dir = TempDir::new("http-202-stop");
        let (engine, addr) = start(config(&dir));
        let mut c = Http::connect(addr);
        let mut sent = 0u64;
        for r in 0..10u64 {
            let body: String = (0..50u64)
                .map(|i| format!("{{\"payload\":\"r{round}-{r}-{i}\"}}\n"))
                .collect();
            let a = c.post("/v1/events?ack=none", &[NDJSON], body.as_bytes());
            assert_eq!(a.status, 202, "{a:?}");
            sent += 50;
        }
        let stats = std::sync::Arc::clone(engine.stats());
        let gateway = std::sync::Arc::clone(&stats.http);
        engine.stop().unwrap();
        assert_eq!(stats.process.stored.get(), sent, "round {round}");
        assert_eq!(
            gateway
                .not_taken_at_stop
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
}
