//! The capability audit trail's writer. Every guard decision is pushed onto
//! a bounded queue; one dedicated thread drains it and appends the records
//! to the store's hash chain in batches (one segment-file write per drain).
//! A request therefore pays for building the record and one queue push,
//! not for a SHA-256 and a disk write, and never for an fsync: the writer
//! makes each batch durable itself (`Store::audit_sync`: the trail has its
//! own segment files), so records arriving during that fsync form the next
//! batch.
//!
//! Owns: the queue, its bound, the writer thread and retention pruning.
//! Must never: block a request on the disk (a full queue is refused, not
//! waited on), reorder records (one writer, FIFO), or drop a record
//! silently (every loss is counted in `audit_records_dropped_total` or
//! `audit_write_failures_total` and logged).

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use synapse_storage::{AuditRecord, Store};
use tokio::sync::oneshot;

use crate::error::RuntimeError;
use crate::metrics::Metrics;

/// Records waiting for the writer. The writer stores ~100k records/s in
/// batches (≈ 9.5 µs per record end to end, benches/README.md), so a full queue means the disk has stalled, not
/// that traffic is high; ~16k records × ~200 bytes ≈ 3 MB is the memory
/// this can hold. Past it requests are refused (fail closed: no
/// decision goes unrecorded because the recorder is behind).
pub const AUDIT_QUEUE_CAPACITY: usize = 16_384;

/// Most records written in one batch: large enough to amortize the write
/// and its fsync, small enough that a flush waiter is not held behind a huge
/// batch.
pub const MAX_AUDIT_BATCH: usize = 1_024;

/// How long a query waits for the records queued before it to be written.
pub const AUDIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Least time between two audit fsyncs. Without it the writer synced every
/// few records under load (about 190 fsyncs/s on a leader at 2 800
/// writes/s, against 40/s for its Raft log), and each wake-up of the writer
/// was a futex call on the node thread that queued the record. Waiting this
/// long lets one write and one fsync carry the records of that window;
/// the queue holds far more than 5 ms of any load this node can serve.
pub const AUDIT_SYNC_MIN_INTERVAL: Duration = Duration::from_millis(5);

/// Retention is enforced every this many records (a prune may delete
/// segment files and writes a marker to sled; per record it would dominate
/// the writer).
const AUDIT_PRUNE_EVERY: u64 = 10_000;

// Records travel inline (no allocation per decision); the channel's buffer
// of AUDIT_QUEUE_CAPACITY slots (~3.7 MB) is the price, and it is bounded.
#[allow(clippy::large_enum_variant)]
enum Message {
    Record(AuditRecord),
    /// Answered once every record queued before it is in the store.
    Flush(oneshot::Sender<()>),
}

/// Handle to the audit writer. Dropping it drains the queue and joins the
/// thread.
pub struct AuditLog {
    tx: Option<SyncSender<Message>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Starts the writer thread over `store`, keeping at most
    /// `max_records` records.
    pub fn start(
        store: Store,
        max_records: u64,
        metrics: Arc<Metrics>,
    ) -> Result<AuditLog, RuntimeError> {
        let (log, rx) = AuditLog::unstarted(AUDIT_QUEUE_CAPACITY, metrics);
        let writer_metrics = log.metrics.clone();
        let thread = std::thread::Builder::new()
            .name("synapse-audit".into())
            .spawn(move || write_loop(&store, max_records, &writer_metrics, &rx))
            .map_err(|e| RuntimeError::Internal(format!("cannot start the audit writer: {e}")))?;
        if let Ok(mut slot) = log.thread.lock() {
            *slot = Some(thread);
        }
        Ok(log)
    }

    /// The queue without its writer (the writer thread takes the receiver).
    fn unstarted(capacity: usize, metrics: Arc<Metrics>) -> (AuditLog, Receiver<Message>) {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let log = AuditLog {
            tx: Some(tx),
            thread: Mutex::new(None),
            metrics,
        };
        (log, rx)
    }

    /// Queues `record`. `ResourceExhausted` when the queue is full (the
    /// caller refuses the request it was auditing); `Unavailable` if the
    /// writer has stopped.
    pub fn record(&self, record: AuditRecord) -> Result<(), RuntimeError> {
        let Some(tx) = &self.tx else {
            return Err(RuntimeError::unavailable("audit writer stopped"));
        };
        match tx.try_send(Message::Record(record)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.metrics.audit_dropped.fetch_add(1, Ordering::Relaxed);
                Err(RuntimeError::ResourceExhausted(format!(
                    "audit log backlog is full ({AUDIT_QUEUE_CAPACITY} records); retry shortly"
                )))
            }
            Err(TrySendError::Disconnected(_)) => {
                self.metrics.audit_dropped.fetch_add(1, Ordering::Relaxed);
                Err(RuntimeError::unavailable("audit writer stopped"))
            }
        }
    }

    /// Waits (bounded by [`AUDIT_FLUSH_TIMEOUT`]) until every record queued
    /// before this call is in the store, so a query sees its own
    /// decisions.
    pub async fn flush(&self) -> Result<(), RuntimeError> {
        let Some(tx) = &self.tx else {
            return Err(RuntimeError::unavailable("audit writer stopped"));
        };
        let (done_tx, done_rx) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + AUDIT_FLUSH_TIMEOUT;
        // A flush marker must not be lost to a momentarily full queue, and
        // must not block a runtime thread: retry briefly until the deadline.
        let mut marker = Message::Flush(done_tx);
        loop {
            match tx.try_send(marker) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(RuntimeError::unavailable(
                            "audit writer is behind; retry the query shortly",
                        ));
                    }
                    marker = m;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(TrySendError::Disconnected(_)) => {
                    return Err(RuntimeError::unavailable("audit writer stopped"));
                }
            }
        }
        match tokio::time::timeout_at(deadline, done_rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(RuntimeError::unavailable("audit writer stopped")),
            Err(_) => Err(RuntimeError::unavailable(
                "audit writer is behind; retry the query shortly",
            )),
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        // Closing the channel ends the writer once it has drained the queue.
        self.tx.take();
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            if t.join().is_err() {
                tracing::error!("audit writer thread panicked");
            }
        }
    }
}

fn write_loop(store: &Store, max_records: u64, metrics: &Metrics, rx: &Receiver<Message>) {
    let mut since_prune: u64 = 0;
    let mut records = Vec::with_capacity(MAX_AUDIT_BATCH);
    let mut waiters = Vec::new();
    let mut last_sync: Option<Instant> = None;
    // `recv` fails once every sender is gone and the queue is empty.
    while let Ok(first) = rx.recv() {
        if let Some(wait) = last_sync.and_then(|t| AUDIT_SYNC_MIN_INTERVAL.checked_sub(t.elapsed()))
        {
            std::thread::sleep(wait);
        }
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Record(r) => records.push(r),
                Message::Flush(w) => waiters.push(w),
            }
            if records.len() >= MAX_AUDIT_BATCH {
                break;
            }
            // Empty or disconnected: write what we have.
            next = rx.try_recv().ok();
        }
        let n = records.len() as u64;
        if n > 0 {
            last_sync = Some(Instant::now());
            match store.audit_append_batch(std::mem::take(&mut records)) {
                Ok(_) => {
                    if let Err(e) = store.audit_sync() {
                        metrics.audit_write_failures.fetch_add(n, Ordering::Relaxed);
                        tracing::error!(error = %e, records = n, "audit records not made durable");
                    }
                }
                Err(e) => {
                    metrics.audit_write_failures.fetch_add(n, Ordering::Relaxed);
                    tracing::error!(error = %e, records = n, "audit records not written");
                }
            }
            since_prune += n;
            if since_prune >= AUDIT_PRUNE_EVERY {
                since_prune = 0;
                if let Err(e) = store.audit_prune(max_records) {
                    tracing::warn!(error = %e, "audit prune failed");
                }
            }
        }
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use synapse_storage::{StoreOptions, Timestamp};

    fn record(i: u64) -> AuditRecord {
        AuditRecord {
            seq: 0,
            timestamp: Timestamp {
                physical_micros: 1_000 + i,
                logical: 0,
                node_id: 1,
            },
            principal: format!("p{i}"),
            skill: "kv".into(),
            instance: "a".into(),
            method: "get".into(),
            allowed: true,
            reason: String::new(),
            prev_hash: [0; 32],
            hash: [0; 32],
        }
    }

    #[tokio::test]
    async fn records_are_written_in_order_and_flush_sees_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let log = AuditLog::start(store.clone(), 1_000_000, Arc::default()).unwrap();
        for i in 1..=3_000 {
            log.record(record(i)).unwrap();
        }
        log.flush().await.unwrap();
        let recent = store.audit_recent(5_000).unwrap();
        assert_eq!(recent.len(), 3_000);
        // Newest first, FIFO order preserved, chain verified by audit_recent.
        assert_eq!(recent[0].principal, "p3000");
        assert_eq!(recent[2_999].principal, "p1");
    }

    #[tokio::test]
    async fn drop_drains_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let log = AuditLog::start(store.clone(), 1_000_000, Arc::default()).unwrap();
        for i in 1..=500 {
            log.record(record(i)).unwrap();
        }
        drop(log);
        assert_eq!(store.audit_recent(1_000).unwrap().len(), 500);
    }

    #[test]
    fn a_full_queue_is_refused_and_counted() {
        let metrics = Arc::new(Metrics::default());
        // No writer: the queue fills deterministically.
        let (log, _rx) = AuditLog::unstarted(8, metrics.clone());
        for i in 0..8 {
            log.record(record(i)).unwrap();
        }
        for i in 8..11 {
            assert!(matches!(
                log.record(record(i)),
                Err(RuntimeError::ResourceExhausted(_))
            ));
        }
        assert_eq!(metrics.audit_dropped.load(Ordering::Relaxed), 3);
    }
}
