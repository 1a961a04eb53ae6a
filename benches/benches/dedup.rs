//! Duplicate checks on one thread (pinned to CPU 0): pinstream `DedupTable<65536>`, shared
//! (`check_and_insert(&self)`, lock-free) and owned (`check_and_insert_mut(&mut self)`), vs a
//! `Mutex<HashSet<u64>>` (no window) vs a `Mutex<HashMap<u64, u64>>` remembering each key's
//! first-seen tick (a window with expiry, swept every `window` ticks so it stays bounded).
//! The std maps use the default hasher (SipHash), as a user would.
//!
//! - `hit`: 1024 keys recorded beforehand, each lookup finds one within the window
//!   (`Duplicate`).
//! - `miss_fresh`: a new key each time into an empty table, refilled from empty every
//!   16384 keys (25 % of the slots; the refill is not timed): a never-used table.
//! - `miss_steady`: a new key each time, one tick per key, window 16384 ticks: about 16384
//!   keys live, older ones expire and their slots are reused. Warmed up with 8 x 65536 keys
//!   first, so every slot has been used. (`HashSet` has no expiry: not in this case.)
//!
//! Keys are a counter passed through `mix64` (random-looking). Every call's verdict is
//! checked: one compare per call, in every variant, and a panic after the sample if wrong.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use pinstream_benches::{CPU_A, mix64, pin_or_warn};
use pinstream_core::dedup::{DedupTable, Verdict};

const SLOTS: usize = 65536;
type Table = DedupTable<SLOTS>;

const HIT_KEYS: u64 = 1024;
const FRESH_CHUNK: u64 = 16_384;
const STEADY_WINDOW: u64 = 16_384;
const STEADY_WARM_UP: u64 = 8 * SLOTS as u64;
/// "Forever" for the cases without expiry.
const NO_EXPIRY: u64 = u64::MAX;

/// The simplest peer: a locked set, no window.
struct LockedSet(Mutex<HashSet<u64>>);

impl LockedSet {
    fn new() -> Self {
        Self(Mutex::new(HashSet::with_capacity(FRESH_CHUNK as usize)))
    }

    /// `New` when `key` was not there (and now is), else `Duplicate`.
    #[inline]
    fn check_and_insert(&self, key: u64) -> Verdict {
        verdict(self.0.lock().expect("not poisoned").insert(key))
    }

    fn clear(&self) {
        self.0.lock().expect("not poisoned").clear();
    }
}

/// The peer with DedupTable's semantics: key -> first-seen tick; a key whose tick is
/// `window` or more ticks old counts as new (and its tick is reset). Every `window` ticks
/// expired entries are swept out, so it holds at most about 2 x the keys of one window.
struct LockedExpiringMap {
    window: u64,
    inner: Mutex<ExpiringInner>,
}

struct ExpiringInner {
    map: HashMap<u64, u64>,
    next_sweep: u64,
}

impl LockedExpiringMap {
    fn new(window: u64, capacity: usize) -> Self {
        Self {
            window,
            inner: Mutex::new(ExpiringInner {
                map: HashMap::with_capacity(capacity),
                next_sweep: 0,
            }),
        }
    }

    /// `New` when `key` was not seen within the window (and is now recorded at `now`), else
    /// `Duplicate`.
    #[inline]
    fn check_and_insert(&self, key: u64, now: u64) -> Verdict {
        let window = self.window;
        let mut inner = self.inner.lock().expect("not poisoned");
        if now >= inner.next_sweep {
            inner
                .map
                .retain(|_, first| now.saturating_sub(*first) < window);
            inner.next_sweep = now.saturating_add(window);
        }
        verdict(match inner.map.entry(key) {
            Entry::Occupied(mut e) => {
                if now.saturating_sub(*e.get()) < window {
                    false
                } else {
                    *e.get_mut() = now;
                    true
                }
            }
            Entry::Vacant(e) => {
                e.insert(now);
                true
            }
        })
    }

    fn clear(&self) {
        let mut inner = self.inner.lock().expect("not poisoned");
        inner.map.clear();
        inner.next_sweep = 0;
    }
}

/// The peers' answer as a [`Verdict`].
#[inline(always)]
fn verdict(new: bool) -> Verdict {
    if new {
        Verdict::New
    } else {
        Verdict::Duplicate
    }
}

/// `NewEvicting` verdicts (the table was full) and calls of the miss benches since the last [`report_fulls`]: `Full` is
/// legitimate (all 16 probe slots live) but should stay rare; it is counted, not hidden.
static FULLS: AtomicU64 = AtomicU64::new(0);
static MISS_CALLS: AtomicU64 = AtomicU64::new(0);

/// Verdicts of fresh keys: `Duplicate` is a bug (panics), `NewEvicting` is counted.
#[derive(Default)]
struct Tally {
    calls: u64,
    duplicates: u64,
    fulls: u64,
}

impl Tally {
    #[inline(always)]
    fn add(&mut self, v: Verdict) {
        self.calls += 1;
        self.duplicates += u64::from(v == Verdict::Duplicate);
        self.fulls += u64::from(matches!(v, Verdict::NewEvicting { .. }));
    }

    fn check(self) {
        assert_eq!(self.duplicates, 0, "a fresh key was reported Duplicate");
        FULLS.fetch_add(self.fulls, Ordering::Relaxed);
        MISS_CALLS.fetch_add(self.calls, Ordering::Relaxed);
    }
}

/// Prints how many `NewEvicting` verdicts the last bench saw (if any) and resets the counters.
fn report_fulls(bench: &str) {
    let fulls = FULLS.swap(0, Ordering::Relaxed);
    let calls = MISS_CALLS.swap(0, Ordering::Relaxed);
    if fulls > 0 {
        eprintln!("note: {bench}: {fulls} evictions (table full) in {calls} calls");
    }
}

/// Times `iters` lookups of the [`HIT_KEYS`] recorded keys through `check`, each of which
/// must answer `Duplicate`.
fn time_hits(b: &mut criterion::Bencher<'_>, mut check: impl FnMut(u64) -> Verdict) {
    b.iter_custom(|iters| {
        let mut wrong = 0u64;
        let start = Instant::now();
        for i in 0..iters {
            wrong += u64::from(check(mix64(i % HIT_KEYS)) != Verdict::Duplicate);
        }
        let elapsed = start.elapsed();
        assert_eq!(wrong, 0, "a hit was not reported as Duplicate");
        elapsed
    });
}

fn hit(c: &mut Criterion) {
    let mut group = c.benchmark_group("dedup_hit");
    group.throughput(Throughput::Elements(1));

    let table = Box::new(Table::new(NO_EXPIRY));
    for k in 0..HIT_KEYS {
        assert_eq!(table.check_and_insert(mix64(k), 0), Verdict::New);
    }
    group.bench_function("pinstream_dedup_table", |b| {
        time_hits(b, |key| table.check_and_insert(key, 1));
    });

    let mut owned = Box::new(Table::new(NO_EXPIRY));
    for k in 0..HIT_KEYS {
        assert_eq!(owned.check_and_insert_mut(mix64(k), 0), Verdict::New);
    }
    group.bench_function("pinstream_dedup_table_mut", |b| {
        time_hits(b, |key| owned.check_and_insert_mut(key, 1));
    });

    let set = LockedSet::new();
    for k in 0..HIT_KEYS {
        assert_eq!(set.check_and_insert(mix64(k)), Verdict::New);
    }
    group.bench_function("mutex_hashset", |b| {
        time_hits(b, |key| set.check_and_insert(key));
    });

    let map = LockedExpiringMap::new(NO_EXPIRY, HIT_KEYS as usize);
    for k in 0..HIT_KEYS {
        assert_eq!(map.check_and_insert(mix64(k), 0), Verdict::New);
    }
    group.bench_function("mutex_hashmap_expiry", |b| {
        time_hits(b, |key| map.check_and_insert(key, 1));
    });
    group.finish();
}

/// Times `iters` calls of `insert(state, key)` with fresh keys, calling `reset(state)`
/// (untimed) before every [`FRESH_CHUNK`] of them.
fn fresh_chunks<S>(
    iters: u64,
    next_key: &mut u64,
    state: &mut S,
    reset: impl Fn(&mut S),
    insert: impl Fn(&mut S, u64) -> Verdict,
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    let mut tally = Tally::default();
    while left > 0 {
        let n = left.min(FRESH_CHUNK);
        reset(state);
        let first = *next_key;
        let start = Instant::now();
        for i in first..first + n {
            tally.add(insert(state, mix64(i)));
        }
        total += start.elapsed();
        *next_key += n;
        left -= n;
    }
    tally.check();
    total
}

fn miss_fresh(c: &mut Criterion) {
    let mut group = c.benchmark_group("dedup_miss_fresh");
    group.throughput(Throughput::Elements(1));

    let mut table = Box::new(Table::new(NO_EXPIRY));
    let mut next_key = 0u64;
    group.bench_function("pinstream_dedup_table", |b| {
        b.iter_custom(|iters| {
            fresh_chunks(
                iters,
                &mut next_key,
                &mut table,
                |t| **t = Table::new(NO_EXPIRY),
                |t, key| t.check_and_insert(key, 0),
            )
        });
    });

    report_fulls("dedup_miss_fresh/pinstream_dedup_table");

    group.bench_function("pinstream_dedup_table_mut", |b| {
        b.iter_custom(|iters| {
            fresh_chunks(
                iters,
                &mut next_key,
                &mut table,
                |t| **t = Table::new(NO_EXPIRY),
                |t, key| t.check_and_insert_mut(key, 0),
            )
        });
    });

    report_fulls("dedup_miss_fresh/pinstream_dedup_table_mut");

    let mut set = LockedSet::new();
    group.bench_function("mutex_hashset", |b| {
        b.iter_custom(|iters| {
            fresh_chunks(
                iters,
                &mut next_key,
                &mut set,
                |s| s.clear(),
                |s, key| s.check_and_insert(key),
            )
        });
    });

    let mut map = LockedExpiringMap::new(NO_EXPIRY, FRESH_CHUNK as usize);
    group.bench_function("mutex_hashmap_expiry", |b| {
        b.iter_custom(|iters| {
            fresh_chunks(
                iters,
                &mut next_key,
                &mut map,
                |m| m.clear(),
                |m, key| m.check_and_insert(key, 0),
            )
        });
    });
    group.finish();
}

/// Times `iters` calls of `insert(key, now)`, each with a fresh key and the next tick.
fn steady(iters: u64, clock: &mut u64, mut insert: impl FnMut(u64, u64) -> Verdict) -> Duration {
    let first = *clock;
    let mut tally = Tally::default();
    let start = Instant::now();
    for now in first..first + iters {
        tally.add(insert(mix64(now), now));
    }
    let elapsed = start.elapsed();
    *clock += iters;
    tally.check();
    elapsed
}

fn miss_steady(c: &mut Criterion) {
    let mut group = c.benchmark_group("dedup_miss_steady");
    group.throughput(Throughput::Elements(1));

    let table = Box::new(Table::new(STEADY_WINDOW));
    let mut clock = 0u64;
    steady(STEADY_WARM_UP, &mut clock, |key, now| {
        table.check_and_insert(key, now)
    });
    group.bench_function("pinstream_dedup_table", |b| {
        b.iter_custom(|iters| {
            steady(iters, &mut clock, |key, now| {
                table.check_and_insert(key, now)
            })
        });
    });

    report_fulls("dedup_miss_steady/pinstream_dedup_table");

    let mut owned = Box::new(Table::new(STEADY_WINDOW));
    let mut clock = 0u64;
    steady(STEADY_WARM_UP, &mut clock, |key, now| {
        owned.check_and_insert_mut(key, now)
    });
    group.bench_function("pinstream_dedup_table_mut", |b| {
        b.iter_custom(|iters| {
            steady(iters, &mut clock, |key, now| {
                owned.check_and_insert_mut(key, now)
            })
        });
    });

    report_fulls("dedup_miss_steady/pinstream_dedup_table_mut");

    let map = LockedExpiringMap::new(STEADY_WINDOW, 2 * STEADY_WINDOW as usize);
    let mut clock = 0u64;
    steady(STEADY_WARM_UP, &mut clock, |key, now| {
        map.check_and_insert(key, now)
    });
    group.bench_function("mutex_hashmap_expiry", |b| {
        b.iter_custom(|iters| steady(iters, &mut clock, |key, now| map.check_and_insert(key, now)));
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    pin_or_warn(CPU_A);
    hit(c);
    miss_fresh(c);
    miss_steady(c);
}

fn main() {
    pinstream_benches::run(benches);
}
