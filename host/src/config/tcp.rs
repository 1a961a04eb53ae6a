//! `[tcp]`: TCP ingest and its per-connection limits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pinstream_core::wire::{BATCH_PREFIX_LEN, EVENT_RECORD_LEN, MIN_FRAME_LEN};
use serde::Deserialize;

use super::consumers::de_cpu;
use super::de_listen;
use super::http::de_path;

/// `[tcp]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpSection {
    /// Where to listen; `None` (`""` or `"off"`) disables TCP ingest.
    #[serde(deserialize_with = "de_listen")]
    pub listen: Option<SocketAddr>,
    /// Connections open at once; more are refused.
    pub max_connections: usize,
    /// The longest frame accepted, bytes.
    pub max_frame_len: u64,
    /// Per-connection receive buffer, bytes.
    pub recv_buffer: u64,
    /// Per-connection ack/reject buffer, bytes.
    pub send_buffer: u64,
    /// Frames accepted but not yet acknowledged, per connection.
    pub inflight_frames: usize,
    /// Events accepted but not yet acknowledged, per connection.
    pub inflight_events: usize,
    /// Malformed frames before the connection is closed.
    pub max_rejects: u32,
    /// A silent connection is closed after this long, milliseconds.
    pub idle_timeout_ms: u64,
    /// A client not reading its acks is closed after this long, milliseconds.
    pub stall_timeout_ms: u64,
    /// A frame begun must arrive whole within this, milliseconds (0: no limit).
    pub frame_timeout_ms: u64,
    /// Connections open at once from one address; more are refused.
    pub max_connections_per_ip: usize,
    /// Producer sessions (protocol version 2) remembered at once.
    pub max_producers: usize,
    /// A producer without a connection is forgotten after this long, milliseconds.
    pub producer_idle_ms: u64,
    /// Whether a connection must authenticate with a token of `[[auth.tokens]]` in its
    /// HELLO (`"token"`) or not (`"none"`, the default: old clients keep working).
    pub auth: TcpAuth,
    /// The server certificate chain (PEM); with `tls_key`, the port speaks TLS only (a
    /// terminator thread off the engine CPUs, [`crate::tlsport`]). `None` (`""`, the
    /// default): plain TCP.
    #[serde(deserialize_with = "de_path")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(deserialize_with = "de_path")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) client certificates must chain to: set, a client without a
    /// valid certificate is refused at the handshake (mutual TLS). Needs `tls_cert`.
    #[serde(deserialize_with = "de_path")]
    pub tls_client_ca: Option<PathBuf>,
    /// Milliseconds a TLS handshake may take before the connection is closed (counted).
    pub tls_handshake_timeout_ms: u64,
    /// The TLS terminator thread's CPU (`None`, `-1` or `"none"`: not pinned); never a
    /// pinned engine thread's CPU.
    #[serde(deserialize_with = "de_cpu")]
    pub tls_cpu: Option<usize>,
}

/// `tcp.auth`: what a connection to the binary port must show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcpAuth {
    /// Nothing: any client may send (a token in a HELLO is ignored).
    #[default]
    None,
    /// A token of `[[auth.tokens]]` in the HELLO; its topics and rate apply to the
    /// connection's events (`docs/PROTOCOL.md` §5).
    Token,
}

impl TcpAuth {
    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            TcpAuth::None => "none",
            TcpAuth::Token => "token",
        }
    }
}

impl Default for TcpSection {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 7070))),
            max_connections: 1024,
            max_frame_len: 65_536,
            recv_buffer: 262_144,
            send_buffer: 65_536,
            inflight_frames: 1024,
            inflight_events: 65_536,
            max_rejects: 100,
            idle_timeout_ms: 300_000,
            stall_timeout_ms: 10_000,
            frame_timeout_ms: 10_000,
            max_connections_per_ip: 256,
            max_producers: 4096,
            producer_idle_ms: 3_600_000,
            auth: TcpAuth::None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_handshake_timeout_ms: 10_000,
            tls_cpu: None,
        }
    }
}

impl TcpSection {
    /// `idle_timeout_ms` as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    /// `stall_timeout_ms` as a duration.
    pub fn stall_timeout(&self) -> Duration {
        Duration::from_millis(self.stall_timeout_ms)
    }
    /// `tls_cert`, `tls_key` and `tls_client_ca` when TLS is on (both of cert and key).
    pub fn tls_files(&self) -> Option<crate::gateway::TlsFiles> {
        let (cert, key) = self.tls_cert.clone().zip(self.tls_key.clone())?;
        Some(crate::gateway::TlsFiles {
            cert,
            key,
            client_ca: self.tls_client_ca.clone(),
        })
    }
    /// The most events one frame of `max_frame_len` bytes can carry.
    pub fn max_events_per_frame(&self) -> u64 {
        self.max_frame_len
            .saturating_sub((MIN_FRAME_LEN + BATCH_PREFIX_LEN) as u64)
            / EVENT_RECORD_LEN as u64
    }
}
