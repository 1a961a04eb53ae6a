//! Placement through the public API: topology on a recorded 2-node sysfs tree and on the
//! live machine, pinning plans, pinning with read-back, NUMA node buffers, idle strategies.
//!
//! NUMA tests pass whatever the kernel allows (this may be a one-node VM or a container
//! where `mbind` is refused), but each checks something real: the buffer is usable and
//! zeroed, a successful `mbind` reads back the node asked, an invalid node is a clear error.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pinstream_host::idle::{IdleAction, IdleStrategy, Idler, ThreadLoad};
use pinstream_host::numa::{
    self, LockOutcome, MemPolicy, NodeBuffer, NumaError, PlaceOutcome, PlaceReport,
};
use pinstream_host::pin::{self, PinError, PlacementError, plan, plan_with_allowed};
use pinstream_host::topology::{NumaSource, Topology, TopologyError, format_cpu_list};

// ---- a per-thread counting allocator, to prove `Idler::step` does not allocate ----

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// const-initialised thread-local `Cell`, which needs no allocation to access.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's layout, as the caller promised it valid.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: as `dealloc`, and the caller guarantees `new_size` is valid for `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_on_this_thread() -> usize {
    ALLOCS.with(Cell::get)
}

// ---- helpers ----

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sysfs-2node")
}

/// A fresh directory under the system temp dir, removed on drop (even when a test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "pinstream-placement-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.0.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn mkdir(&self, rel: &str) {
        fs::create_dir_all(self.0.join(rel)).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `f` on a fresh thread (so pinning never leaks into the test harness's threads).
fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().unwrap()
}

// ---- topology: the recorded 2-node machine ----

#[test]
fn fixture_topology_is_read_exactly() {
    let topo = Topology::read(&fixture()).unwrap();
    assert_eq!(topo.online(), [0, 1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(topo.numa_source(), NumaSource::NodeCpuLists);
    assert_eq!(topo.nodes(), [0, 1]);
    assert_eq!(topo.memory_nodes(), [0, 1]);
    for cpu in 0..8 {
        assert_eq!(topo.node_of(cpu), Some(cpu / 4), "CPU {cpu}");
        let first = cpu / 2 * 2;
        assert_eq!(topo.siblings(cpu), [first, first + 1], "CPU {cpu}");
        let isolated = matches!(cpu, 2 | 3 | 6 | 7);
        assert_eq!(topo.is_isolated(cpu), isolated, "CPU {cpu}");
        assert_eq!(topo.is_nohz_full(cpu), isolated, "CPU {cpu}");
    }
    // CPUs 8-15 are possible but offline.
    assert!(!topo.is_online(8));
    assert_eq!(topo.node_of(8), None);
    assert!(topo.siblings(8).is_empty());
    assert_eq!(topo.cpus_of_node(1), [4, 5, 6, 7]);
    assert!(topo.cpus_of_node(2).is_empty());
    assert_eq!(topo.isolated(), [2, 3, 6, 7]);
    assert_eq!(topo.nohz_full(), [2, 3, 6, 7]);

    let summary = topo.to_string();
    for line in [
        "online CPUs: 0-7 (8)",
        "NUMA nodes: 2: node0=0-3 node1=4-7",
        "hyperthread siblings: [0-1] [2-3] [4-5] [6-7]",
        "isolated: 2-3,6-7",
        "nohz_full: 2-3,6-7",
    ] {
        assert!(summary.contains(line), "missing {line:?} in:\n{summary}");
    }
}

#[test]
fn cpu_node_links_and_absent_files_are_handled() {
    let dir = TempDir::new("links");
    dir.write("sys/devices/system/cpu/online", "0-3\n");
    // No node/ directory: the node comes from cpuN/nodeM entries.
    for cpu in 0..4 {
        dir.mkdir(&format!("sys/devices/system/cpu/cpu{cpu}/node{}", cpu / 2));
    }
    dir.write("sys/devices/system/cpu/nohz_full", "(null)\n");
    // No isolated file, no thread_siblings_list files.
    let topo = Topology::read(&dir.0).unwrap();
    assert_eq!(topo.numa_source(), NumaSource::CpuNodeLinks);
    assert_eq!(topo.nodes(), [0, 1]);
    assert_eq!(topo.node_of(3), Some(1));
    assert_eq!(topo.memory_nodes(), [0, 1]);
    assert_eq!(topo.siblings(2), [2]);
    assert!(topo.isolated().is_empty() && topo.nohz_full().is_empty());
    assert!(topo.to_string().contains("isolated: none"), "{topo}");
}

#[test]
fn no_numa_information_means_one_node_zero() {
    let dir = TempDir::new("flat");
    dir.write("sys/devices/system/cpu/online", "0-1\n");
    dir.write("sys/devices/system/cpu/isolated", "\n");
    let topo = Topology::read(&dir.0).unwrap();
    assert_eq!(topo.numa_source(), NumaSource::Absent);
    assert_eq!(topo.nodes(), [0]);
    assert_eq!(topo.memory_nodes(), [0]);
    assert_eq!(topo.node_of(1), Some(0));
    assert!(topo.to_string().contains("no NUMA information"), "{topo}");
}

#[test]
fn broken_trees_are_clear_errors() {
    let dir = TempDir::new("broken");
    let err = Topology::read(&dir.0).unwrap_err();
    assert!(matches!(err, TopologyError::Read { .. }), "{err}");
    assert!(
        err.to_string().contains("sys/devices/system/cpu/online"),
        "{err}"
    );

    dir.write("sys/devices/system/cpu/online", "0-1\n");
    dir.write("sys/devices/system/cpu/isolated", "1-x\n");
    let err = Topology::read(&dir.0).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, TopologyError::InFile { .. }), "{text}");
    assert!(
        text.contains("cpu/isolated") && text.contains("\"x\""),
        "{text}"
    );
}

// ---- topology: the live machine ----

#[test]
fn live_topology_agrees_with_the_affinity_mask() {
    let topo = Topology::live().unwrap();
    let mask = pin::current_affinity().unwrap();
    assert!(!mask.is_empty());
    for &cpu in &mask {
        assert!(
            topo.is_online(cpu),
            "CPU {cpu} is in our mask but not online: {topo}"
        );
        let node = topo.node_of(cpu).unwrap();
        assert!(topo.nodes().contains(&node));
        assert!(topo.siblings(cpu).contains(&cpu));
    }
    // available_parallelism is the mask, possibly lowered by a cgroup CPU quota.
    let parallelism = std::thread::available_parallelism().unwrap().get();
    assert!(parallelism <= mask.len(), "{parallelism} > mask {mask:?}");
    assert!(mask.len() <= topo.online().len());
    // Every node the live tree lists for a CPU is one the kernel lists as a directory or,
    // without NUMA, node 0.
    for node in topo.nodes() {
        let dir = Path::new("/sys/devices/system/node").join(format!("node{node}"));
        assert!(
            dir.exists() || topo.numa_source() == NumaSource::Absent,
            "{}",
            dir.display()
        );
    }
    println!("{topo}");
}

// ---- pinning plans ----

fn all_fixture_cpus() -> Vec<usize> {
    (0..8).collect()
}

#[test]
fn plan_refuses_shared_offline_and_disallowed_cpus() {
    let topo = Topology::read(&fixture()).unwrap();
    let allowed = all_fixture_cpus();

    let err =
        plan_with_allowed(&[("ingest", 2), ("realtime", 2)], &topo, &allowed, false).unwrap_err();
    assert!(
        matches!(
            err,
            PlacementError::SharedCpu {
                cpu: 2,
                first: "ingest",
                second: "realtime"
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("overprovisioned"), "{err}");

    let err = plan_with_allowed(&[("ingest", 9)], &topo, &allowed, false).unwrap_err();
    assert!(
        matches!(err, PlacementError::Offline { cpu: 9, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("online: 0-7"), "{err}");

    let err = plan_with_allowed(&[("ingest", 5)], &topo, &[0, 1, 2, 3], false).unwrap_err();
    assert!(
        matches!(err, PlacementError::NotAllowed { cpu: 5, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("mask (0-3"), "{err}");

    let err = plan_with_allowed(&[("a", 2), ("a", 3)], &topo, &allowed, true).unwrap_err();
    assert!(
        matches!(err, PlacementError::DuplicateThread { thread: "a" }),
        "{err}"
    );
}

#[test]
fn overprovisioned_allows_everything_and_pins_nothing() {
    let topo = Topology::read(&fixture()).unwrap();
    let roles = [("ingest", 1), ("realtime", 1), ("batch", 12)];
    let plan = plan_with_allowed(&roles, &topo, &all_fixture_cpus(), true).unwrap();
    assert!(!plan.is_pinning());
    assert_eq!(plan.cpu_of("ingest"), None);
    assert_eq!(plan.node_of("ingest"), None);
    assert_eq!(plan.assignments().len(), 3);
    let warnings = plan.warnings().join("\n");
    assert!(warnings.contains("both assigned CPU 1"), "{warnings}");
    assert!(
        warnings.contains("CPU 12, which is not online"),
        "{warnings}"
    );

    // With pinning off, a thread keeps its mask and says so.
    let report = on_thread(move || plan.pin_current("realtime").unwrap());
    assert_eq!(report.asked, None);
    assert_eq!(report.got, pin::current_affinity().unwrap());
    assert!(report.to_string().contains("not pinned"), "{report}");
}

#[test]
fn plan_warns_about_isolation_and_shared_cores() {
    let topo = Topology::read(&fixture()).unwrap();
    let allowed = all_fixture_cpus();

    // Isolated, nohz_full, separate cores, on both nodes: nothing to say.
    let plan =
        plan_with_allowed(&[("ingest", 2), ("realtime", 6)], &topo, &allowed, false).unwrap();
    assert!(plan.is_pinning());
    assert!(plan.warnings().is_empty(), "{:?}", plan.warnings());
    assert_eq!(plan.cpu_of("realtime"), Some(6));
    assert_eq!(plan.node_of("realtime"), Some(1));
    assert_eq!(plan.node_of("ingest"), Some(0));
    assert_eq!(plan.cpu_of("nobody"), None);

    // CPU 0 is a housekeeping CPU; 2 and 3 are one core.
    let plan = plan_with_allowed(
        &[("admin", 0), ("ingest", 2), ("realtime", 3)],
        &topo,
        &allowed,
        false,
    )
    .unwrap();
    let w = plan.warnings().join("\n");
    assert!(
        w.contains("\"admin\" on CPU 0: not isolated") && w.contains("not nohz_full"),
        "{w}"
    );
    assert!(
        w.contains("\"ingest\" (CPU 2) and \"realtime\" (CPU 3) share a core"),
        "{w}"
    );
    assert_eq!(plan.warnings().len(), 2, "{w}");

    // Taking every allowed CPU leaves nothing for the OS.
    let plan = plan_with_allowed(&[("a", 2), ("b", 7)], &topo, &[2, 7], false).unwrap();
    assert!(
        plan.warnings().join("\n").contains("every CPU"),
        "{:?}",
        plan.warnings()
    );
}

#[test]
fn plan_on_the_live_machine_pins_and_reads_back() {
    let topo = Topology::live().unwrap();
    let mask = pin::current_affinity().unwrap();
    let cpu = *mask.last().unwrap();
    let pin_plan = plan(&[("worker", cpu)], &topo, false).unwrap();
    let before = mask.clone();
    let report = on_thread(move || {
        let report = pin_plan.pin_current("worker").unwrap();
        // The kernel's view, read independently of the report.
        assert_eq!(pin::current_affinity().unwrap(), [cpu]);
        let err = pin_plan.pin_current("stranger").unwrap_err();
        assert!(matches!(err, PinError::NotInPlan { .. }), "{err}");
        report
    });
    assert_eq!(report.asked, Some(cpu));
    assert_eq!(report.got, [cpu]);
    assert_eq!(report.node, topo.node_of(cpu));
    assert_eq!(report.isolated, topo.is_isolated(cpu));
    let text = report.to_string();
    assert!(
        text.contains(&format!("asked CPU {cpu}, got mask {cpu}")),
        "{text}"
    );
    // The test's own thread was not moved.
    assert_eq!(pin::current_affinity().unwrap(), before);

    // A CPU beyond every online one is refused before any thread is touched.
    let beyond = topo.online().last().unwrap() + 1;
    let err = plan(&[("worker", beyond)], &topo, false).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("online: {}", format_cpu_list(topo.online()))),
        "{err}"
    );
}

// ---- NUMA ----

/// A node this process may allocate on: has memory and is in our cpuset's `Mems_allowed`.
fn usable_node() -> usize {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let allowed = status
        .lines()
        .find_map(|l| l.strip_prefix("Mems_allowed_list:"))
        .map(|list| pinstream_host::topology::parse_cpu_list(list).unwrap())
        .unwrap_or_default();
    let nodes = numa::memory_nodes();
    nodes
        .iter()
        .copied()
        .find(|n| allowed.contains(n))
        .unwrap_or(nodes[0])
}

fn check_report_is_honest(report: &PlaceReport, asked: usize, addr: *const u8) {
    println!("{report}");
    assert_eq!(report.asked, asked);
    match &report.outcome {
        PlaceOutcome::Placed { got } => {
            // Read back independently; MPOL_PREFERRED may fall back, but not on an idle box
            // for a few pages, and the report must match what the kernel says.
            assert_eq!(numa::node_of_address(addr).unwrap(), *got);
            assert_eq!(*got, asked, "{report}");
        }
        PlaceOutcome::NotSupported { source, .. } => {
            let errno = source.raw_os_error();
            assert!(
                errno == Some(libc::ENOSYS) || errno == Some(libc::EPERM),
                "{source}"
            );
        }
        other => panic!("unexpected outcome for a valid node: {other:?} ({report})"),
    }
}

#[test]
fn node_buffer_is_zeroed_usable_and_placed_as_reported() {
    let node = usable_node();
    for policy in [MemPolicy::Preferred, MemPolicy::Bind] {
        let mut buf = NodeBuffer::with_policy(10_000, node, policy, false).unwrap();
        assert!(
            buf.len() >= 10_000 && buf.len() % 4096 == 0,
            "{}",
            buf.len()
        );
        assert!(!buf.is_empty());
        assert!(buf.as_slice().iter().all(|&b| b == 0));
        for (i, b) in buf.as_mut_slice().iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        assert!(
            buf.as_slice()
                .iter()
                .enumerate()
                .all(|(i, &b)| b == (i % 251) as u8)
        );
        assert_eq!(buf.report().policy, policy);
        assert_eq!(buf.report().bytes, buf.len());
        assert!(matches!(buf.report().lock, LockOutcome::NotAsked));
        check_report_is_honest(buf.report(), node, buf.as_ptr());
        assert!(
            buf.report()
                .to_string()
                .contains(&format!("asked node {node}"))
        );
    }
}

#[test]
fn node_buffer_refuses_bad_requests_clearly() {
    let err = NodeBuffer::new(4096, 1000).unwrap_err();
    assert!(
        matches!(err, NumaError::InvalidNode { node: 1000, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("NUMA node 1000") && text.contains("nodes with memory"),
        "{text}"
    );
    assert!(matches!(
        NodeBuffer::new(0, 0).unwrap_err(),
        NumaError::ZeroLength
    ));
}

#[test]
fn node_buffer_lock_is_reported() {
    let buf =
        NodeBuffer::with_policy(64 * 1024, usable_node(), MemPolicy::Preferred, true).unwrap();
    match &buf.report().lock {
        LockOutcome::Locked => {
            let status = fs::read_to_string("/proc/self/status").unwrap();
            let locked_kb: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmLck:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap();
            assert!(locked_kb >= 64, "VmLck {locked_kb} kB");
        }
        LockOutcome::Failed { source } => {
            assert!(
                buf.report().to_string().contains("RLIMIT_MEMLOCK"),
                "{source}"
            );
        }
        LockOutcome::NotAsked => panic!("lock was asked"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn place_existing_binds_whole_pages_and_keeps_contents() {
    let node = usable_node();
    let mut boxed = vec![0u8; 256 * 1024].into_boxed_slice();
    for (i, b) in boxed.iter_mut().enumerate() {
        *b = (i % 253) as u8;
    }
    let report = numa::place_existing(&*boxed, node);
    assert!(report.bytes % 4096 == 0);
    // Only the partial pages at the ends are left out.
    assert!(report.bytes >= 256 * 1024 - 2 * 4096, "{report}");
    let first_page = (boxed.as_ptr() as usize).div_ceil(4096) * 4096;
    let first_page = boxed[first_page - boxed.as_ptr() as usize..].as_ptr();
    check_report_is_honest(&report, node, first_page);
    assert!(
        boxed.iter().enumerate().all(|(i, &b)| b == (i % 253) as u8),
        "migration changed contents"
    );

    let small = [0u64; 4];
    let report = numa::place_existing(&small, node);
    assert!(matches!(report.outcome, PlaceOutcome::NothingToPlace));
    assert_eq!(report.bytes, 0);

    let report = numa::place_existing(&*boxed, 1000);
    match &report.outcome {
        PlaceOutcome::Failed { source } => {
            assert!(source.to_string().contains("NUMA node 1000"), "{source}")
        }
        other => panic!("{other:?}"),
    }
    assert!(report.to_string().contains("continuing"), "{report}");
}

#[test]
fn node_of_address_reads_real_pages_and_refuses_unmapped_ones() {
    let value = Box::new([1u8; 8192]);
    match numa::node_of_address(value.as_ptr()) {
        Ok(node) => assert!(numa::memory_nodes().contains(&node), "node {node}"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOSYS), "{e}"),
    }
    // Page 0 is never mapped.
    assert!(numa::node_of_address(std::ptr::null()).is_err());
}

/// `mlockall(MCL_FUTURE)` would change every later allocation of the test process, so it
/// runs in a child process: this same test binary, filtered to the child test below.
#[test]
fn lock_all_memory_locks_or_says_why() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["--exact", "lock_all_memory_child", "--nocapture"])
        .env("PINSTREAM_LOCK_ALL_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed:\n{stdout}");
    assert!(stdout.contains("1 passed"), "child did not run:\n{stdout}");
    assert!(stdout.contains("lock_all_memory:"), "{stdout}");
}

#[test]
fn lock_all_memory_child() {
    if std::env::var_os("PINSTREAM_LOCK_ALL_CHILD").is_none() {
        return; // only meaningful as the child of the test above
    }
    match numa::lock_all_memory() {
        Ok(()) => {
            let status = fs::read_to_string("/proc/self/status").unwrap();
            let locked = status
                .lines()
                .find_map(|l| l.strip_prefix("VmLck:"))
                .unwrap()
                .trim()
                .to_owned();
            assert_ne!(locked, "0 kB");
            println!("lock_all_memory: locked {locked}");
        }
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("RLIMIT_MEMLOCK"), "{text}");
            println!("lock_all_memory: {text}");
        }
    }
}

// ---- idle strategies ----

#[test]
fn idler_spins_then_yields_then_parks_and_resets_on_work() {
    let load = Arc::new(ThreadLoad::new());
    let strategy = IdleStrategy::SpinPark {
        spins: 3,
        yields: 2,
        park: Duration::from_millis(1),
    };
    let mut idler = Idler::new(strategy, Arc::clone(&load));
    use IdleAction::*;
    let got: Vec<IdleAction> = (0..7).map(|_| idler.step(false)).collect();
    assert_eq!(got, [Spun, Spun, Spun, Yielded, Yielded, Parked, Parked]);
    assert_eq!(idler.step(true), Worked);
    assert_eq!(idler.step(false), Spun, "work resets the backoff");

    let s = load.snapshot();
    assert_eq!(s.loops, 9);
    assert_eq!(s.parks, 2);
    assert_eq!(s.yields, 2);

    let mut idler = Idler::new(
        IdleStrategy::SpinYield { spins: 2 },
        Arc::new(ThreadLoad::new()),
    );
    let got: Vec<IdleAction> = (0..5).map(|_| idler.step(false)).collect();
    assert_eq!(got, [Spun, Spun, Yielded, Yielded, Yielded]);

    let mut idler = Idler::new(IdleStrategy::Spin, Arc::new(ThreadLoad::new()));
    assert!((0..1000).all(|_| idler.step(false) == Spun));

    // Overprovisioned: no busy polling, parks on the third idle step.
    let mut idler = Idler::new(
        IdleStrategy::Spin.effective(true),
        Arc::new(ThreadLoad::new()),
    );
    let got: Vec<IdleAction> = (0..3).map(|_| idler.step(false)).collect();
    assert_eq!(got, [Yielded, Yielded, Parked]);
}

#[test]
fn idler_accounts_busy_and_idle_time() {
    let load = Arc::new(ThreadLoad::new());
    assert_eq!(load.busy_ratio(), 0.0);
    let mut idler = Idler::new(IdleStrategy::Spin, Arc::clone(&load));
    // A "work" iteration that takes at least 20 ms, then idle iterations of at least 20 ms.
    std::thread::sleep(Duration::from_millis(20));
    let work_done = Instant::now();
    idler.step(true);
    let mid = load.snapshot();
    assert!(mid.busy_ns >= 20_000_000, "{mid:?}");
    assert_eq!(mid.idle_ns, 0);
    assert_eq!(load.busy_ratio(), 1.0);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(20) {
        idler.step(false);
    }
    let spent = u64::try_from(work_done.elapsed().as_nanos()).unwrap();
    let end = load.snapshot();
    assert_eq!(
        end.busy_ns, mid.busy_ns,
        "idle steps must not count as busy"
    );
    // Idle time is what passed between steps since the work step: some, and no more than
    // that (a lower bound near 20 ms would depend on the scheduler).
    assert!(
        end.idle_ns > 0 && end.idle_ns <= spent,
        "{end:?}, loop took {spent} ns"
    );
    let ratio = load.busy_ratio();
    assert!(ratio > 0.0 && ratio < 1.0, "{ratio}");
    assert_eq!(end.busy_ratio_since(&mid), 0.0);
    assert!(end.loops > 1);
}

#[test]
fn idler_steps_do_not_allocate() {
    let strategies = [
        IdleStrategy::Spin,
        IdleStrategy::SpinYield { spins: 10 },
        IdleStrategy::SpinPark {
            spins: 10,
            yields: 10,
            park: Duration::from_micros(1),
        },
    ];
    for strategy in strategies {
        let mut idler = Idler::new(strategy, Arc::new(ThreadLoad::new()));
        idler.step(false); // warm up anything lazily initialised by the first park
        let before = allocations_on_this_thread();
        for i in 0..2_000u32 {
            idler.step(i % 64 == 0);
        }
        assert_eq!(
            allocations_on_this_thread(),
            before,
            "{strategy:?} allocated in step"
        );
    }
    // The counter does see allocations (so the check above can fail).
    let before = allocations_on_this_thread();
    let v = std::hint::black_box(vec![1u8; 10]);
    assert!(allocations_on_this_thread() > before, "{v:?}");
}
