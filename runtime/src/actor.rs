//! Skill instances as actix actors, and the bounded table that activates
//! and passivates them.
//!
//! An instance actor holds the *speculative* head of its chain: the state
//! after every write it has proposed, committed or not. That lets it pipeline
//! the next message without waiting for the previous commit, while each
//! reply still waits for its own commit. Every proposal names its parent
//! hash; the state machine rejects one whose parent is not the committed
//! head, so a failed speculation can never be applied, only retried.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use serde_json::Value;
use synapse_consensus::RaftHandle;
use synapse_storage::{Checkpoint, Hash, Store, Timestamp, ZERO_HASH};
use tokio::sync::oneshot;

use crate::clock::Hlc;
use crate::command::{ApplyOutcome, Command};
use crate::config::NodeConfig;
use crate::error::RuntimeError;
use crate::metrics::{Metrics, StageTimer};
use crate::skill::{AnyState, DynSkill, MethodKind};

/// `skill/instance`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId {
    pub skill: String,
    pub instance: String,
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.skill, self.instance)
    }
}

/// What a successful Invoke or Rollback returns.
#[derive(Debug, Clone, PartialEq)]
pub struct InvokeResult {
    pub reply: Value,
    pub version: u64,
    pub timestamp: Timestamp,
    pub hash: Hash,
    pub deduplicated: bool,
    pub request_id: String,
}

/// Node services an actor uses. Shared, `Send + Sync`.
pub(crate) struct ActorEnv {
    pub store: Store,
    pub raft: RaftHandle<ApplyOutcome>,
    pub hlc: Arc<Hlc>,
    pub config: NodeConfig,
    pub metrics: Arc<Metrics>,
    /// Where damaged checkpoints are reported for repair from peers.
    pub repair: crate::repair::RepairQueue,
}

pub(crate) enum Op {
    Call {
        method: String,
        kind: MethodKind,
        payload: Value,
    },
    Rollback {
        to_version: u64,
    },
}

/// One request for an instance. The reply travels on the oneshot so that the
/// caller can use the bounded `try_send` (a full mailbox is answered at once
/// with RESOURCE_EXHAUSTED) and still get a result.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Execute {
    pub op: Op,
    pub request_id: String,
    pub expected_version: Option<u64>,
    /// The caller's capability expiry and revocation ids, for apply.
    pub fence: Arc<crate::guard::Fence>,
    pub reply: oneshot::Sender<Result<InvokeResult, RuntimeError>>,
    /// When the caller sent it, for the mailbox stage's timing.
    pub sent_at: Instant,
}

/// Stop now (eviction, leadership loss, snapshot install).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Passivate;

struct Head {
    version: u64,
    hash: Hash,
    timestamp: Timestamp,
    state: AnyState,
}

pub(crate) struct InstanceActor {
    id: InstanceId,
    /// Shared with the table's `Mailbox`: messages queued, not yet taken.
    queued: Arc<AtomicUsize>,
    generation: u64,
    skill: Arc<dyn DynSkill>,
    env: Arc<ActorEnv>,
    table: Arc<InstanceTable>,
    /// Speculative head; `None` until loaded from the latest verified checkpoint.
    head: Option<Head>,
    /// Proposals not yet answered by the state machine.
    in_flight: u64,
    /// Bumped whenever the head is reloaded; outcomes of proposals built on an
    /// older epoch do not trigger another reload.
    epoch: u64,
    last_active: Instant,
}

impl Actor for InstanceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.env.config.mailbox_capacity);
        let idle = self.env.config.idle_timeout();
        // Check a few times per idle period; cheap, and bounds how long an
        // idle actor outlives its timeout.
        let every = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
        ctx.run_interval(every, move |act, ctx| {
            if act.in_flight == 0 && act.last_active.elapsed() >= idle {
                act.table.remove_if(&act.id, act.generation);
                ctx.stop();
            }
        });
        self.env
            .metrics
            .active_instances
            .fetch_add(1, Ordering::Relaxed);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.env
            .metrics
            .active_instances
            .fetch_sub(1, Ordering::Relaxed);
        self.table.remove_if(&self.id, self.generation);
    }
}

impl InstanceActor {
    fn load(&mut self) -> Result<&mut Head, RuntimeError> {
        if self.head.is_none() {
            let latest = self
                .env
                .store
                .latest(&self.id.skill, &self.id.instance)
                .inspect_err(|e| {
                    if e.is_corrupt() {
                        self.env.repair.report(&self.id.skill, &self.id.instance);
                    }
                });
            let loaded = match latest? {
                Some(cp) => Head {
                    version: cp.version,
                    hash: cp.hash,
                    timestamp: cp.timestamp,
                    state: self.skill.decode_state(&cp.state).map_err(|e| {
                        RuntimeError::DataLoss(format!(
                            "{}: stored state does not decode: {e}",
                            self.id
                        ))
                    })?,
                },
                None => Head {
                    version: 0,
                    hash: ZERO_HASH,
                    timestamp: Timestamp::default(),
                    state: self.skill.initial_state(),
                },
            };
            self.epoch += 1;
            self.head = Some(loaded);
        }
        self.head
            .as_mut()
            .ok_or_else(|| RuntimeError::Internal("head vanished after load".into()))
    }

    /// Committed state for a read: the speculative head equals the committed
    /// one when nothing is in flight; otherwise read the store.
    fn committed_view(&mut self) -> Result<(u64, Hash, Timestamp, AnyState), RuntimeError> {
        if self.in_flight == 0 {
            let skill = self.skill.clone();
            let h = self.load()?;
            return Ok((h.version, h.hash, h.timestamp, skill.clone_state(&h.state)));
        }
        match self.env.store.latest(&self.id.skill, &self.id.instance)? {
            Some(cp) => {
                let state = self.skill.decode_state(&cp.state).map_err(|e| {
                    RuntimeError::DataLoss(format!(
                        "{}: stored state does not decode: {e}",
                        self.id
                    ))
                })?;
                Ok((cp.version, cp.hash, cp.timestamp, state))
            }
            None => Ok((
                0,
                ZERO_HASH,
                Timestamp::default(),
                self.skill.initial_state(),
            )),
        }
    }

    /// Runs the handler on a clone of `state`, containing panics and timing
    /// the call against the deadline.
    fn run_handler(
        &self,
        state: &AnyState,
        method: &str,
        payload: &Value,
    ) -> Result<(AnyState, Value), RuntimeError> {
        let mut next = self.skill.clone_state(state);
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.skill.call(&mut next, method, payload)
        }));
        let elapsed = started.elapsed();
        let reply = match outcome {
            Ok(result) => result?,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".into());
                self.env
                    .metrics
                    .handler_panics
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(instance = %self.id, method, panic = %what, "handler panicked; state unchanged");
                return Err(RuntimeError::Internal(format!(
                    "handler `{method}` panicked: {what}"
                )));
            }
        };
        if elapsed > self.env.config.handler_deadline() {
            self.env
                .metrics
                .handler_deadline_overruns
                .fetch_add(1, Ordering::Relaxed);
            return Err(RuntimeError::DeadlineExceeded(format!(
                "handler `{method}` ran {elapsed:?}, over the {:?} deadline; state unchanged",
                self.env.config.handler_deadline()
            )));
        }
        Ok((next, reply))
    }

    /// With nothing in flight the cached head must equal the stored one.
    /// Re-reading it (hash verified) before serving means a checkpoint
    /// damaged on disk is reported as DATA_LOSS instead of being served
    /// from memory, and a head changed underneath (snapshot install) is
    /// reloaded.
    fn check_stored_head(&mut self) -> Result<(), RuntimeError> {
        if self.in_flight != 0 {
            return Ok(());
        }
        let Some(head) = &self.head else {
            return Ok(());
        };
        match self.env.store.latest(&self.id.skill, &self.id.instance) {
            Ok(Some(cp)) if cp.version == head.version && cp.hash == head.hash => Ok(()),
            Ok(None) if head.version == 0 => Ok(()),
            Ok(_) => {
                self.head = None;
                Ok(())
            }
            Err(e) => {
                self.head = None;
                self.env.metrics.data_loss.fetch_add(1, Ordering::Relaxed);
                if e.is_corrupt() {
                    self.env.repair.report(&self.id.skill, &self.id.instance);
                }
                tracing::error!(instance = %self.id, error = %e, "stored head fails verification; not serving");
                Err(e.into())
            }
        }
    }

    fn execute(&mut self, msg: Execute, ctx: &mut Context<Self>) {
        let started = Instant::now();
        self.last_active = started;
        let stage_metrics = self.env.metrics.clone();
        let stages = &stage_metrics.stages;
        stages
            .mailbox
            .observe(started.saturating_duration_since(msg.sent_at));
        // Until the write is proposed, or the read answered; any early
        // return (a refusal, a handler error) ends it too.
        let handler = StageTimer::start(&stages.handler);
        if let Err(e) = self.check_stored_head() {
            let _ = msg.reply.send(Err(e));
            return;
        }
        let Execute {
            op,
            request_id,
            expected_version,
            fence,
            reply,
            sent_at: _,
        } = msg;
        let span = tracing::debug_span!("execute", instance = %self.id, request_id = %request_id);
        let _enter = span.enter();

        // Reads: committed state only, no checkpoint.
        if let Op::Call {
            kind: MethodKind::Read,
            method,
            payload,
        } = &op
        {
            let result = self
                .committed_view()
                .and_then(|(version, hash, timestamp, state)| {
                    if let Some(v) = expected_version {
                        if v != version {
                            return Err(RuntimeError::FailedPrecondition(format!(
                                "expected version {v}, instance is at {version}"
                            )));
                        }
                    }
                    let (_, value) = self.run_handler(&state, method, payload)?;
                    Ok(InvokeResult {
                        reply: value,
                        version,
                        timestamp,
                        hash,
                        deduplicated: false,
                        request_id,
                    })
                });
            drop(handler);
            let _ = reply.send(result);
            return;
        }

        let prepared = self.prepare_write(op, expected_version);
        let (next_state, value, state_bytes) = match prepared {
            Ok(p) => p,
            Err(e) => {
                drop(handler);
                let _ = reply.send(Err(e));
                return;
            }
        };
        // A write sent without a request id is named here. Nobody can retry
        // with that name, so the entry says so and no dedup record is kept.
        let (request_id, server_named) = if request_id.is_empty() {
            (fresh_request_id(), true)
        } else {
            (request_id, false)
        };
        let skill_name = self.id.skill.clone();
        let instance = self.id.instance.clone();
        let head = match self.head.as_mut() {
            Some(h) => h,
            None => {
                let _ = reply.send(Err(RuntimeError::Internal("head not loaded".into())));
                return;
            }
        };
        let mut timestamp = self.env.hlc.now();
        if timestamp <= head.timestamp {
            // The clock has observed every applied entry, so this only
            // happens with a stored head from the future; never go backwards.
            self.env.hlc.observe(head.timestamp);
            timestamp = self.env.hlc.now();
        }
        if timestamp <= head.timestamp {
            // Only a head stamped at the clock's very end (a replicated entry
            // from a faulty or hostile leader) gets here: the clock saturates
            // below it. Refuse the write rather than stop the actor.
            tracing::error!(instance = %self.id, head = ?head.timestamp, "no timestamp after the stored head's; write refused");
            let _ = reply.send(Err(RuntimeError::Internal(
                "the hybrid clock cannot pass the instance's stored timestamp".into(),
            )));
            return;
        }
        let reply_bytes = match serde_json::to_vec(&value) {
            Ok(b) => b,
            Err(e) => {
                let _ = reply.send(Err(RuntimeError::Internal(format!(
                    "reply does not encode: {e}"
                ))));
                return;
            }
        };
        let checkpoint = Checkpoint::seal(
            skill_name,
            instance,
            head.version + 1,
            head.hash,
            state_bytes,
            timestamp,
            request_id.clone(),
        );
        head.version = checkpoint.version;
        head.hash = checkpoint.hash;
        head.timestamp = checkpoint.timestamp;
        head.state = next_state;
        let expected = (checkpoint.version, checkpoint.hash);
        let command = Command::Checkpoint {
            checkpoint,
            reply: reply_bytes,
            fence: (*fence).clone(),
            server_named,
        }
        .encode();

        self.in_flight += 1;
        let epoch = self.epoch;
        let raft = self.env.raft.clone();
        let metrics = self.env.metrics.clone();
        metrics.proposals.fetch_add(1, Ordering::Relaxed);
        let proposed = handler.finish();
        let fut = async move { raft.propose(command).await };
        ctx.spawn(fut.into_actor(self).map(move |outcome, act, _ctx| {
            metrics.stages.commit.observe(proposed.elapsed());
            act.in_flight -= 1;
            let result = match outcome {
                Ok(ApplyOutcome::Applied {
                    version,
                    hash,
                    timestamp,
                }) if (version, hash) == expected => Ok(InvokeResult {
                    reply: value,
                    version,
                    timestamp,
                    hash,
                    deduplicated: false,
                    request_id,
                }),
                Ok(ApplyOutcome::Duplicate(record)) => {
                    act.reload_after_failure(epoch);
                    decode_recorded(record, request_id)
                }
                Ok(ApplyOutcome::Rejected(reason)) => {
                    act.reload_after_failure(epoch);
                    Err(RuntimeError::Aborted(reason))
                }
                Ok(ApplyOutcome::Fenced(reason)) => {
                    act.reload_after_failure(epoch);
                    Err(RuntimeError::PermissionDenied(reason))
                }
                Ok(other) => {
                    act.reload_after_failure(epoch);
                    Err(RuntimeError::Internal(format!(
                        "unexpected apply outcome {other:?}"
                    )))
                }
                Err(e) => {
                    act.reload_after_failure(epoch);
                    Err(e.into())
                }
            };
            let _ = reply.send(result);
        }));
    }

    /// Runs a write (or builds a rollback) on a clone of the speculative head.
    fn prepare_write(
        &mut self,
        op: Op,
        expected_version: Option<u64>,
    ) -> Result<(AnyState, Value, Vec<u8>), RuntimeError> {
        let max_state = self.env.config.max_state_bytes;
        let id = self.id.clone();
        let skill = self.skill.clone();
        let store = self.env.store.clone();
        let head_version = self.load()?.version;
        if let Some(v) = expected_version {
            if v != head_version {
                return Err(RuntimeError::FailedPrecondition(format!(
                    "expected version {v}, instance is at {head_version}"
                )));
            }
        }
        let (next, value) = match op {
            Op::Call {
                method, payload, ..
            } => {
                let head = self.load()?;
                let state = skill.clone_state(&head.state);
                self.run_handler(&state, &method, &payload)?
            }
            Op::Rollback { to_version } => {
                let target = store
                    .get(&id.skill, &id.instance, to_version)?
                    .ok_or_else(|| {
                        RuntimeError::NotFound(format!("{id} has no retained version {to_version}"))
                    })?;
                let state = skill.decode_state(&target.state).map_err(|e| {
                    RuntimeError::DataLoss(format!("{id} v{to_version} does not decode: {e}"))
                })?;
                let value = serde_json::json!({ "rolled_back_to": to_version });
                (state, value)
            }
        };
        let bytes = skill.encode_state(&next)?;
        if bytes.len() > max_state {
            return Err(RuntimeError::ResourceExhausted(format!(
                "new state of {id} is {} bytes, over the {max_state}-byte limit",
                bytes.len()
            )));
        }
        Ok((next, value, bytes))
    }

    fn reload_after_failure(&mut self, epoch: u64) {
        if epoch == self.epoch {
            self.head = None;
        }
    }
}

/// A server-generated request id (see `Command::Checkpoint::server_named`).
fn fresh_request_id() -> String {
    format!("auto-{:032x}", rand::random::<u128>())
}

fn decode_recorded(
    record: synapse_storage::RequestRecord,
    request_id: String,
) -> Result<InvokeResult, RuntimeError> {
    let reply = serde_json::from_slice(&record.reply)
        .map_err(|e| RuntimeError::DataLoss(format!("recorded reply does not decode: {e}")))?;
    Ok(InvokeResult {
        reply,
        version: record.version,
        timestamp: record.timestamp,
        hash: record.hash,
        deduplicated: true,
        request_id,
    })
}

impl Handler<Execute> for InstanceActor {
    type Result = ();

    fn handle(&mut self, msg: Execute, ctx: &mut Self::Context) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
        self.execute(msg, ctx);
    }
}

impl Handler<Passivate> for InstanceActor {
    type Result = ();

    fn handle(&mut self, _msg: Passivate, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

struct Slot {
    mailbox: Mailbox,
    generation: u64,
    stamp: u64,
}

/// An actor's address plus the count of messages queued for it.
///
/// actix's bounded mailbox does not bound `try_send` across `Addr` clones
/// (each clone may always queue one message), so the runtime keeps its own
/// count: incremented before queuing, decremented when the actor takes the
/// message. That count is what `mailbox_capacity` bounds.
#[derive(Clone)]
pub(crate) struct Mailbox {
    pub addr: Addr<InstanceActor>,
    pub queued: Arc<AtomicUsize>,
}

#[derive(Default)]
struct TableInner {
    slots: HashMap<InstanceId, Slot>,
    /// stamp → id, oldest first: the passivation order.
    lru: BTreeMap<u64, InstanceId>,
    next_stamp: u64,
}

/// Active instance actors, bounded by `capacity`.
pub(crate) struct InstanceTable {
    inner: Mutex<TableInner>,
    capacity: usize,
    arbiter: ArbiterHandle,
    /// Term in which this node, as leader, has applied an entry of its own:
    /// only then does its store hold every committed checkpoint, so only then
    /// may actors load heads from it.
    caught_up_term: AtomicU64,
}

impl InstanceTable {
    pub fn new(capacity: usize, arbiter: ArbiterHandle) -> Self {
        InstanceTable {
            inner: Mutex::new(TableInner::default()),
            capacity,
            arbiter,
            caught_up_term: AtomicU64::new(0),
        }
    }

    pub fn caught_up_term(&self) -> u64 {
        self.caught_up_term.load(Ordering::Acquire)
    }

    pub fn set_caught_up_term(&self, term: u64) {
        self.caught_up_term.store(term, Ordering::Release);
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|t| t.slots.len()).unwrap_or(0)
    }

    /// The actor for `id`, started on the node's arbiter if not active.
    pub fn get_or_activate(
        self: &Arc<Self>,
        id: &InstanceId,
        skill: &Arc<dyn DynSkill>,
        env: &Arc<ActorEnv>,
    ) -> Result<Mailbox, RuntimeError> {
        let mut t = self
            .inner
            .lock()
            .map_err(|_| RuntimeError::Internal("instance table poisoned".into()))?;
        t.next_stamp += 1;
        let stamp = t.next_stamp;
        if let Some(slot) = t.slots.get_mut(id) {
            if slot.mailbox.addr.connected() {
                let old = std::mem::replace(&mut slot.stamp, stamp);
                let mailbox = slot.mailbox.clone();
                t.lru.remove(&old);
                t.lru.insert(stamp, id.clone());
                return Ok(mailbox);
            }
        }
        if let Some(old) = t.slots.remove(id) {
            t.lru.remove(&old.stamp);
        }
        while t.slots.len() >= self.capacity {
            let Some((_, victim)) = t.lru.pop_first() else {
                break;
            };
            if let Some(slot) = t.slots.remove(&victim) {
                // A busy victim refuses; it stops on its own once idle.
                let _ = slot.mailbox.addr.try_send(Passivate);
            }
        }
        let queued = Arc::new(AtomicUsize::new(0));
        let actor = InstanceActor {
            queued: queued.clone(),
            id: id.clone(),
            generation: stamp,
            skill: skill.clone(),
            env: env.clone(),
            table: self.clone(),
            head: None,
            in_flight: 0,
            epoch: 0,
            last_active: Instant::now(),
        };
        let addr = InstanceActor::start_in_arbiter(&self.arbiter, move |_ctx| actor);
        let mailbox = Mailbox { addr, queued };
        t.slots.insert(
            id.clone(),
            Slot {
                mailbox: mailbox.clone(),
                generation: stamp,
                stamp,
            },
        );
        t.lru.insert(stamp, id.clone());
        Ok(mailbox)
    }

    pub fn remove_if(&self, id: &InstanceId, generation: u64) {
        if let Ok(mut t) = self.inner.lock() {
            if t.slots.get(id).is_some_and(|s| s.generation == generation) {
                if let Some(slot) = t.slots.remove(id) {
                    t.lru.remove(&slot.stamp);
                }
            }
        }
    }

    /// Passivates every actor (leadership change, snapshot install, shutdown).
    pub fn clear(&self) {
        if let Ok(mut t) = self.inner.lock() {
            t.lru.clear();
            for (_, slot) in t.slots.drain() {
                let _ = slot.mailbox.addr.try_send(Passivate);
            }
        }
    }
}
