//! `pinstream log verify`: reads every record of every segment and reports every damaged
//! place (as text or JSON), changing nothing.

use std::ops::Range;
use std::path::{Path, PathBuf};

use pinstream_host::storage::record;
use pinstream_host::storage::{
    MAX_RECORD_LIMIT, QuarantineState, QuarantinedFile, RECORD_HEADER_LEN, check_segment,
};
use serde::Serialize;

use super::VerifyArgs;
use super::open::{Segment, check_data_dir, list_files, selected_log_dir};
use super::render::to_json_line;
use crate::Failure;

/// One damaged place verify found.
#[derive(Debug)]
struct Problem {
    /// `damaged`, `torn_tail`, `undecodable`, `missing` or `unreadable`.
    kind: &'static str,
    file: PathBuf,
    /// The bytes of `file` concerned.
    bytes: Option<Range<u64>>,
    /// The offsets concerned (lost, missing, or the one undecodable record).
    offsets: Option<Range<u64>>,
    why: String,
}

impl Problem {
    fn text(&self) -> String {
        let file = self.file.display();
        let offsets = |o: &Range<u64>| match o.end - o.start {
            0 => String::new(),
            1 => format!(", offset {} lost", o.start),
            n => format!(", offsets {}..={} ({n}) lost", o.start, o.end - 1),
        };
        match (self.kind, &self.bytes, &self.offsets) {
            ("torn_tail", Some(b), _) => format!(
                "{file} at byte {}: {} byte(s) after the last whole record: an incomplete \
                 record (a torn tail: `pinstream run` truncates it when it starts, or a record \
                 the running engine is writing)",
                b.start,
                b.end - b.start
            ),
            ("missing", _, Some(o)) => format!(
                "{file}: MISSING offsets {}..={} ({} record(s)): {}",
                o.start,
                o.end - 1,
                o.end - o.start,
                self.why
            ),
            ("undecodable", Some(b), Some(o)) => format!(
                "{file} at byte {}: the record at offset {} passes its CRC but does not \
                 decode: {}",
                b.start, o.start, self.why
            ),
            (_, Some(b), o) => format!(
                "{file} at byte {}: {} ({} byte(s) up to byte {}{})",
                b.start,
                self.why,
                b.end - b.start,
                b.end,
                o.as_ref().map(offsets).unwrap_or_default()
            ),
            (_, None, _) => format!("{file}: {}", self.why),
        }
    }
}

/// A [`Problem`] in `verify --json`.
#[derive(Serialize)]
struct ProblemJson<'a> {
    kind: &'static str,
    file: String,
    position: Option<u64>,
    end: Option<u64>,
    first_offset: Option<u64>,
    end_offset: Option<u64>,
    why: &'a str,
}

impl<'a> ProblemJson<'a> {
    fn new(p: &'a Problem) -> Self {
        Self {
            kind: p.kind,
            file: p.file.display().to_string(),
            position: p.bytes.as_ref().map(|b| b.start),
            end: p.bytes.as_ref().map(|b| b.end),
            first_offset: p.offsets.as_ref().map(|o| o.start),
            end_offset: p.offsets.as_ref().map(|o| o.end),
            why: &p.why,
        }
    }
}

/// What verify found in one log.
#[derive(Debug, Default)]
struct LogCheck {
    segments: usize,
    records: u64,
    bytes: u64,
    first: Option<u64>,
    last: Option<u64>,
    quarantined: Vec<QuarantinedFile>,
    problems: Vec<Problem>,
}

/// Reads every segment of the log in `dir` with [`check_segment`]: every damaged region of
/// every segment (it resynchronises at the next CRC-valid record), offsets missing between
/// segments that no quarantined file accounts for, unreadable segments by name.
fn verify_log(dir: &Path) -> Result<LogCheck, Failure> {
    let (segments, quarantined) = list_files(dir)?;
    let q_bases: Vec<u64> = quarantined.iter().map(|q| q.base).collect();
    let accounted = |from: u64, to: u64| q_bases.iter().any(|&q| from <= q && q < to);
    let mut check = LogCheck {
        quarantined,
        segments: segments.len(),
        bytes: segments.iter().map(|s| s.len).sum(),
        ..LogCheck::default()
    };
    let last = segments.len().saturating_sub(1);
    // The segment before, its base and the offset after its last record.
    let mut prev: Option<(&Segment, u64)> = None;
    for (i, seg) in segments.iter().enumerate() {
        if let Some((p, end)) = prev
            && end < seg.base
            && !accounted(p.base, seg.base)
        {
            check.problems.push(Problem {
                kind: "missing",
                file: p.path.clone(),
                bytes: None,
                offsets: Some(end..seg.base),
                why: format!(
                    "not in it nor in the next segment, {}, and no quarantined file \
                         accounts for them (a segment deleted, emptied or cut?)",
                    seg.path.display()
                ),
            });
        }
        let mut undecodable = Vec::new();
        let result = check_segment(
            &seg.path,
            seg.base,
            MAX_RECORD_LIMIT,
            |pos, offset, kind, body| {
                if let Some(Err(e)) = body.map(|b| record::decode(kind, b)) {
                    undecodable.push(Problem {
                        kind: "undecodable",
                        file: seg.path.clone(),
                        bytes: Some(
                            pos..pos + (RECORD_HEADER_LEN + body.map_or(0, <[u8]>::len)) as u64,
                        ),
                        offsets: Some(offset..offset + 1),
                        why: e.to_string(),
                    });
                }
            },
        );
        let c = match result {
            Ok(c) => c,
            Err(e) => {
                check.problems.push(Problem {
                    kind: "unreadable",
                    file: seg.path.clone(),
                    bytes: None,
                    offsets: None,
                    why: format!("cannot be read: {e}"),
                });
                prev = None;
                continue;
            }
        };
        check.records += c.records;
        if check.first.is_none() {
            check.first = c.first_offset;
        }
        check.last = c.last_offset.or(check.last);
        check.problems.extend(undecodable);
        for d in &c.damage {
            let torn = i == last && d.at_end && d.why == "record runs past the end of the file";
            check.problems.push(Problem {
                kind: if torn { "torn_tail" } else { "damaged" },
                file: seg.path.clone(),
                bytes: Some(d.bytes.clone()),
                offsets: (!d.offsets.is_empty()).then(|| d.offsets.clone()),
                why: d.why.to_owned(),
            });
        }
        prev = Some((seg, c.next_offset));
    }
    Ok(check)
}

pub(super) fn run(dir: &Path, args: &VerifyArgs) -> Result<(), Failure> {
    check_data_dir(dir)?;
    let mut problems = Vec::new();
    for name in args.log.names() {
        let Some(log_dir) = selected_log_dir(dir, name, args.log, !args.json)? else {
            if args.json {
                let line = NeverWrittenJson {
                    log: name,
                    dir: dir.join(name).display().to_string(),
                    status: "never written",
                };
                println!("{}", to_json_line(&line));
            }
            continue;
        };
        let c = verify_log(&log_dir)?;
        let repaired = c
            .quarantined
            .iter()
            .filter(|q| q.state == QuarantineState::Repaired)
            .count();
        if args.json {
            println!("{}", verify_json(name, &log_dir, &c, repaired));
        } else {
            verify_text(name, &c, repaired);
        }
        problems.extend(c.problems.iter().map(|p| format!("{name}: {}", p.text())));
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Failure::runtime(format!(
        "log verify found {} damaged place(s), first: {} (nothing was changed; `pinstream run` \
         truncates a torn tail and quarantines a damaged segment when it starts)",
        problems.len(),
        problems[0]
    )))
}

fn quarantine_text(state: QuarantineState) -> &'static str {
    match state {
        QuarantineState::Quarantined => {
            "quarantined by an earlier recovery (kept, not read; `pinstream log repair` recovers \
             its intact records)"
        }
        QuarantineState::Repairing => {
            "quarantined, its repair was interrupted (kept, not read; see `pinstream log repair`)"
        }
        QuarantineState::Repaired => {
            "quarantined, its intact records re-appended by `pinstream log repair` (kept, not \
             read)"
        }
    }
}

fn verify_text(name: &str, c: &LogCheck, repaired: usize) {
    let offsets = match (c.first, c.last) {
        (Some(f), Some(l)) => format!("offsets {f}..={l}"),
        _ => "no records".to_owned(),
    };
    let verdict = if c.problems.is_empty() {
        "clean".to_owned()
    } else {
        format!("DAMAGED ({} problem(s))", c.problems.len())
    };
    let also = if repaired > 0 {
        format!(" ({repaired} repaired)")
    } else {
        String::new()
    };
    println!(
        "{name}: {} segment(s), {} record(s), {} byte(s), {offsets}, {} quarantined \
         segment(s){also}: {verdict}",
        c.segments,
        c.records,
        c.bytes,
        c.quarantined.len() - repaired
    );
    for q in &c.quarantined {
        println!("  {}: {}", quarantine_text(q.state), q.path.display());
    }
    for p in &c.problems {
        println!("  DAMAGED {}", p.text());
    }
}

/// `verify --json` for a log directory that does not exist.
#[derive(Serialize)]
struct NeverWrittenJson<'a> {
    log: &'a str,
    dir: String,
    status: &'static str,
}

/// A quarantined file in `verify --json`.
#[derive(Serialize)]
struct QuarantinedJson {
    file: String,
    base: u64,
    state: &'static str,
}

/// `verify --json` for one log: the counts, the quarantined files and every problem.
#[derive(Serialize)]
struct LogCheckJson<'a> {
    log: &'a str,
    dir: String,
    status: &'static str,
    segments: usize,
    records: u64,
    bytes: u64,
    first_offset: Option<u64>,
    last_offset: Option<u64>,
    repaired: usize,
    quarantined: Vec<QuarantinedJson>,
    problems: Vec<ProblemJson<'a>>,
}

/// One JSON object per log: the counts, the quarantined files and every problem.
fn verify_json(name: &str, dir: &Path, c: &LogCheck, repaired: usize) -> String {
    let quarantined = c
        .quarantined
        .iter()
        .map(|q| QuarantinedJson {
            file: q.path.display().to_string(),
            base: q.base,
            state: match q.state {
                QuarantineState::Quarantined => "quarantined",
                QuarantineState::Repairing => "repairing",
                QuarantineState::Repaired => "repaired",
            },
        })
        .collect();
    let line = LogCheckJson {
        log: name,
        dir: dir.display().to_string(),
        status: if c.problems.is_empty() {
            "clean"
        } else {
            "damaged"
        },
        segments: c.segments,
        records: c.records,
        bytes: c.bytes,
        first_offset: c.first,
        last_offset: c.last,
        repaired,
        quarantined,
        problems: c.problems.iter().map(ProblemJson::new).collect(),
    };
    to_json_line(&line)
}
