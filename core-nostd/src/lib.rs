//! # pinstream-core
//!
//! The zero-heap heart of pinstream: `#![no_std]`, no `alloc`, every capacity a const
//! generic, every structure constructible in a `static`. It builds for bare-metal targets
//! (Cortex-M, RISC-V, `x86_64-unknown-none`) and runs unchanged inside firmware and inside the
//! std host.
//!
//! The primitives:
//!
//! | type | what | needs |
//! | --- | --- | --- |
//! | [`ring::Spsc`] | wait-free single-producer/single-consumer ring | atomic load/store only |
//! | [`ring::Mpsc`] | bounded multi-producer/single-consumer ring (Vyukov) | CAS |
//! | [`pool::EventPool`] | fixed pool of slots, tagged lock-free free list | CAS |
//! | [`arena::ArenaState`] | payload arena over a caller's byte region: one allocator, one out-of-order releaser | CAS |
//! | [`dedup::DedupTable`] | fixed set of `u64` keys with a time window | 128-bit CAS or fallback |
//!
//! The pipeline built on them (all of it needs CAS, see below):
//!
//! | module | what |
//! | --- | --- |
//! | [`event`], [`topic`] | the event model: header, payload inline in a pool slot or in the payload [`arena`]; named topics |
//! | [`wire`] | the binary frame protocol (`docs/PROTOCOL.md`): zero-copy decode, encode, streaming decoder, CRC32C |
//! | [`reason`] | why an event was rejected or dead-lettered: one registry of codes |
//! | [`ratelimit`] | lock-free token buckets per source |
//! | [`lanes`] | the pool, the realtime / transactional / batch lanes and the dead-letter ring |
//! | [`dispatch`] | routes events into the lanes, or dead-letters / rejects them with a reason |
//! | [`process`] | alert rules, deduplication with bounded retry, windowed aggregation, the [`process::Sink`] trait |
//! | [`control`] | the control plane: five load levels with warm-up and hysteresis |
//! | [`metrics`], [`accounting`] | counters, a log-linear histogram, and the invariant `ingested == stored + dead_lettered + rejected` |
//!
//! ## Targets without compare-and-swap
//! Atomics come from [`portable_atomic`]. On targets whose CPU has no CAS (`thumbv6m-none-eabi`,
//! `riscv32i`), only [`ring::Spsc`], [`event`], [`topic`], [`wire`], [`reason`] and [`control`]
//! are built by default (they need loads and stores alone). The
//! final binary turns on the CAS-based structures with one of this crate's features:
//! `critical-section` (the binary provides a `critical-section` implementation, e.g.
//! `cortex-m/critical-section-single-core`) or `unsafe-assume-single-core` (single-core chips;
//! portable-atomic disables interrupts around each CAS). The same can be set with
//! `RUSTFLAGS="--cfg portable_atomic_unsafe_assume_single_core"`.
//!
//! ## Features
//! `latency-histograms` (default): each stage's [`accounting::StageCounters`] carries a
//! latency histogram (`lane_wait`, 976 buckets, 7.8 KB). Small parts leave it out with
//! `default-features = false`; every count and the accounting stay the same. `defmt`,
//! `critical-section` and `unsafe-assume-single-core` are described above and in
//! `Cargo.toml`.
//!
//! ## Time
//! The core never reads a clock: operations that need time take `now` in ticks.
//!
//! ## Embedding the whole pipeline
//! The pattern of the firmware (`firmware/` in the repository) in one compiled example:
//! every structure a `static` sized by one set of capacities, split once at start-up; bytes
//! from any transport go through the streaming decoder into the dispatcher; the main loop
//! polls the processors into a [`process::Sink`] of your own (a flash log, a radio, a RAM
//! ring); the books always balance.
//!
//! ```
//! use pinstream_core::accounting::{Accounting, StageCounters};
//! use pinstream_core::control::ControlSignal;
//! use pinstream_core::dispatch::Dispatcher;
//! use pinstream_core::event::{EventHeader, Priority};
//! use pinstream_core::lanes::Lanes;
//! use pinstream_core::process::realtime::CountAlerts;
//! use pinstream_core::process::{LaneProcessors, Processors, Record, RetryPolicy, Sink, SinkError};
//! use pinstream_core::ratelimit::{RateConfig, RateLimiter};
//! use pinstream_core::wire::{self, StreamDecoder};
//!
//! // Payload bytes per pool slot, pool slots, lane capacity, dead-letter ring.
//! const PAYLOAD: usize = 32;
//! const POOL: usize = 64;
//! const LANE: usize = 16;
//! const DEAD: usize = 16;
//! static LANES: Lanes<PAYLOAD, POOL, LANE, DEAD> = Lanes::new();
//! static DISPATCHED: StageCounters = StageCounters::new();
//! static PROCESSED: StageCounters = StageCounters::new();
//! static SIGNAL: ControlSignal = ControlSignal::new();
//! static LIMITER: RateLimiter<2> = RateLimiter::new(RateConfig::UNLIMITED);
//!
//! /// Where stored events go.
//! #[derive(Default)]
//! struct Stored(u64);
//! impl Sink for Stored {
//!     fn store(&mut self, record: &Record<'_>) -> Result<(), SinkError> {
//!         if let Record::Event(e) = record {
//!             assert_eq!(e.payload, b"hello");
//!             self.0 += 1;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let (input, output, mut dead_letters) = LANES.try_split().expect("split once per boot");
//! // 2 alert rules, 64 dedup slots, 4 aggregated topics (a `StaticCell` on a small stack).
//! let mut procs = LaneProcessors::<2, 64, 4>::new(1_000_000, 100);
//! let mut dispatcher = Dispatcher::new(input, &LIMITER, &SIGNAL, 4, &DISPATCHED);
//! let retry = RetryPolicy { max_attempts: 4, backoff: 1, max_backoff: 4 };
//! let mut processors: Processors<'_, PAYLOAD, POOL, LANE, DEAD, 4> =
//!     Processors::new(output, retry, &PROCESSED);
//! let mut decoder = StreamDecoder::<256>::new();
//! let (mut alerts, mut sink) = (CountAlerts::default(), Stored::default());
//!
//! // One EVENT frame, arriving in 5-byte pieces as a UART would deliver it.
//! let mut frame = [0u8; 256];
//! let header = EventHeader::new(7, 0, Priority::High, 42);
//! let len = wire::encode_event(&mut frame, 1, &header, b"hello").unwrap();
//! let now = 10; // ticks: the core never reads a clock
//! for piece in frame[..len].chunks(5) {
//!     decoder.feed(piece, |f| match f {
//!         Ok(f) => {
//!             dispatcher.dispatch_frame(&f, 0, now);
//!         }
//!         Err(e) => dispatcher.reject_frame(e), // counted under its reason
//!     });
//! }
//! // The main loop's step: processors into the sink; the dead-letter ring to its own log.
//! processors.poll(&mut procs, &mut alerts, &mut sink, now + 1, 32);
//! let mut dead = 0;
//! dead_letters.drain(usize::MAX, |_| dead += 1);
//!
//! let books = Accounting::of(&[&DISPATCHED, &PROCESSED]);
//! assert_eq!((books.ingested, books.stored, sink.0, dead), (1, 1, 1, 0));
//! assert_eq!(books.resolved(), books.ingested); // stored + duplicates + dead + rejected
//! ```
#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]
// docs.rs: `pinstream_cas` is the build script's cfg, not something a user sets; the items it
// gates (through `with_cas!`) name what a user controls instead.
#![cfg_attr(docsrs, doc(auto_cfg(hide(pinstream_cas))))]
#![warn(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

#[cfg(test)]
extern crate std;

/// Items that need compare-and-swap: built when the target has it or one of the features
/// `critical-section` / `unsafe-assume-single-core` provides it (the build script then sets
/// `pinstream_cas`), and documented with that condition on docs.rs.
macro_rules! with_cas {
    ($($item:item)*) => {
        $(
            #[cfg(pinstream_cas)]
            #[cfg_attr(
                docsrs,
                doc(cfg(any(
                    target_has_atomic = "ptr",
                    feature = "critical-section",
                    feature = "unsafe-assume-single-core"
                )))
            )]
            $item
        )*
    };
}

pub(crate) mod sync;

with_cas! {
    pub mod accounting;
    pub mod arena;
    pub mod dedup;
    pub mod dispatch;
    pub mod lanes;
    pub mod metrics;
    pub mod pool;
    pub mod process;
    pub mod ratelimit;
}
pub mod control;
pub mod event;
pub mod reason;
pub mod record;
pub mod ring;
pub mod topic;
pub mod wire;

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(all(test, not(loom)))]
mod test_rng;

// The README's examples compile and run with the doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
