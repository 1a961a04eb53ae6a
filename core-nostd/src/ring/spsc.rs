//! Wait-free single-producer / single-consumer ring of exactly `N` items.
//!
//! The ring lives anywhere, a `static` included (`const fn new`). It splits into a
//! [`Producer`] and a [`Consumer`] half: [`Spsc::split`] borrows it mutably, and
//! [`Spsc::try_split`] hands out `'static` halves once, guarded by a flag, so firmware never
//! needs `static mut`.
//!
//! How it stays fast:
//! - `head` (consumer position) and `tail` (producer position) sit on their own cache lines
//!   ([`CachePadded`]), so the two cores do not fight over one line.
//! - Each half keeps a cached copy of the other side's position and reloads it only when the
//!   ring looks full (producer) or empty (consumer). In steady state a push touches only the
//!   producer's line and the slot.
//! - The batch calls ([`Producer::push_slice`], [`Producer::push_iter`],
//!   [`Consumer::pop_slice`]) publish the position once per batch.
//! - Only atomic loads and stores, never a read-modify-write: it runs natively on targets
//!   without CAS (thumbv6m). [`Spsc::try_split`] is the exception (one swap, once).
//!
//! Positions run over `0..2N` so that a full ring (`tail - head == N`) and an empty one
//! (`tail == head`) differ without sacrificing a slot, for any `N`, power of two or not.
//!
//! ```
//! use pinstream_core::ring::{PushError, Spsc};
//!
//! let mut ring: Spsc<u32, 2> = Spsc::new();
//! let (mut tx, mut rx) = ring.split();
//! tx.push(1).unwrap();
//! tx.push(2).unwrap();
//! assert_eq!(tx.push(3), Err(PushError::Full(3)));
//! assert_eq!(rx.pop(), Some(1));
//! assert_eq!(tx.push_slice(&[3, 4]), 1);
//! let mut out = [0; 4];
//! assert_eq!(rx.pop_slice(&mut out), 2);
//! assert_eq!(&out[..2], &[2, 3]);
//! ```
//!
//! Figures: see the README's benchmark table (`cargo bench -p pinstream-benches --bench spsc`).

use core::fmt;
use core::marker::PhantomData;
use core::mem::MaybeUninit;

use crossbeam_utils::CachePadded;

use super::PushError;
use crate::sync::{AtomicBool, AtomicUsize, Ordering, UnsafeCell, array_of, const_fn};

/// A wait-free single-producer / single-consumer ring holding up to `N` items of `T`.
pub struct Spsc<T, const N: usize> {
    /// Consumer position, in `0..2N`. Stored only by the consumer (Release); the producer
    /// loads it (Acquire) to learn which slots are free again.
    head: CachePadded<AtomicUsize>,
    /// Producer position, in `0..2N`. Stored only by the producer (Release); the consumer
    /// loads it (Acquire) to learn which slots hold items. `tail - head (mod 2N)` is in `0..=N`.
    tail: CachePadded<AtomicUsize>,
    /// Set once by [`Spsc::try_split`] (which exists only where CAS does).
    #[cfg_attr(not(pinstream_cas), allow(dead_code))]
    taken: AtomicBool,
    /// Slots `head..tail` (mod 2N, folded into `0..N`) hold initialised items.
    buf: [UnsafeCell<MaybeUninit<T>>; N],
}

// SAFETY: the ring moves `T`s from the producer's thread to the consumer's. A shared `&Spsc`
// lets at most one producer and one consumer exist (`split` needs `&mut`, `try_split` a
// one-time flag), and each slot is accessed by one side at a time, handed over through the
// Release/Acquire pair on `head` / `tail`. So `T: Send` is all that is needed.
unsafe impl<T: Send, const N: usize> Sync for Spsc<T, N> {}

impl<T, const N: usize> Spsc<T, N> {
    const_fn! {
        /// An empty ring. `N == 0` does not compile.
        ///
        /// ```compile_fail
        /// let ring = pinstream_core::ring::Spsc::<u8, 0>::new();
        /// ```
        pub fn new() -> Self {
            const { assert!(N > 0, "Spsc capacity must be at least 1") };
            // `advance` computes up to `3N - 1` and `distance` up to `4N - 1`.
            const { assert!(N <= usize::MAX / 4, "Spsc capacity too large") };
            Self {
                head: CachePadded::new(AtomicUsize::new(0)),
                tail: CachePadded::new(AtomicUsize::new(0)),
                taken: AtomicBool::new(false),
                buf: array_of!(N, UnsafeCell::new(MaybeUninit::uninit())),
            }
        }
    }

    /// How many items the ring holds when full: exactly `N`.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Items in the ring, read while the halves may run: a snapshot for metrics, always in
    /// `0..=N`, that can be off if the other side moves on by more than `N` items during
    /// the call.
    pub fn len(&self) -> usize {
        // Head first: head only grows towards tail, so a later tail is never behind it.
        let head = self.head.load(Ordering::Acquire);
        let tail = self.tail.load(Ordering::Acquire);
        distance::<N>(head, tail).min(N)
    }

    /// True when [`len`](Self::len) is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when [`len`](Self::len) is `N`.
    pub fn is_full(&self) -> bool {
        self.len() == N
    }

    /// Splits the ring into its two halves for as long as they borrow it.
    pub fn split(&mut self) -> (Producer<'_, T, N>, Consumer<'_, T, N>) {
        let ring: &Self = self;
        halves(ring)
    }

    /// Hands out `'static` halves of a ring that lives in a `static`, once. Returns `None`
    /// if the halves were already handed out.
    ///
    /// ```
    /// use pinstream_core::ring::Spsc;
    ///
    /// static LANE: Spsc<u64, 64> = Spsc::new();
    /// let (mut tx, mut rx) = LANE.try_split().expect("first call");
    /// assert!(LANE.try_split().is_none());
    /// std::thread::spawn(move || tx.push(7).unwrap()).join().unwrap();
    /// assert_eq!(rx.pop(), Some(7));
    /// ```
    #[cfg(pinstream_cas)]
    #[cfg_attr(
        docsrs,
        doc(cfg(any(
            target_has_atomic = "ptr",
            feature = "critical-section",
            feature = "unsafe-assume-single-core"
        )))
    )]
    pub fn try_split(&'static self) -> Option<(Producer<'static, T, N>, Consumer<'static, T, N>)> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(halves(self))
    }
}

fn halves<T, const N: usize>(ring: &Spsc<T, N>) -> (Producer<'_, T, N>, Consumer<'_, T, N>) {
    let head = ring.head.load(Ordering::Acquire);
    let tail = ring.tail.load(Ordering::Acquire);
    (
        Producer {
            ring,
            tail,
            cached_head: head,
            _not_sync: PhantomData,
        },
        Consumer {
            ring,
            head,
            cached_tail: tail,
            _not_sync: PhantomData,
        },
    )
}

impl<T, const N: usize> Default for Spsc<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> fmt::Debug for Spsc<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spsc")
            .field("capacity", &N)
            .field("len", &self.len())
            .finish()
    }
}

impl<T, const N: usize> Drop for Spsc<T, N> {
    fn drop(&mut self) {
        let mut pos = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed);
        while pos != tail {
            // SAFETY: `&mut self` means no half is alive; slots `head..tail` hold initialised
            // items that nobody else will read, so each is dropped exactly once here.
            self.buf[fold::<N>(pos)].with_mut(|slot| unsafe { (*slot).assume_init_drop() });
            pos = advance::<N>(pos, 1);
        }
    }
}

/// `tail - head` in the `0..2N` position space.
#[inline(always)]
fn distance<const N: usize>(head: usize, tail: usize) -> usize {
    if tail >= head {
        tail - head
    } else {
        tail + 2 * N - head
    }
}

/// Position `pos` moved on by `n <= N`, kept in `0..2N`.
#[inline(always)]
fn advance<const N: usize>(pos: usize, n: usize) -> usize {
    debug_assert!(pos < 2 * N && n <= N);
    let next = pos + n;
    if next >= 2 * N { next - 2 * N } else { next }
}

/// Slot index of a position in `0..2N`.
#[inline(always)]
fn fold<const N: usize>(pos: usize) -> usize {
    debug_assert!(pos < 2 * N);
    if pos >= N { pos - N } else { pos }
}

impl<T, const N: usize> Spsc<T, N> {
    /// The slot of position `pos`, without the bounds check the compiler cannot remove
    /// (it does not know positions stay below `2N`).
    #[inline(always)]
    fn slot(&self, pos: usize) -> &UnsafeCell<MaybeUninit<T>> {
        let index = fold::<N>(pos);
        debug_assert!(index < N);
        // SAFETY: positions are kept in `0..2N` (every update goes through `advance`), so
        // `fold` returns an index in `0..N`.
        unsafe { self.buf.get_unchecked(index) }
    }
}

/// The writing half of an [`Spsc`]. `Send` when `T: Send`; one per ring.
pub struct Producer<'a, T, const N: usize> {
    ring: &'a Spsc<T, N>,
    /// Our own position, the value of `ring.tail` (only we store it).
    tail: usize,
    /// A recent `ring.head`; the real one is never behind it.
    cached_head: usize,
    _not_sync: PhantomData<core::cell::Cell<()>>,
}

impl<T, const N: usize> Producer<'_, T, N> {
    /// Free slots, reloading the consumer's position only when the cached one says fewer
    /// than `wanted` are free.
    #[inline(always)]
    fn free(&mut self, wanted: usize) -> usize {
        let free = N - distance::<N>(self.cached_head, self.tail);
        if free >= wanted {
            return free;
        }
        self.cached_head = self.ring.head.load(Ordering::Acquire);
        N - distance::<N>(self.cached_head, self.tail)
    }

    /// Writes `value` at position `pos` without publishing it.
    ///
    /// # Safety
    /// `pos` must be a free position: in `tail..head + N` (mod 2N) at the time of the call.
    #[inline(always)]
    unsafe fn write(&self, pos: usize, value: T) {
        // SAFETY: by the caller's contract the slot is free: the consumer published that it
        // is done with it (Acquire load of head) and will not read it before we publish a
        // tail past it, so we have exclusive access.
        self.ring
            .slot(pos)
            .with_mut(|slot| unsafe { (*slot).write(value) });
    }

    /// Makes items up to position `tail` visible to the consumer.
    #[inline(always)]
    fn publish(&mut self, tail: usize) {
        self.tail = tail;
        self.ring.tail.store(tail, Ordering::Release);
    }

    /// Pushes one item.
    ///
    /// # Errors
    /// [`PushError::Full`] with the value when the ring holds `N` items.
    #[inline]
    pub fn push(&mut self, value: T) -> Result<(), PushError<T>> {
        if self.free(1) == 0 {
            return Err(PushError::Full(value));
        }
        // SAFETY: `free(1)` saw at least one free slot, the one at `tail`.
        unsafe { self.write(self.tail, value) };
        self.publish(advance::<N>(self.tail, 1));
        Ok(())
    }

    /// Pushes items from `iter` while there is room, publishing them once. Returns how many
    /// were pushed; the rest stay in the iterator.
    pub fn push_iter<I: Iterator<Item = T>>(&mut self, iter: &mut I) -> usize {
        let free = self.free(N);
        let mut pos = self.tail;
        let mut pushed = 0;
        while pushed < free {
            let Some(value) = iter.next() else { break };
            // SAFETY: `pushed < free`, so `pos` is one of the free positions after `tail`.
            unsafe { self.write(pos, value) };
            pos = advance::<N>(pos, 1);
            pushed += 1;
        }
        if pushed > 0 {
            self.publish(pos);
        }
        pushed
    }

    /// Free slots now (reloads the consumer's position).
    pub fn slots(&mut self) -> usize {
        self.free(N)
    }

    /// True when no slot is free (reloads the consumer's position).
    pub fn is_full(&mut self) -> bool {
        self.free(1) == 0
    }

    /// Items in the ring (a snapshot).
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// True when the ring holds nothing (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Capacity of the ring, `N`.
    pub const fn capacity(&self) -> usize {
        N
    }
}

impl<T: Copy, const N: usize> Producer<'_, T, N> {
    /// Copies as many items of `items` as fit, in order, publishing them once. Returns how
    /// many were pushed (`items[..n]`).
    #[inline]
    pub fn push_slice(&mut self, items: &[T]) -> usize {
        let n = self.free(items.len()).min(items.len());
        let start = fold::<N>(self.tail);
        let first = n.min(N - start);
        for (slot, item) in self.ring.buf[start..start + first]
            .iter()
            .zip(&items[..first])
        {
            // SAFETY: these are the first `first` of the `n` free positions after `tail`
            // (exclusive to the producer until published).
            slot.with_mut(|p| unsafe { (*p).write(*item) });
        }
        for (slot, item) in self.ring.buf[..n - first].iter().zip(&items[first..n]) {
            // SAFETY: the remaining free positions, wrapped to the start of the buffer.
            slot.with_mut(|p| unsafe { (*p).write(*item) });
        }
        if n > 0 {
            self.publish(advance::<N>(self.tail, n));
        }
        n
    }
}

impl<T, const N: usize> fmt::Debug for Producer<'_, T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("tail", &self.tail)
            .finish()
    }
}

/// The reading half of an [`Spsc`]. `Send` when `T: Send`; one per ring.
pub struct Consumer<'a, T, const N: usize> {
    ring: &'a Spsc<T, N>,
    /// Our own position, the value of `ring.head` (only we store it).
    head: usize,
    /// A recent `ring.tail`; the real one is never behind it.
    cached_tail: usize,
    _not_sync: PhantomData<core::cell::Cell<()>>,
}

impl<T, const N: usize> Consumer<'_, T, N> {
    /// Items available, reloading the producer's position only when the cached one says
    /// fewer than `wanted` are there.
    #[inline(always)]
    fn available(&mut self, wanted: usize) -> usize {
        let ready = distance::<N>(self.head, self.cached_tail);
        if ready >= wanted {
            return ready;
        }
        self.cached_tail = self.ring.tail.load(Ordering::Acquire);
        distance::<N>(self.head, self.cached_tail)
    }

    /// Hands slots up to position `head` back to the producer.
    #[inline(always)]
    fn release(&mut self, head: usize) {
        self.head = head;
        self.ring.head.store(head, Ordering::Release);
    }

    /// Pops the oldest item, or `None` when the ring is empty.
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        if self.available(1) == 0 {
            return None;
        }
        // SAFETY: the producer published the item at `head` (Acquire load of tail in
        // `available`) and will not touch the slot until we publish a head past it; we read
        // it out exactly once and then release the slot.
        let value = self
            .ring
            .slot(self.head)
            .with(|p| unsafe { (*p).assume_init_read() });
        self.release(advance::<N>(self.head, 1));
        Some(value)
    }

    /// The oldest item without removing it.
    pub fn peek(&mut self) -> Option<&T> {
        if self.available(1) == 0 {
            return None;
        }
        // SAFETY: as in `pop`, the item at `head` is initialised and the producer will not
        // touch it while we (borrowed through `&mut self`) have not released it.
        Some(
            self.ring
                .slot(self.head)
                .with(|p| unsafe { (*p).assume_init_ref() }),
        )
    }

    /// Items ready to pop now (reloads the producer's position).
    pub fn len(&mut self) -> usize {
        self.available(N)
    }

    /// True when nothing is ready to pop (reloads the producer's position).
    pub fn is_empty(&mut self) -> bool {
        self.available(1) == 0
    }

    /// Capacity of the ring, `N`.
    pub const fn capacity(&self) -> usize {
        N
    }
}

impl<T: Copy, const N: usize> Consumer<'_, T, N> {
    /// Pops up to `out.len()` items into `out`, in order, releasing their slots once.
    /// Returns how many were popped (`out[..n]`).
    #[inline]
    pub fn pop_slice(&mut self, out: &mut [T]) -> usize {
        let n = self.available(out.len()).min(out.len());
        let start = fold::<N>(self.head);
        let first = n.min(N - start);
        for (item, slot) in out[..first]
            .iter_mut()
            .zip(&self.ring.buf[start..start + first])
        {
            // SAFETY: these are the first `first` of the `n` published items after `head`;
            // `T: Copy`, so reading them leaves nothing to drop.
            *item = slot.with(|p| unsafe { (*p).assume_init_read() });
        }
        for (item, slot) in out[first..n].iter_mut().zip(&self.ring.buf[..n - first]) {
            // SAFETY: the remaining published items, wrapped to the start of the buffer.
            *item = slot.with(|p| unsafe { (*p).assume_init_read() });
        }
        if n > 0 {
            self.release(advance::<N>(self.head, n));
        }
        n
    }
}

impl<T, const N: usize> fmt::Debug for Consumer<'_, T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("head", &self.head)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
