//! The application (see the library's docs): serves UART0 forever. `cargo run --release`
//! boots it under QEMU and drives it from the host (`qemu-run.sh`, `host-test/`).
#![no_std]
#![no_main]

#[cfg(feature = "alloc-probe")]
extern crate alloc;

use cortex_m_rt::entry;

#[entry]
fn main() -> ! {
    // A check that must fail to build: with `alloc-probe`, the firmware asks for a heap it
    // does not have, and linking fails for want of a global allocator.
    #[cfg(feature = "alloc-probe")]
    core::hint::black_box(alloc::vec![1u8, 2, 3]);
    pinstream_firmware::app::run()
}
