//! Unit tests that need the writer's fault-injection seam: a failed `write(2)` or fdatasync
//! poisons the log, is never retried, and reopening recovers.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Durability, GroupSync, Log, LogConfig, LogReader, StorageError};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "pinstream-storage-unit-{}-{n}-{tag}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&path);
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn open(dir: &TempDir) -> Log {
    let mut cfg = LogConfig::new(&dir.0);
    cfg.durability = Durability::Always;
    Log::open(cfg).unwrap().0
}

fn assert_poisoned(r: Result<impl std::fmt::Debug, StorageError>, op: &str) {
    match r {
        Err(StorageError::Poisoned { first }) => match &*first {
            StorageError::Io { op: first_op, .. } => assert_eq!(*first_op, op),
            other => panic!("first error should be the {op} failure, is {other}"),
        },
        other => panic!("expected Poisoned, got {other:?}"),
    }
}

#[test]
fn a_failed_fdatasync_poisons_the_log_and_is_never_retried() {
    let dir = TempDir::new("fsync");
    let mut log = open(&dir);
    log.append(1, b"durable").unwrap();
    log.sync().unwrap();
    log.append(1, b"not durable").unwrap();
    log.fail_next_sync = Some(io::ErrorKind::Other);
    match log.sync() {
        Err(StorageError::Io { op, source, .. }) => {
            assert_eq!(op, "fdatasync");
            assert_eq!(source.kind(), io::ErrorKind::Other);
        }
        other => panic!("expected the fdatasync error, got {other:?}"),
    }
    let syncs = log.stats().syncs;
    assert_eq!(
        log.durable_offset(),
        1,
        "the failed sync acknowledged nothing"
    );
    assert_poisoned(log.append(1, b"more"), "fdatasync");
    assert_poisoned(log.flush(), "fdatasync");
    assert_poisoned(log.sync(), "fdatasync");
    assert_eq!(log.stats().syncs, syncs, "no retry");
    assert!(log.stats().poisoned);
    assert_eq!(log.durable_offset(), 1);
    let msg = log.sync().unwrap_err().to_string();
    assert!(msg.contains("reopen") && msg.contains("fdatasync"), "{msg}");
    drop(log);

    // Reopening runs recovery; the written record is there (the page cache kept it here).
    let mut log = open(&dir);
    assert_eq!(log.next_offset(), 2);
    assert_eq!(log.append(1, b"after").unwrap(), 2);
    log.sync().unwrap();
    let mut r = LogReader::open(&dir.0).unwrap();
    let bodies: Vec<Vec<u8>> = std::iter::from_fn(|| r.next_record())
        .map(|x| x.unwrap().body)
        .collect();
    assert_eq!(bodies, [&b"durable"[..], b"not durable", b"after"]);
}

#[test]
fn a_failed_write_poisons_the_log_too() {
    let dir = TempDir::new("write");
    let mut log = open(&dir);
    log.append(1, b"a").unwrap();
    log.fail_next_write = Some(io::ErrorKind::StorageFull);
    assert!(matches!(
        log.flush(),
        Err(StorageError::Io { op: "write", .. })
    ));
    assert_poisoned(log.append(1, b"b"), "write");
    assert_poisoned(log.sync(), "write");
    assert_eq!(log.durable_offset(), 0);
    drop(log);
    let log = open(&dir);
    assert_eq!(log.next_offset(), 0, "the failed write left nothing");
}

#[test]
fn a_quarantine_interrupted_between_its_renames_is_completed_on_open() {
    let dir = TempDir::new("interrupted");
    let mut log = open(&dir);
    for body in [&b"one"[..], b"two", b"three"] {
        log.append(1, body).unwrap();
    }
    log.close().unwrap();
    // The state a crash leaves after "rename the original aside" and before "rename the
    // synced prefix in": no segment file, a complete `.prefix`, the quarantined original.
    let seg = dir.0.join("00000000000000000000.log");
    let bytes = fs::read(&seg).unwrap();
    let first_two = 2 * super::RECORD_HEADER_LEN + 6;
    fs::write(
        dir.0.join("00000000000000000000.log.prefix"),
        &bytes[..first_two],
    )
    .unwrap();
    fs::rename(&seg, dir.0.join("00000000000000000000.log.quarantined")).unwrap();
    let mut cfg = LogConfig::new(&dir.0);
    cfg.durability = Durability::Always;
    let (log, report) = Log::open(cfg).unwrap();
    assert_eq!(report.quarantines_completed, 1, "{report}");
    assert!(report.to_string().contains("interrupted"), "{report}");
    // Offset 2 is in the quarantined original and the checkpoint says it was synced: it is
    // not handed out again.
    assert_eq!(log.next_offset(), 3);
    assert!(report.missing.is_empty(), "{report}");
    assert_eq!(fs::read(&seg).unwrap(), &bytes[..first_two]);
    assert_eq!(
        fs::read(dir.0.join("00000000000000000000.log.quarantined")).unwrap(),
        bytes,
        "the original is kept"
    );
}

/// A body written short, or an encoder that fails, appends nothing: no record sealed over
/// the zeroes the fill left, the log goes on, and a reader sees only whole records.
#[test]
fn a_body_not_written_as_announced_is_never_sealed() {
    let dir = TempDir::new("body-length");
    let mut log = open(&dir);
    assert_eq!(log.append(1, b"first").unwrap(), 0);
    let short = log.append_with(1, 10, |dst| {
        dst[..4].copy_from_slice(b"half");
        Ok(4)
    });
    assert!(
        matches!(
            short,
            Err(StorageError::BodyLength {
                kind: 1,
                expected: 10,
                written: 4
            })
        ),
        "{short:?}"
    );
    let refused = log.append_with(1, 10, |dst| {
        Err(super::record::RecordError::BufferTooSmall {
            need: 11,
            have: dst.len(),
        })
    });
    assert!(
        matches!(refused, Err(StorageError::Encode { kind: 1, .. })),
        "{refused:?}"
    );
    assert_eq!(
        log.append(1, b"second").unwrap(),
        1,
        "no offset was used up"
    );
    log.sync().unwrap();
    log.close().unwrap();
    let mut reader = LogReader::open(&dir.0).unwrap();
    let mut bodies = Vec::new();
    while let Some(r) = reader.next_record() {
        bodies.push(r.unwrap().body);
    }
    assert_eq!(bodies, vec![b"first".to_vec(), b"second".to_vec()]);
}

/// A segment, an index or a checkpoint that is a symbolic link is refused by name, and the
/// file it points to is left as it was (it used to be truncated or overwritten).
#[test]
fn symlinked_log_files_are_refused_and_their_targets_untouched() {
    use std::os::unix::fs::symlink;
    for victim in ["segment", "index", "checkpoint"] {
        let dir = TempDir::new(&format!("symlink-{victim}"));
        let mut log = open(&dir);
        log.append(1, b"first").unwrap();
        log.close().unwrap();
        let outside = TempDir::new(&format!("symlink-outside-{victim}"));
        fs::create_dir_all(&outside.0).unwrap();
        let target = outside.0.join("precious");
        fs::write(&target, b"not pinstream's: must survive").unwrap();
        let name = match victim {
            "segment" => "00000000000000000000.log",
            "index" => "00000000000000000000.index",
            _ => super::layout::CHECKPOINT_FILE,
        };
        let link = dir.0.join(name);
        fs::remove_file(&link).unwrap();
        symlink(&target, &link).unwrap();
        let mut cfg = LogConfig::new(&dir.0);
        cfg.durability = Durability::Always;
        let err = match Log::open(cfg) {
            Ok((mut log, _)) => {
                // The index is a hint: a refused one is rebuilt elsewhere or skipped, but it
                // must never be written through.
                log.append(1, b"second").unwrap();
                log.close().unwrap();
                None
            }
            Err(e) => Some(e.to_string()),
        };
        if victim != "index" {
            let err = err.unwrap_or_else(|| panic!("a symlinked {victim} was opened"));
            assert!(err.contains("symbolic link"), "{victim}: {err}");
            assert!(err.contains(name), "{victim}: {err}");
        }
        assert_eq!(
            fs::read(&target).unwrap(),
            b"not pinstream's: must survive",
            "{victim}: the link's target changed"
        );
    }
}

#[test]
fn a_group_sync_syncs_every_chosen_log_at_once_and_reports_the_first_failure() {
    let dirs: Vec<TempDir> = (0..4).map(|i| TempDir::new(&format!("group{i}"))).collect();
    let mut logs: Vec<Log> = dirs.iter().map(open).collect();
    let mut group = GroupSync::new(3).unwrap();
    for log in &mut logs {
        log.append(1, b"one").unwrap();
    }
    // Log 2 is not chosen: it stays unsynced.
    group
        .sync(&mut logs, &[true, true, false, true])
        .expect("three syncs");
    let synced: Vec<(u64, u64)> = logs
        .iter()
        .map(|l| (l.stats().syncs, l.durable_offset()))
        .collect();
    assert_eq!(synced, [(1, 1), (1, 1), (0, 0), (1, 1)]);

    // Nothing new in logs 0, 1 and 3: only log 2 is synced.
    group.sync(&mut logs, &[true; 4]).unwrap();
    let syncs: Vec<u64> = logs.iter().map(|l| l.stats().syncs).collect();
    assert_eq!(syncs, [1, 1, 1, 1]);

    // Logs 1 and 3 fail (on helpers); 0 and 2 succeed. The first failure in log order is
    // reported, both failed logs are poisoned, the others' syncs counted and durable.
    for log in &mut logs {
        log.append(1, b"two").unwrap();
    }
    logs[1].fail_next_sync = Some(io::ErrorKind::Other);
    logs[3].fail_next_sync = Some(io::ErrorKind::InvalidData);
    match group.sync(&mut logs, &[true; 4]) {
        Err((1, StorageError::Io { op, source, .. })) => {
            assert_eq!((op, source.kind()), ("fdatasync", io::ErrorKind::Other));
        }
        other => panic!("expected log 1's fdatasync error, got {other:?}"),
    }
    assert_poisoned(logs[1].append(1, b"x"), "fdatasync");
    assert_poisoned(logs[3].append(1, b"x"), "fdatasync");
    assert_eq!((logs[0].stats().syncs, logs[0].durable_offset()), (2, 2));
    assert_eq!((logs[2].stats().syncs, logs[2].durable_offset()), (2, 2));
    assert_eq!((logs[1].stats().syncs, logs[1].durable_offset()), (1, 1));
    drop(group);
}

#[test]
fn a_group_sync_without_helpers_syncs_one_log_on_the_calling_thread() {
    let dir = TempDir::new("group-alone");
    let mut logs = vec![open(&dir)];
    let mut group = GroupSync::new(0).unwrap();
    logs[0].append(1, b"one").unwrap();
    group.sync(&mut logs, &[true]).unwrap();
    assert_eq!((logs[0].stats().syncs, logs[0].durable_offset()), (1, 1));
}

#[test]
fn appends_during_a_sync_wait_for_the_next_one_and_a_roll_in_between_is_harmless() {
    let dir = TempDir::new("overlap");
    let mut cfg = LogConfig::new(&dir.0);
    cfg.durability = Durability::Always;
    cfg.segment_bytes = 1 << 20;
    let mut log = Log::open(cfg).unwrap().0;
    let mut group = GroupSync::new(1).unwrap();
    log.append(1, b"first").unwrap();
    let mut logs = [log];
    group.start(&mut logs, &[true]).unwrap();
    assert!(group.in_flight());
    // Appended while the sync is out: not covered by it.
    logs[0].append(1, b"second").unwrap();
    logs[0].flush().unwrap();
    group.finish(&mut logs).unwrap();
    assert_eq!(logs[0].durable_offset(), 1);
    group.sync(&mut logs, &[true]).unwrap();
    assert_eq!(logs[0].durable_offset(), 2);

    // A roll while a sync is out syncs the old segment itself; the late job changes nothing.
    logs[0].append(1, b"third").unwrap();
    group.start(&mut logs, &[true]).unwrap();
    let body = vec![7u8; 60_000];
    while logs[0].stats().segments == 1 {
        logs[0].append(1, &body).unwrap(); // past 1 MiB: rolls, syncing the old segment
    }
    let next = logs[0].next_offset();
    assert_eq!(logs[0].durable_offset(), next - 1);
    group.finish(&mut logs).unwrap();
    assert_eq!(logs[0].durable_offset(), next - 1);
    group.sync(&mut logs, &[true]).unwrap();
    assert_eq!(logs[0].durable_offset(), next);
    let [log] = logs;
    drop(group);
    log.close().unwrap();
    let mut reader = LogReader::open(&dir.0).unwrap();
    let mut n = 0;
    while let Some(rec) = reader.next_record() {
        rec.unwrap();
        n += 1;
    }
    assert_eq!(n, next);
}
