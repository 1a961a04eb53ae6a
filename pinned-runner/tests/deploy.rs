//! The files in `deploy/` against a live engine: every metric the Grafana dashboard and the
//! alerting rules query exists in `/metrics` of a running `pinstream run` (after events, a
//! named consumer and a closed connection, so the labelled families have series), and the
//! dashboard is well-formed. `promtool check rules/config` runs when promtool is on PATH.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;

use pinstream_tests::TempDir;

mod common;
use common::{Runner, WAIT};

fn pinstream(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_pinstream"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pinstream {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn metrics(admin: SocketAddr) -> String {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    reply
}

/// `(family, type)` of every `# TYPE` line.
fn families(exposition: &str) -> Vec<(String, String)> {
    exposition
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("# TYPE ")?.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.to_owned()))
        })
        .collect()
}

/// The metric names a PromQL expression uses: identifiers starting with `pinstream_` or
/// `process_` (label names and values in this repository's queries never do).
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("pinstream_") || w.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

fn deploy(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

/// Every `expr` of the dashboard's panels, checked for the fields Grafana needs.
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(deploy("grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dash["title"].is_string() && dash["uid"].is_string());
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "panel ids repeat"
        );
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{}", p["title"]);
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        for t in targets {
            exprs.push(t["expr"].as_str().expect("expr").to_owned());
        }
    }
    exprs
}

/// Every `expr:` of the alerting rules.
fn rule_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(deploy("pinstream-alerts.yml")).unwrap();
    let exprs: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| e.trim().to_owned())
        .collect();
    assert!(exprs.len() >= 5, "{exprs:?}");
    exprs
}

#[test]
fn every_metric_the_dashboard_and_the_alerts_query_exists_in_a_live_engine() {
    let dir = TempDir::new("deploy");
    let engine = Runner::start(&dir.0, "");
    let (tcp, admin, consumers) = (engine.tcp, engine.admin, engine.consumers);
    // Events (the loadgen's connection closes: a close with a reason), then a named consumer
    // (its lag series) reading one of them.
    let (tcp, consumers) = (tcp.to_string(), consumers.to_string());
    pinstream(&[
        "loadgen",
        "--addr",
        &tcp,
        "--events",
        "2000",
        "--priority",
        "high:1",
    ]);
    pinstream(&[
        "consume",
        "--addr",
        &consumers,
        "--log",
        "realtime",
        "--from",
        "earliest",
        "--consumer",
        "dashboard",
        "--count",
        "1",
    ]);
    let text = metrics(admin);
    let known = families(&text);
    let kind_of = |name: &str| {
        known
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, k)| k.as_str())
    };

    let mut checked = BTreeSet::new();
    for expr in dashboard_exprs().iter().chain(&rule_exprs()) {
        let names = metric_names(expr);
        // Prometheus's own `up` is the one other series a rule may use.
        assert!(
            !names.is_empty() || expr.starts_with("up{"),
            "no pinstream metric in {expr}"
        );
        for name in names {
            let found = kind_of(&name).is_some()
                || ["_bucket", "_sum", "_count"].iter().any(|s| {
                    name.strip_suffix(s)
                        .and_then(kind_of)
                        .is_some_and(|k| k == "histogram" || k == "summary")
                });
            assert!(found, "{name} (in {expr}) is not in /metrics");
            checked.insert(name);
        }
    }
    // The histogram the latency panels use really is one, with its bounds.
    assert_eq!(
        kind_of("pinstream_stage_latency_seconds"),
        Some("histogram")
    );
    assert!(text.contains("pinstream_stage_latency_seconds_bucket{stage=\"ack\",le=\"+Inf\"}"));
    assert!(
        text.contains("pinstream_consumer_lag_records{log=\"realtime\",consumer=\"dashboard\"}")
    );
    assert!(checked.len() >= 20, "{checked:?}");
}

#[test]
fn promtool_accepts_the_rules_and_the_scrape_config() {
    let Ok(out) = Command::new("promtool")
        .args(["check", "config"])
        .arg(deploy("prometheus.yml"))
        .output()
    else {
        // The names are checked above without promtool; CI installs it (.ci/run).
        eprintln!("promtool not on PATH: syntax check skipped");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(deploy("pinstream-alerts.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
