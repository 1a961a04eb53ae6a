//! NUMA placement of the engine's memory: rings and pools live on the node of the CPU that
//! uses them.
//!
//! * [`NodeBuffer`] is an anonymous mapping bound to a node with `mbind`, pre-faulted at
//!   construction (so no page fault and no allocation happens once events flow), optionally
//!   `mlock`ed, unmapped on drop.
//! * [`place_existing`] binds, and migrates, the whole pages inside an already-built value
//!   (the engine's lanes and pools are boxed structs).
//! * [`node_of_address`] asks the kernel which node a page is really on.
//! * [`lock_all_memory`] is `mlockall(MCL_CURRENT | MCL_FUTURE)`.
//!
//! Placement failing is reported in a [`PlaceReport`], never fatal: in a container `mbind`
//! may be refused (`EPERM`), a kernel without NUMA says `ENOSYS`, and a single-node machine
//! just reports node 0. The engine logs the report ("asked node 1, got node 1") and goes on.
//!
//! ## Which policy
//! [`MemPolicy::Preferred`] (`MPOL_PREFERRED`) is the default: the pages go to the node asked
//! while it has free memory and to another node otherwise. The buffers are pre-faulted at
//! start-up and the report reads the node back, so a fallback is visible in the start-up log
//! instead of being an out-of-memory kill. [`MemPolicy::Bind`] (`MPOL_BIND`) is the strict
//! choice: construction fails (`ENOMEM` while pre-faulting) if the node cannot hold the buffer.
//!
//! ```
//! use pinstream_host::numa::NodeBuffer;
//! let mut buf = NodeBuffer::new(10_000, 0).unwrap();
//! assert!(buf.len() >= 10_000);
//! assert!(buf.as_slice().iter().all(|&b| b == 0));
//! buf.as_mut_slice()[0] = 7;
//! println!("{}", buf.report()); // e.g. "asked node 0 (MPOL_PREFERRED) for 12288 bytes: got node 0"
//! ```

use std::fmt;
use std::io;
use std::path::Path;

use crate::sys;
use crate::topology::parse_cpu_list;

/// The NUMA policy given to `mbind` (see the module docs for the choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemPolicy {
    /// `MPOL_PREFERRED`: the node asked while it has memory, another one otherwise.
    #[default]
    Preferred,
    /// `MPOL_BIND`: only the node asked; allocation fails when it is full.
    Bind,
}

impl MemPolicy {
    fn mode(self) -> libc::c_int {
        match self {
            MemPolicy::Preferred => libc::MPOL_PREFERRED,
            MemPolicy::Bind => libc::MPOL_BIND,
        }
    }
}

impl fmt::Display for MemPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemPolicy::Preferred => "MPOL_PREFERRED",
            MemPolicy::Bind => "MPOL_BIND",
        })
    }
}

/// What became of a placement request.
#[derive(Debug)]
#[non_exhaustive]
pub enum PlaceOutcome {
    /// `mbind` succeeded; `got` is the node the kernel reports for the first page (it may
    /// differ from the node asked under [`MemPolicy::Preferred`] when that node is full).
    Placed {
        /// The node the first page is on.
        got: usize,
    },
    /// `mbind` succeeded but reading the node back failed.
    Unverified {
        /// The `get_mempolicy` error.
        source: io::Error,
    },
    /// The kernel cannot place memory here: `ENOSYS` (no NUMA support) or `EPERM` (a
    /// container's seccomp profile or cpuset). The memory stays where the kernel put it.
    NotSupported {
        /// The `mbind` error.
        source: io::Error,
        /// The machine has a single memory node, so the memory is on node 0 anyway.
        single_node: bool,
    },
    /// `mbind` refused the request for another reason (e.g. the node has no memory).
    Failed {
        /// The error, naming the node.
        source: io::Error,
    },
    /// The value holds no whole page, so there is nothing to bind.
    NothingToPlace,
}

/// Whether a [`NodeBuffer`] was `mlock`ed.
#[derive(Debug)]
#[non_exhaustive]
pub enum LockOutcome {
    /// Not asked for.
    NotAsked,
    /// Locked in RAM.
    Locked,
    /// `mlock` failed (usually `RLIMIT_MEMLOCK`); the buffer works, it may be swapped out.
    Failed {
        /// The `mlock` error.
        source: io::Error,
    },
}

/// What was asked and what was got when placing memory on a node.
#[derive(Debug)]
pub struct PlaceReport {
    /// The node asked for.
    pub asked: usize,
    /// The policy given to `mbind`.
    pub policy: MemPolicy,
    /// Bytes covered by the request (whole pages).
    pub bytes: usize,
    /// What the kernel did.
    pub outcome: PlaceOutcome,
    /// Whether the memory was locked.
    pub lock: LockOutcome,
}

impl PlaceReport {
    /// The node the memory is known to be on: the node read back, or 0 on a single-node
    /// machine; `None` when it is unknown.
    pub fn got(&self) -> Option<usize> {
        match self.outcome {
            PlaceOutcome::Placed { got } => Some(got),
            PlaceOutcome::NotSupported {
                single_node: true, ..
            } => Some(0),
            _ => None,
        }
    }

    /// Whether the memory is known to be on the node asked.
    pub fn is_on_asked_node(&self) -> bool {
        self.got() == Some(self.asked)
    }
}

impl fmt::Display for PlaceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "asked node {} ({}) for {} bytes: ",
            self.asked, self.policy, self.bytes
        )?;
        match &self.outcome {
            PlaceOutcome::Placed { got } if *got == self.asked => write!(f, "got node {got}")?,
            PlaceOutcome::Placed { got } => write!(
                f,
                "got node {got} (node {} is short of memory): continuing on remote memory",
                self.asked
            )?,
            PlaceOutcome::Unverified { source } => {
                write!(f, "bound, node not readable ({source}): continuing")?
            }
            PlaceOutcome::NotSupported {
                source,
                single_node: true,
            } => write!(
                f,
                "not supported ({source}); single-node machine, memory is on node 0: continuing"
            )?,
            PlaceOutcome::NotSupported { source, .. } => write!(
                f,
                "not supported ({source}; a container may forbid mbind): continuing where the kernel put it"
            )?,
            PlaceOutcome::Failed { source } => write!(
                f,
                "mbind failed ({source}): continuing where the kernel put it"
            )?,
            PlaceOutcome::NothingToPlace => write!(f, "no whole page inside, nothing to place")?,
        }
        match &self.lock {
            LockOutcome::NotAsked => Ok(()),
            LockOutcome::Locked => write!(f, "; locked in RAM"),
            LockOutcome::Failed { source } => write!(
                f,
                "; mlock failed ({source}): raise RLIMIT_MEMLOCK (ulimit -l) or grant CAP_IPC_LOCK"
            ),
        }
    }
}

/// Why a [`NodeBuffer`] could not be built (placement itself never fails it; see
/// [`PlaceReport`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum NumaError {
    /// A zero-length buffer was asked for.
    ZeroLength,
    /// The node does not exist or has no memory.
    InvalidNode {
        /// The node asked.
        node: usize,
        /// The nodes with memory.
        available: Vec<usize>,
    },
    /// `mmap` failed.
    Map {
        /// Bytes asked (rounded up to pages).
        len: usize,
        /// What the kernel said.
        source: io::Error,
    },
    /// Faulting the pages in failed (`ENOMEM`: under [`MemPolicy::Bind`], the node is full).
    Prefault {
        /// Bytes asked (rounded up to pages).
        len: usize,
        /// The node asked.
        node: usize,
        /// What the kernel said.
        source: io::Error,
    },
}

impl fmt::Display for NumaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NumaError::ZeroLength => write!(f, "a node buffer needs at least one byte"),
            NumaError::InvalidNode { node, available } => write!(
                f,
                "NUMA node {node} does not exist or has no memory (nodes with memory: {}); \
                 pick one of those",
                crate::topology::format_cpu_list(available)
            ),
            NumaError::Map { len, source } => {
                write!(f, "cannot map {len} bytes of anonymous memory: {source}")
            }
            NumaError::Prefault { len, node, source } => write!(
                f,
                "cannot fault in {len} bytes on node {node}: {source} \
                 (node full under MPOL_BIND? use MPOL_PREFERRED or a smaller size)"
            ),
        }
    }
}

impl std::error::Error for NumaError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NumaError::Map { source, .. } | NumaError::Prefault { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The live machine's nodes with memory (`/sys/devices/system/node/has_memory`, then
/// `node/online`), or `[0]` when sysfs has no NUMA information.
pub fn memory_nodes() -> Vec<usize> {
    memory_nodes_under(Path::new("/"))
}

fn memory_nodes_under(root: &Path) -> Vec<usize> {
    for file in ["has_memory", "online"] {
        let path = root.join("sys/devices/system/node").join(file);
        if let Ok(nodes) = std::fs::read_to_string(&path).map(|text| parse_cpu_list(&text)) {
            match nodes {
                Ok(nodes) if !nodes.is_empty() => return nodes,
                _ => continue,
            }
        }
    }
    vec![0]
}

/// After a successful bind, replaces the node asked by the node the page at `addr` is on.
fn verify(outcome: PlaceOutcome, addr: *const u8) -> PlaceOutcome {
    match outcome {
        PlaceOutcome::Placed { .. } => match sys::node_of_address(addr) {
            Ok(got) => PlaceOutcome::Placed { got },
            Err(source) => PlaceOutcome::Unverified { source },
        },
        other => other,
    }
}

fn is_not_supported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM))
}

/// Binds `[addr, addr + len)` (whole pages). A success is reported as `Placed { got: node }`
/// until [`verify`] reads the real node back.
fn bind(addr: *const u8, len: usize, node: usize, policy: MemPolicy, flags: u32) -> PlaceOutcome {
    let nodes = memory_nodes();
    if !nodes.contains(&node) {
        return PlaceOutcome::Failed {
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                NumaError::InvalidNode {
                    node,
                    available: nodes,
                }
                .to_string(),
            ),
        };
    }
    match sys::mbind(addr, len, policy.mode(), node, flags) {
        Ok(()) => PlaceOutcome::Placed { got: node },
        Err(source) if is_not_supported(&source) => PlaceOutcome::NotSupported {
            source,
            single_node: nodes == [0],
        },
        Err(source) => PlaceOutcome::Failed {
            source: io::Error::new(
                source.kind(),
                format!("mbind of {len} bytes to node {node}: {source}"),
            ),
        },
    }
}

/// An anonymous mapping placed on one NUMA node, pre-faulted, optionally locked; unmapped
/// on drop. Its bytes start zeroed.
#[derive(Debug)]
pub struct NodeBuffer {
    map: sys::Mapping,
    report: PlaceReport,
}

impl NodeBuffer {
    /// `len` bytes (rounded up to whole pages) on `node` with [`MemPolicy::Preferred`], not
    /// locked.
    ///
    /// # Errors
    /// As [`NodeBuffer::with_policy`].
    pub fn new(len: usize, node: usize) -> Result<NodeBuffer, NumaError> {
        NodeBuffer::with_policy(len, node, MemPolicy::Preferred, false)
    }

    /// `len` bytes (rounded up to whole pages) on `node` under `policy`, pre-faulted, and
    /// `mlock`ed if `lock`. Placement and locking failures are in [`NodeBuffer::report`],
    /// not errors.
    ///
    /// # Errors
    /// [`NumaError::ZeroLength`]; [`NumaError::InvalidNode`] if `node` has no memory on this
    /// machine (see [`memory_nodes`]); [`NumaError::Map`] if `mmap` fails;
    /// [`NumaError::Prefault`] if the pages cannot be faulted in.
    pub fn with_policy(
        len: usize,
        node: usize,
        policy: MemPolicy,
        lock: bool,
    ) -> Result<NodeBuffer, NumaError> {
        if len == 0 {
            return Err(NumaError::ZeroLength);
        }
        let available = memory_nodes();
        if !available.contains(&node) {
            return Err(NumaError::InvalidNode { node, available });
        }
        let page = sys::page_size();
        let rounded = len
            .div_ceil(page)
            .checked_mul(page)
            .ok_or_else(|| NumaError::Map {
                len,
                source: io::Error::new(io::ErrorKind::InvalidInput, "length overflows"),
            })?;
        let mut map = sys::Mapping::new(rounded).map_err(|source| NumaError::Map {
            len: rounded,
            source,
        })?;
        // Bind before the first fault, so every page is allocated on the node at once.
        let outcome = bind(map.as_ptr(), rounded, node, policy, 0);
        map.prefault().map_err(|source| NumaError::Prefault {
            len: rounded,
            node,
            source,
        })?;
        // Read the node back now that the pages exist.
        let outcome = verify(outcome, map.as_ptr());
        let lock = if lock {
            match map.lock() {
                Ok(()) => LockOutcome::Locked,
                Err(source) => LockOutcome::Failed { source },
            }
        } else {
            LockOutcome::NotAsked
        };
        Ok(NodeBuffer {
            map,
            report: PlaceReport {
                asked: node,
                policy,
                bytes: rounded,
                outcome,
                lock,
            },
        })
    }

    /// Length in bytes (a whole number of pages, at least what was asked).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always `false`: a buffer has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.map.as_slice()
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.map.as_mut_slice()
    }

    /// Start address (page-aligned), e.g. for [`node_of_address`].
    pub fn as_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    /// What was asked and what was got.
    pub fn report(&self) -> &PlaceReport {
        &self.report
    }
}

/// Binds the whole pages inside `value`'s memory to `node` with [`MemPolicy::Preferred`]
/// and `MPOL_MF_MOVE`, so pages already faulted in migrate there, contents intact.
///
/// For values built before their thread's CPU was known (lanes and pools in boxed structs).
/// Only whole pages are bound: the partial pages at either end may hold other data. Those
/// pages keep the policy after `value` is freed, so the allocator may later serve other
/// objects from node `node`; that is harmless. The report reads the first whole page's node
/// back, so build (write) the value before placing it: an untouched page reads back as the
/// shared zero page's node. Never fails: errors are in the report.
pub fn place_existing<T: ?Sized>(value: &T, node: usize) -> PlaceReport {
    let page = sys::page_size();
    let start = std::ptr::from_ref(value).cast::<u8>();
    let size = std::mem::size_of_val(value);
    let addr = start as usize;
    let first = addr.div_ceil(page) * page;
    let end = (addr + size) / page * page;
    let policy = MemPolicy::Preferred;
    let (bytes, outcome) = if end > first {
        let len = end - first;
        // `first` lies inside `value`: same provenance, offset `first - addr <= size`.
        let aligned = start.wrapping_add(first - addr);
        let outcome = bind(aligned, len, node, policy, sys::mem::MPOL_MF_MOVE);
        (len, verify(outcome, aligned))
    } else {
        (0, PlaceOutcome::NothingToPlace)
    };
    PlaceReport {
        asked: node,
        policy,
        bytes,
        outcome,
        lock: LockOutcome::NotAsked,
    }
}

/// The NUMA node of the page holding `addr` (`get_mempolicy(MPOL_F_NODE | MPOL_F_ADDR)`).
/// The kernel faults the page in if it is not yet; nothing is dereferenced here.
///
/// # Errors
/// `EFAULT` if `addr` is not mapped; `ENOSYS` on a kernel without NUMA support.
pub fn node_of_address(addr: *const u8) -> io::Result<usize> {
    sys::node_of_address(addr)
}

/// Locks every current and future page of the process in RAM
/// (`mlockall(MCL_CURRENT | MCL_FUTURE)`), so no page of the engine is ever swapped out.
///
/// # Errors
/// The `mlockall` error with what to do: `ENOMEM` / `EPERM` mean `RLIMIT_MEMLOCK` is too low
/// (`ulimit -l`, `LimitMEMLOCK=` in systemd) or `CAP_IPC_LOCK` is missing.
pub fn lock_all_memory() -> Result<(), io::Error> {
    sys::lock_all().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "mlockall(MCL_CURRENT | MCL_FUTURE) failed: {e}; raise RLIMIT_MEMLOCK \
                 (ulimit -l / LimitMEMLOCK=infinity) or grant CAP_IPC_LOCK, or turn memory \
                 locking off"
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_nodes_fall_back_to_node_zero() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sysfs-2node");
        assert_eq!(memory_nodes_under(&fixture), [0, 1]);
        assert_eq!(memory_nodes_under(Path::new("/nonexistent-root")), [0]);
    }

    #[test]
    fn report_says_asked_and_got() {
        let r = PlaceReport {
            asked: 1,
            policy: MemPolicy::Preferred,
            bytes: 4096,
            outcome: PlaceOutcome::Placed { got: 0 },
            lock: LockOutcome::NotAsked,
        };
        let text = r.to_string();
        assert!(
            text.contains("asked node 1") && text.contains("got node 0"),
            "{text}"
        );
        assert!(!r.is_on_asked_node());
        let r = PlaceReport {
            outcome: PlaceOutcome::NotSupported {
                source: io::Error::from_raw_os_error(libc::ENOSYS),
                single_node: true,
            },
            asked: 0,
            ..r
        };
        assert_eq!(r.got(), Some(0));
        assert!(r.to_string().contains("continuing"), "{r}");
    }
}
