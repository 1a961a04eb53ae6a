//! `nats-load`: the NATS JetStream half of pinstream's broker comparison (`benches/vs-nats.sh`).
//!
//! It connects to a JetStream server, (re)creates the stream `BENCH` on `bench.>` with file
//! storage, then publishes `--events` messages of `--payload` bytes to `bench.load` while it keeps
//! `--inflight` publish acks outstanding. A JetStream publish ack is the server's word that the
//! message is stored in the stream (and, with `jetstream { sync_interval: always }`, synced to
//! disk), so the time from handing a message to the client to receiving its ack is the same
//! quantity as pinstream's durable ack latency. Every message's latency goes into an
//! HdrHistogram; the result is one JSON line on stdout and one human line on stderr.
//!
//! At the end it reads the stream's state back and fails unless the stream holds exactly the
//! number of messages that were acknowledged, so a run cannot report acks for data that the
//! server did not keep.

use std::fmt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{DeleteStreamErrorKind, PublishAckFuture, PublishError};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, ErrorCode, stream};
use bytes::Bytes;
use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;

const HELP: &str = "\
nats-load — publish to NATS JetStream with many acks in flight and measure ack latency

USAGE:
    nats-load [OPTIONS]

OPTIONS:
    --url URL          NATS server to connect to [default: nats://127.0.0.1:4222]
    --events N         Messages to publish [default: 200000]
    --payload BYTES    Payload size of each message [default: 100]
    --inflight W       Publish acks kept in flight [default: 256]
    --label TEXT       Durability label written into the JSON line [default: unknown]
    --threads T        Tokio worker threads; 0 runs everything on the calling thread [default: 0]
    --timeout SECS     How long one publish ack may take before the run fails [default: 30]
    -h, --help         Print this help

The stream BENCH (subjects bench.>, file storage) is deleted and created again at the start.
Prints one JSON line on stdout:
  {\"system\":\"nats\",\"durability\":LABEL,\"events\":N,\"seconds\":S,\"events_per_sec\":R,
   \"ack_p50_us\":..,\"ack_p99_us\":..,\"ack_p999_us\":..}
";

/// The stream the benchmark writes to; it is deleted and created again on every run.
const STREAM: &str = "BENCH";
/// Subjects the stream captures.
const STREAM_SUBJECTS: &str = "bench.>";
/// Subject every message is published on.
const SUBJECT: &str = "bench.load";
/// Latencies above this are clamped into the histogram's last bucket (and still counted).
const MAX_TRACKED_US: u64 = 60_000_000;

/// Command line options.
#[derive(Debug, Clone, PartialEq)]
struct Options {
    url: String,
    events: u64,
    payload: usize,
    inflight: usize,
    label: String,
    threads: usize,
    timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            url: "nats://127.0.0.1:4222".into(),
            events: 200_000,
            payload: 100,
            inflight: 256,
            label: "unknown".into(),
            threads: 0,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Parses the arguments after the program name; `Ok(None)` means help was asked for.
fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Options>, String> {
    fn number<T>(flag: &str, value: Option<String>, min: T) -> Result<T, String>
    where
        T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
        T::Err: fmt::Display,
    {
        let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
        let parsed: T = value
            .parse()
            .map_err(|e| format!("{flag} {value:?} is not a valid number: {e}"))?;
        if parsed < min {
            return Err(format!("{flag} {value:?} must be at least {min}"));
        }
        Ok(parsed)
    }

    let mut opts = Options::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--url" => opts.url = args.next().ok_or("--url needs a value")?,
            "--events" => opts.events = number("--events", args.next(), 1u64)?,
            "--payload" => opts.payload = number("--payload", args.next(), 0usize)?,
            "--inflight" => opts.inflight = number("--inflight", args.next(), 1usize)?,
            "--label" => opts.label = args.next().ok_or("--label needs a value")?,
            "--threads" => opts.threads = number("--threads", args.next(), 0usize)?,
            "--timeout" => {
                opts.timeout = Duration::from_secs(number("--timeout", args.next(), 1u64)?)
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    Ok(Some(opts))
}

/// What one run measured.
#[derive(Debug)]
struct Report {
    events: u64,
    elapsed: Duration,
    /// Publish-to-ack latency of every message, in microseconds.
    latency_us: Histogram<u64>,
}

impl Report {
    fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    /// The JSON line that `benches/vs-nats.sh` reads; the same keys as `pinstream loadgen --json`.
    fn json(&self, label: &str) -> String {
        // Written by hand to keep the keys in the documented order; the label is the only
        // free text, and serde_json quotes and escapes it.
        let label = serde_json::Value::from(label);
        format!(
            "{{\"system\":\"nats\",\"durability\":{label},\"events\":{},\"seconds\":{},\
             \"events_per_sec\":{},\"ack_p50_us\":{},\"ack_p99_us\":{},\"ack_p999_us\":{}}}",
            self.events,
            round3(self.elapsed.as_secs_f64()),
            self.events_per_sec().round() as u64,
            self.latency_us.value_at_quantile(0.50),
            self.latency_us.value_at_quantile(0.99),
            self.latency_us.value_at_quantile(0.999),
        )
    }

    fn human(&self, label: &str, opts: &Options) -> String {
        format!(
            "nats ({label}): {} events of {} B, {} in flight, in {:.3} s = {:.0} events/s; \
             ack p50 {} us, p99 {} us, p99.9 {} us, max {} us",
            self.events,
            opts.payload,
            opts.inflight,
            self.elapsed.as_secs_f64(),
            self.events_per_sec(),
            self.latency_us.value_at_quantile(0.50),
            self.latency_us.value_at_quantile(0.99),
            self.latency_us.value_at_quantile(0.999),
            self.latency_us.max(),
        )
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Why a run failed; each variant names the step and the server's or client's error.
#[derive(Debug)]
enum LoadError {
    Connect { url: String, cause: String },
    Stream { step: &'static str, cause: String },
    Publish { seq: u64, cause: String },
    Ack { seq: u64, cause: String },
    Histogram(String),
    Verify { expected: u64, stored: u64 },
    Runtime(std::io::Error),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Connect { url, cause } => write!(
                f,
                "cannot connect to {url}: {cause} (is nats-server running there with JetStream \
                 enabled? see --url)"
            ),
            LoadError::Stream { step, cause } => write!(
                f,
                "{step} stream {STREAM}: {cause} (the server must run with JetStream enabled, \
                 `-js` or a `jetstream {{}}` block, and have room in its store dir)"
            ),
            LoadError::Publish { seq, cause } => {
                write!(f, "publishing message {seq} to {SUBJECT}: {cause}")
            }
            LoadError::Ack { seq, cause } => write!(
                f,
                "publish ack for message {seq}: {cause} (raise --timeout if the server is \
                 just slow, e.g. syncing on a busy disk)"
            ),
            LoadError::Histogram(cause) => write!(f, "latency histogram: {cause}"),
            LoadError::Verify { expected, stored } => write!(
                f,
                "stream {STREAM} holds {stored} messages after {expected} acknowledged publishes: \
                 the server acknowledged messages it did not keep (or something else wrote to \
                 {STREAM_SUBJECTS})"
            ),
            LoadError::Runtime(e) => write!(f, "cannot start the tokio runtime: {e}"),
        }
    }
}

/// Deletes `BENCH` if it exists and creates it empty, file-backed, on `bench.>`.
async fn recreate_stream(js: &jetstream::Context) -> Result<(), LoadError> {
    match js.delete_stream(STREAM).await {
        Ok(_) => {}
        Err(e) => {
            let not_found = matches!(
                e.kind(),
                DeleteStreamErrorKind::JetStream(ref js_err)
                    if js_err.error_code() == ErrorCode::STREAM_NOT_FOUND
            );
            if !not_found {
                return Err(LoadError::Stream {
                    step: "deleting the old",
                    cause: e.to_string(),
                });
            }
        }
    }
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec![STREAM_SUBJECTS.into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| LoadError::Stream {
        step: "creating",
        cause: e.to_string(),
    })?;
    Ok(())
}

/// Checks one completed publish ack and records its latency, measured from `sent_at` to now.
fn record_ack(
    (seq, sent_at, result): (u64, Instant, Result<PublishAck, PublishError>),
    latency_us: &mut Histogram<u64>,
) -> Result<(), LoadError> {
    result.map_err(|e| LoadError::Ack {
        seq,
        cause: e.to_string(),
    })?;
    let us = u64::try_from(sent_at.elapsed().as_micros()).unwrap_or(u64::MAX);
    latency_us.saturating_record(us.clamp(1, MAX_TRACKED_US));
    Ok(())
}

/// Publishes `opts.events` messages with at most `opts.inflight` acks outstanding and records
/// the publish-to-ack latency of each.
async fn run(opts: &Options) -> Result<Report, LoadError> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(opts.url.as_str())
        .await
        .map_err(|e| LoadError::Connect {
            url: opts.url.clone(),
            cause: e.to_string(),
        })?;
    // The window is kept below; the context's own limit only has to be no tighter.
    let js = jetstream::context::ContextBuilder::new()
        .timeout(opts.timeout)
        .max_ack_inflight(opts.inflight)
        .backpressure_on_inflight(true)
        .build(client);
    recreate_stream(&js).await?;

    let payload = Bytes::from(vec![0xA5u8; opts.payload]);
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, MAX_TRACKED_US, 3)
        .map_err(|e| LoadError::Histogram(e.to_string()))?;
    // The acks in flight; they may complete in any order, so each future carries its own
    // sequence number and send time.
    let mut pending = FuturesUnordered::new();
    let mut sent: u64 = 0;
    let mut acked: u64 = 0;

    let start = Instant::now();
    while sent < opts.events || !pending.is_empty() {
        if sent < opts.events && pending.len() < opts.inflight {
            let sent_at = Instant::now();
            let ack: PublishAckFuture =
                js.publish(SUBJECT, payload.clone())
                    .await
                    .map_err(|e| LoadError::Publish {
                        seq: sent,
                        cause: e.to_string(),
                    })?;
            let seq = sent;
            pending.push(ack.into_future().map(move |r| (seq, sent_at, r)));
            sent += 1;
            // Take the acks that have already arrived, so their latency is not inflated by
            // the time it takes to fill the window again.
            while let Some(Some(done)) = pending.next().now_or_never() {
                record_ack(done, &mut latency_us)?;
                acked += 1;
            }
        } else if let Some(done) = pending.next().await {
            record_ack(done, &mut latency_us)?;
            acked += 1;
        }
    }
    let elapsed = start.elapsed();
    debug_assert_eq!(acked, opts.events);

    // The acks say the messages are stored; read the stream back to hold the server to it.
    let mut stream = js.get_stream(STREAM).await.map_err(|e| LoadError::Stream {
        step: "reading back",
        cause: e.to_string(),
    })?;
    let info = stream.info().await.map_err(|e| LoadError::Stream {
        step: "reading the state of",
        cause: e.to_string(),
    })?;
    if info.state.messages != acked {
        return Err(LoadError::Verify {
            expected: acked,
            stored: info.state.messages,
        });
    }
    // Leave nothing queued in the client when the process exits.
    js.client().flush().await.ok();

    Ok(Report {
        events: acked,
        elapsed,
        latency_us,
    })
}

fn main() -> ExitCode {
    let opts = match parse(std::env::args().skip(1)) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("nats-load: {msg}");
            return ExitCode::from(2);
        }
    };
    let runtime = if opts.threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.threads)
            .enable_all()
            .build()
    };
    let result = runtime
        .map_err(LoadError::Runtime)
        .and_then(|rt| rt.block_on(run(&opts)));
    match result {
        Ok(report) => {
            eprintln!("{}", report.human(&opts.label, &opts));
            println!("{}", report.json(&opts.label));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nats-load: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults_match_the_comparison() {
        let opts = parse(args(&[])).unwrap().unwrap();
        assert_eq!(opts.payload, 100);
        assert_eq!(opts.inflight, 256);
        assert_eq!(opts.events, 200_000);
    }

    #[test]
    fn flags_are_read() {
        let opts = parse(args(&[
            "--url",
            "nats://127.0.0.1:5000",
            "--events",
            "10",
            "--payload",
            "8",
            "--inflight",
            "4",
            "--label",
            "fsync before ack",
            "--threads",
            "2",
            "--timeout",
            "3",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            opts,
            Options {
                url: "nats://127.0.0.1:5000".into(),
                events: 10,
                payload: 8,
                inflight: 4,
                label: "fsync before ack".into(),
                threads: 2,
                timeout: Duration::from_secs(3),
            }
        );
    }

    #[test]
    fn bad_flags_name_the_flag_and_value() {
        let err = parse(args(&["--inflight", "0"])).unwrap_err();
        assert!(err.contains("--inflight") && err.contains("\"0\""), "{err}");
        let err = parse(args(&["--events", "lots"])).unwrap_err();
        assert!(err.contains("--events") && err.contains("lots"), "{err}");
        let err = parse(args(&["--url"])).unwrap_err();
        assert!(err.contains("--url needs a value"), "{err}");
        let err = parse(args(&["--bogus"])).unwrap_err();
        assert!(err.contains("--bogus"), "{err}");
        assert_eq!(parse(args(&["--help"])).unwrap(), None);
    }

    #[test]
    fn json_line_has_the_keys_the_script_reads() {
        let mut latency_us = Histogram::<u64>::new_with_bounds(1, MAX_TRACKED_US, 3).unwrap();
        for us in 1..=1000 {
            latency_us.record(us).unwrap();
        }
        let report = Report {
            events: 1000,
            elapsed: Duration::from_millis(500),
            latency_us,
        };
        let line = report.json("off \"quoted\"");
        assert!(
            line.starts_with(r#"{"system":"nats","durability":"off \"quoted\"","events":1000,"#)
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["system"], "nats");
        assert_eq!(v["durability"], "off \"quoted\"");
        assert_eq!(v["events"], 1000);
        assert_eq!(v["seconds"], 0.5);
        assert_eq!(v["events_per_sec"], 2000.0);
        assert_eq!(v["ack_p50_us"], 500);
        assert_eq!(v["ack_p99_us"], 990);
        assert_eq!(v["ack_p999_us"], 999);
        assert!(!line.contains('\n'));
    }
}
