//! Node configuration, with safe defaults for one local node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bound on the addresses a bootstrapping node probes: members are
/// few, and each probe holds a connection during startup.
pub const MAX_PROBE_ADDRESSES: usize = 32;

/// Longest Raft tick: a one-minute tick already means elections that take
/// ten minutes; larger values only overflow the lease and timeout
/// arithmetic (tick × election ticks) further down.
pub const MAX_RAFT_TICK_MS: u64 = 60_000;

/// Heartbeats carry the commit index too, so holding it back longer than
/// a heartbeat interval (200 ms by default) only delays followers; a
/// second is far past any useful value.
pub const MAX_RAFT_COMMIT_ANNOUNCE_MS: u64 = 1_000;

/// Most ticks before an election: with [`MAX_RAFT_TICK_MS`] that is a week,
/// far past any useful setting, and tick × election ticks × 2 stays far
/// inside a u64 of milliseconds.
pub const MAX_RAFT_ELECTION_TICK: usize = 10_000;

/// Whether a node with a blank Raft log may bootstrap a new cluster from
/// its configuration (etcd's `--initial-cluster-state`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialClusterState {
    /// Bootstrap, unless a reachable member reports a cluster this node
    /// must not bootstrap beside.
    #[default]
    New,
    /// A cluster exists: never bootstrap, ask it to admit this node.
    Existing,
}

impl std::str::FromStr for InitialClusterState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "new" => Ok(InitialClusterState::New),
            "existing" => Ok(InitialClusterState::Existing),
            other => Err(format!(
                "initial cluster state must be `new` or `existing`, not `{other}`"
            )),
        }
    }
}

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
    /// sled's page cache for instance state, in MiB. It bounds the pages
    /// cached at their on-disk size; sled's own bookkeeping for every page
    /// comes on top (`benches/README.md`, 1,000,000 instances).
    pub storage_cache_mib: u64,
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
    /// A leader serves linearizable reads under its read lease (half the
    /// election timeout, renewed while reads flow) instead of a ReadIndex
    /// round per read. Assumes every member uses the same `raft_tick_ms`
    /// and `raft_election_tick` and clocks whose rate errs by well under
    /// 2x. Off: every read waits for a quorum round.
    pub raft_lease_reads: bool,
    /// How long the leader holds back telling followers of a new commit
    /// index when no append carries it (ms; 0 = a message per commit at
    /// once). Followers apply, and their watchers and stale reads see a
    /// write, at most this much later; a sequential writer saves four
    /// messages per write.
    pub raft_commit_announce_ms: u64,
    /// StatefulSet/compose mode: node 1 bootstraps a one-voter cluster on an
    /// empty data dir; every other node joins through this address. The
    /// same binary logic serves Kubernetes and docker-compose.
    pub seed: Option<String>,
    /// `new` (default): a node with a blank Raft log that is configured to
    /// bootstrap (`peers`, or node 1 in `seed` mode) first asks the other
    /// members it knows (`probe_addresses`) whether a cluster already
    /// exists, and bootstraps only if none reports one that it must not
    /// bootstrap beside (`identity`). `existing`: never bootstrap; such a
    /// node always asks an existing cluster to admit it, as `join` does.
    /// When every other member is unreachable the probe cannot tell a new
    /// cluster from a live one that is down, so `new` bootstraps; set
    /// `existing` whenever a cluster is known to exist.
    pub initial_cluster_state: InitialClusterState,
    /// Extra addresses (`host:port`) of members that a bootstrapping node
    /// with a blank log probes, besides the other entries of `peers` and
    /// the seed. The seed (node 1 in `seed` mode) knows no other member
    /// from its configuration, so list the other pods here.
    pub probe: Vec<String>,
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
            storage_cache_mib: synapse_storage::DEFAULT_CACHE_CAPACITY_BYTES >> 20,
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
            raft_lease_reads: true,
            raft_commit_announce_ms: 1,
            seed: None,
            initial_cluster_state: InitialClusterState::New,
            probe: Vec::new(),
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
        let cache_mib = synapse_storage::MIN_CACHE_CAPACITY_BYTES >> 20
            ..=synapse_storage::MAX_CACHE_CAPACITY_BYTES >> 20;
        if !cache_mib.contains(&self.storage_cache_mib) {
            return Err(format!(
                "storage_cache_mib must be between {} and {} (MiB)",
                cache_mib.start(),
                cache_mib.end()
            ));
        }
        let checks: [(bool, &str); 11] = [
            (
                self.node_id != 0 || self.join.is_some() || self.seed.is_some(),
                "node_id must not be 0 (0 asks the cluster for an id, only with join or seed)",
            ),
            (
                (1..=synapse_storage::MAX_RETENTION_VERSIONS).contains(&self.retention_versions),
                "retention_versions must be between 1 and 2^48",
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
            (
                (1..=MAX_RAFT_TICK_MS).contains(&self.raft_tick_ms),
                "raft_tick_ms must be between 1 and 60000",
            ),
            (
                self.raft_election_tick > self.raft_heartbeat_tick && self.raft_heartbeat_tick >= 1,
                "raft_election_tick must exceed raft_heartbeat_tick >= 1",
            ),
            (
                self.raft_election_tick <= MAX_RAFT_ELECTION_TICK,
                "raft_election_tick must be at most 10000",
            ),
            (
                self.raft_commit_announce_ms <= MAX_RAFT_COMMIT_ANNOUNCE_MS,
                "raft_commit_announce_ms must be at most 1000",
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
        if self.probe.len() > MAX_PROBE_ADDRESSES {
            return Err(format!(
                "at most {MAX_PROBE_ADDRESSES} probe addresses (got {})",
                self.probe.len()
            ));
        }
        if let Some(p) = self
            .probe
            .iter()
            .find(|p| p.trim().is_empty() || !p.contains(':'))
        {
            return Err(format!("probe address `{p}` must look like host:port"));
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

    /// True when this node, given a blank Raft log, would bootstrap a new
    /// multi-member cluster from its configuration: a `peers` member, or
    /// node 1 in `seed` mode. (A lone node with neither has no one to ask.)
    pub fn bootstraps_from_config(&self) -> bool {
        self.join.is_none()
            && (!self.peers.is_empty() || (self.seed.is_some() && self.node_id == 1))
    }

    /// Whom a bootstrapping node with a blank log asks whether a cluster
    /// already exists: `probe`, the other `peers` and the seed, without
    /// this node's own address, at most `MAX_PROBE_ADDRESSES`.
    pub fn probe_addresses(&self) -> Vec<String> {
        let me = self.advertise_address();
        let mut out: Vec<String> = Vec::new();
        let peers = self.parsed_peers().unwrap_or_default();
        let candidates = self
            .probe
            .iter()
            .map(|p| p.trim().to_string())
            .chain(
                peers
                    .into_iter()
                    .filter(|(id, _)| *id != self.node_id)
                    .map(|(_, a)| a),
            )
            .chain(self.seed.iter().cloned());
        for a in candidates {
            if Some(&a) != me.as_ref() && !out.contains(&a) && out.len() < MAX_PROBE_ADDRESSES {
                out.push(a);
            }
        }
        out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_ticks_outside_their_bounds_are_refused_by_name() {
        for tick_ms in [0, MAX_RAFT_TICK_MS + 1, u64::MAX] {
            let config = NodeConfig {
                raft_tick_ms: tick_ms,
                ..NodeConfig::default()
            };
            let err = config.validate().expect_err("out-of-range tick accepted");
            assert!(err.contains("raft_tick_ms"), "{tick_ms}: {err}");
        }
        let config = NodeConfig {
            raft_election_tick: MAX_RAFT_ELECTION_TICK + 1,
            ..NodeConfig::default()
        };
        let err = config.validate().expect_err("huge election tick accepted");
        assert!(err.contains("raft_election_tick"), "{err}");
        let widest = NodeConfig {
            raft_tick_ms: MAX_RAFT_TICK_MS,
            raft_election_tick: MAX_RAFT_ELECTION_TICK,
            ..NodeConfig::default()
        };
        assert_eq!(widest.validate(), Ok(()));
    }

    #[test]
    fn a_commit_announce_delay_past_its_bound_is_refused_by_name() {
        for ms in [MAX_RAFT_COMMIT_ANNOUNCE_MS + 1, u64::MAX] {
            let config = NodeConfig {
                raft_commit_announce_ms: ms,
                ..NodeConfig::default()
            };
            let err = config.validate().expect_err("huge announce delay accepted");
            assert!(err.contains("raft_commit_announce_ms"), "{ms}: {err}");
        }
        for ms in [0, MAX_RAFT_COMMIT_ANNOUNCE_MS] {
            let config = NodeConfig {
                raft_commit_announce_ms: ms,
                ..NodeConfig::default()
            };
            assert_eq!(config.validate(), Ok(()), "{ms}");
        }
    }

    #[test]
    fn storage_cache_outside_its_bounds_is_refused_by_name() {
        for mib in [
            0,
            (synapse_storage::MAX_CACHE_CAPACITY_BYTES >> 20) + 1,
            u64::MAX,
        ] {
            let config = NodeConfig {
                storage_cache_mib: mib,
                ..NodeConfig::default()
            };
            let err = config.validate().expect_err("out-of-range cache accepted");
            assert!(err.contains("storage_cache_mib"), "{mib}: {err}");
        }
        for mib in [1, 256, synapse_storage::MAX_CACHE_CAPACITY_BYTES >> 20] {
            let config = NodeConfig {
                storage_cache_mib: mib,
                ..NodeConfig::default()
            };
            assert_eq!(config.validate(), Ok(()), "{mib}");
        }
    }

    #[test]
    fn storage_cache_comes_from_the_config_file_or_defaults_to_256() {
        let empty: NodeConfig = toml::from_str("").unwrap();
        assert_eq!(empty.storage_cache_mib, 256);
        let set: NodeConfig = toml::from_str("storage_cache_mib = 32").unwrap();
        assert_eq!(set.storage_cache_mib, 32);
    }

    #[test]
    fn probe_addresses_are_the_other_members_without_this_node() {
        let peers = NodeConfig {
            node_id: 2,
            peers: vec!["1=a:1".into(), "2=b:1".into(), "3=c:1".into()],
            probe: vec!["d:1".into(), "a:1".into()],
            ..NodeConfig::default()
        };
        assert_eq!(peers.probe_addresses(), ["d:1", "a:1", "c:1"]);
        assert!(peers.bootstraps_from_config());
        // The seed is itself: only the listed pods are asked.
        let seed = NodeConfig {
            node_id: 1,
            advertise: Some("s0:1".into()),
            seed: Some("s0:1".into()),
            probe: vec!["s1:1".into(), "s2:1".into()],
            ..NodeConfig::default()
        };
        assert_eq!(seed.probe_addresses(), ["s1:1", "s2:1"]);
        assert!(seed.bootstraps_from_config());
        let joiner = NodeConfig {
            node_id: 2,
            ..seed.clone()
        };
        assert!(!joiner.bootstraps_from_config());
        assert!(!NodeConfig::default().bootstraps_from_config());
        let too_many = NodeConfig {
            probe: (0..=MAX_PROBE_ADDRESSES)
                .map(|i| format!("h{i}:1"))
                .collect(),
            ..seed.clone()
        };
        assert!(too_many.validate().is_err());
        let bad = NodeConfig {
            probe: vec!["nohostport".into()],
            ..seed
        };
        assert!(bad.validate().is_err());
        assert_eq!("existing".parse(), Ok(InitialClusterState::Existing));
        assert!("old".parse::<InitialClusterState>().is_err());
    }
}
