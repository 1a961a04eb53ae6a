//! Opening the logs of a data directory and listing their files, shared by the commands.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use pinstream_host::storage::{
    LogReader, QuarantinedFile, StorageError, parse_segment_name, quarantined_files,
};

use super::LogSelect;
use crate::Failure;

pub(super) fn check_data_dir(dir: &Path) -> Result<(), Failure> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Failure::usage(format!(
            "{} is not a directory: pass the engine's data directory (storage.dir) with --dir",
            dir.display()
        ))),
        Err(e) => Err(Failure::usage(format!(
            "cannot read the data directory {}: {e}; pass the engine's data directory \
             (storage.dir) with --dir",
            dir.display()
        ))),
    }
}

/// Opens the log `name` below `dir`; `None` when its directory does not exist.
pub(super) fn open_log(dir: &Path, name: &str) -> Result<Option<LogReader>, Failure> {
    let log_dir = dir.join(name);
    if !log_dir.is_dir() {
        return Ok(None);
    }
    LogReader::open(&log_dir)
        .map(Some)
        .map_err(|e| Failure::runtime(format!("cannot open the {name} log: {e}")))
}

/// Opens the logs `names`; a missing directory is an error when one log was named.
pub(super) fn open_logs(
    dir: &Path,
    names: &[&'static str],
) -> Result<Vec<(&'static str, LogReader)>, Failure> {
    check_data_dir(dir)?;
    let mut out = Vec::with_capacity(names.len());
    for &name in names {
        match open_log(dir, name)? {
            Some(r) => out.push((name, r)),
            None if names.len() == 1 => {
                return Err(Failure::usage(format!(
                    "{} does not exist: the engine has not written the {name} log in this data \
                     directory",
                    dir.join(name).display()
                )));
            }
            None => {}
        }
    }
    Ok(out)
}

/// A segment file as verify sees it.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) base: u64,
    pub(super) path: PathBuf,
    pub(super) len: u64,
}

/// The segments (ascending) and quarantined files of a log directory.
pub(super) fn list_files(dir: &Path) -> Result<(Vec<Segment>, Vec<QuarantinedFile>), Failure> {
    let fail = |e: io::Error| Failure::runtime(format!("cannot list {}: {e}", dir.display()));
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(fail)? {
        let entry = entry.map_err(fail)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = parse_segment_name(name) {
            let path = entry.path();
            // An unstatable segment is reported as unreadable below, by name.
            let len = entry.metadata().map_or(0, |m| m.len());
            segments.push(Segment { base, path, len });
        }
    }
    segments.sort_unstable_by_key(|s| s.base);
    let quarantined = quarantined_files(dir)
        .map_err(|e| Failure::runtime(format!("cannot list {}: {e}", dir.display())))?;
    Ok((segments, quarantined))
}

/// The directory of log `name` in `dir`, or `None` (said on stdout when `say`) when the
/// engine never wrote that log and all logs were asked for.
///
/// # Errors
/// A usage error when the one log asked for does not exist.
pub(super) fn selected_log_dir(
    dir: &Path,
    name: &str,
    select: LogSelect,
    say: bool,
) -> Result<Option<PathBuf>, Failure> {
    let log_dir = dir.join(name);
    if log_dir.is_dir() {
        return Ok(Some(log_dir));
    }
    if select != LogSelect::All {
        return Err(Failure::usage(format!(
            "{} does not exist: the engine has not written the {name} log in this data \
             directory",
            log_dir.display()
        )));
    }
    if say {
        println!("{name}: no directory {} (never written)", log_dir.display());
    }
    Ok(None)
}

/// `name: <storage error>` on stderr.
pub(super) fn report_damage(name: &str, e: &StorageError) {
    eprintln!("pinstream: {name} log: {e}");
}
