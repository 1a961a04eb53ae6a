//! `cargo run --release`: the pipeline scenario under QEMU (see the library's docs). QEMU's
//! exit status is the firmware's: 0 when every check held, 1 on a mismatch or a panic.
#![no_std]
#![no_main]

#[cfg(feature = "alloc-probe")]
extern crate alloc;

// The defmt logger (semihosting), linked in only with the `defmt` feature.
#[cfg(feature = "defmt")]
use defmt_semihosting as _;

use cortex_m_rt::entry;

#[entry]
fn main() -> ! {
    // A check that must fail to build: with `alloc-probe`, the firmware asks for a heap it
    // does not have, and linking fails for want of a global allocator.
    #[cfg(feature = "alloc-probe")]
    core::hint::black_box(alloc::vec![1u8, 2, 3]);
    pinstream_firmware::run_and_exit()
}
