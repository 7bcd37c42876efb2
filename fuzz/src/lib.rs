//! Shared pieces of the Synapse fuzz targets: a fixed cluster key and
//! guard, and the byte layouts the targets use to steer a fuzzer past the
//! integrity checks (hashes, checksums) into the parsers behind them.
//!
//! Owns: nothing the node runs; it only calls the decoders and validators
//! the node runs (`synapse_runtime::fuzzing`, `synapse_storage::fuzzing`).
//! Must never: reimplement a decoder, which would fuzz the copy.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};
use synapse_runtime::guard::{Grant, Guard, RootKey};

/// A fixed Ed25519 private key, so seeds minted by `examples/seeds.rs`
/// verify in the targets. Test material only.
pub const FUZZ_ROOT_KEY_HEX: &str =
    "4f0a1bfb8d2f6c4a9e3b7d1c2a5e8f6b0c3d9e7a1b4c6d8e0f2a3b5c7d9e1f20";

/// Guard cache size in the targets: small, so eviction paths run too.
const FUZZ_CACHE: usize = 64;

pub fn root_key() -> &'static RootKey {
    static KEY: OnceLock<RootKey> = OnceLock::new();
    KEY.get_or_init(|| RootKey::from_private_hex(FUZZ_ROOT_KEY_HEX).expect("fixed fuzz key"))
}

pub fn guard() -> &'static Guard {
    static GUARD: OnceLock<Guard> = OnceLock::new();
    GUARD.get_or_init(|| Guard::new(&root_key().public_hex(), FUZZ_CACHE).expect("guard"))
}

/// The scoped token the token target attenuates: attenuation of it may
/// never allow what it denies.
pub fn scoped_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        root_key()
            .mint(
                "fuzz",
                &[Grant {
                    skill: "counter".into(),
                    instance: "ali*".into(),
                    methods: vec!["get".into(), "incr".into()],
                    read_only: false,
                }],
                None,
            )
            .expect("mint scoped token")
    })
}

/// `body ++ SHA-256(body)`: the layout of checkpoint and audit records.
pub fn with_sha256(body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    out.extend_from_slice(&Sha256::digest(body));
    out
}

/// Splits `data` at the first `0xff` byte (a cheap field separator that a
/// fuzzer learns quickly).
pub fn split_ff(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// Request kinds of the `requests` target (first input byte).
pub mod kind {
    pub const INVOKE: u8 = 0;
    pub const GET_STATE: u8 = 1;
    pub const HISTORY: u8 = 2;
    pub const ROLLBACK: u8 = 3;
    pub const VERIFY: u8 = 4;
    pub const WATCH: u8 = 5;
    pub const ADD_MEMBER: u8 = 6;
    pub const MEMBER: u8 = 7;
    pub const REVOKE: u8 = 8;
    pub const AUDIT: u8 = 9;
    pub const FORWARD_INVOKE: u8 = 10;
    /// Length-delimited `RaftBatch` frames fed to one `FrameDecoder`.
    pub const RAFT_FRAMES: u8 = 11;
    pub const CLOCK_SAMPLE: u8 = 12;
    pub const FETCH_CHECKPOINT: u8 = 13;
    pub const COUNT: u8 = 14;
}
