//! pinstream-core in a minimal x86_64 kernel: booted by QEMU (`-kernel`, PVH entry,
//! [`boot`]), fed over TCP (`virtio`, `net`: a virtio-net device and smoltcp) or, without a
//! network device, over COM1 ([`serial`]) with the firmware's line protocol
//! (`firmware/README.md`, "The line's protocol"), every structure a `static`, no heap.
//!
//! The framing with resynchronisation and the RAM-ring sink are the firmware's own source
//! files (`firmware/src/line.rs`, `firmware/src/store.rs`): they need only the core. On top
//! of the firmware's frames, an EVENT of topic [`EXIT_TOPIC`] asks the kernel to check its
//! books and end QEMU through `isa-debug-exit`: status 33 when
//! `ingested == stored + duplicates + dead-lettered + rejected` with nothing in flight, 35
//! otherwise (and on a panic).
//!
//! The kernel is this library; `src/main.rs` (`cargo run`) and `tests/serial.rs`
//! (`cargo test`) are the same kernel linked as a binary, which the runner (`qemu-run.sh`)
//! hands to `host-test/`.
#![no_std]

mod boot;
mod serial;
mod virtio;

#[allow(dead_code)]
#[path = "../../firmware/src/line.rs"]
mod line;
#[allow(dead_code)]
#[path = "../../firmware/src/store.rs"]
mod store;

use pinstream_core::accounting::{Accounting, StageCounters};
use pinstream_core::arena::ArenaRegion;
use pinstream_core::control::ControlSignal;
use pinstream_core::dispatch::{Dispatcher, Flow, FrameProgress, Outcome, Unlimited};
use pinstream_core::event::{EventHeader, Priority};
use pinstream_core::lanes::{DeadLetters, Lanes};
use pinstream_core::process::realtime::CountAlerts;
use pinstream_core::process::{LaneProcessors, Processors, RetryPolicy};
use pinstream_core::reason::Reason;
use pinstream_core::wire::{
    self, Ack, BatchEncoder, Frame, FrameError, FrameKind, Hello, Reject, encode_ack, encode_hello,
    encode_reject,
};
use static_cell::{ConstStaticCell, StaticCell};

use crate::line::{Line, loses_framing};
use crate::serial::Com1;
use crate::store::RecordRing;

const PAYLOAD: usize = 32;
const POOL: usize = 64;
const LANE: usize = 16;
const DEAD: usize = 16;
const ARENA: usize = 512;
const MAX_FRAME: usize = 768;
const TOPICS: usize = 4;
const SOURCE: u32 = 1;
/// An EVENT of this topic asks for the counters (the firmware's STATS request).
pub const STATS_TOPIC: u16 = u16::MAX;
/// An EVENT of this topic asks the kernel to check its books and end QEMU with the verdict.
pub const EXIT_TOPIC: u16 = u16::MAX - 1;
/// In a STATS report, a reason's count has id `REASON_STAT + code`.
const REASON_STAT: u64 = 0x100;
/// Counters in a STATS report (ids as the firmware's `app::Stat`, where they exist there).
const STATS: usize = 14;
const TX_FRAME: usize = wire::HEADER_LEN
    + wire::BATCH_PREFIX_LEN
    + (STATS + Reason::COUNT) * wire::EVENT_RECORD_LEN
    + wire::TRAILER_LEN;

type Procs = LaneProcessors<2, 128, 4>;

static LANES: Lanes<PAYLOAD, POOL, LANE, DEAD> = Lanes::new();
static ARENA_REGION: ArenaRegion<ARENA> = ArenaRegion::new();
static DISPATCH_COUNTERS: StageCounters = StageCounters::new();
static PROCESS_COUNTERS: StageCounters = StageCounters::new();
static SIGNAL: ControlSignal = ControlSignal::new();
static ADMIT_ALL: Unlimited = Unlimited;
static PROCS: ConstStaticCell<Procs> = ConstStaticCell::new(Procs::new(60_000, 1_000));
static LINE: ConstStaticCell<Line<MAX_FRAME>> = ConstStaticCell::new(Line::new());
static STORE: ConstStaticCell<RecordRing> = ConstStaticCell::new(RecordRing::new());
static TX: ConstStaticCell<[u8; TX_FRAME]> = ConstStaticCell::new([0; TX_FRAME]);
static KERNEL: StaticCell<Kernel> = StaticCell::new();

mod net;

/// Everything a frame needs.
struct Kernel {
    /// Frames to send, written out by the transport after each chunk of input.
    out: Out,
    /// Bytes received, and UART overruns (serial only).
    received: u64,
    line_errors: u64,
    dispatcher: Dispatcher<'static, PAYLOAD, POOL, LANE, DEAD>,
    processors: Processors<'static, PAYLOAD, POOL, LANE, DEAD, 1>,
    procs: &'static mut Procs,
    dead_letters: DeadLetters<'static, DEAD>,
    store: &'static mut RecordRing,
    alerts: CountAlerts,
    tx: &'static mut [u8; TX_FRAME],
    /// The seq of the last data frame taken, the seq of the kernel's last frame, and the
    /// books when the session began.
    last_seq: u64,
    tx_seq: u64,
    base: Accounting,
    /// Ticks: frames taken (the kernel reads no clock).
    now: u64,
    frames_ok: u64,
    frames_invalid: u64,
    flow_waits: u64,
    acks: u64,
    rejects: u64,
}

/// Called by the boot code in long mode, on the boot stack: serves the network if QEMU gave
/// the kernel a virtio-net device, else COM1.
#[unsafe(no_mangle)]
pub extern "C" fn kernel_main() -> ! {
    let (Some(kernel), Some(line)) = (KERNEL.try_uninit().map(Kernel::init), LINE.try_take())
    else {
        serial::exit(serial::FAIL);
    };
    let com1 = Com1::init();
    match virtio::VirtioNet::init() {
        Some(dev) => net::serve(kernel, line, dev),
        None => serve_serial(kernel, line, com1),
    }
}

/// COM1: the boot HELLO, then bytes in, answers out.
fn serve_serial(kernel: &mut Kernel, line: &mut Line<MAX_FRAME>, mut com1: Com1) -> ! {
    kernel.send_hello();
    com1.send(kernel.out.take());
    let mut chunk = [0u8; 64];
    loop {
        let n = com1.read(&mut chunk);
        kernel.line_errors = u64::from(com1.overruns());
        kernel.take_bytes(line, &chunk[..n]);
        com1.send(kernel.out.take());
        if n == 0 {
            core::hint::spin_loop();
        }
    }
}

/// Answers waiting to be written out.
struct Out {
    buf: [u8; 8192],
    len: usize,
}

impl Out {
    const fn new() -> Self {
        Self {
            buf: [0; 8192],
            len: 0,
        }
    }

    /// Appends a frame. The transport empties the buffer after every chunk of input, and a
    /// chunk (at most 64 bytes) completes at most a few frames, each answered by at most an
    /// ACK and one REJECT per event: far below 8 KiB.
    fn push(&mut self, frame: &[u8]) {
        let end = self.len + frame.len();
        assert!(
            end <= self.buf.len(),
            "the answers of one chunk fit the buffer"
        );
        self.buf[self.len..end].copy_from_slice(frame);
        self.len = end;
    }

    /// Everything queued, emptied.
    fn take(&mut self) -> &[u8] {
        let len = core::mem::take(&mut self.len);
        &self.buf[..len]
    }
}

impl Kernel {
    /// Builds the kernel in its static (the dispatcher is 7.7 KB: not on the stack twice).
    #[inline(never)]
    fn init(slot: &'static mut core::mem::MaybeUninit<Self>) -> &'static mut Self {
        slot.write(Self::new())
    }

    #[inline(always)]
    fn new() -> Self {
        let taken = "the kernel's statics are taken once, by kernel_main";
        let arena = ARENA_REGION.take().expect(taken);
        let (input, output, dead_letters) = LANES.try_split_with_arena(arena).expect(taken);
        let policy = RetryPolicy {
            max_attempts: 1,
            backoff: 1,
            max_backoff: 1,
        };
        Self {
            out: Out::new(),
            received: 0,
            line_errors: 0,
            dispatcher: Dispatcher::new(input, &ADMIT_ALL, &SIGNAL, TOPICS, &DISPATCH_COUNTERS),
            processors: Processors::new(output, policy, &PROCESS_COUNTERS),
            procs: PROCS.try_take().expect(taken),
            dead_letters,
            store: STORE.try_take().expect(taken),
            alerts: CountAlerts::default(),
            tx: TX.try_take().expect(taken),
            last_seq: 0,
            tx_seq: 0,
            base: Accounting::default(),
            now: 0,
            frames_ok: 0,
            frames_invalid: 0,
            flow_waits: 0,
            acks: 0,
            rejects: 0,
        }
    }

    /// Feeds received bytes to the line; answers go to `out`.
    fn take_bytes(&mut self, line: &mut Line<MAX_FRAME>, bytes: &[u8]) {
        self.received += bytes.len() as u64;
        for &byte in bytes {
            line.push(byte, &mut |result, discarded, resyncs| {
                self.on_frame(result, discarded, resyncs);
            });
        }
    }

    fn books() -> Accounting {
        Accounting::of(&[&DISPATCH_COUNTERS, &PROCESS_COUNTERS])
    }

    fn send_hello(&mut self) {
        self.tx_seq += 1;
        let hello = Hello::reply(1, MAX_FRAME as u32, SOURCE);
        if let Ok(n) = encode_hello(&mut self.tx[..], self.tx_seq, &hello) {
            self.out.push(&self.tx[..n]);
        }
    }

    fn send_reject(&mut self, reject: &Reject) {
        self.tx_seq += 1;
        if let Ok(n) = encode_reject(&mut self.tx[..], self.tx_seq, reject) {
            self.out.push(&self.tx[..n]);
            self.rejects += 1;
        }
    }

    fn on_frame(&mut self, result: Result<Frame<'_>, FrameError>, discarded: u64, resyncs: u32) {
        let frame = match result {
            Ok(frame) => frame,
            Err(error) => {
                self.frames_invalid += u64::from(!loses_framing(error.error));
                self.dispatcher.reject_frame(error.error);
                self.send_reject(&error.to_reject());
                return;
            }
        };
        self.frames_ok += 1;
        let seq = frame.seq();
        match frame.kind() {
            FrameKind::Hello => match frame.hello().and_then(|h| h.negotiate(1, 1)) {
                Some(_) => {
                    self.last_seq = 0;
                    self.tx_seq = 0;
                    self.base = Self::books();
                    self.send_hello();
                }
                None => {
                    self.dispatcher.reject_unit(Reason::UnsupportedVersion);
                    self.send_reject(&Reject::frame(seq, Reason::UnsupportedVersion));
                }
            },
            FrameKind::Event | FrameKind::Batch if seq > self.last_seq => {
                self.last_seq = seq;
                match request_topic(&frame) {
                    Some(STATS_TOPIC) => self.send_report(discarded, resyncs),
                    Some(EXIT_TOPIC) => self.exit_with_verdict(),
                    _ => self.data(&frame),
                }
            }
            FrameKind::Event | FrameKind::Batch => {
                self.dispatcher.reject_unit(Reason::SeqNotIncreasing);
                self.send_reject(&Reject::frame(seq, Reason::SeqNotIncreasing));
            }
            _ => {
                self.dispatcher.reject_unit(Reason::UnexpectedKind);
                self.send_reject(&Reject::frame(seq, Reason::UnexpectedKind));
            }
        }
    }

    /// Dispatches the frame's events (waiting for lane room while the processors run),
    /// drains the processors and the dead letters, and acknowledges the frame.
    fn data(&mut self, frame: &Frame<'_>) {
        self.now += 1;
        let now = self.now;
        let mut progress = FrameProgress::new();
        let mut flow = Flow::Waits;
        loop {
            let Self {
                dispatcher,
                out,
                tx,
                tx_seq,
                rejects,
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
                        *tx_seq += 1;
                        if let Ok(n) = encode_reject(&mut tx[..], *tx_seq, &reject) {
                            out.push(&tx[..n]);
                            *rejects += 1;
                        }
                    }
                },
            );
            if step.waiting.is_none() {
                break;
            }
            self.flow_waits += 1;
            let polled = self
                .processors
                .poll(self.procs, &mut self.alerts, self.store, now, LANE);
            // Nothing freed and nothing taken: the rest cannot wait, it is dead-lettered
            // with its reason (never left unaccounted).
            if !polled.did_work() && step.outcome == Default::default() {
                flow = Flow::Lossy;
            }
        }
        self.processors
            .drain(self.procs, &mut self.alerts, self.store, now);
        let store = &mut *self.store;
        self.dead_letters
            .drain(usize::MAX, |d| store.keep_dead_letter(&d));
        let (books, base) = (Self::books(), self.base);
        let ack = Ack {
            through_seq: frame.seq(),
            stored: books.stored - base.stored,
            dead_lettered: books.dead_lettered - base.dead_lettered,
            rejected: books.rejected - base.rejected,
            duplicates: books.duplicates - base.duplicates,
        };
        self.tx_seq += 1;
        if let Ok(n) = encode_ack(&mut self.tx[..], self.tx_seq, &ack) {
            self.out.push(&self.tx[..n]);
            self.acks += 1;
        }
    }

    /// The firmware's STATS report, with the counters the kernel has (same ids).
    fn send_report(&mut self, discarded: u64, resyncs: u32) {
        let books = Self::books();
        let in_flight = self.processors.in_flight(self.procs);
        let counters: [(u64, u64); STATS] = [
            (0, books.ingested),
            (1, books.stored),
            (2, books.duplicates),
            (3, books.dead_lettered),
            (4, books.rejected),
            (5, in_flight),
            (6, self.received),
            (8, self.line_errors),
            (9, discarded),
            (10, u64::from(resyncs)),
            (11, self.frames_ok),
            (12, self.frames_invalid),
            (13, self.flow_waits),
            (17, self.store.records.written()),
        ];
        self.tx_seq += 1;
        let Ok(mut batch) = BatchEncoder::new(&mut self.tx[..], self.tx_seq) else {
            return;
        };
        let counter = |id: u64, count: u64| {
            EventHeader::new(id, STATS_TOPIC, Priority::Low, 0).with_value(count as i64)
        };
        // `TX_FRAME` holds every counter and every reason: no push can fail.
        let mut complete = true;
        for (id, count) in counters {
            complete &= batch.push(&counter(id, count), &[]).is_ok();
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
            self.out.push(&self.tx[..n]);
        }
    }

    /// Ends QEMU: PASS when the books balance with nothing in flight.
    fn exit_with_verdict(&mut self) -> ! {
        let books = Self::books();
        let in_flight = self.processors.in_flight(self.procs);
        let balanced = in_flight == 0 && books.check(0).is_ok();
        serial::exit(if balanced { serial::PASS } else { serial::FAIL })
    }
}

/// The topic of an EVENT frame's event when it is a request (stats, exit), else `None`.
fn request_topic(frame: &Frame<'_>) -> Option<u16> {
    if frame.kind() != FrameKind::Event {
        return None;
    }
    let topic = frame.events().next()?.header().topic;
    (topic == STATS_TOPIC || topic == EXIT_TOPIC).then_some(topic)
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    serial::exit(serial::FAIL)
}
