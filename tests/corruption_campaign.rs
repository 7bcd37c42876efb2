//! Offline corruption campaign (issue #8 item 4): seeded, replayable random
//! damage to stored checkpoints, Raft log records and state snapshots.
//!
//! Each injection is one of: a single bit flip, a truncation, or a zeroed
//! block (1–64 bytes), at a random position of a random record. After each
//! one the record must be reported as `StorageError::Corrupt` by every read
//! path that touches it (never returned as data, never a panic); damaged
//! checkpoints are then repaired from a peer's copy (verified against the
//! local anchor) and the chain verifies again; damaged Raft log records are
//! found by the start-up scan (`damaged_entries`), a peer's copy of a
//! neighbouring record is refused, and the peer's committed copy repairs
//! them (`repair_entry`, as `Peer.FetchLogEntries` serves it); a damaged snapshot is refused
//! by `verify_snapshot_data` and by `restore_state`, which leaves the target
//! store untouched.
//!
//! `CORRUPTION_SEED` (default 1) and `CORRUPTION_INJECTIONS` (default 600)
//! replay or widen a run; the figures are printed (`--nocapture`).

use std::panic::{catch_unwind, AssertUnwindSafe};

use raft::eraftpb::Entry;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use synapse_storage::{
    ApplyBatch, Checkpoint, RepairOutcome, StorageError, Store, StoreOptions, Timestamp, ZERO_HASH,
};

const INSTANCES: usize = 6;
const VERSIONS: u64 = 5;
const LOG_ENTRIES: u64 = 40;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn open(dir: &std::path::Path) -> Store {
    Store::open(
        dir,
        StoreOptions {
            flush_every_ms: None,
            ..Default::default()
        },
    )
    .expect("open store")
}

/// Same committed data on every store: INSTANCES chains of VERSIONS and a
/// Raft log 1..=LOG_ENTRIES whose entries carry the checkpoints.
fn populate(store: &Store) {
    let mut log = Vec::new();
    let mut index = 0;
    for i in 0..INSTANCES {
        let mut parent = ZERO_HASH;
        for v in 1..=VERSIONS {
            let cp = Checkpoint::seal(
                "counter".into(),
                format!("i{i}"),
                v,
                parent,
                format!("{{\"value\":{}}}", v * 7 + i as u64).into_bytes(),
                Timestamp {
                    physical_micros: 1_000 * v + i as u64,
                    logical: 0,
                    node_id: 1,
                },
                format!("r{i}-{v}"),
            );
            parent = cp.hash;
            index += 1;
            let mut b = ApplyBatch::default();
            b.put_checkpoint(&cp, b"{}");
            b.set_applied(index);
            store.commit_apply(b).expect("apply");
            log.push(Entry {
                index,
                term: 1,
                data: cp.encode().into(),
                ..Default::default()
            });
        }
    }
    while index < LOG_ENTRIES {
        index += 1;
        log.push(Entry {
            index,
            term: 2,
            data: format!("entry-{index}").into_bytes().into(),
            ..Default::default()
        });
    }
    store.raft_log().append(&log).expect("append log");
    // The whole log is committed (as on a node that saw it committed), so
    // a damaged record may be repaired from a peer's committed copy.
    let mut hs = store.raft_log().hard_state().expect("hard state");
    hs.commit = LOG_ENTRIES;
    store.raft_log().set_hard_state(&hs).expect("commit");
}

#[derive(Clone, Copy, Debug)]
enum Mutation {
    BitFlip,
    Truncate,
    ZeroBlock,
}

/// Damages `bytes`; `None` if the mutation happens to change nothing (a
/// zeroed block over zeros), which is then not counted as an injection.
fn mutate(rng: &mut StdRng, bytes: &[u8], m: Mutation) -> Option<Vec<u8>> {
    let mut out = bytes.to_vec();
    match m {
        Mutation::BitFlip => {
            let pos = rng.gen_range(0..out.len());
            out[pos] ^= 1 << rng.gen_range(0..8);
        }
        Mutation::Truncate => out.truncate(rng.gen_range(0..out.len())),
        Mutation::ZeroBlock => {
            let start = rng.gen_range(0..out.len());
            let len = rng.gen_range(1..=64).min(out.len() - start);
            out[start..start + len].fill(0);
        }
    }
    (out != bytes).then_some(out)
}

fn is_corrupt<T: std::fmt::Debug>(r: &Result<T, StorageError>) -> bool {
    matches!(r, Err(StorageError::Corrupt { .. }))
}

/// Every read path that touches the damaged checkpoint reports it. Returns
/// the paths that did not (empty = detected everywhere).
fn checkpoint_misses(store: &Store, instance: &str, version: u64) -> Vec<&'static str> {
    let mut missed = Vec::new();
    if !is_corrupt(&store.get("counter", instance, version)) {
        missed.push("get");
    }
    if version == VERSIONS && !is_corrupt(&store.latest("counter", instance)) {
        missed.push("latest");
    }
    if !is_corrupt(&store.history("counter", instance, 0, 100)) {
        missed.push("history");
    }
    match store.verify_chain("counter", instance) {
        Ok(r) if !r.ok => {}
        _ => missed.push("verify_chain"),
    }
    match store.damaged_versions("counter", instance) {
        Ok(v) if v.contains(&version) => {}
        _ => missed.push("damaged_versions"),
    }
    missed
}

/// `true_term` is the entry's term read before the damage: storage answers
/// the term of an entry it wrote in this process from memory (the term
/// cache of issue #7), which is the true term and never a value decoded
/// from the damaged record, so that answer is not a miss.
fn log_misses(store: &Store, index: u64, true_term: u64) -> Vec<&'static str> {
    let log = store.raft_log();
    let mut missed = Vec::new();
    if !is_corrupt(&log.read_entries(index, index + 1, None)) {
        missed.push("read_entries");
    }
    if !is_corrupt(&log.read_entries(1, LOG_ENTRIES + 1, None)) {
        missed.push("read_entries range");
    }
    match log.entry_term(index) {
        Err(StorageError::Corrupt { .. }) => {}
        Ok(t) if t == true_term => {}
        _ => missed.push("entry_term"),
    }
    missed
}

#[derive(Default, Debug)]
struct Tally {
    injected: u64,
    detected: u64,
    repaired: u64,
    log_repaired: u64,
    by_target: [u64; 3],
    by_mutation: [u64; 3],
}

#[test]
fn random_corruption_is_always_detected_never_served_and_repairable() {
    let seed = env_u64("CORRUPTION_SEED", 1);
    let injections = env_u64("CORRUPTION_INJECTIONS", 600);
    let mut rng = StdRng::seed_from_u64(seed);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let node = open(dirs[0].path());
    let peer = open(dirs[1].path());
    let restore_target = open(dirs[2].path());
    populate(&node);
    populate(&peer);
    populate(&restore_target);
    let golden_hash = node.state_hash().unwrap();
    assert_eq!(golden_hash, peer.state_hash().unwrap());
    let snapshot = node.snapshot_state().unwrap();
    Store::verify_snapshot_data(&snapshot).expect("intact snapshot verifies");
    let state = node.raw_tree("state").unwrap();

    // The checker can fail: an intact record is reported as missed.
    assert!(!checkpoint_misses(&node, "i0", VERSIONS).is_empty());
    let term_3 = node.raft_log().entry_term(3).expect("intact term");
    assert!(!log_misses(&node, 3, term_3).is_empty());

    let mut t = Tally::default();
    let mut failures = Vec::new();
    let mut attempts = 0;
    while t.injected < injections && attempts < injections * 4 {
        attempts += 1;
        let target = rng.gen_range(0..3usize);
        let m = [Mutation::BitFlip, Mutation::Truncate, Mutation::ZeroBlock][rng.gen_range(0..3)];
        let what;
        let outcome = match target {
            0 => {
                let instance = format!("i{}", rng.gen_range(0..INSTANCES));
                let version = rng.gen_range(1..=VERSIONS);
                let key = node.debug_checkpoint_key("counter", &instance, version);
                let original = state.get(&key).unwrap().expect("record").to_vec();
                let Some(bad) = mutate(&mut rng, &original, m) else {
                    continue;
                };
                what = format!("checkpoint {instance} v{version} {m:?}");
                state.insert(&key, bad).unwrap();
                catch_unwind(AssertUnwindSafe(|| {
                    let missed = checkpoint_misses(&node, &instance, version);
                    // Repair from the peer, verified against the anchor.
                    let copy = peer
                        .encoded_checkpoint("counter", &instance, version)
                        .unwrap()
                        .unwrap();
                    let repaired = node
                        .repair_checkpoint("counter", &instance, version, &copy)
                        .map(|o| o == RepairOutcome::Repaired)
                        .unwrap_or(false)
                        && node.verify_chain("counter", &instance).unwrap().ok;
                    (missed, repaired)
                }))
            }
            1 => {
                let index = rng.gen_range(1..=LOG_ENTRIES);
                let original = node.raft_log().debug_record(index).expect("entry");
                let true_term = node.raft_log().entry_term(index).expect("intact term");
                let Some(mut bad) = mutate(&mut rng, &original, m) else {
                    continue;
                };
                // A record in a segment file is damaged in place: a lost
                // tail reads back as zeros.
                bad.resize(original.len(), 0);
                if bad == original {
                    continue;
                }
                what = format!("raft entry {index} {m:?}");
                node.raft_log().debug_overwrite_record(index, &bad).unwrap();
                let r = catch_unwind(AssertUnwindSafe(|| {
                    let mut missed = log_misses(&node, index, true_term);
                    let log = node.raft_log();
                    if log.damaged_entries(16).ok() != Some(vec![index]) {
                        missed.push("damaged_entries");
                    }
                    // Repair from the peer's committed copy (as
                    // Peer.FetchLogEntries serves it); a copy of a
                    // neighbouring record is refused first.
                    let (commit, records) = peer
                        .raft_log()
                        .committed_records(index.saturating_sub(1).max(1), index, 1 << 20)
                        .unwrap();
                    let wrong = &records[0];
                    let refused = index == 1
                        || matches!(
                            log.repair_entry(index, wrong, commit),
                            Err(StorageError::RepairRefused { .. })
                        );
                    let right = records.last().unwrap();
                    let repaired = refused
                        && log.repair_entry(index, right, commit).unwrap_or(false)
                        && log
                            .damaged_entries(16)
                            .map(|d| d.is_empty())
                            .unwrap_or(false)
                        && log.read_entries(1, LOG_ENTRIES + 1, None).ok()
                            == peer.raft_log().read_entries(1, LOG_ENTRIES + 1, None).ok();
                    (missed, repaired)
                }));
                // Whatever happened, the next injection starts intact.
                node.raft_log()
                    .debug_overwrite_record(index, &original)
                    .unwrap();
                r
            }
            _ => {
                let Some(bad) = mutate(&mut rng, &snapshot, m) else {
                    continue;
                };
                what = format!("snapshot {m:?} ({} bytes)", bad.len());
                catch_unwind(AssertUnwindSafe(|| {
                    let mut missed = Vec::new();
                    if !is_corrupt(&Store::verify_snapshot_data(&bad)) {
                        missed.push("verify_snapshot_data");
                    }
                    if !is_corrupt(&restore_target.restore_state(&bad)) {
                        missed.push("restore_state");
                    }
                    let untouched = restore_target.state_hash().unwrap() == golden_hash;
                    if !untouched {
                        missed.push("restore_state changed the store");
                    }
                    (missed, untouched)
                }))
            }
        };
        t.injected += 1;
        t.by_target[target] += 1;
        t.by_mutation[m as usize] += 1;
        match outcome {
            Ok((missed, repaired)) if missed.is_empty() => {
                t.detected += 1;
                if target == 0 && repaired {
                    t.repaired += 1;
                } else if target == 1 && repaired {
                    t.log_repaired += 1;
                } else if target != 2 {
                    failures.push(format!("{what}: detected but not repaired"));
                }
            }
            Ok((missed, _)) => failures.push(format!("{what}: not detected by {missed:?}")),
            Err(_) => failures.push(format!("{what}: PANIC")),
        }
    }
    assert_eq!(node.state_hash().unwrap(), golden_hash, "state changed");
    println!(
        "corruption campaign seed {seed}: injected {} (checkpoints {}, raft entries {}, \
         snapshots {}; bit flips {}, truncations {}, zeroed blocks {}), detected {}/{}, \
         checkpoints repaired from the peer {}/{}, raft entries repaired from the peer {}/{}",
        t.injected,
        t.by_target[0],
        t.by_target[1],
        t.by_target[2],
        t.by_mutation[0],
        t.by_mutation[1],
        t.by_mutation[2],
        t.detected,
        t.injected,
        t.repaired,
        t.by_target[0],
        t.log_repaired,
        t.by_target[1]
    );
    assert!(
        failures.is_empty(),
        "seed {seed}: {} of {} injections failed, first: {:?}",
        failures.len(),
        t.injected,
        &failures[..failures.len().min(10)]
    );
    assert_eq!(t.injected, injections);
}
