//! The audit record decoder, alone and as read from its segment files (the
//! position must match seq). Input: 8 bytes of key, one mode byte (1 = append the body's
//! SHA-256 so the parser is reached), then the record. Property: what
//! decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use synapse_fuzz::with_sha256;
use synapse_storage::fuzzing::{decode_audit_at, decode_audit_record, encode_audit_record};

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let (key, rest) = data.split_at(8);
    let (&mode, record) = rest.split_first().expect("checked length");
    let bytes = if mode == 1 {
        with_sha256(record)
    } else {
        record.to_vec()
    };
    if let Ok(rec) = decode_audit_record(&bytes) {
        assert_eq!(
            encode_audit_record(&rec),
            bytes,
            "audit decode/encode is not the identity"
        );
    }
    let _ = decode_audit_at(key, &bytes);
});
