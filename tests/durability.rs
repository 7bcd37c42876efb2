//! Restart durability and idempotency on one node: every acknowledged write
//! survives a shutdown and reopen of the same data dir, chains verify,
//! timestamps keep increasing, and request ids dedupe across restarts.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::{json, Value};
use synapse::client::{v1 as pb, Client};

type Ts = (u64, u32, u64);

fn ts(t: Option<pb::Timestamp>) -> Ts {
    let t = t.expect("timestamp present");
    (t.physical_micros, t.logical, t.node_id)
}

#[derive(Debug, Clone)]
struct Ack {
    skill: &'static str,
    instance: String,
    payload: Value,
    reply: Value,
    version: u64,
    hash: Vec<u8>,
    ts: Ts,
}

async fn version_of(c: &mut Client, skill: &str, instance: &str, v: u64) -> pb::Checkpoint {
    c.skills
        .get_state(pb::GetStateRequest {
            skill: skill.into(),
            instance: instance.into(),
            version: v,
            at: None,
        })
        .await
        .unwrap_or_else(|s| panic!("{skill}/{instance} v{v} after restart: {s}"))
        .into_inner()
        .checkpoint
        .expect("checkpoint")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_restart() {
    const PER_INSTANCE: u64 = 60;
    let dir = tempfile::tempdir().unwrap();
    let n = start_with(dir.path(), |c| c.retention_versions = 1000, |b| b).await;
    let c = n.root_client().await;

    // 5 instances x 60 writes = 300 acknowledged invocations, concurrently
    // across instances, sequentially within each.
    let targets: Vec<(&'static str, String)> = vec![
        ("counter", "c0".into()),
        ("counter", "c1".into()),
        ("counter", "c2".into()),
        ("kv", "k0".into()),
        ("kv", "k1".into()),
    ];
    let mut tasks = Vec::new();
    for (skill, instance) in targets.clone() {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0..PER_INSTANCE {
                let (method, payload) = if skill == "counter" {
                    ("incr", json!({"by": i as i64 + 1}))
                } else {
                    (
                        "put",
                        json!({"key": format!("key{}", i % 7), "value": {"i": i, "pad": "v".repeat(i as usize)}}),
                    )
                };
                let r = invoke(&mut c, skill, &instance, method, payload.clone())
                    .await
                    .unwrap_or_else(|s| panic!("{skill}/{instance} write {i}: {s}"));
                acks.push(Ack {
                    skill,
                    instance: instance.clone(),
                    payload,
                    reply: reply_json(&r),
                    version: r.version,
                    hash: r.hash.clone(),
                    ts: ts(r.timestamp),
                });
            }
            acks
        }));
    }
    let mut acks: Vec<Ack> = Vec::new();
    for t in tasks {
        acks.extend(t.await.unwrap());
    }
    assert_eq!(acks.len(), 300);
    let max_ts = acks.iter().map(|a| a.ts).max().unwrap();
    let (_, _, instances_before) = n.state_hash();
    drop(c);

    let dir_path = n.shutdown().await;
    let n = start_with(&dir_path, |c| c.retention_versions = 1000, |b| b).await;
    let mut c = n.root_client().await;
    assert_eq!(n.state_hash().2, instances_before, "instance count changed");

    // Every acknowledged version is there with the acknowledged hash and
    // timestamp, and its state matches the reply.
    let mut last: BTreeMap<(String, String), Ack> = BTreeMap::new();
    let mut kv_expect: BTreeMap<(String, String), (Value, u64)> = BTreeMap::new();
    for a in &acks {
        let cp = version_of(&mut c, a.skill, &a.instance, a.version).await;
        assert_eq!(
            cp.hash, a.hash,
            "{}/{} v{} hash",
            a.skill, a.instance, a.version
        );
        assert_eq!(
            ts(cp.timestamp),
            a.ts,
            "{}/{} v{} timestamp",
            a.skill,
            a.instance,
            a.version
        );
        let state = state_json(&cp);
        if a.skill == "counter" {
            assert_eq!(state["value"], a.reply["value"], "counter state = reply");
        } else {
            let key = a.payload["key"].as_str().unwrap();
            assert_eq!(state["entries"][key]["value"], a.payload["value"]);
            assert_eq!(state["entries"][key]["version"], a.reply["version"]);
            kv_expect.insert(
                (a.instance.clone(), key.to_string()),
                (
                    a.payload["value"].clone(),
                    a.reply["version"].as_u64().unwrap(),
                ),
            );
        }
        let e = last
            .entry((a.skill.to_string(), a.instance.clone()))
            .or_insert_with(|| a.clone());
        if a.version > e.version {
            *e = a.clone();
        }
    }
    for ((skill, instance), a) in &last {
        assert_eq!(
            a.version, PER_INSTANCE,
            "{skill}/{instance}: versions are 1..=60"
        );
        let head = get_state(&mut c, skill, instance).await.unwrap();
        assert_eq!(head.version, a.version, "{skill}/{instance} head version");
        assert_eq!(head.hash, a.hash, "{skill}/{instance} head hash");
        let v = c
            .skills
            .verify(pb::VerifyRequest {
                skill: skill.clone(),
                instance: instance.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            v.ok,
            "{skill}/{instance} verify after restart: {}",
            v.problem
        );
        assert_eq!(v.versions_checked, PER_INSTANCE);
        assert_eq!(v.head_hash, a.hash);
    }
    // kv reads through the skill see the last acknowledged value per key.
    for ((instance, key), (value, version)) in &kv_expect {
        let r = invoke(&mut c, "kv", instance, "get", json!({"key": key}))
            .await
            .unwrap();
        let got = reply_json(&r);
        assert_eq!(&got["value"], value, "kv/{instance} {key}");
        assert_eq!(
            got["version"].as_u64(),
            Some(*version),
            "kv/{instance} {key} version"
        );
    }
    // Counters: the final value is the sum of all increments.
    for i in 0..3 {
        let r = invoke(&mut c, "counter", &format!("c{i}"), "get", json!(null))
            .await
            .unwrap();
        assert_eq!(
            reply_json(&r)["value"],
            json!(PER_INSTANCE * (PER_INSTANCE + 1) / 2)
        );
    }

    // New writes: timestamps strictly after everything before the restart,
    // and they extend the old chains.
    for (skill, instance) in &targets {
        let (method, payload) = if *skill == "counter" {
            ("incr", json!({"by": 1}))
        } else {
            ("put", json!({"key": "after", "value": true}))
        };
        let r = invoke(&mut c, skill, instance, method, payload)
            .await
            .unwrap();
        assert!(
            ts(r.timestamp) > max_ts,
            "{skill}/{instance}: new timestamp {:?} not after {:?}",
            ts(r.timestamp),
            max_ts
        );
        assert_eq!(r.version, PER_INSTANCE + 1);
        let cp = get_state(&mut c, skill, instance).await.unwrap();
        let prev = &last[&(skill.to_string(), instance.clone())];
        assert_eq!(
            cp.parent_hash, prev.hash,
            "new write chains onto the old head"
        );
    }
    let now = c.clock.now(pb::NowRequest {}).await.unwrap().into_inner();
    assert!(
        ts(now.timestamp) > max_ts,
        "clock went backwards over restart"
    );
    n.shutdown().await;
}

fn with_id(
    skill: &str,
    instance: &str,
    method: &str,
    payload: Value,
    id: &str,
) -> pb::InvokeRequest {
    pb::InvokeRequest {
        skill: skill.into(),
        instance: instance.into(),
        method: method.into(),
        payload: serde_json::to_vec(&payload).unwrap(),
        request_id: id.into(),
        expected_version: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_dedupe_including_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let n = start(dir.path()).await;
    let mut c = n.root_client().await;

    let first = invoke_req(
        &mut c,
        with_id("counter", "d", "incr", json!({"by": 5}), "req-1"),
    )
    .await
    .unwrap();
    assert!(!first.deduplicated);
    assert_eq!(first.request_id, "req-1");
    assert_eq!(reply_json(&first), json!({"value": 5}));
    n.settle().await;
    let hash_after_first = n.state_hash();

    let again = invoke_req(
        &mut c,
        with_id("counter", "d", "incr", json!({"by": 5}), "req-1"),
    )
    .await
    .unwrap();
    assert!(again.deduplicated, "retry not flagged as deduplicated");
    assert_eq!(again.version, first.version);
    assert_eq!(again.hash, first.hash);
    assert_eq!(again.reply, first.reply);
    assert_eq!(again.timestamp, first.timestamp);
    // A retry with a different payload still returns the original reply.
    let odd = invoke_req(
        &mut c,
        with_id("counter", "d", "incr", json!({"by": 100}), "req-1"),
    )
    .await
    .unwrap();
    assert!(odd.deduplicated);
    assert_eq!(odd.reply, first.reply);
    assert_eq!(n.state_hash(), hash_after_first, "a retry changed state");
    let cp = get_state(&mut c, "counter", "d").await.unwrap();
    assert_eq!((cp.version, state_json(&cp)), (1, json!({"value": 5})));

    // The same id on another instance is a different request.
    let other = invoke_req(
        &mut c,
        with_id("counter", "e", "incr", json!({"by": 1}), "req-1"),
    )
    .await
    .unwrap();
    assert!(!other.deduplicated);

    // A caller's id that looks like a server-generated one is still the
    // caller's: recorded and deduplicated.
    for expect_dedup in [false, true] {
        let r = invoke_req(
            &mut c,
            with_id("counter", "f", "incr", json!({"by": 1}), "auto-mine"),
        )
        .await
        .unwrap();
        assert_eq!(r.deduplicated, expect_dedup);
        assert_eq!(r.version, 1);
    }
    // Without an id the leader names the write and keeps no record of
    // that name: nobody could have retried with it.
    let named = invoke_req(
        &mut c,
        with_id("counter", "g", "incr", json!({"by": 1}), ""),
    )
    .await
    .unwrap();
    assert!(
        named.request_id.starts_with("auto-"),
        "{}",
        named.request_id
    );
    assert_eq!(
        n.node
            .core()
            .store()
            .request("counter", "g", &named.request_id)
            .unwrap(),
        None
    );
    assert!(n
        .node
        .core()
        .store()
        .request("counter", "f", "auto-mine")
        .unwrap()
        .is_some());

    // Concurrent retries of one new id: applied exactly once.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            invoke_req(
                &mut c,
                with_id("counter", "d", "incr", json!({"by": 10}), "req-c"),
            )
            .await
        }));
    }
    let mut replies = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => replies.push(r),
            // A concurrent duplicate may be told to retry; it must not apply.
            Err(s) => assert!(
                matches!(s.code(), tonic::Code::Aborted | tonic::Code::Unavailable),
                "concurrent retry failed with {:?}: {}",
                s.code(),
                s.message()
            ),
        }
    }
    assert!(!replies.is_empty());
    for r in &replies {
        assert_eq!(r.version, 2, "every retry reports the one applied version");
        assert_eq!(reply_json(r), json!({"value": 15}));
    }
    assert_eq!(
        replies.iter().filter(|r| !r.deduplicated).count(),
        1,
        "exactly one reply is the original"
    );
    let cp = get_state(&mut c, "counter", "d").await.unwrap();
    assert_eq!((cp.version, state_json(&cp)), (2, json!({"value": 15})));

    // Rollback request ids dedupe too.
    let rb = |id: &str| pb::RollbackRequest {
        skill: "counter".into(),
        instance: "d".into(),
        to_version: 1,
        request_id: id.into(),
    };
    let r1 = c.skills.rollback(rb("rb-1")).await.unwrap().into_inner();
    let r2 = c.skills.rollback(rb("rb-1")).await.unwrap().into_inner();
    assert!(!r1.deduplicated && r2.deduplicated);
    assert_eq!((r1.version, &r1.hash), (r2.version, &r2.hash));
    assert_eq!(get_state(&mut c, "counter", "d").await.unwrap().version, 3);

    drop(c);
    let dir_path = n.shutdown().await;
    let n = start(&dir_path).await;
    let mut c = n.root_client().await;
    let after = invoke_req(
        &mut c,
        with_id("counter", "d", "incr", json!({"by": 5}), "req-1"),
    )
    .await
    .unwrap();
    assert!(after.deduplicated, "dedup forgotten over a restart");
    assert_eq!(after.version, first.version);
    assert_eq!(after.hash, first.hash);
    assert_eq!(after.reply, first.reply);
    let again_c = invoke_req(
        &mut c,
        with_id("counter", "d", "incr", json!({"by": 10}), "req-c"),
    )
    .await
    .unwrap();
    assert!(again_c.deduplicated);
    assert_eq!(again_c.version, 2);
    let cp = get_state(&mut c, "counter", "d").await.unwrap();
    assert_eq!(cp.version, 3, "a retry after restart was applied again");
    assert_eq!(state_json(&cp), json!({"value": 5}));
    n.shutdown().await;
}
