"""The deployment (deploy/) agrees with the server's own flag table; run by deploy/check.sh.

Positive tests: every rendered overlay, the Dockerfile and the metrics adapter rules agree
with `leank-server --print-config-schema` (or server/config.cc when no binary is built).
Negative tests: deliberate mismatches in a copy of the rendered objects are each reported,
so the check cannot silently pass everything.
"""

from __future__ import annotations

import copy
import re

import pytest

import drift


@pytest.fixture(scope="session")
def schema() -> drift.Schema:
    s = drift.load_schema()
    print(f"server flag table from {s.source}: {len(s.flags)} flags")
    return s


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    return {o: drift.render(o) for o in drift.overlay_names()}


def test_overlays_exist():
    assert {"dev", "prod"} <= set(drift.overlay_names())


@pytest.mark.parametrize("overlay", drift.overlay_names())
def test_overlay_matches_server(overlay, schema, rendered):
    problems = drift.check_overlay(rendered[overlay], schema)
    assert not problems, f"{overlay} disagrees with the server ({schema.source}):\n  " + \
        "\n  ".join(problems)


@pytest.mark.parametrize("overlay", drift.overlay_names())
def test_overlay_images_are_applied(overlay, rendered):
    problems = drift.overlay_image_problems(overlay, rendered[overlay])
    assert not problems, "\n".join(problems)


def test_unapplied_images_entry_is_reported(rendered):
    """The dev overlay's entries once matched nothing (the base had renamed the images)."""
    docs = copy.deepcopy(rendered["dev"])
    dep = next(d for d in docs if d["kind"] == "Deployment")
    for c in dep["spec"]["template"]["spec"]["containers"]:
        c["image"] = "ghcr.io/example/leank-serve:0.1.0"
    problems = drift.overlay_image_problems("dev", docs)
    assert any("images entry leank-serve -> localhost:5000/leank-serve:dev matches no container"
               in p for p in problems), problems


def test_dockerfile_matches_server(schema):
    problems = drift.check_dockerfile(schema)
    assert not problems, "deploy/Dockerfile:\n  " + "\n  ".join(problems)


def test_adapter_rules_name_server_metrics():
    problems = drift.adapter_problems()
    assert not problems, "\n".join(problems)
    assert "leank_num_requests_waiting" in drift.adapter_metric_names()


def test_bench_job_targets_the_service(rendered):
    """deploy/k8s/addons/bench-job.yaml sends to the Service's gRPC port."""
    import yaml
    job = yaml.safe_load((drift.DEPLOY / "k8s" / "addons" / "bench-job.yaml").read_text())
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    server = next(a.split("=", 1)[1] for a in args if a.startswith("--server="))
    host, port = server.rsplit(":", 1)
    service = next(d for d in rendered["prod"] if d["kind"] == "Service")
    assert host.split(".")[0] == service["metadata"]["name"]
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert int(port) == grpc["port"], f"bench job sends to port {port}, Service grpc is {grpc['port']}"


def test_schema_has_what_the_deployment_relies_on(schema):
    for env in ("LEANK_MODEL", "LEANK_MASKS", "LEANK_PORT", "LEANK_METRICS_PORT",
                "LEANK_DRAIN_TIMEOUT", "LEANK_BACKEND"):
        assert env in schema.by_env, f"the server no longer has {env}"


def test_source_parser_agrees_with_binary():
    """The fallback (parsing server/config.cc) must give what the binary prints."""
    binary = drift.server_binary()
    if binary is None:
        pytest.skip("no built leank-server (set LEANK_SERVER_BIN or build build/bin/leank-server)")
    from_binary = drift.schema_from_binary(binary)
    from_source = drift.schema_from_source()
    strip = lambda s: [{k: f[k] for k in ("flag", "env", "default", "type")} for f in s.flags]
    assert strip(from_source) == strip(from_binary)


# ---- the check fails when it should -------------------------------------------------------


def _server(docs):
    dep = next(d for d in docs if d["kind"] == "Deployment")
    return dep, next(c for c in dep["spec"]["template"]["spec"]["containers"]
                     if c["name"] == drift.SERVER_CONTAINER)


def _config(docs):
    return drift._configmap(docs, drift.SERVER_CONFIGMAP)["data"]


def _mutate_probe_port(docs):
    _server(docs)[1]["readinessProbe"]["grpc"]["port"] = 50052


def _mutate_container_port(docs):
    for p in _server(docs)[1]["ports"]:
        if p["name"] == "metrics":
            p["containerPort"] = 8080


def _mutate_configmap_port(docs):
    _config(docs)["LEANK_PORT"] = "50099"


def _mutate_grace(docs):
    _server(docs)[0]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 20


def _mutate_drain(docs):
    _config(docs)["LEANK_DRAIN_TIMEOUT"] = "600"


def _mutate_env_name(docs):
    data = _config(docs)
    data["LEANK_MAX_NUM_SEQUENCES"] = data.pop("LEANK_MAX_NUM_SEQS", "64")


def _mutate_env_value(docs):
    _config(docs)["LEANK_MAX_NUM_SEQS"] = "lots"


def _mutate_probe_kind(docs):
    _server(docs)[1]["livenessProbe"] = {"httpGet": {"path": "/healthz", "port": 9090}}


def _mutate_probe_service(docs):
    _server(docs)[1]["startupProbe"]["grpc"]["service"] = "leank.v2.LeankService"


def _mutate_hpa_metric(docs):
    hpa = next((d for d in docs if d["kind"] == "HorizontalPodAutoscaler"), None)
    if hpa is None:
        pytest.skip("this overlay has no HPA")
    hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] = "leank:num_requests_waiting"


def _mutate_model_mount(docs):
    _config(docs)["LEANK_MODEL"] = "/data/model"


def _mutate_backend(docs):
    _config(docs)["LEANK_BACKEND"] = "cpu"


def _mutate_security(docs):
    _server(docs)[1]["securityContext"]["readOnlyRootFilesystem"] = False


def _mutate_masks_source(docs):
    data = drift._configmap(docs, drift.PREP_CONFIGMAP)["data"]
    data["PREP_MASKS_SOURCE"] = "file:/opt/leank/masks/smollm2-135m-instruct/masks-s99.safetensors"


def _mutate_pull_policy(docs):
    dep = _server(docs)[0]
    prep = next(c for c in dep["spec"]["template"]["spec"]["initContainers"]
                if c["name"] == "model-prep")
    prep["image"] = prep["image"].rsplit(":", 1)[0] + ":dev"
    prep["imagePullPolicy"] = "IfNotPresent"


def _mutate_servicemonitor_selector(docs):
    sm = next((d for d in docs if d["kind"] == "ServiceMonitor"), None)
    if sm is None:
        pytest.skip("this overlay has no ServiceMonitor")
    sm["spec"]["selector"]["matchLabels"].pop("app.kubernetes.io/name")


def _mutate_spread_selector(docs):
    spec = _server(docs)[0]["spec"]["template"]["spec"]
    spec["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"] = {
        "app.kubernetes.io/component": "server"}


MUTATIONS = [
    (_mutate_probe_port, r"readinessProbe probes port 50052"),
    (_mutate_container_port, r"containerPort 'metrics' is 8080"),
    (_mutate_configmap_port, r"containerPort 'grpc' is 50051, the server listens on LEANK_PORT=50099"),
    (_mutate_grace, r"terminationGracePeriodSeconds=20 <"),
    (_mutate_drain, r"LEANK_DRAIN_TIMEOUT 600 s"),
    (_mutate_env_name, r"LEANK_MAX_NUM_SEQUENCES is not a server env variable"),
    (_mutate_env_value, r"LEANK_MAX_NUM_SEQS='lots' is not a valid int"),
    (_mutate_probe_kind, r"livenessProbe is not a native gRPC probe"),
    (_mutate_probe_service, r"startupProbe asks health of service 'leank.v2.LeankService'"),
    (_mutate_hpa_metric, r"HPA metric 'leank:num_requests_waiting' is not served"),
    (_mutate_model_mount, r"LEANK_MODEL=/data/model is on no volume"),
    (_mutate_backend, r"GPU is requested but LEANK_BACKEND=cpu"),
    (_mutate_security, r"readOnlyRootFilesystem is not true"),
    (_mutate_masks_source, r"masks-s99.safetensors: the model-prep image ships no such file"),
    (_mutate_pull_policy, r"container model-prep: image \S+:dev has a mutable tag"),
    (_mutate_servicemonitor_selector, r"ServiceMonitor selector lacks app.kubernetes.io/name"),
    (_mutate_spread_selector, r"topologySpreadConstraints\[0\] selector lacks app.kubernetes.io/name"),
]


@pytest.mark.parametrize("mutate,expected", MUTATIONS, ids=[m.__name__[8:] for m, _ in MUTATIONS])
def test_mismatch_is_reported(mutate, expected, schema, rendered):
    if drift.check_overlay(rendered["prod"], schema):
        pytest.skip("prod already disagrees with the server (see test_overlay_matches_server)")
    docs = copy.deepcopy(rendered["prod"])
    mutate(docs)
    problems = drift.check_overlay(docs, schema)
    assert any(re.search(expected, p) for p in problems), \
        f"mutation {mutate.__name__} not reported as /{expected}/; got: {problems}"


# ---- the server itself accepts the settings ----------------------------------------------


def _binary_or_skip():
    binary = drift.server_binary()
    if binary is None:
        pytest.skip("no built leank-server (set LEANK_SERVER_BIN or build build/bin/leank-server)")
    return binary


@pytest.mark.parametrize("overlay", drift.overlay_names())
def test_server_accepts_overlay_settings(overlay, rendered):
    """A value of the right type can still be refused (LEANK_LOG_LEVEL=warning,
    LEANK_ADMISSION=Reserve, LEANK_BLOCK_SIZE=24, LEANK_CPU_ACTIVATIONS=bf16 with cuda...):
    the server's own check decides, as it would at the pod's start."""
    binary = _binary_or_skip()
    env = drift.server_env(rendered[overlay])
    assert env, f"{overlay}: no server settings rendered"
    refused = drift.server_rejects(binary, env)
    assert refused is None, f"{overlay}: {binary} refuses the rendered settings: {refused}"


@pytest.mark.parametrize("key,value,expected", [
    ("LEANK_LOG_LEVEL", "warning", r"--log-level: unknown level 'warning'"),
    ("LEANK_ADMISSION", "Reserve", r"--admission"),
    ("LEANK_BLOCK_SIZE", "24", r"--block-size"),
])
def test_server_refusal_is_reported(key, value, expected, rendered):
    """Each of these passes the type check of check_overlay; only the server refuses it."""
    binary = _binary_or_skip()
    env = dict(drift.server_env(rendered["prod"]), **{key: value})
    refused = drift.server_rejects(binary, env)
    assert refused is not None and re.search(expected, refused), \
        f"{key}={value}: expected the server to refuse it with /{expected}/, got {refused!r}"


def test_dockerfile_mismatch_is_reported(schema, monkeypatch):
    real = drift.dockerfile_stage

    def patched(stage):
        out = real(stage)
        return [(w, "50051 8080") if w == "EXPOSE" else (w, r) for w, r in out]

    monkeypatch.setattr(drift, "dockerfile_stage", patched)
    assert any("EXPOSE [8080, 50051]" in p for p in drift.check_dockerfile(schema))


# ---- the docs name only what exists ------------------------------------------------------


DOCS = [drift.REPO / "docs" / "deploy.md", drift.DEPLOY / "README.md"]


def test_docs_name_only_server_env_variables(schema):
    known = set(schema.by_env) | {"LEANK_SERVER_BIN", "LEANK_CACHE_DIR", "LEANK_DEPLOY_RENDERED",
                                  "LEANK_SETUP_MINIMAL"}
    for doc in DOCS:
        unknown = set(re.findall(r"\bLEANK_[A-Z0-9_]*[A-Z0-9]\b", doc.read_text())) - known
        assert not unknown, f"{doc.name} names env variables the server does not have: {unknown}"


def test_docs_use_real_leank_bench_flags():
    """Every --flag on a leank-bench command line in the docs (and the bench Job) exists in
    tools/bench/main.cc."""
    main = (drift.REPO / "tools" / "bench" / "main.cc").read_text()
    flags = set(re.findall(r'add_(?:option|flag)\("(--[a-z0-9-]+)', main)) | {"--help"}
    assert "--server" in flags, "tools/bench/main.cc: flag parsing changed; update this test"
    used = set()
    for doc in DOCS + [drift.DEPLOY / "k8s" / "addons" / "bench-job.yaml"]:
        text = doc.read_text()
        # a leank-bench command and its continuation lines
        for m in re.finditer(r"leank-bench(?:[^\n]*\\\n)*[^\n]*", text):
            used |= set(re.findall(r"(?<![\w-])(--[a-z0-9-]+)", m.group(0)))
        if doc.suffix == ".yaml":
            used |= set(re.findall(r"^\s+- (--[a-z0-9-]+)", text, re.M))
    unknown = used - flags
    assert not unknown, f"leank-bench has no flags {sorted(unknown)} (tools/bench/main.cc)"
