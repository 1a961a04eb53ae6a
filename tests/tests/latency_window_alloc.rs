//! The status line's per-interval latency window reads without allocating once built (it runs
//! off the engine threads, but it runs every second for the life of the process).

use std::sync::Arc;

use pinstream_host::stats::{LatencyRecorder, LatencyWindow, SharedLatency};
use pinstream_tests::CountingAllocator;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

#[test]
fn a_latency_window_read_does_not_allocate() {
    let shared = Arc::new(SharedLatency::new());
    let mut rec = LatencyRecorder::new(Arc::clone(&shared));
    let mut window = LatencyWindow::new();
    let (allocs, counts) = ALLOC.count_in(|| {
        let mut seen = [0u64; 10];
        for (i, slot) in seen.iter_mut().enumerate() {
            for v in 0..100u64 {
                rec.record(1_000 * (i as u64 + 1) + v);
            }
            rec.publish();
            *slot = window.since_last(&shared).count;
        }
        seen
    });
    assert_eq!(allocs, 0, "since_last allocated {allocs} time(s)");
    assert_eq!(counts, [100; 10]);
}
