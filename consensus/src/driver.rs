//! The Ready loop around raft-rs's `RawNode`.
//!
//! One task owns the `RawNode`. Everything else talks to it through a bounded
//! event queue ([`RaftHandle`]). The loop is event-driven: it wakes on an
//! event or on the tick timer, drains whatever else is queued (that is the
//! group commit: every proposal queued while the previous fsync ran lands in
//! the next Ready), then processes Ready in the order raft-rs documents:
//!
//! 1. send leader messages (they may go out before the local persist);
//! 2. install an incoming snapshot;
//! 3. apply committed entries (already durable on a quorum);
//! 4. persist new entries and hard state, then one `RaftLog::sync` (the
//!    log segment's fdatasync) on the blocking pool, so the runtime thread
//!    keeps serving meanwhile;
//! 5. send the messages that must follow the persist (votes, append acks);
//! 6. advance, then handle the light ready the same way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType, Snapshot};
use raft::{RawNode, StateRole, Storage as _};
use synapse_storage::{RaftLog, Store};
use tokio::sync::{mpsc, oneshot};

use crate::timings::{ReadyBreakdown, ReadyTimings, SLOW_READY_LOG_INTERVAL};
use crate::{lease_duration, tracing_logger, ConsensusError, ReadLease, Transport};

/// One committed entry handed to the state machine.
#[derive(Debug)]
pub struct Committed<'a> {
    pub index: u64,
    pub term: u64,
    /// Empty for leader no-op entries and membership changes: they still
    /// advance the applied index.
    pub data: &'a [u8],
    /// Set for an applied membership change (its `context` carries what the
    /// proposer attached, such as the new member's address).
    pub conf_change: Option<&'a ConfChangeV2>,
}

/// What the state machine learns about the node while applying.
#[derive(Debug, Clone, Copy)]
pub struct ApplyContext {
    pub node_id: u64,
    pub is_leader: bool,
    pub term: u64,
}

/// The replicated state machine the runtime implements.
///
/// `apply` must be deterministic: every node applies the same entries in the
/// same order and must end with byte-identical state.
pub trait StateMachine: Send + 'static {
    /// Result of one entry, delivered to the proposer if it waits on this node.
    type Output: Send + 'static;

    /// Applies entries in log order and records the last index as applied,
    /// atomically with their effects. An `Err` is fatal: the driver stops
    /// rather than continue with a state it cannot vouch for.
    fn apply(
        &mut self,
        ctx: ApplyContext,
        entries: &[Committed<'_>],
    ) -> Result<Vec<Self::Output>, ConsensusError>;

    /// Replaces the whole state with a snapshot's data. Must verify the data
    /// before replacing anything.
    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), ConsensusError>;

    /// Called when this node's role or the term changes.
    fn on_role_change(&mut self, _role: Role, _term: u64, _leader_id: u64) {}

    /// Test-only fault injection (see `RaftConfig::unsafe_ack_on_propose`):
    /// the output a broken node would acknowledge before anything is durable.
    fn speculative_output(&self, _data: &[u8]) -> Option<Self::Output> {
        None
    }
}

/// Raft role, mirrored from raft-rs so that callers need not import it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    #[default]
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

impl From<StateRole> for Role {
    fn from(r: StateRole) -> Self {
        match r {
            StateRole::Follower => Role::Follower,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Candidate => Role::Candidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

/// Tuning and limits. Every limit is explicit so that memory stays bounded.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    pub id: u64,
    /// Voters for a brand-new cluster (ignored once the log is initialized).
    pub initial_voters: Vec<u64>,
    pub tick_interval: Duration,
    /// Election timeout = `election_tick * tick_interval`.
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    /// Bytes per append message; large enough to batch, small enough that a
    /// lost message costs little to resend.
    pub max_size_per_msg: u64,
    /// Append messages in flight per follower during optimistic replication.
    pub max_inflight_msgs: usize,
    /// Bytes of proposed but uncommitted entries before raft-rs drops
    /// proposals (we answer RESOURCE_EXHAUSTED): the bound on leader memory.
    pub max_uncommitted_size: u64,
    /// Bytes of committed entries handed to one apply call.
    pub max_committed_size_per_ready: u64,
    /// Capacity of the event queue into the driver.
    pub event_queue_capacity: usize,
    /// Proposals and reads waiting for their outcome on this node.
    pub max_waiters: usize,
    /// A read-index request that got no answer in this time fails (a
    /// follower's request to a leader that vanished is otherwise lost).
    pub read_timeout: Duration,
    /// Serve linearizable reads on a leader from its read lease
    /// ([`crate::lease`]) instead of a ReadIndex round each, while the
    /// lease holds. Off: every read pays the round.
    pub lease_reads: bool,
    /// How long a leader holds back telling followers of a new commit
    /// index when no append is going their way anyway. Zero: at once, in
    /// a message of its own per commit (raft-rs's default). Otherwise the
    /// commit rides on the next append (under steady load there is one
    /// within a Ready), or goes out alone after this delay; either way a
    /// follower applies at most this much later than with zero, and the
    /// 4 messages (2 appends, 2 acks with 2 followers) and the follower
    /// Readys a sequential writer otherwise pays per write are saved.
    /// Heartbeats carry the commit too, so more than a heartbeat interval
    /// changes nothing.
    pub commit_announce_delay: Duration,
    /// Compact the log once this many applied entries sit behind the first
    /// index, at most `MAX_COMPACT_PER_READY` entries per Ready.
    pub compact_threshold: u64,
    /// Entries always kept behind the applied index at compaction, so a
    /// slightly lagging follower catches up from the log instead of a
    /// snapshot.
    pub compact_keep: u64,
    /// Randomized election timeout range in ticks, `[min, max)`; 0 = raft-rs
    /// default (`election_tick`, `2 * election_tick`). The simulation pins it
    /// so that a seed replays exactly (raft-rs draws from a thread RNG).
    pub min_election_tick: usize,
    pub max_election_tick: usize,
    /// DELIBERATELY BROKEN, test-only: acknowledge proposals as soon as they
    /// are proposed, before they are persisted or committed. Exists so the
    /// simulation can prove it catches lost acknowledged writes.
    #[doc(hidden)]
    pub unsafe_ack_on_propose: bool,
}

impl RaftConfig {
    pub fn single_node(id: u64) -> Self {
        RaftConfig {
            id,
            initial_voters: vec![id],
            tick_interval: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 2,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            max_uncommitted_size: 64 * 1024 * 1024,
            max_committed_size_per_ready: 16 * 1024 * 1024,
            event_queue_capacity: 8192,
            max_waiters: 16384,
            read_timeout: Duration::from_secs(5),
            lease_reads: true,
            commit_announce_delay: DEFAULT_COMMIT_ANNOUNCE_DELAY,
            compact_threshold: 20_000,
            compact_keep: 5_000,
            min_election_tick: 0,
            max_election_tick: 0,
            unsafe_ack_on_propose: false,
        }
    }

    /// A member of a multi-node cluster; `voters` is the initial voter set
    /// for a brand-new cluster, empty for a node that joins an existing one.
    pub fn cluster_member(id: u64, voters: Vec<u64>) -> Self {
        RaftConfig {
            initial_voters: voters,
            ..RaftConfig::single_node(id)
        }
    }

    fn to_raft(&self, applied: u64) -> raft::Config {
        raft::Config {
            id: self.id,
            election_tick: self.election_tick,
            heartbeat_tick: self.heartbeat_tick,
            applied,
            max_size_per_msg: self.max_size_per_msg,
            max_inflight_msgs: self.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            read_only_option: raft::ReadOnlyOption::Safe,
            // raft-rs 0.7's `try_batching` can merge entries into an
            // already-queued MsgAppend whose base index no longer matches
            // (after a rejection lowers next_idx), so a follower acks past
            // the leader's log and the leader commits without a quorum. The
            // deterministic simulation found it (SIM_SEED=16). Group commit
            // per Ready already batches, so raft-level batching is off.
            batch_append: false,
            // The driver announces commits itself (`Driver::announce_commit`).
            // raft-rs still broadcasts while a membership change is pending.
            skip_bcast_commit: !self.commit_announce_delay.is_zero(),
            max_uncommitted_size: self.max_uncommitted_size,
            max_committed_size_per_ready: self.max_committed_size_per_ready,
            min_election_tick: self.min_election_tick,
            max_election_tick: self.max_election_tick,
            ..Default::default()
        }
    }
}

/// A snapshot of the driver's view, refreshed after every loop iteration.
#[derive(Debug, Clone, Default)]
pub struct RaftStatus {
    pub id: u64,
    pub role: Role,
    pub leader_id: u64,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// (peer id, match index), leader only.
    pub progress: Vec<(u64, u64)>,
    /// Peers the leader heard from within the last election timeout
    /// (check-quorum's view), leader only.
    pub recently_active: Vec<u64>,
    /// False after a fatal error stopped the driver.
    pub running: bool,
}

type Reply<T> = oneshot::Sender<Result<T, ConsensusError>>;

enum Event<O> {
    Propose {
        data: Vec<u8>,
        reply: Reply<O>,
    },
    ConfChange {
        change: ConfChangeV2,
        reply: Reply<ConfState>,
    },
    Read {
        reply: Reply<u64>,
    },
    Step(Box<Message>),
    Unreachable(u64),
    SnapshotReport {
        peer: u64,
        delivered: bool,
    },
    TransferLeader(u64),
    Stop,
}

/// Cheap, cloneable handle to the driver. `Send + Sync`.
pub struct RaftHandle<O> {
    events: mpsc::Sender<Event<O>>,
    status: Arc<Mutex<RaftStatus>>,
    lease: Arc<ReadLease>,
    timings: Arc<ReadyTimings>,
}

impl<O> Clone for RaftHandle<O> {
    fn clone(&self) -> Self {
        RaftHandle {
            events: self.events.clone(),
            status: self.status.clone(),
            lease: self.lease.clone(),
            timings: self.timings.clone(),
        }
    }
}

impl<O: Send + 'static> RaftHandle<O> {
    fn enqueue(&self, ev: Event<O>) -> Result<(), ConsensusError> {
        self.events.try_send(ev).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                ConsensusError::Overloaded("raft event queue full")
            }
            mpsc::error::TrySendError::Closed(_) => ConsensusError::Stopped,
        })
    }

    /// Proposes `data`; resolves with the state machine's output once the
    /// entry is committed, durable and applied on this node.
    pub async fn propose(&self, data: Vec<u8>) -> Result<O, ConsensusError> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(Event::Propose { data, reply: tx })?;
        rx.await.map_err(|_| ConsensusError::Stopped)?
    }

    /// Linearizable read barrier (Raft ReadIndex): resolves with the read
    /// index once this node has applied at least that far.
    pub async fn read_index(&self) -> Result<u64, ConsensusError> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(Event::Read { reply: tx })?;
        rx.await.map_err(|_| ConsensusError::Stopped)?
    }

    /// The term in which this node leads under a valid read lease, once it
    /// has applied every entry it has told any peer is committed
    /// ([`crate::lease`]). A read may then skip [`read_index`](Self::read_index),
    /// provided this node has applied an entry of that term (so it holds
    /// every entry committed before it). `None`: use the ReadIndex round.
    /// Asking keeps the driver renewing the lease.
    pub async fn lease_read(&self) -> Option<u64> {
        let read = self.lease.valid(Instant::now())?;
        self.lease
            .wait_applied(read.apply_to, MAX_LEASE_APPLY_WAIT)
            .await
            .then_some(read.term)
    }

    /// Proposes a membership change; resolves when it is applied.
    pub async fn change_membership(
        &self,
        change: ConfChangeV2,
    ) -> Result<ConfState, ConsensusError> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(Event::ConfChange { change, reply: tx })?;
        rx.await.map_err(|_| ConsensusError::Stopped)?
    }

    /// Delivers a message from a peer. Drops it when the queue is full: Raft
    /// retransmits, and a bounded queue matters more than one message.
    pub fn step(&self, msg: Message) -> Result<(), ConsensusError> {
        self.enqueue(Event::Step(Box::new(msg)))
    }

    pub fn report_unreachable(&self, peer: u64) {
        let _ = self.enqueue(Event::Unreachable(peer));
    }

    /// Tells raft whether a snapshot message reached `peer`, so a failed
    /// transfer is retried instead of leaving the peer paused.
    pub fn report_snapshot(&self, peer: u64, delivered: bool) {
        let _ = self.enqueue(Event::SnapshotReport { peer, delivered });
    }

    pub fn transfer_leader(&self, to: u64) -> Result<(), ConsensusError> {
        self.enqueue(Event::TransferLeader(to))
    }

    /// Where the driver's Readys spend their time.
    pub fn timings(&self) -> &ReadyTimings {
        &self.timings
    }

    pub fn status(&self) -> RaftStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Asks the driver to stop after the current iteration.
    pub async fn stop(&self) {
        let _ = self.events.send(Event::Stop).await;
    }
}

/// Proposal contexts carry a per-process nonce so that entries proposed by an
/// earlier incarnation of this node (replayed at restart) never match a live
/// waiter.
const CONTEXT_LEN: usize = 16;

struct Driver<S: StateMachine, T: Transport> {
    raw: RawNode<RaftLog>,
    store: Store,
    log: RaftLog,
    sm: S,
    transport: Arc<T>,
    config: RaftConfig,
    events: mpsc::Receiver<Event<S::Output>>,
    status: Arc<Mutex<RaftStatus>>,
    nonce: u64,
    next_seq: u64,
    proposals: HashMap<u64, Reply<S::Output>>,
    conf_changes: HashMap<u64, Reply<ConfState>>,
    /// Read requests sent to raft, not yet answered with a read index.
    reads_pending: HashMap<u64, (Instant, Reply<u64>)>,
    /// Contexts of reads in `reads_pending` not yet handed to raft-rs: a
    /// leader that has not committed an entry of its term yet drops a
    /// ReadIndex without an answer (raft-rs 0.7), so the read waits here
    /// until it has (`issue_held_reads`). Expired like the others.
    reads_held: Vec<Vec<u8>>,
    /// Reads that know their index and wait for apply to reach it.
    reads_ready: Vec<(u64, Reply<u64>)>,
    role: Role,
    term: u64,
    applied: u64,
    stopped: bool,
    lease: Arc<ReadLease>,
    /// Zero when lease reads are off.
    lease_duration: Duration,
    /// A ReadIndex round registered before this instant cannot grant a
    /// lease: the role or term changed, or a leadership transfer began.
    lease_not_before: Instant,
    /// The driver's own ReadIndex round that renews the lease, in flight.
    lease_renewal: Option<(u64, Instant)>,
    /// Term in which this node sent `MsgTimeoutNow`: no lease in it again.
    timeout_now_term: u64,
    /// Ticks since this driver started (saturating): vote requests are
    /// refused for the first `election_tick` of them ([`crate::lease`]).
    ticks_since_start: usize,
    timings: Arc<ReadyTimings>,
    /// Time spent in the state machine's `apply` during the current Ready.
    apply_elapsed: Duration,
    /// When the last slow-Ready warning went out.
    slow_ready_logged_at: Option<Instant>,
    /// As leader: the highest commit index sent to each peer this term,
    /// in an append or a heartbeat.
    commit_told: HashMap<u64, u64>,
    /// As leader: when to send the commit index to followers that hold a
    /// committed entry nobody told them is committed
    /// (`RaftConfig::commit_announce_delay`).
    commit_announce_at: Option<Instant>,
}

impl<S: StateMachine, T: Transport> Driver<S, T> {
    fn build(
        config: RaftConfig,
        store: Store,
        sm: S,
        transport: Arc<T>,
        events: mpsc::Receiver<Event<S::Output>>,
        status: Arc<Mutex<RaftStatus>>,
        lease: Arc<ReadLease>,
    ) -> Result<Self, ConsensusError> {
        let log = store.raft_log();
        if !config.initial_voters.is_empty() {
            log.initialize(&config.initial_voters)?;
        }
        let applied = store.applied_index()?;
        // The commit index in the hard state is written without a sync
        // (`PersistJob::needs_sync`) while applied state can reach the disk
        // in the same or a later sled flush, so after a crash the stored
        // commit may trail the applied index; raft-rs refuses to start with
        // applied > commit. Every applied entry was committed and is in the
        // durable log (raft-rs only hands out persisted entries), so raise it.
        let mut hs = log.hard_state()?;
        if hs.commit < applied {
            hs.commit = applied;
            log.set_hard_state(&hs)?;
        }
        // The other way round: the commit index can reach sled before the
        // entries it covers are synced to the log's segment files, and a
        // crash in between leaves a commit past the last entry, which
        // raft-rs also refuses. Only entries in the durable log can have
        // been applied or acknowledged, so that is as far as it can be.
        let last = log.last_log_index();
        if applied > last {
            // The state is ahead of every entry this log holds (a crash
            // between a snapshot's state and its log metadata): raft-rs
            // would panic. Refuse with the remedy instead.
            return Err(ConsensusError::Raft(format!(
                "applied index {applied} is past the raft log's last entry {last}: the data \
                 dir is inconsistent; re-seed this node (wipe it and join as a new member)"
            )));
        }
        if hs.commit > last {
            tracing::info!(
                node = config.id,
                commit = hs.commit,
                last,
                "stored commit index past the durable log; lowered to its last entry"
            );
            hs.commit = last;
            log.set_hard_state(&hs)?;
        }
        // raft-rs panics when its storage fails while it reads entries, so
        // verify everything it will read at start (the unapplied tail) first
        // and fail with a typed error instead: a damaged log is DATA_LOSS
        // on this node, to be recovered from peers, never a crash.
        let first = log.first_log_index().max(applied.saturating_add(1));
        let last = log.last_log_index();
        if first <= last {
            log.read_entries(first, last + 1, None)?;
        }
        let raft_config = config.to_raft(applied);
        raft_config.validate()?;
        let lease_duration = if config.lease_reads {
            lease_duration(config.tick_interval, config.election_tick)
        } else {
            Duration::ZERO
        };
        let logger = tracing_logger(config.id);
        let raw = RawNode::new(&raft_config, log.clone(), &logger)?;
        let mut driver = Driver {
            raw,
            store,
            log,
            sm,
            transport,
            events,
            status,
            nonce: rand::random(),
            next_seq: 0,
            proposals: HashMap::new(),
            conf_changes: HashMap::new(),
            reads_pending: HashMap::new(),
            reads_held: Vec::new(),
            reads_ready: Vec::new(),
            role: Role::Follower,
            term: 0,
            applied,
            stopped: false,
            lease,
            lease_duration,
            lease_not_before: Instant::now(),
            lease_renewal: None,
            timeout_now_term: 0,
            ticks_since_start: 0,
            timings: Arc::new(ReadyTimings::default()),
            apply_elapsed: Duration::ZERO,
            slow_ready_logged_at: None,
            commit_told: HashMap::new(),
            commit_announce_at: None,
            config,
        };
        driver.lease.note_applied(applied);
        // A lone voter need not wait a full election timeout to lead.
        if driver.is_sole_voter() {
            driver.raw.campaign()?;
        }
        driver.publish_status();
        Ok(driver)
    }
}

/// Builds the `RawNode` over `store` and spawns the driver on the current
/// tokio runtime. Returns the handle and the task's join handle.
pub fn spawn_driver<S, T>(
    config: RaftConfig,
    store: Store,
    sm: S,
    transport: Arc<T>,
) -> Result<(RaftHandle<S::Output>, tokio::task::JoinHandle<()>), ConsensusError>
where
    S: StateMachine,
    T: Transport,
{
    let (tx, rx) = mpsc::channel(config.event_queue_capacity);
    let status = Arc::new(Mutex::new(RaftStatus {
        id: config.id,
        running: true,
        ..Default::default()
    }));
    let lease = Arc::new(ReadLease::default());
    let mut driver = Driver::build(
        config,
        store,
        sm,
        transport,
        rx,
        status.clone(),
        lease.clone(),
    )?;
    let timings = driver.timings.clone();
    let stopped = MarkStoppedOnDrop(status.clone());
    let join = tokio::spawn(async move {
        let _stopped = stopped;
        driver.run().await
    });
    Ok((
        RaftHandle {
            events: tx,
            status,
            lease,
            timings,
        },
        join,
    ))
}

/// Marks the driver stopped when its task ends, including by a panic:
/// raft-rs panics when its storage fails mid-read (a record damaged while
/// the node runs). The node must then report itself dead (`running` is
/// what `/healthz` and `synapse serve` watch) rather than serve on without
/// consensus; a restart repairs the log from peers before raft-rs starts.
struct MarkStoppedOnDrop(Arc<Mutex<RaftStatus>>);

impl Drop for MarkStoppedOnDrop {
    fn drop(&mut self) {
        let mut status = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if std::thread::panicking() {
            tracing::error!(node = status.id, "raft driver panicked; consensus stopped");
        }
        status.running = false;
    }
}

/// The driver stepped by hand, for deterministic simulation: no tasks, no
/// timers, no thread pool. The caller decides when a node ticks, which
/// messages it receives and when it processes Ready; the same code paths as
/// the async driver run underneath.
pub struct SimDriver<S: StateMachine, T: Transport> {
    driver: Driver<S, T>,
    // Keeps the event channel open; the simulation calls methods directly.
    _events: mpsc::Sender<Event<S::Output>>,
}

/// Where [`SimDriver::process_crashing`] crashes: in the `ready`-th Ready
/// of the call, after applying committed entries and sending messages and
/// replies, either before the durable write (`after_sync: false`: between
/// apply and sync) or right after it (between persist and the persisted
/// messages / acks of the light Ready).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashPoint {
    pub ready: usize,
    pub after_sync: bool,
}

/// A reply the simulation polls without an executor.
pub type SimReply<T> = oneshot::Receiver<Result<T, ConsensusError>>;

impl<S: StateMachine, T: Transport> SimDriver<S, T> {
    pub fn new(
        config: RaftConfig,
        store: Store,
        sm: S,
        transport: Arc<T>,
    ) -> Result<Self, ConsensusError> {
        let (tx, rx) = mpsc::channel(1);
        let status = Arc::new(Mutex::new(RaftStatus {
            id: config.id,
            running: true,
            ..Default::default()
        }));
        let lease = Arc::new(ReadLease::default());
        let driver = Driver::build(config, store, sm, transport, rx, status, lease)?;
        Ok(SimDriver {
            driver,
            _events: tx,
        })
    }

    /// Seeds the proposal-context nonce so runs replay exactly.
    pub fn set_nonce(&mut self, nonce: u64) {
        self.driver.nonce = nonce;
    }

    pub fn propose(&mut self, data: Vec<u8>) -> SimReply<S::Output> {
        let (tx, rx) = oneshot::channel();
        self.driver.handle(Event::Propose { data, reply: tx });
        rx
    }

    pub fn read_index(&mut self) -> SimReply<u64> {
        let (tx, rx) = oneshot::channel();
        self.driver.handle(Event::Read { reply: tx });
        rx
    }

    pub fn change_membership(&mut self, change: ConfChangeV2) -> SimReply<ConfState> {
        let (tx, rx) = oneshot::channel();
        self.driver.handle(Event::ConfChange { change, reply: tx });
        rx
    }

    pub fn step(&mut self, msg: Message) {
        self.driver.handle(Event::Step(Box::new(msg)));
    }

    /// One Raft tick, with the tick-time duties of the real loop that are
    /// deterministic: a leader removed from the voters hands leadership
    /// away (without it a self-removed leader leads on, and refuses every
    /// proposal). Read expiry is wall-clock based and is left out.
    pub fn tick(&mut self) {
        self.driver.tick();
        self.driver.hand_off_if_removed();
        // The simulation's clock is its ticks: an announcement armed by
        // the loop (`process`) is due by the next one.
        if self.driver.commit_announce_at.is_some() {
            self.driver.announce_commit();
        }
    }

    pub fn report_snapshot(&mut self, peer: u64, delivered: bool) {
        self.driver
            .handle(Event::SnapshotReport { peer, delivered });
    }

    /// The lease's term, if valid now (see [`RaftHandle::lease_read`]).
    pub fn leased_term(&self) -> Option<u64> {
        self.driver.lease.valid(Instant::now()).map(|r| r.term)
    }

    /// Asks this node, if it leads, to hand leadership to `to`.
    pub fn transfer_leader(&mut self, to: u64) {
        self.driver.raw.transfer_leader(to);
    }

    pub fn report_unreachable(&mut self, peer: u64) {
        self.driver.handle(Event::Unreachable(peer));
    }

    /// Processes every pending Ready, persisting inline.
    pub fn process(&mut self) -> Result<(), ConsensusError> {
        let r = self.driver.process_ready_sync();
        self.driver.schedule_commit_announcement();
        self.driver.publish_status();
        r
    }

    /// Like [`process`](Self::process), but a simulated crash interrupts
    /// the `point.ready`-th Ready (0-based) before or after its durable
    /// write. Returns whether the crash point was reached; if so, the
    /// driver is left mid-Ready and the caller must drop it (the node
    /// crashed): acks and messages sent before the point have escaped,
    /// nothing after it happens.
    pub fn process_crashing(&mut self, point: CrashPoint) -> Result<bool, ConsensusError> {
        let mut n = 0;
        while let Some((ready, job)) = self.driver.ready_begin()? {
            if n == point.ready && !point.after_sync {
                return Ok(true);
            }
            if !job.is_empty() {
                job.run(&self.driver.log)?;
            }
            if n == point.ready {
                return Ok(true);
            }
            self.driver.ready_finish(ready)?;
            n += 1;
        }
        self.driver.issue_held_reads();
        self.driver.release_reads();
        self.driver.schedule_commit_announcement();
        self.driver.publish_status();
        Ok(false)
    }

    pub fn status(&self) -> RaftStatus {
        self.driver
            .status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    pub fn state_machine(&self) -> &S {
        &self.driver.sm
    }

    pub fn store(&self) -> &Store {
        &self.driver.store
    }
}

/// The durable write of one Ready: the group commit.
struct PersistJob {
    entries: Vec<Entry>,
    hard_state: Option<raft::eraftpb::HardState>,
    compact_to: Option<u64>,
    must_sync: bool,
}

impl PersistJob {
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.hard_state.is_none()
            && self.compact_to.is_none()
            && !self.must_sync
    }

    /// Whether this write needs the durability barrier. raft-rs says so
    /// (`must_sync`) for new entries, a snapshot, or a changed term or vote.
    /// A hard state that only moved the commit index does not: a lost commit
    /// index is re-learned from the leader, and `Driver::build` raises it to
    /// the applied index at start. Before this, every commit advance cost a
    /// full sled flush + fdatasync on every node, and on a leader the next
    /// proposal's Ready queued behind it (about half the 1-client latency).
    fn needs_sync(&self) -> bool {
        self.must_sync || !self.entries.is_empty() || self.compact_to.is_some()
    }

    /// [`PersistJob::run`], returning how long it took.
    fn run_timed(self, log: &RaftLog) -> Result<Duration, ConsensusError> {
        let started = Instant::now();
        self.run(log)?;
        Ok(started.elapsed())
    }

    fn run(self, log: &RaftLog) -> Result<(), ConsensusError> {
        let sync = self.needs_sync();
        if !self.entries.is_empty() {
            log.append(&self.entries)?;
        }
        if let Some(hs) = self.hard_state {
            log.set_hard_state(&hs)?;
        }
        // One durability barrier per Ready, however many entries it holds:
        // the log's fdatasync. The state applied from earlier Readys is not
        // synced here; after a crash it is re-applied from the log, and
        // the log's reclaim thread syncs it before deleting a compacted
        // segment (`synapse_storage`'s `reclaim`).
        if sync {
            log.sync()?;
        }
        if let Some(idx) = self.compact_to {
            log.compact(idx)?;
        }
        Ok(())
    }
}

/// Most log entries one Ready deletes. Compaction runs inside the persist
/// job that the Ready loop awaits, and sled pays one node copy per removed
/// key: deleting 15 000 entries at once (threshold 20 000, keep 5 000)
/// stalled the node for the whole deletion every few seconds under load.
/// In steps of this size the log stays just under the threshold instead,
/// and each step costs about as much as applying one large Ready.
const MAX_COMPACT_PER_READY: u64 = 1_024;

/// Longest a lease read waits for this node to apply the commit index it
/// has already sent. Normally that is the rest of one Ready; a node that
/// lags longer answers through the ReadIndex round instead, which waits
/// (and times out) the same way any read does.
const MAX_LEASE_APPLY_WAIT: Duration = Duration::from_secs(2);

/// Events handled per wake-up before processing Ready; bounds the latency a
/// flood of events can add to one Ready while still batching generously.
const MAX_EVENTS_PER_READY: usize = 4096;

/// Default of `RaftConfig::commit_announce_delay`. A sequential client's
/// next write reaches the followers a few hundred µs after the previous
/// commit (reply, client round trip, handler, propose), so 1 ms lets that
/// append carry the commit; tokio's timers resolve 1 ms, so a shorter delay
/// would fire as late anyway.
pub const DEFAULT_COMMIT_ANNOUNCE_DELAY: Duration = Duration::from_millis(1);

impl<S: StateMachine, T: Transport> Driver<S, T> {
    fn is_sole_voter(&self) -> bool {
        let cs = self.raw.raft.prs().conf().to_conf_state();
        cs.voters == [self.config.id] && cs.learners.is_empty()
    }

    async fn run(&mut self) {
        let mut ticker = tokio::time::interval(self.config.tick_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.stopped {
            let announce_at = self.commit_announce_at;
            let announce = tokio::time::sleep_until(tokio::time::Instant::from_std(
                announce_at.unwrap_or_else(Instant::now),
            ));
            tokio::select! {
                ev = self.events.recv() => match ev {
                    Some(ev) => {
                        self.handle(ev);
                        let mut drained = 1;
                        while drained < MAX_EVENTS_PER_READY && !self.stopped {
                            match self.events.try_recv() {
                                Ok(ev) => { self.handle(ev); drained += 1; }
                                Err(_) => break,
                            }
                        }
                    }
                    None => self.stopped = true,
                },
                _ = ticker.tick() => {
                    self.tick();
                    self.expire_reads();
                    self.renew_lease_if_wanted();
                    self.hand_off_if_removed();
                }
                _ = announce, if announce_at.is_some() => self.announce_commit(),
            }
            if let Err(e) = self.process_ready().await {
                tracing::error!(error = %e, node = self.config.id, "fatal consensus error; stopping driver");
                self.stopped = true;
            }
            self.schedule_commit_announcement();
            self.publish_status();
        }
        self.fail_all(|| ConsensusError::Stopped);
        if let Ok(mut s) = self.status.lock() {
            s.running = false;
        }
        tracing::info!(node = self.config.id, "raft driver stopped");
    }

    fn next_context(&mut self) -> (u64, Vec<u8>) {
        self.next_seq += 1;
        let mut ctx = Vec::with_capacity(CONTEXT_LEN);
        ctx.extend_from_slice(&self.nonce.to_be_bytes());
        ctx.extend_from_slice(&self.next_seq.to_be_bytes());
        (self.next_seq, ctx)
    }

    fn own_seq(&self, ctx: &[u8]) -> Option<u64> {
        if ctx.len() != CONTEXT_LEN {
            return None;
        }
        let (nonce, seq) = ctx.split_at(8);
        if u64::from_be_bytes(nonce.try_into().ok()?) != self.nonce {
            return None;
        }
        Some(u64::from_be_bytes(seq.try_into().ok()?))
    }

    fn leader_hint(&self) -> Option<u64> {
        let l = self.raw.raft.leader_id;
        (l != 0 && l != self.config.id).then_some(l)
    }

    fn waiters(&self) -> usize {
        self.proposals.len()
            + self.conf_changes.len()
            + self.reads_pending.len()
            + self.reads_ready.len()
    }

    fn handle(&mut self, ev: Event<S::Output>) {
        match ev {
            Event::Propose { data, reply } => {
                if self.raw.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(ConsensusError::NotLeader {
                        leader_hint: self.leader_hint(),
                    }));
                    return;
                }
                if self.waiters() >= self.config.max_waiters {
                    let _ = reply.send(Err(ConsensusError::Overloaded(
                        "too many proposals in flight",
                    )));
                    return;
                }
                let (seq, ctx) = self.next_context();
                let early = if self.config.unsafe_ack_on_propose {
                    self.sm.speculative_output(&data)
                } else {
                    None
                };
                match self.raw.propose(ctx, data) {
                    Ok(()) => match early {
                        Some(output) => {
                            let _ = reply.send(Ok(output));
                        }
                        None => {
                            self.proposals.insert(seq, reply);
                        }
                    },
                    Err(raft::Error::ProposalDropped) => {
                        // raft-rs drops proposals past max_uncommitted_size or
                        // during a leader transfer.
                        let _ = reply.send(Err(ConsensusError::Overloaded(
                            "uncommitted log limit reached",
                        )));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Event::ConfChange { change, reply } => {
                if self.raw.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(ConsensusError::NotLeader {
                        leader_hint: self.leader_hint(),
                    }));
                    return;
                }
                // raft-rs accepts a second change while one is unapplied
                // and then replaces it with an empty normal entry: the
                // waiter would never hear back (seen when two nodes joined
                // at the same moment). Refuse it here instead.
                if self.raw.raft.pending_conf_index > self.raw.raft.raft_log.applied {
                    let _ = reply.send(Err(ConsensusError::MembershipChangePending));
                    return;
                }
                let (seq, ctx) = self.next_context();
                match self.raw.propose_conf_change(ctx, change) {
                    Ok(()) => {
                        self.conf_changes.insert(seq, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Event::Read { reply } => {
                if self.waiters() >= self.config.max_waiters {
                    let _ = reply.send(Err(ConsensusError::Overloaded("too many reads in flight")));
                    return;
                }
                if self.raw.raft.leader_id == 0 {
                    let _ = reply.send(Err(ConsensusError::NotLeader { leader_hint: None }));
                    return;
                }
                let (seq, ctx) = self.next_context();
                if self.raw.raft.state == StateRole::Leader
                    && !self.raw.raft.commit_to_current_term()
                {
                    // A new leader (at start, or after an election): the
                    // entry of its term commits within a Ready or two.
                    self.reads_held.push(ctx);
                } else {
                    self.raw.read_index(ctx);
                }
                self.reads_pending.insert(seq, (Instant::now(), reply));
            }
            Event::Step(msg) => {
                if let Some(field) = out_of_range(&msg) {
                    // Only damage or a hostile peer sends one; raft-rs
                    // would adopt the term and overflow at the next
                    // election, or fail to store the entries.
                    tracing::warn!(
                        node = self.config.id,
                        from = msg.from,
                        field,
                        "dropping a raft message with a term or index out of range"
                    );
                    return;
                }
                if self.refuses_vote_after_start(&msg) {
                    tracing::debug!(
                        node = self.config.id,
                        from = msg.from,
                        "vote request ignored: started less than an election timeout ago"
                    );
                    return;
                }
                if let Err(e) = self.raw.step(*msg) {
                    tracing::debug!(error = %e, "dropping raft message");
                }
            }
            Event::Unreachable(peer) => self.raw.report_unreachable(peer),
            Event::SnapshotReport { peer, delivered } => {
                let status = if delivered {
                    raft::SnapshotStatus::Finish
                } else {
                    raft::SnapshotStatus::Failure
                };
                self.raw.report_snapshot(peer, status);
            }
            Event::TransferLeader(to) => self.raw.transfer_leader(to),
            Event::Stop => self.stopped = true,
        }
    }

    /// raft-rs leaves a leader that removed itself in charge (a known TODO
    /// there); hand leadership to the most caught-up remaining voter. Called
    /// after membership changes and on every tick, because raft-rs abandons
    /// a transfer after an election timeout if the target was not caught up.
    fn hand_off_if_removed(&mut self) {
        if self.raw.raft.state != StateRole::Leader || self.raw.raft.lead_transferee.is_some() {
            return;
        }
        let cs = self.raw.raft.prs().conf().to_conf_state();
        if cs.voters.contains(&self.config.id) {
            return;
        }
        let best = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| cs.voters.contains(id))
            .max_by_key(|(_, p)| p.matched)
            .map(|(id, _)| *id);
        if let Some(to) = best {
            tracing::info!(
                node = self.config.id,
                to,
                "removed from the voters; transferring leadership"
            );
            self.raw.transfer_leader(to);
        }
    }

    /// A leader removed outright (not demoted to learner) steps down.
    /// raft-rs 0.7 would keep it leading until the transfer above
    /// completes, and the next append response then makes it advance the
    /// commit index through its own, now deleted, progress entry: a panic
    /// (found by the simulation's membership runs). Called only between
    /// Readies: raft-rs forbids a role change inside one. The TimeoutNow
    /// the transfer sent (if the target was caught up) still makes the
    /// target campaign at once; otherwise the voters elect one.
    fn step_down_if_removed(&mut self) {
        if self.raw.raft.state == StateRole::Leader
            && self.raw.raft.prs().get(self.config.id).is_none()
        {
            tracing::info!(
                node = self.config.id,
                "removed from the cluster; stepping down"
            );
            let term = self.raw.raft.term;
            self.raw.raft.become_follower(term, raft::INVALID_ID);
            self.end_lease();
        }
    }

    /// Every outgoing message passes here. A `MsgTimeoutNow` makes its
    /// target campaign with force, past the followers' lease, so the lease
    /// ends before it leaves.
    fn send(&mut self, msgs: Vec<Message>) {
        if msgs
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgTimeoutNow)
        {
            self.end_lease();
            self.timeout_now_term = self.raw.raft.term;
        }
        if self.raw.raft.state == StateRole::Leader {
            for m in &msgs {
                if matches!(
                    m.get_msg_type(),
                    MessageType::MsgAppend | MessageType::MsgHeartbeat
                ) {
                    // A follower takes an append's commit only up to the
                    // append's last entry (a heartbeat's is already capped).
                    let last = m.index.saturating_add(m.entries.len() as u64);
                    let commit = if m.get_msg_type() == MessageType::MsgAppend {
                        m.commit.min(last)
                    } else {
                        m.commit
                    };
                    let told = self.commit_told.entry(m.to).or_insert(0);
                    if commit > *told {
                        *told = commit;
                        // Commits are flowing: whatever is still untold
                        // rides on the next one or waits a full delay.
                        self.commit_announce_at = None;
                    }
                }
            }
        }
        self.lease
            .note_commit_sent(self.raw.raft.raft_log.committed);
        self.transport.send(msgs);
    }

    /// A leader's peers that hold a committed entry no message they were
    /// sent said is committed. raft-rs caps a follower's commit at the
    /// entries it has, so a peer only needs to hear up to what it matched.
    /// A paused peer (probing, or its in-flight window full) would be sent
    /// nothing now and hears the commit with its next append; counting it
    /// would re-arm the timer every delay for nothing.
    fn peers_behind_commit(&self) -> impl Iterator<Item = u64> + '_ {
        let leader = self.raw.raft.state == StateRole::Leader
            && !self.config.commit_announce_delay.is_zero();
        let committed = self.raw.raft.raft_log.committed;
        self.raw
            .raft
            .prs()
            .iter()
            .filter(move |(id, pr)| {
                leader
                    && **id != self.config.id
                    && !pr.is_paused()
                    && self.commit_told.get(*id).copied().unwrap_or(0) < committed.min(pr.matched)
            })
            .map(|(id, _)| *id)
    }

    /// After each loop iteration: arm the announcement timer when some peer
    /// is behind the commit index and no append has told it yet.
    fn schedule_commit_announcement(&mut self) {
        if self.peers_behind_commit().next().is_none() {
            self.commit_announce_at = None;
        } else if self.commit_announce_at.is_none() {
            self.commit_announce_at = Some(Instant::now() + self.config.commit_announce_delay);
        }
    }

    /// Sends the commit index to the peers behind it, as the empty append
    /// raft-rs broadcasts per commit when `skip_bcast_commit` is off.
    fn announce_commit(&mut self) {
        self.commit_announce_at = None;
        let committed = self.raw.raft.raft_log.committed;
        let behind: Vec<(u64, u64)> = self
            .peers_behind_commit()
            .filter_map(|id| Some((id, self.raw.raft.prs().get(id)?.matched)))
            .collect();
        for (id, matched) in behind {
            self.raw.raft.send_append(id);
            // Counted as told even if raft-rs sent nothing (no snapshot
            // ready for a peer behind the log, say): otherwise the timer
            // would re-arm every delay for nothing. Heartbeats carry the
            // commit index anyway.
            let told = self.commit_told.entry(id).or_insert(0);
            *told = (*told).max(committed.min(matched));
        }
    }

    fn tick(&mut self) {
        self.ticks_since_start = self.ticks_since_start.saturating_add(1);
        self.raw.tick();
    }

    /// A node that just started knows no leader, so raft-rs would grant a
    /// vote at once, possibly to a candidate that lost touch with a leader
    /// whose lease this node's last acknowledgement supports. Until an
    /// election timeout has passed it refuses, as raft-rs does after
    /// hearing from a leader (same conditions: a higher term, not a
    /// leadership transfer).
    fn refuses_vote_after_start(&self, m: &Message) -> bool {
        !self.lease_duration.is_zero()
            && self.ticks_since_start < self.config.election_tick
            && matches!(
                m.get_msg_type(),
                MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
            )
            && m.term > self.raw.raft.term
            && m.get_context() != raft::CAMPAIGN_TRANSFER
    }

    fn end_lease(&mut self) {
        self.lease.revoke();
        self.lease_not_before = Instant::now();
        self.lease_renewal = None;
    }

    /// A ReadIndex round registered at `at` completed on this leader: a
    /// quorum heard from it after `at` ([`crate::lease`]).
    fn grant_lease(&mut self, at: Instant) {
        if self.lease_duration.is_zero()
            || self.raw.raft.state != StateRole::Leader
            || self.raw.raft.lead_transferee.is_some()
            || self.raw.raft.term == self.timeout_now_term
            || at <= self.lease_not_before
        {
            return;
        }
        self.lease
            .extend(self.raw.raft.term, at + self.lease_duration);
    }

    /// On each tick: if reads used the lease since the last tick, start a
    /// ReadIndex round of the driver's own to extend it, so readers never
    /// wait for one. An idle leader sends nothing extra. A round that got
    /// no answer within the lease (raft-rs drops a read on a leader that
    /// has not yet committed in its term) is abandoned.
    fn renew_lease_if_wanted(&mut self) {
        if self.lease_duration.is_zero()
            || self.raw.raft.state != StateRole::Leader
            || self.raw.raft.lead_transferee.is_some()
            || self.raw.raft.term == self.timeout_now_term
        {
            return;
        }
        if let Some((_, at)) = self.lease_renewal {
            if at.elapsed() < self.lease_duration {
                return;
            }
        }
        if !self.lease.take_wanted() {
            return;
        }
        let (seq, ctx) = self.next_context();
        self.raw.read_index(ctx);
        self.lease_renewal = Some((seq, Instant::now()));
    }

    /// Hands the held reads to raft-rs once this leader has committed an
    /// entry of its term; a node that stopped leading meanwhile passes them
    /// on as a follower would (raft-rs forwards them to the leader).
    fn issue_held_reads(&mut self) {
        if self.reads_held.is_empty()
            || (self.raw.raft.state == StateRole::Leader && !self.raw.raft.commit_to_current_term())
        {
            return;
        }
        for ctx in std::mem::take(&mut self.reads_held) {
            if self.is_pending_read(&ctx) {
                self.raw.read_index(ctx);
            }
        }
    }

    fn is_pending_read(&self, ctx: &[u8]) -> bool {
        self.own_seq(ctx)
            .is_some_and(|seq| self.reads_pending.contains_key(&seq))
    }

    fn expire_reads(&mut self) {
        let timeout = self.config.read_timeout;
        let hint = self.leader_hint();
        let expired: Vec<u64> = self
            .reads_pending
            .iter()
            .filter(|(_, (at, _))| at.elapsed() >= timeout)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            if let Some((_, reply)) = self.reads_pending.remove(&seq) {
                let _ = reply.send(Err(ConsensusError::NotLeader { leader_hint: hint }));
            }
        }
        let held = std::mem::take(&mut self.reads_held);
        self.reads_held = held
            .into_iter()
            .filter(|ctx| self.is_pending_read(ctx))
            .collect();
    }

    fn fail_all(&mut self, err: impl Fn() -> ConsensusError) {
        for (_, r) in self.proposals.drain() {
            let _ = r.send(Err(err()));
        }
        for (_, r) in self.conf_changes.drain() {
            let _ = r.send(Err(err()));
        }
        for (_, (_, r)) in self.reads_pending.drain() {
            let _ = r.send(Err(err()));
        }
        self.reads_held.clear();
        for (_, r) in self.reads_ready.drain(..) {
            let _ = r.send(Err(err()));
        }
    }

    fn observe_role(&mut self) {
        let role: Role = self.raw.raft.state.into();
        let term = self.raw.raft.term;
        if role != self.role || term != self.term {
            self.end_lease();
            let was_leader = self.role == Role::Leader;
            self.role = role;
            self.term = term;
            self.commit_told.clear();
            self.commit_announce_at = None;
            let leader = self.raw.raft.leader_id;
            tracing::info!(
                node = self.config.id,
                role = role.as_str(),
                term,
                leader,
                "raft role changed"
            );
            if was_leader && role != Role::Leader {
                // Entries proposed here may still commit under the next
                // leader, so the outcome is unknown to the caller: it must
                // retry with the same request id.
                let hint = self.leader_hint();
                for (_, r) in self.proposals.drain() {
                    let _ = r.send(Err(ConsensusError::NotLeader { leader_hint: hint }));
                }
                for (_, r) in self.conf_changes.drain() {
                    let _ = r.send(Err(ConsensusError::NotLeader { leader_hint: hint }));
                }
            }
            self.sm.on_role_change(role, term, leader);
        }
    }

    /// Phase one of a Ready: everything before the durable write. Returns
    /// the Ready to finish and the write to make, or `None` when idle.
    fn ready_begin(&mut self) -> Result<Option<(raft::Ready, PersistJob)>, ConsensusError> {
        if self.stopped || !self.raw.has_ready() {
            return Ok(None);
        }
        let mut ready = self.raw.ready();
        self.observe_role();

        if !ready.messages().is_empty() {
            self.send(ready.take_messages());
        }
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            self.install_snapshot(&snapshot)?;
        }
        let committed = ready.take_committed_entries();
        self.apply_entries(committed)?;
        for rs in ready.take_read_states() {
            if let Some(seq) = self.own_seq(&rs.request_ctx) {
                if let Some((at, reply)) = self.reads_pending.remove(&seq) {
                    self.grant_lease(at);
                    self.reads_ready.push((rs.index, reply));
                } else if let Some((_, at)) = self.lease_renewal.filter(|(s, _)| *s == seq) {
                    self.lease_renewal = None;
                    self.grant_lease(at);
                }
            }
        }
        let job = PersistJob {
            entries: ready.take_entries(),
            hard_state: ready.hs().cloned(),
            compact_to: self.compaction_point(),
            must_sync: ready.must_sync(),
        };
        Ok(Some((ready, job)))
    }

    /// Phase two, after the write is durable: messages that must follow it,
    /// advance, and the light ready.
    fn ready_finish(&mut self, mut ready: raft::Ready) -> Result<(), ConsensusError> {
        if !ready.persisted_messages().is_empty() {
            self.send(ready.take_persisted_messages());
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            let mut hs = self.log.hard_state()?;
            hs.set_commit(commit);
            self.log.set_hard_state(&hs)?;
        }
        if !light.messages().is_empty() {
            self.send(light.take_messages());
        }
        let committed = light.take_committed_entries();
        self.apply_entries(committed)?;
        self.raw.advance_apply();
        self.observe_role();
        Ok(())
    }

    /// The Ready loop with the durable write on the blocking pool, so this
    /// thread keeps accepting requests (which the next Ready batches).
    async fn process_ready(&mut self) -> Result<(), ConsensusError> {
        loop {
            let started = Instant::now();
            self.apply_elapsed = Duration::ZERO;
            let Some((ready, job)) = self.ready_begin()? else {
                break;
            };
            let entries = job.entries.len();
            let persist = if job.needs_sync() {
                let log = self.log.clone();
                let persist = tokio::task::spawn_blocking(move || job.run_timed(&log))
                    .await
                    .map_err(|e| ConsensusError::Raft(format!("persist task failed: {e}")))??;
                Some(persist)
            } else {
                // No fdatasync: a sled insert of a few bytes, cheaper inline
                // than the two thread wake-ups of the blocking pool.
                if !job.is_empty() {
                    job.run(&self.log)?;
                }
                None
            };
            self.ready_finish(ready)?;
            self.note_ready(ReadyBreakdown {
                total: started.elapsed(),
                persist,
                apply: self.apply_elapsed,
                entries,
            });
        }
        self.issue_held_reads();
        self.release_reads();
        self.step_down_if_removed();
        Ok(())
    }

    /// Records one Ready's timings and warns, at most once per
    /// [`SLOW_READY_LOG_INTERVAL`], when it was slow.
    fn note_ready(&mut self, ready: ReadyBreakdown) {
        if !self.timings.record(&ready) {
            return;
        }
        let now = Instant::now();
        if self
            .slow_ready_logged_at
            .is_some_and(|at| now.duration_since(at) < SLOW_READY_LOG_INTERVAL)
        {
            return;
        }
        self.slow_ready_logged_at = Some(now);
        // Tenths of a millisecond: enough to tell the disk from the rest.
        let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
        tracing::warn!(
            node = self.config.id,
            total_ms = ms(ready.total),
            persist_ms = ready.persist.map(ms),
            apply_ms = ms(ready.apply),
            entries = ready.entries,
            slow_readys_total = self.timings.slow_readys(),
            "slow Raft Ready: every write behind it waited as long (persist = log write + \
             fdatasync, apply = state machine, the rest = thread hand-offs and sending)"
        );
    }

    /// The same loop with the write done inline: for the deterministic
    /// simulation, where nothing may depend on thread scheduling.
    fn process_ready_sync(&mut self) -> Result<(), ConsensusError> {
        while let Some((ready, job)) = self.ready_begin()? {
            if !job.is_empty() {
                job.run(&self.log)?;
            }
            self.ready_finish(ready)?;
        }
        self.issue_held_reads();
        self.release_reads();
        self.step_down_if_removed();
        Ok(())
    }

    fn compaction_point(&self) -> Option<u64> {
        let first = self.log.first_index().ok()?;
        let behind = self.applied.saturating_sub(first);
        if behind < self.config.compact_threshold {
            return None;
        }
        let to = self
            .applied
            .saturating_sub(self.config.compact_keep)
            .min(first.saturating_add(MAX_COMPACT_PER_READY));
        (to > first).then_some(to)
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), ConsensusError> {
        let index = snapshot.get_metadata().get_index();
        tracing::info!(node = self.config.id, index, "installing snapshot");
        self.sm.restore(snapshot)?;
        self.log.apply_snapshot(snapshot)?;
        self.applied = index;
        self.lease.note_applied(index);
        Ok(())
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), ConsensusError> {
        if entries.is_empty() {
            return Ok(());
        }
        let ctx = ApplyContext {
            node_id: self.config.id,
            is_leader: self.raw.raft.state == StateRole::Leader,
            term: self.raw.raft.term,
        };
        // Normal entries go to the state machine in runs; a membership change
        // splits the run because it must take effect in log order.
        let mut run: Vec<&Entry> = Vec::new();
        for entry in &entries {
            match entry.get_entry_type() {
                EntryType::EntryNormal => run.push(entry),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_run(ctx, &run)?;
                    run.clear();
                    let change = self.apply_conf_change(entry)?;
                    self.apply_run_with(ctx, &[entry], &[change])?;
                }
            }
        }
        self.apply_run(ctx, &run)
    }

    fn apply_run(&mut self, ctx: ApplyContext, run: &[&Entry]) -> Result<(), ConsensusError> {
        self.apply_run_with(ctx, run, &[None])
    }

    fn apply_run_with(
        &mut self,
        ctx: ApplyContext,
        run: &[&Entry],
        conf: &[Option<ConfChangeV2>],
    ) -> Result<(), ConsensusError> {
        if run.is_empty() {
            return Ok(());
        }
        let changes: Vec<Option<ConfChangeV2>> = (0..run.len())
            .map(|i| conf.get(i).cloned().flatten())
            .collect();
        let committed: Vec<Committed<'_>> = run
            .iter()
            .zip(changes.iter())
            .map(|(e, change)| Committed {
                index: e.index,
                term: e.term,
                data: if e.get_entry_type() == EntryType::EntryNormal {
                    &e.data
                } else {
                    &[]
                },
                conf_change: change.as_ref(),
            })
            .collect();
        let started = Instant::now();
        let outputs = self.sm.apply(ctx, &committed);
        self.apply_elapsed += started.elapsed();
        let outputs = outputs?;
        debug_assert_eq!(
            outputs.len(),
            run.len(),
            "state machine must return one output per entry"
        );
        for (entry, output) in run.iter().zip(outputs) {
            if entry.get_entry_type() != EntryType::EntryNormal {
                continue;
            }
            if let Some(seq) = self.own_seq(&entry.context) {
                if let Some(reply) = self.proposals.remove(&seq) {
                    let _ = reply.send(Ok(output));
                }
            }
        }
        if let Some(last) = run.last() {
            assert!(
                last.index >= self.applied,
                "applied index must not go backwards"
            );
            self.applied = last.index;
            self.lease.note_applied(self.applied);
        }
        Ok(())
    }

    /// Applies a membership change; returns it when it took effect.
    fn apply_conf_change(&mut self, entry: &Entry) -> Result<Option<ConfChangeV2>, ConsensusError> {
        let change = if entry.get_entry_type() == EntryType::EntryConfChangeV2 {
            ConfChangeV2::parse_from_bytes(&entry.data)
                .map_err(|e| ConsensusError::Raft(e.to_string()))?
        } else {
            use raft_proto::ConfChangeI as _;
            raft::eraftpb::ConfChange::parse_from_bytes(&entry.data)
                .map_err(|e| ConsensusError::Raft(e.to_string()))?
                .into_v2()
        };
        let result = self.raw.apply_conf_change(&change);
        let seq = self.own_seq(&entry.context);
        match result {
            Ok(cs) => {
                self.log.set_conf_state(&cs)?;
                self.hand_off_if_removed();
                tracing::info!(node = self.config.id, voters = ?cs.voters, learners = ?cs.learners, "membership changed");
                if let Some(reply) = seq.and_then(|s| self.conf_changes.remove(&s)) {
                    let _ = reply.send(Ok(cs));
                }
                Ok(Some(change))
            }
            Err(e) => {
                // An invalid change is rejected identically on every node.
                tracing::warn!(error = %e, "membership change rejected");
                if let Some(reply) = seq.and_then(|s| self.conf_changes.remove(&s)) {
                    let _ = reply.send(Err(e.into()));
                }
                Ok(None)
            }
        }
    }

    fn release_reads(&mut self) {
        let applied = self.applied;
        let mut i = 0;
        while i < self.reads_ready.len() {
            if self.reads_ready[i].0 <= applied {
                let (index, reply) = self.reads_ready.swap_remove(i);
                let _ = reply.send(Ok(index));
            } else {
                i += 1;
            }
        }
    }

    fn publish_status(&self) {
        let raft = &self.raw.raft;
        let cs = raft.prs().conf().to_conf_state();
        let (progress, recently_active) = if raft.state == StateRole::Leader {
            (
                raft.prs().iter().map(|(id, p)| (*id, p.matched)).collect(),
                raft.prs()
                    .iter()
                    .filter(|(_, p)| p.recent_active)
                    .map(|(id, _)| *id)
                    .collect(),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let status = RaftStatus {
            id: self.config.id,
            role: raft.state.into(),
            leader_id: raft.leader_id,
            term: raft.term,
            commit_index: raft.raft_log.committed,
            applied_index: self.applied,
            last_index: raft.raft_log.last_index(),
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
            progress,
            recently_active,
            running: !self.stopped,
        };
        if let Ok(mut s) = self.status.lock() {
            *s = status;
        }
    }
}

impl<O: Send + 'static> crate::PeerReporter for RaftHandle<O> {
    fn unreachable(&self, peer: u64) {
        self.report_unreachable(peer);
    }

    fn snapshot_sent(&self, peer: u64, delivered: bool) {
        self.report_snapshot(peer, delivered);
    }
}

/// A state machine with no state of its own: it records the applied index,
/// as the trait requires, and nothing else. For measuring and testing the
/// driver alone (`benches/core.rs`, this module's tests).
#[derive(Debug)]
pub struct AppliedIndexOnly(pub Store);

impl StateMachine for AppliedIndexOnly {
    type Output = ();

    fn apply(
        &mut self,
        _ctx: ApplyContext,
        entries: &[Committed<'_>],
    ) -> Result<Vec<()>, ConsensusError> {
        let mut batch = synapse_storage::ApplyBatch::default();
        if let Some(last) = entries.last() {
            batch.set_applied(last.index);
        }
        self.0.commit_apply(batch)?;
        Ok(vec![(); entries.len()])
    }

    fn restore(&mut self, _snapshot: &Snapshot) -> Result<(), ConsensusError> {
        Ok(())
    }
}

/// The first term or index of `m` (or of its entries) beyond what a node
/// accepts (`MAX_RAFT_TERM`, `MAX_RAFT_INDEX`), named for the log line.
fn out_of_range(m: &Message) -> Option<&'static str> {
    use synapse_storage::{MAX_RAFT_INDEX, MAX_RAFT_TERM};
    if m.term > MAX_RAFT_TERM {
        return Some("term");
    }
    if m.log_term > MAX_RAFT_TERM {
        return Some("log_term");
    }
    if m.index > MAX_RAFT_INDEX || m.commit > MAX_RAFT_INDEX {
        return Some("index");
    }
    let snap = m.get_snapshot().get_metadata();
    if snap.term > MAX_RAFT_TERM || snap.index > MAX_RAFT_INDEX {
        return Some("snapshot");
    }
    if m.entries
        .iter()
        .any(|e| e.term > MAX_RAFT_TERM || e.index > MAX_RAFT_INDEX)
    {
        return Some("entry");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{ConfChangeSingle, ConfChangeType};
    use synapse_storage::{StoreOptions, MAX_RAFT_INDEX, MAX_RAFT_TERM};

    struct NoNetwork;

    impl Transport for NoNetwork {
        fn send(&self, _messages: Vec<Message>) {}
    }

    fn add_learner(id: u64) -> ConfChangeV2 {
        let mut single = ConfChangeSingle::default();
        single.set_change_type(ConfChangeType::AddLearnerNode);
        single.node_id = id;
        let mut change = ConfChangeV2::default();
        change.set_changes(vec![single].into());
        change
    }

    /// A temporary sled whose sync does no I/O (simulation store).
    fn sim_store(dir: &tempfile::TempDir) -> Store {
        let opts = StoreOptions {
            simulation: true,
            ..Default::default()
        };
        Store::open(dir.path(), opts).expect("store")
    }

    /// Panics on the first entry with data, like raft-rs on a storage
    /// read that fails.
    struct PanicsOnApply;

    impl StateMachine for PanicsOnApply {
        type Output = ();

        fn apply(
            &mut self,
            _ctx: ApplyContext,
            entries: &[Committed<'_>],
        ) -> Result<Vec<()>, ConsensusError> {
            assert!(
                entries.iter().all(|e| e.data.is_empty()),
                "planted panic inside the driver loop"
            );
            Ok(vec![(); entries.len()])
        }

        fn restore(&mut self, _snapshot: &Snapshot) -> Result<(), ConsensusError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_driver_that_panics_reports_itself_stopped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), StoreOptions::default()).expect("store");
        let (handle, join) = spawn_driver(
            RaftConfig::cluster_member(1, vec![1]),
            store,
            PanicsOnApply,
            Arc::new(NoNetwork),
        )
        .expect("driver");
        assert!(handle.status().running);
        let outcome = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            handle.propose(b"boom".to_vec()),
        )
        .await
        .expect("the proposal resolves once the driver is gone");
        assert!(outcome.is_err(), "no outcome from a dead driver");
        assert!(join.await.expect_err("the task panicked").is_panic());
        assert!(
            !handle.status().running,
            "a panicked driver reads as stopped"
        );
    }

    /// Routes messages between drivers spawned on one runtime, keeping a
    /// copy of each for the test to inspect.
    #[derive(Default)]
    struct Loopback {
        handles: std::sync::OnceLock<Vec<RaftHandle<()>>>,
        sent: Mutex<Vec<Message>>,
    }

    impl Transport for Loopback {
        fn send(&self, messages: Vec<Message>) {
            let Some(handles) = self.handles.get() else {
                return;
            };
            for m in messages {
                self.sent.lock().expect("sent").push(m.clone());
                let to = usize::try_from(m.to).expect("id") - 1;
                let _ = handles[to].step(m);
            }
        }
    }

    /// The running driver's timer, not the simulation's tick, announces a
    /// commit that no append carried: each follower gets an empty append
    /// saying so, and applies the write without another write or a
    /// heartbeat. Heartbeats go out every 9 ticks of 100 ms, so one landing
    /// within the 1 ms delay is rare; of three writes, one announcement
    /// per follower is asked for.
    #[tokio::test]
    async fn the_running_driver_announces_a_held_back_commit_when_due() {
        let net = Arc::new(Loopback::default());
        let (mut handles, mut dirs) = (Vec::new(), Vec::new());
        for id in 1..=3u64 {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Store::open(dir.path(), StoreOptions::default()).expect("store");
            let mut config = RaftConfig::cluster_member(id, vec![1, 2, 3]);
            config.election_tick = 10;
            config.heartbeat_tick = 9;
            let (handle, _join) =
                spawn_driver(config, store.clone(), AppliedIndexOnly(store), net.clone())
                    .expect("driver");
            handles.push(handle);
            dirs.push(dir);
        }
        net.handles.set(handles.clone()).ok().expect("set once");
        let deadline = Instant::now() + Duration::from_secs(60);
        let leader = loop {
            assert!(Instant::now() < deadline, "no leader elected");
            if let Some(h) = handles.iter().find(|h| h.status().role == Role::Leader) {
                break h.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut announced_to = std::collections::HashSet::new();
        for write in 0..3u8 {
            leader.propose(vec![write]).await.expect("committed");
            let index = leader.status().commit_index;
            // Every node applies it with nothing else written.
            for h in &handles {
                while h.status().applied_index < index {
                    assert!(Instant::now() < deadline, "a node never applied {index}");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            let sent = net.sent.lock().expect("sent").clone();
            for m in sent.iter().filter(|m| {
                m.get_msg_type() == MessageType::MsgAppend
                    && m.entries.is_empty()
                    && m.commit >= index
            }) {
                announced_to.insert(m.to);
            }
        }
        assert_eq!(announced_to.len(), 2, "announced to {announced_to:?}");
        for h in &handles {
            h.stop().await;
        }
    }

    /// A one-voter cluster on a simulation store in `dir`.
    fn sole_voter(dir: &tempfile::TempDir) -> SimDriver<AppliedIndexOnly, NoNetwork> {
        let store = sim_store(dir);
        SimDriver::new(
            RaftConfig::cluster_member(1, vec![1]),
            store.clone(),
            AppliedIndexOnly(store),
            Arc::new(NoNetwork),
        )
        .expect("driver")
    }

    /// A read that reaches a new leader before the entry of its term has
    /// committed is answered once it has, not dropped (raft-rs 0.7 ignores
    /// such a ReadIndex, and the read used to time out after
    /// `read_timeout`: seen as "no leader elected" right after a restart).
    #[test]
    fn a_read_before_the_new_leaders_first_commit_is_held_not_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = sole_voter(&dir);
        assert_eq!(d.status().role, Role::Leader, "a sole voter leads at once");
        let mut read = d.read_index();
        assert!(
            read.try_recv().is_err(),
            "answered before anything committed"
        );
        for _ in 0..10 {
            d.process().expect("process");
        }
        let index = read
            .try_recv()
            .expect("the read was answered")
            .expect("the read succeeded");
        assert!(
            index >= 2,
            "read index {index} covers the leader's first entry"
        );
    }

    #[test]
    fn a_second_membership_change_while_one_is_unapplied_is_refused_not_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = sole_voter(&dir);
        for _ in 0..100 {
            d.tick();
            d.process().expect("process");
            if d.status().role == Role::Leader && d.status().applied_index >= 2 {
                break;
            }
        }
        assert_eq!(d.status().role, Role::Leader, "single node elects itself");

        let mut first = d.change_membership(add_learner(2));
        let mut second = d.change_membership(add_learner(3));
        match second.try_recv() {
            Ok(Err(ConsensusError::MembershipChangePending)) => {}
            other => panic!("second change while the first is unapplied: {other:?}"),
        }
        for _ in 0..10 {
            d.process().expect("process");
        }
        let conf = first
            .try_recv()
            .expect("first change answered")
            .expect("first change applied");
        assert_eq!(conf.learners, vec![2]);
        // Once applied, the next change goes through.
        let mut third = d.change_membership(add_learner(3));
        for _ in 0..10 {
            d.process().expect("process");
        }
        let conf = third
            .try_recv()
            .expect("third change answered")
            .expect("third change applied");
        assert_eq!(conf.learners, vec![2, 3]);
    }

    /// Collects what a node sends, for a hand-pumped network.
    #[derive(Default)]
    struct Outbox(Mutex<Vec<Message>>);

    impl Transport for Outbox {
        fn send(&self, messages: Vec<Message>) {
            self.0.lock().expect("outbox").extend(messages);
        }
    }

    struct Trio {
        nodes: Vec<SimDriver<AppliedIndexOnly, Outbox>>,
        outboxes: Vec<Arc<Outbox>>,
        stores: Vec<Store>,
        lease_reads: bool,
        commit_announce_delay: Duration,
        _dirs: Vec<tempfile::TempDir>,
    }

    fn trio_node(
        id: u64,
        store: &Store,
        outbox: &Arc<Outbox>,
        lease_reads: bool,
        commit_announce_delay: Duration,
    ) -> SimDriver<AppliedIndexOnly, Outbox> {
        let mut config = RaftConfig::cluster_member(id, vec![1, 2, 3]);
        config.lease_reads = lease_reads;
        config.commit_announce_delay = commit_announce_delay;
        // Node 1 times out first, so it leads.
        config.min_election_tick = if id == 1 { 10 } else { 15 };
        config.max_election_tick = config.min_election_tick + 1;
        let mut node = SimDriver::new(
            config,
            store.clone(),
            AppliedIndexOnly(store.clone()),
            outbox.clone(),
        )
        .expect("driver");
        node.set_nonce(id);
        node
    }

    impl Trio {
        fn new(lease_reads: bool) -> Trio {
            Trio::with_commit_announce_delay(lease_reads, DEFAULT_COMMIT_ANNOUNCE_DELAY)
        }

        fn with_commit_announce_delay(lease_reads: bool, commit_announce_delay: Duration) -> Trio {
            let (mut nodes, mut outboxes, mut dirs) = (Vec::new(), Vec::new(), Vec::new());
            let mut stores = Vec::new();
            for id in 1..=3u64 {
                let dir = tempfile::tempdir().expect("tempdir");
                let store = sim_store(&dir);
                let outbox = Arc::new(Outbox::default());
                nodes.push(trio_node(
                    id,
                    &store,
                    &outbox,
                    lease_reads,
                    commit_announce_delay,
                ));
                stores.push(store);
                outboxes.push(outbox);
                dirs.push(dir);
            }
            Trio {
                nodes,
                outboxes,
                stores,
                lease_reads,
                commit_announce_delay,
                _dirs: dirs,
            }
        }

        /// Node `i` restarts on its disk: raft's memory and waiters are gone.
        fn restart(&mut self, i: usize) {
            self.outboxes[i].0.lock().expect("outbox").clear();
            let id = u64::try_from(i).expect("index") + 1;
            self.nodes[i] = trio_node(
                id,
                &self.stores[i],
                &self.outboxes[i],
                self.lease_reads,
                self.commit_announce_delay,
            );
        }

        fn take_sent(&self, i: usize) -> Vec<Message> {
            std::mem::take(&mut *self.outboxes[i].0.lock().expect("outbox"))
        }

        /// Processes and delivers until no node has anything to send.
        fn settle(&mut self) {
            for _ in 0..1000 {
                let mut sent = Vec::new();
                for (node, outbox) in self.nodes.iter_mut().zip(&self.outboxes) {
                    node.process().expect("process");
                    sent.append(&mut outbox.0.lock().expect("outbox"));
                }
                if sent.is_empty() {
                    return;
                }
                for m in sent {
                    let to = usize::try_from(m.to).expect("id") - 1;
                    self.nodes[to].step(m);
                }
            }
            panic!("the trio never settled");
        }

        fn elect_node_1(&mut self) -> u64 {
            for _ in 0..40 {
                for node in &mut self.nodes {
                    node.tick();
                }
                self.settle();
                let s = self.nodes[0].status();
                if s.role == Role::Leader && s.applied_index >= 1 {
                    return s.term;
                }
            }
            panic!("node 1 was not elected");
        }

        fn read_on(&mut self, i: usize) -> u64 {
            let mut reply = self.nodes[i].read_index();
            self.settle();
            reply
                .try_recv()
                .expect("read answered")
                .expect("read index")
        }
    }

    fn applied(trio: &Trio) -> [u64; 3] {
        [0, 1, 2].map(|i| trio.nodes[i].status().applied_index)
    }

    /// Writes on the leader; returns its applied index once committed.
    fn write(trio: &mut Trio, data: &[u8]) -> u64 {
        let mut reply = trio.nodes[0].propose(data.to_vec());
        trio.settle();
        reply.try_recv().expect("answered").expect("committed");
        trio.nodes[0].status().applied_index
    }

    #[test]
    fn a_held_back_commit_rides_on_the_next_append_or_goes_out_when_due() {
        let mut trio = Trio::new(false);
        trio.elect_node_1();
        let first = write(&mut trio, b"a");
        // Committed on the leader; no message of its own told the followers.
        let [_, f2, f3] = applied(&trio);
        assert!(
            f2 < first && f3 < first,
            "followers applied {f2}, {f3} of {first}"
        );
        // The next write's append carries it.
        let second = write(&mut trio, b"b");
        let [_, f2, f3] = applied(&trio);
        assert!(
            f2 >= first && f3 >= first,
            "followers applied {f2}, {f3} of {first}"
        );
        assert!(f2 < second && f3 < second);
        // With no further write, the announcement goes out when due (the
        // simulation's clock is its ticks) as an append, not a heartbeat.
        trio.nodes[0].tick();
        trio.nodes[0].process().expect("process");
        let sent = trio.take_sent(0);
        for peer in [2, 3] {
            assert!(
                sent.iter().any(|m| m.to == peer
                    && m.get_msg_type() == MessageType::MsgAppend
                    && m.commit >= second),
                "no announcement to {peer}: {sent:?}"
            );
        }
        for m in sent {
            let to = usize::try_from(m.to).expect("id") - 1;
            trio.nodes[to].step(m);
        }
        trio.settle();
        assert_eq!(applied(&trio), [second; 3]);
        // Nothing is left to announce: the next tick sends no append.
        trio.nodes[0].tick();
        trio.nodes[0].process().expect("process");
        assert!(trio
            .take_sent(0)
            .iter()
            .all(|m| m.get_msg_type() != MessageType::MsgAppend));
    }

    #[test]
    fn with_no_announce_delay_every_commit_is_sent_at_once() {
        let mut trio = Trio::with_commit_announce_delay(false, Duration::ZERO);
        trio.elect_node_1();
        let first = write(&mut trio, b"a");
        assert_eq!(applied(&trio), [first; 3]);
    }

    #[test]
    fn a_completed_read_index_round_grants_the_leader_alone_a_lease() {
        let mut trio = Trio::new(true);
        let term = trio.elect_node_1();
        assert_eq!(trio.nodes[0].leased_term(), None, "no round yet");
        trio.read_on(0);
        assert_eq!(trio.nodes[0].leased_term(), Some(term));
        // A follower's read goes through the leader and grants nothing.
        trio.read_on(1);
        assert_eq!(trio.nodes[1].leased_term(), None);
        assert_eq!(trio.nodes[2].leased_term(), None);
    }

    #[test]
    fn a_leadership_transfer_ends_the_lease_before_timeout_now_leaves() {
        let mut trio = Trio::new(true);
        let term = trio.elect_node_1();
        trio.read_on(0);
        assert_eq!(trio.nodes[0].leased_term(), Some(term));
        trio.nodes[0].transfer_leader(2);
        // Process the leader only: its MsgTimeoutNow is in the outbox,
        // not yet delivered, and the lease is already gone.
        trio.nodes[0].process().expect("process");
        let queued = trio.outboxes[0].0.lock().expect("outbox").clone();
        assert!(
            queued
                .iter()
                .any(|m| m.get_msg_type() == MessageType::MsgTimeoutNow),
            "the transfer target was caught up, so MsgTimeoutNow is queued: {queued:?}"
        );
        assert_eq!(trio.nodes[0].leased_term(), None);
        trio.settle();
        assert_eq!(trio.nodes[1].status().role, Role::Leader);
        assert_eq!(trio.nodes[0].leased_term(), None, "a follower holds none");
        // The new leader earns its own lease with its own round.
        trio.read_on(1);
        assert_eq!(
            trio.nodes[1].leased_term(),
            Some(trio.nodes[1].status().term)
        );
    }

    #[test]
    fn with_lease_reads_off_no_lease_is_ever_granted() {
        let mut trio = Trio::new(false);
        trio.elect_node_1();
        trio.read_on(0);
        assert_eq!(trio.nodes[0].leased_term(), None);
    }

    #[test]
    fn after_an_abandoned_transfer_no_lease_is_granted_in_that_term() {
        let mut trio = Trio::new(true);
        let term = trio.elect_node_1();
        trio.read_on(0);
        trio.nodes[0].transfer_leader(2);
        trio.nodes[0].process().expect("process");
        // A slow link holds the MsgTimeoutNow back; the rest goes out.
        let (held, rest): (Vec<Message>, Vec<Message>) = trio
            .take_sent(0)
            .into_iter()
            .partition(|m| m.get_msg_type() == MessageType::MsgTimeoutNow);
        assert_eq!(held.len(), 1, "the target was caught up");
        for m in rest {
            let to = usize::try_from(m.to).expect("id") - 1;
            trio.nodes[to].step(m);
        }
        // raft-rs abandons the transfer after an election timeout.
        for _ in 0..12 {
            for node in &mut trio.nodes {
                node.tick();
            }
            trio.settle();
        }
        assert_eq!(trio.nodes[0].status().role, Role::Leader);
        assert_eq!(trio.nodes[0].status().term, term);
        trio.read_on(0);
        assert_eq!(
            trio.nodes[0].leased_term(),
            None,
            "a MsgTimeoutNow of this term is still out there"
        );
        // It still works when it lands: node 2 campaigns past the leases.
        for m in held {
            trio.nodes[1].step(m);
        }
        trio.settle();
        assert_eq!(trio.nodes[1].status().role, Role::Leader);
    }

    /// A message whose term or index raft-rs would overflow on (only damage
    /// or a hostile peer sends one) is dropped before raft-rs sees it: the
    /// follower keeps its term and leader, and the cluster keeps working.
    #[test]
    fn a_message_with_a_term_or_index_out_of_range_is_dropped() {
        let mut trio = Trio::new(false);
        let term = trio.elect_node_1();
        let forged = [
            (MessageType::MsgHeartbeat, u64::MAX, 0, 0),
            (MessageType::MsgRequestVote, MAX_RAFT_TERM + 1, 0, 0),
            (MessageType::MsgAppend, term, u64::MAX, 0),
            (MessageType::MsgHeartbeat, term, 0, MAX_RAFT_INDEX + 1),
        ];
        for (kind, forged_term, index, commit) in forged {
            let mut m = Message::default();
            m.set_msg_type(kind);
            m.from = 1;
            m.to = 2;
            m.term = forged_term;
            m.index = index;
            m.commit = commit;
            trio.nodes[1].step(m);
            trio.nodes[1].process().expect("process");
            let status = trio.nodes[1].status();
            assert_eq!(status.term, term, "{kind:?}: the term was adopted");
            assert_eq!(status.role, Role::Follower, "{kind:?}");
            assert!(
                trio.take_sent(1).is_empty(),
                "{kind:?}: nothing is answered to a dropped message"
            );
        }
        let entry = Entry {
            term: u64::MAX,
            index: 2,
            ..Default::default()
        };
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.from = 1;
        m.to = 2;
        m.term = term;
        m.entries = vec![entry].into();
        trio.nodes[1].step(m);
        trio.nodes[1].process().expect("process");
        assert!(trio.take_sent(1).is_empty(), "a forged entry is not acked");
        trio.settle();
        trio.read_on(0);
        assert_eq!(trio.nodes[0].status().role, Role::Leader);
        assert_eq!(trio.nodes[0].status().term, term);
    }

    #[test]
    fn a_restarted_node_refuses_votes_for_an_election_timeout() {
        let mut trio = Trio::new(true);
        let term = trio.elect_node_1();
        trio.restart(2);
        let status = trio.nodes[2].status();
        // Node 2, out of touch with the leader, asks node 3 for a pre-vote
        // with a log as long as node 3's: raft-rs alone would grant it.
        let mut ask = Message::default();
        ask.set_msg_type(MessageType::MsgRequestPreVote);
        ask.from = 2;
        ask.to = 3;
        ask.term = term + 1;
        ask.log_term = term;
        ask.index = status.last_index;
        let granted = |sent: Vec<Message>| {
            sent.iter()
                .any(|m| m.get_msg_type() == MessageType::MsgRequestPreVoteResponse && !m.reject)
        };
        trio.nodes[2].step(ask.clone());
        trio.nodes[2].process().expect("process");
        assert!(!granted(trio.take_sent(2)), "granted right after start");
        for _ in 0..10 {
            trio.nodes[2].tick();
        }
        trio.nodes[2].process().expect("process");
        trio.take_sent(2);
        trio.nodes[2].step(ask);
        trio.nodes[2].process().expect("process");
        assert!(
            granted(trio.take_sent(2)),
            "an election timeout after start it votes as raft-rs decides"
        );
    }
}
