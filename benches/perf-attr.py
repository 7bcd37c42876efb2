#!/usr/bin/env python3
"""perf script -F comm,tid,ip,sym -i all.data | benches/perf-attr.py [PATTERN...]
Per-thread inclusive shares of samples whose stack matches each pattern, and
for samples in the allocator (mi_/malloc/free at the top of the stack) the
nearest caller frame in synapse, sled, h2, hyper, tonic, prost, protobuf,
raft, actix or tokio::sync. Used for the profiles in benches/README.md
(`PROFILE=all KEEP=1 benches/ab.sh ...` writes all.data)."""
import re, sys, collections
pats = sys.argv[1:] or [r"sled::", r"Tree::insert|Tree::remove", r"Tree::get", r"h2::|hyper::",
    r"NodeStateMachine.*apply", r"Store::commit_apply", r"mi_|malloc|free", r"InstanceActor::execute",
    r"grpc_transport", r"RaftLog", r"sha2::", r"prost::|protobuf::", r"tracing", r"memcpy|memmove"]
cre = [re.compile(p) for p in pats]
threads = collections.Counter(); hits = collections.defaultdict(collections.Counter)
callers = collections.defaultdict(collections.Counter); total = 0
def flush(comm, frames):
    global total
    if comm is None: return
    comm = re.sub(r"\d+$", "", comm) if comm.startswith("tokio") else comm
    total += 1; threads[comm] += 1
    joined = "\n".join(frames)
    for p, c in zip(pats, cre):
        if c.search(joined): hits[comm][p] += 1
    if frames and re.match(r"(mi_|_mi_|malloc|free|cfree|realloc)", frames[0]):
        for f in frames:
            if re.search(r"synapse_|sled::|h2::|hyper::|tonic::|prost::|protobuf::|raft::|actix|tokio::sync", f):
                callers[comm][f[:110]] += 1; break
comm, frames = None, []
for line in sys.stdin:
    if not line.strip():
        flush(comm, frames); comm, frames = None, []; continue
    if not line.startswith((" ", "\t")):
        flush(comm, frames); comm = line.split()[0]; frames = []; continue
    parts = line.strip().split(None, 1)
    frames.append(parts[1] if len(parts) > 1 else "?")
flush(comm, frames)
for t, n in threads.most_common(8):
    print(f"{t}: {n} samples of {total}")
    for p in pats:
        if hits[t][p]: print(f"  {100*hits[t][p]/n:5.1f}%  {p}")
    if callers[t]:
        print("  self time in the allocator, by nearest caller:")
        for f, k in callers[t].most_common(12): print(f"    {100*k/n:5.1f}%  {f}")
