"""A TCP proxy on 127.0.0.1 for cutting and corrupting replication links.

Test fixture only. Every accepted connection is forwarded to the target;
cut() closes every open connection at once (the link drops mid-transfer);
corrupt_next(offset) flips one byte of the next response, `offset` bytes
after the end of its HTTP headers, once. block() turns the link into a
black hole (a network partition): bytes are swallowed in both directions and
new connections are accepted but never answered, so peers see timeouts, not
resets; unblock() heals it (connections opened during the partition are
closed, as a real TCP connection would eventually fail).
"""
import socket
import threading


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
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            if self.blocked:
                with self.lock:
                    self.held.append(c)
                threading.Thread(target=self._swallow, args=(c,), daemon=True).start()
                continue
            try:
                u = socket.create_connection(self.target, timeout=5)
                u.settimeout(None)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns += [c, u]
                self.accepted += 1
                corrupt, self.corrupt_at = self.corrupt_at, None
            threading.Thread(target=self._pipe, args=(c, u, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(u, c, corrupt), daemon=True).start()

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
        with self.lock:
            held, self.held = self.held, []
        for s in held:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.cut()

    def corrupt_next(self, offset):
        with self.lock:
            self.corrupt_at = offset

    def cut(self):
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self):
        self.closed = True
        self.lsock.close()
        self.cut()
