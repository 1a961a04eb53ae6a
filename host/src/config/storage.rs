//! `[storage]`: the logs on disk.

use std::path::PathBuf;

use serde::Deserialize;

/// When the log is synced to disk (`storage.durability`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilitySetting {
    /// Never explicitly: the kernel writes back when it likes.
    None,
    /// Group commit: every `interval_ms` or `interval_bytes`, whichever comes first.
    Interval,
    /// After every write.
    Always,
}

impl DurabilitySetting {
    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            DurabilitySetting::None => "none",
            DurabilitySetting::Interval => "interval",
            DurabilitySetting::Always => "always",
        }
    }
}

/// `[storage]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// The data directory.
    pub dir: PathBuf,
    /// When the log is synced.
    pub durability: DurabilitySetting,
    /// `interval` mode: sync at least this often while data is pending, milliseconds.
    pub interval_ms: u64,
    /// `interval` mode: or as soon as this many bytes are pending.
    pub interval_bytes: u64,
    /// A segment file is closed past this size.
    pub segment_bytes: u64,
    /// One index entry per this many log bytes.
    pub index_interval_bytes: u64,
    /// Bytes gathered before a write.
    pub write_buffer_bytes: u64,
    /// Oldest segments are removed beyond this total; 0 keeps everything.
    pub retention_bytes: u64,
    /// Segments older than this are removed; 0 keeps everything.
    pub retention_hours: u64,
    /// Permissions of the files the engine creates, in octal (`"0600"`); directories get the
    /// same plus `x` where `r` is set (`0700`). [`StorageSection::umask`] turns it into the
    /// process umask `pinstream run` sets.
    pub mode: String,
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./pinstream-data"),
            durability: DurabilitySetting::Interval,
            interval_ms: 1,
            interval_bytes: 1_048_576,
            segment_bytes: 134_217_728,
            index_interval_bytes: 4096,
            write_buffer_bytes: 1_048_576,
            retention_bytes: 0,
            retention_hours: 0,
            mode: "0600".into(),
        }
    }
}

impl StorageSection {
    /// `mode` as a number, if it is octal and gives the owner read and write (the engine
    /// must reopen its own files) and nobody execute.
    pub fn file_mode(&self) -> Option<u32> {
        let digits = self.mode.strip_prefix("0o").unwrap_or(&self.mode);
        let mode = u32::from_str_radix(digits, 8).ok()?;
        (mode & !0o666 == 0 && mode & 0o600 == 0o600).then_some(mode)
    }

    /// The umask that makes new files `mode` and new directories `mode` plus `x` where `r`
    /// is set (`0600` → `0o077`; `0640` → `0o027`).
    pub fn umask(&self) -> Option<u32> {
        let mode = self.file_mode()?;
        Some(0o777 & !(mode | ((mode & 0o444) >> 2)))
    }
}
