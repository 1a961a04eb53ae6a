//! Who a rate limit applies to: the ingest thread's map from a client to a rate-limit key.
//!
//! The core's [`RateLimiter`](pinstream_core::ratelimit::RateLimiter) keeps one token bucket
//! per key in a fixed table. A limit is meant per client, not per connection: a version-2
//! producer is one client whatever connections it uses (its producer id), anyone else is the
//! IP address it sends from, TCP version 1 and UDP alike, **the port ignored** (every
//! connection and every UDP socket of one machine shares its limit; clients behind one NAT
//! address share it too, and tell themselves apart with producer ids).
//!
//! The table is sized at start-up (the limiter's `SOURCES` keys, a map with room for twice
//! as many clients, so it never grows nor rehashes out of place): looking a client up
//! allocates nothing. Key [`SHARED`] is never given to one client: it is the bucket of
//! everyone who found the table full (`pinstream_rate_limit_keys_exhausted_total`).
//!
//! **Freeing a key.** A key is not freed when its last connection closes: a client could
//! then reconnect for a fresh burst. It is freed once no connection holds it and it has been
//! idle for as long as its bucket takes to refill from empty: by then the bucket is full,
//! exactly as a new one, so the next client given the key starts as if it were new, and
//! the client that left gains nothing by leaving. Idle keys are looked for once a second,
//! and when a new client finds no free key (at most every [`SWEEP_WHEN_FULL`] ticks).

use std::collections::HashMap;
use std::net::IpAddr;

use pinstream_core::ratelimit::RateConfig;

use crate::stats::HostCounters;

/// The key of everyone who found the table full (and of everyone when there is no limit).
pub(crate) const SHARED: u32 = 0;

/// How often a full table is swept for idle keys at most, in ticks (10 ms): a flood of new
/// addresses costs one sweep per interval, not one per datagram.
const SWEEP_WHEN_FULL: u64 = 10_000_000;

/// Who is limited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Client {
    /// A version-2 producer, by id.
    Producer(u64),
    /// Anyone without a producer id, by IP address (IPv4-mapped IPv6 as IPv4).
    Address(IpAddr),
}

impl Client {
    /// The client at `ip`.
    pub(crate) fn address(ip: IpAddr) -> Self {
        Self::Address(ip.to_canonical())
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    client: Client,
    /// Connections holding the key.
    users: u32,
    /// Tick of the last lookup or release.
    last_used: u64,
}

/// The map from clients to rate-limit keys (see the module docs).
#[derive(Debug)]
pub(crate) struct RateKeys {
    by_client: HashMap<Client, u32>,
    /// By key; `entries[SHARED]` stays `None`.
    entries: Vec<Option<Entry>>,
    /// Keys without a client.
    free: Vec<u32>,
    /// Ticks an empty bucket takes to be full again: an unused key idle this long is free.
    refill: u64,
    /// Ticks one token takes to come (0 when unlimited): how long a connection whose frame
    /// waits for this limit is left alone before it asks again.
    token: u64,
    last_sweep: u64,
}

impl RateKeys {
    /// A table of `keys` keys (`1..keys` for clients) for buckets of `config`; with an
    /// unlimited config, or fewer than 2 keys, every client gets [`SHARED`] and nothing is
    /// kept.
    pub(crate) fn new(keys: usize, config: RateConfig) -> Self {
        let keys = if config.is_unlimited() { 0 } else { keys };
        let clients = keys.saturating_sub(1);
        // Keys are handed out lowest first.
        let free = (1..keys)
            .rev()
            .filter_map(|k| u32::try_from(k).ok())
            .collect();
        Self {
            by_client: HashMap::with_capacity(2 * clients),
            entries: vec![None; keys],
            free,
            refill: refill_ticks(config),
            token: token_ticks(config),
            last_sweep: 0,
        }
    }

    /// Ticks one token of the per-client limit takes to come (0 when unlimited).
    pub(crate) fn token_ticks(&self) -> u64 {
        self.token
    }

    /// The key of `client` for a connection, which holds it until [`release`](Self::release).
    pub(crate) fn acquire(&mut self, client: Client, now: u64, counters: &HostCounters) -> u32 {
        self.lookup(client, now, 1, counters)
    }

    /// The key of `client` for one datagram (held by nobody once it is dispatched).
    pub(crate) fn touch(&mut self, client: Client, now: u64, counters: &HostCounters) -> u32 {
        self.lookup(client, now, 0, counters)
    }

    /// A connection gives back `key` (nothing for [`SHARED`]).
    pub(crate) fn release(&mut self, key: u32, now: u64) {
        if let Some(Some(e)) = self.entries.get_mut(key as usize) {
            e.users = e.users.saturating_sub(1);
            e.last_used = now;
        }
    }

    /// Frees every key that nobody holds and that was idle for the refill time; returns how
    /// many.
    pub(crate) fn sweep(&mut self, now: u64, counters: &HostCounters) -> usize {
        self.last_sweep = now;
        let mut freed = 0;
        for (key, slot) in self.entries.iter_mut().enumerate() {
            let idle = slot
                .is_some_and(|e| e.users == 0 && now.saturating_sub(e.last_used) >= self.refill);
            if !idle {
                continue;
            }
            if let Some(e) = slot.take() {
                self.by_client.remove(&e.client);
                self.free.push(key as u32);
                freed += 1;
            }
        }
        if freed > 0 {
            counters.rate_keys.set(self.by_client.len() as u64);
        }
        freed
    }

    fn lookup(&mut self, client: Client, now: u64, users: u32, counters: &HostCounters) -> u32 {
        if self.entries.is_empty() {
            return SHARED;
        }
        if let Some(&key) = self.by_client.get(&client) {
            if let Some(Some(e)) = self.entries.get_mut(key as usize) {
                e.users += users;
                e.last_used = now;
            }
            return key;
        }
        if self.free.is_empty() && now.saturating_sub(self.last_sweep) >= SWEEP_WHEN_FULL {
            self.sweep(now, counters);
        }
        let Some(key) = self.free.pop() else {
            counters.rate_keys_exhausted.incr();
            return SHARED;
        };
        self.entries[key as usize] = Some(Entry {
            client,
            users,
            last_used: now,
        });
        self.by_client.insert(client, key);
        counters.rate_keys.set(self.by_client.len() as u64);
        key
    }
}

/// Ticks one token of a bucket of `config` takes to come: `per_ticks / rate`, rounded up (0
/// when unlimited).
pub(crate) fn token_ticks(config: RateConfig) -> u64 {
    if config.is_unlimited() {
        return 0;
    }
    config.per_ticks().div_ceil(config.rate().max(1))
}

/// Ticks a bucket of `config` takes to refill from empty to full: `burst` tokens at `rate`
/// per `per_ticks` (0 when unlimited).
fn refill_ticks(config: RateConfig) -> u64 {
    if config.is_unlimited() {
        return 0;
    }
    let units = u128::from(config.burst()) * u128::from(config.per_ticks());
    let per_tick = u128::from(config.rate().max(1));
    u64::try_from(units.div_ceil(per_tick)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Client {
        Client::address(IpAddr::from([127, 0, 0, last]))
    }

    /// 10 tokens at 1 per 100 ticks: a bucket refills in 1,000 ticks.
    fn config() -> RateConfig {
        RateConfig::new(1, 100, 10).unwrap()
    }

    #[test]
    fn one_client_one_key_whatever_its_connections() {
        let c = HostCounters::new();
        let mut keys = RateKeys::new(4, config());
        let a = keys.acquire(ip(1), 0, &c);
        assert_ne!(a, SHARED);
        assert_eq!(keys.acquire(ip(1), 1, &c), a);
        assert_eq!(keys.touch(ip(1), 2, &c), a, "UDP from the same address");
        let mapped = Client::address("::ffff:127.0.0.1".parse().unwrap());
        assert_eq!(
            keys.touch(mapped, 2, &c),
            a,
            "an IPv4-mapped address is the IPv4 one"
        );
        let p = keys.acquire(Client::Producer(7), 3, &c);
        assert_ne!(p, a);
        assert_eq!(c.rate_keys.get(), 2);
    }

    #[test]
    fn a_key_is_freed_only_unused_and_idle_for_a_refill() {
        let c = HostCounters::new();
        let mut keys = RateKeys::new(2, config()); // one key for clients
        let a = keys.acquire(ip(1), 0, &c);
        keys.release(a, 100);
        // Idle, but not for a whole refill: the client that left would get a fresh burst.
        assert_eq!(keys.sweep(1_099, &c), 0);
        assert_eq!(keys.touch(ip(2), 1_099, &c), SHARED, "the table is full");
        assert_eq!(c.rate_keys_exhausted.get(), 1);
        assert_eq!(keys.sweep(1_100, &c), 1);
        assert_eq!(
            keys.touch(ip(2), 1_100, &c),
            a,
            "reused once its bucket is full again"
        );
        // Held by a connection: never freed.
        let mut keys = RateKeys::new(2, config());
        let b = keys.acquire(ip(3), 0, &c);
        assert_eq!(keys.sweep(u64::MAX / 2, &c), 0);
        keys.release(b, 10);
        assert_eq!(keys.sweep(1_010, &c), 1);
    }

    #[test]
    fn a_full_table_sweeps_for_a_new_client() {
        let c = HostCounters::new();
        let mut keys = RateKeys::new(2, config());
        let a = keys.touch(ip(1), 0, &c);
        assert_eq!(keys.touch(ip(2), SWEEP_WHEN_FULL + 1_000, &c), a);
    }

    #[test]
    fn without_a_limit_everyone_shares_key_0() {
        let c = HostCounters::new();
        let mut keys = RateKeys::new(4_096, RateConfig::UNLIMITED);
        assert_eq!(keys.acquire(ip(1), 0, &c), SHARED);
        assert_eq!(keys.touch(Client::Producer(1), 0, &c), SHARED);
        keys.release(SHARED, 1);
        assert_eq!(c.rate_keys.get(), 0);
    }

    #[test]
    fn refill_time_of_a_bucket() {
        assert_eq!(refill_ticks(config()), 1_000);
        // 3 per 2 ticks, burst 4: 8 / 3 rounded up.
        assert_eq!(refill_ticks(RateConfig::new(3, 2, 4).unwrap()), 3);
        assert_eq!(refill_ticks(RateConfig::UNLIMITED), 0);
    }
}
