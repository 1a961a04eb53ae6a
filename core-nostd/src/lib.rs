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
//! | [`dedup::DedupTable`] | fixed set of `u64` keys with a time window | 128-bit CAS or fallback |
//!
//! ## Targets without compare-and-swap
//! Atomics come from [`portable_atomic`]. On targets whose CPU has no CAS (`thumbv6m-none-eabi`,
//! `riscv32i`), only [`ring::Spsc`] is built by default (it needs loads and stores alone). The
//! final binary turns on the CAS-based structures with one of this crate's features:
//! `critical-section` (the binary provides a `critical-section` implementation, e.g.
//! `cortex-m/critical-section-single-core`) or `unsafe-assume-single-core` (single-core chips;
//! portable-atomic disables interrupts around each CAS). The same can be set with
//! `RUSTFLAGS="--cfg portable_atomic_unsafe_assume_single_core"`.
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
pub mod dedup;
#[cfg(pinstream_cas)]
pub mod pool;
#[cfg(pinstream_cas)]
pub mod ratelimit;
pub mod ring;

pub mod control;
pub mod event;
#[cfg(pinstream_cas)]
pub mod metrics;
pub mod reason;
pub mod topic;
pub mod wire;

#[cfg(all(test, loom))]
mod loom_tests;
