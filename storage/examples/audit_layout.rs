//! Why the audit trail has its own sled database (benches/README.md, "Audit
//! trail in its own database"): appends shaped like the audit trail (kept,
//! ~190-byte values, sequential keys) next to writes shaped like the Raft
//! log (650-byte entries, the oldest deleted once 20 000 are kept), in one
//! database or in two. Prints seconds and on-disk size per 50 000 records.
//!
//!     cargo run --release -p synapse-storage --example audit_layout -- shared
//!     cargo run --release -p synapse-storage --example audit_layout -- separate
//!
//! Each runs in a fresh temporary directory; `CHUNKS` (default 10) bounds it.

use std::path::Path;
use std::time::Instant;

/// Records per reported chunk.
const CHUNK: u64 = 50_000;
/// Records per write batch, about what one audit writer drain holds.
const BATCH: u64 = 16;
/// Raft log entries kept before the oldest is deleted (the default
/// compaction keeps about this many).
const LOG_KEPT: u64 = 20_000;

fn file_mib(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len() >> 20).unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let separate = match mode.as_str() {
        "shared" => false,
        "separate" => true,
        _ => return Err("usage: audit_layout shared|separate".into()),
    };
    let chunks: u64 = std::env::var("CHUNKS").map_or(Ok(10), |s| s.parse())?;
    let dir = tempfile::tempdir()?;
    let main_db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(256 << 20)
        .open()?;
    let audit_db = if separate {
        Some(
            sled::Config::new()
                .path(dir.path().join("audit"))
                .cache_capacity(16 << 20)
                .open()?,
        )
    } else {
        None
    };
    let log = main_db.open_tree("raft_log")?;
    let audit = audit_db.as_ref().unwrap_or(&main_db).open_tree("audit")?;
    let mut seq = 0u64;
    for chunk in 0..chunks {
        let started = Instant::now();
        for _ in 0..CHUNK / BATCH {
            let mut audit_batch = sled::Batch::default();
            let mut log_batch = sled::Batch::default();
            for _ in 0..BATCH {
                seq += 1;
                audit_batch.insert(&seq.to_be_bytes()[..], vec![0xa5u8; 190]);
                log_batch.insert(&seq.to_be_bytes()[..], vec![0x5au8; 650]);
                if seq > LOG_KEPT {
                    log_batch.remove(&(seq - LOG_KEPT).to_be_bytes()[..]);
                }
            }
            audit.apply_batch(audit_batch)?;
            log.apply_batch(log_batch)?;
            main_db.flush()?;
            if let Some(db) = &audit_db {
                db.flush()?;
            }
        }
        println!(
            "{mode} chunk {chunk}: {:.2} s, main db {} MiB, audit db {} MiB",
            started.elapsed().as_secs_f64(),
            file_mib(&dir.path().join("db")),
            file_mib(&dir.path().join("audit").join("db")),
        );
    }
    Ok(())
}
