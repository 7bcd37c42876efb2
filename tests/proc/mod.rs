//! Real `synapse serve` processes for the corruption and overload tests:
//! loopback ports, one data dir each, SIGKILL on drop, log tails printed
//! when a test fails. Every wait is bounded (a hang guard, never a timing
//! assertion).
#![allow(dead_code)]

#[path = "../ports/mod.rs"]
mod ports;
#[path = "../scrape/mod.rs"]
mod scrape;
use ports::free_ports;
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use synapse::client::{v1 as pb, Client};

pub const BIN: &str = env!("CARGO_BIN_EXE_synapse");
/// Bound for any single wait (hang guard).
pub const HANG_GUARD: Duration = Duration::from_secs(60);
pub const POLL: Duration = Duration::from_millis(100);
/// Per-RPC bound, so a call to a dead or stuck node cannot hang a test.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// Process tests of one binary run one at a time (3 Raft nodes each on a
/// 2-core machine).
static SERIAL: Mutex<()> = Mutex::new(());

pub struct NodeProc {
    pub id: u64,
    pub dir: PathBuf,
    pub addr: String,
    pub http: String,
    pub extra: Vec<String>,
    /// Extra environment for the process (SYNAPSE_* of the test's own
    /// environment are removed).
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    pub child: Option<Child>,
}

impl NodeProc {
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node {} already running", self.id);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open node log");
        let err = log.try_clone().expect("clone log handle");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .args(["--node-id", &self.id.to_string()])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--listen", &self.addr, "--http-listen", &self.http])
            .args(&self.extra);
        for (k, _) in std::env::vars() {
            if k.starts_with("SYNAPSE_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.env("SYNAPSE_LOG", "info,raft=warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        self.child = Some(cmd.spawn().expect("spawn synapse serve"));
    }

    /// Waits (bounded by `HANG_GUARD`) for the running process to exit on
    /// its own; returns its status and forgets the child, so `start` works
    /// again.
    pub async fn wait_exit(&mut self, what: &str) -> std::process::ExitStatus {
        let status = wait_for(what, || {
            let exited = self.child.as_mut().map(|c| c.try_wait());
            async move {
                match exited {
                    Some(Ok(Some(status))) => Ok(status),
                    Some(Err(e)) => Err(e.to_string()),
                    _ => Err("still running".to_string()),
                }
            }
        })
        .await;
        self.child = None;
        status
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGTERM, then waits (bounded) for the shutdown path to finish: the
    /// node's final sync leaves everything it applied in its data dir. For
    /// tests that work on the stored state offline; a crash is `kill`.
    pub async fn stop(&mut self) -> std::process::ExitStatus {
        let pid = self.pid().expect("node running").to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}: {sent}");
        self.wait_exit("the node to stop on SIGTERM").await
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// One counter from `/metrics` (0 if absent).
    pub fn metric(&self, name: &str) -> Result<u64, String> {
        scrape::metric(&self.http, name, RPC_TIMEOUT)
    }
}

/// Owns the processes and their data dirs; dropping it SIGKILLs them.
pub struct Cluster {
    pub nodes: BTreeMap<u64, NodeProc>,
    pub root: PathBuf,
    _tmp: tempfile::TempDir,
    _serial: MutexGuard<'static, ()>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in self.nodes.values_mut() {
            n.kill();
        }
        if std::thread::panicking() {
            for n in self.nodes.values() {
                eprintln!(
                    "======== node {} ({}) log tail ========\n{}",
                    n.id,
                    n.addr,
                    n.tail(60)
                );
            }
        }
    }
}

impl Cluster {
    /// `ids.len()` nodes; with more than one, a static `--peers` cluster.
    pub fn start_static(ids: &[u64], extra: &[&str]) -> Cluster {
        let mut cluster = Cluster::reserve(ids);
        let peers = cluster
            .nodes
            .values()
            .map(|n| format!("{}={}", n.id, n.addr))
            .collect::<Vec<_>>()
            .join(",");
        for n in cluster.nodes.values_mut() {
            if ids.len() > 1 {
                n.extra = vec!["--peers".into(), peers.clone()];
            }
            n.extra.extend(extra.iter().map(|s| s.to_string()));
            n.start();
        }
        cluster
    }

    /// Seed mode, as the StatefulSet and compose files run it: every node
    /// has `--seed <node 1>` and the root key file; node 1 bootstraps and
    /// also gets `--probe` with the others' addresses (it knows no other
    /// member from its configuration), the others join through it.
    pub fn start_seed(ids: &[u64], extra: &[&str]) -> Cluster {
        let mut cluster = Cluster::reserve(ids);
        let key = cli(&["keygen".to_string()]);
        assert!(key.status.success(), "keygen failed");
        let key_file = cluster.root.join("root.key.hex");
        std::fs::write(&key_file, &key.stdout).expect("write the key file");
        let seed = cluster.node(1).addr.clone();
        let others = cluster
            .nodes
            .values()
            .filter(|n| n.id != 1)
            .map(|n| n.addr.clone())
            .collect::<Vec<_>>()
            .join(",");
        for n in cluster.nodes.values_mut() {
            n.extra = vec![
                "--seed".into(),
                seed.clone(),
                "--root-key-file".into(),
                key_file.display().to_string(),
            ];
            if n.id == 1 && !others.is_empty() {
                n.extra.extend(["--probe".into(), others.clone()]);
            }
            n.extra.extend(extra.iter().map(|s| s.to_string()));
            n.start();
        }
        cluster
    }

    /// Ports, data dirs and logs for `ids`, nothing started.
    fn reserve(ids: &[u64]) -> Cluster {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_path_buf();
        let ports = free_ports(ids.len() * 2);
        let mut nodes = BTreeMap::new();
        for (i, id) in ids.iter().enumerate() {
            nodes.insert(
                *id,
                NodeProc {
                    id: *id,
                    log: root.join(format!("node{id}.log")),
                    dir: root.join(format!("node{id}")),
                    addr: format!("127.0.0.1:{}", ports[2 * i]),
                    http: format!("127.0.0.1:{}", ports[2 * i + 1]),
                    extra: Vec::new(),
                    env: Vec::new(),
                    child: None,
                },
            );
        }
        Cluster {
            nodes,
            root,
            _tmp: tmp,
            _serial: serial,
        }
    }

    pub fn node(&self, id: u64) -> &NodeProc {
        self.nodes.get(&id).expect("known node")
    }

    pub fn node_mut(&mut self, id: u64) -> &mut NodeProc {
        self.nodes.get_mut(&id).expect("known node")
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.addr.clone()).collect()
    }

    /// `<data-dir>/root.token` of `id`, once the root key has replicated.
    pub async fn token(&self, id: u64) -> String {
        let path = self.node(id).dir.join("root.token");
        let path = &path;
        wait_for("root.token", || async move {
            match std::fs::read_to_string(path) {
                Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
                Ok(_) => Err("empty".into()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
    }
}

/// The CLI binary with a bounded run time.
pub fn cli(args: &[String]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn synapse cli");
    let start = Instant::now();
    while start.elapsed() < HANG_GUARD {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("cli output");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("cli {args:?} did not finish within {HANG_GUARD:?}");
}

pub async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let last = match f().await {
            Ok(v) => return v,
            Err(e) => e,
        };
        if start.elapsed() > HANG_GUARD {
            panic!("gave up waiting for {what} after {HANG_GUARD:?}; last: {last}");
        }
        tokio::time::sleep(POLL).await;
    }
}

pub async fn connect(addr: &str, token: &str) -> Result<Client, String> {
    Client::connect(&format!("http://{addr}"), Some(token))
        .await
        .map_err(|e| e.to_string())
}

pub fn show(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// `Peer.Probe` of `addr` about `id`, with no credential (as a node with
/// a blank data dir asks it).
pub async fn probe(addr: &str, id: u64) -> Result<pb::ProbeResponse, String> {
    let mut c = pb::peer_client::PeerClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(RPC_TIMEOUT, c.probe(pb::ProbeRequest { id })).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(format!("{addr}: {}", show(&s))),
        Err(_) => Err(format!("{addr}: probe timed out")),
    }
}

pub async fn status(addr: &str, token: &str) -> Result<pb::StatusResponse, String> {
    let mut c = connect(addr, token).await?;
    match tokio::time::timeout(RPC_TIMEOUT, c.cluster.status(pb::StatusRequest {})).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(format!("{addr}: {}", show(&s))),
        Err(_) => Err(format!("{addr}: status timed out")),
    }
}

/// Waits until every node names the same leader and it leads; its id.
pub async fn wait_leader(addrs: &[String], token: &str) -> u64 {
    wait_for("one agreed leader", || async move {
        let mut all = Vec::new();
        for a in addrs {
            all.push(status(a, token).await?);
        }
        let leader = all[0].leader_id;
        if leader == 0 || all.iter().any(|s| s.leader_id != leader) {
            return Err("no agreed leader".into());
        }
        match all.iter().find(|s| s.node_id == leader) {
            Some(s) if s.role == "leader" => Ok(leader),
            _ => Err(format!("node {leader} is named leader but does not lead")),
        }
    })
    .await
}

/// Waits until every node reports the same applied index and state hash.
pub async fn wait_converged(addrs: &[String], token: &str) -> (u64, String) {
    wait_for("equal applied index and state hash", || async move {
        let mut seen = Vec::new();
        for a in addrs {
            let s = status(a, token).await?;
            seen.push((s.node_id, s.applied_index, hex(&s.state_hash)));
        }
        let (_, idx, hash) = &seen[0];
        if seen.iter().all(|(_, i, h)| i == idx && h == hash) && *idx > 0 {
            Ok((*idx, hash.clone()))
        } else {
            Err(format!("(node, applied, hash) seen: {seen:?}"))
        }
    })
    .await
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn incr_request(counter: &str, request_id: &str) -> pb::InvokeRequest {
    pb::InvokeRequest {
        skill: "counter".into(),
        instance: counter.into(),
        method: "incr".into(),
        payload: br#"{"by":1}"#.to_vec(),
        request_id: request_id.into(),
        expected_version: None,
    }
}

pub fn reply_value(bytes: &[u8]) -> i64 {
    let v: serde_json::Value = serde_json::from_slice(bytes).expect("reply is JSON");
    v["value"].as_i64().expect("reply has an integer value")
}

/// `GetState` of `counter/<name>` on one node: (value, version).
pub async fn read_counter(
    addr: &str,
    token: &str,
    counter: &str,
) -> Result<(i64, u64), tonic::Status> {
    let mut c = connect(addr, token)
        .await
        .map_err(tonic::Status::unavailable)?;
    let req = pb::GetStateRequest {
        skill: "counter".into(),
        instance: counter.into(),
        version: 0,
        at: None,
    };
    match tokio::time::timeout(RPC_TIMEOUT, c.skills.get_state(req)).await {
        Ok(Ok(r)) => {
            let cp = r
                .into_inner()
                .checkpoint
                .ok_or_else(|| tonic::Status::internal("no checkpoint in reply"))?;
            Ok((reply_value(&cp.state), cp.version))
        }
        Ok(Err(s)) => Err(s),
        Err(_) => Err(tonic::Status::deadline_exceeded("client timeout")),
    }
}

/// `Verify` of `counter/<name>` on one node: Ok(problem text) or ok.
pub async fn verify_counter(addr: &str, token: &str, counter: &str) -> Result<(), String> {
    let mut c = connect(addr, token).await?;
    let req = pb::VerifyRequest {
        skill: "counter".into(),
        instance: counter.into(),
    };
    match tokio::time::timeout(RPC_TIMEOUT, c.skills.verify(req)).await {
        Ok(Ok(r)) => {
            let r = r.into_inner();
            if r.ok {
                Ok(())
            } else {
                Err(format!("{addr} {counter}: {}", r.problem))
            }
        }
        Ok(Err(s)) => Err(format!("{addr} {counter}: {}", show(&s))),
        Err(_) => Err(format!("{addr} {counter}: verify timed out")),
    }
}

#[derive(Clone, Copy)]
pub enum MemberChange {
    Promote(u64),
    Remove(u64),
    TransferLeader(u64),
}

/// A membership change sent to whichever of `addrs` leads, retried
/// (bounded) until `done` holds on the leader's status.
pub async fn member_change(
    addrs: &[String],
    token: &str,
    op: MemberChange,
    done: impl Fn(&pb::StatusResponse) -> bool,
) {
    let done = &done;
    wait_for("membership change", || async move {
        let leader = wait_leader(addrs, token).await;
        let mut found = None;
        for a in addrs {
            let s = status(a, token).await?;
            if s.node_id == leader {
                found = Some((a.clone(), s));
            }
        }
        let (addr, s) = found.ok_or("leader not among the healthy nodes")?;
        if done(&s) {
            return Ok(());
        }
        let mut c = connect(&addr, token).await?;
        let call = async {
            match op {
                MemberChange::Promote(id) => {
                    c.cluster.promote_member(pb::MemberRequest { id }).await
                }
                MemberChange::Remove(id) => c.cluster.remove_member(pb::MemberRequest { id }).await,
                MemberChange::TransferLeader(id) => {
                    c.cluster.transfer_leader(pb::MemberRequest { id }).await
                }
            }
        };
        match tokio::time::timeout(RPC_TIMEOUT, call).await {
            Ok(Ok(_)) => Err("applied; checking the status".to_string()),
            Ok(Err(s)) => Err(show(&s)),
            Err(_) => Err("timed out".to_string()),
        }
    })
    .await
}
