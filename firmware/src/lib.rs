//! pinstream-core as a bare-metal application on the LM3S6965 (Cortex-M3; QEMU's
//! `lm3s6965evb`): events arrive on UART0, interrupt-driven, go through the whole pipeline
//! with every structure in a `static` and no heap, and are acknowledged on the same line.
//!
//! | module | what |
//! | --- | --- |
//! | [`app`] | the application: the main loop, the line's protocol, the STATS report |
//! | [`line`] | frames out of the serial line: the core's stream decoder plus resynchronisation |
//! | [`store`] | the sink: records kept in a fixed RAM ring |
//! | [`board`] | UART0, its receive interrupt, SysTick, the vector table (all the `unsafe`) |
//! | `selfcheck` | with the `semihosting` feature: the built-in scenario of the `pipeline` test |
//!
//! Features (see `Cargo.toml`): `semihosting` (the self-check, text logs, and a panic that
//! prints and exits QEMU with status 1), `defmt` (logs as defmt frames over semihosting).
//! Without either, the firmware writes only to UART0 and a panic resets the chip.
#![no_std]

// The defmt logger (defmt frames over semihosting), for every binary of the crate.
#[cfg(feature = "defmt")]
use defmt_semihosting as _;

pub mod app;
pub mod board;
pub mod line;
#[cfg(feature = "semihosting")]
pub mod selfcheck;
pub mod store;

/// Prints a line over semihosting: text, or a defmt frame with the `defmt` feature (text and
/// defmt frames cannot share the output stream). For the self-check, which needs semihosting.
#[cfg(feature = "semihosting")]
#[macro_export]
macro_rules! say {
    ($fmt:literal $(, $arg:expr)*) => {{
        #[cfg(not(feature = "defmt"))]
        cortex_m_semihosting::hprintln!($fmt $(, $arg)*);
        #[cfg(feature = "defmt")]
        defmt::println!($fmt $(, defmt::Display2Format(&$arg))*);
    }};
}

/// The application's log: a defmt frame with the `defmt` feature, a text line over
/// semihosting with `semihosting` alone, nothing otherwise (the arguments are still
/// type-checked). Rare events only: the line's bandwidth is the events'.
#[macro_export]
macro_rules! log {
    ($fmt:literal $(, $arg:expr)*) => {{
        #[cfg(feature = "defmt")]
        defmt::info!($fmt $(, $arg)*);
        #[cfg(all(feature = "semihosting", not(feature = "defmt")))]
        cortex_m_semihosting::hprintln!($fmt $(, $arg)*);
        #[cfg(not(any(feature = "semihosting", feature = "defmt")))]
        {
            $(let _ = &$arg;)*
        }
    }};
}

/// With `semihosting`: prints the panic and exits QEMU with status 1 (a test fails at once
/// instead of hanging).
#[cfg(feature = "semihosting")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    say!("pinstream firmware: panic: {}", info);
    cortex_m_semihosting::debug::exit(cortex_m_semihosting::debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}

/// Without `semihosting` (the build for a board): a panic resets the chip, which boots the
/// application afresh; with `defmt` it logs the panic first. A halt would leave the device
/// silent until someone power-cycles it; semihosting would stop a board with no debugger.
#[cfg(not(feature = "semihosting"))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    #[cfg(feature = "defmt")]
    defmt::error!("panic: {}", defmt::Display2Format(info));
    let _ = info;
    cortex_m::peripheral::SCB::sys_reset()
}
