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
//! files, then fsyncs their directory.
//!
//! Deletions stay in log order, oldest segment first: at open every
//! segment must continue where the one before it ended, so a segment
//! deleted while an older one is kept would stop the next start. Hence a
//! full queue makes the caller wait for the queue to drain before it
//! deletes inline, and after a failed job nothing more is deleted until a
//! restart. What a crash or a failure leaves is then always the oldest
//! segments, wholly before the truncation point: the log loads them as
//! compacted and the first compaction after the start deletes them.
//!
//! Owns: the reclaim thread and its bounded queue. Must never: delete a
//! segment before the sled barrier that follows its truncation point,
//! delete out of log order, or outlive its store (dropping the reclaimer
//! drains the queue and joins).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::store::lock;
use crate::wal::remove_segment_files;
use crate::StorageError;

/// Jobs that may wait for the thread. One job is one compacted segment, 16
/// MiB of log: at 5 000 writes/s of 256 bytes that is one every few
/// seconds, so a full queue means the disk cannot keep up, and then the
/// caller waits for the queue and deletes inline (as before this thread
/// existed) instead of letting compacted segments pile up.
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
        let flushed = self.db.flush();
        // Also after a failed flush: the thread may sync no more.
        release_deferred_frees();
        flushed?;
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

/// Hands this thread's deferred frees to the global epoch collector.
///
/// Why: sled frees a sealed I/O buffer through crossbeam-epoch's
/// `defer`, which parks it in the calling thread's bag of 64 until the bag
/// is full. Each parked buffer keeps its 512 KiB sled segment buffer
/// alive. A thread that only flushes, once per compacted 16 MiB of Raft
/// log as the reclaim thread does, fills its bag after 64 flushes, about a
/// GiB of log: live heap grew by 31 MiB on every node and fell back at
/// once, every ~1.5 M writes (heaptrack, benches/README.md, fourteenth
/// pass). Flushed, the bag is freed once every thread has moved past its
/// epoch, as the busy threads' garbage is.
///
/// Through `sled::pin()` (public, hidden from sled's docs) rather than a
/// crossbeam-epoch of our own: it is the guard of the very collector sled
/// defers to, so a sled upgrade that changes it breaks the build here
/// instead of silently flushing another collector's bag.
fn release_deferred_frees() {
    sled::pin().flush();
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
    /// Set when a job failed: from then on nothing is deleted (the files
    /// stay, in order) until the store is opened again.
    failed: Arc<AtomicBool>,
}

impl SegmentReclaimer {
    pub(crate) fn start(barrier: Arc<SledBarrier>) -> Result<Self, StorageError> {
        let (jobs, rx) = sync_channel(RECLAIM_QUEUE);
        let failed = Arc::new(AtomicBool::new(false));
        let thread = {
            let failed = failed.clone();
            std::thread::Builder::new()
                .name("synapse-reclaim".into())
                .spawn(move || run(&barrier, rx, &failed))?
        };
        Ok(SegmentReclaimer {
            jobs: Some(jobs),
            thread: Some(thread),
            failed,
        })
    }

    /// Deletes the segments of `reclaim` after sled's barrier: on the
    /// thread, or, when its queue is full or it has gone, here, after the
    /// jobs queued before it, so that deletions stay in log order.
    pub(crate) fn reclaim(
        &self,
        reclaim: Reclaim,
        barrier: &SledBarrier,
    ) -> Result<(), StorageError> {
        let Err(reclaim) = self.submit(reclaim) else {
            return Ok(());
        };
        self.wait_idle();
        if self.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        reclaim.run(barrier).map(drop).inspect_err(|_| {
            self.failed.store(true, Ordering::Release);
        })
    }

    /// Queues `reclaim`; hands it back when the queue is full or the thread
    /// has gone (and then marks this reclaimer failed).
    fn submit(&self, reclaim: Reclaim) -> Result<(), Reclaim> {
        let Some(jobs) = &self.jobs else {
            return Err(reclaim);
        };
        match jobs.try_send(Job::Reclaim(reclaim)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(job)) => {
                // The thread died (a panic) with jobs it may not have done:
                // deleting later segments could leave a gap behind them.
                self.failed.store(true, Ordering::Release);
                match job {
                    Job::Reclaim(reclaim) => Err(reclaim),
                    Job::Barrier(_) => Ok(()),
                }
            }
            Err(TrySendError::Full(job)) => match job {
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
    /// Blocks whoever drops the last handle of the store for what is
    /// queued: at most [`RECLAIM_QUEUE`] jobs and the one running, each a
    /// sled sync and an unlink (tens of ms under load).
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has drained it.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(barrier: &SledBarrier, jobs: Receiver<Job>, failed: &AtomicBool) {
    for job in jobs {
        match job {
            // After a failure later segments are kept too: deleting them
            // would leave a gap behind the ones that failed.
            Job::Reclaim(_) if failed.load(Ordering::Acquire) => {}
            Job::Reclaim(reclaim) => {
                if let Err(e) = reclaim.run(barrier) {
                    failed.store(true, Ordering::Release);
                    // The files stay, before the truncation point: the next
                    // start loads them as compacted and the first compaction
                    // after it deletes them. Nothing is lost, only disk space.
                    tracing::warn!(
                        error = %e,
                        files = reclaim.paths.len(),
                        dir = %reclaim.dir.display(),
                        "could not delete compacted raft log segments; keeping them and every \
                         later compacted segment until the next start, which deletes them"
                    );
                }
            }
            Job::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn barrier(dir: &Path) -> Arc<SledBarrier> {
        let db = sled::Config::new().path(dir.join("sled")).open().unwrap();
        Arc::new(SledBarrier {
            db_file: File::open(dir.join("sled").join("db")).unwrap(),
            db,
            blob_dir: dir.join("sled").join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
        })
    }

    /// Segment-like files `seg-<i>` in `dir/wal`, one per job.
    fn jobs(dir: &Path, n: usize) -> Vec<Reclaim> {
        let wal = dir.join("wal");
        std::fs::create_dir_all(&wal).unwrap();
        (0..n)
            .map(|i| {
                let path = wal.join(format!("seg-{i}"));
                std::fs::write(&path, b"entries").unwrap();
                Reclaim {
                    dir: wal.clone(),
                    paths: vec![path],
                }
            })
            .collect()
    }

    #[test]
    fn more_jobs_than_the_queue_holds_are_all_deleted_and_drop_drains_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let barrier = barrier(dir.path());
        let reclaimer = SegmentReclaimer::start(barrier.clone()).unwrap();
        let jobs = jobs(dir.path(), 3 * RECLAIM_QUEUE);
        let paths: Vec<PathBuf> = jobs.iter().map(|j| j.paths[0].clone()).collect();
        for job in jobs {
            reclaimer.reclaim(job, &barrier).unwrap();
        }
        // No `wait_idle`: dropping must finish what is queued.
        drop(reclaimer);
        let left: Vec<_> = paths.iter().filter(|p| p.exists()).collect();
        assert!(left.is_empty(), "not deleted: {left:?}");
    }

    /// A job that fails stops all later deletions, on the thread and
    /// inline: a later segment deleted while an earlier one stays would
    /// leave a gap that the next open refuses.
    #[test]
    fn after_a_failed_job_later_segments_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let barrier = barrier(dir.path());
        let reclaimer = SegmentReclaimer::start(barrier.clone()).unwrap();
        // A directory with a file in it: `remove_file` fails on it.
        let undeletable = dir.path().join("wal").join("seg-stuck");
        std::fs::create_dir_all(&undeletable).unwrap();
        std::fs::write(undeletable.join("x"), b"x").unwrap();
        reclaimer
            .reclaim(
                Reclaim {
                    dir: dir.path().join("wal"),
                    paths: vec![undeletable.clone()],
                },
                &barrier,
            )
            .unwrap();
        let later = jobs(dir.path(), 2 * RECLAIM_QUEUE);
        let paths: Vec<PathBuf> = later.iter().map(|j| j.paths[0].clone()).collect();
        for job in later {
            reclaimer.reclaim(job, &barrier).unwrap();
        }
        reclaimer.wait_idle();
        assert!(reclaimer.failed.load(Ordering::Acquire));
        assert!(undeletable.exists());
        let gone: Vec<_> = paths.iter().filter(|p| !p.exists()).collect();
        assert!(gone.is_empty(), "deleted after a failure: {gone:?}");
    }

    /// What sled defers on a thread that only flushes (a sealed I/O buffer
    /// and its 512 KiB segment buffer) must not wait there for 63 more
    /// flushes: after the barrier another thread's collection frees it.
    #[test]
    fn a_barrier_hands_its_threads_deferred_frees_to_the_collector() {
        use std::sync::atomic::AtomicBool;
        let dir = tempfile::tempdir().unwrap();
        let barrier = barrier(dir.path());
        barrier.db.insert(b"k", vec![7u8; 4096]).unwrap();
        let freed = Arc::new(AtomicBool::new(false));
        let (synced_tx, synced_rx) = sync_channel::<()>(0);
        let (done_tx, done_rx) = sync_channel::<()>(0);
        let flusher = {
            let (barrier, freed) = (barrier.clone(), freed.clone());
            std::thread::spawn(move || {
                let marker = freed;
                sled::pin().defer(move || marker.store(true, Ordering::Release));
                barrier.sync().unwrap();
                synced_tx.send(()).unwrap();
                // Alive, like the reclaim thread: a thread that exits hands
                // its bag on anyway, which would hide the parked garbage.
                done_rx.recv().unwrap();
            })
        };
        synced_rx.recv().unwrap();
        // Each collection advances the epoch at most once, and a garbage
        // bag goes two epochs after it was sealed; other tests' threads may
        // hold a pin for a while (sled waits pinned for its writes), so
        // keep collecting, up to a bound far beyond any such wait.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut collections = 0;
        while !freed.load(Ordering::Acquire) && std::time::Instant::now() < give_up {
            sled::pin().flush();
            std::thread::sleep(std::time::Duration::from_micros(100));
            collections += 1;
        }
        done_tx.send(()).unwrap();
        flusher.join().unwrap();
        assert!(
            freed.load(Ordering::Acquire),
            "still parked on the flushing thread after {collections} collections"
        );
    }
}
