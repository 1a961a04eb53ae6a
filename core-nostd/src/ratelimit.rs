//! Lock-free token buckets: a [`TokenBucket`] per limited thing, and a fixed
//! [`RateLimiter`] table of them indexed by source id.
//!
//! A bucket holds up to `burst` tokens, starts full, and refills at `rate` tokens per
//! `per_ticks` ticks (the caller's clock; the core never reads one). Rates below one token per
//! tick (1,000 per 10^9 ns) and far above (50 M/s in ns ticks, or more tokens than ticks) are
//! both exact: see *Accounting*. Callers take tokens with [`TokenBucket::try_acquire`] (up to
//! `n`, partial grants allowed) or [`TokenBucket::try_acquire_all`] (all `n` or none).
//!
//! ## Accounting, and the guarantee
//! [`RateConfig::new`] divides `rate` and `per_ticks` by their greatest common divisor `g`;
//! the bucket then counts in fixed-point *units*: one token is `per_ticks / g` units and every
//! tick adds `rate / g` units. All of it is integer arithmetic with no rounding, so fractional
//! refill is carried over exactly and nothing is lost between calls. Hence, for any calls
//! whose `now` lies in `[t0, t1]` (clocks may disagree and go backwards inside it), the
//! tokens granted in total are at most
//!
//! `burst + floor(rate * (t1 - t0) / per_ticks)`
//!
//! exactly, with no rounding slack. The level is capped at `burst`: idle time beyond a full
//! bucket is not banked.
//!
//! ## Time
//! Ticks are compared in serial-number arithmetic: `now` is *ahead* of the last refill tick
//! when `now.wrapping_sub(last) < 2^63`, so the tick counter may wrap past `u64::MAX`. A
//! `now` behind the last refill (an older clock reading from another thread) refills
//! nothing and never moves the refill tick back; it may still take the tokens that are there.
//! The one limit: a bucket left untouched for 2^63 ticks or more (292 years of nanoseconds)
//! reads the next `now` as behind and refills nothing for it.
//!
//! ## Concurrency and cost
//! The state (refill tick, level in units) is one 128-bit atomic word changed only by
//! compare-and-swap, so grants never exceed the tokens there and the bucket is lock-free (a
//! CAS fails only when another caller's succeeded; the loser backs off and retries with the
//! new state). An uncontended grant is one load, integer arithmetic and one CAS; a refusal is
//! one load and no write; an [unlimited](RateConfig::UNLIMITED) bucket is one branch. On
//! x86_64 and aarch64 the word uses the CPU's 16-byte CAS; on targets without one (Cortex-M,
//! RISC-V 32) portable-atomic's fallback guards it with a lock, which is not lock-free: do
//! not take tokens from an interrupt handler that may preempt a caller there.
//!
//! ```
//! use pinstream_core::ratelimit::{RateConfig, TokenBucket};
//!
//! // 1,000 events per second with nanosecond ticks, bursts of up to 10.
//! let config = RateConfig::new(1_000, 1_000_000_000, 10).unwrap();
//! let bucket = TokenBucket::new(config);
//! assert_eq!(bucket.try_acquire(25, 0), 10); // starts full: a partial grant
//! assert_eq!(bucket.try_acquire(1, 999_999), 0); // not yet a whole token
//! assert_eq!(bucket.try_acquire(1, 1_000_000), 1); // 1 ms later: one token
//! assert!(!bucket.try_acquire_all(2, 2_000_000)); // one there, two asked: none taken
//! assert!(bucket.try_acquire_all(2, 3_000_000));
//! ```

use core::fmt;

use crate::sync::{AtomicU128, Backoff, Ordering, const_fn};

/// The largest level in units: the level word's top bit is the [`FRESH`] flag.
const MAX_CAPACITY: u64 = (1 << 63) - 1;
/// Level-word flag: the bucket has never been used, so it is full and has no refill tick
/// yet; the first caller's `now` becomes it.
const FRESH: u64 = 1 << 63;
/// A `now` this far or further past the refill tick (wrapping) counts as behind it.
const BEHIND: u64 = 1 << 63;

/// A validated bucket configuration: `rate` tokens per `per_ticks` ticks, at most `burst`
/// held, or [unlimited](Self::UNLIMITED).
///
/// ```
/// use pinstream_core::ratelimit::{RateConfig, RateConfigError};
///
/// // 50 M tokens per second with nanosecond ticks: stored as 1 token per 20 ticks.
/// let fast = RateConfig::new(50_000_000, 1_000_000_000, 64).unwrap();
/// assert_eq!((fast.rate(), fast.per_ticks(), fast.burst()), (1, 20, 64));
/// assert_eq!(RateConfig::new(1, 0, 1), Err(RateConfigError::ZeroPerTicks));
/// assert!(RateConfig::UNLIMITED.is_unlimited());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RateConfig {
    /// Units added per tick: `rate / gcd(rate, per_ticks)`; 0 when unlimited.
    units_per_tick: u64,
    /// Units one token costs: `per_ticks / gcd`; 0 means unlimited (the one-branch test).
    units_per_token: u64,
    /// Most tokens held; 0 when unlimited. `burst * units_per_token <= MAX_CAPACITY`.
    burst: u32,
}

/// Why [`RateConfig::new`] refused a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RateConfigError {
    /// `rate` was 0: the bucket would never refill.
    ZeroRate,
    /// `per_ticks` was 0.
    ZeroPerTicks,
    /// `burst` was 0: no token could ever be held.
    ZeroBurst,
    /// `burst * per_ticks / gcd(rate, per_ticks)` is 2^63 or more: the level would not fit
    /// the bucket's state word. Use a coarser tick or a smaller burst.
    TooLarge,
}

impl fmt::Display for RateConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ZeroRate => "rate must be at least 1 token",
            Self::ZeroPerTicks => "per_ticks must be at least 1 tick",
            Self::ZeroBurst => "burst must be at least 1 token",
            Self::TooLarge => "burst * per_ticks / gcd(rate, per_ticks) must be below 2^63",
        })
    }
}

impl core::error::Error for RateConfigError {}

const fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        let r = a % b;
        a = b;
        b = r;
    }
    a
}

impl RateConfig {
    /// No limit: every request is granted in full, at the cost of one branch.
    pub const UNLIMITED: Self = Self {
        units_per_tick: 0,
        units_per_token: 0,
        burst: 0,
    };

    /// `rate` tokens per `per_ticks` ticks, holding at most `burst` tokens.
    ///
    /// # Errors
    /// [`RateConfigError::ZeroPerTicks`], [`ZeroRate`](RateConfigError::ZeroRate) or
    /// [`ZeroBurst`](RateConfigError::ZeroBurst) for a zero argument;
    /// [`TooLarge`](RateConfigError::TooLarge) when `burst * per_ticks / gcd(rate, per_ticks)`
    /// is 2^63 or more.
    pub const fn new(rate: u64, per_ticks: u64, burst: u32) -> Result<Self, RateConfigError> {
        if per_ticks == 0 {
            return Err(RateConfigError::ZeroPerTicks);
        }
        if rate == 0 {
            return Err(RateConfigError::ZeroRate);
        }
        if burst == 0 {
            return Err(RateConfigError::ZeroBurst);
        }
        let g = gcd(rate, per_ticks);
        let units_per_token = per_ticks / g;
        match (burst as u64).checked_mul(units_per_token) {
            Some(capacity) if capacity <= MAX_CAPACITY => Ok(Self {
                units_per_tick: rate / g,
                units_per_token,
                burst,
            }),
            _ => Err(RateConfigError::TooLarge),
        }
    }

    /// Whether this is [`UNLIMITED`](Self::UNLIMITED).
    #[inline]
    pub const fn is_unlimited(&self) -> bool {
        self.units_per_token == 0
    }

    /// Tokens per [`per_ticks`](Self::per_ticks), reduced by the common divisor; 0 when
    /// unlimited.
    pub const fn rate(&self) -> u64 {
        self.units_per_tick
    }

    /// Ticks per [`rate`](Self::rate) tokens, reduced by the common divisor; 0 when unlimited.
    pub const fn per_ticks(&self) -> u64 {
        self.units_per_token
    }

    /// Most tokens the bucket holds; 0 when unlimited.
    pub const fn burst(&self) -> u32 {
        self.burst
    }

    /// The level of a full bucket, in units.
    #[inline(always)]
    const fn capacity(&self) -> u64 {
        self.burst as u64 * self.units_per_token
    }
}

/// A lock-free token bucket (see the [module docs](self)): `burst` tokens at most, refilled
/// at the configured rate, starting full. Any number of threads may take tokens at once.
///
/// ```
/// use pinstream_core::ratelimit::{RateConfig, TokenBucket};
///
/// // 3 tokens per 2 ticks, at most 4 held.
/// static BUCKET: TokenBucket = match RateConfig::new(3, 2, 4) {
///     Ok(config) => TokenBucket::new(config),
///     Err(_) => panic!("bad rate"),
/// };
/// assert_eq!(BUCKET.try_acquire(10, 100), 4);
/// assert_eq!(BUCKET.try_acquire(10, 101), 1); // 1.5 tokens: one granted, half kept
/// assert_eq!(BUCKET.try_acquire(10, 102), 2); // 0.5 + 1.5
/// assert_eq!(BUCKET.available(102), 0);
/// ```
pub struct TokenBucket {
    config: RateConfig,
    /// `refill tick << 64 | level word`. The level word is the level in units (at most
    /// `config.capacity()`, below 2^63), or [`FRESH`] before the first grant.
    state: AtomicU128,
}

#[inline(always)]
const fn pack(tick: u64, level: u64) -> u128 {
    ((tick as u128) << 64) | level as u128
}

impl TokenBucket {
    const_fn! {
        /// A full bucket with the given configuration.
        pub fn new(config: RateConfig) -> Self {
            Self { config, state: AtomicU128::new(FRESH as u128) }
        }
    }

    /// The configuration.
    pub const fn config(&self) -> RateConfig {
        self.config
    }

    /// The level in units and the refill tick of state `word` refilled up to `now`.
    #[inline(always)]
    fn refill(&self, word: u128, now: u64) -> (u64, u64) {
        let (last, level) = ((word >> 64) as u64, word as u64);
        let capacity = self.config.capacity();
        if level & FRESH != 0 {
            return (capacity, now);
        }
        let elapsed = now.wrapping_sub(last);
        if elapsed >= BEHIND {
            return (level, last); // `now` is behind: no refill, keep the newer tick
        }
        // < 2^63 + 2^63 * 2^64: no overflow.
        let refilled =
            u128::from(level) + u128::from(elapsed) * u128::from(self.config.units_per_tick);
        let level = if refilled < capacity as u128 {
            refilled as u64
        } else {
            capacity
        };
        (level, now)
    }

    /// Takes up to `n` tokens at tick `now` and returns how many it got (`0..=n`): all `n`
    /// when there are enough, else every whole token there (a partial grant). Returns `n` at
    /// once for an unlimited bucket, 0 for `n == 0`.
    #[inline]
    #[must_use = "the tokens granted are what may pass"]
    pub fn try_acquire(&self, n: u32, now: u64) -> u32 {
        if self.config.is_unlimited() {
            return n;
        }
        self.acquire(n, now, false)
    }

    /// Takes exactly `n` tokens at tick `now` if there are that many, else none. Always
    /// `true` for `n == 0` and for an unlimited bucket; always `false` for `n > burst`.
    #[inline]
    #[must_use = "false means nothing was granted"]
    pub fn try_acquire_all(&self, n: u32, now: u64) -> bool {
        if self.config.is_unlimited() || n == 0 {
            return true;
        }
        self.acquire(n, now, true) == n
    }

    #[inline]
    fn acquire(&self, n: u32, now: u64, all_or_nothing: bool) -> u32 {
        if n == 0 {
            return 0;
        }
        let unit = self.config.units_per_token;
        let wanted = u128::from(n) * u128::from(unit);
        let mut backoff = Backoff::new();
        // Relaxed is enough: the bucket publishes no other data, and the CAS alone makes
        // every grant act on the latest state (a stale load only fails the CAS).
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (level, tick) = self.refill(current, now);
            let (granted, cost) = if u128::from(level) >= wanted {
                (n, wanted as u64)
            } else if all_or_nothing {
                return 0;
            } else {
                // level < n * unit, so level / unit < n fits u32.
                let whole = level / unit;
                if whole == 0 {
                    return 0; // nothing to take: no write (the refill is recomputed later)
                }
                (whole as u32, whole * unit)
            };
            let next = pack(tick, level - cost);
            match self
                .state
                .compare_exchange(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return granted,
                Err(seen) => {
                    current = seen;
                    backoff.spin();
                }
            }
        }
    }

    /// Whole tokens available at `now`, without taking any (`u32::MAX` when unlimited).
    /// Another thread may take them before a following acquire.
    pub fn available(&self, now: u64) -> u32 {
        if self.config.is_unlimited() {
            return u32::MAX;
        }
        let (level, _) = self.refill(self.state.load(Ordering::Relaxed), now);
        // level <= burst * unit, so the quotient fits u32.
        (level / self.config.units_per_token) as u32
    }
}

impl fmt::Debug for TokenBucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenBucket")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A source id at or above the [`RateLimiter`]'s `SOURCES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct UnknownSource(pub u32);

impl fmt::Display for UnknownSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "source id {} is outside the rate limiter's table",
            self.0
        )
    }
}

impl core::error::Error for UnknownSource {}

/// A fixed table of `SOURCES` token buckets, one per source id (`0..SOURCES`, e.g. a
/// connection's `Origin::source`), each with its own configuration.
/// Ids outside the table get [`UnknownSource`], never another source's bucket.
///
/// ```
/// use pinstream_core::ratelimit::{RateConfig, RateLimiter, UnknownSource};
///
/// let mut limits: RateLimiter<4> = RateLimiter::new(RateConfig::UNLIMITED);
/// limits.set_config(2, RateConfig::new(1, 10, 2).unwrap()).unwrap();
/// assert_eq!(limits.try_acquire(0, 1_000, 0), Ok(1_000)); // unlimited
/// assert_eq!(limits.try_acquire(2, 5, 0), Ok(2)); // burst 2
/// assert_eq!(limits.try_acquire(2, 5, 10), Ok(1)); // one token per 10 ticks
/// assert_eq!(limits.try_acquire(4, 1, 0), Err(UnknownSource(4)));
/// ```
pub struct RateLimiter<const SOURCES: usize> {
    buckets: [TokenBucket; SOURCES],
}

impl<const SOURCES: usize> RateLimiter<SOURCES> {
    const_fn! {
        /// A table with every source under `default` (buckets full), usable in a `static`.
        pub fn new(default: RateConfig) -> Self {
            Self { buckets: Self::buckets(default) }
        }
    }

    #[cfg(not(loom))]
    const fn buckets(config: RateConfig) -> [TokenBucket; SOURCES] {
        let mut buckets = [const { TokenBucket::new(RateConfig::UNLIMITED) }; SOURCES];
        let mut i = 0;
        while i < SOURCES {
            buckets[i] = TokenBucket::new(config);
            i += 1;
        }
        buckets
    }

    #[cfg(loom)]
    fn buckets(config: RateConfig) -> [TokenBucket; SOURCES] {
        core::array::from_fn(|_| TokenBucket::new(config))
    }

    /// Number of sources, `SOURCES`.
    pub const fn sources(&self) -> usize {
        SOURCES
    }

    /// Gives `source` a new configuration with a full bucket.
    ///
    /// # Errors
    /// [`UnknownSource`] when `source >= SOURCES`.
    pub fn set_config(&mut self, source: u32, config: RateConfig) -> Result<(), UnknownSource> {
        let bucket = usize::try_from(source)
            .ok()
            .and_then(|i| self.buckets.get_mut(i))
            .ok_or(UnknownSource(source))?;
        *bucket = TokenBucket::new(config);
        Ok(())
    }

    /// The bucket of `source`.
    ///
    /// # Errors
    /// [`UnknownSource`] when `source >= SOURCES`.
    #[inline]
    pub fn bucket(&self, source: u32) -> Result<&TokenBucket, UnknownSource> {
        usize::try_from(source)
            .ok()
            .and_then(|i| self.buckets.get(i))
            .ok_or(UnknownSource(source))
    }

    /// [`TokenBucket::try_acquire`] on `source`'s bucket: up to `n` tokens at tick `now`.
    ///
    /// # Errors
    /// [`UnknownSource`] when `source >= SOURCES`.
    #[inline]
    pub fn try_acquire(&self, source: u32, n: u32, now: u64) -> Result<u32, UnknownSource> {
        Ok(self.bucket(source)?.try_acquire(n, now))
    }

    /// [`TokenBucket::try_acquire_all`] on `source`'s bucket: `n` tokens or none.
    ///
    /// # Errors
    /// [`UnknownSource`] when `source >= SOURCES`.
    #[inline]
    pub fn try_acquire_all(&self, source: u32, n: u32, now: u64) -> Result<bool, UnknownSource> {
        Ok(self.bucket(source)?.try_acquire_all(n, now))
    }
}

impl<const SOURCES: usize> fmt::Debug for RateLimiter<SOURCES> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("sources", &SOURCES)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
