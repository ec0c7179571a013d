"""Leader election through Consul (the test emulator) and etcd (the real
etcd-server): election, failover after kill -9, partition, backend outages,
planned handoff. Three candidate nodes in every test; every node is polled
throughout and at no instant may two of them accept writes.

Timings (TTL 2 s on both backends) keep the suite short; the budgets are the
issue's: etcd ttl + 2 s, Consul 2 x ttl + lock-delay + 2 s.
"""
import os
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from conftest import LTXFS, Node, free_port, is_mounted, wait_for  # noqa: F401
from netproxy import Proxy

HERE = os.path.dirname(os.path.abspath(__file__))
WRITER = os.path.join(HERE, "failover_writer.py")
TTL = 2.0
LOCK_DELAY = 0.5
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def info(node, timeout=1.0):
    import json
    try:
        with _OPENER.open(node.url + "/info", timeout=timeout) as r:
            return json.loads(r.read())
    except OSError:
        return None


def post(url, timeout=15.0):
    req = urllib.request.Request(url, data=b"", method="POST")
    try:
        with _OPENER.open(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Backend:
    """A running lease backend and the per-node proxies in front of it."""

    def __init__(self, kind, tmp_path):
        self.kind = kind
        self.proxies = {}
        if kind == "consul":
            from consul import ConsulEmu
            self.emu = ConsulEmu().start(ttl_min="1s")
            self.port = int(self.emu.url.rsplit(":", 1)[1])
            self.budget = 2 * TTL + LOCK_DELAY + 2.0
        else:
            from etcd import Etcd
            self.etcd = Etcd().start()
            self.port = self.etcd.port
            self.budget = TTL + 2.0

    def proxy(self, name):
        p = Proxy(self.port)
        self.proxies[name] = p
        return p

    def lease_yaml(self, name):
        url = self.proxy(name).url
        if self.kind == "consul":
            return ("consul:\n  url: %s\n  key: ltxfs/test\n  ttl: %ds\n  lock-delay: %dms\n"
                    % (url, TTL, LOCK_DELAY * 1000))
        return "etcd:\n  endpoints: [%s]\n  key: ltxfs/test\n  ttl: %ds\n" % (url, TTL)

    def down(self):
        if self.kind == "consul":
            self.emu.fault("drop")
        else:
            self.etcd.pause()

    def up(self):
        if self.kind == "consul":
            self.emu.fault("none")
        else:
            self.etcd.resume()

    def close(self):
        for p in self.proxies.values():
            p.close()
        if self.kind == "consul":
            self.emu.stop()
        else:
            self.etcd.cleanup()


@pytest.fixture(params=["consul", "etcd"])
def backend(request, tmp_path):
    b = Backend(request.param, tmp_path)
    yield b
    b.close()


class Poller:
    """Polls /info of every node every 10 ms in a thread; records who accepts writes."""

    def __init__(self, nodes):
        self.nodes = nodes
        self.stop = False
        self.overlaps = []
        self.history = []  # (t, name) of each round's writable node
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            t = time.monotonic()
            w = []
            for n in self.nodes:
                i = info(n, timeout=0.5)
                if i and i.get("acceptsWrites"):
                    w.append(n.name)
            if len(w) > 1:
                self.overlaps.append((t, w))
            self.history.append((t, w[0] if w else None))
            time.sleep(0.01)

    def close(self):
        self.stop = True
        self.t.join()
        assert not self.overlaps, "two nodes accepted writes at once: %r" % self.overlaps[:5]


def primary_of(nodes):
    ps = [n for n in nodes if (info(n) or {}).get("acceptsWrites")]
    return ps[0] if len(ps) == 1 else None


def start_cluster(make_node, backend, n=3, advertise_proxies=False, candidates=None):
    nodes = []
    for i in range(n):
        cand = True if candidates is None else candidates[i]
        name = "n%d" % (i + 1)
        port = free_port()
        adv = None
        if advertise_proxies:
            p = Proxy(port)
            backend.proxies["in-" + name] = p
            adv = p.url
        nodes.append(make_node(name, lease=backend.lease_yaml(name), port=port,
                               advertise=adv, candidate=cand))
    nodes[0].start()
    wait_for(lambda: primary_of(nodes[:1]), timeout=15, what="n1 to become primary")
    for nd in nodes[1:]:
        nd.start()
    return nodes


def create_table(node, mode="wal"):
    c = sqlite3.connect(node.path("db"), timeout=10, isolation_level=None)
    c.execute("PRAGMA journal_mode=%s" % mode)
    c.execute("CREATE TABLE IF NOT EXISTS t(k INTEGER PRIMARY KEY, node TEXT)")
    c.close()


def keys(node, db="db"):
    c = sqlite3.connect("file:%s?mode=ro" % node.path(db), uri=True, timeout=10)
    try:
        return {r[0] for r in c.execute("SELECT k FROM t")}
    except sqlite3.Error as e:
        with open(node.path(db), "rb") as f:
            head = f.read(100)
        st = os.stat(node.path(db))
        cli = subprocess.run(["sqlite3", node.path(db), "SELECT count(*) FROM t"],
                             capture_output=True, text=True)
        raise AssertionError("%s: reading %s: %s\nmount: %r\ndata: %r\nj=%r head=%r size=%d\n"
                             "cli=%r %r" % (
            node.name, db, e, sorted(os.listdir(node.mount)),
            sorted(os.listdir(node.dbdir(db))), os.path.exists(node.path(db + "-journal")),
            head, st.st_size, cli.stdout, cli.stderr)) from e
    finally:
        c.close()


class Writer:
    def __init__(self, tmp_path, nodes):
        self.out = str(tmp_path / "acks.txt")
        self.stopfile = str(tmp_path / "stop-writer")
        args = ["%s=%s" % (n.name, n.path("db")) for n in nodes]
        self.proc = subprocess.Popen([sys.executable, WRITER, self.out, self.stopfile, "x",
                                      *args])

    def acks(self):
        res = []
        try:
            with open(self.out) as f:
                for line in f:
                    p = line.split()
                    if len(p) == 3:
                        res.append((int(p[0]), p[1], int(p[2]) / 1e9))
        except FileNotFoundError:
            pass
        return res

    def wait_acks(self, n, node=None, timeout=20):
        wait_for(lambda: sum(1 for a in self.acks() if node is None or a[1] == node) >= n,
                 timeout=timeout, what="%d acknowledged writes" % n)

    def stop(self):
        open(self.stopfile, "w").close()
        self.proc.wait(30)


def check_no_interleaving(acks, old, new):
    """After the first write the new primary acknowledged, the old one acknowledged none."""
    first_new = min((t for k, n, t in acks if n == new), default=None)
    assert first_new is not None, "the new primary acknowledged no write"
    late = [(k, t) for k, n, t in acks if n == old and t > first_new]
    assert not late, "old primary %s acknowledged writes after %s took over: %r" % (
        old, new, late[:5])


def converge(nodes, db="db", timeout=30):
    def same():
        ps = {n.pos(db) for n in nodes}
        return len(ps) == 1 and None not in ps
    wait_for(same, timeout=timeout, what="nodes to converge on %s" % db)


@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_failover_after_kill9(backend, make_node, tmp_path, mode):
    if backend.kind == "consul" and mode == "delete":
        pytest.skip("rollback mode is covered with etcd; consul runs WAL")
    nodes = start_cluster(make_node, backend)
    n1, n2, n3 = nodes
    assert info(n1)["isPrimary"] and info(n1)["epoch"] > 0
    create_table(n1, mode)
    wait_for(lambda: all(n.pos("db") == n1.pos("db") for n in nodes), timeout=20,
             what="replicas to have the table")
    poller = Poller(nodes)
    w = Writer(tmp_path, nodes)
    try:
        w.wait_acks(50, "n1")
        n1.kill9()
        t_kill = time.monotonic()
        # what had reached a replica at the moment of the kill
        reached = keys(n2) | keys(n3)
        new = wait_for(lambda: primary_of([n2, n3]), timeout=backend.budget + 5,
                       what="a new primary")
        t_new = time.monotonic()
        assert t_new - t_kill <= backend.budget, "failover took %.1fs (budget %.1fs)" % (
            t_new - t_kill, backend.budget)
        w.wait_acks(30, new.name)
    finally:
        w.stop()
        poller.close()
    check_no_interleaving(w.acks(), "n1", new.name)
    other = n3 if new is n2 else n2
    converge([new, other])
    have = keys(new)
    assert reached <= have, "lost %d replicated commits" % len(reached - have)
    acked_new = {k for k, n, t in w.acks() if n == new.name}
    assert acked_new <= have
    # the old primary comes back as a replica and converges
    n1.start()
    wait_for(lambda: (info(n1) or {}).get("primary", {}).get("hostname") == new.name,
             timeout=20, what="n1 to follow the new primary")
    converge(nodes)
    assert not info(n1)["acceptsWrites"]
    assert keys(n1) == keys(new)
    with open(n1.path(".primary")) as f:
        assert f.read().strip() == new.name


@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_partitioned_primary_steps_down(backend, make_node, tmp_path, mode):
    if backend.kind == "consul" and mode == "delete":
        pytest.skip("rollback mode is covered with etcd; consul runs WAL")
    nodes = start_cluster(make_node, backend, advertise_proxies=True)
    n1, n2, n3 = nodes
    create_table(n1, mode)
    converge(nodes)
    poller = Poller(nodes)
    w = Writer(tmp_path, nodes)
    try:
        w.wait_acks(30, "n1")
        # cut n1 off from the backend and from the replicas
        backend.proxies["n1"].block()
        backend.proxies["in-n1"].block()
        t_cut = time.monotonic()
        wait_for(lambda: not (info(n1) or {}).get("acceptsWrites"), timeout=TTL + 2,
                 what="the partitioned primary to stop accepting writes")
        t_fenced = time.monotonic()
        new = wait_for(lambda: primary_of([n2, n3]), timeout=backend.budget + 5,
                       what="a new primary")
        t_new = time.monotonic()
        assert t_fenced < t_new
        assert t_fenced - t_cut <= TTL, "old primary kept writing %.2fs" % (t_fenced - t_cut)
        w.wait_acks(20, new.name)
        # writes the old primary acknowledged but never replicated
        orphans_expected = {k for k, n, t in w.acks() if n == "n1"} - keys(new)
        backend.proxies["n1"].unblock()
        backend.proxies["in-n1"].unblock()
        wait_for(lambda: (info(n1) or {}).get("primary", {}).get("hostname") == new.name,
                 timeout=20, what="n1 to follow the new primary after healing")
        w.wait_acks(10 + sum(1 for a in w.acks() if a[1] == new.name), new.name)
    finally:
        w.stop()
        poller.close()
    check_no_interleaving(w.acks(), "n1", new.name)
    converge(nodes)
    assert keys(n1) == keys(new)
    if orphans_expected:
        od = os.path.join(n1.dbdir("db"), "orphaned")
        assert os.path.isdir(od) and any(os.scandir(od)), \
            "n1's unreplicated transactions were not kept aside"
        assert "orphaned" in n1.read_log()
        out = subprocess.run([LTXFS, "orphans", "-config", n1.config], capture_output=True,
                             text=True, check=True).stdout
        assert "db db: set aside at" in out and " epoch " in out, out


def test_backend_outage(backend, make_node, tmp_path):
    nodes = start_cluster(make_node, backend)
    n1 = nodes[0]
    create_table(n1, "wal")
    converge(nodes)
    poller = Poller(nodes)
    try:
        # shorter than the TTL: nothing changes
        backend.down()
        time.sleep(TTL / 4)
        backend.up()
        time.sleep(TTL)
        assert primary_of(nodes) is n1
        c = sqlite3.connect(n1.path("db"), timeout=5, isolation_level=None)
        c.execute("INSERT INTO t(node) VALUES('after-short-outage')")
        c.close()
        # longer than the TTL: the primary steps down by itself
        backend.down()
        wait_for(lambda: primary_of(nodes) is None, timeout=TTL + 2,
                 what="the primary to step down while the backend is away")
        time.sleep(1)
        assert primary_of(nodes) is None
        backend.up()
        p = wait_for(lambda: primary_of(nodes), timeout=backend.budget + 10,
                     what="a primary once the backend is back")
        c = sqlite3.connect(p.path("db"), timeout=5, isolation_level=None)
        c.execute("INSERT INTO t(node) VALUES('after-long-outage')")
        c.close()
    finally:
        poller.close()
    converge(nodes)


def test_planned_handoff(backend, make_node, tmp_path):
    nodes = start_cluster(make_node, backend)
    n1, n2, n3 = nodes
    create_table(n1, "wal")
    converge(nodes)
    poller = Poller(nodes)
    w = Writer(tmp_path, nodes)
    try:
        w.wait_acks(50, "n1")
        status, body = post(n2.url + "/promote")
        assert status == 200, body
        assert info(n2)["acceptsWrites"]
        w.wait_acks(50, "n2")
    finally:
        w.stop()
        poller.close()
    acks = w.acks()
    check_no_interleaving(acks, "n1", "n2")
    last_old = max(t for k, n, t in acks if n == "n1")
    first_new = min(t for k, n, t in acks if n == "n2")
    gap = first_new - last_old
    print("handoff write unavailability (%s): %.1f ms" % (backend.kind, gap * 1000))
    assert gap < 2.0
    converge(nodes)
    have = keys(n2)
    lost = {k for k, n, t in acks} - have
    assert not lost, "handoff lost acknowledged commits: %r" % sorted(lost)[:10]
    assert wait_for(lambda: (info(n1) or {}).get("primary", {}).get("hostname") == "n2")
    # errors: promote on the primary itself is a no-op success; on a static node, 409
    assert post(n2.url + "/promote")[0] == 200
    assert post(n1.url + "/handoff?nodeID=zz")[0] == 400


def test_new_primary_adopts_what_only_a_replica_received(backend, make_node, tmp_path):
    """n2 (the only other candidate) is down while n1 commits; n3 (not a
    candidate) receives everything. n1 dies; n2 comes back and is elected
    with an older position: it must take n3's extra transactions over, not
    orphan them."""
    nodes = start_cluster(make_node, backend, candidates=[True, True, False])
    n1, n2, n3 = nodes
    create_table(n1, "delete")
    converge(nodes)
    n2.kill9()
    c = sqlite3.connect(n1.path("db"), timeout=10, isolation_level=None)
    for i in range(20):
        c.execute("INSERT INTO t(node) VALUES('only-on-n3')")
    c.close()
    converge([n1, n3])
    want = keys(n3)
    n1.kill9()
    n2.start()
    wait_for(lambda: primary_of([n2]), timeout=backend.budget + 10,
             what="n2 to be elected")
    assert keys(n2) == want, "n2 lost %d transactions n3 had" % len(want - keys(n2))
    assert "adopted 20 transaction(s)" in n2.read_log()
    assert not os.path.exists(os.path.join(n3.dbdir("db"), "orphaned"))
    c = sqlite3.connect(n2.path("db"), timeout=10, isolation_level=None)
    c.execute("INSERT INTO t(node) VALUES('n2')")
    c.close()
    converge([n2, n3])
    assert keys(n3) == keys(n2)


def test_non_candidate_never_takes_the_lease(backend, make_node, tmp_path):
    nodes = start_cluster(make_node, backend, candidates=[True, False, False])
    n1, n2, n3 = nodes
    create_table(n1, "wal")
    converge(nodes)
    n1.kill9()
    time.sleep(backend.budget)
    assert primary_of([n2, n3]) is None
    assert not info(n2)["candidate"] and not info(n3)["candidate"]
    status, body = post(n2.url + "/promote")
    assert status == 409, body
    n1.start()
    wait_for(lambda: primary_of(nodes) is n1, timeout=backend.budget + 10,
             what="n1 to be primary again")
    converge(nodes)
