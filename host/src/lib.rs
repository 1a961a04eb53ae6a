//! # pinstream-host
//!
//! The std side of pinstream: it owns threads, sockets, files and memory placement, and
//! builds the engine out of `pinstream-core` parts. Every system call lives in `sys`; the
//! rest of the crate has no `unsafe`.
#![deny(unsafe_code)]

pub mod admin;
pub mod config;
pub mod consumers;
pub mod disk;
pub mod engine;
pub mod fdlimit;
pub mod gateway;
pub mod ingest;
/// The load generator lives in the client crate; kept here under its old path.
pub use pinstream_client::loadgen;
pub mod placement;
pub mod prom;
pub mod stats;
pub mod storage;
mod sys;
pub mod tlsport;

// Their paths from before they were grouped under `placement`.
pub use placement::{idle, numa, pin, topology};

// The README's examples compile and run with the doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
