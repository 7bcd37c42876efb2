//! The runtime's error type and its one conversion to gRPC status.

use synapse_consensus::{ConsensusError, FrameError};
use synapse_storage::StorageError;

use crate::guard::GuardError;
use crate::skill::SkillError;

/// Metadata key that carries the leader's node id on UNAVAILABLE.
pub const LEADER_HINT_HEADER: &str = "x-synapse-leader";
/// Metadata key that carries the leader's client address on UNAVAILABLE.
pub const LEADER_ADDR_HEADER: &str = "x-synapse-leader-addr";

/// Every way a call can fail. Each variant maps to exactly one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A concurrent change won; retrying with the same request id is safe.
    #[error("aborted: {0}")]
    Aborted(String),
    #[error("unavailable: {reason}")]
    Unavailable {
        reason: String,
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    #[error("data loss: {0}")]
    DataLoss(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl RuntimeError {
    pub fn unavailable(reason: impl Into<String>) -> Self {
        RuntimeError::Unavailable {
            reason: reason.into(),
            leader_id: None,
            leader_addr: None,
        }
    }

    /// Short stable label for metrics.
    pub fn code_label(&self) -> &'static str {
        match self {
            RuntimeError::Unauthenticated(_) => "unauthenticated",
            RuntimeError::PermissionDenied(_) => "permission_denied",
            RuntimeError::NotFound(_) => "not_found",
            RuntimeError::InvalidArgument(_) => "invalid_argument",
            RuntimeError::FailedPrecondition(_) => "failed_precondition",
            RuntimeError::Aborted(_) => "aborted",
            RuntimeError::Unavailable { .. } => "unavailable",
            RuntimeError::ResourceExhausted(_) => "resource_exhausted",
            RuntimeError::DeadlineExceeded(_) => "deadline_exceeded",
            RuntimeError::DataLoss(_) => "data_loss",
            RuntimeError::Internal(_) => "internal",
        }
    }
}

impl From<StorageError> for RuntimeError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Corrupt { .. } => RuntimeError::DataLoss(e.to_string()),
            StorageError::NotFound => RuntimeError::NotFound(e.to_string()),
            StorageError::Invalid(msg) => RuntimeError::InvalidArgument(msg),
            other => RuntimeError::Internal(format!("storage: {other}")),
        }
    }
}

impl From<ConsensusError> for RuntimeError {
    fn from(e: ConsensusError) -> Self {
        match e {
            ConsensusError::NotLeader { leader_hint } => RuntimeError::Unavailable {
                reason: "this node is not the leader".into(),
                leader_id: leader_hint,
                leader_addr: None,
            },
            ConsensusError::Overloaded(what) => RuntimeError::ResourceExhausted(what.into()),
            ConsensusError::Stopped => RuntimeError::unavailable("consensus stopped on this node"),
            ConsensusError::ProposalDropped => RuntimeError::unavailable("proposal dropped; retry"),
            ConsensusError::MembershipChangePending => {
                RuntimeError::unavailable("another membership change is still being applied; retry")
            }
            ConsensusError::Storage(s) => s.into(),
            ConsensusError::Raft(msg) => RuntimeError::Internal(format!("raft: {msg}")),
        }
    }
}

/// A `Peer/Raft` frame refused by the decoder: the stream ends with this.
impl From<FrameError> for RuntimeError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::TooLarge | FrameError::Decode(_) => {
                RuntimeError::InvalidArgument(e.to_string())
            }
            FrameError::Busy { .. } | FrameError::OutOfMemory(_) => {
                RuntimeError::ResourceExhausted(e.to_string())
            }
        }
    }
}

impl From<GuardError> for RuntimeError {
    fn from(e: GuardError) -> Self {
        match e {
            GuardError::Missing | GuardError::Malformed(_) | GuardError::BadSignature => {
                RuntimeError::Unauthenticated(e.to_string())
            }
            GuardError::Expired | GuardError::Denied(_) | GuardError::Revoked => {
                RuntimeError::PermissionDenied(e.to_string())
            }
            GuardError::Busy(_) => RuntimeError::unavailable(e.to_string()),
            GuardError::Key(_) => RuntimeError::Internal(e.to_string()),
        }
    }
}

impl From<SkillError> for RuntimeError {
    fn from(e: SkillError) -> Self {
        match e {
            SkillError::InvalidArgument(m) => RuntimeError::InvalidArgument(m),
            SkillError::FailedPrecondition(m) => RuntimeError::FailedPrecondition(m),
            SkillError::Failed(m) => RuntimeError::Internal(format!("skill: {m}")),
        }
    }
}

impl From<RuntimeError> for tonic::Status {
    fn from(e: RuntimeError) -> Self {
        use tonic::Code;
        let message = e.to_string();
        let (code, hint) = match &e {
            RuntimeError::Unauthenticated(_) => (Code::Unauthenticated, None),
            RuntimeError::PermissionDenied(_) => (Code::PermissionDenied, None),
            RuntimeError::NotFound(_) => (Code::NotFound, None),
            RuntimeError::InvalidArgument(_) => (Code::InvalidArgument, None),
            RuntimeError::FailedPrecondition(_) => (Code::FailedPrecondition, None),
            RuntimeError::Aborted(_) => (Code::Aborted, None),
            RuntimeError::Unavailable {
                leader_id,
                leader_addr,
                ..
            } => (Code::Unavailable, Some((leader_id, leader_addr))),
            RuntimeError::ResourceExhausted(_) => (Code::ResourceExhausted, None),
            RuntimeError::DeadlineExceeded(_) => (Code::DeadlineExceeded, None),
            RuntimeError::DataLoss(_) => (Code::DataLoss, None),
            RuntimeError::Internal(_) => (Code::Internal, None),
        };
        let mut status = tonic::Status::new(code, message);
        if let Some((id, addr)) = hint {
            if let Some(id) = id {
                if let Ok(v) = id.to_string().parse() {
                    status.metadata_mut().insert(LEADER_HINT_HEADER, v);
                }
            }
            if let Some(addr) = addr {
                if let Ok(v) = addr.parse() {
                    status.metadata_mut().insert(LEADER_ADDR_HEADER, v);
                }
            }
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_raft_frames_map_to_their_codes() {
        let code = |e: FrameError| tonic::Status::from(RuntimeError::from(e)).code();
        assert_eq!(
            code(FrameError::Busy { held: 1, limit: 1 }),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(
            code(FrameError::OutOfMemory(1)),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(code(FrameError::TooLarge), tonic::Code::InvalidArgument);
        assert_eq!(
            code(FrameError::Decode("x".into())),
            tonic::Code::InvalidArgument
        );
    }
}
