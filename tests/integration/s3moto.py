"""A moto S3 server on 127.0.0.1 with signature checks on, for the backup tests.

moto 5.2.1 lives in the Python first on PATH (moto_server), not in Debian's.
With INITIAL_NO_AUTH_ACTION_COUNT=3 the first three requests need no
signature: CreateUser, PutUserPolicy (allow everything) and CreateAccessKey
make the IAM credentials every later request must be signed with, so a
wrong signature, key or secret fails (docs/backup.md, "Tests"). The test
side signs its own requests (create a bucket, list, read or overwrite an
object) with the SigV4 below, independent of ltxfs's C signer.

Moto refuses a signed query value holding an encoded '/' (a moto quirk, not
a client error): listings here use prefixes without '/'.
"""
import datetime
import hashlib
import hmac
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Moto:
    REGION = "us-east-1"

    def __init__(self, log_path):
        exe = shutil.which("moto_server")
        if not exe:
            raise AssertionError("moto_server is not on PATH (the image's Python has it)")
        self.port = _free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
        self.logf = open(log_path, "w")
        self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)], env=env,
                                     stdout=self.logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("moto_server did not start")
                time.sleep(0.05)
        self._iam("CreateUser", UserName="ltxfs")
        self._iam("PutUserPolicy", UserName="ltxfs", PolicyName="all",
                  PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow",'
                                 '"Action":"*","Resource":"*"}]}')
        out = self._iam("CreateAccessKey", UserName="ltxfs")
        self.access_key = re.search("<AccessKeyId>(.*?)</AccessKeyId>", out).group(1)
        self.secret_key = re.search("<SecretAccessKey>(.*?)</SecretAccessKey>", out).group(1)

    def _iam(self, action, **params):
        data = urllib.parse.urlencode(dict(params, Action=action, Version="2010-05-08")).encode()
        # unsigned (the first three requests); the credential scope routes it to IAM
        req = urllib.request.Request(self.url + "/", data=data, headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": "AWS4-HMAC-SHA256 Credential=x/20260101/us-east-1/iam/aws4_request,"
                             " SignedHeaders=host, Signature=x"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read().decode()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()

    # ---- signed requests (path style) ----

    def request(self, method, bucket, key="", query=None, body=b"", headers=None,
                secret=None):
        query = sorted((query or {}).items())
        q = "&".join("%s=%s" % (urllib.parse.quote(k, safe="-_.~"),
                                urllib.parse.quote(str(v), safe="-_.~")) for k, v in query)
        path = "/" + bucket + ("/" + urllib.parse.quote(key, safe="-_.~/") if key else "")
        now = datetime.datetime.now(datetime.timezone.utc)
        amz = now.strftime("%Y%m%dT%H%M%SZ")
        psha = hashlib.sha256(body).hexdigest()
        host = "127.0.0.1:%d" % self.port
        hdrs = {"host": host, "x-amz-date": amz, "x-amz-content-sha256": psha}
        for k, v in (headers or {}).items():
            hdrs[k.lower()] = v
        names = sorted(hdrs)
        creq = "\n".join([method, path, q] + ["%s:%s" % (n, hdrs[n].strip()) for n in names] +
                         ["", ";".join(names), psha])
        scope = "%s/%s/s3/aws4_request" % (amz[:8], self.REGION)
        sts = "\n".join(["AWS4-HMAC-SHA256", amz, scope, hashlib.sha256(creq.encode()).hexdigest()])
        k = ("AWS4" + (secret or self.secret_key)).encode()
        for part in (amz[:8], self.REGION, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
        hdrs["authorization"] = ("AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, "
                                 "Signature=%s" % (self.access_key, scope, ";".join(names), sig))
        req = urllib.request.Request(self.url + path + ("?" + q if q else ""),
                                     data=body if method in ("PUT", "POST") else None,
                                     method=method, headers={k: v for k, v in hdrs.items()
                                                             if k != "host"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def create_bucket(self, name):
        st, _, body = self.request("PUT", name)
        assert st == 200, (st, body)

    def keys(self, bucket, prefix=""):
        """Every key of the bucket under prefix (no '/' in it: see above)."""
        out, token = [], None
        while True:
            q = {"list-type": "2"}
            if prefix:
                q["prefix"] = prefix
            if token:
                q["continuation-token"] = token
            st, _, body = self.request("GET", bucket, query=q)
            assert st == 200, (st, body)
            text = body.decode()
            out += [(m.group(1), int(m.group(2))) for m in re.finditer(
                r"<Key>(.*?)</Key>.*?<Size>(\d+)</Size>", text, re.S)]
            m = re.search("<NextContinuationToken>(.*?)</NextContinuationToken>", text)
            if "<IsTruncated>true</IsTruncated>" not in text or not m:
                return out
            token = m.group(1)

    def get(self, bucket, key):
        st, h, body = self.request("GET", bucket, key)
        assert st == 200, (st, key, body)
        return body

    def put(self, bucket, key, body):
        # a Content-Type of its own: urllib's default (a form) makes moto
        # read the body as form fields and store nothing
        st, _, resp = self.request("PUT", bucket, key, body=body,
                                   headers={"Content-Type": "application/octet-stream"})
        assert st == 200, (st, key, resp)

    def backup_section(self, bucket, path="", interval="200ms", access_key=None, secret=None,
                       endpoint=None):
        return ("backup:\n  type: s3\n  endpoint: %s\n  force-path-style: true\n"
                "  region: us-east-1\n  bucket: %s\n  path: \"%s\"\n  access-key-id: %s\n"
                "  secret-access-key: %s\n  sync-interval: %s\n"
                % (endpoint or self.url, bucket, path, access_key or self.access_key,
                   secret or self.secret_key, interval))
