//! The engine's stored records: the framing every log file uses ([`RecordView`], [`seal`])
//! and the bodies of each kind ([`encode_event`], [`decode`], …).
//!
//! A stored record is a 20-byte header and a body (all little-endian):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | `body_len` |
//! | 4 | 4 | CRC32C of bytes 0–3, then of bytes 8 to the end (everything but itself) |
//! | 8 | 8 | `offset`: the record's place in its log |
//! | 16 | 1 | `kind` (`KIND_EVENT`, …) |
//! | 17 | 1 | format version ([`FORMAT_VERSION`]) |
//! | 18 | 2 | reserved, 0 |
//! | 20 | `body_len` | body |
//!
//! The host's logs write records in this framing, and consumers (`docs/PROTOCOL.md` §12)
//! receive them as they lie in the files: DATA frames carry them unchanged. Both ends check a
//! record with [`RecordView::new_checked`].
//!
//! ```
//! use pinstream_core::record::{self, RecordView, RECORD_HEADER_LEN};
//!
//! let mut buf = [0u8; RECORD_HEADER_LEN + 5];
//! buf[RECORD_HEADER_LEN..].copy_from_slice(b"hello");
//! record::seal(&mut buf, 42, record::KIND_EVENT);
//! let (rec, len) = RecordView::new_checked(&buf, 1 << 20)?;
//! assert_eq!((rec.offset(), rec.kind(), rec.body(), len), (42, 1, &b"hello"[..], 25));
//! buf[22] ^= 1;
//! assert!(RecordView::new_checked(&buf, 1 << 20).is_err());
//! # Ok::<(), record::FramingError>(())
//! ```

// The bodies name the pipeline's types (dead letters, aggregates, stored events), which need
// compare-and-swap; the framing does not, and the wire codec's DATA frames use it everywhere.
#[cfg(pinstream_cas)]
mod body;

use core::fmt;

with_cas! {
    pub use self::body::*;
}
use crate::wire::{crc32c, crc32c_update};

/// Bytes of framing before each record body.
pub const RECORD_HEADER_LEN: usize = 20;
/// The framing version in byte 17 of each record.
pub const FORMAT_VERSION: u8 = 1;

/// The CRC32C a record's header carries: of bytes 0–3, then of bytes 8 to the end. `record`
/// is the whole record, header and body (at least [`RECORD_HEADER_LEN`] bytes; shorter input
/// is covered as far as it goes).
#[inline]
pub fn record_crc(record: &[u8]) -> u32 {
    let len = record.get(0..4).unwrap_or(&[]);
    crc32c_update(crc32c(len), record.get(8..).unwrap_or(&[]))
}

/// Fills in the header of `record` (header + body, body already in place) for `offset` and
/// `kind`, the CRC last. Does nothing to a buffer shorter than a header.
pub fn seal(record: &mut [u8], offset: u64, kind: u8) {
    if record.len() < RECORD_HEADER_LEN {
        return;
    }
    let body_len = u32::try_from(record.len() - RECORD_HEADER_LEN).unwrap_or(u32::MAX);
    record[0..4].copy_from_slice(&body_len.to_le_bytes());
    record[8..16].copy_from_slice(&offset.to_le_bytes());
    record[16] = kind;
    record[17] = FORMAT_VERSION;
    record[18] = 0;
    record[19] = 0;
    let crc = record_crc(record);
    record[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Why bytes are not a whole, intact stored record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FramingError {
    /// Fewer bytes than the header, or than the header's `body_len` says.
    Truncated,
    /// `body_len` above the reader's bound.
    TooLong,
    /// The format version byte is not [`FORMAT_VERSION`], or the reserved bytes are not 0.
    UnknownFormat,
    /// The CRC32C does not match.
    BadCrc,
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FramingError::Truncated => "record cut short",
            FramingError::TooLong => "record length above the bound",
            FramingError::UnknownFormat => "unknown record format version or reserved bytes set",
            FramingError::BadCrc => "record CRC32C mismatch",
        })
    }
}

impl core::error::Error for FramingError {}

/// A view of one stored record that passed its checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    bytes: &'a [u8],
}

impl<'a> RecordView<'a> {
    /// Checks the record at the start of `buf` (framing, format version, CRC) whose body is at
    /// most `max_body` bytes; returns it and its length (header + body). Bytes after it are
    /// not looked at.
    ///
    /// # Errors
    /// The first check that fails, as a [`FramingError`].
    pub fn new_checked(buf: &'a [u8], max_body: u32) -> Result<(Self, usize), FramingError> {
        let header = buf
            .first_chunk::<RECORD_HEADER_LEN>()
            .ok_or(FramingError::Truncated)?;
        let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        if body_len > max_body {
            return Err(FramingError::TooLong);
        }
        let total = RECORD_HEADER_LEN.saturating_add(body_len as usize);
        let bytes = buf.get(..total).ok_or(FramingError::Truncated)?;
        if header[17] != FORMAT_VERSION || header[18] != 0 || header[19] != 0 {
            return Err(FramingError::UnknownFormat);
        }
        let stored = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if record_crc(bytes) != stored {
            return Err(FramingError::BadCrc);
        }
        Ok((Self { bytes }, total))
    }

    /// The record's offset in its log.
    #[inline]
    pub fn offset(&self) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.bytes.get(8..16).unwrap_or(&[0; 8]));
        u64::from_le_bytes(a)
    }

    /// Its kind (`KIND_EVENT`, …).
    #[inline]
    pub fn kind(&self) -> u8 {
        self.bytes.get(16).copied().unwrap_or(0)
    }

    /// Its body.
    #[inline]
    pub fn body(&self) -> &'a [u8] {
        self.bytes.get(RECORD_HEADER_LEN..).unwrap_or(&[])
    }

    /// The whole record, header and body.
    #[inline]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Its body decoded by kind ([`decode`]).
    #[cfg(pinstream_cas)]
    ///
    /// # Errors
    /// As [`decode`].
    pub fn decode(&self) -> Result<RecordBody<'a>, RecordError> {
        decode(self.kind(), self.body())
    }
}
