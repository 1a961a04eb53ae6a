//! The one place the core gets its atomics and interior mutability from.
//!
//! Normal builds use [`portable_atomic`] (so targets without CAS still build, and 128-bit
//! atomics work where the CPU has them) and a thin wrapper over [`core::cell::UnsafeCell`].
//! Under `RUSTFLAGS="--cfg loom"` the same names come from [`loom`](https://docs.rs/loom), so
//! the loom models check the exact code that ships. Spin loops call [`spin_loop`], which is
//! `loom::thread::yield_now` under loom: without it loom would explore a single interleaving.

#[cfg(not(loom))]
mod imp {
    pub(crate) use core::sync::atomic::Ordering;
    #[cfg(pinstream_cas)]
    pub(crate) use core::sync::atomic::fence;
    pub(crate) use portable_atomic::{AtomicBool, AtomicUsize};
    #[cfg(pinstream_cas)]
    pub(crate) use portable_atomic::{AtomicU64, AtomicU128};

    /// `core::cell::UnsafeCell` with loom's closure-based access API.
    #[repr(transparent)]
    pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        pub(crate) const fn new(value: T) -> Self {
            Self(core::cell::UnsafeCell::new(value))
        }

        #[inline(always)]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        #[inline(always)]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }

    /// Exclusive access to an atomic's value through `&mut`, with loom's method name, so
    /// single-owner fast paths read and write plain memory.
    #[cfg(pinstream_cas)]
    pub(crate) trait WithMut {
        type Value;
        fn with_mut<R>(&mut self, f: impl FnOnce(&mut Self::Value) -> R) -> R;
    }

    #[cfg(pinstream_cas)]
    impl WithMut for AtomicU64 {
        type Value = u64;
        #[inline(always)]
        fn with_mut<R>(&mut self, f: impl FnOnce(&mut u64) -> R) -> R {
            f(self.get_mut())
        }
    }

    #[cfg(pinstream_cas)]
    impl WithMut for AtomicU128 {
        type Value = u128;
        #[inline(always)]
        fn with_mut<R>(&mut self, f: impl FnOnce(&mut u128) -> R) -> R {
            f(self.get_mut())
        }
    }

    /// Hint inside a busy-wait loop.
    #[inline(always)]
    #[cfg_attr(not(pinstream_cas), allow(dead_code))]
    pub(crate) fn spin_loop() {
        core::hint::spin_loop();
    }
}

#[cfg(loom)]
mod imp {
    pub(crate) use loom::cell::UnsafeCell;
    pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};

    /// Under loom, busy-wait loops must yield or loom only explores one interleaving.
    pub(crate) fn spin_loop() {
        loom::thread::yield_now();
    }

    /// loom has no 128-bit atomic. This stand-in gives the same single-location,
    /// sequentially consistent load / store / compare-exchange through a loom mutex, so the
    /// models check the algorithm built on top of it (not the hardware's 16-byte CAS).
    #[derive(Debug)]
    pub(crate) struct AtomicU128(loom::sync::Mutex<u128>);

    impl AtomicU128 {
        pub(crate) fn new(value: u128) -> Self {
            Self(loom::sync::Mutex::new(value))
        }

        pub(crate) fn load(&self, _order: Ordering) -> u128 {
            *self.0.lock().unwrap()
        }

        pub(crate) fn compare_exchange(
            &self,
            current: u128,
            new: u128,
            _success: Ordering,
            _failure: Ordering,
        ) -> Result<u128, u128> {
            let mut guard = self.0.lock().unwrap();
            if *guard == current {
                *guard = new;
                Ok(current)
            } else {
                Err(*guard)
            }
        }
    }
}

pub(crate) use imp::*;

/// Exponential backoff for a CAS that lost a race: spin 1, 2, 4 ... 64 times before the next
/// try, so contending threads stop bouncing the cache line between them (crossbeam's
/// `Backoff::spin`). Under loom a single yield, so the models stay small.
#[cfg_attr(not(pinstream_cas), allow(dead_code))]
pub(crate) struct Backoff(u32);

#[cfg_attr(not(pinstream_cas), allow(dead_code))]
impl Backoff {
    const LIMIT: u32 = 6;

    pub(crate) const fn new() -> Self {
        Self(0)
    }

    #[inline]
    pub(crate) fn spin(&mut self) {
        #[cfg(not(loom))]
        for _ in 0..1u32 << self.0 {
            core::hint::spin_loop();
        }
        #[cfg(loom)]
        loom::thread::yield_now();
        if self.0 < Self::LIMIT {
            self.0 += 1;
        }
    }
}

/// Declares a `const fn` in normal builds and a plain `fn` under loom, whose atomics and
/// cells have no const constructors. Keeps one body for both.
macro_rules! const_fn {
    ($(#[$attr:meta])* $vis:vis fn $($rest:tt)*) => {
        #[cfg(not(loom))]
        $(#[$attr])* $vis const fn $($rest)*
        #[cfg(loom)]
        $(#[$attr])* $vis fn $($rest)*
    };
}
pub(crate) use const_fn;

/// Builds `[T; N]` from a constructor expression: an inline `const` block in normal builds
/// (so it works inside `const fn` for any `T`), `core::array::from_fn` under loom.
macro_rules! array_of {
    ($n:expr, $make:expr) => {{
        #[cfg(not(loom))]
        {
            [const { $make }; $n]
        }
        #[cfg(loom)]
        {
            core::array::from_fn::<_, { $n }, _>(|_| $make)
        }
    }};
}
pub(crate) use array_of;
