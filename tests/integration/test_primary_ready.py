"""A primary is writable when it says so (issue 14, item 5).

A node that has just taken the lease (at the first start of a cluster, or
after a failover) holds writes back for the adoption window and for any
adoption that began in it. /info's isPrimary turns true only once writes are
accepted, and a write that arrives meanwhile waits for it (up to 5 s) instead
of failing with "unable to open database file". These tests poll /info until
isPrimary, then write at once, with no retry: any refusal fails them. They
print the time from isPrimary to the first accepted write, and from the
election to isPrimary.

The bound: a replica whose adoption stalls (its advertised URL is a black
hole) keeps the new primary from accepting writes; a write waits 5 s and is
then refused, with a log line saying what it waited for; isPrimary stays
false meanwhile; after the adoption cap (10 s from the election) the primary
accepts writes.
"""
import os
import sqlite3
import time

import pytest

from conftest import wait_for
from test_leases import backend, converge, create_table, info, start_cluster  # noqa: F401

WAIT_MS = 5000  # WRITE_WAIT_MS in src/edge/fusefs_ops.c
ADOPT_MAX_MS = 10000  # ADOPT_MAX_MS in src/edge/elector.c


def watch_until_primary(node, timeout):
    """Poll /info as fast as it answers. Returns (t of the first /info that
    shows role primary, t of the first that shows isPrimary, that /info)."""
    deadline = time.monotonic() + timeout
    t_role = None
    while time.monotonic() < deadline:
        i = info(node, timeout=0.5)
        t = time.monotonic()
        if i and i["role"] == "primary" and t_role is None:
            t_role = t
        if i and i["isPrimary"]:
            return t_role or t, t, i
        if i and i["role"] == "primary":
            # the lease is held but writes are not accepted yet: say why
            assert not i["acceptsWrites"] and i.get("writesHeld"), i
    raise AssertionError("%s did not say isPrimary within %.1fs" % (node.name, timeout))


def write_now(node):
    """Create a new database and insert into it, and insert into the
    existing one: the first writes after isPrimary, no retry, no busy wait
    hiding a refusal (a refusal is not SQLITE_BUSY)."""
    c = sqlite3.connect(node.path("fresh.db"), timeout=0, isolation_level=None)
    c.execute("CREATE TABLE IF NOT EXISTS x(v)")
    c.execute("INSERT INTO x VALUES('first')")
    c.close()
    t = time.monotonic()
    c = sqlite3.connect(node.path("db"), timeout=0, isolation_level=None)
    c.execute("INSERT INTO t(node) VALUES(?)", (node.name,))
    c.close()
    return t


@pytest.mark.parametrize("backend", ["consul", "etcd"], indirect=True)
def test_first_start_is_writable_when_it_says_is_primary(backend, make_node):
    """The first node of a new cluster: poll /info from its start; the first
    isPrimary takes a new database at once."""
    n1 = make_node("n1", lease=backend.lease_yaml("n1"))
    n1.start()
    t_role, t_prim, i = watch_until_primary(n1, 15)
    c = sqlite3.connect(n1.path("fresh.db"), timeout=0, isolation_level=None)
    c.execute("CREATE TABLE x(v)")
    c.execute("INSERT INTO x VALUES(1)")
    c.close()
    t_write = time.monotonic()
    assert i["acceptsWrites"] and "writesHeld" not in i, i
    print("first start (%s): lease -> isPrimary %.0f ms, isPrimary -> first write %.0f ms"
          % (backend.kind, (t_prim - t_role) * 1000, (t_write - t_prim) * 1000))
    assert "this node accepts writes" in n1.read_log()


@pytest.mark.parametrize("backend,mode", [("consul", "wal"), ("etcd", "wal"),
                                          ("etcd", "delete")], indirect=["backend"])
def test_failover_is_writable_when_it_says_is_primary(backend, make_node, mode):
    """kill -9 of the primary; the new one's first isPrimary takes writes at
    once, both to a new database and to the replicated one (in WAL mode a
    connection opened before isPrimary would be read-only for good; here the
    connection is opened after it)."""
    nodes = start_cluster(make_node, backend, n=2)
    n1, n2 = nodes
    create_table(n1, mode)
    converge(nodes)
    n1.kill9()
    t_role, t_prim, i = watch_until_primary(n2, backend.budget + 10)
    t_write = write_now(n2)
    assert i["acceptsWrites"], i
    print("failover (%s, %s): lease -> isPrimary %.0f ms, isPrimary -> first write %.0f ms"
          % (backend.kind, mode, (t_prim - t_role) * 1000, (t_write - t_prim) * 1000))
    assert n2.name in {r for (r,) in sqlite3.connect(
        "file:%s?mode=ro" % n2.path("db"), uri=True).execute("SELECT node FROM t")}
    assert "refusing a write" not in n2.read_log()
    n1.start()
    converge(nodes)
    converge(nodes, db="fresh.db")


@pytest.mark.parametrize("backend", ["consul", "etcd"], indirect=True)
def test_write_waits_for_adoption_with_a_bound(backend, make_node):
    """n3 (not a candidate) holds 20 transactions the elected n2 lacks, and
    its advertised URL is a black hole: adoption stalls. A write on n2
    waits 5 s and is refused with a log line naming adoption; isPrimary stays
    false; past the adoption cap n2 accepts writes."""
    nodes = start_cluster(make_node, backend, candidates=[True, True, False],
                          advertise_proxies=True)
    n1, n2, n3 = nodes
    create_table(n1, "delete")
    converge(nodes)
    n2.kill9()
    c = sqlite3.connect(n1.path("db"), timeout=10, isolation_level=None)
    for _ in range(20):
        c.execute("INSERT INTO t(node) VALUES('only-on-n3')")
    c.close()
    converge([n1, n3])
    n1.kill9()
    backend.proxies["in-n3"].block()  # n2's GET /ltx to n3 will hang
    try:
        n2.start()
        i = wait_for(lambda: (lambda i: i if i and i["role"] == "primary" else None)(info(n2)),
                     timeout=backend.budget + 10, what="n2 to take the lease", interval=0.005)
        t_lease = time.monotonic()
        wait_for(lambda: "adopt" in (info(n2) or {}).get("writesHeld", ""), timeout=3,
                 what="n2 to wait for the adoption")
        assert not info(n2)["isPrimary"]
        t0 = time.monotonic()
        with pytest.raises(sqlite3.OperationalError) as err:
            c = sqlite3.connect(n2.path("db"), timeout=0, isolation_level=None)
            try:
                c.execute("INSERT INTO t(node) VALUES('n2-early')")
            finally:
                c.close()
        waited = time.monotonic() - t0
        assert WAIT_MS / 1000 - 0.3 <= waited <= WAIT_MS / 1000 + 3, (waited, str(err.value))
        assert "readonly" in str(err.value) or "unable to open" in str(err.value), str(err.value)
        log = n2.read_log()
        assert ("refusing a write after waiting %d ms: this node holds the primary lease but "
                "does not accept writes yet (adoption of transactions" % WAIT_MS) in log, log
        # still held, and it says so
        i = info(n2)
        assert not i["isPrimary"] and not i["acceptsWrites"] and i["role"] == "primary", i
        # the cap: writes open no later than ADOPT_MAX_MS after the election
        wait_for(lambda: (info(n2) or {}).get("isPrimary"),
                 timeout=ADOPT_MAX_MS / 1000 + 5 - (time.monotonic() - t_lease),
                 what="n2 to accept writes after the adoption cap")
        write_now(n2)
    finally:
        backend.proxies["in-n3"].unblock()
    assert "this node accepts writes" in n2.read_log()
    converge([n2, n3])
    assert "n2" in {r for (r,) in sqlite3.connect(
        "file:%s?mode=ro" % n3.path("db"), uri=True).execute("SELECT node FROM t")}


@pytest.mark.parametrize("backend", ["consul", "etcd"], indirect=True)
def test_write_in_the_adoption_window_waits_and_succeeds(backend, make_node):
    """A write that arrives after the election but before isPrimary (the
    adoption window) waits and is accepted; in WAL mode the connection it
    opened then is read-write (it used to be read-only for good)."""
    nodes = start_cluster(make_node, backend, n=2)
    n1, n2 = nodes
    create_table(n1, "wal")
    converge(nodes)
    n1.kill9()
    i = wait_for(lambda: (lambda i: i if i and i["role"] == "primary" else None)(info(n2)),
                 timeout=backend.budget + 10, what="n2 to take the lease", interval=0.002)
    assert not i["acceptsWrites"], ("missed the window", i)
    t0 = time.monotonic()
    c = sqlite3.connect(n2.path("db"), timeout=0, isolation_level=None)
    c.execute("INSERT INTO t(node) VALUES('in-window')")
    waited = time.monotonic() - t0
    assert not i["isPrimary"], i
    assert i["writesHeld"] == "the adoption window after its election", i
    c.execute("INSERT INTO t(node) VALUES('same-connection')")
    c.close()
    print("write in the window (%s): waited %.0f ms" % (backend.kind, waited * 1000))
    assert waited < WAIT_MS / 1000, waited
    assert info(n2)["isPrimary"]
    assert "refusing a write" not in n2.read_log()
