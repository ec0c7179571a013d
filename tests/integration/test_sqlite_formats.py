"""Database formats through the mount, each on a primary with a replica
attached (issue 14): every page size from 512 to 65536, a database over
1 GiB (SQLite's lock-byte page), PRAGMA mmap_size readers on the primary and
on the replica while it applies, auto_vacuum=INCREMENTAL, and VACUUM that
changes the page size, in a rollback journal mode and in WAL as each allows.

Each test ends with the replica at the primary's position, no difference
from the primary (sqldiff, or the bytes for the 1 GiB database), PRAGMA
integrity_check ok on the replica, and both nodes' LTX chains replaying to
their database files (ltxcheck.verify_database).
"""
import hashlib
import os
import sqlite3
import subprocess
import threading
import time

import pytest

from conftest import connect, wait_for
from helpers import require
from ltxcheck import (db_checksum_bytes, encode_ltx_v1, lock_pgno, read_pos,
                      verify_database)

PAGE_SIZES = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]
ROLLBACK_AND_WAL = ["delete", "wal"]


def cluster(make_node):
    p = make_node("primary").start()
    r = make_node("replica", replica_of=p).start()
    return p, r


def reader(path, mmap_size=0):
    """A read-only connection; mmap_size > 0 reads through mmap(2)."""
    c = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=30, isolation_level=None)
    c.execute("PRAGMA mmap_size=%d" % mmap_size)
    return c


def caught_up(p, r, name, timeout=60):
    want = p.pos(name)
    wait_for(lambda: r.pos(name) == want, timeout=timeout,
             what="%s to reach %s's position %s of %s (at %s)" % (
                 r.name, p.name, want, name, r.pos(name)))


def assert_same(p, r, name, timeout=60, chains=True):
    """The replica caught up, equal to the primary, intact, and (chains)
    both LTX chains verified. A replay of the whole chain grows with every
    transaction: a loop of many small ones verifies the chains at its end."""
    caught_up(p, r, name, timeout)
    out = subprocess.run([require("sqldiff"), p.path(name), r.path(name)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "", "sqldiff %s: %s" % (name, out.stdout[:2000])
    c = reader(r.path(name))
    try:
        assert c.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        c.close()
    if chains:
        verify_database(p, name)
        verify_database(r, name)


def fill(c, n, size, start=0):
    c.execute("BEGIN")
    c.executemany("INSERT INTO t(id, v) VALUES(?, randomblob(?))",
                  [(start + i, size + i % 97) for i in range(n)])
    c.execute("COMMIT")


# ---- page sizes --------------------------------------------------------------------

@pytest.mark.parametrize("mode", ROLLBACK_AND_WAL)
def test_every_page_size(make_node, mode):
    """One database per page size, 512 to 65536: rows in overflow chains,
    updates, deletes (free pages), an index; the replica applies each."""
    p, r = cluster(make_node)
    for ps in PAGE_SIZES:
        name = "ps%d.db" % ps
        c = sqlite3.connect(p.path(name), timeout=30, isolation_level=None)
        c.execute("PRAGMA page_size=%d" % ps)
        assert c.execute("PRAGMA journal_mode=%s" % mode).fetchone()[0] == mode
        c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        fill(c, 120, ps // 3)
        fill(c, 20, 3 * ps, start=1000)  # overflow chains
        c.execute("UPDATE t SET v = randomblob(length(v) + 7) WHERE id % 2 = 0")
        c.execute("DELETE FROM t WHERE id % 3 = 0")
        c.execute("CREATE INDEX t_v ON t(substr(v, 1, 8))")
        assert c.execute("PRAGMA page_size").fetchone()[0] == ps
        if mode == "wal":
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        c.close()
        assert os.path.getsize(p.path(name)) % ps == 0
        assert_same(p, r, name)
        rc = reader(r.path(name))
        try:
            assert rc.execute("PRAGMA page_size").fetchone()[0] == ps
        finally:
            rc.close()


# ---- the lock-byte page ------------------------------------------------------------

LOCK_BYTE = 0x40000000  # SQLite's PENDING_BYTE: its page is never written


def file_digest(path):
    """SHA-256 of a file read through the mount, and the bytes of its page at
    1 GiB (the lock-byte page) for page size 4096."""
    h = hashlib.sha256()
    lock = b""
    with open(path, "rb") as f:
        off = 0
        while True:
            b = f.read(8 << 20)
            if not b:
                break
            if off <= LOCK_BYTE < off + len(b):
                lock = b[LOCK_BYTE - off:LOCK_BYTE - off + 4096]
            h.update(b)
            off += len(b)
    return h.hexdigest(), lock


def test_database_over_1gib_lock_byte_page(make_node):
    """A database that grows past 1 GiB through the mount, real rows on the
    pages around the lock-byte page, changed in a rollback journal and then
    in WAL: the replica ends byte for byte the primary's file, the lock-byte
    page is never written on either, and each file's checksum (lock page
    left out, as LTX does) is the position's."""
    p, r = cluster(make_node)
    name = "big.db"
    c = connect(p.path(name), "delete", sync="normal")
    c.execute("PRAGMA page_size=4096")
    c.execute("PRAGMA cache_size=-65536")
    c.execute("CREATE TABLE filler(b BLOB)")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    # zeroblob filler up to 16 MiB short of 1 GiB (SQLite's blob limit is 1e9 bytes)
    c.execute("BEGIN")
    for n in (600_000_000, (1 << 30) - (16 << 20) - 600_000_000):
        c.execute("INSERT INTO filler VALUES(zeroblob(?))", (n,))
    c.execute("COMMIT")
    assert os.path.getsize(p.path(name)) < LOCK_BYTE
    # 32 MiB of real rows: they straddle the lock-byte page
    for k in range(4):
        fill(c, 2000, 4000, start=k * 2000)
    assert os.path.getsize(p.path(name)) > LOCK_BYTE + (8 << 20)
    lp = lock_pgno(4096)
    # change rows on both sides of it: rollback journal, then WAL
    c.execute("UPDATE t SET v = randomblob(4100) WHERE id % 5 = 0")
    c.execute("DELETE FROM t WHERE id % 7 = 0")
    assert c.execute("PRAGMA journal_mode=wal").fetchone()[0] == "wal"
    c.execute("UPDATE t SET v = randomblob(3900) WHERE id % 3 = 0")
    fill(c, 500, 4000, start=100_000)
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    caught_up(p, r, name, timeout=240)

    pd, plock = file_digest(p.path(name))
    rd, rlock = file_digest(r.path(name))
    assert plock == b"\0" * 4096 and rlock == b"\0" * 4096, "the lock-byte page was written"
    assert pd == rd, "the replica's database differs from the primary's"
    rc = reader(r.path(name))
    try:
        assert rc.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert rc.execute("SELECT count(*) FROM t").fetchone()[0] == \
            8000 - len(range(0, 8000, 7)) + 500
    finally:
        rc.close()
    for node in (p, r):
        txid, ck = node.pos(name).split("/")
        with open(os.path.join(node.dbdir(name), "database"), "rb") as f:
            data = f.read()
        assert len(data) // 4096 >= lp
        assert db_checksum_bytes(data, 4096) == int(ck, 16), (
            "%s: the database file's checksum is not the position's" % node.name)
        del data


# ---- mmap readers while the replica applies ---------------------------------------

@pytest.mark.parametrize("mode", ROLLBACK_AND_WAL)
def test_mmap_readers_on_primary_and_replica(make_node, mode):
    """Readers with PRAGMA mmap_size, on the primary and on the replica,
    check an invariant in every read transaction while a writer commits on
    the primary and the replica applies each commit under them."""
    p, r = cluster(make_node)
    name = "mm.db"
    w = connect(p.path(name), mode)
    w.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    w.execute("CREATE TABLE ctl(n INTEGER, bytes INTEGER)")
    w.execute("INSERT INTO ctl VALUES(0, 0)")
    caught_up(p, r, name)

    stop = threading.Event()
    seen = {"primary": set(), "replica": set()}
    errors = []

    def read_loop(node, label):
        try:
            c = reader(node.path(name), mmap_size=256 << 20)
            while not stop.is_set():
                c.execute("BEGIN")
                n, nbytes = c.execute("SELECT n, bytes FROM ctl").fetchone()
                cnt, total = c.execute("SELECT count(*), total(length(v)) FROM t").fetchone()
                c.execute("COMMIT")
                if (cnt, int(total)) != (n, nbytes):
                    errors.append("%s: ctl says %d rows of %d bytes, t has %d of %d" % (
                        label, n, nbytes, cnt, total))
                seen[label].add(n)
            c.close()
        except Exception as e:  # the test fails below with it
            errors.append("%s: %r" % (label, e))

    threads = [threading.Thread(target=read_loop, args=(p, "primary")),
               threading.Thread(target=read_loop, args=(r, "replica"))]
    for t in threads:
        t.start()
    try:
        nid = 0
        for i in range(150):
            w.execute("BEGIN")
            for _ in range(1 + i % 4):
                size = 200 + (i * 997) % 9000
                w.execute("INSERT INTO t(id, v) VALUES(?, randomblob(?))", (nid, size))
                w.execute("UPDATE ctl SET n = n + 1, bytes = bytes + ?", (size,))
                nid += 1
            if i % 10 == 9:  # free pages, then reuse them
                gone = w.execute("SELECT count(*), total(length(v)) FROM t WHERE id % 4 = 1"
                                 " AND id >= ?", (nid - 40,)).fetchone()
                w.execute("DELETE FROM t WHERE id % 4 = 1 AND id >= ?", (nid - 40,))
                w.execute("UPDATE ctl SET n = n - ?, bytes = bytes - ?",
                          (gone[0], int(gone[1])))
            w.execute("COMMIT")
    finally:
        caught_up(p, r, name)
        # let each reader see the final state at least once
        final = w.execute("SELECT n FROM ctl").fetchone()[0]
        wait_for(lambda: errors or all(final in s for s in seen.values()), timeout=30,
                 what="both readers to see the last commit")
        stop.set()
        for t in threads:
            t.join(60)
    w.close()
    assert not errors, "\n".join(errors[:20])
    # they read while commits landed, not only before and after
    assert len(seen["primary"]) >= 5 and len(seen["replica"]) >= 5, seen
    assert_same(p, r, name)


# ---- auto_vacuum=INCREMENTAL -------------------------------------------------------

@pytest.mark.parametrize("mode", ROLLBACK_AND_WAL)
def test_incremental_auto_vacuum(make_node, mode):
    """auto_vacuum=INCREMENTAL: incremental_vacuum gives free pages back in
    steps, each a transaction that shrinks the database; the replica
    follows every step."""
    p, r = cluster(make_node)
    name = "iv.db"
    c = sqlite3.connect(p.path(name), timeout=30, isolation_level=None)
    c.execute("PRAGMA auto_vacuum=INCREMENTAL")
    assert c.execute("PRAGMA journal_mode=%s" % mode).fetchone()[0] == mode
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    c.execute("CREATE INDEX t_v ON t(substr(v, 1, 16))")
    fill(c, 700, 1500)
    c.execute("DELETE FROM t WHERE id % 5 != 0")
    free = c.execute("PRAGMA freelist_count").fetchone()[0]
    assert free > 150
    pages = c.execute("PRAGMA page_count").fetchone()[0]
    steps = 0
    while c.execute("PRAGMA freelist_count").fetchone()[0] > 0:
        c.execute("PRAGMA incremental_vacuum(120)").fetchall()
        now = c.execute("PRAGMA page_count").fetchone()[0]
        assert now < pages
        pages = now
        steps += 1
        if steps % 2 == 1:
            assert_same(p, r, name, chains=False)
    assert steps >= 3
    if mode == "wal":
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert os.path.getsize(p.path(name)) == pages * 4096
    c.close()
    assert_same(p, r, name)
    rc = reader(r.path(name))
    try:
        assert rc.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        assert rc.execute("PRAGMA freelist_count").fetchone()[0] == 0
        assert rc.execute("SELECT count(*) FROM t").fetchone()[0] == 140
    finally:
        rc.close()


# ---- VACUUM that changes the page size ---------------------------------------------

@pytest.mark.parametrize("mode", ["delete", "truncate", "persist", "wal"])
def test_vacuum_changes_page_size(make_node, mode):
    """PRAGMA page_size then VACUUM, to smaller and larger sizes. In a
    rollback journal mode VACUUM changes it in place; in WAL it cannot
    (SQLite keeps the size, natively too), so the database goes to DELETE
    for the VACUUM and back to WAL. Every change reaches the replica."""
    p, r = cluster(make_node)
    name = "vac.db"
    c = sqlite3.connect(p.path(name), timeout=30, isolation_level=None)
    c.execute("PRAGMA page_size=4096")
    assert c.execute("PRAGMA journal_mode=%s" % mode).fetchone()[0] == mode
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    fill(c, 400, 700)
    fill(c, 10, 70000, start=5000)
    want = c.execute("SELECT count(*), total(length(v)) FROM t").fetchone()
    assert_same(p, r, name)
    for ps in (1024, 65536, 512, 8192, 4096):
        if mode == "wal":
            before = c.execute("PRAGMA page_size").fetchone()[0]
            c.execute("PRAGMA page_size=%d" % ps)
            c.execute("VACUUM")
            assert c.execute("PRAGMA page_size").fetchone()[0] == before
            assert c.execute("PRAGMA journal_mode=delete").fetchone()[0] == "delete"
        c.execute("PRAGMA page_size=%d" % ps)
        c.execute("VACUUM")
        # a page size change is written as a snapshot (docs/architecture.md 4)
        assert "%016x-%016x.ltx" % (1, read_pos(p.mount, name)[0]) in os.listdir(
            os.path.join(p.dbdir(name), "ltx"))
        if mode == "wal":
            assert c.execute("PRAGMA journal_mode=wal").fetchone()[0] == "wal"
        assert c.execute("PRAGMA page_size").fetchone()[0] == ps
        c.execute("UPDATE t SET v = randomblob(length(v)) WHERE id % 9 = 0")
        assert c.execute("SELECT count(*), total(length(v)) FROM t").fetchone() == want
        assert_same(p, r, name)
        rc = reader(r.path(name))
        try:
            assert rc.execute("PRAGMA page_size").fetchone()[0] == ps
        finally:
            rc.close()
    c.close()
    # The chains with their five page sizes survive a restart of both
    # nodes (start-up recovery replays them), and a new replica that
    # catches up from nothing applies every resize on the way.
    r.stop()
    p.stop()
    p.start()
    r.start()
    r2 = make_node("replica2", replica_of=p).start()
    assert_same(p, r, name)
    assert_same(p, r2, name)


def test_replica_applies_a_resize_that_continues_the_chain(make_node, tmp_path):
    """Earlier versions wrote a rollback-mode VACUUM that changes the page
    size as an incremental file holding every page (min TXID = TXID + 1).
    Such a file, left in a primary's data directory, still replicates: a
    replica at the TXID before it applies a non-snapshot with a new page size
    when it holds every page up to its commit."""
    src = str(tmp_path / "src.db")
    s = sqlite3.connect(src, isolation_level=None)
    s.execute("PRAGMA page_size=4096")
    s.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    s.executemany("INSERT INTO t(v) VALUES(randomblob(?))", [(300 + i,) for i in range(200)])
    data1 = open(src, "rb").read()
    s.execute("PRAGMA page_size=1024")
    s.execute("VACUUM")
    s.close()
    data2 = open(src, "rb").read()

    def pages(data, ps):
        return {i + 1: data[i * ps:(i + 1) * ps] for i in range(len(data) // ps)}
    ck1 = db_checksum_bytes(data1, 4096)
    ck2 = db_checksum_bytes(data2, 1024)
    p = make_node("primary")
    dbdir = p.dbdir("rs.db")
    os.makedirs(os.path.join(dbdir, "ltx"))
    with open(os.path.join(dbdir, "database"), "wb") as f:
        f.write(data1)
    with open(os.path.join(dbdir, "ltx", "%016x-%016x.ltx" % (1, 1)), "wb") as f:
        f.write(encode_ltx_v1(4096, len(data1) // 4096, 1, 1, pages(data1, 4096), 0, ck1,
                              True, 1))
    p.start()
    r = make_node("replica", replica_of=p).start()
    assert_same(p, r, "rs.db")
    p.stop()
    with open(os.path.join(dbdir, "database"), "wb") as f:
        f.write(data2)
    with open(os.path.join(dbdir, "ltx", "%016x-%016x.ltx" % (2, 2)), "wb") as f:
        f.write(encode_ltx_v1(1024, len(data2) // 1024, 2, 2, pages(data2, 1024), ck1, ck2,
                              True, 2))
    p.start()
    assert read_pos(p.mount, "rs.db") == (2, ck2)
    assert_same(p, r, "rs.db")
    assert "%016x-%016x.ltx" % (2, 2) in os.listdir(os.path.join(r.dbdir("rs.db"), "ltx"))
    assert open(r.path("rs.db"), "rb").read() == data2
