//! `LatencyRecorder::record` and `publish` must not allocate: a counting global allocator
//! counts the allocations made by this thread while the recorder works.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pinstream_host::stats::{LatencyRecorder, SharedLatency};

struct Counting;

thread_local! {
    /// Only a thread's own allocations inside its counting window count (the harness and the
    /// other tests run on other threads and allocate whenever they like).
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn note() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds the
// `GlobalAlloc` contract; counting touches only const-initialised thread-locals without
// destructors (they never allocate).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller's `layout` obligations are passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: `ptr` was allocated by `System` through this allocator with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` through this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` and returns how many allocations this thread made meanwhile.
fn allocations_in(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn the_counter_sees_allocations() {
    let n = allocations_in(|| {
        let v = std::hint::black_box(vec![1u8; 100]);
        drop(v);
    });
    assert_eq!(n, 1);
}

#[test]
fn recording_and_publishing_do_not_allocate() {
    let shared = Arc::new(SharedLatency::new());
    let mut recorder = LatencyRecorder::with_interval(Arc::clone(&shared), Duration::ZERO);
    let start = Instant::now();
    let n = allocations_in(|| {
        // Every magnitude from 1 ns to beyond the 60 s bound (saturated).
        let mut v = 1u64;
        while v < 200_000_000_000 {
            recorder.record(v);
            recorder.record(v + v / 3);
            v = v.saturating_mul(3);
        }
        recorder.record(0);
        recorder.record(u64::MAX);
        // Into an empty shared histogram (copy path) ...
        assert!(recorder.publish());
        for i in 0..10_000 {
            recorder.record(i * 7);
        }
        // ... and into a non-empty one (summing path).
        assert!(recorder.publish());
        recorder.record(42);
        assert!(recorder.maybe_publish(start + Duration::from_secs(1)));
        // Publishing with nothing pending is a no-op.
        assert!(recorder.publish());
    });
    assert_eq!(n, 0, "record/publish allocated {n} times");
    let summary = shared.summary();
    let expected = {
        let mut count = 2u64 + 10_000 + 1;
        let mut v = 1u64;
        while v < 200_000_000_000 {
            count += 2;
            v = v.saturating_mul(3);
        }
        count
    };
    assert_eq!(summary.count, expected);
}
