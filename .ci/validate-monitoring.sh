#!/usr/bin/env bash
# Validate deploy/monitoring/: the Prometheus rules file and the Grafana
# dashboard parse, use only metric names the binary exports (the list below,
# read off `synapse serve` /metrics), and, when `promtool` is installed
# (Debian package `prometheus`), pass `promtool check rules`.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 - <<'PY'
import json, re, sys
import yaml

KNOWN = {
    "synapse_active_instances", "synapse_applied_checkpoints_total",
    "synapse_audit_write_failures_total", "synapse_capability_denied_total",
    "synapse_clock_healthy", "synapse_clock_offset_micros",
    "synapse_clock_uncertainty_micros", "synapse_data_loss_total",
    "synapse_deduplicated_total", "synapse_forward_stream_breaks_total",
    "synapse_forward_streams_opened_total", "synapse_forwarded_total",
    "synapse_guard_cache_entries",
    "synapse_guard_cache_hits_total", "synapse_handler_deadline_overruns_total",
    "synapse_heap_allocated_bytes",
    "synapse_handler_panics_total", "synapse_invokes_failed_total",
    "synapse_invokes_ok_total", "synapse_leader_changes_total",
    "synapse_overloaded_total", "synapse_peer_clock_offset_micros",
    "synapse_peer_raft_streams", "synapse_peer_raft_streams_refused_total",
    "synapse_peer_reassembly_bytes",
    "synapse_peer_clock_sample_age_seconds", "synapse_peer_clock_uncertainty_micros",
    "synapse_proposals_total", "synapse_raft_applied_index",
    "synapse_raft_commit_index", "synapse_raft_is_leader",
    "synapse_raft_leader_id", "synapse_raft_term", "synapse_reads_total",
    "synapse_scrub_unrepairable",
    "synapse_watchers", "synapse_raft_slow_readys_total",
} | {
    f"synapse_raft_{phase}_seconds_{part}"
    for phase in ("persist", "apply", "ready")
    for part in ("bucket", "sum", "count")
} | {
    f"synapse_invoke_stage_seconds_{part}" for part in ("bucket", "sum", "count")
}
REQUIRED_ALERT_METRICS = {
    "synapse_leader_changes_total", "synapse_raft_leader_id",
    "synapse_raft_commit_index", "synapse_raft_applied_index",
    "synapse_clock_offset_micros", "synapse_clock_healthy",
    "synapse_capability_denied_total", "synapse_data_loss_total",
    "synapse_overloaded_total", "synapse_scrub_unrepairable",
    "synapse_raft_persist_seconds_bucket", "synapse_raft_apply_seconds_bucket",
}
errors = []
def names(expr):
    return set(re.findall(r"\bsynapse_[a-z_]+\b", expr))

with open("deploy/monitoring/prometheus-rules.yml") as f:
    rules = yaml.safe_load(f)
used = set()
alerts = 0
for g in rules.get("groups", []):
    if not g.get("name") or not isinstance(g.get("rules"), list):
        errors.append(f"rules: bad group {g!r:.80}")
        continue
    for r in g["rules"]:
        for key in ("alert", "expr"):
            if not r.get(key):
                errors.append(f"rules: {g['name']}: a rule without {key}")
        alerts += 1
        for n in names(str(r.get("expr", ""))):
            used.add(n)
            if n not in KNOWN:
                errors.append(f"rules: {r.get('alert')}: unknown metric {n}")
        if r.get("labels", {}).get("severity") not in ("warning", "critical"):
            errors.append(f"rules: {r.get('alert')}: severity must be warning or critical")
for n in sorted(REQUIRED_ALERT_METRICS - used):
    errors.append(f"rules: no alert uses {n}")

with open("deploy/monitoring/grafana-dashboard.json") as f:
    dash = json.load(f)
panels = dash.get("panels", [])
if not panels:
    errors.append("dashboard: no panels")
ids = [p.get("id") for p in panels]
if len(ids) != len(set(ids)):
    errors.append("dashboard: duplicate panel ids")
dash_used = set()
for p in panels:
    if not p.get("targets"):
        errors.append(f"dashboard: panel {p.get('title')!r} has no targets")
    for t in p.get("targets", []):
        for n in names(t.get("expr", "")):
            dash_used.add(n)
            if n not in KNOWN:
                errors.append(f"dashboard: panel {p.get('title')!r}: unknown metric {n}")
for n in sorted(REQUIRED_ALERT_METRICS - dash_used):
    errors.append(f"dashboard: no panel shows {n}")

if errors:
    print("\n".join("validate-monitoring: ERROR: " + e for e in errors), file=sys.stderr)
    sys.exit(1)
print(f"validate-monitoring: {alerts} alert rules and {len(panels)} dashboard panels parse and use known metrics")
PY

if command -v promtool >/dev/null 2>&1; then
    promtool check rules deploy/monitoring/prometheus-rules.yml
else
    echo "validate-monitoring: promtool not installed (apt-get install prometheus); skipped 'promtool check rules'"
fi
