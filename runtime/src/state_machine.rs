//! Applies committed Raft entries: validates each checkpoint against its
//! chain head, stores it, advances the clock, and records the request id.
//! Runs identically on every node; its decisions depend only on the log.
//!
//! Fencing: a checkpoint entry carries its capability's expiry and
//! revocation ids. It is rejected (`Fenced`, nothing changes) if the token
//! had expired at the entry's own HLC timestamp, or if any id was revoked by
//! an entry applied before it. Both inputs come from the log, never from the
//! local wall clock, so every node decides the same.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use synapse_consensus::eraftpb::Snapshot;
use synapse_consensus::{ApplyContext, Committed, ConsensusError, Role, StateMachine};
use synapse_storage::{ApplyBatch, Checkpoint, Hash, RequestRecord, Store, Timestamp, ZERO_HASH};
use tokio::sync::broadcast;

use synapse_consensus::eraftpb::ConfChangeType;
use synapse_consensus::GrpcTransport;

use crate::actor::InstanceTable;
use crate::clock::Hlc;
use crate::cluster::{
    member_meta_name, removed_meta_name, ClusterKeys, META_MEMBER_PREFIX, META_ROOT_KEY,
};
use crate::command::{ApplyOutcome, Command};
use crate::guard::MAX_REVOCATIONS;
use crate::metrics::Metrics;

pub(crate) struct NodeStateMachine {
    pub store: Store,
    pub hlc: Arc<Hlc>,
    pub watch: broadcast::Sender<Arc<Checkpoint>>,
    pub instances: Arc<InstanceTable>,
    pub metrics: Arc<Metrics>,
    pub keys: Arc<ClusterKeys>,
    /// `None` for a node without peers.
    pub transport: Option<Arc<GrpcTransport>>,
}

/// Effects of applied metadata that reach beyond the store; carried out
/// after the batch commits, so they never run for a batch that failed.
enum SideEffect {
    InstallRootKey(Vec<u8>),
    SetPeer(u64, String),
    RemovePeer(u64),
}

#[derive(Clone, Copy)]
struct Head {
    version: u64,
    hash: Hash,
    timestamp: Timestamp,
}

impl NodeStateMachine {
    /// The chain head from the small head record: applying never reads
    /// checkpoint bodies, so a damaged body on this node cannot stop apply
    /// (it is reported when the instance is served, as DATA_LOSS).
    fn head(
        &self,
        pending: &HashMap<(String, String), Head>,
        cp: &Checkpoint,
    ) -> Result<Option<Head>, ConsensusError> {
        if let Some(h) = pending.get(&(cp.skill.clone(), cp.instance.clone())) {
            return Ok(Some(*h));
        }
        Ok(self.store.head(&cp.skill, &cp.instance)?.map(|h| Head {
            version: h.version,
            hash: h.hash,
            timestamp: h.timestamp,
        }))
    }
}

impl StateMachine for NodeStateMachine {
    type Output = ApplyOutcome;

    fn apply(
        &mut self,
        ctx: ApplyContext,
        entries: &[Committed<'_>],
    ) -> Result<Vec<ApplyOutcome>, ConsensusError> {
        let mut batch = ApplyBatch::default();
        let mut heads: HashMap<(String, String), Head> = HashMap::new();
        let mut requests: HashMap<(String, String, String), RequestRecord> = HashMap::new();
        let mut new_checkpoints = Vec::new();
        let mut outcomes = Vec::with_capacity(entries.len());
        let mut own_term_applied = false;
        let mut effects = Vec::new();
        let mut meta: HashMap<String, Option<Vec<u8>>> = HashMap::new();
        // Revoked in this batch, not yet in the shared set (which changes
        // only after the batch is durable in sled).
        let mut revoked_now: HashSet<Vec<u8>> = HashSet::new();
        let revoked = self.keys.revocations().clone();

        for entry in entries {
            if ctx.is_leader && entry.term == ctx.term {
                own_term_applied = true;
            }
            if let Some(change) = entry.conf_change {
                for single in change.get_changes() {
                    let id = single.node_id;
                    match single.get_change_type() {
                        ConfChangeType::AddNode | ConfChangeType::AddLearnerNode
                            if !change.context.is_empty() =>
                        {
                            let addr = String::from_utf8_lossy(&change.context).into_owned();
                            batch.set_cluster_meta(&member_meta_name(id), addr.as_bytes());
                            meta.insert(member_meta_name(id), Some(addr.clone().into_bytes()));
                            effects.push(SideEffect::SetPeer(id, addr));
                        }
                        ConfChangeType::RemoveNode => {
                            batch.delete_cluster_meta(&member_meta_name(id));
                            meta.insert(member_meta_name(id), None);
                            // Ids are never reused (`crate::identity`).
                            let index = entry.index.to_le_bytes().to_vec();
                            batch.set_cluster_meta(&removed_meta_name(id), &index);
                            meta.insert(removed_meta_name(id), Some(index));
                            effects.push(SideEffect::RemovePeer(id));
                        }
                        _ => {}
                    }
                }
            }
            if entry.data.is_empty() {
                outcomes.push(ApplyOutcome::Noop);
                continue;
            }
            let (cp, reply, server_named) = match Command::decode(entry.data) {
                Ok(Command::Checkpoint {
                    checkpoint,
                    reply,
                    fence,
                    server_named,
                }) => {
                    let why = if fence.expired_at(checkpoint.timestamp.physical_micros) {
                        Some("capability expired before the write was applied")
                    } else if fence
                        .revocation_ids
                        .iter()
                        .any(|id| revoked_now.contains(id))
                        || revoked.any_revoked(&fence.revocation_ids)
                    {
                        Some("capability revoked before the write was applied")
                    } else {
                        None
                    };
                    if let Some(why) = why {
                        tracing::info!(index = entry.index, skill = %checkpoint.skill,
                            instance = %checkpoint.instance, "{why}");
                        outcomes.push(ApplyOutcome::Fenced(why.into()));
                        continue;
                    }
                    (checkpoint, reply, server_named)
                }
                Ok(Command::Revoke {
                    ids,
                    reason,
                    timestamp,
                }) => {
                    if reason.len() > synapse_storage::MAX_REVOCATION_REASON_BYTES {
                        // Storage would refuse it and fail the whole batch.
                        outcomes.push(ApplyOutcome::Rejected("revocation reason too long".into()));
                        continue;
                    }
                    let fresh: Vec<Vec<u8>> = ids
                        .into_iter()
                        .filter(|id| !revoked_now.contains(id) && !revoked.contains(id))
                        .collect::<HashSet<_>>()
                        .into_iter()
                        .collect();
                    if revoked.len() + revoked_now.len() + fresh.len() > MAX_REVOCATIONS {
                        outcomes.push(ApplyOutcome::RevocationsFull);
                        continue;
                    }
                    for id in &fresh {
                        batch.revoke(id, timestamp, &reason);
                    }
                    batch.observe_timestamp(timestamp);
                    self.hlc.observe(timestamp);
                    let added = fresh.len();
                    revoked_now.extend(fresh);
                    outcomes.push(ApplyOutcome::Revoked { added });
                    continue;
                }
                Ok(Command::SetMeta {
                    name,
                    value,
                    only_if_absent,
                }) => {
                    let exists = match meta.get(&name) {
                        Some(v) => v.is_some(),
                        None => self.store.cluster_meta(&name)?.is_some(),
                    };
                    if only_if_absent && exists {
                        outcomes.push(ApplyOutcome::MetaSet { changed: false });
                        continue;
                    }
                    batch.set_cluster_meta(&name, &value);
                    if name == META_ROOT_KEY {
                        effects.push(SideEffect::InstallRootKey(value.clone()));
                    } else if let Some(id) = name
                        .strip_prefix(META_MEMBER_PREFIX)
                        .and_then(|i| i.parse().ok())
                    {
                        effects.push(SideEffect::SetPeer(
                            id,
                            String::from_utf8_lossy(&value).into_owned(),
                        ));
                    }
                    meta.insert(name, Some(value));
                    outcomes.push(ApplyOutcome::MetaSet { changed: true });
                    continue;
                }
                Err(e) => {
                    tracing::warn!(index = entry.index, error = %e, "rejecting undecodable command");
                    outcomes.push(ApplyOutcome::Rejected(format!("undecodable command: {e}")));
                    continue;
                }
            };
            let _span = tracing::debug_span!("apply", skill = %cp.skill, instance = %cp.instance,
                request_id = %cp.request_id, term = entry.term, index = entry.index)
            .entered();

            // A server-named write is unique and keeps no record.
            let recorded_id = !cp.request_id.is_empty() && !server_named;
            if recorded_id {
                let rkey = (cp.skill.clone(), cp.instance.clone(), cp.request_id.clone());
                let earlier = match requests.get(&rkey) {
                    Some(r) => Some(r.clone()),
                    None => self
                        .store
                        .request(&cp.skill, &cp.instance, &cp.request_id)?,
                };
                if let Some(record) = earlier {
                    outcomes.push(ApplyOutcome::Duplicate(record));
                    continue;
                }
            }

            let head = self.head(&heads, &cp)?;
            let (want_version, want_parent) = match head {
                Some(h) => (h.version + 1, h.hash),
                None => (1, ZERO_HASH),
            };
            if cp.version != want_version || cp.parent_hash != want_parent {
                outcomes.push(ApplyOutcome::Rejected(format!(
                    "checkpoint v{} does not extend the head (expected v{want_version}); a concurrent change won",
                    cp.version
                )));
                continue;
            }
            if let Some(h) = head {
                if cp.timestamp <= h.timestamp {
                    outcomes.push(ApplyOutcome::Rejected(
                        "checkpoint timestamp does not increase".into(),
                    ));
                    continue;
                }
            }

            batch.observe_timestamp(cp.timestamp);
            self.hlc.observe(cp.timestamp);
            heads.insert(
                (cp.skill.clone(), cp.instance.clone()),
                Head {
                    version: cp.version,
                    hash: cp.hash,
                    timestamp: cp.timestamp,
                },
            );
            let record = if recorded_id {
                requests.insert(
                    (cp.skill.clone(), cp.instance.clone(), cp.request_id.clone()),
                    RequestRecord {
                        version: cp.version,
                        hash: cp.hash,
                        timestamp: cp.timestamp,
                        reply: reply.clone(),
                    },
                );
                Some(reply)
            } else {
                None
            };
            outcomes.push(ApplyOutcome::Applied {
                version: cp.version,
                hash: cp.hash,
                timestamp: cp.timestamp,
            });
            // One copy serves the store and the watchers.
            let cp = Arc::new(cp);
            batch.put_shared_checkpoint(Arc::clone(&cp), record);
            new_checkpoints.push(cp);
        }

        if let Some(last) = entries.last() {
            batch.set_applied(last.index);
        }
        self.store.commit_apply(batch)?;
        if !revoked_now.is_empty() {
            // Durable in sled's batch order; from here on the guard denies.
            revoked.insert_all(revoked_now.iter().map(Vec::as_slice));
        }
        for effect in effects {
            match effect {
                SideEffect::InstallRootKey(hex) => {
                    if let Err(e) = self.keys.install(&String::from_utf8_lossy(&hex)) {
                        tracing::error!(error = %e, "cannot install the replicated root key");
                    }
                }
                SideEffect::SetPeer(id, addr) => {
                    if let Some(t) = &self.transport {
                        t.set_peer(id, &addr);
                    }
                }
                SideEffect::RemovePeer(id) => {
                    if let Some(t) = &self.transport {
                        t.remove_peer(id);
                    }
                }
            }
        }
        self.metrics
            .applied_checkpoints
            .fetch_add(new_checkpoints.len() as u64, Ordering::Relaxed);
        if own_term_applied {
            self.instances.set_caught_up_term(ctx.term);
        }
        for cp in new_checkpoints {
            // No receivers is the normal case; send never blocks.
            let _ = self.watch.send(cp);
        }
        Ok(outcomes)
    }

    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), ConsensusError> {
        self.store.restore_state(snapshot.get_data())?;
        self.hlc.observe(self.store.clock_high_water()?);
        let revocations = self.store.revocations()?;
        self.keys
            .revocations()
            .replace(revocations.iter().map(|r| r.id.as_slice()));
        if let Some(hex) = self.store.cluster_meta(META_ROOT_KEY)? {
            if let Err(e) = self.keys.install(&String::from_utf8_lossy(&hex)) {
                tracing::error!(error = %e, "cannot install the root key from the snapshot");
            }
        }
        if let Some(t) = &self.transport {
            for (name, addr) in self.store.cluster_meta_prefix(META_MEMBER_PREFIX)? {
                if let Some(id) = name
                    .strip_prefix(META_MEMBER_PREFIX)
                    .and_then(|i| i.parse().ok())
                {
                    t.set_peer(id, &String::from_utf8_lossy(&addr));
                }
            }
        }
        // Active instances hold state from before the snapshot.
        self.instances.clear();
        Ok(())
    }

    fn on_role_change(&mut self, role: Role, term: u64, leader_id: u64) {
        tracing::info!(role = role.as_str(), term, leader_id, "role change");
        self.metrics.leader_changes.fetch_add(1, Ordering::Relaxed);
        // Actors run only on the leader, and only on state it has applied in
        // its own term; drop them on every change and let them reactivate.
        self.instances.set_caught_up_term(0);
        self.instances.clear();
    }
}
