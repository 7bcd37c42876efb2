//! The raft log record decoder (checksum, protobuf entry, index check).
//! Input: 8 bytes of key index, one mode byte (1 = seal the rest with a
//! valid checksum so the protobuf decoder is reached), then the record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use synapse_storage::fuzzing::{decode_raft_log_entry, seal_raft_log_value};

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let (index, rest) = data.split_at(8);
    let index = u64::from_be_bytes(index.try_into().expect("8 bytes"));
    let (&mode, record) = rest.split_first().expect("checked length");
    let raw = if mode == 1 {
        seal_raft_log_value(record)
    } else {
        record.to_vec()
    };
    if let Ok(e) = decode_raft_log_entry(index, &raw) {
        assert_eq!(e.index, index, "entry served under the wrong index");
    }
});
