//! The names of things on disk: the logs below the data directory and the files of a log
//! directory, defined once for the storage code, the engine and `pinstream log`.
//!
//! | name | what it is |
//! | --- | --- |
//! | [`LOCK_FILE`] | in the data directory: held by the one process that writes the logs |
//! | [`LOG_NAMES`] ([`LogId::name`]) | the log directories below the data directory |
//! | `{base:020}.log` ([`segment_name`]) | a segment, its records from offset `base` on |
//! | `{base:020}.index` ([`index_path`]) | the segment's sparse index |
//! | [`CHECKPOINT_FILE`] | the log's checkpoint |
//! | `{base:020}.log.quarantined[.N]` ([`quarantined_path`]) | a quarantined segment |
//! | `….repairing`, `….repaired` ([`with_state`]) | a quarantined segment being repaired, repaired |
//! | `{base:020}.log.prefix` ([`prefix_path`]) | the valid prefix of a segment being quarantined |
//!
//! ```
//! use pinstream_host::storage::layout::{self, QuarantineState};
//! let name = layout::segment_name(42);
//! assert_eq!(name, "00000000000000000042.log");
//! assert_eq!(layout::parse_segment_name(&name), Some(42));
//! let q = format!("{name}.quarantined.1.repaired");
//! assert_eq!(layout::parse_quarantined_name(&q), Some((42, QuarantineState::Repaired)));
//! ```

use std::path::{Path, PathBuf};

use pinstream_core::event::Lane;

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "LOCK";

/// The names of the logs below the data directory, by lane index, then the dead letters,
/// then the batch lane's aggregates ([`LogId::name`]).
pub const LOG_NAMES: [&str; 5] = [
    "realtime",
    "transactional",
    "batch",
    "dead-letter",
    "aggregates",
];

/// One of the logs below the data directory: one per lane (its events), then the dead
/// letters, then the batch lane's aggregates.
///
/// Each log holds one kind of thing, so a consumer subscribing to one log gets one kind of
/// record. The order (and so [`index`](Self::index)) is fixed: the consumer protocol names a
/// log by it (realtime 0, transactional 1, batch 2, dead-letter 3, aggregates 4); a new log
/// comes last.
///
/// ```
/// use pinstream_core::event::Lane;
/// use pinstream_host::storage::LogId;
/// assert_eq!(LogId::from(Lane::Transactional), LogId::Transactional);
/// assert_eq!(LogId::DeadLetter.name(), "dead-letter");
/// assert_eq!(LogId::Aggregates.name(), "aggregates");
/// assert_eq!(LogId::ALL.map(LogId::index), [0, 1, 2, 3, 4]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogId {
    /// The realtime lane's log.
    Realtime,
    /// The transactional lane's log.
    Transactional,
    /// The batch lane's log: its events (none under `pipeline.batch_store =
    /// "aggregates"`). Data directories written before the aggregates had their own log
    /// also hold aggregates here; records say their kind, so they still read.
    Batch,
    /// The dead-letter log.
    DeadLetter,
    /// The batch lane's aggregates, one record per topic and window.
    Aggregates,
}

impl LogId {
    /// Every log, in [`LOG_NAMES`] order (the order of [`index`](Self::index)).
    pub const ALL: [LogId; 5] = [
        LogId::Realtime,
        LogId::Transactional,
        LogId::Batch,
        LogId::DeadLetter,
        LogId::Aggregates,
    ];

    /// How many logs there are.
    pub const COUNT: usize = Self::ALL.len();

    /// Its position in [`ALL`](Self::ALL) and [`LOG_NAMES`]; a lane's log has the lane's
    /// index.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Its directory's name below the data directory.
    pub const fn name(self) -> &'static str {
        LOG_NAMES[self.index()]
    }
}

impl From<Lane> for LogId {
    fn from(lane: Lane) -> Self {
        match lane {
            Lane::Realtime => LogId::Realtime,
            Lane::Transactional => LogId::Transactional,
            Lane::Batch => LogId::Batch,
        }
    }
}

/// The checkpoint's file name inside a log directory.
pub const CHECKPOINT_FILE: &str = "checkpoint";

/// The suffix of a segment file, after its 20-digit base offset.
pub const SEGMENT_SUFFIX: &str = ".log";
/// The suffix of a segment's index file, after its 20-digit base offset.
pub const INDEX_SUFFIX: &str = ".index";
/// Appended to a segment's name when recovery sets it aside (then `.N` when taken).
pub const QUARANTINED_SUFFIX: &str = ".quarantined";
/// Appended to a quarantined file's name while its records are being re-appended.
pub const REPAIRING_SUFFIX: &str = ".repairing";
/// Appended to a quarantined file's name once its records were re-appended.
pub const REPAIRED_SUFFIX: &str = ".repaired";
/// Appended to a segment's name for the copy of its valid prefix during a quarantine.
pub const PREFIX_SUFFIX: &str = ".prefix";

/// Digits of a base offset in a file name.
const BASE_DIGITS: usize = 20;

/// `{base:020}.log`
pub fn segment_name(base: u64) -> String {
    format!("{base:020}{SEGMENT_SUFFIX}")
}

/// `dir/{base:020}.log`
pub fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(segment_name(base))
}

/// `dir/{base:020}.index`
pub fn index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}{INDEX_SUFFIX}"))
}

/// `dir/{base:020}.log.prefix`
pub fn prefix_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{}{PREFIX_SUFFIX}", segment_name(base)))
}

/// `dir/{base:020}.log.quarantined`, then `.quarantined.N` for `n` > 0 (a segment
/// quarantined again after an earlier file took the first name).
pub fn quarantined_path(dir: &Path, base: u64, n: u32) -> PathBuf {
    let name = segment_name(base);
    if n == 0 {
        dir.join(format!("{name}{QUARANTINED_SUFFIX}"))
    } else {
        dir.join(format!("{name}{QUARANTINED_SUFFIX}.{n}"))
    }
}

/// The base offset of a segment file name (`{20 digits}.log`), if it is one.
///
/// ```
/// use pinstream_host::storage::parse_segment_name;
/// assert_eq!(parse_segment_name("00000000000000000042.log"), Some(42));
/// assert_eq!(parse_segment_name("00000000000000000042.log.quarantined"), None);
/// assert_eq!(parse_segment_name("42.log"), None);
/// ```
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != BASE_DIGITS || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The base offset of a prefix copy's name (`{20 digits}.log.prefix`), if it is one.
pub fn parse_prefix_name(name: &str) -> Option<u64> {
    name.strip_suffix(PREFIX_SUFFIX)
        .and_then(parse_segment_name)
}

/// Where a quarantined file stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuarantineState {
    /// `….log.quarantined[.N]`: set aside by recovery, not repaired.
    Quarantined,
    /// `….repairing`: a repair started appending its records and did not finish.
    Repairing,
    /// `….repaired`: its intact records were re-appended to the log.
    Repaired,
}

/// The name of the quarantined file `quarantined` once it is in `state`: `.repairing` or
/// `.repaired` appended (unchanged for [`QuarantineState::Quarantined`]).
pub fn with_state(quarantined: &Path, state: QuarantineState) -> PathBuf {
    let suffix = match state {
        QuarantineState::Quarantined => "",
        QuarantineState::Repairing => REPAIRING_SUFFIX,
        QuarantineState::Repaired => REPAIRED_SUFFIX,
    };
    let mut s = quarantined.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The quarantined file a name stands for: `(base, state)`.
pub fn parse_quarantined_name(name: &str) -> Option<(u64, QuarantineState)> {
    let (rest, state) = if let Some(r) = name.strip_suffix(REPAIRED_SUFFIX) {
        (r, QuarantineState::Repaired)
    } else if let Some(r) = name.strip_suffix(REPAIRING_SUFFIX) {
        (r, QuarantineState::Repairing)
    } else {
        (name, QuarantineState::Quarantined)
    };
    let (segment, tail) = rest.split_once(QUARANTINED_SUFFIX)?;
    let n = tail.strip_prefix('.').unwrap_or(tail);
    if tail.is_empty() || (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
        return parse_segment_name(segment).map(|base| (base, state));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        let p = segment_path(Path::new("/x"), 42);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "00000000000000000042.log");
        assert_eq!(parse_segment_name(name), Some(42));
        assert_eq!(parse_segment_name("42.log"), None);
        assert_eq!(
            parse_segment_name("00000000000000000042.log.quarantined"),
            None
        );
        assert_eq!(parse_segment_name("0000000000000000004x.log"), None);
        assert_eq!(
            index_path(Path::new("/x"), 42),
            Path::new("/x/00000000000000000042.index")
        );
        let prefix = prefix_path(Path::new("/x"), 42);
        assert_eq!(prefix, Path::new("/x/00000000000000000042.log.prefix"));
        let prefix = prefix.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_prefix_name(prefix), Some(42));
    }

    #[test]
    fn quarantined_names() {
        let q = QuarantineState::Quarantined;
        let base = "00000000000000000042.log";
        assert_eq!(
            parse_quarantined_name(&format!("{base}.quarantined")),
            Some((42, q))
        );
        assert_eq!(
            parse_quarantined_name(&format!("{base}.quarantined.3")),
            Some((42, q))
        );
        assert_eq!(
            parse_quarantined_name(&format!("{base}.quarantined.3.repaired")),
            Some((42, QuarantineState::Repaired))
        );
        assert_eq!(
            parse_quarantined_name(&format!("{base}.quarantined.repairing")),
            Some((42, QuarantineState::Repairing))
        );
        for bad in [
            base.to_owned(),
            format!("{base}.prefix"),
            format!("{base}.quarantinedx"),
            format!("{base}.quarantined.x"),
            "42.log.quarantined".to_owned(),
        ] {
            assert_eq!(parse_quarantined_name(&bad), None, "{bad}");
        }
    }

    #[test]
    fn quarantined_paths_and_states() {
        let dir = Path::new("/x");
        let q0 = quarantined_path(dir, 42, 0);
        assert_eq!(q0, dir.join(format!("{}.quarantined", segment_name(42))));
        let q2 = quarantined_path(dir, 42, 2);
        assert_eq!(q2, dir.join(format!("{}.quarantined.2", segment_name(42))));
        for state in [
            QuarantineState::Quarantined,
            QuarantineState::Repairing,
            QuarantineState::Repaired,
        ] {
            let p = with_state(&q2, state);
            let name = p.file_name().unwrap().to_str().unwrap();
            assert_eq!(parse_quarantined_name(name), Some((42, state)));
        }
    }
}
