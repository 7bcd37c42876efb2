//! Shared helpers for the single-node integration tests: real sled in a
//! temp dir, real tonic over 127.0.0.1, the embedding API to start nodes.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use synapse::client::{v1 as pb, Client};
use synapse::{Grant, MethodKind, MethodSpec, Node, NodeConfig, RootKey, Skill, SkillError};
use tonic::Code;

/// Bound for any single wait in a test (hang guard, never asserted on).
pub const HANG_GUARD: Duration = Duration::from_secs(20);

/// A config for a test node: gRPC on an ephemeral port, no HTTP.
pub fn test_config(dir: &Path) -> NodeConfig {
    NodeConfig {
        data_dir: dir.to_path_buf(),
        listen: Some("127.0.0.1:0".parse().expect("addr")),
        http_listen: None,
        drain_timeout_ms: 2_000,
        ..NodeConfig::default()
    }
}

/// A running node plus what tests need around it.
pub struct TestNode {
    pub node: Node,
    pub dir: PathBuf,
    pub endpoint: String,
}

impl TestNode {
    pub fn root_token(&self) -> String {
        self.node.root_token().to_string()
    }

    pub async fn client(&self, token: Option<&str>) -> Client {
        Client::connect(&self.endpoint, token)
            .await
            .expect("connect to test node")
    }

    pub async fn root_client(&self) -> Client {
        let t = self.root_token();
        self.client(Some(&t)).await
    }

    /// Mints a token with the given grants, signed by this node's root key.
    pub fn mint(&self, grants: &[Grant], expires_at: Option<SystemTime>) -> String {
        mint_in(&self.dir, grants, expires_at)
    }

    /// The value of one series (`synapse_...`, no labels) on this node's
    /// `/metrics` page, `None` if it is not there.
    pub fn metric(&self, name: &str) -> Option<u64> {
        let text = self.node.core().metrics_text();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// (applied index, state hash, instance count) straight from the store.
    pub fn state_hash(&self) -> (u64, [u8; 32], u64) {
        self.node
            .core()
            .store()
            .state_hash()
            .expect("state hash readable")
    }

    /// (version, hash, state bytes) of the latest checkpoint, straight from
    /// the store (no guard); `None` if the instance has no checkpoint.
    pub fn head(&self, skill: &str, instance: &str) -> Option<(u64, [u8; 32], Vec<u8>)> {
        self.node
            .core()
            .store()
            .latest(skill, instance)
            .expect("latest readable")
            .map(|cp| (cp.version, cp.hash, cp.state))
    }

    /// Waits until background bootstrap proposals (root key, member
    /// addresses) have settled: the applied index stops moving for a while.
    pub async fn settle(&self) {
        let mut last = self.state_hash().0;
        let mut stable = 0;
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        while stable < 5 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "applied index never settled"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.state_hash().0;
            if now == last {
                stable += 1;
            } else {
                stable = 0;
                last = now;
            }
        }
    }

    /// Blocking shutdown, off the async worker.
    pub async fn shutdown(self) -> PathBuf {
        let TestNode { node, dir, .. } = self;
        tokio::task::spawn_blocking(move || {
            node.shutdown();
            drop(node);
        })
        .await
        .expect("shutdown task");
        dir
    }
}

pub fn mint_in(dir: &Path, grants: &[Grant], expires_at: Option<SystemTime>) -> String {
    RootKey::load_or_create(&dir.join("root.key"))
        .expect("root key")
        .mint("tester", grants, expires_at)
        .expect("mint")
}

pub fn grant(skill: &str, instance: &str, methods: &[&str]) -> Grant {
    Grant {
        skill: skill.into(),
        instance: instance.into(),
        methods: methods.iter().map(|m| m.to_string()).collect(),
        read_only: false,
    }
}

/// Starts a node on `dir` with `config` tweaks and extra skills.
pub async fn start_with(
    dir: &Path,
    tweak: impl FnOnce(&mut NodeConfig) + Send + 'static,
    extra: impl FnOnce(synapse::NodeBuilder) -> synapse::NodeBuilder + Send + 'static,
) -> TestNode {
    let dir = dir.to_path_buf();
    let mut cfg = test_config(&dir);
    tweak(&mut cfg);
    let node = tokio::task::spawn_blocking(move || extra(Node::builder(cfg)).start())
        .await
        .expect("start task")
        .expect("node starts");
    let addr = node.grpc_addr().expect("grpc listening");
    TestNode {
        node,
        dir,
        endpoint: format!("http://{addr}"),
    }
}

pub async fn start(dir: &Path) -> TestNode {
    start_with(dir, |_| {}, |b| b).await
}

/// Invokes over gRPC and returns the raw response.
pub async fn invoke(
    c: &mut Client,
    skill: &str,
    instance: &str,
    method: &str,
    payload: Value,
) -> Result<pb::InvokeResponse, tonic::Status> {
    invoke_req(
        c,
        pb::InvokeRequest {
            skill: skill.into(),
            instance: instance.into(),
            method: method.into(),
            payload: serde_json::to_vec(&payload).expect("json"),
            request_id: String::new(),
            expected_version: None,
        },
    )
    .await
}

pub async fn invoke_req(
    c: &mut Client,
    req: pb::InvokeRequest,
) -> Result<pb::InvokeResponse, tonic::Status> {
    tokio::time::timeout(HANG_GUARD, c.skills.invoke(req))
        .await
        .expect("invoke hung")
        .map(|r| r.into_inner())
}

pub fn reply_json(r: &pb::InvokeResponse) -> Value {
    serde_json::from_slice(&r.reply).expect("reply is JSON")
}

pub async fn get_state(
    c: &mut Client,
    skill: &str,
    instance: &str,
) -> Result<pb::Checkpoint, tonic::Status> {
    tokio::time::timeout(
        HANG_GUARD,
        c.skills.get_state(pb::GetStateRequest {
            skill: skill.into(),
            instance: instance.into(),
            version: 0,
            at: None,
        }),
    )
    .await
    .expect("get_state hung")
    .map(|r| r.into_inner().checkpoint.expect("checkpoint present"))
}

pub fn state_json(cp: &pb::Checkpoint) -> Value {
    serde_json::from_slice(&cp.state).expect("state is JSON")
}

/// Asserts that `r` failed with `code`, with a helpful message.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected {code:?}, got OK: {v:?}"),
        Err(s) => assert_eq!(
            s.code(),
            code,
            "{what}: expected {code:?}, got {:?}: {}",
            s.code(),
            s.message()
        ),
    }
}

/// Flips one byte of the stored value at `key` in the raw sled tree
/// `tree` ("state", "raft_log", ...); panics if the key is absent. The
/// tree handle is dropped before returning.
pub fn flip_byte(store: &synapse_storage::Store, tree: &str, key: &[u8], at_from_end: usize) {
    let flip = |v: &mut Vec<u8>| {
        let i = v.len() - 1 - at_from_end.min(v.len() - 1);
        v[i] ^= 0x5a;
    };
    if tree == "raft_log" {
        // The log is in segment files; `key` is the index, big-endian.
        let index = u64::from_be_bytes(key.try_into().expect("raft log key is a u64"));
        let log = store.raft_log();
        let mut v = log.debug_record(index).expect("raft log record present");
        flip(&mut v);
        log.debug_overwrite_record(index, &v)
            .expect("write raft log record");
        return;
    }
    let tree = store.raw_tree(tree).expect("raw tree");
    let mut v = tree
        .get(key)
        .expect("read raw value")
        .expect("raw value present")
        .to_vec();
    flip(&mut v);
    tree.insert(key, v).expect("write raw value");
    tree.flush().expect("flush raw tree");
}

// ---------------------------------------------------------- test skills

/// `crashy`: `set {"v": n}` sets the value; `boom` mutates then panics;
/// `fail` mutates then returns an error.
pub struct Crashy;

#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct CrashyState {
    pub v: i64,
    pub touched: u64,
}

const CRASHY_METHODS: &[MethodSpec] = &[
    MethodSpec {
        name: "set",
        kind: MethodKind::Write,
    },
    MethodSpec {
        name: "boom",
        kind: MethodKind::Write,
    },
    MethodSpec {
        name: "boom_read",
        kind: MethodKind::Read,
    },
    MethodSpec {
        name: "fail",
        kind: MethodKind::Write,
    },
    MethodSpec {
        name: "get",
        kind: MethodKind::Read,
    },
];

impl Skill for Crashy {
    type State = CrashyState;

    fn name(&self) -> &'static str {
        "crashy"
    }

    fn methods(&self) -> &'static [MethodSpec] {
        CRASHY_METHODS
    }

    fn handle(
        &self,
        state: &mut CrashyState,
        method: &str,
        payload: &Value,
    ) -> Result<Value, SkillError> {
        match method {
            "set" => {
                state.v = payload
                    .get("v")
                    .and_then(Value::as_i64)
                    .ok_or_else(|| SkillError::invalid("`v` must be an integer"))?;
                state.touched += 1;
                Ok(json!({"v": state.v}))
            }
            "boom" | "boom_read" => {
                state.v = -999;
                state.touched += 1000;
                panic!("crashy handler exploded on purpose");
            }
            "fail" => {
                state.v = -1;
                Err(SkillError::Failed("handler gave up on purpose".into()))
            }
            "get" => Ok(json!({"v": state.v, "touched": state.touched})),
            other => Err(SkillError::invalid(format!("unknown method {other}"))),
        }
    }
}

/// `slow`: `work {"ms": n}` sleeps n ms (blocking the node's actor thread)
/// then increments a counter; `get` reads it.
pub struct Slow;

#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SlowState {
    pub done: u64,
}

const SLOW_METHODS: &[MethodSpec] = &[
    MethodSpec {
        name: "work",
        kind: MethodKind::Write,
    },
    MethodSpec {
        name: "get",
        kind: MethodKind::Read,
    },
];

impl Skill for Slow {
    type State = SlowState;

    fn name(&self) -> &'static str {
        "slow"
    }

    fn methods(&self) -> &'static [MethodSpec] {
        SLOW_METHODS
    }

    fn handle(
        &self,
        state: &mut SlowState,
        method: &str,
        payload: &Value,
    ) -> Result<Value, SkillError> {
        match method {
            "work" => {
                let ms = payload.get("ms").and_then(Value::as_u64).unwrap_or(0);
                std::thread::sleep(Duration::from_millis(ms));
                state.done += 1;
                Ok(json!({"done": state.done}))
            }
            "get" => Ok(json!({"done": state.done})),
            other => Err(SkillError::invalid(format!("unknown method {other}"))),
        }
    }
}

/// Shared handle type used by tests that need the node from several tasks.
pub type Shared = Arc<TestNode>;
