//! Cluster clock costs: `Clock.Now` in-process (through `Core::now`, so the
//! capability check and the clock-health read are included) and the
//! per-sample cost of offset estimation (record one NTP exchange, recompute
//! the median and correct the HLC).
//!
//! Run: `cargo bench --bench clock`

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use synapse_runtime::clock::{Hlc, ManualClock};
use synapse_runtime::clock_service::ClockService;
use synapse_runtime::{Node, NodeConfig};

fn clock_now_in_process(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::builder(NodeConfig::embedded(dir.path()))
        .start()
        .expect("node");
    let token = node.root_token().to_string();
    let core = node.core().clone();
    c.bench_function("clock/now_in_process", |b| {
        b.iter(|| core.now(Some(&token)).expect("now"));
    });
    node.shutdown();
}

fn offset_sample(c: &mut Criterion) {
    let hlc = Hlc::new(1, Arc::new(ManualClock::new(1_000_000)));
    let svc = ClockService::new(Duration::from_millis(500));
    let mut t = 1_000_000u64;
    c.bench_function("clock/offset_sample_record_and_recompute_2_peers", |b| {
        b.iter(|| {
            t += 1000;
            svc.record(2, t, t + 40, t + 45, t + 90);
            svc.record(3, t, t + 2_000_040, t + 2_000_045, t + 95);
            svc.recompute(&hlc)
        });
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(3));
    targets = clock_now_in_process, offset_sample
}
criterion_main!(benches);
