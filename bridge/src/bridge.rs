//! A running bridge: its two threads and its handle.
//!
//! * `bridge-<name>-consumer` (blocking): a named [`Consumer`] of the engine's log; turns each
//!   record into a message, hands it to the publisher (waiting when the window is full: the
//!   records wait in the engine's files) and every `commit_interval_ms` commits the position
//!   the publisher reports (every record below it has its PubAck).
//! * `bridge-<name>-nats`: runs the [`Publisher`] and the NATS connection on a
//!   current-thread tokio runtime (`bridge-<name>-tokio` threads only look up names).
//!
//! Neither is pinned unless `cpu` says so; neither touches the engine's pinned threads.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_nats::{ConnectOptions, Event};
use pinstream_client::{Consumer, ConsumerOptions};
use pinstream_core::wire::Start;
use pinstream_host::config::BridgeSection;
use pinstream_host::pin;
use tokio::sync::mpsc;

use crate::message::MessageMaker;
use crate::metrics::BridgeMetrics;
use crate::publisher::{Item, PublishSettings, Publisher, Shared};

/// How long [`BridgeHandle::stop`] waits for the PubAcks in flight before it gives up on them
/// (they are then not committed, and sent again by the next start).
const STOP_DRAIN: Duration = Duration::from_secs(5);

/// Records handed to the publisher at once (fewer wake-ups of its thread than one by one).
const BATCH: usize = 256;

/// A started bridge.
#[derive(Debug)]
pub struct BridgeHandle {
    metrics: Arc<BridgeMetrics>,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    consumer: Option<JoinHandle<Result<(), String>>>,
    nats: Option<JoinHandle<()>>,
}

impl BridgeHandle {
    /// Its figures (also for `/metrics`).
    pub fn metrics(&self) -> &Arc<BridgeMetrics> {
        &self.metrics
    }

    /// Whether it stopped on its own (a fatal error: see [`stop`](Self::stop)).
    pub fn is_finished(&self) -> bool {
        self.consumer.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops: no more records are read, the PubAcks in flight are awaited (up to 5 s), the
    /// position is committed.
    ///
    /// # Errors
    /// The error that stopped the bridge on its own, if one did.
    pub fn stop(mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        let r = self.consumer.take().map_or(Ok(()), |t| {
            t.join().unwrap_or_else(|_| Err("panicked".into()))
        });
        self.shared.abort.store(true, Ordering::Relaxed);
        if let Some(t) = self.nats.take() {
            let _ = t.join();
        }
        r
    }
}

impl Drop for BridgeHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.shared.abort.store(true, Ordering::Relaxed);
    }
}

/// Starts the bridge `section` against the engine's consumer listener at `engine`;
/// `topic_names` name the topics by id (`pipeline.topics`) for `{topic_name}`.
///
/// # Errors
/// A section [`BridgeSection::problems`] refuses; threads that cannot be spawned. Nothing
/// about the engine or NATS being reachable: the bridge waits for both (with backoff) and
/// reports in [`BridgeMetrics::last_error`].
pub fn start(
    section: &BridgeSection,
    engine: SocketAddr,
    topic_names: Vec<String>,
) -> io::Result<BridgeHandle> {
    let problems = section.problems(0);
    if !problems.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            problems.join("; "),
        ));
    }
    let log = section.stream_log().expect("checked by problems()");
    let maker = MessageMaker::new(
        log,
        section.source_id(),
        &section.subject,
        topic_names,
        section.fields_as_headers().expect("checked by problems()"),
    );
    let metrics = Arc::new(BridgeMetrics::new(&section.name));
    let shared = Arc::new(Shared::default());
    shared.committable.store(u64::MAX, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let cpu = section.cpu;
    // One thread runs the publisher and the NATS connection (a current-thread runtime):
    // measured faster than the publisher and the connection on two threads, which paid a
    // wake-up and a cross-thread free per message on a machine where nats-server wants the
    // CPUs too.
    let runtime = tokio::runtime::Builder::new_current_thread()
        // Its blocking pool (name lookups) only.
        .thread_name(format!("bridge-{}-tokio", section.name))
        .enable_all()
        .build()?;
    // About a window's worth of records waits in the channel (the rest in the engine).
    let (tx, rx) = mpsc::channel((section.max_in_flight / BATCH).max(2));
    let handle = runtime.handle().clone();

    let settings = PublishSettings {
        stream: section.stream.clone(),
        subjects: section.subjects.clone(),
        replicas: section.replicas,
        max_in_flight: section.max_in_flight as u64,
        ack_timeout: Duration::from_millis(section.ack_timeout_ms),
        max_backoff: Duration::from_millis(section.max_backoff_ms),
    };
    let nats = {
        let section = section.clone();
        let (metrics, shared, maker) = (Arc::clone(&metrics), Arc::clone(&shared), maker.clone());
        std::thread::Builder::new()
            .name(format!("bridge-{}-nats", section.name))
            .spawn(move || {
                if let Some(c) = cpu {
                    let _ = pin::pin_current_thread(c);
                }
                let abort = Arc::clone(&shared);
                let work = async move {
                    let client = loop {
                        match connect(&section, &metrics).await {
                            Ok(c) => break c,
                            Err(e) => {
                                metrics.set_error(format!("NATS: {e}"));
                                if shared.abort.load(Ordering::Relaxed) {
                                    return;
                                }
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                        }
                    };
                    Publisher::new(client, settings, maker, metrics, shared)
                        .run(rx)
                        .await;
                };
                // `abort` ends the work wherever it waits (a NATS request included).
                runtime.block_on(async move {
                    tokio::select! {
                        () = work => {}
                        () = async {
                            while !abort.abort.load(Ordering::Relaxed) {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        } => {}
                    }
                });
                // Publishes still in flight are abandoned (not committed).
                runtime.shutdown_timeout(Duration::from_millis(100));
            })?
    };
    let consumer = {
        let (metrics, shared, stop) =
            (Arc::clone(&metrics), Arc::clone(&shared), Arc::clone(&stop));
        let options = ConsumerOptions {
            log,
            start: Start::Earliest,
            name: Some(section.name.clone()),
            // A few quick attempts inside the consumer; past them this thread reconnects
            // itself, without limit, looking at the stop flag between attempts.
            max_reconnect_attempts: 3,
            // The engine's token (`consumers.auth = "token"`), not NATS's `token`.
            token: section.engine_token.as_ref().map(|t| t.as_bytes().to_vec()),
            ..ConsumerOptions::default()
        };
        let every = Duration::from_millis(section.commit_interval_ms);
        std::thread::Builder::new()
            .name(format!("bridge-{}-consumer", section.name))
            .spawn(move || {
                if let Some(c) = cpu {
                    let _ = pin::pin_current_thread(c);
                }
                let r = ConsumerLoop {
                    engine,
                    options,
                    maker,
                    tx,
                    handle,
                    shared,
                    metrics: Arc::clone(&metrics),
                    stop,
                    every,
                }
                .run();
                if let Err(e) = &r {
                    metrics.set_error(e.clone());
                }
                r
            })?
    };
    Ok(BridgeHandle {
        metrics,
        stop,
        shared,
        consumer: Some(consumer),
        nats: Some(nats),
    })
}

/// The NATS connection with the section's credentials and TLS; once made, it reconnects
/// forever. The first connection is one attempt per server, its caller retrying: its error
/// keeps the reason (async-nats' retrying first connect reports a TLS failure only as
/// "IO error").
async fn connect(
    s: &BridgeSection,
    metrics: &Arc<BridgeMetrics>,
) -> Result<async_nats::Client, String> {
    let mut o = ConnectOptions::new()
        .name(format!("pinstream-bridge-{}", s.name))
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(50 * (1 << attempts.min(5)) as u64).min(Duration::from_secs(1))
        });
    if let Some(t) = &s.token {
        o = o.token(t.clone());
    }
    if let (Some(u), Some(p)) = (&s.user, &s.password) {
        o = o.user_and_password(u.clone(), p.clone());
    }
    if let Some(seed) = &s.nkey_seed {
        o = o.nkey(seed.clone());
    }
    if let Some(f) = &s.creds_file {
        o = o
            .credentials_file(f)
            .await
            .map_err(|e| format!("bridge {}: creds_file {f}: {e}", s.name))?;
    }
    if let Some(ca) = &s.ca_file {
        o = o.add_root_certificates(ca.into()).require_tls(true);
    }
    if let (Some(c), Some(k)) = (&s.client_cert, &s.client_key) {
        o = o.add_client_certificate(c.into(), k.into());
    }
    if s.tls_required {
        o = o.require_tls(true);
    }
    let m = Arc::clone(metrics);
    o = o.event_callback(move |e| {
        let m = Arc::clone(&m);
        async move {
            match e {
                Event::Connected => m.nats_connected.store(1, Ordering::Relaxed),
                Event::Disconnected => {
                    m.nats_connected.store(0, Ordering::Relaxed);
                    m.nats_reconnects.fetch_add(1, Ordering::Relaxed);
                }
                // Why a (re)connection failed: a refused token, user, NKey or creds file, a
                // TLS handshake (an unknown CA, no client certificate), a server down.
                // async-nats retries by itself; without this the bridge showed only
                // `NATS DOWN`, no reason.
                Event::ClientError(e) => m.set_error(format!("NATS: {e} (retrying)")),
                Event::ServerError(e) => m.set_error(format!("NATS server: {e}")),
                _ => {}
            }
        }
    });
    let urls: Vec<&str> = s.nats_url.split(',').map(str::trim).collect();
    let client = o
        .connect(urls)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", s.nats_url))?;
    if client.connection_state() == async_nats::connection::State::Connected {
        metrics.nats_connected.store(1, Ordering::Relaxed);
    }
    Ok(client)
}

struct ConsumerLoop {
    engine: SocketAddr,
    options: ConsumerOptions,
    maker: MessageMaker,
    tx: mpsc::Sender<Item>,
    handle: tokio::runtime::Handle,
    shared: Arc<Shared>,
    metrics: Arc<BridgeMetrics>,
    stop: Arc<AtomicBool>,
    every: Duration,
}

impl ConsumerLoop {
    fn run(self) -> Result<(), String> {
        let mut consumer = None::<Consumer>;
        // The offset after the last record handed to the publisher: a fresh subscription
        // resumes at the committed position, records below this were handed over already.
        let mut handed: Option<u64> = None;
        let mut committed = None::<u64>;
        let mut batch = Vec::with_capacity(BATCH);
        let mut next_commit = Instant::now() + self.every;
        let mut pause = Duration::from_millis(50);
        let mut reconnects_before = 0;
        while !self.stop.load(Ordering::Relaxed) {
            let c = match consumer.as_mut() {
                Some(c) => c,
                None => match Consumer::connect(self.engine, self.options.clone()) {
                    Ok(c) => {
                        let s = c.subscribed();
                        self.metrics
                            .high_watermark
                            .store(s.high_watermark, Ordering::Relaxed);
                        if s.committed != u64::MAX {
                            self.metrics.committed.store(s.committed, Ordering::Relaxed);
                            committed.get_or_insert(s.committed);
                        }
                        if handed.is_none() {
                            handed = Some(s.start_offset);
                            if !self.send(Item::Start(s.start_offset)) {
                                break;
                            }
                        } else {
                            self.metrics
                                .engine_reconnects
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        pause = Duration::from_millis(50);
                        reconnects_before = 0;
                        consumer.insert(c)
                    }
                    Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                        return Err(format!("bridge options: {e}"));
                    }
                    Err(e) => {
                        self.metrics.set_error(format!(
                            "engine consumer listener {}: {e} (retrying)",
                            self.engine
                        ));
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_secs(2));
                        continue;
                    }
                },
            };
            // Records already in the receive buffer join the batch; the batch goes to the
            // publisher when it is full or when no more are at hand.
            let wait = if batch.is_empty() {
                next_commit
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(100))
            } else {
                Duration::ZERO
            };
            let item = match c.next_timeout(wait) {
                Ok(Some(rec)) => {
                    if handed.is_some_and(|h| rec.offset() < h) {
                        None // handed over before a reconnect
                    } else {
                        let m = self.maker.make(&rec).map_err(|e| {
                            format!(
                                "record at offset {} of the {} log does not decode: {e} \
                                 (the bridge stops rather than drop it; `pinstream log verify`)",
                                rec.offset(),
                                self.options.log
                            )
                        })?;
                        handed = Some(m.offset + 1);
                        batch.push(m);
                        (batch.len() >= BATCH).then(|| {
                            Item::Records(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                        })
                    }
                }
                Ok(None) if batch.is_empty() => None,
                Ok(None) => Some(Item::Records(std::mem::replace(
                    &mut batch,
                    Vec::with_capacity(BATCH),
                ))),
                Err(e) => {
                    self.metrics
                        .set_error(format!("engine: {e} (reconnecting)"));
                    self.metrics
                        .engine_reconnects
                        .fetch_add(1, Ordering::Relaxed);
                    consumer = None;
                    continue;
                }
            };
            let c = consumer.as_mut().expect("connected");
            let r = c.reconnects();
            if r > reconnects_before {
                self.metrics
                    .engine_reconnects
                    .fetch_add(r - reconnects_before, Ordering::Relaxed);
                reconnects_before = r;
            }
            self.metrics
                .high_watermark
                .fetch_max(c.high_watermark(), Ordering::Relaxed);
            if let Some(item) = item
                && !self.send_committing(item, &mut consumer, &mut committed, &mut next_commit)
            {
                break;
            }
            if Instant::now() >= next_commit {
                next_commit = Instant::now() + self.every;
                self.commit(&mut consumer, &mut committed);
            }
        }
        // Stopping: let the publisher finish what is in flight (if anything was handed to
        // it), then commit it.
        drop(self.tx);
        let until = Instant::now()
            + if handed.is_some() {
                STOP_DRAIN
            } else {
                Duration::ZERO
            };
        while !self.shared.drained.load(Ordering::Acquire) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        let this = ConsumerLoopTail {
            shared: &self.shared,
            metrics: &self.metrics,
        };
        this.commit(&mut consumer, &mut committed);
        Ok(())
    }

    /// Hands `item` over, waiting for room; commits meanwhile. `false`: stopping or the
    /// publisher is gone.
    fn send_committing(
        &self,
        mut item: Item,
        consumer: &mut Option<Consumer>,
        committed: &mut Option<u64>,
        next_commit: &mut Instant,
    ) -> bool {
        loop {
            match self.tx.try_send(item) {
                Ok(()) => return true,
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
                Err(mpsc::error::TrySendError::Full(back)) => item = back,
            }
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            let tx = self.tx.clone();
            let permit = self.handle.block_on(async move {
                tokio::time::timeout(Duration::from_millis(50), tx.reserve_owned()).await
            });
            match permit {
                Ok(Ok(p)) => {
                    p.send(item);
                    return true;
                }
                Ok(Err(_)) => return false,
                Err(_) => {}
            }
            if Instant::now() >= *next_commit {
                *next_commit = Instant::now() + self.every;
                self.commit(consumer, committed);
            }
        }
    }

    fn send(&self, item: Item) -> bool {
        self.handle.block_on(self.tx.send(item)).is_ok()
    }

    fn commit(&self, consumer: &mut Option<Consumer>, committed: &mut Option<u64>) {
        ConsumerLoopTail {
            shared: &self.shared,
            metrics: &self.metrics,
        }
        .commit(consumer, committed);
    }
}

/// The commit step, usable after the loop gave up its sender.
struct ConsumerLoopTail<'a> {
    shared: &'a Shared,
    metrics: &'a BridgeMetrics,
}

impl ConsumerLoopTail<'_> {
    fn commit(&self, consumer: &mut Option<Consumer>, committed: &mut Option<u64>) {
        let at = self.shared.committable.load(Ordering::Acquire);
        let Some(c) = consumer.as_mut() else { return };
        if at == u64::MAX || committed.is_some_and(|done| done >= at) {
            return;
        }
        match c.commit(at) {
            Ok(stored) => {
                *committed = Some(stored);
                self.metrics.committed.store(stored, Ordering::Relaxed);
            }
            Err(e) => {
                self.metrics.set_error(format!(
                    "commit of offset {at}: {e} (retried at the next interval)"
                ));
                *consumer = None;
            }
        }
    }
}
