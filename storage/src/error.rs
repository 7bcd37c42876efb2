//! The one error type of this crate.

/// Everything that can go wrong in storage.
///
/// `Corrupt` means a stored record failed its hash or checksum (or could not
/// be parsed); upstream maps it to `DATA_LOSS` and recovers from a peer. The
/// Raft-specific variants (`Compacted`, `Unavailable`, `SnapshotOutOfDate`,
/// `SnapshotTemporarilyUnavailable`) exist so that `RaftLog` can report the
/// exact conditions raft-rs needs to distinguish; the `raft::Storage` impl maps
/// them to the corresponding `raft::StorageError` variants.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("sled error: {0}")]
    Sled(sled::Error),
    #[error("corrupt data: {what}")]
    Corrupt { what: String },
    #[error("not found")]
    NotFound,
    #[error("codec error: {0}")]
    Codec(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A Raft log index below the first retained entry was requested.
    #[error("raft log compacted at index {index}")]
    Compacted { index: u64 },
    /// A Raft log index above the last entry was requested.
    #[error("raft log index {index} unavailable")]
    Unavailable { index: u64 },
    /// A snapshot older than the local log was offered.
    #[error("snapshot at index {index} is out of date (first index {first_index})")]
    SnapshotOutOfDate { index: u64, first_index: u64 },
    /// The state machine has not yet applied up to the requested index.
    #[error("snapshot temporarily unavailable: applied {applied} < requested {requested}")]
    SnapshotTemporarilyUnavailable { applied: u64, requested: u64 },
    /// A peer's copy of a Raft log entry was not accepted as a repair of the
    /// local record (see `RaftLog::repair_entry`): nothing was written.
    #[error("raft log entry {index}: peer copy refused: {reason}")]
    RepairRefused { index: u64, reason: String },
}

impl StorageError {
    /// True for integrity failures (hash, checksum, unparseable record).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, StorageError::Corrupt { .. })
    }
}

impl From<sled::Error> for StorageError {
    fn from(e: sled::Error) -> Self {
        // sled's own CRC failures are integrity failures like ours, so they
        // take the same path upstream (DATA_LOSS, recover from a peer).
        match e {
            sled::Error::Io(io) => StorageError::Io(io),
            sled::Error::Corruption { at, .. } => StorageError::Corrupt {
                what: format!("sled reported corruption at {at:?}"),
            },
            other => StorageError::Sled(other),
        }
    }
}

pub(crate) fn corrupt(what: impl Into<String>) -> StorageError {
    StorageError::Corrupt { what: what.into() }
}
