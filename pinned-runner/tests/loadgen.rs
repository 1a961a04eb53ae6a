//! `pinstream loadgen` against a real engine started in this process: JSON counts against
//! the engine's own counters, pacing, priority mix per lane, UDP, several connections, an
//! engine that does not acknowledge, and an address nobody listens on.

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pinstream_core::event::Lane;
use pinstream_core::reason::Reason;
use pinstream_host::engine::{Engine, EngineConfig, EngineHandle};
use pinstream_host::ingest::AckMode;
use pinstream_tests::TempDir;

/// Longest a loadgen run may take before the test kills it and fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// The JSON keys, in order.
const KEYS: [&str; 16] = [
    "system",
    "transport",
    "events",
    "seconds",
    "events_per_sec",
    "bytes_per_sec",
    "stored_per_sec",
    "stored",
    "duplicates",
    "dead_lettered",
    "rejected",
    "ack_p50_us",
    "ack_p90_us",
    "ack_p99_us",
    "ack_p999_us",
    "ack_max_us",
];

fn engine(dir: &TempDir, ack: AckMode) -> EngineHandle {
    let mut cfg = EngineConfig::local(dir.path());
    cfg.ack = ack;
    Engine::start(cfg).expect("start the engine")
}

/// Kills the child if the test fails while it runs.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `pinstream loadgen <args>` to its end (killed after [`DEADLINE`]).
fn loadgen(args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_pinstream"))
        .arg("loadgen")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pinstream");
    let mut guard = ChildGuard(Some(child));
    let child = guard.0.as_mut().expect("the child");
    // Read both pipes on threads so a chatty child never blocks on a full pipe.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for pinstream") {
            break s;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "pinstream loadgen {args:?} ran for more than {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    guard.0 = None;
    Output {
        status,
        stdout: out_t.join().expect("stdout reader"),
        stderr: err_t.join().expect("stderr reader"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs and requires success; returns the parsed JSON line.
fn loadgen_json(args: &[&str]) -> Json {
    let out = loadgen(args);
    assert!(
        out.status.success(),
        "loadgen {args:?} failed: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    Json::parse(&text(&out.stdout))
}

/// A flat JSON object of numbers, strings and nulls, parsed strictly enough for these tests.
struct Json(Vec<(String, String)>);

impl Json {
    fn parse(s: &str) -> Self {
        let line = s.trim();
        assert_eq!(s.lines().count(), 1, "one JSON line expected: {s:?}");
        let body = line
            .strip_prefix('{')
            .and_then(|b| b.strip_suffix('}'))
            .unwrap_or_else(|| panic!("not a JSON object: {line}"));
        let mut fields = Vec::new();
        for part in body.split(',') {
            let (k, v) = part
                .split_once(':')
                .unwrap_or_else(|| panic!("bad member {part:?} in {line}"));
            let k = k
                .strip_prefix('"')
                .and_then(|k| k.strip_suffix('"'))
                .unwrap_or_else(|| panic!("bad key {k:?} in {line}"));
            let v_ok = v == "null"
                || (v.starts_with('"') && v.ends_with('"') && v.len() >= 2)
                || v.parse::<f64>().is_ok_and(f64::is_finite);
            assert!(v_ok, "bad value {v:?} of {k} in {line}");
            fields.push((k.to_string(), v.to_string()));
        }
        let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, KEYS, "keys of {line}");
        Self(fields)
    }

    fn raw(&self, key: &str) -> &str {
        &self
            .0
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("no {key}"))
            .1
    }

    fn num(&self, key: &str) -> f64 {
        self.raw(key)
            .parse()
            .unwrap_or_else(|_| panic!("{key} is {}, not a number", self.raw(key)))
    }

    fn count(&self, key: &str) -> u64 {
        self.raw(key)
            .parse()
            .unwrap_or_else(|_| panic!("{key} is {}, not a count", self.raw(key)))
    }

    fn is_null(&self, key: &str) -> bool {
        self.raw(key) == "null"
    }
}

fn addr_of(a: Option<SocketAddr>) -> String {
    a.expect("the engine listens").to_string()
}

/// Waits for `cond` (the engine's counters move on its own threads).
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn tcp_json_counts_match_the_engine() {
    let dir = TempDir::new("loadgen-tcp");
    let engine = engine(&dir, AckMode::Durable);
    let addr = addr_of(engine.started.tcp);
    let j = loadgen_json(&["--addr", &addr, "--events", "20000", "--json"]);
    assert_eq!(j.raw("system"), "\"pinstream\"");
    assert_eq!(j.raw("transport"), "\"tcp\"");
    assert_eq!(j.count("events"), 20_000);
    // Flat out with 256 frames in flight: a TCP producer is slowed down (back-pressure),
    // never shed, so every event is stored, and the ACKs' counts are the engine's.
    let (stored, dead) = (j.count("stored"), j.count("dead_lettered"));
    assert_eq!((stored, dead), (20_000, 0));
    let secs = j.num("seconds");
    let per_sec = j.num("stored_per_sec");
    // `seconds` is printed to the microsecond: compare to a relative 1e-4.
    let want = stored as f64 / secs;
    assert!(
        (per_sec - want).abs() <= want * 1e-4,
        "stored_per_sec {per_sec} is stored / seconds ({want})"
    );
    assert_eq!(j.count("rejected"), 0);
    let stats = engine.stats();
    assert_eq!(stats.dispatch.ingested.get(), 20_000);
    eventually("the engine's stored count", || {
        stats.process.stored.get() == stored
    });
    let engine_dead: u64 = Reason::ALL
        .iter()
        .filter(|r| !r.is_rejection())
        .map(|&r| stats.dispatch.reason(r).get() + stats.process.reason(r).get())
        .sum();
    assert_eq!(engine_dead, dead);
    let secs = j.num("seconds");
    assert!(secs > 0.0);
    let rate = j.num("events_per_sec");
    assert!(
        (rate * secs - 20_000.0).abs() < 20.0,
        "{rate} events/s over {secs} s"
    );
    // 313 frames of up to 64 events of 100 bytes: 28 + 64 * 132 bytes per full frame.
    let bytes = j.num("bytes_per_sec") * secs;
    let expected = 312.0 * (28.0 + 64.0 * 132.0) + (28.0 + 32.0 * 132.0);
    assert!(
        (bytes - expected).abs() < expected * 0.001,
        "{bytes} vs {expected}"
    );
    let q: Vec<f64> = [
        "ack_p50_us",
        "ack_p90_us",
        "ack_p99_us",
        "ack_p999_us",
        "ack_max_us",
    ]
    .iter()
    .map(|k| j.num(k))
    .collect();
    assert!(q[0] > 0.0, "{q:?}");
    assert!(q.windows(2).all(|w| w[0] <= w[1]), "not increasing: {q:?}");
}

#[test]
fn text_summary_and_progress_lines() {
    let dir = TempDir::new("loadgen-text");
    let engine = engine(&dir, AckMode::Durable);
    let addr = addr_of(engine.started.tcp);
    let out = loadgen(&[
        "--addr",
        &addr,
        "--events",
        "3000",
        "--batch",
        "1",
        "--progress",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("events sent     3000 in 3000 frames"),
        "{stdout}"
    );
    assert!(stdout.contains("stored          3000"), "{stdout}");
    assert!(stdout.contains("ack latency us  p50 "), "{stdout}");
    // Not a terminal: one line per update, the last one complete.
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("100.0% 3000/3000 events"), "{stderr}");
    assert_eq!(engine.stats().process.stored.get(), 3000);
}

#[test]
fn rate_paces_a_timed_run() {
    let dir = TempDir::new("loadgen-rate");
    let engine = engine(&dir, AckMode::Durable);
    let addr = addr_of(engine.started.tcp);
    let j = loadgen_json(&[
        "--addr",
        &addr,
        "--rate",
        "20000",
        "--duration",
        "1",
        "--json",
    ]);
    let events = j.count("events");
    assert!(
        (14_000..=26_000).contains(&events),
        "{events} events at 20000/s for 1 s"
    );
    assert_eq!(j.count("stored"), events);
    // Paced, not flat out: the events were spread over about the second asked for.
    // The event count follows the schedule whatever the clock does; the duration shows the
    // pacing was real.
    let secs = j.num("seconds");
    assert!((0.9..5.0).contains(&secs), "{secs} s");
    // A quarter of the rate, a quarter of the events: the pacing follows --rate (flat out
    // would send far more).
    let slow = loadgen_json(&[
        "--addr",
        &addr,
        "--rate",
        "5000",
        "--duration",
        "1",
        "--json",
    ]);
    let slow_events = slow.count("events");
    let slow_secs = slow.num("seconds");
    assert!((0.9..5.0).contains(&slow_secs), "{slow_secs} s");
    assert!(
        (3_500..=6_500).contains(&slow_events),
        "{slow_events} events at 5000/s for 1 s"
    );
    eventually("both runs ingested", || {
        engine.stats().dispatch.ingested.get() == events + slow_events
    });
}

#[test]
fn priority_mix_lands_in_the_lanes_in_proportion() {
    let dir = TempDir::new("loadgen-mix");
    let engine = engine(&dir, AckMode::Durable);
    let addr = addr_of(engine.started.tcp);
    let j = loadgen_json(&[
        "--addr",
        &addr,
        "--events",
        "20000",
        "--priority",
        "critical:1,medium:2,low:1",
        // Few events in flight: the lanes stay far from the depths where the control plane
        // sheds, so every event reaches its lane.
        "--inflight",
        "8",
        "--json",
    ]);
    assert_eq!(j.count("events"), 20_000);
    let stats = engine.stats();
    // Whole cycles of 4 (critical, medium, low, medium): the proportions are exact.
    assert_eq!(stats.dispatch.queued(Lane::Realtime).get(), 5_000);
    assert_eq!(stats.dispatch.queued(Lane::Transactional).get(), 10_000);
    assert_eq!(stats.dispatch.queued(Lane::Batch).get(), 5_000);
    // Batch-lane events count as stored once their aggregate is.
    assert_eq!(j.count("stored"), 20_000);
}

#[test]
fn udp_fire_and_forget() {
    let dir = TempDir::new("loadgen-udp");
    let engine = engine(&dir, AckMode::Durable);
    let addr = addr_of(engine.started.udp);
    // Paced: UDP has no flow control, and a flood overflows the socket's buffer.
    let j = loadgen_json(&[
        "--udp", "--ack", "none", "--addr", &addr, "--events", "20000", "--rate", "20000", "--json",
    ]);
    assert_eq!(j.raw("transport"), "\"udp\"");
    assert_eq!(j.count("events"), 20_000);
    let secs = j.num("seconds");
    assert!((0.7..5.0).contains(&secs), "{secs} s");
    for key in [
        "stored_per_sec",
        "stored",
        "dead_lettered",
        "rejected",
        "ack_p50_us",
        "ack_max_us",
    ] {
        assert!(j.is_null(key), "{key} should be null over UDP");
    }
    // 313 datagrams of one BATCH frame: 312 of 64 events, the last of 32. Loopback may
    // drop some when the engine falls behind (UDP: nobody knows), but every datagram that
    // arrives is whole and valid.
    let stats = engine.stats();
    // A loaded machine may lose many (the socket buffer holds a few dozen datagrams).
    eventually("datagrams received", || {
        stats.host.udp_datagrams.get() >= 50
    });
    std::thread::sleep(Duration::from_millis(200));
    let datagrams = stats.host.udp_datagrams.get();
    assert!(datagrams <= 313, "{datagrams} datagrams");
    assert_eq!(stats.host.udp_malformed.get(), 0);
    let ingested = stats.dispatch.ingested.get();
    assert!(
        ingested == datagrams * 64 || ingested + 32 == datagrams * 64,
        "{ingested} events in {datagrams} datagrams"
    );
}

#[test]
fn connections_split_the_events_with_unique_ids() {
    let dir = TempDir::new("loadgen-conns");
    let engine = engine(&dir, AckMode::Durable);
    let addr = addr_of(engine.started.tcp);
    let j = loadgen_json(&[
        "--addr",
        &addr,
        "--events",
        "20000",
        "--connections",
        "3",
        "--inflight",
        "8",
        "--json",
    ]);
    assert_eq!(j.count("events"), 20_000);
    // Medium events are deduplicated by id: a repeat across connections would be
    // dead-lettered, so all stored means every id was unique.
    assert_eq!(j.count("stored"), 20_000);
    assert_eq!(j.count("dead_lettered"), 0);
    let stats = engine.stats();
    assert_eq!(stats.host.tcp_accepted.get(), 3);
    assert_eq!(stats.dispatch.ingested.get(), 20_000);
}

#[test]
fn a_server_that_does_not_acknowledge() {
    let dir = TempDir::new("loadgen-noack");
    let engine = engine(&dir, AckMode::None);
    let addr = addr_of(engine.started.tcp);
    // Waiting for ACKs that never come: a clear timeout.
    let out = loadgen(&[
        "--addr",
        &addr,
        "--events",
        "1000",
        "--ack-timeout",
        "0.5",
        "--json",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // The engine closes the connection once loadgen's half close leaves it nothing to
    // do, or the timeout fires first: either way the message says no frame was acknowledged.
    assert!(
        stderr.contains(&format!(
            "the server at {addr} closed the connection after acknowledging 0 of the 16 frames"
        )) || stderr.contains(&format!("the server at {addr} did not acknowledge frame 1")),
        "{stderr}"
    );
    assert!(stderr.contains("--ack none"), "{stderr}");
    assert!(out.stdout.is_empty());
    // Fire and forget works; the counts are unknown.
    let j = loadgen_json(&[
        "--addr", &addr, "--events", "5000", "--ack", "none", "--json",
    ]);
    assert_eq!(j.count("events"), 5000);
    assert!(j.is_null("stored") && j.is_null("ack_p99_us"));
    let stats = engine.stats();
    eventually("5000 more events stored", || {
        stats.process.stored.get() >= 5000
    });
}

/// Dead letters are a failure of the run unless asked for: an event to a topic the engine
/// does not know is dead-lettered, and loadgen exits 1 saying so.
#[test]
fn dead_letters_fail_the_run_unless_allowed() {
    let dir = TempDir::new("loadgen-dead");
    let engine = engine(&dir, AckMode::Durable);
    let addr = addr_of(engine.started.tcp);
    let topics = EngineConfig::local(dir.path()).topics.len();
    let many = (topics + 1).to_string();
    let args = [
        "--addr", &addr, "--events", "1000", "--topics", &many, "--json",
    ];
    let out = loadgen(&args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("dead-lettered"), "{stderr}");
    assert!(stderr.contains("--allow-dead-letters"), "{stderr}");
    // The report is still printed, with the counts.
    let j = Json::parse(&text(&out.stdout));
    assert!(j.count("dead_lettered") > 0);
    assert_eq!(j.count("stored") + j.count("dead_lettered"), 1000);
    let j = loadgen_json(&[
        "--addr",
        &addr,
        "--events",
        "1000",
        "--topics",
        &many,
        "--id-base",
        "5000",
        "--json",
        "--allow-dead-letters",
    ]);
    assert!(j.count("dead_lettered") > 0);
}

/// Running the same events twice within the dedup window: the second run's medium events
/// are duplicates (acknowledged as such, not stored again, not dead letters), and loadgen
/// reports them apart and exits 0.
#[test]
fn a_repeated_run_is_acknowledged_as_duplicates() {
    let dir = TempDir::new("loadgen-dup");
    let engine = engine(&dir, AckMode::Durable);
    let addr = addr_of(engine.started.tcp);
    let args = [
        "--addr",
        &addr,
        "--events",
        "5000",
        "--id-base",
        "777",
        "--json",
    ];
    let first = loadgen_json(&args);
    assert_eq!(
        (first.count("stored"), first.count("duplicates")),
        (5000, 0)
    );
    let second = loadgen_json(&args);
    assert_eq!(
        (
            second.count("stored"),
            second.count("duplicates"),
            second.count("dead_lettered")
        ),
        (0, 5000, 0)
    );
    assert_eq!(
        second.num("stored_per_sec"),
        0.0,
        "duplicates are not throughput"
    );
    let stats = engine.stats();
    eventually("5000 stored once", || stats.process.stored.get() == 5000);
}

#[test]
fn an_unreachable_address_is_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let out = loadgen(&["--addr", &addr, "--events", "10"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot connect to {addr} over TCP")),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_flags_exit_2_and_help_shows_defaults() {
    let out = loadgen(&["--udp", "--ack", "wait"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--ack wait needs TCP"));
    let out = loadgen(&["--priority", "urgent:1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown priority \"urgent\""));
    let help = text(&loadgen(&["--help"]).stdout);
    for d in [
        "127.0.0.1:7070",
        "[default: 1000000]",
        "[default: 0]",
        "[default: 100]",
        "[default: 64]",
        "[default: medium]",
        "[default: 1]",
        "[default: 256]",
        "[default: wait, none with --udp]",
        "[default: 10]",
    ] {
        assert!(help.contains(d), "--help lacks {d}:\n{help}");
    }
}
