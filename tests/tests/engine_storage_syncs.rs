//! `pinstream_storage_syncs_total` counts real fdatasync calls: none under durability `none`
//! (commits only write to the page cache), some under `interval` and `always`.

use std::time::Duration;

use pinstream_core::event::{EventHeader, Priority};
use pinstream_host::admin::AdminSource;
use pinstream_host::engine::{Engine, EngineConfig};
use pinstream_host::storage::Durability;
use pinstream_tests::TempDir;
use pinstream_tests::client::Client;

const WAIT: Duration = Duration::from_secs(20);

/// Starts an engine with `durability`, stores 200 events acknowledged as durable, and returns
/// (records stored, syncs counted, the syncs line of /metrics) before it stops.
fn store_with(durability: Durability) -> (u64, u64, String) {
    let dir = TempDir::new("syncs");
    let mut cfg = EngineConfig::local(dir.path());
    cfg.log.durability = durability;
    let engine = Engine::start(cfg).unwrap();
    let mut client = Client::connect(engine.started.tcp.unwrap()).unwrap();
    for seq in 1..=10u64 {
        let events: Vec<_> = (0..20)
            .map(|i| EventHeader::new(seq * 100 + i, 0, Priority::High, 0))
            .collect();
        client
            .send(&Client::batch(seq, &events, |_| vec![3; 64]))
            .unwrap();
    }
    let (ack, _) = client.wait_ack(10, WAIT).unwrap();
    assert_eq!(ack.stored, 200, "{durability:?}");
    let stats = engine.stats().clone();
    let mut metrics = String::new();
    stats.render_metrics(&mut metrics);
    let line = metrics
        .lines()
        .find(|l| l.starts_with("pinstream_storage_syncs_total "))
        .expect("the syncs counter is exported")
        .to_owned();
    let result = (
        stats.host.storage_records.get(),
        stats.host.storage_syncs.get(),
        line,
    );
    engine.stop().unwrap();
    result
}

#[test]
fn durability_none_counts_no_syncs() {
    let (records, syncs, line) = store_with(Durability::None);
    assert!(records >= 200, "{records} records");
    assert_eq!(syncs, 0, "nothing is fdatasynced under `none`");
    assert_eq!(line, "pinstream_storage_syncs_total 0");
}

#[test]
fn durability_interval_and_always_count_their_syncs() {
    for durability in [
        Durability::Interval {
            max_delay: Duration::from_millis(1),
            max_bytes: 1 << 20,
        },
        Durability::Always,
    ] {
        let (records, syncs, line) = store_with(durability);
        assert!(records >= 200, "{durability:?}: {records} records");
        // Durable acks came back, so at least one fdatasync covered them.
        assert!(syncs > 0, "{durability:?}: {syncs} syncs");
        let exported: u64 = line
            .trim_start_matches("pinstream_storage_syncs_total ")
            .parse()
            .expect("a count");
        assert!(exported > 0, "{durability:?}: {line}");
    }
}
