//! Free space on the file system of the data directory.
//!
//! The logs keep everything by default (`storage.retention_bytes = 0`), so any client can fill
//! the disk; the engine then stops cleanly, but an operator wants to see it coming. This
//! module feeds three places:
//!
//! - `/metrics`: `pinstream_storage_free_bytes`, read with `statvfs` at each scrape (on the
//!   admin endpoint's thread, never an engine thread).
//! - `pinstream run`'s status line: the free space and the time to full at the write rate of
//!   the last interval ([`DiskSpace::time_to_full`]).
//! - a warning at start-up ([`low_space_warning`]) when the logs have no size bound and the
//!   file system has under [`LOW_SPACE_BYTES`] free or under [`LOW_SPACE_PERCENT`] % of its size.
//!
//! "Free" is what an unprivileged process may still write (`f_bavail`): the blocks the file
//! system reserves for root do not count.
//!
//! ```
//! use std::time::Duration;
//! use pinstream_host::disk::DiskSpace;
//!
//! let space = DiskSpace::of(std::path::Path::new(".")).unwrap();
//! assert!(space.available <= space.total);
//! let half_full = DiskSpace { available: 1 << 30, total: 2 << 30 };
//! assert_eq!(half_full.time_to_full(1024.0 * 1024.0), Some(Duration::from_secs(1024)));
//! assert_eq!(half_full.time_to_full(0.0), None);
//! ```

use std::io;
use std::path::Path;
use std::time::Duration;

use crate::sys;

/// Below this much free space, an unbounded log is warned about at start-up: 4 GiB.
pub const LOW_SPACE_BYTES: u64 = 4 << 30;

/// Below this share of the file system free, an unbounded log is warned about at start-up.
pub const LOW_SPACE_PERCENT: u64 = 5;

/// Space on one file system, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskSpace {
    /// What pinstream may still write (`statvfs` `f_bavail × f_frsize`).
    pub available: u64,
    /// The file system's size (`f_blocks × f_frsize`).
    pub total: u64,
}

impl DiskSpace {
    /// The space of the file system that holds `path`, or of its nearest existing ancestor
    /// (a data directory that is not created yet).
    ///
    /// # Errors
    /// `statvfs` failed on every ancestor (e.g. permission denied).
    pub fn of(path: &Path) -> io::Result<Self> {
        let mut at = path;
        loop {
            match sys::fs::space(at) {
                Ok((available, total)) => return Ok(Self { available, total }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => match at.parent() {
                    Some(p) if !p.as_os_str().is_empty() => at = p,
                    _ => return sys::fs::space(Path::new(".")).map(Self::from),
                },
                Err(e) => return Err(e),
            }
        }
    }

    /// How long until the file system is full when written at `bytes_per_sec`; `None` when
    /// nothing is being written.
    pub fn time_to_full(&self, bytes_per_sec: f64) -> Option<Duration> {
        if bytes_per_sec.is_nan() || bytes_per_sec < 1.0 {
            return None;
        }
        Some(Duration::from_secs_f64(
            (self.available as f64 / bytes_per_sec).min(u64::MAX as f64 / 2.0),
        ))
    }

    /// Whether this is little room for a log that keeps everything: under
    /// [`LOW_SPACE_BYTES`] or under [`LOW_SPACE_PERCENT`] % of the file system.
    pub fn is_low(&self) -> bool {
        self.available < LOW_SPACE_BYTES
            || u128::from(self.available) * 100
                < u128::from(self.total) * u128::from(LOW_SPACE_PERCENT)
    }
}

impl From<(u64, u64)> for DiskSpace {
    fn from((available, total): (u64, u64)) -> Self {
        Self { available, total }
    }
}

/// The start-up warning about `dir`, if any: the logs have no size bound
/// (`retention_bytes == 0`) and its file system's space [`is_low`](DiskSpace::is_low).
/// `space` is `DiskSpace::of(dir)`; an age bound (`storage.retention_hours`) alone bounds no
/// size, so it does not silence the warning.
pub fn low_space_warning(dir: &Path, retention_bytes: u64, space: DiskSpace) -> Option<String> {
    if retention_bytes != 0 || !space.is_low() {
        return None;
    }
    Some(format!(
        "storage.dir {} is on a file system with {} free of {} and storage.retention_bytes = 0 \
         keeps every event: the engine stops when the disk is full (set storage.retention_bytes, \
         or free some space; the status line shows the time to full)",
        dir.display(),
        bytes(space.available),
        bytes(space.total)
    ))
}

/// `12.3 GiB`, `512 MiB`, `900 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if v < 10.0 {
        format!("{v:.1} {}", UNITS[unit])
    } else {
        format!("{v:.0} {}", UNITS[unit])
    }
}

/// `45 s`, `12 min`, `3.5 h`, `9 d`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 2.0 * 3600.0 {
        format!("{:.0} min", s / 60.0)
    } else if s < 48.0 * 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.0} d", s / 86400.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn the_warning_rule() {
        let dir = Path::new("/data");
        let space = |available, total| DiskSpace { available, total };
        // Little room and no size bound: warned, naming the key and the figures.
        let w = low_space_warning(dir, 0, space(3 * GIB, 100 * GIB)).unwrap();
        assert!(
            w.contains("storage.retention_bytes") && w.contains("3.0 GiB free of 100 GiB"),
            "{w}"
        );
        // Under 5 % of a big disk is little room too.
        assert!(low_space_warning(dir, 0, space(40 * GIB, 1000 * GIB)).is_some());
        // Enough on both counts, or a size bound: silent.
        assert!(low_space_warning(dir, 0, space(60 * GIB, 1000 * GIB)).is_none());
        assert!(low_space_warning(dir, 0, space(4 * GIB, 50 * GIB)).is_none());
        assert!(low_space_warning(dir, 1 << 20, space(GIB, 100 * GIB)).is_none());
    }

    #[test]
    fn time_to_full_and_the_texts() {
        let s = DiskSpace {
            available: 3600 * 1000,
            total: 1 << 40,
        };
        assert_eq!(s.time_to_full(1000.0), Some(Duration::from_secs(3600)));
        assert_eq!(s.time_to_full(0.5), None);
        assert_eq!(s.time_to_full(f64::NAN), None);
        assert_eq!(duration(Duration::from_secs(3600)), "60 min");
        assert_eq!(duration(Duration::from_secs(45)), "45 s");
        assert_eq!(duration(Duration::from_secs(5 * 3600)), "5.0 h");
        assert_eq!(duration(Duration::from_secs(10 * 86400)), "10 d");
        assert_eq!(bytes(900), "900 B");
        assert_eq!(bytes(5 * GIB / 2), "2.5 GiB");
        assert_eq!(bytes(512 << 20), "512 MiB");
    }

    #[test]
    fn the_space_of_a_directory_not_created_yet_is_its_parents() {
        let here = DiskSpace::of(Path::new(".")).unwrap();
        let missing = DiskSpace::of(Path::new("./no/such/dir/yet")).unwrap();
        assert_eq!(here.total, missing.total);
        assert!(here.available > 0 && here.available <= here.total);
    }
}
