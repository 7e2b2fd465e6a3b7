"""Configuration drift between the server and its deployment (deploy/).

The server's flags, env twins and defaults live in one table (server/config.cc), printed by
`leank-server --print-config-schema`. This module reads that table, the rendered kustomize
overlays, the Dockerfile, the metrics adapter rules and a few server sources, and lists every
disagreement as a readable line. test_config_drift.py asserts the lists are empty, and that
deliberate mismatches are caught.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = DEPLOY / "k8s" / "overlays"
ADAPTER_RULES = DEPLOY / "k8s" / "addons" / "prometheus-adapter-rules.yaml"

SERVER_CONFIGMAP = "leank-server-config"
PREP_CONFIGMAP = "leank-model-source"
SERVER_CONTAINER = "leank-server"
# After the drain timeout the server aborts what is left and waits up to 5 s for it, then
# gives gRPC 2 s to shut down (server/server.cc RunServer); rounded up for scheduling noise.
SHUTDOWN_TAIL_S = 10
# Server env variables the manifests are built around; a rename on the server side must
# show up here as a readable failure rather than a KeyError.
RELIED_ON = ("LEANK_MODEL", "LEANK_MASKS", "LEANK_BACKEND", "LEANK_PORT", "LEANK_METRICS_PORT",
             "LEANK_DRAIN_TIMEOUT")


# ---- the server's side --------------------------------------------------------------------


@dataclass
class Schema:
    flags: list[dict]  # [{flag, env, default, type, help}]
    source: str  # where it came from (binary path or "server/config.cc")

    @property
    def by_env(self) -> dict[str, dict]:
        return {f["env"]: f for f in self.flags}

    def default(self, env: str) -> str:
        return self.by_env[env]["default"]


def server_binary() -> Path | None:
    """$LEANK_SERVER_BIN, else build/bin/leank-server (what tools/test.sh builds)."""
    env = os.environ.get("LEANK_SERVER_BIN")
    candidates = [Path(env)] if env else [REPO / "build" / "bin" / "leank-server"]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    return None


def schema_from_binary(binary: Path) -> Schema:
    out = subprocess.run([str(binary), "--print-config-schema"], check=True, capture_output=True,
                         text=True, timeout=60).stdout
    return Schema(json.loads(out), str(binary))


def schema_from_source() -> Schema:
    """Parses kFlagTable in server/config.cc and the defaults in server/config.h.

    The fallback when no built binary is at hand; test_config_drift.py checks that it agrees
    with the binary whenever both exist.
    """
    cc = (REPO / "server" / "config.cc").read_text()
    h = (REPO / "server" / "config.h").read_text()
    struct = h[h.index("struct ServerConfig"):]
    struct = struct[:struct.index("};")]
    fields = {}
    for m in re.finditer(r"^\s*(std::string|int64_t|int|double|bool)\s+(\w+)(?:\s*=\s*([^;]+))?;",
                         struct, re.M):
        ctype, name, value = m.group(1), m.group(2), (m.group(3) or "").strip()
        if ctype == "std::string":
            text = value.strip('"')
        elif ctype == "bool":
            text = value or "false"
        elif ctype == "double":
            v = float(value or 0)
            text = str(int(v)) if v.is_integer() else repr(v)
        else:
            text = str(int(value or 0))
        kind = {"std::string": "string", "bool": "bool", "double": "float"}.get(ctype, "int")
        fields[name] = (text, kind)
    table = cc[cc.index("kFlagTable[]"):]
    table = table[:table.index("};")]
    flags = []
    for m in re.finditer(r'\{"([a-z0-9-]+)",\s*"(LEANK_[A-Z0-9_]+)",\s*&ServerConfig::(\w+),\s*'
                         r'(true|false)', table):
        name, env, member, size = m.groups()
        default, kind = fields[member]
        flags.append({"flag": "--" + name, "env": env, "default": default,
                      "type": "size" if size == "true" else kind, "help": ""})
    if not flags:
        raise RuntimeError("server/config.cc: no kFlagTable entries parsed")
    return Schema(flags, "server/config.cc")


def load_schema() -> Schema:
    binary = server_binary()
    return schema_from_binary(binary) if binary else schema_from_source()


def server_metric_names() -> set[str]:
    """Prometheus names the server exports (server/metrics.cc)."""
    return set(re.findall(r'"(leank:[a-z0-9_]+)"', (REPO / "server" / "metrics.cc").read_text()))


def grpc_service_names() -> set[str]:
    """Names the server's grpc.health.v1 answers for: "" and leank.v1.<Service>."""
    proto = (REPO / "proto" / "leank" / "v1" / "leank.proto").read_text()
    package = re.search(r"^package\s+([\w.]+);", proto, re.M).group(1)
    return {""} | {f"{package}.{s}" for s in re.findall(r"^service\s+(\w+)", proto, re.M)}


def warmup_limit_s() -> int | None:
    """How long the server gives its warm-up generation (server/server.cc), if found."""
    m = re.search(r"give_up\s*=.*?std::chrono::(minutes|seconds)\((\d+)\)",
                  (REPO / "server" / "server.cc").read_text())
    if not m:
        return None
    return int(m.group(2)) * (60 if m.group(1) == "minutes" else 1)


def prep_variables() -> set[str]:
    """PREP_* variables deploy/model-prep.sh reads."""
    return set(re.findall(r"\$\{?(PREP_[A-Z0-9_]+)", (DEPLOY / "model-prep.sh").read_text()))


# ---- the deployment's side ----------------------------------------------------------------


def kubectl() -> str:
    exe = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not exe:
        raise RuntimeError("no kubectl (set KUBECTL, or run deploy/check.sh which installs one)")
    return exe


def overlay_names() -> list[str]:
    return sorted(p.name for p in OVERLAYS.iterdir() if (p / "kustomization.yaml").is_file())


def render(overlay: str) -> list[dict]:
    """The overlay's objects: from $LEANK_DEPLOY_RENDERED/<overlay>.yaml (deploy/check.sh
    renders them once), else rendered here with `kubectl kustomize`."""
    pre = os.environ.get("LEANK_DEPLOY_RENDERED")
    if pre and (Path(pre) / f"{overlay}.yaml").is_file():
        text = (Path(pre) / f"{overlay}.yaml").read_text()
    else:
        text = subprocess.run([kubectl(), "kustomize", str(OVERLAYS / overlay)], check=True,
                              capture_output=True, text=True, timeout=120).stdout
    return [d for d in yaml.safe_load_all(text) if d]


def _one(docs: list[dict], kind: str, problems: list[str]) -> dict | None:
    found = [d for d in docs if d.get("kind") == kind]
    if len(found) != 1:
        problems.append(f"expected one {kind}, found {len(found)}")
        return None
    return found[0]


def _configmap(docs: list[dict], base_name: str) -> dict | None:
    """The generated ConfigMap whose name is base_name plus kustomize's hash suffix."""
    for d in docs:
        name = d.get("metadata", {}).get("name", "")
        if d.get("kind") == "ConfigMap" and re.fullmatch(re.escape(base_name) + r"(-[a-z0-9]{10})?",
                                                         name):
            return d
    return None


def _value_ok(value: str, kind: str) -> bool:
    if kind == "int":
        return re.fullmatch(r"-?\d+", value) is not None
    if kind == "float":
        try:
            float(value)
            return True
        except ValueError:
            return False
    if kind == "bool":
        return value.lower() in {"true", "false", "1", "0", "yes", "no", "on", "off"}
    if kind == "size":
        return re.fullmatch(r"\d+(\.\d+)?\s*([KMGT]i?B?|[kmgt]i?b?|B|b)?", value) is not None
    return True


def _sleep_seconds(container: dict) -> float:
    """Seconds the preStop hook holds the container before SIGTERM."""
    pre = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre:
        return float(pre["sleep"].get("seconds", 0))
    cmd = pre.get("exec", {}).get("command", [])
    if len(cmd) >= 2 and Path(cmd[0]).name == "sleep":
        return float(cmd[1])
    return 0.0


@dataclass
class Effective:
    """What the server will run with: container env > ConfigMap > schema default."""
    env: dict[str, str] = field(default_factory=dict)

    def get(self, schema: Schema, name: str) -> str:
        return self.env.get(name, schema.default(name))


def check_overlay(docs: list[dict], schema: Schema) -> list[str]:
    """Every disagreement between one rendered overlay and the server, as readable lines."""
    p: list[str] = []
    envs = schema.by_env
    deploy = _one(docs, "Deployment", p)
    if deploy is None:
        return p
    pod = deploy["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod.get("containers", [])}
    server = containers.get(SERVER_CONTAINER)
    if server is None:
        return p + [f"Deployment has no container named {SERVER_CONTAINER}"]
    config = _configmap(docs, SERVER_CONFIGMAP)
    prep = _configmap(docs, PREP_CONFIGMAP)

    # -- env variable names and values
    eff = Effective()
    if config is None:
        p.append(f"no ConfigMap {SERVER_CONFIGMAP}")
    else:
        for key, value in (config.get("data") or {}).items():
            if key not in envs:
                p.append(f"ConfigMap {SERVER_CONFIGMAP}: {key} is not a server env variable "
                         f"(known: {', '.join(sorted(envs))})")
                continue
            kind = envs[key]["type"]
            if not _value_ok(str(value), kind):
                p.append(f"ConfigMap {SERVER_CONFIGMAP}: {key}={value!r} is not a valid {kind}")
            eff.env[key] = str(value)
    all_containers = list(pod.get("initContainers", [])) + list(pod.get("containers", []))
    cm_names = {d["metadata"]["name"] for d in docs if d.get("kind") == "ConfigMap"}
    for c in all_containers:
        for ref in c.get("envFrom", []):
            name = ref.get("configMapRef", {}).get("name")
            if name and name not in cm_names:
                p.append(f"container {c['name']}: envFrom ConfigMap {name} is not rendered")
    for ref in server.get("envFrom", []):
        name = ref.get("configMapRef", {}).get("name", "")
        if prep is not None and name == prep["metadata"]["name"]:
            p.append(f"container {SERVER_CONTAINER} must not read {PREP_CONFIGMAP} "
                     "(its keys are not server flags)")
    for e in server.get("env", []):
        if e["name"].startswith("LEANK_"):
            if e["name"] not in envs:
                p.append(f"container {SERVER_CONTAINER}: env {e['name']} is not a server env "
                         "variable")
            elif "value" in e:
                eff.env[e["name"]] = str(e["value"])
    if prep is not None:
        known = prep_variables()
        for key in (prep.get("data") or {}):
            if key not in known:
                p.append(f"ConfigMap {PREP_CONFIGMAP}: {key} is not read by deploy/model-prep.sh "
                         f"(reads: {', '.join(sorted(known))})")
    gone = [e for e in RELIED_ON if e not in envs]
    if gone:
        return p + [f"the server ({schema.source}) has no env variable {e}: renamed or removed? "
                    "update deploy/ to match" for e in gone]
    if prep is not None:
        shipped = model_prep_image_files()
        for key in ("PREP_MODEL_SOURCE", "PREP_MASKS_SOURCE"):
            src = str((prep.get("data") or {}).get(key, ""))
            kind, _, path = src.partition(":")
            if kind in ("file", "dir") and path.startswith("/opt/leank/"):
                if not any(f == path or f.startswith(path.rstrip("/") + "/") for f in shipped):
                    p.append(f"{key}={src}: the model-prep image ships no such file "
                             f"(deploy/Dockerfile COPY lines give {sorted(shipped)})")
    if not eff.get(schema, "LEANK_MODEL"):
        p.append("LEANK_MODEL is not set: the server requires a model folder")

    # -- ports
    grpc_port = int(eff.get(schema, "LEANK_PORT"))
    metrics_port = int(eff.get(schema, "LEANK_METRICS_PORT"))
    ports = {pt.get("name"): pt.get("containerPort") for pt in server.get("ports", [])}
    if ports.get("grpc") != grpc_port:
        p.append(f"containerPort 'grpc' is {ports.get('grpc')}, the server listens on "
                 f"LEANK_PORT={grpc_port}")
    if ports.get("metrics") != metrics_port:
        p.append(f"containerPort 'metrics' is {ports.get('metrics')}, the server's HTTP port is "
                 f"LEANK_METRICS_PORT={metrics_port}")
    if metrics_port == 0:
        p.append("LEANK_METRICS_PORT=0 turns /metrics off, but the deployment scrapes it")
    ann = deploy["spec"]["template"].get("metadata", {}).get("annotations", {})
    if "prometheus.io/port" in ann and str(ann["prometheus.io/port"]) != str(metrics_port):
        p.append(f"annotation prometheus.io/port={ann['prometheus.io/port']}, metrics port is "
                 f"{metrics_port}")
    service = _one(docs, "Service", p)
    svc_ports = {}

    def resolve(service_port: dict):
        """The container port a Service port leads to."""
        target = service_port.get("targetPort", service_port.get("port"))
        return ports.get(target) if isinstance(target, str) else target

    if service is not None:
        for sp in service["spec"].get("ports", []):
            svc_ports[sp["name"]] = sp
            target = sp.get("targetPort", sp.get("port"))
            if isinstance(target, str) and target not in ports:
                p.append(f"Service port {sp['name']}: targetPort {target} is no container port")
            elif isinstance(target, int) and target not in ports.values():
                p.append(f"Service port {sp['name']}: targetPort {target} is no container port")
        for need, want in (("grpc", grpc_port), ("metrics", metrics_port)):
            if need not in svc_ports:
                p.append(f"Service has no port named {need}")
            elif resolve(svc_ports[need]) != want:
                p.append(f"Service port {need} leads to container port "
                         f"{resolve(svc_ports[need])}, the server's is {want}")
        labels = deploy["spec"]["template"]["metadata"].get("labels", {})
        for k, v in service["spec"].get("selector", {}).items():
            if labels.get(k) != v:
                p.append(f"Service selector {k}={v} does not match the pod labels")

    # -- probes: native gRPC health on the gRPC port, for a service the server reports
    services = grpc_service_names()
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = server.get(kind)
        if probe is None:
            p.append(f"{kind} missing")
            continue
        g = probe.get("grpc")
        if g is None:
            p.append(f"{kind} is not a native gRPC probe (grpc.health.v1)")
            continue
        if g.get("port") != grpc_port:
            p.append(f"{kind} probes port {g.get('port')}, the server's gRPC port is {grpc_port}")
        if g.get("service", "") not in services:
            p.append(f"{kind} asks health of service {g.get('service')!r}; the server reports "
                     f"{sorted(services)}")
    startup = server.get("startupProbe")
    limit = warmup_limit_s()
    if startup and limit is not None:
        budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
        if budget <= limit:
            p.append(f"startupProbe allows {budget} s, not more than the server's warm-up limit "
                     f"({limit} s) plus the model load")

    # -- grace period vs drain
    drain = float(eff.get(schema, "LEANK_DRAIN_TIMEOUT"))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    need = _sleep_seconds(server) + drain + SHUTDOWN_TAIL_S
    if grace < need:
        p.append(f"terminationGracePeriodSeconds={grace} < preStop {_sleep_seconds(server):g} s "
                 f"+ LEANK_DRAIN_TIMEOUT {drain:g} s + shutdown tail {SHUTDOWN_TAIL_S} s = "
                 f"{need:g} s: the kubelet would kill in-flight requests")

    # -- GPU, model and masks on mounted volumes, /dev/shm
    limits = server.get("resources", {}).get("limits", {})
    if str(limits.get("nvidia.com/gpu", "0")) != "1":
        p.append(f"{SERVER_CONTAINER} limits nvidia.com/gpu={limits.get('nvidia.com/gpu')}, want 1")
    elif eff.get(schema, "LEANK_BACKEND") != "cuda":
        p.append(f"a GPU is requested but LEANK_BACKEND={eff.get(schema, 'LEANK_BACKEND')}")
    mounts = {m["mountPath"]: m for m in server.get("volumeMounts", [])}
    for key in ("LEANK_MODEL", "LEANK_MASKS"):
        path = eff.get(schema, key)
        if path and not any(path == mp or path.startswith(mp.rstrip("/") + "/") for mp in mounts):
            p.append(f"{key}={path} is on no volume mounted in {SERVER_CONTAINER}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    shm = mounts.get("/dev/shm")
    if shm is None or volumes.get(shm["name"], {}).get("emptyDir", {}).get("medium") != "Memory":
        p.append("/dev/shm is not a memory emptyDir")

    # -- images: a mutable tag (dev, latest...) is pulled again on every start, or a node
    # keeps running the build it pulled first
    for c in all_containers:
        image = c.get("image", "")
        tag = image.rsplit("/", 1)[-1].partition(":")[2] if "@" not in image else ""
        if "@" not in image and not re.fullmatch(r"v?\d+(\.\d+)+([-+][\w.]+)?", tag) \
                and c.get("imagePullPolicy", "Always" if tag in ("", "latest") else "IfNotPresent") \
                != "Always":
            p.append(f"container {c['name']}: image {image} has a mutable tag but imagePullPolicy "
                     f"{c.get('imagePullPolicy')}: nodes would keep an old build (use Always, or "
                     "a version tag or digest)")

    # -- security context
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        p.append("pod securityContext.runAsNonRoot is not true")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        p.append("pod seccompProfile is not RuntimeDefault")
    for c in all_containers:
        sc = c.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True:
            p.append(f"container {c['name']}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            p.append(f"container {c['name']}: allowPrivilegeEscalation is not false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            p.append(f"container {c['name']}: capabilities do not drop ALL")

    # -- PDB, HPA, ServiceMonitor, spreading: each selects this Deployment's pods, and only them
    labels = deploy["spec"]["template"]["metadata"].get("labels", {})
    own = deploy["spec"].get("selector", {}).get("matchLabels", {})

    def narrower_than_pods(sel: dict) -> list[str]:
        return [f"{k}={v}" for k, v in own.items() if sel.get(k) != v]

    for i, tsc in enumerate(pod.get("topologySpreadConstraints", [])):
        loose = narrower_than_pods(tsc.get("labelSelector", {}).get("matchLabels", {}))
        if loose:
            p.append(f"topologySpreadConstraints[{i}] selector lacks {', '.join(loose)} of the "
                     "Deployment's selector: it would count other apps' pods")
    for d in docs:
        if d.get("kind") == "PodDisruptionBudget":
            sel = d["spec"].get("selector", {}).get("matchLabels", {})
            if not sel or any(labels.get(k) != v for k, v in sel.items()):
                p.append(f"PodDisruptionBudget selector {sel} does not match the pod labels")
        if d.get("kind") == "HorizontalPodAutoscaler":
            ref = d["spec"]["scaleTargetRef"]
            if (ref.get("kind"), ref.get("name")) != ("Deployment", deploy["metadata"]["name"]):
                p.append(f"HPA scales {ref.get('kind')}/{ref.get('name')}, not the Deployment")
            served = adapter_metric_names()
            for m in d["spec"].get("metrics", []):
                if m.get("type") == "Pods":
                    name = m["pods"]["metric"]["name"]
                    if name not in served:
                        p.append(f"HPA metric {name!r} is not served by the adapter rules "
                                 f"(they serve {sorted(served)})")
        if d.get("kind") == "ServiceMonitor":
            for ep in d["spec"].get("endpoints", []):
                if ep.get("port") not in svc_ports:
                    p.append(f"ServiceMonitor endpoint port {ep.get('port')!r} is no Service port")
                elif resolve(svc_ports[ep["port"]]) != metrics_port:
                    p.append(f"ServiceMonitor scrapes Service port {ep['port']} (container port "
                             f"{resolve(svc_ports[ep['port']])}), not the metrics port {metrics_port}")
                if ep.get("path", "/metrics") != "/metrics":
                    p.append(f"ServiceMonitor path {ep.get('path')} (the server serves /metrics)")
            if service is not None:
                svc_labels = service["metadata"].get("labels", {})
                sel = d["spec"].get("selector", {}).get("matchLabels", {})
                if any(svc_labels.get(k) != v for k, v in sel.items()):
                    p.append(f"ServiceMonitor selector {sel} does not match the Service labels")
            loose = narrower_than_pods(d["spec"].get("selector", {}).get("matchLabels", {}))
            if loose:
                p.append(f"ServiceMonitor selector lacks {', '.join(loose)} of the Deployment's "
                         "selector: it would scrape other Services of the namespace")
    return p


def overlay_image_problems(overlay: str, docs: list[dict]) -> list[str]:
    """Each `images:` entry of the overlay's kustomization.yaml shows up in the rendered pod.

    kustomize matches an entry by the image name as the layers below render it; an entry that
    matches nothing is silently ignored, and the pods run some other image."""
    kust = yaml.safe_load((OVERLAYS / overlay / "kustomization.yaml").read_text())
    rendered = [c.get("image", "") for d in docs if d.get("kind") == "Deployment"
                for key in ("initContainers", "containers")
                for c in d["spec"]["template"]["spec"].get(key, [])]
    p = []
    for entry in kust.get("images", []):
        want = entry.get("newName", entry["name"])
        if "digest" in entry:
            want += "@" + entry["digest"]
        elif "newTag" in entry:
            want += ":" + str(entry["newTag"])
        if want not in rendered:
            p.append(f"{overlay}: images entry {entry['name']} -> {want} matches no container "
                     f"(rendered images: {rendered}); kustomize ignores it silently")
    names = {e["name"] for e in kust.get("images", [])}
    for image in rendered:
        if "/" not in image and image.split(":")[0].split("@")[0] not in names:
            p.append(f"{overlay}: container image {image} is the base's placeholder: add an "
                     "images entry")
    return p


def server_env(docs: list[dict]) -> dict[str, str]:
    """The LEANK_* settings the server container gets: ConfigMap, then its literal env."""
    env: dict[str, str] = {}
    config = _configmap(docs, SERVER_CONFIGMAP)
    if config is not None:
        env.update({k: str(v) for k, v in (config.get("data") or {}).items()})
    deploy = next((d for d in docs if d.get("kind") == "Deployment"), None)
    for c in (deploy or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
        if c.get("name") == SERVER_CONTAINER:
            env.update({e["name"]: str(e["value"]) for e in c.get("env", [])
                        if e["name"].startswith("LEANK_") and "value" in e})
    return env


def server_rejects(binary: Path, env: dict[str, str]) -> str | None:
    """Runs the server with these settings as far as its own config check (server/config.cc
    CheckConfig: enum values, ranges, units, combinations) and returns its message when it
    refuses them (exit 2), else None. The model path is replaced by one that does not exist and
    the ports by 0, so nothing is loaded or bound for long: past the check, it exits 1."""
    run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env,
               "LEANK_MODEL": "/nonexistent/leank-drift-check", "LEANK_PORT": "0",
               "LEANK_METRICS_PORT": "0"}
    r = subprocess.run([str(binary)], env=run_env, capture_output=True, text=True, timeout=60)
    if r.returncode == 2:
        return (r.stderr or r.stdout).strip() or "exit 2"
    return None


def adapter_metric_names() -> set[str]:
    """Custom-metric names the adapter rules serve, for the server's exported metrics only."""
    doc = yaml.safe_load(ADAPTER_RULES.read_text())
    rules = yaml.safe_load(doc["data"]["config.yaml"])["rules"]
    exported = server_metric_names()
    served = set()
    for r in rules:
        series = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", r["seriesQuery"]).group(1)
        if series not in exported:
            continue  # a rule for a metric the server does not export serves nothing
        name = r.get("name", {})
        pattern = name.get("matches", "^(.*)$")
        as_ = name.get("as", "${1}")
        m = re.search(pattern, series)
        if m:
            served.add(re.sub(r"\$\{?(\d+)\}?", lambda g: m.group(int(g.group(1))), as_))
    return served


def adapter_problems() -> list[str]:
    doc = yaml.safe_load(ADAPTER_RULES.read_text())
    rules = yaml.safe_load(doc["data"]["config.yaml"])["rules"]
    exported = server_metric_names()
    p = []
    for r in rules:
        series = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", r["seriesQuery"]).group(1)
        if series not in exported:
            p.append(f"adapter rule for {series}: the server exports no such metric "
                     f"(server/metrics.cc)")
    return p


# ---- the Dockerfile -----------------------------------------------------------------------


def dockerfile_stage(stage: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of one stage of deploy/Dockerfile, continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out, current = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            current = rest.split()[-1] if " AS " in rest.upper() else None
        if current == stage:
            out.append((word, rest.strip()))
    return out


def model_prep_image_files() -> set[str]:
    """Paths inside the model-prep image that its COPY lines put there from the repository."""
    out = set()
    for word, rest in dockerfile_stage("model-prep"):
        if word != "COPY" or "--from=" in rest:
            continue
        args = [a for a in rest.split() if not a.startswith("--")]
        *sources, dest = args
        for src in sources:
            for f in sorted(REPO.glob(src)):
                if f.is_file():
                    target = dest + f.name if dest.endswith("/") else dest
                    out.add(target)
    return out


def check_dockerfile(schema: Schema) -> list[str]:
    p = []
    envs = schema.by_env
    gone = [e for e in ("LEANK_PORT", "LEANK_METRICS_PORT") if e not in envs]
    if gone:
        return [f"the server ({schema.source}) has no env variable {e}" for e in gone]
    runtime = dockerfile_stage("runtime")
    if not runtime:
        return ["deploy/Dockerfile: no stage named runtime"]
    image_env = {}
    exposed = set()
    for word, rest in runtime:
        if word == "ENV":
            for m in re.finditer(r"(\w+)=(\S*)", rest):
                image_env[m.group(1)] = m.group(2)
        if word == "EXPOSE":
            exposed |= {int(x.split("/")[0]) for x in rest.split()}
        if word == "ENTRYPOINT" and "leank-server" not in rest:
            p.append(f"Dockerfile ENTRYPOINT {rest} is not leank-server")
        if word == "USER" and rest.split(":")[0] in {"0", "root"}:
            p.append("Dockerfile runtime USER is root")
    for k in image_env:
        if k.startswith("LEANK_") and k not in envs:
            p.append(f"Dockerfile ENV {k} is not a server env variable")
    want = {int(image_env.get(k, schema.default(k))) for k in ("LEANK_PORT", "LEANK_METRICS_PORT")}
    if exposed != want:
        p.append(f"Dockerfile EXPOSE {sorted(exposed)}, the image's server listens on {sorted(want)}")
    if not any(w == "USER" for w, _ in runtime):
        p.append("Dockerfile runtime stage sets no USER (runs as root)")
    build = dockerfile_stage("build")
    if not any(w == "RUN" and "tools/build.sh" in r for w, r in build):
        p.append("Dockerfile build stage does not build with tools/build.sh (the CI script)")
    if not any(w == "RUN" and "tools/setup.sh" in r for w, r in build):
        p.append("Dockerfile build stage does not install with tools/setup.sh (the CI script)")
    return p
