//! The self-check (`cargo test --release --features semihosting`, test `pipeline`):
//! pinstream-core with every structure in a `static`, no heap, fed a built-in deterministic
//! stream of encoded frames, reporting and exiting through semihosting.
//!
//! Phases, each with outcomes known in advance:
//! 1. **warm**: 4 BATCH frames of 8 events, all priorities and 4 topics; processed after each
//!    frame by a sink that refuses every 5th record (so the retry path runs); all stored.
//! 2. **duplicates**: 4 MEDIUM events, then the same 4 ids again: 4 `duplicate` (already
//!    stored: counted as duplicates, not dead letters).
//! 3. **malformed**: 2 frames with one bit flipped: 2 rejected (`bad_crc`).
//! 4. **bad events**: 3 events of an unregistered topic and one payload larger than a slot:
//!    3 `unknown_topic`, 1 rejected `payload_too_large`.
//! 5. **overload burst**: 3 frames of 16 HIGH events with no processing in between into a
//!    realtime lane of 16: 16 stored, 32 `lane_full`.
//!
//! Then the processors drain, and the books must balance exactly:
//! `ingested == stored + duplicates + dead_lettered + rejected`, and per reason.
use core::fmt;

use cortex_m_semihosting::debug;
use pinstream_core::accounting::{Accounting, StageCounters};
use pinstream_core::arena::ArenaRegion;
use pinstream_core::control::{ControlConfig, ControlPlane, ControlSignal, Level, Observation};
use pinstream_core::dispatch::Dispatcher;
use pinstream_core::event::{EventHeader, Priority};
use pinstream_core::lanes::Lanes;
use pinstream_core::process::realtime::{AlertRule, Condition, CountAlerts};
use pinstream_core::process::{LaneProcessors, Processors, Record, RetryPolicy, Sink, SinkError};
use pinstream_core::ratelimit::{RateConfig, RateLimiter};
use pinstream_core::reason::Reason;
use pinstream_core::wire::{BatchEncoder, StreamDecoder};
use static_cell::StaticCell;

/// Payload bytes per event slot.
pub const PAYLOAD: usize = 32;
/// Event slots in the pool.
pub const POOL: usize = 64;
/// Capacity of each lane.
pub const LANE: usize = 16;
/// Capacity of the dead-letter ring.
pub const DEAD: usize = 64;
/// Retry queue entries.
pub const RETRY: usize = 4;
/// Alert rules, dedup slots, aggregated topics.
pub type Procs = LaneProcessors<2, 256, 4>;
/// The largest frame the decoder takes.
pub const MAX_FRAME: usize = 768;
/// Bytes of the payload arena: payloads longer than [`PAYLOAD`] share it.
pub const ARENA: usize = 512;

/// The pool, the lanes and the dead-letter ring: a plain `static`, split once at run time.
pub static LANES: Lanes<PAYLOAD, POOL, LANE, DEAD> = Lanes::new();
/// The payload arena's bytes: a plain `static`, taken once at run time.
pub static ARENA_REGION: ArenaRegion<ARENA> = ArenaRegion::new();
static DISPATCH_COUNTERS: StageCounters = StageCounters::new();
static PROCESS_COUNTERS: StageCounters = StageCounters::new();
static SIGNAL: ControlSignal = ControlSignal::new();
static LIMITER: RateLimiter<2> = RateLimiter::new(RateConfig::UNLIMITED);
/// The processors' state (alert rules, dedup table, aggregation windows): needs `&mut`.
pub static PROCS: StaticCell<Procs> = StaticCell::new();
/// The streaming decoder and its frame buffer.
pub static DECODER: StaticCell<StreamDecoder<MAX_FRAME>> = StaticCell::new();
static FRAME: StaticCell<[u8; MAX_FRAME]> = StaticCell::new();

/// The firmware's sink: counts what it stores and refuses every 5th record.
#[derive(Default)]
struct CountingSink {
    calls: u32,
    events: u32,
    aggregated: u64,
    /// Events stored whose payload was longer than the slot (read from the arena).
    from_arena: u32,
    /// Of those, payloads whose bytes were not what was sent.
    arena_corrupt: u32,
}

impl Sink for CountingSink {
    fn store(&mut self, record: &Record<'_>) -> Result<(), SinkError> {
        self.calls += 1;
        if self.calls % 5 == 0 {
            return Err(SinkError);
        }
        match record {
            Record::Event(e) => {
                self.events += 1;
                if e.payload.len() > PAYLOAD {
                    self.from_arena += 1;
                    if e.payload.iter().any(|&b| b != 0x5A) {
                        self.arena_corrupt += 1;
                    }
                }
            }
            Record::Aggregate(a) => self.aggregated += a.count,
            // A kind this sink does not know (`Record` is non-exhaustive): refused, so the
            // pipeline counts it.
            _ => return Err(SinkError),
        }
        Ok(())
    }
}

/// What the scenario measured.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    /// The books of both stages.
    pub books: Accounting,
    /// Events the sink stored one by one.
    pub sink_events: u32,
    /// Events the sink stored inside aggregates.
    pub sink_aggregated: u64,
    /// Events stored with a payload longer than the slot (from the arena).
    pub sink_from_arena: u32,
    /// Of those, payloads that did not read back as sent.
    pub sink_arena_corrupt: u32,
    /// Alerts fired.
    pub alerts: u64,
    /// Sink refusals retried.
    pub retries: u64,
    /// Dead-letter records read from the ring.
    pub dead_letter_records: u32,
    /// The control plane's level after the burst.
    pub level_after_burst: Level,
}

/// A check that did not hold.
#[derive(Clone, Copy, Debug)]
pub struct Mismatch {
    /// What was checked.
    pub what: &'static str,
    /// Expected value.
    pub expected: u64,
    /// Measured value.
    pub got: u64,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: expected {}, got {}",
            self.what, self.expected, self.got
        )
    }
}

fn expect(what: &'static str, expected: u64, got: u64) -> Result<(), Mismatch> {
    if expected == got {
        Ok(())
    } else {
        Err(Mismatch {
            what,
            expected,
            got,
        })
    }
}

/// Runs the scenario once. `None` if the statics were already taken (it runs once per boot).
pub fn run() -> Option<Result<Summary, Mismatch>> {
    let (input, output, mut dead_letters) = LANES.try_split_with_arena(ARENA_REGION.take()?)?;
    let procs = PROCS.try_init(Procs::new(1_000_000, 100))?;
    let decoder = DECODER.try_init(StreamDecoder::new())?;
    let frame = FRAME.try_init([0; MAX_FRAME])?;
    procs
        .realtime
        .add_rule(AlertRule {
            topic: 0,
            condition: Condition::Above(10),
        })
        .ok()?;

    // Topics 0..4 are registered.
    let mut dispatcher = Dispatcher::new(input, &LIMITER, &SIGNAL, 4, &DISPATCH_COUNTERS);
    let policy = RetryPolicy {
        max_attempts: 4,
        backoff: 1,
        max_backoff: 4,
    };
    let mut processors: Processors<'static, PAYLOAD, POOL, LANE, DEAD, RETRY> =
        Processors::new(output, policy, &PROCESS_COUNTERS);
    let mut control = ControlPlane::new(ControlConfig {
        warmup_events: 0,
        ..ControlConfig::DEFAULT
    });
    let mut sink = CountingSink::default();
    let mut alerts = CountAlerts::default();
    let mut seq = 0u64;
    let mut now = 0u64;
    let mut dead_letter_records = 0u32;

    // Encodes a BATCH of `n` events made by `make(i)`, optionally corrupts it, then feeds it
    // to the decoder in 7-byte pieces (as a UART or socket might deliver it).
    let mut send = |dispatcher: &mut Dispatcher<'static, PAYLOAD, POOL, LANE, DEAD>,
                    n: u64,
                    make: &dyn Fn(u64) -> (EventHeader, usize),
                    corrupt: bool,
                    now: u64| {
        seq += 1;
        let payload = [0x5Au8; ARENA + 8];
        let mut batch = BatchEncoder::new(&mut frame[..], seq).expect("frame buffer");
        for i in 0..n {
            let (header, len) = make(i);
            batch.push(&header, &payload[..len]).expect("frame fits");
        }
        let len = batch.finish().expect("events");
        if corrupt {
            frame[len / 2] ^= 0x10;
        }
        for piece in frame[..len].chunks(7) {
            decoder.feed(piece, |result| match result {
                Ok(f) => {
                    dispatcher.dispatch_frame(&f, 0, now);
                }
                Err(e) => dispatcher.reject_frame(e),
            });
        }
    };

    // 1. warm
    for f in 0..4u64 {
        now += 10;
        send(
            &mut dispatcher,
            8,
            &|i| {
                let k = f * 8 + i;
                let h = EventHeader::new(1 + k, (k % 4) as u16, Priority::ALL[(k % 5) as usize], k)
                    .with_value(k as i64);
                (h, 16)
            },
            false,
            now,
        );
        processors.poll(procs, &mut alerts, &mut sink, now, LANE);
    }
    // 2. duplicates, with payloads longer than the slot (in the arena)
    for _ in 0..2 {
        now += 10;
        send(
            &mut dispatcher,
            4,
            &|i| {
                (
                    EventHeader::new(100 + i, 1, Priority::Medium, i),
                    PAYLOAD + 8,
                )
            },
            false,
            now,
        );
        processors.poll(procs, &mut alerts, &mut sink, now, LANE);
    }
    // 3. malformed
    for _ in 0..2 {
        now += 10;
        send(
            &mut dispatcher,
            4,
            &|i| (EventHeader::new(200 + i, 2, Priority::High, i), 8),
            true,
            now,
        );
    }
    // 4. bad events: unknown topic ×3, then one payload too large (for the arena too)
    now += 10;
    send(
        &mut dispatcher,
        4,
        &|i| {
            if i < 3 {
                (EventHeader::new(300 + i, 9, Priority::High, i), 4)
            } else {
                (EventHeader::new(303, 1, Priority::High, i), ARENA + 8)
            }
        },
        false,
        now,
    );
    processors.poll(procs, &mut alerts, &mut sink, now, LANE);
    // 5. overload burst: 48 realtime events, no processing in between
    now += 10;
    for f in 0..3u64 {
        send(
            &mut dispatcher,
            16,
            &|i| (EventHeader::new(400 + f * 16 + i, 0, Priority::High, i), 4),
            false,
            now,
        );
    }
    let depth = processors
        .depths()
        .iter()
        .map(|&d| pinstream_core::control::depth_permille(d, LANE))
        .max()
        .unwrap_or(0);
    let books = Accounting::of(&[&DISPATCH_COUNTERS, &PROCESS_COUNTERS]);
    let level_after_burst = control.evaluate_and_publish(
        Observation {
            depth_permille: depth,
            offered: books.ingested,
            dropped: books.reason(Reason::LaneFull),
        },
        &SIGNAL,
    );
    processors.drain(procs, &mut alerts, &mut sink, now + 1_000);
    dead_letters.drain(usize::MAX, |_| dead_letter_records += 1);

    let books = Accounting::of(&[&DISPATCH_COUNTERS, &PROCESS_COUNTERS]);
    let summary = Summary {
        books,
        sink_events: sink.events,
        sink_aggregated: sink.aggregated,
        sink_from_arena: sink.from_arena,
        sink_arena_corrupt: sink.arena_corrupt,
        alerts: alerts.0,
        retries: PROCESS_COUNTERS.sink_retries.get(),
        dead_letter_records,
        level_after_burst,
    };
    Some(check(&summary, processors.in_flight(procs)).map(|()| summary))
}

fn check(s: &Summary, in_flight: u64) -> Result<(), Mismatch> {
    let b = &s.books;
    expect("in flight after drain", 0, in_flight)?;
    expect("ingested", 32 + 8 + 2 + 4 + 48, b.ingested)?;
    expect("stored", 32 + 4 + 16, b.stored)?;
    expect("duplicates", 4, b.duplicates)?;
    expect("dead-lettered", 3 + 32, b.dead_lettered)?;
    expect("rejected", 2 + 1, b.rejected)?;
    expect(
        "invariant: stored + duplicates + dead + rejected",
        b.ingested,
        b.resolved(),
    )?;
    expect("duplicate", 4, b.reason(Reason::Duplicate))?;
    expect("unknown_topic", 3, b.reason(Reason::UnknownTopic))?;
    expect("lane_full", 32, b.reason(Reason::LaneFull))?;
    expect("bad_crc", 2, b.reason(Reason::BadCrc))?;
    expect("payload_too_large", 1, b.reason(Reason::PayloadTooLarge))?;
    expect(
        "stored by the sink",
        b.stored,
        u64::from(s.sink_events) + s.sink_aggregated,
    )?;
    expect(
        "dead-letter records",
        3 + 32,
        u64::from(s.dead_letter_records),
    )?;
    expect("retries happened", 1, u64::from(s.retries > 0))?;
    // The 4 new events of the duplicates phase carry PAYLOAD + 8 bytes: stored from the arena.
    expect("stored from the arena", 4, u64::from(s.sink_from_arena))?;
    expect("arena payloads corrupt", 0, u64::from(s.sink_arena_corrupt))?;
    // Alerts: realtime events of topic 0 with a value above 10 in the warm phase (k = 16, 20).
    expect("alerts", 2, s.alerts)?;
    Ok(())
}

/// Prints the summary and the static footprint of the core's structures over semihosting:
/// as text, or as defmt frames with the `defmt` feature (decode them with `defmt-print`).
pub fn report(s: &Summary) {
    use core::mem::size_of_val;
    let b = &s.books;
    #[cfg(not(feature = "defmt"))]
    cortex_m_semihosting::hprintln!(
        "pinstream firmware: ingested {} = stored {} + duplicates {} + dead-lettered {} + rejected {}",
        b.ingested,
        b.stored,
        b.duplicates,
        b.dead_lettered,
        b.rejected
    );
    #[cfg(not(feature = "defmt"))]
    cortex_m_semihosting::hprintln!(
        "  duplicate {}, unknown_topic {}, lane_full {}, bad_crc {}, payload_too_large {}",
        b.reason(Reason::Duplicate),
        b.reason(Reason::UnknownTopic),
        b.reason(Reason::LaneFull),
        b.reason(Reason::BadCrc),
        b.reason(Reason::PayloadTooLarge)
    );
    #[cfg(not(feature = "defmt"))]
    cortex_m_semihosting::hprintln!(
        "  sink: {} events ({} from the arena) + {} in aggregates; {} retries; {} alerts; {} dead-letter records; level after the burst: {}",
        s.sink_events,
        s.sink_from_arena,
        s.sink_aggregated,
        s.retries,
        s.alerts,
        s.dead_letter_records,
        s.level_after_burst
    );
    #[cfg(not(feature = "defmt"))]
    cortex_m_semihosting::hprintln!(
        "  static bytes: lanes (pool {} x {} B payload, 3 lanes of {}, dead letters {}) {}, payload arena {}, processors {}, stage counters 2 x {}, decoder {}",
        POOL,
        PAYLOAD,
        LANE,
        DEAD,
        size_of_val(&LANES),
        size_of_val(&ARENA_REGION),
        core::mem::size_of::<Procs>(),
        size_of_val(&DISPATCH_COUNTERS),
        core::mem::size_of::<StreamDecoder<MAX_FRAME>>()
    );
    #[cfg(feature = "defmt")]
    {
        defmt::info!(
            "ingested {=u64} = stored {=u64} + duplicates {=u64} + dead-lettered {=u64} + rejected {=u64}",
            b.ingested,
            b.stored,
            b.duplicates,
            b.dead_lettered,
            b.rejected
        );
        defmt::info!(
            "lane_full {=u64}, duplicate {=u64}; level after the burst: {}",
            b.reason(Reason::LaneFull),
            b.reason(Reason::Duplicate),
            s.level_after_burst
        );
        defmt::info!(
            "static bytes: lanes {=usize}, processors {=usize}, stage counters 2 x {=usize}",
            size_of_val(&LANES),
            core::mem::size_of::<Procs>(),
            size_of_val(&DISPATCH_COUNTERS)
        );
    }
}

/// Runs, reports and exits QEMU: status 0 when every check held, 1 otherwise.
pub fn run_and_exit() -> ! {
    match run() {
        Some(Ok(summary)) => {
            report(&summary);
            crate::say!("pinstream firmware: all checks passed");
            debug::exit(debug::EXIT_SUCCESS);
        }
        Some(Err(mismatch)) => {
            crate::say!("pinstream firmware: MISMATCH: {}", mismatch);
            debug::exit(debug::EXIT_FAILURE);
        }
        None => {
            crate::say!("pinstream firmware: statics already taken");
            debug::exit(debug::EXIT_FAILURE);
        }
    }
    loop {
        cortex_m::asm::wfi();
    }
}
