"""Backups to S3 (docs/backup.md): the S3 client against moto with
signature checks on, continuous upload by the primary, restore in every
journal mode and to a TXID, failures (wrong credentials, the bucket
unreachable, a corrupted object, another cluster's prefix).

One moto server serves the module (started here, stopped at the end); each
test uses its own bucket. Waiting is polling observable state (/info's
backup position, listings), never sleeping."""
import os
import sqlite3
import subprocess
import time
import uuid

import pytest

from conftest import MODES, wait_for
from helpers import LTXFS, cli, sanitizer_report
from ltxcheck import ltx_files
from netproxy import Proxy
from s3fault import S3Fault
from s3moto import Moto

BUILD = os.environ.get("LTXFS_BUILD", os.path.join(os.path.dirname(LTXFS), ".."))
S3TOOL = os.path.join(BUILD, "tests", "unit", "s3tool")


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    m = Moto(str(tmp_path_factory.mktemp("moto") / "moto.log"))
    yield m
    m.stop()


@pytest.fixture
def bucket(moto):
    name = "b" + uuid.uuid4().hex[:12]
    moto.create_bucket(name)
    return name


def s3tool(moto, bucket, *args, secret=None):
    env = dict(os.environ, S3_ACCESS_KEY=moto.access_key, S3_SECRET_KEY=secret or moto.secret_key)
    p = subprocess.run([S3TOOL, moto.url, bucket, *args], env=env, capture_output=True,
                       timeout=60)
    out = p.stdout.decode(errors="replace")
    report = sanitizer_report(p.stderr.decode(errors="replace"))
    assert report is None, "s3tool %s: a sanitizer report:\n%s" % (args, report)
    return p.returncode, out


def test_s3_client_against_moto_with_signatures(moto, bucket):
    """Every call of the C client, signed by ltxfs's SigV4, accepted by moto's
    signature check; a wrong secret fails with S3's error code and message."""
    rc, out = s3tool(moto, bucket, "put", "a/b c~d.ltx", "hello world", "if-none-match",
                     "meta=ltxfs-timestamp:2026-12-06T02:00:00.000Z")
    assert rc == 0, out
    etag = out.split()[1]
    # create-only: a second PUT of the key fails, naming the condition
    rc, out = s3tool(moto, bucket, "put", "a/b c~d.ltx", "x", "if-none-match")
    assert rc == 1 and "EEXIST" in out and "PreconditionFailed" in out, out
    # If-Match: the right ETag replaces, a stale one is refused
    rc, out = s3tool(moto, bucket, "put", "a/b c~d.ltx", "hello again", "if-match=" + etag)
    assert rc == 0, out
    rc, out = s3tool(moto, bucket, "put", "a/b c~d.ltx", "x", "if-match=" + etag)
    assert rc == 1 and "EEXIST" in out, out
    assert s3tool(moto, bucket, "get", "a/b c~d.ltx") == (0, "hello again")
    assert s3tool(moto, bucket, "get", "a/b c~d.ltx", "6", "5") == (0, "again")
    rc, out = s3tool(moto, bucket, "head", "a/b c~d.ltx", "ltxfs-timestamp")
    assert rc == 0 and out.startswith("size 11 etag "), out
    rc, out = s3tool(moto, bucket, "get", "nope")
    assert rc == 1 and "ENOENT" in out and "NoSuchKey" in out, out
    # listing with continuation (max-keys 2, five keys)
    for i in range(5):
        assert s3tool(moto, bucket, "put", "k%d" % i, "v" * i)[0] == 0
    rc, out = s3tool(moto, bucket, "list", "k", "2")
    assert rc == 0 and out.split("\n")[:-1] == ["k%d %d" % (i, i) for i in range(5)], out
    rc, out = s3tool(moto, bucket, "list", "", "2", "k2")
    assert rc == 0 and out.split("\n")[:-1] == ["k3 3", "k4 4"], out
    assert s3tool(moto, bucket, "delete", "k0")[0] == 0
    assert s3tool(moto, bucket, "get", "k0")[0] == 1
    # DeleteObjects (with its Content-MD5, signed), a missing key included
    rc, out = s3tool(moto, bucket, "delete-many", "k2", "k3", "nope")
    assert rc == 0, out
    rc, out = s3tool(moto, bucket, "list", "", "2")
    assert rc == 0 and out.split("\n")[:-1] == ["a/b c~d.ltx 11", "k1 1", "k4 4"], out
    # a wrong secret: moto's signature check refuses it
    rc, out = s3tool(moto, bucket, "get", "k1", secret="wrong" + moto.secret_key)
    assert rc == 1 and "EACCES" in out and "SignatureDoesNotMatch" in out, out


# ---------------------------------------------------------------- helpers

def db_info(node, db):
    for d in node.info()["databases"]:
        if d["name"] == db:
            return d
    return None


def caught_up(node, db):
    """The bucket holds every transaction of db (the uploader's own view)."""
    d = db_info(node, db)
    return bool(d and d.get("backup") and d["backup"]["known"] and
                d["backup"]["uploadedTxid"] == d["txid"] and int(d["txid"], 16) > 0)


def wait_uploaded(node, db, timeout=30):
    wait_for(lambda: caught_up(node, db), timeout=timeout,
             what="%s's backup of %s to catch up" % (node.name, db))
    return int(db_info(node, db)["txid"], 16)


def write_rows(node, db, mode, n, start=0, per_tx=1):
    c = sqlite3.connect(node.path(db), timeout=10)
    c.execute("PRAGMA journal_mode=%s" % mode)
    c.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB)")
    c.commit()
    for i in range(start, start + n, per_tx):
        for k in range(i, min(i + per_tx, start + n)):
            c.execute("INSERT INTO t VALUES (?, randomblob(300 + ? % 700))", (k, k))
        c.commit()
    c.close()


def export(node, db, dst):
    cli("export", "-name", db, "-url", node.url, dst, check=0)
    with open(dst, "rb") as f:
        return f.read()


def restore(node, db, dst, *args, check=0):
    return cli("restore", "-config", node.config, "-o", dst, *args, db, check=check)


def objects(moto, bucket, path=""):
    """(dbkey, level, min, max) of every LTX object in the bucket."""
    out = []
    for key, _size in moto.keys(bucket, path):
        parts = key[len(path) + 1 if path else 0:].split("/")
        if len(parts) == 3 and parts[2].endswith(".ltx"):
            mn, mx = parts[2][:-4].split("-")
            out.append((parts[0], parts[1], int(mn, 16), int(mx, 16)))
    return sorted(out, key=lambda o: (o[3], o[1]))


def assert_chain(objs, dbkey, upto):
    """One snapshot, then L0 objects with no gap and no overlap up to upto."""
    mine = [o for o in objs if o[0] == dbkey]
    snaps = [o for o in mine if o[1] == "0009"]
    l0 = sorted((o for o in mine if o[1] == "0000"), key=lambda o: o[2])
    assert len(snaps) == 1 and snaps[0][2] == 1, mine
    cur = snaps[0][3]
    for o in l0:
        assert o[2] == cur + 1, ("gap or overlap", o, cur, mine)
        cur = o[3]
    assert cur == upto, (cur, upto, mine)
    return mine


def metric(node, name, labels=""):
    """The sum of the series of name (those whose labels hold `labels`)."""
    from helpers import http
    text = http(node.url + "/metrics").text
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name + " ") or line.startswith(name + "{")) and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---------------------------------------------------------------- tests

@pytest.mark.parametrize("mode", MODES)
def test_upload_and_restore_in_every_mode(make_node, moto, bucket, tmp_path, mode):
    """Every transaction reaches the bucket as a snapshot then L0 objects
    with no gap; the restore is byte for byte the primary's /export; a
    nested name is stored under its escaped key."""
    p = make_node("p", extra_config=moto.backup_section(bucket, path="c1")).start()
    write_rows(p, "app.db", mode, 30, per_tx=1)
    os.makedirs(p.path("tenants/42"), exist_ok=True)
    write_rows(p, "tenants/42/app.db", mode, 5)
    wait_uploaded(p, "app.db")
    # a second round: L0 objects after the snapshot, in this mode
    write_rows(p, "app.db", mode, 20, start=1000, per_tx=3)
    c = sqlite3.connect(p.path("app.db"))
    c.execute("DELETE FROM t WHERE id % 2 = 0")
    c.commit()
    c.close()
    t1 = wait_uploaded(p, "app.db")
    t2 = wait_uploaded(p, "tenants/42/app.db")
    objs = objects(moto, bucket, "c1")
    assert any(o[0] == "app.db" and o[1] == "0000" for o in objs), objs
    assert_chain(objs, "app.db", t1)
    assert_chain(objs, "tenants~2F42~2Fapp.db", t2)
    assert ("c1/ltxfs-cluster", len(p.info()["clusterID"]) + 1) in moto.keys(bucket, "c1")
    for db in ("app.db", "tenants/42/app.db"):
        want = export(p, db, str(tmp_path / "exp.db"))
        dst = str(tmp_path / ("r-" + db.replace("/", "_")))
        out = restore(p, db, dst).stdout
        assert "restored '%s' at TXID" % db in out, out
        with open(dst, "rb") as f:
            assert f.read() == want, "restore of %s differs from /export" % db
        c = sqlite3.connect(dst)
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        c.close()
    status = cli("status", "-url", p.url, check=0).stdout
    assert "BACKUP" in status and "%016x" % t1 in status, status
    listing = cli("backups", "-config", p.config, "app.db", check=0).stdout
    assert "snapshot" in listing and "to %x (latest)" % t1 in listing, listing


def test_restore_to_a_txid_and_a_time_in_the_middle(make_node, moto, bucket, tmp_path):
    """Point-in-time restore: by TXID and by time, byte for byte the state
    the primary exported at that point; a TXID that no object ends at is
    refused naming restorable ones."""
    p = make_node("p", extra_config=moto.backup_section(bucket, path="pit")).start()
    write_rows(p, "w.db", "wal", 20)
    t1 = wait_uploaded(p, "w.db")
    at1 = export(p, "w.db", str(tmp_path / "at1.db"))
    from datetime import datetime, timezone
    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # the next commit must carry a later millisecond than `when`
    wait_for(lambda: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:23] >
             when[:23], what="the next millisecond")
    write_rows(p, "w.db", "wal", 20, start=100, per_tx=4)
    c = sqlite3.connect(p.path("w.db"))
    c.execute("DELETE FROM t WHERE id % 3 = 0")
    c.commit()
    c.execute("VACUUM")
    c.close()
    t2 = wait_uploaded(p, "w.db")
    assert t2 > t1
    latest = export(p, "w.db", str(tmp_path / "latest.db"))
    for args, want in ((["-txid", "%x" % t1], at1), (["-timestamp", when], at1),
                       ([], latest), (["-txid", "%x" % t2], latest)):
        dst = str(tmp_path / ("r%d.db" % time.monotonic_ns()))
        restore(p, "w.db", dst, *args)
        with open(dst, "rb") as f:
            assert f.read() == want, "restore %s" % args
    # a TXID beyond the last object
    r = restore(p, "w.db", str(tmp_path / "bad.db"), "-txid", "%x" % (t2 + 5), check=1)
    assert "cannot be restored" in r.stderr and "%x" % t2 in r.stderr, r.stderr
    # an output that exists is kept unless -if-db-not-exists
    dst = str(tmp_path / "exists.db")
    open(dst, "w").close()
    assert "exists" in restore(p, "w.db", dst, check=1).stderr
    assert "nothing restored" in restore(p, "w.db", dst, "-if-db-not-exists").stdout


def test_wrong_credentials_clear_error_and_writes_go_on(make_node, moto, bucket):
    p = make_node("p", extra_config=moto.backup_section(bucket, secret="wrong")).start()
    write_rows(p, "a.db", "delete", 5)
    wait_for(lambda: "SignatureDoesNotMatch" in p.read_log(), what="the signature error")
    write_rows(p, "a.db", "delete", 5, start=10)
    assert int(db_info(p, "a.db")["txid"], 16) >= 6
    assert metric(p, "ltxfs_backup_errors_total") >= 1
    assert moto.keys(bucket) == []
    # one line per distinct failure, not one per retry
    assert p.read_log().count("SignatureDoesNotMatch") <= 3, p.read_log()


def test_bucket_unreachable_backlog_waits_locally_then_uploads(make_node, moto, bucket,
                                                              tmp_path):
    """The bucket behind a black hole: writes go on, the backlog shows in
    /info and /metrics, local retention (500 ms here) keeps every file not
    uploaded, and once the bucket is back the backlog goes up with no gap."""
    proxy = Proxy(moto.port)
    try:
        p = make_node("p", data_extra="  retention: 500ms\n  retention-monitor-interval: 100ms\n",
                      extra_config=moto.backup_section(bucket, path="down",
                                                       endpoint=proxy.url)).start()
        write_rows(p, "a.db", "wal", 10)
        t1 = wait_uploaded(p, "a.db")
        proxy.block()
        write_rows(p, "a.db", "wal", 30, start=100)
        t2 = int(db_info(p, "a.db")["txid"], 16)
        assert t2 > t1
        wait_for(lambda: db_info(p, "a.db")["backup"]["backlogTxns"] == t2 - t1 and
                 db_info(p, "a.db")["backup"]["lagSeconds"] > 0.5, timeout=20,
                 what="the backlog in /info")
        assert metric(p, "ltxfs_backup_backlog_txns") == t2 - t1
        assert metric(p, "ltxfs_backup_lag_seconds") > 0.5
        # retention ran meanwhile: older files went, the backlog stayed
        wait_for(lambda: metric(p, "ltxfs_db_ltx_reap_count") > 0, what="retention to run")
        # each backlog transaction still has its file (its own, or a range: group commit)
        files = ltx_files(p.dbdir("a.db"))
        for t in range(t1 + 1, t2 + 1):
            assert any(mn <= t <= mx for mx, mn, _ in files), (t, files)
        start = time.monotonic()
        proxy.unblock()
        wait_uploaded(p, "a.db", timeout=30)
        took = time.monotonic() - start
        print("backlog of %d transactions uploaded %.1f s after the bucket came back"
              % (t2 - t1, took))
        assert took < 15, took
        assert_chain(objects(moto, bucket, "down"), "a.db", t2)
        want = export(p, "a.db", str(tmp_path / "e.db"))
        restore(p, "a.db", str(tmp_path / "r.db"))
        with open(str(tmp_path / "r.db"), "rb") as f:
            assert f.read() == want
        p.stop()
    finally:
        proxy.close()


def test_5xx_and_slow_answers_are_retried_and_nothing_is_lost(make_node, moto, bucket,
                                                              tmp_path):
    """A fault-injecting proxy in front of moto: runs of 503 SlowDown and 500
    InternalError, one request in two failing (so an object goes up and its
    head does not), answers lost after the request took effect (the object
    or the head is there, the client saw 500), and slow answers. Writes go
    on; every upload is retried until the bucket holds everything: the
    backlog returns to 0, the chain has no gap and no overlap, and the
    restore is byte for byte the primary's state."""
    fault = S3Fault(moto.port)
    try:
        p = make_node("p", extra_config=moto.backup_section(bucket, path="flt",
                                                            endpoint=fault.url)).start()
        write_rows(p, "a.db", "wal", 5)
        wait_uploaded(p, "a.db")
        rounds = [lambda: fault.fail(503, 6),
                  lambda: fault.fail(500, 6, every=2),
                  lambda: fault.fail(500, 3, methods=("PUT",), after=True),
                  lambda: fault.fail(500, 4, methods=("PUT",), every=2, after=True),
                  lambda: fault.delay(1.5, 4)]
        k = 1000
        for i, arm in enumerate(rounds):
            arm()
            deadline = time.monotonic() + 60
            while fault.armed():  # commits keep requests coming until they are spent
                assert time.monotonic() < deadline, "round %d: faults left" % i
                write_rows(p, "a.db", "wal", 1, start=k)
                k += 1
                time.sleep(0.1)
        t = wait_uploaded(p, "a.db", timeout=60)
        assert fault.failed == 6 + 6 + 3 + 4 and fault.delayed == 4, (fault.failed,
                                                                      fault.delayed)
        wait_for(lambda: metric(p, "ltxfs_backup_backlog_txns") == 0 and
                 metric(p, "ltxfs_backup_lag_seconds") == 0, timeout=30,
                 what="the backlog to return to 0")
        assert metric(p, "ltxfs_backup_errors_total") > 0
        assert metric(p, "ltxfs_backup_fenced") == 0
        assert "another primary took the backup over" not in p.run_log()
        assert_chain(objects(moto, bucket, "flt"), "a.db", t)
        want = export(p, "a.db", str(tmp_path / "e.db"))
        restore(p, "a.db", str(tmp_path / "r.db"))
        with open(str(tmp_path / "r.db"), "rb") as f:
            assert f.read() == want
        head = moto.get(bucket, "flt/a.db/head").decode()
        assert head.startswith("ltxfs-head 1\ntxid %016x\n" % t), head
        p.stop()
    finally:
        fault.close()


def test_corrupted_object_restore_names_it(make_node, moto, bucket, tmp_path):
    p = make_node("p", extra_config=moto.backup_section(bucket, path="cor")).start()
    write_rows(p, "a.db", "delete", 3)
    wait_uploaded(p, "a.db")
    write_rows(p, "a.db", "delete", 3, start=10)
    wait_uploaded(p, "a.db")
    l0 = [k for k, _ in moto.keys(bucket, "cor") if "/0000/" in k]
    assert l0
    victim = l0[-1]
    body = bytearray(moto.get(bucket, victim))
    body[len(body) // 2] ^= 0x20
    moto.put(bucket, victim, bytes(body))
    r = restore(p, "a.db", str(tmp_path / "r.db"), check=1)
    assert "object '%s' is corrupt: a checksum or a page rule fails" % victim in r.stderr, \
        r.stderr
    assert not os.path.exists(str(tmp_path / "r.db"))
    assert not [f for f in os.listdir(str(tmp_path)) if "tmp-restore" in f]
    # cut short
    moto.put(bucket, victim, bytes(body[:len(body) // 3]))
    r = restore(p, "a.db", str(tmp_path / "r.db"), check=1)
    assert "object '%s' is corrupt: truncated" % victim in r.stderr, r.stderr


def test_another_clusters_prefix_is_refused(make_node, moto, bucket):
    a = make_node("a", extra_config=moto.backup_section(bucket, path="shared")).start()
    write_rows(a, "x.db", "delete", 2)
    wait_uploaded(a, "x.db")
    before = moto.keys(bucket, "shared")
    b = make_node("b", extra_config=moto.backup_section(bucket, path="shared")).start()
    write_rows(b, "y.db", "delete", 2)
    wait_for(lambda: "holds the backups of cluster '%s'" % a.info()["clusterID"] in b.read_log(),
             what="the refusal")
    write_rows(b, "y.db", "delete", 2, start=10)
    assert moto.keys(bucket, "shared") == before


def test_failover_continues_the_chain(make_node, moto, bucket, tmp_path):
    """A replica that becomes primary (the old one killed, maybe with a
    backlog not uploaded) reads the bucket and continues the same chain:
    one snapshot, then objects with no gap and no overlap, restorable."""
    section = moto.backup_section(bucket, path="fo")
    p = make_node("p", extra_config=section).start()
    r = make_node("r", replica_of=p, extra_config=section).start()
    write_rows(p, "a.db", "wal", 10)
    wait_uploaded(p, "a.db")
    write_rows(p, "a.db", "wal", 10, start=100)
    wait_for(lambda: r.pos("a.db") == p.pos("a.db"), what="the replica to catch up")
    p.kill9()
    r.stop()
    # the replica's node again, now as the primary (its data, its cluster ID)
    r2 = make_node("r", extra_config=section).start()
    write_rows(r2, "a.db", "wal", 10, start=200)
    t = wait_uploaded(r2, "a.db")
    assert_chain(objects(moto, bucket, "fo"), "a.db", t)
    want = export(r2, "a.db", str(tmp_path / "e.db"))
    restore(r2, "a.db", str(tmp_path / "r.db"))
    with open(str(tmp_path / "r.db"), "rb") as f:
        assert f.read() == want


def rfc3339(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int(t % 1 * 1000)


def test_partitioned_old_primary_objects_are_never_restored(make_node, moto, bucket, tmp_path):
    """A primary cut off from its replica and from the bucket keeps its
    unreplicated transactions; a new primary takes the database's head
    over and continues the chain; when the old primary's bucket comes back
    it uploads its backlog, its head update is refused (412): it stops
    (fenced, logged, /info and /metrics say so) and restore, latest, to a
    TXID and to a time, never uses its object: byte for byte the new
    primary's states. Without the head, its object reaches furthest from
    the shared TXID and restore would follow it."""
    proxy = Proxy(moto.port)
    try:
        direct = moto.backup_section(bucket, path="fence")
        p = make_node("p", extra_config=moto.backup_section(bucket, path="fence",
                                                            endpoint=proxy.url)).start()
        r = make_node("r", replica_of=p, extra_config=direct).start()
        write_rows(p, "a.db", "wal", 10)
        m = wait_uploaded(p, "a.db")
        wait_for(lambda: r.pos("a.db") == p.pos("a.db"), what="the replica to catch up")
        r.stop()
        # the partition: the old primary commits 6 transactions nobody else has
        proxy.block()
        write_rows(p, "a.db", "wal", 6, start=100)
        assert int(db_info(p, "a.db")["txid"], 16) == m + 6
        # the new primary (the replica's data) takes over and uploads
        r2 = make_node("r", extra_config=direct).start()
        write_rows(r2, "a.db", "wal", 2, start=200)
        assert wait_uploaded(r2, "a.db") == m + 2
        write_rows(r2, "a.db", "wal", 2, start=300)
        t_b = wait_uploaded(r2, "a.db")
        assert t_b == m + 4
        e_b = export(r2, "a.db", str(tmp_path / "eb.db"))
        time.sleep(0.05)
        at_b = time.time()
        time.sleep(0.05)
        # the old primary's bucket is back: its backlog goes up, its head
        # update is refused
        proxy.unblock()
        wait_for(lambda: ("a.db", "0000", m + 1, m + 6) in objects(moto, bucket, "fence"),
                 timeout=40, what="the old primary's object")
        wait_for(lambda: db_info(p, "a.db")["backup"].get("fenced") is True, timeout=20,
                 what="the old primary to be fenced")
        assert metric(p, "ltxfs_backup_fenced") == 1
        assert p.run_log().count("another primary took the backup over") == 1, p.run_log()
        # the new primary goes on
        write_rows(r2, "a.db", "wal", 1, start=400)
        t_c = wait_uploaded(r2, "a.db")
        assert t_c == m + 5
        e_c = export(r2, "a.db", str(tmp_path / "ec.db"))
        write_rows(r2, "a.db", "wal", 2, start=500)
        t_d = wait_uploaded(r2, "a.db")
        assert t_d == m + 7
        e_d = export(r2, "a.db", str(tmp_path / "ed.db"))
        write_rows(r2, "a.db", "wal", 1, start=600)
        t_e = wait_uploaded(r2, "a.db")
        e_e = export(r2, "a.db", str(tmp_path / "ee.db"))
        assert metric(r2, "ltxfs_backup_fenced") == 0
        # nothing the old primary wrote after the takeover is restored (its
        # object m+1..m+6 would take the latest restore, -txid m+7 and the
        # time to its state at m+6)
        for args, want, name in (((), e_e, "latest"), (("-txid", "%x" % t_d), e_d, "txid d"),
                                 (("-txid", "%x" % t_c), e_c, "txid c"),
                                 (("-txid", "%x" % t_b), e_b, "txid b"),
                                 (("-timestamp", rfc3339(at_b)), e_b, "time")):
            dst = str(tmp_path / ("r-%s.db" % name.replace(" ", "")))
            restore(r2, "a.db", dst, *args)
            with open(dst, "rb") as f:
                assert f.read() == want, name
        out = cli("backups", "-config", r2.config, "a.db", check=0).stdout
        assert "1 object(s) not vouched for by the head" in out, out
        assert "%016x  %016x" % (m + 1, m + 6) not in out, out
        # the head names the new primary's term last, at its TXID
        head = moto.get(bucket, "fence/a.db/head").decode()
        assert head.startswith("ltxfs-head 1\ntxid %016x\n" % t_e), head
        terms = [l.split() for l in head.splitlines() if l.startswith("term ")]
        assert len(terms) == 2 and int(terms[1][1], 16) == m + 1, head
        r2.stop()
        p.stop()
    finally:
        proxy.close()


def test_idle_database_costs_no_requests(make_node, moto, bucket):
    """Once uploaded, a database that commits nothing makes no S3 request:
    while another database uploads round after round, the only requests
    are that one's PUTs, two per upload: the object and its head (no
    listing, no HEAD, no GET)."""
    p = make_node("p", extra_config=moto.backup_section(bucket, path="idle")).start()
    write_rows(p, "idle.db", "delete", 3)
    write_rows(p, "busy.db", "wal", 3)
    wait_uploaded(p, "idle.db")
    wait_uploaded(p, "busy.db")
    kinds = ("put", "get", "head", "list", "delete")
    objs = db_info(p, "busy.db")["backup"]["objects"]
    idle_objs = db_info(p, "idle.db")["backup"]["objects"]
    # the marker, a head created per database, then an object and a head per upload
    wait_for(lambda: metric(p, "ltxfs_backup_requests_total", 'kind="put"')
             >= 3 + 2 * (objs + idle_objs), timeout=10, what="the last head update")
    before = {k: metric(p, "ltxfs_backup_requests_total", 'kind="%s"' % k) for k in kinds}
    assert before["put"] == 3 + 2 * (objs + idle_objs), before
    for i in range(4):
        write_rows(p, "busy.db", "wal", 5, start=100 + 10 * i)
        wait_uploaded(p, "busy.db")
    new_objs = db_info(p, "busy.db")["backup"]["objects"] - objs
    assert new_objs >= 4
    # the head's PUT follows the object's (the position shows in between)
    wait_for(lambda: metric(p, "ltxfs_backup_requests_total", 'kind="put"') - before["put"]
             >= 2 * new_objs, timeout=10, what="the last head update")
    after = {k: metric(p, "ltxfs_backup_requests_total", 'kind="%s"' % k) for k in kinds}
    assert after["put"] - before["put"] == 2 * new_objs, (before, after, new_objs)
    assert all(after[k] == before[k] for k in ("get", "head", "list", "delete")), (before, after)
    assert db_info(p, "idle.db")["backup"]["objects"] == idle_objs


# ------------------------------------------------- snapshots and retention

def chain_from_oldest_snapshot(objs, dbkey, upto):
    """The oldest snapshot of dbkey, then incremental objects (any level
    below 9) with no gap up to upto; every later snapshot ends where an
    object of the chain ends (the chain goes on from it)."""
    mine = [o for o in objs if o[0] == dbkey]
    snaps = sorted((o for o in mine if o[1] == "0009"), key=lambda o: o[3])
    assert snaps and all(s[2] == 1 for s in snaps), mine
    ends = {snaps[0][3]}
    cur = snaps[0][3]
    for o in sorted((o for o in mine if o[1] != "0009"), key=lambda o: (o[2], -o[3])):
        if o[3] <= cur:
            continue  # covered by a longer object (a compacted one)
        assert o[2] == cur + 1, ("gap or overlap", o, cur, mine)
        cur = o[3]
        ends.add(cur)
    assert cur == upto, (cur, upto, mine)
    for s in snaps[1:]:
        assert s[3] in ends, ("a snapshot off the chain", s, mine)
    return snaps


def test_scheduled_snapshots_only_when_changed(make_node, moto, bucket, tmp_path):
    """backup.snapshot-interval: a snapshot goes up at level 0009 once the
    newest is that old and the database changed since, at a TXID where the
    L0 chain ends (no gap after it); an idle database gets none; restore
    starts from the newest snapshot at or below its target."""
    section = moto.backup_section(bucket, path="snap") + "  snapshot-interval: 1s\n"
    p = make_node("p", extra_config=section).start()
    write_rows(p, "a.db", "wal", 5)
    t1 = wait_uploaded(p, "a.db")
    at1 = export(p, "a.db", str(tmp_path / "at1.db"))
    states = {t1: at1}
    for rnd in range(3):
        before = len([o for o in objects(moto, bucket, "snap") if o[1] == "0009"])
        write_rows(p, "a.db", "delete", 4, start=100 * (rnd + 1), per_tx=2)
        t = wait_uploaded(p, "a.db")
        states[t] = export(p, "a.db", str(tmp_path / ("at%x.db" % t)))
        wait_for(lambda: len([o for o in objects(moto, bucket, "snap") if o[1] == "0009"]) >
                 before, timeout=15, what="a scheduled snapshot after round %d" % rnd)
    t_last = wait_uploaded(p, "a.db")
    snaps = chain_from_oldest_snapshot(objects(moto, bucket, "snap"), "a.db", t_last)
    assert len(snaps) >= 4, snaps
    assert snaps[-1][3] == t_last, snaps
    # idle: no snapshot, no request, over several intervals
    n_objs = len(objects(moto, bucket, "snap"))
    puts = metric(p, "ltxfs_backup_requests_total", 'kind="put"')
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert len(objects(moto, bucket, "snap")) == n_objs
        time.sleep(0.2)
    assert metric(p, "ltxfs_backup_requests_total", 'kind="put"') == puts
    assert "scheduled snapshot at TXID" in p.read_log()
    # every recorded state restores, each from the snapshot at or below it
    for t, want in states.items():
        dst = str(tmp_path / ("r%x.db" % t))
        restore(p, "a.db", dst, "-txid", "%x" % t)
        with open(dst, "rb") as f:
            assert f.read() == want, "restore to %x" % t
    listing = cli("backups", "-config", p.config, "a.db", check=0).stdout
    assert listing.count("snapshot ") >= 4, listing


def test_retention_deletes_what_the_window_does_not_need(make_node, moto, bucket, tmp_path):
    """backup.retention: objects that precede the newest snapshot written
    before the window's start go (DELETE); every state committed inside the
    window stays restorable, byte for byte, and so does the latest; a state
    from before the kept snapshot is refused."""
    section = (moto.backup_section(bucket, path="ret") +
               "  snapshot-interval: 1s\n  retention: 4s\n")
    p = make_node("p", extra_config=section).start()
    rounds = []  # (txid, wall time after upload, export)
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < 9:
        write_rows(p, "a.db", "wal", 3, start=10 * i)
        t = wait_uploaded(p, "a.db")
        rounds.append((t, time.time(), export(p, "a.db", str(tmp_path / "e.db"))))
        i += 1
        time.sleep(0.3)
    first_snap = [o for o in objects(moto, bucket, "ret") if o[1] == "0009"][0]
    wait_for(lambda: first_snap not in objects(moto, bucket, "ret"), timeout=10,
             what="retention to delete the first snapshot")
    assert metric(p, "ltxfs_backup_requests_total", 'kind="delete"') > 0
    t_last = rounds[-1][0]

    def settled():
        """Nothing left that ends at or before the oldest snapshot kept, but it
        (retention deletes one object at a time, oldest first)."""
        objs = objects(moto, bucket, "ret")
        old = min((o for o in objs if o[1] == "0009"), key=lambda o: o[3])
        return not [o for o in objs if o[3] <= old[3] and o != old] and objs
    objs = wait_for(settled, what="retention to finish")
    snaps = chain_from_oldest_snapshot(objs, "a.db", t_last)
    # stopped, the node deletes nothing more: the window is frozen at now,
    # however long the restores below take (restore reads only the bucket)
    p.stop()
    now = time.time()
    inside = [r for r in rounds if r[1] > now - 4 + 1.0]
    assert inside, rounds
    for t, _when, want in dict((r[0], r) for r in inside + [rounds[-1]]).values():
        dst = str(tmp_path / ("r%x.db" % t))
        restore(p, "a.db", dst, "-txid", "%x" % t)
        with open(dst, "rb") as f:
            assert f.read() == want, "restore to %x inside the window" % t
    old = rounds[0][0]
    assert old < snaps[0][3]
    r = restore(p, "a.db", str(tmp_path / "old.db"), "-txid", "%x" % old, check=1)
    assert "cannot be restored" in r.stderr or "no snapshot" in r.stderr, r.stderr


# ------------------------------------------------------------- compaction

def test_compaction_into_level_1_and_restore_prefers_it(make_node, moto, bucket, tmp_path):
    """backup.compaction-interval: runs of L0 objects are merged into one
    object at level 0001 covering their range, with no gap between the
    compacted objects; restore to the latest reads the L1 objects (an L0
    object they cover, corrupted, does not matter), and a restore to a TXID
    or a time inside an L1 object's range still reaches it through the L0
    objects (kept: no retention here)."""
    from datetime import datetime, timezone
    section = moto.backup_section(bucket, path="cmp") + "  compaction-interval: 1s\n"
    p = make_node("p", extra_config=section).start()
    rounds = []  # (txid, time before the next round, export)
    for i in range(8):
        write_rows(p, "a.db", "wal", 3, start=10 * i)
        t = wait_uploaded(p, "a.db")
        want = export(p, "a.db", str(tmp_path / "e.db"))
        when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        wait_for(lambda: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:23] >
                 when[:23], what="the next millisecond")
        rounds.append((t, when, want))
    t_last = rounds[-1][0]

    def compacted():
        objs = objects(moto, bucket, "cmp")
        l1 = [o for o in objs if o[1] == "0001"]
        return l1 and max(o[3] for o in l1) >= rounds[-2][0] and objs
    objs = wait_for(compacted, timeout=20, what="L1 objects up to the last rounds")
    l0 = sorted(o for o in objs if o[1] == "0000")
    l1 = sorted((o for o in objs if o[1] == "0001"), key=lambda o: o[2])
    snap = [o for o in objs if o[1] == "0009"]
    assert len(snap) == 1, objs
    # each L1 object covers a run of two or more L0 objects exactly, and the
    # L1 objects follow each other with no gap and no overlap
    for o in l1:
        run = [x for x in l0 if o[2] <= x[2] and x[3] <= o[3]]
        assert len(run) >= 2 and run[0][2] == o[2] and run[-1][3] == o[3], (o, l0)
    for a, b in zip(l1, l1[1:]):
        assert b[2] == a[3] + 1, l1
    assert l1[0][2] == snap[0][3] + 1 or any(x[3] == l1[0][2] - 1 for x in l0), objs
    chain_from_oldest_snapshot(objs, "a.db", t_last)
    # corrupt an L0 object an L1 object covers: the latest restore does not read it
    victim = [x for x in l0 if l1[0][2] <= x[2] and x[3] < l1[0][3]][0]
    key = "cmp/a.db/0000/%016x-%016x.ltx" % (victim[2], victim[3])
    body = bytearray(moto.get(bucket, key))
    body[len(body) // 2] ^= 0x20
    moto.put(bucket, key, bytes(body))
    dst = str(tmp_path / "latest.db")
    restore(p, "a.db", dst)
    with open(dst, "rb") as f:
        assert f.read() == rounds[-1][2]
    # ... but a restore to its own end must read it, and names it
    r = restore(p, "a.db", str(tmp_path / "v.db"), "-txid", "%x" % victim[3], check=1)
    assert "object '%s'" % key in r.stderr, r.stderr
    # repaired: a TXID and a time inside an L1 object's range restore byte for
    # byte, through the L0 objects it covers
    body[len(body) // 2] ^= 0x20
    moto.put(bucket, key, bytes(body))
    inner = [r_ for r_ in rounds if any(o[2] <= r_[0] < o[3] for o in l1)]
    assert inner, (rounds, l1)
    for t, when, want in inner[:2]:
        for args in (["-txid", "%x" % t], ["-timestamp", when]):
            dst = str(tmp_path / ("j%d.db" % time.monotonic_ns()))
            restore(p, "a.db", dst, *args)
            with open(dst, "rb") as f:
                assert f.read() == want, "restore %s inside an L1 range" % args
    listing = cli("backups", "-config", p.config, "a.db", check=0).stdout
    assert "\nl1 " in listing, listing


def test_compacted_l0_objects_go_once_out_of_the_window(make_node, moto, bucket, tmp_path):
    """With retention, the L0 objects an L1 object covers are deleted once
    that L1 object was written before the window's start; those within the
    window stay (every TXID there restorable); the latest restore works."""
    section = (moto.backup_section(bucket, path="cret") +
               "  compaction-interval: 1s\n  retention: 3s\n")
    p = make_node("p", extra_config=section).start()
    rounds = []
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < 7:
        write_rows(p, "a.db", "delete", 2, start=10 * i)
        t = wait_uploaded(p, "a.db")
        rounds.append((t, time.time(), export(p, "a.db", str(tmp_path / "e.db"))))
        i += 1
        time.sleep(0.25)

    def some_l0_gone():
        objs = objects(moto, bucket, "cret")
        l1 = [o for o in objs if o[1] == "0001"]
        ends = {o[3] for o in objs if o[1] == "0000"}
        # an L1 object ends where the last L0 object it covers ended: once
        # that L0 object is gone, retention deleted what it covers (the one
        # snapshot is never older than an L1 object, so rule 1 deletes none)
        return l1 and any(o[3] not in ends for o in l1) and objs
    objs = wait_for(some_l0_gone, timeout=15, what="covered L0 objects to be deleted")
    assert metric(p, "ltxfs_backup_requests_total", 'kind="delete"') > 0
    assert len([o for o in objs if o[1] == "0009"]) == 1, objs  # only the first snapshot
    chain_from_oldest_snapshot(objs, "a.db", rounds[-1][0])
    p.stop()  # the window is frozen at now (see the test above)
    now = time.time()
    for t, _when, want in [r for r in rounds if r[1] > now - 3 + 1.0] + [rounds[-1]]:
        dst = str(tmp_path / ("r%d.db" % time.monotonic_ns()))
        restore(p, "a.db", dst, "-txid", "%x" % t)
        with open(dst, "rb") as f:
            assert f.read() == want, "restore to %x" % t


# ------------------------------------------------------ disaster recovery

def test_disaster_recovery_of_a_three_node_cluster(make_node, moto, bucket, tmp_path):
    """backup.restore-if-empty: every node of a three-node cluster loses its
    data directory; the candidate finds no data and restores every database
    from the bucket (same TXIDs, same checksums, the bucket's cluster ID)
    before it accepts writes, the replicas catch up from it, and uploads
    continue the bucket's chain with no new snapshot."""
    import shutil
    section = moto.backup_section(bucket, path="dr") + "  restore-if-empty: true\n"
    p = make_node("p", extra_config=section).start()
    # an empty bucket: nothing to restore, the node starts empty
    assert "the bucket holds no backup: starting empty" in p.read_log(), p.read_log()
    r1 = make_node("r1", replica_of=p, extra_config=section).start()
    r2 = make_node("r2", replica_of=p, extra_config=section).start()
    write_rows(p, "a.db", "wal", 20, per_tx=3)
    os.makedirs(p.path("t/1"), exist_ok=True)
    write_rows(p, "t/1/b.db", "delete", 7)
    ta = wait_uploaded(p, "a.db")
    tb = wait_uploaded(p, "t/1/b.db")
    want = {db: export(p, db, str(tmp_path / "w.db")) for db in ("a.db", "t/1/b.db")}
    pos = {db: p.pos(db) for db in want}
    cluster = p.info()["clusterID"]
    for n in (r1, r2):
        wait_for(lambda: all(n.pos(db) == pos[db] for db in want), what="replicas in sync")
    # the disaster: every node stops and loses its data directory
    for n in (r2, r1, p):
        n.stop()
        shutil.rmtree(n.data)
    p.start()
    log = p.read_log()
    assert "restored 2 database(s) of cluster %s" % cluster in log, log
    assert p.info()["clusterID"] == cluster
    for db in want:
        assert p.pos(db) == pos[db], (db, p.pos(db), pos[db])
        assert export(p, db, str(tmp_path / "x.db")) == want[db], db
    r1.start()
    r2.start()
    for n in (r1, r2):
        wait_for(lambda: all(n.pos(db) == pos[db] for db in want), timeout=20,
                 what="%s to catch up from the restored primary" % n.name)
    # writes go on; the uploader continues the bucket's chain
    write_rows(p, "a.db", "wal", 5, start=1000)
    t2 = wait_uploaded(p, "a.db")
    assert t2 > ta
    objs = objects(moto, bucket, "dr")
    assert_chain(objs, "a.db", t2)  # one snapshot: the restore added none
    assert_chain(objs, "t~2F1~2Fb.db", tb)
    wait_for(lambda: r1.pos("a.db") == p.pos("a.db"), what="r1 to follow the new writes")
    dst = str(tmp_path / "after.db")
    restore(p, "a.db", dst)
    with open(dst, "rb") as f:
        assert f.read() == export(p, "a.db", str(tmp_path / "y.db"))
    # a node with data ignores the switch
    p.stop()
    p.start()
    assert "restore-if-empty:" not in p.read_log()[len(log):], p.read_log()


def test_disaster_recovery_with_an_etcd_lease(make_node, moto, bucket, tmp_path):
    """With an elected lease, the first candidate back finds no lease holder
    and restores before its elector takes the lease; the next ones find it
    holding the lease, follow it instead of restoring, and catch up."""
    import shutil
    from etcd import Etcd
    e = Etcd().start()
    try:
        lease = "etcd:\n  endpoints: [%s]\n  key: ltxfs/dr\n  ttl: 3s\n" % e.url
        section = moto.backup_section(bucket, path="edr") + "  restore-if-empty: true\n"
        nodes = [make_node("n%d" % i, lease=lease, extra_config=section) for i in (1, 2, 3)]

        def primary():
            ps = [n for n in nodes if n.proc and n.info().get("acceptsWrites")]
            return ps[0] if len(ps) == 1 else None
        nodes[0].start()
        wait_for(primary, timeout=15, what="n1 to become primary")
        for n in nodes[1:]:
            n.start()
        p = nodes[0]
        write_rows(p, "a.db", "delete", 12, per_tx=2)
        t = wait_uploaded(p, "a.db")
        want, pos = export(p, "a.db", str(tmp_path / "w.db")), p.pos("a.db")
        for n in nodes[1:]:
            wait_for(lambda: n.pos("a.db") == pos, what="%s in sync" % n.name)
        for n in reversed(nodes):
            n.stop()
            shutil.rmtree(n.data)
        nodes[0].start()
        wait_for(primary, timeout=15, what="n1 to become primary again")
        assert "restored 1 database(s)" in nodes[0].read_log(), nodes[0].read_log()
        assert nodes[0].pos("a.db") == pos
        for n in nodes[1:]:
            mark = len(n.read_log())
            n.start()
            wait_for(lambda: n.pos("a.db") == pos, timeout=20, what="%s to catch up" % n.name)
            assert "n1 holds the lease: following it, not restoring" in n.read_log()[mark:]
            assert export(n, "a.db", str(tmp_path / "n.db")) == want
        write_rows(nodes[0], "a.db", "delete", 2, start=500)
        t2 = wait_uploaded(nodes[0], "a.db")
        assert t2 > t
        assert_chain(objects(moto, bucket, "edr"), "a.db", t2)
        for n in reversed(nodes):
            n.stop()
    finally:
        e.stop()
        e.cleanup()


def test_restore_if_empty_does_not_start_empty_when_the_bucket_fails(make_node, moto, bucket):
    """An unreachable bucket (or any restore failure) stops the start with
    status 1 and says why: starting empty would begin a second history."""
    from conftest import free_port
    dead = "http://127.0.0.1:%d" % free_port()
    section = moto.backup_section(bucket, path="x", endpoint=dead) + "  restore-if-empty: true\n"
    n = make_node("n", extra_config=section)
    with pytest.raises(AssertionError) as e:
        n.start()
    assert "exited during start with 1" in str(e.value), str(e.value)
    assert "restore-if-empty:" in n.read_log() and \
        "not starting with an empty data directory" in n.read_log(), n.read_log()
    assert not os.path.exists(os.path.join(n.data, "clusterid"))


def test_failover_continues_compaction_from_the_listing(make_node, moto, bucket, tmp_path):
    """A new primary learns the compacted objects from its listing: it
    compacts only what came after them (no overlap between L1 objects), and
    the latest restore reads the whole chain."""
    section = moto.backup_section(bucket, path="fc") + "  compaction-interval: 1s\n"
    p = make_node("p", extra_config=section).start()
    r = make_node("r", replica_of=p, extra_config=section).start()
    for i in range(4):
        write_rows(p, "a.db", "wal", 2, start=10 * i)
        wait_uploaded(p, "a.db")
    t1 = wait_uploaded(p, "a.db")
    wait_for(lambda: any(o[1] == "0001" and o[3] == t1 for o in objects(moto, bucket, "fc")),
             timeout=15, what="the old primary's L1 object")
    wait_for(lambda: r.pos("a.db") == p.pos("a.db"), what="the replica to catch up")
    p.kill9()
    r.stop()
    r2 = make_node("r", extra_config=section).start()
    for i in range(4):
        write_rows(r2, "a.db", "wal", 2, start=1000 + 10 * i)
        wait_uploaded(r2, "a.db")
    t2 = wait_uploaded(r2, "a.db")
    wait_for(lambda: any(o[1] == "0001" and o[3] == t2 for o in objects(moto, bucket, "fc")),
             timeout=15, what="the new primary's L1 object")
    objs = objects(moto, bucket, "fc")
    l1 = sorted((o for o in objs if o[1] == "0001"), key=lambda o: o[2])
    for a, b in zip(l1, l1[1:]):
        assert b[2] == a[3] + 1, ("L1 objects overlap or leave a gap", l1)
    assert any(o[2] == t1 + 1 for o in l1), (l1, t1)
    chain_from_oldest_snapshot(objs, "a.db", t2)
    want = export(r2, "a.db", str(tmp_path / "e.db"))
    restore(r2, "a.db", str(tmp_path / "r.db"))
    with open(str(tmp_path / "r.db"), "rb") as f:
        assert f.read() == want


def test_scheduled_snapshot_compacts_what_precedes_it(make_node, moto, bucket, tmp_path):
    """A compacted object never spans a snapshot, so before a scheduled
    snapshot goes up the L0 objects since the last compaction are compacted
    up to its TXID (here the compaction interval alone would never run)."""
    section = (moto.backup_section(bucket, path="sc") +
               "  snapshot-interval: 2s\n  compaction-interval: 1h\n")
    p = make_node("p", extra_config=section).start()
    i = 0

    def snaps():
        return sorted(o[3] for o in objects(moto, bucket, "sc") if o[1] == "0009")

    def l1s():
        return [o for o in objects(moto, bucket, "sc") if o[1] == "0001"]
    # an L1 object needs two L0 uploads between two snapshots: under load an
    # interval may hold only one, so go on until one held two
    deadline = time.monotonic() + 40
    while (len(snaps()) < 3 or not l1s()) and time.monotonic() < deadline:
        for _ in range(2):
            write_rows(p, "a.db", "delete", 1, start=i)
            i += 1
            wait_uploaded(p, "a.db")
    s = snaps()
    assert len(s) >= 3, s
    t = wait_uploaded(p, "a.db")
    objs = objects(moto, bucket, "sc")
    l0 = [o for o in objs if o[1] == "0000"]
    l1 = [o for o in objs if o[1] == "0001"]
    # every L0 object between the first and the last snapshot is covered by an
    # L1 object, and those end at snapshots
    for o in l0:
        if s[0] < o[2] and o[3] <= s[-1]:
            # (a lone L0 object between two snapshots has nothing to merge with)
            lo = max(x for x in s if x < o[2])
            hi = min(x for x in s if x >= o[3])
            alone = len([x for x in l0 if lo < x[2] and x[3] <= hi]) == 1
            assert alone or any(c[2] <= o[2] and o[3] <= c[3] for c in l1), (o, l1, s)
    assert l1 and all(c[3] in s for c in l1), (l1, s)
    chain_from_oldest_snapshot(objs, "a.db", t)
    want = export(p, "a.db", str(tmp_path / "e.db"))
    restore(p, "a.db", str(tmp_path / "r.db"))
    with open(str(tmp_path / "r.db"), "rb") as f:
        assert f.read() == want


def test_retention_after_a_restart_reads_the_listing_times(make_node, moto, bucket, tmp_path):
    """A new term has only the listing: retention judges objects by S3's
    LastModified. After a restart with no write, what precedes the newest
    snapshot older than the window goes; the latest state still restores."""
    section = (moto.backup_section(bucket, path="rr") +
               "  snapshot-interval: 1s\n  compaction-interval: 0s\n")
    # the first term keeps everything, so what precedes its newest snapshot
    # is there for the second term (which has the retention) to judge
    p = make_node("p", extra_config=section).start()
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < 3:
        write_rows(p, "a.db", "delete", 2, start=10 * i)
        wait_uploaded(p, "a.db")
        i += 1
    wait_for(lambda: len([o for o in objects(moto, bucket, "rr") if o[1] == "0009"]) >= 2,
             what="two snapshots")
    t = wait_uploaded(p, "a.db")
    want = export(p, "a.db", str(tmp_path / "e.db"))
    p.stop()
    # what the first term left before its newest snapshot is for the next
    # term to judge, from the listing alone (no write, so no new snapshot)
    before = objects(moto, bucket, "rr")
    newest = max(o[3] for o in before if o[1] == "0009")
    assert any(o[3] < newest for o in before), before
    wait_for(lambda: time.monotonic() - start > 6.5, timeout=10,
             what="the snapshots to be older than the window")
    p = make_node("p", extra_config=section + "  retention: 2s\n").start()  # same directories
    wait_for(lambda: all(o[3] >= newest for o in objects(moto, bucket, "rr")), timeout=10,
             what="retention from the listing to delete what precedes the newest snapshot")
    objs = objects(moto, bucket, "rr")
    assert ("a.db", "0009", 1, newest) in objs, objs
    chain_from_oldest_snapshot(objs, "a.db", t)
    restore(p, "a.db", str(tmp_path / "r.db"))
    with open(str(tmp_path / "r.db"), "rb") as f:
        assert f.read() == want
