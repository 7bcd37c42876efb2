//! What travels through the Raft log, and what applying it yields.

use synapse_storage::{Checkpoint, Hash, RequestRecord, StorageError, Timestamp};

use crate::guard::Fence;

/// Format tag of a checkpoint command; a new command kind gets a new tag.
const TAG_CHECKPOINT: u8 = 1;
const TAG_SET_META: u8 = 2;
const TAG_REVOKE: u8 = 3;
/// A checkpoint with a non-empty [`Fence`]: the fence, then exactly the body
/// of `TAG_CHECKPOINT`. Unfenced checkpoints keep tag 1, so logs written
/// before fencing existed still decode.
const TAG_CHECKPOINT_FENCED: u8 = 4;
/// A checkpoint whose request id the leader generated (the caller sent
/// none): the body of `TAG_CHECKPOINT_FENCED` (with a possibly empty
/// fence). Apply keeps no request record for it. The mark travels in the
/// entry rather than being read off the id, so that apply stays the same
/// function of the log on every node and for every log ever written.
const TAG_CHECKPOINT_SERVER_NAMED: u8 = 5;

/// Most revocation ids one command carries: one per token block, and a
/// token of at most `MAX_TOKEN_BYTES` (16 KiB) has far fewer blocks than
/// this (each block is ≥ ~100 bytes). Bounds decode work for a hostile entry.
pub const MAX_IDS_PER_COMMAND: usize = 256;

/// A replicated command: the leader's actor already ran the handler; every
/// node validates the checkpoint against its chain head and stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Checkpoint {
        checkpoint: Checkpoint,
        reply: Vec<u8>,
        /// Re-checked at apply against `checkpoint.timestamp` and the
        /// revocations applied before this entry.
        fence: Fence,
        /// The leader named this write (its caller sent no request id).
        /// Nobody can retry with that name, so apply neither looks it up
        /// nor keeps a request record for it.
        server_named: bool,
    },
    /// Revokes capability ids (every block id of one token) for good.
    Revoke {
        ids: Vec<Vec<u8>>,
        reason: String,
        /// Proposer's HLC stamp, kept with the revocation for audit.
        timestamp: Timestamp,
    },
    /// Replicated cluster metadata (the root key, member addresses).
    /// `only_if_absent` makes the first proposal win, as for the root key.
    SetMeta {
        name: String,
        value: Vec<u8>,
        only_if_absent: bool,
    },
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Command::Checkpoint {
                checkpoint,
                reply,
                fence,
                server_named,
            } => {
                let cp = checkpoint.encode();
                let mut out = Vec::with_capacity(1 + 8 + reply.len() + cp.len() + 80);
                if *fence == Fence::default() && !server_named {
                    out.push(TAG_CHECKPOINT);
                } else {
                    out.push(if *server_named {
                        TAG_CHECKPOINT_SERVER_NAMED
                    } else {
                        TAG_CHECKPOINT_FENCED
                    });
                    out.push(u8::from(fence.expires_at_secs.is_some()));
                    out.extend_from_slice(&fence.expires_at_secs.unwrap_or(0).to_be_bytes());
                    put_ids(&mut out, &fence.revocation_ids);
                }
                out.extend_from_slice(&(reply.len() as u64).to_be_bytes());
                out.extend_from_slice(reply);
                out.extend_from_slice(&cp);
                out
            }
            Command::SetMeta {
                name,
                value,
                only_if_absent,
            } => {
                let mut out = Vec::with_capacity(1 + 1 + 16 + name.len() + value.len());
                out.push(TAG_SET_META);
                out.push(u8::from(*only_if_absent));
                out.extend_from_slice(&(name.len() as u64).to_be_bytes());
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(&(value.len() as u64).to_be_bytes());
                out.extend_from_slice(value);
                out
            }
            Command::Revoke {
                ids,
                reason,
                timestamp,
            } => {
                let mut out = Vec::with_capacity(1 + 20 + 8 + reason.len() + 72 * ids.len());
                out.push(TAG_REVOKE);
                out.extend_from_slice(&timestamp.physical_micros.to_be_bytes());
                out.extend_from_slice(&timestamp.logical.to_be_bytes());
                out.extend_from_slice(&timestamp.node_id.to_be_bytes());
                out.extend_from_slice(&(reason.len() as u64).to_be_bytes());
                out.extend_from_slice(reason.as_bytes());
                put_ids(&mut out, ids);
                out
            }
        }
    }

    /// Never panics; a checkpoint whose hash fails is `Corrupt`.
    pub fn decode(bytes: &[u8]) -> Result<Command, StorageError> {
        let corrupt = |what: &str| StorageError::Corrupt {
            what: format!("command: {what}"),
        };
        let (&tag, rest) = bytes.split_first().ok_or_else(|| corrupt("empty"))?;
        match tag {
            TAG_CHECKPOINT | TAG_CHECKPOINT_FENCED | TAG_CHECKPOINT_SERVER_NAMED => {
                let (fence, rest) = if tag != TAG_CHECKPOINT {
                    let (&flag, rest) = rest
                        .split_first()
                        .ok_or_else(|| corrupt("truncated fence"))?;
                    let (exp, rest) = take_u64(rest).ok_or_else(|| corrupt("truncated fence"))?;
                    let (ids, rest) = take_ids(rest).ok_or_else(|| corrupt("malformed fence"))?;
                    if flag > 1 {
                        return Err(corrupt("malformed fence"));
                    }
                    let fence = Fence {
                        expires_at_secs: (flag == 1).then_some(exp),
                        revocation_ids: ids,
                    };
                    (fence, rest)
                } else {
                    (Fence::default(), rest)
                };
                if rest.len() < 8 {
                    return Err(corrupt("truncated reply length"));
                }
                let (len, rest) = rest.split_at(8);
                let len = u64::from_be_bytes(len.try_into().map_err(|_| corrupt("length"))?);
                let len = usize::try_from(len).map_err(|_| corrupt("reply length"))?;
                if rest.len() < len {
                    return Err(corrupt("truncated reply"));
                }
                let (reply, cp) = rest.split_at(len);
                Ok(Command::Checkpoint {
                    checkpoint: Checkpoint::decode(cp)?,
                    reply: reply.to_vec(),
                    fence,
                    server_named: tag == TAG_CHECKPOINT_SERVER_NAMED,
                })
            }
            TAG_REVOKE => {
                let (physical_micros, rest) =
                    take_u64(rest).ok_or_else(|| corrupt("truncated revoke"))?;
                if rest.len() < 4 {
                    return Err(corrupt("truncated revoke"));
                }
                let (logical, rest) = rest.split_at(4);
                let logical =
                    u32::from_be_bytes(logical.try_into().map_err(|_| corrupt("revoke"))?);
                let (node_id, rest) = take_u64(rest).ok_or_else(|| corrupt("truncated revoke"))?;
                let (reason, rest) =
                    take_prefixed(rest).ok_or_else(|| corrupt("truncated revoke reason"))?;
                let (ids, rest) = take_ids(rest).ok_or_else(|| corrupt("malformed revoke ids"))?;
                if !rest.is_empty() || ids.is_empty() {
                    return Err(corrupt("malformed revoke"));
                }
                let reason = String::from_utf8(reason.to_vec())
                    .map_err(|_| corrupt("revoke reason is not UTF-8"))?;
                Ok(Command::Revoke {
                    ids,
                    reason,
                    timestamp: Timestamp {
                        physical_micros,
                        logical,
                        node_id,
                    },
                })
            }
            TAG_SET_META => {
                let (&flag, rest) = rest
                    .split_first()
                    .ok_or_else(|| corrupt("truncated meta"))?;
                let (name, rest) =
                    take_prefixed(rest).ok_or_else(|| corrupt("truncated meta name"))?;
                let (value, rest) =
                    take_prefixed(rest).ok_or_else(|| corrupt("truncated meta value"))?;
                if !rest.is_empty() || flag > 1 {
                    return Err(corrupt("malformed meta"));
                }
                let name = String::from_utf8(name.to_vec())
                    .map_err(|_| corrupt("meta name is not UTF-8"))?;
                Ok(Command::SetMeta {
                    name,
                    value: value.to_vec(),
                    only_if_absent: flag == 1,
                })
            }
            other => Err(corrupt(&format!("unknown tag {other}"))),
        }
    }
}

fn take_u64(bytes: &[u8]) -> Option<(u64, &[u8])> {
    if bytes.len() < 8 {
        return None;
    }
    let (v, rest) = bytes.split_at(8);
    Some((u64::from_be_bytes(v.try_into().ok()?), rest))
}

fn put_ids(out: &mut Vec<u8>, ids: &[Vec<u8>]) {
    out.extend_from_slice(&(ids.len() as u64).to_be_bytes());
    for id in ids {
        out.extend_from_slice(&(id.len() as u64).to_be_bytes());
        out.extend_from_slice(id);
    }
}

/// Count-prefixed list of length-prefixed ids; `None` if truncated or over
/// the limits (count, id size), never a large allocation from a bad count.
fn take_ids(bytes: &[u8]) -> Option<(Vec<Vec<u8>>, &[u8])> {
    let (n, mut rest) = take_u64(bytes)?;
    let n = usize::try_from(n).ok()?;
    if n > MAX_IDS_PER_COMMAND {
        return None;
    }
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let (id, r) = take_prefixed(rest)?;
        if id.is_empty() || id.len() > synapse_storage::MAX_REVOCATION_ID_BYTES {
            return None;
        }
        ids.push(id.to_vec());
        rest = r;
    }
    Some((ids, rest))
}

fn take_prefixed(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    if bytes.len() < 8 {
        return None;
    }
    let (len, rest) = bytes.split_at(8);
    let len = usize::try_from(u64::from_be_bytes(len.try_into().ok()?)).ok()?;
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// The result of applying one entry, handed back to the proposer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The checkpoint is now the instance's head.
    Applied {
        version: u64,
        hash: Hash,
        timestamp: Timestamp,
    },
    /// The request id was applied before; this is the original outcome.
    Duplicate(RequestRecord),
    /// The checkpoint did not extend the head (a stale speculative parent, or
    /// a non-increasing timestamp). Nothing changed.
    Rejected(String),
    /// Cluster metadata: `changed` is false when `only_if_absent` found a value.
    MetaSet { changed: bool },
    /// The entry's capability had expired at the entry's timestamp, or was
    /// revoked by an earlier entry (fencing). Nothing changed.
    Fenced(String),
    /// A revocation: `added` ids were new (the rest were already revoked).
    Revoked { added: usize },
    /// The revoked set is full (`MAX_REVOCATIONS`). Nothing changed.
    RevocationsFull,
    /// A no-op or membership entry.
    Noop,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Command {
        let cp = Checkpoint::seal(
            "counter".into(),
            "a".into(),
            1,
            synapse_storage::ZERO_HASH,
            b"{\"value\":1}".to_vec(),
            Timestamp {
                physical_micros: 1,
                logical: 0,
                node_id: 1,
            },
            "r1".into(),
        );
        Command::Checkpoint {
            checkpoint: cp,
            reply: b"{\"value\":1}".to_vec(),
            fence: Fence::default(),
            server_named: false,
        }
    }

    fn fenced() -> Command {
        let Command::Checkpoint {
            checkpoint, reply, ..
        } = sample()
        else {
            unreachable!("sample() builds a checkpoint command")
        };
        Command::Checkpoint {
            checkpoint,
            reply,
            fence: Fence {
                expires_at_secs: Some(1_900_000_000),
                revocation_ids: vec![vec![1; 64], vec![2; 64]],
            },
            server_named: false,
        }
    }

    /// `sample()` with a server-generated name, unfenced and fenced.
    fn server_named() -> [Command; 2] {
        [sample(), fenced()].map(|c| match c {
            Command::Checkpoint {
                checkpoint,
                reply,
                fence,
                ..
            } => Command::Checkpoint {
                checkpoint,
                reply,
                fence,
                server_named: true,
            },
            other => other,
        })
    }

    #[test]
    fn fenced_checkpoint_and_revoke_round_trip_and_truncations_fail() {
        let r = Command::Revoke {
            ids: vec![vec![3; 64]],
            reason: "leaked".into(),
            timestamp: Timestamp {
                physical_micros: 9,
                logical: 2,
                node_id: 3,
            },
        };
        let [named, named_fenced] = server_named();
        for c in [fenced(), r, named, named_fenced] {
            let bytes = c.encode();
            assert_eq!(Command::decode(&bytes).unwrap(), c);
            for n in 0..bytes.len() {
                assert!(Command::decode(&bytes[..n]).is_err(), "truncation to {n}");
            }
        }
        // An unfenced checkpoint keeps the original tag (old logs decode),
        // and the server-named mark survives an empty fence.
        assert_eq!(sample().encode()[0], TAG_CHECKPOINT);
        let [named, _] = server_named();
        assert_eq!(named.encode()[0], TAG_CHECKPOINT_SERVER_NAMED);
        // A hostile id count is refused, not allocated.
        let mut evil = vec![TAG_REVOKE];
        evil.extend_from_slice(&[0; 20]);
        evil.extend_from_slice(&0u64.to_be_bytes());
        evil.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(Command::decode(&evil).is_err());
    }

    #[test]
    fn round_trip() {
        let c = sample();
        assert_eq!(Command::decode(&c.encode()).unwrap(), c);
        let m = Command::SetMeta {
            name: "member/2".into(),
            value: b"h:1".to_vec(),
            only_if_absent: true,
        };
        let bytes = m.encode();
        assert_eq!(Command::decode(&bytes).unwrap(), m);
        for n in 0..bytes.len() {
            assert!(
                Command::decode(&bytes[..n]).is_err(),
                "truncated meta accepted at {n}"
            );
        }
    }

    #[test]
    fn every_flip_and_truncation_is_detected_or_harmless() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            // A flip inside the reply bytes is not covered by the checkpoint
            // hash, but must not decode into a different checkpoint.
            if let Ok(Command::Checkpoint { checkpoint, .. }) = Command::decode(&b) {
                let Command::Checkpoint {
                    checkpoint: orig, ..
                } = sample()
                else {
                    unreachable!("sample() builds a checkpoint command")
                };
                assert_eq!(
                    checkpoint, orig,
                    "flip at {i} changed the checkpoint undetected"
                );
            }
        }
        for n in 0..bytes.len() {
            assert!(
                Command::decode(&bytes[..n]).is_err(),
                "truncation to {n} accepted"
            );
        }
    }
}
