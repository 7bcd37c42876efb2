//! This node's Raft id: where it comes from, where it is kept, and the rule
//! that makes membership changes safe: **an id is never reused**.
//!
//! A voter's id carries promises: the votes it cast and the entries it
//! acknowledged. A node that lost its data and comes back under the same id
//! has forgotten both; with the old incarnation's late messages still in
//! flight it can help elect two leaders for one term or commit an entry no
//! quorum holds (the simulation's `rejoining_wiped_under_the_same_id_is_caught`
//! shows it). So, as in etcd, where a member that lost its data is removed
//! and added back as a new member:
//! - applying a removal tombstones the id in the replicated configuration
//!   (`removed/<id>`, see `state_machine`) and `Core::add_member` refuses it;
//! - a node that starts to join with a blank Raft log is *admitted* before
//!   its consensus starts (`admit`): the leader adds it as a learner only
//!   if its id is new, or is already a learner (learners never vote), and
//!   can allocate an id never used in this cluster;
//! - the id a data dir was admitted or bootstrapped under is kept in
//!   `<data_dir>/node-id`, so a restart uses it whatever the configuration
//!   derives from a pod ordinal;
//! - a node with a blank Raft log that would *bootstrap* from its
//!   configuration (a `peers` member, or node 1 in `seed` mode) first
//!   probes the members it knows (`Peer.Probe`, `PROBE_TIMEOUT`) and does
//!   not bootstrap if one reports a formed cluster in which its id took
//!   part (a leader marks `started/<id>` once it acknowledged Raft
//!   traffic), was removed, or is not a voter (`decide`). With an explicit
//!   id it refuses to start and names the remedy; with a preference id
//!   (`rejoin_under_new_id`) or `initial_cluster_state = existing` it is
//!   admitted instead. A probe that reaches nobody cannot see a cluster:
//!   then it bootstraps (unless `existing`), as etcd does. A restart with
//!   its log never probes.
//!
//! Owns the id file, the bootstrap probe and the admission call. Never proposes anything itself:
//! the leader decides, in `Core::add_member`.

use std::path::Path;
use std::time::Duration;

use synapse_proto::v1 as pb;

use crate::cluster::{call_leader, PeerChannels};
use crate::config::{InitialClusterState, NodeConfig};
use crate::error::RuntimeError;

/// The file, inside the data dir, that names the id this data belongs to.
pub const NODE_ID_FILE: &str = "node-id";

/// How long a blank joining node keeps asking to be admitted before it
/// gives up (a supervisor restarts it). Long enough for a seed that starts
/// at the same time (a StatefulSet starts its pods in parallel) to elect
/// itself and replicate its root key.
const ADMISSION_TIMEOUT: Duration = Duration::from_secs(120);
/// One admission attempt; a leader answers in milliseconds.
const ADMISSION_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between attempts.
const ADMISSION_MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The id stored in `data_dir`, if any. A file that does not parse is
/// DATA_LOSS: guessing an id is exactly what this module exists to prevent.
pub fn read_id_file(data_dir: &Path) -> Result<Option<u64>, RuntimeError> {
    let path = data_dir.join(NODE_ID_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(RuntimeError::Internal(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    match text.trim().parse::<u64>() {
        Ok(id) if id != 0 => Ok(Some(id)),
        _ => Err(RuntimeError::DataLoss(format!(
            "{} does not hold a node id (found {:?}); restore it or start from an empty data dir",
            path.display(),
            text.chars().take(40).collect::<String>()
        ))),
    }
}

/// Stores `id` durably and atomically (temporary file, fsync, rename,
/// fsync of the directory): after a crash the file holds the old id or the
/// new one, never a torn write.
pub fn write_id_file(data_dir: &Path, id: u64) -> Result<(), RuntimeError> {
    use std::io::Write as _;
    assert_ne!(id, 0, "node id 0 is never stored");
    let path = data_dir.join(NODE_ID_FILE);
    let tmp = data_dir.join(format!("{NODE_ID_FILE}.tmp"));
    let io =
        |e: std::io::Error| RuntimeError::Internal(format!("cannot write {}: {e}", path.display()));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(format!("{id}\n").as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

/// Settles `config.node_id` before consensus starts: the id stored in the
/// data dir, else the configured one; then, for a node that joins with a
/// blank Raft log (stored id or not: a lost log with a surviving id file is
/// still a lost log), the id the leader admits. Stores the result.
pub(crate) async fn resolve(
    config: &mut NodeConfig,
    log_is_blank: bool,
    channels: &PeerChannels,
    join_token: Option<&str>,
) -> Result<(), RuntimeError> {
    let stored = read_id_file(&config.data_dir)?;
    if let Some(stored) = stored {
        if stored != config.node_id {
            if config.node_id != 0 && !config.rejoin_under_new_id {
                return Err(RuntimeError::InvalidArgument(format!(
                    "data dir {} belongs to node {stored}, but this node is configured as node {}; \
                     start it with --node-id {stored}, or use another data dir",
                    config.data_dir.display(),
                    config.node_id
                )));
            }
            tracing::info!(
                configured = config.node_id,
                stored,
                "using the node id stored in the data dir"
            );
            // A bootstrap member once admitted under a new id is no longer
            // one of `peers`: it restarts as the joiner it became.
            let listed = config
                .parsed_peers()
                .map_err(RuntimeError::InvalidArgument)?
                .iter()
                .any(|(id, _)| *id == stored);
            if config.join.is_none() && !config.peers.is_empty() && !listed {
                if let Some(via) = config.probe_addresses().into_iter().next() {
                    become_joiner(config, via);
                }
            }
            config.node_id = stored;
        }
    }
    if log_is_blank && config.bootstraps_from_config() {
        return settle_bootstrap(config, stored, channels, join_token).await;
    }
    let join = config.join_address();
    match join {
        Some(_) if log_is_blank && join_token.is_none() => {
            // An operator adds it (`synapse cluster add`); the leader still
            // refuses a removed id, but cannot know this data dir is blank.
            if config.node_id == 0 {
                return Err(RuntimeError::InvalidArgument(
                    "node id 0 (allocate one) needs a join token or root_key_file".into(),
                ));
            }
            tracing::warn!(
                node = config.node_id,
                "joining without a token: waiting for an operator to add this node; \
                 make sure its id was never a member of this cluster"
            );
        }
        Some(seed) if log_is_blank => {
            let token = join_token.unwrap_or_default();
            let address = config.advertise_address().ok_or_else(|| {
                RuntimeError::InvalidArgument("cannot join: no advertise or listen address".into())
            })?;
            let id = admit(
                channels,
                &seed,
                token,
                config.node_id,
                &address,
                config.rejoin_under_new_id,
            )
            .await?;
            config.node_id = id;
        }
        _ => {
            // Bootstrapping, a restart, or a data dir from before ids
            // were stored.
            if config.node_id == 0 {
                return Err(RuntimeError::InvalidArgument(
                    "node id 0 (allocate one) needs --join or --seed and an empty data dir".into(),
                ));
            }
        }
    }
    if stored != Some(config.node_id) {
        write_id_file(&config.data_dir, config.node_id)?;
    }
    Ok(())
}

/// One probe: a live member on a LAN answers in milliseconds, and a refused
/// connection fails at once; this only bounds an address that does not
/// answer at all (a black-holed host), so that it holds a starting node
/// back for seconds, not the OS connect timeout. All addresses are probed
/// concurrently, so this is also the bound on one probe round.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between probe rounds with `initial_cluster_state = existing`,
/// which waits (up to `ADMISSION_TIMEOUT`) for a member to answer.
const PROBE_RETRY: Duration = Duration::from_secs(1);

/// How this node would bootstrap, which decides what an existing cluster
/// means for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootstrapMode {
    /// A `peers` member: every member bootstraps the same voter set, so one
    /// that starts after the others formed the cluster is still welcome,
    /// as long as it never took part (its id is not marked `started`).
    Peers,
    /// Node 1 in `seed` mode bootstraps a one-voter cluster that the others
    /// join: any existing cluster means this node already did, and lost it.
    Seed,
}

/// What one reachable member said about an existing cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The address that answered.
    pub answered_by: String,
    /// Where to ask for admission: the leader if known, else `answered_by`.
    pub via: String,
    pub probe: pb::ProbeResponse,
}

/// The probe's verdict for a node with a blank log about to bootstrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No reachable member belongs to a formed cluster (all blank or
    /// unreachable): nothing to bootstrap beside.
    NoCluster,
    /// A cluster formed from the same `peers` without this node, which has
    /// never taken part: bootstrapping joins it as the voter it was
    /// configured to be, with no promise to forget.
    NeverStarted(Found),
    /// A cluster this node must not bootstrap beside: its id took part and
    /// lost its data, was removed, or is not one of the voters.
    Existing(Found),
}

/// Decides from the probe answers (`(address, answer or why none)`) whether
/// a node with a blank log may bootstrap. Pure, so it is tested on its own.
/// Any one member reporting an existing cluster is enough; an unreachable
/// member tells nothing, so with every member unreachable this is
/// `NoCluster` (see `InitialClusterState::Existing` for that case).
pub fn decide(
    mode: BootstrapMode,
    answers: &[(String, Result<pb::ProbeResponse, String>)],
) -> Verdict {
    let mut verdict = Verdict::NoCluster;
    for (address, answer) in answers {
        let Ok(a) = answer else { continue };
        if !(a.established || a.started || a.removed) {
            continue;
        }
        let found = Found {
            answered_by: address.clone(),
            via: if a.leader_address.is_empty() {
                address.clone()
            } else {
                a.leader_address.clone()
            },
            probe: a.clone(),
        };
        let never_started = mode == BootstrapMode::Peers && a.voter && !a.started && !a.removed;
        if !never_started {
            return Verdict::Existing(found);
        }
        verdict = Verdict::NeverStarted(found);
    }
    verdict
}

/// Asks every address concurrently, each bounded by `PROBE_TIMEOUT`.
async fn probe_all(
    channels: &PeerChannels,
    targets: &[String],
    id: u64,
) -> Vec<(String, Result<pb::ProbeResponse, String>)> {
    let mut out = Vec::with_capacity(targets.len());
    let mut calls = tokio::task::JoinSet::new();
    for address in targets {
        let channel = match channels.get(address) {
            Ok(c) => c,
            Err(e) => {
                out.push((address.clone(), Err(e.to_string())));
                continue;
            }
        };
        let request = channels.peer_request(pb::ProbeRequest { id });
        let address = address.clone();
        calls.spawn(async move {
            let mut client = pb::peer_client::PeerClient::new(channel);
            let answer = match tokio::time::timeout(PROBE_TIMEOUT, client.probe(request)).await {
                Ok(Ok(r)) => Ok(r.into_inner()),
                Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
                Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
            };
            (address, answer)
        });
    }
    while let Some(done) = calls.join_next().await {
        if let Ok(answer) = done {
            out.push(answer);
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Before a node with a blank Raft log bootstraps from its configuration:
/// probe the members it knows; bootstrap only if none reports a cluster
/// this node must not bootstrap beside (`decide`). Otherwise it is
/// admitted (`admit`) if its id is only a preference or the operator said
/// the cluster exists, and refused with the remedy if its id is explicit.
async fn settle_bootstrap(
    config: &mut NodeConfig,
    stored: Option<u64>,
    channels: &PeerChannels,
    join_token: Option<&str>,
) -> Result<(), RuntimeError> {
    let mode = if config.peers.is_empty() {
        BootstrapMode::Seed
    } else {
        BootstrapMode::Peers
    };
    let existing = config.initial_cluster_state == InitialClusterState::Existing;
    let targets = config.probe_addresses();
    let deadline = tokio::time::Instant::now() + ADMISSION_TIMEOUT;
    let found = loop {
        let answers = probe_all(channels, &targets, config.node_id).await;
        let verdict = decide(mode, &answers);
        tracing::info!(
            node = config.node_id,
            ?targets,
            ?verdict,
            "blank Raft log: probed the configured members"
        );
        match verdict {
            Verdict::Existing(found) => break found,
            Verdict::NeverStarted(found) if existing => break found,
            Verdict::NoCluster if existing => {
                if tokio::time::Instant::now() + PROBE_RETRY > deadline {
                    return Err(RuntimeError::unavailable(format!(
                        "initial_cluster_state is `existing`, but no member of a cluster \
                         answered within {ADMISSION_TIMEOUT:?} (asked {targets:?})"
                    )));
                }
                tokio::time::sleep(PROBE_RETRY).await;
            }
            Verdict::NoCluster | Verdict::NeverStarted(_) => {
                if config.node_id == 0 {
                    return Err(RuntimeError::InvalidArgument(
                        "node id 0 (allocate one) needs --join or --seed and an empty data dir"
                            .into(),
                    ));
                }
                if stored != Some(config.node_id) {
                    write_id_file(&config.data_dir, config.node_id)?;
                }
                return Ok(());
            }
        }
    };
    if !(config.rejoin_under_new_id || existing) {
        return Err(RuntimeError::FailedPrecondition(refusal(
            config.node_id,
            mode,
            &found,
        )));
    }
    let Some(token) = join_token else {
        return Err(RuntimeError::InvalidArgument(format!(
            "a cluster already exists ({} reports it), so this node must be admitted to it, \
             which needs --join-token or --root-key-file",
            found.answered_by
        )));
    };
    let address = config.advertise_address().ok_or_else(|| {
        RuntimeError::InvalidArgument("cannot join: no advertise or listen address".into())
    })?;
    tracing::warn!(
        node = config.node_id,
        cluster = %found.answered_by,
        "a cluster already exists: asking it to admit this node instead of bootstrapping"
    );
    let id = admit(
        channels,
        &found.via,
        token,
        config.node_id,
        &address,
        config.rejoin_under_new_id,
    )
    .await?;
    become_joiner(config, found.via);
    config.node_id = id;
    if stored != Some(id) {
        write_id_file(&config.data_dir, id)?;
    }
    Ok(())
}

/// Turns a bootstrap configuration into a joining one, through `via`: the
/// node keeps the address it was configured to advertise.
fn become_joiner(config: &mut NodeConfig, via: String) {
    if config.advertise.is_none() {
        config.advertise = config.advertise_address();
    }
    config.join = Some(via);
    config.peers.clear();
    config.seed = None;
}

/// The operator's message when a node with an explicit id finds the
/// cluster it would bootstrap beside: what happened, and what to do.
fn refusal(id: u64, mode: BootstrapMode, found: &Found) -> String {
    let p = &found.probe;
    let standing = if p.removed {
        format!("node {id} was removed from it (ids are never reused)")
    } else if p.started {
        format!("node {id} voted and acknowledged entries there and lost them with its data")
    } else {
        format!("node {id} is not one of its voters")
    };
    let hazard = match mode {
        BootstrapMode::Peers => "bring back a voter that has forgotten its votes",
        BootstrapMode::Seed => "start a second, separate cluster",
    };
    let remove = if p.removed {
        String::new()
    } else {
        format!(
            "remove the old member (`synapse cluster remove {id} --endpoint http://{}`), then ",
            found.via
        )
    };
    format!(
        "this node has a blank Raft log, but the member at {} (node {}) belongs to an existing \
         cluster (leader {}), and {standing}; bootstrapping from the configuration would \
         {hazard}, so node {id} refuses to start. To bring this machine back as a new member: \
         {remove}start it with an empty data dir and `--node-id 0 --join {} --join-token <token>` \
         (or --root-key-file) instead of --peers/--seed; it is admitted under a new id. \
         `--initial-cluster-state existing` or `--node-id-from-hostname` ask for admission \
         automatically.",
        found.answered_by, p.node_id, p.leader_id, found.via
    )
}

/// Asks the cluster at `seed` to add this blank node as a learner under
/// `requested` (0: any new id) and returns the id it was added under.
/// Retries what may pass later (no leader yet, seed not up) until
/// `ADMISSION_TIMEOUT`; a refusal (FAILED_PRECONDITION: a voter or removed
/// id; a bad token) ends it at once, with the leader's reason.
async fn admit(
    channels: &PeerChannels,
    seed: &str,
    token: &str,
    requested: u64,
    address: &str,
    new_id_if_removed: bool,
) -> Result<u64, RuntimeError> {
    let deadline = tokio::time::Instant::now() + ADMISSION_TIMEOUT;
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = call_leader(channels, seed, token, |mut c, auth| {
            let address = address.to_string();
            async move {
                let mut req = tonic::Request::new(pb::AddMemberRequest {
                    id: requested,
                    address,
                    as_voter: false,
                    fresh: true,
                    new_id_if_removed,
                });
                req.metadata_mut().insert("authorization", auth);
                c.add_member(req).await
            }
        });
        let outcome = match tokio::time::timeout(ADMISSION_ATTEMPT_TIMEOUT, attempt).await {
            Ok(r) => r,
            Err(_) => Err(RuntimeError::unavailable("admission attempt timed out")),
        };
        match outcome {
            Ok(resp) => {
                let id = resp.into_inner().id;
                if id == 0 || (requested != 0 && id != requested && !new_id_if_removed) {
                    return Err(RuntimeError::Internal(format!(
                        "the leader admitted this node under id {id}, asked for {requested}"
                    )));
                }
                tracing::info!(node = id, requested, "admitted to the cluster as a learner");
                return Ok(id);
            }
            Err(
                e @ (RuntimeError::FailedPrecondition(_)
                | RuntimeError::InvalidArgument(_)
                | RuntimeError::PermissionDenied(_)
                | RuntimeError::Unauthenticated(_)),
            ) => {
                return Err(RuntimeError::FailedPrecondition(format!(
                    "the cluster at {seed} refused to admit this node: {e}"
                )))
            }
            Err(e) => {
                if tokio::time::Instant::now() + backoff > deadline {
                    return Err(RuntimeError::unavailable(format!(
                        "could not join the cluster at {seed} within {ADMISSION_TIMEOUT:?}: {e}"
                    )));
                }
                tracing::info!(error = %e, "waiting to be admitted to the cluster");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ADMISSION_MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_file_round_trips_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_id_file(dir.path()).unwrap(), None);
        write_id_file(dir.path(), 42).unwrap();
        assert_eq!(read_id_file(dir.path()).unwrap(), Some(42));
        write_id_file(dir.path(), 7).unwrap();
        assert_eq!(read_id_file(dir.path()).unwrap(), Some(7));
        for bad in ["", "0", "seven", "-3", "18446744073709551616"] {
            std::fs::write(dir.path().join(NODE_ID_FILE), bad).unwrap();
            assert!(
                matches!(read_id_file(dir.path()), Err(RuntimeError::DataLoss(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[tokio::test]
    async fn stored_id_wins_only_where_the_configured_id_is_a_preference() {
        let dir = tempfile::tempdir().unwrap();
        write_id_file(dir.path(), 9).unwrap();
        let channels = PeerChannels::default();
        let mut explicit = NodeConfig {
            node_id: 3,
            data_dir: dir.path().into(),
            ..NodeConfig::default()
        };
        let err = resolve(&mut explicit, false, &channels, None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, RuntimeError::InvalidArgument(m) if m.contains("belongs to node 9")),
            "{err}"
        );
        let mut from_ordinal = NodeConfig {
            rejoin_under_new_id: true,
            ..explicit.clone()
        };
        resolve(&mut from_ordinal, false, &channels, None)
            .await
            .unwrap();
        assert_eq!(from_ordinal.node_id, 9);
    }

    fn answer(a: pb::ProbeResponse) -> Result<pb::ProbeResponse, String> {
        Ok(a)
    }

    fn formed() -> pb::ProbeResponse {
        pb::ProbeResponse {
            node_id: 2,
            established: true,
            leader_id: 3,
            leader_address: "n3:1".into(),
            voter: true,
            ..Default::default()
        }
    }

    #[test]
    fn the_probe_decides_when_a_blank_node_may_bootstrap() {
        use BootstrapMode::{Peers, Seed};
        let down = ("n2:1".to_string(), Err("connection refused".to_string()));
        let blank = (
            "n3:1".to_string(),
            answer(pb::ProbeResponse {
                node_id: 3,
                voter: true,
                ..Default::default()
            }),
        );
        // All start together: peers are blank or not up yet.
        for mode in [Peers, Seed] {
            assert_eq!(decide(mode, &[]), Verdict::NoCluster);
            assert_eq!(
                decide(mode, &[down.clone(), blank.clone()]),
                Verdict::NoCluster
            );
        }
        // The others formed the cluster before this member ever started.
        let late = ("n2:1".to_string(), answer(formed()));
        match decide(Peers, &[down.clone(), late.clone()]) {
            Verdict::NeverStarted(f) => assert_eq!(f.via, "n3:1", "admission goes to the leader"),
            other => panic!("{other:?}"),
        }
        // ... but a seed's one-voter cluster only exists if the seed made it.
        assert!(matches!(
            decide(Seed, std::slice::from_ref(&late)),
            Verdict::Existing(_)
        ));
        // It took part, was removed, or is not a voter: never bootstrap again.
        for standing in [
            pb::ProbeResponse {
                started: true,
                ..formed()
            },
            pb::ProbeResponse {
                voter: false,
                removed: true,
                ..formed()
            },
            pb::ProbeResponse {
                voter: false,
                ..formed()
            },
            pb::ProbeResponse {
                voter: false,
                learner: true,
                ..formed()
            },
            // A cluster without a leader right now still remembers.
            pb::ProbeResponse {
                established: false,
                leader_id: 0,
                leader_address: String::new(),
                started: true,
                ..formed()
            },
        ] {
            let one = ("n2:1".to_string(), answer(standing.clone()));
            for mode in [Peers, Seed] {
                match decide(mode, &[blank.clone(), one.clone(), down.clone()]) {
                    Verdict::Existing(f) => {
                        assert_eq!(f.answered_by, "n2:1");
                        let want = if standing.leader_address.is_empty() {
                            "n2:1"
                        } else {
                            "n3:1"
                        };
                        assert_eq!(f.via, want);
                    }
                    other => panic!("{mode:?} {standing:?}: {other:?}"),
                }
            }
            // One member that remembers outweighs one that does not.
            assert!(matches!(
                decide(Peers, &[late.clone(), one]),
                Verdict::Existing(_)
            ));
        }
    }

    #[test]
    fn the_refusal_names_the_remedy() {
        let found = Found {
            answered_by: "n2:1".into(),
            via: "n3:1".into(),
            probe: pb::ProbeResponse {
                started: true,
                ..formed()
            },
        };
        let msg = refusal(1, BootstrapMode::Seed, &found);
        for part in [
            "synapse cluster remove 1 --endpoint http://n3:1",
            "--node-id 0 --join n3:1",
            "second, separate cluster",
            "lost them",
        ] {
            assert!(msg.contains(part), "{part:?} missing from: {msg}");
        }
        let removed = Found {
            probe: pb::ProbeResponse {
                removed: true,
                voter: false,
                ..formed()
            },
            ..found
        };
        let msg = refusal(2, BootstrapMode::Peers, &removed);
        assert!(!msg.contains("cluster remove"), "{msg}");
        assert!(msg.contains("never reused"), "{msg}");
    }

    /// A restart with an intact log never probes: with `existing` and no
    /// reachable member, a probe would keep it waiting and then fail, yet
    /// it starts at once and keeps its configuration. A blank member that
    /// finds nobody (a new cluster whose members start together)
    /// bootstraps.
    #[tokio::test]
    async fn a_kept_log_never_probes_and_a_lone_blank_member_bootstraps() {
        let dir = tempfile::tempdir().unwrap();
        let channels = PeerChannels::default();
        let mut cfg = NodeConfig {
            node_id: 1,
            data_dir: dir.path().into(),
            peers: vec!["1=127.0.0.1:1".into(), "2=127.0.0.1:2".into()],
            initial_cluster_state: InitialClusterState::Existing,
            ..NodeConfig::default()
        };
        resolve(&mut cfg, false, &channels, None).await.unwrap();
        assert_eq!(cfg.node_id, 1);
        assert_eq!(cfg.join, None, "a restart keeps its configuration");
        // Blank and `new`: nobody answers (port 2 refuses), so it bootstraps.
        let other = tempfile::tempdir().unwrap();
        let mut fresh = NodeConfig {
            data_dir: other.path().into(),
            initial_cluster_state: InitialClusterState::New,
            ..cfg.clone()
        };
        resolve(&mut fresh, true, &channels, None).await.unwrap();
        assert_eq!(read_id_file(other.path()).unwrap(), Some(1));
    }

    #[tokio::test]
    async fn a_bootstrapping_node_stores_its_id_and_id_zero_needs_a_join() {
        let dir = tempfile::tempdir().unwrap();
        let channels = PeerChannels::default();
        let mut zero = NodeConfig {
            node_id: 0,
            data_dir: dir.path().into(),
            ..NodeConfig::default()
        };
        assert!(resolve(&mut zero, true, &channels, None).await.is_err());
        assert_eq!(read_id_file(dir.path()).unwrap(), None);
        let mut one = NodeConfig {
            node_id: 1,
            ..zero.clone()
        };
        resolve(&mut one, true, &channels, None).await.unwrap();
        assert_eq!(read_id_file(dir.path()).unwrap(), Some(1));
    }
}
