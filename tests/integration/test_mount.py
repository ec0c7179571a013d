"""The mount's surface: names, the -pos file, refusals, compatibility, bad input."""
import contextlib
import errno
import signal
import os
import sqlite3
import subprocess
import sys

import pytest

from conftest import MODES, connect, is_mounted, wait_for
from helpers import LTXFS, check_exit, cli
from ltxcheck import (FLAG, contiguous, db_checksum_bytes, encode_ltx_v1, ltx_files, parse_ltx, read_pos,
                      verify_database)


def test_version():
    out = cli("version", check=0)
    assert out.stdout.startswith("ltxfs ")
    assert cli("--version", check=0).stdout == out.stdout


def test_pos_file_format(node):
    assert not os.path.exists(node.path("db-pos"))  # a negative entry the kernel may cache
    c = connect(node.path("db"), "delete")
    c.execute("CREATE TABLE t(x)")
    c.execute("INSERT INTO t VALUES(1)")
    c.close()
    raw = open(node.path("db-pos"), "rb").read()
    assert len(raw) == 34 and raw[16:17] == b"/" and raw.endswith(b"\n")
    assert os.stat(node.path("db-pos")).st_size == 34
    txid, ck = read_pos(node.mount, "db")
    assert txid == 2 and ck & FLAG
    with pytest.raises(OSError):
        open(node.path("db-pos"), "w")
    assert "db-pos" in os.listdir(node.mount)


def test_symlinks_and_special_files_refused(node):
    """Directories are accepted (test_subdirs.py); symlinks, FIFOs and device nodes
    are not."""
    with pytest.raises(OSError) as e:
        os.symlink("db", node.path("link"))
    assert e.value.errno == errno.EPERM
    with pytest.raises(OSError) as e:
        os.mkfifo(node.path("fifo"))
    assert e.value.errno == errno.EPERM
    os.mkdir(node.path("sub"))
    with pytest.raises(OSError) as e:
        os.symlink("../db", node.path("sub/link"))
    assert e.value.errno == errno.EPERM


def test_non_sqlite_file_is_a_plain_file(node):
    with open(node.path("notes.txt"), "w") as f:
        f.write("hello, this is not a database\n")
    assert open(node.path("notes.txt")).read() == "hello, this is not a database\n"
    assert "notes.txt-pos" not in os.listdir(node.mount)
    # but not through a handle SQLite-style (read-write, no truncation) on a database name
    c = connect(node.path("db"), "delete")
    c.execute("CREATE TABLE t(x)")
    c.close()
    fd = os.open(node.path("db"), os.O_RDWR)
    try:
        with pytest.raises(OSError) as e:
            os.pwrite(fd, b"scribble", 100)
    finally:
        os.close(fd)
    assert e.value.errno == errno.EPERM
    assert "outside a journal or WAL transaction" in node.read_log()
    verify_database(node, "db")


@pytest.mark.parametrize("base", ["delete", "persist", "truncate"])
@pytest.mark.parametrize("jm", ["memory", "off"])
def test_journal_mode_memory_and_off_refused(node, jm, base):
    c = connect(node.path("db"), base)
    c.execute("CREATE TABLE t(x)")
    c.execute("INSERT INTO t VALUES(0)")  # PERSIST/TRUNCATE leave a journal file behind
    c.execute("DELETE FROM t")
    pos = read_pos(node.mount, "db")
    c.execute("PRAGMA journal_mode=%s" % jm)
    with pytest.raises(sqlite3.OperationalError) as e:
        c.execute("INSERT INTO t VALUES(1)")
    assert "disk I/O error" in str(e.value)
    assert ("db 'db': refusing a write to the database outside a journal or WAL transaction: "
            "journal_mode OFF and MEMORY are not supported") in node.read_log()
    c.close()
    assert read_pos(node.mount, "db") == pos
    c = connect(node.path("db"), base)
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    c.close()
    verify_database(node, "db")


@pytest.mark.parametrize("mode", MODES)
def test_exclusive_locking_mode_captured(node, mode):
    c = connect(node.path("db"), mode)
    c.execute("PRAGMA locking_mode=EXCLUSIVE")
    c.execute("CREATE TABLE t(x)")
    before = read_pos(node.mount, "db")[0]
    for i in range(50):
        c.execute("INSERT INTO t VALUES(?)", (i,))
    assert read_pos(node.mount, "db")[0] == before + 50
    c.close()
    verify_database(node, "db")


def test_switching_journal_modes(node):
    c = connect(node.path("db"), "delete")
    c.execute("CREATE TABLE t(x)")
    n = 0
    for jm in ["wal", "delete", "truncate", "wal", "persist", "delete", "wal"]:
        assert c.execute("PRAGMA journal_mode=%s" % jm).fetchone()[0] == jm
        for i in range(20):
            c.execute("INSERT INTO t VALUES(?)", (n,))
            n += 1
        verify_database(node, "db")
    c.close()
    verify_database(node, "db")


def test_multi_database_commit_with_super_journal(node):
    a = connect(node.path("a.db"), "delete")
    a.execute("CREATE TABLE t(x)")
    b = connect(node.path("b.db"), "delete")
    b.execute("CREATE TABLE u(y)")
    b.close()
    a.execute("ATTACH DATABASE ? AS b", (node.path("b.db"),))
    pa, pb = read_pos(node.mount, "a.db")[0], read_pos(node.mount, "b.db")[0]
    for i in range(5):
        a.execute("BEGIN")
        a.execute("INSERT INTO t VALUES(?)", (i,))
        a.execute("INSERT INTO b.u VALUES(?)", (i,))
        a.execute("COMMIT")
    assert read_pos(node.mount, "a.db")[0] == pa + 5
    assert read_pos(node.mount, "b.db")[0] == pb + 5
    a.close()
    assert not [n for n in os.listdir(node.mount) if "-mj" in n]
    verify_database(node, "a.db")
    verify_database(node, "b.db")


def test_second_mount_refused(node, make_node):
    other = make_node("other")
    with open(other.config, "w") as f:
        f.write(open(node.config).read().replace(node.mount, other.mount))
    p = cli("mount", "-config", other.config, timeout=30)
    assert p.returncode != 0
    assert "in use by another ltxfs" in p.stdout + p.stderr
    assert is_mounted(node.mount)


def test_delete_database(node):
    c = connect(node.path("gone"), "wal")
    c.execute("CREATE TABLE t(x)")
    c.execute("INSERT INTO t VALUES(1)")
    assert os.path.exists(node.path("gone-wal"))  # the kernel caches this entry
    c.close()
    c = connect(node.path("gone"), "persist")
    c.execute("INSERT INTO t VALUES(2)")
    assert os.path.exists(node.path("gone-journal"))
    c.close()
    before = read_pos(node.mount, "gone")[0]
    os.unlink(node.path("gone"))
    assert not os.path.exists(node.path("gone"))
    wait_for(lambda: not os.path.exists(node.path("gone-journal")),
             what="the kernel to forget gone-journal")
    assert read_pos(node.mount, "gone") == (before + 1, FLAG)
    newest = parse_ltx(ltx_files(node.dbdir("gone"))[-1][2])
    assert newest["commit"] == 0 and newest["post"] == FLAG
    # re-created, the TXID keeps counting
    c = connect(node.path("gone"), "wal")
    c.execute("CREATE TABLE t2(x)")
    c.close()
    files = ltx_files(node.dbdir("gone"))
    assert contiguous(files) and files[-1][0] >= before + 2
    verify_database(node, "gone")


def test_litefs_data_dir_mounts_as_is(make_node, tmp_path):
    """A data directory written by LiteFS 0.5 (v1 LTX, LZ4) mounts unchanged."""
    # Our independent encoder reproduces the ltx.md 10.2 vectors first.
    p1, p2 = b"\x01" * 512, b"\x02" * 512
    unc = encode_ltx_v1(512, 2, 1, 1, {1: p1, 2: p2}, 0, 0xad2dffe333333333, False, 1000)
    assert len(unc) == 1152 and unc[-8:] == bytes.fromhex("c08e61f253746fbf")
    comp = encode_ltx_v1(512, 2, 1, 1, {1: p1, 2: p2}, 0, 0xad2dffe333333333, True, 1000)
    assert comp[-8:] == bytes.fromhex("b595f85138c5a97e")

    # Build a LiteFS-shaped data dir: a real database and its LTX history.
    src = str(tmp_path / "src.db")
    s = sqlite3.connect(src, isolation_level=None)
    s.execute("PRAGMA page_size=4096")
    s.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    s.executemany("INSERT INTO t(v) VALUES(?)", [("litefs %d" % i,) for i in range(300)])
    s.close()
    data1 = open(src, "rb").read()
    s = sqlite3.connect(src, isolation_level=None)
    s.execute("INSERT INTO t(v) VALUES('second tx')")
    s.close()
    data2 = open(src, "rb").read()
    ps = 4096
    pages1 = {i + 1: data1[i * ps:(i + 1) * ps] for i in range(len(data1) // ps)}
    pages2 = {i + 1: data2[i * ps:(i + 1) * ps] for i in range(len(data2) // ps)}
    changed = {p: d for p, d in pages2.items() if pages1.get(p) != d}
    ck1 = db_checksum_bytes(data1, ps)
    ck2 = db_checksum_bytes(data2, ps)
    node = make_node()
    dbdir = node.dbdir("app.db")
    os.makedirs(os.path.join(dbdir, "ltx"))
    with open(os.path.join(dbdir, "database"), "wb") as f:
        f.write(data2)
    with open(os.path.join(dbdir, "ltx", "%016x-%016x.ltx" % (1, 1)), "wb") as f:
        f.write(encode_ltx_v1(ps, len(pages1), 1, 1, pages1, 0, ck1, True, 1))
    with open(os.path.join(dbdir, "ltx", "%016x-%016x.ltx" % (2, 2)), "wb") as f:
        f.write(encode_ltx_v1(ps, len(pages2), 2, 2, changed, ck1, ck2, True, 2))
    with open(os.path.join(node.data, "clusterid"), "w") as f:
        f.write("LFSC0123456789ABCDEF\n")
    node.start()
    assert read_pos(node.mount, "app.db") == (2, ck2)
    assert "does not match" not in node.read_log()
    c = connect(node.path("app.db"), "delete")
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 301
    c.execute("INSERT INTO t(v) VALUES('ltxfs')")
    c.close()
    assert read_pos(node.mount, "app.db")[0] == 3
    verify_database(node, "app.db")
    assert open(os.path.join(node.data, "clusterid")).read() == "LFSC0123456789ABCDEF\n"


@contextlib.contextmanager
def small_disk_node(make_node, tmp_path):
    """A started node whose data directory is on an 8 MiB tmpfs, for disk-full tests."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.check_call(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)])
    try:
        node = make_node()
        cfg = open(node.config).read().replace(node.data, str(small / "data"))
        open(node.config, "w").write(cfg)
        node.data = str(small / "data")
        node.start()
        yield node, small
    finally:
        subprocess.call(["umount", "-l", str(small)])


def fill_disk(path):
    """Write zeros to path until the file system is full."""
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def test_full_disk(make_node, tmp_path):
    """ENOSPC while writing an LTX: SQLite gets an error, nothing is corrupt, and the
    next write works once space is back."""
    with small_disk_node(make_node, tmp_path) as (node, small):
        c = connect(node.path("db"), "delete")
        c.execute("CREATE TABLE t(v)")
        c.execute("INSERT INTO t VALUES('before')")
        pos = read_pos(node.mount, "db")
        filler = small / "filler"
        fill_disk(filler)
        with pytest.raises(sqlite3.OperationalError):
            c.execute("BEGIN")
            for i in range(200):
                c.execute("INSERT INTO t VALUES(?)", ("x" * 4000,))
            c.execute("COMMIT")
        try:
            c.execute("ROLLBACK")
        except sqlite3.OperationalError:
            pass
        os.unlink(filler)
        c.close()
        c = connect(node.path("db"), "delete")
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert [r[0] for r in c.execute("SELECT v FROM t")] == ["before"]
        assert read_pos(node.mount, "db") == pos
        c.execute("INSERT INTO t VALUES('after')")
        assert read_pos(node.mount, "db")[0] == pos[0] + 1
        c.close()
        verify_database(node, "db")
        node.stop()


def test_full_disk_wal_queued_ltx(make_node, tmp_path):
    """WAL mode writes a small commit's LTX file after replying to SQLite (the WAL is the
    durable record), once a few have gathered. When that file cannot be written, the
    commits SQLite reported stay, later writes fail with a disk-full error, and once
    space is back the files are written in order and writes work again."""
    with small_disk_node(make_node, tmp_path) as (node, small):
        c = connect(node.path("db"), "wal")
        c.execute("CREATE TABLE t(v)")
        for i in range(40):  # grow the WAL, so that later frames reuse its blocks
            c.execute("INSERT INTO t VALUES(?)", ("x" * 3000,))
        c.execute("PRAGMA wal_checkpoint(PASSIVE)")
        c.execute("INSERT INTO t VALUES('restart')")  # the WAL starts over at its head
        # reading -pos writes the queue, so the first commit below starts a new
        # gathering instead of meeting an older file's failed write
        read_pos(node.mount, "db")
        filler = small / "filler"
        fill_disk(filler)
        outcome = []
        for i in range(60):
            try:
                c.execute("INSERT INTO t VALUES(?)", ("during-%d" % i,))
                outcome.append(True)
            except sqlite3.OperationalError as e:
                assert "full" in str(e) or "disk" in str(e) or "I/O" in str(e), e
                outcome.append(False)
        acked = ["during-%d" % i for i, ok in enumerate(outcome) if ok]
        # the first commits gather in the queue (group commit: up to 32, plus those
        # acknowledged while the failing write runs); once that write has failed,
        # every later write fails: the outcome is an acknowledged prefix, then
        # failures only
        assert acked, "the first commit should reuse WAL blocks and be queued"
        assert outcome == [True] * len(acked) + [False] * (60 - len(acked)), outcome
        assert len(acked) < 50, "writes went on although an LTX file could not be written"
        assert "cannot write the LTX file of a commit" in node.read_log()
        os.unlink(filler)
        c.execute("INSERT INTO t VALUES('after')")
        have = [r[0] for r in c.execute("SELECT v FROM t WHERE v NOT LIKE 'xx%'")]
        assert have == ["restart"] + acked + ["after"]
        c.close()
        verify_database(node, "db")
        node.stop()


def test_subprocess_exit_code_and_unmount(make_node):
    node = make_node()
    node.start(args=["--", "sh", "-c", "test -d %s && exit 7" % node.mount], wait=False)
    node.wait_exit(7)
    wait_for(lambda: not is_mounted(node.mount), what="unmount after subprocess exit")


def test_retention_prunes_old_files_but_never_the_newest(make_node):
    node = make_node(extra_config="")
    cfg = open(node.config).read().replace(
        "  compress: true\n",
        "  compress: true\n  retention: 1s\n  retention-monitor-interval: 100ms\n")
    open(node.config, "w").write(cfg)
    node.start()
    c = connect(node.path("db"), "wal")
    c.execute("CREATE TABLE t(x)")
    for i in range(20):
        c.execute("INSERT INTO t VALUES(?)", (i,))
    txid = read_pos(node.mount, "db")[0]
    wait_for(lambda: len(ltx_files(node.dbdir("db"))) == 1, timeout=15,
             what="retention to prune all but the newest LTX file")
    assert ltx_files(node.dbdir("db"))[0][0] == txid
    c.execute("INSERT INTO t VALUES('after')")
    c.close()
    assert read_pos(node.mount, "db")[0] == txid + 1


@pytest.mark.parametrize("body,needle", [
    ("fuse:\n  dir: /tmp/x\n  bogus: 1\ndata:\n  dir: /tmp/y\nlease:\n  type: static\n",
     "fuse.bogus"),
    ("data:\n  dir: /tmp/y\nlease:\n  type: static\n", "fuse.dir"),
    ("fuse:\n  dir: /tmp/x\ndata:\n  dir: /tmp/y\n  compress: maybe\nlease:\n  type: static\n",
     "data.compress"),
    ("fuse:\n  dir: /tmp/x\ndata:\n  dir: /tmp/y\nlease:\n  type: consul\n", "lease.type"),
])
def test_config_errors_exit_2_naming_key_and_file(tmp_path, body, needle):
    cfg = tmp_path / "bad.yml"
    cfg.write_text(body)
    p = cli("mount", "--config", str(cfg), timeout=30, check=2)
    assert needle in p.stderr and str(cfg) in p.stderr


def test_litefs_yml_found_in_working_directory_and_sigint(tmp_path):
    """A litefs.yml with LiteFS key names works unchanged, found without -config,
    with environment expansion; SIGINT unmounts cleanly."""
    mnt, data = tmp_path / "mnt", tmp_path / "data"
    (tmp_path / "litefs.yml").write_text(
        "fuse:\n  dir: \"${MNT}\"\n  allow-other: false\n"
        "data:\n  dir: \"$DATA\"\n  compress: true\n  retention: \"10m\"\n"
        "  retention-monitor-interval: \"1m\"\n"
        "exit-on-error: true\nhttp:\n  addr: \":20202\"\n"
        "lease:\n  type: \"static\"\n  candidate: ${PRIMARY == \"yes\"}\n"
        "  hostname: \"node1\"\n  advertise-url: \"http://node1:20202\"\n"
        "log:\n  format: \"json\"\n")
    env = dict(os.environ, MNT=str(mnt), DATA=str(data), PRIMARY="yes")
    p = subprocess.Popen([LTXFS, "mount"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: is_mounted(str(mnt)) or p.poll() is not None, timeout=30,
                 what="mount")
        assert is_mounted(str(mnt)), p.stdout.read()
        c = connect(str(mnt / "db"), "wal")
        c.execute("CREATE TABLE t(x)")
        c.close()
        p.send_signal(signal.SIGINT)
        rc = p.wait(30)
        out = p.stdout.read()
        check_exit("ltxfs (litefs.yml in the working directory)", rc, 0, out, sanitized=True)
        assert '"level":"INFO"' in out  # log.format: json
        assert not is_mounted(str(mnt))
        assert os.path.isdir(data / "dbs" / "db" / "ltx")
    finally:
        if p.poll() is None:  # the test failed before its check: not a stop
            p.kill()
            p.wait()
        if is_mounted(str(mnt)):
            subprocess.call(["umount", "-l", str(mnt)])


def test_sigterm_with_a_file_held_open_still_shuts_down(make_node):
    """A process that keeps a database open cannot hold shutdown forever: after a
    grace period the FUSE connection is aborted, the store closes cleanly, and
    the next start finds everything consistent."""
    node = make_node().start()
    c = connect(node.path("db"), "wal")
    c.execute("CREATE TABLE t(x)")
    c.execute("INSERT INTO t VALUES(1)")
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sqlite3, sys, time\n"
                               "c = sqlite3.connect(%r)\n"
                               "print(c.execute('SELECT * FROM t').fetchall(), flush=True)\n"
                               "time.sleep(120)\n" % node.path("db")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "[(1,)]"  # it has the database open
        node.terminate(timeout=40)
        assert "aborting the FUSE connection" in node.read_log()
    finally:
        holder.kill()  # the reader, killed on purpose once it has done its part
        holder.wait()
        c.close()
    if is_mounted(node.mount):
        subprocess.call(["umount", "-l", node.mount])
    node.start()
    c = connect(node.path("db"), "wal")
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    c.close()
    verify_database(node, "db")
