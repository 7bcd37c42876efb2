//! Corruption on disk: a flipped byte in a stored checkpoint or a Raft log
//! record is detected, reported as DATA_LOSS / `StorageError::Corrupt`, and
//! never served; other instances keep being served. A head stamped at the
//! clock's end (valid bytes, hostile content) refuses writes, not the node.

mod common;

use std::path::Path;

use common::*;
use serde_json::json;
use synapse::client::{v1 as pb, Client};
use synapse_storage::{StorageError, Store, StoreOptions};
use tonic::Code;

async fn at_version(c: &mut Client, v: u64) -> Result<pb::Checkpoint, tonic::Status> {
    c.skills
        .get_state(pb::GetStateRequest {
            skill: "counter".into(),
            instance: "alice".into(),
            version: v,
            at: None,
        })
        .await
        .map(|r| r.into_inner().checkpoint.expect("checkpoint"))
}

async fn history(c: &mut Client, instance: &str) -> Result<Vec<pb::Checkpoint>, tonic::Status> {
    c.skills
        .history(pb::HistoryRequest {
            skill: "counter".into(),
            instance: instance.into(),
            before_version: 0,
            limit: 0,
        })
        .await
        .map(|r| r.into_inner().checkpoints)
}

/// Verify must not report a corrupt chain as ok: either ok=false with a
/// problem, or DATA_LOSS.
async fn assert_verify_fails(c: &mut Client, instance: &str) {
    match c
        .skills
        .verify(pb::VerifyRequest {
            skill: "counter".into(),
            instance: instance.into(),
        })
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            assert!(!r.ok, "Verify reports a corrupt chain as ok: {r:?}");
            assert!(!r.problem.is_empty(), "Verify gives no problem text");
        }
        Err(s) => assert_eq!(s.code(), Code::DataLoss, "Verify: {s}"),
    }
}

/// counter/alice at v3 (value 6), counter/bob at v1 (value 10).
async fn seed(n: &TestNode) {
    let mut c = n.root_client().await;
    for by in 1..=3 {
        invoke(&mut c, "counter", "alice", "incr", json!({"by": by}))
            .await
            .unwrap();
    }
    invoke(&mut c, "counter", "bob", "incr", json!({"by": 10}))
        .await
        .unwrap();
}

/// Restarts, waits for the scrub to count `expected` unrepairable
/// instances, and returns the node with a root client.
async fn restart_expecting_unrepairable(n: TestNode, expected: u64) -> (TestNode, Client) {
    let n = restart(n).await;
    assert_eq!(
        scrub_unrepairable(&n).await,
        Some(expected),
        "scrub gauge after restart"
    );
    let c = n.root_client().await;
    (n, c)
}

/// `synapse_scrub_unrepairable` once the scrub after a start has set it
/// (polled, bounded: 30 s), or its last value.
async fn scrub_unrepairable(n: &TestNode) -> Option<u64> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let gauge = n.metric("synapse_scrub_unrepairable");
        if gauge.is_some_and(|g| g > 0) || std::time::Instant::now() > deadline {
            return gauge;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Restarts so that no instance actor holds state in memory.
async fn restart(n: TestNode) -> TestNode {
    let dir = n.shutdown().await;
    start(&dir).await
}

async fn bob_still_served(c: &mut Client) {
    let cp = get_state(c, "counter", "bob").await.expect("bob readable");
    assert_eq!(state_json(&cp), json!({"value": 10}));
    let r = invoke(c, "counter", "bob", "incr", json!({"by": 1}))
        .await
        .expect("bob writable");
    assert_eq!(reply_json(&r), json!({"value": 11}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_latest_checkpoint_is_data_loss_and_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let n = start(dir.path()).await;
    seed(&n).await;
    let n = restart(n).await;
    n.settle().await;
    // Flip a byte inside the stored state bytes of v3 (near the end of the
    // record, past the fixed header).
    flip_byte(
        n.node.core().store(),
        "state",
        &n.node
            .core()
            .store()
            .debug_checkpoint_key("counter", "alice", 3),
        40,
    );
    let before = n.state_hash();
    let mut c = n.root_client().await;
    assert_code(
        get_state(&mut c, "counter", "alice").await,
        Code::DataLoss,
        "GetState latest",
    );
    assert_code(at_version(&mut c, 3).await, Code::DataLoss, "GetState v3");
    assert_eq!(
        state_json(&at_version(&mut c, 2).await.expect("v2 is intact")),
        json!({"value": 3})
    );
    assert_code(history(&mut c, "alice").await, Code::DataLoss, "History");
    assert_verify_fails(&mut c, "alice").await;
    assert_code(
        invoke(&mut c, "counter", "alice", "get", json!(null)).await,
        Code::DataLoss,
        "read method on the corrupt instance",
    );
    assert_code(
        invoke(&mut c, "counter", "alice", "incr", json!({"by": 1})).await,
        Code::DataLoss,
        "write on the corrupt instance",
    );
    assert_code(
        c.skills
            .rollback(pb::RollbackRequest {
                skill: "counter".into(),
                instance: "alice".into(),
                to_version: 2,
                request_id: String::new(),
            })
            .await,
        Code::DataLoss,
        "rollback of the corrupt instance",
    );
    assert_eq!(n.state_hash(), before, "corrupt instance: state changed");
    bob_still_served(&mut c).await;

    // A single node has no peer to repair from: the scrub at the next start
    // counts the damaged record as unrepairable.
    let (n, mut c) = restart_expecting_unrepairable(n, 1).await;
    assert_code(
        at_version(&mut c, 3).await,
        Code::DataLoss,
        "GetState v3 after the scrub",
    );
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_checkpoint_of_an_active_instance_is_not_served() {
    // Same as above, but the instance actor is active (holds its head in
    // memory) when the byte flips.
    let dir = tempfile::tempdir().unwrap();
    let n = start(dir.path()).await;
    seed(&n).await;
    n.settle().await;
    flip_byte(
        n.node.core().store(),
        "state",
        &n.node
            .core()
            .store()
            .debug_checkpoint_key("counter", "alice", 3),
        40,
    );
    let before = n.state_hash();
    let mut c = n.root_client().await;
    assert_code(
        get_state(&mut c, "counter", "alice").await,
        Code::DataLoss,
        "GetState latest",
    );
    let read = invoke(&mut c, "counter", "alice", "get", json!(null)).await;
    let write = invoke(&mut c, "counter", "alice", "incr", json!({"by": 1})).await;
    // Whatever happens to alice, one corrupt record must not take the
    // node down: other instances stay readable and writable.
    let bob = tokio::time::timeout(
        HANG_GUARD,
        invoke(&mut c, "counter", "bob", "incr", json!({"by": 1})),
    )
    .await
    .expect("bob hung");
    assert!(
        bob.is_ok(),
        "after a write to a corrupt instance, another instance is not served: {bob:?} \
         (raft: {:?})",
        n.node.core().raft_status()
    );
    assert_code(
        read,
        Code::DataLoss,
        "read method on the active corrupt instance",
    );
    assert_code(
        write,
        Code::DataLoss,
        "write on the active corrupt instance",
    );
    // No checkpoint was built on top of the corrupt one.
    assert!(
        n.node
            .core()
            .store()
            .get("counter", "alice", 4)
            .unwrap()
            .is_none(),
        "a write on the corrupt instance was applied"
    );
    assert_eq!(n.state_hash().2, before.2);
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_older_checkpoint_fails_verify_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let n = start(dir.path()).await;
    seed(&n).await;
    let n = restart(n).await;
    n.settle().await;
    flip_byte(
        n.node.core().store(),
        "state",
        &n.node
            .core()
            .store()
            .debug_checkpoint_key("counter", "alice", 2),
        0,
    );
    let before = n.state_hash();
    let mut c = n.root_client().await;
    assert_code(at_version(&mut c, 2).await, Code::DataLoss, "GetState v2");
    assert_code(history(&mut c, "alice").await, Code::DataLoss, "History");
    assert_verify_fails(&mut c, "alice").await;
    assert_code(
        c.skills
            .rollback(pb::RollbackRequest {
                skill: "counter".into(),
                instance: "alice".into(),
                to_version: 2,
                request_id: String::new(),
            })
            .await,
        Code::DataLoss,
        "rollback to the corrupt version",
    );
    // The intact head is still served.
    let cp = get_state(&mut c, "counter", "alice")
        .await
        .expect("v3 intact");
    assert_eq!((cp.version, state_json(&cp)), (3, json!({"value": 6})));
    assert_eq!(n.state_hash(), before);
    bob_still_served(&mut c).await;
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_head_record_is_data_loss() {
    let dir = tempfile::tempdir().unwrap();
    let n = start(dir.path()).await;
    seed(&n).await;
    // Damaged offline with the operator's debug tool, as an operator drill
    // would: the middle byte of the head record flips.
    let dir = n.shutdown().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_synapse"))
        .args([
            "debug",
            "corrupt",
            "--what",
            "head",
            "--target",
            "counter/alice",
            "--data-dir",
        ])
        .arg(&dir)
        .output()
        .expect("run synapse debug corrupt");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("counter/alice head record"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // No `settle`: it reads the state hash, which the damaged head fails.
    let n = start(&dir).await;
    let mut c = n.root_client().await;
    assert_code(
        get_state(&mut c, "counter", "alice").await,
        Code::DataLoss,
        "GetState with a corrupt head record",
    );
    assert_code(
        invoke(&mut c, "counter", "alice", "incr", json!({"by": 1})).await,
        Code::DataLoss,
        "write with a corrupt head record",
    );
    assert_verify_fails(&mut c, "alice").await;
    bob_still_served(&mut c).await;

    // The scrub at the next start names it and counts it: no peer copy can
    // repair a head, so the operator has to know to re-seed the node.
    let (n, mut c) = restart_expecting_unrepairable(n, 1).await;
    assert_code(
        get_state(&mut c, "counter", "alice").await,
        Code::DataLoss,
        "GetState with a corrupt head record, after the scrub",
    );
    let cp = get_state(&mut c, "counter", "bob")
        .await
        .expect("bob readable");
    assert_eq!(state_json(&cp), json!({"value": 11}));
    n.shutdown().await;
}

fn open_store(dir: &Path) -> Store {
    Store::open(dir, StoreOptions::default()).expect("open store offline")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_raft_log_record_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let n = start(dir.path()).await;
    seed(&n).await;
    n.settle().await;
    let log = n.node.core().store().raft_log();
    let (first, last) = (log.first_log_index(), log.last_log_index());
    assert!(last >= first + 3, "log too short: {first}..={last}");
    // Intact before.
    let entries = log.read_entries(first, last + 1, None).expect("log reads");
    assert_eq!(entries.len() as u64, last - first + 1);
    let victim = last - 1;
    flip_byte(n.node.core().store(), "raft_log", &victim.to_be_bytes(), 3);
    for (lo, hi) in [(victim, victim + 1), (first, last + 1)] {
        match log.read_entries(lo, hi, None) {
            Err(StorageError::Corrupt { .. }) => {}
            other => panic!("entries {lo}..{hi} with a flipped byte: {other:?}"),
        }
    }
    // The term of an entry this process wrote is answered from memory
    // (storage's term cache, issue 7), never from the damaged record, so it
    // is still the true term; the record itself is refused above.
    let true_term = entries[(victim - first) as usize].term;
    assert_eq!(log.entry_term(victim).expect("cached term"), true_term);
    // Entries around it are still readable on their own.
    assert_eq!(log.read_entries(last, last + 1, None).unwrap().len(), 1);
    drop(log);
    n.shutdown().await;
}

/// A crash between persisting log entries and applying them leaves entries
/// above the applied index that a restart re-applies. If one of those is
/// corrupt it must never be applied: the node refuses to start or stops
/// consensus, and the corrupted write is not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_unapplied_raft_log_record_is_never_applied() {
    let dir = tempfile::tempdir().unwrap();
    let n = start(dir.path()).await;
    let mut c = n.root_client().await;
    invoke(&mut c, "counter", "alice", "incr", json!({"by": 1}))
        .await
        .unwrap();
    n.settle().await;
    // Remember the applied-index record as it is now (a valid, older value).
    let old_applied = n
        .node
        .core()
        .store()
        .raw_tree("state")
        .unwrap()
        .get(b"m/applied")
        .unwrap()
        .expect("applied record")
        .to_vec();
    let applied_then = n.state_hash().0;
    invoke(&mut c, "counter", "alice", "incr", json!({"by": 100}))
        .await
        .unwrap();
    n.settle().await;
    let last = n.node.core().store().raft_log().last_log_index();
    assert!(last > applied_then);
    drop(c);
    let dir = n.shutdown().await;

    // Offline: roll the applied index back (as if the crash lost the apply)
    // and corrupt the entry that carries the second write.
    {
        let store = open_store(&dir);
        let state = store.raw_tree("state").unwrap();
        // Also forget v2 so a re-apply would be visible.
        state
            .remove(store.debug_checkpoint_key("counter", "alice", 2))
            .unwrap();
        state.insert(b"m/applied", old_applied).unwrap();
        drop(state);
        // Find the entry of the second write: the last one whose payload
        // is a checkpoint (they all are after the bootstrap); flip it.
        let log = store.raft_log();
        let mut victim = None;
        for idx in (applied_then + 1)..=last {
            if log.debug_record(idx).is_ok() {
                victim = Some(idx);
            }
        }
        let victim = victim.expect("an unapplied entry");
        drop(log);
        flip_byte(&store, "raft_log", &victim.to_be_bytes(), 3);
        store.sync().unwrap();
    }

    let d2 = dir.clone();
    let started =
        tokio::task::spawn_blocking(move || synapse::Node::builder(test_config(&d2)).start())
            .await
            .unwrap();
    match started {
        Err(e) => {
            // Never applied: v2 was not rebuilt from the corrupt entry.
            {
                let store = open_store(&dir);
                assert!(
                    store.get("counter", "alice", 2).unwrap().is_none(),
                    "a corrupt log entry was applied"
                );
                assert_eq!(store.applied_index().unwrap(), applied_then);
            }
            let text = e.to_string();
            assert!(
                matches!(e, synapse::RuntimeError::DataLoss(_))
                    || text.to_lowercase().contains("corrupt"),
                "start failed, but not with a corruption report: {text}"
            );
        }
        Ok(node) => {
            let t = TestNode {
                endpoint: format!("http://{}", node.grpc_addr().unwrap()),
                node,
                dir: dir.clone(),
            };
            // The corrupt entry must not have been applied or served.
            let mut c = t.root_client().await;
            match get_state(&mut c, "counter", "alice").await {
                Ok(cp) => assert_eq!(
                    state_json(&cp),
                    json!({"value": 1}),
                    "a corrupt log entry was applied"
                ),
                Err(s) => assert!(
                    matches!(s.code(), Code::DataLoss | Code::Unavailable),
                    "unexpected {:?}: {}",
                    s.code(),
                    s.message()
                ),
            }
            assert!(
                t.node.core().store().applied_index().unwrap() < last,
                "applied past a corrupt entry"
            );
            t.shutdown().await;
        }
    }
}

/// A stored head stamped at the clock's very end (only a faulty or hostile
/// leader replicates one) leaves no timestamp after it. The actor refuses
/// that instance's writes with an error instead of asserting and stopping;
/// the instance stays readable and other instances keep being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_stamped_at_the_clocks_end_refuses_writes_without_a_panic() {
    use synapse_storage::{ApplyBatch, Checkpoint, Timestamp, ZERO_HASH};

    let dir = tempfile::tempdir().unwrap();
    let n = start(dir.path()).await;
    seed(&n).await;
    let dir = n.shutdown().await;
    {
        let store = open_store(&dir);
        let alice = store
            .latest("counter", "alice")
            .expect("read alice")
            .expect("alice stored");
        let end_of_time = Timestamp {
            physical_micros: u64::MAX,
            logical: u32::MAX,
            node_id: u64::MAX,
        };
        let cp = Checkpoint::seal(
            "counter".into(),
            "doomsday".into(),
            1,
            ZERO_HASH,
            alice.state.clone(),
            end_of_time,
            String::new(),
        );
        let mut batch = ApplyBatch::default();
        batch.put_checkpoint_unrecorded(&cp);
        store
            .commit_apply(batch)
            .expect("store the far-future head");
        store.sync().expect("sync");
    }
    let n = start(&dir).await;
    let mut c = n.root_client().await;
    let cp = get_state(&mut c, "counter", "doomsday")
        .await
        .expect("the far-future instance is readable");
    assert_eq!(state_json(&cp), json!({"value": 6}));
    for attempt in 0..2 {
        assert_code(
            invoke(&mut c, "counter", "doomsday", "incr", json!({"by": 1})).await,
            Code::Internal,
            &format!("write {attempt} after a head at the clock's end"),
        );
    }
    let cp = get_state(&mut c, "counter", "doomsday")
        .await
        .expect("still readable after the refused writes");
    assert_eq!(cp.version, 1, "a refused write changed nothing");
    assert_eq!(state_json(&cp), json!({"value": 6}));
    bob_still_served(&mut c).await;
    n.shutdown().await;
}
