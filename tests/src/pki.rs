//! A test PKI made by the `openssl` command (the TLS tests skip themselves, with a message,
//! when it is not installed; CI installs it): a CA, a server certificate for 127.0.0.1 and
//! `localhost`, a client certificate, and a second CA the servers do not trust with its own
//! client certificate (`stranger`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::TempDir;

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA;
/// and a second CA the server does not trust, with its own client certificate.
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    /// The path of one of its files: `ca.pem`, `server.pem`, `server.key`, `client.pem`, ...
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-subj",
            &format!("/CN={name}"),
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

fn leaf(dir: &Path, ca: &str, name: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

/// The test PKI, or `None` (with a message) when `openssl` is not installed.
pub fn pki() -> Option<Pki> {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("openssl is not installed: skipped (CI installs it)");
        return None;
    }
    let dir = TempDir::new("http-tls-pki");
    let d = dir.path();
    ca(d, "ca");
    ca(d, "other-ca");
    let server = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                  extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n";
    let client = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                  extendedKeyUsage=clientAuth\n";
    leaf(d, "ca", "server", server);
    leaf(d, "ca", "client", client);
    leaf(d, "other-ca", "stranger", client);
    Some(Pki { dir })
}
