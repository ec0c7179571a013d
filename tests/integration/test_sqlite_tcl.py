"""SQLite's own TCL tests through the mount (issue 14).

Each chosen test file of SQLite's suite (tests/sqlite/tclrun.py, FILES) runs
twice with testfixture, built from Debian's sqlite3 source package by
tests/sqlite/build.sh: in a plain temporary directory, and in the mount of a
fresh ltxfs primary. The test fails on any test case that fails through the
mount but not in the plain directory (less the documented exclusions), on a
mount run that dies or hangs where the plain run did not, and on the node's
own exit check (no sanitizer report). Afterwards every database left in the
mount passes ltxcheck.verify_database: its LTX chain replays to the bytes of
the database file.

LTXFS_SQLITE_TCL selects the files: "ci" (default), "full" (also the slow
ones that agree) or "all" (the pending ones too, which are expected to
fail). tests/sqlite/README.md lists them all, with the reasons.
"""
import os
import re
import sqlite3
import sys

import pytest

from conftest import connect
from ltxcheck import verify_database

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "sqlite"))
import tclrun  # noqa: E402

WHICH = os.environ.get("LTXFS_SQLITE_TCL", "ci")
if WHICH not in ("ci", "full", "all"):
    raise ValueError("LTXFS_SQLITE_TCL must be ci, full or all, not %r" % WHICH)
README = os.path.join(os.path.dirname(tclrun.__file__), "README.md")


@pytest.fixture(scope="module")
def bdir():
    try:
        return tclrun.build()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


def databases(node):
    """The databases the run left, with at least one transaction."""
    dbs = os.path.join(node.data, "dbs")
    out = []
    for name in sorted(os.listdir(dbs)) if os.path.isdir(dbs) else []:
        path = os.path.join(dbs, name, "database")
        if os.path.exists(path) and os.path.getsize(path) > 0:
            out.append(name)
    return out


@pytest.mark.parametrize("test", tclrun.files(WHICH))
def test_tcl(make_node, bdir, test):
    node = make_node("primary").start()
    plain = tclrun.run_plain(bdir, test)
    assert plain.summary is not None, (
        "%s does not run to its end in a plain directory (%s):\n%s" % (
            test, plain.describe(), plain.tail()))
    mount = tclrun.run_file(bdir, test, node.mount, timeout=max(120, 20 * plain.elapsed),
                            unstick=node.terminate)
    diff = tclrun.differences(plain, mount, tclrun.excluded_for(test))
    assert not diff, "fails through the mount only:\n" + tclrun.report(test, plain, mount, diff)
    for name in databases(node):
        verify_database(node, name)


def test_readme_lists_every_file_and_exclusion():
    """tests/sqlite/README.md names every chosen file with its status and
    every excluded test case."""
    with open(README) as f:
        text = f.read()
    missing = []
    for test, (status, _) in tclrun.FILES.items():
        if not re.search(r"^\| `%s` \| %s \|" % (re.escape(test), status), text, re.M):
            missing.append("%s (%s)" % (test, status))
    for (test, case) in tclrun.EXCLUDED:
        if "`%s`" % case not in text:
            missing.append("exclusion %s of %s" % (case, test))
    assert not missing, "tests/sqlite/README.md does not list: " + ", ".join(missing)


def test_copy_of_a_wal_database_with_its_wal(make_node):
    """The harness's db_save/db_restore and copy_file idiom: a WAL database
    and its -wal copied under new names, the -wal last, with a write-only
    exclusive create as TCL's [file copy] makes it. The WAL's commits are
    captured like any other; nothing stands in the way of the copy (no -wal
    made by ltxfs beside the installed database), and the write-only handle
    can still be read back by the capture."""
    node = make_node("primary").start()
    c = connect(node.path("test.db"), "wal")
    c.execute("PRAGMA wal_autocheckpoint=0")
    c.execute("CREATE TABLE t(x)")
    c.execute("INSERT INTO t VALUES(1)")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for i in range(2, 6):
        c.execute("INSERT INTO t VALUES(?)", (i,))
    assert os.path.getsize(node.path("test.db-wal")) > 0
    for src, dst in (("test.db", "test2.db"), ("test.db-wal", "test2.db-wal")):
        with open(node.path(src), "rb") as f:
            data = f.read()
        fd = os.open(node.path(dst), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_TRUNC, 0o644)
        try:
            assert os.write(fd, data) == len(data)
        finally:
            os.close(fd)
    c.close()
    c2 = sqlite3.connect(node.path("test2.db"), isolation_level=None)
    assert [r[0] for r in c2.execute("SELECT x FROM t ORDER BY x")] == [1, 2, 3, 4, 5]
    assert c2.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    c2.close()
    verify_database(node, "test.db")
    verify_database(node, "test2.db")
