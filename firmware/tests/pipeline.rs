//! `cargo test --release --features semihosting`: the built-in self-check (the library's
//! `selfcheck`), as a `harness = false` test. The test binary is firmware: the runner boots
//! it in QEMU and its exit status (through semihosting) is the verdict.
#![no_std]
#![no_main]

use cortex_m_rt::entry;

#[entry]
fn main() -> ! {
    pinstream_firmware::selfcheck::run_and_exit()
}
