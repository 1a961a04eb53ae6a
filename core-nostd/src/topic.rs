//! The topic table: a fixed number of named topics, each with a dense `u16` id.
//!
//! Built at start-up (from the config), then shared read-only by the dispatcher (which
//! dead-letters events of unknown topics) and the processors. Names are 1 to `L` bytes of
//! UTF-8 without control characters; ids are given out in registration order from 0.
//!
//! ```
//! use pinstream_core::topic::{TopicError, TopicTable};
//!
//! let mut topics: TopicTable<4, 16> = TopicTable::new();
//! let orders = topics.register("orders").unwrap();
//! assert_eq!(topics.register("orders"), Ok(orders)); // idempotent
//! assert_eq!(topics.id("orders"), Some(orders));
//! assert_eq!(topics.name(orders), Some("orders"));
//! assert!(topics.contains(orders));
//! assert!(!topics.contains(3));
//! assert_eq!(
//!     topics.register("a-name-longer-than-16-bytes"),
//!     Err(TopicError::NameTooLong { len: 27, max: 16 })
//! );
//! ```

use core::fmt;

/// Why a topic could not be registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum TopicError {
    /// The table holds its `N` topics already.
    Full {
        /// The table's capacity.
        capacity: usize,
    },
    /// The name is longer than the table's `L` bytes.
    NameTooLong {
        /// The name's length in bytes.
        len: usize,
        /// The longest name the table takes.
        max: usize,
    },
    /// The name is empty.
    EmptyName,
    /// The name contains a control character (newline, NUL, …).
    InvalidName,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicError::Full { capacity } => {
                write!(f, "topic table is full ({capacity} topics)")
            }
            TopicError::NameTooLong { len, max } => {
                write!(f, "topic name of {len} bytes is longer than {max} bytes")
            }
            TopicError::EmptyName => f.write_str("topic name is empty"),
            TopicError::InvalidName => f.write_str("topic name contains a control character"),
        }
    }
}

impl core::error::Error for TopicError {}

/// A fixed table of up to `N` topics with names of up to `L` bytes. `N` is at most 65 536
/// (ids are `u16`; a compile error otherwise).
pub struct TopicTable<const N: usize, const L: usize> {
    /// Invariant: `len <= N`; entries `0..len` are registered.
    len: usize,
    names: [[u8; L]; N],
    /// Invariant: `name_lens[i] <= L`, and `names[i][..name_lens[i]]` is valid UTF-8.
    name_lens: [u8; N],
}

impl<const N: usize, const L: usize> TopicTable<N, L> {
    const FITS: () = {
        assert!(N <= 1 << 16, "at most 65536 topics (ids are u16)");
        assert!(L <= u8::MAX as usize, "topic names are at most 255 bytes");
    };

    /// An empty table.
    pub const fn new() -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::FITS;
        Self {
            len: 0,
            names: [[0; L]; N],
            name_lens: [0; N],
        }
    }

    /// Registers `name` and returns its id; a name already present returns its id again.
    ///
    /// # Errors
    /// [`TopicError`]: the table is full, or the name is empty, too long or has a control
    /// character.
    pub fn register(&mut self, name: &str) -> Result<u16, TopicError> {
        if name.is_empty() {
            return Err(TopicError::EmptyName);
        }
        if name.len() > L {
            return Err(TopicError::NameTooLong {
                len: name.len(),
                max: L,
            });
        }
        if name.chars().any(char::is_control) {
            return Err(TopicError::InvalidName);
        }
        if let Some(id) = self.id(name) {
            return Ok(id);
        }
        if self.len == N {
            return Err(TopicError::Full { capacity: N });
        }
        let id = self.len;
        self.names[id][..name.len()].copy_from_slice(name.as_bytes());
        // `name.len() <= L <= 255`.
        self.name_lens[id] = name.len() as u8;
        self.len += 1;
        // `id < N <= 65536`.
        Ok(id as u16)
    }

    /// The id of `name`, if registered.
    pub fn id(&self, name: &str) -> Option<u16> {
        (0..self.len)
            .find(|&i| self.name_at(i) == name)
            // `i < len <= N <= 65536`.
            .map(|i| i as u16)
    }

    /// The name of topic `id`, if registered.
    pub fn name(&self, id: u16) -> Option<&str> {
        let i = id as usize;
        (i < self.len).then(|| self.name_at(i))
    }

    /// Whether `id` is a registered topic. One comparison: the dispatcher calls it per event.
    #[inline]
    pub const fn contains(&self, id: u16) -> bool {
        (id as usize) < self.len
    }

    /// The number of registered topics.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether no topic is registered.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Registered `(id, name)` pairs in id order.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &str)> + '_ {
        (0..self.len).map(|i| (i as u16, self.name_at(i)))
    }

    fn name_at(&self, i: usize) -> &str {
        let bytes = &self.names[i][..self.name_lens[i] as usize];
        // Only `register` writes names, and it copies them from a `&str`.
        core::str::from_utf8(bytes).unwrap_or("")
    }
}

impl<const N: usize, const L: usize> Default for TopicTable<N, L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize, const L: usize> fmt::Debug for TopicTable<N, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn registers_until_full_and_rejects_bad_names() {
        let mut t: TopicTable<2, 4> = TopicTable::new();
        assert!(t.is_empty());
        assert_eq!(t.register(""), Err(TopicError::EmptyName));
        assert_eq!(t.register("a\nb"), Err(TopicError::InvalidName));
        assert_eq!(
            t.register("abcde"),
            Err(TopicError::NameTooLong { len: 5, max: 4 })
        );
        assert_eq!(t.register("abcd"), Ok(0));
        assert_eq!(t.register("é"), Ok(1));
        assert_eq!(t.register("x"), Err(TopicError::Full { capacity: 2 }));
        assert_eq!(t.register("abcd"), Ok(0));
        assert_eq!(t.name(1), Some("é"));
        assert_eq!(t.name(2), None);
        assert_eq!(t.id("zz"), None);
        assert_eq!(t.len(), 2);
        let all: std::vec::Vec<_> = t.iter().collect();
        assert_eq!(all, [(0, "abcd"), (1, "é")]);
    }
}
