//! The node's sled database: state machine tree (checkpoints, heads, request
//! ids, applied index, clock high water), plus handles to the Raft and audit
//! trees.
//!
//! # Layout of the "state" tree
//!
//! Everything the state machine writes lives in ONE tree so that one sled
//! `Batch` (atomic, also across a crash) covers a whole apply step, including
//! the applied index.
//!
//! | key | value |
//! |---|---|
//! | `h` skill `\0` instance `\0` | head: checksum ++ version u64 ++ hash |
//! | `s` skill `\0` instance `\0` slot(u64 BE) | `Checkpoint::encode()` of version ≡ slot (mod retention) |
//! | `r` skill `\0` instance `\0` request_id | checksum ++ `RequestRecord` |
//! | `m/applied` | checksum ++ u64 |
//! | `m/clock` | checksum ++ timestamp |
//! | `x` name | checksum ++ cluster metadata value |
//! | `v` revocation id | checksum ++ revocation (see `revocation.rs`) |
//!
//! Names never contain NUL (validated), so keys are unambiguous. Which
//! version a slot holds follows from the head (`store/ring.rs`). Snapshots
//! and stores written before the ring carry checkpoints under
//! `c` skill `\0` instance `\0` version(u64 BE) instead.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use crate::checkpoint::validate_names;
use crate::codec::{key_u64, open_value, seal_value, sha256, Reader, Writer};
use crate::error::corrupt;
use crate::raft_log::{load_bounds, LogBounds};
use crate::reclaim::{Reclaim, SegmentReclaimer, SledBarrier};
use crate::revocation::{
    decode_revocation, encode_revocation, revocation_key, validate_revocation, TAG_REVOKED,
};
use crate::{Checkpoint, Hash, RaftLog, StorageError, Timestamp, ZERO_HASH};

const TAG_HEAD: u8 = b'h';
const TAG_CHECKPOINT: u8 = b'c';
const TAG_REQUEST: u8 = b'r';
/// Replicated cluster metadata (member addresses, the root key): part of the
/// state tree so that snapshots carry it to new members.
const TAG_CLUSTER: u8 = b'x';
/// Longest cluster-metadata name and value; metadata is small by design.
pub const MAX_CLUSTER_META_NAME: usize = 128;
pub const MAX_CLUSTER_META_VALUE: usize = 64 * 1024;
const KEY_APPLIED: &[u8] = b"m/applied";
const KEY_CLOCK: &[u8] = b"m/clock";

pub(crate) const TREE_STATE: &str = "state";
pub(crate) const TREE_RAFT_LOG: &str = "raft_log";
pub(crate) const TREE_RAFT_META: &str = "raft_meta";
pub(crate) const TREE_AUDIT: &str = "audit";

/// Default number of versions kept per instance: enough for useful history
/// and time-travel reads, while bounding disk use per instance.
pub const DEFAULT_RETENTION_VERSIONS: u64 = 100;

/// Largest `retention_versions`: slot arithmetic (`head % slots + slots`)
/// stays far from overflow, and no instance reaches 2^48 versions (a
/// million writes a second for nine years), so "keep everything" is this.
pub const MAX_RETENTION_VERSIONS: u64 = 1 << 48;

/// Largest checkpoint version a head may name: far above any version an
/// instance reaches (one per write, from 1), so `version + 1` (the next
/// version, here and in the state machine) and `version + retention` never
/// overflow. A stored head past it is damage; a checkpoint past it is
/// refused at apply, so no head past it is ever written.
pub(crate) const MAX_CHECKPOINT_VERSION: u64 = u64::MAX / 2;

/// sled's page cache limit by default. sled's own default (1 GiB) is far
/// too much for the 2 vCPU VMs we target; the cache only speeds up reads of
/// hot pages and instance state is also cached by the actors above us.
pub const DEFAULT_CACHE_CAPACITY_BYTES: u64 = 256 * 1024 * 1024;

/// Smallest cache a store opens with: below about a megabyte sled evicts,
/// and pages back in, the leaves a single apply batch is still writing.
pub const MIN_CACHE_CAPACITY_BYTES: u64 = 1024 * 1024;

/// Largest cache a store opens with: more than any machine we target has,
/// so a value past it is a unit mistake (bytes given as MiB twice over).
pub const MAX_CACHE_CAPACITY_BYTES: u64 = 1 << 40;

const SNAPSHOT_DOMAIN: &[u8] = b"synapse.state-snapshot.v1";
const STATE_HASH_DOMAIN: &[u8] = b"synapse.state-hash.v1";

/// Options for `Store::open`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Versions kept per instance (default 100, minimum 1): the size of
    /// each instance's ring of slots. Opening an existing store with a
    /// different value rewrites its history once (`store/ring.rs`).
    pub retention_versions: u64,
    /// Keep the retention the data was written with, and use
    /// `retention_versions` only for a new store: for tools that inspect a
    /// node's data dir and must not rewrite its history.
    pub retention_as_stored: bool,
    /// sled's background flush interval. `None` (the default) turns it off:
    /// durability comes from explicit `Store::sync()` calls, one per Raft
    /// Ready, and a background flusher would only add competing I/O.
    pub flush_every_ms: Option<u64>,
    /// sled's page cache limit, in bytes, between `MIN_CACHE_CAPACITY_BYTES`
    /// and `MAX_CACHE_CAPACITY_BYTES`. sled counts pages at their size on
    /// disk, and keeps some state for every page, cached or not, so a
    /// node's memory is more than this (`benches/README.md` measures it).
    pub cache_capacity_bytes: u64,
    /// For deterministic simulation only: a temporary sled (deleted on drop)
    /// and a `sync()` that does nothing. A simulated crash there keeps the
    /// `Store` (it models the disk) and drops everything above it.
    pub simulation: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            retention_versions: DEFAULT_RETENTION_VERSIONS,
            retention_as_stored: false,
            flush_every_ms: None,
            cache_capacity_bytes: DEFAULT_CACHE_CAPACITY_BYTES,
            simulation: false,
        }
    }
}

/// The answer to "what did request X produce": lets retries be answered
/// without applying twice.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequestRecord {
    pub version: u64,
    pub hash: Hash,
    pub timestamp: Timestamp,
    pub reply: Vec<u8>,
}

impl RequestRecord {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(8 + 32 + 20 + 8 + self.reply.len());
        w.u64(self.version)
            .raw(&self.hash)
            .timestamp(&self.timestamp)
            .bytes(&self.reply);
        seal_value(w.as_slice())
    }

    fn decode(raw: &[u8]) -> Result<RequestRecord, StorageError> {
        let mut r = Reader::new(open_value(raw, "request record")?, "request record");
        let rec = RequestRecord {
            version: r.u64()?,
            hash: r.hash()?,
            timestamp: r.timestamp()?,
            reply: r.bytes()?.to_vec(),
        };
        r.finish()?;
        Ok(rec)
    }
}

/// Result of `Store::verify_chain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainReport {
    pub ok: bool,
    pub versions_checked: u64,
    pub oldest_version: u64,
    pub latest_version: u64,
    pub head_hash: Hash,
    pub problem: Option<String>,
}

/// Built by the state machine for one or more applied Raft entries, then
/// committed atomically by `Store::commit_apply`.
#[derive(Default, Debug, Clone)]
pub struct ApplyBatch {
    /// A checkpoint and the reply of its request record; `None` keeps no
    /// record (see [`ApplyBatch::put_checkpoint_unrecorded`]).
    /// Shared, so the state machine hands over what it also publishes to
    /// watchers without copying the state.
    puts: Vec<(Arc<Checkpoint>, Option<Vec<u8>>)>,
    applied: Option<u64>,
    high_water: Option<Timestamp>,
    /// name → Some(value) to set, None to delete.
    cluster_meta: Vec<(String, Option<Vec<u8>>)>,
    /// Revoked capability ids: (id, HLC stamp, reason).
    revocations: Vec<(Vec<u8>, Timestamp, String)>,
}

impl ApplyBatch {
    /// Puts the checkpoint as its instance's new head and records the
    /// `RequestRecord` for `cp.request_id` (if non-empty) with `reply`. At
    /// commit, the checkpoint takes the slot of version
    /// `cp.version - retention`, whose request record goes with it, so
    /// history and the request-id table stay bounded.
    /// The checkpoint's timestamp is also observed (clock high water).
    ///
    /// A checkpoint older than the instance's current head is ignored at
    /// commit (idempotent replay); validating version and parent hash against
    /// the head is the state machine's job.
    pub fn put_checkpoint(&mut self, cp: &Checkpoint, reply: &[u8]) {
        self.put_shared_checkpoint(Arc::new(cp.clone()), Some(reply.to_vec()));
    }

    /// [`ApplyBatch::put_checkpoint`] without a request record: for a write
    /// whose request id the leader generated. Nobody can retry with that
    /// id, so the record would only cost an insert now and a delete when
    /// the version is pruned, on every node.
    pub fn put_checkpoint_unrecorded(&mut self, cp: &Checkpoint) {
        self.put_shared_checkpoint(Arc::new(cp.clone()), None);
    }

    /// [`ApplyBatch::put_checkpoint`] (with `Some(reply)`) or
    /// [`ApplyBatch::put_checkpoint_unrecorded`] (with `None`) for a
    /// checkpoint the caller already holds shared: no copy of its state.
    pub fn put_shared_checkpoint(&mut self, cp: Arc<Checkpoint>, reply: Option<Vec<u8>>) {
        self.puts.push((cp, reply));
    }

    /// Records the Raft index this batch brings the state machine up to.
    pub fn set_applied(&mut self, index: u64) {
        self.applied = Some(index);
    }

    /// Raises the clock high-water mark (max of everything observed).
    pub fn observe_timestamp(&mut self, ts: Timestamp) {
        self.high_water = self.high_water.max(Some(ts));
    }

    /// Sets replicated cluster metadata (applied in the same atomic batch).
    pub fn set_cluster_meta(&mut self, name: &str, value: &[u8]) {
        self.cluster_meta
            .push((name.to_owned(), Some(value.to_vec())));
    }

    pub fn delete_cluster_meta(&mut self, name: &str) {
        self.cluster_meta.push((name.to_owned(), None));
    }

    /// Records a revoked capability id (see `revocation.rs`). Revocations are
    /// permanent: there is no un-revoke.
    pub fn revoke(&mut self, id: &[u8], timestamp: Timestamp, reason: &str) {
        self.revocations
            .push((id.to_vec(), timestamp, reason.to_owned()));
    }

    pub fn is_empty(&self) -> bool {
        self.puts.is_empty()
            && self.applied.is_none()
            && self.high_water.is_none()
            && self.cluster_meta.is_empty()
            && self.revocations.is_empty()
    }
}

pub(crate) struct Inner {
    /// Deletes compacted Raft log segments off the Ready loop's path; `None`
    /// in a simulation, which does it inline so that a seed replays. First
    /// so that it is dropped first: its queue drains while everything else
    /// is still open.
    reclaimer: Option<SegmentReclaimer>,
    dir: PathBuf,
    pub(crate) db: sled::Db,
    pub(crate) state: sled::Tree,
    pub(crate) raft_meta: sled::Tree,
    /// The audit trail's segment files (`crate::audit`).
    pub(crate) audit: Mutex<crate::audit::AuditLog>,
    retention: u64,
    /// sled's page cache limit this store was opened with.
    cache_capacity_bytes: u64,
    simulation: bool,
    /// sled's durability barrier, shared with `reclaimer`.
    sled_barrier: Arc<SledBarrier>,
    /// Serializes state-tree writers against whole-tree readers
    /// (`state_hash`, `snapshot_state`) and `latest()`, so they see one
    /// applied index, never half of one.
    apply_lock: RwLock<()>,
    /// Heads of recently used instances (`store/head_cache.rs`); written
    /// only under `apply_lock`.
    heads: HeadCache,
    /// Cached Raft log bounds; the mutex also serializes Raft log writers.
    pub(crate) raft_bounds: Mutex<LogBounds>,
    /// Simulated disk (durable image), simulation stores only.
    sim_disk: Mutex<crate::sim_disk::SimDisk>,
}

/// Poisoning only means another thread panicked while holding the lock; all
/// state guarded here is re-derivable or lives in sled, so carry on.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}
fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// One sled database per node. Cheap to clone (Arc inside). Send + Sync.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .field("retention", &self.inner.retention)
            .finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Head {
    version: u64,
    hash: Hash,
    timestamp: Timestamp,
}

/// What the state machine needs to validate the next checkpoint of an
/// instance: small and checksummed, so applying never depends on reading
/// (possibly damaged) state bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadInfo {
    pub version: u64,
    pub hash: Hash,
    pub timestamp: Timestamp,
}

fn encode_head(version: u64, hash: &Hash, timestamp: &Timestamp) -> Vec<u8> {
    let mut w = Writer::with_capacity(64);
    w.u64(version).raw(hash).timestamp(timestamp);
    seal_value(w.as_slice())
}

fn decode_head(raw: &[u8]) -> Result<Head, StorageError> {
    let mut r = Reader::new(open_value(raw, "head")?, "head");
    let head = Head {
        version: r.u64()?,
        hash: r.hash()?,
        timestamp: r.timestamp()?,
    };
    r.finish()?;
    if head.version > MAX_CHECKPOINT_VERSION {
        return Err(corrupt(format!(
            "head: version {} is out of range (at most {MAX_CHECKPOINT_VERSION})",
            head.version
        )));
    }
    Ok(head)
}

fn decode_u64_meta(raw: &[u8], what: &str) -> Result<u64, StorageError> {
    let mut r = Reader::new(open_value(raw, what)?, what);
    let v = r.u64()?;
    r.finish()?;
    Ok(v)
}

fn encode_timestamp(ts: &Timestamp) -> Vec<u8> {
    let mut w = Writer::with_capacity(20);
    w.timestamp(ts);
    seal_value(w.as_slice())
}

fn decode_timestamp(raw: &[u8]) -> Result<Timestamp, StorageError> {
    let mut r = Reader::new(open_value(raw, "clock")?, "clock");
    let ts = r.timestamp()?;
    r.finish()?;
    Ok(ts)
}

fn instance_prefix(tag: u8, skill: &str, instance: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(skill.len() + instance.len() + 3 + 8);
    k.push(tag);
    k.extend_from_slice(skill.as_bytes());
    k.push(0);
    k.extend_from_slice(instance.as_bytes());
    k.push(0);
    k
}

fn cluster_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(TAG_CLUSTER);
    k.extend_from_slice(name.as_bytes());
    k
}

fn head_key(skill: &str, instance: &str) -> Vec<u8> {
    instance_prefix(TAG_HEAD, skill, instance)
}

fn checkpoint_key(skill: &str, instance: &str, version: u64) -> Vec<u8> {
    let mut k = instance_prefix(TAG_CHECKPOINT, skill, instance);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn request_key(skill: &str, instance: &str, request_id: &str) -> Vec<u8> {
    let mut k = instance_prefix(TAG_REQUEST, skill, instance);
    k.extend_from_slice(request_id.as_bytes());
    k
}

/// Splits `tag skill \0 instance \0 rest` (tag already checked by caller).
fn split_instance_key(key: &[u8]) -> Option<(&str, &str, &[u8])> {
    let body = key.get(1..)?;
    let s_end = body.iter().position(|&b| b == 0)?;
    let (skill, rest) = body.split_at(s_end);
    let rest = &rest[1..];
    let i_end = rest.iter().position(|&b| b == 0)?;
    let (instance, rest) = rest.split_at(i_end);
    let rest = &rest[1..];
    let skill = std::str::from_utf8(skill).ok()?;
    let instance = std::str::from_utf8(instance).ok()?;
    if skill.is_empty() || instance.is_empty() {
        return None;
    }
    Some((skill, instance, rest))
}

/// Clears the head cache when dropped: after an apply whose writes may
/// have landed only in part (an error, a panic, a test's cut).
struct ClearOnDrop<'c>(&'c HeadCache);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.clear();
    }
}

/// What `stage_apply` returns: the pending writes, whether they must be
/// written atomically, and the head cache entries to publish after them.
type StagedApply<'t> = (Overlay<'t>, bool, HashMap<Vec<u8>, CachedHead>);

/// Pending writes of one `commit_apply`, readable before they are committed,
/// so several puts to one instance in one batch see each other.
struct Overlay<'t> {
    tree: &'t sled::Tree,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Keys in the order they were written (repeats included).
    order: Vec<Vec<u8>>,
}

impl<'t> Overlay<'t> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => Ok(self.tree.get(key)?.map(|v| v.to_vec())),
        }
    }
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.order.push(key.clone());
        self.writes.insert(key, Some(value));
    }
    fn remove(&mut self, key: Vec<u8>) {
        self.order.push(key.clone());
        self.writes.insert(key, None);
    }
    /// What `f` makes of the pending or stored value of `key`, without
    /// copying it (a checkpoint's state may be megabytes).
    fn peek<T>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>, StorageError> {
        match self.writes.get(key) {
            Some(Some(v)) => Ok(Some(f(v))),
            Some(None) => Ok(None),
            None => Ok(self.tree.get(key)?.map(|v| f(&v))),
        }
    }
    /// Writes every pending key in one atomic `sled::Batch`: for the rare
    /// apply that must not be cut part-way (`overwrites_a_head_it_writes`).
    fn write_atomically(self) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for (k, v) in self.writes {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Writes every pending key, one sled operation each, in the order of
    /// its last write. Not atomic like a `sled::Batch`, and does not need
    /// to be: sled recovers a prefix of its writes in order, so a crash
    /// leaves every key written after some point unwritten, and the caller
    /// writes the applied index last, so whatever is lost is re-applied
    /// (idempotently) from the Raft log. Readers of more than one key hold
    /// the apply lock, which the writer holds throughout. A `sled::Batch`
    /// cost two IO buffer writes on sled's thread pool per apply (it seals
    /// the buffer before and after the batch): the largest remaining share
    /// of a 1-client write's CPU once the Raft log left sled.
    ///
    /// Writes at most `limit` keys (`usize::MAX`: all; less only for the
    /// crash tests).
    fn write_in_order(self, limit: usize) -> Result<(), StorageError> {
        let mut seen = HashSet::new();
        let mut keys: Vec<&Vec<u8>> = self
            .order
            .iter()
            .rev()
            .filter(|k| seen.insert(*k))
            .collect();
        keys.reverse();
        for k in keys.into_iter().take(limit) {
            match self.writes.get(k) {
                Some(Some(v)) => {
                    self.tree.insert(k.as_slice(), v.as_slice())?;
                }
                Some(None) => {
                    self.tree.remove(k.as_slice())?;
                }
                None => {}
            }
        }
        Ok(())
    }
}

/// How long `Store::open` waits for sled's file lock. sled releases the lock
/// only when its last background I/O thread lets go of the file, which can be
/// a moment after the previous `Store` (and every `sled::Tree` handle from
/// `raw_tree`) was dropped; an in-process restart must not fail on that.
const OPEN_LOCK_WAIT: Duration = Duration::from_secs(5);
const OPEN_LOCK_POLL: Duration = Duration::from_millis(10);

/// What sled is opened with; its own function so that tests can see the
/// options arrive.
fn sled_config(dir: &Path, opts: &StoreOptions) -> sled::Config {
    sled::Config::new()
        .path(dir)
        .cache_capacity(opts.cache_capacity_bytes)
        .flush_every_ms(opts.flush_every_ms)
        .temporary(opts.simulation)
}

fn open_sled(dir: &Path, opts: &StoreOptions) -> Result<sled::Db, StorageError> {
    let deadline = Instant::now() + OPEN_LOCK_WAIT;
    loop {
        let result = sled_config(dir, opts).open();
        match result {
            // sled reports a held lock only as this message (ErrorKind::Other).
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(OPEN_LOCK_POLL);
            }
            other => return Ok(other?),
        }
    }
}

/// Whether `db` has a tree named `name` (without creating it, as
/// `open_tree` would): for migrations from older layouts.
pub(crate) fn has_tree(db: &sled::Db, name: &str) -> bool {
    db.tree_names()
        .iter()
        .any(|n| n.as_ref() == name.as_bytes())
}

impl Store {
    /// Opens (or creates) the database in `dir`. Waits up to
    /// `OPEN_LOCK_WAIT` for a previous instance in this process to release
    /// sled's file lock; another live `Store` on the same directory makes
    /// this fail after that wait.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store, StorageError> {
        if !(1..=MAX_RETENTION_VERSIONS).contains(&opts.retention_versions) {
            return Err(StorageError::Invalid(format!(
                "retention_versions must be between 1 and {MAX_RETENTION_VERSIONS}"
            )));
        }
        if !(MIN_CACHE_CAPACITY_BYTES..=MAX_CACHE_CAPACITY_BYTES)
            .contains(&opts.cache_capacity_bytes)
        {
            return Err(StorageError::Invalid(format!(
                "cache_capacity_bytes must be between {MIN_CACHE_CAPACITY_BYTES} and \
                 {MAX_CACHE_CAPACITY_BYTES}"
            )));
        }
        let db = open_sled(dir, &opts)?;
        Self::with_db(dir, db, opts)
    }

    fn with_db(dir: &Path, db: sled::Db, opts: StoreOptions) -> Result<Store, StorageError> {
        let state = db.open_tree(TREE_STATE)?;
        let raft_meta = db.open_tree(TREE_RAFT_META)?;
        // sled 0.34 keeps its whole log (all segments) in `<dir>/db`.
        let db_file = File::open(dir.join("db"))?;
        crate::audit::migrate_legacy_audit(dir, &db, &db_file, opts.simulation)?;
        let audit = crate::audit::AuditLog::open(dir, &db, opts.simulation)?;
        // Make the directory entries sled just created durable, once.
        File::open(dir)?.sync_all()?;
        let bounds = load_bounds(&db, &raft_meta, dir, opts.simulation)?;
        let sled_barrier = Arc::new(SledBarrier {
            db: db.clone(),
            db_file,
            blob_dir: dir.join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
        });
        let reclaimer = if opts.simulation {
            None
        } else {
            Some(SegmentReclaimer::start(sled_barrier.clone())?)
        };
        let stored = ring::stored_slots(&db);
        let retention = if opts.retention_as_stored {
            // Inspecting: never rewrite, read the ring as it was written.
            match stored {
                Some(slots) => slots,
                None if ring::holds_checkpoints(&state) => {
                    return Err(StorageError::Invalid(
                        "this data dir records no ring size (written before the ring, or a \
                         rewrite was cut short): start the node once to rewrite its history"
                            .into(),
                    ))
                }
                None => opts.retention_versions,
            }
        } else {
            ring::relayout(&db, &state, stored, opts.retention_versions)?;
            opts.retention_versions
        };
        Ok(Store {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                db,
                state,
                raft_meta,
                audit: Mutex::new(audit),
                retention,
                cache_capacity_bytes: opts.cache_capacity_bytes,
                simulation: opts.simulation,
                sled_barrier,
                reclaimer,
                apply_lock: RwLock::new(()),
                heads: HeadCache::new(HEAD_CACHE_ENTRIES),
                raft_bounds: Mutex::new(bounds),
                sim_disk: Mutex::new(Default::default()),
            }),
        })
    }

    fn sim_only(&self) -> Result<(), StorageError> {
        if self.inner.simulation {
            Ok(())
        } else {
            Err(StorageError::Invalid(
                "simulated disk operations need a simulation store".into(),
            ))
        }
    }

    /// Simulation only: from now on every `sync()` captures the durable
    /// image ([`crate::sim_disk`]); captures it once now.
    pub fn sim_track_durability(&self) -> Result<(), StorageError> {
        self.sim_only()?;
        let image = crate::sim_disk::capture(&self.inner.db)?;
        lock(&self.inner.sim_disk).image = Some(image);
        Ok(())
    }

    /// Simulation only, planted bug: `sync()` stops making anything durable.
    pub fn sim_set_skip_sync(&self, skip: bool) -> Result<(), StorageError> {
        self.sim_only()?;
        lock(&self.inner.sim_disk).skip_sync = skip;
        Ok(())
    }

    /// Simulation only: the syncs that captured an image so far.
    pub fn sim_syncs(&self) -> u64 {
        lock(&self.inner.sim_disk).syncs
    }

    /// Simulation only: a crash. Returns a new store in `dir` (a fresh
    /// temporary sled) holding exactly the last durable image; everything
    /// written after the last `sync()` is gone. Durability tracking and the
    /// skip-sync setting carry over. This store must be dropped by the caller.
    pub fn sim_crash(&self, dir: &Path) -> Result<Store, StorageError> {
        self.sim_only()?;
        let (image, skip_sync, syncs) = {
            let d = lock(&self.inner.sim_disk);
            let image = d.image.clone().ok_or_else(|| {
                StorageError::Invalid("durability tracking is off for this store".into())
            })?;
            (image, d.skip_sync, d.syncs)
        };
        let opts = StoreOptions {
            simulation: true,
            retention_versions: self.inner.retention,
            cache_capacity_bytes: self.inner.cache_capacity_bytes,
            ..Default::default()
        };
        lock(&self.inner.raft_bounds).wal.copy_durable_to(dir)?;
        lock(&self.inner.audit).copy_durable_to(dir)?;
        let db = open_sled(dir, &opts)?;
        crate::sim_disk::restore(&db, &image)?;
        let store = Self::with_db(dir, db, opts)?;
        *lock(&store.inner.sim_disk) = crate::sim_disk::SimDisk {
            image: Some(image),
            skip_sync,
            syncs,
        };
        Ok(store)
    }

    /// sled's page cache limit this store was opened with
    /// (`StoreOptions::cache_capacity_bytes`).
    pub fn cache_capacity_bytes(&self) -> u64 {
        self.inner.cache_capacity_bytes
    }

    /// Durability barrier. Only after this returns may anything written
    /// before it be acknowledged: sled (state, Raft metadata) and the Raft
    /// log's segment files.
    ///
    /// The Raft Ready loop does not call this: it uses `RaftLog::sync`,
    /// which syncs sled only when Raft metadata that must not be lost
    /// changed.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.sync_sled()?;
        self.sync_raft_wal()
    }

    /// sled's durability barrier ([`SledBarrier::sync`]).
    pub(crate) fn sync_sled(&self) -> Result<(), StorageError> {
        if self.inner.simulation {
            let mut d = lock(&self.inner.sim_disk);
            if d.image.is_some() && !d.skip_sync {
                d.image = Some(crate::sim_disk::capture(&self.inner.db)?);
                d.syncs += 1;
            }
            return Ok(());
        }
        self.inner.sled_barrier.sync()
    }

    /// Deletes compacted Raft log segments once sled's barrier has made
    /// their replacement durable: on the reclaim thread ([`crate::reclaim`]),
    /// or here, in log order, when its queue is full or this is a
    /// simulation.
    pub(crate) fn reclaim_log_segments(&self, reclaim: Reclaim) -> Result<(), StorageError> {
        match &self.inner.reclaimer {
            Some(reclaimer) => reclaimer.reclaim(reclaim, &self.inner.sled_barrier),
            None => {
                self.sync_sled()?;
                crate::wal::remove_segment_files(&reclaim.dir, &reclaim.paths)?;
                Ok(())
            }
        }
    }

    /// Waits until the compacted log segments handed to the reclaim thread
    /// so far are deleted. For tests and tools that look at the files.
    #[doc(hidden)]
    pub fn wait_for_log_reclaim(&self) {
        if let Some(reclaimer) = &self.inner.reclaimer {
            reclaimer.wait_idle();
        }
    }

    /// The Raft log's durability barrier: one fdatasync of its active
    /// segment (a simulation store records the synced length instead, unless
    /// its planted skip-sync bug is on).
    pub(crate) fn sync_raft_wal(&self) -> Result<(), StorageError> {
        if self.inner.simulation && lock(&self.inner.sim_disk).skip_sync {
            return Ok(());
        }
        // The fdatasync runs without the log's lock: the Raft driver takes
        // it on the node's runtime thread for every term lookup and every
        // append it sends or checks, and holding it across the sync stalled
        // that whole thread (actors, gRPC, the driver) for the sync's
        // length. Whatever changes the log meanwhile (another barrier, a
        // cut, a reset) is accounted for by `finish_sync`, which credits
        // only segments that are still the same file, uncut.
        crate::wal::sync_outside_lock(&self.inner.raft_bounds, |b| &mut b.wal)
    }

    /// The Raft log and metadata on this database.
    pub fn raft_log(&self) -> RaftLog {
        RaftLog {
            store: self.clone(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Test/diagnostic hook: raw access to a tree ("state", "raft_log",
    /// "raft_meta", "audit") so tests can corrupt stored bytes.
    #[doc(hidden)]
    pub fn raw_tree(&self, name: &str) -> Result<sled::Tree, StorageError> {
        match name {
            TREE_STATE => {
                // The caller may write head records behind the cache's back.
                self.inner.heads.disable();
                Ok(self.inner.state.clone())
            }
            TREE_RAFT_LOG => Err(StorageError::Invalid(
                "the raft log is kept in segment files, not a tree: use RaftLog::debug_record"
                    .into(),
            )),
            TREE_RAFT_META => Ok(self.inner.raft_meta.clone()),
            TREE_AUDIT => Err(StorageError::Invalid(
                "the audit trail is kept in segment files, not a tree: use Store::debug_audit_record"
                    .into(),
            )),
            other => Err(StorageError::Invalid(format!("unknown tree {other:?}"))),
        }
    }

    // ---------------------------------------------------------------- apply

    /// Applies a batch built by the state machine: validated as a whole
    /// first (nothing is written if any part is refused), then written key
    /// by key with the applied index last, under the apply lock (so
    /// multi-key readers see all of it or none). No fsync: the Raft log is
    /// the durable record; sled recovers a prefix of its writes, so after a
    /// crash either the applied index covers this batch and all of it is
    /// there, or entries after `applied_index()` are re-applied, and
    /// re-putting the same checkpoint overwrites it with identical bytes.
    pub fn commit_apply(&self, batch: ApplyBatch) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        let _guard = write(&self.inner.apply_lock);
        let (pending, atomic, heads) = self.stage_apply(&batch)?;
        // Some writes may land before an error or a panic: then what sled
        // holds is unknown, and the cache must forget.
        let forget = ClearOnDrop(&self.inner.heads);
        let written = if atomic {
            pending.write_atomically()
        } else {
            pending.write_in_order(usize::MAX)
        };
        if written.is_ok() {
            std::mem::forget(forget);
            self.inner.heads.publish(heads);
        }
        written
    }

    /// Tests: `commit_apply` as a crash cuts it, keeping what sled would
    /// recover, the first `keep` of its writes in order, or none of an
    /// atomic one. Returns whether it was cut (fewer writes kept than made).
    #[cfg(test)]
    pub(crate) fn commit_apply_cut(
        &self,
        batch: ApplyBatch,
        keep: usize,
    ) -> Result<bool, StorageError> {
        let _guard = write(&self.inner.apply_lock);
        let (pending, atomic, _) = self.stage_apply(&batch)?;
        // Like a crash: what the cut leaves in sled is not what was staged.
        let _forget = ClearOnDrop(&self.inner.heads);
        let total = pending.writes.len();
        if atomic {
            if keep >= total {
                pending.write_atomically()?;
            }
        } else {
            pending.write_in_order(keep)?;
        }
        Ok(keep < total)
    }

    /// Validates a whole batch and stages its writes (nothing written);
    /// also says whether they must be written atomically, and returns the
    /// head cache entries to publish once they are. The caller holds the
    /// apply lock.
    fn stage_apply(&self, batch: &ApplyBatch) -> Result<StagedApply<'_>, StorageError> {
        let mut pending = Overlay {
            tree: &self.inner.state,
            writes: BTreeMap::new(),
            order: Vec::new(),
        };
        // Heads this batch writes, newest last; they are also in `pending`.
        let mut staged: HashMap<Vec<u8>, CachedHead> = HashMap::new();
        let mut high_water = batch.high_water;
        let slots = self.inner.retention;
        let atomic = overwrites_a_head_it_writes(&batch.puts, slots);
        for (cp, reply) in &batch.puts {
            validate_names(&cp.skill, &cp.instance)?;
            if cp.version > MAX_CHECKPOINT_VERSION {
                return Err(StorageError::Invalid(format!(
                    "checkpoint {}/{} v{}: version out of range (at most {MAX_CHECKPOINT_VERSION})",
                    cp.skill, cp.instance, cp.version
                )));
            }
            // Never let an unsealed or damaged checkpoint into the chain.
            let Some(record) = cp.encode_if_sealed() else {
                return Err(StorageError::Invalid(format!(
                    "checkpoint {}/{} v{} does not match its hash",
                    cp.skill, cp.instance, cp.version
                )));
            };
            let hk = head_key(&cp.skill, &cp.instance);
            let prior = match staged
                .get(&hk)
                .copied()
                .or_else(|| self.inner.heads.get(&hk))
            {
                Some(known) => Some(known),
                None => pending
                    .get(&hk)?
                    .map(|raw| decode_head(&raw))
                    .transpose()?
                    .map(CachedHead::untracked),
            };
            if let Some(head) = prior.map(|p| p.head) {
                if cp.version < head.version {
                    debug!(
                        skill = %cp.skill, instance = %cp.instance,
                        version = cp.version, head = head.version,
                        "ignoring checkpoint older than head (replay)"
                    );
                    continue;
                }
            }
            let slot = slot_key(&cp.skill, &cp.instance, cp.version, slots);
            // The slot's occupant leaves the window; its request record is
            // removed first, so a crash that keeps only a prefix of these
            // writes never keeps the new record but loses track of the old
            // one's request record. Reading the occupant is skipped when the
            // head cache knows it has none.
            // With the cache off (the raw tree was handed out), always read.
            if !self.inner.heads.is_enabled()
                || CachedHead::occupant_may_have_request(prior.as_ref(), cp.version, slots)
            {
                drop_request_record_of_occupant(&mut pending, cp, &slot, slots)?;
            } else {
                self.inner.heads.note_occupant_read_skipped();
            }
            pending.put(slot, record);
            pending.put(hk.clone(), encode_head(cp.version, &cp.hash, &cp.timestamp));
            let head = Head {
                version: cp.version,
                hash: cp.hash,
                timestamp: cp.timestamp,
            };
            let with_request = reply.is_some() && !cp.request_id.is_empty();
            staged.insert(
                hk,
                CachedHead::after_apply(prior.as_ref(), head, with_request),
            );
            if let Some(reply) = reply.as_ref().filter(|_| !cp.request_id.is_empty()) {
                let rec = RequestRecord {
                    version: cp.version,
                    hash: cp.hash,
                    timestamp: cp.timestamp,
                    reply: reply.clone(),
                };
                pending.put(
                    request_key(&cp.skill, &cp.instance, &cp.request_id),
                    rec.encode(),
                );
            }
            high_water = high_water.max(Some(cp.timestamp));
        }
        for (name, value) in &batch.cluster_meta {
            if name.is_empty() || name.len() > MAX_CLUSTER_META_NAME {
                return Err(StorageError::Invalid(format!(
                    "cluster meta name `{name}` has a bad length"
                )));
            }
            match value {
                Some(v) if v.len() > MAX_CLUSTER_META_VALUE => {
                    return Err(StorageError::Invalid(format!(
                        "cluster meta `{name}` is too large"
                    )));
                }
                Some(v) => pending.put(cluster_key(name), seal_value(v)),
                None => pending.remove(cluster_key(name)),
            }
        }
        for (id, ts, reason) in &batch.revocations {
            validate_revocation(id, reason)?;
            pending.put(revocation_key(id), encode_revocation(ts, reason));
        }
        if let Some(ts) = high_water {
            let current = match pending.get(KEY_CLOCK)? {
                Some(raw) => decode_timestamp(&raw)?,
                None => Timestamp::default(),
            };
            if ts > current {
                pending.put(KEY_CLOCK.to_vec(), encode_timestamp(&ts));
            }
        }
        // Last: a crash that loses any write above also loses this one.
        if let Some(index) = batch.applied {
            pending.put(KEY_APPLIED.to_vec(), seal_value(&index.to_be_bytes()));
        }
        Ok((pending, atomic, staged))
    }

    /// The instance's chain head (version, hash, timestamp) from its small
    /// checksummed record, without reading the checkpoint body.
    pub fn head(&self, skill: &str, instance: &str) -> Result<Option<HeadInfo>, StorageError> {
        validate_names(skill, instance)?;
        Ok(self.inner.head_record(skill, instance)?.map(|h| HeadInfo {
            version: h.version,
            hash: h.hash,
            timestamp: h.timestamp,
        }))
    }

    /// Verifies a state snapshot (digest, every checkpoint hash, heads)
    /// without touching any store: check a backup before creating anything.
    pub fn verify_snapshot_data(data: &[u8]) -> Result<(), StorageError> {
        parse_and_validate_snapshot(data).map(|_| ())
    }

    /// The widest span of versions (newest − oldest + 1) any one instance
    /// has in a state snapshot (verified first): the retention that
    /// restores it without dropping history, holes included.
    pub fn snapshot_versions_per_instance(data: &[u8]) -> Result<u64, StorageError> {
        let mut most = 0u64;
        // (instance key prefix, oldest version); versions ascend per instance.
        let mut current: Option<(Vec<u8>, u64)> = None;
        for (k, _) in parse_and_validate_snapshot(data)? {
            if k.first() != Some(&TAG_CHECKPOINT) {
                continue;
            }
            let Some((instance, version)) = k
                .len()
                .checked_sub(8)
                .and_then(|n| Some((k[..n].to_vec(), key_u64(&k[n..])?)))
            else {
                continue;
            };
            let oldest = match &current {
                Some((prev, oldest)) if *prev == instance => *oldest,
                _ => version,
            };
            most = most.max(version.saturating_sub(oldest).saturating_add(1));
            current = Some((instance, oldest));
        }
        Ok(most)
    }

    /// Replicated cluster metadata by name (checksum verified).
    pub fn cluster_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        match self.inner.state.get(cluster_key(name))? {
            Some(raw) => Ok(Some(open_value(&raw, "cluster meta")?.to_vec())),
            None => Ok(None),
        }
    }

    /// Every cluster-metadata entry whose name starts with `prefix`.
    pub fn cluster_meta_prefix(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        let mut out = Vec::new();
        for item in self.inner.state.scan_prefix(cluster_key(prefix)) {
            let (k, v) = item?;
            let name = std::str::from_utf8(&k[1..])
                .map_err(|_| corrupt("cluster meta key is not UTF-8"))?
                .to_owned();
            out.push((name, open_value(&v, "cluster meta")?.to_vec()));
        }
        Ok(out)
    }

    /// Raft index the state machine has applied up to; 0 if none.
    pub fn applied_index(&self) -> Result<u64, StorageError> {
        match self.inner.state.get(KEY_APPLIED)? {
            Some(raw) => decode_u64_meta(&raw, "applied index"),
            None => Ok(0),
        }
    }

    /// Greatest timestamp ever applied (default if none). The clock service
    /// starts above it after a restart so timestamps never go backwards.
    pub fn clock_high_water(&self) -> Result<Timestamp, StorageError> {
        match self.inner.state.get(KEY_CLOCK)? {
            Some(raw) => decode_timestamp(&raw),
            None => Ok(Timestamp::default()),
        }
    }

    // ---------------------------------------------------------------- reads

    /// The instance's newest checkpoint, verified (`Corrupt` if its hash or
    /// the head record fails).
    pub fn latest(&self, skill: &str, instance: &str) -> Result<Option<Checkpoint>, StorageError> {
        validate_names(skill, instance)?;
        // Hold off writers between reading the head and its checkpoint: with
        // retention 1 a concurrent apply could prune the version we are
        // about to read, which would look like corruption.
        let _guard = read(&self.inner.apply_lock);
        let Some(head) = self.inner.head_record(skill, instance)? else {
            return Ok(None);
        };
        let cp = self
            .inner
            .get_retained(skill, instance, head.version, head.version)?
            .ok_or_else(|| {
                corrupt(format!(
                    "{skill}/{instance}: head points to missing version {}",
                    head.version
                ))
            })?;
        if cp.hash != head.hash {
            return Err(corrupt(format!(
                "{skill}/{instance}: head hash differs from checkpoint v{}",
                head.version
            )));
        }
        Ok(Some(cp))
    }

    /// One version, verified; `None` if it is not retained (outside the
    /// head's window, or a hole in it, which `damaged_versions` reports).
    /// A record in its slot that is not this version is `Corrupt`.
    pub fn get(
        &self,
        skill: &str,
        instance: &str,
        version: u64,
    ) -> Result<Option<Checkpoint>, StorageError> {
        validate_names(skill, instance)?;
        let _guard = read(&self.inner.apply_lock);
        match self.inner.head_record(skill, instance)? {
            Some(head) => self
                .inner
                .get_retained(skill, instance, version, head.version),
            None => Ok(None),
        }
    }

    /// Newest first, versions <= `before_version` (0 = from the latest), at
    /// most `limit`. Every returned checkpoint is verified.
    pub fn history(
        &self,
        skill: &str,
        instance: &str,
        before_version: u64,
        limit: usize,
    ) -> Result<Vec<Checkpoint>, StorageError> {
        validate_names(skill, instance)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let upper = if before_version == 0 {
            u64::MAX
        } else {
            before_version
        };
        // Under the apply lock, so the head and the slots agree.
        let _guard = read(&self.inner.apply_lock);
        let mut out = Vec::new();
        self.inner.walk_down(skill, instance, upper, |v, raw| {
            out.push(decode_checkpoint_at(raw, skill, instance, v)?);
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    /// Latest retained checkpoint with timestamp <= `ts` (time-travel reads).
    /// `None` if every retained version is newer than `ts`.
    pub fn at_or_before(
        &self,
        skill: &str,
        instance: &str,
        ts: Timestamp,
    ) -> Result<Option<Checkpoint>, StorageError> {
        validate_names(skill, instance)?;
        let _guard = read(&self.inner.apply_lock);
        // Timestamps strictly increase with the version, so the first match
        // walking backwards is the answer.
        let mut found = None;
        self.inner.walk_down(skill, instance, u64::MAX, |v, raw| {
            let cp = decode_checkpoint_at(raw, skill, instance, v)?;
            if cp.timestamp <= ts {
                found = Some(cp);
                return Ok(false);
            }
            Ok(true)
        })?;
        Ok(found)
    }

    /// Walks every retained version oldest → newest: each hash verifies,
    /// versions are consecutive, each parent_hash equals the previous
    /// checkpoint's hash, timestamps strictly increase, and the head record
    /// matches the newest. Chain problems are reported (the walk stops at the
    /// first one); `Err` only for I/O or invalid names.
    ///
    /// The oldest retained version's parent cannot be checked (its parent was
    /// pruned), so an instance with no checkpoints reports ok with zero
    /// versions checked.
    pub fn verify_chain(&self, skill: &str, instance: &str) -> Result<ChainReport, StorageError> {
        validate_names(skill, instance)?;
        let mut report = ChainReport {
            ok: true,
            versions_checked: 0,
            oldest_version: 0,
            latest_version: 0,
            head_hash: ZERO_HASH,
            problem: None,
        };
        let _guard = read(&self.inner.apply_lock);
        let head = match self.inner.state.get(head_key(skill, instance))? {
            None => None,
            Some(raw) => match decode_head(&raw) {
                Ok(h) => Some(h),
                Err(e) => {
                    return Ok(chain_problem(
                        report,
                        skill,
                        instance,
                        format!("head record: {e}"),
                    ));
                }
            },
        };
        let Some(head) = head else {
            let prefix = instance_prefix(TAG_SLOT, skill, instance);
            if self.inner.state.scan_prefix(&prefix).next().is_some() {
                return Ok(chain_problem(
                    report,
                    skill,
                    instance,
                    "checkpoints exist but the head record is missing".into(),
                ));
            }
            return Ok(report);
        };
        let mut prev: Option<Checkpoint> = None;
        let mut problem = None;
        for r in self.inner.retained_records(skill, instance, head.version)? {
            let cp = match decode_checkpoint_at(&r.raw, skill, instance, r.version) {
                Ok(cp) => cp,
                Err(e) => {
                    problem = Some(format!("version {}: {e}", r.version));
                    break;
                }
            };
            if let Some(p) = &prev {
                if cp.version != p.version + 1 {
                    problem = Some(format!("gap: version {} follows {}", cp.version, p.version));
                } else if cp.parent_hash != p.hash {
                    problem = Some(format!(
                        "version {}: parent_hash {} is not the hash of version {} ({})",
                        cp.version,
                        hex::encode(cp.parent_hash),
                        p.version,
                        hex::encode(p.hash)
                    ));
                } else if cp.timestamp <= p.timestamp {
                    problem = Some(format!(
                        "version {}: timestamp {:?} not after {:?}",
                        cp.version, cp.timestamp, p.timestamp
                    ));
                }
                if problem.is_some() {
                    break;
                }
            } else {
                report.oldest_version = cp.version;
            }
            report.versions_checked += 1;
            report.latest_version = cp.version;
            report.head_hash = cp.hash;
            prev = Some(cp);
        }
        if problem.is_none()
            && (head.version != report.latest_version || head.hash != report.head_hash)
        {
            problem = Some(format!(
                "head says v{} but newest retained checkpoint is v{}",
                head.version, report.latest_version
            ));
        }
        Ok(match problem {
            Some(p) => chain_problem(report, skill, instance, p),
            None => report,
        })
    }

    /// What `request_id` produced, if it was applied and is still retained.
    pub fn request(
        &self,
        skill: &str,
        instance: &str,
        request_id: &str,
    ) -> Result<Option<RequestRecord>, StorageError> {
        validate_names(skill, instance)?;
        match self
            .inner
            .state
            .get(request_key(skill, instance, request_id))?
        {
            Some(raw) => RequestRecord::decode(&raw).map(Some),
            None => Ok(None),
        }
    }

    /// SHA-256 over every instance's head (skill, instance, version, hash) in
    /// key order, plus the applied index. Equal on every node at equal
    /// applied index. Returns (applied index, hash, instance count).
    pub fn state_hash(&self) -> Result<(u64, Hash, u64), StorageError> {
        let _guard = read(&self.inner.apply_lock);
        let applied = self.applied_index()?;
        let mut h = Sha256::new();
        h.update(STATE_HASH_DOMAIN);
        let mut count = 0u64;
        for item in self.inner.state.scan_prefix([TAG_HEAD]) {
            let (k, v) = item?;
            let (skill, instance, rest) = split_instance_key(&k)
                .filter(|(_, _, rest)| rest.is_empty())
                .ok_or_else(|| corrupt("malformed head key"))?;
            debug_assert!(rest.is_empty());
            let head = decode_head(&v)?;
            let mut w = Writer::with_capacity(skill.len() + instance.len() + 56);
            w.bytes(skill.as_bytes())
                .bytes(instance.as_bytes())
                .u64(head.version)
                .raw(&head.hash);
            h.update(w.as_slice());
            count += 1;
        }
        h.update(applied.to_be_bytes());
        Ok((applied, h.finalize().into(), count))
    }

    // ------------------------------------------------------------ snapshots

    /// Full dump of the state tree for a Raft snapshot.
    ///
    /// Format: tag, applied index u64, entry count u64, then per entry
    /// length-prefixed key and value, then SHA-256 of everything before.
    pub fn snapshot_state(&self) -> Result<Vec<u8>, StorageError> {
        self.snapshot_state_with_index().map(|(_, data)| data)
    }

    /// Like `snapshot_state`, also returning the applied index the dump was
    /// taken at (consistent with the data: both read under the apply lock).
    pub(crate) fn snapshot_state_with_index(&self) -> Result<(u64, Vec<u8>), StorageError> {
        let _guard = read(&self.inner.apply_lock);
        let applied = self.applied_index()?;
        let mut w = Writer::default();
        w.raw(SNAPSHOT_DOMAIN).u64(applied);
        let count_pos = w.len();
        w.u64(0);
        let mut count = 0u64;
        // Checkpoints first, under their version keys (tag `c` sorts before
        // every other tag): the snapshot keeps the key-per-version layout,
        // so the receiver's ring size need not be the sender's.
        for item in self.inner.state.scan_prefix([TAG_HEAD]) {
            let (k, v) = item?;
            let (skill, instance, _) = split_instance_key(&k)
                .filter(|(_, _, rest)| rest.is_empty())
                .ok_or_else(|| corrupt("malformed head key"))?;
            let head = match decode_head(&v) {
                Ok(head) => head,
                Err(e) => {
                    // The raw head still goes into the dump (below), so the
                    // receiver refuses it; failing here would stop raft-rs,
                    // which treats a snapshot error as fatal.
                    warn!(skill, instance, error = %e, "snapshot: damaged head, its checkpoints left out");
                    continue;
                }
            };
            for r in self.inner.retained_records(skill, instance, head.version)? {
                w.bytes(&checkpoint_key(skill, instance, r.version))
                    .bytes(&r.raw);
                count += 1;
            }
        }
        for item in self.inner.state.iter() {
            let (k, v) = item?;
            if k.first() == Some(&TAG_SLOT) {
                continue;
            }
            debug_assert_ne!(k.first(), Some(&TAG_CHECKPOINT), "relayout at open");
            w.bytes(&k).bytes(&v);
            count += 1;
        }
        w.patch_u64(count_pos, count);
        let digest = sha256(w.as_slice());
        w.raw(&digest);
        Ok((applied, w.into_inner()))
    }

    /// Replaces the whole state tree with a dump from `snapshot_state`,
    /// keeping of each instance's versions what this store's retention
    /// keeps (the sender's may differ).
    ///
    /// Everything is verified BEFORE anything is touched: the dump's digest,
    /// every checkpoint hash (and that it sits under its own key), every
    /// checksummed record, that every head points at a present checkpoint
    /// with the same hash, and that the applied index matches. Any failure
    /// is `Corrupt` and local state is left untouched.
    ///
    /// The replacement is one sled `Batch` (removals of every local key not
    /// in the dump plus inserts of every dumped key), so it is atomic, also
    /// across a crash: never a mix of old and new state. The price is holding
    /// the whole batch in memory, which the dump already is.
    pub fn restore_state(&self, data: &[u8]) -> Result<(), StorageError> {
        let entries = into_ring(parse_and_validate_snapshot(data)?, self.inner.retention)?;
        let _guard = write(&self.inner.apply_lock);
        let mut batch = sled::Batch::default();
        for key in self.inner.state.iter().keys() {
            let key = key?;
            if entries
                .binary_search_by(|(k, _)| k.as_slice().cmp(&key))
                .is_err()
            {
                batch.remove(key);
            }
        }
        for (k, v) in entries {
            batch.insert(k, v);
        }
        let written = self.inner.state.apply_batch(batch);
        self.inner.heads.clear();
        written?;
        Ok(())
    }
}

/// Removes the request record of the version in `slot` that `cp` is about
/// to overwrite. The occupant's hash is not checked (it is being
/// overwritten); its request id is only followed if it names a version
/// below `cp` that belongs in this slot, and the request record found is
/// only dropped if it decodes and names that version, so a damaged id
/// cannot drop any other record (a request id re-used by a later version
/// keeps its record, too).
fn drop_request_record_of_occupant(
    pending: &mut Overlay<'_>,
    cp: &Checkpoint,
    slot: &[u8],
    slots: u64,
) -> Result<(), StorageError> {
    let Some(occupant) = pending.peek(slot, Checkpoint::peek_version_and_request_id)? else {
        return Ok(());
    };
    let (version, request_id) = match occupant {
        Ok((v, _)) if v == cp.version => return Ok(()),
        Ok((v, id)) if v < cp.version && v % slots == cp.version % slots => (v, id),
        Ok((v, _)) => {
            warn!(
                skill = %cp.skill, instance = %cp.instance, version = cp.version, occupant = v,
                "overwriting a slot that holds a version that does not belong there"
            );
            return Ok(());
        }
        Err(e) => {
            warn!(
                skill = %cp.skill, instance = %cp.instance, version = cp.version, error = %e,
                "overwriting a corrupt checkpoint; its request record (if any) stays"
            );
            return Ok(());
        }
    };
    if request_id.is_empty() {
        return Ok(());
    }
    let rk = request_key(&cp.skill, &cp.instance, &request_id);
    let names_occupant = pending.peek(&rk, |raw| {
        RequestRecord::decode(raw).is_ok_and(|rec| rec.version == version)
    })?;
    if names_occupant == Some(true) {
        pending.remove(rk);
    }
    Ok(())
}

/// Whether some instance gets at least `slots` puts in `puts`: then a slot
/// is overwritten while it holds the version the stored head names (with
/// one slot, every put does), and a crash after that write but before the
/// head's would leave the head pointing at a record that is gone. Such a
/// batch is written atomically instead of key by key.
fn overwrites_a_head_it_writes(puts: &[(Arc<Checkpoint>, Option<Vec<u8>>)], slots: u64) -> bool {
    if (puts.len() as u64) < slots {
        return false;
    }
    let mut per_instance: std::collections::HashMap<(&str, &str), u64> = Default::default();
    puts.iter().any(|(cp, _)| {
        let n = per_instance
            .entry((cp.skill.as_str(), cp.instance.as_str()))
            .or_default();
        *n += 1;
        *n >= slots
    })
}

fn chain_problem(
    mut report: ChainReport,
    skill: &str,
    instance: &str,
    problem: String,
) -> ChainReport {
    warn!(skill, instance, problem = %problem, "checkpoint chain verification failed");
    report.ok = false;
    report.problem = Some(problem);
    report
}

/// Decodes (verifying the hash) and checks that the checkpoint is the one
/// its key says, so a valid record copied under another key is caught.
fn decode_checkpoint_at(
    raw: &[u8],
    skill: &str,
    instance: &str,
    version: u64,
) -> Result<Checkpoint, StorageError> {
    let cp = Checkpoint::decode(raw)
        .map_err(|e| corrupt(format!("{skill}/{instance} v{version}: {e}")))?;
    if cp.skill != skill || cp.instance != instance || cp.version != version {
        return Err(corrupt(format!(
            "{skill}/{instance} v{version}: record is {}/{} v{}",
            cp.skill, cp.instance, cp.version
        )));
    }
    Ok(cp)
}

type KvList = Vec<(Vec<u8>, Vec<u8>)>;

/// A validated snapshot's entries as this store keeps them: checkpoints in
/// a ring of `slots` per instance, versions that fall out of that window
/// (and their request records) dropped, sorted by key. Checkpoints of an
/// instance without a head are unreachable and dropped too.
fn into_ring(entries: KvList, slots: u64) -> Result<KvList, StorageError> {
    let mut heads: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for (k, v) in &entries {
        if k.first() == Some(&TAG_HEAD) {
            heads.insert(k[1..].to_vec(), decode_head(v)?.version);
        }
    }
    let retained = |instance_key: &[u8], version: u64| {
        heads
            .get(instance_key)
            .is_some_and(|&head| version <= head && head - version < slots)
    };
    let mut out = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        match k.first() {
            Some(&TAG_CHECKPOINT) => {
                let (skill, instance, rest) = split_instance_key(&k)
                    .ok_or_else(|| corrupt("state snapshot: malformed checkpoint key"))?;
                let version = key_u64(rest)
                    .ok_or_else(|| corrupt("state snapshot: malformed checkpoint key"))?;
                let instance_key = &k[1..k.len() - rest.len()];
                if retained(instance_key, version) {
                    out.push((slot_key(skill, instance, version, slots), v));
                }
            }
            Some(&TAG_REQUEST) => {
                let (_, _, rest) = split_instance_key(&k)
                    .ok_or_else(|| corrupt("state snapshot: malformed request key"))?;
                let instance_key = &k[1..k.len() - rest.len()];
                let version = RequestRecord::decode(&v)?.version;
                if !heads.contains_key(instance_key) || retained(instance_key, version) {
                    out.push((k, v));
                }
            }
            _ => out.push((k, v)),
        }
    }
    out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn parse_and_validate_snapshot(data: &[u8]) -> Result<KvList, StorageError> {
    if data.len() < SNAPSHOT_DOMAIN.len() + 16 + 32 {
        return Err(corrupt("state snapshot: truncated"));
    }
    let (body, digest) = data.split_at(data.len() - 32);
    if sha256(body) != digest {
        return Err(corrupt("state snapshot: digest mismatch"));
    }
    let mut r = Reader::new(body, "state snapshot");
    r.tag(SNAPSHOT_DOMAIN)?;
    let applied = r.u64()?;
    let count = r.u64()?;
    let mut entries: KvList = Vec::new();
    for _ in 0..count {
        let k = r.bytes()?.to_vec();
        let v = r.bytes()?.to_vec();
        if let Some((last, _)) = entries.last() {
            if *last >= k {
                return Err(corrupt("state snapshot: keys not strictly ascending"));
            }
        }
        entries.push((k, v));
    }
    r.finish()?;

    let mut checkpoint_hashes: BTreeMap<&[u8], Hash> = BTreeMap::new();
    let mut heads: Vec<(Vec<u8>, Head)> = Vec::new();
    let mut saw_applied = false;
    for (k, v) in &entries {
        match k.first() {
            _ if k.as_slice() == KEY_APPLIED => {
                if decode_u64_meta(v, "applied index")? != applied {
                    return Err(corrupt("state snapshot: applied index mismatch"));
                }
                saw_applied = true;
            }
            _ if k.as_slice() == KEY_CLOCK => {
                decode_timestamp(v)?;
            }
            Some(&TAG_HEAD) => {
                let (skill, instance, rest) = split_instance_key(k)
                    .filter(|(_, _, rest)| rest.is_empty())
                    .ok_or_else(|| corrupt("state snapshot: malformed head key"))?;
                debug_assert!(rest.is_empty());
                heads.push((checkpoint_key(skill, instance, 0), decode_head(v)?));
            }
            Some(&TAG_CHECKPOINT) => {
                let (skill, instance, rest) = split_instance_key(k)
                    .ok_or_else(|| corrupt("state snapshot: malformed checkpoint key"))?;
                let version = key_u64(rest)
                    .ok_or_else(|| corrupt("state snapshot: malformed checkpoint key"))?;
                let cp = decode_checkpoint_at(v, skill, instance, version)?;
                checkpoint_hashes.insert(k.as_slice(), cp.hash);
            }
            Some(&TAG_CLUSTER) => {
                open_value(v, "state snapshot: cluster meta")?;
            }
            Some(&TAG_REVOKED) => {
                decode_revocation(k, v)?;
            }
            Some(&TAG_REQUEST) => {
                split_instance_key(k)
                    .ok_or_else(|| corrupt("state snapshot: malformed request key"))?;
                RequestRecord::decode(v)?;
            }
            _ => return Err(corrupt("state snapshot: unknown key")),
        }
    }
    if !saw_applied && applied != 0 {
        return Err(corrupt("state snapshot: applied index missing"));
    }
    for (mut ck, head) in heads {
        let len = ck.len();
        ck[len - 8..].copy_from_slice(&head.version.to_be_bytes());
        if checkpoint_hashes.get(ck.as_slice()) != Some(&head.hash) {
            return Err(corrupt(format!(
                "state snapshot: head v{} has no matching checkpoint",
                head.version
            )));
        }
    }
    Ok(entries)
}

mod head_cache;
mod repair;
mod ring;
use head_cache::{CachedHead, HeadCache, HEAD_CACHE_ENTRIES};
pub use repair::{RepairOutcome, ScrubReport};
use ring::{slot_key, TAG_SLOT};

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::checkpoint::tests::ts;

    /// splitmix64: a seeded, replayable source for the randomized store
    /// tests, without a dependency.
    pub(crate) struct Rng(pub(crate) u64);
    impl Rng {
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % n
        }
    }

    /// A Raft log of the chains interleaved at random, each in order, with
    /// `recorded(chain, rng)` saying whether a put keeps a request record.
    pub(crate) fn interleave(
        chains: &[&[Checkpoint]],
        rng: &mut Rng,
        mut recorded: impl FnMut(usize, &mut Rng) -> bool,
    ) -> Vec<(Checkpoint, bool)> {
        let mut log = Vec::new();
        let mut next_of = vec![0usize; chains.len()];
        while next_of.iter().zip(chains).any(|(n, c)| *n < c.len()) {
            let i = rng.below(chains.len() as u64) as usize;
            if next_of[i] < chains[i].len() {
                log.push((chains[i][next_of[i]].clone(), recorded(i, rng)));
                next_of[i] += 1;
            }
        }
        log
    }

    /// One apply of `log[range]`, the applied index at the range's end.
    pub(crate) fn log_batch(
        log: &[(Checkpoint, bool)],
        range: std::ops::Range<usize>,
    ) -> ApplyBatch {
        let mut batch = ApplyBatch::default();
        let end = range.end;
        for (cp, recorded) in &log[range] {
            if *recorded {
                batch.put_checkpoint(cp, b"reply");
            } else {
                batch.put_checkpoint_unrecorded(cp);
            }
        }
        batch.set_applied(end as u64);
        batch
    }

    pub(crate) fn open_tmp(retention: u64) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            StoreOptions {
                retention_versions: retention,
                flush_every_ms: None,
                ..Default::default()
            },
        )
        .unwrap();
        (dir, store)
    }

    /// Versions 1..=n of one instance, properly chained, timestamps 10, 20, ...
    pub(crate) fn chain(skill: &str, instance: &str, n: u64) -> Vec<Checkpoint> {
        let mut out: Vec<Checkpoint> = Vec::new();
        for v in 1..=n {
            let parent = out.last().map(|c| c.hash).unwrap_or(ZERO_HASH);
            out.push(Checkpoint::seal(
                skill.into(),
                instance.into(),
                v,
                parent,
                format!("state-{v}").into_bytes(),
                ts(v * 10),
                format!("req-{v}"),
            ));
        }
        out
    }

    pub(crate) fn apply_all(store: &Store, cps: &[Checkpoint], per_batch: usize, first_index: u64) {
        let mut index = first_index;
        for group in cps.chunks(per_batch) {
            let mut b = ApplyBatch::default();
            for cp in group {
                b.put_checkpoint(cp, format!("reply-{}", cp.version).as_bytes());
                index += 1;
            }
            b.set_applied(index);
            store.commit_apply(b).unwrap();
        }
    }

    #[test]
    fn store_is_send_sync_clone() {
        fn assert_traits<T: Send + Sync + Clone + 'static>() {}
        assert_traits::<Store>();
        assert_traits::<RaftLog>();
    }

    #[test]
    fn zero_retention_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let err = Store::open(
            dir.path(),
            StoreOptions {
                retention_versions: 0,
                flush_every_ms: None,
                ..Default::default()
            },
        );
        assert!(matches!(err, Err(StorageError::Invalid(_))));
    }

    #[test]
    fn cache_capacity_outside_its_bounds_is_rejected_before_anything_is_created() {
        for bytes in [
            0,
            MIN_CACHE_CAPACITY_BYTES - 1,
            MAX_CACHE_CAPACITY_BYTES + 1,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let data = dir.path().join("data");
            let err = Store::open(
                &data,
                StoreOptions {
                    cache_capacity_bytes: bytes,
                    ..Default::default()
                },
            );
            assert!(
                matches!(&err, Err(StorageError::Invalid(m)) if m.contains("cache_capacity_bytes")),
                "{bytes}: {err:?}"
            );
            assert!(!data.exists(), "{bytes}: a refused open created {data:?}");
        }
    }

    #[test]
    fn the_configured_cache_is_what_sled_is_opened_with() {
        let dir = tempfile::tempdir().unwrap();
        for bytes in [
            MIN_CACHE_CAPACITY_BYTES,
            32 << 20,
            DEFAULT_CACHE_CAPACITY_BYTES,
        ] {
            let opts = StoreOptions {
                cache_capacity_bytes: bytes,
                ..Default::default()
            };
            assert_eq!(sled_config(dir.path(), &opts).cache_capacity, bytes);
        }
        assert_eq!(
            StoreOptions::default().cache_capacity_bytes,
            DEFAULT_CACHE_CAPACITY_BYTES
        );
    }

    #[test]
    fn the_smallest_cache_evicts_and_reads_back_every_retained_version() {
        // 300 instances of 3 versions with 16 KiB states: about 14 MiB
        // written and 9 MiB retained, many times the 1 MiB cache, so sled
        // pages leaves out while the store is open, and every read after
        // the writes (before and after a reopen) pages them back in.
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            retention_versions: 2,
            cache_capacity_bytes: MIN_CACHE_CAPACITY_BYTES,
            ..Default::default()
        };
        let instances: Vec<String> = (0..300).map(|i| format!("i{i}")).collect();
        let chains: Vec<Vec<Checkpoint>> = instances
            .iter()
            .map(|name| {
                let mut parent = ZERO_HASH;
                (1..=3u64)
                    .map(|v| {
                        let cp = Checkpoint::seal(
                            "kv".into(),
                            name.clone(),
                            v,
                            parent,
                            vec![v as u8; 16 * 1024],
                            ts(v * 10),
                            String::new(),
                        );
                        parent = cp.hash;
                        cp
                    })
                    .collect()
            })
            .collect();
        let check = |store: &Store| {
            for (name, chain) in instances.iter().zip(&chains) {
                assert_eq!(store.latest("kv", name).unwrap().as_ref(), Some(&chain[2]));
                assert_eq!(store.get("kv", name, 2).unwrap().as_ref(), Some(&chain[1]));
                assert_eq!(
                    store.get("kv", name, 1).unwrap(),
                    None,
                    "{name} v1 is past retention"
                );
                // v3 overwrote v1's slot (retention 2): the slot holds v3.
                let slot = store.debug_checkpoint_key("kv", name, 1);
                let raw = store.inner.state.get(slot).unwrap().unwrap();
                assert_eq!(Checkpoint::decode(&raw).unwrap(), chain[2], "{name}");
            }
            assert_eq!(store.applied_index().unwrap(), 900);
        };
        {
            let store = Store::open(dir.path(), opts.clone()).unwrap();
            let mut index = 1;
            for v in 0..3 {
                for chain in &chains {
                    let mut b = ApplyBatch::default();
                    b.put_checkpoint_unrecorded(&chain[v]);
                    b.set_applied(index);
                    index += 1;
                    store.commit_apply(b).unwrap();
                }
            }
            check(&store);
            store.sync().unwrap();
        }
        check(&Store::open(dir.path(), opts).unwrap());
    }

    #[test]
    fn an_unrecorded_put_keeps_no_request_record_and_prunes_like_any_other() {
        let (_d, store) = open_tmp(2);
        let cps = chain("kv", "box", 4);
        let mut b = ApplyBatch::default();
        b.put_checkpoint_unrecorded(&cps[0]);
        b.put_checkpoint(&cps[1], b"r2");
        b.set_applied(2);
        store.commit_apply(b).unwrap();
        assert_eq!(store.request("kv", "box", "req-1").unwrap(), None);
        assert_eq!(
            store
                .request("kv", "box", "req-2")
                .unwrap()
                .map(|r| r.version),
            Some(2)
        );
        assert_eq!(store.latest("kv", "box").unwrap().as_ref(), Some(&cps[1]));
        let mut b = ApplyBatch::default();
        b.put_checkpoint_unrecorded(&cps[2]);
        b.put_checkpoint_unrecorded(&cps[3]);
        b.set_applied(4);
        store.commit_apply(b).unwrap();
        // Retention 2: versions 1 and 2 pruned, 2's record with it.
        assert_eq!(store.get("kv", "box", 1).unwrap(), None);
        assert_eq!(store.get("kv", "box", 2).unwrap(), None);
        assert_eq!(store.request("kv", "box", "req-2").unwrap(), None);
        assert_eq!(store.latest("kv", "box").unwrap().as_ref(), Some(&cps[3]));
        assert_eq!(store.request("kv", "box", "req-4").unwrap(), None);
    }

    #[test]
    fn empty_store_answers_defaults() {
        let (_d, store) = open_tmp(10);
        assert_eq!(store.applied_index().unwrap(), 0);
        assert_eq!(store.clock_high_water().unwrap(), Timestamp::default());
        assert_eq!(store.latest("s", "i").unwrap(), None);
        assert_eq!(store.get("s", "i", 1).unwrap(), None);
        assert!(store.history("s", "i", 0, 10).unwrap().is_empty());
        assert_eq!(store.request("s", "i", "r").unwrap(), None);
        let report = store.verify_chain("s", "i").unwrap();
        assert!(report.ok);
        assert_eq!(report.versions_checked, 0);
        assert!(matches!(
            store.latest("", "i"),
            Err(StorageError::Invalid(_))
        ));
        assert!(matches!(
            store.get("s\0x", "i", 1),
            Err(StorageError::Invalid(_))
        ));
        assert!(store.commit_apply(ApplyBatch::default()).is_ok());
    }

    fn check_reads(store: &Store, cps: &[Checkpoint]) {
        let n = cps.len() as u64;
        assert_eq!(
            store.latest("counter", "alice").unwrap().as_ref(),
            cps.last()
        );
        for cp in cps {
            assert_eq!(
                store.get("counter", "alice", cp.version).unwrap().as_ref(),
                Some(cp)
            );
        }
        assert_eq!(store.get("counter", "alice", n + 1).unwrap(), None);
        let h = store.history("counter", "alice", 0, 3).unwrap();
        assert_eq!(
            h.iter().map(|c| c.version).collect::<Vec<_>>(),
            vec![n, n - 1, n - 2]
        );
        let h = store.history("counter", "alice", 4, 100).unwrap();
        assert_eq!(
            h.iter().map(|c| c.version).collect::<Vec<_>>(),
            vec![4, 3, 2, 1]
        );
        assert!(store.history("counter", "alice", 0, 0).unwrap().is_empty());
        // at_or_before: timestamps are 10*v
        assert_eq!(store.at_or_before("counter", "alice", ts(5)).unwrap(), None);
        assert_eq!(
            store
                .at_or_before("counter", "alice", ts(10))
                .unwrap()
                .unwrap()
                .version,
            1
        );
        assert_eq!(
            store
                .at_or_before("counter", "alice", ts(35))
                .unwrap()
                .unwrap()
                .version,
            3
        );
        assert_eq!(
            store
                .at_or_before("counter", "alice", ts(u64::MAX))
                .unwrap()
                .unwrap()
                .version,
            n
        );
        let rec = store.request("counter", "alice", "req-2").unwrap().unwrap();
        assert_eq!(rec.version, 2);
        assert_eq!(rec.hash, cps[1].hash);
        assert_eq!(rec.timestamp, cps[1].timestamp);
        assert_eq!(rec.reply, b"reply-2");
        assert_eq!(store.request("counter", "alice", "nope").unwrap(), None);
        // the instance next door is untouched
        assert_eq!(store.latest("counter", "alic").unwrap(), None);
        let report = store.verify_chain("counter", "alice").unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.versions_checked, n);
        assert_eq!((report.oldest_version, report.latest_version), (1, n));
        assert_eq!(report.head_hash, cps.last().unwrap().hash);
    }

    #[test]
    fn apply_one_per_batch() {
        let (_d, store) = open_tmp(100);
        let cps = chain("counter", "alice", 8);
        apply_all(&store, &cps, 1, 0);
        check_reads(&store, &cps);
        assert_eq!(store.applied_index().unwrap(), 8);
        assert_eq!(store.clock_high_water().unwrap(), ts(80));
    }

    #[test]
    fn apply_several_versions_per_batch() {
        let (_d, store) = open_tmp(100);
        let cps = chain("counter", "alice", 8);
        apply_all(&store, &cps, 3, 100);
        check_reads(&store, &cps);
        assert_eq!(store.applied_index().unwrap(), 108);
    }

    #[test]
    fn pruning_a_damaged_record_never_drops_another_versions_request_record() {
        // Overwriting a slot reads its occupant's request id without checking
        // its hash; a damaged or misplaced occupant must not cost a live
        // version its request record.
        let (_d, store) = open_tmp(3);
        let cps = chain("counter", "alice", 6);
        apply_all(&store, &cps[..3], 1, 0);
        let raw = store.raw_tree(TREE_STATE).unwrap();
        // v1's record now names v2's request id (hash no longer matches).
        let mut renamed = cps[0].clone();
        renamed.request_id = "req-2".into();
        raw.insert(
            store.debug_checkpoint_key("counter", "alice", 1),
            renamed.encode(),
        )
        .unwrap();
        // v2's slot holds v3's record.
        raw.insert(
            store.debug_checkpoint_key("counter", "alice", 2),
            cps[2].encode(),
        )
        .unwrap();
        apply_all(&store, &cps[3..5], 1, 3);
        for v in [1, 2] {
            assert_eq!(store.get("counter", "alice", v).unwrap(), None, "v{v}");
        }
        assert_eq!(
            store.get("counter", "alice", 4).unwrap().as_ref(),
            Some(&cps[3])
        );
        assert_eq!(
            store.get("counter", "alice", 5).unwrap().as_ref(),
            Some(&cps[4])
        );
        for v in [2, 3] {
            let rec = store
                .request("counter", "alice", &format!("req-{v}"))
                .unwrap();
            assert_eq!(rec.map(|r| r.version), Some(v), "req-{v}");
        }
        // The next overwritten version, stored intact, takes its record with it.
        apply_all(&store, &cps[5..], 1, 5);
        assert_eq!(store.get("counter", "alice", 3).unwrap(), None);
        assert_eq!(store.request("counter", "alice", "req-3").unwrap(), None);
        assert!(store.verify_chain("counter", "alice").unwrap().ok);
    }

    #[test]
    fn whole_chain_in_one_batch_with_retention() {
        // Pruning must see puts of the same batch.
        let (_d, store) = open_tmp(3);
        let cps = chain("counter", "alice", 10);
        apply_all(&store, &cps, 10, 0);
        let versions: Vec<u64> = store
            .history("counter", "alice", 0, 100)
            .unwrap()
            .iter()
            .map(|c| c.version)
            .collect();
        assert_eq!(versions, vec![10, 9, 8]);
        assert_eq!(store.request("counter", "alice", "req-7").unwrap(), None);
        assert!(store
            .request("counter", "alice", "req-8")
            .unwrap()
            .is_some());
        assert!(store.verify_chain("counter", "alice").unwrap().ok);
    }

    #[test]
    fn retention_bounds_history_and_requests() {
        let (_d, store) = open_tmp(5);
        let cps = chain("counter", "alice", 20);
        apply_all(&store, &cps, 1, 0);
        let versions: Vec<u64> = store
            .history("counter", "alice", 0, 100)
            .unwrap()
            .iter()
            .map(|c| c.version)
            .collect();
        assert_eq!(versions, vec![20, 19, 18, 17, 16]);
        for v in 1..=15 {
            assert_eq!(store.get("counter", "alice", v).unwrap(), None, "v{v}");
            assert_eq!(
                store
                    .request("counter", "alice", &format!("req-{v}"))
                    .unwrap(),
                None,
                "req-{v}"
            );
        }
        for v in 16..=20 {
            assert_eq!(
                store
                    .request("counter", "alice", &format!("req-{v}"))
                    .unwrap()
                    .unwrap()
                    .version,
                v
            );
        }
        let report = store.verify_chain("counter", "alice").unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(
            (
                report.oldest_version,
                report.latest_version,
                report.versions_checked
            ),
            (16, 20, 5)
        );
        // Count raw keys too: nothing else lingers.
        let raw = store.raw_tree("state").unwrap();
        assert_eq!(raw.scan_prefix([TAG_SLOT]).count(), 5);
        assert_eq!(raw.scan_prefix([TAG_CHECKPOINT]).count(), 0);
        assert_eq!(raw.scan_prefix([TAG_REQUEST]).count(), 5);
    }

    #[test]
    fn lowering_retention_drains_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let cps = chain("s", "i", 30);
        {
            let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
            apply_all(&store, &cps[..29], 1, 0);
            store.sync().unwrap();
        }
        let store = Store::open(
            dir.path(),
            StoreOptions {
                retention_versions: 2,
                flush_every_ms: None,
                ..Default::default()
            },
        )
        .unwrap();
        apply_all(&store, &cps[29..], 1, 29);
        let versions: Vec<u64> = store
            .history("s", "i", 0, 100)
            .unwrap()
            .iter()
            .map(|c| c.version)
            .collect();
        assert_eq!(versions, vec![30, 29]);
        // The drained versions take their request records with them.
        for v in 1..=28 {
            let rec = store.request("s", "i", &format!("req-{v}")).unwrap();
            assert_eq!(rec, None, "req-{v}");
        }
        for v in [29, 30] {
            let rec = store.request("s", "i", &format!("req-{v}")).unwrap();
            assert_eq!(rec.map(|r| r.version), Some(v));
        }
    }

    #[test]
    fn replay_is_idempotent_and_old_versions_are_ignored() {
        let (_d, store) = open_tmp(100);
        let cps = chain("s", "i", 5);
        apply_all(&store, &cps, 1, 0);
        let before = store.state_hash().unwrap();
        // Re-apply the last entry (crash before applied index was saved).
        let mut b = ApplyBatch::default();
        b.put_checkpoint(&cps[4], b"reply-5");
        b.set_applied(5);
        store.commit_apply(b).unwrap();
        assert_eq!(store.state_hash().unwrap(), before);
        // An older version never moves the head back.
        let mut b = ApplyBatch::default();
        b.put_checkpoint(&cps[1], b"x");
        store.commit_apply(b).unwrap();
        assert_eq!(store.latest("s", "i").unwrap().unwrap().version, 5);
        assert_eq!(
            store.request("s", "i", "req-2").unwrap().unwrap().reply,
            b"reply-2"
        );
    }

    #[test]
    fn unsealed_checkpoint_is_rejected_and_nothing_written() {
        let (_d, store) = open_tmp(100);
        let cps = chain("s", "i", 2);
        let mut bad = cps[1].clone();
        bad.state = b"tampered".to_vec();
        let mut b = ApplyBatch::default();
        b.put_checkpoint(&cps[0], b"");
        b.put_checkpoint(&bad, b"");
        b.set_applied(2);
        assert!(matches!(
            store.commit_apply(b),
            Err(StorageError::Invalid(_))
        ));
        assert_eq!(store.latest("s", "i").unwrap(), None);
        assert_eq!(store.applied_index().unwrap(), 0);
        let mut b = ApplyBatch::default();
        let mut nul = cps[0].clone();
        nul.instance = "a\0b".into();
        nul.hash = nul.compute_hash();
        b.put_checkpoint(&nul, b"");
        assert!(matches!(
            store.commit_apply(b),
            Err(StorageError::Invalid(_))
        ));
    }

    #[test]
    fn clock_high_water_is_max_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
            let mut b = ApplyBatch::default();
            b.observe_timestamp(ts(50));
            b.observe_timestamp(ts(40));
            assert!(!b.is_empty());
            store.commit_apply(b).unwrap();
            let mut b = ApplyBatch::default();
            b.observe_timestamp(ts(30));
            store.commit_apply(b).unwrap();
            assert_eq!(store.clock_high_water().unwrap(), ts(50));
            store.sync().unwrap();
        }
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(store.clock_high_water().unwrap(), ts(50));
    }

    #[test]
    fn reopen_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let cps = chain("counter", "alice", 8);
        let hash_before;
        {
            let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
            apply_all(&store, &cps, 2, 0);
            let mut b = ApplyBatch::default();
            b.observe_timestamp(ts(1000));
            b.set_applied(42);
            store.commit_apply(b).unwrap();
            hash_before = store.state_hash().unwrap();
            store.sync().unwrap();
        }
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        check_reads(&store, &cps);
        assert_eq!(store.applied_index().unwrap(), 42);
        assert_eq!(store.clock_high_water().unwrap(), ts(1000));
        assert_eq!(store.state_hash().unwrap(), hash_before);
        assert_eq!(store.dir(), dir.path());
    }

    #[test]
    fn sync_covers_blobs() {
        // Values this large are stored by sled as blob files.
        let (_d, store) = open_tmp(100);
        let big = Checkpoint::seal(
            "s".into(),
            "i".into(),
            1,
            ZERO_HASH,
            vec![7u8; 4 << 20],
            ts(1),
            "r".into(),
        );
        let mut b = ApplyBatch::default();
        b.put_checkpoint(&big, b"");
        store.commit_apply(b).unwrap();
        store.sync().unwrap();
        let blobs = std::fs::read_dir(store.dir().join("blobs"))
            .unwrap()
            .count();
        assert!(blobs > 0, "expected sled to store the value as a blob");
        assert_eq!(lock(&store.inner.sled_barrier.synced_blobs).len(), blobs);
        store.sync().unwrap();
        assert_eq!(store.latest("s", "i").unwrap().unwrap(), big);
    }

    #[test]
    fn flipped_byte_is_corrupt_and_reported() {
        let (_d, store) = open_tmp(100);
        let cps = chain("counter", "alice", 5);
        apply_all(&store, &cps, 1, 0);
        let raw = store.raw_tree("state").unwrap();
        for v in [3u64, 5] {
            let key = store.debug_checkpoint_key("counter", "alice", v);
            let mut bytes = raw.get(&key).unwrap().unwrap().to_vec();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x20;
            raw.insert(key, bytes).unwrap();
        }
        assert!(store.get("counter", "alice", 3).unwrap_err().is_corrupt());
        assert!(store.latest("counter", "alice").unwrap_err().is_corrupt());
        assert!(store
            .history("counter", "alice", 0, 10)
            .unwrap_err()
            .is_corrupt());
        assert!(store
            .at_or_before("counter", "alice", ts(45))
            .unwrap_err()
            .is_corrupt());
        assert_eq!(store.get("counter", "alice", 2).unwrap().unwrap(), cps[1]);
        let report = store.verify_chain("counter", "alice").unwrap();
        assert!(!report.ok);
        assert_eq!(report.versions_checked, 2);
        assert!(
            report.problem.as_deref().unwrap().contains("version 3"),
            "{report:?}"
        );
    }

    #[test]
    fn valid_record_under_wrong_key_is_corrupt() {
        let (_d, store) = open_tmp(100);
        let cps = chain("s", "i", 3);
        apply_all(&store, &cps, 1, 0);
        let raw = store.raw_tree("state").unwrap();
        raw.insert(store.debug_checkpoint_key("s", "i", 2), cps[0].encode())
            .unwrap();
        assert!(store.get("s", "i", 2).unwrap_err().is_corrupt());
        assert!(!store.verify_chain("s", "i").unwrap().ok);
    }

    #[test]
    fn broken_parent_link_is_reported() {
        let (_d, store) = open_tmp(100);
        let cps = chain("s", "i", 5);
        apply_all(&store, &cps, 1, 0);
        let raw = store.raw_tree("state").unwrap();
        let forged = Checkpoint::seal(
            "s".into(),
            "i".into(),
            3,
            [9u8; 32],
            b"forged".to_vec(),
            cps[2].timestamp,
            "req-3".into(),
        );
        raw.insert(store.debug_checkpoint_key("s", "i", 3), forged.encode())
            .unwrap();
        // The record itself is valid...
        assert_eq!(store.get("s", "i", 3).unwrap().unwrap(), forged);
        // ...but the chain is not.
        let report = store.verify_chain("s", "i").unwrap();
        assert!(!report.ok);
        assert!(
            report.problem.as_deref().unwrap().contains("parent_hash"),
            "{report:?}"
        );
        assert_eq!(report.versions_checked, 2);
    }

    #[test]
    fn non_increasing_timestamp_and_gap_are_reported() {
        let (_d, store) = open_tmp(100);
        let mut cps = chain("s", "i", 2);
        let third = Checkpoint::seal(
            "s".into(),
            "i".into(),
            3,
            cps[1].hash,
            vec![],
            cps[1].timestamp,
            String::new(),
        );
        cps.push(third);
        apply_all(&store, &cps, 1, 0);
        let report = store.verify_chain("s", "i").unwrap();
        assert!(!report.ok);
        assert!(report.problem.unwrap().contains("timestamp"));

        let (_d2, store) = open_tmp(100);
        let cps = chain("s", "i", 4);
        apply_all(&store, &cps, 1, 0);
        store
            .raw_tree("state")
            .unwrap()
            .remove(store.debug_checkpoint_key("s", "i", 2))
            .unwrap();
        let report = store.verify_chain("s", "i").unwrap();
        assert!(!report.ok);
        assert!(report.problem.unwrap().contains("gap"));
    }

    #[test]
    fn tampered_head_is_corrupt() {
        let (_d, store) = open_tmp(100);
        apply_all(&store, &chain("s", "i", 3), 1, 0);
        let raw = store.raw_tree("state").unwrap();
        let hk = head_key("s", "i");
        let mut bytes = raw.get(&hk).unwrap().unwrap().to_vec();
        bytes[12] ^= 1;
        raw.insert(hk.clone(), bytes).unwrap();
        assert!(store.latest("s", "i").unwrap_err().is_corrupt());
        assert!(!store.verify_chain("s", "i").unwrap().ok);
        assert!(store.state_hash().unwrap_err().is_corrupt());
        // A head pointing at an older (valid) version is also caught.
        raw.insert(hk, encode_head(2, &[0u8; 32], &Timestamp::default()))
            .unwrap();
        assert!(store.latest("s", "i").unwrap_err().is_corrupt());
        assert!(!store.verify_chain("s", "i").unwrap().ok);
    }

    #[test]
    fn tampered_request_record_is_corrupt() {
        let (_d, store) = open_tmp(100);
        apply_all(&store, &chain("s", "i", 2), 1, 0);
        let raw = store.raw_tree("state").unwrap();
        let rk = request_key("s", "i", "req-1");
        let mut bytes = raw.get(&rk).unwrap().unwrap().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        raw.insert(rk, bytes).unwrap();
        assert!(store.request("s", "i", "req-1").unwrap_err().is_corrupt());
    }

    #[test]
    fn state_hash_equal_for_equal_input_and_differs_otherwise() {
        let (_d1, a) = open_tmp(4);
        let (_d2, b) = open_tmp(4);
        let (_d3, c) = open_tmp(4);
        let x = chain("counter", "x", 6);
        let y = chain("counter", "y", 3);
        apply_all(&a, &x, 2, 0);
        apply_all(&a, &y, 1, 10);
        // Same entries, different batching: same result.
        apply_all(&b, &x, 1, 0);
        apply_all(&b, &y, 3, 10);
        let ha = a.state_hash().unwrap();
        assert_eq!(ha, b.state_hash().unwrap());
        assert_eq!(ha.2, 2);
        assert_eq!(ha.0, 13);
        assert_eq!(a.snapshot_state().unwrap(), b.snapshot_state().unwrap());
        // One version short: differs.
        apply_all(&c, &x[..5], 1, 0);
        apply_all(&c, &y, 3, 10);
        let mut fix = ApplyBatch::default();
        fix.set_applied(13);
        c.commit_apply(fix).unwrap();
        let hc = c.state_hash().unwrap();
        assert_eq!(hc.0, ha.0);
        assert_ne!(hc.1, ha.1);
        // Same heads, different applied index: differs.
        let mut bump = ApplyBatch::default();
        bump.set_applied(14);
        b.commit_apply(bump).unwrap();
        assert_ne!(b.state_hash().unwrap().1, ha.1);
    }

    #[test]
    fn snapshot_restore_round_trip_replaces_everything() {
        let (_d1, a) = open_tmp(5);
        let (_d2, b) = open_tmp(5);
        apply_all(&a, &chain("s", "one", 7), 2, 0);
        apply_all(&b, &chain("s", "stale", 3), 1, 0);
        let data = a.snapshot_state().unwrap();
        b.restore_state(&data).unwrap();
        assert_eq!(a.state_hash().unwrap(), b.state_hash().unwrap());
        assert_eq!(b.latest("s", "stale").unwrap(), None);
        assert_eq!(b.request("s", "stale", "req-1").unwrap(), None);
        assert_eq!(b.latest("s", "one").unwrap(), a.latest("s", "one").unwrap());
        assert_eq!(b.clock_high_water().unwrap(), a.clock_high_water().unwrap());
        assert_eq!(b.snapshot_state().unwrap(), data);
    }

    #[test]
    fn corrupt_snapshot_leaves_state_untouched() {
        let (_d1, a) = open_tmp(5);
        let (_d2, b) = open_tmp(5);
        apply_all(&a, &chain("s", "one", 4), 1, 0);
        apply_all(&b, &chain("s", "mine", 2), 1, 0);
        let before = b.snapshot_state().unwrap();
        let data = a.snapshot_state().unwrap();
        for pos in (0..data.len()).step_by(7) {
            let mut bad = data.clone();
            bad[pos] ^= 0x04;
            assert!(b.restore_state(&bad).unwrap_err().is_corrupt(), "pos {pos}");
        }
        assert!(b.restore_state(&data[..data.len() - 1]).is_err());
        assert!(b.restore_state(b"").is_err());
        assert_eq!(b.snapshot_state().unwrap(), before);
    }

    #[test]
    fn snapshot_with_valid_digest_but_bad_checkpoint_is_rejected() {
        // The outer digest is not enough: an attacker (or bug) can recompute
        // it. Each checkpoint must verify on its own.
        let (_d1, a) = open_tmp(5);
        let (_d2, b) = open_tmp(5);
        apply_all(&a, &chain("s", "one", 3), 1, 0);
        apply_all(&b, &chain("s", "mine", 2), 1, 0);
        let before = b.snapshot_state().unwrap();
        let raw = a.raw_tree("state").unwrap();
        let key = a.debug_checkpoint_key("s", "one", 2);
        let mut bytes = raw.get(&key).unwrap().unwrap().to_vec();
        bytes[30] ^= 1;
        raw.insert(key, bytes).unwrap();
        let data = a.snapshot_state().unwrap();
        assert!(b.restore_state(&data).unwrap_err().is_corrupt());
        assert_eq!(b.snapshot_state().unwrap(), before);
    }

    /// A head version past `MAX_CHECKPOINT_VERSION` in a snapshot (from a
    /// peer) is damage, even with a matching, validly sealed checkpoint and
    /// digest: before, it was installed, and the next write to the
    /// instance (`version + 1`, here and in the state machine) or a repair
    /// scan overflowed.
    #[test]
    fn a_snapshot_with_a_head_version_out_of_range_is_rejected() {
        let (_d, b) = open_tmp(5);
        apply_all(&b, &chain("s", "mine", 2), 1, 0);
        let before = b.snapshot_state().unwrap();
        for version in [u64::MAX, MAX_CHECKPOINT_VERSION + 1] {
            let cp = Checkpoint::seal(
                "s".into(),
                "one".into(),
                version,
                ZERO_HASH,
                b"state".to_vec(),
                ts(10),
                String::new(),
            );
            let mut w = Writer::default();
            w.raw(SNAPSHOT_DOMAIN).u64(0).u64(2);
            w.bytes(&checkpoint_key("s", "one", version))
                .bytes(&cp.encode());
            w.bytes(&head_key("s", "one"))
                .bytes(&encode_head(version, &cp.hash, &cp.timestamp));
            let digest = sha256(w.as_slice());
            w.raw(&digest);
            let err = b.restore_state(w.as_slice()).unwrap_err();
            assert!(err.is_corrupt(), "{err}");
            assert!(err.to_string().contains("out of range"), "{err}");
        }
        assert_eq!(b.snapshot_state().unwrap(), before);
    }

    /// A checkpoint past `MAX_CHECKPOINT_VERSION` is refused at apply, so
    /// the store never writes a head it would refuse to read back.
    #[test]
    fn an_apply_past_the_version_range_is_refused() {
        let (_d, store) = open_tmp(5);
        let cp = Checkpoint::seal(
            "s".into(),
            "i".into(),
            MAX_CHECKPOINT_VERSION + 1,
            ZERO_HASH,
            b"state".to_vec(),
            ts(10),
            "req".into(),
        );
        let mut batch = ApplyBatch::default();
        batch.put_checkpoint(&cp, b"reply");
        batch.set_applied(1);
        let err = store.commit_apply(batch).unwrap_err();
        assert!(matches!(err, StorageError::Invalid(_)), "{err:?}");
        assert_eq!(store.head("s", "i").unwrap(), None);
        assert_eq!(store.applied_index().unwrap(), 0);
    }
}

#[cfg(test)]
mod cluster_meta_tests {
    use super::*;

    #[test]
    fn cluster_meta_round_trips_through_apply_and_snapshot() {
        let (_d1, a) = tests::open_tmp(10);
        let mut batch = ApplyBatch::default();
        batch.set_cluster_meta("member/2", b"10.0.0.2:50051");
        batch.set_cluster_meta("member/3", b"10.0.0.3:50051");
        batch.set_applied(5);
        a.commit_apply(batch).unwrap();
        let mut batch = ApplyBatch::default();
        batch.delete_cluster_meta("member/3");
        batch.set_applied(6);
        a.commit_apply(batch).unwrap();
        assert_eq!(
            a.cluster_meta("member/2").unwrap().as_deref(),
            Some(&b"10.0.0.2:50051"[..])
        );
        assert_eq!(a.cluster_meta("member/3").unwrap(), None);
        assert_eq!(a.cluster_meta_prefix("member/").unwrap().len(), 1);

        let (_d2, b) = tests::open_tmp(10);
        b.restore_state(&a.snapshot_state().unwrap()).unwrap();
        assert_eq!(
            b.cluster_meta_prefix("member/").unwrap(),
            a.cluster_meta_prefix("member/").unwrap()
        );
    }

    #[test]
    fn oversized_cluster_meta_is_rejected_and_nothing_changes() {
        let (_d, a) = tests::open_tmp(10);
        let mut batch = ApplyBatch::default();
        batch.set_cluster_meta("big", &vec![0; MAX_CLUSTER_META_VALUE + 1]);
        batch.set_applied(1);
        assert!(a.commit_apply(batch).is_err());
        assert_eq!(a.applied_index().unwrap(), 0);
    }
}
