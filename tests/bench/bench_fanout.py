#!/usr/bin/python3
"""What each replica costs (run on demand, never part of the test suite):

    LTXFS_BUILD=/tmp/bench-new /usr/bin/python3 tests/bench/bench_fanout.py \\
        [--replicas 0,1,3,8] [--modes wal-normal,wal-full,delete-full] [--n 20000] \\
        [--catchup 10000] [--rounds 3] [--pin]

  fanout   for each journal mode and each number of replicas: a primary and N
           replicas on loopback, one client (bench_client) committing --n
           single-row INSERTs as fast as it can. Reports the primary's tx/s,
           and the CPU time (utime + stime from /proc/PID/stat) per
           transaction of the primary and of each replica, measured from the
           first commit until every replica has reached the primary's
           position; and "stream us/tx", the CPU time per transaction of the
           primary's thread that sends to replicas (ltxfs-sender, from
           /proc/PID/task), divided by the number of replicas: what one
           replica costs the primary, without the noise of the rest of the
           process. A commit that the FUSE worker sends itself (inline sends,
           docs/architecture.md section 9; most DELETE-mode commits) does not
           show there, only in the primary's total, and so does the count of
           such commits ("inline" column, from ltxfs_stream_inline_sends_total).
           "floor us/tx": what the same sends cost with no ltxfs at all.
           From /metrics, the LTX frames sent to each replica and their mean
           size; bench_loopback then sends that many messages of that size,
           spaced as they were, to a reader on another thread (pinned as the
           replicas are with --pin), and the sender's CPU time inside send()
           per transaction is the floor: on loopback the kernel runs the
           receiving side of TCP, and wakes the reader, inside the send.
           It is the floor for the first replica: with several, the sender
           writes one socket after another to readers the others already
           woke, and each send costs less (0.2-0.6x of it with 8 replicas).
           CPU time per transaction does not depend on where the
           processes run, so it is comparable on a 2-core machine where the
           primary and its replicas share the cores; tx/s is not, and is
           reported with that caveat.
  --pin    the primary and the client on CPU 0, every replica on CPU 1 (also
           for 0 replicas): the primary's CPU per transaction then measures
           what a replica costs it, without the scheduling effects of
           replicas competing for the primary's cores.
  catchup  a replica stopped while the primary commits --catchup transactions
           (WAL, synchronous=NORMAL), then started: its catch-up time versus
           the time the primary took to produce them (the ratio issue 15 asks
           to be at least 3), and the replica's CPU per transaction applied.

Every figure of a run comes from the same binaries on the same disk.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from statistics import median

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("LTXFS_BUILD", os.path.join(ROOT, "build"))
os.environ.setdefault("LTXFS_BIN", os.path.join(BUILD, "src", "ltxfs"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from conftest import Node, http, wait_for  # noqa: E402

CLIENT = os.path.join(BUILD, "tests", "bench", "bench_client")
LOOPBACK = os.path.join(BUILD, "tests", "bench", "bench_loopback")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    return cpu_seconds_of("/proc/%d/stat" % pid)


def stream_cpu_seconds(pid):
    """utime + stime of the thread of pid that sends to replicas (ltxfs-sender)."""
    total = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                if f.read().strip() != "ltxfs-sender":
                    continue
            total += cpu_seconds_of("/proc/%d/task/%s/stat" % (pid, tid))
        except FileNotFoundError:
            pass
    return total


def cpu_seconds_of(path):
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


PIN = False


def pin(pid, cpu):
    """Every thread of pid (and those it creates later) onto one CPU."""
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except ProcessLookupError:
            pass  # a thread that ended meanwhile


def client(path, mode, sync, n):
    cmd = [CLIENT, "insert", path, mode, sync, str(n)]
    if PIN:
        cmd = ["taskset", "-c", "0"] + cmd
    out = subprocess.check_output(cmd, text=True)
    return float(out.split()[0])


def metric(node, name):
    """The value of one sample of node's /metrics, name with its labels (0 if absent)."""
    for line in http(node.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def inline_sends(node):
    """ltxfs_stream_inline_sends_total of node (0 for a binary without it)."""
    return metric(node, "ltxfs_stream_inline_sends_total")


def loopback_floor(frames, nbytes, wall, n):
    """What frames sends carrying nbytes in all, spread over wall seconds, cost a
    sender on loopback without ltxfs (bench_loopback): CPU us per transaction of n,
    and the mean size of a send."""
    if frames < 1:
        return 0.0, 0
    size = max(1, int(nbytes / frames))
    gap = int(wall / frames * 1e6)
    count = int(min(frames, 5000))
    cmd = [LOOPBACK, str(size), str(gap), str(count)] + (["0", "1"] if PIN else [])
    send_us = float(subprocess.check_output(cmd, text=True).split()[0])
    return send_us * frames / n, size


def fanout(base, mode, sync, n_replicas, n):
    tag = "%s-%s-%d" % (mode, sync, n_replicas)
    p = Node(base, "p-" + tag).start()
    rs = [Node(base, "r%d-%s" % (i, tag), replica_of=p).start() for i in range(n_replicas)]
    if PIN:
        pin(p.proc.pid, 0)
        for r in rs:
            pin(r.proc.pid, 1)
    try:
        # the table exists everywhere before the measured run
        client(p.path("db"), mode, sync, 1)
        want = p.pos("db")
        for r in rs:
            wait_for(lambda: r.pos("db") == want, timeout=60)
        procs = [p] + rs
        before = [cpu_seconds(x.proc.pid) for x in procs]
        s0 = stream_cpu_seconds(p.proc.pid)
        i0 = inline_sends(p)
        f0 = metric(p, 'ltxfs_http_frame_send_count{type="ltx"}')
        b0 = metric(p, "ltxfs_stream_sent_bytes_total")
        t0 = time.monotonic()
        txs = client(p.path("db"), mode, sync, n)
        want = p.pos("db")
        for r in rs:
            wait_for(lambda: r.pos("db") == want, timeout=300)
        wall = time.monotonic() - t0
        after = [cpu_seconds(x.proc.pid) for x in procs]
        s1 = stream_cpu_seconds(p.proc.pid)
        inline = (inline_sends(p) - i0) / n
        frames = metric(p, 'ltxfs_http_frame_send_count{type="ltx"}') - f0
        nbytes = metric(p, "ltxfs_stream_sent_bytes_total") - b0
        per = [(a - b) / n * 1e6 for a, b in zip(after, before)]
        per_stream = (s1 - s0) / n * 1e6 / n_replicas if n_replicas else 0.0
        floor = (0.0, 0)
        if n_replicas:
            # one replica's share: its frames, over the time the client wrote
            floor = loopback_floor(frames / n_replicas, nbytes / n_replicas, n / txs, n)
        return txs, per[0], per[1:], wall, per_stream, inline, floor
    finally:
        for x in [p] + rs:
            x.cleanup()


def catchup(base, count):
    p = Node(base, "cu-p").start()
    r = Node(base, "cu-r", replica_of=p).start()
    try:
        client(p.path("db"), "wal", "normal", 1)
        want = p.pos("db")
        wait_for(lambda: r.pos("db") == want, timeout=60)
        r.stop()
        t0 = time.monotonic()
        client(p.path("db"), "wal", "normal", count)
        produce = time.monotonic() - t0
        want = p.pos("db")
        t1 = time.monotonic()
        r.start()
        c0 = cpu_seconds(r.proc.pid)
        wait_for(lambda: r.pos("db") == want, timeout=600, interval=0.005)
        took = time.monotonic() - t1
        c1 = cpu_seconds(r.proc.pid)
        return produce, took, (c1 - c0) / count * 1e6
    finally:
        p.cleanup()
        r.cleanup()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", default="0,1,3,8")
    ap.add_argument("--modes", default="wal-normal,wal-full,delete-full")
    ap.add_argument("--n", type=int, default=20000,
                    help="transactions per run in WAL mode (a fifth of it in DELETE mode); "
                         "CPU time comes in 10 ms ticks, so short runs blur the figures")
    ap.add_argument("--catchup", type=int, default=10000)
    ap.add_argument("--only", default="fanout,catchup")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat the runs of each mode, interleaved; report medians")
    ap.add_argument("--dir", default=None, help="where nodes live (default: a temp dir)")
    ap.add_argument("--pin", action="store_true",
                    help="primary and client on CPU 0, replicas on CPU 1, as if the "
                         "replicas ran on another machine")
    a = ap.parse_args()
    global PIN
    PIN = a.pin
    base = a.dir or tempfile.mkdtemp(prefix="ltxfs-fanout-")
    os.makedirs(base, exist_ok=True)
    only = a.only.split(",")
    print("binary %s, %d cores%s" % (os.environ["LTXFS_BIN"], os.cpu_count(),
                                     ", pinned: primary and client CPU 0, replicas CPU 1"
                                     if PIN else ""))
    if "fanout" in only:
        print("%-12s %8s %9s %14s %14s %7s %18s %s" % (
            "mode", "replicas", "tx/s", "primary us/tx", "stream us/tx", "inline",
            "floor us/tx (B)", "each replica us/tx"))
        for m in a.modes.split(","):
            mode, sync = m.split("-")
            n = a.n if mode == "wal" else max(200, a.n // 5)
            ks = [int(x) for x in a.replicas.split(",")]
            runs = {k: [] for k in ks}
            # rounds interleave the replica counts, so that the machine's drift
            # falls on all of them alike; each figure is the median of its runs
            for _ in range(a.rounds):
                for k in ks:
                    runs[k].append(fanout(base, mode, sync, k, n))
            base0 = None
            for k in ks:
                txs = median(r[0] for r in runs[k])
                pcpu = median(r[1] for r in runs[k])
                rcpu = [median(r[2][i] for r in runs[k]) for i in range(k)]
                scpu = median(r[4] for r in runs[k])
                inl = median(r[5] for r in runs[k])
                floor = median(r[6][0] for r in runs[k])
                fsize = median(r[6][1] for r in runs[k])
                if k == 0:
                    base0 = (txs, pcpu)
                extra = ""
                if base0 and k > 0:
                    extra = ("  (+%.1f us/tx per replica on the primary, %.1fx the floor; "
                             "tx/s %.2f of 0)") % ((pcpu - base0[1]) / k,
                                                   (pcpu - base0[1]) / k / floor if floor else 0,
                                                   txs / base0[0])
                print("%-12s %8d %9.0f %14.1f %14s %7s %18s %s%s" % (
                    m, k, txs, pcpu, "%.1f" % scpu if k else "-",
                    "%.0f%%" % (inl * 100) if k else "-",
                    "%.1f (%d)" % (floor, fsize) if k else "-",
                    " ".join("%.1f" % x for x in rcpu) or "-", extra))
                sys.stdout.flush()
    if "catchup" in only and a.catchup > 0:
        produce, took, rcpu = catchup(base, a.catchup)
        print("catchup: %d tx produced in %.2f s, applied by a restarted replica in %.2f s "
              "(%.1fx faster than produced), replica %.1f us CPU/tx" % (
                  a.catchup, produce, took, produce / took, rcpu))


if __name__ == "__main__":
    main()
