//! Zero allocation is a tested property: the hot paths of the core primitives, driven here
//! on armed threads, must not touch the heap. Run in the debug profile (`cargo test`), where
//! nothing is optimised away.

use std::thread;

use pinstream_core::dedup::{DedupTable, Verdict};
use pinstream_core::pool::EventPool;
use pinstream_core::ring::{Mpsc, PushError, Spsc};
use pinstream_tests::CountingAllocator;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

const ROUNDS: u64 = 10_000;

/// The counter must see an allocation, or every other test here proves nothing.
#[test]
fn sanity_the_counter_sees_one_allocation() {
    let (count, b) = ALLOC.count_in(|| std::hint::black_box(Box::new(7u64)));
    assert_eq!(count, 1);
    assert_eq!(*b, 7);
}

#[test]
fn spsc_push_pop_and_batches_allocate_nothing() {
    let mut ring: Spsc<u64, 64> = Spsc::new();
    let (mut tx, mut rx) = ring.split();
    let (count, ()) = ALLOC.count_in(|| {
        let mut out = [0u64; 16];
        let chunk = [1u64; 16];
        for i in 0..ROUNDS {
            tx.push(i).unwrap();
            assert_eq!(rx.pop(), Some(i));
            assert_eq!(tx.push_slice(&chunk), 16);
            assert_eq!(tx.push_iter(&mut (0..8u64)), 8);
            assert_eq!(rx.pop_slice(&mut out), 16);
            assert_eq!(rx.pop_slice(&mut out), 8);
        }
    });
    assert_eq!(count, 0);
}

#[test]
fn spsc_across_threads_allocates_nothing() {
    static RING: Spsc<u64, 256> = Spsc::new();
    let (mut tx, mut rx) = RING.try_split().unwrap();
    let consumer = thread::spawn(move || {
        ALLOC
            .count_in(|| {
                let mut next = 0;
                let mut out = [0u64; 32];
                while next < ROUNDS {
                    let n = rx.pop_slice(&mut out);
                    for v in &out[..n] {
                        assert_eq!(*v, next);
                        next += 1;
                    }
                }
            })
            .0
    });
    let (produced, ()) = ALLOC.count_in(|| {
        for i in 0..ROUNDS {
            let mut v = i;
            while let Err(PushError::Full(back)) = tx.push(v) {
                v = back;
                std::hint::spin_loop();
            }
        }
    });
    assert_eq!(produced, 0);
    assert_eq!(consumer.join().unwrap(), 0);
}

#[test]
fn mpsc_push_pop_allocates_nothing() {
    let ring: Mpsc<u64, 64> = Mpsc::new();
    let mut rx = ring.consumer().unwrap();
    let (count, ()) = ALLOC.count_in(|| {
        for i in 0..ROUNDS {
            ring.push(i).unwrap();
            ring.push(i + 1).unwrap();
            assert_eq!(rx.pop(), Some(i));
            assert_eq!(rx.pop_each(4, |v| assert_eq!(v, i + 1)), 1);
        }
    });
    assert_eq!(count, 0);
}

#[test]
fn pool_acquire_release_allocates_nothing() {
    static POOL: EventPool<[u8; 256], 8> = EventPool::new([0; 256]);
    let (count, ()) = ALLOC.count_in(|| {
        for i in 0..ROUNDS {
            let mut a = POOL.acquire().unwrap();
            a[0] = i as u8;
            let b = POOL.acquire_with([1; 256]).unwrap();
            let index = a.into_index();
            drop(b);
            // SAFETY: `index` came from `into_index` on POOL, once.
            let a = unsafe { POOL.from_index(index) };
            assert_eq!(a[0], i as u8);
            a.release();
        }
    });
    assert_eq!(count, 0);
}

#[test]
fn dedup_check_and_insert_allocates_nothing() {
    static TABLE: DedupTable<1024> = DedupTable::new(100);
    let (count, ()) = ALLOC.count_in(|| {
        for i in 0..ROUNDS {
            // A steady stream: new keys, repeats, and expiry reusing slots.
            assert_eq!(TABLE.check_and_insert(i, i), Verdict::New);
            assert_eq!(TABLE.check_and_insert(i, i + 1), Verdict::Duplicate);
        }
    });
    assert_eq!(count, 0);
}

#[test]
fn dedup_exclusive_path_allocates_nothing() {
    let mut table: DedupTable<1024> = DedupTable::new(100);
    let (count, ()) = ALLOC.count_in(|| {
        for i in 0..ROUNDS {
            assert_eq!(table.check_and_insert_mut(i, i), Verdict::New);
            assert_eq!(table.check_and_insert_mut(i, i + 1), Verdict::Duplicate);
        }
    });
    assert_eq!(count, 0);
}

/// The whole core pipeline: encode → stream-decode (in odd splits) → dispatch (rate limiter,
/// topic check, control plane, pool, lanes) → process (alerts, dedup, aggregation, a sink that
/// refuses now and then so the retry path runs) → dead letters drained.
#[test]
fn pipeline_decode_dispatch_process_sink_allocates_nothing() {
    use pinstream_core::accounting::{Accounting, StageCounters};
    use pinstream_core::control::{ControlSignal, Level};
    use pinstream_core::dispatch::Dispatcher;
    use pinstream_core::event::{EventHeader, Priority};
    use pinstream_core::lanes::Lanes;
    use pinstream_core::process::realtime::{AlertRule, Condition, CountAlerts};
    use pinstream_core::process::{
        LaneProcessors, Processors, Record, RetryPolicy, Sink, SinkError,
    };
    use pinstream_core::ratelimit::{RateConfig, RateLimiter};
    use pinstream_core::wire::{BatchEncoder, StreamDecoder};

    struct FlakySink {
        calls: u64,
        stored: u64,
    }
    impl Sink for FlakySink {
        fn store(&mut self, record: &Record<'_>) -> Result<(), SinkError> {
            self.calls += 1;
            if self.calls % 7 == 0 {
                return Err(SinkError);
            }
            if let Record::Event(e) = record {
                std::hint::black_box(e.payload);
            }
            self.stored += 1;
            Ok(())
        }
    }

    // Built before arming: everything the pipeline needs is sized here.
    let mut lanes: Box<Lanes<64, 256, 64, 256>> = Box::new(Lanes::new());
    // Half the payloads (120 bytes) are longer than the 64-byte slot: they go to the arena.
    let mut arena = vec![0u8; 4096];
    let (input, output, mut dead) = lanes.split_with_arena(&mut arena);
    let limiter: RateLimiter<2> = RateLimiter::new(RateConfig::new(1_000, 10, 2_000).unwrap());
    let signal = ControlSignal::new();
    let (dc, pc) = (StageCounters::new(), StageCounters::new());
    let mut dispatcher = Dispatcher::new(input, &limiter, &signal, 3, &dc);
    let policy = RetryPolicy {
        max_attempts: 3,
        backoff: 1,
        max_backoff: 4,
    };
    let mut processors: Processors<'_, 64, 256, 64, 256, 8> = Processors::new(output, policy, &pc);
    let mut procs: Box<LaneProcessors<2, 4096, 4>> = Box::new(LaneProcessors::new(100, 10));
    procs
        .realtime
        .add_rule(AlertRule {
            topic: 1,
            condition: Condition::Above(4),
        })
        .unwrap();
    let mut decoder: Box<StreamDecoder<4096>> = Box::new(StreamDecoder::new());
    let mut frame = vec![0u8; 4096];
    let mut alerts = CountAlerts::default();
    let mut sink = FlakySink {
        calls: 0,
        stored: 0,
    };
    let rounds = if cfg!(miri) { 4 } else { 400 };

    let (count, ()) = ALLOC.count_in(|| {
        for round in 0..rounds {
            let now = round * 3;
            let mut batch = BatchEncoder::new(&mut frame, round + 1).unwrap();
            for i in 0..16u64 {
                // Every fourth id repeats the previous round's: duplicates in the mix.
                let id = if i % 4 == 0 {
                    (round.max(1) - 1) * 16 + i
                } else {
                    round * 16 + i
                };
                let header =
                    EventHeader::new(id, (i % 4) as u16, Priority::ALL[(i % 5) as usize], now)
                        .with_value(i as i64);
                let len = if i % 2 == 0 { 40 } else { 120 };
                batch.push(&header, &[i as u8; 120][..len]).unwrap();
            }
            let len = batch.finish().unwrap();
            if round == rounds / 2 {
                signal.publish(Level::Degraded); // shed the batch lane for a round
            } else {
                signal.publish(Level::Healthy);
            }
            for chunk in frame[..len].chunks(37) {
                decoder.feed(chunk, |result| match result {
                    Ok(f) => {
                        dispatcher.dispatch_frame(&f, (round % 2) as u32, now);
                    }
                    Err(e) => dispatcher.reject_frame(e),
                });
            }
            processors.poll(&mut procs, &mut alerts, &mut sink, now, 32);
            dead.drain(usize::MAX, |d| {
                std::hint::black_box(d);
            });
        }
        processors.drain(&mut procs, &mut alerts, &mut sink, rounds * 3 + 100);
        dead.drain(usize::MAX, |d| {
            std::hint::black_box(d);
        });
    });
    assert_eq!(count, 0, "the pipeline allocated {count} times");
    let books = Accounting::of(&[&dc, &pc]);
    books.check(0).unwrap();
    assert_eq!(books.ingested, rounds * 16);
    assert!(sink.stored > 0, "stored");
    assert!(alerts.0 > 0, "alerts");
    assert!(pc.sink_retries.get() > 0, "retries");
    assert!(
        books.dead_lettered > 0,
        "duplicates, shed and unknown topic 3"
    );
}
