//! The process's descriptor limit: `getrlimit` / `setrlimit(RLIMIT_NOFILE)`.
//!
//! std offers neither. `RLIM_INFINITY` is reported as `u64::MAX`.

use std::io;

/// `RLIMIT_NOFILE` as (soft, hard).
///
/// # Errors
/// What `getrlimit` says (it cannot fail with a valid resource and pointer).
pub(crate) fn nofile() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a live, writable `rlimit` for the duration of the call; the kernel
    // writes it and reads nothing else of ours.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc == 0 {
        Ok((lim.rlim_cur, lim.rlim_max))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the soft `RLIMIT_NOFILE` to `soft`, the hard limit kept at `hard` (a soft limit
/// above the hard one is the kernel's to refuse: `EINVAL`).
///
/// # Errors
/// What `setrlimit` says.
pub(crate) fn set_nofile(soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a live `rlimit` for the duration of the call; the kernel only reads it.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The CPU time the whole process has used, user and system, in nanoseconds
/// (`getrusage(RUSAGE_SELF)`).
///
/// # Errors
/// What `getrusage` says (it cannot fail with a valid `who` and pointer).
pub(crate) fn process_cpu_ns() -> io::Result<(u64, u64)> {
    // SAFETY: `rusage` is plain data (integers and timevals) for which all-zero bytes are a
    // valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a live, writable `rusage` for the duration of the call; the kernel
    // writes it and reads nothing else of ours.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let ns = |t: libc::timeval| {
        (t.tv_sec.max(0) as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(t.tv_usec.max(0) as u64 * 1_000)
    };
    Ok((ns(usage.ru_utime), ns(usage.ru_stime)))
}
