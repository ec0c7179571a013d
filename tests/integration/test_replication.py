"""Replication: one static-lease primary streams every transaction to replicas.

Every test ends with the replicas identical to the primary: the same -pos,
no difference under sqldiff (Debian's sqlite3-tools), and ltxcheck's
independent replay of the replica's LTX chain and recomputed checksum.
"""
import glob
import json
import os
import queue
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from conftest import MODES, connect, wait_for
from ltxcheck import encode_ltx_with_header, ltx_files, parse_ltx, verify_database
from helpers import check_exit, http, require
from netproxy import Proxy


def cluster(make_node, n_replicas=2, **kw):
    p = make_node("primary", **kw).start()
    rs = [make_node("replica%d" % i, replica_of=p, **kw).start() for i in range(n_replicas)]
    return p, rs


def sqldiff(a, b):
    out = subprocess.run([require("sqldiff"), a, b], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def assert_same(p, r, name="db", timeout=20):
    want = p.pos(name)
    wait_for(lambda: r.pos(name) == want, timeout=timeout,
             what="%s to reach %s's position %s (at %s)" % (r.name, p.name, want, r.pos(name)))
    assert sqldiff(p.path(name), r.path(name)) == ""
    verify_database(r, name)


def write_rows(c, n, start=0, size=50):
    for i in range(start, start + n):
        c.execute("INSERT INTO t(id, v) VALUES(?, ?)", (i, "x%05d" % i * (size // 6 + 1)))


@pytest.mark.parametrize("mode", MODES)
def test_three_nodes_identical(make_node, mode):
    p, rs = cluster(make_node)
    c = connect(p.path("db"), mode)
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    write_rows(c, 200)
    c.execute("BEGIN")
    write_rows(c, 2000, start=1000, size=300)  # one big transaction
    c.execute("COMMIT")
    # a frame over 4 MiB: replicas verify it while it arrives (src/core/db_apply.c, RECEIVING)
    c.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) "
              "INSERT INTO t(id, v) SELECT 50000 + i, randomblob(2000) FROM n")
    c.execute("DELETE FROM t WHERE id % 3 = 0")
    c.execute("VACUUM")
    if mode == "wal":
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    write_rows(c, 50, start=10000)
    for r in rs:
        assert_same(p, r)
        rc = sqlite3.connect(r.path("db"))
        assert rc.execute("SELECT count(*) FROM t").fetchone() == \
            c.execute("SELECT count(*) FROM t").fetchone()
        assert rc.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rc.close()
    c.close()


@pytest.mark.parametrize("mode", MODES)
def test_replica_refuses_writes(make_node, mode):
    p, (r,) = cluster(make_node, 1)
    c = connect(p.path("db"), mode)
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    write_rows(c, 10)
    assert_same(p, r)
    before = r.pos("db")
    rc = sqlite3.connect(r.path("db"), timeout=5, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="readonly database"):
        rc.execute("INSERT INTO t(id, v) VALUES(1000, 'no')")
    with pytest.raises(sqlite3.OperationalError, match="readonly database"):
        rc.execute("CREATE TABLE u(x)")
    # the connection still reads, and nothing changed anywhere
    assert rc.execute("SELECT count(*) FROM t").fetchone() == (10,)
    assert r.pos("db") == before
    assert not os.path.exists(os.path.join(r.dbdir("db"), "journal"))
    assert_same(p, r)
    # new databases, deletions of files: refused on a replica
    with pytest.raises(OSError):
        open(r.path("other"), "w")
    with pytest.raises(PermissionError):
        os.unlink(r.path("db"))
    rc.close()
    c.close()


def test_primary_and_lag_files(make_node):
    p, (r,) = cluster(make_node, 1)
    # on the primary: no .primary, lag zero
    assert not os.path.exists(p.path(".primary"))
    assert open(p.path(".lag")).read() == "+000000000\n"
    wait_for(lambda: os.path.exists(r.path(".primary")), what=".primary on the replica")
    assert open(r.path(".primary")).read() == "primary\n"
    assert ".primary" in os.listdir(r.mount) and ".lag" in os.listdir(r.mount)
    lag = open(r.path(".lag")).read()
    assert len(lag) == 11 and lag.startswith("+") and lag.endswith("\n"), repr(lag)
    assert 0 <= int(lag) < 1000
    info = r.info()
    assert info["isPrimary"] is False and info["primary"]["hostname"] == "primary"
    assert info["clusterID"] == p.info()["clusterID"]
    # the primary goes away: .primary disappears and the lag grows
    p.stop()
    wait_for(lambda: not os.path.exists(r.path(".primary")), what=".primary to vanish")
    wait_for(lambda: int(open(r.path(".lag")).read()) >= 2000, timeout=10,
             what="lag to grow")


def test_replica_started_before_primary_and_primary_restart(make_node):
    p = make_node("primary")
    r = make_node("replica", replica_of=p).start()
    assert open(r.path(".lag")).read() == "+2147483647\n"  # never synced
    p.start()
    c = connect(p.path("db"), "wal")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    write_rows(c, 20)
    assert_same(p, r)
    c.close()
    p.stop()
    p.start()
    c = connect(p.path("db"), "wal")
    write_rows(c, 20, start=100)
    assert_same(p, r)
    c.close()


def test_databases_created_deleted_and_many(make_node):
    p, rs = cluster(make_node)
    conns = {}
    for name in ("a", "b", "c"):
        conns[name] = connect(p.path(name), "delete" if name != "b" else "wal")
        conns[name].execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        write_rows(conns[name], 5)
    for r in rs:
        for name in ("a", "b", "c"):
            assert_same(p, r, name)
    conns["c"].close()
    os.unlink(p.path("c"))
    for r in rs:
        want = p.pos("c")
        wait_for(lambda: r.pos("c") == want, what="deletion to reach " + r.name)
        wait_for(lambda: not os.path.exists(r.path("c")), what="c to vanish on " + r.name)
    # re-created after the drop
    c = connect(p.path("c"), "delete")
    c.execute("CREATE TABLE again(x)")
    c.execute("INSERT INTO again VALUES(1)")
    for r in rs:
        assert_same(p, r, "c")
    for k in conns.values():
        k.close()
    c.close()


def test_stopped_replica_catches_up_and_empty_replica_restores(make_node):
    p, (r1, r2) = cluster(make_node)
    c = connect(p.path("db"), "delete")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    write_rows(c, 10)
    assert_same(p, r1)
    r1.stop()
    write_rows(c, 300, start=100)
    r1.start()
    assert_same(p, r1)
    # a replica with an empty data directory restores from a snapshot
    r2.stop()
    subprocess.check_call(["rm", "-rf", r2.data])
    r2.start()
    assert_same(p, r2)
    files = ltx_files(r2.dbdir("db"))
    assert files[0][1] == 1, "restored from a snapshot (MinTXID 1)"
    c.close()


def test_diverged_replica_is_resynchronised(make_node, tmp_path):
    p, (r,) = cluster(make_node, 1)
    c = connect(p.path("db"), "delete")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    write_rows(c, 10)
    assert_same(p, r)
    r.stop()
    # the replica's data dir runs alone as a primary and takes writes nobody else has
    alone = make_node("alone")
    with open(alone.config, "w") as f:
        f.write("fuse:\n  dir: %s\ndata:\n  dir: %s\nhttp:\n  addr: 127.0.0.1:%d\n"
                "lease:\n  type: static\n  candidate: true\n" % (r.mount, r.data, alone.port))
    alone.mount = r.mount
    alone.start()
    a = connect(alone.path("db"), "delete")
    write_rows(a, 5, start=5000)
    a.close()
    orphan_txid = int(alone.pos("db").split("/")[0], 16)
    alone.stop()
    write_rows(c, 3, start=200)  # the primary moves on too, to a different state
    r.start()
    assert_same(p, r)
    rc = sqlite3.connect(r.path("db"))
    assert rc.execute("SELECT count(*) FROM t WHERE id >= 5000").fetchone() == (0,)
    rc.close()
    orphans = glob.glob(os.path.join(r.dbdir("db"), "orphaned", "*", "*.ltx"))
    assert any(o.endswith("%016x-%016x.ltx" % (orphan_txid, orphan_txid)) for o in orphans), \
        orphans
    assert "diverged" in r.read_log()
    c.close()


def _read_your_writes(p, r, c, shown, what):
    """300 times: insert row k on the primary, wait until shown(the primary's
    position) says the replica shows it, then read there with no busy
    timeout. Asserts every read succeeded and found row k."""
    rc = sqlite3.connect("file:%s?mode=ro" % r.path("db"), uri=True, timeout=0,
                         isolation_level=None)
    failed, stale = [], []
    try:
        for k in range(1, 301):
            c.execute("INSERT INTO t VALUES(?, 'x')", (k,))
            shown(p.pos("db"))
            try:
                got = rc.execute("SELECT max(id) FROM t").fetchone()[0]
            except sqlite3.OperationalError as e:
                failed.append((k, str(e)))
                continue
            if got != k:
                stale.append((k, got))
    finally:
        rc.close()
    assert not failed, "reads right after %s showed the transaction failed: %r" % (what, failed)
    assert not stale, "reads right after %s showed the transaction missed it: %r" % (what, stale)


@pytest.mark.parametrize("mode", MODES)
def test_a_transaction_the_pos_file_shows_is_readable_at_once(make_node, mode):
    """Read-your-writes through the -pos file: write on the primary, wait
    until the replica's -pos shows that position, then read on the replica
    with no busy timeout. The read finds the row, and never "database is
    locked": the replica's apply moves -pos only once it has released
    SQLite's locks (before, 1-10 reads of 300 failed per rollback mode)."""
    p, (r,), c = _cluster_with_table(make_node, 1, mode)
    _read_your_writes(
        p, r, c, lambda want: wait_for(lambda: r.pos("db") == want, timeout=20, interval=0),
        "-pos")


def test_a_transaction_a_tx_event_reports_is_readable_at_once(make_node):
    """The same through GET /events: after a replica's tx event names the
    primary's TXID, a read there with no busy timeout finds the row (10 of
    300 reads failed before)."""
    p, (r,), c = _cluster_with_table(make_node, 1, "delete")
    events = queue.Queue()
    resp = urllib.request.urlopen(r.url + "/events", timeout=30)

    def reader():
        try:
            for raw in resp:
                if raw.strip():
                    events.put(json.loads(raw))
        except Exception:  # the response closed under it at the end
            pass

    def shown(pos):
        want = int(pos.split("/")[0], 16)
        while True:
            e = events.get(timeout=20)
            if e["type"] == "tx" and e["db"] == "db" and int(e["data"]["txID"], 16) >= want:
                return
    threading.Thread(target=reader, daemon=True).start()
    assert events.get(timeout=10)["type"] == "init"
    try:
        _read_your_writes(p, r, c, shown, "a tx event")
    finally:
        resp.close()


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_replica_readers_see_consistent_state(make_node, mode):
    p, (r,) = cluster(make_node, 1)
    c = connect(p.path("db"), mode)
    c.execute("CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER)")
    c.execute("BEGIN")
    for i in range(100):
        c.execute("INSERT INTO acct VALUES(?, 100)", (i,))
    c.execute("COMMIT")
    assert_same(p, r)
    # readers are separate processes (Python threads contend on the GIL)
    reader_src = (
        "import sqlite3, sys, time\n"
        "rc = sqlite3.connect(sys.argv[1], timeout=10)\n"
        "n = bad = 0\n"
        "end = time.monotonic() + float(sys.argv[2])\n"
        "while time.monotonic() < end:\n"
        "    if rc.execute('SELECT sum(bal), count(*) FROM acct').fetchone() != (10000, 100):\n"
        "        bad += 1\n"
        "    n += 1\n"
        "print(n, bad)\n")
    readers = [subprocess.Popen([sys.executable, "-c", reader_src, r.path("db"), "4"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(3)]
    import random
    rnd = random.Random(7)
    deadline = time.monotonic() + 4
    ntx = 0
    while time.monotonic() < deadline:
        a, b = rnd.randrange(100), rnd.randrange(100)
        amt = rnd.randrange(1, 50)
        c.execute("BEGIN")
        c.execute("UPDATE acct SET bal = bal - ? WHERE id = ?", (amt, a))
        c.execute("UPDATE acct SET bal = bal + ? WHERE id = ?", (amt, b))
        c.execute("COMMIT")
        ntx += 1
    # the readers first: the last connection to close a WAL database holds an
    # EXCLUSIVE lock for a moment (SQLite's own close), and sqldiff, which
    # sets no busy timeout, would fail to attach the replica then
    for proc in readers:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err  # SQLITE_BUSY or "locking protocol" fail here
        n, bad = map(int, out.split())
        assert bad == 0 and n > 20, (n, bad)
    assert_same(p, r)
    assert ntx > 50, ntx
    c.close()


def test_stream_cut_and_corrupt_frame(make_node):
    p = make_node("primary").start()
    proxy = Proxy(p.port)
    r = make_node("replica", replica_of=proxy.url).start()
    try:
        c = connect(p.path("db"), "delete")
        c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        c.execute("INSERT INTO t VALUES(1, zeroblob(10))")
        assert_same(p, r)
        # a corrupt byte deep inside the next LTX frame: rejected whole, then recovered
        before = r.pos("db")
        proxy.corrupt_next(300000)
        proxy.cut()
        wait_for(lambda: proxy.accepted >= 2, what="the replica to reconnect")
        c.execute("INSERT INTO t VALUES(2, randomblob(2000000))")
        wait_for(lambda: proxy.corrupted == 1, what="the corruption to be injected")
        assert_same(p, r)
        assert proxy.accepted >= 3, "the corrupt stream was dropped and reopened"
        assert r.pos("db") != before
        # the link drops in the middle of a large transfer
        n = proxy.accepted
        c.execute("INSERT INTO t VALUES(3, randomblob(8000000))")
        time.sleep(0.05)
        proxy.cut()
        wait_for(lambda: proxy.accepted > n, what="reconnect after the cut")
        assert_same(p, r)
        # the primary is killed while a transfer is under way
        c.execute("INSERT INTO t VALUES(4, randomblob(8000000))")
        c.close()
        p.kill9()
        r.stop()
        verify_database(r, "db", check_pos=False)  # whatever arrived is whole
        r.start()
        p.start()
        assert_same(p, r)
    finally:
        proxy.close()


def test_retention_and_snapshot_past_retention(make_node):
    extra = "  retention: 1s\n  retention-monitor-interval: 200ms\n"
    p = make_node("primary", data_extra=extra).start()
    r = make_node("replica", replica_of=p, data_extra=extra).start()
    c = connect(p.path("db"), "delete")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    write_rows(c, 20)
    assert_same(p, r)
    r.stop()
    write_rows(c, 20, start=100)
    # old files are pruned on the primary, never the newest one
    wait_for(lambda: len(ltx_files(p.dbdir("db"))) == 1, timeout=10,
             what="retention to prune the primary's LTX files")
    r.start()
    assert_same(p, r)
    assert "removed by retention" in p.read_log()
    c.close()


def merge_ltx(paths):
    """One range file in place of consecutive LTX files, as group commit writes it:
    the last file's header with the first one's min TXID and pre-apply checksum,
    each page's newest image."""
    files = [parse_ltx(q) for q in paths]
    first, last = files[0], files[-1]
    pages = {}
    for f in files:
        pages.update(f["pages"])
    pages = {pg: img for pg, img in pages.items() if pg <= last["commit"]}
    with open(last["path"], "rb") as f:
        hdr = bytearray(f.read(100))
    hdr[16:24] = struct.pack(">Q", first["min"])
    hdr[40:48] = struct.pack(">Q", first["pre"])
    return encode_ltx_with_header(bytes(hdr), pages, last["post"], last["flags"] & 1)


def test_replica_resumes_inside_a_range_file(make_node):
    """A replica whose position falls inside one of the primary's range files is sent
    that file and applies it over what it has (OVERLAPPING FILES in db_apply.c): no
    snapshot, and its own chain stays whole."""
    p, (r,) = cluster(make_node, 1)
    c = connect(p.path("db"), "delete")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    write_rows(c, 10)
    assert_same(p, r)
    at = int(r.pos("db").split("/")[0], 16)
    r.stop()
    write_rows(c, 10, start=100)
    c.close()
    p.stop()
    # the primary's files at-2 .. at+3 become one range file (DELETE mode: one file
    # per transaction before)
    files = {mn: (mx, path) for mx, mn, path in ltx_files(p.dbdir("db"))}
    span = [files[t] for t in range(at - 2, at + 4)]
    assert all(mx == t for (mx, _), t in zip(span, range(at - 2, at + 4)))
    merged = merge_ltx([path for _, path in span])
    for _, path in span:
        os.unlink(path)
    with open(os.path.join(p.dbdir("db"), "ltx", "%016x-%016x.ltx" % (at - 2, at + 3)),
              "wb") as f:
        f.write(merged)
    p.start()
    # GET /ltx (adoption) serves the file that covers a TXID inside it
    got = http(p.url + "/ltx?db=db&txid=%x" % at)
    assert got.status == 200 and got.body == merged
    snaps = p.read_log().count("sending a snapshot")
    r.start()
    assert_same(p, r)
    log = p.read_log()
    assert "resumes inside range file %016x-%016x" % (at - 2, at + 3) in log
    assert log.count("sending a snapshot") == snaps
    # installed as the part it added, chained to the replica's own files
    assert os.path.exists(os.path.join(r.dbdir("db"), "ltx",
                                       "%016x-%016x.ltx" % (at + 1, at + 3)))
    rc = sqlite3.connect(r.path("db"))
    assert rc.execute("SELECT count(*) FROM t").fetchone() == (20,)
    rc.close()


@pytest.mark.parametrize("sync", ["normal", "full"])
def test_reconnects_under_wal_load_resume_without_snapshots(make_node, sync):
    """WAL commits are streamed from memory, so a replica's position is rarely the end
    of one of the primary's files: links cut while commits flow resume from memory or
    from the file that covers the position, never with a snapshot."""
    p = make_node("primary").start()
    proxy = Proxy(p.port)
    r = make_node("replica", replica_of=proxy.url).start()
    stop = threading.Event()
    done = []

    def writer():
        w = connect(p.path("db"), "wal", sync)
        while not stop.is_set():
            w.execute("INSERT INTO t(v) VALUES(?)", ("x" * 200,))
            done.append(1)
        w.close()

    try:
        c = connect(p.path("db"), "wal", sync)
        c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        assert_same(p, r)
        snaps = p.read_log().count("sending a snapshot")
        th = threading.Thread(target=writer)
        th.start()
        try:
            for _ in range(6):
                n, at = proxy.accepted, r.pos("db")
                wait_for(lambda: r.pos("db") != at, what="the replica to move on")
                proxy.cut()
                wait_for(lambda: proxy.accepted > n, what="the replica to reconnect")
        finally:
            stop.set()
            th.join()
        assert_same(p, r)
        assert p.read_log().count("sending a snapshot") == snaps
        txid = int(p.pos("db").split("/")[0], 16)
        assert len(done) > 100 and txid > len(done)
        c.close()
    finally:
        proxy.close()


def test_retention_keeps_what_a_connected_replica_needs(make_node):
    """A replica stuck applying (a reader holds its lock) still gets files, not a snapshot."""
    extra = "  retention: 1s\n  retention-monitor-interval: 200ms\n"
    p = make_node("primary", data_extra=extra).start()
    r = make_node("replica", replica_of=p).start()
    c = connect(p.path("db"), "delete")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    write_rows(c, 5)
    assert_same(p, r)
    # a long read transaction on the replica blocks applies (rollback mode)
    rc = sqlite3.connect(r.path("db"), isolation_level=None)
    rc.execute("BEGIN")
    rc.execute("SELECT count(*) FROM t").fetchone()
    stuck = r.pos("db")
    # more than the socket buffers hold, so the primary cannot send it all
    for i in range(40):
        c.execute("INSERT INTO t VALUES(?, randomblob(1000000))", (1000 + i,))
    time.sleep(2.5)  # well past retention: files a connected replica lacks must survive
    assert r.pos("db") == stuck
    rc.execute("COMMIT")
    rc.close()
    assert_same(p, r)
    assert "removed by retention" not in p.read_log()
    c.close()


def test_snapshot_under_concurrent_writes(make_node):
    """A snapshot is streamed without the database lock, each page checked against the
    committed checksums copied when it started. Writes that rewrite pages meanwhile cut
    the frame; the replica discards it, and the next snapshot is built under the lock.
    The replica ends up identical, and every snapshot it applied was whole."""
    p = make_node("primary").start()
    c = connect(p.path("db"), "delete")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    c.execute("BEGIN")
    for i in range(12000):  # about 48 MiB, one row per page
        c.execute("INSERT INTO t VALUES(?, randomblob(3500))", (i,))
    c.execute("COMMIT")
    c.close()
    stop = os.path.join(p.base, "stop-writer")
    # rewrite pages all over the file, as fast as one process can commit
    w = subprocess.Popen([sys.executable, "-c", """
import os, random, sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("PRAGMA synchronous=OFF")
while not os.path.exists(sys.argv[2]):
    c.execute("UPDATE t SET v = randomblob(3500) WHERE id = ?", (random.randrange(12000),))
""", p.path("db"), stop])
    try:
        txid = lambda n: int((n.pos("db") or "0/0").split("/")[0], 16)  # noqa: E731
        start = txid(p)
        wait_for(lambda: txid(p) > start + 20, what="the writer to commit")
        r = make_node("replica", replica_of=p).start()
        wait_for(lambda: "the database changed while a snapshot was streamed" in p.read_log(),
                 timeout=60, what="a snapshot cut short by concurrent writes")
        wait_for(lambda: txid(r) > 0, timeout=60, what="the replica to restore")
    finally:
        open(stop, "w").close()
        rc = w.wait(30)
    check_exit("the page-rewriting writer", rc, 0)
    assert_same(p, r, timeout=60)
    assert "built under the lock" in p.read_log()


def _metric(node, name):
    for line in http(node.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("%s: no %s in /metrics" % (node.name, name))


def _lag(p, rid):
    """What the primary p reports of replica rid: (lagging, lagSeconds, TXIDs
    not sent yet)."""
    reps = [x for x in p.info()["replicas"] if x["nodeID"] == rid]
    if not reps:
        return False, 0.0, 0
    return reps[0]["lagging"], reps[0]["lagSeconds"], reps[0]["databases"][0]["behind"]


def _reported_lagging(p, rid):
    """The primary p reports replica rid as lagging and behind on its database."""
    lagging, _, behind = _lag(p, rid)
    return lagging and behind > 0


def _cluster_with_table(make_node, n_replicas, mode):
    """A primary, n replicas, and table t(id, v) created in mode and replicated."""
    p, rs = cluster(make_node, n_replicas)
    c = connect(p.path("db"), mode)
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    for r in rs:
        assert_same(p, r)
    return p, rs, c


def test_lagging_replica_is_reported_and_catches_up_in_batches(make_node):
    """A replica that cannot keep up (here: its process is stopped) is reported
    by the primary in /info, /metrics and `ltxfs status`; the primary commits
    on regardless; once it runs again the replica applies what piled up in
    batches (fewer applies than LTX files) and ends identical."""
    p, (r, r2), c = _cluster_with_table(make_node, 2, "wal")
    applied0 = _metric(r, "ltxfs_ltx_applied_total")
    batches0 = _metric(r, "ltxfs_apply_batches_total")
    rid = r.info()["nodeID"]
    os.kill(r.proc.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        # small transactions, then 1 MB ones until the stopped replica's socket
        # is full (a commit waits unsent, and has been waiting: lagSeconds),
        # then the 2 s until it is reported lagging; all of it well within the
        # 30 s after which the primary cuts off a replica that takes nothing
        # (a slow CI machine once spent them on a fixed 30 MB, and the stream
        # was gone before the check)
        for i in range(800):
            c.execute("INSERT INTO t VALUES(?, randomblob(100))", (i,))
        reported = False
        for i in range(100):
            c.execute("INSERT INTO t VALUES(?, randomblob(1000000))", (10000 + i,))
            _, lag_s, behind = _lag(p, rid)
            if lag_s > 0 and behind > 0:
                try:
                    reported = wait_for(lambda: _reported_lagging(p, rid), timeout=4)
                    break
                except AssertionError:
                    pass  # it was sending after all: the socket is not full yet
        assert reported, "the primary did not report the stopped replica as lagging"
        assert _metric(p, "ltxfs_replicas_lagging") == 1
        out = subprocess.run([os.environ["LTXFS_BIN"], "status", "-url", p.url],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and "lagging" in out.stdout, out.stdout
        # the primary is not slowed down: it commits while the replica is stopped
        c.execute("INSERT INTO t VALUES(99999, 'still committing')")
        # one thread writes every replica's socket: the stopped replica's full
        # socket holds up neither the commits nor the other replica
        assert_same(p, r2, timeout=20)
        assert time.monotonic() - stopped < 30, "too slow to test before the cut-off"
    finally:
        os.kill(r.proc.pid, signal.SIGCONT)
    assert_same(p, r, timeout=60)
    wait_for(lambda: not any(x["lagging"] for x in p.info()["replicas"]), timeout=15,
             what="the primary to see the replica caught up")
    assert _metric(p, "ltxfs_replicas_lagging") == 0
    assert "cannot keep up" in p.read_log() and "caught up after" in p.read_log()
    # files, not transactions: commits that queued up on the primary share range files
    applied = _metric(r, "ltxfs_ltx_applied_total") - applied0
    batches = _metric(r, "ltxfs_apply_batches_total") - batches0
    assert applied >= 100 and batches < applied / 4, (applied, batches)
    c.close()


def test_replica_whose_socket_is_full_is_reported_lagging(make_node):
    """A stopped replica's socket fills while the primary commits 200 KB
    transactions one at a time: each of the stream's fills then ends with
    nothing more to send, but the bytes it took wait in a full socket. The
    replica is reported lagging (it was not, when the last fill before the
    socket filled had found nothing more), and catches up once it runs."""
    p, (r,), c = _cluster_with_table(make_node, 1, "delete")
    rid = r.info()["nodeID"]
    os.kill(r.proc.pid, signal.SIGSTOP)
    try:
        for i in range(100):  # 20 MB: more than both ends' socket buffers hold
            c.execute("INSERT INTO t VALUES(?, randomblob(200000))", (i,))
        wait_for(lambda: _reported_lagging(p, rid), timeout=15,
                 what="the primary to report the replica as lagging")
        assert "cannot keep up" in p.read_log()
    finally:
        os.kill(r.proc.pid, signal.SIGCONT)
    assert_same(p, r, timeout=60)
    wait_for(lambda: not any(x["lagging"] for x in p.info()["replicas"]), timeout=15,
             what="the primary to see the replica caught up")
    c.close()


def test_commits_are_sent_by_the_thread_that_made_them(make_node):
    """In DELETE mode a commit's LTX file is in memory at the commit point: the
    FUSE worker that committed sends it to every replica after its reply,
    instead of waking the sender thread for each commit. Every replica ends
    identical, and most of these one-at-a-time commits went out that way."""
    p, (r, r2), c = _cluster_with_table(make_node, 2, "delete")
    pushes0 = _metric(p, "ltxfs_stream_inline_sends_total")
    for i in range(200):
        c.execute("INSERT INTO t VALUES(?, ?)", (i, "row %d" % i))
    assert_same(p, r)
    assert_same(p, r2)
    pushes = _metric(p, "ltxfs_stream_inline_sends_total") - pushes0
    # a commit made while the sender is awake (a heartbeat, a round under
    # way) is left to it; the rest went out from the committing thread
    assert pushes >= 100, pushes
    for n in (r, r2):
        rc = connect(n.path("db"), "delete")
        assert rc.execute("SELECT count(*) FROM t").fetchone()[0] == 200
        rc.close()
    c.close()


def _read_stream(sock, buf, want_types, timeout=10):
    """Decode HTTP chunks, then frames, from sock until a frame of each of
    want_types arrived (in any order); returns the frame types seen and what
    is left of buf."""
    import struct
    seen, body, end = [], b"", time.monotonic() + timeout
    while not set(want_types) <= set(seen):
        assert time.monotonic() < end, "frames seen: %r" % seen
        while True:  # whole chunks from buf into body
            i = buf.find(b"\r\n")
            if i < 0:
                break
            size = int(buf[:i], 16)
            if len(buf) < i + 2 + size + 2:
                break
            assert buf[i + 2 + size:i + 4 + size] == b"\r\n"
            body += buf[i + 2:i + 2 + size]
            buf = buf[i + 4 + size:]
            if size == 0:
                seen.append("eof")
        while len(body) >= 12:  # whole frames from body
            ftype, flen = struct.unpack(">IQ", body[:12])
            if len(body) < 12 + flen:
                break
            seen.append(ftype)
            body = body[12 + flen:]
        if set(want_types) <= set(seen):
            break
        more = sock.recv(65536)
        if not more:
            seen.append("closed")
            break
        buf += more
    return seen, buf


def _raw_stream(p, rcvbuf=None):
    """A raw-socket stream to p with an empty position map; returns the socket
    and what followed the 101's headers."""
    import socket
    host, port = p.url[len("http://"):].rsplit(":", 1)
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    sock.sendall(b"POST /stream HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                 b"Upgrade: ltxfs-stream\r\nLtxfs-Node-Id: 00000000000000AB\r\n"
                 b"Content-Length: 4\r\n\r\n\x00\x00\x00\x00")
    buf = b""
    while b"\r\n\r\n" not in buf:
        more = sock.recv(65536)
        assert more, buf
        buf += more
    return sock, buf


def test_snapshot_waiting_for_a_transaction_holds_up_no_other_replica(make_node):
    """A new replica needs a snapshot of a database in which a rollback-mode
    transaction spilled its cache: the snapshot cannot begin before that
    transaction ends. The primary's one sender must not wait for it: the
    replica already attached keeps receiving the commits of another database,
    and the new one gets everything once the transaction commits."""
    p, (r,) = cluster(make_node, 1)
    big = connect(p.path("big"), "delete", cache_size=5)
    big.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    other = connect(p.path("other"), "wal")
    other.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    assert_same(p, r, "big")
    assert_same(p, r, "other")
    big.execute("BEGIN")
    for i in range(200):
        big.execute("INSERT INTO t VALUES(?, randomblob(4000))", (i,))
    # the cache spilled: the journal is live (its header synced, magic set)
    with open(p.path("big-journal"), "rb") as f:
        assert f.read(8) == bytes.fromhex("d9d505f920a163d7")
    r2 = make_node("replica2", replica_of=p).start()
    rid2 = r2.info()["nodeID"]
    wait_for(lambda: any(x["nodeID"] == rid2 for x in p.info()["replicas"]), timeout=20,
             what="the new replica's stream")
    for i in range(20):
        other.execute("INSERT INTO t VALUES(?, 'meanwhile')", (i,))
    assert_same(p, r, "other", timeout=10)
    assert r2.pos("big") is None  # its snapshot is still waiting for the transaction
    big.execute("COMMIT")
    for n in (r, r2):
        assert_same(p, n, "big", timeout=30)
        assert_same(p, n, "other", timeout=30)
    big.close()
    other.close()


def test_replica_that_reads_nothing_is_cut_off(make_node):
    """A replica that stops reading (here a raw socket that never reads) has its
    stream closed once its socket took nothing for 30 s, as libmicrohttpd's idle
    timeout did before streams were upgraded; the other replica is not held up.
    Two clocks may end it: the sender's (30 s of a full send buffer) or the
    kernel's TCP_USER_TIMEOUT (30 s of a zero window, counted from earlier,
    so it wins when the commits that fill the buffer are slow to come)."""
    p, (r,), c = _cluster_with_table(make_node, 1, "wal")
    sock, _ = _raw_stream(p, rcvbuf=4096)
    wait_for(lambda: len(p.info()["replicas"]) == 2, what="both streams")
    for i in range(40):  # more than both sockets' buffers hold
        c.execute("INSERT INTO t VALUES(?, randomblob(1000000))", (i,))
    assert_same(p, r, timeout=30)
    wait_for(lambda: "replica 00000000000000AB disconnected" in p.read_log(), timeout=90,
             what="the primary to cut off the stream that reads nothing")
    log = p.read_log()
    assert ("replica 00000000000000AB took nothing for 30 s" in log or
            "stream to replica 00000000000000AB: Connection timed out" in log), log
    assert [x["nodeID"] for x in p.info()["replicas"]] == [r.info()["nodeID"]]
    sock.close()
    c.execute("INSERT INTO t VALUES(1000, 'after')")
    assert_same(p, r)
    c.close()


def test_stream_is_an_upgraded_connection(make_node):
    """POST /stream as docs/protocol.md gives it, from a raw socket: a 101
    with Upgrade: ltxfs-stream, then frames in chunked coding (a snapshot,
    READY, heartbeats, each new commit), the same thread sending to it and to
    a real replica, and at shutdown END and the zero-length chunk."""
    p, (r,) = cluster(make_node, 1)
    c = connect(p.path("db"), "wal")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    assert_same(p, r)
    sock, buf = _raw_stream(p)
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0].startswith("HTTP/1.1 101"), lines
    hdrs = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    assert hdrs["upgrade"] == "ltxfs-stream" and hdrs["ltxfs-hostname"]
    seen, buf = _read_stream(sock, buf, [1, 2, 7])  # LTX (snapshot), READY, HEARTBEAT
    c.execute("INSERT INTO t VALUES(1, 'after ready')")
    seen, buf = _read_stream(sock, buf, [1])
    # both streams are written by the one sender thread, none by a thread of its own
    names = []
    for t in os.listdir("/proc/%d/task" % p.proc.pid):
        with open("/proc/%d/task/%s/comm" % (p.proc.pid, t)) as f:
            names.append(f.read().strip())
    assert names.count("ltxfs-sender") == 1, names
    assert len(p.info()["replicas"]) == 2
    c.close()
    p.stop()
    seen, buf = _read_stream(sock, buf, [3, "eof"])  # END, then the last chunk
    sock.close()
