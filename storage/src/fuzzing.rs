//! Entry points for the fuzz targets in `fuzz/` (not API: hidden from the
//! docs and subject to change): the record decoders the store runs on bytes
//! read from disk, plus the sealing helpers a fuzzer needs to get past the
//! integrity checks into the parsers. None may panic.

use crate::audit::{decode_at, AuditRecord};
use crate::error::StorageError;

/// A raft log record as stored under key `index` (checksum, then the
/// raft-rs entry).
pub fn decode_raft_log_entry(index: u64, raw: &[u8]) -> Result<raft::eraftpb::Entry, StorageError> {
    crate::raft_log::decode_entry(index, raw)
}

/// Wraps `payload` the way the raft log stores it, so fuzzed payloads reach
/// the protobuf decoder rather than stopping at the checksum.
pub fn seal_raft_log_value(payload: &[u8]) -> Vec<u8> {
    crate::codec::seal_value(payload)
}

/// An audit record value (canonical body, then its SHA-256).
pub fn decode_audit_record(bytes: &[u8]) -> Result<AuditRecord, StorageError> {
    AuditRecord::decode(bytes)
}

/// An audit record as read from the tree: the key must match its seq.
pub fn decode_audit_at(key: &[u8], value: &[u8]) -> Result<AuditRecord, StorageError> {
    decode_at(key, value)
}

/// The stored encoding of an audit record (for seeds and round trips).
pub fn encode_audit_record(record: &AuditRecord) -> Vec<u8> {
    record.encode()
}
