#!/usr/bin/env python3
"""400 appends of 4 KiB, each followed by fdatasync; prints p50/mean/p99.
Usage: fsync-probe.py NAME (file /tmp/fsync-probe.NAME). Run three at once
for the concurrent figure."""
import os,time,sys
fd=os.open(f'/tmp/fsync-probe.{sys.argv[1]}',os.O_WRONLY|os.O_CREAT|os.O_TRUNC)
t=[]
for i in range(400):
    os.write(fd,b'x'*4096)
    s=time.perf_counter(); os.fdatasync(fd); t.append(time.perf_counter()-s)
t.sort(); print('fdatasync p50 %.3f ms mean %.3f p99 %.3f'%(t[200]*1e3,sum(t)/len(t)*1e3,t[396]*1e3))
