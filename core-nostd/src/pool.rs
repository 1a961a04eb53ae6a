//! A static pool of `N` event slots with a lock-free free list.
//!
//! [`EventPool::acquire`] pops a free slot and returns a [`Handle`], which gives `&T` /
//! `&mut T` access and puts the slot back on drop (or [`Handle::release`]). Both are O(1)
//! and lock-free, and a handle may be released on another thread than the one that
//! acquired it (the ingest thread acquires, a processor releases). Exhaustion is a value:
//! `acquire` returns `None`.
//!
//! The free list is a Treiber stack of slot indices. Its head packs a **generation tag** with
//! the index in one atomic word (`usize`), and every successful change bumps the tag. That
//! defeats ABA: a thread that read head `A` and the next index `B`, then stalled while others
//! popped `A`, popped `B` and pushed `A` back, fails its CAS because the tag moved on.
//! (heapless's first Treiber pool lacked the tag and was unsound.) The index takes only the
//! bits `N` needs and the tag all the rest: with 1024 slots, 53 bits on 64-bit targets and 21
//! bits on 32-bit ones, so a stalled thread's stale CAS could succeed only if it slept
//! through exactly a multiple of 2^21 (two million) pool operations on a 32-bit target.
//!
//! Slots are initialised once, with a copy of the `init` value given to [`EventPool::new`],
//! and keep whatever the last user wrote: ingest overwrites an event in place instead of
//! building it elsewhere and copying it in. Use [`EventPool::acquire_with`] for a clean value.
//!
//! ```
//! use pinstream_core::pool::EventPool;
//!
//! static POOL: EventPool<[u8; 256], 4> = EventPool::new([0; 256]);
//!
//! let mut a = POOL.acquire().expect("a free slot");
//! a[0] = 42;
//! let b = POOL.acquire_with([7; 256]).expect("a free slot");
//! let index = a.index();
//! // Handles move between threads; the slot goes back when the handle drops.
//! std::thread::spawn(move || assert_eq!(a[0], 42)).join().unwrap();
//! drop(b);
//! let _all: Vec<_> = (0..4).map(|_| POOL.acquire().unwrap()).collect();
//! assert!(POOL.acquire().is_none(), "exhaustion is a value, not a panic");
//! # let _ = index;
//! ```
//!
//! Figures: see the README's benchmark table (`cargo bench -p pinstream-benches --bench pool`).

use core::fmt;
use core::mem::MaybeUninit;
use core::ops::{Deref, DerefMut};

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicUsize, Ordering, UnsafeCell, array_of, const_fn};

/// A fixed pool of `N` slots of `T`, usable from many threads, constructible in a `static`.
pub struct EventPool<T, const N: usize> {
    /// Free-list head: `tag << INDEX_BITS | index`; `index == NIL` when every slot is in use.
    head: CachePadded<AtomicUsize>,
    /// `next[i]`: the free slot after `i` while `i` is on the free list (`NIL` at the end).
    /// Read racily by `acquire`; the tag check on `head` discards stale reads.
    next: [AtomicUsize; N],
    /// Always initialised. A slot is accessed only through the one [`Handle`] that owns it.
    slots: [UnsafeCell<MaybeUninit<T>>; N],
}

// SAFETY: a slot's `T` is reachable only through the single `Handle` that popped it from the
// free list, so `&EventPool` shares no `T` between threads at once; a `T` written on one
// thread is read on another after the Release push / Acquire pop on `head`, so `T: Send` is
// the requirement.
unsafe impl<T: Send, const N: usize> Sync for EventPool<T, N> {}

impl<T: Copy, const N: usize> EventPool<T, N> {
    const_fn! {
        /// A pool whose `N` slots all start as copies of `init`, all free.
        ///
        /// `N` must be at least 1 and below `2^(usize::BITS / 2) - 1` (checked at compile time).
        pub fn new(init: T) -> Self {
            const { assert!(N > 0, "EventPool needs at least one slot") };
            const { assert!(Self::TAG_BITS >= 8, "EventPool too large to leave room for the tag") };
            let mut next: [AtomicUsize; N] = array_of!(N, AtomicUsize::new(Self::NIL));
            let mut slots: [UnsafeCell<MaybeUninit<T>>; N] =
                array_of!(N, UnsafeCell::new(MaybeUninit::uninit()));
            let mut i = 0;
            while i < N {
                if i + 1 < N {
                    next[i] = AtomicUsize::new(i + 1);
                }
                slots[i] = UnsafeCell::new(MaybeUninit::new(init));
                i += 1;
            }
            Self {
                head: CachePadded::new(AtomicUsize::new(0)), // tag 0, index 0
                next,
                slots,
            }
        }
    }
}

impl<T, const N: usize> EventPool<T, N> {
    /// Bits of the head word that hold a slot index: just enough for `0..=N`, so the tag
    /// gets every other bit (e.g. 21 bits on a 32-bit target with 1024 slots).
    const INDEX_BITS: u32 = usize::BITS - N.leading_zeros();
    const TAG_BITS: u32 = usize::BITS - Self::INDEX_BITS;
    const INDEX_MASK: usize = (1 << Self::INDEX_BITS) - 1;
    /// The "no slot" index, end of the free list: all index bits set, which is `>= N`.
    const NIL: usize = Self::INDEX_MASK;

    /// Head word holding `index`, with the tag after `head`'s.
    #[inline(always)]
    const fn next_head(head: usize, index: usize) -> usize {
        let tag = (head >> Self::INDEX_BITS).wrapping_add(1);
        // On a 64-bit target with a tiny pool the shift drops the tag's top bits: it wraps.
        (tag << Self::INDEX_BITS) | index
    }

    /// Number of slots.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Takes a free slot, holding whatever its last user left in it. `None` when all `N`
    /// slots are in use.
    #[inline]
    pub fn acquire(&self) -> Option<Handle<'_, T, N>> {
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            let index = head & Self::INDEX_MASK;
            if index == Self::NIL {
                return None;
            }
            // May be stale if `index` was popped and pushed meanwhile; then `head` has a new
            // tag and the CAS below fails.
            let next = self.next[index].load(Ordering::Relaxed);
            let new = Self::next_head(head, next);
            match self
                .head
                .compare_exchange_weak(head, new, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => return Some(Handle { pool: self, index }),
                Err(current) => head = current,
            }
        }
    }

    /// Takes up to `out.len()` free slots with one successful CAS (a batch costs what one
    /// [`acquire`](Self::acquire) costs) and writes their indices into `out`; returns how
    /// many. The caller owns those slots as if it had called [`Handle::into_index`] on their
    /// handles: it turns them into handles with [`from_index`](Self::from_index) or gives them
    /// back with [`release_many`](Self::release_many).
    ///
    /// Sound for the same reason as `acquire`: the chain of `next` links is read between the
    /// load of `head` and the CAS; if any push or pop happened in between, the tag moved and
    /// the CAS fails, and if none did, the links read are the ones those slots were pushed with.
    pub fn acquire_many(&self, out: &mut [usize]) -> usize {
        if out.is_empty() {
            return 0;
        }
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            let mut index = head & Self::INDEX_MASK;
            let mut taken = 0;
            // `next` links hold indices below N or NIL; a stale read is still one of those
            // (and then the CAS fails), so `index < N` holds for every slot indexed here.
            while taken < out.len() && index < N {
                out[taken] = index;
                taken += 1;
                index = self.next[index].load(Ordering::Relaxed);
            }
            if taken == 0 {
                return 0;
            }
            let new = Self::next_head(head, index);
            match self
                .head
                .compare_exchange_weak(head, new, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => return taken,
                Err(current) => head = current,
            }
        }
    }

    /// Gives back the slots at `indices` with one successful CAS: they are linked into a
    /// chain first, then the chain is pushed.
    ///
    /// # Safety
    /// Every index must be owned by the caller (from [`Handle::into_index`] or
    /// [`acquire_many`](Self::acquire_many)), appear once, and not be used afterwards.
    ///
    /// # Panics
    /// If an index is `>= N` (which the contract above already excludes).
    pub unsafe fn release_many(&self, indices: &[usize]) {
        let (Some(&first), Some(&last)) = (indices.first(), indices.last()) else {
            return;
        };
        for pair in indices.windows(2) {
            // The caller owns both slots: no one else reads or writes their links now.
            self.next[pair[0]].store(pair[1], Ordering::Relaxed);
        }
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            self.next[last].store(head & Self::INDEX_MASK, Ordering::Relaxed);
            let new = Self::next_head(head, first);
            // Release: our writes to the slots and links happen before the next acquirer's
            // Acquire pop of any of them.
            match self
                .head
                .compare_exchange_weak(head, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(current) => head = current,
            }
        }
    }

    /// Takes a free slot and writes `value` into it.
    ///
    /// # Errors
    /// Gives `value` back when all `N` slots are in use.
    #[inline]
    pub fn acquire_with(&self, value: T) -> Result<Handle<'_, T, N>, T> {
        match self.acquire() {
            Some(mut handle) => {
                *handle = value;
                Ok(handle)
            }
            None => Err(value),
        }
    }

    /// Puts slot `index` back on the free list.
    #[inline]
    fn release_index(&self, index: usize) {
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            self.next[index].store(head & Self::INDEX_MASK, Ordering::Relaxed);
            let new = Self::next_head(head, index);
            // Release: our writes to the slot (and to `next[index]`) happen before the next
            // acquirer's Acquire pop of it.
            match self
                .head
                .compare_exchange_weak(head, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(current) => head = current,
            }
        }
    }

    /// Rebuilds the handle of slot `index` given away by [`Handle::into_index`], e.g. after
    /// the index travelled through a ring as a plain number.
    ///
    /// # Safety
    /// `index` must come from `into_index` on a handle of *this* pool, and be turned back
    /// into a handle only once; otherwise two handles would own one slot.
    ///
    /// # Panics
    /// If `index >= N` (which the contract above already excludes).
    pub unsafe fn from_index(&self, index: usize) -> Handle<'_, T, N> {
        assert!(index < N, "slot index out of range");
        Handle { pool: self, index }
    }
}

impl<T, const N: usize> fmt::Debug for EventPool<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventPool").field("capacity", &N).finish()
    }
}

/// Exclusive access to one slot of an [`EventPool`]; the slot goes back to the pool when the
/// handle is dropped. `Send` when `T: Send`, so it can be released on another thread.
pub struct Handle<'a, T, const N: usize> {
    pool: &'a EventPool<T, N>,
    /// In `0..N`; popped from the free list by this handle and not on it while we live.
    index: usize,
}

// SAFETY: the handle owns its slot exclusively; moving it to another thread moves that
// ownership, which is sound for `T: Send` (the pool itself is `Sync` for `T: Send`).
unsafe impl<T: Send, const N: usize> Send for Handle<'_, T, N> {}
// SAFETY: `&Handle` only gives `&T`, so sharing it needs `T: Sync`.
unsafe impl<T: Sync, const N: usize> Sync for Handle<'_, T, N> {}

impl<T, const N: usize> Handle<'_, T, N> {
    /// The slot's index in `0..N` (stable for the life of the handle; useful as an id).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Returns the slot to the pool (the same as dropping the handle).
    pub fn release(self) {}

    /// Gives up the handle without releasing the slot, returning its index so it can travel
    /// as a plain number; [`EventPool::from_index`] turns it back into a handle.
    pub fn into_index(self) -> usize {
        let index = self.index;
        core::mem::forget(self);
        index
    }
}

impl<T, const N: usize> Deref for Handle<'_, T, N> {
    type Target = T;

    #[inline(always)]
    fn deref(&self) -> &T {
        // SAFETY: slots are always initialised, and this handle has exclusive ownership of
        // slot `index` (popped from the free list, not yet pushed back).
        self.pool.slots[self.index].with(|p| unsafe { (*p).assume_init_ref() })
    }
}

impl<T, const N: usize> DerefMut for Handle<'_, T, N> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference.
        self.pool.slots[self.index].with_mut(|p| unsafe { (*p).assume_init_mut() })
    }
}

impl<T, const N: usize> Drop for Handle<'_, T, N> {
    #[inline]
    fn drop(&mut self) {
        self.pool.release_index(self.index);
    }
}

impl<T: fmt::Debug, const N: usize> fmt::Debug for Handle<'_, T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("index", &self.index)
            .field("value", &**self)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
