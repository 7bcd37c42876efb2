//! Heads of recently used instances, kept in memory next to sled.
//!
//! Every replicated write read its instance's head record from sled twice
//! (the state machine's chain check, then the apply's replay check), and on
//! the leader a third time (the actor's stored-head check), plus the slot it
//! was about to overwrite, to find that occupant's request record. Those
//! sled reads were about a fifth of a node thread's samples at 256 clients
//! (`benches/README.md`, fifteenth pass). This cache answers the head reads
//! and, for an instance whose recent writes this store applied itself,
//! says whether the version leaving the ring can have a request record at
//! all; when it cannot, the apply skips reading the slot.
//!
//! What it must never do is disagree with sled. The rules that keep it so:
//! - only the apply path ([`HeadCache::publish`]) updates an entry, after
//!   its sled writes succeeded, under the store's apply lock; an apply that
//!   failed or panicked part-way clears the whole cache;
//! - a reader fills a missing entry only if no writer published between
//!   its epoch read and its sled read ([`HeadCache::fill`]);
//! - every other writer of the state tree (snapshot restore, repair, the
//!   debug damage commands) clears the cache after writing (the one-time
//!   relayout runs before the store, and its cache, exist), and handing out
//!   the raw state tree (tests and the offline debug command damage records
//!   through it) turns the cache off for good.
//!
//! Verifying code (repair, scrub, `verify_chain`, snapshots) keeps reading
//! sled, so damage to a head record on disk is still found there and at the
//! next start; between the two, a cached head serves what was written.

use std::collections::HashMap;
#[cfg(test)]
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::{lock, Head};

/// Instances whose heads are kept: three times the default
/// `max_active_instances` (10 000), the set of instances a node is writing
/// to at once. An entry is 104 bytes in the map plus its key, and a full
/// generation's table has twice as many buckets as entries, so this bounds
/// the cache near 8 MiB with short names and 18 MiB with the longest.
pub(super) const HEAD_CACHE_ENTRIES: usize = 32_768;

/// One instance's head, and what this store knows of its recent versions'
/// request records.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct CachedHead {
    pub(super) head: Head,
    /// Every version from this one up to `head.version` was written by an
    /// apply of this store while the entry was cached, one after another.
    /// `head.version + 1` when nothing is known yet.
    pub(super) tracked_from: u64,
    /// The newest version `>= tracked_from` stored with a request record,
    /// or 0 when none was. Only the newest is kept, so a version below it
    /// counts as having one (its slot is read, as without the cache); an
    /// instance whose writes carry no request ids never needs a read.
    pub(super) newest_request_version: u64,
}

impl CachedHead {
    /// An entry read from sled: nothing known about earlier versions.
    pub(super) fn untracked(head: Head) -> Self {
        CachedHead {
            head,
            tracked_from: head.version.saturating_add(1),
            newest_request_version: 0,
        }
    }

    /// The entry after this store applies `head` with or without a request
    /// record, given the entry before (`None`: nothing cached, or a new
    /// instance). Tracking continues only across consecutive versions.
    pub(super) fn after_apply(prior: Option<&CachedHead>, head: Head, with_request: bool) -> Self {
        let continues = prior.is_some_and(|p| {
            p.tracked_from <= head.version
                && (head.version == p.head.version
                    || Some(head.version) == p.head.version.checked_add(1))
        });
        let (tracked_from, newest_request_version) = match prior {
            Some(p) if continues => (p.tracked_from, p.newest_request_version),
            // The head version written again over an untracked entry: an
            // earlier write of it may have kept a request record.
            Some(p) if p.head.version == head.version => return CachedHead::untracked(head),
            _ => (head.version, 0),
        };
        CachedHead {
            head,
            tracked_from,
            newest_request_version: if with_request {
                newest_request_version.max(head.version)
            } else {
                newest_request_version
            },
        }
    }

    /// Whether the slot that `version` is about to overwrite can hold a
    /// version with a request record. No older version maps to the slot
    /// while `version <= slots`. Otherwise the read is skipped only when
    /// `version - slots` was written here (tracked, and not above the head,
    /// so no gap hides an older occupant) and kept no request record.
    pub(super) fn occupant_may_have_request(
        this: Option<&CachedHead>,
        version: u64,
        slots: u64,
    ) -> bool {
        let Some(occupant) = version.checked_sub(slots).filter(|&v| v > 0) else {
            return false;
        };
        match this {
            Some(c) => {
                let written_here = c.tracked_from <= occupant && occupant <= c.head.version;
                !written_here || occupant <= c.newest_request_version
            }
            None => true,
        }
    }
}

struct Generations {
    /// Entries used since the last rotation.
    current: HashMap<Vec<u8>, CachedHead>,
    /// The generation before; an entry used again moves back to `current`.
    previous: HashMap<Vec<u8>, CachedHead>,
    /// Bumped by every publish and clear; see [`HeadCache::fill`].
    epoch: u64,
}

/// A generation evicted by [`Generations::insert`], to be dropped after the
/// lock is released: freeing tens of thousands of keys takes a while.
type Evicted = Option<HashMap<Vec<u8>, CachedHead>>;

impl Generations {
    #[must_use = "drop the evicted generation after unlocking"]
    fn insert(&mut self, key: Vec<u8>, entry: CachedHead, capacity: usize) -> Evicted {
        let mut evicted = None;
        if self.current.len() >= capacity / 2 && !self.current.contains_key(&key) {
            let current = std::mem::take(&mut self.current);
            evicted = Some(std::mem::replace(&mut self.previous, current));
        }
        self.current.insert(key, entry);
        evicted
    }
}

/// A bounded map from head key to [`CachedHead`], approximately least
/// recently used: two generations of at most half the capacity each.
pub(super) struct HeadCache {
    enabled: AtomicBool,
    /// Fixed outside tests (`set_capacity`).
    capacity: AtomicUsize,
    map: Mutex<Generations>,
    #[cfg(test)]
    occupant_reads_skipped: AtomicU64,
}

impl HeadCache {
    pub(super) fn new(capacity: usize) -> Self {
        assert!(capacity >= 2, "a head cache needs room for two generations");
        HeadCache {
            enabled: AtomicBool::new(true),
            capacity: AtomicUsize::new(capacity),
            map: Mutex::new(Generations {
                current: HashMap::new(),
                previous: HashMap::new(),
                epoch: 0,
            }),
            #[cfg(test)]
            occupant_reads_skipped: AtomicU64::new(0),
        }
    }

    pub(super) fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    pub(super) fn get(&self, key: &[u8]) -> Option<CachedHead> {
        if !self.is_enabled() {
            return None;
        }
        let mut g = lock(&self.map);
        if let Some(entry) = g.current.get(key) {
            return Some(*entry);
        }
        let entry = g.previous.remove(key)?;
        let evicted = g.insert(key.to_vec(), entry, self.capacity.load(Ordering::Relaxed));
        drop(g);
        drop(evicted);
        Some(entry)
    }

    /// Read before a sled read whose result goes to [`HeadCache::fill`].
    pub(super) fn epoch(&self) -> u64 {
        lock(&self.map).epoch
    }

    /// Caches a head read from sled, unless a publish or clear happened
    /// since `epoch` (the read may predate that write) or the key is
    /// already cached (that entry is as new and may know more).
    pub(super) fn fill(&self, key: &[u8], head: Head, epoch: u64) {
        if !self.is_enabled() {
            return;
        }
        let mut g = lock(&self.map);
        if g.epoch != epoch || g.current.contains_key(key) || g.previous.contains_key(key) {
            return;
        }
        let evicted = g.insert(
            key.to_vec(),
            CachedHead::untracked(head),
            self.capacity.load(Ordering::Relaxed),
        );
        drop(g);
        drop(evicted);
    }

    /// Entries of heads an apply has just written to sled. The caller holds
    /// the apply lock, so publishes never interleave.
    pub(super) fn publish(&self, entries: impl IntoIterator<Item = (Vec<u8>, CachedHead)>) {
        if !self.is_enabled() {
            return;
        }
        let mut evicted = Vec::new();
        let mut g = lock(&self.map);
        g.epoch += 1;
        for (key, entry) in entries {
            g.previous.remove(&key);
            evicted.extend(g.insert(key, entry, self.capacity.load(Ordering::Relaxed)));
        }
        drop(g);
        drop(evicted);
    }

    /// Forgets everything: after a write this cache did not see the result
    /// of (a failed apply, a restore, a repair).
    pub(super) fn clear(&self) {
        let mut g = lock(&self.map);
        g.epoch += 1;
        let current = std::mem::take(&mut g.current);
        let previous = std::mem::take(&mut g.previous);
        drop(g);
        drop((current, previous));
    }

    /// Turns the cache off for the rest of this store's life: someone holds
    /// the raw state tree and may write head records behind its back.
    pub(super) fn disable(&self) {
        self.enabled.store(false, Ordering::Release);
        self.clear();
    }

    /// Tests: an apply skipped reading a slot's occupant.
    pub(super) fn note_occupant_read_skipped(&self) {
        #[cfg(test)]
        self.occupant_reads_skipped.fetch_add(1, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(super) fn occupant_reads_skipped(&self) -> u64 {
        self.occupant_reads_skipped.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(super) fn set_capacity(&self, capacity: usize) {
        assert!(capacity >= 2);
        self.capacity.store(capacity, Ordering::Relaxed);
        self.clear();
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        let g = lock(&self.map);
        g.current.len() + g.previous.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{chain, interleave, log_batch, open_tmp, Rng};
    use super::*;
    use crate::{Checkpoint, Store, Timestamp, ZERO_HASH};

    fn contents(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
        store
            .inner
            .state
            .iter()
            .map(|kv| {
                let (k, v) = kv.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    }

    /// The cache only saves reads: a store with it and one without, fed
    /// the same applies (with replays from an older applied index, crash
    /// cuts and a tiny cache that keeps evicting), hold the same bytes
    /// after every apply. HEAD_CACHE_SEED replays one seed.
    #[test]
    fn a_store_with_the_cache_writes_exactly_what_one_without_writes() {
        let seeds = match std::env::var("HEAD_CACHE_SEED") {
            Ok(s) => vec![s.parse().expect("HEAD_CACHE_SEED is a number")],
            Err(_) => (1..=40).collect::<Vec<u64>>(),
        };
        let mut skipped_reads = 0;
        for seed in seeds {
            let mut rng = Rng(seed);
            let slots = [1, 2, 3, 5][rng.below(4) as usize];
            // Instance 0 never keeps a request record, instance 1 always
            // does, the others now and then.
            let policy = |i: usize, rng: &mut Rng| match i {
                0 => false,
                1 => true,
                _ => rng.below(3) == 0,
            };
            let chains: Vec<Vec<Checkpoint>> = (0..2 + rng.below(3))
                .map(|i| chain("s", &format!("i{i}"), 6 + rng.below(12)))
                .collect();
            let cps: Vec<&[Checkpoint]> = chains.iter().map(Vec::as_slice).collect();
            let mut log = interleave(&cps, &mut rng, policy);
            // Misuse the state machine never makes, which must still write
            // what a store without the cache writes: now and then a version
            // is missing (a gap in an instance's chain).
            if rng.below(3) == 0 {
                log.retain(|_| rng.below(8) != 0);
            }
            let (_a, cached) = open_tmp(slots);
            let (_b, plain) = open_tmp(slots);
            plain.raw_tree("state").unwrap(); // turns its cache off
            if rng.below(2) == 0 {
                // Two entries: nearly every apply evicts something.
                cached.inner.heads.set_capacity(2);
            }
            let mut next = 0usize;
            while next < log.len() {
                // Now and then the log replays from an older applied index.
                let from = if next > 0 && rng.below(4) == 0 {
                    next - 1 - rng.below(next.min(4) as u64) as usize
                } else {
                    next
                };
                let n = (1 + rng.below(5) as usize).min(log.len() - from);
                // A replay now and then flips whether a put keeps its request
                // record (misuse again: a Raft entry's reply never changes).
                let flip = from < next && rng.below(3) == 0;
                let replayed: Vec<(Checkpoint, bool)> = log[from..from + n]
                    .iter()
                    .map(|(cp, recorded)| (cp.clone(), *recorded != flip))
                    .collect();
                let batch = || {
                    let mut batch = log_batch(&replayed, 0..n);
                    batch.set_applied((from + n) as u64);
                    batch
                };
                let what = format!(
                    "seed {seed}, {slots} slots, entries {}..{}",
                    from + 1,
                    from + n
                );
                if rng.below(6) == 0 {
                    let keep = rng.below(3 + 4 * n as u64) as usize;
                    let cut_a = cached.commit_apply_cut(batch(), keep).unwrap();
                    let cut_b = plain.commit_apply_cut(batch(), keep).unwrap();
                    assert_eq!(cut_a, cut_b, "{what}");
                    next = cached.applied_index().unwrap() as usize;
                } else {
                    cached.commit_apply(batch()).unwrap();
                    plain.commit_apply(batch()).unwrap();
                    next = next.max(from + n);
                }
                let (a, b) = (contents(&cached), contents(&plain));
                if a != b {
                    let only =
                        |x: &[(Vec<u8>, Vec<u8>)], y: &[(Vec<u8>, Vec<u8>)]| -> Vec<String> {
                            x.iter()
                                .filter(|kv| !y.contains(kv))
                                .map(|(k, _)| k.escape_ascii().to_string())
                                .collect()
                        };
                    panic!(
                        "{what}: with the cache only {:?}, without it only {:?}",
                        only(&a, &b),
                        only(&b, &a)
                    );
                }
                for i in 0..chains.len() {
                    let instance = format!("i{i}");
                    assert_eq!(
                        cached.head("s", &instance).unwrap(),
                        plain.head("s", &instance).unwrap(),
                        "{what}: {instance}"
                    );
                }
            }
            skipped_reads += cached.inner.heads.occupant_reads_skipped();
            assert_eq!(plain.inner.heads.occupant_reads_skipped(), 0);
        }
        assert!(skipped_reads > 0, "no occupant read was ever skipped");
    }

    fn head(version: u64) -> Head {
        Head {
            version,
            hash: ZERO_HASH,
            timestamp: Timestamp::default(),
        }
    }

    #[test]
    fn a_fill_that_raced_a_publish_is_dropped() {
        let cache = HeadCache::new(16);
        let epoch = cache.epoch();
        cache.publish([(b"k".to_vec(), CachedHead::untracked(head(2)))]);
        cache.fill(b"k", head(1), epoch);
        assert_eq!(cache.get(b"k").map(|c| c.head.version), Some(2));
        cache.clear();
        cache.fill(b"k", head(1), epoch);
        assert_eq!(cache.get(b"k"), None, "a fill from before the clear");
        let epoch = cache.epoch();
        cache.fill(b"k", head(1), epoch);
        assert_eq!(cache.get(b"k").map(|c| c.head.version), Some(1));
    }

    #[test]
    fn the_cache_stays_within_its_capacity_and_keeps_what_is_used() {
        let cache = HeadCache::new(8);
        cache.publish([(b"hot".to_vec(), CachedHead::untracked(head(1)))]);
        for i in 0..100u64 {
            let epoch = cache.epoch();
            cache.fill(&i.to_be_bytes(), head(i), epoch);
            assert!(cache.get(b"hot").is_some(), "evicted after {i} fills");
            assert!(cache.len() <= 8, "{} entries", cache.len());
        }
    }

    #[test]
    fn a_disabled_cache_answers_nothing() {
        let cache = HeadCache::new(8);
        cache.publish([(b"k".to_vec(), CachedHead::untracked(head(1)))]);
        cache.disable();
        assert_eq!(cache.get(b"k"), None);
        cache.publish([(b"k".to_vec(), CachedHead::untracked(head(1)))]);
        cache.fill(b"k", head(1), cache.epoch());
        assert_eq!(cache.get(b"k"), None);
    }

    #[test]
    fn only_tracked_versions_without_request_records_skip_the_occupant() {
        let slots = 3;
        // Growth: versions 1..=3 have no older version in their slot.
        for v in 1..=3 {
            assert!(!CachedHead::occupant_may_have_request(None, v, slots));
        }
        assert!(CachedHead::occupant_may_have_request(None, 4, slots));
        // Read from sled at head 5: versions up to 5 are unknown.
        let read = CachedHead::untracked(head(5));
        assert!(CachedHead::occupant_may_have_request(Some(&read), 6, slots));
        // Applied 6, 7, 8 here, 7 with a request record.
        let mut e = CachedHead::after_apply(Some(&read), head(6), false);
        e = CachedHead::after_apply(Some(&e), head(7), true);
        e = CachedHead::after_apply(Some(&e), head(8), false);
        assert_eq!((e.tracked_from, e.newest_request_version), (6, 7));
        // Occupant 6 has none, but only the newest such version is kept,
        // so anything up to 7 is read.
        assert!(CachedHead::occupant_may_have_request(Some(&e), 9, slots));
        assert!(CachedHead::occupant_may_have_request(Some(&e), 10, slots)); // occupant 7
        assert!(!CachedHead::occupant_may_have_request(Some(&e), 11, slots)); // occupant 8
                                                                              // A gap restarts tracking at the new version.
        let gap = CachedHead::after_apply(Some(&e), head(20), false);
        assert_eq!((gap.tracked_from, gap.newest_request_version), (20, 0));
        assert!(CachedHead::occupant_may_have_request(Some(&gap), 21, slots));
        // A version above head + 1 cannot trust `version - slots`: after
        // head 5, v9's slot never received v6, so it may still hold v3.
        let lone = CachedHead::after_apply(None, head(1), false);
        let mut run = lone;
        for v in 2..=5 {
            run = CachedHead::after_apply(Some(&run), head(v), false);
        }
        assert!(!CachedHead::occupant_may_have_request(Some(&run), 6, slots));
        assert!(CachedHead::occupant_may_have_request(Some(&run), 9, slots));
        // The head written again over an entry read from sled: an earlier
        // write of it may have kept a request record.
        let again = CachedHead::after_apply(Some(&read), head(5), false);
        assert_eq!(again, CachedHead::untracked(head(5)));
        // Re-applying the head keeps tracking.
        let again = CachedHead::after_apply(Some(&e), head(8), true);
        assert_eq!((again.tracked_from, again.newest_request_version), (6, 8));
    }
}
