//! Node assembly: opens the store, loads the root key, starts the Raft
//! driver, the instance table and the servers on one actix System thread,
//! and exposes the API that both gRPC and embedders call ([`Core`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use synapse_consensus::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use synapse_consensus::{
    spawn_driver, GrpcTransport, NoopTransport, RaftConfig, RaftHandle, RaftStatus, Role,
};
use synapse_proto::v1 as pb;
use synapse_storage::{AuditRecord, ChainReport, Checkpoint, Store, StoreOptions, Timestamp};
use tokio::sync::{broadcast, oneshot};

use crate::actor::{ActorEnv, Execute, InstanceId, InstanceTable, InvokeResult, Op};
use crate::clock::{Hlc, PhysicalClock, SystemClock};
use crate::clock_service::{ClockService, ClockStatus};
use crate::cluster::{
    call_leader, error_from_status, member_meta_name, started_meta_name, ClusterKeys, PeerChannels,
    META_MEMBER_PREFIX, META_REMOVED_PREFIX, META_ROOT_KEY,
};
use crate::command::ApplyOutcome;
use crate::command::Command;
use crate::config::NodeConfig;
use crate::error::RuntimeError;
use crate::guard::{Fence, Grant, Operation, Request, RootKey};
use crate::metrics::{Metrics, StageTimer};
use crate::skill::{erase, DynSkill, MethodKind, Skill};
use crate::skills::{Counter, Kv};
use crate::state_machine::NodeStateMachine;

/// Longest skill name; names appear in keys, logs and metrics.
pub const MAX_SKILL_NAME: usize = 64;
/// Longest instance name.
pub const MAX_INSTANCE_NAME: usize = 256;
/// Longest request id; ids are keys in the dedup table.
pub const MAX_REQUEST_ID: usize = 128;
/// Most checkpoints one History call returns.
pub const MAX_HISTORY: usize = 1000;

/// File names inside the data directory.
pub const ROOT_KEY_FILE: &str = "root.key";
pub const ROOT_TOKEN_FILE: &str = "root.token";

/// An Invoke, as the runtime sees it (gRPC and embedding alike).
#[derive(Debug, Clone, Default)]
pub struct InvokeRequest {
    pub skill: String,
    pub instance: String,
    pub method: String,
    pub payload: Value,
    /// Empty: the node assigns a fresh id (no deduplication).
    pub request_id: String,
    pub expected_version: Option<u64>,
}

/// Pseudo-methods that system RPCs are authorized as, so a token can be
/// scoped to them like to any skill method.
pub mod system_methods {
    pub const STATE: &str = "_state";
    pub const HISTORY: &str = "_history";
    pub const VERIFY: &str = "_verify";
    pub const WATCH: &str = "_watch";
    pub const ROLLBACK: &str = "_rollback";
    /// Skill name for node-level RPCs (Cluster.Status, Clock.Now).
    pub const SYSTEM_SKILL: &str = "_system";
}

/// Everything a request needs. `Send + Sync`; shared by gRPC handlers and
/// embedders, whichever thread they run on.
pub struct Core {
    pub(crate) config: NodeConfig,
    pub(crate) store: Store,
    pub(crate) keys: Arc<ClusterKeys>,
    pub(crate) hlc: Arc<Hlc>,
    pub(crate) raft: RaftHandle<ApplyOutcome>,
    pub(crate) skills: HashMap<String, Arc<dyn DynSkill>>,
    pub(crate) instances: Arc<InstanceTable>,
    pub(crate) env: Arc<ActorEnv>,
    pub(crate) watch: broadcast::Sender<Arc<Checkpoint>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) transport: Option<Arc<GrpcTransport>>,
    pub(crate) clock: Arc<ClockService>,
    pub(crate) channels: PeerChannels,
    /// Streams of Invokes forwarded to the leader (`crate::forward`).
    pub(crate) forwarder: crate::forward::Forwarder,
    /// Certificate, key and CA when TLS is on (`None`: plaintext, dev only).
    pub(crate) tls: Option<crate::tls::TlsMaterial>,
    /// Where every capability decision is recorded (batched, off the
    /// request path).
    pub(crate) audit: crate::audit_log::AuditLog,
    inflight_invokes: Arc<std::sync::atomic::AtomicUsize>,
    /// One slot per open inbound `Peer/Raft` stream
    /// (`crate::grpc::MAX_PEER_RAFT_STREAMS`).
    pub(crate) raft_streams: Arc<tokio::sync::Semaphore>,
    /// What those streams hold together in partly reassembled messages
    /// (`synapse_consensus::MAX_REASSEMBLY_TOTAL_BYTES`).
    pub(crate) reassembly: Arc<synapse_consensus::ReassemblyBudget>,
}

/// One of the node's `max_inflight_invokes` slots, held by an admitted
/// Invoke until it finishes (released on drop, whatever the outcome). Owned
/// rather than borrowed so the gRPC front door can take it from the request
/// headers alone and hand it to the handler (see `grpc::InvokeFrontDoor`).
pub struct InvokePermit(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for InvokePermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A learner may be promoted only when this close to the leader's log.
pub const MAX_PROMOTE_LAG: u64 = 100;
/// A voter counts as healthy for `remove_member`'s quorum check when it was
/// heard from recently and is at most this far behind. Looser than
/// promotion: under load a healthy follower's in-flight window alone can
/// exceed 100 entries (seen at ~1 400 writes/s in the container fault
/// runs), and one this close acknowledges new entries within a second.
pub const MAX_REMOVE_LAG: u64 = 1_000;

/// What `Core::add_member` is asked (mirrors `pb::AddMemberRequest`).
#[derive(Debug, Clone, Copy)]
pub struct AddMember<'a> {
    /// 0: allocate an id never used in this cluster.
    pub id: u64,
    pub address: &'a str,
    pub as_voter: bool,
    /// The caller's data dir is blank (`crate::identity`).
    pub fresh: bool,
    /// With `fresh`: a removed `id` gets a new id instead of a refusal.
    pub new_id_if_removed: bool,
}

/// The configuration after a membership change, and the member it was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub id: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

impl Membership {
    fn of(id: u64, status: RaftStatus) -> Self {
        Membership {
            id,
            voters: status.voters,
            learners: status.learners,
        }
    }
}

pub(crate) fn validate_name(kind: &str, value: &str, max: usize) -> Result<(), RuntimeError> {
    if value.is_empty() || value.len() > max {
        return Err(RuntimeError::InvalidArgument(format!(
            "{kind} must be 1..={max} bytes"
        )));
    }
    if value.chars().any(|c| c.is_control() || c == '/') {
        return Err(RuntimeError::InvalidArgument(format!(
            "{kind} must not contain '/' or control characters"
        )));
    }
    Ok(())
}

pub(crate) fn validate_request_id(request_id: &str) -> Result<(), RuntimeError> {
    if request_id.len() > MAX_REQUEST_ID {
        return Err(RuntimeError::InvalidArgument(format!(
            "request_id must be at most {MAX_REQUEST_ID} bytes"
        )));
    }
    Ok(())
}

/// AddMember's input checks (after the guard, before any Raft work).
pub(crate) fn validate_member(id: u64, address: &str) -> Result<(), RuntimeError> {
    if id == 0 {
        return Err(RuntimeError::InvalidArgument(
            "member id must be >= 1".into(),
        ));
    }
    if address.is_empty() || !address.contains(':') || address.len() > 255 {
        return Err(RuntimeError::InvalidArgument(format!(
            "member address `{address}` must be host:port"
        )));
    }
    Ok(())
}

impl Core {
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn node_id(&self) -> u64 {
        self.config.node_id
    }

    /// The token in `<data-dir>/root.token`: every right on this cluster.
    /// Empty until the cluster's root key has been replicated to this node.
    pub fn root_token(&self) -> &str {
        self.keys.root_token()
    }

    pub fn raft_status(&self) -> RaftStatus {
        self.raft.status()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn metrics_text(&self) -> String {
        let (hits, len) = self
            .keys
            .guard()
            .map(|g| (g.cache_hits(), g.cache_len()))
            .unwrap_or((0, 0));
        let peer_streams = crate::metrics::PeerStreams {
            open: crate::grpc::MAX_PEER_RAFT_STREAMS
                .saturating_sub(self.raft_streams.available_permits()),
            reassembly_bytes: self.reassembly.held(),
        };
        self.metrics.render(
            &self.raft.status(),
            self.raft.timings(),
            hits,
            len,
            &self.clock.status(),
            peer_streams,
        )
    }

    /// Ready to serve: the driver runs, a leader is known and the root key
    /// has reached this node.
    pub fn is_ready(&self) -> bool {
        let s = self.raft.status();
        s.running
            && s.leader_id != 0
            && self.keys.guard().is_some()
            && s.applied_index + MAX_PROMOTE_LAG >= s.commit_index
            && self.clock.healthy()
    }

    /// Why the node is not ready, for `/readyz` and logs; `None` if ready.
    pub fn not_ready_reason(&self) -> Option<String> {
        let s = self.raft.status();
        if !s.running {
            return Some("consensus stopped (see logs)".into());
        }
        if s.leader_id == 0 {
            return Some(format!(
                "no known leader (role={} term={})",
                s.role.as_str(),
                s.term
            ));
        }
        if self.keys.guard().is_none() {
            return Some("cluster root key not yet replicated to this node".into());
        }
        if s.applied_index + MAX_PROMOTE_LAG < s.commit_index {
            return Some(format!(
                "catching up: applied {} of {}",
                s.applied_index, s.commit_index
            ));
        }
        let c = self.clock.status();
        if !c.healthy {
            return Some(c.problem);
        }
        None
    }

    /// HLC receive rule for a peer's frame, except from a clock so far ahead
    /// that following it would drag this node past the maximum offset.
    pub fn observe_peer_clock(&self, ts: Timestamp) {
        let limit = self
            .hlc
            .corrected_physical_micros()
            .saturating_add(self.clock.max_offset_micros());
        if ts.physical_micros <= limit {
            self.hlc.observe(ts);
        } else {
            tracing::debug!(
                peer = ts.node_id,
                "ignoring a peer HLC beyond the maximum clock offset"
            );
        }
    }

    pub fn clock_status(&self) -> ClockStatus {
        self.clock.status()
    }

    pub fn hlc(&self) -> &Hlc {
        &self.hlc
    }

    pub(crate) fn leader_address(&self, leader_id: u64) -> Option<String> {
        if leader_id == self.config.node_id {
            return self.config.advertise_address();
        }
        self.transport
            .as_ref()
            .and_then(|t| t.peer_address(leader_id))
    }

    /// Addresses of the other members, as this node knows them.
    pub fn peer_addresses(&self) -> Vec<(u64, String)> {
        self.transport
            .as_ref()
            .map(|t| t.peers())
            .unwrap_or_default()
    }

    /// Queues `skill/instance` for repair from peers (`crate::repair`); the
    /// caller still answers DATA_LOSS.
    pub(crate) fn report_corrupt(&self, skill: &str, instance: &str) {
        self.env.repair.report(skill, instance);
    }

    /// The cached channel to a peer (for `crate::repair`).
    pub(crate) fn peer_channel(
        &self,
        address: &str,
    ) -> Result<tonic::transport::Channel, RuntimeError> {
        self.channels.get(address)
    }

    fn report_if_corrupt(&self, e: &synapse_storage::StorageError, skill: &str, instance: &str) {
        if e.is_corrupt() {
            self.metrics.data_loss.fetch_add(1, Ordering::Relaxed);
            self.report_corrupt(skill, instance);
        }
    }

    fn skill(&self, name: &str) -> Result<&Arc<dyn DynSkill>, RuntimeError> {
        self.skills
            .get(name)
            .ok_or_else(|| RuntimeError::NotFound(format!("unknown skill `{name}`")))
    }

    /// Names valid, caller authorized, skill known: in that order, so an
    /// unauthorized caller learns nothing about which skills exist.
    fn admit_target(
        &self,
        token: Option<&str>,
        skill: &str,
        instance: &str,
        method: &str,
        operation: Operation,
    ) -> Result<Arc<dyn DynSkill>, RuntimeError> {
        validate_name("skill", skill, MAX_SKILL_NAME)?;
        validate_name("instance", instance, MAX_INSTANCE_NAME)?;
        self.authorize(token, skill, instance, method, operation)?;
        Ok(self.skill(skill)?.clone())
    }

    /// The capability check. Every decision is audited: the record is queued
    /// for the batched audit writer (`audit_log`) and becomes durable with
    /// the next Raft Ready's sync; a full audit queue refuses the request.
    pub fn authorize(
        &self,
        token: Option<&str>,
        skill: &str,
        instance: &str,
        method: &str,
        operation: Operation,
    ) -> Result<String, RuntimeError> {
        self.authorize_fenced(token, skill, instance, method, operation)
            .map(|(principal, _)| principal)
    }

    /// [`Core::authorize`], also returning what apply must re-check for a
    /// write made under this decision (fencing).
    pub(crate) fn authorize_fenced(
        &self,
        token: Option<&str>,
        skill: &str,
        instance: &str,
        method: &str,
        operation: Operation,
    ) -> Result<(String, Arc<Fence>), RuntimeError> {
        let req = Request {
            skill,
            instance,
            method,
            operation,
        };
        let Some(guard) = self.keys.guard() else {
            return Err(RuntimeError::unavailable(
                "the cluster root key has not reached this node yet; retry shortly",
            ));
        };
        let checked = guard.check(token, &req);
        let (allowed, principal, reason) = match &checked {
            Ok(d) => (d.allowed, d.principal.clone(), d.reason.clone()),
            Err(e) => (
                false,
                guard.cached_principal(token).unwrap_or_default(),
                e.to_string(),
            ),
        };
        let record = AuditRecord {
            seq: 0,
            timestamp: self.hlc.now(),
            principal: principal.clone(),
            skill: skill.into(),
            instance: instance.into(),
            method: method.into(),
            allowed,
            reason: reason.clone(),
            prev_hash: [0; 32],
            hash: [0; 32],
        };
        // Fail closed: a decision that cannot be recorded is not served.
        // (For a denial the error returned is the denial itself; the lost
        // record is counted in `audit_records_dropped_total`.)
        let recorded = self.audit.record(record);
        if let (Ok(d), Err(e)) = (&checked, recorded) {
            if d.allowed {
                self.metrics.overloaded.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        }
        match checked {
            Ok(d) if d.allowed => Ok((principal, d.fence)),
            Ok(d) => {
                self.metrics.denied.fetch_add(1, Ordering::Relaxed);
                Err(RuntimeError::PermissionDenied(d.reason))
            }
            Err(e) => {
                self.metrics.denied.fetch_add(1, Ordering::Relaxed);
                tracing::info!(skill, instance, method, reason = %e, "capability denied");
                Err(e.into())
            }
        }
    }

    /// Records a refused Peer RPC. Admitted peer calls are not recorded:
    /// they are this cluster's own members (one Raft stream per peer, clock
    /// samples every few hundred ms) and would bury client decisions.
    pub(crate) fn audit_peer_denial(&self, rpc: &str, remote: &str, error: &RuntimeError) {
        self.metrics.denied.fetch_add(1, Ordering::Relaxed);
        let record = AuditRecord {
            seq: 0,
            timestamp: self.hlc.now(),
            principal: String::new(),
            skill: crate::cluster::PEER_SKILL.into(),
            instance: remote.into(),
            method: rpc.into(),
            allowed: false,
            reason: error.to_string(),
            prev_hash: [0; 32],
            hash: [0; 32],
        };
        // A full queue already counted the loss; the call is refused anyway.
        let _ = self.audit.record(record);
    }

    pub(crate) fn not_leader(&self, status: &RaftStatus) -> RuntimeError {
        let leader = (status.leader_id != 0 && status.leader_id != self.config.node_id)
            .then_some(status.leader_id);
        RuntimeError::Unavailable {
            reason: match leader {
                Some(_) => "this node is not the leader".into(),
                None => "no leader elected; retry shortly".into(),
            },
            leader_id: leader,
            leader_addr: leader.and_then(|l| self.leader_address(l)),
        }
    }

    /// Writes run only on a leader that has applied an entry of its own
    /// term, so actors never load a head older than the committed one.
    async fn ensure_write_leader(&self) -> Result<(), RuntimeError> {
        let status = self.raft.status();
        if status.role != Role::Leader {
            return Err(self.not_leader(&status));
        }
        if self.instances.caught_up_term() != status.term {
            self.raft.read_index().await?;
            let now = self.raft.status();
            if now.role != Role::Leader || self.instances.caught_up_term() != now.term {
                return Err(self.not_leader(&now));
            }
        }
        Ok(())
    }

    /// Everything acknowledged or shown to any client before this call is
    /// visible to a read after it. Under the leader's lease
    /// ([`synapse_consensus::ReadLease`]) no other leader can exist; the
    /// lease read waits until this node has applied every commit index it
    /// has sent (a follower may serve those first), and an entry of the
    /// leased term must be applied (so everything before the term is).
    /// Otherwise a ReadIndex round.
    async fn linearizable_barrier(&self) -> Result<(), RuntimeError> {
        if let Some(term) = self.raft.lease_read().await {
            if self.instances.caught_up_term() == term {
                self.metrics.lease_reads.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        match self.raft.read_index().await {
            Ok(_) => Ok(()),
            Err(e) => Err(match RuntimeError::from(e) {
                RuntimeError::Unavailable { .. } => self.not_leader(&self.raft.status()),
                other => other,
            }),
        }
    }

    async fn send_to_actor(
        &self,
        id: InstanceId,
        skill: &Arc<dyn DynSkill>,
        op: Op,
        request_id: String,
        expected_version: Option<u64>,
        fence: Arc<Fence>,
    ) -> Result<InvokeResult, RuntimeError> {
        let _stage = StageTimer::start(&self.metrics.stages.actor);
        let mailbox = self.instances.get_or_activate(&id, skill, &self.env)?;
        if mailbox.queued.fetch_add(1, Ordering::AcqRel) >= self.config.mailbox_capacity {
            mailbox.queued.fetch_sub(1, Ordering::AcqRel);
            self.metrics.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(RuntimeError::ResourceExhausted(format!(
                "mailbox of {id} is full"
            )));
        }
        let (tx, rx) = oneshot::channel();
        let sent = mailbox.addr.try_send(Execute {
            op,
            request_id,
            expected_version,
            fence,
            reply: tx,
            sent_at: Instant::now(),
        });
        if let Err(e) = sent {
            mailbox.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(match e {
                actix::prelude::SendError::Full(_) => {
                    self.metrics.overloaded.fetch_add(1, Ordering::Relaxed);
                    RuntimeError::ResourceExhausted(format!("mailbox of {id} is full"))
                }
                actix::prelude::SendError::Closed(_) => {
                    RuntimeError::unavailable(format!("{id} was passivated; retry"))
                }
            });
        }
        rx.await.map_err(|_| {
            RuntimeError::unavailable(format!(
                "{id} stopped before replying (leadership change?); retry with the same request id"
            ))
        })?
    }

    /// Runs a skill method. Writes return once committed and durable.
    pub async fn invoke(
        &self,
        token: Option<&str>,
        req: InvokeRequest,
    ) -> Result<InvokeResult, RuntimeError> {
        let permit = self.try_admit_invoke()?;
        self.invoke_admitted(permit, token, req).await
    }

    /// [`Core::invoke`] for a call that already holds its in-flight slot
    /// (taken by the gRPC front door before the request body was decoded).
    /// Every check after admission still runs: names, capability guard,
    /// leadership, mailbox bound.
    pub async fn invoke_admitted(
        &self,
        permit: InvokePermit,
        token: Option<&str>,
        req: InvokeRequest,
    ) -> Result<InvokeResult, RuntimeError> {
        let served = StageTimer::start(&self.metrics.stages.served);
        let result = self.invoke_inner(token, req).await;
        drop(served);
        drop(permit);
        match &result {
            Ok(r) => {
                self.metrics.invokes_ok.fetch_add(1, Ordering::Relaxed);
                if r.deduplicated {
                    self.metrics.deduplicated.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                self.metrics.invokes_failed.fetch_add(1, Ordering::Relaxed);
                if matches!(e, RuntimeError::DataLoss(_)) {
                    self.metrics.data_loss.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        result
    }

    async fn invoke_inner(
        &self,
        token: Option<&str>,
        req: InvokeRequest,
    ) -> Result<InvokeResult, RuntimeError> {
        let status = self.raft.status();
        if status.role != Role::Leader && self.transport.is_some() && !self.serves_stale_read(&req)
        {
            return self.forward_invoke(token, req, &status).await;
        }
        self.invoke_local(token, req).await
    }

    /// Planted bug (see [`enable_debug_unsafe_stale_reads`]): a read served
    /// here, from this node's own view, without forwarding or a barrier.
    fn serves_stale_read(&self, req: &InvokeRequest) -> bool {
        debug_unsafe_stale_reads()
            && self
                .skills
                .get(&req.skill)
                .and_then(|s| s.method_kind(&req.method))
                == Some(MethodKind::Read)
    }

    /// Takes one of the node's in-flight Invoke slots, or refuses with
    /// RESOURCE_EXHAUSTED. One atomic add: cheap enough to run first, before
    /// any decoding, guard check or actor work, so that shedding costs the
    /// overloaded node almost nothing. The refusal is counted here (as
    /// overloaded and as a failed invoke) because a call refused at the
    /// front door never reaches [`Core::invoke_admitted`].
    pub fn try_admit_invoke(&self) -> Result<InvokePermit, RuntimeError> {
        let n = self.inflight_invokes.fetch_add(1, Ordering::Relaxed);
        let permit = InvokePermit(self.inflight_invokes.clone());
        if n >= self.config.max_inflight_invokes {
            self.metrics.overloaded.fetch_add(1, Ordering::Relaxed);
            self.metrics.invokes_failed.fetch_add(1, Ordering::Relaxed);
            return Err(RuntimeError::ResourceExhausted(format!(
                "{} invocations already in progress on this node",
                self.config.max_inflight_invokes
            )));
        }
        Ok(permit)
    }

    /// Runs an Invoke forwarded by another member: here or nowhere, so a
    /// request never bounces between nodes.
    pub async fn invoke_forwarded(
        &self,
        token: Option<&str>,
        req: InvokeRequest,
    ) -> Result<InvokeResult, RuntimeError> {
        let permit = self.try_admit_invoke()?;
        let result = self.invoke_local(token, req).await;
        drop(permit);
        match &result {
            Ok(_) => self.metrics.invokes_ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.metrics.invokes_failed.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    async fn forward_invoke(
        &self,
        token: Option<&str>,
        req: InvokeRequest,
        status: &RaftStatus,
    ) -> Result<InvokeResult, RuntimeError> {
        let Some(address) = (status.leader_id != 0)
            .then(|| self.leader_address(status.leader_id))
            .flatten()
        else {
            return Err(self.not_leader(status));
        };
        let payload = serde_json::to_vec(&req.payload)
            .map_err(|e| RuntimeError::InvalidArgument(e.to_string()))?;
        let request = pb::ForwardInvokeRequest {
            request: Some(pb::InvokeRequest {
                skill: req.skill,
                instance: req.instance,
                method: req.method,
                payload,
                request_id: req.request_id,
                expected_version: req.expected_version,
            }),
            token: token.unwrap_or_default().to_string(),
        };
        let forward = StageTimer::start(&self.metrics.stages.forward);
        let r = self.forwarder.call(&self.channels, &address, request).await;
        drop(forward);
        let r = r.map_err(error_from_status)?;
        let ts = r.timestamp.unwrap_or_default();
        Ok(InvokeResult {
            reply: serde_json::from_slice(&r.reply).map_err(|e| {
                RuntimeError::Internal(format!("leader reply does not decode: {e}"))
            })?,
            version: r.version,
            timestamp: Timestamp {
                physical_micros: ts.physical_micros,
                logical: ts.logical,
                node_id: ts.node_id,
            },
            hash: r
                .hash
                .as_slice()
                .try_into()
                .map_err(|_| RuntimeError::Internal("leader sent a bad hash".into()))?,
            deduplicated: r.deduplicated,
            request_id: r.request_id,
        })
    }

    async fn invoke_local(
        &self,
        token: Option<&str>,
        req: InvokeRequest,
    ) -> Result<InvokeResult, RuntimeError> {
        let _stage = StageTimer::start(&self.metrics.stages.local);
        validate_name("skill", &req.skill, MAX_SKILL_NAME)?;
        validate_name("instance", &req.instance, MAX_INSTANCE_NAME)?;
        validate_request_id(&req.request_id)?;
        // Authorize before saying whether the skill or method exists, so an
        // unauthorized caller cannot probe them. An unknown method is
        // checked as a write, the strictest reading.
        let known = self.skills.get(&req.skill).cloned();
        let kind = known.as_ref().and_then(|s| s.method_kind(&req.method));
        let operation = if kind == Some(MethodKind::Read) {
            Operation::Read
        } else {
            Operation::Write
        };
        let guard = StageTimer::start(&self.metrics.stages.guard);
        let authorized =
            self.authorize_fenced(token, &req.skill, &req.instance, &req.method, operation);
        drop(guard);
        let (_, fence) = authorized?;
        let skill = known
            .ok_or_else(|| RuntimeError::NotFound(format!("unknown skill `{}`", req.skill)))?;
        let kind = kind.ok_or_else(|| {
            RuntimeError::NotFound(format!(
                "skill `{}` has no method `{}` (it has: {})",
                req.skill,
                req.method,
                skill.method_names().join(", ")
            ))
        })?;
        let id = InstanceId {
            skill: req.skill.clone(),
            instance: req.instance.clone(),
        };
        let op = Op::Call {
            method: req.method,
            kind,
            payload: req.payload,
        };
        match kind {
            MethodKind::Read => {
                if !debug_unsafe_stale_reads() {
                    let stage = StageTimer::start(&self.metrics.stages.read_barrier);
                    let barrier = self.linearizable_barrier().await;
                    drop(stage);
                    barrier?;
                }
                self.metrics.reads.fetch_add(1, Ordering::Relaxed);
                self.send_to_actor(id, &skill, op, req.request_id, req.expected_version, fence)
                    .await
            }
            MethodKind::Write => {
                let request_id = req.request_id;
                if let Some(done) = self.earlier_write(&id.skill, &id.instance, &request_id)? {
                    self.metrics.deduplicated.fetch_add(1, Ordering::Relaxed);
                    let reply = serde_json::from_slice(&done.reply).map_err(|e| {
                        RuntimeError::DataLoss(format!("recorded reply does not decode: {e}"))
                    })?;
                    return Ok(InvokeResult {
                        reply,
                        version: done.version,
                        timestamp: done.timestamp,
                        hash: done.hash,
                        deduplicated: true,
                        request_id,
                    });
                }
                self.ensure_write_leader().await?;
                self.send_to_actor(id, &skill, op, request_id, req.expected_version, fence)
                    .await
            }
        }
    }

    /// The record of an earlier write with the same caller-given request
    /// id (a retry). A write without an id is named by its actor, and has
    /// no record to look up.
    fn earlier_write(
        &self,
        skill: &str,
        instance: &str,
        request_id: &str,
    ) -> Result<Option<synapse_storage::RequestRecord>, RuntimeError> {
        if request_id.is_empty() {
            return Ok(None);
        }
        Ok(self.store.request(skill, instance, request_id)?)
    }

    /// Appends a checkpoint equal to an earlier version's state.
    pub async fn rollback(
        &self,
        token: Option<&str>,
        skill: &str,
        instance: &str,
        to_version: u64,
        request_id: &str,
    ) -> Result<InvokeResult, RuntimeError> {
        validate_name("skill", skill, MAX_SKILL_NAME)?;
        validate_name("instance", instance, MAX_INSTANCE_NAME)?;
        validate_request_id(request_id)?;
        if to_version == 0 {
            return Err(RuntimeError::InvalidArgument(
                "to_version must be >= 1".into(),
            ));
        }
        let (_, fence) = self.authorize_fenced(
            token,
            skill,
            instance,
            system_methods::ROLLBACK,
            Operation::Write,
        )?;
        let dyn_skill = self.skill(skill)?.clone();
        let request_id = request_id.to_owned();
        if let Some(done) = self.earlier_write(skill, instance, &request_id)? {
            let reply = serde_json::from_slice(&done.reply)
                .map_err(|e| RuntimeError::DataLoss(e.to_string()))?;
            return Ok(InvokeResult {
                reply,
                version: done.version,
                timestamp: done.timestamp,
                hash: done.hash,
                deduplicated: true,
                request_id,
            });
        }
        self.ensure_write_leader().await?;
        let id = InstanceId {
            skill: skill.into(),
            instance: instance.into(),
        };
        self.send_to_actor(
            id,
            &dyn_skill,
            Op::Rollback { to_version },
            request_id,
            None,
            fence,
        )
        .await
    }

    /// Latest committed checkpoint (linearizable), or the one at `version`.
    pub async fn get_state(
        &self,
        token: Option<&str>,
        skill: &str,
        instance: &str,
        version: u64,
    ) -> Result<Checkpoint, RuntimeError> {
        self.admit_target(
            token,
            skill,
            instance,
            system_methods::STATE,
            Operation::Read,
        )?;
        self.linearizable_barrier().await?;
        let found = if version == 0 {
            self.store.latest(skill, instance)
        } else {
            self.store.get(skill, instance, version)
        };
        let found = found.inspect_err(|e| {
            if matches!(e, synapse_storage::StorageError::Corrupt { .. }) {
                self.metrics.data_loss.fetch_add(1, Ordering::Relaxed);
                self.report_corrupt(skill, instance);
            }
        })?;
        found.ok_or_else(|| match version {
            0 => RuntimeError::NotFound(format!("{skill}/{instance} has no checkpoint")),
            v => RuntimeError::NotFound(format!("{skill}/{instance} has no retained version {v}")),
        })
    }

    /// Latest checkpoint at or before an HLC timestamp.
    pub async fn get_state_at(
        &self,
        token: Option<&str>,
        skill: &str,
        instance: &str,
        at: Timestamp,
    ) -> Result<Checkpoint, RuntimeError> {
        self.admit_target(
            token,
            skill,
            instance,
            system_methods::STATE,
            Operation::Read,
        )?;
        self.linearizable_barrier().await?;
        self.store
            .at_or_before(skill, instance, at)
            .inspect_err(|e| self.report_if_corrupt(e, skill, instance))?
            .ok_or_else(|| {
                RuntimeError::NotFound(format!(
                    "{skill}/{instance} has no retained checkpoint at or before that time"
                ))
            })
    }

    /// Newest first, at most [`MAX_HISTORY`].
    pub async fn history(
        &self,
        token: Option<&str>,
        skill: &str,
        instance: &str,
        before_version: u64,
        limit: u32,
    ) -> Result<Vec<Checkpoint>, RuntimeError> {
        self.admit_target(
            token,
            skill,
            instance,
            system_methods::HISTORY,
            Operation::Read,
        )?;
        self.linearizable_barrier().await?;
        let limit = match limit as usize {
            0 => 100,
            n => n.min(MAX_HISTORY),
        };
        let list = self
            .store
            .history(skill, instance, before_version, limit)
            .inspect_err(|e| self.report_if_corrupt(e, skill, instance))?;
        if list.is_empty() && self.store.latest(skill, instance)?.is_none() {
            return Err(RuntimeError::NotFound(format!(
                "{skill}/{instance} has no checkpoint"
            )));
        }
        Ok(list)
    }

    pub async fn verify(
        &self,
        token: Option<&str>,
        skill: &str,
        instance: &str,
    ) -> Result<ChainReport, RuntimeError> {
        self.admit_target(
            token,
            skill,
            instance,
            system_methods::VERIFY,
            Operation::Read,
        )?;
        self.linearizable_barrier().await?;
        let report = self.store.verify_chain(skill, instance)?;
        if report.versions_checked == 0 && report.ok {
            return Err(RuntimeError::NotFound(format!(
                "{skill}/{instance} has no checkpoint"
            )));
        }
        if !report.ok {
            self.metrics.data_loss.fetch_add(1, Ordering::Relaxed);
            self.report_corrupt(skill, instance);
            tracing::error!(skill, instance, problem = ?report.problem, "hash chain does not verify");
        }
        Ok(report)
    }

    /// Subscribes to newly committed checkpoints of one instance. The
    /// receiver is bounded; a subscriber that falls behind is cut off.
    pub fn watch(
        &self,
        token: Option<&str>,
        skill: &str,
        instance: &str,
    ) -> Result<WatchGuard, RuntimeError> {
        self.admit_target(
            token,
            skill,
            instance,
            system_methods::WATCH,
            Operation::Read,
        )?;
        let n = self.metrics.watchers.fetch_add(1, Ordering::Relaxed);
        let guard = WatchGuard {
            metrics: self.metrics.clone(),
            rx: self.watch.subscribe(),
            skill: skill.into(),
            instance: instance.into(),
        };
        if n as usize >= self.config.max_watchers {
            self.metrics.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(RuntimeError::ResourceExhausted(format!(
                "at most {} watchers",
                self.config.max_watchers
            )));
        }
        Ok(guard)
    }

    pub fn status(&self, token: Option<&str>) -> Result<NodeStatus, RuntimeError> {
        self.authorize(
            token,
            system_methods::SYSTEM_SKILL,
            "cluster",
            "status",
            Operation::Read,
        )?;
        let raft = self.raft.status();
        let (applied, state_hash, instances) = self.store.state_hash()?;
        Ok(NodeStatus {
            raft,
            applied_index: applied,
            state_hash,
            instances,
            active_instances: self.instances.len() as u64,
        })
    }

    fn require_leader(&self) -> Result<RaftStatus, RuntimeError> {
        let status = self.raft.status();
        if status.role != Role::Leader {
            return Err(self.not_leader(&status));
        }
        Ok(status)
    }

    fn single_change(change_type: ConfChangeType, id: u64, context: Vec<u8>) -> ConfChangeV2 {
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change_type);
        single.node_id = id;
        let mut cc = ConfChangeV2::default();
        cc.set_changes(vec![single].into());
        cc.context = context.into();
        cc
    }

    /// This node's answer to `Peer.Probe`: whether a cluster has formed
    /// here (a leader is known, or the replicated root key was applied) and
    /// `id`'s standing in it, as this node sees it (`crate::identity`).
    pub(crate) fn probe_answer(&self, id: u64) -> Result<pb::ProbeResponse, RuntimeError> {
        let s = self.raft.status();
        let leader_address = Some(s.leader_id)
            .filter(|l| *l != 0)
            .and_then(|l| self.leader_address(l))
            .unwrap_or_default();
        Ok(pb::ProbeResponse {
            node_id: self.config.node_id,
            established: s.leader_id != 0 || self.keys.guard().is_some(),
            leader_id: s.leader_id,
            leader_address,
            voter: s.voters.contains(&id),
            learner: s.learners.contains(&id),
            removed: self
                .store
                .cluster_meta(&crate::cluster::removed_meta_name(id))?
                .is_some(),
            started: self.store.cluster_meta(&started_meta_name(id))?.is_some(),
        })
    }

    /// Ids this cluster has removed (tombstoned); they never join again.
    pub fn removed_members(&self) -> Result<Vec<u64>, RuntimeError> {
        let mut ids: Vec<u64> = self
            .store
            .cluster_meta_prefix(META_REMOVED_PREFIX)?
            .into_iter()
            .filter_map(|(name, _)| name.strip_prefix(META_REMOVED_PREFIX)?.parse().ok())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// An id never used in this cluster: above every member, every
    /// tombstone and every address-book entry. Safe against a concurrent
    /// allocation because raft-rs takes one membership change at a time
    /// (`ConsensusError::MembershipChangePending`): a second caller that
    /// computed the same id has its change refused and retries.
    fn unused_member_id(&self, status: &RaftStatus) -> Result<u64, RuntimeError> {
        let book = self
            .store
            .cluster_meta_prefix(META_MEMBER_PREFIX)?
            .into_iter()
            .filter_map(|(name, _)| name.strip_prefix(META_MEMBER_PREFIX)?.parse::<u64>().ok());
        let highest = status
            .voters
            .iter()
            .chain(&status.learners)
            .copied()
            .chain(self.removed_members()?)
            .chain(book)
            .chain(std::iter::once(self.config.node_id))
            .max()
            .unwrap_or(0);
        highest
            .checked_add(1)
            .ok_or_else(|| RuntimeError::ResourceExhausted("node ids exhausted".into()))
    }

    /// Adds a member, as a learner unless `as_voter`. `id` 0 allocates an
    /// unused id. `fresh`: the caller's data dir is blank, so it may not
    /// take an id that votes or voted (`crate::identity`).
    pub async fn add_member(
        &self,
        token: Option<&str>,
        request: AddMember<'_>,
    ) -> Result<Membership, RuntimeError> {
        self.authorize(
            token,
            system_methods::SYSTEM_SKILL,
            "cluster",
            "add_member",
            Operation::Write,
        )?;
        let AddMember {
            id: requested,
            address,
            as_voter,
            fresh,
            new_id_if_removed,
        } = request;
        validate_member(requested.max(1), address)?;
        let status = self.require_leader()?;
        let removed = self.removed_members()?;
        let id = if requested == 0 {
            self.unused_member_id(&status)?
        } else if removed.contains(&requested) {
            if !(fresh && new_id_if_removed) {
                return Err(RuntimeError::FailedPrecondition(format!(
                    "node {requested} was removed from this cluster and ids are never reused \
                     (a node back under an id it voted with may have forgotten those votes); \
                     start it with an empty data dir and a new id, or id 0 to have one allocated"
                )));
            }
            self.unused_member_id(&status)?
        } else {
            requested
        };
        if status.voters.contains(&id) {
            if fresh {
                return Err(RuntimeError::FailedPrecondition(format!(
                    "node {id} is a voter of this cluster but its data dir is empty: it lost \
                     its data and must not vote again under id {id}; remove it first \
                     (`synapse cluster remove {id}`), then it joins under a new id"
                )));
            }
            return Err(RuntimeError::FailedPrecondition(format!(
                "node {id} is already a voter"
            )));
        }
        if status.learners.contains(&id) && !as_voter {
            return Ok(Membership::of(id, status));
        }
        let kind = if as_voter {
            ConfChangeType::AddNode
        } else {
            ConfChangeType::AddLearnerNode
        };
        let cs = self
            .raft
            .change_membership(Self::single_change(kind, id, address.as_bytes().to_vec()))
            .await?;
        if id != requested {
            tracing::info!(id, requested, "allocated a new member id");
        }
        Ok(Membership {
            id,
            voters: cs.voters,
            learners: cs.learners,
        })
    }

    /// Promotes a learner that has caught up.
    pub async fn promote_member(
        &self,
        token: Option<&str>,
        id: u64,
    ) -> Result<Membership, RuntimeError> {
        self.authorize(
            token,
            system_methods::SYSTEM_SKILL,
            "cluster",
            "promote",
            Operation::Write,
        )?;
        let status = self.require_leader()?;
        if status.voters.contains(&id) {
            return Ok(Membership::of(id, status));
        }
        if !status.learners.contains(&id) {
            return Err(RuntimeError::NotFound(format!(
                "node {id} is not a learner of this cluster"
            )));
        }
        let matched = status
            .progress
            .iter()
            .find(|(p, _)| *p == id)
            .map(|(_, m)| *m)
            .unwrap_or(0);
        let lag = status.last_index.saturating_sub(matched);
        if lag > MAX_PROMOTE_LAG {
            return Err(RuntimeError::FailedPrecondition(format!(
                "node {id} is still catching up ({lag} entries behind; promotion needs <= {MAX_PROMOTE_LAG})"
            )));
        }
        let cs = self
            .raft
            .change_membership(Self::single_change(ConfChangeType::AddNode, id, Vec::new()))
            .await?;
        Ok(Membership {
            id,
            voters: cs.voters,
            learners: cs.learners,
        })
    }

    /// Removes a member; refuses when the remaining voters that are caught
    /// up could not form a quorum.
    pub async fn remove_member(
        &self,
        token: Option<&str>,
        id: u64,
    ) -> Result<Membership, RuntimeError> {
        self.authorize(
            token,
            system_methods::SYSTEM_SKILL,
            "cluster",
            "remove_member",
            Operation::Write,
        )?;
        let status = self.require_leader()?;
        if !status.voters.contains(&id) && !status.learners.contains(&id) {
            return Err(RuntimeError::NotFound(format!("node {id} is not a member")));
        }
        if status.voters.contains(&id) {
            let remaining: Vec<u64> = status.voters.iter().copied().filter(|v| *v != id).collect();
            if remaining.is_empty() {
                return Err(RuntimeError::FailedPrecondition(
                    "cannot remove the last voter".into(),
                ));
            }
            // Healthy = heard from within the last election timeout (check
            // quorum's view) and caught up; a freshly killed voter still has
            // a recent match index, so the match index alone is not enough.
            let healthy = remaining
                .iter()
                .filter(|v| {
                    **v == self.config.node_id
                        || (status.recently_active.contains(v)
                            && status.progress.iter().any(|(p, m)| {
                                p == *v && status.last_index.saturating_sub(*m) <= MAX_REMOVE_LAG
                            }))
                })
                .count();
            let quorum = remaining.len() / 2 + 1;
            if healthy < quorum {
                return Err(RuntimeError::FailedPrecondition(format!(
                    "removing node {id} would leave {healthy} caught-up voter(s) of {}; a quorum needs {quorum}",
                    remaining.len()
                )));
            }
        }
        let cs = self
            .raft
            .change_membership(Self::single_change(
                ConfChangeType::RemoveNode,
                id,
                Vec::new(),
            ))
            .await?;
        Ok(Membership {
            id,
            voters: cs.voters,
            learners: cs.learners,
        })
    }

    pub fn transfer_leader(
        &self,
        token: Option<&str>,
        id: u64,
    ) -> Result<Membership, RuntimeError> {
        self.authorize(
            token,
            system_methods::SYSTEM_SKILL,
            "cluster",
            "transfer_leader",
            Operation::Write,
        )?;
        let status = self.require_leader()?;
        if !status.voters.contains(&id) {
            return Err(RuntimeError::FailedPrecondition(format!(
                "node {id} is not a voter"
            )));
        }
        self.raft.transfer_leader(id)?;
        Ok(Membership::of(id, status))
    }

    /// A verified, self-checking dump of the whole state at a linearizable
    /// point: (applied index, bytes).
    pub async fn backup(&self, token: Option<&str>) -> Result<(u64, Vec<u8>), RuntimeError> {
        self.authorize(
            token,
            system_methods::SYSTEM_SKILL,
            "cluster",
            "backup",
            Operation::Read,
        )?;
        self.linearizable_barrier().await?;
        let store = self.store.clone();
        let data = tokio::task::spawn_blocking(move || store.snapshot_state())
            .await
            .map_err(|e| RuntimeError::Internal(format!("backup task failed: {e}")))??;
        Ok((self.store.applied_index()?, data))
    }

    pub fn now(&self, token: Option<&str>) -> Result<(Timestamp, u64), RuntimeError> {
        self.authorize(
            token,
            system_methods::SYSTEM_SKILL,
            "clock",
            "now",
            Operation::Read,
        )?;
        // The offset estimate's uncertainty, plus the clock's 1 µs resolution.
        let c = self.clock.status();
        if !c.healthy {
            return Err(RuntimeError::unavailable(c.problem));
        }
        Ok((self.hlc.now(), c.uncertainty_micros + 1))
    }
}

/// Result of [`Core::status`].
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub raft: RaftStatus,
    pub applied_index: u64,
    pub state_hash: [u8; 32],
    pub instances: u64,
    pub active_instances: u64,
}

/// A Watch subscription; decrements the watcher gauge when dropped.
pub struct WatchGuard {
    metrics: Arc<Metrics>,
    rx: broadcast::Receiver<Arc<Checkpoint>>,
    skill: String,
    instance: String,
}

impl WatchGuard {
    /// Next checkpoint of the watched instance. `Err` when the subscriber
    /// fell behind the bounded buffer or the node stopped.
    pub async fn next(&mut self) -> Result<Arc<Checkpoint>, RuntimeError> {
        loop {
            match self.rx.recv().await {
                Ok(cp) if cp.skill == self.skill && cp.instance == self.instance => return Ok(cp),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    return Err(RuntimeError::ResourceExhausted(format!(
                        "watcher fell {n} checkpoints behind; re-subscribe and read History"
                    )))
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(RuntimeError::unavailable("node stopped"))
                }
            }
        }
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.metrics.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Starts a node. Built-in skills (`counter`, `kv`) are registered unless
/// [`NodeBuilder::without_builtin_skills`] is called.
pub struct NodeBuilder {
    config: NodeConfig,
    skills: Vec<Arc<dyn DynSkill>>,
    clock: Arc<dyn PhysicalClock>,
}

impl NodeBuilder {
    pub fn new(config: NodeConfig) -> Self {
        NodeBuilder {
            config,
            skills: vec![erase(Counter), erase(Kv)],
            clock: Arc::new(SystemClock),
        }
    }

    /// Registers an application skill.
    pub fn skill<S: Skill>(mut self, skill: S) -> Self {
        self.skills.push(erase(skill));
        self
    }

    pub fn without_builtin_skills(mut self) -> Self {
        self.skills
            .retain(|s| s.name() != "counter" && s.name() != "kv");
        self
    }

    /// Injects the physical clock (tests skew it).
    pub fn clock(mut self, clock: Arc<dyn PhysicalClock>) -> Self {
        self.clock = clock;
        self
    }

    /// Starts the node on its own thread (one actix System hosts the actors,
    /// the Raft driver and the servers) and waits until it is serving.
    pub fn start(self) -> Result<Node, RuntimeError> {
        self.config
            .validate()
            .map_err(RuntimeError::InvalidArgument)?;
        let mut skills = HashMap::new();
        for s in self.skills {
            if skills.insert(s.name().to_string(), s.clone()).is_some() {
                return Err(RuntimeError::InvalidArgument(format!(
                    "skill `{}` registered twice",
                    s.name()
                )));
            }
        }
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let config = self.config.clone();
        let clock = self.clock;
        let thread = std::thread::Builder::new()
            .name(format!("synapse-node-{}", config.node_id))
            .spawn(move || {
                let system = actix_rt::System::new();
                system.block_on(run_node(config, skills, clock, ready_tx, stop_rx));
            })
            .map_err(|e| RuntimeError::Internal(format!("cannot spawn node thread: {e}")))?;
        let started = ready_rx
            .recv()
            .map_err(|_| RuntimeError::Internal("node thread exited during start".into()))?;
        match started {
            Ok(parts) => Ok(Node {
                core: parts.core,
                grpc_addr: parts.grpc_addr,
                http_addr: parts.http_addr,
                control: Arc::new(Control {
                    stop: Mutex::new(Some(stop_tx)),
                    thread: Mutex::new(Some(thread)),
                }),
            }),
            Err(e) => {
                let _ = thread.join();
                Err(e)
            }
        }
    }
}

struct Started {
    core: Arc<Core>,
    grpc_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
}

struct Control {
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Control {
    fn shutdown(&self) {
        if let Some(tx) = self.stop.lock().ok().and_then(|mut s| s.take()) {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A running node. Cheap to clone; the node stops when [`Node::shutdown`] is
/// called or the last clone is dropped.
#[derive(Clone)]
pub struct Node {
    core: Arc<Core>,
    grpc_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    control: Arc<Control>,
}

impl Node {
    pub fn builder(config: NodeConfig) -> NodeBuilder {
        NodeBuilder::new(config)
    }

    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// The token with every right, as written to `<data-dir>/root.token`.
    pub fn root_token(&self) -> &str {
        self.core.root_token()
    }

    /// Address the gRPC server bound (useful with port 0).
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Convenience for embedders: invoke with a token and a JSON payload.
    pub async fn invoke(
        &self,
        token: &str,
        skill: &str,
        instance: &str,
        method: &str,
        payload: Value,
    ) -> Result<InvokeResult, RuntimeError> {
        self.core
            .invoke(
                Some(token),
                InvokeRequest {
                    skill: skill.into(),
                    instance: instance.into(),
                    method: method.into(),
                    payload,
                    ..Default::default()
                },
            )
            .await
    }

    /// Latest committed state as JSON.
    pub async fn state(
        &self,
        token: &str,
        skill: &str,
        instance: &str,
    ) -> Result<Value, RuntimeError> {
        let cp = self.core.get_state(Some(token), skill, instance, 0).await?;
        serde_json::from_slice(&cp.state)
            .map_err(|e| RuntimeError::DataLoss(format!("state does not decode: {e}")))
    }

    /// Stops serving, drains in-flight calls (bounded by `drain_timeout_ms`),
    /// syncs the store and joins the node thread. Blocking.
    pub fn shutdown(&self) {
        self.control.shutdown();
    }
}

async fn open_core(
    mut config: NodeConfig,
    skills: HashMap<String, Arc<dyn DynSkill>>,
    clock: Arc<dyn PhysicalClock>,
) -> Result<Arc<Core>, RuntimeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        RuntimeError::Internal(format!(
            "cannot create data dir {}: {e}",
            config.data_dir.display()
        ))
    })?;
    let store = Store::open(
        &config.data_dir,
        StoreOptions {
            retention_versions: config.retention_versions,
            cache_capacity_bytes: config.storage_cache_mib.saturating_mul(1 << 20),
            ..Default::default()
        },
    )?;
    let keys = Arc::new(ClusterKeys::new(
        &config.data_dir,
        config.token_cache_capacity,
    ));
    // Revocations applied before a restart hold from the first request.
    let revoked = store.revocations()?;
    keys.revocations()
        .replace(revoked.iter().map(|r| r.id.as_slice()));
    if let Some(hex) = store.cluster_meta(META_ROOT_KEY)? {
        keys.install(&String::from_utf8_lossy(&hex))?;
    }

    let tls = crate::tls::TlsMaterial::from_paths(
        config.tls_cert.as_ref(),
        config.tls_key.as_ref(),
        config.tls_ca.as_ref(),
    )?;
    let credential = crate::cluster::credential_fn(keys.clone(), join_token_for(&config).ok());
    // The id is settled before anything uses it: a blank joining node is
    // admitted (and maybe given a new id) before its consensus starts.
    let join_token = join_token_for(&config).ok();
    crate::identity::resolve(
        &mut config,
        store.raft_log().is_blank()?,
        &PeerChannels::new(tls.as_ref().map(|t| t.client_config()), credential.clone()),
        join_token.as_deref(),
    )
    .await?;
    // After `resolve`: a bootstrap member that was admitted to an existing
    // cluster under a new id now joins it, and no longer lists `peers`.
    let peers = config
        .parsed_peers()
        .map_err(RuntimeError::InvalidArgument)?;

    let hlc = Arc::new(Hlc::new(config.node_id, clock));
    // Timestamps keep increasing across restarts: start past everything applied.
    hlc.observe(store.clock_high_water()?);
    let transport = if config.is_clustered() {
        let t = GrpcTransport::new(config.node_id, tokio::runtime::Handle::current());
        if let Some(tls) = &tls {
            t.set_tls(tls.client_config());
        }
        t.set_credential(credential.clone());
        if let Some(me) = config.advertise_address() {
            t.set_self_address(&me);
        }
        let frame_clock = hlc.clone();
        t.set_clock(Arc::new(move || frame_clock.now()));
        for (id, addr) in &peers {
            t.set_peer(*id, addr);
        }
        for (name, addr) in store.cluster_meta_prefix(crate::cluster::META_MEMBER_PREFIX)? {
            if let Some(id) = name
                .strip_prefix(crate::cluster::META_MEMBER_PREFIX)
                .and_then(|i| i.parse().ok())
            {
                t.set_peer(id, &String::from_utf8_lossy(&addr));
            }
        }
        Some(t)
    } else {
        None
    };

    let metrics = Arc::new(Metrics::default());
    let audit = crate::audit_log::AuditLog::start(
        store.clone(),
        config.audit_max_records,
        metrics.clone(),
    )?;
    let instances = Arc::new(InstanceTable::new(
        config.max_active_instances,
        actix_rt::Arbiter::current(),
    ));
    let (watch, _) = broadcast::channel(config.watch_buffer.max(1));
    let sm = NodeStateMachine {
        store: store.clone(),
        hlc: hlc.clone(),
        watch: watch.clone(),
        instances: instances.clone(),
        metrics: metrics.clone(),
        keys: keys.clone(),
        transport: transport.clone(),
    };
    let voters: Vec<u64> = if config.join_address().is_some() {
        Vec::new()
    } else if peers.is_empty() {
        vec![config.node_id]
    } else {
        peers.iter().map(|(id, _)| *id).collect()
    };
    let mut raft_config = RaftConfig::cluster_member(config.node_id, voters);
    raft_config.tick_interval = Duration::from_millis(config.raft_tick_ms);
    raft_config.election_tick = config.raft_election_tick;
    raft_config.heartbeat_tick = config.raft_heartbeat_tick;
    raft_config.compact_threshold = config.raft_compact_threshold;
    raft_config.lease_reads = config.raft_lease_reads;
    raft_config.commit_announce_delay = Duration::from_millis(config.raft_commit_announce_ms);
    raft_config.compact_keep = (config.raft_compact_threshold / 4).max(1);
    // Never start raft-rs over a damaged log: repair damaged records from
    // peers first, or refuse to start (`crate::log_repair`).
    if let Some(t) = &transport {
        let channels =
            PeerChannels::new(tls.as_ref().map(|t| t.client_config()), credential.clone());
        let mut others = t.peers();
        others.retain(|(p, _)| *p != config.node_id);
        let repaired =
            crate::log_repair::repair_at_start(&store, &others, &channels, &metrics).await?;
        if repaired > 0 {
            tracing::warn!(repaired, "raft log repaired from peers; starting consensus");
        }
    }
    let (raft, _join) = match &transport {
        Some(t) => {
            let (raft, join) = spawn_driver(raft_config, store.clone(), sm, t.clone())?;
            t.set_reporter(Arc::new(raft.clone()));
            (raft, join)
        }
        None => spawn_driver(raft_config, store.clone(), sm, Arc::new(NoopTransport))?,
    };
    let env = Arc::new(ActorEnv {
        store: store.clone(),
        raft: raft.clone(),
        hlc: hlc.clone(),
        config: config.clone(),
        metrics: metrics.clone(),
        repair: Default::default(),
    });
    let clock = Arc::new(ClockService::new(Duration::from_millis(
        config.max_clock_offset_ms,
    )));
    let forwarder =
        crate::forward::Forwarder::new(tokio::runtime::Handle::current(), metrics.clone());
    Ok(Arc::new(Core {
        config,
        store,
        keys,
        hlc,
        raft,
        skills,
        instances,
        env,
        watch,
        metrics,
        transport,
        channels: PeerChannels::new(tls.as_ref().map(|t| t.client_config()), credential),
        forwarder,
        tls,
        clock,
        audit,
        inflight_invokes: Default::default(),
        raft_streams: Arc::new(tokio::sync::Semaphore::new(
            crate::grpc::MAX_PEER_RAFT_STREAMS,
        )),
        reassembly: Default::default(),
    }))
}

/// Samples every peer's clock, recomputes the offset, and hands leadership
/// away while this node's clock cannot be trusted.
async fn clock_task(core: Arc<Core>, mut stop: tokio::sync::watch::Receiver<bool>) {
    /// A sample that takes longer than this says nothing useful (its
    /// uncertainty would dwarf any offset worth correcting).
    const SAMPLE_TIMEOUT: Duration = Duration::from_secs(1);
    let interval = Duration::from_millis(core.config.clock_sample_interval_ms.max(10));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        let peers = core.peer_addresses();
        for (peer, address) in &peers {
            let Ok(channel) = core.channels.get(address) else {
                continue;
            };
            let mut client = pb::peer_client::PeerClient::new(channel);
            let t1 = core.hlc.raw_physical_micros();
            let call = client.clock_sample(core.channels.peer_request(pb::ClockSampleRequest {
                from: core.config.node_id,
                t1_micros: t1,
            }));
            if let Ok(Ok(resp)) = tokio::time::timeout(SAMPLE_TIMEOUT, call).await {
                let t4 = core.hlc.raw_physical_micros();
                let r = resp.into_inner();
                if r.node_id == *peer {
                    core.clock.record(*peer, t1, r.t2_micros, r.t3_micros, t4);
                }
            }
        }
        let status = core.clock.recompute(&core.hlc);
        if !status.healthy {
            hand_off_leadership(&core, &status);
        }
    }
}

/// While the clock is out of bounds, a leader transfers leadership to the
/// caught-up voter whose clock agrees best with the cluster.
fn hand_off_leadership(core: &Core, clock: &ClockStatus) {
    let raft = core.raft.status();
    if raft.role != Role::Leader {
        return;
    }
    let best = raft
        .voters
        .iter()
        .filter(|v| **v != core.config.node_id)
        .filter(|v| {
            raft.progress
                .iter()
                .any(|(p, m)| p == *v && raft.last_index.saturating_sub(*m) <= MAX_PROMOTE_LAG)
        })
        .min_by_key(|v| {
            // Peer offset relative to the cluster = (peer − me) + (me − cluster).
            clock
                .peers
                .iter()
                .find(|p| p.peer == **v)
                .map(|p| {
                    p.offset_micros
                        .saturating_add(clock.offset_micros)
                        .unsigned_abs()
                })
                .unwrap_or(u64::MAX)
        });
    if let Some(to) = best {
        tracing::warn!(to, "clock out of bounds: transferring leadership");
        let _ = core.raft.transfer_leader(*to);
    }
}

/// Restores a backup into an empty data directory as the state of a new
/// one-voter cluster led by `node_id`; other nodes then join it. Every
/// checkpoint is verified before anything is written.
pub fn restore_backup(
    data_dir: &std::path::Path,
    node_id: u64,
    backup: &[u8],
) -> Result<u64, RuntimeError> {
    if data_dir.join("db").exists() {
        return Err(RuntimeError::FailedPrecondition(format!(
            "{} already holds a database; restore needs an empty data directory",
            data_dir.display()
        )));
    }
    if node_id == 0 {
        return Err(RuntimeError::InvalidArgument("node id must be >= 1".into()));
    }
    // Verify everything before creating anything, so a bad backup leaves
    // no half-made data directory behind.
    Store::verify_snapshot_data(backup)?;
    std::fs::create_dir_all(data_dir).map_err(|e| {
        RuntimeError::Internal(format!("cannot create {}: {e}", data_dir.display()))
    })?;
    // Keep every version the backup holds; the node's own retention applies
    // when it starts.
    let retention = Store::snapshot_versions_per_instance(backup)?.clamp(
        synapse_storage::DEFAULT_RETENTION_VERSIONS,
        synapse_storage::MAX_RETENTION_VERSIONS,
    );
    let store = Store::open(
        data_dir,
        StoreOptions {
            retention_versions: retention,
            ..Default::default()
        },
    )?;
    store.restore_state(backup)?;
    let applied = store.applied_index()?.max(1);
    // The Raft log of the new cluster starts right after the restored state:
    // a metadata-only snapshot at the applied index, with this node as the
    // only voter.
    let mut snap = synapse_consensus::eraftpb::Snapshot::default();
    let meta = snap.mut_metadata();
    meta.index = applied;
    meta.term = 1;
    meta.mut_conf_state().voters = vec![node_id];
    store.raft_log().apply_snapshot(&snap)?;
    store.sync()?;
    Ok(applied)
}

/// A leader that stops on purpose first hands leadership to the most
/// caught-up voter, so clients see one quick leader change instead of an
/// election timeout. Bounded: after two election timeouts it stops anyway.
async fn hand_off_before_stop(core: &Core) {
    let status = core.raft.status();
    if status.role != Role::Leader || status.voters.len() < 2 {
        return;
    }
    let Some((to, _)) = status
        .progress
        .iter()
        .filter(|(id, _)| *id != core.config.node_id && status.voters.contains(id))
        .max_by_key(|(_, matched)| *matched)
    else {
        return;
    };
    tracing::info!(to, "stopping: transferring leadership first");
    if core.raft.transfer_leader(*to).is_err() {
        return;
    }
    let bound =
        Duration::from_millis(core.config.raft_tick_ms * core.config.raft_election_tick as u64 * 2);
    let deadline = tokio::time::Instant::now() + bound;
    while core.raft.status().role == Role::Leader && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How often the background tasks look at the cluster.
const CLUSTER_POLL: Duration = Duration::from_millis(200);

/// On a leader that has applied its own term: replicate what a new cluster
/// needs and is missing — the root key (first one wins) and the addresses
/// of current members known from configuration.
async fn bootstrap_task(core: Arc<Core>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        if let Err(e) = bootstrap_once(&core).await {
            tracing::debug!(error = %e, "bootstrap step deferred");
        }
        tokio::select! {
            _ = tokio::time::sleep(CLUSTER_POLL) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn bootstrap_once(core: &Core) -> Result<(), RuntimeError> {
    let status = core.raft.status();
    if status.role != Role::Leader || core.instances.caught_up_term() != status.term {
        return Ok(());
    }
    if core.store.cluster_meta(META_ROOT_KEY)?.is_none() {
        let key = match &core.config.root_key_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    RuntimeError::InvalidArgument(format!(
                        "cannot read root key file {}: {e}",
                        path.display()
                    ))
                })?;
                RootKey::from_private_hex(text.trim())?
            }
            // A node upgraded from a single-node data dir keeps its key.
            None => RootKey::load_or_create(&core.config.data_dir.join(ROOT_KEY_FILE))?,
        };
        let cmd = Command::SetMeta {
            name: META_ROOT_KEY.into(),
            value: key.to_private_hex().into_bytes(),
            only_if_absent: true,
        };
        core.raft.propose(cmd.encode()).await?;
        tracing::info!("cluster root key replicated");
    }
    let mut known: Vec<(u64, String)> = core.config.parsed_peers().unwrap_or_default();
    if let Some(me) = core.config.advertise_address() {
        if !known.iter().any(|(id, _)| *id == core.config.node_id) {
            known.push((core.config.node_id, me));
        }
    }
    for (id, addr) in known {
        let member = status.voters.contains(&id) || status.learners.contains(&id);
        if member && core.store.cluster_meta(&member_meta_name(id))?.is_none() {
            let cmd = Command::SetMeta {
                name: member_meta_name(id),
                value: addr.into_bytes(),
                only_if_absent: true,
            };
            core.raft.propose(cmd.encode()).await?;
        }
    }
    // Mark every member that has acknowledged Raft traffic (a match index
    // above 0, this leader included): from now on its data dir holds votes
    // and entries, and a blank node under its id must not bootstrap again
    // (`crate::identity`). A member that never answered is not marked, so
    // a `peers` member that starts after the others formed the cluster
    // still bootstraps into it.
    for (id, matched) in &status.progress {
        let member = status.voters.contains(id) || status.learners.contains(id);
        if *matched > 0 && member && core.store.cluster_meta(&started_meta_name(*id))?.is_none() {
            let cmd = Command::SetMeta {
                name: started_meta_name(*id),
                value: status.term.to_string().into_bytes(),
                only_if_absent: true,
            };
            core.raft.propose(cmd.encode()).await?;
        }
    }
    Ok(())
}

/// For `join`: ask the cluster to add this node as a learner, then to
/// promote it once it has caught up. Retries with backoff until done.
async fn join_task(core: Arc<Core>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(seed) = core.config.join_address() else {
        return;
    };
    let id = core.config.node_id;
    let Some(me) = core.config.advertise_address() else {
        tracing::error!("cannot join: no advertise or listen address");
        return;
    };
    let mut delay = CLUSTER_POLL;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
        let status = core.raft.status();
        if status.voters.contains(&id) {
            tracing::info!(node = id, "joined the cluster as a voter");
            return;
        }
        let token = match join_token(&core) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot join without a token: set join_token or root_key_file");
                delay = Duration::from_secs(5);
                continue;
            }
        };
        let address = Some(status.leader_id)
            .filter(|l| *l != 0)
            .and_then(|l| core.leader_address(l))
            .unwrap_or_else(|| seed.clone());
        let result = if status.learners.contains(&id) {
            call_leader(&core.channels, &address, &token, |mut c, auth| async move {
                let mut req = tonic::Request::new(pb::MemberRequest { id });
                req.metadata_mut().insert("authorization", auth);
                c.promote_member(req).await
            })
            .await
        } else {
            let me = me.clone();
            call_leader(&core.channels, &address, &token, |mut c, auth| {
                let me = me.clone();
                async move {
                    let mut req = tonic::Request::new(pb::AddMemberRequest {
                        id,
                        address: me,
                        ..Default::default()
                    });
                    req.metadata_mut().insert("authorization", auth);
                    c.add_member(req).await
                }
            })
            .await
        };
        match result {
            Ok(_) => delay = CLUSTER_POLL,
            Err(RuntimeError::FailedPrecondition(msg)) => {
                tracing::info!(node = id, "waiting to be promoted: {msg}");
                delay = Duration::from_millis(500);
            }
            Err(e) => {
                tracing::warn!(node = id, error = %e, "join attempt failed; retrying");
                // Joining is rare and cheap to retry; a long backoff only
                // delays a node that is about to succeed.
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}

fn join_token(core: &Core) -> Result<String, RuntimeError> {
    join_token_for(&core.config)
}

fn join_token_for(config: &NodeConfig) -> Result<String, RuntimeError> {
    if let Some(t) = &config.join_token {
        return Ok(t.trim().to_string());
    }
    if let Some(path) = &config.root_key_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            RuntimeError::InvalidArgument(format!(
                "cannot read root key file {}: {e}",
                path.display()
            ))
        })?;
        let key = RootKey::from_private_hex(text.trim())?;
        let grant = Grant {
            skill: system_methods::SYSTEM_SKILL.into(),
            instance: "cluster".into(),
            methods: vec![],
            read_only: false,
        };
        return Ok(key.mint(&format!("node-{}", config.node_id), &[grant], None)?);
    }
    Err(RuntimeError::InvalidArgument("no join token".into()))
}

async fn run_node(
    config: NodeConfig,
    skills: HashMap<String, Arc<dyn DynSkill>>,
    clock: Arc<dyn PhysicalClock>,
    ready: std::sync::mpsc::Sender<Result<Started, RuntimeError>>,
    stop: oneshot::Receiver<()>,
) {
    let drain = Duration::from_millis(config.drain_timeout_ms);
    let core = match open_core(config, skills, clock).await {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    // The settled configuration (`identity::resolve`): the id this data dir
    // belongs to, and a bootstrap member admitted to an existing cluster
    // now joins it.
    let config = core.config.clone();
    let (servers_stop_tx, servers_stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(bootstrap_task(core.clone(), servers_stop_rx.clone()));
    if core.transport.is_some() {
        tokio::spawn(clock_task(core.clone(), servers_stop_rx.clone()));
        tokio::spawn(crate::repair::repair_task(
            core.clone(),
            servers_stop_rx.clone(),
        ));
    } else {
        let core = core.clone();
        let stop = servers_stop_rx.clone();
        tokio::spawn(async move { crate::repair::scrub(&core, false, stop).await });
    }
    if config.join_address().is_some() {
        tokio::spawn(join_task(core.clone(), servers_stop_rx.clone()));
    }
    if core.transport.is_none() {
        // A single node elects itself at once; wait (bounded) for its root
        // key and its leadership, so that `root_token()` and linearizable
        // reads work as soon as start returns (on a restart the key is
        // already there, but the election still takes a Ready or two).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while (core.keys.guard().is_none() || core.raft.status().role != Role::Leader)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if core.keys.guard().is_none() {
            let _ = ready.send(Err(RuntimeError::unavailable(
                "root key was not committed within 10 s",
            )));
            core.raft.stop().await;
            return;
        }
    }
    let mut tasks = Vec::new();
    let mut grpc_addr = None;
    let mut http_addr = None;
    if let Some(addr) = config.listen {
        match crate::grpc::serve(core.clone(), addr, servers_stop_rx.clone()).await {
            Ok((bound, task)) => {
                grpc_addr = Some(bound);
                tasks.push(task);
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                core.raft.stop().await;
                return;
            }
        }
    }
    if let Some(addr) = config.http_listen {
        match crate::http::serve(core.clone(), addr, servers_stop_rx.clone()).await {
            Ok((bound, task)) => {
                http_addr = Some(bound);
                tasks.push(task);
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                core.raft.stop().await;
                return;
            }
        }
    }
    tracing::info!(node = config.node_id, data_dir = %config.data_dir.display(), grpc = ?grpc_addr, http = ?http_addr, "node started");
    if ready
        .send(Ok(Started {
            core: core.clone(),
            grpc_addr,
            http_addr,
        }))
        .is_err()
    {
        return;
    }
    let _ = stop.await;
    hand_off_before_stop(&core).await;
    tracing::info!(
        node = config.node_id,
        "shutting down: draining in-flight calls"
    );
    let _ = servers_stop_tx.send(true);
    for task in tasks {
        if tokio::time::timeout(drain, task).await.is_err() {
            tracing::warn!("drain deadline passed; closing remaining connections");
        }
    }
    core.instances.clear();
    core.raft.stop().await;
    if let Err(e) = core.audit.flush().await {
        tracing::warn!(error = %e, "audit records still queued at shutdown");
    }
    if let Err(e) = core.store.sync() {
        tracing::error!(error = %e, "final sync failed");
    }
    tracing::info!(node = config.node_id, "node stopped");
}

/// Set once per process by `synapse serve --debug-unsafe-stale-reads`.
static DEBUG_UNSAFE_STALE_READS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// VERIFICATION ONLY, never in production: from now on every node in this
/// process serves skill reads from its own possibly stale view (followers
/// stop forwarding reads, nobody waits for a ReadIndex barrier). It exists
/// so that the container fault matrix can show that its linearizability
/// checker catches stale reads; the binary allows it only with
/// `SYNAPSE_DEBUG_UNSAFE=1` set as well. Process-wide rather than a config
/// field so that no configuration file can switch it on.
pub fn enable_debug_unsafe_stale_reads() {
    DEBUG_UNSAFE_STALE_READS.store(true, Ordering::Relaxed);
    tracing::warn!("DEBUG UNSAFE: stale reads enabled; reads are NOT linearizable");
}

fn debug_unsafe_stale_reads() -> bool {
    DEBUG_UNSAFE_STALE_READS.load(Ordering::Relaxed)
}
