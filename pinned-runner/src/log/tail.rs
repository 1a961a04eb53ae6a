//! `pinstream log tail`: follows logs while the engine writes them, until Ctrl-C.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use pinstream_host::storage::{LogReader, StorageError};

use super::TailArgs;
use super::open::{list_files, report_damage};
use super::render::{Out, emit, flush, format_record};
use crate::Failure;

/// How often tail looks for new records.
const TAIL_POLL: Duration = Duration::from_millis(100);

/// One followed log.
struct Followed {
    name: &'static str,
    dir: PathBuf,
    reader: Option<LogReader>,
}

impl Followed {
    /// Opens the reader once the directory exists; with `skip`, positions it after the
    /// records stored so far.
    fn open(&mut self, skip: bool) -> Result<(), Failure> {
        if self.reader.is_some() || !self.dir.is_dir() {
            return Ok(());
        }
        let fail =
            |e: StorageError| Failure::runtime(format!("cannot open the {} log: {e}", self.name));
        let mut reader = LogReader::open(&self.dir).map_err(fail)?;
        if skip {
            let (segments, _) = list_files(&self.dir)?;
            if let Some(last) = segments.last() {
                reader.seek(last.base).map_err(fail)?;
            }
            while let Some(r) = reader.next_record() {
                if let Err(e @ StorageError::Corrupt { .. }) = &r {
                    report_damage(self.name, e);
                } else {
                    r.map_err(fail)?;
                }
            }
        }
        self.reader = Some(reader);
        Ok(())
    }
}

pub(super) fn run(dir: &Path, args: &TailArgs) -> Result<(), Failure> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|e| Failure::runtime(format!("cannot handle signal {signal}: {e}")))?;
    }
    let mut logs: Vec<Followed> = args
        .log
        .names()
        .into_iter()
        .map(|name| Followed {
            name,
            dir: dir.join(name),
            reader: None,
        })
        .collect();
    for f in &mut logs {
        f.open(args.from_end)?;
    }
    let waiting: Vec<&str> = logs
        .iter()
        .filter(|f| f.reader.is_none())
        .map(|f| f.name)
        .collect();
    let names: Vec<&str> = logs.iter().map(|f| f.name).collect();
    eprintln!(
        "pinstream: following {} in {} from {}; Ctrl-C stops",
        names.join(", "),
        dir.display(),
        if args.from_end {
            "the end"
        } else {
            "the start"
        }
    );
    if !waiting.is_empty() {
        eprintln!(
            "pinstream: waiting for {} to appear (not written yet)",
            waiting.join(", ")
        );
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    while !stop.load(Ordering::Relaxed) {
        for f in &mut logs {
            // A log that appears later is new: every record in it is printed.
            f.open(false)?;
            let Some(reader) = f.reader.as_mut() else {
                continue;
            };
            while let Some(r) = reader.next_record() {
                match r {
                    Ok(rec) => {
                        let (line, _) = format_record(f.name, &rec, args.json);
                        if let Out::Closed = emit(&mut out, &line)? {
                            return Ok(());
                        }
                    }
                    Err(e @ StorageError::Corrupt { .. }) => report_damage(f.name, &e),
                    Err(e) => {
                        return Err(Failure::runtime(format!(
                            "cannot read the {} log: {e}",
                            f.name
                        )));
                    }
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        }
        if let Out::Closed = flush(&mut out)? {
            return Ok(());
        }
        thread::sleep(TAIL_POLL);
    }
    Ok(())
}
