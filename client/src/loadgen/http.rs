//! The load over the HTTP gateway (`POST /v1/events`, NDJSON): one keep-alive HTTP/1.1
//! connection per loadgen connection, plain or TLS (rustls), requests one at a time.
//!
//! The client is written by hand over a blocking `TcpStream` (or a rustls stream over it):
//! a load generator needs one request shape and answers with a `Content-Length`, and a
//! blocking loop per thread keeps the measurement free of an async runtime's scheduling.
//! What it does not understand (a chunked answer, `Connection: close`, a status other than
//! 200/202/429/503) ends the run with an error naming it; 429 and 503 are refusals before
//! anything was taken, so the same request is sent again after a pause and nothing counts
//! twice.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use super::conn::{ConnReport, Plan};
use super::{AckWait, LoadConfig, Outcomes, Progress};

/// The pause before a request answered 429 or 503 is sent again.
const RETRY_PAUSE: Duration = Duration::from_millis(5);

/// What the HTTP transport needs besides the address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpOptions {
    /// Sent as `Authorization: Bearer <token>`; over TCP, carried in each connection's
    /// HELLO (for an engine with `tcp.auth = "token"`).
    pub token: Option<String>,
    /// HTTPS, trusting the CA certificates of this PEM file.
    pub tls_ca: Option<PathBuf>,
    /// The name the server's certificate must carry; `None`: the address's IP.
    pub server_name: Option<String>,
}

/// A connection to the gateway.
pub(super) enum HttpConn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl HttpConn {
    fn tcp(&self) -> &TcpStream {
        match self {
            HttpConn::Plain(s) => s,
            HttpConn::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for HttpConn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            HttpConn::Plain(s) => s.read(buf),
            HttpConn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for HttpConn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            HttpConn::Plain(s) => s.write(buf),
            HttpConn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            HttpConn::Plain(s) => s.flush(),
            HttpConn::Tls(s) => s.flush(),
        }
    }
}

fn tls_config(path: &PathBuf) -> io::Result<Arc<rustls::ClientConfig>> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(format!("--cacert {}: {e}", path.display())))?;
    for c in certs {
        let c = c.map_err(|e| bad(format!("--cacert {}: {e}", path.display())))?;
        roots
            .add(c)
            .map_err(|e| bad(format!("--cacert {}: {e}", path.display())))?;
    }
    if roots.is_empty() {
        return Err(bad(format!(
            "--cacert {}: no PEM certificate in it",
            path.display()
        )));
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Connects (and with TLS completes the handshake, so a bad certificate is reported before
/// anything is sent).
pub(super) fn connect_http(cfg: &LoadConfig, c: usize) -> io::Result<HttpConn> {
    let addr = cfg.addr;
    let tcp = TcpStream::connect_timeout(&addr, cfg.ack_timeout)
        .map_err(|e| io::Error::new(e.kind(), format!("connection {c} to {addr}: {e}")))?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(cfg.ack_timeout))?;
    tcp.set_write_timeout(Some(cfg.ack_timeout))?;
    let Some(ca) = &cfg.http.tls_ca else {
        return Ok(HttpConn::Plain(tcp));
    };
    let name = match &cfg.http.server_name {
        Some(n) => ServerName::try_from(n.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{n}: {e}")))?,
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let conn = rustls::ClientConnection::new(tls_config(ca)?, name)
        .map_err(|e| io::Error::other(format!("TLS to {addr}: {e}")))?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake with {addr}: {e}")))?;
    }
    Ok(HttpConn::Tls(Box::new(s)))
}

/// One answer: status and body.
struct Answer {
    status: u16,
    body: String,
}

/// Reads one answer with a `Content-Length` body; `buf` keeps what came after it.
fn read_answer(conn: &mut HttpConn, buf: &mut Vec<u8>) -> io::Result<Answer> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = head
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad(format!("not an HTTP answer: {head:?}")))?;
            let mut len = None;
            for line in head.lines().skip(1) {
                let Some((k, v)) = line.split_once(':') else {
                    continue;
                };
                let (k, v) = (k.trim(), v.trim());
                if k.eq_ignore_ascii_case("content-length") {
                    len = Some(
                        v.parse::<usize>()
                            .map_err(|_| bad(format!("bad Content-Length {v:?}")))?,
                    );
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(bad(format!(
                        "an answer with Transfer-Encoding {v} (not handled)"
                    )));
                } else if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
                    return Err(bad(format!(
                        "the server closes the connection (status {status})"
                    )));
                }
            }
            let len =
                len.ok_or_else(|| bad(format!("an answer without Content-Length: {head:?}")))?;
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                buf.drain(..end + 4 + len);
                return Ok(Answer { status, body });
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection before answering",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A number field of the gateway's JSON answer (`"stored":12`).
fn field(body: &str, name: &str) -> Option<u64> {
    let key = format!("\"{name}\":");
    let at = body.find(&key)? + key.len();
    body[at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// Writes the NDJSON body of events `first..first + n` of this connection.
fn body(plan: &Plan, first: u64, n: u64, ts: u64, payload: &str, out: &mut Vec<u8>) {
    let cfg = &plan.cfg;
    out.clear();
    let cycle = cfg.priorities.len() as u64;
    for k in first..first + n {
        let id = plan.id_first.wrapping_add(k.wrapping_mul(plan.id_stride));
        let p = cfg.priorities[(k % cycle) as usize];
        let topic = (k / cycle) % u64::from(cfg.topics);
        let _ = writeln!(
            out,
            "{{\"id\":{id},\"topic\":{topic},\"priority\":\"{}\",\"value\":{},\"timestamp\":{ts},\"payload\":\"{payload}\"}}",
            p.name(),
            id as i64
        );
    }
}

/// Sends this connection's events as NDJSON requests of `batch` events, one at a time,
/// recording each request's latency (send to answer).
pub(super) fn run_http(
    plan: &Plan,
    mut conn: HttpConn,
    progress: &Arc<Progress>,
) -> io::Result<ConnReport> {
    let cfg = &plan.cfg;
    let addr = cfg.addr;
    let payload = "x".repeat(cfg.payload);
    let mut latency = Histogram::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| io::Error::other(format!("histogram: {e}")))?;
    let ack = if cfg.ack == AckWait::None {
        "?ack=none"
    } else {
        ""
    };
    let auth = cfg
        .http
        .token
        .as_ref()
        .map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let (mut sent, mut requests, mut bytes) = (0u64, 0u64, 0u64);
    let mut outcomes = Outcomes::default();
    let mut end = Duration::ZERO;
    let (mut req, mut ndjson, mut buf) = (Vec::new(), Vec::new(), Vec::new());
    while sent < plan.events && !progress.aborted() {
        let now = plan.start.elapsed();
        if cfg.duration.is_some_and(|d| now >= d) {
            break;
        }
        if plan.rate != 0 {
            let due = plan.due(sent);
            if cfg.duration.is_some_and(|d| due >= d) {
                break;
            }
            if let Some(wait) = due.checked_sub(now) {
                std::thread::sleep(wait);
            }
        }
        let n = u64::from(cfg.batch).min(plan.events - sent);
        let ts = plan
            .epoch_ns
            .saturating_add(u64::try_from(plan.start.elapsed().as_nanos()).unwrap_or(u64::MAX));
        body(plan, sent, n, ts, &payload, &mut ndjson);
        req.clear();
        let _ = write!(
            req,
            "POST /v1/events{ack} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-ndjson\r\n{auth}Content-Length: {}\r\n\r\n",
            ndjson.len()
        );
        req.extend_from_slice(&ndjson);
        let answer = loop {
            let t0 = Instant::now();
            conn.write_all(&req)
                .and_then(|()| conn.flush())
                .map_err(|e| io::Error::new(e.kind(), format!("sending to {addr}: {e}")))?;
            let a = read_answer(&mut conn, &mut buf)
                .map_err(|e| io::Error::new(e.kind(), format!("answer from {addr}: {e}")))?;
            bytes += req.len() as u64;
            if matches!(a.status, 429 | 503) && !progress.aborted() {
                std::thread::sleep(RETRY_PAUSE);
                continue;
            }
            let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let _ = latency.record(ns.max(1));
            break a;
        };
        match answer.status {
            200 => {
                for (o, name) in [
                    (&mut outcomes.stored, "stored"),
                    (&mut outcomes.duplicates, "duplicates"),
                    (&mut outcomes.dead_lettered, "dead_lettered"),
                    (&mut outcomes.rejected, "rejected"),
                ] {
                    *o += field(&answer.body, name).ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("no \"{name}\" in the answer: {}", answer.body),
                        )
                    })?;
                }
            }
            202 if cfg.ack == AckWait::None => {}
            s => {
                return Err(io::Error::other(format!(
                    "{addr} answered {s}: {}",
                    answer.body.trim_end()
                )));
            }
        }
        sent += n;
        requests += 1;
        end = plan.start.elapsed();
        progress.events_sent.fetch_add(n, Ordering::Relaxed);
        progress.frames_acked.fetch_add(1, Ordering::Relaxed);
    }
    let _ = conn.tcp().shutdown(Shutdown::Both);
    Ok(ConnReport {
        sent,
        frames: requests,
        bytes,
        end,
        outcomes: (cfg.ack == AckWait::Wait).then_some(outcomes),
        reject_frames: 0,
        first_reject: None,
        latency: Some(latency),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_fields_are_read_and_missing_ones_are_none() {
        let b = r#"{"stored":98,"duplicates":2,"dead_lettered":0,"rejected":0,"ack":"durable"}"#;
        assert_eq!(field(b, "stored"), Some(98));
        assert_eq!(field(b, "duplicates"), Some(2));
        assert_eq!(field(b, "nothing"), None);
    }
}
