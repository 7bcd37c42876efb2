//! Ids are never reused (`synapse_runtime::identity`), with real
//! processes: a member that lost its data cannot come back under the id it
//! voted with, neither while that id is a voter nor after it was removed;
//! the supported ways back are a new id allocated by the leader
//! (`--node-id 0`, tested in `live_corruption.rs`) and, for a StatefulSet
//! pod whose id is only a preference (`--node-id-from-hostname`), an
//! automatic new id once the old one was removed. The allocated id is kept
//! in the data dir across restarts.

mod proc;

use std::process::ExitStatus;

use proc::*;
use synapse_runtime::identity::{read_id_file, NODE_ID_FILE};

/// Starts `node` and waits (bounded) for it to exit; returns the exit status
/// and the last log line that mentions `needle`.
async fn refused_start(cluster: &mut Cluster, node: u64, needle: &str) -> (ExitStatus, String) {
    cluster.node_mut(node).start();
    let exited = cluster
        .node_mut(node)
        .wait_exit("the node refuses to start")
        .await;
    let line = cluster
        .node(node)
        .log_text()
        .lines()
        .rev()
        .find(|l| l.contains(needle))
        .unwrap_or("")
        .to_string();
    (exited, line)
}

/// Increments `counter` with request id `<counter>-<i>` through one of
/// `others`, retried until acknowledged.
async fn write_acked(others: &[String], token: &str, counter: &str, i: u64) {
    wait_for("a write", || {
        let addr = others[(i % 2) as usize].clone();
        let (token, counter) = (token.to_string(), counter.to_string());
        async move {
            let mut c = connect(&addr, &token).await?;
            c.skills
                .invoke(incr_request(&counter, &format!("{counter}-{i}")))
                .await
                .map(|_| ())
                .map_err(|s| show(&s))
        }
    })
    .await
}

/// The last step of every rejoin: restarting the rejoined node keeps its
/// allocated id, and after five more writes every node holds every
/// acknowledged one. Returns the converged (applied index, state hash).
async fn restart_keeps_id_and_all_hold(
    cluster: &mut Cluster,
    node: u64,
    new_id: u64,
    token: &str,
    others: &[String],
    counter: &str,
    acked: &mut u64,
) -> (u64, String) {
    let addr = cluster.node(node).addr.clone();
    cluster.node_mut(node).kill();
    cluster.node_mut(node).start();
    let again = wait_for("the restarted node answers", || {
        let (addr, token) = (addr.clone(), token.to_string());
        async move { status(&addr, &token).await }
    })
    .await;
    assert_eq!(again.node_id, new_id, "a restart keeps the allocated id");
    for i in 15..20 {
        write_acked(others, token, counter, i).await;
        *acked += 1;
    }
    let addrs = cluster.addrs();
    let converged = wait_converged(&addrs, token).await;
    for addr in &addrs {
        let (v, _) = read_counter(addr, token, counter).await.expect("read");
        assert_eq!(v as u64, *acked, "{addr}: acknowledged writes lost");
    }
    converged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_member_never_rejoins_under_its_old_id() {
    let mut cluster = Cluster::start_static(&[1, 2, 3], &[]);
    let addrs = cluster.addrs();
    let token = cluster.token(1).await;
    let leader = wait_leader(&addrs, &token).await;
    let wiped = [1u64, 2, 3].into_iter().find(|&i| i != leader).unwrap();
    let others: Vec<String> = [1u64, 2, 3]
        .into_iter()
        .filter(|&i| i != wiped)
        .map(|i| cluster.node(i).addr.clone())
        .collect();
    let mut acked = 0u64;
    let write = |i: u64| write_acked(&others, &token, "rejoin", i);
    for i in 0..10 {
        write(i).await;
        acked += 1;
    }
    wait_converged(&addrs, &token).await;
    let dir = cluster.node(wiped).dir.clone();
    assert_eq!(read_id_file(&dir).unwrap(), Some(wiped), "the id is stored");
    cluster.node_mut(wiped).kill();
    std::fs::remove_dir_all(&dir).expect("wipe");
    cluster.node_mut(wiped).extra = vec![
        "--join".into(),
        others[0].clone(),
        "--join-token".into(),
        token.clone(),
    ];

    // 1. Still a voter: it lost the votes it cast, so it may not come back.
    let (exited, line) = refused_start(&mut cluster, wiped, "lost its data").await;
    assert!(!exited.success(), "{exited}");
    assert!(
        line.contains(&format!(
            "remove it first (`synapse cluster remove {wiped}`)"
        )),
        "the refusal names the remedy: {line}"
    );
    assert!(
        !dir.join(NODE_ID_FILE).exists(),
        "a refused node stores no id"
    );
    // A surviving id file does not make a lost log any less lost.
    std::fs::create_dir_all(&dir).unwrap();
    synapse_runtime::identity::write_id_file(&dir, wiped).unwrap();
    let (exited, line) = refused_start(&mut cluster, wiped, "lost its data").await;
    assert!(!exited.success(), "{exited}");
    assert!(!line.is_empty(), "refused with a kept id file too");
    std::fs::remove_dir_all(&dir).expect("wipe");

    // 2. Removed: the id is tombstoned and refused for good.
    member_change(&others, &token, MemberChange::Remove(wiped), |s| {
        !s.voters.contains(&wiped) && !s.learners.contains(&wiped) && s.removed.contains(&wiped)
    })
    .await;
    for i in 10..15 {
        write(i).await;
        acked += 1;
    }
    let (exited, line) = refused_start(&mut cluster, wiped, "never reused").await;
    assert!(!exited.success(), "{exited}");
    assert!(!line.is_empty(), "the refusal says ids are never reused");

    // 3. A pod whose id is only its ordinal's preference joins under a new id.
    {
        let n = cluster.node_mut(wiped);
        n.extra.push("--node-id-from-hostname".into());
        n.env = vec![("HOSTNAME".into(), format!("synapse-{}", wiped - 1))];
        n.start();
    }
    let new_id = wait_for("the wiped pod is admitted under a new id", || {
        let dir = dir.clone();
        async move {
            read_id_file(&dir)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "no id stored yet".to_string())
        }
    })
    .await;
    assert!(new_id > 3, "new id {new_id} was never used (1..=3 were)");
    member_change(&others, &token, MemberChange::Promote(new_id), |s| {
        s.voters.contains(&new_id)
    })
    .await;
    let waddr = cluster.node(wiped).addr.clone();
    // It may still be catching up or reconnecting right after promotion.
    let s = wait_for("status of the rejoined node", || {
        let (waddr, token) = (waddr.clone(), token.clone());
        async move { status(&waddr, &token).await }
    })
    .await;
    assert_eq!(s.node_id, new_id);
    assert!(
        s.removed.contains(&wiped),
        "tombstones replicate: {:?}",
        s.removed
    );

    // 4. A restart keeps the stored id, whatever the hostname says.
    let (applied, hash) = restart_keeps_id_and_all_hold(
        &mut cluster,
        wiped,
        new_id,
        &token,
        &others,
        "rejoin",
        &mut acked,
    )
    .await;
    let final_status = status(&addrs[0], &token).await.unwrap();
    println!(
        "node {wiped} wiped: refused as a voter and as a removed id, rejoined as node {new_id}; \
         voters {:?}, removed {:?}; {acked} acked writes on all 3 nodes at applied {applied}, hash {hash}",
        final_status.voters, final_status.removed
    );
}

/// How the cluster under test was bootstrapped.
#[derive(Clone, Copy, Debug)]
enum Bootstrap {
    /// `--peers`: every member bootstraps the same voter set.
    Peers,
    /// `--seed`: node 1 bootstraps, the others join it.
    Seed,
}

/// A bootstrap member whose data dir was deleted must not bootstrap again
/// from its flags (issue #8): with its original flags it refuses to start,
/// naming the remedy, and the cluster keeps every acked write with no
/// second cluster; with a preference id it is refused while its old id is
/// a voter, and admitted under a new id (then promoted by itself, data
/// present) once the operator removed the old one.
async fn wiped_bootstrap_member(mode: Bootstrap) {
    let mut cluster = match mode {
        Bootstrap::Peers => Cluster::start_static(&[1, 2, 3], &[]),
        Bootstrap::Seed => Cluster::start_seed(&[1, 2, 3], &[]),
    };
    let addrs = cluster.addrs();
    let token = cluster.token(3).await;
    wait_for("voters [1, 2, 3]", || {
        let (a, t) = (addrs[2].clone(), token.clone());
        async move {
            let s = status(&a, &t).await?;
            (s.voters == [1, 2, 3] && s.leader_id != 0)
                .then_some(())
                .ok_or(format!("voters {:?}", s.voters))
        }
    })
    .await;
    let leader = wait_leader(&addrs, &token).await;
    // Peers: any follower. Seed: node 1, the seed itself (the leader or not).
    let wiped = match mode {
        Bootstrap::Peers => [1u64, 2, 3].into_iter().find(|&i| i != leader).unwrap(),
        Bootstrap::Seed => 1,
    };
    let others: Vec<String> = [1u64, 2, 3]
        .into_iter()
        .filter(|&i| i != wiped)
        .map(|i| cluster.node(i).addr.clone())
        .collect();
    let write = |i: u64| write_acked(&others, &token, "boot", i);
    let mut acked = 0u64;
    for i in 0..10 {
        write(i).await;
        acked += 1;
    }
    wait_converged(&addrs, &token).await;
    // A leader marks every member that took part; the wiped one did.
    wait_for("the member is marked as started", || {
        let a = others[0].clone();
        async move {
            let p = probe(&a, wiped).await?;
            (p.started && p.voter).then_some(()).ok_or(format!("{p:?}"))
        }
    })
    .await;

    let dir = cluster.node(wiped).dir.clone();
    let original = cluster.node(wiped).extra.clone();
    if leader == wiped {
        // Killing the leader first: the others elect a new one.
        cluster.node_mut(wiped).kill();
        wait_leader(&others, &token).await;
    }
    cluster.node_mut(wiped).kill();
    std::fs::remove_dir_all(&dir).expect("wipe");

    // 1. Original flags, explicit id: refuses to start, naming the remedy.
    let (exited, line) = refused_start(&mut cluster, wiped, "refuses to start").await;
    assert!(!exited.success(), "{exited}");
    assert!(
        line.contains(&format!("synapse cluster remove {wiped}")) && line.contains("--node-id 0"),
        "the refusal names the remedy: {line}"
    );
    assert!(
        !dir.join(NODE_ID_FILE).exists(),
        "a refused node stores no id"
    );
    // No second cluster, nothing lost: the others still agree on one leader
    // among the original voters and hold every acked write.
    let leader_now = wait_leader(&others, &token).await;
    assert_ne!(leader_now, wiped);
    for a in &others {
        let s = status(a, &token).await.expect("status");
        assert_eq!(s.voters, [1, 2, 3], "{a}");
        let (v, _) = read_counter(a, &token, "boot").await.expect("read");
        assert_eq!(v as u64, acked, "{a}: acknowledged writes lost");
    }
    std::fs::remove_dir_all(&dir).ok();

    // 2. Its id only a preference (a StatefulSet pod): it asks to be
    // admitted instead, and is refused while the old id is a voter.
    let preference = {
        let mut f = original.clone();
        f.extend(["--node-id-from-hostname".into()]);
        if matches!(mode, Bootstrap::Peers) {
            f.extend(["--join-token".into(), token.clone()]);
        }
        f
    };
    {
        let n = cluster.node_mut(wiped);
        n.extra = preference.clone();
        n.env = vec![("HOSTNAME".into(), format!("synapse-{}", wiped - 1))];
    }
    let (exited, line) = refused_start(&mut cluster, wiped, "lost its data").await;
    assert!(!exited.success(), "{exited}");
    assert!(
        line.contains(&format!(
            "remove it first (`synapse cluster remove {wiped}`)"
        )),
        "the leader's refusal names the remedy: {line}"
    );
    std::fs::remove_dir_all(&dir).ok();

    // 3. The operator removes the old id: the same pod is admitted under a
    // new id and promoted by itself, with every acked write.
    member_change(&others, &token, MemberChange::Remove(wiped), |s| {
        !s.voters.contains(&wiped) && s.removed.contains(&wiped)
    })
    .await;
    for i in 10..15 {
        write(i).await;
        acked += 1;
    }
    cluster.node_mut(wiped).start();
    let new_id = wait_for("the wiped member is admitted under a new id", || {
        let dir = dir.clone();
        async move {
            read_id_file(&dir)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "no id stored yet".to_string())
        }
    })
    .await;
    assert!(new_id > 3, "new id {new_id} was never used (1..=3 were)");
    wait_for("the new member is promoted to voter", || {
        let (a, t) = (others[0].clone(), token.clone());
        async move {
            let s = status(&a, &t).await?;
            s.voters
                .contains(&new_id)
                .then_some(())
                .ok_or(format!("voters {:?}", s.voters))
        }
    })
    .await;

    // 4. A restart with the same flags keeps the new id and does not probe
    // (its log is intact).
    let (applied, hash) = restart_keeps_id_and_all_hold(
        &mut cluster,
        wiped,
        new_id,
        &token,
        &others,
        "boot",
        &mut acked,
    )
    .await;
    let s = status(&others[0], &token).await.unwrap();
    println!(
        "{mode:?}: node {wiped} wiped, refused with its flags and while a voter, admitted as \
         node {new_id}; voters {:?}, removed {:?}; {acked} acked writes on all 3 at applied \
         {applied}, hash {hash}",
        s.voters, s.removed
    );
    assert!(s.voters.contains(&new_id) && s.removed.contains(&wiped));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_peers_member_does_not_bootstrap_again() {
    wiped_bootstrap_member(Bootstrap::Peers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_seed_does_not_bootstrap_again() {
    wiped_bootstrap_member(Bootstrap::Seed).await;
}
