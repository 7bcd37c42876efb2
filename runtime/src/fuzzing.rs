//! Entry points for the fuzz targets in `fuzz/` (not API: hidden from the
//! docs and subject to change). Each one is the decode or validation step
//! the node itself runs on bytes from the network or the log, so a fuzz
//! crash here is a crash a peer or client could cause. None may panic.

use synapse_proto::v1 as pb;
use synapse_storage::StorageError;

use crate::command::Command;
use crate::error::RuntimeError;
use crate::node::{
    validate_member, validate_name, validate_request_id, MAX_INSTANCE_NAME, MAX_SKILL_NAME,
};

/// Decodes a replicated command and returns its re-encoding (the fuzz
/// target checks that decode ∘ encode is the identity on it).
pub fn command_reencode(bytes: &[u8]) -> Result<Vec<u8>, StorageError> {
    Command::decode(bytes).map(|c| c.encode())
}

/// The name checks every instance-level RPC (GetState, History, Verify,
/// Watch) runs before the guard.
pub fn check_target(skill: &str, instance: &str) -> Result<(), RuntimeError> {
    validate_name("skill", skill, MAX_SKILL_NAME)?;
    validate_name("instance", instance, MAX_INSTANCE_NAME)
}

/// Skills.Invoke (and the inner request of Peer.ForwardInvoke): names,
/// request id, then the payload as the gRPC layer decodes it.
pub fn check_invoke(
    req: &pb::InvokeRequest,
    max_payload_bytes: usize,
) -> Result<serde_json::Value, RuntimeError> {
    check_target(&req.skill, &req.instance)?;
    validate_request_id(&req.request_id)?;
    crate::grpc::decode_payload(&req.payload, max_payload_bytes)
}

/// Skills.Rollback's input checks.
pub fn check_rollback(req: &pb::RollbackRequest) -> Result<(), RuntimeError> {
    check_target(&req.skill, &req.instance)?;
    validate_request_id(&req.request_id)
}

/// Cluster.AddMember's input checks.
pub fn check_add_member(req: &pb::AddMemberRequest) -> Result<(), RuntimeError> {
    validate_member(req.id, &req.address)
}
