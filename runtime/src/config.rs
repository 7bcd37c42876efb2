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
    /// Raft id of this node; unique in the cluster, never 0.
    pub node_id: u64,
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
    /// Graceful shutdown waits this long for in-flight calls.
    pub drain_timeout_ms: u64,
    /// Raft tick length in ms; election timeout is `election_tick` ticks.
    pub raft_tick_ms: u64,
    pub raft_election_tick: usize,
    pub raft_heartbeat_tick: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: 1,
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
            drain_timeout_ms: 5_000,
            raft_tick_ms: 100,
            raft_election_tick: 10,
            raft_heartbeat_tick: 2,
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
            (self.node_id != 0, "node_id must not be 0"),
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
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, msg)) => Err((*msg).to_string()),
            None => Ok(()),
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    pub fn handler_deadline(&self) -> Duration {
        Duration::from_millis(self.handler_deadline_ms)
    }
}
