//! Audit log: append-only, hash-chained records of capability decisions, in
//! the "audit" tree keyed by sequence number (u64 big-endian).
//!
//! Inserts are not fsynced: an audit record becomes durable with the next
//! `Store::sync()` (one per Raft Ready), which keeps auditing off the
//! latency path. Losing the last few records in a crash is accepted; forging
//! or editing records is not (hash chain).

use crate::codec::{key_u64, sha256, u64_key, Reader, Writer};
use crate::error::corrupt;
use crate::store::lock;
use crate::{Hash, StorageError, Store, Timestamp, ZERO_HASH};

const AUDIT_DOMAIN: &[u8] = b"synapse.audit.v1";

/// Most records one query reads (and verifies), newest first. A query is
/// answered from at most this many records so that a filter matching
/// nothing cannot make one call read a million-record log; at ~2 µs per
/// record that is ≈ 0.2 s worst case.
pub const MAX_AUDIT_SCAN: usize = 100_000;

/// Most records one prune removes, so that a lowered retention or a long
/// backlog is drained over several passes instead of one huge sled batch.
pub const MAX_AUDIT_PRUNE_BATCH: usize = 50_000;

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

pub(crate) fn decode_at(key: &[u8], value: &[u8]) -> Result<AuditRecord, StorageError> {
    let rec = AuditRecord::decode(value)?;
    if key_u64(key) != Some(rec.seq) {
        return Err(corrupt(format!("audit record {} under wrong key", rec.seq)));
    }
    Ok(rec)
}

/// Records are stamped before the append lock is taken, so neighbouring
/// sequence numbers can carry slightly out-of-order timestamps; a query
/// only stops early once records are older than this.
const ORDER_SLACK_MICROS: u64 = 1_000_000;

impl Store {
    /// Appends a record, assigning `seq`, `prev_hash` and `hash` (the values
    /// passed in those fields are ignored). No fsync; durable with the next
    /// `sync()`. `Corrupt` if the newest stored record fails verification,
    /// since chaining onto it would launder the damage.
    pub fn audit_append(&self, record: AuditRecord) -> Result<(), StorageError> {
        self.audit_append_batch(vec![record]).map(|_| ())
    }

    /// Appends `records` in order as one sled batch (one tree write for the
    /// lot: the runtime's background audit writer drains its queue through
    /// this), chaining each onto the previous. Returns the last sequence
    /// number written (0 if `records` is empty). All or nothing: on an error
    /// no record of the batch is stored and the chain head is unchanged.
    pub fn audit_append_batch(&self, records: Vec<AuditRecord>) -> Result<u64, StorageError> {
        let mut head = lock(&self.inner.audit_head);
        let (mut last_seq, mut last_hash) = match *head {
            Some(h) => h,
            None => match self.inner.audit.last()? {
                Some((k, v)) => {
                    let rec = decode_at(&k, &v)?;
                    (rec.seq, rec.hash)
                }
                None => (0, ZERO_HASH),
            },
        };
        if records.is_empty() {
            return Ok(last_seq);
        }
        let mut batch = sled::Batch::default();
        for mut record in records {
            record.seq = last_seq + 1;
            record.prev_hash = last_hash;
            record.hash = record.compute_hash();
            batch.insert(&u64_key(record.seq)[..], record.encode());
            (last_seq, last_hash) = (record.seq, record.hash);
        }
        self.inner.audit.apply_batch(batch)?;
        *head = Some((last_seq, last_hash));
        Ok(last_seq)
    }

    /// Up to `limit` records, newest first. Each record's hash is verified
    /// and consecutive records must link (`prev_hash`, `seq`); any failure is
    /// `Corrupt`.
    pub fn audit_recent(&self, limit: usize) -> Result<Vec<AuditRecord>, StorageError> {
        let mut out: Vec<AuditRecord> = Vec::new();
        for item in self.inner.audit.iter().rev().take(limit) {
            let (k, v) = item?;
            let rec = decode_at(&k, &v)?;
            if let Some(newer) = out.last() {
                if newer.seq != rec.seq + 1 || newer.prev_hash != rec.hash {
                    return Err(corrupt(format!(
                        "audit chain broken between {} and {}",
                        rec.seq, newer.seq
                    )));
                }
            }
            out.push(rec);
        }
        Ok(out)
    }

    /// Records matching `filter`, newest first, at most `filter.limit`,
    /// reading at most [`MAX_AUDIT_SCAN`] records. Every record read is
    /// hash-verified and linked to the next newer one read (`seq`,
    /// `prev_hash`), so a deleted, edited or re-ordered record in the scanned
    /// range is `Corrupt`, whether or not it matches the filter.
    pub fn audit_query(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StorageError> {
        let mut out: Vec<AuditRecord> = Vec::new();
        let mut newer: Option<(u64, Hash)> = None;
        for item in self.inner.audit.iter().rev().take(MAX_AUDIT_SCAN) {
            let (k, v) = item?;
            let rec = decode_at(&k, &v)?;
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
                break;
            }
            if filter.matches(&rec) {
                out.push(rec);
                if out.len() >= filter.limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Keeps at most `max_records` newest records. Sequence numbers keep
    /// counting up while the process runs (the newest seq/hash is cached);
    /// after pruning to zero and reopening, numbering restarts at 1.
    pub fn audit_prune(&self, max_records: u64) -> Result<(), StorageError> {
        // Serialize with appends so the cut is well-defined.
        let _head = lock(&self.inner.audit_head);
        let Some((k, _)) = self.inner.audit.last()? else {
            return Ok(());
        };
        let last = key_u64(&k).ok_or_else(|| corrupt("malformed audit key"))?;
        if last <= max_records {
            return Ok(());
        }
        let cutoff = last - max_records;
        let mut batch = sled::Batch::default();
        for key in self
            .inner
            .audit
            .range(..=u64_key(cutoff))
            .keys()
            .take(MAX_AUDIT_PRUNE_BATCH)
        {
            batch.remove(key?);
        }
        self.inner.audit.apply_batch(batch)?;
        Ok(())
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

    /// Data dirs from before the audit trail had its own database keep it
    /// as a tree of the main one; opening moves it, whole and in order,
    /// also after a crash that left a partial copy behind.
    #[test]
    fn an_audit_tree_in_the_main_database_is_moved_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        store
            .audit_append_batch((1..=25).map(rec).collect())
            .unwrap();
        let expected = store.audit_recent(100).unwrap();
        let raw: Vec<(sled::IVec, sled::IVec)> =
            store.inner.audit.iter().map(Result::unwrap).collect();
        drop(store);

        // Rebuild the old layout: the records in the main database, and a
        // partial copy in the audit database, as a crash mid-move leaves.
        let main = sled::open(dir.path()).unwrap();
        let old = main.open_tree(crate::store::TREE_AUDIT).unwrap();
        for (k, v) in &raw {
            old.insert(k, v.clone()).unwrap();
        }
        main.flush().unwrap();
        drop((old, main));
        let audit_db = sled::open(dir.path().join(crate::store::AUDIT_DB_DIR)).unwrap();
        let partial = audit_db.open_tree(crate::store::TREE_AUDIT).unwrap();
        partial.clear().unwrap();
        for (k, v) in raw.iter().take(5) {
            partial.insert(k, v.clone()).unwrap();
        }
        audit_db.flush().unwrap();
        drop((partial, audit_db));

        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(store.audit_recent(100).unwrap(), expected);
        let names = store.inner.db.tree_names();
        assert!(!names
            .iter()
            .any(|n| n.as_ref() == crate::store::TREE_AUDIT.as_bytes()));
        // The chain continues from the moved head.
        store.audit_append(rec(26)).unwrap();
        assert_eq!(store.audit_recent(1).unwrap()[0].seq, 26);
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
        let raw = store.raw_tree("audit").unwrap();
        // 1. A flipped byte.
        let original = raw.get(u64_key(3)).unwrap().unwrap();
        let mut bytes = original.to_vec();
        bytes[20] ^= 1;
        raw.insert(u64_key(3), bytes).unwrap();
        assert!(store.audit_recent(10).unwrap_err().is_corrupt());
        assert_eq!(store.audit_recent(2).unwrap().len(), 2); // 5 and 4 are fine
                                                             // 2. A re-hashed forgery (decision flipped, hash recomputed): the
                                                             //    link from record 4 exposes it.
        let mut forged = AuditRecord::decode(&original).unwrap();
        forged.allowed = !forged.allowed;
        forged.hash = forged.compute_hash();
        raw.insert(u64_key(3), forged.encode()).unwrap();
        assert!(store.audit_recent(10).unwrap_err().is_corrupt());
        // 3. A deleted record breaks the sequence.
        raw.insert(u64_key(3), original).unwrap();
        assert_eq!(store.audit_recent(10).unwrap().len(), 5);
        raw.remove(u64_key(3)).unwrap();
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
        // A record removed in the scanned range is reported even when the
        // filter would not have returned it.
        store.raw_tree("audit").unwrap().remove(u64_key(4)).unwrap();
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
            let raw = store.raw_tree("audit").unwrap();
            let mut bytes = raw.get(u64_key(1)).unwrap().unwrap().to_vec();
            bytes[25] ^= 1;
            raw.insert(u64_key(1), bytes).unwrap();
            store.sync().unwrap();
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
