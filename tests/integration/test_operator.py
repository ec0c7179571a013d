"""The operator surface: CLI commands, HTTP endpoints, the token, events,
metrics, health, import/export, exec supervision. Real nodes, real mounts."""
import json
import os
import pty
import select
import signal
import sqlite3
import subprocess
import threading
import time

import pytest

from conftest import is_mounted, wait_for
from helpers import LTXFS, OPENER, check_exit, cli, http, require


def _up(url):
    try:
        return http(url + "/health").status == 200
    except OSError:
        return False


def make_db(path, rows=100, page_size=4096):
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA page_size=%d" % page_size)
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    c.execute("BEGIN")
    for i in range(rows):
        c.execute("INSERT INTO t(v) VALUES(?)", ("row%06d" % i,))
    c.execute("COMMIT")
    c.close()


def count(path):
    c = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=10)
    try:
        return c.execute("SELECT count(*) FROM t").fetchone()[0]
    finally:
        c.close()


@pytest.fixture
def pair(make_node):
    p = make_node("p").start()
    r = make_node("r", replica_of=p).start()
    return p, r


# ----------------------------------------------------------- import/export

def test_import_export_round_trip(pair, tmp_path):
    p, r = pair
    src = str(tmp_path / "src.db")
    make_db(src, 500)
    # an existing database with an open connection sees the new content
    c = sqlite3.connect(p.path("app.db"), isolation_level=None)
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    c.execute("INSERT INTO t(v) VALUES('old')")
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    out = cli("import", "-name", "app.db", "-url", p.url, src, check=0)
    assert "imported" in out.stdout and out.stderr == ""  # no progress bar off a TTY
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 500
    c.close()
    wait_for(lambda: r.pos("app.db") == p.pos("app.db"), what="replication of the import")
    assert count(r.path("app.db")) == 500
    dst = str(tmp_path / "out" / "copy.db")
    os.makedirs(os.path.dirname(dst))
    cli("export", "-name", "app.db", "-url", r.url, dst, check=0)
    assert count(dst) == 500
    assert sqlite3.connect(dst).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert not [f for f in os.listdir(os.path.dirname(dst)) if ".tmp" in f]
    # a new database created by import
    cli("import", "-name", "fresh.db", "-url", p.url, src, check=0)
    assert count(p.path("fresh.db")) == 500


def test_export_of_a_wal_database_is_a_standalone_file(pair, tmp_path):
    p, r = pair
    c = sqlite3.connect(p.path("w.db"), isolation_level=None)
    c.execute("PRAGMA journal_mode=wal")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(50):
        c.execute("INSERT INTO t(v) VALUES('x')")
    dst = str(tmp_path / "w.db")
    cli("export", "-name", "w.db", "-url", p.url, dst, check=0)
    c.close()
    assert count(dst) == 50
    assert not os.path.exists(dst + "-wal")


def test_import_refuses_bad_input(pair, tmp_path):
    p, r = pair
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 200)
    out = cli("import", "-name", "x.db", "-url", p.url, str(junk), check=1)
    assert "not a SQLite database" in out.stderr or "file is not a database" in out.stderr
    assert not os.path.exists(p.path("x.db"))
    # a corrupt SQLite file: damage a b-tree page
    bad = str(tmp_path / "bad.db")
    make_db(bad, 2000)
    with open(bad, "r+b") as f:
        f.seek(4096 * 3 + 100)
        f.write(b"\xff" * 300)
    out = cli("import", "-name", "x.db", "-url", p.url, bad, check=1)
    assert "integrity_check" in out.stderr or "malformed" in out.stderr, out.stderr
    assert not os.path.exists(p.path("x.db"))
    # a replica refuses to import
    good = str(tmp_path / "good.db")
    make_db(good, 10)
    out = cli("import", "-name", "x.db", "-url", r.url, good, check=1)
    assert "not the primary" in out.stderr
    # HTTP errors
    assert http(p.url + "/import?name=x.db", "POST", b"").status == 400
    assert http(p.url + "/import", "POST", open(good, "rb").read()).status == 400
    assert http(p.url + "/export?name=nope.db").status == 404
    assert http(p.url + "/export").status == 400
    assert http(p.url + "/import?name=x.db").status == 405
    # CLI usage errors
    assert cli("import", "-url", p.url, good).returncode == 2
    assert cli("export", "-name", "x").returncode == 2
    assert cli("import", "-bogus").returncode == 2
    out = cli("export", "-name", "nope.db", "-url", p.url, str(tmp_path / "n.db"), check=1)
    assert "no such database" in out.stderr


def test_progress_bar_only_on_a_tty(pair, tmp_path):
    p, r = pair
    src = str(tmp_path / "big.db")
    make_db(src, 20000)
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(LTXFS, [LTXFS, "import", "-name", "big.db", "-url", p.url, src])
    out = b""
    while True:
        try:
            rl, _, _ = select.select([fd], [], [], 30)
            if not rl:
                break
            d = os.read(fd, 4096)
        except OSError:
            break
        if not d:
            break
        out += d
    _, st = os.waitpid(pid, 0)
    text = out.decode("utf-8", "replace")
    check_exit("ltxfs import (on a terminal)", os.waitstatus_to_exitcode(st), 0, text,
               sanitized=True)
    assert b"upload" in out and b"%" in out, out
    q = cli("export", "-name", "big.db", "-url", p.url, str(tmp_path / "e.db"), check=0)
    assert "%" not in q.stderr and "download" not in q.stderr


# ------------------------------------------------------------------ status

def test_status_and_info(pair):
    p, r = pair
    c = sqlite3.connect(p.path("s.db"), isolation_level=None)
    c.execute("CREATE TABLE t(x)")
    c.close()
    wait_for(lambda: r.pos("s.db") == p.pos("s.db"))
    wait_for(lambda: json.loads(cli("status", "-url", p.url, "-json", check=0).stdout)
             ["replicas"], what="the replica in /info")
    out = cli("status", "-url", p.url, check=0).stdout
    assert "role       primary" in out and "s.db" in out and "REPLICA" in out
    assert "LAG" in out and "0 ms" in out
    assert json.loads(cli("status", "-url", p.url, "-json", check=0).stdout)["isPrimary"]
    out = cli("status", "-url", r.url, check=0).stdout
    assert "role       replica" in out and "primary    p" in out and "lag " in out
    i = json.loads(cli("status", "-url", r.url, "-json", check=0).stdout)
    assert i["role"] == "replica" and i["databases"][0]["name"] == "s.db"
    assert cli("status", "-url", "http://127.0.0.1:1").returncode == 1
    assert cli("status", "-x").returncode == 2
    assert cli("status", "-h").returncode == 0


# --------------------------------------------------------------------- ltx

def test_ltx_dump_and_verify(node):
    c = sqlite3.connect(node.path("l.db"), isolation_level=None)
    c.execute("CREATE TABLE t(x)")
    c.execute("INSERT INTO t VALUES(1)")
    c.close()
    ltxdir = os.path.join(node.dbdir("l.db"), "ltx")
    f = os.path.join(ltxdir, sorted(os.listdir(ltxdir))[-1])
    out = cli("ltx", "dump", f, check=0).stdout
    assert "page size:          4096" in out and "post-apply checksum" in out and "epoch" in out
    assert "ok (" in cli("ltx", "verify", f, check=0).stdout
    bad = f + ".bad"
    data = bytearray(open(f, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(bad, "wb").write(bytes(data))
    assert "does not verify" in cli("ltx", "verify", bad, check=1).stderr
    assert cli("ltx", "verify").returncode == 2
    assert cli("ltx", "frob", f).returncode == 2
    assert cli("ltx", "verify", "/nonexistent").returncode == 1


# --------------------------------------------------------------------- run

def test_run(pair, tmp_path):
    p, r = pair
    assert cli("run", "-url", p.url, "--", "sh", "-c", "exit 7").returncode == 7
    # a static replica is not a candidate: the command is skipped
    mark = tmp_path / "ran"
    q = cli("run", "-url", r.url, "-if-candidate", "--", "touch", str(mark), check=0)
    assert not mark.exists() and "not a candidate" in q.stderr
    cli("run", "-url", p.url, "-if-candidate", "--", "touch", str(mark), check=0)
    assert mark.exists()
    q = cli("run", "-url", r.url, "-promote", "--", "true", check=1)
    assert "static lease" in q.stderr
    assert cli("run", "-url", p.url).returncode == 2
    assert cli("run", "-zz", "--", "true").returncode == 2


# ---------------------------------------------------------- health/metrics

def test_health_and_metrics(pair):
    p, r = pair
    c = sqlite3.connect(p.path("m.db"), isolation_level=None)
    c.execute("CREATE TABLE t(x)")
    for i in range(5):
        c.execute("INSERT INTO t VALUES(?)", (i,))
    c.close()
    wait_for(lambda: r.pos("m.db") == p.pos("m.db"))
    r_ = http(p.url + "/health")
    assert r_.status == 200 and r_.json()["ok"]
    wait_for(lambda: http(r.url + "/health").status == 200, what="the replica to be healthy")
    assert http(r.url + "/health?maxLag=-5").status == 400
    p.stop()
    wait_for(lambda: http(r.url + "/health?maxLag=100").status == 503, timeout=15,
             what="the replica to report itself unhealthy without its primary")
    p.start()
    wait_for(lambda: _up(p.url), what="the restarted primary's HTTP server")
    m = http(p.url + "/metrics")
    assert m.status == 200 and m.headers["Content-Type"].startswith("text/plain")
    text = m.text
    for name in ("ltxfs_db_count", "ltxfs_is_primary 1", 'ltxfs_db_txid{db="m.db"}',
                 'ltxfs_db_commit_count{db="m.db"}', 'ltxfs_db_ltx_count{db="m.db"}',
                 "ltxfs_fuse_op_duration_seconds_bucket{op=\"write\",le=",
                 "ltxfs_stream_sent_bytes_total", "ltxfs_lease_renewals_total",
                 "ltxfs_snapshots_sent_total", "ltxfs_http_stream_count"):
        assert name in text, name
    rt = http(r.url + "/metrics").text
    assert "ltxfs_is_primary 0" in rt
    recv = [l for l in rt.splitlines() if l.startswith("ltxfs_stream_received_bytes_total")]
    assert recv and int(recv[0].split()[1]) > 0
    # every sample line is "name{labels} value" or "name value"
    for line in text.splitlines():
        if line and not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])


# ------------------------------------------------------------------ events

def test_events(pair):
    p, r = pair
    lines = []

    def reader(url, out, n):
        with OPENER.open(url + "/events", timeout=30) as resp:
            for raw in resp:
                if raw.strip():
                    out.append(json.loads(raw))
                if len(out) >= n:
                    return
    t = threading.Thread(target=reader, args=(p.url, lines, 3), daemon=True)
    t.start()
    wait_for(lambda: lines, what="the init event")
    assert lines[0] == {"type": "init", "data": {"isPrimary": True, "hostname": "p"}}
    c = sqlite3.connect(p.path("e.db"), isolation_level=None)
    c.execute("CREATE TABLE t(x)")
    wait_for(lambda: len(lines) >= 2, what="a tx event")
    c.execute("INSERT INTO t VALUES(1)")
    c.close()
    t.join(20)
    tx = [e for e in lines if e["type"] == "tx"]
    assert tx and tx[-1]["db"] == "e.db" and len(tx[-1]["data"]["txID"]) == 16
    assert tx[-1]["data"]["pageSize"] == 4096 and tx[-1]["data"]["timestamp"].endswith("Z")
    # a replica reports its primary going away and coming back (once it has applied
    # everything, so that no tx event of its own comes first)
    wait_for(lambda: r.pos("e.db") == p.pos("e.db"), what="the replica to catch up")
    rl = []
    t2 = threading.Thread(target=reader, args=(r.url, rl, 3), daemon=True)
    t2.start()
    wait_for(lambda: rl, what="the replica's init event")
    assert rl[0]["data"] == {"isPrimary": False, "hostname": "p"}
    p.stop()
    wait_for(lambda: len(rl) >= 2, timeout=15, what="primaryChange on the replica")
    assert rl[1]["type"] == "primaryChange" and rl[1]["data"] == {"isPrimary": False}
    p.start()
    t2.join(20)
    assert rl[2] == {"type": "primaryChange", "data": {"isPrimary": False, "hostname": "p"}}


# ------------------------------------------------------------------- token

def test_token(make_node, tmp_path):
    tok = "tok-" + "x" * 20
    p = make_node("p", extra_config="")
    r = make_node("r", replica_of=p)
    for n in (p, r):
        with open(n.config) as f:
            text = f.read()
        with open(n.config, "w") as f:
            f.write(text.replace("http:\n", "http:\n  token: %s\n" % tok, 1))
    p.start()
    r.start()
    c = sqlite3.connect(p.path("k.db"), isolation_level=None)
    c.execute("CREATE TABLE t(x)")
    c.close()
    wait_for(lambda: r.pos("k.db") == p.pos("k.db"), what="replication with a token")
    src = str(tmp_path / "s.db")
    make_db(src, 3)
    for path, method in (("/import?name=z.db", "POST"), ("/stream", "POST"),
                         ("/ltx?db=k.db&txid=1", "GET"), ("/promote", "POST"),
                         ("/handoff?nodeID=1", "POST")):
        r_ = http(p.url + path, method, b"x" if method == "POST" else None)
        assert r_.status == 401, (path, r_)
        assert r_.headers.get("WWW-Authenticate") == "Bearer"
        assert http(p.url + path, method, b"x" if method == "POST" else None,
                    token="wrong").status == 401
    assert http(p.url + "/info").status == 200  # read-only stays open
    assert http(p.url + "/ltx?db=k.db&txid=1", token=tok).status == 200
    assert cli("import", "-name", "z.db", "-url", p.url, src).returncode == 1
    cli("import", "-name", "z.db", "-url", p.url, src, env={"LTXFS_HTTP_TOKEN": tok}, check=0)
    # check-config masks the secret
    out = cli("mount", "-check-config", "-config", p.config, check=0).stdout
    assert tok not in out and 'token: "*****"' in out


def test_read_auth_closes_read_endpoints(make_node):
    p = make_node("p", extra_config="")
    with open(p.config) as f:
        text = f.read()
    with open(p.config, "w") as f:
        f.write(text.replace("http:\n", "http:\n  token: abcdefgh12\n  read-auth: true\n", 1))
    p.start()
    assert http(p.url + "/info").status == 401
    assert http(p.url + "/metrics").status == 401
    assert http(p.url + "/info", token="abcdefgh12").status == 200
    assert http(p.url + "/health").status == 200  # container health checks need no secret
    assert cli("status", "-url", p.url, env={"LTXFS_HTTP_TOKEN": "abcdefgh12"}).returncode == 0


def test_endpoint_errors(pair):
    p, r = pair
    r_ = http(p.url + "/nope")
    assert r_.status == 404 and r_.json()["error"]
    r_ = http(p.url + "/info", "POST", b"")
    assert r_.status == 405 and "GET" in r_.json()["error"]
    up = {"Connection": "Upgrade", "Upgrade": "ltxfs-stream", "Ltxfs-Node-Id": "AB"}
    assert http(p.url + "/stream", "POST", b"\x00\x00\x00\x05garbage", headers=up).status == 400
    # a replica that does not ask for the upgrade (an older ltxfs) is told why
    r_ = http(p.url + "/stream", "POST", b"\x00\x00\x00\x00", headers={"Ltxfs-Node-Id": "AB"})
    assert r_.status == 426 and "Upgrade: ltxfs-stream" in r_.json()["error"]
    assert r_.headers["Upgrade"] == "ltxfs-stream"  # RFC 9110: 426 names the protocol
    r_ = http(p.url + "/promote", "POST", b"")
    assert r_.status == 409 and "static lease" in r_.json()["error"]


# ------------------------------------------------------ config and commands

def test_check_config_and_usage(make_node, tmp_path):
    n = make_node("n")
    out = cli("mount", "-check-config", "-config", n.config, check=0).stdout
    assert "fuse:" in out and "lease:" in out and 'type: "static"' in out
    assert not os.path.ismount(n.mount)
    bad = tmp_path / "bad.yml"
    bad.write_text("fuse:\n  dir: /x\nbogus: 1\n")
    q = cli("mount", "-check-config", "-config", str(bad), check=2)
    assert "bogus" in q.stderr and str(bad) in q.stderr
    for args in (["mount", "-zzz"], ["orphans", "-zzz"], ["frobnicate"]):
        q = cli(*args)
        assert q.returncode == 2, args
        assert "Usage" in q.stderr or "usage" in q.stderr.lower(), (args, q.stderr)
    for cmd in ("mount", "import", "export", "status", "run", "ltx", "orphans"):
        q = cli(cmd, "-h", check=0)
        assert "Usage" in q.stdout, cmd
    assert cli("version", check=0).stdout.startswith("ltxfs ")


def test_startup_logs_the_effective_config(make_node):
    n = make_node("n").start()
    log = n.read_log()
    assert "effective configuration:" in log and "fuse.dir=" in log and "lease.type=" in log


# ------------------------------------------------------------- exec

def test_exec_supervision(make_node, tmp_path):
    mark = tmp_path / "migrated"
    ready = tmp_path / "trapped"
    n = make_node("n", extra_config=(
        "exec:\n"
        "  - cmd: \"touch %s\"\n"
        "    if-candidate: true\n"
        "  - cmd: \"sh -c 'trap \\\"exit 42\\\" TERM; touch %s; while true; do sleep 0.05; "
        "done'\"\n" % (mark, ready)))
    n.start()
    wait_for(lambda: mark.exists(), what="the migration to run")
    wait_for(lambda: ready.exists(), what="the command to be ready for signals")
    n.stop(expect=42)  # SIGTERM forwarded, the command's status returned
    # migrations with if-candidate are skipped on a non-candidate
    mark2 = tmp_path / "migrated2"
    p = make_node("p2").start()
    r = make_node("r2", replica_of=p, extra_config=(
        "exec:\n  - cmd: \"touch %s\"\n    if-candidate: true\n  - cmd: \"sleep 30\"\n"
        % mark2))
    r.start()
    time.sleep(0.5)
    assert not mark2.exists()
    r.stop(expect=128 + signal.SIGTERM)  # sleep dies of the forwarded SIGTERM
    # the supervised command exiting ends ltxfs with its status
    q = make_node("q", extra_config="exec: \"sh -c 'exit 3'\"\n")
    q.start(wait=False)
    q.wait_exit(3)


def test_pid1_in_a_container(make_node, tmp_path):
    """As PID 1 of a PID namespace (a container): signals still reach ltxfs,
    which forwards them to the exec command, and orphans are reaped."""
    n = make_node("n", extra_config=(
        "exec: \"sh -c '(sleep 0.2 &); trap \\\"exit 5\\\" TERM; touch %s; while true; do "
        "sleep 0.05; done'\"\n" % (tmp_path / "trapped")))
    logf = open(n.log, "a")
    outer = subprocess.Popen([require("unshare"), "--pid", "--fork", LTXFS, "mount",
                              "-config", n.config], stdout=logf, stderr=subprocess.STDOUT)
    logf.close()
    try:
        wait_for(lambda: is_mounted(n.mount), timeout=30, what="the mount")

        def ltxfs_pid():
            for d in os.listdir("/proc"):
                if d.isdigit():
                    try:
                        with open("/proc/%s/status" % d) as f:
                            st = f.read()
                    except OSError:
                        continue
                    if "\nPPid:\t%d\n" % outer.pid in st and "Name:\tltxfs" in st:
                        return int(d)
            return None
        pid = wait_for(ltxfs_pid, what="ltxfs in the namespace")
        wait_for(lambda: (tmp_path / "trapped").exists(), what="the command's trap")
        with open("/proc/%d/status" % pid) as f:
            assert "NSpid:\t%d\t1" % pid in f.read()  # PID 1 inside

        def zombies():
            z = []
            for d in os.listdir("/proc"):
                if d.isdigit():
                    try:
                        with open("/proc/%s/stat" % d) as f:
                            parts = f.read().rsplit(")", 1)[1].split()
                    except OSError:
                        continue
                    if parts[0] == "Z" and int(parts[1]) == pid:
                        z.append(d)
            return z
        time.sleep(0.6)  # the orphaned sleep 0.2 has exited by now
        assert zombies() == [], "ltxfs left orphans unreaped"
        os.kill(pid, signal.SIGTERM)
        check_exit("ltxfs node n (PID 1 of a PID namespace)", outer.wait(30), 5,
                   n.read_log(), sanitized=True)
    finally:
        if outer.poll() is None:  # the test failed before its check: not a stop
            outer.kill()
            outer.wait()
        subprocess.call(["umount", "-l", n.mount], stderr=subprocess.DEVNULL)


def test_systemd_notify(make_node, tmp_path):
    """Type=notify: READY=1 once mounted and serving, STOPPING=1 at shutdown."""
    import socket
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(30)
    n = make_node("n")
    os.environ["NOTIFY_SOCKET"] = path
    try:
        n.start(wait=False)
    finally:
        del os.environ["NOTIFY_SOCKET"]
    msg = s.recv(4096).decode()
    assert "READY=1" in msg
    assert is_mounted(n.mount)
    assert http(n.url + "/health").status == 200
    n.stop()
    assert "STOPPING=1" in s.recv(4096).decode()
    s.close()


def test_status_reports_a_malformed_reply(tmp_path):
    """A URL that answers something other than ltxfs's JSON is named, not trusted."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{not json")

        def log_message(self, *a):
            pass
    srv = HTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        q = cli("status", "-url", "http://127.0.0.1:%d" % srv.server_port, check=1)
        assert "malformed JSON" in q.stderr
    finally:
        srv.shutdown()
