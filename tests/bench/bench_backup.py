#!/usr/bin/python3
"""ltxfs backup benchmarks (docs/backup.md, "Measured"). Run on demand, never
part of the test suite; needs moto_server on PATH (the image's Python has
it) and a build (LTXFS_BUILD, default build/):

    /usr/bin/python3 tests/bench/bench_backup.py [--rounds 3] [--rate 1000]
        [--seconds 20] [--idle 60] [--restore-mb 256] [--restore-txns 20000]
        [--only throughput,lag,restore]

Two ltxfs nodes in the same run, one without a backup section ("off") and
one uploading to moto on loopback ("on", sync-interval 1s):

  throughput  single-row INSERT transactions by bench_client, DELETE+FULL,
              WAL+FULL, WAL+NORMAL, the sides alternating over the rounds;
              the ratio on/off per round, its median. The daemon's CPU time
              per transaction (utime+stime from /proc/PID/stat, the "on"
              side's counted after its uploads are done) for both sides.
  lag         one writer at a fixed rate (WAL+NORMAL) for --seconds; /info
              polled every 10 ms gives when each TXID was first reported
              uploaded (the object's PUT answered); lag = that minus the
              commit's return. p50, p99, max. S3 requests by kind during the
              run and during --idle seconds without writes, per hour.
  restore     a database of --restore-mb MB loaded in big transactions (it
              goes up as a snapshot), then --restore-txns single-row
              transactions (L0 objects), all uploaded; `ltxfs restore` of the
              latest state, timed; then plain GETs of the same objects, 8 in
              parallel, from the same server in the same run; ratio GETs/restore.
"""
import argparse
import concurrent.futures
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from s3moto import Moto  # noqa: E402

BUILD = os.environ.get("LTXFS_BUILD", os.path.join(ROOT, "build"))
LTXFS = os.path.join(BUILD, "src", "ltxfs")
CLIENT = os.path.join(BUILD, "tests", "bench", "bench_client")
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


class Node:
    def __init__(self, name, base, backup=""):
        self.name = name
        self.dir = os.path.join(base, name)
        self.data = os.path.join(base, name + "-data")
        self.cfg = os.path.join(base, name + ".yml")
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.log = os.path.join(base, name + ".log")
        os.makedirs(self.dir, exist_ok=True)
        with open(self.cfg, "w") as f:
            f.write("fuse:\n  dir: %s\ndata:\n  dir: %s\nhttp:\n  addr: 127.0.0.1:%d\n"
                    "lease:\n  type: static\n  candidate: true\n  hostname: %s\n"
                    "  advertise-url: %s\n%s" % (self.dir, self.data, self.port, name,
                                                 self.url, backup))
        self.proc = None

    def start(self):
        self.logf = open(self.log, "a")
        self.proc = subprocess.Popen([LTXFS, "mount", "-config", self.cfg],
                                     stdout=self.logf, stderr=subprocess.STDOUT)
        end = time.monotonic() + 60
        while not mounted(self.dir):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError("mount of %s failed (see %s)" % (self.dir, self.log))
            time.sleep(0.01)
        while True:
            try:
                if self.info().get("isPrimary"):
                    break
            except OSError:
                pass
            if time.monotonic() > end:
                raise RuntimeError("%s is not primary" % self.name)
            time.sleep(0.02)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)
        self.logf.close()

    def path(self, name):
        return os.path.join(self.dir, name)

    def info(self):
        with urllib.request.urlopen(self.url + "/info", timeout=5) as r:
            return json.loads(r.read())

    def db(self, name):
        for d in self.info()["databases"]:
            if d["name"] == name:
                return d
        return None

    def metrics(self, name):
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line.startswith(name):
                m = re.match(r'%s(\{[^}]*\})? (\S+)' % re.escape(name), line)
                if m:
                    out[m.group(1) or ""] = float(m.group(2))
        return out

    def cpu_s(self):
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime

    def wait_uploaded(self, db, timeout=600):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            d = self.db(db)
            b = d and d.get("backup")
            if b and b["known"] and b["uploadedTxid"] == d["txid"] and int(d["txid"], 16):
                return int(d["txid"], 16)
            time.sleep(0.05)
        raise RuntimeError("%s: %s not uploaded after %ds" % (self.name, db, timeout))


def clean(node, name):
    for sfx in ("", "-journal", "-wal", "-shm"):
        if os.path.exists(node.path(name + sfx)):
            os.unlink(node.path(name + sfx))


def requests(node):
    return {k: v for k, v in node.metrics("ltxfs_backup_requests_total").items()}


def req_delta(a, b, seconds):
    out = {}
    for k in b:
        kind = re.search('kind="([^"]*)"', k)
        d = b[k] - a.get(k, 0)
        if d:
            out[kind.group(1) if kind else k] = d * 3600.0 / seconds
    return out


# ------------------------------------------------------------- throughput

def bench_throughput(off, on, rounds):
    cases = [("delete", "full", 600), ("wal", "full", 2000), ("wal", "normal", 8000)]
    lines = []
    for mode, sync, n in cases:
        tps = {"off": [], "on": []}
        cpu = {"off": [], "on": []}
        for r in range(rounds):
            order = [("off", off), ("on", on)] if r % 2 == 0 else [("on", on), ("off", off)]
            for label, node in order:
                name = "thr-%s-%s-%d.db" % (mode, sync, r)
                clean(node, name)
                c0 = node.cpu_s()
                out = subprocess.check_output([CLIENT, "insert", node.path(name), mode, sync,
                                               str(n)], text=True)
                tps[label].append(float(out.split()[0]))
                if label == "on":
                    node.wait_uploaded(name)
                cpu[label].append((node.cpu_s() - c0) / n)
        ratio = statistics.median(tps["on"][i] / tps["off"][i] for i in range(rounds))
        lines.append("%s+%s: off %.0f tx/s, on %.0f tx/s, on/off %.3f (median of %d); daemon "
                     "CPU per tx off %.0f us, on %.0f us"
                     % (mode.upper(), sync.upper(), statistics.median(tps["off"]),
                        statistics.median(tps["on"]), ratio, rounds,
                        statistics.median(cpu["off"]) * 1e6, statistics.median(cpu["on"]) * 1e6))
    return lines


# -------------------------------------------------------------------- lag

def bench_lag(on, rate, seconds, idle):
    name = "lag.db"
    clean(on, name)
    c = sqlite3.connect(on.path(name), timeout=30, isolation_level=None)
    c.execute("PRAGMA journal_mode=wal")
    c.execute("PRAGMA synchronous=normal")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    t0 = on.wait_uploaded(name)
    seen = []  # (time, uploaded txid)
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            try:
                d = on.db(name)
                seen.append((time.monotonic(), int(d["backup"]["uploadedTxid"], 16)))
            except (OSError, KeyError, TypeError):
                pass
            time.sleep(0.01)

    th = threading.Thread(target=poll)
    th.start()
    r0, cpu0 = requests(on), on.cpu_s()
    commits = []
    start = time.monotonic()
    n = int(rate * seconds)
    for i in range(n):
        due = start + i / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        c.execute("INSERT INTO t(v) VALUES (randomblob(100))")
        commits.append(time.monotonic())
    took = time.monotonic() - start
    last = on.wait_uploaded(name)
    elapsed = time.monotonic() - start
    r1, cpu1 = requests(on), on.cpu_s()
    time.sleep(0.1)
    stop.set()
    th.join()
    c.close()
    assert last == t0 + n, (last, t0, n)
    lags = []
    j = 0
    for i, tc in enumerate(commits):
        txid = t0 + i + 1
        while j < len(seen) and seen[j][1] < txid:
            j += 1
        if j == len(seen):
            break
        lags.append(max(0.0, seen[j][0] - tc))
    lags.sort()
    pct = lambda p: lags[min(len(lags) - 1, int(p * len(lags)))]  # noqa: E731
    lines = ["lag at %d tx/s (achieved %.0f tx/s over %.1f s, WAL+NORMAL, sync-interval 1s): "
             "p50 %.3f s, p99 %.3f s, max %.3f s (%d commits)"
             % (rate, n / took, took, pct(0.5), pct(0.99), lags[-1], len(lags)),
             "daemon CPU per tx with backup on, at that rate: %.0f us" % ((cpu1 - cpu0) / n * 1e6),
             "S3 requests per hour under load: %s" % fmt_req(req_delta(r0, r1, elapsed))]
    i0 = requests(on)
    time.sleep(idle)
    i1 = requests(on)
    lines.append("S3 requests per hour idle (%d s measured): %s"
                 % (idle, fmt_req(req_delta(i0, i1, idle)) or "0"))
    return lines


def fmt_req(d):
    return ", ".join("%s %.0f" % (k, v) for k, v in sorted(d.items()))


# ---------------------------------------------------------------- restore

def bench_restore(moto, bucket, on, mb, txns, base):
    name = "big.db"
    clean(on, name)
    rows = mb * 1024 * 1024 // 1100
    t = time.monotonic()
    subprocess.check_call(["sqlite3", on.path(name),
                           "PRAGMA journal_mode=wal; PRAGMA synchronous=normal;"
                           "CREATE TABLE t(id INTEGER PRIMARY KEY, data BLOB);"
                           "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c "
                           "WHERE x<%d) INSERT INTO t(data) SELECT randomblob(1000) FROM c;"
                           % rows], stdout=subprocess.DEVNULL)
    on.wait_uploaded(name)
    c = sqlite3.connect(on.path(name), timeout=30, isolation_level=None)
    c.execute("PRAGMA synchronous=normal")
    for i in range(txns):
        c.execute("UPDATE t SET data = randomblob(1000) WHERE id = ?", (1 + i * 7919 % rows,))
    c.close()
    last = on.wait_uploaded(name)
    load = time.monotonic() - t
    size = os.path.getsize(os.path.join(on.data, "dbs", name, "database"))
    keys = [(k, s) for k, s in moto.keys(bucket, "bench") if "/big.db/" in k and
            k.endswith(".ltx")]
    out = os.path.join(base, "restored.db")
    times = []
    for _ in range(2):
        if os.path.exists(out):
            os.unlink(out)
        t = time.monotonic()
        subprocess.check_call([LTXFS, "restore", "-config", on.cfg, "-o", out, name],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.monotonic() - t)
    rt = min(times)
    # what the restore reads: the newest snapshot and every object after it
    # (no compaction configured here, so one chain of L0 objects)
    def rng(k):
        lv, f = k.split("/")[-2:]
        mn, mx = f[:-4].split("-")
        return lv, int(mn, 16), int(mx, 16)
    snap = max((k for k in keys if rng(k[0])[0] == "0009"), key=lambda k: rng(k[0])[2])
    plan = [snap] + [k for k in keys if rng(k[0])[0] == "0000" and
                     rng(k[0])[1] > rng(snap[0])[2]]
    t = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        got = sum(len(b) for b in ex.map(lambda k: moto.get(bucket, k[0]), plan))
    gt = time.monotonic() - t
    os.unlink(out)
    return ["restore: database %.0f MB, read as %d objects (%.0f MB) up to TXID %x, of %d "
            "in the bucket; loaded and "
            "uploaded in %.0f s; ltxfs restore %.2f s (best of 2); plain GETs of the same "
            "objects, 8 in parallel, %.2f s; GETs/restore %.2f"
            % (size / 1048576.0, len(plan), got / 1048576.0, last, len(keys), load, rt, gt,
               gt / rt)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--idle", type=int, default=60)
    ap.add_argument("--restore-mb", type=int, default=256)
    ap.add_argument("--restore-txns", type=int, default=20000)
    ap.add_argument("--only", default="throughput,lag,restore")
    ap.add_argument("--dir", default=os.environ.get("BENCH_DIR", "/var/tmp"))
    a = ap.parse_args()
    if not os.path.exists(CLIENT):
        sys.exit("build first: meson setup build && ninja -C build")
    only = a.only.split(",")
    base = tempfile.mkdtemp(prefix="ltxfs-bench-backup-", dir=a.dir)
    moto = Moto(os.path.join(base, "moto.log"))
    bucket = "benchbackup"
    moto.create_bucket(bucket)
    off = Node("off", base)
    on = Node("on", base, moto.backup_section(bucket, path="bench", interval="1s"))
    print("kernel %s, SQLite %s, build %s, dir %s" % (
        os.uname().release, sqlite3.sqlite_version, BUILD, base))
    try:
        off.start()
        on.start()
        if "throughput" in only:
            print("\n".join(bench_throughput(off, on, a.rounds)), flush=True)
        if "lag" in only:
            print("\n".join(bench_lag(on, a.rate, a.seconds, a.idle)), flush=True)
        if "restore" in only:
            print("\n".join(bench_restore(moto, bucket, on, a.restore_mb, a.restore_txns,
                                          base)), flush=True)
    finally:
        for n in (off, on):
            try:
                n.stop()
            except Exception as e:  # keep tearing down
                print("stop %s: %s" % (n.name, e))
        moto.stop()
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
