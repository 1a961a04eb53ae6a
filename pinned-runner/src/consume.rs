//! `pinstream consume`: reads one of a running engine's logs over its consumer listener
//! (protocol version 3, `docs/PROTOCOL.md` §12) and prints each record as a JSON line.
//!
//! The reading is [`pinstream_client::Consumer`]; the lines are the log tools' one JSON
//! rendering of stored records ([`crate::log::render::json_record_line`]), with the payload
//! as a string (or `payload_base64`) so that the lines can be fed to `pinstream publish`.
//! Exit codes: 2 for bad flags, 1 when the engine cannot be reached, refuses the
//! subscription or sends damaged records.

use std::io::{self, BufWriter, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pinstream_client::{Consumer, ConsumerOptions};
use pinstream_core::wire::{Start, StreamLog};
use pinstream_host::config::Config;

use crate::Failure;
use crate::log::render::{self, Out, PayloadStyle};

/// Default address: the engine's default `consumers.listen`.
const DEFAULT_ADDR: &str = "127.0.0.1:7072";
/// A named consumer commits its position after this many records…
const COMMIT_EVERY_RECORDS: u64 = 1_000;
/// …or this long after its last commit, whichever comes first (and at exit).
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// How long one wait for a record lasts before signals and commits are looked at again.
const POLL: Duration = Duration::from_millis(200);

/// `pinstream consume` flags.
#[derive(clap::Args, Debug)]
#[command(
    about = "Read a running engine's log over its consumer listener and print JSON lines",
    long_about = "Read one of a running engine's logs over its consumer listener (the engine's \
consumers.listen, protocol version 3) and print each record as one JSON line on stdout: log, \
offset, kind, then the decoded fields. Events: id, topic (and topic_name with --config), \
priority, timestamp, value, lane, origin, received, payload_len, and the payload as `payload` \
(a UTF-8 string) or `payload_base64`. Dead letters: reason and the event's header. \
Aggregates: topic, window_start, window_end, count, bytes, values, min, max, sum.

Without --follow it stops at the high watermark the engine reported when it subscribed (what \
was stored then); with --follow it waits for new records until Ctrl-C. With --consumer NAME \
the position is committed under that name every 1000 records or every second, and at exit \
(count reached, Ctrl-C, stdout closed): a later `consume --consumer NAME` resumes there, \
whatever --from says. A closed stdout (`| head`) ends quietly.",
    after_help = "Examples:\n  pinstream consume --log realtime --from earliest\n  pinstream consume \
--log dead-letter --from 10m --follow\n  pinstream consume --log transactional --consumer billing \
--count 100\n  pinstream consume --from 2026-12-03T18:00:00Z"
)]
pub struct ConsumeArgs {
    /// The engine's consumer listener (consumers.listen)
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_ADDR)]
    pub addr: String,

    /// The log: realtime, transactional, batch (events of the batch lane), aggregates or
    /// dead-letter
    #[arg(long, value_name = "LOG", default_value = "realtime", value_parser = parse_log)]
    pub log: StreamLog,

    /// Where to start: earliest, latest (only what is stored from now on), an OFFSET, or a
    /// TIME: RFC 3339 UTC (2026-12-03T18:00:00Z, fractions and +HH:MM offsets allowed) or
    /// Ns, Nm, Nh, Nd (a number N of seconds, minutes, hours, days) meaning that long ago (the first record the engine received
    /// at or after it). A --consumer name with a committed position resumes there instead.
    #[arg(long, value_name = "WHERE", default_value = "earliest", value_parser = parse_from)]
    pub from: FromArg,

    /// Consumer name (letters, digits, '.', '_', '-'; at most 64): its position is
    /// committed on the engine and a later run resumes there
    #[arg(long, value_name = "NAME")]
    pub consumer: Option<String>,

    /// The authentication token the HELLO carries, for an engine with consumers.auth =
    /// "token" (a token grants reading every log)
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,

    /// Stop after printing N records
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Keep waiting for new records (until Ctrl-C) instead of stopping at the high watermark
    #[arg(long)]
    pub follow: bool,

    /// The engine's config file, for topic names (`topic_name` in each line)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Give up when the engine does not connect or answer within this many seconds
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub timeout: u64,
}

/// `--from`, resolved against the clock when it was parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FromArg(pub Start);

fn parse_log(s: &str) -> Result<StreamLog, String> {
    StreamLog::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = StreamLog::ALL.iter().map(|l| l.name()).collect();
        format!("unknown log {s:?}: one of {}", names.join(", "))
    })
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn parse_from(s: &str) -> Result<FromArg, String> {
    parse_start(s, now_ns()).map(FromArg)
}

/// `--from` against the time `now` (nanoseconds since the Unix epoch).
fn parse_start(s: &str, now: u64) -> Result<Start, String> {
    match s {
        "earliest" => return Ok(Start::Earliest),
        "latest" => return Ok(Start::Latest),
        _ => {}
    }
    if let Ok(offset) = s.parse::<u64>() {
        return Ok(Start::Offset(offset));
    }
    if let Some(ago) = parse_ago(s) {
        return Ok(Start::Time(now.saturating_sub(ago)));
    }
    if s.contains('T') {
        return parse_rfc3339(s).map(Start::Time);
    }
    Err(format!(
        "--from {s:?}: expected earliest, latest, an offset, an RFC 3339 time \
         (2026-12-03T18:00:00Z) or a duration ago (30s, 10m, 2h, 1d)"
    ))
}

/// `<N>s|m|h|d` in nanoseconds.
fn parse_ago(s: &str) -> Option<u64> {
    let unit = match s.as_bytes().last()? {
        b's' => 1_000_000_000u64,
        b'm' => 60_000_000_000,
        b'h' => 3_600_000_000_000,
        b'd' => 86_400_000_000_000,
        _ => return None,
    };
    let n: u64 = s[..s.len() - 1].parse().ok()?;
    Some(n.saturating_mul(unit))
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` in nanoseconds since the Unix epoch.
fn parse_rfc3339(s: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("--from {s:?}: not an RFC 3339 time ({why})");
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return Err(bad("expected YYYY-MM-DDTHH:MM:SSZ"));
    }
    if b[13] != b':' || b[16] != b':' {
        return Err(bad("expected HH:MM:SS"));
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        s.get(r)
            .filter(|t| t.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| bad("a field is not a number"))
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=days_in(year, month)).contains(&day) {
        return Err(bad("no such date"));
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err(bad("no such time of day"));
    }
    let mut rest = &s[19..];
    let mut frac_ns = 0i64;
    if let Some(f) = rest.strip_prefix('.') {
        let digits = f.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad("empty fraction of a second"));
        }
        for (i, c) in f[..digits].bytes().take(9).enumerate() {
            frac_ns += i64::from(c - b'0') * 10i64.pow(8 - i as u32);
        }
        rest = &f[digits..];
    }
    let offset_s = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            let h: i64 = rest[1..3].parse().map_err(|_| bad("bad offset"))?;
            let m: i64 = rest[4..6].parse().map_err(|_| bad("bad offset"))?;
            sign * (h * 3600 + m * 60)
        }
        _ => return Err(bad("expected Z or +HH:MM after the time")),
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    if secs < 0 {
        return Err(bad("before 1970"));
    }
    Ok((secs as u64) * 1_000_000_000 + frac_ns as u64)
}

fn days_in(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn resolve(addr: &str) -> Result<SocketAddr, Failure> {
    addr.to_socket_addrs()
        .map_err(|e| Failure::usage(format!("--addr {addr}: {e}")))?
        .next()
        .ok_or_else(|| Failure::usage(format!("--addr {addr}: no address")))
}

/// Runs `pinstream consume`.
pub fn main(args: &ConsumeArgs) -> Result<(), Failure> {
    let addr = resolve(&args.addr)?;
    let topics = match &args.config {
        Some(path) => Some(
            Config::load(path)
                .map_err(|e| Failure::usage(e.to_string()))?
                .pipeline
                .topics,
        ),
        None => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|e| Failure::runtime(format!("cannot handle signal {signal}: {e}")))?;
    }
    let options = ConsumerOptions {
        name: args.consumer.clone(),
        timeout: Duration::from_secs(args.timeout.max(1)),
        token: args.token.as_ref().map(|t| t.as_bytes().to_vec()),
        ..ConsumerOptions::new(args.log, args.from.0)
    };
    let mut consumer = Consumer::connect(addr, options).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidInput => Failure::usage(e.to_string()),
        _ => Failure::runtime(e.to_string()),
    })?;
    let end = (!args.follow).then(|| consumer.subscribed().high_watermark);
    let mut out = Output {
        out: BufWriter::with_capacity(64 * 1024, io::stdout().lock()),
        flushed: consumer.position(),
        closed: false,
    };
    let mut committed = consumer.position();
    let mut last_commit = Instant::now();
    let mut printed = 0u64;
    let committing = args.consumer.is_some();
    let runtime = |e: io::Error| Failure::runtime(e.to_string());
    while !out.closed {
        let done = args.count.is_some_and(|n| printed >= n)
            || end.is_some_and(|end| consumer.position() >= end)
            || stop.load(Ordering::Relaxed);
        if done {
            break;
        }
        let due = consumer.position().saturating_sub(committed) >= COMMIT_EVERY_RECORDS
            || last_commit.elapsed() >= COMMIT_EVERY;
        if committing && due && consumer.position() > committed {
            out.flush(consumer.position())?;
            if out.flushed > committed {
                committed = consumer.commit(out.flushed).map_err(runtime)?;
            }
            last_commit = Instant::now();
        }
        let Some(rec) = consumer.next_timeout(POLL).map_err(runtime)? else {
            out.flush(consumer.position())?;
            continue;
        };
        let line = render::json_record_line(
            args.log.name(),
            rec.offset(),
            rec.kind(),
            rec.body(),
            PayloadStyle::Text,
            topics.as_deref(),
        );
        printed += 1;
        if let Out::Closed = render::emit(&mut out.out, &line)? {
            out.closed = true;
        } else if consumer.lag() == 0 {
            // Caught up: show what came without waiting for the buffer to fill.
            out.flush(consumer.position())?;
        }
    }
    out.flush(consumer.position())?;
    if committing && out.flushed > committed {
        consumer.commit(out.flushed).map_err(runtime)?;
    }
    Ok(())
}

/// Stdout and how far it took records: a named consumer commits only what was written
/// out (a record lost in a closed pipe is read again by the next run).
struct Output<W: Write> {
    out: W,
    /// The position after the last record stdout took (flushed without error).
    flushed: u64,
    /// The reader went away.
    closed: bool,
}

impl<W: Write> Output<W> {
    /// Flushes; on success every record below `position` was written out.
    fn flush(&mut self, position: u64) -> Result<(), Failure> {
        if self.closed {
            return Ok(());
        }
        match render::flush(&mut self.out)? {
            Out::Go => self.flushed = position,
            Out::Closed => self.closed = true,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ConsumeArgs,
    }

    fn parse(argv: &[&str]) -> Result<ConsumeArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("consume").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn flags_have_defaults_and_are_checked() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.addr, DEFAULT_ADDR);
        assert_eq!(a.log, StreamLog::Realtime);
        assert_eq!(a.from, FromArg(Start::Earliest));
        assert!(!a.follow && a.count.is_none() && a.consumer.is_none());
        let a = parse(&[
            "--log",
            "dead-letter",
            "--from",
            "42",
            "--consumer",
            "ops",
            "--count",
            "5",
            "--follow",
        ])
        .unwrap();
        assert_eq!(a.log, StreamLog::DeadLetter);
        assert_eq!(a.from, FromArg(Start::Offset(42)));
        assert_eq!(
            (a.consumer.as_deref(), a.count, a.follow),
            (Some("ops"), Some(5), true)
        );
        let e = parse(&["--log", "nope"]).unwrap_err().to_string();
        assert!(
            e.contains("realtime, transactional, batch, dead-letter, aggregates"),
            "{e}"
        );
        assert!(parse(&["--from", "yesterday"]).is_err());
    }

    #[test]
    fn starts_parse() {
        let now = 10_000 * 1_000_000_000;
        assert_eq!(parse_start("latest", now), Ok(Start::Latest));
        assert_eq!(parse_start("0", now), Ok(Start::Offset(0)));
        assert_eq!(
            parse_start("30s", now),
            Ok(Start::Time(now - 30_000_000_000))
        );
        assert_eq!(
            parse_start("2m", now),
            Ok(Start::Time(now - 120_000_000_000))
        );
        assert_eq!(
            parse_start("1h", now),
            Ok(Start::Time(now - 3_600_000_000_000))
        );
        assert_eq!(
            parse_start("1000d", now),
            Ok(Start::Time(0)),
            "saturates at the epoch"
        );
        assert!(parse_start("5x", now).is_err());
        assert!(parse_start("-5s", now).is_err());
    }

    #[test]
    fn rfc3339_times_parse() {
        let s = 1_000_000_000u64;
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        // `date -d 2026-12-03T18:00:00Z +%s` = 1796320800
        assert_eq!(parse_rfc3339("2026-12-03T18:00:00Z"), Ok(1_796_320_800 * s));
        assert_eq!(
            parse_rfc3339("2026-12-03T19:00:00.25+01:00"),
            Ok(1_796_320_800 * s + 250_000_000)
        );
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Ok(1_709_164_800 * s));
        for bad in [
            "2023-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-12-03T24:00:00Z",
            "2026-12-03T18:00:00",
            "2026-12-03 18:00:00Z",
            "2026-12-03T18:00:00.Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }
}
