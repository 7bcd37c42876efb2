//! Every public RPC on one node over real gRPC: a positive test, and the same
//! call with no token, a garbage token, a token signed by another root key,
//! an expired token and an out-of-scope token. Denied calls change no state.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use serde_json::json;
use synapse::client::{v1 as pb, Client};
use synapse::{attenuate, Grant, Restriction, RootKey};
use tonic::Code;

/// A call of one RPC against `counter/alice`, reduced to its status.
#[derive(Clone, Copy, Debug)]
enum Rpc {
    Invoke,
    GetState,
    History,
    Rollback,
    Verify,
    Watch,
    Status,
    Now,
}

async fn call(c: &mut Client, rpc: Rpc) -> Result<(), tonic::Status> {
    let fut = async {
        match rpc {
            Rpc::Invoke => invoke(c, "counter", "alice", "incr", json!({"by": 1}))
                .await
                .map(drop),
            Rpc::GetState => get_state(c, "counter", "alice").await.map(drop),
            Rpc::History => c
                .skills
                .history(pb::HistoryRequest {
                    skill: "counter".into(),
                    instance: "alice".into(),
                    before_version: 0,
                    limit: 0,
                })
                .await
                .map(drop),
            Rpc::Rollback => c
                .skills
                .rollback(pb::RollbackRequest {
                    skill: "counter".into(),
                    instance: "alice".into(),
                    to_version: 1,
                    request_id: String::new(),
                })
                .await
                .map(drop),
            Rpc::Verify => c
                .skills
                .verify(pb::VerifyRequest {
                    skill: "counter".into(),
                    instance: "alice".into(),
                })
                .await
                .map(drop),
            Rpc::Watch => c
                .skills
                .watch(pb::WatchRequest {
                    skill: "counter".into(),
                    instance: "alice".into(),
                })
                .await
                .map(drop),
            Rpc::Status => c.cluster.status(pb::StatusRequest {}).await.map(drop),
            Rpc::Now => c.clock.now(pb::NowRequest {}).await.map(drop),
        }
    };
    tokio::time::timeout(HANG_GUARD, fut)
        .await
        .expect("rpc hung")
}

/// A token that holds only `counter/alice incr`: in scope for no RPC that
/// these tests make denied (Invoke is tested on another instance).
fn incr_only(n: &TestNode) -> String {
    n.mint(&[grant("counter", "alice", &["incr"])], None)
}

/// Runs `rpc` with every kind of bad credential and asserts the code and
/// that no state changed. `out_of_scope` is a token valid on this cluster
/// that does not cover the call.
async fn assert_rejections(n: &TestNode, rpc: Rpc, out_of_scope: &str) {
    let before = n.state_hash();
    let alice_before = n.head("counter", "alice");

    let mut anon = n.client(None).await;
    assert_code(
        call(&mut anon, rpc).await,
        Code::Unauthenticated,
        &format!("{rpc:?} without a token"),
    );

    let mut garbage = n.client(Some("not-a-biscuit-token")).await;
    assert_code(
        call(&mut garbage, rpc).await,
        Code::Unauthenticated,
        &format!("{rpc:?} with a garbage token"),
    );

    let forged = RootKey::generate()
        .mint("mallory", &[grant("*", "*", &[])], None)
        .expect("mint on another key");
    let mut other_key = n.client(Some(&forged)).await;
    assert_code(
        call(&mut other_key, rpc).await,
        Code::Unauthenticated,
        &format!("{rpc:?} with a token of another cluster"),
    );

    let expired = n.mint(
        &[grant("*", "*", &[])],
        Some(SystemTime::now() - Duration::from_secs(60)),
    );
    let mut exp = n.client(Some(&expired)).await;
    assert_code(
        call(&mut exp, rpc).await,
        Code::PermissionDenied,
        &format!("{rpc:?} with an expired all-rights token"),
    );

    // An all-rights token attenuated with an expiry in the past.
    let root = n.root_token();
    let att_expired = attenuate(
        &root,
        &Restriction {
            expires_at: Some(SystemTime::now() - Duration::from_secs(60)),
            ..Default::default()
        },
    )
    .expect("attenuate");
    let mut exp2 = n.client(Some(&att_expired)).await;
    assert_code(
        call(&mut exp2, rpc).await,
        Code::PermissionDenied,
        &format!("{rpc:?} with an attenuated, expired token"),
    );

    let mut scoped = n.client(Some(out_of_scope)).await;
    assert_code(
        call(&mut scoped, rpc).await,
        Code::PermissionDenied,
        &format!("{rpc:?} with an out-of-scope token"),
    );

    assert_eq!(
        n.state_hash(),
        before,
        "{rpc:?}: a rejected call changed the state hash"
    );
    assert_eq!(
        n.head("counter", "alice"),
        alice_before,
        "{rpc:?}: a rejected call changed counter/alice"
    );
}

/// A node with `counter/alice` at v2 (value 5) and settled bootstrap.
async fn node_with_alice(dir: &std::path::Path) -> (TestNode, Vec<pb::InvokeResponse>) {
    let n = start(dir).await;
    let mut c = n.root_client().await;
    let r1 = invoke(&mut c, "counter", "alice", "incr", json!({"by": 2}))
        .await
        .expect("incr 1");
    let r2 = invoke(&mut c, "counter", "alice", "incr", json!({"by": 3}))
        .await
        .expect("incr 2");
    n.settle().await;
    (n, vec![r1, r2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_positive_and_rejections() {
    let dir = tempfile::tempdir().unwrap();
    let (n, acks) = node_with_alice(dir.path()).await;
    assert_eq!(reply_json(&acks[0]), json!({"value": 2}));
    assert_eq!(acks[0].version, 1);
    assert_eq!(reply_json(&acks[1]), json!({"value": 5}));
    assert_eq!(acks[1].version, 2);
    assert_eq!(acks[1].hash.len(), 32);
    assert!(!acks[1].deduplicated);
    assert!(
        !acks[1].request_id.is_empty(),
        "server assigns a request id"
    );
    let t = |r: &pb::InvokeResponse| {
        let t = r.timestamp.expect("timestamp");
        (t.physical_micros, t.logical, t.node_id)
    };
    assert!(t(&acks[1]) > t(&acks[0]), "timestamps increase");

    // A read method through Invoke: same version, no new checkpoint.
    let mut c = n.root_client().await;
    let before = n.state_hash();
    let g = invoke(&mut c, "counter", "alice", "get", json!(null))
        .await
        .expect("get");
    assert_eq!(reply_json(&g), json!({"value": 5}));
    assert_eq!(g.version, 2);
    assert_eq!(g.hash, acks[1].hash);
    assert_eq!(n.state_hash(), before, "a read changed the state hash");

    // A scoped token works in scope...
    let scoped = n.mint(&[grant("counter", "alice", &["incr"])], None);
    let mut sc = n.client(Some(&scoped)).await;
    let r = invoke(&mut sc, "counter", "alice", "incr", json!({"by": 1}))
        .await
        .expect("in-scope incr");
    assert_eq!(reply_json(&r), json!({"value": 6}));
    n.settle().await;
    // ...and is denied outside it (another instance, another method).
    assert_rejections(
        &n,
        Rpc::Invoke,
        &n.mint(&[grant("counter", "bob", &[])], None),
    )
    .await;
    let before = n.state_hash();
    assert_code(
        invoke(&mut sc, "counter", "bob", "incr", json!({"by": 1})).await,
        Code::PermissionDenied,
        "incr on another instance",
    );
    assert_code(
        invoke(&mut sc, "counter", "alice", "get", json!(null)).await,
        Code::PermissionDenied,
        "a method the token does not name",
    );
    assert_code(
        invoke(
            &mut sc,
            "kv",
            "alice",
            "put",
            json!({"key": "k", "value": 1}),
        )
        .await,
        Code::PermissionDenied,
        "another skill",
    );
    assert_eq!(n.state_hash(), before);
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_and_attenuated_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (n, _) = node_with_alice(dir.path()).await;
    let ro = n.mint(
        &[Grant {
            read_only: true,
            ..grant("counter", "*", &[])
        }],
        None,
    );
    let mut c = n.client(Some(&ro)).await;
    let before = n.state_hash();
    assert_code(
        invoke(&mut c, "counter", "alice", "incr", json!({"by": 1})).await,
        Code::PermissionDenied,
        "write with a read-only token",
    );
    assert_eq!(
        reply_json(
            &invoke(&mut c, "counter", "alice", "get", json!(null))
                .await
                .unwrap()
        ),
        json!({"value": 5})
    );
    assert_eq!(
        state_json(&get_state(&mut c, "counter", "alice").await.unwrap()),
        json!({"value": 5})
    );

    // Attenuating the root token offline narrows it.
    let narrowed = attenuate(
        &n.root_token(),
        &Restriction {
            skill: Some("counter".into()),
            instance: Some("ali*".into()),
            methods: Some(vec!["get".into()]),
            read_only: true,
            expires_at: Some(SystemTime::now() + Duration::from_secs(600)),
        },
    )
    .unwrap();
    let mut a = n.client(Some(&narrowed)).await;
    assert_eq!(
        reply_json(
            &invoke(&mut a, "counter", "alice", "get", json!(null))
                .await
                .unwrap()
        ),
        json!({"value": 5})
    );
    assert_code(
        invoke(&mut a, "counter", "alice", "incr", json!(null)).await,
        Code::PermissionDenied,
        "attenuated token used for a write",
    );
    assert_code(
        invoke(&mut a, "counter", "bob", "get", json!(null)).await,
        Code::PermissionDenied,
        "attenuated token outside its instance prefix",
    );
    assert_code(
        call(&mut a, Rpc::Status).await,
        Code::PermissionDenied,
        "attenuated token on Cluster.Status",
    );
    // Attenuation cannot widen: a read-only token attenuated again is
    // still read-only.
    let rewidened = attenuate(
        &ro,
        &Restriction {
            skill: Some("counter".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let mut w = n.client(Some(&rewidened)).await;
    assert_code(
        invoke(&mut w, "counter", "alice", "incr", json!(null)).await,
        Code::PermissionDenied,
        "re-attenuated read-only token",
    );
    // A tampered token (one character changed) is rejected as unauthenticated.
    let mut bytes = n.root_token().into_bytes();
    let mid = bytes.len() / 2;
    bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    let mut t = n.client(Some(&tampered)).await;
    assert_code(
        call(&mut t, Rpc::Invoke).await,
        Code::Unauthenticated,
        "tampered token",
    );
    assert_eq!(n.state_hash(), before, "denied calls changed state");
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_state_positive_and_rejections() {
    let dir = tempfile::tempdir().unwrap();
    let (n, acks) = node_with_alice(dir.path()).await;
    let mut c = n.root_client().await;
    let cp = get_state(&mut c, "counter", "alice").await.expect("state");
    assert_eq!(state_json(&cp), json!({"value": 5}));
    assert_eq!(cp.version, 2);
    assert_eq!(cp.hash, acks[1].hash);
    assert_eq!(cp.parent_hash, acks[0].hash);
    assert_eq!(cp.timestamp, acks[1].timestamp);
    // At a version.
    let v1 = c
        .skills
        .get_state(pb::GetStateRequest {
            skill: "counter".into(),
            instance: "alice".into(),
            version: 1,
            at: None,
        })
        .await
        .unwrap()
        .into_inner()
        .checkpoint
        .unwrap();
    assert_eq!(state_json(&v1), json!({"value": 2}));
    assert_eq!(v1.hash, acks[0].hash);
    // Time travel: at v1's timestamp we get v1.
    let at = c
        .skills
        .get_state(pb::GetStateRequest {
            skill: "counter".into(),
            instance: "alice".into(),
            version: 0,
            at: acks[0].timestamp,
        })
        .await
        .unwrap()
        .into_inner()
        .checkpoint
        .unwrap();
    assert_eq!(at.version, 1);

    // Scoped tokens: `_state` grants GetState, `incr` alone does not.
    let reader = n.mint(&[grant("counter", "alice", &["_state"])], None);
    let mut r = n.client(Some(&reader)).await;
    assert_eq!(
        get_state(&mut r, "counter", "alice").await.unwrap().version,
        2
    );
    assert_rejections(&n, Rpc::GetState, &incr_only(&n)).await;
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_positive_and_rejections() {
    let dir = tempfile::tempdir().unwrap();
    let (n, acks) = node_with_alice(dir.path()).await;
    let mut c = n.root_client().await;
    let h = c
        .skills
        .history(pb::HistoryRequest {
            skill: "counter".into(),
            instance: "alice".into(),
            before_version: 0,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .checkpoints;
    assert_eq!(
        h.iter().map(|cp| cp.version).collect::<Vec<_>>(),
        vec![2, 1],
        "newest first"
    );
    assert_eq!(h[0].hash, acks[1].hash);
    assert_eq!(h[1].hash, acks[0].hash);
    assert_eq!(h[0].parent_hash, h[1].hash, "chain links");
    assert_eq!(h[1].parent_hash, vec![0u8; 32], "genesis parent");
    let limited = c
        .skills
        .history(pb::HistoryRequest {
            skill: "counter".into(),
            instance: "alice".into(),
            before_version: 1,
            limit: 5,
        })
        .await
        .unwrap()
        .into_inner()
        .checkpoints;
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0].version, 1);

    let reader = n.mint(&[grant("counter", "alice", &["_history"])], None);
    let mut r = n.client(Some(&reader)).await;
    assert!(call(&mut r, Rpc::History).await.is_ok());
    // `_history` does not imply `_state`.
    assert_code(
        call(&mut r, Rpc::GetState).await,
        Code::PermissionDenied,
        "_history token used for GetState",
    );
    assert_rejections(&n, Rpc::History, &incr_only(&n)).await;
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_positive_and_rejections() {
    let dir = tempfile::tempdir().unwrap();
    let (n, acks) = node_with_alice(dir.path()).await;
    // Rejections first, while alice is at v2.
    assert_rejections(&n, Rpc::Rollback, &incr_only(&n)).await;
    // A read-only `_rollback` grant is still denied: rollback writes.
    let ro = n.mint(
        &[Grant {
            read_only: true,
            ..grant("counter", "alice", &["_rollback"])
        }],
        None,
    );
    let mut roc = n.client(Some(&ro)).await;
    let before = n.state_hash();
    assert_code(
        call(&mut roc, Rpc::Rollback).await,
        Code::PermissionDenied,
        "read-only rollback",
    );
    assert_eq!(n.state_hash(), before);

    let rb = n.mint(&[grant("counter", "alice", &["_rollback"])], None);
    let mut c = n.client(Some(&rb)).await;
    let r = c
        .skills
        .rollback(pb::RollbackRequest {
            skill: "counter".into(),
            instance: "alice".into(),
            to_version: 1,
            request_id: "rb-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.version, 3, "rollback appends a new version");
    assert!(!r.deduplicated);
    let mut root = n.root_client().await;
    let cp = get_state(&mut root, "counter", "alice").await.unwrap();
    assert_eq!(cp.version, 3);
    assert_eq!(state_json(&cp), json!({"value": 2}), "state of v1 restored");
    assert_eq!(
        cp.parent_hash, acks[1].hash,
        "history is kept: v3 follows v2"
    );
    assert_eq!(cp.hash, r.hash);
    // The old versions are still there.
    let h = root
        .skills
        .history(pb::HistoryRequest {
            skill: "counter".into(),
            instance: "alice".into(),
            before_version: 0,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .checkpoints;
    assert_eq!(h.len(), 3);
    // The next write builds on the rolled-back state.
    let next = invoke(&mut root, "counter", "alice", "incr", json!({"by": 10}))
        .await
        .unwrap();
    assert_eq!(reply_json(&next), json!({"value": 12}));
    assert_eq!(next.version, 4);
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_positive_and_rejections() {
    let dir = tempfile::tempdir().unwrap();
    let (n, acks) = node_with_alice(dir.path()).await;
    let mut c = n.root_client().await;
    let v = c
        .skills
        .verify(pb::VerifyRequest {
            skill: "counter".into(),
            instance: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "fresh chain verifies: {}", v.problem);
    assert_eq!(v.versions_checked, 2);
    assert_eq!(v.oldest_version, 1);
    assert_eq!(v.latest_version, 2);
    assert_eq!(v.head_hash, acks[1].hash);
    assert!(v.problem.is_empty());
    assert_rejections(&n, Rpc::Verify, &incr_only(&n)).await;
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_new_checkpoints_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (n, _) = node_with_alice(dir.path()).await;
    assert_rejections(&n, Rpc::Watch, &incr_only(&n)).await;

    let watcher = n.mint(&[grant("counter", "alice", &["_watch"])], None);
    let mut w = n.client(Some(&watcher)).await;
    let mut stream = tokio::time::timeout(
        HANG_GUARD,
        w.skills.watch(pb::WatchRequest {
            skill: "counter".into(),
            instance: "alice".into(),
        }),
    )
    .await
    .expect("watch hung")
    .expect("watch allowed")
    .into_inner();

    let mut c = n.root_client().await;
    // A write to another instance must not show up on this stream.
    invoke(&mut c, "counter", "bob", "incr", json!({"by": 100}))
        .await
        .unwrap();
    let a = invoke(&mut c, "counter", "alice", "incr", json!({"by": 1}))
        .await
        .unwrap();
    let b = invoke(&mut c, "counter", "alice", "incr", json!({"by": 1}))
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let cp = tokio::time::timeout(HANG_GUARD, stream.message())
            .await
            .expect("watch stream hung")
            .expect("stream ok")
            .expect("stream open");
        got.push(cp);
    }
    assert_eq!(got[0].instance, "alice");
    assert_eq!(got[0].version, a.version);
    assert_eq!(got[0].hash, a.hash);
    assert_eq!(state_json(&got[0]), json!({"value": 6}));
    assert_eq!(got[1].version, b.version);
    assert_eq!(got[1].hash, b.hash);
    assert_eq!(got[1].parent_hash, got[0].hash);
    assert_eq!(state_json(&got[1]), json!({"value": 7}));
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_positive_and_rejections() {
    let dir = tempfile::tempdir().unwrap();
    let (n, _) = node_with_alice(dir.path()).await;
    let mut c = n.root_client().await;
    let s = c
        .cluster
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.node_id, 1);
    assert_eq!(s.role, "leader");
    assert_eq!(s.leader_id, 1);
    assert_eq!(s.voters, vec![1]);
    assert!(s.term >= 1);
    assert!(s.applied_index >= 2 && s.applied_index <= s.commit_index);
    assert_eq!(s.instances, 1, "only counter/alice has checkpoints");
    let (applied, hash, count) = n.state_hash();
    assert_eq!(s.applied_index, applied);
    assert_eq!(s.state_hash, hash.to_vec());
    assert_eq!(s.instances, count);

    let status_only = n.mint(&[grant("_system", "cluster", &["status"])], None);
    let mut so = n.client(Some(&status_only)).await;
    assert!(call(&mut so, Rpc::Status).await.is_ok());
    assert_code(
        call(&mut so, Rpc::Now).await,
        Code::PermissionDenied,
        "status-only token on Clock.Now",
    );
    assert_rejections(&n, Rpc::Status, &incr_only(&n)).await;
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_now_positive_and_rejections() {
    let dir = tempfile::tempdir().unwrap();
    let (n, acks) = node_with_alice(dir.path()).await;
    let clock_only = n.mint(&[grant("_system", "clock", &["now"])], None);
    let mut c = n.client(Some(&clock_only)).await;
    let a = c.clock.now(pb::NowRequest {}).await.unwrap().into_inner();
    let b = c.clock.now(pb::NowRequest {}).await.unwrap().into_inner();
    let t = |t: Option<pb::Timestamp>| {
        let t = t.expect("timestamp");
        (t.physical_micros, t.logical, t.node_id)
    };
    assert_eq!(t(a.timestamp).2, 1, "node id in the timestamp");
    assert!(t(b.timestamp) > t(a.timestamp), "HLC strictly increases");
    assert!(
        t(a.timestamp) > t(acks[1].timestamp),
        "now is after every committed write"
    );
    assert_code(
        call(&mut c, Rpc::Status).await,
        Code::PermissionDenied,
        "clock-only token on Cluster.Status",
    );
    assert_rejections(&n, Rpc::Now, &incr_only(&n)).await;
    n.shutdown().await;
}

fn counter_metric(n: &TestNode, name: &str) -> u64 {
    n.metric(&format!("synapse_{name}"))
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

/// Reads alternate with writes; each read must see the write acknowledged
/// just before it, whether served under the leader's lease or after a
/// ReadIndex round. With leases on, the lease serves most reads; off, none.
async fn reads_see_each_acknowledged_write(lease_reads: bool) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let n = start_with(dir.path(), move |c| c.raft_lease_reads = lease_reads, |b| b).await;
    let mut c = n.root_client().await;
    for i in 1..=50i64 {
        invoke(&mut c, "counter", "lease", "incr", json!({"by": 1}))
            .await
            .expect("incr");
        let r = invoke(&mut c, "counter", "lease", "get", json!(null))
            .await
            .expect("get");
        assert_eq!(
            reply_json(&r),
            json!({ "value": i }),
            "read {i} misses an acknowledged write"
        );
    }
    (
        counter_metric(&n, "reads_total"),
        counter_metric(&n, "lease_reads_total"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_under_the_leader_lease_see_every_acknowledged_write() {
    let (reads, leased) = reads_see_each_acknowledged_write(true).await;
    assert_eq!(reads, 50);
    // The first read pays a ReadIndex round, which grants the lease, and
    // the next ones skip it while it lasts (renewed each tick while reads
    // flow). How many do depends on scheduling, so only "some" is asserted.
    assert!(leased >= 1, "none of {reads} reads used the lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lease_reads_off_every_read_pays_the_round() {
    let (reads, leased) = reads_see_each_acknowledged_write(false).await;
    assert_eq!(reads, 50);
    assert_eq!(leased, 0);
}

/// `(le, cumulative count)` of every bucket of histogram `name`, and its
/// `_count`, as `/metrics` renders them.
fn histogram_metric(n: &TestNode, name: &str) -> (Vec<(String, u64)>, u64) {
    labelled_histogram_metric(n, name, "")
}

/// `labels` is empty or `key="value",` (the series' labels before `le`).
fn labelled_histogram_metric(n: &TestNode, name: &str, labels: &str) -> (Vec<(String, u64)>, u64) {
    let text = n.node.core().metrics_text();
    let prefix = format!("synapse_{name}_bucket{{{labels}le=\"");
    let buckets: Vec<(String, u64)> = text
        .lines()
        .filter_map(|l| {
            let (le, count) = l.strip_prefix(&prefix)?.split_once("\"} ")?;
            Some((le.to_string(), count.parse().ok()?))
        })
        .collect();
    let plain = labels.trim_end_matches(',');
    let count_name = if plain.is_empty() {
        format!("{name}_count")
    } else {
        format!("{name}_count{{{plain}}}")
    };
    (buckets, counter_metric(n, &count_name))
}

/// Every acknowledged write on a single node was made durable in some
/// Ready and applied in some Ready, so both histograms count at least one
/// observation per sequential write, and the exposition is well formed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ready_histograms_count_every_durable_write() {
    const WRITES: u64 = 20;
    let dir = tempfile::tempdir().unwrap();
    let n = start(dir.path()).await;
    let (_, persisted_before) = histogram_metric(&n, "raft_persist_seconds");
    let (_, applied_before) = histogram_metric(&n, "raft_apply_seconds");
    let mut c = n.root_client().await;
    for _ in 0..WRITES {
        invoke(&mut c, "counter", "timed", "incr", json!({"by": 1}))
            .await
            .expect("incr");
    }
    for name in [
        "raft_persist_seconds",
        "raft_apply_seconds",
        "raft_ready_seconds",
    ] {
        let (buckets, count) = histogram_metric(&n, name);
        assert_eq!(buckets.len(), 17, "{name}: 16 bounds and +Inf");
        assert_eq!(buckets.last(), Some(&("+Inf".to_string(), count)), "{name}");
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name}: buckets must be cumulative: {buckets:?}"
        );
    }
    let (_, persisted) = histogram_metric(&n, "raft_persist_seconds");
    let (_, applied) = histogram_metric(&n, "raft_apply_seconds");
    let (_, readys) = histogram_metric(&n, "raft_ready_seconds");
    assert!(
        persisted >= persisted_before + WRITES,
        "{WRITES} sequential writes, {} durable writes",
        persisted - persisted_before
    );
    assert!(
        applied >= applied_before + WRITES,
        "{WRITES} sequential writes, {} applies",
        applied - applied_before
    );
    assert!(readys >= persisted, "every durable write is in a Ready");
    n.shutdown().await;
}

/// The sum of one stage's histogram, in seconds.
fn stage_sum(n: &TestNode, stage: &str) -> f64 {
    let name = format!("synapse_invoke_stage_seconds_sum{{stage=\"{stage}\"}} ");
    n.node
        .core()
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(&name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sum for stage {stage}"))
}

/// Every call passes each stage it reaches once, and the stages nest: the
/// whole call served holds the local run, which holds the actor's round
/// trip, which holds the write's commit. A stage timed around the wrong
/// span, or not at all, breaks a count or the order of the sums.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invoke_is_timed_in_each_stage_it_passes() {
    const WRITES: u64 = 12;
    const READS: u64 = 5;
    let dir = tempfile::tempdir().unwrap();
    let n = start(dir.path()).await;
    let stage = |stage: &str| {
        labelled_histogram_metric(&n, "invoke_stage_seconds", &format!("stage=\"{stage}\","))
    };
    let all = [
        "served",
        "forward",
        "local",
        "guard",
        "read_barrier",
        "actor",
        "mailbox",
        "handler",
        "commit",
    ];
    let before: Vec<u64> = all.iter().map(|s| stage(s).1).collect();
    let mut c = n.root_client().await;
    for _ in 0..WRITES {
        invoke(&mut c, "counter", "staged", "incr", json!({"by": 1}))
            .await
            .expect("incr");
    }
    for _ in 0..READS {
        invoke(&mut c, "counter", "staged", "get", json!(null))
            .await
            .expect("get");
    }
    let calls = WRITES + READS;
    let expected = [calls, 0, calls, calls, READS, calls, calls, calls, WRITES];
    for ((name, was), want) in all.iter().zip(&before).zip(expected) {
        let (buckets, count) = stage(name);
        assert_eq!(buckets.len(), 17, "{name}: 16 bounds and +Inf");
        assert_eq!(buckets.last(), Some(&("+Inf".to_string(), count)), "{name}");
        assert_eq!(count - was, want, "calls timed in stage {name}");
    }
    let sums: Vec<f64> = ["served", "local", "actor", "commit"]
        .iter()
        .map(|s| stage_sum(&n, s))
        .collect();
    assert!(
        sums.windows(2).all(|w| w[0] >= w[1]) && sums[3] > 0.0,
        "served ⊇ local ⊇ actor ⊇ commit, so their sums must not grow: {sums:?}"
    );
    n.shutdown().await;
}
