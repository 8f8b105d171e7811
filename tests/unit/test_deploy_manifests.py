"""Static checks for the deployment files.

Everything is validated by parsing (docker-compose.yml, deploy/Dockerfile, the
Kubernetes manifests, Prometheus rules and the Grafana dashboard), so these
tests need no Docker daemon, cluster or Prometheus. They pin the contract the
files share with the code: service wiring, the Secret-only broker URL, the
KEDA target, and the metric names the workers export.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
RULES_FILE = DEPLOY / "prometheus" / "rules.yml"
PROMETHEUS_FILE = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD_FILE = DEPLOY / "grafana" / "dashboards" / "inferq.json"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"

# Metrics exported by the workers, with their Prometheus type.
METRICS = {
    "inferq_requests_total": "counter",
    "inferq_request_latency_seconds": "histogram",
    "inferq_queue_wait_seconds": "histogram",
    "inferq_batch_size": "histogram",
    "inferq_inference_seconds": "histogram",
    "inferq_queue_depth": "gauge",
    "inferq_effective_max_batch_size": "gauge",
    "inferq_gpu_memory_used_bytes": "gauge",
    "inferq_gpu_utilization_ratio": "gauge",
    "inferq_worker_up": "gauge",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Environment variables the deployment files may set: the documented contract,
# plus every field of inferq.shared.settings.Settings (INFERQ_<FIELD>) when importable,
# so new settings do not need to be listed twice.
ENV_VARS = {
    "INFERQ_BROKER_URL",
    "INFERQ_RESULT_BACKEND",
    "INFERQ_MODEL_REPOSITORY",
    "INFERQ_LOG_FORMAT",
    "INFERQ_LOG_LEVEL",
    "INFERQ_METRICS_PORT",
    "INFERQ_VISIBILITY_TIMEOUT_S",
    "INFERQ_PREFETCH_BATCHES",
}
try:
    from inferq.shared.settings import Settings
except ImportError:  # the deploy checks must not depend on the package importing
    pass
else:
    ENV_VARS |= {f"INFERQ_{f.name.upper()}" for f in dataclasses.fields(Settings)}
METRICS_PORT = 9808

REQUIRED_SERVICES = {
    "redis",
    "models-init",
    "worker",
    "producer",
    "prometheus",
    "grafana",
    "flower",
}
REQUIRED_ALERTS = {
    "InferqHighLatencyP99",
    "InferqQueueBacklog",
    "InferqErrorRate",
    "InferqWorkerDown",
    "InferqGpuMemoryHigh",
}
EXPECTED_K8S_KINDS = {
    "worker-deployment.yaml": "Deployment",
    "configmap.yaml": "ConfigMap",
    "secret.example.yaml": "Secret",
    "keda-scaledobject.yaml": "ScaledObject",
    "trigger-auth.yaml": "TriggerAuthentication",
    "service.yaml": "Service",
    "kustomization.yaml": "Kustomization",
}
DEPENDS_ON_CONDITIONS = {
    "service_started",
    "service_healthy",
    "service_completed_successfully",
}


# --------------------------------------------------------------------------
# Helpers


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def single_doc(name: str) -> dict[str, Any]:
    docs = load_yaml_docs(K8S / name)
    assert len(docs) == 1, f"{name}: expected one document, got {len(docs)}"
    return docs[0]


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Normalise both depends_on syntaxes to {service: condition}."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) for every volume entry, short or long syntax."""
    result = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            source, target = entry.split(":")[:2]
        else:
            source, target = entry.get("source", ""), entry["target"]
        result.append((source, target))
    return result


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def as_argv(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def duration_seconds(value: str) -> float:
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", str(value))
    assert parts and "".join(n + u for n, u in parts) == str(value), value
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def redis_url_password(url: str) -> str | None:
    match = re.match(r"rediss?://(?:[^:@/]*):([^@]*)@", url)
    return match.group(1) if match else None


class Stage:
    def __init__(self, base: str, name: str | None) -> None:
        self.base = base
        self.name = name
        self.instructions: list[tuple[str, str]] = []

    def last(self, instruction: str) -> str | None:
        values = [a for i, a in self.instructions if i == instruction]
        return values[-1] if values else None


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the build stages, in order."""
    logical, buffer = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction, args = instruction.upper(), args.strip()
        if instruction == "FROM":
            match = re.match(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?$", args, re.I)
            assert match, f"unparseable FROM: {line}"
            stages.append(Stage(match.group(1), match.group(2)))
        elif not stages and instruction == "ARG":
            key, _, default = args.partition("=")
            global_args[key] = default
        elif stages:
            stages[-1].instructions.append((instruction, args))
    return global_args, stages


def stage_value(stages: list[Stage], name: str, instruction: str) -> str | None:
    """Instruction value for a stage, following `FROM <stage>` inheritance."""
    by_name = {s.name: s for s in stages if s.name}
    stage: Stage | None = by_name[name]
    while stage is not None:
        value = stage.last(instruction)
        if value is not None:
            return value
        stage = by_name.get(stage.base)
    return None


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
RATE_ARG = re.compile(r"\b(?:rate|irate|increase)\(\s*([A-Za-z_:][A-Za-z0-9_:]*)")


def strip_literals(expr: str) -> str:
    return STRING_LITERAL.sub('""', expr)


def metric_base(name: str) -> str | None:
    """Contract metric a series name belongs to, or None if it is unknown."""
    if name in METRICS:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and METRICS.get(base) == "histogram":
            return base
    return None


def check_expr(expr: str, recorded: set[str]) -> tuple[set[str], list[str]]:
    """Return (contract metrics used, problems) for one PromQL expression."""
    used: set[str] = set()
    problems = []
    body = strip_literals(expr)
    for token in set(IDENTIFIER.findall(body)):
        if ":" in token:
            # Recording-rule names embed metric names; they must be defined.
            if token not in recorded:
                problems.append(f"undefined recording rule {token!r}")
            continue
        for name in re.findall(r"inferq_[a-z_]+", token):
            base = metric_base(name)
            if base is None:
                problems.append(f"unknown metric {name!r}")
            else:
                used.add(base)
    for name in RATE_ARG.findall(body):
        base = metric_base(name)
        if base and METRICS[base] == "gauge":
            problems.append(f"rate()/increase() over gauge {name!r}")
    if "histogram_quantile" in body:
        groupings = re.findall(r"\bby\s*\(([^)]*)\)", body)
        if not any("le" in [g.strip() for g in grp.split(",")] for grp in groupings):
            problems.append("histogram_quantile without `by (..., le)`")
    return used, problems


# --------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE_FILE)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def rules() -> dict[str, Any]:
    return load_yaml(RULES_FILE)


@pytest.fixture(scope="module")
def recorded(rules: dict[str, Any]) -> set[str]:
    return {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))


def effective_argv(
    service: dict[str, Any], dockerfile: tuple[dict[str, str], list[Stage]]
) -> list[str]:
    entrypoint = service.get("entrypoint")
    if entrypoint is None and isinstance(service.get("build"), dict):
        value = stage_value(dockerfile[1], service["build"]["target"], "ENTRYPOINT")
        entrypoint = json.loads(value) if value else None
    return as_argv(entrypoint) + as_argv(service.get("command"))


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows nest panels
    return panels


# --------------------------------------------------------------------------
# docker-compose.yml


def test_compose_defines_required_services(services: dict[str, Any]) -> None:
    missing = REQUIRED_SERVICES - services.keys()
    assert not missing, f"missing compose services: {sorted(missing)}"


def test_compose_depends_on_targets_exist_with_valid_conditions(
    services: dict[str, Any],
) -> None:
    for name, service in services.items():
        for dep, condition in depends_on(service).items():
            assert dep in services, f"{name} depends on unknown service {dep!r}"
            assert dep != name, f"{name} depends on itself"
            assert condition in DEPENDS_ON_CONDITIONS, f"{name}->{dep}: {condition}"
            target = services[dep]
            if condition == "service_healthy":
                assert "healthcheck" in target, f"{name} waits for {dep} health"
                assert not target["healthcheck"].get("disable", False)
            if condition == "service_completed_successfully":
                # A job that restarts never "completes"; the dependant would hang.
                assert target.get("restart", "no") in ("no", "on-failure"), dep


def test_compose_dependency_graph_is_acyclic(services: dict[str, Any]) -> None:
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        assert state.get(node) != "active", f"cycle: {' -> '.join([*path, node])}"
        if state.get(node) == "done":
            return
        state[node] = "active"
        for dep in depends_on(services[node]):
            visit(dep, [*path, node])
        state[node] = "done"

    for name in services:
        visit(name, [])


def test_compose_startup_order(services: dict[str, Any]) -> None:
    worker_deps = depends_on(services["worker"])
    assert worker_deps.get("redis") == "service_healthy"
    assert worker_deps.get("models-init") == "service_completed_successfully"
    assert "worker" in depends_on(services["producer"])


def test_compose_redis_healthcheck_pings(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert str(redis["image"]).split(":")[0] == "redis"
    assert str(redis["image"]).split(":")[1].startswith("7")
    test = " ".join(as_argv(redis["healthcheck"]["test"]))
    assert "redis-cli" in test and "ping" in test


def test_compose_volumes_are_declared_and_bind_sources_exist(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    declared = set((compose.get("volumes") or {}).keys())
    assert "models" in declared
    for name, service in services.items():
        for source, target in mounts(service):
            assert target.startswith("/"), f"{name}: relative target {target!r}"
            if is_bind(source):
                path = (ROOT / source).resolve()
                assert path.is_relative_to(ROOT), f"{name}: {source} outside repo"
                assert path.exists(), f"{name}: bind source {source} does not exist"
            else:
                assert source in declared, f"{name}: undeclared volume {source!r}"


def test_compose_models_volume_shared_between_init_and_worker(
    services: dict[str, Any], dockerfile: tuple[dict[str, str], list[Stage]]
) -> None:
    init_mounts = dict(mounts(services["models-init"]))
    worker_mounts = dict(mounts(services["worker"]))
    assert "models" in init_mounts and "models" in worker_mounts
    argv = effective_argv(services["models-init"], dockerfile)
    assert argv[:3] == ["inferq", "models", "init-examples"], argv
    assert argv[3] == init_mounts["models"], "init writes outside the volume"
    repo = services["worker"]["environment"]["INFERQ_MODEL_REPOSITORY"]
    assert repo == worker_mounts["models"]
    assert services["models-init"].get("restart", "no") == "no"


def test_compose_builds_reference_existing_dockerfile_targets(
    services: dict[str, Any], dockerfile: tuple[dict[str, str], list[Stage]]
) -> None:
    stage_names = {s.name for s in dockerfile[1]}
    built = {}
    for name, service in services.items():
        build = service.get("build")
        if build is None:
            assert "image" in service, f"{name} has neither build nor image"
            continue
        assert (ROOT / build["context"]).is_dir()
        assert (ROOT / build["context"] / build["dockerfile"]).is_file()
        assert build["target"] in stage_names, f"{name}: unknown target"
        built[name] = build["target"]
    assert built.get("worker") == "worker"
    assert built.get("producer") == "producer"


def test_compose_worker_runs_inferq_worker(
    services: dict[str, Any], dockerfile: tuple[dict[str, str], list[Stage]]
) -> None:
    argv = effective_argv(services["worker"], dockerfile)
    assert argv[:2] == ["inferq", "worker"], argv
    assert "--model" in argv and "--device" in argv
    producer = effective_argv(services["producer"], dockerfile)
    assert producer[:2] == ["inferq", "submit"], producer


def test_compose_worker_shutdown_metrics_and_gpu_variant(
    services: dict[str, Any],
) -> None:
    worker = services["worker"]
    assert worker.get("stop_signal") == "SIGTERM"
    assert duration_seconds(worker["stop_grace_period"]) >= 60
    env = worker["environment"]
    assert env["INFERQ_LOG_FORMAT"] == "json"
    assert int(env.get("INFERQ_METRICS_PORT", METRICS_PORT)) == METRICS_PORT
    exposed = [str(p) for p in worker.get("expose", []) + worker.get("ports", [])]
    assert any(p.split(":")[-1].split("/")[0] == str(METRICS_PORT) for p in exposed)
    # The GPU variant is documented as a commented block on the worker.
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    for needle in ("driver: nvidia", "count: 1", "capabilities: [gpu]"):
        assert re.search(rf"^\s*#.*{re.escape(needle)}", text, re.M), needle


def test_compose_env_uses_known_names_and_no_inline_passwords(
    services: dict[str, Any],
) -> None:
    for name, service in services.items():
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.partition("=")[::2] for item in env)
        for key, value in env.items():
            if key.startswith("INFERQ_"):
                assert key in ENV_VARS, f"{name}: unknown setting {key}"
            password = redis_url_password(str(value or ""))
            if password:
                assert re.fullmatch(r"\$\{\w+(:?-[^}]*)?\}", password), (
                    f"{name}: {key} embeds a literal password"
                )


def test_compose_monitoring_mounts_match_configs(services: dict[str, Any]) -> None:
    prom_targets = {t for _, t in mounts(services["prometheus"])}
    for rule_file in load_yaml(PROMETHEUS_FILE)["rule_files"]:
        assert rule_file in prom_targets, f"{rule_file} not mounted into prometheus"

    grafana_mounts = dict(mounts(services["grafana"]))
    dash_dir = grafana_mounts["./deploy/grafana/dashboards"]
    assert grafana_mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    providers = load_yaml(GRAFANA_PROVISIONING / "dashboards" / "dashboards.yml")
    assert [p["options"]["path"] for p in providers["providers"]] == [dash_dir]
    datasources = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")
    urls = [d["url"] for d in datasources["datasources"]]
    assert urls == ["http://prometheus:9090"]

    flower = " ".join(as_argv(services["flower"].get("command")))
    assert "flower" in flower and "--port=5555" in flower
    assert any("5555" in str(p) for p in services["flower"]["ports"])


# --------------------------------------------------------------------------
# Dockerfile and .dockerignore


def test_dockerfile_stages(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    global_args, stages = dockerfile
    names = [s.name for s in stages]
    assert {"producer", "worker"} <= set(names), names
    assert len(names) == len(set(names)), "duplicate stage names"
    first = stages[0].base
    for key, default in global_args.items():
        first = first.replace(f"${{{key}}}", default).replace(f"${key}", default)
    assert first == "python:3.11-slim"


def test_dockerfile_targets_are_non_root_with_inferq_entrypoint(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    stages = dockerfile[1]
    for target in ("producer", "worker"):
        user = stage_value(stages, target, "USER")
        assert user is not None, f"{target} runs as root"
        assert user.split(":")[0] not in ("root", "0"), target
        assert json.loads(stage_value(stages, target, "ENTRYPOINT")) == ["inferq"]
    cmd = json.loads(stage_value(stages, "worker", "CMD"))
    assert cmd == ["worker", "--model", "shapes"]


def test_dockerfile_worker_installs_torch_from_index_arg(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    worker = next(s for s in dockerfile[1] if s.name == "worker")
    args = dict(a.partition("=")[::2] for i, a in worker.instructions if i == "ARG")
    assert args.get("TORCH_INDEX_URL", "").startswith("https://download.pytorch.org/whl/")
    runs = " ".join(a for i, a in worker.instructions if i == "RUN")
    assert re.search(r"--(extra-)?index-url\s+\"?\$\{?TORCH_INDEX_URL", runs)
    assert "[worker]" in runs
    producer = next(s for s in dockerfile[1] if s.name == "producer")
    assert "[worker]" not in " ".join(a for _, a in producer.instructions)


def test_dockerfile_has_no_remote_add() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert not re.search(r"^\s*ADD\s+(--\S+\s+)*https?://", text, re.I | re.M)


def test_dockerignore_excludes_local_state() -> None:
    entries = {
        line.strip().rstrip("/").removeprefix("**/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for required in (".venv", ".git", "models", "__pycache__", ".pytest_cache"):
        assert required in entries, f".dockerignore misses {required}"


# --------------------------------------------------------------------------
# YAML under deploy/ and the Kubernetes manifests


@pytest.mark.parametrize(
    "path",
    sorted(DEPLOY.rglob("*.y*ml")),
    ids=lambda p: str(p.relative_to(DEPLOY)),
)
def test_deploy_yaml_parses(path: Path) -> None:
    docs = load_yaml_docs(path)
    assert docs, f"{path} is empty"
    assert all(isinstance(d, dict) for d in docs)


def test_k8s_manifests_have_expected_kinds() -> None:
    present = {p.name for p in K8S.glob("*.yaml")}
    assert present == set(EXPECTED_K8S_KINDS), present ^ set(EXPECTED_K8S_KINDS)
    for name, kind in EXPECTED_K8S_KINDS.items():
        for doc in load_yaml_docs(K8S / name):
            assert doc.get("kind") == kind, name
            assert doc.get("apiVersion"), name
            if kind != "Kustomization":
                assert doc["metadata"]["name"], name


def test_kustomization_lists_existing_manifests_but_not_the_example_secret() -> None:
    resources = single_doc("kustomization.yaml")["resources"]
    assert len(resources) == len(set(resources))
    for resource in resources:
        assert (K8S / resource).is_file(), f"kustomization lists missing {resource}"
    expected = {
        p.name
        for p in K8S.glob("*.yaml")
        if p.name != "kustomization.yaml" and not p.name.endswith(".example.yaml")
    }
    assert set(resources) == expected
    # Placeholder credentials must never be applied by `kubectl apply -k`.
    assert not any(r.endswith(".example.yaml") for r in resources)


def test_deployment_reads_broker_url_from_secret_only() -> None:
    deployment = single_doc("worker-deployment.yaml")
    secret = single_doc("secret.example.yaml")
    configmap = single_doc("configmap.yaml")
    secret_keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))

    pod = deployment["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    env = {e["name"]: e for e in containers["worker"].get("env", [])}
    ref = env["INFERQ_BROKER_URL"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret_keys
    assert "value" not in env["INFERQ_BROKER_URL"]

    for container in pod.get("initContainers", []) + pod["containers"]:
        for item in container.get("env", []):
            assert not re.match(r"rediss?://", str(item.get("value", ""))), item
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] == configmap["metadata"]["name"]
    assert not {"INFERQ_BROKER_URL", "INFERQ_RESULT_BACKEND"} & set(configmap["data"])
    assert set(configmap["data"]) <= ENV_VARS
    assert all(isinstance(v, str) for v in configmap["data"].values())


def test_deployment_gpu_shutdown_probes_and_scrape_annotations() -> None:
    deployment = single_doc("worker-deployment.yaml")
    configmap = single_doc("configmap.yaml")
    assert deployment["metadata"]["name"] == "inferq-worker"
    # KEDA owns the replica count; a fixed value would fight the autoscaler.
    assert "replicas" not in deployment["spec"]

    template = deployment["spec"]["template"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()
    pod = template["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 60

    worker = next(c for c in pod["containers"] if c["name"] == "worker")
    assert worker["args"][0] == "worker"
    assert str(worker["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert ports["metrics"] == METRICS_PORT
    assert int(configmap["data"]["INFERQ_METRICS_PORT"]) == METRICS_PORT
    for probe in ("readinessProbe", "livenessProbe"):
        spec = worker[probe]
        assert "exec" not in spec, f"{probe} should not shell out to celery"
        assert spec["httpGet"]["path"] == "/metrics"
        port = spec["httpGet"]["port"]
        assert ports.get(port, port) == METRICS_PORT

    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_scaledobject_targets_deployment_backlog() -> None:
    from inferq.worker.keda import KedaOptions, scaled_object

    deployment = single_doc("worker-deployment.yaml")
    scaled = single_doc("keda-scaledobject.yaml")
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert target["name"] == deployment["metadata"]["name"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert spec["minReplicaCount"] == 0  # published models take requests with no worker
    assert spec["maxReplicaCount"] == 16
    assert isinstance(spec["cooldownPeriod"], int)
    assert spec["fallback"]["replicas"] >= 1

    worker = deployment["spec"]["template"]["spec"]["containers"][0]
    args = worker["args"]
    served = {args[i + 1] for i, a in enumerate(args) if a == "--model"}
    [trigger] = spec["triggers"]
    assert trigger["type"] == "prometheus"
    metadata = trigger["metadata"]
    # KEDA trigger metadata is map[string]string.
    assert all(isinstance(v, str) for v in metadata.values()), metadata
    model = re.fullmatch(r'max\(inferq_backlog\{model="(\w+)"\}\)', metadata["query"])
    assert model and model.group(1) in served
    assert metadata["threshold"] == "64" and metadata["activationThreshold"] == "0"
    # The file is the generator's output for the example model, with a header saying so.
    generated = scaled_object(KedaOptions("shapes", 0, 16, 64))
    text = (K8S / "keda-scaledobject.yaml").read_text(encoding="utf-8")
    assert text.endswith(generated) and "inferq deploy keda" in text
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1


def test_secret_example_holds_placeholders_only() -> None:
    secret = single_doc("secret.example.yaml")
    for key, value in secret["stringData"].items():
        password = redis_url_password(value)
        if password is not None:
            assert password == "CHANGE_ME", key
        if "password" in key:
            assert value == "CHANGE_ME", key


def test_metrics_service_is_headless_and_selects_workers() -> None:
    service = single_doc("service.yaml")
    deployment = single_doc("worker-deployment.yaml")
    template = deployment["spec"]["template"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    worker = template["spec"]["containers"][0]
    port_names = {p["name"] for p in worker["ports"]}
    for port in service["spec"]["ports"]:
        assert port["port"] == METRICS_PORT
        assert port["targetPort"] in port_names | {METRICS_PORT}


# --------------------------------------------------------------------------
# Prometheus rules


def test_rules_structure_and_required_alerts(rules: dict[str, Any]) -> None:
    groups = rules["groups"]
    assert len({g["name"] for g in groups}) == len(groups)
    alerts = []
    for group in groups:
        assert group["rules"], group["name"]
        for rule in group["rules"]:
            assert ("record" in rule) != ("alert" in rule), rule
            assert str(rule["expr"]).strip()
            if "record" in rule:
                assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", rule["record"])
            else:
                alerts.append(rule["alert"])
                duration_seconds(rule.get("for", "0s"))
                assert rule["labels"]["severity"] in {"info", "warning", "critical"}
                assert rule["annotations"]["summary"]
    assert len(alerts) == len(set(alerts))
    missing = REQUIRED_ALERTS - set(alerts)
    assert not missing, f"missing alerts: {sorted(missing)}"


def test_rules_use_only_exported_metrics(rules: dict[str, Any], recorded: set[str]) -> None:
    used: set[str] = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            metrics, problems = check_expr(rule["expr"], recorded)
            assert not problems, f"{rule.get('record') or rule['alert']}: {problems}"
            used |= metrics
    assert {
        "inferq_requests_total",
        "inferq_request_latency_seconds",
        "inferq_queue_depth",
        "inferq_worker_up",
        "inferq_gpu_memory_used_bytes",
    } <= used


def test_expression_checker_rejects_bad_queries() -> None:
    # Guards the checker itself, so a regression cannot make the tests vacuous.
    assert check_expr("inferq_requests_total", set())[1] == []
    assert check_expr("inferq_latency_seconds", set())[1]
    assert check_expr("inferq_queue_depth_count", set())[1]
    assert check_expr("rate(inferq_queue_depth[5m])", set())[1]
    assert check_expr("model:inferq_missing:rate5m > 1", set())[1]
    assert check_expr(
        "histogram_quantile(0.9, sum by (model) (rate(inferq_batch_size_bucket[5m])))",
        set(),
    )[1]
    assert check_expr('inferq_worker_up{job="inferq_bogus"}', set())[1] == []


# --------------------------------------------------------------------------
# Grafana dashboard


def test_dashboard_panels_have_unique_ids_and_queries(
    dashboard: dict[str, Any],
) -> None:
    panels = all_panels(dashboard)
    assert len(panels) >= 10
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    assert dashboard["uid"] and dashboard["title"]
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        exprs = [t.get("expr", "") for t in panel.get("targets", [])]
        assert exprs and all(e.strip() for e in exprs), panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_dashboard_uses_only_exported_metrics_and_covers_them(
    dashboard: dict[str, Any],
) -> None:
    used: set[str] = set()
    queries = [
        value
        for key, value in walk(dashboard)
        if key in ("expr", "query", "definition") and isinstance(value, str)
    ]
    assert queries
    for query in queries:
        metrics, problems = check_expr(query, recorded=set())
        assert not problems, f"{query}: {problems}"
        used |= metrics
    missing = set(METRICS) - used
    assert not missing, f"dashboard has no panel for {sorted(missing)}"


def test_dashboard_variables_and_datasources_are_defined(
    dashboard: dict[str, Any],
) -> None:
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    provisioned = {
        d["uid"]
        for d in load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    }
    for key, value in walk(dashboard):
        if key == "datasource" and isinstance(value, dict) and "uid" in value:
            uid = value["uid"]
            if value.get("type") == "grafana":
                continue
            match = re.fullmatch(r"\$\{(\w+)\}", uid)
            assert (match and match.group(1) in variables) or uid in provisioned, uid
        if key == "expr":
            for var in re.findall(r"\$(?!__)(\w+)|\$\{(?!__)(\w+)\}", value):
                name = var[0] or var[1]
                assert name in variables, f"undefined variable ${name}"
