"""An HTTP proxy on 127.0.0.1 in front of moto that injects S3 faults.

Test fixture only. Each accepted connection carries one request (ltxfs's
S3 client opens a connection per request and sends no Expect header); the
proxy reads it whole, then, by the rules armed at that moment:

- fail(status, count, every=1, methods=None, after=False): of the next
  requests whose method is in `methods` (None: any), every `every`-th one
  is answered with `status` and an S3 error body (503 SlowDown, else
  InternalError), `count` times in all. With after=True the request is
  forwarded first and moto's answer thrown away: the client sees a failure
  of a request that took effect (a lost answer).
- delay(seconds, count, methods=None): the next `count` matching requests
  are held `seconds` before they are forwarded (a slow store).

Anything else is forwarded unchanged: the request line, every header (Host
included, so moto checks the SigV4 signature the client computed for the
proxy's address) and the body; moto's status, headers and body come back
with "Connection: close". Counters: forwarded, failed, delayed.

close() stops it and checks, as netproxy.Proxy does, that every thread
ended and none died of an unexpected exception.
"""
import http.client
import socket
import threading
import time
import traceback


class S3Fault:
    def __init__(self, target_port):
        self.target_port = target_port
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(32)
        self.port = self.lsock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.lock = threading.Lock()
        self.rules = []
        self.forwarded = 0
        self.failed = 0
        self.delayed = 0
        self.closed = False
        self.errors = []
        self.threads = []
        t = threading.Thread(target=self._accept, name="s3fault-accept", daemon=True)
        t.start()
        self.threads.append(t)

    # ---- arming

    def fail(self, status, count, every=1, methods=None, after=False):
        with self.lock:
            self.rules.append({"kind": "fail", "status": status, "left": count, "every": every,
                               "seen": 0, "methods": methods, "after": after})

    def delay(self, seconds, count, methods=None):
        with self.lock:
            self.rules.append({"kind": "delay", "seconds": seconds, "left": count, "every": 1,
                               "seen": 0, "methods": methods})

    def clear(self):
        with self.lock:
            self.rules = []

    def armed(self):
        """Faults still to be injected."""
        with self.lock:
            return sum(r["left"] for r in self.rules)

    def _decide(self, method):
        with self.lock:
            for r in self.rules:
                if r["left"] <= 0 or (r["methods"] and method not in r["methods"]):
                    continue
                r["seen"] += 1
                if r["seen"] % r["every"]:
                    continue
                r["left"] -= 1
                return dict(r)
        return None

    # ---- serving

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(c,), name="s3fault-conn",
                                 daemon=True)
            t.start()
            with self.lock:
                self.threads = [x for x in self.threads if x.is_alive()] + [t]

    @staticmethod
    def _read_request(c):
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = c.recv(65536)
            if not chunk:
                return None
            buf += chunk
        head, body = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = []
        length = 0
        for line in lines[1:]:
            name, value = line.split(":", 1)
            headers.append((name, value.strip()))
            if name.lower() == "content-length":
                length = int(value)
        while len(body) < length:
            chunk = c.recv(65536)
            if not chunk:
                return None
            body += chunk
        return method, path, headers, body

    def _forward(self, method, path, headers, body):
        conn = http.client.HTTPConnection("127.0.0.1", self.target_port, timeout=60)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            conn.endheaders(body if body else None)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            conn.close()

    @staticmethod
    def _error(status):
        code = "SlowDown" if status == 503 else "InternalError"
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>%s</Code>'
                "<Message>injected by s3fault</Message></Error>" % code).encode()
        return status, "Injected", [("Content-Type", "application/xml")], body

    def _serve(self, c):
        try:
            with c:
                req = self._read_request(c)
                if req is None:
                    return
                method, path, headers, body = req
                rule = self._decide(method)
                if rule and rule["kind"] == "delay":
                    time.sleep(rule["seconds"])
                    with self.lock:
                        self.delayed += 1
                    rule = None
                if rule and not rule["after"]:
                    status, reason, rh, data = self._error(rule["status"])
                else:
                    status, reason, rh, data = self._forward(method, path, headers, body)
                    if rule:
                        status, reason, rh, data = self._error(rule["status"])
                with self.lock:
                    if rule:
                        self.failed += 1
                    else:
                        self.forwarded += 1
                out = ["HTTP/1.1 %d %s" % (status, reason)]
                for name, value in rh:
                    if name.lower() not in ("connection", "content-length",
                                            "transfer-encoding"):
                        out.append("%s: %s" % (name, value))
                # a HEAD answer keeps moto's Content-Length (the object's size)
                length = len(data)
                if method == "HEAD":
                    length = next((int(v) for n, v in rh if n.lower() == "content-length"),
                                  0)
                    data = b""
                out.append("Content-Length: %d" % length)
                out.append("Connection: close")
                c.sendall(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + data)
        except OSError:
            pass  # the client gave up (its timeout), or close()
        except Exception:  # noqa: BLE001 - reported by close()
            with self.lock:
                self.errors.append(traceback.format_exc())

    def close(self):
        self.closed = True
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.lsock.close()
        deadline = time.monotonic() + 70
        with self.lock:
            threads = list(self.threads)
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
        alive = [t.name for t in threads if t.is_alive()]
        assert not alive, "s3fault in front of port %d: threads still running: %s" % (
            self.target_port, alive)
        assert not self.errors, "s3fault in front of port %d died:\n%s" % (
            self.target_port, self.errors[0][-2000:])
