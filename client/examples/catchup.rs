//! Catch-up read throughput: one consumer reads a log from its first record to the high
//! watermark it found on subscribing, and says how fast (stored records only: the records
//! the engine holds, read back through the page cache).
//!
//! ```text
//! cargo run --release -p pinstream-client --example catchup -- 127.0.0.1:7072 realtime [--json]
//! ```
//!
//! `--json` prints one JSON line instead (`events`, `events_per_sec`, `ns_per_event`,
//! `bytes_per_sec`, `first_message_ms`: the keys `benches/vs-nats.sh` reads).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pinstream_client::{Consumer, ConsumerOptions};
use pinstream_core::wire::{Start, StreamLog};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let json = std::env::args().any(|a| a == "--json");
    let mut args = std::env::args().skip(1).filter(|a| a != "--json");
    let addr: SocketAddr = args.next().unwrap_or("127.0.0.1:7072".into()).parse()?;
    let log_name = args.next().unwrap_or("realtime".into());
    let log = StreamLog::from_name(&log_name).ok_or(format!("no log named {log_name}"))?;
    let options = ConsumerOptions {
        window_bytes: 64 << 20,
        max_frame_len: 1 << 20,
        ..ConsumerOptions::new(log, Start::Earliest)
    };
    let t0 = Instant::now();
    let mut consumer = Consumer::connect(addr, options)?;
    let end = consumer.subscribed().high_watermark;
    let first = consumer.subscribed().start_offset;
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut first_record = None;
    while consumer.position() < end {
        match consumer.next_timeout(Duration::from_secs(5))? {
            Some(r) => {
                first_record.get_or_insert_with(|| t0.elapsed());
                records += 1;
                bytes += r.as_bytes().len() as u64;
            }
            None => return Err("no record for 5 s before the high watermark".into()),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    if json {
        println!(
            "{{\"log\":\"{log_name}\",\"events\":{records},\"events_per_sec\":{:.0},\"ns_per_event\":{:.0},\"bytes_per_sec\":{:.0},\"first_message_ms\":{:.3}}}",
            records as f64 / secs,
            secs * 1e9 / records.max(1) as f64,
            bytes as f64 / secs,
            first_record.unwrap_or_default().as_secs_f64() * 1e3
        );
        return Ok(());
    }
    println!(
        "{log_name}: {records} records ({first}..{end}), {:.1} MB in {secs:.2} s: {:.2} M records/s, {:.0} MB/s, {:.0} ns/record",
        bytes as f64 / 1e6,
        records as f64 / secs / 1e6,
        bytes as f64 / secs / 1e6,
        secs * 1e9 / records.max(1) as f64
    );
    Ok(())
}
