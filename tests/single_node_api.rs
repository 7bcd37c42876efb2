mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let dir = tempfile::tempdir().unwrap();
    let n = start(dir.path()).await;
    let mut c = n.root_client().await;
    let r = invoke(&mut c, "counter", "a", "incr", serde_json::json!({"by": 2})).await.unwrap();
    assert_eq!(reply_json(&r)["value"], 2);
    n.shutdown().await;
}
