//! Audit log: append-only, hash-chained records of capability decisions, in
//! segment files of their own (`<data dir>/audit-log/`, the same record
//! format and torn-tail recovery as the Raft log, `crate::wal`), one record
//! per sequence number.
//!
//! Appends are not fsynced: a record becomes durable with the next
//! `Store::audit_sync()`, which the runtime's audit writer calls per batch,
//! off the request path. Losing the last few records in a crash is
//! accepted; forging or editing records is not (hash chain).

use std::path::Path;

use crate::codec::{key_u64, open_value, seal_value, sha256, u64_key, Reader, Writer};
use crate::error::corrupt;
use crate::store::lock;
use crate::wal::{OpenReport, Wal};
use crate::{Hash, StorageError, Store, Timestamp, ZERO_HASH};

const AUDIT_DOMAIN: &[u8] = b"synapse.audit.v1";

/// Most records one query reads (and verifies), newest first. A query is
/// answered from at most this many records so that a filter matching
/// nothing cannot make one call read a million-record log; at ~2 µs per
/// record that is ≈ 0.2 s worst case.
pub const MAX_AUDIT_SCAN: usize = 100_000;

/// Which audit records a query returns. Empty/`None`/0 = no restriction.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Inclusive HLC physical-time range in µs; 0 = unbounded.
    pub from_micros: u64,
    pub to_micros: u64,
    pub principal: Option<String>,
    pub allowed: Option<bool>,
    /// At most this many results (the caller bounds it).
    pub limit: usize,
}

impl AuditFilter {
    fn matches(&self, r: &AuditRecord) -> bool {
        let t = r.timestamp.physical_micros;
        (self.from_micros == 0 || t >= self.from_micros)
            && (self.to_micros == 0 || t <= self.to_micros)
            && self.principal.as_deref().is_none_or(|p| p == r.principal)
            && self.allowed.is_none_or(|a| a == r.allowed)
    }
}

/// One capability decision.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditRecord {
    /// Assigned by `Store::audit_append` (1, 2, ...).
    pub seq: u64,
    pub timestamp: Timestamp,
    pub principal: String,
    pub skill: String,
    pub instance: String,
    pub method: String,
    pub allowed: bool,
    pub reason: String,
    /// Hash of the previous record (`ZERO_HASH` for the first); assigned.
    pub prev_hash: Hash,
    /// SHA-256 over the canonical encoding of all other fields; assigned.
    pub hash: Hash,
}

impl AuditRecord {
    fn canonical(&self) -> Writer {
        let mut w = Writer::with_capacity(
            AUDIT_DOMAIN.len()
                + 128
                + self.principal.len()
                + self.skill.len()
                + self.instance.len()
                + self.method.len()
                + self.reason.len(),
        );
        w.raw(AUDIT_DOMAIN)
            .u64(self.seq)
            .timestamp(&self.timestamp)
            .bytes(self.principal.as_bytes())
            .bytes(self.skill.as_bytes())
            .bytes(self.instance.as_bytes())
            .bytes(self.method.as_bytes())
            .u8(u8::from(self.allowed))
            .bytes(self.reason.as_bytes())
            .raw(&self.prev_hash);
        w
    }

    /// SHA-256 over a domain tag and every field except `hash`.
    pub fn compute_hash(&self) -> Hash {
        sha256(self.canonical().as_slice())
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = self.canonical();
        w.raw(&self.hash);
        w.into_inner()
    }

    /// Same scheme as `Checkpoint::decode`: the hash covers the raw bytes.
    pub(crate) fn decode(bytes: &[u8]) -> Result<AuditRecord, StorageError> {
        if bytes.len() < AUDIT_DOMAIN.len() + 32 {
            return Err(corrupt("audit record: truncated"));
        }
        let (body, stored) = bytes.split_at(bytes.len() - 32);
        let hash = sha256(body);
        if hash != stored {
            return Err(corrupt("audit record: hash mismatch"));
        }
        let mut r = Reader::new(body, "audit record");
        r.tag(AUDIT_DOMAIN)?;
        let rec = AuditRecord {
            seq: r.u64()?,
            timestamp: r.timestamp()?,
            principal: r.string()?,
            skill: r.string()?,
            instance: r.string()?,
            method: r.string()?,
            allowed: match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(corrupt("audit record: bad bool")),
            },
            reason: r.string()?,
            prev_hash: r.hash()?,
            hash,
        };
        r.finish()?;
        Ok(rec)
    }
}

/// A record as stored at position `seq` of the trail (sealed: checksum ++
/// encoding): verified, and checked to be the record of that position.
pub(crate) fn decode_stored(seq: u64, raw: &[u8]) -> Result<AuditRecord, StorageError> {
    let rec = AuditRecord::decode(open_value(raw, "audit record")?)?;
    if rec.seq != seq {
        return Err(corrupt(format!(
            "audit record {} where {seq} belongs",
            rec.seq
        )));
    }
    Ok(rec)
}

/// Directory of the audit trail's segment files inside a node's data
/// directory. Before, the trail was a sled database (`<dir>/audit/`): every
/// batch paid sled's leaf copies and I/O-pool wake-ups, retention a range
/// delete of up to 50 000 keys, and sled kept per-page state in memory for
/// every record retained (the leader's RSS grew with the trail until it
/// reached retention). In segment files a batch is one `pwrite`, its
/// barrier one `fdatasync`, and retention deletes whole files.
pub(crate) const AUDIT_LOG_DIR: &str = "audit-log";

/// The sled database the trail lived in before `AUDIT_LOG_DIR`; moved at
/// open (see `Store::open`).
pub(crate) const LEGACY_AUDIT_DB_DIR: &str = "audit";

/// Key, in the main database's default tree, of the first retained
/// sequence number and the hash of the record before it (`ZERO_HASH` if
/// none). Pruning forgets records at once but deletes them only a whole
/// segment at a time, so without this a restart would bring back up to one
/// segment of pruned records; and after everything was pruned, the next
/// record still links to the last one pruned. Synced before any segment
/// file is deleted.
const KEY_AUDIT_FIRST: &[u8] = b"audit/first";

/// Above any sequence number a real trail reaches (one record per
/// capability decision); a marker past it is damage, and refusing it keeps
/// `seq + 1` from overflowing.
const MAX_AUDIT_SEQ: u64 = u64::MAX / 2;

fn encode_first_marker(first: u64, prev_hash: &Hash) -> Vec<u8> {
    let mut v = u64_key(first).to_vec();
    v.extend_from_slice(prev_hash);
    seal_value(&v)
}

fn decode_first_marker(raw: &[u8]) -> Result<(u64, Hash), StorageError> {
    let body = open_value(raw, "audit trail first-record marker")?;
    let malformed = || corrupt("audit trail: malformed first-record marker");
    if body.len() != 8 + 32 {
        return Err(malformed());
    }
    let first = key_u64(&body[..8])
        .filter(|f| *f <= MAX_AUDIT_SEQ)
        .ok_or_else(malformed)?;
    let mut hash = ZERO_HASH;
    hash.copy_from_slice(&body[8..]);
    Ok((first, hash))
}

/// Records read (and verified) per lock hold by a newest-first scan, so a
/// long query never holds the writer up for more than one chunk.
const AUDIT_READ_CHUNK: u64 = 1_024;

/// One record in this many has its location held in memory; the others
/// are found by reading forward from it. Queries read runs of
/// `AUDIT_READ_CHUNK` records, so this costs them at most one extra short
/// read, and the index of a million retained records is 130 KB, not 8 MB
/// (which was the leader's RSS growth in a sustained run).
const AUDIT_INDEX_STRIDE: u64 = 64;

/// The trail's segment files in `dir`, with the trail's sparse index.
fn open_audit_wal(dir: &Path, simulation: bool) -> Result<(Wal, OpenReport), StorageError> {
    Wal::open_in(
        dir,
        AUDIT_LOG_DIR,
        "audit trail",
        0,
        simulation,
        AUDIT_INDEX_STRIDE,
    )
}

/// The trail's segment files and its cached chain head. Behind one mutex:
/// the single writer, pruning and each chunk of a query take turns.
pub(crate) struct AuditLog {
    wal: Wal,
    /// (seq, hash) of the newest record; `None` until first needed.
    head: Option<(u64, Hash)>,
    /// Hash of the record before the first retained one (the marker's).
    before_first: Hash,
}

impl AuditLog {
    /// Opens the trail in `dir` (recovering a torn tail like the Raft log)
    /// and forgets what an earlier prune cut, as recorded in `db`.
    pub(crate) fn open(
        dir: &Path,
        db: &sled::Db,
        simulation: bool,
    ) -> Result<AuditLog, StorageError> {
        let (mut wal, report) = open_audit_wal(dir, simulation)?;
        if report.torn_bytes > 0 {
            tracing::warn!(
                bytes = report.torn_bytes,
                "audit trail: cut a torn tail (records not yet synced at a crash)"
            );
        }
        let mut before_first = ZERO_HASH;
        if let Some(raw) = db.get(KEY_AUDIT_FIRST)? {
            let (first, hash) = decode_first_marker(&raw)?;
            wal.forget_before(first);
            wal.remove_segments_before(first)?;
            before_first = hash;
        }
        if wal.last_index().is_some_and(|l| l > MAX_AUDIT_SEQ) {
            return Err(corrupt("audit trail: sequence number out of range"));
        }
        Ok(AuditLog {
            wal,
            head: None,
            before_first,
        })
    }

    /// A new, empty trail holding `records` (key = seq big-endian, value =
    /// the record's encoding), synced: the target of a migration from an
    /// older layout. Values are copied as they are, so a damaged record
    /// stays detectably damaged (its hash) instead of stopping the move.
    /// A gap in the sequence cannot be represented and is refused.
    fn create_from(
        dir: &Path,
        simulation: bool,
        records: impl Iterator<Item = Result<(sled::IVec, sled::IVec), sled::Error>>,
    ) -> Result<u64, StorageError> {
        let path = dir.join(AUDIT_LOG_DIR);
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        let (mut wal, _) = open_audit_wal(dir, simulation)?;
        let mut chunk: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut count = 0u64;
        for item in records {
            let (key, value) = item?;
            let seq = key_u64(&key)
                .filter(|s| *s <= MAX_AUDIT_SEQ)
                .ok_or_else(|| corrupt("legacy audit trail: malformed key"))?;
            let expected = chunk
                .last()
                .map(|(s, _)| s + 1)
                .or_else(|| wal.last_index().map(|l| l + 1));
            if expected.is_some_and(|e| e != seq) {
                return Err(corrupt(format!(
                    "legacy audit trail: record {seq} follows {} (records missing); move {} aside \
                     to start without the old trail",
                    expected.unwrap_or(seq) - 1,
                    dir.join(LEGACY_AUDIT_DB_DIR).display()
                )));
            }
            chunk.push((seq, seal_value(&value)));
            count += 1;
            if chunk.len() as u64 == AUDIT_READ_CHUNK {
                wal.append(&std::mem::take(&mut chunk))?;
            }
        }
        wal.append(&chunk)?;
        wal.sync()?;
        Ok(count)
    }

    /// Records `[lo, hi)`, each verified (checksum, hash) and checked to be
    /// the record its position says.
    fn read(&self, lo: u64, hi: u64) -> Result<Vec<AuditRecord>, StorageError> {
        self.wal
            .read(lo, hi)?
            .iter()
            .zip(lo..)
            .map(|(raw, seq)| decode_stored(seq, raw))
            .collect()
    }

    /// (seq, hash) of the newest record; after everything was pruned, the
    /// numbering continues from the first-record marker.
    fn head(&mut self) -> Result<(u64, Hash), StorageError> {
        if let Some(h) = self.head {
            return Ok(h);
        }
        let h = match self.wal.last_index() {
            Some(last) => {
                let rec = self
                    .read(last, last + 1)?
                    .pop()
                    .ok_or_else(|| corrupt("audit trail: newest record missing"))?;
                (rec.seq, rec.hash)
            }
            None => (self.wal.next_index().saturating_sub(1), self.before_first),
        };
        self.head = Some(h);
        Ok(h)
    }

    /// (segment files, bytes on disk, records retained).
    pub(crate) fn disk_usage(&self) -> (usize, u64, u64) {
        let (files, bytes) = self.wal.disk_usage();
        let records = match (self.wal.first_index(), self.wal.last_index()) {
            (Some(f), Some(l)) => l + 1 - f,
            _ => 0,
        };
        (files, bytes, records)
    }

    pub(crate) fn copy_durable_to(&self, data_dir: &Path) -> Result<(), StorageError> {
        self.wal.copy_durable_to(data_dir)
    }
}

/// Moves the audit trail of an older layout into segment files: a tree in
/// the main database (oldest), or the separate sled database
/// `LEGACY_AUDIT_DB_DIR`. Idempotent: the old copy is removed only after
/// the new one is durable, and a crash before that makes the next open
/// start over from the old copy.
pub(crate) fn migrate_legacy_audit(
    dir: &Path,
    main: &sled::Db,
    main_file: &std::fs::File,
    simulation: bool,
) -> Result<(), StorageError> {
    let legacy_dir = dir.join(LEGACY_AUDIT_DB_DIR);
    let doomed = dir.join(DOOMED_LEGACY_AUDIT_DB_DIR);
    if doomed.exists() {
        // A move finished, but the crash came before the old copy was gone.
        std::fs::remove_dir_all(&doomed)?;
    }
    let in_main = crate::store::has_tree(main, crate::store::TREE_AUDIT);
    if !in_main && !legacy_dir.join("db").exists() {
        return Ok(());
    }
    let moved = if in_main {
        // The oldest layout; a separate database next to it can only be a
        // partial copy from an interrupted earlier move.
        let old = main.open_tree(crate::store::TREE_AUDIT)?;
        AuditLog::create_from(dir, simulation, old.iter())?
    } else {
        let legacy = sled::Config::new()
            .path(&legacy_dir)
            .cache_capacity(LEGACY_MIGRATION_CACHE_BYTES)
            .open()?;
        let tree = legacy.open_tree(crate::store::TREE_AUDIT)?;
        AuditLog::create_from(dir, simulation, tree.iter())?
    };
    // The new trail is durable; no stale marker may cut it, so that goes
    // first. Then retire the old copies, the separate database before the
    // main tree: while the main database still has its tree, a crash
    // restarts the move from that tree, never from a partial copy. The
    // rename is atomic; deleting the files is not.
    main.remove(KEY_AUDIT_FIRST)?;
    main.flush()?;
    main_file.sync_data()?;
    if legacy_dir.exists() {
        std::fs::rename(&legacy_dir, &doomed)?;
        std::fs::File::open(dir)?.sync_all()?;
    }
    if in_main {
        main.drop_tree(crate::store::TREE_AUDIT)?;
        main.flush()?;
        main_file.sync_data()?;
    }
    if doomed.exists() {
        std::fs::remove_dir_all(&doomed)?;
    }
    tracing::info!(records = moved, "moved the audit trail into segment files");
    Ok(())
}

/// What the legacy database directory is renamed to once its records are
/// moved, before it is deleted (see `migrate_legacy_audit`).
const DOOMED_LEGACY_AUDIT_DB_DIR: &str = "audit.moved";

/// sled's cache while reading a legacy audit database once, front to back.
const LEGACY_MIGRATION_CACHE_BYTES: u64 = 8 << 20;

/// Records are stamped before the append lock is taken, so neighbouring
/// sequence numbers can carry slightly out-of-order timestamps; a query
/// only stops early once records are older than this.
const ORDER_SLACK_MICROS: u64 = 1_000_000;

impl Store {
    /// Appends a record, assigning `seq`, `prev_hash` and `hash` (the values
    /// passed in those fields are ignored). No fsync; durable with the next
    /// `audit_sync()`. `Corrupt` if the newest stored record fails
    /// verification, since chaining onto it would launder the damage.
    pub fn audit_append(&self, record: AuditRecord) -> Result<(), StorageError> {
        self.audit_append_batch(vec![record]).map(|_| ())
    }

    /// Appends `records` in order as one write to the trail's active
    /// segment (the runtime's background audit writer drains its queue
    /// through this), chaining each onto the previous. Returns the last
    /// sequence number written (0 if `records` is empty and the trail
    /// was never written). All or nothing: on an error no record of the
    /// batch is kept and the chain head is unchanged.
    pub fn audit_append_batch(&self, records: Vec<AuditRecord>) -> Result<u64, StorageError> {
        let mut log = lock(&self.inner.audit);
        let (mut last_seq, mut last_hash) = log.head()?;
        if records.is_empty() {
            return Ok(last_seq);
        }
        let mut sealed = Vec::with_capacity(records.len());
        for mut record in records {
            record.seq = last_seq + 1;
            record.prev_hash = last_hash;
            record.hash = record.compute_hash();
            sealed.push((record.seq, seal_value(&record.encode())));
            (last_seq, last_hash) = (record.seq, record.hash);
        }
        log.wal.append(&sealed)?;
        log.head = Some((last_seq, last_hash));
        Ok(last_seq)
    }

    /// Up to `limit` records, newest first. Each record's hash is verified
    /// and consecutive records must link (`prev_hash`, `seq`); any failure is
    /// `Corrupt`.
    pub fn audit_recent(&self, limit: usize) -> Result<Vec<AuditRecord>, StorageError> {
        self.audit_query(&AuditFilter {
            limit,
            ..Default::default()
        })
    }

    /// Records matching `filter`, newest first, at most `filter.limit`,
    /// reading at most [`MAX_AUDIT_SCAN`] records. Every record read is
    /// verified and linked to the next newer one read (`seq`, `prev_hash`),
    /// so an edited, re-ordered or replaced record in the scanned range is
    /// `Corrupt`, whether or not it matches the filter.
    pub fn audit_query(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StorageError> {
        let mut out: Vec<AuditRecord> = Vec::new();
        if filter.limit == 0 {
            return Ok(out);
        }
        let mut newer: Option<(u64, Hash)> = None;
        let mut scanned = 0usize;
        // Exclusive upper end of the next chunk, newest first.
        let mut hi = match lock(&self.inner.audit).wal.last_index() {
            Some(last) => last + 1,
            None => return Ok(out),
        };
        while scanned < MAX_AUDIT_SCAN {
            let chunk = {
                let log = lock(&self.inner.audit);
                // A prune between chunks moves the start: stop there.
                let Some(first) = log.wal.first_index() else {
                    break;
                };
                if hi <= first {
                    break;
                }
                let room = (MAX_AUDIT_SCAN - scanned) as u64;
                let lo = hi.saturating_sub(AUDIT_READ_CHUNK.min(room)).max(first);
                let chunk = log.wal.read(lo, hi)?;
                hi = lo;
                (lo..).zip(chunk).collect::<Vec<_>>()
            };
            // Verified one by one, newest first: damage further back than
            // the query reaches is not this query's error.
            for (seq, raw) in chunk.into_iter().rev() {
                let rec = decode_stored(seq, &raw)?;
                scanned += 1;
                if let Some((seq, prev)) = newer {
                    if seq != rec.seq + 1 || prev != rec.hash {
                        return Err(corrupt(format!(
                            "audit chain broken between {} and {seq}",
                            rec.seq
                        )));
                    }
                }
                newer = Some((rec.seq, rec.prev_hash));
                if filter.from_micros != 0
                    && rec
                        .timestamp
                        .physical_micros
                        .saturating_add(ORDER_SLACK_MICROS)
                        < filter.from_micros
                {
                    // Older than the range by more than stamps can be out of
                    // order: nothing further back can match.
                    return Ok(out);
                }
                if filter.matches(&rec) {
                    out.push(rec);
                    if out.len() >= filter.limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Keeps at most `max_records` newest records: the older ones are
    /// forgotten at once and their segment files deleted once a whole file
    /// is behind the cut. Sequence numbers keep counting up, also across a
    /// restart (the first retained one is recorded).
    pub fn audit_prune(&self, max_records: u64) -> Result<(), StorageError> {
        let mut log = lock(&self.inner.audit);
        let Some(last) = log.wal.last_index() else {
            return Ok(());
        };
        let keep_from = (last + 1).saturating_sub(max_records);
        if log.wal.first_index().is_none_or(|first| first >= keep_from) {
            return Ok(());
        }
        // The records first, then the marker: a marker that reached disk
        // ahead of records it counts past would leave a gap after a crash
        // cut them as a torn tail (refused at the next open). The writer
        // has normally synced them already; then this costs nothing.
        log.wal.sync()?;
        // Numbering and the hash chain must continue past what is
        // forgotten, even if that is everything.
        log.head()?;
        let before = match keep_from.checked_sub(1).filter(|b| *b > 0) {
            Some(b) if log.wal.last_index() == Some(b) => log.head()?.1,
            // Best effort: a damaged record there must not stop pruning
            // (the disk would fill); the link is lost with it anyway.
            Some(b) => log
                .read(b, b + 1)
                .ok()
                .and_then(|mut v| v.pop())
                .map_or(ZERO_HASH, |r| r.hash),
            None => ZERO_HASH,
        };
        self.inner
            .db
            .insert(KEY_AUDIT_FIRST, encode_first_marker(keep_from, &before))?;
        log.wal.forget_before(keep_from);
        log.before_first = before;
        if log.wal.has_segments_before(keep_from) {
            // The marker first: a crash after the deletion must not bring
            // back the pruned records still in the active segment.
            self.sync_sled()?;
            log.wal.remove_segments_before(keep_from)?;
        }
        Ok(())
    }

    /// Durability barrier for the audit trail alone: one fdatasync of its
    /// active segment. Run without the trail's lock, as the Raft log's is
    /// (`Store::sync_raft_wal`), so that a reader of the trail does not wait
    /// for the disk.
    pub fn audit_sync(&self) -> Result<(), StorageError> {
        crate::wal::sync_outside_lock(&self.inner.audit, |log| &mut log.wal)
    }

    /// (segment files, bytes on disk, records retained), for
    /// `synapse debug storage-stats`.
    pub fn audit_disk_usage(&self) -> (usize, u64, u64) {
        lock(&self.inner.audit).disk_usage()
    }

    /// Test/diagnostic hook: the stored bytes of audit record `seq` (sealed:
    /// checksum ++ record), for tests that damage it.
    #[doc(hidden)]
    pub fn debug_audit_record(&self, seq: u64) -> Result<Vec<u8>, StorageError> {
        lock(&self.inner.audit)
            .wal
            .read(seq, seq + 1)?
            .pop()
            .ok_or_else(|| corrupt(format!("audit record {seq} missing")))
    }

    /// Test/diagnostic hook: replaces the stored bytes of record `seq` with
    /// `raw` of the same length, and syncs.
    #[doc(hidden)]
    pub fn debug_overwrite_audit_record(&self, seq: u64, raw: &[u8]) -> Result<(), StorageError> {
        let mut log = lock(&self.inner.audit);
        log.wal.overwrite(seq, raw)?;
        log.head = None;
        log.wal.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tests::ts;
    use crate::StoreOptions;

    fn rec(i: u64) -> AuditRecord {
        AuditRecord {
            seq: 999, // ignored
            timestamp: ts(i),
            principal: format!("user-{i}"),
            skill: "kv".into(),
            instance: "a".into(),
            method: "put".into(),
            allowed: i & 1 == 0,
            reason: if i & 1 == 0 {
                String::new()
            } else {
                "expired".into()
            },
            prev_hash: [5u8; 32], // ignored
            hash: [6u8; 32],      // ignored
        }
    }

    #[test]
    fn append_recent_prune() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert!(store.audit_recent(10).unwrap().is_empty());
        for i in 1..=10 {
            store.audit_append(rec(i)).unwrap();
        }
        let recent = store.audit_recent(4).unwrap();
        assert_eq!(
            recent.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![10, 9, 8, 7]
        );
        assert_eq!(recent[0].principal, "user-10");
        assert!(recent[0].allowed);
        assert!(!recent[1].allowed);
        let all = store.audit_recent(100).unwrap();
        assert_eq!(all.len(), 10);
        assert_eq!(all[9].prev_hash, ZERO_HASH);
        for w in all.windows(2) {
            assert_eq!(w[0].prev_hash, w[1].hash);
        }
        store.audit_prune(3).unwrap();
        let left = store.audit_recent(100).unwrap();
        assert_eq!(
            left.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![10, 9, 8]
        );
        store.audit_prune(100).unwrap();
        assert_eq!(store.audit_recent(100).unwrap().len(), 3);
        // Appends continue the chain after pruning and across reopen.
        store.audit_append(rec(11)).unwrap();
        store.audit_sync().unwrap();
        drop(store);
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        store.audit_append(rec(12)).unwrap();
        let left = store.audit_recent(100).unwrap();
        assert_eq!(
            left.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![12, 11, 10, 9, 8]
        );
        store.audit_prune(0).unwrap();
        assert!(store.audit_recent(100).unwrap().is_empty());
    }

    /// A prune of records the writer had not synced yet (its sync failed)
    /// makes them durable before its marker: a crash then cannot cut them
    /// as a torn tail behind a marker that counts past them, which would
    /// leave a gap (unreadable at once, refused at the next open). Fails
    /// without the sync in `audit_prune`.
    #[test]
    fn a_prune_never_gets_ahead_of_the_records_on_disk() {
        let (d1, d2, d3) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let store = crate::sim_disk::tracked_store(d1.path());
        store
            .audit_append_batch((1..=200).map(rec).collect())
            .unwrap();
        store.audit_prune(100).unwrap();
        // Something else makes sled durable (the marker with it).
        store.sync().unwrap();
        let after = store.sim_crash(d2.path()).unwrap();
        let seqs = |s: &Store| -> Vec<u64> {
            s.audit_recent(1_000)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect()
        };
        assert_eq!(seqs(&after), (101..=200).rev().collect::<Vec<_>>());
        after.audit_append(rec(201)).unwrap();
        after.audit_sync().unwrap();
        after.sync().unwrap();
        assert_eq!(seqs(&after)[..2], [201, 200]);
        let again = after.sim_crash(d3.path()).unwrap();
        assert_eq!(seqs(&again).len(), 101);
    }

    /// The encoded records of a store's trail, oldest first, as an older
    /// layout kept them (sled value = `AuditRecord::encode`).
    fn legacy_records(store: &Store, n: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
        (1..=n)
            .map(|seq| {
                let sealed = store.debug_audit_record(seq).unwrap();
                let encoded = open_value(&sealed, "test").unwrap().to_vec();
                (u64_key(seq).to_vec(), encoded)
            })
            .collect()
    }

    /// Data dirs from before the audit trail had segment files keep it as a
    /// tree of the main database (oldest layout) or in a sled database of
    /// its own; opening moves it, whole and in order, also after a crash
    /// that left a partial copy behind, and removes the old copy.
    #[test]
    fn an_audit_trail_in_an_older_layout_is_moved_on_open() {
        for in_main in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
            store
                .audit_append_batch((1..=25).map(rec).collect())
                .unwrap();
            store.audit_sync().unwrap();
            let expected = store.audit_recent(100).unwrap();
            let raw = legacy_records(&store, 25);
            drop(store);
            // What a crash mid-move leaves: a partial new copy (the first
            // segment cut short) next to the complete old one.
            let seg_dir = dir.path().join(AUDIT_LOG_DIR);
            for f in std::fs::read_dir(&seg_dir).unwrap() {
                let f = f.unwrap().path();
                // A third of the records, not of the file: its end is space
                // reserved for appends (zeros).
                let bytes = std::fs::read(&f).unwrap();
                let held = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&f)
                    .unwrap()
                    .set_len(held as u64 / 3)
                    .unwrap();
            }
            if in_main {
                let main = sled::open(dir.path()).unwrap();
                let old = main.open_tree(crate::store::TREE_AUDIT).unwrap();
                for (k, v) in &raw {
                    old.insert(k.as_slice(), v.as_slice()).unwrap();
                }
                main.flush().unwrap();
            } else {
                let legacy = sled::open(dir.path().join(LEGACY_AUDIT_DB_DIR)).unwrap();
                let old = legacy.open_tree(crate::store::TREE_AUDIT).unwrap();
                for (k, v) in &raw {
                    old.insert(k.as_slice(), v.as_slice()).unwrap();
                }
                legacy.flush().unwrap();
            }

            let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
            assert_eq!(
                store.audit_recent(100).unwrap(),
                expected,
                "in_main {in_main}"
            );
            assert!(!crate::store::has_tree(
                &store.inner.db,
                crate::store::TREE_AUDIT
            ));
            assert!(!dir.path().join(LEGACY_AUDIT_DB_DIR).exists());
            // The chain continues from the moved head, also after reopening.
            store.audit_append(rec(26)).unwrap();
            store.audit_sync().unwrap();
            drop(store);
            let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
            assert_eq!(store.audit_recent(100).unwrap().len(), 26);
            assert_eq!(store.audit_recent(1).unwrap()[0].seq, 26);
        }
    }

    /// A legacy trail with a record missing in the middle cannot become
    /// one contiguous segment sequence: opening refuses, says what to do,
    /// and leaves the old copy untouched.
    #[test]
    fn a_legacy_trail_with_a_gap_is_refused_not_patched() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        store
            .audit_append_batch((1..=5).map(rec).collect())
            .unwrap();
        let raw = legacy_records(&store, 5);
        drop(store);
        {
            let legacy = sled::open(dir.path().join(LEGACY_AUDIT_DB_DIR)).unwrap();
            let old = legacy.open_tree(crate::store::TREE_AUDIT).unwrap();
            for (k, v) in raw.iter().filter(|(k, _)| k.as_slice() != u64_key(3)) {
                old.insert(k.as_slice(), v.as_slice()).unwrap();
            }
            legacy.flush().unwrap();
        }
        let err = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
        assert!(err.is_corrupt(), "{err}");
        assert!(err.to_string().contains("aside"), "{err}");
        assert!(dir.path().join(LEGACY_AUDIT_DB_DIR).join("db").exists());
    }

    /// A legacy trail whose key is past `MAX_AUDIT_SEQ` is damage, refused
    /// before it is moved: before, it was moved into a segment file, and
    /// the open that followed computed `last + 1` of the log (u64::MAX + 1)
    /// and panicked in a debug build.
    #[test]
    fn a_legacy_trail_key_out_of_range_is_corrupt() {
        for seq in [u64::MAX, MAX_AUDIT_SEQ + 1] {
            let dir = tempfile::tempdir().unwrap();
            {
                let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
                let old = store.inner.db.open_tree(crate::store::TREE_AUDIT).unwrap();
                let mut record = rec(1);
                record.seq = seq;
                record.hash = record.compute_hash();
                old.insert(u64_key(seq), record.encode()).unwrap();
                store.sync().unwrap();
            }
            let err = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
            assert!(err.is_corrupt(), "{err}");
            assert!(err.to_string().contains("malformed key"), "{err}");
        }
    }

    /// Pruning forgets records at once; a restart must not bring them back
    /// although they stay on disk until their whole segment can go.
    #[test]
    fn pruned_records_stay_pruned_across_restart_and_numbering_continues() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        store
            .audit_append_batch((1..=10).map(rec).collect())
            .unwrap();
        let tenth = store.audit_recent(1).unwrap()[0].hash;
        store.audit_prune(0).unwrap();
        assert!(store.audit_recent(100).unwrap().is_empty());
        store.audit_sync().unwrap();
        store.sync().unwrap();
        drop(store);
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert!(store.audit_recent(100).unwrap().is_empty());
        store.audit_append(rec(11)).unwrap();
        let left = store.audit_recent(100).unwrap();
        assert_eq!(left.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![11]);
        assert_eq!(left[0].prev_hash, tenth, "the chain links across the prune");
    }

    /// A query longer than one read chunk links records across chunks and
    /// stops at MAX_AUDIT_SCAN-independent limits.
    #[test]
    fn a_scan_across_read_chunks_is_whole_and_linked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let n = AUDIT_READ_CHUNK * 2 + 7;
        store
            .audit_append_batch((1..=n).map(rec).collect())
            .unwrap();
        let all = store.audit_recent(usize::MAX).unwrap();
        assert_eq!(all.len() as u64, n);
        assert!(all
            .windows(2)
            .all(|w| w[0].seq == w[1].seq + 1 && w[0].prev_hash == w[1].hash));
        // Damage in the oldest chunk is found by a scan that reaches it.
        let victim = store.debug_audit_record(3).unwrap();
        let mut bad = victim.clone();
        bad[30] ^= 1;
        store.debug_overwrite_audit_record(3, &bad).unwrap();
        assert!(store.audit_recent(usize::MAX).unwrap_err().is_corrupt());
        assert_eq!(store.audit_recent(10).unwrap().len(), 10);
    }

    #[test]
    fn batch_append_chains_like_single_appends() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let single_dir = tempfile::tempdir().unwrap();
        let single = Store::open(single_dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(store.audit_append_batch(Vec::new()).unwrap(), 0);
        assert_eq!(
            store
                .audit_append_batch((1..=3).map(rec).collect())
                .unwrap(),
            3
        );
        assert_eq!(
            store
                .audit_append_batch((4..=7).map(rec).collect())
                .unwrap(),
            7
        );
        for i in 1..=7 {
            single.audit_append(rec(i)).unwrap();
        }
        // Same records, same chain, whatever the batching.
        assert_eq!(
            store.audit_recent(10).unwrap(),
            single.audit_recent(10).unwrap()
        );
        assert_eq!(store.audit_recent(10).unwrap().len(), 7);
    }

    #[test]
    fn tampering_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        for i in 1..=5 {
            store.audit_append(rec(i)).unwrap();
        }
        // 1. A flipped byte.
        let original = store.debug_audit_record(3).unwrap();
        let mut bytes = original.clone();
        bytes[20] ^= 1;
        store.debug_overwrite_audit_record(3, &bytes).unwrap();
        assert!(store.audit_recent(10).unwrap_err().is_corrupt());
        assert_eq!(store.audit_recent(2).unwrap().len(), 2); // 5 and 4 are fine
                                                             // 2. A re-hashed, re-sealed forgery (decision flipped, hash and
                                                             //    checksum recomputed): the link from record 4 exposes it.
        let mut forged = AuditRecord::decode(open_value(&original, "test").unwrap()).unwrap();
        forged.allowed = !forged.allowed;
        forged.hash = forged.compute_hash();
        store
            .debug_overwrite_audit_record(3, &seal_value(&forged.encode()))
            .unwrap();
        assert!(store.audit_recent(10).unwrap_err().is_corrupt());
        // 3. A record replaced by another (valid) one breaks the sequence.
        store.debug_overwrite_audit_record(3, &original).unwrap();
        assert_eq!(store.audit_recent(10).unwrap().len(), 5);
        let fifth = store.debug_audit_record(5).unwrap();
        store.debug_overwrite_audit_record(3, &fifth).unwrap();
        assert!(store.audit_recent(10).unwrap_err().is_corrupt());
    }

    #[test]
    fn query_filters_newest_first_and_detects_a_broken_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        for i in 1..=20 {
            store.audit_append(rec(i)).unwrap();
        }
        let q = |f: AuditFilter| {
            store
                .audit_query(&f)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>()
        };
        let all = AuditFilter {
            limit: 100,
            ..Default::default()
        };
        assert_eq!(q(all.clone()).len(), 20);
        assert_eq!(q(all.clone())[0], 20, "newest first");
        let denies = q(AuditFilter {
            allowed: Some(false),
            ..all.clone()
        });
        assert_eq!(denies, vec![19, 17, 15, 13, 11, 9, 7, 5, 3, 1]);
        assert_eq!(
            q(AuditFilter {
                principal: Some("user-4".into()),
                ..all.clone()
            }),
            vec![4]
        );
        let range = q(AuditFilter {
            from_micros: ts(5).physical_micros,
            to_micros: ts(7).physical_micros,
            ..all.clone()
        });
        assert_eq!(range, vec![7, 6, 5]);
        assert_eq!(
            q(AuditFilter {
                limit: 2,
                ..all.clone()
            }),
            vec![20, 19]
        );
        // A record replaced in the scanned range is reported even when the
        // filter would not have returned it.
        let second = store.debug_audit_record(2).unwrap();
        store.debug_overwrite_audit_record(4, &second).unwrap();
        let err = store
            .audit_query(&AuditFilter {
                principal: Some("user-1".into()),
                ..all
            })
            .unwrap_err();
        assert!(err.is_corrupt());
    }

    #[test]
    fn append_refuses_to_chain_onto_corrupt_head() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
            store.audit_append(rec(1)).unwrap();
            let mut bytes = store.debug_audit_record(1).unwrap();
            bytes[25] ^= 1;
            store.debug_overwrite_audit_record(1, &bytes).unwrap();
        }
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert!(store.audit_append(rec(2)).unwrap_err().is_corrupt());
    }

    #[test]
    fn record_codec_detects_every_flip() {
        let mut r = rec(4);
        r.seq = 1;
        r.prev_hash = ZERO_HASH;
        r.hash = r.compute_hash();
        let enc = r.encode();
        assert_eq!(AuditRecord::decode(&enc).unwrap(), r);
        for pos in 0..enc.len() {
            let mut bad = enc.clone();
            bad[pos] ^= 0x10;
            assert!(AuditRecord::decode(&bad).is_err(), "pos {pos}");
        }
    }
}
