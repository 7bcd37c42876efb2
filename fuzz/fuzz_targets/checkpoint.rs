//! The checkpoint record decoder (disk, Raft commands, peer repair).
//! First byte 1: the rest is a body that gets its SHA-256 appended, so the
//! fuzzer reaches the parser. Property: what decodes re-encodes to the same
//! bytes and verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use synapse_fuzz::with_sha256;
use synapse_storage::Checkpoint;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode == 1 {
        with_sha256(rest)
    } else {
        rest.to_vec()
    };
    if let Ok(cp) = Checkpoint::decode(&bytes) {
        assert_eq!(
            cp.encode(),
            bytes,
            "checkpoint decode/encode is not the identity"
        );
        assert!(cp.verify().is_ok(), "a decoded checkpoint must verify");
    }
});
