#!/usr/bin/env python3
"""Independent re-implementation of lib/core/rng.cpp (splitmix64 seeding, xoshiro256**, Rng::below)
and of EpochSampler's Fisher-Yates shuffle (lib/data/batcher.cpp), used to pin the expected
epoch orders in tests/data_dataset_test.cpp ("sampler orders match the reference"). Plain
Python, no packages: python3 data_scripts/shuffle_reference.py prints them."""
M=(1<<64)-1
def splitmix(x):
    x=(x+0x9E3779B97F4A7C15)&M
    z=x
    z=((z^(z>>30))*0xBF58476D1CE4E5B9)&M
    z=((z^(z>>27))*0x94D049BB133111EB)&M
    return x, z^(z>>31)
def rotl(x,k): return ((x<<k)|(x>>(64-k)))&M
class Rng:
    def __init__(self,seed):
        self.s=[]
        for _ in range(4):
            seed,v=splitmix(seed); self.s.append(v)
    def next(self):
        s=self.s
        r=(rotl((s[1]*5)&M,7)*9)&M
        t=(s[1]<<17)&M
        s[2]^=s[0]; s[3]^=s[1]; s[1]^=s[2]; s[0]^=s[3]; s[2]^=t; s[3]=rotl(s[3],45)
        return r
    def below(self,n):
        limit=M-M%n
        while True:
            x=self.next()
            if x<limit: return x%n
def for_stream(seed,stream):
    _,a=splitmix(seed)
    return Rng(a^((stream*0xD1B54A32D192ED03)&M))
def fnv(name):
    h=0xCBF29CE484222325
    for c in name.encode(): h=((h^c)*0x100000001B3)&M
    return h
def order(n,seed,epoch):
    mix=((epoch+1)*0x9E3779B97F4A7C15)&M
    r=for_stream(seed^mix,fnv("shuffle"))
    o=list(range(n))
    for i in range(n-1,0,-1):
        j=r.below(i+1); o[i],o[j]=o[j],o[i]
    return o
print(order(10,42,0)); print(order(10,42,1))
