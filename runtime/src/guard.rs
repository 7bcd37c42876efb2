//! Capability guard: biscuit (Ed25519) tokens that grant access to skills.
//!
//! Owns: the cluster root key file, minting tokens, offline attenuation,
//! human-readable inspection, and the per-request check
//! (principal, skill, instance, method, read/write) with its bounded caches.
//!
//! # Revocation and fencing
//!
//! Every block of a biscuit has a revocation id, and an attenuated token
//! carries all its parents' ids, so revoking a token's id also revokes every
//! token derived from it. The replicated revoked set ([`RevocationSet`]) is
//! shared with the state machine, which adds to it when a revocation entry
//! applies. The guard consults it on every uncached check, and a cached allow
//! is only served while the set's generation is the one it was decided
//! under, so a committed revocation takes effect at the next check (one
//! atomic load on the cached path). An allow returns a [`Fence`] (the token's
//! expiry and revocation ids) that writes carry into the Raft entry, so that
//! apply re-checks both deterministically (see `state_machine.rs`).
//!
//! # Delegation between skills
//!
//! Skills cannot call other skills: a handler gets its state and payload,
//! never the caller's token or any capability. So a skill never receives a
//! capability it could pass on, and cannot widen one. Delegation happens
//! only between holders, offline, with [`attenuate`], which can only narrow.
//!
//! Must never: panic on any token text, let a block appended by a holder widen
//! what the authority block grants, cache a deny as an allow, hold a cached
//! allow longer than [`DECISION_TTL`] or past the token's expiry, grow a
//! cache past its capacity, or log the private key.
//!
//! # Datalog
//!
//! Authority block (minted by a node, trusted):
//! ```text
//! principal("alice");
//! grant("counter", "prefix", "ali", {"get", "increment"}, false);   // skill, instance mode, instance value, methods, read_only
//! grant("*", "any", "", {"*"}, true);
//! check if time($t), $t <= 2030-01-01T00:00:00Z;                    // only if an expiry is given
//! ```
//! Skill is `"*"` or an exact name. Instance mode is `"any"` (pattern `*`),
//! `"exact"`, or `"prefix"` (pattern `abc*`). Methods `{"*"}` means any method
//! (an empty list at mint time becomes `{"*"}`).
//!
//! Attenuation blocks (appended by a holder, checks only):
//! ```text
//! check if skill("counter");
//! check if instance("alice");                       // exact, or:
//! check if instance($i), $i.starts_with("ali");     // prefix
//! check if method($m), {"get"}.contains($m);
//! check if operation("read");                       // read-only
//! check if time($t), $t <= 2029-01-01T00:00:00Z;
//! ```
//!
//! Authorizer (per request):
//! ```text
//! skill("counter"); instance("alice"); method("get"); operation("read"); time(2026-…);
//! allow if skill($s), instance($i), method($m), operation($op),
//!   grant($gs, $gmode, $gi, $gm, $ro), …pattern match… ;
//! ```
//! Policies and rules in the authorizer trust only the authority block and
//! the authorizer (biscuit's default scope), so `grant` or `principal` facts
//! in appended blocks are invisible to them: attenuation can only narrow.

use std::collections::HashSet;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use biscuit_auth::builder::{fact, string, Algorithm, Binary, Op, Term};
use biscuit_auth::error::{FailedCheck, Format, Logic, RunLimit, Token as TokenError};
use biscuit_auth::{
    AuthorizerBuilder, AuthorizerLimits, Biscuit, BlockBuilder, KeyPair, PrivateKey, PublicKey,
    UnverifiedBiscuit,
};
use sha2::{Digest, Sha256};

/// Largest accepted token text. A minted token is ~300 bytes and each
/// attenuation block adds ~150–300, so 16 KiB leaves room for dozens of
/// blocks while bounding the parse/verify work an unauthenticated caller can
/// demand and the memory one cached token can take.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// How long a cached allow stays valid at most. An allow does not depend
/// on time except through the token's expiry: `check_shape` admits only
/// tokens whose every check on `time` is an expiry (`time($t), $t <= D`),
/// and the allow policy never reads `time`. So a cached allow is re-checked
/// against the token's expiry on every hit ([`Fence`]) and would stay right
/// until then; the TTL only bounds how long a mistake in that reasoning
/// could be served. It used to be 1 s, which made every (token, instance,
/// method) triple pay a full datalog authorization (~50 µs) every second:
/// about a fifth of a leader's CPU under a write load over 1 000 instances.
/// The apply path still re-checks expiry and revocation (fencing).
pub const DECISION_TTL: Duration = Duration::from_secs(60);

/// Decision-cache entries per token-cache entry. A token usually addresses a
/// handful of (instance, method) pairs; 4× keeps that hot set while memory
/// stays bounded (one entry is a 32-byte key plus the principal).
const DECISIONS_PER_TOKEN: usize = 4;

/// Datalog evaluation limits for one authorization. Our own datalog needs a
/// few facts and one iteration. Biscuit checks these limits only between
/// iterations, so the real bound on hostile appended blocks is structural
/// (see `check_shape`); the time limit is a backstop, set far above a normal
/// evaluation (~10–50 µs) so a descheduled thread on a busy 2-vCPU node does
/// not turn a legitimate request into a spurious deny. 50 ms was not far
/// enough: the denial matrix saw the root token denied ("token exceeds
/// evaluation limits") on a debug build at load average ~14 on 2 vCPUs, so
/// the backstop is 1 s; the structural bound still caps the real work.
const MAX_FACTS: u64 = 1_000;
const MAX_ITERATIONS: u64 = 100;
const MAX_EVAL_TIME: Duration = Duration::from_secs(1);

/// Most predicates one check query in a token may join. Our checks use one
/// (`check if time($t), $t <= …` is one predicate plus an expression); two
/// leaves room for hand-written attenuation such as
/// `check if method($m), operation($o), …` while keeping the cost of a check
/// at most quadratic in the (size-bounded) number of facts.
const MAX_CHECK_PREDICATES: usize = 2;

/// The allow policy; see the module docs. `$gm.contains("*")` encodes "any
/// method"; `!$ro || $op == "read"` enforces read-only grants.
const ALLOW_POLICY: &str = r#"allow if
    skill($s), instance($i), method($m), operation($op),
    grant($gs, $gmode, $gi, $gm, $ro),
    $gs == "*" || $gs == $s,
    $gmode == "any" || ($gmode == "exact" && $i == $gi) || ($gmode == "prefix" && $i.starts_with($gi)),
    $gm.contains("*") || $gm.contains($m),
    !$ro || $op == "read""#;

/// A grant in a token's authority block.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    /// `"*"` or an exact skill name.
    pub skill: String,
    /// `"*"`, an exact instance, or a prefix pattern `"abc*"`.
    pub instance: String,
    /// Allowed methods; empty (or containing `"*"`) means any method.
    pub methods: Vec<String>,
    /// Only `Operation::Read` requests are allowed.
    pub read_only: bool,
}

/// Narrowing applied by [`attenuate`]. `None`/`false` fields add no check.
#[derive(Clone, Debug, Default)]
pub struct Restriction {
    /// Exact skill (`"*"` adds no check).
    pub skill: Option<String>,
    /// Exact instance or prefix pattern `"abc*"` (`"*"` adds no check).
    pub instance: Option<String>,
    /// Allowed methods (empty or containing `"*"` adds no check, as in [`Grant`]).
    pub methods: Option<Vec<String>>,
    pub read_only: bool,
    pub expires_at: Option<SystemTime>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    Read,
    Write,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub skill: &'a str,
    pub instance: &'a str,
    pub method: &'a str,
    pub operation: Operation,
}

impl fmt::Display for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{}.{}",
            self.operation.as_str(),
            self.skill,
            self.instance,
            self.method
        )
    }
}

/// Outcome of a successful check (denials are `Err`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub principal: String,
    /// Human text for the audit log.
    pub reason: String,
    /// What apply must re-check for a write made with this token.
    pub fence: Arc<Fence>,
}

/// What the apply path re-checks for a write (fencing): a client may pause
/// between the guard's check (cached or not) and the commit, so expiry and
/// revocation are checked again against the entry's own HLC timestamp and
/// the revocations applied before it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fence {
    /// Earliest expiry over all blocks, in Unix seconds (biscuit dates have
    /// one-second granularity). The token is valid while
    /// `floor(now) <= expires_at_secs`, exactly as the guard's datalog.
    pub expires_at_secs: Option<u64>,
    /// The token's revocation ids, authority block first.
    pub revocation_ids: Vec<Vec<u8>>,
}

impl Fence {
    /// Whether the token had expired at `physical_micros` (Unix µs).
    pub fn expired_at(&self, physical_micros: u64) -> bool {
        self.expires_at_secs
            .is_some_and(|exp| physical_micros / 1_000_000 > exp)
    }

    /// [`Fence::expired_at`] for a wall-clock time (the guard's clock).
    /// Before 1970 counts as not expired, as the guard's datalog sees it.
    pub fn expired_at_time(&self, now: SystemTime) -> bool {
        let micros = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        self.expired_at(micros)
    }
}

/// Most distinct revoked ids a cluster keeps. Revocations are permanent and
/// every node holds the whole set in memory and in every snapshot; 100 000
/// ids × ~100 bytes ≈ 10 MB per node is the budget. Mint short-lived tokens
/// rather than revoking at scale; a full set answers RESOURCE_EXHAUSTED.
pub const MAX_REVOCATIONS: usize = 100_000;

/// The replicated set of revoked ids, in memory on every node. Written only
/// by the state machine (apply, snapshot install, start-up load); read by
/// the guard on every uncached check and by apply for fencing.
#[derive(Default)]
pub struct RevocationSet {
    ids: RwLock<HashSet<Vec<u8>>>,
    /// Bumped after every change, so cached allows decided under an older
    /// set are not served.
    generation: AtomicU64,
}

impl fmt::Debug for RevocationSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationSet")
            .field("len", &self.len())
            .field("generation", &self.generation())
            .finish()
    }
}

impl RevocationSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds ids (insert first, then bump the generation: a concurrent check
    /// that read the old generation cannot cache an allow past the bump).
    pub fn insert_all<'a>(&self, ids: impl IntoIterator<Item = &'a [u8]>) {
        {
            let mut set = self.ids.write().unwrap_or_else(|e| e.into_inner());
            for id in ids {
                set.insert(id.to_vec());
            }
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Replaces the whole set (start-up, snapshot install).
    pub fn replace<'a>(&self, ids: impl IntoIterator<Item = &'a [u8]>) {
        {
            let mut set = self.ids.write().unwrap_or_else(|e| e.into_inner());
            set.clear();
            for id in ids {
                set.insert(id.to_vec());
            }
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn contains(&self, id: &[u8]) -> bool {
        self.ids
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    /// Whether any of `ids` is revoked (one lock for all of them).
    pub fn any_revoked(&self, ids: &[Vec<u8>]) -> bool {
        let set = self.ids.read().unwrap_or_else(|e| e.into_inner());
        ids.iter().any(|id| set.contains(id.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.ids.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// → UNAUTHENTICATED
    #[error("missing capability token")]
    Missing,
    /// → UNAUTHENTICATED
    #[error("malformed capability token: {0}")]
    Malformed(String),
    /// → UNAUTHENTICATED
    #[error("capability token not signed by this cluster's root key")]
    BadSignature,
    /// → PERMISSION_DENIED
    #[error("capability expired")]
    Expired,
    /// → PERMISSION_DENIED
    #[error("capability does not allow {0}")]
    Denied(String),
    /// → PERMISSION_DENIED
    #[error("capability revoked")]
    Revoked,
    /// → UNAVAILABLE: evaluation ran out of its time budget (a loaded
    /// machine, not a property of the token), so the caller should retry.
    /// Never cached.
    #[error("capability check timed out under load: {0}; retry")]
    Busy(String),
    #[error("key error: {0}")]
    Key(String),
}

/// The cluster root key pair (Ed25519). Stored as a file holding the hex
/// private key, mode 0600.
pub struct RootKey {
    keypair: KeyPair,
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the private half.
        f.debug_struct("RootKey")
            .field("public", &self.public_hex())
            .finish_non_exhaustive()
    }
}

impl RootKey {
    pub fn generate() -> RootKey {
        RootKey {
            keypair: KeyPair::new_with_algorithm(Algorithm::Ed25519),
        }
    }

    pub fn from_private_hex(s: &str) -> Result<RootKey, GuardError> {
        let private = PrivateKey::from_bytes_hex(s.trim(), Algorithm::Ed25519)
            .map_err(|e| GuardError::Key(format!("invalid Ed25519 private key hex: {e}")))?;
        Ok(RootKey {
            keypair: KeyPair::from(&private),
        })
    }

    pub fn to_private_hex(&self) -> String {
        self.keypair.private().to_bytes_hex()
    }

    pub fn public_hex(&self) -> String {
        self.keypair.public().to_bytes_hex()
    }

    /// Loads `path`, or creates it (mode 0600, `create_new`) with a fresh key
    /// if absent. If another process creates it concurrently, its key wins.
    pub fn load_or_create(path: &Path) -> Result<RootKey, GuardError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                warn_if_readable_by_others(path);
                return RootKey::from_private_hex(&text)
                    .map_err(|e| GuardError::Key(format!("{}: {e}", path.display())));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(GuardError::Key(format!("reading {}: {e}", path.display())));
            }
        }
        let key = RootKey::generate();
        match write_new_secret(path, &key.to_private_hex()) {
            Ok(()) => {
                tracing::info!(path = %path.display(), public = %key.public_hex(), "created cluster root key");
                Ok(key)
            }
            // Lost a creation race: use the winner's key.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| GuardError::Key(format!("reading {}: {e}", path.display())))?;
                RootKey::from_private_hex(&text)
            }
            Err(e) => Err(GuardError::Key(format!("creating {}: {e}", path.display()))),
        }
    }

    /// Mints a token: authority block with the principal, the grants and, if
    /// given, an expiry. Returns URL-safe base64 (biscuit's `to_base64`).
    ///
    /// Expiry has one-second granularity (biscuit dates), rounded down, so a
    /// token never outlives the requested instant.
    pub fn mint(
        &self,
        principal: &str,
        grants: &[Grant],
        expires_at: Option<SystemTime>,
    ) -> Result<String, GuardError> {
        if principal.is_empty() {
            return Err(GuardError::Malformed("principal must not be empty".into()));
        }
        if grants.is_empty() {
            return Err(GuardError::Malformed(
                "a token needs at least one grant".into(),
            ));
        }
        let mut builder = Biscuit::builder()
            .fact(fact("principal", &[string(principal)]))
            .map_err(datalog_err)?;
        for g in grants {
            let skill = parse_skill_pattern(&g.skill)?;
            let (mode, value) = parse_instance_pattern(&g.instance)?;
            let methods = method_set(&g.methods)?.unwrap_or_else(|| {
                // "any method" is the set {"*"}: an empty set literal is not
                // expressible in every datalog version a verifier may run.
                BTreeSet::from([Term::Str("*".into())])
            });
            builder = builder
                .fact(fact(
                    "grant",
                    &[
                        string(skill.unwrap_or("*")),
                        string(mode.as_str()),
                        string(value),
                        Term::Set(methods),
                        Term::Bool(g.read_only),
                    ],
                ))
                .map_err(datalog_err)?;
        }
        if let Some(at) = expires_at {
            builder = builder
                .code_with_params(EXPIRY_CHECK, expiry_params(at), HashMap::new())
                .map_err(datalog_err)?;
        }
        let token = builder.build(&self.keypair).map_err(datalog_err)?;
        token.to_base64().map_err(datalog_err)
    }
}

/// Offline attenuation: needs no key, does not verify the signature (the
/// verifier will). Returns a new base64 token with one appended block.
pub fn attenuate(token_b64: &str, r: &Restriction) -> Result<String, GuardError> {
    let text = bounded_text(token_b64)?;
    let token = UnverifiedBiscuit::from_base64(text).map_err(parse_err)?;

    let mut checks: Vec<&str> = Vec::new();
    let mut params: HashMap<String, Term> = HashMap::new();
    if let Some(skill) = &r.skill {
        if let Some(s) = parse_skill_pattern(skill)? {
            checks.push("check if skill({skill})");
            params.insert("skill".into(), string(s));
        }
    }
    if let Some(instance) = &r.instance {
        match parse_instance_pattern(instance)? {
            (InstanceMode::Any, _) => {}
            (InstanceMode::Exact, v) => {
                checks.push("check if instance({instance})");
                params.insert("instance".into(), string(v));
            }
            (InstanceMode::Prefix, v) => {
                checks.push("check if instance($i), $i.starts_with({instance})");
                params.insert("instance".into(), string(v));
            }
        }
    }
    if let Some(methods) = &r.methods {
        if let Some(set) = method_set(methods)? {
            checks.push("check if method($m), {methods}.contains($m)");
            params.insert("methods".into(), Term::Set(set));
        }
    }
    if r.read_only {
        checks.push(r#"check if operation("read")"#);
    }
    if let Some(at) = r.expires_at {
        checks.push(EXPIRY_CHECK);
        params.extend(expiry_params(at));
    }
    let source = checks.join(";\n") + ";";
    let block = if checks.is_empty() {
        BlockBuilder::new()
    } else {
        BlockBuilder::new()
            .code_with_params(source, params, HashMap::new())
            .map_err(datalog_err)?
    };
    let appended = token.append(block).map_err(parse_err)?;
    appended.to_base64().map_err(datalog_err)
}

/// Human-readable dump of a token's blocks (datalog source and revocation
/// ids), for `synapse token inspect`. Verifies the signature only if a root
/// public key is given, and says which.
pub fn inspect(token_b64: &str, root_public_hex: Option<&str>) -> Result<String, GuardError> {
    use std::fmt::Write as _;
    let text = bounded_text(token_b64)?;
    let (blocks, revocation_ids, header) = match root_public_hex {
        Some(hex) => {
            let root = parse_public(hex)?;
            let token = Biscuit::from_base64(text, root).map_err(parse_err)?;
            let blocks = (0..token.block_count())
                .map(|i| token.print_block_source(i))
                .collect::<Result<Vec<_>, _>>()
                .map_err(parse_err)?;
            (
                blocks,
                token.revocation_identifiers(),
                format!("signature: verified with root key {}", hex.trim()),
            )
        }
        None => {
            let token = UnverifiedBiscuit::from_base64(text).map_err(parse_err)?;
            let blocks = (0..token.block_count())
                .map(|i| token.print_block_source(i))
                .collect::<Result<Vec<_>, _>>()
                .map_err(parse_err)?;
            (
                blocks,
                token.revocation_identifiers(),
                "signature: NOT verified (no root public key given)".to_string(),
            )
        }
    };
    let mut out = header;
    for (i, source) in blocks.iter().enumerate() {
        let label = if i == 0 { " (authority)" } else { "" };
        let rid = revocation_ids
            .get(i)
            .map(hex::encode)
            .unwrap_or_else(|| "?".into());
        let _ = write!(out, "\n\nblock {i}{label}, revocation id {rid}:");
        for line in source.lines() {
            let _ = write!(out, "\n  {line}");
        }
    }
    Ok(out)
}

type TimeSource = Arc<dyn Fn() -> SystemTime + Send + Sync>;
type Hash32 = [u8; 32];

/// A token whose signature chain verified against the root key.
struct VerifiedToken {
    biscuit: Biscuit,
    principal: String,
    fence: Arc<Fence>,
    /// Whether an allow can depend on the instance name (see
    /// [`TokenShape::instance_scoped`]); when not, one cached decision
    /// serves every instance.
    instance_scoped: bool,
}

/// Why a token text can never verify. Deterministic for a given text and
/// root key, so it can be cached without expiry.
#[derive(Clone)]
enum Rejection {
    Malformed(String),
    BadSignature,
}

impl Rejection {
    fn to_error(&self) -> GuardError {
        match self {
            Rejection::Malformed(m) => GuardError::Malformed(m.clone()),
            Rejection::BadSignature => GuardError::BadSignature,
        }
    }
}

#[derive(Clone)]
struct CachedAllow {
    principal: String,
    decided_at: SystemTime,
    /// `RevocationSet::generation` when decided; a different one means a
    /// revocation applied since, so the entry is not served.
    revocation_generation: u64,
    fence: Arc<Fence>,
}

/// Verifies tokens against the cluster's public root key, with bounded
/// caches: verified tokens and rejected texts per SHA-256 of the text, and
/// allow decisions per (token, request) for at most [`DECISION_TTL`].
pub struct Guard {
    root: PublicKey,
    /// Policy and limits parsed once; cloned per authorization.
    template: AuthorizerBuilder,
    tokens: Mutex<ClockCache<Hash32, Arc<VerifiedToken>>>,
    rejected: Mutex<ClockCache<Hash32, Rejection>>,
    decisions: Mutex<ClockCache<Hash32, CachedAllow>>,
    hits: AtomicU64,
    now: TimeSource,
    revoked: Arc<RevocationSet>,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("root", &self.root.to_bytes_hex())
            .field("cache_len", &self.cache_len())
            .field("cache_hits", &self.cache_hits())
            .finish_non_exhaustive()
    }
}

impl Guard {
    /// `cache_capacity` bounds the verified-token cache and the rejected-text
    /// cache; the decision cache holds `DECISIONS_PER_TOKEN` × that. 0
    /// disables caching.
    pub fn new(root_public_hex: &str, cache_capacity: usize) -> Result<Guard, GuardError> {
        let root = parse_public(root_public_hex)?;
        let template = AuthorizerBuilder::new()
            .policy(ALLOW_POLICY)
            .map_err(datalog_err)?
            .set_limits(eval_limits());
        Ok(Guard {
            root,
            template,
            tokens: Mutex::new(ClockCache::new(cache_capacity)),
            rejected: Mutex::new(ClockCache::new(cache_capacity)),
            decisions: Mutex::new(ClockCache::new(
                cache_capacity.saturating_mul(DECISIONS_PER_TOKEN),
            )),
            hits: AtomicU64::new(0),
            now: Arc::new(SystemTime::now),
            revoked: Arc::new(RevocationSet::new()),
        })
    }

    /// Shares the node's replicated revoked set with this guard.
    pub fn with_revocations(mut self, revoked: Arc<RevocationSet>) -> Guard {
        self.revoked = revoked;
        self
    }

    pub fn revocations(&self) -> &Arc<RevocationSet> {
        &self.revoked
    }

    /// Revocation ids of `token`, after verifying that this cluster's root
    /// key signed it (so nobody can fill the revoked set with garbage).
    /// Does not authorize anything and ignores expiry: an expired token may
    /// still be revoked.
    pub fn revocation_ids_of(&self, token: &str) -> Result<Vec<Vec<u8>>, GuardError> {
        let text = bounded_text(token.trim())?;
        let biscuit = Biscuit::from_base64(text, self.root).map_err(parse_err)?;
        Ok(biscuit.revocation_identifiers())
    }

    /// Replaces the source of "now" used for the `time` fact and for the
    /// decision TTL (tests; a node could pass its offset-corrected clock).
    pub fn with_time_source(
        mut self,
        now: impl Fn() -> SystemTime + Send + Sync + 'static,
    ) -> Guard {
        self.now = Arc::new(now);
        self
    }

    /// Checks `token` (base64 text; `None` or empty = missing) for `req`.
    /// Returns the allow decision with the principal; every failure is an
    /// `Err` (see [`GuardError`] for the status mapping). Never panics.
    pub fn check(&self, token: Option<&str>, req: &Request<'_>) -> Result<Decision, GuardError> {
        let text = match token.map(str::trim) {
            None | Some("") => return Err(GuardError::Missing),
            Some(t) => t,
        };
        let text = bounded_text(text)?;
        let token_hash: Hash32 = Sha256::digest(text.as_bytes()).into();
        let now = (self.now)();

        // Read before the revoked set: an allow decided under this
        // generation is cached with it and dropped once it changes.
        let generation = self.revoked.generation();
        let cached_token = lock(&self.tokens).get(&token_hash).cloned();
        let mut key = None;
        if let Some(token) = &cached_token {
            let k = *key.insert(decision_key(&token_hash, req, token.instance_scoped));
            if let Some(hit) = lock(&self.decisions).get(&k).cloned() {
                // `duration_since` fails if the clock went backwards: treat
                // as stale rather than extending the entry's life.
                let fresh = now
                    .duration_since(hit.decided_at)
                    .is_ok_and(|age| age < DECISION_TTL);
                if fresh
                    && hit.revocation_generation == generation
                    && !hit.fence.expired_at_time(now)
                {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(Decision {
                        allowed: true,
                        principal: hit.principal,
                        reason: "allowed (cached decision)".into(),
                        fence: hit.fence,
                    });
                }
            }
        }

        let verified = match cached_token {
            Some(token) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                token
            }
            None => self.verified(text, &token_hash)?,
        };
        if self.revoked.any_revoked(&verified.fence.revocation_ids) {
            tracing::debug!(principal = %verified.principal, request = %req, "capability revoked");
            return Err(GuardError::Revoked);
        }
        // Computed above when the token was cached; a fresh token has none.
        let key = key.unwrap_or_else(|| decision_key(&token_hash, req, verified.instance_scoped));
        let result = self.authorize(&verified, req, now);
        match &result {
            Ok(_) => {
                lock(&self.decisions).insert(
                    key,
                    CachedAllow {
                        principal: verified.principal.clone(),
                        decided_at: now,
                        revocation_generation: generation,
                        fence: verified.fence.clone(),
                    },
                );
                tracing::debug!(principal = %verified.principal, request = %req, "capability allowed");
            }
            Err(e) => {
                tracing::debug!(principal = %verified.principal, request = %req, error = %e, "capability denied");
            }
        }
        result
    }

    /// Principal of a token whose signature verified earlier (from the
    /// verified-token cache), for auditing denials of valid tokens (revoked,
    /// expired, out of scope). `None` if not cached or never verified. Only
    /// called on the deny path, so it costs the allow path nothing.
    pub fn cached_principal(&self, token: Option<&str>) -> Option<String> {
        let text = token.map(str::trim).filter(|t| !t.is_empty())?;
        let hash: Hash32 = Sha256::digest(text.as_bytes()).into();
        lock(&self.tokens).get(&hash).map(|t| t.principal.clone())
    }

    /// Number of verified tokens cached.
    pub fn cache_len(&self) -> usize {
        lock(&self.tokens).len()
    }

    /// Hits on any of the caches (decision, verified token, rejected text).
    pub fn cache_hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Parsed and signature-verified token, from cache or freshly verified.
    fn verified(&self, text: &str, token_hash: &Hash32) -> Result<Arc<VerifiedToken>, GuardError> {
        if let Some(t) = lock(&self.tokens).get(token_hash).cloned() {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(t);
        }
        if let Some(r) = lock(&self.rejected).get(token_hash).cloned() {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Err(r.to_error());
        }
        // Verify outside any lock: this is the ~100 µs part.
        match verify(text, self.root) {
            Ok(t) => {
                let t = Arc::new(t);
                lock(&self.tokens).insert(*token_hash, t.clone());
                Ok(t)
            }
            Err(VerifyError::Permanent(rejection)) => {
                lock(&self.rejected).insert(*token_hash, rejection.clone());
                Err(rejection.to_error())
            }
            Err(VerifyError::Transient(e)) => Err(e),
        }
    }

    fn authorize(
        &self,
        token: &VerifiedToken,
        req: &Request<'_>,
        now: SystemTime,
    ) -> Result<Decision, GuardError> {
        let built = self
            .template
            .clone()
            .fact(fact("skill", &[string(req.skill)]))
            .and_then(|b| b.fact(fact("instance", &[string(req.instance)])))
            .and_then(|b| b.fact(fact("method", &[string(req.method)])))
            .and_then(|b| b.fact(fact("operation", &[string(req.operation.as_str())])))
            .and_then(|b| b.fact(fact("time", &[date_term(now)])))
            .and_then(|b| b.build(&token.biscuit));
        let mut authorizer = match built {
            Ok(a) => a,
            Err(e) => return Err(deny_reason(req, e)),
        };
        match authorizer.authorize() {
            Ok(_) => Ok(Decision {
                allowed: true,
                principal: token.principal.clone(),
                reason: "allowed by grant".into(),
                fence: token.fence.clone(),
            }),
            Err(e) => Err(deny_reason(req, e)),
        }
    }
}

/// Maps an authorization failure to Expired or Denied with a reason naming
/// the dimension(s) out of scope.
fn deny_reason(req: &Request<'_>, e: TokenError) -> GuardError {
    let checks = match &e {
        TokenError::FailedLogic(Logic::Unauthorized { checks, .. })
        | TokenError::FailedLogic(Logic::NoMatchingPolicy { checks }) => checks.as_slice(),
        TokenError::RunLimit(RunLimit::Timeout) => return GuardError::Busy(format!("{req}")),
        TokenError::RunLimit(_) => {
            return GuardError::Denied(format!("{req} (token exceeds evaluation limits)"))
        }
        other => return GuardError::Denied(format!("{req} ({other})")),
    };
    let rules: Vec<&str> = checks
        .iter()
        .map(|c| match c {
            FailedCheck::Block(b) => b.rule.as_str(),
            FailedCheck::Authorizer(a) => a.rule.as_str(),
        })
        .collect();
    // Expiry checks are the only ones we write that read `time`.
    if rules.iter().any(|r| r.starts_with("check if time(")) {
        return GuardError::Expired;
    }
    if rules.is_empty() {
        return GuardError::Denied(format!("{req} (no grant matches)"));
    }
    let mut dims: Vec<&str> = Vec::new();
    for r in &rules {
        let dim = if r.contains("skill(") {
            "skill"
        } else if r.contains("instance(") {
            "instance"
        } else if r.contains("method(") {
            "method"
        } else if r.contains("operation(") {
            "read-only"
        } else {
            "restriction"
        };
        if !dims.contains(&dim) {
            dims.push(dim);
        }
    }
    GuardError::Denied(format!("{req} (out of scope: {})", dims.join(", ")))
}

/// Why verification failed: a permanent rejection (cacheable) or a transient
/// one (evaluation timeout under load) that must not be cached.
enum VerifyError {
    Permanent(Rejection),
    Transient(GuardError),
}

fn verify(text: &str, root: PublicKey) -> Result<VerifiedToken, VerifyError> {
    let biscuit = Biscuit::from_base64(text, root).map_err(|e| {
        VerifyError::Permanent(match parse_err(e) {
            GuardError::BadSignature => Rejection::BadSignature,
            other => Rejection::Malformed(other.to_string()),
        })
    })?;
    // The principal comes from the authority block only: authorizer queries
    // trust the authority block and the authorizer, not appended blocks.
    // Appended blocks' rules still run, hence our limits.
    let mut authorizer = AuthorizerBuilder::new()
        .set_limits(eval_limits())
        .build(&biscuit)
        .map_err(|e| VerifyError::Permanent(Rejection::Malformed(e.to_string())))?;
    let shape = check_shape(&authorizer).map_err(VerifyError::Permanent)?;
    let principals: Vec<(String,)> =
        authorizer
            .query("p($p) <- principal($p)")
            .map_err(|e| match e {
                TokenError::RunLimit(RunLimit::Timeout) => {
                    VerifyError::Transient(GuardError::Busy("reading the principal".into()))
                }
                e => {
                    VerifyError::Permanent(Rejection::Malformed(format!("reading principal: {e}")))
                }
            })?;
    match principals.as_slice() {
        [(p,)] => Ok(VerifiedToken {
            fence: Arc::new(Fence {
                expires_at_secs: shape.expires_at_secs,
                revocation_ids: biscuit.revocation_identifiers(),
            }),
            biscuit,
            principal: p.clone(),
            instance_scoped: shape.instance_scoped,
        }),
        [] => Err(VerifyError::Permanent(Rejection::Malformed(
            "token names no principal".into(),
        ))),
        _ => Err(VerifyError::Permanent(Rejection::Malformed(
            "token names several principals".into(),
        ))),
    }
}

/// What [`check_shape`] learns about an accepted token.
struct TokenShape {
    /// The earliest expiry: the smallest date `D` of any check
    /// `time($t), $t <= D` (or `< D`, counted as `D - 1`) in any block.
    expires_at_secs: Option<u64>,
    /// Whether an allow may depend on the instance name: some `grant` fact
    /// does not have instance mode `"any"`, or some check reads the
    /// `instance` fact. Conservative: `grant` facts in appended blocks,
    /// which the policy ignores, still count.
    instance_scoped: bool,
}

/// Rejects token shapes whose evaluation cost is not bounded by biscuit's
/// run limits. Those limits are checked only *between* iterations, so one
/// rule (`p($x,$y,$z) <- a($x), a($y), a($z)`) or one multi-way join in a
/// check can explode within a single step. Tokens we mint and attenuate
/// contain no rules and single-predicate checks, so we require exactly that
/// shape; this runs before any datalog is evaluated.
///
/// Also returns the token's [`TokenShape`]. Every other time condition is
/// refused, so an allow depends on time only through the expiry.
fn check_shape(authorizer: &biscuit_auth::Authorizer) -> Result<TokenShape, Rejection> {
    // `dump` converts the already-deserialized blocks back to builder terms;
    // it unwraps internally on symbol lookups that verification has already
    // validated. Contain it anyway so no token text can panic the caller.
    let dumped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| authorizer.dump()))
        .map_err(|_| Rejection::Malformed("token content could not be read".into()))?;
    let (facts, rules, checks, _policies) = dumped;
    if !rules.is_empty() {
        return Err(Rejection::Malformed(
            "token blocks may not contain datalog rules".into(),
        ));
    }
    let widest = checks
        .iter()
        .flat_map(|c| c.queries.iter())
        .map(|q| q.body.len())
        .max()
        .unwrap_or(0);
    if widest > MAX_CHECK_PREDICATES {
        return Err(Rejection::Malformed(format!(
            "a check joins {widest} predicates, limit is {MAX_CHECK_PREDICATES}"
        )));
    }
    // Apply-time fencing re-checks expiry from the extracted date alone, so
    // every check that reads `time` must be one whose meaning is exactly
    // "now <= date" (or "<"); anything else (a reversed comparison, a
    // not-before bound, arithmetic) would be enforced by the guard but not
    // by apply, and is refused outright.
    let mut expiry: Option<u64> = None;
    for query in checks
        .iter()
        .flat_map(|c| c.queries.iter())
        .filter(|q| q.body.iter().any(|p| p.name == "time"))
    {
        let time_only = query.body.len() == 1;
        let mut bound = None;
        for e in &query.expressions {
            bound = match e.ops.as_slice() {
                [Op::Value(Term::Variable(_)), Op::Value(Term::Date(d)), Op::Binary(Binary::LessOrEqual)] => {
                    Some(*d)
                }
                [Op::Value(Term::Variable(_)), Op::Value(Term::Date(d)), Op::Binary(Binary::LessThan)] => {
                    Some(d.saturating_sub(1))
                }
                _ => None,
            };
            if bound.is_none() {
                break;
            }
        }
        match bound {
            Some(d) if time_only && query.expressions.len() == 1 => {
                expiry = Some(expiry.map_or(d, |e| e.min(d)));
            }
            _ => {
                return Err(Rejection::Malformed(
                    "a check on time must be an expiry: `check if time($t), $t <= <date>` \
                     (use `synapse token attenuate --expires`)"
                        .into(),
                ))
            }
        }
    }
    let any_mode = Term::Str("any".to_string());
    let grant_scoped = facts
        .iter()
        .any(|f| f.predicate.name == "grant" && f.predicate.terms.get(1) != Some(&any_mode));
    let check_reads_instance = checks
        .iter()
        .flat_map(|c| c.queries.iter())
        .any(|q| q.body.iter().any(|p| p.name == "instance"));
    Ok(TokenShape {
        expires_at_secs: expiry,
        instance_scoped: grant_scoped || check_reads_instance,
    })
}

fn eval_limits() -> AuthorizerLimits {
    AuthorizerLimits {
        max_facts: MAX_FACTS,
        max_iterations: MAX_ITERATIONS,
        max_time: MAX_EVAL_TIME,
    }
}

const EXPIRY_CHECK: &str = "check if time($t), $t <= {expires_at}";

fn expiry_params(at: SystemTime) -> HashMap<String, Term> {
    HashMap::from([("expires_at".to_string(), date_term(at))])
}

/// biscuit's own `date()` panics before 1970; clamp to the epoch instead
/// (an expiry before 1970 is simply already expired).
fn date_term(t: SystemTime) -> Term {
    Term::Date(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InstanceMode {
    Any,
    Exact,
    Prefix,
}

impl InstanceMode {
    fn as_str(self) -> &'static str {
        match self {
            InstanceMode::Any => "any",
            InstanceMode::Exact => "exact",
            InstanceMode::Prefix => "prefix",
        }
    }
}

/// `"*"` → None (any), a name without `*` → Some(name).
fn parse_skill_pattern(p: &str) -> Result<Option<&str>, GuardError> {
    match p {
        "*" => Ok(None),
        "" => Err(GuardError::Malformed("empty skill pattern".into())),
        _ if p.contains('*') => Err(GuardError::Malformed(format!(
            "skill pattern {p:?}: only \"*\" or an exact name"
        ))),
        _ => Ok(Some(p)),
    }
}

/// `"*"` → any, `"abc*"` → prefix "abc", `"abc"` → exact.
fn parse_instance_pattern(p: &str) -> Result<(InstanceMode, &str), GuardError> {
    if p == "*" {
        return Ok((InstanceMode::Any, ""));
    }
    if p.is_empty() {
        return Err(GuardError::Malformed("empty instance pattern".into()));
    }
    match p.strip_suffix('*') {
        Some(prefix) if !prefix.contains('*') => Ok((InstanceMode::Prefix, prefix)),
        None if !p.contains('*') => Ok((InstanceMode::Exact, p)),
        _ => Err(GuardError::Malformed(format!(
            "instance pattern {p:?}: only \"*\", an exact name or a trailing \"*\""
        ))),
    }
}

/// None = any method (empty list or one containing `"*"`).
fn method_set(methods: &[String]) -> Result<Option<BTreeSet<Term>>, GuardError> {
    if methods.is_empty() || methods.iter().any(|m| m == "*") {
        return Ok(None);
    }
    if methods.iter().any(String::is_empty) {
        return Err(GuardError::Malformed("empty method name".into()));
    }
    Ok(Some(methods.iter().map(|m| string(m)).collect()))
}

fn bounded_text(text: &str) -> Result<&str, GuardError> {
    if text.len() > MAX_TOKEN_BYTES {
        return Err(GuardError::Malformed(format!(
            "token is {} bytes, limit is {MAX_TOKEN_BYTES}",
            text.len()
        )));
    }
    Ok(text.trim())
}

fn parse_public(hex: &str) -> Result<PublicKey, GuardError> {
    PublicKey::from_bytes_hex(hex.trim(), Algorithm::Ed25519)
        .map_err(|e| GuardError::Key(format!("invalid Ed25519 public key hex: {e}")))
}

/// Errors from deserializing/verifying a token.
fn parse_err(e: TokenError) -> GuardError {
    match e {
        TokenError::Format(Format::Signature(_))
        | TokenError::Format(Format::SealedSignature)
        | TokenError::Format(Format::UnknownPublicKey) => GuardError::BadSignature,
        TokenError::AppendOnSealed => GuardError::Malformed("token is sealed".into()),
        other => GuardError::Malformed(other.to_string()),
    }
}

/// Errors from building datalog we generate ourselves.
fn datalog_err(e: TokenError) -> GuardError {
    GuardError::Malformed(format!("building token: {e}"))
}

/// SHA-256 over the token hash and the request, length-prefixed so that
/// ("ab", "c") and ("a", "bc") differ. The instance is left out (marked by
/// a distinct tag byte) for a token whose allows cannot depend on it.
fn decision_key(token_hash: &Hash32, req: &Request<'_>, instance_scoped: bool) -> Hash32 {
    let mut h = Sha256::new();
    h.update(token_hash);
    h.update([req.operation as u8]);
    h.update([u8::from(instance_scoped)]);
    let instance = if instance_scoped { req.instance } else { "" };
    for field in [req.skill, instance, req.method] {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field.as_bytes());
    }
    h.finalize().into()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Cache critical sections do not panic; if one ever did, the cache is
    // still structurally valid (worst case a stale slot), so keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "root key file is readable by group/others; expected mode 0600");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Creates `path` exclusively with mode 0600 and writes `contents`, durably.
fn write_new_secret(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    // Make the new directory entry durable too (best effort: not all
    // platforms allow syncing a directory).
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Bounded map with CLOCK (second-chance) eviction: O(1) amortized, one
/// reference bit per slot. New entries start unreferenced, so a flood of
/// one-off tokens evicts itself before the hot set.
struct ClockCache<K, V> {
    capacity: usize,
    index: HashMap<K, usize>,
    slots: Vec<Slot<K, V>>,
    hand: usize,
}

struct Slot<K, V> {
    key: K,
    value: V,
    referenced: bool,
}

impl<K: std::hash::Hash + Eq + Clone, V> ClockCache<K, V> {
    fn new(capacity: usize) -> Self {
        ClockCache {
            capacity,
            index: HashMap::new(),
            slots: Vec::new(),
            hand: 0,
        }
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    fn get(&mut self, key: &K) -> Option<&V> {
        let &i = self.index.get(key)?;
        let slot = self.slots.get_mut(i)?;
        slot.referenced = true;
        Some(&slot.value)
    }

    fn insert(&mut self, key: K, value: V) {
        if self.capacity == 0 {
            return;
        }
        if let Some(&i) = self.index.get(&key) {
            if let Some(slot) = self.slots.get_mut(i) {
                slot.value = value;
                slot.referenced = true;
                return;
            }
        }
        if self.slots.len() < self.capacity {
            self.index.insert(key.clone(), self.slots.len());
            self.slots.push(Slot {
                key,
                value,
                referenced: false,
            });
            return;
        }
        // Full: sweep, clearing reference bits, until an unreferenced slot.
        // Terminates within two passes because the sweep clears every bit.
        loop {
            let slot = &mut self.slots[self.hand];
            if !slot.referenced {
                break;
            }
            slot.referenced = false;
            self.hand = (self.hand + 1) % self.capacity;
        }
        let victim = self.hand;
        self.index.remove(&self.slots[victim].key);
        self.index.insert(key.clone(), victim);
        self.slots[victim] = Slot {
            key,
            value,
            referenced: false,
        };
        self.hand = (self.hand + 1) % self.capacity;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ: Operation = Operation::Read;
    const WRITE: Operation = Operation::Write;

    fn req<'a>(skill: &'a str, instance: &'a str, method: &'a str, op: Operation) -> Request<'a> {
        Request {
            skill,
            instance,
            method,
            operation: op,
        }
    }

    fn grant(skill: &str, instance: &str, methods: &[&str], read_only: bool) -> Grant {
        Grant {
            skill: skill.into(),
            instance: instance.into(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            read_only,
        }
    }

    fn setup(grants: &[Grant]) -> (RootKey, Guard, String) {
        let root = RootKey::generate();
        let guard = Guard::new(&root.public_hex(), 64).expect("guard");
        let token = root.mint("alice", grants, None).expect("mint");
        (root, guard, token)
    }

    fn allowed(guard: &Guard, token: &str, r: Request<'_>) -> bool {
        match guard.check(Some(token), &r) {
            Ok(d) => {
                assert!(d.allowed);
                true
            }
            Err(GuardError::Denied(_)) => false,
            Err(e) => panic!("unexpected error for {r}: {e}"),
        }
    }

    #[test]
    fn exact_grant_allows_exactly_its_scope() {
        let (_root, guard, t) = setup(&[grant("counter", "alice", &["get"], false)]);
        let d = guard
            .check(Some(&t), &req("counter", "alice", "get", WRITE))
            .expect("in scope");
        assert_eq!(d.principal, "alice");
        assert!(d.allowed);
        assert!(!allowed(&guard, &t, req("counter", "bob", "get", READ)));
        assert!(!allowed(&guard, &t, req("kv", "alice", "get", READ)));
        assert!(!allowed(&guard, &t, req("counter", "alice", "put", READ)));
        assert!(!allowed(&guard, &t, req("counter", "alicex", "get", READ)));
    }

    #[test]
    fn wildcard_skill_and_instance_and_any_method() {
        let (_root, guard, t) = setup(&[grant("*", "*", &[], false)]);
        assert!(allowed(&guard, &t, req("counter", "alice", "get", WRITE)));
        assert!(allowed(&guard, &t, req("kv", "zzz", "put", READ)));
        // "*" in the method list also means any method.
        let (_root, guard, t) = setup(&[grant("kv", "*", &["*"], false)]);
        assert!(allowed(&guard, &t, req("kv", "x", "anything", WRITE)));
        assert!(!allowed(&guard, &t, req("counter", "x", "anything", WRITE)));
    }

    #[test]
    fn prefix_instance_pattern() {
        let (_root, guard, t) = setup(&[grant("counter", "ali*", &[], false)]);
        assert!(allowed(&guard, &t, req("counter", "alice", "get", READ)));
        assert!(allowed(&guard, &t, req("counter", "ali", "get", READ)));
        assert!(!allowed(&guard, &t, req("counter", "bob", "get", READ)));
        assert!(!allowed(&guard, &t, req("counter", "al", "get", READ)));
    }

    #[test]
    fn method_list_and_read_only_grant() {
        let (_root, guard, t) = setup(&[grant("kv", "*", &["get", "list"], true)]);
        assert!(allowed(&guard, &t, req("kv", "a", "list", READ)));
        assert!(!allowed(&guard, &t, req("kv", "a", "list", WRITE)));
        assert!(!allowed(&guard, &t, req("kv", "a", "put", READ)));
    }

    #[test]
    fn multiple_grants_union() {
        let (_root, guard, t) = setup(&[
            grant("kv", "cfg", &["get"], true),
            grant("counter", "*", &[], false),
        ]);
        assert!(allowed(&guard, &t, req("kv", "cfg", "get", READ)));
        assert!(!allowed(&guard, &t, req("kv", "cfg", "get", WRITE)));
        assert!(allowed(&guard, &t, req("counter", "x", "inc", WRITE)));
        // Grants do not mix: kv is not writable via the counter grant.
        assert!(!allowed(&guard, &t, req("kv", "x", "inc", WRITE)));
    }

    #[test]
    fn missing_and_garbage_tokens() {
        let (_root, guard, _t) = setup(&[grant("*", "*", &[], false)]);
        let r = req("kv", "a", "get", READ);
        assert!(matches!(guard.check(None, &r), Err(GuardError::Missing)));
        assert!(matches!(
            guard.check(Some("  "), &r),
            Err(GuardError::Missing)
        ));
        for garbage in [
            "hello",
            "!!!",
            "AAAA",
            "EnQKCggBEgZ",
            "\u{0}\u{1}é漢字",
            "====",
        ] {
            let res = guard.check(Some(garbage), &r);
            assert!(
                matches!(res, Err(GuardError::Malformed(_))),
                "{garbage:?}: {res:?}"
            );
        }
    }

    #[test]
    fn truncated_and_mutated_tokens_never_panic_or_allow() {
        let (_root, guard, t) = setup(&[grant("*", "*", &[], false)]);
        let r = req("kv", "a", "get", READ);
        let bytes = t.as_bytes();
        for cut in (0..bytes.len()).step_by(7) {
            let s = std::str::from_utf8(&bytes[..cut]).expect("base64 is ascii");
            assert!(
                guard.check(Some(s), &r).is_err(),
                "prefix of len {cut} allowed"
            );
        }
        for i in (0..bytes.len()).step_by(5) {
            let mut m = bytes.to_vec();
            m[i] = if m[i] == b'A' { b'B' } else { b'A' };
            let s = String::from_utf8(m).expect("ascii");
            if s != t {
                let res = guard.check(Some(&s), &r);
                assert!(
                    matches!(
                        res,
                        Err(GuardError::Malformed(_)) | Err(GuardError::BadSignature)
                    ),
                    "mutation at {i}: {res:?}"
                );
            }
        }
    }

    #[test]
    fn token_from_another_root_key_is_bad_signature() {
        let (_root, guard, _t) = setup(&[grant("*", "*", &[], false)]);
        let other = RootKey::generate();
        let foreign = other
            .mint("mallory", &[grant("*", "*", &[], false)], None)
            .expect("mint");
        let res = guard.check(Some(&foreign), &req("kv", "a", "get", READ));
        assert!(matches!(res, Err(GuardError::BadSignature)), "{res:?}");
        // Cached as a rejection: same answer, counted as a hit.
        let hits = guard.cache_hits();
        let res = guard.check(Some(&foreign), &req("kv", "a", "get", READ));
        assert!(matches!(res, Err(GuardError::BadSignature)));
        assert_eq!(guard.cache_hits(), hits + 1);
    }

    #[test]
    fn revocation_denies_at_once_even_with_a_cached_allow_and_covers_children() {
        let (root, guard, parent) = setup(&[grant("*", "*", &[], false)]);
        let other = root
            .mint("bob", &[grant("*", "*", &[], false)], None)
            .expect("mint");
        let child = attenuate(
            &parent,
            &Restriction {
                skill: Some("kv".into()),
                ..Default::default()
            },
        )
        .expect("attenuate");
        let r = req("kv", "a", "get", READ);
        for t in [&parent, &child, &other] {
            assert!(allowed(&guard, t, r));
            assert!(allowed(&guard, t, r)); // now a cached allow
        }
        let hits = guard.cache_hits();
        let ids = guard.revocation_ids_of(&parent).expect("ids");
        assert_eq!(ids.len(), 1, "a minted token has one block");
        let child_ids = guard.revocation_ids_of(&child).expect("ids");
        assert_eq!(child_ids.len(), 2);
        assert_eq!(child_ids[0], ids[0], "a child carries its parent's id");

        guard
            .revocations()
            .insert_all(ids.iter().map(Vec::as_slice));
        for t in [&parent, &child] {
            let res = guard.check(Some(t), &r);
            assert!(matches!(res, Err(GuardError::Revoked)), "{res:?}");
        }
        assert_eq!(
            guard.cache_hits(),
            hits + 2,
            "verified-token cache still used"
        );
        // Revoking one holder's token leaves another's alone.
        assert!(allowed(&guard, &other, r));

        // Revoking only the child's own block leaves the parent working.
        let (_, guard2, parent2) = setup(&[grant("*", "*", &[], false)]);
        let child2 = attenuate(&parent2, &Restriction::default()).expect("attenuate");
        let child2_ids = guard2.revocation_ids_of(&child2).expect("ids");
        guard2.revocations().insert_all([child2_ids[1].as_slice()]);
        assert!(allowed(&guard2, &parent2, r));
        assert!(matches!(
            guard2.check(Some(&child2), &r),
            Err(GuardError::Revoked)
        ));
    }

    #[test]
    fn revocation_ids_of_requires_this_clusters_signature() {
        let (_, guard, _) = setup(&[grant("*", "*", &[], false)]);
        let foreign = RootKey::generate()
            .mint("eve", &[grant("*", "*", &[], false)], None)
            .expect("mint");
        assert!(matches!(
            guard.revocation_ids_of(&foreign),
            Err(GuardError::BadSignature)
        ));
        assert!(guard.revocation_ids_of("garbage").is_err());
        assert!(guard.revocation_ids_of("").is_err());
    }

    #[test]
    fn fence_carries_the_earliest_expiry_over_all_blocks() {
        let root = RootKey::generate();
        let guard = Guard::new(&root.public_hex(), 8).expect("guard");
        let far = UNIX_EPOCH + Duration::from_secs(4_000_000_000);
        let near = UNIX_EPOCH + Duration::from_secs(3_000_000_000);
        let t = root
            .mint("alice", &[grant("*", "*", &[], false)], Some(far))
            .expect("mint");
        let r = req("kv", "a", "get", READ);
        let d = guard.check(Some(&t), &r).expect("allowed");
        assert_eq!(d.fence.expires_at_secs, Some(4_000_000_000));
        assert_eq!(d.fence.revocation_ids.len(), 1);
        let narrowed = attenuate(
            &t,
            &Restriction {
                expires_at: Some(near),
                ..Default::default()
            },
        )
        .expect("attenuate");
        let d = guard.check(Some(&narrowed), &r).expect("allowed");
        assert_eq!(d.fence.expires_at_secs, Some(3_000_000_000));
        assert_eq!(d.fence.revocation_ids.len(), 2);
        // Cached decisions carry the same fence.
        let again = guard.check(Some(&narrowed), &r).expect("allowed");
        assert_eq!(again.fence, d.fence);
        // Same rule as the guard: valid through the whole expiry second.
        assert!(!d.fence.expired_at(3_000_000_000 * 1_000_000 + 999_999));
        assert!(d.fence.expired_at(3_000_000_001 * 1_000_000));
        let unlimited = root
            .mint("alice", &[grant("*", "*", &[], false)], None)
            .expect("mint");
        let d = guard.check(Some(&unlimited), &r).expect("allowed");
        assert_eq!(d.fence.expires_at_secs, None);
        assert!(!d.fence.expired_at(u64::MAX));
    }

    #[test]
    fn expired_token_is_rejected() {
        let root = RootKey::generate();
        let guard = Guard::new(&root.public_hex(), 8).expect("guard");
        let past = SystemTime::now() - Duration::from_secs(3600);
        let t = root
            .mint("alice", &[grant("*", "*", &[], false)], Some(past))
            .expect("mint");
        let res = guard.check(Some(&t), &req("kv", "a", "get", READ));
        assert!(matches!(res, Err(GuardError::Expired)), "{res:?}");

        // Control: the same expiry with the guard's clock before it allows.
        let guard = Guard::new(&root.public_hex(), 8)
            .expect("guard")
            .with_time_source(move || past - Duration::from_secs(60));
        assert!(allowed(&guard, &t, req("kv", "a", "get", READ)));
    }

    #[test]
    fn future_expiry_allows_until_then() {
        let root = RootKey::generate();
        let t0 = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let clock = Arc::new(Mutex::new(t0));
        let c = clock.clone();
        let guard = Guard::new(&root.public_hex(), 8)
            .expect("guard")
            .with_time_source(move || *lock(&c));
        let t = root
            .mint(
                "alice",
                &[grant("*", "*", &[], false)],
                Some(t0 + Duration::from_secs(10)),
            )
            .expect("mint");
        let r = req("kv", "a", "get", READ);
        assert!(allowed(&guard, &t, r));
        // Within the expiry second: the cached allow is served.
        *lock(&clock) = t0 + Duration::from_millis(10_999);
        let d = guard.check(Some(&t), &r).expect("allowed");
        assert!(d.reason.contains("cached"), "{}", d.reason);
        // Past the expiry, still within the decision TTL: the cached allow
        // must not be served.
        assert!(Duration::from_secs(11) < DECISION_TTL);
        *lock(&clock) = t0 + Duration::from_secs(11);
        assert!(matches!(
            guard.check(Some(&t), &r),
            Err(GuardError::Expired)
        ));
    }

    #[test]
    fn attenuation_narrows_each_dimension() {
        let (root, guard, t) = setup(&[grant("*", "*", &[], false)]);
        let _ = root;
        let only = |r: Restriction| attenuate(&t, &r).expect("attenuate");

        let skill = only(Restriction {
            skill: Some("counter".into()),
            ..Default::default()
        });
        assert!(allowed(&guard, &skill, req("counter", "a", "get", WRITE)));
        match guard.check(Some(&skill), &req("kv", "a", "get", WRITE)) {
            Err(GuardError::Denied(m)) => assert!(m.contains("out of scope: skill"), "{m}"),
            other => panic!("{other:?}"),
        }

        let inst = only(Restriction {
            instance: Some("alice".into()),
            ..Default::default()
        });
        assert!(allowed(&guard, &inst, req("kv", "alice", "get", WRITE)));
        assert!(!allowed(&guard, &inst, req("kv", "bob", "get", WRITE)));

        let prefix = only(Restriction {
            instance: Some("ali*".into()),
            ..Default::default()
        });
        assert!(allowed(&guard, &prefix, req("kv", "alice", "get", WRITE)));
        assert!(!allowed(&guard, &prefix, req("kv", "bob", "get", WRITE)));

        let method = only(Restriction {
            methods: Some(vec!["get".into(), "list".into()]),
            ..Default::default()
        });
        assert!(allowed(&guard, &method, req("kv", "x", "list", WRITE)));
        assert!(!allowed(&guard, &method, req("kv", "x", "put", WRITE)));

        let ro = only(Restriction {
            read_only: true,
            ..Default::default()
        });
        assert!(allowed(&guard, &ro, req("kv", "x", "get", READ)));
        match guard.check(Some(&ro), &req("kv", "x", "put", WRITE)) {
            Err(GuardError::Denied(m)) => assert!(m.contains("read-only"), "{m}"),
            other => panic!("{other:?}"),
        }

        let expired = only(Restriction {
            expires_at: Some(SystemTime::now() - Duration::from_secs(5)),
            ..Default::default()
        });
        assert!(matches!(
            guard.check(Some(&expired), &req("kv", "x", "get", READ)),
            Err(GuardError::Expired)
        ));
        let later = only(Restriction {
            expires_at: Some(SystemTime::now() + Duration::from_secs(3600)),
            ..Default::default()
        });
        assert!(allowed(&guard, &later, req("kv", "x", "get", READ)));
    }

    #[test]
    fn attenuation_cannot_widen_and_chains_narrow() {
        let (_root, guard, t) = setup(&[grant("counter", "*", &[], true)]);
        // A block that "restricts" to another skill cannot grant it.
        let t2 = attenuate(
            &t,
            &Restriction {
                skill: Some("kv".into()),
                ..Default::default()
            },
        )
        .expect("attenuate");
        assert!(!allowed(&guard, &t2, req("kv", "a", "get", READ)));
        assert!(!allowed(&guard, &t2, req("counter", "a", "get", READ)));
        // Chained attenuation keeps the principal and narrows further.
        let t3 = attenuate(
            &t,
            &Restriction {
                instance: Some("alice".into()),
                ..Default::default()
            },
        )
        .and_then(|t| {
            attenuate(
                &t,
                &Restriction {
                    methods: Some(vec!["get".into()]),
                    ..Default::default()
                },
            )
        })
        .expect("attenuate");
        let d = guard
            .check(Some(&t3), &req("counter", "alice", "get", READ))
            .expect("still in scope");
        assert_eq!(d.principal, "alice");
        assert!(!allowed(&guard, &t3, req("counter", "alice", "inc", READ)));
        assert!(!allowed(&guard, &t3, req("counter", "bob", "get", READ)));
        // The authority grant is read-only; no block can lift that.
        assert!(!allowed(&guard, &t3, req("counter", "alice", "get", WRITE)));
    }

    #[test]
    fn appended_grant_and_principal_facts_do_not_widen() {
        let (_root, guard, t) = setup(&[grant("counter", "alice", &["get"], true)]);
        let attacker = BlockBuilder::new()
            .code(
                r#"
                grant("*", "any", "", {"*"}, false);
                grant("kv", "any", "", {"*"}, false);
                principal("root");
                right("kv", "x", "put");
                "#,
            )
            .expect("datalog");
        let forged = UnverifiedBiscuit::from_base64(&t)
            .and_then(|u| u.append(attacker))
            .and_then(|u| u.to_base64())
            .expect("append");
        // The forged token still verifies (appending is allowed)…
        let d = guard
            .check(Some(&forged), &req("counter", "alice", "get", READ))
            .expect("original scope still allowed");
        // …but the appended principal is ignored…
        assert_eq!(d.principal, "alice");
        // …and the appended grants widen nothing.
        assert!(!allowed(&guard, &forged, req("kv", "x", "put", WRITE)));
        assert!(!allowed(
            &guard,
            &forged,
            req("counter", "alice", "get", WRITE)
        ));
        assert!(!allowed(
            &guard,
            &forged,
            req("counter", "bob", "get", READ)
        ));
    }

    #[test]
    fn appended_runaway_rules_are_bounded() {
        let (_root, guard, t) = setup(&[grant("*", "*", &[], false)]);
        let r = req("kv", "a", "get", READ);
        // Control: the plain token is allowed.
        assert!(allowed(&guard, &t, r));
        // 40 facts, and a rule producing their cube: 64 000 facts.
        let mut source: String = (0..40).map(|i| format!("a({i});")).collect();
        source.push_str("p($x, $y, $z) <- a($x), a($y), a($z);");
        let bomb = BlockBuilder::new().code(source).expect("datalog");
        let forged = UnverifiedBiscuit::from_base64(&t)
            .and_then(|u| u.append(bomb))
            .and_then(|u| u.to_base64())
            .expect("append");
        let res = guard.check(Some(&forged), &r);
        assert!(
            matches!(&res, Err(GuardError::Malformed(m)) if m.contains("rules")),
            "{res:?}"
        );
        // The same explosion written as a check join.
        let mut source: String = (0..40).map(|i| format!("a({i});")).collect();
        source.push_str(r#"check if a($x), a($y), a($z), $x + $y + $z == -1;"#);
        let bomb = BlockBuilder::new().code(source).expect("datalog");
        let forged = UnverifiedBiscuit::from_base64(&t)
            .and_then(|u| u.append(bomb))
            .and_then(|u| u.to_base64())
            .expect("append");
        let res = guard.check(Some(&forged), &r);
        assert!(
            matches!(&res, Err(GuardError::Malformed(m)) if m.contains("joins 3")),
            "{res:?}"
        );
    }

    #[test]
    fn time_checks_other_than_an_expiry_are_refused() {
        let (_root, guard, t) = setup(&[grant("*", "*", &[], false)]);
        let r = req("kv", "a", "get", READ);
        // The guard would enforce these, but apply-time fencing only knows
        // "now <= date": each is refused rather than half-enforced.
        for code in [
            "check if time($t), 2100-01-01T00:00:00Z >= $t;",
            "check if time($t), $t >= 2000-01-01T00:00:00Z;",
            "check if time($t), $t <= 2100-01-01T00:00:00Z, $t >= 2000-01-01T00:00:00Z;",
            "check if time($t), operation($o), $t <= 2100-01-01T00:00:00Z;",
        ] {
            let block = BlockBuilder::new().code(code).expect("datalog");
            let token = UnverifiedBiscuit::from_base64(&t)
                .and_then(|u| u.append(block))
                .and_then(|u| u.to_base64())
                .expect("append");
            let res = guard.check(Some(&token), &r);
            assert!(
                matches!(&res, Err(GuardError::Malformed(m)) if m.contains("expiry")),
                "{code}: {res:?}"
            );
        }
        // The supported form still works, and its date is the fence's.
        let block = BlockBuilder::new()
            .code("check if time($t), $t <= 2100-01-01T00:00:00Z;")
            .expect("datalog");
        let token = UnverifiedBiscuit::from_base64(&t)
            .and_then(|u| u.append(block))
            .and_then(|u| u.to_base64())
            .expect("append");
        let d = guard.check(Some(&token), &r).expect("allowed");
        assert_eq!(d.fence.expires_at_secs, Some(4_102_444_800));
    }

    #[test]
    fn decision_cache_hits_and_expires_after_ttl() {
        let root = RootKey::generate();
        let t0 = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let clock = Arc::new(Mutex::new(t0));
        let c = clock.clone();
        let guard = Guard::new(&root.public_hex(), 8)
            .expect("guard")
            .with_time_source(move || *lock(&c));
        let t = root
            .mint("alice", &[grant("*", "*", &[], false)], None)
            .expect("mint");
        let r = req("kv", "a", "get", READ);
        assert_eq!(guard.cache_hits(), 0);
        assert!(allowed(&guard, &t, r));
        assert_eq!(guard.cache_hits(), 0);
        let d = guard.check(Some(&t), &r).expect("allowed");
        assert_eq!(guard.cache_hits(), 1);
        assert_eq!(d.principal, "alice");
        assert!(d.reason.contains("cached"), "{}", d.reason);
        // Another request with the same token: token-cache hit, not a
        // decision-cache hit.
        let d = guard
            .check(Some(&t), &req("kv", "a", "put", WRITE))
            .expect("allowed");
        assert_eq!(guard.cache_hits(), 2);
        assert!(!d.reason.contains("cached"));
        // After the TTL the decision is re-evaluated (token cache still hits).
        *lock(&clock) = t0 + DECISION_TTL;
        let d = guard.check(Some(&t), &r).expect("allowed");
        assert!(!d.reason.contains("cached"), "{}", d.reason);
        // Clock stepping backwards does not extend a cached decision either.
        *lock(&clock) = t0 - Duration::from_secs(5);
        let d = guard.check(Some(&t), &r).expect("allowed");
        assert!(!d.reason.contains("cached"), "{}", d.reason);
        assert_eq!(guard.cache_len(), 1);
    }

    #[test]
    fn one_cached_allow_serves_every_instance_only_when_the_token_ignores_instances() {
        let root = RootKey::generate();
        let guard = Guard::new(&root.public_hex(), 8).expect("guard");
        let cached = |t: &str, instance: &str| {
            guard
                .check(Some(t), &req("kv", instance, "put", WRITE))
                .map(|d| d.reason.contains("cached"))
        };
        // Any instance, no check on instances: the allow for `a` serves `b`.
        let wide = root
            .mint("w", &[grant("kv", "*", &[], false)], None)
            .expect("mint");
        assert_eq!(cached(&wide, "a").ok(), Some(false));
        assert_eq!(cached(&wide, "b").ok(), Some(true));

        // A prefix grant: every instance is decided on its own, and an
        // allow for `alice` never turns into one for `bob`.
        let prefix = root
            .mint("p", &[grant("kv", "ali*", &[], false)], None)
            .expect("mint");
        assert_eq!(cached(&prefix, "alice").ok(), Some(false));
        assert_eq!(cached(&prefix, "alice").ok(), Some(true));
        assert_eq!(cached(&prefix, "alicia").ok(), Some(false));
        assert!(matches!(cached(&prefix, "bob"), Err(GuardError::Denied(_))));

        // A wide grant narrowed by an appended instance check is scoped too.
        let narrowed = attenuate(
            &wide,
            &Restriction {
                instance: Some("a".into()),
                ..Default::default()
            },
        )
        .expect("attenuate");
        assert_eq!(cached(&narrowed, "a").ok(), Some(false));
        assert!(matches!(cached(&narrowed, "b"), Err(GuardError::Denied(_))));
        assert!(matches!(cached(&narrowed, "b"), Err(GuardError::Denied(_))));

        // Two grants, one of them exact: scoped (the wide one is for
        // another skill, so `kv/b` must still be denied).
        let mixed = root
            .mint(
                "m",
                &[
                    grant("kv", "a", &[], false),
                    grant("counter", "*", &[], false),
                ],
                None,
            )
            .expect("mint");
        assert_eq!(cached(&mixed, "a").ok(), Some(false));
        assert!(matches!(cached(&mixed, "b"), Err(GuardError::Denied(_))));
    }

    #[test]
    fn denials_are_not_cached_as_allows() {
        let (_root, guard, t) = setup(&[grant("kv", "*", &[], true)]);
        let r = req("kv", "a", "put", WRITE);
        for _ in 0..3 {
            assert!(!allowed(&guard, &t, r));
        }
    }

    #[test]
    fn caches_are_bounded() {
        let root = RootKey::generate();
        let capacity = 5;
        let guard = Guard::new(&root.public_hex(), capacity).expect("guard");
        let other = RootKey::generate();
        for i in 0..capacity + 10 {
            let t = root
                .mint(&format!("p{i}"), &[grant("*", "*", &[], false)], None)
                .expect("mint");
            for m in 0..6 {
                let method = format!("m{m}");
                assert!(allowed(&guard, &t, req("kv", "a", &method, READ)));
            }
            let foreign = other
                .mint("x", &[grant("*", "*", &[], false)], None)
                .expect("mint");
            assert!(guard
                .check(Some(&foreign), &req("kv", "a", "get", READ))
                .is_err());
            assert!(guard.cache_len() <= capacity);
        }
        assert_eq!(guard.cache_len(), capacity);
        assert!(lock(&guard.decisions).len() <= capacity * DECISIONS_PER_TOKEN);
        assert!(lock(&guard.rejected).len() <= capacity);
        // Zero capacity disables caching entirely.
        let guard = Guard::new(&root.public_hex(), 0).expect("guard");
        let t = root
            .mint("a", &[grant("*", "*", &[], false)], None)
            .expect("mint");
        assert!(allowed(&guard, &t, req("kv", "a", "get", READ)));
        assert!(allowed(&guard, &t, req("kv", "a", "get", READ)));
        assert_eq!((guard.cache_len(), guard.cache_hits()), (0, 0));
    }

    #[test]
    fn clock_cache_evicts_unreferenced_first() {
        let mut c: ClockCache<u32, u32> = ClockCache::new(3);
        for k in 0..3 {
            c.insert(k, k);
        }
        assert!(c.get(&0).is_some()); // 0 is hot
        c.insert(3, 3); // evicts 1 (first unreferenced after clearing 0)
        assert!(c.get(&1).is_none());
        assert!(c.get(&0).is_some());
        assert_eq!(c.len(), 3);
        c.insert(3, 30); // update in place
        assert_eq!(c.get(&3), Some(&30));
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn oversized_token_rejected_before_parsing() {
        let (_root, guard, t) = setup(&[grant("*", "*", &[], false)]);
        let big = format!("{t}{}", "A".repeat(MAX_TOKEN_BYTES));
        match guard.check(Some(&big), &req("kv", "a", "get", READ)) {
            Err(GuardError::Malformed(m)) => assert!(m.contains("limit"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            attenuate(&big, &Restriction::default()),
            Err(GuardError::Malformed(_))
        ));
        assert!(matches!(inspect(&big, None), Err(GuardError::Malformed(_))));
    }

    #[test]
    fn invalid_patterns_rejected_at_mint_and_attenuate() {
        let root = RootKey::generate();
        for g in [
            grant("co*", "*", &[], false),
            grant("", "*", &[], false),
            grant("kv", "a*b", &[], false),
            grant("kv", "**", &[], false),
            grant("kv", "", &[], false),
            grant("kv", "*", &["get", ""], false),
        ] {
            assert!(
                matches!(
                    root.mint("a", std::slice::from_ref(&g), None),
                    Err(GuardError::Malformed(_))
                ),
                "{g:?}"
            );
        }
        assert!(root.mint("", &[grant("*", "*", &[], false)], None).is_err());
        assert!(root.mint("a", &[], None).is_err());
        let t = root
            .mint("a", &[grant("*", "*", &[], false)], None)
            .expect("mint");
        let bad = Restriction {
            instance: Some("*x*".into()),
            ..Default::default()
        };
        assert!(matches!(attenuate(&t, &bad), Err(GuardError::Malformed(_))));
        assert!(matches!(
            attenuate("garbage", &Restriction::default()),
            Err(GuardError::Malformed(_))
        ));
    }

    #[test]
    fn datalog_injection_in_names_is_inert() {
        // Names are passed as terms, never spliced into datalog source.
        let (root, guard, _t) = setup(&[grant("*", "*", &[], false)]);
        let evil = r#"x"); grant("counter", "any", "", {"get"}, false); principal("root"#;
        let t = root
            .mint(evil, &[grant("kv", evil, &[evil], true)], None)
            .expect("mint");
        let d = guard
            .check(Some(&t), &req("kv", evil, evil, READ))
            .expect("exact match on the odd name");
        assert_eq!(d.principal, evil);
        assert!(!allowed(&guard, &t, req("counter", "a", "get", READ)));
        let t2 = attenuate(
            &t,
            &Restriction {
                skill: Some(evil.into()),
                ..Default::default()
            },
        )
        .expect("attenuate");
        assert!(!allowed(&guard, &t2, req("kv", evil, evil, READ)));
    }

    #[test]
    fn root_key_hex_roundtrip_and_file() {
        let k = RootKey::generate();
        let k2 = RootKey::from_private_hex(&k.to_private_hex()).expect("roundtrip");
        assert_eq!(k.public_hex(), k2.public_hex());
        assert!(matches!(
            RootKey::from_private_hex("zz"),
            Err(GuardError::Key(_))
        ));
        assert!(matches!(Guard::new("nothex", 4), Err(GuardError::Key(_))));
        assert!(!format!("{k:?}").contains(&k.to_private_hex()));

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("root.key");
        let a = RootKey::load_or_create(&path).expect("create");
        let b = RootKey::load_or_create(&path).expect("load");
        assert_eq!(a.public_hex(), b.public_hex());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A token minted with the loaded key verifies with the created key's public half.
        let t = b
            .mint("ops", &[grant("*", "*", &[], false)], None)
            .expect("mint");
        let guard = Guard::new(&a.public_hex(), 4).expect("guard");
        assert!(allowed(&guard, &t, req("kv", "a", "get", READ)));

        std::fs::write(dir.path().join("bad.key"), "not a key").expect("write");
        assert!(matches!(
            RootKey::load_or_create(&dir.path().join("bad.key")),
            Err(GuardError::Key(_))
        ));
    }

    #[test]
    fn inspect_shows_blocks_and_verification() {
        let (root, _guard, t) = setup(&[grant("counter", "ali*", &["get"], true)]);
        let t2 = attenuate(
            &t,
            &Restriction {
                read_only: true,
                ..Default::default()
            },
        )
        .expect("attenuate");
        let unverified = inspect(&t2, None).expect("inspect");
        assert!(unverified.contains("NOT verified"), "{unverified}");
        assert!(unverified.contains(r#"principal("alice")"#), "{unverified}");
        assert!(
            unverified.contains(r#"grant("counter", "prefix", "ali""#),
            "{unverified}"
        );
        assert!(unverified.contains("block 1"), "{unverified}");
        assert!(
            unverified.contains(r#"check if operation("read")"#),
            "{unverified}"
        );
        let verified = inspect(&t2, Some(&root.public_hex())).expect("inspect");
        assert!(verified.contains("signature: verified"), "{verified}");
        let other = RootKey::generate();
        assert!(matches!(
            inspect(&t2, Some(&other.public_hex())),
            Err(GuardError::BadSignature)
        ));
    }

    #[test]
    fn guard_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Guard>();
        assert_send_sync::<RootKey>();
    }
}
