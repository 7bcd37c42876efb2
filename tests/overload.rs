//! Overload (issue #8 item 6) on a real `synapse serve` process.
//!
//! 1. Capacity: a few closed-loop clients for a short, bounded time.
//! 2. Overload: many more concurrent clients (640, on 16 HTTP/2
//!    connections, bounded in count and time) on a few hot instances.
//!    Built with `--release` this offers ~8-11x the measured capacity on a
//!    shared 2-core machine; a debug build (client and server both slower)
//!    reaches only ~3x, which still exercises every bound.
//!    Callers beyond capacity must get RESOURCE_EXHAUSTED (never a hang or
//!    another error), admitted requests still complete, and the server's
//!    resident memory stays under an explicit bound.
//! 3. After the load stops, a normal invoke succeeds again (bounded wait).
//!
//! Assertions are on counts, status codes and memory; latencies (p50/p99
//! of accepted and rejected calls) and recovery time are printed as
//! figures, never asserted (machines are noisy). Reproduce the recorded
//! figures with `cargo test --release --test overload -- --nocapture`.
//!
//! The node runs with `max_inflight_invokes = 64` and `mailbox_capacity =
//! 16` (config file) so that a test process can offer more than the bounds
//! without thousands of sockets; the mechanism is the same at the defaults.

mod proc;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proc::*;
use synapse::client::Client;
use tonic::Code;

/// Closed-loop clients that measure capacity: half the in-flight bound, on
/// 64 instances, so the node is busy but nothing is refused.
const CAPACITY_CLIENTS: usize = 8;
const CAPACITY_RUN: Duration = Duration::from_secs(3);
/// Concurrent callers during the overload phase (bounded). Enough that,
/// with refusals answered at the front door, the offered load is >= 10x
/// the measured capacity; they share `CONNECTIONS` HTTP/2 connections, so
/// the test needs no raised file-descriptor limit.
const OVERLOAD_CLIENTS: usize = 640;
/// HTTP/2 connections the callers of one phase multiplex their requests on.
const CONNECTIONS: usize = 16;
/// The requirement: offer at least this multiple of the measured capacity.
/// Reported, not asserted: the ratio is a rate, and rates on a shared
/// machine depend on who else is running.
const MIN_OFFERED_RATIO: f64 = 10.0;
const OVERLOAD_RUN: Duration = Duration::from_secs(6);
/// Hot instances the overload targets (their mailboxes fill first).
const HOT_INSTANCES: usize = 4;
/// Generous RSS bound for one node under this load: a leak or an unbounded
/// queue of 320 callers' requests would show as growth well past it, while
/// the sled page cache (bounded at 256 MiB) plus runtime stays far under it.
const MAX_RSS_KIB: u64 = 768 * 1024;

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[derive(Default)]
struct Results {
    ok: Vec<Duration>,
    rejected: Vec<Duration>,
    /// RESOURCE_EXHAUSTED by which bound refused it (from the message).
    rejected_by: BTreeMap<&'static str, u64>,
    other: BTreeMap<String, u64>,
}

/// Which bound produced a RESOURCE_EXHAUSTED: the node-wide in-flight
/// bound (checked first, at the front door) or a later one.
fn refusal_kind(message: &str) -> &'static str {
    if message.contains("invocations already in progress") {
        "inflight"
    } else if message.contains("mailbox") {
        "mailbox"
    } else {
        "other"
    }
}

async fn caller(
    k: usize,
    client: Client,
    instances: usize,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Results>>,
) {
    let mut client = client;
    let mut local = Results::default();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let instance = format!("hot{}", (k + seq as usize) % instances);
        let req = incr_request(&instance, &format!("o{k}-{seq}"));
        seq += 1;
        let t = Instant::now();
        match tokio::time::timeout(RPC_TIMEOUT, client.skills.invoke(req)).await {
            Ok(Ok(_)) => local.ok.push(t.elapsed()),
            Ok(Err(s)) if s.code() == Code::ResourceExhausted => {
                local.rejected.push(t.elapsed());
                *local
                    .rejected_by
                    .entry(refusal_kind(s.message()))
                    .or_default() += 1;
                // A rejected caller backs off briefly, as a client should.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok(Err(s)) => *local.other.entry(format!("{:?}", s.code())).or_default() += 1,
            Err(_) => *local.other.entry("client-timeout".into()).or_default() += 1,
        }
    }
    let mut r = out.lock().unwrap();
    r.ok.extend(local.ok);
    r.rejected.extend(local.rejected);
    for (k, v) in local.rejected_by {
        *r.rejected_by.entry(k).or_default() += v;
    }
    for (k, v) in local.other {
        *r.other.entry(k).or_default() += v;
    }
}

async fn run_phase(
    addr: &str,
    token: &str,
    clients: usize,
    instances: usize,
    run: Duration,
    pid: u32,
) -> (Results, Duration, u64) {
    // A handful of HTTP/2 connections shared by the callers, like a real
    // client pool; each caller has its own stream per request.
    let mut conns = Vec::new();
    for _ in 0..clients.min(CONNECTIONS) {
        conns.push(connect(addr, token).await.expect("connect"));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let out = Arc::new(Mutex::new(Results::default()));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|k| {
            tokio::spawn(caller(
                k,
                conns[k % conns.len()].clone(),
                instances,
                stop.clone(),
                out.clone(),
            ))
        })
        .collect();
    let mut max_rss = 0;
    while started.elapsed() < run {
        if let Some(r) = rss_kib(pid) {
            max_rss = max_rss.max(r);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(HANG_GUARD, t)
            .await
            .expect("caller stops within the hang guard")
            .expect("caller task");
    }
    let elapsed = started.elapsed();
    let mut r = Arc::try_unwrap(out)
        .ok()
        .expect("callers done")
        .into_inner()
        .unwrap();
    r.ok.sort();
    r.rejected.sort();
    (r, elapsed, max_rss)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_quickly_memory_stays_bounded_and_service_recovers() {
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("node.toml");
    std::fs::write(&cfg, "max_inflight_invokes = 64\nmailbox_capacity = 16\n").unwrap();
    let cluster = Cluster::start_static(&[1], &["--config", cfg.to_str().unwrap()]);
    let node = cluster.node(1);
    let pid = node.pid().expect("running");
    let token = cluster.token(1).await;
    let addr = node.addr.clone();
    wait_leader(std::slice::from_ref(&addr), &token).await;
    let rss_start = rss_kib(pid).unwrap_or(0);

    let (cap, cap_time, _) =
        run_phase(&addr, &token, CAPACITY_CLIENTS, 64, CAPACITY_RUN, pid).await;
    assert!(
        cap.other.is_empty(),
        "errors at normal load: {:?}",
        cap.other
    );
    assert!(!cap.ok.is_empty(), "no request succeeded at normal load");
    let capacity = cap.ok.len() as f64 / cap_time.as_secs_f64();

    let (ov, ov_time, max_rss) = run_phase(
        &addr,
        &token,
        OVERLOAD_CLIENTS,
        HOT_INSTANCES,
        OVERLOAD_RUN,
        pid,
    )
    .await;
    let offered = (ov.ok.len() + ov.rejected.len()) as f64 / ov_time.as_secs_f64();

    // Recovery: the first normal invoke after the load stops.
    let stopped = Instant::now();
    let mut c = connect(&addr, &token).await.expect("connect");
    let mut recovered = None;
    let mut n = 0;
    while stopped.elapsed() < HANG_GUARD {
        n += 1;
        if c.skills
            .invoke(incr_request("after", &format!("after-{n}")))
            .await
            .is_ok()
        {
            recovered = Some(stopped.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_end = rss_kib(pid).unwrap_or(0);
    let overloaded_metric = node.metric("synapse_overloaded_total").unwrap_or(0);

    println!(
        "overload: capacity {capacity:.0} ok/s with {CAPACITY_CLIENTS} clients (p50 {:?}, p99 {:?}); \
         offered {offered:.0} req/s with {OVERLOAD_CLIENTS} clients on {HOT_INSTANCES} instances \
         ({:.1}x capacity) for {ov_time:?}: accepted {} (p50 {:?}, p99 {:?}), rejected \
         RESOURCE_EXHAUSTED {} {:?} (p50 {:?}, p99 {:?}), other {:?}; server overloaded_total \
         {overloaded_metric}; RSS start {rss_start} KiB, max during overload {max_rss} KiB, end \
         {rss_end} KiB; first normal invoke {recovered:?} after the load stopped",
        percentile(&cap.ok, 0.5),
        percentile(&cap.ok, 0.99),
        offered / capacity,
        ov.ok.len(),
        percentile(&ov.ok, 0.5),
        percentile(&ov.ok, 0.99),
        ov.rejected.len(),
        ov.rejected_by,
        percentile(&ov.rejected, 0.5),
        percentile(&ov.rejected, 0.99),
        ov.other,
    );
    if offered / capacity < MIN_OFFERED_RATIO {
        println!(
            "overload: NOTE offered only {:.1}x capacity on this run (requirement {MIN_OFFERED_RATIO}x); \
             the load generator shares the machine with the server",
            offered / capacity
        );
    }
    assert!(
        !ov.rejected.is_empty(),
        "no caller was refused with RESOURCE_EXHAUSTED under overload"
    );
    assert!(!ov.ok.is_empty(), "no request was admitted under overload");
    assert!(
        ov.other.is_empty(),
        "overload produced errors other than RESOURCE_EXHAUSTED: {:?}",
        ov.other
    );
    assert!(
        max_rss > 0 && max_rss < MAX_RSS_KIB,
        "server RSS {max_rss} KiB (bound {MAX_RSS_KIB} KiB)"
    );
    assert!(
        recovered.is_some(),
        "no normal invoke succeeded within {HANG_GUARD:?} after the load stopped"
    );
}
