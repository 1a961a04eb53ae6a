//! What start-up recovery found reaches `/health`: a log damaged while the engine was stopped
//! is quarantined at start, and the health document says so until the next start.

use std::fs;
use std::path::PathBuf;

use pinstream_host::admin::AdminSource;
use pinstream_host::engine::{Engine, EngineConfig};
use pinstream_host::storage::{Log, LogConfig, RECORD_HEADER_LEN};

#[test]
fn damage_found_at_start_up_is_in_the_health_document() {
    let dir =
        std::env::temp_dir().join(format!("pinstream-engine-recovery-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    // A clean engine start first: the health says the recovery was clean.
    let engine = Engine::start(EngineConfig::local(dir.clone())).unwrap();
    let json = engine.stats().health().to_json();
    assert!(json.contains("\"recovery\":\"clean\""), "{json}");
    let _ = engine.stop();

    // Records written and closed cleanly (the checkpoint covers them), then one flipped bit.
    let log_dir = dir.join("transactional");
    let (mut log, _) = Log::open(LogConfig::new(&log_dir)).unwrap();
    for i in 0..20u8 {
        log.append(1, &[i; 40]).unwrap();
    }
    log.close().unwrap();
    let seg: PathBuf = log_dir.join("00000000000000000000.log");
    let mut bytes = fs::read(&seg).unwrap();
    bytes[3 * (RECORD_HEADER_LEN + 40) + RECORD_HEADER_LEN + 5] ^= 0x01;
    fs::write(&seg, &bytes).unwrap();

    let engine = Engine::start(EngineConfig::local(dir.clone())).unwrap();
    let report = &engine.started.recovery[1];
    assert_eq!(report.quarantined.len(), 1, "{report}");
    let health = engine.stats().health();
    let json = health.to_json();
    assert!(
        json.contains(
            "\"recovery\":\"damage found at start-up (transactional: 1 segment(s) quarantined, \
             0 offset(s) missing)"
        ),
        "{json}"
    );
    let _ = engine.stop();
    let _ = fs::remove_dir_all(&dir);
}
