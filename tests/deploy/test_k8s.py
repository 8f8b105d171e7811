"""The YAML under deploy/ parses; the Kubernetes manifests agree with each other and the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.manifests import (
    DEPLOY,
    ENV_VARS,
    EXPECTED_K8S_KINDS,
    K8S,
    METRICS_PORT,
    load_yaml_docs,
    redis_url_password,
    single_doc,
)


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
    paths = {"startupProbe": "/ready", "readinessProbe": "/ready", "livenessProbe": "/live"}
    for probe, path in paths.items():
        spec = worker[probe]
        assert "exec" not in spec, f"{probe} should not shell out to celery"
        assert spec["httpGet"]["path"] == path, probe
        port = spec["httpGet"]["port"]
        assert ports.get(port, port) == METRICS_PORT
    # The startup probe allows the model's load and warm-up minutes before liveness counts.
    startup = worker["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300

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


def _pod() -> dict[str, Any]:
    return single_doc("worker-deployment.yaml")["spec"]["template"]


def test_models_reach_pods_from_a_volume_the_job_fills_and_publishes() -> None:
    pod = _pod()["spec"]
    assert not pod.get("initContainers"), "worker pods must not build models themselves"
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes["models"]["persistentVolumeClaim"]
    assert claim == {
        "claimName": single_doc("models-pvc.yaml")["metadata"]["name"],
        "readOnly": True,
    }
    worker = pod["containers"][0]
    [mount] = [m for m in worker["volumeMounts"] if m["name"] == "models"]
    repository = single_doc("configmap.yaml")["data"]["INFERQ_MODEL_REPOSITORY"]
    assert mount["mountPath"] == repository and mount["readOnly"] is True

    job = single_doc("models-job.yaml")["spec"]["template"]["spec"]
    job_volumes = {v["name"]: v for v in job["volumes"]}
    assert job_volumes["models"]["persistentVolumeClaim"]["claimName"] == claim["claimName"]
    [init] = job["initContainers"]
    [publish] = job["containers"]
    assert init["args"][:3] == ["models", "init-examples", repository]
    assert publish["args"] == ["models", "publish", "--repository", repository]
    env = {e["name"]: e for e in publish.get("env", [])}
    assert env["INFERQ_BROKER_URL"]["valueFrom"]["secretKeyRef"]["name"] == "inferq-broker"


@pytest.mark.parametrize("manifest", ["worker-deployment.yaml", "models-job.yaml"])
def test_pods_run_confined_with_a_read_only_root(manifest: str) -> None:
    pod = single_doc(manifest)["spec"]["template"]["spec"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in pod.get("initContainers", []) + pod["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert len(tmp) == 1, f"{container['name']}: no writable /tmp"
        assert "emptyDir" in volumes[tmp[0]["name"]]


def test_disruption_budget_lets_drains_take_one_worker_at_a_time() -> None:
    pdb = single_doc("pdb.yaml")
    assert pdb["apiVersion"] == "policy/v1"
    # minAvailable would block draining the node of the one replica KEDA keeps.
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {
            "matchLabels": single_doc("worker-deployment.yaml")["spec"]["selector"]["matchLabels"]
        },
    }


def test_service_monitor_scrapes_the_metrics_service_port() -> None:
    monitor = single_doc("servicemonitor.yaml")
    service = single_doc("service.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
    # InferqWorkerDown matches up{job=~"inferq-worker.*"}; the operator names the job after the Service.
    assert re.fullmatch(r"inferq-worker.*", service["metadata"]["name"])
