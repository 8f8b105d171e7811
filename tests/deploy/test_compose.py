"""docker-compose.yml: service wiring, start order, volumes, and what the containers run."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import (
    ALERTMANAGER_FILE,
    COMPOSE_FILE,
    DEPENDS_ON_CONDITIONS,
    ENV_VARS,
    GRAFANA_PROVISIONING,
    METRICS_PORT,
    PROMETHEUS_FILE,
    REQUIRED_SERVICES,
    ROOT,
    RULES_FILE,
    Stage,
    as_argv,
    depends_on,
    duration_seconds,
    effective_argv,
    is_bind,
    load_yaml,
    mounts,
    redis_url_password,
)


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
    # The producer starts once the worker is ready (its healthcheck reads /ready).
    assert depends_on(services["producer"]).get("worker") == "service_healthy"


def test_compose_worker_health_is_its_readiness(services: dict[str, Any]) -> None:
    test = " ".join(as_argv(services["worker"]["healthcheck"]["test"]))
    assert f"127.0.0.1:{METRICS_PORT}/ready" in test
    assert "/metrics" not in test  # the HTTP thread running says nothing of the models


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


def _gpu_workers(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services.items() if "gpu" in s.get("profiles", [])}


def test_compose_gpu_recipe_is_one_worker_per_device(
    services: dict[str, Any], dockerfile: tuple[dict[str, str], list[Stage]]
) -> None:
    gpu = _gpu_workers(services)
    assert sorted(gpu) == ["worker-gpu0", "worker-gpu1"]
    taken: list[str] = []
    for name, service in gpu.items():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert "count" not in device, f"{name}: one named device, not a count"
        taken += device["device_ids"]
        # The container sees its one GPU as cuda:0, whatever the host's index.
        argv = effective_argv(service, dockerfile)
        assert argv[argv.index("--device") + 1] == "cuda:0", name
        assert "worker" in service["networks"]["default"]["aliases"], (
            "outside Prometheus's discovery"
        )
        assert "whl/cu" in service["build"]["args"]["TORCH_INDEX_URL"], name
        # Everything else is the CPU worker's: env, probes, shutdown, start order.
        for key in ("environment", "healthcheck", "stop_grace_period", "depends_on", "volumes"):
            assert service[key] == services["worker"][key], f"{name}: {key}"
    assert sorted(taken) == ["0", "1"]
    assert "profiles" not in services["worker"]


def test_compose_redis_persists_with_aof_and_refuses_writes_when_full(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    redis = services["redis"]
    argv = " ".join(as_argv(redis["command"]))
    assert "--appendonly yes" in argv and "--appendfsync everysec" in argv
    assert "--maxmemory-policy noeviction" in argv
    assert re.search(r"--maxmemory \S+", argv)
    # io-threads: off unless the host has cores to spare (measured; the reason is written down).
    assert "--io-threads ${REDIS_IO_THREADS:-1} --io-threads-do-reads yes" in argv
    # The trade-off against `always` is written down where the choice is made.
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert re.search(r"^\s*#.*`always`", text, re.M)
    data = dict(mounts(redis))
    assert data.get("redis-data") == "/data" and "redis-data" in compose["volumes"]


def test_compose_prometheus_sends_alerts_to_alertmanager(services: dict[str, Any]) -> None:
    alerting = load_yaml(PROMETHEUS_FILE)["alerting"]["alertmanagers"]
    targets = [t for am in alerting for c in am["static_configs"] for t in c["targets"]]
    assert targets == ["alertmanager:9093"]
    assert "alertmanager" in depends_on(services["prometheus"])
    config_mounts = dict(mounts(services["alertmanager"]))
    config = config_mounts["./deploy/alertmanager/alertmanager.yml"]
    assert config == "/etc/alertmanager/alertmanager.yml"
    alertmanager = load_yaml(ALERTMANAGER_FILE)
    receivers = {r["name"] for r in alertmanager["receivers"]}
    routes = [alertmanager["route"], *alertmanager["route"].get("routes", [])]
    assert all(r["receiver"] in receivers for r in routes)
    assert "model" in alertmanager["route"]["group_by"]


@pytest.mark.skipif(
    shutil.which("amtool") is None,
    reason="amtool not installed (apt-get install prometheus-alertmanager); parsed above",
)
def test_amtool_accepts_the_alertmanager_config() -> None:
    done = subprocess.run(
        ["amtool", "check-config", str(ALERTMANAGER_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (apt-get install prometheus); parsed above",
)
def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    # The config names the rules by their path in the container; point it at the repository's.
    config = load_yaml(PROMETHEUS_FILE)
    config["rule_files"] = [str(RULES_FILE)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    done = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


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
