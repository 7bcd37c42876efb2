#!/usr/bin/env python3
"""Live heap at heaptrack's peak, grouped by allocation site.

    heaptrack_print -f heaptrack.zst --print-peaks 0 --print-allocators 0 \
        --print-temporary 0 --print-leaks 0 --print-histogram 0 \
        --print-flamegraph peak.folded --flamegraph-cost-type peak
    benches/heap-2026-12-04/peak-sites.py peak.folded

Two views: by the innermost frame of a library that allocates for us
(sled, tonic, h2, tokio, actix, raft, ours), and by the innermost frame of
our own crates (who asked for it).
"""
import collections
import re
import sys

LIB = re.compile(r"(sled::|synapse|raft::|h2::|tonic::|prost|hyper::|actix|tokio::)")
NOT_A_SITE = ("CountingAllocator", "rust_alloc", "main.rs")

by_site, by_caller = collections.Counter(), collections.Counter()
for line in open(sys.argv[1]):
    stack, cost = line.rstrip().rsplit(" ", 1)
    leaf_first = stack.split(";")[::-1]
    site = next((f for f in leaf_first if LIB.search(f) and not any(n in f for n in NOT_A_SITE)), leaf_first[0])
    ours = next((f for f in leaf_first if "synapse" in f and not any(n in f for n in NOT_A_SITE)), "(none of ours)")
    by_site[site[:140]] += int(cost)
    by_caller[ours[:140]] += int(cost)

print(f"live at the peak: {sum(by_site.values()) / 2**20:.1f} MiB")
for title, c in (("by allocating site", by_site), ("by our innermost frame", by_caller)):
    print(f"\n--- {title} (MiB)")
    for k, v in c.most_common(15):
        print(f"{v / 2**20:8.2f}  {k}")
