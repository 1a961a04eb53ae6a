//! loom models of the lock-free structures: every interleaving (within loom's preemption
//! bound) of small scenarios, with the orderings the code really uses.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p pinstream-core --lib --release`
//! (the unit tests are compiled out under loom; only these run).

use loom::sync::Arc;
use loom::thread;
use std::boxed::Box;
use std::vec::Vec;

use crate::dedup::{DedupTable, Verdict};
use crate::pool::EventPool;
use crate::ring::{Mpsc, PushError, Spsc};

/// Pushes, yielding to the other threads while the ring is full.
fn push_spsc<const N: usize>(tx: &mut crate::ring::Producer<'_, u32, N>, mut v: u32) {
    while let Err(PushError::Full(back)) = tx.push(v) {
        v = back;
        thread::yield_now();
    }
}

#[test]
fn spsc_items_arrive_in_order_across_the_wrap() {
    loom::model(|| {
        let ring: &'static Spsc<u32, 2> = Box::leak(Box::new(Spsc::new()));
        let (mut tx, mut rx) = ring.try_split().unwrap();
        let producer = thread::spawn(move || {
            for v in 0..3 {
                push_spsc(&mut tx, v);
            }
        });
        let mut next = 0;
        while next < 3 {
            match rx.pop() {
                Some(v) => {
                    assert_eq!(v, next);
                    next += 1;
                }
                None => thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert_eq!(rx.pop(), None);
    });
}

#[test]
fn spsc_batch_publishes_whole_slices() {
    loom::model(|| {
        let ring: &'static Spsc<u32, 3> = Box::leak(Box::new(Spsc::new()));
        let (mut tx, mut rx) = ring.try_split().unwrap();
        let producer = thread::spawn(move || {
            let items = [1, 2, 3, 4];
            let mut sent = 0;
            while sent < items.len() {
                let n = tx.push_slice(&items[sent..]);
                if n == 0 {
                    thread::yield_now();
                }
                sent += n;
            }
        });
        let mut got = Vec::new();
        let mut buf = [0u32; 2];
        while got.len() < 4 {
            let n = rx.pop_slice(&mut buf);
            if n == 0 {
                thread::yield_now();
            }
            got.extend_from_slice(&buf[..n]);
        }
        producer.join().unwrap();
        assert_eq!(got, [1, 2, 3, 4]);
    });
}

#[test]
fn mpsc_two_producers_each_item_once() {
    loom::model(|| {
        let ring: Arc<Mpsc<u32, 2>> = Arc::new(Mpsc::new());
        let producers: Vec<_> = (1..=2)
            .map(|v| {
                let ring = ring.clone();
                thread::spawn(move || {
                    let mut item = v;
                    while let Err(PushError::Full(back)) = ring.push(item) {
                        item = back;
                        thread::yield_now();
                    }
                })
            })
            .collect();
        let mut rx = ring.consumer().unwrap();
        let mut got = Vec::new();
        while got.len() < 2 {
            match rx.pop() {
                Some(v) => got.push(v),
                None => thread::yield_now(),
            }
        }
        for p in producers {
            p.join().unwrap();
        }
        got.sort();
        assert_eq!(got, [1, 2]);
        assert_eq!(rx.pop(), None);
    });
}

#[test]
fn mpsc_full_only_when_full() {
    use loom::sync::atomic::{AtomicBool, Ordering};
    loom::model(|| {
        // Capacity 2 and full. Once the producer has seen (through `popped`) that the
        // consumer finished a pop, a push must succeed: Full only while the ring is full.
        let ring: Arc<Mpsc<u32, 2>> = Arc::new(Mpsc::new());
        ring.push(1).unwrap();
        ring.push(2).unwrap();
        let popped = Arc::new(AtomicBool::new(false));
        let (r2, p2) = (ring.clone(), popped.clone());
        let consumer = thread::spawn(move || {
            let mut rx = r2.consumer().unwrap();
            assert_eq!(rx.pop(), Some(1));
            p2.store(true, Ordering::Release);
        });
        let saw_pop = popped.load(Ordering::Acquire);
        let pushed = ring.push(3).is_ok();
        if saw_pop {
            assert!(pushed, "Full reported after a slot was released");
        }
        consumer.join().unwrap();
        let mut rx = ring.consumer().unwrap();
        assert_eq!(rx.pop(), Some(2));
        assert_eq!(rx.pop(), if pushed { Some(3) } else { None });
    });
}

#[test]
fn mpsc_parked_producer_holds_the_consumer() {
    loom::model(|| {
        let ring: Arc<Mpsc<u32, 2>> = Arc::new(Mpsc::new());
        let claimed = Arc::new(loom::sync::atomic::AtomicBool::new(false));
        let (r1, c1) = (ring.clone(), claimed.clone());
        let parked = thread::spawn(move || {
            r1.push_with_pause(1, || c1.store(true, loom::sync::atomic::Ordering::Release))
                .unwrap();
        });
        let mut rx = ring.consumer().unwrap();
        while !claimed.load(loom::sync::atomic::Ordering::Acquire) {
            thread::yield_now();
        }
        // Slot 0 is claimed by the parked producer; ours goes to slot 1.
        ring.push(2).unwrap();
        // Whatever the interleaving, item 2 never overtakes item 1.
        let first = loop {
            if let Some(v) = rx.pop() {
                break v;
            }
            thread::yield_now();
        };
        assert_eq!(first, 1);
        parked.join().unwrap();
        assert_eq!(rx.pop(), Some(2));
    });
}

#[test]
fn pool_never_hands_one_slot_to_two_owners() {
    loom::model(|| {
        let pool: Arc<EventPool<u32, 2>> = Arc::new(EventPool::new(0));
        let threads: Vec<_> = (1..=2u32)
            .map(|id| {
                let pool = pool.clone();
                thread::spawn(move || {
                    for _ in 0..2 {
                        if let Some(mut h) = pool.acquire() {
                            *h = id;
                            thread::yield_now();
                            assert_eq!(*h, id, "slot {} shared", h.index());
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let a = pool.acquire().unwrap();
        let b = pool.acquire().unwrap();
        assert_ne!(a.index(), b.index());
        assert!(pool.acquire().is_none());
    });
}

/// The ABA schedule: thread A reads head = slot x and next = slot y, then stalls; thread B
/// pops x, pops y and pushes x back. Without the generation tag A's CAS would succeed and
/// hand out y, which B still owns. Owner stamps catch a double hand-out.
#[test]
fn pool_aba_schedule_hands_out_no_slot_twice() {
    use loom::sync::atomic::{AtomicUsize, Ordering};
    loom::model(|| {
        let pool: Arc<EventPool<u32, 3>> = Arc::new(EventPool::new(0));
        let owners: Arc<[AtomicUsize; 3]> = Arc::new(core::array::from_fn(|_| AtomicUsize::new(0)));
        let claim = |owners: &[AtomicUsize; 3], index: usize, id: usize| {
            assert_eq!(
                owners[index].swap(id, Ordering::SeqCst),
                0,
                "slot {index} handed out twice"
            );
        };
        let (p2, o2) = (pool.clone(), owners.clone());
        let a = thread::spawn(move || {
            if let Some(h) = p2.acquire() {
                claim(&o2, h.index(), 1);
                thread::yield_now();
                o2[h.index()].store(0, Ordering::SeqCst);
            }
        });
        let x = pool.acquire();
        if let Some(x) = &x {
            claim(&owners, x.index(), 2);
        }
        let y = pool.acquire();
        if let Some(y) = &y {
            claim(&owners, y.index(), 2);
        }
        if let Some(x) = x {
            owners[x.index()].store(0, Ordering::SeqCst);
            drop(x);
        }
        thread::yield_now();
        a.join().unwrap();
        // A corrupted free list would now hand out y's slot, still owned by us.
        let rest: Vec<_> = (0..3).filter_map(|_| pool.acquire()).collect();
        for h in &rest {
            claim(&owners, h.index(), 3);
        }
        assert_eq!(rest.len() + usize::from(y.is_some()), 3);
        drop(y);
    });
}

#[test]
fn pool_release_on_another_thread() {
    loom::model(|| {
        let pool: Arc<EventPool<u32, 1>> = Arc::new(EventPool::new(0));
        let mut h = pool.acquire().unwrap();
        *h = 5;
        let index = h.into_index();
        let p2 = pool.clone();
        let releaser = thread::spawn(move || {
            // SAFETY: `index` came from `into_index` on this pool, once.
            let h = unsafe { p2.from_index(index) };
            assert_eq!(*h, 5);
        });
        let got = loop {
            if let Some(h) = pool.acquire() {
                break *h;
            }
            thread::yield_now();
        };
        releaser.join().unwrap();
        assert_eq!(got, 5, "the release happened-before the re-acquire");
    });
}

/// Batch take and batch give-back racing single ones: a chain read while another thread
/// pops and pushes must never hand out a slot someone owns.
#[test]
fn pool_batches_race_singles_without_sharing_a_slot() {
    use loom::sync::atomic::{AtomicUsize, Ordering};
    loom::model(|| {
        let pool: Arc<EventPool<u32, 3>> = Arc::new(EventPool::new(0));
        let owners: Arc<[AtomicUsize; 3]> = Arc::new(core::array::from_fn(|_| AtomicUsize::new(0)));
        let (p2, o2) = (pool.clone(), owners.clone());
        let batcher = thread::spawn(move || {
            let mut out = [0usize; 2];
            let n = p2.acquire_many(&mut out);
            for &i in &out[..n] {
                assert_eq!(o2[i].swap(1, Ordering::SeqCst), 0, "slot {i} shared");
            }
            thread::yield_now();
            for &i in &out[..n] {
                o2[i].store(0, Ordering::SeqCst);
            }
            // SAFETY: the `n` indices came from `acquire_many` and go back once.
            unsafe { p2.release_many(&out[..n]) };
        });
        for _ in 0..2 {
            if let Some(h) = pool.acquire() {
                let i = h.index();
                assert_eq!(owners[i].swap(2, Ordering::SeqCst), 0, "slot {i} shared");
                thread::yield_now();
                owners[i].store(0, Ordering::SeqCst);
            }
        }
        batcher.join().unwrap();
        let mut all = [0usize; 4];
        assert_eq!(
            pool.acquire_many(&mut all),
            3,
            "every slot back on the list"
        );
    });
}

/// A batch push racing a single push and a pop on a ring of 2 that holds one item: no
/// spin loops, every schedule ends. Whatever room each push saw, every item that was
/// accepted arrives once, the batch's in order, and nothing is overwritten.
#[test]
fn mpsc_push_slice_races_push_and_pop() {
    loom::model(|| {
        let ring: Arc<Mpsc<u32, 2>> = Arc::new(Mpsc::new());
        ring.push(0).unwrap();
        let r2 = ring.clone();
        let batcher = thread::spawn(move || r2.push_slice(&[1, 2]));
        let r3 = ring.clone();
        let single = thread::spawn(move || r3.push(9).is_ok());
        let mut rx = ring.consumer().unwrap();
        let first = rx.pop();
        let sent = batcher.join().unwrap();
        let single_ok = single.join().unwrap();
        let mut got: Vec<u32> = first.into_iter().collect();
        while let Some(v) = rx.pop() {
            got.push(v);
        }
        assert_eq!(got.len(), 1 + sent + usize::from(single_ok), "{got:?}");
        assert_eq!(got[0], 0);
        let batch: Vec<u32> = got.iter().copied().filter(|&v| v == 1 || v == 2).collect();
        assert_eq!(batch, [1, 2][..sent]);
        assert!(sent <= 2);
    });
}

#[test]
fn dedup_racing_inserts_of_one_key_one_new() {
    loom::model(|| {
        let table: Arc<DedupTable<4, 4>> = Arc::new(DedupTable::new(10));
        let t2 = table.clone();
        let other = thread::spawn(move || t2.check_and_insert(7, 0));
        let mine = table.check_and_insert(7, 0);
        let theirs = other.join().unwrap();
        let news = [mine, theirs]
            .iter()
            .filter(|v| **v == Verdict::New)
            .count();
        assert_eq!(news, 1, "{mine:?} {theirs:?}");
        assert_eq!(table.check_and_insert(7, 1), Verdict::Duplicate);
    });
}

/// The hard case: the two inserters disagree on whether an old entry has expired (their
/// clocks differ), so they claim different slots. The pending/abort protocol must still let
/// exactly one of them report New.
#[test]
fn dedup_inserters_that_see_different_free_slots_still_one_new() {
    loom::model(|| {
        let table: Arc<DedupTable<4, 4>> = Arc::new(DedupTable::new(10));
        // Fill the key's home slot with another key, first seen at tick 0.
        let key = 7u64;
        let mut other = 100u64;
        while DedupTable::<4, 4>::home(other) != DedupTable::<4, 4>::home(key) {
            other += 1;
        }
        assert_eq!(table.check_and_insert(other, 0), Verdict::New);
        let t2 = table.clone();
        // At tick 5 the neighbour is live: this thread takes the next slot.
        let early = thread::spawn(move || t2.check_and_insert(key, 5));
        // At tick 10 it has expired: this thread reuses the home slot.
        let late = table.check_and_insert(key, 10);
        let early = early.join().unwrap();
        let news = [early, late].iter().filter(|v| **v == Verdict::New).count();
        assert_eq!(news, 1, "early {early:?} late {late:?}");
        assert_eq!(table.check_and_insert(key, 11), Verdict::Duplicate);
    });
}

/// Two inserters of one key with different clocks and a third key racing for the same
/// window: whatever the interleaving, one of the first two is New, the third key is New, and
/// afterwards both keys are found (no claimer that lost its slot may leave a stale tag that
/// hides the key now living there).
#[test]
fn dedup_stale_claimers_never_hide_a_key() {
    loom::model(|| {
        // N = 8 with 8-slot groups: every key has home 0, so they all share one window.
        let table: Arc<DedupTable<8, 8>> = Arc::new(DedupTable::new(5));
        let (a, k, b, c) = (3u64, 7u64, 8u64, 9u64);
        // Slot 0: a (expired for both racers), slot 1: k (expired), slot 2: b (live at 6).
        // The racers collide on slot 0, and the loser claims slot 1, whose old tag is k's.
        assert_eq!(table.check_and_insert(a, 0), Verdict::New);
        assert_eq!(table.check_and_insert(k, 0), Verdict::New);
        assert_eq!(table.check_and_insert(b, 5), Verdict::New);
        let (t1, t2) = (table.clone(), table.clone());
        let x = thread::spawn(move || t1.check_and_insert(k, 6)); // K expired for X
        let y = thread::spawn(move || t2.check_and_insert(k, 10)); // and for Y
        let z = table.check_and_insert(c, 10);
        let (x, y) = (x.join().unwrap(), y.join().unwrap());
        assert_eq!(
            [x, y].iter().filter(|v| **v == Verdict::New).count(),
            1,
            "{x:?} {y:?}"
        );
        assert_eq!(z, Verdict::New);
        assert_eq!(
            table.check_and_insert(c, 11),
            Verdict::Duplicate,
            "key c hidden"
        );
        // First seen at 6 or 10: at 10 it is inside the window either way.
        assert_eq!(
            table.check_and_insert(k, 10),
            Verdict::Duplicate,
            "key k hidden"
        );
    });
}

/// A full window (every slot live): two threads insert different new keys at once. Each
/// must get a slot by evicting one of the oldest keys (never the same slot twice, never a
/// refusal), and both keys are found afterwards.
#[test]
fn dedup_racing_evictions_take_different_slots() {
    loom::model(|| {
        let table: Arc<DedupTable<4, 4>> = Arc::new(DedupTable::new(100));
        for (k, tick) in [(1u64, 1u64), (2, 2), (3, 3), (4, 4)] {
            assert_eq!(table.check_and_insert(k, tick), Verdict::New);
        }
        let t2 = table.clone();
        let other = thread::spawn(move || t2.check_and_insert(20, 10));
        let mine = table.check_and_insert(10, 10);
        let theirs = other.join().unwrap();
        assert!(
            matches!(mine, Verdict::NewEvicting { .. })
                && matches!(theirs, Verdict::NewEvicting { .. }),
            "{mine:?} {theirs:?}"
        );
        assert_eq!(table.check_and_insert(10, 11), Verdict::Duplicate);
        assert_eq!(table.check_and_insert(20, 11), Verdict::Duplicate);
        // The victims were the two oldest (1 and 2): the newest two are still found (a
        // lookup of a present key changes nothing; checked newest first).
        assert_eq!(table.check_and_insert(4, 12), Verdict::Duplicate);
        assert_eq!(table.check_and_insert(3, 12), Verdict::Duplicate);
    });
}

/// Two inserters of one key into a full window: exactly one records it (by eviction). The
/// old keys are as old as the new one (ages tie at 0), so the first inserter's committed
/// entry looks like any victim to the second: it must be recognised as the key itself.
#[test]
fn dedup_racing_inserts_of_one_key_into_a_full_window_one_new() {
    loom::model(|| {
        let table: Arc<DedupTable<4, 4>> = Arc::new(DedupTable::new(100));
        for (k, tick) in [(1u64, 10u64), (2, 10), (3, 10), (4, 10)] {
            assert_eq!(table.check_and_insert(k, tick), Verdict::New);
        }
        let t2 = table.clone();
        let other = thread::spawn(move || t2.check_and_insert(7, 10));
        let mine = table.check_and_insert(7, 10);
        let theirs = other.join().unwrap();
        let news = [mine, theirs].iter().filter(|v| v.is_new()).count();
        assert_eq!(news, 1, "{mine:?} {theirs:?}");
        assert_eq!(table.check_and_insert(7, 11), Verdict::Duplicate);
    });
}

/// Two threads take from a bucket holding 2 tokens at one tick (no refill): whatever the
/// interleaving (and whichever CAS loses and retries), they get exactly 2 between them.
#[test]
fn ratelimit_racing_takers_share_the_burst_exactly() {
    use crate::ratelimit::{RateConfig, TokenBucket};
    loom::model(|| {
        let bucket = Arc::new(TokenBucket::new(RateConfig::new(1, 1_000, 2).unwrap()));
        let b2 = bucket.clone();
        let other = thread::spawn(move || b2.try_acquire(2, 7));
        let mine = bucket.try_acquire(2, 7);
        let theirs = other.join().unwrap();
        assert_eq!(mine + theirs, 2, "mine {mine} theirs {theirs}");
        assert_eq!(bucket.available(7), 0);
    });
}

/// Two takers with different clocks on a drained bucket (1 token per tick, burst 4): one at
/// tick 1, one at tick 2. Whoever goes first, the one behind never refills the other's
/// ticks twice: 2 tokens in total, none left at tick 2.
#[test]
fn ratelimit_takers_with_skewed_clocks_get_the_refill_once() {
    use crate::ratelimit::{RateConfig, TokenBucket};
    loom::model(|| {
        let bucket = Arc::new(TokenBucket::new(RateConfig::new(1, 1, 4).unwrap()));
        assert_eq!(bucket.try_acquire(4, 0), 4);
        let b2 = bucket.clone();
        let early = thread::spawn(move || b2.try_acquire(3, 1));
        let late = bucket.try_acquire(3, 2);
        let early = early.join().unwrap();
        assert_eq!(early + late, 2, "early {early} late {late}");
        assert_eq!(bucket.available(2), 0);
    });
}

/// The payload arena: a writer allocating into a region too small for everything at once
/// (so it wraps and waits), a reader releasing out of order (the second block before the
/// first, as a parked record would hold the first). Every block reads back what was written
/// and no block is handed out over live bytes. loom does not track the plain bytes of the
/// region; the content check catches an overwrite in any explored interleaving.
#[test]
fn arena_allocate_release_and_wrap_out_of_order() {
    use crate::arena::{ArenaFull, ArenaRef, ArenaState};
    loom::model(|| {
        let state: &'static mut ArenaState<2> = Box::leak(Box::new(ArenaState::new()));
        let region: &'static mut [u8] = Box::leak(std::vec![0u8; 8].into_boxed_slice());
        let (mut writer, mut reader) = state.split(region);
        let ring: &'static Spsc<ArenaRef, 2> = Box::leak(Box::new(Spsc::new()));
        let (mut tx, mut rx) = ring.try_split().unwrap();
        // 3 + 3 fit; the third (4 bytes) needs the first two reclaimed and wraps.
        const LENS: [usize; 3] = [3, 3, 4];
        let producer = thread::spawn(move || {
            for (i, &len) in LENS.iter().enumerate() {
                let r = loop {
                    match writer.alloc(len) {
                        Ok((r, dst)) => {
                            dst.fill(i as u8 + 1);
                            break r;
                        }
                        Err(ArenaFull::NoRoom) => thread::yield_now(),
                        Err(ArenaFull::TooLarge) => unreachable!(),
                    }
                };
                let mut v = r;
                while let Err(PushError::Full(back)) = tx.push(v) {
                    v = back;
                    thread::yield_now();
                }
            }
        });
        let mut got: Vec<ArenaRef> = Vec::new();
        while got.len() < LENS.len() {
            match rx.pop() {
                Some(r) => {
                    let i = got.len();
                    // SAFETY: published through the ring, not released yet.
                    let bytes = unsafe { reader.read(r) };
                    assert_eq!(bytes.len(), LENS[i]);
                    assert!(bytes.iter().all(|&b| b == i as u8 + 1));
                    got.push(r);
                    if i == 1 {
                        // Out of order: the second block first, then the first.
                        // SAFETY: each released once, not read after.
                        unsafe {
                            reader.release(got[1]);
                            reader.reclaim();
                            reader.release(got[0]);
                        }
                        reader.reclaim();
                    }
                }
                None => thread::yield_now(),
            }
        }
        producer.join().unwrap();
        // SAFETY: released once.
        unsafe { reader.release(got[2]) };
        assert_eq!(reader.reclaim(), 1);
    });
}

/// A block the writer gives back itself (its event found the lane full) races the reader's
/// release of an earlier block; the reader reclaims both, whichever comes first.
#[test]
fn arena_writer_release_races_reader_reclaim() {
    use crate::arena::{ArenaFull, ArenaRef, ArenaState};
    loom::model(|| {
        let state: &'static mut ArenaState<2> = Box::leak(Box::new(ArenaState::new()));
        let region: &'static mut [u8] = Box::leak(std::vec![0u8; 4].into_boxed_slice());
        let (mut writer, mut reader) = state.split(region);
        let ring: &'static Spsc<ArenaRef, 2> = Box::leak(Box::new(Spsc::new()));
        let (mut tx, mut rx) = ring.try_split().unwrap();
        let first = writer.alloc(2).unwrap().0;
        tx.push(first).unwrap();
        let producer = thread::spawn(move || {
            let (second, _) = writer.alloc(2).unwrap();
            // SAFETY: never published; released once.
            unsafe { writer.release(second) };
            // The whole region again, once the reader reclaimed both.
            while let Err(e) = writer.alloc(4) {
                assert_eq!(e, ArenaFull::NoRoom);
                thread::yield_now();
            }
        });
        let r = rx.pop().unwrap();
        // SAFETY: published, released once.
        unsafe { reader.release(r) };
        let mut reclaimed = 0;
        while reclaimed < 2 {
            reclaimed += reader.reclaim();
            thread::yield_now();
        }
        producer.join().unwrap();
    });
}
