use core::sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering as StdOrdering};
use std::thread;
use std::vec::Vec;

use super::*;

const ROUNDS: usize = if cfg!(miri) { 100 } else { 50_000 };

#[test]
fn hands_out_every_slot_once_then_none() {
    let pool: EventPool<u32, 5> = EventPool::new(0);
    let handles: Vec<_> = (0..5).map(|_| pool.acquire().unwrap()).collect();
    let mut indices: Vec<usize> = handles.iter().map(|h| h.index()).collect();
    indices.sort();
    assert_eq!(indices, [0, 1, 2, 3, 4]);
    assert!(pool.acquire().is_none());
    assert_eq!(pool.acquire_with(9).err(), Some(9));
    drop(handles);
    assert_eq!(
        (0..5)
            .filter_map(|_| pool.acquire().map(Handle::into_index))
            .count(),
        5
    );
}

#[test]
fn values_persist_and_release_makes_room() {
    let pool: EventPool<[u8; 16], 2> = EventPool::new([1; 16]);
    let mut a = pool.acquire().unwrap();
    assert_eq!(*a, [1; 16]);
    a[3] = 7;
    let b = pool.acquire_with([2; 16]).unwrap();
    assert_eq!(b[0], 2);
    assert!(pool.acquire().is_none());
    let index = a.index();
    a.release();
    let again = pool.acquire().unwrap();
    assert_eq!(
        again.index(),
        index,
        "LIFO free list hands back the last released slot"
    );
    assert_eq!(again[3], 7, "slots keep what the last user wrote");
}

#[test]
fn index_round_trip() {
    let pool: EventPool<u64, 3> = EventPool::new(0);
    let mut h = pool.acquire().unwrap();
    *h = 99;
    let index = h.into_index();
    assert_eq!(pool.acquire().map(|h| h.index() != index), Some(true));
    // SAFETY: `index` came from `into_index` on this pool, once.
    let h = unsafe { pool.from_index(index) };
    assert_eq!(*h, 99);
}

/// Every thread stamps each slot it acquires with its own id in an owner table and fails if
/// the slot was already owned: a double hand-out (the ABA bug) shows up as a stamp clash.
#[test]
fn stress_no_slot_is_handed_out_twice() {
    const THREADS: usize = 4;
    const SLOTS: usize = 8;
    let pool: EventPool<usize, SLOTS> = EventPool::new(0);
    let owners: [StdAtomicUsize; SLOTS] = [const { StdAtomicUsize::new(0) }; SLOTS];
    thread::scope(|s| {
        for t in 1..=THREADS {
            let (pool, owners) = (&pool, &owners);
            s.spawn(move || {
                let mut held = Vec::with_capacity(3);
                for round in 0..ROUNDS {
                    // Hold up to three slots so the free list keeps changing under others.
                    if let Some(mut h) = pool.acquire() {
                        let prev = owners[h.index()].swap(t, StdOrdering::AcqRel);
                        assert_eq!(
                            prev,
                            0,
                            "slot {} handed to {t} while owned by {prev}",
                            h.index()
                        );
                        *h = t;
                        held.push(h);
                    }
                    if held.len() == 3 || (round % 2 == 1 && !held.is_empty()) {
                        let h = held.swap_remove(0);
                        assert_eq!(*h, t, "someone else wrote into our slot");
                        owners[h.index()].store(0, StdOrdering::Release);
                        drop(h);
                    }
                }
                for h in held {
                    owners[h.index()].store(0, StdOrdering::Release);
                }
            });
        }
    });
    assert_eq!(
        (0..SLOTS)
            .filter_map(|_| pool.acquire().map(Handle::into_index))
            .count(),
        SLOTS
    );
}

#[test]
fn acquire_on_one_thread_release_on_another() {
    let pool: EventPool<u64, 4> = EventPool::new(0);
    let mut ring: crate::ring::Spsc<Handle<'_, u64, 4>, 4> = crate::ring::Spsc::new();
    let (mut tx, mut rx) = ring.split();
    thread::scope(|s| {
        s.spawn(|| {
            let mut sent = 0u64;
            while sent < ROUNDS as u64 {
                if let Some(mut h) = pool.acquire() {
                    *h = sent;
                    let mut item = h;
                    while let Err(crate::ring::PushError::Full(back)) = tx.push(item) {
                        item = back;
                        thread::yield_now();
                    }
                    sent += 1;
                } else {
                    thread::yield_now();
                }
            }
        });
        let mut expected = 0u64;
        while expected < ROUNDS as u64 {
            match rx.pop() {
                Some(h) => {
                    assert_eq!(*h, expected);
                    expected += 1;
                } // released here, on this thread
                None => thread::yield_now(),
            }
        }
    });
    assert_eq!(
        (0..4)
            .filter_map(|_| pool.acquire().map(Handle::into_index))
            .count(),
        4
    );
}

#[test]
fn batches_take_and_give_back_in_one_go() {
    let pool: EventPool<u32, 6> = EventPool::new(0);
    let mut out = [usize::MAX; 4];
    assert_eq!(pool.acquire_many(&mut []), 0);
    assert_eq!(pool.acquire_many(&mut out), 4);
    let single = pool.acquire().unwrap();
    let mut rest = [usize::MAX; 4];
    assert_eq!(pool.acquire_many(&mut rest), 1, "only one slot left");
    assert_eq!(pool.acquire_many(&mut rest[1..]), 0, "empty");
    let mut all: Vec<usize> = out.iter().chain(&rest[..1]).copied().collect();
    all.push(single.index());
    all.sort();
    assert_eq!(all, [0, 1, 2, 3, 4, 5]);
    // SAFETY: the four indices in `out` came from `acquire_many` and are given back once.
    unsafe { pool.release_many(&out) };
    // SAFETY: as above, an empty batch is a no-op.
    unsafe { pool.release_many(&[]) };
    drop(single);
    // SAFETY: `rest[0]` came from `acquire_many`.
    unsafe { pool.release_many(&rest[..1]) };
    let mut again = [0usize; 8];
    assert_eq!(pool.acquire_many(&mut again), 6, "all six back");
}

#[test]
fn stress_batches_and_singles_never_share_a_slot() {
    const THREADS: usize = 4;
    const SLOTS: usize = 16;
    let pool: EventPool<usize, SLOTS> = EventPool::new(0);
    let owners: [StdAtomicUsize; SLOTS] = [const { StdAtomicUsize::new(0) }; SLOTS];
    thread::scope(|s| {
        for t in 1..=THREADS {
            let (pool, owners) = (&pool, &owners);
            s.spawn(move || {
                let mut batch = [0usize; 3];
                for round in 0..ROUNDS {
                    let n = if t % 2 == 0 {
                        pool.acquire_many(&mut batch[..1 + round % 3])
                    } else {
                        pool.acquire().map_or(0, |h| {
                            batch[0] = h.into_index();
                            1
                        })
                    };
                    for &i in &batch[..n] {
                        let prev = owners[i].swap(t, StdOrdering::AcqRel);
                        assert_eq!(prev, 0, "slot {i} handed to {t} while owned by {prev}");
                    }
                    for &i in &batch[..n] {
                        owners[i].store(0, StdOrdering::Release);
                    }
                    // SAFETY: this thread took these `n` indices above and gives each back once.
                    unsafe { pool.release_many(&batch[..n]) };
                }
            });
        }
    });
    let mut all = [0usize; SLOTS + 1];
    assert_eq!(pool.acquire_many(&mut all), SLOTS);
}
