//! The high watermark of each log, published by the storage thread and read by the
//! consumer server, without locks or allocation ([`Watermarks`]).
//!
//! Each log has a seqlock over its [`Visible`] state (single writer: the storage thread).
//! The writer makes the sequence odd, stores the fields, makes it even again; a reader
//! retries while the sequence is odd or changed under it. Neither side ever waits for the
//! other: the storage thread pays four relaxed stores and two release stores per log and
//! commit, and nothing else unless the server sleeps.
//!
//! **Wake-up.** The serving thread sleeps in `epoll_wait`, on an eventfd among other fds.
//! Before it sleeps it sets `sleeping` and then looks at the sequences once more; the storage
//! thread, after publishing, swaps `sleeping` to false and writes the eventfd only if it was
//! set. Both sides use `SeqCst` on the flag and the sequence, so one of them always sees the
//! other (Dekker): a publish is never missed, and the storage thread makes at most one
//! `write(2)` per sleep of the server, none while it is busy.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};

use crate::storage::SegmentMark;
use crate::storage::layout::LogId;
use crate::sys::consumer_io::EventFd;

/// What a consumer of one log may read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Visible {
    /// The high watermark and where it lies on disk.
    pub mark: SegmentMark,
    /// The lowest offset still stored (retention removes whole segments below it).
    pub first: u64,
}

/// One log's seqlock.
#[derive(Debug, Default)]
struct Slot {
    /// Even: stable; odd: a write is in progress. Only the storage thread writes.
    seq: AtomicU64,
    offset: AtomicU64,
    base: AtomicU64,
    position: AtomicU64,
    first: AtomicU64,
}

/// The logs' high watermarks and the server's wake-up (see the module docs).
///
/// ```
/// use pinstream_host::consumers::{Visible, Watermarks};
/// use pinstream_host::storage::{LogId, SegmentMark};
///
/// let marks = Watermarks::new()?;
/// // The storage thread, after a commit: 42 records durable, ending at byte 4200 of the
/// // segment that starts at offset 0.
/// let mark = SegmentMark { offset: 42, base: 0, position: 4200 };
/// marks.publish(LogId::Realtime, Visible { mark, first: 0 });
/// // The serving thread, any time, without a lock.
/// assert_eq!(marks.read(LogId::Realtime).mark, mark);
/// assert_eq!(marks.high_watermark(LogId::Batch), 0);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Watermarks {
    slots: [Slot; LogId::COUNT],
    /// Set by the serving thread before it sleeps; swapped to false by whoever wakes it.
    sleeping: AtomicBool,
    wake: EventFd,
}

impl Watermarks {
    /// All at zero.
    ///
    /// # Errors
    /// The eventfd could not be made.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            slots: std::array::from_fn(|_| Slot::default()),
            sleeping: AtomicBool::new(false),
            wake: EventFd::new()?,
        })
    }

    /// Storage thread: publishes `v` for `log` if it changed, then wakes the server if it
    /// sleeps. The single writer of every slot.
    pub fn publish(&self, log: LogId, v: Visible) {
        let s = &self.slots[log.index()];
        let seq = s.seq.load(Ordering::Relaxed);
        if s.offset.load(Ordering::Relaxed) == v.mark.offset
            && s.first.load(Ordering::Relaxed) == v.first
            && s.base.load(Ordering::Relaxed) == v.mark.base
        {
            return;
        }
        // The high watermark only grows (a log's offsets only grow).
        debug_assert!(v.mark.offset >= s.offset.load(Ordering::Relaxed));
        s.seq.store(seq + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        s.offset.store(v.mark.offset, Ordering::Relaxed);
        s.base.store(v.mark.base, Ordering::Relaxed);
        s.position.store(v.mark.position, Ordering::Relaxed);
        s.first.store(v.first, Ordering::Relaxed);
        s.seq.store(seq + 2, Ordering::SeqCst);
        if self.sleeping.swap(false, Ordering::SeqCst) {
            self.wake.notify();
        }
    }

    /// The latest consistent state of `log`.
    pub fn read(&self, log: LogId) -> Visible {
        let s = &self.slots[log.index()];
        loop {
            let before = s.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let v = Visible {
                mark: SegmentMark {
                    offset: s.offset.load(Ordering::Relaxed),
                    base: s.base.load(Ordering::Relaxed),
                    position: s.position.load(Ordering::Relaxed),
                },
                first: s.first.load(Ordering::Relaxed),
            };
            fence(Ordering::Acquire);
            if s.seq.load(Ordering::Relaxed) == before {
                return v;
            }
        }
    }

    /// The high watermark of `log` (offsets below it are visible).
    pub fn high_watermark(&self, log: LogId) -> u64 {
        self.read(log).mark.offset
    }

    /// A number that changes whenever any log's state does (the sum of the sequences).
    pub(crate) fn version(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.seq.load(Ordering::SeqCst))
            .fold(0, u64::wrapping_add)
    }

    /// Serving thread, before `epoll_wait`: says it sleeps; returns false (do not sleep)
    /// when something was published since `seen` (a [`version`](Self::version)).
    pub(crate) fn prepare_sleep(&self, seen: u64) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        if self.version() != seen {
            self.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Serving thread, after `epoll_wait`: awake again (no wake-up is owed to it).
    pub(crate) fn woke(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }

    /// Serving thread, when epoll reported the eventfd: clears it (it is level-triggered).
    pub(crate) fn drain_wake(&self) {
        self.wake.drain();
    }

    /// Wakes the server whatever it does (to stop it).
    pub(crate) fn wake_now(&self) {
        self.wake.notify();
    }

    /// The eventfd, for the server's epoll set.
    pub(crate) fn wake_fd(&self) -> std::os::fd::RawFd {
        self.wake.raw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_then_read() {
        let w = Watermarks::new().unwrap();
        let v0 = w.version();
        let v = Visible {
            mark: SegmentMark {
                offset: 10,
                base: 0,
                position: 400,
            },
            first: 0,
        };
        w.publish(LogId::Batch, v);
        assert_eq!(w.read(LogId::Batch), v);
        assert_eq!(w.read(LogId::Realtime), Visible::default());
        assert_ne!(w.version(), v0);
        // Unchanged: nothing published, nothing woken.
        let v1 = w.version();
        w.publish(LogId::Batch, v);
        assert_eq!(w.version(), v1);
        assert!(w.prepare_sleep(v1));
        w.publish(
            LogId::Batch,
            Visible {
                mark: SegmentMark {
                    offset: 11,
                    ..v.mark
                },
                ..v
            },
        );
        // The publisher saw the server asleep and cleared the flag (and wrote the eventfd).
        assert!(!w.sleeping.load(Ordering::SeqCst));
        assert!(!w.prepare_sleep(v1));
    }

    #[test]
    fn reader_never_sees_a_torn_state() {
        let w = std::sync::Arc::new(Watermarks::new().unwrap());
        let r = std::sync::Arc::clone(&w);
        let reader = std::thread::spawn(move || {
            for _ in 0..100_000 {
                let v = r.read(LogId::Realtime);
                // The writer keeps position = 10 * offset and base = offset / 100.
                assert_eq!(v.mark.position, v.mark.offset * 10);
                assert_eq!(v.mark.base, v.mark.offset / 100);
            }
        });
        for o in 1..50_000u64 {
            w.publish(
                LogId::Realtime,
                Visible {
                    mark: SegmentMark {
                        offset: o,
                        base: o / 100,
                        position: o * 10,
                    },
                    first: 0,
                },
            );
        }
        reader.join().unwrap();
    }
}
