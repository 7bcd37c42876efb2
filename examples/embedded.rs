//! A service that embeds a Synapse node with its own skill.
//!
//! `inventory` keeps stock levels per SKU for one warehouse (one instance per
//! warehouse, e.g. `inventory/warehouse-a`). Every successful write is a
//! hash-chained checkpoint committed through the node's (one-voter) Raft log
//! and synced to disk before the call returns; every call, embedded or not,
//! goes through the capability guard.
//!
//! Run: `cargo run --example embedded`

use std::collections::BTreeMap;
use std::error::Error;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use synapse::{
    attenuate, field, format_timestamp, Grant, InvokeResult, MethodKind, MethodSpec, Node,
    NodeConfig, Restriction, RootKey, RuntimeError, Skill, SkillError,
};

fn main() -> Result<(), Box<dyn Error>> {
    // A throwaway data dir; a real service would use a persistent path.
    let dir = tempfile::tempdir()?;
    println!("data dir: {}", dir.path().display());

    // Start the node: our skill next to the built-in `counter` and `kv`.
    // `start` blocks until the node serves and its root key is committed.
    let node = Node::builder(NodeConfig::embedded(dir.path()))
        .skill(Inventory)
        .start()?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = rt.block_on(run(&node, dir.path()));

    // Drains, syncs the store and joins the node thread.
    node.shutdown();
    outcome
}

async fn run(node: &Node, dir: &std::path::Path) -> Result<(), Box<dyn Error>> {
    let root = node.root_token().to_string();
    let wh = "warehouse-a";

    // --- writes with the root token -----------------------------------
    for (sku, qty) in [("widget", 10), ("gadget", 5)] {
        let r = node
            .invoke(
                &root,
                "inventory",
                wh,
                "restock",
                json!({"sku": sku, "qty": qty}),
            )
            .await?;
        println!(
            "restock {sku} +{qty}: {} (v{}, {})",
            r.reply,
            r.version,
            ts(&r)
        );
    }
    let r = node
        .invoke(
            &root,
            "inventory",
            wh,
            "take",
            json!({"sku": "widget", "qty": 3}),
        )
        .await?;
    println!("take widget -3: {} (v{}, {})", r.reply, r.version, ts(&r));

    // --- bad input: clear errors, no state change ----------------------
    let e = node
        .invoke(
            &root,
            "inventory",
            wh,
            "take",
            json!({"sku": "widget", "qty": 100}),
        )
        .await
        .expect_err("cannot take more than is in stock");
    assert!(matches!(e, RuntimeError::FailedPrecondition(_)));
    println!("take widget -100: rejected: {e}");
    let e = node
        .invoke(
            &root,
            "inventory",
            wh,
            "restock",
            json!({"sku": "widget", "qty": "ten"}),
        )
        .await
        .expect_err("qty must be a number");
    assert!(matches!(e, RuntimeError::InvalidArgument(_)));
    println!("restock qty \"ten\": rejected: {e}");

    // --- reads ----------------------------------------------------------
    let r = node
        .invoke(&root, "inventory", wh, "stock", json!({"sku": "widget"}))
        .await?;
    println!("stock widget: {}", r.reply);
    println!("state: {}", node.state(&root, "inventory", wh).await?);

    // --- narrower capabilities -------------------------------------------
    // 1. Offline attenuation of a token we hold: read-only on `inventory`.
    let viewer = attenuate(
        &root,
        &Restriction {
            skill: Some("inventory".into()),
            read_only: true,
            ..Default::default()
        },
    )?;
    let r = node
        .invoke(&viewer, "inventory", wh, "stock", json!({"sku": "gadget"}))
        .await?;
    println!("viewer reads gadget: {}", r.reply);
    let e = node
        .invoke(
            &viewer,
            "inventory",
            wh,
            "take",
            json!({"sku": "gadget", "qty": 1}),
        )
        .await
        .expect_err("a read-only token cannot write");
    assert!(matches!(e, RuntimeError::PermissionDenied(_)), "{e}");
    println!("viewer takes gadget: denied: {e}");

    // 2. A token minted with the cluster root key (`<data-dir>/root.key`,
    //    mode 0600): restock and stock, on warehouse-b only.
    let key = RootKey::load_or_create(&dir.join("root.key"))?;
    let clerk = key.mint(
        "clerk-b",
        &[Grant {
            skill: "inventory".into(),
            instance: "warehouse-b".into(),
            methods: vec!["restock".into(), "stock".into()],
            read_only: false,
        }],
        Some(std::time::SystemTime::now() + std::time::Duration::from_secs(3600)),
    )?;
    let r = node
        .invoke(
            &clerk,
            "inventory",
            "warehouse-b",
            "restock",
            json!({"sku": "bolt", "qty": 500}),
        )
        .await?;
    println!("clerk-b restocks warehouse-b: {} (v{})", r.reply, r.version);
    let e = node
        .invoke(
            &clerk,
            "inventory",
            wh,
            "restock",
            json!({"sku": "bolt", "qty": 1}),
        )
        .await
        .expect_err("clerk-b has no rights on warehouse-a");
    assert!(matches!(e, RuntimeError::PermissionDenied(_)), "{e}");
    println!("clerk-b restocks warehouse-a: denied: {e}");

    // --- history: the hash chain, newest first -------------------------
    println!("history of inventory/{wh}:");
    let history = node
        .core()
        .history(Some(&root), "inventory", wh, 0, 10)
        .await?;
    for cp in &history {
        println!(
            "  v{} {} hash {}… parent {}… state {}",
            cp.version,
            format_timestamp(&cp.timestamp),
            &hex(&cp.hash)[..12],
            &hex(&cp.parent_hash)[..12],
            String::from_utf8_lossy(&cp.state)
        );
    }
    // The two rejected calls and the denied ones left no trace.
    assert_eq!(history.len(), 3);
    let report = node.core().verify(Some(&root), "inventory", wh).await?;
    println!(
        "chain verifies: {} ({} versions)",
        report.ok, report.versions_checked
    );
    assert!(report.ok);
    Ok(())
}

fn ts(r: &InvokeResult) -> String {
    format_timestamp(&r.timestamp)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ------------------------------------------------------------ the skill

/// Stock per SKU of one warehouse.
///
/// - `restock {"sku": s, "qty": n}` (write, n >= 1) → `{"sku": s, "qty": total}`
/// - `take {"sku": s, "qty": n}` (write, n >= 1; FAILED_PRECONDITION if the
///   stock is short) → `{"sku": s, "qty": left}`
/// - `stock {"sku": s}` (read) → `{"sku": s, "qty": n}` (0 if unknown)
struct Inventory;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Stock {
    /// BTreeMap: equal states encode to equal bytes.
    items: BTreeMap<String, u64>,
}

const METHODS: &[MethodSpec] = &[
    MethodSpec {
        name: "restock",
        kind: MethodKind::Write,
    },
    MethodSpec {
        name: "take",
        kind: MethodKind::Write,
    },
    MethodSpec {
        name: "stock",
        kind: MethodKind::Read,
    },
];

impl Skill for Inventory {
    type State = Stock;

    fn name(&self) -> &'static str {
        "inventory"
    }

    fn methods(&self) -> &'static [MethodSpec] {
        METHODS
    }

    fn handle(
        &self,
        state: &mut Stock,
        method: &str,
        payload: &Value,
    ) -> Result<Value, SkillError> {
        let sku = sku(payload)?;
        match method {
            "restock" => {
                let qty = qty(payload)?;
                let total = state.items.entry(sku.to_string()).or_default();
                *total = total
                    .checked_add(qty)
                    .ok_or_else(|| SkillError::FailedPrecondition("stock would overflow".into()))?;
                Ok(json!({"sku": sku, "qty": *total}))
            }
            "take" => {
                let qty = qty(payload)?;
                let have = state.items.get(sku).copied().unwrap_or(0);
                if have < qty {
                    return Err(SkillError::FailedPrecondition(format!(
                        "only {have} of `{sku}` in stock, cannot take {qty}"
                    )));
                }
                if have == qty {
                    state.items.remove(sku);
                } else {
                    state.items.insert(sku.to_string(), have - qty);
                }
                Ok(json!({"sku": sku, "qty": have - qty}))
            }
            "stock" => Ok(json!({"sku": sku, "qty": state.items.get(sku).copied().unwrap_or(0)})),
            other => Err(SkillError::InvalidArgument(format!(
                "unknown method `{other}`"
            ))),
        }
    }
}

fn sku(payload: &Value) -> Result<&str, SkillError> {
    let s = field(payload, "sku")?
        .as_str()
        .ok_or_else(|| SkillError::invalid("`sku` must be a string"))?;
    if s.is_empty() || s.len() > 64 {
        return Err(SkillError::invalid("`sku` must be 1..=64 bytes"));
    }
    Ok(s)
}

fn qty(payload: &Value) -> Result<u64, SkillError> {
    match field(payload, "qty")?.as_u64() {
        Some(n) if n >= 1 => Ok(n),
        _ => Err(SkillError::invalid("`qty` must be a positive integer")),
    }
}
