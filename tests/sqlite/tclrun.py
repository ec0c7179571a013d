#!/usr/bin/python3
"""Run SQLite's TCL test files in a plain directory and in an ltxfs mount,
and report the test cases that fail through the mount but not in the plain
directory.

SQLite's harness (test/tester.tcl) prints one line per test case on stdout,
"<name>... Ok" when it passes and "<name>..." followed by "Error: <message>"
or "! <name> expected: [...]" / "! <name> got: [...]" when it fails, and ends
with "N errors out of M tests". A test file is run by testfixture (built by
tests/sqlite/build.sh) with "--testdir=", so the harness works in its current
directory: a fresh temporary directory for the plain run, the root of an
ltxfs mount for the other.

The comparison is per test case name, counting repeats: every case that
passed in the plain directory must pass as often through the mount. A case
that fails in both is SQLite's or this machine's business (running as root,
say), not ltxfs's. A mount run that dies or times out leaves its remaining
cases unpassed, so they count as differences.

FILES lists the chosen test files and the set each belongs to: "ci" (the
fast subset tests/run.sh runs), "full" (agrees too, run on demand) or
"pending" (cannot agree yet, with the reason); EXCLUDED lists single test
cases exempt from the comparison, with the reason. tests/sqlite/README.md documents both;
tests/integration/test_sqlite_tcl.py runs them.

By hand, against a mount you started yourself (hold the mount lock):

    /usr/bin/python3 tests/sqlite/tclrun.py --mount /path/to/mnt wal.test pager1.test
    /usr/bin/python3 tests/sqlite/tclrun.py --mount /path/to/mnt --set full
"""
import argparse
import collections
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# ---- the chosen files ----------------------------------------------------------------

# Why a test case or a file cannot agree through the mount. Each is a
# documented limit of ltxfs (README.md, docs/architecture.md) or a product
# bug reported with this work; tests/sqlite/README.md explains each.
MEM = ("journal_mode=MEMORY or OFF: ltxfs refuses a database write outside a journal or "
       "WAL transaction, SQLite reports 'disk I/O error' (README, What you see in the mount)")
RAW = ("writes bytes into the database or its WAL outside SQLite (hexio_write, TCL "
       "open/puts) to corrupt or edit it: ltxfs refuses a database write outside a "
       "transaction (EPERM), and a rewrite of a WAL commit it captured is taken for SQLite "
       "undoing that commit (sticky EIO, docs/architecture.md known limit 2)")
ORPHAN = ("creates a -journal or -wal before, or without, its database (a crash image built "
          "file by file): ltxfs keeps -journal and -wal only beside an existing database "
          "(ENOENT), and the whole-file install of the database then replaces its WAL")
CRASHCOPY = ("copies a database file in the middle of a write transaction (a crash image): "
             "the whole-file install refuses a file whose size does not match the page count "
             "in its header (docs/architecture.md section 11)")
POS = "lists the directory (glob test.db*): ltxfs shows a read-only <db>-pos beside each database"
INODE = ("re-creates a file under the name of one that a connection still has open: ltxfs "
         "gives the new file the old one's inode number, so the kernel shares POSIX locks and "
         "cached pages between them (docs/architecture.md known limit 10)")

# Each chosen test file: (status, why). "ci": agrees through the mount, run
# by CI; "full": agrees, but too slow for CI (LTXFS_SQLITE_TCL=full runs it);
# "pending": cannot agree yet, for the reason given (LTXFS_SQLITE_TCL=all
# runs these too, to see where they stand). Keep tests/sqlite/README.md in
# step: test_sqlite_tcl.py checks that it names every file and exclusion.
FILES = {
    # WAL
    "wal.test": ("pending", "wal-18.1.*: " + RAW + "; the file stops at wal-18.1.1"),
    "wal3.test": ("full", "21 s through the mount"),
    "wal4.test": ("ci", ""),
    "wal5.test": ("ci", ""),
    "wal6.test": ("ci", ""),
    "wal64k.test": ("ci", ""),
    "wal7.test": ("ci", ""),
    "wal8.test": ("ci", ""),
    "wal9.test": ("ci", ""),
    "walbak.test": ("ci", ""),
    "walbig.test": ("ci", ""),
    "walcksum.test": ("pending", RAW + "; the file stops at walcksum-1.big.3"),
    "walcrash.test": ("pending", "the crash VFS tears the unsynced tail of the WAL, below a "
                      "commit ltxfs captured when its frame was written: " + RAW),
    "walcrash2.test": ("full", "20 s through the mount"),
    "walcrash4.test": ("full", "10 s through the mount"),
    "walhook.test": ("ci", ""),
    "walmode.test": ("ci", ""),
    "walnoshm.test": ("ci", ""),
    "waloverwrite.test": ("ci", ""),
    "walpersist.test": ("ci", ""),
    "walprotocol.test": ("full", "20 s (its own busy-wait timeouts)"),
    "walprotocol2.test": ("ci", ""),
    "walro.test": ("ci", ""),
    "walro2.test": ("ci", ""),
    "walsetlk.test": ("full", "15 s (its own lock timeouts)"),
    "walshared.test": ("ci", ""),
    "walslow.test": ("full", "53 s through the mount"),
    "walvfs.test": ("full", "10 s (its own timeouts)"),
    "e_wal.test": ("ci", ""),
    "e_walauto.test": ("full", "17 s through the mount"),
    "e_walckpt.test": ("ci", ""),
    "e_walhook.test": ("ci", ""),
    "nockpt.test": ("ci", ""),
    "zerodamage.test": ("ci", ""),
    # locking
    "lock.test": ("ci", ""),
    "lock2.test": ("ci", ""),
    "lock3.test": ("ci", ""),
    "lock4.test": ("ci", ""),
    "lock5.test": ("ci", ""),
    "lock7.test": ("ci", ""),
    "nolock.test": ("ci", ""),
    "unixexcl.test": ("ci", ""),
    "sharedlock.test": ("ci", ""),
    "superlock.test": ("pending", "db_swap overwrites a database while the same process holds "
                       "every lock on it (a superlock): the whole-file install waits for those "
                       "locks in close(2) and never gets them, a self-deadlock "
                       "(docs/architecture.md known limit 10)"),
    "busy.test": ("ci", ""),
    "busy2.test": ("full", "13 s through the mount in CI"),
    "exclusive.test": ("ci", ""),
    "exclusive2.test": ("ci", ""),
    # pager, journal, transactions
    "pager1.test": ("pending", "pager1-4.4.*.m1: " + MEM + "; the file stops there"),
    "pager2.test": ("pending", MEM + " in its second configuration, which stops the file"),
    "pager3.test": ("ci", ""),
    "pager4.test": ("pending", "renames an open database, then creates a new one under the old "
                    "name: " + INODE),
    "pageropt.test": ("ci", ""),
    "pagesize.test": ("ci", ""),
    "cacheflush.test": ("ci", ""),
    "cachespill.test": ("ci", ""),
    "chunksize.test": ("ci", ""),
    "journal1.test": ("ci", ""),
    "journal2.test": ("pending", CRASHCOPY + "; the copy is outside a test case, so the file "
                      "stops"),
    "journal3.test": ("ci", ""),
    "jrnlmode.test": ("ci", ""),
    "jrnlmode2.test": ("ci", ""),
    "jrnlmode3.test": ("pending", "28 of its cases use " + MEM),
    "rollback.test": ("ci", ""),
    "rollback2.test": ("ci", ""),
    "sync.test": ("ci", ""),
    "sync2.test": ("ci", ""),
    "io.test": ("ci", ""),
    "filefmt.test": ("ci", ""),
    "rdonly.test": ("ci", ""),
    "openv2.test": ("ci", ""),
    "delete.test": ("ci", ""),
    "delete2.test": ("ci", ""),
    "delete3.test": ("ci", ""),
    "delete4.test": ("ci", ""),
    "delete_db.test": ("ci", ""),
    "trans.test": ("full", "35 s through the mount"),
    "trans2.test": ("full", "79 s through the mount"),
    "trans3.test": ("ci", ""),
    "stmt.test": ("ci", ""),
    # savepoints
    "savepoint.test": ("ci", ""),
    "savepoint2.test": ("ci", ""),
    "savepoint4.test": ("full", "109 s through the mount"),
    "savepoint5.test": ("ci", ""),
    "savepoint7.test": ("ci", ""),
    # vacuum
    "vacuum.test": ("ci", ""),
    "vacuum2.test": ("ci", ""),
    "vacuum3.test": ("full", "40 s through the mount (page sizes 1024 to 65536 by VACUUM)"),
    "vacuum4.test": ("ci", ""),
    "vacuum5.test": ("ci", ""),
    "vacuum6.test": ("full", "43 s through the mount"),
    "vacuum-into.test": ("ci", ""),
    "e_vacuum.test": ("ci", ""),
    "incrvacuum.test": ("ci", ""),
    "incrvacuum2.test": ("full", "22 s through the mount in CI"),
    "incrvacuum3.test": ("ci", ""),
    "autovacuum.test": ("ci", ""),
    "autovacuum2.test": ("ci", ""),
    # attach
    "attach.test": ("pending", "fails in a plain directory too when run as root (attach-6.2: "
                    "'Tests do not work when run as root'), which CI is"),
    "attach2.test": ("ci", ""),
    "attach3.test": ("ci", ""),
    "attach4.test": ("ci", ""),
    # crash recovery
    "crash.test": ("full", "41 s through the mount"),
    "crash2.test": ("ci", ""),
    "crash3.test": ("full", "22 s through the mount"),
    "crash4.test": ("full", "17 s through the mount"),
    "crash6.test": ("full", "14 s through the mount in CI"),
    "crash7.test": ("full", "42 s through the mount"),
    "crash8.test": ("ci", ""),
    "ioerr.test": ("full", "23 s through the mount"),
    "ioerr2.test": ("full", "17 s through the mount"),
    "ioerr3.test": ("ci", ""),
    "ioerr4.test": ("ci", ""),
    # shared cache
    "shared.test": ("ci", ""),
    "shared2.test": ("ci", ""),
    "shared3.test": ("ci", ""),
    "shared4.test": ("ci", ""),
    "shared6.test": ("ci", ""),
    "shared7.test": ("ci", ""),
    "shared8.test": ("ci", ""),
    "shared9.test": ("ci", ""),
    "sharedA.test": ("ci", ""),
    "sharedB.test": ("ci", ""),
    # mmap
    "mmap1.test": ("ci", ""),
    "mmap2.test": ("ci", ""),
    "mmap3.test": ("ci", ""),
    "mmap4.test": ("full", "23 s through the mount"),
    "mmapwarm.test": ("ci", ""),
    # backup, schema changes from other connections, blobs, misc file behaviour
    "backup.test": ("pending", "backup-3.41.1 ran for more than 5 minutes in a plain "
                    "directory on this machine (an earlier run took 13 s through the mount): no "
                    "reliable comparison"),
    "backup4.test": ("ci", ""),
    "backup5.test": ("ci", ""),
    "schema.test": ("ci", ""),
    "schema2.test": ("ci", ""),
    "schema3.test": ("ci", ""),
    "schema4.test": ("ci", ""),
    "schema5.test": ("ci", ""),
    "incrblob.test": ("ci", ""),
    "incrblob2.test": ("ci", ""),
    "pragma3.test": ("ci", ""),
    "tempdb.test": ("ci", ""),
    "tempdb2.test": ("ci", ""),
    "uri.test": ("ci", ""),
    "dbpage.test": ("ci", ""),
    "dbstatus.test": ("ci", ""),
    "filectrl.test": ("ci", ""),
    "hook.test": ("ci", ""),
    "pcache2.test": ("ci", ""),
    "corrupt2.test": ("pending", RAW + "; corrupt2-1.2 stops the file"),
    "corrupt3.test": ("ci", ""),
    "multiplex.test": ("pending", "the multiplex VFS splits a database into chunk files "
                       "(test.x001...) that are not SQLite databases, under names ltxfs takes "
                       "for databases; also " + MEM + " and " + POS),
    "oserror.test": ("pending", "oserror-2.1.*: makes a directory named test.db-wal so that "
                     "SQLite's unlink of the WAL fails; in the mount that name is the WAL "
                     "companion of test.db, which does not exist, so SQLite opens without the "
                     "error the test expects"),
    "symlink.test": ("pending", "symbolic links: the mount refuses symlink(2) (EPERM)"),
    "tkt-2d1a5c67d.test": ("ci", ""),
    "tkt-313723c356.test": ("ci", ""),
    "tkt-5d863f876e.test": ("ci", ""),
    "tkt-9d68c883.test": ("ci", ""),
    "tkt-80ba201079.test": ("ci", ""),
    "tkt-f3e5abed55.test": ("ci", ""),
}


# (file, test case) -> why the case is exempt from the comparison. A case
# that fails only because an earlier excluded one did (a connection it
# never opened) carries the same reason.
EXCLUDED = {}
for _f, _names, _why in [
    ("wal6.test", "wal6-1.1.memory wal6-1.2.memory wal6-1.3.memory wal6-1.1.off wal6-1.2.off "
     "wal6-1.3.off", MEM),
    ("walmode.test", "walmode-6.1 walmode-6.2", MEM),
    ("savepoint.test", "savepoint-13.2 savepoint-13.3 savepoint-13.4", MEM),
    ("jrnlmode.test", "jrnlmode-3.2 jrnlmode-4.3 jrnlmode-4.4 jrnlmode-6.7 jrnlmode-7.1 "
     "jrnlmode-7.2 jrnlmode-8.2 jrnlmode-8.3 jrnlmode-8.4 jrnlmode-8.11", MEM),
    ("exclusive.test", "exclusive-6.4 exclusive-6.5 exclusive-7.1", ORPHAN),
    ("journal1.test", "journal1-1.2", ORPHAN),
    ("incrvacuum3.test", "incrvacuum3-1.1.4.3 incrvacuum3-1.1.5.3 incrvacuum3-1.1.6.3 "
     "incrvacuum3-2.1.1.3 incrvacuum3-2.1.2.3 incrvacuum3-2.1.3.3 incrvacuum3-2.1.4.3 "
     "incrvacuum3-2.1.5.3 incrvacuum3-2.1.6.3 incrvacuum3-2.1.7.3 incrvacuum3-2.1.8.3", ORPHAN),
    ("tkt-2d1a5c67d.test", "tkt-2d1a5c67d-3.6", ORPHAN),
    ("ioerr.test", "ioerr-9.1.1", ORPHAN),
    ("walslow.test", "walslow-3.2", ORPHAN),
    ("walslow.test", "walslow-3.3.1 walslow-3.3.2 walslow-3.3.3 walslow-3.3.20 walslow-3.3.40 "
     "walslow-3.3.60 walslow-3.3.80 walslow-3.3.100 walslow-3.3.120 walslow-3.3.140 "
     "walslow-3.3.160 walslow-3.3.180 walslow-3.3.200 walslow-3.3.220 walslow-3.3.240 "
     "walslow-3.3.253 walslow-3.3.254 walslow-3.3.255", RAW),
    ("crash8.test", "crash8-5.1.2 crash8-5.2.2 crash8-5.5.2 crash8-5.7.2 crash8-5.8.2 "
     "crash8-5.9.2", CRASHCOPY),
    ("filefmt.test", "filefmt-1.3 filefmt-1.6 filefmt-1.7 filefmt-1.8", RAW),
    ("exclusive2.test", "exclusive2-1.7 exclusive2-1.9 exclusive2-1.10 exclusive2-2.4 "
     "exclusive2-2.5 exclusive2-2.8", RAW),
    ("corrupt3.test", "corrupt3-1.8 corrupt3-1.9 corrupt3-1.10 corrupt3-1.11 corrupt3-1.12",
     RAW),
    ("rdonly.test", "rdonly-1.3.1 rdonly-1.4 rdonly-1.5 rdonly-1.6", RAW),
    ("attach2.test", "attach2-5.3 attach2-5.5", POS),
    ("delete_db.test", "delete_db-1.1.0 delete_db-1.1.1 delete_db-1.2.0 delete_db-1.2.1 "
     "delete_db-1.3.0 delete_db-1.3.1 delete_db-1.4.0 delete_db-1.4.1 delete_db-3.0", POS),
    ("nockpt.test", "nockpt-2.1 nockpt-2.2 nockpt-2.3 nockpt-2.5", INODE),
]:
    for _c in _names.split():
        EXCLUDED[(_f, _c)] = _why


def files(which="ci"):
    """The test files of a set: "ci", "full" (ci and the slow ones that
    agree) or "all" (every chosen file, the pending ones included)."""
    want = {"ci": ("ci",), "full": ("ci", "full"), "all": ("ci", "full", "pending")}[which]
    return sorted(f for f, (status, _) in FILES.items() if status in want)


# ---- building ------------------------------------------------------------------------

def build():
    """Run build.sh (a no-op while its cache is complete) and return the
    directory holding testfixture, mptester and src/. Raises RuntimeError
    with build.sh's output when the build fails."""
    p = subprocess.run(["sh", os.path.join(HERE, "build.sh")], capture_output=True,
                       text=True, stdin=subprocess.DEVNULL)
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines or not os.path.isdir(lines[-1]):
        raise RuntimeError("tests/sqlite/build.sh failed (exit status %d):\n%s%s" % (
            p.returncode, p.stdout[-3000:], p.stderr[-3000:]))
    return lines[-1]


# ---- one run -------------------------------------------------------------------------

_OK = re.compile(r"(\S+)\.\.\. Ok$")
_GOT = re.compile(r"^! (\S+) (expected|got): ")
_STARTED = re.compile(r"(\S+)\.\.\.$")
_SUMMARY = re.compile(r"^(\d+) errors out of (\d+) tests")


class Run:
    """The result of one testfixture run of one file.

    ok: Counter of the names of the cases that passed; failed: the names of
    the cases that failed, in order; detail: name -> the lines the harness
    printed about its failure; summary: (errors, tests) from the last line,
    or None if the run did not get there (it died, or timed out)."""

    def __init__(self, test, cwd, rc, out, elapsed, timed_out):
        self.test = test
        self.cwd = cwd
        self.rc = rc
        self.out = out
        self.elapsed = elapsed
        self.timed_out = timed_out
        self.ok = collections.Counter()
        self.failed = []
        self.detail = collections.defaultdict(list)
        self.summary = None
        self._parse()

    def _parse(self):
        started = None  # the case whose "<name>..." ended the previous line
        for line in self.out.splitlines():
            m = _OK.search(line)
            if m:
                self.ok[m.group(1)] += 1
                started = None
                continue
            m = _GOT.match(line)
            if m:
                if m.group(2) == "expected":
                    self.failed.append(m.group(1))
                self.detail[m.group(1)].append(line)
                started = None
                continue
            if line.startswith("Error: ") and started:
                self.failed.append(started)
                self.detail[started].append(line)
                started = None
                continue
            m = _SUMMARY.match(line)
            if m:
                self.summary = (int(m.group(1)), int(m.group(2)))
            m = _STARTED.search(line)
            started = m.group(1) if m else None

    def tail(self, n=15):
        return "\n".join(self.out.splitlines()[-n:])

    def describe(self):
        if self.timed_out:
            end = "timed out after %.0f s" % self.elapsed
        elif self.summary is None:
            end = "died (exit status %s) before its summary" % self.rc
        else:
            end = "%d errors out of %d tests" % self.summary
        return "%d ok, %d failed, %s, %.1f s" % (sum(self.ok.values()), len(self.failed),
                                                  end, self.elapsed)


def run_file(bdir, test, cwd, timeout=600, env=None, unstick=None):
    """Run test (a file name under test/) with testfixture in cwd, and
    return its Run. The harness runs in its own session: on a timeout the
    whole process group (the harness starts child testfixtures) is killed.
    A process blocked in a FUSE request cannot die until the request is
    answered: if the harness is still there 10 s after the kill, unstick()
    is called (stopping the ltxfs node answers every request)."""
    cmd = [os.path.join(bdir, "testfixture"), os.path.join(HERE, "ltxfs.tcl"),
           os.path.join(bdir, "src", "test", test), "--testdir="]
    e = dict(os.environ)
    e.update(env or {})
    start = time.monotonic()
    with tempfile.TemporaryFile() as out:
        p = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, env=e, start_new_session=True)
        timed_out = False
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(p.pid, signal.SIGKILL)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                if unstick is not None:
                    unstick()
                p.wait()
        elapsed = time.monotonic() - start
        # children a finished harness left behind (a crashed helper) go too
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    return Run(test, cwd, p.returncode, text, elapsed, timed_out)


def run_plain(bdir, test, timeout=600):
    d = tempfile.mkdtemp(prefix="ltxfs-tcl-plain-")
    try:
        return run_file(bdir, test, d, timeout)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def clear_dir(path):
    """Remove every file the harness left in the mount (the -pos files are
    ltxfs's own and go with their database)."""
    for f in glob.glob(os.path.join(path, "*")) + glob.glob(os.path.join(path, ".[!.]*")):
        name = os.path.basename(f)
        if name.endswith("-pos") or name in (".primary", ".lag"):
            continue
        try:
            os.unlink(f)
        except FileNotFoundError:
            pass


# ---- the comparison ------------------------------------------------------------------

def differences(plain, mount, excluded=None):
    """What went wrong through the mount only, less the excluded cases: a
    list of (name, lines), where lines are what the mount run printed about
    that case.

    * a case that failed in the mount run more often than in the plain run;
    * a mount run that died or timed out where the plain run did not (or
      that stopped earlier): the run itself, named "(run)", with the first
      of the cases it never reached.

    A case the plain run passed and a complete mount run never reached is
    not a difference: fault-injection loops (do_faultsim_test, ioerr tests)
    run until an injected fault no longer hits, and how many I/O calls that
    takes depends on the file system."""
    excluded = excluded or {}
    pf = collections.Counter(plain.failed)
    mf = collections.Counter(mount.failed)
    diff = [(name, mount.detail.get(name) or ["failed"]) for name in mf
            if mf[name] > pf[name] and name not in excluded]
    stopped = mount.timed_out or mount.summary is None
    if stopped and (plain.summary is not None or
                    sum(mount.ok.values()) < sum(plain.ok.values())):
        unreached = [name for name, n in plain.ok.items()
                     if mount.ok[name] < n and name not in mf and name not in excluded]
        lines = ["the mount run %s" % mount.describe()]
        if unreached:
            lines.append("%d cases that passed in the plain run never ran, from %s" % (
                len(unreached), unreached[0]))
        lines.extend("| " + l for l in mount.tail(12).splitlines())
        diff.append(("(run)", lines))
    return diff


def excluded_for(test):
    return {case: why for (f, case), why in EXCLUDED.items() if f == test}


def report(test, plain, mount, diff):
    lines = ["%s: plain %s; mount %s" % (test, plain.describe(), mount.describe())]
    for name, detail in diff:
        lines.append("  %s" % name)
        lines.extend("    " + d for d in detail[:16])
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mount", required=True, help="the root of a running ltxfs primary's mount")
    ap.add_argument("--set", choices=["ci", "full", "all"],
                    help="the CI set, every file that agrees, or every chosen file")
    ap.add_argument("--timeout", type=float, default=600, help="per run, in seconds")
    ap.add_argument("tests", nargs="*", help="test files (wal.test ...)")
    a = ap.parse_args()
    tests = list(a.tests) + (files(a.set) if a.set else [])
    if not tests:
        ap.error("no test files: name some, or give --set")
    bdir = build()
    bad = 0
    for test in tests:
        plain = run_plain(bdir, test, a.timeout)
        clear_dir(a.mount)
        mount = run_file(bdir, test, a.mount, a.timeout)
        clear_dir(a.mount)
        diff = differences(plain, mount, excluded_for(test))
        print(report(test, plain, mount, diff), flush=True)
        bad += bool(diff)
    print("%d of %d files differ" % (bad, len(tests)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
