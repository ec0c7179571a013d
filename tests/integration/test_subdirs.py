"""Directories in the mount (src/edge/fusefs_dir.c): mkdir -p, rmdir, databases at any
depth, listing, renames within the mount; all on a primary with a replica."""
import errno
import os
import shutil
import sqlite3
import subprocess

import pytest

from conftest import MODES, connect, dbdir, wait_for
from helpers import http, require
from test_replication import assert_same, cluster
from test_whole_files import make_seed, rows


def fill(path, mode, n=50, start=0):
    c = connect(path, mode)
    c.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)")
    c.execute("BEGIN")
    for i in range(start, start + n):
        c.execute("INSERT INTO t VALUES(?, ?)", (i, "v%05d" % i))
    c.execute("COMMIT")
    c.close()


def gone_on(node, name, timeout=20):
    wait_for(lambda: not os.path.exists(node.path(name)), timeout=timeout,
             what="%s to drop %s" % (node.name, name))


@pytest.mark.parametrize("mode", MODES)
def test_nested_database_replicates(make_node, mode):
    p, (r,) = cluster(make_node, 1)
    os.makedirs(p.path("tenants/42"))
    assert [n for n in os.listdir(p.mount) if n[0] != "."] == ["tenants"]
    fill(p.path("tenants/42/app.db"), mode, n=200)
    assert rows(p.path("tenants/42/app.db")) == (200, sum(range(200)))
    assert "app.db" in os.listdir(p.path("tenants/42"))
    assert "app.db-pos" in os.listdir(p.path("tenants/42"))
    assert "tenants" in os.listdir(p.mount) and "app.db" not in os.listdir(p.mount)
    assert_same(p, r, "tenants/42/app.db")
    # the replica shows the directories that hold databases
    assert os.path.isdir(r.path("tenants/42"))
    assert "app.db" in os.listdir(r.path("tenants/42"))
    assert rows(r.path("tenants/42/app.db")) == (200, sum(range(200)))
    # the data directory: one escaped component under dbs/ (LiteFS's layout for root names)
    assert os.path.isdir(os.path.join(p.data, "dbs", "tenants%2F42%2Fapp.db", "ltx"))
    assert os.path.isdir(dbdir(r.data, "tenants/42/app.db"))
    # the HTTP API takes the path as the name
    info = http(p.url + "/info").json()
    assert "tenants/42/app.db" in str(info)


def test_replica_started_later_gets_nested_databases(make_node):
    p = make_node("primary").start()
    for d in ("a", "a/b", "a/b/c"):
        os.makedirs(p.path(d), exist_ok=True)
        fill(p.path(d + "/x.db"), "wal", n=20)
    r = make_node("replica0", replica_of=p).start()
    for d in ("a", "a/b", "a/b/c"):
        assert_same(p, r, d + "/x.db")
    assert sorted(os.listdir(r.path("a"))) == ["b", "x.db", "x.db-pos", "x.db-shm", "x.db-wal"] \
        or sorted(os.listdir(r.path("a")))[:3] == ["b", "x.db", "x.db-pos"]
    # a restart reopens them from the data directory
    p.stop()
    p.start()
    assert rows(p.path("a/b/c/x.db")) == (20, sum(range(20)))
    fill(p.path("a/b/c/x.db"), "wal", n=5, start=100)
    assert_same(p, r, "a/b/c/x.db")


def test_special_files_stay_at_the_root(make_node):
    p, (r,) = cluster(make_node, 1)
    os.mkdir(p.path("sub"))
    assert not os.path.exists(p.path("sub/.primary"))
    assert not os.path.exists(p.path("sub/.lag"))
    fill(p.path("sub/app.db"), "delete", n=3)
    assert_same(p, r, "sub/app.db")
    assert os.path.exists(r.path(".primary")) and os.path.exists(r.path(".lag"))
    assert not os.path.exists(r.path("sub/.primary"))
    # a file in a subdirectory may be called .primary: it is a plain file there
    with open(p.path("sub/.primary"), "w") as f:
        f.write("mine")
    assert open(p.path("sub/.primary")).read() == "mine"
    with pytest.raises(OSError) as e:
        os.mkdir(p.path(".primary"))
    assert e.value.errno == errno.EEXIST


def test_rmdir_and_unlink(make_node):
    p, (r,) = cluster(make_node, 1)
    os.makedirs(p.path("x/y"))
    fill(p.path("x/y/app.db"), "delete", n=3)
    with pytest.raises(OSError) as e:
        os.rmdir(p.path("x/y"))
    assert e.value.errno == errno.ENOTEMPTY
    with open(p.path("x/notes.txt"), "w") as f:
        f.write("hello")
    with pytest.raises(OSError) as e:
        os.rmdir(p.path("x"))
    assert e.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError) as e:
        os.unlink(p.path("x/y"))
    assert e.value.errno in (errno.EISDIR, errno.EPERM)
    assert_same(p, r, "x/y/app.db")
    os.unlink(p.path("x/y/app.db"))
    gone_on(r, "x/y/app.db")
    os.unlink(p.path("x/notes.txt"))
    os.rmdir(p.path("x/y"))
    os.rmdir(p.path("x"))
    assert [n for n in os.listdir(p.mount) if n[0] != "."] == []
    # mkdir over a database name is refused
    fill(p.path("app.db"), "delete", n=1)
    with pytest.raises(OSError) as e:
        os.mkdir(p.path("app.db"))
    assert e.value.errno == errno.EEXIST
    # shutil.rmtree of a whole tree with databases in it
    os.makedirs(p.path("t/u"))
    fill(p.path("t/u/a.db"), "wal", n=3)
    fill(p.path("t/b.db"), "delete", n=3)
    assert_same(p, r, "t/u/a.db")
    shutil.rmtree(p.path("t"))
    assert not os.path.exists(p.path("t"))
    gone_on(r, "t/u/a.db")
    gone_on(r, "t/b.db")


def test_replica_refuses_directory_changes(make_node):
    p, (r,) = cluster(make_node, 1)
    os.mkdir(p.path("d"))
    fill(p.path("d/app.db"), "delete", n=1)
    assert_same(p, r, "d/app.db")
    for op in (lambda: os.mkdir(r.path("new")), lambda: os.rmdir(r.path("d")),
               lambda: os.rename(r.path("d"), r.path("e"))):
        with pytest.raises(OSError) as e:
            op()
        assert e.value.errno in (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOTEMPTY)
    assert os.path.isdir(r.path("d"))
    c = sqlite3.connect(r.path("d/app.db"))
    with pytest.raises(sqlite3.OperationalError):
        c.execute("INSERT INTO t VALUES(1000, 'x')")
    c.close()


def test_renames_across_directories(make_node, tmp_path):
    p, (r,) = cluster(make_node, 1)
    os.makedirs(p.path("in"))
    os.makedirs(p.path("out/deep"))
    fill(p.path("app.db"), "delete", n=30)
    # a database moved into a directory, then across directories
    os.rename(p.path("app.db"), p.path("in/app.db"))
    assert rows(p.path("in/app.db")) == (30, sum(range(30)))
    assert not os.path.exists(p.path("app.db"))
    assert_same(p, r, "in/app.db")
    gone_on(r, "app.db")
    os.rename(p.path("in/app.db"), p.path("out/deep/moved.db"))
    assert_same(p, r, "out/deep/moved.db")
    gone_on(r, "in/app.db")
    # rsync's idiom inside a directory: a temp file renamed over the database
    seed = make_seed(str(tmp_path / "seed.db"), rows=77)
    subprocess.run([require("rsync"), seed, p.path("out/deep/moved.db")], check=True)
    assert rows(p.path("out/deep/moved.db")) == (77, sum(range(77)))
    assert_same(p, r, "out/deep/moved.db")
    # a directory of plain files renames in place
    os.makedirs(p.path("docs"))
    with open(p.path("docs/a.txt"), "w") as f:
        f.write("A")
    os.rename(p.path("docs"), p.path("papers"))
    assert open(p.path("papers/a.txt")).read() == "A"
    assert not os.path.exists(p.path("docs"))
    # a directory holding databases (and a plain file), with mv and with rename(2)
    with open(p.path("out/notes.txt"), "w") as f:
        f.write("N")
    c = connect(p.path("out/deep/moved.db"), "delete")  # a reader holding it open
    assert c.execute("SELECT count(*) FROM t").fetchone() == (77,)
    subprocess.run(["mv", p.path("out"), p.path("archive")], check=True)
    c.close()
    assert open(p.path("archive/notes.txt")).read() == "N"
    assert not os.path.exists(p.path("out"))
    assert rows(p.path("archive/deep/moved.db")) == (77, sum(range(77)))
    assert_same(p, r, "archive/deep/moved.db")
    gone_on(r, "out/deep/moved.db")
    # and the moved database takes writes
    fill(p.path("archive/deep/moved.db"), "delete", n=3, start=1000)
    assert_same(p, r, "archive/deep/moved.db")
    os.rename(p.path("archive"), p.path("in/archive"))  # below another directory
    assert rows(p.path("in/archive/deep/moved.db")) == (80, sum(range(77)) + 3003)
    assert_same(p, r, "in/archive/deep/moved.db")
    gone_on(r, "archive/deep/moved.db")
    assert sorted(n for n in os.listdir(p.mount) if n[0] != ".") == ["in", "papers"]


def test_cp_tree_into_mount(make_node, tmp_path):
    """cp -r of a directory tree with databases and other files (a restore from a
    backup folder): every database replicates, plain files stay local."""
    src = tmp_path / "tree"
    (src / "eu" / "fr").mkdir(parents=True)
    make_seed(str(src / "eu" / "fr" / "paris.db"), rows=40)
    make_seed(str(src / "eu" / "berlin.db"), rows=41, mode="wal")
    (src / "eu" / "README").write_text("tenants\n")
    p, (r,) = cluster(make_node, 1)
    subprocess.run(["cp", "-r", str(src), p.path("tree")], check=True)
    assert rows(p.path("tree/eu/fr/paris.db")) == (40, sum(range(40)))
    assert rows(p.path("tree/eu/berlin.db")) == (41, sum(range(41)))
    assert open(p.path("tree/eu/README")).read() == "tenants\n"
    assert_same(p, r, "tree/eu/fr/paris.db")
    assert_same(p, r, "tree/eu/berlin.db")
    assert not os.path.exists(r.path("tree/eu/README"))
    out = subprocess.run(["sqlite3", p.path("tree/eu/fr/paris.db"), "SELECT count(*) FROM t"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "40"


def test_http_names_are_paths_and_cannot_escape(make_node, tmp_path):
    """The HTTP API takes a database's path; a name that could leave the data
    directory is refused before anything is written."""
    import urllib.parse
    p, (r,) = cluster(make_node, 1)
    seed = open(make_seed(str(tmp_path / "seed.db"), rows=12), "rb").read()
    for bad in ("../evil.db", "a/../b.db", "/abs.db", "a//b.db", "a/./b.db", "x/", ".."):
        q = urllib.parse.quote(bad, safe="")
        resp = http(p.url + "/import?name=" + q, "POST", seed)
        assert resp.status == 400, (bad, resp)
        assert http(p.url + "/export?name=" + q).status == 400, bad
    assert not os.path.exists(os.path.join(p.data, "evil.db"))
    assert not os.path.exists(os.path.join(p.base, "evil.db"))
    resp = http(p.url + "/import?name=" + urllib.parse.quote("imported/x.db", safe=""),
                "POST", seed)
    assert resp.status == 200, resp
    assert rows(p.path("imported/x.db")) == (12, sum(range(12)))
    assert_same(p, r, "imported/x.db")
    got = http(r.url + "/export?name=imported%2Fx.db")
    assert got.status == 200 and got.body[:16] == b"SQLite format 3\x00"


def test_rsync_tree_then_update_then_rm_rf(make_node, tmp_path):
    """rsync -a of a tree (temp files, renames, times and modes on directories), an
    incremental rsync after the source changed, find, then rm -rf."""
    src = tmp_path / "tree"
    (src / "a" / "b").mkdir(parents=True)
    make_seed(str(src / "a" / "b" / "one.db"), rows=10)
    make_seed(str(src / "a" / "two.db"), rows=20, mode="wal")
    (src / "a" / "b" / "note.txt").write_text("n\n")
    p, (r,) = cluster(make_node, 1)
    rsync = require("rsync")
    subprocess.run([rsync, "-a", str(src) + "/", p.path("tree") + "/"], check=True)
    assert rows(p.path("tree/a/b/one.db")) == (10, sum(range(10)))
    assert rows(p.path("tree/a/two.db")) == (20, sum(range(20)))
    assert_same(p, r, "tree/a/b/one.db")
    assert_same(p, r, "tree/a/two.db")
    found = subprocess.run(["find", p.path("tree"), "-name", "*.db"], capture_output=True,
                           text=True, check=True).stdout.split()
    assert sorted(os.path.relpath(f, p.mount) for f in found) == \
        ["tree/a/b/one.db", "tree/a/two.db"]
    make_seed(str(src / "a" / "b" / "one.db"), rows=99)
    subprocess.run([rsync, "-a", str(src) + "/", p.path("tree") + "/"], check=True)
    assert rows(p.path("tree/a/b/one.db")) == (99, sum(range(99)))
    assert_same(p, r, "tree/a/b/one.db")
    assert rows(r.path("tree/a/b/one.db")) == (99, sum(range(99)))
    subprocess.run(["rm", "-rf", p.path("tree")], check=True)
    assert not os.path.exists(p.path("tree"))
    gone_on(r, "tree/a/b/one.db")
    gone_on(r, "tree/a/two.db")


def test_directory_belongs_to_its_maker(make_node, tmp_path):
    """With allow-other, a user's mkdir makes a directory that user can write in."""
    p = make_node("primary", fuse_extra="  allow-other: true\n").start()
    d = p.base
    while d != "/tmp" and d != "/":  # let uid 65534 reach the mount (traverse only)
        os.chmod(d, os.stat(d).st_mode | 0o711)
        d = os.path.dirname(d)
    subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                    "mkdir", "-p", p.path("nobody/deeper")], check=True)
    st = os.stat(p.path("nobody/deeper"))
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                    "sh", "-c", "echo hi > %s" % p.path("nobody/deeper/f.txt")], check=True)
    assert open(p.path("nobody/deeper/f.txt")).read() == "hi\n"
