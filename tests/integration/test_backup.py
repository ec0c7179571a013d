"""Backups to S3 (docs/backup.md): the S3 client against moto with
signature checks on, continuous upload by the primary, restore in every
journal mode and to a TXID, failures (wrong credentials, the bucket
unreachable, a corrupted object, another cluster's prefix).

One moto server serves the module (started here, stopped at the end); each
test uses its own bucket. Waiting is polling observable state (/info's
backup position, listings), never sleeping."""
import os
import sqlite3
import subprocess
import time
import uuid

import pytest

from conftest import MODES, wait_for
from helpers import LTXFS, cli
from netproxy import Proxy
from s3moto import Moto

BUILD = os.environ.get("LTXFS_BUILD", os.path.join(os.path.dirname(LTXFS), ".."))
S3TOOL = os.path.join(BUILD, "tests", "unit", "s3tool")


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    m = Moto(str(tmp_path_factory.mktemp("moto") / "moto.log"))
    yield m
    m.stop()


@pytest.fixture
def bucket(moto):
    name = "b" + uuid.uuid4().hex[:12]
    moto.create_bucket(name)
    return name


def s3tool(moto, bucket, *args, secret=None):
    env = dict(os.environ, S3_ACCESS_KEY=moto.access_key, S3_SECRET_KEY=secret or moto.secret_key)
    p = subprocess.run([S3TOOL, moto.url, bucket, *args], env=env, capture_output=True,
                       timeout=60)
    out = p.stdout.decode(errors="replace")
    assert "ERROR: AddressSanitizer" not in p.stderr.decode(errors="replace"), p.stderr
    return p.returncode, out


def test_s3_client_against_moto_with_signatures(moto, bucket):
    """Every call of the C client, signed by ltxfs's SigV4, accepted by moto's
    signature check; a wrong secret fails with S3's error code and message."""
    rc, out = s3tool(moto, bucket, "put", "a/b c~d.ltx", "hello world", "if-none-match",
                     "meta=ltxfs-timestamp:2026-12-06T02:00:00.000Z")
    assert rc == 0, out
    etag = out.split()[1]
    # create-only: a second PUT of the key fails, naming the condition
    rc, out = s3tool(moto, bucket, "put", "a/b c~d.ltx", "x", "if-none-match")
    assert rc == 1 and "EEXIST" in out and "PreconditionFailed" in out, out
    # If-Match: the right ETag replaces, a stale one is refused
    rc, out = s3tool(moto, bucket, "put", "a/b c~d.ltx", "hello again", "if-match=" + etag)
    assert rc == 0, out
    rc, out = s3tool(moto, bucket, "put", "a/b c~d.ltx", "x", "if-match=" + etag)
    assert rc == 1 and "EEXIST" in out, out
    assert s3tool(moto, bucket, "get", "a/b c~d.ltx") == (0, "hello again")
    assert s3tool(moto, bucket, "get", "a/b c~d.ltx", "6", "5") == (0, "again")
    rc, out = s3tool(moto, bucket, "head", "a/b c~d.ltx", "ltxfs-timestamp")
    assert rc == 0 and out.startswith("size 11 etag "), out
    rc, out = s3tool(moto, bucket, "get", "nope")
    assert rc == 1 and "ENOENT" in out and "NoSuchKey" in out, out
    # listing with continuation (max-keys 2, five keys)
    for i in range(5):
        assert s3tool(moto, bucket, "put", "k%d" % i, "v" * i)[0] == 0
    rc, out = s3tool(moto, bucket, "list", "k", "2")
    assert rc == 0 and out.split("\n")[:-1] == ["k%d %d" % (i, i) for i in range(5)], out
    rc, out = s3tool(moto, bucket, "list", "", "2", "k2")
    assert rc == 0 and out.split("\n")[:-1] == ["k3 3", "k4 4"], out
    assert s3tool(moto, bucket, "delete", "k0")[0] == 0
    assert s3tool(moto, bucket, "get", "k0")[0] == 1
    # a wrong secret: moto's signature check refuses it
    rc, out = s3tool(moto, bucket, "get", "k1", secret="wrong" + moto.secret_key)
    assert rc == 1 and "EACCES" in out and "SignatureDoesNotMatch" in out, out
