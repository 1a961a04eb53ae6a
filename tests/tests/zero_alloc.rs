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
