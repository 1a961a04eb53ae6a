//! A fixed-capacity, lock-free set of `u64` idempotency keys with a time window.
//!
//! [`DedupTable::check_and_insert`] answers, for a key seen at tick `now`:
//! - [`Verdict::New`]: no live entry had the key; it is now recorded as first seen at `now`.
//! - [`Verdict::Duplicate`]: the key was first seen less than `window` ticks ago, or another
//!   thread is inserting it right now. That thread reports `New`, except in one edge: when
//!   the callers' clocks disagree and the key's previous entry is live for the inserter but
//!   expired for us, both answer `Duplicate` (the earlier sighting still counts for one).
//! - [`Verdict::NewEvicting`]: the key is not present, and every slot it may occupy holds a
//!   live key: it is recorded in place of the oldest of them, which is forgotten early. Never
//!   a false `New` for a key that is present, and never a refusal.
//!
//! ## The window
//! It counts from a key's **first sighting**, and a repeat does **not** extend it: a key
//! first seen at `t` is a duplicate for `now` in `t..t + window` and new again from
//! `t + window` on (NATS refreshes on repeat, which lets a steady trickle of retries keep a
//! key alive forever). Ticks are the caller's clock units; the core never reads a clock.
//! Ticks are taken modulo 2^62 (146 years of nanoseconds); `now` older than a recorded tick
//! (clocks disagreeing between threads) counts as inside the window.
//!
//! ## Space, and when it is full
//! `N` slots (a power of two), 24 bytes each, fixed: memory never grows with distinct keys.
//! A key hashes to a home slot (a multiple of 8) and may live in any of the `PROBE` slots
//! from there (linear probing, `PROBE` = 16 by default). Expired entries are reused in
//! place. A key whose `PROBE` slots all hold live keys takes the slot of the oldest of them
//! ([`Verdict::NewEvicting`], with that key's age): the table never refuses a key, it
//! remembers less far back. Size `N` at about four times the keys live within one window
//! and evictions stay rare (measured: about 1 in 3 million inserts at a quarter full,
//! `cargo bench -p pinstream-benches --bench dedup`); past that, the evicted ages say how far
//! back it still remembers (the host exports the youngest as its effective window).
//!
//! ## Concurrency
//! Any number of threads may call `check_and_insert` at once. Each slot is one 128-bit atomic
//! word (`key`, state, first-seen tick), changed only by compare-and-swap, so an entry is
//! never seen half-written. Beside it an 8-byte tag (a 16-bit fingerprint of the key under a
//! generation count) lets probes skip slots without the costlier 16-byte load; the tag is a
//! filter, the 16-byte word is the truth. Concurrent inserts of one key are resolved so exactly one gets
//! `New`: an inserter first writes a *pending* entry, then rescans the key's window; a pending
//! entry of the same key nearer the home slot wins and a farther one is aborted, a committed
//! live one wins outright. Every loop retries only after another thread's CAS succeeded, so
//! the table is lock-free. On x86_64 and aarch64 the word is the CPU's 16-byte CAS; on
//! targets without one (Cortex-M, RISC-V 32) portable-atomic's fallback guards it with a
//! striped seqlock, which is not lock-free: do not call the table from an interrupt handler
//! that may preempt a caller there.
//!
//! ## One owner
//! A table owned by one thread (e.g. the one processor thread that deduplicates a lane) can use
//! [`DedupTable::check_and_insert_mut`]: same answers, same slots, no atomic read-modify-write
//! and no fence. Shared and exclusive calls can alternate on one table.
//!
//! ```
//! use pinstream_core::dedup::{DedupTable, Verdict};
//!
//! let table: DedupTable<64> = DedupTable::new(100); // window: 100 ticks
//! assert_eq!(table.check_and_insert(7, 1_000), Verdict::New);
//! assert_eq!(table.check_and_insert(7, 1_099), Verdict::Duplicate); // window - 1
//! assert_eq!(table.check_and_insert(7, 1_100), Verdict::New); // window: expired
//!
//! let mut owned: DedupTable<64> = DedupTable::new(100);
//! assert_eq!(owned.check_and_insert_mut(7, 0), Verdict::New);
//! assert_eq!(owned.check_and_insert_mut(7, 99), Verdict::Duplicate);
//! ```
//!
//! Figures: see the README's benchmark table (`cargo bench -p pinstream-benches --bench dedup`).

use core::fmt;

#[cfg(not(loom))]
use crate::sync::WithMut;
use crate::sync::{AtomicU64, AtomicU128, Ordering, array_of, const_fn, fence, spin_loop};

/// What [`DedupTable::check_and_insert`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[must_use]
pub enum Verdict {
    /// Not seen within the window; recorded now.
    New,
    /// First seen less than `window` ticks ago.
    Duplicate,
    /// Not present, and every slot it may occupy held a live key: recorded now in place of
    /// the oldest of them, first seen `evicted_age` ticks ago, which is forgotten before its
    /// window ends (a repeat of that key would now be `New`). The table remembered keys for
    /// at least `evicted_age` ticks here: its effective window.
    NewEvicting {
        /// Age in ticks of the evicted sighting (below the window).
        evicted_age: u64,
    },
}

impl Verdict {
    /// Whether the key was recorded as new (`New` or `NewEvicting`).
    pub const fn is_new(self) -> bool {
        !matches!(self, Verdict::Duplicate)
    }
}

// Slot word layout: key in the high 64 bits; low 64 bits = state (2 bits) | tick (62 bits).
const TICK_BITS: u32 = 62;
const TICK_MASK: u64 = (1 << TICK_BITS) - 1;
const EMPTY: u64 = 0; // never used since the table was built; the whole word is 0
const PENDING: u64 = 1; // being inserted: counts as present, not yet reported New
const COMMITTED: u64 = 2; // recorded; live while `now - tick < window`
const TOMBSTONE: u64 = 3; // an aborted insert: free for reuse, but probing goes on past it
/// Longest window: ages above it (half the tick range) mean "clock behind".
const MAX_WINDOW: u64 = TICK_MASK >> 1;

#[derive(Clone, Copy)]
struct Entry {
    key: u64,
    state: u64,
    tick: u64,
}

impl Entry {
    #[inline(always)]
    fn decode(word: u128) -> Self {
        let low = word as u64;
        Entry {
            key: (word >> 64) as u64,
            state: low >> TICK_BITS,
            tick: low & TICK_MASK,
        }
    }
}

#[inline(always)]
fn encode(key: u64, state: u64, tick: u64) -> u128 {
    ((key as u128) << 64) | u128::from((state << TICK_BITS) | (tick & TICK_MASK))
}

/// A lock-free set of up to `N` `u64` keys, each remembered for `window` ticks from its first
/// sighting. `N` must be a power of two; a key may live in `PROBE` consecutive slots.
pub struct DedupTable<const N: usize, const PROBE: usize = 16> {
    window: u64,
    /// `slots[i]` is `encode(key, state, tick)`, the truth about slot `i`. EMPTY slots are all
    /// zero and only ever leave that state, which is what lets a probe stop at the first one.
    slots: CacheAligned<[AtomicU128; N]>,
    /// `tags[i]` is `generation << 16 | fingerprint(key)` of the last key claimed into slot
    /// `i`; 0 while the slot was never claimed. Probes read these cheap words and load the
    /// 16-byte slot only where the fingerprint matches (on x86_64 a 16-byte atomic load is
    /// an out-of-line call). A claimer publishes its tag only by CAS from a value it read
    /// while its pending entry still held the slot, and the generation rises with every
    /// write, so a claimer that lost the slot can never overwrite a newer owner's tag.
    tags: CacheAligned<[AtomicU64; N]>,
}

/// Aligns an array to a cache line. Probe windows start at a multiple of [`GROUP`] slots,
/// so a default window's 16 tags (32 bytes) sit in one 64-byte line for three of the four
/// possible starts, and windows still overlap (a crowded group spills into the next).
#[repr(C, align(64))]
struct CacheAligned<T>(T);

/// Probe windows start at a multiple of this many slots.
const GROUP: usize = 8;

/// A 16-bit fingerprint of the key, never 0. Keys that share one (1 in 32768) cost an extra
/// slot load, never a wrong answer: the 16-byte slot word holds the whole key.
#[inline(always)]
const fn fingerprint(key: u64) -> u64 {
    // A different multiplier from `home`, so keys sharing a home still differ here.
    (key.wrapping_mul(0xD6E8_FEB8_6659_FD93) >> 48) | 1
}

const FINGERPRINT_MASK: u64 = 0xFFFF;

/// The tag word that follows `current` for a slot now holding `key`: next generation.
#[inline(always)]
const fn next_tag(current: u64, key: u64) -> u64 {
    ((current >> 16).wrapping_add(1) << 16) | fingerprint(key)
}

impl<const N: usize, const PROBE: usize> DedupTable<N, PROBE> {
    const MASK: usize = N - 1;
    /// Probe length actually used: `PROBE`, at most `N`.
    const PROBE_LEN: usize = if PROBE < N { PROBE } else { N };

    const_fn! {
        /// An empty table remembering keys for `window_ticks` ticks (at least 1).
        ///
        /// `N` must be a power of two and `PROBE` at least 1 (checked at compile time).
        pub fn new(window_ticks: u64) -> Self {
            const { assert!(N.is_power_of_two(), "DedupTable capacity must be a power of two") };
            const { assert!(PROBE > 0, "DedupTable probe length must be at least 1") };
            Self {
                window: if window_ticks == 0 { 1 } else if window_ticks > MAX_WINDOW { MAX_WINDOW } else { window_ticks },
                slots: CacheAligned(array_of!(N, AtomicU128::new(0))),
                tags: CacheAligned(array_of!(N, AtomicU64::new(0))),
            }
        }
    }

    /// Number of slots, `N`.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// The window in ticks.
    pub const fn window(&self) -> u64 {
        self.window
    }

    #[inline(always)]
    pub(crate) fn home(key: u64) -> usize {
        // Fibonacci hashing: sequential ids spread over the table; take the high bits. The
        // window starts on a group boundary so its tags fill whole cache lines.
        let h = key.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let group_mask = if N >= GROUP { !(GROUP - 1) } else { !0 };
        (h >> (64 - N.trailing_zeros().max(1))) as usize & Self::MASK & group_mask
    }

    /// Whether an entry first seen at `tick` is still inside the window at `now`. Ticks live
    /// modulo 2^62: an age in the upper half of that range means `now` is behind `tick`
    /// (clocks of different callers disagree), which counts as inside the window.
    #[inline(always)]
    fn live(&self, tick: u64, now: u64) -> bool {
        let age = now.wrapping_sub(tick) & TICK_MASK;
        age < self.window || age > MAX_WINDOW
    }

    /// The age at `now` of an entry first seen at `tick`; 0 when `now` is behind `tick`
    /// (clocks disagreeing count as brand new, see [`live`](Self::live)).
    #[inline(always)]
    fn age(&self, tick: u64, now: u64) -> u64 {
        let age = now.wrapping_sub(tick) & TICK_MASK;
        if age > MAX_WINDOW { 0 } else { age }
    }

    /// [`check_and_insert`](Self::check_and_insert) for a caller that owns the table
    /// (`&mut self`, e.g. the one processor thread that deduplicates a lane): the same answers
    /// and the same slot format, through plain reads and writes instead of atomic
    /// read-modify-writes. Shared and exclusive use can alternate freely.
    #[inline]
    pub fn check_and_insert_mut(&mut self, key: u64, now: u64) -> Verdict {
        #[cfg(loom)]
        {
            self.check_and_insert(key, now)
        }
        #[cfg(not(loom))]
        {
            let now = now & TICK_MASK;
            let home = Self::home(key);
            let wanted = fingerprint(key);
            let mut free = None;
            // The oldest live entry seen, (age, index): the victim when nothing is free.
            let mut oldest: Option<(u64, usize)> = None;
            for dist in 0..Self::PROBE_LEN {
                let index = (home + dist) & Self::MASK;
                let t = self.tags.0[index].with_mut(|t| *t);
                if t == 0 {
                    // Without concurrent callers a zero tag means EMPTY: nothing beyond.
                    free = free.or(Some(index));
                    break;
                }
                if t & FINGERPRINT_MASK == wanted || free.is_none() {
                    let e = Entry::decode(self.slots.0[index].with_mut(|w| *w));
                    let live = e.state == COMMITTED && self.live(e.tick, now);
                    if live && e.key == key {
                        return Verdict::Duplicate;
                    }
                    // No PENDING entry exists while we hold `&mut`: every shared call
                    // resolves its own before returning.
                    if !live && free.is_none() {
                        free = Some(index);
                    }
                    if live {
                        let age = self.age(e.tick, now);
                        if oldest.is_none_or(|(a, _)| age > a) {
                            oldest = Some((age, index));
                        }
                    }
                }
            }
            // With no free slot every slot of the window was read above (`free` was None),
            // so `oldest` is the oldest live key of the window.
            let (index, verdict) = match (free, oldest) {
                (Some(index), _) => (index, Verdict::New),
                (None, Some((evicted_age, index))) => (index, Verdict::NewEvicting { evicted_age }),
                (None, None) => unreachable!("a window without a free slot holds live keys"),
            };
            self.slots.0[index].with_mut(|w| *w = encode(key, COMMITTED, now));
            self.tags.0[index].with_mut(|t| *t = next_tag(*t, key));
            verdict
        }
    }

    /// Starts loading the cache lines a lookup of `key` reads (its probe window's tags and
    /// slots), so that a [`check_and_insert_mut`](Self::check_and_insert_mut) of `key` a
    /// little later finds them in cache. A table far larger than the caches otherwise makes
    /// every lookup wait for memory, and once the table is full (every window slot live) a
    /// lookup reads the whole window to find the oldest entry. A hint only: nothing in the
    /// table changes; without SSE's `prefetcht0` (other targets, Miri, loom) it does nothing.
    #[inline(always)]
    pub fn prefetch(&self, key: u64) {
        #[cfg(all(target_arch = "x86_64", target_feature = "sse", not(miri), not(loom)))]
        {
            use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            const LINE: usize = 64;
            let home = Self::home(key);
            let tags_per_line = LINE / core::mem::size_of::<AtomicU64>();
            let slots_per_line = LINE / core::mem::size_of::<AtomicU128>();
            for dist in (0..Self::PROBE_LEN).step_by(tags_per_line) {
                let tag: *const AtomicU64 = &self.tags.0[(home + dist) & Self::MASK];
                // SAFETY: `tag` points to an element of the table (a bounds-checked
                // reference); a prefetch reads nothing into the program and cannot fault.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(tag.cast()) };
            }
            for dist in (0..Self::PROBE_LEN).step_by(slots_per_line) {
                let slot: *const AtomicU128 = &self.slots.0[(home + dist) & Self::MASK];
                // SAFETY: as above, an element of the table; prefetching cannot fault.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(slot.cast()) };
            }
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "sse", not(miri), not(loom))))]
        let _ = key;
    }

    /// Forgets the sighting of `key` first seen at tick `first_seen`: that entry (if it is
    /// still there) becomes a free slot, so the key is new again at once; an entry of the
    /// same key recorded at another tick stays. Returns whether an entry was removed.
    ///
    /// The transactional processor calls this when an event it admitted could not be
    /// stored after all (dead-lettered), so the producer's retransmission is not dropped as
    /// a duplicate of an event that was never stored. Exclusive (`&mut self`) only: with
    /// concurrent inserters a removal could race a pending entry's rescan.
    pub fn forget_mut(&mut self, key: u64, first_seen: u64) -> bool {
        let home = Self::home(key);
        let wanted = fingerprint(key);
        for dist in 0..Self::PROBE_LEN {
            let index = (home + dist) & Self::MASK;
            let t = self.tags.0[index].load(Ordering::Relaxed);
            if t == 0 {
                return false; // never claimed: nothing stored past here
            }
            if t & FINGERPRINT_MASK != wanted {
                continue;
            }
            let word = self.slots.0[index].load(Ordering::Relaxed);
            let e = Entry::decode(word);
            if e.key == key && e.state == COMMITTED && e.tick == first_seen & TICK_MASK {
                // `&mut self`: no other caller, so this CAS cannot fail; the tag keeps its
                // fingerprint (a filter only; probes read the tombstone and move on).
                let _ = self.slots.0[index].compare_exchange(
                    word,
                    encode(key, TOMBSTONE, e.tick),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                return true;
            }
        }
        false
    }

    /// Calls `f(distance, index)` for each slot of `key`'s probe window whose tag matches,
    /// stopping at the first never-claimed slot or when `f` returns `Some`.
    #[inline(always)]
    fn scan_tags<R>(
        &self,
        key: u64,
        home: usize,
        mut f: impl FnMut(usize, usize) -> Option<R>,
    ) -> Option<R> {
        let wanted = fingerprint(key);
        for dist in 0..Self::PROBE_LEN {
            let index = (home + dist) & Self::MASK;
            let t = self.tags.0[index].load(Ordering::Acquire);
            if t & FINGERPRINT_MASK == wanted {
                if let Some(r) = f(dist, index) {
                    return Some(r);
                }
            } else if t == 0 && self.slots.0[index].load(Ordering::SeqCst) == 0 {
                // Truly EMPTY (not just claimed a moment ago with its tag not yet stored):
                // nothing was ever stored past here for a key probing this far.
                return None;
            }
        }
        None
    }

    /// Records `key` as seen at tick `now` unless it was first seen within the window.
    /// See [`Verdict`] and the module docs for the exact rules.
    #[inline]
    pub fn check_and_insert(&self, key: u64, now: u64) -> Verdict {
        let now = now & TICK_MASK;
        let home = Self::home(key);
        loop {
            // 1. Is the key here? A pending entry counts: its inserter will report New.
            let present = self.scan_tags(key, home, |_, index| {
                let e = Entry::decode(self.slots.0[index].load(Ordering::SeqCst));
                let here = e.key == key
                    && (e.state == PENDING || (e.state == COMMITTED && self.live(e.tick, now)));
                here.then_some(())
            });
            if present.is_some() {
                return Verdict::Duplicate;
            }

            // 2. The first slot we may take: EMPTY, TOMBSTONE, or committed and expired;
            // failing that, the oldest committed live entry, evicted.
            let mut free = None;
            let mut oldest: Option<(u64, usize, usize, u128)> = None;
            for dist in 0..Self::PROBE_LEN {
                let index = (home + dist) & Self::MASK;
                let word = self.slots.0[index].load(Ordering::SeqCst);
                let e = Entry::decode(word);
                let reusable = match e.state {
                    EMPTY | TOMBSTONE => true,
                    COMMITTED => !self.live(e.tick, now),
                    _ => false,
                };
                if reusable {
                    free = Some((dist, index, word));
                    break;
                }
                if e.key == key {
                    // Inserted since step 1 (pending or committed and live): never a
                    // victim, it is this very key.
                    return Verdict::Duplicate;
                }
                if e.state == COMMITTED {
                    let age = self.age(e.tick, now);
                    if oldest.is_none_or(|(a, ..)| age > a) {
                        oldest = Some((age, dist, index, word));
                    }
                }
            }
            let (dist, index, seen, evicted) = match (free, oldest) {
                (Some((dist, index, word)), _) => (dist, index, word, None),
                (None, Some((age, dist, index, word))) => (dist, index, word, Some(age)),
                (None, None) => {
                    // Every slot holds a pending insert: their inserters finish without
                    // waiting for anyone, then there is a committed entry to evict.
                    spin_loop();
                    continue;
                }
            };

            // 3. Claim it with a pending entry, then publish its tag.
            let mine = encode(key, PENDING, now);
            if self.slots.0[index]
                .compare_exchange(seen, mine, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                spin_loop();
                continue; // the slot changed under us: look again
            }
            if !self.publish_tag(index, key, mine) {
                // A nearer inserter of this key aborted our entry and the slot has moved on:
                // that inserter reports New.
                return Verdict::Duplicate;
            }
            // Tag write, SeqCst fence, then loads (below): of two racing inserters, the one
            // whose fence comes second in the fences' total order sees the other's tag (C11's
            // fence rule; loom models SeqCst fences but treats SeqCst accesses as AcqRel).
            fence(Ordering::SeqCst);

            // 4. Rescan for the same key inserted concurrently.
            if !self.wins_race(key, now, home, dist) {
                // Retract ours. A failed CAS means a nearer inserter already aborted us.
                let _ = self.slots.0[index].compare_exchange(
                    mine,
                    encode(key, TOMBSTONE, now),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
                return Verdict::Duplicate;
            }

            // 5. Commit. Fails only if a nearer inserter of the same key aborted us; it will
            // report New.
            return match self.slots.0[index].compare_exchange(
                mine,
                encode(key, COMMITTED, now),
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => match evicted {
                    None => Verdict::New,
                    Some(evicted_age) => Verdict::NewEvicting { evicted_age },
                },
                Err(_) => Verdict::Duplicate,
            };
        }
    }

    /// Writes the tag of `key` into slot `index` while our pending word `mine` still holds
    /// the slot. Each try reads the tag, checks the slot, then CASes from what it read, so a
    /// write can only succeed if no later owner wrote in between; the last owner's write
    /// always lands. Returns false once the slot no longer holds `mine`.
    fn publish_tag(&self, index: usize, key: u64, mine: u128) -> bool {
        loop {
            let current = self.tags.0[index].load(Ordering::Acquire);
            if self.slots.0[index].load(Ordering::SeqCst) != mine {
                return false;
            }
            // Release: whoever reads this tag also sees the pending word it points to.
            if self.tags.0[index]
                .compare_exchange(
                    current,
                    next_tag(current, key),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                return true;
            }
            spin_loop();
        }
    }

    /// After claiming the slot at probe distance `mine` for `key`: false if another entry of
    /// the key must win (a live committed one, or a pending one nearer home); pending ones
    /// farther from home are aborted on the way.
    fn wins_race(&self, key: u64, now: u64, home: usize, mine: usize) -> bool {
        let lost = self.scan_tags(key, home, |dist, index| {
            if dist == mine {
                return None;
            }
            loop {
                let word = self.slots.0[index].load(Ordering::SeqCst);
                let e = Entry::decode(word);
                if e.key != key || e.state == TOMBSTONE || e.state == EMPTY {
                    return None;
                }
                match e.state {
                    PENDING if dist < mine => return Some(()),
                    PENDING => {
                        // Farther from home: abort it. If the CAS fails, look at it again.
                        if self.slots.0[index]
                            .compare_exchange(
                                word,
                                encode(key, TOMBSTONE, e.tick),
                                Ordering::SeqCst,
                                Ordering::SeqCst,
                            )
                            .is_ok()
                        {
                            return None;
                        }
                    }
                    _ if self.live(e.tick, now) => return Some(()), // committed and live
                    _ => return None,                               // committed, expired
                }
            }
        });
        lost.is_none()
    }
}

impl<const N: usize, const PROBE: usize> fmt::Debug for DedupTable<N, PROBE> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupTable")
            .field("capacity", &N)
            .field("probe", &Self::PROBE_LEN)
            .field("window", &self.window)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
