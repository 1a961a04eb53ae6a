//! `[[bridge]]`: bridges that forward a stored log to NATS JetStream (issue 16).
//!
//! Plain settings only: the bridge itself (tokio, async-nats) lives in the `pinstream-bridge`
//! crate, which the runner hands these sections to. The host never links a NATS client.

use serde::Deserialize;

use pinstream_core::wire::{self, StreamLog};

/// The placeholders a [`BridgeSection::subject`] template may use.
pub const SUBJECT_PLACEHOLDERS: &[&str] = &["{log}", "{topic}", "{topic_name}", "{source}"];

/// One `[[bridge]]` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeSection {
    /// The consumer name the bridge reads and commits under (`docs/PROTOCOL.md` §12): ASCII
    /// letters, digits, `.`, `_`, `-`, 1 to 64 bytes. Unique per engine and log.
    pub name: String,
    /// The log to forward: `realtime`, `transactional`, `batch`, `dead-letter`, `aggregates`.
    pub log: String,
    /// Where this engine's records come from in the message ids (`Nats-Msg-Id` =
    /// `{source}-{log}-{offset}`); empty: the bridge's `name`. Must differ between the
    /// engines that feed one stream.
    pub source: String,
    /// NATS server URL(s), comma separated (`nats://127.0.0.1:4222`, `tls://…`).
    pub nats_url: String,
    /// The JetStream stream; created (file storage) when missing.
    pub stream: String,
    /// The stream's subjects when the bridge creates it.
    pub subjects: Vec<String>,
    /// The stream's replicas when the bridge creates it (1, 3 or 5 in a cluster).
    pub replicas: usize,
    /// Subject of each message: a template with `{log}`, `{topic}` (the topic id),
    /// `{topic_name}` (its name in `pipeline.topics`, else the id) and `{source}`.
    pub subject: String,
    /// What each message carries besides `Nats-Msg-Id` (which names the source, the log and
    /// the offset): `fields`, the record's fields as `Pinstream-*` headers, or `id`, nothing
    /// else (smaller messages: the ten headers are most of a small event's bytes; the
    /// README's figures).
    pub headers: String,
    /// Publishes awaiting their PubAck at most (a span of offsets).
    pub max_in_flight: usize,
    /// How often the consumer position is committed, milliseconds.
    pub commit_interval_ms: u64,
    /// Bound on one publish's PubAck before it is retried, milliseconds.
    pub ack_timeout_ms: u64,
    /// Longest pause between retries of a publish (they start at 50 ms and double).
    pub max_backoff_ms: u64,
    /// Token authentication (to NATS).
    pub token: Option<String>,
    /// The token the bridge's consumer shows the engine (its HELLO), for an engine with
    /// `consumers.auth = "token"`; not NATS's `token`. `None`: none.
    pub engine_token: Option<String>,
    /// User/password authentication (both or neither).
    pub user: Option<String>,
    /// See `user`.
    pub password: Option<String>,
    /// NKey seed (`SU…`) authentication.
    pub nkey_seed: Option<String>,
    /// A `.creds` file (JWT + NKey seed).
    pub creds_file: Option<String>,
    /// A PEM file of CA certificates to trust (implies TLS).
    pub ca_file: Option<String>,
    /// A client certificate and its key (PEM) for mutual TLS (both or neither).
    pub client_cert: Option<String>,
    /// See `client_cert`.
    pub client_key: Option<String>,
    /// Require TLS even without a `ca_file`.
    pub tls_required: bool,
    /// Pin the bridge's threads to this CPU; `None`: not pinned (the default).
    pub cpu: Option<usize>,
}

impl Default for BridgeSection {
    fn default() -> Self {
        Self {
            name: String::new(),
            log: "realtime".to_owned(),
            source: String::new(),
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            stream: "PINSTREAM".to_owned(),
            subjects: vec!["pinstream.>".to_owned()],
            replicas: 1,
            subject: "pinstream.{log}.{topic}".to_owned(),
            headers: "fields".to_owned(),
            max_in_flight: 1024,
            commit_interval_ms: 200,
            ack_timeout_ms: 5000,
            max_backoff_ms: 2000,
            token: None,
            engine_token: None,
            user: None,
            password: None,
            nkey_seed: None,
            creds_file: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            tls_required: false,
            cpu: None,
        }
    }
}

impl BridgeSection {
    /// The log it forwards (checked by [`problems`](Self::problems)).
    pub fn stream_log(&self) -> Option<StreamLog> {
        StreamLog::from_name(&self.log)
    }

    /// The message-id source: `source`, else `name`.
    pub fn source_id(&self) -> &str {
        if self.source.is_empty() {
            &self.name
        } else {
            &self.source
        }
    }

    /// Whether the record's fields go into headers (`headers = "fields"`); `None` for a
    /// value other than `fields` and `id`.
    pub fn fields_as_headers(&self) -> Option<bool> {
        match self.headers.as_str() {
            "fields" => Some(true),
            "id" => Some(false),
            _ => None,
        }
    }

    /// What is wrong with the table `bridge[index]`, one line per problem naming its key.
    pub fn problems(&self, index: usize) -> Vec<String> {
        let mut p = Vec::new();
        let key = |k: &str| format!("bridge[{index}].{k}");
        if !wire::valid_consumer_name(self.name.as_bytes()) {
            p.push(format!(
                "{} = {:?}: must be 1 to {} bytes of ASCII letters, digits, '.', '_', '-' (the \
                 consumer name the bridge commits under)",
                key("name"),
                self.name,
                wire::MAX_CONSUMER_NAME
            ));
        }
        if self.stream_log().is_none() {
            p.push(format!(
                "{} = {:?}: must be realtime, transactional, batch, dead-letter or aggregates",
                key("log"),
                self.log
            ));
        }
        if !self.source.is_empty()
            && !self
                .source
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            p.push(format!(
                "{} = {:?}: ASCII letters, digits, '.', '_', '-' only (it goes into message ids)",
                key("source"),
                self.source
            ));
        }
        if let Some(t) = &self.engine_token {
            let max = pinstream_core::wire::HELLO_TOKEN_MAX;
            if t.is_empty() || t.len() > max {
                p.push(format!(
                    "{}: {} bytes, must be 1 to {max}",
                    key("engine_token"),
                    t.len()
                ));
            }
        }
        if self.nats_url.trim().is_empty() {
            p.push(format!("{}: must name a NATS server", key("nats_url")));
        }
        if self.stream.is_empty()
            || self
                .stream
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b".*>/\\".contains(&b))
        {
            p.push(format!(
                "{} = {:?}: a JetStream stream name (no spaces, '.', '*', '>', '/', '\\')",
                key("stream"),
                self.stream
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            p.push(format!(
                "{} = {}: must be 1 ..= 5",
                key("replicas"),
                self.replicas
            ));
        }
        if let Err(e) = check_template(&self.subject) {
            p.push(format!("{} = {:?}: {e}", key("subject"), self.subject));
        }
        if self.fields_as_headers().is_none() {
            p.push(format!(
                "{} = {:?}: must be fields or id",
                key("headers"),
                self.headers
            ));
        }
        if !(1..=65_536).contains(&self.max_in_flight) {
            p.push(format!(
                "{} = {}: must be 1 ..= 65536",
                key("max_in_flight"),
                self.max_in_flight
            ));
        }
        for (k, v, lo, hi) in [
            ("commit_interval_ms", self.commit_interval_ms, 1, 60_000),
            ("ack_timeout_ms", self.ack_timeout_ms, 100, 600_000),
            ("max_backoff_ms", self.max_backoff_ms, 50, 600_000),
        ] {
            if !(lo..=hi).contains(&v) {
                p.push(format!("{} = {v}: must be {lo} ..= {hi}", key(k)));
            }
        }
        if self.user.is_some() != self.password.is_some() {
            p.push(format!(
                "{} / {}: give both or neither",
                key("user"),
                key("password")
            ));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            p.push(format!(
                "{} / {}: give both or neither",
                key("client_cert"),
                key("client_key")
            ));
        }
        let methods = [
            self.token.is_some(),
            self.user.is_some(),
            self.nkey_seed.is_some(),
            self.creds_file.is_some(),
        ];
        if methods.iter().filter(|&&m| m).count() > 1 {
            p.push(format!(
                "bridge[{index}]: token, user/password, nkey_seed and creds_file are exclusive: \
                 give one"
            ));
        }
        if self.cpu.is_some_and(|c| c > super::MAX_CPU) {
            p.push(format!("{}: at most {}", key("cpu"), super::MAX_CPU));
        }
        p
    }
}

/// A subject template: non-empty, only known placeholders, no spaces or wildcards.
fn check_template(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("must not be empty".into());
    }
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            return Err("a '{' without its '}'".into());
        };
        let ph = &rest[open..open + close + 1];
        if !SUBJECT_PLACEHOLDERS.contains(&ph) {
            return Err(format!(
                "unknown placeholder {ph} (known: {})",
                SUBJECT_PLACEHOLDERS.join(" ")
            ));
        }
        rest = &rest[open + close + 1..];
    }
    if t.bytes()
        .any(|b| b.is_ascii_whitespace() || b == b'*' || b == b'>')
        || t.starts_with('.')
        || t.ends_with('.')
        || t.contains("..")
    {
        return Err("a NATS subject: dot-separated tokens, no spaces or wildcards".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_bridge_with_defaults_is_valid_and_bad_keys_are_named() {
        let ok = BridgeSection {
            name: "to-nats".into(),
            ..BridgeSection::default()
        };
        assert!(ok.problems(0).is_empty(), "{:?}", ok.problems(0));
        assert_eq!(ok.source_id(), "to-nats");
        let bad = BridgeSection {
            name: String::new(),
            log: "nope".into(),
            subject: "a.{bogus}".into(),
            max_in_flight: 0,
            headers: "all".into(),
            user: Some("u".into()),
            token: Some("t".into()),
            ..BridgeSection::default()
        };
        let p = bad.problems(2).join("\n");
        for k in [
            "bridge[2].name",
            "bridge[2].log",
            "bridge[2].subject",
            "bridge[2].max_in_flight",
            "bridge[2].headers",
            "bridge[2].user / bridge[2].password",
            "exclusive",
        ] {
            assert!(p.contains(k), "{k} missing in:\n{p}");
        }
        assert!(check_template("x.{topic}.>").is_err());
        assert!(check_template("x.{log}.{topic_name}").is_ok());
    }
}
