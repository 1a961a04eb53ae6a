//! The ingest thread stays allocation-free with TLS on the binary port: the TLS terminator
//! (its own thread, not watched: rustls allocates as it likes) hands it plaintext socket
//! pairs, and the steady state over them, ingest -> lanes -> storage, allocates nothing on
//! the engine's threads; nor does taking a handed-over connection into a slot that has
//! served one before. Its own binary: the counting allocator's watched count is
//! process-wide.

use std::time::{Duration, Instant};

use pinstream_client::{ConnectOptions, Connection, TlsFiles as ClientTls};
use pinstream_core::event::{EventHeader, Priority};
use pinstream_host::engine::{Engine, EngineConfig};
use pinstream_host::gateway::TlsFiles;
use pinstream_host::tlsport::TcpTlsSettings;
use pinstream_tests::client::Client;
use pinstream_tests::pki::pki;
use pinstream_tests::{CountingAllocator, TempDir};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

fn watch() {
    ALLOC.watch_this_thread();
}

#[test]
fn steady_state_over_tls_allocates_nothing_on_engine_threads() {
    let Some(pki) = pki() else { return };
    let dir = TempDir::new("zero-alloc-tls");
    let mut cfg = EngineConfig::local(dir.path());
    cfg.udp = None;
    cfg.thread_hook = Some(watch);
    cfg.tcp_tls = Some(TcpTlsSettings {
        files: TlsFiles {
            cert: pki.file("server.pem"),
            key: pki.file("server.key"),
            client_ca: None,
        },
        handshake_timeout: Duration::from_secs(5),
        cpu: None,
    });
    let engine = Engine::start(cfg).unwrap();
    let addr = engine.started.tcp.unwrap();
    let tls = ClientTls {
        ca: pki.file("ca.pem"),
        client: None,
        server_name: None,
    }
    .options()
    .unwrap();
    let connect = || {
        let options = ConnectOptions {
            timeout: Duration::from_secs(20),
            hello: Some(pinstream_core::wire::Hello::client(1, 1, 65_536)),
            token: None,
        };
        Connection::connect_with(addr, &options, Some(&tls))
            .unwrap()
            .0
    };
    let mut seq = 0u64;
    let mut round = |conn: &mut Connection, n: u64| {
        for _ in 0..n {
            seq += 1;
            let events: Vec<_> = (0..32)
                .map(|i| EventHeader::new(seq * 32 + i, 0, Priority::ALL[(i % 5) as usize], 0))
                .collect();
            conn.send(&Client::batch(seq, &events, |_| vec![1; 100]))
                .unwrap();
        }
        conn.wait_ack(seq, Duration::from_secs(20)).unwrap();
    };
    // Warm-up: two connections give two slots their buffers, then close (their slots are
    // free, with buffers); the steady connection takes one, a late one the other.
    let mut first = connect();
    let mut second = connect();
    round(&mut first, 100);
    round(&mut second, 100);
    for mut c in [first, second] {
        c.finish_sending().unwrap();
        assert!(c.closed_by_server(Duration::from_secs(20)));
    }
    let mut conn = connect();
    round(&mut conn, 200);
    std::thread::sleep(Duration::from_millis(50));
    round(&mut conn, 50);

    let before = ALLOC.watched_count();
    ALLOC.arm_watched();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1500) {
        round(&mut conn, 50);
    }
    // A connection handed over into a slot that served one before, used and closed.
    let mut late = connect();
    round(&mut late, 20);
    late.finish_sending().unwrap();
    assert!(late.closed_by_server(Duration::from_secs(20)));
    round(&mut conn, 50);
    ALLOC.disarm_watched();
    let allocations = ALLOC.watched_count() - before;
    let stored = engine.stats().process.stored.get();
    assert_eq!(engine.stats().host.tls_handshakes.get(), 4);
    engine.stop().unwrap();
    assert!(
        stored > 10_000,
        "the engine did real work: {stored} events stored"
    );
    assert_eq!(
        allocations, 0,
        "allocations on the engine threads in steady state over TLS"
    );
}
