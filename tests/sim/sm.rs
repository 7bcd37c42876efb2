//! The simulation's state machine: a simplified copy of the runtime's
//! `NodeStateMachine` (checkpoints only, no metadata or request ids). It
//! validates version, parent hash and timestamp against the instance's head,
//! writes sealed checkpoints and the applied index in one `commit_apply`, and
//! records every applied entry in the cluster-wide [`Ledger`] so the harness
//! can check log matching across nodes and across restarts.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash as _, Hasher as _};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use synapse_consensus::eraftpb::Snapshot;
use synapse_consensus::{ApplyContext, Committed, ConsensusError, StateMachine};
use synapse_storage::{ApplyBatch, Checkpoint, Hash, Store, Timestamp, ZERO_HASH};

/// The only skill the simulation writes.
pub const SKILL: &str = "sim";

/// What applying one entry produced; the proposer's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimOutcome {
    /// The checkpoint is the instance's new head. `index` is 0 when the
    /// outcome was produced speculatively (the broken variant).
    Applied {
        index: u64,
        version: u64,
        hash: Hash,
    },
    /// Stale parent, wrong version or non-increasing timestamp.
    Rejected(String),
    /// Leader no-op or membership entry.
    Noop,
}

/// Cluster-wide record of what was applied, shared by every node's state
/// machine (and by each incarnation of a node across restarts).
#[derive(Default)]
pub struct Ledger {
    /// index -> (entry term, digest of the data, node that applied it first).
    pub entries: BTreeMap<u64, (u64, u64, u64)>,
    /// node -> last index its state machine reached (entries or snapshot).
    pub applied: HashMap<u64, u64>,
    /// node -> the term in which, as leader, it applied an entry of its own
    /// term (only then does it know every committed entry: the runtime's
    /// `caught_up_term`).
    pub caught_up: HashMap<u64, u64>,
    pub violations: Vec<String>,
    pub snapshots_installed: u64,
    /// node -> snapshots it restored (its state was replaced wholesale).
    pub restores: HashMap<u64, u64>,
    pub entries_applied: u64,
    /// (instance, version) -> the hash of the checkpoint applied there, by
    /// any node: what an acknowledged write is checked against once a small
    /// ring has dropped it from a node's store.
    pub versions: HashMap<(String, u64), Hash>,
    pub checkpoints_applied: u64,
    pub rejected: u64,
}

pub fn lock(ledger: &Mutex<Ledger>) -> MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(PoisonError::into_inner)
}

fn digest(data: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

pub struct SimSm {
    node: u64,
    store: Store,
    ledger: Arc<Mutex<Ledger>>,
}

impl SimSm {
    pub fn new(
        node: u64,
        store: Store,
        ledger: Arc<Mutex<Ledger>>,
    ) -> Result<Self, ConsensusError> {
        // A brand-new log starts behind the bootstrap snapshot at index 1
        // (membership only, no state): the first entry applied is 2.
        let applied = store.applied_index()?.max(1);
        lock(&ledger).applied.insert(node, applied);
        Ok(SimSm {
            node,
            store,
            ledger,
        })
    }

    fn record(&self, entries: &[Committed<'_>]) {
        let mut l = lock(&self.ledger);
        let node = self.node;
        let mut prev = l.applied.get(&node).copied().unwrap_or(0);
        for e in entries {
            if e.index != prev + 1 {
                l.violations.push(format!(
                    "node {node} applied index {} right after {prev} (gap or replay)",
                    e.index
                ));
            }
            prev = e.index;
            let d = digest(e.data);
            match l.entries.get(&e.index) {
                Some(&(term, dg, first)) if (term, dg) != (e.term, d) => {
                    l.violations.push(format!(
                        "log matching: node {node} applied index {} term {} digest {d:016x}, \
                         but node {first} applied term {term} digest {dg:016x} there",
                        e.index, e.term
                    ));
                }
                Some(_) => {}
                None => {
                    l.entries.insert(e.index, (e.term, d, node));
                }
            }
        }
        l.applied.insert(node, prev);
        l.entries_applied += entries.len() as u64;
    }
}

#[derive(Clone, Copy)]
struct Head {
    version: u64,
    hash: Hash,
    timestamp: Timestamp,
}

impl StateMachine for SimSm {
    type Output = SimOutcome;

    fn apply(
        &mut self,
        ctx: ApplyContext,
        entries: &[Committed<'_>],
    ) -> Result<Vec<SimOutcome>, ConsensusError> {
        self.record(entries);
        if ctx.is_leader && entries.iter().any(|e| e.term == ctx.term) {
            lock(&self.ledger).caught_up.insert(self.node, ctx.term);
        }
        let mut batch = ApplyBatch::default();
        let mut heads: HashMap<String, Head> = HashMap::new();
        let mut out = Vec::with_capacity(entries.len());
        let (mut applied, mut rejected) = (0u64, 0u64);
        let mut written: Vec<(String, u64, Hash)> = Vec::new();
        for e in entries {
            if e.data.is_empty() {
                out.push(SimOutcome::Noop);
                continue;
            }
            let cp = match Checkpoint::decode(e.data) {
                Ok(cp) if cp.skill == SKILL => cp,
                Ok(cp) => {
                    rejected += 1;
                    out.push(SimOutcome::Rejected(format!("unknown skill {}", cp.skill)));
                    continue;
                }
                Err(err) => {
                    rejected += 1;
                    out.push(SimOutcome::Rejected(format!("undecodable: {err}")));
                    continue;
                }
            };
            let head = match heads.get(&cp.instance) {
                Some(h) => Some(*h),
                None => self.store.latest(SKILL, &cp.instance)?.map(|c| Head {
                    version: c.version,
                    hash: c.hash,
                    timestamp: c.timestamp,
                }),
            };
            let (want_version, want_parent) =
                head.map_or((1, ZERO_HASH), |h| (h.version + 1, h.hash));
            if cp.version != want_version || cp.parent_hash != want_parent {
                rejected += 1;
                out.push(SimOutcome::Rejected(format!(
                    "v{} does not extend the head (expected v{want_version})",
                    cp.version
                )));
                continue;
            }
            if head.is_some_and(|h| cp.timestamp <= h.timestamp) {
                rejected += 1;
                out.push(SimOutcome::Rejected("timestamp does not increase".into()));
                continue;
            }
            batch.put_checkpoint(&cp, &[]);
            batch.observe_timestamp(cp.timestamp);
            heads.insert(
                cp.instance.clone(),
                Head {
                    version: cp.version,
                    hash: cp.hash,
                    timestamp: cp.timestamp,
                },
            );
            applied += 1;
            written.push((cp.instance.clone(), cp.version, cp.hash));
            out.push(SimOutcome::Applied {
                index: e.index,
                version: cp.version,
                hash: cp.hash,
            });
        }
        if let Some(last) = entries.last() {
            batch.set_applied(last.index);
        }
        self.store.commit_apply(batch)?;
        let mut l = lock(&self.ledger);
        for (instance, version, hash) in written {
            match l.versions.get(&(instance.clone(), version)) {
                Some(first) if *first != hash => {
                    let msg = format!(
                        "node {} applied {SKILL}/{instance} v{version} with a hash other than \
                         the one applied there before",
                        self.node
                    );
                    l.violations.push(msg);
                }
                Some(_) => {}
                None => {
                    l.versions.insert((instance, version), hash);
                }
            }
        }
        l.checkpoints_applied += applied;
        l.rejected += rejected;
        Ok(out)
    }

    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), ConsensusError> {
        self.store.restore_state(snapshot.get_data())?;
        let index = snapshot.get_metadata().index;
        let mut l = lock(&self.ledger);
        let before = l.applied.get(&self.node).copied().unwrap_or(0);
        if index < before {
            l.violations.push(format!(
                "node {} restored a snapshot at {index} behind its applied index {before}",
                self.node
            ));
        }
        l.applied.insert(self.node, index);
        l.snapshots_installed += 1;
        *l.restores.entry(self.node).or_default() += 1;
        Ok(())
    }

    /// The broken variant acknowledges what the checkpoint *would* produce.
    fn speculative_output(&self, data: &[u8]) -> Option<SimOutcome> {
        let cp = Checkpoint::decode(data).ok()?;
        Some(SimOutcome::Applied {
            index: 0,
            version: cp.version,
            hash: cp.hash,
        })
    }
}
