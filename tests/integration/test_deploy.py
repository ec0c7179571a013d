"""The deployment files under deploy/ and the man page: what can be checked
without Docker, Kubernetes, Fly.io or a FUSE mount.

* every YAML and TOML file under deploy/ parses (every document of a
  multi-document YAML file);
* the structure that FUSE needs is there: /dev/fuse and SYS_ADMIN in
  compose.yaml, mount propagation and the probes in the StatefulSet, no
  mount-namespace option in the systemd unit;
* deploy/kubernetes/ builds as `kubectl kustomize` builds it, and every
  object passes the checks the Kubernetes API server applies to it (kubectl
  is not a Debian 12 package: both are done here, on the parsed YAML);
* deploy/systemd/ltxfs.service passes `systemd-analyze verify`;
* every ltxfs config under deploy/ (files, the Kubernetes ConfigMap, the
  quick-start template) loads with `ltxfs mount -check-config`, with the
  environment its platform provides, and the printed effective config shows
  no secret;
* the Dockerfile runs the README's install step;
* docs/ltxfs.8 renders without warnings and meson installs it.

The tools these checks run (systemd-analyze, man, groff) are required: a
missing one fails the test, naming its package (helpers.TOOLS).
"""
import os
import re
import shutil
import subprocess
import tomllib

import pytest
import yaml

from helpers import LTXFS, ROOT, TOOLS, cli, require

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
    return cli("mount", "-check-config", "-config", str(path), *extra,
               env=dict(PLATFORM_ENV, **(env or {})), timeout=30)


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
        text = f.read()
    for package in ["python3-yaml", *TOOLS.values()]:
        assert re.search(r"\b%s\b" % re.escape(package), text), package


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


# ---- Kubernetes: `kubectl kustomize` and the API server's checks ------------
#
# kubectl is not a Debian 12 package, so what `kubectl kustomize` and
# `kubectl apply` would say about deploy/kubernetes/ is done here on the
# parsed YAML: kustomize_build() builds the objects as kustomize does for the
# fields this directory uses (and refuses a field it does not apply), and
# k8s_errors() lists what the API server's validation (and the kubelet, for
# probe ports) would reject in them. test_kubernetes_checks_catch_mistakes
# shows that each check can fail.

K8S_KINDS = {"ConfigMap": "v1", "Service": "v1", "StatefulSet": "apps/v1"}
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+$")
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*$")
_POD_FIELDS = {"metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName",
               "spec.serviceAccountName", "status.hostIP", "status.podIP", "status.podIPs"}
_VOLUME_SOURCES = {"emptyDir", "configMap", "secret", "persistentVolumeClaim", "hostPath",
                   "projected", "downwardAPI", "csi", "ephemeral"}
_PROBE_HANDLERS = {"httpGet", "tcpSocket", "exec", "grpc"}


def dns_label(v):
    return isinstance(v, str) and len(v) <= 63 and bool(_DNS_LABEL.match(v))


def dns_subdomain(v):
    return (isinstance(v, str) and 0 < len(v) <= 253 and
            all(dns_label(p) for p in v.split(".")))


def iana_svc_name(v):
    return (isinstance(v, str) and 0 < len(v) <= 15 and re.match(r"[-a-z0-9]+$", v) and
            re.search(r"[a-z]", v) and not v.startswith("-") and not v.endswith("-") and
            "--" not in v) is True


def port_number(v):
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65535


def label_errors(where, labels):
    out = []
    for k, v in (labels or {}).items():
        prefix, _, name = k.rpartition("/")
        if (prefix and not dns_subdomain(prefix)) or len(name) > 63 or \
                not _LABEL_NAME.match(name):
            out.append("%s: label key %r is not valid" % (where, k))
        if not isinstance(v, str) or len(v) > 63 or (v and not _LABEL_NAME.match(v)):
            out.append("%s: label %s=%r: the value is not valid" % (where, k, v))
    return out


def split_image(image):
    """An image reference as its name and what follows (":tag", "@digest", "")."""
    name, at, digest = image.partition("@")
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        name, tag = name[:colon], name[colon:]
    else:
        tag = ""
    return name, tag + at + digest


def kustomize_build(directory):
    """The objects `kubectl kustomize directory` prints, as a list of dicts."""
    with open(os.path.join(directory, "kustomization.yaml")) as f:
        k = yaml.safe_load(f)
    assert k.get("apiVersion") == "kustomize.config.k8s.io/v1beta1", k.get("apiVersion")
    assert k.get("kind") == "Kustomization", k.get("kind")
    extra = set(k) - {"apiVersion", "kind", "resources", "images"}
    assert not extra, "kustomization.yaml: %s: not applied by this check (extend it)" % (
        sorted(extra))
    objs, ids = [], set()
    for res in k.get("resources") or []:
        path = os.path.join(directory, res)
        assert os.path.isfile(path), "kustomization.yaml: resource %s: no such file" % res
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        for d in docs:
            assert isinstance(d, dict) and d.get("apiVersion") and d.get("kind"), \
                "%s: an object without apiVersion or kind" % res
            name = (d.get("metadata") or {}).get("name")
            assert name, "%s: a %s without metadata.name" % (res, d["kind"])
            oid = (d["apiVersion"].rpartition("/")[0], d["kind"],
                   d["metadata"].get("namespace"), name)
            assert oid not in ids, "%s: %s %s is defined twice" % (res, d["kind"], name)
            ids.add(oid)
            objs.append(d)
    for img in k.get("images") or []:
        assert img.get("name") and (img.get("newName") or img.get("newTag") or
                                    img.get("digest")), "images: %r changes nothing" % img
        hits = 0
        for o in objs:
            pod = ((o.get("spec") or {}).get("template") or {}).get("spec") or {}
            for c in (pod.get("containers") or []) + (pod.get("initContainers") or []):
                base, tag = split_image(c.get("image", ""))
                if base != img["name"]:
                    continue
                if img.get("digest"):
                    tag = "@" + img["digest"]
                elif img.get("newTag"):
                    tag = ":" + img["newTag"]
                c["image"] = img.get("newName", base) + tag
                hits += 1
        assert hits, "images: %s names no container's image" % img["name"]
    return objs


def pod_errors(where, pod, claims):
    """What the API server rejects in a pod template's spec."""
    out = []
    volumes = [v.get("name") for v in pod.get("volumes") or []]
    for v in pod.get("volumes") or []:
        if not dns_label(v.get("name")):
            out.append("%s: volume name %r is not a DNS label" % (where, v.get("name")))
        sources = set(v) & _VOLUME_SOURCES
        if len(sources) != 1 or set(v) - _VOLUME_SOURCES - {"name"}:
            out.append("%s: volume %s: exactly one source expected, not %s" % (
                where, v.get("name"), sorted(set(v) - {"name"})))
    if len(set(volumes)) != len(volumes):
        out.append("%s: duplicate volume names %s" % (where, volumes))
    containers = (pod.get("containers") or []) + (pod.get("initContainers") or [])
    if not pod.get("containers"):
        out.append("%s: no containers" % where)
    names = [c.get("name") for c in containers]
    if len(set(names)) != len(names):
        out.append("%s: duplicate container names %s" % (where, names))
    for c in containers:
        cw = "%s: container %s" % (where, c.get("name"))
        if not dns_label(c.get("name")):
            out.append("%s: the name is not a DNS label" % cw)
        if not c.get("image"):
            out.append("%s: no image" % cw)
        ports = [p.get("name") for p in c.get("ports") or [] if "name" in p]
        for p in c.get("ports") or []:
            if not port_number(p.get("containerPort")):
                out.append("%s: containerPort %r out of range" % (cw, p.get("containerPort")))
            if "name" in p and not iana_svc_name(p["name"]):
                out.append("%s: port name %r is not an IANA service name" % (cw, p["name"]))
        if len(set(ports)) != len(ports):
            out.append("%s: duplicate port names %s" % (cw, ports))
        for e in c.get("env") or []:
            if not _ENV_NAME.match(e.get("name") or ""):
                out.append("%s: env name %r is not valid" % (cw, e.get("name")))
            vf = e.get("valueFrom")
            if vf is not None:
                if "value" in e or len(vf) != 1:
                    out.append("%s: env %s: exactly one of value or one valueFrom source" % (
                        cw, e.get("name")))
                elif "fieldRef" in vf and vf["fieldRef"].get("fieldPath") not in _POD_FIELDS:
                    out.append("%s: env %s: fieldPath %r is not supported" % (
                        cw, e["name"], vf["fieldRef"].get("fieldPath")))
                elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
                    ref = vf.get("secretKeyRef") or vf.get("configMapKeyRef")
                    if not ref.get("name") or not _CONFIG_KEY.match(ref.get("key") or ""):
                        out.append("%s: env %s: a key reference needs a name and a valid key"
                                   % (cw, e["name"]))
        paths = []
        for m in c.get("volumeMounts") or []:
            if m.get("name") not in volumes + claims:
                out.append("%s: volumeMounts %r: not found among the volumes %s" % (
                    cw, m.get("name"), volumes + claims))
            if not str(m.get("mountPath", "")).startswith("/"):
                out.append("%s: mountPath %r is not absolute" % (cw, m.get("mountPath")))
            paths.append(m.get("mountPath"))
            prop = m.get("mountPropagation", "None")
            if prop not in ("None", "HostToContainer", "Bidirectional"):
                out.append("%s: mountPropagation %r is not valid" % (cw, prop))
            if prop == "Bidirectional" and \
                    not (c.get("securityContext") or {}).get("privileged"):
                out.append("%s: Bidirectional mount propagation is available only to "
                           "privileged containers" % cw)
        if len(set(paths)) != len(paths):
            out.append("%s: duplicate mountPath %s" % (cw, paths))
        for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
            probe = c.get(kind)
            if probe is None:
                continue
            handlers = set(probe) & _PROBE_HANDLERS
            if len(handlers) != 1:
                out.append("%s: %s: exactly one handler expected, not %s" % (
                    cw, kind, sorted(handlers)))
                continue
            port = probe[handlers.pop()].get("port")
            if isinstance(port, str) and (not iana_svc_name(port) or port not in ports):
                # the API server checks the form; the kubelet fails on a name
                # that is not one of the container's ports
                out.append("%s: %s: port %r is not a port of the container %s" % (
                    cw, kind, port, ports))
            elif port is not None and not isinstance(port, str) and not port_number(port):
                out.append("%s: %s: port %r out of range" % (cw, kind, port))
    return out


def k8s_errors(objs):
    """What the API server (and, for probe ports, the kubelet) would reject."""
    out = []
    for o in objs:
        kind, meta = o.get("kind"), o.get("metadata") or {}
        where = "%s %s" % (kind, meta.get("name"))
        if kind not in K8S_KINDS:
            out.append("%s: this check does not know the kind (extend it)" % where)
            continue
        if o.get("apiVersion") != K8S_KINDS[kind]:
            out.append("%s: apiVersion %r, not %r" % (where, o.get("apiVersion"),
                                                      K8S_KINDS[kind]))
        name_ok = _DNS1035_LABEL.match(meta.get("name") or "") if kind == "Service" \
            else dns_subdomain(meta.get("name"))
        if not name_ok or len(meta.get("name") or "") > (63 if kind == "Service" else 253):
            out.append("%s: the name is not valid for a %s" % (where, kind))
        out += label_errors(where, meta.get("labels"))
        spec = o.get("spec") or {}
        if kind == "ConfigMap":
            for key, v in (o.get("data") or {}).items():
                if not _CONFIG_KEY.match(key) or not isinstance(v, str):
                    out.append("%s: data key %r is not valid or its value not a string" % (
                        where, key))
        elif kind == "Service":
            out += label_errors(where + " selector", spec.get("selector"))
            ports = spec.get("ports") or []
            if not ports and spec.get("clusterIP") != "None":
                out.append("%s: no ports" % where)
            names = [p.get("name") for p in ports]
            if len(ports) > 1 and (None in names or len(set(names)) != len(names)):
                out.append("%s: several ports need unique names" % where)
            for p in ports:
                if "name" in p and not dns_label(p["name"]):
                    out.append("%s: port name %r is not a DNS label" % (where, p["name"]))
                if not port_number(p.get("port")):
                    out.append("%s: port %r out of range" % (where, p.get("port")))
                tp = p.get("targetPort")
                if tp is not None and not (iana_svc_name(tp) if isinstance(tp, str)
                                           else port_number(tp)):
                    out.append("%s: targetPort %r is not valid" % (where, tp))
        elif kind == "StatefulSet":
            tmpl = spec.get("template") or {}
            labels = (tmpl.get("metadata") or {}).get("labels") or {}
            sel = (spec.get("selector") or {}).get("matchLabels") or {}
            if not sel or any(labels.get(k) != v for k, v in sel.items()):
                out.append("%s: selector %r does not match the template's labels %r" % (
                    where, sel, labels))
            out += label_errors(where + " template", labels)
            if not spec.get("serviceName"):
                out.append("%s: no serviceName" % where)
            r = spec.get("replicas", 1)
            if not isinstance(r, int) or r < 0:
                out.append("%s: replicas %r is not valid" % (where, r))
            if spec.get("podManagementPolicy", "OrderedReady") not in ("OrderedReady",
                                                                        "Parallel"):
                out.append("%s: podManagementPolicy %r is not valid" % (
                    where, spec.get("podManagementPolicy")))
            claims = []
            for t in spec.get("volumeClaimTemplates") or []:
                cname = (t.get("metadata") or {}).get("name")
                claims.append(cname)
                ts = t.get("spec") or {}
                if not dns_label(cname):
                    out.append("%s: volumeClaimTemplate name %r is not valid" % (where, cname))
                if not ts.get("accessModes") or set(ts["accessModes"]) - {
                        "ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"}:
                    out.append("%s: claim %s: accessModes %r" % (where, cname,
                                                                  ts.get("accessModes")))
                if not ((ts.get("resources") or {}).get("requests") or {}).get("storage"):
                    out.append("%s: claim %s: no storage request" % (where, cname))
            out += pod_errors(where, tmpl.get("spec") or {}, claims)
    return out


def test_kustomize_build_passes_the_api_servers_checks():
    objs = kustomize_build(os.path.join(DEPLOY, "kubernetes"))
    assert sorted(o["kind"] for o in objs) == ["ConfigMap", "Service", "StatefulSet"]
    errors = k8s_errors(objs)
    assert not errors, "\n".join(errors)
    # the kustomization sets the image of every container
    sts = [o for o in objs if o["kind"] == "StatefulSet"][0]
    images = {c["name"]: c["image"] for c in sts["spec"]["template"]["spec"]["containers"]}
    assert images == {"ltxfs": "registry.example.com/ltxfs:latest",
                      "app": "registry.example.com/ltxfs:latest"}, images
    # the Service selects the StatefulSet's pods (not validated by the API
    # server: a wrong selector gives pods no DNS names)
    svc = [o for o in objs if o["kind"] == "Service"][0]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())


def test_kubernetes_checks_catch_mistakes(tmp_path):
    """Each check above fails on a manifest with the mistake it is about."""
    import copy

    good = kustomize_build(os.path.join(DEPLOY, "kubernetes"))

    def broken(change):
        objs = copy.deepcopy(good)
        by_kind = {o["kind"]: o for o in objs}
        sts, pod = by_kind["StatefulSet"], by_kind["StatefulSet"]["spec"]["template"]["spec"]
        change(by_kind, sts, pod, {c["name"]: c for c in pod["containers"]})
        return "\n".join(k8s_errors(objs))

    cases = [
        (lambda k, s, p, c: s["spec"]["selector"]["matchLabels"].update(x="y"), "selector"),
        (lambda k, s, p, c: c["app"]["volumeMounts"][0].update(name="nope"), "'nope'"),
        (lambda k, s, p, c: c["ltxfs"]["securityContext"].pop("privileged"), "Bidirectional"),
        (lambda k, s, p, c: c["app"].update(name="App_1"), "App_1"),
        (lambda k, s, p, c: c["ltxfs"]["readinessProbe"]["httpGet"].update(port="htp"),
         "'htp'"),
        (lambda k, s, p, c: c["ltxfs"]["ports"][0].update(containerPort=70000), "70000"),
        (lambda k, s, p, c: k["Service"]["spec"]["ports"][0].update(targetPort=0),
         "targetPort"),
        (lambda k, s, p, c: k["Service"].update(apiVersion="apps/v1"), "apiVersion"),
        (lambda k, s, p, c: k["ConfigMap"]["metadata"].update(name="Ltxfs"), "name"),
        (lambda k, s, p, c: c["ltxfs"]["env"][0]["valueFrom"]["fieldRef"].update(
            fieldPath="spec.bogus"), "fieldPath"),
        (lambda k, s, p, c: p["volumes"][0].update(hostPath={"path": "/x"}), "one source"),
        (lambda k, s, p, c: s["spec"]["volumeClaimTemplates"][0]["spec"].update(
            accessModes=["ReadWriteSometimes"]), "accessModes"),
    ]
    for change, needle in cases:
        errors = broken(change)
        assert needle in errors, (needle, errors)

    # and the build itself: an unknown field, a missing file, a duplicate
    # object, an image entry that matches no container
    def build_error(edit):
        d = tmp_path / ("k%d" % len(list(tmp_path.iterdir())))
        shutil.copytree(os.path.join(DEPLOY, "kubernetes"), d)
        path = d / "kustomization.yaml"
        path.write_text(edit(path.read_text()))
        with pytest.raises(AssertionError) as e:
            kustomize_build(str(d))
        return str(e.value)

    assert "namePrefix" in build_error(lambda t: t + "namePrefix: x-\n")
    assert "nope.yaml" in build_error(lambda t: t.replace("service.yaml", "nope.yaml"))
    assert "twice" in build_error(
        lambda t: t.replace("  - service.yaml\n", "  - service.yaml\n  - ./service.yaml\n"))
    assert "names no container" in build_error(lambda t: t.replace("name: ltxfs", "name: x"))


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
    require("man")  # verify looks the Documentation= page up with man
    (tmp_path / "man" / "man8").mkdir(parents=True)
    shutil.copy(MANPAGE, tmp_path / "man" / "man8" / "ltxfs.8")
    env = dict(os.environ, MANPATH=str(tmp_path / "man"))
    r = subprocess.run([require("systemd-analyze"), "verify", str(unit)], env=env,
                       capture_output=True, text=True, timeout=60)
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


def test_man_page_renders_without_groff_warnings():
    r = subprocess.run([require("groff"), "-man", "-ww", "-z", MANPAGE], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_man_page_renders_without_man_warnings():
    env = dict(os.environ, MANWIDTH="80", MANPAGER="cat", PAGER="cat")
    r = subprocess.run([require("man"), "--warnings", "-l", MANPAGE], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    assert "ltxfs - replicate SQLite databases" in r.stdout.replace("\u2010", "-")
