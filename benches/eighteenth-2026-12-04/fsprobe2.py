import os,time,sys
def run(mode, n=1500, size=1024):
    path=f'/work/fsprobe.{mode}'
    fd=os.open(path,os.O_RDWR|os.O_CREAT|os.O_TRUNC)
    total=n*size+4096
    if mode=='fallocated':
        os.posix_fallocate(fd,0,total); os.fsync(fd)
    elif mode=='sparse':
        os.ftruncate(fd,total); os.fsync(fd)
    t=[]
    for i in range(n):
        os.pwrite(fd,b'x'*size,i*size)
        s=time.perf_counter(); os.fdatasync(fd); t.append(time.perf_counter()-s)
    os.close(fd); os.unlink(path)
    t.sort(); return t[n//2]*1e3, t[int(n*0.99)]*1e3
res={}
for r in range(int(sys.argv[1]) if len(sys.argv)>1 else 3):
    for m in ['append','fallocated','sparse']:
        p50,p99=run(m); res.setdefault(m,[]).append(p50); print(f'{m:10s} p50 {p50:.3f} ms p99 {p99:.3f} ms',flush=True)
for m,v in res.items(): v.sort(); print(m,'median of p50s %.3f'%v[len(v)//2])
