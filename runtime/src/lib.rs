//! Synapse runtime: skills as actix actors behind a capability guard, the
//! hybrid logical clock, the replicated state machine, node assembly and the
//! gRPC and HTTP servers.
//!
//! Owns: the path of one message from the guard to the reply: authorize →
//! activate the instance actor → run the handler → seal a checkpoint →
//! propose through `synapse-consensus` → reply after commit and apply.
//! Also the repair of damaged checkpoints (`repair`) and, before consensus
//! starts, of damaged Raft log records (`log_repair`) from peers.
//!
//! Must never: let a message reach a skill without a capability check;
//! reply before the entry is committed and durable; let a handler's panic
//! or error change state; queue without a bound (`try_send`, never
//! `do_send`, on paths a client can flood); touch sled except through
//! `synapse-storage`.

pub mod actor;
pub mod audit_log;
pub mod capabilities;
pub mod clock;
pub mod clock_service;
pub mod cluster;
mod command;
pub mod config;
pub mod error;
pub mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod guard;
mod http;
pub mod identity;
mod log_repair;
pub mod metrics;
pub mod node;
pub mod repair;
pub mod skill;
pub mod skills;
mod state_machine;
pub mod tls;

pub use actor::{InstanceId, InvokeResult};
pub use config::NodeConfig;
pub use error::RuntimeError;
pub use node::{Core, InvokeRequest, Node, NodeBuilder, NodeStatus};
pub use skill::{MethodKind, MethodSpec, Skill, SkillError};
