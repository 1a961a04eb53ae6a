//! The client side of the pinstream wire protocol (`docs/PROTOCOL.md`), the one
//! implementation the load generator, `pinstream log replay` and the tests share.
//!
//! - [`Connection`]: a TCP connection that has said HELLO ([`Connection::connect`]), sends
//!   frames, and reads the server's ACK, REJECT and HELLO frames ([`Connection::next_reply`]).
//!   It can be split into a writing and a reading half for a client that sends from one
//!   thread and reads acknowledgements on another ([`Connection::split`]). Over TLS with
//!   [`Connection::connect_with`] and [`TlsOptions`] (a server with `tcp.tls_cert`).
//! - [`Producer`]: a blocking producer over a version-2 producer session. It batches events
//!   into frames, keeps up to a window of frames in flight (waiting for acknowledgements
//!   when the window is full), counts what the server answered, and after a lost connection
//!   reconnects under the same producer id and resends every frame not yet acknowledged:
//!   the server answers what it already has as duplicates, so nothing is stored twice.
//! - [`Consumer`]: a blocking consumer over protocol version 3 (`docs/PROTOCOL.md` §12). It
//!   subscribes to one of the engine's logs, hands out its stored records one at a time
//!   borrowed from one receive buffer (checked: frame trailer, each record's CRC, consecutive
//!   offsets), grants credit as it reads, commits a position under a name, and after a lost
//!   connection subscribes again from where it was, never handing out a record twice.
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
//!
//! Reading the realtime log from its first record to the high watermark seen at subscription,
//! then committing the position under a name:
//!
//! ```no_run
//! use std::time::Duration;
//! use pinstream_client::{Consumer, ConsumerOptions};
//! use pinstream_core::record::RecordBody;
//! use pinstream_core::wire::{Start, StreamLog};
//!
//! let options = ConsumerOptions {
//!     name: Some("billing".to_owned()),
//!     ..ConsumerOptions::new(StreamLog::Realtime, Start::Earliest)
//! };
//! let mut consumer = Consumer::connect("127.0.0.1:7072".parse().unwrap(), options)?;
//! let end = consumer.subscribed().high_watermark;
//! while consumer.position() < end {
//!     let Some(record) = consumer.next_timeout(Duration::from_secs(1))? else { continue };
//!     if let Ok(RecordBody::Event(e)) = record.decode() {
//!         println!("{} id={} payload={}B", record.offset(), e.header.id, e.payload.len());
//!     }
//! }
//! consumer.commit_position()?;
//! # Ok::<(), std::io::Error>(())
//! ```

mod connection;
mod consumer;
pub mod loadgen;
mod producer;
mod tls;

pub use connection::{ConnectOptions, Connection, Reader, Reply, Writer, reason_text};
pub use consumer::{Consumer, ConsumerOptions, MAX_RECEIVE_FRAME_LEN, Record, Rejected, rejection};
pub use producer::{Producer, ProducerOptions, Totals};
pub use tls::{TlsFiles, TlsOptions};

// The README's examples compile and run with the doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
