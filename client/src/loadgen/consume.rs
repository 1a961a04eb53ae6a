//! The consuming side of a load (`loadgen --consumers N`): N consumers, each subscribed at
//! `latest` to every log the load's priorities go to (one [`Consumer`] connection per log),
//! measure the produce→consume latency of every event: the time from its `timestamp` (the
//! send time, nanoseconds since the Unix epoch, set by the writer) to when the consumer
//! reads it, in an hdrhistogram recorded without allocation. Both ends read the same
//! clock, so the figure is meaningful on one machine (or with synchronised clocks).
//!
//! The subscriptions are made before the first event is sent, so every event stored by the
//! run is above their start. After the load, consumers read on until each has seen as many
//! events as the server stored, or until nothing came for [`DRAIN_IDLE`] (events of the
//! batch lane stored only as aggregates, `pipeline.batch_store = "aggregates"`, never come:
//! the report then shows fewer consumed than stored).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use pinstream_core::event::{Lane, Priority};
use pinstream_core::record::RecordBody;
use pinstream_core::wire::{Start, StreamLog};

use crate::consumer::{Consumer, ConsumerOptions};

/// How long consumers wait for more once the load is over and no record comes.
pub const DRAIN_IDLE: Duration = Duration::from_secs(2);
/// One wait for a record; the thread looks at the end of the run in between.
const POLL: Duration = Duration::from_millis(50);

/// What the consumers read.
#[derive(Debug)]
pub struct ConsumeReport {
    /// Consumers (each with one connection per log).
    pub consumers: usize,
    /// The logs each consumer read.
    pub logs: Vec<StreamLog>,
    /// Events each consumer read, all its logs together.
    pub consumed: Vec<u64>,
    /// Produce→consume latency per event read, nanoseconds (all consumers).
    pub latency: Histogram<u64>,
    /// Connections reopened after a loss, all consumers.
    pub reconnects: u64,
}

impl ConsumeReport {
    /// Says what is wrong when a consumer did not read exactly `stored` events; `None`
    /// when every one did.
    pub fn mismatch(&self, stored: u64) -> Option<String> {
        let off: Vec<String> = self
            .consumed
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n != stored)
            .map(|(i, n)| format!("consumer {i} read {n}"))
            .collect();
        (!off.is_empty()).then(|| {
            format!(
                "the server stored {stored} events but {} (batch-lane events stored only as \
                 aggregates, or records the consumers did not get within {DRAIN_IDLE:?} of the \
                 end)",
                off.join(", ")
            )
        })
    }
}

/// The logs events of `priorities` are stored in, in log order.
pub fn logs_of(priorities: &[Priority]) -> Vec<StreamLog> {
    let mut logs: Vec<StreamLog> = priorities
        .iter()
        .map(|p| match p.lane() {
            Lane::Realtime => StreamLog::Realtime,
            Lane::Transactional => StreamLog::Transactional,
            Lane::Batch => StreamLog::Batch,
        })
        .collect();
    logs.sort_by_key(|l| l.as_u8());
    logs.dedup();
    logs
}

/// What one consumer connection measured: its latencies and reconnects.
type Measured = (Histogram<u64>, u64);

/// The consumers of a running load.
#[derive(Debug)]
pub(super) struct ConsumeRun {
    logs: Vec<StreamLog>,
    consumers: usize,
    /// Set when the load is over, with the events the server stored in `target`.
    done: Arc<AtomicBool>,
    target: Arc<AtomicU64>,
    consumed: Vec<Arc<AtomicU64>>,
    threads: Vec<JoinHandle<io::Result<Measured>>>,
}

/// Subscribes `consumers` × `logs` connections at `latest` (all answered before this
/// returns) and starts reading on them; each HELLO carries `token` if given (an engine
/// with `consumers.auth = "token"`).
///
/// # Errors
/// A consumer listener that cannot be reached or refuses a subscription.
pub(super) fn spawn(
    addr: SocketAddr,
    consumers: usize,
    logs: Vec<StreamLog>,
    timeout: Duration,
    token: Option<Vec<u8>>,
) -> io::Result<ConsumeRun> {
    let done = Arc::new(AtomicBool::new(false));
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let consumed: Vec<Arc<AtomicU64>> = (0..consumers)
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let mut opened = Vec::with_capacity(consumers * logs.len());
    for (i, count) in consumed.iter().enumerate() {
        for &log in &logs {
            let options = ConsumerOptions {
                timeout,
                token: token.clone(),
                ..ConsumerOptions::new(log, Start::Latest)
            };
            let consumer = Consumer::connect(addr, options).map_err(|e| {
                io::Error::new(e.kind(), format!("loadgen consumer {i} ({log} log): {e}"))
            })?;
            opened.push((i, consumer, Arc::clone(count)));
        }
    }
    let mut threads = Vec::with_capacity(opened.len());
    for (i, consumer, count) in opened {
        let (done, target) = (Arc::clone(&done), Arc::clone(&target));
        let log = consumer.options().log;
        threads.push(
            thread::Builder::new()
                .name(format!("loadgen-consumer-{i}-{log}"))
                .spawn(move || read(consumer, &count, &done, &target))?,
        );
    }
    Ok(ConsumeRun {
        logs,
        consumers,
        done,
        target,
        consumed,
        threads,
    })
}

impl ConsumeRun {
    /// Tells the consumers the load is over (the server stored `stored` events) and waits
    /// for them to read the rest.
    ///
    /// # Errors
    /// A consumer's failure (damaged records, a connection lost for good).
    pub(super) fn finish(self, stored: u64) -> io::Result<ConsumeReport> {
        self.target.store(stored, Ordering::Release);
        self.done.store(true, Ordering::Release);
        let mut latency = new_histogram()?;
        let mut reconnects = 0;
        let mut first_error = None;
        for t in self.threads {
            match t.join() {
                Ok(Ok((h, r))) => {
                    latency
                        .add(&h)
                        .map_err(|e| io::Error::other(format!("merging histograms: {e}")))?;
                    reconnects += r;
                }
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error.get_or_insert(io::Error::other("a consumer thread panicked"));
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(ConsumeReport {
            consumers: self.consumers,
            logs: self.logs,
            consumed: self
                .consumed
                .iter()
                .map(|c| c.load(Ordering::Acquire))
                .collect(),
            latency,
            reconnects,
        })
    }
}

fn new_histogram() -> io::Result<Histogram<u64>> {
    // 1 µs .. 10 min at 3 significant digits, sized once.
    Histogram::new_with_bounds(1_000, 600_000_000_000, 3)
        .map_err(|e| io::Error::other(format!("creating a histogram: {e}")))
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// One consumer connection's loop: read, measure, count, until the load is over and its
/// consumer has read `target` events, or nothing came for [`DRAIN_IDLE`].
fn read(
    mut consumer: Consumer,
    count: &AtomicU64,
    done: &AtomicBool,
    target: &AtomicU64,
) -> io::Result<Measured> {
    let mut latency = new_histogram()?;
    let mut last = Instant::now();
    loop {
        if let Some(rec) = consumer.next_timeout(POLL)? {
            if let Ok(RecordBody::Event(e)) = rec.decode() {
                let ns = unix_ns().saturating_sub(e.header.timestamp);
                latency.saturating_record(ns.clamp(1_000, 600_000_000_000));
                count.fetch_add(1, Ordering::AcqRel);
            }
            last = Instant::now();
            continue;
        }
        if done.load(Ordering::Acquire)
            && (count.load(Ordering::Acquire) >= target.load(Ordering::Acquire)
                || last.elapsed() >= DRAIN_IDLE)
        {
            return Ok((latency, consumer.reconnects()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_follow_the_priorities_lanes() {
        assert_eq!(logs_of(&[Priority::Medium]), [StreamLog::Transactional]);
        assert_eq!(
            logs_of(&Priority::ALL),
            [
                StreamLog::Realtime,
                StreamLog::Transactional,
                StreamLog::Batch
            ]
        );
        assert_eq!(
            logs_of(&[Priority::Batch, Priority::High, Priority::Critical]),
            [StreamLog::Realtime, StreamLog::Batch]
        );
    }

    #[test]
    fn mismatches_name_the_consumer() {
        let report = ConsumeReport {
            consumers: 2,
            logs: vec![StreamLog::Realtime],
            consumed: vec![10, 9],
            latency: new_histogram().unwrap(),
            reconnects: 0,
        };
        assert!(report.mismatch(9).unwrap().contains("consumer 0 read 10"));
        assert!(!report.mismatch(10).unwrap().contains("consumer 0"));
        let ok = ConsumeReport {
            consumed: vec![10, 10],
            ..report
        };
        assert_eq!(ok.mismatch(10), None);
    }
}
