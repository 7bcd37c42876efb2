#!/usr/bin/env python3
"""Attribution of `perf record -g` samples by thread, from
`perf script -F comm,tid,ip,sym -i all.data` on stdin
(`PROFILE=all KEEP=1 benches/ab.sh ...` writes all.data).

  perf-attr.py [PATTERN...]
      Per-thread inclusive shares of samples whose stack matches each
      pattern, and for samples in the allocator (mi_/malloc/free at the top
      of the stack) the nearest caller frame in synapse, sled, h2, hyper,
      tonic, prost, protobuf, raft, actix or tokio::sync.
  perf-attr.py --exclusive THREAD...
      Each sample of the named threads goes to the first of the categories
      below whose pattern matches a frame of its stack: shares that add up
      to 100 % (benches/README.md, sixteenth pass).
  perf-attr.py --callees THREAD PATTERN
      For samples of THREAD whose stack has a frame matching PATTERN, which
      function that frame called (the frame just below it), by count.

Used for the profiles in benches/README.md."""
import re, sys, collections

# --exclusive: the first match wins, so the specific rows come first.
CATEGORIES = [
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


def samples(lines):
    """Yields (thread name, frames leaf first) for each sample; tokio's
    numbered worker names are merged."""
    comm, frames = None, []
    for line in lines:
        if not line.strip() or not line.startswith((" ", "\t")):
            if comm is not None:
                yield comm, frames
            comm, frames = None, []
            if line.strip():
                comm = line.split()[0]
                comm = re.sub(r"\d+$", "", comm) if comm.startswith("tokio") else comm
            continue
        parts = line.strip().split(None, 1)
        frames.append(parts[1] if len(parts) > 1 else "?")
    if comm is not None:
        yield comm, frames


def inclusive(pats):
    pats = pats or [r"sled::", r"Tree::insert|Tree::remove", r"Tree::get", r"h2::|hyper::",
        r"NodeStateMachine.*apply", r"Store::commit_apply", r"mi_|malloc|free", r"InstanceActor::execute",
        r"grpc_transport", r"RaftLog", r"sha2::", r"prost::|protobuf::", r"tracing", r"memcpy|memmove"]
    cre = [re.compile(p) for p in pats]
    threads = collections.Counter(); hits = collections.defaultdict(collections.Counter)
    callers = collections.defaultdict(collections.Counter); total = 0
    for comm, frames in samples(sys.stdin):
        total += 1; threads[comm] += 1
        joined = "\n".join(frames)
        for p, c in zip(pats, cre):
            if c.search(joined): hits[comm][p] += 1
        if frames and re.match(r"(mi_|_mi_|malloc|free|cfree|realloc)", frames[0]):
            for f in frames:
                if re.search(r"synapse_|sled::|h2::|hyper::|tonic::|prost::|protobuf::|raft::|actix|tokio::sync", f):
                    callers[comm][f[:110]] += 1; break
    for t, n in threads.most_common(8):
        print(f"{t}: {n} samples of {total}")
        for p in pats:
            if hits[t][p]: print(f"  {100*hits[t][p]/n:5.1f}%  {p}")
        if callers[t]:
            print("  self time in the allocator, by nearest caller:")
            for f, k in callers[t].most_common(12): print(f"    {100*k/n:5.1f}%  {f}")


def exclusive(wanted):
    cre = [(name, re.compile(p)) for name, p in CATEGORIES]
    counts = collections.defaultdict(collections.Counter); totals = collections.Counter()
    for comm, frames in samples(sys.stdin):
        if comm not in wanted: continue
        totals[comm] += 1
        joined = "\n".join(frames)
        name = next((n for n, c in cre if c.search(joined)), "other (allocator, libc, ... outside the categories)")
        counts[comm][name] += 1
    for t in wanted:
        print(f"{t}: {totals[t]} samples")
        for name, k in counts[t].most_common():
            print(f"  {100*k/max(totals[t], 1):5.1f}%  {name}")


def callees(thread, pattern):
    pat = re.compile(pattern); c = collections.Counter(); n = 0
    for comm, frames in samples(sys.stdin):
        if comm != thread: continue
        i = next((i for i, f in enumerate(frames) if pat.search(f)), None)
        if i is None: continue
        n += 1
        c[(frames[i - 1] if i > 0 else "(self)")[:110]] += 1
    print(f"{n} samples with a frame matching {pattern}; what it called:")
    for k, v in c.most_common(15): print(v, k)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--exclusive"]:
        exclusive(args[1:])
    elif args[:1] == ["--callees"] and len(args) == 3:
        callees(args[1], args[2])
    else:
        inclusive(args)
