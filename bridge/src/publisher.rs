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
use async_nats::{Client, StatusCode, Subject, Subscriber};
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
    /// Records to publish, in offset order.
    Records(Vec<OutMessage>),
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

struct Pending {
    msg: OutMessage,
    first_sent: Instant,
    /// When the current attempt went out; `None` while a retry waits (backoff or scan).
    sent: Option<Instant>,
    /// Failed attempts so far; the current attempt's number is in its reply subject.
    attempts: u32,
}

/// Retries pause 50 ms, doubling up to `max`.
fn backoff(attempts: u32, max: Duration) -> Duration {
    Duration::from_millis(50)
        .saturating_mul(1 << attempts.min(16))
        .min(max)
}

/// A PubAck (or JetStream's error) as the stream's leader sends it.
#[derive(serde::Deserialize)]
struct PubAckReply {
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    error: Option<ApiError>,
}

#[derive(serde::Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u64,
    #[serde(default)]
    description: String,
}

/// What a reply says: `Ok(duplicate)` when the stream holds the message.
fn read_reply(m: &async_nats::Message) -> Result<bool, String> {
    if m.status == Some(StatusCode::NO_RESPONDERS) {
        return Err("no responders (no such stream, or no leader yet)".into());
    }
    if let Some(status) = m.status
        && status != StatusCode::OK
    {
        return Err(format!("status {status}"));
    }
    match serde_json::from_slice::<PubAckReply>(&m.payload) {
        Ok(PubAckReply { error: Some(e), .. }) => {
            Err(format!("JetStream error {}: {}", e.code, e.description))
        }
        Ok(PubAckReply {
            seq: Some(_),
            duplicate,
            ..
        }) => Ok(duplicate),
        _ => Err(format!(
            "not a PubAck: {:?}",
            String::from_utf8_lossy(&m.payload[..m.payload.len().min(200)])
        )),
    }
}

/// The offset and attempt a reply subject `{inbox}.{offset}.{attempt}` names.
fn parse_reply_subject(subject: &str, inbox: &str) -> Option<(u64, u32)> {
    let rest = subject.strip_prefix(inbox)?.strip_prefix('.')?;
    let (offset, attempt) = rest.split_once('.')?;
    Some((offset.parse().ok()?, attempt.parse().ok()?))
}

/// Publishes through the core client (`PUB subject reply`) rather than `jetstream::Context`'s
/// `publish`, which per message takes a semaphore permit, a oneshot channel, a fresh inbox
/// and two timers: here one subscription, `{inbox}.>`, receives every PubAck, its subject
/// names the offset and the attempt, and the run loop's tick finds the publishes whose
/// PubAck is late.
pub(crate) struct Publisher {
    client: Client,
    js: jetstream::Context,
    settings: PublishSettings,
    maker: MessageMaker,
    metrics: Arc<BridgeMetrics>,
    shared: Arc<Shared>,
    window: Option<AckWindow>,
    pending: HashMap<u64, Pending>,
    /// Publishes sent and awaiting their reply (`pending` entries with `sent`).
    in_flight: usize,
    /// Retries waiting out their backoff; each yields its offset.
    retries: FuturesUnordered<BoxFuture<'static, u64>>,
    /// The reply subjects' prefix.
    inbox: String,
    /// Offsets the resume scan found in the stream.
    present: HashSet<u64>,
    /// Records received, the first outside the window's span: sent as the window moves.
    held: VecDeque<OutMessage>,
    /// A resume scan is due: nothing is sent until the in-flight publishes are settled.
    rescan: bool,
    /// Retries that came due while a scan waited.
    due: VecDeque<u64>,
    dup_window: Duration,
    /// Subjects by topic id, made from the template once.
    subjects: HashMap<u16, Subject>,
}

impl Publisher {
    pub(crate) fn new(
        client: Client,
        settings: PublishSettings,
        maker: MessageMaker,
        metrics: Arc<BridgeMetrics>,
        shared: Arc<Shared>,
    ) -> Self {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(settings.ack_timeout);
        let inbox = client.new_inbox();
        Self {
            client,
            js,
            settings,
            maker,
            metrics,
            shared,
            window: None,
            pending: HashMap::new(),
            in_flight: 0,
            retries: FuturesUnordered::new(),
            inbox,
            present: HashSet::new(),
            held: VecDeque::new(),
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
        let Some(mut replies) = self.subscribe_replies().await else {
            return;
        };
        let mut open = true;
        // Wakes the loop now and then for `abort` and late PubAcks (one timer for the run).
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.shared.abort.load(Ordering::Relaxed) {
                return;
            }
            if self.rescan && self.in_flight == 0 && self.retries.is_empty() {
                self.resume_scan(&stream).await;
                continue;
            }
            if !open && self.pending.is_empty() && self.held.is_empty() {
                self.shared.drained.store(true, Ordering::Release);
                return;
            }
            let take = open && self.held.is_empty() && !self.rescan;
            tokio::select! {
                item = rx.recv(), if take => match item {
                    None => open = false,
                    Some(Item::Start(from)) => {
                        if self.window.is_none() {
                            self.window = Some(AckWindow::new(from, self.settings.max_in_flight));
                            self.rescan = true;
                        }
                    }
                    Some(Item::Records(batch)) => {
                        self.held.extend(batch);
                        self.offer_held().await;
                    }
                },
                Some(reply) = replies.next() => self.on_reply(&reply).await,
                Some(offset) = self.retries.next(), if !self.retries.is_empty() => {
                    self.retry_due(offset).await;
                }
                _ = tick.tick() => self.check_late(),
            }
        }
    }

    /// The subscription for the PubAcks; retries until it is made (`None`: aborted).
    async fn subscribe_replies(&mut self) -> Option<Subscriber> {
        let mut attempts = 0;
        loop {
            if self.shared.abort.load(Ordering::Relaxed) {
                return None;
            }
            match self.client.subscribe(format!("{}.>", self.inbox)).await {
                Ok(s) => return Some(s),
                Err(e) => {
                    self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    self.metrics
                        .set_error(format!("subscribing to the PubAcks: {e} (retrying)"));
                    tokio::time::sleep(backoff(attempts, self.settings.max_backoff)).await;
                    attempts += 1;
                }
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

    /// Sends the held records while the window admits them.
    async fn offer_held(&mut self) {
        while !self.rescan
            && let Some(m) = self.held.front()
        {
            let Some(window) = self.window.as_mut() else {
                unreachable!("the consumer thread sends Start before any record");
            };
            if !window.admits(m.offset) {
                return;
            }
            let m = self.held.pop_front().expect("a front");
            window.push(m.offset);
            if self.present.remove(&m.offset) {
                self.metrics.skipped.fetch_add(1, Ordering::Relaxed);
                window.ack(m.offset);
                self.publish_committable();
                continue;
            }
            let offset = m.offset;
            self.pending.insert(
                offset,
                Pending {
                    msg: m,
                    first_sent: Instant::now(),
                    sent: None,
                    attempts: 0,
                },
            );
            self.send(offset).await;
        }
    }

    /// Sends the current attempt of `offset` (a `pending` entry not in flight).
    async fn send(&mut self, offset: u64) {
        let p = self.pending.get_mut(&offset).expect("a pending publish");
        let maker = &self.maker;
        let subject = self
            .subjects
            .entry(p.msg.topic())
            .or_insert_with(|| Subject::from(maker.subject(&p.msg)))
            .clone();
        let headers = maker.headers(&p.msg);
        let reply = format!("{}.{offset}.{}", self.inbox, p.attempts);
        p.sent = Some(Instant::now());
        let payload = p.msg.payload.clone();
        self.in_flight += 1;
        self.metrics.published.fetch_add(1, Ordering::Relaxed);
        // Waits only while the client's buffer is full (NATS slow or away).
        let queued = tokio::time::timeout(
            self.settings.ack_timeout,
            self.client
                .publish_with_reply_and_headers(subject, reply, headers, payload),
        )
        .await;
        match queued {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.failed(offset, &e.to_string()),
            Err(_) => self.failed(offset, "the NATS client's buffer stayed full"),
        }
    }

    /// A reply on the PubAck subscription.
    async fn on_reply(&mut self, reply: &async_nats::Message) {
        let Some((offset, attempt)) = parse_reply_subject(reply.subject.as_str(), &self.inbox)
        else {
            return;
        };
        let Some(p) = self.pending.get(&offset) else {
            return; // already settled (a reply to an earlier attempt)
        };
        match read_reply(reply) {
            Ok(duplicate) => {
                let m = &self.metrics;
                m.acked.fetch_add(1, Ordering::Relaxed);
                if duplicate {
                    m.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(sent) = p.sent {
                    let ns = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    m.latency_ns_sum.fetch_add(ns, Ordering::Relaxed);
                    m.latency_count.fetch_add(1, Ordering::Relaxed);
                    self.in_flight -= 1;
                }
                // A retry waiting for its backoff finds no entry and does nothing.
                self.pending.remove(&offset);
                self.due.retain(|&o| o != offset);
                if let Some(w) = self.window.as_mut() {
                    w.ack(offset);
                }
                self.publish_committable();
                self.offer_held().await;
            }
            // An error for an attempt already given up (a late reply) changes nothing.
            Err(e) if p.sent.is_some() && p.attempts == attempt => self.failed(offset, &e),
            Err(_) => {}
        }
    }

    /// Every publish whose PubAck is later than `ack_timeout` failed.
    fn check_late(&mut self) {
        if self.in_flight == 0 {
            return;
        }
        let timeout = self.settings.ack_timeout;
        let late: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.sent.is_some_and(|s| s.elapsed() > timeout))
            .map(|(&o, _)| o)
            .collect();
        for offset in late {
            self.failed(offset, "no PubAck in time");
        }
    }

    /// The current attempt of `offset` failed: retried after a backoff (or after the scan).
    fn failed(&mut self, offset: u64, e: &str) {
        self.metrics.errors.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .set_error(format!("publish of offset {offset}: {e} (retrying)"));
        let p = self.pending.get_mut(&offset).expect("a pending publish");
        if p.sent.take().is_some() {
            self.in_flight -= 1;
        }
        let pause = backoff(p.attempts, self.settings.max_backoff);
        p.attempts += 1;
        if self.rescan {
            self.due.push_back(offset);
            return;
        }
        self.retries.push(Box::pin(async move {
            tokio::time::sleep(pause).await;
            offset
        }));
    }

    /// A retry's backoff is over.
    async fn retry_due(&mut self, offset: u64) {
        let Some(p) = self.pending.get(&offset) else {
            return; // a late PubAck of an earlier attempt settled it
        };
        if self.rescan || p.first_sent.elapsed() > self.dup_window / 2 {
            // JetStream may have stored the first send and forgotten its id by the
            // time this one lands: look in the stream first.
            self.rescan = true;
            self.due.push_back(offset);
        } else {
            self.send(offset).await;
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
                self.send(offset).await;
            }
        }
        self.publish_committable();
        self.offer_held().await;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(payload: &str, status: Option<StatusCode>) -> async_nats::Message {
        async_nats::Message {
            subject: "_INBOX.x.7.0".into(),
            reply: None,
            payload: payload.to_owned().into(),
            headers: None,
            status,
            description: None,
            length: payload.len(),
        }
    }

    #[test]
    fn replies_are_told_apart_by_offset_attempt_and_outcome() {
        assert_eq!(
            parse_reply_subject("_INBOX.x.7.2", "_INBOX.x"),
            Some((7, 2))
        );
        assert_eq!(parse_reply_subject("_INBOX.xy.7.2", "_INBOX.x"), None);
        assert_eq!(parse_reply_subject("_INBOX.x.7", "_INBOX.x"), None);
        assert_eq!(parse_reply_subject("_INBOX.x.a.2", "_INBOX.x"), None);
        assert_eq!(
            read_reply(&reply(r#"{"stream":"S","seq":3}"#, None)),
            Ok(false)
        );
        assert_eq!(
            read_reply(&reply(r#"{"stream":"S","seq":3,"duplicate":true}"#, None)),
            Ok(true)
        );
        let e = read_reply(&reply(
            r#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#,
            None,
        ))
        .unwrap_err();
        assert!(e.contains("503") && e.contains("maximum messages"), "{e}");
        let e = read_reply(&reply("", Some(StatusCode::NO_RESPONDERS))).unwrap_err();
        assert!(e.contains("no responders"), "{e}");
        assert!(read_reply(&reply("+OK", None)).is_err());
    }
}
