//! Every cache and queue is bounded: the active-instance table passivates
//! least-recently-used actors, idle actors passivate on their own (and their
//! state survives on disk), Watch subscribers are capped, and so are the
//! inbound Peer/Raft streams a node serves.

mod common;

use std::time::{Duration, Instant};

use serde_json::json;
use tonic::Code;

use common::{invoke, reply_json, start_with, HANG_GUARD};

fn gauge(node: &common::TestNode, name: &str) -> u64 {
    node.metric(name)
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < HANG_GUARD, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_instances_are_bounded_and_passivated_state_survives() {
    let dir = tempfile::tempdir().unwrap();
    let n = start_with(dir.path(), |c| c.max_active_instances = 8, |b| b).await;
    let mut c = n.root_client().await;
    for i in 0..40 {
        invoke(
            &mut c,
            "counter",
            &format!("i{i}"),
            "incr",
            json!({"by": i}),
        )
        .await
        .expect("incr");
        // The table never holds more than its capacity (evicted actors stop
        // asynchronously, so the live-actor gauge is checked after settling).
        assert!(n
            .node
            .core()
            .metrics_text()
            .contains("synapse_active_instances"));
    }
    wait_until("evicted actors to stop", || {
        gauge(&n, "synapse_active_instances") <= 8
    })
    .await;
    // A passivated instance reactivates from its checkpoint with its state.
    let r = invoke(&mut c, "counter", "i3", "incr", json!({"by": 100}))
        .await
        .expect("incr");
    assert_eq!(reply_json(&r)["value"], 103);
    assert_eq!(r.version, 2);
    n.shutdown().await;
}

/// The storage cache a node's config names is the one its store is opened
/// with, and a node with the smallest cache (and few active actors, so
/// reads reactivate instances from disk) serves every write back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_storage_cache_reaches_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let tweak = |c: &mut synapse::NodeConfig| {
        c.storage_cache_mib = 1;
        c.max_active_instances = 4;
    };
    let n = start_with(dir.path(), tweak, |b| b).await;
    assert_eq!(n.node.core().store().cache_capacity_bytes(), 1 << 20);
    let mut c = n.root_client().await;
    let value = "x".repeat(8 * 1024);
    for i in 0..200 {
        let put = json!({"key": "a", "value": value});
        invoke(&mut c, "kv", &format!("k{i}"), "put", put)
            .await
            .expect("put");
    }
    for i in [0, 99, 199] {
        let r = invoke(&mut c, "kv", &format!("k{i}"), "get", json!({"key": "a"}))
            .await
            .expect("get");
        assert_eq!(reply_json(&r)["value"], value.as_str(), "k{i}");
    }
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instances_passivate_on_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let n = start_with(dir.path(), |c| c.idle_timeout_ms = 50, |b| b).await;
    let mut c = n.root_client().await;
    for i in 0..5 {
        invoke(
            &mut c,
            "kv",
            &format!("k{i}"),
            "put",
            json!({"key": "a", "value": i}),
        )
        .await
        .expect("put");
    }
    wait_until("idle actors to passivate", || {
        gauge(&n, "synapse_active_instances") == 0
    })
    .await;
    let r = invoke(&mut c, "kv", "k4", "get", json!({"key": "a"}))
        .await
        .expect("get");
    assert_eq!(reply_json(&r)["value"], 4);
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_are_capped_with_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let n = start_with(dir.path(), |c| c.max_watchers = 2, |b| b).await;
    let mut c = n.root_client().await;
    let req = || synapse::client::v1::WatchRequest {
        skill: "counter".into(),
        instance: "w".into(),
    };
    let _w1 = c.skills.watch(req()).await.expect("first watcher");
    let _w2 = c.skills.watch(req()).await.expect("second watcher");
    let third = c.skills.watch(req()).await;
    assert_eq!(third.err().map(|s| s.code()), Some(Code::ResourceExhausted));
    // Dropping a watcher frees its slot.
    drop(_w1);
    let start = Instant::now();
    loop {
        match c.skills.watch(req()).await {
            Ok(_) => break,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted);
                assert!(start.elapsed() < HANG_GUARD, "slot never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    n.shutdown().await;
}

/// A `Peer/Raft` stream over real tonic, fed through `frames`; the task
/// answers when the stream ends (or at once, if it was refused).
struct RaftStream {
    frames: tokio::sync::mpsc::Sender<synapse::client::v1::RaftBatch>,
    call: tokio::task::JoinHandle<Result<(), tonic::Status>>,
}

fn open_raft_stream(channel: &tonic::transport::Channel, credential: Option<&str>) -> RaftStream {
    use synapse::client::v1::peer_client::PeerClient;
    let (frames, rx) = tokio::sync::mpsc::channel(1);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(c) = credential {
        request.metadata_mut().insert(
            synapse_consensus::PEER_CREDENTIAL_HEADER,
            c.parse().expect("credential is header text"),
        );
    }
    let mut client = PeerClient::new(channel.clone());
    let call = tokio::spawn(async move { client.raft(request).await.map(|_| ()) });
    RaftStream { frames, call }
}

impl RaftStream {
    /// Ends the stream and returns the server's answer.
    async fn finish(self) -> Result<(), tonic::Status> {
        drop(self.frames);
        tokio::time::timeout(HANG_GUARD, self.call)
            .await
            .expect("raft stream answered")
            .expect("raft stream task")
    }
}

/// Inbound `Peer/Raft` streams are bounded per node: with
/// `MAX_PEER_RAFT_STREAMS` open, one more gets RESOURCE_EXHAUSTED (a caller
/// without a credential is still refused as UNAUTHENTICATED, taking no
/// slot), and a stream that ends gives its slot back. Without the bound a
/// caller could open streams without limit, each reassembling up to 1 GiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_raft_streams_are_capped_with_resource_exhausted() {
    const MAX: usize = synapse_runtime::grpc::MAX_PEER_RAFT_STREAMS;
    let dir = tempfile::tempdir().unwrap();
    let n = start_with(dir.path(), |_| {}, |b| b).await;
    let credential = n.mint(&[common::grant("_peer", "*", &[])], None);
    let channel = tonic::transport::Endpoint::from_shared(n.endpoint.clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    // A one-node cluster has no peer of its own holding a stream.
    assert_eq!(gauge(&n, "synapse_peer_raft_streams"), 0);

    let mut held: Vec<RaftStream> = (0..MAX)
        .map(|_| open_raft_stream(&channel, Some(&credential)))
        .collect();
    wait_until("every held stream to be admitted", || {
        gauge(&n, "synapse_peer_raft_streams") == MAX as u64
    })
    .await;

    let refused = open_raft_stream(&channel, Some(&credential))
        .finish()
        .await
        .expect_err("one stream over the bound");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains(&format!("{MAX} Peer/Raft streams already open")),
        "{refused:?}"
    );
    assert_eq!(gauge(&n, "synapse_peer_raft_streams_refused_total"), 1);
    let anonymous = open_raft_stream(&channel, None)
        .finish()
        .await
        .expect_err("no credential");
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");
    assert_eq!(gauge(&n, "synapse_peer_raft_streams"), MAX as u64);

    // A held stream that ends is answered after its slot is released, so
    // the next stream is admitted (and answered OK when it ends).
    held.pop()
        .expect("a held stream")
        .finish()
        .await
        .expect("a held stream ends cleanly");
    open_raft_stream(&channel, Some(&credential))
        .finish()
        .await
        .expect("admitted once a slot is free");
    assert_eq!(gauge(&n, "synapse_peer_raft_streams_refused_total"), 1);

    for s in held {
        s.finish().await.expect("held stream ends cleanly");
    }
    assert_eq!(gauge(&n, "synapse_peer_raft_streams"), 0);
    n.shutdown().await;
}
