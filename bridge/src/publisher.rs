//! The async half of a bridge: publishes what the consumer thread hands over, keeps up to
//! `max_in_flight` offsets awaiting their PubAck, retries every failure with backoff (same
//! message, same `Nats-Msg-Id`), and tells the consumer thread how far it may commit.
//!
//! **Resume scan.** JetStream drops a resend only within the stream's duplicate window
//! (2 minutes by default). So before sending anything from a position `lo` — at start, where
//! `lo` is the committed position, and whenever a retry comes later than half the window
//! after the message's first send — the publisher reads the stream backwards from its last
//! message and notes which of our offsets at or above `lo` it holds; those are not sent again.
//! It stops at a message of ours below `lo − max_in_flight` (the window's span guarantees no
//! message of ours at or above `lo` comes before it, see [`crate::window`]) or at the
//! stream's first message. Lowering `max_in_flight` across a restart weakens that bound for
//! the first scan: lower it only with the bridge caught up.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;

use crate::message::{MessageMaker, OutMessage, offset_of};
use crate::metrics::BridgeMetrics;
use crate::window::AckWindow;

/// What the consumer thread sends.
#[derive(Debug)]
pub(crate) enum Item {
    /// The subscription starts (or starts again) at this offset: run the resume scan from
    /// there. Only the first counts; records follow.
    Start(u64),
    /// A record to publish.
    Record(OutMessage),
}

/// State both halves share.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Every record below this offset has its PubAck (`u64::MAX`: not known yet).
    pub committable: AtomicU64,
    /// Set by the publisher once it has nothing in flight after the channel closed.
    pub drained: AtomicBool,
    /// Stop now (the publisher gives up its in-flight publishes: they are not committed).
    pub abort: AtomicBool,
}

/// The publisher's settings.
#[derive(Clone, Debug)]
pub(crate) struct PublishSettings {
    pub stream: String,
    pub subjects: Vec<String>,
    pub replicas: usize,
    pub max_in_flight: u64,
    pub ack_timeout: Duration,
    pub max_backoff: Duration,
}

enum Done {
    Acked {
        offset: u64,
        sent: Instant,
        result: Result<bool, String>,
    },
    RetryDue(u64),
}

struct Pending {
    msg: OutMessage,
    first_sent: Instant,
    attempts: u32,
}

/// Retries pause 50 ms, doubling up to `max`.
fn backoff(attempts: u32, max: Duration) -> Duration {
    Duration::from_millis(50)
        .saturating_mul(1 << attempts.min(16))
        .min(max)
}

pub(crate) struct Publisher {
    js: jetstream::Context,
    settings: PublishSettings,
    maker: MessageMaker,
    metrics: Arc<BridgeMetrics>,
    shared: Arc<Shared>,
    window: Option<AckWindow>,
    pending: HashMap<u64, Pending>,
    futs: FuturesUnordered<BoxFuture<'static, Done>>,
    /// Offsets the resume scan found in the stream.
    present: HashSet<u64>,
    /// A record received but outside the window's span: sent once the window moves.
    held: Option<OutMessage>,
    /// A resume scan is due: nothing is sent until the in-flight publishes are settled.
    rescan: bool,
    /// Retries that came due while a scan waited.
    due: VecDeque<u64>,
    dup_window: Duration,
    /// Subjects by topic id, made from the template once.
    subjects: HashMap<u16, String>,
}

impl Publisher {
    pub(crate) fn new(
        js: jetstream::Context,
        settings: PublishSettings,
        maker: MessageMaker,
        metrics: Arc<BridgeMetrics>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            js,
            settings,
            maker,
            metrics,
            shared,
            window: None,
            pending: HashMap::new(),
            futs: FuturesUnordered::new(),
            present: HashSet::new(),
            held: None,
            rescan: false,
            due: VecDeque::new(),
            dup_window: Duration::from_secs(120),
            subjects: HashMap::new(),
        }
    }

    /// Runs until the channel closes and everything in flight has its PubAck, or until
    /// `abort`.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Item>) {
        let Some(stream) = self.ensure_stream().await else {
            return; // aborted
        };
        let mut open = true;
        // Wakes the loop now and then for `abort` (one timer for the whole run).
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.shared.abort.load(Ordering::Relaxed) {
                return;
            }
            if self.rescan && self.futs.is_empty() {
                self.resume_scan(&stream).await;
                continue;
            }
            if !open && self.futs.is_empty() && self.held.is_none() && self.due.is_empty() {
                self.shared.drained.store(true, Ordering::Release);
                return;
            }
            let take = open && self.held.is_none() && !self.rescan;
            tokio::select! {
                item = rx.recv(), if take => match item {
                    None => open = false,
                    Some(Item::Start(from)) => {
                        if self.window.is_none() {
                            self.window = Some(AckWindow::new(from, self.settings.max_in_flight));
                            self.rescan = true;
                        }
                    }
                    Some(Item::Record(m)) => self.offer(m),
                },
                Some(done) = self.futs.next(), if !self.futs.is_empty() => self.settle(done),
                _ = tick.tick() => {}
            }
        }
    }

    /// Gets the stream, creating it when missing; retries until it can (`None`: aborted).
    async fn ensure_stream(&mut self) -> Option<stream::Stream> {
        let mut attempts = 0;
        loop {
            if self.shared.abort.load(Ordering::Relaxed) {
                return None;
            }
            let config = stream::Config {
                name: self.settings.stream.clone(),
                subjects: self.settings.subjects.clone(),
                num_replicas: self.settings.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            };
            match self.js.get_or_create_stream(config).await {
                Ok(s) => {
                    let w = s.cached_info().config.duplicate_window;
                    if !w.is_zero() {
                        self.dup_window = w;
                    }
                    return Some(s);
                }
                Err(e) => {
                    self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    self.metrics.set_error(format!(
                        "JetStream stream {}: {e} (retrying)",
                        self.settings.stream
                    ));
                    tokio::time::sleep(backoff(attempts, self.settings.max_backoff)).await;
                    attempts += 1;
                }
            }
        }
    }

    /// A record from the consumer thread.
    fn offer(&mut self, m: OutMessage) {
        let Some(window) = self.window.as_mut() else {
            unreachable!("the consumer thread sends Start before any record");
        };
        if !window.admits(m.offset) {
            self.held = Some(m);
            return;
        }
        window.push(m.offset);
        if self.present.remove(&m.offset) {
            self.metrics.skipped.fetch_add(1, Ordering::Relaxed);
            window.ack(m.offset);
            self.publish_committable();
            return;
        }
        let offset = m.offset;
        self.pending.insert(
            offset,
            Pending {
                msg: m,
                first_sent: Instant::now(),
                attempts: 0,
            },
        );
        self.send(offset);
    }

    fn send(&mut self, offset: u64) {
        let p = &self.pending[&offset];
        let js = self.js.clone();
        let maker = &self.maker;
        let subject = self
            .subjects
            .entry(p.msg.topic())
            .or_insert_with(|| maker.subject(&p.msg))
            .clone();
        let (headers, payload) = (self.maker.headers(&p.msg), p.msg.payload.clone());
        let timeout = self.settings.ack_timeout;
        self.metrics.published.fetch_add(1, Ordering::Relaxed);
        self.futs.push(Box::pin(async move {
            let sent = Instant::now();
            // One bound on the whole exchange (the send into the client's buffer, which
            // waits while it is full, then the PubAck).
            let result = tokio::time::timeout(timeout, async {
                let ack = js
                    .publish_with_headers(subject, headers, payload)
                    .await
                    .map_err(|e| e.to_string())?;
                let ack = ack.await.map_err(|e| e.to_string())?;
                Ok::<_, String>(ack.duplicate)
            })
            .await
            .unwrap_or_else(|_| Err("no PubAck in time".to_string()));
            Done::Acked {
                offset,
                sent,
                result,
            }
        }));
    }

    fn settle(&mut self, done: Done) {
        match done {
            Done::Acked {
                offset,
                sent,
                result: Ok(duplicate),
            } => {
                let m = &self.metrics;
                m.acked.fetch_add(1, Ordering::Relaxed);
                if duplicate {
                    m.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                let ns = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
                m.latency_ns_sum.fetch_add(ns, Ordering::Relaxed);
                m.latency_count.fetch_add(1, Ordering::Relaxed);
                self.pending.remove(&offset);
                if let Some(w) = self.window.as_mut() {
                    w.ack(offset);
                }
                self.publish_committable();
                if let Some(h) = self.held.take() {
                    self.offer(h);
                }
            }
            Done::Acked {
                offset,
                result: Err(e),
                ..
            } => {
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .set_error(format!("publish of offset {offset}: {e} (retrying)"));
                if self.rescan {
                    self.due.push_back(offset);
                    return;
                }
                let p = self.pending.get_mut(&offset).expect("a pending publish");
                let pause = backoff(p.attempts, self.settings.max_backoff);
                p.attempts += 1;
                self.futs.push(Box::pin(async move {
                    tokio::time::sleep(pause).await;
                    Done::RetryDue(offset)
                }));
            }
            Done::RetryDue(offset) => {
                let p = &self.pending[&offset];
                if self.rescan || p.first_sent.elapsed() > self.dup_window / 2 {
                    // JetStream may have stored the first send and forgotten its id by the
                    // time this one lands: look in the stream first.
                    self.rescan = true;
                    self.due.push_back(offset);
                } else {
                    self.send(offset);
                }
            }
        }
    }

    fn publish_committable(&self) {
        if let Some(w) = &self.window {
            self.shared
                .committable
                .store(w.committable(), Ordering::Release);
        }
    }

    /// Reads the stream backwards (see the module docs), then sends what is due and not
    /// there. Retries until the server answers.
    async fn resume_scan(&mut self, stream: &stream::Stream) {
        let lo = self.window.as_ref().map_or(0, AckWindow::committable);
        let mut attempts = 0;
        let found = loop {
            match self.scan(stream, lo).await {
                Ok(found) => break found,
                // Stopping: the run loop sees `abort` next.
                Err(_) if self.shared.abort.load(Ordering::Relaxed) => return,
                Err(e) => {
                    self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    self.metrics.set_error(format!(
                        "resume scan of {}: {e} (retrying)",
                        stream_name(stream)
                    ));
                    tokio::time::sleep(backoff(attempts, self.settings.max_backoff)).await;
                    attempts += 1;
                }
            }
        };
        self.present = found;
        self.rescan = false;
        while let Some(offset) = self.due.pop_front() {
            if self.present.remove(&offset) {
                self.metrics.skipped.fetch_add(1, Ordering::Relaxed);
                self.pending.remove(&offset);
                if let Some(w) = self.window.as_mut() {
                    w.ack(offset);
                }
            } else if let Some(p) = self.pending.get_mut(&offset) {
                p.first_sent = Instant::now();
                self.send(offset);
            }
        }
        self.publish_committable();
        if let Some(h) = self.held.take() {
            self.offer(h);
        }
    }

    /// The offsets of ours at or above `lo` in the stream. Reads backwards in chunks, each
    /// chunk forwards through an ordered consumer of headers only (a request per message
    /// would take minutes on a large stream of other engines' messages).
    async fn scan(&self, stream: &stream::Stream, lo: u64) -> Result<HashSet<u64>, String> {
        let mut stream = stream.clone();
        let info = stream.info().await.map_err(|e| e.to_string())?;
        let (first, last) = (info.state.first_sequence.max(1), info.state.last_sequence);
        let floor = lo.saturating_sub(self.settings.max_in_flight);
        let chunk = (self.settings.max_in_flight * 4).max(4096);
        let mut found = HashSet::new();
        if info.state.messages == 0 {
            return Ok(found);
        }
        let mut hi = last;
        loop {
            let from = hi.saturating_sub(chunk - 1).max(first);
            let (mine, below_floor) = self.scan_chunk(&stream, from, hi, lo, floor).await?;
            found.extend(mine);
            if below_floor || from == first {
                return Ok(found);
            }
            hi = from - 1;
        }
    }

    /// Sequences `from ..= to`: our offsets at or above `lo`, and whether one of ours lies
    /// below `floor`.
    async fn scan_chunk(
        &self,
        stream: &stream::Stream,
        from: u64,
        to: u64,
        lo: u64,
        floor: u64,
    ) -> Result<(Vec<u64>, bool), String> {
        use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                headers_only: true,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut msgs = consumer.messages().await.map_err(|e| e.to_string())?;
        let (mut mine, mut below) = (Vec::new(), false);
        loop {
            let m = tokio::time::timeout(self.settings.ack_timeout, msgs.next())
                .await
                .map_err(|_| "timed out reading the stream".to_string())?
                .ok_or("the stream's consumer ended")?
                .map_err(|e| e.to_string())?;
            let (seq, pending) = {
                let i = m.info().map_err(|e| e.to_string())?;
                (i.stream_sequence, i.pending)
            };
            if seq > to {
                break;
            }
            match offset_of(&self.maker, m.headers.as_ref()) {
                Some(o) if o >= lo => mine.push(o),
                Some(o) if o < floor => below = true,
                _ => {}
            }
            if seq == to || pending == 0 {
                break;
            }
        }
        Ok((mine, below))
    }
}

fn stream_name(s: &stream::Stream) -> &str {
    &s.cached_info().config.name
}
