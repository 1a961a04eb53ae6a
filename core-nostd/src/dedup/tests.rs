use core::sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering as StdOrdering};
use std::sync::Barrier;
use std::thread;
use std::vec::Vec;

use super::*;

const KEYS: u64 = if cfg!(miri) { 40 } else { 20_000 };

#[test]
fn window_edges_count_from_first_sighting() {
    let t: DedupTable<64> = DedupTable::new(100);
    assert_eq!(t.check_and_insert(1, 1_000), Verdict::New);
    assert_eq!(t.check_and_insert(1, 1_000), Verdict::Duplicate);
    assert_eq!(
        t.check_and_insert(1, 1_099),
        Verdict::Duplicate,
        "window - 1"
    );
    assert_eq!(
        t.check_and_insert(1, 1_100),
        Verdict::New,
        "exactly window: expired"
    );
    // The re-insert at 1_100 restarted the window there.
    assert_eq!(t.check_and_insert(1, 1_199), Verdict::Duplicate);
    assert_eq!(t.check_and_insert(1, 1_201), Verdict::New, "window + 1");
}

#[test]
fn a_repeat_does_not_extend_the_window() {
    let t: DedupTable<64> = DedupTable::new(10);
    assert_eq!(t.check_and_insert(5, 0), Verdict::New);
    for now in 1..10 {
        assert_eq!(t.check_and_insert(5, now), Verdict::Duplicate);
    }
    assert_eq!(t.check_and_insert(5, 10), Verdict::New);
}

#[test]
fn key_zero_and_tick_zero_are_ordinary() {
    let t: DedupTable<8> = DedupTable::new(5);
    assert_eq!(t.check_and_insert(0, 0), Verdict::New);
    assert_eq!(t.check_and_insert(0, 4), Verdict::Duplicate);
    assert_eq!(t.check_and_insert(u64::MAX, 0), Verdict::New);
    assert_eq!(t.check_and_insert(u64::MAX, 1), Verdict::Duplicate);
}

#[test]
fn clock_behind_the_record_counts_as_inside_the_window() {
    let t: DedupTable<8> = DedupTable::new(5);
    assert_eq!(t.check_and_insert(3, 100), Verdict::New);
    assert_eq!(t.check_and_insert(3, 90), Verdict::Duplicate);
}

#[test]
fn ticks_wrap_modulo_2_pow_62_without_freezing_entries() {
    let t: DedupTable<8> = DedupTable::new(100);
    let start = (1u64 << 62) - 10;
    assert_eq!(t.check_and_insert(4, start), Verdict::New);
    assert_eq!(
        t.check_and_insert(4, start + 99),
        Verdict::Duplicate,
        "window - 1, across"
    );
    assert_eq!(
        t.check_and_insert(4, start + 100),
        Verdict::New,
        "window, across the wrap"
    );
    assert_eq!(
        t.check_and_insert(4, u64::MAX),
        Verdict::Duplicate,
        "u64::MAX is tick 2^62 - 1"
    );
    // A huge window is clamped to half the tick range.
    let t: DedupTable<8> = DedupTable::new(u64::MAX);
    assert_eq!(t.window(), (1u64 << 61) - 1);
}

#[test]
fn full_window_evicts_the_oldest_and_present_keys_stay_duplicates() {
    let t: DedupTable<4, 4> = DedupTable::new(50);
    for (k, tick) in [(0, 10), (1, 12), (2, 11), (3, 13)] {
        assert_eq!(t.check_and_insert(k, tick), Verdict::New);
    }
    // Every slot live: the oldest (key 0, first seen at 10) makes room, with its age.
    assert_eq!(
        t.check_and_insert(99, 20),
        Verdict::NewEvicting { evicted_age: 10 }
    );
    assert_eq!(t.check_and_insert(99, 21), Verdict::Duplicate, "recorded");
    for k in 1..4 {
        assert_eq!(
            t.check_and_insert(k, 21),
            Verdict::Duplicate,
            "never a false New for a key still present"
        );
    }
    // The evicted key is forgotten early: new again, evicting the next oldest (key 2).
    assert_eq!(
        t.check_and_insert(0, 22),
        Verdict::NewEvicting { evicted_age: 11 }
    );
    // Once the window passes, expired slots are reused without eviction.
    assert_eq!(t.check_and_insert(7, 63), Verdict::New);
}

#[test]
fn probe_window_bounds_where_a_key_may_live() {
    // With PROBE = 1 each key has exactly one slot: a live neighbour there means Full.
    let t: DedupTable<1024, 1> = DedupTable::new(1_000);
    let mut full = 0;
    let mut new = 0;
    for k in 0..512u64 {
        match t.check_and_insert(k.wrapping_mul(0x2545_F491_4F6C_DD1D), 0) {
            Verdict::New => new += 1,
            Verdict::NewEvicting { evicted_age } => {
                assert_eq!(evicted_age, 0, "all seen at tick 0");
                full += 1;
            }
            Verdict::Duplicate => panic!("distinct keys"),
        }
    }
    assert_eq!(new + full, 512);
    assert!(
        full > 0,
        "direct-mapped at 50% load must collide (and evict)"
    );
    // With the default probe length the same load fits.
    let t: DedupTable<1024> = DedupTable::new(1_000);
    for k in 0..512u64 {
        assert_eq!(
            t.check_and_insert(k.wrapping_mul(0x2545_F491_4F6C_DD1D), 0),
            Verdict::New
        );
    }
}

#[test]
fn steady_stream_reuses_expired_slots_without_filling() {
    // 64 slots, window 16 ticks, one new key per tick: ~16 live keys at any time.
    let t: DedupTable<64> = DedupTable::new(16);
    for k in 0..(KEYS * 5) {
        let now = k;
        assert_eq!(t.check_and_insert(k, now), Verdict::New, "key {k}");
        if k >= 15 {
            assert_eq!(
                t.check_and_insert(k - 15, now),
                Verdict::Duplicate,
                "key {} at edge",
                k - 15
            );
        }
        if k >= 16 {
            // Its window just ended: a retry is New, and is recorded again.
            assert_eq!(t.check_and_insert(k - 16, now), Verdict::New);
        }
    }
}

const RACE_KEYS: u64 = if cfg!(miri) { 24 } else { 1_024 };

/// Runs `THREADS` threads that all insert keys `0..RACE_KEYS` at tick `now`, all in
/// the same order so that every key is raced by several threads at once, and returns how
/// many times each key was `New`.
fn race<const N: usize>(table: &DedupTable<N>, now: u64) -> Vec<usize> {
    const THREADS: usize = 4;
    let news: Vec<StdAtomicUsize> = (0..RACE_KEYS).map(|_| StdAtomicUsize::new(0)).collect();
    let start = Barrier::new(THREADS);
    thread::scope(|s| {
        for id in 0..THREADS as u64 {
            let (news, start) = (&news, &start);
            s.spawn(move || {
                start.wait();
                for i in 0..RACE_KEYS {
                    let _ = id; // same order in every thread: they race on each key
                    let key = i;
                    match table.check_and_insert(key, now) {
                        Verdict::New => {
                            news[key as usize].fetch_add(1, StdOrdering::Relaxed);
                        }
                        Verdict::Duplicate => {}
                        Verdict::NewEvicting { .. } => {
                            panic!("table sized for no eviction, key {key}")
                        }
                    }
                }
            });
        }
    });
    news.into_iter().map(StdAtomicUsize::into_inner).collect()
}

/// Threads insert the same keys at once into empty slots: each key is New exactly once.
#[test]
fn racing_inserts_give_exactly_one_new_per_key() {
    let table: DedupTable<8192> = DedupTable::new(1_000);
    for (key, n) in race(&table, 0).iter().enumerate() {
        assert_eq!(*n, 1, "key {key} was New {n} times");
    }
}

/// The same race where every slot first holds an expired entry, so inserts go through the
/// reuse path (CAS over an expired committed word) instead of filling EMPTY slots.
#[test]
fn racing_inserts_over_expired_slots_give_exactly_one_new_per_key() {
    let table: DedupTable<8192> = DedupTable::new(1_000);
    for (key, n) in race(&table, 0).iter().enumerate() {
        assert_eq!(*n, 1, "first round: key {key}");
    }
    // Every entry expired: each key must be New exactly once again.
    for (key, n) in race(&table, 5_000).iter().enumerate() {
        assert_eq!(*n, 1, "after expiry: key {key} was New {n} times");
    }
}

/// A seeded stream of keys (with repeats) and advancing ticks through the shared path, the
/// exclusive path, and a table alternating between them, against a plain map of the
/// specified semantics. The tables are sized so that `Full` never happens.
#[test]
fn shared_and_exclusive_paths_match_the_reference_model() {
    use std::collections::HashMap;
    const OPS: u64 = if cfg!(miri) { 300 } else { 200_000 };
    const WINDOW: u64 = 50;
    let shared: DedupTable<1024> = DedupTable::new(WINDOW);
    let mut exclusive: DedupTable<1024> = DedupTable::new(WINDOW);
    let mut mixed: DedupTable<1024> = DedupTable::new(WINDOW);
    let mut first_seen: HashMap<u64, u64> = HashMap::new();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut now = 0u64;
    for op in 0..OPS {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        now += rng % 3; // ticks advance by 0, 1 or 2
        let key = rng % 400; // about 50 keys live per window, many repeats
        let expected = match first_seen.get(&key) {
            Some(&t) if now - t < WINDOW => Verdict::Duplicate,
            _ => {
                first_seen.insert(key, now);
                Verdict::New
            }
        };
        assert_eq!(
            shared.check_and_insert(key, now),
            expected,
            "shared, op {op}"
        );
        assert_eq!(
            exclusive.check_and_insert_mut(key, now),
            expected,
            "exclusive, op {op}"
        );
        let got = if op % 2 == 0 {
            mixed.check_and_insert(key, now)
        } else {
            mixed.check_and_insert_mut(key, now)
        };
        assert_eq!(got, expected, "mixed, op {op}");
    }
}

#[test]
fn exclusive_path_eviction_and_edges() {
    let mut t: DedupTable<4, 4> = DedupTable::new(50);
    for (k, tick) in [(0, 11), (1, 10), (2, 12), (3, 13)] {
        assert_eq!(t.check_and_insert_mut(k, tick), Verdict::New);
    }
    // The oldest (key 1, first seen at 10) makes room.
    assert_eq!(
        t.check_and_insert_mut(99, 20),
        Verdict::NewEvicting { evicted_age: 10 }
    );
    for k in [0, 2, 3, 99] {
        assert_eq!(
            t.check_and_insert_mut(k, 60),
            Verdict::Duplicate,
            "present keys stay duplicates (window - 1 for key 0 is 60)"
        );
    }
    assert_eq!(
        t.check_and_insert_mut(0, 61),
        Verdict::New,
        "exactly window: an expired slot is reused, nothing evicted"
    );
    assert_eq!(
        t.check_and_insert(0, 62),
        Verdict::Duplicate,
        "shared path sees it"
    );
    // The shared and exclusive paths pick the same victim.
    let mut a: DedupTable<4, 4> = DedupTable::new(1_000);
    let b: DedupTable<4, 4> = DedupTable::new(1_000);
    for (k, tick) in [(5, 3), (6, 1), (7, 4), (8, 2)] {
        assert_eq!(a.check_and_insert_mut(k, tick), Verdict::New);
        assert_eq!(b.check_and_insert(k, tick), Verdict::New);
    }
    assert_eq!(
        a.check_and_insert_mut(9, 10),
        Verdict::NewEvicting { evicted_age: 9 }
    );
    assert_eq!(
        b.check_and_insert(9, 10),
        Verdict::NewEvicting { evicted_age: 9 }
    );
    assert!(
        a.check_and_insert_mut(6, 11).is_new(),
        "key 6 was the oldest"
    );
    assert!(b.check_and_insert(6, 11).is_new(), "key 6 was the oldest");
}

#[test]
fn forgotten_keys_are_new_again_and_others_stay() {
    // A small table so keys share probe windows: forgetting one must not hide the others.
    let mut t: DedupTable<16, 16> = DedupTable::new(1_000);
    for k in 0..12u64 {
        assert_eq!(t.check_and_insert_mut(k, 5), Verdict::New);
    }
    assert!(!t.forget_mut(3, 6), "another sighting's tick");
    assert!(t.forget_mut(3, 5));
    assert!(!t.forget_mut(3, 5), "already forgotten");
    assert!(!t.forget_mut(99, 5), "never inserted");
    for k in (0..12u64).filter(|&k| k != 3) {
        assert_eq!(t.check_and_insert_mut(k, 6), Verdict::Duplicate, "key {k}");
        assert_eq!(
            t.check_and_insert(k, 6),
            Verdict::Duplicate,
            "key {k} shared"
        );
    }
    assert_eq!(t.check_and_insert(3, 7), Verdict::New);
    assert_eq!(t.check_and_insert_mut(3, 8), Verdict::Duplicate);
}
