//! Checkpoints: one version of one skill instance's state, hash-chained to the
//! previous version.

use crate::codec::{sha256, Reader, Writer, TIMESTAMP_LEN};
use crate::error::corrupt;
use crate::StorageError;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// Parent hash of version 1 by convention, and "no hash" in reports.
pub const ZERO_HASH: Hash = [0; 32];

/// Domain separation: a checkpoint hash can never collide with the hash of
/// any other record type this system hashes.
const CHECKPOINT_DOMAIN: &[u8] = b"synapse.checkpoint.v1";

/// Hybrid logical clock reading. Ordered by (physical_micros, logical, node_id)
/// (field order matters for the derived `Ord`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Timestamp {
    pub physical_micros: u64,
    pub logical: u32,
    pub node_id: u64,
}

/// One version of a skill instance's state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub skill: String,
    pub instance: String,
    pub version: u64,
    pub parent_hash: Hash,
    pub state: Vec<u8>,
    pub timestamp: Timestamp,
    pub request_id: String,
    pub hash: Hash,
}

impl Checkpoint {
    /// Builds a checkpoint and computes its hash.
    pub fn seal(
        skill: String,
        instance: String,
        version: u64,
        parent_hash: Hash,
        state: Vec<u8>,
        timestamp: Timestamp,
        request_id: String,
    ) -> Checkpoint {
        let mut cp = Checkpoint {
            skill,
            instance,
            version,
            parent_hash,
            state,
            timestamp,
            request_id,
            hash: ZERO_HASH,
        };
        cp.hash = cp.compute_hash();
        cp
    }

    /// The canonical encoding: domain tag, then every field except `hash`,
    /// variable-length fields prefixed by their u64 big-endian length,
    /// integers fixed-width big-endian, the parent hash as its 32 raw bytes.
    fn canonical(&self) -> Writer {
        let mut w = Writer::with_capacity(
            CHECKPOINT_DOMAIN.len()
                + 8 * 5
                + self.skill.len()
                + self.instance.len()
                + self.state.len()
                + self.request_id.len()
                + 32
                + TIMESTAMP_LEN
                + 32,
        );
        w.raw(CHECKPOINT_DOMAIN)
            .bytes(self.skill.as_bytes())
            .bytes(self.instance.as_bytes())
            .u64(self.version)
            .raw(&self.parent_hash)
            .bytes(&self.state)
            .timestamp(&self.timestamp)
            .bytes(self.request_id.as_bytes());
        w
    }

    /// SHA-256 over the canonical encoding: a domain tag
    /// `b"synapse.checkpoint.v1"`, then every field except `hash`, each
    /// length-prefixed (u64 big-endian length for variable fields, fixed-width
    /// big-endian for integers).
    pub fn compute_hash(&self) -> Hash {
        sha256(self.canonical().as_slice())
    }

    /// `Corrupt` if the stored hash does not match the contents.
    pub fn verify(&self) -> Result<(), StorageError> {
        if self.compute_hash() == self.hash {
            Ok(())
        } else {
            Err(corrupt(format!(
                "checkpoint {}/{} v{}: hash mismatch",
                self.skill, self.instance, self.version
            )))
        }
    }

    /// Binary record for disk and for the Raft command payload: the canonical
    /// encoding followed by the 32-byte hash.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = self.canonical();
        w.raw(&self.hash);
        w.into_inner()
    }

    /// `encode`, or `None` if `hash` is not the hash of the contents. One
    /// canonical encoding serves both the check and the record, where
    /// `compute_hash` followed by `encode` would build it twice (the apply
    /// path does this for every write on every node).
    pub fn encode_if_sealed(&self) -> Option<Vec<u8>> {
        let mut w = self.canonical();
        if sha256(w.as_slice()) != self.hash {
            return None;
        }
        w.raw(&self.hash);
        Some(w.into_inner())
    }

    /// The version and request id of a record written by `encode`, parsed
    /// without checking its hash or copying its state: for pruning, which
    /// only needs to find the version's request record and must not pay a
    /// SHA-256 for a record it is about to delete. `Corrupt` if the record
    /// does not parse.
    pub fn peek_version_and_request_id(bytes: &[u8]) -> Result<(u64, String), StorageError> {
        let body = bytes
            .len()
            .checked_sub(32)
            .map(|n| &bytes[..n])
            .ok_or_else(|| corrupt("checkpoint: truncated record"))?;
        let mut r = Reader::new(body, "checkpoint");
        r.tag(CHECKPOINT_DOMAIN)?;
        r.bytes()?; // skill
        r.bytes()?; // instance
        let version = r.u64()?;
        r.hash()?; // parent
        r.bytes()?; // state
        r.timestamp()?;
        let request_id = r.string()?;
        r.finish()?;
        Ok((version, request_id))
    }

    /// Parses and verifies a record written by `encode`. `Corrupt` on a hash
    /// mismatch, truncation or trailing bytes. Never panics on arbitrary bytes.
    ///
    /// The hash is checked over the raw bytes before parsing: because the
    /// encoding is canonical, that is the same as recomputing it from the
    /// parsed fields, and it guarantees that any change to any byte is
    /// detected (not just changes that survive parsing).
    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, StorageError> {
        if bytes.len() < CHECKPOINT_DOMAIN.len() + 32 {
            return Err(corrupt("checkpoint: truncated record"));
        }
        let (body, stored) = bytes.split_at(bytes.len() - 32);
        let hash = sha256(body);
        if hash != stored {
            return Err(corrupt("checkpoint: hash mismatch"));
        }
        let mut r = Reader::new(body, "checkpoint");
        r.tag(CHECKPOINT_DOMAIN)?;
        let cp = Checkpoint {
            skill: r.string()?,
            instance: r.string()?,
            version: r.u64()?,
            parent_hash: r.hash()?,
            state: r.bytes()?.to_vec(),
            timestamp: r.timestamp()?,
            request_id: r.string()?,
            hash,
        };
        r.finish()?;
        Ok(cp)
    }
}

/// Skill and instance names become parts of sled keys separated by NUL, so a
/// NUL inside a name (or an empty name) would make keys ambiguous.
pub(crate) fn validate_names(skill: &str, instance: &str) -> Result<(), StorageError> {
    for (what, name) in [("skill", skill), ("instance", instance)] {
        if name.is_empty() {
            return Err(StorageError::Invalid(format!("{what} name is empty")));
        }
        if name.as_bytes().contains(&0) {
            return Err(StorageError::Invalid(format!(
                "{what} name contains a NUL byte"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn ts(micros: u64) -> Timestamp {
        Timestamp {
            physical_micros: micros,
            logical: 0,
            node_id: 1,
        }
    }

    fn sample() -> Checkpoint {
        Checkpoint::seal(
            "counter".into(),
            "alice".into(),
            3,
            [7u8; 32],
            b"{\"n\":3}".to_vec(),
            Timestamp {
                physical_micros: 1_700_000_000_000_000,
                logical: 2,
                node_id: 5,
            },
            "req-3".into(),
        )
    }

    #[test]
    fn seal_then_verify() {
        let cp = sample();
        cp.verify().unwrap();
        assert_ne!(cp.hash, ZERO_HASH);
        let mut changed = cp.clone();
        changed.state.push(b'!');
        assert!(changed.verify().unwrap_err().is_corrupt());
        let mut changed = cp.clone();
        changed.timestamp.logical += 1;
        assert!(changed.verify().is_err());
    }

    #[test]
    fn encode_if_sealed_is_encode_for_a_sealed_checkpoint_only() {
        let cp = sample();
        assert_eq!(cp.encode_if_sealed(), Some(cp.encode()));
        let mut changed = cp.clone();
        changed.state.push(b'!');
        assert_eq!(changed.encode_if_sealed(), None);
        let mut unsealed = cp;
        unsealed.hash = ZERO_HASH;
        assert_eq!(unsealed.encode_if_sealed(), None);
    }

    #[test]
    fn peek_reads_what_decode_reads_and_never_panics_on_a_cut_record() {
        let cp = sample();
        let record = cp.encode();
        assert_eq!(
            Checkpoint::peek_version_and_request_id(&record).unwrap(),
            (3, "req-3".to_string())
        );
        // Not checking the hash is the point: a damaged parent-hash byte still
        // peeks, while decode refuses the record.
        let mut damaged = record.clone();
        damaged[60] ^= 0xFF;
        assert!(Checkpoint::decode(&damaged).is_err());
        assert!(Checkpoint::peek_version_and_request_id(&damaged).is_ok());
        for cut in 0..record.len() {
            let err = Checkpoint::peek_version_and_request_id(&record[..cut]).unwrap_err();
            assert!(err.is_corrupt(), "cut at {cut}: {err}");
        }
        let mut longer = record;
        longer.insert(0, 0);
        assert!(Checkpoint::peek_version_and_request_id(&longer).is_err());
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        // Moving a byte from one variable field to the next must change the hash.
        let a = Checkpoint::seal(
            "ab".into(),
            "c".into(),
            1,
            ZERO_HASH,
            vec![],
            ts(1),
            "".into(),
        );
        let b = Checkpoint::seal(
            "a".into(),
            "bc".into(),
            1,
            ZERO_HASH,
            vec![],
            ts(1),
            "".into(),
        );
        assert_ne!(a.hash, b.hash);
    }

    #[test]
    fn encode_decode_round_trip() {
        let cp = sample();
        assert_eq!(Checkpoint::decode(&cp.encode()).unwrap(), cp);
        let empty = Checkpoint::seal(
            "s".into(),
            "i".into(),
            0,
            ZERO_HASH,
            vec![],
            Timestamp::default(),
            String::new(),
        );
        assert_eq!(Checkpoint::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let enc = sample().encode();
        for pos in 0..enc.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = enc.clone();
                bad[pos] ^= bit;
                let err = Checkpoint::decode(&bad).expect_err("flip must be detected");
                assert!(err.is_corrupt(), "pos {pos}: {err}");
            }
        }
    }

    #[test]
    fn truncation_and_extension_are_detected() {
        let enc = sample().encode();
        for len in 0..enc.len() {
            assert!(
                Checkpoint::decode(&enc[..len]).unwrap_err().is_corrupt(),
                "len {len}"
            );
        }
        let mut longer = enc.clone();
        longer.push(0);
        assert!(Checkpoint::decode(&longer).is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        // xorshift: deterministic, no extra dependency.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..5_000 {
            let len = (next() % 300) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            assert!(Checkpoint::decode(&bytes).is_err());
        }
        // Structurally valid prefix with a garbage length field and a matching
        // hash over the garbage: must be rejected by parsing, not panic.
        let mut body = CHECKPOINT_DOMAIN.to_vec();
        body.extend_from_slice(&u64::MAX.to_be_bytes());
        let h = sha256(&body);
        body.extend_from_slice(&h);
        assert!(Checkpoint::decode(&body).unwrap_err().is_corrupt());
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_names("a", "b").is_ok());
        assert!(matches!(
            validate_names("", "b"),
            Err(StorageError::Invalid(_))
        ));
        assert!(matches!(
            validate_names("a", "b\0c"),
            Err(StorageError::Invalid(_))
        ));
    }
}
