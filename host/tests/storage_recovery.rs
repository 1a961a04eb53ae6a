//! The storage log through its public API: round trips across segments, recovery from cuts
//! at every byte and from bit flips, durability of what `Always` acknowledged, group-commit
//! triggers, retention, index and checkpoint rebuilding.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use pinstream_host::storage::{
    CheckpointStatus, Durability, Log, LogConfig, LogReader, RECORD_HEADER_LEN, StorageError,
    StoredRecord,
};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under the temp dir, removed on drop (even when the test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "pinstream-storage-{}-{n}-{tag}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn sub(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn body(i: u64) -> Vec<u8> {
    format!("record-{i}|")
        .repeat((i % 4 + 1) as usize)
        .into_bytes()
}

fn config(dir: &Path, segment_bytes: u64, durability: Durability) -> LogConfig {
    let mut cfg = LogConfig::new(dir);
    cfg.segment_bytes = segment_bytes;
    cfg.index_interval_bytes = 64;
    cfg.write_buffer_bytes = 4096;
    cfg.max_record_bytes = 1024;
    cfg.durability = durability;
    cfg
}

fn read_all(dir: &Path) -> Vec<StoredRecord> {
    let mut r = LogReader::open(dir).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next_record() {
        out.push(rec.unwrap_or_else(|e| panic!("read failed: {e}")));
    }
    out
}

fn assert_records(got: &[StoredRecord], offsets: std::ops::Range<u64>) {
    let want: Vec<u64> = offsets.collect();
    let have: Vec<u64> = got.iter().map(|r| r.offset).collect();
    assert_eq!(have, want);
    for r in got {
        assert_eq!(
            (r.kind, &r.body),
            (1, &body(r.offset)),
            "offset {}",
            r.offset
        );
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

fn quarantined_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".quarantined"))
        .collect();
    v.sort();
    v
}

/// `(offset, start, end)` of each record in a segment's bytes (framing only, no CRC).
fn record_spans(bytes: &[u8]) -> Vec<(u64, usize, usize)> {
    let mut out = Vec::new();
    let mut p = 0;
    while p + RECORD_HEADER_LEN <= bytes.len() {
        let len = u32::from_le_bytes(bytes[p..p + 4].try_into().unwrap()) as usize;
        let off = u64::from_le_bytes(bytes[p + 8..p + 16].try_into().unwrap());
        out.push((off, p, p + RECORD_HEADER_LEN + len));
        p += RECORD_HEADER_LEN + len;
    }
    out
}

/// Writes `n` records into a single-segment log under `Always` and closes it.
fn build_single_segment(dir: &Path, n: u64) -> Vec<u8> {
    let (mut log, _) = Log::open(config(dir, 1 << 20, Durability::Always)).unwrap();
    for i in 0..n {
        assert_eq!(log.append(1, &body(i)).unwrap(), i);
    }
    log.close().unwrap();
    fs::read(&segment_files(dir)[0]).unwrap()
}

/// Lays out a log directory holding one segment with `bytes` (no index, no checkpoint:
/// the crash came before either was written).
fn lay_out(dir: &Path, bytes: &[u8]) {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("00000000000000000000.log"), bytes).unwrap();
}

#[test]
fn round_trip_across_segments_with_seek_and_reopen() {
    let tmp = TempDir::new("roundtrip");
    let dir = tmp.sub("log");
    let cfg = config(
        &dir,
        300,
        Durability::Interval {
            max_delay: Duration::from_millis(5),
            max_bytes: 1000,
        },
    );
    let (mut log, report) = Log::open(cfg.clone()).unwrap();
    assert!(report.is_clean(), "{report}");
    // A first open says it created the log, not that it recovered one.
    assert!(report.created, "{report}");
    assert_eq!(
        report.to_string(),
        format!("created {}: new empty log, next offset 0", dir.display())
    );
    for i in 0..60 {
        assert_eq!(log.append(1, &body(i)).unwrap(), i);
        if log.sync_due(Instant::now()) {
            log.sync().unwrap();
        }
    }
    log.close().unwrap();
    assert!(segment_files(&dir).len() >= 5, "small segments roll");

    let (mut log, report) = Log::open(cfg).unwrap();
    assert!(report.is_clean(), "{report}");
    assert!(!report.created, "{report}");
    assert!(report.to_string().starts_with("recovered "), "{report}");
    assert!(
        matches!(report.checkpoint, CheckpointStatus::Used { .. }),
        "{report}"
    );
    assert_eq!(log.next_offset(), 60);
    assert_eq!(log.durable_offset(), 60);
    assert_eq!(log.append(1, &body(60)).unwrap(), 60);
    log.sync().unwrap();
    assert_records(&read_all(&dir), 0..61);

    let mut r = LogReader::open(&dir).unwrap();
    for target in [0, 1, 17, 33, 59, 60] {
        r.seek(target).unwrap();
        let rec = r.next_record().unwrap().unwrap();
        assert_eq!((rec.offset, rec.body.clone()), (target, body(target)));
    }
    r.seek(61).unwrap();
    assert!(r.next_record().is_none());
    // A reader at the end sees records appended later, across a roll.
    for i in 61..80 {
        log.append(1, &body(i)).unwrap();
    }
    log.flush().unwrap();
    let later: Vec<u64> = std::iter::from_fn(|| r.next_record())
        .map(|x| x.unwrap().offset)
        .collect();
    assert_eq!(later, (61..80).collect::<Vec<_>>());
    drop(log);
}

#[test]
fn a_cut_at_every_byte_of_the_last_records_keeps_exactly_the_complete_prefix() {
    let tmp = TempDir::new("cut");
    let src = tmp.sub("src");
    let original = build_single_segment(&src, 10);
    let spans = record_spans(&original);
    assert_eq!(spans.len(), 10);
    let dir = tmp.sub("log");
    for cut in spans[7].1..=original.len() {
        lay_out(&dir, &original[..cut]);
        let complete = spans.iter().filter(|s| s.2 <= cut).count() as u64;
        let keep = spans
            .iter()
            .filter(|s| s.2 <= cut)
            .map(|s| s.2)
            .max()
            .unwrap_or(0);
        let (mut log, report) = Log::open(config(&dir, 1 << 20, Durability::Always))
            .unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        assert!(report.quarantined.is_empty(), "cut {cut}: {report}");
        assert_eq!(report.bytes_truncated(), (cut - keep) as u64, "cut {cut}");
        let seg = dir.join("00000000000000000000.log");
        assert_eq!(fs::metadata(&seg).unwrap().len(), keep as u64, "cut {cut}");
        assert_eq!(log.next_offset(), complete);
        assert_records(&read_all(&dir), 0..complete);
        assert_eq!(log.append(1, &body(complete)).unwrap(), complete);
        log.sync().unwrap();
        drop(log);
        assert_records(&read_all(&dir), 0..complete + 1);
    }
}

#[test]
fn bit_flips_in_the_last_records_keep_the_valid_prefix_and_quarantine_when_data_follows() {
    let tmp = TempDir::new("flip");
    let src = tmp.sub("src");
    let original = build_single_segment(&src, 10);
    let spans = record_spans(&original);
    let dir = tmp.sub("log");
    let seg = dir.join("00000000000000000000.log");
    let first = spans[7].1;
    // Every bit of the last three records; under debug this stays well under 20 s.
    for bit in first * 8..original.len() * 8 {
        let mut damaged = original.clone();
        damaged[bit / 8] ^= 1 << (bit % 8);
        lay_out(&dir, &damaged);
        let k = spans
            .iter()
            .position(|s| s.1 <= bit / 8 && bit / 8 < s.2)
            .unwrap() as u64;
        let (mut log, report) = Log::open(config(&dir, 1 << 20, Durability::Always))
            .unwrap_or_else(|e| panic!("bit {bit}: {e}"));
        assert_records(&read_all(&dir), 0..k);
        if k == 9 {
            // The last record: a torn tail.
            assert!(report.quarantined.is_empty(), "bit {bit}: {report}");
            assert_eq!(
                report.bytes_truncated(),
                (original.len() - spans[9].1) as u64
            );
            assert_eq!(log.next_offset(), 9);
        } else {
            // Intact records follow: quarantined, nothing deleted, offsets not reused.
            assert_eq!(report.quarantined.len(), 1, "bit {bit}: {report}");
            let q = &report.quarantined[0];
            assert_eq!(q.damaged_position, spans[k as usize].1 as u64);
            assert_eq!(q.intact_records_after, 9 - k);
            assert_eq!(q.highest_offset_after, Some(9));
            assert_eq!(
                fs::read(&q.quarantined_as).unwrap(),
                damaged,
                "kept as it was"
            );
            assert_eq!(fs::read(&seg).unwrap(), &original[..spans[k as usize].1]);
            assert!(report.to_string().contains("QUARANTINED"));
            assert_eq!(log.next_offset(), 10);
        }
        let next = log.next_offset();
        assert_eq!(log.append(1, &body(next)).unwrap(), next);
        log.sync().unwrap();
        drop(log);
        let all = read_all(&dir);
        let offsets: Vec<u64> = all.iter().map(|r| r.offset).collect();
        let mut want: Vec<u64> = (0..k).collect();
        want.push(next);
        assert_eq!(offsets, want, "bit {bit}");
        // A second open finds nothing more to do.
        let (_log, again) = Log::open(config(&dir, 1 << 20, Durability::Always)).unwrap();
        assert!(again.is_clean(), "bit {bit}: {again}");
    }
}

#[test]
fn damage_behind_a_checkpoint_is_reported_by_the_reader_and_quarantined_by_recovery() {
    let tmp = TempDir::new("flipckpt");
    let dir = tmp.sub("log");
    let original = build_single_segment(&dir, 10);
    let spans = record_spans(&original);
    let seg = dir.join("00000000000000000000.log");
    let mut damaged = original.clone();
    damaged[spans[4].1 + RECORD_HEADER_LEN + 2] ^= 0x04;
    fs::write(&seg, &damaged).unwrap();
    // The reader (no recovery) reports it and never returns it.
    let mut r = LogReader::open(&dir).unwrap();
    for i in 0..4 {
        assert_eq!(r.next_record().unwrap().unwrap().offset, i);
    }
    match r.next_record() {
        Some(Err(StorageError::Corrupt { position, .. })) => {
            assert_eq!(position, spans[4].1 as u64);
        }
        other => panic!("expected a corrupt-record error, got {other:?}"),
    }
    // Seeking past it uses the index (checked against the data) and reads on.
    r.seek(7).unwrap();
    assert_eq!(r.next_record().unwrap().unwrap().offset, 7);
    // The checkpoint names synced data (records 0..10) and agrees with it, but recovery
    // reads every record all the same: the segment is quarantined, its valid prefix kept.
    let (log, report) = Log::open(config(&dir, 1 << 20, Durability::Always)).unwrap();
    assert!(
        matches!(report.checkpoint, CheckpointStatus::Used { .. }),
        "{report}"
    );
    assert_eq!(report.quarantined.len(), 1, "{report}");
    assert_eq!(report.quarantined[0].damaged_position, spans[4].1 as u64);
    assert_eq!(report.quarantined[0].intact_records_after, 5);
    assert_eq!(log.next_offset(), 10);
    drop(log);
    assert_records(&read_all(&dir), 0..4);
}

#[test]
fn damage_in_a_closed_segment_quarantines_it_and_later_segments_stay() {
    let tmp = TempDir::new("closed");
    let dir = tmp.sub("log");
    let mut cfg = config(&dir, 200, Durability::Always);
    let (mut log, _) = Log::open(cfg.clone()).unwrap();
    for i in 0..30 {
        log.append(1, &body(i)).unwrap();
    }
    log.close().unwrap();
    let segs = segment_files(&dir);
    assert!(segs.len() >= 3);
    let bytes = fs::read(&segs[0]).unwrap();
    let spans = record_spans(&bytes);
    let last = spans.len() - 1;
    // The last record of the first segment: a "torn tail" of a closed segment is still
    // followed by data (the later segments), so it is quarantined, not truncated.
    let mut damaged = bytes.clone();
    damaged[spans[last].1 + RECORD_HEADER_LEN] ^= 0x01;
    fs::write(&segs[0], &damaged).unwrap();
    fs::remove_file(dir.join("checkpoint")).unwrap();
    cfg.durability = Durability::Always;
    let (log, report) = Log::open(cfg).unwrap();
    assert_eq!(report.quarantined.len(), 1, "{report}");
    assert_eq!(report.quarantined[0].intact_records_after, 0);
    assert_eq!(fs::read(&quarantined_files(&dir)[0]).unwrap(), damaged);
    assert_eq!(log.next_offset(), 30);
    drop(log);
    let offsets: Vec<u64> = read_all(&dir).iter().map(|r| r.offset).collect();
    let missing = spans[last].0;
    let want: Vec<u64> = (0..30).filter(|&o| o != missing).collect();
    assert_eq!(offsets, want);
}

#[test]
fn every_record_acked_under_always_survives_a_crash_and_a_cut_unsynced_tail() {
    let tmp = TempDir::new("always");
    let dir = tmp.sub("log");
    let cfg = config(&dir, 700, Durability::Always);
    let (mut log, _) = Log::open(cfg.clone()).unwrap();
    let mut acked = 0u64;
    let mut i = 0u64;
    for batch in 0..25u64 {
        for _ in 0..batch % 4 + 1 {
            log.append(1, &body(i)).unwrap();
            i += 1;
        }
        log.sync().unwrap();
        acked = log.durable_offset();
        assert_eq!(acked, i);
    }
    // Written but unsynced, then buffered but unwritten: neither acknowledged.
    let active = segment_files(&dir).pop().unwrap();
    let synced_len = fs::metadata(&active).unwrap().len();
    for _ in 0..3 {
        log.append(1, &body(i)).unwrap();
        i += 1;
    }
    log.flush().unwrap();
    log.append(1, &body(i)).unwrap();
    assert_eq!(log.durable_offset(), acked);
    drop(log); // a crash: the buffer is lost
    // If the unsynced records rolled into a new segment, that one holds the unsynced tail.
    let newest = segment_files(&dir).pop().unwrap();
    let (active, synced_len) = if newest == active {
        (active, synced_len)
    } else {
        (newest, 0)
    };
    let full = fs::read(&active).unwrap();
    assert!(full.len() as u64 > synced_len);
    for cut in synced_len..=full.len() as u64 {
        fs::write(&active, &full[..cut as usize]).unwrap();
        let (log, report) = Log::open(cfg.clone()).unwrap();
        assert!(report.quarantined.is_empty(), "{report}");
        assert!(log.next_offset() >= acked);
        drop(log);
        let got = read_all(&dir);
        assert!(got.len() as u64 >= acked);
        assert_records(&got[..acked as usize], 0..acked);
    }
}

#[test]
fn interval_sync_is_due_by_bytes_and_by_delay() {
    let tmp = TempDir::new("interval");
    let (mut log, _) = Log::open(config(
        &tmp.sub("a"),
        1 << 20,
        Durability::Interval {
            max_delay: Duration::from_secs(3600),
            max_bytes: 100,
        },
    ))
    .unwrap();
    let now = Instant::now();
    assert!(!log.sync_due(now), "nothing to sync");
    log.append(1, &[0u8; 40]).unwrap(); // 60 bytes with the header
    assert!(!log.sync_due(now));
    log.append(1, &[0u8; 20]).unwrap(); // 100
    assert!(log.sync_due(now));
    assert_eq!(log.durable_offset(), 0);
    log.sync().unwrap();
    assert_eq!(log.durable_offset(), 2);
    assert!(!log.sync_due(now));
    drop(log);

    let (mut log, _) = Log::open(config(
        &tmp.sub("b"),
        1 << 20,
        Durability::Interval {
            max_delay: Duration::from_millis(50),
            max_bytes: u64::MAX,
        },
    ))
    .unwrap();
    let later = Instant::now() + Duration::from_millis(60);
    assert!(!log.sync_due(later), "nothing to sync, however late");
    log.append(1, b"x").unwrap();
    assert!(!log.sync_due(Instant::now()));
    assert!(log.sync_due(later));
    log.sync().unwrap();
    assert!(!log.sync_due(later));
    assert_eq!(log.stats().syncs, 1);
    assert!(log.stats().last_sync_latency.is_some());

    // `Always` is due whenever something is unsynced; `None` never, and counts writes.
    let (mut log, _) = Log::open(config(&tmp.sub("c"), 1 << 20, Durability::Always)).unwrap();
    log.append(1, b"x").unwrap();
    assert!(log.sync_due(Instant::now()));
    let (mut log, _) = Log::open(config(&tmp.sub("d"), 1 << 20, Durability::None)).unwrap();
    log.append(1, b"x").unwrap();
    assert!(!log.sync_due(Instant::now() + Duration::from_secs(9999)));
    assert_eq!(log.durable_offset(), 0);
    log.flush().unwrap();
    assert_eq!(log.durable_offset(), 1);
}

#[test]
fn retention_removes_only_whole_closed_segments_oldest_first() {
    let tmp = TempDir::new("retention");
    let dir = tmp.sub("log");
    let mut cfg = config(&dir, 300, Durability::Always);
    cfg.retention_bytes = Some(1000);
    let (mut log, _) = Log::open(cfg.clone()).unwrap();
    for i in 0..80 {
        log.append(1, &body(i)).unwrap();
    }
    log.sync().unwrap();
    let before = segment_files(&dir);
    let active = before.last().unwrap().clone();
    let report = log.enforce_retention(SystemTime::now()).unwrap();
    assert!(report.segments_removed > 0);
    let after = segment_files(&dir);
    assert_eq!(
        after[..],
        before[report.segments_removed..],
        "oldest first, whole"
    );
    let total: u64 = after.iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    assert!(total <= 1000, "{total}");
    let first = read_all(&dir)[0].offset;
    assert_eq!(first, report.first_offset);
    assert_eq!(log.first_offset(), first);
    assert_records(&read_all(&dir), first..80);
    drop(log);

    // By age: nothing is old now; two hours on, every closed segment is, the active one stays.
    cfg.retention_bytes = None;
    cfg.retention_age = Some(Duration::from_secs(3600));
    let (mut log, _) = Log::open(cfg).unwrap();
    assert_eq!(
        log.enforce_retention(SystemTime::now())
            .unwrap()
            .segments_removed,
        0
    );
    let later = SystemTime::now() + Duration::from_secs(7200);
    let report = log.enforce_retention(later).unwrap();
    assert_eq!(report.segments_removed, after.len() - 1);
    assert_eq!(segment_files(&dir), vec![active]);
    assert_eq!(log.append(1, &body(80)).unwrap(), 80);
}

#[test]
fn missing_or_damaged_indexes_are_rebuilt_and_bogus_checkpoints_ignored() {
    let tmp = TempDir::new("index");
    let dir = tmp.sub("log");
    let cfg = config(&dir, 400, Durability::Always);
    let (mut log, _) = Log::open(cfg.clone()).unwrap();
    for i in 0..60 {
        log.append(1, &body(i)).unwrap();
    }
    log.close().unwrap();
    let mut indexes: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "index"))
        .collect();
    indexes.sort();
    assert!(indexes.len() >= 3);
    let originals: Vec<Vec<u8>> = indexes.iter().map(|p| fs::read(p).unwrap()).collect();
    fs::remove_file(&indexes[0]).unwrap();
    fs::write(&indexes[1], b"garbage!").unwrap();
    let mut swapped = originals[2].clone();
    swapped.rotate_left(16);
    fs::write(&indexes[2], &swapped).unwrap();
    let (log, report) = Log::open(cfg.clone()).unwrap();
    assert_eq!(report.indexes_rebuilt, 3, "{report}");
    drop(log);
    for (p, o) in indexes.iter().zip(&originals) {
        assert_eq!(&fs::read(p).unwrap(), o, "{}", p.display());
    }

    // Checkpoints that disagree with the data: ignored, full scan, nothing lost.
    let ckpt = dir.join("checkpoint");
    let good = fs::read(&ckpt).unwrap();
    let mut wrong_offset = good.clone();
    wrong_offset[24] ^= 1; // next offset, CRC fixed up below
    let crc = pinstream_core::wire::crc32c(&wrong_offset[..40]);
    wrong_offset[40..44].copy_from_slice(&crc.to_le_bytes());
    let mut past_end = good.clone();
    past_end[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    let crc = pinstream_core::wire::crc32c(&past_end[..40]);
    past_end[40..44].copy_from_slice(&crc.to_le_bytes());
    for bogus in [
        wrong_offset,
        past_end,
        b"not a checkpoint".to_vec(),
        vec![0; 48],
    ] {
        fs::write(&ckpt, &bogus).unwrap();
        let (log, report) = Log::open(cfg.clone()).unwrap();
        assert!(
            matches!(report.checkpoint, CheckpointStatus::Ignored { .. }),
            "{report}"
        );
        assert_eq!(report.segments_scanned, report.segments);
        assert!(report.is_clean());
        assert_eq!(log.next_offset(), 60);
        drop(log);
        assert_records(&read_all(&dir), 0..60);
    }
    let (_log, report) = Log::open(cfg).unwrap();
    assert!(
        matches!(report.checkpoint, CheckpointStatus::Used { .. }),
        "{report}"
    );
    // Every segment is read, checkpoint or not.
    assert_eq!(report.segments_scanned, report.segments);
}

#[test]
fn the_dead_letter_log_stores_reason_coded_records() {
    use pinstream_core::event::{EventHeader, Origin, Priority};
    use pinstream_core::lanes::DeadLetter;
    use pinstream_core::reason::Reason;
    use pinstream_host::storage::record::{self, RecordBody};

    let tmp = TempDir::new("dlq");
    let dir = tmp.sub("dead-letters");
    let (mut log, _) = Log::open(config(&dir, 1 << 20, Durability::Always)).unwrap();
    let letters: Vec<DeadLetter> = [
        Reason::LaneFull,
        Reason::Duplicate,
        Reason::RetriesExhausted,
    ]
    .into_iter()
    .enumerate()
    .map(|(i, reason)| DeadLetter {
        header: EventHeader::new(i as u64, 3, Priority::Medium, 10),
        origin: Origin::new(1, i as u64),
        reason,
        tick: 100 + i as u64,
        events: 1,
    })
    .collect();
    for dl in &letters {
        log.append_with(record::KIND_DEAD_LETTER, record::DEAD_LETTER_LEN, |buf| {
            record::encode_dead_letter(buf, dl)
        })
        .unwrap();
    }
    log.close().unwrap();
    let got: Vec<DeadLetter> = read_all(&dir)
        .iter()
        .map(|r| match record::decode(r.kind, &r.body).unwrap() {
            RecordBody::DeadLetter(d) => d,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(got, letters);
}

#[test]
fn oversized_records_and_bad_configs_are_refused_with_their_value() {
    let tmp = TempDir::new("limits");
    let dir = tmp.sub("log");
    let mut cfg = config(&dir, 1 << 20, Durability::Always);
    cfg.write_buffer_bytes = 100;
    let err = Log::open(cfg.clone()).unwrap_err();
    assert!(
        err.to_string().contains("write_buffer_bytes = 100"),
        "{err}"
    );
    cfg.write_buffer_bytes = 4096;
    let (mut log, _) = Log::open(cfg).unwrap();
    let err = log.append(1, &[0; 1025]).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::RecordTooLarge {
                len: 1025,
                max: 1024
            }
        ),
        "{err}"
    );
    assert_eq!(log.append(1, &[0; 1024]).unwrap(), 0);
}

/// Rewrites every record of `bytes` from `from` on as format version 2, CRC fixed up: what a
/// newer pinstream would write.
fn as_version_2(bytes: &mut [u8], from: usize) {
    for (_, start, end) in record_spans(bytes) {
        if start < from {
            continue;
        }
        let rec = &mut bytes[start..end];
        rec[17] = 2;
        let crc = pinstream_core::wire::crc32c_update(
            pinstream_core::wire::crc32c(&rec[0..4]),
            &rec[8..],
        );
        rec[4..8].copy_from_slice(&crc.to_le_bytes());
    }
}

#[test]
fn records_of_a_newer_format_version_stop_recovery_and_are_never_truncated() {
    let tmp = TempDir::new("version");
    let src = tmp.sub("src");
    let original = build_single_segment(&src, 200);
    let spans = record_spans(&original);
    let dir = tmp.sub("log");
    let seg = dir.join("00000000000000000000.log");
    // All 200 records of version 2, then 100 of version 1 followed by 100 of version 2.
    for first_v2 in [0usize, 100] {
        let mut bytes = original.clone();
        as_version_2(&mut bytes, spans[first_v2].1);
        lay_out(&dir, &bytes);
        let err = match Log::open(config(&dir, 1 << 20, Durability::Always)) {
            Ok((_, report)) => panic!("recovery took version-2 records for damage: {report}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(&seg.display().to_string()), "{err}");
        assert!(
            err.contains(&format!("version 2 at byte {}", spans[first_v2].1)),
            "{err}"
        );
        assert_eq!(fs::read(&seg).unwrap(), bytes, "nothing changed");
        assert_eq!(segment_files(&dir).len(), 1);
        assert!(quarantined_files(&dir).is_empty());
    }
}

/// A log of 60 records in segments of at most 400 bytes, closed cleanly under `Always` (the
/// checkpoint covers every record); returns its segment files.
fn build_closed_log(dir: &Path) -> Vec<PathBuf> {
    let (mut log, _) = Log::open(config(dir, 400, Durability::Always)).unwrap();
    for i in 0..60 {
        log.append(1, &body(i)).unwrap();
    }
    log.close().unwrap();
    let segs = segment_files(dir);
    assert!(segs.len() >= 4, "{segs:?}");
    segs
}

/// Appends `n` records after a reopen, then reads the whole log back: every record read must
/// pass (the appends did not land after damage) and the new ones must be there.
fn append_and_read_back(dir: &Path, n: u64) -> Vec<u64> {
    let (mut log, _) = Log::open(config(dir, 400, Durability::Always)).unwrap();
    let first = log.next_offset();
    for i in first..first + n {
        assert_eq!(log.append(1, &body(i)).unwrap(), i);
    }
    log.close().unwrap();
    let offsets: Vec<u64> = read_all(dir).iter().map(|r| r.offset).collect();
    for i in first..first + n {
        assert!(
            offsets.contains(&i),
            "new record {i} not readable: {offsets:?}"
        );
    }
    offsets
}

#[test]
fn damage_in_synced_data_after_a_clean_stop_is_found_and_never_appended_after() {
    let tmp = TempDir::new("synced");
    // A bit flip in a record in the middle of a closed segment, then of the active one.
    for which in [0usize, 3] {
        let dir = tmp.sub(&format!("flip{which}"));
        let segs = build_closed_log(&dir);
        let seg = &segs[which.min(segs.len() - 1)];
        let mut bytes = fs::read(seg).unwrap();
        let spans = record_spans(&bytes);
        let (damaged_offset, start, _) = spans[1];
        bytes[start + RECORD_HEADER_LEN + 1] ^= 0x20;
        fs::write(seg, &bytes).unwrap();
        let (log, report) = Log::open(config(&dir, 400, Durability::Always)).unwrap();
        assert_eq!(report.quarantined.len(), 1, "{report}");
        assert_eq!(report.quarantined[0].damaged_position, start as u64);
        assert!(report.to_string().contains("QUARANTINED"), "{report}");
        assert_eq!(log.next_offset(), 60, "offsets are not reused");
        drop(log);
        let offsets = append_and_read_back(&dir, 5);
        assert!(!offsets.contains(&damaged_offset));
        assert_eq!(offsets.len(), 60 - (spans.len() - 1) + 5, "{offsets:?}");
    }

    // The last two records of the active segment zeroed: synced and acknowledged, so not a
    // torn tail. Quarantined with every byte kept, their offsets not reused.
    let dir = tmp.sub("zeroed");
    let segs = build_closed_log(&dir);
    let active = segs.last().unwrap();
    let original = fs::read(active).unwrap();
    let spans = record_spans(&original);
    let cut = spans[spans.len() - 2].1;
    let mut zeroed = original.clone();
    zeroed[cut..].fill(0);
    fs::write(active, &zeroed).unwrap();
    let (log, report) = Log::open(config(&dir, 400, Durability::Always)).unwrap();
    assert!(report.torn_tail.is_none(), "{report}");
    assert_eq!(report.quarantined.len(), 1, "{report}");
    assert_eq!(fs::read(&quarantined_files(&dir)[0]).unwrap(), zeroed);
    assert_eq!(log.next_offset(), 60);
    drop(log);
    append_and_read_back(&dir, 3);
}

#[test]
fn a_deleted_emptied_or_unreadable_middle_segment_is_reported_by_range_or_name() {
    let tmp = TempDir::new("gap");
    for how in ["deleted", "emptied"] {
        let dir = tmp.sub(how);
        let segs = build_closed_log(&dir);
        let first = record_spans(&fs::read(&segs[1]).unwrap())[0].0;
        let next = record_spans(&fs::read(&segs[2]).unwrap())[0].0;
        match how {
            "deleted" => fs::remove_file(&segs[1]).unwrap(),
            _ => fs::write(&segs[1], b"").unwrap(),
        }
        // Reported on every start until someone acts; never filled, offsets not reused.
        for _ in 0..2 {
            let (log, report) = Log::open(config(&dir, 400, Durability::Always)).unwrap();
            assert!(!report.is_clean(), "{how}: {report}");
            let text = report.to_string();
            assert!(
                text.contains(&format!(
                    "MISSING offsets {first}..={} ({} record(s))",
                    next - 1,
                    next - first
                )),
                "{how}: {text}"
            );
            assert_eq!(log.next_offset(), 60);
        }
    }
}

#[test]
fn an_unreadable_middle_segment_stops_recovery_naming_it() {
    // A directory in its place: the tests may run as root, for whom chmod 000 changes
    // nothing. The checkpoint and its index said it was fine; recovery reads it all the same.
    let tmp = TempDir::new("unreadable");
    let dir = tmp.sub("log");
    let segs = build_closed_log(&dir);
    fs::remove_file(&segs[1]).unwrap();
    fs::create_dir(&segs[1]).unwrap();
    match Log::open(config(&dir, 400, Durability::Always)) {
        Ok((_, report)) => panic!("an unreadable segment went unnoticed: {report}"),
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains(&segs[1].display().to_string()), "{text}");
        }
    }
}
