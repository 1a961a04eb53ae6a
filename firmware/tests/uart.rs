//! `cargo test --release`: the application as a test binary. It is firmware: the runner
//! (`qemu-run.sh`) boots it in QEMU with UART0 on a socket and `host-test/` drives it over
//! the line (frames, garbage, a corrupted frame, an overload burst) and checks every answer
//! and the device's counts.
#![no_std]
#![no_main]

use cortex_m_rt::entry;

#[entry]
fn main() -> ! {
    pinstream_firmware::app::run()
}
