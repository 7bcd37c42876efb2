//! Repair of damaged Raft log records from peers, before consensus starts.
//!
//! raft-rs panics on some storage errors, so this node must never run it
//! over a log with a known-damaged record. At every start (before the Raft
//! driver is built) the retained log is scanned; each damaged record is
//! replaced with a peer's copy fetched with `Peer.FetchLogEntries` (peer
//! credential, like `FetchCheckpoint`) and accepted only if
//! `synapse_storage::RaftLog::repair_entry` verifies it: record checksum and
//! index, the entry committed on the peer *and* on this node, terms
//! consistent with the intact neighbours. The safety argument is written
//! on that `impl` in `storage/src/raft_log.rs`.
//!
//! A record that cannot be repaired this way (above this node's commit
//! index, compacted or damaged on every peer, no peer reachable within the
//! bounded retries) keeps the node from starting, with an error that names
//! the index and the remedy (re-seed the node: remove the member, wipe its
//! data directory, add it back; see docs/verification-storage.md).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use synapse_proto::v1 as pb;
use synapse_storage::{StorageError, Store};

use crate::cluster::PeerChannels;
use crate::metrics::Metrics;
use crate::RuntimeError;

/// Records per `FetchLogEntries` answer at most. Damage is normally a few
/// records; a bound keeps one answer (and the time the server spends
/// reading and verifying) small.
pub(crate) const MAX_LOG_FETCH_ENTRIES: u64 = 256;

/// Bytes of records per answer at most (one record is always sent), well
/// under the peer frame limit, so a log of large checkpoints still fits.
pub(crate) const MAX_LOG_FETCH_BYTES: usize = 4 << 20;

/// Damaged records handled per start at most; beyond this the log is not
/// worth patching record by record and the node is re-seeded instead.
const MAX_DAMAGED: usize = 4096;

/// Rounds over all peers before giving up. Right after a cluster-wide
/// restart the peers may still be starting, so retry for a while (about
/// half a minute with the backoff below).
const MAX_ROUNDS: u32 = 10;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One FetchLogEntries call; a slower peer is skipped for this round.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// Serves `Peer.FetchLogEntries`: verified committed records from `from`,
/// bounded by `MAX_LOG_FETCH_ENTRIES` and `MAX_LOG_FETCH_BYTES`.
pub(crate) async fn serve(
    store: &Store,
    from: u64,
    to: u64,
) -> Result<pb::FetchLogEntriesResponse, RuntimeError> {
    if from == 0 || to < from {
        return Err(RuntimeError::InvalidArgument(format!(
            "bad log range {from}..={to}"
        )));
    }
    let to = to.min(from.saturating_add(MAX_LOG_FETCH_ENTRIES - 1));
    let log = store.raft_log();
    let (commit_index, records) =
        tokio::task::spawn_blocking(move || log.committed_records(from, to, MAX_LOG_FETCH_BYTES))
            .await
            .map_err(|e| RuntimeError::Internal(format!("log read: {e}")))?
            .map_err(|e| match e {
                StorageError::Compacted { index } => {
                    RuntimeError::NotFound(format!("raft log entry {index} is compacted here"))
                }
                other => other.into(),
            })?;
    Ok(pb::FetchLogEntriesResponse {
        commit_index,
        first_index: from,
        records,
    })
}

/// Scans the retained Raft log and repairs every damaged record from
/// `peers` (id, address). `Ok(n)`: `n` records repaired, the log is intact.
/// `Err(DataLoss)` naming the first unrepaired index and the remedy.
pub(crate) async fn repair_at_start(
    store: &Store,
    peers: &[(u64, String)],
    channels: &PeerChannels,
    metrics: &Metrics,
) -> Result<u64, RuntimeError> {
    let log = store.raft_log();
    let scan = log.clone();
    let damaged = tokio::task::spawn_blocking(move || scan.damaged_entries(MAX_DAMAGED))
        .await
        .map_err(|e| RuntimeError::Internal(format!("raft log scan: {e}")))??;
    if damaged.is_empty() {
        return Ok(0);
    }
    metrics
        .data_loss
        .fetch_add(damaged.len() as u64, Ordering::Relaxed);
    tracing::error!(
        count = damaged.len(),
        first = damaged[0],
        "damaged raft log records found at start; repairing from peers before consensus starts"
    );
    if damaged.len() >= MAX_DAMAGED {
        return Err(unrepairable(damaged[0], "too many damaged records"));
    }
    if peers.is_empty() {
        metrics.repair_failures.fetch_add(1, Ordering::Relaxed);
        return Err(unrepairable(damaged[0], "no peer is known"));
    }
    let mut left: BTreeSet<u64> = damaged.into_iter().collect();
    let mut repaired = 0u64;
    let mut last_reason = String::from("no peer had a verified committed copy");
    let mut backoff = FIRST_BACKOFF;
    for round in 1..=MAX_ROUNDS {
        for (peer, address) in peers {
            if left.is_empty() {
                break;
            }
            match repair_from(store, channels, address, &mut left).await {
                Ok(n) => {
                    if n > 0 {
                        tracing::warn!(
                            peer,
                            repaired = n,
                            "repaired damaged raft log records with verified committed copies from a peer"
                        );
                    }
                    repaired += n;
                    metrics.log_repairs.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(peer, error = %e, "peer could not repair the raft log");
                    last_reason = format!("peer {peer}: {e}");
                }
            }
        }
        if left.is_empty() {
            break;
        }
        if round < MAX_ROUNDS {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
    if let Some(&index) = left.iter().next() {
        metrics.repair_failures.fetch_add(1, Ordering::Relaxed);
        return Err(unrepairable(index, &last_reason));
    }
    // Durable before raft-rs reads the log.
    let sync = store.clone();
    tokio::task::spawn_blocking(move || sync.sync())
        .await
        .map_err(|e| RuntimeError::Internal(format!("raft log sync: {e}")))??;
    // Confirm with a fresh scan: nothing damaged is handed to raft-rs.
    let rescan = log.clone();
    let still = tokio::task::spawn_blocking(move || rescan.damaged_entries(1))
        .await
        .map_err(|e| RuntimeError::Internal(format!("raft log scan: {e}")))??;
    if let Some(&index) = still.first() {
        return Err(unrepairable(index, "still damaged after repair"));
    }
    Ok(repaired)
}

fn unrepairable(index: u64, reason: &str) -> RuntimeError {
    RuntimeError::DataLoss(format!(
        "raft log entry {index} is damaged and could not be repaired from a peer ({reason}); \
         this node will not start. Remedy: remove this member (`synapse cluster remove`), \
         wipe its data directory and add it back (docs/verification-storage.md)"
    ))
}

/// One peer: fetch the damaged ranges and repair what verifies. Returns the
/// number of records repaired; removes them from `left`.
async fn repair_from(
    store: &Store,
    channels: &PeerChannels,
    address: &str,
    left: &mut BTreeSet<u64>,
) -> Result<u64, RuntimeError> {
    let channel = channels.get(address)?;
    let mut client = pb::peer_client::PeerClient::new(channel);
    let mut repaired = 0u64;
    let wanted: Vec<u64> = left.iter().copied().collect();
    let mut i = 0;
    while i < wanted.len() {
        // One request per run of nearby damaged indices.
        let from = wanted[i];
        let limit = from.saturating_add(MAX_LOG_FETCH_ENTRIES - 1);
        let mut to = from;
        while i < wanted.len() && wanted[i] <= limit {
            to = wanted[i];
            i += 1;
        }
        let request = channels.peer_request(pb::FetchLogEntriesRequest { from, to });
        let response = tokio::time::timeout(FETCH_TIMEOUT, client.fetch_log_entries(request))
            .await
            .map_err(|_| RuntimeError::unavailable("FetchLogEntries timed out"))?
            .map_err(crate::cluster::error_from_status)?
            .into_inner();
        if response.first_index != from {
            return Err(RuntimeError::Internal(format!(
                "peer answered from {} for a request from {from}",
                response.first_index
            )));
        }
        let commit = response.commit_index;
        let mut fixed = Vec::new();
        for (offset, record) in response.records.into_iter().enumerate() {
            let index = from + offset as u64;
            if index > to || !left.contains(&index) {
                continue;
            }
            let log = store.raft_log();
            let outcome =
                tokio::task::spawn_blocking(move || log.repair_entry(index, &record, commit))
                    .await
                    .map_err(|e| RuntimeError::Internal(format!("raft log repair: {e}")))?;
            match outcome {
                Ok(_) => fixed.push(index),
                // Refused copies are logged and the next peer is asked.
                Err(e @ StorageError::RepairRefused { .. }) => {
                    tracing::warn!(index, error = %e, "refused a peer's raft log record");
                }
                Err(e) => return Err(e.into()),
            }
        }
        for index in fixed {
            left.remove(&index);
            repaired += 1;
        }
    }
    Ok(repaired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use synapse_storage::StoreOptions;

    #[tokio::test]
    async fn a_damaged_record_nobody_can_repair_stops_the_start_with_index_and_remedy() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let log = store.raft_log();
        let entries: Vec<raft::eraftpb::Entry> = (1..=5)
            .map(|index| raft::eraftpb::Entry {
                index,
                term: 1,
                ..Default::default()
            })
            .collect();
        log.append(&entries).unwrap();
        let metrics = Metrics::default();
        let channels = PeerChannels::default();
        // Intact: nothing to do.
        assert_eq!(
            repair_at_start(&store, &[], &channels, &metrics)
                .await
                .unwrap(),
            0
        );
        let mut bytes = log.debug_record(3).unwrap();
        bytes[0] ^= 0xff;
        log.debug_overwrite_record(3, &bytes).unwrap();
        match repair_at_start(&store, &[], &channels, &metrics).await {
            Err(RuntimeError::DataLoss(msg)) => {
                assert!(msg.contains("raft log entry 3"), "{msg}");
                assert!(msg.contains("Remedy"), "{msg}");
            }
            other => panic!("expected DATA_LOSS, got {other:?}"),
        }
        assert_eq!(metrics.repair_failures.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.data_loss.load(Ordering::Relaxed), 1);
    }
}
