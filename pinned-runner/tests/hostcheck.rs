//! `pinstream host-check` run as a real binary on this machine.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use pinstream_host::pin;
use pinstream_host::placement::{self, PlacementInput, PlacementMode};
use pinstream_host::topology::Topology;
use pinstream_tests::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_pinstream");

fn host_check(config: Option<&std::path::Path>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("host-check");
    if let Some(path) = config {
        cmd.arg("--config").arg(path);
    }
    cmd.output().expect("run the pinstream binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The CPUs this test (and the binary it spawns) may run on.
fn allowed() -> Vec<usize> {
    pin::current_affinity().expect("read the affinity mask")
}

#[test]
fn prints_every_section_for_the_embedded_default() {
    let out = host_check(None);
    let stdout = text(&out.stdout);
    for needle in [
        "== topology ==",
        "online CPUs: ",
        "NUMA nodes: ",
        "nodes with memory: ",
        "isolated: ",
        "nohz_full: ",
        "== this process ==",
        "allowed CPUs: ",
        "== config ==",
        "source: embedded default config",
        "engine.ingest_cpu = 0, engine.process_cpu = 1",
        "== plan (what `pinstream run` would do) ==",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing:\n{stdout}");
    }
    let allowed = allowed();
    // What the engine would decide here (the embedded default's CPUs, moved as run moves them).
    let cpus = placement::default_cpus(&allowed).unwrap_or([0, 1]);
    let topo = Topology::live().expect("read the topology");
    let decision = placement::decide(&PlacementInput {
        mode: PlacementMode::Auto,
        overprovisioned: false,
        cpus,
        allowed: Some(&allowed),
        isolated: topo.isolated(),
    });
    assert!(
        stdout.contains(&format!("placement decision: {decision}")),
        "{stdout}"
    );
    if !decision.pinned {
        // A 2-CPU machine without isolated CPUs: unpinned, with the reason and advice.
        assert_eq!(out.status.code(), Some(0), "{stdout}");
        assert!(
            stdout.contains("placement decision: unpinned (auto: "),
            "{stdout}"
        );
        assert!(stdout.contains("advice: "), "{stdout}");
        assert!(stdout.contains("plan: valid (unpinned)"), "{stdout}");
    } else if allowed.contains(&0) && allowed.contains(&1) {
        // The default pins ingest on CPU 0 and storage on CPU 1.
        assert_eq!(
            out.status.code(),
            Some(0),
            "{stdout}\n{}",
            text(&out.stderr)
        );
        assert!(stdout.contains("ingest: pinned to CPU 0"), "{stdout}");
        assert!(stdout.contains("storage: pinned to CPU 1"), "{stdout}");
        assert!(stdout.contains("plan: valid (threads pinned)"), "{stdout}");
    } else {
        // Moved to the first two allowed CPUs, as run does.
        assert!(
            stdout.contains("CPUs 0 and 1 are not both allowed"),
            "{stdout}"
        );
        assert_eq!(out.status.code(), Some(0), "{stdout}");
    }
}

#[test]
fn both_threads_on_one_cpu_is_refused() {
    let tmp = TempDir::new("hostcheck-shared");
    let allowed = allowed();
    let cpu = allowed[0];
    let path = tmp.path().join("shared.toml");
    // Pinning forced, whatever the machine: the plan is refused.
    std::fs::write(
        &path,
        format!("[engine]\nplacement = \"pinned\"\ningest_cpu = {cpu}\nprocess_cpu = {cpu}\n"),
    )
    .expect("write the config");
    let out = host_check(Some(&path));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        stdout.contains(&format!("source: {}", path.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("placement decision: pinned (engine.placement = \"pinned\")"),
        "{stdout}"
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "REFUSED: threads \"ingest\" and \"storage\" are both assigned CPU {cpu}"
        )),
        "{stdout}"
    );
    assert!(stderr.contains("refused"), "{stderr}");

    // Overprovisioned, sharing a CPU is fine: nothing is pinned.
    std::fs::write(
        &path,
        format!(
            "[engine]\noverprovisioned = true\nidle = \"spin-park\"\ningest_cpu = {cpu}\nprocess_cpu = {cpu}\n"
        ),
    )
    .expect("write the config");
    let out = host_check(Some(&path));
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("placement decision: unpinned (engine.overprovisioned = true)"),
        "{stdout}"
    );
    assert!(stdout.contains("plan: valid (unpinned)"), "{stdout}");

    // The same with the newer key.
    std::fs::write(
        &path,
        format!("[engine]\nplacement = \"unpinned\"\ningest_cpu = {cpu}\nprocess_cpu = {cpu}\n"),
    )
    .expect("write the config");
    let out = host_check(Some(&path));
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("placement decision: unpinned (engine.placement = \"unpinned\")"),
        "{stdout}"
    );
}

/// Kills the child when the test ends, even on failure.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first line of `lines` starting with `prefix`, within 30 s.
fn line_starting(lines: &mpsc::Receiver<String>, prefix: &str, seen: &mut Vec<String>) -> String {
    loop {
        match lines.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.starts_with(prefix) => return l,
            Ok(l) => seen.push(l),
            Err(e) => panic!(
                "no line starting with {prefix:?} ({e}):\n{}",
                seen.join("\n")
            ),
        }
    }
}

#[test]
fn host_check_and_run_print_the_same_placement_decision() {
    let tmp = TempDir::new("hostcheck-same");
    let allowed = allowed();
    // The first two CPUs this process may use (one and a CPU beside it on a 1-CPU mask).
    let (a, b) = (
        allowed[0],
        allowed.get(1).copied().unwrap_or(allowed[0] + 1),
    );
    let path = tmp.path().join("engine.toml");
    std::fs::write(
        &path,
        format!(
            "[engine]\ningest_cpu = {a}\nprocess_cpu = {b}\n[tcp]\nlisten = \"127.0.0.1:0\"\n\
             [udp]\nlisten = \"off\"\n[admin]\nlisten = \"off\"\n[consumers]\nlisten = \"off\"\n[storage]\ndir = \"{}\"\n",
            tmp.path().join("data").display()
        ),
    )
    .expect("write the config");

    let out = host_check(Some(&path));
    let stdout = text(&out.stdout);
    let checked = stdout
        .lines()
        .find(|l| l.starts_with("placement decision: "))
        .unwrap_or_else(|| panic!("no decision in\n{stdout}"))
        .to_owned();

    let mut child = Command::new(BIN)
        .args(["run", "--status-every", "0", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn pinstream run");
    let stdout = child.stdout.take().expect("stdout");
    let guard = ChildGuard(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let ran = line_starting(&rx, "placement decision: ", &mut seen);
    drop(guard);
    assert_eq!(ran, checked);
    // On this machine the decision is the one `decide` gives for its topology and mask.
    let decision = placement::decide(&PlacementInput {
        mode: PlacementMode::Auto,
        overprovisioned: false,
        cpus: [a, b],
        allowed: Some(&allowed),
        isolated: Topology::live().expect("topology").isolated(),
    });
    assert_eq!(ran, format!("placement decision: {decision}"));
}

#[test]
fn a_bad_config_exits_2_naming_the_key() {
    let tmp = TempDir::new("hostcheck-bad");
    let path = tmp.path().join("bad.toml");
    std::fs::write(&path, "[engine]\ningest_cpux = 1\n").expect("write the config");
    let out = host_check(Some(&path));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("ingest_cpux"), "{stderr}");

    let missing = tmp.path().join("missing.toml");
    let out = host_check(Some(&missing));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("missing.toml"));
}

/// `cmd` with its process restricted to `cpus` before it runs (what `taskset -c` does).
fn restricted(mut cmd: Command, cpus: &[usize]) -> Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: an all-zero `cpu_set_t` is the empty set (what `CPU_ZERO` writes).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: `cpu` is below the set's size (CPU numbers of this machine's mask).
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: the closure runs in the child between fork and exec; it only calls
    // `sched_setaffinity`, which is async-signal-safe, on a set built before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd
}

/// The lines of `child`'s stdout until one starts with `last` or the output ends (30 s at
/// most).
fn lines_until(child: &mut Child, last: &str) -> Vec<String> {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        let done = line.starts_with(last);
        lines.push(line);
        if done {
            break;
        }
    }
    lines
}

fn line_with<'a>(lines: &'a [String], prefix: &str) -> Option<&'a str> {
    lines
        .iter()
        .find(|l| l.starts_with(prefix))
        .map(String::as_str)
}

#[test]
fn host_check_shows_the_cpus_run_uses_when_0_and_1_are_not_both_allowed() {
    let allowed = allowed();
    if allowed.len() < 2 {
        eprintln!("skipped: this process may use fewer than 2 CPUs ({allowed:?})");
        return;
    }
    // Without CPU 0, the embedded default's CPUs 0 and 1 are not both allowed (a 2-CPU
    // machine leaves one CPU: nothing to move to, and both must say so alike).
    let mask: Vec<usize> = allowed.iter().copied().filter(|&c| c != 0).collect();
    let mut cmd = Command::new(BIN);
    cmd.arg("host-check");
    let out = restricted(cmd, &mask).output().expect("run host-check");
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let checked: Vec<String> = stdout.lines().map(str::to_owned).collect();
    let moved = line_with(&checked, "CPUs 0 and 1 are not both allowed");
    if mask.len() >= 2 {
        let expect = format!(
            "CPUs 0 and 1 are not both allowed: using CPUs {} and {} instead",
            mask[0], mask[1]
        );
        assert_eq!(moved, Some(expect.as_str()), "{stdout}");
        assert!(
            stdout.contains(&format!("ingest: pinned to CPU {}", mask[0]))
                || stdout.contains(&format!("configured CPU {}", mask[0])),
            "{stdout}"
        );
    } else {
        assert_eq!(moved, None, "{stdout}");
    }

    // `pinstream run` with the embedded default under the same mask, in a scratch directory
    // (its data directory is relative). Its ports may be taken on a shared machine: the
    // CPU line comes before the engine starts, the decision only once it has.
    let tmp = TempDir::new("hostcheck-mask");
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--status-every", "0"])
        .current_dir(tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = restricted(cmd, &mask).spawn().expect("spawn pinstream run");
    let ran = lines_until(&mut child, "placement decision: ");
    drop(ChildGuard(child));
    assert_eq!(
        line_with(&ran, "CPUs 0 and 1 are not both allowed"),
        moved,
        "run printed:\n{}",
        ran.join("\n")
    );
    if let Some(decision) = line_with(&ran, "placement decision: ") {
        assert_eq!(
            Some(decision),
            line_with(&checked, "placement decision: "),
            "{stdout}"
        );
    }
}
