"""Independent checks of an ltxfs data directory.

Nothing here uses ltxfs code: CRC-64/GO-ISO, the LTX v1 format (ltx.md), the
SQLite WAL format and the rolling database checksum are implemented again
from the specifications, so a test that compares these values with what
ltxfs reports would catch a bug in either.
"""
import os
import re
import struct

import lz4.frame
import numpy as np

FLAG = 1 << 63
POLY = 0xD800000000000000
_T = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ POLY if _c & 1 else _c >> 1
    _T.append(_c)
TABLE = np.array(_T, dtype=np.uint64)


def crc64(data, crc=0):
    """Sequential CRC-64/GO-ISO (Go hash/crc64 with crc64.ISO)."""
    crc = ~crc & 0xFFFFFFFFFFFFFFFF
    t = _T
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return ~crc & 0xFFFFFFFFFFFFFFFF


def page_checksums(pages, pgnos):
    """Vectorised LTX page checksums: pages is an (n, page_size) uint8 array."""
    n = pages.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    pre = np.array([list(struct.pack(">I", p)) for p in pgnos], dtype=np.uint8)
    data = np.concatenate([pre, pages], axis=1)
    crc = np.full(n, 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)
    eight = np.uint64(8)
    ff = np.uint64(0xFF)
    for j in range(data.shape[1]):
        idx = (crc ^ data[:, j].astype(np.uint64)) & ff
        crc = TABLE[idx] ^ (crc >> eight)
    return (~crc) | np.uint64(FLAG)


def lock_pgno(page_size):
    return 0x40000000 // page_size + 1


def db_checksum_bytes(data, page_size):
    """Rolling checksum of a database image (bytes), lock page excluded."""
    npages = len(data) // page_size
    if npages == 0:
        return FLAG
    arr = np.frombuffer(data[: npages * page_size], dtype=np.uint8).reshape(npages, page_size)
    pgnos = list(range(1, npages + 1))
    lp = lock_pgno(page_size)
    keep = [i for i, p in enumerate(pgnos) if p != lp]
    cks = page_checksums(arr[keep], [pgnos[i] for i in keep])
    x = np.bitwise_xor.reduce(cks) if len(cks) else np.uint64(0)
    return int(x) | FLAG


# ---------------------------------------------------------------- SQLite

def db_header(data):
    if len(data) < 100 or data[:16] != b"SQLite format 3\x00":
        return None
    ps = struct.unpack(">H", data[16:18])[0]
    ps = 65536 if ps == 1 else ps
    change, count = struct.unpack(">II", data[24:32])
    valid_for = struct.unpack(">I", data[92:96])[0]
    return {"page_size": ps, "page_count": count if count and change == valid_for else None}


def _wal_cksum(big_endian, data, s1, s2):
    fmt = (">" if big_endian else "<") + "%dI" % (len(data) // 4)
    words = struct.unpack(fmt, data)
    for i in range(0, len(words), 2):
        s1 = (s1 + words[i] + s2) & 0xFFFFFFFF
        s2 = (s2 + words[i + 1] + s1) & 0xFFFFFFFF
    return s1, s2


def wal_committed_pages(wal):
    """Latest committed image of each page in a WAL, and the last commit size."""
    if len(wal) < 32:
        return {}, None
    magic, version, ps, _seq, salt1, salt2, c1, c2 = struct.unpack(">8I", wal[:32])
    if magic not in (0x377F0682, 0x377F0683):
        return {}, None
    be = magic & 1
    s1, s2 = _wal_cksum(be, wal[:24], 0, 0)
    if (s1, s2) != (c1, c2):
        return {}, None
    off, pending, pages, commit = 32, {}, {}, None
    fsz = 24 + ps
    while off + fsz <= len(wal):
        pgno, cm, fs1, fs2, k1, k2 = struct.unpack(">6I", wal[off:off + 24])
        if (fs1, fs2) != (salt1, salt2):
            break
        s1, s2 = _wal_cksum(be, wal[off:off + 8], s1, s2)
        s1, s2 = _wal_cksum(be, wal[off + 24:off + fsz], s1, s2)
        if (s1, s2) != (k1, k2):
            break
        pending[pgno] = wal[off + 24:off + fsz]
        if cm:
            pages.update(pending)
            pending = {}
            commit = cm
        off += fsz
    return pages, commit


def logical_database(dbdir):
    """The database as SQLite would see it: the file with the WAL's commits applied."""
    with open(os.path.join(dbdir, "database"), "rb") as f:
        data = bytearray(f.read())
    walp = os.path.join(dbdir, "wal")
    h = db_header(bytes(data))
    ps = h["page_size"] if h else None
    if os.path.exists(walp):
        with open(walp, "rb") as f:
            pages, commit = wal_committed_pages(f.read())
        if commit:
            ps = struct.unpack(">I", open(walp, "rb").read(12)[8:12])[0]
            size = commit * ps
            if len(data) < size:
                data.extend(b"\0" * (size - len(data)))
            for pgno, img in pages.items():
                data[(pgno - 1) * ps:pgno * ps] = img
            del data[size:]
    if ps is None:
        return bytes(data), 4096
    if len(data) % ps:
        # a file that ends inside a page (SQLite's backup of an empty database
        # leaves 1024 bytes of a 4096-byte page): SQLite reads the rest as zeros
        data.extend(b"\0" * (ps - len(data) % ps))
    h = db_header(bytes(data))
    if h and h["page_count"] is not None:
        del data[h["page_count"] * ps:]
    return bytes(data), ps


# ------------------------------------------------------------------- LTX

NAME_RE = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.ltx$")


def parse_ltx(path, verify_file_checksum=None):
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 116 or raw[:4] != b"LTX1":
        raise ValueError("%s: not an LTX file" % path)
    (flags, ps, commit, mn, mx, ts, pre, woff, wsize, salt1, salt2, node) = struct.unpack(
        ">IIIQQqQqqIIQ", raw[4:80])
    body = raw[100:-16]
    if flags & 1:
        body = lz4.frame.decompress(body)
    elif flags:
        raise ValueError("%s: unknown flags %x" % (path, flags))
    pages, off = {}, 0
    while True:
        pgno = struct.unpack(">I", body[off:off + 4])[0]
        off += 4
        if pgno == 0:
            break
        pages[pgno] = body[off:off + ps]
        off += ps
    if off != len(body):
        raise ValueError("%s: trailing bytes in page block" % path)
    post, filesum = struct.unpack(">QQ", raw[-16:])
    if verify_file_checksum is None:
        verify_file_checksum = len(body) <= (2 << 20)
    if verify_file_checksum:
        c = crc64(raw[:100])
        c = crc64(body, c)
        c = crc64(raw[-16:-8], c)
        if (c | FLAG) != filesum:
            raise ValueError("%s: file checksum mismatch" % path)
    return {"flags": flags, "page_size": ps, "commit": commit, "min": mn, "max": mx,
            "timestamp": ts, "pre": pre, "post": post, "wal_offset": woff,
            "wal_size": wsize, "node_id": node, "pages": pages, "path": path}


def ltx_files(dbdir):
    d = os.path.join(dbdir, "ltx")
    out = []
    for name in os.listdir(d):
        m = NAME_RE.match(name)
        if m:
            out.append((int(m.group(2), 16), int(m.group(1), 16), os.path.join(d, name)))
    out.sort()
    return out


def contiguous(files):
    """ltx_files' list covers TXIDs 1..its last max, each file right after the one
    before (a file may be a range: group commit, docs/ltx.md)."""
    prev = 0
    for mx, mn, _ in files:
        if mn != prev + 1 or mx < mn:
            return False
        prev = mx
    return bool(files)


def check_chain(dbdir, expect_no_gaps=True):
    """Verify every LTX file and the checksum chain; return the final (txid, post).

    Replays the chain independently: each file's pre-apply checksum must equal
    the checksum computed by applying all earlier files' pages, and its
    post-apply checksum must equal the checksum after applying its own pages.
    """
    files = ltx_files(dbdir)
    assert files, "no LTX files in %s" % dbdir
    state = {}  # pgno -> page checksum
    ps = None
    last_txid = 0
    post = None
    for mx, mn, path in files:
        h = parse_ltx(path)
        if mn == 1:
            state = {}
        else:
            if expect_no_gaps:
                assert mn == last_txid + 1, "gap before %s (last %d)" % (path, last_txid)
            x = 0
            for c in state.values():
                x ^= c
            assert h["pre"] == (x | FLAG), "%s: pre-apply %016x != replayed %016x" % (
                path, h["pre"], x | FLAG)
        ps = h["page_size"]
        if h["pages"]:
            pg = sorted(h["pages"])
            arr = np.frombuffer(b"".join(h["pages"][p] for p in pg), dtype=np.uint8)
            cks = page_checksums(arr.reshape(len(pg), ps), pg)
            for p, c in zip(pg, cks):
                state[p] = int(c)
        for p in [p for p in state if p > h["commit"]]:
            del state[p]
        if mn == 1:
            exp = set(range(1, h["commit"] + 1)) - {lock_pgno(ps)}
            assert set(state) == exp, "%s: snapshot does not hold every page" % path
        x = 0
        for c in state.values():
            x ^= c
        assert h["post"] == (x | FLAG), "%s: post-apply %016x != replayed %016x" % (
            path, h["post"], x | FLAG)
        last_txid = mx
        post = h["post"]
    return last_txid, post, ps


def read_pos(mount, name):
    with open(os.path.join(mount, name + "-pos")) as f:
        s = f.read()
    assert len(s) == 34 and s.endswith("\n"), repr(s)
    a, b = s.strip().split("/")
    return int(a, 16), int(b, 16)


def verify_database(node, name, check_pos=True):
    """The invariant every integration test ends with. With check_pos the position is
    read through the mount first: that waits for LTX files of WAL commits that are still
    queued (docs/architecture.md 4.2), which a reader of the data directory alone could
    otherwise see a moment before their files exist."""
    dbdir = node.dbdir(name)
    pos = read_pos(node.mount, name) if check_pos else None
    txid, post, _ = check_chain(dbdir)
    data, ps = logical_database(dbdir)
    ck = db_checksum_bytes(data, ps)
    assert ck == post, "database checksum %016x != last LTX post %016x" % (ck, post)
    if check_pos:
        assert pos == (txid, post)
    return txid, post


def encode_ltx_v1(page_size, commit, min_txid, max_txid, pages, pre, post, compress,
                  timestamp=0, node_id=0):
    """An LTX v1 file as LiteFS 0.5 writes it (pages: dict pgno -> bytes)."""
    hdr = struct.pack(">4sIIIQQqQqqIIQ", b"LTX1", 1 if compress else 0, page_size, commit,
                      min_txid, max_txid, timestamp, pre, 0, 0, 0, 0, node_id) + b"\0" * 20
    return encode_ltx_with_header(hdr, pages, post, compress)


def encode_ltx_with_header(hdr, pages, post, compress):
    """An LTX file from its 100 header bytes as given, the pages and the post-apply
    checksum: page block, trailer and file checksum."""
    body = b"".join(struct.pack(">I", p) + pages[p] for p in sorted(pages)) + b"\0" * 4
    c = crc64(hdr)
    c = crc64(body, c)
    c = crc64(struct.pack(">Q", post), c)
    if compress:
        body = lz4.frame.compress(body, block_size=lz4.frame.BLOCKSIZE_MAX64KB,
                                  content_checksum=True, block_linked=False)
    return hdr + body + struct.pack(">QQ", post, c | FLAG)
