//! `[grpc]`: the gRPC ingest gateway (issue 17). It runs on the HTTP gateway's thread (one
//! gateway thread, one pair of rings to the ingest thread; `http.cpu` pins it) and takes the
//! same `[[auth.tokens]]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::de_listen;
use super::http::de_path;

/// `[grpc]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcSection {
    /// Where to listen; `None` (`""` or `"off"`, the default) serves no gRPC.
    #[serde(deserialize_with = "de_listen")]
    pub listen: Option<SocketAddr>,
    /// HTTP/2 connections open at once; more are closed at once.
    pub max_connections: usize,
    /// HTTP/2 streams (calls) one connection may have open at once (the
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` the server announces).
    pub max_concurrent_streams: u32,
    /// The largest request message; a longer one is refused by tonic's decoder
    /// (`OUT_OF_RANGE`) before it is buffered whole.
    pub max_message_bytes: usize,
    /// Events one request may carry; more is `INVALID_ARGUMENT`.
    pub max_events_per_request: usize,
    /// Milliseconds a `Publish` waits for room on its way to the ingest thread before it is
    /// answered `UNAVAILABLE` (a `PublishStream` waits as long as it takes: flow control).
    pub backpressure_wait_ms: u64,
    /// Milliseconds a connection has for its TLS handshake and its HTTP/2 preface (and an
    /// idle connection's keep-alive ping to be answered).
    pub handshake_timeout_ms: u64,
    /// Requests of one `PublishStream` taken but not yet acknowledged, at most; past it the
    /// stream is not read until the oldest is acknowledged.
    pub stream_window: usize,
    /// The server certificate chain (PEM); with `tls_key`, gRPC over TLS only (ALPN `h2`).
    #[serde(deserialize_with = "de_path")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(deserialize_with = "de_path")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) client certificates must chain to (mutual TLS). Needs `tls_cert`.
    #[serde(deserialize_with = "de_path")]
    pub tls_client_ca: Option<PathBuf>,
}

impl Default for GrpcSection {
    fn default() -> Self {
        Self {
            listen: None,
            max_connections: 256,
            max_concurrent_streams: 128,
            max_message_bytes: 4 << 20,
            max_events_per_request: 10_000,
            backpressure_wait_ms: 100,
            handshake_timeout_ms: 5_000,
            stream_window: 64,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

impl GrpcSection {
    /// `backpressure_wait_ms` as a duration.
    pub fn backpressure_wait(&self) -> Duration {
        Duration::from_millis(self.backpressure_wait_ms)
    }

    /// `handshake_timeout_ms` as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
}
