//! The `synapse` binary end to end: `serve` as a child process, the client
//! subcommands with `-w json`, a denied call, graceful SIGTERM, restart and
//! crash (SIGKILL) durability.

mod ports;
use ports::free_ports;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_synapse");
/// Hang guards for waits on the child (never asserted as timings).
const START_GUARD: Duration = Duration::from_secs(30);
const EXIT_GUARD: Duration = Duration::from_secs(20);

/// A running `synapse serve`; killed (SIGKILL) and reaped on drop, so a
/// failing test never leaks a server.
struct Server {
    child: Option<Child>,
    dir: PathBuf,
    endpoint: String,
    http: String,
    log: PathBuf,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let ports = free_ports(2);
        let (grpc, http) = (ports[0], ports[1]);
        let log = dir.with_extension(format!("serve-{grpc}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(BIN)
            .args(["serve", "--data-dir"])
            .arg(dir)
            .args(["--listen", &format!("127.0.0.1:{grpc}")])
            .args(["--http-listen", &format!("127.0.0.1:{http}")])
            .args(["--log", "warn"])
            .env_remove("SYNAPSE_CONFIG")
            .env_remove("SYNAPSE_TOKEN")
            .env_remove("SYNAPSE_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn synapse serve");
        let mut s = Server {
            child: Some(child),
            dir: dir.to_path_buf(),
            endpoint: format!("http://127.0.0.1:{grpc}"),
            http: format!("127.0.0.1:{http}"),
            log,
        };
        s.wait_ready();
        s
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("child").id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `cluster status` until it succeeds (bounded).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_GUARD;
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("server exited early ({st:?}); log:\n{}", self.log_text());
            }
            let out = self.cli(&["cluster", "status", "-w", "json"]);
            if out.status.success() {
                let v: Value = serde_json::from_slice(&out.stdout).expect("status json");
                if v["role"] == "leader" {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "server never became ready; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a client subcommand against this server with the root token.
    fn cli(&self, args: &[&str]) -> Output {
        self.cli_with(args, &["--token-file", self.token_file().to_str().unwrap()])
    }

    fn cli_with(&self, args: &[&str], auth: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .args(["--endpoint", &self.endpoint])
            .args(auth)
            .env_remove("SYNAPSE_TOKEN")
            .env_remove("SYNAPSE_ENDPOINT")
            .env_remove("SYNAPSE_TOKEN_FILE")
            .stdin(Stdio::null())
            .output()
            .expect("run synapse client")
    }

    /// Runs a client subcommand that must succeed and print JSON.
    fn json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "`synapse {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "`synapse {}` printed no JSON ({e}): {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    fn token_file(&self) -> PathBuf {
        self.dir.join("root.token")
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill {sig} failed");
    }

    /// Waits (bounded) for the child to exit and returns its status.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + EXIT_GUARD;
        let child = self.child.as_mut().expect("child");
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                self.child = None;
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn http_get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(&self.http).expect("connect http");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.http
        )
        .unwrap();
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The binary turns transparent huge pages off for itself (its allocator
/// would otherwise keep whole 2 MiB pages resident; src/main.rs).
#[cfg(target_os = "linux")]
#[test]
fn serve_runs_with_transparent_huge_pages_disabled() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(&tmp.path().join("data"));
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("THP_enabled:"))
        .unwrap_or_else(|| panic!("no THP_enabled line (kernel older than 4.14?):\n{status}"));
    assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
}

#[test]
fn cli_tour_denied_call_and_graceful_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut s = Server::start(&dir);
    assert!(s.token_file().exists(), "root.token written");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.token_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "root.token is readable by others: {mode:o}"
        );
    }

    let r1 = s.json(&[
        "invoke",
        "counter/alice",
        "incr",
        r#"{"by":2}"#,
        "-w",
        "json",
    ]);
    assert_eq!(r1["reply"]["value"], 2);
    assert_eq!(r1["version"], 1);
    let r2 = s.json(&[
        "invoke",
        "counter/alice",
        "incr",
        r#"{"by":3}"#,
        "-w",
        "json",
    ]);
    assert_eq!(r2["reply"]["value"], 5);
    assert_eq!(r2["version"], 2);
    assert_eq!(r2["deduplicated"], false);

    let st = s.json(&["state", "counter/alice", "-w", "json"]);
    assert_eq!(st["state"]["value"], 5);
    assert_eq!(st["version"], 2);
    assert_eq!(st["hash"], r2["hash"]);
    assert_eq!(st["parent_hash"], r1["hash"]);

    let v1 = s.json(&["state", "counter/alice", "--version", "1", "-w", "json"]);
    assert_eq!(v1["state"]["value"], 2);

    let h = s.json(&["history", "counter/alice", "-w", "json"]);
    let versions: Vec<u64> = h
        .as_array()
        .expect("history is a list")
        .iter()
        .map(|cp| cp["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![2, 1]);

    let rb = s.json(&["rollback", "counter/alice", "--to", "1", "-w", "json"]);
    assert_eq!(rb["version"], 3);
    let st = s.json(&["state", "counter/alice", "-w", "json"]);
    assert_eq!(
        (st["version"].clone(), st["state"]["value"].clone()),
        (3.into(), 2.into())
    );
    assert_eq!(
        s.json(&["history", "counter/alice", "-w", "json"])
            .as_array()
            .unwrap()
            .len(),
        3,
        "rollback keeps history"
    );

    let ver = s.json(&["verify", "counter/alice", "-w", "json"]);
    assert_eq!(ver["ok"], true, "{ver}");
    assert_eq!(ver["versions_checked"], 3);
    assert_eq!(ver["head_hash"], rb["hash"]);

    // Idempotent retry through the CLI.
    let a = s.json(&[
        "invoke",
        "kv/box",
        "put",
        r#"{"key":"k","value":1}"#,
        "--request-id",
        "cli-1",
        "-w",
        "json",
    ]);
    let b = s.json(&[
        "invoke",
        "kv/box",
        "put",
        r#"{"key":"k","value":1}"#,
        "--request-id",
        "cli-1",
        "-w",
        "json",
    ]);
    assert_eq!(a["deduplicated"], false);
    assert_eq!(b["deduplicated"], true);
    assert_eq!(a["version"], b["version"]);

    let status = s.json(&["cluster", "status", "-w", "json"]);
    assert_eq!(status["role"], "leader");
    assert_eq!(status["instances"], 2);
    let now = s.json(&["now", "-w", "json"]);
    assert!(now["timestamp"]["physical_micros"].as_u64().unwrap() > 0);

    // Bad input through the CLI: non-zero exit, the gRPC code on stderr.
    let bad = s.cli(&["invoke", "counter/alice", "incr", "{not json", "-w", "json"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("InvalidArgument"));
    let nf = s.cli(&["invoke", "nosuch/alice", "incr", "-w", "json"]);
    assert!(!nf.status.success());
    assert!(String::from_utf8_lossy(&nf.stderr).contains("NotFound"));

    // A denied call: a token minted for reads of counter/alice only.
    let mint = Command::new(BIN)
        .args(["token", "mint", "--data-dir"])
        .arg(&dir)
        .args([
            "--principal",
            "reader",
            "--skill",
            "counter",
            "--instance",
            "alice",
            "--methods",
            "get,_state",
            "--read-only",
        ])
        .output()
        .unwrap();
    assert!(
        mint.status.success(),
        "token mint: {}",
        String::from_utf8_lossy(&mint.stderr)
    );
    let token = String::from_utf8(mint.stdout).unwrap().trim().to_string();
    assert!(!token.is_empty());
    let before = s.json(&["state", "counter/alice", "-w", "json"]);
    let denied = s.cli_with(
        &[
            "invoke",
            "counter/alice",
            "incr",
            r#"{"by":1}"#,
            "-w",
            "json",
        ],
        &["--token", &token],
    );
    assert!(!denied.status.success(), "denied call exited 0");
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(err.contains("PermissionDenied"), "stderr: {err}");
    assert!(denied.stdout.is_empty(), "denied call printed a result");
    let other = s.cli_with(
        &["state", "counter/bob", "-w", "json"],
        &["--token", &token],
    );
    assert!(!other.status.success());
    assert!(String::from_utf8_lossy(&other.stderr).contains("PermissionDenied"));
    // In scope it works.
    let ok = s.cli_with(
        &["state", "counter/alice", "-w", "json"],
        &["--token", &token],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let after = s.json(&["state", "counter/alice", "-w", "json"]);
    assert_eq!(after, before, "the denied call changed state");
    // No token at all: unauthenticated (a token file that does not exist).
    let anon = s.cli_with(
        &["state", "counter/alice", "-w", "json"],
        &["--token-file", "/nonexistent/root.token"],
    );
    assert!(!anon.status.success());
    assert!(String::from_utf8_lossy(&anon.stderr).contains("Unauthenticated"));

    // Health endpoints on the second port.
    let healthz = s.http_get("/healthz");
    assert!(healthz.starts_with("HTTP/1.1 200"), "healthz: {healthz}");
    let metrics = s.http_get("/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "metrics: {metrics}");
    // The binary counts its heap: more than nothing, and no more than the
    // address space it has mapped (not resident memory: a block allocated
    // and never touched is not resident).
    let heap: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("synapse_heap_allocated_bytes "))
        .unwrap_or_else(|| panic!("no heap gauge in:\n{metrics}"))
        .trim()
        .parse()
        .expect("heap gauge value");
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    let mapped_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmSize in /proc/<pid>/status");
    assert!(
        heap > 0 && heap <= mapped_kib * 1024,
        "heap {heap} B against {mapped_kib} KiB mapped"
    );

    // Graceful shutdown on SIGTERM: exit status 0.
    s.signal("-TERM");
    let st = s.wait_exit();
    assert!(
        st.success(),
        "SIGTERM exit status {st:?}; log:\n{}",
        s.log_text()
    );

    // Restart on the same data dir: everything is still there.
    let s2 = Server::start(&dir);
    let st = s2.json(&["state", "counter/alice", "-w", "json"]);
    assert_eq!(st["version"], 3);
    assert_eq!(st["state"]["value"], 2);
    assert_eq!(st["hash"], rb["hash"]);
    let ver = s2.json(&["verify", "counter/alice", "-w", "json"]);
    assert_eq!(ver["ok"], true);
    drop(s2);
}

/// A ttl past what the clock can represent is refused with a message,
/// not a panic, and nothing is minted; a ttl in range still mints.
#[test]
fn token_ttl_beyond_a_century_is_refused_without_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let key = Command::new(BIN).arg("keygen").output().unwrap();
    assert!(key.status.success(), "keygen failed");
    std::fs::write(tmp.path().join("root.key"), &key.stdout).unwrap();
    let mint = |ttl: &str| {
        Command::new(BIN)
            .args(["token", "mint", "--data-dir"])
            .arg(tmp.path())
            .args(["--principal", "p", "--ttl", ttl])
            .output()
            .unwrap()
    };
    for ttl in ["9999999999999999999s", "200000000000000d", "36501d"] {
        let out = mint(ttl);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{ttl}: accepted");
        assert!(out.stdout.is_empty(), "{ttl}: printed a token");
        assert!(!stderr.contains("panicked"), "{ttl}: {stderr}");
        assert!(stderr.contains("longer than 100 years"), "{ttl}: {stderr}");
    }
    let ok = mint("36500d");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut s = Server::start(&dir);
    let mut acks = Vec::new();
    for i in 1..=15u64 {
        let r = s.json(&["invoke", "counter/k", "incr", "-w", "json"]);
        assert_eq!(r["reply"]["value"], i);
        acks.push(r);
    }
    // Crash: no graceful shutdown, no final sync.
    s.signal("-KILL");
    let st = s.wait_exit();
    assert!(!st.success());
    let s2 = Server::start(&dir);
    let st = s2.json(&["state", "counter/k", "-w", "json"]);
    assert_eq!(st["version"], 15, "acknowledged writes lost after SIGKILL");
    assert_eq!(st["state"]["value"], 15);
    assert_eq!(st["hash"], acks[14]["hash"]);
    let ver = s2.json(&["verify", "counter/k", "-w", "json"]);
    assert_eq!(ver["ok"], true);
    let next = s2.json(&["invoke", "counter/k", "incr", "-w", "json"]);
    let ts = |v: &Value| {
        (
            v["timestamp"]["physical_micros"].as_u64().unwrap(),
            v["timestamp"]["logical"].as_u64().unwrap(),
        )
    };
    assert!(
        ts(&next) > ts(&acks[14]),
        "timestamp went backwards after a crash"
    );
    assert_eq!(next["version"], 16);
}
