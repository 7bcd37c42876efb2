//! `synapse bench --workload register|counter --record-history FILE`: a
//! bounded client workload whose every operation is recorded as a
//! [`synapse::history::Operation`], for linearizability checking.
//!
//! Clients are bound to keys so that at most [`MAX_CLIENTS_PER_KEY`] share
//! one: a checker's search grows with the number of operations that overlap
//! on one key, so contention is kept high enough to matter and low enough to
//! check. Each client has one operation in flight; after an operation whose
//! outcome is unknown the client continues under a fresh client number,
//! because the unknown operation may still take effect at any later instant
//! and so stays "outstanding" forever for the checker.
//!
//! Outcome classification follows what the server promises: a status that
//! is only ever returned before anything was proposed is a definite `Fail`
//! (INVALID_ARGUMENT, PERMISSION_DENIED, UNAUTHENTICATED, NOT_FOUND,
//! FAILED_PRECONDITION, RESOURCE_EXHAUSTED); everything else (UNAVAILABLE,
//! DEADLINE_EXCEEDED, ABORTED, INTERNAL, a transport error, no answer within
//! the per-request deadline) is `Unknown`.
//!
//! Reads are skill read methods (`kv get`, `counter get`), which the server
//! serves after a Raft ReadIndex barrier: its linearizable reads.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::ValueEnum;
use serde_json::{json, Value};
use synapse::client::{v1 as pb, Client};
use synapse::history::{Call, Operation, Outcome};
use tokio::time::Instant;

use super::Rng;
use tonic::Code;

/// A checker's cost grows quickly with the number of operations that
/// overlap on one key; the issue asks for at most 8 clients per key.
pub const MAX_CLIENTS_PER_KEY: usize = 8;
/// Register values are random 53-bit integers, so every write's value is
/// unique in practice (and exact in JSON's f64 numbers). A write whose
/// outcome is unknown and whose value no read ever returned can then be
/// dropped by the checker instead of branched on, and a value that was read
/// has exactly one possible source. With a small value range (an earlier
/// 0..1000) a long run reused values, the checker could prune nothing, and a
/// rolling-restart history of 17 k ops on one key exhausted its budget.
const REGISTER_VALUE_BITS: u32 = 53;
/// Operations buffered before the history file is written to; the file is
/// streamed so that a killed recorder still leaves what it saw.
const FLUSH_EVERY: usize = 256;
/// Upper bound on recorded operations, whatever --ops says: a history is
/// held and checked in memory.
pub const MAX_RECORDED_OPS: u64 = 5_000_000;
/// Pause after an unknown outcome, doubled per consecutive one up to the
/// maximum: a down node answers instantly and would flood the history.
const UNKNOWN_BACKOFF_MIN: Duration = Duration::from_millis(50);
const UNKNOWN_BACKOFF_MAX: Duration = Duration::from_millis(800);
/// Per key, the final read after the run is retried this long at most.
const FINAL_READ_BOUND: Duration = Duration::from_secs(60);

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// kv put / get / cas of small integers on one key per instance.
    Register,
    /// counter incr (by 1, returns the new value) / get.
    Counter,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Register => "register",
            Workload::Counter => "counter",
        }
    }
}

/// What the recorder needs from the bench options.
pub struct RecordOpts {
    pub workload: Workload,
    pub endpoints: Vec<String>,
    pub token: Option<String>,
    pub clients: usize,
    pub clients_per_key: usize,
    pub duration: Duration,
    pub ops: Option<u64>,
    pub timeout: Duration,
    pub prefix: String,
    pub file: PathBuf,
    pub final_read: bool,
    pub stop_file: Option<PathBuf>,
    pub quiet: bool,
}

/// Totals of one recording.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub ops: u64,
    pub ok: u64,
    pub fail: u64,
    pub unknown: u64,
    pub keys: usize,
}

fn classify(code: Code) -> Outcome {
    match code {
        Code::InvalidArgument
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::NotFound
        | Code::FailedPrecondition
        | Code::ResourceExhausted => Outcome::Fail,
        _ => Outcome::Unknown,
    }
}

/// The key a client works on: skill, instance, history key.
struct Target {
    skill: &'static str,
    instance: String,
    key: String,
}

/// kv key inside the instance; one register per instance.
const KV_KEY: &str = "r";

fn target(workload: Workload, prefix: &str, k: usize) -> Target {
    let instance = format!("{prefix}-{k}");
    match workload {
        Workload::Register => Target {
            skill: "kv",
            key: format!("kv/{instance}/{KV_KEY}"),
            instance,
        },
        Workload::Counter => Target {
            skill: "counter",
            key: format!("counter/{instance}"),
            instance,
        },
    }
}

fn pick_call(workload: Workload, rng: &mut Rng, last_read: Option<Option<i64>>) -> Call {
    let r = rng.next();
    match workload {
        Workload::Register => match r % 4 {
            0 | 1 => Call::Read,
            2 => Call::Write {
                value: (rng.next() >> (64 - REGISTER_VALUE_BITS)) as i64,
            },
            _ => Call::Cas {
                // What this client last saw, so that CAS succeeds often.
                expected: last_read.unwrap_or(None),
                new: (rng.next() >> (64 - REGISTER_VALUE_BITS)) as i64,
            },
        },
        Workload::Counter => match r % 10 {
            0..=2 => Call::Read,
            _ => Call::Increment { by: 1 },
        },
    }
}

fn request(workload: Workload, t: &Target, call: Call) -> pb::InvokeRequest {
    let (method, payload) = match (workload, call) {
        (Workload::Register, Call::Read) => ("get", json!({ "key": KV_KEY })),
        (Workload::Register, Call::Write { value }) => {
            ("put", json!({ "key": KV_KEY, "value": value }))
        }
        (Workload::Register, Call::Cas { expected, new }) => (
            "cas",
            json!({ "key": KV_KEY, "expected": expected, "value": new }),
        ),
        (Workload::Counter, Call::Increment { by }) => ("incr", json!({ "by": by })),
        // Counter reads; the workloads never mix the other calls in.
        (_, _) => ("get", Value::Null),
    };
    pb::InvokeRequest {
        skill: t.skill.into(),
        instance: t.instance.clone(),
        method: method.into(),
        payload: if payload.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(&payload).expect("a JSON value always encodes")
        },
        request_id: String::new(),
        expected_version: None,
    }
}

/// The value a successful reply carries for the history.
fn ok_value(call: Call, reply: &[u8]) -> Outcome {
    let v: Value = serde_json::from_slice(reply).unwrap_or(Value::Null);
    match call {
        Call::Read | Call::Increment { .. } => Outcome::Ok {
            value: v.get("value").and_then(Value::as_i64),
        },
        Call::Write { .. } | Call::Cas { .. } => Outcome::Ok { value: None },
    }
}

async fn one_call(
    conn: &mut Client,
    workload: Workload,
    t: &Target,
    call: Call,
    timeout: Duration,
) -> Outcome {
    let req = request(workload, t, call);
    match tokio::time::timeout(timeout, conn.skills.invoke(req)).await {
        Ok(Ok(resp)) => ok_value(call, &resp.into_inner().reply),
        Ok(Err(status)) => classify(status.code()),
        Err(_) => Outcome::Unknown,
    }
}

/// Appends operations to the history file as they complete.
struct Sink {
    out: std::io::BufWriter<std::fs::File>,
    pending: Vec<Operation>,
    summary: Summary,
    error: Option<String>,
}

impl Sink {
    fn push(&mut self, op: Operation) {
        self.summary.ops += 1;
        match op.outcome {
            Outcome::Ok { .. } => self.summary.ok += 1,
            Outcome::Fail => self.summary.fail += 1,
            Outcome::Unknown => self.summary.unknown += 1,
        }
        self.pending.push(op);
        if self.pending.len() >= FLUSH_EVERY {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let ops = std::mem::take(&mut self.pending);
        if let Err(e) = synapse::history::write_jsonl(&mut self.out, &ops) {
            self.error.get_or_insert_with(|| e.to_string());
        }
    }
}

fn meta_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".meta.json");
    PathBuf::from(s)
}

pub async fn run(o: RecordOpts) -> Result<Summary, String> {
    if o.clients == 0 || o.clients > 1024 {
        return Err("--clients must be 1 to 1024".into());
    }
    if !(1..=MAX_CLIENTS_PER_KEY).contains(&o.clients_per_key) {
        return Err(format!(
            "--clients-per-key must be 1 to {MAX_CLIENTS_PER_KEY}"
        ));
    }
    if o.duration.is_zero() {
        return Err("--duration must be positive (every run is bounded in time)".into());
    }
    let max_ops = o.ops.unwrap_or(MAX_RECORDED_OPS).min(MAX_RECORDED_OPS);
    let file = std::fs::File::create(&o.file)
        .map_err(|e| format!("cannot create {}: {e}", o.file.display()))?;
    let keys = o.clients.div_ceil(o.clients_per_key);

    let mut conns = Vec::new();
    for ep in &o.endpoints {
        match Client::connect(ep, o.token.as_deref()).await {
            Ok(c) => conns.push(c),
            Err(e) => eprintln!("warning: {e}; the recorder skips this endpoint"),
        }
    }
    if conns.is_empty() {
        return Err("no endpoint could be reached".into());
    }

    // One monotonic clock for the whole history; the wall-clock instant of
    // its zero goes to a sidecar so that fault times can be placed on it.
    let start = Instant::now();
    let start_unix_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let meta = json!({
        "start_unix_ns": start_unix_ns,
        "workload": o.workload.name(),
        "endpoints": o.endpoints,
        "clients": o.clients,
        "clients_per_key": o.clients_per_key,
        "keys": keys,
        "timeout_ms": o.timeout.as_millis() as u64,
    });
    std::fs::write(meta_path(&o.file), meta.to_string() + "\n")
        .map_err(|e| format!("cannot write {}: {e}", meta_path(&o.file).display()))?;
    let ns = move || start.elapsed().as_nanos() as u64;

    let sink = Arc::new(Mutex::new(Sink {
        out: std::io::BufWriter::new(file),
        pending: Vec::new(),
        summary: Summary {
            keys,
            ..Summary::default()
        },
        error: None,
    }));
    let issued = Arc::new(AtomicU64::new(0));
    let next_client = Arc::new(AtomicU64::new(o.clients as u64));
    let end = start + o.duration;
    // `--stop-file`: the fault scripts end the run early once healed; the
    // duration stays the bound.
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = o.stop_file.clone().map(|path| {
        let stopped = stopped.clone();
        tokio::spawn(async move {
            while !path.exists() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            stopped.store(true, Ordering::Relaxed);
        })
    });

    let mut handles = Vec::new();
    for i in 0..o.clients {
        // Each client starts on one endpoint and moves to the next after
        // an unknown outcome, as a real client fails over.
        let conns = conns.clone();
        let mut at = i % conns.len();
        let t = target(o.workload, &o.prefix, i / o.clients_per_key);
        let (sink, issued, next_client) = (sink.clone(), issued.clone(), next_client.clone());
        let stopped = stopped.clone();
        let (workload, timeout) = (o.workload, o.timeout);
        handles.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((i as u64 + 1) * 0x1000_0000_01B3));
            let mut client = i as u64;
            let mut last_read: Option<Option<i64>> = None;
            let mut backoff = UNKNOWN_BACKOFF_MIN;
            while Instant::now() < end
                && !stopped.load(Ordering::Relaxed)
                && issued.fetch_add(1, Ordering::Relaxed) < max_ops
            {
                let call = pick_call(workload, &mut rng, last_read);
                let invoke_ns = ns();
                let outcome = one_call(&mut conns[at].clone(), workload, &t, call, timeout).await;
                let complete_ns = ns();
                if let (Call::Read, Outcome::Ok { value }) = (call, outcome) {
                    last_read = Some(value);
                }
                sink.lock()
                    .expect("no sink holder panics while holding the lock")
                    .push(Operation {
                        client,
                        key: t.key.clone(),
                        call,
                        invoke_ns,
                        complete_ns,
                        outcome,
                    });
                if outcome == Outcome::Unknown {
                    // The unknown operation stays open forever: continue
                    // as a new client so each client has one op open.
                    client = next_client.fetch_add(1, Ordering::Relaxed);
                    at = (at + 1) % conns.len();
                    // Do not hammer a cluster that is down: every unknown
                    // operation also multiplies the checker's work.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(UNKNOWN_BACKOFF_MAX);
                } else {
                    backoff = UNKNOWN_BACKOFF_MIN;
                }
            }
        }));
    }

    let progress = (!o.quiet).then(|| {
        let sink = sink.clone();
        let wname = o.workload.name();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut prev = 0;
            loop {
                tick.tick().await;
                let s = sink
                    .lock()
                    .expect("no sink holder panics while holding the lock")
                    .summary
                    .clone();
                eprintln!(
                    "[record {wname} +{:>3}s] {:>6} ops/s ok  {} ops, {} ok, {} fail, {} unknown",
                    start.elapsed().as_secs(),
                    s.ok - prev,
                    s.ops,
                    s.ok,
                    s.fail,
                    s.unknown
                );
                prev = s.ok;
            }
        })
    });

    // Clients stop issuing at `end`; one in flight then has at most
    // `timeout` to finish (its outcome is then recorded as unknown).
    let hard_stop = end + o.timeout + Duration::from_secs(2);
    for h in handles {
        let abort = h.abort_handle();
        if tokio::time::timeout_at(hard_stop, h).await.is_err() {
            abort.abort();
        }
    }
    if let Some(p) = progress {
        p.abort();
    }
    if let Some(w) = watcher {
        w.abort();
    }

    if o.final_read {
        let id = next_client.fetch_add(1_000_000, Ordering::Relaxed) + 1_000_000;
        final_reads(&o, &conns, keys, id, &sink, ns).await?;
    }

    let mut s = sink
        .lock()
        .expect("no sink holder panics while holding the lock");
    s.flush();
    if let Err(e) = s.out.flush() {
        s.error.get_or_insert_with(|| e.to_string());
    }
    if let Some(e) = &s.error {
        return Err(format!("cannot write {}: {e}", o.file.display()));
    }
    Ok(s.summary.clone())
}

/// After the run, one successful read of every key, recorded as part of the
/// history: the checker then proves that every acknowledged write is still
/// visible (a lost write cannot be explained). Retried on each endpoint in
/// turn; failed attempts are recorded as what they were.
async fn final_reads(
    o: &RecordOpts,
    conns: &[Client],
    keys: usize,
    first_client: u64,
    sink: &Arc<Mutex<Sink>>,
    ns: impl Fn() -> u64,
) -> Result<(), String> {
    let mut client = first_client;
    for k in 0..keys {
        let t = target(o.workload, &o.prefix, k);
        let deadline = Instant::now() + FINAL_READ_BOUND;
        let mut attempt = 0usize;
        loop {
            let mut conn = conns[attempt % conns.len()].clone();
            attempt += 1;
            let invoke_ns = ns();
            let outcome = one_call(&mut conn, o.workload, &t, Call::Read, o.timeout).await;
            let op = Operation {
                client,
                key: t.key.clone(),
                call: Call::Read,
                invoke_ns,
                complete_ns: ns(),
                outcome,
            };
            sink.lock()
                .expect("no sink holder panics while holding the lock")
                .push(op);
            if let Outcome::Ok { value } = outcome {
                if !o.quiet {
                    eprintln!("final read {}: {value:?}", t.key);
                }
                break;
            }
            client += 1;
            if Instant::now() >= deadline {
                return Err(format!(
                    "final read of {} did not succeed within {FINAL_READ_BOUND:?}",
                    t.key
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        client += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definite_failures_only_when_nothing_was_proposed() {
        for c in [
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::ResourceExhausted,
        ] {
            assert_eq!(classify(c), Outcome::Fail, "{c:?}");
        }
        for c in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::Internal,
            Code::Unknown,
            Code::Cancelled,
        ] {
            assert_eq!(classify(c), Outcome::Unknown, "{c:?}");
        }
    }

    #[test]
    fn requests_and_replies() {
        let t = target(Workload::Register, "p", 3);
        assert_eq!(t.key, "kv/p-3/r");
        let r = request(
            Workload::Register,
            &t,
            Call::Cas {
                expected: None,
                new: 4,
            },
        );
        assert_eq!(r.method, "cas");
        let p: Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(p, json!({"key": "r", "expected": null, "value": 4}));
        assert_eq!(
            ok_value(Call::Read, br#"{"key":"r","value":7,"version":2}"#),
            Outcome::Ok { value: Some(7) }
        );
        assert_eq!(
            ok_value(Call::Read, br#"{"key":"r","value":null,"version":0}"#),
            Outcome::Ok { value: None }
        );
        let c = target(Workload::Counter, "p", 0);
        assert_eq!(c.key, "counter/p-0");
        let r = request(Workload::Counter, &c, Call::Increment { by: 1 });
        assert_eq!((r.skill.as_str(), r.method.as_str()), ("counter", "incr"));
        assert_eq!(
            ok_value(Call::Increment { by: 1 }, br#"{"value":12}"#),
            Outcome::Ok { value: Some(12) }
        );
    }
}
