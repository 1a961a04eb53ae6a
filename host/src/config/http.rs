//! `[http]` and `[auth]`: the HTTP/JSON ingest gateway (issue 17) and the tokens that may
//! use it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::consumers::de_cpu;
use super::de_listen;

/// `[http]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Where to listen; `None` (`""` or `"off"`, the default) runs no gateway.
    #[serde(deserialize_with = "de_listen")]
    pub listen: Option<SocketAddr>,
    /// The CPU of the gateway thread; `None` (`-1` or `"none"`): not pinned. Never one of
    /// the pinned engine threads' CPUs.
    #[serde(deserialize_with = "de_cpu")]
    pub cpu: Option<usize>,
    /// The largest request body accepted; more is answered `413`.
    pub max_body_bytes: usize,
    /// Connections open at once; more are answered `503` and closed.
    pub max_connections: usize,
    /// Milliseconds a request head may take to arrive (else the connection is closed).
    pub header_timeout_ms: u64,
    /// Milliseconds a request body may take to arrive once its head is in (else `408`).
    pub body_timeout_ms: u64,
    /// Events one request may carry; more is answered `413`.
    pub max_events_per_request: usize,
    /// Milliseconds a request waits for room in the ring to the ingest thread before it is
    /// answered `503`.
    pub backpressure_wait_ms: u64,
    /// The `Retry-After` header's seconds on `503` and `429`.
    pub retry_after_secs: u32,
    /// The server certificate chain (PEM); with `tls_key`, the gateway speaks HTTPS only.
    /// `None` (`""`, the default): plain HTTP.
    #[serde(deserialize_with = "de_path")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(deserialize_with = "de_path")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) client certificates must chain to: set, a client without a
    /// valid certificate is refused at the handshake (mutual TLS). Needs `tls_cert`.
    #[serde(deserialize_with = "de_path")]
    pub tls_client_ca: Option<PathBuf>,
}

/// A path, `""` meaning none.
pub(super) fn de_path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let s = String::deserialize(d)?;
    Ok((!s.trim().is_empty()).then(|| PathBuf::from(s)))
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            listen: None,
            cpu: None,
            max_body_bytes: 1 << 20,
            max_connections: 256,
            header_timeout_ms: 5_000,
            body_timeout_ms: 10_000,
            max_events_per_request: 10_000,
            backpressure_wait_ms: 100,
            retry_after_secs: 1,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

impl HttpSection {
    /// `header_timeout_ms` as a duration.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    /// `body_timeout_ms` as a duration.
    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }

    /// `backpressure_wait_ms` as a duration.
    pub fn backpressure_wait(&self) -> Duration {
        Duration::from_millis(self.backpressure_wait_ms)
    }
}

/// `[auth]`: who may send. No token configured: the HTTP gateway takes requests without
/// authentication (and the config warns when it listens beyond loopback).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// `[[auth.tokens]]`.
    pub tokens: Vec<TokenSection>,
    /// A TOML file of more `[[tokens]]` entries (the same fields), so the hashes can live
    /// apart from the config (its own owner and mode, its own deployment); read with the
    /// config, its entries after the config's own. `None` (`""`, the default): none.
    #[serde(deserialize_with = "de_path")]
    pub tokens_file: Option<PathBuf>,
}

/// The contents of `auth.tokens_file`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct TokensFile {
    /// `[[tokens]]`.
    pub(super) tokens: Vec<TokenSection>,
}

/// One `[[auth.tokens]]` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenSection {
    /// A name for logs and metrics (never the token).
    pub name: String,
    /// The SHA-256 of the token, 64 hex digits (`pinstream token-hash`, or
    /// `printf %s "$TOKEN" | sha256sum`).
    pub sha256: String,
    /// The topics (names of `pipeline.topics`) the token may send to; `["*"]`: all.
    pub topics: Vec<String>,
    /// Events per second the token may send (`0`: unlimited); over it, `429`.
    pub rate: u64,
    /// Events the token may send at once above the rate (the bucket's size; at least 1 when
    /// `rate` is set).
    pub burst: u32,
}

impl TokenSection {
    /// The hash as 32 bytes, if it is 64 hex digits.
    pub fn hash_bytes(&self) -> Option<[u8; 32]> {
        let s = self.sha256.trim();
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(out)
    }
}
