//! The payload arena: one fixed byte region that every payload too large for its event slot
//! shares, so events of any size up to the region's size fit without a per-slot maximum.
//!
//! A bipartite ring of bytes in the spirit of `bbqueue`, no_std and zero-heap, over a
//! caller-provided region (`&'a mut [u8]`, a [`ArenaRegion`] in a `static`, or a buffer the
//! host allocates once at start-up). The event slot keeps an [`ArenaRef`] (offset, length,
//! block) instead of the bytes.
//!
//! **One allocator, one releaser, out of order.** The dispatcher ([`ArenaWriter`]) allocates;
//! the processors' thread ([`ArenaReader`]) releases, but not in allocation order: the three
//! lanes are taken in different orders and a record the sink refuses is parked while later
//! ones are released. So each allocation also gets a **block descriptor**, in allocation
//! order, in a table of `B` descriptors beside the bytes (not inside them, so the table is
//! plain atomics that loom and Miri check). A descriptor holds the block's end position and a
//! *freed* bit. Releasing a block sets its bit; the releaser then advances the reclaim
//! position over the freed blocks at the head, in order, and publishes it. A block still in
//! use (a parked record) holds reclamation back, bounded by the retry queue; the writer sees
//! less room meanwhile, which is back-pressure, never corruption.
//!
//! **Positions.** Byte positions are *virtual*: in `0..2 * cap`, the physical offset being
//! the position modulo `cap`; the lap bit tells a full region from an empty one (as rtrb's
//! indices do). A block is contiguous: when it does not fit before the end of the region,
//! the tail is skipped (it becomes part of the block) and the block starts at offset 0, as
//! bbqueue's wrap marker does.
//!
//! **Orderings.** The writer writes a block's bytes and descriptor, then publishes the event
//! through a lane (Release / Acquire on the ring). The releaser's reads of the bytes happen
//! before it sets the freed bit and stores the reclaim position with Release; the writer
//! loads it with Acquire before it reuses those bytes or that descriptor.
//!
//! **Progress.** Allocation is wait-free and fails with [`ArenaFull`] when the bytes or the
//! descriptors run out; the dispatcher then makes a TCP source wait and dead-letters a UDP
//! event. Release and reclaim are wait-free.
//!
//! ```
//! use pinstream_core::arena::ArenaState;
//!
//! let mut state: ArenaState<8> = ArenaState::new();
//! let mut bytes = [0u8; 64];
//! let (mut writer, mut reader) = state.split(&mut bytes);
//! let (r, dst) = writer.alloc(40).unwrap();
//! dst.copy_from_slice(&[7; 40]);
//! assert!(writer.alloc(40).is_err(), "24 bytes left: full is a value");
//! // SAFETY: `r` was allocated above and is released only below.
//! assert_eq!(unsafe { reader.read(r) }, &[7; 40][..]);
//! // SAFETY: released once, and not read afterwards.
//! unsafe { reader.release(r) };
//! reader.reclaim();
//! assert!(writer.alloc(40).is_ok(), "the wrap reuses the start of the region");
//! ```

use core::fmt;
use core::marker::PhantomData;

use crossbeam_utils::CachePadded;

pub use crate::event::ArenaRef;
use crate::sync::{AtomicBool, AtomicUsize, Ordering, UnsafeCell, array_of, const_fn};

/// The largest region an arena uses (1 GiB): positions run to twice the size in a `usize`
/// and offsets travel as `u32`. Bytes past it are left unused.
pub const MAX_REGION: usize = 1 << 30;

/// Descriptor bit: the block was released.
const FREED: usize = 1;

/// No room now: the bytes or the block descriptors are all in use. Try again after the
/// consumer released some, or give up (a source that cannot wait).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ArenaFull {
    /// Larger than the whole region: it will never fit.
    TooLarge,
    /// Not enough room now.
    NoRoom,
}

/// The shared part of an arena: reclaim position and `B` block descriptors. Constructible in
/// a `static`; the bytes come with [`split`](Self::split).
pub struct ArenaState<const B: usize> {
    /// Virtual position (in `0..2 * cap`) of the first byte not yet reclaimed. Written by
    /// the reader only (Release), read by the writer (Acquire).
    reclaim: CachePadded<AtomicUsize>,
    /// Blocks reclaimed so far (wrapping). Written by the reader only.
    reclaimed: CachePadded<AtomicUsize>,
    /// Per block in allocation order (index = allocation count mod `B`): `end << 1 | FREED`,
    /// where `end` is the virtual position after the block. 0 when not allocated, or
    /// allocated and not freed: the reader's walk stops at any descriptor without `FREED`.
    blocks: [AtomicUsize; B],
    /// Splits made so far; stamps every [`ArenaRef`].
    epoch: u32,
}

impl<const B: usize> ArenaState<B> {
    const_fn! {
        /// An arena state with `B` block descriptors (at least 1).
        pub fn new() -> Self {
            const { assert!(B > 0 && B <= u32::MAX as usize, "B must be in 1..=u32::MAX") };
            Self {
                reclaim: CachePadded::new(AtomicUsize::new(0)),
                reclaimed: CachePadded::new(AtomicUsize::new(0)),
                blocks: array_of!(B, AtomicUsize::new(0)),
                epoch: 0,
            }
        }
    }

    /// Resets the state and hands out the writer and the reader over `region` (at most
    /// [`MAX_REGION`] bytes of it are used; an empty region makes an arena that holds
    /// nothing). References from an earlier split are stale from now on.
    pub fn split<'a>(
        &'a mut self,
        region: &'a mut [u8],
    ) -> (ArenaWriter<'a, B>, ArenaReader<'a, B>) {
        self.reset();
        // SAFETY: `&'a mut` on both: nothing else uses the state or the region for 'a.
        unsafe { self.sides(region) }
    }

    fn reset(&mut self) {
        self.reclaim.store(0, Ordering::Relaxed);
        self.reclaimed.store(0, Ordering::Relaxed);
        for b in &self.blocks {
            b.store(0, Ordering::Relaxed);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == ArenaRef::NONE.epoch {
            self.epoch = 0;
        }
    }

    /// The two halves over `region`, without resetting.
    ///
    /// # Safety
    /// The state must be fresh or reset, and for `'a` no other halves of this state may be
    /// used and nothing else may access `region`.
    pub(crate) unsafe fn sides<'a>(
        &'a self,
        region: &'a mut [u8],
    ) -> (ArenaWriter<'a, B>, ArenaReader<'a, B>) {
        let cap = region.len().min(MAX_REGION);
        let ptr = region.as_mut_ptr();
        let writer = ArenaWriter {
            state: self,
            ptr,
            cap,
            write: 0,
            allocated: 0,
            next_block: 0,
            epoch: self.epoch,
            _region: PhantomData,
        };
        let reader = ArenaReader {
            state: self,
            ptr,
            cap,
            reclaim: 0,
            reclaimed: 0,
            head_block: 0,
            epoch: self.epoch,
            _region: PhantomData,
        };
        (writer, reader)
    }
}

impl<const B: usize> Default for ArenaState<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const B: usize> fmt::Debug for ArenaState<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArenaState").field("blocks", &B).finish()
    }
}

/// `v + n` in the virtual space `0..2 * cap` (`v < 2 * cap`, `n <= 2 * cap`).
#[inline(always)]
fn advance(v: usize, n: usize, cap: usize) -> usize {
    let s = v + n;
    if s >= 2 * cap { s - 2 * cap } else { s }
}

/// Bytes from `from` forward to `to`, both virtual.
#[inline(always)]
fn distance(from: usize, to: usize, cap: usize) -> usize {
    if to >= from {
        to - from
    } else {
        to + 2 * cap - from
    }
}

/// The allocating half (the dispatcher's). `Send`: it moves to the ingest thread.
pub struct ArenaWriter<'a, const B: usize> {
    state: &'a ArenaState<B>,
    /// The region's first byte; `cap` bytes from it belong to the arena for `'a`.
    ptr: *mut u8,
    cap: usize,
    /// Virtual position of the next free byte, in `0..2 * cap`.
    write: usize,
    /// Blocks allocated (wrapping).
    allocated: usize,
    /// Descriptor of the next block, in `0..B`.
    next_block: usize,
    epoch: u32,
    _region: PhantomData<&'a mut [u8]>,
}

// SAFETY: the writer owns the free part of the region (the reader never touches it) and
// shares the state only through atomics; moving it to another thread is sound.
unsafe impl<const B: usize> Send for ArenaWriter<'_, B> {}

impl<'a, const B: usize> ArenaWriter<'a, B> {
    /// The region's size: the largest payload that can ever fit.
    #[inline]
    pub const fn capacity(&self) -> usize {
        self.cap
    }

    /// Allocates `len` contiguous bytes; returns their reference and the bytes to fill.
    ///
    /// # Errors
    /// [`ArenaFull::TooLarge`] when `len` exceeds the region, [`ArenaFull::NoRoom`] when
    /// the bytes or descriptors in use leave no room now.
    #[inline]
    pub fn alloc(&mut self, len: usize) -> Result<(ArenaRef, &mut [u8]), ArenaFull> {
        let cap = self.cap;
        if len > cap {
            return Err(ArenaFull::TooLarge);
        }
        // Acquire: the reader's reset of the descriptors (and its reads of the bytes)
        // happen before we reuse them.
        let reclaimed = self.state.reclaimed.load(Ordering::Acquire);
        if self.allocated.wrapping_sub(reclaimed) >= B {
            return Err(ArenaFull::NoRoom);
        }
        let reclaim = self.state.reclaim.load(Ordering::Acquire);
        let used = distance(reclaim, self.write, cap);
        let off = if self.write >= cap {
            self.write - cap
        } else {
            self.write
        };
        let skip = if off + len > cap { cap - off } else { 0 };
        // Fits behind the live bytes; or the arena is empty, when any block up to `cap`
        // fits at offset 0 (else a large block could wait forever for room that exists).
        if used + skip + len > cap && used != 0 {
            return Err(ArenaFull::NoRoom);
        }
        let start = advance(self.write, skip, cap);
        let end = advance(start, len, cap);
        let offset = if start >= cap { start - cap } else { start };
        let block = self.next_block;
        self.next_block = if block + 1 == B { 0 } else { block + 1 };
        // Relaxed: the descriptor travels to the reader with the event (lane Release /
        // Acquire), and only we write it until the reader's reset, which we Acquired.
        self.state.blocks[block].store(end << 1, Ordering::Relaxed);
        self.allocated = self.allocated.wrapping_add(1);
        self.write = end;
        debug_assert!(offset + len <= cap);
        let r = ArenaRef {
            offset: offset as u32,
            len: len as u32,
            block: block as u32,
            epoch: self.epoch,
        };
        // SAFETY: `offset + len <= cap`, inside the region we borrow for 'a. The bytes are
        // not live: they lie after every unreclaimed block (`used + skip + len <= cap`
        // from the reclaim position the reader published after its last read of them), or
        // nothing is live at all (`used == 0`). `&mut self` makes this the only slice the
        // writer hands out now; the reader reads a block only after it is published.
        let bytes = unsafe { core::slice::from_raw_parts_mut(self.ptr.add(offset), len) };
        Ok((r, bytes))
    }

    /// Gives back a block that was never published (e.g. its event found its lane full);
    /// the reader reclaims it on its next [`ArenaReader::reclaim`].
    ///
    /// # Safety
    /// `r` came from this writer's [`alloc`](Self::alloc), never reached the reader, and is
    /// released once.
    #[inline]
    pub unsafe fn release(&mut self, r: ArenaRef) {
        release(self.state, self.epoch, r);
    }
}

impl<const B: usize> fmt::Debug for ArenaWriter<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArenaWriter")
            .field("capacity", &self.cap)
            .field("write", &self.write)
            .finish_non_exhaustive()
    }
}

/// Sets `r`'s freed bit (if it belongs to this split).
#[inline(always)]
fn release<const B: usize>(state: &ArenaState<B>, epoch: u32, r: ArenaRef) {
    if r.epoch != epoch {
        return;
    }
    // Release: our reads of the block happen before the reader reclaims it (it loads the
    // descriptor with Acquire) and so before the writer's reuse.
    state.blocks[r.block as usize].fetch_or(FREED, Ordering::Release);
}

/// The reading and releasing half (the processors'). `Send`: it moves to their thread.
pub struct ArenaReader<'a, const B: usize> {
    state: &'a ArenaState<B>,
    ptr: *const u8,
    cap: usize,
    /// Our copy of `state.reclaim` (we are its only writer).
    reclaim: usize,
    /// Our copy of `state.reclaimed`.
    reclaimed: usize,
    /// Descriptor of the next block to reclaim, in `0..B`.
    head_block: usize,
    epoch: u32,
    _region: PhantomData<&'a [u8]>,
}

// SAFETY: the reader reads only published, unreclaimed blocks and shares the state only
// through atomics; moving it to another thread is sound.
unsafe impl<const B: usize> Send for ArenaReader<'_, B> {}

impl<const B: usize> ArenaReader<'_, B> {
    /// The bytes of `r` (empty for a reference from an earlier split).
    ///
    /// # Safety
    /// `r` was allocated by this split's writer, published to this thread (through a lane,
    /// which orders the writer's bytes before this read) and not released yet; it is not
    /// released while the returned slice lives.
    #[inline]
    pub unsafe fn read(&self, r: ArenaRef) -> &[u8] {
        let (offset, len) = (r.offset as usize, r.len as usize);
        if r.epoch != self.epoch || offset + len > self.cap {
            return &[];
        }
        // SAFETY: in bounds (checked above); the block is live and published (the
        // caller's contract), so the writer does not touch it until we release it and
        // reclaim past it.
        unsafe { core::slice::from_raw_parts(self.ptr.add(offset), len) }
    }

    /// Marks `r` free. Its bytes are reused once every block allocated before it is free
    /// too and [`reclaim`](Self::reclaim) ran.
    ///
    /// # Safety
    /// `r` was allocated by this split's writer and is released once, and not read after.
    #[inline]
    pub unsafe fn release(&mut self, r: ArenaRef) {
        release(self.state, self.epoch, r);
    }

    /// Advances the reclaim position over the freed blocks at the head, in allocation
    /// order, and publishes it; returns how many blocks it reclaimed.
    pub fn reclaim(&mut self) -> usize {
        if self.cap == 0 {
            return 0;
        }
        let mut n = 0;
        loop {
            let d = &self.state.blocks[self.head_block];
            // Acquire: a block the writer released itself carries its writes with it.
            let v = d.load(Ordering::Acquire);
            if v & FREED == 0 {
                break;
            }
            // Only we clear descriptors; the writer reuses this one after our Release
            // store of `reclaimed` below.
            d.store(0, Ordering::Relaxed);
            self.reclaim = v >> 1;
            self.reclaimed = self.reclaimed.wrapping_add(1);
            self.head_block = if self.head_block + 1 == B {
                0
            } else {
                self.head_block + 1
            };
            n += 1;
        }
        if n != 0 {
            // Release: our reads of the reclaimed blocks, and the cleared descriptors,
            // happen before the writer's Acquire loads and so before it reuses them.
            self.state.reclaim.store(self.reclaim, Ordering::Release);
            self.state
                .reclaimed
                .store(self.reclaimed, Ordering::Release);
        }
        n
    }
}

impl<const B: usize> fmt::Debug for ArenaReader<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArenaReader")
            .field("capacity", &self.cap)
            .field("reclaim", &self.reclaim)
            .finish_non_exhaustive()
    }
}

/// A byte region for an arena in a `static` (firmware): taken once, as `&'static mut`,
/// without `static mut`.
///
/// ```
/// use pinstream_core::arena::ArenaRegion;
///
/// static REGION: ArenaRegion<1024> = ArenaRegion::new();
/// let bytes: &'static mut [u8] = REGION.take().unwrap();
/// assert_eq!(bytes.len(), 1024);
/// assert!(REGION.take().is_none(), "only once");
/// ```
pub struct ArenaRegion<const N: usize> {
    taken: AtomicBool,
    bytes: UnsafeCell<[u8; N]>,
}

// SAFETY: the bytes are handed out once (the `taken` swap), as one `&mut`; nothing else
// reads them through `&self`.
unsafe impl<const N: usize> Sync for ArenaRegion<N> {}

impl<const N: usize> ArenaRegion<N> {
    const_fn! {
        /// A zeroed region of `N` bytes, not taken.
        pub fn new() -> Self {
            Self {
                taken: AtomicBool::new(false),
                bytes: UnsafeCell::new([0; N]),
            }
        }
    }

    /// The bytes, the first time; `None` afterwards.
    // `&mut` from `&self` is the point: the `taken` flag makes it happen once (StaticCell's
    // pattern).
    #[allow(clippy::mut_from_ref)]
    pub fn take(&'static self) -> Option<&'static mut [u8]> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: the swap above returned `false` once only, so this is the one `&mut`
        // ever made of the bytes, and it lives as long as the static.
        let bytes: &'static mut [u8; N] = self.bytes.with_mut(|p| unsafe { &mut *p });
        Some(&mut bytes[..])
    }
}

impl<const N: usize> Default for ArenaRegion<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Debug for ArenaRegion<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArenaRegion").field("bytes", &N).finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
