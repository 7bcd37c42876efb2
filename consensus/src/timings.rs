//! Where a Raft Ready's time goes, as histograms an operator can scrape.
//!
//! A Ready is one turn of the loop in `driver.rs`: send, apply what
//! committed, make the new entries durable (the group commit), then the
//! messages that must follow the write. When a write is slow, the first
//! question is which of these was slow: the disk (`persist`), the state
//! machine (`apply`), or the thread hand-offs around them (`ready` minus the
//! two). etcd answers the same question with its `wal_fsync_duration` and
//! `backend_commit_duration` histograms.
//!
//! Lock-free: the driver records from its own thread, a scrape reads with
//! relaxed loads. A scrape may see one observation in a bucket and not yet
//! in the sum; the count it reports is the sum of its buckets, so the
//! `+Inf` bucket and `_count` always agree.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds. From 100 µs (a fast NVMe
/// fdatasync) to 10 s (a disk that has all but stopped), about ×2.5 apart:
/// fine enough to tell a 1 ms sync from a 5 ms one, few enough that three
/// histograms stay a small scrape.
pub const BUCKET_BOUNDS_SECONDS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A Ready slower than this is logged with its breakdown. etcd warns at
/// the same figure for one apply; a Ready this slow holds every write
/// behind it for as long.
pub const SLOW_READY: Duration = Duration::from_millis(100);

/// Fewest seconds between two slow-Ready warnings, so a disk that stalls
/// every Ready cannot flood the log; the counter still counts every one.
pub const SLOW_READY_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// A histogram of durations with the fixed buckets above.
#[derive(Debug)]
pub struct DurationHistogram {
    /// Non-cumulative: `buckets[i]` counts observations in
    /// `(bound[i-1], bound[i]]`; the last one counts those above every
    /// bound.
    buckets: [AtomicU64; BUCKET_BOUNDS_SECONDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Default for DurationHistogram {
    fn default() -> Self {
        DurationHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

/// A point-in-time copy of a [`DurationHistogram`], cumulative as
/// Prometheus wants it.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations at or below it)`, the bounds
    /// of [`BUCKET_BOUNDS_SECONDS`] in order.
    pub cumulative: Vec<(f64, u64)>,
    /// Every observation, the `+Inf` bucket.
    pub count: u64,
    pub sum_seconds: f64,
}

impl DurationHistogram {
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let bucket = BUCKET_BOUNDS_SECONDS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(BUCKET_BOUNDS_SECONDS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0u64;
        let mut cumulative = Vec::with_capacity(BUCKET_BOUNDS_SECONDS.len());
        for (bound, bucket) in BUCKET_BOUNDS_SECONDS.iter().zip(&self.buckets) {
            running = running.saturating_add(bucket.load(Ordering::Relaxed));
            cumulative.push((*bound, running));
        }
        let overflow = self.buckets[BUCKET_BOUNDS_SECONDS.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            cumulative,
            count: running.saturating_add(overflow),
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// The driver's timings, shared with whoever renders metrics.
#[derive(Debug, Default)]
pub struct ReadyTimings {
    /// The durable write of one Ready that needed the barrier: appending
    /// its entries, the fdatasync, and any log compaction it carried.
    pub persist: DurationHistogram,
    /// Applying one Ready's committed entries to the state machine.
    pub apply: DurationHistogram,
    /// One whole Ready, from taking it to advancing past it, including the
    /// hand-off of the write to the blocking pool and back.
    pub ready: DurationHistogram,
    /// Readys slower than [`SLOW_READY`].
    pub slow_readys: AtomicU64,
}

/// One Ready's phases, as the driver measured them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ReadyBreakdown {
    pub(crate) total: Duration,
    /// `None` when the Ready needed no durable write.
    pub(crate) persist: Option<Duration>,
    pub(crate) apply: Duration,
    pub(crate) entries: usize,
}

impl ReadyTimings {
    /// Records one Ready; returns whether it was slow.
    pub(crate) fn record(&self, r: &ReadyBreakdown) -> bool {
        self.ready.observe(r.total);
        if let Some(persist) = r.persist {
            self.persist.observe(persist);
        }
        if !r.apply.is_zero() {
            self.apply.observe(r.apply);
        }
        let slow = r.total > SLOW_READY;
        if slow {
            self.slow_readys.fetch_add(1, Ordering::Relaxed);
        }
        slow
    }

    pub fn slow_readys(&self) -> u64 {
        self.slow_readys.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them_and_count_cumulatively() {
        let h = DurationHistogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.cumulative.len(), BUCKET_BOUNDS_SECONDS.len());
        let at = |bound: f64| {
            s.cumulative
                .iter()
                .find(|(b, _)| *b == bound)
                .map(|(_, n)| *n)
        };
        // 100 µs sits on a bound: Prometheus buckets are `le`, inclusive.
        assert_eq!(at(0.000_1), Some(2));
        assert_eq!(at(0.002_5), Some(2));
        assert_eq!(at(0.005), Some(3));
        // 60 s is above every bound: only `+Inf` (the count) holds it.
        assert_eq!(at(10.0), Some(3));
        assert!(
            (s.sum_seconds - 60.003_15).abs() < 1e-9,
            "{}",
            s.sum_seconds
        );
    }

    #[test]
    fn the_bounds_rise_strictly() {
        assert!(BUCKET_BOUNDS_SECONDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_ready_without_a_write_or_apply_counts_only_as_a_ready() {
        let t = ReadyTimings::default();
        let slow = t.record(&ReadyBreakdown {
            total: Duration::from_millis(150),
            ..Default::default()
        });
        assert!(slow);
        assert_eq!(t.slow_readys(), 1);
        assert_eq!(t.ready.snapshot().count, 1);
        assert_eq!(t.persist.snapshot().count, 0);
        assert_eq!(t.apply.snapshot().count, 0);
        let fast = t.record(&ReadyBreakdown {
            total: Duration::from_millis(2),
            persist: Some(Duration::from_millis(1)),
            apply: Duration::from_micros(300),
            entries: 3,
        });
        assert!(!fast);
        assert_eq!(t.slow_readys(), 1);
        assert_eq!(t.persist.snapshot().count, 1);
        assert_eq!(t.apply.snapshot().count, 1);
    }
}
