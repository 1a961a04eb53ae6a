//! Unit tests of the payload arena (also run under Miri: `arena::`).

use super::*;

extern crate std;
use std::vec::Vec;

#[test]
fn blocks_read_back_and_wrap_skips_the_tail() {
    let mut state: ArenaState<8> = ArenaState::new();
    let mut bytes = [0u8; 100];
    let (mut w, mut r) = state.split(&mut bytes);
    let (a, dst) = w.alloc(60).unwrap();
    dst.fill(1);
    let (b, dst) = w.alloc(30).unwrap();
    dst.fill(2);
    assert_eq!(w.alloc(20), Err(ArenaFull::NoRoom));
    // SAFETY: (all reads and releases below) allocated above, released once, not read after.
    unsafe {
        assert_eq!(r.read(a), &[1; 60][..]);
        r.release(a);
    }
    assert_eq!(r.reclaim(), 1);
    // 10 bytes left before the end: a 20-byte block skips them and starts at 0.
    let (c, dst) = w.alloc(20).unwrap();
    dst.fill(3);
    assert_eq!(c.offset, 0);
    // SAFETY: blocks allocated by this split's writer, read while live, released once.
    unsafe {
        assert_eq!(r.read(b), &[2; 30][..]);
        assert_eq!(r.read(c), &[3; 20][..]);
    }
    // Live: b (60..90), skip (90..100), c (0..20): 40 bytes free at 20..60.
    assert!(w.alloc(41).is_err());
    let (d, _) = w.alloc(40).unwrap();
    assert_eq!(d.offset, 20);
    assert_eq!(w.alloc(1), Err(ArenaFull::NoRoom));
    // SAFETY: blocks allocated by this split's writer, read while live, released once.
    unsafe {
        r.release(b);
        r.release(c);
        r.release(d);
    }
    assert_eq!(r.reclaim(), 3);
    assert_eq!(w.alloc(101), Err(ArenaFull::TooLarge));
    assert!(
        w.alloc(100).is_ok(),
        "an empty arena takes a block of its whole size"
    );
}

#[test]
fn a_block_in_use_holds_back_the_ones_after_it() {
    let mut state: ArenaState<8> = ArenaState::new();
    let mut bytes = [0u8; 64];
    let (mut w, mut r) = state.split(&mut bytes);
    let refs: Vec<ArenaRef> = (0..4).map(|_| w.alloc(16).unwrap().0).collect();
    // Released out of order: 1, 3, 2 first; 0 (a parked record) still in use.
    // SAFETY: blocks allocated by this split's writer, read while live, released once.
    unsafe {
        r.release(refs[1]);
        r.release(refs[3]);
        r.release(refs[2]);
    }
    assert_eq!(r.reclaim(), 0);
    assert_eq!(w.alloc(1), Err(ArenaFull::NoRoom));
    // SAFETY: blocks allocated by this split's writer, read while live, released once.
    unsafe { r.release(refs[0]) };
    assert_eq!(r.reclaim(), 4);
    assert!(w.alloc(64).is_ok());
}

#[test]
fn descriptors_bound_the_blocks_in_flight() {
    let mut state: ArenaState<2> = ArenaState::new();
    let mut bytes = [0u8; 64];
    let (mut w, mut r) = state.split(&mut bytes);
    let a = w.alloc(1).unwrap().0;
    let _b = w.alloc(1).unwrap().0;
    assert_eq!(w.alloc(1), Err(ArenaFull::NoRoom), "no descriptor left");
    // SAFETY: blocks allocated by this split's writer, read while live, released once.
    unsafe { r.release(a) };
    r.reclaim();
    assert!(w.alloc(1).is_ok());
}

#[test]
fn writer_side_release_is_reclaimed_by_the_reader() {
    let mut state: ArenaState<4> = ArenaState::new();
    let mut bytes = [0u8; 32];
    let (mut w, mut r) = state.split(&mut bytes);
    let a = w.alloc(32).unwrap().0;
    // SAFETY: blocks allocated by this split's writer, read while live, released once.
    unsafe { w.release(a) };
    assert_eq!(
        w.alloc(1),
        Err(ArenaFull::NoRoom),
        "until the reader reclaims"
    );
    assert_eq!(r.reclaim(), 1);
    assert!(w.alloc(32).is_ok());
}

#[test]
fn an_empty_arena_takes_a_large_block_wherever_the_writer_stands() {
    let mut state: ArenaState<4> = ArenaState::new();
    let mut bytes = [0u8; 100];
    let (mut w, mut r) = state.split(&mut bytes);
    let a = w.alloc(30).unwrap().0;
    // SAFETY: blocks allocated by this split's writer, read while live, released once.
    unsafe { r.release(a) };
    r.reclaim();
    // Writer at 30; 80 bytes do not fit before the end, but nothing is live.
    let (b, dst) = w.alloc(80).unwrap();
    dst.fill(9);
    assert_eq!(b.offset, 0);
    assert_eq!(w.alloc(1), Err(ArenaFull::NoRoom));
    // SAFETY: blocks allocated by this split's writer, read while live, released once.
    unsafe {
        assert_eq!(r.read(b), &[9; 80][..]);
        r.release(b);
    }
    r.reclaim();
    assert!(w.alloc(100).is_ok());
}

#[test]
fn an_empty_region_holds_nothing_and_stale_refs_read_empty() {
    let mut state: ArenaState<4> = ArenaState::new();
    let mut empty: [u8; 0] = [];
    let (mut w, _) = state.split(&mut empty);
    assert_eq!(w.alloc(1), Err(ArenaFull::TooLarge));
    let mut bytes = [5u8; 16];
    let old = {
        let (mut w, _) = state.split(&mut bytes);
        w.alloc(8).unwrap().0
    };
    let mut bytes2 = [6u8; 16];
    let (_, mut r) = state.split(&mut bytes2);
    // SAFETY: blocks allocated by this split's writer, read while live, released once.
    unsafe {
        assert_eq!(r.read(old), &[] as &[u8]);
        r.release(old);
    }
    assert_eq!(r.reclaim(), 0);
    // SAFETY: blocks allocated by this split's writer, read while live, released once.
    assert_eq!(unsafe { r.read(ArenaRef::NONE) }, &[] as &[u8]);
}

/// A writer thread and a reader thread that releases out of order (in reverse, in groups of
/// three, as parked records would): every block reads back what was written.
#[test]
fn threads_allocate_and_release_out_of_order() {
    const EVENTS: u32 = if cfg!(miri) { 200 } else { 100_000 };
    let mut state: ArenaState<16> = ArenaState::new();
    let mut bytes = std::vec![0u8; 97];
    let mut ring: crate::ring::Spsc<ArenaRef, 8> = crate::ring::Spsc::new();
    let (mut w, mut r) = state.split(&mut bytes);
    let (mut tx, mut rx) = ring.split();
    std::thread::scope(|s| {
        s.spawn(move || {
            for i in 0..EVENTS {
                let len = 1 + (i as usize * 7) % 40;
                let rf = loop {
                    match w.alloc(len) {
                        Ok((rf, dst)) => {
                            dst.fill(i as u8);
                            break rf;
                        }
                        Err(ArenaFull::NoRoom) => std::thread::yield_now(),
                        Err(ArenaFull::TooLarge) => unreachable!(),
                    }
                };
                let mut v = rf;
                while let Err(crate::ring::PushError::Full(back)) = tx.push(v) {
                    v = back;
                    std::thread::yield_now();
                }
            }
        });
        let mut held: Vec<(u32, ArenaRef)> = Vec::new();
        let mut next = 0u32;
        while next < EVENTS || !held.is_empty() {
            let popped = rx.pop();
            let idle = popped.is_none();
            match popped {
                Some(rf) => {
                    // SAFETY: published through the ring, not released yet.
                    let got = unsafe { r.read(rf) };
                    assert_eq!(got.len(), 1 + (next as usize * 7) % 40);
                    assert!(got.iter().all(|&b| b == next as u8), "block {next}");
                    held.push((next, rf));
                    next += 1;
                }
                None => std::thread::yield_now(),
            }
            // Held blocks go when three are held, or when the writer may be waiting for them.
            if held.len() == 3 || idle {
                while let Some((_, rf)) = held.pop() {
                    // SAFETY: released once; not read after.
                    unsafe { r.release(rf) };
                }
                r.reclaim();
            }
        }
    });
}
