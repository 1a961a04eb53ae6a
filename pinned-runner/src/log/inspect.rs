//! `pinstream log inspect`: prints records, one line each (text or JSON).

use std::io;
use std::path::Path;

use pinstream_host::storage::StorageError;

use super::InspectArgs;
use super::open::{open_logs, report_damage};
use super::render::{Out, emit, flush, format_record};
use crate::Failure;

pub(super) fn run(dir: &Path, args: &InspectArgs) -> Result<(), Failure> {
    let logs = open_logs(dir, &args.log.names())?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut problems = 0u64;
    'logs: for (name, mut reader) in logs {
        reader
            .seek(args.from)
            .map_err(|e| Failure::runtime(format!("cannot read the {name} log: {e}")))?;
        let mut printed = 0u64;
        while args.limit == 0 || printed < args.limit {
            match reader.next_record() {
                None => break,
                Some(Ok(rec)) => {
                    let (line, err) = format_record(name, &rec, args.json);
                    if let Some(e) = err {
                        problems += 1;
                        eprintln!(
                            "pinstream: {name} log: the record at offset {} passes its CRC but \
                             does not decode: {e}",
                            rec.offset
                        );
                    }
                    if let Out::Closed = emit(&mut out, &line)? {
                        break 'logs;
                    }
                    printed += 1;
                }
                Some(Err(e @ StorageError::Corrupt { .. })) => {
                    problems += 1;
                    report_damage(name, &e);
                }
                Some(Err(e)) => {
                    return Err(Failure::runtime(format!("cannot read the {name} log: {e}")));
                }
            }
        }
    }
    flush(&mut out)?;
    if problems > 0 {
        return Err(Failure::runtime(format!(
            "{problems} damaged or undecodable record(s) (above); `pinstream log verify` \
             reports every one with its file and position"
        )));
    }
    Ok(())
}
