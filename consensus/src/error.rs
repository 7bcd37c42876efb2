use synapse_storage::StorageError;

/// Why a proposal or read could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ConsensusError {
    /// This node does not lead; `leader_hint` names the leader when known.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader { leader_hint: Option<u64> },
    /// A bounded queue is full; the caller should back off and retry.
    #[error("consensus overloaded: {0}")]
    Overloaded(&'static str),
    /// The driver stopped (shutdown or a fatal storage error).
    #[error("consensus driver stopped")]
    Stopped,
    /// A membership change is proposed but not yet applied; raft-rs allows
    /// one at a time and would silently turn a second one into an empty
    /// entry, so it is refused up front and the caller retries.
    #[error("another membership change is still being applied; retry")]
    MembershipChangePending,
    /// raft-rs dropped the proposal (for example during a leader transfer).
    #[error("proposal dropped by raft")]
    ProposalDropped,
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("raft: {0}")]
    Raft(String),
}

impl From<raft::Error> for ConsensusError {
    fn from(e: raft::Error) -> Self {
        match e {
            raft::Error::ProposalDropped => ConsensusError::ProposalDropped,
            other => ConsensusError::Raft(other.to_string()),
        }
    }
}
