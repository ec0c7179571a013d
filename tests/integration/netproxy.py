"""A TCP proxy on 127.0.0.1 for cutting and corrupting replication links.

Test fixture only. Every accepted connection is forwarded to the target;
cut() closes every open connection at once (the link drops mid-transfer);
corrupt_next(offset) flips one byte of the next response, `offset` bytes
after the end of its HTTP headers, once. block() turns the link into a
black hole (a network partition): bytes are swallowed in both directions and
new connections are accepted but never answered, so peers see timeouts, not
resets; unblock() heals it (connections opened during the partition are
closed, as a real TCP connection would eventually fail).

close() is the proxy's stop and is checked like a daemon's: every thread of
the proxy must have ended, and none may have died of an exception other than
the OSError a closed connection gives; an AssertionError names the proxy,
its target and the first lines of the traceback.
"""
import socket
import threading
import time
import traceback


class Proxy:
    def __init__(self, target_port):
        self.target = ("127.0.0.1", target_port)
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.lock = threading.Lock()
        self.conns = []
        self.corrupt_at = None
        self.corrupted = 0
        self.accepted = 0
        self.closed = False
        self.blocked = False
        self.held = []
        self.threads = []
        self.errors = []
        self._spawn(self._accept)

    def _spawn(self, fn, *args):
        """A daemon thread running fn(*args); an exception it dies of is kept
        for close() to report."""
        def run():
            try:
                fn(*args)
            except BaseException:  # noqa: B902 - reported by close()
                with self.lock:
                    self.errors.append(traceback.format_exc())

        t = threading.Thread(target=run, daemon=True)
        with self.lock:
            self.threads = [x for x in self.threads if x.is_alive()] + [t]
        t.start()

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            if self.blocked:
                with self.lock:
                    if self.closed:
                        c.close()
                        return
                    self.held.append(c)
                self._spawn(self._swallow, c)
                continue
            try:
                u = socket.create_connection(self.target, timeout=5)
                u.settimeout(None)
            except OSError:
                c.close()
                continue
            with self.lock:
                if self.closed:  # close() ran meanwhile: it cut what it saw
                    c.close()
                    u.close()
                    return
                self.conns += [c, u]
                self.accepted += 1
                corrupt, self.corrupt_at = self.corrupt_at, None
            self._spawn(self._pipe, c, u, None)
            self._spawn(self._pipe, u, c, corrupt)

    def _pipe(self, src, dst, corrupt_at):
        seen = b""
        body_off = None
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.blocked:
                    continue  # the black hole swallows it
                if corrupt_at is not None:
                    if body_off is None:
                        seen += data[:65536]
                        i = seen.find(b"\r\n\r\n")
                        if i >= 0:
                            body_off = i + 4
                    if body_off is not None:
                        target = body_off + corrupt_at
                        if sent <= target < sent + len(data):
                            b = bytearray(data)
                            b[target - sent] ^= 0xFF
                            data = bytes(b)
                            corrupt_at = None
                            with self.lock:
                                self.corrupted += 1
                sent += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _swallow(self, c):
        try:
            while c.recv(65536):
                pass
        except OSError:
            pass

    def block(self):
        self.blocked = True

    def unblock(self):
        self.blocked = False
        self._shut(self._take("held"))
        self.cut()

    def corrupt_next(self, offset):
        with self.lock:
            self.corrupt_at = offset

    def cut(self):
        self._shut(self._take("conns"))

    def _take(self, name):
        """Empty the list of sockets self.<name> and return what it held."""
        with self.lock:
            socks = getattr(self, name)
            setattr(self, name, [])
        return socks

    @staticmethod
    def _shut(socks):
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self, timeout=5.0):
        with self.lock:
            self.closed = True
        self._shut([self.lsock])  # the shutdown wakes the accept()
        self._shut(self._take("held"))
        self.cut()
        with self.lock:
            threads = list(self.threads)
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = sum(t.is_alive() for t in threads)
        name = "proxy %s -> 127.0.0.1:%d" % (self.url, self.target[1])
        assert not self.errors, "%s: a thread died:\n%s" % (
            name, "\n".join(self.errors[0].splitlines()[-20:]))
        assert not alive, "%s: %d thread(s) still running %.0fs after close" % (
            name, alive, timeout)
