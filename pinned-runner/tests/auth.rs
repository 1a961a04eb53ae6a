//! `pinstream run` with `tcp.auth = "token"` from a config file (issue 17 item 4): the real
//! binary on ephemeral loopback ports, then `pinstream publish` and `pinstream loadgen` with
//! and without `--token`, SIGTERM, and the books printed at the end.

use pinstream_tests::TempDir;

mod common;
use common::{Runner, pinstream};

#[test]
fn publish_and_loadgen_need_the_token_when_the_config_asks_for_it() {
    let dir = TempDir::new("runner-tcp-auth");
    let hash = pinstream_host::gateway::hash_token("cli-secret");
    // The token from `auth.tokens_file`, apart from the config (inline tokens are the other
    // tests' way).
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!("[[tokens]]\nname = \"cli\"\nsha256 = \"{hash}\"\ntopics = [\"default\"]\n"),
    )
    .unwrap();
    let mut runner = Runner::start(
        dir.path(),
        &format!(
            "[tcp]\nauth = \"token\"\n[auth]\ntokens_file = {:?}\n",
            tokens.display().to_string()
        ),
    );
    runner.wait_line("tcp auth: token (1 token(s)");
    let addr = runner.tcp.to_string();
    // Without the token: the HELLO is refused, publish says why and fails.
    let out = pinstream(&["publish", "--addr", &addr], "{\"payload\": \"a\"}\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("unauthenticated"), "{stderr}");
    // With it: stored.
    let out = pinstream(
        &["publish", "--addr", &addr, "--token", "cli-secret"],
        "{\"payload\": \"a\"}\n{\"payload\": \"b\"}\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("stored 2,"), "{stdout}");
    // loadgen over TCP with the same --token it takes for HTTP.
    let out = pinstream(
        &[
            "loadgen",
            "--addr",
            &addr,
            "--token",
            "cli-secret",
            "--events",
            "5000",
            "--json",
        ],
        "",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"stored\":5000"), "{stdout}");
    let out = pinstream(&["loadgen", "--addr", &addr, "--events", "10"], "");
    assert!(
        !out.status.success(),
        "loadgen without the token is refused"
    );
    runner.signal(libc::SIGTERM);
    let line = runner.wait_line("stopped in");
    assert!(line.contains("5002 events in, 5002 stored"), "{line}");
    let status = runner.wait();
    assert!(status.success(), "{status}\n{}", runner.output());
}
