//! The clock service: estimates this node's clock offset to the cluster and
//! decides whether the node can vouch for its timestamps.
//!
//! Each node samples each peer NTP-style (t1 send, t2 peer receive, t3 peer
//! send, t4 receive): offset = ((t2 - t1) + (t3 - t4)) / 2, uncertainty =
//! RTT / 2. Per peer it keeps a small window and uses the sample with the
//! smallest RTT (queueing only ever adds delay, so the fastest exchange is
//! the most truthful). The node's offset to the cluster is the **median of
//! {0 (itself)} ∪ {its offset to each peer}**: a majority of agreeing clocks
//! defines cluster time, a single skewed node (itself or a peer) cannot move
//! it, and no leader is needed to decide. The HLC's physical part is
//! corrected by that offset; a node whose offset exceeds the configured
//! maximum reports itself unhealthy, not ready, and gives up leadership.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::clock::Hlc;

/// Samples kept per peer: enough to ride out a few slow exchanges.
pub const SAMPLE_WINDOW: usize = 8;
/// A sample older than this no longer counts (the peer may be gone, or its
/// clock may have moved since).
pub const MAX_SAMPLE_AGE: Duration = Duration::from_secs(30);

/// Disagreement between consecutive samples, beyond both uncertainties,
/// that counts as a clock step rather than jitter.
pub const STEP_TOLERANCE_MICROS: u64 = 1_000;

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// peer clock − local clock, µs.
    pub offset_micros: i64,
    /// RTT / 2, µs.
    pub uncertainty_micros: u64,
    pub at: Instant,
}

/// One peer's view, for status and metrics.
#[derive(Debug, Clone, Copy)]
pub struct PeerClock {
    pub peer: u64,
    pub offset_micros: i64,
    pub uncertainty_micros: u64,
    pub age: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct ClockStatus {
    /// This node's clock − cluster clock, µs.
    pub offset_micros: i64,
    pub uncertainty_micros: u64,
    pub healthy: bool,
    pub problem: String,
    pub peers: Vec<PeerClock>,
}

pub struct ClockService {
    max_offset_micros: u64,
    samples: Mutex<HashMap<u64, VecDeque<Sample>>>,
    status: Mutex<ClockStatus>,
}

/// Computes offset and uncertainty from the four timestamps; `None` when
/// they are inconsistent (t4 before t1, or the peer's t3 before its t2).
pub fn ntp_sample(t1: u64, t2: u64, t3: u64, t4: u64) -> Option<(i64, u64)> {
    if t4 < t1 || t3 < t2 {
        return None;
    }
    let rtt = (t4 - t1).saturating_sub(t3 - t2);
    let (t1, t2, t3, t4) = (t1 as i128, t2 as i128, t3 as i128, t4 as i128);
    let offset = ((t2 - t1) + (t3 - t4)) / 2;
    Some((i64::try_from(offset).ok()?, rtt / 2))
}

impl ClockService {
    pub fn new(max_offset: Duration) -> Self {
        ClockService {
            max_offset_micros: u64::try_from(max_offset.as_micros()).unwrap_or(u64::MAX),
            samples: Mutex::new(HashMap::new()),
            status: Mutex::new(ClockStatus {
                healthy: true,
                ..Default::default()
            }),
        }
    }

    pub fn max_offset_micros(&self) -> u64 {
        self.max_offset_micros
    }

    /// Records one exchange with `peer`.
    pub fn record(&self, peer: u64, t1: u64, t2: u64, t3: u64, t4: u64) {
        let Some((offset, uncertainty)) = ntp_sample(t1, t2, t3, t4) else {
            return;
        };
        if let Ok(mut map) = self.samples.lock() {
            let window = map.entry(peer).or_default();
            if let Some(last) = window.back() {
                let jump = offset.abs_diff(last.offset_micros);
                if jump > uncertainty + last.uncertainty_micros + STEP_TOLERANCE_MICROS {
                    // A clock stepped (here or there): older samples describe
                    // a relation that no longer holds.
                    tracing::info!(
                        peer,
                        jump_us = jump,
                        "clock step detected; resetting samples"
                    );
                    window.clear();
                }
            }
            window.push_back(Sample {
                offset_micros: offset,
                uncertainty_micros: uncertainty,
                at: Instant::now(),
            });
            while window.len() > SAMPLE_WINDOW {
                window.pop_front();
            }
        }
    }

    /// Forgets a peer that left the cluster.
    pub fn forget(&self, peer: u64) {
        if let Ok(mut map) = self.samples.lock() {
            map.remove(&peer);
        }
    }

    /// Recomputes the node's offset, applies the correction to `hlc`, and
    /// returns the new status.
    pub fn recompute(&self, hlc: &Hlc) -> ClockStatus {
        let now = Instant::now();
        let mut peers = Vec::new();
        if let Ok(mut map) = self.samples.lock() {
            for (peer, window) in map.iter_mut() {
                window.retain(|s| now.duration_since(s.at) <= MAX_SAMPLE_AGE);
                if let Some(best) = window.iter().min_by_key(|s| s.uncertainty_micros) {
                    peers.push(PeerClock {
                        peer: *peer,
                        offset_micros: best.offset_micros,
                        uncertainty_micros: best.uncertainty_micros,
                        age: now.duration_since(best.at),
                    });
                }
            }
            map.retain(|_, w| !w.is_empty());
        }
        peers.sort_by_key(|p| p.peer);
        // local − peer for each peer, and 0 for this node itself.
        let mut candidates: Vec<(i64, u64)> = peers
            .iter()
            .map(|p| (p.offset_micros.saturating_neg(), p.uncertainty_micros))
            .collect();
        candidates.push((0, 0));
        candidates.sort();
        let (offset, uncertainty) = candidates[candidates.len() / 2];
        let healthy = offset.unsigned_abs() <= self.max_offset_micros;
        let problem = if healthy {
            String::new()
        } else {
            format!(
                "clock is {} ms {} the cluster (max {} ms): not serving timestamps, not leading",
                offset.unsigned_abs() / 1000,
                if offset > 0 { "ahead of" } else { "behind" },
                self.max_offset_micros / 1000
            )
        };
        hlc.set_offset_micros(offset.saturating_neg());
        let status = ClockStatus {
            offset_micros: offset,
            uncertainty_micros: uncertainty,
            healthy,
            problem,
            peers,
        };
        if let Ok(mut s) = self.status.lock() {
            if s.healthy != status.healthy {
                if status.healthy {
                    tracing::info!(offset_us = offset, "clock offset back within bounds");
                } else {
                    tracing::error!(offset_us = offset, "{}", status.problem);
                }
            }
            *s = status.clone();
        }
        status
    }

    pub fn status(&self) -> ClockStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn healthy(&self) -> bool {
        self.status.lock().map(|s| s.healthy).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn ntp_arithmetic() {
        // Peer 2 s ahead, 10 ms each way, 1 ms processing.
        let (t1, t2, t3, t4) = (1_000_000, 3_010_000, 3_011_000, 1_021_000);
        assert_eq!(ntp_sample(t1, t2, t3, t4), Some((2_000_000, 10_000)));
        assert_eq!(ntp_sample(10, 0, 0, 5), None, "t4 before t1");
        assert_eq!(ntp_sample(0, 10, 5, 20), None, "t3 before t2");
    }

    #[test]
    fn min_rtt_sample_wins_and_median_ignores_one_skewed_peer() {
        let hlc = Hlc::new(1, Arc::new(ManualClock::new(1_000_000)));
        let svc = ClockService::new(Duration::from_millis(500));
        // Peer 2 agrees with us; a slow exchange suggests otherwise but loses.
        svc.record(2, 100, 200_150, 200_160, 400_000);
        svc.record(2, 100, 150, 160, 210);
        // Peer 3 is 2 s ahead.
        svc.record(3, 100, 2_000_150, 2_000_160, 210);
        let s = svc.recompute(&hlc);
        assert_eq!(s.offset_micros, 0, "one skewed peer cannot move the median");
        assert!(s.healthy);
        let p2 = s.peers.iter().find(|p| p.peer == 2).unwrap();
        assert!(p2.offset_micros.abs() <= p2.uncertainty_micros as i64);
    }

    #[test]
    fn a_clock_step_replaces_the_old_estimate_at_once() {
        let hlc = Hlc::new(1, Arc::new(ManualClock::new(0)));
        let svc = ClockService::new(Duration::from_millis(500));
        // A very precise old sample says peer 2 is 2 s ahead ...
        svc.record(2, 100, 2_000_100, 2_000_100, 100);
        svc.record(3, 100, 100, 100, 102);
        assert!(!svc.recompute(&hlc).peers.is_empty());
        // ... then its clock steps back to agree with ours (a noisier sample).
        svc.record(2, 1000, 1500, 1500, 2000);
        let s = svc.recompute(&hlc);
        let p2 = s.peers.iter().find(|p| p.peer == 2).unwrap();
        assert!(
            p2.offset_micros.abs() <= p2.uncertainty_micros as i64,
            "stale pre-step sample still used: {p2:?}"
        );
    }

    #[test]
    fn a_skewed_node_sees_itself_off_and_becomes_unhealthy() {
        let hlc = Hlc::new(3, Arc::new(ManualClock::new(10_000_000)));
        let svc = ClockService::new(Duration::from_millis(500));
        // Both peers are 2 s behind this node.
        svc.record(1, 2_000_100, 150, 160, 2_000_210);
        svc.record(2, 2_000_100, 150, 160, 2_000_210);
        let s = svc.recompute(&hlc);
        assert!((s.offset_micros - 2_000_000).unsigned_abs() <= s.uncertainty_micros + 1);
        assert!(!s.healthy);
        assert!(s.problem.contains("ahead"));
        assert_eq!(
            hlc.offset_micros(),
            -s.offset_micros,
            "the HLC is corrected toward the cluster"
        );
    }
}
