//! The gRPC gateway (issue 17) over real sockets with a real tonic client: unary publishes
//! stored and found in the logs, streams acknowledged in order, tokens (UNAUTHENTICATED,
//! PERMISSION_DENIED, RESOURCE_EXHAUSTED), INVALID_ARGUMENT, back-pressure as flow control on
//! a stream (nothing lost) and UNAVAILABLE on a unary call, the health service, TLS with a
//! CA made by the test (openssl, as tests/http_tls.rs), and an HTTP/2 stream flood (rapid
//! reset, a client opening more streams than allowed) survived with the books balanced.
//! Engines bind 127.0.0.1 on ephemeral ports and are stopped by their handles' `Drop` even
//! when an assertion fails.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use pinstream_host::config::TokenSection;
use pinstream_host::engine::{Engine, EngineConfig, EngineHandle};
use pinstream_host::gateway::grpc::proto::ingest_client::IngestClient;
use pinstream_host::gateway::grpc::proto::{Event, Priority, PublishRequest};
use pinstream_host::gateway::{GrpcSettings, TlsFiles, hash_token};
use pinstream_host::storage::LogReader;
use pinstream_tests::TempDir;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request};

const WAIT: Duration = Duration::from_secs(20);

fn config(dir: &TempDir) -> EngineConfig {
    let mut cfg = EngineConfig::local(dir.path());
    cfg.topics = vec!["default".into(), "metrics".into()];
    cfg.udp = None;
    let mut grpc = GrpcSettings::off();
    grpc.listen = Some("127.0.0.1:0".parse().unwrap());
    grpc.max_events_per_request = 1000;
    grpc.backpressure_wait = Duration::from_millis(20);
    grpc.handshake_timeout = Duration::from_millis(500);
    cfg.grpc = grpc;
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

fn start(cfg: EngineConfig) -> (EngineHandle, SocketAddr) {
    let engine = Engine::start(cfg).unwrap();
    assert_eq!(engine.http_addr(), None, "gRPC alone: no HTTP listener");
    let addr = engine.grpc_addr().expect("the gRPC gateway listens");
    (engine, addr)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn client(addr: SocketAddr) -> IngestClient<Channel> {
    let ch = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(WAIT)
        .connect()
        .await
        .unwrap();
    IngestClient::new(ch)
}

fn event(topic: &str, id: u64, payload: impl Into<Vec<u8>>) -> Event {
    Event {
        topic: topic.into(),
        priority: Priority::Unspecified.into(),
        id,
        value: None,
        timestamp: 0,
        payload: payload.into().into(),
    }
}

fn request(events: Vec<Event>, sequence: u64) -> PublishRequest {
    PublishRequest { events, sequence }
}

fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
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

#[test]
fn unary_publish_is_stored_once_and_found_in_the_log() {
    let dir = TempDir::new("grpc-unary");
    let (engine, addr) = start(config(&dir));
    let rt = runtime();
    rt.block_on(async {
        let mut c = client(addr).await;
        let events = (0..100u64)
            .map(|n| event("metrics", n + 1, format!("ev-{n:06}")))
            .collect();
        let r = c.publish(request(events, 0)).await.unwrap().into_inner();
        assert_eq!((r.stored, r.duplicates, r.rejected), (100, 0, 0), "{r:?}");
        assert!(r.durable, "the engine acknowledges after the commit");
        // Durable: in the log when the answer came.
        let bodies = records(&dir, "transactional");
        for n in 0..100u64 {
            let p = format!("ev-{n:06}");
            let found = bodies.iter().filter(|b| b.ends_with(p.as_bytes())).count();
            assert_eq!(found, 1, "{p} stored {found} times");
        }
        // The same ids again: duplicates.
        let again = (1..=100u64).map(|id| event("metrics", id, "x")).collect();
        let r = c.publish(request(again, 0)).await.unwrap().into_inner();
        assert_eq!((r.stored, r.duplicates), (0, 100), "{r:?}");
        // No id: the gateway gives one (never a duplicate).
        let fresh = (0..10).map(|_| event("", 0, "y")).collect();
        let r = c.publish(request(fresh, 0)).await.unwrap().into_inner();
        assert_eq!(r.stored, 10, "{r:?}");
    });
    let stats = std::sync::Arc::clone(engine.stats());
    engine.stop().unwrap();
    assert_eq!(stats.process.stored.get(), 110);
    assert_eq!(stats.grpc.requests(Code::Ok), 3);
    assert_eq!(stats.grpc.stored(), 110);
}

#[test]
fn a_stream_of_requests_is_acknowledged_in_order() {
    let dir = TempDir::new("grpc-stream");
    let (engine, addr) = start(config(&dir));
    let rt = runtime();
    const REQUESTS: u64 = 300;
    const PER: u64 = 100;
    rt.block_on(async {
        let mut c = client(addr).await;
        let reqs = futures_util::stream::iter(0..REQUESTS).map(|r| {
            let events = (0..PER)
                .map(|i| event("metrics", 1 + r * PER + i, vec![b'p'; 100]))
                .collect();
            request(events, 1000 + r)
        });
        let mut acks = c.publish_stream(reqs).await.unwrap().into_inner();
        let mut next = 1000;
        let mut stored = 0;
        while let Some(a) = acks.message().await.unwrap() {
            assert_eq!(a.sequence, next, "acks come in the order of the requests");
            assert_eq!(a.code, 0, "{a:?}");
            stored += a.response.unwrap().stored;
            next += 1;
        }
        assert_eq!(next, 1000 + REQUESTS, "one ack per request");
        assert_eq!(stored, REQUESTS * PER);
    });
    let stats = std::sync::Arc::clone(engine.stats());
    engine.stop().unwrap();
    assert_eq!(stats.process.stored.get(), REQUESTS * PER);
    assert_eq!(stats.grpc.streams.load(Ordering::Relaxed), 1);
}

#[test]
fn tokens_authenticate_restrict_topics_and_rate_limit() {
    let dir = TempDir::new("grpc-auth");
    let (engine, addr) = start(with_tokens(config(&dir)));
    let rt = runtime();
    rt.block_on(async {
        let mut c = client(addr).await;
        let one = || request(vec![event("metrics", 0, "a")], 0);
        // No token, a wrong one.
        let e = c.publish(one()).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        let e = c.publish(authed(one(), "nope")).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        // On a stream: refused before any message is read.
        let e = c
            .publish_stream(futures_util::stream::iter(vec![one()]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        // A topic the token may not use.
        let e = c
            .publish(authed(
                request(vec![event("metrics", 0, "a"), event("default", 0, "b")], 0),
                "tok-metrics",
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("events[1].topic"), "{e:?}");
        // Its rate: a burst of 5, then RESOURCE_EXHAUSTED.
        let five = request((0..5).map(|_| event("metrics", 0, "r")).collect(), 0);
        let r = c.publish(authed(five, "tok-metrics")).await.unwrap();
        assert_eq!(r.get_ref().stored, 5);
        let e = c.publish(authed(one(), "tok-metrics")).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        // On a stream, a refused request is answered in its ack and the stream goes on.
        let reqs = vec![
            request(vec![event("default", 0, "s")], 1),
            request(vec![event("metrics", 0, "s")], 2),
        ];
        let mut acks = c
            .publish_stream(authed(futures_util::stream::iter(reqs), "tok-metrics"))
            .await
            .unwrap()
            .into_inner();
        let a = acks.message().await.unwrap().unwrap();
        assert_eq!(
            (a.sequence, a.code),
            (1, Code::PermissionDenied as u32),
            "{a:?}"
        );
        let a = acks.message().await.unwrap().unwrap();
        assert_eq!(
            (a.sequence, a.code),
            (2, Code::ResourceExhausted as u32),
            "{a:?}"
        );
        // A token for every topic.
        let r = c
            .publish(authed(
                request(vec![event("default", 0, "ok")], 0),
                "tok-all",
            ))
            .await
            .unwrap();
        assert_eq!(r.get_ref().stored, 1);
    });
    // Counted by code on /metrics.
    let mut page = String::new();
    pinstream_host::admin::AdminSource::render_metrics(&**engine.stats(), &mut page);
    for line in [
        "pinstream_grpc_requests_total{code=\"unauthenticated\"} 3",
        "pinstream_grpc_requests_total{code=\"permission_denied\"} 2",
        "pinstream_grpc_requests_total{code=\"resource_exhausted\"} 2",
        "pinstream_grpc_events_total{outcome=\"stored\"} 6",
        "pinstream_grpc_streams_total 1",
    ] {
        assert!(page.lines().any(|l| l == line), "{line} not in:\n{page}");
    }
    let stats = std::sync::Arc::clone(engine.stats());
    engine.stop().unwrap();
    assert_eq!(stats.process.stored.get(), 6);
    assert_eq!(stats.grpc.requests(Code::Unauthenticated), 3);
    assert_eq!(stats.grpc.requests(Code::PermissionDenied), 2);
}

#[test]
fn bad_fields_are_invalid_argument_naming_the_event_and_field() {
    let dir = TempDir::new("grpc-invalid");
    let mut cfg = config(&dir);
    cfg.grpc.max_message_bytes = 6000;
    let (engine, addr) = start(cfg);
    let rt = runtime();
    rt.block_on(async {
        let mut c = client(addr).await;
        let e = c
            .publish(request(
                vec![event("metrics", 0, "a"), event("nope", 0, "b")],
                0,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("events[1].topic"), "{e:?}");
        let mut bad = event("metrics", 0, "a");
        bad.priority = 42;
        let e = c.publish(request(vec![bad], 0)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("events[0].priority"), "{e:?}");
        let e = c.publish(request(vec![], 0)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let many = (0..1001).map(|_| event("", 0, "m")).collect();
        let e = c.publish(request(many, 0)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        // Over grpc.max_message_bytes: refused by the decoder before it is buffered whole.
        let big = vec![event("", 0, vec![b'b'; 8 * 1024])];
        let e = c.publish(request(big, 0)).await.unwrap_err();
        assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    });
    let stats = std::sync::Arc::clone(engine.stats());
    engine.stop().unwrap();
    assert_eq!(
        stats.process.stored.get(),
        0,
        "nothing of a refused request"
    );
    assert_eq!(stats.grpc.requests(Code::InvalidArgument), 4);
}

#[test]
fn the_health_service_answers_serving() {
    let dir = TempDir::new("grpc-health");
    let (engine, addr) = start(config(&dir));
    let rt = runtime();
    rt.block_on(async {
        let ch = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
        for service in ["", "pinstream.v1.Ingest"] {
            let r = h
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                r.status,
                tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
                "{service:?}"
            );
        }
        let e = h
            .check(tonic_health::pb::HealthCheckRequest {
                service: "nope".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
    });
    engine.stop().unwrap();
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
fn back_pressure_holds_a_stream_back_without_loss_and_refuses_unary_calls() {
    /// Lets the storage thread go however the test ends (else the engine's stop waits).
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            HOLD_STORAGE.store(false, Ordering::Release);
        }
    }
    let dir = TempDir::new("grpc-backpressure");
    let mut cfg = config(&dir);
    // More requests in flight than the ring and the queue hold: the ring fills first.
    cfg.grpc.stream_window = 4096;
    HOLD_STORAGE.store(true, Ordering::Release);
    cfg.thread_hook = Some(hold_storage);
    let (engine, addr) = start(cfg);
    let _release = Release;
    let stats = std::sync::Arc::clone(engine.stats());
    const REQUESTS: u64 = 1000;
    const PER: u64 = 50;
    let rt = runtime();
    let stored = rt.block_on(async {
        let c = client(addr).await;
        // 1 000 requests of 50 events of 1 000 bytes (50 MB): far more than the lanes, the
        // ring and the gateway's queue hold while the storage thread is held.
        let reqs = futures_util::stream::iter(0..REQUESTS).map(|r| {
            let events = (0..PER)
                .map(|_| {
                    let mut e = event("", 0, vec![b'p'; 1000]);
                    e.priority = Priority::High.into();
                    e
                })
                .collect();
            request(events, r)
        });
        let mut c2 = c.clone();
        let acker = tokio::spawn(async move {
            let mut acks = c2.publish_stream(reqs).await.unwrap().into_inner();
            let mut next = 0;
            let mut stored = 0;
            while let Some(a) = acks.message().await.unwrap() {
                assert_eq!((a.sequence, a.code), (next, 0), "{a:?}");
                stored += a.response.unwrap().stored;
                next += 1;
            }
            assert_eq!(next, REQUESTS);
            stored
        });
        // The stream is held back (it waits for room, it is not refused) ...
        let until = Instant::now() + WAIT;
        while stats.grpc.stream_waits.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < until, "the stream never waited");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // ... while a unary call finds no room within its wait: UNAVAILABLE, nothing taken.
        // On a connection of its own: the stream's, not being read, has its HTTP/2
        // connection window used up (flow control holds every call on it).
        // As large as the stream's requests (a smaller one might fit the room left).
        let mut own = client(addr).await;
        let big = (0..PER).map(|_| event("", 0, vec![b'u'; 1000])).collect();
        let e = tokio::time::timeout(WAIT, own.publish(request(big, 0)))
            .await
            .expect("answered within the wait")
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(stats.process.stored.get() < REQUESTS * PER);
        HOLD_STORAGE.store(false, Ordering::Release);
        tokio::time::timeout(WAIT, acker)
            .await
            .expect("every ack within the wait")
            .unwrap()
    });
    assert_eq!(stored, REQUESTS * PER, "every event of the stream stored");
    eventually("every event stored", || {
        stats.process.stored.get() == REQUESTS * PER
    });
    engine.stop().unwrap(); // checks ingested == stored + duplicates + dead + rejected
    assert_eq!(stats.process.stored.get(), REQUESTS * PER);
    assert!(stats.grpc.requests(Code::Unavailable) >= 1);
}

/// An HTTP/2 client that opens streams and resets them at once ("rapid reset"), others that
/// send half a Publish and reset, and more streams than `grpc.max_concurrent_streams` open
/// at once: the gateway survives, a well-behaved client is served meanwhile, and the engine's
/// books balance at the stop.
#[test]
fn an_http2_stream_flood_is_survived_and_the_books_balance() {
    let dir = TempDir::new("grpc-flood");
    let mut cfg = config(&dir);
    cfg.grpc.max_concurrent_streams = 16;
    let (engine, addr) = start(cfg);
    let stats = std::sync::Arc::clone(engine.stats());
    let rt = runtime();
    let (good_stored, flood_stored) = rt.block_on(async {
        // The flood.
        let flood = tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let Ok((h2, conn)) = h2::client::handshake(tcp).await else {
                return 0;
            };
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut stored = 0u64;
            let mut held = Vec::new();
            let body = {
                use prost::Message as _;
                let m = request(vec![event("", 0, "flood")], 0).encode_to_vec();
                let mut b = vec![0u8];
                b.extend_from_slice(&u32::try_from(m.len()).unwrap().to_be_bytes());
                b.extend_from_slice(&m);
                bytes::Bytes::from(b)
            };
            for i in 0..5_000u32 {
                let Ok(mut h2) = h2.clone().ready().await else {
                    break;
                };
                let req = http::Request::builder()
                    .method("POST")
                    .uri(format!("http://{addr}/pinstream.v1.Ingest/Publish"))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(())
                    .unwrap();
                let Ok((resp, mut send)) = h2.send_request(req, false) else {
                    break;
                };
                match i % 4 {
                    // Reset at once.
                    0 | 1 => send.send_reset(h2::Reason::CANCEL),
                    // Half a message, then reset.
                    2 => {
                        let _ = send.send_data(body.slice(..body.len() / 2), false);
                        send.send_reset(h2::Reason::CANCEL);
                    }
                    // A whole Publish, its answer awaited later (some are held open).
                    _ => {
                        let _ = send.send_data(body.clone(), true);
                        held.push(resp);
                        if held.len() >= 64 {
                            for r in held.drain(..) {
                                if let Ok(r) = r.await {
                                    let mut b = r.into_body();
                                    while let Some(Ok(d)) = b.data().await {
                                        let _ = b.flow_control().release_capacity(d.len());
                                        stored += u64::from(d.len() > 5);
                                    }
                                }
                            }
                        }
                    }
                }
            }
            drop(held);
            stored
        });
        // A well-behaved client meanwhile.
        let mut c = client(addr).await;
        let mut good = 0;
        for r in 0..50u64 {
            let events = (0..20u64)
                .map(|i| event("metrics", 1 + r * 20 + i, "good"))
                .collect();
            let a = c.publish(request(events, 0)).await.unwrap().into_inner();
            good += a.stored;
        }
        (good, flood.await.unwrap())
    });
    assert_eq!(good_stored, 1000);
    eprintln!("flood: {flood_stored} whole publishes answered");
    // Still serving after the flood.
    rt.block_on(async {
        let mut c = client(addr).await;
        let a = c
            .publish(request(vec![event("", 0, "after")], 0))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(a.stored, 1);
    });
    engine.stop().unwrap(); // checks ingested == stored + duplicates + dead + rejected
    assert!(stats.process.stored.get() >= 1001 + flood_stored);
}

// TLS, with a CA made by the test.

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A CA and a server certificate for 127.0.0.1 and localhost, in `dir`.
fn pki(dir: &Path) -> bool {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("openssl is not installed: skipped (CI installs it)");
        return false;
    }
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=ca",
        "-days",
        "2",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &args);
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=server",
    ]);
    openssl(dir, &args);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.pem",
            "-extfile",
            "server.ext",
        ],
    );
    true
}

#[test]
fn tls_serves_a_client_trusting_the_ca_and_refuses_plain_text() {
    let pki_dir = TempDir::new("grpc-tls-pki");
    if !pki(pki_dir.path()) {
        return;
    }
    let dir = TempDir::new("grpc-tls");
    let mut cfg = config(&dir);
    cfg.grpc.tls = Some(TlsFiles {
        cert: pki_dir.path().join("server.pem"),
        key: pki_dir.path().join("server.key"),
        client_ca: None,
    });
    let (engine, addr) = start(cfg);
    let rt = runtime();
    rt.block_on(async {
        let ca = std::fs::read(pki_dir.path().join("ca.pem")).unwrap();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("localhost");
        let ch = Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut c = IngestClient::new(ch);
        let r = c
            .publish(request(vec![event("metrics", 0, "secret")], 0))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.stored, 1);
        // Plain text (h2c) on the TLS port: no call gets through.
        let plain = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .timeout(Duration::from_secs(2))
            .connect()
            .await;
        if let Ok(ch) = plain {
            let e = IngestClient::new(ch)
                .publish(request(vec![event("metrics", 0, "clear")], 0))
                .await;
            assert!(e.is_err(), "{e:?}");
        }
    });
    let stats = std::sync::Arc::clone(engine.stats());
    eventually("the failed handshake counted", || {
        stats.grpc.tls_handshake_failures.load(Ordering::Relaxed) >= 1
    });
    engine.stop().unwrap();
    assert_eq!(stats.process.stored.get(), 1);
}

/// gRPC and HTTP on one engine share the gateway thread and its rings; reflection lists the
/// service.
#[test]
fn grpc_and_http_share_the_gateway_and_reflection_lists_the_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = TempDir::new("grpc-and-http");
    let mut cfg = config(&dir);
    cfg.http.listen = Some("127.0.0.1:0".parse().unwrap());
    let engine = Engine::start(cfg).unwrap();
    let http = engine.http_addr().expect("http listens");
    let grpc = engine.grpc_addr().expect("grpc listens");
    let rt = runtime();
    rt.block_on(async {
        let ch = Endpoint::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut refl = ServerReflectionClient::new(ch.clone());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = refl
            .server_reflection_info(futures_util::stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let a = answers.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = a.message_response else {
            panic!("{a:?}");
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"pinstream.v1.Ingest"), "{names:?}");
        // v1alpha too (older grpcurl).
        {
            use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as Alpha;
            use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as M;
            let req = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(M::ListServices(String::new())),
            };
            let mut answers = Alpha::new(ch.clone())
                .server_reflection_info(futures_util::stream::iter(vec![req]))
                .await
                .unwrap()
                .into_inner();
            let a = answers.message().await.unwrap().unwrap();
            assert!(format!("{a:?}").contains("pinstream.v1.Ingest"), "{a:?}");
        }
        let r = IngestClient::new(ch)
            .publish(request(vec![event("metrics", 0, "over grpc")], 0))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.stored, 1);
    });
    // The same engine over HTTP.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let body = "{\"topic\":\"metrics\",\"payload\":\"over http\"}";
    write!(
        s,
        "POST /v1/events HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let stats = std::sync::Arc::clone(engine.stats());
    engine.stop().unwrap();
    assert_eq!(stats.process.stored.get(), 2);
    assert_eq!(stats.grpc.stored(), 1);
    assert_eq!(stats.http.requests(200), 1);
}

/// Past `grpc.max_connections` a connection is closed at once and counted; the ones within
/// are served.
#[test]
fn connections_over_the_limit_are_closed_and_counted() {
    let dir = TempDir::new("grpc-conns");
    let mut cfg = config(&dir);
    cfg.grpc.max_connections = 2;
    let (engine, addr) = start(cfg);
    let stats = std::sync::Arc::clone(engine.stats());
    let rt = runtime();
    rt.block_on(async {
        let mut a = client(addr).await;
        let mut b = client(addr).await;
        for c in [&mut a, &mut b] {
            let r = c
                .publish(request(vec![event("", 0, "in")], 0))
                .await
                .unwrap();
            assert_eq!(r.get_ref().stored, 1);
        }
        // A third: accepted by the kernel, closed by the gateway before HTTP/2.
        let third = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .timeout(Duration::from_secs(2))
            .connect()
            .await;
        if let Ok(ch) = third {
            let e = IngestClient::new(ch)
                .publish(request(vec![event("", 0, "out")], 0))
                .await;
            assert!(e.is_err(), "{e:?}");
        }
    });
    assert!(stats.grpc.connections_refused.load(Ordering::Relaxed) >= 1);
    engine.stop().unwrap();
    assert_eq!(stats.process.stored.get(), 2);
}
