#!/usr/bin/python3
"""ltxfs benchmarks: ratios against plain SQLite and libfuse's passthrough_ll.

Run on demand (never part of the test suite):

    /usr/bin/python3 tests/bench/bench.py [--rounds 5] [--pin] [--only insert,select,restart]

Every figure is a ratio measured in the same run on the same disk, with the
sides alternating (A B C, then rotated) over several rounds; the report gives
medians. Absolute tx/s on a shared 2-core VM move a lot; the ratios are what
count (see ../shared/reference/perf.md).

  insert   single-row INSERT transactions, one client: DELETE+FULL, WAL+FULL,
           WAL+NORMAL
  select   point SELECTs by rowid on a 100k-row table, DELETE and WAL
  restart  clean restart (and kill -9 restart) of a 1 GB database
"""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("LTXFS_BUILD", os.path.join(ROOT, "build"))
LTXFS = os.path.join(BUILD, "src", "ltxfs")
CLIENT = os.path.join(BUILD, "tests", "bench", "bench_client")
PT_SRC = "/usr/share/doc/libfuse3-dev/examples/passthrough_ll.c"
PT_BIN = os.path.join(BUILD, "passthrough_ll")


def mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def wait_mounted(path, proc, timeout=60):
    end = time.monotonic() + timeout
    while not mounted(path):
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError("mount of %s failed" % path)
        time.sleep(0.01)


def build_passthrough():
    if os.path.exists(PT_BIN):
        return
    flags = subprocess.check_output(["pkg-config", "--cflags", "--libs", "fuse3"],
                                    text=True).split()
    subprocess.check_call(["gcc", "-O2", "-o", PT_BIN, PT_SRC] + flags)


class Side:
    def __init__(self, name, base, pin):
        self.name = name
        self.dir = os.path.join(base, name)
        self.proc = None
        self.pin = pin
        os.makedirs(self.dir, exist_ok=True)

    def prefix(self):
        return ["taskset", "-c", "0"] if self.pin else []

    def start(self):
        pass

    def stop(self):
        pass

    def path(self, name):
        return os.path.join(self.dir, name)


class Plain(Side):
    pass


class Passthrough(Side):
    def __init__(self, name, base, pin):
        super().__init__(name, base, pin)
        self.src = os.path.join(base, name + "-src")
        os.makedirs(self.src, exist_ok=True)

    def start(self):
        self.proc = subprocess.Popen(self.prefix() + [PT_BIN, "-f", "-o",
                                     "source=%s,cache=auto" % self.src, self.dir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_mounted(self.dir, self.proc)

    def stop(self):
        subprocess.call(["umount", self.dir])
        self.proc.wait(30)


class Ltxfs(Side):
    def __init__(self, name, base, pin):
        super().__init__(name, base, pin)
        self.data = os.path.join(base, name + "-data")
        self.cfg = os.path.join(base, name + ".yml")
        with open(self.cfg, "w") as f:
            f.write("fuse:\n  dir: %s\ndata:\n  dir: %s\nlease:\n  type: static\n"
                    % (self.dir, self.data))

    def start(self):
        self.proc = subprocess.Popen(self.prefix() + [LTXFS, "mount", "-config", self.cfg],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_mounted(self.dir, self.proc)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def clean(side, name):
    for sfx in ("", "-journal", "-wal", "-shm"):
        p = side.path(name + sfx)
        if os.path.exists(p):
            os.unlink(p)


def run_client(side, args):
    out = subprocess.check_output(side.prefix() + [CLIENT] + args, text=True)
    ops, p50, p99 = (float(x) for x in out.split())
    return ops, p50, p99


def bench_insert(sides, rounds):
    cases = [("delete", "full", 600), ("wal", "full", 2000), ("wal", "normal", 8000)]
    results = {}
    for mode, sync, n in cases:
        per = {s.name: [] for s in sides}
        for r in range(rounds):
            order = sides[r % len(sides):] + sides[:r % len(sides)]
            for s in order:
                name = "ins-%s-%s-%d.db" % (mode, sync, r)
                clean(s, name)
                per[s.name].append(run_client(s, ["insert", s.path(name), mode, sync, str(n)]))
                clean(s, name)
        results[(mode, sync)] = per
    return results


def make_select_db(side, name, mode, rows=100000):
    clean(side, name)
    sql = ("PRAGMA journal_mode=%s;"
           "CREATE TABLE t(id INTEGER PRIMARY KEY, num INTEGER, data TEXT);"
           "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<%d) "
           "INSERT INTO t(num, data) SELECT x, printf('%%0200d', x) FROM c;" % (mode, rows))
    subprocess.check_call(["sqlite3", side.path(name), sql], stdout=subprocess.DEVNULL)


def bench_select(sides, rounds):
    results = {}
    for mode in ("delete", "wal"):
        for s in sides:
            make_select_db(s, "sel-%s.db" % mode, mode)
        per = {s.name: [] for s in sides}
        for r in range(rounds):
            order = sides[r % len(sides):] + sides[:r % len(sides)]
            for s in order:
                run_client(s, ["select", s.path("sel-%s.db" % mode), mode, "20000"])  # warm
                per[s.name].append(run_client(s, ["select", s.path("sel-%s.db" % mode), mode,
                                                  "200000"]))
        results[(mode, "select")] = per
    return results


def bench_restart(base, pin, size_mb=1024):
    lt = Ltxfs("restart", base, pin)
    lt.start()
    db = lt.path("big.db")
    rows = size_mb * 1024 * 1024 // 1100
    t0 = time.monotonic()
    subprocess.check_call(["sqlite3", db,
                           "PRAGMA journal_mode=wal; PRAGMA synchronous=normal;"
                           "CREATE TABLE t(id INTEGER PRIMARY KEY, data BLOB);"
                           "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c "
                           "WHERE x<%d) INSERT INTO t(data) SELECT randomblob(1000) FROM c;"
                           % rows], stdout=subprocess.DEVNULL)
    load = time.monotonic() - t0
    lt.stop()
    size = os.path.getsize(os.path.join(lt.data, "dbs", "big.db", "database"))
    out = {"size_mb": size / 1048576.0, "load_s": load}
    clean_times, crash_times = [], []
    for _ in range(3):
        t0 = time.monotonic()
        lt.start()
        clean_times.append(time.monotonic() - t0)
        lt.stop()
    for _ in range(2):
        lt.start()
        lt.proc.kill()
        lt.proc.wait()
        subprocess.call(["umount", "-l", lt.dir])
        t0 = time.monotonic()
        lt.start()
        crash_times.append(time.monotonic() - t0)
        lt.stop()
    out["clean_restart_s"] = statistics.median(clean_times)
    out["crash_restart_s"] = statistics.median(crash_times)
    return out


def report(results):
    lines = []
    for key, per in results.items():
        med = {k: statistics.median(v[0] for v in vals) for k, vals in per.items()}
        rounds = len(next(iter(per.values())))
        r_plain = statistics.median(per["ltxfs"][i][0] / per["plain"][i][0]
                                    for i in range(rounds))
        r_pt = statistics.median(per["ltxfs"][i][0] / per["passthrough_ll"][i][0]
                                 for i in range(rounds))
        pt_plain = statistics.median(per["passthrough_ll"][i][0] / per["plain"][i][0]
                                     for i in range(rounds))
        p99 = {k: statistics.median(v[2] for v in vals) for k, vals in per.items()}
        lines.append("%-16s plain %9.0f/s  pt_ll %9.0f/s  ltxfs %9.0f/s | ltxfs/plain %.2f "
                     "ltxfs/pt_ll %.2f pt_ll/plain %.2f | p99 us plain %.0f pt %.0f ltxfs %.0f"
                     % ("%s/%s" % key, med["plain"], med["passthrough_ll"], med["ltxfs"],
                        r_plain, r_pt, pt_plain, p99["plain"], p99["passthrough_ll"],
                        p99["ltxfs"]))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pin", action="store_true", help="pin daemons and client to CPU 0")
    ap.add_argument("--only", default="insert,select,restart")
    ap.add_argument("--dir", default=os.environ.get("BENCH_DIR", "/var/tmp"))
    ap.add_argument("--restart-mb", type=int, default=1024)
    ap.add_argument("--fs-image", action="store_true",
                    help="run every side on a fresh journaled ext4 loop image in --dir "
                         "(the VM's root ext4 has no journal, which makes inode allocation "
                         "slow after mass deletions)")
    a = ap.parse_args()
    image_mnt = None
    if a.fs_image:
        img = os.path.join(a.dir, "ltxfs-bench.img")
        image_mnt = os.path.join(a.dir, "ltxfs-bench-fs")
        os.makedirs(image_mnt, exist_ok=True)
        subprocess.check_call(["truncate", "-s", "%dM" % (a.restart_mb * 3 + 2048), img])
        subprocess.check_call(["mkfs.ext4", "-q", "-F", img])
        subprocess.check_call(["mount", "-o", "loop", img, image_mnt])
        a.dir = image_mnt
    if not os.path.exists(CLIENT):
        sys.exit("build first: meson setup build && ninja -C build")
    build_passthrough()
    base = tempfile.mkdtemp(prefix="ltxfs-bench-", dir=a.dir)
    only = a.only.split(",")
    sides = [Plain("plain", base, a.pin), Passthrough("passthrough_ll", base, a.pin),
             Ltxfs("ltxfs", base, a.pin)]
    print("kernel %s, SQLite %s, %s, dir %s%s" % (
        os.uname().release, subprocess.check_output(["sqlite3", "--version"], text=True).split()[0],
        "pinned to CPU 0" if a.pin else "unpinned", base,
        " (journaled ext4 loop image)" if image_mnt else ""))
    try:
        for s in sides:
            s.start()
        results = {}
        if "insert" in only:
            results.update(bench_insert(sides, a.rounds))
        if "select" in only:
            results.update(bench_select(sides, a.rounds))
        print(report(results))
    finally:
        for s in sides:
            try:
                s.stop()
            except Exception as e:  # keep tearing down
                print("stop %s: %s" % (s.name, e))
    if "restart" in only:
        r = bench_restart(base, a.pin, a.restart_mb)
        print("restart: database %.0f MB (loaded in %.1fs); clean restart %.3fs; restart "
              "after kill -9 %.3fs" % (r["size_mb"], r["load_s"], r["clean_restart_s"],
                                       r["crash_restart_s"]))
    shutil.rmtree(base, ignore_errors=True)
    if image_mnt:
        subprocess.call(["umount", image_mnt])
        os.unlink(os.path.join(os.path.dirname(image_mnt), "ltxfs-bench.img"))


if __name__ == "__main__":
    main()
