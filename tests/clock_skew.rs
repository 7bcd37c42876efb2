//! Clock skew against real processes: three `synapse serve` nodes on
//! loopback, one of them with an injected skew (`--debug-clock-skew-file`).
//!
//! Checks: the offset estimate converges to the injected skew within the
//! reported uncertainty; the skewed node reports not ready and does not keep
//! leadership; checkpoint timestamps of an instance strictly increase across
//! the resulting leader change; the node recovers when the skew is removed,
//! including after a jump backwards.

mod ports;
use ports::free_ports;
use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_synapse");
/// Hang guard for every wait; the clock service samples once a second.
const WAIT: Duration = Duration::from_secs(40);

struct Cluster {
    dir: tempfile::TempDir,
    children: Vec<Child>,
    grpc: Vec<u16>,
    http: Vec<u16>,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = free_ports(6);
        let (grpc, http) = (ports[..3].to_vec(), ports[3..].to_vec());
        let peers: Vec<String> = grpc
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect();
        let mut cluster = Cluster {
            dir,
            children: Vec::new(),
            grpc,
            http,
        };
        for i in 0..3 {
            std::fs::write(cluster.skew_file(i + 1), "0").expect("skew file");
            let log = std::fs::File::create(cluster.dir.path().join(format!("n{}.log", i + 1)))
                .expect("log");
            let child = Command::new(BIN)
                .args(["serve", "--node-id", &(i + 1).to_string()])
                .arg("--data-dir")
                .arg(cluster.dir.path().join(format!("n{}", i + 1)))
                .args(["--listen", &format!("127.0.0.1:{}", cluster.grpc[i])])
                .args(["--http-listen", &format!("127.0.0.1:{}", cluster.http[i])])
                .args(["--peers", &peers.join(",")])
                .arg("--debug-clock-skew-file")
                .arg(cluster.skew_file(i + 1))
                .env("SYNAPSE_LOG", "info,raft=warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn synapse serve");
            cluster.children.push(child);
        }
        cluster
    }

    fn skew_file(&self, node: usize) -> PathBuf {
        self.dir.path().join(format!("skew{node}"))
    }

    fn set_skew_ms(&self, node: usize, ms: i64) {
        std::fs::write(self.skew_file(node), ms.to_string()).expect("write skew");
    }

    fn token(&self, node: usize) -> PathBuf {
        self.dir.path().join(format!("n{node}")).join("root.token")
    }

    fn cli(&self, node: usize, args: &[&str]) -> Result<Value, String> {
        let out = Command::new(BIN)
            .args(args)
            .args([
                "-w",
                "json",
                "--endpoint",
                &format!("http://127.0.0.1:{}", self.grpc[node - 1]),
            ])
            .arg("--token-file")
            .arg(self.token(node))
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("bad json: {e}"))
    }

    fn status(&self, node: usize) -> Option<Value> {
        self.cli(node, &["cluster", "status"]).ok()
    }

    fn ready(&self, node: usize) -> bool {
        http_get(self.http[node - 1], "/readyz").is_some_and(|(code, _)| code == 200)
    }

    fn wait_for(&self, what: &str, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while start.elapsed() < WAIT {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("timed out waiting for {what}\n{}", self.logs());
    }

    fn logs(&self) -> String {
        (1..=3)
            .map(|i| {
                let text = std::fs::read_to_string(self.dir.path().join(format!("n{i}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!(
                    "--- node {i} ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Minimal HTTP/1.0 GET on loopback: (status code, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        code,
        buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_string(),
    ))
}

fn leader(c: &Cluster) -> Option<usize> {
    (1..=3)
        .find_map(|n| c.status(n))
        .and_then(|s| s["leader_id"].as_u64())
        .filter(|l| *l != 0)
        .map(|l| l as usize)
}

fn peer_clock(status: &Value, peer: usize) -> Option<(i64, i64)> {
    status["peers"]
        .as_array()?
        .iter()
        .find(|p| p["id"] == peer as u64)
        .and_then(|p| {
            let age = p["clock_sample_age_ms"].as_u64()?;
            let unc = p["clock_uncertainty_micros"].as_i64()?;
            (age > 0 || unc > 0).then(|| (p["clock_offset_micros"].as_i64().unwrap_or(0), unc))
        })
}

fn timestamps(c: &Cluster, node: usize, target: &str) -> Vec<(u64, u64, u64)> {
    let h = c
        .cli(node, &["history", target, "--limit", "1000"])
        .expect("history");
    h.as_array()
        .expect("history is a list")
        .iter()
        .map(|cp| {
            let ts = &cp["timestamp"];
            (
                ts["physical_micros"].as_u64().unwrap_or(0),
                ts["logical"].as_u64().unwrap_or(0),
                ts["node_id"].as_u64().unwrap_or(0),
            )
        })
        .rev()
        .collect()
}

fn write_some(c: &Cluster, via: usize, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        if c.cli(via, &["invoke", "counter/clock", "incr"]).is_ok() {
            ok += 1;
        }
    }
    ok
}

#[test]
fn skewed_node_is_detected_stops_leading_and_recovers() {
    let c = Cluster::start();
    c.wait_for("a leader and the root key on every node", || {
        (1..=3).all(|n| c.token(n).exists()) && (1..=3).all(|n| c.ready(n))
    });
    assert!(
        write_some(&c, 1, 5) > 0,
        "no write succeeded before the skew\n{}",
        c.logs()
    );

    // Skew the current leader forward by 2 s.
    let skewed = leader(&c).expect("leader");
    let observer = if skewed == 1 { 2 } else { 1 };
    let injected_us: i64 = 2_000_000;
    c.set_skew_ms(skewed, injected_us / 1000);

    // 1. Another node's estimate converges to the injected skew within the
    //    reported uncertainty (plus the observer's own sampling jitter).
    c.wait_for("the observer's estimate to converge to +2 s", || {
        c.status(observer)
            .and_then(|s| peer_clock(&s, skewed))
            .is_some_and(|(off, unc)| (off - injected_us).abs() <= unc + 2_000)
    });
    let (est, unc) = c
        .status(observer)
        .and_then(|s| peer_clock(&s, skewed))
        .expect("estimate");
    eprintln!("injected +{injected_us} µs, estimated {est} µs ± {unc} µs");

    // 2. The skewed node reports itself unhealthy and not ready ...
    c.wait_for("the skewed node to report an unhealthy clock", || {
        c.status(skewed)
            .is_some_and(|s| s["clock_healthy"] == false)
            && !c.ready(skewed)
    });
    let s = c.status(skewed).expect("status");
    assert!(
        s["clock_problem"].as_str().unwrap_or("").contains("ahead"),
        "{s}"
    );
    // ... and gives up leadership to a healthy node.
    c.wait_for("leadership to leave the skewed node", || {
        leader(&c).is_some_and(|l| l != skewed)
    });

    // 3. Writes continue; timestamps of the instance strictly increase across
    //    the leader change.
    let via = leader(&c).expect("leader");
    assert!(
        write_some(&c, via, 5) > 0,
        "no write after the hand-off\n{}",
        c.logs()
    );
    let ts = timestamps(&c, via, "counter/clock");
    assert!(ts.len() >= 2);
    assert!(
        ts.windows(2).all(|w| w[0] < w[1]),
        "timestamps not strictly increasing: {ts:?}"
    );

    // 4. Jump backwards: from +2 s to -2 s. Still unhealthy, still detected.
    c.set_skew_ms(skewed, -2000);
    c.wait_for("the estimate to follow the jump to -2 s", || {
        c.status(observer)
            .and_then(|s| peer_clock(&s, skewed))
            .is_some_and(|(off, unc)| (off + 2_000_000).abs() <= unc + 2_000)
    });
    c.wait_for("the skewed node to report 'behind'", || {
        c.status(skewed).is_some_and(|s| {
            s["clock_healthy"] == false
                && s["clock_problem"].as_str().unwrap_or("").contains("behind")
        })
    });

    // 5. Remove the skew: the node recovers and becomes ready again.
    c.set_skew_ms(skewed, 0);
    c.wait_for("the skewed node to become ready again", || c.ready(skewed));
    let via = leader(&c).expect("leader");
    assert!(write_some(&c, via, 3) > 0);
    let ts = timestamps(&c, via, "counter/clock");
    assert!(
        ts.windows(2).all(|w| w[0] < w[1]),
        "timestamps not strictly increasing: {ts:?}"
    );

    // Every node ends with the same state at the same applied index.
    c.wait_for("identical state hashes", || {
        let s: Vec<Value> = (1..=3).filter_map(|n| c.status(n)).collect();
        s.len() == 3
            && s.windows(2).all(|w| {
                w[0]["state_hash"] == w[1]["state_hash"]
                    && w[0]["applied_index"] == w[1]["applied_index"]
            })
    });
}

#[test]
fn clock_now_reports_an_uncertainty_bound() {
    let c = Cluster::start();
    c.wait_for("readiness", || {
        (1..=3).all(|n| c.token(n).exists() && c.ready(n))
    });
    // After at least one sampling round the bound reflects the measurement.
    c.wait_for("a measured uncertainty", || {
        c.cli(2, &["now"])
            .ok()
            .and_then(|v| v["uncertainty_micros"].as_u64())
            .is_some_and(|u| u > 1)
    });
    let v = c.cli(2, &["now"]).expect("now");
    assert!(v["timestamp"]["physical_micros"].as_u64().unwrap_or(0) > 0);
}
