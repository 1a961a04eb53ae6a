//! One engine per data directory: `storage.dir/LOCK`, held with `flock(LOCK_EX | LOCK_NB)` for
//! the whole life of whoever writes the logs (the engine, `pinstream log repair`).
//!
//! The holder writes its pid into the file so that a refused second process can name it. The
//! lock, not the file, is what counts: the kernel releases a `flock` when its holder dies (even
//! by `kill -9`), so a LOCK file left behind with a dead pid never blocks a restart; the new
//! holder simply writes its own pid over it. Readers (`pinstream log inspect|verify|tail|replay`)
//! open the logs read-only and take no lock.
//!
//! ```
//! use pinstream_host::storage::{DataDirLock, StorageError};
//! # let dir = std::env::temp_dir().join(format!("pinstream-doc-lock-{}", std::process::id()));
//! let lock = DataDirLock::acquire(&dir)?;
//! // A second holder in this or any other process is refused, and told who holds it.
//! match DataDirLock::acquire(&dir) {
//!     Err(StorageError::Locked { holder, .. }) => assert_eq!(holder, Some(std::process::id())),
//!     other => panic!("{other:?}"),
//! }
//! drop(lock); // released: the next one gets it
//! DataDirLock::check_free(&dir)?;
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), StorageError>(())
//! ```

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::StorageError;
use super::format::sync_dir;
use super::layout::LOCK_FILE;
use crate::sys::{self, Flock};

/// The exclusive lock on a data directory; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct DataDirLock {
    /// Keeps the lock: it lives as long as this open file description.
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Creates `dir` if missing, takes the lock on `dir/LOCK` (created if missing, never
    /// through a symlink) without waiting, and writes this process's pid into it.
    ///
    /// # Errors
    /// [`StorageError::Locked`] naming the holder's pid when another process (or another
    /// handle in this one) holds it; [`StorageError::Io`] when the directory or the file cannot
    /// be created, locked or written.
    pub fn acquire(dir: &Path) -> Result<Self, StorageError> {
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(|e| StorageError::io("create directory", dir, e))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| StorageError::io("open lock file", &path, e))?;
        match sys::try_lock_exclusive(&file).map_err(|e| StorageError::io("flock", &path, e))? {
            Flock::Acquired => {}
            Flock::Held => {
                return Err(StorageError::Locked {
                    dir: dir.to_path_buf(),
                    holder: read_holder(&path),
                });
            }
        }
        // Ours now: replace whatever pid a dead holder left with ours.
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.write_all_at(pid.as_bytes(), 0))
            .and_then(|()| file.sync_data())
            .map_err(|e| StorageError::io("write pid to lock file", &path, e))?;
        Ok(Self { _file: file, path })
    }

    /// Checks, changing nothing, that no process holds the lock of `dir` (a missing LOCK file
    /// or directory is free). For read-mostly tools that must not run beside an engine but
    /// should leave no trace (a dry run).
    ///
    /// # Errors
    /// [`StorageError::Locked`] naming the holder; [`StorageError::Io`] when the file exists
    /// but cannot be opened or locked.
    pub fn check_free(dir: &Path) -> Result<(), StorageError> {
        let path = dir.join(LOCK_FILE);
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StorageError::io("open lock file", &path, e)),
        };
        match sys::try_lock_exclusive(&file).map_err(|e| StorageError::io("flock", &path, e))? {
            // Released again when `file` closes, at the end of this function.
            Flock::Acquired => Ok(()),
            Flock::Held => Err(StorageError::Locked {
                dir: dir.to_path_buf(),
                holder: read_holder(&path),
            }),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The pid written in a lock file, if it holds one (a holder that has just taken the lock may
/// not have written it yet).
fn read_holder(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}
