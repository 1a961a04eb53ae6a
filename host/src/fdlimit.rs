//! File descriptors: how many the engine needs for its config, and the process's
//! `RLIMIT_NOFILE` raised to match at start-up.
//!
//! A connection the engine cannot accept for want of a descriptor is a connection refused
//! by the kernel's bookkeeping, not by the config: so the soft limit is raised (up to the
//! hard limit, which only a privileged process may raise, so it is left alone) to what the
//! config needs, or the engine refuses to start and names both numbers. What it counts:
//!
//! | what | descriptors |
//! | --- | --- |
//! | TCP connections | `tcp.max_connections` + 1 (a connection past the limit is accepted, then closed) |
//! | admin endpoint | `admin.max_connections` + 2 (its listener, one past the limit) |
//! | logs | [`FILES_PER_LOG`] per log (5 logs): segment, index, checkpoint; a new segment and its index while rolling; the directory while syncing it |
//! | engine | [`ENGINE_FIXED`]: stdin/stdout/stderr, the data directory's lock, the TCP listener, the UDP socket, epoll |
//! | spare | [`SPARE`]: recovery's temporary files, `/proc` and `/sys` reads, the signal pipe, the runtime |
//!
//! The embedded default (1,024 TCP and 128 admin connections) needs 1,224 here; the consumer
//! listener, on by default, adds `3 × (consumers.max_connections + 16) + 4` (244: 1,468 in all),
//! counted where the engine starts it.
//!
//! ```
//! use pinstream_host::fdlimit::FdBudget;
//! let b = FdBudget::new(1024, 16, 5);
//! assert_eq!(b.total(), 1025 + 18 + 30 + 7 + 32);
//! ```

use std::fmt;

use crate::sys;

/// Descriptors a log holds at most: its active segment, index and checkpoint, a new segment
/// and index while it rolls, its directory while it syncs it.
pub const FILES_PER_LOG: u64 = 6;
/// stdin, stdout, stderr, the data directory's lock, the TCP listener, the UDP socket and
/// the ingest thread's epoll.
pub const ENGINE_FIXED: u64 = 7;
/// Room for what comes and goes: recovery's temporary files, `/proc` and `/sys` reads, the
/// runner's signal pipe, the Rust runtime.
pub const SPARE: u64 = 32;

/// What a config needs, by use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdBudget {
    /// `tcp.max_connections`.
    pub tcp_connections: u64,
    /// `admin.max_connections` (0: the admin endpoint is off).
    pub admin_connections: u64,
    /// Logs kept open.
    pub logs: u64,
}

impl FdBudget {
    /// The budget of `tcp` TCP connections, `admin` admin connections (0: off) and `logs`
    /// logs.
    pub const fn new(tcp: usize, admin: usize, logs: usize) -> Self {
        Self {
            tcp_connections: tcp as u64,
            admin_connections: admin as u64,
            logs: logs as u64,
        }
    }

    /// Descriptors for the TCP connections.
    pub const fn connections(&self) -> u64 {
        self.tcp_connections + 1
    }

    /// Descriptors for the admin endpoint.
    pub const fn admin(&self) -> u64 {
        if self.admin_connections == 0 {
            0
        } else {
            self.admin_connections + 2
        }
    }

    /// Descriptors for the logs.
    pub const fn log_files(&self) -> u64 {
        self.logs * FILES_PER_LOG
    }

    /// Everything the config needs.
    pub const fn total(&self) -> u64 {
        self.connections() + self.admin() + self.log_files() + ENGINE_FIXED + SPARE
    }
}

impl FdBudget {
    /// What the total is made of, in words.
    fn parts(&self) -> String {
        format!(
            "{} for tcp.max_connections = {}, {} for the admin endpoint, {} for {} logs, \
             {ENGINE_FIXED} for stdio, the lock and sockets, {SPARE} spare",
            self.connections(),
            self.tcp_connections,
            self.admin(),
            self.log_files(),
            self.logs
        )
    }
}

impl fmt::Display for FdBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.total(), self.parts())
    }
}

/// The limit the engine runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdLimit {
    /// What the config needs.
    pub budget: FdBudget,
    /// The soft limit found.
    pub before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

impl fmt::Display for FdLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "file descriptors: the config needs {}; ", self.budget)?;
        if self.soft == self.before {
            write!(f, "soft limit {}", show(self.soft))?;
        } else {
            write!(
                f,
                "soft limit raised from {} to {}",
                show(self.before),
                show(self.soft)
            )?;
        }
        write!(f, " (hard {})", show(self.hard))
    }
}

fn show(limit: u64) -> String {
    if limit == libc::RLIM_INFINITY {
        "unlimited".to_owned()
    } else {
        limit.to_string()
    }
}

/// Raises the soft `RLIMIT_NOFILE` to `budget.total()` if it is below (never lowers it,
/// never touches the hard limit).
///
/// # Errors
/// The hard limit is below what the config needs (the message names both numbers and what
/// to change), or the limit cannot be read or set.
pub fn ensure(budget: FdBudget) -> Result<FdLimit, String> {
    let need = budget.total();
    let (before, hard) = sys::nofile().map_err(|e| format!("getrlimit(RLIMIT_NOFILE): {e}"))?;
    if before >= need {
        return Ok(FdLimit {
            budget,
            before,
            soft: before,
            hard,
        });
    }
    if hard < need {
        return Err(format!(
            "the config needs {need} file descriptors ({}), above this process's hard \
             limit RLIMIT_NOFILE = {hard} (soft {before}): raise the hard limit (ulimit -Hn, \
             systemd LimitNOFILE=) or lower tcp.max_connections",
            budget.parts()
        ));
    }
    sys::set_nofile(need, hard).map_err(|e| {
        format!("cannot raise the soft RLIMIT_NOFILE from {before} to {need} (hard {hard}): {e}")
    })?;
    Ok(FdLimit {
        budget,
        before,
        soft: need,
        hard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_budget_and_its_parts() {
        let b = FdBudget::new(1024, 16, 4);
        assert_eq!(b.connections(), 1025);
        assert_eq!(b.admin(), 18);
        assert_eq!(b.log_files(), 24);
        assert_eq!(b.total(), 1106);
        assert_eq!(FdBudget::new(1024, 0, 4).total(), 1106 - 18);
        let shown = b.to_string();
        assert!(
            shown.starts_with("1106 (1025 for tcp.max_connections = 1024"),
            "{shown}"
        );
    }

    #[test]
    fn a_limit_already_high_enough_is_left_alone() {
        let (soft, hard) = sys::nofile().unwrap();
        let small = FdBudget::new(0, 0, 0);
        if soft >= small.total() {
            let got = ensure(small).unwrap();
            assert_eq!((got.before, got.soft, got.hard), (soft, soft, hard));
            assert_eq!(sys::nofile().unwrap(), (soft, hard));
        }
    }
}
