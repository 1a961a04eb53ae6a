use core::sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering as StdOrdering};
use std::sync::Barrier;
use std::thread;
use std::vec::Vec;

use super::*;

const PER_PRODUCER: usize = if cfg!(miri) { 200 } else { 100_000 };

#[test]
fn fifo_and_full_exactly_at_n() {
    let ring: Mpsc<u32, 4> = Mpsc::new();
    let mut rx = ring.consumer().unwrap();
    assert_eq!(rx.pop(), None);
    for i in 0..4 {
        ring.push(i).unwrap();
    }
    assert_eq!(ring.len(), 4);
    assert_eq!(ring.push(4), Err(PushError::Full(4)));
    assert_eq!(rx.pop(), Some(0));
    ring.push(4).unwrap();
    assert_eq!(ring.push(5), Err(PushError::Full(5)));
    for i in 1..5 {
        assert_eq!(rx.pop(), Some(i));
    }
    assert_eq!(rx.pop(), None);
    assert!(ring.is_empty());
}

#[test]
fn many_laps_single_thread() {
    let ring: Mpsc<u64, 2> = Mpsc::new();
    let mut rx = ring.consumer().unwrap();
    for i in 0..1000u64 {
        ring.push(i).unwrap();
        assert_eq!(rx.pop(), Some(i));
    }
}

#[test]
fn one_consumer_at_a_time_and_retaking_continues() {
    let ring: Mpsc<u8, 4> = Mpsc::new();
    let mut rx = ring.consumer().unwrap();
    assert!(ring.consumer().is_none());
    ring.push(1).unwrap();
    ring.push(2).unwrap();
    assert_eq!(rx.pop(), Some(1));
    drop(rx);
    let mut rx = ring.consumer().unwrap();
    assert_eq!(rx.pop(), Some(2));
    assert_eq!(rx.pop(), None);
}

#[test]
fn pop_each_stops_at_max_or_empty() {
    let ring: Mpsc<u16, 8> = Mpsc::new();
    let mut rx = ring.consumer().unwrap();
    for i in 0..6 {
        ring.push(i).unwrap();
    }
    let mut got = Vec::new();
    assert_eq!(rx.pop_each(4, |v| got.push(v)), 4);
    assert_eq!(rx.pop_each(10, |v| got.push(v)), 2);
    assert_eq!(got, [0, 1, 2, 3, 4, 5]);
}

#[test]
fn producers_deliver_everything_once_in_per_producer_order() {
    const PRODUCERS: usize = 3;
    let ring: Mpsc<(usize, usize), 8> = Mpsc::new();
    let mut rx = ring.consumer().unwrap();
    thread::scope(|s| {
        for p in 0..PRODUCERS {
            let ring = &ring;
            s.spawn(move || {
                for i in 0..PER_PRODUCER {
                    let mut item = (p, i);
                    while let Err(PushError::Full(back)) = ring.push(item) {
                        item = back;
                        thread::yield_now();
                    }
                }
            });
        }
        let mut next = [0usize; PRODUCERS];
        let mut received = 0;
        while received < PRODUCERS * PER_PRODUCER {
            match rx.pop() {
                Some((p, i)) => {
                    assert_eq!(i, next[p], "producer {p} out of order");
                    next[p] += 1;
                    received += 1;
                }
                None => thread::yield_now(),
            }
        }
        assert!(next.iter().all(|n| *n == PER_PRODUCER));
    });
    assert!(ring.is_empty());
}

/// A producer parked between claiming its slot and publishing it holds the consumer at that
/// slot, although a later producer's item is already published; both arrive once it resumes.
#[test]
fn parked_producer_holds_the_consumer_at_its_slot() {
    let ring: Mpsc<u32, 4> = Mpsc::new();
    let mut rx = ring.consumer().unwrap();
    let claimed = Barrier::new(2);
    let resume = Barrier::new(2);
    thread::scope(|s| {
        let parked = s.spawn(|| {
            ring.push_with_pause(1, || {
                claimed.wait();
                resume.wait();
            })
        });
        claimed.wait(); // slot 0 is claimed, not published
        ring.push(2).unwrap(); // slot 1, published
        assert_eq!(ring.len(), 2);
        assert_eq!(rx.pop(), None, "consumer must wait at the unpublished slot");
        assert_eq!(rx.pop(), None);
        // Producers are not blocked: two more fit, then the ring is genuinely full.
        ring.push(3).unwrap();
        ring.push(4).unwrap();
        assert_eq!(ring.push(5), Err(PushError::Full(5)));
        resume.wait();
        parked.join().unwrap().unwrap();
    });
    assert_eq!(
        [rx.pop(), rx.pop(), rx.pop(), rx.pop()],
        [Some(1), Some(2), Some(3), Some(4)]
    );
    assert_eq!(rx.pop(), None);
}

static DROPS: StdAtomicUsize = StdAtomicUsize::new(0);
struct Counted;
impl Drop for Counted {
    fn drop(&mut self) {
        DROPS.fetch_add(1, StdOrdering::Relaxed);
    }
}

#[test]
fn drop_releases_items_still_inside() {
    DROPS.store(0, StdOrdering::Relaxed);
    {
        let ring: Mpsc<Counted, 4> = Mpsc::new();
        let mut rx = ring.consumer().unwrap();
        for _ in 0..3 {
            assert!(ring.push(Counted).is_ok());
        }
        drop(rx.pop());
        assert!(ring.push(Counted).is_ok());
        assert!(ring.push(Counted).is_ok());
        assert_eq!(DROPS.load(StdOrdering::Relaxed), 1);
    }
    assert_eq!(DROPS.load(StdOrdering::Relaxed), 5);
}

#[test]
fn push_slice_fills_what_fits_in_order_across_the_wrap() {
    let ring: Mpsc<u32, 8> = Mpsc::new();
    let mut rx = ring.consumer().unwrap();
    assert_eq!(ring.push_slice(&[]), 0);
    ring.push(100).unwrap();
    assert_eq!(ring.push_slice(&[1, 2, 3, 4, 5]), 5);
    assert_eq!(ring.push_slice(&[6, 7, 8, 9]), 2, "two slots left");
    assert_eq!(ring.push_slice(&[9]), 0, "full");
    let got: Vec<u32> = core::iter::from_fn(|| rx.pop()).collect();
    assert_eq!(got, [100, 1, 2, 3, 4, 5, 6, 7]);
    // Positions now wrap: batches straddle the end of the slot array.
    for lap in 0..50u32 {
        assert_eq!(ring.push_slice(&[lap, lap + 1, lap + 2]), 3);
        ring.push(lap + 3).unwrap();
        for k in 0..4 {
            assert_eq!(rx.pop(), Some(lap + k));
        }
    }
    assert_eq!(rx.pop(), None);
}

#[test]
fn batch_and_single_producers_deliver_everything_once_in_order() {
    const PRODUCERS: usize = 3;
    let ring: Mpsc<u64, 16> = Mpsc::new();
    let mut rx = ring.consumer().unwrap();
    let per = PER_PRODUCER as u64;
    thread::scope(|s| {
        for p in 0..PRODUCERS as u64 {
            let ring = &ring;
            s.spawn(move || {
                let mut next = 0u64;
                while next < per {
                    if p == 0 {
                        // Single pushes.
                        if ring.push((p << 32) | next).is_ok() {
                            next += 1;
                        }
                    } else {
                        let n = (1 + next % 5).min(per - next);
                        let batch: Vec<u64> = (next..next + n).map(|v| (p << 32) | v).collect();
                        next += ring.push_slice(&batch) as u64;
                    }
                    core::hint::spin_loop();
                }
            });
        }
        let mut expected = [0u64; PRODUCERS];
        let mut left = per * PRODUCERS as u64;
        while left > 0 {
            if let Some(v) = rx.pop() {
                let (p, n) = ((v >> 32) as usize, v & 0xFFFF_FFFF);
                assert_eq!(n, expected[p], "producer {p} out of order");
                expected[p] += 1;
                left -= 1;
            } else {
                core::hint::spin_loop();
            }
        }
    });
    assert_eq!(rx.pop(), None);
}
