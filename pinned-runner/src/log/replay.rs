//! `pinstream log replay`: sends the stored events of a range to another engine as BATCH
//! frames and reports its ACK.

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use pinstream_client::{Producer, ProducerOptions, Totals, reason_text};
use pinstream_core::event::EventHeader;
use pinstream_core::wire::{BATCH_PREFIX_LEN, EVENT_RECORD_LEN, HEADER_LEN, TRAILER_LEN};
use pinstream_host::storage::record::{self, RecordBody};
use pinstream_host::storage::{LogReader, StorageError};

use super::ReplayArgs;
use super::open::{open_logs, report_damage};
use super::render::kind_name;
use crate::Failure;

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
    fn connect(
        target: &str,
        batch: u32,
        timeout: Duration,
        token: Option<&str>,
    ) -> Result<Self, Failure> {
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
            token: token.map(|t| t.as_bytes().to_vec()),
            ..ProducerOptions::default()
        };
        let mut last_err = None;
        for addr in addrs {
            match Producer::connect(addr, options.clone()) {
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

pub(super) fn run(dir: &Path, args: &ReplayArgs) -> Result<(), Failure> {
    if let Some(to) = args.to_offset
        && to <= args.from
    {
        return Err(Failure::usage(format!(
            "--to-offset {to} is not above --from {}: the range [from, to-offset) is empty",
            args.from
        )));
    }
    let logs = open_logs(dir, &args.log.names())?;
    let timeout = Duration::from_secs(args.ack_timeout);
    let mut sender = Sender::connect(&args.to, args.batch, timeout, args.token.as_deref())?;
    let mut damaged = 0u64;
    for (name, reader) in logs {
        damaged += send_log(&mut sender, name, reader, args)?;
    }
    sender.finish()?;
    print_totals(&sender);
    if damaged > 0 {
        return Err(Failure::runtime(format!(
            "{damaged} damaged stretch(es) or record(s) were skipped (above); run `pinstream log \
             verify`"
        )));
    }
    Ok(())
}

/// Pushes the events of log `name` in the range of `args` through `sender` and says what it
/// sent; the number of damaged stretches and undecodable records skipped (said on stderr).
fn send_log(
    sender: &mut Sender,
    name: &str,
    mut reader: LogReader,
    args: &ReplayArgs,
) -> Result<u64, Failure> {
    reader
        .seek(args.from)
        .map_err(|e| Failure::runtime(format!("cannot read the {name} log: {e}")))?;
    let (mut damaged, mut count, mut first, mut last) = (0u64, 0u64, None, None);
    let mut skipped = 0u64;
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
                // An old batch log holds its aggregates among its events: said once, counted.
                if skipped == 0 {
                    eprintln!(
                        "pinstream: {name} log: the record at offset {} is a {}, not an event: \
                         not replayed",
                        rec.offset,
                        kind_name(rec.kind)
                    );
                }
                skipped += 1;
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
    if skipped > 1 {
        eprintln!("pinstream: {name} log: {skipped} record(s) that are not events not replayed");
    }
    match (first, last) {
        (Some(f), Some(l)) => println!("{name}: {count} event(s), offsets {f}..={l}"),
        _ => println!("{name}: no events in the range"),
    }
    Ok(damaged)
}

/// What was sent and what the other engine acknowledged.
fn print_totals(sender: &Sender) {
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
}
