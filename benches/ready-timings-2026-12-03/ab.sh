#!/usr/bin/env bash
set -u
for round in 1 2 3; do
  for v in new new2; do
    out=/work/diag/ab-$v-$round
    SYNAPSE_BIN=/tmp/$v OUT=$out ./run.sh > $out.log 2>&1
    python3 - $out <<'PY'
import json,sys,re
o=sys.argv[1]
r=json.load(open(o+'/bench.json'))['runs'][0]; l=r['latency_us']
t=r['timeline']; spikes=sum(1 for x in t if x['p99_us']>30000)
slow=[]
for i in (1,2,3):
    b={}
    for line in open(f'{o}/metrics-n{i}.txt'):
        m=re.match(r'synapse_raft_persist_seconds_bucket\{le="([^"]+)"\} (\d+)',line)
        if m: b[m[1]]=int(m[2])
    slow.append(b['+Inf']-b['0.01'])
print(o.split('/')[-1], 'ok',r['ok'],'p50 %.2f p99 %.2f p99.9 %.2f max %.2f'%tuple(l[k]/1e3 for k in ('p50','p99','p999','max')), 'seconds with p99>30ms:',spikes,'persist>10ms per node:',slow)
PY
  done
done
