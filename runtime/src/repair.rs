//! Repair of damaged checkpoint records from peers.
//!
//! Whoever finds a checkpoint that fails its hash (a read, `Verify`, an
//! actor re-checking its stored head, the scrub after a restart) reports the
//! instance here and answers the caller with DATA_LOSS: damaged data is never
//! served while it waits. A background task then asks peers for the damaged
//! versions with `Peer.FetchCheckpoint` and writes a copy back only if its
//! SHA-256 equals the local anchor (the checksummed head record, or the next
//! version's parent hash; see `synapse_storage::Store::repair_checkpoint`).
//! A peer is never trusted: a wrong copy is refused and the next peer asked.
//!
//! Repairs happen outside Raft on purpose: committed checkpoints are
//! identical on every node, so restoring the committed bytes changes no
//! replicated state (the state hash, which covers head records, is equal
//! before and after).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use synapse_proto::v1 as pb;
use synapse_storage::RepairOutcome;
use tokio::sync::mpsc;

use crate::actor::InstanceId;
use crate::node::Core;

/// Instances waiting for repair. A burst of corruption beyond this is not
/// lost: every later read of a damaged instance reports it again.
pub const REPAIR_QUEUE_CAPACITY: usize = 256;

/// How many damaged instances the scrub after a restart names at most,
/// repairable and unrepairable together: the repair queue's capacity, so
/// that everything it finds repairable can be queued. The scan stops there;
/// damage in the rest of the store is found when read.
const SCRUB_MAX: usize = REPAIR_QUEUE_CAPACITY;

/// Attempts per instance before giving up until the next report. Peers may
/// be unknown or lagging right after a restart, so retry for a while
/// (about a minute with the backoff below).
const MAX_ATTEMPTS: u32 = 15;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One FetchCheckpoint call; a slower peer is skipped for the next one.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// Hands damaged instances to the repair task; bounded and de-duplicated.
pub(crate) struct RepairQueue {
    tx: mpsc::Sender<InstanceId>,
    rx: Mutex<Option<mpsc::Receiver<InstanceId>>>,
    pending: Mutex<HashSet<InstanceId>>,
}

impl Default for RepairQueue {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(REPAIR_QUEUE_CAPACITY);
        RepairQueue {
            tx,
            rx: Mutex::new(Some(rx)),
            pending: Mutex::new(HashSet::new()),
        }
    }
}

impl RepairQueue {
    /// Queues `skill/instance` for repair unless it is already queued.
    pub fn report(&self, skill: &str, instance: &str) {
        let id = InstanceId {
            skill: skill.to_owned(),
            instance: instance.to_owned(),
        };
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        if pending.len() >= REPAIR_QUEUE_CAPACITY || !pending.insert(id.clone()) {
            return;
        }
        if self.tx.try_send(id.clone()).is_err() {
            pending.remove(&id);
        }
    }

    fn done(&self, id: &InstanceId) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(id);
        }
    }

    fn take_receiver(&self) -> Option<mpsc::Receiver<InstanceId>> {
        self.rx.lock().ok().and_then(|mut r| r.take())
    }
}

/// Scrubs the store once, then repairs what is reported until `stop`.
pub(crate) async fn repair_task(core: Arc<Core>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(mut rx) = core.env.repair.take_receiver() else {
        return;
    };
    scrub(&core, true, stop.clone()).await;
    loop {
        let id = tokio::select! {
            id = rx.recv() => match id { Some(id) => id, None => return },
            _ = stop.changed() => return,
        };
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match repair_instance(&core, &id).await {
                Ok(true) => break,
                Ok(false) if attempt < MAX_ATTEMPTS => {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Ok(false) => {
                    core.metrics.repair_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(instance = %id, attempts = attempt,
                        "could not repair from any peer; still refusing to serve it (retried on the next report)");
                    break;
                }
                Err(e) => {
                    core.metrics.repair_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(instance = %id, error = %e,
                        "not repairable here (operator: re-seed this node, see docs/verification-storage.md)");
                    break;
                }
            }
        }
        core.env.repair.done(&id);
    }
}

/// The scrub after a start: finds damaged records, logs and counts them,
/// and with `peers` queues the repairable ones for repair. A single node
/// has no peer to repair from, so everything it finds is unrepairable
/// there; it still has to be reported, since reads are the only other
/// place damage shows. Stops early when `stop` changes.
pub(crate) async fn scrub(
    core: &Arc<Core>,
    peers: bool,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let store = core.store.clone();
    let cancel = Arc::new(AtomicBool::new(false));
    let cancel_on_stop = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let _ = stop.changed().await;
            cancel.store(true, Ordering::Relaxed);
        })
    };
    let scanned = tokio::task::spawn_blocking(move || store.scrub(SCRUB_MAX, &cancel)).await;
    cancel_on_stop.abort();
    // A cluster rebuilds a node from its peers; a single node holds the
    // only copy.
    let remedy = if peers {
        "re-seed this node"
    } else {
        "restore from a backup"
    };
    match scanned {
        Ok(Ok(report)) => {
            for (skill, instance) in &report.repairable {
                if peers {
                    tracing::error!(
                        skill,
                        instance,
                        "scrub: damaged checkpoint record; queued for repair"
                    );
                    core.env.repair.report(skill, instance);
                } else {
                    tracing::error!(
                        skill,
                        instance,
                        "scrub: damaged checkpoint record; no peer to repair it from \
                         (operator: {remedy}, see docs/verification-storage.md)"
                    );
                }
                core.metrics.data_loss.fetch_add(1, Ordering::Relaxed);
            }
            for (skill, instance) in &report.damaged_heads {
                tracing::error!(
                    skill,
                    instance,
                    "scrub: damaged head record; no peer copy can be verified against it \
                     (operator: {remedy}, see docs/verification-storage.md)"
                );
            }
            if report.unreadable_head_keys > 0 {
                tracing::error!(
                    keys = report.unreadable_head_keys,
                    "scrub: head keys that name no instance (damaged key bytes; operator: {remedy})"
                );
            }
            let mut unrepairable = report.unrepairable();
            core.metrics
                .data_loss
                .fetch_add(unrepairable, Ordering::Relaxed);
            if !peers {
                unrepairable += report.repairable.len() as u64;
            }
            core.metrics
                .scrub_unrepairable
                .store(unrepairable, Ordering::Relaxed);
            if report.stopped_early {
                tracing::warn!(
                    max = SCRUB_MAX,
                    "scrub stopped before the end of the store (at its bound of damaged \
                     instances, or shutting down); damage in the rest is found when read"
                );
            }
        }
        Ok(Err(e)) => tracing::error!(error = %e, "scrub failed"),
        Err(e) => tracing::error!(error = %e, "scrub task failed"),
    }
}

/// One pass over the instance's damaged versions, newest first. `Ok(true)`
/// when nothing is damaged any more, `Ok(false)` to retry later, `Err` when
/// the local anchor itself is damaged (a head record), which no peer copy
/// can fix.
async fn repair_instance(core: &Arc<Core>, id: &InstanceId) -> Result<bool, crate::RuntimeError> {
    let store = core.store.clone();
    let (skill, instance) = (id.skill.clone(), id.instance.clone());
    let damaged = tokio::task::spawn_blocking(move || store.damaged_versions(&skill, &instance))
        .await
        .map_err(|e| crate::RuntimeError::Internal(format!("repair scan: {e}")))??;
    if damaged.is_empty() {
        return Ok(true);
    }
    // The leader first: it has applied everything this node has.
    let leader = core.raft.status().leader_id;
    let mut peers = core.peer_addresses();
    peers.retain(|(p, _)| *p != core.node_id());
    peers.sort_by_key(|(p, _)| (*p != leader, *p));
    for version in damaged {
        let mut fixed = false;
        for (peer, address) in &peers {
            match fetch_and_repair(core, id, version, address).await {
                Ok(outcome) => {
                    if outcome == RepairOutcome::Repaired {
                        core.metrics
                            .checkpoint_repairs
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(instance = %id, version, peer,
                            "repaired a damaged checkpoint with a verified copy from a peer");
                    }
                    fixed = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(instance = %id, version, peer, error = %e,
                        "peer could not provide a verified copy");
                }
            }
        }
        if !fixed {
            // Older versions are anchored by this one: stop here.
            return Ok(false);
        }
    }
    // Confirm: everything verifies now (or retry later).
    let store = core.store.clone();
    let (skill, instance) = (id.skill.clone(), id.instance.clone());
    let left = tokio::task::spawn_blocking(move || store.damaged_versions(&skill, &instance))
        .await
        .map_err(|e| crate::RuntimeError::Internal(format!("repair scan: {e}")))??;
    Ok(left.is_empty())
}

async fn fetch_and_repair(
    core: &Arc<Core>,
    id: &InstanceId,
    version: u64,
    address: &str,
) -> Result<RepairOutcome, crate::RuntimeError> {
    let channel = core.peer_channel(address)?;
    let mut client = pb::peer_client::PeerClient::new(channel);
    // Peer RPCs carry this node's peer credential (and, with TLS, its
    // client certificate through the channel).
    let request = core.channels.peer_request(pb::FetchCheckpointRequest {
        skill: id.skill.clone(),
        instance: id.instance.clone(),
        version,
    });
    let response = tokio::time::timeout(FETCH_TIMEOUT, client.fetch_checkpoint(request))
        .await
        .map_err(|_| crate::RuntimeError::unavailable("FetchCheckpoint timed out"))?
        .map_err(crate::cluster::error_from_status)?
        .into_inner();
    let store = core.store.clone();
    let (skill, instance) = (id.skill.clone(), id.instance.clone());
    tokio::task::spawn_blocking(move || {
        store.repair_checkpoint(&skill, &instance, version, &response.checkpoint)
    })
    .await
    .map_err(|e| crate::RuntimeError::Internal(format!("repair write: {e}")))?
    .map_err(Into::into)
}
