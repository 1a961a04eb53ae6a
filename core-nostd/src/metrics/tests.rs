use core::sync::atomic::{AtomicBool as StdAtomicBool, Ordering as StdOrdering};
use std::thread;
use std::vec::Vec;

use super::*;
use crate::test_rng::Rng;

const VALUES: usize = if cfg!(miri) { 300 } else { 50_000 };
const ROUNDS: u64 = if cfg!(miri) { 2 } else { 20 };

#[test]
fn bucket_count_and_layout_constants() {
    assert_eq!(SUB_BITS, 4);
    assert_eq!(BUCKETS, 976);
    assert_eq!(core::mem::size_of::<[AtomicU64; BUCKETS]>(), 7_808);
    assert_eq!(
        core::mem::size_of::<Histogram>(),
        7_840,
        "as the module docs say"
    );
    assert_eq!(core::mem::size_of::<Snapshot>(), 7_840);
    assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    assert_eq!(bucket_upper(BUCKETS - 1), u64::MAX);
    assert_eq!(bucket_lower(BUCKETS - 1), 31 << 59);
}

#[test]
fn small_values_have_exact_buckets() {
    for v in 0..32u64 {
        let b = bucket_of(v);
        assert_eq!(b as u64, v);
        assert_eq!(bucket_lower(b), v);
        assert_eq!(bucket_upper(b), v);
    }
    assert_eq!(bucket_of(0), 0);
}

#[test]
fn every_power_of_two_edge() {
    for k in 0..64u32 {
        let p = 1u64 << k;
        for v in [p - 1, p, p + 1, p.wrapping_mul(2).wrapping_sub(1)] {
            let b = bucket_of(v);
            assert!(b < BUCKETS, "v={v}");
            assert!(bucket_lower(b) <= v && v <= bucket_upper(b), "v={v} b={b}");
        }
        if k >= SUB_BITS {
            // A power of two at or above 16 starts a bucket; the value below ends one.
            assert_eq!(bucket_lower(bucket_of(p)), p, "2^{k}");
            assert_eq!(bucket_upper(bucket_of(p - 1)), p - 1, "2^{k} - 1");
            assert_eq!(bucket_of(p), bucket_of(p - 1) + 1, "2^{k}");
        }
        if k > SUB_BITS {
            // First bucket of the octave: 16 sub-buckets of width 2^(k-4).
            let width = 1u64 << (k - SUB_BITS);
            assert_eq!(bucket_upper(bucket_of(p)), p + width - 1, "2^{k}");
        }
    }
    assert_eq!(bucket_of(u64::MAX - 1), BUCKETS - 1);
    assert_eq!(bucket_of(31 << 59), BUCKETS - 1);
    assert_eq!(bucket_of((31 << 59) - 1), BUCKETS - 2);
}

#[test]
fn buckets_tile_the_u64_range() {
    assert_eq!(bucket_lower(0), 0);
    for b in 0..BUCKETS {
        let (lo, hi) = (bucket_lower(b), bucket_upper(b));
        assert!(lo <= hi, "b={b}");
        assert_eq!(bucket_of(lo), b, "lower of {b}");
        assert_eq!(bucket_of(hi), b, "upper of {b}");
        if b + 1 < BUCKETS {
            assert_eq!(bucket_lower(b + 1), hi + 1, "gap after {b}");
        }
        // The documented error bound: a bucket is narrower than 1/16 of its lower bound.
        let width = hi - lo + 1;
        assert!(
            width == 1 || width * 16 <= lo,
            "b={b} lo={lo} width={width}"
        );
    }
}

#[test]
fn out_of_range_buckets_do_not_panic() {
    for b in [BUCKETS, BUCKETS + 1, usize::MAX] {
        assert_eq!(bucket_lower(b), u64::MAX);
        assert_eq!(bucket_upper(b), u64::MAX);
        assert_eq!(Histogram::new().bucket_count(b), 0);
        assert_eq!(Snapshot::new().bucket_count(b), 0);
    }
}

#[test]
fn bucket_of_is_monotonic() {
    let mut rng = Rng(7);
    for _ in 0..VALUES {
        let (a, b) = (rng.log_uniform(), rng.log_uniform());
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        assert!(bucket_of(lo) <= bucket_of(hi), "{lo} {hi}");
    }
}

#[test]
fn counter_adds_and_wraps() {
    let c = Counter::new();
    assert_eq!(c.get(), 0);
    c.incr();
    c.add(41);
    assert_eq!(c.get(), 42);
    c.add(u64::MAX);
    assert_eq!(c.get(), 41, "wraps at 2^64");
    static STATIC: Counter = Counter::new();
    STATIC.incr();
    assert_eq!(STATIC.get(), 1);
    assert_eq!(Counter::default().get(), 0);
}

#[test]
fn counter_one_writer_readers_see_it_grow() {
    const N: u64 = if cfg!(miri) { 200 } else { 200_000 };
    let c = Counter::new();
    let done = StdAtomicBool::new(false);
    thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..N {
                c.incr();
            }
            done.store(true, StdOrdering::Release);
        });
        for _ in 0..2 {
            s.spawn(|| {
                let mut last = 0;
                while !done.load(StdOrdering::Acquire) {
                    let v = c.get();
                    assert!(v >= last && v <= N);
                    last = v;
                }
            });
        }
    });
    assert_eq!(c.get(), N);
}

#[test]
fn shared_counter_many_writers_lose_nothing() {
    const N: u64 = if cfg!(miri) { 100 } else { 100_000 };
    let c = SharedCounter::new();
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..N {
                    c.incr();
                }
                c.add(3);
            });
        }
    });
    assert_eq!(c.get(), 4 * (N + 3));
}

#[test]
fn empty_histogram_reports_zeros() {
    let h = Histogram::new();
    assert_eq!(h.count(), 0);
    assert_eq!(h.sum(), 0);
    assert_eq!(h.min(), 0);
    assert_eq!(h.max(), 0);
    for q in [0, 1, 500_000, 1_000_000, u32::MAX] {
        assert_eq!(h.percentile(q), 0);
    }
    let s = h.snapshot();
    assert_eq!(s.count(), 0);
    assert_eq!(s.min(), 0);
    assert_eq!(s.percentile(500_000), 0);
}

#[test]
fn record_tracks_count_sum_min_max() {
    let h = Histogram::new();
    for v in [5, 0, u64::MAX, 17, 1_000_000] {
        h.record(v);
    }
    assert_eq!(h.count(), 5);
    assert_eq!(
        h.sum(),
        5u64.wrapping_add(u64::MAX).wrapping_add(17 + 1_000_000),
        "wrapping sum"
    );
    assert_eq!(h.min(), 0);
    assert_eq!(h.max(), u64::MAX);
    assert_eq!(h.percentile(0), 0, "rank 1 is the minimum");
    assert_eq!(h.percentile(1_000_000), u64::MAX);
    assert_eq!(h.bucket_count(bucket_of(17)), 1);
    assert_eq!(h.bucket_count(BUCKETS - 1), 1);

    // The only value u64::MAX: min is u64::MAX, not the empty 0.
    let one = Histogram::new();
    one.record(u64::MAX);
    assert_eq!(one.min(), u64::MAX);
    assert_eq!(one.snapshot().min(), u64::MAX);
}

#[test]
fn percentile_is_clamped_to_the_exact_max() {
    let h = Histogram::new();
    h.record(1_000);
    // 1_000's bucket is [992, 1023]; the only value is 1_000, so every percentile is 1_000.
    assert_eq!(bucket_upper(bucket_of(1_000)), 1_023);
    for q in [0, 250_000, 500_000, 999_999, 1_000_000, 2_000_000] {
        assert_eq!(h.percentile(q), 1_000);
    }
}

#[test]
fn percentile_rank_rounds_up() {
    let h = Histogram::new();
    for v in 1..=10u64 {
        h.record(v);
    }
    assert_eq!(h.percentile(0), 1);
    assert_eq!(h.percentile(100_000), 1); // rank ceil(1.0) = 1
    assert_eq!(h.percentile(100_001), 2); // rank ceil(1.00001) = 2
    assert_eq!(h.percentile(500_000), 5);
    assert_eq!(h.percentile(999_999), 10);
    assert_eq!(h.percentile(u32::MAX), 10);
}

/// The true value at `per_million` in a sorted slice, with the histogram's rank rule.
fn oracle(sorted: &[u64], per_million: u32) -> u64 {
    let n = sorted.len() as u128;
    let q = u128::from(per_million.min(1_000_000));
    let rank = ((n * q).div_ceil(1_000_000) as usize).max(1);
    sorted[rank - 1]
}

fn check_against_oracle(values: &[u64]) {
    let h = Histogram::new();
    for &v in values {
        h.record(v);
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let snap = h.snapshot();
    assert_eq!(h.count(), values.len() as u64);
    assert_eq!(h.min(), sorted[0]);
    assert_eq!(h.max(), *sorted.last().unwrap());
    let sum = values.iter().fold(0u64, |s, v| s.wrapping_add(*v));
    assert_eq!(h.sum(), sum);
    let qs = [
        0, 1, 10, 1_000, 10_000, 100_000, 250_000, 499_999, 500_000, 750_000, 900_000, 990_000,
        999_000, 999_900, 999_999, 1_000_000, 1_000_001,
    ];
    for q in qs {
        let truth = oracle(&sorted, q);
        let got = h.percentile(q);
        assert!(got >= truth, "q={q}: {got} < true {truth}");
        // Documented bound: r - v < v / 16, i.e. 16 (r - v) < v when r != v.
        let err = u128::from(got - truth);
        assert!(
            err == 0 || err * 16 < u128::from(truth),
            "q={q}: {got} vs true {truth}"
        );
        if truth < 32 {
            assert_eq!(got, truth, "exact below 32");
        }
        assert_eq!(snap.percentile(q), got, "snapshot agrees at q={q}");
    }
}

#[test]
fn percentiles_match_a_sorted_oracle() {
    let mut rng = Rng(0x5EED);
    for round in 0..ROUNDS {
        let n = 1 + rng.below(VALUES as u64) as usize;
        let values: Vec<u64> = match round % 4 {
            0 => (0..n).map(|_| rng.log_uniform()).collect(),
            1 => (0..n).map(|_| rng.below(100)).collect(),
            // Latency-like: a tight body around 10 µs and a long tail.
            2 => (0..n)
                .map(|_| {
                    if rng.below(100) == 0 {
                        rng.below(50_000_000)
                    } else {
                        9_000 + rng.below(2_000)
                    }
                })
                .collect(),
            _ => (0..n)
                .map(|_| match rng.below(4) {
                    0 => 0,
                    1 => u64::MAX,
                    2 => u64::MAX - rng.below(1 << 60),
                    _ => rng.next(),
                })
                .collect(),
        };
        check_against_oracle(&values);
    }
    check_against_oracle(&[42]);
    check_against_oracle(&[u64::MAX; 3]);
}

#[test]
fn merge_equals_recording_everything_in_one() {
    let mut rng = Rng(99);
    let (a, b, all) = (Histogram::new(), Histogram::new(), Histogram::new());
    for i in 0..VALUES {
        let v = rng.log_uniform() >> (i % 3);
        if i % 3 == 0 { &a } else { &b }.record(v);
        all.record(v);
    }
    let before_b = b.snapshot();
    a.merge_from(&b);
    assert_eq!(a.snapshot(), all.snapshot());
    assert_eq!(b.snapshot(), before_b, "the source is left alone");
    for q in [0, 500_000, 990_000, 1_000_000] {
        assert_eq!(a.percentile(q), all.percentile(q));
    }

    // Merging an empty histogram changes nothing (its min sentinel included).
    let empty = Histogram::new();
    a.merge_from(&empty);
    assert_eq!(a.snapshot(), all.snapshot());
    // Merging into an empty one copies.
    let c = Histogram::new();
    c.merge_from(&all);
    assert_eq!(c.snapshot(), all.snapshot());
    assert_eq!(c.min(), all.min());

    // Snapshot::merge gives the same.
    let mut s = Snapshot::new();
    s.merge(&before_b);
    let mut rest = all.snapshot();
    rest.merge(&Snapshot::new());
    assert_eq!(rest, all.snapshot());
    assert_eq!(s, before_b);
}

#[test]
fn reset_empties_and_the_histogram_is_reusable() {
    let h = Histogram::new();
    for v in [3, 300, 30_000] {
        h.record(v);
    }
    h.reset();
    assert_eq!(h.snapshot(), Snapshot::new());
    assert_eq!((h.count(), h.sum(), h.min(), h.max()), (0, 0, 0, 0));
    assert_eq!(h.percentile(500_000), 0);
    h.record(9);
    assert_eq!((h.count(), h.min(), h.max()), (1, 9, 9));
    assert_eq!(h.percentile(500_000), 9);
}

#[test]
fn a_static_histogram_works() {
    static H: Histogram = Histogram::new();
    H.record(64);
    H.record(65);
    assert_eq!(H.count(), 2);
    // 64 and 65 share the bucket [64, 67]; the max clamps the report to 65.
    assert_eq!(H.percentile(500_000), 65);
}

#[test]
fn readers_during_recording_see_consistent_percentiles() {
    let n: u64 = if cfg!(miri) { 100 } else { 100_000 };
    let h = Histogram::new();
    let done = StdAtomicBool::new(false);
    thread::scope(|s| {
        s.spawn(|| {
            for v in 1..=n {
                h.record(v);
            }
            done.store(true, StdOrdering::Release);
        });
        s.spawn(|| {
            let mut reads = 0;
            while !done.load(StdOrdering::Acquire) || reads == 0 {
                let p = h.percentile(1_000_000);
                assert!(p <= n);
                let snap = h.snapshot();
                assert!(snap.count() <= n);
                assert!(snap.percentile(500_000) <= bucket_upper(bucket_of(n)));
                reads += 1;
            }
        });
    });
    assert_eq!(h.count(), n);
    assert_eq!(h.percentile(1_000_000), n);
    assert_eq!(h.sum(), n * (n + 1) / 2);
}

#[test]
fn debug_output_shows_the_statistics() {
    let h = Histogram::new();
    h.record(4);
    let text = std::format!("{h:?} {:?} {:?}", h.snapshot(), Counter::new());
    assert!(text.contains("count: 1"), "{text}");
    assert!(text.contains("Counter(0)"), "{text}");
}
