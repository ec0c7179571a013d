"""The deployment files under deploy/ and the man page: what can be checked
without Docker, Kubernetes, Fly.io or a FUSE mount.

* every YAML, JSON and TOML file under deploy/ parses (every document of a
  multi-document YAML file);
* the structure that FUSE needs is there: /dev/fuse and SYS_ADMIN in
  compose.yaml, mount propagation and the probes in the StatefulSet, no
  mount-namespace option in the systemd unit;
* deploy/systemd/ltxfs.service passes `systemd-analyze verify`;
* every ltxfs config under deploy/ (files, the Kubernetes ConfigMap, the
  quick-start template) loads with `ltxfs mount -check-config`, with the
  environment its platform provides, and the printed effective config shows
  no secret;
* the Dockerfile runs the README's install step;
* docs/ltxfs.8 renders without warnings and meson installs it.
"""
import json
import os
import re
import shutil
import subprocess
import tomllib

import pytest
import yaml

from conftest import LTXFS, ROOT

DEPLOY = os.path.join(ROOT, "deploy")
MANPAGE = os.path.join(ROOT, "docs", "ltxfs.8")

# Secrets the environment below hands to the configs; none may be printed.
HTTP_TOKEN = "tok-5f1c9a77e2d04b3c"
CONSUL_TOKEN = "consul-acl-8e2b61d4f0a3"
ETCD_PASSWORD = "etcd-pw-31c7d9aa0b"
SECRETS = [HTTP_TOKEN, CONSUL_TOKEN, ETCD_PASSWORD]

# What each platform sets: Docker and Kubernetes set HOSTNAME, Fly.io sets the
# FLY_* variables and PRIMARY_REGION (`fly consul attach` sets
# FLY_CONSUL_URL, with an ACL token and a key prefix), statefulset.yaml sets
# POD_* and ETCD_*, deploy/litefs.yml reads PRIMARY.
PLATFORM_ENV = {
    "HOSTNAME": "node1",
    "FLY_REGION": "ord",
    "PRIMARY_REGION": "ord",
    "FLY_APP_NAME": "my-ltxfs-app",
    "FLY_ALLOC_ID": "3d8d99e4b3d268",
    "FLY_CONSUL_URL": "https://:%s@consul-iad-11.fly-shared.net/my-ltxfs-app-x7k2p9/"
                      % CONSUL_TOKEN,
    "POD_NAME": "ltxfs-0",
    "POD_NAMESPACE": "default",
    "ETCD_USERNAME": "ltxfs",
    "ETCD_PASSWORD": ETCD_PASSWORD,
    "PRIMARY": "true",
    "LTXFS_HTTP_TOKEN": HTTP_TOKEN,
}

# Files that must exist, so that the globs below can never pass on nothing.
EXPECTED = [
    "docker/Dockerfile", "docker/compose.yaml", "docker/ltxfs.yml",
    "kubernetes/kustomization.yaml", "kubernetes/configmap.yaml",
    "kubernetes/service.yaml", "kubernetes/statefulset.yaml",
    "fly/fly.toml", "fly/ltxfs.yml", "systemd/ltxfs.service",
]

# Options that give a systemd service its own mount namespace: a FUSE mount
# made inside it would be invisible to the rest of the host.
NAMESPACE_OPTIONS = [
    "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateMounts",
    "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "ExecPaths", "NoExecPaths",
    "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
    "ProtectControlGroups", "ProtectClock", "ProtectProc", "ProcSubset", "BindPaths",
    "BindReadOnlyPaths", "TemporaryFileSystem", "RootDirectory", "RootImage", "MountFlags",
    "PrivateUsers", "DynamicUser",
]


def rel(path):
    return os.path.relpath(path, ROOT)


def file_id(path):
    # with an empty list pytest passes its own NOTSET object here, not a path
    return rel(path) if isinstance(path, str) else "none"


def deploy_files(*exts):
    out = []
    for d, _, files in os.walk(DEPLOY):
        for f in files:
            if f.endswith(tuple("." + e for e in exts)):
                out.append(os.path.join(d, f))
    return sorted(out)


def quickstart_text(base, node, port, candidate):
    """deploy/quickstart.yml filled in as deploy/quickstart.sh does (sed)."""
    with open(os.path.join(DEPLOY, "quickstart.yml")) as f:
        text = f.read()
    for k, v in (("@BASE@", str(base)), ("@NODE@", node), ("@PORT@", str(port)),
                 ("@CANDIDATE@", "true" if candidate else "false")):
        text = text.replace(k, v)
    return text


def read_text(path, tmp_path):
    if os.path.basename(path) == "quickstart.yml":
        return quickstart_text(tmp_path, "node1", 20201, True)
    with open(path) as f:
        return f.read()


def yaml_docs(path, tmp_path=None):
    return [d for d in yaml.safe_load_all(read_text(path, tmp_path or "/tmp/x"))
            if d is not None]


def load_yaml(relpath):
    docs = yaml_docs(os.path.join(DEPLOY, relpath))
    assert len(docs) == 1, relpath
    return docs[0]


def is_ltxfs_config(doc):
    return isinstance(doc, dict) and "fuse" in doc and "lease" in doc


def check_config(path, env=None, extra=()):
    e = dict(os.environ)
    e.update(PLATFORM_ENV)
    e.update(env or {})
    return subprocess.run([LTXFS, "mount", "-check-config", "-config", str(path), *extra],
                          env=e, capture_output=True, text=True, timeout=30)


def effective(path, env=None):
    """Run -check-config, insist on success and no secret in its output, and
    return the printed effective config, parsed (it is YAML)."""
    r = check_config(path, env)
    assert r.returncode == 0, "%s: exit %d\n%s%s" % (path, r.returncode, r.stdout, r.stderr)
    assert r.stdout.strip(), "%s: -check-config printed nothing" % path
    for s in SECRETS:
        assert s not in r.stdout, "%s: secret %r printed:\n%s" % (path, s, r.stdout)
        assert s not in r.stderr, "%s: secret %r printed:\n%s" % (path, s, r.stderr)
    eff = yaml.safe_load(r.stdout)
    assert isinstance(eff, dict), "%s: effective config is not a mapping:\n%s" % (path,
                                                                                  r.stdout)
    return eff


def test_expected_files_exist():
    for f in EXPECTED:
        assert os.path.isfile(os.path.join(DEPLOY, f)), "deploy/%s is missing" % f


@pytest.mark.parametrize("path", deploy_files("yaml", "yml"), ids=file_id)
def test_yaml_parses(path, tmp_path):
    docs = yaml_docs(path, tmp_path)
    assert docs, "%s holds no YAML document" % rel(path)


def test_json_parses():
    # deploy/ ships no JSON today; any JSON file added later must parse
    for path in deploy_files("json"):
        with open(path) as f:
            try:
                json.load(f)
            except ValueError as e:
                raise AssertionError("%s: %s" % (rel(path), e))


@pytest.mark.parametrize("path", deploy_files("toml"), ids=file_id)
def test_toml_parses(path):
    with open(path, "rb") as f:
        assert tomllib.load(f)


# ---- ltxfs configs ----------------------------------------------------------

def config_sources(tmp_path):
    """Every ltxfs config under deploy/, as (name, path of a file to load):
    the files themselves, the ltxfs.yml of each ConfigMap (written out), and
    the quick-start template filled in."""
    out = []
    for path in deploy_files("yaml", "yml"):
        docs = yaml_docs(path, tmp_path)
        if os.path.basename(path) == "quickstart.yml":
            for i, candidate in enumerate((True, False)):
                p = tmp_path / ("quickstart-%d.yml" % i)
                p.write_text(quickstart_text(tmp_path / "qs", "node%d" % (i + 1), 20201 + i,
                                             candidate))
                out.append(("%s (node%d)" % (rel(path), i + 1), str(p)))
            continue
        if len(docs) == 1 and is_ltxfs_config(docs[0]):
            out.append((rel(path), path))
            continue
        for d in docs:
            if isinstance(d, dict) and d.get("kind") == "ConfigMap":
                for key, text in (d.get("data") or {}).items():
                    if is_ltxfs_config(yaml.safe_load(text)):
                        p = tmp_path / ("%s-%s" % (d["metadata"]["name"], key))
                        p.write_text(text)
                        out.append(("%s data[%s]" % (rel(path), key), str(p)))
    return out


def test_every_config_under_deploy_loads(tmp_path):
    sources = config_sources(tmp_path)
    names = [n for n, _ in sources]
    for want in ("deploy/docker/ltxfs.yml", "deploy/fly/ltxfs.yml", "deploy/litefs.yml",
                 "deploy/kubernetes/configmap.yaml data[ltxfs.yml]",
                 "deploy/quickstart.yml (node1)", "deploy/quickstart.yml (node2)"):
        assert want in names, "config %s not found among %s" % (want, names)
    for name, path in sources:
        eff = effective(path)
        assert eff.get("lease", {}).get("type") in ("static", "consul", "etcd"), name


def test_check_config_mounts_nothing(tmp_path):
    p = tmp_path / "qs.yml"
    p.write_text(quickstart_text(tmp_path / "qs", "node1", 20201, True))
    effective(p)
    assert not os.path.exists(tmp_path / "qs"), "-check-config created the node's directories"


def test_check_config_refuses_a_bad_config(tmp_path):
    p = tmp_path / "bad.yml"
    p.write_text(quickstart_text(tmp_path / "qs", "node1", 20201, True)
                 + "fuse_typo: 1\n")
    r = check_config(p)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert str(p) in r.stderr and "fuse_typo" in r.stderr, r.stderr


def test_fly_candidates_are_the_primary_region():
    path = os.path.join(DEPLOY, "fly", "ltxfs.yml")
    eff = effective(path)
    lease = eff["lease"]
    assert lease["type"] == "consul" and lease["candidate"] is True and lease["promote"] is True
    assert lease["advertise-url"] == "http://node1.vm.my-ltxfs-app.internal:20202"
    # the token in the URL is masked; the host and the prefix are not lost
    assert "consul-iad-11.fly-shared.net" in lease["consul"]["url"]
    assert lease["consul"]["key"] == "ltxfs/my-ltxfs-app"
    eff = effective(path, {"FLY_REGION": "fra"})
    assert eff["lease"]["candidate"] is False


def test_kubernetes_config_masks_the_etcd_password_and_works_without_auth(tmp_path):
    cm = load_yaml("kubernetes/configmap.yaml")
    path = tmp_path / "ltxfs.yml"
    path.write_text(cm["data"]["ltxfs.yml"])
    eff = effective(path)
    etcd = eff["lease"]["etcd"]
    assert etcd["username"] == "ltxfs"
    assert etcd["password"] and etcd["password"] != ETCD_PASSWORD
    assert eff["lease"]["advertise-url"] == "http://ltxfs-0.ltxfs.default.svc.cluster.local:20202"
    assert eff["http"]["token"] and eff["http"]["token"] != HTTP_TOKEN
    # the Secret's etcd keys are optional: unset, there is no authentication
    eff = effective(path, {"ETCD_USERNAME": "", "ETCD_PASSWORD": ""})
    assert not eff["lease"]["etcd"].get("password")


def test_docker_config_names_each_node_by_its_hostname():
    eff = effective(os.path.join(DEPLOY, "docker", "ltxfs.yml"), {"HOSTNAME": "node3"})
    assert eff["lease"]["hostname"] == "node3"
    assert eff["lease"]["advertise-url"] == "http://node3:20202"
    assert eff["lease"]["consul"]["url"] == "http://consul:8500"


# ---- Docker -----------------------------------------------------------------

def test_dockerfile_uses_the_readme_install_step():
    with open(os.path.join(ROOT, "README.md")) as f:
        assert "deploy/install-deps.sh" in f.read()
    with open(os.path.join(DEPLOY, "docker", "Dockerfile")) as f:
        text = f.read()
    lines = [l for l in re.sub(r"\\\n", " ", text).splitlines() if not l.lstrip().startswith("#")]
    froms = [l.split()[1] for l in lines if l.startswith("FROM ")]
    assert froms and all(re.match(r"debian:(12|bookworm)\b", f) for f in froms), froms
    runs = [l for l in lines if l.startswith("RUN ")]
    assert any("sh deploy/install-deps.sh" in l for l in runs), runs
    assert any("meson setup" in l and "--buildtype=release" in l for l in runs), runs
    assert any("meson install" in l for l in runs), runs
    assert 'ENTRYPOINT ["ltxfs", "mount"]' in lines


def test_install_step_installs_what_these_tests_need():
    with open(os.path.join(DEPLOY, "install-deps.sh")) as f:
        assert re.search(r"\bpython3-yaml\b", f.read())


def test_compose_has_three_fuse_nodes_and_consul():
    c = load_yaml("docker/compose.yaml")
    services = c["services"]
    nodes = {n: s for n, s in services.items() if n.startswith("node")}
    assert len(nodes) == 3
    assert any("hashicorp/consul" in s.get("image", "") for s in services.values())
    hosts = set()
    for name, s in nodes.items():
        assert any(d.split(":")[0] == "/dev/fuse" for d in s["devices"]), name
        assert "SYS_ADMIN" in s["cap_add"], name
        assert "apparmor:unconfined" in s["security_opt"], name
        assert "LTXFS_HTTP_TOKEN" in s["environment"], name
        mounts = {v.split(":")[1]: v.split(":")[0] for v in s["volumes"]}
        assert "/var/lib/litefs" in mounts, name
        src = mounts["/etc/ltxfs.yml"]
        assert os.path.isfile(os.path.join(DEPLOY, "docker", src)), src
        hosts.add(s["hostname"])
    assert hosts == set(nodes)   # advertise-url uses ${HOSTNAME}, which must resolve


# ---- Kubernetes -------------------------------------------------------------

def test_kubernetes_statefulset():
    k = load_yaml("kubernetes/kustomization.yaml")
    for r in k["resources"]:
        assert os.path.isfile(os.path.join(DEPLOY, "kubernetes", r)), r
    svc = load_yaml("kubernetes/service.yaml")
    sts = load_yaml("kubernetes/statefulset.yaml")
    cm = load_yaml("kubernetes/configmap.yaml")
    assert sts["kind"] == "StatefulSet" and sts["spec"]["replicas"] == 3
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["metadata"]["name"] == sts["spec"]["serviceName"]
    pod = sts["spec"]["template"]["spec"]
    assert any(v.get("configMap", {}).get("name") == cm["metadata"]["name"]
               for v in pod["volumes"])
    shared = [v["name"] for v in pod["volumes"] if "emptyDir" in v]
    assert shared
    cs = {c["name"]: c for c in pod["containers"]}
    lt = cs.pop("ltxfs")
    assert lt["securityContext"]["privileged"] is True
    assert lt["readinessProbe"]["httpGet"]["path"] == "/health"
    env = {e["name"]: e for e in lt["env"]}
    assert env["LTXFS_HTTP_TOKEN"]["valueFrom"]["secretKeyRef"]["key"]
    prop = {m["name"]: m.get("mountPropagation") for m in lt["volumeMounts"]}
    assert prop[shared[0]] == "Bidirectional"
    app = list(cs.values())
    assert app, "no app container"
    prop = {m["name"]: m.get("mountPropagation") for m in app[0]["volumeMounts"]}
    assert prop[shared[0]] == "HostToContainer"
    # fuse.dir lies inside the shared volume, at the path the app sees it
    conf = yaml.safe_load(cm["data"]["ltxfs.yml"])
    lt_mount = [m["mountPath"] for m in lt["volumeMounts"] if m["name"] == shared[0]][0]
    app_mount = [m["mountPath"] for m in app[0]["volumeMounts"] if m["name"] == shared[0]][0]
    assert conf["fuse"]["dir"].startswith(lt_mount.rstrip("/") + "/")
    assert lt_mount == app_mount


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not installed")
def test_kustomize_builds():
    r = subprocess.run(["kubectl", "kustomize", os.path.join(DEPLOY, "kubernetes")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(r.stdout) if d]
    assert sorted(kinds) == ["ConfigMap", "Service", "StatefulSet"], kinds


# ---- systemd ----------------------------------------------------------------

def unit_settings(text):
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            k, v = line.split("=", 1)
            out.append((k.strip(), v.strip()))
    return out


def test_systemd_unit_settings():
    with open(os.path.join(DEPLOY, "systemd", "ltxfs.service")) as f:
        s = dict(unit_settings(f.read()))
    assert s["Type"] == "notify"
    assert s["ExecStart"] == "/usr/local/bin/ltxfs mount -config /etc/ltxfs.yml"
    assert s["Restart"] == "on-failure"
    assert s["KillSignal"] == "SIGTERM"
    for k in ("TimeoutStopSec", "LimitNOFILE"):
        assert k in s, k
    bad = [k for k in s if k in NAMESPACE_OPTIONS]
    assert not bad, "these options hide the FUSE mount from the host: %s" % bad
    if "DevicePolicy" in s or "DeviceAllow" in s:
        assert "/dev/fuse" in s.get("DeviceAllow", "")
    if "CapabilityBoundingSet" in s:
        assert "CAP_SYS_ADMIN" in s["CapabilityBoundingSet"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(tmp_path):
    """`systemd-analyze verify` on a copy whose ExecStart is the built binary
    (verify checks that the program exists and is executable), with the man
    page on MANPATH so that Documentation=man:ltxfs(8) is checked too."""
    with open(os.path.join(DEPLOY, "systemd", "ltxfs.service")) as f:
        text = f.read()
    exe = os.path.abspath(LTXFS)
    assert os.access(exe, os.X_OK), "%s is not built" % exe
    copy = text.replace("ExecStart=/usr/local/bin/ltxfs ", "ExecStart=%s " % exe)
    assert copy != text
    unit = tmp_path / "ltxfs.service"
    unit.write_text(copy)
    env = dict(os.environ)
    args = ["systemd-analyze", "verify"]
    if shutil.which("man"):
        (tmp_path / "man" / "man8").mkdir(parents=True)
        shutil.copy(MANPAGE, tmp_path / "man" / "man8" / "ltxfs.8")
        env["MANPATH"] = str(tmp_path / "man")
    else:
        args.append("--man=no")
    r = subprocess.run(args + [str(unit)], env=env, capture_output=True, text=True,
                       timeout=60)
    mine = [l for l in (r.stdout + r.stderr).splitlines() if "ltxfs" in l]
    assert r.returncode == 0 and not mine, "exit %d\n%s%s" % (r.returncode, r.stdout,
                                                              r.stderr)


# ---- the man page -----------------------------------------------------------

def test_man_page_is_installed_by_meson():
    with open(os.path.join(ROOT, "meson.build")) as f:
        assert re.search(r"install_man\(\s*'docs/ltxfs\.8'\s*\)", f.read())


def test_man_page_covers_every_command_and_flag():
    with open(MANPAGE) as f:
        text = f.read().replace("\\-", "-")
    for cmd in ("mount", "import", "export", "status", "run", "ltx dump", "ltx verify",
                "orphans", "version"):
        assert re.search(r'^\.SS "ltxfs %s"$' % cmd, text, re.M), cmd
    for flag in ("-config", "-no-expand-env", "-check-config", "-name", "-url", "-json",
                 "-promote", "-if-candidate", "-h"):
        assert flag in text, flag
    for word in ("LTXFS_HTTP_TOKEN", "HOSTNAME", "SIGTERM", "/health", "/metrics", "/events",
                 "/import", "/export", "/promote", "/handoff", "/stream", "/info", "/ltx"):
        assert word in text, word
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "CONFIGURATION", "FILES",
                    "HTTP API", "EXIT STATUS", "ENVIRONMENT", "SIGNALS", "SEE ALSO"):
        assert re.search(r'^\.SH "?%s"?$' % section, text, re.M), section


@pytest.mark.skipif(not shutil.which("groff"), reason="groff is not installed")
def test_man_page_renders_without_groff_warnings():
    r = subprocess.run(["groff", "-man", "-ww", "-z", MANPAGE], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


@pytest.mark.skipif(not shutil.which("man"), reason="man is not installed")
def test_man_page_renders_without_man_warnings():
    env = dict(os.environ, MANWIDTH="80", MANPAGER="cat", PAGER="cat")
    r = subprocess.run(["man", "--warnings", "-l", MANPAGE], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    assert "ltxfs - replicate SQLite databases" in r.stdout.replace("\u2010", "-")
