//! `pinstream host-check` run as a real binary on this machine.

use std::process::{Command, Output};

use pinstream_host::pin;
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
    if allowed.len() < 2 {
        assert_eq!(out.status.code(), Some(0), "{stdout}");
        assert!(
            stdout.contains("overprovisioned: this process may use"),
            "{stdout}"
        );
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
        assert_eq!(out.status.code(), Some(1), "{stdout}");
    }
}

#[test]
fn both_threads_on_one_cpu_is_refused() {
    let tmp = TempDir::new("hostcheck-shared");
    let allowed = allowed();
    let cpu = allowed[0];
    let path = tmp.path().join("shared.toml");
    std::fs::write(
        &path,
        format!("[engine]\ningest_cpu = {cpu}\nprocess_cpu = {cpu}\n"),
    )
    .expect("write the config");
    let out = host_check(Some(&path));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        stdout.contains(&format!("source: {}", path.display())),
        "{stdout}"
    );
    if allowed.len() >= 2 {
        assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
        assert!(
            stdout.contains(&format!(
                "REFUSED: threads \"ingest\" and \"storage\" are both assigned CPU {cpu}"
            )),
            "{stdout}"
        );
        assert!(stderr.contains("refused"), "{stderr}");
    } else {
        // Too few CPUs: run would go overprovisioned; the config is still invalid.
        assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    }

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
        stdout.contains("overprovisioned: the config says so"),
        "{stdout}"
    );
    assert!(
        stdout.contains("plan: valid (overprovisioned: no pinning)"),
        "{stdout}"
    );
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
