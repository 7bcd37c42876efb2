import collections,sys
samples=[]; cur=None
for line in open('/tmp/all.txt'):
    if not line.strip():
        if cur: samples.append(cur); cur=None
        continue
    if not line.startswith((' ','\t')):
        parts=line.split()
        cur={'comm':parts[0],'pid':parts[1].split('/')[0],'frames':[]}
    else:
        p=line.strip().split(None,1)
        cur['frames'].append(p[1] if len(p)>1 else '?')
if cur: samples.append(cur)
comm=sys.argv[1]
L=[s for s in samples if s['comm']==comm]
print(comm,'samples',len(L))
leaf=collections.Counter(s['frames'][0] for s in L if s['frames'])
print('-- leaf'); 
for f,c in leaf.most_common(int(sys.argv[2]) if len(sys.argv)>2 else 20): print('%5.1f%% %s'%(100*c/len(L),f[:120]))
incl=collections.Counter()
for s in L:
    for f in set(s['frames']): incl[f]+=1
print('-- inclusive')
for f,c in incl.most_common(60): print('%5.1f%% %s'%(100*c/len(L),f[:120]))
