"""Checks of deploy/ that need no cluster and no container engine; run by integration/deploy-check.sh.

    check.py kube NAME RENDERED.yaml     one `kustomize build` output (base or an overlay)
    check.py compose                     deploy/docker-compose.yml, its collector config and deploy/Dockerfile

Environment: SLUICE_BIN (the sluice binary), REPO (the repository root), K8S_VERSIONS (comma-separated Kubernetes
versions whose schemas the manifests must pass), BASE_ROUTES (the base's routes.toml, for overlays' drift check).
Prints one line per check; exits 1 after printing every problem found.
"""

import base64
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import yaml

REPO = os.environ["REPO"]
SLUICE = os.environ["SLUICE_BIN"]
PROBLEMS = []
NOTES = []

# Sluice's defaults (README "routes.toml, walked through") for keys a config may leave out; --print reports them
# too, but the [store] fallback below reads the TOML directly.
DEFAULT_SPOOL_MAX = "1GiB"


def problem(where, text):
    PROBLEMS.append(f"{where}: {text}")


def ok(text):
    print(f"  ok    {text}")


# --- units ------------------------------------------------------------------------------------------------------

_DUR = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def seconds(text):
    """A humantime duration ("5s", "1m 30s", "250ms") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-zµ]+)", text)
    if not parts or re.sub(r"[\d.\sa-zµ]", "", text):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * _DUR[u] for n, u in parts)


_SIZE = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
         "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}
_QTY = {"": 1, "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3,
        "Ti": 1024**4}


def size_bytes(text):
    """A Sluice size ("1GiB", "64KiB", "1MB") in bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _SIZE:
        raise ValueError(f"not a size: {text!r}")
    return int(float(m.group(1)) * _SIZE[m.group(2).lower()])


def quantity_bytes(text):
    """A Kubernetes quantity ("1536Mi", "2Gi") in bytes."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T|)", str(text))
    if not m:
        raise ValueError(f"not a quantity: {text!r}")
    return int(float(m.group(1)) * _QTY[m.group(2)])


# --- sluice check -----------------------------------------------------------------------------------------------

def base_env():
    return {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}


def with_spools_under(toml_text, root):
    """The config with every spool `dir` moved under `root`: `sluice check` tests that it can create and write the
    directory, which says something about this machine, not about the pod."""
    return re.sub(r'(?m)^(\s*dir\s*=\s*")(/[^"]*)"', lambda m: f'{m.group(1)}{root}{m.group(2)}"', toml_text)


def strip_table(toml_text, table):
    """The config without `[table]` (its header up to the next table header)."""
    out, skipping = [], False
    for line in toml_text.splitlines(keepends=True):
        header = re.match(r"\s*\[\[?\s*([^\]]+?)\s*\]\]?", line)
        if header:
            skipping = header.group(1) == table or header.group(1).startswith(table + ".")
        if not skipping:
            out.append(line)
    return "".join(out)


# A [store] table while the feature is not in this build: `sluice check` calls it unknown / not built.
STORE_NOT_BUILT = re.compile(r"store.*(unknown|not (yet )?(built|implemented|supported))|"
                             r"(unknown|not (yet )?(built|implemented|supported)).*store", re.I)


def sluice_check(where, toml_text, env, allow_store_not_built):
    """`sluice check --strict --print` with exactly `env`; returns the effective config (dict)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "routes.toml")
        text = with_spools_under(toml_text, os.path.join(tmp, "spool-root"))
        with open(path, "w") as f:
            f.write(text)
        run = subprocess.run([SLUICE, "check", "--strict", "--print", path], env={**base_env(), **env},
                             capture_output=True, text=True)
        if run.returncode == 0:
            summary = [line for line in run.stderr.splitlines() if line.startswith("ok:")]
            ok(f"{where}: sluice check --strict: {summary[-1] if summary else 'ok'}")
            return json.loads(run.stdout)
        lines = [line for line in (run.stdout + run.stderr).splitlines()
                 if line.strip() and not line.startswith("warning:") and not re.search(r"\d+ problem\(s\)$", line)]
        if allow_store_not_built and lines and all(STORE_NOT_BUILT.search(line) for line in lines):
            NOTES.append(f"{where}: `sluice check` does not know [store] yet (the Redis store is being built); it "
                         f"said: {'; '.join(lines)}. Checked the rest of the config without [store]: once the "
                         f"feature lands this note disappears and the whole file is checked.")
            print(f"  NOTE  {where}: [store] not built into this sluice yet: checking the file without it")
            return sluice_check(f"{where} (without [store])", strip_table(toml_text, "store"), env, False)
        problem(where, "sluice check --strict failed:\n      " + "\n      ".join(lines or [run.stderr.strip()]))
        return None


# --- Kubernetes -------------------------------------------------------------------------------------------------

def schema_validate(name, docs):
    versions = [v.strip() for v in os.environ.get("K8S_VERSIONS", "1.30.0,1.37.0").split(",") if v.strip()]
    extra_dir = os.path.join(REPO, "deploy", "kubernetes", "schemas")
    for doc in docs:
        what = f"{name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        group_version = doc.get("apiVersion", "")
        fname = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", group_version)
        extra = os.path.join(extra_dir, f"{str(doc.get('kind')).lower()}-{fname}.json")
        if os.path.exists(extra):
            with open(extra) as f:
                schema = json.load(f)
            errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=str)
            for e in errors:
                problem(what, f"schema {os.path.relpath(extra, REPO)}: {'.'.join(map(str, e.path))}: {e.message}")
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError as e:
                problem(what, f"{e.message}, and no {os.path.relpath(extra, REPO)}")
                break
            except kubernetes_validate.ValidationError as e:
                problem(what, f"Kubernetes {version} schema (strict): {'.'.join(map(str, e.path))}: {e.message}")
    ok(f"{name}: {len(docs)} resources valid against Kubernetes {', '.join(versions)} (strict) and schemas/")


def secret_values(secret):
    values = dict(secret.get("stringData") or {})
    for k, v in (secret.get("data") or {}).items():
        values.setdefault(k, base64.b64decode(v).decode())
    return values


def container_env(where, container, by_kind):
    """The environment a container gets from env and envFrom, resolved against the rendered Secrets/ConfigMaps."""
    env = {}

    def source(kind, name, optional):
        obj = by_kind.get(kind, {}).get(name)
        if obj is None and not optional:
            problem(where, f"refers to {kind} {name!r}, which the rendering does not contain")
        if obj is None:
            return {}
        return secret_values(obj) if kind == "Secret" else dict(obj.get("data") or {})

    for src in container.get("envFrom") or []:
        if "secretRef" in src:
            ref = src["secretRef"]
            values = source("Secret", ref["name"], ref.get("optional", False))
        else:
            ref = src["configMapRef"]
            values = source("ConfigMap", ref["name"], ref.get("optional", False))
        env.update({src.get("prefix", "") + k: v for k, v in values.items()})
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "valueFrom" in var:
            vf = var["valueFrom"]
            for key, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                if key in vf:
                    values = source(kind, vf[key]["name"], vf[key].get("optional", False))
                    if vf[key]["key"] not in values and not vf[key].get("optional", False):
                        problem(where, f"env {var['name']}: {kind} {vf[key]['name']!r} has no key {vf[key]['key']!r}")
                    elif vf[key]["key"] in values:
                        env[var["name"]] = values[vf[key]["key"]]
    return env


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def workloads(docs):
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


def check_pod_security(name, w):
    spec = w["spec"]["template"]["spec"]
    pod = spec.get("securityContext") or {}
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        where = f"{name}: {w['kind']}/{w['metadata']['name']} container {c['name']}"
        sc = {**pod, **(c.get("securityContext") or {})}
        if sc.get("runAsNonRoot") is not True:
            problem(where, "runAsNonRoot is not true")
        for key in ("runAsUser", "runAsGroup"):
            if not isinstance(sc.get(key), int) or sc[key] == 0:
                problem(where, f"{key} must be a numeric non-root id, is {sc.get(key)!r}")
        if sc.get("readOnlyRootFilesystem") is not True:
            problem(where, "readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problem(where, "allowPrivilegeEscalation is not false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problem(where, "capabilities do not drop ALL")
        res = c.get("resources") or {}
        for kind, keys in (("requests", ("cpu", "memory")), ("limits", ("memory",))):
            for key in keys:
                if key not in (res.get(kind) or {}):
                    problem(where, f"resources.{kind}.{key} is not set")
    ok(f"{name}: {w['kind']}/{w['metadata']['name']}: non-root numeric ids, read-only root, no capabilities, "
       f"resources set")


def prestop_seconds(where, container):
    hook = ((container.get("lifecycle") or {}).get("preStop")) or {}
    if not hook:
        return 0
    if "sleep" in hook:
        return hook["sleep"]["seconds"]
    cmd = " ".join((hook.get("exec") or {}).get("command") or [])
    m = re.fullmatch(r"(?:/bin/|/usr/bin/)?(?:sh -c )?(?:/bin/|/usr/bin/)?sleep (\d+(?:\.\d+)?)", cmd)
    if m:
        return float(m.group(1))
    problem(where, f"preStop hook {hook} has no delay this check can read (use `sleep: {{seconds: N}}`)")
    return 0


def port_of(container, port):
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p["containerPort"]
    return None


def listen_port(addr):
    return int(addr.rsplit(":", 1)[1])


def check_sluice_workload(name, w, by_kind, effective, toml_cfg):
    spec = w["spec"]["template"]["spec"]
    where = f"{name}: {w['kind']}/{w['metadata']['name']}"
    c = next((c for c in spec["containers"] if c["name"] == "sluice"), None)
    if c is None:
        problem(where, "has no container named sluice")
        return
    server = effective["server"]

    # Shutdown: the grace period covers preStop + drain_delay + 2 x shutdown_grace.
    drain, grace = seconds(server["drain_delay"]), seconds(server["shutdown_grace"])
    pre = prestop_seconds(where, c)
    tgps = spec.get("terminationGracePeriodSeconds", 30)
    worst = pre + drain + 2 * grace
    if not tgps > worst:
        problem(where, f"terminationGracePeriodSeconds {tgps} is not above preStop {pre:g}s + drain_delay "
                       f"{drain:g}s + 2 x shutdown_grace {grace:g}s = {worst:g}s: Kubernetes would SIGKILL a pod "
                       f"still draining or flushing its producers")
    if pre == 0 and drain == 0:
        problem(where, "neither a preStop delay nor server.drain_delay: the listener closes while endpoints still "
                       "point at the pod (set drain_delay, e.g. \"5s\")")
    if pre > 0 and drain > 0:
        problem(where, f"both a preStop delay ({pre:g}s) and server.drain_delay ({drain:g}s) hold the shutdown: "
                       f"they add up; keep one (drain_delay also reports not ready at once)")
    ok(f"{where}: terminationGracePeriodSeconds {tgps} > preStop {pre:g}s + drain_delay {drain:g}s + "
       f"2 x shutdown_grace {grace:g}s = {worst:g}s")

    # Probes on the admin listener, which must listen on every address.
    admin, listen = server["admin_listen"], server["listen"]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = ((c.get(probe) or {}).get("httpGet")) or {}
        if get.get("path") != path:
            problem(where, f"{probe} is not an httpGet of {path} (is {c.get(probe)})")
        elif port_of(c, get.get("port")) != listen_port(admin):
            problem(where, f"{probe} port {get.get('port')} is not admin_listen's port ({admin})")
    if re.match(r"^(127\.|localhost|\[::1\])", admin):
        problem(where, f"server.admin_listen {admin} is loopback: the kubelet's probes cannot reach it")
    if port_of(c, "http") != listen_port(listen):
        problem(where, f"container port http is not server.listen's port ({listen})")
    ok(f"{where}: liveness /healthz and readiness /readyz on admin port {listen_port(admin)}")

    # Writable places: every spool directory is on a writable volume big enough for max_bytes + one segment.
    mounts = c.get("volumeMounts") or []
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    need = {}
    for broker, b in (toml_cfg.get("brokers") or {}).items():
        spool = b.get("spool")
        if not spool:
            continue
        d = spool["dir"]
        m = max((m for m in mounts if d == m["mountPath"] or d.startswith(m["mountPath"].rstrip("/") + "/")),
                key=lambda m: len(m["mountPath"]), default=None)
        if m is None or m.get("readOnly"):
            problem(where, f"brokers.{broker}.spool.dir {d} is on the read-only root filesystem (no writable "
                           f"volume mounted there)")
            continue
        vol = volumes.get(m["name"], {})
        if "configMap" in vol or "secret" in vol or "projected" in vol:
            problem(where, f"brokers.{broker}.spool.dir {d} is on a read-only {list(vol)[1]} volume")
            continue
        max_bytes = size_bytes(spool.get("max_bytes", DEFAULT_SPOOL_MAX))
        segment = min(128 * 1024**2, max(1024**2, max_bytes // 8))
        need[m["name"]] = need.get(m["name"], 0) + max_bytes + segment
        ok(f"{where}: brokers.{broker}.spool.dir {d} on volume {m['name']} "
           f"({'emptyDir' if 'emptyDir' in vol else 'persistent'})")
    for vname, n in need.items():
        limit = (volumes[vname].get("emptyDir") or {}).get("sizeLimit")
        if limit is not None and quantity_bytes(limit) < n:
            problem(where, f"emptyDir {vname} sizeLimit {limit} is below the spools' max_bytes + one segment "
                           f"({n / 1024**2:.0f}Mi): the pod would be evicted before the spool is full")

    # The config is mounted as a directory (not a subPath), so that ConfigMap updates reach the file watch.
    args = c.get("args") or []
    cfg = args[args.index("--config") + 1] if "--config" in args else None
    cfg = cfg or next((e.get("value") for e in c.get("env") or [] if e["name"] == "SLUICE_CONFIG"), None)
    m = next((m for m in mounts if cfg and os.path.dirname(cfg) == m["mountPath"].rstrip("/")), None)
    if m is None or m.get("subPath") or "configMap" not in volumes.get(m["name"], {}):
        problem(where, f"the config {cfg} is not in a ConfigMap volume mounted as a directory (no subPath): "
                       f"ConfigMap updates would not reach Sluice's file watch")

    # The HPA and the PDB point at this workload; the HPA's CPU target needs a CPU request.
    hpas = [h for h in by_kind.get("HorizontalPodAutoscaler", {}).values()
            if h["spec"]["scaleTargetRef"]["kind"] == w["kind"]
            and h["spec"]["scaleTargetRef"]["name"] == w["metadata"]["name"]]
    if not hpas:
        problem(where, "no HorizontalPodAutoscaler scales it")
    for h in hpas:
        if h["apiVersion"] != "autoscaling/v2":
            problem(where, f"HPA {h['metadata']['name']} is {h['apiVersion']}, not autoscaling/v2")
        if not any(m.get("type") == "Resource" and m["resource"]["name"] == "cpu" for m in h["spec"]["metrics"]):
            problem(where, f"HPA {h['metadata']['name']} has no CPU metric")
        if "replicas" in w["spec"]:
            problem(where, "sets replicas although an HPA scales it: every apply would undo the HPA's choice")
    labels = w["spec"]["template"]["metadata"]["labels"]
    pdbs = [p for p in by_kind.get("PodDisruptionBudget", {}).values()
            if selects(p["spec"]["selector"].get("matchLabels"), labels)]
    if not pdbs:
        problem(where, "no PodDisruptionBudget selects its pods")
    for p in pdbs:
        for h in hpas:
            if isinstance(p["spec"].get("minAvailable"), int) and p["spec"]["minAvailable"] >= h["spec"].get(
                    "minReplicas", 1):
                problem(where, f"PDB {p['metadata']['name']} minAvailable >= the HPA's minReplicas: no pod could "
                               f"ever be evicted")
    ok(f"{where}: HPA (autoscaling/v2, CPU) and PodDisruptionBudget, config mounted as a directory")


def check_services(name, docs, by_kind):
    pods = [(w, w["spec"]["template"]["metadata"]["labels"]) for w in workloads(docs)]
    for svc in by_kind.get("Service", {}).values():
        where = f"{name}: Service/{svc['metadata']['name']}"
        chosen = [w for w, labels in pods if selects(svc["spec"].get("selector"), labels)]
        if len(chosen) != 1:
            problem(where, f"selects the pods of {len(chosen)} workloads ({[w['metadata']['name'] for w in chosen]})"
                           f", not exactly one")
            continue
        containers = chosen[0]["spec"]["template"]["spec"]["containers"]
        for p in svc["spec"]["ports"]:
            if not any(port_of(c, p.get("targetPort", p["port"])) for c in containers):
                problem(where, f"port {p.get('name')}: targetPort {p.get('targetPort')} is no container port of "
                               f"{chosen[0]['metadata']['name']}")
    for sm in by_kind.get("ServiceMonitor", {}).values():
        where = f"{name}: ServiceMonitor/{sm['metadata']['name']}"
        svcs = [s for s in by_kind.get("Service", {}).values()
                if selects(sm["spec"]["selector"].get("matchLabels"), s["metadata"].get("labels") or {})]
        if not svcs:
            problem(where, "selects no Service of the rendering (by the Services' metadata.labels)")
        for e in sm["spec"]["endpoints"]:
            if not all(any(p.get("name") == e.get("port") for p in s["spec"]["ports"]) for s in svcs):
                problem(where, f"endpoint port {e.get('port')!r} is not a named port of every selected Service")
    ok(f"{name}: each Service selects one workload's pods and targets its ports"
       + (", ServiceMonitor scrapes a Service port" if by_kind.get("ServiceMonitor") else ""))


def check_urls(name, by_kind, secrets):
    """A URL in a Secret whose host is a Service of the rendering names one of its ports; a password given both in
    a URL and on its own (REDIS_URL / REDIS_PASSWORD) is the same."""
    services = by_kind.get("Service", {})
    for key, value in secrets.items():
        if not re.match(r"^[a-z][a-z0-9+.-]*://", value):
            continue
        u = urlsplit(value)
        if u.hostname in services:
            ports = [p["port"] for p in services[u.hostname]["spec"]["ports"]]
            if u.port not in ports:
                problem(f"{name}: Secret {key}", f"port {u.port} of Service {u.hostname} is not one of {ports}")
        prefix = key[: -len("_URL")] if key.endswith("_URL") else None
        if prefix and f"{prefix}_PASSWORD" in secrets and u.password != secrets[f"{prefix}_PASSWORD"]:
            problem(f"{name}: Secret {key}", f"the password in the URL differs from {prefix}_PASSWORD")


def kube(name, rendered):
    print(f"{name}:")
    with open(rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    by_kind = {}
    for d in docs:
        key = d["metadata"]["name"]
        if key in by_kind.setdefault(d["kind"], {}):
            problem(name, f"two {d['kind']} named {key}")
        by_kind[d["kind"]][key] = d
    schema_validate(name, docs)
    for w in workloads(docs):
        check_pod_security(name, w)
    check_services(name, docs, by_kind)

    sluices = [w for w in workloads(docs) if any(c["name"] == "sluice" for c in w["spec"]["template"]["spec"]
                                                 ["containers"])]
    if len(sluices) != 1:
        problem(name, f"expected one workload with a container named sluice, found {len(sluices)}")
        return
    w = sluices[0]
    c = next(c for c in w["spec"]["template"]["spec"]["containers"] if c["name"] == "sluice")
    vols = {v["name"]: v for v in w["spec"]["template"]["spec"].get("volumes") or []}
    args = c.get("args") or []
    cfg_path = args[args.index("--config") + 1] if "--config" in args else "/etc/sluice/routes.toml"
    mount = next((m for m in c.get("volumeMounts") or [] if os.path.dirname(cfg_path) == m["mountPath"].rstrip("/")),
                 None)
    cm_name = ((vols.get(mount["name"]) if mount else None) or {}).get("configMap", {}).get("name")
    cm = by_kind.get("ConfigMap", {}).get(cm_name)
    if cm is None or os.path.basename(cfg_path) not in (cm.get("data") or {}):
        problem(name, f"the config {cfg_path} is not a key of a ConfigMap mounted at {os.path.dirname(cfg_path)}")
        return
    toml_text = cm["data"][os.path.basename(cfg_path)]
    try:
        toml_cfg = tomllib.loads(toml_text)
    except tomllib.TOMLDecodeError as e:
        problem(f"{name}: ConfigMap/{cm_name}", f"routes.toml is not valid TOML: {e}")
        return
    if os.environ.get("SAVE_DIR"):
        with open(os.path.join(os.environ["SAVE_DIR"], f"{name.replace('/', '_')}.routes.toml"), "w") as f:
            f.write(toml_text)

    env = container_env(f"{name}: {w['kind']}/{w['metadata']['name']}", c, by_kind)
    effective = sluice_check(f"{name}: ConfigMap/{cm_name} routes.toml", toml_text, env,
                             allow_store_not_built="store" in toml_cfg)
    if effective is not None:
        check_sluice_workload(name, w, by_kind, effective, toml_cfg)
    secrets = {}
    for s in by_kind.get("Secret", {}).values():
        secrets.update(secret_values(s))
    check_urls(name, by_kind, secrets)

    # An overlay changes routes.toml only by adding [store]; the rest must stay the base's.
    base_path = os.environ.get("BASE_ROUTES")
    if base_path:
        with open(base_path, "rb") as f:
            base = tomllib.load(f)
        mine = copy.deepcopy(toml_cfg)
        mine.pop("store", None)
        if mine != base:
            diff = sorted(k for k in set(mine) | set(base) if mine.get(k) != base.get(k))
            problem(name, f"routes.toml differs from the base's in {diff}, not only in [store]: apply the base's "
                          f"change to the overlay's copy too")
        else:
            ok(f"{name}: routes.toml is the base's plus [store]")


# --- compose and Dockerfile -------------------------------------------------------------------------------------

def compose():
    print("deploy/docker-compose.yml:")
    deploy = os.path.join(REPO, "deploy")
    path = os.path.join(deploy, "docker-compose.yml")
    with open(path) as f:
        doc = yaml.safe_load(f)
    services = doc.get("services") or {}
    for want in ("sluice", "rabbitmq", "kafka", "redis", "otel-collector"):
        if want not in services:
            problem("docker-compose.yml", f"no service {want}")
    host_ports = {}
    for name, svc in services.items():
        where = f"docker-compose.yml: {name}"
        if not ("image" in svc or "build" in svc):
            problem(where, "neither image nor build")
        deps = svc.get("depends_on") or {}
        for dep, cond in (deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps)):
            if dep not in services:
                problem(where, f"depends_on {dep}, which is not a service")
            elif (cond or {}).get("condition") == "service_healthy" and "healthcheck" not in services[dep]:
                problem(where, f"waits for {dep} to be healthy, but {dep} has no healthcheck")
        for v in svc.get("volumes") or []:
            src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
            if src.startswith((".", "/")) and not os.path.exists(os.path.join(deploy, src)):
                problem(where, f"mounts {src}, which does not exist")
        for p in svc.get("ports") or []:
            hp = str(p).split(":")[0]
            if hp in host_ports:
                problem(where, f"host port {hp} is also published by {host_ports[hp]}")
            host_ports[hp] = name
        build = svc.get("build")
        if build:
            ctx = os.path.normpath(os.path.join(deploy, build.get("context", ".")))
            if not os.path.exists(os.path.join(ctx, build.get("dockerfile", "Dockerfile"))):
                problem(where, f"build: no {build.get('dockerfile')} in {ctx}")
    ok(f"docker-compose.yml: services {', '.join(services)}; depends_on, mounts, ports and build consistent")

    # The collector the gateway exports to.
    with open(os.path.join(deploy, "otel-collector.yaml")) as f:
        otel = yaml.safe_load(f)
    grpc = (((otel.get("receivers") or {}).get("otlp") or {}).get("protocols") or {}).get("grpc") or {}
    traces = ((otel.get("service") or {}).get("pipelines") or {}).get("traces") or {}
    if not grpc.get("endpoint", "").endswith(":4317") or "otlp" not in (traces.get("receivers") or []):
        problem("otel-collector.yaml", "no OTLP gRPC receiver on :4317 in a traces pipeline")
    for e in traces.get("exporters") or []:
        if e not in (otel.get("exporters") or {}):
            problem("otel-collector.yaml", f"the traces pipeline uses exporter {e}, which is not defined")

    # The gateway: the sample routes.toml with the service's environment, as the image runs it.
    sluice = services.get("sluice") or {}
    env = sluice.get("environment") or {}
    env = dict(e.split("=", 1) for e in env) if isinstance(env, list) else {k: str(v) for k, v in env.items()}
    dockerfile = check_dockerfile()
    env = {**dockerfile["env"], **env}
    with open(os.path.join(REPO, "routes.toml")) as f:
        toml_text = f.read()
    effective = sluice_check("docker-compose.yml: sluice (routes.toml + its environment)", toml_text, env,
                             allow_store_not_built="store" in tomllib.loads(toml_text))
    if effective is None:
        return
    otlp = effective["telemetry"].get("otlp_endpoint")
    if otlp and urlsplit(otlp).hostname not in services:
        problem("docker-compose.yml: sluice", f"otlp_endpoint {otlp} is not a compose service")
    for b in (effective.get("brokers") or {}).values():
        host = urlsplit(b["url"]).hostname if b.get("url") else (b.get("bootstrap") or ":").rsplit(":", 1)[0]
        if host and host not in services and not b.get("url_env"):
            problem("docker-compose.yml: sluice", f"broker address {host} is not a compose service")
    # The upstream of the README's first curl (the sample's other upstream only illustrates host matching).
    for name, u in (effective.get("upstreams") or {}).items():
        if name != "orders":
            continue
        for endpoint in u.get("endpoints") or []:
            host = urlsplit(endpoint).hostname
            if host not in services:
                problem("docker-compose.yml: sluice", f"upstream {name} endpoint {endpoint}: {host} is not a compose "
                                                      "service (the README's first curl would get a 502)")
    check_compose_brokers(services)
    server = effective["server"]
    worst = seconds(server["drain_delay"]) + 2 * seconds(server["shutdown_grace"])
    stop = seconds(str(sluice.get("stop_grace_period", "10s")))
    if not stop > worst:
        problem("docker-compose.yml: sluice", f"stop_grace_period {stop:g}s is not above drain_delay + 2 x "
                                              f"shutdown_grace = {worst:g}s")
    admin_port = listen_port(server["admin_listen"])
    if f"/127.0.0.1/{admin_port}" not in dockerfile["healthcheck"]:
        problem("Dockerfile", f"HEALTHCHECK does not call the admin port {admin_port}")
    ok(f"docker-compose.yml: sluice: stop_grace_period {stop:g}s > {worst:g}s; brokers and collector are services")


def check_compose_brokers(services):
    """RabbitMQ 4.x, Kafka reachable from the host too, and init steps that work with those images."""
    rabbit = (services.get("rabbitmq") or {}).get("image", "")
    if not re.fullmatch(r"rabbitmq:4[\w.-]*", rabbit):
        problem("docker-compose.yml: rabbitmq", f"image {rabbit!r} is not RabbitMQ 4.x")
    init = json.dumps((services.get("rabbitmq-init") or {}).get("command"))
    if "rabbitmqadmin" in init and "name=" in init:
        problem("docker-compose.yml: rabbitmq-init", "rabbitmqadmin v1 syntax (name=…): 4.x images ship the v2 tool")
    for want in ("/api/queues/%2F/github-webhooks", "/api/bindings/%2F/e/amq.topic/q/github-webhooks"):
        if want not in init:
            problem("docker-compose.yml: rabbitmq-init", f"does not create {want}")
    kafka = services.get("kafka") or {}
    advertised = str((kafka.get("environment") or {}).get("KAFKA_ADVERTISED_LISTENERS", ""))
    if "localhost:9092" not in advertised or "9092:9092" not in [str(p) for p in kafka.get("ports") or []]:
        problem("docker-compose.yml: kafka", f"not advertised on the host's localhost:9092 ({advertised!r})")
    topics = json.dumps((services.get("kafka-init") or {}).get("command"))
    if "orders.acme" not in topics:
        problem("docker-compose.yml: kafka-init", "does not create the sample's topic orders.acme")
    with open(os.path.join(REPO, ".dockerignore")) as f:
        ignored = f.read().split()
    if "target/" not in ignored:
        problem(".dockerignore", "does not keep target/ out of the build context")
    ok("docker-compose.yml: RabbitMQ 4.x, queue and binding over the HTTP API, Kafka on localhost:9092 with "
       "orders.acme; .dockerignore keeps target/ out")


def check_dockerfile():
    path = os.path.join(REPO, "deploy", "Dockerfile")
    with open(path) as f:
        text = re.sub(r"\\\n", " ", f.read())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    stages = [i for i, line in enumerate(lines) if line.upper().startswith("FROM ")]
    final = lines[stages[-1]:] if stages else []
    env, healthcheck, user = {}, "", None
    for line in final:
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "USER":
            user = rest.strip()
        elif word == "HEALTHCHECK":
            healthcheck = rest
        elif word == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    for line in lines:
        if line.upper().startswith("COPY ") and "--from=" not in line:
            for src in line.split()[1:-1]:
                if not os.path.exists(os.path.join(REPO, src)):
                    problem("Dockerfile", f"COPY {src}: no such file in the build context")
    if len(stages) < 2:
        problem("Dockerfile", "not a multi-stage build")
    if not user or not re.fullmatch(r"[1-9]\d*:[1-9]\d*", user):
        problem("Dockerfile", f"the final stage's USER is {user!r}, not a numeric non-root uid:gid")
    if "/healthz" not in healthcheck:
        problem("Dockerfile", "no HEALTHCHECK on /healthz")
    env.pop("SLUICE_CONFIG", None)
    ok(f"Dockerfile: {len(stages)} stages, USER {user}, HEALTHCHECK on /healthz, COPY sources exist")
    return {"env": env, "healthcheck": healthcheck}


def main():
    if sys.argv[1] == "kube":
        kube(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "compose":
        compose()
    else:
        sys.exit(f"usage: {sys.argv[0]} kube NAME RENDERED | compose")
    for n in NOTES:
        print(f"NOTE: {n}")
    for p in PROBLEMS:
        print(f"FAIL: {p}")
    sys.exit(1 if PROBLEMS else 0)


if __name__ == "__main__":
    main()
