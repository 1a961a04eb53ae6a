//! The serving thread's loop ([`serve`]): one epoll set over the listener, the consumer
//! sockets (edge-triggered, in and out) and the watermarks' eventfd. It sleeps in
//! `epoll_wait` with no timeout: a consumer's frame, room in a socket, a new high watermark
//! (the storage thread writes the eventfd, at most once per sleep) or the stop wake it.

use std::collections::HashSet;
use std::io;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::ConsumerShared;
use super::committer::{Committer, Done};
use super::conn::{Conn, Ctx, Msg};
use super::positions::Positions;
use crate::gateway::Tokens;
use crate::sys::net::{EPOLLERR_HUP, EPOLLET, EPOLLIN, EPOLLOUT, EPOLLRDHUP, Epoll, Ready};

/// The listener's epoll token.
const LISTENER: u64 = 0;
/// The eventfd's epoll token.
const WAKE: u64 = 1;
/// How often the handshake clock is looked at while some connection has not subscribed
/// (never otherwise: a server with only subscribed consumers sleeps without a timeout).
const HANDSHAKE_TICK_MS: i32 = 250;
/// Connections accepted past `max_connections` (to be answered `too_many_consumers`)
/// before the server stops accepting more: a bound on the descriptors it holds.
const OVER_LIMIT_SLACK: usize = 16;

/// A slot of the connection table; a token is `generation << 32 | index + 2`, so a stale
/// event of a closed connection never reaches the one that took its slot.
struct Slot {
    generation: u32,
    conn: Option<Conn>,
}

/// The serving thread's state.
struct Server {
    epoll: Epoll,
    listener: TcpListener,
    slots: Vec<Slot>,
    open: usize,
    max_connections: usize,
    next_source: u32,
    positions: Positions,
    busy: HashSet<(usize, String)>,
    data_dir: PathBuf,
    msgs: Vec<Msg>,
    committer: Committer,
    /// Connections that have not subscribed within it are closed.
    handshake_timeout: std::time::Duration,
    /// `consumers.auth = "token"`: the tokens a HELLO must show one of.
    tokens: Option<Arc<Tokens>>,
}

fn token(index: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | (index as u64 + 2)
}

impl Server {
    fn accept(&mut self, shared: &ConsumerShared) {
        loop {
            let (stream, _) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // EMFILE, ECONNABORTED…: nothing to do but wait for the next readiness.
                Err(_) => return,
            };
            if self.open >= self.max_connections + OVER_LIMIT_SLACK {
                drop(stream);
                shared.stats.refused_connections.incr();
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let _ = stream.set_nodelay(true);
            let over = self.open >= self.max_connections;
            self.next_source = self.next_source.wrapping_add(1).max(1);
            let conn = Conn::new(stream, self.next_source, over);
            let index = match self.slots.iter().position(|s| s.conn.is_none()) {
                Some(i) => i,
                None => {
                    self.slots.push(Slot {
                        generation: 0,
                        conn: None,
                    });
                    self.slots.len() - 1
                }
            };
            let slot = &mut self.slots[index];
            slot.generation = slot.generation.wrapping_add(1);
            let events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
            if self
                .epoll
                .add(conn.fd(), events, token(index, slot.generation))
                .is_err()
            {
                continue;
            }
            slot.conn = Some(conn);
            self.open += 1;
            shared.stats.connected.set(self.open as u64);
        }
    }

    /// Runs `f` on connection `index` with the server's context; closes it on `Err`.
    fn with_conn(
        &mut self,
        shared: &ConsumerShared,
        index: usize,
        f: impl FnOnce(&mut Conn, &mut Ctx<'_>) -> Result<(), super::conn::Close>,
    ) {
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        let Some(conn) = slot.conn.as_mut() else {
            return;
        };
        let token = token(index, slot.generation);
        let mut ctx = Ctx {
            marks: &shared.marks,
            stats: &shared.stats,
            positions: &mut self.positions,
            busy: &mut self.busy,
            data_dir: &self.data_dir,
            msgs: &mut self.msgs,
            commits: &self.committer,
            token,
            tokens: self.tokens.as_deref(),
        };
        if let Err(super::conn::Close(msg)) = f(conn, &mut ctx) {
            if !msg.is_empty() {
                // Rare and about the engine's own files: worth a log line.
                tracing::warn!("consumer connection closed: {msg}");
            }
            conn.release(&mut ctx);
            let _ = self.epoll.delete(conn.fd());
            slot.conn = None;
            self.open -= 1;
            shared.stats.connected.set(self.open as u64);
        }
    }

    fn on_event(&mut self, shared: &ConsumerShared, ev: Ready) {
        let index = (ev.token & 0xFFFF_FFFF) as usize - 2;
        let generation = (ev.token >> 32) as u32;
        if self
            .slots
            .get(index)
            .is_none_or(|s| s.generation != generation)
        {
            return;
        }
        let readable = ev.events & (EPOLLIN | EPOLLRDHUP | EPOLLERR_HUP) != 0;
        self.with_conn(shared, index, |c, ctx| {
            if readable {
                c.on_readable(ctx)?;
            }
            c.pump(ctx)?;
            // Replies drained: read what was left waiting for room.
            if c.read_paused() {
                c.on_readable(ctx)?;
                c.pump(ctx)?;
            }
            Ok(())
        });
    }

    /// A position was stored (or not): remember it, count it, answer the connection if it
    /// is still there.
    fn on_committed(&mut self, shared: &ConsumerShared, done: Done) {
        let Done { job, result } = done;
        match &result {
            Ok(()) => {
                self.positions.remember(job.log, &job.name, job.offset);
                shared.stats.commits.incr();
                let mut named = shared.stats.named.lock().unwrap_or_else(|p| p.into_inner());
                match named
                    .iter_mut()
                    .find(|(l, n, _)| *l == job.log && *n == job.name)
                {
                    Some(entry) => entry.2 = job.offset,
                    None => named.push((job.log, job.name.clone(), job.offset)),
                }
            }
            Err(_) => shared.stats.commit_failures.incr(),
        }
        let index = (job.token & 0xFFFF_FFFF) as usize - 2;
        let generation = (job.token >> 32) as u32;
        if self
            .slots
            .get(index)
            .is_none_or(|s| s.generation != generation)
        {
            return;
        }
        self.with_conn(shared, index, |c, ctx| {
            c.committed(job.offset, &result)?;
            c.pump(ctx)?;
            if c.read_paused() {
                c.on_readable(ctx)?;
                c.pump(ctx)?;
            }
            Ok(())
        });
    }

    /// Whether some connection is on the handshake clock.
    fn handshaking(&self) -> bool {
        self.slots
            .iter()
            .any(|s| s.conn.as_ref().is_some_and(Conn::handshaking))
    }

    /// Closes the connections that did not subscribe in time.
    fn expire_handshakes(&mut self, shared: &ConsumerShared) {
        let now = std::time::Instant::now();
        let timeout = self.handshake_timeout;
        for index in 0..self.slots.len() {
            let expired = self.slots[index]
                .conn
                .as_ref()
                .is_some_and(|c| c.handshake_expired(now, timeout));
            if expired {
                shared.stats.handshake_timeouts.incr();
                self.with_conn(shared, index, |_, _| Err(super::conn::Close(String::new())));
            }
        }
    }

    /// A high watermark moved: every idle subscription may have something to send.
    fn pump_idle(&mut self, shared: &ConsumerShared) {
        for index in 0..self.slots.len() {
            let idle = self.slots[index]
                .conn
                .as_ref()
                .is_some_and(Conn::wants_data);
            if idle {
                self.with_conn(shared, index, |c, ctx| c.pump(ctx));
            }
        }
    }
}

/// The serving thread: serves until `shared.stop` is set (and the eventfd written).
///
/// # Errors
/// The epoll set cannot be made or waited on.
pub(super) fn serve(
    shared: Arc<ConsumerShared>,
    listener: TcpListener,
    positions: Positions,
    data_dir: PathBuf,
    max_connections: usize,
    handshake_timeout: std::time::Duration,
    tokens: Option<Arc<Tokens>>,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    listener.set_nonblocking(true)?;
    let epoll = Epoll::new()?;
    let committer = Committer::start(positions.dir().to_path_buf(), Arc::clone(&shared))?;
    epoll.add(listener.as_raw_fd(), EPOLLIN, LISTENER)?;
    epoll.add(shared.marks.wake_fd(), EPOLLIN, WAKE)?;
    let mut server = Server {
        epoll,
        listener,
        slots: Vec::new(),
        open: 0,
        max_connections,
        next_source: 0,
        positions,
        busy: HashSet::new(),
        data_dir,
        msgs: Vec::with_capacity(256),
        committer,
        handshake_timeout,
        tokens,
    };
    let mut ready = [Ready::default(); 64];
    let mut seen = shared.marks.version();
    let mut last_tick = Instant::now();
    while !shared.stop.load(Ordering::Acquire) {
        let sleep = shared.marks.prepare_sleep(seen);
        let handshaking = server.handshaking();
        let timeout = match (sleep, handshaking) {
            (false, _) => 0,
            (true, true) => HANDSHAKE_TICK_MS,
            (true, false) => -1,
        };
        let n = server.epoll.wait(&mut ready, timeout)?;
        shared.marks.woke();
        let version = shared.marks.version();
        for ev in &ready[..n] {
            match ev.token {
                LISTENER => server.accept(&shared),
                WAKE => shared.marks.drain_wake(),
                _ => server.on_event(&shared, *ev),
            }
        }
        // Busy or asleep, the handshake clock is looked at every tick while it runs.
        if handshaking && last_tick.elapsed() >= Duration::from_millis(HANDSHAKE_TICK_MS as u64) {
            last_tick = Instant::now();
            server.expire_handshakes(&shared);
        }
        while let Some(done) = server.committer.try_done() {
            server.on_committed(&shared, done);
        }
        if version != seen {
            seen = version;
            server.pump_idle(&shared);
        }
    }
    Ok(())
}
