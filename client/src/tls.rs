//! TLS for the binary protocol (a server with `tcp.tls_cert`): rustls with the `ring`
//! provider, over the same blocking `TcpStream` the plain connection uses.
//!
//! A [`Connection`](crate::Connection) splits into a [`Writer`](crate::connection::Writer)
//! and a [`Reader`](crate::connection::Reader) used from two threads; one rustls session
//! cannot be split, so both halves share it behind a mutex that is never held across a
//! blocking socket call: the writer seals frames into records under the lock and writes
//! them after; the reader reads raw bytes first and opens them under the lock. Only the
//! writer writes to the socket, so records leave in the order they were sealed.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConnection, RootCertStore};

/// How to speak TLS to the server: whom to trust, what name its certificate must carry, and
/// the client certificate to present (mutual TLS).
#[derive(Clone, Debug)]
pub struct TlsOptions {
    config: Arc<rustls::ClientConfig>,
    name: Option<ServerName<'static>>,
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

fn certs(what: &str, path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(format!("{what} {}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("{what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(bad(format!(
            "{what} {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

impl TlsOptions {
    /// Trusts the CA certificates in the PEM file `ca`; presents `client` (certificate
    /// chain file, key file) when given; expects the server's certificate to carry
    /// `server_name` (a DNS name or an IP address; `None`: the address connected to).
    ///
    /// # Errors
    /// `InvalidInput` naming the file: unreadable, no certificate or key in it, or a key
    /// that does not fit the certificate.
    pub fn from_files(
        ca: &Path,
        client: Option<(&Path, &Path)>,
        server_name: Option<&str>,
    ) -> io::Result<Self> {
        let mut roots = RootCertStore::empty();
        for c in certs("--cacert", ca)? {
            roots
                .add(c)
                .map_err(|e| bad(format!("--cacert {}: {e}", ca.display())))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS: {e}")))?
        .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = certs("--cert", cert)?;
                let k = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| bad(format!("--key {}: {e}", key.display())))?;
                builder.with_client_auth_cert(chain, k).map_err(|e| {
                    bad(format!(
                        "--key {} does not fit --cert {}: {e}",
                        key.display(),
                        cert.display()
                    ))
                })?
            }
        };
        let name = match server_name {
            None => None,
            Some(n) => Some(
                ServerName::try_from(n.to_owned())
                    .map_err(|e| bad(format!("--tls-name {n}: {e}")))?,
            ),
        };
        Ok(Self {
            config: Arc::new(config),
            name,
        })
    }

    /// A configuration made by the caller (its roots, client certificate, versions).
    pub fn from_config(config: Arc<rustls::ClientConfig>, server_name: Option<&str>) -> Self {
        Self {
            config,
            name: server_name.and_then(|n| ServerName::try_from(n.to_owned()).ok()),
        }
    }

    /// Runs the handshake over `stream` (blocking, under its timeouts).
    pub(crate) fn handshake(&self, addr: SocketAddr, stream: &mut TcpStream) -> io::Result<Shared> {
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let mut conn = ClientConnection::new(Arc::clone(&self.config), name)
            .map_err(|e| io::Error::other(format!("{addr}: TLS: {e}")))?;
        while conn.is_handshaking() {
            conn.complete_io(stream).map_err(|e| {
                io::Error::new(e.kind(), format!("{addr}: TLS handshake failed: {e}"))
            })?;
        }
        // Records the server's handshake may have left (none with TLS 1.2; session tickets
        // with 1.3 are read with the first replies).
        while conn.wants_write() {
            conn.write_tls(stream)?;
        }
        Ok(Arc::new(Mutex::new(conn)))
    }
}

/// The session both halves use.
pub(crate) type Shared = Arc<Mutex<ClientConnection>>;

fn lock(s: &Shared) -> MutexGuard<'_, ClientConnection> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// The writing half's state.
#[derive(Debug)]
pub(crate) struct TlsWriter {
    session: Shared,
    /// Sealed records waiting for the socket (reused).
    out: Vec<u8>,
}

impl TlsWriter {
    pub(crate) fn new(session: Shared) -> Self {
        Self {
            session,
            out: Vec::with_capacity(1 << 16),
        }
    }

    /// Seals `data` and writes the records.
    pub(crate) fn write_all(&mut self, stream: &mut TcpStream, mut data: &[u8]) -> io::Result<()> {
        self.out.clear();
        {
            let mut c = lock(&self.session);
            while !data.is_empty() {
                let n = c.writer().write(data)?;
                data = &data[n..];
                while c.wants_write() {
                    c.write_tls(&mut self.out)?;
                }
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the TLS session takes no more data",
                    ));
                }
            }
        }
        stream.write_all(&self.out)
    }

    /// Sends `close_notify`.
    pub(crate) fn close_notify(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        self.out.clear();
        {
            let mut c = lock(&self.session);
            c.send_close_notify();
            while c.wants_write() {
                c.write_tls(&mut self.out)?;
            }
        }
        stream.write_all(&self.out)
    }
}

/// The reading half's state.
#[derive(Debug)]
pub(crate) struct TlsReader {
    session: Shared,
    /// Raw bytes read and not yet given to rustls: `raw[start..end]`.
    raw: Box<[u8]>,
    start: usize,
    end: usize,
    /// The socket reached end of stream (told to rustls once `raw` is empty).
    eof: bool,
}

impl TlsReader {
    pub(crate) fn new(session: Shared) -> Self {
        Self {
            session,
            raw: vec![0; 1 << 16].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
        }
    }

    /// Plaintext into `buf`, as `Read::read`: `Ok(0)` at the end (`close_notify`, or the
    /// socket's end). Timeouts of the socket come back as errors with nothing lost.
    pub(crate) fn read(&mut self, stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut c = lock(&self.session);
                while self.start < self.end && c.wants_read() {
                    let n = c.read_tls(&mut &self.raw[self.start..self.end])?;
                    self.start += n;
                    c.process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    if n == 0 {
                        break;
                    }
                }
                if self.eof && self.start == self.end {
                    let _ = c.read_tls(&mut &[][..]);
                    let _ = c.process_new_packets();
                }
                match c.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // The server's end without close_notify: its end all the same.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) => return Err(e),
                }
                if self.eof && self.start == self.end {
                    return Ok(0);
                }
            }
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            } else if self.end == self.raw.len() && self.start > 0 {
                self.raw.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.raw.len() {
                // rustls takes no more and gives nothing: cannot happen with whole records.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS: records do not open",
                ));
            }
            match stream.read(&mut self.raw[self.end..])? {
                0 => self.eof = true,
                n => self.end += n,
            }
        }
    }
}

/// The files of a TLS client from command-line flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--cacert`: the CAs the server's certificate must chain to.
    pub ca: PathBuf,
    /// `--cert` and `--key`: a client certificate (mutual TLS).
    pub client: Option<(PathBuf, PathBuf)>,
    /// `--tls-name`: the name the server's certificate carries (default: the IP address).
    pub server_name: Option<String>,
}

impl TlsFiles {
    /// The options these files make.
    ///
    /// # Errors
    /// As [`TlsOptions::from_files`].
    pub fn options(&self) -> io::Result<TlsOptions> {
        TlsOptions::from_files(
            &self.ca,
            self.client
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path())),
            self.server_name.as_deref(),
        )
    }
}
