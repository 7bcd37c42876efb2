import re, sys, collections
comm_want, pat = sys.argv[1], re.compile(sys.argv[2])
c = collections.Counter(); n = 0
def flush(comm, frames):
    global n
    if comm != comm_want: return
    for i, f in enumerate(frames):
        if pat.search(f):
            n += 1
            # frame directly below (callee) the matched frame, and leaf
            callee = frames[i-1] if i > 0 else "(self)"
            c[callee[:110]] += 1
            return
comm, frames = None, []
for line in sys.stdin:
    if not line.strip():
        flush(comm, frames); comm, frames = None, []; continue
    if not line.startswith((" ", "\t")):
        flush(comm, frames); comm = line.split()[0]; frames = []; continue
    parts = line.strip().split(None, 1)
    frames.append(parts[1] if len(parts) > 1 else "?")
flush(comm, frames)
print(n)
for k, v in c.most_common(15): print(v, k)
