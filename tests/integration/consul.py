"""Start and drive the Consul emulator (tests/consul_emu/consul_emu.py) from tests.

Test fixture only.  ConsulEmu runs the emulator as a subprocess on 127.0.0.1,
waits for its "listening on" line, and wraps its emulator-only endpoints
(virtual clock, invalidation, fault injection, state dump):

    emu = ConsulEmu().start(ttl_min="1s")
    ... point ltxfs at emu.url (or emu.addr) ...
    emu.fault("error500"); emu.fault("none")
    emu.advance(25000)                  # 25 s on the emulator's clock
    emu.stop()

ConsulEmu.request() returns a helpers.Response for every HTTP status (never
raises HTTPError); connection-level failures (dropped, refused, timed out)
raise OSError.

stop() checks the exit: status 0 after SIGTERM, and no Python traceback on
the emulator's stderr (it prints one for each bug it hits while serving a
request, and answers 500). The stderr goes to a file, copied to the test's
own stderr at stop so that pytest shows it with the test's output.
"""
import atexit
import base64
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse

from helpers import check_exit, http

EMULATOR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "consul_emu", "consul_emu.py")

# Emulators still running when the interpreter exits (a test that failed before
# its stop()) are killed rather than left behind.
_RUNNING = set()


@atexit.register
def _kill_leftovers():
    for emu in list(_RUNNING):
        emu._kill()


class ConsulEmu:
    def __init__(self, node=None, acl_token=None, jitter=False, log=False):
        self.node = node
        self.acl_token = acl_token
        self.jitter = jitter
        self.log = log
        self.proc = None
        self.port = None

    # ---- process

    def start(self, port=None, ttl_min="1s", timeout=10.0):
        """Start the emulator (port None = a free port) and wait until it listens."""
        cmd = [sys.executable, EMULATOR, "--addr", "127.0.0.1:%d" % (port or 0),
               "--session-ttl-min", ttl_min]
        if self.node:
            cmd += ["--node", self.node]
        if self.acl_token:
            cmd += ["--acl-token", self.acl_token]
        if self.jitter:
            cmd.append("--jitter")
        if self.log:
            cmd.append("--log")
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     stderr=self.err)
        _RUNNING.add(self)
        line = b""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self._kill()
                raise AssertionError("consul emulator did not start (got %r):\n%s" % (
                    line, self._stderr()))
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 256)
                if not chunk:
                    continue
                line += chunk
        text = line.decode().strip()
        if not text.startswith("listening on "):
            self._kill()
            raise AssertionError("unexpected emulator output %r" % text)
        self.port = int(text.rsplit(":", 1)[1])
        return self

    def stop(self, timeout=10.0):
        """SIGTERM, wait for the exit and check it (see the top): an
        AssertionError names a failed one. Returns the exit status."""
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
                raise AssertionError("consul emulator did not stop on SIGTERM")
        self.proc.stdout.close()
        self.proc = None
        _RUNNING.discard(self)
        err = self._stderr()
        if err:
            sys.stderr.write(err)
        check_exit("consul emulator", rc, 0, err)
        assert "Traceback (most recent call last)" not in err, \
            "consul emulator: a Python traceback on its stderr:\n" + err
        return rc

    def _stderr(self):
        """What the emulator wrote on stderr so far."""
        self.err.seek(0)
        return self.err.read().decode("utf-8", "replace")

    def _kill(self):
        """Not a stop: a test that failed before stop(), or a start that failed."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
            self.proc = None
        _RUNNING.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    # ---- HTTP

    def request(self, method, path, /, body=None, headers=None, timeout=10.0, query=None,
                **params):
        """method + path ("/v1/...", not URL-encoded: it is encoded here) with
        query parameters given as keywords or in the query dict (a value of True
        gives a bare flag such as ?recurse; None and False are left out)."""
        url = self.url + urllib.parse.quote(path, safe="/-_.~,:@!$&'()*+;=")
        params = dict(query or {}, **params)
        if params:
            q = "&".join(k if v is True else "%s=%s" % (k, urllib.parse.quote(str(v), safe=""))
                         for k, v in params.items() if v is not None and v is not False)
            url += ("&" if "?" in url else "?") + q
        return http(url, method, body, headers, timeout=timeout)

    def _emu(self, name, /, **params):
        r = self.request("POST", "/_emu/" + name, query=params)
        if r.status != 200:
            raise AssertionError("emulator %s: %d %s" % (name, r.status, r.text))
        return r.json()

    def fault(self, mode="none", count=None, path=None, body=None, ms=None):
        """none | error500 | drop | drop-response | hang | delay (see consul_emu.py)."""
        return self._emu("fault", mode=mode, count=count, path=path, body=body, ms=ms)

    def advance(self, ms):
        """Move the emulator's clock forward (TTL deadlines, lock-delay, blocking waits)."""
        return self._emu("advance", ms=int(ms))

    def invalidate(self, sid):
        """Invalidate a session as a critical health check would."""
        return self._emu("invalidate/" + sid)["Invalidated"]

    def failover(self):
        """Consul leader failover: every session TTL timer restarts."""
        return self._emu("failover")

    def reset(self):
        """Back to a fresh server (state, clock offset, fault); the process and its
        options stay.  Requests parked in the emulator are dropped."""
        return self._emu("reset")

    def wake(self):
        """Make blocking queries in progress return now with an unchanged index."""
        return self._emu("wake")

    def index_backwards(self, by=None):
        return self._emu("index-backwards", by=by)["Index"]

    def state(self):
        r = self.request("GET", "/_emu/state")
        assert r.status == 200, r
        return r.json()

    def kv_get(self, key, **params):
        """The key's entry with Value decoded to bytes (None if absent), or None."""
        r = self.request("GET", "/v1/kv/" + key, **params)
        if r.status == 404:
            return None
        assert r.status == 200, r
        e = r.json()[0]
        e["Value"] = base64.b64decode(e["Value"]) if e["Value"] is not None else None
        return e

    def create_session(self, **fields):
        """PUT /v1/session/create with fields as the JSON body; returns the ID."""
        r = self.request("PUT", "/v1/session/create", fields)
        assert r.status == 200, r
        return r.json()["ID"]
