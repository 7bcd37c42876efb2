//! The skill model: what application code implements, and the type-erased
//! form the runtime drives.

use std::any::Any;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Whether a method changes state. Read methods never produce a checkpoint
/// and are served from committed state after a ReadIndex barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    Read,
    Write,
}

/// One method a skill offers.
#[derive(Debug, Clone, Copy)]
pub struct MethodSpec {
    pub name: &'static str,
    pub kind: MethodKind,
}

/// An error a handler returns. The instance's state is left as it was.
#[derive(Debug, thiserror::Error)]
pub enum SkillError {
    /// The payload is malformed or has the wrong shape (INVALID_ARGUMENT).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The call is well-formed but the state does not allow it, such as a
    /// compare-and-set mismatch (FAILED_PRECONDITION).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// Anything else the handler wants to report (INTERNAL, state untouched).
    #[error("{0}")]
    Failed(String),
}

impl SkillError {
    pub fn invalid(e: impl std::fmt::Display) -> Self {
        SkillError::InvalidArgument(e.to_string())
    }
}

/// Application logic. Each instance of a skill (`counter/alice`) is an actor
/// holding one `State`; every successful write becomes a checkpoint.
///
/// Handlers run on a clone of the state: an error or a panic leaves the
/// instance exactly as it was. Handlers must be deterministic in their effect
/// on state (no clocks, no randomness): the state they produce is replicated
/// as bytes, but a handler that behaves differently on replay after a
/// failover would surprise its users.
pub trait Skill: Send + Sync + 'static {
    /// Serialized as JSON into checkpoints. Use ordered maps (`BTreeMap`) so
    /// that equal states encode to equal bytes.
    type State: Serialize + DeserializeOwned + Default + Clone + Send + 'static;

    /// Registered name, for example `"counter"`.
    fn name(&self) -> &'static str;

    /// Version of the state schema, recorded for operators and migrations.
    fn state_version(&self) -> u32 {
        1
    }

    fn methods(&self) -> &'static [MethodSpec];

    /// Runs `method` with a JSON payload; returns the JSON reply.
    fn handle(
        &self,
        state: &mut Self::State,
        method: &str,
        payload: &Value,
    ) -> Result<Value, SkillError>;
}

/// A state held by an actor, its concrete type known only to its skill.
pub type AnyState = Box<dyn Any + Send>;

/// Object-safe form of [`Skill`] that the runtime stores in its registry.
pub trait DynSkill: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn method_kind(&self, method: &str) -> Option<MethodKind>;
    fn method_names(&self) -> Vec<&'static str>;
    fn initial_state(&self) -> AnyState;
    fn decode_state(&self, bytes: &[u8]) -> Result<AnyState, SkillError>;
    fn encode_state(&self, state: &AnyState) -> Result<Vec<u8>, SkillError>;
    fn clone_state(&self, state: &AnyState) -> AnyState;
    fn call(
        &self,
        state: &mut AnyState,
        method: &str,
        payload: &Value,
    ) -> Result<Value, SkillError>;
}

struct Adapter<S: Skill>(S);

fn downcast<S: Skill>(state: &AnyState) -> Result<&S::State, SkillError> {
    state
        .downcast_ref::<S::State>()
        .ok_or_else(|| SkillError::Failed("state type does not belong to this skill".into()))
}

impl<S: Skill> DynSkill for Adapter<S> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn method_kind(&self, method: &str) -> Option<MethodKind> {
        self.0
            .methods()
            .iter()
            .find(|m| m.name == method)
            .map(|m| m.kind)
    }

    fn method_names(&self) -> Vec<&'static str> {
        self.0.methods().iter().map(|m| m.name).collect()
    }

    fn initial_state(&self) -> AnyState {
        Box::new(S::State::default())
    }

    fn decode_state(&self, bytes: &[u8]) -> Result<AnyState, SkillError> {
        let state: S::State = serde_json::from_slice(bytes)
            .map_err(|e| SkillError::Failed(format!("stored state does not decode: {e}")))?;
        Ok(Box::new(state))
    }

    fn encode_state(&self, state: &AnyState) -> Result<Vec<u8>, SkillError> {
        serde_json::to_vec(downcast::<S>(state)?).map_err(|e| SkillError::Failed(e.to_string()))
    }

    fn clone_state(&self, state: &AnyState) -> AnyState {
        match state.downcast_ref::<S::State>() {
            Some(s) => Box::new(s.clone()),
            None => self.initial_state(),
        }
    }

    fn call(
        &self,
        state: &mut AnyState,
        method: &str,
        payload: &Value,
    ) -> Result<Value, SkillError> {
        let typed = state
            .downcast_mut::<S::State>()
            .ok_or_else(|| SkillError::Failed("state type does not belong to this skill".into()))?;
        self.0.handle(typed, method, payload)
    }
}

/// Wraps a typed skill for the registry.
pub fn erase<S: Skill>(skill: S) -> Arc<dyn DynSkill> {
    Arc::new(Adapter(skill))
}

/// Reads a field of a JSON object payload with a clear error.
pub fn field<'a>(payload: &'a Value, name: &str) -> Result<&'a Value, SkillError> {
    payload
        .get(name)
        .ok_or_else(|| SkillError::InvalidArgument(format!("missing field `{name}`")))
}
