//! `pinstream run` with the HTTP gateway from a config file (issue 17): the real binary on
//! ephemeral loopback ports, `[http]` and `[[auth.tokens]]` read from TOML, requests over a
//! raw socket, SIGTERM, and the books printed at the end.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pinstream_tests::TempDir;

const WAIT: Duration = Duration::from_secs(30);

/// A running `pinstream run`, killed on drop (a failed test leaves no process behind).
struct Runner {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Runner {
    fn start(config: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pinstream"))
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Self { child, lines }
    }

    fn wait_line(&mut self, needle: &str) -> String {
        let until = Instant::now() + WAIT;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("pinstream exited ({status}):\n{}", self.output());
            }
            assert!(
                Instant::now() < until,
                "no {needle:?} in\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    let config = dir.path().join("config.toml");
    let hash = pinstream_host::gateway::hash_token("runner-secret");
    std::fs::write(
        &config,
        format!(
            "[engine]\noverprovisioned = true\n[tcp]\nlisten = \"127.0.0.1:0\"\n[udp]\nlisten = \"off\"\n\
             [admin]\nlisten = \"off\"\n[consumers]\nlisten = \"off\"\n[storage]\ndir = \"{}\"\n\
             [pipeline]\ntopics = [\"default\", \"audit\"]\n\
             [http]\nlisten = \"127.0.0.1:0\"\n\
             [[auth.tokens]]\nname = \"svc\"\nsha256 = \"{hash}\"\ntopics = [\"audit\"]\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut runner = Runner::start(&config);
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
    let pid = runner.child.id() as i32;
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let line = runner.wait_line("stopped in");
    assert!(line.contains("2 events in, 2 stored"), "{line}");
    let until = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = runner.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "still running");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}\n{}", runner.output());
}
