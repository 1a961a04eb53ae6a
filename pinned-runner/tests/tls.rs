//! `pinstream run` with TLS on the binary TCP port from a config file (issue 17, item 3): the
//! real binary on ephemeral loopback ports with `tcp.tls_cert`, `tcp.tls_key` and
//! `tcp.tls_client_ca`, a test CA made by `openssl` (skipped with a message when it is not
//! installed); `pinstream publish --tls` and `pinstream loadgen --tls` against it, a plaintext
//! `publish` refused, SIGTERM, and the books printed at the end.

use pinstream_tests::TempDir;
use pinstream_tests::pki::pki;

mod common;
use common::{Runner, pinstream};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn publish_and_loadgen_over_tls_with_a_client_certificate() {
    let Some(pki) = pki() else { return };
    let dir = TempDir::new("runner-tcp-tls");
    let file = |n: &str| pki.file(n).display().to_string();
    let mut runner = Runner::start(
        dir.path(),
        &format!(
            "[tcp]\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntls_client_ca = \"{}\"\n",
            file("server.pem"),
            file("server.key"),
            file("ca.pem"),
        ),
    );
    let addr = runner.tcp.to_string();
    let (ca, cert, key) = (file("ca.pem"), file("client.pem"), file("client.key"));
    let tls = [
        "--tls",
        "--cacert",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "--timeout",
        "10",
    ];
    let lines = "{\"payload\":\"a\"}\n{\"payload\":\"b\",\"priority\":\"high\"}\n";
    // publish over TLS with the client certificate: both stored.
    let mut args = vec!["publish", "--addr", &addr, "--json"];
    args.extend_from_slice(&tls);
    let out = pinstream(&args, lines);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("\"stored\":2"),
        "{}",
        text(&out.stdout)
    );
    // In clear text, or without the client certificate: refused, exit 1.
    for args in [
        vec!["publish", "--addr", &addr, "--timeout", "3"],
        vec![
            "publish",
            "--addr",
            &addr,
            "--tls",
            "--cacert",
            &ca,
            "--timeout",
            "3",
        ],
    ] {
        let out = pinstream(&args, lines);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // loadgen over TLS: every event stored.
    let mut args = vec![
        "loadgen",
        "--addr",
        &addr,
        "--events",
        "20000",
        "--connections",
        "2",
        "--quiet",
        "--json",
    ];
    args.extend_from_slice(&tls[..7]);
    let out = pinstream(&args, "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\"stored\":20000"),
        "{}",
        text(&out.stdout)
    );
    runner.signal(libc::SIGTERM);
    let line = runner.wait_line("stopped in");
    assert!(line.contains("20002 events in, 20002 stored"), "{line}");
    let status = runner.wait();
    assert!(status.success(), "{status}\n{}", runner.output());
}
