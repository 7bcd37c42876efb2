//! A simulated disk for crash-consistency testing (simulation stores only).
//!
//! A simulation store is a temporary sled whose `sync()` does no I/O, so a
//! simulated crash that keeps the `Store` never loses anything, and a
//! missing fsync would go unnoticed. With durability tracking on, every
//! sled sync (the fsync point) captures sled's whole contents as the
//! "durable image"; a simulated crash then restarts the node from that
//! image in a fresh temporary sled, losing every write made since. The Raft
//! log's segment files are real files in the store's directory; a crash
//! keeps of each only what its last sync covered (`Wal::copy_durable_to`).
//!
//! Owns: the image and the rebuild. Must never: be reachable from a
//! non-simulation store (`Store::sim_*` refuse with `StorageError::Invalid`).

use std::sync::Arc;

/// The contents of every tree at the last sync: (tree name, key/values).
pub(crate) type Image = Arc<Vec<(Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>)>>;

/// Durability tracking state of one simulation store.
#[derive(Default)]
pub(crate) struct SimDisk {
    /// `None` until tracking is switched on.
    pub(crate) image: Option<Image>,
    /// Planted bug for the crash tests: `sync()` does not make anything
    /// durable (the image stays as it was).
    pub(crate) skip_sync: bool,
    /// Images captured (syncs seen while tracking).
    pub(crate) syncs: u64,
}

pub(crate) fn capture(db: &sled::Db) -> Result<Image, sled::Error> {
    let mut trees = Vec::new();
    for name in db.tree_names() {
        let tree = db.open_tree(&name)?;
        let mut kvs = Vec::with_capacity(tree.len());
        for kv in tree.iter() {
            let (k, v) = kv?;
            kvs.push((k.to_vec(), v.to_vec()));
        }
        trees.push((name.to_vec(), kvs));
    }
    Ok(Arc::new(trees))
}

pub(crate) fn restore(db: &sled::Db, image: &Image) -> Result<(), sled::Error> {
    for (name, kvs) in image.iter() {
        let tree = db.open_tree(name)?;
        let mut batch = sled::Batch::default();
        for (k, v) in kvs {
            batch.insert(k.as_slice(), v.as_slice());
        }
        tree.apply_batch(batch)?;
    }
    Ok(())
}

/// Tests: a simulation store in `dir` with durability tracking on, ready
/// for `Store::sim_crash`.
#[cfg(test)]
pub(crate) fn tracked_store(dir: &std::path::Path) -> crate::Store {
    let opts = crate::StoreOptions {
        simulation: true,
        ..Default::default()
    };
    let store = crate::Store::open(dir, opts).unwrap();
    store.sim_track_durability().unwrap();
    store
}

#[cfg(test)]
mod tests {
    use super::tracked_store;
    use crate::{ApplyBatch, Store, StoreOptions};

    fn applied(store: &Store, index: u64) {
        let mut b = ApplyBatch::default();
        b.set_applied(index);
        store.commit_apply(b).unwrap();
    }

    #[test]
    fn crash_keeps_exactly_what_was_synced() {
        let (d1, d2, d3) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let store = tracked_store(d1.path());
        applied(&store, 5);
        store.sync().unwrap();
        applied(&store, 9);
        let after = store.sim_crash(d2.path()).unwrap();
        assert_eq!(after.applied_index().unwrap(), 5, "unsynced write survived");
        // The planted bug: sync persists nothing.
        after.sim_set_skip_sync(true).unwrap();
        applied(&after, 12);
        after.sync().unwrap();
        let again = after.sim_crash(d3.path()).unwrap();
        assert_eq!(again.applied_index().unwrap(), 5);
    }

    #[test]
    fn refused_on_a_real_store() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path(), StoreOptions::default()).unwrap();
        assert!(store.sim_track_durability().is_err());
        assert!(store.sim_crash(d.path()).is_err());
    }
}
