//! Transport security with real processes: `synapse certs init`, a 3-node
//! mTLS cluster over loopback, clients with the right and the wrong CA, and
//! peer authentication (client certificate with TLS, peer credential in
//! every mode).
//!
//! Every wait is a bounded retry loop (a hang guard, never a timing
//! assertion); children are SIGKILLed when a test ends, and their log tails
//! are printed when it fails. Tests run one at a time (file-wide lock).

mod ports;
use ports::free_ports;
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use synapse::client::{v1 as pb, Client, ClientTls};
use synapse::{Grant, RootKey};
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_synapse");
/// Bound for any single wait (hang guard, never asserted on).
const HANG_GUARD: Duration = Duration::from_secs(40);
const POLL: Duration = Duration::from_millis(100);
/// Per-RPC bound, so a stuck call cannot hang a test.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Mirrors `synapse_consensus::PEER_CREDENTIAL_HEADER`.
const PEER_CREDENTIAL_HEADER: &str = "x-synapse-peer-credential";

static SERIAL: Mutex<()> = Mutex::new(());

fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("SYNAPSE_") {
            cmd.env_remove(k);
        }
    }
}

struct NodeProc {
    id: u64,
    dir: PathBuf,
    addr: String,
    log: PathBuf,
    child: Option<Child>,
}

/// Owns the children; kills them on drop, printing log tails on failure.
struct Procs {
    nodes: BTreeMap<u64, NodeProc>,
    root: PathBuf,
    _tmp: tempfile::TempDir,
    _serial: MutexGuard<'static, ()>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for n in self.nodes.values_mut() {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            for n in self.nodes.values() {
                let text = std::fs::read_to_string(&n.log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "======== node {} ({}) log tail ========\n{}",
                    n.id,
                    n.addr,
                    lines[lines.len().saturating_sub(60)..].join("\n")
                );
            }
        }
    }
}

impl Procs {
    fn new() -> Procs {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let tmp = tempfile::tempdir().expect("tempdir");
        Procs {
            nodes: BTreeMap::new(),
            root: tmp.path().to_path_buf(),
            _tmp: tmp,
            _serial: serial,
        }
    }

    /// Starts `synapse serve` for each id with the given extra flags
    /// (`extra(id)`), after reserving ports for all of them.
    fn start(&mut self, ids: &[u64], extra: impl Fn(u64, &str) -> Vec<String>) {
        let ports = free_ports(ids.len() * 2);
        let peers = ids
            .iter()
            .enumerate()
            .map(|(i, id)| format!("{id}=127.0.0.1:{}", ports[2 * i]))
            .collect::<Vec<_>>()
            .join(",");
        for (i, id) in ids.iter().enumerate() {
            let n = NodeProc {
                id: *id,
                dir: self.root.join(format!("node{id}")),
                addr: format!("127.0.0.1:{}", ports[2 * i]),
                log: self.root.join(format!("node{id}.log")),
                child: None,
            };
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&n.log)
                .expect("open node log");
            let err = log.try_clone().expect("clone log handle");
            let mut cmd = Command::new(BIN);
            cmd.arg("serve")
                .args(["--node-id", &id.to_string()])
                .arg("--data-dir")
                .arg(&n.dir)
                .args(["--listen", &n.addr])
                .args(["--http-listen", &format!("127.0.0.1:{}", ports[2 * i + 1])])
                .args(extra(*id, &peers));
            clean_env(&mut cmd);
            cmd.env("SYNAPSE_LOG", "info,raft=warn")
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err);
            let child = cmd.spawn().expect("spawn synapse serve");
            self.nodes.insert(
                *id,
                NodeProc {
                    child: Some(child),
                    ..n
                },
            );
        }
    }

    fn addrs(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.addr.clone()).collect()
    }

    /// The root token, once node `id` has installed the replicated key.
    async fn root_token(&self, id: u64) -> String {
        let path = self.nodes[&id].dir.join("root.token");
        wait_for("root.token", || {
            let path = path.clone();
            async move {
                std::fs::read_to_string(&path)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| "not written yet".to_string())
            }
        })
        .await
    }

    fn root_key(&self, id: u64) -> RootKey {
        let text = std::fs::read_to_string(self.nodes[&id].dir.join("root.key")).expect("root.key");
        RootKey::from_private_hex(text.trim()).expect("root key parses")
    }
}

async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
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

/// Runs the CLI with a bound on its run time.
async fn cli(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(BIN);
        cmd.args(&args);
        clean_env(&mut cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn synapse CLI");
        let start = Instant::now();
        loop {
            if child.try_wait().expect("wait CLI").is_some() {
                break;
            }
            if start.elapsed() > HANG_GUARD {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("CLI output")
    })
    .await
    .expect("CLI task")
}

fn certs_init(out: &Path) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    clean_env(&mut cmd);
    cmd.args(["certs", "init", "--nodes", "n1,n2,n3,n4", "--out"])
        .arg(out)
        .output()
        .expect("run certs init")
}

fn tls(pki: &Path, identity: Option<&str>) -> ClientTls {
    ClientTls {
        ca: pki.join("ca.pem"),
        cert: identity.map(|n| pki.join(format!("{n}.pem"))),
        key: identity.map(|n| pki.join(format!("{n}.key"))),
    }
}

fn incr(counter: &str, request_id: &str) -> pb::InvokeRequest {
    pb::InvokeRequest {
        skill: "counter".into(),
        instance: counter.into(),
        method: "incr".into(),
        payload: br#"{"by":1}"#.to_vec(),
        request_id: request_id.into(),
        expected_version: None,
    }
}

async fn status(c: &mut Client) -> Result<pb::StatusResponse, String> {
    match tokio::time::timeout(RPC_TIMEOUT, c.cluster.status(pb::StatusRequest {})).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Err("status timed out".into()),
    }
}

/// A Peer client over `channel`, with `credential` in the metadata if given.
fn peer_request<T>(message: T, credential: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(c) = credential {
        r.metadata_mut()
            .insert(PEER_CREDENTIAL_HEADER, c.parse().expect("ascii"));
    }
    r
}

fn forward(token: &str, counter: &str) -> pb::ForwardInvokeRequest {
    pb::ForwardInvokeRequest {
        request: Some(incr(counter, "")),
        token: token.to_string(),
    }
}

/// The bare minimum of `eraftpb::Message` (same field numbers), so the test
/// can hand-craft a Raft frame without the protobuf-2 runtime.
#[derive(Clone, PartialEq, prost::Message)]
struct RaftMessage {
    #[prost(int32, tag = "1")]
    msg_type: i32,
    #[prost(uint64, tag = "2")]
    to: u64,
    #[prost(uint64, tag = "3")]
    from: u64,
    #[prost(uint64, tag = "4")]
    term: u64,
}

/// `eraftpb::MessageType::MsgHeartbeat`.
const MSG_HEARTBEAT: i32 = 8;

/// Sends one Raft frame claiming a much higher term; if a node accepted it,
/// it would step down and adopt that term.
async fn inject_raft(
    channel: tonic::transport::Channel,
    to: u64,
    term: u64,
    credential: Option<&str>,
) -> Result<(), tonic::Status> {
    use prost::Message as _;
    let msg = RaftMessage {
        msg_type: MSG_HEARTBEAT,
        to,
        from: 99,
        term,
    };
    let frame = pb::RaftBatch {
        from: 99,
        messages: vec![msg.encode_to_vec()],
        from_address: "127.0.0.1:1".into(),
        ..Default::default()
    };
    let mut client = pb::peer_client::PeerClient::new(channel);
    let stream = tokio_stream::iter(vec![frame]);
    tokio::time::timeout(RPC_TIMEOUT, client.raft(peer_request(stream, credential)))
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("raft call timed out"))?
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mtls_cluster_serves_ca_clients_and_refuses_strangers() {
    let mut p = Procs::new();
    let pki = p.root.join("pki");
    let other = p.root.join("other-pki");
    for dir in [&pki, &other] {
        let out = certs_init(dir);
        assert!(
            out.status.success(),
            "certs init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for f in ["ca.key", "n1.key", "client.key"] {
            let mode = std::fs::metadata(pki.join(f))
                .expect("key file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f} must be private");
        }
    }
    // A second init into the same directory must refuse, not overwrite.
    assert!(!certs_init(&pki).status.success());

    let pki_for = pki.clone();
    p.start(&[1, 2, 3], move |id, peers| {
        let f = |ext: &str| {
            pki_for
                .join(format!("n{id}.{ext}"))
                .to_string_lossy()
                .into_owned()
        };
        vec![
            "--peers".into(),
            peers.to_string(),
            "--tls-cert".into(),
            f("pem"),
            "--tls-key".into(),
            f("key"),
            "--tls-ca".into(),
            pki_for.join("ca.pem").to_string_lossy().into_owned(),
        ]
    });
    let addrs = p.addrs();
    let started = Instant::now();
    let token = p.root_token(1).await;
    let good = tls(&pki, None);

    // The cluster forms over mTLS: every node names the same leader.
    let leader = wait_for("one agreed leader over TLS", || {
        let (addrs, token, good) = (addrs.clone(), token.clone(), good.clone());
        async move {
            let mut leaders = Vec::new();
            for a in &addrs {
                let mut c = Client::connect_tls(&format!("https://{a}"), Some(&token), Some(&good))
                    .await
                    .map_err(|e| e.to_string())?;
                leaders.push(status(&mut c).await?.leader_id);
            }
            match leaders[0] {
                0 => Err("no leader yet".into()),
                l if leaders.iter().all(|x| *x == l) => Ok(l),
                _ => Err(format!("leaders seen: {leaders:?}")),
            }
        }
    })
    .await;
    println!(
        "TLS cluster: leader {leader} agreed after {:?}",
        started.elapsed()
    );

    // Writes through every node (followers forward to the leader over TLS,
    // with the peer credential) all land.
    for (i, a) in addrs.iter().enumerate() {
        wait_for("an invoke through each node", || {
            let (a, token, good) = (a.clone(), token.clone(), good.clone());
            async move {
                let mut c = Client::connect_tls(&a, Some(&token), Some(&good))
                    .await
                    .map_err(|e| e.to_string())?;
                c.skills
                    .invoke(incr("tls", &format!("w{i}")))
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
            }
        })
        .await;
    }
    // Replication: every node reaches the same applied index and state hash.
    wait_for("equal applied index and state hash", || {
        let (addrs, token, good) = (addrs.clone(), token.clone(), good.clone());
        async move {
            let mut seen = Vec::new();
            for a in &addrs {
                let mut c = Client::connect_tls(a, Some(&token), Some(&good))
                    .await
                    .map_err(|e| e.to_string())?;
                let s = status(&mut c).await?;
                seen.push((s.applied_index, s.state_hash));
            }
            if seen.iter().all(|s| *s == seen[0]) {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        }
    })
    .await;

    // A fourth node joins over TLS with a join token: learner, caught up,
    // promoted (its own join task drives AddMember/PromoteMember).
    let pki_for = pki.clone();
    let (seed, join_token) = (addrs[0].clone(), token.clone());
    p.start(&[4], move |_, _| {
        let f = |name: &str| pki_for.join(name).to_string_lossy().into_owned();
        vec![
            "--join".into(),
            seed.clone(),
            "--join-token".into(),
            join_token.clone(),
            "--tls-cert".into(),
            f("n4.pem"),
            "--tls-key".into(),
            f("n4.key"),
            "--tls-ca".into(),
            f("ca.pem"),
        ]
    });
    let t_join = Instant::now();
    let addr4 = p.nodes[&4].addr.clone();
    wait_for("node 4 a voter with the same state", || {
        let (addr4, a1, token, good) =
            (addr4.clone(), addrs[0].clone(), token.clone(), good.clone());
        async move {
            let mut c4 = Client::connect_tls(&addr4, Some(&token), Some(&good))
                .await
                .map_err(|e| e.to_string())?;
            let s4 = status(&mut c4).await?;
            let mut c1 = Client::connect_tls(&a1, Some(&token), Some(&good))
                .await
                .map_err(|e| e.to_string())?;
            let s1 = status(&mut c1).await?;
            if s4.voters.contains(&4)
                && (s4.applied_index, &s4.state_hash) == (s1.applied_index, &s1.state_hash)
            {
                Ok(())
            } else {
                Err(format!(
                    "node 4: voters {:?} applied {} vs {}",
                    s4.voters, s4.applied_index, s1.applied_index
                ))
            }
        }
    })
    .await;
    println!(
        "TLS join: node 4 a caught-up voter after {:?}",
        t_join.elapsed()
    );

    // The CLI with the CA (and an http:// endpoint, upgraded to https).
    let out = cli(vec![
        "invoke".into(),
        "counter/tls".into(),
        "get".into(),
        "--endpoint".into(),
        format!("http://{}", addrs[1]),
        "--token".into(),
        token.clone(),
        "--tls-ca".into(),
        pki.join("ca.pem").to_string_lossy().into_owned(),
        "-w".into(),
        "json".into(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "CLI over TLS failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("CLI JSON");
    assert_eq!(
        v["reply"]["value"], 3,
        "three increments, one per node: {v}"
    );

    // Plaintext to the TLS port: refused (at connect or on the first call).
    let plain = async {
        let mut c = Client::connect(&format!("http://{}", addrs[0]), Some(&token))
            .await
            .map_err(|e| e.to_string())?;
        status(&mut c).await.map(|_| ())
    }
    .await;
    assert!(plain.is_err(), "a plaintext client must be refused");
    println!("plaintext client: {}", plain.unwrap_err());
    // The CLI without --tls-ca fails the same way.
    let out = cli(vec![
        "cluster".into(),
        "status".into(),
        "--endpoint".into(),
        format!("http://{}", addrs[0]),
        "--token".into(),
        token.clone(),
    ])
    .await;
    assert!(!out.status.success(), "plaintext CLI must fail");

    // A client trusting another CA does not accept the node's certificate.
    let wrong_ca = Client::connect_tls(&addrs[0], Some(&token), Some(&tls(&other, None))).await;
    let wrong_ca = match wrong_ca {
        Err(e) => Err(e.to_string()),
        Ok(mut c) => status(&mut c).await.map(|_| ()),
    };
    assert!(wrong_ca.is_err(), "a client with a foreign CA must fail");
    println!("foreign CA: {}", wrong_ca.unwrap_err());
    // A client certificate from another CA is refused by the node.
    let foreign_cert = ClientTls {
        ca: pki.join("ca.pem"),
        cert: Some(other.join("client.pem")),
        key: Some(other.join("client.key")),
    };
    let foreign = match Client::connect_tls(&addrs[0], Some(&token), Some(&foreign_cert)).await {
        Err(e) => Err(e.to_string()),
        Ok(mut c) => status(&mut c).await.map(|_| ()),
    };
    assert!(
        foreign.is_err(),
        "a client cert from a foreign CA must fail"
    );
    println!("foreign client certificate: {}", foreign.unwrap_err());
    // A node certificate from another CA cannot join the peer protocol either.
    let foreign_node = ClientTls {
        ca: pki.join("ca.pem"),
        cert: Some(other.join("n2.pem")),
        key: Some(other.join("n2.key")),
    };
    let peer_token = mint_peer(&p.root_key(1));
    let r = match synapse::client::channel(&addrs[0], Some(&foreign_node)).await {
        Err(e) => Err(e.to_string()),
        Ok(ch) => inject_raft(ch, 1, 1_000, Some(&peer_token))
            .await
            .map_err(|s| format!("{:?}", s.code())),
    };
    assert!(
        r.is_err(),
        "a node cert from a foreign CA must not reach Peer"
    );

    // Peer RPCs over TLS without a client certificate: UNAUTHENTICATED,
    // even with a valid peer credential.
    let no_cert = synapse::client::channel(&addrs[0], Some(&good))
        .await
        .expect("TLS channel with the CA");
    let mut peer = pb::peer_client::PeerClient::new(no_cert.clone());
    let r = peer
        .clock_sample(peer_request(
            pb::ClockSampleRequest {
                from: 9,
                t1_micros: 1,
            },
            Some(&peer_token),
        ))
        .await;
    assert_eq!(r.expect_err("no client cert").code(), Code::Unauthenticated);
    let r = peer
        .forward_invoke(peer_request(forward(&token, "tls"), Some(&peer_token)))
        .await;
    assert_eq!(r.expect_err("no client cert").code(), Code::Unauthenticated);
    // Peer.Probe takes no credential (its caller lost it with its data),
    // but over TLS it still needs a certificate from the cluster CA.
    let r = peer
        .probe(peer_request(pb::ProbeRequest { id: 1 }, Some(&peer_token)))
        .await;
    assert_eq!(r.expect_err("no client cert").code(), Code::Unauthenticated);
    let before = {
        let mut c = Client::connect_tls(&addrs[0], Some(&token), Some(&good))
            .await
            .expect("connect");
        status(&mut c).await.expect("status")
    };
    let r = inject_raft(no_cert, 1, before.term + 1_000, Some(&peer_token)).await;
    assert_eq!(r.expect_err("no client cert").code(), Code::Unauthenticated);

    // With the cluster's client certificate but no peer credential: still
    // refused, so the client certificate handed to tools cannot drive Raft.
    let client_cert = synapse::client::channel(&addrs[0], Some(&tls(&pki, Some("client"))))
        .await
        .expect("TLS channel with the client cert");
    let r = inject_raft(client_cert.clone(), 1, before.term + 1_000, None).await;
    assert_eq!(r.expect_err("no credential").code(), Code::Unauthenticated);
    // And with both, the RPC is admitted (the check is not a blanket deny).
    let mut peer = pb::peer_client::PeerClient::new(client_cert);
    peer.clock_sample(peer_request(
        pb::ClockSampleRequest {
            from: 9,
            t1_micros: 1,
        },
        Some(&peer_token),
    ))
    .await
    .expect("cert + credential admits a clock sample");
    let probe = peer
        .probe(peer_request(pb::ProbeRequest { id: 1 }, None))
        .await
        .expect("a client certificate alone admits a probe")
        .into_inner();
    assert!(probe.established && probe.voter, "{probe:?}");

    // Nothing injected took effect: the term did not jump.
    let mut c = Client::connect_tls(&addrs[0], Some(&token), Some(&good))
        .await
        .expect("connect");
    let after = status(&mut c).await.expect("status");
    assert!(
        after.term < before.term + 1_000,
        "an injected Raft term was adopted: {} → {}",
        before.term,
        after.term
    );
}

fn mint_peer(key: &RootKey) -> String {
    key.mint(
        "test-peer",
        &[Grant {
            skill: "_peer".into(),
            instance: "*".into(),
            methods: vec![],
            read_only: false,
        }],
        None,
    )
    .expect("mint peer token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plaintext_peer_rpcs_need_the_peer_credential() {
    let mut p = Procs::new();
    p.start(&[1], |_, _| Vec::new());
    let addr = p.addrs()[0].clone();
    let token = p.root_token(1).await;
    let key = p.root_key(1);
    let endpoint = format!("http://{addr}");
    let mut c = wait_for("node up", || {
        let (endpoint, token) = (endpoint.clone(), token.clone());
        async move {
            let mut c = Client::connect(&endpoint, Some(&token))
                .await
                .map_err(|e| e.to_string())?;
            let s = status(&mut c).await?;
            if s.role == "leader" {
                Ok(c)
            } else {
                Err(format!("role {}", s.role))
            }
        }
    })
    .await;
    let before = status(&mut c).await.expect("status");
    let channel = synapse::client::channel(&endpoint, None)
        .await
        .expect("plaintext channel");
    let mut peer = pb::peer_client::PeerClient::new(channel.clone());

    // ForwardInvoke carrying a valid client token but no peer credential.
    let r = peer
        .forward_invoke(peer_request(forward(&token, "fwd"), None))
        .await;
    assert_eq!(
        r.expect_err("no credential").code(),
        Code::Unauthenticated,
        "ForwardInvoke without a peer credential"
    );
    // A garbage credential, and one from another root key.
    let r = peer
        .forward_invoke(peer_request(forward(&token, "fwd"), Some("garbage")))
        .await;
    assert_eq!(r.expect_err("garbage").code(), Code::Unauthenticated);
    let stranger = mint_peer(&RootKey::generate());
    let r = peer
        .forward_invoke(peer_request(forward(&token, "fwd"), Some(&stranger)))
        .await;
    assert_eq!(r.expect_err("foreign key").code(), Code::Unauthenticated);
    // A genuine token without the peer grant: PERMISSION_DENIED.
    let counter_only = key
        .mint(
            "app",
            &[Grant {
                skill: "counter".into(),
                instance: "*".into(),
                methods: vec![],
                read_only: false,
            }],
            None,
        )
        .expect("mint");
    let r = peer
        .forward_invoke(peer_request(forward(&token, "fwd"), Some(&counter_only)))
        .await;
    assert_eq!(r.expect_err("no peer grant").code(), Code::PermissionDenied);
    // Nothing was applied.
    let r = c
        .skills
        .get_state(pb::GetStateRequest {
            skill: "counter".into(),
            instance: "fwd".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        r.expect_err("no state").code(),
        Code::NotFound,
        "a refused ForwardInvoke must not create state"
    );

    // Peer.Raft without the credential: refused, and the forged higher term
    // is not adopted.
    let r = inject_raft(channel.clone(), 1, before.term + 1_000, None).await;
    assert_eq!(r.expect_err("no credential").code(), Code::Unauthenticated);
    let r = peer
        .clock_sample(peer_request(
            pb::ClockSampleRequest {
                from: 9,
                t1_micros: 1,
            },
            None,
        ))
        .await;
    assert_eq!(r.expect_err("no credential").code(), Code::Unauthenticated);
    let after = status(&mut c).await.expect("status");
    assert_eq!(
        (after.term, after.role.as_str()),
        (before.term, "leader"),
        "an unauthenticated Raft frame changed the node's term or role"
    );
    assert_eq!(after.applied_index, before.applied_index);

    // With the peer credential, the same ForwardInvoke is served.
    let peer_token = mint_peer(&key);
    let r = peer
        .forward_invoke(peer_request(forward(&token, "fwd"), Some(&peer_token)))
        .await
        .expect("the peer credential admits ForwardInvoke");
    assert_eq!(r.into_inner().version, 1);
}
