//! Token text and token bytes through everything that parses them: the
//! guard's check, `inspect` (verified and not), and `attenuate` with
//! restrictions taken from the input. Property: a token attenuated from a
//! scoped token never allows a request the scoped token denies.
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use synapse_fuzz::{guard, root_key, scoped_token, split_ff};
use synapse_runtime::guard::{attenuate, inspect, GuardError, Operation, Request, Restriction};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let (token_part, fields) = split_ff(rest);
    // Bit 0: the token part is raw biscuit bytes (base64 them), so the
    // fuzzer mutates protobuf structure rather than base64 text.
    let token = if ctl & 1 == 1 {
        base64::engine::general_purpose::URL_SAFE.encode(token_part)
    } else {
        text(token_part)
    };
    let mut parts = fields.split(|&b| b == 0xfe).map(text);
    let skill = parts.next().unwrap_or_default();
    let instance = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    let operation = if ctl & 2 == 2 {
        Operation::Write
    } else {
        Operation::Read
    };
    let req = Request {
        skill: &skill,
        instance: &instance,
        method: &method,
        operation,
    };

    let _ = guard().check(Some(&token), &req);
    let _ = inspect(&token, None);
    let _ = inspect(&token, Some(&root_key().public_hex()));

    let restriction = Restriction {
        skill: (ctl & 4 == 4).then(|| skill.clone()),
        instance: (ctl & 8 == 8).then(|| instance.clone()),
        methods: (ctl & 16 == 16).then(|| vec![method.clone()]),
        read_only: ctl & 32 == 32,
        expires_at: None,
    };
    let _ = attenuate(&token, &restriction);

    // Narrowing: attenuate the scoped token with the fuzzed restriction and
    // ask for the fuzzed request.
    if let Ok(narrow) = attenuate(scoped_token(), &restriction) {
        let narrowed = guard().check(Some(&narrow), &req);
        let original = guard().check(Some(scoped_token()), &req);
        // A datalog evaluation that hit the guard's time backstop (a
        // descheduled thread on a loaded machine) is a transient deny, not
        // a verdict: only definite outcomes are compared.
        let transient = |r: &Result<_, GuardError>| matches!(r, Err(GuardError::Denied(m)) if m.contains("evaluation"));
        if !transient(&narrowed) && !transient(&original) {
            assert!(
                narrowed.is_err() || original.is_ok(),
                "attenuation widened the token: {req:?} with {restriction:?}"
            );
        }
    }
});
