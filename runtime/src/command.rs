//! What travels through the Raft log, and what applying it yields.

use synapse_storage::{Checkpoint, Hash, RequestRecord, StorageError, Timestamp};

/// Format tag of a checkpoint command; a new command kind gets a new tag.
const TAG_CHECKPOINT: u8 = 1;

/// A replicated command: the leader's actor already ran the handler; every
/// node validates the checkpoint against its chain head and stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Checkpoint {
        checkpoint: Checkpoint,
        reply: Vec<u8>,
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
            other => Err(corrupt(&format!("unknown tag {other}"))),
        }
    }
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
                } = sample();
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
