//! The core pipeline end to end: decode (CRC32C + validation) → dispatch (rate limit, topic,
//! control plane, pool slot, lane) → process (alert rules, dedup, aggregation) → sink.
//!
//! Input: BATCH frames of 64 events each, priorities in turn Critical, High, Medium, Low,
//! Batch (so 2/5 realtime, 1/5 transactional, 2/5 batch), 4 topics, every event with a value,
//! unique ids. The sink takes every record (it only counts). Payloads of 64 and 512 bytes.
//!
//! - `pipeline_one_thread_{64,512}b/pinstream`: one thread (CPU 0) decodes a frame,
//!   dispatches it and polls the processors.
//! - `.../std_crossbeam`: the same work written the way a std user would, the peer: the same
//!   decoder, then each payload copied into a `Vec`, routed through three bounded
//!   crossbeam-channel lanes, deduplicated in a `HashMap<u64, tick>` with expiry, aggregated
//!   in a `HashMap<topic, Aggregate>`.
//! - `pipeline_two_threads_{64,512}b/pinstream`: CPU 0 decodes and dispatches, CPU 1
//!   processes; time runs until CPU 1 has processed the last event.
//!
//! After criterion, a report pass prints events/s and the lane-wait percentiles (dispatch to
//! taken out of the lane, nanoseconds, from the processors' histogram) for each mode.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use pinstream_benches::{CPU_A, pin_or_warn, pinned_pair};
use pinstream_core::accounting::{Accounting, StageCounters};
use pinstream_core::control::ControlSignal;
use pinstream_core::dispatch::{Dispatcher, Unlimited};
use pinstream_core::event::{EventHeader, Priority};
use pinstream_core::lanes::Lanes;
use pinstream_core::process::realtime::{AlertRule, Condition, CountAlerts};
use pinstream_core::process::{LaneProcessors, Processors, Record, RetryPolicy, Sink, SinkError};
use pinstream_core::wire::{BatchEncoder, Frame};

const PER_FRAME: usize = 64;
/// Frames in the prepared stream (about 480 KB with 64-byte payloads: it stays in L2, as a
/// receive buffer just filled by `recv` does). Ids repeat only after it wraps, when they
/// have expired from the dedup window (the clock advances one tick per frame).
const FRAMES: usize = 64;
const DEDUP_WINDOW: u64 = 32;
const AGG_WINDOW: u64 = 64;
const MAX_FRAME: usize = 65_536;
const POOL: usize = 1024;
const LANE: usize = 256;
const DL: usize = 1024;
const RQ: usize = 16;

/// Dedup table: 2048 slots, about four times the ids live in one window (32 frames × 13).
type Procs = LaneProcessors<4, 2048, 4>;

/// Counts what it is given and reads the payload length, so nothing is optimised away.
#[derive(Default)]
struct CountingSink {
    events: u64,
    aggregated: u64,
    bytes: u64,
}

impl Sink for CountingSink {
    #[inline]
    fn store(&mut self, record: &Record<'_>) -> Result<(), SinkError> {
        match record {
            Record::Event(e) => {
                self.events += 1;
                self.bytes += black_box(e.payload).len() as u64;
            }
            Record::Aggregate(a) => self.aggregated += a.count,
            // A kind this sink does not know (`Record` is non-exhaustive): refused, so the
            // pipeline counts it.
            _ => return Err(SinkError),
        }
        Ok(())
    }
}

/// `FRAMES` encoded BATCH frames of `PER_FRAME` events with `payload` bytes each.
fn frames(payload: usize) -> Vec<Vec<u8>> {
    let body = vec![0x5Au8; payload];
    let mut buf = vec![0u8; MAX_FRAME];
    (0..FRAMES)
        .map(|f| {
            let mut batch = BatchEncoder::new(&mut buf, f as u64 + 1).expect("buffer");
            for i in 0..PER_FRAME {
                let id = (f * PER_FRAME + i) as u64;
                let header = EventHeader::new(id, (i % 4) as u16, Priority::ALL[i % 5], id)
                    .with_value((id % 1000) as i64);
                batch.push(&header, &body).expect("frame fits");
            }
            let len = batch.finish().expect("non-empty");
            buf[..len].to_vec()
        })
        .collect()
}

fn procs() -> Box<Procs> {
    procs_with(DEDUP_WINDOW, AGG_WINDOW)
}

fn procs_with(dedup_window: u64, aggregate_window: u64) -> Box<Procs> {
    let mut p = Box::new(Procs::new(dedup_window, aggregate_window));
    p.realtime
        .add_rule(AlertRule {
            topic: 0,
            condition: Condition::Above(990),
        })
        .expect("room");
    p
}

/// Runs the one-thread pipeline over `frames` starting at frame `start` for `n` frames;
/// `clock` gives the tick for frame `k`.
#[allow(clippy::too_many_arguments)]
fn one_thread_run<const P: usize>(
    lanes: &mut Lanes<P, POOL, LANE, DL>,
    procs: &mut Procs,
    frames: &[Vec<u8>],
    start: usize,
    n: usize,
    sink: &mut CountingSink,
    counters: (&StageCounters, &StageCounters),
    clock: &mut dyn FnMut(usize) -> u64,
) {
    let (input, output, mut dead) = lanes.split();
    let signal = ControlSignal::new();
    let mut dispatcher = Dispatcher::new(input, &Unlimited, &signal, 4, counters.0);
    let mut processors: Processors<'_, P, POOL, LANE, DL, RQ> =
        Processors::new(output, RetryPolicy::DEFAULT, counters.1);
    let mut alerts = CountAlerts::default();
    for k in start..start + n {
        let bytes = &frames[k % FRAMES];
        let now = clock(k);
        match Frame::new_checked(bytes, MAX_FRAME) {
            Ok(frame) => {
                dispatcher.dispatch_frame(&frame, 0, now);
            }
            Err(e) => dispatcher.reject_frame(e),
        }
        let now = clock(k);
        processors.poll(procs, &mut alerts, sink, now, PER_FRAME);
    }
    processors.drain(procs, &mut alerts, sink, clock(start + n));
    assert_eq!(dead.drain(usize::MAX, |_| ()), 0, "nothing dead-lettered");
    black_box(alerts);
}

/// The peer: the same decoded frames through std and crossbeam-channel.
struct StdPipeline {
    lanes: [(
        crossbeam_channel::Sender<StdEvent>,
        crossbeam_channel::Receiver<StdEvent>,
    ); 3],
    seen: HashMap<u64, u64>,
    aggregates: HashMap<u16, (u64, u64, i64, i64, i128)>,
    window_start: u64,
    alerts: u64,
}

struct StdEvent {
    header: EventHeader,
    payload: Vec<u8>,
}

impl StdPipeline {
    fn new() -> Self {
        Self {
            lanes: std::array::from_fn(|_| crossbeam_channel::bounded(LANE)),
            seen: HashMap::with_capacity(16_384),
            aggregates: HashMap::new(),
            window_start: 0,
            alerts: 0,
        }
    }

    fn frame(&mut self, bytes: &[u8], now: u64, sink: &mut CountingSink) {
        let Ok(frame) = Frame::new_checked(bytes, MAX_FRAME) else {
            return;
        };
        for view in frame.events() {
            let header = view.header();
            let lane = header.priority.lane().index();
            let event = StdEvent {
                header,
                payload: view.payload().to_vec(),
            };
            self.lanes[lane].0.try_send(event).expect("lane has room");
        }
        // Realtime.
        while let Ok(e) = self.lanes[0].1.try_recv() {
            if e.header.topic == 0 && e.header.value().is_some_and(|v| v > 990) {
                self.alerts += 1;
            }
            sink.events += 1;
            sink.bytes += black_box(&e.payload).len() as u64;
        }
        // Transactional: dedup with expiry, pruned once per window.
        while let Ok(e) = self.lanes[1].1.try_recv() {
            let fresh = match self.seen.get(&e.header.id) {
                Some(&t) if now - t < DEDUP_WINDOW => false,
                _ => {
                    self.seen.insert(e.header.id, now);
                    true
                }
            };
            if fresh {
                sink.events += 1;
                sink.bytes += black_box(&e.payload).len() as u64;
            }
        }
        if self.seen.len() > 8_192 {
            self.seen.retain(|_, t| now - *t < DEDUP_WINDOW);
        }
        // Batch: aggregation per topic and window.
        while let Ok(e) = self.lanes[2].1.try_recv() {
            let a = self
                .aggregates
                .entry(e.header.topic)
                .or_insert((0, 0, i64::MAX, i64::MIN, 0));
            a.0 += 1;
            a.1 += e.payload.len() as u64;
            if let Some(v) = e.header.value() {
                a.2 = a.2.min(v);
                a.3 = a.3.max(v);
                a.4 += i128::from(v);
            }
        }
        if now >= self.window_start + AGG_WINDOW {
            for (_, a) in self.aggregates.drain() {
                sink.aggregated += a.0;
            }
            self.window_start = now - now % AGG_WINDOW;
        }
    }
}

fn one_thread<const P: usize>(c: &mut Criterion) {
    let frames = frames(P);
    let mut group = c.benchmark_group(format!("pipeline_one_thread_{P}b"));
    group.throughput(Throughput::Elements(PER_FRAME as u64));
    pin_or_warn(CPU_A);

    let mut lanes: Box<Lanes<P, POOL, LANE, DL>> = Box::new(Lanes::new());
    let mut procs = procs();
    let mut next = 0usize;
    group.bench_function("pinstream", |b| {
        b.iter_custom(|iters| {
            let (dc, pc) = (StageCounters::new(), StageCounters::new());
            let mut sink = CountingSink::default();
            let started = Instant::now();
            one_thread_run(
                &mut lanes,
                &mut procs,
                &frames,
                next,
                iters as usize,
                &mut sink,
                (&dc, &pc),
                &mut |k| k as u64,
            );
            let elapsed = started.elapsed();
            next += iters as usize;
            Accounting::of(&[&dc, &pc]).check(0).expect("balanced");
            elapsed
        });
    });

    let mut peer = StdPipeline::new();
    let mut sink = CountingSink::default();
    let mut k = 0usize;
    group.bench_function("std_crossbeam", |b| {
        b.iter(|| {
            peer.frame(&frames[k % FRAMES], k as u64, &mut sink);
            k += 1;
        });
    });
    black_box(peer.alerts);
    group.finish();
}

/// Two pinned threads: CPU 0 decodes and dispatches `n` frames, CPU 1 processes until every
/// event is through. Returns the time and the processors' counters.
fn two_thread_run<const P: usize>(
    lanes: &mut Lanes<P, POOL, LANE, DL>,
    procs: &mut Procs,
    frames: &[Vec<u8>],
    n: usize,
    counters: (&StageCounters, &StageCounters),
    base: Instant,
) -> Duration {
    let (input, output, mut dead) = lanes.split();
    let signal = ControlSignal::new();
    let mut dispatcher = Dispatcher::new(input, &Unlimited, &signal, 4, counters.0);
    let mut processors: Processors<'_, P, POOL, LANE, DL, RQ> =
        Processors::new(output, RetryPolicy::DEFAULT, counters.1);
    let done = AtomicBool::new(false);
    let tick = move || base.elapsed().as_nanos() as u64;
    let total = (n * PER_FRAME) as u64;
    let (started, finished) = pinned_pair(
        || {
            let started = Instant::now();
            for k in 0..n {
                // Wait for room rather than dead-letter: this measures throughput.
                while dispatcher.depths().iter().any(|&d| d > LANE - PER_FRAME) {
                    std::hint::spin_loop();
                }
                let frame = Frame::new_checked(&frames[k % FRAMES], MAX_FRAME).expect("valid");
                dispatcher.dispatch_frame(&frame, 0, tick());
            }
            done.store(true, Ordering::Release);
            started
        },
        || {
            let mut sink = CountingSink::default();
            let mut alerts = CountAlerts::default();
            loop {
                let now = tick();
                processors.poll(procs, &mut alerts, &mut sink, now, PER_FRAME);
                let taken: u64 = counters.1.processed.iter().map(|c| c.get()).sum();
                if taken == total && done.load(Ordering::Acquire) {
                    processors.drain(procs, &mut alerts, &mut sink, tick());
                    return Instant::now();
                }
            }
        },
    );
    assert_eq!(dead.drain(usize::MAX, |_| ()), 0, "nothing dead-lettered");
    finished - started
}

fn two_threads<const P: usize>(c: &mut Criterion) {
    let frames = frames(P);
    let mut group = c.benchmark_group(format!("pipeline_two_threads_{P}b"));
    group.throughput(Throughput::Elements(PER_FRAME as u64));
    let mut lanes: Box<Lanes<P, POOL, LANE, DL>> = Box::new(Lanes::new());
    // Ticks are nanoseconds here: windows of 100 µs (dedup) and 200 µs (aggregation).
    let mut procs = procs_with(100_000, 200_000);
    // One clock for every sample: the dedup table remembers ticks across samples.
    let base = Instant::now();
    group.bench_function("pinstream", |b| {
        b.iter_custom(|iters| {
            let (dc, pc) = (StageCounters::new(), StageCounters::new());
            let t = two_thread_run(
                &mut lanes,
                &mut procs,
                &frames,
                iters as usize,
                (&dc, &pc),
                base,
            );
            Accounting::of(&[&dc, &pc]).check(0).expect("balanced");
            t
        });
    });
    group.finish();
}

/// The report pass: events/s and lane-wait percentiles in nanoseconds (ticks are
/// nanoseconds since the pass started). Each mode runs twice and reports the second run, so
/// page faults and cold caches of the first do not count.
fn report<const P: usize>() {
    let frames = frames(P);
    let n = 20_000;
    let mut lanes: Box<Lanes<P, POOL, LANE, DL>> = Box::new(Lanes::new());
    // Nanosecond ticks here: a 100 µs dedup window (about 32 frames, as in the criterion
    // runs) and 200 µs aggregation windows.
    let mut procs = procs_with(100_000, 200_000);
    // One clock for all runs: the dedup table remembers ticks from one run to the next.
    let base = Instant::now();
    pin_or_warn(CPU_A);
    for round in 0..2 {
        let (dc, pc) = (StageCounters::new(), StageCounters::new());
        let mut sink = CountingSink::default();
        let started = Instant::now();
        one_thread_run(
            &mut lanes,
            &mut procs,
            &frames,
            round * n,
            n,
            &mut sink,
            (&dc, &pc),
            &mut |_| base.elapsed().as_nanos() as u64,
        );
        if round == 1 {
            print_line("one thread", P, n, started.elapsed().as_secs_f64(), &pc);
        }
    }
    for round in 0..2 {
        let (dc, pc) = (StageCounters::new(), StageCounters::new());
        let t = two_thread_run(&mut lanes, &mut procs, &frames, n, (&dc, &pc), base);
        if round == 1 {
            print_line("two threads", P, n, t.as_secs_f64(), &pc);
        }
    }
}

fn print_line(mode: &str, payload: usize, frames: usize, secs: f64, pc: &StageCounters) {
    let events = (frames * PER_FRAME) as f64;
    let h = &pc.lane_wait;
    println!(
        "report: {mode:>11}, {payload:>3} B payload: {:>6.2} M events/s; lane wait ns p50 {} p99 {} p99.9 {} max {}",
        events / secs / 1e6,
        h.percentile(500_000),
        h.percentile(990_000),
        h.percentile(999_000),
        h.max(),
    );
    let lanes: [u64; 3] = std::array::from_fn(|i| pc.processed[i].get());
    assert_eq!(lanes.iter().sum::<u64>(), events as u64);
}

fn benches(c: &mut Criterion) {
    one_thread::<64>(c);
    one_thread::<512>(c);
    two_threads::<64>(c);
    two_threads::<512>(c);
    // Not when profiling one bench, listing, or smoke-testing (`cargo test --benches`).
    let quiet =
        std::env::args().any(|a| ["--profile-time", "--list", "--test"].contains(&a.as_str()));
    if !quiet {
        report::<64>();
        report::<512>();
    }
}

fn main() {
    pinstream_benches::run(benches);
}
