//! Pinning threads to CPUs.
//!
//! [`pin_current_thread`] restricts the calling thread to one CPU and reads the mask back to
//! prove the kernel applied it. (Topology discovery, NUMA placement and isolation checks
//! build on this; see the host issue.)

use std::fmt;
use std::io;

use crate::sys;

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
}

impl fmt::Display for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinError::Refused { cpu, source } => write!(f, "cannot pin to CPU {cpu}: {source}"),
            PinError::NotApplied { cpu, got } => {
                write!(f, "asked to pin to CPU {cpu}, the thread's mask is {got:?}")
            }
        }
    }
}

impl std::error::Error for PinError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PinError::Refused { source, .. } => Some(source),
            PinError::NotApplied { .. } => None,
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
