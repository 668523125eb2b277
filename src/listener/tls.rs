//! HTTPS for the listener: the certificate and key of `server.tls_cert_file`
//! / `server.tls_key_file` (PEM), read at start (an unreadable file stops the
//! start, naming its key) and again on SIGHUP (a bad file is logged and the
//! certificate in use kept). rustls with ring, the stack reqwest uses too.
//! Also the self-signed certificate of `relogin-farm init --tls`.

use std::path::Path;
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::ServerConfig;

use crate::config::TlsFiles;

/// A certificate file that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {path}: {reason}")]
pub struct TlsError {
    key: &'static str,
    path: String,
    reason: String,
}

/// The certificate the listener presents; [`TlsCert::reload`] swaps it for
/// new connections (those open keep theirs).
#[derive(Debug)]
pub struct TlsCert {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl TlsCert {
    pub fn load(files: &TlsFiles) -> Result<Arc<TlsCert>, TlsError> {
        Ok(Arc::new(TlsCert {
            current: RwLock::new(Arc::new(read(files)?)),
            files: files.clone(),
        }))
    }

    /// Reads the files again; on error the certificate in use stays.
    /// Returns the new certificate's fingerprint.
    pub fn reload(&self) -> Result<String, TlsError> {
        let key = Arc::new(read(&self.files)?);
        let fingerprint = fingerprint(&key.cert[0]);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
        Ok(fingerprint)
    }

    /// The fingerprint of the certificate in use.
    pub fn fingerprint(&self) -> String {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        fingerprint(&current.cert[0])
    }

    /// The rustls configuration presenting this certificate (HTTP/1.1 only,
    /// as the listener serves).
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl ResolvesServerCert for TlsCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn read(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let cert_error = |reason: String| TlsError {
        key: "server.tls_cert_file",
        path: files.cert_file.display().to_string(),
        reason,
    };
    // The key file's content never goes into a message: it is a secret.
    let key_error = |reason: String| TlsError {
        key: "server.tls_key_file",
        path: files.key_file.display().to_string(),
        reason,
    };
    let cert_pem = std::fs::read(&files.cert_file).map_err(|e| cert_error(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(format!("not a PEM certificate chain ({e})")))?;
    if chain.is_empty() {
        return Err(cert_error("no CERTIFICATE in the file".to_owned()));
    }
    let key_pem = std::fs::read(&files.key_file).map_err(|e| key_error(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| key_error("no PEM private key in the file".to_owned()))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        key_error(format!(
            "not usable with the certificate of server.tls_cert_file ({e})"
        ))
    })
}

/// SHA-256 of a certificate (DER), as `AB:CD:…`, the way `openssl x509
/// -fingerprint -sha256` and browsers show it.
pub fn fingerprint(der: &[u8]) -> String {
    let hex: Vec<String> = Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    hex.join(":")
}

/// A self-signed certificate for `names` (DNS names and IP addresses) and
/// its key, both PEM, and the certificate's fingerprint.
pub struct SelfSigned {
    pub cert_pem: String,
    pub key_pem: crate::secret::Secret,
    pub fingerprint: String,
}

pub fn self_signed(names: Vec<String>) -> Result<SelfSigned, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "relogin-farm");
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(SelfSigned {
        fingerprint: fingerprint(cert.der()),
        cert_pem: cert.pem(),
        key_pem: crate::secret::Secret::new(key.serialize_pem()),
    })
}

/// The names `init --tls` certifies: this host's name, `localhost` and
/// both loopback addresses.
pub fn host_names() -> Vec<String> {
    let mut names = Vec::new();
    if let Some(host) = hostname().filter(|h| !h.is_empty() && h != "localhost") {
        names.push(host);
    }
    names.extend(["localhost", "127.0.0.1", "::1"].map(String::from));
    names
}

fn hostname() -> Option<String> {
    let text = std::fs::read_to_string(Path::new("/proc/sys/kernel/hostname")).ok()?;
    Some(text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_generated_pair_loads_and_reload_keeps_the_old_one_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let first = self_signed(host_names()).unwrap();
        let files = TlsFiles {
            cert_file: write(dir.path(), "c.pem", &first.cert_pem),
            key_file: write(dir.path(), "k.pem", first.key_pem.expose()),
        };
        let cert = TlsCert::load(&files).unwrap();
        assert_eq!(cert.fingerprint(), first.fingerprint);
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);

        // A certificate that is not the key's: refused, the old one stays.
        let second = self_signed(vec!["localhost".into()]).unwrap();
        write(dir.path(), "c.pem", &second.cert_pem);
        let e = cert.reload().unwrap_err().to_string();
        assert!(e.starts_with("server.tls_key_file: "), "{e}");
        assert!(!e.contains("PRIVATE"), "{e}");
        assert_eq!(cert.fingerprint(), first.fingerprint);

        write(dir.path(), "k.pem", second.key_pem.expose());
        assert_eq!(cert.reload().unwrap(), second.fingerprint);
        assert_eq!(cert.fingerprint(), second.fingerprint);
    }

    #[test]
    fn unusable_files_are_named_by_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert_file: write(dir.path(), "c.pem", "not a certificate"),
            key_file: write(dir.path(), "k.pem", "not a key"),
        };
        let e = TlsCert::load(&files).unwrap_err().to_string();
        assert!(e.starts_with("server.tls_cert_file: "), "{e}");
        let missing = TlsFiles {
            cert_file: dir.path().join("absent.pem"),
            ..files
        };
        let e = TlsCert::load(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with("server.tls_cert_file: ") && e.contains("absent.pem"),
            "{e}"
        );
    }
}
