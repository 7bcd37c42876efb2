//! Read-path repair helpers: find checkpoint records that fail verification
//! and write back a copy fetched from a peer, but only after it verifies
//! against a reference this node already trusts.
//!
//! Why a peer's copy can be trusted at all: committed checkpoints are
//! byte-identical on every node (they come from the same Raft entries), and
//! every retained version has a local *anchor* that commits to its hash:
//! the head version is anchored by the checksummed head record, every older
//! version by the `parent_hash` of the next version. A fetched body is
//! written only if its SHA-256 equals the anchor, so a lying or equally
//! damaged peer can at worst leave the record unrepaired, never change it.
//! Repairing newest-first makes each repaired version the anchor for the one
//! below it.
//!
//! What cannot be repaired here: a damaged head record (nothing local commits
//! to it; the operator procedure is to re-seed the node) and request-id
//! records (they are checksummed and reported as DATA_LOSS if damaged).

use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

/// Most versions `Store::damaged_versions` lists (the newest ones). With
/// the largest retention (2^48 versions) a head forged far above the stored
/// records would otherwise list a hole of up to 2^48 versions; repair works
/// through a longer list a batch at a time, listing again after each pass.
pub const MAX_DAMAGED_VERSIONS_LISTED: usize = 4096;

/// What `Store::scrub` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// `(skill, instance)` with a damaged or missing checkpoint record that a
    /// verified peer copy can replace.
    pub repairable: Vec<(String, String)>,
    /// `(skill, instance)` whose head record fails verification (or whose
    /// records sled itself could not read). Nothing local anchors a peer's
    /// copy (module docs), so these are not repairable here: every read
    /// reports them until the node is re-seeded.
    pub damaged_heads: Vec<(String, String)>,
    /// Head keys whose bytes do not name an instance (a damaged key): no
    /// instance to name, so only counted.
    pub unreadable_head_keys: u64,
    /// The scan stopped before the end of the store (at `max` named
    /// instances, or cancelled); damage in the rest is found when read.
    pub stopped_early: bool,
}

impl ScrubReport {
    /// Damaged records that no peer copy can fix.
    pub fn unrepairable(&self) -> u64 {
        self.damaged_heads.len() as u64 + self.unreadable_head_keys
    }
}

/// What `Store::repair_checkpoint` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairOutcome {
    /// The damaged (or missing) record was replaced by the verified copy.
    Repaired,
    /// The stored record verifies now (already repaired, or never damaged):
    /// nothing was written.
    AlreadyIntact,
    /// The version is no longer retained here (pruned since the damage was
    /// found): nothing to repair.
    Superseded,
}

impl Store {
    /// Versions of one instance whose stored record fails verification or is
    /// missing inside the retained range, newest first, at most
    /// [`MAX_DAMAGED_VERSIONS_LISTED`] of them. `Corrupt` if the
    /// head record itself is damaged (it is the anchor; see module docs).
    pub fn damaged_versions(&self, skill: &str, instance: &str) -> Result<Vec<u64>, StorageError> {
        validate_names(skill, instance)?;
        let _guard = read(&self.inner.apply_lock);
        // From disk, not the head cache: this is what finds a damaged head.
        let Some(head) = self.inner.head_record_on_disk(skill, instance)? else {
            return Ok(Vec::new());
        };
        // Inclusive ranges, ascending and disjoint: a hole can span up to
        // the retention (2^48 at most), so versions are listed only at the
        // end, newest first and at most `MAX_DAMAGED_VERSIONS_LISTED`.
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let mut expected: Option<u64> = None;
        for r in self.inner.retained_records(skill, instance, head.version)? {
            if let Some(next) = expected.filter(|&next| next < r.version) {
                // A hole in the retained range is a lost record.
                ranges.push((next, r.version - 1));
            }
            if decode_checkpoint_at(&r.raw, skill, instance, r.version).is_err() {
                ranges.push((r.version, r.version));
            }
            expected = Some(r.version + 1);
        }
        match expected {
            Some(next) if next <= head.version => ranges.push((next, head.version)),
            None if head.version > 0 => ranges.push((head.version, head.version)),
            _ => {}
        }
        let mut damaged = Vec::new();
        for &(low, high) in ranges.iter().rev() {
            let room = MAX_DAMAGED_VERSIONS_LISTED - damaged.len();
            damaged.extend((low..=high).rev().take(room));
            if damaged.len() == MAX_DAMAGED_VERSIONS_LISTED {
                break;
            }
        }
        Ok(damaged)
    }

    /// The background scrub after a restart: instances with a checkpoint
    /// record that fails verification or is missing (a head pointing at a
    /// missing record included), and instances whose head record itself is
    /// damaged, at most `max` of both together. Reads the whole state tree,
    /// so the caller runs it off the serving thread, and stops early once
    /// `cancel` is set (a node shutting down must not wait for the scan).
    pub fn scrub(&self, max: usize, cancel: &AtomicBool) -> Result<ScrubReport, StorageError> {
        let mut report = ScrubReport::default();
        for item in self.inner.state.scan_prefix([TAG_HEAD]) {
            if report.repairable.len() + report.damaged_heads.len() >= max
                || cancel.load(Ordering::Relaxed)
            {
                report.stopped_early = true;
                break;
            }
            let (k, _) = item?;
            let Some((skill, instance, _)) =
                split_instance_key(&k).filter(|(_, _, rest)| rest.is_empty())
            else {
                report.unreadable_head_keys += 1;
                continue;
            };
            let id = (skill.to_owned(), instance.to_owned());
            match self.damaged_versions(skill, instance) {
                Ok(v) if v.is_empty() => {}
                Ok(_) => report.repairable.push(id),
                Err(StorageError::Corrupt { .. }) => report.damaged_heads.push(id),
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }

    /// The stored encoding of one version, verified first, for a peer that
    /// repairs its copy. `Corrupt` if this node's copy is damaged too.
    pub fn encoded_checkpoint(
        &self,
        skill: &str,
        instance: &str,
        version: u64,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.get(skill, instance, version)?.map(|cp| cp.encode()))
    }

    /// Writes back a copy of `skill/instance` v`version` fetched from a peer,
    /// if and only if it verifies against the local anchor (module docs).
    /// Runs under the apply lock, so an apply or prune of the same instance
    /// cannot interleave. A copy that does not verify is `Corrupt` and
    /// nothing is written.
    pub fn repair_checkpoint(
        &self,
        skill: &str,
        instance: &str,
        version: u64,
        encoded: &[u8],
    ) -> Result<RepairOutcome, StorageError> {
        validate_names(skill, instance)?;
        let fetched = decode_checkpoint_at(encoded, skill, instance, version)
            .map_err(|e| corrupt(format!("fetched copy: {e}")))?;
        let _guard = write(&self.inner.apply_lock);
        let state = &self.inner.state;
        let Some(raw) = state.get(head_key(skill, instance))? else {
            return Ok(RepairOutcome::Superseded);
        };
        let head = decode_head(&raw)?;
        if version > head.version {
            return Err(StorageError::Invalid(format!(
                "{skill}/{instance} v{version} is above the local head v{}",
                head.version
            )));
        }
        if version + self.inner.retention <= head.version {
            return Ok(RepairOutcome::Superseded);
        }
        let slots = self.inner.retention;
        let key = slot_key(skill, instance, version, slots);
        let existing = state.get(&key)?;
        // An empty slot, or one holding a record written ahead of a lost
        // head, is a hole; any other record that is not this version is
        // damage (a slot inside the window holds nothing else legitimately).
        let mut hole = existing.is_none();
        if let Some(raw) = &existing {
            if decode_checkpoint_at(raw, skill, instance, version).is_ok() {
                return Ok(RepairOutcome::AlreadyIntact);
            }
            hole = self
                .inner
                .is_ahead_of_head(raw, skill, instance, version % slots, head.version);
        }
        let anchor = if version == head.version {
            head.hash
        } else {
            let child = state
                .get(slot_key(skill, instance, version + 1, slots))?
                .ok_or_else(|| {
                    corrupt(format!(
                        "{skill}/{instance} v{}: missing, so v{version} has no anchor",
                        version + 1
                    ))
                })?;
            decode_checkpoint_at(&child, skill, instance, version + 1)
                .map_err(|e| corrupt(format!("anchor of v{version}: {e}")))?
                .parent_hash
        };
        if fetched.hash != anchor {
            return Err(corrupt(format!(
                "{skill}/{instance} v{version}: fetched copy hash {} differs from the local anchor {}",
                hex::encode(fetched.hash),
                hex::encode(anchor)
            )));
        }
        if hole && version != head.version {
            // A hole below the head: only refill it if the version below is
            // retained too (otherwise it was pruned, not lost).
            let below_retained = match version.checked_sub(1) {
                Some(below) if below >= 1 && below + slots > head.version => state
                    .get(slot_key(skill, instance, below, slots))?
                    .is_some_and(|raw| {
                        Checkpoint::peek_version_and_request_id(&raw).is_ok_and(|(v, _)| v == below)
                    }),
                _ => false,
            };
            if !below_retained {
                return Ok(RepairOutcome::Superseded);
            }
        }
        let written = state.insert(key, fetched.encode());
        // The slot now holds the same version's record again; the cache's
        // heads and request-record tracking still hold, but a write behind
        // its back is not worth reasoning about on this rare path.
        self.inner.heads.clear();
        written?;
        Ok(RepairOutcome::Repaired)
    }

    /// Test and debug tool (`synapse debug corrupt`): damages one stored
    /// record in place so detection and repair can be exercised on a real
    /// node: flips one byte in the middle of version `version` (default:
    /// the head version). Returns a description of what was damaged.
    #[doc(hidden)]
    pub fn debug_corrupt_checkpoint(
        &self,
        skill: &str,
        instance: &str,
        version: Option<u64>,
    ) -> Result<String, StorageError> {
        validate_names(skill, instance)?;
        let _guard = write(&self.inner.apply_lock);
        let version = match version {
            Some(v) => v,
            None => {
                let raw = self
                    .inner
                    .state
                    .get(head_key(skill, instance))?
                    .ok_or(StorageError::NotFound)?;
                decode_head(&raw)?.version
            }
        };
        let key = slot_key(skill, instance, version, self.inner.retention);
        let mut raw = self
            .inner
            .state
            .get(&key)?
            .filter(|raw| {
                Checkpoint::peek_version_and_request_id(raw).is_ok_and(|(v, _)| v == version)
            })
            .ok_or(StorageError::NotFound)?
            .to_vec();
        let pos = flip_middle_byte(&mut raw);
        let written = self.inner.state.insert(key, raw);
        // A write behind the head cache's back (module docs there).
        self.inner.heads.clear();
        written?;
        Ok(format!("{skill}/{instance} v{version}: byte {pos} flipped"))
    }

    /// Test and debug tool (`synapse debug corrupt --what head`): flips one
    /// byte in the middle of an instance's head record, the damage no peer
    /// copy can repair (module docs). Returns a description.
    #[doc(hidden)]
    pub fn debug_corrupt_head(&self, skill: &str, instance: &str) -> Result<String, StorageError> {
        validate_names(skill, instance)?;
        let _guard = write(&self.inner.apply_lock);
        let key = head_key(skill, instance);
        let mut raw = self
            .inner
            .state
            .get(&key)?
            .ok_or(StorageError::NotFound)?
            .to_vec();
        let pos = flip_middle_byte(&mut raw);
        let written = self.inner.state.insert(key, raw);
        // So the damage is seen, as it would be after a restart.
        self.inner.heads.clear();
        written?;
        Ok(format!(
            "{skill}/{instance} head record: byte {pos} flipped"
        ))
    }

    /// Test and debug tool (`synapse debug corrupt --what raft-entry`, and
    /// `synapse serve --debug-damage-raft-entry` for damage under a running
    /// node): flips one byte in the middle of the Raft log record at
    /// `index`, through this `Store` so that sled's cache holds the damage
    /// too. Returns a description of what was damaged.
    #[doc(hidden)]
    pub fn debug_corrupt_raft_entry(&self, index: u64) -> Result<String, StorageError> {
        let log = self.raft_log();
        let mut raw = log.debug_record(index)?;
        let pos = flip_middle_byte(&mut raw);
        log.debug_overwrite_record(index, &raw)?;
        Ok(format!("raft log index {index}: byte {pos} flipped"))
    }
}

/// The debug tools' damage: one byte in the middle of a record, inside
/// whatever its integrity check covers. Returns its position.
fn flip_middle_byte(raw: &mut [u8]) -> usize {
    let pos = raw.len().saturating_sub(1) / 2;
    if let Some(b) = raw.get_mut(pos) {
        *b ^= 0x5a;
    }
    pos
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{chain, open_tmp};

    fn apply(store: &Store, cps: &[Checkpoint]) {
        for (i, cp) in cps.iter().enumerate() {
            let mut b = ApplyBatch::default();
            b.put_checkpoint(cp, b"reply");
            b.set_applied(i as u64 + 1);
            store.commit_apply(b).unwrap();
        }
    }

    fn flip(store: &Store, version: u64) {
        store
            .debug_corrupt_checkpoint("counter", "a", Some(version))
            .unwrap();
    }

    /// A node and a peer holding the same committed chain v1..=5.
    fn pair() -> (tempfile::TempDir, Store, tempfile::TempDir, Store) {
        let cps = chain("counter", "a", 5);
        let (d1, node) = open_tmp(100);
        let (d2, peer) = open_tmp(100);
        apply(&node, &cps);
        apply(&peer, &cps);
        (d1, node, d2, peer)
    }

    /// A head record forged with a version past `MAX_CHECKPOINT_VERSION`
    /// (valid checksum) is a damaged head, not a panic: before, the repair
    /// scan computed `version + 1` for the record in the head's slot and
    /// panicked in a debug build.
    #[test]
    fn a_head_version_out_of_range_is_a_damaged_head() {
        let (_d1, node, _d2, _peer) = pair();
        let raw = node.raw_tree("state").unwrap();
        let intact = raw
            .get(node.debug_checkpoint_key("counter", "a", 5))
            .unwrap()
            .unwrap();
        let cp = Checkpoint::decode(&intact).unwrap();
        raw.insert(
            head_key("counter", "a"),
            encode_head(u64::MAX, &cp.hash, &cp.timestamp),
        )
        .unwrap();
        // Something in the slot the forged head points at.
        raw.insert(node.debug_checkpoint_key("counter", "a", u64::MAX), intact)
            .unwrap();
        let err = node.damaged_versions("counter", "a").unwrap_err();
        assert!(err.is_corrupt(), "{err}");
        assert!(err.to_string().contains("out of range"), "{err}");
        assert!(node.latest("counter", "a").unwrap_err().is_corrupt());
        assert!(node
            .repair_checkpoint("counter", "a", 5, &cp.encode())
            .unwrap_err()
            .is_corrupt());
        assert_eq!(
            node.scrub(10, &AtomicBool::new(false))
                .unwrap()
                .damaged_heads,
            vec![("counter".to_string(), "a".to_string())]
        );
    }

    /// A head forged far above the stored records, with the largest
    /// retention, leaves a hole of about 2^40 versions: the list is the
    /// newest `MAX_DAMAGED_VERSIONS_LISTED` of them, not an allocation of
    /// terabytes.
    #[test]
    fn a_hole_of_2_pow_40_versions_lists_only_the_newest() {
        let cps = chain("counter", "a", 5);
        let (_d, node) = open_tmp(MAX_RETENTION_VERSIONS);
        apply(&node, &cps);
        let top = 1u64 << 40;
        node.raw_tree("state")
            .unwrap()
            .insert(
                head_key("counter", "a"),
                encode_head(top, &cps[4].hash, &cps[4].timestamp),
            )
            .unwrap();
        let damaged = node.damaged_versions("counter", "a").unwrap();
        assert_eq!(damaged.len(), MAX_DAMAGED_VERSIONS_LISTED);
        assert_eq!(damaged[0], top);
        let listed = MAX_DAMAGED_VERSIONS_LISTED as u64;
        assert_eq!(damaged[damaged.len() - 1], top - (listed - 1));
        assert!(
            damaged.windows(2).all(|w| w[0] == w[1] + 1),
            "newest first, no gaps"
        );
    }

    #[test]
    fn damaged_versions_are_found_and_repaired_newest_first() {
        let (_d1, node, _d2, peer) = pair();
        flip(&node, 5);
        flip(&node, 3);
        assert!(node.latest("counter", "a").unwrap_err().is_corrupt());
        assert_eq!(node.damaged_versions("counter", "a").unwrap(), vec![5, 3]);
        assert_eq!(
            node.scrub(10, &AtomicBool::new(false)).unwrap(),
            ScrubReport {
                repairable: vec![("counter".to_string(), "a".to_string())],
                ..ScrubReport::default()
            }
        );
        for v in node.damaged_versions("counter", "a").unwrap() {
            let copy = peer.encoded_checkpoint("counter", "a", v).unwrap().unwrap();
            assert_eq!(
                node.repair_checkpoint("counter", "a", v, &copy).unwrap(),
                RepairOutcome::Repaired
            );
        }
        assert!(node.damaged_versions("counter", "a").unwrap().is_empty());
        assert!(node.verify_chain("counter", "a").unwrap().ok);
        assert_eq!(node.state_hash().unwrap(), peer.state_hash().unwrap());
        assert_eq!(
            node.latest("counter", "a").unwrap().unwrap(),
            peer.latest("counter", "a").unwrap().unwrap()
        );
        // Repairing an intact record writes nothing.
        let copy = peer.encoded_checkpoint("counter", "a", 5).unwrap().unwrap();
        assert_eq!(
            node.repair_checkpoint("counter", "a", 5, &copy).unwrap(),
            RepairOutcome::AlreadyIntact
        );
    }

    #[test]
    fn a_copy_that_does_not_match_the_anchor_is_refused() {
        let (_d1, node, _d2, _peer) = pair();
        flip(&node, 5);
        let before = node
            .raw_tree("state")
            .unwrap()
            .get(node.debug_checkpoint_key("counter", "a", 5));
        // A validly sealed v5 that is not the committed one (a diverged or
        // lying peer): its own hash verifies, the anchor does not.
        let other = chain("counter", "a", 5);
        let mut forged = other[4].clone();
        forged.state = b"forged".to_vec();
        forged.hash = forged.compute_hash();
        let err = node
            .repair_checkpoint("counter", "a", 5, &forged.encode())
            .unwrap_err();
        assert!(err.is_corrupt(), "{err}");
        // Garbage and a copy of another version are refused as well.
        for bad in [b"garbage".to_vec(), other[3].encode()] {
            assert!(node
                .repair_checkpoint("counter", "a", 5, &bad)
                .unwrap_err()
                .is_corrupt());
        }
        let after = node
            .raw_tree("state")
            .unwrap()
            .get(node.debug_checkpoint_key("counter", "a", 5));
        assert_eq!(
            before.unwrap(),
            after.unwrap(),
            "a refused copy was written"
        );
        assert!(node.latest("counter", "a").unwrap_err().is_corrupt());
    }

    #[test]
    fn an_older_version_needs_its_anchor_repaired_first() {
        let (_d1, node, _d2, peer) = pair();
        flip(&node, 5);
        flip(&node, 4);
        let v4 = peer.encoded_checkpoint("counter", "a", 4).unwrap().unwrap();
        assert!(node
            .repair_checkpoint("counter", "a", 4, &v4)
            .unwrap_err()
            .is_corrupt());
        let v5 = peer.encoded_checkpoint("counter", "a", 5).unwrap().unwrap();
        node.repair_checkpoint("counter", "a", 5, &v5).unwrap();
        assert_eq!(
            node.repair_checkpoint("counter", "a", 4, &v4).unwrap(),
            RepairOutcome::Repaired
        );
        assert!(node.verify_chain("counter", "a").unwrap().ok);
    }

    #[test]
    fn a_lost_record_inside_the_retained_range_is_refilled() {
        let (_d1, node, _d2, peer) = pair();
        node.raw_tree("state")
            .unwrap()
            .remove(node.debug_checkpoint_key("counter", "a", 3))
            .unwrap();
        assert_eq!(node.damaged_versions("counter", "a").unwrap(), vec![3]);
        let v3 = peer.encoded_checkpoint("counter", "a", 3).unwrap().unwrap();
        assert_eq!(
            node.repair_checkpoint("counter", "a", 3, &v3).unwrap(),
            RepairOutcome::Repaired
        );
        assert!(node.verify_chain("counter", "a").unwrap().ok);
    }

    /// The scrub names instances it cannot repair as well as those it can:
    /// a damaged head used to be skipped without a trace.
    #[test]
    fn the_scrub_reports_damaged_heads_apart_from_repairable_records() {
        let (_d, node) = open_tmp(100);
        for instance in ["a", "b", "c", "d"] {
            apply(&node, &chain("counter", instance, 3));
        }
        node.debug_corrupt_checkpoint("counter", "b", Some(2))
            .unwrap();
        node.debug_corrupt_head("counter", "c").unwrap();
        assert!(node.latest("counter", "c").unwrap_err().is_corrupt());
        // Key bytes that name no instance (no separator after the skill).
        let state = node.raw_tree("state").unwrap();
        let head = state.get(head_key("counter", "d")).unwrap().unwrap();
        state.insert([TAG_HEAD, b'x'], head).unwrap();

        let report = node.scrub(10, &AtomicBool::new(false)).unwrap();
        let id = |i: &str| ("counter".to_string(), i.to_string());
        assert_eq!(report.repairable, vec![id("b")]);
        assert_eq!(report.damaged_heads, vec![id("c")]);
        assert_eq!(report.unreadable_head_keys, 1);
        assert_eq!(report.unrepairable(), 2);
        assert!(!report.stopped_early);

        // Bounded: it stops at `max` named instances and says so.
        let first = node.scrub(1, &AtomicBool::new(false)).unwrap();
        assert_eq!(first.repairable, vec![id("b")]);
        assert!(first.damaged_heads.is_empty());
        assert!(first.stopped_early);
        // Cancelled: it stops at once.
        let cancelled = node.scrub(10, &AtomicBool::new(true)).unwrap();
        assert_eq!(
            cancelled.repairable.len() + cancelled.damaged_heads.len(),
            0
        );
        assert!(cancelled.stopped_early);
    }
}
