//! `pinstream log …` run as a real binary against logs written with the host's storage API.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use pinstream_core::event::{EventHeader, Lane, Origin, Priority};
use pinstream_core::lanes::DeadLetter;
use pinstream_core::process::{Aggregate, StoredEvent};
use pinstream_core::reason::Reason;
use pinstream_host::engine::{Engine, EngineConfig};
use pinstream_host::storage::record::{self, RecordBody};
use pinstream_host::storage::{Log, LogConfig, LogReader};
use pinstream_tests::TempDir;
use pinstream_tests::client::Client;

const BIN: &str = env!("CARGO_BIN_EXE_pinstream");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run the pinstream binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn open_log(dir: &Path, segment_bytes: u64) -> Log {
    let mut cfg = LogConfig::new(dir);
    cfg.segment_bytes = segment_bytes;
    Log::open(cfg).expect("open a log").0
}

fn append_event(log: &mut Log, lane: Lane, header: EventHeader, origin: Origin, payload: &[u8]) {
    let mut buf = [0u8; 512];
    let ev = StoredEvent {
        lane,
        header: &header,
        origin,
        received: 55,
        payload,
    };
    let n = record::encode_event(&mut buf, &ev).expect("encode an event");
    log.append(record::KIND_EVENT, &buf[..n])
        .expect("append an event");
}

/// A data dir with every record kind:
/// - realtime: id 7 (high, value -3, "hot"), id 8 (critical, binary payload);
/// - transactional: id 20 (medium, topic 0), id 21 (medium, topic 5: unknown to a default engine);
/// - batch: id 40 (low, "bulk");
/// - dead-letter: id 30, lane_full;
/// - aggregates: one aggregate of topic 2.
fn build_data_dir(dir: &Path) {
    let mut rt = open_log(&dir.join("realtime"), 64 << 20);
    append_event(
        &mut rt,
        Lane::Realtime,
        EventHeader::new(7, 0, Priority::High, 100).with_value(-3),
        Origin::new(1, 9),
        b"hot",
    );
    append_event(
        &mut rt,
        Lane::Realtime,
        EventHeader::new(8, 0, Priority::Critical, 101),
        Origin::new(1, 10),
        &[0, 1, 2, 0xff],
    );
    rt.close().expect("close realtime");

    let mut tx = open_log(&dir.join("transactional"), 64 << 20);
    append_event(
        &mut tx,
        Lane::Transactional,
        EventHeader::new(20, 0, Priority::Medium, 200),
        Origin::new(2, 1),
        b"order-1",
    );
    append_event(
        &mut tx,
        Lane::Transactional,
        EventHeader::new(21, 5, Priority::Medium, 201),
        Origin::new(2, 2),
        b"order-2",
    );
    tx.close().expect("close transactional");

    let mut batch = open_log(&dir.join("batch"), 64 << 20);
    append_batch_event(&mut batch);
    batch.close().expect("close batch");
    let mut buf = [0u8; 256];

    let mut dl = open_log(&dir.join("dead-letter"), 64 << 20);
    let n = record::encode_dead_letter(
        &mut buf,
        &DeadLetter {
            header: EventHeader::new(30, 1, Priority::Medium, 300),
            origin: Origin::new(3, 4),
            reason: Reason::LaneFull,
            tick: 77,
            events: 1,
        },
    )
    .expect("encode a dead letter");
    dl.append(record::KIND_DEAD_LETTER, &buf[..n])
        .expect("append a dead letter");
    dl.close().expect("close dead-letter");

    let mut aggregates = open_log(&dir.join("aggregates"), 64 << 20);
    append_aggregate(&mut aggregates);
    aggregates.close().expect("close aggregates");
}

/// The batch-lane event of [`build_data_dir`]: id 40, low, "bulk".
fn append_batch_event(log: &mut Log) {
    append_event(
        log,
        Lane::Batch,
        EventHeader::new(40, 0, Priority::Low, 400),
        Origin::new(4, 1),
        b"bulk",
    );
}

/// The aggregate of [`build_data_dir`]: topic 2, window [100, 200).
fn append_aggregate(log: &mut Log) {
    let mut buf = [0u8; 256];
    let n = record::encode_aggregate(
        &mut buf,
        &Aggregate {
            topic: 2,
            start: 100,
            end: 200,
            count: 5,
            bytes: 50,
            values: 3,
            min: -1,
            max: 9,
            sum: 12,
        },
    )
    .expect("encode an aggregate");
    log.append(record::KIND_AGGREGATE, &buf[..n])
        .expect("append an aggregate");
}

fn first_segment(dir: &Path, log: &str) -> PathBuf {
    dir.join(log).join("00000000000000000000.log")
}

#[test]
fn inspect_prints_every_kind_as_text_and_json() {
    let tmp = TempDir::new("logtool-inspect");
    build_data_dir(tmp.path());
    let dir = tmp.path().to_str().expect("utf-8 temp path");

    let out = run(&["log", "inspect", "--dir", dir]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 7, "{stdout}");
    assert_eq!(
        lines[0],
        "realtime 0 event id=7 topic=0 priority=high lane=realtime source=1 seq=9 received=55 \
         timestamp=100 value=-3 payload=3B \"hot\""
    );
    assert_eq!(
        lines[1],
        "realtime 1 event id=8 topic=0 priority=critical lane=realtime source=1 seq=10 \
         received=55 timestamp=101 value=none payload=4B 0x000102ff"
    );
    assert!(
        lines[2].starts_with("transactional 0 event id=20 topic=0 priority=medium"),
        "{stdout}"
    );
    assert!(lines[3].starts_with("transactional 1 event id=21 topic=5"));
    assert!(
        lines[4].starts_with("batch 0 event id=40 topic=0 priority=low lane=batch"),
        "{stdout}"
    );
    assert_eq!(
        lines[5],
        "dead-letter 0 dead-letter reason=lane_full(32) id=30 topic=1 priority=medium source=3 \
         seq=4 tick=77 events=1 timestamp=300 value=none"
    );
    assert_eq!(
        lines[6],
        "aggregates 0 aggregate topic=2 window=[100,200) count=5 bytes=50 values=3 min=-1 max=9 \
         sum=12"
    );

    let out = run(&["log", "--dir", dir, "inspect", "--json"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 7, "{stdout}");
    assert_eq!(
        lines[0],
        r#"{"log":"realtime","offset":0,"kind":"event","id":7,"topic":0,"priority":"high","timestamp":100,"value":-3,"lane":"realtime","source":1,"seq":9,"index":0,"producer":0,"epoch":0,"resolved":0,"received":55,"payload_len":3,"payload_hex":"686f74","payload_utf8":"hot"}"#
    );
    assert!(
        lines[1].contains(r#""value":null"#)
            && lines[1].contains(r#""payload_hex":"000102ff","payload_utf8":null"#)
    );
    assert!(
        lines[4].starts_with(r#"{"log":"batch","offset":0,"kind":"event","id":40,"#),
        "{stdout}"
    );
    assert_eq!(
        lines[5],
        r#"{"log":"dead-letter","offset":0,"kind":"dead-letter","reason":"lane_full","reason_code":32,"id":30,"topic":1,"priority":"medium","timestamp":300,"value":null,"source":3,"seq":4,"index":0,"producer":0,"epoch":0,"resolved":0,"tick":77,"events":1}"#
    );
    assert_eq!(
        lines[6],
        r#"{"log":"aggregates","offset":0,"kind":"aggregate","topic":2,"window_start":100,"window_end":200,"count":5,"bytes":50,"values":3,"min":-1,"max":9,"sum":12}"#
    );

    // The aggregates log on its own.
    let out = run(&["log", "inspect", "--dir", dir, "--log", "aggregates"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with("aggregates 0 aggregate topic=2 "),
        "{stdout}"
    );

    // A range of one log.
    let out = run(&[
        "log",
        "inspect",
        "--dir",
        dir,
        "--log",
        "transactional",
        "--from",
        "1",
        "--limit",
        "1",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with("transactional 1 event id=21 "),
        "{stdout}"
    );

    // A data dir that does not exist is a usage error that names it.
    let missing = tmp.path().join("nope");
    let out = run(&["log", "inspect", "--dir", missing.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("nope"), "{}", text(&out.stderr));
}

#[test]
fn verify_is_clean_then_reports_a_flipped_byte_without_changing_anything() {
    let tmp = TempDir::new("logtool-verify");
    build_data_dir(tmp.path());
    let dir = tmp.path().to_str().expect("utf-8 temp path");

    let out = run(&["log", "verify", "--dir", dir]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains(
            "realtime: 1 segment(s), 2 record(s), 145 byte(s), offsets 0..=1, 0 quarantined \
             segment(s): clean"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("dead-letter: 1 segment(s), 1 record(s)"),
        "{stdout}"
    );
    assert_eq!(stdout.matches(": clean").count(), 5, "{stdout}");
    assert!(
        stdout.contains("aggregates: 1 segment(s), 1 record(s)"),
        "{stdout}"
    );

    // A quarantined segment left by an earlier recovery is reported, not counted as damage.
    let quarantined = tmp
        .path()
        .join("batch")
        .join("00000000000000000000.log.quarantined");
    std::fs::write(&quarantined, b"old damaged bytes").expect("write a quarantined file");
    let out = run(&["log", "verify", "--dir", dir, "--log", "batch"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("1 quarantined segment(s): clean"),
        "{stdout}"
    );
    assert!(
        stdout.contains("00000000000000000000.log.quarantined"),
        "{stdout}"
    );

    // Flip one byte in the payload of realtime's first record (header 20 + fixed 49 bytes).
    let seg = first_segment(tmp.path(), "realtime");
    let mut bytes = std::fs::read(&seg).expect("read the segment");
    bytes[20 + 49] ^= 0x01;
    std::fs::write(&seg, &bytes).expect("write the flipped byte");
    let out = run(&["log", "verify", "--dir", dir]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    // It reads on past the damage: the second record is counted.
    assert!(
        stdout.contains("realtime: 1 segment(s), 1 record(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "DAMAGED {} at byte 0: CRC32C mismatch",
            seg.display()
        )),
        "{stdout}"
    );
    assert!(
        stderr.contains("00000000000000000000.log at byte 0"),
        "{stderr}"
    );
    // The other logs are still clean, and verify changed nothing.
    assert!(
        stdout.contains("transactional: 1 segment(s), 2 record(s)"),
        "{stdout}"
    );
    assert_eq!(std::fs::read(&seg).expect("read again"), bytes);

    // Inspect says the record is damaged, prints the rest, and exits 1.
    let out = run(&["log", "inspect", "--dir", dir, "--log", "realtime"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("CRC32C mismatch"));

    // A torn tail: half a record after the last whole one.
    let seg = first_segment(tmp.path(), "transactional");
    let mut bytes = std::fs::read(&seg).expect("read the segment");
    let whole = bytes.len();
    bytes.extend_from_within(..30);
    std::fs::write(&seg, &bytes).expect("append half a record");
    let out = run(&["log", "verify", "--dir", dir, "--log", "transactional"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "{} at byte {whole}: 30 byte(s) after the last whole record",
            seg.display()
        )),
        "{stdout}"
    );
}

/// A realtime log of 60 events in segments of about 2 KB; returns its segment files.
fn build_segmented_log(dir: &Path) -> Vec<PathBuf> {
    let mut rt = open_log(&dir.join("realtime"), 2000);
    for id in 0..60u64 {
        append_event(
            &mut rt,
            Lane::Realtime,
            EventHeader::new(id, 0, Priority::High, 100 + id),
            Origin::new(1, id),
            b"payload",
        );
    }
    rt.close().expect("close realtime");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir.join("realtime"))
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 3, "{segs:?}");
    segs
}

/// `(offset, start)` of each record of a segment (framing only).
fn record_starts(bytes: &[u8]) -> Vec<(u64, usize)> {
    let mut out = Vec::new();
    let mut p = 0;
    while p + 20 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[p..p + 4].try_into().expect("4 bytes")) as usize;
        let off = u64::from_le_bytes(bytes[p + 8..p + 16].try_into().expect("8 bytes"));
        out.push((off, p));
        p += 20 + len;
    }
    out
}

#[test]
fn verify_lists_every_damaged_region_and_missing_offsets_as_text_and_json() {
    let tmp = TempDir::new("logtool-verify-all");
    let segs = build_segmented_log(tmp.path());
    let dir = tmp.path().to_str().expect("utf-8 temp path");
    // Two damaged records in the first segment, and the middle segment deleted.
    let mut bytes = std::fs::read(&segs[0]).expect("read");
    let starts = record_starts(&bytes);
    assert!(starts.len() >= 8);
    for k in [2, 5] {
        bytes[starts[k].1 + 30] ^= 0x10;
    }
    std::fs::write(&segs[0], &bytes).expect("write");
    let gone = record_starts(&std::fs::read(&segs[1]).expect("read"));
    let (first_gone, next) = (
        gone[0].0,
        record_starts(&std::fs::read(&segs[2]).expect("read"))[0].0,
    );
    std::fs::remove_file(&segs[1]).expect("delete the middle segment");

    let out = run(&["log", "verify", "--dir", dir, "--log", "realtime"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for k in [2, 5] {
        assert!(
            stdout.contains(&format!(
                "DAMAGED {} at byte {}: CRC32C mismatch ({} byte(s) up to byte {}, offset {} lost)",
                segs[0].display(),
                starts[k].1,
                starts[k + 1].1 - starts[k].1,
                starts[k + 1].1,
                starts[k].0
            )),
            "record {k}: {stdout}"
        );
    }
    assert!(
        stdout.contains(&format!(
            "MISSING offsets {first_gone}..={} ({} record(s))",
            next - 1,
            next - first_gone
        )),
        "{stdout}"
    );
    assert!(stdout.contains("DAMAGED (3 problem(s))"), "{stdout}");
    // Every record that is there is counted, after the damage too.
    let present = 60 - 2 - (next - first_gone);
    assert!(stdout.contains(&format!("{present} record(s)")), "{stdout}");

    let out = run(&["log", "verify", "--dir", dir, "--log", "realtime", "--json"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let line = stdout.trim_end();
    assert!(line.starts_with("{\"log\":\"realtime\","), "{line}");
    assert!(line.contains("\"status\":\"damaged\""), "{line}");
    assert!(line.contains(&format!("\"records\":{present},")), "{line}");
    assert_eq!(line.matches("\"kind\":\"damaged\"").count(), 2, "{line}");
    assert!(
        line.contains(&format!(
            "\"kind\":\"missing\",\"file\":\"{}\",\"position\":null,\"end\":null,\
             \"first_offset\":{first_gone},\"end_offset\":{next},",
            segs[0].display()
        )),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "\"kind\":\"damaged\",\"file\":\"{}\",\"position\":{},\"end\":{},\
             \"first_offset\":{},\"end_offset\":{},\"why\":\"CRC32C mismatch\"",
            segs[0].display(),
            starts[5].1,
            starts[6].1,
            starts[5].0,
            starts[5].0 + 1
        )),
        "{line}"
    );
}

#[test]
fn verify_reports_an_emptied_or_unreadable_segment_by_name() {
    let tmp = TempDir::new("logtool-verify-unreadable");
    let segs = build_segmented_log(tmp.path());
    let dir = tmp.path().to_str().expect("utf-8 temp path");
    std::fs::write(&segs[1], b"").expect("empty the middle segment");
    let out = run(&["log", "verify", "--dir", dir, "--log", "realtime"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("MISSING offsets"), "{stdout}");
    // A directory where a segment should be: it cannot be read (chmod 000 does not stop
    // root); the other segments are still read.
    std::fs::remove_file(&segs[1]).expect("remove");
    std::fs::create_dir(&segs[1]).expect("a directory in its place");
    let out = run(&["log", "verify", "--dir", dir, "--log", "realtime"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("DAMAGED {}: cannot be read", segs[1].display())),
        "{stdout}"
    );
}

/// Kills the child when the test ends, even on failure.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lines_of(stream: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next line containing `needle`, within 10 s.
fn wait_line(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line with {needle:?}: {e}"),
        }
    }
}

fn spawn_tail(
    dir: &str,
    extra: &[&str],
) -> (ChildGuard, mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .args(["log", "tail", "--dir", dir, "--log", "realtime"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tail");
    let out = lines_of(child.stdout.take().expect("stdout"));
    let err = lines_of(child.stderr.take().expect("stderr"));
    (ChildGuard(child), out, err)
}

fn interrupt(mut guard: ChildGuard) -> std::process::ExitStatus {
    let pid = libc::pid_t::try_from(guard.0.id()).expect("pid fits");
    // SAFETY: kill(2) with a pid this test spawned and has not reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = guard.0.try_wait().expect("wait for tail") {
            return status;
        }
        assert!(Instant::now() < until, "tail did not stop on SIGINT");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn tail_follows_appends_across_segment_rolls_until_sigint() {
    let tmp = TempDir::new("logtool-tail");
    let dir = tmp.path().to_str().expect("utf-8 temp path");
    // Segments of ~150 bytes: every second record rolls to a new segment.
    let mut log = open_log(&tmp.path().join("realtime"), 150);
    let h = |id| EventHeader::new(id, 0, Priority::High, id);
    append_event(&mut log, Lane::Realtime, h(1), Origin::new(1, 1), b"first");
    log.flush().expect("flush");

    let (tail, out, _err) = spawn_tail(dir, &[]);
    wait_line(&out, "realtime 0 event id=1 ");
    for id in 2..=4 {
        append_event(
            &mut log,
            Lane::Realtime,
            h(id),
            Origin::new(1, id),
            b"later",
        );
        log.flush().expect("flush");
        let line = wait_line(&out, &format!("event id={id} "));
        assert!(line.starts_with(&format!("realtime {} ", id - 1)), "{line}");
    }
    let segments = std::fs::read_dir(tmp.path().join("realtime"))
        .expect("list")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
        })
        .count();
    assert!(segments >= 2, "the log rolled ({segments} segments)");
    let status = interrupt(tail);
    assert!(status.success(), "SIGINT exits 0: {status:?}");

    // --from-end: the records already there are not printed, new ones are.
    let (tail, out, err) = spawn_tail(dir, &["--from-end", "--json"]);
    wait_line(&err, "following realtime");
    append_event(&mut log, Lane::Realtime, h(5), Origin::new(1, 5), b"new");
    log.flush().expect("flush");
    let first = out
        .recv_timeout(Duration::from_secs(10))
        .expect("a line for the new record");
    assert!(
        first.starts_with(r#"{"log":"realtime","offset":4,"kind":"event","id":5,"#),
        "{first}"
    );
    assert!(interrupt(tail).success());
    log.close().expect("close");
}

#[test]
fn replay_sends_stored_events_to_a_running_engine() {
    let src = TempDir::new("logtool-replay-src");
    build_data_dir(src.path());
    let dst = TempDir::new("logtool-replay-dst");
    let engine = Engine::start(EngineConfig::local(dst.path())).expect("start an engine");
    let addr = engine.started.tcp.expect("TCP address").to_string();
    let dir = src.path().to_str().expect("utf-8 temp path");

    // Everything: 2 realtime + 2 transactional events; id 21's topic 5 is not registered
    // on the engine (it has topic 0 only), so it is dead-lettered there.
    let out = run(&["log", "replay", "--dir", dir, "--to", &addr]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("realtime: 2 event(s), offsets 0..=1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("transactional: 2 event(s), offsets 0..=1"),
        "{stdout}"
    );
    assert!(stdout.contains("sent 4 event(s) in 1 frame(s)"), "{stdout}");
    assert!(
        stdout.contains("acknowledged there: 3 stored, 1 dead-lettered, 0 rejected"),
        "{stdout}"
    );

    // A range of one log, one event per frame: realtime offset 1 only.
    let out = run(&[
        "log",
        "replay",
        "--dir",
        dir,
        "--to",
        &addr,
        "--log",
        "realtime",
        "--from",
        "1",
        "--to-offset",
        "2",
        "--batch",
        "1",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("acknowledged there: 1 stored, 0 dead-lettered"),
        "{stdout}"
    );

    // The batch log's events are replayed when it is named.
    let out = run(&[
        "log", "replay", "--dir", dir, "--to", &addr, "--log", "batch",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("batch: 1 event(s), offsets 0..=0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("acknowledged there: 1 stored, 0 dead-lettered"),
        "{stdout}"
    );

    // Aggregates and dead letters are not replayable.
    for log in ["aggregates", "dead-letter"] {
        let out = run(&["log", "replay", "--dir", dir, "--to", &addr, "--log", log]);
        assert_eq!(out.status.code(), Some(2), "{log}");
    }

    engine.stop().expect("stop the engine");
    let read = |log: &str| -> Vec<(u64, Vec<u8>, Option<i64>)> {
        let mut r = LogReader::open(&dst.path().join(log)).expect("open the engine's log");
        let mut v = Vec::new();
        while let Some(rec) = r.next_record() {
            let rec = rec.expect("valid record");
            match record::decode(rec.kind, &rec.body).expect("decodes") {
                RecordBody::Event(e) => v.push((e.header.id, e.payload.to_vec(), e.header.value())),
                RecordBody::DeadLetter(d) => {
                    assert_eq!(d.reason, Reason::UnknownTopic);
                    v.push((d.header.id, Vec::new(), None));
                }
                RecordBody::Aggregate(a) => panic!("unexpected aggregate {a:?}"),
            }
        }
        v
    };
    assert_eq!(
        read("realtime"),
        [
            (7, b"hot".to_vec(), Some(-3)),
            (8, vec![0, 1, 2, 0xff], None),
            (8, vec![0, 1, 2, 0xff], None)
        ]
    );
    assert_eq!(read("transactional"), [(20, b"order-1".to_vec(), None)]);
    assert_eq!(read("dead-letter"), [(21, Vec::new(), None)]);
}

/// A data directory written before the aggregates had their own log (issue 15, item 3): its
/// batch log holds the batch lane's events and aggregates side by side, and there is no
/// aggregates log. It still inspects, verifies and replays (the aggregates skipped), and an
/// engine still starts on it, leaving the old aggregates where they are.
#[test]
fn an_old_batch_log_with_aggregates_still_reads_and_opens() {
    let src = TempDir::new("logtool-old-batch");
    let mut batch = open_log(&src.path().join("batch"), 64 << 20);
    append_batch_event(&mut batch);
    append_aggregate(&mut batch);
    batch.close().expect("close batch");
    let dir = src.path().to_str().expect("utf-8 temp path");

    let out = run(&["log", "inspect", "--dir", dir]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("batch 0 event id=40 "), "{stdout}");
    assert!(
        lines[1].starts_with("batch 1 aggregate topic=2 "),
        "{stdout}"
    );
    let out = run(&["log", "verify", "--dir", dir, "--log", "batch"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    // Named, the missing aggregates log is a usage error; under "all" it is skipped.
    let out = run(&["log", "inspect", "--dir", dir, "--log", "aggregates"]);
    assert_eq!(out.status.code(), Some(2));

    let dst = TempDir::new("logtool-old-batch-dst");
    let engine = Engine::start(EngineConfig::local(dst.path())).expect("start an engine");
    let addr = engine.started.tcp.expect("TCP address").to_string();
    let out = run(&[
        "log", "replay", "--dir", dir, "--to", &addr, "--log", "batch",
    ]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("batch: 1 event(s), offsets 0..=0"),
        "{stdout}"
    );
    assert!(stdout.contains("acknowledged there: 1 stored"), "{stdout}");
    assert!(
        stderr.contains("the record at offset 1 is a aggregate, not an event"),
        "{stderr}"
    );
    engine.stop().expect("stop the engine");

    // An engine starts on the old data directory (recovery, dedup and session rebuild read
    // the old batch log) and creates the aggregates log beside it.
    let engine = Engine::start(EngineConfig::local(src.path())).expect("start on old data");
    engine.stop().expect("stop the engine");
    let out = run(&["log", "inspect", "--dir", dir, "--log", "batch"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("batch 1 aggregate topic=2 "), "{stdout}");
    assert!(src.path().join("aggregates").is_dir());
}

#[test]
fn replay_of_many_frames_keeps_a_window_and_every_event_arrives() {
    const EVENTS: u64 = 5_000;
    let src = TempDir::new("logtool-replay-bulk-src");
    // Small segments: the replay reads across many of them.
    let mut log = open_log(&src.path().join("realtime"), 64 << 10);
    for id in 0..EVENTS {
        let payload = [(id % 251) as u8; 100];
        append_event(
            &mut log,
            Lane::Realtime,
            EventHeader::new(1_000 + id, 0, Priority::Critical, id),
            Origin::new(1, id),
            &payload,
        );
    }
    log.close().expect("close");
    let dst = TempDir::new("logtool-replay-bulk-dst");
    let engine = Engine::start(EngineConfig::local(dst.path())).expect("start an engine");
    let addr = engine.started.tcp.expect("TCP address").to_string();

    let dir = src.path().to_str().expect("utf-8 temp path");
    let out = run(&["log", "replay", "--dir", dir, "--to", &addr]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    // 5000 events in frames of 64: 79 frames, more than the 64 kept in flight.
    assert!(
        stdout.contains("sent 5000 event(s) in 79 frame(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("acknowledged there: 5000 stored, 0 dead-lettered, 0 rejected"),
        "{stdout}"
    );
    engine.stop().expect("stop the engine");

    let mut r = LogReader::open(&dst.path().join("realtime")).expect("open the engine's log");
    let mut ids = Vec::new();
    while let Some(rec) = r.next_record() {
        let rec = rec.expect("valid record");
        if let RecordBody::Event(e) = record::decode(rec.kind, &rec.body).expect("decodes") {
            assert_eq!(e.payload, [((e.header.id - 1_000) % 251) as u8; 100]);
            ids.push(e.header.id);
        }
    }
    assert_eq!(ids, (1_000..1_000 + EVENTS).collect::<Vec<_>>());
}

/// Every file below `dir` with its bytes, sorted by path.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("list") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read");
                out.push((path, bytes));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn repair_re_appends_the_intact_records_of_a_quarantined_segment() {
    let tmp = TempDir::new("logtool-repair");
    let data = tmp.path();
    let dir = data.to_str().expect("utf-8 temp path");
    // Ten events of one size in one segment: offsets 0..=9, ids 100..=109.
    let realtime = data.join("realtime");
    let mut log = open_log(&realtime, 64 << 20);
    for i in 0..10u64 {
        append_event(
            &mut log,
            Lane::Realtime,
            EventHeader::new(100 + i, 0, Priority::High, i),
            Origin::new(1, i + 1),
            b"payload-of-ten",
        );
    }
    log.close().expect("close");
    let seg = first_segment(data, "realtime");
    let mut bytes = std::fs::read(&seg).expect("read the segment");
    let size = bytes.len() / 10;
    // Damage record 4 in the middle (one payload byte), and drop the checkpoint so recovery
    // scans the segment (as after a crash before a checkpoint covered it).
    let (damaged, next) = (4 * size, 5 * size);
    bytes[damaged + size - 3] ^= 0x40;
    std::fs::write(&seg, &bytes).expect("write the damage");
    std::fs::remove_file(realtime.join("checkpoint")).expect("remove the checkpoint");

    // The engine's recovery quarantines it and points at the repair.
    let engine = Engine::start(EngineConfig::local(data)).expect("start an engine");
    let report = &engine.started.recovery[0];
    assert_eq!(report.quarantined.len(), 1, "{report}");
    assert_eq!(report.quarantined[0].intact_records_after, 5, "{report}");
    assert!(
        report.to_string().contains("`pinstream log repair`"),
        "{report}"
    );
    // While it runs, repair (dry or not) is refused with exit 3, naming its pid.
    for extra in [&[][..], &["--dry-run"][..]] {
        let mut args = vec!["log", "repair", "--dir", dir];
        args.extend_from_slice(extra);
        let out = run(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("pid {}", std::process::id())),
            "{stderr}"
        );
        assert!(stderr.contains(dir), "{stderr}");
    }
    engine.stop().expect("stop the engine");

    // Before: offsets 0..=3 only; the rest is in the quarantined file.
    let quarantined = realtime.join("00000000000000000000.log.quarantined");
    assert!(quarantined.is_file());
    let out = run(&["log", "inspect", "--dir", dir, "--log", "realtime"]);
    assert_eq!(
        text(&out.stdout).lines().count(),
        4,
        "{}",
        text(&out.stdout)
    );

    // A dry run says what it would do and changes nothing.
    let before = snapshot(data);
    let out = run(&["log", "repair", "--dir", dir, "--dry-run"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains(&format!(
            "realtime: {}: damaged at byte {damaged} (CRC32C mismatch); would recover 5 intact \
             record(s) (old offsets 5..=9); would skip bytes {damaged}..{next} ({size} bytes) \
             (dry run: nothing changed)",
            quarantined.display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("dry run: 5 record(s) would be recovered"),
        "{stdout}"
    );
    assert_eq!(snapshot(data), before, "a dry run changes nothing");

    // The repair: new offsets after every offset seen (10..), content unchanged, file kept.
    let out = run(&["log", "repair", "--dir", dir]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let repaired = realtime.join("00000000000000000000.log.quarantined.repaired");
    assert!(
        stdout.contains(&format!(
            "realtime: {}: damaged at byte {damaged} (CRC32C mismatch); 5 intact record(s) (old \
             offsets 5..=9) recovered as offsets 10..=14; skipped bytes {damaged}..{next} \
             ({size} bytes); kept as {}",
            quarantined.display(),
            repaired.display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("transactional: no quarantined segment"),
        "{stdout}"
    );
    assert!(
        stdout.contains("repair done: 5 record(s) recovered"),
        "{stdout}"
    );
    assert!(!quarantined.exists());
    assert_eq!(std::fs::read(&repaired).expect("kept"), bytes);

    // inspect shows the recovered records under their new offsets, content unchanged.
    let out = run(&["log", "inspect", "--dir", dir, "--log", "realtime"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let seen: Vec<(String, String)> = stdout
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[1].to_owned(), w[3].to_owned())
        })
        .collect();
    let want: Vec<(String, String)> = [0, 1, 2, 3, 10, 11, 12, 13, 14]
        .iter()
        .zip([100, 101, 102, 103, 105, 106, 107, 108, 109])
        .map(|(o, id)| (o.to_string(), format!("id={id}")))
        .collect();
    assert_eq!(seen, want, "{stdout}");
    assert!(
        stdout.contains(
            "realtime 10 event id=105 topic=0 priority=high lane=realtime source=1 seq=6"
        ),
        "{stdout}"
    );

    // verify: clean, nine records, the repaired file reported and kept.
    let out = run(&["log", "verify", "--dir", dir, "--log", "realtime"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("9 record(s)"), "{stdout}");
    assert!(
        stdout.contains("0 quarantined segment(s) (1 repaired): clean"),
        "{stdout}"
    );

    // Again: nothing left to do, nothing changed.
    let before = snapshot(data);
    let out = run(&["log", "repair", "--dir", dir, "--log", "realtime"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("repaired earlier; kept, nothing to do"),
        "{stdout}"
    );
    assert!(
        stdout.contains("repair done: 0 record(s) recovered"),
        "{stdout}"
    );
    let after = snapshot(data);
    let logs_only = |s: &[(PathBuf, Vec<u8>)]| -> Vec<(PathBuf, Vec<u8>)> {
        s.iter()
            .filter(|(p, _)| !p.ends_with("LOCK"))
            .cloned()
            .collect()
    };
    assert_eq!(logs_only(&after), logs_only(&before));
}

#[test]
fn repair_explains_a_quarantined_segment_with_nothing_intact_after_the_damage() {
    let tmp = TempDir::new("logtool-repair-nothing");
    let dir = tmp.path().to_str().expect("utf-8 temp path");
    let realtime = tmp.path().join("realtime");
    std::fs::create_dir_all(&realtime).expect("create");
    // A quarantined file that holds only unreadable bytes.
    let q = realtime.join("00000000000000000000.log.quarantined");
    std::fs::write(&q, [0x5A; 64]).expect("write");
    let out = run(&["log", "repair", "--dir", dir, "--log", "realtime"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains(&format!(
            "realtime: {}: damaged at byte 0 (length field above the maximum record size); no \
             intact record after the damage (bytes 0..64 (64 bytes) unreadable): nothing to \
             recover, left quarantined",
            q.display()
        )),
        "{stdout}"
    );
    assert!(q.is_file(), "left as it was");
    assert!(
        !realtime.join("00000000000000000000.log").exists(),
        "the log was not opened: nothing to append"
    );
}

/// Events longer than the 256-byte slot live in the payload arena: a 16 KiB event and the
/// largest event a default frame can carry (`tcp.max_frame_len` = 64 KiB) are stored by an
/// engine on the default config and read back whole by `pinstream log inspect`.
#[test]
fn large_events_go_through_the_arena_and_inspect_reads_them_back() {
    let tmp = TempDir::new("logtool-large");
    let engine = Engine::start(EngineConfig::local(tmp.path())).expect("start an engine");
    let mut client = Client::connect(engine.started.tcp.expect("TCP")).expect("connect");
    client.hello().expect("HELLO");
    let max_frame = pinstream_host::config::TcpSection::default().max_frame_len as usize;
    // What one BATCH frame of one empty event costs: the largest payload is the rest.
    let overhead = Client::batch(1, &[EventHeader::new(0, 0, Priority::High, 0)], |_| {
        Vec::new()
    })
    .len();
    let largest = max_frame - overhead;
    assert!(largest > 60_000, "{largest}");
    let sizes = [16_384usize, largest, 300];
    for (i, &len) in sizes.iter().enumerate() {
        let seq = i as u64 + 1;
        let header = [EventHeader::new(seq, 0, Priority::High, 0)];
        let frame = Client::batch(seq, &header, |_| {
            (0..len).map(|b| (b % 251) as u8).collect()
        });
        assert!(frame.len() <= max_frame);
        client.send(&frame).expect("send");
    }
    let (ack, rejects) = client.wait_ack(3, Duration::from_secs(10)).expect("ACK");
    assert!(rejects.is_empty(), "{rejects:?}");
    assert_eq!((ack.dead_lettered, ack.rejected), (0, 0), "{ack:?}");
    engine.stop().expect("stop the engine");

    let dir = tmp.path().to_str().expect("utf-8 temp path");
    let out = run(&[
        "log", "inspect", "--dir", dir, "--log", "realtime", "--json",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout:.400}");
    for (line, len) in lines.iter().zip(sizes) {
        assert!(
            line.contains(&format!(r#""payload_len":{len},"#)),
            "{line:.300}"
        );
        // The bytes, not just the length: the hex of the first 4 and the last byte.
        let hex = line
            .split(r#""payload_hex":""#)
            .nth(1)
            .expect("payload_hex");
        assert!(hex.starts_with("00010203"), "{hex:.40}");
        assert_eq!(hex.find('"'), Some(2 * len));
        assert_eq!(
            &hex[2 * len - 2..2 * len],
            format!("{:02x}", (len - 1) % 251)
        );
    }
}
