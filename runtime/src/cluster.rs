//! Cluster plumbing: the replicated root key, the member address book,
//! bootstrap of a new cluster, joining an existing one, and forwarding
//! Invoke to the leader.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use synapse_proto::v1 as pb;
use tonic::transport::{Channel, Endpoint};

use crate::error::{RuntimeError, LEADER_ADDR_HEADER, LEADER_HINT_HEADER};
use crate::guard::{Grant, Guard, RevocationSet, RootKey};

/// Cluster-metadata name of the replicated root key (hex private key).
pub const META_ROOT_KEY: &str = "root_key";
/// Prefix of member address entries: `member/<id>` → `host:port`.
pub const META_MEMBER_PREFIX: &str = "member/";

pub fn member_meta_name(id: u64) -> String {
    format!("{META_MEMBER_PREFIX}{id}")
}

/// The cluster's root of trust on this node, installed once: at start when
/// it is already replicated, or when the entry that carries it is applied.
pub(crate) struct ClusterKeys {
    guard: OnceLock<Guard>,
    root_token: OnceLock<String>,
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

/// Channels to other members, created lazily and reused.
#[derive(Default)]
pub(crate) struct PeerChannels {
    channels: Mutex<HashMap<String, Channel>>,
}

/// Bound on cached peer channels; members are few, this only guards
/// against a flapping address book.
const MAX_PEER_CHANNELS: usize = 64;

impl PeerChannels {
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
        let uri = if address.contains("://") {
            address.to_string()
        } else {
            format!("http://{address}")
        };
        let channel = Endpoint::from_shared(uri)
            .map_err(|e| {
                RuntimeError::InvalidArgument(format!("bad peer address `{address}`: {e}"))
            })?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
        map.insert(address.to_string(), channel.clone());
        Ok(channel)
    }
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
