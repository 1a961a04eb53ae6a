//! Shared helpers for pinstream's cross-crate tests: a counting allocator and a seeded RNG.
//!
//! [`CountingAllocator`] wraps the system allocator and counts allocations made by threads
//! by the calling thread while it is armed ([`CountingAllocator::count_in`]), so a test can
//! prove a hot path allocates nothing while the harness and other tests allocate freely on
//! their own threads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// A global allocator that counts allocations (alloc, alloc_zeroed, realloc) made by each
/// thread while it is armed. Install it in a test binary with `#[global_allocator]`.
pub struct CountingAllocator {
    _private: (),
}

thread_local! {
    // `const` initialisation: using them never allocates (no lazy init, no destructor).
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static THREAD_COUNT: Cell<usize> = const { Cell::new(0) };
}

impl CountingAllocator {
    /// A counter at zero.
    pub const fn new() -> Self {
        Self { _private: () }
    }

    /// Starts counting this thread's allocations.
    pub fn arm(&self) {
        ARMED.with(|a| a.set(true));
    }

    /// Stops counting this thread's allocations.
    pub fn disarm(&self) {
        ARMED.with(|a| a.set(false));
    }

    /// Allocations counted so far on the calling thread while it was armed.
    pub fn thread_count(&self) -> usize {
        THREAD_COUNT.with(Cell::get)
    }

    /// Runs `f` on this thread with counting armed and returns how many allocations this
    /// thread made inside it (other threads' allocations are not included).
    pub fn count_in<R>(&self, f: impl FnOnce() -> R) -> (usize, R) {
        let before = self.thread_count();
        self.arm();
        let r = f();
        self.disarm();
        (self.thread_count() - before, r)
    }

    fn note(&self) {
        // `try_with`: during thread teardown the TLS slots may be gone; do not count then.
        if ARMED.try_with(Cell::get).unwrap_or(false) {
            let _ = THREAD_COUNT.try_with(|c| c.set(c.get() + 1));
        }
    }
}

impl Default for CountingAllocator {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the `GlobalAlloc`
// contract; counting touches only const thread-locals, which never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.note();
        // SAFETY: forwarded with the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.note();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.note();
        // SAFETY: `ptr`/`layout` came from this allocator, i.e. from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr`/`layout` came from this allocator, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// A small seeded generator (splitmix64) for deterministic simulations: no dependency, and a
/// failing seed replays exactly.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (modulo bias is irrelevant for a simulation).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `permille / 1000`.
    pub fn chance(&mut self, permille: u64) -> bool {
        self.below(1000) < permille
    }
}
