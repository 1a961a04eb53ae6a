use core::sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering as StdOrdering};
use std::thread;
use std::vec::Vec;

use super::*;

const ITEMS: u64 = if cfg!(miri) { 500 } else { 200_000 };

#[test]
fn fifo_order_and_exact_capacity() {
    let mut ring: Spsc<u32, 3> = Spsc::new();
    assert_eq!(ring.capacity(), 3);
    let (mut tx, mut rx) = ring.split();
    assert!(rx.is_empty());
    assert_eq!(rx.pop(), None);
    for i in 0..3 {
        tx.push(i).unwrap();
    }
    assert!(tx.is_full());
    assert_eq!(tx.slots(), 0);
    assert_eq!(tx.push(9), Err(PushError::Full(9)));
    assert_eq!(rx.len(), 3);
    assert_eq!(rx.peek(), Some(&0));
    for i in 0..3 {
        assert_eq!(rx.pop(), Some(i));
    }
    assert_eq!(rx.pop(), None);
    assert_eq!(tx.slots(), 3);
}

#[test]
fn capacity_one_alternates() {
    let mut ring: Spsc<u8, 1> = Spsc::new();
    let (mut tx, mut rx) = ring.split();
    for i in 0..10 {
        tx.push(i).unwrap();
        assert_eq!(tx.push(i), Err(PushError::Full(i)));
        assert_eq!(rx.pop(), Some(i));
        assert_eq!(rx.pop(), None);
    }
}

#[test]
fn non_power_of_two_wraps_many_laps() {
    let mut ring: Spsc<u64, 5> = Spsc::new();
    let (mut tx, mut rx) = ring.split();
    let mut next_in = 0u64;
    let mut next_out = 0u64;
    // Uneven push/pop counts walk every position of 0..2N many times.
    for round in 0..200 {
        for _ in 0..(round % 5 + 1) {
            if tx.push(next_in).is_ok() {
                next_in += 1;
            }
        }
        for _ in 0..(round % 3 + 1) {
            if let Some(v) = rx.pop() {
                assert_eq!(v, next_out);
                next_out += 1;
            }
        }
        assert_eq!((next_in - next_out) as usize, rx.len());
    }
    while let Some(v) = rx.pop() {
        assert_eq!(v, next_out);
        next_out += 1;
    }
    assert_eq!(next_in, next_out);
}

#[test]
fn slices_across_the_wrap_point() {
    let mut ring: Spsc<u32, 8> = Spsc::new();
    let (mut tx, mut rx) = ring.split();
    let mut expected = 0u32;
    let mut sent = 0u32;
    let mut out = [0u32; 5];
    for _ in 0..100 {
        let batch: Vec<u32> = (sent..sent + 5).collect();
        let n = tx.push_slice(&batch) as u32;
        sent += n;
        let got = rx.pop_slice(&mut out[..3]);
        for v in &out[..got] {
            assert_eq!(*v, expected);
            expected += 1;
        }
    }
    // Fill exactly: a slice longer than the free space pushes only what fits.
    let free = tx.slots();
    let batch: Vec<u32> = (sent..sent + 20).collect();
    assert_eq!(tx.push_slice(&batch), free);
    sent += free as u32;
    assert_eq!(tx.push_slice(&batch), 0);
    let mut rest = [0u32; 16];
    let got = rx.pop_slice(&mut rest);
    assert_eq!(got as u32, sent - expected);
    assert!(rest[..got].iter().zip(expected..).all(|(a, b)| *a == b));
    assert_eq!(rx.pop_slice(&mut rest), 0);
}

#[test]
fn push_iter_stops_when_full_and_leaves_the_rest() {
    let mut ring: Spsc<u16, 4> = Spsc::new();
    let (mut tx, mut rx) = ring.split();
    let mut it = 0u16..10;
    assert_eq!(tx.push_iter(&mut it), 4);
    assert_eq!(it.next(), Some(4));
    assert_eq!(rx.pop(), Some(0));
    assert_eq!(tx.push_iter(&mut it), 1);
    assert_eq!(it.next(), Some(6));
    let drained: Vec<u16> = core::iter::from_fn(|| rx.pop()).collect();
    assert_eq!(drained, [1, 2, 3, 5]);
}

static DROPS: StdAtomicUsize = StdAtomicUsize::new(0);

struct Counted(#[allow(dead_code)] u32);
impl Drop for Counted {
    fn drop(&mut self) {
        DROPS.fetch_add(1, StdOrdering::Relaxed);
    }
}

#[test]
fn drop_releases_items_still_inside() {
    DROPS.store(0, StdOrdering::Relaxed);
    {
        let mut ring: Spsc<Counted, 4> = Spsc::new();
        let (mut tx, mut rx) = ring.split();
        for i in 0..4 {
            assert!(tx.push(Counted(i)).is_ok());
        }
        drop(rx.pop()); // one dropped by us
        assert!(tx.push(Counted(9)).is_ok()); // wraps
        assert_eq!(DROPS.load(StdOrdering::Relaxed), 1);
    }
    assert_eq!(DROPS.load(StdOrdering::Relaxed), 5);
}

#[test]
fn rejected_value_comes_back_intact() {
    let mut ring: Spsc<Counted, 1> = Spsc::new();
    let (mut tx, _rx) = ring.split();
    assert!(tx.push(Counted(1)).is_ok());
    match tx.push(Counted(2)) {
        Err(e) => assert_eq!(e.into_inner().0, 2),
        Ok(()) => panic!("pushed into a full ring"),
    }
}

#[test]
fn resplit_continues_where_the_halves_stopped() {
    let mut ring: Spsc<u8, 3> = Spsc::new();
    {
        let (mut tx, mut rx) = ring.split();
        tx.push(1).unwrap();
        tx.push(2).unwrap();
        assert_eq!(rx.pop(), Some(1));
    }
    let (mut tx, mut rx) = ring.split();
    tx.push(3).unwrap();
    tx.push(4).unwrap();
    assert!(tx.is_full());
    assert_eq!([rx.pop(), rx.pop(), rx.pop()], [Some(2), Some(3), Some(4)]);
}

#[test]
fn try_split_only_once() {
    static RING: Spsc<u8, 2> = Spsc::new();
    let (mut tx, mut rx) = RING.try_split().expect("first split");
    assert!(RING.try_split().is_none());
    tx.push(5).unwrap();
    assert_eq!(rx.pop(), Some(5));
}

#[test]
fn threads_single_items_in_order() {
    let mut ring: Spsc<u64, 16> = Spsc::new();
    let (mut tx, mut rx) = ring.split();
    thread::scope(|s| {
        s.spawn(move || {
            for i in 0..ITEMS {
                let mut v = i;
                while let Err(PushError::Full(back)) = tx.push(v) {
                    v = back;
                    core::hint::spin_loop();
                }
            }
        });
        let mut expected = 0;
        while expected < ITEMS {
            if let Some(v) = rx.pop() {
                assert_eq!(v, expected);
                expected += 1;
            } else {
                core::hint::spin_loop();
            }
        }
    });
}

#[test]
fn threads_batches_in_order() {
    let mut ring: Spsc<u64, 7> = Spsc::new();
    let (mut tx, mut rx) = ring.split();
    thread::scope(|s| {
        s.spawn(move || {
            let mut next = 0u64;
            let mut buf = [0u64; 5];
            while next < ITEMS {
                let len = buf.len().min((ITEMS - next) as usize);
                for (k, b) in buf[..len].iter_mut().enumerate() {
                    *b = next + k as u64;
                }
                next += tx.push_slice(&buf[..len]) as u64;
            }
        });
        let mut expected = 0;
        let mut out = [0u64; 3];
        while expected < ITEMS {
            let n = rx.pop_slice(&mut out);
            for v in &out[..n] {
                assert_eq!(*v, expected);
                expected += 1;
            }
        }
    });
}
