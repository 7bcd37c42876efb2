//! `synapse bench`: a bounded load generator over gRPC, for a Synapse cluster
//! or (same workload shape, same concurrency model) for etcd's KV API.
//!
//! Model: `--clients N` tasks, each with one request in flight at a time,
//! spread round-robin over the endpoints and over a few shared HTTP/2 channels
//! per endpoint. Closed loop by default; with `--rate R` each client follows a
//! fixed schedule of intended start times (R/N per client) and latency is
//! measured from the intended start, so a stalled server is charged for the
//! requests it delayed (no coordinated omission). Every run is bounded by time
//! (`--warmup` + `--duration`, plus at most `--timeout` for requests already in
//! flight) and optionally by count (`--ops`).

mod etcd;
mod record;
mod svg;

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use synapse::client::{v1 as pb, Client, ClientTls};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum InstanceOrder {
    Random,
    Sequential,
}

/// Picks the instance of each operation (see `BenchOpts::instance_order`).
struct InstancePicker {
    order: InstanceOrder,
    instances: u64,
    next: AtomicU64,
}

impl InstancePicker {
    fn pick(&self, random: u64) -> u64 {
        match self.order {
            InstanceOrder::Random => random % self.instances,
            InstanceOrder::Sequential => self.next.fetch_add(1, Ordering::Relaxed) % self.instances,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    Synapse,
    Etcd,
}

#[derive(Args, Debug, Clone)]
pub struct BenchOpts {
    /// System under test.
    #[arg(long, value_enum, default_value = "synapse")]
    pub target: Target,
    /// Comma-separated gRPC endpoints (Synapse nodes, or etcd members such as
    /// http://127.0.0.1:2379). Clients are spread over them round-robin.
    #[arg(long, default_value = "http://127.0.0.1:50051", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// File holding the capability token (Synapse; default
    /// ./synapse-data/root.token when present).
    #[arg(long, env = "SYNAPSE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Capability token text (overrides --token-file).
    #[arg(long, env = "SYNAPSE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Cluster CA (PEM) of a TLS cluster: endpoints are dialled over https.
    #[arg(long, env = "SYNAPSE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Concurrent clients (1 to 1024), each with one request in flight.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Run once per client count, one after another, e.g. 1,8,64,256
    /// (overrides --clients).
    #[arg(long, value_delimiter = ',')]
    pub sweep: Option<Vec<usize>>,
    /// Measured time per run, e.g. 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Also stop after this many measured operations (whichever comes first).
    #[arg(long)]
    pub ops: Option<u64>,
    /// Operation mix by weight: incr (counter), put and get (kv), read
    /// (counter get, read-only). For etcd: incr/put are Put, get/read Range.
    #[arg(long, default_value = "incr=80,put=10,get=10")]
    pub mix: String,
    /// Value size in bytes for put (and, for etcd, for incr's Put).
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Number of distinct instances (keys) the operations are spread over.
    #[arg(long, default_value_t = 1000)]
    pub instances: u64,
    /// How each operation picks its instance: `random` (uniform), or
    /// `sequential` (instance 0, 1, 2, ... across all clients, wrapping at
    /// --instances), which creates --instances distinct instances in as many
    /// writes (the passivation memory bound is measured this way).
    #[arg(long, value_enum, default_value_t = InstanceOrder::Random)]
    pub instance_order: InstanceOrder,
    /// Instance / key name prefix.
    #[arg(long, default_value = "bench")]
    pub prefix: String,
    /// Target total ops/s (open loop, latency from the intended start).
    /// Without it, clients run closed loop as fast as the system answers.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Unmeasured warm-up before each run.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Per-request deadline (a request past it counts as DeadlineExceeded).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// HTTP/2 connections per endpoint shared by the clients (default: one
    /// per 64 clients per endpoint, at least 1, at most 8).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Runtime worker threads for the generator (1 = one current-thread
    /// runtime, the lightest footprint on a small machine).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Name for this target in tables, JSON and plots.
    #[arg(long)]
    pub label: Option<String>,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG plot here: per-second p50/p99 over time for each run,
    /// plus throughput and p99 vs clients when there are several runs.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Do not run: read these `--json` result files and draw them together
    /// (throughput and latency vs clients) into --plot.
    #[arg(long, value_delimiter = ',')]
    pub plot_from: Option<Vec<PathBuf>>,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Record a history for linearizability checking instead of measuring
    /// latency: register = kv put/get/cas of small integers, counter =
    /// counter incr/get. Needs --record-history; uses --clients, --duration,
    /// --ops, --timeout, --prefix and --endpoints.
    #[arg(long, value_enum, requires = "record_history")]
    pub workload: Option<record::Workload>,
    /// Where the recorded history goes (JSON lines, `synapse::history`); a
    /// `FILE.meta.json` sidecar holds the wall-clock start of its timeline.
    #[arg(long, requires = "workload")]
    pub record_history: Option<PathBuf>,
    /// Clients sharing one key when recording (1 to 8).
    #[arg(long, default_value_t = 4)]
    pub clients_per_key: usize,
    /// Skip the final read of every key after a recording.
    #[arg(long)]
    pub no_final_read: bool,
    /// Recording: stop issuing operations once this file exists (the
    /// duration still bounds the run).
    #[arg(long, requires = "record_history")]
    pub stop_file: Option<PathBuf>,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration `{s}` (e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("invalid duration unit in `{s}`")),
    };
    if !secs.is_finite() || !(0.0..=7.0 * 86400.0).contains(&secs) {
        return Err(format!("duration `{s}` out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Op {
    Incr,
    Put,
    Get,
    Read,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Incr => "incr",
            Op::Put => "put",
            Op::Get => "get",
            Op::Read => "read",
        }
    }
}

/// Cumulative weights.
#[derive(Clone, Debug)]
struct Mix(Vec<(Op, u32)>);

impl Mix {
    fn parse(s: &str) -> Result<Mix, String> {
        let mut out = Vec::new();
        let mut total = 0u32;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, w) = part.split_once('=').unwrap_or((part, "1"));
            let op = match name.trim() {
                "incr" => Op::Incr,
                "put" => Op::Put,
                "get" => Op::Get,
                "read" => Op::Read,
                other => {
                    return Err(format!(
                        "unknown operation `{other}` in --mix (incr, put, get, read)"
                    ))
                }
            };
            let w: u32 = w
                .trim()
                .parse()
                .map_err(|_| format!("invalid weight in --mix: `{part}`"))?;
            if w > 0 {
                total = total.saturating_add(w);
                out.push((op, total));
            }
        }
        if out.is_empty() {
            return Err("--mix has no operation with a positive weight".into());
        }
        Ok(Mix(out))
    }

    fn pick(&self, r: u64) -> Op {
        let total = self.0.last().map(|x| x.1).unwrap_or(1) as u64;
        let x = (r % total) as u32;
        self.0
            .iter()
            .find(|(_, c)| x < *c)
            .map(|x| x.0)
            .expect("x is drawn below the last cumulative weight")
    }

    fn describe(&self) -> String {
        let mut prev = 0;
        self.0
            .iter()
            .map(|(op, c)| {
                let w = c - prev;
                prev = *c;
                format!("{}={w}", op.name())
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// xorshift64*: cheap, per-client, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// One connection to the system under test.
#[derive(Clone)]
enum Conn {
    // Boxed: the Synapse client bundles three service clients and would
    // make every `Conn` as large as itself.
    Synapse(Box<Client>),
    Etcd(etcd::Kv),
}

/// What each request sends, built once.
struct Payloads {
    prefix: String,
    incr: Vec<u8>,
    put: Vec<u8>,
    get: Vec<u8>,
    empty: Vec<u8>,
    value: Vec<u8>,
}

impl Payloads {
    fn new(prefix: &str, value_size: usize) -> Payloads {
        let value = "x".repeat(value_size);
        Payloads {
            prefix: prefix.to_string(),
            incr: br#"{"by":1}"#.to_vec(),
            put: serde_json::to_vec(&json!({"key": "k", "value": value}))
                .expect("a JSON object of strings always encodes"),
            get: br#"{"key":"k"}"#.to_vec(),
            empty: Vec::new(),
            value: value.into_bytes(),
        }
    }
}

impl Conn {
    async fn call(&mut self, op: Op, inst: u64, p: &Payloads) -> Result<(), tonic::Status> {
        match self {
            Conn::Synapse(c) => {
                let (skill, method, payload) = match op {
                    Op::Incr => ("counter", "incr", &p.incr),
                    Op::Put => ("kv", "put", &p.put),
                    Op::Get => ("kv", "get", &p.get),
                    Op::Read => ("counter", "get", &p.empty),
                };
                c.skills
                    .invoke(pb::InvokeRequest {
                        skill: skill.into(),
                        instance: format!("{}-{inst}", p.prefix),
                        method: method.into(),
                        payload: payload.clone(),
                        request_id: String::new(),
                        expected_version: None,
                    })
                    .await
                    .map(|_| ())
            }
            Conn::Etcd(kv) => {
                let space = match op {
                    Op::Incr | Op::Read => "counter",
                    Op::Put | Op::Get => "kv",
                };
                let key = format!("{}/{space}/{inst}", p.prefix).into_bytes();
                match op {
                    Op::Incr | Op::Put => kv.put(key, p.value.clone()).await.map(|_| ()),
                    Op::Get | Op::Read => kv.range(key).await.map(|_| ()),
                }
            }
        }
    }
}

const HIST_MAX_US: u64 = 3_600_000_000;

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

/// Shared by the clients of one run (one uncontended lock per operation).
struct Recorder {
    all: Histogram<u64>,
    per_op: BTreeMap<&'static str, Histogram<u64>>,
    per_sec: Vec<(u64, Histogram<u64>)>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    last_error: Option<String>,
}

struct RunResult {
    clients: usize,
    elapsed: Duration,
    ok: u64,
    errors: BTreeMap<String, u64>,
    last_error: Option<String>,
    all: Histogram<u64>,
    per_op: BTreeMap<&'static str, Histogram<u64>>,
    per_sec: Vec<(u64, Histogram<u64>)>,
    warmup_ops: u64,
    /// Open loop: scheduled requests never sent because the clients were
    /// still behind schedule when the time was up.
    missed: u64,
}

impl RunResult {
    fn failed(&self) -> u64 {
        self.errors.values().sum()
    }
    fn throughput(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.ok as f64 / s
        } else {
            0.0
        }
    }
}

fn pct(h: &Histogram<u64>, q: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(q)
    }
}

fn lat_json(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50": pct(h, 0.5),
        "p90": pct(h, 0.9),
        "p99": pct(h, 0.99),
        "p999": pct(h, 0.999),
        "max": if h.is_empty() { 0 } else { h.max() },
        "mean": if h.is_empty() { 0.0 } else { (h.mean() * 10.0).round() / 10.0 },
    })
}

fn fmt_us(us: u64) -> String {
    if us >= 10_000_000 {
        format!("{:.1} s", us as f64 / 1e6)
    } else if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1e3)
    } else if us >= 1_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{us} µs")
    }
}

fn fmt_dur(d: Duration) -> String {
    format!("{:?}", d)
}

struct Setup {
    label: String,
    target: Target,
    endpoints: Vec<String>,
    token: Option<String>,
    /// Client TLS (trusting the cluster CA) when `--tls-ca` is given.
    tls: Option<ClientTls>,
    mix: Mix,
    payloads: Arc<Payloads>,
}

pub async fn run(opts: BenchOpts) -> Result<(), String> {
    if let Some(files) = opts.plot_from.clone() {
        return plot_from(&files, opts.plot.as_ref());
    }
    let threads = opts.threads.clamp(1, 64);
    // The generator gets its own runtime (and thread) so that --threads can
    // be honoured whatever runtime the CLI itself runs on.
    tokio::task::spawn_blocking(move || {
        let rt = if threads == 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()
        }
        .map_err(|e| format!("cannot start the generator runtime: {e}"))?;
        rt.block_on(run_all(opts))
    })
    .await
    .map_err(|e| format!("generator thread failed: {e}"))?
}

async fn run_all(opts: BenchOpts) -> Result<(), String> {
    if let (Some(workload), Some(file)) = (opts.workload, opts.record_history.clone()) {
        return record_history(opts, workload, file).await;
    }
    let counts = opts.sweep.clone().unwrap_or_else(|| vec![opts.clients]);
    if counts.is_empty() {
        return Err("--sweep needs at least one client count".into());
    }
    for &c in &counts {
        if !(1..=1024).contains(&c) {
            return Err(format!("client count {c} out of range (1 to 1024)"));
        }
    }
    if opts.duration.is_zero() {
        return Err("--duration must be positive (every run is bounded in time)".into());
    }
    if opts.ops == Some(0) {
        return Err("--ops must be positive".into());
    }
    if let Some(r) = opts.rate {
        if !(r.is_finite() && r > 0.0) {
            return Err("--rate must be a positive number of ops/s".into());
        }
    }
    if opts.instances == 0 {
        return Err("--instances must be at least 1".into());
    }
    if opts.endpoints.is_empty() {
        return Err("no --endpoints".into());
    }
    let mix = Mix::parse(&opts.mix)?;
    let token = match opts.target {
        Target::Etcd => None,
        Target::Synapse => load_token(&opts)?,
    };
    let endpoints: Vec<String> = opts
        .endpoints
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
        .map(|e| synapse::client::endpoint_uri(e, opts.tls_ca.is_some()))
        .collect();
    let setup = Setup {
        label: opts.label.clone().unwrap_or_else(|| {
            match opts.target {
                Target::Synapse => "synapse",
                Target::Etcd => "etcd",
            }
            .to_string()
        }),
        target: opts.target,
        endpoints,
        token,
        tls: opts.tls_ca.clone().map(|ca| ClientTls {
            ca,
            ..Default::default()
        }),
        mix,
        payloads: Arc::new(Payloads::new(&opts.prefix, opts.value_size)),
    };

    eprintln!(
        "bench {}: endpoints {}; mix {}; value {} B; {} instances; {}{} per run after {} warm-up{}",
        setup.label,
        setup.endpoints.join(","),
        setup.mix.describe(),
        opts.value_size,
        opts.instances,
        fmt_dur(opts.duration),
        opts.ops.map(|n| format!(" or {n} ops")).unwrap_or_default(),
        fmt_dur(opts.warmup),
        opts.rate
            .map(|r| format!("; open loop at {r} ops/s"))
            .unwrap_or_else(|| "; closed loop".into()),
    );

    let mut results = Vec::new();
    for &clients in &counts {
        let r = run_once(&setup, &opts, clients).await?;
        print_run(&setup, &opts, &r);
        results.push(r);
    }
    if results.len() > 1 {
        print_summary(&setup, &results);
    }
    let doc = to_json(&setup, &opts, &results);
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&doc).expect("a serde_json::Value always encodes");
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &opts.plot {
        let svg = plot_runs(&setup, &results);
        std::fs::write(path, svg).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let ok: u64 = results.iter().map(|r| r.ok).sum();
    let warm: u64 = results.iter().map(|r| r.warmup_ops).sum();
    if ok == 0 && warm == 0 {
        let failed: u64 = results.iter().map(|r| r.failed()).sum();
        let last = results
            .iter()
            .rev()
            .find_map(|r| r.last_error.clone())
            .unwrap_or_else(|| "no operation completed".into());
        return Err(format!(
            "every operation failed ({failed} errors); last: {last}"
        ));
    }
    Ok(())
}

/// `--workload ... --record-history FILE`: see [`record`].
async fn record_history(
    opts: BenchOpts,
    workload: record::Workload,
    file: PathBuf,
) -> Result<(), String> {
    if opts.target != Target::Synapse {
        return Err("--record-history works against Synapse only".into());
    }
    let token = load_token(&opts)?;
    let endpoints = opts
        .endpoints
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
        .map(|e| {
            if e.contains("://") {
                e.to_string()
            } else {
                format!("http://{e}")
            }
        })
        .collect::<Vec<_>>();
    if endpoints.is_empty() {
        return Err("no --endpoints".into());
    }
    let s = record::run(record::RecordOpts {
        workload,
        endpoints,
        token,
        clients: opts.clients,
        clients_per_key: opts.clients_per_key,
        duration: opts.duration,
        ops: opts.ops,
        timeout: opts.timeout,
        prefix: opts.prefix.clone(),
        file: file.clone(),
        final_read: !opts.no_final_read,
        stop_file: opts.stop_file.clone(),
        quiet: opts.quiet,
    })
    .await?;
    println!(
        "recorded {} ops on {} keys ({} ok, {} fail, {} unknown) into {}",
        s.ops,
        s.keys,
        s.ok,
        s.fail,
        s.unknown,
        file.display()
    );
    if s.ok == 0 {
        return Err("no operation succeeded: the history proves nothing".into());
    }
    Ok(())
}

fn load_token(opts: &BenchOpts) -> Result<Option<String>, String> {
    if let Some(t) = &opts.token {
        return Ok(Some(t.trim().to_string()));
    }
    let (path, explicit) = match &opts.token_file {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from("./synapse-data/root.token"), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(Some(t.trim().to_string())),
        Err(e) if explicit => Err(format!("cannot read token file {}: {e}", path.display())),
        Err(_) => {
            eprintln!("note: no token (no --token, --token-file, or ./synapse-data/root.token)");
            Ok(None)
        }
    }
}

async fn connect(setup: &Setup, endpoint: &str) -> Result<Conn, String> {
    let mut ep = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| format!("invalid endpoint `{endpoint}`: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if let Some(tls) = &setup.tls {
        ep = ep
            .tls_config(tls.config().map_err(|e| e.to_string())?)
            .map_err(|e| format!("TLS for `{endpoint}`: {e}"))?;
    }
    let channel: Channel = ep
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
    Ok(match setup.target {
        Target::Synapse => Conn::Synapse(Box::new(
            Client::with_channel(channel, setup.token.as_deref()).map_err(|e| e.to_string())?,
        )),
        Target::Etcd => Conn::Etcd(etcd::Kv::new(channel)),
    })
}

async fn run_once(setup: &Setup, opts: &BenchOpts, clients: usize) -> Result<RunResult, String> {
    // A few shared channels per endpoint; unreachable endpoints are skipped.
    let per_ep = opts
        .connections
        .unwrap_or_else(|| clients.div_ceil(64 * setup.endpoints.len()).clamp(1, 8))
        .clamp(1, 64);
    let mut pools: Vec<Vec<Conn>> = Vec::new();
    for ep in &setup.endpoints {
        let mut pool = Vec::new();
        for _ in 0..per_ep {
            match connect(setup, ep).await {
                Ok(c) => pool.push(c),
                Err(e) => {
                    eprintln!("warning: {e}; skipping this endpoint");
                    break;
                }
            }
        }
        if !pool.is_empty() {
            pools.push(pool);
        }
    }
    if pools.is_empty() {
        return Err("no endpoint could be reached".into());
    }

    let rec = Arc::new(Mutex::new(Recorder {
        all: new_hist(),
        per_op: BTreeMap::new(),
        per_sec: Vec::new(),
        ok: 0,
        errors: BTreeMap::new(),
        last_error: None,
    }));
    let done_ops = Arc::new(AtomicU64::new(0)); // all completions, for progress
    let picker = Arc::new(InstancePicker {
        order: opts.instance_order,
        instances: opts.instances,
        next: AtomicU64::new(0),
    });
    let tickets = Arc::new(AtomicU64::new(0)); // measured ops issued (--ops)
    let stop = Arc::new(AtomicBool::new(false));
    let missed = Arc::new(AtomicU64::new(0)); // open-loop slots never sent
    let start = Instant::now();
    let measure_start = start + opts.warmup;
    let end = measure_start + opts.duration;
    // Per-client open-loop spacing: the clients' schedules interleave.
    let interval = opts
        .rate
        .map(|r| Duration::from_secs_f64(clients as f64 / r));

    let mut handles = Vec::with_capacity(clients);
    for i in 0..clients {
        let pool = &pools[i % pools.len()];
        let mut conn = pool[(i / pools.len()) % pool.len()].clone();
        let (rec, done_ops, tickets, stop, missed) = (
            rec.clone(),
            done_ops.clone(),
            tickets.clone(),
            stop.clone(),
            missed.clone(),
        );
        let mix = setup.mix.clone();
        let payloads = setup.payloads.clone();
        let (picker, ops_bound, timeout) = (picker.clone(), opts.ops, opts.timeout);
        let first = interval.map(|iv| start + iv.mul_f64(i as f64 / clients as f64));
        handles.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((i as u64 + 1) * 0x1000_0000_01B3));
            let mut next = first;
            let mut last_done = start;
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let intended = match (next, interval) {
                    (Some(t), Some(iv)) => {
                        next = Some(t + iv);
                        if t >= end {
                            break;
                        }
                        let now = Instant::now();
                        if now >= end {
                            // Behind schedule when time is up: the slots not
                            // sent are reported, not silently dropped.
                            let left = (end - t).as_secs_f64() / iv.as_secs_f64();
                            missed.fetch_add(left.ceil() as u64, Ordering::Relaxed);
                            break;
                        }
                        if t > Instant::now() {
                            tokio::time::sleep_until(t).await;
                        }
                        t
                    }
                    _ => {
                        let now = Instant::now();
                        if now >= end {
                            break;
                        }
                        now
                    }
                };
                let measured = intended >= measure_start;
                if measured {
                    if let Some(n) = ops_bound {
                        if tickets.fetch_add(1, Ordering::Relaxed) >= n {
                            stop.store(true, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                let op = mix.pick(rng.next());
                let inst = picker.pick(rng.next());
                let res = tokio::time::timeout(timeout, conn.call(op, inst, &payloads)).await;
                let now = Instant::now();
                last_done = now;
                done_ops.fetch_add(1, Ordering::Relaxed);
                if !measured {
                    continue;
                }
                let us = (now.saturating_duration_since(intended).as_micros() as u64)
                    .clamp(1, HIST_MAX_US);
                let mut r = rec
                    .lock()
                    .expect("no recorder holder panics while holding the lock");
                match res {
                    Ok(Ok(())) => {
                        r.ok += 1;
                        let _ = r.all.record(us);
                        let _ = r
                            .per_op
                            .entry(op.name())
                            .or_insert_with(new_hist)
                            .record(us);
                        let sec = now.saturating_duration_since(measure_start).as_secs();
                        let idx = match r.per_sec.iter().position(|(s, _)| *s == sec) {
                            Some(i) => i,
                            None => {
                                r.per_sec.push((sec, new_hist()));
                                r.per_sec.len() - 1
                            }
                        };
                        let _ = r.per_sec[idx].1.record(us);
                    }
                    Ok(Err(status)) => {
                        *r.errors.entry(format!("{:?}", status.code())).or_default() += 1;
                        r.last_error = Some(format!("{:?}: {}", status.code(), status.message()));
                    }
                    Err(_) => {
                        *r.errors.entry("DeadlineExceeded".into()).or_default() += 1;
                        r.last_error = Some(format!("no answer within {timeout:?}"));
                    }
                }
            }
            last_done
        }));
    }

    // Live progress on stderr until the clients are done.
    let tty = std::io::stderr().is_terminal();
    let show = !opts.quiet;
    let label = setup.label.clone();
    let total = opts.warmup + opts.duration;
    let progress = {
        let done_ops = done_ops.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut prev = 0u64;
            let mut n = 0u64;
            loop {
                tick.tick().await;
                n += 1;
                let d = done_ops.load(Ordering::Relaxed);
                let rate = d - prev;
                prev = d;
                if !show {
                    continue;
                }
                let t = start.elapsed();
                let phase = if Instant::now() < measure_start {
                    "warm-up"
                } else if Instant::now() < end {
                    "measure"
                } else {
                    "draining"
                };
                let width = 24usize;
                let fill = ((t.as_secs_f64() / total.as_secs_f64()) * width as f64)
                    .min(width as f64) as usize;
                let bar = format!("{}{}", "#".repeat(fill), ".".repeat(width - fill));
                let line = format!(
                    "[{label} c={clients}] [{bar}] {:>5.1}/{:.0}s {phase:<8} {rate:>7} ops/s  {d} done",
                    t.as_secs_f64(),
                    total.as_secs_f64()
                );
                if tty {
                    eprint!("\r{line}\x1b[K");
                } else if n.is_multiple_of(5) {
                    eprintln!("{line}");
                }
            }
        })
    };

    // Bounded wait: clients stop issuing at `end`; requests in flight then
    // have at most `timeout` (+1 s) to finish before they are abandoned.
    let hard_stop = end + opts.timeout + Duration::from_secs(1);
    let mut last_done = measure_start;
    for h in handles {
        let abort = h.abort_handle();
        match tokio::time::timeout_at(hard_stop, h).await {
            Ok(Ok(t)) => last_done = last_done.max(t),
            Ok(Err(_)) => {}
            Err(_) => {
                abort.abort();
                last_done = last_done.max(hard_stop);
            }
        }
    }
    progress.abort();
    if tty && !opts.quiet {
        eprint!("\r\x1b[K");
    }
    let finished = Instant::now();
    let elapsed = if opts.ops.is_some() && stop.load(Ordering::Relaxed) {
        last_done
            .min(finished)
            .saturating_duration_since(measure_start)
    } else {
        // Closed loop: the window is the measured duration (plus the tail of
        // the last requests); open loop: the schedule's span.
        last_done
            .max(end)
            .min(finished)
            .saturating_duration_since(measure_start)
    };
    let warmup_ops = {
        let r = rec
            .lock()
            .expect("no recorder holder panics while holding the lock");
        done_ops
            .load(Ordering::Relaxed)
            .saturating_sub(r.ok + r.errors.values().sum::<u64>())
    };
    // Aborted clients may still hold a reference for a moment: take the data.
    let r = {
        let mut g = rec
            .lock()
            .expect("no recorder holder panics while holding the lock");
        Recorder {
            all: std::mem::replace(&mut g.all, new_hist()),
            per_op: std::mem::take(&mut g.per_op),
            per_sec: std::mem::take(&mut g.per_sec),
            ok: g.ok,
            errors: std::mem::take(&mut g.errors),
            last_error: g.last_error.take(),
        }
    };
    let mut per_sec = r.per_sec;
    per_sec.sort_by_key(|x| x.0);
    Ok(RunResult {
        clients,
        elapsed,
        ok: r.ok,
        errors: r.errors,
        last_error: r.last_error,
        all: r.all,
        per_op: r.per_op,
        per_sec,
        warmup_ops,
        missed: missed.load(Ordering::Relaxed),
    })
}

fn print_run(setup: &Setup, opts: &BenchOpts, r: &RunResult) {
    let h = &r.all;
    println!();
    println!(
        "{} — {} clients{}, {:.1} s measured",
        setup.label,
        r.clients,
        opts.rate
            .map(|x| format!(", open loop at {x} ops/s"))
            .unwrap_or_default(),
        r.elapsed.as_secs_f64()
    );
    println!(
        "  throughput   {:>10.0} ops/s  ({} ok)",
        r.throughput(),
        r.ok
    );
    if r.errors.is_empty() {
        println!("  errors       {:>10}", 0);
    } else {
        let list: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("  errors       {:>10}  ({})", r.failed(), list.join(", "));
        if let Some(e) = &r.last_error {
            println!("  last error   {e}");
        }
    }
    println!(
        "  {:<10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "latency", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    let row = |name: &str, h: &Histogram<u64>| {
        println!(
            "  {:<10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            name,
            h.len(),
            fmt_us(pct(h, 0.5)),
            fmt_us(pct(h, 0.9)),
            fmt_us(pct(h, 0.99)),
            fmt_us(pct(h, 0.999)),
            fmt_us(if h.is_empty() { 0 } else { h.max() })
        );
    };
    row("all", h);
    if r.per_op.len() > 1 {
        for (name, h) in &r.per_op {
            row(name, h);
        }
    }
    if r.missed > 0 {
        println!(
            "  not sent     {:>10}  (scheduled, but the clients were still behind when time was up)",
            r.missed
        );
    }
    if let Some(rate) = opts.rate {
        if r.throughput() < rate * 0.95 {
            println!(
                "  note: achieved {:.0} ops/s, below the offered {rate} (the system or the client count cannot keep up; latency includes the queueing)",
                r.throughput()
            );
        }
    }
}

fn print_summary(setup: &Setup, results: &[RunResult]) {
    println!();
    println!("{} — summary", setup.label);
    println!(
        "  {:>7} {:>12} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "clients", "ops/s", "errors", "p50", "p90", "p99", "p99.9", "max"
    );
    for r in results {
        let h = &r.all;
        println!(
            "  {:>7} {:>12.0} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
            r.clients,
            r.throughput(),
            r.failed(),
            fmt_us(pct(h, 0.5)),
            fmt_us(pct(h, 0.9)),
            fmt_us(pct(h, 0.99)),
            fmt_us(pct(h, 0.999)),
            fmt_us(if h.is_empty() { 0 } else { h.max() })
        );
    }
}

fn to_json(setup: &Setup, opts: &BenchOpts, results: &[RunResult]) -> Value {
    let runs: Vec<Value> = results
        .iter()
        .map(|r| {
            json!({
                "clients": r.clients,
                "elapsed_s": r.elapsed.as_secs_f64(),
                "ok": r.ok,
                "warmup_ops": r.warmup_ops,
                "missed_schedule": r.missed,
                "throughput_ops_s": (r.throughput() * 10.0).round() / 10.0,
                "errors": r.errors,
                "errors_total": r.failed(),
                "last_error": r.last_error,
                "latency_us": lat_json(&r.all),
                "latency_us_by_op": r.per_op.iter().map(|(k, h)| (k.to_string(), lat_json(h))).collect::<BTreeMap<_, _>>(),
                "timeline": r.per_sec.iter().map(|(s, h)| json!({
                    "second": s, "ops": h.len(), "p50_us": pct(h, 0.5), "p99_us": pct(h, 0.99), "max_us": h.max(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "label": setup.label,
        "target": format!("{:?}", setup.target).to_lowercase(),
        "endpoints": setup.endpoints,
        "mix": setup.mix.describe(),
        "value_size": opts.value_size,
        "instances": opts.instances,
        "instance_order": format!("{:?}", opts.instance_order).to_lowercase(),
        "rate": opts.rate,
        "duration_s": opts.duration.as_secs_f64(),
        "warmup_s": opts.warmup.as_secs_f64(),
        "ops_bound": opts.ops,
        "runs": runs,
    })
}

fn plot_runs(setup: &Setup, results: &[RunResult]) -> String {
    let mut series = Vec::new();
    for (i, r) in results.iter().enumerate() {
        let color = svg::PALETTE[i % svg::PALETTE.len()].to_string();
        let p = |q: f64| -> Vec<(f64, f64)> {
            r.per_sec
                .iter()
                .map(|(s, h)| (*s as f64 + 0.5, pct(h, q) as f64 / 1000.0))
                .collect()
        };
        series.push(svg::Series {
            name: format!("c={} p99", r.clients),
            color: color.clone(),
            dashed: false,
            points: p(0.99),
        });
        series.push(svg::Series {
            name: format!("c={} p50", r.clients),
            color,
            dashed: true,
            points: p(0.5),
        });
    }
    let mut charts = vec![svg::Chart {
        title: format!("{}: latency over time (per second)", setup.label),
        x_label: "seconds into the measured run".into(),
        y_label: "latency (ms)".into(),
        log_x: false,
        series,
    }];
    if results.len() > 1 {
        let pts = results
            .iter()
            .map(|r| (r.clients as f64, r.throughput()))
            .collect();
        charts.push(svg::Chart {
            title: format!("{}: throughput vs clients", setup.label),
            x_label: "concurrent clients".into(),
            y_label: "ops/s".into(),
            log_x: true,
            series: vec![svg::Series {
                name: setup.label.clone(),
                color: svg::PALETTE[0].into(),
                dashed: false,
                points: pts,
            }],
        });
    }
    svg::document(&charts)
}

/// Draws several `--json` result files together (throughput, p50 and p99
/// against clients), e.g. Synapse and etcd from `compare-etcd.sh`.
fn plot_from(files: &[PathBuf], out: Option<&PathBuf>) -> Result<(), String> {
    let out = out.ok_or("--plot-from needs --plot <file.svg>")?;
    let mut tput = Vec::new();
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", f.display()))?;
        let label = v["label"].as_str().unwrap_or("run").to_string();
        let color = svg::PALETTE[i % svg::PALETTE.len()].to_string();
        let runs = v["runs"].as_array().cloned().unwrap_or_default();
        let pts = |get: &dyn Fn(&Value) -> f64| -> Vec<(f64, f64)> {
            runs.iter()
                .map(|r| (r["clients"].as_f64().unwrap_or(0.0), get(r)))
                .collect()
        };
        tput.push(svg::Series {
            name: label.clone(),
            color: color.clone(),
            dashed: false,
            points: pts(&|r| r["throughput_ops_s"].as_f64().unwrap_or(0.0)),
        });
        p99.push(svg::Series {
            name: format!("{label} p99"),
            color: color.clone(),
            dashed: false,
            points: pts(&|r| r["latency_us"]["p99"].as_f64().unwrap_or(0.0) / 1000.0),
        });
        p50.push(svg::Series {
            name: format!("{label} p50"),
            color,
            dashed: true,
            points: pts(&|r| r["latency_us"]["p50"].as_f64().unwrap_or(0.0) / 1000.0),
        });
    }
    p99.extend(p50);
    let charts = vec![
        svg::Chart {
            title: "throughput vs concurrent clients".into(),
            x_label: "concurrent clients".into(),
            y_label: "ops/s".into(),
            log_x: true,
            series: tput,
        },
        svg::Chart {
            title: "latency vs concurrent clients".into(),
            x_label: "concurrent clients".into(),
            y_label: "latency (ms)".into(),
            log_x: true,
            series: p99,
        },
    ];
    std::fs::write(out, svg::document(&charts))
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_order_visits_every_instance_once_per_round() {
        let picker = InstancePicker {
            order: InstanceOrder::Sequential,
            instances: 5,
            next: AtomicU64::new(0),
        };
        let picks: Vec<u64> = (0..12).map(|r| picker.pick(r * 7919)).collect();
        assert_eq!(picks, vec![0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]);
        let random = InstancePicker {
            order: InstanceOrder::Random,
            ..picker
        };
        assert_eq!(random.pick(12), 2);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn mix_weights() {
        let m = Mix::parse("incr=80,put=10,get=10").unwrap();
        let mut counts = BTreeMap::new();
        for r in 0..100u64 {
            *counts.entry(m.pick(r).name()).or_insert(0) += 1;
        }
        assert_eq!(counts["incr"], 80);
        assert_eq!(counts["put"], 10);
        assert_eq!(counts["get"], 10);
        assert_eq!(m.describe(), "incr=80,put=10,get=10");
        assert!(Mix::parse("nope=1").is_err());
        assert!(Mix::parse("incr=0").is_err());
    }

    #[test]
    fn svg_renders() {
        let s = svg::document(&[svg::Chart {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            log_x: true,
            series: vec![svg::Series {
                name: "a".into(),
                color: "#000".into(),
                dashed: false,
                points: vec![(1.0, 10.0), (8.0, 70.0), (64.0, 300.0)],
            }],
        }]);
        assert!(s.starts_with("<svg") && s.contains("polyline"));
    }
}
