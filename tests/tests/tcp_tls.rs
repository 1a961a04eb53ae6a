//! TLS on the binary TCP port (issue 17, item 3) over real sockets, with a test CA made in
//! the test by the `openssl` command (skipped with a message when it is not installed; CI
//! installs it): a TLS producer gets durable ACKs and its events are stored once; a
//! plaintext client, an untrusted server certificate and (with `tcp.tls_client_ca`) a
//! missing or foreign client certificate are refused at the handshake and counted; the
//! engine closing a connection after bad frames reaches the TLS client; a client reset
//! mid-frame closes both sides; many connections at once; the per-address limit counts a TLS
//! client by its real address; a silent client is closed at the handshake deadline;
//! `loadgen` over TLS; the books balance at every stop. Engines bind 127.0.0.1 on ephemeral ports and are stopped by their
//! handles' `Drop` even when an assertion fails.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pinstream_client::{
    ConnectOptions, Connection, Producer, ProducerOptions, Reply, TlsFiles as ClientTls,
    TlsOptions, loadgen,
};
use pinstream_core::event::{EventHeader, Priority};
use pinstream_core::wire::Hello;
use pinstream_host::config::Config;
use pinstream_host::engine::{Engine, EngineConfig, EngineHandle, EngineStats};
use pinstream_host::gateway::TlsFiles;
use pinstream_host::storage::LogReader;
use pinstream_host::tlsport::TcpTlsSettings;
use pinstream_tests::TempDir;
use pinstream_tests::client::Client;
use pinstream_tests::pki::{Pki, pki};

const WAIT: Duration = Duration::from_secs(20);

fn config(dir: &TempDir, pki: &Pki, mutual: bool) -> EngineConfig {
    let mut cfg = EngineConfig::local(dir.path());
    cfg.udp = None;
    cfg.tcp_tls = Some(TcpTlsSettings {
        files: TlsFiles {
            cert: pki.file("server.pem"),
            key: pki.file("server.key"),
            client_ca: mutual.then(|| pki.file("ca.pem")),
        },
        handshake_timeout: Duration::from_secs(5),
        cpu: None,
    });
    cfg
}

fn start(cfg: EngineConfig) -> (EngineHandle, SocketAddr) {
    let engine = Engine::start(cfg).unwrap();
    let addr = engine.started.tcp.expect("the TLS port listens");
    (engine, addr)
}

/// TLS trusting `ca`, presenting `client` (`client.pem` / `client.key`) when given.
fn tls(pki: &Pki, ca: &str, client: Option<&str>) -> TlsOptions {
    ClientTls {
        ca: pki.file(ca),
        client: client.map(|c| (pki.file(&format!("{c}.pem")), pki.file(&format!("{c}.key")))),
        server_name: None,
    }
    .options()
    .unwrap()
}

fn options() -> ProducerOptions {
    ProducerOptions {
        timeout: WAIT,
        ..ProducerOptions::default()
    }
}

/// Publishes `n` events with ids from `first` (payload `tls-<id>`) and returns what was
/// stored.
fn publish(addr: SocketAddr, tls: TlsOptions, first: u64, n: u64) -> std::io::Result<u64> {
    let mut p = Producer::connect_with(addr, options(), Some(tls))?;
    for id in first..first + n {
        let h = EventHeader::new(id, 0, Priority::High, 0);
        p.push(&h, format!("tls-{id:06}").as_bytes())?;
    }
    let t = p.flush()?;
    assert_eq!(t.total(), n, "{t:?}");
    Ok(t.stored)
}

fn eventually(what: &str, f: impl Fn() -> bool) {
    let until = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Bodies of every record of the log `name`.
fn records(dir: &TempDir, name: &str) -> Vec<Vec<u8>> {
    let mut reader = LogReader::open(&dir.path().join(name)).expect("open log");
    let mut out = Vec::new();
    while let Some(r) = reader.next_record() {
        out.push(r.expect("a valid record").body.to_vec());
    }
    out
}

/// Stops the engine (which checks ingested = stored + duplicates + dead-lettered +
/// rejected) and checks the same books from the counters.
fn stop_balanced(engine: EngineHandle) -> std::sync::Arc<EngineStats> {
    let stats = std::sync::Arc::clone(engine.stats());
    engine.stop().expect("a clean stop with balanced books");
    let b = stats.books();
    assert_eq!(
        b.ingested,
        b.stored + b.duplicates + b.dead_lettered + b.rejected,
        "{b:?}"
    );
    stats
}

fn connect_plain(addr: SocketAddr) -> std::io::Result<(Connection, Option<Hello>)> {
    Connection::connect(
        addr,
        &ConnectOptions {
            timeout: Duration::from_secs(5),
            ..ConnectOptions::default()
        },
    )
}

#[test]
fn a_tls_producer_is_stored_once_and_plaintext_and_untrusted_servers_are_refused() {
    let Some(pki) = pki() else { return };
    let dir = TempDir::new("tcp-tls");
    let (engine, addr) = start(config(&dir, &pki, false));
    let stats = std::sync::Arc::clone(engine.stats());
    assert_eq!(
        publish(addr, tls(&pki, "ca.pem", None), 1, 2_000).unwrap(),
        2_000
    );
    assert_eq!(stats.host.tls_handshakes.get(), 1);
    // A plaintext client: its HELLO is not TLS; the terminator closes, counted.
    let before = stats.host.tls_handshake_failures.get();
    let e = connect_plain(addr).expect_err("a plaintext HELLO is answered");
    eprintln!("plaintext client: {e}");
    eventually("the plaintext handshake failure counted", || {
        stats.host.tls_handshake_failures.get() > before
    });
    // A client that does not trust the server's CA refuses the handshake; counted too.
    let before = stats.host.tls_handshake_failures.get();
    let e = Producer::connect_with(addr, options(), Some(tls(&pki, "other-ca.pem", None)))
        .expect_err("an untrusted server");
    assert!(e.to_string().contains("TLS handshake failed"), "{e}");
    eventually("the refused handshake counted", || {
        stats.host.tls_handshake_failures.get() > before
    });
    // The port still serves TLS clients after that.
    assert_eq!(
        publish(addr, tls(&pki, "ca.pem", None), 10_001, 100).unwrap(),
        100
    );
    let stats = stop_balanced(engine);
    assert_eq!(stats.books().stored, 2_100);
    let bodies: Vec<Vec<u8>> = ["realtime", "transactional", "batch"]
        .iter()
        .flat_map(|log| records(&dir, log))
        .collect();
    for id in (1..=2_000).chain(10_001..10_101) {
        let p = format!("tls-{id:06}");
        let found = bodies
            .iter()
            .filter(|b| b.windows(p.len()).any(|w| w == p.as_bytes()))
            .count();
        assert_eq!(found, 1, "{p} stored {found} times");
    }
    let mut metrics = String::new();
    pinstream_host::admin::AdminSource::render_metrics(&*stats, &mut metrics);
    for m in [
        "pinstream_tcp_tls_handshakes_total 2",
        "pinstream_tcp_tls_handshake_failures_total 2",
        "pinstream_tcp_tls_connections_open 0",
    ] {
        assert!(metrics.contains(m), "{m} not in the metrics");
    }
}

#[test]
fn client_certificates_are_required_with_tls_client_ca() {
    let Some(pki) = pki() else { return };
    let dir = TempDir::new("tcp-mtls");
    let (engine, addr) = start(config(&dir, &pki, true));
    let stats = std::sync::Arc::clone(engine.stats());
    for (who, opts) in [
        ("no certificate", tls(&pki, "ca.pem", None)),
        ("another CA's", tls(&pki, "ca.pem", Some("stranger"))),
    ] {
        let before = stats.host.tls_handshake_failures.get();
        // With TLS 1.3 the client learns of the refusal at its first read (the HELLO reply).
        let r = Producer::connect_with(addr, options(), Some(opts));
        assert!(r.is_err(), "{who}: connected");
        eventually("the refused handshake counted", || {
            stats.host.tls_handshake_failures.get() > before
        });
    }
    assert_eq!(
        publish(addr, tls(&pki, "ca.pem", Some("client")), 1, 500).unwrap(),
        500
    );
    let stats = stop_balanced(engine);
    assert_eq!(stats.books().stored, 500);
    assert_eq!(stats.host.tls_handshakes.get(), 1);
}

#[test]
fn the_engine_closing_after_bad_frames_reaches_the_tls_client() {
    let Some(pki) = pki() else { return };
    let dir = TempDir::new("tcp-tls-close");
    let mut cfg = config(&dir, &pki, false);
    cfg.tcp_limits.max_rejects = 2;
    let (engine, addr) = start(cfg);
    let (mut conn, hello) = Connection::connect_with(
        addr,
        &ConnectOptions {
            timeout: Duration::from_secs(2),
            ..ConnectOptions::default()
        },
        Some(&tls(&pki, "ca.pem", None)),
    )
    .unwrap();
    assert!(hello.is_some());
    // A good frame first: acknowledged.
    let ok = Client::batch(1, &[EventHeader::new(1, 0, Priority::High, 0)], |_| {
        b"fine".to_vec()
    });
    conn.send(&ok).unwrap();
    let (ack, rejects) = conn.wait_ack(1, WAIT).unwrap();
    assert_eq!((ack.stored, rejects.len()), (1, 0));
    // Frames whose CRC is broken: REJECTs, then the engine closes; the client sees the end.
    for seq in 2..6 {
        let mut bad = Client::batch(seq, &[EventHeader::new(seq, 0, Priority::High, 0)], |_| {
            b"bad".to_vec()
        });
        let n = bad.len();
        bad[n - 1] ^= 0xFF;
        if conn.send(&bad).is_err() {
            break;
        }
    }
    let mut rejects = 0;
    let until = Instant::now() + WAIT;
    loop {
        match conn.next_reply() {
            Ok(Some(Reply::Reject(_))) => rejects += 1,
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("the close is clean (close_notify), not {e}"),
        }
        assert!(
            Instant::now() < until,
            "the engine did not close the connection"
        );
    }
    assert!(rejects >= 1, "REJECTs before the close");
    let stats = std::sync::Arc::clone(engine.stats());
    eventually("the malformed close counted", || {
        stats.host.tcp_closed_malformed.get() == 1
    });
    eventually("the TLS session closed", || stats.host.tls_open.get() == 0);
    stop_balanced(engine);
}

#[test]
fn many_tls_connections_at_once_and_loadgen_over_tls() {
    let Some(pki) = pki() else { return };
    let dir = TempDir::new("tcp-tls-many");
    let (engine, addr) = start(config(&dir, &pki, false));
    let threads: Vec<_> = (0..32u64)
        .map(|t| {
            let opts = tls(&pki, "ca.pem", None);
            std::thread::spawn(move || publish(addr, opts, 1 + t * 1_000, 300))
        })
        .collect();
    let stored: u64 = threads
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .sum();
    assert_eq!(stored, 32 * 300);
    // loadgen's TCP transport over TLS: 4 connections, every event acknowledged stored.
    let mut cfg = loadgen::LoadConfig::new(addr, 20_000);
    cfg.id_base = 1_000_000;
    cfg.tls = Some(tls(&pki, "ca.pem", None));
    let report = loadgen::spawn(&cfg, 4).unwrap().join().unwrap();
    let stored = report.outcomes.as_ref().map(|o| o.stored);
    assert_eq!(stored, Some(20_000), "{report:?}");
    let stats = stop_balanced(engine);
    assert_eq!(stats.books().stored, 32 * 300 + 20_000);
    assert_eq!(stats.host.tls_handshakes.get(), 36);
}

#[test]
fn a_silent_client_is_closed_at_the_handshake_deadline() {
    let Some(pki) = pki() else { return };
    let dir = TempDir::new("tcp-tls-silent");
    let mut cfg = config(&dir, &pki, false);
    if let Some(t) = cfg.tcp_tls.as_mut() {
        t.handshake_timeout = Duration::from_millis(300);
    }
    let (engine, addr) = start(cfg);
    let stats = std::sync::Arc::clone(engine.stats());
    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).unwrap();
    silent.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 16];
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without a word");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "{took:?}"
    );
    eventually("the timeout counted", || {
        stats.host.tls_handshake_timeouts.get() == 1
    });
    assert_eq!(stats.host.tls_open.get(), 0);
    stop_balanced(engine);
}

#[test]
fn tcp_tls_config_is_checked_and_an_open_port_is_warned_about() {
    let Some(pki) = pki() else { return };
    let check = |toml: &str| Config::from_toml(toml, "<inline>").unwrap().validate();
    // Half a pair, a client CA without TLS, a key of another certificate.
    let cert = pki.file("server.pem");
    let other_key = pki.file("client.key");
    for (toml, words) in [
        (
            "tls_cert = \"c.pem\"".to_owned(),
            vec!["tcp.tls_key", "give both"],
        ),
        (
            "tls_client_ca = \"ca.pem\"".to_owned(),
            vec!["tcp.tls_client_ca", "need TLS"],
        ),
        (
            format!("tls_cert = {cert:?}\ntls_key = {other_key:?}"),
            vec!["tcp.tls_key", "does not fit"],
        ),
    ] {
        let err = check(&format!("[tcp]\n{toml}\n"))
            .expect_err(&toml)
            .to_string();
        for w in words {
            assert!(err.contains(w), "{toml}: {w:?} not in {err:?}");
        }
    }
    // Beyond loopback without TLS: the loud warning; with TLS and no client CA: a milder one.
    let w = check("[tcp]\nlisten = \"0.0.0.0:0\"\n").unwrap().join("\n");
    assert!(
        w.contains("tcp.tls_cert is not set") && w.contains("ANYONE"),
        "{w}"
    );
    let key = pki.file("server.key");
    let w = check(&format!(
        "[tcp]\nlisten = \"0.0.0.0:0\"\ntls_cert = {cert:?}\ntls_key = {key:?}\n"
    ))
    .unwrap()
    .join("\n");
    assert!(
        w.contains("tcp.tls_client_ca") && !w.contains("clear text"),
        "{w}"
    );
    // Loopback: no warning about the TCP port.
    let w = check("[tcp]\nlisten = \"127.0.0.1:0\"\n")
        .unwrap()
        .join("\n");
    assert!(!w.contains("tcp.listen"), "{w}");
}

#[test]
fn the_per_address_limit_applies_to_tls_clients_by_their_own_address() {
    let Some(pki) = pki() else { return };
    let dir = TempDir::new("tcp-tls-per-ip");
    let mut cfg = config(&dir, &pki, false);
    cfg.tcp_limits.max_connections_per_ip = 1;
    let (engine, addr) = start(cfg);
    let stats = std::sync::Arc::clone(engine.stats());
    let first = Producer::connect_with(addr, options(), Some(tls(&pki, "ca.pem", None))).unwrap();
    // The handshake succeeds (the terminator does not count addresses); the ingest thread
    // then refuses the connection as 127.0.0.1's second, and the client sees it closed.
    let e = Producer::connect_with(addr, options(), Some(tls(&pki, "ca.pem", None)))
        .expect_err("a second connection from 127.0.0.1");
    assert!(e.to_string().contains("closed the connection"), "{e}");
    assert_eq!(stats.host.tcp_refused_per_ip.get(), 1);
    eventually("the refused session closed", || {
        stats.host.tls_open.get() == 1
    });
    drop(first);
    eventually("the first connection closed", || {
        stats.host.tcp_open.get() == 0
    });
    assert_eq!(publish(addr, tls(&pki, "ca.pem", None), 1, 10).unwrap(), 10);
    stop_balanced(engine);
}

/// Closes `s` with a reset (SO_LINGER 0), as a crashed client's kernel would.
fn reset(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a `linger` that lives for the call, its size given.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

#[test]
fn a_client_reset_mid_frame_closes_both_sides_and_loses_only_that_frame() {
    let Some(pki) = pki() else { return };
    let dir = TempDir::new("tcp-tls-reset");
    let (engine, addr) = start(config(&dir, &pki, false));
    let stats = std::sync::Arc::clone(engine.stats());
    let opts = ConnectOptions {
        timeout: WAIT,
        ..ConnectOptions::default()
    };
    let (mut conn, _) =
        Connection::connect_with(addr, &opts, Some(&tls(&pki, "ca.pem", None))).unwrap();
    let ok = Client::batch(1, &[EventHeader::new(1, 0, Priority::High, 0)], |_| {
        b"kept".to_vec()
    });
    conn.send(&ok).unwrap();
    assert_eq!(conn.wait_ack(1, WAIT).unwrap().0.stored, 1);
    // Half a frame, then a reset.
    let next = Client::batch(2, &[EventHeader::new(2, 0, Priority::High, 0)], |_| {
        b"lost".to_vec()
    });
    let before = stats.host.tcp_bytes_in.get();
    conn.send(&next[..next.len() / 2]).unwrap();
    // Taken in before the reset (a reset discards what the kernel has not handed over).
    eventually("the half frame read", || {
        stats.host.tcp_bytes_in.get() == before + (next.len() / 2) as u64
    });
    let plain = conn.stream().try_clone().unwrap();
    reset(&plain);
    drop(plain);
    drop(conn);
    eventually("the TLS session closed", || stats.host.tls_open.get() == 0);
    eventually("the engine's connection closed", || {
        stats.host.tcp_open.get() == 0
    });
    let stats = stop_balanced(engine);
    assert_eq!(stats.books().stored, 1);
    assert_eq!(stats.host.tcp_partial_frames_dropped.get(), 1);
}

/// TLS and `tcp.auth = "token"` together: the terminator knows nothing of tokens, the
/// HELLO's token travels through the socket pair and the ingest thread checks it as for a
/// plaintext client. A TLS producer without a token is refused (REJECT 29), one with a
/// wrong token too, and one with the right token is stored.
#[test]
fn a_token_is_checked_behind_tls() {
    use pinstream_host::config::{TcpAuth, TokenSection};
    use pinstream_host::gateway::hash_token;
    let Some(pki) = pki() else { return };
    let dir = TempDir::new("tcp-tls-token");
    let mut cfg = config(&dir, &pki, false);
    cfg.tcp_auth = TcpAuth::Token;
    cfg.http.tokens = vec![TokenSection {
        name: "tls-sensors".into(),
        sha256: hash_token("tok-tls"),
        topics: vec!["*".into()],
        rate: 0,
        burst: 0,
    }];
    let (engine, addr) = start(cfg);
    let stats = std::sync::Arc::clone(engine.stats());
    for token in [None, Some(&b"tok-wrong"[..])] {
        let options = ProducerOptions {
            token: token.map(<[u8]>::to_vec),
            reconnects: 0,
            ..options()
        };
        let Err(e) = Producer::connect_with(addr, options, Some(tls(&pki, "ca.pem", None))) else {
            panic!("refused without the right token");
        };
        assert!(e.to_string().contains("unauthenticated"), "{e}");
    }
    let options = ProducerOptions {
        token: Some(b"tok-tls".to_vec()),
        ..options()
    };
    let mut p = Producer::connect_with(addr, options, Some(tls(&pki, "ca.pem", None))).unwrap();
    for id in 1..=500u64 {
        let h = EventHeader::new(id, 0, Priority::High, 0);
        p.push(&h, format!("tls-token-{id}").as_bytes()).unwrap();
    }
    let t = p.flush().unwrap();
    assert_eq!((t.stored, t.total()), (500, 500), "{t:?}");
    drop(p);
    eventually("the refusals counted", || {
        stats.host.tcp_auth_unauthenticated.get() == 2
    });
    let stats = stop_balanced(engine);
    assert_eq!(stats.host.tcp_auth_unauthenticated.get(), 2);
    assert_eq!(stats.books().stored, 500);
}
