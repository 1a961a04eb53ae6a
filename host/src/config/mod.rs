//! The configuration: TOML, typed, with an embedded default that serves out of the box.
//!
//! Every limit and capacity has a key; a file names only what it changes (every section and
//! key has a default, equal to the embedded `default.toml`, which documents each key). Loading
//! has two steps:
//!
//! 1. [`Config::from_toml`] / [`Config::load`] parse: syntax, types, unknown keys (at any
//!    depth), enum values and listen addresses. The error names the file, the key path, the
//!    line and column, and what is allowed.
//! 2. [`Config::validate`] checks ranges and relations between keys; it reports every
//!    problem at once, each naming its key, and returns warnings (e.g. a server listening
//!    beyond loopback) for the runner to print.
//!
//! [`Config::load_checked`] does both.
//!
//! ```
//! use pinstream_host::config::{AckSetting, Config};
//!
//! let cfg = Config::from_toml("[engine]\nack = \"accepted\"\n", "inline.toml").unwrap();
//! assert_eq!(cfg.engine.ack, AckSetting::Accepted);
//! assert_eq!(cfg.tcp, Config::embedded_default().tcp); // untouched sections keep defaults
//! assert!(cfg.validate().unwrap().is_empty());
//!
//! let err = Config::from_toml("[tcp]\nmax_frame_lenn = 10\n", "bad.toml").unwrap_err();
//! assert!(err.to_string().starts_with("bad.toml:2:1: tcp.max_frame_lenn: unknown field"));
//! ```

mod admin;
mod bridge;
mod capacity;
mod consumers;
mod control;
mod engine;
mod grpc;
mod http;
mod lines;
mod pipeline;
mod storage;
mod tcp;
mod udp;
mod validate;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

pub use self::admin::AdminSection;
pub use self::bridge::{BridgeSection, SUBJECT_PLACEHOLDERS};
pub use self::capacity::CapacitySection;
pub use self::consumers::ConsumersSection;
pub use self::control::ControlSection;
pub use self::engine::{AckSetting, EngineSection, IdleSetting};
pub use self::grpc::GrpcSection;
pub use self::http::{AuthSection, HttpSection, TokenSection};
pub use self::pipeline::{AlertRuleSection, AlertWhen, BatchStoreSetting, PipelineSection};
pub use self::storage::{DurabilitySetting, StorageSection};
pub use self::tcp::{TcpAuth, TcpSection};
pub use self::udp::UdpSection;
pub use crate::placement::PlacementMode;

use self::lines::{key_path_at, line_column, with_line};

/// The embedded default configuration file (`host/src/default.toml`).
pub const DEFAULT_TOML: &str = include_str!("../default.toml");

/// The origin [`Config::embedded_default`] reports in errors.
pub const EMBEDDED_ORIGIN: &str = "<embedded default config>";

/// The largest frame length `tcp.max_frame_len` may set: 16 MiB.
pub const MAX_FRAME_LEN_LIMIT: u64 = 16 * 1024 * 1024;

/// The most connections `tcp.max_connections` may set: each connection may hold its own
/// rate-limit key (a producer or an address), and the build has 4,096 (`engine::SOURCES`)
/// of them, key 0 being the shared overflow one.
pub const MAX_TCP_CONNECTIONS: usize = 4_095;

/// The largest UDP payload over IPv4.
pub const MAX_UDP_DATAGRAM: usize = 65_507;

/// The highest CPU number the kernel's affinity mask can name (`CPU_SETSIZE - 1`).
pub const MAX_CPU: usize = 1023;

/// The capacity presets this build is compiled for: `[capacity]` must equal one of them.
pub const CAPACITY_PRESETS: &[CapacitySection] = &[CapacitySection::DEFAULT];

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Threads, pinning, idling, acknowledgements.
    pub engine: EngineSection,
    /// TCP ingest.
    pub tcp: TcpSection,
    /// UDP ingest.
    pub udp: UdpSection,
    /// The log on disk.
    pub storage: StorageSection,
    /// Topics, rate limits, processing.
    pub pipeline: PipelineSection,
    /// Compiled sizes.
    pub capacity: CapacitySection,
    /// Control-plane thresholds.
    pub control: ControlSection,
    /// The admin HTTP endpoint.
    pub admin: AdminSection,
    /// The consumer listener.
    pub consumers: ConsumersSection,
    /// The HTTP/JSON ingest gateway.
    pub http: HttpSection,
    /// The gRPC ingest gateway.
    pub grpc: GrpcSection,
    /// Authentication tokens (the HTTP gateway's, in this version).
    pub auth: AuthSection,
    /// Bridges to NATS JetStream (`[[bridge]]` tables; none by default).
    pub bridge: Vec<BridgeSection>,
}

/// Parses a listen address: `""` or `"off"` is `None`, else `ip:port`.
fn de_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    let t = s.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    t.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid listen address {s:?}: expected \"ip:port\" (e.g. \"127.0.0.1:7070\" or \
             \"[::1]:7070\"; host names are not resolved), or \"off\" / \"\" to disable"
        ))
    })
}

/// Why a configuration could not be used.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type or
    /// spelling.
    Parse {
        /// The file (or `<embedded default config>`).
        origin: String,
        /// The dotted key path (e.g. `tcp.max_frame_len`), as far as it could be found.
        key: String,
        /// 1-based line.
        line: usize,
        /// 1-based column (characters).
        column: usize,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// Values out of range or contradicting each other; every problem names its key.
    Invalid {
        /// The file (or `<embedded default config>`).
        origin: String,
        /// One line per problem.
        problems: Vec<String>,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "cannot read config file {}: {source}", path.display())
            }
            ConfigError::Parse {
                origin,
                key,
                line,
                column,
                message,
            } => write!(f, "{origin}:{line}:{column}: {key}: {message}"),
            ConfigError::Invalid { origin, problems } => {
                write!(f, "{origin}: invalid configuration:")?;
                for p in problems {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// `text` as a `T`; `origin` names it in errors, with the key path, line and column.
fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let (line, column) = line_column(text, span.start);
        ConfigError::Parse {
            origin: origin.to_owned(),
            key: key_path_at(text, span),
            line,
            column,
            message: e.message().trim_end().to_owned(),
        }
    })
}

impl Config {
    /// The embedded default (`default.toml`), parsed.
    pub fn embedded_default() -> Self {
        match Self::from_toml(DEFAULT_TOML, EMBEDDED_ORIGIN) {
            Ok(c) => c,
            // The embedded file is a constant; the config tests parse and validate it.
            Err(e) => unreachable!("the embedded default config does not parse: {e}"),
        }
    }

    /// Parses `text`; `origin` names it in errors (a path, or `<inline>`). Keys not in `text`
    /// keep their defaults. Reads `auth.tokens_file` if set (its entries join
    /// `auth.tokens`). Does not check ranges: call [`validate`](Self::validate).
    ///
    /// # Errors
    /// [`ConfigError::Parse`] with the key path, line and column of the first problem (in the
    /// config or in the tokens file, which the origin then names); [`ConfigError::Read`] for a
    /// tokens file that cannot be read.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let mut cfg: Self = parse_toml(text, origin)?;
        if let Some(path) = cfg.auth.tokens_file.clone() {
            // `auth.tokens_file`: its `[[tokens]]` after the config's own `[[auth.tokens]]`.
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let file: http::TokensFile =
                parse_toml(&text, &format!("{} (auth.tokens_file)", path.display()))?;
            cfg.auth.tokens.extend(file.tokens);
        }
        Ok(cfg)
    }

    /// Reads and parses the file at `path`.
    ///
    /// # Errors
    /// [`ConfigError::Read`] if it cannot be read, else as [`from_toml`](Self::from_toml).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// [`load`](Self::load), then [`validate`](Self::validate): the config and its warnings.
    ///
    /// # Errors
    /// Any [`ConfigError`]; an invalid config's error names `path`.
    pub fn load_checked(path: &Path) -> Result<(Self, Vec<String>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg = Self::from_toml(&text, &path.display().to_string())?;
        match cfg.validate() {
            Ok(warnings) => Ok((cfg, warnings)),
            Err(ConfigError::Invalid { problems, .. }) => Err(ConfigError::Invalid {
                origin: path.display().to_string(),
                problems: problems.into_iter().map(|p| with_line(&text, p)).collect(),
            }),
            Err(e) => Err(e),
        }
    }
}
