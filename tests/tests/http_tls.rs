//! TLS on the HTTP gateway (issue 17) over real sockets, with a test CA made in the test by
//! the `openssl` command (skipped with a message when it is not installed; CI installs it):
//! HTTPS with a rustls client and with `curl --cacert`, events stored exactly once; plain HTTP
//! to the TLS port refused and counted; mutual TLS with and without a client certificate;
//! bad TLS files refused at start-up and by the config check, naming the key and the file;
//! `loadgen --transport http` over HTTPS and with a token, every event accounted for.
//! Engines bind 127.0.0.1 on ephemeral ports and are stopped by their handles' `Drop` even
//! when an assertion fails.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pinstream_client::loadgen;
use pinstream_host::config::{Config, TokenSection};
use pinstream_host::engine::{Engine, EngineConfig, EngineHandle};
use pinstream_host::gateway::{HttpSettings, TlsFiles, hash_token};
use pinstream_host::storage::LogReader;
use pinstream_tests::TempDir;
use pinstream_tests::pki::{Pki, pki};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

const WAIT: Duration = Duration::from_secs(20);

fn config(dir: &TempDir, pki: &Pki, mutual: bool) -> EngineConfig {
    let mut cfg = EngineConfig::local(dir.path());
    cfg.topics = vec!["default".into(), "metrics".into()];
    cfg.udp = None;
    let mut http = HttpSettings::off();
    http.listen = Some("127.0.0.1:0".parse().unwrap());
    http.header_timeout = Duration::from_millis(500);
    http.tls = Some(TlsFiles {
        cert: pki.file("server.pem"),
        key: pki.file("server.key"),
        client_ca: mutual.then(|| pki.file("ca.pem")),
    });
    cfg.http = http;
    cfg
}

fn start(cfg: EngineConfig) -> (EngineHandle, SocketAddr) {
    let engine = Engine::start(cfg).unwrap();
    let addr = engine.http_addr().expect("the gateway listens");
    (engine, addr)
}

/// A rustls client trusting `ca`, presenting `client` (certificate, key) when given.
fn client_config(pki: &Pki, ca: &str, client: Option<&str>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.file(ca)).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    Arc::new(match client {
        None => b.with_no_client_auth(),
        Some(name) => {
            let chain = CertificateDer::pem_file_iter(pki.file(&format!("{name}.pem")))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(pki.file(&format!("{name}.key"))).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
    })
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn connect(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> Tls {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let conn = rustls::ClientConnection::new(cfg, name).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// POSTs NDJSON on a keep-alive connection; the answer's status and body (or the I/O error,
/// as a failed handshake shows).
fn post(s: &mut Tls, body: &str) -> std::io::Result<(u16, String)> {
    let req = format!(
        "POST /v1/events?ack=durable HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    s.flush()?;
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let status = head[9..12].parse().unwrap();
                return Ok((
                    status,
                    String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into(),
                ));
            }
        }
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn ndjson(from: u64, n: u64) -> String {
    (from..from + n)
        .map(|k| {
            format!(
                "{{\"id\":{},\"topic\":\"metrics\",\"payload\":\"tls-{k:05}\"}}\n",
                k + 1
            )
        })
        .collect()
}

fn stored_count(body: &str) -> u64 {
    let at = body.find("\"stored\":").unwrap_or_else(|| panic!("{body}")) + 9;
    body[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

fn eventually(what: &str, f: impl Fn() -> bool) {
    let until = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn records(dir: &TempDir, name: &str) -> Vec<Vec<u8>> {
    let mut reader = LogReader::open(&dir.path().join(name)).expect("open log");
    let mut out = Vec::new();
    while let Some(r) = reader.next_record() {
        out.push(r.expect("a valid record").body.to_vec());
    }
    out
}

#[test]
fn https_with_rustls_and_curl_stores_each_event_once_and_plain_http_is_refused() {
    let Some(pki) = pki() else { return };
    let dir = TempDir::new("http-tls");
    let (engine, addr) = start(config(&dir, &pki, false));
    let stats = Arc::clone(engine.stats());
    // rustls: 10 requests of 50 events on one keep-alive connection.
    let mut s = connect(addr, client_config(&pki, "ca.pem", None));
    let mut stored = 0;
    for r in 0..10 {
        let (status, body) = post(&mut s, &ndjson(r * 50, 50)).unwrap();
        assert_eq!(status, 200, "{body}");
        stored += stored_count(&body);
    }
    assert_eq!(stored, 500);
    // curl, trusting the test CA.
    let curl = Command::new("curl").arg("--version").output().is_ok();
    if curl {
        let out = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(pki.file("ca.pem"))
            .args(["-H", "Content-Type: application/x-ndjson", "--data-binary"])
            .arg(ndjson(500, 20))
            .arg(format!("https://{addr}/v1/events?ack=durable"))
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(stored_count(&body), 20, "{body}");
        // curl without the CA does not trust the server.
        let out = Command::new("curl")
            .args(["-sS", "--data-binary", "{}"])
            .arg(format!("https://{addr}/v1/events"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{out:?}");
    } else {
        eprintln!("curl is not installed: its part skipped");
    }
    let total = if curl { 520 } else { 500 };
    let bodies = records(&dir, "transactional");
    for k in 0..total {
        let p = format!("tls-{k:05}");
        let found = bodies.iter().filter(|b| b.ends_with(p.as_bytes())).count();
        assert_eq!(found, 1, "{p} stored {found} times");
    }
    // Plain HTTP to the TLS port: no HTTP answer, the connection closed, the failure counted.
    let before = stats.http.tls_handshake_failures.load(Ordering::Relaxed);
    let mut plain = TcpStream::connect(addr).unwrap();
    plain.set_read_timeout(Some(WAIT)).unwrap();
    plain
        .write_all(b"POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}")
        .unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(
        !got.starts_with(b"HTTP/1.1"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    eventually("the failed handshake counted", || {
        stats.http.tls_handshake_failures.load(Ordering::Relaxed) > before
    });
    // The keep-alive TLS connection still works after that.
    let (status, body) = post(&mut s, &ndjson(1000, 1)).unwrap();
    assert_eq!((status, stored_count(&body)), (200, 1), "{body}");
    let mut metrics = String::new();
    {
        let mut w = pinstream_host::prom::PromWriter::new(&mut metrics);
        stats.http.render(&mut w);
    }
    assert!(
        metrics.contains("pinstream_http_tls_handshake_failures_total "),
        "{metrics}"
    );
    engine.stop().unwrap();
}

#[test]
fn mutual_tls_takes_a_client_certificate_from_the_ca_and_refuses_others() {
    let Some(pki) = pki() else { return };
    let dir = TempDir::new("http-mtls");
    let (engine, addr) = start(config(&dir, &pki, true));
    let stats = Arc::clone(engine.stats());
    let mut ok = connect(addr, client_config(&pki, "ca.pem", Some("client")));
    let (status, body) = post(&mut ok, &ndjson(0, 10)).unwrap();
    assert_eq!((status, stored_count(&body)), (200, 10), "{body}");
    for (who, cfg) in [
        ("no certificate", client_config(&pki, "ca.pem", None)),
        (
            "another CA's",
            client_config(&pki, "ca.pem", Some("stranger")),
        ),
    ] {
        let before = stats.http.tls_handshake_failures.load(Ordering::Relaxed);
        let mut s = connect(addr, cfg);
        let r = post(&mut s, &ndjson(100, 5));
        assert!(r.is_err(), "{who}: answered {r:?}");
        eventually("the refused handshake counted", || {
            stats.http.tls_handshake_failures.load(Ordering::Relaxed) > before
        });
    }
    // Only the accepted client's events are stored.
    let (status, body) = post(&mut ok, &ndjson(10, 1)).unwrap();
    assert_eq!((status, stored_count(&body)), (200, 1), "{body}");
    assert_eq!(records(&dir, "transactional").len(), 11);
    engine.stop().unwrap();
}

/// What is wrong, cert, key, client CA, words the error must hold.
type BadCase<'a> = (&'a str, PathBuf, PathBuf, Option<PathBuf>, &'a [&'a str]);

#[test]
fn bad_tls_files_are_refused_naming_the_key_and_the_file() {
    let Some(pki) = pki() else { return };
    let garbage = pki.file("garbage.pem");
    std::fs::write(&garbage, "not a PEM file\n").unwrap();
    let missing = pki.file("missing.pem");
    let cases: [BadCase<'_>; 5] = [
        (
            "missing cert",
            missing.clone(),
            pki.file("server.key"),
            None,
            &["http.tls_cert", "missing.pem", "cannot read"],
        ),
        (
            "garbage cert",
            garbage.clone(),
            pki.file("server.key"),
            None,
            &["http.tls_cert", "garbage.pem", "no PEM certificate"],
        ),
        (
            "garbage key",
            pki.file("server.pem"),
            garbage.clone(),
            None,
            &["http.tls_key", "garbage.pem", "private key"],
        ),
        (
            "key of another cert",
            pki.file("server.pem"),
            pki.file("client.key"),
            None,
            &["http.tls_key", "client.key", "does not fit", "server.pem"],
        ),
        (
            "garbage client CA",
            pki.file("server.pem"),
            pki.file("server.key"),
            Some(garbage.clone()),
            &["http.tls_client_ca", "garbage.pem"],
        ),
    ];
    for (what, cert, key, ca, words) in cases {
        // At start-up (the engine API).
        let dir = TempDir::new("http-tls-bad");
        let mut cfg = EngineConfig::local(dir.path());
        cfg.udp = None;
        cfg.http.listen = Some("127.0.0.1:0".parse().unwrap());
        cfg.http.tls = Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: ca.clone(),
        });
        let err = match Engine::start(cfg) {
            Ok(_) => panic!("{what}: the engine started"),
            Err(e) => e.to_string(),
        };
        for w in words {
            assert!(err.contains(w), "{what}: {w:?} not in {err:?}");
        }
        // And by the config check, from TOML.
        let ca_line = ca.map_or(String::new(), |c| format!("tls_client_ca = {:?}\n", c));
        let toml = format!(
            "[http]\nlisten = \"127.0.0.1:0\"\ntls_cert = {cert:?}\ntls_key = {key:?}\n{ca_line}"
        );
        let err = Config::from_toml(&toml, "<inline>")
            .unwrap()
            .validate()
            .expect_err(what)
            .to_string();
        for w in words {
            assert!(err.contains(w), "{what} (config): {w:?} not in {err:?}");
        }
    }
    // Half a pair, and a client CA without TLS.
    for (toml, words) in [
        ("tls_cert = \"c.pem\"", ["http.tls_key", "give both"]),
        ("tls_key = \"k.pem\"", ["http.tls_cert", "give both"]),
        (
            "tls_client_ca = \"ca.pem\"",
            ["http.tls_client_ca", "need TLS"],
        ),
    ] {
        let err = Config::from_toml(
            &format!("[http]\nlisten = \"127.0.0.1:0\"\n{toml}\n"),
            "<inline>",
        )
        .unwrap()
        .validate()
        .expect_err(toml)
        .to_string();
        for w in words {
            assert!(err.contains(w), "{toml}: {w:?} not in {err:?}");
        }
    }
}

#[test]
fn a_non_loopback_listener_without_tls_or_tokens_is_warned_about() {
    let warn = |extra: &str| {
        Config::from_toml(
            &format!("[http]\nlisten = \"0.0.0.0:0\"\n{extra}"),
            "<inline>",
        )
        .unwrap()
        .validate()
        .unwrap()
        .join("\n")
    };
    let w = warn("");
    assert!(
        w.contains("http.tls_cert is not set") && w.contains("no authentication"),
        "{w}"
    );
    let w = warn(
        "[auth]\ntokens = [{ name = \"a\", sha256 = \"00000000000000000000000000000000000000000000000000000000000000aa\", topics = [\"*\"] }]\n",
    );
    assert!(
        w.contains("clear text") && !w.contains("no authentication"),
        "{w}"
    );
}

/// `loadgen --transport http`'s library: `n` events in requests of 100 over 3 connections.
fn http_load(
    addr: SocketAddr,
    n: u64,
    http: loadgen::HttpOptions,
) -> std::io::Result<loadgen::LoadReport> {
    let mut cfg = loadgen::LoadConfig::new(addr, n);
    cfg.transport = loadgen::Transport::Http;
    cfg.batch = 100;
    cfg.http = http;
    loadgen::spawn(&cfg, 3)?.join()
}

#[test]
fn loadgen_over_https_and_http_with_a_token_counts_every_event_stored_once() {
    let Some(pki) = pki() else { return };
    // HTTPS.
    let dir = TempDir::new("http-tls-loadgen");
    let (engine, addr) = start(config(&dir, &pki, false));
    let tls = loadgen::HttpOptions {
        tls_ca: Some(pki.file("ca.pem")),
        ..Default::default()
    };
    let r = http_load(addr, 3_001, tls).unwrap();
    assert_eq!(r.accounting_error(), None);
    assert_eq!((r.sent, r.outcomes.unwrap().stored), (3_001, 3_001));
    // 1 000 or 1 001 events per connection: 10 or 11 requests each.
    assert_eq!(r.frames, 31);
    assert_eq!(r.ack_latency.as_ref().unwrap().len(), 31);
    engine.stop().unwrap();
    assert_eq!(records(&dir, "transactional").len(), 3_001);
    // A CA the server's certificate does not chain to: refused before anything is sent.
    let dir = TempDir::new("http-tls-loadgen-bad");
    let (engine, addr) = start(config(&dir, &pki, false));
    let other = loadgen::HttpOptions {
        tls_ca: Some(pki.file("other-ca.pem")),
        ..Default::default()
    };
    let e = http_load(addr, 300, other).unwrap_err().to_string();
    assert!(e.contains("TLS handshake"), "{e}");
    engine.stop().unwrap();
    assert!(records(&dir, "transactional").is_empty());

    // Plain HTTP with tokens: with the token every event is stored, without it 401.
    let dir = TempDir::new("http-loadgen-token");
    let mut cfg = config(&dir, &pki, false);
    cfg.http.tls = None;
    cfg.http.tokens = vec![TokenSection {
        name: "load".into(),
        sha256: hash_token("tok-load"),
        topics: vec!["*".into()],
        rate: 0,
        burst: 0,
        read: true,
    }];
    let (engine, addr) = start(cfg);
    let e = http_load(addr, 300, loadgen::HttpOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("401"), "{e}");
    let token = loadgen::HttpOptions {
        token: Some("tok-load".into()),
        ..Default::default()
    };
    let r = http_load(addr, 2_000, token).unwrap();
    assert_eq!(r.accounting_error(), None);
    assert_eq!(r.outcomes.unwrap().stored, 2_000);
    engine.stop().unwrap();
    assert_eq!(records(&dir, "transactional").len(), 2_000);
}

#[test]
fn a_stalled_handshake_blocks_no_one_and_is_closed_and_counted() {
    let Some(pki) = pki() else { return };
    let dir = TempDir::new("http-tls-stall");
    let (engine, addr) = start(config(&dir, &pki, false));
    let stats = Arc::clone(engine.stats());
    // Connected, never says hello.
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled.set_read_timeout(Some(WAIT)).unwrap();
    // Another client is served meanwhile.
    let mut s = connect(addr, client_config(&pki, "ca.pem", None));
    let (status, body) = post(&mut s, &ndjson(0, 3)).unwrap();
    assert_eq!((status, stored_count(&body)), (200, 3), "{body}");
    // The stalled one is closed once http.header_timeout passes, and counted.
    let mut rest = Vec::new();
    let n = stalled.read_to_end(&mut rest);
    assert!(matches!(n, Ok(0)) || n.is_err(), "{n:?} {rest:?}");
    eventually("the stalled handshake counted", || {
        stats.http.tls_handshake_failures.load(Ordering::Relaxed) == 1
    });
    engine.stop().unwrap();
}
