//! Benchmark helpers shared by the criterion suites in `benches/benches/`: CPU pinning, a
//! pinned pair of threads started together, the 256-byte event type and the criterion
//! settings every suite uses.
//!
//! Cross-thread benches run their measuring (or producing) thread on [`CPU_A`] and the other
//! one on [`CPU_B`]. If pinning fails (fewer CPUs, a restrictive cpuset), a warning goes to
//! stderr once and the bench runs unpinned.

use std::hint::spin_loop;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use criterion::Criterion;
use pinstream_host::pin;

/// CPU of the producing / measuring thread in cross-thread benches.
pub const CPU_A: usize = 0;
/// CPU of the consuming / echoing thread in cross-thread benches.
pub const CPU_B: usize = 1;

/// The process's CPU mask before any thread was pinned, to undo pinning with.
static ORIGINAL_AFFINITY: OnceLock<Vec<usize>> = OnceLock::new();
static WARNED: AtomicBool = AtomicBool::new(false);

fn original_affinity() -> &'static [usize] {
    ORIGINAL_AFFINITY.get_or_init(|| pin::current_affinity().unwrap_or_default())
}

fn warn_once(what: &dyn std::fmt::Display) {
    if !WARNED.swap(true, Ordering::Relaxed) {
        eprintln!("warning: {what}; benchmarks run unpinned (figures will be noisier)");
    }
}

/// Pins the calling thread to `cpu`; on failure prints a warning (once per process) and
/// returns `false`, leaving the thread as it was.
pub fn pin_or_warn(cpu: usize) -> bool {
    // Record the unpinned mask before the first pin, for `unpin_current_thread`.
    let _ = original_affinity();
    match pin::pin_current_thread(cpu) {
        Ok(()) => true,
        Err(e) => {
            warn_once(&e);
            false
        }
    }
}

/// Gives the calling thread back the CPU mask the process started with (threads inherit
/// their parent's mask, so a thread spawned by a pinned one starts pinned).
pub fn unpin_current_thread() {
    let cpus = original_affinity();
    if cpus.is_empty() {
        return;
    }
    if let Err(e) = pin::set_affinity(cpus) {
        warn_once(&format_args!("cannot restore the CPU mask {cpus:?}: {e}"));
    }
}

/// Waits until `parties` threads have called this with the same counter (which starts at 0
/// and is used once). Spins, yielding to the scheduler, so the threads start within a few
/// hundred nanoseconds of each other instead of a futex wake-up apart.
pub fn spin_barrier(arrived: &AtomicUsize, parties: usize) {
    arrived.fetch_add(1, Ordering::AcqRel);
    while arrived.load(Ordering::Acquire) < parties {
        spin_loop();
        thread::yield_now();
    }
}

/// Runs `on_a` on the calling thread pinned to [`CPU_A`] and `on_b` on a scoped thread pinned
/// to [`CPU_B`], both released at the same moment after pinning (thread start-up and
/// pinning are not part of what the closures time). Returns both results.
///
/// # Panics
/// If `on_b` panics.
pub fn pinned_pair<A, B, RA, RB>(on_a: A, on_b: B) -> (RA, RB)
where
    A: FnOnce() -> RA,
    B: FnOnce() -> RB + Send,
    RB: Send,
{
    let arrived = AtomicUsize::new(0);
    thread::scope(|s| {
        let arrived = &arrived;
        let other = s.spawn(move || {
            pin_or_warn(CPU_B);
            spin_barrier(arrived, 2);
            on_b()
        });
        pin_or_warn(CPU_A);
        spin_barrier(arrived, 2);
        let ra = on_a();
        let rb = other.join().expect("the thread on CPU_B panicked");
        (ra, rb)
    })
}

/// A 256-byte event, the size of pinstream's pipeline events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(8))]
pub struct Event {
    /// Sequence number; the cross-thread benches check it on the receiving side.
    pub seq: u64,
    /// Opaque payload.
    pub payload: [u8; 248],
}

const _: () = assert!(size_of::<Event>() == 256);

impl Event {
    /// All zeroes.
    pub const ZERO: Event = Event {
        seq: 0,
        payload: [0; 248],
    };

    /// An event with `seq` and a non-trivial payload (the same bytes for every variant of a
    /// bench, so every variant writes the same thing).
    pub fn sample(seq: u64) -> Event {
        let mut payload = [0u8; 248];
        for (i, b) in payload.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(7);
        }
        Event { seq, payload }
    }
}

/// The criterion settings of every suite: 20 samples, 0.5 s warm-up, 2 s of measurement per
/// bench, so the whole suite runs in a few minutes.
pub fn criterion_config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

/// The `main` of every suite (what `criterion_group!` + `criterion_main!` expand to, without
/// their undocumented `pub fn`): applies [`criterion_config`] and the command line, runs
/// `benches`, prints the summary.
pub fn run(benches: fn(&mut Criterion)) {
    let mut criterion = criterion_config().configure_from_args();
    benches(&mut criterion);
    criterion.final_summary();
}

/// A cheap bijective 64-bit mixer (splitmix64's finaliser): turns a counter into keys that
/// look random, so hash tables see no convenient sequential pattern.
#[inline(always)]
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}
