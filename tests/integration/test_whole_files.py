"""Files written whole rather than through SQLite, on a primary with a replica:
cp, shutil.copy, install, truncate, rename(2), unlink of an open database,
hard links, plain files (docs/architecture.md section 11)."""
import errno
import os
import shutil
import signal
import sqlite3
import subprocess
import sys

import pytest

from conftest import MODES, connect, wait_for
from ltxcheck import read_pos, verify_database
from test_replication import assert_same, cluster


def make_seed(path, rows=300, mode="delete", page_size=4096):
    if os.path.exists(path):
        os.unlink(path)
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA page_size=%d" % page_size)
    c.execute("PRAGMA journal_mode=%s" % mode)
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    c.execute("BEGIN")
    for i in range(rows):
        c.execute("INSERT INTO t VALUES(?, ?)", (i, "row%06d" % i * 10))
    c.execute("COMMIT")
    if mode == "wal":
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    return path


def rows(path):
    c = sqlite3.connect(path, timeout=10)
    try:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return c.execute("SELECT count(*), sum(id) FROM t").fetchone()
    finally:
        c.close()


def names(node):
    return sorted(os.listdir(node.mount))


def test_cp_new_and_over_existing_database_replicates(make_node, tmp_path):
    p, (r,) = cluster(make_node, 1)
    seed = make_seed(str(tmp_path / "seed.db"), rows=300)
    subprocess.run(["cp", seed, p.path("app.db")], check=True)
    assert rows(p.path("app.db")) == (300, sum(range(300)))
    assert "app.db-pos" in names(p)
    assert_same(p, r, "app.db")
    verify_database(p, "app.db")
    # over an existing database, with a connection open on it
    c = connect(p.path("app.db"), "delete")
    assert c.execute("SELECT count(*) FROM t").fetchone() == (300,)
    seed2 = make_seed(str(tmp_path / "seed2.db"), rows=1000)
    shutil.copy(seed2, p.path("app.db"))
    assert c.execute("SELECT count(*) FROM t").fetchone() == (1000,)
    c.execute("INSERT INTO t VALUES(5000, 'after')")  # and it still writes
    c.close()
    assert rows(p.path("app.db")) == (1001, sum(range(1000)) + 5000)
    assert_same(p, r, "app.db")
    assert rows(r.path("app.db")) == (1001, sum(range(1000)) + 5000)


@pytest.mark.parametrize("mode", MODES)
def test_copy_over_database_seen_by_open_connections(make_node, tmp_path, mode):
    p, (r,) = cluster(make_node, 1)
    c = connect(p.path("db"), mode)
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    c.execute("INSERT INTO t VALUES(1, 'old')")
    assert_same(p, r)
    rc = sqlite3.connect(r.path("db"), timeout=10)
    assert rc.execute("SELECT count(*) FROM t").fetchone() == (1,)
    seed = make_seed(str(tmp_path / "seed.db"), rows=50, mode=mode)
    with open(seed, "rb") as src, open(p.path("db"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert c.execute("SELECT count(*) FROM t").fetchone() == (50,)
    assert_same(p, r)
    assert rc.execute("SELECT count(*) FROM t").fetchone() == (50,)
    rc.close()
    c.close()


def test_truncated_copy_refused_and_nothing_left(make_node, tmp_path):
    p, (r,) = cluster(make_node, 1)
    seed = make_seed(str(tmp_path / "seed.db"), rows=2000)
    half = str(tmp_path / "half.db")
    with open(seed, "rb") as f:
        data = f.read()
    with open(half, "wb") as f:
        f.write(data[: len(data) // 2 + 100])
    # a new name: refused, and no app.db, no app.db-pos
    out = subprocess.run(["cp", half, p.path("app.db")], capture_output=True, text=True)
    assert out.returncode != 0 and "Invalid argument" in out.stderr, out.stderr
    assert "app.db" not in names(p) and "app.db-pos" not in names(p)
    assert not os.path.exists(p.path("app.db"))
    assert "refused the write of 'app.db'" in p.read_log()
    # an existing database: refused, the old one intact, nothing committed
    subprocess.run(["cp", seed, p.path("app.db")], check=True)
    before = read_pos(p.mount, "app.db")
    out = subprocess.run(["cp", half, p.path("app.db")], capture_output=True, text=True)
    assert out.returncode != 0
    assert read_pos(p.mount, "app.db") == before
    assert rows(p.path("app.db")) == (2000, sum(range(2000)))
    # truncate(1) and a non-SQLite file over a database: refused too
    assert subprocess.run(["truncate", "-s", "10000", p.path("app.db")]).returncode != 0
    with pytest.raises(OSError) as e:
        with open(p.path("app.db"), "w") as f:
            f.write("not a database\n")
    assert e.value.errno == errno.EINVAL
    assert read_pos(p.mount, "app.db") == before
    assert rows(p.path("app.db")) == (2000, sum(range(2000)))
    assert_same(p, r, "app.db")


def test_writer_killed_half_way_keeps_old_database(make_node, tmp_path):
    p, (r,) = cluster(make_node, 1)
    seed = make_seed(str(tmp_path / "seed.db"), rows=500)
    shutil.copy(seed, p.path("db"))
    before = read_pos(p.mount, "db")
    big = make_seed(str(tmp_path / "big.db"), rows=20000)
    # a writer that has written half of the new file when it is killed
    code = ("import os, sys, signal\n"
            "d = open(sys.argv[1], 'rb').read()\n"
            "f = open(sys.argv[2], 'wb')\n"
            "f.write(d[:len(d)//2]); f.flush()\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    pr = subprocess.run([sys.executable, "-c", code, big, p.path("db")])
    assert pr.returncode == -signal.SIGKILL
    assert read_pos(p.mount, "db") == before
    assert rows(p.path("db")) == (500, sum(range(500)))
    assert_same(p, r)


def test_install_and_dd_and_vacuum_into_and_backup(make_node, tmp_path):
    p, (r,) = cluster(make_node, 1)
    seed = make_seed(str(tmp_path / "seed.db"), rows=100)
    out = subprocess.run(["install", "-m", "0644", seed, p.path("inst.db")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + p.read_log()[-3000:]
    subprocess.run(["dd", "if=" + seed, "of=" + p.path("dd.db"), "bs=1000", "status=none"],
                   check=True)
    c = connect(p.path("src.db"), "wal")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    c.executemany("INSERT INTO t VALUES(?, ?)", [(i, "v") for i in range(77)])
    c.execute("VACUUM INTO ?", (p.path("vac.db"),))
    c.close()
    subprocess.run(["sqlite3", p.path("src.db"), ".backup '%s'" % p.path("bak.db")], check=True)
    for name, n in [("inst.db", 100), ("dd.db", 100), ("vac.db", 77), ("bak.db", 77)]:
        assert rows(p.path(name))[0] == n, name
        assert_same(p, r, name)
        assert rows(r.path(name))[0] == n, name


def test_page_size_change_by_copy(make_node, tmp_path):
    p, (r,) = cluster(make_node, 1)
    shutil.copy(make_seed(str(tmp_path / "a.db"), rows=100, page_size=4096), p.path("db"))
    assert_same(p, r)
    shutil.copy(make_seed(str(tmp_path / "b.db"), rows=300, page_size=1024), p.path("db"))
    assert rows(p.path("db"))[0] == 300
    assert_same(p, r)
    c = sqlite3.connect(r.path("db"))
    assert c.execute("PRAGMA page_size").fetchone() == (1024,)
    c.close()


def test_rename_atomic_replace_and_rename_database(make_node, tmp_path):
    p, (r,) = cluster(make_node, 1)
    c = connect(p.path("app.db"), "delete")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    c.execute("INSERT INTO t VALUES(1, 'old')")
    assert_same(p, r, "app.db")
    # write a temporary file, then rename(2) it onto the database
    seed = make_seed(str(tmp_path / "seed.db"), rows=400)
    tmp = p.path(".app.db.tmp")
    shutil.copy(seed, tmp)
    assert ".app.db.tmp" in names(p) and ".app.db.tmp-pos" not in names(p)
    os.replace(tmp, p.path("app.db"))
    assert not os.path.exists(tmp)
    assert c.execute("SELECT count(*) FROM t").fetchone() == (400,)
    c.close()
    assert rows(p.path("app.db"))[0] == 400
    assert_same(p, r, "app.db")
    # rename a database: it moves, on the replica too
    os.rename(p.path("app.db"), p.path("moved.db"))
    assert not os.path.exists(p.path("app.db"))
    assert rows(p.path("moved.db"))[0] == 400
    assert_same(p, r, "moved.db")
    wait_for(lambda: not os.path.exists(r.path("app.db")), what="app.db gone on the replica")
    # onto an existing database
    shutil.copy(make_seed(str(tmp_path / "other.db"), rows=10), p.path("other.db"))
    os.rename(p.path("other.db"), p.path("moved.db"))
    assert rows(p.path("moved.db"))[0] == 10
    assert not os.path.exists(p.path("other.db"))
    assert_same(p, r, "moved.db")
    # companions are never renamed; hard links are refused
    with pytest.raises(OSError) as e:
        os.link(p.path("moved.db"), p.path("link.db"))
    assert e.value.errno == errno.EPERM
    assert "hard link 'link.db' refused" in p.read_log()


def test_rsync_style_temp_file_then_rename(make_node, tmp_path):
    """rsync's pattern: mkstemp(".app.db.XXXXXX") (O_RDWR|O_CREAT|O_EXCL), write, rename."""
    import tempfile
    p, (r,) = cluster(make_node, 1)
    seed = make_seed(str(tmp_path / "seed.db"), rows=123)
    for n in (123, 7):
        seed = make_seed(str(tmp_path / "seed.db"), rows=n)
        fd, tmp = tempfile.mkstemp(dir=p.mount, prefix=".app.db.")
        with open(seed, "rb") as f:
            os.write(fd, f.read())
        os.close(fd)
        os.rename(tmp, p.path("app.db"))
        assert rows(p.path("app.db"))[0] == n
        assert_same(p, r, "app.db")
        assert not [x for x in names(p) if x.startswith(".app.db.")]


def test_unlink_database_while_open(make_node):
    p, (r,) = cluster(make_node, 1)
    c = connect(p.path("db"), "delete")
    c.execute("CREATE TABLE t(x)")
    c.execute("INSERT INTO t VALUES(1)")
    assert_same(p, r)
    rc = sqlite3.connect(r.path("db"), timeout=10)
    assert rc.execute("SELECT count(*) FROM t").fetchone() == (1,)
    os.unlink(p.path("db"))
    assert "db" not in names(p)
    # the connection that had it open still reads what it had, as on a local file system
    assert c.execute("SELECT count(*) FROM t").fetchone() == (1,)
    wait_for(lambda: not os.path.exists(r.path("db")), what="the drop on the replica")
    assert rc.execute("SELECT count(*) FROM t").fetchone() == (1,)
    c.close()
    rc.close()
    # and the name can be used again
    c = connect(p.path("db"), "delete")
    c.execute("CREATE TABLE u(y)")
    c.execute("INSERT INTO u VALUES(2)")
    c.close()
    assert_same(p, r)


def test_plain_files(make_node):
    p, (r,) = cluster(make_node, 1)
    subprocess.run("echo hello > '%s'" % p.path("notes.txt"), shell=True, check=True)
    assert open(p.path("notes.txt")).read() == "hello\n"
    subprocess.run("echo more >> '%s'" % p.path("notes.txt"), shell=True, check=True)
    assert open(p.path("notes.txt")).read() == "hello\nmore\n"
    assert "notes.txt" in names(p) and "notes.txt-pos" not in names(p)
    with open(p.path(".helper.tcl"), "w") as f:
        f.write("puts hi\n")
    os.rename(p.path(".helper.tcl"), p.path("helper.tcl"))
    assert open(p.path("helper.tcl")).read() == "puts hi\n"
    os.truncate(p.path("helper.tcl"), 3)
    assert open(p.path("helper.tcl")).read() == "put"
    open(p.path("empty"), "w").close()
    assert os.path.getsize(p.path("empty")) == 0
    # kept in the data directory, local to the node: never replicated
    assert open(os.path.join(p.data, "files", "notes.txt")).read() == "hello\nmore\n"
    c = connect(p.path("db"), "delete")
    c.execute("CREATE TABLE t(x)")
    c.close()
    assert_same(p, r)
    assert not os.path.exists(r.path("notes.txt"))
    # a replica refuses them as it refuses every write
    with pytest.raises(OSError):
        open(r.path("x.txt"), "w")
    os.unlink(p.path("notes.txt"))
    assert "notes.txt" not in names(p)
    # they survive a restart
    p.stop()
    p.start()
    assert open(p.path("helper.tcl")).read() == "put"


def test_touch_then_sqlite_makes_a_database(make_node):
    p, (r,) = cluster(make_node, 1)
    subprocess.run(["touch", p.path("app.db")], check=True)
    assert os.path.getsize(p.path("app.db")) == 0
    c = connect(p.path("app.db"), "wal")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    c.execute("INSERT INTO t VALUES(1, 'x')")
    c.close()
    assert "app.db-pos" in names(p)
    assert_same(p, r, "app.db")
    assert not os.path.exists(os.path.join(p.data, "files", "app.db"))


@pytest.mark.parametrize("mode", MODES)
def test_rename_onto_database_open_in_each_mode(make_node, tmp_path, mode):
    """The atomic-replace idiom while a connection has the target open (in WAL mode its
    -shm is open, so the rename takes the WAL locks with the directory locked)."""
    p, (r,) = cluster(make_node, 1)
    c = connect(p.path("app.db"), mode)
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    c.execute("INSERT INTO t VALUES(1, 'old')")
    assert c.execute("SELECT count(*) FROM t").fetchone() == (1,)
    seed = make_seed(str(tmp_path / "seed.db"), rows=64, mode=mode)
    shutil.copy(seed, p.path("incoming.tmp"))
    os.replace(p.path("incoming.tmp"), p.path("app.db"))
    assert c.execute("SELECT count(*) FROM t").fetchone() == (64,)
    c.execute("INSERT INTO t VALUES(1000, 'new')")
    c.close()
    assert rows(p.path("app.db")) == (65, sum(range(64)) + 1000)
    assert_same(p, r, "app.db")
    assert rows(r.path("app.db")) == (65, sum(range(64)) + 1000)
