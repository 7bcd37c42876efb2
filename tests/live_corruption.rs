//! Live corruption on one node of three, with recovery from peers (issue #8
//! item 4), on real `synapse serve` processes.
//!
//! Under a writer load, one follower is stopped and several of its stored
//! checkpoint records are damaged on disk (`synapse debug corrupt`): the
//! head of an instance nobody writes any more, an older version of a busy
//! instance, and the head of a busy instance (which later writes turn into
//! an older version). The follower is restarted. It must never serve a
//! damaged record (DATA_LOSS or the right value, never a wrong one), find
//! the damage (scrub at start, reads, Verify), fetch verified copies from
//! its peers (`Peer.FetchCheckpoint`), and end with every chain verifying.
//! Zero acknowledged writes lost: every counter equals the number of its
//! acknowledged increments on every node, and all state hashes are equal.
//!
//! A second test damages committed Raft log records on a stopped follower:
//! it repairs them from its peers before consensus starts
//! (`Peer.FetchLogEntries`) and rejoins with nothing lost.
//!
//! Figures (repair time, acks) are printed with `--nocapture`, not asserted.

mod proc;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proc::*;
use synapse::client::v1;
use tonic::Code;

const WRITERS: usize = 3;

struct Writer {
    stop: AtomicBool,
    acked: Vec<AtomicU64>,
}

/// Writer `k` increments `counter/w{k}` by 1 with ids `w{k}-{seq}`, each
/// retried with the same id (any node) until acknowledged, so the counter's
/// value must equal its number of acknowledged ids.
async fn writer(k: usize, addrs: Vec<String>, token: String, w: Arc<Writer>) {
    let counter = format!("w{k}");
    let mut seq = 0u64;
    while !w.stop.load(Ordering::Relaxed) {
        let rid = format!("w{k}-{seq}");
        let sent = Instant::now();
        loop {
            let addr = &addrs[rand::random::<usize>() % addrs.len()];
            if let Ok(mut c) = connect(addr, &token).await {
                match tokio::time::timeout(
                    RPC_TIMEOUT,
                    c.skills.invoke(incr_request(&counter, &rid)),
                )
                .await
                {
                    Ok(Ok(r)) => {
                        let v = reply_value(&r.into_inner().reply);
                        assert_eq!(v as u64, seq + 1, "{rid}: counter skipped or repeated");
                        w.acked[k].store(seq + 1, Ordering::Relaxed);
                        break;
                    }
                    Ok(Err(s)) => assert!(
                        matches!(
                            s.code(),
                            Code::Unavailable
                                | Code::Aborted
                                | Code::Unknown
                                | Code::Cancelled
                                | Code::DeadlineExceeded
                                | Code::ResourceExhausted
                                | Code::Internal
                        ),
                        "{rid}: definite failure {}",
                        show(&s)
                    ),
                    Err(_) => {}
                }
            }
            assert!(sent.elapsed() < HANG_GUARD, "{rid} never acknowledged");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seq += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_acked(w: &Writer, each: u64) {
    wait_for(&format!("{each} acks per writer"), || async move {
        let seen: Vec<u64> = w.acked.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        if seen.iter().all(|&n| n >= each) {
            Ok(())
        } else {
            Err(format!("acks {seen:?}"))
        }
    })
    .await
}

/// Runs `synapse debug corrupt --data-dir DIR --what WHAT [extra...]` and
/// returns what it reports having damaged.
fn debug_corrupt(dir: &std::path::Path, what: &str, extra: &[String]) -> String {
    let mut args = vec![
        "debug".to_string(),
        "corrupt".into(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--what".into(),
        what.into(),
    ];
    args.extend_from_slice(extra);
    let out = cli(&args);
    assert!(
        out.status.success(),
        "debug corrupt {what} {extra:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn corrupt(dir: &std::path::Path, target: &str, version: Option<u64>) -> String {
    let mut extra = vec!["--target".to_string(), target.into()];
    if let Some(v) = version {
        extra.extend(["--version".into(), v.to_string()]);
    }
    debug_corrupt(dir, "checkpoint", &extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_with_corrupt_checkpoints_refuses_them_and_repairs_from_peers() {
    let mut cluster = Cluster::start_static(&[1, 2, 3], &[]);
    let addrs = cluster.addrs();
    let token = cluster.token(1).await;
    let leader = wait_leader(&addrs, &token).await;
    let follower = [1u64, 2, 3].into_iter().find(|&i| i != leader).unwrap();
    let faddr = cluster.node(follower).addr.clone();

    // An instance written once, then left alone: its head is what gets
    // damaged, and nothing later supersedes it.
    let mut c = connect(&addrs[0], &token).await.unwrap();
    for i in 0..5 {
        c.skills
            .invoke(incr_request("quiet", &format!("q-{i}")))
            .await
            .expect("seed quiet");
    }

    let w = Arc::new(Writer {
        stop: AtomicBool::new(false),
        acked: (0..WRITERS).map(|_| AtomicU64::new(0)).collect(),
    });
    let tasks: Vec<_> = (0..WRITERS)
        .map(|k| tokio::spawn(writer(k, addrs.clone(), token.clone(), w.clone())))
        .collect();
    wait_acked(&w, 10).await;
    wait_converged(&addrs, &token).await;

    // Stop the follower, damage its records, writers carry on (2 of 3).
    // A clean stop: the applied state is synced to sled only at shutdown,
    // compaction or a term change (after a crash it is re-applied from the
    // Raft log at start), and the records to damage must be on disk.
    let fdir = cluster.node(follower).dir.clone();
    cluster.node_mut(follower).stop().await;
    // An older retained version of w1 (it kept applying while it drained).
    let w1_older = {
        let store = synapse_storage::Store::open(&fdir, Default::default()).expect("open");
        let head = store
            .head("counter", "w1")
            .expect("head")
            .expect("w1 written");
        head.version.saturating_sub(3).max(1)
    };
    let damaged = [
        corrupt(&fdir, "counter/quiet", None),
        corrupt(&fdir, "counter/w0", None),
        corrupt(&fdir, "counter/w1", Some(w1_older)),
        corrupt(&fdir, "counter/w2", None),
    ];
    println!("damaged on node {follower}: {damaged:?}");
    let before = w
        .acked
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .sum::<u64>();
    wait_for("writes while the follower is down", || async {
        let now = w
            .acked
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .sum::<u64>();
        if now >= before + 10 {
            Ok(())
        } else {
            Err(format!("{now} acks"))
        }
    })
    .await;

    let restarted = Instant::now();
    cluster.node_mut(follower).start();
    // Until repaired, the follower answers DATA_LOSS (or UNAVAILABLE while
    // it starts) for the damaged quiet head, never a wrong value.
    let mut refused = 0u32;
    let mut first_good = None;
    let probe_start = Instant::now();
    while probe_start.elapsed() < HANG_GUARD {
        match read_counter(&faddr, &token, "quiet").await {
            Ok((value, version)) => {
                assert_eq!((value, version), (5, 5), "follower served a wrong value");
                first_good.get_or_insert(restarted.elapsed());
                break;
            }
            Err(s) if s.code() == Code::DataLoss => refused += 1,
            Err(s) => assert!(
                matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded),
                "unexpected {}",
                show(&s)
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_good = first_good.expect("quiet never served again on the follower");

    // Every damaged chain verifies again on the follower.
    for name in ["quiet", "w0", "w1", "w2"] {
        let (faddr, token) = (&faddr, &token);
        wait_for(&format!("{name} verifies on the follower"), || async move {
            verify_counter(faddr, token, name).await
        })
        .await;
    }
    let repaired_all = restarted.elapsed();
    let repairs = cluster
        .node(follower)
        .metric("synapse_checkpoint_repairs_total")
        .expect("metrics");
    let data_loss = cluster
        .node(follower)
        .metric("synapse_data_loss_total")
        .unwrap_or(0);

    w.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(HANG_GUARD, t)
            .await
            .expect("writer stops")
            .expect("writer task");
    }
    let (applied, hash) = wait_converged(&addrs, &token).await;
    let acked: Vec<u64> = w.acked.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    for addr in &addrs {
        for (k, &n) in acked.iter().enumerate() {
            let (value, _) = read_counter(addr, &token, &format!("w{k}"))
                .await
                .unwrap_or_else(|s| panic!("{addr} w{k}: {}", show(&s)));
            assert_eq!(value as u64, n, "{addr} w{k}: acknowledged writes lost");
        }
        for name in ["quiet", "w0", "w1", "w2"] {
            verify_counter(addr, &token, name)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    assert!(
        repairs >= damaged.len() as u64,
        "node {follower} reports {repairs} repairs for {} damaged records",
        damaged.len()
    );
    let n_damaged = damaged.len();
    let log = cluster.node(follower).log_text();
    assert!(log.contains("repaired a damaged checkpoint"));
    println!(
        "live corruption: {n_damaged} records damaged on node {follower}; {refused} reads refused \
         (DATA_LOSS) before repair; quiet served again {first_good:?} after restart; all chains \
         verify {repaired_all:?} after restart; repairs={repairs} data_loss_reports={data_loss}; \
         acked {acked:?}, none lost; applied {applied}, state hash {hash} on all 3 nodes"
    );
}

fn corrupt_raft_entry(dir: &std::path::Path, index: Option<u64>) -> String {
    let extra: Vec<String> = index.map_or_else(Vec::new, |i| vec!["--index".into(), i.to_string()]);
    debug_corrupt(dir, "raft-entry", &extra)
}

/// Damaged Raft log records on one follower: the record at its applied
/// index (the one raft-rs reads first on restart) and an older committed
/// one. On restart the node finds them before consensus starts, repairs
/// them with verified committed copies from its peers
/// (`Peer.FetchLogEntries`), and rejoins: it serves the right value, all
/// three nodes reach equal state hashes, no acknowledged write is lost, and
/// the repair is counted (`synapse_raft_log_repairs_total`) and logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_with_corrupt_raft_records_repairs_them_from_peers_and_rejoins() {
    let mut cluster = Cluster::start_static(&[1, 2, 3], &[]);
    let addrs = cluster.addrs();
    let token = cluster.token(1).await;
    let leader = wait_leader(&addrs, &token).await;
    let follower = [1u64, 2, 3].into_iter().find(|&i| i != leader).unwrap();
    let mut acked = 0u64;
    let mut c = connect(&cluster.node(leader).addr, &token).await.unwrap();
    for i in 0..20 {
        c.skills
            .invoke(incr_request("log", &format!("l-{i}")))
            .await
            .expect("write");
        acked += 1;
    }
    let (applied_before, _) = wait_converged(&addrs, &token).await;
    let fdir = cluster.node(follower).dir.clone();
    // A clean stop, so the applied index on disk is the live one (see above).
    cluster.node_mut(follower).stop().await;
    let damaged = [
        corrupt_raft_entry(&fdir, None),
        corrupt_raft_entry(&fdir, Some(applied_before.saturating_sub(5).max(2))),
    ];
    println!("damaged on node {follower}: {damaged:?}");
    // The two healthy nodes keep accepting writes meanwhile.
    let others: Vec<String> = [1u64, 2, 3]
        .into_iter()
        .filter(|&i| i != follower)
        .map(|i| cluster.node(i).addr.clone())
        .collect();
    for i in 20..30 {
        let addr = &others[i % others.len()];
        let mut c = connect(addr, &token).await.unwrap();
        c.skills
            .invoke(incr_request("log", &format!("l-{i}")))
            .await
            .expect("write with one node damaged");
        acked += 1;
    }
    let restarted = Instant::now();
    cluster.node_mut(follower).start();
    let faddr = cluster.node(follower).addr.clone();
    // It rejoins and serves the right value (never a wrong one).
    {
        let (faddr, token) = (&faddr, &token);
        wait_for(
            "the repaired follower serves the right value",
            || async move {
                match read_counter(faddr, token, "log").await {
                    Ok((v, _)) => {
                        assert_eq!(v as u64, acked, "the repaired node serves a wrong value");
                        Ok(())
                    }
                    Err(s) => Err(show(&s)),
                }
            },
        )
        .await;
    }
    let rejoined = restarted.elapsed();
    // More writes through the repaired node (forwarded or led by it).
    for i in 30..35 {
        let mut c = connect(&faddr, &token).await.unwrap();
        c.skills
            .invoke(incr_request("log", &format!("l-{i}")))
            .await
            .expect("write through the repaired node");
        acked += 1;
    }
    let (applied, hash) = wait_converged(&addrs, &token).await;
    for addr in &addrs {
        let (v, _) = read_counter(addr, &token, "log").await.expect("read");
        assert_eq!(v as u64, acked, "{addr}: acknowledged writes lost");
        verify_counter(addr, &token, "log")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let repairs = cluster
        .node(follower)
        .metric("synapse_raft_log_repairs_total")
        .expect("metrics");
    assert!(
        repairs >= damaged.len() as u64,
        "node {follower} reports {repairs} raft log repairs for {} damaged records",
        damaged.len()
    );
    let log = cluster.node(follower).log_text();
    assert!(log.contains("repaired damaged raft log records"), "{log}");
    println!(
        "corrupt raft records on follower {follower}: {} damaged, {repairs} repaired from peers \
         at start; serving again {rejoined:?} after restart; {acked} acked writes, none lost; \
         applied {applied}, state hash {hash} on all 3 nodes",
        damaged.len()
    );
}

/// Damage that appears under a running node. The leader's own copy of a
/// committed log record goes bad while it runs (`--debug-damage-raft-entry`,
/// through its own store so sled's cache holds the damage too); nothing
/// reads it until a follower that was down needs it. raft-rs cannot go on
/// without that record, so the leader's consensus stops: it must exit with
/// status 1 (so that a supervisor restarts it), the other two must elect a
/// leader and keep acknowledging writes, and when it is started again, as a
/// supervisor would, it must repair the record from its peers before
/// consensus starts and rejoin. No acknowledged write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_log_record_damaged_under_a_running_leader_stops_it_and_is_repaired_at_restart() {
    const WRITES_BEFORE_DAMAGE: u64 = 60;
    let mut cluster = Cluster::start_static(&[1, 2, 3], &[]);
    let addrs = cluster.addrs();
    let token = cluster.token(1).await;
    wait_leader(&addrs, &token).await;
    // Node 1 carries the damage hook: a record a little above what is
    // applied now, so it is committed and applied before it goes bad.
    let applied_now = status(&addrs[0], &token).await.unwrap().applied_index;
    let damaged_index = applied_now + WRITES_BEFORE_DAMAGE / 2;
    cluster.node_mut(1).kill();
    cluster.node_mut(1).extra.extend([
        "--debug-damage-raft-entry".to_string(),
        damaged_index.to_string(),
    ]);
    cluster
        .node_mut(1)
        .env
        .push(("SYNAPSE_DEBUG_UNSAFE".into(), "1".into()));
    cluster.node_mut(1).start();
    member_change(&addrs, &token, MemberChange::TransferLeader(1), |s| {
        s.leader_id == 1
    })
    .await;
    // Node 3 goes down before the damaged record is written, so it will
    // need it from the leader when it comes back.
    cluster.node_mut(3).kill();
    let mut acked = 0u64;
    let write = |i: u64, via: Vec<String>| {
        let token = token.clone();
        async move {
            wait_for("an acknowledged write", || {
                let (via, token) = (via.clone(), token.clone());
                async move {
                    let addr = &via[(i as usize) % via.len()];
                    let mut c = connect(addr, &token).await?;
                    match tokio::time::timeout(
                        RPC_TIMEOUT,
                        c.skills.invoke(incr_request("live", &format!("v-{i}"))),
                    )
                    .await
                    {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(s)) => Err(show(&s)),
                        Err(_) => Err("timed out".to_string()),
                    }
                }
            })
            .await
        }
    };
    let up = vec![addrs[0].clone(), addrs[1].clone()];
    for i in 0..WRITES_BEFORE_DAMAGE {
        write(i, up.clone()).await;
        acked += 1;
    }
    wait_for("node 1 damages its record", || {
        let log = cluster.node(1).log_text();
        async move {
            log.contains("DEBUG UNSAFE: damaged raft log index")
                .then_some(())
                .ok_or_else(|| "not yet".to_string())
        }
    })
    .await;

    // Node 3 returns: the leader reads the damaged record to send it.
    let returned = Instant::now();
    cluster.node_mut(3).start();
    let exit = cluster
        .node_mut(1)
        .wait_exit("node 1 stops and exits")
        .await;
    let exited_after = returned.elapsed();
    assert_eq!(exit.code(), Some(1), "a node whose consensus died exits 1");
    let log1 = cluster.node(1).log_text();
    assert!(
        log1.contains("consensus stopped on this node"),
        "node 1 must say why it exits: {}",
        cluster.node(1).tail(30)
    );
    let cause = log1
        .lines()
        .find(|l| l.contains("panicked") || l.contains("unexpected error"))
        .unwrap_or("(no panic line)")
        .to_string();

    // The other two elect a leader and keep acknowledging writes.
    let survivors = vec![addrs[1].clone(), addrs[2].clone()];
    for i in WRITES_BEFORE_DAMAGE..WRITES_BEFORE_DAMAGE + 20 {
        write(i, survivors.clone()).await;
        acked += 1;
    }

    // Restarted without the hook, as a supervisor would: repaired at start.
    let extra = &mut cluster.node_mut(1).extra;
    extra.truncate(extra.len() - 2);
    cluster.node_mut(1).env.clear();
    let restarted = Instant::now();
    cluster.node_mut(1).start();
    for i in WRITES_BEFORE_DAMAGE + 20..WRITES_BEFORE_DAMAGE + 30 {
        write(i, addrs.clone()).await;
        acked += 1;
    }
    let (applied, hash) = wait_converged(&addrs, &token).await;
    let rejoined = restarted.elapsed();
    for addr in &addrs {
        let (v, _) = read_counter(addr, &token, "live").await.expect("read");
        assert_eq!(v as u64, acked, "{addr}: acknowledged writes lost");
        verify_counter(addr, &token, "live")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let repairs = cluster
        .node(1)
        .metric("synapse_raft_log_repairs_total")
        .expect("metrics");
    assert!(repairs >= 1, "node 1 reports {repairs} raft log repairs");
    let log1 = cluster.node(1).log_text();
    assert!(log1.contains("repaired damaged raft log records"), "{log1}");
    println!(
        "live damage: node 1 (leader) damaged raft index {damaged_index} while running; it exited \
         with status 1 {exited_after:?} after node 3 returned; the survivors acked 20 writes; \
         restarted, it repaired {repairs} record(s) from peers and the cluster converged \
         {rejoined:?} later; {acked} acked writes, none lost; applied {applied}, hash {hash}; \
         cause on node 1: {cause}"
    );
}

/// The operator remedy for a node whose Raft state cannot be repaired from
/// peers (here: its hard state record is damaged, which no peer has): it
/// refuses to start; it is removed from the cluster through a healthy
/// node, its data directory is wiped, and it joins again under a NEW id
/// (`--node-id 0 --join`: the leader allocates it; the old id is
/// tombstoned and refused), as a learner, then promoted. It catches up from a snapshot; all
/// three nodes end with equal state hashes and every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unrepairable_node_is_removed_wiped_and_re_added() {
    let mut cluster = Cluster::start_static(&[1, 2, 3], &[]);
    let addrs = cluster.addrs();
    let token = cluster.token(1).await;
    let leader = wait_leader(&addrs, &token).await;
    let follower = [1u64, 2, 3].into_iter().find(|&i| i != leader).unwrap();
    let mut c = connect(&cluster.node(leader).addr, &token).await.unwrap();
    let mut acked = 0u64;
    for i in 0..20 {
        c.skills
            .invoke(incr_request("seed", &format!("s-{i}")))
            .await
            .expect("write");
        acked += 1;
    }
    wait_converged(&addrs, &token).await;
    let fdir = cluster.node(follower).dir.clone();
    let faddr = cluster.node(follower).addr.clone();
    cluster.node_mut(follower).kill();
    {
        let store = synapse_storage::Store::open(&fdir, Default::default()).expect("open");
        let meta = store.raw_tree("raft_meta").expect("raft_meta");
        let mut raw = meta
            .get(b"hard_state")
            .unwrap()
            .expect("hard state")
            .to_vec();
        raw[0] ^= 0x5a;
        meta.insert(b"hard_state", raw).unwrap();
        store.sync().unwrap();
    }
    cluster.node_mut(follower).start();
    let exited = cluster
        .node_mut(follower)
        .wait_exit("the damaged node refuses to start")
        .await;
    assert!(!exited.success(), "{exited}");
    let refusal = cluster
        .node(follower)
        .log_text()
        .lines()
        .rev()
        .find(|l| l.to_lowercase().contains("corrupt"))
        .unwrap_or("")
        .chars()
        .take(200)
        .collect::<String>();
    assert!(!refusal.is_empty(), "the refusal names the corruption");

    let others: Vec<String> = [1u64, 2, 3]
        .into_iter()
        .filter(|&i| i != follower)
        .map(|i| cluster.node(i).addr.clone())
        .collect();
    let t_remedy = Instant::now();
    member_change(&others, &token, MemberChange::Remove(follower), |s| {
        !s.voters.contains(&follower) && !s.learners.contains(&follower)
    })
    .await;
    for i in 20..30 {
        let mut c = connect(&others[i % 2], &token).await.unwrap();
        c.skills
            .invoke(incr_request("seed", &format!("s-{i}")))
            .await
            .expect("write on the two healthy nodes");
        acked += 1;
    }
    std::fs::remove_dir_all(&fdir).expect("wipe the data directory");
    // Its old id is tombstoned: adding it back is refused, whoever asks.
    let refused = {
        let leader = wait_leader(&others, &token).await;
        let mut leader_addr = None;
        for a in &others {
            if status(a, &token).await.ok().map(|s| s.node_id) == Some(leader) {
                leader_addr = Some(a.clone());
            }
        }
        let leader_addr = leader_addr.expect("the leader is one of the healthy nodes");
        let mut c = connect(&leader_addr, &token).await.unwrap();
        c.cluster
            .add_member(v1::AddMemberRequest {
                id: follower,
                address: faddr.clone(),
                ..Default::default()
            })
            .await
            .expect_err("a removed id is added again")
    };
    assert_eq!(
        refused.code(),
        Code::FailedPrecondition,
        "{}",
        show(&refused)
    );
    assert!(
        refused.message().contains("never reused"),
        "{}",
        show(&refused)
    );
    // The wiped machine joins with node id 0: the leader allocates an id
    // never used in this cluster and the node keeps it in its data dir.
    let rejoined = {
        let n = cluster.node_mut(follower);
        n.id = 0;
        n.extra = vec![
            "--join".into(),
            others[0].clone(),
            "--join-token".into(),
            token.clone(),
        ];
        n.start();
        n.id = follower;
        let id_file = fdir.join(synapse_runtime::identity::NODE_ID_FILE);
        wait_for("the rejoined node stores its allocated id", || {
            let id_file = id_file.clone();
            async move {
                synapse_runtime::identity::read_id_file(id_file.parent().unwrap())
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| "no id file yet".to_string())
            }
        })
        .await
    };
    assert!(
        rejoined > 3,
        "allocated id {rejoined} must be new (members 1..=3 were used)"
    );
    member_change(&others, &token, MemberChange::Promote(rejoined), |s| {
        s.voters.contains(&rejoined)
    })
    .await;
    let caught_up = t_remedy.elapsed();
    for i in 30..35 {
        // Retried with the same request id until acknowledged: right after
        // it joins, the node may not know the leader yet (UNAVAILABLE).
        let (faddr, token) = (&faddr, &token);
        wait_for("a write through the re-added node", || async move {
            let mut c = connect(faddr, token).await?;
            c.skills
                .invoke(incr_request("seed", &format!("s-{i}")))
                .await
                .map(|_| ())
                .map_err(|s| {
                    assert_eq!(s.code(), Code::Unavailable, "{}", show(&s));
                    show(&s)
                })
        })
        .await;
        acked += 1;
    }
    let (applied, hash) = wait_converged(&addrs, &token).await;
    for addr in &addrs {
        let (v, _) = read_counter(addr, &token, "seed").await.expect("read");
        assert_eq!(v as u64, acked, "{addr}: acknowledged writes lost");
        verify_counter(addr, &token, "seed")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    println!(
        "unrepairable node {follower}: refused to start ({exited}; log: {refusal}); removed, \
         wiped, rejoined as node {rejoined} and promoted in {caught_up:?}; {acked} acked writes, none lost; \
         applied {applied}, state hash {hash} on all 3 nodes"
    );
}
