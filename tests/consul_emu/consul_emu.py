#!/usr/bin/python3
"""Consul HTTP API emulator: a TEST FIXTURE for ltxfs's Consul lease, not a product part.

Real Consul cannot run in the test environment, so this program emulates the
subset of one Consul server (single datacenter "dc1", always the raft leader)
that a session + KV lock client uses, following the lease reference lease.md
(section 1: Consul API facts; section 4: this emulator's spec), which the C
lease client is written against.  Python 3 standard library only.

    consul_emu.py --addr 127.0.0.1:PORT [--node NAME] [--session-ttl-min 10s]
                  [--acl-token TOKEN] [--jitter] [--log]

It prints exactly one line, "listening on 127.0.0.1:PORT", to stdout once the
socket accepts connections (PORT 0 picks a free port and prints the real one),
then serves until SIGTERM/SIGINT.

Emulated endpoints
------------------
  PUT  /v1/session/create            PUT /v1/session/renew/:id
  PUT  /v1/session/destroy/:id       GET /v1/session/info/:id   (blocking)
  GET  /v1/session/list (blocking)   GET /v1/session/node/:node (blocking)
  GET|PUT|DELETE /v1/kv/:key         (index, wait, consistent, stale, raw, recurse,
                                      keys, separator, acquire, release, cas, flags)
  PUT  /v1/txn                       (KV verbs: set cas lock unlock get get-tree
                                      check-index check-session check-not-exists
                                      delete delete-cas delete-tree)
  PUT  /v1/catalog/register          (node, and node-level checks)
  GET  /v1/status/leader, /v1/status/peers
Every route enforces its methods (405 + "Allow: OPTIONS,<methods>", OPTIONS
answers the Allow header only); unknown paths are 404 with an empty body.

Which Consul code each behaviour mirrors (names as lease.md gives them)
------------------------------------------------------------------------
* agent/http.go `wrap`/`setMeta`/`setIndex`/`parseWait`/`parseConsistency`/
  `parseToken`: reads carry X-Consul-Index (0 is emitted as 1),
  X-Consul-KnownLeader: true, X-Consul-LastContact: 0 (and
  X-Consul-Effective-Consistency); `wait` is a Go duration (400 "Invalid wait
  time"), `index` a uint64 (400 "Invalid index"); ?stale with ?consistent is a
  400; the token comes from ?token, else X-Consul-Token, else
  "Authorization: Bearer" (scheme case-insensitive).  Handler errors are 400
  plain text, ACL errors 403, every RPC/state error 500 with the error text.
* agent/session_endpoint.go `SessionCreate`, `FixupLockDelay`, `FixupChecks`:
  defaults Node = agent node, checks = serfHealth, LockDelay 15s, Behavior
  release, no TTL; keys are matched case-insensitively; LockDelay is a Go
  duration string or a number of ns, and any value < 1000 ns is multiplied by
  1 s; a "Checks" key (even []) drops the serfHealth default (so do the newer
  "NodeChecks"/"ServiceChecks" keys); bad JSON is 400 "Request decode failed:".
  `SessionRenew`: 404 "Session id '<id>' not found"; `SessionGet`: 200 [] when
  unknown.
* agent/consul/session_endpoint.go `Apply`: "Invalid Behavior setting '<x>'",
  "Session TTL '<x>' invalid: <go error>", "Invalid Session TTL '<ns>', must be
  between [<min>=24h0m0s]" (all 500); TTL "0s" means no TTL.
* agent/consul/session_ttl.go `resetSessionTimer`/`initializeSessionTimers`:
  a TTL session is invalidated at create/renew + 2 x TTL
  (SessionTTLMultiplier); renew does not change any index; a "leader failover"
  (/_emu/failover) resets every timer.
* state/session.go `sessionCreateTxn`: "Missing node registration", "Missing
  check '<id>' registration", "Check '<id>' is in critical state".
* state/session.go `deleteSessionTxn` (TTL expiry, destroy, critical check,
  /_emu/invalidate): the session is removed; each key it holds is released
  (Session cleared, LockIndex and value kept, ModifyIndex bumped) or deleted
  (tombstone) per Behavior, and lock-delay(key) = now + min(LockDelay, 60 s)
  (MaxLockDelay) when > 0.  Destroy of an unknown id is a 200 `true`.
* agent/consul/kvs_endpoint.go `kvsPreApply`: an acquire during lock-delay
  answers `false` before anything else is checked (no error).
* state/kvs.go `kvsSetTxn`: a plain PUT/CAS keeps the holder's Session and
  stores the request's Flags (0 when absent) and LockIndex (always 0 from the
  HTTP API: the lock counter is NOT preserved by a plain PUT - derived from
  code); an identical write keeps ModifyIndex (DirEntry.Equal).
  `kvsLockTxn`: "missing session", 'invalid session "<id>"', held by another
  -> false, same session -> LockIndex kept, otherwise LockIndex + 1 (new key:
  1).  `kvsUnlockTxn`: not held by that session -> false, else Session cleared,
  LockIndex kept, value/flags replaced by the request's.  `kvsSetCASTxn`,
  `kvsDeleteTxn` (tombstone), `kvsDeleteCASTxn` (missing key -> true),
  `kvsDeleteTreeTxn`, `kvsGetTxn`/`kvsListTxn` and KVS.Get (index = the key's
  ModifyIndex, else the kvs+tombstones table index).
* agent/kvs_endpoint.go: "Missing key name", "Conflicting flags: <query>",
  413 above kv_max_value_size (512 KiB), strconv errors for flags/cas are 500,
  404 with an empty body (but with the index headers) for a missing key,
  ?raw as text/plain, Session omitted when empty, Value base64 or null.
* agent/consul/rpc.go `blockingQuery`: with index > 0 the query re-runs on
  every change until its index exceeds the requested one or `wait` (default
  5 min, max 10 min, optional jitter <= wait/16 with --jitter) elapses, then
  returns the current result (no guarantee of change).  Missing keys wake on
  any KV write.
* agent/consul/txn_endpoint.go + state/txn.go `txnKVS`: 200 {Results, Errors:
  null} or 409 {Results: null, Errors: [{OpIndex, What}]}, lock-delay checked
  per `lock` op before apply, values blanked in non-get results.

State model (lease.md 4.2): one raft-like global index (the first write gets 2,
never 0), table indexes for kvs (incl. tombstones), sessions and nodes,
tombstones, a lock-delay map, nodes with checks (the agent node has a passing
serfHealth).  Session ids are looked up case-insensitively (newer Consul's
lowercase string index), so a malformed id is simply "not found".

Emulator-only endpoints (never affected by faults), lease.md 4.4
----------------------------------------------------------------
  POST /_emu/advance?ms=N        virtual clock offset (TTL deadlines, lock-delay,
                                 blocking timeouts all use real time + offset)
  POST /_emu/invalidate/<sid>    health check critical -> invalidation path
  POST /_emu/check?node=&check=&status=   set a check's status (critical
                                 invalidates the sessions that use it)
  POST /_emu/failover            leader failover: every TTL deadline := now+2xTTL,
                                 index bumped
  POST /_emu/fault?mode=M[&count=N][&path=PREFIX][&body=TEXT][&ms=N]
        none          normal service
        error500      /v1 requests answer 500 TEXT (default "No known Consul
                      servers"; e.g. "rpc error making call: ...")
        drop          /v1 requests: connection closed without an answer
        drop-response /v1 requests are executed, then the connection is
                      closed without the answer
        hang          /v1 requests hang until the fault is changed, then are
                      dropped
        delay         /v1 requests are delayed by ms (real time)
      count limits the fault to the next N matching requests; path limits it to
      request paths starting with PREFIX.  error500/drop/hang set without count
      also end the blocking queries in progress (500 / close / hang).
  POST /_emu/wake                blocking queries return now, index unchanged
  POST /_emu/reset               back to a fresh server (index 1, no sessions, no
                                 keys, clock offset 0, no fault); parked requests
                                 are dropped.  Process options are kept.
  POST /_emu/index-backwards[?by=N]   every stored index goes back by N
                                 (default: half the current index)
  POST /_emu/snapshot, POST /_emu/restore   snapshot-restore: state and index
                                 go back to the snapshot (timers reset)
  POST /_emu/key-validation?mode=off|1.21.5|strict   1.21.5 = that release's
                                 key regex (500 "invalid key name, ..."), strict =
                                 validateKVKey of a later agent/kvs_endpoint.go
                                 (400); default off
  GET  /_emu/state               JSON dump (sessions, kv, tombstones,
                                 lock-delays, indexes, fault, waiters, counts)

Deliberately not emulated: raft/multiple servers, client agents, several
datacenters, services/health endpoints, prepared queries, namespaces, ACL
policies (one management token only), tombstone GC, rate limits.
"""

import argparse
import base64
import binascii
import copy
import json
import random
import re
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote_plus, unquote, urlsplit

NS = 1
US = 1000 * NS
MS = 1000 * US
SEC = 1000 * MS
MINUTE = 60 * SEC
HOUR = 60 * MINUTE

SESSION_TTL_MAX = 24 * HOUR          # structs.SessionTTLMax
SESSION_TTL_MULTIPLIER = 2           # structs.SessionTTLMultiplier
MAX_LOCK_DELAY = 60 * SEC            # structs.MaxLockDelay
DEFAULT_LOCK_DELAY = 15 * SEC
LOCK_DELAY_MIN_THRESHOLD = 1000      # FixupLockDelay
KV_MAX_VALUE_SIZE = 512 * 1024       # kv_max_value_size default
MAX_TXN_OPS = 128
DEFAULT_QUERY_TIME = 5 * MINUTE      # blockingQuery defaults
MAX_QUERY_TIME = 10 * MINUTE
JITTER_FRACTION = 16
SERF_CHECK = "serfHealth"
DATACENTER = "dc1"
LEADER = "127.0.0.1:8300"
MAX_BODY = 64 * 1024 * 1024

JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"


# --------------------------------------------------------------------------
# Go-compatible parsing and formatting helpers


class GoError(Exception):
    """An error whose text is what the Go code would print."""


def go_quote(s):
    """strconv.Quote (close enough: ASCII escapes, printable unicode kept)."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif o < 0x20 or o == 0x7F:
            out.append("\\x%02x" % o)
        elif not ch.isprintable():
            out.append("\\u%04x" % o if o <= 0xFFFF else "\\U%08x" % o)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


_DIGITS = "0123456789"
_UNITS = {"ns": NS, "us": US, "\u00b5s": US, "\u03bcs": US, "ms": MS, "s": SEC,
          "m": MINUTE, "h": HOUR}
_INT64_MAX = (1 << 63) - 1


def parse_go_duration(text):
    """time.ParseDuration: returns integer nanoseconds or raises GoError."""
    orig = text
    s = text
    neg = False
    if s and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if s == "":
        raise GoError("time: invalid duration " + go_quote(orig))
    total = 0
    while s:
        i = 0
        while i < len(s) and s[i] in _DIGITS:
            i += 1
        pre = i > 0
        whole = int(s[:i]) if pre else 0
        s = s[i:]
        frac, scale, post = 0, 1, False
        if s.startswith("."):
            s = s[1:]
            i = 0
            while i < len(s) and s[i] in _DIGITS:
                i += 1
            post = i > 0
            if post:
                frac, scale = int(s[:i]), 10 ** i
            s = s[i:]
        if not pre and not post:
            raise GoError("time: invalid duration " + go_quote(orig))
        i = 0
        while i < len(s) and s[i] != "." and s[i] not in _DIGITS:
            i += 1
        if i == 0:
            raise GoError("time: missing unit in duration " + go_quote(orig))
        unit = s[:i]
        s = s[i:]
        if unit not in _UNITS:
            raise GoError("time: unknown unit %s in duration %s" % (go_quote(unit), go_quote(orig)))
        mult = _UNITS[unit]
        value = whole * mult + (frac * mult) // scale
        total += value
        if total > _INT64_MAX:
            raise GoError("time: invalid duration " + go_quote(orig))
    return -total if neg else total


def _frac(v, prec):
    """v / 10**prec printed like Go's fmtFrac+fmtInt (trailing zeros dropped)."""
    whole, rest = divmod(v, 10 ** prec)
    digits = ("%0*d" % (prec, rest)).rstrip("0") if prec else ""
    return str(whole) + ("." + digits if digits else "")


def format_go_duration(d):
    """time.Duration.String: 0s, 1.5s, 10s, 1m30s, 24h0m0s, 500ms, 1.5µs, 7ns."""
    if d == 0:
        return "0s"
    sign = "-" if d < 0 else ""
    u = abs(d)
    if u < SEC:
        if u < US:
            return "%s%dns" % (sign, u)
        if u < MS:
            return sign + _frac(u, 3) + "\u00b5s"
        return sign + _frac(u, 6) + "ms"
    out = _frac(u % MINUTE, 9) + "s"
    minutes = u // MINUTE
    if minutes:
        out = "%dm" % (minutes % 60) + out
        hours = minutes // 60
        if hours:
            out = "%dh" % hours + out
    return sign + out


def parse_uint64(text):
    """strconv.ParseUint(text, 10, 64)."""
    if text == "" or any(c not in _DIGITS for c in text):
        raise GoError("strconv.ParseUint: parsing %s: invalid syntax" % go_quote(text))
    v = int(text)
    if v >= 1 << 64:
        raise GoError("strconv.ParseUint: parsing %s: value out of range" % go_quote(text))
    return v


def go_json_type(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def go_json_syntax_error(exc, doc):
    """A Go-like message for a json.JSONDecodeError."""
    if exc.pos >= len(doc.rstrip()):
        return "unexpected EOF"
    ch = doc[exc.pos]
    return "invalid character %s looking for beginning of value" % (
        "'" + ch + "'" if ch.isprintable() else go_quote(ch))


# --------------------------------------------------------------------------
# Errors raised by handlers


class HTTPErr(Exception):
    def __init__(self, code, body="", headers=None):
        super().__init__(body)
        self.code = code
        self.body = body
        self.headers = headers or {}


class Drop(Exception):
    """Close the connection without answering."""


def rpc_error(text):
    """Any RPC/state-store error: 500 with the plain error text (http.go wrap)."""
    return HTTPErr(500, text)


# --------------------------------------------------------------------------
# KV entries: plain dicts, replaced (never mutated) once stored, so a shallow
# copy of the table is a consistent snapshot (used for txn rollback).


def new_entry(key, value=None, flags=0, session="", lock_index=0):
    return {"Key": key, "LockIndex": lock_index, "Flags": flags,
            "Value": value if value else None, "Session": session,
            "CreateIndex": 0, "ModifyIndex": 0}


def entries_equal(a, b):
    """structs.DirEntry.Equal: LockIndex, Key, Flags, Value, Session."""
    return (a["LockIndex"] == b["LockIndex"] and a["Key"] == b["Key"]
            and a["Flags"] == b["Flags"] and (a["Value"] or b"") == (b["Value"] or b"")
            and a["Session"] == b["Session"])


def render_entry(e, with_value=True):
    d = {"LockIndex": e["LockIndex"], "Key": e["Key"], "Flags": e["Flags"],
         "Value": (base64.b64encode(e["Value"]).decode("ascii")
                   if with_value and e["Value"] else None)}
    if e["Session"]:
        d["Session"] = e["Session"]
    d["CreateIndex"] = e["CreateIndex"]
    d["ModifyIndex"] = e["ModifyIndex"]
    return d


# --------------------------------------------------------------------------
# The emulated server state


class Emulator:
    def __init__(self, node="consul-emu", ttl_min=10 * SEC, acl_token=None, jitter=False):
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.node_name = node
        self.ttl_min = ttl_min
        self.acl_token = acl_token
        self.jitter = jitter
        self.fault_gen = 0
        self.spurious_gen = 0
        self.reset_gen = 0
        self.waiters = 0
        self._init_state()
        self.stopping = False

    def _init_state(self):
        """The state of a fresh server (also /_emu/reset).  Lock held or unshared."""
        node = self.node_name
        self.offset = 0.0                      # virtual clock offset, seconds
        self.index = 1                         # last applied raft index (1 reserved)
        self.idx_kvs = 0                       # kvs + tombstones table index
        self.idx_sessions = 0
        self.idx_nodes = 1
        self.sessions = {}                     # lowercase id -> session dict
        self.deadlines = {}                    # lowercase id -> virtual deadline
        self.kv = {}                           # key -> entry
        self.tombstones = {}                   # key -> delete index
        self.lock_delay = {}                   # key -> virtual time until
        self.nodes = {node: {"Node": node, "Address": "127.0.0.1", "CreateIndex": 1,
                             "ModifyIndex": 1}}
        self.checks = {node: {SERF_CHECK: "passing"}}
        self.snapshot = None
        self.key_validation = "off"
        self.fault = {"Mode": "none", "Count": None, "Path": "", "Body": "", "Ms": 0}
        self.requests = {}

    def reset(self):
        """Back to a fresh server; requests parked in the emulator are dropped."""
        with self.lock:
            self._init_state()
            self.reset_gen += 1
            self.fault_gen += 1
            self._changed()
            while self.waiters and not self.stopping:
                self.cond.wait(0.1)

    # ---- clock and index

    def now(self):
        return time.monotonic() + self.offset

    def _apply(self):
        """One raft apply: the global index moves forward."""
        self.index += 1
        return self.index

    def _changed(self):
        self.cond.notify_all()

    # ---- ACL

    def authorize(self, token):
        if self.acl_token is None:
            return
        if not token:
            raise HTTPErr(403, "Permission denied")
        if token != self.acl_token:
            raise HTTPErr(403, "ACL not found")

    # ---- sessions

    def _ttl_ns(self, sess):
        ttl = sess["TTL"]
        if not ttl:
            return 0
        try:
            return parse_go_duration(ttl)
        except GoError:
            return 0

    def _reset_timer(self, sid):
        sess = self.sessions[sid]
        ttl = self._ttl_ns(sess)
        if ttl > 0:
            self.deadlines[sid] = self.now() + SESSION_TTL_MULTIPLIER * ttl / 1e9
        else:
            self.deadlines.pop(sid, None)

    def expire_due(self):
        """Invalidate every session whose TTL timer has fired (lock held)."""
        now = self.now()
        due = sorted((dl, sid) for sid, dl in self.deadlines.items() if dl <= now)
        for _, sid in due:
            self.invalidate(sid)

    def invalidate(self, sid):
        """deleteSessionTxn: one raft apply removing the session (lock held).

        Returns False when the session does not exist (no-op)."""
        sid = sid.lower()
        sess = self.sessions.get(sid)
        if sess is None:
            return False
        idx = self._apply()
        del self.sessions[sid]
        self.deadlines.pop(sid, None)
        self.idx_sessions = idx
        delay = min(sess["LockDelay"], MAX_LOCK_DELAY)
        now = self.now()
        for key in sorted(k for k, e in self.kv.items() if e["Session"] == sess["ID"]):
            e = self.kv[key]
            if sess["Behavior"] == "delete":
                self._kvs_delete(idx, key)
            else:
                ne = dict(e)
                ne["Session"] = ""
                self._kvs_set(idx, ne, update_session=True)
            if delay > 0:
                until = now + delay / 1e9
                self.lock_delay[key] = max(self.lock_delay.get(key, 0.0), until)
        self._changed()
        return True

    def session_create(self, s):
        if not s["Node"]:
            raise rpc_error("Must provide Node")
        if s["Behavior"] == "":
            s["Behavior"] = "release"
        if s["Behavior"] not in ("release", "delete"):
            raise rpc_error("Invalid Behavior setting '%s'" % s["Behavior"])
        if s["TTL"] != "":
            try:
                ttl = parse_go_duration(s["TTL"])
            except GoError as e:
                raise rpc_error("Session TTL '%s' invalid: %s" % (s["TTL"], e))
            if ttl != 0 and (ttl < self.ttl_min or ttl > SESSION_TTL_MAX):
                raise rpc_error("Invalid Session TTL '%d', must be between [%s=%s]" % (
                    ttl, format_go_duration(self.ttl_min), format_go_duration(SESSION_TTL_MAX)))
        # sessionCreateTxn
        if s["Node"] not in self.nodes:
            raise rpc_error("Missing node registration")
        node_checks = self.checks.get(s["Node"], {})
        wanted = list(s["NodeChecks"] or []) + [c["ID"] for c in (s["ServiceChecks"] or [])]
        for cid in wanted:
            status = node_checks.get(cid)
            if status is None:
                raise rpc_error("Missing check '%s' registration" % cid)
            if status == "critical":
                raise rpc_error("Check '%s' is in %s state" % (cid, status))
        idx = self._apply()
        while True:
            sid = str(uuid.uuid4())
            if sid not in self.sessions:
                break
        sess = {"ID": sid, "Name": s["Name"], "Node": s["Node"], "LockDelay": s["LockDelay"],
                "Behavior": s["Behavior"], "TTL": s["TTL"], "NodeChecks": s["NodeChecks"] or None,
                "ServiceChecks": s["ServiceChecks"] or None, "CreateIndex": idx,
                "ModifyIndex": idx}
        self.sessions[sid] = sess
        self.idx_sessions = idx
        self._reset_timer(sid)
        self._changed()
        return sid

    def session_get(self, sid):
        return self.sessions.get(sid.lower())

    def set_check(self, node, check, status):
        """Set a node check's status; critical invalidates its sessions."""
        if node not in self.nodes:
            raise rpc_error("Missing node registration")
        self._apply()
        self.checks.setdefault(node, {})[check] = status
        self.idx_nodes = self.index
        if status == "critical":
            for sid in sorted(self.sessions):
                s = self.sessions[sid]
                ids = list(s["NodeChecks"] or []) + [c["ID"] for c in (s["ServiceChecks"] or [])]
                if s["Node"] == node and check in ids:
                    self.invalidate(sid)
        self._changed()

    # ---- KV state functions (kvs.go)

    def _kvs_set(self, idx, entry, update_session):
        """kvsSetTxn: returns the stored entry (or the unchanged existing one)."""
        existing = self.kv.get(entry["Key"])
        entry["CreateIndex"] = existing["CreateIndex"] if existing else idx
        if not update_session:
            entry["Session"] = existing["Session"] if existing else ""
        if existing is not None and entries_equal(existing, entry):
            entry["ModifyIndex"] = existing["ModifyIndex"]
            return existing
        entry["ModifyIndex"] = idx
        self.kv[entry["Key"]] = entry
        self.tombstones.pop(entry["Key"], None)
        self.idx_kvs = idx
        return entry

    def _kvs_delete(self, idx, key):
        """kvsDeleteTxn: delete + tombstone; no-op on a missing key."""
        if key not in self.kv:
            return
        del self.kv[key]
        self.tombstones[key] = idx
        self.idx_kvs = idx

    def _kvs_delete_cas(self, idx, cidx, key):
        e = self.kv.get(key)
        if e is None or e["ModifyIndex"] != cidx:
            return e is None
        self._kvs_delete(idx, key)
        return True

    def _kvs_delete_tree(self, idx, prefix):
        for key in sorted(k for k in self.kv if k.startswith(prefix)):
            self._kvs_delete(idx, key)

    def _kvs_set_cas(self, idx, entry, cidx):
        existing = self.kv.get(entry["Key"])
        if cidx == 0 and existing is not None:
            return False
        if cidx != 0 and existing is None:
            return False
        if existing is not None and cidx != 0 and cidx != existing["ModifyIndex"]:
            return False
        self._kvs_set(idx, entry, update_session=False)
        return True

    def _kvs_lock(self, idx, entry):
        """kvsLockTxn."""
        if entry["Session"] == "":
            raise rpc_error("missing session")
        sess = self.session_get(entry["Session"])
        if sess is None:
            raise rpc_error("invalid session %s" % go_quote(entry["Session"]))
        entry["Session"] = sess["ID"]
        existing = self.kv.get(entry["Key"])
        if existing is not None:
            if existing["Session"] == entry["Session"]:
                entry["LockIndex"] = existing["LockIndex"]
            elif existing["Session"] != "":
                return False
            else:
                entry["LockIndex"] = existing["LockIndex"] + 1
        else:
            entry["LockIndex"] = 1
        self._kvs_set(idx, entry, update_session=True)
        return True

    def _kvs_unlock(self, idx, entry):
        """kvsUnlockTxn."""
        if entry["Session"] == "":
            raise rpc_error("missing session")
        existing = self.kv.get(entry["Key"])
        if existing is None or existing["Session"] != entry["Session"]:
            return False
        entry["Session"] = ""
        entry["LockIndex"] = existing["LockIndex"]
        self._kvs_set(idx, entry, update_session=True)
        return True

    def lock_delay_active(self, key):
        until = self.lock_delay.get(key)
        if until is None:
            return False
        if until > self.now():
            return True
        del self.lock_delay[key]
        return False

    def kvs_apply(self, op, entry, cidx=0):
        """KVS.Apply (kvsPreApply + FSM); returns the boolean answer."""
        if op == "lock" and self.lock_delay_active(entry["Key"]):
            return False
        idx = self._apply()
        try:
            if op == "set":
                self._kvs_set(idx, entry, update_session=False)
                return True
            if op == "cas":
                return self._kvs_set_cas(idx, entry, cidx)
            if op == "lock":
                return self._kvs_lock(idx, entry)
            if op == "unlock":
                return self._kvs_unlock(idx, entry)
            if op == "delete":
                self._kvs_delete(idx, entry["Key"])
                return True
            if op == "delete-cas":
                return self._kvs_delete_cas(idx, cidx, entry["Key"])
            if op == "delete-tree":
                self._kvs_delete_tree(idx, entry["Key"])
                return True
            raise rpc_error("Invalid KVS operation")
        finally:
            self._changed()

    def kvs_get(self, key):
        """KVS.Get: (index, [entry] or [])."""
        e = self.kv.get(key)
        if e is None:
            return self.idx_kvs, []
        return e["ModifyIndex"], [e]

    def _prefix_index(self, prefix, entries):
        """kvsListTxn's index: max of the entries and the prefix's tombstones."""
        lindex = max((e["ModifyIndex"] for e in entries), default=0)
        if prefix:
            gindex = max((i for k, i in self.tombstones.items() if k.startswith(prefix)),
                         default=0)
            lindex = max(lindex, gindex)
        else:
            lindex = self.idx_kvs
        return lindex if lindex else self.idx_kvs

    def kvs_list(self, prefix):
        entries = [self.kv[k] for k in sorted(self.kv) if k.startswith(prefix)]
        return self._prefix_index(prefix, entries), entries

    def kvs_keys(self, prefix, sep):
        entries = [self.kv[k] for k in sorted(self.kv) if k.startswith(prefix)]
        keys = []
        for e in entries:
            k = e["Key"]
            if sep:
                pos = k.find(sep, len(prefix))
                if pos >= 0:
                    k = k[:pos + len(sep)]
            if not keys or keys[-1] != k:
                keys.append(k)
        return self._prefix_index(prefix, entries), keys

    # ---- blocking queries

    def blocking(self, req, min_index, wait_ns, query):
        """blockingQuery (lock held).  query() -> (index, result)."""
        if wait_ns > MAX_QUERY_TIME:
            wait_ns = MAX_QUERY_TIME
        elif wait_ns <= 0:
            wait_ns = DEFAULT_QUERY_TIME
        if self.jitter:
            wait_ns += random.randrange(wait_ns // JITTER_FRACTION + 1)
        deadline = self.now() + wait_ns / 1e9
        fault_gen, spurious, reset = self.fault_gen, self.spurious_gen, self.reset_gen
        self.waiters += 1
        try:
            while True:
                # A fault set meanwhile wins over a result that is ready.
                if self.stopping or self.reset_gen != reset:
                    raise Drop()
                if self.fault_gen != fault_gen:
                    fault_gen = self.fault_gen
                    self._fault_in_flight(req)
                self.expire_due()
                idx, result = query()
                idx = max(idx, 1)
                if min_index == 0 or idx > min_index:
                    return idx, result
                if self.spurious_gen != spurious:
                    return idx, result
                remaining = deadline - self.now()
                if remaining <= 0:
                    return idx, result
                self.cond.wait(min(remaining, 5.0))
        finally:
            self.waiters -= 1
            self._changed()

    # ---- faults

    def _fault_matches(self, path):
        f = self.fault
        return f["Mode"] != "none" and path.startswith(f["Path"] or "/v1/")

    def fault_on_arrival(self, path):
        """Returns the fault (dict copy + gen) applying to a new /v1 request."""
        with self.lock:
            f = self.fault
            if not self._fault_matches(path):
                return None
            if f["Count"] is not None:
                if f["Count"] <= 0:
                    return None
                f["Count"] -= 1
            return dict(f, Gen=self.fault_gen)

    def hang_until_changed(self, gen, count=True):
        """Lock held.  Waits until the fault setting changes, then drops.
        count: the request is not already counted in self.waiters."""
        self.waiters += count
        try:
            while self.fault_gen == gen and not self.stopping:
                self.cond.wait(5.0)
        finally:
            self.waiters -= count
            self._changed()
        raise Drop()

    def _fault_in_flight(self, req):
        """A fault set while a blocking query waits (lock held)."""
        f = self.fault
        if f["Count"] is not None or not self._fault_matches(req.route_path):
            return
        if f["Mode"] == "error500":
            raise HTTPErr(500, f["Body"] or "No known Consul servers")
        if f["Mode"] == "drop":
            raise Drop()
        if f["Mode"] == "hang":
            self.hang_until_changed(self.fault_gen, count=False)

    def set_fault(self, mode, count=None, path="", body="", ms=0):
        with self.lock:
            self.fault = {"Mode": mode, "Count": count, "Path": path, "Body": body, "Ms": ms}
            self.fault_gen += 1
            self._changed()

    # ---- emulator hooks

    def advance(self, ms):
        with self.lock:
            self.offset += ms / 1000.0
            self.expire_due()
            self._changed()

    def failover(self):
        with self.lock:
            self._apply()
            for sid in list(self.sessions):
                self._reset_timer(sid)
            self._changed()

    def index_backwards(self, by):
        with self.lock:
            if by is None:
                by = self.index // 2
            by = max(0, min(by, self.index - 2))

            def back(i):
                return max(1, i - by) if i else 0

            self.index = max(2, self.index - by)
            self.idx_kvs = back(self.idx_kvs)
            self.idx_sessions = back(self.idx_sessions)
            self.idx_nodes = back(self.idx_nodes)
            for key, e in list(self.kv.items()):
                ne = dict(e)
                ne["CreateIndex"] = back(e["CreateIndex"])
                ne["ModifyIndex"] = back(e["ModifyIndex"])
                self.kv[key] = ne
            for key in self.tombstones:
                self.tombstones[key] = back(self.tombstones[key])
            for s in self.sessions.values():
                s["CreateIndex"] = back(s["CreateIndex"])
                s["ModifyIndex"] = back(s["ModifyIndex"])
            self._changed()
            return self.index

    _SNAP_FIELDS = ("index", "idx_kvs", "idx_sessions", "idx_nodes", "sessions", "kv",
                    "tombstones", "nodes", "checks")

    def take_snapshot(self):
        with self.lock:
            self.snapshot = {f: copy.deepcopy(getattr(self, f)) for f in self._SNAP_FIELDS}
            return self.index

    def restore_snapshot(self):
        with self.lock:
            if self.snapshot is None:
                raise HTTPErr(400, "no snapshot taken")
            for f in self._SNAP_FIELDS:
                setattr(self, f, copy.deepcopy(self.snapshot[f]))
            self.deadlines = {}
            for sid in self.sessions:
                self._reset_timer(sid)
            self._changed()
            return self.index

    def wake(self):
        with self.lock:
            self.spurious_gen += 1
            self._changed()

    def dump(self):
        with self.lock:
            self.expire_due()
            now = self.now()
            sessions = []
            for sid in sorted(self.sessions):
                d = dict(self.sessions[sid])
                dl = self.deadlines.get(sid)
                d["ExpiresInMs"] = None if dl is None else int((dl - now) * 1000)
                sessions.append(d)
            kv = []
            for k in sorted(self.kv):
                d = render_entry(self.kv[k])
                d["ValueText"] = (self.kv[k]["Value"] or b"").decode("utf-8", "replace")
                kv.append(d)
            delays = {k: int((u - now) * 1000) for k, u in sorted(self.lock_delay.items())
                      if u > now}
            return {"Index": self.index, "KVIndex": self.idx_kvs,
                    "SessionsIndex": self.idx_sessions, "NodesIndex": self.idx_nodes,
                    "ClockOffsetMs": int(self.offset * 1000), "Node": self.node_name,
                    "SessionTTLMin": format_go_duration(self.ttl_min),
                    "Sessions": sessions, "KV": kv,
                    "Tombstones": dict(sorted(self.tombstones.items())),
                    "LockDelays": delays, "Nodes": sorted(self.nodes),
                    "Checks": self.checks, "Fault": dict(self.fault),
                    "KeyValidation": self.key_validation, "Waiters": self.waiters,
                    "Requests": dict(sorted(self.requests.items()))}

    # ---- background TTL reaper and shutdown

    def reaper(self):
        with self.lock:
            while not self.stopping:
                self.expire_due()
                timeout = 1.0
                if self.deadlines:
                    timeout = min(timeout, max(0.001, min(self.deadlines.values()) - self.now()))
                self.cond.wait(timeout)

    def stop(self):
        with self.lock:
            self.stopping = True
            self._changed()


# --------------------------------------------------------------------------
# Request decoding helpers


def decode_session_body(raw, agent_node):
    """SessionCreate + FixupLockDelay + FixupChecks.  Raises HTTPErr 400."""
    s = {"Name": "", "Node": agent_node, "LockDelay": DEFAULT_LOCK_DELAY, "Behavior": "release",
         "TTL": "", "NodeChecks": [SERF_CHECK], "ServiceChecks": None}

    def fail(msg):
        return HTTPErr(400, "Request decode failed: " + msg)

    text = raw.decode("utf-8", "replace")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise fail(go_json_syntax_error(e, text))
    if doc is None:
        return s
    if not isinstance(doc, dict):
        raise fail("json: cannot unmarshal %s into Go value of type structs.Session"
                   % go_json_type(doc))

    def type_err(field, v, gotype):
        return fail("json: cannot unmarshal %s into Go struct field Session.%s of type %s"
                    % (go_json_type(v), field, gotype))

    fields = {k.lower(): (k, v) for k, v in doc.items()}
    if any(name in fields for name in ("checks", "nodechecks", "servicechecks")):
        s["NodeChecks"] = None
    for name in ("name", "node", "behavior", "ttl"):
        if name in fields:
            k, v = fields[name]
            canon = {"name": "Name", "node": "Node", "behavior": "Behavior", "ttl": "TTL"}[name]
            if v is None:
                continue
            if not isinstance(v, str):
                raise type_err(canon, v, "string" if name in ("name", "node", "ttl")
                               else "structs.SessionBehavior")
            s[canon] = v
    if "lockdelay" in fields:
        _, v = fields["lockdelay"]
        if isinstance(v, str):
            try:
                d = parse_go_duration(v)
            except GoError as e:
                raise fail(str(e))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            d = int(v)
        elif v is None:
            d = s["LockDelay"]
        else:
            raise type_err("LockDelay", v, "time.Duration")
        if d < LOCK_DELAY_MIN_THRESHOLD:
            d *= SEC
        s["LockDelay"] = d
    node_checks = []
    for name, canon in (("nodechecks", "NodeChecks"), ("checks", "Checks")):
        if name in fields:
            _, v = fields[name]
            if v is None:
                continue
            if not isinstance(v, list):
                raise type_err(canon, v, "[]string" if name == "nodechecks" else "[]types.CheckID")
            for c in v:
                if not isinstance(c, str):
                    raise type_err(canon, c, "string")
                if c not in node_checks:
                    node_checks.append(c)
    if s["NodeChecks"] is None:
        s["NodeChecks"] = node_checks
    if "servicechecks" in fields:
        _, v = fields["servicechecks"]
        if v is not None:
            if not isinstance(v, list):
                raise type_err("ServiceChecks", v, "[]structs.ServiceCheck")
            out = []
            for c in v:
                if not isinstance(c, dict):
                    raise type_err("ServiceChecks", c, "structs.ServiceCheck")
                cf = {k.lower(): val for k, val in c.items()}
                out.append({"ID": str(cf.get("id") or ""),
                            "Namespace": str(cf.get("namespace") or "")})
            s["ServiceChecks"] = out
    return s


# Consul 1.21.5 (PR #22682, reverted by #22850): keys must match this regular
# expression, else 500 'invalid key name, keys should respect the "..." format'.
KV_KEY_PATTERN_1_21_5 = re.compile(r"^[a-zA-Z0-9,_./\-?&=]+\Z")


def validate_kv_key_strict(key):
    """validateKVKey of newer agent/kvs_endpoint.go (strict mode only)."""
    if key.startswith("/"):
        return "key must not begin with a '/'"
    pos = 0                                  # Go ranges over runes, i is a byte offset
    for ch in key:
        if not (ch.isascii() and (ch.isalnum() or ch in ",-_./")):
            return ("key contains invalid character '%s' at position %d. Only alphanumeric "
                    "characters and ,-_./ are allowed" % (ch, pos))
        pos += len(ch.encode("utf-8"))
    if "../" in key or "..\\" in key:
        return "key contains path traversal sequence"
    for ext in (".js", ".css", ".html", ".htm", ".xml", ".json", ".txt", ".log", ".php",
                ".asp", ".jsp", ".cgi", ".pl", ".py", ".rb", ".sh", ".exe", ".dll", ".bat",
                ".cmd", ".com", ".scr", ".vbs", ".pdf", ".doc", ".docx", ".xls", ".xlsx",
                ".ppt", ".pptx", ".zip", ".rar", ".tar", ".gz", ".7z", ".bz2", ".jpg",
                ".jpeg", ".png", ".gif", ".svg", ".ico", ".bmp", ".mp3", ".mp4", ".avi",
                ".mov", ".wmv", ".flv", ".swf", ".woff", ".woff2", ".ttf", ".eot", ".otf"):
        if key.lower().endswith(ext):
            return ("key contains suspicious file extension '%s' that may be cached by proxies"
                    % ext)
    return None


class Query:
    """url.Values: ordered multi-map, Get returns the first value."""

    def __init__(self, raw):
        self.pairs = parse_qsl(raw, keep_blank_values=True)
        self.map = {}
        for k, v in self.pairs:
            self.map.setdefault(k, []).append(v)

    def has(self, k):
        return k in self.map

    def get(self, k):
        return self.map.get(k, [""])[0]

    def encode(self):
        return "&".join("%s=%s" % (quote_plus(k, safe=""), quote_plus(v, safe=""))
                        for k in sorted(self.map) for v in self.map[k])


# --------------------------------------------------------------------------
# HTTP layer

ROUTES = [
    # (path or path prefix, is a prefix, allowed methods, handler h_<name>)
    ("/v1/session/create", False, ("PUT",), "session_create"),
    ("/v1/session/destroy/", True, ("PUT",), "session_destroy"),
    ("/v1/session/renew/", True, ("PUT",), "session_renew"),
    ("/v1/session/info/", True, ("GET",), "session_info"),
    ("/v1/session/node/", True, ("GET",), "session_node"),
    ("/v1/session/list", False, ("GET",), "session_list"),
    ("/v1/kv/", True, ("GET", "PUT", "DELETE"), "kvs"),
    ("/v1/txn", False, ("PUT",), "txn"),
    ("/v1/catalog/register", False, ("PUT",), "catalog_register"),
    ("/v1/status/leader", False, ("GET",), "status_leader"),
    ("/v1/status/peers", False, ("GET",), "status_peers"),
]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "consul-emu"

    def version_string(self):
        return self.server_version

    # ---- plumbing

    @property
    def emu(self):
        return self.server.emu

    def setup(self):
        super().setup()
        with self.server.conns_lock:
            self.server.conns.add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            with self.server.conns_lock:
                self.server.conns.discard(self.connection)

    def log_message(self, fmt, *args):
        if self.server.log:
            sys.stderr.write("consul-emu: %s %s\n" % (self.address_string(), fmt % args))

    def do_GET(self):
        self.dispatch()

    do_PUT = do_POST = do_DELETE = do_OPTIONS = do_PATCH = do_HEAD = do_GET

    def read_body(self):
        try:
            return self._read_body()
        except ValueError:                   # malformed framing: nothing sane to answer
            raise Drop()

    def _read_body(self):
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise Drop()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_BODY:
                    raise Drop()
                chunks.append(self.rfile.read(size))
                self.rfile.readline(3)
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        if n < 0 or n > MAX_BODY:
            raise Drop()
        return self.rfile.read(n) if n else b""

    def send(self, code, body=b"", ctype=None, headers=None):
        if self.drop_response:
            raise Drop()
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.send_response(code)
        if ctype and (body or code != 404):
            self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, obj, code=200, headers=None):
        if self.query.has("pretty"):
            body = json.dumps(obj, indent=4) + "\n"
        else:
            body = json.dumps(obj, separators=(",", ":"))
        self.send(code, body, JSON_TYPE, headers)

    def meta(self, index):
        """setMeta: index never 0."""
        h = {"X-Consul-Index": str(max(1, index)), "X-Consul-KnownLeader": "true",
             "X-Consul-LastContact": "0"}
        if self.query.has("consistent"):
            h["X-Consul-Effective-Consistency"] = "consistent"
        elif self.query.has("stale"):
            h["X-Consul-Effective-Consistency"] = "stale"
        else:
            h["X-Consul-Effective-Consistency"] = "leader"
        return h

    def drop(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def dispatch(self):
        self.drop_response = False
        split = urlsplit(self.path)
        self.route_path = unquote(split.path)
        self.query = Query(split.query)
        try:
            body = self.read_body()
            if self.route_path.startswith("/_emu/"):
                self.emu_endpoint(body)
            elif self.route_path.startswith("/v1/"):
                self.v1(body)
            else:
                self.send(404)
        except Drop:
            self.drop()
        except HTTPErr as e:
            try:
                self.send(e.code, e.body, TEXT_TYPE if e.body else None, e.headers)
            except Drop:
                self.drop()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:               # an emulator bug: say so, loudly
            traceback.print_exc()
            self.close_connection = True
            try:
                self.send(500, "consul emulator internal error: %r" % e, TEXT_TYPE)
            except (Drop, OSError):
                self.drop()

    def v1(self, body):
        emu = self.emu
        for pattern, is_prefix, methods, name in ROUTES:
            if (self.route_path.startswith(pattern) if is_prefix else self.route_path == pattern):
                break
        else:
            pattern, name, methods = None, None, ()
        with emu.lock:
            key = "%s %s" % (self.command, pattern or "?")
            emu.requests[key] = emu.requests.get(key, 0) + 1
        f = emu.fault_on_arrival(self.route_path)
        if f is not None:
            mode = f["Mode"]
            if mode == "error500":
                raise HTTPErr(500, f["Body"] or "No known Consul servers")
            if mode == "drop":
                raise Drop()
            if mode == "hang":
                with emu.lock:
                    emu.hang_until_changed(f["Gen"])
            if mode == "delay":
                deadline = time.monotonic() + f["Ms"] / 1000.0
                with emu.lock:
                    while not emu.stopping and time.monotonic() < deadline:
                        emu.cond.wait(deadline - time.monotonic())
                    if emu.stopping:
                        raise Drop()
            if mode == "drop-response":
                self.drop_response = True
        if name is None:
            raise HTTPErr(404)
        if self.command == "OPTIONS":
            self.send(200, headers={"Allow": ",".join(("OPTIONS",) + methods)})
            return
        if self.command not in methods:
            raise HTTPErr(405, "method %s not allowed" % self.command,
                          {"Allow": ",".join(("OPTIONS",) + methods)})
        self.pattern = pattern
        getattr(self, "h_" + name)(body)

    # ---- common request parsing (agent/http.go)

    def token(self):
        t = self.query.get("token")
        if t:
            return t
        t = self.headers.get("X-Consul-Token", "")
        if t:
            return t
        auth = self.headers.get("Authorization", "")
        parts = auth.split(" ", 1)
        if len(parts) == 2 and parts[0].lower() == "bearer":
            return parts[1].strip()
        return ""

    def parse(self):
        """s.parse: wait/index and consistency.  Returns (index, wait_ns)."""
        wait_ns, index = 0, 0
        w = self.query.get("wait")
        if w:
            try:
                wait_ns = parse_go_duration(w)
            except GoError:
                raise HTTPErr(400, "Invalid wait time")
        i = self.query.get("index")
        if i:
            try:
                index = parse_uint64(i)
            except GoError:
                raise HTTPErr(400, "Invalid index")
        if self.query.has("stale") and self.query.has("consistent"):
            raise HTTPErr(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
        return index, wait_ns

    def rpc(self, acl=True):
        """What the server RPC checks first: forwarding to ?dc, then the token."""
        dc = self.query.get("dc")
        if dc and dc != DATACENTER:
            raise rpc_error("No path to datacenter")
        if acl:
            self.emu.authorize(self.token())

    def tail(self):
        return self.route_path[len(self.pattern):]

    # ---- sessions

    def h_session_create(self, body):
        s = decode_session_body(body or b"null", self.emu.node_name)   # no body: defaults
        self.rpc()
        with self.emu.lock:
            self.emu.expire_due()
            sid = self.emu.session_create(s)
        self.send_json({"ID": sid})

    def h_session_destroy(self, body):
        sid = self.tail()
        if not sid:
            raise HTTPErr(400, "Missing session")
        self.rpc()
        with self.emu.lock:
            self.emu.expire_due()
            if not self.emu.invalidate(sid):
                self.emu._apply()           # the raft apply of a no-op destroy
        self.send_json(True)

    def h_session_renew(self, body):
        self.parse()
        sid = self.tail()
        if not sid:
            raise HTTPErr(400, "Missing session")
        self.rpc()
        with self.emu.lock:
            self.emu.expire_due()
            sess = self.emu.session_get(sid)
            if sess is not None:
                self.emu._reset_timer(sess["ID"])
                self.emu._changed()
                out = [dict(sess)]
        if sess is None:
            raise HTTPErr(404, "Session id '%s' not found" % sid)
        self.send_json(out)

    def _session_read(self, query):
        index, wait_ns = self.parse()
        self.rpc()
        with self.emu.lock:
            idx, result = self.emu.blocking(self, index, wait_ns, query)
            result = [dict(s) for s in result]
        self.send_json(result, headers=self.meta(idx))

    def h_session_info(self, body):
        sid = self.tail()
        if not sid:
            self.parse()
            raise HTTPErr(400, "Missing session")
        emu = self.emu

        def query():
            s = emu.session_get(sid)
            return emu.idx_sessions, [s] if s else []
        self._session_read(query)

    def h_session_list(self, body):
        emu = self.emu
        self._session_read(lambda: (emu.idx_sessions,
                                    [emu.sessions[k] for k in sorted(emu.sessions)]))

    def h_session_node(self, body):
        node = self.tail()
        if not node:
            self.parse()
            raise HTTPErr(400, "Missing node name")
        emu = self.emu
        self._session_read(lambda: (emu.idx_sessions,
                                    [emu.sessions[k] for k in sorted(emu.sessions)
                                     if emu.sessions[k]["Node"].lower() == node.lower()]))

    # ---- KV

    def conflicting(self, *flags):
        if sum(1 for f in flags if self.query.has(f)) > 1:
            raise HTTPErr(400, "Conflicting flags: %s\n" % self.query.encode())

    def h_kvs(self, body):
        index, wait_ns = self.parse()
        key = self.tail()
        if key and self.emu.key_validation == "strict":
            err = validate_kv_key_strict(key)
            if err:
                raise HTTPErr(400, err)
        if key and self.emu.key_validation == "1.21.5":
            if not KV_KEY_PATTERN_1_21_5.match(key) or ".." in key:
                raise rpc_error("invalid key name, keys should respect the %s format"
                                % go_quote(KV_KEY_PATTERN_1_21_5.pattern[:-2] + "$"))
        if self.command == "GET":
            self.kvs_get(key, index, wait_ns)
        elif self.command == "PUT":
            self.kvs_put(key, body)
        else:
            self.kvs_delete(key)

    def kvs_get(self, key, index, wait_ns):
        emu = self.emu
        if self.query.has("keys"):
            sep = self.query.get("separator") or self.query.get("seperator")
            self.rpc()
            with emu.lock:
                idx, keys = emu.blocking(self, index, wait_ns, lambda: emu.kvs_keys(key, sep))
            if not keys and key:
                self.send(404, headers=self.meta(idx))
            else:
                self.send_json(keys, headers=self.meta(idx))
            return
        recurse = self.query.has("recurse")
        if not recurse and not key:
            raise HTTPErr(400, "Missing key name")
        self.rpc()
        with emu.lock:
            if recurse:
                idx, entries = emu.blocking(self, index, wait_ns, lambda: emu.kvs_list(key))
            else:
                idx, entries = emu.blocking(self, index, wait_ns, lambda: emu.kvs_get(key))
        meta = self.meta(idx)
        if not entries:
            self.send(404, headers=meta)
            return
        if self.query.has("raw") and not recurse:
            meta.update({"X-Content-Type-Options": "nosniff",
                         "Content-Security-Policy": "sandbox"})
            self.send(200, entries[0]["Value"] or b"", "text/plain", meta)
            return
        self.send_json([render_entry(e) for e in entries], headers=meta)

    def kvs_put(self, key, body):
        if not key:
            raise HTTPErr(400, "Missing key name")
        self.conflicting("cas", "acquire", "release")
        op, flags, cidx, session = "set", 0, 0, ""
        if self.query.has("flags"):
            try:
                flags = parse_uint64(self.query.get("flags"))
            except GoError as e:
                raise rpc_error(str(e))
        if self.query.has("cas"):
            try:
                cidx = parse_uint64(self.query.get("cas"))
            except GoError as e:
                raise rpc_error(str(e))
            op = "cas"
        if self.query.has("acquire"):
            session, op = self.query.get("acquire"), "lock"
        if self.query.has("release"):
            session, op = self.query.get("release"), "unlock"
        if len(body) > KV_MAX_VALUE_SIZE:
            raise HTTPErr(413, "Request body(%d bytes) too large, max size: %d bytes. See %s." % (
                len(body), KV_MAX_VALUE_SIZE,
                "https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size"))
        self.rpc()
        entry = new_entry(key, body, flags, session)
        with self.emu.lock:
            self.emu.expire_due()
            out = self.emu.kvs_apply(op, entry, cidx)
        self.send_json(True if op == "set" else out)

    def kvs_delete(self, key):
        self.conflicting("recurse", "cas")
        op, cidx = "delete", 0
        if self.query.has("recurse"):
            op = "delete-tree"
        elif not key:
            raise HTTPErr(400, "Missing key name")
        if self.query.has("cas"):
            try:
                cidx = parse_uint64(self.query.get("cas"))
            except GoError as e:
                raise rpc_error(str(e))
            op = "delete-cas"
        self.rpc()
        with self.emu.lock:
            self.emu.expire_due()
            out = self.emu.kvs_apply(op, new_entry(key), cidx)
        self.send_json(out if op == "delete-cas" else True)

    # ---- txn (KV operations only)

    READ_VERBS = ("get", "get-tree", "check-index", "check-session", "check-not-exists")

    def h_txn(self, body):
        self.parse()
        if len(body) > KV_MAX_VALUE_SIZE:
            raise HTTPErr(413, "Request body(%d bytes) too large, max is %d bytes" % (
                len(body), KV_MAX_VALUE_SIZE))
        text = body.decode("utf-8", "replace")
        try:
            doc = json.loads(text) if text.strip() else None
        except json.JSONDecodeError as e:
            raise HTTPErr(400, "Failed to parse body: " + go_json_syntax_error(e, text))
        if doc is None:
            doc = []
        if not isinstance(doc, list):
            raise HTTPErr(400, "Failed to parse body: json: cannot unmarshal %s into Go value "
                          "of type api.TxnOps" % go_json_type(doc))
        if len(doc) > MAX_TXN_OPS:
            raise HTTPErr(413, "Transaction contains too many operations (%d > %d)" % (
                len(doc), MAX_TXN_OPS))
        ops = [self.txn_op(op) for op in doc]
        self.rpc()
        emu = self.emu
        with emu.lock:
            emu.expire_due()
            if all(op["Verb"] in self.READ_VERBS for op in ops):
                results, errors = self.txn_run(ops, None)
                meta = self.meta(emu.idx_kvs)
            else:
                meta = None
                errors = [{"OpIndex": i, "What": "failed to lock key %s due to lock delay"
                           % go_quote(op["Key"])}
                          for i, op in enumerate(ops)
                          if op["Verb"] == "lock" and emu.lock_delay_active(op["Key"])]
                results = None
                if not errors:
                    saved = (dict(emu.kv), dict(emu.tombstones), emu.idx_kvs)
                    idx = emu._apply()
                    results, errors = self.txn_run(ops, idx)
                    if errors:
                        emu.kv, emu.tombstones, emu.idx_kvs = saved
                    emu._changed()
        if errors:
            self.send_json({"Results": None, "Errors": errors}, code=409, headers=meta)
        else:
            self.send_json({"Results": results or None, "Errors": None}, headers=meta)

    def txn_op(self, op):
        def bad(msg):
            return HTTPErr(400, "Failed to parse body: " + msg)
        if not isinstance(op, dict):
            raise bad("json: cannot unmarshal %s into Go value of type api.TxnOp"
                      % go_json_type(op))
        top = {k.lower(): v for k, v in op.items()}
        kv = top.get("kv")
        if not isinstance(kv, dict) or len([v for v in top.values() if v is not None]) != 1:
            raise bad("the Consul emulator supports KV operations only")
        f = {k.lower(): v for k, v in kv.items()}
        out = {"Verb": f.get("verb") or "", "Key": f.get("key") or "",
               "Session": f.get("session") or "", "Flags": f.get("flags") or 0,
               "Index": f.get("index") or 0, "Value": None}
        for name in ("Verb", "Key", "Session"):
            if not isinstance(out[name], str):
                raise bad("json: cannot unmarshal %s into Go struct field KVTxnOp.%s of type "
                          "string" % (go_json_type(out[name]), name))
        for name in ("Flags", "Index"):
            v = out[name]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v >= 1 << 64:
                raise bad("json: cannot unmarshal %s into Go struct field KVTxnOp.%s of type "
                          "uint64" % (go_json_type(v), name))
        v = f.get("value")
        if v is not None:
            if not isinstance(v, str):
                raise bad("json: cannot unmarshal %s into Go struct field KVTxnOp.Value of "
                          "type []uint8" % go_json_type(v))
            try:
                out["Value"] = base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError):
                raise bad("illegal base64 data at input byte 0")
        return out

    def txn_run(self, ops, idx):
        """state/txn.go txnKVS for each op; idx None = read-only txn."""
        emu = self.emu
        results, errors = [], []
        for i, op in enumerate(ops):
            verb, key = op["Verb"], op["Key"]
            entry = new_entry(key, op["Value"], op["Flags"], op["Session"])
            out = None
            try:
                if verb == "set":
                    out = [emu._kvs_set(idx, entry, update_session=False)]
                elif verb == "cas":
                    if not emu._kvs_set_cas(idx, entry, op["Index"]):
                        raise GoError("failed to set key %s, index is stale" % go_quote(key))
                    out = [emu.kv[key]]
                elif verb == "lock":
                    if not emu._kvs_lock(idx, entry):
                        raise GoError("failed to lock key %s, lock is already held" % go_quote(key))
                    out = [emu.kv[key]]
                elif verb == "unlock":
                    if not emu._kvs_unlock(idx, entry):
                        raise GoError("failed to unlock key %s, lock isn't held, or is held by "
                                      "another session" % go_quote(key))
                    out = [emu.kv[key]]
                elif verb == "get":
                    e = emu.kv.get(key)
                    if e is None:
                        raise GoError("key %s doesn't exist" % go_quote(key))
                    results.append({"KV": render_entry(e)})
                elif verb == "get-tree":
                    for k in sorted(emu.kv):
                        if k.startswith(key):
                            results.append({"KV": render_entry(emu.kv[k])})
                elif verb == "check-index":
                    e = emu.kv.get(key)
                    if e is None:
                        raise GoError("failed to check index, key %s doesn't exist" % go_quote(key))
                    if e["ModifyIndex"] != op["Index"]:
                        raise GoError("failed index check for key %s, current modify index %d != %d"
                                      % (go_quote(key), e["ModifyIndex"], op["Index"]))
                    out = [e]
                elif verb == "check-session":
                    e = emu.kv.get(key)
                    if e is None:
                        raise GoError("failed to check session, key %s doesn't exist"
                                      % go_quote(key))
                    if e["Session"] != op["Session"]:
                        raise GoError("failed session check for key %s, current session %s != %s"
                                      % (go_quote(key), go_quote(e["Session"]),
                                         go_quote(op["Session"])))
                    out = [e]
                elif verb == "check-not-exists":
                    if key in emu.kv:
                        raise GoError("key %s exists" % go_quote(key))
                elif verb == "delete":
                    emu._kvs_delete(idx, key)
                elif verb == "delete-cas":
                    if not emu._kvs_delete_cas(idx, op["Index"], key):
                        raise GoError("failed to delete key %s, index is stale" % go_quote(key))
                elif verb == "delete-tree":
                    emu._kvs_delete_tree(idx, key)
                else:
                    raise GoError("unknown KV verb %s" % go_quote(verb))
            except (GoError, HTTPErr) as e:
                errors.append({"OpIndex": i, "What": str(e)})
                continue
            for e in out or ():
                results.append({"KV": render_entry(e, with_value=False)})
        return results, errors

    # ---- catalog / status

    def h_catalog_register(self, body):
        text = body.decode("utf-8", "replace")
        try:
            doc = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as e:
            raise HTTPErr(400, "Request decode failed: " + go_json_syntax_error(e, text))
        if not isinstance(doc, dict):
            raise HTTPErr(400, "Request decode failed: json: cannot unmarshal %s into Go value of "
                          "type structs.RegisterRequest" % go_json_type(doc))
        f = {k.lower(): v for k, v in doc.items()}
        node = f.get("node") or ""
        address = f.get("address") or ""
        if not isinstance(node, str) or not isinstance(address, str):
            raise HTTPErr(400, "Request decode failed: json: cannot unmarshal into Go struct "
                          "field RegisterRequest.Node of type string")
        checks = []
        for c in ([f["check"]] if isinstance(f.get("check"), dict) else []) + \
                 [c for c in (f.get("checks") or []) if isinstance(c, dict)]:
            cf = {k.lower(): v for k, v in c.items()}
            cid = str(cf.get("checkid") or cf.get("name") or "")
            checks.append((cid, str(cf.get("status") or "critical")))
        self.rpc()
        if not node:
            raise rpc_error("Must provide node")
        if not address and not f.get("skipnodeupdate"):
            raise rpc_error("Must provide address if SkipNodeUpdate is not set")
        emu = self.emu
        with emu.lock:
            idx = emu._apply()
            n = emu.nodes.get(node)
            if n is None:
                emu.nodes[node] = {"Node": node, "Address": address, "CreateIndex": idx,
                                   "ModifyIndex": idx}
                emu.checks.setdefault(node, {})
                emu.idx_nodes = idx
            elif address and n["Address"] != address:
                n["Address"], n["ModifyIndex"] = address, idx
                emu.idx_nodes = idx
            for cid, status in checks:
                if not cid:
                    raise rpc_error("Missing check ID")
                emu.set_check(node, cid, status)
            emu._changed()
        self.send_json(True)

    def h_status_leader(self, body):
        self.rpc(acl=False)
        self.send_json(LEADER)

    def h_status_peers(self, body):
        self.rpc(acl=False)
        self.send_json([LEADER])

    # ---- emulator-only endpoints

    def emu_endpoint(self, body):
        emu = self.emu
        path = self.route_path[len("/_emu/"):]
        q = self.query

        def num(name, default=None):
            if not q.has(name):
                if default is None:
                    raise HTTPErr(400, "missing ?%s=" % name)
                return default
            try:
                return int(q.get(name))
            except ValueError:
                raise HTTPErr(400, "bad ?%s=" % name)

        if path == "state":
            if self.command != "GET":
                raise HTTPErr(405, "use GET", {"Allow": "GET"})
            self.send_json(emu.dump())
            return
        if self.command not in ("POST", "PUT"):
            raise HTTPErr(405, "use POST", {"Allow": "POST,PUT"})
        if path == "advance":
            emu.advance(num("ms"))
            self.send_json({"ClockOffsetMs": int(emu.offset * 1000), "Index": emu.index})
        elif path.startswith("invalidate/"):
            with emu.lock:
                emu.expire_due()
                done = emu.invalidate(path[len("invalidate/"):])
            self.send_json({"Invalidated": done})
        elif path == "check":
            with emu.lock:
                emu.set_check(q.get("node") or emu.node_name, q.get("check") or SERF_CHECK,
                              q.get("status") or "critical")
            self.send_json(True)
        elif path == "failover":
            emu.failover()
            self.send_json({"Index": emu.index})
        elif path == "fault":
            mode = q.get("mode") or "none"
            if mode not in ("none", "error500", "drop", "drop-response", "hang", "delay"):
                raise HTTPErr(400, "unknown fault mode %r" % mode)
            count = num("count", -1)
            emu.set_fault(mode, None if count < 0 else count, q.get("path"), q.get("body"),
                          num("ms", 0))
            self.send_json(dict(emu.fault))
        elif path == "reset":
            emu.reset()
            self.send_json(True)
        elif path == "wake":
            emu.wake()
            self.send_json(True)
        elif path == "index-backwards":
            by = num("by", -1)
            self.send_json({"Index": emu.index_backwards(None if by < 0 else by)})
        elif path == "snapshot":
            self.send_json({"Index": emu.take_snapshot()})
        elif path == "restore":
            self.send_json({"Index": emu.restore_snapshot()})
        elif path == "key-validation":
            mode = q.get("mode") or "off"
            if mode not in ("off", "1.21.5", "strict"):
                raise HTTPErr(400, "mode is off, 1.21.5 or strict")
            emu.key_validation = mode
            self.send_json(True)
        else:
            raise HTTPErr(404, "unknown emulator endpoint")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, emu, log=False):
        self.emu = emu
        self.log = log
        self.conns = set()
        self.conns_lock = threading.Lock()
        super().__init__(addr, Handler)

    def server_bind(self):
        # HTTPServer.server_bind calls socket.getfqdn(), which can stall on
        # reverse DNS; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def close_connections(self):
        with self.conns_lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main(argv=None):
    ap = argparse.ArgumentParser(description="Consul HTTP API emulator (test fixture)")
    ap.add_argument("--addr", required=True, help="HOST:PORT to listen on (PORT 0 = any)")
    ap.add_argument("--node", default="consul-emu", help="agent node name (default consul-emu)")
    ap.add_argument("--session-ttl-min", default="10s",
                    help="session_ttl_min, a Go duration (default 10s)")
    ap.add_argument("--acl-token", default=None, help="enable ACLs with this management token")
    ap.add_argument("--jitter", action="store_true", help="add blocking-query jitter <= wait/16")
    ap.add_argument("--log", action="store_true", help="log requests to stderr")
    args = ap.parse_args(argv)
    host, _, port = args.addr.rpartition(":")
    try:
        ttl_min = parse_go_duration(args.session_ttl_min)
    except GoError as e:
        ap.error("--session-ttl-min: %s" % e)
    emu = Emulator(node=args.node, ttl_min=ttl_min, acl_token=args.acl_token, jitter=args.jitter)
    server = Server((host or "127.0.0.1", int(port)), emu, log=args.log)
    reaper = threading.Thread(target=emu.reaper, name="ttl-reaper", daemon=True)
    reaper.start()

    def on_signal(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    h, p = server.server_address[:2]
    sys.stdout.write("listening on %s:%d\n" % (h, p))
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.05)
    finally:
        emu.stop()
        server.close_connections()
        reaper.join(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with server.conns_lock:
                if not server.conns:
                    break
            time.sleep(0.02)
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
