//! Process metrics as plain atomics, rendered in the Prometheus text format.
//! Hand-written on purpose: a handful of counters does not need a registry.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use synapse_consensus::{DurationHistogram, HistogramSnapshot, RaftStatus, ReadyTimings};

/// Where the live heap size comes from, if the program counts it. Only the
/// program that chose the global allocator can (the `synapse` binary wraps
/// mimalloc in a counter); a library must not pick one for its embedder.
static HEAP_PROBE: OnceLock<fn() -> u64> = OnceLock::new();

/// Reports `probe()` as `synapse_heap_allocated_bytes` on every node of this
/// process. Returns false if a probe was already registered (the first one
/// stays).
pub fn register_heap_probe(probe: fn() -> u64) -> bool {
    HEAP_PROBE.set(probe).is_ok()
}

/// Inbound `Peer/Raft` streams, read off their bounds when rendering.
#[derive(Debug, Default, Clone, Copy)]
pub struct PeerStreams {
    /// Streams open (at most `grpc::MAX_PEER_RAFT_STREAMS`).
    pub open: usize,
    /// Bytes they hold in partly reassembled messages (at most
    /// `synapse_consensus::MAX_REASSEMBLY_TOTAL_BYTES`).
    pub reassembly_bytes: usize,
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub invokes_ok: AtomicU64,
    pub invokes_failed: AtomicU64,
    pub reads: AtomicU64,
    /// Reads that skipped the ReadIndex round under the leader's lease.
    pub lease_reads: AtomicU64,
    pub denied: AtomicU64,
    pub proposals: AtomicU64,
    pub applied_checkpoints: AtomicU64,
    pub deduplicated: AtomicU64,
    pub overloaded: AtomicU64,
    pub handler_panics: AtomicU64,
    pub handler_deadline_overruns: AtomicU64,
    pub data_loss: AtomicU64,
    /// Damaged checkpoint records rewritten from a verified peer copy.
    pub checkpoint_repairs: AtomicU64,
    /// Damaged Raft log records rewritten at start from a verified,
    /// committed peer copy (`crate::log_repair`).
    pub log_repairs: AtomicU64,
    /// Repairs given up (no peer had a verified copy, or the anchor itself
    /// is damaged).
    pub repair_failures: AtomicU64,
    /// Instances the scrub after the last start found damaged that this
    /// node cannot repair from a peer: a damaged head record (or head key),
    /// or, on a single node, which has no peer, any damaged record.
    pub scrub_unrepairable: AtomicU64,
    pub leader_changes: AtomicU64,
    pub active_instances: AtomicU64,
    pub watchers: AtomicU64,
    pub audit_write_failures: AtomicU64,
    /// Audit records refused because the writer's queue was full (the
    /// request they belonged to was refused too) or the writer had stopped.
    pub audit_dropped: AtomicU64,
    /// Invokes this node forwarded to the leader (on a stream or unary).
    pub forwarded: AtomicU64,
    /// `Peer/ForwardStream`s this node opened to a leader.
    pub forward_streams_opened: AtomicU64,
    /// Forward streams that ended with calls unanswered or on an error.
    pub forward_stream_breaks: AtomicU64,
    /// Inbound `Peer/Raft` streams refused because
    /// `grpc::MAX_PEER_RAFT_STREAMS` were open.
    pub peer_raft_streams_refused: AtomicU64,
    /// Where an Invoke's time goes on this node.
    pub stages: InvokeStages,
}

/// Where an Invoke's time goes, stage by stage, on the node that serves it
/// or forwards it. The Raft histograms say whether a Ready was slow; these
/// say whether a slow request waited on Raft at all, or on the guard, the
/// actor's mailbox, the forward stream or the hand-offs between them. A
/// client's latency minus `served` is what gRPC, HTTP/2 and the scheduler
/// cost outside the node's code.
///
/// Each stage is recorded for every call that reaches it: successful,
/// failed, or dropped midway (a client that gave up), through a
/// [`StageTimer`] that records when it is dropped; a refused call stops
/// early and is counted only where it went. For a call that completes, the
/// stages nest (`served` ⊇ `local` ⊇ `actor` ⊇ `commit`); on a leader
/// `local` also counts the calls that followers forwarded. A call its
/// client abandons ends its outer stages then, while the actor finishes
/// (and times) its part later; a rollback is timed from `actor` inward.
#[derive(Debug, Default)]
pub struct InvokeStages {
    /// A client's Invoke on the node it reached, from admission past the
    /// front door (after the request was decoded) to the result: `local`
    /// on the leader, `forward` on a follower.
    pub served: DurationHistogram,
    /// A follower's round trip to the leader over the forward stream.
    pub forward: DurationHistogram,
    /// An Invoke run on this node, whether a client sent it here or a
    /// follower forwarded it: validation, guard, barrier and actor.
    pub local: DurationHistogram,
    /// The capability guard's decision, audit record included.
    pub guard: DurationHistogram,
    /// A read's linearizable barrier: the lease check or a ReadIndex round.
    pub read_barrier: DurationHistogram,
    /// From sending the call to its actor to having the actor's reply:
    /// `mailbox` + `handler` + `commit` + the hand-offs between them.
    pub actor: DurationHistogram,
    /// Waiting in the actor's mailbox, behind the calls ahead of it.
    pub mailbox: DurationHistogram,
    /// In the actor: checking the stored head, the skill's handler, and
    /// sealing the checkpoint for a write.
    pub handler: DurationHistogram,
    /// A write's proposal until Raft has committed and applied it here.
    pub commit: DurationHistogram,
}

/// Times one stage from its creation until it is dropped or finished, so a
/// call cut short (an error return, a cancelled future) is still counted.
#[must_use = "a stage timer records when it is dropped"]
pub struct StageTimer<'a> {
    histogram: &'a DurationHistogram,
    started: std::time::Instant,
}

impl<'a> StageTimer<'a> {
    pub fn start(histogram: &'a DurationHistogram) -> Self {
        StageTimer {
            histogram,
            started: std::time::Instant::now(),
        }
    }

    /// Ends the stage now (at drop otherwise); returns when it ended.
    pub fn finish(self) -> std::time::Instant {
        let now = std::time::Instant::now();
        self.histogram
            .observe(now.saturating_duration_since(self.started));
        std::mem::forget(self);
        now
    }
}

impl Drop for StageTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed());
    }
}

impl InvokeStages {
    /// `(label, histogram)` in the order a call meets them.
    fn labelled(&self) -> [(&'static str, &DurationHistogram); 9] {
        [
            ("served", &self.served),
            ("forward", &self.forward),
            ("local", &self.local),
            ("guard", &self.guard),
            ("read_barrier", &self.read_barrier),
            ("actor", &self.actor),
            ("mailbox", &self.mailbox),
            ("handler", &self.handler),
            ("commit", &self.commit),
        ]
    }
}

impl Metrics {
    pub fn render(
        &self,
        raft: &RaftStatus,
        ready_timings: &ReadyTimings,
        guard_cache_hits: u64,
        guard_cache_len: usize,
        clock: &crate::clock_service::ClockStatus,
        peer_streams: PeerStreams,
    ) -> String {
        let mut out = String::with_capacity(2048);
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP synapse_{name} {help}\n# TYPE synapse_{name} counter\nsynapse_{name} {v}"
            );
        };
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            "invokes_ok_total",
            "Invoke calls that succeeded.",
            g(&self.invokes_ok),
        );
        counter(
            "invokes_failed_total",
            "Invoke calls that returned an error.",
            g(&self.invokes_failed),
        );
        counter("reads_total", "Linearizable reads served.", g(&self.reads));
        counter(
            "lease_reads_total",
            "Linearizable reads served under the leader's lease, without a ReadIndex round.",
            g(&self.lease_reads),
        );
        counter(
            "capability_denied_total",
            "Requests denied by the capability guard.",
            g(&self.denied),
        );
        counter(
            "proposals_total",
            "Checkpoints proposed to Raft.",
            g(&self.proposals),
        );
        counter(
            "applied_checkpoints_total",
            "Checkpoints applied to the local store.",
            g(&self.applied_checkpoints),
        );
        counter(
            "forwarded_total",
            "Invokes this node forwarded to the leader.",
            g(&self.forwarded),
        );
        counter(
            "forward_streams_opened_total",
            "Forward streams this node opened to a leader.",
            g(&self.forward_streams_opened),
        );
        counter(
            "forward_stream_breaks_total",
            "Forward streams that ended with calls unanswered or on an error (those calls answered UNAVAILABLE).",
            g(&self.forward_stream_breaks),
        );
        counter(
            "peer_raft_streams_refused_total",
            "Inbound Peer/Raft streams refused with RESOURCE_EXHAUSTED because the node's bound of them were open.",
            g(&self.peer_raft_streams_refused),
        );
        counter(
            "deduplicated_total",
            "Retries answered from the request-id table.",
            g(&self.deduplicated),
        );
        counter(
            "overloaded_total",
            "Requests refused with RESOURCE_EXHAUSTED.",
            g(&self.overloaded),
        );
        counter(
            "handler_panics_total",
            "Skill handler panics contained.",
            g(&self.handler_panics),
        );
        counter(
            "handler_deadline_overruns_total",
            "Skill handlers over their deadline.",
            g(&self.handler_deadline_overruns),
        );
        counter(
            "data_loss_total",
            "Reads that found a corrupt record.",
            g(&self.data_loss),
        );
        counter(
            "checkpoint_repairs_total",
            "Damaged checkpoint records rewritten from a verified peer copy.",
            g(&self.checkpoint_repairs),
        );
        counter(
            "raft_log_repairs_total",
            "Damaged Raft log records rewritten at start from a verified committed peer copy.",
            g(&self.log_repairs),
        );
        counter(
            "repair_failures_total",
            "Checkpoint repairs given up (no verified copy, or the anchor is damaged).",
            g(&self.repair_failures),
        );
        counter(
            "leader_changes_total",
            "Raft role or term changes seen.",
            g(&self.leader_changes),
        );
        counter(
            "audit_write_failures_total",
            "Audit records that could not be written.",
            g(&self.audit_write_failures),
        );
        counter(
            "audit_records_dropped_total",
            "Audit records refused: the writer's queue was full (the request was refused too).",
            g(&self.audit_dropped),
        );
        counter(
            "guard_cache_hits_total",
            "Capability checks answered from cache.",
            guard_cache_hits,
        );
        counter(
            "raft_slow_readys_total",
            "Raft Readys slower than 100 ms (each one is also logged, at most once a second, with its breakdown).",
            ready_timings.slow_readys(),
        );
        let mut gauge = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP synapse_{name} {help}\n# TYPE synapse_{name} gauge\nsynapse_{name} {v}"
            );
        };
        gauge(
            "active_instances",
            "Instance actors in memory.",
            g(&self.active_instances),
        );
        gauge("watchers", "Open Watch streams.", g(&self.watchers));
        gauge(
            "peer_raft_streams",
            &format!(
                "Inbound Peer/Raft streams open (at most {}).",
                crate::grpc::MAX_PEER_RAFT_STREAMS
            ),
            peer_streams.open as u64,
        );
        gauge(
            "peer_reassembly_bytes",
            &format!(
                "Bytes inbound Peer/Raft streams hold in partly reassembled messages (at most {}).",
                synapse_consensus::MAX_REASSEMBLY_TOTAL_BYTES
            ),
            peer_streams.reassembly_bytes as u64,
        );
        if let Some(probe) = HEAP_PROBE.get() {
            gauge(
                "heap_allocated_bytes",
                "Bytes the process holds on its heap (allocated, not yet freed; without the allocator's own retention, which resident memory includes).",
                probe(),
            );
        }
        gauge(
            "scrub_unrepairable",
            "Instances the scrub after the last start found damaged beyond repair from a peer (a damaged head; on a single node any damage).",
            g(&self.scrub_unrepairable),
        );
        gauge(
            "guard_cache_entries",
            "Entries in the capability cache.",
            guard_cache_len as u64,
        );
        gauge("raft_term", "Current Raft term.", raft.term);
        gauge("raft_commit_index", "Raft commit index.", raft.commit_index);
        gauge(
            "raft_applied_index",
            "Raft applied index.",
            raft.applied_index,
        );
        gauge(
            "raft_is_leader",
            "1 if this node leads.",
            u64::from(raft.role == synapse_consensus::Role::Leader),
        );
        gauge(
            "raft_leader_id",
            "Known leader id, 0 if none.",
            raft.leader_id,
        );
        gauge(
            "clock_healthy",
            "1 while the clock offset is within the maximum.",
            u64::from(clock.healthy),
        );
        gauge(
            "clock_uncertainty_micros",
            "Uncertainty of the clock offset estimate.",
            clock.uncertainty_micros,
        );
        let _ = writeln!(
            out,
            "# HELP synapse_clock_offset_micros This node's clock minus the cluster's.\n# TYPE synapse_clock_offset_micros gauge\nsynapse_clock_offset_micros {}",
            clock.offset_micros
        );
        let _ = writeln!(out, "# HELP synapse_peer_clock_offset_micros Peer clock minus this node's (best recent sample).\n# TYPE synapse_peer_clock_offset_micros gauge");
        for p in &clock.peers {
            let _ = writeln!(
                out,
                "synapse_peer_clock_offset_micros{{peer=\"{}\"}} {}",
                p.peer, p.offset_micros
            );
        }
        let _ = writeln!(out, "# HELP synapse_peer_clock_uncertainty_micros RTT/2 of that sample.\n# TYPE synapse_peer_clock_uncertainty_micros gauge");
        for p in &clock.peers {
            let _ = writeln!(
                out,
                "synapse_peer_clock_uncertainty_micros{{peer=\"{}\"}} {}",
                p.peer, p.uncertainty_micros
            );
        }
        let _ = writeln!(out, "# HELP synapse_peer_clock_sample_age_seconds Age of that sample.\n# TYPE synapse_peer_clock_sample_age_seconds gauge");
        for p in &clock.peers {
            let _ = writeln!(
                out,
                "synapse_peer_clock_sample_age_seconds{{peer=\"{}\"}} {:.3}",
                p.peer,
                p.age.as_secs_f64()
            );
        }
        histogram(
            &mut out,
            "raft_persist_seconds",
            "The durable write of one Raft Ready: appending its entries to the log, the fdatasync, and any compaction it carried.",
            &ready_timings.persist.snapshot(),
        );
        histogram(
            &mut out,
            "raft_apply_seconds",
            "Applying one Raft Ready's committed entries to the state machine (checkpoints into sled).",
            &ready_timings.apply.snapshot(),
        );
        histogram(
            &mut out,
            "raft_ready_seconds",
            "One whole Raft Ready, including the hand-off of its write to the blocking pool and back.",
            &ready_timings.ready.snapshot(),
        );
        histogram_header(
            &mut out,
            "invoke_stage_seconds",
            "Time an Invoke spent in one stage on this node (stage: served, forward, local, guard, read_barrier, actor, mailbox, handler, commit).",
        );
        for (stage, h) in self.stages.labelled() {
            histogram_series(
                &mut out,
                "invoke_stage_seconds",
                &format!("stage=\"{stage}\","),
                &h.snapshot(),
            );
        }
        out
    }
}

fn histogram(out: &mut String, name: &str, help: &str, h: &HistogramSnapshot) {
    histogram_header(out, name, help);
    histogram_series(out, name, "", h);
}

fn histogram_header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(
        out,
        "# HELP synapse_{name} {help}\n# TYPE synapse_{name} histogram"
    );
}

/// One series of a histogram family. `labels` is empty or ends in a comma,
/// so that `le` follows it.
fn histogram_series(out: &mut String, name: &str, labels: &str, h: &HistogramSnapshot) {
    for (bound, count) in &h.cumulative {
        let _ = writeln!(
            out,
            "synapse_{name}_bucket{{{labels}le=\"{bound}\"}} {count}"
        );
    }
    let plain = labels.trim_end_matches(',');
    let braces = if plain.is_empty() {
        String::new()
    } else {
        format!("{{{plain}}}")
    };
    let _ = writeln!(
        out,
        "synapse_{name}_bucket{{{labels}le=\"+Inf\"}} {count}\nsynapse_{name}_sum{braces} {sum}\nsynapse_{name}_count{braces} {count}",
        count = h.count,
        sum = h.sum_seconds
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use synapse_consensus::DurationHistogram;

    use super::*;

    #[test]
    fn a_histogram_renders_cumulative_buckets_then_inf_sum_and_count() {
        let h = DurationHistogram::default();
        h.observe(Duration::from_micros(80));
        h.observe(Duration::from_millis(2));
        h.observe(Duration::from_secs(30));
        let mut out = String::new();
        histogram(&mut out, "x_seconds", "Help.", &h.snapshot());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "# HELP synapse_x_seconds Help.");
        assert_eq!(lines[1], "# TYPE synapse_x_seconds histogram");
        assert_eq!(lines[2], "synapse_x_seconds_bucket{le=\"0.0001\"} 1");
        assert!(lines.contains(&"synapse_x_seconds_bucket{le=\"0.001\"} 1"));
        assert!(lines.contains(&"synapse_x_seconds_bucket{le=\"0.0025\"} 2"));
        assert!(lines.contains(&"synapse_x_seconds_bucket{le=\"10\"} 2"));
        let tail = &lines[lines.len() - 3..];
        assert_eq!(tail[0], "synapse_x_seconds_bucket{le=\"+Inf\"} 3");
        assert!(
            tail[1].starts_with("synapse_x_seconds_sum 30.002"),
            "{}",
            tail[1]
        );
        assert_eq!(tail[2], "synapse_x_seconds_count 3");
    }

    #[test]
    fn a_labelled_series_puts_its_labels_before_le_and_on_sum_and_count() {
        let h = DurationHistogram::default();
        h.observe(Duration::from_millis(3));
        let mut out = String::new();
        histogram_series(&mut out, "x_seconds", "stage=\"commit\",", &h.snapshot());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "synapse_x_seconds_bucket{stage=\"commit\",le=\"0.0001\"} 0"
        );
        assert!(lines.contains(&"synapse_x_seconds_bucket{stage=\"commit\",le=\"0.005\"} 1"));
        let tail = &lines[lines.len() - 3..];
        assert_eq!(
            tail[0],
            "synapse_x_seconds_bucket{stage=\"commit\",le=\"+Inf\"} 1"
        );
        assert_eq!(tail[1], "synapse_x_seconds_sum{stage=\"commit\"} 0.003");
        assert_eq!(tail[2], "synapse_x_seconds_count{stage=\"commit\"} 1");
    }
}
