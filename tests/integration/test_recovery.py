"""Start-up recovery: torn LTX files, WAL commits without LTX files, hot and
corrupt journals, and databases changed while ltxfs was not running."""
import os
import signal
import sqlite3
import struct
import subprocess
import sys

import pytest

from conftest import MODES, connect, wait_for
from ltxcheck import ltx_files, parse_ltx, read_pos, verify_database

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOAD = os.path.join(HERE, "workload.py")


def fill(node, mode, n, name="db"):
    c = connect(node.path(name), mode)
    c.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(n):
        c.execute("INSERT INTO t(v) VALUES(?)", ("r%d" % i,))
    return c


@pytest.mark.parametrize("mode", MODES)
def test_torn_ltx_file_is_discarded_and_nothing_lost(make_node, mode):
    node = make_node().start()
    c = fill(node, mode, 30)
    c.close()
    txid, _ = read_pos(node.mount, "db")
    node.stop()
    newest = ltx_files(node.dbdir("db"))[-1][2]
    with open(newest, "rb") as f:
        saved = f.read()
    with open(newest, "r+b") as f:
        f.truncate(len(saved) // 2)
    node.start()
    log = node.read_log()
    assert mode != "wal" or "does not verify" in log
    c = connect(node.path("db"), mode)
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 30
    if mode == "wal":
        # the change the torn file described is recorded again, as a snapshot
        newest = parse_ltx(ltx_files(node.dbdir("db"))[-1][2])
        assert (newest["min"], newest["max"]) == (1, txid)
    else:
        # the LTX ring kept a copy of the prepared file: the same file again
        assert "written again from the LTX ring" in log
        with open(ltx_files(node.dbdir("db"))[-1][2], "rb") as f:
            assert f.read() == saved
    c.execute("INSERT INTO t(v) VALUES('next')")
    c.close()
    assert read_pos(node.mount, "db")[0] == txid + 1
    verify_database(node, "db")


@pytest.mark.parametrize("mode", ["delete", "truncate", "persist"])
def test_ltx_files_lost_after_kill9_are_restored_from_the_ring(make_node, mode):
    """With synchronous=FULL in a rollback mode, a commit's LTX file is made
    durable by its copy in dbs/<db>/ltxring, not by an fsync of its own. Kill -9,
    then do to the files what a power loss may do to files never fsynced: lose
    the three newest and tear the one before. Every file comes back byte for
    byte, with no snapshot, and every commit is there."""
    node = make_node().start()
    c = fill(node, mode, 30)
    c.close()
    ring = os.path.join(node.dbdir("db"), "ltxring")
    assert os.path.getsize(ring) == 4096 + (1 << 20)
    pos = read_pos(node.mount, "db")
    node.kill9()
    files = ltx_files(node.dbdir("db"))
    saved = {}
    for i, (mx, mn, path) in enumerate(reversed(files[-4:])):
        with open(path, "rb") as f:
            saved[path] = f.read()
        if i < 3:
            os.unlink(path)
        else:
            with open(path, "r+b") as f:
                f.truncate(len(saved[path]) - 9)
    node.start()
    log = node.read_log()
    # the torn one is written again where it was, the three lost ones after it
    assert "written again from the LTX ring" in log and "restored 3 LTX file(s)" in log
    for path, data in saved.items():
        with open(path, "rb") as f:
            assert f.read() == data, path
    assert all(mn == mx for mx, mn, _ in ltx_files(node.dbdir("db"))), "no snapshot"
    assert read_pos(node.mount, "db") == pos
    c = connect(node.path("db"), mode)
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 30
    c.execute("INSERT INTO t(v) VALUES('after restart')")
    c.close()
    verify_database(node, "db")


def test_wal_commits_without_ltx_files_are_recovered(make_node):
    """WAL frames SQLite committed beyond the last LTX file become LTX files
    (LiteFS truncates them away)."""
    node = make_node().start()
    c = fill(node, "wal", 20)
    c.execute("PRAGMA wal_autocheckpoint=0")
    for i in range(10):
        c.execute("INSERT INTO t(v) VALUES(?)", ("late %d" % i,))
        read_pos(node.mount, "db")  # its LTX file now: one file per transaction
    txid, post = read_pos(node.mount, "db")
    node.kill9()  # the WAL keeps the frames: the connection never checkpointed
    c.close()
    files = ltx_files(node.dbdir("db"))
    for mx, mn, path in files[-5:]:  # lose the last five LTX files
        os.unlink(path)
    node.start()
    # one per transaction those files held (a file may be a range: group commit)
    lost = sum(mx - mn + 1 for mx, mn, _ in files[-5:])
    assert node.read_log().count("recovered committed WAL transaction") == lost
    assert read_pos(node.mount, "db") == (txid, post)
    c = connect(node.path("db"), "wal")
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 30
    c.close()
    verify_database(node, "db")


@pytest.mark.parametrize("mode", ["delete", "truncate", "persist"])
def test_hot_journal_rolled_back_at_start(make_node, mode):
    node = make_node().start()
    c = fill(node, mode, 10)
    c.close()
    pos = read_pos(node.mount, "db")
    p = subprocess.Popen([sys.executable, WORKLOAD, "hang-in-tx", node.path("db"), mode, "0"],
                         stdout=subprocess.PIPE)
    assert p.stdout.readline().strip() == b"in-tx"
    node.kill9()
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert os.path.getsize(os.path.join(node.dbdir("db"), "journal")) > 0
    node.start()
    assert "rolled back a hot journal" in node.read_log()
    assert read_pos(node.mount, "db") == pos
    c = connect(node.path("db"), mode)
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 10
    assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    c.close()
    verify_database(node, "db")


def test_corrupt_journal_is_not_played_back(make_node):
    node = make_node().start()
    c = fill(node, "delete", 10)
    c.close()
    pos = read_pos(node.mount, "db")
    node.stop()
    # A journal with a valid header whose records fail their checksums.
    hdr = bytes.fromhex("d9d505f920a163d7") + struct.pack(">IIIII", 1, 0x1234, 2, 512, 4096)
    rec = struct.pack(">I", 1) + b"\xee" * 4096 + struct.pack(">I", 0xdeadbeef)
    with open(os.path.join(node.dbdir("db"), "journal"), "wb") as f:
        f.write(hdr + b"\0" * (512 - len(hdr)) + rec)
    node.start()
    assert read_pos(node.mount, "db") == pos
    c = connect(node.path("db"), "delete")
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 10
    assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    c.close()
    verify_database(node, "db")


def test_database_changed_outside_ltxfs_is_recorded_as_snapshot(make_node):
    node = make_node().start()
    c = fill(node, "delete", 10)
    c.close()
    txid, _ = read_pos(node.mount, "db")
    node.stop()
    s = sqlite3.connect(os.path.join(node.dbdir("db"), "database"), isolation_level=None)
    s.execute("INSERT INTO t(v) VALUES('behind our back')")
    s.close()
    node.start()
    assert "changed outside ltxfs" in node.read_log()
    assert read_pos(node.mount, "db")[0] == txid + 1
    newest = parse_ltx(ltx_files(node.dbdir("db"))[-1][2])
    assert newest["min"] == 1 and newest["max"] == txid + 1
    c = connect(node.path("db"), "delete")
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 11
    c.close()
    verify_database(node, "db")


def test_existing_database_without_history_gets_snapshot(make_node, tmp_path):
    node = make_node()
    os.makedirs(node.dbdir("imported.db"))
    s = sqlite3.connect(os.path.join(node.dbdir("imported.db"), "database"))
    s.execute("CREATE TABLE t(x)")
    s.executemany("INSERT INTO t VALUES(?)", [(i,) for i in range(100)])
    s.commit()
    s.close()
    node.start()
    assert read_pos(node.mount, "imported.db")[0] == 1
    verify_database(node, "imported.db")


def test_restart_after_kill9_recomputes_and_matches(make_node):
    node = make_node().start()
    c = fill(node, "wal", 50)
    c.close()
    pos = read_pos(node.mount, "db")
    node.kill9()
    assert not os.path.exists(os.path.join(node.dbdir("db"), "checksums"))
    node.start()
    assert read_pos(node.mount, "db") == pos
    verify_database(node, "db")


def test_txid_never_goes_back_when_every_ltx_file_is_torn(make_node):
    node = make_node(extra_config="")
    cfg = open(node.config).read().replace(
        "  compress: true\n", "  compress: true\n  retention: 1ms\n  retention-monitor-interval: 50ms\n")
    open(node.config, "w").write(cfg)
    node.start()
    c = fill(node, "delete", 20)
    c.close()
    txid, _ = read_pos(node.mount, "db")
    wait_for(lambda: len(ltx_files(node.dbdir("db"))) == 1, what="retention")
    node.stop()
    only = ltx_files(node.dbdir("db"))[0][2]
    with open(only, "r+b") as f:
        f.truncate(50)
    # without the LTX ring's copy of it (which would write it again: see
    # test_ltx_files_lost_after_kill9_are_restored_from_the_ring)
    os.unlink(os.path.join(node.dbdir("db"), "ltxring"))
    node.start()
    assert read_pos(node.mount, "db")[0] == txid
    newest = parse_ltx(ltx_files(node.dbdir("db"))[-1][2])
    assert (newest["min"], newest["max"]) == (1, txid)
    verify_database(node, "db")


def test_stale_super_journal_removed_at_start(make_node):
    node = make_node().start()
    c = fill(node, "delete", 1)
    c.close()
    node.stop()
    stale = os.path.join(node.dbdir("db"), "mj0A1B2C9D3")
    open(stale, "w").write("/somewhere/db-journal\0")
    node.start()
    assert not os.path.exists(stale)
    assert "removed stale super-journal" in node.read_log()


def test_database_deleted_while_down_is_recorded(make_node):
    node = make_node().start()
    c = fill(node, "delete", 5)
    c.close()
    txid, _ = read_pos(node.mount, "db")
    node.stop()
    os.unlink(os.path.join(node.dbdir("db"), "database"))
    node.start()
    assert read_pos(node.mount, "db") == (txid + 1, 1 << 63)
    from ltxcheck import check_chain
    assert check_chain(node.dbdir("db"))[:2] == (txid + 1, 1 << 63)
    assert not os.path.exists(node.path("db"))


def test_torn_ltx_file_below_an_intact_one_is_regenerated(make_node):
    """Power loss may keep LTX file N+1 and tear N. After an unclean stop, recovery
    checks the newest files and their links, and writes them again from the WAL."""
    node = make_node().start()
    c = fill(node, "wal", 5)
    c.execute("PRAGMA wal_autocheckpoint=0")
    for i in range(10):
        c.execute("INSERT INTO t(v) VALUES(?)", ("late %d" % i,))
        read_pos(node.mount, "db")  # its LTX file now: one file per transaction
    txid, post = read_pos(node.mount, "db")
    node.kill9()
    c.close()
    files = ltx_files(node.dbdir("db"))
    victim = files[-4][2]
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) - 9)
    node.start()
    log = node.read_log()
    assert "it does not verify" in log and "it follows a damaged file" in log
    # the torn file and the three after it, one per transaction they held
    lost = sum(mx - mn + 1 for mx, mn, _ in files[-4:])
    assert log.count("recovered committed WAL transaction") == lost
    assert read_pos(node.mount, "db") == (txid, post)
    verify_database(node, "db")
