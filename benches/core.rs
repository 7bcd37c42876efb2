//! Criterion benches for the single-node hot path.
//!
//! Run: `cargo bench --bench core` (see `benches/README.md` for figures).
//!
//! Groups, in the order a message meets them:
//! * `disk/write_4k_fdatasync`: reference figure for this disk (std only);
//! * `guard/*`: capability check: cached decision, cold (parse + verify +
//!   authorize), authorize with a cached verified token;
//! * `capabilities/*`: revoked-set lookup with 10 000 revocations, cached
//!   check with that set, and the audit overhead per call (`Core::authorize`
//!   with the batched audit writer, flushed, vs one unbatched append);
//! * `clock/hlc_now`;
//! * `heap/alloc_free_64B_mimalloc{,_counted}`: one allocation and its free
//!   through mimalloc, bare and inside the binary's live-heap counter;
//! * `checkpoint/seal_{1KiB,64KiB,1MiB}`, `checkpoint/store_apply_1KiB`,
//!   `storage/sync`;
//! * `raft/round_3_nodes_in_memory`: one proposal through three drivers in
//!   this thread over an in-memory network (no fsync);
//! * `invoke/*`: a whole Invoke on a real single node (sled in a tempdir),
//!   embedded and over gRPC on loopback, the raw actix round trip an
//!   embedded read is compared with, and 64-client throughput.
//!
//! Everything runs on one 2-vCPU box; the node has its own thread (actix
//! System) and the bench thread drives it from a tokio current-thread runtime.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{black_box, BatchSize, BenchmarkGroup, Criterion, SamplingMode, Throughput};
use serde_json::json;
use synapse::client::{v1 as pb, Client};
use synapse::{Grant, Node, NodeConfig, RootKey};
use synapse_consensus::eraftpb::Message;
use synapse_consensus::{AppliedIndexOnly, RaftConfig, Role, SimDriver, Transport};
use synapse_runtime::clock::{Hlc, SystemClock};
use synapse_runtime::guard::{Guard, Operation, Request};
use synapse_storage::{ApplyBatch, Checkpoint, Store, StoreOptions, Timestamp, ZERO_HASH};

/// Operations per batch in the concurrent-throughput benches.
const BATCH_OPS: usize = 5_000;
/// Puts per apply in the store apply bench: about one Raft Ready's worth on
/// a follower at 256 clients (`benches/README.md`).
const APPLY_BATCH_PUTS: usize = 64;
/// Instances the store apply bench writes to, as the load generator does.
const APPLY_INSTANCES: usize = 1_000;
/// Concurrent clients in the throughput benches.
const CLIENTS: usize = 64;

fn quick<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.warm_up_time(Duration::from_millis(800));
    g.measurement_time(Duration::from_secs(3));
    g.sample_size(50);
    g
}

// ------------------------------------------------------------------ disk

fn bench_disk(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let block = [0xA5u8; 4096];
    let mut g = quick(c, "disk");

    // Overwrite 4 KiB in place (file already allocated and synced) then
    // fdatasync: only the data block goes to the device.
    let path = dir.path().join("blocks");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    for _ in 0..256 {
        (&f).write_all(&block).expect("prefill");
    }
    f.sync_all().expect("sync prefill");
    let mut slot = 0u64;
    g.bench_function("write_4k_fdatasync", |b| {
        b.iter(|| {
            f.write_all_at(&block, (slot % 256) * 4096).expect("pwrite");
            slot += 1;
            f.sync_data().expect("fdatasync");
        })
    });

    // Append 4 KiB then fdatasync: the file grows, so the size change (a
    // filesystem journal commit) is part of what is synced.
    let mut wal = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("wal"))
        .expect("open");
    g.bench_function("append_4k_fdatasync", |b| {
        b.iter(|| {
            wal.write_all(&block).expect("write");
            wal.sync_data().expect("fdatasync");
        })
    });
    g.finish();
}

// ----------------------------------------------------------------- guard

fn root_and_token() -> (RootKey, String) {
    let key = RootKey::generate();
    let token = key
        .mint(
            "bench",
            &[Grant {
                skill: "counter".into(),
                instance: "*".into(),
                methods: vec!["incr".into(), "get".into()],
                read_only: false,
            }],
            None,
        )
        .expect("mint");
    (key, token)
}

fn bench_guard(c: &mut Criterion) {
    let (key, token) = root_and_token();
    let public = key.public_hex();
    let req = Request {
        skill: "counter",
        instance: "alice",
        method: "incr",
        operation: Operation::Write,
    };
    let mut g = quick(c, "guard");

    // Steady state: same token, same request -> decision-cache lookup
    // (SHA-256 of the token text + hash map).
    let guard = Guard::new(&public, 10_000).expect("guard");
    guard.check(Some(&token), &req).expect("allowed");
    g.bench_function("check_cached_decision", |b| {
        b.iter(|| black_box(guard.check(Some(black_box(&token)), &req).expect("allowed")))
    });

    // Cold: a fresh Guard per iteration (built in the untimed setup), so
    // every timed check parses the token, verifies its signature chain and
    // runs the authorizer.
    g.bench_function("check_cold", |b| {
        b.iter_batched(
            || Guard::new(&public, 10_000).expect("guard"),
            |guard| black_box(guard.check(Some(&token), &req).expect("allowed")),
            BatchSize::SmallInput,
        )
    });

    // Verified token cached, decision cache missed: a new instance name on
    // every iteration, so only the datalog authorization runs.
    let guard = Guard::new(&public, 10_000).expect("guard");
    guard.check(Some(&token), &req).expect("allowed");
    let n = AtomicU64::new(0);
    g.bench_function("authorize_cached_token", |b| {
        b.iter_batched(
            || format!("i{}", n.fetch_add(1, Ordering::Relaxed)),
            |instance: String| {
                let r = Request {
                    instance: &instance,
                    ..req
                };
                black_box(guard.check(Some(&token), &r).expect("allowed"))
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

// ---------------------------------------------------------- capabilities

fn bench_capabilities(c: &mut Criterion) {
    use synapse_runtime::guard::RevocationSet;
    let (key, token) = root_and_token();
    let public = key.public_hex();
    let req = Request {
        skill: "counter",
        instance: "alice",
        method: "get",
        operation: Operation::Read,
    };
    let mut g = quick(c, "capabilities");

    // 10 000 revoked 64-byte ids (a tenth of MAX_REVOCATIONS); the lookup
    // the uncached check and apply-time fencing do: a token's ids (here 2,
    // a minted token with one attenuation), none revoked.
    let set = Arc::new(RevocationSet::new());
    let revoked: Vec<Vec<u8>> = (0..10_000u32)
        .map(|i| {
            let mut id = vec![0u8; 64];
            id[..4].copy_from_slice(&i.to_be_bytes());
            id
        })
        .collect();
    set.insert_all(revoked.iter().map(Vec::as_slice));
    let ids = vec![vec![0xAB; 64], vec![0xCD; 64]];
    g.bench_function("revoked_lookup_2_ids_in_10k", |b| {
        b.iter(|| black_box(set.any_revoked(black_box(&ids))))
    });

    // Cached check with that set shared: one extra atomic load.
    let guard = Guard::new(&public, 10_000)
        .expect("guard")
        .with_revocations(set.clone());
    guard.check(Some(&token), &req).expect("allowed");
    g.bench_function("check_cached_with_10k_revocations", |b| {
        b.iter(|| black_box(guard.check(Some(black_box(&token)), &req).expect("allowed")))
    });

    // Audit overhead per call. `authorize_with_audit_record`: the node's
    // authorize (cached guard check + one record queued for the batched
    // audit writer), timed until the writer has stored every record of the
    // sample (flush), so the writer's work is in the figure. A full queue
    // (the writer behind) refuses a call: the loop then flushes and
    // retries, which also counts. `audit_append_unbatched`: one chained
    // record per sled insert on the caller's thread (the path before the
    // writer), for the ratio.
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::builder(NodeConfig {
        data_dir: dir.path().to_path_buf(),
        listen: None,
        http_listen: None,
        ..NodeConfig::default()
    })
    .start()
    .expect("node starts");
    let root = node.root_token().to_string();
    let core = node.core().clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    core.authorize(Some(&root), "counter", "alice", "get", Operation::Read)
        .expect("allowed");
    g.bench_function("authorize_with_audit_record", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                while core
                    .authorize(Some(&root), "counter", "alice", "get", Operation::Read)
                    .is_err()
                {
                    rt.block_on(core.flush_audit()).expect("flush");
                }
            }
            rt.block_on(core.flush_audit()).expect("flush");
            start.elapsed()
        })
    });
    // What the caller waits for: the same calls, timing only `authorize`
    // (the writer runs on the other core; flushes are outside the timing).
    g.bench_function("authorize_caller_path", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                loop {
                    let start = Instant::now();
                    let r = core.authorize(Some(&root), "counter", "alice", "get", Operation::Read);
                    timed += start.elapsed();
                    if r.is_ok() {
                        break;
                    }
                    rt.block_on(core.flush_audit()).expect("flush");
                }
            }
            rt.block_on(core.flush_audit()).expect("flush");
            timed
        })
    });
    let store_dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(store_dir.path(), StoreOptions::default()).expect("store");
    let record = synapse_storage::AuditRecord {
        seq: 0,
        timestamp: Timestamp {
            physical_micros: 1,
            logical: 0,
            node_id: 1,
        },
        principal: "root".into(),
        skill: "counter".into(),
        instance: "alice".into(),
        method: "get".into(),
        allowed: true,
        reason: "allowed (cached decision)".into(),
        prev_hash: ZERO_HASH,
        hash: ZERO_HASH,
    };
    g.bench_function("audit_append_unbatched", |b| {
        b.iter(|| {
            store
                .audit_append(black_box(record.clone()))
                .expect("append")
        })
    });
    g.finish();
    node.shutdown();
}

// ----------------------------------------------------------------- clock

fn bench_clock(c: &mut Criterion) {
    let hlc = Hlc::new(1, Arc::new(SystemClock));
    let mut g = quick(c, "clock");
    g.bench_function("hlc_now", |b| b.iter(|| black_box(hlc.now())));
    g.finish();
}

// ------------------------------------------------------------------ heap

/// The cost of the binary's live-heap counter: the same allocation and free
/// through bare mimalloc and through the counting wrapper (called directly:
/// the bench's own global allocator is the default one).
fn bench_heap(c: &mut Criterion) {
    use std::alloc::{GlobalAlloc, Layout};
    fn alloc_free(a: &impl GlobalAlloc, layout: Layout) {
        // SAFETY: the block is freed at once with the layout it was made with.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            a.dealloc(black_box(p), layout);
        }
    }
    let layout = Layout::from_size_align(64, 8).expect("layout");
    use synapse::heap::CountingAllocator;
    #[cfg(feature = "mimalloc")]
    let (bare, counted, name) = (
        mimalloc::MiMalloc,
        CountingAllocator::new(mimalloc::MiMalloc),
        "mimalloc",
    );
    #[cfg(not(feature = "mimalloc"))]
    let (bare, counted, name) = (
        std::alloc::System,
        CountingAllocator::new(std::alloc::System),
        "system",
    );
    let mut g = quick(c, "heap");
    g.bench_function(format!("alloc_free_64B_{name}"), |b| {
        b.iter(|| alloc_free(&bare, layout))
    });
    g.bench_function(format!("alloc_free_64B_{name}_counted"), |b| {
        b.iter(|| alloc_free(&counted, layout))
    });
    g.finish();
}

// ------------------------------------------------------- checkpoint/store

fn ts(n: u64) -> Timestamp {
    Timestamp {
        physical_micros: 1_700_000_000_000_000 + n,
        logical: 0,
        node_id: 1,
    }
}

fn bench_checkpoint(c: &mut Criterion) {
    let state = vec![0x5Au8; 1024];
    let mut g = quick(c, "checkpoint");
    // Canonical encoding + SHA-256 at the sizes item 5 names: a small state,
    // a large one, and the 1 MiB payload limit. The field values are moved
    // in (their allocation is in the untimed setup).
    for (name, size) in [
        ("seal_1KiB", 1024),
        ("seal_64KiB", 64 * 1024),
        ("seal_1MiB", 1024 * 1024),
    ] {
        let sized = vec![0x5Au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    (
                        "counter".to_string(),
                        "alice".to_string(),
                        sized.clone(),
                        "req-0123456789abcdef".to_string(),
                    )
                },
                |(skill, instance, st, rid)| {
                    black_box(Checkpoint::seal(
                        skill,
                        instance,
                        7,
                        ZERO_HASH,
                        st,
                        ts(7),
                        rid,
                    ))
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.throughput(Throughput::Bytes(1024));

    // One ApplyBatch with one 1 KiB checkpoint (head, request record,
    // applied index, clock high-water; retention pruning once past 100
    // versions), committed as one sled batch. The sync is not timed.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreOptions::default()).expect("store");
    let mut version = 0u64;
    let mut parent = ZERO_HASH;
    let mut next_batch = || {
        version += 1;
        let cp = Checkpoint::seal(
            "counter".into(),
            "alice".into(),
            version,
            parent,
            state.clone(),
            ts(version),
            format!("req-{version}"),
        );
        parent = cp.hash;
        let mut batch = ApplyBatch::default();
        batch.put_checkpoint(&cp, br#"{"value":1}"#);
        batch.set_applied(version);
        batch
    };
    // sled 0.34 can deadlock when many unflushed writes pile up (its IO
    // threadpool starves a file truncation it waits for while holding the
    // segment lock; spacejam/sled#1412, seen here in a first run). The node
    // syncs once per Raft Ready, so do the same every 64 applies, untimed.
    let mut applied = 0u64;
    g.bench_function("store_apply_1KiB", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let batch = next_batch();
                let t = Instant::now();
                store.commit_apply(batch).expect("apply");
                total += t.elapsed();
                applied += 1;
                if applied.is_multiple_of(64) {
                    store.sync().expect("sync");
                }
            }
            total
        })
    });

    // One Raft Ready's apply as a follower sees it under load: 64 puts of
    // 256 B states over 1 000 instances that each hold more than the 100
    // versions kept (every put overwrites a slot), no request records (the
    // load generator's writes are server-named), and the state machine's
    // head read before each put. With the head cache, and with it off
    // (the store hands out its raw tree), so one run compares the two.
    g.throughput(Throughput::Elements(APPLY_BATCH_PUTS as u64));
    for cached in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), StoreOptions::default()).expect("store");
        if !cached {
            store.raw_tree("state").expect("raw tree");
        }
        let mut heads: Vec<(u64, [u8; 32])> = vec![(0, ZERO_HASH); APPLY_INSTANCES];
        let state = vec![0x5Au8; 256];
        let mut next_instance = 0usize;
        let mut applied = 0u64;
        let names: Vec<String> = (0..APPLY_INSTANCES).map(|i| format!("i{i}")).collect();
        let mut next_batch = || {
            let mut batch = ApplyBatch::default();
            let first = next_instance % APPLY_INSTANCES;
            for _ in 0..APPLY_BATCH_PUTS {
                let i = next_instance % APPLY_INSTANCES;
                next_instance += 1;
                let instance = names[i].clone();
                let (version, parent) = heads[i];
                let cp = Checkpoint::seal(
                    "kv".into(),
                    instance,
                    version + 1,
                    parent,
                    state.clone(),
                    ts(version + 1),
                    String::new(),
                );
                heads[i] = (cp.version, cp.hash);
                batch.put_checkpoint_unrecorded(&cp);
            }
            applied += 1;
            batch.set_applied(applied);
            (first, batch)
        };
        // What the state machine reads before it hands the batch over.
        let read_heads = |store: &Store, first: usize| {
            for k in 0..APPLY_BATCH_PUTS {
                let name = &names[(first + k) % APPLY_INSTANCES];
                black_box(store.head("kv", name).expect("head"));
            }
        };
        let mut filled = false;
        // Counted across calls: criterion may time one batch per call (the
        // fill below makes its warm-up estimate long), and the untimed sync
        // must still come every 64 batches.
        let mut timed_batches = 0u64;
        let name = if cached {
            "store_apply_64x256B_steady"
        } else {
            "store_apply_64x256B_steady_no_head_cache"
        };
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                if !filled {
                    // Every ring full first (untimed, and only when this
                    // bench runs), syncing now and then, as the node does
                    // when Raft metadata changes and when it reclaims
                    // compacted log segments.
                    for n in 0..(APPLY_INSTANCES * 101).div_ceil(APPLY_BATCH_PUTS) {
                        store.commit_apply(next_batch().1).expect("apply");
                        if n % 64 == 63 {
                            store.sync().expect("sync");
                        }
                    }
                    filled = true;
                }
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (first, batch) = next_batch();
                    let t = Instant::now();
                    read_heads(&store, first);
                    store.commit_apply(batch).expect("apply");
                    total += t.elapsed();
                    timed_batches += 1;
                    if timed_batches.is_multiple_of(64) {
                        store.sync().expect("sync");
                    }
                }
                total
            })
        });
    }
    g.finish();

    // The durability barrier: sled flush + fdatasync of its log file, with
    // one 1 KiB checkpoint applied (untimed) before each sync so there is
    // something to write, as after one Raft Ready.
    let mut g = quick(c, "storage");
    g.bench_function("sync", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                store.commit_apply(next_batch()).expect("apply");
                let t = Instant::now();
                store.sync().expect("sync");
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
    drop(store);
}

// ------------------------------------------------------------------ raft

/// The in-memory network: every node's messages go to one outbox, which
/// `deliver_all` empties into the addressees.
struct Outbox(Arc<Mutex<Vec<Message>>>);

impl Transport for Outbox {
    fn send(&self, messages: Vec<Message>) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(messages);
    }
}

type BenchNode = SimDriver<AppliedIndexOnly, Outbox>;

/// Most process-and-deliver passes one proposal may need: append, its
/// acknowledgements, the commit notice and its acknowledgements take four;
/// more means the cluster is not settling, which the bench must not hide.
const MAX_DELIVERY_PASSES: usize = 16;

/// Processes every node's Ready and delivers the messages that produced,
/// until the network is quiet.
fn deliver_all(nodes: &mut [BenchNode], outbox: &Mutex<Vec<Message>>) {
    for _ in 0..MAX_DELIVERY_PASSES {
        for node in nodes.iter_mut() {
            node.process().expect("process ready");
        }
        let messages = std::mem::take(
            &mut *outbox
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if messages.is_empty() {
            return;
        }
        for m in messages {
            let to = usize::try_from(m.to).expect("node id") - 1;
            nodes[to].step(m);
        }
    }
    panic!("the cluster did not settle within {MAX_DELIVERY_PASSES} passes");
}

/// One replicated proposal through raft-rs and our driver on three nodes in
/// this thread: propose, append on every node (sled, no fsync: simulation
/// stores), acknowledge, commit, apply, reply, and the commit notice to the
/// followers. What is left of a write once disk and network are taken away.
fn bench_raft(c: &mut Criterion) {
    const VOTERS: [u64; 3] = [1, 2, 3];
    let outbox = Arc::new(Mutex::new(Vec::new()));
    let dirs: Vec<_> = VOTERS
        .iter()
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut nodes: Vec<BenchNode> = VOTERS
        .iter()
        .zip(&dirs)
        .map(|(&id, dir)| {
            let opts = StoreOptions {
                simulation: true,
                ..StoreOptions::default()
            };
            let store = Store::open(dir.path(), opts).expect("store");
            let mut cfg = RaftConfig::cluster_member(id, VOTERS.to_vec());
            // Node 1 times out first, so it wins the first election.
            cfg.min_election_tick = if id == 1 { 10 } else { 50 };
            cfg.max_election_tick = cfg.min_election_tick + 1;
            let transport = Arc::new(Outbox(outbox.clone()));
            SimDriver::new(cfg, store.clone(), AppliedIndexOnly(store), transport).expect("driver")
        })
        .collect();
    // Every node ticks: one that has not seen an election timeout since
    // it started refuses to vote (the read lease's start-up rule).
    for _ in 0..40 {
        for node in &mut nodes {
            node.tick();
        }
        deliver_all(&mut nodes, &outbox);
        if nodes[0].status().role == Role::Leader {
            break;
        }
    }
    assert_eq!(nodes[0].status().role, Role::Leader, "node 1 leads");

    let payload = vec![0x5Au8; 256];
    let mut g = quick(c, "raft");
    g.bench_function("round_3_nodes_in_memory", |b| {
        b.iter(|| {
            let mut reply = nodes[0].propose(payload.clone());
            deliver_all(&mut nodes, &outbox);
            reply
                .try_recv()
                .expect("committed and applied within the round")
                .expect("applied")
        })
    });
    g.finish();
}

// ------------------------------------------------------------------ actix

/// The cheapest actor: answers at once. The baseline for an embedded
/// guarded invoke (item 5: a read-only invoke within 2x a raw `send().await`).
struct Echo;

impl actix::Actor for Echo {
    type Context = actix::Context<Self>;
}

struct Ping(u64);

impl actix::Message for Ping {
    type Result = u64;
}

impl actix::Handler<Ping> for Echo {
    type Result = u64;

    fn handle(&mut self, msg: Ping, _ctx: &mut Self::Context) -> u64 {
        msg.0 + 1
    }
}

/// Starts `Echo` in its own actix System on its own thread, as the node runs
/// its actors, and returns its address with the handle that stops it.
fn start_echo() -> (
    actix::Addr<Echo>,
    actix::System,
    std::thread::JoinHandle<()>,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let system = actix::System::new();
        system.block_on(async {
            let addr = actix::Actor::start(Echo);
            tx.send((addr, actix::System::current()))
                .expect("send addr");
        });
        system.run().expect("actix system");
    });
    let (addr, system) = rx.recv().expect("echo actor started");
    (addr, system, thread)
}

// ---------------------------------------------------------------- invoke

fn incr_req(instance: &str) -> pb::InvokeRequest {
    pb::InvokeRequest {
        skill: "counter".into(),
        instance: instance.into(),
        method: "incr".into(),
        payload: br#"{"by":1}"#.to_vec(),
        request_id: String::new(),
        expected_version: None,
    }
}

fn bench_invoke(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::builder(NodeConfig {
        data_dir: dir.path().to_path_buf(),
        listen: Some("127.0.0.1:0".parse().expect("addr")),
        http_listen: None,
        ..NodeConfig::default()
    })
    .start()
    .expect("node starts");
    let token = node.root_token().to_string();
    assert!(!token.is_empty(), "root token available after start");
    let endpoint = format!("http://{}", node.grpc_addr().expect("grpc addr"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = rt
        .block_on(Client::connect(&endpoint, Some(&token)))
        .expect("connect");

    let mut g = quick(c, "invoke");
    g.sample_size(30);

    // Guard (cached) -> actor -> seal -> Raft propose -> persist (fdatasync)
    // -> apply -> reply, awaited in-process.
    g.bench_function("embedded_counter_incr", |b| {
        b.iter(|| {
            rt.block_on(node.invoke(&token, "counter", "emb", "incr", json!({"by": 1})))
                .expect("invoke")
        })
    });

    // Linearizable read in-process: ReadIndex barrier + the actor's `get`.
    g.bench_function("embedded_counter_get", |b| {
        b.iter(|| {
            rt.block_on(node.invoke(&token, "counter", "emb", "get", serde_json::Value::Null))
                .expect("get")
        })
    });

    // The baseline for the read above: a raw actix round trip to an actor
    // on another thread's System, awaited the same way.
    let (echo, echo_system, echo_thread) = start_echo();
    g.bench_function("raw_actix_send_roundtrip", |b| {
        let mut n = 0u64;
        b.iter(|| {
            n = rt.block_on(echo.send(Ping(n))).expect("echo reply");
        })
    });
    echo_system.stop();
    echo_thread.join().expect("echo thread");

    // Same path plus tonic client/server over loopback.
    g.bench_function("grpc_counter_incr", |b| {
        let mut cl = client.clone();
        b.iter(|| {
            rt.block_on(cl.skills.invoke(incr_req("grpc")))
                .expect("invoke")
        })
    });

    // Linearizable read: ReadIndex barrier + the actor's `get`.
    g.bench_function("grpc_counter_get", |b| {
        let mut cl = client.clone();
        let mut req = incr_req("grpc");
        req.method = "get".into();
        req.payload = Vec::new();
        b.iter(|| rt.block_on(cl.skills.invoke(req.clone())).expect("get"))
    });
    g.finish();

    // Throughput: CLIENTS concurrent callers, each on its own instance,
    // BATCH_OPS increments per timed batch.
    let mut g = c.benchmark_group("invoke");
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(12));
    g.throughput(Throughput::Elements(BATCH_OPS as u64));

    // 64 separate connections (one channel each), connected up front.
    let clients: Vec<Client> = rt.block_on(async {
        let mut v = Vec::with_capacity(CLIENTS);
        for _ in 0..CLIENTS {
            v.push(
                Client::connect(&endpoint, Some(&token))
                    .await
                    .expect("connect"),
            );
        }
        v
    });
    g.bench_function("grpc_counter_incr_64_clients", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut set = tokio::task::JoinSet::new();
                    for (k, cl) in clients.iter().enumerate() {
                        let mut cl = cl.clone();
                        let ops = per_client(k);
                        set.spawn(async move {
                            let inst = format!("tp-{k}");
                            for _ in 0..ops {
                                cl.skills.invoke(incr_req(&inst)).await.expect("invoke");
                            }
                        });
                    }
                    while let Some(r) = set.join_next().await {
                        r.expect("client task");
                    }
                }
                start.elapsed()
            })
        })
    });

    g.bench_function("embedded_counter_incr_64_tasks", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut set = tokio::task::JoinSet::new();
                    for k in 0..CLIENTS {
                        let node = node.clone();
                        let token = token.clone();
                        let ops = per_client(k);
                        set.spawn(async move {
                            let inst = format!("te-{k}");
                            for _ in 0..ops {
                                node.invoke(&token, "counter", &inst, "incr", json!({"by": 1}))
                                    .await
                                    .expect("invoke");
                            }
                        });
                    }
                    while let Some(r) = set.join_next().await {
                        r.expect("task");
                    }
                }
                start.elapsed()
            })
        })
    });
    g.finish();

    drop(clients);
    drop(client);
    drop(rt);
    node.shutdown();
    drop(node);
    drop(dir);
}

/// Splits BATCH_OPS over CLIENTS as evenly as possible.
fn per_client(k: usize) -> usize {
    BATCH_OPS / CLIENTS + usize::from(k < BATCH_OPS % CLIENTS)
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_disk(&mut c);
    bench_guard(&mut c);
    bench_capabilities(&mut c);
    bench_clock(&mut c);
    bench_heap(&mut c);
    bench_checkpoint(&mut c);
    bench_raft(&mut c);
    bench_invoke(&mut c);
    c.final_summary();
}
