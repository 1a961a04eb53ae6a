//! Source ids: the number by which the ingest thread knows where a frame came from.
//!
//! The dispatcher, the storage thread and the HELLO reply carry a source id as a bare `u32`
//! (`pinstream_core` has no connections). Its layout is decided here, once: the low 16 bits
//! are a TCP connection's slot plus one, the high 16 bits how many times that slot has been
//! opened (so a completion meant for a closed connection is not applied to the next one in
//! its slot), and 0 is everything that came over UDP.

/// Where a frame came from: a TCP connection (its slot and the slot's generation), or UDP.
///
/// ```
/// use pinstream_host::ingest::SourceId;
///
/// let id = SourceId::tcp(4, 7);
/// assert_eq!((id.slot(), id.generation(), id.get()), (Some(4), 7, 7 << 16 | 5));
/// assert_eq!(SourceId::from_raw(id.get()), id);
/// assert_eq!(SourceId::UDP.slot(), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceId(u32);

impl SourceId {
    /// Everything that arrives over UDP (it has no acknowledgements, so no per-sender books).
    pub const UDP: Self = Self(0);
    /// TCP connection slots a source id can name: slot + 1 fits the low 16 bits, whose 0 is
    /// UDP.
    pub const MAX_SLOTS: usize = 0xFFFF;
    /// The bits of the slot (plus one).
    const SLOT_MASK: u32 = 0xFFFF;
    /// Where the generation starts.
    const GENERATION_SHIFT: u32 = 16;

    /// The source id of the connection in `slot` (below [`MAX_SLOTS`](Self::MAX_SLOTS)),
    /// opened for the `generation`th time (modulo 2^16).
    ///
    /// # Panics
    /// In debug builds, when `slot` is not below `MAX_SLOTS` (the config's
    /// `tcp.max_connections` check keeps it there).
    pub fn tcp(slot: usize, generation: u16) -> Self {
        debug_assert!(
            slot < Self::MAX_SLOTS,
            "connection slot {slot} out of range"
        );
        let slot = (slot as u32 + 1) & Self::SLOT_MASK;
        Self(u32::from(generation) << Self::GENERATION_SHIFT | slot)
    }

    /// The source id a bare `u32` carries (from the dispatcher or the storage thread).
    pub const fn from_raw(raw: u32) -> Self {
        Self(raw)
    }

    /// The bare `u32`, as the dispatcher, the logs and the HELLO reply carry it.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The TCP connection slot, or `None` for UDP.
    pub fn slot(self) -> Option<usize> {
        let slot = self.0 & Self::SLOT_MASK;
        (slot != 0).then(|| slot as usize - 1)
    }

    /// How many times (modulo 2^16) the slot had been opened when this id was given.
    pub fn generation(self) -> u16 {
        (self.0 >> Self::GENERATION_SHIFT) as u16
    }
}
