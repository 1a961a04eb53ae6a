//! Every system call of the host, in one place. Each wrapper turns the C calling convention
//! into a `Result` and documents the invariant that makes its `unsafe` sound.
#![allow(unsafe_code)]

mod affinity;
pub(crate) mod consumer_io;
mod flock;
pub(crate) mod fs;
pub(crate) mod mem;
pub(crate) mod net;
mod rlimit;

pub(crate) use affinity::{set_thread_affinity, thread_affinity};
pub(crate) use flock::{Flock, try_lock_exclusive};
pub(crate) use mem::{Mapping, lock_all, mbind, node_of_address, page_size};
pub(crate) use rlimit::{nofile, process_cpu_ns, set_nofile};
