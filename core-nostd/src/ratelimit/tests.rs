use core::sync::atomic::Ordering::SeqCst;
use core::sync::atomic::{AtomicBool as StdAtomicBool, AtomicU64 as StdAtomicU64};
use std::sync::Barrier;
use std::thread;
use std::vec::Vec;

use super::*;
use crate::test_rng::Rng;

const NS: u64 = 1_000_000_000;

fn cfg(rate: u64, per_ticks: u64, burst: u32) -> RateConfig {
    RateConfig::new(rate, per_ticks, burst).unwrap()
}

#[test]
fn config_rejects_zeros_and_oversize() {
    assert_eq!(RateConfig::new(1, 0, 1), Err(RateConfigError::ZeroPerTicks));
    assert_eq!(RateConfig::new(0, 1, 1), Err(RateConfigError::ZeroRate));
    assert_eq!(RateConfig::new(1, 1, 0), Err(RateConfigError::ZeroBurst));
    assert_eq!(RateConfig::new(0, 0, 0), Err(RateConfigError::ZeroPerTicks));
    // capacity = burst * per_ticks / gcd must stay below 2^63.
    assert_eq!(
        RateConfig::new(1, 1 << 40, 1 << 23),
        Err(RateConfigError::TooLarge)
    );
    assert!(RateConfig::new(1, 1 << 40, (1 << 23) - 1).is_ok());
    assert_eq!(
        RateConfig::new(1, u64::MAX, 2),
        Err(RateConfigError::TooLarge),
        "overflowing product"
    );
    // The common divisor rescues what would not fit unreduced.
    assert!(RateConfig::new(1 << 40, 1 << 40, u32::MAX).is_ok());
    assert!(RateConfig::new(u64::MAX, 1, u32::MAX).is_ok());
    let text = std::format!("{}", RateConfigError::TooLarge);
    assert!(text.contains("2^63"), "{text}");
}

#[test]
fn config_is_reduced_by_the_common_divisor() {
    let c = cfg(1_000, NS, 10);
    assert_eq!((c.rate(), c.per_ticks(), c.burst()), (1, 1_000_000, 10));
    let c = cfg(50_000_000, NS, 64);
    assert_eq!((c.rate(), c.per_ticks()), (1, 20));
    let c = cfg(7, 3, 1);
    assert_eq!((c.rate(), c.per_ticks()), (7, 3));
    let c = cfg(u64::MAX, u64::MAX, 1);
    assert_eq!((c.rate(), c.per_ticks()), (1, 1));
    assert!(!c.is_unlimited());
    let u = RateConfig::UNLIMITED;
    assert!(u.is_unlimited());
    assert_eq!((u.rate(), u.per_ticks(), u.burst()), (0, 0, 0));
}

#[test]
fn starts_full_and_grants_partially() {
    let b = TokenBucket::new(cfg(1, 10, 5));
    assert_eq!(b.available(0), 5);
    assert_eq!(b.try_acquire(3, 0), 3);
    assert_eq!(b.try_acquire(3, 0), 2, "partial: the 2 left");
    assert_eq!(b.try_acquire(3, 0), 0);
    assert_eq!(b.available(0), 0);
}

#[test]
fn zero_tokens_is_a_no_op() {
    let b = TokenBucket::new(cfg(1, 10, 2));
    assert_eq!(b.try_acquire(0, 1_000), 0);
    assert!(b.try_acquire_all(0, 1_000));
    assert_eq!(b.try_acquire(2, 0), 2, "still fresh and full");
    assert_eq!(b.try_acquire(0, 5), 0);
    assert!(b.try_acquire_all(0, 5), "none asked, none needed");
    assert_eq!(b.available(5), 0);
}

#[test]
fn more_than_burst_gets_at_most_burst() {
    let b = TokenBucket::new(cfg(1, 1, 4));
    assert!(!b.try_acquire_all(5, 0), "can never hold 5");
    assert_eq!(b.available(0), 4, "a refused all-or-nothing takes nothing");
    assert_eq!(b.try_acquire(u32::MAX, 0), 4);
    assert!(!b.try_acquire_all(5, 1 << 40), "not even after a long idle");
    assert_eq!(b.try_acquire(u32::MAX, 1 << 40), 4);
}

#[test]
fn fractional_refill_is_never_lost() {
    // 1,000 per second in ns ticks: one token per 10^6 ticks. Probing every 1,000 ticks
    // (each probe refused) must not lose the fraction.
    let step = if cfg!(miri) { 100_000 } else { 1_000 };
    let b = TokenBucket::new(cfg(1_000, NS, 10));
    assert_eq!(b.try_acquire(10, 0), 10);
    let mut granted = 0;
    let mut now = 0;
    while now < 10_000_000 {
        now += step;
        granted += b.try_acquire(1, now);
    }
    assert_eq!(granted, 10, "exactly 10 tokens in 10 ms");
    assert_eq!(b.try_acquire(1, now + 999_999), 0);
    assert_eq!(b.try_acquire(1, now + 1_000_000), 1);

    // Three tokens per two ticks: the half token carries over.
    let b = TokenBucket::new(cfg(3, 2, 100));
    assert_eq!(b.try_acquire(100, 0), 100);
    assert_eq!(b.try_acquire(100, 1), 1); // 1.5
    assert_eq!(b.try_acquire(100, 2), 2); // 0.5 + 1.5
    assert_eq!(b.try_acquire(100, 5), 4); // 4.5
    assert_eq!(b.try_acquire(100, 6), 2); // 0.5 + 1.5
}

#[test]
fn high_rates_in_nanosecond_ticks() {
    // 50 M/s: one token per 20 ns.
    let b = TokenBucket::new(cfg(50_000_000, NS, 100));
    assert_eq!(b.try_acquire(100, 0), 100);
    assert_eq!(b.try_acquire(100, 1_000), 50);
    assert_eq!(b.try_acquire(100, 1_019), 0);
    assert_eq!(b.try_acquire(100, 1_020), 1);
    // More tokens than ticks: 3 billion per second in ns, 3 per tick.
    let b = TokenBucket::new(cfg(3 * NS, NS, 1_000));
    assert_eq!(b.try_acquire(1_000, 7), 1_000);
    assert_eq!(b.try_acquire(1_000, 17), 30);
    // The largest rate: u64::MAX per tick refills any burst in one tick, without overflow.
    let b = TokenBucket::new(cfg(u64::MAX, 1, u32::MAX));
    assert_eq!(b.try_acquire(u32::MAX, 0), u32::MAX);
    assert_eq!(b.try_acquire(u32::MAX, 0), 0);
    assert_eq!(b.try_acquire(u32::MAX, 1), u32::MAX);
}

#[test]
fn long_idle_refills_to_burst_only() {
    let b = TokenBucket::new(cfg(u64::MAX, 1, 7));
    assert_eq!(b.try_acquire(7, 0), 7);
    assert_eq!(b.available((1 << 63) - 1), 7, "longest forward gap");
    assert_eq!(b.try_acquire(100, (1 << 63) - 1), 7);

    let b = TokenBucket::new(cfg(1_000, NS, 10));
    assert_eq!(b.try_acquire(10, 5), 10);
    assert_eq!(b.try_acquire(100, 5 + (1 << 62)), 10, "capped at burst");
    assert_eq!(b.try_acquire(100, 5 + (1 << 62)), 0);
}

#[test]
fn time_going_backwards_refills_nothing() {
    let b = TokenBucket::new(cfg(1, 10, 3));
    assert_eq!(b.try_acquire(3, 1_000), 3);
    assert_eq!(b.try_acquire(1, 500), 0, "older clock: no refill");
    assert_eq!(
        b.try_acquire(1, 1_009),
        0,
        "and the refill tick did not move back"
    );
    assert_eq!(b.try_acquire(1, 1_010), 1);
    // A caller behind the refill tick may still take what is there.
    assert_eq!(b.try_acquire(3, 1_030), 2);
    let b2 = TokenBucket::new(cfg(1, 10, 3));
    assert_eq!(b2.try_acquire(1, 1_000), 1);
    assert_eq!(b2.try_acquire(5, 0), 2, "behind, but the tokens are there");
    assert_eq!(
        b2.try_acquire(1, 1_009),
        0,
        "no credit for the older reading"
    );
    assert_eq!(b2.try_acquire(1, 1_010), 1);
}

#[test]
fn ticks_may_wrap_past_u64_max() {
    let start = u64::MAX - 5;
    let b = TokenBucket::new(cfg(1, 1, 100));
    assert_eq!(b.try_acquire(100, start), 100);
    assert_eq!(
        b.try_acquire(100, start.wrapping_add(10)),
        10,
        "10 ticks across the wrap"
    );
    assert_eq!(b.try_acquire(100, 4), 0, "same tick, after the wrap");
    assert_eq!(b.try_acquire(100, start), 0, "before the wrap: behind");
    assert_eq!(b.try_acquire(100, 24), 20);
}

#[test]
fn a_gap_of_2_pow_63_reads_as_behind() {
    // The documented limit: 2^63 ticks or more after the refill tick counts as behind.
    let b = TokenBucket::new(cfg(1, 1, 5));
    assert_eq!(b.try_acquire(5, 0), 5);
    assert_eq!(b.try_acquire(5, 1 << 63), 0);
    assert_eq!(b.try_acquire(5, u64::MAX), 0, "one tick behind");
    assert_eq!(b.try_acquire(5, 3), 3);
}

#[test]
fn unlimited_grants_everything() {
    let b = TokenBucket::new(RateConfig::UNLIMITED);
    assert_eq!(b.try_acquire(u32::MAX, 0), u32::MAX);
    assert_eq!(b.try_acquire(u32::MAX, 0), u32::MAX);
    assert_eq!(b.try_acquire(0, 0), 0);
    assert!(b.try_acquire_all(u32::MAX, 0));
    assert_eq!(b.available(0), u32::MAX);
    assert!(b.config().is_unlimited());
}

/// The exact reference: unreduced `rate` / `per_ticks` in u128, plain comparisons (no
/// wrapping), state written only when something is granted, as documented.
struct Model {
    rate: u128,
    per: u128,
    cap: u128,
    /// Level in 1/per tokens; meaningful once `last` is set.
    level: u128,
    last: Option<u64>,
}

impl Model {
    fn new(rate: u64, per: u64, burst: u32) -> Self {
        Self {
            rate: rate.into(),
            per: per.into(),
            cap: u128::from(burst) * u128::from(per),
            level: 0,
            last: None,
        }
    }

    fn refilled(&self, now: u64) -> (u128, u64) {
        match self.last {
            None => (self.cap, now),
            Some(last) if now >= last => (
                (self.level + u128::from(now - last) * self.rate).min(self.cap),
                now,
            ),
            Some(last) => (self.level, last),
        }
    }

    fn acquire(&mut self, n: u32, now: u64, all: bool) -> u32 {
        if n == 0 {
            return 0;
        }
        let (level, last) = self.refilled(now);
        let whole = level / self.per;
        let grant = if whole >= n.into() {
            n
        } else if all {
            0
        } else {
            whole as u32
        };
        if grant > 0 {
            self.level = level - u128::from(grant) * self.per;
            self.last = Some(last);
        }
        grant
    }

    fn available(&self, now: u64) -> u32 {
        (self.refilled(now).0 / self.per) as u32
    }
}

#[test]
fn matches_an_exact_reference_model() {
    const CONFIGS: u64 = if cfg!(miri) { 4 } else { 300 };
    const OPS: usize = if cfg!(miri) { 60 } else { 2_000 };
    let mut rng = Rng(0xC0FFEE);
    let mut checked = 0;
    for _ in 0..CONFIGS {
        let rate = 1 + match rng.below(3) {
            0 => rng.below(10),
            1 => rng.below(1_000_000),
            _ => rng.below(NS),
        };
        let per = 1 + match rng.below(3) {
            0 => rng.below(10),
            1 => rng.below(1_000_000),
            _ => rng.below(NS),
        };
        let burst = 1 + rng.below(1_000) as u32;
        let Ok(config) = RateConfig::new(rate, per, burst) else {
            continue;
        };
        checked += 1;
        let bucket = TokenBucket::new(config);
        // The same run translated to just before the wrap must answer the same.
        let base = u64::MAX - rng.below(1 << 40);
        let shifted = TokenBucket::new(config);
        let mut model = Model::new(rate, per, burst);
        let mut now = rng.below(1 << 40);
        let (first, mut latest) = (now, now);
        let mut granted = 0u128;
        for _ in 0..OPS {
            now = match rng.below(10) {
                0 => now.saturating_sub(rng.below(2 * per)), // clock behind
                1 => now + rng.below(per.saturating_mul(burst.into()).min(1 << 40)),
                2 => now,
                _ => now + rng.below(per / rate + 2),
            };
            latest = latest.max(now);
            let n = match rng.below(4) {
                0 => 0,
                1 => 1,
                2 => rng.below(u64::from(burst) + 2) as u32,
                _ => rng.below(4) as u32,
            };
            let all = rng.below(3) == 0;
            let expected = model.acquire(n, now, all);
            let got = if all {
                if bucket.try_acquire_all(n, now) { n } else { 0 }
            } else {
                bucket.try_acquire(n, now)
            };
            assert_eq!(
                got, expected,
                "rate {rate}/{per} burst {burst} n {n} now {now}"
            );
            let shifted_got = if all {
                if shifted.try_acquire_all(n, base.wrapping_add(now)) {
                    n
                } else {
                    0
                }
            } else {
                shifted.try_acquire(n, base.wrapping_add(now))
            };
            assert_eq!(shifted_got, got, "translated across the wrap");
            assert_eq!(bucket.available(now), model.available(now));
            granted += u128::from(got);
        }
        // The documented guarantee, over [first, latest].
        let bound =
            u128::from(burst) + u128::from(rate) * u128::from(latest - first) / u128::from(per);
        assert!(granted <= bound, "granted {granted} > bound {bound}");
    }
    assert!(
        checked * 2 > CONFIGS,
        "too many configs rejected: {checked}"
    );
}

#[test]
fn rate_limiter_routes_by_source() {
    let mut limits: RateLimiter<3> = RateLimiter::new(cfg(1, 10, 2));
    assert_eq!(limits.sources(), 3);
    limits.set_config(1, RateConfig::UNLIMITED).unwrap();
    assert_eq!(limits.try_acquire(0, 5, 0), Ok(2));
    assert_eq!(limits.try_acquire(0, 5, 0), Ok(0));
    assert_eq!(
        limits.try_acquire(2, 5, 0),
        Ok(2),
        "source 2 has its own bucket"
    );
    assert_eq!(limits.try_acquire(1, 1_000_000, 0), Ok(1_000_000));
    assert_eq!(limits.try_acquire_all(0, 1, 10), Ok(true));
    assert_eq!(limits.try_acquire_all(0, 1, 10), Ok(false));
    for source in [3, 4, u32::MAX] {
        assert_eq!(limits.try_acquire(source, 1, 0), Err(UnknownSource(source)));
        assert_eq!(
            limits.try_acquire_all(source, 1, 0),
            Err(UnknownSource(source))
        );
        assert_eq!(
            limits.set_config(source, RateConfig::UNLIMITED),
            Err(UnknownSource(source))
        );
        assert!(limits.bucket(source).is_err());
    }
    // A new config comes with a full bucket.
    limits.set_config(0, cfg(1, 10, 4)).unwrap();
    assert_eq!(limits.try_acquire(0, 9, 10), Ok(4));
    assert_eq!(limits.bucket(0).unwrap().config(), cfg(1, 10, 4));
    let text = std::format!("{}", UnknownSource(9));
    assert!(text.contains('9'), "{text}");
}

#[test]
fn a_static_rate_limiter_works() {
    const PER_SOURCE: RateConfig = match RateConfig::new(1, 100, 3) {
        Ok(c) => c,
        Err(_) => panic!("bad config"),
    };
    static LIMITS: RateLimiter<8> = RateLimiter::new(PER_SOURCE);
    assert_eq!(LIMITS.try_acquire(7, 10, 0), Ok(3));
    assert_eq!(LIMITS.try_acquire(7, 10, 99), Ok(0));
    assert_eq!(LIMITS.try_acquire(7, 10, 100), Ok(1));
    assert_eq!(LIMITS.try_acquire(0, 10, 100), Ok(3));
}

#[test]
fn threads_at_one_tick_share_exactly_the_burst() {
    let rounds = if cfg!(miri) { 1 } else { 50 };
    let threads = 4;
    for round in 0..rounds {
        let burst = 1_000 + round;
        let bucket = TokenBucket::new(cfg(1, 1, burst));
        let barrier = Barrier::new(threads);
        let total = StdAtomicU64::new(0);
        thread::scope(|s| {
            for t in 0..threads {
                let (bucket, barrier, total) = (&bucket, &barrier, &total);
                s.spawn(move || {
                    barrier.wait();
                    let n = 1 + t as u32 * 2; // 1, 3, 5, 7: partial grants at the end
                    loop {
                        let got = bucket.try_acquire(n, 42);
                        if got == 0 {
                            break;
                        }
                        total.fetch_add(got.into(), SeqCst);
                    }
                });
            }
        });
        assert_eq!(total.load(SeqCst), u64::from(burst), "round {round}");
        assert_eq!(bucket.available(42), 0);
    }
}

#[test]
fn threads_all_or_nothing_conserve_tokens() {
    let bucket = TokenBucket::new(cfg(1, 1, 1_003));
    let total = StdAtomicU64::new(0);
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while bucket.try_acquire_all(4, 7) {
                    total.fetch_add(4, SeqCst);
                }
            });
        }
    });
    let left = u64::from(bucket.available(7));
    assert!(left < 4, "stopped while 4 were there: {left}");
    assert_eq!(total.load(SeqCst) + left, 1_003);
}

#[test]
fn threads_with_a_moving_clock_never_exceed_the_bound() {
    let ops: u64 = if cfg!(miri) { 50 } else { 100_000 };
    // 1 token per 3 ticks, burst 16; the clock advances one tick per 8 attempts overall.
    let (rate, per, burst) = (1u64, 3u64, 16u32);
    let bucket = TokenBucket::new(cfg(rate, per, burst));
    let clock = StdAtomicU64::new(1_000);
    let total = StdAtomicU64::new(0);
    let done = StdAtomicBool::new(false);
    thread::scope(|s| {
        s.spawn(|| {
            while !done.load(SeqCst) {
                clock.fetch_add(1, SeqCst);
                thread::yield_now();
            }
        });
        let workers: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    for i in 0..ops {
                        let now = clock.load(SeqCst);
                        // Every 4th call reads an older clock (a thread behind the others).
                        let now = if i % 4 == 0 {
                            now.saturating_sub(5)
                        } else {
                            now
                        };
                        total.fetch_add(bucket.try_acquire(1 + (i % 3) as u32, now).into(), SeqCst);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        done.store(true, SeqCst);
    });
    let elapsed = clock.load(SeqCst) - (1_000 - 5);
    let bound = u64::from(burst) + rate * elapsed / per;
    let granted = total.load(SeqCst);
    assert!(granted <= bound, "granted {granted} > {bound}");
    assert!(
        granted >= u64::from(burst),
        "the first burst is always there"
    );
}
