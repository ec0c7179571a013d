"""Leader election through Consul (the test emulator) and etcd (the real
etcd-server): election, failover after kill -9, partition, backend outages,
planned handoff. Three candidate nodes in every test; every node is polled
throughout and at no instant may two of them accept writes.

Timings (TTL 2 s on both backends) keep the suite short; the budgets are the
issue's: etcd ttl + 2 s, Consul 2 x ttl + lock-delay + 2 s.
"""
import base64
import datetime
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from conftest import free_port, wait_for
from consul import ConsulEmu
from etcd import Etcd
from helpers import check_exit, cli, http
from netproxy import Proxy

HERE = os.path.dirname(os.path.abspath(__file__))
WRITER = os.path.join(HERE, "failover_writer.py")
TTL = 2.0
LOCK_DELAY = 0.5


def log_time(line):
    """The wall-clock time stamped on one of ltxfs's log lines (UTC, ms)."""
    d = datetime.datetime.strptime(line[:23], "%Y-%m-%dT%H:%M:%S.%f")
    return d.replace(tzinfo=datetime.timezone.utc).timestamp()


def info(node, timeout=1.0):
    """The node's /info, or None while it does not answer."""
    try:
        r = http(node.url + "/info", timeout=timeout)
    except OSError:
        return None
    return r.json() if r.status == 200 else None


def post(url, timeout=15.0):
    return http(url, "POST", b"", timeout=timeout)


class Backend:
    """A running lease backend and the per-node proxies in front of it."""

    def __init__(self, kind, tmp_path):
        self.kind = kind
        self.proxies = {}
        if kind == "consul":
            self.emu = ConsulEmu().start(ttl_min="1s")
            self.port = self.emu.port
            self.budget = 2 * TTL + LOCK_DELAY + 2.0
        else:
            self.etcd = Etcd().start()
            self.port = self.etcd.port
            self.budget = TTL + 2.0

    def proxy(self, name):
        p = Proxy(self.port)
        self.proxies[name] = p
        return p

    def lease_yaml(self, name, extra=""):
        url = self.proxy(name).url
        if self.kind == "consul":
            return ("consul:\n  url: %s\n  key: ltxfs/test\n  ttl: %ds\n  lock-delay: %dms\n%s"
                    % (url, TTL, LOCK_DELAY * 1000, extra))
        # n3 lists a dead endpoint first: endpoints are tried in turn
        eps = ("http://127.0.0.1:%d, %s" % (free_port(), url)) if name == "n3" else url
        return "etcd:\n  endpoints: [%s]\n  key: ltxfs/test\n  ttl: %ds\n%s" % (eps, TTL, extra)

    def delete_key(self, key):
        """What an operator might do by hand: delete the lease key."""
        if self.kind == "consul":
            assert self.emu.request("DELETE", "/v1/kv/" + key).status == 200
        else:
            self.etcd.post("/v3/kv/deleterange",
                           {"key": base64.b64encode(key.encode()).decode()})

    def kv(self, key):
        """A value stored in the backend (bytes) or None."""
        if self.kind == "consul":
            e = self.emu.kv_get(key)
            return e["Value"] if e else None
        return self.etcd.get(key)

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
        """Close every proxy and stop the backend, each checked (a failure
        of one does not leave the others running)."""
        errors = []
        for p in self.proxies.values():
            try:
                p.close()
            except AssertionError as e:
                errors.append(str(e))
        try:
            if self.kind == "consul":
                self.emu.stop()
            else:
                self.etcd.cleanup()
        except AssertionError as e:
            errors.append(str(e))
        assert not errors, "\n\n".join(errors)


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


def start_cluster(make_node, backend, n=3, advertise_proxies=False, candidates=None, extra=None):
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
        nodes.append(make_node(name, lease=backend.lease_yaml(name, (extra or {}).get(name, "")),
                               port=port,
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
        check_exit("failover writer", self.proc.wait(30), 0)


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


# rollback mode runs with etcd only: the lease backend does not change what it tests
MODES = [("consul", "wal"), ("etcd", "wal"), ("etcd", "delete")]


@pytest.mark.parametrize("backend,mode", MODES, indirect=["backend"])
def test_failover_after_kill9(backend, make_node, tmp_path, mode):
    nodes = start_cluster(make_node, backend)
    n1, n2, n3 = nodes
    i1 = info(n1)
    assert i1["isPrimary"] and i1["epoch"] > 0
    # the cluster ID lives beside the key (compare-and-set by the first primary)
    assert backend.kv("ltxfs/test/clusterid") == i1["clusterID"].encode()
    wait_for(lambda: all((info(n) or {}).get("clusterID") == i1["clusterID"] for n in nodes),
             timeout=10, what="every node to join the cluster")
    create_table(n1, mode)
    wait_for(lambda: all(n.pos("db") == n1.pos("db") for n in nodes), timeout=20,
             what="replicas to have the table")
    poller = Poller(nodes)
    w = Writer(tmp_path, nodes)
    try:
        w.wait_acks(50, "n1")
        t_kill = time.time()
        n1.kill9()
        # what had reached a replica at the moment of the kill
        reached = keys(n2) | keys(n3)
        new = wait_for(lambda: primary_of([n2, n3]), timeout=backend.budget + 5,
                       what="a new primary")
        # measured to the new primary's own log line, so that the test's
        # reads and polls under load do not count against the budget
        opened = [l for l in new.read_log().splitlines() if "this node accepts writes" in l]
        assert opened, new.read_log()
        took = log_time(opened[-1]) - t_kill
        assert took <= backend.budget, "failover took %.1fs (budget %.1fs)" % (
            took, backend.budget)
        w.wait_acks(30, new.name)
    finally:
        w.stop()
        poller.close()
    check_no_interleaving(w.acks(), "n1", new.name)
    other = n3 if new is n2 else n2
    converge([new, other])
    # LTX files record the epoch of the term that wrote them
    e_old, e_new = i1["epoch"], info(new)["epoch"]
    assert e_new > e_old
    epochs = set()
    ltxdir = os.path.join(new.dbdir("db"), "ltx")
    for f in os.listdir(ltxdir):
        with open(os.path.join(ltxdir, f), "rb") as fh:
            epochs.add(int.from_bytes(fh.read(88)[80:88], "big"))
    assert e_new in epochs and epochs <= {e_old, e_new}, (epochs, e_old, e_new)
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


@pytest.mark.parametrize("backend,mode", MODES, indirect=["backend"])
def test_partitioned_primary_steps_down(backend, make_node, tmp_path, mode):
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
        # Each poll's send time bounds when n1 last accepted writes from
        # below, however long the answer takes: a "true" to a poll sent
        # more than TTL after the cut is a primary that kept writing. An
        # unanswered poll proves nothing either way.
        last_true = t_cut
        while True:
            sent = time.monotonic()
            i = info(n1)
            if i is not None and not i.get("acceptsWrites"):
                break
            if i is not None:
                last_true = sent
            assert sent - t_cut <= TTL + 5, "the partitioned primary never stopped"
            time.sleep(0.01)
        t_fenced = time.monotonic()
        new = wait_for(lambda: primary_of([n2, n3]), timeout=backend.budget + 5,
                       what="a new primary")
        t_new = time.monotonic()
        assert t_fenced < t_new
        assert last_true - t_cut <= TTL, "old primary kept writing %.2fs" % (last_true - t_cut)
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
        out = cli("orphans", "-config", n1.config, check=0).stdout
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
        r = post(n2.url + "/promote")
        assert r.status == 200, r
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
    assert post(n2.url + "/promote").status == 200
    assert post(n1.url + "/handoff?nodeID=zz").status == 400


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
    r = post(n2.url + "/promote")
    assert r.status == 409, r
    n1.start()
    wait_for(lambda: primary_of(nodes) is n1, timeout=backend.budget + 10,
             what="n1 to be primary again")
    converge(nodes)


def test_lease_promote_at_start(backend, make_node, tmp_path):
    """lease.promote: true on n2: once caught up it asks n1 for a handoff."""
    nodes = start_cluster(make_node, backend, n=2, extra={"n2": "promote: true\n"})
    n1, n2 = nodes
    wait_for(lambda: primary_of(nodes) is n2, timeout=20, what="n2 to be promoted")
    assert "lease.promote: asking" in n2.read_log()
    create_table(n2, "wal")
    converge(nodes)
    assert (info(n1) or {}).get("primary", {}).get("hostname") == "n2"


def test_replica_refuses_frames_of_an_older_epoch(backend, make_node, tmp_path):
    """A replica that has seen a later epoch refuses a primary of an earlier one."""
    nodes = start_cluster(make_node, backend, n=1)
    n1 = nodes[0]
    create_table(n1, "wal")
    n2 = make_node("n2", lease=backend.lease_yaml("n2"), candidate=False)
    os.makedirs(n2.data, exist_ok=True)
    with open(os.path.join(n2.data, "epoch"), "w") as f:
        f.write("%d\n" % (info(n1)["epoch"] + 1000))
    n2.start()
    wait_for(lambda: "refusing a frame of epoch" in n2.read_log() or
             "refusing a heartbeat of epoch" in n2.read_log(), timeout=20,
             what="n2 to refuse the stale primary")
    assert n2.pos("db") is None


def test_etcd_authentication(make_node, tmp_path):
    e = Etcd().start()
    try:
        e.post("/v3/auth/role/add", {"name": "root"})
        e.post("/v3/auth/user/add", {"name": "root", "password": "s3cret"})
        e.post("/v3/auth/user/grant", {"user": "root", "role": "root"})
        e.post("/v3/auth/enable", {})
        good = make_node("good", lease="etcd:\n  endpoints: [%s]\n  key: ltxfs/auth\n  ttl: 2s\n"
                         "  username: root\n  password: s3cret\n" % e.url)
        bad = make_node("bad", lease="etcd:\n  endpoints: [%s]\n  key: ltxfs/auth\n  ttl: 2s\n"
                        "  username: root\n  password: wrong\n" % e.url)
        bad.start()
        wait_for(lambda: "etcd authenticate as 'root'" in bad.read_log(), timeout=10,
                 what="the bad password to be reported")
        assert not info(bad)["acceptsWrites"]
        good.start()
        wait_for(lambda: primary_of([good]), timeout=10, what="the authenticated node to lead")
        assert primary_of([good, bad]) is good
    finally:
        e.cleanup()


def test_consul_token_and_prefix_from_the_url(make_node, tmp_path):
    """As LiteFS reads lease.consul.url: the userinfo password is the ACL
    token, the path a key prefix (with a catalog node for the sessions)."""
    emu = ConsulEmu(acl_token="t0ken").start(ttl_min="1s")
    try:
        host = emu.url.split("//", 1)[1]
        good = make_node("good", lease="consul:\n  url: http://:t0ken@%s/app1/\n"
                         "  key: primary\n  ttl: 2s\n  lock-delay: 500ms\n" % host)
        bad = make_node("bad", lease="consul:\n  url: http://:nope@%s/app1/\n"
                        "  key: primary\n  ttl: 2s\n  lock-delay: 500ms\n" % host)
        bad.start()
        wait_for(lambda: "HTTP 403" in bad.read_log(), timeout=10,
                 what="the wrong token to be reported")
        good.start()
        wait_for(lambda: primary_of([good]), timeout=10, what="the node with the token to lead")
        e = emu.kv_get("app1/primary", token="t0ken")
        assert e and e.get("Session"), e
        assert json.loads(e["Value"]) == {"hostname": "good", "advertise-url": good.url}
        assert primary_of([good, bad]) is good
    finally:
        emu.stop()


def test_primary_steps_down_when_the_key_is_deleted(backend, make_node, tmp_path):
    """Locks are advisory: an operator may delete the key by hand, and another
    candidate may take it at once. The old primary notices at its next
    renewal (TTL/3) and steps down; until then both may accept writes, which
    is why replicas follow the key and refuse frames of the older epoch
    (docs/leases.md, known limits). Afterwards exactly one primary remains."""
    nodes = start_cluster(make_node, backend)
    n1 = nodes[0]
    create_table(n1, "wal")
    converge(nodes)
    e1 = info(n1)["epoch"]
    backend.delete_key("ltxfs/test")
    t0 = time.time()
    line = wait_for(lambda: [l for l in n1.read_log().splitlines()
                             if "lease key no longer names this node" in l],
                    timeout=10, what="n1 to notice the deleted key")[0]
    # the log line's own time stamp, so the test's polling does not count
    noticed = log_time(line)
    assert noticed - t0 <= TTL / 3 + 1.0, (noticed - t0, line)
    new = wait_for(lambda: primary_of(nodes), timeout=backend.budget + 5,
                   what="a single primary after the key was deleted")
    assert info(new)["epoch"] > e1
    c = sqlite3.connect(new.path("db"), timeout=10, isolation_level=None)
    c.execute("INSERT INTO t(node) VALUES('after-delete')")
    c.close()
    converge(nodes)
    assert sum(1 for n in nodes if info(n)["acceptsWrites"]) == 1


def test_empty_node_does_not_lead_an_existing_cluster(backend, make_node, tmp_path):
    """A candidate with an empty data directory that never caught up must not
    become primary of a cluster that has data: its empty databases would
    replace everyone's."""
    nodes = start_cluster(make_node, backend, n=2)
    n1, n2 = nodes
    create_table(n1, "wal")
    c = sqlite3.connect(n1.path("db"), timeout=10, isolation_level=None)
    for i in range(10):
        c.execute("INSERT INTO t(node) VALUES('n1')")
    c.close()
    converge(nodes)
    want = keys(n1)
    n2.stop()
    n1.kill9()
    n3 = make_node("n3", lease=backend.lease_yaml("n3")).start()
    wait_for(lambda: "not taking the lease: this node has no data" in n3.read_log(),
             timeout=backend.budget + 5, what="n3 to hold back")
    assert primary_of([n3]) is None
    n2.start()
    wait_for(lambda: primary_of([n2, n3]) is n2, timeout=backend.budget + 10,
             what="n2, which has the data, to lead")
    converge([n2, n3])
    assert keys(n3) == keys(n2) == want
