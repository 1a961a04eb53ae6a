//! Named consumers' committed positions, kept durably by the engine ([`Positions`]).
//!
//! One file per log and name: `<storage.dir>/consumers/<log name>/<consumer name>`, 12
//! bytes: the offset (u64, little-endian) and the CRC32C of those 8 bytes (u32). A commit
//! writes `<name>+tmp` (`+` is never in a name), fsyncs it, renames it over the file and
//! fsyncs the directory: a crash leaves the old position or the new one, never a mix. A file
//! whose length or CRC is wrong (a torn write the file system did not protect, a bit flip)
//! is reported and treated as no position: the consumer starts where its SUBSCRIBE says,
//! it never resumes at a made-up offset. Files are created through the storage code's
//! `O_NOFOLLOW` options, with the mode `storage.mode` gives (the process's umask).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use pinstream_core::wire::{crc32c, valid_consumer_name};

use crate::storage::files;
use crate::storage::layout::LogId;

/// The directory below the data directory that holds the positions.
pub const POSITIONS_DIR: &str = "consumers";
/// Bytes of a position file.
const FILE_LEN: usize = 12;
/// Appended to a name for the file being written.
const TMP_SUFFIX: &str = "+tmp";

/// The positions of every named consumer of every log, in memory and on disk.
#[derive(Debug)]
pub struct Positions {
    dir: PathBuf,
    /// `(log index, name)` → committed offset.
    map: HashMap<(usize, String), u64>,
    max_named: usize,
}

/// The bytes of a position file for `offset`.
fn encode(offset: u64) -> [u8; FILE_LEN] {
    let mut b = [0u8; FILE_LEN];
    b[..8].copy_from_slice(&offset.to_le_bytes());
    let crc = crc32c(&b[..8]);
    b[8..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The offset a position file's bytes hold, if they are whole and intact.
fn decode(bytes: &[u8]) -> Option<u64> {
    let b: &[u8; FILE_LEN] = bytes.try_into().ok()?;
    let (off, crc) = b.split_at(8);
    let crc = u32::from_le_bytes(crc.try_into().ok()?);
    (crc32c(off) == crc).then(|| u64::from_le_bytes(off.try_into().unwrap_or_default()))
}

impl Positions {
    /// Loads the positions below `data_dir`, at most `max_named` of them. Returns them and
    /// a warning per file that could not be used (unreadable, torn, corrupt, over the limit).
    ///
    /// # Errors
    /// A log's positions directory exists but cannot be listed.
    pub fn load(data_dir: &Path, max_named: usize) -> io::Result<(Self, Vec<String>)> {
        let dir = data_dir.join(POSITIONS_DIR);
        let mut map = HashMap::new();
        let mut warnings = Vec::new();
        for log in LogId::ALL {
            let ldir = dir.join(log.name());
            let entries = match fs::read_dir(&ldir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let mut names: Vec<String> = Vec::new();
            for entry in entries {
                let name = entry?.file_name();
                let Some(name) = name.to_str() else { continue };
                if valid_consumer_name(name.as_bytes()) {
                    names.push(name.to_owned());
                }
            }
            names.sort();
            for name in names {
                let path = ldir.join(&name);
                match files::read(&path).map(|b| decode(&b)) {
                    Ok(Some(_)) if map.len() >= max_named => warnings.push(format!(
                        "consumer position {} ignored: consumers.max_named = {max_named} names \
                         are loaded already",
                        path.display()
                    )),
                    Ok(Some(offset)) => {
                        map.insert((log.index(), name), offset);
                    }
                    Ok(None) => warnings.push(format!(
                        "consumer position {} is torn or corrupt (length or CRC32C wrong): \
                         ignored, the consumer starts as if it had none",
                        path.display()
                    )),
                    Err(e) => warnings.push(format!(
                        "consumer position {} cannot be read ({e}): ignored",
                        path.display()
                    )),
                }
            }
        }
        Ok((
            Self {
                dir,
                map,
                max_named,
            },
            warnings,
        ))
    }

    /// The committed position of `name` on `log`.
    pub fn get(&self, log: LogId, name: &str) -> Option<u64> {
        self.map.get(&(log.index(), name.to_owned())).copied()
    }

    /// Whether `name` has a place: it is known on `log` already, or there is room for one
    /// more name.
    pub fn has_room_for(&self, log: LogId, name: &str) -> bool {
        self.map.len() < self.max_named || self.get(log, name).is_some()
    }

    /// Every known position: `(log, name, offset)`.
    pub fn iter(&self) -> impl Iterator<Item = (LogId, &str, u64)> {
        self.map
            .iter()
            .filter_map(|((l, n), &o)| Some((*LogId::ALL.get(*l)?, n.as_str(), o)))
    }

    /// Stores `offset` as `name`'s position on `log`, durably, then remembers it.
    ///
    /// # Errors
    /// As `positions::store`: the position is then not stored (the old one stays, on disk and here).
    pub fn commit(&mut self, log: LogId, name: &str, offset: u64) -> io::Result<()> {
        store(&self.dir, log, name, offset)?;
        self.remember(log, name, offset);
        Ok(())
    }

    /// Remembers a position `positions::store` made durable (on the commits helper thread).
    pub fn remember(&mut self, log: LogId, name: &str, offset: u64) {
        self.map.insert((log.index(), name.to_owned()), offset);
    }

    /// The directory of the positions (`<storage.dir>/consumers`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Writes `offset` as `name`'s position on `log` below `dir` (the positions directory),
/// durably: a temporary file, fsynced, renamed over the old one, the directory fsynced.
///
/// # Errors
/// A name that is not valid (the caller checks it first), or a file-system error: the old
/// position stays.
pub fn store(dir: &Path, log: LogId, name: &str, offset: u64) -> io::Result<()> {
    if !valid_consumer_name(name.as_bytes()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a consumer name",
        ));
    }
    let ldir = dir.join(log.name());
    if !ldir.is_dir() {
        fs::create_dir_all(&ldir)?;
        // The new directories' entries, up to the data directory.
        fs::File::open(dir)?.sync_all()?;
        if let Some(data_dir) = dir.parent() {
            fs::File::open(data_dir)?.sync_all()?;
        }
    }
    let tmp = ldir.join(format!("{name}{TMP_SUFFIX}"));
    let mut f = files::create(&tmp)?;
    f.write_all(&encode(offset))?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, ldir.join(name))?;
    fs::File::open(&ldir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("pinstream-positions-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trip_survives_a_reload() {
        let d = temp("rt");
        let (mut p, w) = Positions::load(&d, 8).unwrap();
        assert!(w.is_empty());
        p.commit(LogId::Transactional, "billing", 1234).unwrap();
        p.commit(LogId::Transactional, "billing", 99).unwrap(); // backwards is allowed
        p.commit(LogId::DeadLetter, "billing", 7).unwrap();
        let (p2, w) = Positions::load(&d, 8).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(p2.get(LogId::Transactional, "billing"), Some(99));
        assert_eq!(p2.get(LogId::DeadLetter, "billing"), Some(7));
        assert_eq!(p2.get(LogId::Realtime, "billing"), None);
        assert!(
            !d.join(POSITIONS_DIR)
                .join("transactional")
                .join("billing+tmp")
                .exists()
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_corrupt_or_torn_file_is_no_position() {
        let d = temp("bad");
        let (mut p, _) = Positions::load(&d, 8).unwrap();
        p.commit(LogId::Realtime, "a", 5).unwrap();
        p.commit(LogId::Realtime, "b", 6).unwrap();
        let ldir = d.join(POSITIONS_DIR).join("realtime");
        let mut bytes = fs::read(ldir.join("a")).unwrap();
        bytes[0] ^= 1;
        fs::write(ldir.join("a"), &bytes).unwrap();
        fs::write(ldir.join("b"), &bytes[..5]).unwrap();
        let (p2, w) = Positions::load(&d, 8).unwrap();
        assert_eq!(p2.get(LogId::Realtime, "a"), None);
        assert_eq!(p2.get(LogId::Realtime, "b"), None);
        assert_eq!(w.len(), 2, "{w:?}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn names_past_the_limit_are_refused() {
        let d = temp("limit");
        let (mut p, _) = Positions::load(&d, 1).unwrap();
        assert!(p.has_room_for(LogId::Batch, "x"));
        p.commit(LogId::Batch, "x", 1).unwrap();
        assert!(p.has_room_for(LogId::Batch, "x"));
        assert!(!p.has_room_for(LogId::Batch, "y"));
        fs::remove_dir_all(&d).unwrap();
    }
}
