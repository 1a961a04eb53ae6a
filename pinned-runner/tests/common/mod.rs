//! A running `pinstream run` for the integration tests that start the real binary: a
//! config in a temp dir, ephemeral loopback ports read from its `listening` line, killed on
//! drop.
// Each test crate that includes this module uses a different part of it.
#![allow(dead_code)]

use std::io::Write;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for a line or an exit.
pub const WAIT: Duration = Duration::from_secs(30);

/// A running `pinstream run`, killed on drop (a failed test leaves no process behind).
pub struct Runner {
    /// The `pinstream run` process.
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// The producer port.
    pub tcp: SocketAddr,
    /// The consumer listener.
    pub consumers: SocketAddr,
    /// The admin (health, metrics) listener.
    pub admin: SocketAddr,
}

impl Runner {
    /// Starts `pinstream run --config <dir>/config.toml` with `extra` TOML appended to a base
    /// that listens on ephemeral loopback ports and stores in `dir/data` (its `[engine]`,
    /// `[tcp]`, `[storage]` and `[pipeline]` lines go into those tables; any other table, such as
    /// `[http]` or `[[auth.tokens]]`, is appended as it is).
    pub fn start(dir: &Path, extra: &str) -> Self {
        Self::start_with(dir, extra, |_| {})
    }

    /// [`start`](Self::start), the command adjusted by `adjust` before it is spawned.
    pub fn start_with(dir: &Path, extra: &str, adjust: impl FnOnce(&mut Command)) -> Self {
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[engine]\noverprovisioned = true\n{extra_engine}\n[tcp]\nlisten = \"127.0.0.1:0\"\n{extra_tcp}\n\
                 [udp]\nlisten = \"off\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[consumers]\nlisten = \"127.0.0.1:0\"\n\
                 [storage]\ndir = \"{}\"\n{extra_storage}\n[pipeline]\n{extra_pipeline}\n{rest}",
                dir.join("data").display(),
                extra_engine = section(extra, "engine"),
                extra_tcp = section(extra, "tcp"),
                extra_storage = section(extra, "storage"),
                extra_pipeline = section(extra, "pipeline"),
                rest = other_tables(extra),
            ),
        )
        .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_pinstream"));
        command
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        adjust(&mut command);
        let mut child = command.spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let unset: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut runner = Self {
            child,
            lines,
            tcp: unset,
            consumers: unset,
            admin: unset,
        };
        let line = runner.wait_line("listening tcp=");
        let addr = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
                .parse()
                .unwrap()
        };
        runner.tcp = addr("tcp=");
        runner.consumers = addr("consumers=");
        runner.admin = addr("admin=");
        runner
    }

    /// The first output line containing `needle` (waits for it).
    pub fn wait_line(&mut self, needle: &str) -> String {
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
                panic!(
                    "pinstream exited ({status}) before printing {needle:?}:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < until,
                "no {needle:?} in\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// Waits for the exit status (panics after `WAIT`).
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let until = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < until, "still running:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tables of `extra` other than `[engine]`, `[tcp]`, `[storage]` and `[pipeline]`, headers
/// included, for tables the base config does not have.
pub fn other_tables(extra: &str) -> String {
    let mut out = String::new();
    let mut keep = false;
    for line in extra.lines() {
        if let Some(h) = line.strip_prefix('[') {
            keep = !["engine", "tcp", "storage", "pipeline"].contains(&h.trim_end_matches(']'));
        }
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The lines of `extra` under `[name]` (a tiny helper for the tests' config snippets).
pub fn section(extra: &str, name: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in extra.lines() {
        if let Some(h) = line.strip_prefix('[') {
            inside = h.trim_end_matches(']') == name;
        } else if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Runs `pinstream ARGS` with `stdin` as its input and waits for it: its status and output.
pub fn pinstream(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pinstream"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}
