"""Single-node engine: every committed transaction becomes exactly one LTX file.

Each test ends with ltxcheck.verify_database(): the LTX chain is replayed
independently, the database checksum is recomputed from the bytes in the data
directory, and both must equal the -pos file; PRAGMA integrity_check is ok.
"""
import os
import signal
import sqlite3
import subprocess
import sys

import pytest

from conftest import MODES, connect, wait_for
from helpers import check_exit
from ltxcheck import contiguous, ltx_files, parse_ltx, read_pos, verify_database

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOAD = os.path.join(HERE, "workload.py")


def integrity(path):
    c = sqlite3.connect(path)
    try:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        c.close()


def txid(node, name="db"):
    return read_pos(node.mount, name)[0]


def setup_table(node, mode, sync="full", name="db"):
    c = connect(node.path(name), mode, sync)
    c.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)")
    return c


@pytest.mark.parametrize("mode", MODES)
def test_single_row_transactions(node, mode):
    c = setup_table(node, mode)
    before = txid(node)
    for i in range(300):
        c.execute("INSERT INTO t(v) VALUES(?)", ("row %d" % i,))
    assert txid(node) == before + 300
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 300
    c.close()
    integrity(node.path("db"))
    last, _ = verify_database(node, "db")
    # TXIDs 1..last without gaps or overlaps; in rollback modes one file per
    # transaction, in WAL mode commits that queued up may share a range file
    # (group commit, docs/ltx.md)
    files = ltx_files(node.dbdir("db"))
    assert contiguous(files) and files[-1][0] == last
    if mode != "wal":
        assert [f[0] for f in files] == list(range(1, last + 1))


@pytest.mark.parametrize("mode", MODES)
def test_big_transaction(node, mode):
    c = setup_table(node, mode)
    before = txid(node)
    c.execute("BEGIN")
    blob = "x" * 1000
    for i in range(40000):  # about 40 MB
        c.execute("INSERT INTO t(v) VALUES(?)", (blob + str(i),))
    c.execute("COMMIT")
    assert txid(node) == before + 1
    c.close()
    integrity(node.path("db"))
    verify_database(node, "db")
    newest = ltx_files(node.dbdir("db"))[-1][2]
    assert len(parse_ltx(newest, verify_file_checksum=False)["pages"]) > 9000


@pytest.mark.parametrize("mode", MODES)
def test_rollback_after_cache_spill_leaves_no_trace(node, mode):
    c = setup_table(node, mode)
    c.execute("INSERT INTO t(v) VALUES('keep')")
    c.execute("PRAGMA cache_size=5")
    before = txid(node)
    nfiles = len(ltx_files(node.dbdir("db")))
    c.execute("BEGIN")
    for i in range(3000):
        c.execute("INSERT INTO t(v) VALUES(?)", ("spill" * 50,))
    c.execute("ROLLBACK")
    assert txid(node) == before
    assert len(ltx_files(node.dbdir("db"))) == nfiles
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    # and the next transaction still chains correctly
    c.execute("INSERT INTO t(v) VALUES('after')")
    assert txid(node) == before + 1
    c.close()
    integrity(node.path("db"))
    verify_database(node, "db")


@pytest.mark.parametrize("mode", MODES)
def test_constraint_failure_leaves_no_trace(node, mode):
    c = setup_table(node, mode)
    c.execute("INSERT INTO t(id, v) VALUES(1, 'a')")
    before = txid(node)
    with pytest.raises(sqlite3.IntegrityError):
        c.execute("INSERT INTO t(id, v) VALUES(2, 'b'), (3, 'c'), (1, 'dup')")
    assert txid(node) == before
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    c.close()
    verify_database(node, "db")


@pytest.mark.parametrize("mode", MODES)
def test_vacuum_shrinks_and_chains(node, mode):
    c = setup_table(node, mode)
    c.execute("BEGIN")
    for i in range(5000):
        c.execute("INSERT INTO t(v) VALUES(?)", ("v" * 200,))
    c.execute("COMMIT")
    c.execute("DELETE FROM t WHERE id > 100")
    size_before = c.execute("PRAGMA page_count").fetchone()[0]
    before = txid(node)
    c.execute("VACUUM")
    assert c.execute("PRAGMA page_count").fetchone()[0] < size_before
    assert txid(node) > before
    c.close()
    integrity(node.path("db"))
    verify_database(node, "db")
    newest = parse_ltx(ltx_files(node.dbdir("db"))[-1][2], verify_file_checksum=False)
    assert newest["commit"] < size_before


@pytest.mark.parametrize("mode", MODES)
def test_checkpoints(node, mode):
    c = setup_table(node, mode, sync="normal")
    c.execute("PRAGMA wal_autocheckpoint=50")
    for round_ in range(3):
        for i in range(200):
            c.execute("INSERT INTO t(v) VALUES(?)", ("c%d-%d" % (round_, i),))
        for kind in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
            c.execute("PRAGMA wal_checkpoint(%s)" % kind).fetchall()
            c.execute("INSERT INTO t(v) VALUES(?)", (kind,))
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 612
    c.close()
    integrity(node.path("db"))
    verify_database(node, "db")


@pytest.mark.parametrize("mode", MODES)
def test_concurrent_writer_processes(node, mode):
    c = setup_table(node, mode)
    c.execute("CREATE TABLE counter(id INTEGER PRIMARY KEY, n INTEGER)")
    c.execute("INSERT INTO counter VALUES(1, 0)")
    before = txid(node)
    procs = [subprocess.Popen([sys.executable, WORKLOAD, "increment", node.path("db"), mode,
                               "150"]) for _ in range(4)]
    # a reader process keeps reading meanwhile
    reader = subprocess.Popen([sys.executable, WORKLOAD, "read", node.path("db"), mode, "3"])
    for p in procs:
        assert p.wait(300) == 0
    assert reader.wait(60) == 0
    assert c.execute("SELECT n FROM counter").fetchone()[0] == 600
    assert txid(node) == before + 600
    c.close()
    integrity(node.path("db"))
    verify_database(node, "db")


@pytest.mark.parametrize("mode", MODES)
def test_clean_restart(make_node, mode):
    node = make_node().start()
    c = setup_table(node, mode)
    for i in range(100):
        c.execute("INSERT INTO t(v) VALUES(?)", (str(i),))
    c.close()
    pos = read_pos(node.mount, "db")
    node.stop()
    assert os.path.exists(os.path.join(node.dbdir("db"), "checksums"))
    node.start()
    assert read_pos(node.mount, "db") == pos
    assert "does not match" not in node.read_log()
    c = connect(node.path("db"), mode)
    c.execute("INSERT INTO t(v) VALUES('again')")
    assert read_pos(node.mount, "db")[0] == pos[0] + 1
    c.close()
    verify_database(node, "db")


@pytest.mark.parametrize("mode", MODES)
def test_kill9_during_write_load(make_node, mode):
    """Every transaction SQLite reported committed survives kill -9 of ltxfs."""
    node = make_node().start()
    c = setup_table(node, mode)
    c.close()
    ack = os.path.join(node.base, "acked")
    w = subprocess.Popen([sys.executable, WORKLOAD, "insert-ack", node.path("db"), mode,
                          "100000", ack])
    wait_for(lambda: os.path.exists(ack) and os.path.getsize(ack) > 2000, timeout=60,
             what="some acknowledged commits")
    node.kill9()
    check_exit("workload insert-ack", w.wait(60), 0)  # it stops at the first error
    with open(ack) as f:
        acked = [int(x) for x in f.read().split()]
    assert acked
    node.start()
    c = connect(node.path("db"), mode)
    have = {r[0] for r in c.execute("SELECT id FROM t")}
    missing = [a for a in acked if a not in have]
    assert not missing, "acknowledged commits lost: %r" % missing[:10]
    c.execute("INSERT INTO t(v) VALUES('after restart')")
    c.close()
    integrity(node.path("db"))
    verify_database(node, "db")


@pytest.mark.parametrize("mode", MODES)
def test_kill9_of_application_mid_transaction(node, mode):
    c = setup_table(node, mode)
    c.execute("INSERT INTO t(v) VALUES('base')")
    before = txid(node)
    p = subprocess.Popen([sys.executable, WORKLOAD, "hang-in-tx", node.path("db"), mode, "0"],
                         stdout=subprocess.PIPE)
    assert p.stdout.readline().strip() == b"in-tx"
    p.send_signal(signal.SIGKILL)
    p.wait()
    # the next connection rolls back the hot journal (or ignores the uncommitted WAL frames)
    c2 = connect(node.path("db"), mode)
    assert c2.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    c2.execute("INSERT INTO t(v) VALUES('next')")
    assert txid(node) == before + 1
    c2.close()
    c.close()
    integrity(node.path("db"))
    verify_database(node, "db")


def test_leftover_empty_wal_does_not_disable_capture(node):
    """PERSIST_WAL + journal_size_limit=0 leave a 0-byte -wal after switching back to
    rollback mode; SQLite treats it as absent and so must ltxfs."""
    db = node.path("db")
    subprocess.run(["sqlite3", db], input=(
        ".filectrl persist_wal 1\n"
        "PRAGMA journal_size_limit=0;\n"
        "PRAGMA journal_mode=wal;\n"
        "CREATE TABLE t(x);\n"
        "INSERT INTO t VALUES(1);\n"
        "PRAGMA journal_mode=delete;\n"), text=True, check=True, capture_output=True)
    assert os.path.exists(node.path("db-wal")) and os.path.getsize(node.path("db-wal")) == 0
    before = txid(node)
    c = connect(db, "delete")
    c.execute("INSERT INTO t VALUES(2)")
    c.execute("INSERT INTO t VALUES(3)")
    assert txid(node) == before + 2
    c.close()
    integrity(db)
    verify_database(node, "db")


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_transaction_of_hundreds_of_megabytes(node, mode):
    c = setup_table(node, mode, sync="normal")
    before = txid(node)
    c.execute("BEGIN")
    c.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 64000) "
              "INSERT INTO t(v) SELECT hex(randomblob(2000)) FROM n")  # about 256 MB
    c.execute("COMMIT")
    assert txid(node) == before + 1
    pages = c.execute("PRAGMA page_count").fetchone()[0]
    assert pages * 4096 > 250 * 1024 * 1024
    c.close()
    verify_database(node, "db")
