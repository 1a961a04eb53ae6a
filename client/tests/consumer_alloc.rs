//! The consumer reads records without allocating: after the first frames, reading many
//! DATA frames (and granting credit back) allocates nothing on the consumer's thread. A
//! counting global allocator, counting only while the consumer's thread says so (a
//! thread-local flag), proves it; the fake server's thread is not counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use pinstream_client::{Consumer, ConsumerOptions};
use pinstream_core::event::{EventHeader, Lane, Origin, Priority};
use pinstream_core::process::StoredEvent;
use pinstream_core::record::{self, RECORD_HEADER_LEN};
use pinstream_core::wire::{self, DataPrefix, Hello, NO_COMMIT, Start, StreamLog, Subscribed};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: every call is forwarded to `System` unchanged; the counter only observes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract for `alloc` is `System::alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation is).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as `dealloc` and `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const FRAMES: u64 = 400;
const PER_FRAME: u64 = 50;

#[test]
fn reading_records_allocates_nothing() {
    // Every frame built before the connection, so the server thread only writes.
    let mut frames = Vec::new();
    for f in 0..FRAMES {
        let mut records = Vec::new();
        for o in f * PER_FRAME..(f + 1) * PER_FRAME {
            let header = EventHeader::new(o, 0, Priority::High, 1);
            let ev = StoredEvent {
                lane: Lane::Realtime,
                header: &header,
                origin: Origin::new(1, o),
                received: 2,
                payload: &[7u8; 100],
            };
            let mut rec = vec![0u8; RECORD_HEADER_LEN + record::event_len(100)];
            record::encode_event(&mut rec[RECORD_HEADER_LEN..], &ev).unwrap();
            record::seal(&mut rec, o, record::KIND_EVENT);
            records.extend(rec);
        }
        let end = (f + 1) * PER_FRAME;
        let prefix = DataPrefix::new(StreamLog::Realtime, f * PER_FRAME, end, end, records.len());
        let mut frame = vec![0u8; prefix.frame_len()];
        wire::encode_data(&mut frame, 3 + f, &prefix, &records).unwrap();
        frames.push(frame);
    }
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut out = [0u8; 128];
        let mut sink = [0u8; 4096];
        // HELLO (60 bytes) and SUBSCRIBE (52) come in one write; read them, answer both.
        let mut got = 0;
        while got < 60 + 52 {
            got += s.read(&mut sink[got..]).unwrap();
        }
        let n = wire::encode_hello(&mut out, 1, &Hello::reply(3, 65_536, 1)).unwrap();
        s.write_all(&out[..n]).unwrap();
        let sub = Subscribed {
            start_offset: 0,
            first_offset: 0,
            high_watermark: FRAMES * PER_FRAME,
            committed: NO_COMMIT,
        };
        let n = wire::encode_subscribed(&mut out, 2, &sub).unwrap();
        s.write_all(&out[..n]).unwrap();
        // The window (4 MiB) is larger than all the frames: no need to wait for credit.
        for f in &frames {
            s.write_all(f).unwrap();
        }
        // Drain CREDITs until the consumer leaves.
        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
    });
    let options = ConsumerOptions {
        window_bytes: 1 << 20, // several CREDITs on the way
        ..ConsumerOptions::new(StreamLog::Realtime, Start::Earliest)
    };
    let mut c = Consumer::connect(addr, options).unwrap();
    // Warm up: the first frames (thread-locals, lazily initialised statics).
    for _ in 0..2 * PER_FRAME {
        c.next_timeout(Duration::from_secs(5)).unwrap().unwrap();
    }
    COUNTING.with(|f| f.set(true));
    let mut sum = 0u64;
    for want in 2 * PER_FRAME..FRAMES * PER_FRAME {
        let rec = c.next_timeout(Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(rec.offset(), want);
        sum += rec.body().len() as u64;
    }
    COUNTING.with(|f| f.set(false));
    assert!(sum > 0);
    assert_eq!(
        ALLOCATIONS.load(Ordering::Relaxed),
        0,
        "allocations while reading"
    );
    drop(c);
    server.join().unwrap();
}
