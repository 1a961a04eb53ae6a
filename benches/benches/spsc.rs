//! SPSC rings moving `u64`s from a producer pinned on CPU 0 to a consumer pinned on CPU 1:
//! pinstream `Spsc` vs rtrb, heapless `spsc::Queue` and crossbeam's `ArrayQueue`, one item at
//! a time and (pinstream, rtrb) in 64-item slices; plus a ping-pong round trip.
//!
//! Every ring holds exactly the capacity in the bench id (heapless's `Queue<T, N>` holds
//! `N - 1`, so it is declared with `N = capacity + 1`). Producer and consumer spin with
//! `spin_loop()` when the ring is full / empty. A sample's time runs from the moment both
//! threads are released until the consumer has popped the last item.

use std::hint::spin_loop;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use pinstream_benches::{pin_or_warn, pinned_pair};
use pinstream_core::ring::Spsc;

/// The producing half of a ring, one item at a time.
trait Tx: Send {
    /// Pushes `v`, or returns false when the ring is full.
    fn try_push(&mut self, v: u64) -> bool;
}

/// The consuming half of a ring, one item at a time.
trait Rx: Send {
    /// Pops the oldest item, or `None` when the ring is empty.
    fn try_pop(&mut self) -> Option<u64>;
}

/// Slice-at-a-time halves (pinstream `push_slice`/`pop_slice`, rtrb's partial-slice calls,
/// which are built on `write_chunk_uninit` / `read_chunk`).
trait BatchTx: Send {
    /// Copies as many of `items` as fit, publishing once; returns how many.
    fn push_batch(&mut self, items: &[u64]) -> usize;
}

/// See [`BatchTx`].
trait BatchRx: Send {
    /// Pops up to `out.len()` items into `out`, releasing once; returns how many.
    fn pop_batch(&mut self, out: &mut [u64]) -> usize;
}

impl<const N: usize> Tx for pinstream_core::ring::Producer<'_, u64, N> {
    #[inline(always)]
    fn try_push(&mut self, v: u64) -> bool {
        self.push(v).is_ok()
    }
}

impl<const N: usize> Rx for pinstream_core::ring::Consumer<'_, u64, N> {
    #[inline(always)]
    fn try_pop(&mut self) -> Option<u64> {
        self.pop()
    }
}

impl<const N: usize> BatchTx for pinstream_core::ring::Producer<'_, u64, N> {
    #[inline(always)]
    fn push_batch(&mut self, items: &[u64]) -> usize {
        self.push_slice(items)
    }
}

impl<const N: usize> BatchRx for pinstream_core::ring::Consumer<'_, u64, N> {
    #[inline(always)]
    fn pop_batch(&mut self, out: &mut [u64]) -> usize {
        self.pop_slice(out)
    }
}

impl Tx for rtrb::Producer<u64> {
    #[inline(always)]
    fn try_push(&mut self, v: u64) -> bool {
        self.push(v).is_ok()
    }
}

impl Rx for rtrb::Consumer<u64> {
    #[inline(always)]
    fn try_pop(&mut self) -> Option<u64> {
        self.pop().ok()
    }
}

impl BatchTx for rtrb::Producer<u64> {
    #[inline(always)]
    fn push_batch(&mut self, items: &[u64]) -> usize {
        self.push_partial_slice(items).0.len()
    }
}

impl BatchRx for rtrb::Consumer<u64> {
    #[inline(always)]
    fn pop_batch(&mut self, out: &mut [u64]) -> usize {
        self.pop_partial_slice(out).0.len()
    }
}

impl Tx for heapless::spsc::Producer<'_, u64> {
    #[inline(always)]
    fn try_push(&mut self, v: u64) -> bool {
        self.enqueue(v).is_ok()
    }
}

impl Rx for heapless::spsc::Consumer<'_, u64> {
    #[inline(always)]
    fn try_pop(&mut self) -> Option<u64> {
        self.dequeue()
    }
}

impl Tx for &ArrayQueue<u64> {
    #[inline(always)]
    fn try_push(&mut self, v: u64) -> bool {
        self.push(v).is_ok()
    }
}

impl Rx for &ArrayQueue<u64> {
    #[inline(always)]
    fn try_pop(&mut self) -> Option<u64> {
        self.pop()
    }
}

/// Moves `0..iters` from CPU 0 to CPU 1 one item at a time; checks order on arrival.
fn stream<T: Tx, R: Rx>(iters: u64, mut tx: T, mut rx: R) -> Duration {
    let (start, end) = pinned_pair(
        move || {
            let start = Instant::now();
            let mut i = 0;
            while i < iters {
                if tx.try_push(i) {
                    i += 1;
                } else {
                    spin_loop();
                }
            }
            start
        },
        move || {
            let mut next = 0;
            while next < iters {
                match rx.try_pop() {
                    Some(v) => {
                        assert!(v == next, "out of order: got {v}, expected {next}");
                        next += 1;
                    }
                    None => spin_loop(),
                }
            }
            Instant::now()
        },
    );
    end.saturating_duration_since(start)
}

/// Items per slice in the batch benches.
const BATCH: usize = 64;

/// Moves `0..iters` from CPU 0 to CPU 1 in slices of up to [`BATCH`]; checks order on arrival.
fn stream_batch<T: BatchTx, R: BatchRx>(iters: u64, mut tx: T, mut rx: R) -> Duration {
    let (start, end) = pinned_pair(
        move || {
            let start = Instant::now();
            let mut buf = [0u64; BATCH];
            let mut i = 0;
            while i < iters {
                let k = (iters - i).min(BATCH as u64) as usize;
                for (j, slot) in buf[..k].iter_mut().enumerate() {
                    *slot = i + j as u64;
                }
                let pushed = tx.push_batch(&buf[..k]);
                if pushed == 0 {
                    spin_loop();
                }
                i += pushed as u64;
            }
            start
        },
        move || {
            let mut buf = [0u64; BATCH];
            let mut next = 0;
            while next < iters {
                let n = rx.pop_batch(&mut buf);
                if n == 0 {
                    spin_loop();
                    continue;
                }
                for &v in &buf[..n] {
                    assert!(v == next, "out of order: got {v}, expected {next}");
                    next += 1;
                }
            }
            Instant::now()
        },
    );
    end.saturating_duration_since(start)
}

/// Round trips: CPU 0 sends each item through `tx`, CPU 1 echoes it back through its own
/// ring, CPU 0 waits for it before sending the next. Returns CPU 0's elapsed time.
fn ping_pong<T1: Tx, R1: Rx, T2: Tx, R2: Rx>(
    iters: u64,
    (mut tx, mut rx_back): (T1, R2),
    (mut rx, mut tx_back): (R1, T2),
) -> Duration {
    pinned_pair(
        move || {
            let start = Instant::now();
            for i in 0..iters {
                while !tx.try_push(i) {
                    spin_loop();
                }
                let v = loop {
                    match rx_back.try_pop() {
                        Some(v) => break v,
                        None => spin_loop(),
                    }
                };
                assert!(v == i, "echo mismatch: got {v}, expected {i}");
            }
            start.elapsed()
        },
        move || {
            for _ in 0..iters {
                let v = loop {
                    match rx.try_pop() {
                        Some(v) => break v,
                        None => spin_loop(),
                    }
                };
                while !tx_back.try_push(v) {
                    spin_loop();
                }
            }
        },
    )
    .0
}

fn single_item<const CAP: usize, const CAP_PLUS_1: usize>(c: &mut Criterion) {
    let mut group = c.benchmark_group("spsc_u64");
    group.throughput(Throughput::Elements(1));

    group.bench_function(BenchmarkId::new("pinstream", CAP), |b| {
        b.iter_custom(|iters| {
            let mut ring = Box::new(Spsc::<u64, CAP>::new());
            let (tx, rx) = ring.split();
            stream(iters, tx, rx)
        });
    });
    group.bench_function(BenchmarkId::new("rtrb", CAP), |b| {
        b.iter_custom(|iters| {
            let (tx, rx) = rtrb::RingBuffer::<u64>::new(CAP);
            stream(iters, tx, rx)
        });
    });
    group.bench_function(BenchmarkId::new("heapless", CAP), |b| {
        b.iter_custom(|iters| {
            // Queue<T, N> holds N - 1 items.
            let mut queue = Box::new(heapless::spsc::Queue::<u64, CAP_PLUS_1>::new());
            assert_eq!(queue.capacity(), CAP);
            let (tx, rx) = queue.split();
            stream(iters, tx, rx)
        });
    });
    group.bench_function(BenchmarkId::new("crossbeam_array_queue", CAP), |b| {
        b.iter_custom(|iters| {
            let queue = ArrayQueue::<u64>::new(CAP);
            stream(iters, &queue, &queue)
        });
    });
    group.finish();
}

fn batch(c: &mut Criterion) {
    const CAP: usize = 4096;
    let mut group = c.benchmark_group("spsc_u64_batch64");
    group.throughput(Throughput::Elements(1));

    group.bench_function(BenchmarkId::new("pinstream", CAP), |b| {
        b.iter_custom(|iters| {
            let mut ring = Box::new(Spsc::<u64, CAP>::new());
            let (tx, rx) = ring.split();
            stream_batch(iters, tx, rx)
        });
    });
    group.bench_function(BenchmarkId::new("rtrb", CAP), |b| {
        b.iter_custom(|iters| {
            let (tx, rx) = rtrb::RingBuffer::<u64>::new(CAP);
            stream_batch(iters, tx, rx)
        });
    });
    group.finish();
}

fn round_trip(c: &mut Criterion) {
    const CAP: usize = 64;
    let mut group = c.benchmark_group("spsc_u64_round_trip");
    group.throughput(Throughput::Elements(1));

    group.bench_function(BenchmarkId::new("pinstream", CAP), |b| {
        b.iter_custom(|iters| {
            let mut there = Box::new(Spsc::<u64, CAP>::new());
            let mut back = Box::new(Spsc::<u64, CAP>::new());
            let (tx, rx) = there.split();
            let (tx_back, rx_back) = back.split();
            ping_pong(iters, (tx, rx_back), (rx, tx_back))
        });
    });
    group.bench_function(BenchmarkId::new("rtrb", CAP), |b| {
        b.iter_custom(|iters| {
            let (tx, rx) = rtrb::RingBuffer::<u64>::new(CAP);
            let (tx_back, rx_back) = rtrb::RingBuffer::<u64>::new(CAP);
            ping_pong(iters, (tx, rx_back), (rx, tx_back))
        });
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    // The measuring thread stays on CPU 0 for the whole run; `pinned_pair` re-asserts it.
    pin_or_warn(pinstream_benches::CPU_A);
    single_item::<4, 5>(c);
    single_item::<4096, 4097>(c);
    batch(c);
    round_trip(c);
}

fn main() {
    pinstream_benches::run(benches);
}
