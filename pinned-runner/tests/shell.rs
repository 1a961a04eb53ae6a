//! `pinstream completions` and `pinstream man`: real scripts and pages, generated from the
//! same clap definitions as `--help`.

use std::process::Command;

fn pinstream(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pinstream"))
        .args(args)
        .output()
        .expect("pinstream runs")
}

fn stdout_of(args: &[&str]) -> String {
    let out = pinstream(args);
    assert!(
        out.status.success(),
        "pinstream {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn completion_scripts_name_every_command_and_bash_accepts_its_own() {
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout_of(&["completions", shell]);
        for word in [
            "run",
            "loadgen",
            "publish",
            "consume",
            "host-check",
            "--print-default-config",
        ] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
    }
    // bash parses the script and registers the completion function for `pinstream`.
    let script = stdout_of(&["completions", "bash"]);
    let dir = tempfile_dir();
    let path = dir.join("pinstream.bash");
    std::fs::write(&path, script).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p pinstream",
            path.display()
        ))
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("_pinstream"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unknown_shell_is_refused_with_the_choices() {
    let out = pinstream(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("possible values") && err.contains("zsh"),
        "{err}"
    );
}

#[test]
fn man_prints_the_main_page_and_writes_one_per_command() {
    let page = stdout_of(&["man"]);
    assert!(page.contains(".TH pinstream 1"), "{page}");
    assert!(page.contains("loadgen"));

    let dir = tempfile_dir().join("man1");
    let said = stdout_of(&["man", "--dir", dir.to_str().unwrap()]);
    assert!(said.contains("manual pages written"));
    for page in [
        "pinstream.1",
        "pinstream-run.1",
        "pinstream-consume.1",
        "pinstream-log-verify.1",
    ] {
        let text =
            std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page} is not roff"
        );
    }
    let run = std::fs::read_to_string(dir.join("pinstream-run.1")).unwrap();
    assert!(
        run.contains("print\\-default\\-config"),
        "run's page lacks its flags"
    );
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

/// A fresh directory under the system's temp dir, unique to this process and call.
fn tempfile_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "pinstream-shell-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
