//! Every `synapse.v1` request message through prost decode and then the
//! validation the server runs on it before the guard; Raft frames through
//! `FrameDecoder` as the Peer.Raft handler feeds them. First byte: kind
//! (see `synapse_fuzz::kind`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use synapse_consensus::FrameDecoder;
use synapse_fuzz::{guard, kind};
use synapse_proto::v1 as pb;
use synapse_runtime::fuzzing::{check_add_member, check_invoke, check_rollback, check_target};
use synapse_runtime::guard::{inspect, Operation, Request};

/// The node's default payload limit (`NodeConfig::max_payload_bytes`).
const MAX_PAYLOAD: usize = 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&k, bytes)) = data.split_first() else {
        return;
    };
    match k % kind::COUNT {
        kind::INVOKE => {
            if let Ok(r) = pb::InvokeRequest::decode(bytes) {
                let _ = check_invoke(&r, MAX_PAYLOAD);
            }
        }
        kind::GET_STATE => {
            if let Ok(r) = pb::GetStateRequest::decode(bytes) {
                let _ = check_target(&r.skill, &r.instance);
            }
        }
        kind::HISTORY => {
            if let Ok(r) = pb::HistoryRequest::decode(bytes) {
                let _ = check_target(&r.skill, &r.instance);
            }
        }
        kind::ROLLBACK => {
            if let Ok(r) = pb::RollbackRequest::decode(bytes) {
                let _ = check_rollback(&r);
            }
        }
        kind::VERIFY => {
            if let Ok(r) = pb::VerifyRequest::decode(bytes) {
                let _ = check_target(&r.skill, &r.instance);
            }
        }
        kind::WATCH => {
            if let Ok(r) = pb::WatchRequest::decode(bytes) {
                let _ = check_target(&r.skill, &r.instance);
            }
        }
        kind::ADD_MEMBER => {
            if let Ok(r) = pb::AddMemberRequest::decode(bytes) {
                let _ = check_add_member(&r);
            }
        }
        kind::MEMBER => {
            let _ = pb::MemberRequest::decode(bytes);
        }
        kind::REVOKE => {
            // The token to revoke is parsed by the server before it is
            // replicated.
            if let Ok(r) = pb::RevokeRequest::decode(bytes) {
                let _ = inspect(&r.token, None);
            }
        }
        kind::AUDIT => {
            let _ = pb::AuditRequest::decode(bytes);
        }
        kind::FORWARD_INVOKE => {
            if let Ok(f) = pb::ForwardInvokeRequest::decode(bytes) {
                if let Some(r) = &f.request {
                    if check_invoke(r, MAX_PAYLOAD).is_ok() {
                        let req = Request {
                            skill: &r.skill,
                            instance: &r.instance,
                            method: &r.method,
                            operation: Operation::Write,
                        };
                        let _ = guard().check(Some(&f.token), &req);
                    }
                }
            }
        }
        kind::RAFT_FRAMES => {
            // One stream: consecutive length-delimited frames through one
            // decoder, so chunk reassembly across frames is exercised.
            let mut decoder = FrameDecoder::default();
            let mut buf = bytes;
            while !buf.is_empty() {
                match pb::RaftBatch::decode_length_delimited(&mut buf) {
                    Ok(frame) => {
                        if decoder.decode(frame).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        kind::CLOCK_SAMPLE => {
            let _ = pb::ClockSampleRequest::decode(bytes);
        }
        kind::FETCH_CHECKPOINT => {
            if let Ok(r) = pb::FetchCheckpointRequest::decode(bytes) {
                let _ = check_target(&r.skill, &r.instance);
            }
        }
        _ => {}
    }
});
