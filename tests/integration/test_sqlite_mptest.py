"""SQLite's multi-process tester, mptest (issue 14).

mptester (mptest/mptest.c, built by tests/sqlite/build.sh from Debian's
sqlite3 source package) runs one of SQLite's mptest scripts: a controller
starts five client processes and hands them tasks (concurrent writers,
readers, a client that dies in the middle of a transaction, VACUUMs that
change the page size) on one database. Each script runs with
--journalmode DELETE and WAL, once in a plain directory and once on an ltxfs
primary with a replica attached. The mount run must give no error that the
plain run of the same script does not also give, and must reach its summary.
Afterwards the replica reaches the primary's position, sqldiff finds no
difference, the replica passes PRAGMA integrity_check, and both nodes'
LTX chains replay to their database files (ltxcheck.verify_database).

CI runs the pairs that agree and take seconds; LTXFS_SQLITE_MPTEST=full
also runs the slow ones (SLOW) and the pending ones (PENDING says why each
cannot agree yet, and those are expected to fail); tests/sqlite/README.md
lists them.
"""
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import wait_for
from helpers import require
from ltxcheck import verify_database

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "sqlite"))
import tclrun  # noqa: E402

SCRIPTS = ["config01", "config02", "crash01", "multiwrite01"]
MODES = ["delete", "wal"]
# Pairs that agree but take about 100 s each (config02 changes the page size
# and VACUUMs, in both modes): LTXFS_SQLITE_MPTEST=full runs them.
SLOW = {
    ("config02", "delete"): "about 100 s (VACUUMs changing the page size)",
    ("config02", "wal"): "about 110 s (VACUUMs changing the page size)",
}
PENDING = {
    ("config01", "wal"): "gives 58 errors and runs 140 s in a plain directory: its tasks switch "
                         "a WAL database that other clients have open to PERSIST, TRUNCATE, "
                         "MEMORY and OFF, and time out waiting for each other",
    ("config01", "delete"): "its tasks 3 and 4 set journal_mode=MEMORY and OFF, whose writes "
                            "ltxfs refuses (README: disk I/O error)",
}
WHICH = os.environ.get("LTXFS_SQLITE_MPTEST", "ci")
if WHICH not in ("ci", "full"):
    raise ValueError("LTXFS_SQLITE_MPTEST must be ci or full, not %r" % WHICH)
PAIRS = [(s, m) for s in SCRIPTS for m in MODES
         if WHICH == "full" or ((s, m) not in PENDING and (s, m) not in SLOW)]

# "<pid>.mptest:ERROR: text" or "<pid>.client03:ERROR: text", one line per
# line of a message
ERROR = re.compile(r"^\d+\.(mptest|client\d+):ERROR: ?(.*)$", re.M)
SUMMARY = re.compile(r"^Summary: (\d+) errors out of (\d+) tests$", re.M)


@pytest.fixture(scope="module")
def bdir():
    try:
        return tclrun.build()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


def mptest(bdir, script, mode, cwd, timeout=300):
    """Run one script on mp.db in cwd: (output, errors, summary). errors is
    the set of error lines with the process ID left out."""
    cmd = [os.path.join(bdir, "mptester"), "mp.db",
           os.path.join(bdir, "src", "mptest", script + ".test"), "--journalmode", mode]
    start = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode("utf-8", "replace") if isinstance(e.stdout, bytes) \
            else (e.stdout or "")
        raise AssertionError("mptester %s --journalmode %s in %s did not end within %d s:\n%s"
                             % (script, mode, cwd, timeout, out[-3000:]))
    out = p.stdout + p.stderr
    errors = {"%s: %s" % m for m in ERROR.findall(out)}
    m = SUMMARY.search(out)
    return out, errors, (int(m.group(1)), int(m.group(2))) if m else None, \
        time.monotonic() - start


@pytest.mark.parametrize("script,mode", PAIRS, ids=["%s-%s" % p for p in PAIRS])
def test_mptest(make_node, bdir, script, mode):
    sqldiff = require("sqldiff")
    with tempfile.TemporaryDirectory(prefix="ltxfs-mptest-plain-") as d:
        pout, perr, psum, _ = mptest(bdir, script, mode, d)
    assert psum is not None, "mptester %s %s: no summary in a plain directory:\n%s" % (
        script, mode, pout[-3000:])
    p = make_node("primary").start()
    r = make_node("replica", replica_of=p).start()
    mout, merr, msum, _ = mptest(bdir, script, mode, p.mount)
    assert msum is not None, "mptester %s %s: no summary through the mount:\n%s" % (
        script, mode, mout[-3000:])
    new = sorted(merr - perr)
    assert not new, ("mptester %s --journalmode %s: errors through the mount that the plain "
                     "directory did not give (%d errors there, %d here):\n%s\n\nits output:\n%s"
                     % (script, mode, psum[0], msum[0], "\n".join(new[:40]), mout[-4000:]))

    want = p.pos("mp.db")
    wait_for(lambda: r.pos("mp.db") == want, timeout=60,
             what="the replica to reach the primary's position %s (at %s)" % (
                 want, r.pos("mp.db")))
    out = subprocess.run([sqldiff, p.path("mp.db"), r.path("mp.db")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "", "sqldiff primary replica:\n" + out.stdout[:3000]
    c = sqlite3.connect("file:%s?mode=ro" % r.path("mp.db"), uri=True)
    try:
        assert c.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        c.close()
    verify_database(p, "mp.db")
    verify_database(r, "mp.db")
