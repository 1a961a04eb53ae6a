//! `pinstream log repair`: with the engine stopped, re-appends the intact records of
//! quarantined segments ([`repair_log`]).

use std::path::Path;

use pinstream_host::storage::{DataDirLock, StorageError, repair_log};

use super::RepairArgs;
use super::open::{check_data_dir, selected_log_dir};
use crate::Failure;

pub(super) fn run(dir: &Path, args: &RepairArgs) -> Result<(), Failure> {
    check_data_dir(dir)?;
    // A segment repair creates is the owner's only, as the engine's are by default.
    pinstream_host::storage::set_process_umask(0o077);
    let locked = |e: StorageError| match e {
        StorageError::Locked { .. } => Failure::start(format!(
            "{e}; `pinstream log repair` needs the engine stopped"
        )),
        other => Failure::runtime(format!("cannot lock {}: {other}", dir.display())),
    };
    // Held until the end of the repair; a dry run only checks, so it leaves no trace.
    let _lock = if args.dry_run {
        DataDirLock::check_free(dir).map_err(locked)?;
        None
    } else {
        Some(DataDirLock::acquire(dir).map_err(locked)?)
    };
    let mut recovered = 0usize;
    let mut more = false;
    for name in args.log.names() {
        let Some(log_dir) = selected_log_dir(dir, name, args.log, true)? else {
            continue;
        };
        let report = repair_log(&log_dir, args.dry_run)
            .map_err(|e| Failure::runtime(format!("repair of the {name} log failed: {e}")))?;
        if let Some(r) = &report.recovery {
            println!("{name}: opened to append: {r}");
            more |= !r.quarantined.is_empty();
        }
        if report.segments.is_empty() {
            println!("{name}: no quarantined segment");
        }
        for s in &report.segments {
            println!("{name}: {s}");
        }
        recovered += report.records_recovered();
    }
    if args.dry_run {
        println!("dry run: {recovered} record(s) would be recovered; nothing was changed");
    } else {
        println!("repair done: {recovered} record(s) recovered");
    }
    if more {
        println!(
            "recovery quarantined more segments when the logs were opened (above): run \
             `pinstream log repair` again for them"
        );
    }
    Ok(())
}
