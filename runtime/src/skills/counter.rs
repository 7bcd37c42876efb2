use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::skill::{MethodKind, MethodSpec, Skill, SkillError};

/// `counter`: a signed 64-bit counter.
///
/// - `incr {"by": n}` (default 1) → `{"value": v}`; overflow is an error.
/// - `get` → `{"value": v}`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counter;

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CounterState {
    pub value: i64,
}

const METHODS: &[MethodSpec] = &[
    MethodSpec {
        name: "incr",
        kind: MethodKind::Write,
    },
    MethodSpec {
        name: "get",
        kind: MethodKind::Read,
    },
];

impl Skill for Counter {
    type State = CounterState;

    fn name(&self) -> &'static str {
        "counter"
    }

    fn methods(&self) -> &'static [MethodSpec] {
        METHODS
    }

    fn handle(
        &self,
        state: &mut CounterState,
        method: &str,
        payload: &Value,
    ) -> Result<Value, SkillError> {
        match method {
            "incr" => {
                let by = match payload {
                    Value::Null => 1,
                    Value::Object(map) => match map.get("by") {
                        None => 1,
                        Some(v) => v
                            .as_i64()
                            .ok_or_else(|| SkillError::invalid("`by` must be a 64-bit integer"))?,
                    },
                    _ => {
                        return Err(SkillError::invalid(
                            "payload must be an object like {\"by\": 1}",
                        ))
                    }
                };
                state.value = state.value.checked_add(by).ok_or_else(|| {
                    SkillError::FailedPrecondition("counter would overflow".into())
                })?;
                Ok(json!({ "value": state.value }))
            }
            "get" => Ok(json!({ "value": state.value })),
            other => Err(SkillError::InvalidArgument(format!(
                "unknown method `{other}`"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incr_and_get() {
        let mut s = CounterState::default();
        assert_eq!(
            Counter.handle(&mut s, "incr", &json!({"by": 5})).unwrap(),
            json!({"value": 5})
        );
        assert_eq!(
            Counter.handle(&mut s, "incr", &Value::Null).unwrap(),
            json!({"value": 6})
        );
        assert_eq!(
            Counter.handle(&mut s, "get", &Value::Null).unwrap(),
            json!({"value": 6})
        );
    }

    #[test]
    fn bad_payloads_are_invalid_and_leave_state() {
        let mut s = CounterState { value: 3 };
        for bad in [
            json!({"by": "x"}),
            json!([1]),
            json!({"by": 1.5}),
            json!("by"),
        ] {
            assert!(matches!(
                Counter.handle(&mut s, "incr", &bad),
                Err(SkillError::InvalidArgument(_))
            ));
        }
        assert_eq!(s.value, 3);
    }

    #[test]
    fn overflow_is_a_precondition_failure() {
        let mut s = CounterState { value: i64::MAX };
        assert!(matches!(
            Counter.handle(&mut s, "incr", &json!({"by": 1})),
            Err(SkillError::FailedPrecondition(_))
        ));
    }
}
