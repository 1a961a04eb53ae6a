//! `cargo test --release --features panic-probe`: the application with a panic that can be
//! asked for over the line. The runner (`qemu-run.sh`) hands it to `host-test/`'s `reset`
//! test, which checks that a panic resets the chip (it boots and says HELLO again) rather
//! than halting it.
#![no_std]
#![no_main]

use cortex_m_rt::entry;

#[entry]
fn main() -> ! {
    pinstream_firmware::app::run()
}
