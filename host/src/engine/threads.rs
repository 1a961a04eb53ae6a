//! Running the engine's threads once set-up is done: the ingest and storage threads
//! (pinned per the plan), the helper threads beside them (the gateway, the TLS terminator),
//! and joining them all.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use super::capacity::EngineIngest;
use super::sink::StoreSink;
use super::storage_loop::{StorageLoop, StorageParts};
use super::{EngineConfig, EngineStats};
use crate::gateway::GatewayRun;
use crate::idle::Idler;
use crate::ingest::Shared;
use crate::pin::PinPlan;
use crate::tlsport::TlsPortRun;

/// What the engine's threads are handed once set-up is done.
pub(super) struct Threads<'m> {
    pub(super) ingest: EngineIngest<'m>,
    pub(super) storage: StorageParts<'m>,
    pub(super) sink: StoreSink<'m>,
    /// The HTTP gateway, when it runs.
    pub(super) gateway: Option<GatewayRun<'m>>,
    /// The TLS terminator of the TCP port, when it speaks TLS.
    pub(super) tls: Option<TlsPortRun<'m>>,
}

/// Runs the ingest and storage threads in a scope until both have returned.
///
/// # Errors
/// The first thread's failure (the ingest thread's first), as a message.
pub(super) fn run_threads(
    cfg: &EngineConfig,
    plan: &PinPlan,
    stats: &EngineStats,
    threads: Threads<'_>,
) -> Result<(), String> {
    let Threads {
        mut ingest,
        storage,
        mut sink,
        gateway,
        tls,
    } = threads;
    let idle = cfg.placement.idle.effective(!plan.is_pinning());
    let hook = cfg.thread_hook;
    thread::scope(|s| {
        let ingest_thread = thread::Builder::new()
            .name("pinstream-ingest".into())
            .spawn_scoped(s, move || {
                // However this thread ends (stop, an epoll error, a panic), the storage
                // thread must learn that no more input and no more ACK sending will come.
                let _exit = IngestExit(&stats.shared);
                prepare_thread(plan, "ingest", stats, hook);
                let mut idler = Idler::new(idle, Arc::clone(&stats.ingest_load));
                while !stats.shared.stop.load(Ordering::Acquire) {
                    let work = match ingest.poll() {
                        Ok(w) => w,
                        Err(e) => return Err(format!("ingest: epoll failed: {e}")),
                    };
                    idler.step(work);
                }
                // What the gateway took (a 202 included) goes in before the doors close.
                if let Err(e) = ingest.drain_gateway(Duration::from_secs(5)) {
                    return Err(format!("ingest: epoll failed: {e}"));
                }
                ingest.shut_down(Duration::from_secs(10));
                Ok(())
            })
            .map_err(|e| format!("cannot start the ingest thread: {e}"))?;
        let storage_thread = thread::Builder::new()
            .name("pinstream-storage".into())
            .spawn_scoped(s, move || {
                prepare_thread(plan, "storage", stats, hook);
                StorageLoop::new(storage, &mut sink, stats, cfg).run(idle)
            })
            .map_err(|e| format!("cannot start the storage thread: {e}"))?;
        let http_thread = gateway
            .map(|g| {
                let run = move || crate::gateway::run(g);
                spawn_helper(s, "pinstream-http", "http.cpu", cfg.http.cpu, run)
            })
            .transpose()?;
        let tls_cpu = cfg.tcp_tls.as_ref().and_then(|t| t.cpu);
        let tls_thread = tls
            .map(|t| {
                let run = move || crate::tlsport::run(t);
                spawn_helper(s, "pinstream-tls", "tcp.tls_cpu", tls_cpu, run)
            })
            .transpose()?;
        let a = ingest_thread
            .join()
            .unwrap_or_else(|_| Err("the ingest thread panicked".into()));
        let d = tls_thread.map_or(Ok(()), |h| {
            h.join()
                .unwrap_or_else(|_| Err("the tls terminator thread panicked".into()))
        });
        let c = http_thread.map_or(Ok(()), |h| {
            h.join()
                .unwrap_or_else(|_| Err("the http gateway thread panicked".into()))
        });
        let b = storage_thread
            .join()
            .unwrap_or_else(|_| Err("the storage thread panicked".into()));
        a.and(b).and(c).and(d)
    })
}
/// Starts a helper thread (the gateway, the TLS terminator) named `name` in `s`: on `cpu`
/// when set (`key`, its config key, is never a pinned engine thread's CPU: checked at start;
/// a CPU that cannot be had is warned about and the thread runs unpinned), else where the OS
/// puts it.
fn spawn_helper<'scope>(
    s: &'scope thread::Scope<'scope, '_>,
    name: &str,
    key: &'static str,
    cpu: Option<usize>,
    run: impl FnOnce() -> Result<(), String> + Send + 'scope,
) -> Result<thread::ScopedJoinHandle<'scope, Result<(), String>>, String> {
    thread::Builder::new()
        .name(name.into())
        .spawn_scoped(s, move || {
            if let Some(cpu) = cpu {
                if let Err(e) = crate::pin::pin_current_thread(cpu) {
                    tracing::warn!("{key} = {cpu}: {e}; running unpinned");
                }
            }
            run()
        })
        .map_err(|e| format!("cannot start the {name} thread: {e}"))
}

/// Marks the ingest thread's end (see its use).
struct IngestExit<'a>(&'a Shared);

impl Drop for IngestExit<'_> {
    fn drop(&mut self) {
        self.0.ingest_done.store(true, Ordering::Release);
        self.0.ingest_exited.store(true, Ordering::Release);
    }
}

/// Runs the hook, pins the calling thread per the plan (nothing when overprovisioned) and
/// records what it got. A refusal is reported, not fatal: the engine still works unpinned.
fn prepare_thread(plan: &PinPlan, thread: &'static str, stats: &EngineStats, hook: Option<fn()>) {
    if let Some(hook) = hook {
        hook();
    }
    let note = match plan.pin_current(thread) {
        Ok(report) => report.to_string(),
        Err(e) => format!("{thread}: {e}; running unpinned"),
    };
    stats
        .placement
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(note);
}
