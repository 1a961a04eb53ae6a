//! `pinstream log`: read the engine's logs offline or while it runs.
//!
//! The engine keeps five logs below its data directory (`storage.dir`): `realtime/`,
//! `transactional/` and `batch/` (one record per stored event of the lane; `batch/` holds
//! none under `pipeline.batch_store = "aggregates"`), `dead-letter/` (one record per dead
//! letter, with its reason) and `aggregates/` (one aggregate of the batch lane per topic and
//! window; data directories written before it existed hold their aggregates in `batch/`),
//! named in
//! [`storage::layout`](pinstream_host::storage::layout). Every command here but `repair`
//! reads them through [`LogReader`](pinstream_host::storage::LogReader), which opens files
//! read-only, checks the CRC of every record, runs no recovery, takes no lock and modifies
//! nothing.
//!
//! One file per command, over [`open`] (opening logs, listing their files) and [`render`]
//! (a record as a line of text or JSON).
//!
//! | command | what it does |
//! | --- | --- |
//! | `inspect` | prints records, one line each (text or JSON) |
//! | `verify` | reads every record of every segment, reports segments, records, bytes, offsets, quarantined segments, every damaged region, missing offsets and unreadable segments, as text or JSON (exit 1 when damaged) |
//! | `replay` | sends the stored events of a range to another engine as BATCH frames and reports its ACK |
//! | `tail` | follows logs while the engine writes them, until Ctrl-C |
//! | `repair` | with the engine stopped (it takes the data directory's LOCK), re-appends the intact records of quarantined segments ([`repair_log`](pinstream_host::storage::repair_log)) |

mod inspect;
mod open;
pub(crate) mod render;
mod repair;
mod replay;
mod tail;
mod verify;

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use pinstream_host::storage::LogId;

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
    /// `realtime/`, `transactional/`, `batch/`, `dead-letter/` and `aggregates/`
    /// subdirectories.
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
    /// Events of the realtime, transactional and batch logs are sent as BATCH frames (HELLO
    /// first, seqs 1, 2, 3, …), keeping their ids, topics, priorities, timestamps, values and
    /// payloads; the command waits for the ACK of the last frame and prints how many events
    /// the other engine stored, dead-lettered and rejected. Aggregates (the aggregates log,
    /// or the batch log of a data directory written before it existed) and dead letters are
    /// not replayed: they are not events (a dead letter keeps no payload). With `--log all`
    /// the realtime log is sent first, then the transactional one (the batch log only when
    /// named).
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
    /// Stored events of the batch lane (low, batch).
    Batch,
    /// Dead letters with their reasons.
    DeadLetter,
    /// Aggregates of the batch lane, one per topic and window.
    Aggregates,
    /// Every log, in the order above.
    All,
}

impl LogSelect {
    /// The names of the logs it selects, in [`LogId::ALL`] order.
    fn names(self) -> Vec<&'static str> {
        let logs: &[LogId] = match self {
            LogSelect::Realtime => &[LogId::Realtime],
            LogSelect::Transactional => &[LogId::Transactional],
            LogSelect::Batch => &[LogId::Batch],
            LogSelect::DeadLetter => &[LogId::DeadLetter],
            LogSelect::Aggregates => &[LogId::Aggregates],
            LogSelect::All => &LogId::ALL,
        };
        logs.iter().map(|log| log.name()).collect()
    }
}

/// The logs that hold events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ReplayLog {
    /// The realtime log.
    Realtime,
    /// The transactional log.
    Transactional,
    /// The batch log (its aggregates, in a data directory written before they had their
    /// own log, are skipped).
    Batch,
    /// Realtime first, then transactional (not batch: name it).
    All,
}

impl ReplayLog {
    /// The names of the logs it selects, realtime first.
    fn names(self) -> Vec<&'static str> {
        let logs: &[LogId] = match self {
            ReplayLog::Realtime => &[LogId::Realtime],
            ReplayLog::Transactional => &[LogId::Transactional],
            ReplayLog::Batch => &[LogId::Batch],
            ReplayLog::All => &[LogId::Realtime, LogId::Transactional],
        };
        logs.iter().map(|log| log.name()).collect()
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
    /// The authentication token the HELLO carries, for an engine with tcp.auth = "token".
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
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
        LogCommand::Inspect(a) => inspect::run(&args.dir, a),
        LogCommand::Verify(a) => verify::run(&args.dir, a),
        LogCommand::Replay(a) => replay::run(&args.dir, a),
        LogCommand::Tail(a) => tail::run(&args.dir, a),
        LogCommand::Repair(a) => repair::run(&args.dir, a),
    }
}
