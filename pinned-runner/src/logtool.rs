//! `pinstream log`: read the engine's logs offline or while it runs.
//!
//! The engine keeps four logs below its data directory (`storage.dir`): `realtime/` and
//! `transactional/` (one record per stored event), `batch/` (one aggregate per topic and
//! window) and `dead-letter/` (one record per dead letter, with its reason). Every command
//! here but `repair` reads them through [`LogReader`], which opens files read-only, checks the
//! CRC of every record, runs no recovery, takes no lock and modifies nothing.
//!
//! | command | what it does |
//! | --- | --- |
//! | `inspect` | prints records, one line each (text or JSON) |
//! | `verify` | reads every record of every segment, reports segments, records, bytes, offsets, quarantined segments, every damaged region, missing offsets and unreadable segments, as text or JSON (exit 1 when damaged) |
//! | `replay` | sends the stored events of a range to another engine as BATCH frames and reports its ACK |
//! | `tail` | follows logs while the engine writes them, until Ctrl-C |
//! | `repair` | with the engine stopped (it takes the data directory's LOCK), re-appends the intact records of quarantined segments ([`repair_log`]) |

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::fs;
use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use pinstream_client::{Producer, ProducerOptions, Totals};
use pinstream_core::event::{EventHeader, Origin, Priority};
use pinstream_core::reason::Reason;
use pinstream_core::wire::{BATCH_PREFIX_LEN, EVENT_RECORD_LEN, HEADER_LEN, TRAILER_LEN};
use pinstream_host::engine::LOG_NAMES;
use pinstream_host::storage::record::{self, RecordBody, RecordError};
use pinstream_host::storage::{
    DataDirLock, LogReader, MAX_RECORD_LIMIT, QuarantineState, QuarantinedFile, RECORD_HEADER_LEN,
    StorageError, StoredRecord, check_segment, parse_segment_name, quarantined_files, repair_log,
};

use pinstream_host::admin::json_string;

use crate::Failure;

/// `pinstream log` flags.
#[derive(Args, Debug)]
#[command(
    after_help = "Every command but repair opens the logs read-only and changes nothing. Exit \
    status: 0 when done; 1 when a damaged record was found (inspect, verify, replay) or the other \
    engine could not be reached or did not acknowledge (replay); 2 for a bad flag, a data \
    directory that does not exist, or a log named with --log that does not (tail waits for it); \
    3 when repair finds the data directory in use by an engine."
)]
pub struct LogArgs {
    /// The engine's data directory (`storage.dir` in its config); the logs are its
    /// `realtime/`, `transactional/`, `batch/` and `dead-letter/` subdirectories.
    #[arg(
        long,
        global = true,
        value_name = "DATA_DIR",
        default_value = "./pinstream-data"
    )]
    dir: PathBuf,
    #[command(subcommand)]
    command: LogCommand,
}

#[derive(Subcommand, Debug)]
enum LogCommand {
    /// Print records, one line each: log, offset, kind and the decoded fields.
    Inspect(InspectArgs),
    /// Read every record of every segment checking its CRC; exit 1 if anything is damaged.
    ///
    /// Prints per log: segments, records, bytes, first and last offset, quarantined
    /// segments (`*.log.quarantined*`, kept by recovery: reported, not counted as damage) and
    /// every damaged region with its file, byte range and the offsets lost (after damage it
    /// searches for the next CRC-valid record and reads on), offsets missing between segments,
    /// and segments that cannot be read. `--json` for one JSON object per log. Opens files
    /// read-only and modifies nothing (`pinstream run` repairs a log when it starts).
    Verify(VerifyArgs),
    /// Re-send the stored events of an offset range to an engine over TCP.
    ///
    /// Events of the realtime and transactional logs are sent as BATCH frames (HELLO first,
    /// seqs 1, 2, 3, …), keeping their ids, topics, priorities, timestamps, values and
    /// payloads; the command waits for the ACK of the last frame and prints how many events
    /// the other engine stored, dead-lettered and rejected. Aggregates (the batch log) and
    /// dead letters are not replayed: they are not events (a dead letter keeps no payload).
    /// With `--log all` the realtime log is sent first, then the transactional one.
    Replay(ReplayArgs),
    /// Follow logs while the engine writes them: print new records as they appear (polled
    /// every 100 ms, across segment rolls) until Ctrl-C (exit 0).
    Tail(TailArgs),
    /// Bring back the intact records of quarantined segments (the engine must be stopped).
    ///
    /// When recovery finds intact records after a damaged one, it quarantines the segment
    /// (renames it `*.log.quarantined`, keeps it) and those records leave the log. This
    /// re-appends every CRC-valid record found after the damage to the end of the live log,
    /// with its content unchanged and a new offset (offsets are never reused), syncs, and
    /// renames the quarantined file `*.repaired` (kept: nothing is ever deleted). It prints,
    /// per segment, the records recovered and the byte ranges skipped, or why nothing could be
    /// recovered. It takes the data directory's LOCK: while an engine runs there it exits 3
    /// naming the engine's pid.
    Repair(RepairArgs),
}

/// A log name on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogSelect {
    /// Stored events of the realtime lane (critical, high).
    Realtime,
    /// Stored events of the transactional lane (medium).
    Transactional,
    /// Aggregates of the batch lane (low, batch).
    Batch,
    /// Dead letters with their reasons.
    DeadLetter,
    /// Every log, in the order above.
    All,
}

impl LogSelect {
    fn names(self) -> &'static [&'static str] {
        match self {
            LogSelect::Realtime => &LOG_NAMES[0..1],
            LogSelect::Transactional => &LOG_NAMES[1..2],
            LogSelect::Batch => &LOG_NAMES[2..3],
            LogSelect::DeadLetter => &LOG_NAMES[3..4],
            LogSelect::All => &LOG_NAMES,
        }
    }
}

/// The logs that hold events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ReplayLog {
    /// The realtime log.
    Realtime,
    /// The transactional log.
    Transactional,
    /// Both: realtime first, then transactional.
    All,
}

impl ReplayLog {
    fn names(self) -> &'static [&'static str] {
        match self {
            ReplayLog::Realtime => &LOG_NAMES[0..1],
            ReplayLog::Transactional => &LOG_NAMES[1..2],
            ReplayLog::All => &LOG_NAMES[0..2],
        }
    }
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// Which log to print.
    #[arg(long, value_enum, default_value_t = LogSelect::All)]
    log: LogSelect,
    /// The first offset to print, in each log (offsets count from 0 in every log).
    #[arg(long, value_name = "OFFSET", default_value_t = 0)]
    from: u64,
    /// Print at most this many records of each log (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 0)]
    limit: u64,
    /// One JSON object per line instead of text (payload in full, as hex, and as text when
    /// it is UTF-8).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// Which log to verify.
    #[arg(long, value_enum, default_value_t = LogSelect::All)]
    log: LogSelect,
    /// One JSON object per log instead of text: counts, quarantined files, and every problem
    /// with its kind (`damaged`, `torn_tail`, `undecodable`, `missing`, `unreadable`), file,
    /// byte range, offsets and cause.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ReplayArgs {
    /// The TCP address of the engine to send to (its `tcp.listen`), e.g. 127.0.0.1:7070.
    #[arg(long, value_name = "ADDR")]
    to: String,
    /// Which log's events to send (aggregates and dead letters are never replayed).
    #[arg(long, value_enum, default_value_t = ReplayLog::All)]
    log: ReplayLog,
    /// The first offset to send, in each log.
    #[arg(long, value_name = "OFFSET", default_value_t = 0)]
    from: u64,
    /// Stop before this offset, in each log (exclusive; default: to the end of the log).
    #[arg(long = "to-offset", value_name = "OFFSET")]
    to_offset: Option<u64>,
    /// Events per BATCH frame, 1 to 64 (a frame also stays within the server's largest frame,
    /// from its HELLO).
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    batch: u32,
    /// Give up when the server sends nothing for this many seconds while frames wait for
    /// their ACK (an engine with `engine.ack = "none"` never acknowledges).
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    ack_timeout: u64,
}

#[derive(Args, Debug)]
struct RepairArgs {
    /// Which log to repair.
    #[arg(long, value_enum, default_value_t = LogSelect::All)]
    log: LogSelect,
    /// Say what would be recovered and skipped; change nothing (the LOCK is only checked).
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args, Debug)]
struct TailArgs {
    /// Which log to follow.
    #[arg(long, value_enum, default_value_t = LogSelect::All)]
    log: LogSelect,
    /// Print only records appended from now on (default: print the records already stored
    /// first).
    #[arg(long)]
    from_end: bool,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs a log command.
pub fn main(args: &LogArgs) -> Result<(), Failure> {
    match &args.command {
        LogCommand::Inspect(a) => inspect(&args.dir, a),
        LogCommand::Verify(a) => verify(&args.dir, a),
        LogCommand::Replay(a) => replay(&args.dir, a),
        LogCommand::Tail(a) => tail(&args.dir, a),
        LogCommand::Repair(a) => repair(&args.dir, a),
    }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers

fn check_data_dir(dir: &Path) -> Result<(), Failure> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Failure::usage(format!(
            "{} is not a directory: pass the engine's data directory (storage.dir) with --dir",
            dir.display()
        ))),
        Err(e) => Err(Failure::usage(format!(
            "cannot read the data directory {}: {e}; pass the engine's data directory \
             (storage.dir) with --dir",
            dir.display()
        ))),
    }
}

/// Opens the log `name` below `dir`; `None` when its directory does not exist.
fn open_log(dir: &Path, name: &str) -> Result<Option<LogReader>, Failure> {
    let log_dir = dir.join(name);
    if !log_dir.is_dir() {
        return Ok(None);
    }
    LogReader::open(&log_dir)
        .map(Some)
        .map_err(|e| Failure::runtime(format!("cannot open the {name} log: {e}")))
}

/// Opens the logs `names`; a missing directory is an error when one log was named.
fn open_logs(
    dir: &Path,
    names: &'static [&'static str],
) -> Result<Vec<(&'static str, LogReader)>, Failure> {
    check_data_dir(dir)?;
    let mut out = Vec::with_capacity(names.len());
    for &name in names {
        match open_log(dir, name)? {
            Some(r) => out.push((name, r)),
            None if names.len() == 1 => {
                return Err(Failure::usage(format!(
                    "{} does not exist: the engine has not written the {name} log in this data \
                     directory",
                    dir.join(name).display()
                )));
            }
            None => {}
        }
    }
    Ok(out)
}

/// A write to stdout that stops quietly when the reader went away (`| head`).
enum Out {
    Go,
    Closed,
}

fn emit(out: &mut impl Write, line: &str) -> Result<Out, Failure> {
    match writeln!(out, "{line}") {
        Ok(()) => Ok(Out::Go),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Out::Closed),
        Err(e) => Err(Failure::runtime(format!("cannot write to stdout: {e}"))),
    }
}

fn flush(out: &mut impl Write) -> Result<Out, Failure> {
    match out.flush() {
        Ok(()) => Ok(Out::Go),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Out::Closed),
        Err(e) => Err(Failure::runtime(format!("cannot write to stdout: {e}"))),
    }
}

fn priority_name(p: Priority) -> &'static str {
    match p {
        Priority::Critical => "critical",
        Priority::High => "high",
        Priority::Medium => "medium",
        Priority::Low => "low",
        Priority::Batch => "batch",
    }
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        record::KIND_EVENT | record::KIND_PRODUCER_EVENT => "event",
        record::KIND_DEAD_LETTER | record::KIND_PRODUCER_DEAD_LETTER => "dead-letter",
        record::KIND_AGGREGATE => "aggregate",
        _ => "unknown",
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Bytes of payload shown in a text line.
const PREVIEW_CHARS: usize = 32;
const PREVIEW_HEX_BYTES: usize = 16;

/// A short preview: quoted text when the payload is printable UTF-8, else hex.
fn preview(payload: &[u8]) -> String {
    if payload.is_empty() {
        return "-".to_owned();
    }
    match std::str::from_utf8(payload) {
        Ok(s) if !s.chars().any(char::is_control) => {
            let shown: String = s.chars().take(PREVIEW_CHARS).collect();
            let more = if shown.len() < s.len() { "..." } else { "" };
            format!("{shown:?}{more}")
        }
        _ => {
            let n = payload.len().min(PREVIEW_HEX_BYTES);
            let more = if n < payload.len() { "..." } else { "" };
            format!("0x{}{more}", hex(&payload[..n]))
        }
    }
}

fn value_text(h: &EventHeader) -> String {
    h.value()
        .map_or_else(|| "none".to_owned(), |v| v.to_string())
}

/// A JSON object written by hand: keys are literals, strings are escaped.
struct Json(String);

impl Json {
    fn new() -> Self {
        Json(String::from("{"))
    }

    fn key(&mut self, k: &str) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        json_string(&mut self.0, k);
        self.0.push(':');
    }

    fn str(&mut self, k: &str, v: &str) -> &mut Self {
        self.key(k);
        json_string(&mut self.0, v);
        self
    }

    fn num(&mut self, k: &str, v: impl fmt::Display) -> &mut Self {
        self.key(k);
        let _ = write!(self.0, "{v}");
        self
    }

    /// `v` as it is: already JSON.
    fn raw(&mut self, k: &str, v: &str) -> &mut Self {
        self.key(k);
        self.0.push_str(v);
        self
    }

    fn null(&mut self, k: &str) -> &mut Self {
        self.key(k);
        self.0.push_str("null");
        self
    }

    fn finish(&mut self) -> String {
        self.0.push('}');
        std::mem::take(&mut self.0)
    }
}

/// One record as a line of text or JSON; the error when its body does not decode.
fn format_record(log: &str, rec: &StoredRecord, json: bool) -> (String, Option<RecordError>) {
    let decoded = record::decode(rec.kind, &rec.body);
    let line = if json {
        json_record(log, rec, &decoded)
    } else {
        text_record(log, rec, &decoded)
    };
    (line, decoded.err())
}

fn text_record(
    log: &str,
    rec: &StoredRecord,
    decoded: &Result<RecordBody<'_>, RecordError>,
) -> String {
    let head = format!("{log} {} {}", rec.offset, kind_name(rec.kind));
    match decoded {
        Ok(RecordBody::Event(e)) => {
            let h = &e.header;
            format!(
                "{head} id={} topic={} priority={} lane={} source={} seq={}{} received={} \
                 timestamp={} value={} payload={}B {}",
                h.id,
                h.topic,
                priority_name(h.priority),
                e.lane.name(),
                e.origin.source,
                e.origin.seq,
                producer_text(&e.origin),
                e.received,
                h.timestamp,
                value_text(h),
                e.payload.len(),
                preview(e.payload)
            )
        }
        Ok(RecordBody::Aggregate(a)) => format!(
            "{head} topic={} window=[{},{}) count={} bytes={} values={} min={} max={} sum={}",
            a.topic, a.start, a.end, a.count, a.bytes, a.values, a.min, a.max, a.sum
        ),
        Ok(RecordBody::DeadLetter(d)) => format!(
            "{head} reason={}({}) id={} topic={} priority={} source={} seq={}{} tick={} \
             events={} timestamp={} value={}",
            d.reason.name(),
            d.reason.code(),
            d.header.id,
            d.header.topic,
            priority_name(d.header.priority),
            d.origin.source,
            d.origin.seq,
            producer_text(&d.origin),
            d.tick,
            d.events,
            d.header.timestamp,
            value_text(&d.header)
        ),
        Err(e) => format!(
            "{head} kind={} body={}B UNDECODABLE: {e}",
            rec.kind,
            rec.body.len()
        ),
    }
}

/// ` index=I producer=P epoch=E resolved=R` for a producer session's record, nothing
/// otherwise.
fn producer_text(o: &Origin) -> String {
    if o.producer == 0 {
        return String::new();
    }
    format!(
        " index={} producer={} epoch={} resolved={}",
        o.index,
        o.producer,
        o.epoch,
        o.resolved()
    )
}

fn json_record(
    log: &str,
    rec: &StoredRecord,
    decoded: &Result<RecordBody<'_>, RecordError>,
) -> String {
    let mut j = Json::new();
    j.str("log", log)
        .num("offset", rec.offset)
        .str("kind", kind_name(rec.kind));
    let header = |j: &mut Json, h: &EventHeader| {
        j.num("id", h.id)
            .num("topic", h.topic)
            .str("priority", priority_name(h.priority))
            .num("timestamp", h.timestamp);
        match h.value() {
            Some(v) => j.num("value", v),
            None => j.null("value"),
        };
    };
    match decoded {
        Ok(RecordBody::Event(e)) => {
            header(&mut j, &e.header);
            j.str("lane", e.lane.name())
                .num("source", e.origin.source)
                .num("seq", e.origin.seq)
                .num("index", e.origin.index)
                .num("producer", e.origin.producer)
                .num("epoch", e.origin.epoch)
                .num("resolved", e.origin.resolved())
                .num("received", e.received)
                .num("payload_len", e.payload.len())
                .str("payload_hex", &hex(e.payload));
            match std::str::from_utf8(e.payload) {
                Ok(s) => j.str("payload_utf8", s),
                Err(_) => j.null("payload_utf8"),
            };
        }
        Ok(RecordBody::Aggregate(a)) => {
            j.num("topic", a.topic)
                .num("window_start", a.start)
                .num("window_end", a.end)
                .num("count", a.count)
                .num("bytes", a.bytes)
                .num("values", a.values)
                .num("min", a.min)
                .num("max", a.max)
                .num("sum", a.sum);
        }
        Ok(RecordBody::DeadLetter(d)) => {
            j.str("reason", d.reason.name())
                .num("reason_code", d.reason.code());
            header(&mut j, &d.header);
            j.num("source", d.origin.source)
                .num("seq", d.origin.seq)
                .num("index", d.origin.index)
                .num("producer", d.origin.producer)
                .num("epoch", d.origin.epoch)
                .num("resolved", d.origin.resolved())
                .num("tick", d.tick)
                .num("events", d.events);
        }
        Err(e) => {
            j.num("kind_code", rec.kind)
                .num("body_len", rec.body.len())
                .str("error", &e.to_string());
        }
    }
    j.finish()
}

/// `name: <storage error>` on stderr.
fn report_damage(name: &str, e: &StorageError) {
    eprintln!("pinstream: {name} log: {e}");
}

// ---------------------------------------------------------------------------------------------
// inspect

fn inspect(dir: &Path, args: &InspectArgs) -> Result<(), Failure> {
    let logs = open_logs(dir, args.log.names())?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut problems = 0u64;
    'logs: for (name, mut reader) in logs {
        reader
            .seek(args.from)
            .map_err(|e| Failure::runtime(format!("cannot read the {name} log: {e}")))?;
        let mut printed = 0u64;
        while args.limit == 0 || printed < args.limit {
            match reader.next_record() {
                None => break,
                Some(Ok(rec)) => {
                    let (line, err) = format_record(name, &rec, args.json);
                    if let Some(e) = err {
                        problems += 1;
                        eprintln!(
                            "pinstream: {name} log: the record at offset {} passes its CRC but \
                             does not decode: {e}",
                            rec.offset
                        );
                    }
                    if let Out::Closed = emit(&mut out, &line)? {
                        break 'logs;
                    }
                    printed += 1;
                }
                Some(Err(e @ StorageError::Corrupt { .. })) => {
                    problems += 1;
                    report_damage(name, &e);
                }
                Some(Err(e)) => {
                    return Err(Failure::runtime(format!("cannot read the {name} log: {e}")));
                }
            }
        }
    }
    flush(&mut out)?;
    if problems > 0 {
        return Err(Failure::runtime(format!(
            "{problems} damaged or undecodable record(s) (above); `pinstream log verify` \
             reports every one with its file and position"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// verify

/// A segment file as verify sees it.
#[derive(Debug)]
struct Segment {
    base: u64,
    path: PathBuf,
    len: u64,
}

/// The segments (ascending) and quarantined files of a log directory.
fn list_files(dir: &Path) -> Result<(Vec<Segment>, Vec<QuarantinedFile>), Failure> {
    let fail = |e: io::Error| Failure::runtime(format!("cannot list {}: {e}", dir.display()));
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(fail)? {
        let entry = entry.map_err(fail)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = parse_segment_name(name) {
            let path = entry.path();
            // An unstatable segment is reported as unreadable below, by name.
            let len = entry.metadata().map_or(0, |m| m.len());
            segments.push(Segment { base, path, len });
        }
    }
    segments.sort_unstable_by_key(|s| s.base);
    let quarantined = quarantined_files(dir)
        .map_err(|e| Failure::runtime(format!("cannot list {}: {e}", dir.display())))?;
    Ok((segments, quarantined))
}

/// One damaged place verify found.
#[derive(Debug)]
struct Problem {
    /// `damaged`, `torn_tail`, `undecodable`, `missing` or `unreadable`.
    kind: &'static str,
    file: PathBuf,
    /// The bytes of `file` concerned.
    bytes: Option<Range<u64>>,
    /// The offsets concerned (lost, missing, or the one undecodable record).
    offsets: Option<Range<u64>>,
    why: String,
}

impl Problem {
    fn text(&self) -> String {
        let file = self.file.display();
        let offsets = |o: &Range<u64>| match o.end - o.start {
            0 => String::new(),
            1 => format!(", offset {} lost", o.start),
            n => format!(", offsets {}..={} ({n}) lost", o.start, o.end - 1),
        };
        match (self.kind, &self.bytes, &self.offsets) {
            ("torn_tail", Some(b), _) => format!(
                "{file} at byte {}: {} byte(s) after the last whole record: an incomplete \
                 record (a torn tail: `pinstream run` truncates it when it starts, or a record \
                 the running engine is writing)",
                b.start,
                b.end - b.start
            ),
            ("missing", _, Some(o)) => format!(
                "{file}: MISSING offsets {}..={} ({} record(s)): {}",
                o.start,
                o.end - 1,
                o.end - o.start,
                self.why
            ),
            ("undecodable", Some(b), Some(o)) => format!(
                "{file} at byte {}: the record at offset {} passes its CRC but does not \
                 decode: {}",
                b.start, o.start, self.why
            ),
            (_, Some(b), o) => format!(
                "{file} at byte {}: {} ({} byte(s) up to byte {}{})",
                b.start,
                self.why,
                b.end - b.start,
                b.end,
                o.as_ref().map(offsets).unwrap_or_default()
            ),
            (_, None, _) => format!("{file}: {}", self.why),
        }
    }

    fn json(&self) -> String {
        let mut j = Json::new();
        j.str("kind", self.kind)
            .str("file", &self.file.display().to_string());
        match &self.bytes {
            Some(b) => j.num("position", b.start).num("end", b.end),
            None => j.null("position").null("end"),
        };
        match &self.offsets {
            Some(o) => j.num("first_offset", o.start).num("end_offset", o.end),
            None => j.null("first_offset").null("end_offset"),
        };
        j.str("why", &self.why).finish()
    }
}

/// What verify found in one log.
#[derive(Debug, Default)]
struct LogCheck {
    segments: usize,
    records: u64,
    bytes: u64,
    first: Option<u64>,
    last: Option<u64>,
    quarantined: Vec<QuarantinedFile>,
    problems: Vec<Problem>,
}

/// Reads every segment of the log in `dir` with [`check_segment`]: every damaged region of
/// every segment (it resynchronises at the next CRC-valid record), offsets missing between
/// segments that no quarantined file accounts for, unreadable segments by name.
fn verify_log(dir: &Path) -> Result<LogCheck, Failure> {
    let (segments, quarantined) = list_files(dir)?;
    let q_bases: Vec<u64> = quarantined.iter().map(|q| q.base).collect();
    let accounted = |from: u64, to: u64| q_bases.iter().any(|&q| from <= q && q < to);
    let mut check = LogCheck {
        quarantined,
        segments: segments.len(),
        bytes: segments.iter().map(|s| s.len).sum(),
        ..LogCheck::default()
    };
    let last = segments.len().saturating_sub(1);
    // The segment before, its base and the offset after its last record.
    let mut prev: Option<(&Segment, u64)> = None;
    for (i, seg) in segments.iter().enumerate() {
        if let Some((p, end)) = prev {
            if end < seg.base && !accounted(p.base, seg.base) {
                check.problems.push(Problem {
                    kind: "missing",
                    file: p.path.clone(),
                    bytes: None,
                    offsets: Some(end..seg.base),
                    why: format!(
                        "not in it nor in the next segment, {}, and no quarantined file \
                         accounts for them (a segment deleted, emptied or cut?)",
                        seg.path.display()
                    ),
                });
            }
        }
        let mut undecodable = Vec::new();
        let result = check_segment(
            &seg.path,
            seg.base,
            MAX_RECORD_LIMIT,
            |pos, offset, kind, body| {
                if let Some(Err(e)) = body.map(|b| record::decode(kind, b)) {
                    undecodable.push(Problem {
                        kind: "undecodable",
                        file: seg.path.clone(),
                        bytes: Some(
                            pos..pos + (RECORD_HEADER_LEN + body.map_or(0, <[u8]>::len)) as u64,
                        ),
                        offsets: Some(offset..offset + 1),
                        why: e.to_string(),
                    });
                }
            },
        );
        let c = match result {
            Ok(c) => c,
            Err(e) => {
                check.problems.push(Problem {
                    kind: "unreadable",
                    file: seg.path.clone(),
                    bytes: None,
                    offsets: None,
                    why: format!("cannot be read: {e}"),
                });
                prev = None;
                continue;
            }
        };
        check.records += c.records;
        if check.first.is_none() {
            check.first = c.first_offset;
        }
        check.last = c.last_offset.or(check.last);
        check.problems.extend(undecodable);
        for d in &c.damage {
            let torn = i == last && d.at_end && d.why == "record runs past the end of the file";
            check.problems.push(Problem {
                kind: if torn { "torn_tail" } else { "damaged" },
                file: seg.path.clone(),
                bytes: Some(d.bytes.clone()),
                offsets: (!d.offsets.is_empty()).then(|| d.offsets.clone()),
                why: d.why.to_owned(),
            });
        }
        prev = Some((seg, c.next_offset));
    }
    Ok(check)
}

/// The directory of log `name` in `dir`, or `None` (said on stdout when `say`) when the
/// engine never wrote that log and all logs were asked for.
///
/// # Errors
/// A usage error when the one log asked for does not exist.
fn selected_log_dir(
    dir: &Path,
    name: &str,
    select: LogSelect,
    say: bool,
) -> Result<Option<PathBuf>, Failure> {
    let log_dir = dir.join(name);
    if log_dir.is_dir() {
        return Ok(Some(log_dir));
    }
    if select != LogSelect::All {
        return Err(Failure::usage(format!(
            "{} does not exist: the engine has not written the {name} log in this data \
             directory",
            log_dir.display()
        )));
    }
    if say {
        println!("{name}: no directory {} (never written)", log_dir.display());
    }
    Ok(None)
}

fn verify(dir: &Path, args: &VerifyArgs) -> Result<(), Failure> {
    check_data_dir(dir)?;
    let mut problems = Vec::new();
    for &name in args.log.names() {
        let Some(log_dir) = selected_log_dir(dir, name, args.log, !args.json)? else {
            if args.json {
                let mut j = Json::new();
                j.str("log", name)
                    .str("dir", &dir.join(name).display().to_string())
                    .str("status", "never written");
                println!("{}", j.finish());
            }
            continue;
        };
        let c = verify_log(&log_dir)?;
        let repaired = c
            .quarantined
            .iter()
            .filter(|q| q.state == QuarantineState::Repaired)
            .count();
        if args.json {
            println!("{}", verify_json(name, &log_dir, &c, repaired));
        } else {
            verify_text(name, &c, repaired);
        }
        problems.extend(c.problems.iter().map(|p| format!("{name}: {}", p.text())));
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Failure::runtime(format!(
        "log verify found {} damaged place(s), first: {} (nothing was changed; `pinstream run` \
         truncates a torn tail and quarantines a damaged segment when it starts)",
        problems.len(),
        problems[0]
    )))
}

fn quarantine_text(state: QuarantineState) -> &'static str {
    match state {
        QuarantineState::Quarantined => {
            "quarantined by an earlier recovery (kept, not read; `pinstream log repair` recovers \
             its intact records)"
        }
        QuarantineState::Repairing => {
            "quarantined, its repair was interrupted (kept, not read; see `pinstream log repair`)"
        }
        QuarantineState::Repaired => {
            "quarantined, its intact records re-appended by `pinstream log repair` (kept, not \
             read)"
        }
    }
}

fn verify_text(name: &str, c: &LogCheck, repaired: usize) {
    let offsets = match (c.first, c.last) {
        (Some(f), Some(l)) => format!("offsets {f}..={l}"),
        _ => "no records".to_owned(),
    };
    let verdict = if c.problems.is_empty() {
        "clean".to_owned()
    } else {
        format!("DAMAGED ({} problem(s))", c.problems.len())
    };
    let also = if repaired > 0 {
        format!(" ({repaired} repaired)")
    } else {
        String::new()
    };
    println!(
        "{name}: {} segment(s), {} record(s), {} byte(s), {offsets}, {} quarantined \
         segment(s){also}: {verdict}",
        c.segments,
        c.records,
        c.bytes,
        c.quarantined.len() - repaired
    );
    for q in &c.quarantined {
        println!("  {}: {}", quarantine_text(q.state), q.path.display());
    }
    for p in &c.problems {
        println!("  DAMAGED {}", p.text());
    }
}

/// One JSON object per log: the counts, the quarantined files and every problem.
fn verify_json(name: &str, dir: &Path, c: &LogCheck, repaired: usize) -> String {
    let quarantined: Vec<String> = c
        .quarantined
        .iter()
        .map(|q| {
            let state = match q.state {
                QuarantineState::Quarantined => "quarantined",
                QuarantineState::Repairing => "repairing",
                QuarantineState::Repaired => "repaired",
            };
            let mut j = Json::new();
            j.str("file", &q.path.display().to_string())
                .num("base", q.base)
                .str("state", state)
                .finish()
        })
        .collect();
    let problems: Vec<String> = c.problems.iter().map(Problem::json).collect();
    let mut j = Json::new();
    j.str("log", name)
        .str("dir", &dir.display().to_string())
        .str(
            "status",
            if c.problems.is_empty() {
                "clean"
            } else {
                "damaged"
            },
        )
        .num("segments", c.segments)
        .num("records", c.records)
        .num("bytes", c.bytes);
    match c.first {
        Some(f) => j.num("first_offset", f),
        None => j.null("first_offset"),
    };
    match c.last {
        Some(l) => j.num("last_offset", l),
        None => j.null("last_offset"),
    };
    j.num("repaired", repaired)
        .raw("quarantined", &format!("[{}]", quarantined.join(",")))
        .raw("problems", &format!("[{}]", problems.join(",")))
        .finish()
}

// ---------------------------------------------------------------------------------------------
// replay

/// Frames sent and not yet acknowledged at most: well within the server's default credit
/// (`tcp.inflight_frames` 1024, `tcp.inflight_events` 65 536 = 1024 frames of 64).
const REPLAY_WINDOW: usize = 64;

/// The largest frame replay builds, whatever the server offers.
const REPLAY_MAX_FRAME: usize = 1 << 20;

/// The producer session replay sends through, and what it sent.
struct Sender {
    addr: SocketAddr,
    producer: Producer,
    events_sent: u64,
    /// The first seq of this session (frames sent = next seq - first).
    first_seq: u64,
    totals: Totals,
    /// REJECT frames by reason code.
    notices: BTreeMap<u16, u64>,
}

impl Sender {
    fn connect(target: &str, batch: u32, timeout: Duration) -> Result<Self, Failure> {
        let addrs: Vec<SocketAddr> = target
            .to_socket_addrs()
            .map_err(|e| {
                Failure::usage(format!(
                    "--to {target:?} is not a host:port address (e.g. 127.0.0.1:7070): {e}"
                ))
            })?
            .collect();
        let options = ProducerOptions {
            max_batch: batch as usize,
            max_frame_len: REPLAY_MAX_FRAME,
            window: REPLAY_WINDOW,
            timeout,
            ..ProducerOptions::default()
        };
        let mut last_err = None;
        for addr in addrs {
            match Producer::connect(addr, options) {
                Ok(producer) => {
                    return Ok(Sender {
                        addr,
                        first_seq: producer.next_seq(),
                        producer,
                        events_sent: 0,
                        totals: Totals::default(),
                        notices: BTreeMap::new(),
                    });
                }
                Err(e) => last_err = Some(e.to_string()),
            }
        }
        Err(Failure::runtime(format!(
            "cannot replay to {target}: {} (is the engine running and is this its tcp.listen \
             address?)",
            last_err.unwrap_or_else(|| "the name resolves to no address".into())
        )))
    }

    /// Adds one event (a frame goes out when it is full).
    fn push(
        &mut self,
        log: &str,
        offset: u64,
        h: EventHeader,
        payload: &[u8],
    ) -> Result<(), Failure> {
        let need = HEADER_LEN + BATCH_PREFIX_LEN + TRAILER_LEN + EVENT_RECORD_LEN + payload.len();
        if need > self.producer.max_frame_len() {
            return Err(Failure::runtime(format!(
                "the {log} event at offset {offset} has a {}-byte payload: a frame holding it \
                 would pass {}'s largest frame of {} bytes",
                payload.len(),
                self.addr,
                self.producer.max_frame_len()
            )));
        }
        self.producer
            .push(&h, payload)
            .map_err(|e| self.failed(&e))?;
        self.events_sent += 1;
        Ok(())
    }

    /// Sends what is staged and waits for every acknowledgement.
    fn finish(&mut self) -> Result<(), Failure> {
        let flushed = self.producer.flush();
        for r in self.producer.take_rejects() {
            *self.notices.entry(r.reason).or_default() += 1;
        }
        self.totals = flushed.map_err(|e| self.failed(&e))?;
        Ok(())
    }

    /// Frames sent in this session.
    fn frames(&self) -> u64 {
        self.producer.next_seq() - self.first_seq
    }

    fn failed(&self, e: &io::Error) -> Failure {
        let t = self.producer.totals();
        Failure::runtime(format!(
            "replaying to {} failed after {} event(s) were sent ({} stored, {} duplicate(s), \
             {} dead-lettered, {} rejected acknowledged so far): {e}; does it run with \
             engine.ack = \"none\"? raise --ack-timeout if it is only slow",
            self.addr, self.events_sent, t.stored, t.duplicates, t.dead_lettered, t.rejected
        ))
    }
}

fn reason_text(code: u16) -> String {
    match Reason::from_code(code) {
        Some(r) => format!("{} ({code})", r.name()),
        None if code < 32 => format!("unknown rejection ({code})"),
        None => format!("unknown dead-letter reason ({code})"),
    }
}

fn replay(dir: &Path, args: &ReplayArgs) -> Result<(), Failure> {
    if let Some(to) = args.to_offset {
        if to <= args.from {
            return Err(Failure::usage(format!(
                "--to-offset {to} is not above --from {}: the range [from, to-offset) is empty",
                args.from
            )));
        }
    }
    let logs = open_logs(dir, args.log.names())?;
    let timeout = Duration::from_secs(args.ack_timeout);
    let mut sender = Sender::connect(&args.to, args.batch, timeout)?;
    let mut damaged = 0u64;
    for (name, mut reader) in logs {
        reader
            .seek(args.from)
            .map_err(|e| Failure::runtime(format!("cannot read the {name} log: {e}")))?;
        let (mut count, mut first, mut last) = (0u64, None, None);
        loop {
            let rec = match reader.next_record() {
                None => break,
                Some(Ok(rec)) => rec,
                Some(Err(e @ StorageError::Corrupt { .. })) => {
                    damaged += 1;
                    report_damage(name, &e);
                    continue;
                }
                Some(Err(e)) => {
                    return Err(Failure::runtime(format!("cannot read the {name} log: {e}")));
                }
            };
            if args.to_offset.is_some_and(|to| rec.offset >= to) {
                break;
            }
            match record::decode(rec.kind, &rec.body) {
                Ok(RecordBody::Event(e)) => {
                    sender.push(name, rec.offset, e.header, e.payload)?;
                    count += 1;
                    first.get_or_insert(rec.offset);
                    last = Some(rec.offset);
                }
                Ok(_) => {
                    eprintln!(
                        "pinstream: {name} log: the record at offset {} is a {}, not an event: \
                         not replayed",
                        rec.offset,
                        kind_name(rec.kind)
                    );
                }
                Err(e) => {
                    damaged += 1;
                    eprintln!(
                        "pinstream: {name} log: the record at offset {} does not decode: {e}",
                        rec.offset
                    );
                }
            }
        }
        match (first, last) {
            (Some(f), Some(l)) => println!("{name}: {count} event(s), offsets {f}..={l}"),
            _ => println!("{name}: no events in the range"),
        }
    }
    sender.finish()?;
    let a = sender.totals;
    println!(
        "sent {} event(s) in {} frame(s) to {} (its largest frame: {} bytes)",
        sender.events_sent,
        sender.frames(),
        sender.addr,
        sender.producer.max_frame_len()
    );
    println!(
        "acknowledged there: {} stored, {} dead-lettered, {} rejected, {} duplicate(s) (it had \
         them already)",
        a.stored, a.dead_lettered, a.rejected, a.duplicates
    );
    if !sender.notices.is_empty() {
        let list: Vec<String> = sender
            .notices
            .iter()
            .map(|(&code, n)| format!("{} x{n}", reason_text(code)))
            .collect();
        println!("REJECT frames received: {}", list.join(", "));
    }
    if damaged > 0 {
        return Err(Failure::runtime(format!(
            "{damaged} damaged stretch(es) or record(s) were skipped (above); run `pinstream log \
             verify`"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// repair

fn repair(dir: &Path, args: &RepairArgs) -> Result<(), Failure> {
    check_data_dir(dir)?;
    // A segment repair creates is the owner's only, as the engine's are by default.
    pinstream_host::storage::set_process_umask(0o077);
    let locked = |e: StorageError| match e {
        StorageError::Locked { .. } => Failure::start(format!(
            "{e}; `pinstream log repair` needs the engine stopped"
        )),
        other => Failure::runtime(format!("cannot lock {}: {other}", dir.display())),
    };
    // Held until the end of the repair; a dry run only checks, so it leaves no trace.
    let _lock = if args.dry_run {
        DataDirLock::check_free(dir).map_err(locked)?;
        None
    } else {
        Some(DataDirLock::acquire(dir).map_err(locked)?)
    };
    let mut recovered = 0usize;
    let mut more = false;
    for &name in args.log.names() {
        let Some(log_dir) = selected_log_dir(dir, name, args.log, true)? else {
            continue;
        };
        let report = repair_log(&log_dir, args.dry_run)
            .map_err(|e| Failure::runtime(format!("repair of the {name} log failed: {e}")))?;
        if let Some(r) = &report.recovery {
            println!("{name}: opened to append: {r}");
            more |= !r.quarantined.is_empty();
        }
        if report.segments.is_empty() {
            println!("{name}: no quarantined segment");
        }
        for s in &report.segments {
            println!("{name}: {s}");
        }
        recovered += report.records_recovered();
    }
    if args.dry_run {
        println!("dry run: {recovered} record(s) would be recovered; nothing was changed");
    } else {
        println!("repair done: {recovered} record(s) recovered");
    }
    if more {
        println!(
            "recovery quarantined more segments when the logs were opened (above): run \
             `pinstream log repair` again for them"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// tail

/// How often tail looks for new records.
const TAIL_POLL: Duration = Duration::from_millis(100);

/// One followed log.
struct Followed {
    name: &'static str,
    dir: PathBuf,
    reader: Option<LogReader>,
}

impl Followed {
    /// Opens the reader once the directory exists; with `skip`, positions it after the
    /// records stored so far.
    fn open(&mut self, skip: bool) -> Result<(), Failure> {
        if self.reader.is_some() || !self.dir.is_dir() {
            return Ok(());
        }
        let fail =
            |e: StorageError| Failure::runtime(format!("cannot open the {} log: {e}", self.name));
        let mut reader = LogReader::open(&self.dir).map_err(fail)?;
        if skip {
            let (segments, _) = list_files(&self.dir)?;
            if let Some(last) = segments.last() {
                reader.seek(last.base).map_err(fail)?;
            }
            while let Some(r) = reader.next_record() {
                if let Err(e @ StorageError::Corrupt { .. }) = &r {
                    report_damage(self.name, e);
                } else {
                    r.map_err(fail)?;
                }
            }
        }
        self.reader = Some(reader);
        Ok(())
    }
}

fn tail(dir: &Path, args: &TailArgs) -> Result<(), Failure> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|e| Failure::runtime(format!("cannot handle signal {signal}: {e}")))?;
    }
    let mut logs: Vec<Followed> = args
        .log
        .names()
        .iter()
        .map(|&name| Followed {
            name,
            dir: dir.join(name),
            reader: None,
        })
        .collect();
    for f in &mut logs {
        f.open(args.from_end)?;
    }
    let waiting: Vec<&str> = logs
        .iter()
        .filter(|f| f.reader.is_none())
        .map(|f| f.name)
        .collect();
    let names: Vec<&str> = logs.iter().map(|f| f.name).collect();
    eprintln!(
        "pinstream: following {} in {} from {}; Ctrl-C stops",
        names.join(", "),
        dir.display(),
        if args.from_end {
            "the end"
        } else {
            "the start"
        }
    );
    if !waiting.is_empty() {
        eprintln!(
            "pinstream: waiting for {} to appear (not written yet)",
            waiting.join(", ")
        );
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    while !stop.load(Ordering::Relaxed) {
        for f in &mut logs {
            // A log that appears later is new: every record in it is printed.
            f.open(false)?;
            let Some(reader) = f.reader.as_mut() else {
                continue;
            };
            while let Some(r) = reader.next_record() {
                match r {
                    Ok(rec) => {
                        let (line, _) = format_record(f.name, &rec, args.json);
                        if let Out::Closed = emit(&mut out, &line)? {
                            return Ok(());
                        }
                    }
                    Err(e @ StorageError::Corrupt { .. }) => report_damage(f.name, &e),
                    Err(e) => {
                        return Err(Failure::runtime(format!(
                            "cannot read the {} log: {e}",
                            f.name
                        )));
                    }
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        }
        if let Out::Closed = flush(&mut out)? {
            return Ok(());
        }
        thread::sleep(TAIL_POLL);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        json_string(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(s, "\"a\\\"b\\\\c\\nd\\u0001é\"");
        let line = Json::new().str("k", "v").num("n", -3).null("z").finish();
        assert_eq!(line, r#"{"k":"v","n":-3,"z":null}"#);
    }

    #[test]
    fn previews_text_or_hex() {
        assert_eq!(preview(b""), "-");
        assert_eq!(preview(b"hot"), "\"hot\"");
        assert_eq!(preview(&[0, 1, 0xff]), "0x0001ff");
        assert_eq!(preview(&[7u8; 20]), format!("0x{}...", "07".repeat(16)));
        let long = "x".repeat(40);
        assert_eq!(
            preview(long.as_bytes()),
            format!("\"{}\"...", "x".repeat(32))
        );
    }
}
