//! Loopback TCP ingest -> storage: events/s and acknowledgement latency for 100-byte events,
//! with durability `none` and `interval` (1 ms group commit), durable acks.
//!
//! ```text
//! cargo run --release -p pinstream-host --example ingest_bench -- [EVENTS] [CONNECTIONS]
//! ```
//!
//! The engine runs unpinned (overprovisioned: this machine has 2 CPUs, and the load
//! generator needs one too); its data goes to a fresh directory under the system temp dir,
//! removed afterwards.

use std::time::Duration;

use pinstream_core::event::Priority;
use pinstream_host::engine::{Engine, EngineConfig};
use pinstream_host::idle::IdleStrategy;
use pinstream_host::loadgen::{self, LoadConfig};
use pinstream_host::storage::Durability;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let events: u64 = args.next().map_or(Ok(4_000_000), |a| a.parse())?;
    let connections: usize = args.next().map_or(Ok(1), |a| a.parse())?;
    println!(
        "{events} events of 100 bytes, 64 per frame, {connections} connection(s), durable acks"
    );
    println!(
        "{:<22} {:>12} {:>10} {:>10} {:>10} {:>10}",
        "durability", "events/s", "ack p50", "ack p99", "ack p99.9", "ack max"
    );
    for (name, durability) in [
        ("none", Durability::None),
        (
            "interval 1 ms",
            Durability::Interval {
                max_delay: Duration::from_millis(1),
                max_bytes: 4 << 20,
            },
        ),
        ("always", Durability::Always),
    ] {
        let dir = std::env::temp_dir().join(format!("pinstream-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = EngineConfig::local(&dir);
        cfg.log.durability = durability;
        cfg.log.segment_bytes = 1 << 30;
        cfg.log.write_buffer_bytes = 1 << 20;
        cfg.udp = None;
        cfg.placement.idle = IdleStrategy::SpinPark {
            spins: 1000,
            yields: 10,
            park: Duration::from_micros(50),
        };
        let engine = Engine::start(cfg)?;
        let addr = engine.started.tcp.ok_or("no TCP address")?;
        let mut lc = LoadConfig::new(addr, events);
        lc.priorities = vec![Priority::High];
        lc.window = 128;
        let report = loadgen::spawn(&lc, connections)?.join()?;
        engine.stop()?;
        let _ = std::fs::remove_dir_all(&dir);
        let lat = report.ack_latency.as_ref().ok_or("no ACK latencies")?;
        let us = |q: f64| lat.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{:<22} {:>12.0} {:>8.0}us {:>8.0}us {:>8.0}us {:>8.0}us",
            name,
            report.events_per_sec(),
            us(0.5),
            us(0.99),
            us(0.999),
            lat.max() as f64 / 1000.0
        );
        let outcomes = report.outcomes.unwrap_or_default();
        if outcomes.stored != report.sent {
            return Err(format!(
                "{name}: {} of {} events acknowledged as stored, {} dead-lettered, {} rejected",
                outcomes.stored, report.sent, outcomes.dead_lettered, outcomes.rejected
            )
            .into());
        }
    }
    Ok(())
}
