//! COM1, the PC's 16550 UART at I/O port 0x3F8, polled, and QEMU's isa-debug-exit device.
//! Every port access of the kernel is here.
//!
//! Receive is polled: QEMU hands the UART a byte only when its 16-byte FIFO has room, so a
//! kernel busy with a frame slows the sender (QEMU stops reading the socket) and loses
//! nothing, as the firmware's masked interrupt does. On hardware a sender without flow
//! control overruns the FIFO; the line status register says so ([`Com1::overruns`]).

use core::arch::asm;

const COM1: u16 = 0x3F8;
/// Line status register: bit 0 data ready, bit 1 overrun, bit 5 transmit holding empty.
const LSR: u16 = COM1 + 5;
/// QEMU's `isa-debug-exit` device (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`).
const DEBUG_EXIT: u16 = 0xF4;

fn outb(port: u16, value: u8) {
    // SAFETY: `port` is one of COM1's registers or the debug-exit port, which the kernel owns
    // (nothing else in it touches them); an `out` has no memory effect.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as in `outb`; reading COM1's data register pops its FIFO, which is intended.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// COM1, set up for 115 200 baud 8N1 with FIFOs.
pub struct Com1 {
    overruns: u32,
}

impl Com1 {
    /// Sets the UART up (interrupts off: the kernel polls).
    pub fn init() -> Self {
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x80);
        outb(COM1, 0x01);
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x03);
        outb(COM1 + 2, 0xC7);
        outb(COM1 + 4, 0x0B);
        Self { overruns: 0 }
    }

    /// Reads what the FIFO holds into `out`; returns how many bytes.
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let status = inb(LSR);
            if status & 0x02 != 0 {
                self.overruns = self.overruns.wrapping_add(1);
            }
            if status & 0x01 == 0 {
                break;
            }
            out[n] = inb(COM1);
            n += 1;
        }
        n
    }

    /// Writes `bytes`, waiting for room in the transmitter.
    pub fn send(&mut self, bytes: &[u8]) {
        for &b in bytes {
            while inb(LSR) & 0x20 == 0 {}
            outb(COM1, b);
        }
    }

    /// Times the line status said bytes were lost (overrun).
    pub fn overruns(&self) -> u32 {
        self.overruns
    }
}

/// Ends QEMU with exit status `(code << 1) | 1`: 33 for [`PASS`], 35 for [`FAIL`].
pub fn exit(code: u8) -> ! {
    outb(DEBUG_EXIT, code);
    loop {
        // SAFETY: `hlt` only waits for an interrupt (none are enabled: it stops here).
        unsafe { asm!("hlt", options(nomem, nostack)) };
    }
}

/// The verdict "every check held".
pub const PASS: u8 = 0x10;
/// The verdict "a check failed" (or a panic).
pub const FAIL: u8 = 0x11;
