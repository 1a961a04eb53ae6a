//! `cargo test --release`: the same scenario as `cargo run`, as a `harness = false` test. The
//! test binary is firmware too: the runner boots it in QEMU and its exit status is the
//! verdict.
#![no_std]
#![no_main]

use cortex_m_rt::entry;

#[entry]
fn main() -> ! {
    pinstream_firmware::run_and_exit()
}
