//! Node configuration, with safe defaults for one local node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything a node needs to start. Deserializes from TOML; every field has
/// a default, so an empty file (or none) runs a local single node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Raft id of this node; unique in the cluster and never reused. 0 with
    /// `join` or `seed` and an empty data dir: the leader allocates one. A
    /// data dir keeps the id it was created under (`identity`).
    pub node_id: u64,
    /// `node_id` is only a preference (derived from a pod ordinal): when it
    /// was removed from the cluster, join an empty data dir under a newly
    /// allocated id instead of refusing, and on restart use the id stored in
    /// the data dir. Set by `--node-id-from-hostname`.
    pub rejoin_under_new_id: bool,
    /// One sled database, the root key and `root.token` live here.
    pub data_dir: PathBuf,
    /// gRPC listen address; `None` runs embedded without a server.
    pub listen: Option<SocketAddr>,
    /// Prometheus `/metrics`, `/healthz`, `/readyz`; `None` disables.
    pub http_listen: Option<SocketAddr>,
    /// Checkpoints kept per instance (and so the request-id dedup window).
    pub retention_versions: u64,
    /// Largest accepted Invoke payload, in bytes.
    pub max_payload_bytes: usize,
    /// Largest state a checkpoint may hold, in bytes: each write rewrites the
    /// whole state, so a huge state is a slow, memory-hungry instance.
    pub max_state_bytes: usize,
    /// Messages queued per instance actor before RESOURCE_EXHAUSTED.
    pub mailbox_capacity: usize,
    /// Instance actors kept in memory; the least recently used is passivated.
    pub max_active_instances: usize,
    /// An instance idle this long is passivated (its state stays on disk).
    pub idle_timeout_ms: u64,
    /// A handler running longer than this is treated as failed.
    pub handler_deadline_ms: u64,
    /// Verified tokens kept in the guard's cache.
    pub token_cache_capacity: usize,
    /// Audit records kept on disk (oldest pruned first).
    pub audit_max_records: u64,
    /// Concurrent Watch streams.
    pub max_watchers: usize,
    /// Checkpoints buffered per Watch stream before it is cut off as too slow.
    pub watch_buffer: usize,
    /// A node whose clock is further than this from the cluster's reports
    /// itself not ready and gives up leadership.
    pub max_clock_offset_ms: u64,
    /// How often each peer's clock is sampled.
    pub clock_sample_interval_ms: u64,
    /// Invoke calls in progress on this node before new ones get
    /// RESOURCE_EXHAUSTED: the bound on memory held by waiting requests.
    pub max_inflight_invokes: usize,
    /// Graceful shutdown waits this long for in-flight calls.
    pub drain_timeout_ms: u64,
    /// Raft tick length in ms; election timeout is `election_tick` ticks.
    pub raft_tick_ms: u64,
    pub raft_election_tick: usize,
    pub raft_heartbeat_tick: usize,
    /// Initial members of a new cluster, `"<id>=<host:port>"`, this node
    /// included. Empty with no `join`: a single-node cluster.
    pub peers: Vec<String>,
    /// Address other members and forwarded clients use to reach this node.
    /// Default: this node's entry in `peers`, else `listen`.
    pub advertise: Option<String>,
    /// Address of any existing member: join that cluster as a learner, then
    /// get promoted to voter once caught up.
    pub join: Option<String>,
    /// Capability token used to join (needs `_system/cluster` rights). If
    /// unset and `root_key_file` is set, one is minted from the key.
    pub join_token: Option<String>,
    /// The cluster root key (hex private key), e.g. from a Kubernetes
    /// Secret. Without it, the first leader generates one and replicates it.
    pub root_key_file: Option<PathBuf>,
    /// Compact the Raft log after this many applied entries.
    pub raft_compact_threshold: u64,
    /// StatefulSet/compose mode: node 1 bootstraps a one-voter cluster on an
    /// empty data dir; every other node joins through this address. The
    /// same binary logic serves Kubernetes and docker-compose.
    pub seed: Option<String>,
    /// This node's TLS certificate (PEM). With `tls_key` and `tls_ca` it
    /// turns on TLS for clients and peers; all three or none.
    pub tls_cert: Option<PathBuf>,
    /// Private key of `tls_cert` (PEM, keep it 0600).
    pub tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): peers must present a certificate it signed,
    /// and this node trusts only it when calling peers.
    pub tls_ca: Option<PathBuf>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: 1,
            rejoin_under_new_id: false,
            data_dir: PathBuf::from("./synapse-data"),
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 50051))),
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 50052))),
            retention_versions: 100,
            max_payload_bytes: 1024 * 1024,
            max_state_bytes: 4 * 1024 * 1024,
            mailbox_capacity: 256,
            max_active_instances: 100_000,
            idle_timeout_ms: 60_000,
            handler_deadline_ms: 1_000,
            token_cache_capacity: 10_000,
            audit_max_records: 1_000_000,
            max_watchers: 1024,
            watch_buffer: 1024,
            max_clock_offset_ms: 500,
            clock_sample_interval_ms: 1_000,
            max_inflight_invokes: 10_000,
            drain_timeout_ms: 5_000,
            raft_tick_ms: 100,
            raft_election_tick: 10,
            raft_heartbeat_tick: 2,
            peers: Vec::new(),
            advertise: None,
            join: None,
            join_token: None,
            root_key_file: None,
            raft_compact_threshold: 20_000,
            seed: None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
        }
    }
}

impl NodeConfig {
    /// A config for an embedded node with no network listeners.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            data_dir: data_dir.into(),
            listen: None,
            http_listen: None,
            ..Default::default()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let checks: [(bool, &str); 9] = [
            (
                self.node_id != 0 || self.join.is_some() || self.seed.is_some(),
                "node_id must not be 0 (0 asks the cluster for an id, only with join or seed)",
            ),
            (
                self.retention_versions >= 1,
                "retention_versions must be >= 1",
            ),
            (
                self.max_payload_bytes >= 1,
                "max_payload_bytes must be >= 1",
            ),
            (self.max_state_bytes >= 64, "max_state_bytes must be >= 64"),
            (self.mailbox_capacity >= 1, "mailbox_capacity must be >= 1"),
            (
                self.max_active_instances >= 1,
                "max_active_instances must be >= 1",
            ),
            (
                self.token_cache_capacity >= 1,
                "token_cache_capacity must be >= 1",
            ),
            (self.raft_tick_ms >= 1, "raft_tick_ms must be >= 1"),
            (
                self.raft_election_tick > self.raft_heartbeat_tick && self.raft_heartbeat_tick >= 1,
                "raft_election_tick must exceed raft_heartbeat_tick >= 1",
            ),
        ];
        if let Some((_, msg)) = checks.iter().find(|(ok, _)| !ok) {
            return Err((*msg).to_string());
        }
        let tls = [&self.tls_cert, &self.tls_key, &self.tls_ca];
        if tls.iter().any(|p| p.is_some()) && !tls.iter().all(|p| p.is_some()) {
            return Err("TLS needs all of tls_cert, tls_key and tls_ca (or none of them)".into());
        }
        let peers = self.parsed_peers()?;
        if !peers.is_empty() && !peers.iter().any(|(id, _)| *id == self.node_id) {
            return Err(format!(
                "peers must include this node's id {}",
                self.node_id
            ));
        }
        let modes = usize::from(!peers.is_empty())
            + usize::from(self.join.is_some())
            + usize::from(self.seed.is_some());
        if modes > 1 {
            return Err(
                "set only one of peers (a new cluster), join (an existing one) or seed".into(),
            );
        }
        if self.is_clustered() && self.listen.is_none() {
            return Err("a cluster member needs a gRPC listen address".into());
        }
        Ok(())
    }

    /// `peers` parsed into (id, address), sorted by id.
    pub fn parsed_peers(&self) -> Result<Vec<(u64, String)>, String> {
        let mut out = Vec::with_capacity(self.peers.len());
        for p in &self.peers {
            let (id, addr) = p
                .split_once('=')
                .ok_or_else(|| format!("peer `{p}` must look like <id>=<host:port>"))?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| format!("peer `{p}`: id must be a positive integer"))?;
            let addr = addr.trim();
            if id == 0 || addr.is_empty() || !addr.contains(':') {
                return Err(format!(
                    "peer `{p}` must look like <id>=<host:port> with id >= 1"
                ));
            }
            if out.iter().any(|(i, _)| *i == id) {
                return Err(format!("peer id {id} listed twice"));
            }
            out.push((id, addr.to_string()));
        }
        out.sort();
        Ok(out)
    }

    /// True when this node talks to peers (any cluster mode).
    pub fn is_clustered(&self) -> bool {
        !self.peers.is_empty() || self.join.is_some() || self.seed.is_some()
    }

    /// The address this node joins through, if it joins at all: `join`, or
    /// `seed` for every node but node 1.
    pub fn join_address(&self) -> Option<String> {
        match (&self.join, &self.seed) {
            (Some(j), _) => Some(j.clone()),
            (None, Some(seed)) if self.node_id != 1 => Some(seed.clone()),
            _ => None,
        }
    }

    /// Where others reach this node.
    pub fn advertise_address(&self) -> Option<String> {
        if let Some(a) = &self.advertise {
            return Some(a.clone());
        }
        if let Ok(peers) = self.parsed_peers() {
            if let Some((_, a)) = peers.iter().find(|(id, _)| *id == self.node_id) {
                return Some(a.clone());
            }
        }
        self.listen.map(|l| l.to_string())
    }

    /// True when TLS is configured (validated: all three files given).
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some() && self.tls_ca.is_some()
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    pub fn handler_deadline(&self) -> Duration {
        Duration::from_millis(self.handler_deadline_ms)
    }
}
