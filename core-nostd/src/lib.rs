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
#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

#[cfg(test)]
extern crate std;

pub(crate) mod sync;

#[cfg(pinstream_cas)]
pub mod arena;

#[cfg(pinstream_cas)]
pub mod dedup;
#[cfg(pinstream_cas)]
pub mod pool;
#[cfg(pinstream_cas)]
pub mod ratelimit;
pub mod ring;

#[cfg(pinstream_cas)]
pub mod accounting;
pub mod control;
#[cfg(pinstream_cas)]
pub mod dispatch;
pub mod event;
#[cfg(pinstream_cas)]
pub mod lanes;
#[cfg(pinstream_cas)]
pub mod metrics;
#[cfg(pinstream_cas)]
pub mod process;
pub mod reason;
pub mod record;
pub mod topic;
pub mod wire;

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(all(test, not(loom)))]
mod test_rng;
