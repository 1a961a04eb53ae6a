//! Open TCP connections per peer address, for `tcp.max_connections_per_ip`.
//!
//! A fixed table sized at start-up: at least twice `tcp.max_connections` entries (a power
//! of two), open addressing with linear probing and backward-shift deletion, keys hashed
//! with a per-process random key (so no client can choose addresses that collide). An
//! address is counted while one of its connections holds a socket, so the table never holds
//! more than `tcp.max_connections` addresses and is never more than half full: taking and
//! giving back a connection never allocates and probes a short run.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;

/// Connections open per address.
pub(crate) struct PeerCounts {
    /// Addresses (see [`key`](Self::key)); meaningful where `counts` is not 0.
    keys: Box<[u128]>,
    /// Open connections of `keys[i]`; 0 marks an empty entry.
    counts: Box<[u32]>,
    /// `keys.len() - 1` (the length is a power of two).
    mask: usize,
    hasher: RandomState,
}

impl PeerCounts {
    /// A table for up to `max_connections` connections.
    pub(crate) fn new(max_connections: usize) -> Self {
        let n = (2 * max_connections).next_power_of_two().max(2);
        Self {
            keys: vec![0; n].into_boxed_slice(),
            counts: vec![0; n].into_boxed_slice(),
            mask: n - 1,
            hasher: RandomState::new(),
        }
    }

    /// The table's key of `ip`: IPv4 addresses as their IPv4-mapped IPv6 form, so a client
    /// counts once whichever way a dual-stack listener sees it.
    pub(crate) fn key(ip: IpAddr) -> u128 {
        match ip {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => u128::from(v6),
        }
    }

    fn home(&self, key: u128) -> usize {
        (self.hasher.hash_one(key) as usize) & self.mask
    }

    /// The entry holding `key`, or the empty one where it would go.
    fn find(&self, key: u128) -> usize {
        let mut i = self.home(key);
        while self.counts[i] != 0 && self.keys[i] != key {
            i = (i + 1) & self.mask;
        }
        i
    }

    /// Connections of `key` counted now.
    pub(crate) fn count(&self, key: u128) -> u32 {
        self.counts[self.find(key)]
    }

    /// Counts one more connection of `key`.
    ///
    /// # Panics
    /// In debug builds, when the table would be more than half full (more addresses than
    /// the connection limit it was sized for: a bug).
    pub(crate) fn add(&mut self, key: u128) {
        let i = self.find(key);
        if self.counts[i] == 0 {
            debug_assert!(
                self.counts.iter().filter(|&&c| c != 0).count() < self.keys.len() / 2,
                "more addresses than connections"
            );
            self.keys[i] = key;
        }
        self.counts[i] += 1;
    }

    /// Counts one connection of `key` less (one that [`add`](Self::add) counted).
    pub(crate) fn remove(&mut self, key: u128) {
        let mut i = self.find(key);
        debug_assert!(self.counts[i] != 0, "removing an address never added");
        if self.counts[i] == 0 {
            return;
        }
        self.counts[i] -= 1;
        if self.counts[i] != 0 {
            return;
        }
        // Backward-shift deletion: move later entries of the run back into the hole when
        // their home is not between the hole and them, so every key stays reachable from
        // its home without tombstones.
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            if self.counts[j] == 0 {
                break;
            }
            let home = self.home(self.keys[j]);
            let between = if i <= j {
                i < home && home <= j
            } else {
                i < home || home <= j
            };
            if !between {
                self.keys[i] = self.keys[j];
                self.counts[i] = self.counts[j];
                self.counts[j] = 0;
                i = j;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_address_and_forgets_at_zero() {
        let mut t = PeerCounts::new(4);
        let a = PeerCounts::key("127.0.0.1".parse().unwrap());
        let b = PeerCounts::key("::1".parse().unwrap());
        assert_eq!(a, PeerCounts::key("::ffff:127.0.0.1".parse().unwrap()));
        t.add(a);
        t.add(a);
        t.add(b);
        assert_eq!((t.count(a), t.count(b)), (2, 1));
        t.remove(a);
        t.remove(b);
        assert_eq!((t.count(a), t.count(b)), (1, 0));
        t.remove(a);
        assert!(t.counts.iter().all(|&c| c == 0));
    }

    /// Many addresses in a small table (runs that wrap around, collisions), added and
    /// removed in a scrambled order: every count stays what a map would say.
    #[test]
    fn agrees_with_a_map_under_churn() {
        let max = 64;
        let mut t = PeerCounts::new(max);
        let mut model = std::collections::HashMap::<u128, u32>::new();
        let mut open: Vec<u128> = Vec::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let remove = open.len() == max || (!open.is_empty() && x % 3 == 0);
            if remove {
                let k = open.swap_remove((x >> 8) as usize % open.len());
                t.remove(k);
                *model.get_mut(&k).unwrap() -= 1;
            } else {
                let k = u128::from((x >> 16) % 100);
                t.add(k);
                *model.entry(k).or_default() += 1;
                open.push(k);
            }
            let k = u128::from((x >> 24) % 100);
            assert_eq!(t.count(k), model.get(&k).copied().unwrap_or(0));
        }
        for (k, c) in model {
            assert_eq!(t.count(k), c);
        }
    }
}
