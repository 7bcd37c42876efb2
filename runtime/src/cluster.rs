//! Cluster plumbing: the replicated root key, the member address book,
//! bootstrap of a new cluster, joining an existing one, forwarding Invoke
//! to the leader, and peer authentication (who may call the Peer service).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use synapse_consensus::{CredentialFn, PEER_CREDENTIAL_HEADER};
use synapse_proto::v1 as pb;
use tonic::transport::{Channel, ClientTlsConfig};

use crate::error::{RuntimeError, LEADER_ADDR_HEADER, LEADER_HINT_HEADER};
use crate::guard::{Grant, Guard, RevocationSet, RootKey};

/// Cluster-metadata name of the replicated root key (hex private key).
pub const META_ROOT_KEY: &str = "root_key";
/// Prefix of member address entries: `member/<id>` → `host:port`.
pub const META_MEMBER_PREFIX: &str = "member/";

/// Skill name of the peer grant: a token allowing it is the credential
/// every node-to-node call carries. The leading `_` keeps it out of the
/// namespace of registrable skills.
pub const PEER_SKILL: &str = "_peer";

pub fn member_meta_name(id: u64) -> String {
    format!("{META_MEMBER_PREFIX}{id}")
}

/// Prefix of tombstones: `removed/<id>` → the Raft index that removed it.
/// A tombstoned id never joins again (`crate::identity`).
pub const META_REMOVED_PREFIX: &str = "removed/";

pub fn removed_meta_name(id: u64) -> String {
    format!("{META_REMOVED_PREFIX}{id}")
}

/// Prefix of participation marks: `started/<id>` → the term in which a
/// leader first saw `<id>` acknowledge Raft traffic. From then on that id's
/// data holds votes and entries the cluster counts on, so a node that comes
/// back under it with a blank log must not bootstrap (`crate::identity`).
pub const META_STARTED_PREFIX: &str = "started/";

pub fn started_meta_name(id: u64) -> String {
    format!("{META_STARTED_PREFIX}{id}")
}

/// The cluster's root of trust on this node, installed once: at start when
/// it is already replicated, or when the entry that carries it is applied.
pub(crate) struct ClusterKeys {
    guard: OnceLock<Guard>,
    root_token: OnceLock<String>,
    /// Credential for node-to-node calls, minted when the key is installed.
    peer_token: OnceLock<String>,
    /// Before the key arrives: the credential a peer's Raft stream carried,
    /// reused for this node's own calls (see `adopt_peer_credential`).
    adopted: Mutex<Option<String>>,
    public_hex: OnceLock<String>,
    data_dir: PathBuf,
    cache_capacity: usize,
    /// Replicated revoked ids; exists before the key so the state machine
    /// can fill it from the log or store whether or not a guard exists yet.
    revoked: std::sync::Arc<RevocationSet>,
}

impl ClusterKeys {
    pub fn new(data_dir: &Path, cache_capacity: usize) -> Self {
        ClusterKeys {
            guard: OnceLock::new(),
            root_token: OnceLock::new(),
            peer_token: OnceLock::new(),
            adopted: Mutex::new(None),
            public_hex: OnceLock::new(),
            data_dir: data_dir.to_path_buf(),
            cache_capacity,
            revoked: Default::default(),
        }
    }

    pub fn revocations(&self) -> &std::sync::Arc<RevocationSet> {
        &self.revoked
    }

    pub fn guard(&self) -> Option<&Guard> {
        self.guard.get()
    }

    pub fn root_token(&self) -> &str {
        self.root_token.get().map(String::as_str).unwrap_or("")
    }

    /// The `_peer` credential, once the root key is installed here.
    pub fn peer_token(&self) -> Option<&str> {
        self.peer_token.get().map(String::as_str)
    }

    /// A node without the root key (joining with neither a join token nor
    /// the key file: added by an operator's `cluster add`) has no credential
    /// of its own, so the leader would refuse its Raft responses and it
    /// could never catch up to receive the key. It reuses the credential the
    /// leader's stream carried. This trusts nothing it did not already: until
    /// the key arrives it cannot verify anything, and the credential only
    /// helps if it is genuine, since every keyed node verifies it.
    pub fn adopt_peer_credential(&self, credential: &str) {
        if self.guard.get().is_some() || credential.len() > crate::guard::MAX_TOKEN_BYTES {
            return;
        }
        if let Ok(mut slot) = self.adopted.lock() {
            if slot.as_deref() != Some(credential) {
                *slot = Some(credential.to_string());
            }
        }
    }

    fn adopted_credential(&self) -> Option<String> {
        self.adopted.lock().ok()?.clone()
    }

    /// Installs the key: guard, `<data-dir>/root.key` and `root.token`
    /// (both 0600). Idempotent; a different key later is refused loudly.
    pub fn install(&self, private_hex: &str) -> Result<(), RuntimeError> {
        let key = RootKey::from_private_hex(private_hex.trim())?;
        let public = key.public_hex();
        if let Some(existing) = self.public_hex.get() {
            if *existing != public {
                tracing::error!(
                    "a different cluster root key was replicated; keeping the installed one"
                );
            }
            return Ok(());
        }
        let key_path = self.data_dir.join(crate::node::ROOT_KEY_FILE);
        if !key_path.exists() {
            write_private(&key_path, key.to_private_hex().as_bytes())?;
        }
        let token = ensure_root_token(&self.data_dir, &key, &public)?;
        let guard =
            Guard::new(&public, self.cache_capacity)?.with_revocations(self.revoked.clone());
        let peer = key.mint(
            "peer",
            &[Grant {
                skill: PEER_SKILL.into(),
                instance: "*".into(),
                methods: vec![],
                read_only: false,
            }],
            None,
        )?;
        let _ = self.peer_token.set(peer);
        let _ = self.guard.set(guard);
        let _ = self.root_token.set(token);
        let _ = self.public_hex.set(public);
        tracing::info!("cluster root key installed");
        Ok(())
    }
}

/// Reuses `root.token` if it was minted by this key, else mints it.
fn ensure_root_token(
    data_dir: &Path,
    key: &RootKey,
    public_hex: &str,
) -> Result<String, RuntimeError> {
    let path = data_dir.join(crate::node::ROOT_TOKEN_FILE);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let t = existing.trim().to_string();
        if !t.is_empty() && crate::guard::inspect(&t, Some(public_hex)).is_ok() {
            return Ok(t);
        }
    }
    let grant = Grant {
        skill: "*".into(),
        instance: "*".into(),
        methods: vec![],
        read_only: false,
    };
    let token = key.mint("root", &[grant], None)?;
    write_private(&path, token.as_bytes())?;
    Ok(token)
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| RuntimeError::Internal(format!("cannot write {}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| RuntimeError::Internal(format!("cannot write {}: {e}", path.display())))
}

/// Channels to other members, created lazily and reused, with this node's
/// TLS client config (if any) and its peer credential.
#[derive(Default)]
pub(crate) struct PeerChannels {
    channels: Mutex<HashMap<String, Channel>>,
    tls: Option<ClientTlsConfig>,
    credential: Option<CredentialFn>,
}

/// Bound on cached peer channels; members are few, this only guards
/// against a flapping address book.
const MAX_PEER_CHANNELS: usize = 64;

impl PeerChannels {
    pub fn new(tls: Option<ClientTlsConfig>, credential: CredentialFn) -> Self {
        PeerChannels {
            channels: Mutex::new(HashMap::new()),
            tls,
            credential: Some(credential),
        }
    }

    /// Wraps a Peer RPC message with this node's peer credential.
    pub fn peer_request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        synapse_consensus::attach_credential(&mut request, self.credential.as_ref());
        request
    }

    pub fn get(&self, address: &str) -> Result<Channel, RuntimeError> {
        let mut map = self
            .channels
            .lock()
            .map_err(|_| RuntimeError::Internal("channel cache poisoned".into()))?;
        if let Some(c) = map.get(address) {
            return Ok(c.clone());
        }
        if map.len() >= MAX_PEER_CHANNELS {
            map.clear();
        }
        let channel = synapse_consensus::peer_endpoint(address, self.tls.as_ref())
            .map_err(RuntimeError::InvalidArgument)?
            .connect_lazy();
        map.insert(address.to_string(), channel.clone());
        Ok(channel)
    }
}

/// The credential this node sends: its `_peer` token once the root key is
/// installed; before that (a joining node), the join token, which the
/// cluster accepts too, since its holder may become a member anyway.
pub(crate) fn credential_fn(keys: Arc<ClusterKeys>, join_token: Option<String>) -> CredentialFn {
    Arc::new(move || {
        keys.peer_token()
            .map(String::from)
            .or_else(|| join_token.clone())
            .or_else(|| keys.adopted_credential())
    })
}

/// Admits a Peer RPC. With TLS, the connection must have presented a client
/// certificate (rustls has already verified it against the cluster CA).
/// In every mode the request must carry a credential from the cluster root
/// key: the `_peer` grant, or `_system/cluster` rights (a join token).
///
/// Until the root key has reached this node (a new cluster before its first
/// commit, a joining node before it catches up) there is nothing to check a
/// credential against, and the call is admitted: that window is why
/// plaintext is for development only; TLS closes it.
pub(crate) fn authorize_peer<T>(
    keys: &ClusterKeys,
    tls_on: bool,
    request: &tonic::Request<T>,
    rpc: &str,
) -> Result<(), RuntimeError> {
    if tls_on && request.peer_certs().is_none_or(|c| c.is_empty()) {
        return Err(RuntimeError::Unauthenticated(
            "peer RPCs need a client certificate signed by the cluster CA".into(),
        ));
    }
    let credential =
        match request.metadata().get(PEER_CREDENTIAL_HEADER) {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| {
                RuntimeError::Unauthenticated("peer credential is not ASCII".into())
            })?),
        };
    let Some(guard) = keys.guard() else {
        tracing::debug!(rpc, "peer call admitted before the root key is installed");
        if let Some(c) = credential.filter(|_| rpc == "raft") {
            keys.adopt_peer_credential(c);
        }
        return Ok(());
    };
    let peer = crate::guard::Request {
        skill: PEER_SKILL,
        instance: "*",
        method: rpc,
        operation: crate::guard::Operation::Write,
    };
    let first = match guard.check(credential, &peer) {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    let join = crate::guard::Request {
        skill: crate::node::system_methods::SYSTEM_SKILL,
        instance: "cluster",
        method: rpc,
        operation: crate::guard::Operation::Write,
    };
    if guard.check(credential, &join).is_ok() {
        return Ok(());
    }
    tracing::warn!(rpc, error = %first, "peer call refused");
    Err(match RuntimeError::from(first) {
        RuntimeError::Unauthenticated(m) => {
            RuntimeError::Unauthenticated(format!("peer credential: {m}"))
        }
        RuntimeError::PermissionDenied(m) => {
            RuntimeError::PermissionDenied(format!("peer credential: {m}"))
        }
        other => other,
    })
}

/// Admits a `Peer.Probe`. It carries no credential on purpose: the asker
/// is a node with a blank data dir, which lost the root key and its peer
/// credential with its data, and the answer (this node's leader and the
/// asker's own standing) changes nothing and reveals no state. With TLS the
/// caller must still present a certificate signed by the cluster CA.
pub(crate) fn authorize_probe<T>(
    tls_on: bool,
    request: &tonic::Request<T>,
) -> Result<(), RuntimeError> {
    if tls_on && request.peer_certs().is_none_or(|c| c.is_empty()) {
        return Err(RuntimeError::Unauthenticated(
            "peer RPCs need a client certificate signed by the cluster CA".into(),
        ));
    }
    Ok(())
}

/// Turns a status from another node back into our error, keeping the
/// leader hint so the caller can be redirected.
pub(crate) fn error_from_status(s: tonic::Status) -> RuntimeError {
    use tonic::Code;
    let msg = s.message().to_string();
    match s.code() {
        Code::Unauthenticated => RuntimeError::Unauthenticated(msg),
        Code::PermissionDenied => RuntimeError::PermissionDenied(msg),
        Code::NotFound => RuntimeError::NotFound(msg),
        Code::InvalidArgument => RuntimeError::InvalidArgument(msg),
        Code::FailedPrecondition => RuntimeError::FailedPrecondition(msg),
        Code::Aborted => RuntimeError::Aborted(msg),
        Code::ResourceExhausted => RuntimeError::ResourceExhausted(msg),
        Code::DeadlineExceeded => RuntimeError::DeadlineExceeded(msg),
        Code::DataLoss => RuntimeError::DataLoss(msg),
        Code::Unavailable | Code::Cancelled | Code::Unknown => RuntimeError::Unavailable {
            reason: format!("leader: {msg}"),
            leader_id: s
                .metadata()
                .get(LEADER_HINT_HEADER)
                .and_then(|v| v.to_str().ok()?.parse().ok()),
            leader_addr: s
                .metadata()
                .get(LEADER_ADDR_HEADER)
                .and_then(|v| v.to_str().ok().map(String::from)),
        },
        _ => RuntimeError::Internal(format!("leader: {msg}")),
    }
}

/// Calls `f` on the node at `address`, following leader redirects a few
/// times (membership changes must run on the leader).
pub(crate) async fn call_leader<T, F, Fut>(
    channels: &PeerChannels,
    start: &str,
    token: &str,
    mut f: F,
) -> Result<T, RuntimeError>
where
    F: FnMut(
        pb::cluster_client::ClusterClient<Channel>,
        tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    ) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    /// Redirects followed before giving up; a stable cluster needs one.
    const MAX_REDIRECTS: usize = 3;
    let auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii> = format!("Bearer {token}")
        .parse()
        .map_err(|_| RuntimeError::InvalidArgument("join token is not valid header text".into()))?;
    let mut address = start.to_string();
    for _ in 0..=MAX_REDIRECTS {
        let client = pb::cluster_client::ClusterClient::new(channels.get(&address)?);
        match f(client, auth.clone()).await {
            Ok(v) => return Ok(v),
            Err(status) => match error_from_status(status) {
                RuntimeError::Unavailable {
                    leader_addr: Some(next),
                    ..
                } if next != address => address = next,
                other => return Err(other),
            },
        }
    }
    Err(RuntimeError::unavailable("too many leader redirects"))
}
