#!/usr/bin/env python3
"""Lines up the client's per-second latency with each node's per-second
Invoke-stage and Ready histograms (run.sh's scrape.jsonl).
Usage: analyze.py DIR [SPIKE_MS (30)]"""
import collections, gzip, json, os, re, sys

d = sys.argv[1]
spike_ms = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
run = json.load(open(f'{d}/bench.json'))['runs'][0]
start = float(open(f'{d}/bench-start.txt').read())
timeline = {x['second']: x for x in run['timeline']}
scrapes = collections.defaultdict(list)
scrape = f'{d}/scrape.jsonl'
for line in (open(scrape) if os.path.exists(scrape) else gzip.open(scrape + '.gz', 'rt')):
    s = json.loads(line)
    scrapes[s['node']].append(s)

SERIES = re.compile(r'(\w+?)\{(?:stage="(\w+)",)?le="([^"]+)"\}')


def parse(series):
    """{(histogram, stage): [(le, cumulative)]}"""
    h = collections.defaultdict(list)
    for k, v in series.items():
        m = SERIES.match(k)
        name = m[1] if m[2] is None else m[2]
        le = float('inf') if m[3] == '+Inf' else float(m[3])
        h[name].append((le, v))
    return {k: sorted(v) for k, v in h.items()}


def delta(a, b):
    return {k: [(le, c - dict(a.get(k, [])).get(le, 0)) for le, c in v] for k, v in b.items()}


def quantile(buckets, q):
    total = buckets[-1][1]
    if total == 0:
        return None
    for le, c in buckets:
        if c >= q * total:
            return le
    return float('inf')


def over(buckets, bound):
    total = buckets[-1][1]
    at = max((c for le, c in buckets if le <= bound), default=0)
    return total - at


per_second = collections.defaultdict(dict)  # second -> node -> hist deltas
for node, ss in scrapes.items():
    ss.sort(key=lambda s: s['t'])
    parsed = [(s['t'], parse(s['series'])) for s in ss]
    for (t0, a), (t1, b) in zip(parsed, parsed[1:]):
        second = int(t1 - start) - 1  # the interval ending at t1 covers second (t1-start)-1 mostly
        per_second[second][node] = delta(a, b)

STAGES = ['served', 'forward', 'local', 'guard', 'actor', 'mailbox', 'handler', 'commit', 'raft_persist_seconds', 'raft_ready_seconds']
ms = lambda v: '-' if v is None else ('inf' if v == float('inf') else f'{v*1e3:g}')
spikes = [s for s, x in sorted(timeline.items()) if x['p99_us'] > spike_ms * 1e3]
print(f'{d}: client p50 {run["latency_us"]["p50"]/1e3:.2f} p99 {run["latency_us"]["p99"]/1e3:.2f} '
      f'max {run["latency_us"]["max"]/1e3:.1f} ms; {len(spikes)} s with p99 > {spike_ms:g} ms: {spikes}')
print('\nper spike second: client p99/max ms | per node, p99 bucket bound (ms) of each stage')
for s in spikes:
    x = timeline[s]
    print(f'  s{s:>3} client p99 {x["p99_us"]/1e3:6.1f} max {x["max_us"]/1e3:6.1f}')
    for node in sorted(per_second.get(s, {})):
        h = per_second[s][node]
        cells = [f'{st[:8]}={ms(quantile(h[st], 0.99))}' for st in STAGES if st in h and h[st][-1][1] > 0]
        print(f'        n{node}: ' + ' '.join(cells))

sums = collections.defaultdict(dict)
for node in (1, 2, 3):
    for line in open(f'{d}/metrics-n{node}.txt'):
        m = re.match(r'synapse_(\w+)_sum(?:\{stage="(\w+)"\})? (\S+)', line)
        if m:
            sums[node][m[2] or m[1]] = float(m[3])
print('\nwhole run, per node: calls per stage, (mean ms; calls over 25 / 50 ms); means from the final scrape')
for node in sorted(scrapes):
    first, last = parse(scrapes[node][0]['series']), parse(scrapes[node][-1]['series'])
    h = delta(first, last)
    def mean(st):
        final = parse(scrapes[node][-1]['series'])[st][-1][1]
        return sums[node].get(st, 0) / final * 1e3 if final else 0
    cells = [f'{st}: {h[st][-1][1]} ({mean(st):.2f}; {over(h[st], 0.025)}/{over(h[st], 0.05)})' for st in STAGES if st in h and h[st][-1][1] > 0]
    print(f'  n{node}: ' + '; '.join(cells))

# CPU over the measured run (run.sh's cpu-before/after.txt and client-cpu.txt).
try:
    def ticks(f):
        r = {}
        for line in open(f):
            w = line.split()
            if w[0] == 'busy':
                r['busy'], r['idle'] = int(w[1]), int(w[3])
            else:
                r[w[1]] = int(w[2])
        return r
    a, b = ticks(f'{d}/cpu-before.txt'), ticks(f'{d}/cpu-after.txt')
    hz = 100
    busy, idle = b['busy'] - a['busy'], b['idle'] - a['idle']
    ok = run['ok']
    nodes = {k: (b[k] - a[k]) / hz for k in a if k not in ('busy', 'idle')}
    client = [float(x) for x in open(f'{d}/client-cpu.txt').read().split()[1:3]]
    print(f'\nCPU: machine {100*busy/(busy+idle):.0f}% busy; nodes (s): {list(nodes.values())} '
          f'= {sum(nodes.values())*1e6/ok:.0f} µs per op; bench client {sum(client):.1f} s '
          f'= {sum(client)*1e6/ok:.0f} µs per op')
except FileNotFoundError:
    pass
