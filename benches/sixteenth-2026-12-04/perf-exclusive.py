#!/usr/bin/env python3
"""perf script -F comm,tid,ip,sym | excl.py COMM...: each sample of the given
threads goes to the first category (in order) whose pattern matches any frame
of its stack; prints shares."""
import re, sys, collections
cats = [
 ("sled write (Tree::insert/remove, apply_batch)", r"sled::tree::Tree::(insert|remove|apply_batch)"),
 ("sled read (Tree::get)", r"sled::tree::Tree::get"),
 ("check_stored_head (rest)", r"check_stored_head"),
 ("state machine apply (rest)", r"NodeStateMachine.*apply|Store::commit_apply"),
 ("actor: execute/handler (rest)", r"InstanceActor"),
 ("raft log persist (blocking)", r"PersistJob|RaftLog::(append|sync)|Wal::"),
 ("raft driver (rest: raft-rs, ready)", r"synapse_consensus::driver|raft::"),
 ("raft transport (send)", r"grpc_transport::run_link"),
 ("peer raft stream (receive)", r"Peer>::raft|FrameDecoder"),
 ("forward: follower side", r"forward::|ForwardLink"),
 ("forward: leader serve", r"serve_forwarded|answer_forwarded|run_forwarded"),
 ("guard/capabilities", r"guard::|biscuit"),
 ("invoke handler (rest)", r"Skills>::invoke|Core::invoke"),
 ("h2/hyper/tonic (rest)", r"h2::|hyper::|hyper_util::|tonic::|tower::"),
 ("tokio runtime/io (rest)", r"tokio::|mio::"),
 ("actix (rest)", r"actix"),
 ("kernel (rest)", r"^\[k\]|entry_SYSCALL|\[unknown\]"),
]
cre = [(n, re.compile(p)) for n, p in cats]
want = set(sys.argv[1:])
counts = collections.defaultdict(collections.Counter); tot = collections.Counter()
def flush(comm, frames):
    if comm is None or comm not in want: return
    tot[comm] += 1
    joined = "\n".join(frames)
    for n, c in cre:
        if c.search(joined):
            counts[comm][n] += 1; return
    counts[comm]["other: " + (frames[0][:60] if frames else "?")] += 1
comm, frames = None, []
for line in sys.stdin:
    if not line.strip():
        flush(comm, frames); comm, frames = None, []; continue
    if not line.startswith((" ", "\t")):
        flush(comm, frames); comm = line.split()[0]; frames = []; continue
    parts = line.strip().split(None, 1)
    frames.append(parts[1] if len(parts) > 1 else "?")
flush(comm, frames)
for t in sys.argv[1:]:
    print(f"{t}: {tot[t]} samples")
    other = 0
    for n, k in counts[t].most_common():
        if n.startswith("other: "):
            other += k; continue
        print(f"  {100*k/tot[t]:5.1f}%  {n}")
    print(f"  {100*other/max(tot[t],1):5.1f}%  other (allocator, libc, ... outside the categories)")
