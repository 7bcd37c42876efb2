#!/usr/bin/env bash
# Render deploy/k8s with kustomize (offline) and validate the result with
# kubernetes-validate --strict against a recent Kubernetes schema.
# Exits non-zero on any invalid manifest.
#
# Tools, installed when missing:
#   kubectl     - already on the machine, else Debian's kubernetes-client
#                 (kubectl 1.20, whose built-in kustomize still renders this
#                 kustomization: it only uses `resources` and `images`);
#                 if neither is available the manifests listed under
#                 `resources:` are validated file by file instead (no render).
#   kubernetes-validate - from PyPI.
# VALIDATE_K8S_NO_KUBECTL=1 forces the file-by-file fallback (to test it).
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=${K8S_VERSION:-1.37.0}   # newest schema kubernetes-validate 1.37.0 ships
KV_VERSION=${KV_VERSION:-1.37.0}
dir=deploy/k8s
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log() { echo "validate-k8s: $*"; }

# -------------------------------------------------------------- tools
if ! command -v kubernetes-validate >/dev/null 2>&1 \
   || ! kubernetes-validate --version 2>/dev/null | grep -q "$KV_VERSION"; then
    log "installing kubernetes-validate==$KV_VERSION (PyPI)"
    python3 -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION" \
        || { log "ERROR: cannot install kubernetes-validate"; exit 1; }
fi
kv=(kubernetes-validate)
command -v kubernetes-validate >/dev/null 2>&1 || kv=(python3 -m kubernetes_validate)

if ! command -v kubectl >/dev/null 2>&1; then
    log "kubectl not found; trying Debian's kubernetes-client"
    if [[ $(id -u) == 0 ]]; then
        (apt-get install -y -qq kubernetes-client >/dev/null 2>&1 \
            || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq kubernetes-client >/dev/null 2>&1; }) || true
    fi
fi

# -------------------------------------------------------------- render
rendered=$work/rendered.yaml
if [[ "${VALIDATE_K8S_NO_KUBECTL:-0}" != 1 ]] && command -v kubectl >/dev/null 2>&1; then
    log "kubectl $(kubectl version --client 2>/dev/null | head -1)"
    kubectl kustomize "$dir" >"$rendered" || { log "ERROR: kubectl kustomize $dir failed"; exit 1; }
    log "rendered $dir: $(grep -c '^kind:' "$rendered") objects"
    files=("$rendered")
else
    log "WARNING: no kubectl could be installed: validating the resources files one by one, NOT the kustomize render"
    mapfile -t files < <(python3 - "$dir" <<'PY'
import sys, os, re
d = sys.argv[1]
inres = False
for line in open(os.path.join(d, "kustomization.yaml")):
    if re.match(r"^resources:\s*$", line):
        inres = True; continue
    if inres:
        m = re.match(r"^\s+-\s+(\S+)", line)
        if m: print(os.path.join(d, m.group(1))); continue
        if line.strip() and not line.startswith((" ", "#")): inres = False
PY
)
    [[ ${#files[@]} -gt 0 ]] || { log "ERROR: no resources found in $dir/kustomization.yaml"; exit 1; }
fi

# -------------------------------------------------------------- expectations
# Structural facts the deployment relies on (kubernetes-validate checks the schema only).
python3 - "${files[@]}" <<'PY' || { echo "validate-k8s: ERROR: deployment invariants violated"; exit 1; }
import sys, yaml
docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]
by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
def need(cond, msg):
    if not cond:
        print("  missing:", msg); need.bad = True
need.bad = False
sts = by.get(("StatefulSet", "synapse"))
need(sts is not None, "StatefulSet synapse")
if sts:
    s = sts["spec"]; pod = s["template"]["spec"]; c = pod["containers"][0]
    need(s.get("podManagementPolicy") == "Parallel", "podManagementPolicy: Parallel")
    need(s.get("serviceName") == "synapse-peer", "serviceName: synapse-peer")
    need(s.get("volumeClaimTemplates"), "volumeClaimTemplates")
    need("grpc" in c.get("readinessProbe", {}), "gRPC readinessProbe")
    need("--node-id-from-hostname" in c.get("args", []), "--node-id-from-hostname")
    need(any(a.startswith("--seed=synapse-0.synapse-peer.$(POD_NAMESPACE).svc:") for a in c["args"]), "seed address")
    need(c.get("securityContext", {}).get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    need(pod.get("securityContext", {}).get("runAsNonRoot") is True, "runAsNonRoot")
    need(c.get("resources", {}).get("limits") and c["resources"].get("requests"), "resources")
    ann = s["template"]["metadata"].get("annotations", {})
    need(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == "50052", "prometheus annotations")
peer = by.get(("Service", "synapse-peer"))
need(peer and peer["spec"].get("clusterIP") == "None" and peer["spec"].get("publishNotReadyAddresses") is True,
     "headless synapse-peer with publishNotReadyAddresses")
need(("Service", "synapse") in by, "client Service synapse")
pdb = by.get(("PodDisruptionBudget", "synapse"))
need(pdb and pdb["spec"].get("maxUnavailable") == 1, "PDB maxUnavailable: 1")
sys.exit(1 if need.bad else 0)
PY

# -------------------------------------------------------------- schema
log "kubernetes-validate --strict -k $K8S_VERSION"
"${kv[@]}" --strict --kubernetes-version "$K8S_VERSION" "${files[@]}" \
    || { log "ERROR: manifests do not validate against Kubernetes $K8S_VERSION"; exit 1; }

# The validator must be able to fail: a manifest with an unknown field.
bad=$work/bad.yaml
src=${files[0]}
[[ ${#files[@]} -gt 1 ]] && src=$dir/statefulset.yaml
sed 's/^  podManagementPolicy: Parallel$/  podManagementPolicy: Parallel\n  notAField: true/' "$src" >"$bad"
grep -q notAField "$bad" || { log "ERROR: could not build the negative control"; exit 1; }
if "${kv[@]}" --strict --quiet --kubernetes-version "$K8S_VERSION" "$bad" >/dev/null 2>&1; then
    log "ERROR: kubernetes-validate accepted a manifest with an unknown field; validation is not effective"
    exit 1
fi
log "OK: deploy/k8s ${files[1]:+(file by file) }validates against Kubernetes $K8S_VERSION (strict); negative control rejected"
