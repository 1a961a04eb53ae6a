//! The client side of the pinstream wire protocol (`docs/PROTOCOL.md`), the one
//! implementation the load generator, `pinstream log replay` and the tests share.
//!
//! - [`Connection`]: a TCP connection that has said HELLO ([`Connection::connect`]), sends
//!   frames, and reads the server's ACK, REJECT and HELLO frames ([`Connection::next_reply`]).
//!   It can be split into a writing and a reading half for a client that sends from one
//!   thread and reads acknowledgements on another ([`Connection::split`]).
//! - [`Producer`]: a blocking producer over a version-2 producer session. It batches events
//!   into frames, keeps up to a window of frames in flight (waiting for acknowledgements
//!   when the window is full), counts what the server answered, and after a lost connection
//!   reconnects under the same producer id and resends every frame not yet acknowledged:
//!   the server answers what it already has as duplicates, so nothing is stored twice.
//! - [`loadgen`]: the load generator behind `pinstream loadgen` (flat out or paced, TCP or
//!   UDP, many connections, ack latency per frame).
//!
//! Errors are [`std::io::Error`]s whose messages name the server and what failed, ready to
//! show a user.
//!
//! ```no_run
//! use pinstream_client::{Producer, ProducerOptions};
//! use pinstream_core::event::{EventHeader, Priority};
//!
//! let mut producer = Producer::connect("127.0.0.1:7070".parse().unwrap(), ProducerOptions::default())?;
//! for id in 0..1000u64 {
//!     producer.push(&EventHeader::new(id, 0, Priority::Medium, 0), b"payload")?;
//! }
//! let totals = producer.flush()?;
//! assert_eq!(totals.stored + totals.duplicates, 1000);
//! # Ok::<(), std::io::Error>(())
//! ```

mod connection;
pub mod loadgen;
mod producer;

pub use connection::{ConnectOptions, Connection, Reader, Reply, Writer, reason_text};
pub use producer::{Producer, ProducerOptions, Totals};
