//! `pinstream loadgen`: sends events to an engine over TCP or UDP, flat out or at a fixed
//! rate, and reports events/s, bytes/s and acknowledgement latency percentiles.
//!
//! The sending is [`pinstream_host::loadgen`]; this module turns flags into its config,
//! draws a progress bar on stderr while it runs, and prints the summary (text, or one JSON
//! line with `--json`). Exit codes: 2 for bad flags (or a frame the server would refuse),
//! 1 when the server is unreachable, closes a connection, leaves a frame unacknowledged for
//! `--ack-timeout`, its ACKs do not account for every event sent, or it dead-lettered or
//! rejected any event (unless `--allow-dead-letters`). The throughput it reports is
//! `stored_per_sec`: stored events only (`events_per_sec` is the offered rate). With
//! `--consumers N` the summary and the JSON line (keys `consumers`, `consumed`,
//! `consumer_reconnects`, `e2e_p50_us` … `e2e_max_us`, `consume_mismatch`, after the others)
//! add what the consumers read; a consumer that read fewer or more events than were stored
//! is reported (on stderr too), not a failure.

use std::io::{self, IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};

use pinstream_host::loadgen::{self, AckWait, LoadConfig, PriorityMix, Transport};

use crate::Failure;

mod grpc;
mod report;
use report::{ProgressBar, json, summary};

/// Default TCP address (the engine's default `tcp.listen`).
const DEFAULT_TCP_ADDR: &str = "127.0.0.1:7070";
/// Default UDP address (the engine's default `udp.listen`).
const DEFAULT_UDP_ADDR: &str = "127.0.0.1:7071";
/// Default HTTP gateway address (the README's example `http.listen`; off by default).
const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:7080";
/// Default gRPC gateway address (the README's example `grpc.listen`; off by default).
const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:7090";
/// How often the progress bar is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// Whether to wait for acknowledgements.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckArg {
    /// Measure ACK latency and require every frame acknowledged.
    Wait,
    /// Fire and forget (servers with engine.ack = "none", or UDP).
    None,
}

/// How events travel (`--transport`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportArg {
    /// The binary protocol over TCP, HELLO first, ACKs back.
    Tcp,
    /// One frame per datagram, no acknowledgements (as --udp).
    Udp,
    /// NDJSON requests of --batch events to the HTTP gateway (POST /v1/events), keep-alive,
    /// one request at a time per connection; the answers' counts are the acknowledgement.
    Http,
    /// Requests of --batch events to the gRPC gateway: one PublishStream per connection with
    /// --inflight requests unacknowledged (or one Publish at a time with --grpc-unary).
    Grpc,
}

/// `pinstream loadgen` flags.
#[derive(clap::Args, Debug)]
#[command(
    about = "Send events to an engine over TCP, UDP or HTTP and measure throughput and ack latency",
    long_about = "Send events to an engine over TCP or UDP, or to its HTTP gateway as NDJSON \
requests (--transport http), flat out or at a fixed rate, and report events/s, bytes/s and \
ACK latency percentiles (send of a frame to the first ACK covering it; over HTTP, of a \
request to its answer). Ids are unique in a run (--id-base on); each priority meets every topic; \
timestamps are the send time in nanoseconds since the Unix epoch. With --consumers N, N \
consumers read the events back over the consumer listener and the report adds their \
produce→consume latency percentiles and how many events each read."
)]
pub struct LoadgenArgs {
    /// Server address [default: 127.0.0.1:7070, 127.0.0.1:7071 with UDP, 127.0.0.1:7080
    /// with HTTP]
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: Option<String>,

    /// Send over UDP: one frame per datagram (at most 65507 bytes), no acknowledgements
    /// (implies --ack none); the same as --transport udp
    #[arg(long, conflicts_with = "transport")]
    pub udp: bool,

    /// tcp, udp, http or grpc [default: tcp]
    #[arg(long, value_name = "TRANSPORT", value_enum)]
    pub transport: Option<TransportArg>,

    /// With --transport grpc: unary Publish calls, one at a time per connection, instead of
    /// one PublishStream per connection
    #[arg(long)]
    pub grpc_unary: bool,

    /// An authentication token: with --transport http or grpc sent as "Authorization:
    /// Bearer TOKEN", with tcp carried in each connection's HELLO (tcp.auth = "token");
    /// with --consumers also in each consumer's HELLO (consumers.auth = "token")
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,

    /// With --transport http or grpc: TLS, trusting the CA certificates of --cacert
    #[arg(long, requires = "cacert")]
    pub https: bool,

    /// With --transport tcp: TLS on the binary port (a server with tcp.tls_cert), trusting
    /// the CA certificates of --cacert
    #[arg(long, requires = "cacert", conflicts_with = "https")]
    pub tls: bool,

    /// With --https or --tls: PEM file of the CA certificates the server's certificate
    /// chains to
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,

    /// With --https or --tls: the name the server's certificate must carry [default: the
    /// --addr IP]
    #[arg(long, value_name = "NAME")]
    pub tls_name: Option<String>,

    /// With --tls: PEM client certificate chain to present (a server with
    /// tcp.tls_client_ca)
    #[arg(long, value_name = "FILE", requires_all = ["tls", "key"])]
    pub cert: Option<std::path::PathBuf>,

    /// With --cert: its PEM private key
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<std::path::PathBuf>,

    /// Events to send in all, split between the connections
    #[arg(long, value_name = "N", default_value_t = 1_000_000, conflicts_with = "duration",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub events: u64,

    /// Send for this many seconds instead of a number of events (e.g. 2.5) [default: none]
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub duration: Option<f64>,

    /// Events per second in all, paced per frame; 0 sends as fast as the server takes them
    #[arg(long, value_name = "EVENTS_PER_SEC", default_value_t = 0)]
    pub rate: u64,

    /// Payload bytes per event (at most 65535; a frame must fit the server's
    /// tcp.max_frame_len, and it rejects payloads larger than its payload arena)
    #[arg(long, value_name = "BYTES", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(0..=65_535))]
    pub payload: u32,

    /// Events per frame; 1 sends EVENT frames, more sends BATCH frames
    #[arg(long, value_name = "EVENTS_PER_FRAME", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,

    /// Priority mix: names critical, high, medium, low, batch with optional weights, e.g.
    /// critical:1,high:2,medium:4,low:1,batch:1
    #[arg(long, value_name = "MIX", default_value = "medium", value_parser = PriorityMix::parse)]
    pub priority: PriorityMix,

    /// Topics: events use topic ids 0..N in turn (the server dead-letters unknown topics)
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub topics: u16,

    /// Connections (UDP: sockets), each with its own threads; events and rate are split
    /// between them
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub connections: u16,

    /// Frames sent and not yet acknowledged at most, per connection (with --ack wait; keep
    /// it within the server's tcp.inflight_frames)
    #[arg(long, value_name = "FRAMES", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub inflight: u32,

    /// Acknowledgements: wait for them or not [default: wait, none with --udp]
    #[arg(long, value_name = "MODE", value_enum)]
    pub ack: Option<AckArg>,

    /// Give up when the server does not connect, answer the HELLO, or acknowledge a frame
    /// within this many seconds
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub ack_timeout: f64,

    /// Id of the first event; ids are unique in a run
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub id_base: u64,

    /// Consumers reading the events back over the engine's consumer listener, each
    /// subscribed at `latest` (before the first send) to every log the --priority mix goes
    /// to, measuring produce→consume latency per event (from its timestamp, the send time
    /// since the Unix epoch, to its arrival); the report says when a consumer did not read
    /// every stored event (batch-lane events stored only as aggregates never come)
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=256))]
    pub consumers: u16,

    /// The engine's consumer listener (consumers.listen) [default: the --addr host, port
    /// 7072]
    #[arg(long, value_name = "HOST:PORT")]
    pub consumer_addr: Option<String>,

    /// Print the result as one JSON line on stdout instead of the text summary
    #[arg(long)]
    pub json: bool,

    /// Exit 0 even when the server dead-lettered or rejected events (by default that is a
    /// failure, exit 1: only stored events are throughput)
    #[arg(long)]
    pub allow_dead_letters: bool,

    /// Show the progress bar on stderr even when it is not a terminal or with --json
    /// [default: only when stderr is a terminal and without --json]
    #[arg(long)]
    pub progress: bool,

    /// No progress bar and no text summary (the JSON line is still printed with --json);
    /// errors still go to stderr and the exit code says how it went
    #[arg(long)]
    pub quiet: bool,
}

fn parse_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a number of seconds ({e})"))?;
    if !v.is_finite() || v <= 0.0 || v > 1e9 {
        return Err(format!(
            "{s:?}: give a number of seconds above 0 (e.g. 1 or 0.5)"
        ));
    }
    Ok(v)
}

/// Turns the flags into the load generator's config.
///
/// # Errors
/// A usage failure: an address that does not resolve, `--ack wait` with `--udp`, or a
/// setting [`LoadConfig::validate`] refuses.
pub fn config(args: &LoadgenArgs) -> Result<LoadConfig, Failure> {
    let transport = match (args.udp, args.transport) {
        (true, _) | (false, Some(TransportArg::Udp)) => Transport::Udp,
        (false, Some(TransportArg::Http)) => Transport::Http,
        (false, Some(TransportArg::Grpc)) => Transport::Grpc,
        (false, Some(TransportArg::Tcp) | None) => Transport::Tcp,
    };
    let udp = transport == Transport::Udp;
    let ack = match (args.ack, udp) {
        (Some(AckArg::Wait), true) => {
            return Err(Failure::usage(
                "--ack wait needs TCP: UDP has no acknowledgements (leave --ack out or use --ack none)",
            ));
        }
        (Some(AckArg::Wait), false) | (None, false) => AckWait::Wait,
        (Some(AckArg::None), _) | (None, true) => AckWait::None,
    };
    if !matches!(transport, Transport::Http | Transport::Grpc) && args.https {
        return Err(Failure::usage("--https is for --transport http or grpc"));
    }
    if transport == Transport::Udp && args.token.is_some() && args.consumers == 0 {
        return Err(Failure::usage(
            "--token is for --transport tcp, http or grpc, or --consumers: UDP has no HELLO to \
             carry it",
        ));
    }
    if args.tls && transport != Transport::Tcp {
        return Err(Failure::usage(
            "--tls is for --transport tcp (with --transport http or grpc, use --https)",
        ));
    }
    if !args.tls && !args.https && (args.cacert.is_some() || args.tls_name.is_some()) {
        return Err(Failure::usage(
            "--cacert and --tls-name need --https or --tls",
        ));
    }
    if args.grpc_unary && transport != Transport::Grpc {
        return Err(Failure::usage("--grpc-unary is for --transport grpc"));
    }
    let addr_text = args.addr.as_deref().unwrap_or(match transport {
        Transport::Udp => DEFAULT_UDP_ADDR,
        Transport::Http => DEFAULT_HTTP_ADDR,
        Transport::Grpc => DEFAULT_GRPC_ADDR,
        Transport::Tcp => DEFAULT_TCP_ADDR,
    });
    let addr = resolve(addr_text)?;
    let mut cfg = LoadConfig::new(addr, args.events);
    cfg.transport = transport;
    cfg.ack = ack;
    cfg.http = loadgen::HttpOptions {
        token: args.token.clone(),
        tls_ca: args.cacert.clone().filter(|_| args.https),
        server_name: args.tls_name.clone().filter(|_| args.https),
    };
    if args.tls {
        let files = pinstream_client::TlsFiles {
            ca: args.cacert.clone().unwrap_or_default(),
            client: args.cert.clone().zip(args.key.clone()),
            server_name: args.tls_name.clone(),
        };
        cfg.tls = Some(files.options().map_err(|e| Failure::usage(e.to_string()))?);
    }
    if let Some(secs) = args.duration {
        cfg.duration = Some(Duration::from_secs_f64(secs));
        cfg.events = u64::MAX;
    }
    cfg.rate = args.rate;
    cfg.payload = args.payload as usize;
    cfg.batch = args.batch;
    cfg.window = args.inflight as usize;
    cfg.priorities = args.priority.schedule();
    cfg.topics = args.topics;
    cfg.id_base = args.id_base;
    cfg.ack_timeout = Duration::from_secs_f64(args.ack_timeout);
    cfg.consumers = usize::from(args.consumers);
    cfg.consumer_addr = match &args.consumer_addr {
        Some(text) => Some(
            resolve(text)
                .map_err(|f| Failure::usage(f.message.replace("--addr", "--consumer-addr")))?,
        ),
        None => None,
    };
    cfg.validate()
        .map_err(|e| Failure::usage(format!("loadgen: {}", flag_names(&e))))?;
    Ok(cfg)
}

/// The library's messages name settings; the command's user knows them as flags.
fn flag_names(message: &str) -> String {
    message
        .replace("lower the batch", "lower --batch")
        .replace("or the payload", "or --payload")
}

fn resolve(text: &str) -> Result<SocketAddr, Failure> {
    let mut addrs = text.to_socket_addrs().map_err(|e| {
        Failure::usage(format!(
            "--addr {text:?}: not a HOST:PORT that resolves ({e})"
        ))
    })?;
    addrs
        .next()
        .ok_or_else(|| Failure::usage(format!("--addr {text:?}: the name resolves to no address")))
}

/// Runs the load generator.
///
/// # Errors
/// See the module docs.
pub fn main(args: &LoadgenArgs) -> Result<(), Failure> {
    let cfg = config(args)?;
    let connections = usize::from(args.connections);
    if cfg.transport == Transport::Grpc {
        let report = grpc::run(&cfg, connections, args.grpc_unary).map_err(|e| {
            let message = format!("loadgen: {e}");
            if e.kind() == io::ErrorKind::InvalidInput {
                Failure::usage(message)
            } else {
                Failure::runtime(message)
            }
        })?;
        return finish(args, &cfg, &report);
    }
    let show_progress =
        !args.quiet && (args.progress || (!args.json && io::stderr().is_terminal()));
    let run = loadgen::spawn(&cfg, connections).map_err(|e| {
        let message = format!("loadgen: {}", flag_names(&e.to_string()));
        if e.kind() == io::ErrorKind::InvalidInput {
            Failure::usage(message)
        } else {
            Failure::runtime(message)
        }
    })?;
    let mut bar = show_progress.then(|| ProgressBar::new(&cfg, io::stderr().is_terminal()));
    let mut next_draw = Instant::now() + PROGRESS_EVERY;
    while !run.is_finished() {
        thread::sleep(Duration::from_millis(20));
        if let Some(bar) = &mut bar
            && Instant::now() >= next_draw
        {
            next_draw += PROGRESS_EVERY;
            bar.draw(run.progress().events_sent(), run.elapsed());
        }
    }
    if let Some(bar) = &mut bar {
        bar.finish(run.progress().events_sent(), run.elapsed());
    }
    let report = run
        .join()
        .map_err(|e| Failure::runtime(format!("loadgen: {e}")))?;
    finish(args, &cfg, &report)
}

/// Prints the report and fails as its accounting says.
fn finish(
    args: &LoadgenArgs,
    cfg: &LoadConfig,
    report: &loadgen::LoadReport,
) -> Result<(), Failure> {
    let out = if args.json {
        json(report)
    } else if args.quiet {
        String::new()
    } else {
        summary(cfg, report)
    };
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::runtime(format!("loadgen: writing the report to stdout: {e}")))?;
    if let Some(e) = report.consume_error() {
        // Said, not failed: batch-lane events under `pipeline.batch_store = "aggregates"`
        // are never read back as events.
        eprintln!("pinstream: loadgen: warning: {e}");
    }
    if let Some(e) = report.accounting_error() {
        return Err(Failure::runtime(format!("loadgen: {e}")));
    }
    match report.outcomes {
        Some(o) if (o.dead_lettered > 0 || o.rejected > 0) && !args.allow_dead_letters => {
            Err(Failure::runtime(format!(
                "loadgen: the server dead-lettered {} and rejected {} of {} events (see its \
                 dead-letter log and /metrics); --allow-dead-letters accepts that",
                o.dead_lettered, o.rejected, report.sent
            )))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use hdrhistogram::Histogram;
    use pinstream_core::event::Priority;
    use pinstream_host::loadgen::LoadReport;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadgenArgs,
    }

    fn parse(args: &[&str]) -> Result<LoadgenArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("loadgen").chain(args.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let cfg = config(&parse(&[]).unwrap()).unwrap();
        assert_eq!(cfg.addr, "127.0.0.1:7070".parse().unwrap());
        assert_eq!(cfg.transport, Transport::Tcp);
        assert_eq!(cfg.ack, AckWait::Wait);
        assert_eq!(cfg.events, 1_000_000);
        assert_eq!(cfg.duration, None);
        assert_eq!(cfg.rate, 0);
        assert_eq!(cfg.payload, 100);
        assert_eq!(cfg.batch, 64);
        assert_eq!(cfg.priorities, [Priority::Medium]);
        assert_eq!(cfg.topics, 1);
        assert_eq!(cfg.window, 256);
        assert_eq!(cfg.id_base, 1);
        assert_eq!(cfg.ack_timeout, Duration::from_secs(10));
        assert_eq!(cfg.consumers, 0);
        assert_eq!(cfg.consumer_addr(), "127.0.0.1:7072".parse().unwrap());
        let with =
            config(&parse(&["--consumers", "3", "--consumer-addr", "127.0.0.1:9000"]).unwrap())
                .unwrap();
        assert_eq!(
            (with.consumers, with.consumer_addr()),
            (3, "127.0.0.1:9000".parse().unwrap())
        );
        let udp = config(&parse(&["--udp"]).unwrap()).unwrap();
        assert_eq!(udp.addr, "127.0.0.1:7071".parse().unwrap());
        assert_eq!(udp.ack, AckWait::None);
    }

    #[test]
    fn a_token_goes_over_http_or_tcp_and_https_over_http_only() {
        let udp = config(&parse(&["--transport", "udp"]).unwrap()).unwrap();
        assert_eq!((udp.transport, udp.ack), (Transport::Udp, AckWait::None));
        let h = config(
            &parse(&[
                "--transport",
                "http",
                "--token",
                "t0k",
                "--https",
                "--cacert",
                "ca.pem",
            ])
            .unwrap(),
        )
        .unwrap();
        assert_eq!(h.transport, Transport::Http);
        assert_eq!(h.addr, "127.0.0.1:7080".parse().unwrap());
        assert_eq!(h.ack, AckWait::Wait);
        assert_eq!(h.http.token.as_deref(), Some("t0k"));
        assert_eq!(h.http.tls_ca, Some("ca.pem".into()));
        // --https needs the CA; --udp and --transport are one choice.
        assert!(parse(&["--transport", "http", "--https"]).is_err());
        assert!(parse(&["--udp", "--transport", "http"]).is_err());
        // A token over TCP goes in the HELLO; UDP has none.
        let t = config(&parse(&["--token", "t0k"]).unwrap()).unwrap();
        assert_eq!(
            (t.transport, t.http.token.as_deref()),
            (Transport::Tcp, Some("t0k"))
        );
        let e = config(&parse(&["--udp", "--token", "t0k"]).unwrap()).unwrap_err();
        assert!(e.message.contains("UDP has no HELLO"), "{}", e.message);
        // ... but its consumers have one (consumers.auth = "token").
        let u = config(&parse(&["--udp", "--token", "t0k", "--consumers", "1"]).unwrap()).unwrap();
        assert_eq!(
            (u.transport, u.http.token.as_deref(), u.consumers),
            (Transport::Udp, Some("t0k"), 1)
        );
        let e = config(&parse(&["--https", "--cacert", "ca.pem"]).unwrap()).unwrap_err();
        assert!(e.message.contains("--transport http"), "{}", e.message);
    }

    #[test]
    fn transport_grpc_takes_a_token_tls_and_unary_and_the_others_refuse_unary() {
        let g = config(
            &parse(&[
                "--transport",
                "grpc",
                "--token",
                "t0k",
                "--https",
                "--cacert",
                "ca.pem",
                "--grpc-unary",
            ])
            .unwrap(),
        )
        .unwrap();
        assert_eq!(g.transport, Transport::Grpc);
        assert_eq!(g.addr, "127.0.0.1:7090".parse().unwrap());
        assert_eq!(g.http.token.as_deref(), Some("t0k"));
        let e = config(&parse(&["--grpc-unary"]).unwrap()).unwrap_err();
        assert!(e.message.contains("--transport grpc"), "{}", e.message);
    }

    #[test]
    fn tls_is_for_tcp_and_needs_a_ca() {
        // --tls needs --cacert; a client certificate needs --tls and its key.
        assert!(parse(&["--tls"]).is_err());
        assert!(parse(&["--tls", "--cacert", "ca.pem", "--cert", "c.pem"]).is_err());
        assert!(parse(&["--tls", "--https", "--cacert", "ca.pem"]).is_err());
        let e = config(&parse(&["--transport", "udp", "--tls", "--cacert", "ca.pem"]).unwrap())
            .unwrap_err();
        assert!(e.message.contains("--transport tcp"), "{}", e.message);
        let e = config(&parse(&["--cacert", "ca.pem"]).unwrap()).unwrap_err();
        assert!(e.message.contains("--https or --tls"), "{}", e.message);
        // A CA file that is not there is named.
        let e = config(&parse(&["--tls", "--cacert", "/nonexistent/ca.pem"]).unwrap()).unwrap_err();
        assert!(e.message.contains("/nonexistent/ca.pem"), "{}", e.message);
    }

    #[test]
    fn duration_replaces_events_and_conflicts_with_it() {
        let cfg = config(&parse(&["--duration", "0.5", "--rate", "100"]).unwrap()).unwrap();
        assert_eq!(cfg.duration, Some(Duration::from_millis(500)));
        assert_eq!(cfg.events, u64::MAX);
        assert!(parse(&["--duration", "1", "--events", "5"]).is_err());
        assert!(parse(&["--duration", "0"]).is_err());
        assert!(parse(&["--duration", "soon"]).is_err());
    }

    #[test]
    fn bad_combinations_are_usage_errors() {
        let e = config(&parse(&["--udp", "--ack", "wait"]).unwrap()).unwrap_err();
        assert_eq!(e.code, 2);
        assert!(e.message.contains("--ack wait needs TCP"), "{}", e.message);
        let e = config(&parse(&["--udp", "--batch", "600"]).unwrap()).unwrap_err();
        assert!(e.message.contains("lower --batch to 496"), "{}", e.message);
        let e = config(&parse(&["--addr", "nowhere"]).unwrap()).unwrap_err();
        assert!(e.message.contains("--addr \"nowhere\""), "{}", e.message);
        assert!(parse(&["--priority", "urgent"]).is_err());
        assert!(parse(&["--batch", "0"]).is_err());
        assert!(parse(&["--connections", "0"]).is_err());
        assert!(parse(&["--payload", "70000"]).is_err());
    }

    #[test]
    fn priority_mix_becomes_a_weighted_cycle() {
        let cfg = config(&parse(&["--priority", "critical:1,low:3"]).unwrap()).unwrap();
        assert_eq!(cfg.priorities.len(), 4);
        let low = cfg
            .priorities
            .iter()
            .filter(|&&p| p == Priority::Low)
            .count();
        assert_eq!(low, 3);
    }

    fn report(ack: AckWait) -> LoadReport {
        let mut h = Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        LoadReport {
            transport: Transport::Tcp,
            ack,
            connections: 1,
            sent: 1000,
            frames: 16,
            bytes: 200_000,
            elapsed: Duration::from_millis(500),
            outcomes: (ack == AckWait::Wait).then_some(loadgen::Outcomes {
                stored: 990,
                duplicates: 0,
                dead_lettered: 10,
                rejected: 0,
            }),
            reject_frames: 0,
            first_reject: None,
            ack_latency: (ack == AckWait::Wait).then_some(h),
            consume: None,
        }
    }

    #[test]
    fn json_has_the_keys_in_order_and_nulls_without_acks() {
        let j = json(&report(AckWait::Wait));
        assert!(j.starts_with(
            "{\"system\":\"pinstream\",\"transport\":\"tcp\",\"events\":1000,\"seconds\":0.500000,\"events_per_sec\":2000.0,\"bytes_per_sec\":400000.0,\"stored_per_sec\":1980.0,\"stored\":990,\"duplicates\":0,\"dead_lettered\":10,\"rejected\":0,\"ack_p50_us\":500."
        ), "{j}");
        assert!(j.contains("\"ack_max_us\":1000."), "{j}");
        assert!(j.ends_with("}\n"));
        serde_json::from_str::<serde_json::Value>(&j).expect("valid JSON");
        let j = json(&report(AckWait::None));
        assert!(j.contains("\"stored_per_sec\":null,\"stored\":null,\"duplicates\":null,\"dead_lettered\":null,\"rejected\":null,\"ack_p50_us\":null,\"ack_p90_us\":null,\"ack_p99_us\":null,\"ack_p999_us\":null,\"ack_max_us\":null}"), "{j}");
    }

    #[test]
    fn progress_line_shows_count_or_time_and_rate() {
        let cfg = LoadConfig::new("127.0.0.1:1".parse().unwrap(), 1000);
        let mut bar = ProgressBar::new(&cfg, false);
        let line = bar.line(500, Duration::from_millis(500));
        assert!(
            line.starts_with(&format!(
                "[{}{}]  50.0% 500/1000 events",
                "#".repeat(15),
                ".".repeat(15)
            )),
            "{line}"
        );
        assert!(line.ends_with("1000 events/s"), "{line}");
        let mut timed = cfg.clone();
        timed.duration = Some(Duration::from_secs(2));
        let mut bar = ProgressBar::new(&timed, false);
        let line = bar.line(10, Duration::from_secs(1));
        assert!(line.contains(" 50.0% 1.0/2.0 s, 10 events"), "{line}");
    }
}
