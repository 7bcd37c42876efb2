//! Revocation, fencing at apply and the audit query.
//!
//! * In-process single node (real sled, real tonic): fencing rejects a write
//!   whose entry is stamped after the token's expiry; Revoke denies a token
//!   and its attenuated child at once, survives restart, shows in Audit, and
//!   refuses bad input with the right status.
//! * Real processes: a 3-node `synapse serve` cluster; a revocation issued on
//!   node 2 is enforced on every node (writes and follower reads) and after a
//!   node restart, and the denial is in `Capabilities.Audit`.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use serde_json::json;
use synapse::client::{v1 as pb, Client};
use synapse::{attenuate, PhysicalClock, Restriction, RootKey, SkewedClock};
use tonic::Code;

async fn revoke(c: &mut Client, target: &str) -> Result<pb::RevokeResponse, tonic::Status> {
    tokio::time::timeout(
        HANG_GUARD,
        c.capabilities.revoke(pb::RevokeRequest {
            token: target.into(),
            reason: "test".into(),
        }),
    )
    .await
    .expect("revoke hung")
    .map(|r| r.into_inner())
}

async fn audit(c: &mut Client, req: pb::AuditRequest) -> Result<pb::AuditResponse, tonic::Status> {
    tokio::time::timeout(HANG_GUARD, c.capabilities.audit(req))
        .await
        .expect("audit hung")
        .map(|r| r.into_inner())
}

fn child_of(token: &str) -> String {
    attenuate(
        token,
        &Restriction {
            skill: Some("counter".into()),
            instance: Some("a*".into()),
            ..Default::default()
        },
    )
    .expect("attenuate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_rejects_a_write_stamped_after_the_token_expired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(SkewedClock::new(0));
    let for_node: Arc<dyn PhysicalClock> = clock.clone();
    let n = start_with(dir.path(), |_| {}, move |b| b.clock(for_node)).await;
    n.settle().await;
    let expires = SystemTime::now() + Duration::from_secs(600);
    let t = n.mint(&[grant("counter", "*", &[])], Some(expires));
    let mut c = n.client(Some(&t)).await;
    invoke(&mut c, "counter", "alpha", "incr", json!({"by": 1}))
        .await
        .expect("write before expiry");
    let before = n.head("counter", "alpha").expect("head");

    // The client "pauses": the guard (wall clock) still accepts the token,
    // but the entry is stamped an hour later, past its expiry.
    clock.set_skew_micros(3_600_000_000);
    let r = invoke(&mut c, "counter", "alpha", "incr", json!({"by": 1})).await;
    let status = r.expect_err("a write stamped after expiry must be fenced");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains("expired before the write was applied"),
        "{}",
        status.message()
    );
    assert_eq!(
        n.head("counter", "alpha").expect("head"),
        before,
        "state untouched"
    );

    // Control: a token without expiry still writes at that time.
    let mut root = n.root_client().await;
    let ok = invoke(&mut root, "counter", "alpha", "incr", json!({"by": 1}))
        .await
        .expect("root write");
    assert_eq!(ok.version, before.0 + 1);
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_denies_token_and_children_at_once_survives_restart_and_is_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = start(dir.path()).await;
    n.settle().await;
    let parent = n.mint(&[grant("counter", "*", &[])], None);
    let child = child_of(&parent);
    let bystander = n.mint(&[grant("counter", "*", &[])], None);
    for t in [&parent, &child, &bystander] {
        let mut c = n.client(Some(t)).await;
        invoke(&mut c, "counter", "a1", "incr", json!({"by": 1}))
            .await
            .expect("works before revocation");
    }
    let mut admin = n.root_client().await;

    // Bad input: nothing is replicated, with the right status.
    assert_code(
        revoke(&mut admin, "garbage").await,
        Code::InvalidArgument,
        "garbage",
    );
    assert_code(revoke(&mut admin, "").await, Code::InvalidArgument, "empty");
    let foreign = RootKey::generate()
        .mint("eve", &[grant("*", "*", &[])], None)
        .expect("mint");
    assert_code(
        revoke(&mut admin, &foreign).await,
        Code::InvalidArgument,
        "foreign",
    );
    let mut not_admin = n.client(Some(&bystander)).await;
    assert_code(
        revoke(&mut not_admin, &parent).await,
        Code::PermissionDenied,
        "no right",
    );
    assert_code(
        n.client(None)
            .await
            .capabilities
            .revoke(pb::RevokeRequest::default())
            .await,
        Code::Unauthenticated,
        "no token",
    );
    assert_eq!(n.node.core().revocation_count(), 0, "nothing revoked yet");

    let r = revoke(&mut admin, &parent).await.expect("revoke");
    assert_eq!(r.revocation_ids.len(), 1);
    assert!(r.index > 0);
    for (what, t) in [("parent", &parent), ("child", &child)] {
        let mut c = n.client(Some(t)).await;
        assert_code(
            invoke(&mut c, "counter", "a1", "incr", json!({"by": 1})).await,
            Code::PermissionDenied,
            what,
        );
        assert_code(
            get_state(&mut c, "counter", "a1").await,
            Code::PermissionDenied,
            what,
        );
    }
    let mut c = n.client(Some(&bystander)).await;
    invoke(&mut c, "counter", "a1", "incr", json!({"by": 1}))
        .await
        .expect("an unrelated token still works");
    // Revoking again is harmless.
    revoke(&mut admin, &child).await.expect("revoke child too");

    let denied = audit(
        &mut admin,
        pb::AuditRequest {
            outcome: "deny".into(),
            limit: 50,
            ..Default::default()
        },
    )
    .await
    .expect("audit");
    assert!(denied.chain_verified);
    assert!(
        denied
            .entries
            .iter()
            .any(|e| !e.allowed && e.reason.contains("revoked") && e.skill == "counter"),
        "{:?}",
        denied.entries
    );
    assert!(denied.entries.iter().all(|e| !e.allowed));
    // A valid-but-revoked token's denial names its principal.
    assert!(
        denied
            .entries
            .iter()
            .any(|e| e.principal == "tester" && e.reason.contains("revoked")),
        "{:?}",
        denied.entries
    );
    assert!(
        denied.entries.windows(2).all(|w| w[0].seq > w[1].seq),
        "newest first"
    );
    let tester = audit(
        &mut admin,
        pb::AuditRequest {
            principal: "root".into(),
            outcome: "allow".into(),
            limit: 5,
            ..Default::default()
        },
    )
    .await
    .expect("audit");
    assert!(!tester.entries.is_empty() && tester.entries.len() <= 5);
    assert!(tester
        .entries
        .iter()
        .all(|e| e.principal == "root" && e.allowed));
    assert_code(
        audit(
            &mut admin,
            pb::AuditRequest {
                limit: 1_000_000,
                ..Default::default()
            },
        )
        .await,
        Code::InvalidArgument,
        "limit over the max",
    );
    assert_code(
        audit(
            &mut admin,
            pb::AuditRequest {
                outcome: "maybe".into(),
                ..Default::default()
            },
        )
        .await,
        Code::InvalidArgument,
        "bad outcome",
    );
    assert_code(
        audit(&mut c, pb::AuditRequest::default()).await,
        Code::PermissionDenied,
        "no right",
    );

    // Restart: the revocation is in the store, loaded before serving.
    let dir_path = n.shutdown().await;
    let n = start(&dir_path).await;
    for (what, t) in [
        ("parent after restart", &parent),
        ("child after restart", &child),
    ] {
        let mut c = n.client(Some(t)).await;
        assert_code(
            invoke(&mut c, "counter", "a1", "incr", json!({"by": 1})).await,
            Code::PermissionDenied,
            what,
        );
    }
    n.shutdown().await;
    drop(dir);
}

// ------------------------------------------------------------ real processes

const BIN: &str = env!("CARGO_BIN_EXE_synapse");
const POLL: Duration = Duration::from_millis(100);

struct Proc {
    id: u64,
    dir: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").args(&self.args);
        for (k, _) in std::env::vars() {
            if k.starts_with("SYNAPSE_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("SYNAPSE_LOG", "info,raft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn synapse serve"));
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Procs(Vec<Proc>);

impl Drop for Procs {
    fn drop(&mut self) {
        for p in &mut self.0 {
            p.kill();
        }
        if std::thread::panicking() {
            for p in &self.0 {
                let text = std::fs::read_to_string(&p.log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "==== node {} log tail ====\n{}",
                    p.id,
                    lines[lines.len().saturating_sub(40)..].join("\n")
                );
            }
        }
    }
}

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if start.elapsed() > Duration::from_secs(30) => {
                panic!("gave up waiting for {what}: {e}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

async fn connect(addr: &str, token: &str) -> Result<Client, String> {
    Client::connect(&format!("http://{addr}"), Some(token))
        .await
        .map_err(|e| e.to_string())
}

async fn read_token(dir: &Path) -> String {
    let path = dir.join("root.token");
    let path = &path;
    eventually("root.token", || async move {
        match std::fs::read_to_string(path) {
            Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
            _ => Err("not yet".into()),
        }
    })
    .await
}

/// Writes with `token` through `addr` until one succeeds (the cluster may
/// still be electing), returning the status of a definite answer.
async fn write_via(addr: &str, token: &str, instance: &str) -> Result<(), tonic::Status> {
    let mut c = match connect(addr, token).await {
        Ok(c) => c,
        Err(e) => return Err(tonic::Status::unavailable(e)),
    };
    invoke(&mut c, "counter", instance, "incr", json!({"by": 1}))
        .await
        .map(drop)
}

async fn read_via(addr: &str, token: &str, instance: &str) -> Result<(), tonic::Status> {
    let mut c = match connect(addr, token).await {
        Ok(c) => c,
        Err(e) => return Err(tonic::Status::unavailable(e)),
    };
    get_state(&mut c, "counter", instance).await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_on_node_2_is_enforced_on_all_three_processes_and_after_restart() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let listeners: Vec<TcpListener> = (0..6)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect();
    drop(listeners);
    let addrs: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", ports[i])).collect();
    let peers = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Procs(
        (0..3)
            .map(|i| {
                let id = i as u64 + 1;
                let dir = tmp.path().join(format!("node{id}"));
                Proc {
                    id,
                    args: vec![
                        "--node-id".into(),
                        id.to_string(),
                        "--data-dir".into(),
                        dir.display().to_string(),
                        "--listen".into(),
                        addrs[i].clone(),
                        "--http-listen".into(),
                        format!("127.0.0.1:{}", ports[3 + i]),
                        "--peers".into(),
                        peers.clone(),
                    ],
                    dir,
                    log: tmp.path().join(format!("node{id}.log")),
                    child: None,
                }
            })
            .collect(),
    );
    for p in &mut procs.0 {
        p.start();
    }
    let root = read_token(&procs.0[0].dir).await;
    let key = RootKey::load_or_create(&procs.0[0].dir.join("root.key")).expect("root key");
    let parent = key
        .mint("alice", &[grant("counter", "*", &[])], None)
        .expect("mint");
    let child = child_of(&parent);

    // Both work on every node, writes (forwarded to the leader) and reads.
    for addr in &addrs {
        for (i, t) in [&parent, &child].into_iter().enumerate() {
            let inst = format!("a{i}");
            eventually(&format!("write via {addr}"), || {
                let (addr, t, inst) = (addr.clone(), t.clone(), inst.clone());
                async move {
                    write_via(&addr, &t, &inst)
                        .await
                        .map_err(|s| format!("{s:?}"))
                }
            })
            .await;
            eventually(&format!("read via {addr}"), || {
                let (addr, t, inst) = (addr.clone(), t.clone(), inst.clone());
                async move {
                    read_via(&addr, &t, &inst)
                        .await
                        .map_err(|s| format!("{s:?}"))
                }
            })
            .await;
        }
    }
    println!(
        "[revocation] cluster up, tokens work everywhere after {:?}",
        t0.elapsed()
    );

    // Revoke the parent through node 2 (leader or follower).
    let revoked_at = Instant::now();
    let r = eventually("revoke via node 2", || {
        let (addr, root, parent) = (addrs[1].clone(), root.clone(), parent.clone());
        async move {
            let mut c = connect(&addr, &root).await?;
            revoke(&mut c, &parent).await.map_err(|s| format!("{s:?}"))
        }
    })
    .await;
    println!(
        "[revocation] committed at index {} ({:?} after the call)",
        r.index,
        revoked_at.elapsed()
    );
    // Node 2 answered only once applied locally: denied there at once.
    for t in [&parent, &child] {
        let s = read_via(&addrs[1], t, "a0")
            .await
            .expect_err("denied on node 2");
        assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    }
    // Every node, once it has applied the entry: writes and reads denied.
    for addr in &addrs {
        for t in [&parent, &child] {
            eventually(&format!("denial on {addr}"), || {
                let (addr, t) = (addr.clone(), t.clone());
                async move {
                    let w = write_via(&addr, &t, "a0").await;
                    let r = read_via(&addr, &t, "a0").await;
                    match (w, r) {
                        (Err(w), Err(r))
                            if w.code() == Code::PermissionDenied
                                && r.code() == Code::PermissionDenied =>
                        {
                            Ok(())
                        }
                        other => Err(format!("{other:?}")),
                    }
                }
            })
            .await;
        }
    }
    println!(
        "[revocation] denied on all 3 nodes {:?} after revoke",
        revoked_at.elapsed()
    );

    // Restart node 3: the revocation still holds there.
    procs.0[2].kill();
    procs.0[2].start();
    for t in [&parent, &child] {
        eventually("node 3 back and denying", || {
            let (addr, t, root) = (addrs[2].clone(), t.clone(), root.clone());
            async move {
                // Served again (root reads work) ...
                read_via(&addr, &root, "a0")
                    .await
                    .map_err(|s| format!("{s:?}"))?;
                // ... and the revoked token is denied.
                match read_via(&addr, &t, "a0").await {
                    Err(s) if s.code() == Code::PermissionDenied => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
    }

    // The denial is in node 2's audit log.
    let mut c = connect(&addrs[1], &root).await.expect("connect");
    let a = audit(
        &mut c,
        pb::AuditRequest {
            principal: String::new(),
            outcome: "deny".into(),
            limit: 100,
            ..Default::default()
        },
    )
    .await
    .expect("audit");
    assert!(a.chain_verified);
    assert!(
        a.entries.iter().any(|e| e.reason.contains("revoked")),
        "{:?}",
        a.entries
    );
    println!("[revocation] done after {:?}", t0.elapsed());
}
