//! Bounded multi-producer / single-consumer ring of exactly `N` items (`N` a power of two, ≥ 2).
//!
//! Dmitry Vyukov's bounded queue: every slot carries a sequence number that says whose turn
//! it is. A producer claims position `p` with one CAS on the shared `enqueue` counter, writes
//! the value, then stores the slot's sequence as `p + 1` ("published"). The single consumer
//! needs no CAS: it reads slot `p` when its sequence is `p + 1` and stores `p + N` to hand the
//! slot to the producer one lap later.
//!
//! ## Progress, honestly
//! Producers are lock-free: a failed CAS means another producer succeeded. The consumer is
//! not: **a producer preempted between claiming a slot and publishing it holds the consumer
//! at that slot**. [`MpscConsumer::pop`] returns `None` there even when later slots already
//! hold published items, until that producer runs again. Other producers keep going until
//! the ring is full. (heapless's `mpmc` and crossbeam's `ArrayQueue` share this property; a
//! test parks a producer mid-push to show it.) Pin producers or keep their critical window
//! free of blocking calls, as the host does.
//!
//! [`Mpsc::push`] reports [`PushError::Full`] only when all `N` slots are claimed and not yet
//! released by the consumer, which is the ring being full.
//!
//! ```
//! use pinstream_core::ring::{Mpsc, PushError};
//!
//! let ring: Mpsc<u32, 4> = Mpsc::new();
//! let mut rx = ring.consumer().expect("one consumer");
//! std::thread::scope(|s| {
//!     for t in 0..2 {
//!         let ring = &ring;
//!         s.spawn(move || ring.push(t).unwrap());
//!     }
//! });
//! let mut got = [rx.pop().unwrap(), rx.pop().unwrap()];
//! got.sort();
//! assert_eq!(got, [0, 1]);
//! assert_eq!(rx.pop(), None);
//! ```
//!
//! Figures: see the README's benchmark table (`cargo bench -p pinstream-benches --bench mpsc`).

use core::fmt;
use core::marker::PhantomData;
use core::mem::MaybeUninit;

use crossbeam_utils::CachePadded;

use super::PushError;
use crate::sync::{AtomicBool, AtomicUsize, Backoff, Ordering, UnsafeCell, array_of, const_fn};

struct Slot<T> {
    /// `p` (free for the producer of position `p`), `p + 1` (holds the item of position `p`),
    /// and `p + N` after the consumer read it. Positions wrap around `usize`; `N` being a
    /// power of two keeps `p mod N` continuous across that wrap.
    seq: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

/// A bounded multi-producer / single-consumer ring holding up to `N` items of `T`.
pub struct Mpsc<T, const N: usize> {
    /// Next position a producer will claim. Shared by all producers (CAS).
    enqueue: CachePadded<AtomicUsize>,
    /// Next position the consumer will read; stored (Release) by the consumer after each pop,
    /// read by [`Mpsc::len`] and by a consumer taken later.
    dequeue: CachePadded<AtomicUsize>,
    /// Set while an [`MpscConsumer`] exists.
    consumer_taken: AtomicBool,
    slots: [Slot<T>; N],
}

// SAFETY: items move from producer threads to the consumer's thread, so `T: Send` is
// required and sufficient. Every slot is owned by exactly one side at a time: the producer
// that won the CAS for its position until it stores `seq = p + 1` (Release), then the single
// consumer (Acquire load) until it stores `seq = p + N` (Release).
unsafe impl<T: Send, const N: usize> Sync for Mpsc<T, N> {}

impl<T, const N: usize> Mpsc<T, N> {
    const MASK: usize = N - 1;

    const_fn! {
        /// An empty ring. `N` must be a power of two and at least 2 (checked at compile
        /// time): with one slot, "published" (`p + 1`) and "released" (`p + N`) would be the
        /// same sequence number.
        ///
        /// ```compile_fail
        /// let ring = pinstream_core::ring::Mpsc::<u8, 6>::new();
        /// ```
        ///
        /// ```compile_fail
        /// let ring = pinstream_core::ring::Mpsc::<u8, 1>::new();
        /// ```
        pub fn new() -> Self {
            const { assert!(N.is_power_of_two(), "Mpsc capacity must be a power of two") };
            const { assert!(N >= 2, "Mpsc capacity must be at least 2") };
            let mut slots: [Slot<T>; N] = array_of!(N, Slot {
                seq: AtomicUsize::new(0),
                value: UnsafeCell::new(MaybeUninit::uninit()),
            });
            let mut i = 0;
            while i < N {
                slots[i].seq = AtomicUsize::new(i);
                i += 1;
            }
            Self {
                enqueue: CachePadded::new(AtomicUsize::new(0)),
                dequeue: CachePadded::new(AtomicUsize::new(0)),
                consumer_taken: AtomicBool::new(false),
                slots,
            }
        }
    }

    /// How many items the ring holds when full: exactly `N`.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Items claimed by producers and not yet popped, at the moment of the call (a snapshot;
    /// includes items whose producer has not finished publishing them).
    pub fn len(&self) -> usize {
        let dequeue = self.dequeue.load(Ordering::Acquire);
        let enqueue = self.enqueue.load(Ordering::Acquire);
        enqueue.wrapping_sub(dequeue).min(N)
    }

    /// True when [`len`](Self::len) is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pushes one item; callable from any number of threads at once.
    ///
    /// # Errors
    /// [`PushError::Full`] with the value when all `N` slots are taken.
    #[inline]
    pub fn push(&self, value: T) -> Result<(), PushError<T>> {
        self.push_with_pause(value, || {})
    }

    /// `push`, with `pause` run between claiming the slot and publishing it: the window in
    /// which a preempted producer holds the consumer back. Tests use it to park a producer
    /// there; `push` passes a no-op that compiles away.
    #[inline(always)]
    pub(crate) fn push_with_pause(
        &self,
        value: T,
        pause: impl FnOnce(),
    ) -> Result<(), PushError<T>> {
        let mut pos = self.enqueue.load(Ordering::Relaxed);
        let mut backoff = Backoff::new();
        loop {
            let slot = &self.slots[pos & Self::MASK];
            let seq = slot.seq.load(Ordering::Acquire);
            // Signed lag of the slot behind our position; positions wrap around usize.
            let lag = seq.wrapping_sub(pos) as isize;
            if lag == 0 {
                // The slot is free for position `pos`: claim it.
                match self.enqueue.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        pause();
                        // SAFETY: winning the CAS for `pos` while `seq == pos` gives this
                        // producer sole ownership of the slot until it publishes below; the
                        // consumer released it (Release store of `seq`, Acquire load above).
                        slot.value.with_mut(|p| unsafe { (*p).write(value) });
                        slot.seq.store(pos.wrapping_add(1), Ordering::Release);
                        return Ok(());
                    }
                    Err(current) => {
                        // Another producer won this position: back off before the next try.
                        pos = current;
                        backoff.spin();
                    }
                }
            } else if lag < 0 {
                // The slot still holds (or is being filled with) the item from one lap ago:
                // N positions are claimed and not yet released, the ring is full.
                return Err(PushError::Full(value));
            } else {
                // Another producer claimed `pos` already; catch up.
                backoff.spin();
                pos = self.enqueue.load(Ordering::Relaxed);
            }
        }
    }

    /// Pushes as many of `items` as there is room for, in order, with one CAS for the batch
    /// (one claim of consecutive positions); returns how many. Other producers' items may
    /// come before or after the batch, never inside it.
    ///
    /// Room is judged from the consumer's published position, so a batch may take fewer
    /// slots than are free at that instant (never more); `0` means the ring was full.
    pub fn push_slice(&self, items: &[T]) -> usize
    where
        T: Copy,
    {
        if items.is_empty() {
            return 0;
        }
        let mut pos = self.enqueue.load(Ordering::Relaxed);
        let mut backoff = Backoff::new();
        loop {
            // The first slot decides, exactly as in `push`: full, stale position, or free.
            let seq = self.slots[pos & Self::MASK].seq.load(Ordering::Acquire);
            let lag = seq.wrapping_sub(pos) as isize;
            if lag < 0 {
                return 0;
            }
            if lag > 0 {
                backoff.spin();
                pos = self.enqueue.load(Ordering::Relaxed);
                continue;
            }
            // At least one slot is free. How many more: the consumer's published position
            // bounds it (a stale one only makes the batch smaller).
            let dequeue = self.dequeue.load(Ordering::Acquire);
            let used = pos.wrapping_sub(dequeue);
            let room = if used < N { N - used } else { 1 };
            let mut k = items.len().min(room);
            if k > 1 {
                // The consumer releases slots in position order, so when the batch's last
                // slot is free for its position, every slot before it is too. The Acquire
                // load pairs with the consumer's Release store of that slot (made after it
                // released and read the earlier ones), so its reads of them happen before
                // our writes. If it is not free (yet), claim just the first slot.
                let last = pos.wrapping_add(k - 1);
                if self.slots[last & Self::MASK].seq.load(Ordering::Acquire) != last {
                    k = 1;
                }
            }
            match self.enqueue.compare_exchange_weak(
                pos,
                pos.wrapping_add(k),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    for (i, item) in items[..k].iter().enumerate() {
                        let p = pos.wrapping_add(i);
                        let slot = &self.slots[p & Self::MASK];
                        // SAFETY: winning the CAS for positions `pos..pos + k`, whose slots
                        // are all free for those positions (checked through the last one
                        // above), gives this producer sole ownership of them until each is
                        // published below.
                        slot.value.with_mut(|v| unsafe { (*v).write(*item) });
                        slot.seq.store(p.wrapping_add(1), Ordering::Release);
                    }
                    return k;
                }
                Err(current) => {
                    pos = current;
                    backoff.spin();
                }
            }
        }
    }

    /// Makes the consumer half available again even if the last one was leaked
    /// (`mem::forget`): with `&mut self` no consumer can exist. A new consumer resumes at
    /// the published `dequeue` position, which the last one stored after every pop.
    pub(crate) fn reclaim_consumer(&mut self) {
        self.consumer_taken.store(false, Ordering::Relaxed);
    }

    /// The consumer half, or `None` while another one exists. Dropping it lets a later
    /// caller take it again, continuing where it stopped.
    pub fn consumer(&self) -> Option<MpscConsumer<'_, T, N>> {
        if self.consumer_taken.swap(true, Ordering::Acquire) {
            return None;
        }
        Some(MpscConsumer {
            ring: self,
            pos: self.dequeue.load(Ordering::Acquire),
            _not_sync: PhantomData,
        })
    }
}

impl<T, const N: usize> Default for Mpsc<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> fmt::Debug for Mpsc<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mpsc")
            .field("capacity", &N)
            .field("len", &self.len())
            .finish()
    }
}

impl<T, const N: usize> Drop for Mpsc<T, N> {
    fn drop(&mut self) {
        let mut pos = self.dequeue.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[pos & Self::MASK];
            if slot.seq.load(Ordering::Relaxed) != pos.wrapping_add(1) {
                break;
            }
            // SAFETY: `&mut self` excludes every producer and consumer; `seq == pos + 1`
            // means the slot holds a published item nobody popped, dropped once here.
            slot.value.with_mut(|p| unsafe { (*p).assume_init_drop() });
            pos = pos.wrapping_add(1);
        }
    }
}

/// The single consumer of an [`Mpsc`]. `Send` when `T: Send`.
pub struct MpscConsumer<'a, T, const N: usize> {
    ring: &'a Mpsc<T, N>,
    /// Next position to read; equals `ring.dequeue` (only we store it).
    pos: usize,
    _not_sync: PhantomData<core::cell::Cell<()>>,
}

impl<T, const N: usize> MpscConsumer<'_, T, N> {
    /// Pops the oldest published item, or `None` when the next slot holds nothing published
    /// yet (see the module docs on a producer preempted mid-push).
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        let slot = &self.ring.slots[self.pos & Mpsc::<T, N>::MASK];
        if slot.seq.load(Ordering::Acquire) != self.pos.wrapping_add(1) {
            return None;
        }
        // SAFETY: `seq == pos + 1` (Acquire) means the producer of `pos` finished writing and
        // gave up the slot; we are the only consumer, so we read it exactly once.
        let value = slot.value.with(|p| unsafe { (*p).assume_init_read() });
        slot.seq.store(self.pos.wrapping_add(N), Ordering::Release);
        self.pos = self.pos.wrapping_add(1);
        self.ring.dequeue.store(self.pos, Ordering::Release);
        Some(value)
    }

    /// Pops up to `max` items, passing each to `f`. Returns how many were popped.
    pub fn pop_each(&mut self, max: usize, mut f: impl FnMut(T)) -> usize {
        let mut n = 0;
        while n < max {
            let Some(value) = self.pop() else { break };
            f(value);
            n += 1;
        }
        n
    }

    /// Items in the ring (a snapshot, see [`Mpsc::len`]).
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// True when [`len`](Self::len) is 0.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

impl<T, const N: usize> Drop for MpscConsumer<'_, T, N> {
    fn drop(&mut self) {
        self.ring.consumer_taken.store(false, Ordering::Release);
    }
}

impl<T, const N: usize> fmt::Debug for MpscConsumer<'_, T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MpscConsumer")
            .field("pos", &self.pos)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
