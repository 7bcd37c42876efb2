//! Writes the seed corpora under `fuzz/corpus/<target>/` from valid
//! encodings, in the input layouts the targets expect. Run from `fuzz/`:
//! `cargo run --example seeds`.

use std::path::Path;

use base64::Engine as _;
use prost::Message;
use protobuf::Message as _;
use synapse_fuzz::{kind, root_key, scoped_token};
use synapse_proto::v1 as pb;
use synapse_runtime::guard::{attenuate, Grant, Restriction};
use synapse_storage::fuzzing::{encode_audit_record, encode_wal_record, seal_raft_log_value};
use synapse_storage::{AuditRecord, Checkpoint, Timestamp, ZERO_HASH};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn with_prefix(prefix: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.extend_from_slice(body);
    v
}

fn checkpoint(version: u64, state: &[u8]) -> Checkpoint {
    Checkpoint::seal(
        "counter".into(),
        "alice".into(),
        version,
        ZERO_HASH,
        state.to_vec(),
        Timestamp {
            physical_micros: 1_700_000_000_000_000,
            logical: 3,
            node_id: 1,
        },
        "req-1".into(),
    )
}

fn main() {
    // token: text and raw-bytes modes, plain, attenuated, with fields.
    let admin = root_key()
        .mint(
            "admin",
            &[Grant {
                skill: "*".into(),
                instance: "*".into(),
                methods: vec![],
                read_only: false,
            }],
            None,
        )
        .expect("mint");
    let narrowed = attenuate(
        scoped_token(),
        &Restriction {
            skill: Some("counter".into()),
            instance: Some("alice".into()),
            methods: Some(vec!["get".into()]),
            read_only: true,
            expires_at: None,
        },
    )
    .expect("attenuate");
    let fields = b"\xffcounter\xfealice\xfeget";
    for (i, t) in [&admin, scoped_token(), &narrowed].iter().enumerate() {
        write(
            "token",
            &format!("text-{i}"),
            &with_prefix(&[0x3c], &with_prefix(t.as_bytes(), fields)),
        );
        let raw = base64::engine::general_purpose::URL_SAFE
            .decode(t.as_bytes())
            .expect("token base64");
        write(
            "token",
            &format!("bytes-{i}"),
            &with_prefix(&[0x3d], &with_prefix(&raw, fields)),
        );
    }

    // requests: one valid message per kind.
    let invoke = pb::InvokeRequest {
        skill: "counter".into(),
        instance: "alice".into(),
        method: "incr".into(),
        payload: br#"{"by": 2}"#.to_vec(),
        request_id: "r-1".into(),
        expected_version: Some(3),
    };
    let seeds: Vec<(u8, Vec<u8>)> = vec![
        (kind::INVOKE, invoke.encode_to_vec()),
        (
            kind::GET_STATE,
            pb::GetStateRequest {
                skill: "kv".into(),
                instance: "bob".into(),
                version: 2,
                at: Some(pb::Timestamp {
                    physical_micros: 5,
                    logical: 1,
                    node_id: 2,
                }),
            }
            .encode_to_vec(),
        ),
        (
            kind::HISTORY,
            pb::HistoryRequest {
                skill: "kv".into(),
                instance: "bob".into(),
                before_version: 4,
                limit: 10,
            }
            .encode_to_vec(),
        ),
        (
            kind::ROLLBACK,
            pb::RollbackRequest {
                skill: "counter".into(),
                instance: "alice".into(),
                to_version: 1,
                request_id: "rb".into(),
            }
            .encode_to_vec(),
        ),
        (
            kind::VERIFY,
            pb::VerifyRequest {
                skill: "counter".into(),
                instance: "alice".into(),
            }
            .encode_to_vec(),
        ),
        (
            kind::WATCH,
            pb::WatchRequest {
                skill: "counter".into(),
                instance: "alice".into(),
            }
            .encode_to_vec(),
        ),
        (
            kind::ADD_MEMBER,
            pb::AddMemberRequest {
                id: 4,
                address: "127.0.0.1:7004".into(),
                as_voter: true,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (kind::MEMBER, pb::MemberRequest { id: 2 }.encode_to_vec()),
        (
            kind::REVOKE,
            pb::RevokeRequest {
                token: narrowed.clone(),
                reason: "lost laptop".into(),
            }
            .encode_to_vec(),
        ),
        (
            kind::AUDIT,
            pb::AuditRequest {
                from_micros: 1,
                to_micros: 2,
                principal: "alice".into(),
                outcome: "deny".into(),
                limit: 5,
            }
            .encode_to_vec(),
        ),
        (
            kind::FORWARD_INVOKE,
            pb::ForwardInvokeRequest {
                request: Some(invoke.clone()),
                token: admin.clone(),
            }
            .encode_to_vec(),
        ),
        (
            kind::CLOCK_SAMPLE,
            pb::ClockSampleRequest {
                from: 2,
                t1_micros: 99,
            }
            .encode_to_vec(),
        ),
        (
            kind::FETCH_CHECKPOINT,
            pb::FetchCheckpointRequest {
                skill: "kv".into(),
                instance: "bob".into(),
                version: 7,
            }
            .encode_to_vec(),
        ),
    ];
    for (k, body) in &seeds {
        write("requests", &format!("kind-{k}"), &with_prefix(&[*k], body));
    }
    // Raft frames: a batch of two messages, then a message in two chunks.
    let mut msg = raft::eraftpb::Message {
        to: 1,
        from: 2,
        term: 3,
        index: 10,
        log_term: 2,
        commit: 9,
        ..Default::default()
    };
    msg.set_msg_type(raft::eraftpb::MessageType::MsgAppend);
    let mut entry = raft::eraftpb::Entry {
        index: 11,
        term: 3,
        ..Default::default()
    };
    entry.data = b"payload".to_vec().into();
    msg.mut_entries().push(entry.clone());
    let m = msg.write_to_bytes().expect("raft msg");
    let (a, b) = m.split_at(m.len() / 2);
    let mut frames = Vec::new();
    for f in [
        pb::RaftBatch {
            from: 2,
            messages: vec![m.clone(), m.clone()],
            from_address: "127.0.0.1:7002".into(),
            ..Default::default()
        },
        pb::RaftBatch {
            from: 2,
            chunk: a.to_vec(),
            ..Default::default()
        },
        pb::RaftBatch {
            from: 2,
            chunk: b.to_vec(),
            chunk_last: true,
            ..Default::default()
        },
    ] {
        f.encode_length_delimited(&mut frames).expect("frame");
    }
    write(
        "requests",
        "raft-frames",
        &with_prefix(&[kind::RAFT_FRAMES], &frames),
    );

    // checkpoint: raw record, and body-only (mode 1).
    for (i, state) in [&b"{\"value\":3}"[..], &b""[..], &[0u8; 300][..]]
        .iter()
        .enumerate()
    {
        let enc = checkpoint(i as u64 + 1, state).encode();
        write("checkpoint", &format!("raw-{i}"), &with_prefix(&[0], &enc));
        write(
            "checkpoint",
            &format!("body-{i}"),
            &with_prefix(&[1], &enc[..enc.len() - 32]),
        );
        // command: the same checkpoint as a replicated command.
        let reply = br#"{"value":3}"#;
        let mut cmd = vec![1u8];
        cmd.extend_from_slice(&(reply.len() as u64).to_be_bytes());
        cmd.extend_from_slice(reply);
        cmd.extend_from_slice(&enc);
        write(
            "command",
            &format!("checkpoint-{i}"),
            &with_prefix(&[0], &cmd),
        );
        let mut steer = reply.to_vec();
        steer.push(0xff);
        steer.extend_from_slice(&enc[..enc.len() - 32]);
        write("command", &format!("steer-{i}"), &with_prefix(&[1], &steer));
    }
    let mut meta = vec![2u8, 1];
    for part in [&b"root_key"[..], &b"00aa11bb"[..]] {
        meta.extend_from_slice(&(part.len() as u64).to_be_bytes());
        meta.extend_from_slice(part);
    }
    write("command", "set-meta", &with_prefix(&[0], &meta));

    // raft_log: sealed and payload-only (mode 1) entries.
    for (i, e) in [entry.clone(), raft::eraftpb::Entry::default()]
        .iter()
        .enumerate()
    {
        let payload = e.write_to_bytes().expect("entry");
        let idx = e.index.to_be_bytes();
        write(
            "raft_log",
            &format!("sealed-{i}"),
            &[&idx[..], &[0], &seal_raft_log_value(&payload)].concat(),
        );
        write(
            "raft_log",
            &format!("payload-{i}"),
            &[&idx[..], &[1], &payload].concat(),
        );
    }

    // wal_segment: a segment of three records, and the same cut short.
    let mut segment = Vec::new();
    for index in 7..=9u64 {
        let payload = raft::eraftpb::Entry {
            index,
            term: 2,
            ..Default::default()
        }
        .write_to_bytes()
        .expect("entry");
        segment.extend_from_slice(&encode_wal_record(index, &seal_raft_log_value(&payload)));
    }
    write("wal_segment", "three", &segment);
    write("wal_segment", "torn", &segment[..segment.len() - 5]);

    // audit: full records and bodies (mode 1), with their keys.
    for (i, allowed) in [true, false].iter().enumerate() {
        let mut rec = AuditRecord {
            seq: i as u64 + 1,
            timestamp: Timestamp {
                physical_micros: 1_700_000_000_000_000,
                logical: 0,
                node_id: 1,
            },
            principal: "alice".into(),
            skill: "counter".into(),
            instance: "alice".into(),
            method: "incr".into(),
            allowed: *allowed,
            reason: "capability expired".into(),
            prev_hash: ZERO_HASH,
            hash: ZERO_HASH,
        };
        rec.hash = rec.compute_hash();
        let enc = encode_audit_record(&rec);
        let key = rec.seq.to_be_bytes();
        write(
            "audit",
            &format!("raw-{i}"),
            &[&key[..], &[0], &enc].concat(),
        );
        write(
            "audit",
            &format!("body-{i}"),
            &[&key[..], &[1], &enc[..enc.len() - 32]].concat(),
        );
    }
    println!("seeds written under fuzz/corpus/");
}
