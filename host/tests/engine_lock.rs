//! One engine per data directory: `storage.dir/LOCK` is held with `flock` for the engine's
//! whole life; a second engine on the same directory is refused and told the holder's pid; a
//! LOCK file left by a dead process does not block a restart.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use pinstream_host::engine::{Engine, EngineConfig, EngineError};
use pinstream_host::storage::{DataDirLock, LOCK_FILE, StorageError};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under the temp dir, removed on drop (even when the test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("pinstream-lock-{}-{n}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn lock_contents(dir: &TempDir) -> String {
    fs::read_to_string(dir.0.join(LOCK_FILE)).unwrap()
}

#[test]
fn a_second_engine_on_one_directory_is_refused_naming_the_holder() {
    let dir = TempDir::new("second");
    let first = Engine::start(EngineConfig::local(&dir.0)).expect("the first engine starts");
    let pid = std::process::id();
    assert_eq!(lock_contents(&dir), format!("{pid}\n"));

    let err = match Engine::start(EngineConfig::local(&dir.0)) {
        Ok(_) => panic!("a second engine started on {}", dir.0.display()),
        Err(e) => e,
    };
    match &err {
        EngineError::Storage(StorageError::Locked { dir: d, holder }) => {
            assert_eq!(d, &dir.0);
            assert_eq!(*holder, Some(pid));
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&dir.0.display().to_string()), "{msg}");
    assert!(msg.contains(&format!("pid {pid}")), "{msg}");

    // A tool that only checks is refused too, and changes nothing.
    assert!(matches!(
        DataDirLock::check_free(&dir.0),
        Err(StorageError::Locked { holder: Some(p), .. }) if p == pid
    ));
    assert_eq!(lock_contents(&dir), format!("{pid}\n"));

    // The first engine still runs and stops cleanly; then the directory is free again.
    first.stop().expect("the first engine stops");
    DataDirLock::check_free(&dir.0).expect("free after stop");
    let again = Engine::start(EngineConfig::local(&dir.0)).expect("a restart after stop");
    again.stop().unwrap();
}

#[test]
fn a_lock_file_left_by_a_dead_process_does_not_block_a_restart() {
    let dir = TempDir::new("stale");
    // A pid that existed and is gone: a child that has exited and been reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    fs::write(dir.0.join(LOCK_FILE), format!("{dead}\n")).unwrap();

    DataDirLock::check_free(&dir.0).expect("a stale LOCK file is free");
    let engine = Engine::start(EngineConfig::local(&dir.0)).expect("starts over a stale LOCK");
    assert_eq!(lock_contents(&dir), format!("{}\n", std::process::id()));
    engine.stop().unwrap();
}

#[test]
fn the_lock_file_is_never_followed_through_a_symlink() {
    let dir = TempDir::new("symlink");
    let target = dir.0.join("elsewhere");
    fs::write(&target, "keep me").unwrap();
    let data = dir.0.join("data");
    fs::create_dir(&data).unwrap();
    std::os::unix::fs::symlink(&target, data.join(LOCK_FILE)).unwrap();
    let err = DataDirLock::acquire(&data).expect_err("a symlinked LOCK is refused");
    assert!(err.to_string().contains(LOCK_FILE), "{err}");
    assert_eq!(fs::read_to_string(&target).unwrap(), "keep me");
}
