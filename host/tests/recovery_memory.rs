//! Recovery reads segments through a fixed buffer: the memory it takes does not grow with the
//! size of the active segment. A counting allocator measures the peak bytes allocated while
//! `Log::open` recovers a 48 MiB segment; reading the segment whole (as recovery once did)
//! takes at least 48 MiB.
//!
//! One test in this binary, so no other test's allocations count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};

use pinstream_host::storage::{Durability, Log, LogConfig};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const MIB: usize = 1 << 20;

#[test]
fn recovery_memory_does_not_grow_with_the_segment() {
    let dir = std::env::temp_dir().join(format!("pinstream-recovery-mem-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let mut cfg = LogConfig::new(&dir);
    cfg.segment_bytes = 1 << 30;
    // Records of 3 MiB (larger than the scan buffer: their CRC is streamed) among small ones.
    cfg.max_record_bytes = 4 << 20;
    cfg.write_buffer_bytes = (4 << 20) + 64;
    cfg.durability = Durability::None;
    let (mut log, _) = Log::open(cfg.clone()).unwrap();
    let big = vec![0x5Au8; 3 * MIB];
    let small = vec![0xA5u8; 40 << 10];
    for i in 0..16u64 {
        log.append(1, &big).unwrap();
        for _ in 0..(i % 4) {
            log.append(1, &small).unwrap();
        }
    }
    log.close().unwrap();
    let seg_len: u64 = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert!(seg_len > 48 * MIB as u64, "{seg_len}");

    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let (log, report) = Log::open(cfg.clone()).unwrap();
    let peak = PEAK.load(Ordering::Relaxed) - before;
    assert_eq!(report.records_scanned, 16 + 24, "{report}");
    assert!(report.is_clean(), "{report}");
    // The write buffer (allocated by open) plus a scan buffer and small change, against
    // the 48 MiB a whole-segment read takes.
    let bound = cfg.write_buffer_bytes + 4 * MIB;
    assert!(
        peak <= bound,
        "recovery of a {seg_len}-byte segment allocated {peak} bytes at peak (bound {bound})"
    );
    drop(log);
    let _ = fs::remove_dir_all(&dir);
}
