//! `nats-consume`: the NATS JetStream side of issue 15's consumer measurements
//! (`CONSUMERS=1 benches/vs-nats.sh`).
//!
//! Three modes, each printing one JSON line on stdout and one human line on stderr:
//!
//! * `fill` (re)creates a file-backed stream and publishes `--events` messages into it with
//!   `--inflight` publish acks outstanding, then checks the stream holds them all.
//! * `catchup` reads `--events` stored messages from the start of the stream with one consumer
//!   as fast as it can: an ephemeral pull consumer (`AckPolicy::None`, continuous pulls of
//!   `--batch` messages) or an ordered push consumer (flow control and heartbeats as async-nats
//!   sets them up). It reports events/s and ns/event.
//! * `latency` (re)creates the stream, attaches `--consumers` ordered push consumers that start
//!   at new messages, then publishes for `--seconds` at `--rate` messages/s (0: as fast as the
//!   `--inflight` window of publish acks allows). Each payload carries its send time; every
//!   consumer records publish-to-receive latency in an HdrHistogram. It reports the publish
//!   rate reached, publish-to-ack and publish-to-receive percentiles, and what each consumer got.

use std::fmt;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull, push};
use async_nats::jetstream::context::{DeleteStreamErrorKind, PublishAckFuture};
use async_nats::jetstream::{self, ErrorCode, stream};
use bytes::Bytes;
use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;

const HELP: &str = "\
nats-consume — consumer-side measurements against NATS JetStream (issue 15)

USAGE:
    nats-consume fill    [--stream S] [--subject X] [--events N] [--payload B] [--inflight W]
    nats-consume catchup [--stream S] [--events N] [--mode pull|ordered] [--batch B]
    nats-consume latency [--stream S] [--subject X] [--rate R] [--seconds S] [--warmup S]
                         [--consumers K] [--payload B] [--inflight W]

COMMON OPTIONS:
    --url URL          NATS server [default: nats://127.0.0.1:4222]
    --stream S         Stream name [default: CONSUME]
    --subject X        Subject published to, and the stream's only subject [default: consume.events]
    --threads T        Tokio worker threads; 0 runs everything on the calling thread [default: 0]
    --timeout SECS     Longest wait for one ack, or for the next message [default: 30]
    -h, --help         Print this help

fill:     deletes and recreates the stream (file storage, the server's default sync), publishes
          --events messages of --payload bytes [100] with --inflight acks in flight [1024].
catchup:  one consumer reads the first --events messages [all the stream holds] from the start;
          --mode pull [default]: ephemeral pull consumer, AckPolicy::None, pulls of --batch
          messages [10000]; --mode ordered: ordered push consumer.
latency:  deletes and recreates the stream, starts --consumers [1] ordered push consumers at new
          messages, publishes at --rate msgs/s [100000] (0 = as fast as --inflight [256] allows)
          for --seconds [10]; messages of the first --warmup seconds [1] are not recorded.
          Latency is taken from each message's send time, and also from the time the fixed-rate
          schedule meant it to be sent (the sched_* keys: includes the publisher falling behind).
Each prints one JSON line on stdout.
";

/// Latencies (ns) above this are clamped into the histogram's last bucket (and still counted).
const MAX_TRACKED_NS: u64 = 60_000_000_000;
/// Bytes at the start of a latency payload: send time (ns since EPOCH, little-endian u64), a
/// flag byte (1 = measured, 0 = warm-up), and the time the fixed-rate schedule meant the message
/// to be sent (ns since EPOCH; the send time when there is no schedule, `--rate 0`).
const STAMP: usize = 17;

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Command {
    Fill,
    Catchup,
    Latency,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Pull,
    Ordered,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Pull => "pull",
            Mode::Ordered => "ordered",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Options {
    command: Command,
    url: String,
    stream: String,
    subject: String,
    /// `None`: the command's default (fill 1 M; catchup: everything the stream holds).
    events: Option<u64>,
    payload: usize,
    /// `None`: the command's default (fill 1024, latency 256).
    inflight: Option<usize>,
    mode: Mode,
    batch: usize,
    rate: u64,
    seconds: f64,
    warmup: f64,
    consumers: usize,
    threads: usize,
    timeout: Duration,
}

impl Options {
    fn new(command: Command) -> Self {
        Options {
            command,
            url: "nats://127.0.0.1:4222".into(),
            stream: "CONSUME".into(),
            subject: "consume.events".into(),
            events: None,
            payload: 100,
            inflight: None,
            mode: Mode::Pull,
            batch: 10_000,
            rate: 100_000,
            seconds: 10.0,
            warmup: 1.0,
            consumers: 1,
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

    let mut args = args.into_iter();
    let command = match args.next().as_deref() {
        None | Some("-h") | Some("--help") | Some("help") => return Ok(None),
        Some("fill") => Command::Fill,
        Some("catchup") => Command::Catchup,
        Some("latency") => Command::Latency,
        Some(other) => {
            return Err(format!(
                "unknown command {other:?}: expected fill, catchup or latency (see --help)"
            ));
        }
    };
    let mut opts = Options::new(command);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--url" => opts.url = args.next().ok_or("--url needs a value")?,
            "--stream" => opts.stream = args.next().ok_or("--stream needs a value")?,
            "--subject" => opts.subject = args.next().ok_or("--subject needs a value")?,
            "--events" => opts.events = Some(number("--events", args.next(), 1u64)?),
            "--payload" => opts.payload = number("--payload", args.next(), 0usize)?,
            "--inflight" => opts.inflight = Some(number("--inflight", args.next(), 1usize)?),
            "--mode" => {
                opts.mode = match args.next().as_deref() {
                    Some("pull") => Mode::Pull,
                    Some("ordered") => Mode::Ordered,
                    other => return Err(format!("--mode {other:?}: expected pull or ordered")),
                }
            }
            "--batch" => opts.batch = number("--batch", args.next(), 1usize)?,
            "--rate" => opts.rate = number("--rate", args.next(), 0u64)?,
            "--seconds" => opts.seconds = number("--seconds", args.next(), 0.001f64)?,
            "--warmup" => opts.warmup = number("--warmup", args.next(), 0f64)?,
            "--consumers" => opts.consumers = number("--consumers", args.next(), 0usize)?,
            "--threads" => opts.threads = number("--threads", args.next(), 0usize)?,
            "--timeout" => {
                opts.timeout = Duration::from_secs(number("--timeout", args.next(), 1u64)?)
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    if opts.command == Command::Latency && opts.payload < STAMP {
        return Err(format!(
            "--payload {} is too small for latency: the send times take {STAMP} bytes",
            opts.payload
        ));
    }
    if opts.command == Command::Latency && opts.warmup >= opts.seconds {
        return Err("--warmup must be shorter than --seconds".into());
    }
    Ok(Some(opts))
}

type Error = String;

fn err<E: fmt::Display>(what: impl fmt::Display) -> impl FnOnce(E) -> Error {
    move |e| format!("{what}: {e}")
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, MAX_TRACKED_NS, 3).expect("valid histogram bounds")
}

fn us(h: &Histogram<u64>, q: f64) -> u64 {
    h.value_at_quantile(q) / 1000
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

async fn connect(opts: &Options) -> Result<async_nats::Client, Error> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        // Push consumers deliver into the subscription's channel; when it is full async-nats
        // drops messages (a slow consumer), which makes an ordered consumer start over. Room
        // for a few hundred thousand messages keeps a catch-up from tripping on that.
        .subscription_capacity(1 << 20)
        .connect(opts.url.as_str())
        .await
        .map_err(err(format!(
            "cannot connect to {} (is nats-server running there with JetStream enabled?)",
            opts.url
        )))
}

fn context(client: async_nats::Client, opts: &Options, inflight: usize) -> jetstream::Context {
    jetstream::context::ContextBuilder::new()
        .timeout(opts.timeout)
        .max_ack_inflight(inflight)
        .backpressure_on_inflight(true)
        .build(client)
}

/// Deletes the stream if it exists and creates it empty, file-backed, on `opts.subject`.
async fn recreate_stream(js: &jetstream::Context, opts: &Options) -> Result<(), Error> {
    if let Err(e) = js.delete_stream(&opts.stream).await {
        let not_found = matches!(
            e.kind(),
            DeleteStreamErrorKind::JetStream(ref js_err)
                if js_err.error_code() == ErrorCode::STREAM_NOT_FOUND
        );
        if !not_found {
            return Err(format!("deleting stream {}: {e}", opts.stream));
        }
    }
    js.create_stream(stream::Config {
        name: opts.stream.clone(),
        subjects: vec![opts.subject.clone()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(err(format!("creating stream {}", opts.stream)))?;
    Ok(())
}

async fn stream_messages(js: &jetstream::Context, name: &str) -> Result<u64, Error> {
    let mut stream = js
        .get_stream(name)
        .await
        .map_err(err(format!("stream {name}")))?;
    let info = stream
        .info()
        .await
        .map_err(err(format!("reading the state of stream {name}")))?;
    Ok(info.state.messages)
}

// ---------------------------------------------------------------------------------------------
// fill

async fn fill(opts: &Options) -> Result<(String, String), Error> {
    let events = opts.events.unwrap_or(1_000_000);
    let inflight = opts.inflight.unwrap_or(1024);
    let js = context(connect(opts).await?, opts, inflight);
    recreate_stream(&js, opts).await?;
    let payload = Bytes::from(vec![0xA5u8; opts.payload]);
    let mut pending = FuturesUnordered::new();
    let mut sent = 0u64;
    let start = Instant::now();
    while sent < events || !pending.is_empty() {
        if sent < events && pending.len() < inflight {
            let ack: PublishAckFuture = js
                .publish(opts.subject.clone(), payload.clone())
                .await
                .map_err(err(format!("publishing message {sent}")))?;
            pending.push(ack.into_future());
            sent += 1;
            while let Some(Some(done)) = pending.next().now_or_never() {
                done.map_err(err("publish ack"))?;
            }
        } else if let Some(done) = pending.next().await {
            done.map_err(err("publish ack"))?;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let stored = stream_messages(&js, &opts.stream).await?;
    if stored != events {
        return Err(format!(
            "stream {} holds {stored} messages after {events} acknowledged publishes",
            opts.stream
        ));
    }
    js.client().flush().await.ok();
    let rate = events as f64 / elapsed;
    let json = serde_json::json!({
        "system": "nats", "command": "fill", "stream": opts.stream, "events": events,
        "payload": opts.payload, "inflight": inflight, "seconds": round3(elapsed),
        "events_per_sec": rate.round() as u64,
    });
    let human = format!(
        "nats fill: {events} messages of {} B into {} in {elapsed:.3} s = {rate:.0} msgs/s",
        opts.payload, opts.stream
    );
    Ok((json.to_string(), human))
}

// ---------------------------------------------------------------------------------------------
// catchup

async fn catchup(opts: &Options) -> Result<(String, String), Error> {
    let client = connect(opts).await?;
    let js = context(client.clone(), opts, 256);
    let stored = stream_messages(&js, &opts.stream).await?;
    let events = opts.events.unwrap_or(stored);
    if stored < events {
        return Err(format!(
            "stream {} holds {stored} messages, fewer than --events {events} (run fill first)",
            opts.stream
        ));
    }
    let stream = js
        .get_stream(&opts.stream)
        .await
        .map_err(err(format!("stream {}", opts.stream)))?;

    let mut received = 0u64;
    let mut bytes = 0u64;
    let mut first = None;
    let start = Instant::now();
    match opts.mode {
        Mode::Pull => {
            let consumer = stream
                .create_consumer(pull::Config {
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::None,
                    inactive_threshold: Duration::from_secs(60),
                    ..Default::default()
                })
                .await
                .map_err(err("creating the pull consumer"))?;
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(opts.batch)
                .messages()
                .await
                .map_err(err("starting the pull"))?;
            while received < events {
                let msg = tokio::time::timeout(opts.timeout, messages.next())
                    .await
                    .map_err(|_| format!("no message for {:?} after {received}", opts.timeout))?
                    .ok_or_else(|| format!("pull ended after {received} messages"))?
                    .map_err(err(format!("pull after {received} messages")))?;
                first.get_or_insert_with(|| start.elapsed());
                bytes += msg.payload.len() as u64;
                received += 1;
            }
        }
        Mode::Ordered => {
            let consumer = stream
                .create_consumer(push::OrderedConfig {
                    deliver_subject: client.new_inbox(),
                    deliver_policy: DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .map_err(err("creating the ordered consumer"))?;
            let mut messages = consumer
                .messages()
                .await
                .map_err(err("subscribing the ordered consumer"))?;
            while received < events {
                let msg = tokio::time::timeout(opts.timeout, messages.next())
                    .await
                    .map_err(|_| format!("no message for {:?} after {received}", opts.timeout))?
                    .ok_or_else(|| format!("ordered consumer ended after {received} messages"))?
                    .map_err(err(format!("ordered consumer after {received} messages")))?;
                first.get_or_insert_with(|| start.elapsed());
                bytes += msg.payload.len() as u64;
                received += 1;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rate = received as f64 / elapsed;
    let json = serde_json::json!({
        "system": "nats", "command": "catchup", "mode": opts.mode.name(), "stream": opts.stream,
        "stream_messages": stored, "events": received, "bytes": bytes,
        "batch": if opts.mode == Mode::Pull { Some(opts.batch) } else { None },
        "seconds": round3(elapsed), "first_message_ms": round3(first.unwrap_or_default().as_secs_f64() * 1000.0),
        "events_per_sec": rate.round() as u64, "ns_per_event": (1e9 / rate).round() as u64,
    });
    let human = format!(
        "nats catchup ({}): {received} of {stored} stored messages ({bytes} B of payload) in \
         {elapsed:.3} s = {rate:.0} events/s, {:.0} ns/event",
        opts.mode.name(),
        1e9 / rate
    );
    Ok((json.to_string(), human))
}

// ---------------------------------------------------------------------------------------------
// latency

/// What one latency consumer saw.
struct ConsumerResult {
    received: u64,
    /// Messages received when the consumer first noticed that the last publish ack had come
    /// back (checked at least every 100 ms): below `received`, it was still catching up.
    received_at_publish_end: u64,
    latency_ns: Histogram<u64>,
    /// Receive time minus the time the schedule meant the message to be sent: includes any
    /// time the publisher was behind (no coordinated omission).
    from_schedule_ns: Histogram<u64>,
}

async fn latency(opts: &Options) -> Result<(String, String), Error> {
    let inflight = opts.inflight.unwrap_or(256);
    let client = connect(opts).await?;
    let js = context(client.clone(), opts, inflight);
    recreate_stream(&js, opts).await?;
    let stream = js
        .get_stream(&opts.stream)
        .await
        .map_err(err(format!("stream {}", opts.stream)))?;
    now_ns(); // fix EPOCH before any stamp

    // Consumers: each an ordered push consumer from the new messages, in its own task.
    let publish_done = Arc::new(AtomicU64::new(u64::MAX)); // number published, once known
    let mut tasks = Vec::new();
    for k in 0..opts.consumers {
        let consumer = stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: client.new_inbox(),
                deliver_policy: DeliverPolicy::New,
                ..Default::default()
            })
            .await
            .map_err(err(format!("creating ordered consumer {k}")))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(err(format!("subscribing ordered consumer {k}")))?;
        let publish_done = publish_done.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut hs = histogram();
            let mut received = 0u64;
            let mut at_end = None;
            loop {
                let total = publish_done.load(Ordering::Acquire);
                if total != u64::MAX {
                    at_end.get_or_insert(received);
                    if received >= total {
                        break;
                    }
                }
                // Wake up now and then to notice the end of publishing.
                let next =
                    match tokio::time::timeout(Duration::from_millis(100), messages.next()).await {
                        Ok(next) => next,
                        // The wait for the rest is bounded by --timeout in the caller.
                        Err(_) => continue,
                    };
                let msg = match next {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => return Err(format!("consumer {k} after {received}: {e}")),
                    None => return Err(format!("consumer {k} ended after {received}")),
                };
                let now = now_ns();
                received += 1;
                let p = &msg.payload;
                if p.len() >= STAMP && p[8] == 1 {
                    let sent = u64::from_le_bytes(p[..8].try_into().unwrap());
                    let due = u64::from_le_bytes(p[9..17].try_into().unwrap());
                    h.saturating_record(now.saturating_sub(sent).clamp(1, MAX_TRACKED_NS));
                    hs.saturating_record(now.saturating_sub(due).clamp(1, MAX_TRACKED_NS));
                }
            }
            Ok(ConsumerResult {
                received,
                received_at_publish_end: at_end.unwrap_or(received),
                latency_ns: h,
                from_schedule_ns: hs,
            })
        }));
    }

    // Publisher.
    let mut payload = vec![0xA5u8; opts.payload];
    let mut ack_ns = histogram();
    let mut pending = FuturesUnordered::new();
    let mut sent = 0u64;
    let mut measured_sent = 0u64;
    // Messages the publisher was behind its schedule, at worst, after the warm-up.
    let mut max_behind = 0u64;
    let start = Instant::now();
    let seconds = Duration::from_secs_f64(opts.seconds);
    let warmup = Duration::from_secs_f64(opts.warmup);
    let mut measure_start: Option<(Instant, u64)> = None;
    // The schedule: message `base + i` is due at `origin + i / rate`. It starts again at the
    // end of the warm-up, so a backlog from the warm-up is not sent in a burst into the
    // measured part of the run.
    let (mut origin, mut base) = (start, 0u64);
    loop {
        let elapsed = start.elapsed();
        if elapsed >= seconds {
            break;
        }
        let measuring = elapsed >= warmup;
        if measuring && measure_start.is_none() {
            measure_start = Some((Instant::now(), sent));
            (origin, base) = (Instant::now(), sent);
        }
        let due = if opts.rate == 0 {
            u64::MAX
        } else {
            base + (origin.elapsed().as_secs_f64() * opts.rate as f64) as u64 + 1
        };
        if opts.rate != 0 && measuring {
            max_behind = max_behind.max(due.saturating_sub(sent));
        }
        if sent < due && pending.len() < inflight {
            let t = now_ns();
            let scheduled = if opts.rate == 0 {
                t
            } else {
                let at = origin + Duration::from_secs_f64((sent - base) as f64 / opts.rate as f64);
                (at - *EPOCH.get().expect("EPOCH is set")).as_nanos() as u64
            };
            payload[..8].copy_from_slice(&t.to_le_bytes());
            payload[8] = measuring as u8;
            payload[9..17].copy_from_slice(&scheduled.to_le_bytes());
            let ack: PublishAckFuture = js
                .publish(opts.subject.clone(), Bytes::copy_from_slice(&payload))
                .await
                .map_err(err(format!("publishing message {sent}")))?;
            pending.push(ack.into_future().map(move |r| (t, measuring, r)));
            sent += 1;
            measured_sent += measuring as u64;
            while let Some(Some((t, m, r))) = pending.next().now_or_never() {
                r.map_err(err("publish ack"))?;
                if m {
                    ack_ns.saturating_record(now_ns().saturating_sub(t).clamp(1, MAX_TRACKED_NS));
                }
            }
        } else if sent < due {
            // Window full: wait for an ack.
            if let Some((t, m, r)) = pending.next().await {
                r.map_err(err("publish ack"))?;
                if m {
                    ack_ns.saturating_record(now_ns().saturating_sub(t).clamp(1, MAX_TRACKED_NS));
                }
            }
        } else {
            // Ahead of schedule: take acks that arrive, else sleep to the next message's time.
            let next_at = Duration::from_secs_f64((sent - base) as f64 / opts.rate as f64);
            let sleep = tokio::time::sleep(next_at.saturating_sub(origin.elapsed()));
            tokio::select! {
                Some((t, m, r)) = pending.next(), if !pending.is_empty() => {
                    r.map_err(err("publish ack"))?;
                    if m {
                        ack_ns.saturating_record(now_ns().saturating_sub(t).clamp(1, MAX_TRACKED_NS));
                    }
                }
                _ = sleep => {}
            }
        }
    }
    let publish_elapsed = start.elapsed();
    while let Some((t, m, r)) = pending.next().await {
        r.map_err(err("publish ack"))?;
        if m {
            ack_ns.saturating_record(now_ns().saturating_sub(t).clamp(1, MAX_TRACKED_NS));
        }
    }
    let (m_start, m_sent0) = measure_start.unwrap_or((start, 0));
    let measured_secs = publish_elapsed.as_secs_f64() - (m_start - start).as_secs_f64();
    let publish_rate = (sent - m_sent0) as f64 / measured_secs;
    publish_done.store(sent, Ordering::Release);

    // Consumers drain what is left, bounded by --timeout.
    let mut merged = histogram();
    let mut merged_sched = histogram();
    let mut per_consumer = Vec::new();
    let deadline = Instant::now() + opts.timeout;
    for (k, task) in tasks.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let result = tokio::time::timeout(left, task)
            .await
            .map_err(|_| {
                format!("consumer {k} did not receive all {sent} messages within --timeout")
            })?
            .map_err(err(format!("consumer {k} task")))??;
        merged
            .add(&result.latency_ns)
            .map_err(err("merging histograms"))?;
        merged_sched
            .add(&result.from_schedule_ns)
            .map_err(err("merging histograms"))?;
        per_consumer.push(serde_json::json!({
            "received": result.received,
            "received_at_publish_end": result.received_at_publish_end,
            "p50_us": us(&result.latency_ns, 0.5),
            "p99_us": us(&result.latency_ns, 0.99),
            "p999_us": us(&result.latency_ns, 0.999),
            "max_us": result.latency_ns.max() / 1000,
        }));
    }
    let stored = stream_messages(&js, &opts.stream).await?;
    if stored != sent {
        return Err(format!(
            "stream {} holds {stored} messages after {sent} acknowledged publishes",
            opts.stream
        ));
    }
    js.client().flush().await.ok();

    let json = serde_json::json!({
        "system": "nats", "command": "latency", "stream": opts.stream,
        "rate_target": opts.rate, "seconds": opts.seconds, "warmup_seconds": opts.warmup,
        "consumers": opts.consumers, "payload": opts.payload, "inflight": inflight,
        "published": sent, "measured_published": measured_sent,
        "publish_events_per_sec": publish_rate.round() as u64,
        "publisher_max_behind": max_behind,
        "ack_p50_us": us(&ack_ns, 0.5), "ack_p99_us": us(&ack_ns, 0.99),
        "ack_p999_us": us(&ack_ns, 0.999), "ack_max_us": ack_ns.max() / 1000,
        "e2e_count": merged.len(),
        "e2e_p50_us": us(&merged, 0.5), "e2e_p99_us": us(&merged, 0.99),
        "e2e_p999_us": us(&merged, 0.999), "e2e_max_us": merged.max() / 1000,
        "sched_p50_us": us(&merged_sched, 0.5), "sched_p99_us": us(&merged_sched, 0.99),
        "sched_p999_us": us(&merged_sched, 0.999), "sched_max_us": merged_sched.max() / 1000,
        "per_consumer": per_consumer,
    });
    let human = format!(
        "nats latency: {sent} published at target {} msgs/s ({publish_rate:.0} msgs/s reached after \
         warm-up), {} consumers; ack p50/p99/p99.9 {}/{}/{} us; publish->receive p50/p99/p99.9/max \
         {}/{}/{}/{} us over {} receipts (from the schedule: p99 {} us, p99.9 {} us)",
        if opts.rate == 0 {
            "max".to_string()
        } else {
            opts.rate.to_string()
        },
        opts.consumers,
        us(&ack_ns, 0.5),
        us(&ack_ns, 0.99),
        us(&ack_ns, 0.999),
        us(&merged, 0.5),
        us(&merged, 0.99),
        us(&merged, 0.999),
        merged.max() / 1000,
        merged.len(),
        us(&merged_sched, 0.99),
        us(&merged_sched, 0.999),
    );
    Ok((json.to_string(), human))
}

async fn run(opts: &Options) -> Result<(String, String), Error> {
    match opts.command {
        Command::Fill => fill(opts).await,
        Command::Catchup => catchup(opts).await,
        Command::Latency => latency(opts).await,
    }
}

fn main() -> ExitCode {
    let opts = match parse(std::env::args().skip(1)) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("nats-consume: {msg}");
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
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))
        .and_then(|rt| rt.block_on(run(&opts)));
    match result {
        Ok((json, human)) => {
            eprintln!("{human}");
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nats-consume: {e}");
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
    fn commands_and_flags_are_read() {
        let o = parse(args(&[
            "catchup", "--mode", "ordered", "--events", "5", "--batch", "7",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(o.command, Command::Catchup);
        assert_eq!(o.mode, Mode::Ordered);
        assert_eq!(o.events, Some(5));
        assert_eq!(o.batch, 7);
        let o = parse(args(&[
            "latency",
            "--rate",
            "0",
            "--consumers",
            "4",
            "--seconds",
            "2",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((o.rate, o.consumers, o.seconds), (0, 4, 2.0));
        assert_eq!(parse(args(&[])).unwrap(), None);
        assert_eq!(parse(args(&["fill", "--help"])).unwrap(), None);
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(parse(args(&["drain"])).unwrap_err().contains("drain"));
        assert!(
            parse(args(&["catchup", "--mode", "push"]))
                .unwrap_err()
                .contains("--mode")
        );
        assert!(
            parse(args(&["latency", "--payload", "4"]))
                .unwrap_err()
                .contains("--payload")
        );
        assert!(parse(args(&["latency", "--seconds", "1", "--warmup", "2"])).is_err());
        assert!(
            parse(args(&["fill", "--events", "0"]))
                .unwrap_err()
                .contains("--events")
        );
    }
}
