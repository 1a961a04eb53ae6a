//! Opening the files of a log: never through a symbolic link.
//!
//! A segment, index or checkpoint that is a symbolic link would be written through (a link
//! to a file outside the data directory truncated or overwritten it). Every file of a log is
//! opened with `O_NOFOLLOW`, so such a link is refused with `ELOOP`, which
//! [`StorageError::io`](super::StorageError) words as "a symbolic link". Directories are
//! followed: a data directory (or a log's) may be a link to another disk.
//!
//! Files are created with mode `0666` and directories `0777`, less the process's umask:
//! `pinstream run` sets the umask from `storage.mode` (default `0600`: files `0600`,
//! directories `0700`), so payloads are not readable by other local users.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// `OpenOptions` that refuse a symbolic link.
pub(crate) fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.custom_flags(libc::O_NOFOLLOW);
    o
}

/// Opens `path` for reading (not through a link).
pub(crate) fn open_read(path: &Path) -> io::Result<File> {
    options().read(true).open(path)
}

/// Creates (or truncates) `path` for writing (not through a link).
pub(crate) fn create(path: &Path) -> io::Result<File> {
    options().write(true).create(true).truncate(true).open(path)
}

/// Creates `path`, which must not exist, for writing.
pub(crate) fn create_new(path: &Path) -> io::Result<File> {
    options().write(true).create_new(true).open(path)
}

/// Writes `bytes` as the whole content of `path` (not through a link).
pub(crate) fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    create(path)?.write_all(bytes)
}

/// The whole content of `path` (not through a link).
pub(crate) fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut open_read(path)?, &mut bytes)?;
    Ok(bytes)
}
