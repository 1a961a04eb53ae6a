//! The process-level families every Prometheus exporter offers, under their conventional
//! names (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`,
//! `process_max_fds`, `process_start_time_seconds`), and `pinstream_build_info`. Read at each
//! scrape on the admin thread (`getrusage`, `/proc/self/status`, `/proc/self/fd`): a cold
//! path. A figure that cannot be read is left out rather than reported as zero.

use super::{MetricType, PromWriter};

/// Renders the process families and the build info. `start_unix_ns` is when the engine
/// started (wall clock).
pub fn write_process(w: &mut PromWriter<'_>, start_unix_ns: u64) {
    if let Ok((user, system)) = crate::sys::process_cpu_ns() {
        w.single(
            "process_cpu_seconds_total",
            MetricType::Counter,
            "User and system CPU time the process has used, in seconds.",
            (user.saturating_add(system)) as f64 / 1e9,
        );
    }
    if let Some(rss) = resident_bytes() {
        w.single(
            "process_resident_memory_bytes",
            MetricType::Gauge,
            "Resident memory of the process (VmRSS), in bytes.",
            rss as f64,
        );
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // The directory handle itself is one of the entries while it is read.
        let open = dir.count().saturating_sub(1);
        w.single(
            "process_open_fds",
            MetricType::Gauge,
            "File descriptors the process has open.",
            open as f64,
        );
    }
    if let Ok((soft, _hard)) = crate::sys::nofile() {
        w.single(
            "process_max_fds",
            MetricType::Gauge,
            "The process's soft limit on open file descriptors (RLIMIT_NOFILE).",
            soft as f64,
        );
    }
    w.single(
        "process_start_time_seconds",
        MetricType::Gauge,
        "When the engine started, in seconds since the Unix epoch.",
        start_unix_ns as f64 / 1e9,
    );
    w.family(
        "pinstream_build_info",
        MetricType::Gauge,
        "Always 1; the labels say which build is running.",
    );
    w.sample(
        "pinstream_build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            (
                "profile",
                if cfg!(debug_assertions) {
                    "debug"
                } else {
                    "release"
                },
            ),
            ("target_arch", std::env::consts::ARCH),
        ],
        1.0,
    );
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}
