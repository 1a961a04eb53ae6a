//! Pinning threads to CPUs.
//!
//! [`pin_current_thread`] restricts the calling thread to one CPU and reads the mask back to
//! prove the kernel applied it.
//!
//! [`plan`] checks the engine's CPU assignment against the [`Topology`] before any thread
//! starts: every CPU online and in this process's allowed mask, no two engine threads on one
//! CPU (pinning 48 threads on 4 cores slowed Iggy's tests tenfold), and warnings for CPUs
//! that are not isolated, not `nohz_full`, or share a core with another engine thread. In
//! `overprovisioned` mode (containers, small CI machines) pinning is off entirely and the
//! problems become warnings. Each thread then calls [`PinPlan::pin_current`] and logs the
//! [`PinReport`] (what was asked, what the kernel applied).
//!
//! ```
//! use std::path::Path;
//! use pinstream_host::pin::plan_with_allowed;
//! use pinstream_host::topology::Topology;
//! let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sysfs-2node");
//! let topo = Topology::read(&fixture).unwrap();
//! let allowed: Vec<usize> = (0..8).collect();
//! let plan = plan_with_allowed(&[("ingest", 2), ("realtime", 6)], &topo, &allowed, false).unwrap();
//! assert_eq!(plan.cpu_of("realtime"), Some(6));
//! assert!(plan.warnings().is_empty()); // both isolated, nohz_full, on different cores
//! assert!(plan_with_allowed(&[("a", 2), ("b", 2)], &topo, &allowed, false).is_err());
//! ```

use std::fmt;
use std::io;

use crate::sys;
use crate::topology::{Topology, format_cpu_list};

/// Why a thread could not be pinned.
#[derive(Debug)]
#[non_exhaustive]
pub enum PinError {
    /// The kernel refused the affinity change (e.g. the CPU is offline or outside our cpuset).
    Refused {
        /// The CPU asked for.
        cpu: usize,
        /// What the kernel said.
        source: io::Error,
    },
    /// The call succeeded but the mask read back is not `{cpu}`.
    NotApplied {
        /// The CPU asked for.
        cpu: usize,
        /// The mask read back.
        got: Vec<usize>,
    },
    /// The thread's mask could not be read (`sched_getaffinity`).
    MaskUnreadable {
        /// What the kernel said.
        source: io::Error,
    },
    /// [`PinPlan::pin_current`] was called for a thread the plan does not name.
    NotInPlan {
        /// The thread name.
        thread: String,
    },
}

impl fmt::Display for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinError::Refused { cpu, source } => write!(f, "cannot pin to CPU {cpu}: {source}"),
            PinError::NotApplied { cpu, got } => {
                write!(f, "asked to pin to CPU {cpu}, the thread's mask is {got:?}")
            }
            PinError::MaskUnreadable { source } => {
                write!(f, "cannot read the thread's CPU mask: {source}")
            }
            PinError::NotInPlan { thread } => write!(
                f,
                "thread {thread:?} has no CPU in the pinning plan; add it to the plan's roles"
            ),
        }
    }
}

impl std::error::Error for PinError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PinError::Refused { source, .. } | PinError::MaskUnreadable { source } => Some(source),
            PinError::NotApplied { .. } | PinError::NotInPlan { .. } => None,
        }
    }
}

/// Pins the calling thread to `cpu` and verifies the mask the kernel reports.
///
/// # Errors
/// [`PinError::Refused`] if the kernel rejects it, [`PinError::NotApplied`] if the mask read
/// back differs.
pub fn pin_current_thread(cpu: usize) -> Result<(), PinError> {
    sys::set_thread_affinity(&[cpu]).map_err(|source| PinError::Refused { cpu, source })?;
    let got = current_affinity().map_err(|source| PinError::Refused { cpu, source })?;
    if got == [cpu] {
        Ok(())
    } else {
        Err(PinError::NotApplied { cpu, got })
    }
}

/// The CPUs the calling thread may run on, ascending.
///
/// # Errors
/// The `sched_getaffinity` error, if any.
pub fn current_affinity() -> io::Result<Vec<usize>> {
    sys::thread_affinity()
}

/// Restores the calling thread's mask to `cpus` (e.g. what [`current_affinity`] returned
/// before pinning).
///
/// # Errors
/// The `sched_setaffinity` error, if any.
pub fn set_affinity(cpus: &[usize]) -> io::Result<()> {
    sys::set_thread_affinity(cpus)
}

/// Why a pinning plan was refused.
#[derive(Debug)]
#[non_exhaustive]
pub enum PlacementError {
    /// A thread is assigned a CPU that is not online.
    Offline {
        /// The thread.
        thread: &'static str,
        /// Its CPU.
        cpu: usize,
        /// The online CPUs.
        online: Vec<usize>,
    },
    /// A thread is assigned a CPU outside this process's allowed mask (cpuset, `taskset`).
    NotAllowed {
        /// The thread.
        thread: &'static str,
        /// Its CPU.
        cpu: usize,
        /// The CPUs this process may use.
        allowed: Vec<usize>,
    },
    /// Two engine threads are assigned the same CPU.
    SharedCpu {
        /// The CPU.
        cpu: usize,
        /// The thread listed first.
        first: &'static str,
        /// The thread listed second.
        second: &'static str,
    },
    /// The same thread name appears twice.
    DuplicateThread {
        /// The name.
        thread: &'static str,
    },
    /// This process's affinity mask could not be read.
    Affinity(io::Error),
}

impl fmt::Display for PlacementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const FIX: &str = "fix the CPU list in the config, or run overprovisioned (no pinning)";
        match self {
            PlacementError::Offline {
                thread,
                cpu,
                online,
            } => write!(
                f,
                "thread {thread:?} is assigned CPU {cpu}, which is not online (online: {}); {FIX}",
                format_cpu_list(online)
            ),
            PlacementError::NotAllowed {
                thread,
                cpu,
                allowed,
            } => write!(
                f,
                "thread {thread:?} is assigned CPU {cpu}, outside this process's CPU mask ({}; \
                 set by a cpuset or taskset); {FIX}",
                format_cpu_list(allowed)
            ),
            PlacementError::SharedCpu { cpu, first, second } => write!(
                f,
                "threads {first:?} and {second:?} are both assigned CPU {cpu}; two pinned \
                 threads on one CPU take turns and each stalls the other; {FIX}"
            ),
            PlacementError::DuplicateThread { thread } => {
                write!(f, "thread {thread:?} is listed twice in the pinning plan")
            }
            PlacementError::Affinity(e) => {
                write!(
                    f,
                    "cannot read this process's CPU mask (sched_getaffinity): {e}"
                )
            }
        }
    }
}

impl std::error::Error for PlacementError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PlacementError::Affinity(e) => Some(e),
            _ => None,
        }
    }
}

/// One engine thread's CPU, with what the topology says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Thread name.
    pub thread: &'static str,
    /// The CPU asked for.
    pub cpu: usize,
    /// Its NUMA node (`None` if the CPU is not online, possible only when overprovisioned).
    pub node: Option<usize>,
    /// Whether the CPU is isolated.
    pub isolated: bool,
    /// Whether the CPU is `nohz_full`.
    pub nohz_full: bool,
}

/// A checked CPU assignment for the engine's threads; see [`plan`].
#[derive(Debug, Clone)]
pub struct PinPlan {
    pinning: bool,
    assignments: Vec<Assignment>,
    warnings: Vec<String>,
}

impl PinPlan {
    /// Whether threads will be pinned (`false` when overprovisioned).
    pub fn is_pinning(&self) -> bool {
        self.pinning
    }

    /// The assignments, in the order given.
    pub fn assignments(&self) -> &[Assignment] {
        &self.assignments
    }

    /// Things to log at start-up: CPUs not isolated, not `nohz_full`, shared cores, and in
    /// overprovisioned mode what pinning would have refused.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The CPU `thread` will be pinned to; `None` if it is not in the plan or pinning is off.
    pub fn cpu_of(&self, thread: &str) -> Option<usize> {
        if !self.pinning {
            return None;
        }
        self.assignment(thread).map(|a| a.cpu)
    }

    /// The NUMA node whose memory `thread` should use (its CPU's node); `None` if pinning is
    /// off (the thread may run anywhere) or the thread is not in the plan.
    pub fn node_of(&self, thread: &str) -> Option<usize> {
        if !self.pinning {
            return None;
        }
        self.assignment(thread).and_then(|a| a.node)
    }

    fn assignment(&self, thread: &str) -> Option<&Assignment> {
        self.assignments.iter().find(|a| a.thread == thread)
    }

    /// Pins the calling thread as the plan says for `thread` and reports what the kernel
    /// applied. With pinning off, pins nothing and reports the mask the thread has.
    ///
    /// # Errors
    /// [`PinError::NotInPlan`] if pinning is on and `thread` has no CPU; the errors of
    /// [`pin_current_thread`]; [`PinError::MaskUnreadable`] if the mask cannot be read.
    pub fn pin_current(&self, thread: &'static str) -> Result<PinReport, PinError> {
        if !self.pinning {
            let got = current_affinity().map_err(|source| PinError::MaskUnreadable { source })?;
            return Ok(PinReport {
                thread,
                asked: None,
                got,
                node: None,
                isolated: false,
            });
        }
        let a = self.assignment(thread).ok_or_else(|| PinError::NotInPlan {
            thread: thread.to_owned(),
        })?;
        pin_current_thread(a.cpu)?;
        let got = current_affinity().map_err(|source| PinError::MaskUnreadable { source })?;
        Ok(PinReport {
            thread,
            asked: Some(a.cpu),
            got,
            node: a.node,
            isolated: a.isolated,
        })
    }
}

/// What a thread asked for and what it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinReport {
    /// Thread name.
    pub thread: &'static str,
    /// The CPU asked for; `None` when pinning is off (overprovisioned).
    pub asked: Option<usize>,
    /// The thread's mask read back from the kernel.
    pub got: Vec<usize>,
    /// The NUMA node of the CPU asked.
    pub node: Option<usize>,
    /// Whether the CPU asked is isolated.
    pub isolated: bool,
}

impl fmt::Display for PinReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let got = format_cpu_list(&self.got);
        match self.asked {
            None => write!(f, "{}: not pinned, runs on CPUs {got}", self.thread),
            Some(cpu) => {
                write!(f, "{}: asked CPU {cpu}, got mask {got}", self.thread)?;
                if let Some(node) = self.node {
                    write!(f, ", node {node}")?;
                }
                f.write_str(if self.isolated {
                    ", isolated"
                } else {
                    ", not isolated"
                })
            }
        }
    }
}

/// Checks `roles` (thread name, CPU) against `topo` and this process's allowed CPU mask (the
/// calling thread's `sched_getaffinity`: call it before pinning the caller).
///
/// # Errors
/// As [`plan_with_allowed`], plus [`PlacementError::Affinity`] if the mask cannot be read.
pub fn plan(
    roles: &[(&'static str, usize)],
    topo: &Topology,
    overprovisioned: bool,
) -> Result<PinPlan, PlacementError> {
    let allowed = current_affinity().map_err(PlacementError::Affinity)?;
    plan_with_allowed(roles, topo, &allowed, overprovisioned)
}

/// [`plan`] with the allowed CPU mask given (ascending), e.g. to check a plan for a recorded
/// topology.
///
/// Unless `overprovisioned`, every CPU must be online and allowed and no two threads may
/// share one; warnings name CPUs that are not isolated or not `nohz_full`, threads that
/// share a core through hyperthread siblings, and a plan that leaves no allowed CPU to the
/// rest of the system. When `overprovisioned`, pinning is off and each of those problems is
/// a warning instead.
///
/// # Errors
/// [`PlacementError::Offline`], [`PlacementError::NotAllowed`],
/// [`PlacementError::SharedCpu`], [`PlacementError::DuplicateThread`] (the last one also when
/// overprovisioned: names must be unique for [`PinPlan::pin_current`]).
pub fn plan_with_allowed(
    roles: &[(&'static str, usize)],
    topo: &Topology,
    allowed: &[usize],
    overprovisioned: bool,
) -> Result<PinPlan, PlacementError> {
    let mut warnings = Vec::new();
    let mut refusals = Vec::new();
    for (i, &(thread, cpu)) in roles.iter().enumerate() {
        if roles[..i].iter().any(|&(t, _)| t == thread) {
            return Err(PlacementError::DuplicateThread { thread });
        }
        if !topo.is_online(cpu) {
            refusals.push(PlacementError::Offline {
                thread,
                cpu,
                online: topo.online().to_vec(),
            });
        } else if !allowed.contains(&cpu) {
            refusals.push(PlacementError::NotAllowed {
                thread,
                cpu,
                allowed: allowed.to_vec(),
            });
        }
        if let Some(&(first, _)) = roles[..i].iter().find(|&&(_, c)| c == cpu) {
            refusals.push(PlacementError::SharedCpu {
                cpu,
                first,
                second: thread,
            });
        }
    }
    if overprovisioned {
        warnings.push(
            "unpinned: threads are not pinned and do not busy-poll; latency is not \
             predictable in this mode"
                .to_owned(),
        );
        warnings.extend(
            refusals
                .iter()
                .map(|e| format!("would refuse if pinned: {e}")),
        );
    } else if let Some(first) = refusals.into_iter().next() {
        return Err(first);
    }

    let assignments: Vec<Assignment> = roles
        .iter()
        .map(|&(thread, cpu)| Assignment {
            thread,
            cpu,
            node: topo.node_of(cpu),
            isolated: topo.is_isolated(cpu),
            nohz_full: topo.is_nohz_full(cpu),
        })
        .collect();

    if !overprovisioned {
        warnings.extend(pinned_warnings(roles, topo, allowed, &assignments));
    }
    Ok(PinPlan {
        pinning: !overprovisioned,
        assignments,
        warnings,
    })
}

/// What a valid pinned plan is warned about: CPUs not isolated or not `nohz_full`, threads
/// on hyperthread siblings, and a plan that takes every allowed CPU.
fn pinned_warnings(
    roles: &[(&'static str, usize)],
    topo: &Topology,
    allowed: &[usize],
    assignments: &[Assignment],
) -> Vec<String> {
    let mut warnings = Vec::new();
    for a in assignments {
        let mut missing = Vec::new();
        if !a.isolated {
            missing.push("not isolated (isolcpus=): other tasks may be scheduled there");
        }
        if !a.nohz_full {
            missing.push("not nohz_full: the scheduler tick will interrupt it");
        }
        if !missing.is_empty() {
            warnings.push(format!(
                "thread {:?} on CPU {}: {}",
                a.thread,
                a.cpu,
                missing.join("; ")
            ));
        }
    }
    for (i, a) in assignments.iter().enumerate() {
        for b in &assignments[i + 1..] {
            if topo.siblings(a.cpu).contains(&b.cpu) {
                warnings.push(format!(
                    "threads {:?} (CPU {}) and {:?} (CPU {}) share a core (hyperthread \
                     siblings {}): they compete for its execution units",
                    a.thread,
                    a.cpu,
                    b.thread,
                    b.cpu,
                    format_cpu_list(topo.siblings(a.cpu))
                ));
            }
        }
    }
    if !assignments.is_empty() && allowed.iter().all(|c| roles.iter().any(|r| r.1 == *c)) {
        warnings.push(format!(
            "the engine's threads take every CPU this process may use ({}): the OS, \
             the admin endpoint and interrupts have none left",
            format_cpu_list(allowed)
        ));
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_and_read_back_then_restore() {
        let before = current_affinity().unwrap();
        assert!(!before.is_empty());
        let cpu = *before.last().unwrap();
        std::thread::spawn(move || {
            pin_current_thread(cpu).unwrap();
            assert_eq!(current_affinity().unwrap(), [cpu]);
        })
        .join()
        .unwrap();
        // This thread was not touched.
        assert_eq!(current_affinity().unwrap(), before);
    }

    #[test]
    fn impossible_cpu_is_a_clear_error() {
        let err = std::thread::spawn(|| pin_current_thread(100_000).unwrap_err())
            .join()
            .unwrap();
        assert!(
            matches!(err, PinError::Refused { cpu: 100_000, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("CPU 100000"));
    }
}
