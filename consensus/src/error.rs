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
