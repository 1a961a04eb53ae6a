//! `pinstream run` with the gRPC gateway from a config file and `pinstream loadgen
//! --transport grpc` against it (issue 17): the real binaries on ephemeral loopback ports,
//! `[grpc]` and `[[auth.tokens]]` read from TOML, the stream and the unary mode, SIGTERM, and
//! the books printed at the end.

use std::net::SocketAddr;
use std::process::Command;

use pinstream_tests::TempDir;

mod common;
use common::Runner;

fn loadgen(addr: SocketAddr, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pinstream"))
        .args([
            "loadgen",
            "--transport",
            "grpc",
            "--addr",
            &addr.to_string(),
        ])
        .args([
            "--token",
            "runner-secret",
            "--payload",
            "100",
            "--batch",
            "100",
        ])
        .args(["--connections", "2", "--json"])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn loadgen_over_grpc_streams_and_unary_calls_are_stored_and_the_books_balance() {
    let dir = TempDir::new("runner-grpc");
    let hash = pinstream_host::gateway::hash_token("runner-secret");
    let mut runner = Runner::start(
        dir.path(),
        &format!(
            "[grpc]\nlisten = \"127.0.0.1:0\"\n\
             [[auth.tokens]]\nname = \"svc\"\nsha256 = \"{hash}\"\ntopics = [\"*\"]\n"
        ),
    );
    let line = runner.wait_line("listening tcp=");
    assert!(line.contains(" http=off "), "{line}");
    let addr: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("grpc="))
        .expect("a grpc= address")
        .parse()
        .unwrap();
    runner.wait_line("grpc gateway: pinstream.v1.Ingest");
    let stream = loadgen(addr, &["--events", "20000", "--id-base", "1"]);
    assert!(stream.contains("\"stored\":20000"), "{stream}");
    let unary = loadgen(
        addr,
        &["--events", "2000", "--id-base", "100000", "--grpc-unary"],
    );
    assert!(unary.contains("\"stored\":2000"), "{unary}");
    // Without the token: refused, and the command says so.
    let out = Command::new(env!("CARGO_BIN_EXE_pinstream"))
        .args([
            "loadgen",
            "--transport",
            "grpc",
            "--addr",
            &addr.to_string(),
        ])
        .args(["--events", "100", "--grpc-unary"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nauthenticated") || err.contains("token"),
        "{err}"
    );
    runner.signal(libc::SIGTERM);
    let line = runner.wait_line("stopped in");
    assert!(line.contains("22000 events in, 22000 stored"), "{line}");
    let status = runner.wait();
    assert!(status.success(), "{status}\n{}", runner.output());
}
