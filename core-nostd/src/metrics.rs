//! Counters and a fixed-bucket latency histogram: no heap, `const` constructors, usable in a
//! `static`, readable from any thread while one thread writes.
//!
//! | type | writers | an update costs |
//! | --- | --- | --- |
//! | [`Counter`] | **one** thread (any number of readers) | a relaxed load and a relaxed store |
//! | [`SharedCounter`] | any number of threads | one `fetch_add` |
//! | [`Histogram`] | **one** thread (any number of readers) | five relaxed load/store pairs |
//! | [`Snapshot`] | plain data, `&mut` | — |
//!
//! The single-writer types never use a read-modify-write instruction: a pinned worker that owns
//! its metrics pays for plain loads and stores only. Two threads writing one of them at once
//! lose updates (never memory safety): give each writer its own and sum or
//! [merge](Histogram::merge_from) them when reading.
//!
//! ## The histogram's buckets
//! Log-linear, with [`SUB_BITS`] = 4: values `0..32` each get an exact bucket; above, every
//! power of two `[2^e, 2^(e+1))` is split into 16 equal sub-buckets. That is
//! [`BUCKETS`] = (64 − 4 + 1) × 16 = **976** buckets covering all of `u64`, 7,808 bytes of
//! counts (7,840 for the whole [`Histogram`]). A percentile is reported as the **upper bound** of
//! the bucket that holds the rank (clamped to the exact maximum), so for a true value `v` the
//! reported `r` satisfies `v <= r` and `r - v < v / 16`: a relative error **below 6.25 %**,
//! zero below 32.
//!
//! ```
//! use pinstream_core::metrics::{Counter, Histogram};
//!
//! static EVENTS: Counter = Counter::new();
//! static LATENCY_NS: Histogram = Histogram::new();
//!
//! for ns in [120, 95, 3_000, 101, 99] {
//!     EVENTS.incr();
//!     LATENCY_NS.record(ns);
//! }
//! assert_eq!(EVENTS.get(), 5);
//! assert_eq!(LATENCY_NS.count(), 5);
//! assert_eq!(LATENCY_NS.max(), 3_000);
//! // The median is 101; its bucket is [100, 103], reported by its upper bound.
//! assert_eq!(LATENCY_NS.percentile(500_000), 103);
//! assert_eq!(LATENCY_NS.percentile(1_000_000), 3_000); // clamped to the exact max
//! ```

use core::fmt;

use crate::sync::{AtomicU64, Ordering, array_of, const_fn};

/// A `u64` counter for **one writer** thread and any number of readers.
///
/// [`add`](Self::add) is a relaxed load plus a relaxed store, not a read-modify-write: cheap,
/// and correct as long as only one thread adds at a time. Two concurrent writers lose
/// increments; use [`SharedCounter`] then. Wraps at 2^64 (584 years at 10^9 per second), so
/// differences between two readings taken with `wrapping_sub` stay right.
///
/// ```
/// use pinstream_core::metrics::Counter;
///
/// static DROPPED: Counter = Counter::new();
/// DROPPED.add(3);
/// DROPPED.incr();
/// assert_eq!(DROPPED.get(), 4);
/// ```
pub struct Counter {
    value: AtomicU64,
}

impl Counter {
    const_fn! {
        /// A counter at zero.
        pub fn new() -> Self {
            Self { value: AtomicU64::new(0) }
        }
    }

    /// Adds `n` (wrapping). Only one thread may add at a time; see the type docs.
    #[inline]
    pub fn add(&self, n: u64) {
        let v = self.value.load(Ordering::Relaxed);
        self.value.store(v.wrapping_add(n), Ordering::Relaxed);
    }

    /// Adds one. Only one thread may add at a time; see the type docs.
    #[inline]
    pub fn incr(&self) {
        self.add(1);
    }

    /// The current value, from any thread.
    #[inline]
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Counter").field(&self.get()).finish()
    }
}

/// A `u64` counter any number of threads may add to at once (one relaxed `fetch_add` per
/// update). Wraps at 2^64 like [`Counter`].
///
/// ```
/// use pinstream_core::metrics::SharedCounter;
///
/// static REJECTED: SharedCounter = SharedCounter::new();
/// std::thread::scope(|s| {
///     for _ in 0..4 {
///         s.spawn(|| REJECTED.incr());
///     }
/// });
/// assert_eq!(REJECTED.get(), 4);
/// ```
pub struct SharedCounter {
    value: AtomicU64,
}

impl SharedCounter {
    const_fn! {
        /// A counter at zero.
        pub fn new() -> Self {
            Self { value: AtomicU64::new(0) }
        }
    }

    /// Adds `n` (wrapping), from any thread.
    #[inline]
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one, from any thread.
    #[inline]
    pub fn incr(&self) {
        self.add(1);
    }

    /// The current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

impl Default for SharedCounter {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for SharedCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedCounter").field(&self.get()).finish()
    }
}

/// Linear sub-bucket bits: each power of two is split into `2^SUB_BITS` = 16 buckets.
pub const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
/// Number of histogram buckets: `(64 - SUB_BITS + 1) << SUB_BITS` = 976.
pub const BUCKETS: usize = ((64 - SUB_BITS + 1) as usize) << SUB_BITS;
/// Percentiles are given in parts per million: `500_000` is the median, `1_000_000` the max.
const MILLION: u64 = 1_000_000;

/// The bucket that holds `v`, in `0..BUCKETS`. Monotonic in `v`; `bucket_of(v) == v` for
/// `v < 32`; `bucket_of(u64::MAX) == BUCKETS - 1`.
#[inline]
pub const fn bucket_of(v: u64) -> usize {
    // Values with their top bit at position e >= 4 keep their top SUB_BITS + 1 bits (a
    // mantissa in 16..32) after shifting right by e - 4; smaller values are not shifted.
    let shift = (64 - v.leading_zeros()).saturating_sub(SUB_BITS + 1);
    ((shift as usize) << SUB_BITS) + (v >> shift) as usize
}

/// The smallest value in bucket `b`; `u64::MAX` for `b >= BUCKETS`.
#[inline]
pub const fn bucket_lower(b: usize) -> u64 {
    if b >= BUCKETS {
        return u64::MAX;
    }
    if b < 2 * SUB as usize {
        return b as u64;
    }
    let shift = (b >> SUB_BITS) as u32 - 1;
    let mantissa = SUB + (b as u64 & (SUB - 1));
    mantissa << shift
}

/// The largest value in bucket `b` (the value percentiles report); `u64::MAX` for the last
/// bucket and for `b >= BUCKETS`.
#[inline]
pub const fn bucket_upper(b: usize) -> u64 {
    if b >= BUCKETS {
        return u64::MAX;
    }
    if b < 2 * SUB as usize {
        return b as u64;
    }
    let shift = (b >> SUB_BITS) as u32 - 1;
    // Cannot overflow: the last bucket's lower bound is 31 << 59, its width 2^59.
    bucket_lower(b) + ((1u64 << shift) - 1)
}

/// The rank (1-based) of the `per_million` quantile among `total` values: the smallest rank
/// with at least that fraction of the values at or below it. `total` must be non-zero.
#[inline]
fn rank_of(total: u64, per_million: u32) -> u64 {
    let q = u64::from(per_million).min(MILLION);
    let rank = (u128::from(total) * u128::from(q)).div_ceil(u128::from(MILLION)) as u64;
    rank.max(1)
}

/// Walks the buckets (`count(b)` for each) to the one holding `per_million`'s rank among
/// `total` values, and reports its upper bound clamped to `max`. 0 when `total` is 0; `max`
/// when the buckets hold fewer than `total` (a racing reset).
#[inline]
fn percentile_of(total: u64, max: u64, per_million: u32, count: impl Fn(usize) -> u64) -> u64 {
    if total == 0 {
        return 0;
    }
    let rank = rank_of(total, per_million);
    let mut seen = 0u64;
    for b in 0..BUCKETS {
        seen = seen.saturating_add(count(b));
        if seen >= rank {
            return bucket_upper(b).min(max);
        }
    }
    max
}

/// A log-linear latency histogram of `u64` values (ticks, nanoseconds...) over the whole `u64`
/// range: 976 fixed buckets, relative error below 6.25 %, no heap, `const` constructible.
/// See the [module docs](self) for the bucket layout.
///
/// **One writer:** [`record`](Self::record), [`merge_from`](Self::merge_from) and
/// [`reset`](Self::reset) write with relaxed loads and stores, so only one thread may call
/// them at a time. Any thread may read at any time. A read racing with a write sees each
/// bucket and statistic either before or after that write, so [`count`](Self::count) and the
/// bucket totals may differ by the values in flight; percentiles are computed from the bucket
/// totals alone, so they are always those of some set of recorded values.
///
/// ```
/// use pinstream_core::metrics::Histogram;
///
/// let h = Histogram::new();
/// for v in 1..=1_000u64 {
///     h.record(v);
/// }
/// let p99 = h.percentile(990_000);
/// assert!((990..990 + 990 / 16).contains(&p99)); // true p99 is 990, reported within 6.25 %
/// assert_eq!(h.min(), 1);
/// assert_eq!(h.sum(), 500_500);
/// ```
pub struct Histogram {
    /// `buckets[b]`: how many recorded values fell in bucket `b` (see [`bucket_of`]).
    buckets: [AtomicU64; BUCKETS],
    count: AtomicU64,
    /// Wrapping sum of the recorded values.
    sum: AtomicU64,
    /// Smallest recorded value; `u64::MAX` while empty (so merging needs no special case).
    min: AtomicU64,
    /// Largest recorded value; 0 while empty.
    max: AtomicU64,
}

/// Single-writer add: a relaxed load and store, no read-modify-write.
#[inline(always)]
fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl Histogram {
    const_fn! {
        /// An empty histogram (usable in a `static`).
        pub fn new() -> Self {
            Self {
                buckets: array_of!(BUCKETS, AtomicU64::new(0)),
                count: AtomicU64::new(0),
                sum: AtomicU64::new(0),
                min: AtomicU64::new(u64::MAX),
                max: AtomicU64::new(0),
            }
        }
    }

    /// Records one value. Single writer: see the type docs.
    #[inline]
    pub fn record(&self, v: u64) {
        if let Some(bucket) = self.buckets.get(bucket_of(v)) {
            bump(bucket, 1);
        }
        bump(&self.count, 1);
        bump(&self.sum, v);
        if v < self.min.load(Ordering::Relaxed) {
            self.min.store(v, Ordering::Relaxed);
        }
        if v > self.max.load(Ordering::Relaxed) {
            self.max.store(v, Ordering::Relaxed);
        }
    }

    /// Number of recorded values.
    #[inline]
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Sum of the recorded values, wrapping at 2^64 (deltas between two readings taken with
    /// `wrapping_sub` stay exact).
    #[inline]
    pub fn sum(&self) -> u64 {
        self.sum.load(Ordering::Relaxed)
    }

    /// Smallest recorded value, exact; 0 when empty.
    #[inline]
    pub fn min(&self) -> u64 {
        let min = self.min.load(Ordering::Relaxed);
        if min == u64::MAX && self.count() == 0 {
            0
        } else {
            min
        }
    }

    /// Largest recorded value, exact; 0 when empty.
    #[inline]
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// How many recorded values fell in bucket `b` (0 for `b >= BUCKETS`), e.g. to export
    /// the histogram; the bucket spans [`bucket_lower`]`(b)..=`[`bucket_upper`]`(b)`.
    #[inline]
    pub fn bucket_count(&self, b: usize) -> u64 {
        self.buckets.get(b).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The `per_million` quantile (`500_000` = median, `990_000` = p99, `1_000_000` = max;
    /// larger values count as `1_000_000`): the upper bound of the bucket holding the value of
    /// rank `max(1, ceil(count * per_million / 10^6))`, clamped to [`max`](Self::max). For the
    /// true value `v` of that rank the result `r` satisfies `v <= r` and `r - v < v / 16`.
    /// 0 when empty.
    pub fn percentile(&self, per_million: u32) -> u64 {
        // Two passes over the buckets (total, then walk) instead of a copy: no 7.8 KB on the
        // stack. With the one writer only adding, the walk sees at least the total.
        let total = self
            .buckets
            .iter()
            .fold(0u64, |t, c| t.saturating_add(c.load(Ordering::Relaxed)));
        let count = |b: usize| self.bucket_count(b);
        let walked = percentile_of(total, u64::MAX, per_million, count);
        walked.min(self.max())
    }

    /// Adds every value recorded in `other` to `self` (buckets, count, sum, min, max). This
    /// writes `self`: call it from `self`'s one writer (e.g. an aggregator that owns the
    /// total and merges each worker's histogram into it). `other` may be written meanwhile;
    /// values it records during the merge may be counted or not.
    pub fn merge_from(&self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter().zip(other.buckets.iter()) {
            let n = theirs.load(Ordering::Relaxed);
            if n != 0 {
                bump(mine, n);
            }
        }
        bump(&self.count, other.count.load(Ordering::Relaxed));
        bump(&self.sum, other.sum.load(Ordering::Relaxed));
        let min = other.min.load(Ordering::Relaxed);
        if min < self.min.load(Ordering::Relaxed) {
            self.min.store(min, Ordering::Relaxed);
        }
        let max = other.max.load(Ordering::Relaxed);
        if max > self.max.load(Ordering::Relaxed) {
            self.max.store(max, Ordering::Relaxed);
        }
    }

    /// Empties the histogram. This writes: a [`record`](Self::record) running at the same
    /// time on another thread may survive in part (e.g. counted in its bucket but not in
    /// `count`), so reset from the writer thread, or accept that one value may be skewed.
    /// Readers racing a reset may see a mix of old and zeroed buckets.
    pub fn reset(&self) {
        for c in &self.buckets {
            c.store(0, Ordering::Relaxed);
        }
        self.count.store(0, Ordering::Relaxed);
        self.sum.store(0, Ordering::Relaxed);
        self.min.store(u64::MAX, Ordering::Relaxed);
        self.max.store(0, Ordering::Relaxed);
    }

    /// A plain-data copy of the histogram (7.8 KB: on small stacks prefer
    /// [`snapshot_into`](Self::snapshot_into) with a `Snapshot` kept elsewhere).
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::new();
        self.snapshot_into(&mut s);
        s
    }

    /// Overwrites `out` with a copy of the histogram. The snapshot's count is the total of
    /// its buckets, so its percentiles and count always agree.
    pub fn snapshot_into(&self, out: &mut Snapshot) {
        let mut total = 0u64;
        for (dst, src) in out.buckets.iter_mut().zip(self.buckets.iter()) {
            *dst = src.load(Ordering::Relaxed);
            total = total.saturating_add(*dst);
        }
        out.count = total;
        out.sum = self.sum();
        out.min = self.min.load(Ordering::Relaxed);
        out.max = self.max();
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count())
            .field("sum", &self.sum())
            .field("min", &self.min())
            .field("max", &self.max())
            .finish_non_exhaustive()
    }
}

/// A plain-data copy of a [`Histogram`] (bucket counts and statistics), with the same read
/// API. Taken with [`Histogram::snapshot`]; snapshots can be [merged](Self::merge).
///
/// ```
/// use pinstream_core::metrics::Histogram;
///
/// let h = Histogram::new();
/// h.record(7);
/// h.record(1_000);
/// let s = h.snapshot();
/// h.reset();
/// assert_eq!(s.count(), 2);
/// assert_eq!(s.percentile(500_000), 7);
/// assert_eq!(h.count(), 0);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Snapshot {
    buckets: [u64; BUCKETS],
    /// The sum of `buckets`.
    count: u64,
    sum: u64,
    /// `u64::MAX` while empty, as in [`Histogram`].
    min: u64,
    max: u64,
}

impl Snapshot {
    /// An empty snapshot.
    pub const fn new() -> Self {
        Self {
            buckets: [0; BUCKETS],
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Number of values (the total of the buckets).
    pub const fn count(&self) -> u64 {
        self.count
    }

    /// Wrapping sum of the values.
    pub const fn sum(&self) -> u64 {
        self.sum
    }

    /// Smallest value; 0 when empty.
    pub const fn min(&self) -> u64 {
        if self.count == 0 { 0 } else { self.min }
    }

    /// Largest value; 0 when empty.
    pub const fn max(&self) -> u64 {
        self.max
    }

    /// Values in bucket `b` (0 for `b >= BUCKETS`).
    pub const fn bucket_count(&self, b: usize) -> u64 {
        if b < BUCKETS { self.buckets[b] } else { 0 }
    }

    /// The `per_million` quantile, as [`Histogram::percentile`].
    pub fn percentile(&self, per_million: u32) -> u64 {
        percentile_of(self.count, self.max, per_million, |b| self.buckets[b])
    }

    /// Adds `other`'s values to `self`.
    pub fn merge(&mut self, other: &Snapshot) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *mine = mine.wrapping_add(*theirs);
        }
        self.count = self.count.wrapping_add(other.count);
        self.sum = self.sum.wrapping_add(other.sum);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("count", &self.count())
            .field("sum", &self.sum())
            .field("min", &self.min())
            .field("max", &self.max())
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
