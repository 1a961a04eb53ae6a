//! The publish window: which offsets were sent and which have their PubAck, and so how far
//! the consumer position may be committed.
//!
//! Offsets enter in increasing order ([`AckWindow::push`]); PubAcks arrive in any order
//! ([`AckWindow::ack`]). [`AckWindow::committable`] is the lowest offset still waiting (or
//! the next expected one when none waits): every record below it is in the stream, so a
//! commit there never skips a record that JetStream lacks.
//!
//! The window spans at most `span` offsets from the lowest waiting one
//! ([`AckWindow::admits`]), jumps in the log (retention) included. The bridge's resume scan
//! relies on it: a record at offset `o` is only ever sent once every offset below `o − span`
//! has its PubAck, so in the stream every message of ours below `lo − span` precedes every
//! message at or above `lo`.

use std::collections::VecDeque;

/// See the module docs.
#[derive(Debug)]
pub struct AckWindow {
    /// The offset of `acked[0]`; `acked` covers `base .. next` (gaps count as acked).
    base: u64,
    /// The offset after the last pushed one.
    next: u64,
    acked: VecDeque<bool>,
    span: u64,
    waiting: usize,
}

impl AckWindow {
    /// Empty, expecting offsets from `start`, spanning at most `span` (≥ 1) offsets.
    pub fn new(start: u64, span: u64) -> Self {
        assert!(span >= 1, "a window of no offsets sends nothing");
        Self {
            base: start,
            next: start,
            acked: VecDeque::new(),
            span,
            waiting: 0,
        }
    }

    /// Whether `offset` may be sent now.
    pub fn admits(&self, offset: u64) -> bool {
        self.waiting == 0 || offset < self.committable() + self.span
    }

    /// `offset` was sent.
    ///
    /// # Panics
    /// If `offset` is below an offset pushed before (records come in offset order).
    pub fn push(&mut self, offset: u64) {
        assert!(
            offset >= self.next,
            "offsets must increase: {offset} after {}",
            self.next
        );
        if self.waiting == 0 {
            // Nothing waits: start afresh at `offset` (the gap below it holds no record).
            self.acked.clear();
            self.base = offset;
        } else {
            let gap = usize::try_from(offset - self.next).expect("a gap within the span");
            self.acked.extend(std::iter::repeat_n(true, gap));
        }
        self.acked.push_back(false);
        self.next = offset + 1;
        self.waiting += 1;
        debug_assert!(self.acked.len() as u64 <= self.span.max(self.next - self.base));
    }

    /// `offset`'s PubAck came; returns whether it was waiting (a second ack is ignored).
    pub fn ack(&mut self, offset: u64) -> bool {
        let Some(i) = offset
            .checked_sub(self.base)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return false;
        };
        match self.acked.get_mut(i) {
            Some(a) if !*a => *a = true,
            _ => return false,
        }
        self.waiting -= 1;
        while self.acked.front() == Some(&true) {
            self.acked.pop_front();
            self.base += 1;
        }
        true
    }

    /// Every record below this offset has its PubAck.
    pub fn committable(&self) -> u64 {
        if self.waiting == 0 {
            self.next
        } else {
            self.base
        }
    }

    /// Offsets sent and waiting for their PubAck.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// The offset after the last one pushed.
    pub fn next(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commit_point_waits_for_the_lowest_missing_ack() {
        let mut w = AckWindow::new(10, 4);
        assert_eq!(w.committable(), 10);
        for o in 10..14 {
            assert!(w.admits(o));
            w.push(o);
        }
        assert!(!w.admits(14), "the span is full");
        assert!(w.ack(12));
        assert!(w.ack(11));
        assert_eq!(w.committable(), 10);
        assert!(!w.ack(11), "a second ack is ignored");
        assert!(w.ack(10));
        assert_eq!(w.committable(), 13);
        assert!(w.admits(16) && !w.admits(17));
        assert!(w.ack(13));
        assert_eq!((w.committable(), w.waiting()), (14, 0));
        // A jump (retention) while nothing waits restarts the window there.
        w.push(100);
        assert_eq!(w.committable(), 100);
        // A jump within the span: the gap counts as acked.
        w.push(102);
        assert!(w.ack(100));
        assert_eq!(w.committable(), 102);
        assert!(w.ack(102));
        assert_eq!(w.committable(), 103);
        assert!(!w.ack(5), "below the window");
    }

    #[test]
    fn acks_in_any_order_commit_exactly_what_is_contiguous() {
        // A seeded shuffle of 1000 acks against a model.
        let mut w = AckWindow::new(0, 64);
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut sent = 0u64;
        let mut pending: Vec<u64> = Vec::new();
        let mut acked = std::collections::BTreeSet::new();
        while acked.len() < 1000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            if sent < 1000 && w.admits(sent) && (pending.is_empty() || !rng.is_multiple_of(3)) {
                w.push(sent);
                pending.push(sent);
                sent += 1;
            } else if !pending.is_empty() {
                let o = pending.swap_remove((rng % pending.len() as u64) as usize);
                assert!(w.ack(o));
                acked.insert(o);
                let model = (0..).find(|o| !acked.contains(o)).unwrap();
                assert_eq!(w.committable(), model.min(sent));
            }
        }
        assert_eq!(w.committable(), 1000);
    }
}
