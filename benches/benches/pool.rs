//! Getting a 256-byte event slot, writing the event into it and giving the slot back:
//! pinstream `EventPool` (1024 slots, in a `static`) vs `Box::new` + drop (the global
//! allocator, glibc malloc here) vs heapless 0.9's `box_pool!` (1024 blocks).
//!
//! - `pool_256b_one_thread`: acquire, write, release on one thread (pinned to CPU 0).
//! - `pool_256b_cross_thread`: CPU 0 acquires and writes, sends the handle / box through a
//!   pinstream `Spsc` of 512 to CPU 1, which reads the sequence number and drops it
//!   (releasing it there). Time runs until CPU 1 has released the last one.
//!
//! Every variant writes the same 256 bytes (a copy of one template read through
//! `black_box`).

use std::hint::{black_box, spin_loop};
use std::sync::Once;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use heapless::pool::boxed::BoxBlock;
use pinstream_benches::{CPU_A, Event, pin_or_warn, pinned_pair};
use pinstream_core::pool::EventPool;
use pinstream_core::ring::Spsc;

const SLOTS: usize = 1024;
/// Ring between the threads: smaller than the pool, so acquire never runs dry.
const LANE: usize = 512;

static POOL: EventPool<Event, SLOTS> = EventPool::new(Event::ZERO);

/// The heapless pool (`box_pool!` makes a `pub` singleton type; a private module keeps it
/// out of the crate's documented surface).
mod heapless_events {
    use pinstream_benches::Event;

    heapless::box_pool!(HeaplessEvents: Event);
}
use heapless_events::HeaplessEvents;
type HeaplessBox = heapless::pool::boxed::Box<HeaplessEvents>;

/// Gives `SLOTS` leaked blocks to the heapless pool, once per process.
fn heapless_pool() -> HeaplessEvents {
    static MANAGED: Once = Once::new();
    MANAGED.call_once(|| {
        let blocks: &'static mut [BoxBlock<Event>] =
            Box::leak((0..SLOTS).map(|_| BoxBlock::new()).collect());
        for block in blocks {
            HeaplessEvents.manage(block);
        }
    });
    HeaplessEvents
}

fn one_thread(c: &mut Criterion) {
    let template = Event::sample(0);
    let mut group = c.benchmark_group("pool_256b_one_thread");
    group.throughput(Throughput::Elements(1));

    group.bench_function("pinstream_event_pool", |b| {
        b.iter(|| {
            let mut slot = POOL.acquire().expect("a free slot");
            *slot = *black_box(&template);
            black_box(&mut *slot);
        });
    });
    group.bench_function("std_box", |b| {
        b.iter(|| {
            let mut boxed = Box::new(*black_box(&template));
            black_box(&mut *boxed);
        });
    });
    let hpool = heapless_pool();
    group.bench_function("heapless_box_pool", |b| {
        b.iter(|| {
            let mut boxed = hpool.alloc(*black_box(&template)).expect("a free block");
            black_box(&mut *boxed);
        });
    });
    group.finish();
}

/// CPU 0 makes `iters` events with `make(seq)` and pushes them through a ring; CPU 1 checks
/// their sequence numbers and drops them.
fn cross<T, F>(iters: u64, make: F) -> Duration
where
    T: std::ops::Deref<Target = Event> + Send,
    F: Fn(u64) -> T,
{
    let mut lane = Box::new(Spsc::<T, LANE>::new());
    let (mut tx, mut rx) = lane.split();
    let (start, end) = pinned_pair(
        move || {
            let start = Instant::now();
            for seq in 0..iters {
                let mut item = make(seq);
                loop {
                    match tx.push(item) {
                        Ok(()) => break,
                        Err(e) => {
                            item = e.into_inner();
                            spin_loop();
                        }
                    }
                }
            }
            start
        },
        move || {
            let mut next = 0;
            while next < iters {
                match rx.pop() {
                    Some(item) => {
                        assert!(item.seq == next, "got {}, expected {next}", item.seq);
                        drop(item);
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

fn cross_thread(c: &mut Criterion) {
    let template = Event::sample(0);
    let template = &template;
    let mut group = c.benchmark_group("pool_256b_cross_thread");
    group.throughput(Throughput::Elements(1));

    group.bench_function("pinstream_event_pool", |b| {
        b.iter_custom(|iters| {
            cross(iters, |seq| {
                let mut slot = loop {
                    match POOL.acquire() {
                        Some(slot) => break slot,
                        None => spin_loop(),
                    }
                };
                *slot = *black_box(template);
                slot.seq = seq;
                slot
            })
        });
    });
    group.bench_function("std_box", |b| {
        b.iter_custom(|iters| {
            cross(iters, |seq| {
                let mut boxed = Box::new(*black_box(template));
                boxed.seq = seq;
                boxed
            })
        });
    });
    let hpool = heapless_pool();
    group.bench_function("heapless_box_pool", |b| {
        b.iter_custom(|iters| {
            cross(iters, |seq| {
                let mut boxed: HeaplessBox = loop {
                    match hpool.alloc(*black_box(template)) {
                        Ok(boxed) => break boxed,
                        Err(_) => spin_loop(),
                    }
                };
                boxed.seq = seq;
                boxed
            })
        });
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    pin_or_warn(CPU_A);
    one_thread(c);
    cross_thread(c);
}

fn main() {
    pinstream_benches::run(benches);
}
