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
//!   derives from a pod ordinal.
//!
//! Owns the id file and the admission call. Never proposes anything itself:
//! the leader decides, in `Core::add_member`.

use std::path::Path;
use std::time::Duration;

use synapse_proto::v1 as pb;

use crate::cluster::{call_leader, PeerChannels};
use crate::config::NodeConfig;
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
            config.node_id = stored;
        }
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
