"""Fixtures for integration tests: real ltxfs processes on real FUSE mounts.

Every test gets fresh data and mount directories under pytest's tmp_path.
Waiting is always polling a condition with a deadline, never a bare sleep.

A Node's every run ends checked (helpers.check_exit): stop(), terminate()
and wait_exit() insist on the expected exit status and no sanitizer report
in the log of that run, and the make_node fixture stops, and checks, every
node still running when the test ends. kill9() is the one exemption, for
tests that kill a node on purpose.

LTXFS_TEST_DEBUG=1 in the environment turns on log.debug and fuse.debug in
every node's config: each FUSE request and its reply is then in ltxfs.log.
"""
import os
import signal
import socket
import sqlite3
import subprocess
import time

import pytest

from helpers import LTXFS, check_exit, http, sanitizer_report

MODES = ["delete", "truncate", "persist", "wal"]


def wait_for(cond, timeout=10.0, what="condition", interval=0.01):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if parts[4] == path and " - fuse.ltxfs " in line:
                return True
    return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """One ltxfs process. With replica_of=<Node or URL> it is a static-lease
    replica of that primary (candidate: false, advertise-url = the primary's
    URL, exactly as LiteFS configures one)."""

    def __init__(self, base, name="node", compress=True, extra_config="", replica_of=None,
                 port=None, data_extra="", lease=None, advertise=None, candidate=True,
                 fuse_extra=""):
        self.name = name
        self.base = os.path.join(str(base), name)
        self.data = os.path.join(self.base, "data")
        self.mount = os.path.join(self.base, "mnt")
        self.config = os.path.join(self.base, "ltxfs.yml")
        self.log = os.path.join(self.base, "ltxfs.log")
        self.proc = None
        self.port = port or free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        # advertise: the URL other nodes use (a proxy in front of this node, say)
        self.advertise = advertise or self.url
        if lease is not None:
            # an elected lease: `lease` is the backend's section, e.g. "consul:\n  url: ..."
            lease = ("lease:\n  type: %s\n  candidate: %s\n  hostname: %s\n"
                     "  advertise-url: %s\n  reconnect-delay: 200ms\n%s"
                     % (lease.split(":")[0], "true" if candidate else "false", name,
                        self.advertise,
                        "".join("  " + l + "\n" for l in lease.splitlines())))
        elif replica_of is not None:
            upstream = replica_of if isinstance(replica_of, str) else replica_of.url
            lease = ("lease:\n  type: static\n  candidate: false\n  hostname: %s\n"
                     "  advertise-url: %s\n" % (name, upstream))
        else:
            lease = ("lease:\n  type: static\n  candidate: true\n  hostname: %s\n"
                     "  advertise-url: %s\n" % (name, self.url))
        os.makedirs(self.base, exist_ok=True)
        with open(self.config, "w") as f:
            f.write(
                ("fuse:\n  dir: %s\n" + fuse_extra + ("  debug: true\n" if os.environ.get("LTXFS_TEST_DEBUG") else "") +
                "data:\n  dir: %s\n  compress: %s\n%s"
                "http:\n  addr: 127.0.0.1:%d\n"
                "%s%s" + ("log:\n  debug: true\n" if os.environ.get("LTXFS_TEST_DEBUG") else "")) % (self.mount, self.data, "true" if compress else "false", data_extra,
                          self.port, lease, extra_config))

    def info(self):
        r = http(self.url + "/info", timeout=5)
        assert r.status == 200, "%s: GET /info: %r" % (self.name, r)
        return r.json()

    def pos(self, db):
        try:
            with open(self.path(db + "-pos")) as f:
                return f.read().strip()
        except FileNotFoundError:
            return None

    def start(self, args=(), wait=True):
        # the log is appended to: the exit check reads only this run's part
        self.log_start = os.path.getsize(self.log) if os.path.exists(self.log) else 0
        logf = open(self.log, "a")
        self.proc = subprocess.Popen([LTXFS, "mount", "-config", self.config, *args],
                                     stdout=logf, stderr=subprocess.STDOUT)
        logf.close()
        if wait:
            wait_for(lambda: is_mounted(self.mount) or self.proc.poll() is not None,
                     timeout=30, what="mount of %s" % self.mount)
            if self.proc.poll() is not None:
                rc, self.proc = self.proc.returncode, None
                raise AssertionError("ltxfs node %s exited during start with %s:\n%s" % (
                    self.name, rc, self.read_log()))
            # the HTTP server starts right after the mount: wait for it too
            wait_for(lambda: self._listening() or self.proc.poll() is not None,
                     timeout=30, what="the HTTP server of %s" % self.name)
        return self

    def _listening(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def read_log(self):
        try:
            with open(self.log) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def run_log(self):
        """The log of the current (or last) run only."""
        return self.read_log()[getattr(self, "log_start", 0):]

    def _check(self, rc, expect):
        self.proc = None
        check_exit("ltxfs node %s" % self.name, rc, expect, self.run_log(), sanitized=True)
        return rc

    def terminate(self, timeout=20, expect=0, sig=signal.SIGTERM):
        """Send sig (SIGTERM) and wait for the exit, which must be expect
        with a log free of sanitizer reports. Returns the exit status; does
        not wait for the unmount (see stop)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.proc = None
                raise AssertionError("ltxfs node %s did not stop on %s within %ds:\n%s" % (
                    self.name, signal.Signals(sig).name, timeout, self.run_log()))
        return self._check(self.proc.returncode, expect)

    def stop(self, timeout=20, expect=0):
        """terminate(), then wait for the unmount."""
        rc = self.terminate(timeout, expect)
        wait_for(lambda: not is_mounted(self.mount), what="unmount")
        return rc

    def wait_exit(self, expect, timeout=30):
        """Wait for a node to exit by itself (its exec command ended), with
        the exit status expect."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("ltxfs node %s did not exit within %ds:\n%s" % (
                self.name, timeout, self.run_log()))
        return self._check(rc, expect)

    def kill9(self):
        """kill -9, on purpose: the exit status is exempt from the check (it
        has none of its own), but a sanitizer report in its log still fails,
        and so does a node that had already exited by itself."""
        try:
            if self.proc is not None:
                if self.proc.poll() is not None:
                    self._check(self.proc.returncode, ())
                self.proc.kill()
                self.proc.wait()
                self.proc = None
                report = sanitizer_report(self.run_log())
                assert report is None, ("ltxfs node %s (killed with -9 on purpose): a "
                                        "sanitizer report in its log:\n%s" % (self.name, report))
        finally:
            if is_mounted(self.mount):
                subprocess.call(["umount", "-l", self.mount])

    def cleanup(self):
        """At the end of a test: a node still running is stopped with SIGTERM
        and checked like stop(); one that exited by itself, unwaited for,
        must have exited 0. Always unmounts."""
        try:
            self.terminate()
        finally:
            if is_mounted(self.mount):
                subprocess.call(["umount", "-l", self.mount])

    def path(self, name):
        return os.path.join(self.mount, name)

    def dbdir(self, name):
        return dbdir(self.data, name)


def dbdir(data, name):
    """dbs/<dir> of database name: a nested name is escaped into one component
    (include/ltxfs/dbname.h: '%' -> %25, '/' -> %2F)."""
    if "/" in name:
        name = name.replace("%", "%25").replace("/", "%2F")
    return os.path.join(data, "dbs", name)


@pytest.fixture
def make_node(tmp_path):
    nodes = []

    def make(name="node", **kw):
        n = Node(tmp_path, name, **kw)
        nodes.append(n)
        return n

    yield make
    errors = []
    for n in nodes:
        try:
            n.cleanup()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)


@pytest.fixture
def node(make_node):
    return make_node().start()


def connect(path, mode="delete", sync="full", timeout=30.0, cache_size=None):
    c = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    c.execute("PRAGMA journal_mode=%s" % mode)
    c.execute("PRAGMA synchronous=%s" % sync)
    if cache_size is not None:
        c.execute("PRAGMA cache_size=%d" % cache_size)
    return c
