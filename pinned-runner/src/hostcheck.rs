//! `pinstream host-check`: what this machine offers and what `pinstream run` would do on it.
//!
//! Prints the CPU topology (online CPUs, NUMA nodes, nodes with memory, hyperthread siblings,
//! isolated and `nohz_full` CPUs), this process's allowed CPU mask, then whether the engine's
//! two threads would be pinned with advice, and the CPU plan (`ingest` on
//! `engine.ingest_cpu`, `storage` on `engine.process_cpu`): all three from
//! [`placement::resolve`], the function `pinstream run` calls before it starts the engine
//! (and the engine decides and checks the same way at start).
//!
//! Exit codes: 0 when the plan is valid (pinned or unpinned), 1 when the plan is
//! refused (a CPU offline, outside the mask, or shared by both threads), 2 when the config
//! cannot be read or parsed, or is invalid for another reason.

use std::path::{Path, PathBuf};

use pinstream_host::config::{Config, ConfigError};
use pinstream_host::pin::{self, PinPlan};
use pinstream_host::placement::{self, PlacementRequest};
use pinstream_host::topology::{Topology, format_cpu_list};

use crate::Failure;

/// `pinstream host-check` flags.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Exit status: 0 when the plan is valid (pinned or unpinned), 1 when \
    the plan is refused (a CPU offline, outside this process's mask, or given to both threads), \
    2 when the config cannot be read or is invalid."
)]
pub struct HostCheckArgs {
    /// The config file whose CPU plan to check (TOML, as `pinstream run --config FILE` takes
    /// it); default: the embedded default config that `pinstream run` uses without --config.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// The config to check: where it came from, the config, its warnings and its problems.
struct Checked {
    origin: String,
    config: Config,
    warnings: Vec<String>,
    problems: Vec<String>,
}

fn load(path: Option<&Path>) -> Result<Checked, Failure> {
    let (origin, config) = match path {
        None => (
            "embedded default config".to_owned(),
            Config::embedded_default(),
        ),
        Some(p) => (
            p.display().to_string(),
            Config::load(p).map_err(|e| Failure::usage(e.to_string()))?,
        ),
    };
    // Validated here rather than with `Config::load_checked`, so that a config whose only
    // fault is its CPU plan still gets its plan checked and explained below.
    let (warnings, problems) = match config.validate() {
        Ok(w) => (w, Vec::new()),
        Err(ConfigError::Invalid { problems, .. }) => (Vec::new(), problems),
        Err(e) => return Err(Failure::usage(format!("{origin}: {e}"))),
    };
    Ok(Checked {
        origin,
        config,
        warnings,
        problems,
    })
}

fn list_or_none(cpus: &[usize]) -> String {
    if cpus.is_empty() {
        "none".to_owned()
    } else {
        format_cpu_list(cpus)
    }
}

/// Prints the host report.
pub fn main(args: &HostCheckArgs) -> Result<(), Failure> {
    let topo = Topology::live().map_err(|e| {
        Failure::runtime(format!(
            "cannot read the CPU topology below /sys/devices/system: {e}"
        ))
    })?;
    let allowed = pin::current_affinity().map_err(|e| {
        Failure::runtime(format!(
            "cannot read this process's CPU mask (sched_getaffinity): {e}"
        ))
    })?;

    println!("== topology ==");
    println!("{topo}");
    println!();
    print_process(&topo, &allowed);

    let checked = load(args.config.as_deref())?;
    print_config(&checked);
    let e = &checked.config.engine;

    println!("== plan (what `pinstream run` would do) ==");
    // What `pinstream run` does, by the same function.
    let request = PlacementRequest {
        mode: e.placement,
        overprovisioned: e.overprovisioned,
        cpus: [e.ingest_cpu, e.process_cpu],
        default_config: args.config.is_none(),
    };
    let resolved = placement::resolve(&request, Some(&allowed), &topo);
    let (cpus, decision) = match &resolved {
        Ok(r) => (r.cpus, &r.decision),
        Err(r) => (r.cpus, &r.decision),
    };
    if let Some(note) = request.moved_note(cpus) {
        println!("{note}");
    }
    println!("placement decision: {decision}");
    if let Some(advice) = decision.advice() {
        println!("advice: {advice}");
    }
    let plan = match resolved {
        Ok(r) => r.plan,
        Err(refused) => {
            println!("REFUSED: {}", refused.error);
            return Err(Failure::runtime(format!(
                "the CPU plan of {} is refused: {refused}",
                checked.origin
            )));
        }
    };
    print_assignments(&plan, &allowed);
    if !checked.problems.is_empty() {
        return Err(Failure::usage(format!(
            "{} is invalid: {}",
            checked.origin,
            checked.problems.join("; ")
        )));
    }
    println!(
        "plan: valid ({})",
        if plan.is_pinning() {
            "threads pinned"
        } else {
            "unpinned"
        }
    );
    Ok(())
}

/// The `== this process ==` section: the mask, what it leaves out, the isolated CPUs in it.
fn print_process(topo: &Topology, allowed: &[usize]) {
    println!("== this process ==");
    println!(
        "allowed CPUs: {} ({})",
        list_or_none(allowed),
        allowed.len()
    );
    let not_allowed: Vec<usize> = topo
        .online()
        .iter()
        .copied()
        .filter(|c| !allowed.contains(c))
        .collect();
    if !not_allowed.is_empty() {
        println!(
            "online but outside this process's mask (cpuset or taskset): {}",
            format_cpu_list(&not_allowed)
        );
    }
    let isolated_allowed: Vec<usize> = topo
        .isolated()
        .iter()
        .copied()
        .filter(|c| allowed.contains(c))
        .collect();
    println!(
        "isolated CPUs this process may use: {}",
        list_or_none(&isolated_allowed)
    );
    println!();
}

/// The `== config ==` section: where the config came from, its placement keys, its warnings
/// and problems.
fn print_config(checked: &Checked) {
    println!("== config ==");
    let e = &checked.config.engine;
    println!("source: {}", checked.origin);
    println!(
        "engine.ingest_cpu = {}, engine.process_cpu = {}, engine.placement = \"{}\", \
         engine.overprovisioned = {}",
        e.ingest_cpu,
        e.process_cpu,
        e.placement.as_str(),
        e.overprovisioned
    );
    for w in &checked.warnings {
        println!("warning: {w}");
    }
    for p in &checked.problems {
        println!("problem: {p}");
    }
    println!();
}

/// One line per engine thread: its CPU and what the topology says about it, then the plan's
/// warnings.
fn print_assignments(plan: &PinPlan, allowed: &[usize]) {
    for a in plan.assignments() {
        let node = a.node.map_or_else(|| "?".to_owned(), |n| n.to_string());
        if plan.is_pinning() {
            println!(
                "{}: pinned to CPU {} (node {node}, {}, {})",
                a.thread,
                a.cpu,
                if a.isolated {
                    "isolated"
                } else {
                    "not isolated"
                },
                if a.nohz_full {
                    "nohz_full"
                } else {
                    "not nohz_full"
                }
            );
        } else {
            println!(
                "{}: not pinned (runs on CPUs {}), configured CPU {}",
                a.thread,
                list_or_none(allowed),
                a.cpu
            );
        }
    }
    for w in plan.warnings() {
        println!("warning: {w}");
    }
}
