//! Client-side operation histories, the input of linearizability checking.
//!
//! A history is what clients saw: for every operation, what was asked, when
//! the call started and ended (real instants, one monotonic clock per
//! recording process), and what came back. It is recorded by the
//! deterministic simulation and by the real-process and container fault
//! tests, stored as JSON lines, and checked per key (per instance) by
//! [`crate::linearizability`].
//!
//! Owns: the record format. Must never: depend on the server's view of what
//! happened; a history holds only what a client could observe.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

/// What the client asked for. Values are integers so that a model state is
/// cheap to copy and hash while checking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Call {
    /// Register read (kv `get`) or counter read (counter `get`).
    Read,
    /// Register write (kv `put`).
    Write { value: i64 },
    /// Register compare-and-set (kv `cas`); `expected: None` means "absent".
    Cas { expected: Option<i64>, new: i64 },
    /// Counter increment; an `Ok` outcome carries the counter value after it.
    Increment { by: i64 },
}

/// What came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Outcome {
    /// The operation took effect. `value`: what a read returned (`None` =
    /// absent), the counter value after an increment; `None` for writes and
    /// successful CAS.
    Ok { value: Option<i64> },
    /// The operation definitely did not take effect: a CAS mismatch, or an
    /// error returned before anything was proposed (invalid argument,
    /// permission denied, resource exhausted at admission).
    Fail,
    /// Unknown: a timeout, a lost connection, UNAVAILABLE after the request
    /// may have been proposed. It may or may not have taken effect, at any
    /// instant after `invoke_ns`.
    Unknown,
}

/// One operation as a client saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// The recording client (a process-wide unique number); one client
    /// has at most one operation outstanding.
    pub client: u64,
    /// The object the operation addresses (`skill/instance[/key]`);
    /// histories are checked per key.
    pub key: String,
    pub call: Call,
    /// When the call was issued, ns on the recorder's monotonic clock.
    pub invoke_ns: u64,
    /// When the answer arrived; for `Unknown`, when the client gave up
    /// (the operation's effect may still happen later).
    pub complete_ns: u64,
    pub outcome: Outcome,
}

/// Writes a history as JSON lines (one [`Operation`] per line).
pub fn write_jsonl<W: Write>(mut out: W, ops: &[Operation]) -> std::io::Result<()> {
    for op in ops {
        serde_json::to_writer(&mut out, op)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Reads a history written by [`write_jsonl`]; a malformed line is an
/// `InvalidData` error naming the line number.
pub fn read_jsonl<R: BufRead>(input: R) -> std::io::Result<Vec<Operation>> {
    let mut ops = Vec::new();
    for (n, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op = serde_json::from_str(&line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("history line {}: {e}", n + 1),
            )
        })?;
        ops.push(op);
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_round_trip() {
        let ops = vec![
            Operation {
                client: 1,
                key: "kv/a/x".into(),
                call: Call::Cas {
                    expected: None,
                    new: 3,
                },
                invoke_ns: 10,
                complete_ns: 20,
                outcome: Outcome::Ok { value: None },
            },
            Operation {
                client: 2,
                key: "counter/c".into(),
                call: Call::Increment { by: 1 },
                invoke_ns: 15,
                complete_ns: 40,
                outcome: Outcome::Unknown,
            },
        ];
        let mut buf = Vec::new();
        write_jsonl(&mut buf, &ops).unwrap();
        assert_eq!(read_jsonl(&buf[..]).unwrap(), ops);
        let err = read_jsonl(&b"{\"client\":1}\n"[..]).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
