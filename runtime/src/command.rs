//! What travels through the Raft log, and what applying it yields.

use synapse_storage::{Checkpoint, Hash, RequestRecord, StorageError, Timestamp};

/// Format tag of a checkpoint command; a new command kind gets a new tag.
const TAG_CHECKPOINT: u8 = 1;
const TAG_SET_META: u8 = 2;

/// A replicated command: the leader's actor already ran the handler; every
/// node validates the checkpoint against its chain head and stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Checkpoint {
        checkpoint: Checkpoint,
        reply: Vec<u8>,
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
            Command::Checkpoint { checkpoint, reply } => {
                let cp = checkpoint.encode();
                let mut out = Vec::with_capacity(1 + 8 + reply.len() + cp.len());
                out.push(TAG_CHECKPOINT);
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
        }
    }

    /// Never panics; a checkpoint whose hash fails is `Corrupt`.
    pub fn decode(bytes: &[u8]) -> Result<Command, StorageError> {
        let corrupt = |what: &str| StorageError::Corrupt {
            what: format!("command: {what}"),
        };
        let (&tag, rest) = bytes.split_first().ok_or_else(|| corrupt("empty"))?;
        match tag {
            TAG_CHECKPOINT => {
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
        }
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
