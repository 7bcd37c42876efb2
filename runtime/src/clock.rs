//! Hybrid logical clock (HLC).
//!
//! Owns: issuing timestamps (physical µs, logical counter, node id) that are
//! strictly increasing on this node and that never fall behind any timestamp
//! the node has observed (committed entries, the stored high-water mark after
//! a restart). Also owns the offset correction applied to the physical
//! reading; the clock *service* (peer sampling, health) sets that offset.
//!
//! Must never: go backwards (whatever the physical clock does), panic on any
//! observed input, or block on anything but its own tiny critical section —
//! `now()` is on the hot path (≈ 30 ns budget).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use synapse_storage::Timestamp;

/// Source of physical time, injectable for tests (skew, jumps).
pub trait PhysicalClock: Send + Sync + 'static {
    /// Microseconds since the UNIX epoch, as this clock believes.
    fn now_micros(&self) -> u64;
}

/// The operating system's wall clock (`SystemTime` since `UNIX_EPOCH`, in µs).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl PhysicalClock for SystemClock {
    fn now_micros(&self) -> u64 {
        // A wall clock set before 1970 is a misconfiguration; reading 0 keeps
        // the HLC correct (it simply runs on its logical counter).
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// The system clock plus an adjustable skew: the injection point for clock
/// skew tests (in-process, or through `synapse serve --debug-clock-skew-file`).
#[derive(Debug, Default)]
pub struct SkewedClock {
    skew_micros: AtomicI64,
}

impl SkewedClock {
    pub fn new(skew_micros: i64) -> Self {
        SkewedClock {
            skew_micros: AtomicI64::new(skew_micros),
        }
    }

    pub fn set_skew_micros(&self, skew: i64) {
        self.skew_micros.store(skew, Ordering::Relaxed);
    }

    pub fn skew_micros(&self) -> i64 {
        self.skew_micros.load(Ordering::Relaxed)
    }
}

impl PhysicalClock for SkewedClock {
    fn now_micros(&self) -> u64 {
        SystemClock
            .now_micros()
            .saturating_add_signed(self.skew_micros())
    }
}

/// Test clock: settable and advanceable, so tests can model skew between
/// nodes and backwards/forwards jumps without sleeping.
#[derive(Debug, Default)]
pub struct ManualClock {
    micros: AtomicU64,
}

impl ManualClock {
    pub fn new(start_micros: u64) -> Self {
        ManualClock {
            micros: AtomicU64::new(start_micros),
        }
    }

    /// Sets the reading, possibly backwards (models an NTP step).
    pub fn set(&self, micros: u64) {
        self.micros.store(micros, Ordering::SeqCst);
    }

    /// Moves the reading forwards by `micros` (saturating).
    pub fn advance(&self, micros: u64) {
        // fetch_update cannot fail here: the closure always returns Some.
        let _ = self
            .micros
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |m| {
                Some(m.saturating_add(micros))
            });
    }
}

impl PhysicalClock for ManualClock {
    fn now_micros(&self) -> u64 {
        self.micros.load(Ordering::SeqCst)
    }
}

/// Hybrid logical clock for one node. `Send + Sync`; share it behind an `Arc`.
///
/// The state is (physical, logical) of the largest timestamp issued or
/// observed. It does not fit in one `AtomicU64` (u64 + u32), so it lives
/// behind a `Mutex` whose critical section is a compare and an increment:
/// uncontended, a futex mutex costs two atomic operations.
pub struct Hlc {
    node_id: u64,
    clock: Arc<dyn PhysicalClock>,
    offset_micros: AtomicI64,
    last: Mutex<Timestamp>,
}

impl std::fmt::Debug for Hlc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hlc")
            .field("node_id", &self.node_id)
            .field("offset_micros", &self.offset_micros())
            .field("last", &self.last())
            .finish()
    }
}

impl Hlc {
    pub fn new(node_id: u64, clock: Arc<dyn PhysicalClock>) -> Hlc {
        Hlc {
            node_id,
            clock,
            offset_micros: AtomicI64::new(0),
            last: Mutex::new(Timestamp {
                physical_micros: 0,
                logical: 0,
                node_id,
            }),
        }
    }

    /// Estimated offset to the cluster, in µs, added to the physical reading
    /// (set by the clock service; default 0).
    pub fn set_offset_micros(&self, offset: i64) {
        self.offset_micros.store(offset, Ordering::Relaxed);
    }

    pub fn offset_micros(&self) -> i64 {
        self.offset_micros.load(Ordering::Relaxed)
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The uncorrected physical clock: what peers compare when they
    /// estimate offsets (comparing corrected clocks would chase itself).
    pub fn raw_physical_micros(&self) -> u64 {
        self.clock.now_micros()
    }

    /// Offset-corrected physical reading, saturating at both ends.
    pub fn corrected_physical_micros(&self) -> u64 {
        self.corrected_physical()
    }

    /// Offset-corrected physical reading, saturating at both ends.
    fn corrected_physical(&self) -> u64 {
        self.clock
            .now_micros()
            .saturating_add_signed(self.offset_micros())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Timestamp> {
        // The critical sections below cannot panic, so poisoning is
        // impossible in practice; if it ever happened the stored value is
        // still a valid high-water mark, so keep using it.
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns a timestamp strictly greater than every timestamp previously
    /// returned by `now()` or passed to `observe()`.
    ///
    /// Physical part = max(corrected physical now, last physical). If that
    /// equals the last physical part the logical counter is incremented; on
    /// logical overflow the physical part is bumped by 1 µs instead (it then
    /// runs slightly ahead of real time, which the next readings absorb).
    pub fn now(&self) -> Timestamp {
        // Read the physical clock outside the lock: it is the slow part.
        let pt = self.corrected_physical();
        let mut last = self.lock();
        let (physical, logical) = if pt > last.physical_micros {
            (pt, 0)
        } else if last.logical < u32::MAX {
            (last.physical_micros, last.logical + 1)
        } else {
            // Saturating: at u64::MAX µs (year ~586 000) strictness cannot be
            // kept; not reachable from a sane clock or a sane peer.
            (last.physical_micros.saturating_add(1), 0)
        };
        let ts = Timestamp {
            physical_micros: physical,
            logical,
            node_id: self.node_id,
        };
        *last = ts;
        ts
    }

    /// HLC receive rule: after `observe(ts)`, `now() > ts`. Used when applying
    /// committed entries and on restart (with the stored high-water mark).
    ///
    /// A far-future `ts` is accepted: refusing it would let `now()` issue
    /// timestamps below a committed one, breaking the per-instance ordering
    /// invariant. Detecting a runaway peer clock is the clock service's job.
    pub fn observe(&self, ts: Timestamp) {
        let mut last = self.lock();
        if ts > *last {
            *last = ts;
        }
    }

    /// Last issued or observed value, without advancing.
    pub fn last(&self) -> Timestamp {
        *self.lock()
    }
}

/// Formats a timestamp for humans: RFC 3339 with µs, then `/logical@node`,
/// e.g. `2026-11-22T03:04:05.123456Z/3@1`. Physical values outside what
/// chrono can represent are printed as raw microseconds (`<n>us/…`).
pub fn format_timestamp(ts: &Timestamp) -> String {
    let when = i64::try_from(ts.physical_micros)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_micros)
        .map(|dt| dt.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_else(|| format!("{}us", ts.physical_micros));
    format!("{}/{}@{}", when, ts.logical, ts.node_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn hlc_with_manual(start: u64) -> (Hlc, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(start));
        (Hlc::new(7, clock.clone()), clock)
    }

    #[test]
    fn uses_physical_time_when_it_moves_forward() {
        let (hlc, clock) = hlc_with_manual(1_000);
        let a = hlc.now();
        assert_eq!((a.physical_micros, a.logical, a.node_id), (1_000, 0, 7));
        clock.advance(5);
        let b = hlc.now();
        assert_eq!((b.physical_micros, b.logical), (1_005, 0));
        assert_eq!(hlc.last(), b);
    }

    #[test]
    fn monotonic_when_physical_clock_jumps_backwards() {
        let (hlc, clock) = hlc_with_manual(1_000_000);
        let a = hlc.now();
        clock.set(10); // NTP step far backwards
        let b = hlc.now();
        let c = hlc.now();
        assert!(b > a && c > b, "{a:?} {b:?} {c:?}");
        assert_eq!(b.physical_micros, 1_000_000);
        assert_eq!((b.logical, c.logical), (1, 2));
        // Once physical time catches up, logical resets.
        clock.set(1_000_001);
        let d = hlc.now();
        assert_eq!((d.physical_micros, d.logical), (1_000_001, 0));
        assert!(d > c);
    }

    #[test]
    fn observe_far_future_makes_now_exceed_it() {
        let (hlc, _clock) = hlc_with_manual(1_000);
        let future = Timestamp {
            physical_micros: 9_000_000_000,
            logical: 42,
            node_id: 99,
        };
        hlc.observe(future);
        assert_eq!(hlc.last(), future);
        let t = hlc.now();
        assert!(t > future, "{t:?} <= {future:?}");
        assert_eq!(t.node_id, 7);
        // Observing something older changes nothing.
        hlc.observe(Timestamp {
            physical_micros: 5,
            logical: 0,
            node_id: 1,
        });
        assert_eq!(hlc.last(), t);
        assert!(hlc.now() > t);
    }

    #[test]
    fn observe_equal_physical_and_logical_with_higher_node_still_exceeded() {
        let (hlc, _clock) = hlc_with_manual(1_000);
        let t = hlc.now();
        let peer = Timestamp {
            node_id: u64::MAX,
            ..t
        };
        hlc.observe(peer);
        assert!(hlc.now() > peer);
    }

    #[test]
    fn logical_overflow_bumps_physical() {
        let (hlc, _clock) = hlc_with_manual(1_000);
        let at_max = Timestamp {
            physical_micros: 2_000,
            logical: u32::MAX,
            node_id: 3,
        };
        hlc.observe(at_max);
        let t = hlc.now();
        assert_eq!((t.physical_micros, t.logical), (2_001, 0));
        assert!(t > at_max);
    }

    #[test]
    fn offset_is_applied() {
        let (hlc, _clock) = hlc_with_manual(1_000_000);
        assert_eq!(hlc.offset_micros(), 0);
        hlc.set_offset_micros(500);
        assert_eq!(hlc.offset_micros(), 500);
        assert_eq!(hlc.now().physical_micros, 1_000_500);

        let (hlc2, _c) = hlc_with_manual(1_000_000);
        hlc2.set_offset_micros(-250);
        assert_eq!(hlc2.now().physical_micros, 999_750);
        // A negative offset larger than the reading saturates instead of wrapping.
        hlc2.set_offset_micros(i64::MIN);
        let t = hlc2.now();
        assert_eq!((t.physical_micros, t.logical), (999_750, 1));
    }

    #[test]
    fn strictly_increasing_across_threads() {
        // Frozen physical clock: every timestamp comes from the logical
        // counter, the worst case for collisions.
        let clock = Arc::new(ManualClock::new(1_000));
        let hlc = Arc::new(Hlc::new(1, clock.clone()));
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let hlc = hlc.clone();
                let clock = clock.clone();
                std::thread::spawn(move || {
                    let mut out = Vec::with_capacity(5_000);
                    for n in 0..5_000u64 {
                        if i == 0 && n % 100 == 0 {
                            clock.advance(1); // mix in physical progress
                        }
                        out.push(hlc.now());
                    }
                    out
                })
            })
            .collect();
        let mut all = HashSet::new();
        let mut total = 0;
        for h in handles {
            let seq = h.join().expect("test thread panicked");
            for w in seq.windows(2) {
                assert!(w[1] > w[0], "not increasing within a thread: {w:?}");
            }
            total += seq.len();
            all.extend(seq);
        }
        assert_eq!(all.len(), total, "duplicate timestamps across threads");
    }

    #[test]
    fn system_clock_is_after_2020() {
        // 2020-01-01T00:00:00Z in µs.
        assert!(SystemClock.now_micros() > 1_577_836_800_000_000);
    }

    #[test]
    fn formats_rfc3339_with_micros_logical_and_node() {
        let ts = Timestamp {
            // 2026-11-22T03:04:05.123456Z
            physical_micros: 1_795_316_645_123_456,
            logical: 3,
            node_id: 1,
        };
        assert_eq!(format_timestamp(&ts), "2026-11-22T03:04:05.123456Z/3@1");
        let huge = Timestamp {
            physical_micros: u64::MAX,
            logical: 0,
            node_id: 2,
        };
        assert_eq!(format_timestamp(&huge), format!("{}us/0@2", u64::MAX));
    }
}
