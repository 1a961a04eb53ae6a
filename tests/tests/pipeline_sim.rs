//! Deterministic simulation of the whole core pipeline (seeded RNG, no threads, no clock):
//! producers encode frames, the bytes arrive in random splits through the streaming decoder,
//! the dispatcher routes them, the processors store them in a sink that sometimes refuses,
//! and the control plane watches. The run goes through ramp-up, overload and recovery.
//!
//! Checked on every step: `ingested == stored + duplicates + dead_lettered + rejected +
//! in_flight`.
//! Checked at the end: every event has exactly one fate (stored, dead-lettered or rejected;
//! never two), per reason the counters match what the simulation saw, and the control plane
//! rose under overload and came back to `Healthy`.

use std::collections::{HashMap, HashSet};

use pinstream_core::accounting::{Accounting, StageCounters};
use pinstream_core::control::{ControlConfig, ControlPlane, ControlSignal, Level, Observation};
use pinstream_core::dispatch::{Dispatcher, Flow, FrameProgress, Outcome, Unlimited};
use pinstream_core::event::{EventHeader, Lane, Origin, Priority};
use pinstream_core::lanes::Lanes;
use pinstream_core::process::realtime::{AlertRule, Condition, CountAlerts};
use pinstream_core::process::{LaneProcessors, Processors, Record, RetryPolicy, Sink, SinkError};
use pinstream_core::ratelimit::{RateConfig, RateLimiter};
use pinstream_core::reason::Reason;
use pinstream_core::topic::TopicTable;
use pinstream_core::wire::{BatchEncoder, StreamDecoder};
use pinstream_tests::Rng;

/// The sink: refuses a share of records (seeded), remembers what it took by serial number.
struct SimSink {
    rng: Rng,
    refuse_permille: u64,
    stored: HashMap<u64, Lane>,
    aggregated_events: u64,
    /// Serial numbers answered as duplicates of a stored id.
    duplicates: HashSet<u64>,
}

impl Sink for SimSink {
    fn store(&mut self, record: &Record<'_>) -> Result<(), SinkError> {
        if self.rng.chance(self.refuse_permille) {
            return Err(SinkError);
        }
        match record {
            Record::Event(e) => {
                // The producer's timestamp field carries the event's serial number.
                let before = self.stored.insert(e.header.timestamp, e.lane);
                assert!(
                    before.is_none(),
                    "event {} stored twice",
                    e.header.timestamp
                );
            }
            Record::Aggregate(a) => self.aggregated_events += a.count,
            other => panic!("record {other:?} unknown to this simulation"),
        }
        Ok(())
    }

    fn duplicate(&mut self, header: &EventHeader, _origin: Origin) {
        assert!(
            self.duplicates.insert(header.timestamp),
            "event {} answered duplicate twice",
            header.timestamp
        );
    }
}

const STEP: u64 = 1_000; // ticks per simulation step
const SOURCES: u32 = 4;
const LIMITED_SOURCE: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    RampUp,
    Overload,
    Recovery,
}

fn run(seed: u64) {
    let mut rng = Rng(seed);
    let mut topics: TopicTable<8, 16> = TopicTable::new();
    for name in ["alerts", "orders", "payments", "metrics", "logs"] {
        topics.register(name).unwrap();
    }
    let mut limiter: RateLimiter<{ SOURCES as usize }> = RateLimiter::new(RateConfig::UNLIMITED);
    // Source 3 may send 20 events per step with bursts of 40.
    limiter
        .set_config(LIMITED_SOURCE, RateConfig::new(20, STEP, 40).unwrap())
        .unwrap();

    let mut lanes: Lanes<64, 1024, 128, 4096> = Lanes::new();
    let (input, output, mut dead_letters) = lanes.split();
    let signal = ControlSignal::new();
    let (dispatch_counters, process_counters) = (StageCounters::new(), StageCounters::new());
    let mut dispatcher =
        Dispatcher::new(input, &limiter, &signal, topics.len(), &dispatch_counters);
    let policy = RetryPolicy {
        max_attempts: 3,
        backoff: STEP / 2,
        max_backoff: 4 * STEP,
    };
    let mut processors: Processors<'_, 64, 1024, 128, 4096, 32> =
        Processors::new(output, policy, &process_counters);
    let mut procs: LaneProcessors<4, 4096, 8> = LaneProcessors::new(50 * STEP, 10 * STEP);
    procs
        .realtime
        .add_rule(AlertRule {
            topic: 0,
            condition: Condition::Above(90),
        })
        .unwrap();
    let mut alerts = CountAlerts::default();
    let mut sink = SimSink {
        rng: Rng(seed ^ 0xDEAD_BEEF),
        refuse_permille: 20,
        stored: HashMap::new(),
        aggregated_events: 0,
        duplicates: HashSet::new(),
    };
    let mut control = ControlPlane::new(ControlConfig {
        warmup_events: 500,
        ..ControlConfig::DEFAULT
    });

    // What the simulation knows of each event's fate, by serial number.
    let mut dispatched: HashMap<u64, Outcome> = HashMap::new();
    let mut dead: HashMap<u64, Reason> = HashMap::new();
    let mut expected_rejected_frames = 0u64;
    let mut batch_dead_events = 0u64;

    let mut decoder: StreamDecoder<65_536> = StreamDecoder::new();
    let mut serial = 0u64;
    let mut seq = [0u64; SOURCES as usize];
    let mut recent_medium_ids: Vec<u64> = Vec::new();
    let mut last = (0u64, 0u64); // (ingested, dropped) at the last tick
    let mut levels: Vec<(Phase, Level)> = Vec::new();
    let mut frame_buf = vec![0u8; 65_536];
    let mut stream: Vec<u8> = Vec::new();

    let steps = [
        (Phase::RampUp, 60),
        (Phase::Overload, 80),
        (Phase::Recovery, 120),
    ];
    let mut now = 0u64;
    for (phase, count) in steps {
        for step in 0..count {
            now += STEP;
            let offered = match phase {
                Phase::RampUp => 10 + step * 2,
                Phase::Overload => 500,
                Phase::Recovery => 30,
            };
            // Producers: batches of 1 to 32 events from random sources.
            stream.clear();
            let mut left = offered;
            while left > 0 {
                let n = left.min(1 + rng.below(32));
                left -= n;
                let source = rng.below(u64::from(SOURCES)) as usize;
                seq[source] += 1;
                let mut batch = BatchEncoder::new(&mut frame_buf, seq[source]).unwrap();
                for _ in 0..n {
                    serial += 1;
                    let priority = Priority::ALL[rng.below(5) as usize];
                    let mut topic = rng.below(topics.len() as u64) as u16;
                    if rng.chance(5) {
                        topic = 7; // not registered
                    }
                    let id = if priority == Priority::Medium
                        && !recent_medium_ids.is_empty()
                        && rng.chance(100)
                    {
                        // A producer retry: same idempotency key.
                        recent_medium_ids[rng.below(recent_medium_ids.len() as u64) as usize]
                    } else {
                        serial | (1 << 63)
                    };
                    if priority == Priority::Medium {
                        recent_medium_ids.push(id);
                        if recent_medium_ids.len() > 64 {
                            recent_medium_ids.remove(0);
                        }
                    }
                    let header = EventHeader::new(id, topic, priority, serial)
                        .with_value(rng.below(100) as i64);
                    let len = if rng.chance(3) {
                        65
                    } else {
                        rng.below(64) as usize
                    };
                    let payload = [0xA5u8; 65];
                    batch.push(&header, &payload[..len]).unwrap();
                }
                let len = batch.finish().unwrap();
                let frame = &mut frame_buf[..len];
                if rng.chance(10) {
                    // Corrupt one byte past the length field: a malformed frame.
                    let at = 4 + rng.below(len as u64 - 4) as usize;
                    frame[at] ^= 1 << rng.below(8);
                    // Its events never reach the dispatcher: one rejected unit.
                    expected_rejected_frames += 1;
                }
                stream.extend_from_slice(&(source as u32).to_le_bytes());
                stream.extend_from_slice(frame);
            }

            // Ingest: split the byte stream at random points; each frame is preceded by its
            // source number (the simulation's stand-in for "which connection").
            let mut pos = 0;
            while pos < stream.len() {
                let source = u32::from_le_bytes(stream[pos..pos + 4].try_into().unwrap());
                pos += 4;
                let len = u32::from_le_bytes(stream[pos..pos + 4].try_into().unwrap()) as usize;
                let frame = &stream[pos..pos + len];
                pos += len;
                let mut at = 0;
                while at < frame.len() {
                    let cut = (at + 1 + rng.below(frame.len() as u64) as usize).min(frame.len());
                    decoder.feed(&frame[at..cut], |result| match result {
                        Ok(f) => {
                            dispatcher.dispatch_frame_with(&f, source, now, |_, h, outcome| {
                                let before = dispatched.insert(h.timestamp, outcome);
                                assert!(before.is_none(), "serial {} twice", h.timestamp);
                            });
                        }
                        Err(e) => dispatcher.reject_frame(e),
                    });
                    at = cut;
                }
            }
            assert!(!decoder.is_poisoned());

            // Processors: a fixed capacity per step.
            processors.poll(&mut procs, &mut alerts, &mut sink, now, 40);
            dead_letters.drain(usize::MAX, |d| {
                if d.events == 1 && d.header.id != 0 {
                    let before = dead.insert(d.header.timestamp, d.reason);
                    assert!(
                        before.is_none(),
                        "serial {} dead-lettered twice",
                        d.header.timestamp
                    );
                } else {
                    batch_dead_events += u64::from(d.events);
                }
            });

            // Control plane.
            let depth = processors
                .depths()
                .iter()
                .map(|&d| pinstream_core::control::depth_permille(d, 128))
                .max()
                .unwrap();
            let books = Accounting::of(&[&dispatch_counters, &process_counters]);
            let dropped = books.reason(Reason::LaneFull) + books.reason(Reason::PoolExhausted);
            let obs = Observation {
                depth_permille: depth,
                offered: books.ingested - last.0,
                dropped: dropped - last.1,
            };
            last = (books.ingested, dropped);
            let level = control.evaluate_and_publish(obs, &signal);
            levels.push((phase, level));

            books
                .check(processors.in_flight(&procs))
                .unwrap_or_else(|e| panic!("step {step} of {phase:?}: {e}"));
        }
    }

    // Shut down: drain everything.
    sink.refuse_permille = 0;
    processors.drain(&mut procs, &mut alerts, &mut sink, now + STEP);
    dead_letters.drain(usize::MAX, |d| {
        if d.events == 1 && d.header.id != 0 {
            assert!(dead.insert(d.header.timestamp, d.reason).is_none());
        } else {
            batch_dead_events += u64::from(d.events);
        }
    });
    assert_eq!(processors.in_flight(&procs), 0);
    assert_eq!(dispatch_counters.dead_letter_overflow.get(), 0);
    assert_eq!(process_counters.dead_letter_overflow.get(), 0);
    let books = Accounting::of(&[&dispatch_counters, &process_counters]);
    books.check(0).unwrap();

    // Every event has exactly one fate.
    let mut per_reason: HashMap<Reason, u64> = HashMap::new();
    let mut batch_queued = 0u64;
    for (&serial, &outcome) in &dispatched {
        let stored = sink.stored.contains_key(&serial);
        let late_dead = dead.get(&serial).copied();
        match outcome {
            Outcome::Queued(Lane::Batch) => {
                assert!(
                    !stored && late_dead.is_none(),
                    "batch event {serial} seen alone"
                );
                batch_queued += 1;
            }
            Outcome::Queued(lane) => {
                let duplicate = sink.duplicates.contains(&serial);
                assert_eq!(
                    u8::from(stored) + u8::from(late_dead.is_some()) + u8::from(duplicate),
                    1,
                    "event {serial} in {lane:?}: stored {stored}, dead-lettered {late_dead:?}, \
                     duplicate {duplicate}"
                );
                if let Some(reason) = late_dead {
                    *per_reason.entry(reason).or_default() += 1;
                }
                if duplicate {
                    *per_reason.entry(Reason::Duplicate).or_default() += 1;
                }
            }
            Outcome::DeadLettered(reason) => {
                assert!(
                    !stored,
                    "event {serial} dead-lettered ({reason}) and stored"
                );
                assert_eq!(late_dead, Some(reason), "event {serial}");
                *per_reason.entry(reason).or_default() += 1;
            }
            Outcome::Rejected(reason) => {
                assert!(
                    !stored && late_dead.is_none(),
                    "rejected event {serial} went on"
                );
                *per_reason.entry(reason).or_default() += 1;
            }
            // This simulation resends nothing.
            Outcome::Duplicate => panic!("event {serial} answered as held by the engine"),
            other => panic!("event {serial}: outcome {other:?} unknown to this simulation"),
        }
    }
    assert_eq!(sink.aggregated_events + batch_dead_events, batch_queued);
    for reason in Reason::ALL {
        if reason.is_rejection() && reason != Reason::PayloadTooLarge {
            continue;
        }
        let seen = per_reason.get(&reason).copied().unwrap_or(0)
            + if reason == Reason::RetriesExhausted {
                batch_dead_events
            } else {
                0
            };
        assert_eq!(books.reason(reason), seen, "{reason}");
    }
    let malformed: u64 = Reason::ALL
        .iter()
        .filter(|r| r.is_rejection() && **r != Reason::PayloadTooLarge)
        .map(|&r| books.reason(r))
        .sum();
    assert_eq!(malformed, expected_rejected_frames);
    assert_eq!(
        books.stored,
        sink.stored.len() as u64 + sink.aggregated_events
    );

    // The run exercised what it is meant to.
    for reason in [
        Reason::LaneFull,
        Reason::Shed,
        Reason::RateLimited,
        Reason::UnknownTopic,
        Reason::Duplicate,
        Reason::PayloadTooLarge,
    ] {
        assert!(books.reason(reason) > 0, "no {reason} in the run");
    }
    assert!(process_counters.sink_retries.get() > 0);
    assert!(alerts.0 > 0);

    // Control plane: quiet while warming up and ramping, up under overload, back after.
    let first_ramp = levels.iter().take(5).all(|&(_, l)| l == Level::Healthy);
    assert!(first_ramp, "{levels:?}");
    let peak = levels
        .iter()
        .filter(|(p, _)| *p == Phase::Overload)
        .map(|&(_, l)| l)
        .max()
        .unwrap();
    assert!(peak >= Level::Critical, "overload peaked at {peak}");
    assert_eq!(levels.last().unwrap().1, Level::Healthy, "{levels:?}");
    assert!(control.transitions() >= 2);
    assert!(
        control.entered()[Level::Healthy.index()] >= 1,
        "came back down"
    );
}

#[test]
fn ramp_overload_recovery_seed_1() {
    run(1);
}

#[test]
fn ramp_overload_recovery_seed_2() {
    run(0x5EED_0002);
}

#[test]
fn ramp_overload_recovery_seed_3() {
    run(0xC0FF_EE03);
}

/// A source with flow control ([`Flow::Waits`], what a TCP connection is) against a slow
/// pipeline and an overload four times what it takes: its frames wait for room (the
/// simulation's "connection" keeps them, as the host keeps them in the receive buffer) and
/// nothing is dead-lettered or shed, while the control plane rises as the lanes fill.
fn waiting_source_against_a_slow_pipeline(seed: u64) {
    let mut rng = Rng(seed);
    let mut lanes: Lanes<64, 256, 64, 256> = Lanes::new();
    let (input, output, mut dead_letters) = lanes.split();
    let signal = ControlSignal::new();
    let (dispatch_counters, process_counters) = (StageCounters::new(), StageCounters::new());
    let mut dispatcher = Dispatcher::new(input, &Unlimited, &signal, 4, &dispatch_counters);
    let mut processors: Processors<'_, 64, 256, 64, 256, 16> =
        Processors::new(output, RetryPolicy::DEFAULT, &process_counters);
    let mut procs: LaneProcessors<4, 4096, 8> = LaneProcessors::new(u64::MAX / 8, 10 * STEP);
    let mut alerts = CountAlerts::default();
    let mut sink = SimSink {
        rng: Rng(seed ^ 0xFEED),
        refuse_permille: 0,
        stored: HashMap::new(),
        aggregated_events: 0,
        duplicates: HashSet::new(),
    };
    let mut control = ControlPlane::new(ControlConfig {
        warmup_events: 100,
        ..ControlConfig::DEFAULT
    });
    // The connection: frames not yet taken, oldest first, and the one in progress.
    let mut pending: std::collections::VecDeque<Vec<u8>> = Default::default();
    let mut progress = FrameProgress::new();
    let mut frame_buf = vec![0u8; 65_536];
    let (mut serial, mut seq, mut now) = (0u64, 0u64, 0u64);
    let mut offered_total = 0u64;
    let (mut waits, mut peak) = (0u64, Level::Healthy);
    let mut queued_batch = 0u64;
    let mut last_cause = None;
    for step in 0..2_000u64 {
        now += STEP;
        // The producer offers 100 events per step for 200 steps (four times what the
        // processors take), then stops.
        if step < 200 {
            let mut left = 100u64;
            while left > 0 {
                let n = left.min(1 + rng.below(48));
                left -= n;
                seq += 1;
                let mut batch = BatchEncoder::new(&mut frame_buf, seq).unwrap();
                for _ in 0..n {
                    serial += 1;
                    let priority = Priority::ALL[rng.below(5) as usize];
                    let topic = rng.below(4) as u16;
                    let header = EventHeader::new(serial, topic, priority, serial);
                    batch.push(&header, &[7u8; 16]).unwrap();
                }
                let len = batch.finish().unwrap();
                pending.push_back(frame_buf[..len].to_vec());
                offered_total += n;
            }
        }
        // Ingest: take frames while the engine has room.
        while let Some(bytes) = pending.front() {
            let frame = pinstream_core::wire::Frame::new_checked(bytes, bytes.len()).unwrap();
            let step = dispatcher.dispatch_frame_flow(
                &frame,
                1,
                now,
                Flow::Waits,
                &mut progress,
                |_, _, outcome| match outcome {
                    Outcome::Queued(Lane::Batch) => queued_batch += 1,
                    Outcome::Queued(_) => {}
                    other => panic!("a waiting source got {other:?}"),
                },
            );
            if let Some(cause) = step.waiting {
                waits += 1;
                last_cause = Some(cause);
                break;
            }
            pending.pop_front();
            progress = FrameProgress::new();
        }
        // The slow part: 8 events per lane per step, against 100 offered.
        processors.poll(&mut procs, &mut alerts, &mut sink, now, 8);
        let depth = processors
            .depths()
            .iter()
            .map(|&d| pinstream_core::control::depth_permille(d, 64))
            .max()
            .unwrap();
        let books = Accounting::of(&[&dispatch_counters, &process_counters]);
        let level = control.evaluate_and_publish(
            Observation {
                depth_permille: depth,
                offered: 100,
                dropped: 0,
            },
            &signal,
        );
        peak = peak.max(level);
        books
            .check(processors.in_flight(&procs))
            .unwrap_or_else(|e| panic!("step {step}: {e}"));
    }
    assert!(
        pending.is_empty(),
        "{} frames still waiting for {last_cause:?}, level {}, depths {:?}, parked {}",
        pending.len(),
        signal.level(),
        processors.depths(),
        processors.parked()
    );
    processors.drain(&mut procs, &mut alerts, &mut sink, now + STEP);
    assert!(dead_letters.pop().is_none(), "nothing dead-lettered");
    let books = Accounting::of(&[&dispatch_counters, &process_counters]);
    books.check(0).unwrap();
    assert_eq!(books.ingested, offered_total);
    assert_eq!(books.dead_lettered + books.rejected + books.duplicates, 0);
    assert_eq!(books.stored, offered_total, "every event stored");
    assert_eq!(
        sink.stored.len() as u64 + sink.aggregated_events,
        offered_total
    );
    assert_eq!(sink.aggregated_events, queued_batch);
    assert!(waits > 100, "the source must have waited: {waits}");
    assert!(peak >= Level::Elevated, "the lanes filled: peak {peak}");
}

#[test]
fn waiting_source_loses_nothing_to_a_slow_pipeline_seed_1() {
    waiting_source_against_a_slow_pipeline(1);
}

#[test]
fn waiting_source_loses_nothing_to_a_slow_pipeline_seed_2() {
    waiting_source_against_a_slow_pipeline(0x5EED_0002);
}
