//! The leader's read lease: how a leader answers a linearizable read without
//! a ReadIndex round (Raft thesis §6.4.1; TiKV's "lease read").
//!
//! Why it is safe. With `check_quorum` on, a raft-rs follower refuses to
//! vote (or pre-vote) while `election_elapsed < election_tick`, counted in
//! its own ticks since it last heard from the leader. When a ReadIndex
//! round that this leader registered at instant `at` completes, a quorum
//! heard a heartbeat sent after `at`, so no other leader can be elected
//! before `at + (election_tick - 1) * tick` (the first tick after a
//! heartbeat may fall at once, hence the `- 1`). The lease is half of it:
//! the margin covers clock rate error and a follower whose tick ran early.
//!
//! Three ways around the followers' refusal, each closed by the driver:
//! - a leadership transfer: `MsgTimeoutNow` makes its target campaign with
//!   force, past every follower's check. The lease ends before the message
//!   leaves, and no lease is granted again in that term, because a late
//!   `MsgTimeoutNow` still works after raft-rs abandoned the transfer;
//! - a restart: a node that starts knows no leader and would vote at once,
//!   for a candidate that lost touch with the leader long ago. The driver
//!   drops vote requests for `election_tick` ticks after start, as if it
//!   had just heard from a leader;
//! - a forced campaign on a follower: the driver has none.
//!
//! What the lease proves is that no other leader exists; the read must
//! still see every entry any node may already have shown to a client. The
//! leader sends a commit index to its followers before applying it, so a
//! follower can serve an entry first. A lease read therefore waits until
//! this node has applied the highest commit index it has sent
//! ([`ReadLease::valid`] returns it).
//!
//! What this module must never do: grant a lease across a term or role
//! change. Members must share `tick` and `election_tick`: a follower with a
//! shorter election timeout shortens the real lease.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

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
#[derive(Debug)]
pub struct ReadLease {
    grant: Mutex<Option<Grant>>,
    /// A read asked since the driver last renewed: keep the lease fresh.
    wanted: AtomicBool,
    /// The highest commit index this node has sent to any peer.
    commit_sent: AtomicU64,
    /// This node's applied index, for reads waiting on `apply_to`.
    applied: watch::Sender<u64>,
}

impl Default for ReadLease {
    fn default() -> Self {
        ReadLease {
            grant: Mutex::new(None),
            wanted: AtomicBool::new(false),
            commit_sent: AtomicU64::new(0),
            applied: watch::Sender::new(0),
        }
    }
}

/// What a lease read needs: the lease's term, and the index this node must
/// have applied before it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasedRead {
    pub term: u64,
    pub apply_to: u64,
}

impl ReadLease {
    /// The lease valid at `now`, if any, with the index to apply before
    /// reading. Also tells the driver that reads want the lease kept fresh.
    pub fn valid(&self, now: Instant) -> Option<LeasedRead> {
        self.wanted.store(true, Ordering::Relaxed);
        let grant = (*self.grant.lock().ok()?).filter(|g| now < g.until)?;
        Some(LeasedRead {
            term: grant.term,
            apply_to: self.commit_sent.load(Ordering::SeqCst),
        })
    }

    /// Whether this node has applied `index` within `limit`.
    pub async fn wait_applied(&self, index: u64, limit: Duration) -> bool {
        if *self.applied.borrow() >= index {
            return true;
        }
        let mut applied = self.applied.subscribe();
        let reached = async move { applied.wait_for(|a| *a >= index).await.is_ok() };
        matches!(tokio::time::timeout(limit, reached).await, Ok(true))
    }

    pub(crate) fn note_applied(&self, index: u64) {
        self.applied.send_if_modified(|a| {
            let moved = index > *a;
            *a = (*a).max(index);
            moved
        });
    }

    /// Called before messages carrying commit index `commit` leave.
    pub(crate) fn note_commit_sent(&self, commit: u64) {
        self.commit_sent.fetch_max(commit, Ordering::SeqCst);
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

    fn term(lease: &ReadLease, now: Instant) -> Option<u64> {
        lease.valid(now).map(|r| r.term)
    }

    #[test]
    fn a_read_must_apply_the_highest_commit_index_sent() {
        let lease = ReadLease::default();
        let t0 = Instant::now();
        lease.extend(1, t0 + Duration::from_millis(10));
        lease.note_commit_sent(7);
        lease.note_commit_sent(5);
        assert_eq!(
            lease.valid(t0),
            Some(LeasedRead {
                term: 1,
                apply_to: 7
            })
        );
    }

    #[tokio::test]
    async fn a_read_waits_for_apply_to_reach_its_index() {
        let lease = std::sync::Arc::new(ReadLease::default());
        lease.note_applied(3);
        assert!(lease.wait_applied(3, Duration::from_millis(1)).await);
        assert!(!lease.wait_applied(4, Duration::from_millis(1)).await);
        let later = lease.clone();
        let waiter =
            tokio::spawn(async move { later.wait_applied(5, Duration::from_secs(60)).await });
        lease.note_applied(4);
        lease.note_applied(5);
        assert!(waiter.await.expect("waiter"));
    }

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
        assert_eq!(term(&lease, t0), None);
        lease.extend(3, t0 + Duration::from_millis(10));
        assert_eq!(term(&lease, t0), Some(3));
        assert_eq!(term(&lease, t0 + Duration::from_millis(10)), None);
        // A later term replaces the grant even with an earlier end.
        lease.extend(4, t0 + Duration::from_millis(5));
        assert_eq!(term(&lease, t0), Some(4));
    }

    #[test]
    fn never_shortened_within_a_term_and_revoked_at_once() {
        let lease = ReadLease::default();
        let t0 = Instant::now();
        lease.extend(2, t0 + Duration::from_millis(20));
        lease.extend(2, t0 + Duration::from_millis(5));
        assert_eq!(term(&lease, t0 + Duration::from_millis(10)), Some(2));
        lease.revoke();
        assert_eq!(term(&lease, t0), None);
    }

    #[test]
    fn asking_marks_the_lease_wanted_once() {
        let lease = ReadLease::default();
        assert!(!lease.take_wanted());
        let _ = lease.valid(Instant::now());
        assert!(lease.take_wanted());
        assert!(!lease.take_wanted());
    }
}
