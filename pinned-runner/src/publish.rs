//! `pinstream publish`: sends events read as JSON lines on stdin to an engine, through
//! [`pinstream_client::Producer`] (a version-2 producer session: after a lost connection it
//! reconnects under the same producer id and resends what was not acknowledged, and the
//! engine answers what it has already as duplicates), then prints what the engine answered.
//!
//! Exit codes: 2 for bad flags or config, 1 when the engine cannot be reached, or when an
//! event was rejected or dead-lettered, or an input line was bad (reported on stderr with its
//! number and not sent).

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pinstream_client::{Producer, ProducerOptions, Totals, reason_text};
use pinstream_core::event::{EventHeader, Priority};
use pinstream_host::config::Config;
use serde::{Deserialize, Serialize};

use crate::Failure;

/// Default address: the engine's default `tcp.listen`.
const DEFAULT_ADDR: &str = "127.0.0.1:7070";
/// Bits of a generated id below the producer id.
const GENERATED_ID_BITS: u32 = 40;

/// `pinstream publish` flags.
#[derive(clap::Args, Debug)]
#[command(
    about = "Send events read as JSON lines on stdin to an engine and report what it answered",
    long_about = "Send events to an engine over TCP, one JSON object per line on stdin, e.g.\n\n  \
{\"id\": 7, \"topic\": \"default\", \"priority\": \"high\", \"value\": 3, \"payload\": \"text\"}\n\n\
Every field is optional. topic: a name of the engine's pipeline.topics (from --config, else \
the embedded default config, where \"default\" is 0) or a numeric id; priority: critical, \
high, medium, low or batch; value: a signed 64-bit number; timestamp: nanoseconds since the \
Unix epoch (default: when the line is read); payload: a string sent as its UTF-8 bytes, or \
payload_base64 for other bytes. Lines that `pinstream consume` prints are accepted (their \
other fields are ignored). A missing id is generated: the producer id the engine assigned, \
shifted left by 40 bits, plus a counter from 1 (unique per producer for 2^40 events; give ids \
yourself when the transactional lane must recognise resends across runs).\n\n\
Events are sent in frames as lines come (at once when stdin pauses) and acknowledged before \
the command ends. A bad line is reported on stderr with its number, counted, and not \
sent. At the end it prints the outcomes: stored, duplicates (the engine had them already), \
dead-lettered, rejected (each with its reason), bad lines; as one JSON object with --json. \
The exit status is 1 if any event was rejected or dead-lettered or any line was bad."
)]
pub struct PublishArgs {
    /// The engine's TCP address (tcp.listen)
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_ADDR)]
    pub addr: String,

    /// Topic of lines that name none: a name of pipeline.topics or a numeric id
    #[arg(long, value_name = "NAME|ID", default_value = "default")]
    pub topic: String,

    /// Priority of lines that name none: critical, high, medium, low or batch
    #[arg(long, value_name = "PRIORITY", default_value = "medium", value_parser = parse_priority)]
    pub priority: Priority,

    /// The engine's config file, for topic names [default: the embedded default config]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the outcomes as one JSON object instead of text
    #[arg(long)]
    pub json: bool,

    /// Give up when the engine does not connect or acknowledge within this many seconds
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub timeout: u64,

    /// The authentication token the HELLO carries, for an engine with tcp.auth = "token"
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// TLS on the binary port (an engine with tcp.tls_cert), trusting the CA certificates
    /// of --cacert
    #[arg(long, requires = "cacert")]
    pub tls: bool,

    /// With --tls: PEM file of the CA certificates the engine's certificate chains to
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub cacert: Option<PathBuf>,

    /// With --tls: the name the engine's certificate must carry [default: the --addr IP]
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub tls_name: Option<String>,

    /// With --tls: PEM client certificate chain to present (an engine with
    /// tcp.tls_client_ca)
    #[arg(long, value_name = "FILE", requires_all = ["tls", "key"])]
    pub cert: Option<PathBuf>,

    /// With --cert: its PEM private key
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

fn parse_priority(s: &str) -> Result<Priority, String> {
    Priority::from_name(s)
        .ok_or_else(|| format!("unknown priority {s:?}: critical, high, medium, low or batch"))
}

/// A topic in a line: a name or an id.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(untagged)]
enum TopicRef {
    Id(u64),
    Name(String),
}

/// One input line. Unknown fields are ignored, so `consume`'s lines can be sent back.
#[derive(Deserialize, Debug, Default)]
struct Line {
    id: Option<u64>,
    topic: Option<TopicRef>,
    priority: Option<String>,
    value: Option<i64>,
    timestamp: Option<u64>,
    payload: Option<String>,
    payload_base64: Option<String>,
}

/// Topic names to ids.
struct Topics(HashMap<String, u16>);

impl Topics {
    fn new(names: &[String]) -> Self {
        Self(
            names
                .iter()
                .enumerate()
                .filter_map(|(i, n)| u16::try_from(i).ok().map(|i| (n.clone(), i)))
                .collect(),
        )
    }

    /// The id of a topic written as a name or a number.
    fn id(&self, topic: &TopicRef) -> Result<u16, String> {
        match topic {
            TopicRef::Id(id) => {
                u16::try_from(*id).map_err(|_| format!("topic id {id} is above 65535"))
            }
            TopicRef::Name(name) => match self.0.get(name) {
                Some(&id) => Ok(id),
                None => name.parse::<u16>().map_err(|_| {
                    let mut known: Vec<&str> = self.0.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    format!(
                        "unknown topic {name:?} (the config's pipeline.topics: {})",
                        known.join(", ")
                    )
                }),
            },
        }
    }
}

/// An event to send: its header (id 0 = to be generated) and payload.
fn event(
    text: &str,
    topics: &Topics,
    default_topic: u16,
    default_priority: Priority,
    now: u64,
) -> Result<(EventHeader, Vec<u8>), String> {
    let line: Line = serde_json::from_str(text).map_err(|e| format!("not a JSON event: {e}"))?;
    let topic = match &line.topic {
        Some(t) => topics.id(t)?,
        None => default_topic,
    };
    let priority = match &line.priority {
        Some(p) => parse_priority(p)?,
        None => default_priority,
    };
    let payload = match (line.payload, line.payload_base64) {
        (Some(_), Some(_)) => return Err("both payload and payload_base64".to_owned()),
        (Some(p), None) => p.into_bytes(),
        (None, Some(b)) => base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &b)
            .map_err(|e| format!("payload_base64: {e}"))?,
        (None, None) => Vec::new(),
    };
    if payload.len() > pinstream_core::wire::MAX_PAYLOAD_LEN {
        return Err(format!(
            "payload of {} bytes: at most {}",
            payload.len(),
            pinstream_core::wire::MAX_PAYLOAD_LEN
        ));
    }
    let mut header = EventHeader::new(
        line.id.unwrap_or(0),
        topic,
        priority,
        line.timestamp.unwrap_or(now),
    );
    if let Some(v) = line.value {
        header = header.with_value(v);
    }
    if line.id == Some(0) {
        return Err("id 0 is kept for generated ids: leave id out instead".to_owned());
    }
    Ok((header, payload))
}

/// One rejected event in the report.
#[derive(Serialize, Debug)]
struct RejectJson {
    event_id: u64,
    reason: String,
    reason_code: u16,
}

/// The outcome, printed at the end.
#[derive(Serialize, Debug)]
struct Report {
    sent: u64,
    stored: u64,
    duplicates: u64,
    dead_lettered: u64,
    rejected: u64,
    bad_lines: u64,
    reconnects: u64,
    producer_id: u64,
    rejects: Vec<RejectJson>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn resolve(addr: &str) -> Result<SocketAddr, Failure> {
    addr.to_socket_addrs()
        .map_err(|e| Failure::usage(format!("--addr {addr}: {e}")))?
        .next()
        .ok_or_else(|| Failure::usage(format!("--addr {addr}: no address")))
}

/// Runs `pinstream publish`.
pub fn main(args: &PublishArgs) -> Result<(), Failure> {
    let addr = resolve(&args.addr)?;
    let config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| Failure::usage(e.to_string()))?,
        None => Config::embedded_default(),
    };
    let topics = Topics::new(&config.pipeline.topics);
    let default_topic = topics
        .id(&TopicRef::Name(args.topic.clone()))
        .map_err(|e| Failure::usage(format!("--topic: {e}")))?;
    let options = ProducerOptions {
        max_frame_len: 1 << 20,
        timeout: Duration::from_secs(args.timeout.max(1)),
        token: args.token.as_ref().map(|t| t.as_bytes().to_vec()),
        ..ProducerOptions::default()
    };
    let tls = match (&args.tls, &args.cacert) {
        (true, Some(ca)) => Some(
            pinstream_client::TlsFiles {
                ca: ca.clone(),
                client: args.cert.clone().zip(args.key.clone()),
                server_name: args.tls_name.clone(),
            }
            .options()
            .map_err(|e| Failure::usage(e.to_string()))?,
        ),
        _ => None,
    };
    let mut producer =
        Producer::connect_with(addr, options, tls).map_err(|e| Failure::runtime(e.to_string()))?;
    let id_base = producer.producer_id() << GENERATED_ID_BITS;
    let runtime = |e: io::Error| Failure::runtime(e.to_string());
    let (mut sent, mut bad, mut generated) = (0u64, 0u64, 0u64);
    let mut rejects = Vec::new();
    let mut input = BufReader::with_capacity(1 << 20, io::stdin().lock());
    let mut text = String::new();
    for number in 1u64.. {
        text.clear();
        match input.read_line(&mut text) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                eprintln!("pinstream publish: line {number}: cannot read stdin: {e}");
                bad += 1;
                break;
            }
        }
        if text.trim().is_empty() {
            continue;
        }
        match event(&text, &topics, default_topic, args.priority, now_ns()) {
            Ok((mut header, payload)) => {
                if header.id == 0 {
                    generated += 1;
                    header.id = id_base | generated;
                }
                producer.push(&header, &payload).map_err(runtime)?;
                sent += 1;
            }
            Err(e) => {
                eprintln!("pinstream publish: line {number}: {e}; not sent");
                bad += 1;
            }
        }
        // Stdin has nothing more buffered (a pause, or the next block of a file): send
        // what is staged now, without waiting for acknowledgements.
        if input.buffer().is_empty() {
            producer.send_now().map_err(runtime)?;
        }
    }
    let totals: Totals = producer.flush().map_err(runtime)?;
    rejects.extend(producer.take_rejects());
    let report = Report {
        sent,
        stored: totals.stored,
        duplicates: totals.duplicates,
        dead_lettered: totals.dead_lettered,
        rejected: totals.rejected,
        bad_lines: bad,
        reconnects: producer.reconnects(),
        producer_id: producer.producer_id(),
        rejects: rejects
            .iter()
            .map(|r| RejectJson {
                event_id: r.event_id,
                reason: reason_text(r.reason),
                reason_code: r.reason,
            })
            .collect(),
    };
    print_report(&report, args.json);
    if report.rejected + report.dead_lettered + report.bad_lines > 0 {
        return Err(Failure::runtime(format!(
            "{} rejected, {} dead-lettered, {} bad input line(s)",
            report.rejected, report.dead_lettered, report.bad_lines
        )));
    }
    Ok(())
}

fn print_report(r: &Report, json: bool) {
    if json {
        println!("{}", crate::log::render::to_json_line(r));
        return;
    }
    println!(
        "sent {} events (producer {}, {} reconnects): stored {}, duplicates {}, dead-lettered {}, \
         rejected {}; bad input lines {}",
        r.sent,
        r.producer_id,
        r.reconnects,
        r.stored,
        r.duplicates,
        r.dead_lettered,
        r.rejected,
        r.bad_lines
    );
    for j in &r.rejects {
        println!("  rejected: event id {}: {}", j.event_id, j.reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: PublishArgs,
    }

    fn topics() -> Topics {
        Topics::new(&["default".to_owned(), "billing".to_owned()])
    }

    #[test]
    fn flags_have_defaults() {
        let a = Cli::try_parse_from(["publish"]).unwrap().args;
        assert_eq!(
            (a.addr.as_str(), a.topic.as_str()),
            (DEFAULT_ADDR, "default")
        );
        assert_eq!(a.priority, Priority::Medium);
        let a = Cli::try_parse_from(["publish", "--priority", "critical", "--json"])
            .unwrap()
            .args;
        assert!(a.json);
        assert_eq!(a.priority, Priority::Critical);
        assert!(Cli::try_parse_from(["publish", "--priority", "urgent"]).is_err());
    }

    #[test]
    fn lines_become_events() {
        let t = topics();
        let (h, p) = event(
            r#"{"id": 7, "topic": "billing", "payload": "text", "priority": "high", "value": 3}"#,
            &t,
            0,
            Priority::Low,
            99,
        )
        .unwrap();
        assert_eq!(
            (h.id, h.topic, h.priority, h.timestamp),
            (7, 1, Priority::High, 99)
        );
        assert_eq!((h.value(), p.as_slice()), (Some(3), &b"text"[..]));
        // Defaults from the flags, an id to generate, no value, no payload.
        let (h, p) = event("{}", &t, 1, Priority::Batch, 5).unwrap();
        assert_eq!(
            (h.id, h.topic, h.priority, h.value()),
            (0, 1, Priority::Batch, None)
        );
        assert!(p.is_empty());
        // A numeric topic, base64, a consume line's extra fields.
        let (h, p) = event(
            r#"{"topic": 9, "payload_base64": "AAH/", "offset": 3, "lane": "realtime", "timestamp": 1}"#,
            &t,
            0,
            Priority::Low,
            5,
        )
        .unwrap();
        assert_eq!(
            (h.topic, h.timestamp, p.as_slice()),
            (9, 1, &[0u8, 1, 255][..])
        );
    }

    #[test]
    fn bad_lines_say_why() {
        let t = topics();
        let err = |s: &str| event(s, &t, 0, Priority::Low, 0).unwrap_err();
        assert!(err("not json").contains("not a JSON event"));
        assert!(err(r#"{"topic": "nope"}"#).contains("unknown topic \"nope\""));
        assert!(err(r#"{"topic": 70000}"#).contains("above 65535"));
        assert!(err(r#"{"priority": "urgent"}"#).contains("unknown priority"));
        assert!(err(r#"{"payload": "a", "payload_base64": "YQ=="}"#).contains("both"));
        assert!(err(r#"{"payload_base64": "!!"}"#).contains("payload_base64"));
        assert!(err(r#"{"id": 0}"#).contains("id 0"));
        assert!(err(r#"{"id": -1}"#).contains("not a JSON event"));
    }
}
