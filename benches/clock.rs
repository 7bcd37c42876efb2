//! Cluster clock costs: `Clock.Now` in-process (through `Core::now`, so the
//! capability check and the clock-health read are included) and the
//! per-sample cost of offset estimation (record one NTP exchange, recompute
//! the median and correct the HLC).
//!
//! Run: `cargo bench --bench clock`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use synapse_runtime::clock::{Hlc, ManualClock};
use synapse_runtime::clock_service::ClockService;
use synapse_runtime::{Node, NodeConfig, RuntimeError};

fn clock_now_in_process(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::builder(NodeConfig::embedded(dir.path()))
        .start()
        .expect("node");
    let token = node.root_token().to_string();
    let core = node.core().clone();
    // Every call queues an audit record, and the audit writer stores on
    // the order of 100 000 records/s; a caller faster than that fills the
    // queue and is refused (fail closed). An unpaced loop of ~1 us calls
    // does exactly that. So a refusal stops the clock, the writer gets an
    // untimed pause to drain, and the call is retried: the figure is the
    // caller-side cost while the queue has room (refused calls, cheap, are
    // still inside the timed total, so it errs high).
    const DRAIN_PAUSE: Duration = Duration::from_millis(50);
    let mut g = c.benchmark_group("clock");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(2));
    g.bench_function("now_in_process", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut start = Instant::now();
            let mut done = 0;
            while done < iters {
                match core.now(Some(&token)) {
                    Ok(t) => {
                        black_box(t);
                        done += 1;
                    }
                    Err(RuntimeError::ResourceExhausted(_)) => {
                        timed += start.elapsed();
                        std::thread::sleep(DRAIN_PAUSE);
                        start = Instant::now();
                    }
                    Err(e) => panic!("now: {e}"),
                }
            }
            timed + start.elapsed()
        })
    });
    g.finish();
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
