//! Synapse storage: everything this node keeps on disk: one sled database
//! (state and Raft metadata) and two sets of segment files (`wal`): the
//! Raft log's and the audit trail's.
//!
//! This crate owns:
//! * **checkpoint hash chains**: per skill instance, versioned state records
//!   whose SHA-256 covers every field and the parent's hash; history with
//!   bounded retention, time-travel lookup and chain verification;
//! * the **raft-rs `Storage`** implementation (`RaftLog`): log entries in
//!   append-only segment files with torn-tail recovery, hard state, conf
//!   state, snapshots and compaction, every record checksummed;
//!   the start-up scan for damaged log records and the checks a peer's copy
//!   must pass to repair one (`RaftLog::repair_entry`);
//! * **revoked capability ids**, replicated and part of snapshots;
//! * the **audit trail**: append-only, hash-chained capability decisions, in
//!   segment files of its own with their own durability barrier
//!   (`Store::audit_sync`);
//! * the **request-id table**: what each applied request produced, so
//!   retries are answered instead of applied twice;
//! * the durability barriers: `RaftLog::sync` once per Raft Ready (the log's
//!   fdatasync, sled's only when term, vote or membership changed) and
//!   `Store::sync` for everything.
//!
//! Every record is verified when read; a failure is `StorageError::Corrupt`
//! (upstream: `DATA_LOSS`, recover from a peer) and corrupted data is never
//! returned.
//!
//! This crate must never do networking, run actors, or know anything about
//! skills beyond their names: state is opaque bytes here. Validation of
//! versions, parents and capabilities belongs to the layers above.

mod audit;
mod checkpoint;
mod codec;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod raft_log;
mod reclaim;
mod revocation;
mod sim_disk;
mod store;
mod wal;

pub use audit::{AuditFilter, AuditRecord, MAX_AUDIT_SCAN};
pub use checkpoint::{Checkpoint, Hash, Timestamp, ZERO_HASH};
pub use error::StorageError;
pub use raft_log::{RaftLog, MAX_RAFT_INDEX, MAX_RAFT_TERM};
pub use revocation::{Revocation, MAX_REVOCATION_ID_BYTES, MAX_REVOCATION_REASON_BYTES};
pub use store::{
    ApplyBatch, ChainReport, HeadInfo, RepairOutcome, RequestRecord, ScrubReport, Store,
    StoreOptions, DEFAULT_CACHE_CAPACITY_BYTES, DEFAULT_RETENTION_VERSIONS,
    MAX_CACHE_CAPACITY_BYTES, MAX_RETENTION_VERSIONS, MIN_CACHE_CAPACITY_BYTES,
};
