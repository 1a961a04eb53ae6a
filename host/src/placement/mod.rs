//! Where the engine's threads run: the machine's CPUs ([`topology`]), pinning ([`pin`]),
//! memory placement ([`numa`]), how an idle thread waits ([`idle`]), and the decision that
//! ties them together.
//!
//! ## Whether the engine's two threads are pinned: `engine.placement`, decided once
//!
//! Pinning two busy threads pays off when the machine has room for them. On a 2-CPU machine
//! it takes both CPUs from the OS, the admin endpoint and a load generator on the same host
//! (the quick start ran 4–5× slower pinned than unpinned there). [`decide`] is the one place
//! that chooses; [`Engine::start`](crate::engine::Engine::start) applies its answer and
//! `pinstream host-check` prints the same answer for the same inputs.
//!
//! | `engine.placement` | pinned when |
//! | --- | --- |
//! | `"auto"` (default) | the allowed CPUs leave at least one CPU free beyond the engine's two threads (3 or more allowed), or both engine CPUs are isolated (`/sys/devices/system/cpu/isolated`) and allowed |
//! | `"pinned"` | always (the CPU plan is still checked and refused when impossible) |
//! | `"unpinned"` | never |
//!
//! `engine.overprovisioned = true` (the older switch) means `"unpinned"`. Unpinned threads
//! also never busy-poll (see [`IdleStrategy::effective`](crate::idle::IdleStrategy::effective)).
//!
//! ```
//! use pinstream_host::placement::{PlacementInput, PlacementMode, PlacementReason, decide};
//! let small = decide(&PlacementInput {
//!     mode: PlacementMode::Auto,
//!     overprovisioned: false,
//!     cpus: [0, 1],
//!     allowed: Some(&[0, 1]),
//!     isolated: &[],
//! });
//! assert!(!small.pinned);
//! assert_eq!(small.reason, PlacementReason::NoSpareCpu { allowed: 2 });
//! ```

pub mod idle;
pub mod numa;
pub mod pin;
pub mod topology;

use std::fmt;

use serde::Deserialize;

use self::pin::{PinPlan, PlacementError};
use self::topology::{Topology, format_cpu_list};

/// Threads the engine pins: ingest and storage.
pub const ENGINE_THREADS: usize = 2;

/// `engine.placement`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlacementMode {
    /// Pin when the machine has room for it (see the module docs).
    #[default]
    Auto,
    /// Always pin.
    Pinned,
    /// Never pin.
    Unpinned,
}

impl PlacementMode {
    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            PlacementMode::Auto => "auto",
            PlacementMode::Pinned => "pinned",
            PlacementMode::Unpinned => "unpinned",
        }
    }
}

/// What [`decide`] looks at.
#[derive(Clone, Copy, Debug)]
pub struct PlacementInput<'a> {
    /// `engine.placement`.
    pub mode: PlacementMode,
    /// `engine.overprovisioned` (true forces unpinned).
    pub overprovisioned: bool,
    /// The engine's CPUs: ingest, storage.
    pub cpus: [usize; ENGINE_THREADS],
    /// The CPUs this process may use (`sched_getaffinity`); `None` when it cannot be read.
    pub allowed: Option<&'a [usize]>,
    /// The isolated CPUs of the machine ([`Topology::isolated`](crate::topology::Topology::isolated)).
    pub isolated: &'a [usize],
}

/// Why the threads are, or are not, pinned.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlacementReason {
    /// `engine.placement = "pinned"`.
    ForcedPinned,
    /// `engine.placement = "unpinned"`.
    ForcedUnpinned,
    /// `engine.overprovisioned = true`.
    Overprovisioned,
    /// Auto: both engine CPUs are isolated (and allowed): nothing else runs there anyway.
    Isolated {
        /// The engine's CPUs.
        cpus: [usize; ENGINE_THREADS],
    },
    /// Auto: the allowed CPUs leave at least one free beyond the engine's threads.
    SpareCpus {
        /// How many CPUs this process may use.
        allowed: usize,
    },
    /// Auto: pinning would leave no allowed CPU to anything else, and the CPUs are not
    /// isolated.
    NoSpareCpu {
        /// How many CPUs this process may use.
        allowed: usize,
    },
    /// Auto: the CPU mask could not be read.
    MaskUnreadable,
}

/// The answer of [`decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacementDecision {
    /// Pin the threads (and let them busy-poll per `engine.idle`).
    pub pinned: bool,
    /// Why.
    pub reason: PlacementReason,
}

/// Decides whether the engine's threads are pinned (see the module docs).
pub fn decide(input: &PlacementInput<'_>) -> PlacementDecision {
    let (pinned, reason) = match (input.overprovisioned, input.mode) {
        (true, _) => (false, PlacementReason::Overprovisioned),
        (false, PlacementMode::Pinned) => (true, PlacementReason::ForcedPinned),
        (false, PlacementMode::Unpinned) => (false, PlacementReason::ForcedUnpinned),
        (false, PlacementMode::Auto) => match input.allowed {
            None => (false, PlacementReason::MaskUnreadable),
            Some(allowed) => {
                let usable = |c: &usize| input.isolated.contains(c) && allowed.contains(c);
                if input.cpus.iter().all(usable) {
                    (true, PlacementReason::Isolated { cpus: input.cpus })
                } else if allowed.len() > ENGINE_THREADS {
                    let allowed = allowed.len();
                    (true, PlacementReason::SpareCpus { allowed })
                } else {
                    let allowed = allowed.len();
                    (false, PlacementReason::NoSpareCpu { allowed })
                }
            }
        },
    };
    PlacementDecision { pinned, reason }
}

impl PlacementDecision {
    /// What to do about it, for `pinstream host-check` (`None`: nothing to advise).
    pub fn advice(&self) -> Option<&'static str> {
        match self.reason {
            PlacementReason::NoSpareCpu { .. } => Some(
                "to pin, isolate two CPUs for the engine (isolcpus= and nohz_full= on the kernel \
                 command line) or run on a machine with 3 or more CPUs; engine.placement = \
                 \"pinned\" forces pinning here, at the cost of everything else on the machine",
            ),
            PlacementReason::SpareCpus { .. } => Some(
                "pinned on CPUs that are not isolated: other tasks may still run there; isolate \
                 them (isolcpus=, nohz_full=) for predictable latency",
            ),
            PlacementReason::Overprovisioned => Some(
                "engine.overprovisioned = true is the older spelling of engine.placement = \
                 \"unpinned\"; remove it to let engine.placement decide",
            ),
            PlacementReason::MaskUnreadable => {
                Some("set engine.placement = \"pinned\" or \"unpinned\" to decide by config")
            }
            _ => None,
        }
    }
}

impl fmt::Display for PlacementDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.pinned { "pinned" } else { "unpinned" })?;
        match &self.reason {
            PlacementReason::ForcedPinned => write!(f, " (engine.placement = \"pinned\")"),
            PlacementReason::ForcedUnpinned => write!(f, " (engine.placement = \"unpinned\")"),
            PlacementReason::Overprovisioned => write!(
                f,
                " (engine.overprovisioned = true): threads are not pinned and do not busy-poll"
            ),
            PlacementReason::Isolated { cpus } => write!(
                f,
                " (auto: CPUs {} are isolated, nothing else runs there)",
                format_cpu_list(cpus)
            ),
            PlacementReason::SpareCpus { allowed } => write!(
                f,
                " (auto: {allowed} CPUs allowed, {} left for the OS and other programs beside \
                 the engine's {ENGINE_THREADS} threads)",
                allowed - ENGINE_THREADS
            ),
            PlacementReason::NoSpareCpu { allowed } => write!(
                f,
                " (auto: {allowed} CPU(s) allowed and the engine's CPUs are not isolated: pinning its \
                 {ENGINE_THREADS} threads would leave no CPU for the OS and other programs; \
                 threads do not busy-poll; engine.placement = \"pinned\" forces pinning)"
            ),
            PlacementReason::MaskUnreadable => {
                write!(f, " (auto: this process's CPU mask cannot be read)")
            }
        }
    }
}

/// The CPUs to use instead of the embedded default's 0 and 1 when those are not both allowed
/// (a `taskset`, a container's cpuset): the first two allowed CPUs. `None` when 0 and 1 are
/// allowed or fewer than two CPUs are. `pinstream run` and `host-check` apply it when no
/// config file is given.
pub fn default_cpus(allowed: &[usize]) -> Option<[usize; ENGINE_THREADS]> {
    if allowed.len() >= ENGINE_THREADS && !(allowed.contains(&0) && allowed.contains(&1)) {
        Some([allowed[0], allowed[1]])
    } else {
        None
    }
}

/// What [`resolve`] decides from: the `[engine]` keys that place the threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlacementRequest {
    /// `engine.placement`.
    pub mode: PlacementMode,
    /// `engine.overprovisioned` (true forces unpinned).
    pub overprovisioned: bool,
    /// `engine.ingest_cpu`, `engine.process_cpu`.
    pub cpus: [usize; ENGINE_THREADS],
    /// The CPUs are the embedded default config's (no config file was given): when 0 and 1
    /// are not both allowed, the first two allowed CPUs are used instead ([`default_cpus`]).
    pub default_config: bool,
}

impl PlacementRequest {
    /// The line `pinstream run` and `host-check` print when [`resolve`] moved the CPUs to
    /// `cpus`; `None` when it kept the requested ones.
    pub fn moved_note(&self, cpus: [usize; ENGINE_THREADS]) -> Option<String> {
        let [a, b] = self.cpus;
        let [c, d] = cpus;
        (cpus != self.cpus).then(|| {
            format!("CPUs {a} and {b} are not both allowed: using CPUs {c} and {d} instead")
        })
    }
}

/// The answer of [`resolve`]: the CPUs, whether the threads are pinned to them, and the
/// checked plan.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The engine's CPUs, ingest and storage: the request's, or the first two allowed ones
    /// in place of the embedded default's.
    pub cpus: [usize; ENGINE_THREADS],
    /// Whether they are pinned, and why.
    pub decision: PlacementDecision,
    /// The threads' CPUs checked against the topology and the mask, with warnings.
    pub plan: PinPlan,
}

/// Why [`resolve`] refused: the CPUs it chose and its decision (for a report), and the
/// plan's refusal.
#[derive(Debug)]
pub struct Refused {
    /// The engine's CPUs, as in [`Resolved::cpus`].
    pub cpus: [usize; ENGINE_THREADS],
    /// The decision the refused plan was checked under.
    pub decision: PlacementDecision,
    /// Why the plan is refused.
    pub error: PlacementError,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "engine.ingest_cpu / engine.process_cpu: {}", self.error)
    }
}

impl std::error::Error for Refused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// The one placement decision: the CPUs of the engine's two threads (the embedded
/// default's move to allowed CPUs, see [`default_cpus`]), whether they are pinned
/// ([`decide`]), and the plan checked against `topology` and `allowed` ([`pin::plan`]).
/// `pinstream run`, `host-check` and `demo` all call it, so `host-check` prints what `run`
/// does; the engine repeats the decision and the check at start on the same inputs.
///
/// `allowed`: this process's CPU mask; `None` when it cannot be read (the plan then reads
/// it again and fails with [`PlacementError::Affinity`]).
///
/// # Errors
/// [`Refused`] when the plan is refused: a CPU offline, outside `allowed`, or given to both
/// threads while they are to be pinned.
///
/// ```
/// use std::path::Path;
/// use pinstream_host::placement::{PlacementMode, PlacementRequest, resolve};
/// use pinstream_host::topology::Topology;
/// let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sysfs-2node");
/// let topo = Topology::read(&fixture).unwrap();
/// let request = PlacementRequest {
///     mode: PlacementMode::Auto,
///     overprovisioned: false,
///     cpus: [0, 1],
///     default_config: true,
/// };
/// // A `taskset -c 2,3,5`: the default's CPUs 0 and 1 move to 2 and 3.
/// let resolved = resolve(&request, Some(&[2, 3, 5]), &topo).unwrap();
/// assert_eq!(resolved.cpus, [2, 3]);
/// assert!(resolved.decision.pinned);
/// assert_eq!(resolved.plan.cpu_of("storage"), Some(3));
/// ```
pub fn resolve(
    request: &PlacementRequest,
    allowed: Option<&[usize]>,
    topology: &Topology,
) -> Result<Resolved, Refused> {
    let cpus = match allowed.and_then(default_cpus) {
        Some(moved) if request.default_config => moved,
        _ => request.cpus,
    };
    let decision = decide(&PlacementInput {
        mode: request.mode,
        overprovisioned: request.overprovisioned,
        cpus,
        allowed,
        isolated: topology.isolated(),
    });
    let roles = [("ingest", cpus[0]), ("storage", cpus[1])];
    let plan = match allowed {
        Some(allowed) => pin::plan_with_allowed(&roles, topology, allowed, !decision.pinned),
        None => pin::plan(&roles, topology, !decision.pinned),
    };
    match plan {
        Ok(plan) => Ok(Resolved {
            cpus,
            decision,
            plan,
        }),
        Err(error) => Err(Refused {
            cpus,
            decision,
            error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::topology::Topology;

    fn auto<'a>(
        cpus: [usize; 2],
        allowed: &'a [usize],
        isolated: &'a [usize],
    ) -> PlacementInput<'a> {
        PlacementInput {
            mode: PlacementMode::Auto,
            overprovisioned: false,
            cpus,
            allowed: Some(allowed),
            isolated,
        }
    }

    #[test]
    fn two_cpus_not_isolated_run_unpinned_and_say_why() {
        let d = decide(&auto([0, 1], &[0, 1], &[]));
        assert!(!d.pinned);
        assert_eq!(d.reason, PlacementReason::NoSpareCpu { allowed: 2 });
        let line = d.to_string();
        assert!(
            line.starts_with("unpinned (auto: 2 CPU(s) allowed"),
            "{line}"
        );
        assert!(line.contains("no CPU for the OS"), "{line}");
        assert!(d.advice().is_some_and(|a| a.contains("isolcpus=")));
        // One CPU: the same answer.
        let d = decide(&auto([0, 1], &[0], &[]));
        assert_eq!(d.reason, PlacementReason::NoSpareCpu { allowed: 1 });
    }

    #[test]
    fn four_cpus_are_pinned() {
        let d = decide(&auto([0, 1], &[0, 1, 2, 3], &[]));
        assert!(d.pinned);
        assert_eq!(d.reason, PlacementReason::SpareCpus { allowed: 4 });
        assert!(d.to_string().contains("2 left for the OS"), "{d}");
        // Three: one left over is enough.
        assert!(decide(&auto([0, 1], &[0, 1, 2], &[])).pinned);
    }

    #[test]
    fn two_isolated_cpus_are_pinned() {
        let d = decide(&auto([0, 1], &[0, 1], &[0, 1]));
        assert!(d.pinned);
        assert_eq!(d.reason, PlacementReason::Isolated { cpus: [0, 1] });
        assert!(d.to_string().contains("CPUs 0-1 are isolated"), "{d}");
        // One of the two isolated is not enough on a 2-CPU machine.
        assert!(!decide(&auto([0, 1], &[0, 1], &[1])).pinned);
        // Isolated but outside this process's mask does not count.
        assert!(!decide(&auto([2, 3], &[0, 1], &[2, 3])).pinned);
    }

    #[test]
    fn a_recorded_topology_with_isolated_cpus() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sysfs-2node");
        let topo = Topology::read(&root).unwrap();
        let iso = topo.isolated().to_vec();
        assert!(iso.len() >= 2, "the fixture isolates CPUs: {iso:?}");
        // Only the two isolated CPUs allowed: pinned for the isolation.
        let allowed = [iso[0], iso[1]];
        let d = decide(&auto(allowed, &allowed, topo.isolated()));
        assert_eq!(d.reason, PlacementReason::Isolated { cpus: allowed });
        // Two CPUs that are not isolated: unpinned.
        let plain: Vec<usize> = topo
            .online()
            .iter()
            .copied()
            .filter(|c| !iso.contains(c))
            .take(2)
            .collect();
        let d = decide(&auto([plain[0], plain[1]], &plain, topo.isolated()));
        assert!(!d.pinned, "{d}");
    }

    #[test]
    fn forced_modes_and_overprovisioned() {
        let mut input = auto([0, 1], &[0, 1], &[]);
        input.mode = PlacementMode::Pinned;
        let d = decide(&input);
        assert!(d.pinned);
        assert_eq!(d.reason, PlacementReason::ForcedPinned);
        assert_eq!(d.to_string(), "pinned (engine.placement = \"pinned\")");

        let mut input = auto([0, 1], &[0, 1, 2, 3, 4, 5], &[0, 1]);
        input.mode = PlacementMode::Unpinned;
        let d = decide(&input);
        assert!(!d.pinned);
        assert_eq!(d.reason, PlacementReason::ForcedUnpinned);

        // overprovisioned = true wins over any mode.
        for mode in [
            PlacementMode::Auto,
            PlacementMode::Pinned,
            PlacementMode::Unpinned,
        ] {
            input.mode = mode;
            input.overprovisioned = true;
            let d = decide(&input);
            assert_eq!(
                (d.pinned, &d.reason),
                (false, &PlacementReason::Overprovisioned)
            );
        }
    }

    #[test]
    fn an_unreadable_mask_runs_unpinned_in_auto_only() {
        let mut input = auto([0, 1], &[], &[]);
        input.allowed = None;
        assert_eq!(decide(&input).reason, PlacementReason::MaskUnreadable);
        input.mode = PlacementMode::Pinned;
        assert!(decide(&input).pinned);
    }

    #[test]
    fn default_cpus_move_only_when_0_and_1_are_not_both_allowed() {
        assert_eq!(default_cpus(&[0, 1, 2]), None);
        assert_eq!(default_cpus(&[2, 3, 5]), Some([2, 3]));
        assert_eq!(default_cpus(&[1, 4]), Some([1, 4]));
        assert_eq!(default_cpus(&[3]), None);
    }

    fn request(mode: PlacementMode, cpus: [usize; 2], default_config: bool) -> PlacementRequest {
        PlacementRequest {
            mode,
            overprovisioned: false,
            cpus,
            default_config,
        }
    }

    #[test]
    fn resolve_moves_only_the_embedded_default_cpus() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sysfs-2node");
        let topo = Topology::read(&root).unwrap();
        let default = request(PlacementMode::Auto, [0, 1], true);
        let r = resolve(&default, Some(&[2, 3, 5]), &topo).unwrap();
        assert_eq!(r.cpus, [2, 3]);
        assert_eq!(
            default.moved_note(r.cpus).as_deref(),
            Some("CPUs 0 and 1 are not both allowed: using CPUs 2 and 3 instead")
        );
        assert_eq!(r.plan.cpu_of("ingest"), Some(2));
        // 0 and 1 allowed: kept, no note.
        let r = resolve(&default, Some(&[0, 1, 2, 3]), &topo).unwrap();
        assert_eq!((r.cpus, default.moved_note(r.cpus)), ([0, 1], None));
        // A config file's CPUs never move: pinned outside the mask is refused, typed.
        let file = request(PlacementMode::Pinned, [0, 1], false);
        let refused = resolve(&file, Some(&[2, 3, 5]), &topo).unwrap_err();
        assert!(matches!(
            refused.error,
            PlacementError::NotAllowed { cpu: 0, .. }
        ));
        assert_eq!(refused.cpus, [0, 1]);
        assert_eq!(refused.decision.reason, PlacementReason::ForcedPinned);
        assert!(
            refused
                .to_string()
                .starts_with("engine.ingest_cpu / engine.process_cpu: thread \"ingest\""),
            "{refused}"
        );
    }
}
