use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::skill::{field, MethodKind, MethodSpec, Skill, SkillError};

/// `kv`: a versioned key-value map per instance. Values are any JSON.
///
/// - `put {"key": k, "value": v}` → `{"key": k, "version": n}`
/// - `get {"key": k}` → `{"key": k, "value": v|null, "version": n|0}`
/// - `delete {"key": k}` → `{"key": k, "deleted": bool}`
/// - `cas {"key": k, "expected": v|null, "value": w}` → as `put`; when the
///   current value differs from `expected`: FAILED_PRECONDITION.
/// - `list` → `{"keys": [...]}`
#[derive(Debug, Default, Clone, Copy)]
pub struct Kv;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub value: Value,
    /// Per-key version: 1 on first put, +1 on each later put.
    pub version: u64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct KvState {
    pub entries: BTreeMap<String, Entry>,
}

/// Longest key accepted; keys are for lookup, values carry the data.
pub const MAX_KEY_BYTES: usize = 1024;
/// Keys per instance; an instance is one actor's state and is rewritten as a
/// whole into every checkpoint, so it must stay small.
pub const MAX_KEYS: usize = 10_000;

const METHODS: &[MethodSpec] = &[
    MethodSpec {
        name: "put",
        kind: MethodKind::Write,
    },
    MethodSpec {
        name: "get",
        kind: MethodKind::Read,
    },
    MethodSpec {
        name: "delete",
        kind: MethodKind::Write,
    },
    MethodSpec {
        name: "cas",
        kind: MethodKind::Write,
    },
    MethodSpec {
        name: "list",
        kind: MethodKind::Read,
    },
];

fn key_of(payload: &Value) -> Result<&str, SkillError> {
    let key = field(payload, "key")?
        .as_str()
        .ok_or_else(|| SkillError::invalid("`key` must be a string"))?;
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(SkillError::InvalidArgument(format!(
            "`key` must be 1..={MAX_KEY_BYTES} bytes"
        )));
    }
    Ok(key)
}

fn put(state: &mut KvState, key: &str, value: Value) -> Result<Value, SkillError> {
    if !state.entries.contains_key(key) && state.entries.len() >= MAX_KEYS {
        return Err(SkillError::FailedPrecondition(format!(
            "instance holds the maximum of {MAX_KEYS} keys"
        )));
    }
    let entry = state.entries.entry(key.to_owned()).or_insert(Entry {
        value: Value::Null,
        version: 0,
    });
    entry.value = value;
    entry.version += 1;
    Ok(json!({ "key": key, "version": entry.version }))
}

impl Skill for Kv {
    type State = KvState;

    fn name(&self) -> &'static str {
        "kv"
    }

    fn methods(&self) -> &'static [MethodSpec] {
        METHODS
    }

    fn handle(
        &self,
        state: &mut KvState,
        method: &str,
        payload: &Value,
    ) -> Result<Value, SkillError> {
        match method {
            "put" => {
                let key = key_of(payload)?;
                let value = field(payload, "value")?.clone();
                put(state, key, value)
            }
            "get" => {
                let key = key_of(payload)?;
                Ok(match state.entries.get(key) {
                    Some(e) => json!({ "key": key, "value": e.value, "version": e.version }),
                    None => json!({ "key": key, "value": null, "version": 0 }),
                })
            }
            "delete" => {
                let key = key_of(payload)?;
                let deleted = state.entries.remove(key).is_some();
                Ok(json!({ "key": key, "deleted": deleted }))
            }
            "cas" => {
                let key = key_of(payload)?;
                let expected = field(payload, "expected")?;
                let value = field(payload, "value")?.clone();
                let current = state
                    .entries
                    .get(key)
                    .map(|e| &e.value)
                    .unwrap_or(&Value::Null);
                if current != expected {
                    return Err(SkillError::FailedPrecondition(format!(
                        "cas mismatch on `{key}`: current value is {current}"
                    )));
                }
                put(state, key, value)
            }
            "list" => Ok(json!({ "keys": state.entries.keys().collect::<Vec<_>>() })),
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
    fn put_get_delete() {
        let mut s = KvState::default();
        assert_eq!(
            Kv.handle(&mut s, "put", &json!({"key": "a", "value": 1}))
                .unwrap()["version"],
            1
        );
        assert_eq!(
            Kv.handle(&mut s, "put", &json!({"key": "a", "value": 2}))
                .unwrap()["version"],
            2
        );
        assert_eq!(
            Kv.handle(&mut s, "get", &json!({"key": "a"})).unwrap()["value"],
            2
        );
        assert_eq!(
            Kv.handle(&mut s, "delete", &json!({"key": "a"})).unwrap()["deleted"],
            true
        );
        assert_eq!(
            Kv.handle(&mut s, "get", &json!({"key": "a"})).unwrap()["value"],
            Value::Null
        );
    }

    #[test]
    fn cas_matches_and_mismatches() {
        let mut s = KvState::default();
        Kv.handle(
            &mut s,
            "cas",
            &json!({"key": "k", "expected": null, "value": "x"}),
        )
        .unwrap();
        let err = Kv.handle(
            &mut s,
            "cas",
            &json!({"key": "k", "expected": "y", "value": "z"}),
        );
        assert!(matches!(err, Err(SkillError::FailedPrecondition(_))));
        assert_eq!(s.entries["k"].value, json!("x"));
        Kv.handle(
            &mut s,
            "cas",
            &json!({"key": "k", "expected": "x", "value": "z"}),
        )
        .unwrap();
        assert_eq!(s.entries["k"].value, json!("z"));
    }

    #[test]
    fn bad_keys_rejected() {
        let mut s = KvState::default();
        for bad in [
            json!({}),
            json!({"key": 1, "value": 1}),
            json!({"key": "", "value": 1}),
            json!({"key": "k"}),
        ] {
            assert!(
                matches!(
                    Kv.handle(&mut s, "put", &bad),
                    Err(SkillError::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
        let long = "x".repeat(MAX_KEY_BYTES + 1);
        assert!(Kv
            .handle(&mut s, "put", &json!({"key": long, "value": 1}))
            .is_err());
        assert!(s.entries.is_empty());
    }
}
