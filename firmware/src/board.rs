//! The board: UART0 (a PL011 as QEMU's `lm3s6965evb` and the LM3S6965 have it), its receive
//! interrupt, SysTick as the tick source, and the device part of the vector table. Every
//! register access and every `unsafe` of the firmware lives here.
//!
//! | what | where | use |
//! | --- | --- | --- |
//! | UART0 | `0x4000_C000`, IRQ 5 | 8N1, FIFOs on; receive by interrupt, transmit polled |
//! | SysTick | core | 1 kHz at a 12 MHz core clock: the pipeline's `now`, in ms |
//!
//! **Receive.** The interrupt moves bytes from the UART's 16-byte FIFO into [`RX_RING`], an
//! [`Spsc`] the main loop consumes. When the ring is full the handler masks the receive
//! interrupt and leaves the bytes in the FIFO ([`RxStats::pauses`] counts it); the main loop
//! unmasks it once it has made room ([`RxSide::resume_if_paused`]). Under QEMU a full FIFO
//! stops QEMU reading the socket, so the sender is slowed and nothing is lost. On a board, a
//! sender without flow control (no RTS/CTS) overruns the FIFO instead: the UART flags the
//! byte after the gap, and [`RxStats::line_errors`] counts it (the decoder then sees a bad
//! CRC or loses the framing, and says so in a REJECT).

use core::cell::RefCell;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use cortex_m::interrupt::{self, Mutex};
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::{NVIC, SYST};
use cortex_m_rt::exception;
use pinstream_core::ring::Spsc;
use pinstream_core::ring::spsc::{Consumer, Producer};

/// Bytes the receive ring holds between the interrupt and the main loop.
pub const RX_RING: usize = 256;

/// The receive ring: the interrupt produces, the main loop consumes.
static RX: Spsc<u8, RX_RING> = Spsc::new();
/// The producer half, handed to the interrupt once by [`init`].
static RX_PRODUCER: Mutex<RefCell<Option<Producer<'static, u8, RX_RING>>>> =
    Mutex::new(RefCell::new(None));

/// Counters the interrupt handlers write (each has one writer: a load and a store, no
/// read-modify-write, so thumbv6m builds too) and the main loop reads.
static RX_BYTES: AtomicU32 = AtomicU32::new(0);
static RX_PAUSES: AtomicU32 = AtomicU32::new(0);
static RX_LINE_ERRORS: AtomicU32 = AtomicU32::new(0);
/// Set by the interrupt when it masked itself (ring full); cleared by the main loop.
static RX_PAUSED: AtomicBool = AtomicBool::new(false);
static TICKS: AtomicU32 = AtomicU32::new(0);

/// UART0's registers (PL011 layout; the LM3S6965 datasheet names them `UARTDR` …).
mod reg {
    pub const BASE: usize = 0x4000_C000;
    /// Data: bits 0–7 the byte, 8–11 its errors (framing, parity, break, overrun).
    pub const DR: usize = BASE;
    /// Receive status / error clear (a write clears the errors).
    pub const ECR: usize = BASE + 0x004;
    /// Flags.
    pub const FR: usize = BASE + 0x018;
    pub const IBRD: usize = BASE + 0x024;
    pub const FBRD: usize = BASE + 0x028;
    /// Line control.
    pub const LCRH: usize = BASE + 0x02C;
    /// Control.
    pub const CR: usize = BASE + 0x030;
    /// Interrupt mask (1 = enabled).
    pub const IMSC: usize = BASE + 0x038;
    /// Interrupt clear.
    pub const ICR: usize = BASE + 0x044;

    pub const FR_RXFE: u32 = 1 << 4;
    pub const FR_TXFF: u32 = 1 << 5;
    pub const DR_ERRORS: u32 = 0xF00;
    pub const LCRH_FEN: u32 = 1 << 4;
    pub const LCRH_WLEN8: u32 = 0b11 << 5;
    pub const CR_UARTEN: u32 = 1 << 0;
    pub const CR_TXE: u32 = 1 << 8;
    pub const CR_RXE: u32 = 1 << 9;
    /// Receive (FIFO level) and receive-timeout interrupts.
    pub const IM_RX: u32 = (1 << 4) | (1 << 6);
}

fn read(addr: usize) -> u32 {
    // SAFETY: `addr` is one of UART0's registers (`reg`), a valid, aligned MMIO address on
    // this chip; reading it has no effect beyond the UART's own (popping DR is intended).
    unsafe { read_volatile(addr as *const u32) }
}

fn write(addr: usize, value: u32) {
    // SAFETY: as in `read`; the values written are the ones the PL011 documents.
    unsafe { write_volatile(addr as *mut u32, value) }
}

/// UART0's interrupt number on the LM3S6965 (and in QEMU's model of it).
#[derive(Clone, Copy)]
struct Uart0Irq;

// SAFETY: 5 is UART0's position in the LM3S6965's vector table, below the NVIC's limit.
unsafe impl cortex_m::interrupt::InterruptNumber for Uart0Irq {
    fn number(self) -> u16 {
        5
    }
}

/// The main loop's side of the receive path.
pub struct RxSide {
    consumer: Consumer<'static, u8, RX_RING>,
}

/// What the interrupt counted.
#[derive(Clone, Copy, Debug, Default)]
pub struct RxStats {
    /// Bytes moved from the UART into the ring.
    pub bytes: u32,
    /// Times the ring was full and the interrupt masked itself (back-pressure).
    pub pauses: u32,
    /// Bytes the UART flagged (overrun, framing, parity, break).
    pub line_errors: u32,
}

/// Sets up UART0 (115 200 baud 8N1 at 12 MHz, FIFOs on, receive interrupt) and SysTick
/// (1 kHz), and hands the receive ring's consumer to the caller. `None` on a second call.
pub fn init(syst: &mut SYST) -> Option<RxSide> {
    let (producer, consumer) = RX.try_split()?;
    interrupt::free(|cs| RX_PRODUCER.borrow(cs).replace(Some(producer)));
    write(reg::CR, 0);
    // 12 MHz / (16 × 115 200) = 6.51: integer 6, fraction 0.51 × 64 ≈ 33 (QEMU ignores it).
    write(reg::IBRD, 6);
    write(reg::FBRD, 33);
    write(reg::LCRH, reg::LCRH_WLEN8 | reg::LCRH_FEN);
    write(reg::ICR, 0x7FF);
    write(reg::IMSC, reg::IM_RX);
    write(reg::CR, reg::CR_UARTEN | reg::CR_TXE | reg::CR_RXE);

    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(12_000 - 1);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
    // SAFETY: the handler's state (the producer) is in place above; unmasking an interrupt
    // cannot break a critical section here (none is running: this is the main thread).
    unsafe { NVIC::unmask(Uart0Irq) };
    Some(RxSide { consumer })
}

impl RxSide {
    /// Pops up to `out.len()` received bytes; returns how many.
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        self.consumer.pop_slice(out)
    }

    /// Unmasks the receive interrupt if it masked itself and the ring has room again (a
    /// FIFO's worth at least).
    pub fn resume_if_paused(&mut self) {
        if RX_PAUSED.load(Ordering::Acquire) && RX_RING - self.consumer.len() >= 16 {
            RX_PAUSED.store(false, Ordering::Release);
            // The interrupt is masked while paused, so this read-modify-write races nothing.
            interrupt::free(|_| write(reg::IMSC, reg::IM_RX));
        }
    }

    /// Sleeps until an interrupt when no byte waits (checked with interrupts off, so a byte
    /// arriving in between wakes the `wfi` instead of being slept over).
    pub fn wait_for_input(&mut self) {
        interrupt::free(|_| {
            if self.consumer.is_empty() {
                cortex_m::asm::wfi();
            }
        });
    }

    /// What the interrupt counted so far.
    pub fn stats(&self) -> RxStats {
        RxStats {
            bytes: RX_BYTES.load(Ordering::Relaxed),
            pauses: RX_PAUSES.load(Ordering::Relaxed),
            line_errors: RX_LINE_ERRORS.load(Ordering::Relaxed),
        }
    }
}

/// Writes `bytes` to UART0, waiting while its transmit FIFO is full.
pub fn send(bytes: &[u8]) {
    for &b in bytes {
        while read(reg::FR) & reg::FR_TXFF != 0 {}
        write(reg::DR, u32::from(b));
    }
}

/// Milliseconds since [`init`] (wraps after 49 days; [`Clock`] widens it).
fn ticks() -> u32 {
    TICKS.load(Ordering::Relaxed)
}

/// The pipeline's `now`: SysTick's milliseconds, widened to 64 bits.
#[derive(Default)]
pub struct Clock {
    last: u32,
    high: u64,
}

impl Clock {
    /// Milliseconds since boot, never going backwards.
    pub fn now(&mut self) -> u64 {
        let t = ticks();
        if t < self.last {
            self.high += 1 << 32;
        }
        self.last = t;
        self.high | u64::from(t)
    }
}

/// UART0's interrupt: drains the FIFO into the ring, or masks itself when the ring is full.
/// A safe function: the vector table stores it as `unsafe extern "C" fn()` only because
/// that is the entry type.
extern "C" fn uart0() {
    interrupt::free(|cs| {
        let mut producer = RX_PRODUCER.borrow(cs).borrow_mut();
        let Some(producer) = producer.as_mut() else {
            write(reg::IMSC, 0);
            return;
        };
        let (mut bytes, mut errors) = (0u32, 0u32);
        while read(reg::FR) & reg::FR_RXFE == 0 {
            if producer.is_full() {
                write(reg::IMSC, 0);
                RX_PAUSED.store(true, Ordering::Release);
                let pauses = RX_PAUSES.load(Ordering::Relaxed);
                RX_PAUSES.store(pauses.wrapping_add(1), Ordering::Relaxed);
                break;
            }
            let dr = read(reg::DR);
            if dr & reg::DR_ERRORS != 0 {
                errors += 1;
                write(reg::ECR, 0);
            }
            // Cannot fail: the ring was not full just above and only this handler pushes.
            let _ = producer.push(dr as u8);
            bytes += 1;
        }
        let total = RX_BYTES.load(Ordering::Relaxed);
        RX_BYTES.store(total.wrapping_add(bytes), Ordering::Relaxed);
        if errors != 0 {
            let total = RX_LINE_ERRORS.load(Ordering::Relaxed);
            RX_LINE_ERRORS.store(total.wrapping_add(errors), Ordering::Relaxed);
        }
    });
}

#[exception]
fn SysTick() {
    TICKS.store(ticks().wrapping_add(1), Ordering::Relaxed);
}

/// The stack's deepest use since reset and its size, in bytes: cortex-m-rt (`paint-stack`)
/// fills the stack with the pattern `0xCCCC_CCCC` before
/// `main`; the lowest word that no longer holds it is as deep as the stack went. A use equal
/// to the size means the stack may have run into the statics below it.
pub fn stack_usage() -> (usize, usize) {
    unsafe extern "C" {
        /// The stack's lowest address (cortex-m-rt's `link.x`: the end of the statics).
        static _stack_end: u32;
        /// The stack's top (the end of RAM).
        static _stack_start: u32;
    }
    let end = (&raw const _stack_end) as usize;
    let top = (&raw const _stack_start) as usize;
    let mut p = end;
    while p < top {
        // SAFETY: `end..top` is the stack's RAM (the linker's symbols), word-aligned
        // (cortex-m-rt asserts it), readable at any time; below the stack pointer it holds
        // no live data, and reading it does not disturb what is above.
        let word = unsafe { read_volatile(p as *const u32) };
        if word != 0xCCCC_CCCC {
            break;
        }
        p += 4;
    }
    (top - p, top - end)
}

/// One entry of the device part of the vector table.
#[repr(C)]
pub union Vector {
    handler: unsafe extern "C" fn(),
    reserved: usize,
}

unsafe extern "C" {
    /// cortex-m-rt's default handler (an infinite loop, or the `DefaultHandler` an
    /// application defines).
    fn DefaultHandler();
}

/// Interrupt vectors in the table: the LM3S6965 has 43. ARMv6-M allows at most 32, and the
/// thumbv6m build (the no-CAS route, for a Cortex-M0 port; thumbv6m is the target without
/// compare-and-swap) keeps those.
const IRQS: usize = if cfg!(target_has_atomic = "32") {
    43
} else {
    32
};

/// The chip's interrupt vectors (cortex-m-rt's `device` feature: the chip's part of the
/// table comes from here, as it would from a PAC). Only UART0 (5) has a handler.
// SAFETY: `no_mangle` and `link_section` put the table where cortex-m-rt's `link.x` expects
// `__INTERRUPTS` (right after the exceptions); no other symbol of that name is linked (the
// `device` feature turns off cortex-m-rt's own), and every entry is a handler or 0.
#[unsafe(link_section = ".vector_table.interrupts")]
#[unsafe(no_mangle)]
pub static __INTERRUPTS: [Vector; IRQS] = {
    let mut table = [Vector {
        handler: DefaultHandler,
    }; IRQS];
    table[5] = Vector { handler: uart0 };
    table
};

impl Clone for Vector {
    fn clone(&self) -> Self {
        *self
    }
}

impl Copy for Vector {}
