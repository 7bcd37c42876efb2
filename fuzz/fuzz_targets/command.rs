//! The replicated command decoder every node runs on committed Raft
//! entries. Property: a command that decodes re-encodes to the same bytes.
//! First byte 1: the rest is a checkpoint command whose embedded
//! checkpoint body gets its SHA-256 appended, so the fuzzer reaches the
//! checkpoint parser behind the hash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use synapse_fuzz::{split_ff, with_sha256};
use synapse_runtime::fuzzing::command_reencode;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode == 1 {
        // TAG_CHECKPOINT, reply length, reply, checkpoint record.
        let (reply, body) = split_ff(rest);
        let mut out = vec![1u8];
        out.extend_from_slice(&(reply.len() as u64).to_be_bytes());
        out.extend_from_slice(reply);
        out.extend_from_slice(&with_sha256(body));
        out
    } else {
        rest.to_vec()
    };
    if let Ok(encoded) = command_reencode(&bytes) {
        assert_eq!(encoded, bytes, "command decode/encode is not the identity");
    }
});
