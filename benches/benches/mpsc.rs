//! Bounded MPSC queues of capacity 4096 moving `u64`s from 1 or 2 producer threads into one
//! consumer: pinstream `Mpsc` vs crossbeam's `ArrayQueue`, `std::sync::mpsc::sync_channel` and
//! `crossbeam_channel::bounded`.
//!
//! - 1 producer: producer pinned to CPU 0, consumer (the bench thread) pinned to CPU 1; both
//!   spin with `spin_loop()` on full / empty.
//! - 2 producers: the machine has 2 CPUs, so 3 busy threads must share them. Nothing is pinned
//!   (every thread gets the process's original CPU mask back) and the scheduler places them;
//!   producers and consumer `yield_now()` on full / empty, since spinning would burn the
//!   time slice of the thread it waits for.
//!
//! The retry policy is the same for every queue of a case. The two channels block natively
//! (`send` / `recv`), with their own spin-then-park strategy. A sample's time runs from the
//! release of all threads until the consumer has received the last item; the consumer checks
//! the sum of what it received.

use std::hint::spin_loop;
use std::sync::atomic::AtomicUsize;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use pinstream_benches::{CPU_A, CPU_B, pin_or_warn, spin_barrier};
use pinstream_core::ring::Mpsc;

const CAP: usize = 4096;

/// What a producer or consumer does when the queue is full / empty.
#[derive(Clone, Copy)]
enum Retry {
    Spin,
    Yield,
}

impl Retry {
    #[inline(always)]
    fn wait(self) {
        match self {
            Retry::Spin => spin_loop(),
            Retry::Yield => thread::yield_now(),
        }
    }
}

/// Runs `producers` threads, producer `k` pushing `k, k + producers, ...` below `iters`, and
/// pops all `iters` items on the calling thread. `push` must not return before the item is in;
/// `pop` must not return before it has one.
fn run<P, C>(producers: usize, pinned: bool, iters: u64, push: P, mut pop: C) -> Duration
where
    P: Fn(u64) + Sync,
    C: FnMut() -> u64,
{
    let place = |cpu| {
        if pinned {
            pin_or_warn(cpu);
        } else {
            pinstream_benches::unpin_current_thread();
        }
    };
    let arrived = AtomicUsize::new(0);
    thread::scope(|s| {
        for k in 0..producers {
            let (push, arrived) = (&push, &arrived);
            s.spawn(move || {
                place(CPU_A);
                spin_barrier(arrived, producers + 1);
                let mut v = k as u64;
                while v < iters {
                    push(v);
                    v += producers as u64;
                }
            });
        }
        place(CPU_B);
        spin_barrier(&arrived, producers + 1);
        let start = Instant::now();
        let mut sum = 0u64;
        for _ in 0..iters {
            sum = sum.wrapping_add(pop());
        }
        let elapsed = start.elapsed();
        let expected = (u128::from(iters) * u128::from(iters.saturating_sub(1)) / 2) as u64;
        assert_eq!(sum, expected, "items lost or duplicated");
        elapsed
    })
}

fn case(c: &mut Criterion, producers: usize) {
    let pinned = producers == 1;
    let retry = if pinned { Retry::Spin } else { Retry::Yield };
    let mut group = c.benchmark_group(format!("mpsc_u64_{producers}p"));
    group.throughput(Throughput::Elements(1));

    group.bench_function(BenchmarkId::new("pinstream", CAP), |b| {
        b.iter_custom(|iters| {
            let ring = Box::new(Mpsc::<u64, CAP>::new());
            let mut rx = ring.consumer().expect("first consumer");
            run(
                producers,
                pinned,
                iters,
                |mut v| {
                    while let Err(e) = ring.push(v) {
                        v = e.into_inner();
                        retry.wait();
                    }
                },
                || loop {
                    match rx.pop() {
                        Some(v) => break v,
                        None => retry.wait(),
                    }
                },
            )
        });
    });
    group.bench_function(BenchmarkId::new("crossbeam_array_queue", CAP), |b| {
        b.iter_custom(|iters| {
            let queue = ArrayQueue::<u64>::new(CAP);
            run(
                producers,
                pinned,
                iters,
                |mut v| {
                    while let Err(back) = queue.push(v) {
                        v = back;
                        retry.wait();
                    }
                },
                || loop {
                    match queue.pop() {
                        Some(v) => break v,
                        None => retry.wait(),
                    }
                },
            )
        });
    });
    group.bench_function(BenchmarkId::new("std_sync_channel", CAP), |b| {
        b.iter_custom(|iters| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<u64>(CAP);
            run(
                producers,
                pinned,
                iters,
                |v| tx.send(v).expect("receiver alive"),
                || rx.recv().expect("senders alive"),
            )
        });
    });
    group.bench_function(BenchmarkId::new("crossbeam_channel", CAP), |b| {
        b.iter_custom(|iters| {
            let (tx, rx) = crossbeam_channel::bounded::<u64>(CAP);
            run(
                producers,
                pinned,
                iters,
                |v| tx.send(v).expect("receiver alive"),
                || rx.recv().expect("senders alive"),
            )
        });
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    case(c, 1);
    case(c, 2);
}

fn main() {
    pinstream_benches::run(benches);
}
