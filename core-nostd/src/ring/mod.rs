//! Bounded lock-free rings: [`Spsc`] (wait-free, one producer, one consumer, load/store only)
//! and [`Mpsc`] (many producers, one consumer, needs CAS).
//!
//! Both hold exactly `N` items, live in a `static` (`const fn new`), hand back the value when
//! full ([`PushError::Full`]) and drop what is still inside when the ring is dropped.

use core::fmt;

with_cas! {
    pub mod mpsc;
    pub use mpsc::{Mpsc, MpscConsumer};
}
pub mod spsc;

pub use spsc::{Consumer, Producer, Spsc};

/// Why a push did not happen. The value comes back so nothing is lost.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PushError<T> {
    /// The ring holds `N` items already.
    Full(T),
}

impl<T> PushError<T> {
    /// The value that was not pushed.
    pub fn into_inner(self) -> T {
        match self {
            PushError::Full(value) => value,
        }
    }
}

impl<T> fmt::Debug for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::Full(_) => f.write_str("Full(..)"),
        }
    }
}

impl<T> fmt::Display for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::Full(_) => f.write_str("ring is full"),
        }
    }
}

impl<T> core::error::Error for PushError<T> {}

#[cfg(feature = "defmt")]
impl<T> defmt::Format for PushError<T> {
    fn format(&self, f: defmt::Formatter<'_>) {
        match self {
            PushError::Full(_) => defmt::write!(f, "Full"),
        }
    }
}
