//! The leader's read lease: how a leader answers a linearizable read without
//! a ReadIndex round (Raft thesis §6.4.1; TiKV's "lease read").
//!
//! Why it is safe. With `check_quorum` on, a raft-rs follower refuses to
//! vote (or pre-vote) while `election_elapsed < election_tick`, counted in
//! its own ticks since it last heard from the leader; only a leadership
//! transfer (`MsgTimeoutNow`, a forced campaign) bypasses that. When a
//! ReadIndex round that this leader registered at instant `at` completes, a
//! quorum heard a heartbeat sent after `at`, so no other leader can be
//! elected before `at + (election_tick - 1) * tick` (the first tick after a
//! heartbeat may fall at once, hence the `- 1`). A node that restarts votes
//! freely but does not campaign before its own randomized timeout
//! (`>= election_tick` ticks), so a quorum formed with it still ends after
//! that point. The lease is half of it: the margin covers clock rate error
//! and a follower whose tick ran early. Until then, acknowledged writes are
//! all on this leader, applied before their acknowledgement, so its
//! committed state is fresh.
//!
//! What this module must never do: grant a lease across a term or role
//! change, or after a leadership transfer began (the driver revokes it
//! before `MsgTimeoutNow` leaves). Members must share `tick` and
//! `election_tick`: a follower with a shorter election timeout shortens
//! the real lease.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The lease is this fraction of the guaranteed no-election window: room
/// for clock rate error and a follower's tick running early.
const LEASE_SAFETY_DIVISOR: u32 = 2;

/// How long a lease lasts past the start of the ReadIndex round that
/// granted it. Zero (no lease) when the election timeout is one tick.
pub fn lease_duration(tick: Duration, election_tick: usize) -> Duration {
    let whole_ticks = u32::try_from(election_tick.saturating_sub(1)).unwrap_or(u32::MAX);
    tick.saturating_mul(whole_ticks) / LEASE_SAFETY_DIVISOR
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Grant {
    term: u64,
    until: Instant,
}

/// The lease, shared between the driver (which grants and revokes it) and
/// every handle (which asks whether it holds).
#[derive(Debug, Default)]
pub struct ReadLease {
    grant: Mutex<Option<Grant>>,
    /// A read asked since the driver last renewed: keep the lease fresh.
    wanted: AtomicBool,
}

impl ReadLease {
    /// The term in which this node leads with a lease valid at `now`, if
    /// any. Also tells the driver that reads want the lease kept fresh.
    pub fn valid_term(&self, now: Instant) -> Option<u64> {
        self.wanted.store(true, Ordering::Relaxed);
        let grant = *self.grant.lock().ok()?;
        grant.filter(|g| now < g.until).map(|g| g.term)
    }

    /// Extends the lease of `term` to `until`; never shortens it within a
    /// term, and a new term replaces an old grant.
    pub(crate) fn extend(&self, term: u64, until: Instant) {
        let mut grant = self
            .grant
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match *grant {
            Some(g) if g.term == term && g.until >= until => {}
            _ => *grant = Some(Grant { term, until }),
        }
    }

    /// Ends the lease at once.
    pub(crate) fn revoke(&self) {
        *self
            .grant
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }

    /// Whether a read asked for the lease since the last call.
    pub(crate) fn take_wanted(&self) -> bool {
        self.wanted.swap(false, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_is_half_the_guaranteed_window() {
        let tick = Duration::from_millis(100);
        assert_eq!(lease_duration(tick, 10), Duration::from_millis(450));
        assert_eq!(lease_duration(tick, 1), Duration::ZERO);
        assert_eq!(lease_duration(tick, 0), Duration::ZERO);
    }

    #[test]
    fn valid_only_before_until_and_only_for_its_term() {
        let lease = ReadLease::default();
        let t0 = Instant::now();
        assert_eq!(lease.valid_term(t0), None);
        lease.extend(3, t0 + Duration::from_millis(10));
        assert_eq!(lease.valid_term(t0), Some(3));
        assert_eq!(lease.valid_term(t0 + Duration::from_millis(10)), None);
        // A later term replaces the grant even with an earlier end.
        lease.extend(4, t0 + Duration::from_millis(5));
        assert_eq!(lease.valid_term(t0), Some(4));
    }

    #[test]
    fn never_shortened_within_a_term_and_revoked_at_once() {
        let lease = ReadLease::default();
        let t0 = Instant::now();
        lease.extend(2, t0 + Duration::from_millis(20));
        lease.extend(2, t0 + Duration::from_millis(5));
        assert_eq!(lease.valid_term(t0 + Duration::from_millis(10)), Some(2));
        lease.revoke();
        assert_eq!(lease.valid_term(t0), None);
    }

    #[test]
    fn asking_marks_the_lease_wanted_once() {
        let lease = ReadLease::default();
        assert!(!lease.take_wanted());
        let _ = lease.valid_term(Instant::now());
        assert!(lease.take_wanted());
        assert!(!lease.take_wanted());
    }
}
