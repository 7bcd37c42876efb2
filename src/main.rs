//! The `synapse` binary: `serve` runs a node; every other subcommand is a
//! gRPC client of a running node (or, for `token`, works offline).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `println!` that exits quietly when stdout is closed (`synapse ... | head`)
/// instead of panicking on the broken pipe.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("error: cannot write output: {e}");
            std::process::exit(1);
        }
    }};
}
use serde_json::{json, Value};
use synapse::client::{v1 as pb, Client, ClientTls};
use synapse::{format_timestamp, Grant, NodeConfig, Restriction, RootKey, Timestamp};

/// mimalloc (see its entry in Cargo.toml for why; the system allocator in a
/// profiling build without the `mimalloc` feature). Counted, so that a node
/// can report its live heap beside its resident memory (`synapse::heap`).
#[global_allocator]
static ALLOCATOR: synapse::heap::CountingAllocator<BaseAllocator> =
    synapse::heap::CountingAllocator::new(BASE_ALLOCATOR);
#[cfg(feature = "mimalloc")]
type BaseAllocator = mimalloc::MiMalloc;
#[cfg(feature = "mimalloc")]
const BASE_ALLOCATOR: BaseAllocator = mimalloc::MiMalloc;
#[cfg(not(feature = "mimalloc"))]
type BaseAllocator = std::alloc::System;
#[cfg(not(feature = "mimalloc"))]
const BASE_ALLOCATOR: BaseAllocator = std::alloc::System;

mod certs;
mod check_history;
mod loadgen;

#[derive(Parser)]
#[command(
    name = "synapse",
    version,
    about = "Distributed actor runtime with a consensus core"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ClientOpts {
    /// gRPC endpoint of a node.
    #[arg(
        long,
        env = "SYNAPSE_ENDPOINT",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    endpoint: String,
    /// File holding the capability token.
    #[arg(
        long,
        env = "SYNAPSE_TOKEN_FILE",
        default_value = "./synapse-data/root.token",
        global = true
    )]
    token_file: PathBuf,
    /// Capability token text (overrides --token-file).
    #[arg(long, env = "SYNAPSE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Cluster CA (PEM): talk TLS (`http://` becomes `https://`) and trust
    /// only this CA.
    #[arg(long, env = "SYNAPSE_TLS_CA", global = true)]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --tls-key.
    #[arg(long, env = "SYNAPSE_CLIENT_TLS_CERT", global = true)]
    tls_cert: Option<PathBuf>,
    /// Key of --tls-cert (PEM).
    #[arg(long, env = "SYNAPSE_CLIENT_TLS_KEY", global = true)]
    tls_key: Option<PathBuf>,
    /// Output format.
    #[arg(
        short = 'w',
        long = "output",
        value_enum,
        default_value = "table",
        global = true
    )]
    output: Output,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve(ServeOpts),
    /// Run a skill method: `synapse invoke counter/alice incr '{"by":2}'`.
    Invoke {
        target: String,
        method: String,
        payload: Option<String>,
        /// Idempotency key; a retry with the same id is applied once.
        #[arg(long, default_value = "")]
        request_id: String,
        /// Fail with FAILED_PRECONDITION unless the instance is at this version.
        #[arg(long)]
        expected_version: Option<u64>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Show an instance's committed state (latest, at a version, or at a time).
    State {
        target: String,
        #[arg(long, default_value_t = 0)]
        version: u64,
        /// Time-travel read: RFC 3339 time, e.g. 2026-11-22T10:00:00Z.
        #[arg(long)]
        at: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List checkpoints, newest first.
    History {
        target: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long, default_value_t = 0)]
        before: u64,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Append a checkpoint equal to an earlier version (history is kept).
    Rollback {
        target: String,
        #[arg(long)]
        to: u64,
        #[arg(long, default_value = "")]
        request_id: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Walk an instance's hash chain.
    Verify {
        target: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Stream new checkpoints of an instance (Ctrl-C to stop).
    Watch {
        target: String,
        /// Stop after this many checkpoints (0 = never).
        #[arg(long, default_value_t = 0)]
        count: u64,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Cluster operations.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Read the cluster clock.
    Now {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Print a new cluster root key (hex) for --root-key-file or a Secret.
    Keygen,
    /// Exit 0 only if the node reports SERVING on grpc.health.v1 (a leader
    /// is known, it is caught up, its clock is within bounds).
    Health {
        /// Service to check ("" = the whole node).
        #[arg(long, default_value = "synapse.v1.Skills")]
        service: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Back up or restore the whole cluster state.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Drive a cluster (or etcd) with a bounded load and report latency.
    Bench(loadgen::BenchOpts),
    /// Capability tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Query this node's audit log of capability decisions, newest first
    /// (needs `_capabilities/cluster.audit`; the root token has it).
    Audit {
        /// Only records from this long ago on, e.g. 30s, 15m, 24h.
        #[arg(long)]
        since: Option<String>,
        /// Inclusive HLC physical-time range in µs (overrides --since).
        #[arg(long)]
        from_micros: Option<u64>,
        #[arg(long)]
        to_micros: Option<u64>,
        /// Only this principal.
        #[arg(long)]
        principal: Option<String>,
        /// Only `allow` or `deny` decisions.
        #[arg(long, value_parser = ["allow", "deny"])]
        outcome: Option<String>,
        /// At most this many records (server default 100, max 10000).
        #[arg(long, default_value_t = 0)]
        limit: u32,
        /// JSON output (same as `-w json`).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// TLS certificates for a cluster.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Check a recorded history (`bench --record-history`) for
    /// linearizability, per key; exits non-zero on a violation.
    CheckHistory(check_history::CheckOpts),
    /// Fault injection for the corruption tests (offline, on a stopped
    /// node's data directory). Not for production use.
    #[command(hide = true)]
    Debug {
        #[command(subcommand)]
        command: DebugCommand,
    },
}

#[derive(Subcommand)]
enum DebugCommand {
    /// Damage one stored record so that detection and repair can be tested.
    Corrupt {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, value_enum)]
        what: CorruptTarget,
        /// `<skill>/<instance>` (for `checkpoint` and `head`).
        #[arg(long)]
        target: Option<String>,
        /// Checkpoint version (default: the head version).
        #[arg(long)]
        version: Option<u64>,
        /// Raft log index (for `raft-entry`; default: the applied index).
        #[arg(long)]
        index: Option<u64>,
    },
    /// Keys and bytes per sled tree (and per record kind in `state`), and
    /// the size of the data dir. Offline: the node must be stopped.
    StorageStats {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, short = 'w', value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum CorruptTarget {
    Checkpoint,
    /// An instance's head record: not repairable from peers.
    Head,
    RaftEntry,
}

/// How the debug tools open a data dir: with the retention it was written
/// with, so that inspecting a node's data never rewrites its history.
fn inspect_options() -> synapse_storage::StoreOptions {
    synapse_storage::StoreOptions {
        retention_as_stored: true,
        ..Default::default()
    }
}

/// `synapse debug corrupt`: flips one byte of a stored record in place.
fn debug_corrupt(
    data_dir: &std::path::Path,
    what: CorruptTarget,
    target: Option<&str>,
    version: Option<u64>,
    index: Option<u64>,
) -> Result<(), Failure> {
    let err = |e: synapse_storage::StorageError| Failure::from(e.to_string());
    // Arguments first, so that a bad one leaves the disk as it was.
    let named = match (what, target, version) {
        (CorruptTarget::RaftEntry, _, _) => None,
        (_, None, _) => return Err(Failure::from("--target is required".to_string())),
        (CorruptTarget::Head, Some(_), Some(_)) => {
            return Err(Failure::from(
                "--version is for `checkpoint`; a head record has none".to_string(),
            ))
        }
        (_, Some(target), _) => Some(split_target(target)?),
    };
    if !data_dir.is_dir() {
        return Err(Failure::from(format!(
            "no data dir at {}",
            data_dir.display()
        )));
    }
    let store = synapse_storage::Store::open(data_dir, inspect_options()).map_err(err)?;
    let what = match (what, named) {
        (CorruptTarget::Head, Some((skill, instance))) => {
            store.debug_corrupt_head(&skill, &instance).map_err(err)?
        }
        (_, Some((skill, instance))) => store
            .debug_corrupt_checkpoint(&skill, &instance, version)
            .map_err(err)?,
        // `named` is `None` for `raft-entry` only.
        (_, None) => {
            let index = match index {
                Some(i) => i,
                None => store.applied_index().map_err(err)?,
            };
            store.debug_corrupt_raft_entry(index).map_err(|e| match e {
                synapse_storage::StorageError::NotFound => {
                    Failure::from(format!("no raft log record at index {index}"))
                }
                e => err(e),
            })?
        }
    };
    store.sync().map_err(err)?;
    outln!("corrupted {what}");
    Ok(())
}

/// `synapse debug storage-stats`: where a data dir's bytes are. Keys in
/// `state` are grouped by their leading tag byte (checkpoint, head,
/// request, cluster, ...), so growth can be attributed to a record kind;
/// `raft_log` and `audit` are segment files (records retained, bytes on
/// disk).
fn debug_storage_stats(data_dir: &std::path::Path, output: Output) -> Result<(), Failure> {
    let err = |e: synapse_storage::StorageError| Failure::from(e.to_string());
    let store = synapse_storage::Store::open(data_dir, inspect_options()).map_err(err)?;
    let mut rows: Vec<(String, u64, u64, u64)> = Vec::new();
    // The Raft log is in segment files: entries and bytes on disk (keys
    // are the record headers).
    let (_, log_bytes, log_entries) = store.raft_log().disk_usage();
    rows.push(("raft_log".to_string(), log_entries, 0, log_bytes));
    let (_, audit_bytes, audit_records) = store.audit_disk_usage();
    rows.push(("audit".to_string(), audit_records, 0, audit_bytes));
    for tree_name in ["state", "raft_meta"] {
        let tree = store.raw_tree(tree_name).map_err(err)?;
        let mut groups: std::collections::BTreeMap<String, (u64, u64, u64)> = Default::default();
        for item in tree.iter() {
            let (k, v) = item.map_err(|e| Failure::from(e.to_string()))?;
            let group = if tree_name == "state" {
                match k.first() {
                    Some(b) if b.is_ascii_graphic() => format!("state/{}", *b as char),
                    Some(b) => format!("state/0x{b:02x}"),
                    None => "state/(empty)".into(),
                }
            } else {
                tree_name.to_string()
            };
            let g = groups.entry(group).or_default();
            g.0 += 1;
            g.1 += k.len() as u64;
            g.2 += v.len() as u64;
        }
        if groups.is_empty() {
            groups.insert(tree_name.to_string(), (0, 0, 0));
        }
        rows.extend(groups.into_iter().map(|(n, (c, kb, vb))| (n, c, kb, vb)));
    }
    let dir_bytes = dir_size(data_dir);
    let json_rows: Vec<_> = rows
        .iter()
        .map(|(n, c, kb, vb)| json!({"name": n, "keys": c, "key_bytes": kb, "value_bytes": vb}))
        .collect();
    print(
        output,
        &json!({ "data_dir": data_dir, "dir_bytes": dir_bytes, "groups": json_rows }),
        || {
            let mut out = format!(
                "{:<14} {:>12} {:>14} {:>14}\n",
                "group", "keys", "key bytes", "value bytes"
            );
            for (n, c, kb, vb) in &rows {
                out.push_str(&format!("{n:<14} {c:>12} {kb:>14} {vb:>14}\n"));
            }
            out.push_str(&format!("data dir on disk: {dir_bytes} bytes"));
            out
        },
    );
    Ok(())
}

/// Total size of the regular files under `dir` (best effort: unreadable
/// entries count as zero).
fn dir_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a cluster CA, a certificate per node and a client certificate
    /// (PEM; keys 0600). Refuses to overwrite existing files.
    Init {
        /// Directory for ca.pem/ca.key, <node>.pem/<node>.key, client.pem/client.key.
        #[arg(long)]
        out: PathBuf,
        /// Node names; each becomes a DNS SAN of its certificate.
        #[arg(long, value_delimiter = ',', default_value = "n1,n2,n3")]
        nodes: Vec<String>,
        /// Extra SANs (DNS names or IPs) put on every node certificate.
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Role, term, indexes, members and state hash of a node.
    Status {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Add a member (as a learner unless --voter). Id 0 allocates an id
    /// never used in this cluster; a removed id is refused (ids are never
    /// reused).
    Add {
        id: u64,
        /// host:port of the new member.
        address: String,
        #[arg(long)]
        voter: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Promote a caught-up learner to voter.
    Promote {
        id: u64,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Remove a member (refused if it would break quorum).
    Remove {
        id: u64,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Hand leadership to another voter.
    TransferLeader {
        id: u64,
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// Which membership RPC to run.
enum Membership {
    Add(u64, String, bool),
    Promote(u64),
    Remove(u64),
    Transfer(u64),
}

/// Runs a membership change on the leader, following one redirect.
async fn membership(client: &ClientOpts, op: Membership) -> Result<(), Failure> {
    let mut endpoint = client.endpoint.clone();
    for attempt in 0..2 {
        let opts = ClientOpts {
            endpoint: endpoint.clone(),
            ..client.clone()
        };
        let mut c = connect(&opts).await?;
        let result = match &op {
            Membership::Add(id, address, voter) => {
                c.cluster
                    .add_member(pb::AddMemberRequest {
                        id: *id,
                        address: address.clone(),
                        as_voter: *voter,
                        ..Default::default()
                    })
                    .await
            }
            Membership::Promote(id) => {
                c.cluster
                    .promote_member(pb::MemberRequest { id: *id })
                    .await
            }
            Membership::Remove(id) => c.cluster.remove_member(pb::MemberRequest { id: *id }).await,
            Membership::Transfer(id) => {
                c.cluster
                    .transfer_leader(pb::MemberRequest { id: *id })
                    .await
            }
        };
        match result {
            Ok(r) => {
                let r = r.into_inner();
                let v = json!({ "id": r.id, "voters": r.voters, "learners": r.learners });
                print(client.output, &v, || {
                    format!("voters {:?}  learners {:?}", r.voters, r.learners)
                });
                return Ok(());
            }
            Err(s) if s.code() == tonic::Code::Unavailable && attempt == 0 => {
                match s
                    .metadata()
                    .get("x-synapse-leader-addr")
                    .and_then(|v| v.to_str().ok())
                {
                    Some(leader) => {
                        endpoint = synapse::client::endpoint_uri(leader, client.tls_ca.is_some())
                    }
                    None => return Err(s.into()),
                }
            }
            Err(s) => return Err(s.into()),
        }
    }
    Err("leader redirect did not settle".to_string().into())
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Stream a verified backup of the whole state from a node into a file.
    Save {
        file: PathBuf,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Restore a backup into an EMPTY data dir as a new one-voter cluster;
    /// start that node, then let the others join it. Offline.
    Restore {
        file: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        node_id: u64,
    },
}

#[derive(Args)]
struct ScopeOpts {
    /// Skill the token is limited to ("*" = any).
    #[arg(long)]
    skill: Option<String>,
    /// Instance pattern: exact, "*" or a prefix like "user-*".
    #[arg(long)]
    instance: Option<String>,
    /// Comma-separated methods (default: any).
    #[arg(long, value_delimiter = ',')]
    methods: Option<Vec<String>>,
    /// Allow read operations only.
    #[arg(long)]
    read_only: bool,
    /// Lifetime, e.g. 30s, 15m, 24h.
    #[arg(long)]
    ttl: Option<String>,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a token with the cluster root key (needs <data-dir>/root.key).
    Mint {
        #[arg(long, default_value = "./synapse-data", env = "SYNAPSE_DATA_DIR")]
        data_dir: PathBuf,
        /// Who the token is for; recorded in the audit log.
        #[arg(long)]
        principal: String,
        #[command(flatten)]
        scope: ScopeOpts,
    },
    /// Narrow a token offline (no key needed). Reads --token/--token-file.
    Attenuate {
        #[command(flatten)]
        scope: ScopeOpts,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Revoke a token cluster-wide, and every token attenuated from it.
    /// --token/--token-file is the caller's token (needs
    /// `_capabilities/cluster.revoke`; the root token has it).
    Revoke {
        /// The token to revoke.
        target: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Print a token's blocks.
    Inspect {
        #[command(flatten)]
        client: ClientOpts,
        /// Verify against this data dir's root key.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Args)]
struct ServeOpts {
    /// TOML config file; flags and SYNAPSE_* variables override it.
    #[arg(long, env = "SYNAPSE_CONFIG")]
    config: Option<PathBuf>,
    /// Raft id, unique and never reused. 0 with --join or --seed and an
    /// empty data dir: the cluster allocates one (kept in <data-dir>/node-id).
    #[arg(long, env = "SYNAPSE_NODE_ID")]
    node_id: Option<u64>,
    #[arg(long, env = "SYNAPSE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// gRPC listen address.
    #[arg(long, env = "SYNAPSE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Metrics/health listen address.
    #[arg(long, env = "SYNAPSE_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    #[arg(long, env = "SYNAPSE_RETENTION_VERSIONS")]
    retention_versions: Option<u64>,
    /// sled's page cache for instance state, in MiB (default 256).
    #[arg(long, env = "SYNAPSE_STORAGE_CACHE_MIB")]
    storage_cache_mib: Option<u64>,
    #[arg(long, env = "SYNAPSE_MAX_PAYLOAD_BYTES")]
    max_payload_bytes: Option<usize>,
    #[arg(long, env = "SYNAPSE_MAILBOX_CAPACITY")]
    mailbox_capacity: Option<usize>,
    #[arg(long, env = "SYNAPSE_MAX_ACTIVE_INSTANCES")]
    max_active_instances: Option<usize>,
    #[arg(long, env = "SYNAPSE_HANDLER_DEADLINE_MS")]
    handler_deadline_ms: Option<u64>,
    /// Initial members of a new cluster: `1=host:port,2=host:port,...`
    /// (this node included).
    #[arg(long, env = "SYNAPSE_PEERS", value_delimiter = ',')]
    peers: Option<Vec<String>>,
    /// Address other members use to reach this node (default: its entry in
    /// --peers, else --listen).
    #[arg(long, env = "SYNAPSE_ADVERTISE")]
    advertise: Option<String>,
    /// Join the cluster that this member (host:port) belongs to.
    #[arg(long, env = "SYNAPSE_JOIN")]
    join: Option<String>,
    /// Token for joining (needs `_system/cluster` rights); or use --root-key-file.
    #[arg(long, env = "SYNAPSE_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// Seed mode (StatefulSet, compose): node 1 bootstraps, the others join
    /// through this host:port.
    #[arg(long, env = "SYNAPSE_SEED")]
    seed: Option<String>,
    /// `new` (default): with a blank data dir, bootstrap from --peers (or as
    /// node 1 of --seed) unless a reachable member (--probe, the other
    /// --peers, the seed) reports an existing cluster; then a node whose id
    /// is only a preference is admitted to it and any other refuses to
    /// start. `existing`: never bootstrap, always ask to be admitted.
    /// With every other member unreachable `new` cannot see a cluster and
    /// bootstraps: use `existing` whenever one is known to exist.
    #[arg(long, env = "SYNAPSE_INITIAL_CLUSTER_STATE")]
    initial_cluster_state: Option<synapse_runtime::config::InitialClusterState>,
    /// More members (host:port, comma-separated) that a bootstrapping node
    /// with a blank data dir asks whether a cluster already exists, besides
    /// the other --peers and the seed. The seed knows no other member: list
    /// the other pods here.
    #[arg(long, env = "SYNAPSE_PROBE", value_delimiter = ',')]
    probe: Option<Vec<String>>,
    /// Derive --node-id from the hostname's trailing ordinal plus one
    /// (`synapse-0` → 1), as in a StatefulSet. The id is a preference: a
    /// data dir keeps the id it was created under, and an empty one whose
    /// id was removed from the cluster joins under a new id.
    #[arg(long, env = "SYNAPSE_NODE_ID_FROM_HOSTNAME")]
    node_id_from_hostname: bool,
    /// Test-only: skew this node's clock by the integer milliseconds in this
    /// file (re-read every 200 ms), to exercise the clock service.
    #[arg(long, hide = true, env = "SYNAPSE_DEBUG_CLOCK_SKEW_FILE")]
    debug_clock_skew_file: Option<PathBuf>,
    /// VERIFICATION ONLY: serve reads from this node's own possibly stale
    /// state (a planted bug for the linearizability checker). Refused
    /// unless SYNAPSE_DEBUG_UNSAFE=1 is set too.
    #[arg(long, hide = true, env = "SYNAPSE_DEBUG_UNSAFE_STALE_READS")]
    debug_unsafe_stale_reads: bool,
    /// VERIFICATION ONLY: once this node has applied the given Raft index,
    /// damage its own copy of that log record (one flipped byte), to show
    /// what happens when storage goes bad under a running node. Refused
    /// unless SYNAPSE_DEBUG_UNSAFE=1 is set too.
    #[arg(long, hide = true)]
    debug_damage_raft_entry: Option<u64>,
    /// Cluster root key (hex), e.g. a mounted Kubernetes Secret.
    #[arg(long, env = "SYNAPSE_ROOT_KEY_FILE")]
    root_key_file: Option<PathBuf>,
    /// This node's TLS certificate (PEM); with --tls-key and --tls-ca turns
    /// on TLS for clients and peers. Without them: plaintext, development only.
    #[arg(long, env = "SYNAPSE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, env = "SYNAPSE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Cluster CA (PEM): peers must present a certificate it signed.
    #[arg(long, env = "SYNAPSE_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Log filter, e.g. "info" or "synapse=debug,raft=info".
    #[arg(long, env = "SYNAPSE_LOG", default_value = "info")]
    log: String,
}

impl ServeOpts {
    fn into_config(self) -> Result<(NodeConfig, String, Option<PathBuf>), String> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                toml::from_str(&text)
                    .map_err(|e| format!("invalid config {}: {e}", path.display()))?
            }
            None => NodeConfig::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { config.$f = v; } )* };
        }
        set!(
            node_id,
            data_dir,
            retention_versions,
            storage_cache_mib,
            max_payload_bytes,
            mailbox_capacity,
            max_active_instances,
            handler_deadline_ms
        );
        if let Some(l) = self.listen {
            config.listen = Some(l);
        }
        if let Some(l) = self.http_listen {
            config.http_listen = Some(l);
        }
        if let Some(p) = self.peers {
            config.peers = p.into_iter().filter(|p| !p.trim().is_empty()).collect();
        }
        if self.advertise.is_some() {
            config.advertise = self.advertise;
        }
        if self.join.is_some() {
            config.join = self.join;
        }
        if self.join_token.is_some() {
            config.join_token = self.join_token;
        }
        if self.root_key_file.is_some() {
            config.root_key_file = self.root_key_file;
        }
        if self.seed.is_some() {
            config.seed = self.seed;
        }
        if let Some(state) = self.initial_cluster_state {
            config.initial_cluster_state = state;
        }
        if let Some(p) = self.probe {
            config.probe = p.into_iter().filter(|p| !p.trim().is_empty()).collect();
        }
        if self.tls_cert.is_some() {
            config.tls_cert = self.tls_cert;
        }
        if self.tls_key.is_some() {
            config.tls_key = self.tls_key;
        }
        if self.tls_ca.is_some() {
            config.tls_ca = self.tls_ca;
        }
        if self.node_id_from_hostname {
            config.node_id = node_id_from_hostname()?;
            // A pod keeps its ordinal, not its Raft id: after its member was
            // removed, an empty volume joins under a new id.
            config.rejoin_under_new_id = true;
        }
        config.validate()?;
        Ok((config, self.log, self.debug_clock_skew_file))
    }
}

/// `synapse-2` → 3: StatefulSet ordinals start at 0, Raft ids at 1.
fn node_id_from_hostname() -> Result<u64, String> {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .ok_or("cannot read the hostname (set HOSTNAME)")?;
    let ordinal = host
        .rsplit('-')
        .next()
        .and_then(|o| o.parse::<u64>().ok())
        .ok_or_else(|| format!("hostname `{host}` does not end in -<ordinal>"))?;
    ordinal
        .checked_add(1)
        .ok_or_else(|| format!("hostname `{host}`: ordinal {ordinal} is too large"))
}

fn synapse_runtime_restore(
    data_dir: &std::path::Path,
    node_id: u64,
    data: &[u8],
) -> Result<u64, Failure> {
    synapse::restore_backup(data_dir, node_id, data).map_err(|e| Failure::from(e.to_string()))
}

/// A failure the CLI reports: the gRPC code name (or "error") and a message.
struct Failure(String, String);

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        let mut msg = s.message().to_string();
        if let Some(l) = s
            .metadata()
            .get("x-synapse-leader")
            .and_then(|v| v.to_str().ok())
        {
            msg.push_str(&format!(" (leader: node {l})"));
        }
        Failure(format!("{:?}", s.code()), msg)
    }
}

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure("error".into(), s)
    }
}

fn split_target(target: &str) -> Result<(String, String), Failure> {
    match target.split_once('/') {
        Some((s, i)) if !s.is_empty() && !i.is_empty() => Ok((s.into(), i.into())),
        _ => Err(format!("target must be <skill>/<instance>, got `{target}`").into()),
    }
}

fn read_token(opts: &ClientOpts) -> Result<Option<String>, Failure> {
    if let Some(t) = &opts.token {
        return Ok(Some(t.trim().to_string()));
    }
    match std::fs::read_to_string(&opts.token_file) {
        Ok(t) => Ok(Some(t.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read token file {}: {e}", opts.token_file.display()).into()),
    }
}

async fn connect(opts: &ClientOpts) -> Result<Client, Failure> {
    let token = read_token(opts)?;
    Client::connect_tls(&opts.endpoint, token.as_deref(), client_tls(opts)?.as_ref())
        .await
        .map_err(|e| Failure::from(e.to_string()))
}

/// The client TLS settings from `--tls-ca/--tls-cert/--tls-key`.
fn client_tls(opts: &ClientOpts) -> Result<Option<ClientTls>, Failure> {
    match (&opts.tls_ca, &opts.tls_cert, &opts.tls_key) {
        (None, None, None) => Ok(None),
        (None, _, _) => Err("--tls-cert/--tls-key need --tls-ca".to_string().into()),
        (Some(ca), cert, key) => Ok(Some(ClientTls {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        })),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn ts_of(t: &Option<pb::Timestamp>) -> Timestamp {
    t.as_ref()
        .map(|t| Timestamp {
            physical_micros: t.physical_micros,
            logical: t.logical,
            node_id: t.node_id,
        })
        .unwrap_or_default()
}

fn ts_json(t: &Option<pb::Timestamp>) -> Value {
    let ts = ts_of(t);
    json!({ "physical_micros": ts.physical_micros, "logical": ts.logical, "node_id": ts.node_id, "text": format_timestamp(&ts) })
}

fn json_or_text(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn checkpoint_json(cp: &pb::Checkpoint) -> Value {
    json!({
        "skill": cp.skill, "instance": cp.instance, "version": cp.version,
        "state": json_or_text(&cp.state), "timestamp": ts_json(&cp.timestamp),
        "request_id": cp.request_id, "hash": hex(&cp.hash), "parent_hash": hex(&cp.parent_hash),
    })
}

fn print(output: Output, value: &Value, table: impl FnOnce() -> String) {
    match output {
        Output::Json => outln!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Output::Table => outln!("{}", table()),
    }
}

/// Longest `--ttl` / `--since`: a century is past any token's useful life
/// and any audit trail, and keeps `now + ttl` inside `SystemTime`'s range.
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 86_400);

fn parse_ttl(s: &str) -> Result<Duration, Failure> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| Failure::from(format!("bad ttl `{s}`: use e.g. 30s, 15m, 24h, 7d")))?;
    let unit_secs: u64 = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("bad ttl unit in `{s}`: use s, m, h or d").into()),
    };
    n.checked_mul(unit_secs)
        .map(Duration::from_secs)
        .filter(|d| *d <= MAX_TTL)
        .ok_or_else(|| format!("ttl `{s}` is longer than 100 years").into())
}

/// When a token minted now with this ttl expires.
fn expiry_after(ttl: Duration) -> Result<SystemTime, Failure> {
    SystemTime::now().checked_add(ttl).ok_or_else(|| {
        Failure::from("the token's expiry is past what the clock can represent".to_string())
    })
}

fn restriction(scope: &ScopeOpts) -> Result<Restriction, Failure> {
    Ok(Restriction {
        skill: scope.skill.clone(),
        instance: scope.instance.clone(),
        methods: scope.methods.clone(),
        read_only: scope.read_only,
        expires_at: scope
            .ttl
            .as_deref()
            .map(parse_ttl)
            .transpose()?
            .map(expiry_after)
            .transpose()?,
    })
}

fn invoke_table(r: &pb::InvokeResponse) -> String {
    format!(
        "{}\nversion {}  at {}  hash {}{}",
        String::from_utf8_lossy(&r.reply),
        r.version,
        format_timestamp(&ts_of(&r.timestamp)),
        &hex(&r.hash)[..16.min(r.hash.len() * 2)],
        if r.deduplicated {
            "  (deduplicated retry)"
        } else {
            ""
        }
    )
}

fn invoke_json(r: &pb::InvokeResponse) -> Value {
    json!({ "reply": json_or_text(&r.reply), "version": r.version, "timestamp": ts_json(&r.timestamp),
            "hash": hex(&r.hash), "deduplicated": r.deduplicated, "request_id": r.request_id })
}

async fn serve(opts: ServeOpts) -> Result<(), Failure> {
    synapse::register_heap_probe(|| ALLOCATOR.allocated_bytes());
    let stale_reads = opts.debug_unsafe_stale_reads;
    let damage_entry = opts.debug_damage_raft_entry;
    let unsafe_allowed = std::env::var("SYNAPSE_DEBUG_UNSAFE").as_deref() == Ok("1");
    if stale_reads && !unsafe_allowed {
        return Err("--debug-unsafe-stale-reads breaks linearizability on purpose; it needs SYNAPSE_DEBUG_UNSAFE=1 as well".to_string().into());
    }
    if damage_entry.is_some() && !unsafe_allowed {
        return Err("--debug-damage-raft-entry damages this node's data on purpose; it needs SYNAPSE_DEBUG_UNSAFE=1 as well".to_string().into());
    }
    let (config, log, skew_file) = opts.into_config()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&log).map_err(|e| format!("bad --log: {e}"))?,
        )
        .init();
    if stale_reads {
        synapse_runtime::node::enable_debug_unsafe_stale_reads();
    }
    let mut builder = synapse::Node::builder(config);
    if let Some(path) = skew_file {
        builder = builder.clock(skew_from_file(path));
    }
    let node = tokio::task::spawn_blocking(move || builder.start())
        .await
        .map_err(|e| format!("start task failed: {e}"))?
        .map_err(|e| format!("cannot start node: {e}"))?;
    eprintln!(
        "synapse node {} serving gRPC on {} (metrics/health on {}); root token in {}",
        node.core().node_id(),
        node.grpc_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into()),
        node.http_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into()),
        node.core().config().data_dir.join("root.token").display()
    );
    if let Some(index) = damage_entry {
        tokio::spawn(damage_raft_entry_once_applied(
            node.core().store().clone(),
            index,
        ));
    }
    let consensus_died = tokio::select! {
        _ = wait_for_signal() => false,
        _ = consensus_stopped(&node) => true,
    };
    eprintln!("shutting down");
    tokio::task::spawn_blocking(move || node.shutdown())
        .await
        .map_err(|e| format!("shutdown failed: {e}"))?;
    if consensus_died {
        // Exit non-zero so that a supervisor restarts the node: damaged
        // Raft log records are repaired from peers before consensus starts.
        return Err("consensus stopped on this node (see the log above);                     restart it: damaged log records are repaired from peers at start"
            .to_string()
            .into());
    }
    Ok(())
}

/// `--debug-damage-raft-entry`: waits (polling) until `index` is applied,
/// then flips a byte of this node's own copy of that log record. Nothing
/// reads an applied record again until a peer needs it, so the damage is
/// found when this node, as leader, sends it to a follower that lags.
async fn damage_raft_entry_once_applied(store: synapse_storage::Store, index: u64) {
    loop {
        match store.applied_index() {
            Ok(applied) if applied >= index => break,
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => {
                tracing::error!(error = %e, "debug damage: cannot read the applied index");
                return;
            }
        }
    }
    match store.debug_corrupt_raft_entry(index) {
        Ok(what) => tracing::warn!("DEBUG UNSAFE: damaged {what} under the running node"),
        Err(e) => tracing::error!(error = %e, "debug damage: could not damage entry {index}"),
    }
}

/// Resolves once this node's consensus has stopped for good (a fatal
/// storage error or a panic inside raft-rs). Polled: it is rare and a
/// fraction of a second does not matter.
async fn consensus_stopped(node: &synapse::Node) {
    while node.core().raft_status().running {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A clock skewed by the milliseconds written in `path`, polled by a thread.
fn skew_from_file(path: PathBuf) -> std::sync::Arc<synapse::SkewedClock> {
    let clock = std::sync::Arc::new(synapse::SkewedClock::new(0));
    let target = clock.clone();
    std::thread::spawn(move || loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(ms) = text.trim().parse::<i64>() {
                target.set_skew_micros(ms.saturating_mul(1000));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    });
    clock
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Serve(opts) => serve(opts).await,
        Command::Invoke {
            target,
            method,
            payload,
            request_id,
            expected_version,
            client,
        } => {
            let (skill, instance) = split_target(&target)?;
            let mut c = connect(&client).await?;
            let r = c
                .skills
                .invoke(pb::InvokeRequest {
                    skill,
                    instance,
                    method,
                    payload: payload.unwrap_or_default().into_bytes(),
                    request_id,
                    expected_version,
                })
                .await?
                .into_inner();
            print(client.output, &invoke_json(&r), || invoke_table(&r));
            Ok(())
        }
        Command::State {
            target,
            version,
            at,
            client,
        } => {
            let (skill, instance) = split_target(&target)?;
            let at = match at {
                Some(t) => {
                    let dt = chrono::DateTime::parse_from_rfc3339(&t)
                        .map_err(|e| Failure::from(format!("bad --at `{t}`: {e}")))?;
                    let micros = u64::try_from(dt.timestamp_micros())
                        .map_err(|_| Failure::from("--at before 1970".to_string()))?;
                    Some(pb::Timestamp {
                        physical_micros: micros,
                        logical: u32::MAX,
                        node_id: u64::MAX,
                    })
                }
                None => None,
            };
            let mut c = connect(&client).await?;
            let r = c
                .skills
                .get_state(pb::GetStateRequest {
                    skill,
                    instance,
                    version,
                    at,
                })
                .await?
                .into_inner();
            let cp = r.checkpoint.unwrap_or_default();
            print(client.output, &checkpoint_json(&cp), || {
                format!(
                    "{}/{} v{}  at {}  hash {}\n{}",
                    cp.skill,
                    cp.instance,
                    cp.version,
                    format_timestamp(&ts_of(&cp.timestamp)),
                    hex(&cp.hash),
                    String::from_utf8_lossy(&cp.state)
                )
            });
            Ok(())
        }
        Command::History {
            target,
            limit,
            before,
            client,
        } => {
            let (skill, instance) = split_target(&target)?;
            let mut c = connect(&client).await?;
            let r = c
                .skills
                .history(pb::HistoryRequest {
                    skill,
                    instance,
                    before_version: before,
                    limit,
                })
                .await?
                .into_inner();
            let list: Vec<Value> = r.checkpoints.iter().map(checkpoint_json).collect();
            print(client.output, &Value::Array(list), || {
                let mut out = format!(
                    "{:>8}  {:<40}  {:<18}  {}",
                    "VERSION", "TIMESTAMP", "HASH", "STATE"
                );
                for cp in &r.checkpoints {
                    out.push_str(&format!(
                        "\n{:>8}  {:<40}  {:<18}  {}",
                        cp.version,
                        format_timestamp(&ts_of(&cp.timestamp)),
                        &hex(&cp.hash)[..16.min(cp.hash.len() * 2)],
                        String::from_utf8_lossy(&cp.state)
                    ));
                }
                out
            });
            Ok(())
        }
        Command::Rollback {
            target,
            to,
            request_id,
            client,
        } => {
            let (skill, instance) = split_target(&target)?;
            let mut c = connect(&client).await?;
            let r = c
                .skills
                .rollback(pb::RollbackRequest {
                    skill,
                    instance,
                    to_version: to,
                    request_id,
                })
                .await?
                .into_inner();
            print(client.output, &invoke_json(&r), || invoke_table(&r));
            Ok(())
        }
        Command::Verify { target, client } => {
            let (skill, instance) = split_target(&target)?;
            let mut c = connect(&client).await?;
            let r = c
                .skills
                .verify(pb::VerifyRequest { skill, instance })
                .await?
                .into_inner();
            let v = json!({ "ok": r.ok, "versions_checked": r.versions_checked, "oldest_version": r.oldest_version,
                            "latest_version": r.latest_version, "head_hash": hex(&r.head_hash), "problem": r.problem });
            print(client.output, &v, || {
                if r.ok {
                    format!(
                        "OK: {} versions (v{}..=v{}) verify; head {}",
                        r.versions_checked,
                        r.oldest_version,
                        r.latest_version,
                        hex(&r.head_hash)
                    )
                } else {
                    format!("FAILED: {}", r.problem)
                }
            });
            if r.ok {
                Ok(())
            } else {
                Err(Failure("DataLoss".into(), r.problem))
            }
        }
        Command::Watch {
            target,
            count,
            client,
        } => {
            let (skill, instance) = split_target(&target)?;
            let mut c = connect(&client).await?;
            let mut stream = c
                .skills
                .watch(pb::WatchRequest { skill, instance })
                .await?
                .into_inner();
            let mut seen = 0;
            while let Some(cp) = stream.message().await? {
                print(client.output, &checkpoint_json(&cp), || {
                    format!(
                        "v{}  {}  {}",
                        cp.version,
                        format_timestamp(&ts_of(&cp.timestamp)),
                        String::from_utf8_lossy(&cp.state)
                    )
                });
                seen += 1;
                if count != 0 && seen >= count {
                    break;
                }
            }
            Ok(())
        }
        Command::Cluster {
            command: ClusterCommand::Status { client },
        } => {
            let mut c = connect(&client).await?;
            let s = c.cluster.status(pb::StatusRequest {}).await?.into_inner();
            let v = json!({
                "node_id": s.node_id, "role": s.role, "leader_id": s.leader_id, "term": s.term,
                "commit_index": s.commit_index, "applied_index": s.applied_index, "voters": s.voters,
                "learners": s.learners, "state_hash": hex(&s.state_hash), "instances": s.instances, "version": s.version,
                "clock_offset_micros": s.clock_offset_micros, "clock_uncertainty_micros": s.clock_uncertainty_micros,
                "clock_healthy": s.clock_healthy, "clock_problem": s.clock_problem,
                "peers": s.peers.iter().map(|p| json!({"id": p.id, "address": p.address, "match_index": p.match_index, "lag": p.lag,
                    "clock_offset_micros": p.clock_offset_micros, "clock_uncertainty_micros": p.clock_uncertainty_micros,
                    "clock_sample_age_ms": p.clock_sample_age_ms})).collect::<Vec<_>>(),
            });
            print(client.output, &v, || {
                let mut out = format!(
                    "node {}  role {}  leader {}  term {}\ncommit {}  applied {}  instances {}\nvoters {:?}  learners {:?}\nstate hash {}",
                    s.node_id, s.role, s.leader_id, s.term, s.commit_index, s.applied_index, s.instances, s.voters, s.learners, hex(&s.state_hash)
                );
                out.push_str(&format!(
                    "\nclock offset {} µs ± {} µs  {}",
                    s.clock_offset_micros,
                    s.clock_uncertainty_micros,
                    if s.clock_healthy {
                        "healthy".to_string()
                    } else {
                        format!("UNHEALTHY: {}", s.clock_problem)
                    }
                ));
                for p in &s.peers {
                    out.push_str(&format!(
                        "\npeer {}  {}  match {}  lag {}  clock {} µs ± {} µs ({} ms old)",
                        p.id,
                        p.address,
                        p.match_index,
                        p.lag,
                        p.clock_offset_micros,
                        p.clock_uncertainty_micros,
                        p.clock_sample_age_ms
                    ));
                }
                out
            });
            Ok(())
        }
        Command::Cluster {
            command:
                ClusterCommand::Add {
                    id,
                    address,
                    voter,
                    client,
                },
        } => membership(&client, Membership::Add(id, address, voter)).await,
        Command::Cluster {
            command: ClusterCommand::Promote { id, client },
        } => membership(&client, Membership::Promote(id)).await,
        Command::Cluster {
            command: ClusterCommand::Remove { id, client },
        } => membership(&client, Membership::Remove(id)).await,
        Command::Cluster {
            command: ClusterCommand::TransferLeader { id, client },
        } => membership(&client, Membership::Transfer(id)).await,
        Command::Now { client } => {
            let mut c = connect(&client).await?;
            let r = c.clock.now(pb::NowRequest {}).await?.into_inner();
            let v = json!({ "timestamp": ts_json(&r.timestamp), "uncertainty_micros": r.uncertainty_micros });
            print(client.output, &v, || {
                format!(
                    "{} ± {} µs",
                    format_timestamp(&ts_of(&r.timestamp)),
                    r.uncertainty_micros
                )
            });
            Ok(())
        }
        Command::Token {
            command:
                TokenCommand::Revoke {
                    target,
                    reason,
                    client,
                },
        } => {
            let mut c = connect(&client).await?;
            let r = c
                .capabilities
                .revoke(pb::RevokeRequest {
                    token: target.trim().to_string(),
                    reason,
                })
                .await?
                .into_inner();
            let v = json!({ "revocation_ids": r.revocation_ids, "index": r.index });
            print(client.output, &v, || {
                format!(
                    "revoked {} id(s) at index {}:\n  {}",
                    r.revocation_ids.len(),
                    r.index,
                    r.revocation_ids.join("\n  ")
                )
            });
            Ok(())
        }
        Command::Token { command } => token_command(command),
        Command::Audit {
            since,
            from_micros,
            to_micros,
            principal,
            outcome,
            limit,
            json,
            mut client,
        } => {
            if json {
                client.output = Output::Json;
            }
            let from = match (from_micros, since.as_deref()) {
                (Some(f), _) => f,
                (None, Some(s)) => {
                    let ago = parse_ttl(s)?;
                    let now = SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    u64::try_from(now.saturating_sub(ago).as_micros()).unwrap_or(u64::MAX)
                }
                (None, None) => 0,
            };
            let mut c = connect(&client).await?;
            let r = c
                .capabilities
                .audit(pb::AuditRequest {
                    from_micros: from,
                    to_micros: to_micros.unwrap_or(0),
                    principal: principal.unwrap_or_default(),
                    outcome: outcome.unwrap_or_default(),
                    limit,
                })
                .await?
                .into_inner();
            let entries: Vec<Value> = r
                .entries
                .iter()
                .map(|e| {
                    json!({
                        "seq": e.seq, "timestamp": ts_json(&e.timestamp), "principal": e.principal,
                        "skill": e.skill, "instance": e.instance, "method": e.method,
                        "outcome": if e.allowed { "allow" } else { "deny" }, "reason": e.reason,
                        "hash": hex(&e.hash),
                    })
                })
                .collect();
            let v = json!({ "entries": entries, "chain_verified": r.chain_verified });
            print(client.output, &v, || {
                let mut out = format!(
                    "{} record(s), chain {}",
                    r.entries.len(),
                    if r.chain_verified {
                        "verified"
                    } else {
                        "NOT verified"
                    }
                );
                for e in &r.entries {
                    out.push_str(&format!(
                        "\n{:>8}  {}  {:<5} {:<12} {}/{}.{}  {}",
                        e.seq,
                        format_timestamp(&ts_of(&e.timestamp)),
                        if e.allowed { "allow" } else { "deny" },
                        if e.principal.is_empty() {
                            "-"
                        } else {
                            &e.principal
                        },
                        e.skill,
                        e.instance,
                        e.method,
                        e.reason
                    ));
                }
                out
            });
            Ok(())
        }
        Command::Debug {
            command:
                DebugCommand::Corrupt {
                    data_dir,
                    what,
                    target,
                    version,
                    index,
                },
        } => debug_corrupt(&data_dir, what, target.as_deref(), version, index),
        Command::Debug {
            command: DebugCommand::StorageStats { data_dir, output },
        } => debug_storage_stats(&data_dir, output),
        Command::Bench(opts) => loadgen::run(opts).await.map_err(Failure::from),
        Command::CheckHistory(opts) => check_history::run(opts).map_err(Failure::from),
        Command::Health { service, client } => {
            let channel = synapse::client::channel(&client.endpoint, client_tls(&client)?.as_ref())
                .await
                .map_err(|e| Failure::from(e.to_string()))?;
            let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
            let r = h
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.clone(),
                })
                .await?
                .into_inner();
            let serving =
                r.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
            let name = tonic_health::pb::health_check_response::ServingStatus::try_from(r.status)
                .map(|s| s.as_str_name().to_string())
                .unwrap_or_else(|_| r.status.to_string());
            print(
                client.output,
                &json!({ "service": service, "status": name }),
                || name.clone(),
            );
            if serving {
                Ok(())
            } else {
                Err(Failure(
                    "NotServing".into(),
                    format!("{service:?} reports {name}"),
                ))
            }
        }
        Command::Snapshot {
            command: SnapshotCommand::Save { file, client },
        } => {
            use sha2::Digest as _;
            let mut c = connect(&client).await?;
            let mut stream = c.cluster.backup(pb::BackupRequest {}).await?.into_inner();
            let mut data = Vec::new();
            let mut applied = 0;
            while let Some(chunk) = stream.message().await? {
                if chunk.applied_index != 0 {
                    applied = chunk.applied_index;
                }
                data.extend_from_slice(&chunk.data);
            }
            let tmp = file.with_extension("partial");
            std::fs::write(&tmp, &data)
                .map_err(|e| Failure::from(format!("cannot write {}: {e}", tmp.display())))?;
            std::fs::rename(&tmp, &file)
                .map_err(|e| Failure::from(format!("cannot write {}: {e}", file.display())))?;
            let digest = hex(&sha2::Sha256::digest(&data));
            let v = json!({ "file": file, "bytes": data.len(), "applied_index": applied, "sha256": digest });
            print(client.output, &v, || {
                format!(
                    "saved {} bytes at applied index {applied} to {} (sha256 {digest})",
                    data.len(),
                    file.display()
                )
            });
            Ok(())
        }
        Command::Snapshot {
            command:
                SnapshotCommand::Restore {
                    file,
                    data_dir,
                    node_id,
                },
        } => {
            let data = std::fs::read(&file)
                .map_err(|e| Failure::from(format!("cannot read {}: {e}", file.display())))?;
            let applied = synapse_runtime_restore(&data_dir, node_id, &data)?;
            outln!(
                "restored {} at applied index {applied} into {} as node {node_id}; start it with\n  synapse serve --node-id {node_id} --data-dir {} ...\nand let the other nodes join it (--join).",
                file.display(),
                data_dir.display(),
                data_dir.display()
            );
            Ok(())
        }
        Command::Certs {
            command: CertsCommand::Init { out, nodes, hosts },
        } => {
            let hosts: Vec<String> = hosts.into_iter().filter(|h| !h.is_empty()).collect();
            let w = certs::init(&out, &nodes, &hosts).map_err(|e| Failure::from(e.to_string()))?;
            for f in &w.files {
                outln!("{}", f.display());
            }
            Ok(())
        }
        Command::Keygen => {
            outln!("{}", RootKey::generate().to_private_hex());
            Ok(())
        }
    }
}

fn token_command(command: TokenCommand) -> Result<(), Failure> {
    match command {
        TokenCommand::Mint {
            data_dir,
            principal,
            scope,
        } => {
            let key_path = data_dir.join("root.key");
            if !key_path.exists() {
                return Err(format!(
                    "no root key at {} (start a node with this data dir first)",
                    key_path.display()
                )
                .into());
            }
            let key =
                RootKey::load_or_create(&key_path).map_err(|e| Failure::from(e.to_string()))?;
            let grant = Grant {
                skill: scope.skill.clone().unwrap_or_else(|| "*".into()),
                instance: scope.instance.clone().unwrap_or_else(|| "*".into()),
                methods: scope.methods.clone().unwrap_or_default(),
                read_only: scope.read_only,
            };
            let expires = scope
                .ttl
                .as_deref()
                .map(parse_ttl)
                .transpose()?
                .map(expiry_after)
                .transpose()?;
            let token = key
                .mint(&principal, &[grant], expires)
                .map_err(|e| Failure::from(e.to_string()))?;
            outln!("{token}");
            Ok(())
        }
        TokenCommand::Attenuate { scope, client } => {
            let token = read_token(&client)?.ok_or_else(|| {
                Failure::from("no token to attenuate (use --token or --token-file)".to_string())
            })?;
            let narrowed = synapse::attenuate(&token, &restriction(&scope)?)
                .map_err(|e| Failure::from(e.to_string()))?;
            outln!("{narrowed}");
            Ok(())
        }
        TokenCommand::Revoke { .. } => Err(Failure::from(
            "token revoke is handled by the async dispatcher".to_string(),
        )),
        TokenCommand::Inspect { client, data_dir } => {
            let token = read_token(&client)?
                .ok_or_else(|| Failure::from("no token to inspect".to_string()))?;
            let public = match data_dir {
                Some(d) => Some(
                    RootKey::load_or_create(&d.join("root.key"))
                        .map_err(|e| Failure::from(e.to_string()))?
                        .public_hex(),
                ),
                None => None,
            };
            let text = synapse::inspect(&token, public.as_deref())
                .map_err(|e| Failure::from(e.to_string()))?;
            outln!("{text}");
            Ok(())
        }
    }
}

/// mimalloc advises its arenas for transparent huge pages (MADV_HUGEPAGE),
/// and the kernel's khugepaged then collapses any 2 MiB range with a page
/// in use into a whole resident huge page (`max_ptes_none` is 511 by
/// default), while the allocator's purges of freed pages only split them
/// lazily. Measured: a node's anonymous memory was nearly all huge pages,
/// and over 10-minute runs one node of three grew 6-8 % with its live heap
/// flat (benches/README.md, nineteenth pass). Off for the whole process;
/// an embedding service decides for itself.
#[cfg(target_os = "linux")]
fn disable_transparent_huge_pages() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes
    // a flag of this process's memory map; no memory of ours is touched.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn main() {
    // Before the runtime and the node allocate anything large.
    #[cfg(target_os = "linux")]
    if let Err(e) = disable_transparent_huge_pages() {
        eprintln!("warning: cannot disable transparent huge pages: {e}");
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(Failure(code, msg)) = runtime.block_on(run(cli)) {
        if code == "error" {
            eprintln!("error: {msg}");
        } else {
            eprintln!("error: {code}: {msg}");
        }
        std::process::exit(1);
    }
}
