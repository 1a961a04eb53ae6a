//! `[udp]`: UDP ingest.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{MAX_UDP_DATAGRAM, de_listen};

/// `[udp]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UdpSection {
    /// Where to listen; `None` (`""` or `"off"`) disables UDP ingest.
    #[serde(deserialize_with = "de_listen")]
    pub listen: Option<SocketAddr>,
    /// Datagrams per `recvmmsg`.
    pub batch: usize,
    /// The longest datagram accepted, bytes.
    pub max_datagram: usize,
    /// With `tcp.auth = "token"`, whether UDP may stay on without authentication (UDP has
    /// no HELLO to carry a token): `false` (the default) refuses that config.
    pub allow_unauthenticated: bool,
}

impl Default for UdpSection {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 7071))),
            batch: 64,
            max_datagram: MAX_UDP_DATAGRAM,
            allow_unauthenticated: false,
        }
    }
}
