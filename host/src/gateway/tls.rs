//! TLS on the HTTP and gRPC gateways (`http.tls_*`, `grpc.tls_*`) and on the binary TCP port
//! (`tcp.tls_*`, [`crate::tlsport`]): rustls with the `ring` provider, built once at
//! start-up from PEM files. Every problem names the config key and the file, so the config
//! check and the thread that serves TLS give the same message.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// The TLS files of `[http]` or `[tcp]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// `tls_cert`.
    pub cert: PathBuf,
    /// `tls_key`.
    pub key: PathBuf,
    /// `tls_client_ca` (mutual TLS when set).
    pub client_ca: Option<PathBuf>,
}

fn certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("{key} = \"{}\": cannot read the file: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key} = \"{}\": bad PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{key} = \"{}\": holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")",
            path.display()
        ));
    }
    Ok(certs)
}

fn private_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("{key} = \"{}\": cannot read the file: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        format!(
            "{key} = \"{}\": no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
            path.display()
        )
    })
}

/// The HTTP gateway's TLS configuration: HTTP/1.1 only (ALPN `http/1.1`), TLS 1.2 and 1.3.
///
/// # Errors
/// A file that cannot be read, holds no certificate or key, a key that does not match the
/// certificate, or client CAs rustls refuses; the message names the key and the file.
pub fn server_config(f: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    server_config_for("http", f, b"http/1.1")
}

/// The TLS configuration of the gateway whose keys start with `section` (`http`, `grpc`),
/// offering the one ALPN protocol `alpn` (`http/1.1`, `h2`).
///
/// # Errors
/// As [`server_config`], the message naming `section`'s keys.
pub fn server_config_for(
    section: &str,
    f: &TlsFiles,
    alpn: &[u8],
) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut config = section_config(section, f)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// The binary TCP port's TLS configuration (`tcp.tls_*`): TLS 1.2 and 1.3, no ALPN (the
/// binary protocol is the only one spoken there).
///
/// # Errors
/// As [`server_config`], naming the `tcp.` keys.
pub fn tcp_server_config(f: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    section_config("tcp", f).map(Arc::new)
}

/// The configuration of `section`'s TLS files; every message names `section.tls_*`.
fn section_config(section: &str, f: &TlsFiles) -> Result<rustls::ServerConfig, String> {
    let chain = certs(&format!("{section}.tls_cert"), &f.cert)?;
    let key = private_key(&format!("{section}.tls_key"), &f.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{section} TLS: {e}"))?;
    let builder = match &f.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(&format!("{section}.tls_client_ca"), ca)? {
                roots.add(c).map_err(|e| {
                    format!(
                        "{section}.tls_client_ca = \"{}\": a certificate rustls refuses: {e}",
                        ca.display()
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("{section}.tls_client_ca = \"{}\": {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "{section}.tls_key = \"{}\" does not fit {section}.tls_cert = \"{}\": {e}",
            f.key.display(),
            f.cert.display()
        )
    })
}
