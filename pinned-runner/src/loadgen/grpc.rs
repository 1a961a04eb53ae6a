//! `loadgen --transport grpc`: the load over the engine's gRPC gateway with tonic's client
//! (here, in the command, so that the `pinstream-client` library stays free of tokio and
//! tonic). One thread per connection, each with a current-thread runtime and its own HTTP/2
//! connection, as the other transports have one socket per thread.
//!
//! Stream mode (the default): one `PublishStream` per connection, requests of `--batch`
//! events, at most `--inflight` requests unacknowledged; latency is a request's send to its
//! ack. `--grpc-unary`: one `Publish` at a time per connection. UNAVAILABLE and
//! RESOURCE_EXHAUSTED are refusals before anything was taken: the same request is sent again
//! after a pause, and nothing counts twice.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use pinstream_core::event::Priority;
use pinstream_host::gateway::grpc::proto::ingest_client::IngestClient;
use pinstream_host::gateway::grpc::proto::{
    Event, Priority as ProtoPriority, PublishRequest, PublishResponse,
};
use pinstream_host::loadgen::{AckWait, LoadConfig, LoadReport, Outcomes};
use tokio::sync::{Semaphore, mpsc};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request};

/// The pause before a refused request is sent again.
const RETRY_PAUSE: Duration = Duration::from_millis(5);

/// What one connection did.
struct ConnDone {
    sent: u64,
    requests: u64,
    bytes: u64,
    end: Duration,
    outcomes: Outcomes,
    latency: Histogram<u64>,
}

fn proto_priority(p: Priority) -> ProtoPriority {
    match p {
        Priority::Critical => ProtoPriority::Critical,
        Priority::High => ProtoPriority::High,
        Priority::Medium => ProtoPriority::Medium,
        Priority::Low => ProtoPriority::Low,
        Priority::Batch => ProtoPriority::Batch,
    }
}

/// Runs the load over `connections` connections and reports as the other transports do.
///
/// # Errors
/// A connection that cannot be made, a call refused for another reason than back-pressure
/// or rate, or settings the gRPC load does not take (consumers, a rate, `--ack none`).
pub(super) fn run(cfg: &LoadConfig, connections: usize, unary: bool) -> io::Result<LoadReport> {
    let invalid = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, m.to_owned());
    if cfg.consumers > 0 {
        return Err(invalid(
            "--consumers is not supported with --transport grpc",
        ));
    }
    if cfg.rate != 0 {
        return Err(invalid("--rate is not supported with --transport grpc"));
    }
    if cfg.ack == AckWait::None {
        return Err(invalid(
            "--ack none is not supported with --transport grpc (every request is answered)",
        ));
    }
    if connections == 0 {
        return Err(invalid("at least one connection is needed"));
    }
    let n = connections as u64;
    let start = Instant::now();
    let epoch_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let cfg = Arc::new(cfg.clone());
    let handles: Vec<_> = (0..connections)
        .map(|c| {
            let cfg = Arc::clone(&cfg);
            let share = if cfg.events == u64::MAX {
                u64::MAX
            } else {
                cfg.events / n + u64::from((c as u64) < cfg.events % n)
            };
            std::thread::Builder::new()
                .name(format!("loadgen-grpc-{c}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    let plan = Plan {
                        cfg: &cfg,
                        events: share,
                        id_first: cfg.id_base.wrapping_add(c as u64),
                        id_stride: n,
                        start,
                        epoch_ns,
                    };
                    rt.block_on(connection(&plan, unary))
                })
        })
        .collect::<io::Result<_>>()?;
    let mut report = LoadReport {
        transport: cfg.transport,
        ack: AckWait::Wait,
        connections,
        sent: 0,
        frames: 0,
        bytes: 0,
        elapsed: Duration::ZERO,
        outcomes: Some(Outcomes::default()),
        reject_frames: 0,
        first_reject: None,
        ack_latency: None,
        consume: None,
    };
    let mut first_error = None;
    for h in handles {
        match h.join() {
            Ok(Ok(d)) => {
                report.sent += d.sent;
                report.frames += d.requests;
                report.bytes += d.bytes;
                report.elapsed = report.elapsed.max(d.end);
                if let Some(o) = &mut report.outcomes {
                    o.stored += d.outcomes.stored;
                    o.duplicates += d.outcomes.duplicates;
                    o.dead_lettered += d.outcomes.dead_lettered;
                    o.rejected += d.outcomes.rejected;
                }
                match &mut report.ack_latency {
                    None => report.ack_latency = Some(d.latency),
                    Some(l) => {
                        let _ = l.add(&d.latency);
                    }
                }
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(io::Error::other("a loadgen thread panicked"));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

struct Plan<'a> {
    cfg: &'a LoadConfig,
    events: u64,
    id_first: u64,
    id_stride: u64,
    start: Instant,
    epoch_ns: u64,
}

impl Plan<'_> {
    /// The request of events `first..first + n` of this connection.
    fn request(&self, first: u64, n: u64, sequence: u64, payload: &bytes::Bytes) -> PublishRequest {
        let cfg = self.cfg;
        let cycle = cfg.priorities.len() as u64;
        let ts = self
            .epoch_ns
            .saturating_add(u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX));
        let events = (first..first + n)
            .map(|k| {
                let id = self.id_first.wrapping_add(k.wrapping_mul(self.id_stride));
                let p = cfg.priorities[(k % cycle) as usize];
                let topic = (k / cycle) % u64::from(cfg.topics);
                Event {
                    topic: topic.to_string(),
                    priority: proto_priority(p).into(),
                    id,
                    value: Some(id as i64),
                    timestamp: ts,
                    payload: payload.clone(),
                }
            })
            .collect();
        PublishRequest { events, sequence }
    }

    fn done(&self) -> bool {
        self.cfg.duration.is_some_and(|d| self.start.elapsed() >= d)
    }
}

async fn channel(cfg: &LoadConfig) -> io::Result<Channel> {
    let addr = cfg.addr;
    let err = |e: &dyn std::fmt::Display| io::Error::other(format!("gRPC {addr}: {e}"));
    let ep = match &cfg.http.tls_ca {
        None => Endpoint::from_shared(format!("http://{addr}")).map_err(|e| err(&e))?,
        Some(ca) => {
            let pem = std::fs::read(ca)
                .map_err(|e| io::Error::new(e.kind(), format!("--cacert {}: {e}", ca.display())))?;
            let name = cfg
                .http
                .server_name
                .clone()
                .unwrap_or_else(|| addr.ip().to_string());
            // Connected to the address given; the certificate must carry `name`.
            Endpoint::from_shared(format!("https://{addr}"))
                .map_err(|e| err(&e))?
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(pem))
                        .domain_name(name),
                )
                .map_err(|e| err(&e))?
        }
    };
    ep.connect_timeout(cfg.ack_timeout)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| err(&e))
}

fn with_token<T>(cfg: &LoadConfig, msg: T) -> io::Result<Request<T>> {
    let mut r = Request::new(msg);
    if let Some(t) = &cfg.http.token {
        let v = format!("Bearer {t}")
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "--token: not ASCII"))?;
        r.metadata_mut().insert("authorization", v);
    }
    Ok(r)
}

fn add(o: &mut Outcomes, r: &PublishResponse) {
    o.stored += r.stored;
    o.duplicates += r.duplicates;
    o.dead_lettered += r.dead_lettered;
    o.rejected += r.rejected;
}

async fn connection(plan: &Plan<'_>, unary: bool) -> io::Result<ConnDone> {
    let cfg = plan.cfg;
    let mut client = IngestClient::new(channel(cfg).await?)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let payload = bytes::Bytes::from(vec![b'x'; cfg.payload]);
    let mut latency = Histogram::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| io::Error::other(format!("histogram: {e}")))?;
    let mut d = ConnDone {
        sent: 0,
        requests: 0,
        bytes: 0,
        end: Duration::ZERO,
        outcomes: Outcomes::default(),
        latency: latency.clone(),
    };
    let addr = cfg.addr;
    if unary {
        while d.sent < plan.events && !plan.done() {
            let n = u64::from(cfg.batch).min(plan.events - d.sent);
            let req = plan.request(d.sent, n, 0, &payload);
            let len = prost::Message::encoded_len(&req) as u64;
            let r = loop {
                let t0 = Instant::now();
                match client.publish(with_token(cfg, req.clone())?).await {
                    Ok(r) => {
                        let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        let _ = latency.record(ns.max(1));
                        break r.into_inner();
                    }
                    Err(s) if matches!(s.code(), Code::Unavailable | Code::ResourceExhausted) => {
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    Err(s) => {
                        return Err(io::Error::other(format!("{addr}: {s}")));
                    }
                }
            };
            add(&mut d.outcomes, &r);
            d.sent += n;
            d.requests += 1;
            d.bytes += len;
            d.end = plan.start.elapsed();
        }
        d.latency = latency;
        return Ok(d);
    }
    // Stream mode: a sender task feeds the stream within the window; acks come in order.
    let window = Arc::new(Semaphore::new(cfg.window.max(1)));
    let (req_tx, req_rx) = mpsc::channel::<PublishRequest>(cfg.window.max(1));
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<(Instant, u64, u64)>();
    let stream = tokio_stream::wrappers::ReceiverStream::new(req_rx);
    let mut acks = client
        .publish_stream(with_token(cfg, stream)?)
        .await
        .map_err(|s| io::Error::other(format!("{addr}: {s}")))?
        .into_inner();
    let sender = {
        let window = Arc::clone(&window);
        let total = plan.events;
        let batch = u64::from(cfg.batch);
        let duration = cfg.duration;
        let start = plan.start;
        // The requests are made here (the plan is not 'static): a task only sends them.
        let mut reqs = Vec::new();
        let mut first = 0;
        let mut seq = 0;
        // Without a duration the whole run is known; with one, made as it goes below.
        if duration.is_none() {
            while first < total {
                let n = batch.min(total - first);
                reqs.push((plan.request(first, n, seq, &payload), n));
                first += n;
                seq += 1;
            }
        }
        let plan_cfg = (plan.id_first, plan.id_stride, plan.epoch_ns, cfg.clone());
        tokio::spawn(async move {
            let (id_first, id_stride, epoch_ns, cfg) = plan_cfg;
            let p = Plan {
                cfg: &cfg,
                events: total,
                id_first,
                id_stride,
                start,
                epoch_ns,
            };
            let mut queued = reqs.into_iter();
            loop {
                let (req, n) = match queued.next() {
                    Some(r) => r,
                    None if duration.is_some() && !p.done() && first < total => {
                        let n = batch.min(total - first);
                        let r = p.request(first, n, seq, &payload);
                        first += n;
                        seq += 1;
                        (r, n)
                    }
                    None => break,
                };
                let Ok(permit) = window.acquire().await else {
                    break;
                };
                permit.forget();
                let len = prost::Message::encoded_len(&req) as u64;
                if sent_tx.send((Instant::now(), n, len)).is_err() {
                    break;
                }
                if req_tx.send(req).await.is_err() {
                    break;
                }
            }
            // Dropping req_tx half-closes the stream.
        })
    };
    while let Some(a) = acks
        .message()
        .await
        .map_err(|s| io::Error::other(format!("{addr}: {s}")))?
    {
        let Some((t0, n, len)) = sent_rx.recv().await else {
            return Err(io::Error::other(format!("{addr}: an ack for no request")));
        };
        window.add_permits(1);
        if a.code != 0 {
            return Err(io::Error::other(format!(
                "{addr}: request {} refused (code {}): {}",
                a.sequence, a.code, a.message
            )));
        }
        let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let _ = latency.record(ns.max(1));
        if let Some(r) = &a.response {
            add(&mut d.outcomes, r);
        }
        d.sent += n;
        d.requests += 1;
        d.bytes += len;
        d.end = plan.start.elapsed();
    }
    let _ = sender.await;
    d.latency = latency;
    Ok(d)
}
