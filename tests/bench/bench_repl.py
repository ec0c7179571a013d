#!/usr/bin/python3
"""Replication benchmarks (run on demand, never part of the test suite):

    /usr/bin/python3 tests/bench/bench_repl.py [--only lag,catchup,reads]
        [--rate 1000] [--seconds 10] [--size-mb 1024] [--replicas 1,3]

  lag      a primary and 1 (then 3, --replicas) replicas on loopback; one
           client commits single-row transactions (WAL, synchronous=NORMAL)
           at a steady rate; a poller process reads each replica's -pos file
           every 0.1 ms and records when each TXID becomes visible. Reports
           p50/p90/p99 of commit-to-visible-on-every-replica latency. (The poller sleeps between reads:
           spinning, it took a whole core from the two the system under test
           shares, and measured CPU starvation more than replication.)
  catchup  a primary with a database of --size-mb; a replica with an empty
           data directory starts; reports MB/s until its position matches.
  reads    point SELECTs and full-table scans on the replica through the
           mount versus the same database file copied to a plain directory
           on the same disk, while
           the primary commits 100 tx/s; WAL and DELETE modes; reports the
           ratio (replica / plain).

Times come from CLOCK_MONOTONIC, shared by all processes of the host.
"""
import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
BUILD = os.environ.get("LTXFS_BUILD", os.path.join(ROOT, "build"))
os.environ.setdefault("LTXFS_BIN", os.path.join(BUILD, "src", "ltxfs"))
from conftest import Node, wait_for  # noqa: E402

POLLER = r"""
import os, sys, time
out, secs, paths = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
seen = [[] for _ in paths]
last = [None for _ in paths]
end = time.monotonic() + secs
fds = [os.open(p, os.O_RDONLY) for p in paths]
while time.monotonic() < end:
    for k, fd in enumerate(fds):
        s = os.pread(fd, 34, 0)
        if s != last[k]:
            last[k] = s
            seen[k].append((time.monotonic(), int(s[:16], 16)))
    time.sleep(0.0001)  # a 0.1 ms poll, not a spin that takes a core from the replica
for k in range(len(paths)):
    with open("%s.%d" % (out, k), "w") as f:
        for t, x in seen[k]:
            f.write("%r %d\n" % (t, x))
"""


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))]


def bench_lag(base, rate, seconds, nrep=1):
    p = Node(base, "lag%d-p" % nrep).start()
    rs = [Node(base, "lag%d-r%d" % (nrep, k), replica_of=p).start() for k in range(nrep)]
    try:
        c = sqlite3.connect(p.path("db"), isolation_level=None)
        c.execute("PRAGMA journal_mode=wal")
        c.execute("PRAGMA synchronous=normal")
        c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        want = p.pos("db")
        for r in rs:
            wait_for(lambda: r.pos("db") == want, timeout=30)
        out = os.path.join(base, "poll%d.txt" % nrep)
        poller = subprocess.Popen([sys.executable, "-c", POLLER, out, str(seconds + 3)] +
                                  [r.path("db-pos") for r in rs])
        time.sleep(0.5)
        pfd = os.open(p.path("db-pos"), os.O_RDONLY)
        commits = []
        interval = 1.0 / rate
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < seconds:
            target = t0 + i * interval
            now = time.monotonic()
            if now < target:
                time.sleep(target - now)
            c.execute("INSERT INTO t(v) VALUES('x')")
            done = time.monotonic()
            txid = int(os.pread(pfd, 34, 0)[:16], 16)
            commits.append((done, txid))
            i += 1
        achieved = len(commits) / (time.monotonic() - t0)
        poller.wait()
        # a commit's lag: until every replica shows it
        lags = {}
        for k in range(nrep):
            seen = [tuple(float(x) if i == 0 else int(x) for i, x in enumerate(line.split()))
                    for line in open("%s.%d" % (out, k))]
            j = 0
            for n, (t, txid) in enumerate(commits):
                while j < len(seen) and seen[j][1] < txid:
                    j += 1
                if j < len(seen):
                    lag = max(0.0, seen[j][0] - t) * 1000
                    lags[n] = max(lags.get(n, 0.0), lag)
                else:
                    lags[n] = float("inf")
        lags = [v for v in lags.values() if v != float("inf")]
        print("lag (%d replica(s), until all have it): %.0f tx/s achieved (target %d), "
              "%d samples: p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms" % (
                  nrep, achieved, rate, len(lags), pct(lags, 0.5), pct(lags, 0.9),
                  pct(lags, 0.99), max(lags)))
        c.close()
    finally:
        p.cleanup()
        for r in rs:
            r.cleanup()


def bench_catchup(base, size_mb):
    p = Node(base, "cu-p").start()
    r = None
    try:
        c = sqlite3.connect(p.path("db"), isolation_level=None)
        c.execute("PRAGMA journal_mode=wal")
        c.execute("PRAGMA synchronous=normal")
        c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        c.execute("BEGIN")
        for i in range(size_mb * 16):
            c.execute("INSERT INTO t(v) VALUES(randomblob(65536))")
            if i % 1600 == 1599:
                c.execute("COMMIT")
                c.execute("BEGIN")
        c.execute("COMMIT")
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        c.close()
        size = os.path.getsize(os.path.join(p.dbdir("db"), "database"))
        want = p.pos("db")
        r = Node(base, "cu-r", replica_of=p)
        t0 = time.monotonic()
        r.start()
        wait_for(lambda: r.pos("db") == want, timeout=3600, interval=0.005)
        dt = time.monotonic() - t0
        print("catchup: %.0f MB database restored on an empty replica in %.2f s: %.0f MB/s "
              "(includes the replica's start-up)" % (size / 1e6, dt, size / 1e6 / dt))
    finally:
        p.cleanup()
        if r:
            r.cleanup()


def point_selects(path, n, rows):
    c = sqlite3.connect(path)
    ids = [(i * 7919) % rows + 1 for i in range(n)]
    t0 = time.monotonic()
    for k in ids:
        c.execute("SELECT v FROM t WHERE id = ?", (k,)).fetchone()
    dt = time.monotonic() - t0
    c.close()
    return n / dt


def scans(path, n):
    """Full-table scans per second (every row's value is read)."""
    c = sqlite3.connect(path)
    t0 = time.monotonic()
    for _ in range(n):
        c.execute("SELECT sum(length(v)) FROM t").fetchone()
    dt = time.monotonic() - t0
    c.close()
    return n / dt


def bench_reads(base, seconds):
    for mode in ("wal", "delete"):
        p = Node(base, "rd-p-" + mode).start()
        r = Node(base, "rd-r-" + mode, replica_of=p).start()
        stop = threading.Event()
        try:
            c = sqlite3.connect(p.path("db"), isolation_level=None, check_same_thread=False)
            c.execute("PRAGMA journal_mode=%s" % mode)
            c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
            c.execute("BEGIN")
            rows = 100000
            for i in range(rows):
                c.execute("INSERT INTO t(v) VALUES(?)", ("v%08d" % i * 4,))
            c.execute("COMMIT")
            want = p.pos("db")
            wait_for(lambda: r.pos("db") == want, timeout=120)
            plain = os.path.join(base, "plain-" + mode)
            os.makedirs(plain, exist_ok=True)
            shutil.copy(r.path("db"), os.path.join(plain, "db"))

            def writer():
                while not stop.is_set():
                    c.execute("UPDATE t SET v = v WHERE id = 1")
                    time.sleep(0.01)
            wt = threading.Thread(target=writer)
            wt.start()
            ratios, sratios = [], []
            for _ in range(5):
                a = point_selects(r.path("db"), 20000, rows)
                b = point_selects(os.path.join(plain, "db"), 20000, rows)
                ratios.append(a / b)
                a = scans(r.path("db"), 20)
                b = scans(os.path.join(plain, "db"), 20)
                sratios.append(a / b)
            stop.set()
            wt.join()
            print("reads %s: point SELECT replica/plain median %.2f (rounds %s), writes "
                  "applied meanwhile at ~100 tx/s" % (
                      mode, statistics.median(ratios), " ".join("%.2f" % x for x in ratios)))
            print("reads %s: full-table scan replica/plain median %.2f (rounds %s)" % (
                mode, statistics.median(sratios), " ".join("%.2f" % x for x in sratios)))
            c.close()
        finally:
            stop.set()
            p.cleanup()
            r.cleanup()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="lag,catchup,reads")
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--replicas", default="1,3", help="lag: numbers of replicas to run")
    a = ap.parse_args()
    base = tempfile.mkdtemp(prefix="ltxfs-bench-repl-", dir=os.environ.get("BENCH_DIR", "/var/tmp"))
    try:
        only = a.only.split(",")
        if "lag" in only:
            for k in (int(x) for x in a.replicas.split(",")):
                bench_lag(base, a.rate, a.seconds, k)
        if "catchup" in only:
            bench_catchup(base, a.size_mb)
        if "reads" in only:
            bench_reads(base, a.seconds)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
