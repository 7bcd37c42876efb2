//! Synapse: a distributed actor runtime with a consensus core.
//!
//! This crate is the front door. It re-exports the embedding API
//! ([`Node`], [`NodeBuilder`], [`Skill`]) and a small gRPC [`client`], and
//! builds the `synapse` binary (server and CLI).
//!
//! ```no_run
//! use synapse::{Node, NodeConfig};
//! # async fn demo() -> Result<(), synapse::RuntimeError> {
//! let node = Node::builder(NodeConfig::embedded("./my-data")).start()?;
//! let token = node.root_token().to_string();
//! let r = node.invoke(&token, "counter", "alice", "incr", serde_json::json!({"by": 2})).await?;
//! println!("{} at v{}", r.reply, r.version);
//! node.shutdown();
//! # Ok(()) }
//! ```
//!
//! Owns: the binary, the embedding surface, cluster tests (`tests/`) and
//! benchmarks (`benches/`). Must never: reach into a lower crate's
//! internals; everything here goes through `synapse-runtime`'s public API.

pub mod client;
pub mod heap;
pub mod history;
pub mod linearizability;

pub use synapse_runtime::clock::{
    format_timestamp, ManualClock, PhysicalClock, SkewedClock, SystemClock,
};
pub use synapse_runtime::guard::{
    attenuate, inspect, Fence, Grant, GuardError, Restriction, RootKey,
};
pub use synapse_runtime::metrics::register_heap_probe;
pub use synapse_runtime::node::restore_backup;
pub use synapse_runtime::skill::field;
pub use synapse_runtime::{
    InvokeRequest, InvokeResult, MethodKind, MethodSpec, Node, NodeBuilder, NodeConfig,
    RuntimeError, Skill, SkillError,
};
pub use synapse_storage::{Checkpoint, Timestamp};
