#!/usr/bin/env python3
"""Scrapes the stage and Ready histograms of each node once a second, for
at most SECONDS seconds, as JSON lines {t, node, series: {name: count}}.
Usage: scrape.py OUT SECONDS HTTP_PORT..."""
import json, re, sys, time, urllib.request

out, seconds, ports = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
keep = re.compile(r'^synapse_(invoke_stage_seconds|raft_persist_seconds|raft_ready_seconds)_bucket\{(.*)\} (\d+)$')
deadline = time.time() + seconds
with open(out, 'w') as f:
    while time.time() < deadline:
        tick = time.time()
        for i, port in enumerate(ports, 1):
            try:
                body = urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=0.5).read().decode()
            except Exception:
                continue
            series = {}
            for line in body.splitlines():
                m = keep.match(line)
                if m:
                    series[f'{m[1]}{{{m[2]}}}'] = int(m[3])
            f.write(json.dumps({'t': tick, 'node': i, 'series': series}) + '\n')
        f.flush()
        time.sleep(max(0.0, 1.0 - (time.time() - tick)))
