//! The access checks of [`Config::validate`]: who may use each listener (`tcp.auth`,
//! `consumers.auth`, the gateways' tokens), TLS on each (`tcp.tls_*`, `http.tls_*`,
//! `grpc.tls_*`), and the one warning per listener beyond loopback that lacks either.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::Validator;
use crate::config::{Config, ConsumerAuth, TcpAuth};

impl Config {
    /// `consumers.auth`: tokens to check against; and one warning for a `consumers.listen`
    /// beyond loopback, loudest without authentication (the listener has no TLS).
    pub(super) fn check_consumer_auth(&self, v: &mut Validator) {
        let c = &self.consumers;
        let token = c.auth == ConsumerAuth::Token;
        if token && self.auth.tokens.is_empty() {
            v.problem(
                "consumers.auth = \"token\" with no [[auth.tokens]]: no consumer could \
                 connect; add a token (pinstream token-hash) or set consumers.auth = \"none\""
                    .to_owned(),
            );
        }
        if token && !self.auth.tokens.is_empty() && !self.auth.tokens.iter().any(|t| t.read) {
            v.warn(
                "consumers.auth = \"token\" but every token of [[auth.tokens]] says read = \
                 false: no consumer could connect"
                    .to_owned(),
            );
        }
        match c.listen {
            None if token => {
                v.warn("consumers.auth = \"token\" has no effect: consumers.listen is off".into());
            }
            Some(a) if !a.ip().is_loopback() && !token => v.warn(format!(
                "consumers.listen = \"{a}\" is not a loopback address and consumers.auth = \
                 \"none\": ANYONE who can reach it may read every log and move named \
                 consumers' positions; set consumers.auth = \"token\" with [[auth.tokens]]"
            )),
            Some(a) if !a.ip().is_loopback() => v.warn(format!(
                "consumers.listen = \"{a}\" is not a loopback address: tokens and records \
                 cross the network in clear text (the consumer listener has no TLS)"
            )),
            _ => {}
        }
    }

    /// `tcp.auth`: tokens to check against, and UDP (which has no HELLO) off or explicitly
    /// allowed. The warning for a port beyond loopback is `check_tcp_exposure`'s.
    pub(super) fn check_tcp_auth(&self, v: &mut Validator) {
        let t = &self.tcp;
        if t.auth != TcpAuth::Token {
            return;
        }
        if self.auth.tokens.is_empty() {
            v.problem(
                "tcp.auth = \"token\" with no [[auth.tokens]]: no client could connect; \
                 add a token (pinstream token-hash) or set tcp.auth = \"none\""
                    .to_owned(),
            );
        }
        if t.listen.is_none() {
            v.warn("tcp.auth = \"token\" has no effect: tcp.listen is off".to_owned());
        }
        match self.udp.listen {
            Some(a) if !self.udp.allow_unauthenticated => v.problem(format!(
                "tcp.auth = \"token\" with udp.listen = \"{a}\": UDP has no HELLO to \
                 carry a token, so anyone who can reach it may publish; set udp.listen = \
                 \"off\", or udp.allow_unauthenticated = true to keep it open knowingly"
            )),
            // Beyond loopback, `udp.listen`'s own warning says anyone may publish.
            _ => {}
        }
    }

    /// The warning for a gateway (`section` = `http` or `grpc`) listening on `a` beyond
    /// loopback without tokens, without TLS, or without either (loudest).
    pub(super) fn warn_gateway_exposure(
        &self,
        v: &mut Validator,
        section: &str,
        a: SocketAddr,
        tls: bool,
        client_ca: bool,
    ) {
        if a.ip().is_loopback() {
            return;
        }
        let open = self.auth.tokens.is_empty();
        if open && !tls {
            v.warn(format!(
                "{section}.listen = \"{a}\" is not a loopback address, [[auth.tokens]] is \
                 empty and {section}.tls_cert is not set: ANYONE who can reach it may publish \
                 events, with no authentication and in clear text"
            ));
        } else if open {
            let beyond = if client_ca {
                " beyond the client certificate"
            } else {
                ""
            };
            v.warn(format!(
                "{section}.listen = \"{a}\" is not a loopback address and [[auth.tokens]] is \
                 empty: ANYONE who can reach it may publish events, with no authentication{beyond}"
            ));
        } else if !tls {
            v.warn(format!(
                "{section}.listen = \"{a}\" is not a loopback address and {section}.tls_cert is \
                 not set: bearer tokens and events cross the network in clear text"
            ));
        }
    }

    /// `tcp.tls_*`: as [`check_http_tls`](Self::check_http_tls); and the loud warning for a
    /// TCP listener beyond loopback with neither TLS nor authentication (client
    /// certificates are the binary port's authentication here).
    pub(super) fn check_tcp_tls(&self, v: &mut Validator) {
        let t = &self.tcp;
        tls_pair(v, "tcp", &t.tls_cert, &t.tls_key, &t.tls_client_ca, |f| {
            crate::gateway::tcp_server_config(f).map(drop)
        });
        v.range(
            "tcp.tls_handshake_timeout_ms",
            t.tls_handshake_timeout_ms,
            1,
            3_600_000,
            "",
        );
        self.check_helper_cpu(v, "tcp.tls_cpu", t.tls_cpu, "the TLS terminator");
        self.check_tcp_exposure(v);
    }

    /// One warning for a `tcp.listen` beyond loopback that lacks TLS, authentication
    /// (`tcp.auth = "token"`, or client certificates), or both.
    pub(super) fn check_tcp_exposure(&self, v: &mut Validator) {
        let t = &self.tcp;
        let Some(a) = t.listen.filter(|a| !a.ip().is_loopback()) else {
            return;
        };
        let tls = t.tls_cert.is_some();
        let token = t.auth == TcpAuth::Token;
        let authenticated = token || (tls && t.tls_client_ca.is_some());
        match (tls, authenticated) {
            (false, false) => v.warn(format!(
                "tcp.listen = \"{a}\" is not a loopback address, tcp.auth = \"none\" and \
                 tcp.tls_cert is not set: ANYONE who can reach it may publish events, with no \
                 authentication and in clear text; set tcp.auth = \"token\" with \
                 [[auth.tokens]] and tcp.tls_cert/tls_key"
            )),
            (false, true) => v.warn(format!(
                "tcp.listen = \"{a}\" is not a loopback address and tcp.tls_cert is not set: \
                 tokens and events cross the network in clear text"
            )),
            (true, false) => v.warn(format!(
                "tcp.listen = \"{a}\" is not a loopback address, tcp.auth = \"none\" and \
                 tcp.tls_client_ca is not set: ANYONE who can reach it may publish events \
                 (TLS encrypts, it authenticates no client)"
            )),
            (true, true) => {}
        }
    }

    /// `http.tls_*`: both or neither of cert and key, the client CA only with them, and the
    /// files readable, PEM, and the key the certificate's.
    pub(super) fn check_http_tls(&self, v: &mut Validator) {
        let h = &self.http;
        tls_pair(v, "http", &h.tls_cert, &h.tls_key, &h.tls_client_ca, |f| {
            crate::gateway::tls_server_config(f).map(drop)
        });
    }

    /// `grpc.tls_*`: as [`check_http_tls`](Self::check_http_tls), with ALPN `h2`.
    pub(super) fn check_grpc_tls(&self, v: &mut Validator) {
        let g = &self.grpc;
        tls_pair(v, "grpc", &g.tls_cert, &g.tls_key, &g.tls_client_ca, |f| {
            crate::gateway::tls_server_config_for("grpc", f, b"h2").map(drop)
        });
    }
}

/// `section.tls_*`: both or neither of cert and key, the client CA only with them, and the
/// files readable, PEM, and the key the certificate's (`build` makes the configuration).
fn tls_pair(
    v: &mut Validator,
    section: &str,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    client_ca: &Option<PathBuf>,
    build: impl Fn(&crate::gateway::TlsFiles) -> Result<(), String>,
) {
    match (cert, key) {
        (None, None) => {
            if client_ca.is_some() {
                v.problem(format!(
                    "{section}.tls_client_ca is set but {section}.tls_cert and \
                     {section}.tls_key are not: client certificates need TLS"
                ));
            }
        }
        (Some(_), None) => v.problem(format!(
            "{section}.tls_cert is set but {section}.tls_key is not: give both (PEM files)"
        )),
        (None, Some(_)) => v.problem(format!(
            "{section}.tls_key is set but {section}.tls_cert is not: give both (PEM files)"
        )),
        (Some(cert), Some(key)) => {
            let files = crate::gateway::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: client_ca.clone(),
            };
            if let Err(e) = build(&files) {
                v.problem(e);
            }
        }
    }
}
