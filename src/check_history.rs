//! `synapse check-history FILE [--model register|counter]`: checks a
//! recorded history (`synapse bench --record-history`) per key with
//! [`synapse::linearizability`], and for counters also accounts for every
//! acknowledged increment against the last read. Exits non-zero on a
//! violation, on a history the checker could not decide, and on an
//! unreadable file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde_json::json;
use synapse::history::{Call, Operation, Outcome};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Model {
    /// kv put / get / cas.
    Register,
    /// counter incr (returns the new value) / get.
    Counter,
}

#[derive(Args, Debug)]
pub struct CheckOpts {
    /// History file (JSON lines of `synapse::history::Operation`).
    pub file: PathBuf,
    /// Model to check against; default: guessed from the calls (an
    /// increment means counter, a write or CAS means register).
    #[arg(long, value_enum)]
    pub model: Option<Model>,
    /// Also print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Counter accounting for one key: every acknowledged increment (by 1) must
/// be in the final value, and nothing but acknowledged and unknown ones.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CounterAccount {
    /// Sums of `by` (each an i64 from the history file): i128 so that no
    /// history, however crafted, overflows them.
    pub acked: i128,
    pub unknown: i128,
    pub final_value: Option<i64>,
    /// Acknowledged increments the final value does not account for.
    pub lost: i128,
    /// Two acknowledged increments that returned the same value.
    pub duplicate_results: u64,
}

impl CounterAccount {
    pub fn ok(&self) -> bool {
        self.lost == 0
            && self.duplicate_results == 0
            && self
                .final_value
                .is_none_or(|f| i128::from(f) <= self.acked + self.unknown)
    }
}

/// The final value is what the last-invoked successful read returned: the
/// recorder's final read runs after every client has stopped.
pub fn account_counter(ops: &[&Operation]) -> CounterAccount {
    let mut a = CounterAccount::default();
    let mut seen = std::collections::HashSet::new();
    let mut last_read: Option<(u64, i64)> = None;
    for op in ops {
        match (op.call, op.outcome) {
            (Call::Increment { by }, Outcome::Ok { value }) => {
                a.acked += i128::from(by);
                if let Some(v) = value {
                    if !seen.insert(v) {
                        a.duplicate_results += 1;
                    }
                }
            }
            (Call::Increment { by }, Outcome::Unknown) => a.unknown += i128::from(by),
            (Call::Read, Outcome::Ok { value }) => {
                let v = value.unwrap_or(0);
                if last_read.is_none_or(|(t, _)| op.invoke_ns >= t) {
                    last_read = Some((op.invoke_ns, v));
                }
            }
            _ => {}
        }
    }
    a.final_value = last_read.map(|x| x.1);
    if let Some(f) = a.final_value {
        a.lost = (a.acked - i128::from(f)).max(0);
    }
    a
}

fn guess_model(ops: &[Operation]) -> Model {
    if ops.iter().any(|o| matches!(o.call, Call::Increment { .. })) {
        Model::Counter
    } else {
        Model::Register
    }
}

/// One key's verdict from the linearizability checker.
enum KeyVerdict {
    Linearizable,
    Violation(String),
    Undecided(String),
}

struct KeyResult {
    key: String,
    ops: usize,
    unknown: usize,
    states: u64,
    verdict: KeyVerdict,
}

/// The one place that calls the checker (kept narrow so that the checker's
/// API can change without touching the rest of this command).
fn check_keys(ops: &[Operation]) -> Result<Vec<KeyResult>, String> {
    use synapse::linearizability::{check, Verdict};
    let report = check(ops).map_err(|e| format!("malformed history: {e}"))?;
    Ok(report
        .keys
        .into_iter()
        .map(|k| KeyResult {
            verdict: match k.verdict {
                Verdict::Linearizable => KeyVerdict::Linearizable,
                Verdict::NotLinearizable {
                    deepest,
                    stuck,
                    state,
                } => KeyVerdict::Violation(format!(
                    "no linearization: after {deepest} operations in state {state}, none of these can come next: {}",
                    stuck
                        .iter()
                        .take(4)
                        .map(|o| serde_json::to_string(o).unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join(" ")
                )),
                Verdict::TooLarge => KeyVerdict::Undecided(format!(
                    "search budget ({} states) exhausted",
                    synapse::linearizability::MAX_STATES_PER_KEY
                )),
            },
            key: k.key,
            ops: k.ops,
            unknown: k.unknown,
            states: k.states_explored,
        })
        .collect())
}

pub fn run(o: CheckOpts) -> Result<(), String> {
    let f = std::fs::File::open(&o.file)
        .map_err(|e| format!("cannot open {}: {e}", o.file.display()))?;
    let ops = synapse::history::read_jsonl(std::io::BufReader::new(f))
        .map_err(|e| format!("{}: {e}", o.file.display()))?;
    if ops.is_empty() {
        return Err(format!("{}: empty history", o.file.display()));
    }
    let model = o.model.unwrap_or_else(|| guess_model(&ops));
    let mut by_key: BTreeMap<&str, Vec<Operation>> = BTreeMap::new();
    for op in &ops {
        by_key.entry(op.key.as_str()).or_default().push(op.clone());
    }
    let (mut ok, mut fail, mut unknown) = (0u64, 0u64, 0u64);
    for op in &ops {
        match op.outcome {
            Outcome::Ok { .. } => ok += 1,
            Outcome::Fail => fail += 1,
            Outcome::Unknown => unknown += 1,
        }
    }
    let mut violations = Vec::new();
    let mut undecided = Vec::new();
    let mut lost_total = 0i128;
    let started = std::time::Instant::now();
    let results = check_keys(&ops)?;
    let mut states = 0u64;
    for r in &results {
        states += r.states;
        let v = match &r.verdict {
            KeyVerdict::Linearizable => "linearizable".to_string(),
            KeyVerdict::Violation(why) => {
                violations.push(format!("{}: {why}", r.key));
                "NOT LINEARIZABLE".to_string()
            }
            KeyVerdict::Undecided(why) => {
                undecided.push(format!("{}: {why}", r.key));
                "undecided".to_string()
            }
        };
        println!(
            "  key {}: {} ops ({} unknown), {} states explored: {v}",
            r.key, r.ops, r.unknown, r.states
        );
    }
    if model == Model::Counter {
        for (key, key_ops) in &by_key {
            let refs: Vec<&Operation> = key_ops.iter().collect();
            let a = account_counter(&refs);
            lost_total += a.lost;
            if !a.ok() {
                violations.push(format!(
                    "{key}: counter accounting: {} acked + {} unknown increments, final value {:?}, {} acked lost, {} duplicate results",
                    a.acked, a.unknown, a.final_value, a.lost, a.duplicate_results
                ));
            }
        }
    }
    let verdict = if !violations.is_empty() {
        "VIOLATION"
    } else if !undecided.is_empty() {
        "UNDECIDED"
    } else {
        "LINEARIZABLE"
    };
    println!(
        "history {}: model {:?}, {} ops ({} ok, {} fail, {} unknown), {} keys, {states} states explored, checked in {:.2}s",
        o.file.display(),
        model,
        ops.len(),
        ok,
        fail,
        unknown,
        by_key.len(),
        started.elapsed().as_secs_f64()
    );
    if model == Model::Counter {
        println!("acked increments lost: {lost_total}");
    }
    for v in violations.iter().take(20) {
        println!("  violation: {v}");
    }
    for u in undecided.iter().take(20) {
        println!("  undecided: {u}");
    }
    println!("verdict: {verdict}");
    if o.json {
        println!(
            "{}",
            json!({
                "file": o.file.display().to_string(), "model": format!("{model:?}").to_lowercase(),
                "ops": ops.len(), "ok": ok, "fail": fail, "unknown": unknown,
                "keys": by_key.len(), "violations": violations.len(),
                "undecided": undecided.len(), "acked_lost": i64::try_from(lost_total).unwrap_or(i64::MAX), "verdict": verdict,
                "states_explored": states,
            })
        );
    }
    match verdict {
        "LINEARIZABLE" => Ok(()),
        "VIOLATION" => Err(format!(
            "{} of {} keys are not linearizable",
            violations.len(),
            by_key.len()
        )),
        _ => Err(format!(
            "{} of {} keys could not be decided within the checker's budget",
            undecided.len(),
            by_key.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u64, call: Call, t: (u64, u64), outcome: Outcome) -> Operation {
        Operation {
            client,
            key: "counter/c".into(),
            call,
            invoke_ns: t.0,
            complete_ns: t.1,
            outcome,
        }
    }

    #[test]
    fn counter_accounting_catches_a_lost_increment() {
        let inc = Call::Increment { by: 1 };
        let good = vec![
            op(1, inc, (0, 10), Outcome::Ok { value: Some(1) }),
            op(2, inc, (5, 20), Outcome::Unknown),
            op(1, inc, (30, 40), Outcome::Ok { value: Some(3) }),
            op(9, Call::Read, (50, 60), Outcome::Ok { value: Some(3) }),
        ];
        let refs: Vec<&Operation> = good.iter().collect();
        let a = account_counter(&refs);
        assert!(a.ok(), "{a:?}");
        // The same history where the final read misses an acked increment.
        let mut bad = good.clone();
        bad[3].outcome = Outcome::Ok { value: Some(1) };
        let refs: Vec<&Operation> = bad.iter().collect();
        let a = account_counter(&refs);
        assert_eq!(a.lost, 1);
        assert!(!a.ok());
        // Two acked increments returning the same value.
        let mut dup = good.clone();
        dup[2].outcome = Outcome::Ok { value: Some(1) };
        let refs: Vec<&Operation> = dup.iter().collect();
        assert!(!account_counter(&refs).ok());
        // More than acked + unknown: an increment applied twice.
        let mut twice = good;
        twice[3].outcome = Outcome::Ok { value: Some(5) };
        let refs: Vec<&Operation> = twice.iter().collect();
        assert!(!account_counter(&refs).ok());
    }

    #[test]
    fn counter_accounting_of_huge_increments_does_not_overflow() {
        let huge = Call::Increment { by: i64::MAX };
        let ops = [
            op(
                1,
                huge,
                (0, 10),
                Outcome::Ok {
                    value: Some(i64::MAX),
                },
            ),
            op(2, huge, (20, 30), Outcome::Ok { value: None }),
            op(3, huge, (40, 50), Outcome::Unknown),
            op(
                9,
                Call::Read,
                (60, 70),
                Outcome::Ok {
                    value: Some(i64::MAX),
                },
            ),
        ];
        let refs: Vec<&Operation> = ops.iter().collect();
        let a = account_counter(&refs);
        assert_eq!(a.acked, 2 * i128::from(i64::MAX));
        assert_eq!(
            a.lost,
            i128::from(i64::MAX),
            "one acked increment is missing"
        );
        assert!(!a.ok());
    }
}
