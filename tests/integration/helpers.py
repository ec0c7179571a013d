"""What the integration tests share besides the fixtures of conftest.py.

* HTTP on loopback: http() sends one request through OPENER, which ignores
  any http_proxy of the environment, and returns a Response for every HTTP
  status (it never raises HTTPError); a connection that fails (refused,
  dropped, timed out) raises OSError.
* The exit check: every daemon a test starts (ltxfs nodes, etcd, the Consul
  emulator) passes check_exit() when it stops. A clean stop is an expected
  exit status and, for ltxfs (built with ASan and UBSan), no sanitizer report
  in its log. A daemon a test kills on purpose (kill -9) is exempt, and says
  so where it is killed. The failure names the daemon, its exit status and
  the first lines of the report (or the last lines of its log).
* cli(): one ltxfs command run to its end, its output checked for sanitizer
  reports the same way.
* require(): the path of a test tool, or a failure naming the tool and the
  Debian package that has it (TOOLS), never a skip.

Nothing here imports conftest.py, which imports this module.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LTXFS = os.environ.get("LTXFS_BIN", os.path.join(ROOT, "build", "src", "ltxfs"))

# Never route loopback requests through an http_proxy from the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    @property
    def index(self):
        """X-Consul-Index as an int (None when absent)."""
        v = self.headers.get("X-Consul-Index")
        return None if v is None else int(v)

    def __repr__(self):
        return "<Response %d %r>" % (self.status, self.body[:200])


def http(url, method="GET", body=None, headers=None, token=None, timeout=10.0):
    """One HTTP request. body: bytes, str, or a JSON-able object; token: sent
    as "Authorization: Bearer <token>"."""
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with OPENER.open(req, timeout=timeout) as r:
            return Response(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        with e:
            return Response(e.code, e.headers, e.read())


# ---- the exit check ---------------------------------------------------------

# The first line of a report of AddressSanitizer, LeakSanitizer (both
# "==PID==ERROR: ...") or UndefinedBehaviorSanitizer ("file:line:col: runtime
# error: ..."), and the SUMMARY line each ends with.
_SANITIZER = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)\b|: runtime error: "
                        r"|^SUMMARY: \w*Sanitizer", re.M)


def sanitizer_report(text, lines=25):
    """The first lines of the first sanitizer report in text, or None."""
    m = _SANITIZER.search(text or "")
    if m is None:
        return None
    start = text.rfind("\n", 0, m.start()) + 1
    return "\n".join(text[start:].splitlines()[:lines])


def describe_status(rc):
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return "killed by %s" % signal.Signals(-rc).name
        except ValueError:
            return "killed by signal %d" % -rc
    return "exit status %d" % rc


def check_exit(name, rc, expect=0, log="", sanitized=False):
    """Raise AssertionError unless rc is one of expect (an int or a tuple)
    and, for a sanitized program, log holds no sanitizer report."""
    expect = (expect,) if isinstance(expect, int) else tuple(expect)
    report = sanitizer_report(log) if sanitized else None
    if rc in expect and report is None:
        return
    what = "%s: %s" % (name, describe_status(rc))
    if rc not in expect:
        what += " (expected %s)" % (" or ".join(describe_status(e) for e in expect) or
                                    "no exit before it was killed")
    if report is not None:
        raise AssertionError("%s, and a sanitizer report in its log:\n%s" % (what, report))
    tail = "\n".join((log or "").splitlines()[-30:])
    raise AssertionError("%s; the last lines of its log:\n%s" % (what, tail))


def cli(*args, env=None, check=None, timeout=60, cwd=None):
    """Run `ltxfs ARGS` to its end (LTXFS_HTTP_TOKEN unset unless env sets it)
    and return the CompletedProcess (text). check: the exit status it must
    have. Its output must hold no sanitizer report, whatever its status."""
    e = dict(os.environ)
    e.pop("LTXFS_HTTP_TOKEN", None)
    e.update(env or {})
    p = subprocess.run([LTXFS, *args], capture_output=True, text=True, env=e,
                       timeout=timeout, cwd=cwd)
    report = sanitizer_report(p.stderr) or sanitizer_report(p.stdout)
    assert report is None, "ltxfs %s: a sanitizer report:\n%s" % (" ".join(args), report)
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout, p.stderr)
    return p


# ---- test tools -------------------------------------------------------------

# The Debian 12 package of each tool a test runs; deploy/install-deps.sh
# installs every one (the last three with --tests).
TOOLS = {
    "etcd": "etcd-server",
    "sqldiff": "sqlite3-tools",
    "rsync": "rsync",
    "unshare": "util-linux",
    "systemd-analyze": "systemd",
    "man": "man-db",
    "groff": "groff-base",
}


def require(tool):
    """The path of tool; a failure naming it and its package if it is missing."""
    path = shutil.which(tool)
    assert path, ("%s is not installed: the test needs it (Debian package %s; "
                  "sh deploy/install-deps.sh --tests)" % (tool, TOOLS[tool]))
    return path
