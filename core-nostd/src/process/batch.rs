//! The batch lane's processor: per-topic windowed aggregation.
//!
//! Windows are tumbling and aligned to multiples of `window` ticks of the engine's clock
//! (the tick at which the processor takes the event out of its lane, so a late event counts
//! in the window open when it is processed). Per topic and window the processor keeps the
//! event count, payload bytes, and the count / min / max / sum of the values carried; when
//! the window has ended ([`BatchProcessor::close_due`]) it emits one [`Aggregate`] per topic
//! that saw events. The events themselves are not stored: their aggregate is.

use crate::process::Aggregate;

#[derive(Clone, Copy, Debug)]
struct Window {
    /// `start == u64::MAX`: no open window for this topic.
    start: u64,
    count: u64,
    bytes: u64,
    values: u64,
    min: i64,
    max: i64,
    sum: i128,
}

impl Window {
    const CLOSED: Self = Self {
        start: u64::MAX,
        count: 0,
        bytes: 0,
        values: 0,
        min: i64::MAX,
        max: i64::MIN,
        sum: 0,
    };
}

/// Aggregation over topic ids `0..T`, with windows of `window` ticks.
///
/// ```
/// use pinstream_core::process::batch::BatchProcessor;
///
/// let mut batch: BatchProcessor<4> = BatchProcessor::new(100);
/// batch.fold(2, 10, Some(5), 1_005).unwrap();
/// batch.fold(2, 30, Some(-1), 1_050).unwrap();
/// batch.fold(2, 0, None, 1_099).unwrap();
/// let mut out = None;
/// assert_eq!(batch.close_due(1_099, |a| out = Some(a)), 0); // window [1000, 1100) still open
/// assert_eq!(batch.close_due(1_100, |a| out = Some(a)), 1);
/// let a = out.unwrap();
/// assert_eq!((a.topic, a.start, a.end, a.count, a.bytes), (2, 1_000, 1_100, 3, 40));
/// assert_eq!((a.values, a.min, a.max, a.sum), (2, -1, 5, 4));
/// ```
#[derive(Clone, Debug)]
pub struct BatchProcessor<const T: usize> {
    window: u64,
    windows: [Window; T],
    /// The earliest end of an open window (`u64::MAX` when none is open): `close_due` does
    /// nothing before it.
    next_end: u64,
    /// Events folded into open windows.
    pending: u64,
}

/// The topic id is outside the processor's `0..T`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TopicOutOfRange {
    /// The topic id.
    pub topic: u16,
}

impl<const T: usize> BatchProcessor<T> {
    /// No open windows; windows last `window` ticks (at least 1).
    pub const fn new(window: u64) -> Self {
        Self {
            window: if window == 0 { 1 } else { window },
            windows: [Window::CLOSED; T],
            next_end: u64::MAX,
            pending: 0,
        }
    }

    /// The window length in ticks.
    pub const fn window(&self) -> u64 {
        self.window
    }

    /// Whether a window has ended by `now` and waits to be closed. Fold events only while
    /// this is false ([`Processors`](crate::process::Processors) does), or an event would be
    /// counted in a window that is over.
    #[inline]
    pub const fn due(&self, now: u64) -> bool {
        now >= self.next_end
    }

    /// Events folded into windows not yet emitted.
    pub const fn pending(&self) -> u64 {
        self.pending
    }

    /// Adds one event of `topic` with `bytes` of payload and an optional value, at tick
    /// `now`, to its topic's current window.
    ///
    /// # Errors
    /// [`TopicOutOfRange`] when `topic >= T`.
    #[inline]
    pub fn fold(
        &mut self,
        topic: u16,
        bytes: usize,
        value: Option<i64>,
        now: u64,
    ) -> Result<(), TopicOutOfRange> {
        let window = self.window;
        let w = self
            .windows
            .get_mut(topic as usize)
            .ok_or(TopicOutOfRange { topic })?;
        if w.start == u64::MAX {
            w.start = now - now % window;
            let end = w.start.saturating_add(window);
            if end < self.next_end {
                self.next_end = end;
            }
        }
        w.count += 1;
        w.bytes = w.bytes.saturating_add(bytes as u64);
        if let Some(v) = value {
            w.values += 1;
            w.min = w.min.min(v);
            w.max = w.max.max(v);
            w.sum += i128::from(v);
        }
        self.pending += 1;
        Ok(())
    }

    /// Emits the aggregate of every window that ended by `now` and closes it; returns how
    /// many were emitted.
    pub fn close_due(&mut self, now: u64, emit: impl FnMut(Aggregate)) -> usize {
        self.close_due_max(now, usize::MAX, emit)
    }

    /// [`close_due`](Self::close_due) for at most `max` windows; the others stay open and
    /// are emitted by a later call.
    pub fn close_due_max(&mut self, now: u64, max: usize, emit: impl FnMut(Aggregate)) -> usize {
        if now < self.next_end {
            return 0;
        }
        self.close_where(|end| end <= now, max, emit)
    }

    /// Emits and closes every open window, ended or not (at shutdown), at most `max` of them.
    pub fn flush(&mut self, max: usize, emit: impl FnMut(Aggregate)) -> usize {
        self.close_where(|_| true, max, emit)
    }

    fn close_where(
        &mut self,
        due: impl Fn(u64) -> bool,
        max: usize,
        mut emit: impl FnMut(Aggregate),
    ) -> usize {
        let window = self.window;
        let mut emitted = 0;
        let mut next_end = u64::MAX;
        for (topic, w) in self.windows.iter_mut().enumerate() {
            if w.start == u64::MAX {
                continue;
            }
            let end = w.start.saturating_add(window);
            if emitted == max || !due(end) {
                next_end = next_end.min(end);
                continue;
            }
            self.pending -= w.count;
            emit(Aggregate {
                // `topic < T`, and topics are u16 (`fold` takes a u16).
                topic: topic as u16,
                start: w.start,
                end,
                count: w.count,
                bytes: w.bytes,
                values: w.values,
                min: if w.values == 0 { 0 } else { w.min },
                max: if w.values == 0 { 0 } else { w.max },
                sum: w.sum,
            });
            *w = Window::CLOSED;
            emitted += 1;
        }
        self.next_end = next_end;
        emitted
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn windows_are_aligned_per_topic_and_emitted_once() {
        let mut b: BatchProcessor<3> = BatchProcessor::new(10);
        b.fold(0, 1, None, 5).unwrap();
        b.fold(1, 2, Some(7), 9).unwrap();
        assert_eq!(b.fold(3, 0, None, 9), Err(TopicOutOfRange { topic: 3 }));
        assert_eq!(b.pending(), 2);
        let mut out = Vec::new();
        assert_eq!(b.close_due(9, |a| out.push(a)), 0);
        assert_eq!(b.close_due_max(10, 1, |a| out.push(a)), 1, "one at a time");
        assert_eq!(b.pending(), 1);
        assert_eq!(b.close_due(10, |a| out.push(a)), 1);
        assert_eq!(b.close_due(10, |a| out.push(a)), 0, "emitted once");
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].topic, out[0].start, out[0].end), (0, 0, 10));
        assert_eq!((out[0].values, out[0].min, out[0].max), (0, 0, 0));
        assert_eq!(
            (out[1].topic, out[1].min, out[1].max, out[1].sum),
            (1, 7, 7, 7)
        );
        assert_eq!(b.pending(), 0);

        // A later window, and one left open across a close of another.
        b.fold(2, 0, None, 25).unwrap();
        b.fold(0, 0, None, 31).unwrap();
        out.clear();
        assert_eq!(b.close_due(30, |a| out.push(a)), 1);
        assert_eq!((out[0].topic, out[0].start), (2, 20));
        assert_eq!(b.flush(usize::MAX, |a| out.push(a)), 1);
        assert_eq!((out[1].topic, out[1].start, out[1].end), (0, 30, 40));
        assert_eq!(b.pending(), 0);
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let mut b: BatchProcessor<1> = BatchProcessor::new(u64::MAX);
        for _ in 0..4 {
            b.fold(0, usize::MAX / 8, Some(i64::MAX), u64::MAX - 1)
                .unwrap();
            b.fold(0, 0, Some(i64::MIN), u64::MAX - 1).unwrap();
        }
        let mut out = Vec::new();
        b.flush(usize::MAX, |a| out.push(a));
        assert_eq!(
            out[0].sum,
            4 * (i128::from(i64::MAX) + i128::from(i64::MIN))
        );
        assert_eq!((out[0].min, out[0].max), (i64::MIN, i64::MAX));
        assert_eq!(out[0].start, 0, "window of u64::MAX ticks starts at 0");
    }
}
