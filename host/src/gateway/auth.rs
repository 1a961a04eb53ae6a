//! Tokens: stored as SHA-256 hashes in the config (`[[auth.tokens]]`), each allowed a set of
//! topics and a rate (a token bucket of the core's, per token). One table, built at engine
//! start-up, serves the HTTP gateway (bearer headers) and the binary TCP port (a token in
//! the HELLO, `tcp.auth = "token"`): a token's bucket is shared by both. The consumer
//! listener (`consumers.auth = "token"`) gets a table of its own from the same entries, of
//! which it uses only the hashes and `read`. Looking a token up,
//! checking a topic and taking from a bucket allocate nothing (the ingest thread does them).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use pinstream_core::ratelimit::{RateConfig, TokenBucket};
use sha2::{Digest, Sha256};

use crate::config::TokenSection;

/// The SHA-256 of `token` as 64 lowercase hex digits (what `[[auth.tokens]] sha256` holds).
///
/// ```
/// use pinstream_host::gateway::hash_token;
/// assert_eq!(
///     hash_token("abc"),
///     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/// );
/// ```
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// One configured token.
pub struct Token {
    pub(crate) name: String,
    hash: [u8; 32],
    /// Topic ids it may send to, one bit each (bit `t % 64` of word `t / 64`); `None`: all.
    topics: Option<Box<[u64]>>,
    /// Its rate, if limited.
    bucket: Option<TokenBucket>,
    /// Whether it may read on the consumer listener (`read` of its entry).
    read: bool,
}

impl Token {
    /// Whether it may read on the consumer listener.
    #[inline]
    pub(crate) fn reads(&self) -> bool {
        self.read
    }

    /// Whether it may send to `topic`.
    #[inline]
    pub(crate) fn allows(&self, topic: u16) -> bool {
        self.topics.as_ref().is_none_or(|bits| {
            bits.get(usize::from(topic) / 64)
                .is_some_and(|w| w & (1 << (topic % 64)) != 0)
        })
    }

    /// Takes up to `n` events from its bucket at `now` (nanoseconds since the engine
    /// started); returns how many it got (`n` without a limit).
    #[inline]
    pub(crate) fn grant(&self, n: u32, now: u64) -> u32 {
        self.bucket.as_ref().map_or(n, |b| b.try_acquire(n, now))
    }

    /// Nanoseconds one token of its rate takes to come (0 without a limit): how long a
    /// connection whose frame waits for it is left alone before it asks again.
    pub(crate) fn token_ticks(&self) -> u64 {
        self.bucket
            .as_ref()
            .map_or(0, |b| crate::ingest::token_ticks(b.config()))
    }

    /// Takes `n` events from its bucket at `now` (nanoseconds), all or none.
    pub(crate) fn admit(&self, n: u32, now: u64) -> bool {
        self.bucket
            .as_ref()
            .is_none_or(|b| b.try_acquire_all(n, now))
    }
}

/// The configured tokens (none: no authentication).
pub struct Tokens(Vec<Token>);

/// Why a request was not authenticated.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AuthError {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token that is not configured.
    Wrong,
}

impl Tokens {
    /// The tokens of `[[auth.tokens]]`, topics resolved against `topics` (validated by the
    /// config already; a bad entry here is refused again).
    ///
    /// # Errors
    /// A hash that is not 64 hex digits, a topic not in `topics`, a bad rate.
    pub fn new(entries: &[TokenSection], topics: &[String]) -> Result<Self, String> {
        let mut out = Vec::with_capacity(entries.len());
        for t in entries {
            let hash = t
                .hash_bytes()
                .ok_or_else(|| format!("auth token {:?}: sha256 is not 64 hex digits", t.name))?;
            let allowed = if t.topics.iter().any(|x| x == "*") {
                None
            } else {
                let mut set = vec![0u64; topics.len().div_ceil(64)].into_boxed_slice();
                for name in &t.topics {
                    let id = topics
                        .iter()
                        .position(|n| n == name)
                        .and_then(|i| u16::try_from(i).ok())
                        .ok_or_else(|| {
                            format!("auth token {:?}: topic {name:?} is not configured", t.name)
                        })?;
                    set[usize::from(id) / 64] |= 1 << (id % 64);
                }
                Some(set)
            };
            let bucket = if t.rate == 0 {
                None
            } else {
                let cfg = RateConfig::new(t.rate, 1_000_000_000, t.burst)
                    .map_err(|e| format!("auth token {:?}: rate: {e:?}", t.name))?;
                Some(TokenBucket::new(cfg))
            };
            out.push(Token {
                name: t.name.clone(),
                hash,
                topics: allowed,
                bucket,
                read: t.read,
            });
        }
        Ok(Self(out))
    }

    /// Whether any token is configured (then every request needs one).
    pub(crate) fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// The token an `Authorization` header value names.
    pub(crate) fn check(&self, header: Option<&[u8]>) -> Result<&Token, AuthError> {
        let value = header.ok_or(AuthError::Missing)?;
        let presented = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))
            .ok_or(AuthError::Missing)?;
        let presented = presented.trim_ascii();
        self.find(presented)
            .and_then(|i| self.0.get(i))
            .ok_or(AuthError::Wrong)
    }

    /// The index of the token whose hash is the SHA-256 of `presented` (the bytes of a
    /// HELLO's token). Hashing and comparing allocate nothing; every entry is compared in
    /// full, without an early exit on the first differing byte, so the time does not tell
    /// how much of a hash matched.
    pub(crate) fn find(&self, presented: &[u8]) -> Option<usize> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for (i, t) in self.0.iter().enumerate() {
            let diff = t
                .hash
                .iter()
                .zip(&digest)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(i);
            }
        }
        found
    }

    /// Token `index` (from [`find`](Self::find)).
    #[inline]
    pub(crate) fn get(&self, index: usize) -> Option<&Token> {
        self.0.get(index)
    }
}

/// The engine's per-client rate (`[pipeline]` rate) for requests without a token, one
/// bucket per IP address (the port ignored, as the engine does for TCP and UDP clients). The
/// table holds `cap` addresses; a new one finding it full first frees the buckets that are
/// full again (an address idle that long gains nothing by coming back), then shares one
/// overflow bucket with every other newcomer.
pub(crate) struct ClientLimits {
    config: RateConfig,
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
    overflow: TokenBucket,
    cap: usize,
}

impl ClientLimits {
    pub(crate) fn new(config: RateConfig, cap: usize) -> Self {
        Self {
            config,
            buckets: Mutex::new(HashMap::new()),
            overflow: TokenBucket::new(config),
            cap,
        }
    }

    /// Takes `n` events from `ip`'s bucket at `now` (nanoseconds), all or none.
    pub(crate) fn admit(&self, ip: IpAddr, n: u32, now: u64) -> bool {
        if self.config.is_unlimited() {
            return true;
        }
        let ip = ip.to_canonical();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(&ip) && buckets.len() >= self.cap {
            let burst = self.config.burst();
            buckets.retain(|_, b| b.available(now) < burst);
            if buckets.len() >= self.cap {
                return self.overflow.try_acquire_all(n, now);
            }
        }
        buckets
            .entry(ip)
            .or_insert_with(|| TokenBucket::new(self.config))
            .try_acquire_all(n, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, token: &str, topics: &[&str], rate: u64, burst: u32) -> TokenSection {
        TokenSection {
            name: name.into(),
            sha256: hash_token(token),
            topics: topics.iter().map(|s| (*s).to_owned()).collect(),
            rate,
            burst,
            read: true,
        }
    }

    #[test]
    fn a_token_is_found_by_its_hash_and_limited_to_its_topics_and_rate() {
        let topics = vec!["default".to_owned(), "metrics".to_owned()];
        let tokens = Tokens::new(
            &[
                entry("a", "secret-a", &["metrics"], 10, 3),
                entry("b", "secret-b", &["*"], 0, 0),
            ],
            &topics,
        )
        .unwrap();
        assert!(tokens.enabled());
        assert_eq!(tokens.check(None).err(), Some(AuthError::Missing));
        assert_eq!(
            tokens.check(Some(b"Basic eA==")).err(),
            Some(AuthError::Missing)
        );
        assert_eq!(
            tokens.check(Some(b"Bearer nope")).err(),
            Some(AuthError::Wrong)
        );
        let a = tokens.check(Some(b"Bearer secret-a")).unwrap();
        assert_eq!(a.name, "a");
        assert!(a.allows(1) && !a.allows(0));
        // A burst of 3: three events pass, the fourth finds the bucket empty.
        assert!(a.admit(3, 0));
        assert!(!a.admit(1, 0));
        let b = tokens.check(Some(b"Bearer secret-b")).unwrap();
        assert!(b.allows(0) && b.allows(1) && b.admit(1_000_000, 0));
        // The binary port's lookup: raw bytes, an index; a partial grant of the rate.
        assert_eq!(tokens.find(b"secret-b"), Some(1));
        assert_eq!(tokens.find(b"secret-"), None);
        let a = tokens.get(tokens.find(b"secret-a").unwrap()).unwrap();
        assert_eq!(
            a.grant(5, 1_000_000_000),
            3,
            "10/s for 1 s, capped at the burst of 3"
        );
        assert_eq!(tokens.get(1).unwrap().grant(7, 0), 7);
    }

    #[test]
    fn topic_bits_beyond_the_first_word() {
        let topics: Vec<String> = (0..130).map(|i| format!("t{i}")).collect();
        let tokens =
            Tokens::new(&[entry("a", "x", &["t0", "t64", "t129"], 0, 0)], &topics).unwrap();
        let a = tokens.get(0).unwrap();
        for t in 0..140u16 {
            assert_eq!(a.allows(t), [0, 64, 129].contains(&t), "topic {t}");
        }
    }

    #[test]
    fn addresses_have_their_own_buckets_until_the_table_is_full() {
        let cfg = RateConfig::new(1, 1_000_000_000, 2).unwrap();
        let limits = ClientLimits::new(cfg, 2);
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        assert!(limits.admit(ip(1), 2, 0));
        assert!(!limits.admit(ip(1), 1, 0), "its bucket is empty");
        assert!(limits.admit(ip(2), 2, 0), "another address has its own");
        // Full: a third address shares the overflow bucket with any fourth.
        assert!(limits.admit(ip(3), 2, 0));
        assert!(!limits.admit(ip(4), 1, 0));
        // Two seconds later every bucket is full again: the table makes room.
        assert!(limits.admit(ip(4), 2, 2_000_000_000));
        assert!(ClientLimits::new(RateConfig::UNLIMITED, 1).admit(ip(9), u32::MAX, 0));
    }
}
