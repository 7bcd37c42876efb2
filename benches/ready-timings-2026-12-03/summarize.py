#!/usr/bin/env python3
"""One line per run directory (bench.json + metrics-n1..3.txt): client
latency, seconds with p99 > 30 ms, persists per node in 10-25 / 25-50 /
over 50 ms, Readys over 50 ms. Usage: summarize.py DIR..."""
import json, re, sys

for o in sys.argv[1:]:
    r = json.load(open(o + '/bench.json'))['runs'][0]
    l = r['latency_us']
    spikes = sum(1 for x in r['timeline'] if x['p99_us'] > 30000)

    def buckets(i):
        d = {}
        for line in open(f'{o}/metrics-n{i}.txt'):
            m = re.match(r'synapse_raft_(\w+)_seconds_bucket\{le="([^"]+)"\} (\d+)', line)
            if m:
                d[(m[1], m[2])] = int(m[3])
        return d

    bs = [buckets(i) for i in (1, 2, 3)]
    print(o.rstrip('/').split('/')[-1],
          'p50 %.2f p99 %.2f p99.9 %.2f max %.2f ms' % tuple(l[k] / 1e3 for k in ('p50', 'p99', 'p999', 'max')),
          '| s with p99>30ms:', spikes,
          '| persist 10-25/25-50/>50 ms per node:',
          [(x[('persist', '0.025')] - x[('persist', '0.01')],
            x[('persist', '0.05')] - x[('persist', '0.025')],
            x[('persist', '+Inf')] - x[('persist', '0.05')]) for x in bs],
          '| ready >50 ms:', [x[('ready', '+Inf')] - x[('ready', '0.05')] for x in bs])
