"""Write load for failover tests: commit single-row transactions to whichever
node accepts them.

    failover_writer.py OUT STOPFILE MODE NAME=DBPATH [NAME=DBPATH ...]

Each attempt inserts a unique k into t(k, node). A success appends
"k name t_ns" to OUT (flushed, so the test sees every acknowledged commit
even after a kill); a failure moves to the next node after 2 ms, reopening
connections (a WAL connection opened on a replica stays read-only). Stops
when STOPFILE exists. Runs as its own process: Python threads and SQLite
calls into a FUSE mount do not mix well with the test's own polling.
"""
import os
import sqlite3
import sys
import time


def main():
    out, stop, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    nodes = [a.split("=", 1) for a in sys.argv[4:]]
    conns = {}
    cur = 0
    k = 0
    with open(out, "a", buffering=1) as f:
        while not os.path.exists(stop):
            name, path = nodes[cur]
            k += 1
            try:
                c = conns.get(name)
                if c is None:
                    c = sqlite3.connect(path, timeout=0.2, isolation_level=None)
                    conns[name] = c
                c.execute("INSERT INTO t(k, node) VALUES(?, ?)", (k, name))
                f.write("%d %s %d\n" % (k, name, time.monotonic_ns()))
            except sqlite3.Error:
                c = conns.pop(name, None)
                if c is not None:
                    try:
                        c.close()
                    except sqlite3.Error:
                        pass
                cur = (cur + 1) % len(nodes)
                time.sleep(0.002)
    for c in conns.values():
        c.close()


if __name__ == "__main__":
    main()
