//! raft-rs `Storage`: entries in our own segment files ([`crate::wal`]),
//! metadata in sled.
//!
//! * Entries: one record per entry in `<data dir>/raft-wal/`, the value being
//!   checksum(8) ++ `Entry` protobuf bytes. The checksum is verified on every
//!   read; a failure is `StorageError::Corrupt` from inherent methods and
//!   `raft::Error::Store(raft::StorageError::Other(..))` through the trait,
//!   so corrupted entries are never handed to raft.
//! * "raft_meta" (sled): hard state, conf state, last snapshot metadata, the
//!   truncation point (index and term of the entry before the first retained
//!   one) and the log's generation, each checksum ++ payload.
//!
//! Durability is split: a Ready's entries need only the log's fdatasync
//! (`RaftLog::sync`); sled is synced when something Raft must not forget
//! changed there (term, vote, conf state, a snapshot), and before compaction
//! deletes log segments, because the applied state in sled is what replaces
//! them. After a crash the state machine re-applies the log from its
//! applied index.
//!
//! Semantics follow raft-rs's `MemStorage` (the reference), except that where
//! `MemStorage` panics on misuse we return an error: library code does not
//! panic on input.

use std::fs::File;
use std::path::Path;
use std::sync::MutexGuard;

use protobuf::Message;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage};

use crate::codec::{key_u64, open_value, seal_value, Reader, Writer, CHECKSUM_LEN};
use crate::error::corrupt;
use crate::reclaim::Reclaim;
use crate::store::{has_tree, lock, Inner, TREE_RAFT_LOG};
use crate::wal::{Wal, MAX_RECORD_INDEX};

/// Highest Raft term a node accepts, from its disk or from a peer. raft-rs
/// computes `term + 1` at every election; half the range is more terms
/// than elections could ever use, and a term above it can only be damage
/// or a hostile message, which would otherwise overflow there.
pub const MAX_RAFT_TERM: u64 = u64::MAX / 2;

/// Highest Raft log index the log stores (`MAX_RECORD_INDEX`), for
/// callers that check messages before raft-rs sees them.
pub const MAX_RAFT_INDEX: u64 = MAX_RECORD_INDEX;
use crate::{StorageError, Store};

const META_HARD_STATE: &[u8] = b"hard_state";
const META_CONF_STATE: &[u8] = b"conf_state";
const META_SNAPSHOT: &[u8] = b"snapshot_meta";
const META_TRUNCATED: &[u8] = b"truncated";
const META_WAL_GENERATION: &[u8] = b"wal_generation";

/// Generation of a log that has never been reset by a snapshot.
const FIRST_WAL_GENERATION: u64 = 1;

/// raft-rs's "no limit" value for `max_size`.
const NO_LIMIT: u64 = u64::MAX;

/// Entries moved per write when a data dir from before the segment files is
/// opened (its log was a sled tree): bounds the memory of the move.
const LEGACY_MIGRATION_BATCH: usize = 1_024;

/// Entries read per segment-file read by the start-up damage scan.
const DAMAGE_SCAN_CHUNK: u64 = 256;

/// The log's in-memory state: its bounds, the segment files, and what is
/// written but not yet synced. The mutex around it serializes writers.
#[derive(Debug)]
pub(crate) struct LogBounds {
    /// Index of the last discarded entry (0 if none): first index - 1.
    truncated_index: u64,
    /// Its term, so `term(first_index - 1)` still answers.
    truncated_term: u64,
    /// Index of the last entry (== truncated_index if the log is empty).
    last_index: u64,
    /// Terms of the entries written by this process.
    terms: TermRuns,
    pub(crate) wal: Wal,
    generation: u64,
    /// (term, vote) of the stored hard state, once read.
    term_vote: Option<(u64, u64)>,
    /// Something in "raft_meta" that must be durable before the next
    /// message goes out (term, vote, conf state) is not yet synced.
    meta_unsynced: bool,
}

/// Most term runs kept in memory. A run is a stretch of consecutive entries
/// of one term, so this is the number of distinct terms in the retained log:
/// a handful normally; past the cap the oldest are forgotten and those terms
/// are read from sled again.
const MAX_TERM_RUNS: usize = 1024;

/// The term of every entry in `[known_from, last_index]`, as runs of equal
/// term. raft-rs asks `Storage::term` several times per replicated write
/// (append, append response, commit check); reading it from sled meant
/// decoding and SHA-256-checking the whole entry each time, the largest CPU
/// cost on the leader thread in a profile at 64 clients. Entries below
/// `known_from` (written before this process started) are read from sled,
/// checksum and all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct TermRuns {
    known_from: u64,
    /// (first index of the run, term), ascending; covers `known_from..`.
    runs: Vec<(u64, u64)>,
}

impl TermRuns {
    fn starting_at(index: u64) -> Self {
        TermRuns {
            known_from: index,
            runs: Vec::new(),
        }
    }

    fn term(&self, index: u64) -> Option<u64> {
        if index < self.known_from {
            return None;
        }
        let at = self.runs.partition_point(|(start, _)| *start <= index);
        at.checked_sub(1).map(|i| self.runs[i].1)
    }

    /// Records `entries` (consecutive, starting at or before the old last
    /// index + 1), dropping the runs of the suffix they replace.
    fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        if first.index < self.known_from {
            *self = TermRuns::starting_at(first.index);
        }
        let keep = self.runs.partition_point(|(start, _)| *start < first.index);
        self.runs.truncate(keep);
        for e in entries {
            if self.runs.last().map(|(_, t)| *t) != Some(e.term) {
                self.runs.push((e.index, e.term));
            }
        }
        if self.runs.len() > MAX_TERM_RUNS {
            let drop = self.runs.len() - MAX_TERM_RUNS / 2;
            self.runs.drain(..drop);
            self.known_from = self.runs[0].0;
        }
    }

    /// Forgets entries before `first_index` (compaction).
    fn compact(&mut self, first_index: u64) {
        if first_index <= self.known_from {
            return;
        }
        self.known_from = first_index;
        let covering = self
            .runs
            .partition_point(|(start, _)| *start <= first_index);
        if covering > 0 {
            self.runs.drain(..covering - 1);
            self.runs[0].0 = first_index;
        }
    }
}

fn encode_truncated(index: u64, term: u64) -> Vec<u8> {
    let mut w = Writer::with_capacity(16);
    w.u64(index).u64(term);
    seal_value(w.as_slice())
}

fn decode_truncated(raw: &[u8]) -> Result<(u64, u64), StorageError> {
    let mut r = Reader::new(
        open_value(raw, "raft truncated state")?,
        "raft truncated state",
    );
    let v = (r.u64()?, r.u64()?);
    r.finish()?;
    if v.0 > MAX_RECORD_INDEX {
        // The log's bounds are computed from it (`index + 1`).
        return Err(corrupt(format!(
            "raft truncated state: index {} is out of range (at most {MAX_RECORD_INDEX})",
            v.0
        )));
    }
    Ok(v)
}

fn encode_u64(v: u64) -> Vec<u8> {
    let mut w = Writer::with_capacity(8);
    w.u64(v);
    seal_value(w.as_slice())
}

fn decode_u64(raw: &[u8], what: &str) -> Result<u64, StorageError> {
    let mut r = Reader::new(open_value(raw, what)?, what);
    let v = r.u64()?;
    r.finish()?;
    Ok(v)
}

/// Loads the log at open: metadata from sled, entries from the segment
/// files (recovering a torn tail), moving a log kept in sled by an older
/// version into segment files first.
pub(crate) fn load_bounds(
    db: &sled::Db,
    meta: &sled::Tree,
    dir: &Path,
    simulation: bool,
) -> Result<LogBounds, StorageError> {
    let (truncated_index, truncated_term) = match meta.get(META_TRUNCATED)? {
        Some(raw) => decode_truncated(&raw)?,
        None => (0, 0),
    };
    let generation = match meta.get(META_WAL_GENERATION)? {
        Some(raw) => decode_u64(&raw, "raft log generation")?,
        None => FIRST_WAL_GENERATION,
    };
    if generation == u64::MAX {
        // A snapshot install moves to `generation + 1`.
        return Err(corrupt(format!(
            "raft log generation {generation} is out of range"
        )));
    }
    let (mut wal, report) = Wal::open(dir, generation, simulation)?;
    if report.stale_files > 0 {
        tracing::info!(
            files = report.stale_files,
            generation,
            "removed raft log segments replaced by a snapshot"
        );
    }
    migrate_legacy_log(db, &mut wal, dir, simulation)?;
    // Entries up to the truncation point stay on disk until their whole
    // segment can go.
    if let Some(first) = wal.first_index() {
        if first > truncated_index + 1 {
            return Err(corrupt(format!(
                "raft log entries {}..{first} missing (truncated at {truncated_index})",
                truncated_index + 1
            )));
        }
    }
    if let Some(last) = wal.last_index() {
        if last < truncated_index {
            return Err(corrupt(format!(
                "raft log ends at entry {last}, before its truncation point {truncated_index}"
            )));
        }
    }
    wal.forget_before(truncated_index + 1);
    let last_index = wal.last_index().unwrap_or(truncated_index);
    Ok(LogBounds {
        truncated_index,
        truncated_term,
        last_index,
        terms: TermRuns::starting_at(last_index + 1),
        wal,
        generation,
        term_vote: None,
        meta_unsynced: false,
    })
}

/// Moves the entries of a log kept in the sled tree "raft_log" (versions
/// before the segment files) into the segment files, then drops the tree.
/// Idempotent: a crash midway leaves the tree, and the next open clears
/// the partial copy and starts over.
fn migrate_legacy_log(
    db: &sled::Db,
    wal: &mut Wal,
    dir: &Path,
    simulation: bool,
) -> Result<(), StorageError> {
    if !has_tree(db, TREE_RAFT_LOG) {
        return Ok(());
    }
    let old = db.open_tree(TREE_RAFT_LOG)?;
    if !old.is_empty() {
        if let Some(first) = wal.first_index() {
            wal.truncate_from(first)?;
        }
        let mut batch = Vec::with_capacity(LEGACY_MIGRATION_BATCH);
        let mut moved = 0usize;
        for item in old.iter() {
            let (k, v) = item?;
            let index = key_u64(&k)
                .filter(|i| *i <= MAX_RECORD_INDEX)
                .ok_or_else(|| corrupt("malformed raft log key"))?;
            batch.push((index, v.to_vec()));
            if batch.len() == LEGACY_MIGRATION_BATCH {
                moved += batch.len();
                wal.append(&std::mem::take(&mut batch))?;
            }
        }
        moved += batch.len();
        wal.append(&batch)?;
        wal.sync()?;
        tracing::info!(
            entries = moved,
            "moved the raft log from sled into segment files"
        );
    }
    drop(old);
    db.drop_tree(TREE_RAFT_LOG)?;
    // Durable before anything is appended to the segment files: a crash
    // that brought the tree back would have the next open copy it over
    // newer entries.
    db.flush()?;
    if !simulation {
        File::open(dir.join("db"))?.sync_data()?;
    }
    Ok(())
}

fn encode_msg<M: Message>(m: &M) -> Result<Vec<u8>, StorageError> {
    let bytes = m
        .write_to_bytes()
        .map_err(|e| StorageError::Codec(e.to_string()))?;
    Ok(seal_value(&bytes))
}

fn decode_msg<M: Message>(raw: &[u8], what: &str) -> Result<M, StorageError> {
    let payload = open_value(raw, what)?;
    M::parse_from_bytes(payload).map_err(|e| corrupt(format!("{what}: {e}")))
}

pub(crate) fn decode_entry(index: u64, raw: &[u8]) -> Result<Entry, StorageError> {
    let e: Entry = decode_msg(raw, "raft log entry")?;
    if e.index != index {
        return Err(corrupt(format!(
            "raft log entry under key {index} has index {}",
            e.index
        )));
    }
    Ok(e)
}

/// Maps our errors to what raft-rs understands; everything without a raft
/// equivalent (corruption, I/O) travels boxed in `Other`.
fn to_raft(e: StorageError) -> raft::Error {
    use raft::StorageError as R;
    raft::Error::Store(match e {
        StorageError::Compacted { .. } => R::Compacted,
        StorageError::Unavailable { .. } => R::Unavailable,
        StorageError::SnapshotOutOfDate { .. } => R::SnapshotOutOfDate,
        StorageError::SnapshotTemporarilyUnavailable { .. } => R::SnapshotTemporarilyUnavailable,
        other => R::Other(Box::new(other)),
    })
}

/// raft-rs `Storage` on this node's segment files and sled metadata.
/// Clone + Send + Sync.
#[derive(Clone)]
pub struct RaftLog {
    pub(crate) store: Store,
}

impl std::fmt::Debug for RaftLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.bounds();
        f.debug_struct("RaftLog")
            .field("truncated_index", &b.truncated_index)
            .field("last_index", &b.last_index)
            .field("generation", &b.generation)
            .finish()
    }
}

/// Reads entry `index` from the segment files, verified. The caller has
/// checked that it is retained.
fn read_entry(b: &LogBounds, index: u64) -> Result<Entry, StorageError> {
    let raw = b
        .wal
        .read(index, index + 1)?
        .pop()
        .ok_or_else(|| corrupt(format!("raft log entry {index} missing")))?;
    decode_entry(index, &raw)
}

impl RaftLog {
    fn inner(&self) -> &Inner {
        &self.store.inner
    }

    fn bounds(&self) -> MutexGuard<'_, LogBounds> {
        lock(&self.inner().raft_bounds)
    }

    fn term_locked(&self, b: &LogBounds, index: u64) -> Result<u64, StorageError> {
        if index == b.truncated_index {
            return Ok(b.truncated_term);
        }
        if index < b.truncated_index {
            return Err(StorageError::Compacted { index });
        }
        if index > b.last_index {
            return Err(StorageError::Unavailable { index });
        }
        if let Some(term) = b.terms.term(index) {
            return Ok(term);
        }
        Ok(read_entry(b, index)?.term)
    }

    fn meta_msg<M: Message>(&self, key: &[u8], what: &str) -> Result<Option<M>, StorageError> {
        match self.inner().raft_meta.get(key)? {
            Some(raw) => decode_msg(&raw, what).map(Some),
            None => Ok(None),
        }
    }

    /// Index of the first retained entry (truncation point + 1).
    pub fn first_log_index(&self) -> u64 {
        self.bounds().truncated_index + 1
    }

    /// Index of the last entry (the snapshot index if the log is empty).
    pub fn last_log_index(&self) -> u64 {
        self.bounds().last_index
    }

    /// Entries `[low, high)`, verified, limited to `max_size` bytes (at least
    /// one entry is returned if any is in range), like `Storage::entries`.
    /// `Compacted` below the first index, `Unavailable` past the last,
    /// `Corrupt` if any record fails its checksum or is missing.
    pub fn read_entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, StorageError> {
        let b = self.bounds();
        if low <= b.truncated_index {
            return Err(StorageError::Compacted { index: low });
        }
        if high > b.last_index + 1 {
            return Err(StorageError::Unavailable { index: high - 1 });
        }
        if low > high {
            return Err(StorageError::Invalid(format!(
                "entries: low {low} > high {high}"
            )));
        }
        let limit = max_size.filter(|&m| m != NO_LIMIT);
        // Read no further than the size limit can reach: a stored value is
        // its entry's encoding plus the checksum, so never smaller.
        let mut read_to = high;
        if let Some(max) = limit {
            let mut size = 0u64;
            for index in low..high {
                let value = u64::from(b.wal.value_len(index).unwrap_or(0));
                size += value.saturating_sub(CHECKSUM_LEN as u64);
                if index > low && size > max {
                    read_to = index;
                    break;
                }
            }
        }
        let mut out: Vec<Entry> = Vec::with_capacity(read_to.saturating_sub(low) as usize);
        let mut size = 0u64;
        let mut full = false;
        b.wal.read_each(low, read_to, |index, raw| {
            if full {
                return Ok(());
            }
            let e = decode_entry(index, raw)?;
            size += u64::from(e.compute_size());
            match limit {
                Some(max) if !out.is_empty() && size > max => full = true,
                _ => out.push(e),
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Term of entry `index`, in `[first_index - 1, last_index]`.
    pub fn entry_term(&self, index: u64) -> Result<u64, StorageError> {
        let b = self.bounds();
        self.term_locked(&b, index)
    }

    /// Appends entries, truncating any conflicting suffix (every entry whose
    /// index is at or after the first new index). Entries must be
    /// consecutive, may not start below the first index, and may not leave a
    /// gap. Not durable until `sync` (once per Raft Ready: group commit),
    /// which must return before messages that acknowledge them go out.
    pub fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        // Entries come from raft-rs, and through it from the leader: an
        // index no log reaches is refused before any arithmetic on it.
        if let Some(e) = entries.iter().find(|e| e.index > MAX_RECORD_INDEX) {
            return Err(StorageError::Invalid(format!(
                "append: index {} is out of range (at most {MAX_RECORD_INDEX})",
                e.index
            )));
        }
        if entries.windows(2).any(|w| w[1].index != w[0].index + 1) {
            return Err(StorageError::Invalid(
                "append: entries are not consecutive".into(),
            ));
        }
        let mut b = self.bounds();
        if first.index <= b.truncated_index {
            return Err(StorageError::Invalid(format!(
                "append at {} would overwrite compacted log (first index {})",
                first.index,
                b.truncated_index + 1
            )));
        }
        if first.index > b.last_index + 1 {
            return Err(StorageError::Invalid(format!(
                "append at {} leaves a gap after last index {}",
                first.index, b.last_index
            )));
        }
        let records = entries
            .iter()
            .map(|e| Ok((e.index, encode_msg(e)?)))
            .collect::<Result<Vec<_>, StorageError>>()?;
        if first.index <= b.last_index {
            // A conflicting suffix: its removal is made durable before the
            // new entries are written, so a crash can never leave new-term
            // entries followed by stale ones.
            b.wal.truncate_from(first.index)?;
            b.last_index = first.index - 1;
        }
        // An append failing midway leaves records past `last_index` on disk;
        // the driver stops on any persist error, and a restart reloads the
        // log from the files.
        b.wal.append(&records)?;
        b.last_index = last.index;
        b.terms.append(entries);
        Ok(())
    }

    /// The durability barrier for what this log wrote: the segment files'
    /// fdatasync, and sled's too if the term, vote or conf state changed
    /// since it was last synced. A hard state that only moved the commit
    /// index does not count: a lost commit index is re-learned from the
    /// leader.
    pub fn sync(&self) -> Result<(), StorageError> {
        let meta = std::mem::take(&mut self.bounds().meta_unsynced);
        if meta {
            if let Err(e) = self.store.sync_sled() {
                self.bounds().meta_unsynced = true;
                return Err(e);
            }
        }
        self.store.sync_raft_wal()
    }

    /// Stores the hard state (not durable until `sync`; see there).
    pub fn set_hard_state(&self, hs: &HardState) -> Result<(), StorageError> {
        let mut b = self.bounds();
        let before = match b.term_vote {
            Some(tv) => tv,
            None => {
                let stored = self.hard_state()?;
                (stored.term, stored.vote)
            }
        };
        self.inner()
            .raft_meta
            .insert(META_HARD_STATE, encode_msg(hs)?)?;
        if before != (hs.term, hs.vote) {
            b.meta_unsynced = true;
        }
        b.term_vote = Some((hs.term, hs.vote));
        Ok(())
    }

    /// Stores the conf state (not durable until `sync`).
    pub fn set_conf_state(&self, cs: &ConfState) -> Result<(), StorageError> {
        let mut b = self.bounds();
        self.inner()
            .raft_meta
            .insert(META_CONF_STATE, encode_msg(cs)?)?;
        b.meta_unsynced = true;
        Ok(())
    }

    /// The stored hard state, default if none. A term or commit index out
    /// of range ([`MAX_RAFT_TERM`], `MAX_RECORD_INDEX`) is damage: raft-rs
    /// adds to both, and would overflow.
    pub fn hard_state(&self) -> Result<HardState, StorageError> {
        let hs: HardState = self
            .meta_msg(META_HARD_STATE, "raft hard state")?
            .unwrap_or_default();
        if hs.term > MAX_RAFT_TERM || hs.commit > MAX_RECORD_INDEX {
            return Err(corrupt(format!(
                "raft hard state: term {} or commit {} is out of range",
                hs.term, hs.commit
            )));
        }
        Ok(hs)
    }

    /// The stored conf state, default if none.
    pub fn conf_state(&self) -> Result<ConfState, StorageError> {
        Ok(self
            .meta_msg(META_CONF_STATE, "raft conf state")?
            .unwrap_or_default())
    }

    /// Metadata of the last snapshot installed with `apply_snapshot`
    /// (default if none).
    pub fn snapshot_metadata(&self) -> Result<SnapshotMetadata, StorageError> {
        Ok(self
            .meta_msg(META_SNAPSHOT, "raft snapshot metadata")?
            .unwrap_or_default())
    }

    /// Installs a snapshot received from the leader, like
    /// `MemStorage::apply_snapshot`: records its metadata, makes its index
    /// the truncation point (so `term(index)` answers), sets the conf state
    /// from it, raises the hard state's term and sets its commit to the
    /// index, and drops every log entry (those after the index too).
    /// `SnapshotOutOfDate` if the snapshot is older than the first index.
    /// The state-machine data is restored separately with
    /// `Store::restore_state`, before this.
    ///
    /// Durable on return. The metadata and a new log generation go to sled
    /// in one batch and are synced (with the restored state) before the
    /// segment files are replaced: a crash in between leaves files of the
    /// old generation, which the next open removes.
    pub fn apply_snapshot(&self, snap: &Snapshot) -> Result<(), StorageError> {
        let meta = snap.get_metadata();
        let index = meta.index;
        if index > MAX_RECORD_INDEX {
            // From the leader; the log's bounds are computed from it.
            return Err(StorageError::Invalid(format!(
                "snapshot at index {index} is out of range (at most {MAX_RECORD_INDEX})"
            )));
        }
        let mut b = self.bounds();
        if b.truncated_index + 1 > index {
            return Err(StorageError::SnapshotOutOfDate {
                index,
                first_index: b.truncated_index + 1,
            });
        }
        let mut hs = self.hard_state()?;
        hs.term = hs.term.max(meta.term);
        hs.commit = index;
        let generation = b.generation + 1;

        let mut meta_batch = sled::Batch::default();
        meta_batch.insert(META_SNAPSHOT, encode_msg(meta)?);
        meta_batch.insert(META_TRUNCATED, encode_truncated(index, meta.term));
        meta_batch.insert(META_CONF_STATE, encode_msg(meta.get_conf_state())?);
        meta_batch.insert(META_HARD_STATE, encode_msg(&hs)?);
        meta_batch.insert(META_WAL_GENERATION, encode_u64(generation));
        self.inner().raft_meta.apply_batch(meta_batch)?;
        self.store.sync_sled()?;
        b.wal.reset(generation)?;
        b.generation = generation;
        b.truncated_index = index;
        b.truncated_term = meta.term;
        b.last_index = index;
        b.terms = TermRuns::starting_at(index + 1);
        b.term_vote = Some((hs.term, hs.vote));
        b.meta_unsynced = false;
        Ok(())
    }

    /// Discards entries before `compact_index` (exclusive), remembering the
    /// term of `compact_index - 1` so `term()` still answers for it. No-op if
    /// already compacted that far; `Invalid` if `compact_index > last + 1`.
    /// The caller must not compact past the applied index.
    ///
    /// The entries leave memory at once and the disk a segment at a time:
    /// when a whole segment lies before the new first index, it is handed
    /// to the reclaim thread ([`crate::reclaim`]), which syncs sled (the
    /// truncation point, and the applied state that replaces the entries)
    /// and only then deletes it. Deleting it here cost the Ready loop
    /// 21–40 ms per segment under load.
    pub fn compact(&self, compact_index: u64) -> Result<(), StorageError> {
        let mut b = self.bounds();
        if compact_index <= b.truncated_index + 1 {
            return Ok(());
        }
        if compact_index > b.last_index + 1 {
            return Err(StorageError::Invalid(format!(
                "compact to {compact_index} past last index {}",
                b.last_index
            )));
        }
        let new_truncated = compact_index - 1;
        let term = self.term_locked(&b, new_truncated)?;
        // Not synced here: sled recovers a prefix of its writes, and the
        // applied state that replaces these entries was written before this.
        self.inner()
            .raft_meta
            .insert(META_TRUNCATED, encode_truncated(new_truncated, term))?;
        b.wal.forget_before(compact_index);
        b.truncated_index = new_truncated;
        b.truncated_term = term;
        b.terms.compact(compact_index);
        if b.wal.has_segments_before(compact_index) {
            let reclaim = Reclaim {
                dir: b.wal.dir().to_path_buf(),
                paths: b.wal.detach_segments_before(compact_index),
            };
            drop(b);
            self.store.reclaim_log_segments(reclaim)?;
        }
        Ok(())
    }

    /// Makes a snapshot of the state machine: data = `Store::snapshot_state()`,
    /// metadata index = the applied index that dump was taken at (read under
    /// the same lock, so data and index agree), its term, and the current
    /// conf state. `applied_index` is the minimum acceptable index:
    /// `SnapshotTemporarilyUnavailable` if the state machine is behind it.
    pub fn build_snapshot(&self, applied_index: u64) -> Result<Snapshot, StorageError> {
        let (applied, data) = self.store.snapshot_state_with_index()?;
        if applied < applied_index {
            return Err(StorageError::SnapshotTemporarilyUnavailable {
                applied,
                requested: applied_index,
            });
        }
        let term = self.entry_term(applied)?;
        let conf_state = self.conf_state()?;
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let meta = snap.mut_metadata();
        meta.index = applied;
        meta.term = term;
        meta.set_conf_state(conf_state);
        Ok(snap)
    }

    /// True when this log has never held anything: no entries, no
    /// snapshot, no hard state (term and vote), no configuration. A node
    /// with a blank log has promised nothing to anyone.
    pub fn is_blank(&self) -> Result<bool, StorageError> {
        let b = self.bounds();
        let meta = &self.inner().raft_meta;
        Ok(b.last_index == 0
            && b.truncated_index == 0
            && !meta.contains_key(META_HARD_STATE)?
            && !meta.contains_key(META_CONF_STATE)?)
    }

    /// Bootstrap for a brand-new node, like
    /// `MemStorage::initialize_with_conf_state`: if the log is empty and
    /// neither hard state nor conf state exists, set the conf state's voters.
    /// Returns whether it initialized (false: already initialized, no-op).
    pub fn initialize(&self, voters: &[u64]) -> Result<bool, StorageError> {
        /// Index and term of the bootstrap snapshot; the first real entry is 2.
        const BOOTSTRAP_INDEX: u64 = 1;
        const BOOTSTRAP_TERM: u64 = 1;
        if voters.is_empty() || voters.contains(&0) {
            return Err(StorageError::Invalid(
                "initialize: voters must be non-empty and non-zero".into(),
            ));
        }
        if !self.is_blank()? {
            return Ok(false);
        }
        // Bootstrap from a metadata-only snapshot at index 1 (the raft-rs
        // and TiKV convention) rather than a bare conf state: the initial
        // membership then lives in snapshot metadata, so a node that joins
        // later receives it with its first snapshot instead of replaying
        // membership changes against an empty configuration.
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = BOOTSTRAP_INDEX;
        meta.term = BOOTSTRAP_TERM;
        meta.mut_conf_state().voters = voters.to_vec();
        self.apply_snapshot(&snap)?;
        Ok(true)
    }

    /// (segment files, bytes on disk, retained entries) of the log, for
    /// `synapse debug storage-stats`.
    pub fn disk_usage(&self) -> (usize, u64, u64) {
        let b = self.bounds();
        let (files, bytes) = b.wal.disk_usage();
        (files, bytes, b.last_index - b.truncated_index)
    }

    /// Test/diagnostic hook: the stored record (checksum ++ entry) of
    /// `index`, unverified.
    #[doc(hidden)]
    pub fn debug_record(&self, index: u64) -> Result<Vec<u8>, StorageError> {
        let b = self.bounds();
        if index <= b.truncated_index || index > b.last_index {
            return Err(StorageError::NotFound);
        }
        b.wal
            .read(index, index + 1)?
            .pop()
            .ok_or(StorageError::NotFound)
    }

    /// Test/diagnostic hook: overwrites the stored record of `index` in
    /// place with bytes of the same length, unverified (to plant damage).
    #[doc(hidden)]
    pub fn debug_overwrite_record(&self, index: u64, record: &[u8]) -> Result<(), StorageError> {
        let mut b = self.bounds();
        if index <= b.truncated_index || index > b.last_index {
            return Err(StorageError::NotFound);
        }
        b.wal.overwrite(index, record)
    }
}

/// Repair of damaged Raft log records from peers.
///
/// Why replacing a damaged record with a peer's copy is safe, and when:
///
/// * An entry at index `i` that is committed is the same (same term, same
///   data) on every node that holds it, forever: Log Matching says two logs
///   with an entry of equal index and term agree on it and on everything
///   before it, and Leader Completeness says every later leader holds every
///   committed entry, so no committed entry is ever overwritten.
/// * This node's own commit index (`max(hard state commit, applied)`) only
///   ever covers entries its local log shared with a leader's log. So for
///   `i <= local commit` the record that got damaged *was* the committed
///   entry, and a peer's copy of committed entry `i` restores exactly what
///   was there: entries around it stay consistent with it.
/// * The peer must report `i` as committed on its side (`i <= its commit`)
///   too; an uncommitted peer entry could be one that is later overwritten.
/// * The copy is checked like a local read (record checksum, index under
///   its key) and for continuity with the intact local neighbours: terms in
///   a Raft log never decrease, so `term(i-1) <= term <= term(i+1)`; and if
///   this process still remembers the term it wrote at `i`, it must match.
///
/// Not repaired here (the node keeps refusing to start, with the index and
/// the remedy in the error): a damaged entry above the local commit index (we
/// cannot know that the local record was the committed one, and entries
/// after it might belong to a branch that the peer's entry does not
/// continue; dropping it instead could lose an entry this node acknowledged
/// towards a commit), and an entry no peer still has committed and retained
/// (compacted everywhere: the remedy is a snapshot, i.e. re-seeding the node).
impl RaftLog {
    /// Indices of retained log records (`first_index..=last_index`) that are
    /// missing or fail their checksum/decoding, ascending, at most `max`.
    /// Reads every retained record once; the retained log is bounded by
    /// compaction, so this is cheap enough to run at every start.
    pub fn damaged_entries(&self, max: usize) -> Result<Vec<u64>, StorageError> {
        let b = self.bounds();
        let mut out = Vec::new();
        let mut index = b.truncated_index + 1;
        while index <= b.last_index && out.len() < max {
            let end = (index + DAMAGE_SCAN_CHUNK).min(b.last_index + 1);
            match b.wal.read(index, end) {
                Ok(values) => {
                    for (i, raw) in (index..).zip(values) {
                        if out.len() >= max {
                            break;
                        }
                        match decode_entry(i, &raw) {
                            Ok(_) => {}
                            Err(e) if e.is_corrupt() => out.push(i),
                            Err(e) => return Err(e),
                        }
                    }
                }
                // A damaged header somewhere in the chunk: one at a time.
                Err(e) if e.is_corrupt() => {
                    for i in index..end {
                        if out.len() >= max {
                            break;
                        }
                        match read_entry(&b, i) {
                            Ok(_) => {}
                            Err(e) if e.is_corrupt() => out.push(i),
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
            index = end;
        }
        Ok(out)
    }

    /// The highest index this node knows to be committed: the stored hard
    /// state's commit, or the applied index if that is higher (the commit is
    /// stored without a sync, so after a crash it may trail the applied
    /// index; every applied entry was committed).
    pub fn local_commit_index(&self) -> Result<u64, StorageError> {
        Ok(self.hard_state()?.commit.max(self.store.applied_index()?))
    }

    /// Verified stored records (checksum ++ entry, as kept on disk) of the
    /// committed entries `[from, to]`, capped at `commit` and at `max_bytes`
    /// in total (at least one record if any is in range), for a peer that
    /// repairs its own copy. `Compacted` if `from` is no longer retained; a
    /// damaged local record is `Corrupt` (never sent).
    pub fn committed_records(
        &self,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> Result<(u64, Vec<Vec<u8>>), StorageError> {
        let commit = self.local_commit_index()?;
        let (first, last) = {
            let b = self.bounds();
            (b.truncated_index + 1, b.last_index)
        };
        if from < first {
            return Err(StorageError::Compacted { index: from });
        }
        let to = to.min(commit).min(last);
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut size = 0usize;
        let b = self.bounds();
        let mut index = from;
        while index <= to {
            let raw = b
                .wal
                .read(index, index + 1)?
                .pop()
                .ok_or_else(|| corrupt(format!("raft log entry {index} missing")))?;
            decode_entry(index, &raw)?;
            size += raw.len();
            if !out.is_empty() && size > max_bytes {
                break;
            }
            out.push(raw);
            index += 1;
        }
        Ok((commit, out))
    }

    /// Replaces the local record at `index` with `record` (a peer's stored
    /// record, see `committed_records`), which the peer reported committed
    /// up to `peer_commit`. Checks everything described on this `impl` and
    /// writes nothing unless all pass: `RepairRefused` otherwise. `Ok(false)`
    /// if the local record is intact and equal (nothing to do). No fsync:
    /// the caller syncs after a batch of repairs.
    pub fn repair_entry(
        &self,
        index: u64,
        record: &[u8],
        peer_commit: u64,
    ) -> Result<bool, StorageError> {
        let refuse = |reason: String| StorageError::RepairRefused { index, reason };
        let entry = decode_entry(index, record)
            .map_err(|e| refuse(format!("peer copy does not verify: {e}")))?;
        if index > peer_commit {
            return Err(refuse(format!(
                "not committed on the peer (its commit index is {peer_commit})"
            )));
        }
        let local_commit = self.local_commit_index()?;
        if index > local_commit {
            return Err(refuse(format!(
                "above this node's commit index {local_commit}: the local record may not be \
                 the committed entry"
            )));
        }
        let mut b = self.bounds();
        if index <= b.truncated_index || index > b.last_index {
            return Err(refuse(format!(
                "outside the retained log {}..={}",
                b.truncated_index + 1,
                b.last_index
            )));
        }
        match read_entry(&b, index) {
            Ok(local) if local == entry => return Ok(false),
            Ok(local) => {
                return Err(refuse(format!(
                    "the local record is intact and differs (local term {}, peer term {})",
                    local.term, entry.term
                )))
            }
            Err(e) if e.is_corrupt() => {}
            Err(e) => return Err(e),
        }
        if let Some(term) = b.terms.term(index) {
            if term != entry.term {
                return Err(refuse(format!(
                    "term {} differs from the term {term} this process wrote",
                    entry.term
                )));
            }
        }
        // Terms never decrease along a log: the copy must fit between its
        // intact neighbours (damaged neighbours are repaired on their own).
        let prev = if index - 1 == b.truncated_index {
            Some(b.truncated_term)
        } else {
            read_entry(&b, index - 1).ok().map(|e| e.term)
        };
        if let Some(prev) = prev {
            if entry.term < prev {
                return Err(refuse(format!(
                    "term {} is below the term {prev} of entry {}",
                    entry.term,
                    index - 1
                )));
            }
        }
        if index < b.last_index {
            if let Ok(next) = read_entry(&b, index + 1) {
                if entry.term > next.term {
                    return Err(refuse(format!(
                        "term {} is above the term {} of entry {}",
                        entry.term,
                        next.term,
                        index + 1
                    )));
                }
            }
        }
        // The bounds lock is held until here, so no append can interleave;
        // the in-memory term runs, where they cover `index`, already agree.
        // A committed entry encodes to the same bytes on every node, so its
        // record has the local record's length; one that does not is not
        // the same entry.
        if b.wal.value_len(index) != Some(record.len() as u32) {
            return Err(refuse(format!(
                "the copy is {} bytes, the local record {}",
                record.len(),
                b.wal.value_len(index).unwrap_or(0)
            )));
        }
        b.wal.overwrite(index, record)?;
        Ok(true)
    }
}

impl Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state().map_err(to_raft)?,
            self.conf_state().map_err(to_raft)?,
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        // Reads are synchronous (sled), so the async-fetch path is never used.
        self.read_entries(low, high, max_size.into())
            .map_err(to_raft)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.entry_term(idx).map_err(to_raft)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_log_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_log_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        self.build_snapshot(request_index).map_err(to_raft)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tests::ts;
    use crate::{ApplyBatch, Checkpoint, StoreOptions, ZERO_HASH};

    fn open(dir: &std::path::Path) -> Store {
        Store::open(dir, StoreOptions::default()).unwrap()
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("data-{index}-{term}").into_bytes().into(),
            ..Default::default()
        }
    }

    fn ents(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
        range.map(|i| entry(i, term)).collect()
    }

    fn ctx() -> GetEntriesContext {
        GetEntriesContext::empty(false)
    }

    fn is_store_err(r: raft::Result<impl std::fmt::Debug>, want: raft::StorageError) -> bool {
        matches!(r, Err(raft::Error::Store(e)) if e == want)
    }

    /// The term cache must agree with the entries on disk through appends,
    /// suffix overwrites, compaction, snapshots and a restart; a cache that
    /// kept a replaced suffix's term would fail the overwrite step.
    #[test]
    fn cached_terms_match_stored_entries() {
        let dir = tempfile::tempdir().unwrap();
        let check = |log: &RaftLog| {
            let (first, last) = (log.first_log_index(), log.last_log_index());
            for i in first..=last {
                assert_eq!(
                    log.entry_term(i).unwrap(),
                    log.read_entries(i, i + 1, None).unwrap()[0].term,
                    "term of entry {i}"
                );
            }
        };
        {
            let log = open(dir.path()).raft_log();
            log.append(&ents(1..=5, 1)).unwrap();
            log.append(&ents(6..=9, 2)).unwrap();
            check(&log);
            // A new leader overwrites 7.. with term 3.
            log.append(&ents(7..=12, 3)).unwrap();
            check(&log);
            assert_eq!(log.entry_term(8).unwrap(), 3);
            log.compact(8).unwrap();
            check(&log);
            assert_eq!(log.entry_term(7).unwrap(), 3, "truncated term");
            log.append(&ents(13..=14, 4)).unwrap();
            check(&log);
        }
        // After a restart the older entries come from disk, new ones cached.
        let log = open(dir.path()).raft_log();
        check(&log);
        log.append(&ents(13..=15, 5)).unwrap();
        check(&log);
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 20;
        snap.mut_metadata().term = 6;
        log.apply_snapshot(&snap).unwrap();
        assert_eq!(log.entry_term(20).unwrap(), 6);
        log.append(&ents(21..=22, 6)).unwrap();
        check(&log);
    }

    #[test]
    fn term_runs_stay_bounded() {
        let mut runs = TermRuns::starting_at(1);
        for i in 1..=(MAX_TERM_RUNS as u64 * 3) {
            runs.append(&[entry(i, i)]);
            assert!(runs.runs.len() <= MAX_TERM_RUNS);
            assert_eq!(runs.term(i), Some(i));
        }
        assert!(runs.term(1).is_none(), "forgotten runs fall back to disk");
    }

    #[test]
    fn empty_log_matches_memstorage() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path()).raft_log();
        assert_eq!(log.first_index().unwrap(), 1);
        assert_eq!(log.last_index().unwrap(), 0);
        assert_eq!(log.term(0).unwrap(), 0);
        assert!(is_store_err(log.term(1), raft::StorageError::Unavailable));
        assert!(log.entries(1, 1, None, ctx()).unwrap().is_empty());
        let st = log.initial_state().unwrap();
        assert!(!st.initialized());
        assert_eq!(st.hard_state, HardState::default());
    }

    #[test]
    fn append_entries_term_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path()).raft_log();
        log.append(&ents(1..=5, 1)).unwrap();
        log.append(&[]).unwrap();
        log.append(&ents(6..=10, 2)).unwrap();
        assert_eq!(log.first_index().unwrap(), 1);
        assert_eq!(log.last_index().unwrap(), 10);
        assert_eq!(log.term(5).unwrap(), 1);
        assert_eq!(log.term(6).unwrap(), 2);
        assert!(is_store_err(log.term(11), raft::StorageError::Unavailable));
        let got = log.entries(3, 8, None, ctx()).unwrap();
        assert_eq!(got, [ents(3..=5, 1), ents(6..=7, 2)].concat());
        assert_eq!(log.entries(3, 8, u64::MAX, ctx()).unwrap().len(), 5);
        // size limit: always at least one, then as many as fit
        let one = u64::from(entry(3, 1).compute_size());
        assert_eq!(log.entries(3, 8, 0, ctx()).unwrap().len(), 1);
        assert_eq!(log.entries(3, 8, one * 2, ctx()).unwrap().len(), 2);
        assert_eq!(log.entries(3, 8, one * 2 + 1, ctx()).unwrap().len(), 2);
        assert!(is_store_err(
            log.entries(3, 12, None, ctx()),
            raft::StorageError::Unavailable
        ));
        // misuse is an error, not a panic
        assert!(matches!(
            log.append(&ents(12..=13, 2)),
            Err(StorageError::Invalid(_))
        ));
        let mut not_consecutive = ents(11..=12, 2);
        not_consecutive[1].index = 14;
        assert!(log.append(&not_consecutive).is_err());
        assert!(log.read_entries(5, 4, None).is_err());
    }

    #[test]
    fn conflicting_append_truncates_suffix() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let log = store.raft_log();
        log.append(&ents(1..=10, 1)).unwrap();
        log.append(&ents(4..=5, 3)).unwrap();
        assert_eq!(log.last_index().unwrap(), 5);
        assert_eq!(log.term(3).unwrap(), 1);
        assert_eq!(log.term(4).unwrap(), 3);
        assert!(is_store_err(log.term(6), raft::StorageError::Unavailable));
        assert_eq!(log.disk_usage().2, 5);
        // re-appending an identical entry is harmless
        log.append(&ents(5..=5, 3)).unwrap();
        assert_eq!(log.entries(1, 6, None, ctx()).unwrap().len(), 5);
        drop(log);
        store.sync().unwrap();
        drop(store);
        let log = open(dir.path()).raft_log();
        assert_eq!(log.last_index().unwrap(), 5);
        assert_eq!(log.term(5).unwrap(), 3);
    }

    /// An entry of 1 MiB, so that a few of them fill a log segment.
    fn mib_entry(index: u64) -> Entry {
        Entry {
            index,
            term: 1,
            data: vec![index as u8; 1 << 20].into(),
            ..Default::default()
        }
    }

    fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(dir.join(crate::wal::WAL_DIR))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }

    /// Compaction past a segment boundary hands the sealed segment to the
    /// reclaim thread: it is out of the log at once, off the disk once the
    /// thread is done, and the log reopens from what is left.
    #[test]
    fn a_compacted_segment_is_deleted_by_the_reclaim_thread() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let log = store.raft_log();
        // 1 MiB entries: the 16 MiB segment seals after the 16th or 17th.
        let entries: Vec<Entry> = (1..=20).map(mib_entry).collect();
        // One Ready each: a segment seals between appends, not inside one.
        for e in &entries {
            log.append(std::slice::from_ref(e)).unwrap();
        }
        log.sync().unwrap();
        let before = segment_files(dir.path());
        assert_eq!(before.len(), 2, "{before:?}");
        assert_eq!(log.disk_usage().0, 2);
        log.compact(19).unwrap();
        assert_eq!(log.disk_usage().0, 1, "the sealed segment left the log");
        store.wait_for_log_reclaim();
        let after = segment_files(dir.path());
        assert_eq!(
            after,
            before[1..].to_vec(),
            "the sealed segment's file is gone"
        );
        assert_eq!(
            log.entries(19, 21, None, ctx()).unwrap(),
            entries[18..].to_vec()
        );
        drop(log);
        drop(store);
        let log = open(dir.path()).raft_log();
        assert_eq!(log.first_index().unwrap(), 19);
        assert_eq!(log.last_index().unwrap(), 20);
        assert_eq!(
            log.entries(19, 21, None, ctx()).unwrap(),
            entries[18..].to_vec()
        );
    }

    /// Segments a crash left behind the truncation point (handed over, not
    /// yet deleted) load as compacted, and the next compaction deletes them.
    #[test]
    fn segments_left_before_the_truncation_point_go_at_the_next_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<Entry> = (1..=40).map(mib_entry).collect();
        {
            let store = open(dir.path());
            let log = store.raft_log();
            for e in &entries[..20] {
                log.append(std::slice::from_ref(e)).unwrap();
            }
            log.sync().unwrap();
            let before = segment_files(dir.path());
            assert_eq!(before.len(), 2);
            // What a crash between the hand-over and the deletion leaves:
            // the truncation point durable, the file still there.
            let sealed = std::env::temp_dir().join(format!("kept-{}", std::process::id()));
            std::fs::copy(&before[0], &sealed).unwrap();
            log.compact(19).unwrap();
            store.wait_for_log_reclaim();
            store.sync().unwrap();
            std::fs::rename(&sealed, &before[0]).unwrap();
        }
        let store = open(dir.path());
        let log = store.raft_log();
        assert_eq!(log.first_index().unwrap(), 19);
        assert_eq!(log.disk_usage().0, 2, "the leftover loads as compacted");
        for e in &entries[20..] {
            log.append(std::slice::from_ref(e)).unwrap();
        }
        log.sync().unwrap();
        log.compact(39).unwrap();
        store.wait_for_log_reclaim();
        assert_eq!(segment_files(dir.path()).len(), 1);
        assert_eq!(
            log.entries(39, 41, None, ctx()).unwrap(),
            entries[38..].to_vec()
        );
    }

    #[test]
    fn compact_keeps_term_of_truncation_point() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let log = store.raft_log();
        log.append(&[ents(1..=4, 1), ents(5..=10, 2)].concat())
            .unwrap();
        log.compact(6).unwrap();
        assert_eq!(log.first_index().unwrap(), 6);
        assert_eq!(log.last_index().unwrap(), 10);
        assert_eq!(log.term(5).unwrap(), 2);
        assert!(is_store_err(log.term(4), raft::StorageError::Compacted));
        assert!(is_store_err(
            log.entries(5, 7, None, ctx()),
            raft::StorageError::Compacted
        ));
        assert_eq!(log.entries(6, 11, None, ctx()).unwrap(), ents(6..=10, 2));
        log.compact(3).unwrap(); // already compacted: no-op
        assert_eq!(log.first_index().unwrap(), 6);
        assert!(matches!(log.compact(12), Err(StorageError::Invalid(_))));
        assert!(matches!(
            log.append(&ents(5..=6, 3)),
            Err(StorageError::Invalid(_))
        ));
        // compact everything: empty log, bounds still right
        log.compact(11).unwrap();
        assert_eq!(
            (log.first_index().unwrap(), log.last_index().unwrap()),
            (11, 10)
        );
        assert_eq!(log.term(10).unwrap(), 2);
        log.append(&ents(11..=11, 3)).unwrap();
        drop(log);
        store.sync().unwrap();
        drop(store);
        let log = open(dir.path()).raft_log();
        assert_eq!(
            (log.first_index().unwrap(), log.last_index().unwrap()),
            (11, 11)
        );
        assert_eq!(log.term(10).unwrap(), 2);
        assert_eq!(log.term(11).unwrap(), 3);
    }

    /// A data dir written by a version that kept the log in the sled tree
    /// "raft_log" opens with its entries moved into segment files, once.
    #[test]
    fn a_log_kept_in_sled_is_moved_into_segment_files() {
        let dir = tempfile::tempdir().unwrap();
        let all = [ents(1..=3, 1), ents(4..=6, 2)].concat();
        {
            let store = open(dir.path());
            let legacy = store.inner.db.open_tree(TREE_RAFT_LOG).unwrap();
            for e in &all {
                legacy
                    .insert(crate::codec::u64_key(e.index), encode_msg(e).unwrap())
                    .unwrap();
            }
            // A crash in an earlier attempt left a partial copy behind.
            store.raft_log().append(&ents(1..=2, 9)).unwrap();
            store.sync().unwrap();
        }
        for _ in 0..2 {
            let store = open(dir.path());
            let log = store.raft_log();
            assert_eq!(log.read_entries(1, 7, None).unwrap(), all);
            assert!(!has_tree(&store.inner.db, TREE_RAFT_LOG));
        }
    }

    #[test]
    fn hard_and_conf_state_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let hs = HardState {
            term: 7,
            vote: 2,
            commit: 3,
            ..Default::default()
        };
        let cs = ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            ..Default::default()
        };
        {
            let store = open(dir.path());
            let log = store.raft_log();
            log.append(&ents(1..=3, 7)).unwrap();
            log.set_hard_state(&hs).unwrap();
            log.set_conf_state(&cs).unwrap();
            store.sync().unwrap();
        }
        let log = open(dir.path()).raft_log();
        assert_eq!(log.hard_state().unwrap(), hs);
        let st = log.initial_state().unwrap();
        assert_eq!(st.hard_state, hs);
        assert_eq!(st.conf_state, cs);
        assert!(st.initialized());
        assert_eq!(log.last_index().unwrap(), 3);
    }

    #[test]
    fn corrupt_log_record_is_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let log = store.raft_log();
        log.append(&ents(1..=5, 1)).unwrap();
        let original = log.debug_record(3).unwrap();
        for pos in 0..original.len() {
            let mut bytes = original.clone();
            bytes[pos] ^= 0x02;
            log.debug_overwrite_record(3, &bytes).unwrap();
            match log.entries(1, 6, None, ctx()) {
                Err(raft::Error::Store(raft::StorageError::Other(e))) => {
                    assert!(e.to_string().contains("corrupt"), "{e}")
                }
                other => panic!("pos {pos}: expected corruption error, got {other:?}"),
            }
            // The term of an entry this process appended comes from memory
            // (`TermRuns`), not from the damaged record; the record itself
            // is never served. After a restart the term is read (and
            // checked) from disk: see below.
            assert_eq!(log.term(3).unwrap(), 1);
            assert!(log.read_entries(3, 4, None).unwrap_err().is_corrupt());
        }
        {
            let mut bytes = original.clone();
            bytes[original.len() / 2] ^= 0x02;
            log.debug_overwrite_record(3, &bytes).unwrap();
            let fresh = RaftLog {
                store: store.clone(),
            };
            let mut b = fresh.bounds();
            b.terms = TermRuns::starting_at(b.last_index + 1);
            drop(b);
            assert!(fresh.term(3).is_err(), "a term read from disk is checked");
        }
        // Entries around it are still fine.
        log.debug_overwrite_record(3, &original).unwrap();
        assert_eq!(log.entries(1, 6, None, ctx()).unwrap(), ents(1..=5, 1));
        // A valid record of another entry in its place is also caught
        // (the entries of `ents` encode to the same length).
        log.debug_overwrite_record(3, &log.debug_record(2).unwrap())
            .unwrap();
        assert!(log.read_entries(3, 4, None).unwrap_err().is_corrupt());
        log.debug_overwrite_record(3, &original).unwrap();
        // Corrupt metadata.
        log.set_hard_state(&HardState::default()).unwrap();
        let meta = store.raw_tree("raft_meta").unwrap();
        let mut bytes = meta.get(META_HARD_STATE).unwrap().unwrap().to_vec();
        bytes[0] ^= 1;
        meta.insert(META_HARD_STATE, bytes).unwrap();
        assert!(log.hard_state().unwrap_err().is_corrupt());
        assert!(log.initial_state().is_err());
    }

    /// Damages the stored record at `index` in place (flips one byte).
    fn damage(store: &Store, index: u64) {
        let log = store.raft_log();
        let mut bytes = log.debug_record(index).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x10;
        log.debug_overwrite_record(index, &bytes).unwrap();
    }

    fn with_commit(log: &RaftLog, commit: u64) {
        let mut hs = log.hard_state().unwrap();
        hs.commit = commit;
        log.set_hard_state(&hs).unwrap();
    }

    fn refused(r: Result<bool, StorageError>) -> bool {
        matches!(r, Err(StorageError::RepairRefused { .. }))
    }

    #[test]
    fn damaged_entry_is_found_and_repaired_from_a_committed_peer_copy() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mine, peer) = (open(d1.path()), open(d2.path()));
        let all = [ents(1..=4, 1), ents(5..=8, 2)].concat();
        for s in [&mine, &peer] {
            s.raft_log().append(&all).unwrap();
            with_commit(&s.raft_log(), 8);
        }
        let log = mine.raft_log();
        assert!(log.damaged_entries(16).unwrap().is_empty());
        damage(&mine, 5);
        damage(&mine, 6);
        damage(&mine, 2);
        assert_eq!(log.damaged_entries(16).unwrap(), vec![2, 5, 6]);
        assert_eq!(log.damaged_entries(2).unwrap(), vec![2, 5]);

        let (peer_commit, records) = peer.raft_log().committed_records(2, 6, 1 << 20).unwrap();
        assert_eq!((peer_commit, records.len()), (8, 5));
        // Intact and equal: nothing to do.
        assert!(!log.repair_entry(3, &records[1], peer_commit).unwrap());
        for (i, r) in (2..=6).zip(&records) {
            if [2, 5, 6].contains(&i) {
                assert!(log.repair_entry(i, r, peer_commit).unwrap());
            }
        }
        assert!(log.damaged_entries(16).unwrap().is_empty());
        assert_eq!(log.read_entries(1, 9, None).unwrap(), all);
        // The byte budget bounds an answer (but one record always fits).
        assert_eq!(
            peer.raft_log().committed_records(2, 8, 1).unwrap().1.len(),
            1
        );
        // Never past the peer's commit index.
        with_commit(&peer.raft_log(), 6);
        assert_eq!(
            peer.raft_log()
                .committed_records(2, 8, 1 << 20)
                .unwrap()
                .1
                .len(),
            5
        );
        // A damaged record is never sent.
        damage(&peer, 4);
        assert!(peer
            .raft_log()
            .committed_records(2, 8, 1 << 20)
            .unwrap_err()
            .is_corrupt());
    }

    #[test]
    fn repair_refuses_copies_that_do_not_fit() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let _ = d2;
        let mine = open(d1.path());
        let log = mine.raft_log();
        log.append(&[ents(1..=4, 1), ents(5..=8, 3)].concat())
            .unwrap();
        with_commit(&log, 6);
        damage(&mine, 5);
        damage(&mine, 7);
        let record = |e: Entry| encode_msg(&e).unwrap();
        // A peer copy with a higher term than the next intact entry (a
        // diverged log): refused.
        assert!(refused(log.repair_entry(
            5,
            &record(ents(5..=5, 4)[0].clone()),
            8
        )));
        // A lower term than the previous intact entry: refused.
        assert!(refused(log.repair_entry(
            5,
            &record(ents(5..=5, 0)[0].clone()),
            8
        )));
        // An entry for another index (continuity): refused.
        assert!(refused(log.repair_entry(
            5,
            &record(ents(6..=6, 3)[0].clone()),
            8
        )));
        // A damaged copy (checksum): refused.
        let mut bad = record(ents(5..=5, 3)[0].clone());
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        assert!(refused(log.repair_entry(5, &bad, 8)));
        // Not committed on the peer: refused.
        let good = record(ents(5..=5, 3)[0].clone());
        assert!(refused(log.repair_entry(5, &good, 4)));
        // Above this node's own commit index (6): refused even if the peer
        // has it committed.
        assert!(refused(log.repair_entry(
            7,
            &record(ents(7..=7, 3)[0].clone()),
            8
        )));
        // An intact local record that differs: refused, not overwritten.
        assert!(refused(log.repair_entry(
            4,
            &record(ents(4..=4, 2)[0].clone()),
            8
        )));
        // Nothing was written by any refusal.
        assert_eq!(log.damaged_entries(16).unwrap(), vec![5, 7]);
        // The right copy is accepted.
        assert!(log.repair_entry(5, &good, 8).unwrap());
        assert_eq!(log.damaged_entries(16).unwrap(), vec![7]);
        // Outside the retained log: refused.
        assert!(refused(log.repair_entry(
            9,
            &record(ents(9..=9, 3)[0].clone()),
            9
        )));
    }

    #[test]
    fn initialize_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let log = store.raft_log();
        assert!(log.initialize(&[]).is_err());
        assert!(log.initialize(&[1, 2, 3]).unwrap());
        assert!(!log.initialize(&[1, 2, 3]).unwrap());
        assert!(!log.initialize(&[9]).unwrap());
        assert_eq!(log.conf_state().unwrap().voters, vec![1, 2, 3]);
        assert!(log.initial_state().unwrap().initialized());
        drop(log);
        store.sync().unwrap();
        drop(store);
        assert!(!open(dir.path()).raft_log().initialize(&[1]).unwrap());
        // A node that already has log entries is not re-initialized.
        let dir2 = tempfile::tempdir().unwrap();
        let log2 = open(dir2.path()).raft_log();
        log2.append(&ents(1..=1, 1)).unwrap();
        assert!(!log2.initialize(&[1]).unwrap());
    }

    fn feed(store: &Store, instance: &str, n: u64) {
        let log = store.raft_log();
        let mut parent = ZERO_HASH;
        for v in 1..=n {
            let index = log.last_index().unwrap() + 1;
            let cp = Checkpoint::seal(
                "kv".into(),
                instance.into(),
                v,
                parent,
                vec![v as u8],
                ts(v),
                format!("r{v}"),
            );
            parent = cp.hash;
            let mut e = entry(index, 2);
            e.set_data(cp.encode().into());
            log.append(&[e]).unwrap();
            let mut b = ApplyBatch::default();
            b.put_checkpoint(&cp, b"ok");
            b.set_applied(index);
            store.commit_apply(b).unwrap();
        }
    }

    #[test]
    fn snapshot_transfers_state_to_a_fresh_node() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let leader = open(d1.path());
        let llog = leader.raft_log();
        llog.initialize(&[1, 2]).unwrap();
        feed(&leader, "a", 6);
        feed(&leader, "b", 3);
        llog.compact(9).unwrap();
        // Not applied that far yet: temporarily unavailable.
        assert!(is_store_err(
            llog.snapshot(100, 2),
            raft::StorageError::SnapshotTemporarilyUnavailable
        ));
        let snap = llog.snapshot(5, 2).unwrap();
        assert_eq!(snap.get_metadata().index, 10);
        assert_eq!(snap.get_metadata().term, 2);
        assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1, 2]);

        let follower = open(d2.path());
        let flog = follower.raft_log();
        flog.append(&ents(1..=2, 1)).unwrap(); // stale local log
        follower.restore_state(snap.get_data()).unwrap();
        flog.apply_snapshot(&snap).unwrap();
        assert_eq!(follower.state_hash().unwrap(), leader.state_hash().unwrap());
        assert_eq!(follower.applied_index().unwrap(), 10);
        assert_eq!(
            (flog.first_index().unwrap(), flog.last_index().unwrap()),
            (11, 10)
        );
        assert_eq!(flog.term(10).unwrap(), 2);
        assert_eq!(flog.hard_state().unwrap().commit, 10);
        assert_eq!(flog.hard_state().unwrap().term, 2);
        assert_eq!(flog.conf_state().unwrap().voters, vec![1, 2]);
        assert_eq!(flog.snapshot_metadata().unwrap().index, 10);
        assert_eq!(
            follower.latest("kv", "a").unwrap(),
            leader.latest("kv", "a").unwrap()
        );
        // Older snapshot is refused.
        assert!(matches!(
            flog.apply_snapshot(&snap),
            Err(StorageError::SnapshotOutOfDate { .. })
        ));
        // The follower can continue the log after the snapshot.
        flog.append(&ents(11..=11, 3)).unwrap();
        // And it survives reopen.
        drop(flog);
        follower.sync().unwrap();
        drop(follower);
        let follower = open(d2.path());
        let flog = follower.raft_log();
        assert_eq!(
            (flog.first_index().unwrap(), flog.last_index().unwrap()),
            (11, 11)
        );
        assert_eq!(flog.term(10).unwrap(), 2);
        assert_eq!(
            follower.state_hash().unwrap().1,
            leader.state_hash().unwrap().1
        );
    }

    #[test]
    fn corrupted_snapshot_leaves_follower_untouched() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let leader = open(d1.path());
        feed(&leader, "a", 4);
        let snap = leader.raft_log().build_snapshot(0).unwrap();
        let follower = open(d2.path());
        feed(&follower, "mine", 2);
        let before = follower.state_hash().unwrap();
        let mut data = snap.get_data().to_vec();
        let mid = data.len() / 2;
        data[mid] ^= 0x01;
        assert!(follower.restore_state(&data).unwrap_err().is_corrupt());
        assert_eq!(follower.state_hash().unwrap(), before);
        assert_eq!(follower.latest("kv", "mine").unwrap().unwrap().version, 2);
    }

    /// Drives a real raft-rs `RawNode` (single voter) on `RaftLog`: propose,
    /// persist each Ready, sync, apply, compact, restart from disk, continue.
    /// Writes `value` under `key` in "raft_meta" of the data dir in `dir`
    /// (sealed like the real record, so its checksum passes).
    fn forge_meta(dir: &std::path::Path, key: &[u8], value: Vec<u8>) {
        let store = open(dir);
        store
            .raw_tree("raft_meta")
            .unwrap()
            .insert(key, value)
            .unwrap();
        store.sync().unwrap();
    }

    /// A stored hard state whose term raft-rs would overflow at the next
    /// election (or whose commit is past any index) is damage, refused
    /// when raft-rs asks for its initial state.
    #[test]
    fn a_hard_state_out_of_range_is_corrupt() {
        for (term, commit) in [
            (u64::MAX, 0),
            (MAX_RAFT_TERM + 1, 0),
            (1, MAX_RECORD_INDEX + 1),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = open(dir.path());
            let log = store.raft_log();
            let hs = HardState {
                term,
                commit,
                ..Default::default()
            };
            log.set_hard_state(&hs).unwrap();
            let err = log.hard_state().unwrap_err();
            assert!(err.is_corrupt(), "{err}");
            assert!(raft::Storage::initial_state(&log).is_err());
        }
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path()).raft_log();
        let hs = HardState {
            term: MAX_RAFT_TERM,
            commit: MAX_RECORD_INDEX,
            ..Default::default()
        };
        log.set_hard_state(&hs).unwrap();
        assert_eq!(log.hard_state().unwrap(), hs, "the bounds themselves pass");
    }

    /// A truncation point past `MAX_RECORD_INDEX` is damage: before, open
    /// computed `truncated_index + 1` and panicked in a debug build.
    #[test]
    fn a_truncation_point_out_of_range_is_corrupt_at_open() {
        for index in [u64::MAX, MAX_RECORD_INDEX + 1] {
            let dir = tempfile::tempdir().unwrap();
            forge_meta(dir.path(), META_TRUNCATED, encode_truncated(index, 1));
            let err = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
            assert!(err.is_corrupt(), "{err}");
            assert!(err.to_string().contains("out of range"), "{err}");
        }
    }

    /// A log generation of u64::MAX is damage: before, it opened, and the
    /// next snapshot install computed `generation + 1` and panicked in a
    /// debug build.
    #[test]
    fn a_log_generation_out_of_range_is_corrupt_at_open() {
        let dir = tempfile::tempdir().unwrap();
        forge_meta(dir.path(), META_WAL_GENERATION, encode_u64(u64::MAX));
        match Store::open(dir.path(), StoreOptions::default()) {
            Err(e) => assert!(e.is_corrupt(), "{e}"),
            Ok(store) => {
                let mut snap = Snapshot::default();
                snap.mut_metadata().index = 5;
                snap.mut_metadata().term = 1;
                let result = store.raft_log().apply_snapshot(&snap);
                panic!("opened with generation u64::MAX (snapshot install: {result:?})");
            }
        }
    }

    /// An entry of the sled tree an older version kept the log in, under a
    /// key past `MAX_RECORD_INDEX`, is damage, reported as such (and not
    /// moved into the segment files).
    #[test]
    fn a_legacy_log_key_out_of_range_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            let legacy = store.inner.db.open_tree(TREE_RAFT_LOG).unwrap();
            legacy
                .insert(
                    crate::codec::u64_key(u64::MAX),
                    encode_msg(&entry(u64::MAX, 1)).unwrap(),
                )
                .unwrap();
            store.sync().unwrap();
        }
        let err = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
        assert!(err.is_corrupt(), "{err}");
        assert!(err.to_string().contains("malformed raft log key"), "{err}");
    }

    /// Entries (from raft-rs, and through it the leader) with an index past
    /// `MAX_RECORD_INDEX` are refused before any arithmetic on it: before,
    /// the consecutiveness check computed `index + 1` and panicked in a
    /// debug build.
    #[test]
    fn an_append_past_the_index_range_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let log = store.raft_log();
        log.append(&ents(1..=2, 1)).unwrap();
        for bad in [
            vec![entry(u64::MAX, 1), entry(0, 1)],
            vec![entry(MAX_RECORD_INDEX + 1, 1)],
        ] {
            let err = log.append(&bad).unwrap_err();
            assert!(matches!(err, StorageError::Invalid(_)), "{err:?}");
        }
        assert_eq!(log.read_entries(1, 3, None).unwrap(), ents(1..=2, 1));
    }

    /// A snapshot (from the leader) at an index past `MAX_RECORD_INDEX` is
    /// refused and nothing is written: before, it was recorded, and the
    /// install then computed `index + 1` and panicked in a debug build.
    #[test]
    fn a_snapshot_past_the_index_range_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let log = store.raft_log();
        log.append(&ents(1..=2, 1)).unwrap();
        for index in [u64::MAX, MAX_RECORD_INDEX + 1] {
            let mut snap = Snapshot::default();
            snap.mut_metadata().index = index;
            snap.mut_metadata().term = 1;
            let err = log.apply_snapshot(&snap).unwrap_err();
            assert!(matches!(err, StorageError::Invalid(_)), "{err:?}");
        }
        assert_eq!(
            (log.first_log_index(), log.last_log_index()),
            (1, 2),
            "nothing was installed"
        );
        assert_eq!(
            log.snapshot_metadata().unwrap(),
            SnapshotMetadata::default()
        );
        drop(log);
        drop(store);
        // And the data dir still opens.
        let log = open(dir.path()).raft_log();
        assert_eq!(log.read_entries(1, 3, None).unwrap(), ents(1..=2, 1));
    }

    mod raw_node {
        use super::*;
        use raft::{Config, RawNode};

        fn logger() -> slog::Logger {
            slog::Logger::root(slog::Discard, slog::o!())
        }

        fn node(store: &Store) -> RawNode<RaftLog> {
            let cfg = Config {
                id: 1,
                applied: store.applied_index().unwrap(),
                ..Default::default()
            };
            cfg.validate().unwrap();
            RawNode::new(&cfg, store.raft_log(), &logger()).unwrap()
        }

        fn apply(store: &Store, entries: Vec<Entry>) {
            let mut b = ApplyBatch::default();
            for e in entries {
                if !e.data.is_empty() {
                    let cp = Checkpoint::decode(&e.data).unwrap();
                    b.put_checkpoint(&cp, b"ok");
                }
                b.set_applied(e.index);
            }
            store.commit_apply(b).unwrap();
        }

        fn pump(raw: &mut RawNode<RaftLog>, store: &Store) {
            while raw.has_ready() {
                let mut rd = raw.ready();
                let log = store.raft_log();
                if !rd.snapshot().is_empty() {
                    store.restore_state(rd.snapshot().get_data()).unwrap();
                    log.apply_snapshot(rd.snapshot()).unwrap();
                }
                log.append(rd.entries()).unwrap();
                if let Some(hs) = rd.hs() {
                    log.set_hard_state(hs).unwrap();
                }
                store.sync().unwrap();
                apply(store, rd.take_committed_entries());
                let mut light = raw.advance(rd);
                if let Some(commit) = light.commit_index() {
                    let mut hs = log.hard_state().unwrap();
                    hs.commit = commit;
                    log.set_hard_state(&hs).unwrap();
                }
                apply(store, light.take_committed_entries());
                raw.advance_apply();
            }
        }

        fn propose_versions(
            raw: &mut RawNode<RaftLog>,
            store: &Store,
            range: std::ops::RangeInclusive<u64>,
        ) {
            for v in range {
                let parent = store
                    .latest("kv", "x")
                    .unwrap()
                    .map(|c| c.hash)
                    .unwrap_or(ZERO_HASH);
                let cp = Checkpoint::seal(
                    "kv".into(),
                    "x".into(),
                    v,
                    parent,
                    vec![v as u8],
                    ts(v),
                    format!("r{v}"),
                );
                raw.propose(vec![], cp.encode()).unwrap();
                pump(raw, store);
                assert_eq!(store.latest("kv", "x").unwrap().unwrap().version, v);
            }
        }

        #[test]
        fn single_node_cluster_survives_compaction_and_restart() {
            let dir = tempfile::tempdir().unwrap();
            {
                let store = open(dir.path());
                assert!(store.raft_log().initialize(&[1]).unwrap());
                let mut raw = node(&store);
                raw.campaign().unwrap();
                pump(&mut raw, &store);
                assert_eq!(raw.raft.state, raft::StateRole::Leader);
                propose_versions(&mut raw, &store, 1..=10);
                let applied = store.applied_index().unwrap();
                store.raft_log().compact(applied).unwrap();
                store.sync().unwrap();
            }
            let store = open(dir.path());
            let applied = store.applied_index().unwrap();
            let mut raw = node(&store);
            assert_eq!(raw.raft.raft_log.applied, applied);
            raw.campaign().unwrap();
            pump(&mut raw, &store);
            assert_eq!(raw.raft.state, raft::StateRole::Leader);
            propose_versions(&mut raw, &store, 11..=15);
            let report = store.verify_chain("kv", "x").unwrap();
            assert!(report.ok, "{report:?}");
            assert_eq!(report.latest_version, 15);
            let hs = store.raft_log().hard_state().unwrap();
            assert_eq!(hs.commit, store.applied_index().unwrap());
            assert_eq!(store.raft_log().last_index().unwrap(), hs.commit);
        }
    }
}
