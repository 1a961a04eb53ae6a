use std::vec::Vec;

use super::realtime::{AlertRule, Condition, CountAlerts};
use super::*;
use crate::accounting::Accounting;
use crate::control::{ControlSignal, Level};
use crate::dispatch::{Dispatcher, Outcome, Unlimited};
use crate::lanes::Lanes;

/// A sink that refuses while `refuse` is above zero (counting down), and records what it
/// took.
#[derive(Default)]
struct TestSink {
    refuse: u32,
    refuse_forever: bool,
    events: Vec<(Lane, u64)>,
    aggregates: Vec<Aggregate>,
    calls: u32,
    /// Ids answered as duplicates, with the frame they came in.
    duplicates: Vec<(u64, Origin)>,
}

impl Sink for TestSink {
    fn store(&mut self, record: &Record<'_>) -> Result<(), SinkError> {
        self.calls += 1;
        if self.refuse_forever {
            return Err(SinkError);
        }
        if self.refuse > 0 {
            self.refuse -= 1;
            return Err(SinkError);
        }
        match record {
            Record::Event(e) => self.events.push((e.lane, e.header.id)),
            Record::Aggregate(a) => self.aggregates.push(**a),
        }
        Ok(())
    }

    fn duplicate(&mut self, header: &EventHeader, origin: Origin) {
        self.duplicates.push((header.id, origin));
    }
}

type TestLanes = Lanes<16, 32, 8, 64>;

fn header(id: u64, topic: u16, priority: Priority) -> EventHeader {
    EventHeader::new(id, topic, priority, 0)
}

fn check_books(stages: &[&StageCounters], in_flight: u64) -> Accounting {
    let a = Accounting::of(stages);
    a.check(in_flight).unwrap();
    a
}

#[test]
fn each_lane_reaches_the_sink_its_own_way() {
    let mut lanes = TestLanes::new();
    let (input, output, mut dead) = lanes.split();
    let (signal, dc, pc) = (
        ControlSignal::new(),
        StageCounters::new(),
        StageCounters::new(),
    );
    let mut d = Dispatcher::new(input, &Unlimited, &signal, 4, &dc);
    let mut p: Processors<'_, 16, 32, 8, 64, 4> =
        Processors::new(output, RetryPolicy::DEFAULT, &pc);
    let mut procs: LaneProcessors<2, 64, 4> = LaneProcessors::new(1_000, 100);
    procs
        .realtime
        .add_rule(AlertRule {
            topic: 1,
            condition: Condition::Above(10),
        })
        .unwrap();
    let (mut alerts, mut sink) = (CountAlerts::default(), TestSink::default());
    let o = Origin::new(1, 1);

    assert_eq!(
        d.dispatch(&header(1, 1, Priority::Critical).with_value(11), b"a", o, 5),
        Outcome::Queued(Lane::Realtime)
    );
    d.dispatch(&header(2, 1, Priority::High).with_value(10), b"b", o, 5);
    d.dispatch(&header(3, 2, Priority::Medium), b"c", o, 5);
    d.dispatch(&header(3, 2, Priority::Medium), b"c", o, 6); // a repeat
    d.dispatch(&header(4, 3, Priority::Low).with_value(-4), b"dd", o, 7);
    d.dispatch(&header(5, 3, Priority::Batch).with_value(6), b"eee", o, 8);
    assert_eq!(p.depths(), [2, 2, 2]);
    assert_eq!(p.in_flight(&procs), 6);

    let s = p.poll(&mut procs, &mut alerts, &mut sink, 50, 16);
    assert_eq!(s.taken, 6);
    assert_eq!(alerts.0, 1, "only the value above 10 fires");
    assert_eq!(pc.alerts.get(), 1);
    assert_eq!(
        sink.events,
        [
            (Lane::Realtime, 1),
            (Lane::Realtime, 2),
            (Lane::Transactional, 3)
        ]
    );
    // The repeat is a duplicate of a stored event: told to the sink, not dead-lettered.
    assert_eq!(sink.duplicates, [(3, o)]);
    assert!(dead.pop().is_none());
    // The batch window [0, 100) is still open: two events in flight.
    assert_eq!(p.in_flight(&procs), 2);
    check_books(&[&dc, &pc], 2);

    let s = p.poll(&mut procs, &mut alerts, &mut sink, 100, 16);
    assert_eq!(s.aggregates, 1);
    let agg = sink.aggregates[0];
    assert_eq!((agg.topic, agg.count, agg.bytes), (3, 2, 5));
    assert_eq!((agg.min, agg.max, agg.sum), (-4, 6, 2));
    let books = check_books(&[&dc, &pc], 0);
    assert_eq!(books.stored, 5);
    assert_eq!(books.reason(Reason::Duplicate), 1);
    #[cfg(feature = "latency-histograms")]
    {
        assert_eq!(pc.lane_wait.count(), 6);
        assert_eq!(pc.lane_wait.max(), 45, "dispatched at 5, taken at 50");
    }
}

#[test]
fn refused_records_are_retried_after_backoff_then_stored() {
    let mut lanes = TestLanes::new();
    let (input, output, _dead) = lanes.split();
    let (signal, dc, pc) = (
        ControlSignal::new(),
        StageCounters::new(),
        StageCounters::new(),
    );
    let mut d = Dispatcher::new(input, &Unlimited, &signal, 4, &dc);
    let policy = RetryPolicy {
        max_attempts: 3,
        backoff: 10,
        max_backoff: 1_000,
    };
    let mut p: Processors<'_, 16, 32, 8, 64, 4> = Processors::new(output, policy, &pc);
    let mut procs: LaneProcessors<1, 64, 4> = LaneProcessors::new(1_000, 100);
    let mut sink = TestSink {
        refuse: 2,
        ..TestSink::default()
    };
    d.dispatch(&header(9, 0, Priority::Medium), b"x", Origin::new(1, 1), 0);
    p.poll(&mut procs, &mut CountAlerts::default(), &mut sink, 0, 8);
    assert_eq!((sink.calls, p.parked()), (1, 1));
    p.poll(&mut procs, &mut CountAlerts::default(), &mut sink, 9, 8);
    assert_eq!(sink.calls, 1, "not due before the backoff of 10");
    p.poll(&mut procs, &mut CountAlerts::default(), &mut sink, 10, 8);
    assert_eq!(sink.calls, 2, "second attempt refused, next wait 20");
    p.poll(&mut procs, &mut CountAlerts::default(), &mut sink, 29, 8);
    assert_eq!(sink.calls, 2);
    p.poll(&mut procs, &mut CountAlerts::default(), &mut sink, 30, 8);
    assert_eq!((sink.calls, p.parked()), (3, 0));
    assert_eq!(sink.events, [(Lane::Transactional, 9)]);
    assert_eq!(pc.sink_retries.get(), 2);
    check_books(&[&dc, &pc], 0);
}

#[test]
fn exhausted_retries_dead_letter_and_forget_the_id() {
    let mut lanes = TestLanes::new();
    let (input, output, mut dead) = lanes.split();
    let (signal, dc, pc) = (
        ControlSignal::new(),
        StageCounters::new(),
        StageCounters::new(),
    );
    let mut d = Dispatcher::new(input, &Unlimited, &signal, 4, &dc);
    let policy = RetryPolicy {
        max_attempts: 2,
        backoff: 1,
        max_backoff: 1,
    };
    let mut p: Processors<'_, 16, 32, 8, 64, 4> = Processors::new(output, policy, &pc);
    let mut procs: LaneProcessors<1, 64, 4> = LaneProcessors::new(1_000, 10);
    let mut alerts = CountAlerts::default();
    let mut sink = TestSink {
        refuse_forever: true,
        ..TestSink::default()
    };
    d.dispatch(&header(7, 0, Priority::Medium), b"x", Origin::new(2, 3), 0);
    d.dispatch(&header(8, 1, Priority::Low), b"yy", Origin::new(2, 3), 0);
    p.poll(&mut procs, &mut alerts, &mut sink, 0, 8);
    p.poll(&mut procs, &mut alerts, &mut sink, 10, 8); // event: 2nd refusal; window closes
    p.poll(&mut procs, &mut alerts, &mut sink, 11, 8); // aggregate: 2nd refusal
    let records: Vec<_> = core::iter::from_fn(|| dead.pop()).collect();
    assert_eq!(records.len(), 2);
    assert_eq!(
        (records[0].reason, records[0].header.id, records[0].origin),
        (Reason::RetriesExhausted, 7, Origin::new(2, 3))
    );
    assert_eq!(
        (
            records[1].reason,
            records[1].header.topic,
            records[1].events
        ),
        (Reason::RetriesExhausted, 1, 1)
    );
    let books = check_books(&[&dc, &pc], p.in_flight(&procs));
    assert_eq!((books.stored, books.dead_lettered), (0, 2));

    // The producer resends id 7: not a duplicate, since it was never stored.
    sink.refuse_forever = false;
    d.dispatch(&header(7, 0, Priority::Medium), b"x", Origin::new(2, 4), 20);
    p.poll(&mut procs, &mut alerts, &mut sink, 20, 8);
    assert_eq!(sink.events, [(Lane::Transactional, 7)]);
    check_books(&[&dc, &pc], 0);
}

#[test]
fn a_stuck_sink_backs_up_into_lane_full() {
    let mut lanes = TestLanes::new();
    let (input, output, _dead) = lanes.split();
    let (signal, dc, pc) = (
        ControlSignal::new(),
        StageCounters::new(),
        StageCounters::new(),
    );
    let mut d = Dispatcher::new(input, &Unlimited, &signal, 4, &dc);
    let mut p: Processors<'_, 16, 32, 8, 64, 2> =
        Processors::new(output, RetryPolicy::DEFAULT, &pc);
    let mut procs: LaneProcessors<1, 64, 4> = LaneProcessors::new(1_000, 10);
    let mut sink = TestSink {
        refuse_forever: true,
        ..TestSink::default()
    };
    let mut outcomes = Vec::new();
    for id in 0..12 {
        outcomes.push(d.dispatch(&header(id, 0, Priority::High), b"", Origin::new(1, id), 0));
        p.poll(&mut procs, &mut CountAlerts::default(), &mut sink, 0, 8);
    }
    // Two parked (RQ = 2), eight in the lane, the rest dead-lettered LaneFull.
    assert_eq!(p.parked(), 2);
    assert_eq!(p.depths(), [8, 0, 0]);
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == Outcome::DeadLettered(Reason::LaneFull))
            .count(),
        2
    );
    check_books(&[&dc, &pc], p.in_flight(&procs));

    // The sink recovers: drain stores everything left.
    sink.refuse_forever = false;
    p.drain(&mut procs, &mut CountAlerts::default(), &mut sink, 1);
    assert_eq!(sink.events.len(), 10);
    let books = check_books(&[&dc, &pc], 0);
    assert_eq!(books.stored, 10);
    assert_eq!(books.reason(Reason::LaneFull), 2);
}

#[test]
fn dispatcher_refusals_each_have_their_reason() {
    let mut lanes: Lanes<4, 2, 2, 16> = Lanes::new();
    let (input, output, mut dead) = lanes.split();
    let (signal, dc, pc) = (
        ControlSignal::new(),
        StageCounters::new(),
        StageCounters::new(),
    );
    let mut d = Dispatcher::new(input, &Unlimited, &signal, 2, &dc);
    let o = Origin::new(1, 1);
    let h = header(1, 0, Priority::Medium);
    assert_eq!(
        d.dispatch(&h, b"12345", o, 0),
        Outcome::Rejected(Reason::PayloadTooLarge)
    );
    assert_eq!(
        d.dispatch(&header(1, 2, Priority::Medium), b"", o, 0),
        Outcome::DeadLettered(Reason::UnknownTopic)
    );
    signal.publish(Level::Elevated);
    assert_eq!(
        d.dispatch(&header(1, 0, Priority::Batch), b"", o, 0),
        Outcome::DeadLettered(Reason::Shed)
    );
    assert_eq!(
        d.dispatch(&header(1, 0, Priority::Low), b"", o, 0),
        Outcome::Queued(Lane::Batch)
    );
    signal.publish(Level::Healthy);
    assert_eq!(
        d.dispatch(&h, b"", o, 0),
        Outcome::Queued(Lane::Transactional)
    );
    // Two pool slots, both in lanes now.
    assert_eq!(
        d.dispatch(&h, b"", o, 0),
        Outcome::DeadLettered(Reason::PoolExhausted)
    );
    d.reject_unit(Reason::BadCrc);
    let reasons: Vec<_> = core::iter::from_fn(|| dead.pop())
        .map(|r| r.reason)
        .collect();
    assert_eq!(
        reasons,
        [Reason::UnknownTopic, Reason::Shed, Reason::PoolExhausted]
    );
    let books = check_books(&[&dc, &pc], 2);
    assert_eq!(
        (books.ingested, books.rejected, books.dead_lettered),
        (7, 2, 3)
    );
    drop(output);
}

#[test]
fn dead_letter_ring_overflow_is_counted() {
    let mut lanes: Lanes<4, 2, 2, 2> = Lanes::new();
    let (input, _output, _dead) = lanes.split();
    let (signal, dc) = (ControlSignal::new(), StageCounters::new());
    let mut d = Dispatcher::new(input, &Unlimited, &signal, 0, &dc);
    for id in 0..5 {
        d.dispatch(&header(id, 0, Priority::High), b"", Origin::new(1, 1), 0);
    }
    assert_eq!(dc.reason(Reason::UnknownTopic).get(), 5);
    assert_eq!(dc.dead_letter_overflow.get(), 3, "ring of 2");
    check_books(&[&dc], 0);
}

#[test]
fn retry_waits_double_up_to_the_cap() {
    let p = RetryPolicy {
        max_attempts: 10,
        backoff: 3,
        max_backoff: 20,
    };
    assert_eq!([p.wait(1), p.wait(2), p.wait(3), p.wait(4)], [3, 6, 12, 20]);
    assert_eq!(p.wait(200), 20);
    assert_eq!(p.wait(0), 3);
}

#[test]
fn an_event_after_its_window_ended_opens_the_next_window() {
    let mut lanes = TestLanes::new();
    let (input, output, _dead) = lanes.split();
    let (signal, dc, pc) = (
        ControlSignal::new(),
        StageCounters::new(),
        StageCounters::new(),
    );
    let mut d = Dispatcher::new(input, &Unlimited, &signal, 4, &dc);
    let mut p: Processors<'_, 16, 32, 8, 64, 4> =
        Processors::new(output, RetryPolicy::DEFAULT, &pc);
    let mut procs: LaneProcessors<1, 64, 4> = LaneProcessors::new(1_000, 100);
    let (mut alerts, mut sink) = (CountAlerts::default(), TestSink::default());
    d.dispatch(&header(1, 2, Priority::Low), b"a", Origin::new(1, 1), 50);
    p.poll(&mut procs, &mut alerts, &mut sink, 60, 8);
    d.dispatch(&header(2, 2, Priority::Low), b"b", Origin::new(1, 2), 150);
    p.poll(&mut procs, &mut alerts, &mut sink, 150, 8);
    assert_eq!(
        sink.aggregates.len(),
        1,
        "[0, 100) closed before the new event"
    );
    assert_eq!((sink.aggregates[0].start, sink.aggregates[0].count), (0, 1));
    p.poll(&mut procs, &mut alerts, &mut sink, 200, 8);
    assert_eq!(
        (sink.aggregates[1].start, sink.aggregates[1].count),
        (100, 1)
    );
    check_books(&[&dc, &pc], 0);
}

#[test]
fn a_full_retry_queue_holds_the_batch_lane_until_windows_can_close() {
    let mut lanes = TestLanes::new();
    let (input, output, _dead) = lanes.split();
    let (signal, dc, pc) = (
        ControlSignal::new(),
        StageCounters::new(),
        StageCounters::new(),
    );
    let mut d = Dispatcher::new(input, &Unlimited, &signal, 4, &dc);
    let mut p: Processors<'_, 16, 32, 8, 64, 1> =
        Processors::new(output, RetryPolicy::DEFAULT, &pc);
    let mut procs: LaneProcessors<1, 64, 4> = LaneProcessors::new(1_000, 10);
    let mut alerts = CountAlerts::default();
    let mut sink = TestSink {
        refuse_forever: true,
        ..TestSink::default()
    };
    d.dispatch(&header(1, 0, Priority::High), b"", Origin::new(1, 1), 0);
    d.dispatch(&header(2, 1, Priority::Low), b"", Origin::new(1, 1), 0);
    p.poll(&mut procs, &mut alerts, &mut sink, 0, 8); // the realtime event is parked
    assert_eq!(p.parked(), 1);
    d.dispatch(&header(3, 1, Priority::Low), b"", Origin::new(1, 2), 20);
    p.poll(&mut procs, &mut alerts, &mut sink, 20, 8);
    assert_eq!(
        p.depths()[2],
        1,
        "window [0, 10) cannot close: the event waits"
    );
    check_books(&[&dc, &pc], p.in_flight(&procs));
    sink.refuse_forever = false;
    p.drain(&mut procs, &mut alerts, &mut sink, 30);
    assert_eq!(sink.aggregates.len(), 2);
    assert_eq!((sink.aggregates[0].start, sink.aggregates[0].count), (0, 1));
    assert_eq!(
        (sink.aggregates[1].start, sink.aggregates[1].count),
        (30, 1)
    );
    check_books(&[&dc, &pc], 0);
}

#[test]
fn lanes_split_again_after_a_side_was_leaked() {
    let mut lanes = TestLanes::new();
    {
        let (_input, output, dead) = lanes.split();
        core::mem::forget(output);
        core::mem::forget(dead);
    }
    let (_input, mut output, _dead) = lanes.split();
    assert_eq!(output.depths(), [0, 0, 0]);
}

/// A sink that records dead letters itself ([`Sink::dead_letter`] returns `true`).
#[derive(Default)]
struct DeadLetterSink {
    inner: TestSink,
    dead: Vec<(Reason, u64, Origin)>,
}

impl Sink for DeadLetterSink {
    fn store(&mut self, record: &Record<'_>) -> Result<(), SinkError> {
        self.inner.store(record)
    }

    fn dead_letter(&mut self, record: &DeadLetter) -> bool {
        self.dead
            .push((record.reason, record.header.id, record.origin));
        true
    }

    fn duplicate(&mut self, header: &EventHeader, origin: Origin) {
        self.inner.duplicate(header, origin);
    }
}

#[test]
fn a_sink_that_takes_dead_letters_gets_them_instead_of_the_ring() {
    let mut lanes = TestLanes::new();
    let (input, output, mut dead) = lanes.split();
    let (signal, dc, pc) = (
        ControlSignal::new(),
        StageCounters::new(),
        StageCounters::new(),
    );
    let mut d = Dispatcher::new(input, &Unlimited, &signal, 4, &dc);
    let policy = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::DEFAULT
    };
    let mut p: Processors<'_, 16, 32, 8, 64, 4> = Processors::new(output, policy, &pc);
    let mut procs: LaneProcessors<2, 64, 4> = LaneProcessors::new(1_000, 100);
    let mut sink = DeadLetterSink::default();
    let (a, b) = (Origin::new(1, 7), Origin::new(2, 9));
    d.dispatch(&header(3, 2, Priority::Medium), b"c", a, 5);
    d.dispatch(&header(3, 2, Priority::Medium), b"c", b, 6); // a repeat
    d.dispatch(&header(4, 9, Priority::Medium), b"c", b, 6); // dispatcher: unknown topic
    p.poll(&mut procs, &mut CountAlerts::default(), &mut sink, 10, 16);
    // A repeat is no dead letter: the sink hears of it as a duplicate.
    assert!(sink.dead.is_empty());
    assert_eq!(sink.inner.duplicates, [(3, b)]);
    // The dispatcher's own dead letter still goes to the ring; the processors' does not.
    assert_eq!(dead.pop().map(|r| r.reason), Some(Reason::UnknownTopic));
    assert!(dead.pop().is_none());
    // Refused with no retry allowed: dead-lettered through the sink too.
    sink.inner.refuse = 1;
    d.dispatch(&header(5, 2, Priority::Medium), b"c", a, 11);
    p.poll(&mut procs, &mut CountAlerts::default(), &mut sink, 12, 16);
    assert_eq!(sink.dead, [(Reason::RetriesExhausted, 5, a)]);
    assert!(dead.pop().is_none());
    let books = check_books(&[&dc, &pc], 0);
    assert_eq!(books.reason(Reason::Duplicate), 1);
    assert_eq!((books.duplicates, books.dead_lettered), (1, 2));
    assert_eq!(books.reason(Reason::RetriesExhausted), 1);
    assert_eq!(books.stored, 1);
}

/// `BatchStore::Events`: batch-lane events reach the sink one by one (and count as stored
/// then), the aggregates follow as summaries that do not count events again, and an
/// aggregate the sink refuses for good is counted as dropped, not as dead events.
#[test]
fn batch_events_are_stored_one_by_one_when_asked() {
    let mut lanes = TestLanes::new();
    let (input, output, mut dead) = lanes.split();
    let (signal, dc, pc) = (
        ControlSignal::new(),
        StageCounters::new(),
        StageCounters::new(),
    );
    let mut d = Dispatcher::new(input, &Unlimited, &signal, 4, &dc);
    let policy = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::DEFAULT
    };
    let mut p: Processors<'_, 16, 32, 8, 64, 4> = Processors::new(output, policy, &pc);
    p.set_batch_store(BatchStore::Events);
    let mut procs: LaneProcessors<2, 64, 4> = LaneProcessors::new(1_000, 100);
    let mut sink = TestSink::default();
    let o = Origin::new(1, 1);
    d.dispatch(&header(1, 3, Priority::Low).with_value(2), b"ab", o, 5);
    d.dispatch(&header(2, 3, Priority::Batch), b"c", o, 6);
    p.poll(&mut procs, &mut CountAlerts::default(), &mut sink, 10, 16);
    assert_eq!(sink.events, [(Lane::Batch, 1), (Lane::Batch, 2)]);
    // Stored already: nothing in flight although their window is open.
    assert_eq!(p.in_flight(&procs), 0);
    let books = check_books(&[&dc, &pc], 0);
    assert_eq!(books.stored, 2);
    // The window closes: its aggregate is stored, the events are not counted twice.
    p.poll(&mut procs, &mut CountAlerts::default(), &mut sink, 100, 16);
    assert_eq!(sink.aggregates.len(), 1);
    assert_eq!(sink.aggregates[0].count, 2);
    assert_eq!((pc.stored.get(), pc.aggregates.get()), (2, 1));
    // A refused aggregate with no retry left: dropped, counted, no dead letter.
    d.dispatch(&header(3, 3, Priority::Batch), b"d", o, 150);
    p.poll(&mut procs, &mut CountAlerts::default(), &mut sink, 160, 16);
    sink.refuse = 1;
    p.poll(&mut procs, &mut CountAlerts::default(), &mut sink, 200, 16);
    assert_eq!(pc.aggregates_dropped.get(), 1);
    assert!(dead.pop().is_none());
    let books = check_books(&[&dc, &pc], 0);
    assert_eq!((books.stored, books.dead_lettered), (3, 0));
}

/// A record parked for retry keeps its arena block, and holds back the reuse of the blocks
/// after it (stored and released meanwhile); once it is stored, the whole arena is free
/// again. Payloads read back whole from the arena, including on the retry; a record whose
/// retries run out releases its block too.
#[test]
fn a_parked_record_holds_its_arena_block_until_it_is_stored() {
    let mut lanes = TestLanes::new();
    let mut region = [0u8; 100];
    let (input, output, _dead) = lanes.split_with_arena(&mut region);
    let (signal, dc, pc) = (
        ControlSignal::new(),
        StageCounters::new(),
        StageCounters::new(),
    );
    let mut d = Dispatcher::new(input, &Unlimited, &signal, 4, &dc);
    let policy = RetryPolicy {
        max_attempts: 2,
        backoff: 10,
        max_backoff: 10,
    };
    let mut p: Processors<'_, 16, 32, 8, 64, 4> = Processors::new(output, policy, &pc);
    let mut procs: LaneProcessors<1, 64, 4> = LaneProcessors::new(1_000, 100);

    /// Checks every payload's bytes (id repeated) as it is offered.
    struct Bytes(TestSink);
    impl Sink for Bytes {
        fn store(&mut self, record: &Record<'_>) -> Result<(), SinkError> {
            if let Record::Event(e) = record {
                assert_eq!(e.payload, &std::vec![e.header.id as u8; 40][..]);
            }
            self.0.store(record)
        }
    }
    let mut sink = Bytes(TestSink {
        refuse: 1,
        ..TestSink::default()
    });
    let send = |d: &mut Dispatcher<'_, 16, 32, 8, 64>, id: u64| {
        d.dispatch(
            &header(id, 0, Priority::High),
            &[id as u8; 40],
            Origin::new(1, id),
            0,
        )
    };
    assert_eq!(send(&mut d, 1), Outcome::Queued(Lane::Realtime));
    assert_eq!(send(&mut d, 2), Outcome::Queued(Lane::Realtime));
    p.poll(&mut procs, &mut CountAlerts::default(), &mut sink, 0, 8);
    // 1 is parked (holding 0..40), 2 stored and released: its 40 bytes wait behind 1.
    assert_eq!((p.parked(), sink.0.events.len()), (1, 1));
    assert_eq!(
        send(&mut d, 3),
        Outcome::DeadLettered(Reason::PoolExhausted)
    );
    p.poll(&mut procs, &mut CountAlerts::default(), &mut sink, 10, 8);
    assert_eq!(
        (p.parked(), sink.0.events.len()),
        (0, 2),
        "1 stored on retry"
    );
    for id in 4..8 {
        assert_eq!(send(&mut d, id), Outcome::Queued(Lane::Realtime), "{id}");
        p.poll(&mut procs, &mut CountAlerts::default(), &mut sink, 20, 8);
    }
    // Retries run out: the block goes back with the dead letter.
    sink.0.refuse_forever = true;
    assert_eq!(send(&mut d, 8), Outcome::Queued(Lane::Realtime));
    p.drain(&mut procs, &mut CountAlerts::default(), &mut sink, 100);
    assert_eq!(pc.reason(Reason::RetriesExhausted).get(), 1);
    sink.0.refuse_forever = false;
    assert_eq!(send(&mut d, 9), Outcome::Queued(Lane::Realtime));
    assert_eq!(send(&mut d, 10), Outcome::Queued(Lane::Realtime));
    p.drain(&mut procs, &mut CountAlerts::default(), &mut sink, 200);
    let ids: Vec<u64> = sink.0.events.iter().map(|e| e.1).collect();
    assert_eq!(ids, [2, 1, 4, 5, 6, 7, 9, 10]);
    check_books(&[&dc, &pc], 0);
}
