//! Transport security: the node certificate, its key and the cluster CA,
//! loaded once at start, and the tonic (rustls, ring provider) server and
//! client configurations built from them.
//!
//! With TLS on, the server presents the node certificate to everyone. A
//! client certificate is optional at the handshake (clients authenticate
//! with capability tokens), but if one is presented it must chain to the
//! cluster CA, and Peer RPCs refuse any connection without one (see
//! `cluster::authorize_peer`). Node-to-node channels present the node
//! certificate and trust only the cluster CA, never the system roots.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::error::RuntimeError;

/// Largest certificate or key file read: PEM chains are a few KiB; this only
/// stops a mistyped path (a log, a disk image) from being read into memory.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// PEM bytes of this node's identity and the cluster CA.
#[derive(Clone)]
pub struct TlsMaterial {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

/// Reads a PEM file that must contain a block of `kind` (e.g. `CERTIFICATE`).
fn read_pem(path: &Path, what: &str, kind: &str) -> Result<Vec<u8>, RuntimeError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        RuntimeError::InvalidArgument(format!("cannot read {what} {}: {e}", path.display()))
    })?;
    if meta.len() > MAX_PEM_BYTES {
        return Err(RuntimeError::InvalidArgument(format!(
            "{what} {} is {} bytes, over the {MAX_PEM_BYTES}-byte limit",
            path.display(),
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| {
        RuntimeError::InvalidArgument(format!("cannot read {what} {}: {e}", path.display()))
    })?;
    let text = String::from_utf8_lossy(&bytes);
    if !text.contains("-----BEGIN ") || !text.contains(kind) {
        return Err(RuntimeError::InvalidArgument(format!(
            "{what} {} is not a PEM file with a {kind} block",
            path.display()
        )));
    }
    Ok(bytes)
}

impl TlsMaterial {
    /// Loads the three files; each must exist and hold the right PEM block.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<Self, RuntimeError> {
        Ok(TlsMaterial {
            cert_pem: read_pem(cert, "TLS certificate", "CERTIFICATE")?,
            key_pem: read_pem(key, "TLS key", "PRIVATE KEY")?,
            ca_pem: read_pem(ca, "TLS CA", "CERTIFICATE")?,
        })
    }

    /// `Some` when all three paths are given, `None` when none is; anything
    /// in between is a configuration error rather than a silent plaintext.
    pub fn from_paths(
        cert: Option<&PathBuf>,
        key: Option<&PathBuf>,
        ca: Option<&PathBuf>,
    ) -> Result<Option<Self>, RuntimeError> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(c), Some(k), Some(a)) => Self::load(c, k, a).map(Some),
            _ => Err(RuntimeError::InvalidArgument(
                "TLS needs all of tls_cert, tls_key and tls_ca (or none of them)".into(),
            )),
        }
    }

    /// The server side: present the node certificate; verify a client
    /// certificate against the cluster CA when one is offered.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
    }

    /// The client side of node-to-node channels: the node certificate as
    /// client identity, the cluster CA as the only trust root.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_configuration_is_an_error_not_plaintext() {
        let p = PathBuf::from("/nonexistent");
        assert!(matches!(
            TlsMaterial::from_paths(Some(&p), None, None),
            Err(RuntimeError::InvalidArgument(_))
        ));
        assert!(TlsMaterial::from_paths(None, None, None).unwrap().is_none());
    }

    #[test]
    fn files_that_are_not_pem_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.pem");
        std::fs::write(&f, b"not a certificate").unwrap();
        let err = TlsMaterial::load(&f, &f, &f).unwrap_err();
        assert!(matches!(err, RuntimeError::InvalidArgument(_)), "{err}");
        let missing = dir.path().join("missing.pem");
        assert!(TlsMaterial::load(&missing, &f, &f).is_err());
    }
}
