//! Entry points for the fuzz targets in `fuzz/` (not API: hidden from the
//! docs and subject to change): the record decoders the store runs on bytes
//! read from disk, plus the sealing helpers a fuzzer needs to get past the
//! integrity checks into the parsers. None may panic.

use crate::audit::{decode_stored, AuditRecord};
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

/// An audit record as read from position `key` (u64 big-endian) of its
/// segment files: `value` is sealed here first, so fuzzed bytes reach the
/// parser and the position check rather than stopping at the checksum.
pub fn decode_audit_at(key: &[u8], value: &[u8]) -> Result<AuditRecord, StorageError> {
    let seq = crate::codec::key_u64(key)
        .ok_or_else(|| crate::error::corrupt("audit record position is not 8 bytes"))?;
    decode_stored(seq, &crate::codec::seal_value(value))
}

/// The stored encoding of an audit record (for seeds and round trips).
pub fn encode_audit_record(record: &AuditRecord) -> Vec<u8> {
    record.encode()
}

/// Opens a Raft log whose only segment file holds `segment` (in a scratch
/// directory of this process, replaced on every call) and reads every
/// entry's stored value back: the recovery at open (torn tail, damaged
/// header, index sequence) and the reads on what it kept.
pub fn open_wal_segment(segment: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
    let dir = std::env::temp_dir().join(format!("synapse-fuzz-wal-{}", std::process::id()));
    let wal_dir = dir.join(crate::wal::WAL_DIR);
    let _ = std::fs::remove_dir_all(&wal_dir);
    std::fs::create_dir_all(&wal_dir)?;
    std::fs::write(wal_dir.join(crate::wal::segment_name(1, 1)), segment)?;
    let (wal, _) = crate::wal::Wal::open(&dir, 1, true)?;
    let (Some(first), Some(last)) = (wal.first_index(), wal.last_index()) else {
        return Ok(Vec::new());
    };
    let values = wal.read(first, last + 1)?;
    Ok((first..).zip(values).collect())
}

/// One record of a segment file (header, then `value`), for seeds.
pub fn encode_wal_record(index: u64, value: &[u8]) -> Vec<u8> {
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    [&crate::wal::header(len, index)[..], value].concat()
}

#[cfg(test)]
mod tests {
    /// The committed seeds of the `wal_segment` fuzz target are segments in
    /// today's format: three intact entries, and the same with a torn tail.
    #[test]
    fn wal_segment_seeds_parse() {
        let corpus =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/wal_segment");
        let three = std::fs::read(corpus.join("three")).unwrap();
        let entries = super::open_wal_segment(&three).unwrap();
        assert_eq!(
            entries.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![7, 8, 9]
        );
        for (index, value) in &entries {
            assert_eq!(super::decode_raft_log_entry(*index, value).unwrap().term, 2);
        }
        let torn = std::fs::read(corpus.join("torn")).unwrap();
        assert_eq!(super::open_wal_segment(&torn).unwrap().len(), 2);
    }
}
