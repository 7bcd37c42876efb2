//! `synapse certs init`: a private cluster CA, one certificate per node and
//! one client certificate, for `--tls-cert/--tls-key/--tls-ca`.
//!
//! Keys are ECDSA P-256 (rcgen's default, ring provider) and written 0600;
//! certificates are public and written 0644. Existing files are never
//! overwritten: a second `init` into the same directory would silently
//! split the cluster into two CAs.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Validity of every certificate. Long, because rotation is manual; the
/// CA key must be guarded accordingly.
const VALIDITY_DAYS: i64 = 825;

/// Node names become file names and DNS SANs: keep them to a safe alphabet
/// and a DNS label's length.
const MAX_NODE_NAME: usize = 63;

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// What `init` wrote, for the summary line.
pub struct Written {
    pub files: Vec<PathBuf>,
}

fn check_name(name: &str) -> Result<(), CertsError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NODE_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !name.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(CertsError::Invalid(format!(
            "node name `{name}` must be 1..={MAX_NODE_NAME} characters of [A-Za-z0-9.-]"
        )))
    }
}

fn validity(params: &mut CertificateParams) {
    let now = rcgen::date_time_ymd(1970, 1, 1)
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
    // A day of slack for clocks that lag the machine that issued the cert.
    params.not_before = now - time_days(1);
    params.not_after = now + time_days(VALIDITY_DAYS);
}

fn time_days(d: i64) -> std::time::Duration {
    std::time::Duration::from_secs(d.unsigned_abs() * 86_400)
}

fn write(path: &Path, bytes: &[u8], private: bool) -> Result<(), CertsError> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts
        .open(path)
        .map_err(|e| CertsError::Io(path.to_path_buf(), e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| CertsError::Io(path.to_path_buf(), e))
}

/// Writes `ca.pem`, `ca.key`, `<node>.pem` + `<node>.key` for each node,
/// and `client.pem` + `client.key` into `out`. Node certificates carry the
/// SANs: node name, `localhost`, `127.0.0.1`, and every `hosts` entry.
pub fn init(out: &Path, nodes: &[String], hosts: &[String]) -> Result<Written, CertsError> {
    if nodes.is_empty() {
        return Err(CertsError::Invalid(
            "--nodes needs at least one name".into(),
        ));
    }
    for n in nodes {
        check_name(n)?;
    }
    if nodes.iter().any(|n| n == "ca" || n == "client") {
        return Err(CertsError::Invalid(
            "`ca` and `client` are reserved file names".into(),
        ));
    }
    for h in hosts {
        if h.is_empty() || h.len() > 253 || h.chars().any(|c| c.is_whitespace() || c == ',') {
            return Err(CertsError::Invalid(format!("bad host `{h}`")));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| CertsError::Io(out.to_path_buf(), e))?;
    // Refuse before writing anything, so a failed run leaves no half set.
    let mut names = vec!["ca".to_string(), "client".to_string()];
    names.extend(nodes.iter().cloned());
    for n in &names {
        for ext in ["pem", "key"] {
            let p = out.join(format!("{n}.{ext}"));
            if p.exists() {
                return Err(CertsError::Invalid(format!(
                    "{} exists; refusing to overwrite (use an empty --out)",
                    p.display()
                )));
            }
        }
    }

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "synapse cluster CA");
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca_params);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let mut files = Vec::new();
    let mut emit = |name: &str, cert_pem: String, key_pem: String| -> Result<(), CertsError> {
        let cert = out.join(format!("{name}.pem"));
        let key = out.join(format!("{name}.key"));
        write(&cert, cert_pem.as_bytes(), false)?;
        write(&key, key_pem.as_bytes(), true)?;
        files.push(cert);
        files.push(key);
        Ok(())
    };
    emit("ca", ca_cert.pem(), ca_key.serialize_pem())?;

    for node in nodes {
        let mut sans = vec![node.clone(), "localhost".into(), "127.0.0.1".into()];
        for h in hosts {
            if !sans.contains(h) {
                sans.push(h.clone());
            }
        }
        let mut params = CertificateParams::new(sans)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("synapse node {node}"));
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        // A node is a server to clients and a client to its peers.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        emit(node, cert.pem(), key.serialize_pem())?;
    }

    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "synapse client");
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut params);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    emit("client", cert.pem(), key.serialize_pem())?;
    Ok(Written { files })
}
