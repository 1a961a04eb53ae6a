//! The machine's CPU topology, read from sysfs: online CPUs, the NUMA node of each CPU,
//! hyperthread siblings, isolated CPUs (`isolcpus=`) and `nohz_full` CPUs.
//!
//! [`Topology::read`] takes a root directory so the same code reads the live machine (`/`)
//! and recorded sysfs trees (a fixture directory holding `sys/devices/system/...`). Only
//! `sys/devices/system/cpu/online` is required; everything else degrades gracefully:
//!
//! | missing | taken as |
//! | --- | --- |
//! | `node/node*/cpulist` and `cpu*/node*` links (kernel without NUMA) | every CPU on node 0 |
//! | `node/has_memory` | the nodes that hold CPUs (or node 0) |
//! | `cpu*/topology/thread_siblings_list` | the CPU is its own only sibling |
//! | `cpu/isolated`, `cpu/nohz_full`, or `(null)` in them | no CPU isolated / nohz_full |
//!
//! ```
//! use pinstream_host::topology::{format_cpu_list, parse_cpu_list};
//! let cpus = parse_cpu_list("0-3,8,10-11\n").unwrap();
//! assert_eq!(cpus, [0, 1, 2, 3, 8, 10, 11]);
//! assert_eq!(format_cpu_list(&cpus), "0-3,8,10-11");
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The largest CPU or node number [`parse_cpu_list`] accepts (Linux's `NR_CPUS` tops out at
/// 8192; this leaves room while refusing lists that would make a huge vector).
pub const MAX_CPU: usize = 65_535;

/// Why a CPU list or a topology could not be read.
#[derive(Debug)]
#[non_exhaustive]
pub enum TopologyError {
    /// A CPU list (from the config or the command line) is malformed.
    CpuList {
        /// The text as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A sysfs file holds a CPU list that does not parse.
    InFile {
        /// The file.
        path: PathBuf,
        /// Its content.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A required sysfs file or directory could not be read.
    Read {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopologyError::CpuList { input, reason } => write!(
                f,
                "bad CPU list {input:?}: {reason} (expected e.g. \"0-3,8,10-11\")"
            ),
            TopologyError::InFile {
                path,
                input,
                reason,
            } => write!(
                f,
                "{} holds {input:?}, which is not a CPU list: {reason}",
                path.display()
            ),
            TopologyError::Read { path, source } => write!(
                f,
                "cannot read {}: {source} (is sysfs mounted, or is the fixture root right?)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for TopologyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TopologyError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn list_error(input: &str, reason: String) -> TopologyError {
    TopologyError::CpuList {
        input: input.to_owned(),
        reason,
    }
}

fn parse_number(input: &str, item: &str, text: &str) -> Result<usize, TopologyError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(list_error(
            input,
            format!("{text:?} in item {item:?} is not a CPU number"),
        ));
    }
    match text.parse::<usize>() {
        Ok(n) if n <= MAX_CPU => Ok(n),
        _ => Err(list_error(
            input,
            format!("CPU {text} in item {item:?} is above the limit {MAX_CPU}"),
        )),
    }
}

/// Parses a Linux CPU list such as `"0-3,8,10-11"` into ascending, deduplicated CPU numbers.
///
/// Accepts what sysfs writes and what `isolcpus=` / `taskset -c` take: single CPUs, ranges
/// `a-b` with `a <= b`, the stride form `a-b:used/group` (e.g. `0-7:2/4` is 0,1,4,5),
/// surrounding whitespace and a trailing newline. An empty (or all-blank) list is an empty
/// vector, as sysfs writes for "no CPU".
///
/// # Errors
/// [`TopologyError::CpuList`] naming the item at fault: an empty item (`"1,,2"`), a
/// reversed range, a non-number, a number above [`MAX_CPU`], or a bad stride.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, TopologyError> {
    let text = s.trim();
    let mut cpus = Vec::new();
    if text.is_empty() {
        return Ok(cpus);
    }
    for item in text.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(list_error(s, "empty item between commas".to_owned()));
        }
        let (range, stride) = match item.split_once(':') {
            Some((range, stride)) => (range, Some(stride)),
            None => (item, None),
        };
        let (first, last) = match range.split_once('-') {
            Some((a, b)) => (
                parse_number(s, item, a.trim())?,
                parse_number(s, item, b.trim())?,
            ),
            None => {
                let n = parse_number(s, item, range.trim())?;
                (n, n)
            }
        };
        if first > last {
            return Err(list_error(
                s,
                format!("range {item:?} runs backwards ({first} > {last})"),
            ));
        }
        let (used, group) = match stride {
            None => (1, 1),
            Some(stride) => {
                let parsed = stride.split_once('/').and_then(|(u, g)| {
                    Some((
                        u.trim().parse::<usize>().ok()?,
                        g.trim().parse::<usize>().ok()?,
                    ))
                });
                match parsed {
                    Some((u, g)) if u >= 1 && g >= 1 && u <= g => (u, g),
                    _ => {
                        return Err(list_error(
                            s,
                            format!(
                                "stride in {item:?} must be \"used/group\" with 1 <= used <= group"
                            ),
                        ));
                    }
                }
            }
        };
        cpus.extend((first..=last).filter(|cpu| (cpu - first) % group < used));
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Writes CPU numbers in the compact Linux form (`[0,1,2,3,8]` → `"0-3,8"`); the inverse of
/// [`parse_cpu_list`] for sorted input. An empty slice is `""`.
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    out
}

/// Where the per-CPU NUMA nodes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NumaSource {
    /// `sys/devices/system/node/node*/cpulist`.
    NodeCpuLists,
    /// `sys/devices/system/cpu/cpu*/node*` links.
    CpuNodeLinks,
    /// Neither exists (kernel without NUMA, or a container hiding it): one node 0.
    Absent,
}

/// The CPU topology of a machine (see the module docs for what is read and the defaults).
#[derive(Debug, Clone)]
pub struct Topology {
    root: PathBuf,
    online: Vec<usize>,
    /// Node of each online CPU; every online CPU has an entry.
    node: BTreeMap<usize, usize>,
    /// Sibling list of each online CPU (always contains the CPU itself).
    siblings: BTreeMap<usize, Vec<usize>>,
    memory_nodes: Vec<usize>,
    isolated: Vec<usize>,
    nohz_full: Vec<usize>,
    numa_source: NumaSource,
}

/// Reads a CPU list file. `Ok(None)` if it does not exist; `"(null)"` (what the kernel
/// writes in `nohz_full` when the feature is off) is an empty list.
fn read_list(path: &Path) -> Result<Option<Vec<usize>>, TopologyError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TopologyError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    if text.trim() == "(null)" {
        return Ok(Some(Vec::new()));
    }
    parse_cpu_list(&text).map(Some).map_err(|e| match e {
        TopologyError::CpuList { input, reason } => TopologyError::InFile {
            path: path.to_owned(),
            input,
            reason,
        },
        other => other,
    })
}

/// Numbers `N` of the entries named `{prefix}N` in `dir` (e.g. `node0`, `node1`), ascending.
/// A missing directory is an empty list.
fn numbered_entries(dir: &Path, prefix: &str) -> Result<Vec<usize>, TopologyError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TopologyError::Read {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| TopologyError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let name = entry.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|n| n.parse::<usize>().ok())
        {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(found)
}

impl Topology {
    /// Reads the topology under `root`: `/` for the live machine, or a directory holding a
    /// recorded `sys/devices/system/...` tree.
    ///
    /// # Errors
    /// [`TopologyError::Read`] if `sys/devices/system/cpu/online` (the one required file) or
    /// an existing file cannot be read; [`TopologyError::InFile`] if a file holds a
    /// malformed CPU list.
    pub fn read(root: &Path) -> Result<Topology, TopologyError> {
        let cpu_dir = root.join("sys/devices/system/cpu");
        let node_dir = root.join("sys/devices/system/node");

        let online_path = cpu_dir.join("online");
        let online = read_list(&online_path)?.ok_or_else(|| TopologyError::Read {
            path: online_path.clone(),
            source: io::Error::new(io::ErrorKind::NotFound, "file not found"),
        })?;
        if online.is_empty() {
            return Err(TopologyError::InFile {
                path: online_path,
                input: String::new(),
                reason: "no CPU is online".to_owned(),
            });
        }

        let mut node = BTreeMap::new();
        let mut numa_source = NumaSource::Absent;
        let mut cpu_nodes = Vec::new();
        for n in numbered_entries(&node_dir, "node")? {
            let cpus = read_list(&node_dir.join(format!("node{n}/cpulist")))?.unwrap_or_default();
            for &cpu in &cpus {
                if online.binary_search(&cpu).is_ok() {
                    node.insert(cpu, n);
                    numa_source = NumaSource::NodeCpuLists;
                }
            }
            if !cpus.is_empty() {
                cpu_nodes.push(n);
            }
        }
        let mut siblings = BTreeMap::new();
        for &cpu in &online {
            let this_cpu = cpu_dir.join(format!("cpu{cpu}"));
            if let std::collections::btree_map::Entry::Vacant(slot) = node.entry(cpu) {
                // Older or trimmed trees: the `cpuN/nodeM` link names the node.
                if let Some(&n) = numbered_entries(&this_cpu, "node")?.first() {
                    slot.insert(n);
                    if numa_source == NumaSource::Absent {
                        numa_source = NumaSource::CpuNodeLinks;
                    }
                    if let Err(at) = cpu_nodes.binary_search(&n) {
                        cpu_nodes.insert(at, n);
                    }
                }
            }
            let mut sibs =
                read_list(&this_cpu.join("topology/thread_siblings_list"))?.unwrap_or_default();
            if let Err(at) = sibs.binary_search(&cpu) {
                sibs.insert(at, cpu);
            }
            siblings.insert(cpu, sibs);
        }
        // Missing NUMA information means one node 0.
        for &cpu in &online {
            node.entry(cpu).or_insert(0);
        }
        if cpu_nodes.is_empty() {
            cpu_nodes.push(0);
        }
        let memory_nodes = match read_list(&node_dir.join("has_memory"))? {
            Some(nodes) if !nodes.is_empty() => nodes,
            _ => cpu_nodes,
        };

        Ok(Topology {
            root: root.to_owned(),
            online,
            node,
            siblings,
            memory_nodes,
            isolated: read_list(&cpu_dir.join("isolated"))?.unwrap_or_default(),
            nohz_full: read_list(&cpu_dir.join("nohz_full"))?.unwrap_or_default(),
            numa_source,
        })
    }

    /// The live machine's topology (`Topology::read("/")`).
    ///
    /// # Errors
    /// As [`Topology::read`].
    pub fn live() -> Result<Topology, TopologyError> {
        Topology::read(Path::new("/"))
    }

    /// The root it was read from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Online CPUs, ascending, never empty.
    pub fn online(&self) -> &[usize] {
        &self.online
    }

    /// Whether `cpu` is online.
    pub fn is_online(&self, cpu: usize) -> bool {
        self.online.binary_search(&cpu).is_ok()
    }

    /// The NUMA node of an online `cpu` (0 when the machine reports no NUMA information);
    /// `None` if the CPU is not online.
    pub fn node_of(&self, cpu: usize) -> Option<usize> {
        self.node.get(&cpu).copied()
    }

    /// The nodes that hold online CPUs, ascending (at least node 0).
    pub fn nodes(&self) -> Vec<usize> {
        let mut nodes: Vec<usize> = self.node.values().copied().collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// The online CPUs of `node`, ascending (empty for an unknown node).
    pub fn cpus_of_node(&self, node: usize) -> Vec<usize> {
        self.node
            .iter()
            .filter(|&(_, &n)| n == node)
            .map(|(&cpu, _)| cpu)
            .collect()
    }

    /// The nodes that have memory (`node/has_memory`; falls back to [`Topology::nodes`]).
    /// These are the nodes [`crate::numa`] may bind memory to.
    pub fn memory_nodes(&self) -> &[usize] {
        &self.memory_nodes
    }

    /// Where the node numbers came from.
    pub fn numa_source(&self) -> NumaSource {
        self.numa_source
    }

    /// The hyperthread siblings of `cpu`, itself included, ascending; empty if the CPU is
    /// not online.
    pub fn siblings(&self, cpu: usize) -> &[usize] {
        self.siblings.get(&cpu).map_or(&[], Vec::as_slice)
    }

    /// Whether `cpu` is in `cpu/isolated` (kept off the scheduler's load balancing).
    pub fn is_isolated(&self, cpu: usize) -> bool {
        self.isolated.binary_search(&cpu).is_ok()
    }

    /// Whether `cpu` is in `cpu/nohz_full` (no scheduler tick while one task runs).
    pub fn is_nohz_full(&self, cpu: usize) -> bool {
        self.nohz_full.binary_search(&cpu).is_ok()
    }

    /// Isolated CPUs, ascending.
    pub fn isolated(&self) -> &[usize] {
        &self.isolated
    }

    /// `nohz_full` CPUs, ascending.
    pub fn nohz_full(&self) -> &[usize] {
        &self.nohz_full
    }
}

/// A summary for `host-check`, one fact per line.
impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let none = |list: &[usize]| {
            if list.is_empty() {
                "none".to_owned()
            } else {
                format_cpu_list(list)
            }
        };
        writeln!(
            f,
            "online CPUs: {} ({})",
            format_cpu_list(&self.online),
            self.online.len()
        )?;
        let nodes = self.nodes();
        let source = match self.numa_source {
            NumaSource::NodeCpuLists => "",
            NumaSource::CpuNodeLinks => " (from cpu*/node* links)",
            NumaSource::Absent => " (no NUMA information: one node assumed)",
        };
        write!(f, "NUMA nodes: {}{source}:", nodes.len())?;
        for n in &nodes {
            write!(f, " node{n}={}", format_cpu_list(&self.cpus_of_node(*n)))?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "nodes with memory: {}",
            format_cpu_list(&self.memory_nodes)
        )?;
        let mut groups: Vec<&[usize]> = self
            .siblings
            .values()
            .filter(|s| s.len() > 1)
            .map(Vec::as_slice)
            .collect();
        groups.sort_unstable();
        groups.dedup();
        if groups.is_empty() {
            writeln!(f, "hyperthread siblings: none (one thread per core)")?;
        } else {
            write!(f, "hyperthread siblings:")?;
            for g in groups {
                write!(f, " [{}]", format_cpu_list(g))?;
            }
            writeln!(f)?;
        }
        writeln!(f, "isolated: {}", none(&self.isolated))?;
        write!(f, "nohz_full: {}", none(&self.nohz_full))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_ranges_and_blanks() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11").unwrap(),
            [0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(parse_cpu_list("5\n").unwrap(), [5]);
        assert!(parse_cpu_list("").unwrap().is_empty());
        assert!(parse_cpu_list(" \n").unwrap().is_empty());
        assert_eq!(parse_cpu_list("3,1,1-2").unwrap(), [1, 2, 3]);
        assert_eq!(parse_cpu_list("0-7:2/4").unwrap(), [0, 1, 4, 5]);
        assert_eq!(parse_cpu_list(" 2 - 3 , 7 ").unwrap(), [2, 3, 7]);
    }

    #[test]
    fn malformed_lists_name_the_item() {
        for (input, needle) in [
            ("1,,2", "empty item"),
            ("3-1", "backwards"),
            ("a", "\"a\""),
            ("1-", "\"1-\""),
            ("-1", "\"-1\""),
            ("99999999", "above the limit"),
            ("0-3:0/4", "stride"),
            ("0-3:5/4", "stride"),
            ("1,", "empty item"),
        ] {
            let err = parse_cpu_list(input).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, TopologyError::CpuList { .. }), "{text}");
            assert!(text.contains(needle), "{input:?}: {text}");
        }
    }

    #[test]
    fn format_round_trips() {
        for list in ["", "0", "0-3,8,10-11", "1,3,5", "0-1023"] {
            assert_eq!(format_cpu_list(&parse_cpu_list(list).unwrap()), list);
        }
    }
}
