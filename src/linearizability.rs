//! Linearizability checking of client histories ([`crate::history`]).
//!
//! A Wing–Gong search with Lowe's memoisation (the "WGL" algorithm, as in
//! Knossos and Porcupine): repeatedly pick, among the operations that may
//! come next in real-time order, one whose effect the sequential model
//! accepts, and backtrack on failure; a configuration (set of operations
//! already linearized, model state) that was seen before is not explored
//! again. Histories are checked per key: registers and counters are
//! independent objects, so a history is linearizable iff each key's
//! sub-history is (linearizability is compositional).
//!
//! Outcomes:
//! * `Ok` operations must be linearized somewhere between invocation and
//!   completion, with the observed result.
//! * `Unknown` operations have completion = +infinity and may be omitted
//!   (the standard treatment: they may take effect at any point after their
//!   invocation, or never). An unknown CAS may also take effect only if its
//!   expectation holds at its linearization point.
//! * `Fail` operations had no effect and are left out. This is sound for
//!   every `Fail` (it never reports a false violation), and weaker than it
//!   could be for a CAS mismatch, which also observed "value != expected";
//!   the history format does not say which `Fail`s were mismatches.
//!
//! The search is exponential in the worst case, so it has an explicit budget
//! ([`MAX_STATES_PER_KEY`]): past it the key's verdict is
//! [`Verdict::TooLarge`], never a guess.
//!
//! Owns: the sequential models (register, counter) and the search. Must
//! never: report "linearizable" for a history it did not fully check.

use std::collections::{BTreeMap, HashSet};

use crate::history::{Call, Operation, Outcome};

/// Configurations a single key's search may visit before giving up. With
/// ≤ 8 clients per key, the simulation's and the container tests' histories
/// need at most a few thousand; 2 million bounds one key at roughly a
/// second and a few hundred MB of memo on the slowest machine we run on.
pub const MAX_STATES_PER_KEY: u64 = 2_000_000;

/// A malformed history: the checker refuses it instead of guessing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("key {key:?}: operation of client {client} completes ({complete_ns}) before it is invoked ({invoke_ns})")]
    CompletesBeforeInvoke {
        key: String,
        client: u64,
        invoke_ns: u64,
        complete_ns: u64,
    },
    #[error("key {key:?} mixes counter increments with register writes/CAS; a key is one object")]
    MixedModel { key: String },
    #[error("key {key:?}: an increment's Ok outcome must carry the new counter value")]
    IncrementWithoutValue { key: String },
}

/// Which sequential object a key is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// Read / Write / Cas over an optional integer (absent initially).
    Register,
    /// Read / Increment (returning the new value) over an integer starting
    /// at 0; a read of "absent" is 0.
    Counter,
}

/// The verdict for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No linearization exists. `stuck` lists the required operations that
    /// could come next in the deepest configuration reached but none of
    /// which the model accepted there (the likely culprits), and
    /// `deepest` how many required operations had been linearized then.
    NotLinearizable {
        deepest: usize,
        stuck: Vec<Operation>,
        state: String,
    },
    /// The search budget ran out: neither a proof nor a counterexample.
    TooLarge,
}

/// The result for one key, with search statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyReport {
    pub key: String,
    pub model: Model,
    /// Operations in the key's history (all outcomes).
    pub ops: usize,
    /// Of which `Unknown`.
    pub unknown: usize,
    /// Of which `Fail` (left out of the search).
    pub failed: usize,
    /// Distinct configurations visited.
    pub states_explored: u64,
    pub verdict: Verdict,
}

/// The result for a whole history.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    pub keys: Vec<KeyReport>,
}

impl Report {
    /// True iff every key was checked and found linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.keys.iter().all(|k| k.verdict == Verdict::Linearizable)
    }
    /// Keys with a counterexample.
    pub fn violations(&self) -> impl Iterator<Item = &KeyReport> {
        self.keys
            .iter()
            .filter(|k| matches!(k.verdict, Verdict::NotLinearizable { .. }))
    }
    /// Keys whose search ran out of budget.
    pub fn too_large(&self) -> impl Iterator<Item = &KeyReport> {
        self.keys.iter().filter(|k| k.verdict == Verdict::TooLarge)
    }
    pub fn ops(&self) -> usize {
        self.keys.iter().map(|k| k.ops).sum()
    }
    pub fn states_explored(&self) -> u64 {
        self.keys.iter().map(|k| k.states_explored).sum()
    }
}

/// Checks every key of `history` with the default budget.
pub fn check(history: &[Operation]) -> Result<Report, HistoryError> {
    check_with_budget(history, MAX_STATES_PER_KEY)
}

/// Checks every key of `history`, visiting at most `budget` configurations
/// per key. The model of a key is [`Model::Counter`] if it has any
/// increment, else [`Model::Register`].
pub fn check_with_budget(history: &[Operation], budget: u64) -> Result<Report, HistoryError> {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        if op.complete_ns < op.invoke_ns {
            return Err(HistoryError::CompletesBeforeInvoke {
                key: op.key.clone(),
                client: op.client,
                invoke_ns: op.invoke_ns,
                complete_ns: op.complete_ns,
            });
        }
        by_key.entry(&op.key).or_default().push(op);
    }
    let mut report = Report::default();
    for (key, ops) in by_key {
        report.keys.push(check_key(key, &ops, budget)?);
    }
    Ok(report)
}

/// Model state: the register's value (`None` = absent) or the counter.
type State = Option<i64>;

/// One operation as the search sees it.
struct Entry<'a> {
    op: &'a Operation,
    invoke: u64,
    /// `u64::MAX` for unknown outcomes.
    complete: u64,
    required: bool,
    /// For an unknown operation: the previous unknown one with the same
    /// call. Identical unknown operations are interchangeable, and the
    /// earlier-invoked one is available whenever the later one is (both
    /// complete at +infinity), so they are linearized in invocation order:
    /// this turns 2^k subsets of k unknown increments into k + 1 counts.
    prev_twin: Option<usize>,
}

fn check_key(key: &str, ops: &[&Operation], budget: u64) -> Result<KeyReport, HistoryError> {
    let has_incr = ops.iter().any(|o| matches!(o.call, Call::Increment { .. }));
    let has_reg = ops
        .iter()
        .any(|o| matches!(o.call, Call::Write { .. } | Call::Cas { .. }));
    if has_incr && has_reg {
        return Err(HistoryError::MixedModel { key: key.into() });
    }
    // A key with only reads is ambiguous: an untouched counter reads 0, an
    // untouched register reads "absent". A read of 0 with no write at all
    // is only explicable as a counter, so such a key is checked as one.
    let read_zero = ops
        .iter()
        .any(|o| o.call == Call::Read && o.outcome == (Outcome::Ok { value: Some(0) }));
    let model = if has_incr || (!has_reg && read_zero) {
        Model::Counter
    } else {
        Model::Register
    };
    for o in ops {
        if let (Call::Increment { .. }, Outcome::Ok { value: None }) = (o.call, o.outcome) {
            return Err(HistoryError::IncrementWithoutValue { key: key.into() });
        }
    }
    let unknown = ops.iter().filter(|o| o.outcome == Outcome::Unknown).count();
    let failed = ops.iter().filter(|o| o.outcome == Outcome::Fail).count();

    // Values some completed operation could have observed. An unknown
    // register write (or CAS) of a value nobody observed never helps: the state it
    // creates can only be left by another write, so omitting it is always
    // at least as good. Dropping such writes keeps unobserved timeouts from
    // multiplying the search.
    let mut observed: HashSet<Option<i64>> = HashSet::new();
    for o in ops {
        match (o.call, o.outcome) {
            (Call::Read, Outcome::Ok { value }) => {
                observed.insert(value);
            }
            (Call::Cas { expected, .. }, Outcome::Ok { .. } | Outcome::Unknown) => {
                observed.insert(expected);
            }
            _ => {}
        }
    }
    let mut entries: Vec<Entry> = ops
        .iter()
        .filter(|o| match (o.call, o.outcome) {
            (_, Outcome::Fail) => false,
            (Call::Read, Outcome::Unknown) => false, // no effect, nothing observed
            (Call::Write { value }, Outcome::Unknown) => observed.contains(&Some(value)),
            // Same argument for an unknown CAS: no read returned its new
            // value and no CAS expected it, so a linearization with it can
            // drop it (failed CAS are not in the history).
            (Call::Cas { new, .. }, Outcome::Unknown) => observed.contains(&Some(new)),
            _ => true,
        })
        .map(|o| {
            let required = !matches!(o.outcome, Outcome::Unknown);
            Entry {
                op: o,
                invoke: o.invoke_ns,
                complete: if required { o.complete_ns } else { u64::MAX },
                required,
                prev_twin: None,
            }
        })
        .collect();
    entries.sort_by_key(|e| (e.invoke, e.complete));
    let mut last_twin: BTreeMap<CallKey, usize> = BTreeMap::new();
    for (i, e) in entries.iter_mut().enumerate() {
        if !e.required {
            e.prev_twin = last_twin.insert(CallKey::of(e.op.call), i);
        }
    }

    let (states_explored, verdict) = search(model, &entries, budget);
    Ok(KeyReport {
        key: key.into(),
        model,
        ops: ops.len(),
        unknown,
        failed,
        states_explored,
        verdict,
    })
}

/// `Call` as an ordered map key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum CallKey {
    Read,
    Write(i64),
    Cas(Option<i64>, i64),
    Increment(i64),
}

impl CallKey {
    fn of(c: Call) -> Self {
        match c {
            Call::Read => CallKey::Read,
            Call::Write { value } => CallKey::Write(value),
            Call::Cas { expected, new } => CallKey::Cas(expected, new),
            Call::Increment { by } => CallKey::Increment(by),
        }
    }
}

/// The model's successor states for `e` in `state`: empty if the model
/// rejects the operation with its observed outcome here.
fn step(model: Model, e: &Entry, state: State, out: &mut Vec<State>) {
    out.clear();
    let known = match e.op.outcome {
        Outcome::Ok { value } => Some(value),
        _ => None, // Unknown (Fail entries are filtered out)
    };
    match (model, e.op.call) {
        (Model::Register, Call::Read) if known == Some(state) => out.push(state),
        (Model::Register, Call::Write { value }) => out.push(Some(value)),
        // An Ok CAS succeeded, so the expectation held; an unknown CAS that
        // takes effect did so only if it held (if it did not, the CAS is a
        // no-op, equivalent to omitting it).
        (Model::Register, Call::Cas { expected, new }) if state == expected => out.push(Some(new)),
        (Model::Counter, Call::Read)
            if known.map(|v| v.unwrap_or(0)) == Some(state.unwrap_or(0)) =>
        {
            out.push(state)
        }
        (Model::Counter, Call::Increment { by }) => {
            let next = state.unwrap_or(0).checked_add(by);
            match known {
                Some(v) if v == next => out.push(next),
                Some(_) => {}
                None => {
                    if next.is_some() {
                        out.push(next)
                    }
                }
            }
        }
        // A rejected read or CAS; or a write/CAS on a counter key or an
        // increment on a register key, which cannot happen: `check_key`
        // picked the model from the calls.
        _ => {}
    }
}

/// Depth-first WGL search with an explicit stack. Returns (configurations
/// visited, verdict).
fn search(model: Model, entries: &[Entry], budget: u64) -> (u64, Verdict) {
    let n = entries.len();
    let words = n.div_ceil(64).max(1);
    let required_total = entries.iter().filter(|e| e.required).count();
    if required_total == 0 {
        return (1, Verdict::Linearizable);
    }

    struct Frame {
        lin: Vec<u64>,
        state: State,
        done: usize,
    }
    let is_set = |lin: &[u64], i: usize| lin[i / 64] >> (i % 64) & 1 == 1;

    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack = vec![Frame {
        lin: vec![0; words],
        state: None,
        done: 0,
    }];
    seen.insert((vec![0; words], None));
    let mut explored = 1u64;
    let mut deepest: (usize, Vec<u64>, State) = (0, vec![0; words], None);
    let mut succ = Vec::new();
    let mut cands = Vec::new();

    while let Some(f) = stack.pop() {
        if f.done > deepest.0 {
            deepest = (f.done, f.lin.clone(), f.state);
        }
        candidates(entries, &f.lin, &is_set, &mut cands);
        for &i in &cands {
            step(model, &entries[i], f.state, &mut succ);
            for &s in &succ {
                let mut lin = f.lin.clone();
                lin[i / 64] |= 1 << (i % 64);
                let done = f.done + usize::from(entries[i].required);
                if done == required_total {
                    return (explored + 1, Verdict::Linearizable);
                }
                if seen.insert((lin.clone(), s)) {
                    explored += 1;
                    if explored > budget {
                        return (explored, Verdict::TooLarge);
                    }
                    stack.push(Frame {
                        lin,
                        state: s,
                        done,
                    });
                }
            }
        }
    }

    let (done, lin, state) = deepest;
    candidates(entries, &lin, &is_set, &mut cands);
    let stuck = cands
        .iter()
        .filter(|&&i| entries[i].required)
        .map(|&i| entries[i].op.clone())
        .collect();
    let state = match (model, state) {
        (Model::Register, None) => "absent".to_string(),
        (Model::Register, Some(v)) => format!("value {v}"),
        (Model::Counter, v) => format!("count {}", v.unwrap_or(0)),
    };
    (
        explored,
        Verdict::NotLinearizable {
            deepest: done,
            stuck,
            state,
        },
    )
}

/// The operations that may be linearized next: not yet linearized, and no
/// unlinearized operation completed before they were invoked (ties are
/// concurrent). Entries are sorted by invocation, so the scan stops at the
/// first one invoked after the smallest pending completion.
fn candidates(
    entries: &[Entry],
    lin: &[u64],
    is_set: &dyn Fn(&[u64], usize) -> bool,
    out: &mut Vec<usize>,
) {
    out.clear();
    let mut min_complete = u64::MAX;
    for (i, e) in entries.iter().enumerate() {
        if is_set(lin, i) {
            continue;
        }
        if e.invoke > min_complete {
            break;
        }
        min_complete = min_complete.min(e.complete);
        if let Some(t) = e.prev_twin {
            if !is_set(lin, t) {
                continue;
            }
        }
        out.push(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u64, call: Call, inv: u64, done: u64, outcome: Outcome) -> Operation {
        Operation {
            client,
            key: "k".into(),
            call,
            invoke_ns: inv,
            complete_ns: done,
            outcome,
        }
    }
    fn ok(v: Option<i64>) -> Outcome {
        Outcome::Ok { value: v }
    }
    fn w(v: i64) -> Call {
        Call::Write { value: v }
    }
    fn lin(h: &[Operation]) -> bool {
        let r = check(h).unwrap();
        assert!(r.too_large().next().is_none(), "{r:?}");
        r.is_linearizable()
    }

    #[test]
    fn sequential_register() {
        let h = [
            op(1, Call::Read, 0, 1, ok(None)),
            op(1, w(1), 2, 3, ok(None)),
            op(1, Call::Read, 4, 5, ok(Some(1))),
        ];
        assert!(lin(&h));
    }

    #[test]
    fn stale_read_is_caught() {
        let h = [
            op(1, w(1), 0, 1, ok(None)),
            op(1, w(2), 2, 3, ok(None)),
            op(2, Call::Read, 4, 5, ok(Some(1))),
        ];
        assert!(!lin(&h));
        let r = check(&h).unwrap();
        let v = r.violations().next().unwrap();
        let Verdict::NotLinearizable { stuck, .. } = &v.verdict else {
            panic!()
        };
        assert_eq!(stuck[0].call, Call::Read);
    }

    #[test]
    fn unknown_write_may_be_omitted_or_applied_late() {
        // Unknown write of 2: a later read may see 1 (never happened) ...
        let mut h = vec![
            op(1, w(1), 0, 1, ok(None)),
            op(2, w(2), 2, 3, Outcome::Unknown),
            op(3, Call::Read, 10, 11, ok(Some(1))),
        ];
        assert!(lin(&h));
        // ... or 2, even long after the client gave up ...
        h.push(op(3, Call::Read, 20, 21, ok(Some(2))));
        assert!(lin(&h));
        // ... but not 1 again once 2 was seen.
        h.push(op(3, Call::Read, 30, 31, ok(Some(1))));
        assert!(!lin(&h));
    }

    #[test]
    fn unknown_write_cannot_take_effect_before_invocation() {
        let h = [
            op(1, w(1), 0, 1, ok(None)),
            op(3, Call::Read, 2, 3, ok(Some(2))),
            op(2, w(2), 5, 6, Outcome::Unknown),
        ];
        assert!(!lin(&h));
    }

    #[test]
    fn lost_acknowledged_write_is_caught() {
        let h = [
            op(1, w(1), 0, 1, ok(None)),
            op(2, w(2), 2, 3, ok(None)),
            op(1, Call::Read, 4, 5, ok(Some(1))),
        ];
        assert!(!lin(&h));
        // A read of "absent" after an acknowledged write: the write was lost.
        let h = [
            op(1, w(1), 0, 1, ok(None)),
            op(2, Call::Read, 2, 3, ok(None)),
        ];
        assert!(!lin(&h));
    }

    #[test]
    fn read_of_never_written_value_is_caught() {
        let h = [
            op(1, w(1), 0, 10, ok(None)),
            op(2, Call::Read, 1, 9, ok(Some(7))),
        ];
        assert!(!lin(&h));
    }

    #[test]
    fn concurrent_overlaps_are_fine() {
        // Two overlapping writes, reads overlapping them seeing both orders.
        let h = [
            op(1, w(1), 0, 10, ok(None)),
            op(2, w(2), 0, 10, ok(None)),
            op(3, Call::Read, 1, 5, ok(Some(2))),
            op(4, Call::Read, 6, 9, ok(Some(1))),
            op(3, Call::Read, 11, 12, ok(Some(1))),
        ];
        assert!(lin(&h));
        // But after both writes completed, readers must agree.
        let h = [
            op(1, w(1), 0, 10, ok(None)),
            op(2, w(2), 0, 10, ok(None)),
            op(3, Call::Read, 11, 12, ok(Some(1))),
            op(4, Call::Read, 13, 14, ok(Some(2))),
        ];
        assert!(!lin(&h));
    }

    #[test]
    fn cas() {
        let cas = |e: Option<i64>, n: i64| Call::Cas {
            expected: e,
            new: n,
        };
        let h = [
            op(1, cas(None, 1), 0, 1, ok(None)),
            op(2, cas(Some(1), 2), 2, 3, ok(None)),
            op(3, cas(Some(1), 3), 4, 5, Outcome::Fail),
            op(1, Call::Read, 6, 7, ok(Some(2))),
        ];
        assert!(lin(&h));
        // Two successful CAS from the same expectation: one must have failed.
        let h = [
            op(1, cas(None, 1), 0, 5, ok(None)),
            op(2, cas(None, 2), 0, 5, ok(None)),
        ];
        assert!(!lin(&h));
        // An unknown CAS that did happen (its value is read later).
        let h = [
            op(1, w(1), 0, 1, ok(None)),
            op(2, cas(Some(1), 5), 2, 3, Outcome::Unknown),
            op(3, Call::Read, 4, 5, ok(Some(5))),
        ];
        assert!(lin(&h));
        // An unknown CAS whose expectation never held cannot explain a read.
        let h = [
            op(1, w(1), 0, 1, ok(None)),
            op(2, cas(Some(9), 5), 2, 3, Outcome::Unknown),
            op(3, Call::Read, 4, 5, ok(Some(5))),
        ];
        assert!(!lin(&h));
    }

    #[test]
    fn counter() {
        let inc = Call::Increment { by: 1 };
        let h = [
            op(1, inc, 0, 10, ok(Some(2))),
            op(2, inc, 0, 10, ok(Some(1))),
            op(3, Call::Read, 11, 12, ok(Some(2))),
        ];
        assert!(lin(&h));
        // Non-monotonic: a read goes backwards.
        let h = [
            op(1, inc, 0, 1, ok(Some(1))),
            op(1, inc, 2, 3, ok(Some(2))),
            op(2, Call::Read, 4, 5, ok(Some(1))),
        ];
        assert!(!lin(&h));
        // Two increments both returning 1 (a lost increment).
        let h = [
            op(1, inc, 0, 10, ok(Some(1))),
            op(2, inc, 0, 10, ok(Some(1))),
        ];
        assert!(!lin(&h));
        // Unknown increments: any number of them may have happened, in
        // invocation order, each at most once.
        let mut h = vec![
            op(1, inc, 0, 1, Outcome::Unknown),
            op(2, inc, 0, 1, Outcome::Unknown),
            op(3, Call::Read, 5, 6, ok(Some(1))),
            op(3, Call::Read, 7, 8, ok(Some(2))),
        ];
        assert!(lin(&h));
        h.push(op(3, Call::Read, 9, 10, ok(Some(3))));
        assert!(!lin(&h));
    }

    #[test]
    fn many_unknown_increments_stay_cheap() {
        let inc = Call::Increment { by: 1 };
        let mut h: Vec<_> = (0..60)
            .map(|i| op(i % 8, inc, i, i + 1, Outcome::Unknown))
            .collect();
        h.push(op(9, Call::Read, 100, 101, ok(Some(37))));
        let r = check(&h).unwrap();
        assert!(r.is_linearizable(), "{r:?}");
        assert!(r.states_explored() < 10_000, "{}", r.states_explored());
    }

    #[test]
    fn budget_is_reported_not_guessed() {
        // 16 concurrent distinct writes and reads in an order needing search.
        let mut h: Vec<_> = (0..16)
            .map(|i| op(i, w(i as i64), 0, 100, ok(None)))
            .collect();
        h.push(op(20, Call::Read, 101, 102, ok(Some(99))));
        let r = check_with_budget(&h, 1_000).unwrap();
        assert_eq!(r.keys[0].verdict, Verdict::TooLarge);
    }

    #[test]
    fn malformed_histories_are_refused() {
        let h = [op(1, w(1), 5, 4, ok(None))];
        assert!(matches!(
            check(&h),
            Err(HistoryError::CompletesBeforeInvoke { .. })
        ));
        let h = [
            op(1, w(1), 0, 1, ok(None)),
            op(1, Call::Increment { by: 1 }, 2, 3, ok(Some(1))),
        ];
        assert!(matches!(check(&h), Err(HistoryError::MixedModel { .. })));
    }

    #[test]
    fn read_only_keys() {
        // An untouched counter reads 0; an untouched register reads absent.
        let h = [op(1, Call::Read, 0, 1, ok(Some(0)))];
        assert!(lin(&h));
        let h = [op(1, Call::Read, 0, 1, ok(None))];
        assert!(lin(&h));
        let h = [op(1, Call::Read, 0, 1, ok(Some(3)))];
        assert!(!lin(&h));
    }

    #[test]
    fn keys_are_independent() {
        let mut a = op(1, w(1), 0, 1, ok(None));
        a.key = "a".into();
        let mut b = op(2, Call::Read, 2, 3, ok(Some(1)));
        b.key = "b".into();
        let r = check(&[a, b]).unwrap();
        assert_eq!(r.keys.len(), 2);
        assert_eq!(r.violations().count(), 1);
        assert_eq!(r.violations().next().unwrap().key, "b");
    }
}
