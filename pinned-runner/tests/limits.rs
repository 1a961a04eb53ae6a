//! `pinstream run` against clients and environments that try its limits: a soft
//! `RLIMIT_NOFILE` below what the config needs, running out of descriptors while serving,
//! `tcp.max_connections` beyond what the build can honour, a client trickling one frame
//! forever, one address taking every slot, and the connection-buffer bound printed at
//! start-up. The real binary on ephemeral loopback ports, stopped even when a test fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pinstream_core::event::{EventHeader, Priority};
use pinstream_tests::TempDir;
use pinstream_tests::client::Client;

const WAIT: Duration = Duration::from_secs(30);

/// A running `pinstream run`, killed on drop.
struct Runner {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    tcp: SocketAddr,
    admin: SocketAddr,
}

/// The config every test starts from: ephemeral loopback ports, `tcp` lines under `[tcp]`.
/// This process's hard `RLIMIT_NOFILE` (what a child may raise its soft limit to without
/// privilege).
fn hard_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes the rlimit we own and pass by pointer.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert_eq!(rc, 0);
    lim.rlim_max
}

fn config(dir: &Path, tcp: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[engine]\noverprovisioned = true\n[tcp]\nlisten = \"127.0.0.1:0\"\n{tcp}\n\
             [udp]\nlisten = \"off\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[consumers]\nlisten = \"127.0.0.1:0\"\n\
             [storage]\ndir = \"{}\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    path
}

/// `pinstream run --config <config>`, with `RLIMIT_NOFILE` set to `nofile` (soft, hard)
/// before it runs when given.
fn spawn(config: &Path, nofile: Option<(u64, u64)>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pinstream"));
    cmd.args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((soft, hard)) = nofile {
        // SAFETY: the closure runs in the child between fork and exec and only calls
        // setrlimit, which is async-signal-safe, on a live local struct.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    cmd.spawn().unwrap()
}

impl Runner {
    fn start(dir: &Path, tcp: &str, nofile: Option<(u64, u64)>) -> Self {
        let mut child = spawn(&config(dir, tcp), nofile);
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
        let unset: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut runner = Self {
            child,
            lines,
            tcp: unset,
            admin: unset,
        };
        let line = runner.wait_line("listening tcp=");
        let addr = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap()
                .parse()
                .unwrap()
        };
        runner.tcp = addr("tcp=");
        runner.admin = addr("admin=");
        runner
    }

    /// The first output line containing `needle` (waits for it).
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

    fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The value of the metric `name` (unlabelled) from `GET /metrics`.
    fn metric(&self, name: &str) -> u64 {
        let mut s = TcpStream::connect(self.admin).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    /// Waits until `metric(name) >= at_least`; returns it.
    fn wait_metric(&self, name: &str, at_least: u64) -> u64 {
        let until = Instant::now() + WAIT;
        loop {
            let v = self.metric(name);
            if v >= at_least || Instant::now() > until {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Utime + stime of the engine's ingest thread, in clock ticks.
    fn ingest_cpu_ticks(&self) -> u64 {
        let tasks = format!("/proc/{}/task", self.child.id());
        for task in std::fs::read_dir(&tasks).unwrap().map_while(Result::ok) {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() == "pinstream-inges" {
                let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
                // Fields after the command's closing parenthesis: state is field 3, utime
                // and stime are fields 14 and 15.
                let rest = &stat[stat.rfind(')').unwrap() + 2..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                return f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
            }
        }
        panic!("no ingest thread in {tasks}");
    }

    /// The process's `RLIMIT_NOFILE` (soft, hard), from `/proc/<pid>/limits`.
    fn nofile(&self) -> (u64, u64) {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.child.id())).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        let f: Vec<&str> = line.split_whitespace().collect();
        (f[3].parse().unwrap(), f[4].parse().unwrap())
    }

    /// Sets the process's soft `RLIMIT_NOFILE` (the hard one kept).
    fn set_soft_nofile(&self, soft: u64) {
        let (_, hard) = self.nofile();
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: prlimit on our own child's pid with a live `rlimit` to read and no old
        // value asked for.
        let rc = unsafe {
            libc::prlimit(
                self.child.id() as libc::pid_t,
                libc::RLIMIT_NOFILE,
                &new,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    }

    fn open_fds(&self) -> u64 {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count() as u64
    }

    fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0);
        let until = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{status}:\n{}", self.output());
                return;
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

/// Runs `pinstream run --config <config>` to its exit (killed after `WAIT`).
fn run_to_exit(config: &Path, nofile: Option<(u64, u64)>) -> std::process::Output {
    let mut child = spawn(config, nofile);
    let until = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pinstream run did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn frame(seq: u64, n: u64) -> Vec<u8> {
    let events: Vec<_> = (0..n)
        .map(|i| EventHeader::new(seq * 1000 + i, 0, Priority::High, 0))
        .collect();
    Client::batch(seq, &events, |_| vec![7; 100])
}

/// Whether the server closed `s` (EOF or reset) within `timeout`.
fn closed_within(s: &mut TcpStream, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut scratch = [0u8; 4096];
    while Instant::now() < until {
        match s.read(&mut scratch) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn max_connections_beyond_the_build_is_a_config_error_naming_the_line() {
    let dir = TempDir::new("limits-maxconn");
    let out = run_to_exit(&config(dir.path(), "max_connections = 4096"), None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("tcp.max_connections = 4096"), "{err}");
    assert!(err.contains("4095"), "the largest value allowed: {err}");
    // `[engine]`, overprovisioned, `[tcp]`, listen, then the key: line 5.
    assert!(err.contains("line 5"), "{err}");
    // The largest value the check allows starts (where the machine's hard descriptor limit
    // allows the ~4 300 it needs).
    if hard_nofile() >= 5_000 {
        let ok = Runner::start(dir.path(), "max_connections = 4095", None);
        ok.stop();
    } else {
        eprintln!("hard RLIMIT_NOFILE below 5000: not starting max_connections = 4095");
    }
}

#[test]
fn a_low_soft_fd_limit_is_raised_to_what_the_config_needs() {
    let dir = TempDir::new("limits-nofile-raise");
    // Raising the hard limit needs privilege: stay within this process's.
    let hard = hard_nofile().min(16_384);
    if hard < 2_048 {
        eprintln!("hard RLIMIT_NOFILE {hard}: too low to show the soft limit raised");
        return;
    }
    let runner = Runner::start(dir.path(), "max_connections = 1024", Some((256, hard)));
    let (soft, hard_now) = runner.nofile();
    assert_eq!(hard_now, hard, "the hard limit is left alone");
    // 1024 connections need more than 1024 descriptors.
    assert!(soft > 1024, "soft limit {soft}:\n{}", runner.output());
    let line = runner
        .lines
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.starts_with("file descriptors:"))
        .cloned()
        .unwrap_or_else(|| panic!("no file descriptor line in\n{}", runner.output()));
    assert!(
        line.contains(&format!("raised from 256 to {soft}")),
        "{line}"
    );
    runner.stop();
}

#[test]
fn a_hard_fd_limit_below_what_the_config_needs_refuses_to_start() {
    let dir = TempDir::new("limits-nofile-refuse");
    let out = run_to_exit(
        &config(dir.path(), "max_connections = 1024"),
        Some((256, 512)),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("512"), "the hard limit named: {err}");
    assert!(err.contains("tcp.max_connections"), "{err}");
}

#[test]
fn running_out_of_fds_backs_off_without_spinning_and_counts_the_errors() {
    let dir = TempDir::new("limits-emfile");
    let runner = Runner::start(dir.path(), "max_connections = 64", None);
    let (soft, _) = runner.nofile();
    // Leave the engine no descriptor to accept with.
    runner.set_soft_nofile(runner.open_fds());
    let clients: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(runner.tcp).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let cpu0 = runner.ingest_cpu_ticks();
    std::thread::sleep(Duration::from_secs(2));
    let cpu = runner.ingest_cpu_ticks() - cpu0;
    let wall = t0.elapsed();
    runner.set_soft_nofile(soft);
    // Clock ticks are 1/100 s: a spinning thread shows about 100 per second.
    let ticks_per_sec = 100.0;
    assert!(
        (cpu as f64) < 0.5 * wall.as_secs_f64() * ticks_per_sec,
        "the ingest thread used {cpu} ticks in {wall:?} while out of descriptors"
    );
    let errors = runner.wait_metric("pinstream_tcp_accept_errors_total", 1);
    assert!(errors >= 1, "accept errors not counted");
    assert!(
        errors < 1000,
        "{errors} accept errors: it retried without backing off"
    );
    let refused = runner.metric("pinstream_tcp_connections_refused_total");
    assert!(refused < 1000, "{refused} refusals for 20 connections");
    // With descriptors back, the waiting connections are taken and a new client is served.
    let open = runner.wait_metric("pinstream_tcp_connections_open", 20);
    assert!(open >= 20, "{open} open");
    let mut client = Client::connect(runner.tcp).unwrap();
    client.hello().unwrap();
    client.send(&frame(1, 5)).unwrap();
    let (ack, _) = client.wait_ack(1, WAIT).unwrap();
    assert_eq!(ack.stored, 5);
    drop(clients);
    runner.stop();
}

#[test]
fn a_client_trickling_a_frame_is_closed_by_the_frame_deadline() {
    let dir = TempDir::new("limits-trickle");
    let runner = Runner::start(
        dir.path(),
        "frame_timeout_ms = 1000\nidle_timeout_ms = 3000",
        None,
    );
    // Whole frames sent slowly, one every 400 ms for longer than the deadline: served.
    let mut steady = Client::connect(runner.tcp).unwrap();
    steady.hello().unwrap();
    for seq in 1..=5 {
        steady.send(&frame(seq, 1)).unwrap();
        let (ack, _) = steady.wait_ack(seq, WAIT).unwrap();
        assert_eq!(ack.stored, seq);
        std::thread::sleep(Duration::from_millis(400));
    }
    // One frame, a byte every 300 ms (each byte well inside the idle timeout): closed
    // once the frame is older than the deadline, long before it is complete.
    let bytes = frame(1, 1);
    let mut trickle = TcpStream::connect(runner.tcp).unwrap();
    let t0 = Instant::now();
    let mut closed = false;
    for b in &bytes {
        if trickle.write_all(std::slice::from_ref(b)).is_err()
            || closed_within(&mut trickle, Duration::from_millis(300))
        {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "a frame trickled for {:?} was not cut off",
        t0.elapsed()
    );
    assert_eq!(
        runner.wait_metric(
            "pinstream_tcp_connections_closed_total{reason=\"frame_timeout\"}",
            1
        ),
        1
    );
    assert_eq!(
        runner.metric("pinstream_tcp_connections_closed_total{reason=\"idle\"}"),
        0
    );
    // The steady client is still served.
    steady.send(&frame(6, 1)).unwrap();
    assert_eq!(steady.wait_ack(6, WAIT).unwrap().0.stored, 6);
    runner.stop();
}

#[test]
fn connections_past_the_per_address_limit_are_refused_and_counted() {
    let dir = TempDir::new("limits-per-ip");
    let runner = Runner::start(
        dir.path(),
        "max_connections = 16\nmax_connections_per_ip = 3",
        None,
    );
    let mut held: Vec<Client> = (0..3)
        .map(|_| {
            let mut c = Client::connect(runner.tcp).unwrap();
            c.hello().unwrap();
            c
        })
        .collect();
    let mut fourth = TcpStream::connect(runner.tcp).unwrap();
    assert!(
        closed_within(&mut fourth, Duration::from_secs(10)),
        "the 4th connection from 127.0.0.1 was kept"
    );
    assert_eq!(
        runner.wait_metric("pinstream_tcp_connections_refused_per_ip_total", 1),
        1
    );
    assert_eq!(runner.metric("pinstream_tcp_connections_refused_total"), 1);
    // One closes: its address may connect again.
    held.pop();
    std::thread::sleep(Duration::from_millis(200));
    let until = Instant::now() + WAIT;
    loop {
        let mut c = Client::connect(runner.tcp).unwrap();
        if c.hello().is_ok() {
            break;
        }
        // The server may not have seen the close yet.
        assert!(Instant::now() < until, "never let in again");
        std::thread::sleep(Duration::from_millis(100));
    }
    for c in &mut held {
        c.send(&frame(1, 1)).unwrap();
        assert_eq!(c.wait_ack(1, WAIT).unwrap().0.stored, 1);
    }
    runner.stop();
}

#[test]
fn the_connection_buffer_bound_is_printed_at_start_up() {
    let dir = TempDir::new("limits-buffers");
    let mut runner = Runner::start(
        dir.path(),
        "max_connections = 8\nrecv_buffer = 131072\nsend_buffer = 8192\ninflight_frames = 16",
        None,
    );
    let line = runner.wait_line("connection buffers:");
    // "connection buffers: up to TOTAL bytes (8 x PER: ...)": the total is the count times
    // each connection's buffers, which hold at least its two byte buffers.
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let (total, n, per) = (nums[0], nums[1], nums[2]);
    assert_eq!(n, 8, "{line}");
    assert!(per >= 131_072 + 8192, "{line}");
    assert_eq!(total, n * per, "{line}");
    runner.stop();
}
