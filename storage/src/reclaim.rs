//! Deletes compacted Raft log segments on a thread of their own.
//!
//! Why: deleting a 16 MiB segment and fsyncing its directory took 21–40 ms
//! under load (measured 2026-12-03 on ext4 mounted with `discard`, where
//! freeing the blocks is part of the journal commit that the directory
//! fsync waits for). It ran inside the persist job that the Raft Ready loop
//! awaits, so every write behind it waited as long: a latency spike each
//! time a segment's worth of log was compacted, every few seconds under
//! load. The Ready loop now only hands the paths over.
//!
//! Order: a segment may go only once what replaces it is durable: the
//! truncation point and the state applied from its entries. So each job
//! runs sled's barrier first ([`SledBarrier::sync`]), then deletes the
//! files, then fsyncs their directory. A crash with jobs pending leaves
//! segments that lie before the truncation point; the log loads them as
//! compacted and the next compaction deletes them.
//!
//! Owns: the reclaim thread and its bounded queue. Must never: delete a
//! segment before the sled barrier that follows its truncation point, or
//! outlive its store (dropping the reclaimer drains the queue and joins).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::store::lock;
use crate::wal::remove_segment_files;
use crate::StorageError;

/// Jobs that may wait for the thread. One job is one compacted segment, 16
/// MiB of log: at 5 000 writes/s of 256 bytes that is one every few
/// seconds, so a full queue means the disk cannot keep up, and then the
/// caller deletes inline (as before this thread existed) instead of
/// letting deleted-but-present segments pile up.
pub(crate) const RECLAIM_QUEUE: usize = 4;

/// sled's durability barrier, shared by the store and the reclaim thread.
pub(crate) struct SledBarrier {
    pub(crate) db: sled::Db,
    /// sled's log file, kept open for `sync_data()`.
    pub(crate) db_file: File,
    pub(crate) blob_dir: PathBuf,
    /// Blob files already fsynced (sled writes blobs without fsync).
    pub(crate) synced_blobs: Mutex<HashSet<OsString>>,
}

impl SledBarrier {
    /// sled's `flush()` writes its buffers and calls `sync_file_range`, which
    /// does not flush the device's volatile cache and does not persist file
    /// metadata; so it is followed by `sync_data()` (fdatasync) of sled's log
    /// file `<dir>/db`, where sled 0.34 keeps every segment. Large values go
    /// to `<dir>/blobs/<lsn>` files that sled writes without any sync: every
    /// blob not yet synced is `sync_data()`ed, then the `blobs` directory
    /// itself so the new names survive a crash.
    pub(crate) fn sync(&self) -> Result<(), StorageError> {
        self.db.flush()?;
        self.db_file.sync_data()?;
        self.sync_blobs()
    }

    fn sync_blobs(&self) -> Result<(), StorageError> {
        let entries = match std::fs::read_dir(&self.blob_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut synced = lock(&self.synced_blobs);
        let mut present = HashSet::new();
        let mut any_new = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                match File::open(entry.path()) {
                    Ok(f) => f.sync_data()?,
                    // sled removed it meanwhile: nothing to make durable.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                }
                any_new = true;
            }
            present.insert(name);
        }
        if any_new {
            File::open(&self.blob_dir)?.sync_all()?;
        }
        // Forget deleted blobs so the set stays bounded by what is on disk.
        *synced = present;
        Ok(())
    }
}

/// Segment files detached from the log ([`crate::wal::Wal::detach_segments_before`]),
/// to delete once sled's barrier has run.
#[derive(Debug)]
pub(crate) struct Reclaim {
    pub(crate) dir: PathBuf,
    pub(crate) paths: Vec<PathBuf>,
}

impl Reclaim {
    /// The barrier, then the deletion: what the thread does, and what a
    /// caller does inline when the queue is full.
    pub(crate) fn run(&self, barrier: &SledBarrier) -> Result<usize, StorageError> {
        barrier.sync()?;
        remove_segment_files(&self.dir, &self.paths)
    }
}

enum Job {
    Reclaim(Reclaim),
    /// Answered once every job queued before it is done.
    Barrier(SyncSender<()>),
}

pub(crate) struct SegmentReclaimer {
    jobs: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl SegmentReclaimer {
    pub(crate) fn start(barrier: Arc<SledBarrier>) -> Result<Self, StorageError> {
        let (jobs, rx) = sync_channel(RECLAIM_QUEUE);
        let thread = std::thread::Builder::new()
            .name("synapse-reclaim".into())
            .spawn(move || run(&barrier, rx))?;
        Ok(SegmentReclaimer {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Queues `reclaim`; hands it back when the queue is full or the thread
    /// has gone, for the caller to run inline.
    pub(crate) fn submit(&self, reclaim: Reclaim) -> Result<(), Reclaim> {
        let Some(jobs) = &self.jobs else {
            return Err(reclaim);
        };
        match jobs.try_send(Job::Reclaim(reclaim)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => match job {
                Job::Reclaim(reclaim) => Err(reclaim),
                // Only a `Reclaim` was sent.
                Job::Barrier(_) => Ok(()),
            },
        }
    }

    /// Waits until every job queued before this call is done.
    pub(crate) fn wait_idle(&self) {
        let Some(jobs) = &self.jobs else {
            return;
        };
        let (done, wait) = sync_channel(1);
        if jobs.send(Job::Barrier(done)).is_ok() {
            let _ = wait.recv();
        }
    }
}

impl Drop for SegmentReclaimer {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has drained it.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(barrier: &SledBarrier, jobs: Receiver<Job>) {
    for job in jobs {
        match job {
            Job::Reclaim(reclaim) => {
                if let Err(e) = reclaim.run(barrier) {
                    // The files stay, before the truncation point: the next
                    // start loads them as compacted and a later compaction
                    // deletes them. Nothing is lost, only disk space.
                    tracing::warn!(
                        error = %e,
                        files = reclaim.paths.len(),
                        dir = %reclaim.dir.display(),
                        "could not delete compacted raft log segments; they are retried after a restart"
                    );
                }
            }
            Job::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
}
