"""The Consul emulator (tests/consul_emu) against the facts of lease.md §1 and §4.

No mount is needed.  The tests share one emulator process, reset to a fresh
server (/_emu/reset) before each test; tests that need other process options
start their own.  Time-dependent behaviour is driven by the emulator's virtual
clock (/_emu/advance), so the only real-time waits are in the few tests whose
subject is real time itself.
"""
import base64
import http.client
import socket
import threading
import time

import pytest

from conftest import wait_for
from consul import ConsulEmu

MIN = 60 * 1000  # ms


@pytest.fixture(scope="module")
def shared_emu():
    e = ConsulEmu().start(ttl_min="1s")
    yield e
    e.stop()


@pytest.fixture
def emu(shared_emu):
    shared_emu.reset()
    st = shared_emu.state()
    assert (st["Index"], st["Sessions"], st["KV"], st["Waiters"]) == (1, [], [], 0)
    yield shared_emu
    assert shared_emu.proc.poll() is None, "emulator died"


@pytest.fixture
def make_emu():
    """A private emulator with other options; stopped even if the test fails."""
    started = []

    def make(ttl_min="1s", **kw):
        e = ConsulEmu(**kw).start(ttl_min=ttl_min)
        started.append(e)
        return e

    yield make
    for e in started:
        if e.proc is not None:
            e.stop()


@pytest.fixture
def emu10(make_emu):
    """Consul's default session_ttl_min (10s)."""
    return make_emu(ttl_min="10s")


class Bg:
    """Run a request in a thread (blocking queries, hung requests)."""

    def __init__(self, fn, *args, **kw):
        self.result = self.error = None
        self.done = threading.Event()

        def run():
            try:
                self.result = fn(*args, **kw)
            except BaseException as e:  # noqa: B902 - reported to the test
                self.error = e
            finally:
                self.done.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def wait(self, timeout=10.0):
        assert self.done.wait(timeout), "request did not return"
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.result


def waiters(emu, n):
    wait_for(lambda: emu.state()["Waiters"] == n, what="%d blocked request(s)" % n)


def put(emu, key, body=b"", **params):
    return emu.request("PUT", "/v1/kv/" + key, body, **params)


def get(emu, key, **params):
    return emu.request("GET", "/v1/kv/" + key, **params)


def info(emu, sid, **params):
    return emu.request("GET", "/v1/session/info/" + sid, **params)


def session(emu, **fields):
    fields.setdefault("Checks", [])
    return emu.create_session(**fields)


def ok_true(r):
    assert r.status == 200, r
    assert r.headers["Content-Type"] == "application/json"
    return r.json() is True


def ok_false(r):
    assert r.status == 200, r
    return r.json() is False


def read_meta_ok(r):
    assert r.index is not None and r.index >= 1
    assert r.headers["X-Consul-KnownLeader"] == "true"
    assert r.headers["X-Consul-LastContact"] == "0"


# ---------------------------------------------------------------------------
# session create (§1.2)


def test_session_create_defaults(emu):
    r = emu.request("PUT", "/v1/session/create")
    assert r.status == 200 and r.headers["Content-Type"] == "application/json"
    sid = r.json()["ID"]
    assert len(sid) == 36 and sid.count("-") == 4
    r = info(emu, sid)
    read_meta_ok(r)
    s, = r.json()
    assert s == {"ID": sid, "Name": "", "Node": "consul-emu", "LockDelay": 15 * 10**9,
                 "Behavior": "release", "TTL": "", "NodeChecks": ["serfHealth"],
                 "ServiceChecks": None, "CreateIndex": s["CreateIndex"],
                 "ModifyIndex": s["CreateIndex"]}
    assert s["CreateIndex"] >= 2                      # index 1 is reserved
    assert r.index == s["CreateIndex"]                # sessions table index


def test_session_create_keys_case_insensitive_and_checks_key(emu):
    sid = emu.create_session(name="svc", ttl="15s", lockdelay="2s", behavior="delete", checks=[])
    s, = info(emu, sid).json()
    assert (s["Name"], s["TTL"], s["LockDelay"], s["Behavior"]) == ("svc", "15s", 2 * 10**9,
                                                                     "delete")
    assert s["NodeChecks"] is None                    # "Checks" present => no serfHealth
    sid = emu.create_session(Name="x")
    assert info(emu, sid).json()[0]["NodeChecks"] == ["serfHealth"]


@pytest.mark.parametrize("given,ns", [
    ("15s", 15 * 10**9), ("1000ms", 10**9), ("1.5s", 1.5e9), (5, 5 * 10**9),
    ("5ns", 5 * 10**9), (999, 999 * 10**9), (1000, 1000), (1500000000, 1.5e9),
    ("0s", 0), (0, 0)])
def test_lock_delay_parsing(emu, given, ns):
    """FixupLockDelay: a value < 1000 ns is multiplied by 1 s; stored as ns."""
    sid = session(emu, LockDelay=given)
    assert info(emu, sid).json()[0]["LockDelay"] == int(ns)


def test_session_ttl_bounds(emu10):
    emu = emu10

    def create(ttl):
        return emu.request("PUT", "/v1/session/create", {"TTL": ttl, "Checks": []})

    r = create("5s")
    assert (r.status, r.text) == (500, "Invalid Session TTL '5000000000', must be between "
                                       "[10s=24h0m0s]")
    r = create("25h")
    assert (r.status, r.text) == (500, "Invalid Session TTL '90000000000000', must be between "
                                       "[10s=24h0m0s]")
    r = create("10")
    assert (r.status, r.text) == (500, "Session TTL '10' invalid: time: missing unit in "
                                       "duration \"10\"")
    r = create("abc")
    assert (r.status, r.text) == (500, "Session TTL 'abc' invalid: time: invalid duration "
                                       "\"abc\"")
    for good in ("10s", "24h", "0s", "1m30s"):
        assert create(good).status == 200, good
    assert emu.state()["Sessions"].__len__() == 4


def test_session_ttl_min_is_configurable(emu):
    r = emu.request("PUT", "/v1/session/create", {"TTL": "500ms"})
    assert (r.status, r.text) == (500, "Invalid Session TTL '500000000', must be between "
                                       "[1s=24h0m0s]")


def test_session_create_errors(emu):
    r = emu.request("PUT", "/v1/session/create", {"Behavior": "keep"})
    assert (r.status, r.text) == (500, "Invalid Behavior setting 'keep'")
    r = emu.request("PUT", "/v1/session/create", b"{not json")
    assert r.status == 400 and r.text.startswith("Request decode failed: ")
    r = emu.request("PUT", "/v1/session/create", {"TTL": 10})
    assert r.status == 400 and r.text.startswith("Request decode failed: ")
    r = emu.request("PUT", "/v1/session/create", {"LockDelay": "soon"})
    assert r.status == 400 and r.text.startswith("Request decode failed: time: invalid duration")
    assert emu.state()["Sessions"] == []


def test_missing_node_registration(emu):
    r = emu.request("PUT", "/v1/session/create", {"Node": "n2", "Checks": []})
    assert (r.status, r.text) == (500, "Missing node registration")
    r = emu.request("PUT", "/v1/catalog/register", {"Node": "n2"})
    assert (r.status, r.text) == (500, "Must provide address if SkipNodeUpdate is not set")
    assert ok_true(emu.request("PUT", "/v1/catalog/register",
                               {"Node": "n2", "Address": "127.0.0.2"}))
    # serfHealth is the agent node's check; a bare catalog node has none.
    r = emu.request("PUT", "/v1/session/create", {"Node": "n2"})
    assert (r.status, r.text) == (500, "Missing check 'serfHealth' registration")
    sid = session(emu, Node="n2")
    assert info(emu, sid).json()[0]["Node"] == "n2"
    r = emu.request("GET", "/v1/session/node/n2")
    assert [s["ID"] for s in r.json()] == [sid]


def test_critical_check_invalidates_default_sessions(emu):
    """Pitfall 5: the default serfHealth check invalidates the session; Checks:[] does not."""
    with_check = emu.create_session(TTL="30s")
    without = session(emu, TTL="30s")
    assert ok_true(put(emu, "k", b"v", acquire=with_check))
    emu.request("POST", "/_emu/check", check="serfHealth", status="critical")
    assert info(emu, with_check).json() == []
    assert info(emu, without).json() != []
    assert "Session" not in emu.kv_get("k")
    r = emu.request("PUT", "/v1/session/create")
    assert (r.status, r.text) == (500, "Check 'serfHealth' is in critical state")


# ---------------------------------------------------------------------------
# renew / destroy / info / list (§1.3-1.5)


def test_renew(emu):
    sid = session(emu, TTL="10s")
    before = info(emu, sid).index
    r = emu.request("PUT", "/v1/session/renew/" + sid)
    assert r.status == 200 and r.headers["Content-Type"] == "application/json"
    s, = r.json()
    assert s["ID"] == sid and s["TTL"] == "10s"
    assert info(emu, sid).index == before             # renew is not a write
    bogus = "00000000-0000-0000-0000-000000000000"
    r = emu.request("PUT", "/v1/session/renew/" + bogus)
    assert (r.status, r.text) == (404, "Session id '%s' not found" % bogus)
    r = emu.request("PUT", "/v1/session/renew/not-a-uuid")
    assert (r.status, r.text) == (404, "Session id 'not-a-uuid' not found")
    r = emu.request("PUT", "/v1/session/renew/")
    assert (r.status, r.text) == (400, "Missing session")


def test_renew_without_ttl_is_noop_success(emu):
    sid = session(emu)
    assert emu.request("PUT", "/v1/session/renew/" + sid).status == 200
    emu.advance(48 * 3600 * 1000)
    assert info(emu, sid).json()[0]["ID"] == sid


def test_destroy_and_info_unknown(emu):
    r = emu.request("PUT", "/v1/session/destroy/8b08aa1c-1111-2222-3333-444455556666")
    assert ok_true(r) and r.body == b"true"
    r = info(emu, "8b08aa1c-1111-2222-3333-444455556666")
    assert r.status == 200 and r.json() == []
    read_meta_ok(r)
    sid = session(emu)
    assert ok_true(emu.request("PUT", "/v1/session/destroy/" + sid))
    assert ok_true(emu.request("PUT", "/v1/session/destroy/" + sid))   # idempotent
    assert info(emu, sid).json() == []


def test_session_list(emu):
    r = emu.request("GET", "/v1/session/list")
    assert r.status == 200 and r.json() == [] and r.index == 1
    a, b = session(emu, Name="a"), session(emu, Name="b")
    r = emu.request("GET", "/v1/session/list")
    assert sorted(s["ID"] for s in r.json()) == sorted([a, b])
    assert r.index == max(s["CreateIndex"] for s in r.json())


# ---------------------------------------------------------------------------
# TTL (§1.6): invalidation at 2 x TTL, renew and failover reset the timer


def test_ttl_no_invalidation_before_2x_ttl(emu):
    sid = session(emu, TTL="60s", LockDelay="5s")
    assert ok_true(put(emu, "svc/leader", b"me", acquire=sid, flags=9))
    held = emu.kv_get("svc/leader")
    emu.advance(60 * 1000 + 1000)                     # past TTL: still alive
    assert info(emu, sid).json() != []
    emu.advance(58 * 1000)                            # 119 s: still alive
    assert info(emu, sid).json() != []
    assert emu.kv_get("svc/leader")["Session"] == sid
    emu.advance(2000)                                 # 121 s > 2 x TTL: gone
    r = info(emu, sid)
    assert r.json() == [] and r.index > held["ModifyIndex"]
    e = emu.kv_get("svc/leader")
    assert "Session" not in e                         # behavior release
    assert (e["LockIndex"], e["Value"], e["Flags"]) == (1, b"me", 9)
    assert e["ModifyIndex"] > held["ModifyIndex"]
    assert 0 < emu.state()["LockDelays"]["svc/leader"] <= 5000


def test_renew_resets_the_deadline(emu):
    sid = session(emu, TTL="10s")
    emu.advance(15 * 1000)
    assert emu.request("PUT", "/v1/session/renew/" + sid).status == 200
    emu.advance(15 * 1000)                            # 30 s after create, 15 s after renew
    assert info(emu, sid).json() != []
    emu.advance(6 * 1000)
    assert info(emu, sid).json() == []
    assert emu.request("PUT", "/v1/session/renew/" + sid).status == 404


def test_failover_resets_every_deadline(emu):
    a, b = session(emu, TTL="10s"), session(emu, TTL="20s")
    idx = emu.state()["Index"]
    emu.advance(15 * 1000)
    assert emu.failover()["Index"] > idx
    emu.advance(15 * 1000)                            # a: 30 s after create
    assert info(emu, a).json() != [] and info(emu, b).json() != []
    emu.advance(6 * 1000)
    assert info(emu, a).json() == [] and info(emu, b).json() != []


def test_ttl_expiry_in_real_time(emu):
    """Without any request or clock change, the reaper expires a session (2 x 1 s)."""
    t0 = time.monotonic()
    sid = session(emu, TTL="1s", LockDelay="0s")
    assert ok_true(put(emu, "rt", b"x", acquire=sid))
    r = get(emu, "rt")
    r = get(emu, "rt", index=r.index, wait="30s")    # woken by the reaper, not by us
    assert r.status == 200 and "Session" not in r.json()[0]
    assert 2.0 <= time.monotonic() - t0 < 10         # never before 2 x TTL
    assert info(emu, sid).json() == []


# ---------------------------------------------------------------------------
# lock-delay (§1.10)


def test_lock_delay_after_destroy_not_after_release(emu):
    s1, s2 = session(emu, LockDelay="10s"), session(emu, LockDelay="10s")
    # Clean handoff: release, then destroy => no lock-delay.
    assert ok_true(put(emu, "k", b"1", acquire=s1))
    assert ok_true(put(emu, "k", b"", release=s1))
    assert ok_true(emu.request("PUT", "/v1/session/destroy/" + s1))
    assert ok_true(put(emu, "k", b"2", acquire=s2))
    assert emu.state()["LockDelays"] == {}
    # Unclean loss: destroy while held => lock-delay.
    s3 = session(emu)
    assert ok_true(emu.request("PUT", "/v1/session/destroy/" + s2))
    e = emu.kv_get("k")
    assert "Session" not in e and e["Value"] == b"2"  # no Session => lock-delay (§1.10)
    assert ok_false(put(emu, "k", b"3", acquire=s3))
    emu.advance(9000)
    assert ok_false(put(emu, "k", b"3", acquire=s3))
    emu.advance(1500)
    assert ok_true(put(emu, "k", b"3", acquire=s3))
    # A plain PUT is not subject to lock-delay.
    s4 = session(emu, LockDelay="10s")
    assert ok_true(put(emu, "p", b"", acquire=s4))
    emu.invalidate(s4)
    assert ok_true(put(emu, "p", b"plain"))


def test_lock_delay_capped_at_60s(emu):
    s1, s2 = session(emu, LockDelay="300s"), session(emu)
    assert ok_true(put(emu, "k", acquire=s1))
    assert emu.invalidate(s1) is True
    assert 59000 <= emu.state()["LockDelays"]["k"] <= 60000
    emu.advance(59000)
    assert ok_false(put(emu, "k", acquire=s2))
    emu.advance(1500)
    assert ok_true(put(emu, "k", acquire=s2))


def test_lock_delay_zero_disables(emu):
    s1, s2 = session(emu, LockDelay="0s"), session(emu)
    assert ok_true(put(emu, "k", acquire=s1))
    emu.invalidate(s1)
    assert ok_true(put(emu, "k", acquire=s2))


def test_lock_delay_checked_before_session(emu):
    """kvsPreApply rejects an acquire during lock-delay before the session is looked up."""
    s1 = session(emu)
    assert ok_true(put(emu, "k", acquire=s1))
    emu.invalidate(s1)
    assert ok_false(put(emu, "k", acquire="00000000-0000-0000-0000-000000000000"))
    assert ok_false(put(emu, "k", acquire=""))


# ---------------------------------------------------------------------------
# behaviors and LockIndex (§1.13, pitfall 9)


@pytest.mark.parametrize("behavior", ["release", "delete"])
def test_behavior_on_invalidation(emu, behavior):
    s1 = session(emu, Behavior=behavior, LockDelay="1s")
    assert ok_true(put(emu, "svc/leader", b"n1", acquire=s1))
    assert ok_true(put(emu, "svc/leader", b"", release=s1))
    s2 = session(emu, Behavior=behavior, LockDelay="1s", TTL="10s")
    assert ok_true(put(emu, "svc/leader", b"n2", acquire=s2))
    held = emu.kv_get("svc/leader")
    assert held["LockIndex"] == 2
    emu.advance(21 * 1000)                            # s2's TTL expires
    e = emu.kv_get("svc/leader")
    if behavior == "release":
        assert "Session" not in e and e["LockIndex"] == 2 and e["Value"] == b"n2"
    else:
        assert e is None
        st = emu.state()
        assert st["Tombstones"]["svc/leader"] > held["ModifyIndex"]
        assert get(emu, "svc/leader").index == st["Tombstones"]["svc/leader"]
    emu.advance(1500)
    s3 = session(emu)
    assert ok_true(put(emu, "svc/leader", b"n3", acquire=s3))
    # LockIndex grows under release, restarts at 1 under delete.
    assert emu.kv_get("svc/leader")["LockIndex"] == (3 if behavior == "release" else 1)


# ---------------------------------------------------------------------------
# acquire / release / cas / plain PUT (§1.8)


def test_acquire_and_release_rules(emu):
    s1, s2 = session(emu), session(emu)
    assert ok_true(put(emu, "k", b"a", acquire=s1, flags=5))
    e = emu.kv_get("k")
    assert (e["LockIndex"], e["Session"], e["Value"], e["Flags"]) == (1, s1, b"a", 5)
    assert e["CreateIndex"] == e["ModifyIndex"]
    # Same session again: LockIndex kept, value and flags replaced.
    assert ok_true(put(emu, "k", b"b", acquire=s1))
    e2 = emu.kv_get("k")
    assert (e2["LockIndex"], e2["Value"], e2["Flags"]) == (1, b"b", 0)
    assert e2["ModifyIndex"] > e["ModifyIndex"] and e2["CreateIndex"] == e["CreateIndex"]
    # Held by another session.
    assert ok_false(put(emu, "k", b"c", acquire=s2))
    assert ok_false(put(emu, "k", b"c", release=s2))
    assert emu.kv_get("k")["Value"] == b"b"
    # Release by the holder: Session cleared, LockIndex kept, value/flags replaced.
    assert ok_true(put(emu, "k", b"bye", release=s1, flags=3))
    e3 = emu.kv_get("k")
    assert "Session" not in e3
    assert (e3["LockIndex"], e3["Value"], e3["Flags"]) == (1, b"bye", 3)
    assert ok_false(put(emu, "k", release=s1))        # not held any more
    assert emu.state()["LockDelays"] == {}            # release sets no lock-delay
    assert ok_true(put(emu, "k", acquire=s2))
    e4 = emu.kv_get("k")
    assert (e4["LockIndex"], e4["Value"]) == (2, None)   # empty body => null value
    assert ok_true(put(emu, "k", release=s2))
    assert emu.kv_get("k")["Value"] is None           # empty release body clears the value
    assert ok_false(put(emu, "missing", release=s1))


def test_acquire_errors(emu):
    bogus = "8b08aa1c-0000-0000-0000-000000000000"
    r = put(emu, "k", b"v", acquire=bogus)
    assert (r.status, r.text) == (500, 'invalid session "%s"' % bogus)
    r = put(emu, "k", b"v", acquire="")
    assert (r.status, r.text) == (500, "missing session")
    r = put(emu, "k", b"v", release="")
    assert (r.status, r.text) == (500, "missing session")
    assert emu.kv_get("k") is None


def test_plain_put_keeps_session_and_resets_flags(emu):
    s1 = session(emu)
    assert ok_true(put(emu, "k", b"v1", acquire=s1, flags=7))
    assert ok_true(put(emu, "k", b"v2"))              # advisory: succeeds while held
    e = emu.kv_get("k")
    assert (e["Session"], e["Value"], e["Flags"]) == (s1, b"v2", 0)
    # kvsSetTxn stores the request's LockIndex (0 from the HTTP API).
    assert e["LockIndex"] == 0
    assert ok_true(put(emu, "k", b"v3", flags=3))
    assert emu.kv_get("k")["Flags"] == 3
    # Release still works for the holder.
    assert ok_true(put(emu, "k", b"v4", release=s1))
    assert "Session" not in emu.kv_get("k")


def test_identical_write_keeps_modify_index(emu):
    assert ok_true(put(emu, "k", b"same", flags=1))
    e = emu.kv_get("k")
    assert ok_true(put(emu, "k", b"same", flags=1))
    assert emu.kv_get("k")["ModifyIndex"] == e["ModifyIndex"]
    assert get(emu, "k").index == e["ModifyIndex"]
    assert ok_true(put(emu, "k", b"same"))            # flags reset => a real write
    assert emu.kv_get("k")["ModifyIndex"] > e["ModifyIndex"]
    s1 = session(emu)
    assert ok_true(put(emu, "l", b"v", acquire=s1))
    e = emu.kv_get("l")
    assert ok_true(put(emu, "l", b"v", acquire=s1))   # re-acquire, nothing changes
    assert emu.kv_get("l")["ModifyIndex"] == e["ModifyIndex"]


def test_cas(emu):
    assert ok_true(put(emu, "k", b"1", cas=0))        # create only
    assert ok_false(put(emu, "k", b"2", cas=0))
    mi = emu.kv_get("k")["ModifyIndex"]
    assert ok_false(put(emu, "k", b"2", cas=mi + 100))
    assert ok_true(put(emu, "k", b"2", cas=mi))
    assert emu.kv_get("k")["Value"] == b"2"
    assert ok_false(put(emu, "other", b"x", cas=mi))  # cas=N on a missing key
    assert emu.kv_get("other") is None


def test_delete(emu):
    assert ok_true(emu.request("DELETE", "/v1/kv/missing"))
    assert ok_true(emu.request("DELETE", "/v1/kv/missing", cas=123))   # CAS on missing => true
    s1 = session(emu)
    assert ok_true(put(emu, "k", b"v", acquire=s1))
    mi = emu.kv_get("k")["ModifyIndex"]
    assert ok_false(emu.request("DELETE", "/v1/kv/k", cas=0))
    assert ok_false(emu.request("DELETE", "/v1/kv/k", cas=mi + 1))
    assert ok_true(emu.request("DELETE", "/v1/kv/k", cas=mi))     # ignores the lock holder
    assert emu.kv_get("k") is None
    r = get(emu, "k")
    assert r.status == 404 and r.index > mi           # tombstone index, not backwards
    for k in ("a/1", "a/2", "ab", "b"):
        assert ok_true(put(emu, k, b"x"))
    assert ok_true(emu.request("DELETE", "/v1/kv/a/", recurse=True))
    assert [k for k in ("a/1", "a/2", "ab", "b") if emu.kv_get(k)] == ["ab", "b"]
    r = emu.request("DELETE", "/v1/kv/a", recurse=True, cas=1)
    assert r.status == 400 and r.text.startswith("Conflicting flags: ")
    r = emu.request("DELETE", "/v1/kv/")
    assert (r.status, r.text) == (400, "Missing key name")


# ---------------------------------------------------------------------------
# KV read format (§1.7)


def test_get_format_and_headers(emu):
    s1 = session(emu)
    assert ok_true(put(emu, "svc/a", b'{"Node":"n1"}', acquire=s1, flags=42))
    assert ok_true(put(emu, "svc/b", b""))
    r = get(emu, "svc/a")
    read_meta_ok(r)
    e, = r.json()
    assert list(e) == ["LockIndex", "Key", "Flags", "Value", "Session", "CreateIndex",
                       "ModifyIndex"]
    assert base64.b64decode(e["Value"]) == b'{"Node":"n1"}' and e["Flags"] == 42
    assert r.index == e["ModifyIndex"]
    e, = get(emu, "svc/b").json()
    assert e["Value"] is None and "Session" not in e
    r = get(emu, "svc/a", raw=True)
    assert r.status == 200 and r.body == b'{"Node":"n1"}'
    assert r.headers["Content-Type"].startswith("text/plain")
    r = get(emu, "svc/", recurse=True)
    assert [x["Key"] for x in r.json()] == ["svc/a", "svc/b"]
    r = get(emu, "svc/", keys=True)
    assert r.json() == ["svc/a", "svc/b"]
    r = get(emu, "", keys=True, separator="/")
    assert r.json() == ["svc/"]
    for params in ({}, {"consistent": True}, {"stale": True}):
        read_meta_ok(get(emu, "svc/a", **params))
    r = get(emu, "svc/a", stale=True, consistent=True)
    assert r.status == 400


def test_missing_key_404_with_headers(emu):
    r = get(emu, "nope")
    assert r.status == 404 and r.body == b""
    read_meta_ok(r)
    assert r.index == 1                                # empty table: 0 is never emitted
    assert ok_true(put(emu, "other", b"x"))
    r = get(emu, "nope")
    assert r.status == 404 and r.index == emu.kv_get("other")["ModifyIndex"]
    assert get(emu, "nope/", recurse=True).status == 404


# ---------------------------------------------------------------------------
# blocking queries (§1.7 blockingQuery)


def test_blocking_returns_on_change(emu):
    assert ok_true(put(emu, "k", b"1"))
    idx = get(emu, "k").index
    bg = Bg(get, emu, "k", index=idx, wait="5m", timeout=30)
    waiters(emu, 1)
    assert ok_true(put(emu, "k", b"2"))
    r = bg.wait(5)
    assert r.status == 200 and r.index > idx
    assert base64.b64decode(r.json()[0]["Value"]) == b"2"


def test_blocking_unrelated_identical_write_does_not_wake(emu):
    assert ok_true(put(emu, "k", b"1"))
    idx = get(emu, "k").index
    bg = Bg(get, emu, "k", index=idx, wait="1m", timeout=30)
    waiters(emu, 1)
    assert ok_true(put(emu, "k", b"1"))                 # identical: no change
    assert ok_true(put(emu, "other", b"x"))            # another key
    assert not bg.done.wait(0.3)
    emu.advance(61 * 1000)
    r = bg.wait(5)
    assert r.status == 200 and r.index == idx


def test_blocking_timeout_on_virtual_clock(emu):
    assert ok_true(put(emu, "k", b"1"))
    idx = get(emu, "k").index
    bg = Bg(get, emu, "k", index=idx, wait="30s", timeout=30)
    waiters(emu, 1)
    emu.advance(29 * 1000)
    assert not bg.done.wait(0.2)
    emu.advance(2 * 1000)
    r = bg.wait(5)
    assert r.status == 200 and r.index == idx           # no change: same index


def test_blocking_timeout_in_real_time(emu):
    assert ok_true(put(emu, "k", b"1"))
    idx = get(emu, "k").index
    t0 = time.monotonic()
    r = get(emu, "k", index=idx, wait="300ms")
    assert 0.25 <= time.monotonic() - t0 < 5
    assert r.status == 200 and r.index == idx


def test_blocking_default_and_max_wait(emu):
    idx = get(emu, "k").index
    bg = Bg(get, emu, "k", index=idx, timeout=30)      # no wait: 5 min
    waiters(emu, 1)
    emu.advance(5 * MIN - 2000)
    assert not bg.done.wait(0.2)
    emu.advance(3000)
    assert bg.wait(5).status == 404
    bg = Bg(get, emu, "k", index=idx, wait="1h", timeout=30)   # capped at 10 min
    waiters(emu, 1)
    emu.advance(10 * MIN - 2000)
    assert not bg.done.wait(0.2)
    emu.advance(3000)
    assert bg.wait(5).status == 404


def test_blocking_index_zero_never_blocks(emu):
    t0 = time.monotonic()
    assert get(emu, "k", index=0, wait="5m").status == 404
    assert time.monotonic() - t0 < 2


def test_blocking_missing_key_wakes_on_any_kv_write(emu):
    r = get(emu, "absent")
    bg = Bg(get, emu, "absent", index=r.index, wait="5m", timeout=30)
    waiters(emu, 1)
    assert ok_true(put(emu, "elsewhere", b"x"))
    r2 = bg.wait(5)
    assert r2.status == 404 and r2.index > r.index     # "no guarantee of change"


def test_blocking_index_above_current(emu):
    assert ok_true(put(emu, "k", b"1"))
    idx = get(emu, "k").index
    bg = Bg(get, emu, "k", index=idx + 1000, wait="20s", timeout=30)
    waiters(emu, 1)
    assert ok_true(put(emu, "k", b"2"))                 # still below the asked index
    assert not bg.done.wait(0.2)
    emu.advance(21 * 1000)
    r = bg.wait(5)
    assert r.status == 200 and idx < r.index < idx + 1000


def test_blocking_wakes_on_ttl_invalidation(emu):
    sid = session(emu, TTL="10s")
    assert ok_true(put(emu, "k", b"me", acquire=sid))
    idx = get(emu, "k").index
    bg = Bg(get, emu, "k", index=idx, wait="5m", consistent=True, timeout=30)
    waiters(emu, 1)
    emu.advance(21 * 1000)
    r = bg.wait(5)
    assert r.index > idx and "Session" not in r.json()[0]


def test_blocking_session_info(emu):
    sid = session(emu)
    r = info(emu, sid)
    bg = Bg(info, emu, sid, index=r.index, wait="5m", timeout=30)
    waiters(emu, 1)
    assert ok_true(emu.request("PUT", "/v1/session/destroy/" + sid))
    r2 = bg.wait(5)
    assert r2.json() == [] and r2.index > r.index
    bg = Bg(emu.request, "GET", "/v1/session/list", index=r2.index, wait="5m", timeout=30)
    waiters(emu, 1)
    new = session(emu)
    r3 = bg.wait(5)
    assert [s["ID"] for s in r3.json()] == [new] and r3.index > r2.index


def test_invalid_wait_and_index(emu):
    for params in ({"wait": "abc"}, {"wait": "10"}, {"wait": "5x"}):
        r = get(emu, "k", index=1, **params)
        assert (r.status, r.text) == (400, "Invalid wait time"), params
    for bad in ("-1", "abc", "1.5", "99999999999999999999"):
        r = get(emu, "k", index=bad)
        assert (r.status, r.text) == (400, "Invalid index"), bad
    r = info(emu, "x", wait="soon")
    assert (r.status, r.text) == (400, "Invalid wait time")


def test_spurious_wakeup_hook(emu):
    assert ok_true(put(emu, "k", b"1"))
    idx = get(emu, "k").index
    bg = Bg(get, emu, "k", index=idx, wait="5m", timeout=30)
    waiters(emu, 1)
    emu.wake()
    r = bg.wait(5)
    assert r.status == 200 and r.index == idx           # returned, nothing changed


def test_index_goes_backwards(emu):
    for i in range(10):
        assert ok_true(put(emu, "k%d" % i, b"x"))
    idx = get(emu, "k9").index
    before = emu.state()["Index"]
    assert emu.index_backwards(by=5) == before - 5 == emu.state()["Index"]
    assert get(emu, "k9").index == idx - 5
    # A client still asking with the old index blocks until its wait ends.
    bg = Bg(get, emu, "k9", index=idx, wait="10s", timeout=30)
    waiters(emu, 1)
    emu.advance(11 * 1000)
    r = bg.wait(5)
    assert r.index == idx - 5                           # smaller than asked: reset to 0
    assert ok_true(put(emu, "k9", b"y"))
    assert get(emu, "k9").index >= 2


def test_snapshot_restore(emu):
    sid = session(emu, TTL="10s")
    assert ok_true(put(emu, "k", b"old", acquire=sid))
    snap = emu._emu("snapshot")["Index"]
    assert ok_true(put(emu, "k", b"new", acquire=sid))
    assert ok_true(put(emu, "later", b"x"))
    emu.advance(15 * 1000)
    assert emu._emu("restore")["Index"] == snap
    assert emu.kv_get("k")["Value"] == b"old" and emu.kv_get("later") is None
    assert get(emu, "k").index <= snap
    emu.advance(15 * 1000)                              # restore restarted the TTL timer
    assert info(emu, sid).json() != []


# ---------------------------------------------------------------------------
# HTTP errors (§1.1, §1.8)


def test_method_not_allowed_and_options(emu):
    r = emu.request("GET", "/v1/session/create")
    assert (r.status, r.headers["Allow"]) == (405, "OPTIONS,PUT")
    r = emu.request("POST", "/v1/kv/k", b"x")
    assert (r.status, r.headers["Allow"]) == (405, "OPTIONS,GET,PUT,DELETE")
    r = emu.request("DELETE", "/v1/session/info/x")
    assert (r.status, r.headers["Allow"]) == (405, "OPTIONS,GET")
    r = emu.request("OPTIONS", "/v1/kv/k")
    assert (r.status, r.headers["Allow"], r.body) == (200, "OPTIONS,GET,PUT,DELETE", b"")
    assert emu.request("GET", "/v1/nothing/here").status == 404
    assert emu.kv_get("k") is None


def test_missing_key_name_and_conflicting_flags(emu):
    for method in ("GET", "PUT"):
        r = emu.request(method, "/v1/kv/")
        assert (r.status, r.text) == (400, "Missing key name")
    s1 = session(emu)
    r = put(emu, "k", b"v", acquire=s1, release=s1)
    assert r.status == 400
    assert r.text == "Conflicting flags: acquire=%s&release=%s\n" % (s1, s1)
    r = put(emu, "k", b"v", cas=0, acquire=s1)
    assert r.status == 400 and r.text.startswith("Conflicting flags: ")
    r = put(emu, "k", b"v", flags="abc")
    assert (r.status, r.text) == (500, 'strconv.ParseUint: parsing "abc": invalid syntax')
    r = put(emu, "k", b"v", cas="-1")
    assert (r.status, r.text) == (500, 'strconv.ParseUint: parsing "-1": invalid syntax')
    assert emu.kv_get("k") is None


def test_value_size_limit(emu):
    assert ok_true(put(emu, "big", b"x" * 512 * 1024))
    r = put(emu, "big", b"y" * (512 * 1024 + 1))
    assert r.status == 413
    assert emu.kv_get("big")["Value"] == b"x" * 512 * 1024


def test_http_framing_like_libcurl(emu):
    """Keep-alive connections, chunked request bodies and Expect: 100-continue."""
    c = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=10)
    try:
        for method, path, body, status in (("PUT", "/v1/kv/a", b"1", 200),
                                           ("POST", "/v1/kv/a", b"ignored", 405),
                                           ("GET", "/v1/kv/zz", None, 404),
                                           ("PUT", "/v1/kv/b", b"2", 200)):
            c.request(method, path, body)
            r = c.getresponse()
            r.read()
            assert r.status == status, (method, path)
        c.request("PUT", "/v1/kv/c", body=iter([b"chu", b"nked"]), encode_chunked=True,
                  headers={"Transfer-Encoding": "chunked"})
        r = c.getresponse()
        assert (r.status, r.read()) == (200, b"true")
    finally:
        c.close()
    assert emu.kv_get("c")["Value"] == b"chunked"
    with socket.create_connection(("127.0.0.1", emu.port), timeout=10) as s:
        s.sendall(b"PUT /v1/kv/d HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 100")
        s.sendall(b"hello")
        resp = b""
        while not resp.endswith(b"true"):
            chunk = s.recv(4096)
            assert chunk, resp
            resp += chunk
        assert resp.startswith(b"HTTP/1.1 200")
    assert emu.kv_get("d")["Value"] == b"hello"


def test_other_datacenter(emu):
    r = get(emu, "k", dc="dc2")
    assert (r.status, r.text) == (500, "No path to datacenter")
    assert get(emu, "k", dc="dc1").status == 404


def test_status_leader(emu):
    r = emu.request("GET", "/v1/status/leader")
    assert r.status == 200 and r.json() == "127.0.0.1:8300"
    assert r.headers["Content-Type"] == "application/json"


def test_key_validation_modes(emu):
    assert ok_true(put(emu, "cfg/a b.json", b"x"))       # off by default
    emu._emu("key-validation", mode="1.21.5")
    r = put(emu, "cfg/a b.json", b"x")
    assert (r.status, r.text) == (500, 'invalid key name, keys should respect the '
                                       '"^[a-zA-Z0-9,_./\\\\-?&=]+$" format')
    assert get(emu, "cfg/a b.json").status == 500        # existing keys become unreachable
    assert ok_true(put(emu, "service/c1/leader", b"x"))
    emu._emu("key-validation", mode="strict")
    r = put(emu, "cfg/b.json", b"x")
    assert r.status == 400 and ".json" in r.text
    assert ok_true(put(emu, "service/c1/leader", b"y"))


# ---------------------------------------------------------------------------
# ACL mode


def test_acl_tokens(make_emu):
    emu = make_emu(acl_token="s3cret")
    r = emu.request("PUT", "/v1/session/create")
    assert (r.status, r.text) == (403, "Permission denied")
    r = emu.request("PUT", "/v1/session/create", headers={"X-Consul-Token": "wrong"})
    assert (r.status, r.text) == (403, "ACL not found")
    assert get(emu, "k", token="wrong").status == 403
    assert get(emu, "k", token="s3cret").status == 404
    assert get(emu, "k", headers={"X-Consul-Token": "s3cret"}).status == 404
    assert get(emu, "k", headers={"Authorization": "Bearer s3cret"}).status == 404
    assert get(emu, "k", headers={"Authorization": "bearer s3cret"}).status == 404
    # ?token wins over the header.
    assert get(emu, "k", token="wrong", headers={"X-Consul-Token": "s3cret"}).status == 403
    assert emu.request("GET", "/v1/status/leader").status == 200
    # Handler-level 400s come before the ACL check.
    assert emu.request("PUT", "/v1/kv/").status == 400


# ---------------------------------------------------------------------------
# fault injection (§4.4): state survives every fault


def test_fault_error500(emu):
    sid = session(emu, TTL="60s")
    assert ok_true(put(emu, "k", b"v", acquire=sid))
    emu.fault("error500")
    for method, path in (("GET", "/v1/kv/k"), ("PUT", "/v1/session/renew/" + sid),
                         ("GET", "/v1/status/leader"), ("PUT", "/v1/session/create")):
        r = emu.request(method, path)
        assert (r.status, r.text) == (500, "No known Consul servers"), path
    emu.fault("error500", body="rpc error making call: EOF")
    assert emu.request("GET", "/v1/kv/k").text == "rpc error making call: EOF"
    assert emu.state()["KV"][0]["Session"] == sid        # /_emu is never faulted
    emu.fault("none")
    assert emu.kv_get("k")["Session"] == sid


def test_fault_drop_ends_blocking_queries(emu):
    assert ok_true(put(emu, "k", b"v"))
    idx = get(emu, "k").index
    bg = Bg(get, emu, "k", index=idx, wait="5m", timeout=30)
    waiters(emu, 1)
    emu.fault("drop")
    with pytest.raises(OSError):
        bg.wait(5)
    with pytest.raises(OSError):
        get(emu, "k")
    with pytest.raises(OSError):
        put(emu, "k", b"lost")
    emu.fault("none")
    assert emu.kv_get("k")["Value"] == b"v"


def test_fault_error500_ends_blocking_queries(emu):
    idx = get(emu, "k").index
    bg = Bg(get, emu, "k", index=idx, wait="5m", timeout=30)
    waiters(emu, 1)
    emu.fault("error500")
    r = bg.wait(5)
    assert (r.status, r.text) == (500, "No known Consul servers")


def test_fault_hang_then_dropped(emu):
    emu.fault("hang")
    bg = Bg(put, emu, "k", b"v", timeout=30)
    waiters(emu, 1)
    assert not bg.done.wait(0.2)
    emu.fault("none")
    with pytest.raises(OSError):
        bg.wait(5)
    assert emu.kv_get("k") is None                      # never executed
    # A blocking query in progress hangs too, even when its answer is ready.
    assert ok_true(put(emu, "k", b"1"))
    idx = get(emu, "k").index
    bg = Bg(get, emu, "k", index=idx, wait="5m", timeout=30)
    waiters(emu, 1)
    emu.fault("hang")
    emu.advance(6 * MIN)
    assert not bg.done.wait(0.3)
    emu.fault("none")
    with pytest.raises(OSError):
        bg.wait(5)


def test_fault_count_and_path(emu):
    sid = session(emu, TTL="10s")
    emu.fault("error500", count=1, path="/v1/session/renew/")
    assert ok_true(put(emu, "k", b"v"))                 # other paths unaffected
    assert emu.request("PUT", "/v1/session/renew/" + sid).status == 500
    assert emu.request("PUT", "/v1/session/renew/" + sid).status == 200
    emu.fault("drop", count=2)
    for _ in range(2):
        with pytest.raises(OSError):
            get(emu, "k")
    assert get(emu, "k").status == 200


def test_fault_drop_response_applies_the_write(emu):
    """The answer is lost but the acquire happened (the ambiguous case)."""
    sid = session(emu)
    emu.fault("drop-response", count=1)
    with pytest.raises(OSError):
        put(emu, "k", b"me", acquire=sid)
    assert emu.kv_get("k")["Session"] == sid


def test_fault_delay(emu):
    emu.fault("delay", ms=400)
    t0 = time.monotonic()
    assert get(emu, "k").status == 404
    assert time.monotonic() - t0 >= 0.35
    emu.fault("none")


def test_requests_are_counted(emu):
    sid = session(emu, TTL="10s")
    for _ in range(3):
        emu.request("PUT", "/v1/session/renew/" + sid)
    assert emu.state()["Requests"]["PUT /v1/session/renew/"] == 3


# ---------------------------------------------------------------------------
# /v1/txn (§1.11)


def txn(emu, *ops, **params):
    return emu.request("PUT", "/v1/txn", [{"KV": op} for op in ops], **params)


def b64(s):
    return base64.b64encode(s).decode()


def test_txn_lock_check_session_and_rollback(emu):
    s1, s2 = session(emu, LockDelay="5s"), session(emu)
    r = txn(emu, {"Verb": "lock", "Key": "svc/leader", "Value": b64(b"n1"), "Session": s1},
            {"Verb": "get", "Key": "svc/leader"})
    assert r.status == 200, r
    body = r.json()
    assert body["Errors"] is None
    lock, got = body["Results"][0]["KV"], body["Results"][1]["KV"]
    assert lock["Value"] is None and lock["Session"] == s1 and lock["LockIndex"] == 1
    assert got["Value"] == b64(b"n1") and got["ModifyIndex"] == lock["ModifyIndex"]
    # Fenced write by the holder.
    r = txn(emu, {"Verb": "check-session", "Key": "svc/leader", "Session": s1},
            {"Verb": "set", "Key": "svc/data", "Value": b64(b"ok")})
    assert r.status == 200 and emu.kv_get("svc/data")["Value"] == b"ok"
    # A deposed writer: 409, nothing applied.
    r = txn(emu, {"Verb": "set", "Key": "svc/data", "Value": b64(b"stale")},
            {"Verb": "check-session", "Key": "svc/leader", "Session": s2})
    assert r.status == 409
    assert r.json() == {"Results": None, "Errors": [{
        "OpIndex": 1, "What": 'failed session check for key "svc/leader", current session '
                              '"%s" != "%s"' % (s1, s2)}]}
    assert emu.kv_get("svc/data")["Value"] == b"ok"
    r = txn(emu, {"Verb": "lock", "Key": "svc/leader", "Session": s2})
    assert r.status == 409
    assert r.json()["Errors"][0]["What"] == 'failed to lock key "svc/leader", lock is already held'
    emu.invalidate(s1)
    r = txn(emu, {"Verb": "lock", "Key": "svc/leader", "Session": s2})
    assert r.status == 409
    assert r.json()["Errors"][0]["What"] == 'failed to lock key "svc/leader" due to lock delay'
    emu.advance(5500)
    r = txn(emu, {"Verb": "lock", "Key": "svc/leader", "Session": s2})
    assert r.status == 200 and r.json()["Results"][0]["KV"]["LockIndex"] == 2


def test_txn_other_verbs(emu):
    s1 = session(emu)
    r = txn(emu, {"Verb": "get", "Key": "nope"})
    assert r.status == 409 and r.json()["Errors"][0]["What"] == 'key "nope" doesn\'t exist'
    read_meta_ok(r)                                      # a read-only txn
    assert txn(emu, {"Verb": "set", "Key": "k", "Value": b64(b"1")}).status == 200
    mi = emu.kv_get("k")["ModifyIndex"]
    r = txn(emu, {"Verb": "cas", "Key": "k", "Value": b64(b"2"), "Index": mi + 1})
    assert r.json()["Errors"][0]["What"] == 'failed to set key "k", index is stale'
    r = txn(emu, {"Verb": "check-index", "Key": "k", "Index": mi},
            {"Verb": "cas", "Key": "k", "Value": b64(b"2"), "Index": mi})
    assert r.status == 200 and emu.kv_get("k")["Value"] == b"2"
    r = txn(emu, {"Verb": "unlock", "Key": "k", "Session": s1})
    assert r.status == 409 and "failed to unlock key" in r.json()["Errors"][0]["What"]
    r = txn(emu, {"Verb": "lock", "Key": "k", "Session": "8b08aa1c-0000-0000-0000-000000000000"})
    assert r.json()["Errors"][0]["What"] == 'invalid session "8b08aa1c-0000-0000-0000-000000000000"'
    assert txn(emu, {"Verb": "lock", "Key": "k", "Session": s1}).status == 200
    assert txn(emu, {"Verb": "unlock", "Key": "k", "Session": s1}).status == 200
    assert "Session" not in emu.kv_get("k")
    assert txn(emu, {"Verb": "delete", "Key": "k"}).status == 200
    assert emu.kv_get("k") is None
    r = txn(emu, {"Verb": "frobnicate", "Key": "k"})
    assert r.status == 409 and r.json()["Errors"][0]["What"] == 'unknown KV verb "frobnicate"'
    r = emu.request("PUT", "/v1/txn", b"[{")
    assert r.status == 400 and r.text.startswith("Failed to parse body: ")
    r = emu.request("PUT", "/v1/txn", [{"KV": {"Verb": "get", "Key": "k"}}] * 129)
    assert r.status == 413


# ---------------------------------------------------------------------------
# process lifecycle


def test_jitter(make_emu):
    """With --jitter a blocking query may run up to wait/16 longer, never shorter."""
    emu = make_emu(jitter=True)
    idx = get(emu, "k").index
    bg = Bg(get, emu, "k", index=idx, wait="160s", timeout=30)
    waiters(emu, 1)
    emu.advance(159 * 1000)
    assert not bg.done.wait(0.2)
    emu.advance(11 * 1000 + 100)
    assert bg.wait(5).status == 404


def test_reset_drops_parked_requests(emu):
    sid = session(emu, TTL="10s")
    assert ok_true(put(emu, "k", b"v", acquire=sid))
    blocked = Bg(get, emu, "k", index=get(emu, "k").index, wait="5m", timeout=30)
    waiters(emu, 1)
    emu.advance(5000)
    emu.reset()
    with pytest.raises(OSError):
        blocked.wait(5)
    st = emu.state()
    assert (st["Index"], st["Sessions"], st["KV"], st["ClockOffsetMs"]) == (1, [], [], 0)
    assert get(emu, "k").index == 1


def test_stop_with_requests_in_progress(make_emu):
    emu = make_emu()
    idx = get(emu, "k").index
    blocked = Bg(get, emu, "k", index=idx, wait="5m", timeout=30)
    waiters(emu, 1)
    emu.fault("hang")
    hung = Bg(get, emu, "k", timeout=30)
    waiters(emu, 2)
    t0 = time.monotonic()
    emu.stop()
    assert time.monotonic() - t0 < 5
    for bg in (blocked, hung):
        with pytest.raises(OSError):
            bg.wait(5)
