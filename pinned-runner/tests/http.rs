//! `pinstream run` with the HTTP gateway from a config file (issue 17): the real binary on
//! ephemeral loopback ports, `[http]` and `[[auth.tokens]]` read from TOML, requests over a
//! raw socket, SIGTERM, and the books printed at the end.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use pinstream_tests::TempDir;

mod common;
use common::{Runner, WAIT};

/// One request on a fresh connection; the status and the body.
fn post(addr: SocketAddr, auth: Option<&str>, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let auth = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "POST /v1/events HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

#[test]
fn run_serves_http_with_tokens_from_the_config_and_stops_with_balanced_books() {
    let dir = TempDir::new("runner-http");
    let hash = pinstream_host::gateway::hash_token("runner-secret");
    let mut runner = Runner::start(
        dir.path(),
        &format!(
            "[pipeline]\ntopics = [\"default\", \"audit\"]\n\
             [http]\nlisten = \"127.0.0.1:0\"\n\
             [[auth.tokens]]\nname = \"svc\"\nsha256 = \"{hash}\"\ntopics = [\"audit\"]\n"
        ),
    );
    let line = runner.wait_line("listening tcp=");
    let addr: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .expect("an http= address")
        .parse()
        .unwrap();
    runner.wait_line("http gateway: POST /v1/events, 1 token(s)");
    assert_eq!(post(addr, None, "{}").0, 401);
    assert_eq!(
        post(addr, Some("runner-secret"), "{\"topic\":\"default\"}").0,
        403
    );
    let (status, body) = post(
        addr,
        Some("runner-secret"),
        "[{\"topic\":\"audit\",\"payload\":\"a\"},{\"topic\":1,\"payload\":\"b\"}]",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"stored\":2"), "{body}");
    runner.signal(libc::SIGTERM);
    let line = runner.wait_line("stopped in");
    assert!(line.contains("2 events in, 2 stored"), "{line}");
    let status = runner.wait();
    assert!(status.success(), "{status}\n{}", runner.output());
}
