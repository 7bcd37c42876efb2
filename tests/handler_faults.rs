//! Handler faults: a panicking or failing handler returns an error, the node
//! keeps serving, and the instance stays at its last committed state; a
//! handler over `handler_deadline_ms` gets DEADLINE_EXCEEDED, state unchanged.

mod common;

use common::*;
use serde_json::json;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_handler_leaves_last_committed_state() {
    let dir = tempfile::tempdir().unwrap();
    let n = start_with(dir.path(), |_| {}, |b| b.skill(Crashy)).await;
    let mut c = n.root_client().await;
    let set = invoke(&mut c, "crashy", "x", "set", json!({"v": 5}))
        .await
        .unwrap();
    assert_eq!(set.version, 1);
    n.settle().await;
    let head = n.head("crashy", "x").expect("v1");
    let before = n.state_hash();

    for (method, code) in [
        ("boom", Code::Internal),
        ("boom_read", Code::Internal),
        ("fail", Code::Internal),
        ("boom", Code::Internal),
    ] {
        assert_code(
            invoke(&mut c, "crashy", "x", method, json!({})).await,
            code,
            &format!("crashy/x {method}"),
        );
        // The node keeps serving other instances and skills in between.
        let r = invoke(&mut c, "counter", "bystander", "get", json!(null))
            .await
            .expect("node still serves after a handler fault");
        assert_eq!(reply_json(&r), json!({"value": 0}));
    }
    assert_eq!(
        n.state_hash(),
        before,
        "a failed handler changed the state hash"
    );
    assert_eq!(
        n.head("crashy", "x"),
        Some(head.clone()),
        "checkpoint changed"
    );
    // The actor's in-memory state was not touched by the panicking handler.
    let g = invoke(&mut c, "crashy", "x", "get", json!(null))
        .await
        .unwrap();
    assert_eq!(reply_json(&g), json!({"v": 5, "touched": 1}));
    assert_eq!(g.version, 1);
    assert_eq!(g.hash, set.hash);
    let cp = get_state(&mut c, "crashy", "x").await.unwrap();
    assert_eq!(cp.version, 1);
    assert_eq!(cp.state, head.2, "state bytes changed");

    // The next write continues the chain from v1.
    let next = invoke(&mut c, "crashy", "x", "set", json!({"v": 7}))
        .await
        .unwrap();
    assert_eq!(next.version, 2);
    assert_eq!(reply_json(&next), json!({"v": 7}));
    let cp = get_state(&mut c, "crashy", "x").await.unwrap();
    assert_eq!(cp.parent_hash, set.hash);
    assert_eq!(state_json(&cp), json!({"v": 7, "touched": 2}));
    let v = c
        .skills
        .verify(synapse::client::v1::VerifyRequest {
            skill: "crashy".into(),
            instance: "x".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok && v.versions_checked == 2, "{v:?}");
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_on_a_fresh_instance_and_under_load_do_not_take_the_node_down() {
    let dir = tempfile::tempdir().unwrap();
    let n = start_with(dir.path(), |_| {}, |b| b.skill(Crashy)).await;
    let mut c = n.root_client().await;
    invoke(&mut c, "counter", "warm", "incr", json!(null))
        .await
        .unwrap();
    n.settle().await;
    let before = n.state_hash();
    // A panic on an instance with no checkpoint leaves it without one.
    assert_code(
        invoke(&mut c, "crashy", "fresh", "boom", json!({})).await,
        Code::Internal,
        "boom on a fresh instance",
    );
    assert_code(
        get_state(&mut c, "crashy", "fresh").await,
        Code::NotFound,
        "a panicked first write left a checkpoint",
    );
    assert_eq!(n.state_hash(), before);

    // Panics interleaved with good writes, concurrently.
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                let r = invoke(&mut c, "crashy", "hot", "boom", json!({})).await;
                assert_code(r, Code::Internal, "concurrent boom");
                None
            } else {
                Some(
                    invoke(&mut c, "counter", "steady", "incr", json!({"by": 1}))
                        .await
                        .expect("good writes keep working"),
                )
            }
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap().is_some() {
            ok += 1;
        }
    }
    assert_eq!(ok, 10);
    let cp = get_state(&mut c, "counter", "steady").await.unwrap();
    assert_eq!((cp.version, state_json(&cp)), (10, json!({"value": 10})));
    assert_code(
        get_state(&mut c, "crashy", "hot").await,
        Code::NotFound,
        "panicking handlers left a checkpoint",
    );
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_over_deadline_is_deadline_exceeded_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let n = start_with(
        dir.path(),
        |c| c.handler_deadline_ms = 100,
        |b| b.skill(Slow),
    )
    .await;
    let mut c = n.root_client().await;
    let first = invoke(&mut c, "slow", "s", "work", json!({"ms": 0}))
        .await
        .unwrap();
    assert_eq!(first.version, 1);
    n.settle().await;
    let head = n.head("slow", "s");
    let before = n.state_hash();
    assert_code(
        invoke(&mut c, "slow", "s", "work", json!({"ms": 300})).await,
        Code::DeadlineExceeded,
        "handler running 3x its deadline",
    );
    assert_eq!(n.state_hash(), before, "an overrun changed the state hash");
    assert_eq!(n.head("slow", "s"), head);
    let g = invoke(&mut c, "slow", "s", "get", json!(null))
        .await
        .unwrap();
    assert_eq!(reply_json(&g), json!({"done": 1}));
    // A fast call afterwards continues from the committed state.
    let next = invoke(&mut c, "slow", "s", "work", json!({"ms": 0}))
        .await
        .unwrap();
    assert_eq!(next.version, 2);
    assert_eq!(reply_json(&next), json!({"done": 2}));
    let cp = get_state(&mut c, "slow", "s").await.unwrap();
    assert_eq!(cp.parent_hash, first.hash);
    n.shutdown().await;
}
