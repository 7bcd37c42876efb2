//! Synapse wire protocol (`synapse.v1`): the client API (`Skills`, `Cluster`,
//! `Clock`) and the peer protocol (`Peer`), as generated tonic/prost code.
//!
//! Owns: the `.proto` files and the code generated from them.
//! Must never: contain behaviour. This crate knows nothing of storage,
//! consensus or skills; it only describes bytes on the wire.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("synapse.v1");
}

/// Encoded `FileDescriptorSet` for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("synapse_descriptor");
