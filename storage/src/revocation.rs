//! Revoked capability identifiers (biscuit revocation ids), replicated
//! through Raft and stored in the state tree under tag `v`.
//!
//! They live in the *state* tree, not a tree of their own, for two reasons
//! that both matter for security: the apply batch that records a revocation
//! writes it before the applied index, and sled recovers a prefix of its
//! writes (so a crash can never leave "applied but not revoked"; see
//! `Store::commit_apply`), and Raft snapshots and backups
//! (`snapshot_state`) carry them to new or lagging members without a second
//! code path.
//!
//! | key | value |
//! |---|---|
//! | `v` ++ revocation id (raw bytes, 1..=MAX_REVOCATION_ID_BYTES) | checksum ++ (HLC timestamp, reason) |

use crate::codec::{open_value, seal_value, Reader, Writer};
use crate::error::corrupt;
use crate::{StorageError, Store, Timestamp};

pub(crate) const TAG_REVOKED: u8 = b'v';

/// A biscuit revocation id is a 64-byte Ed25519 signature (or a P-256 one,
/// up to 72 bytes DER); 128 leaves room without letting a caller store
/// arbitrary blobs under the revocation tag.
pub const MAX_REVOCATION_ID_BYTES: usize = 128;

/// Longest revocation reason kept: a human note, not a document.
pub const MAX_REVOCATION_REASON_BYTES: usize = 512;

/// One revoked id, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    pub id: Vec<u8>,
    /// HLC stamp of the revoke command (the proposer's clock).
    pub timestamp: Timestamp,
    pub reason: String,
}

pub(crate) fn revocation_key(id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(TAG_REVOKED);
    k.extend_from_slice(id);
    k
}

pub(crate) fn encode_revocation(timestamp: &Timestamp, reason: &str) -> Vec<u8> {
    let mut w = Writer::with_capacity(32 + reason.len());
    w.timestamp(timestamp).bytes(reason.as_bytes());
    seal_value(w.as_slice())
}

/// Decodes (checksum verified) the record stored under `key`.
pub(crate) fn decode_revocation(key: &[u8], raw: &[u8]) -> Result<Revocation, StorageError> {
    let id = key
        .get(1..)
        .filter(|id| !id.is_empty() && id.len() <= MAX_REVOCATION_ID_BYTES)
        .ok_or_else(|| corrupt("malformed revocation key"))?;
    let body = open_value(raw, "revocation")?;
    let mut r = Reader::new(body, "revocation");
    let timestamp = r.timestamp()?;
    let reason = r.string()?;
    r.finish()?;
    Ok(Revocation {
        id: id.to_vec(),
        timestamp,
        reason,
    })
}

pub(crate) fn validate_revocation(id: &[u8], reason: &str) -> Result<(), StorageError> {
    if id.is_empty() || id.len() > MAX_REVOCATION_ID_BYTES {
        return Err(StorageError::Invalid(format!(
            "revocation id must be 1..={MAX_REVOCATION_ID_BYTES} bytes"
        )));
    }
    if reason.len() > MAX_REVOCATION_REASON_BYTES {
        return Err(StorageError::Invalid(format!(
            "revocation reason must be at most {MAX_REVOCATION_REASON_BYTES} bytes"
        )));
    }
    Ok(())
}

impl Store {
    /// Every stored revocation, in id order, each checksum-verified. Read once
    /// at start and after a snapshot install; the runtime keeps the set in
    /// memory, so this is never on a request path.
    pub fn revocations(&self) -> Result<Vec<Revocation>, StorageError> {
        let mut out = Vec::new();
        for item in self.inner.state.scan_prefix([TAG_REVOKED]) {
            let (k, v) = item?;
            out.push(decode_revocation(&k, &v)?);
        }
        Ok(out)
    }

    /// Whether `id` is revoked, straight from sled (diagnostics and tests;
    /// the guard and apply use the in-memory set).
    pub fn is_revoked(&self, id: &[u8]) -> Result<bool, StorageError> {
        match self.inner.state.get(revocation_key(id))? {
            Some(raw) => decode_revocation(&revocation_key(id), &raw).map(|_| true),
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::checkpoint::tests::ts;
    use crate::store::tests::open_tmp;
    use crate::ApplyBatch;

    #[test]
    fn revocations_round_trip_through_apply_reopen_and_snapshot() {
        let (dir, store) = open_tmp(10);
        let mut b = ApplyBatch::default();
        b.revoke(&[7u8; 64], ts(5), "leaked");
        b.revoke(&[9u8; 64], ts(5), "");
        b.set_applied(3);
        store.commit_apply(b).unwrap();
        assert!(store.is_revoked(&[7u8; 64]).unwrap());
        assert!(!store.is_revoked(&[8u8; 64]).unwrap());
        let all = store.revocations().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].reason, "leaked");

        let snap = store.snapshot_state().unwrap();
        let (_d2, other) = open_tmp(10);
        other.restore_state(&snap).unwrap();
        assert_eq!(other.revocations().unwrap(), all);

        drop(store);
        let reopened = crate::Store::open(dir.path(), crate::StoreOptions::default()).unwrap();
        assert_eq!(reopened.revocations().unwrap(), all);
    }

    #[test]
    fn bad_revocations_are_rejected_and_nothing_changes() {
        let (_dir, store) = open_tmp(10);
        let mut b = ApplyBatch::default();
        b.revoke(&[], ts(1), "");
        assert!(store.commit_apply(b).is_err());
        let mut b = ApplyBatch::default();
        b.revoke(&[1u8; 200], ts(1), "");
        assert!(store.commit_apply(b).is_err());
        assert!(store.revocations().unwrap().is_empty());
    }

    #[test]
    fn flipped_revocation_record_is_corrupt() {
        let (_dir, store) = open_tmp(10);
        let mut b = ApplyBatch::default();
        b.revoke(&[7u8; 64], ts(5), "x");
        store.commit_apply(b).unwrap();
        let raw = store.raw_tree("state").unwrap();
        let key = super::revocation_key(&[7u8; 64]);
        let mut v = raw.get(&key).unwrap().unwrap().to_vec();
        let last = v.len() - 1;
        v[last] ^= 1;
        raw.insert(&key, v).unwrap();
        assert!(matches!(
            store.revocations(),
            Err(crate::StorageError::Corrupt { .. })
        ));
        let snap = store.snapshot_state();
        // A snapshot of a corrupt record must not verify on the receiver.
        if let Ok(snap) = snap {
            assert!(crate::Store::verify_snapshot_data(&snap).is_err());
        }
    }
}
