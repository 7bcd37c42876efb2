//! Synapse consensus: drives a raft-rs [`RawNode`](raft::RawNode) over the
//! sled-backed log from `synapse-storage`.
//!
//! Owns: the Ready loop (tick, propose, persist → send → apply, in the order
//! raft-rs documents), proposal/read-index bookkeeping, the leader's read
//! lease, the [`StateMachine`] trait that the runtime implements, the
//! [`Transport`] trait and its implementations, log compaction behind
//! snapshots, the timings of each Ready's phases ([`ReadyTimings`]), and the
//! slog → tracing bridge for raft-rs's logs.
//!
//! Must never: know about skills, capabilities or gRPC clients; acknowledge a
//! proposal before its entry is durable on a quorum and applied locally;
//! hold a read lease while another leader could be elected; hold an
//! unbounded queue.

mod driver;
mod error;
mod grpc_transport;
mod lease;
mod logger;
mod timings;
mod transport;

pub use driver::{
    spawn_driver, AppliedIndexOnly, ApplyContext, Committed, CrashPoint, RaftConfig, RaftHandle,
    RaftStatus, Role, SimDriver, SimReply, StateMachine, DEFAULT_COMMIT_ANNOUNCE_DELAY,
};
pub use error::ConsensusError;
pub use grpc_transport::{
    attach_credential, peer_endpoint, ClockFn, CredentialFn, FrameDecoder, FrameError,
    GrpcTransport, PeerReporter, ReassemblyBudget, MAX_PEER_FRAME_BYTES, MAX_REASSEMBLED_BYTES,
    MAX_REASSEMBLY_TOTAL_BYTES, PEER_CREDENTIAL_HEADER,
};
pub use lease::{lease_duration, LeasedRead, ReadLease};
pub use logger::tracing_logger;
pub use timings::{
    DurationHistogram, HistogramSnapshot, ReadyTimings, BUCKET_BOUNDS_SECONDS, SLOW_READY,
};
pub use transport::{NoopTransport, Transport};

/// raft-rs types that users of this crate need, re-exported so that higher
/// layers do not pin their own raft version.
pub use raft::eraftpb;
