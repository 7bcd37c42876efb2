//! `Capabilities.Revoke` and `Capabilities.Audit` on [`Core`].
//!
//! Revoke replicates a revocation through Raft (proposed on the leader; a
//! follower forwards the call to the leader's client address) and answers
//! only once the revocation is applied on the node the caller talked to, so
//! that node rejects the token from the caller's next request on. Audit reads
//! this node's hash-chained audit log.

use std::time::Duration;

use synapse_consensus::Role;
use synapse_proto::v1 as pb;
use synapse_storage::{AuditFilter, AuditRecord, MAX_REVOCATION_REASON_BYTES};

use crate::cluster::error_from_status;
use crate::command::{ApplyOutcome, Command};
use crate::error::RuntimeError;
use crate::guard::{Operation, MAX_REVOCATIONS};
use crate::node::Core;

/// Pseudo-skill that capability administration is authorized as.
pub const CAPABILITIES_SKILL: &str = "_capabilities";
/// Its one instance: revocation and audit are cluster/node-wide.
pub const CAPABILITIES_INSTANCE: &str = "cluster";
pub const METHOD_REVOKE: &str = "revoke";
pub const METHOD_AUDIT: &str = "audit";

/// Audit records one query returns when the caller gives no limit.
pub const DEFAULT_AUDIT_LIMIT: usize = 100;
/// Most audit records one query returns: bounds the response (a record is
/// ~200 bytes, so ≈ 2 MB) and the time a query holds a server task.
pub const MAX_AUDIT_LIMIT: usize = 10_000;

/// How long a forwarding follower waits for the leader's revocation to be
/// applied locally before answering. Generous: the entry is committed, only
/// this node's apply may lag (e.g. it was catching up).
const REVOKE_APPLY_WAIT: Duration = Duration::from_secs(10);
const REVOKE_APPLY_POLL: Duration = Duration::from_millis(5);

/// What a committed revocation reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// Every revocation id of the revoked token (one per block).
    pub ids: Vec<Vec<u8>>,
    /// Applied index on this node when the revocation was in effect here
    /// (at or after the entry's own index).
    pub index: u64,
}

impl Core {
    /// Revokes `target` (and, through its ids, every token derived from it).
    /// `token` must grant `_capabilities/cluster.revoke`; `target` must be
    /// signed by this cluster's root key (anything else is INVALID_ARGUMENT
    /// and nothing is replicated).
    pub async fn revoke(
        &self,
        token: Option<&str>,
        target: &str,
        reason: &str,
    ) -> Result<Revoked, RuntimeError> {
        self.authorize(
            token,
            CAPABILITIES_SKILL,
            CAPABILITIES_INSTANCE,
            METHOD_REVOKE,
            Operation::Write,
        )?;
        if reason.len() > MAX_REVOCATION_REASON_BYTES {
            return Err(RuntimeError::InvalidArgument(format!(
                "reason must be at most {MAX_REVOCATION_REASON_BYTES} bytes"
            )));
        }
        let guard = self.keys.guard().ok_or_else(|| {
            RuntimeError::unavailable("the cluster root key has not reached this node yet")
        })?;
        if target.trim().is_empty() {
            return Err(RuntimeError::InvalidArgument(
                "the token to revoke is empty".into(),
            ));
        }
        let ids = guard
            .revocation_ids_of(target)
            .map_err(|e| RuntimeError::InvalidArgument(format!("token to revoke: {e}")))?;
        let set = self.keys.revocations();
        let new = ids.iter().filter(|id| !set.contains(id)).count();
        if set.len() + new > MAX_REVOCATIONS {
            return Err(RuntimeError::ResourceExhausted(format!(
                "the cluster already holds {} revocations (limit {MAX_REVOCATIONS})",
                set.len()
            )));
        }

        let status = self.raft.status();
        if status.role != Role::Leader && self.transport.is_some() {
            return self.forward_revoke(token, target, reason, ids).await;
        }
        let command = Command::Revoke {
            ids: ids.clone(),
            reason: reason.to_owned(),
            timestamp: self.hlc.now(),
        };
        match self.raft.propose(command.encode()).await? {
            ApplyOutcome::Revoked { .. } => Ok(Revoked {
                ids,
                index: self.raft.status().applied_index,
            }),
            ApplyOutcome::RevocationsFull => Err(RuntimeError::ResourceExhausted(format!(
                "the revoked set is full (limit {MAX_REVOCATIONS})"
            ))),
            ApplyOutcome::Rejected(why) => Err(RuntimeError::InvalidArgument(why)),
            other => Err(RuntimeError::Internal(format!(
                "unexpected apply outcome {other:?}"
            ))),
        }
    }

    async fn forward_revoke(
        &self,
        token: Option<&str>,
        target: &str,
        reason: &str,
        ids: Vec<Vec<u8>>,
    ) -> Result<Revoked, RuntimeError> {
        let status = self.raft.status();
        let Some(address) = (status.leader_id != 0)
            .then(|| self.leader_address(status.leader_id))
            .flatten()
        else {
            return Err(self.not_leader(&status));
        };
        let mut request = tonic::Request::new(pb::RevokeRequest {
            token: target.to_owned(),
            reason: reason.to_owned(),
        });
        if let Some(t) = token {
            let value = format!("Bearer {t}")
                .parse()
                .map_err(|_| RuntimeError::Unauthenticated("token is not ASCII".into()))?;
            request
                .metadata_mut()
                .insert(crate::grpc::AUTHORIZATION, value);
        }
        let mut client =
            pb::capabilities_client::CapabilitiesClient::new(self.channels.get(&address)?);
        let r = client
            .revoke(request)
            .await
            .map_err(error_from_status)?
            .into_inner();
        // Committed on the leader; answer once it holds here too, so the
        // caller's next request to this node is already denied.
        let deadline = tokio::time::Instant::now() + REVOKE_APPLY_WAIT;
        loop {
            let applied = self.raft.status().applied_index;
            if applied >= r.index {
                return Ok(Revoked {
                    ids,
                    index: applied,
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RuntimeError::unavailable(format!(
                    "revocation committed at index {} but this node has applied only {applied}; \
                     it takes effect here once applied",
                    r.index
                )));
            }
            tokio::time::sleep(REVOKE_APPLY_POLL).await;
        }
    }

    /// This node's audit records matching `filter`, newest first; `limit` 0
    /// means [`DEFAULT_AUDIT_LIMIT`], above [`MAX_AUDIT_LIMIT`] is refused.
    /// A broken hash chain is DATA_LOSS.
    pub async fn audit(
        &self,
        token: Option<&str>,
        mut filter: AuditFilter,
    ) -> Result<Vec<AuditRecord>, RuntimeError> {
        self.authorize(
            token,
            CAPABILITIES_SKILL,
            CAPABILITIES_INSTANCE,
            METHOD_AUDIT,
            Operation::Read,
        )?;
        if filter.limit == 0 {
            filter.limit = DEFAULT_AUDIT_LIMIT;
        }
        if filter.limit > MAX_AUDIT_LIMIT {
            return Err(RuntimeError::InvalidArgument(format!(
                "limit must be at most {MAX_AUDIT_LIMIT}"
            )));
        }
        if filter.to_micros != 0 && filter.from_micros > filter.to_micros {
            return Err(RuntimeError::InvalidArgument(
                "from_micros is after to_micros".into(),
            ));
        }
        // Records are written in the background: wait for everything
        // decided before this query (including its own authorization).
        self.audit.flush().await?;
        Ok(self.store.audit_query(&filter)?)
    }

    /// Waits until every capability decision made so far on this node is
    /// in the audit log (records are written in the background, batched).
    pub async fn flush_audit(&self) -> Result<(), RuntimeError> {
        self.audit.flush().await
    }

    /// The shared revoked set (tests, metrics).
    pub fn revocation_count(&self) -> usize {
        self.keys.revocations().len()
    }
}

/// `AuditRequest.outcome` → filter value.
pub(crate) fn parse_outcome(outcome: &str) -> Result<Option<bool>, RuntimeError> {
    match outcome {
        "" => Ok(None),
        "allow" => Ok(Some(true)),
        "deny" => Ok(Some(false)),
        other => Err(RuntimeError::InvalidArgument(format!(
            "outcome must be \"\", \"allow\" or \"deny\", not {other:?}"
        ))),
    }
}
