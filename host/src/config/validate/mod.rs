//! [`Config::validate`]: ranges and relations between keys, every problem at once, each
//! naming its key; and the warnings the runner prints.

use std::net::SocketAddr;

use pinstream_core::event::Priority;
use pinstream_core::wire::{ACK_BODY_LEN, MIN_FRAME_LEN, REJECT_BODY_LEN};

use super::ConsumerAuth;
use super::{
    AckSetting, CAPACITY_PRESETS, Config, ConfigError, DurabilitySetting, IdleSetting, MAX_CPU,
    MAX_FRAME_LEN_LIMIT, MAX_TCP_CONNECTIONS, MAX_UDP_DATAGRAM, PlacementMode,
};

mod access;

impl Config {
    /// Checks ranges and relations between keys.
    ///
    /// Returns warnings the runner should print (a server reachable beyond loopback, keys that
    /// have no effect).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing every problem, each starting with its key and value
    /// and saying what is allowed. (Its origin is `"config"`; [`load_checked`](Self::load_checked)
    /// puts the file's path there.)
    pub fn validate(&self) -> Result<Vec<String>, ConfigError> {
        let mut v = Validator::default();
        self.check_engine(&mut v);
        self.check_tcp(&mut v);
        self.check_udp(&mut v);
        self.check_storage(&mut v);
        self.check_pipeline(&mut v);
        self.check_capacity(&mut v);
        self.check_control(&mut v);
        self.check_admin(&mut v);
        self.check_consumers(&mut v);
        self.check_http(&mut v);
        self.check_grpc(&mut v);
        self.check_bridges(&mut v);
        if v.problems.is_empty() {
            Ok(v.warnings)
        } else {
            Err(ConfigError::Invalid {
                origin: "config".to_owned(),
                problems: v.problems,
            })
        }
    }

    fn check_engine(&self, v: &mut Validator) {
        let e = &self.engine;
        v.range(
            "engine.ingest_cpu",
            e.ingest_cpu as u64,
            0,
            MAX_CPU as u64,
            "the affinity mask's size",
        );
        v.range(
            "engine.process_cpu",
            e.process_cpu as u64,
            0,
            MAX_CPU as u64,
            "the affinity mask's size",
        );
        let unpinned = e.overprovisioned || e.placement == PlacementMode::Unpinned;
        if !unpinned && e.ingest_cpu == e.process_cpu {
            v.problem(format!(
                "engine.process_cpu = {}: must differ from engine.ingest_cpu = {} (two pinned, \
                 busy-polling threads on one CPU starve each other); set \
                 engine.placement = \"unpinned\" to share CPUs",
                e.process_cpu, e.ingest_cpu
            ));
        }
        if e.overprovisioned && e.placement == PlacementMode::Pinned {
            v.problem(
                "engine.placement = \"pinned\" contradicts engine.overprovisioned = true (which \
                 means unpinned): remove one of them"
                    .to_owned(),
            );
        }
        v.range("engine.idle_spins", e.idle_spins.into(), 0, 100_000_000, "");
        v.range("engine.idle_yields", e.idle_yields.into(), 0, 1_000_000, "");
        v.range(
            "engine.idle_park_us",
            e.idle_park_us,
            1,
            1_000_000,
            "one park of up to 1 s",
        );
        if unpinned && e.idle != IdleSetting::SpinPark {
            let why = if e.overprovisioned {
                "engine.overprovisioned = true"
            } else {
                "engine.placement = \"unpinned\""
            };
            v.warn(format!(
                "engine.idle = \"{}\" has no effect with {why}: threads do not busy-poll, they \
                 park when idle",
                e.idle.as_str()
            ));
        }
        if e.ack == AckSetting::Durable && self.storage.durability == DurabilitySetting::None {
            v.warn(
                "engine.ack = \"durable\" with storage.durability = \"none\": acks go out once \
                 events are written to the page cache, not synced; a crash of the machine (not \
                 only of the process) can lose acknowledged events"
                    .to_owned(),
            );
        }
    }

    fn check_tcp(&self, v: &mut Validator) {
        let t = &self.tcp;
        self.check_tcp_auth(v);
        // `tcp.listen` beyond loopback: warned about in `check_tcp_exposure`, which knows
        // both TLS and authentication.
        v.range("tcp.max_producers", t.max_producers as u64, 1, 1 << 20, "");
        v.range(
            "tcp.producer_idle_ms",
            t.producer_idle_ms,
            1,
            u64::MAX >> 24,
            "",
        );
        v.range(
            "tcp.max_connections",
            t.max_connections as u64,
            1,
            MAX_TCP_CONNECTIONS as u64,
            "each connection may hold its own rate-limit key, of which this build has 4,096",
        );
        self.check_tcp_buffers(v);
        self.check_tcp_tls(v);
        v.range(
            "tcp.max_rejects",
            t.max_rejects.into(),
            1,
            u32::MAX.into(),
            "",
        );
        v.range(
            "tcp.idle_timeout_ms",
            t.idle_timeout_ms,
            1,
            7 * 24 * 3_600_000,
            "a week",
        );
        v.range(
            "tcp.stall_timeout_ms",
            t.stall_timeout_ms,
            1,
            7 * 24 * 3_600_000,
            "a week",
        );
        v.range(
            "tcp.frame_timeout_ms",
            t.frame_timeout_ms,
            0,
            7 * 24 * 3_600_000,
            "a week; 0 = no limit",
        );
        v.range(
            "tcp.max_connections_per_ip",
            t.max_connections_per_ip as u64,
            1,
            MAX_TCP_CONNECTIONS as u64,
            "",
        );

        if let (Some(tcp), Some(admin)) = (t.listen, self.admin.listen) {
            if tcp == admin && tcp.port() != 0 {
                v.problem(format!(
                    "admin.listen = \"{admin}\": the same address as tcp.listen; give one of \
                     them another port"
                ));
            }
        }
    }

    /// `[tcp]`'s frame length, buffers and in-flight limits, which bound one another.
    fn check_tcp_buffers(&self, v: &mut Validator) {
        let t = &self.tcp;
        if t.max_frame_len < MIN_FRAME_LEN as u64 {
            v.problem(format!(
                "tcp.max_frame_len = {}: must be at least {MIN_FRAME_LEN} (a frame header and trailer)",
                t.max_frame_len
            ));
        } else {
            v.range(
                "tcp.max_frame_len",
                t.max_frame_len,
                0,
                MAX_FRAME_LEN_LIMIT,
                "16 MiB",
            );
        }
        if t.recv_buffer < t.max_frame_len {
            v.problem(format!(
                "tcp.recv_buffer = {}: must be at least tcp.max_frame_len = {} (a whole frame \
                 must fit)",
                t.recv_buffer, t.max_frame_len
            ));
        }
        v.range("tcp.recv_buffer", t.recv_buffer, 0, 1 << 30, "1 GiB");
        let min_send = (MIN_FRAME_LEN + ACK_BODY_LEN.max(REJECT_BODY_LEN)) as u64;
        if t.send_buffer < min_send {
            v.problem(format!(
                "tcp.send_buffer = {}: must be at least {min_send} (one ACK or REJECT frame)",
                t.send_buffer
            ));
        }
        v.range("tcp.send_buffer", t.send_buffer, 0, 1 << 30, "1 GiB");
        v.range(
            "tcp.inflight_frames",
            t.inflight_frames as u64,
            1,
            1 << 24,
            "",
        );
        let per_frame = t.max_events_per_frame();
        if (t.inflight_events as u64) < per_frame.max(1) {
            v.problem(format!(
                "tcp.inflight_events = {}: must be at least {} (the events one frame of \
                 tcp.max_frame_len = {} bytes can carry), or such a frame could never be accepted",
                t.inflight_events,
                per_frame.max(1),
                t.max_frame_len
            ));
        }
        v.range(
            "tcp.inflight_events",
            t.inflight_events as u64,
            1,
            1 << 32,
            "",
        );
    }

    fn check_udp(&self, v: &mut Validator) {
        let u = &self.udp;
        v.listen("udp.listen", u.listen);
        v.range(
            "udp.batch",
            u.batch as u64,
            1,
            1024,
            "UIO_MAXIOV, the most recvmmsg takes",
        );
        v.range(
            "udp.max_datagram",
            u.max_datagram as u64,
            MIN_FRAME_LEN as u64,
            MAX_UDP_DATAGRAM as u64,
            "the largest UDP payload",
        );
        if self.tcp.listen.is_none() && u.listen.is_none() {
            v.warn("tcp.listen and udp.listen are both off: the engine takes no input".to_owned());
        }
    }

    fn check_storage(&self, v: &mut Validator) {
        let s = &self.storage;
        if s.dir.as_os_str().is_empty() {
            v.problem(
                "storage.dir = \"\": must name a directory (e.g. \"./pinstream-data\")".to_owned(),
            );
        }
        v.range("storage.interval_ms", s.interval_ms, 1, 60_000, "a minute");
        v.range("storage.interval_bytes", s.interval_bytes, 1, 1 << 40, "");
        v.range(
            "storage.segment_bytes",
            s.segment_bytes,
            1 << 20,
            1 << 40,
            "1 TiB",
        );
        if s.write_buffer_bytes > s.segment_bytes {
            v.problem(format!(
                "storage.write_buffer_bytes = {}: must be at most storage.segment_bytes = {}",
                s.write_buffer_bytes, s.segment_bytes
            ));
        }
        v.range(
            "storage.write_buffer_bytes",
            s.write_buffer_bytes,
            4096,
            1 << 30,
            "1 GiB",
        );
        if s.index_interval_bytes == 0 || s.index_interval_bytes > s.segment_bytes {
            v.problem(format!(
                "storage.index_interval_bytes = {}: must be 1 ..= storage.segment_bytes = {}",
                s.index_interval_bytes, s.segment_bytes
            ));
        }
        if s.retention_bytes != 0 && s.retention_bytes < s.segment_bytes {
            v.problem(format!(
                "storage.retention_bytes = {}: must be 0 (keep everything) or at least \
                 storage.segment_bytes = {} (retention removes whole segments)",
                s.retention_bytes, s.segment_bytes
            ));
        }
        v.range(
            "storage.retention_hours",
            s.retention_hours,
            0,
            1_000_000,
            "",
        );
        if s.file_mode().is_none() {
            v.problem(format!(
                "storage.mode = {:?}: must be an octal file mode within 0666 that gives the \
                 owner read and write, e.g. \"0600\" (the default: owner only) or \"0640\" \
                 (group may read)",
                s.mode
            ));
        }
    }

    fn check_pipeline(&self, v: &mut Validator) {
        let p = &self.pipeline;
        let cap = &self.capacity;
        if p.topics.is_empty() || p.topics.len() > cap.topics {
            v.problem(format!(
                "pipeline.topics has {} names: must have 1 ..= {} (capacity.topics)",
                p.topics.len(),
                cap.topics
            ));
        }
        for (i, name) in p.topics.iter().enumerate() {
            if name.is_empty() || name.len() > cap.topic_name_bytes {
                v.problem(format!(
                    "pipeline.topics[{i}] = {name:?}: must be 1 ..= {} bytes \
                     (capacity.topic_name_bytes)",
                    cap.topic_name_bytes
                ));
            } else if name.chars().any(char::is_control) {
                v.problem(format!(
                    "pipeline.topics[{i}] = {name:?}: must not contain control characters"
                ));
            }
            if p.topics[..i].contains(name) {
                v.problem(format!("pipeline.topics[{i}] = {name:?}: listed twice"));
            }
        }
        if p.rate_per_source > 0 && p.burst_per_source == 0 {
            v.problem(format!(
                "pipeline.burst_per_source = 0: must be at least 1 when pipeline.rate_per_source \
                 = {} (a bucket of depth 0 admits nothing)",
                p.rate_per_source
            ));
        }
        if p.rate_per_source == 0 && p.burst_per_source != 0 {
            v.warn(format!(
                "pipeline.burst_per_source = {} has no effect: pipeline.rate_per_source = 0 \
                 means unlimited",
                p.burst_per_source
            ));
        }
        v.range(
            "pipeline.dedup_window_ms",
            p.dedup_window_ms,
            1,
            86_400_000,
            "a day",
        );
        v.range(
            "pipeline.aggregate_window_ms",
            p.aggregate_window_ms,
            1,
            3_600_000,
            "an hour",
        );
        v.range(
            "pipeline.retry_attempts",
            p.retry_attempts.into(),
            1,
            1000,
            "",
        );
        v.range(
            "pipeline.retry_max_backoff_us",
            p.retry_max_backoff_us,
            0,
            60_000_000,
            "a minute",
        );
        if p.retry_backoff_us > p.retry_max_backoff_us {
            v.problem(format!(
                "pipeline.retry_backoff_us = {}: must be at most pipeline.retry_max_backoff_us = {}",
                p.retry_backoff_us, p.retry_max_backoff_us
            ));
        }
        if p.budget == 0 || p.budget > cap.lane_capacity {
            v.problem(format!(
                "pipeline.budget = {}: must be 1 ..= capacity.lane_capacity = {}",
                p.budget, cap.lane_capacity
            ));
        }
        if p.alert_rules.len() > cap.alert_rules {
            v.problem(format!(
                "pipeline.alert_rules has {} rules: at most {} (capacity.alert_rules)",
                p.alert_rules.len(),
                cap.alert_rules
            ));
        }
        for (i, rule) in p.alert_rules.iter().enumerate() {
            if p.topic_id(&rule.topic).is_none() {
                v.problem(format!(
                    "pipeline.alert_rules[{i}].topic = {:?}: not in pipeline.topics {:?}",
                    rule.topic, p.topics
                ));
            }
        }
    }

    fn check_capacity(&self, v: &mut Validator) {
        let arena = self.capacity.payload_arena_bytes;
        if arena > pinstream_core::arena::MAX_REGION {
            v.problem(format!(
                "capacity.payload_arena_bytes = {arena}: must be 0 ..= {} (1 GiB)",
                pinstream_core::arena::MAX_REGION
            ));
        }
        if !CAPACITY_PRESETS
            .iter()
            .any(|p| p.compiled() == self.capacity.compiled())
        {
            let mut msg = format!(
                "[capacity] = {}: these sizes are compiled into this build (const generics) and \
                 must equal one of its presets:",
                self.capacity
            );
            for p in CAPACITY_PRESETS {
                msg.push_str(&format!("\n      {p}"));
            }
            v.problem(msg);
        }
    }

    fn check_control(&self, v: &mut Validator) {
        let c = &self.control;
        for name in &c.sheddable {
            if Priority::from_name(name).is_none() {
                v.problem(format!(
                    "control.sheddable: {name:?} is not a priority: one of critical, high, \
                     medium, low, batch"
                ));
            }
        }
        for (key, values) in [
            ("control.depth_permille", c.depth_permille),
            ("control.drop_permille", c.drop_permille),
        ] {
            if values.iter().any(|&x| x > 1000) {
                v.problem(format!(
                    "{key} = {values:?}: each must be at most 1000 (100 %)"
                ));
            } else if values.windows(2).any(|w| w[1] < w[0]) {
                v.problem(format!(
                    "{key} = {values:?}: must not decrease (elevated, degraded, critical, \
                     emergency)"
                ));
            }
        }
        v.range(
            "control.recover_permille",
            c.recover_permille.into(),
            0,
            1000,
            "1000 disables hysteresis",
        );
    }

    fn check_admin(&self, v: &mut Validator) {
        let a = &self.admin;
        v.listen("admin.listen", a.listen);
        v.range(
            "admin.request_timeout_ms",
            a.request_timeout_ms,
            10,
            60_000,
            "a minute",
        );
        v.range(
            "admin.max_connections",
            a.max_connections as u64,
            1,
            1024,
            "",
        );
    }
}

impl Config {
    fn check_consumers(&self, v: &mut Validator) {
        let c = &self.consumers;
        self.check_consumer_auth(v);
        v.range(
            "consumers.max_connections",
            c.max_connections as u64,
            1,
            4096,
            "each holds a socket and a segment file open",
        );
        v.range("consumers.max_named", c.max_named as u64, 1, 1 << 20, "");
        v.range(
            "consumers.handshake_timeout_ms",
            c.handshake_timeout_ms,
            100,
            600_000,
            "ten minutes",
        );
        self.check_helper_cpu(v, "consumers.cpu", c.cpu, "the serving thread");
    }
}

impl Config {
    /// A helper thread's CPU (`consumers.cpu`, `http.cpu`, `tcp.tls_cpu`): within the
    /// affinity mask, and never a pinned engine thread's CPU when `engine.placement` is
    /// `pinned` (under `auto` the decision is made at start: `Engine::start` refuses the CPU
    /// then if the engine's threads are pinned). `what` names the thread.
    fn check_helper_cpu(&self, v: &mut Validator, key: &str, cpu: Option<usize>, what: &str) {
        let Some(cpu) = cpu else {
            return;
        };
        v.range(
            key,
            cpu as u64,
            0,
            MAX_CPU as u64,
            "the affinity mask's size; -1 or \"none\": not pinned",
        );
        let e = &self.engine;
        let pinned = !e.overprovisioned && e.placement == PlacementMode::Pinned;
        if pinned && (cpu == e.ingest_cpu || cpu == e.process_cpu) {
            v.problem(format!(
                "{key} = {cpu}: is a pinned engine thread's CPU (engine.ingest_cpu = {}, \
                 engine.process_cpu = {}); {what} must never share it: choose another CPU, or \
                 -1 for none",
                e.ingest_cpu, e.process_cpu
            ));
        }
    }
}

impl Config {
    fn check_http(&self, v: &mut Validator) {
        let h = &self.http;
        if let Some(a) = h.listen {
            self.warn_gateway_exposure(
                v,
                "http",
                a,
                h.tls_cert.is_some(),
                h.tls_client_ca.is_some(),
            );
            for (key, other) in [
                ("tcp.listen", self.tcp.listen),
                ("admin.listen", self.admin.listen),
                ("consumers.listen", self.consumers.listen),
            ] {
                if other == Some(a) && a.port() != 0 {
                    v.problem(format!(
                        "http.listen = \"{a}\": the same address as {key}; give one of them \
                         another port"
                    ));
                }
            }
        }
        self.check_http_tls(v);
        v.range(
            "http.max_body_bytes",
            h.max_body_bytes as u64,
            64,
            64 << 20,
            "64 MiB",
        );
        v.range(
            "http.max_connections",
            h.max_connections as u64,
            1,
            65_536,
            "",
        );
        v.range(
            "http.header_timeout_ms",
            h.header_timeout_ms,
            10,
            600_000,
            "ten minutes",
        );
        v.range(
            "http.body_timeout_ms",
            h.body_timeout_ms,
            10,
            600_000,
            "ten minutes",
        );
        v.range(
            "http.max_events_per_request",
            h.max_events_per_request as u64,
            1,
            1_000_000,
            "",
        );
        v.range(
            "http.backpressure_wait_ms",
            h.backpressure_wait_ms,
            0,
            60_000,
            "a minute",
        );
        v.range(
            "http.retry_after_secs",
            h.retry_after_secs.into(),
            1,
            3600,
            "an hour",
        );
        self.check_helper_cpu(v, "http.cpu", h.cpu, "the gateway thread");
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.auth.tokens.iter().enumerate() {
            let key = format!("auth.tokens[{i}]");
            if t.name.trim().is_empty() {
                v.problem(format!(
                    "{key}.name: must be given (it names the token in logs and metrics)"
                ));
            } else if !names.insert(t.name.as_str()) {
                v.problem(format!(
                    "{key}.name = {:?}: another token has that name",
                    t.name
                ));
            }
            if t.hash_bytes().is_none() {
                v.problem(format!(
                    "{key}.sha256: must be the token's SHA-256 as 64 hex digits \
                     (`pinstream token-hash`, or `printf %s \"$TOKEN\" | sha256sum`)"
                ));
            }
            if t.topics.is_empty() {
                v.problem(format!(
                    "{key}.topics: empty; name the topics of pipeline.topics it may send to, or [\"*\"] for all"
                ));
            }
            for topic in &t.topics {
                if topic != "*" && !self.pipeline.topics.contains(topic) {
                    v.problem(format!(
                        "{key}.topics: {topic:?} is not in pipeline.topics ({})",
                        self.pipeline.topics.join(", ")
                    ));
                }
            }
            if t.rate > 0 && t.burst == 0 {
                v.problem(format!(
                    "{key}.burst = 0: must be at least 1 when rate is set"
                ));
            }
        }
    }

    /// `[grpc]`: as `[http]`, the same loud warnings beyond loopback.
    fn check_grpc(&self, v: &mut Validator) {
        let g = &self.grpc;
        if let Some(a) = g.listen {
            self.warn_gateway_exposure(
                v,
                "grpc",
                a,
                g.tls_cert.is_some(),
                g.tls_client_ca.is_some(),
            );
            for (key, other) in [
                ("tcp.listen", self.tcp.listen),
                ("admin.listen", self.admin.listen),
                ("consumers.listen", self.consumers.listen),
                ("http.listen", self.http.listen),
            ] {
                if other == Some(a) && a.port() != 0 {
                    v.problem(format!(
                        "grpc.listen = \"{a}\": the same address as {key}; give one of them \
                         another port"
                    ));
                }
            }
        }
        self.check_grpc_tls(v);
        v.range(
            "grpc.max_connections",
            g.max_connections as u64,
            1,
            65_536,
            "",
        );
        v.range(
            "grpc.max_concurrent_streams",
            g.max_concurrent_streams.into(),
            1,
            10_000,
            "",
        );
        v.range(
            "grpc.max_message_bytes",
            g.max_message_bytes as u64,
            1024,
            64 << 20,
            "64 MiB",
        );
        v.range(
            "grpc.max_events_per_request",
            g.max_events_per_request as u64,
            1,
            1_000_000,
            "",
        );
        v.range(
            "grpc.backpressure_wait_ms",
            g.backpressure_wait_ms,
            0,
            60_000,
            "a minute",
        );
        v.range(
            "grpc.handshake_timeout_ms",
            g.handshake_timeout_ms,
            10,
            600_000,
            "ten minutes",
        );
        v.range("grpc.stream_window", g.stream_window as u64, 1, 4096, "");
    }

    fn check_bridges(&self, v: &mut Validator) {
        for (i, b) in self.bridge.iter().enumerate() {
            for p in b.problems(i) {
                v.problem(p);
            }
            if self.consumers.auth == ConsumerAuth::Token && b.engine_token.is_none() {
                v.warn(format!(
                    "bridge[{i}] has no engine_token and consumers.auth = \"token\": this \
                     engine refuses its consumer (give it a token of [[auth.tokens]] as \
                     engine_token)"
                ));
            }
            if self.bridge[..i]
                .iter()
                .any(|o| o.name == b.name && o.log == b.log)
            {
                v.problem(format!(
                    "bridge[{i}].name = {:?}: another bridge reads the {} log under this name",
                    b.name, b.log
                ));
            }
        }
    }
}

/// Collects problems and warnings.
#[derive(Default)]
struct Validator {
    problems: Vec<String>,
    warnings: Vec<String>,
}

impl Validator {
    fn problem(&mut self, p: String) {
        self.problems.push(p);
    }

    fn warn(&mut self, w: String) {
        self.warnings.push(w);
    }

    /// `key = value: must be lo ..= hi` (with `why` after the upper bound when given).
    fn range(&mut self, key: &str, value: u64, lo: u64, hi: u64, why: &str) {
        if value < lo || value > hi {
            let why = if why.is_empty() {
                String::new()
            } else {
                format!(" ({why})")
            };
            self.problem(format!("{key} = {value}: must be {lo} ..= {hi}{why}"));
        }
    }

    fn listen(&mut self, key: &str, addr: Option<SocketAddr>) {
        if let Some(a) = addr {
            if !a.ip().is_loopback() {
                self.warn(format!(
                    "{key} = \"{a}\" is not a loopback address: the server is reachable from \
                     other hosts, with no authentication"
                ));
            }
        }
    }
}
