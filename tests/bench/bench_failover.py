#!/usr/bin/python3
"""Failover and handoff benchmarks (run on demand, never part of the test suite):

    /usr/bin/python3 tests/bench/bench_failover.py [--only failover,handoff]
        [--rounds 3] [--backends consul,etcd]

  failover  three candidate nodes under a steady write load (one client,
            single-row transactions, WAL); kill -9 the primary; report the
            time from the kill to the first write acknowledged by the new
            primary. For each backend at its default TTL (10 s) and at its
            minimum (Consul: 10 s is the server's floor, so the emulator is
            run with session_ttl_min 1 s to show the shape at 2 s as well;
            etcd: 2 s, its floor with the default election timeout).
            Lock-delay is LiteFS's default, 1 s.
  handoff   POST /promote on a replica under the same load; report the write
            unavailability: the gap between the last write the old primary
            acknowledged and the first the new one did.

Consul is the test emulator (tests/consul_emu), etcd is Debian's etcd-server.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
os.environ.setdefault("LTXFS_BIN", os.path.join(ROOT, "build", "src", "ltxfs"))
import test_leases as tl  # noqa: E402
from conftest import Node, wait_for  # noqa: E402


class Cluster:
    def __init__(self, kind, ttl, lock_delay=1.0):
        self.tmp = tempfile.mkdtemp(prefix="ltxfs-bench-failover-")
        tl.TTL, tl.LOCK_DELAY = ttl, lock_delay
        self.backend = tl.Backend(kind, self.tmp)
        self.backend.budget = (2 * ttl + lock_delay + 5) if kind == "consul" else ttl + 5
        self.nodes = []

        def make(name, **kw):
            n = Node(self.tmp, name, **kw)
            self.nodes.append(n)
            return n
        self.nodes_ = tl.start_cluster(make, self.backend)
        tl.create_table(self.nodes_[0], "wal")
        tl.converge(self.nodes_)

    def close(self):
        for n in self.nodes:
            n.cleanup()
        self.backend.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Dir:
    def __init__(self, path):
        self.path = path

    def __truediv__(self, name):
        return os.path.join(self.path, name)


def one_failover(kind, ttl):
    c = Cluster(kind, ttl)
    try:
        n1, n2, n3 = c.nodes_
        w = tl.Writer(Dir(c.tmp), c.nodes_)
        try:
            w.wait_acks(50, "n1")
            t_kill = time.monotonic()
            n1.kill9()
            new = wait_for(lambda: tl.primary_of([n2, n3]), timeout=c.backend.budget + 10,
                           what="a new primary", interval=0.005)
            w.wait_acks(1, new.name, timeout=30)
        finally:
            w.stop()
        first = min(t for k, n, t in w.acks() if n == new.name)
        return first - t_kill
    finally:
        c.close()


def one_handoff(kind):
    c = Cluster(kind, 10.0)
    try:
        n1, n2, n3 = c.nodes_
        w = tl.Writer(Dir(c.tmp), c.nodes_)
        try:
            w.wait_acks(200, "n1")
            status, body = tl.post(n2.url + "/promote")
            assert status == 200, body
            w.wait_acks(200, "n2")
        finally:
            w.stop()
        acks = w.acks()
        last_old = max(t for k, n, t in acks if n == "n1")
        first_new = min(t for k, n, t in acks if n == "n2")
        return first_new - last_old
    finally:
        c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="failover,handoff")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backends", default="consul,etcd")
    a = ap.parse_args()
    only = a.only.split(",")
    for kind in a.backends.split(","):
        if "failover" in only:
            ttls = [10.0, 2.0]
            for ttl in ttls:
                v = [one_failover(kind, ttl) for _ in range(a.rounds)]
                print("failover %-6s ttl %4.1fs: kill -9 to first write on the new primary "
                      "median %.2f s (rounds %s)" % (
                          kind, ttl, statistics.median(v), " ".join("%.2f" % x for x in v)),
                      flush=True)
        if "handoff" in only:
            v = [one_handoff(kind) for _ in range(a.rounds)]
            print("handoff  %-6s: write unavailability median %.1f ms (rounds %s)" % (
                kind, statistics.median(v) * 1000, " ".join("%.1f" % (x * 1000) for x in v)),
                flush=True)


if __name__ == "__main__":
    main()
