//! Shared helpers for pinstream's cross-crate tests: a counting allocator and a seeded RNG.
//!
//! [`CountingAllocator`] wraps the system allocator and counts allocations made by threads
//! by the calling thread while it is armed ([`CountingAllocator::count_in`]), so a test can
//! prove a hot path allocates nothing while the harness and other tests allocate freely on
//! their own threads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub mod client;
pub mod pki;

/// A global allocator that counts allocations (alloc, alloc_zeroed, realloc) made by each
/// thread while it is armed. Install it in a test binary with `#[global_allocator]`.
pub struct CountingAllocator {
    _private: (),
}

thread_local! {
    // `const` initialisation: using them never allocates (no lazy init, no destructor).
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static THREAD_COUNT: Cell<usize> = const { Cell::new(0) };
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}

/// Counting of watched threads (threads the test does not run itself, e.g. an engine's):
/// on while set, and what it counted.
static WATCH_ARMED: AtomicBool = AtomicBool::new(false);
static WATCHED_COUNT: AtomicUsize = AtomicUsize::new(0);

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

    /// Marks the calling thread as watched: while [`arm_watched`](Self::arm_watched) is on,
    /// its allocations count in [`watched_count`](Self::watched_count). Call it first thing
    /// on the thread (e.g. from an engine's thread hook).
    pub fn watch_this_thread(&self) {
        WATCHED.with(|w| w.set(true));
    }

    /// Starts counting the watched threads' allocations.
    pub fn arm_watched(&self) {
        WATCH_ARMED.store(true, Ordering::SeqCst);
    }

    /// Stops counting the watched threads' allocations.
    pub fn disarm_watched(&self) {
        WATCH_ARMED.store(false, Ordering::SeqCst);
    }

    /// Allocations the watched threads made while armed.
    pub fn watched_count(&self) -> usize {
        WATCHED_COUNT.load(Ordering::SeqCst)
    }

    fn note(&self) {
        // `try_with`: during thread teardown the TLS slots may be gone; do not count then.
        if ARMED.try_with(Cell::get).unwrap_or(false) {
            let _ = THREAD_COUNT.try_with(|c| c.set(c.get() + 1));
        }
        if WATCH_ARMED.load(Ordering::Relaxed) && WATCHED.try_with(Cell::get).unwrap_or(false) {
            WATCHED_COUNT.fetch_add(1, Ordering::SeqCst);
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

/// A fresh directory under the system temp dir, removed (with its contents) on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// `<tmp>/pinstream-<name>-<pid>-<n>`, created empty.
    pub fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pinstream-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        Self(dir)
    }

    /// The path.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
