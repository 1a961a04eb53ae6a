//! The storage thread's loop ([`StorageLoop`]): runs the processors over the lanes, writes
//! the dispatcher's dead letters, feeds the control plane, advances the batch watermark and
//! drives the sink's group commits; at the end drains everything and syncs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pinstream_core::control::{ControlPlane, Observation, depth_permille};
use pinstream_core::event::Lane;
use pinstream_core::lanes::DeadLetters;
use pinstream_core::process::realtime::CountAlerts;
use pinstream_core::reason::Reason;
use pinstream_core::ring::Producer;

use super::capacity::{DEAD_LETTERS, EngineLaneProcessors, EngineProcessors, LANE};
use super::sink::{MAX_PENDING_COMPLETIONS, StoreSink};
use super::{EngineConfig, EngineStats};
use crate::idle::{IdleStrategy, Idler};
use crate::ingest::{COMPLETIONS, Completion};
use crate::stats::LatencyRecorder;
use crate::storage::StorageError;

/// The storage thread's share of the engine's memory, handed to it at start.
pub(super) struct StorageParts<'a> {
    /// The processors over the lanes' output.
    pub(super) processors: EngineProcessors<'a>,
    /// The per-lane processing state.
    pub(super) procs: &'a mut EngineLaneProcessors,
    /// The dispatcher's dead letters.
    pub(super) dead: DeadLetters<'a, DEAD_LETTERS>,
    /// Completions to the ingest thread.
    pub(super) done_tx: Producer<'a, Completion, COMPLETIONS>,
}

/// The storage thread's state.
pub(super) struct StorageLoop<'a, 's> {
    processors: EngineProcessors<'a>,
    procs: &'a mut EngineLaneProcessors,
    dead: DeadLetters<'a, DEAD_LETTERS>,
    done_tx: Producer<'a, Completion, COMPLETIONS>,
    sink: &'s mut StoreSink<'a>,
    stats: &'a EngineStats,
    control: ControlPlane,
    budget: usize,
    window: u64,
    /// A batch watermark waiting for its events to be taken and their windows to close.
    candidate: Option<BatchMark>,
    last_control: u64,
    last_offered: u64,
    last_dropped: u64,
    commit_latency: LatencyRecorder,
    durable_latency: LatencyRecorder,
    last_retention: u64,
    last_dedup_window: u64,
}

/// A batch watermark on its way (see [`StorageLoop::batch_watermark`]).
#[derive(Clone, Copy, Debug)]
struct BatchMark {
    /// The ingest thread's `pushed_before` it stands for.
    mark: u64,
    /// Batch-lane events the dispatcher had queued by then.
    queued: u64,
    /// The window boundary by which their windows close, once they are all taken.
    end: Option<u64>,
}

/// How often the dedup table's effective window is published: 1 s.
const DEDUP_WINDOW_EVERY: u64 = 1_000_000_000;
/// How often the control plane looks at the lanes.
const CONTROL_EVERY: u64 = 1_000_000;
/// How often retention is applied (when configured), in ticks: 10 s.
pub(super) const RETENTION_EVERY: u64 = 10_000_000_000;

impl<'a, 's> StorageLoop<'a, 's> {
    /// The loop over `parts`, storing through `sink`, with `cfg`'s budget, aggregation
    /// window and control-plane thresholds.
    pub(super) fn new(
        parts: StorageParts<'a>,
        sink: &'s mut StoreSink<'a>,
        stats: &'a EngineStats,
        cfg: &EngineConfig,
    ) -> Self {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let StorageParts {
            processors,
            procs,
            dead,
            done_tx,
        } = parts;
        Self {
            processors,
            procs,
            dead,
            done_tx,
            sink,
            stats,
            control: ControlPlane::new(cfg.control),
            budget: cfg.budget.max(1),
            window: ns(cfg.aggregate_window).max(1),
            candidate: None,
            last_control: 0,
            last_offered: 0,
            last_dropped: 0,
            commit_latency: LatencyRecorder::new(Arc::clone(&stats.commit_latency)),
            durable_latency: LatencyRecorder::new(Arc::clone(&stats.durable_latency)),
            last_retention: 0,
            last_dedup_window: 0,
        }
    }

    /// Runs rounds until the ingest thread is done and a round finds nothing, then drains,
    /// syncs and closes the logs.
    ///
    /// # Errors
    /// The first storage failure, as a message.
    pub(super) fn run(&mut self, idle: IdleStrategy) -> Result<(), String> {
        let mut idler = Idler::new(idle, Arc::clone(&self.stats.storage_load));
        loop {
            let stopping = self.stats.shared.ingest_done.load(Ordering::Acquire);
            let work = self.round(stopping);
            if stopping && !work {
                break;
            }
            idler.step(work);
        }
        // Nothing comes in any more: process what is left, close every window, sync.
        let now = self.stats.shared.now();
        self.drain_dead_letters();
        self.sink.round_now = now;
        self.processors
            .drain(self.procs, &mut CountAlerts::default(), self.sink, now);
        self.drain_dead_letters();
        self.sink.pending_batch = Some(self.stats.shared.pushed_before.load(Ordering::Acquire));
        let result = self.commit(true);
        // What the drain left inside the engine (nothing, unless storage failed): the
        // handle checks the books with it once the threads are joined.
        let in_flight = self.processors.in_flight(self.procs);
        self.stats.in_flight.set(in_flight);
        self.stats
            .shared
            .storage_done
            .store(true, Ordering::Release);
        let closed = self.sink.close();
        result
            .and(closed)
            .map(|_| ())
            .map_err(|e| format!("storage: {e}"))
    }

    /// One round; whether it did anything.
    fn round(&mut self, stopping: bool) -> bool {
        let now = self.stats.shared.now();
        self.sink.round_now = now;
        let pushed_before = self.stats.shared.pushed_before.load(Ordering::Acquire);
        let mut work = self.drain_dead_letters() > 0;
        let summary = self.processors.poll(
            self.procs,
            &mut CountAlerts::default(),
            self.sink,
            now,
            self.budget,
        );
        work |= summary.did_work();
        self.batch_watermark(pushed_before, now);
        if now - self.last_control >= CONTROL_EVERY {
            self.observe(now);
        }
        if now - self.last_retention >= RETENTION_EVERY {
            self.last_retention = now;
            self.sink.enforce_retention();
        }
        let force = stopping || !work;
        // An error was recorded by the sink (`fail`): writes have stopped, health says why.
        if let Ok(c) = self.commit(force) {
            work |= c;
        }
        work
    }

    /// Writes the dispatcher's dead letters to the dead-letter log.
    fn drain_dead_letters(&mut self) -> usize {
        let sink = &mut *self.sink;
        self.dead
            .drain(usize::MAX, |record| sink.write_dead_letter(&record, false))
    }

    /// Advances the batch watermark. The batch lane has one producer, so it is FIFO: once
    /// the processors have taken as many batch events as the dispatcher had queued when it
    /// published `pushed_before`, every batch event dispatched before that tick has been
    /// taken; once every window open at that moment has closed (and nothing is parked), their
    /// aggregates are in the sink, and the next commit makes the watermark true.
    fn batch_watermark(&mut self, pushed_before: u64, now: u64) {
        let batch = Lane::Batch.index();
        let parked = self.processors.parked();
        if self.candidate.is_none() {
            if self.processors.depths()[batch] == 0
                && self.procs.batch.pending() == 0
                && parked == 0
            {
                // Nothing batch-side in flight: every batch event before it is settled.
                self.sink.pending_batch = Some(pushed_before);
                return;
            }
            // Read after `pushed_before` (acquire): at least the count queued before it.
            let queued = self.stats.dispatch.queued(Lane::Batch).get();
            self.candidate = Some(BatchMark {
                mark: pushed_before,
                queued,
                end: None,
            });
        }
        let Some(c) = self.candidate.as_mut() else {
            return;
        };
        if c.end.is_none() && self.stats.process.processed[batch].get() >= c.queued {
            // All taken by `now`: they sit in windows that end by the next boundary.
            c.end = Some(now - now % self.window + self.window);
        }
        if let Some(end) = c.end {
            if now >= end && !self.procs.batch.due(now) && parked == 0 {
                self.sink.pending_batch = Some(c.mark);
                self.candidate = None;
            }
        }
    }

    /// Feeds the control plane.
    fn observe(&mut self, now: u64) {
        self.last_control = now;
        let d = &self.stats.dispatch;
        let offered = d.ingested.get();
        let dropped = d.reason(Reason::LaneFull).get() + d.reason(Reason::PoolExhausted).get();
        let depths = self.processors.depths();
        for (gauge, &d) in self.stats.lane_depths.iter().zip(&depths) {
            gauge.set(d as u64);
        }
        let depth = depths
            .iter()
            .map(|&n| depth_permille(n, LANE))
            .max()
            .unwrap_or(0);
        let obs = Observation {
            depth_permille: depth,
            offered: offered - self.last_offered,
            dropped: dropped - self.last_dropped,
        };
        self.last_offered = offered;
        self.last_dropped = dropped;
        self.control.evaluate_and_publish(obs, &self.stats.control);
        self.stats
            .control_transitions
            .set(self.control.transitions());
        let in_flight = self.processors.in_flight(self.procs);
        self.stats.in_flight.set(in_flight);
        if now - self.last_dedup_window >= DEDUP_WINDOW_EVERY {
            self.last_dedup_window = now;
            let tx = &mut self.procs.transactional;
            let effective = tx.take_youngest_evicted().unwrap_or(tx.window());
            self.stats.dedup_effective_window_ns.set(effective);
        }
    }

    /// Makes what was written durable per the mode and tells the ingest thread, in two
    /// halves so that the fdatasyncs overlap the next rounds' processing: a commit starts
    /// (buffers written, the fdatasyncs handed to the sync helpers, its completions set
    /// aside) when one is due, and ends (its completions published) once every sync has
    /// returned. One commit is out at a time. `force`: end the one out and commit
    /// whatever is left now, waiting for it (idle, or stopping). Returns whether it did
    /// anything.
    fn commit(&mut self, force: bool) -> Result<bool, StorageError> {
        let mut did = false;
        if self.sink.committing {
            // The next batch of completions may not outgrow its buffer: past half of it,
            // wait for the commit out.
            let wait = force || self.sink.completions.len() >= MAX_PENDING_COMPLETIONS / 2;
            if !wait && !self.sink.group_sync.is_done() {
                return Ok(false);
            }
            self.end_commit()?;
            did = true;
        }
        if !self.sink.dirty() {
            // Nothing unsynced: a batch watermark can go out at once (not counted as work,
            // it moves every round).
            if let Some(mark) = self.sink.pending_batch.take().filter(|_| !self.sink.failed) {
                self.stats
                    .shared
                    .batch_resolved
                    .fetch_max(mark, Ordering::Release);
            }
            return Ok(did);
        }
        let now = Instant::now();
        if !force && !self.sink.commit_due(now) {
            return Ok(did);
        }
        self.sink.start_commit(now)?;
        if force || !self.sink.group_sync.in_flight() {
            self.end_commit()?;
        }
        Ok(true)
    }

    /// Waits for the commit out to be durable, then publishes its completions.
    fn end_commit(&mut self) -> Result<(), StorageError> {
        let started = self.sink.commit_started;
        self.sink.finish_commit()?;
        let end = self.stats.shared.now();
        let now = Instant::now();
        let took = now.duration_since(started);
        self.commit_latency
            .record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
        if self.sink.in_flight_oldest != u64::MAX {
            self.durable_latency
                .record(end.saturating_sub(self.sink.in_flight_oldest));
            self.sink.in_flight_oldest = u64::MAX;
        }
        self.sink.publish(&mut self.done_tx, &self.stats.shared);
        self.commit_latency.maybe_publish(now);
        self.durable_latency.maybe_publish(now);
        Ok(())
    }
}
