"""Start a real single-member etcd (Debian's etcd-server) for tests.

Test fixture only. Etcd() picks free ports on 127.0.0.1, keeps its data in a
temporary directory, and waits until the JSON gateway answers. stop() ends
it and checks the exit (etcd re-raises SIGTERM once its handlers have run:
killed by SIGTERM, or status 0, is clean); start() again reuses the same
data (a backend that was down and came back). pause()/resume() freeze it
with SIGSTOP/SIGCONT (a backend that stops answering without closing
connections).
"""
import base64
import os
import shutil
import signal
import subprocess
import tempfile

from conftest import free_port, wait_for
from helpers import check_exit, describe_status, http, require


class Etcd:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="ltxfs-etcd-")
        self.port = free_port()
        self.peer = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.proc = None

    def start(self):
        etcd = require("etcd")
        log = open(os.path.join(self.dir, "etcd.log"), "a")
        self.proc = subprocess.Popen(
            [etcd, "--name", "t", "--data-dir", os.path.join(self.dir, "data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", "http://127.0.0.1:%d" % self.peer,
             "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % self.peer,
             "--initial-cluster", "t=http://127.0.0.1:%d" % self.peer,
             "--log-level", "warn"],
            stdout=log, stderr=subprocess.STDOUT,
            env=dict(os.environ, ETCD_UNSUPPORTED_ARCH=os.environ.get("ETCD_UNSUPPORTED_ARCH", "")))
        log.close()
        wait_for(self._healthy, timeout=30, what="etcd to answer", interval=0.05)
        return self

    def _healthy(self):
        if self.proc.poll() is not None:
            rc, self.proc = self.proc.returncode, None
            raise AssertionError("etcd exited during start with %s:\n%s" % (
                describe_status(rc), self.read_log()))
        try:
            self.post("/v3/kv/range", {"key": base64.b64encode(b"x").decode()}, timeout=1)
            return True
        except OSError:
            return False

    def read_log(self):
        try:
            with open(os.path.join(self.dir, "etcd.log")) as f:
                return f.read()
        except OSError:
            return ""

    def post(self, path, body, timeout=5):
        r = http(self.url + path, "POST", body, {"Content-Type": "application/json"},
                 timeout=timeout)
        if r.status != 200:
            raise OSError("etcd %s: %r" % (path, r))
        return r.json()

    def get(self, key):
        """The value stored at key (bytes) or None."""
        r = self.post("/v3/kv/range", {"key": base64.b64encode(key.encode()).decode()})
        kvs = r.get("kvs") or []
        if not kvs:
            return None
        return base64.b64decode(kvs[0].get("value", ""))

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def stop(self):
        """SIGTERM (SIGCONT first, if paused), wait, and check the exit."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError("etcd did not stop on SIGTERM within 10 s:\n" +
                                     self.read_log())
        check_exit("etcd", proc.returncode, (0, -signal.SIGTERM), self.read_log())
        return proc.returncode

    def cleanup(self):
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
