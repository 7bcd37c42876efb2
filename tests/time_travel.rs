//! Time-travel reads: GetState at an HLC timestamp returns the latest
//! checkpoint at or before it; before the first checkpoint it is NOT_FOUND.

mod common;

use serde_json::json;
use synapse::client::v1 as pb;
use tonic::Code;

use common::{invoke, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_state_at_a_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let n = start(dir.path()).await;
    let mut c = n.root_client().await;
    let mut stamps = Vec::new();
    for i in 1..=5 {
        let r = invoke(&mut c, "counter", "tt", "incr", json!({"by": 1}))
            .await
            .expect("incr");
        assert_eq!(r.version, i);
        stamps.push(r.timestamp.expect("timestamp"));
    }
    let at = |ts: &pb::Timestamp| pb::GetStateRequest {
        skill: "counter".into(),
        instance: "tt".into(),
        version: 0,
        at: Some(*ts),
    };
    for (i, ts) in stamps.iter().enumerate() {
        // Exactly at a checkpoint's timestamp: that checkpoint.
        let cp = c
            .skills
            .get_state(at(ts))
            .await
            .expect("get at")
            .into_inner()
            .checkpoint
            .expect("cp");
        assert_eq!(cp.version, i as u64 + 1);
        // Just before the next one: still this one.
        if let Some(next) = stamps.get(i + 1) {
            let before_next = pb::Timestamp {
                physical_micros: next.physical_micros - 1,
                logical: u32::MAX,
                node_id: u64::MAX,
            };
            let before_next = if before_next.physical_micros >= ts.physical_micros {
                before_next
            } else {
                *ts
            };
            let cp = c
                .skills
                .get_state(at(&before_next))
                .await
                .expect("get before next")
                .into_inner()
                .checkpoint
                .expect("cp");
            assert_eq!(cp.version, i as u64 + 1);
        }
    }
    // Before the first checkpoint there is nothing.
    let first = &stamps[0];
    let early = pb::Timestamp {
        physical_micros: first.physical_micros - 1,
        logical: 0,
        node_id: 0,
    };
    let err = c
        .skills
        .get_state(at(&early))
        .await
        .expect_err("state before the first checkpoint");
    assert_eq!(err.code(), Code::NotFound);
    // Far in the future: the latest.
    let late = pb::Timestamp {
        physical_micros: u64::MAX,
        logical: 0,
        node_id: 0,
    };
    let cp = c
        .skills
        .get_state(at(&late))
        .await
        .expect("late")
        .into_inner()
        .checkpoint
        .expect("cp");
    assert_eq!(cp.version, 5);
    n.shutdown().await;
}
