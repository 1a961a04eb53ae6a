//! The application: events in over UART0, acknowledged back on the same line.
//!
//! ```text
//! UART0 RX interrupt ──► Spsc<u8, 256> ──► main loop: Line (StreamDecoder + resync)
//!        │ ring full: masks itself                    │ frame
//!        ▼ (FIFO fills, sender slowed)                ▼
//!                        Dispatcher (Flow::Waits) ──► lanes ──► Processors ──► RecordRing
//!                                                                                  │
//! UART0 TX (polled) ◄── ACK / REJECT / HELLO reply / STATS report ◄────────────────┘
//! ```
//!
//! The line speaks protocol version 1 (`docs/PROTOCOL.md`) as a TCP connection to the
//! engine does, with these differences (a serial line has no connection to open or close):
//!
//! - **Sessions.** The device announces itself at boot with a HELLO (version 1,
//!   `max_frame_len` 768, source 1; its frame 1): a host waits for it before sending, and
//!   one arriving unasked means the device reset and its counts started again. The line is
//!   then in a session; a HELLO from the host starts a new one (it opened the port again):
//!   the reply is the same HELLO, and seqs and the ACK's cumulative counts start again. A
//!   HELLO the device cannot speak is answered REJECT `unsupported_version` and changes
//!   nothing.
//! - **Answers.** Each data frame is resolved before the next is read: its events are
//!   dispatched (waiting for lane room, never dead-lettered for load: the line is a source
//!   that waits), the processors drain, and one ACK answers it (`through_seq` = its seq,
//!   the session's cumulative counts, version-1 layout: duplicates inside `stored`). An
//!   event rejected (`payload_too_large`) gets a REJECT before that ACK. A frame that fails
//!   validation gets one REJECT (its seq, the reason) and no ACK; so does a frame whose seq
//!   is not above the previous one (`seq_not_increasing`). Lost framing (noise) gets one
//!   REJECT with seq 0 and the length error, and the line hunts for the next frame
//!   ([`crate::line`]).
//! - **STATS.** An EVENT frame whose event has topic [`STATS_TOPIC`] is a request for the
//!   device's counters, not data: it is answered with a BATCH frame (kind 3, device to host)
//!   whose events each carry one counter: `id` = the [`Stat`] code (or
//!   [`REASON_STAT`]` + reason code` for each reason with a non-zero count), `topic` =
//!   [`STATS_TOPIC`], `value` = the count. It is not counted as ingested.
//!
//! The books: `ingested == stored + duplicates + dead_lettered + rejected` once a frame is
//! answered (`in_flight` is 0 then), where a frame that failed to decode, a refused HELLO and
//! each loss of framing count as one rejected unit.

use core::mem::MaybeUninit;

use pinstream_core::accounting::{Accounting, StageCounters};
use pinstream_core::arena::ArenaRegion;
use pinstream_core::control::ControlSignal;
use pinstream_core::dispatch::{Dispatcher, Flow, FrameProgress, Outcome, Unlimited};
use pinstream_core::event::{EventHeader, Priority};
use pinstream_core::lanes::{DeadLetters, Lanes};
use pinstream_core::process::realtime::{AlertRule, Condition, CountAlerts};
use pinstream_core::process::{LaneProcessors, Processors, RetryPolicy};
use pinstream_core::reason::Reason;
use pinstream_core::wire::{
    self, Ack, BatchEncoder, Frame, FrameError, FrameKind, Hello, Reject, encode_ack, encode_hello,
    encode_reject,
};
use static_cell::{ConstStaticCell, StaticCell};

use crate::board::{self, Clock};
use crate::line::{Line, loses_framing};
use crate::store::RecordRing;

/// Payload bytes per event slot.
pub const PAYLOAD: usize = 32;
/// Event slots in the pool.
pub const POOL: usize = 64;
/// Capacity of each lane.
pub const LANE: usize = 16;
/// Capacity of the dead-letter ring.
pub const DEAD: usize = 16;
/// Retry queue entries (the RAM ring never refuses, so retries do not happen; the
/// processors need at least one entry).
pub const RETRY: usize = 1;
/// Bytes of the payload arena: payloads longer than [`PAYLOAD`] share it.
pub const ARENA: usize = 512;
/// The largest frame the line takes.
pub const MAX_FRAME: usize = 768;
/// The largest frame the device sends: a STATS report with every counter and every reason
/// (a BATCH of events without payload).
pub const TX_FRAME: usize = wire::HEADER_LEN
    + wire::BATCH_PREFIX_LEN
    + (Stat::ALL.len() + Reason::COUNT) * wire::EVENT_RECORD_LEN
    + wire::TRAILER_LEN;
/// Topics `0..TOPICS` are registered.
pub const TOPICS: usize = 4;
/// The source id of the line (in the HELLO reply and the events' origins).
pub const SOURCE: u32 = 1;
/// The topic of a STATS request (an EVENT frame with one event of this topic).
pub const STATS_TOPIC: u16 = u16::MAX;
/// With the `panic-probe` feature (tests only): an EVENT of this topic makes the firmware
/// panic, so a test can see the panic reset the chip.
#[cfg(feature = "panic-probe")]
pub const PANIC_TOPIC: u16 = u16::MAX - 2;
/// Alert rules, dedup slots, aggregated topics.
pub type Procs = LaneProcessors<2, 128, 4>;
/// Ticks (ms) the transactional lane remembers an id.
pub const DEDUP_WINDOW: u64 = 60_000;
/// Ticks (ms) of an aggregation window.
pub const AGGREGATE_WINDOW: u64 = 1_000;

/// The counters of a STATS report, by their `id` in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Stat {
    /// Units that entered the pipeline (events, plus one per frame or HELLO refused).
    Ingested = 0,
    /// Events stored in the RAM ring (duplicates not included).
    Stored = 1,
    /// Events not stored again: their id is stored within the dedup window.
    Duplicates = 2,
    /// Events dead-lettered.
    DeadLettered = 3,
    /// Units rejected.
    Rejected = 4,
    /// Events inside the pipeline (0 between frames).
    InFlight = 5,
    /// Bytes the UART interrupt put into the receive ring.
    RxBytes = 6,
    /// Times the receive ring was full and the interrupt paused (back-pressure).
    RxPauses = 7,
    /// Bytes the UART flagged (overrun, framing, parity, break).
    LineErrors = 8,
    /// Bytes dropped to find the framing again.
    Discarded = 9,
    /// Times the framing was lost.
    Resyncs = 10,
    /// Frames that decoded.
    FramesOk = 11,
    /// Frames that failed validation.
    FramesInvalid = 12,
    /// Times a frame waited for lane room or a pool slot (back-pressure inside).
    FlowWaits = 13,
    /// ACK frames sent.
    Acks = 14,
    /// REJECT frames sent.
    Rejects = 15,
    /// Records the RAM ring holds now.
    Kept = 16,
    /// Records written to the RAM ring ever (events and aggregates).
    Written = 17,
    /// Records overwritten in the RAM ring (the oldest, when full).
    Overwritten = 18,
    /// Dead-letter records kept.
    DeadLetterRecords = 19,
    /// Alerts fired by the realtime lane's rules.
    Alerts = 20,
    /// Sessions started by a HELLO.
    Sessions = 21,
    /// Stack bytes used at most since reset (measured, see `board::stack_usage`).
    StackUsed = 22,
    /// Stack bytes there are (RAM above the statics).
    StackSize = 23,
}

impl Stat {
    /// Every counter, in code order.
    pub const ALL: [Stat; 24] = [
        Stat::Ingested,
        Stat::Stored,
        Stat::Duplicates,
        Stat::DeadLettered,
        Stat::Rejected,
        Stat::InFlight,
        Stat::RxBytes,
        Stat::RxPauses,
        Stat::LineErrors,
        Stat::Discarded,
        Stat::Resyncs,
        Stat::FramesOk,
        Stat::FramesInvalid,
        Stat::FlowWaits,
        Stat::Acks,
        Stat::Rejects,
        Stat::Kept,
        Stat::Written,
        Stat::Overwritten,
        Stat::DeadLetterRecords,
        Stat::Alerts,
        Stat::Sessions,
        Stat::StackUsed,
        Stat::StackSize,
    ];
}

/// In a STATS report, the `id` of a reason's count is this plus the reason's code.
pub const REASON_STAT: u64 = 0x100;

static LANES: Lanes<PAYLOAD, POOL, LANE, DEAD> = Lanes::new();
static ARENA_REGION: ArenaRegion<ARENA> = ArenaRegion::new();
static DISPATCH_COUNTERS: StageCounters = StageCounters::new();
static PROCESS_COUNTERS: StageCounters = StageCounters::new();
static SIGNAL: ControlSignal = ControlSignal::new();
static ADMIT_ALL: Unlimited = Unlimited;
// Built at compile time, in place: a value built at run time passes through the stack,
// which is what RAM is short of (see `Stat::StackUsed`).
static PROCS: ConstStaticCell<Procs> =
    ConstStaticCell::new(Procs::new(DEDUP_WINDOW, AGGREGATE_WINDOW));
static LINE: ConstStaticCell<Line<MAX_FRAME>> = ConstStaticCell::new(Line::new());
static STORE: ConstStaticCell<RecordRing> = ConstStaticCell::new(RecordRing::new());
static TX: ConstStaticCell<[u8; TX_FRAME]> = ConstStaticCell::new([0; TX_FRAME]);
/// The dispatcher and the processors hold references made at run time: built by `run`.
static APP: StaticCell<App> = StaticCell::new();

/// One session on the line (from boot or from a HELLO).
#[derive(Default)]
struct Session {
    /// The seq of the last data frame taken (0: none).
    last_seq: u64,
    /// The seq of the device's last frame in this session.
    tx_seq: u64,
    /// The books when the session started: the ACKs count from there.
    base: Accounting,
}

/// Counts of the application's own (the pipeline's are in the stage counters).
#[derive(Clone, Copy, Default)]
struct Counts {
    frames_ok: u64,
    frames_invalid: u64,
    flow_waits: u64,
    acks: u64,
    rejects: u64,
    sessions: u64,
}

/// Everything a frame needs, owned by the main loop.
struct App {
    dispatcher: Dispatcher<'static, PAYLOAD, POOL, LANE, DEAD>,
    processors: Processors<'static, PAYLOAD, POOL, LANE, DEAD, RETRY>,
    procs: &'static mut Procs,
    dead_letters: DeadLetters<'static, DEAD>,
    store: &'static mut RecordRing,
    alerts: CountAlerts,
    tx: &'static mut [u8; TX_FRAME],
    clock: Clock,
    session: Session,
    counts: Counts,
}

/// What the line and the receive interrupt counted, at the moment a frame completes.
#[derive(Clone, Copy, Default)]
struct LineCounts {
    rx: board::RxStats,
    discarded: u64,
    resyncs: u32,
}

/// Sets everything up and serves the line forever.
///
/// # Panics
/// If called twice (the statics are taken once per boot).
pub fn run() -> ! {
    let Some(mut cp) = cortex_m::Peripherals::take() else {
        panic!("core peripherals already taken");
    };
    // Built in its static, not on the stack (the dispatcher's staging alone is 7.7 KB, and
    // every move of it would be another copy on the stack).
    let (Some(app), Some(line)) = (APP.try_uninit().map(App::init), LINE.try_take()) else {
        panic!("the application's statics are already taken");
    };
    let Some(mut rx) = board::init(&mut cp.SYST) else {
        panic!("the receive ring is already split");
    };
    app.announce();
    crate::log!("pinstream firmware: serving UART0");
    let mut chunk = [0u8; 64];
    loop {
        let n = rx.read(&mut chunk);
        rx.resume_if_paused();
        if n == 0 {
            rx.wait_for_input();
            continue;
        }
        let rx_stats = rx.stats();
        for &byte in &chunk[..n] {
            line.push(byte, &mut |result, discarded, resyncs| {
                let at = LineCounts {
                    rx: rx_stats,
                    discarded,
                    resyncs,
                };
                app.on_frame(result, at);
            });
        }
    }
}

impl App {
    /// The application over its statics.
    ///
    /// # Panics
    /// When a static was taken already: only [`run`] calls this, once (through `APP`).
    /// Builds the application in `slot` (its static): written there directly, not built on
    /// the stack and copied (the dispatcher's staging area alone is 7.7 KB).
    #[inline(never)]
    fn init(slot: &'static mut MaybeUninit<Self>) -> &'static mut Self {
        slot.write(Self::new())
    }

    #[inline(always)]
    fn new() -> Self {
        let taken = "the application's statics are taken once, by run()";
        let arena = ARENA_REGION.take().expect(taken);
        let (input, output, dead_letters) = LANES.try_split_with_arena(arena).expect(taken);
        let procs = PROCS.try_take().expect(taken);
        // Realtime events of topic 0 whose value is above 1000 fire an alert.
        procs
            .realtime
            .add_rule(AlertRule {
                topic: 0,
                condition: Condition::Above(1000),
            })
            .expect("a fresh rule table has room for one rule");
        let dispatcher = Dispatcher::new(input, &ADMIT_ALL, &SIGNAL, TOPICS, &DISPATCH_COUNTERS);
        let policy = RetryPolicy {
            max_attempts: 1,
            backoff: 1,
            max_backoff: 1,
        };
        let processors = Processors::new(output, policy, &PROCESS_COUNTERS);
        Self {
            dispatcher,
            processors,
            procs,
            dead_letters,
            store: STORE.try_take().expect(taken),
            alerts: CountAlerts::default(),
            tx: TX.try_take().expect(taken),
            clock: Clock::default(),
            session: Session::default(),
            counts: Counts::default(),
        }
    }

    fn books() -> Accounting {
        Accounting::of(&[&DISPATCH_COUNTERS, &PROCESS_COUNTERS])
    }

    fn on_frame(&mut self, result: Result<Frame<'_>, FrameError>, at: LineCounts) {
        match result {
            Err(error) => {
                self.counts.frames_invalid += u64::from(!loses_framing(error.error));
                if loses_framing(error.error) {
                    crate::log!("pinstream firmware: framing lost, hunting for the next frame");
                }
                self.dispatcher.reject_frame(error.error);
                self.send_reject(&error.to_reject());
            }
            Ok(frame) => {
                self.counts.frames_ok += 1;
                match frame.kind() {
                    FrameKind::Hello => self.hello(&frame),
                    FrameKind::Event | FrameKind::Batch => self.data(&frame, at),
                    // The line takes no other kind (it never gets past the `Line`'s hunt
                    // either, but a valid frame can carry one).
                    _ => {
                        self.dispatcher.reject_unit(Reason::UnexpectedKind);
                        self.send_reject(&Reject::frame(frame.seq(), Reason::UnexpectedKind));
                    }
                }
            }
        }
    }

    /// Sends the boot HELLO: the line (re)started, a new session began (after a reset, the
    /// host learns from it that the counts started again). It is the session's frame 1.
    fn announce(&mut self) {
        self.send_hello(1);
    }

    fn send_hello(&mut self, version: u8) {
        let hello = Hello::reply(version, MAX_FRAME as u32, SOURCE);
        self.session.tx_seq += 1;
        if let Ok(n) = encode_hello(&mut self.tx[..], self.session.tx_seq, &hello) {
            board::send(&self.tx[..n]);
        }
    }

    fn hello(&mut self, frame: &Frame<'_>) {
        let Some(hello) = frame.hello() else { return };
        match hello.negotiate(1, 1) {
            Some(version) => {
                self.session = Session {
                    base: Self::books(),
                    ..Session::default()
                };
                self.counts.sessions += 1;
                self.send_hello(version);
            }
            None => {
                self.dispatcher.reject_unit(Reason::UnsupportedVersion);
                self.send_reject(&Reject::frame(frame.seq(), Reason::UnsupportedVersion));
            }
        }
    }

    fn data(&mut self, frame: &Frame<'_>, at: LineCounts) {
        let seq = frame.seq();
        if seq <= self.session.last_seq {
            self.dispatcher.reject_unit(Reason::SeqNotIncreasing);
            self.send_reject(&Reject::frame(seq, Reason::SeqNotIncreasing));
            return;
        }
        self.session.last_seq = seq;
        if is_stats_request(frame) {
            self.send_report(at);
            return;
        }
        #[cfg(feature = "panic-probe")]
        if is_request(frame, PANIC_TOPIC) {
            panic!("panic probe: asked for over the line");
        }
        let now = self.clock.now();
        self.dispatch(frame, now);
        self.processors
            .drain(self.procs, &mut self.alerts, self.store, now);
        let store = &mut *self.store;
        self.dead_letters
            .drain(usize::MAX, |d| store.keep_dead_letter(&d));
        let books = Self::books();
        let base = self.session.base;
        let ack = Ack {
            through_seq: seq,
            stored: books.stored - base.stored,
            dead_lettered: books.dead_lettered - base.dead_lettered,
            rejected: books.rejected - base.rejected,
            duplicates: books.duplicates - base.duplicates,
        };
        self.session.tx_seq += 1;
        if let Ok(n) = encode_ack(&mut self.tx[..], self.session.tx_seq, &ack) {
            board::send(&self.tx[..n]);
            self.counts.acks += 1;
        }
    }

    /// Dispatches every event of `frame`, waiting for room (the processors run meanwhile).
    /// Should a round free nothing at all, the rest of the frame is dispatched as from a
    /// source that cannot wait: dead-lettered with the reason, never left unaccounted.
    fn dispatch(&mut self, frame: &Frame<'_>, now: u64) {
        let mut progress = FrameProgress::new();
        let mut flow = Flow::Waits;
        loop {
            let Self {
                dispatcher,
                session,
                tx,
                counts,
                ..
            } = self;
            let step = dispatcher.dispatch_frame_flow(
                frame,
                SOURCE,
                now,
                flow,
                &mut progress,
                |index, header: &EventHeader, outcome| {
                    if let Outcome::Rejected(reason) = outcome {
                        let reject = Reject::event(frame.seq(), reason, index as u16, header.id);
                        session.tx_seq += 1;
                        if let Ok(n) = encode_reject(&mut tx[..], session.tx_seq, &reject) {
                            board::send(&tx[..n]);
                            counts.rejects += 1;
                        }
                    }
                },
            );
            if step.waiting.is_none() {
                return;
            }
            self.counts.flow_waits += 1;
            let polled = self
                .processors
                .poll(self.procs, &mut self.alerts, self.store, now, LANE);
            if !polled.did_work() && step.outcome == Default::default() {
                flow = Flow::Lossy;
            }
        }
    }

    fn send_reject(&mut self, reject: &Reject) {
        self.session.tx_seq += 1;
        if let Ok(n) = encode_reject(&mut self.tx[..], self.session.tx_seq, reject) {
            board::send(&self.tx[..n]);
            self.counts.rejects += 1;
        }
    }

    /// Answers a STATS request with a BATCH of counters (see the module docs).
    fn send_report(&mut self, at: LineCounts) {
        let now = self.clock.now();
        let books = Self::books();
        let in_flight = self.processors.in_flight(self.procs);
        let c = self.counts;
        let (stack_used, stack_size) = board::stack_usage();
        let value = |stat: Stat| -> u64 {
            match stat {
                Stat::Ingested => books.ingested,
                Stat::Stored => books.stored,
                Stat::Duplicates => books.duplicates,
                Stat::DeadLettered => books.dead_lettered,
                Stat::Rejected => books.rejected,
                Stat::InFlight => in_flight,
                Stat::RxBytes => u64::from(at.rx.bytes),
                Stat::RxPauses => u64::from(at.rx.pauses),
                Stat::LineErrors => u64::from(at.rx.line_errors),
                Stat::Discarded => at.discarded,
                Stat::Resyncs => u64::from(at.resyncs),
                Stat::FramesOk => c.frames_ok,
                Stat::FramesInvalid => c.frames_invalid,
                Stat::FlowWaits => c.flow_waits,
                Stat::Acks => c.acks,
                Stat::Rejects => c.rejects,
                Stat::Kept => self.store.records.held() as u64,
                Stat::Written => self.store.records.written(),
                Stat::Overwritten => self.store.records.overwritten(),
                Stat::DeadLetterRecords => self.store.dead.written(),
                Stat::Alerts => self.alerts.0,
                Stat::Sessions => c.sessions,
                Stat::StackUsed => stack_used as u64,
                Stat::StackSize => stack_size as u64,
            }
        };
        self.session.tx_seq += 1;
        let Ok(mut batch) = BatchEncoder::new(&mut self.tx[..], self.session.tx_seq) else {
            return;
        };
        let counter = |id: u64, count: u64| {
            EventHeader::new(id, STATS_TOPIC, Priority::Low, now).with_value(count as i64)
        };
        // `TX_FRAME` holds every counter and every reason: no push can fail.
        let mut complete = true;
        for stat in Stat::ALL {
            complete &= batch.push(&counter(stat as u64, value(stat)), &[]).is_ok();
        }
        for reason in Reason::ALL {
            let n = books.reason(reason);
            if n != 0 {
                let id = REASON_STAT + u64::from(reason.code());
                complete &= batch.push(&counter(id, n), &[]).is_ok();
            }
        }
        debug_assert!(complete, "TX_FRAME holds a whole report");
        if let Ok(n) = batch.finish() {
            board::send(&self.tx[..n]);
        }
    }
}

/// Whether `frame` is a STATS request: an EVENT whose event has topic [`STATS_TOPIC`].
fn is_stats_request(frame: &Frame<'_>) -> bool {
    is_request(frame, STATS_TOPIC)
}

/// Whether `frame` is an EVENT whose event has topic `topic`.
fn is_request(frame: &Frame<'_>, topic: u16) -> bool {
    frame.kind() == FrameKind::Event
        && frame
            .events()
            .next()
            .is_some_and(|e| e.header().topic == topic)
}
