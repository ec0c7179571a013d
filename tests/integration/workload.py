"""Workload processes the integration tests run as separate SQLite clients.

usage: workload.py KIND DBPATH JOURNAL_MODE N [ACKFILE]
  increment   N transactions of BEGIN IMMEDIATE; counter += 1; COMMIT
  read        read the counter table for N seconds; exit 1 on any error
  insert-ack  insert rows one per transaction (synchronous=FULL); after each
              COMMIT returns, append the row id to ACKFILE; stop on error
  hang-in-tx  open a write transaction with spilled pages, print "in-tx", sleep
"""
import os
import sqlite3
import sys
import time


def connect(path, mode, sync="full"):
    c = sqlite3.connect(path, timeout=60, isolation_level=None)
    c.execute("PRAGMA busy_timeout=60000")
    c.execute("PRAGMA journal_mode=%s" % mode)
    c.execute("PRAGMA synchronous=%s" % sync)
    return c


def main():
    kind, path, mode, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if kind == "increment":
        c = connect(path, mode)
        for _ in range(n):
            c.execute("BEGIN IMMEDIATE")
            c.execute("UPDATE counter SET n = n + 1 WHERE id = 1")
            c.execute("COMMIT")
    elif kind == "read":
        c = connect(path, mode)
        end = time.monotonic() + n
        while time.monotonic() < end:
            c.execute("SELECT n FROM counter").fetchone()
    elif kind == "insert-ack":
        c = connect(path, mode)
        fd = os.open(sys.argv[5], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for i in range(n):
                cur = c.execute("INSERT INTO t(v) VALUES(?)", ("acked %d" % i,))
                os.write(fd, b"%d\n" % cur.lastrowid)
        except sqlite3.Error:
            pass
    elif kind == "hang-in-tx":
        c = connect(path, mode)
        c.execute("PRAGMA cache_size=5")
        c.execute("BEGIN")
        for i in range(2000):
            c.execute("INSERT INTO t(v) VALUES(?)", ("uncommitted" * 20,))
        sys.stdout.write("in-tx\n")
        sys.stdout.flush()
        time.sleep(3600)
    else:
        sys.exit("unknown workload " + kind)


if __name__ == "__main__":
    main()
