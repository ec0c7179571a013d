#!/usr/bin/python3
"""SQLite's speedtest1 through the mount (run on demand, never part of the test suite):

    LTXFS_BUILD=/tmp/bench-new /usr/bin/python3 tests/bench/bench_speedtest.py \\
        [--rounds 3] [--size 20] [--modes wal,delete] [--replicas 0,1]

speedtest1 (test/speedtest1.c of Debian's sqlite3 source package, built with
SQLite's own Makefile next to the testfixture that tests/sqlite/build.sh
makes; built here on first use) runs its standard mix of some 30 tests
(inserts, indexed and unindexed lookups, updates, deletes, joins, a VACUUM)
on a database in a plain directory of the same disk, then on a database
under an ltxfs mount, with 0 and then 1 replica attached (--replicas).
Sides alternate over --rounds; the report gives the median total time of
each and the ratio plain / mount (1.0: as fast as a plain directory).
With a replica, the CPU time of the primary and of the replica per run
(from /proc) are reported too: on this 2-core machine the replica runs
beside the primary and the benchmark.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("LTXFS_BUILD", os.path.join(ROOT, "build"))
os.environ.setdefault("LTXFS_BIN", os.path.join(BUILD, "src", "ltxfs"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from conftest import Node, wait_for  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def speedtest1():
    """The speedtest1 binary, built in the SQLite test build's directory if missing."""
    out = subprocess.check_output(["sh", os.path.join(ROOT, "tests", "sqlite", "build.sh")],
                                  text=True)
    vdir = out.strip().splitlines()[-1]
    exe = os.path.join(vdir, "speedtest1")
    if not os.access(exe, os.X_OK):
        bld = os.path.join(vdir, "bld")
        subprocess.check_call(["make", "speedtest1"], cwd=bld, stdout=subprocess.DEVNULL)
        shutil.copy(os.path.join(bld, "speedtest1"), exe)
    return exe


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def run(exe, path, mode, size):
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass
    out = subprocess.check_output([exe, "--size", str(size), "--journal", mode, path],
                                  text=True, stderr=subprocess.STDOUT)
    m = re.search(r"TOTAL\.*\s+([0-9.]+)s", out)
    if not m:
        raise RuntimeError("speedtest1 printed no TOTAL line:\n" + out[-2000:])
    # each test's line: " 100 - 50000 INSERTs into table with no index.....  0.071s"
    tests = {t.strip(" ."): float(v) for t, v in
             re.findall(r"^\s*(\d+ - .*?)\s+([0-9.]+)s\s*$", out, re.M)}
    DETAIL.append(tests)
    return float(m.group(1))


DETAIL = []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=20)
    ap.add_argument("--modes", default="wal,delete")
    ap.add_argument("--replicas", default="0,1")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--detail", type=int, default=0,
                    help="also list the N tests that lose the most time through the mount")
    a = ap.parse_args()
    exe = speedtest1()
    base = a.dir or tempfile.mkdtemp(prefix="ltxfs-speedtest-", dir="/var/tmp")
    os.makedirs(base, exist_ok=True)
    plain = os.path.join(base, "plain")
    os.makedirs(plain, exist_ok=True)
    # libfuse's passthrough_ll: what FUSE alone costs (with 0 replicas)
    sys.path.insert(0, os.path.join(ROOT, "tests", "bench"))
    import bench  # noqa: E402
    bench.build_passthrough()
    pt = os.path.join(base, "pt")
    os.makedirs(pt, exist_ok=True)
    ptsrc = os.path.join(base, "pt-src")
    os.makedirs(ptsrc, exist_ok=True)
    ptproc = subprocess.Popen([bench.PT_BIN, "-f", "-o", "source=%s,cache=auto" % ptsrc, pt],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bench.wait_mounted(pt, ptproc)
    print("binary %s, speedtest1 --size %d, %d rounds" % (os.environ["LTXFS_BIN"], a.size,
                                                          a.rounds))
    try:
        for k in (int(x) for x in a.replicas.split(",")):
            p = Node(base, "p%d" % k).start()
            rs = [Node(base, "r%d-%d" % (k, i), replica_of=p).start() for i in range(k)]
            try:
                for mode in a.modes.split(","):
                    tp, tm, tt, cpu_p, cpu_r = [], [], [], [], []
                    dp, dm = [], []
                    for rnd in range(a.rounds):
                        sides = ["plain", "mount"] + (["pt"] if not rs else [])
                        sides = sides[rnd % len(sides):] + sides[:rnd % len(sides)]
                        for side in sides:
                            if side == "pt":
                                tt.append(run(exe, os.path.join(pt, "st.db"), mode, a.size))
                                DETAIL.pop()
                                continue
                            if side == "plain":
                                tp.append(run(exe, os.path.join(plain, "st.db"), mode, a.size))
                                dp.append(DETAIL.pop())
                                continue
                            c0 = [cpu_seconds(x.proc.pid) for x in [p] + rs]
                            tm.append(run(exe, p.path("st.db"), mode, a.size))
                            dm.append(DETAIL.pop())
                            want = p.pos("st.db")
                            for r in rs:
                                wait_for(lambda: r.pos("st.db") == want, timeout=300)
                            c1 = [cpu_seconds(x.proc.pid) for x in [p] + rs]
                            cpu_p.append(c1[0] - c0[0])
                            if rs:
                                cpu_r.append(c1[1] - c0[1])
                    mp, mm = statistics.median(tp), statistics.median(tm)
                    extra = ""
                    if rs:
                        extra = ", CPU per run: primary %.2f s, replica %.2f s" % (
                            statistics.median(cpu_p), statistics.median(cpu_r))
                    else:
                        mt = statistics.median(tt)
                        extra = (", CPU per run: ltxfs %.2f s; passthrough_ll %.2f s, "
                                 "plain/passthrough_ll %.2f, passthrough_ll/mount %.2f" % (
                                     statistics.median(cpu_p), mt, mp / mt, mt / mm))
                    print("%-6s replicas %d: plain %.2f s, mount %.2f s, plain/mount %.2f%s" % (
                        mode, k, mp, mm, mp / mm, extra))
                    if a.detail:
                        rows = []
                        for t in dp[0]:
                            vp = statistics.median(d.get(t, 0.0) for d in dp)
                            vm = statistics.median(d.get(t, 0.0) for d in dm)
                            rows.append((vm - vp, t, vp, vm))
                        for lost, t, vp, vm in sorted(rows, reverse=True)[:a.detail]:
                            print("    %-60s plain %.3f s, mount %.3f s (+%.3f)" % (
                                t[:60], vp, vm, lost))
                    sys.stdout.flush()
            finally:
                for x in [p] + rs:
                    x.cleanup()
    finally:
        subprocess.call(["umount", pt])
        ptproc.wait(30)
        if not a.dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
