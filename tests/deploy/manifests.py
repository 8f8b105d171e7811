"""Shared helpers of the deploy tests: paths, parsers and the PromQL checker.

Everything is validated by parsing (docker-compose.yml, deploy/Dockerfile, the Kubernetes
manifests, Prometheus rules and the Grafana dashboard), so this tier needs no Docker daemon,
cluster or Prometheus. The contract the files share with the code (metric names, settings,
queue names) is read from the code.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from inferq.shared.settings import Settings
from inferq.worker.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
REQUIREMENTS_SCRIPT = DEPLOY / "docker" / "requirements.py"
CONSTRAINTS = ROOT / "constraints.txt"
PYPROJECT = ROOT / "pyproject.toml"
RULES_FILE = DEPLOY / "prometheus" / "rules.yml"
PROMETHEUS_FILE = DEPLOY / "prometheus" / "prometheus.yml"
ALERTMANAGER_FILE = DEPLOY / "alertmanager" / "alertmanager.yml"
DASHBOARD_FILE = DEPLOY / "grafana" / "dashboards" / "inferq.json"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"

# Metrics the workers export, as PromQL names them, with their Prometheus type: read from the
# code, so a renamed or dropped metric fails the rules and dashboard checks.
METRICS: dict[str, str] = Metrics().exported()
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Environment variables the deployment files may set: every INFERQ_<FIELD> of Settings.
ENV_VARS = {f"INFERQ_{f.name.upper()}" for f in dataclasses.fields(Settings)}
METRICS_PORT = 9808

REQUIRED_SERVICES = {
    "redis",
    "models-init",
    "worker",
    "producer",
    "prometheus",
    "grafana",
    "flower",
    "alertmanager",
}
EXPECTED_K8S_KINDS = {
    "worker-deployment.yaml": "Deployment",
    "configmap.yaml": "ConfigMap",
    "models-pvc.yaml": "PersistentVolumeClaim",
    "models-job.yaml": "Job",
    "secret.example.yaml": "Secret",
    "keda-scaledobject.yaml": "ScaledObject",
    "trigger-auth.yaml": "TriggerAuthentication",
    "service.yaml": "Service",
    "pdb.yaml": "PodDisruptionBudget",
    "servicemonitor.yaml": "ServiceMonitor",
    "kustomization.yaml": "Kustomization",
}
DEPENDS_ON_CONDITIONS = {
    "service_started",
    "service_healthy",
    "service_completed_successfully",
}


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
