//! `[admin]`: the admin HTTP endpoint.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::de_listen;

/// `[admin]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Where to listen; `None` (`""` or `"off"`) disables the endpoint.
    #[serde(deserialize_with = "de_listen")]
    pub listen: Option<SocketAddr>,
    /// A deadline for each connection's whole exchange, milliseconds: the request head must
    /// be complete within it (else `408`), and the answer written.
    pub request_timeout_ms: u64,
    /// Connections open at once; when full, the oldest one still sending its request is
    /// closed (`408`) to make room, else the newcomer is answered `503`.
    pub max_connections: usize,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            request_timeout_ms: 2000,
            max_connections: 128,
        }
    }
}

impl AdminSection {
    /// `request_timeout_ms` as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}
