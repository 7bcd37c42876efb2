//! Deterministic simulation of the cluster clock: N nodes, each with a
//! `ManualClock` (its own skew), an `Hlc` and a `ClockService`, exchanging
//! NTP-style samples over a simulated network whose one-way delays are drawn
//! from a seeded RNG (asymmetric, with occasional slow outliers). Skews are
//! injected, changed and jumped backwards mid-run.
//!
//! After every step it checks:
//! - once samples are fresh, each node's estimate of each peer lies within
//!   the reported uncertainty of the true (injected) offset;
//! - a node whose skew exceeds the maximum reports itself unhealthy, and the
//!   others stay healthy (a single skewed clock cannot move the median);
//! - HLC timestamps issued by every node strictly increase, across jumps;
//! - when the skew is removed the node becomes healthy again.
//!
//! A failing seed is printed; `CLOCK_SIM_SEED=<n>` replays it exactly.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use synapse_runtime::clock::{Hlc, ManualClock, PhysicalClock};
use synapse_runtime::clock_service::ClockService;
use synapse_storage::Timestamp;

const MAX_OFFSET: Duration = Duration::from_millis(500);

struct SimNode {
    clock: Arc<ManualClock>,
    hlc: Hlc,
    service: ClockService,
    skew_us: i64,
    last_issued: Timestamp,
}

/// True time advances in `now_us`; each node reads now + its skew.
struct World {
    rng: StdRng,
    now_us: u64,
    nodes: Vec<SimNode>,
    seed: u64,
    step: usize,
}

impl World {
    fn new(seed: u64, n: usize) -> World {
        let start = 1_800_000_000_000_000u64; // 2027, far from 0 so skews never underflow
        let nodes = (0..n)
            .map(|i| {
                let clock = Arc::new(ManualClock::new(start));
                SimNode {
                    hlc: Hlc::new(i as u64 + 1, clock.clone()),
                    clock,
                    service: ClockService::new(MAX_OFFSET),
                    skew_us: 0,
                    last_issued: Timestamp::default(),
                }
            })
            .collect();
        World {
            rng: StdRng::seed_from_u64(seed),
            now_us: start,
            nodes,
            seed,
            step: 0,
        }
    }

    fn fail(&self, msg: String) -> ! {
        panic!("CLOCK SIM VIOLATION seed={} step={}: {msg}\nreplay: CLOCK_SIM_SEED={} cargo test --test clock_sim", self.seed, self.step, self.seed)
    }

    fn advance(&mut self, us: u64) {
        self.now_us += us;
        for n in &self.nodes {
            n.clock.set(self.now_us.saturating_add_signed(n.skew_us));
        }
    }

    fn set_skew(&mut self, node: usize, skew_us: i64) {
        self.nodes[node].skew_us = skew_us;
        self.advance(0);
    }

    /// One-way network delay: mostly 20–300 µs, sometimes a slow outlier.
    fn delay(&mut self) -> u64 {
        if self.rng.gen_bool(0.1) {
            self.rng.gen_range(5_000..50_000)
        } else {
            self.rng.gen_range(20..300)
        }
    }

    /// `a` samples `b`: t1 on a, deliver, t2/t3 on b, deliver back, t4 on a.
    fn sample(&mut self, a: usize, b: usize) {
        let t1 = self.nodes[a].clock.now_micros();
        let d = self.delay();
        self.advance(d);
        let t2 = self.nodes[b].clock.now_micros();
        let processing = self.rng.gen_range(1..20);
        self.advance(processing);
        let t3 = self.nodes[b].clock.now_micros();
        let d = self.delay();
        self.advance(d);
        let t4 = self.nodes[a].clock.now_micros();
        self.nodes[a].service.record(b as u64 + 1, t1, t2, t3, t4);
    }

    fn round(&mut self) {
        let n = self.nodes.len();
        for a in 0..n {
            for b in 0..n {
                if a != b {
                    self.sample(a, b);
                }
            }
        }
        for node in &self.nodes {
            node.service.recompute(&node.hlc);
        }
        self.issue_timestamps();
    }

    fn issue_timestamps(&mut self) {
        for i in 0..self.nodes.len() {
            let ts = self.nodes[i].hlc.now();
            if ts <= self.nodes[i].last_issued {
                let last = self.nodes[i].last_issued;
                self.fail(format!("node {} issued {ts:?} after {last:?}", i + 1));
            }
            self.nodes[i].last_issued = ts;
        }
    }

    fn check_estimates(&self) {
        for (a, node) in self.nodes.iter().enumerate() {
            for p in node.service.status().peers {
                let b = p.peer as usize - 1;
                let truth = self.nodes[b].skew_us - self.nodes[a].skew_us;
                if (p.offset_micros - truth).unsigned_abs() > p.uncertainty_micros {
                    self.fail(format!(
                        "node {} estimates peer {} at {} µs ± {} µs, truth {truth} µs",
                        a + 1,
                        p.peer,
                        p.offset_micros,
                        p.uncertainty_micros
                    ));
                }
            }
        }
    }

    fn check_health(&self, skewed: Option<usize>) {
        for (i, node) in self.nodes.iter().enumerate() {
            let s = node.service.status();
            let should_be_healthy = match skewed {
                Some(k) if k == i => {
                    self.nodes[k].skew_us.unsigned_abs() <= MAX_OFFSET.as_micros() as u64 / 2
                }
                _ => true,
            };
            let clearly_unhealthy = skewed == Some(i)
                && self.nodes[i].skew_us.unsigned_abs() >= 2 * MAX_OFFSET.as_micros() as u64;
            if clearly_unhealthy && s.healthy {
                self.fail(format!(
                    "node {} is {} µs off but reports healthy",
                    i + 1,
                    self.nodes[i].skew_us
                ));
            }
            if should_be_healthy && !s.healthy {
                self.fail(format!("node {} reports unhealthy: {}", i + 1, s.problem));
            }
        }
    }

    fn settle(&mut self, rounds: usize, skewed: Option<usize>) {
        for _ in 0..rounds {
            self.step += 1;
            self.advance(1_000_000);
            self.round();
        }
        self.check_estimates();
        self.check_health(skewed);
    }
}

fn run_seed(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let n = if rng.gen_bool(0.5) { 3 } else { 5 };
    let mut w = World::new(seed, n);
    w.settle(3, None);

    // Skew one node by ±(1..=3) s.
    let k = rng.gen_range(0..n);
    let sign = if rng.gen_bool(0.5) { 1 } else { -1 };
    let skew = sign * rng.gen_range(1_000_000..=3_000_000i64);
    w.set_skew(k, skew);
    // Timestamps keep increasing immediately, before any sample sees the jump.
    w.issue_timestamps();
    w.settle(3, Some(k));

    // Jump it the other way (backwards if it was ahead).
    w.set_skew(k, -skew);
    w.issue_timestamps();
    w.settle(3, Some(k));

    // Remove the skew: it recovers.
    w.set_skew(k, 0);
    w.issue_timestamps();
    w.settle(3, None);
}

#[test]
fn clock_simulation_seeds() {
    if let Ok(seed) = std::env::var("CLOCK_SIM_SEED") {
        run_seed(seed.parse().expect("CLOCK_SIM_SEED must be an integer"));
        return;
    }
    let seeds: u64 = std::env::var("CLOCK_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    for seed in 0..seeds {
        run_seed(seed);
    }
    eprintln!("clock simulation: {seeds} seeds passed");
}

#[test]
fn a_seed_replays_identically() {
    let trace = |seed: u64| {
        let mut w = World::new(seed, 3);
        w.set_skew(2, 2_000_000);
        w.settle(3, Some(2));
        w.nodes
            .iter()
            .map(|n| {
                let s = n.service.status();
                (
                    s.offset_micros,
                    s.uncertainty_micros,
                    s.healthy,
                    n.last_issued,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(trace(42), trace(42));
}
