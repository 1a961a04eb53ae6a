//! `--log-format json`: every line `pinstream run` writes is a JSON object (start-up,
//! warnings, the status line, the stop), and a failure is one too; `text` keeps the lines a
//! terminal has always shown.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pinstream_tests::TempDir;

fn config(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.0.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[engine]\nplacement = \"unpinned\"\n[tcp]\nlisten = \"127.0.0.1:0\"\n[udp]\nlisten = \"off\"\n\
             [admin]\nlisten = \"off\"\n[consumers]\nlisten = \"off\"\n[storage]\ndir = \"{}\"\n",
            dir.0.join("data").display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn json_logs_are_one_object_per_line_from_start_to_stop() {
    let dir = TempDir::new("log-json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pinstream"))
        .args([
            "--log-format",
            "json",
            "run",
            "--status-every",
            "1",
            "--config",
        ])
        .arg(config(&dir))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    let until = Instant::now() + Duration::from_secs(30);
    let mut signalled = false;
    for line in stdout.lines().map_while(Result::ok) {
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        assert!(v["message"].is_string(), "{line}");
        // After the first status line, SIGTERM: the stop is logged too.
        if v["target"] == "pinstream::status" && !signalled {
            // SAFETY: kill(2) on our own child's pid.
            assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
            signalled = true;
        }
        lines.push(v);
        assert!(Instant::now() < until, "no status line within 30 s");
    }
    assert!(child.wait().unwrap().success());
    let messages: Vec<&str> = lines
        .iter()
        .map(|v| v["message"].as_str().unwrap())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("listening tcp=127.0.0.1:")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.starts_with("stopped in ")),
        "{messages:?}"
    );
    assert!(signalled, "no status line: {messages:?}");
}

#[test]
fn a_failure_is_a_json_error_line_and_text_keeps_the_old_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_pinstream"))
        .args([
            "--log-format",
            "json",
            "run",
            "--config",
            "/nonexistent/pinstream.toml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let line = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["level"], "ERROR");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("cannot read config file"),
        "{line}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_pinstream"))
        .args(["run", "--config", "/nonexistent/pinstream.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("pinstream: cannot read config file"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}
