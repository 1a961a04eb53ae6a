//! `[consumers]`: the consumer listener (`docs/PROTOCOL.md` §12).

use std::net::SocketAddr;

use serde::{Deserialize, Deserializer};

use super::de_listen;
use crate::consumers::ConsumerSettings;

/// `[consumers]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumersSection {
    /// Where consumers connect; `None` (`""` or `"off"`) serves none.
    #[serde(deserialize_with = "de_listen")]
    pub listen: Option<SocketAddr>,
    /// The CPU of the serving thread; `None` (`-1` or `"none"`): not pinned. Never one of
    /// the pinned engine threads' CPUs.
    #[serde(deserialize_with = "de_cpu")]
    pub cpu: Option<usize>,
    /// Consumer connections served at once.
    pub max_connections: usize,
    /// Named positions kept, all logs together.
    pub max_named: usize,
    /// Milliseconds a connection has to send its HELLO and SUBSCRIBE; then it is closed.
    pub handshake_timeout_ms: u64,
    /// Whether a consumer must show a token of `[[auth.tokens]]` in its HELLO (`"token"`)
    /// or not (`"none"`, the default). A token grants reading every log and committing
    /// any named consumer's position (logs are per lane, not per topic).
    pub auth: ConsumerAuth,
}

/// `consumers.auth`: what a connection to the consumer listener must show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsumerAuth {
    /// Nothing: anyone who reaches the listener may read (a token in a HELLO is ignored).
    #[default]
    None,
    /// A token of `[[auth.tokens]]` in the HELLO (`docs/PROTOCOL.md` §12); without one the
    /// HELLO is refused `unauthenticated` and the connection closed.
    Token,
}

impl ConsumerAuth {
    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConsumerAuth::None => "none",
            ConsumerAuth::Token => "token",
        }
    }
}

impl Default for ConsumersSection {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 7072))),
            cpu: None,
            max_connections: 64,
            max_named: 1024,
            handshake_timeout_ms: 10_000,
            auth: ConsumerAuth::None,
        }
    }
}

impl ConsumersSection {
    /// The engine's settings.
    pub fn to_settings(&self) -> ConsumerSettings {
        ConsumerSettings {
            listen: self.listen,
            cpu: self.cpu,
            max_connections: self.max_connections,
            max_named: self.max_named,
            handshake_timeout: std::time::Duration::from_millis(self.handshake_timeout_ms),
            auth: self.auth == ConsumerAuth::Token,
        }
    }
}

/// A CPU number, or `-1` / `"none"` for none.
pub(super) fn de_cpu<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Cpu {
        Number(i64),
        Text(String),
    }
    let bad = |what: &str| {
        serde::de::Error::custom(format!(
            "invalid CPU {what}: expected a CPU number (0, 1, …), or -1 / \"none\" for an unpinned serving thread"
        ))
    };
    match Cpu::deserialize(d)? {
        Cpu::Number(-1) => Ok(None),
        Cpu::Number(n) => usize::try_from(n)
            .map(Some)
            .map_err(|_| bad(&n.to_string())),
        Cpu::Text(t) if t.trim().eq_ignore_ascii_case("none") => Ok(None),
        Cpu::Text(t) => t
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| bad(&format!("{t:?}"))),
    }
}
