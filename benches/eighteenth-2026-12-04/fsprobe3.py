import os,time,sys,threading
stop=False
def bg():
    fd=os.open('/work/fsprobe.bg',os.O_WRONLY|os.O_CREAT|os.O_TRUNC)
    while not stop:
        os.write(fd,b'y'*5000); time.sleep(0.0005)
    os.close(fd); os.unlink('/work/fsprobe.bg')
def run(mode, n=1500, size=1024):
    path=f'/work/fsprobe.{mode}'
    fd=os.open(path,os.O_RDWR|os.O_CREAT|os.O_TRUNC)
    if mode=='fallocated': os.posix_fallocate(fd,0,n*size+4096); os.fsync(fd)
    t=[]
    for i in range(n):
        os.pwrite(fd,b'x'*size,i*size)
        s=time.perf_counter(); os.fdatasync(fd); t.append(time.perf_counter()-s)
    os.close(fd); os.unlink(path)
    t.sort(); return t[n//2]*1e3
withbg = sys.argv[1]=='bg'
if withbg: th=threading.Thread(target=bg); th.start()
res={}
for r in range(3):
    for m in ['append','fallocated']:
        res.setdefault(m,[]).append(run(m))
stop=True
for m,v in res.items(): v.sort(); print('bg' if withbg else 'quiet', m,'median p50 %.3f'%v[1], ['%.3f'%x for x in v])
