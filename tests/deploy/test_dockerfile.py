"""deploy/Dockerfile and .dockerignore."""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib

import pytest

from tests.deploy.manifests import (
    CONSTRAINTS,
    DOCKERFILE,
    ENV_VARS,
    PYPROJECT,
    REQUIREMENTS_SCRIPT,
    ROOT,
    Stage,
    stage_value,
)


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


def _runs(stage: Stage) -> list[str]:
    return [a for i, a in stage.instructions if i == "RUN"]


def _stage(dockerfile: tuple[dict[str, str], list[Stage]], name: str) -> Stage:
    return next(s for s in dockerfile[1] if s.name == name)


def test_dockerfile_worker_takes_torch_alone_from_its_index(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    worker = _stage(dockerfile, "worker")
    args = dict(a.partition("=")[::2] for i, a in worker.instructions if i == "ARG")
    assert args.get("TORCH_INDEX_URL", "").startswith("https://download.pytorch.org/whl/")
    # An extra index lets a same-named package on PyPI win over PyTorch's build.
    assert "--extra-index-url" not in DOCKERFILE.read_text(encoding="utf-8")
    from_index = [r for r in _runs(worker) if "TORCH_INDEX_URL" in r]
    assert len(from_index) == 1
    (run,) = from_index
    assert re.search(r'--index-url\s+"\$\{TORCH_INDEX_URL\}"', run)
    assert run.split()[-1] == "torch" and "--no-deps" in run and "-c /deps/constraints.txt" in run


@pytest.mark.parametrize(("target", "extras"), [("producer", []), ("worker", ["worker", "cuda"])])
def test_dockerfile_installs_constrained_dependencies_before_the_source(
    dockerfile: tuple[dict[str, str], list[Stage]], target: str, extras: list[str]
) -> None:
    base = _stage(dockerfile, "base")
    copies = [a for i, a in base.instructions if i == "COPY"]
    assert copies == ["pyproject.toml constraints.txt deploy/docker/requirements.py /deps/"]
    runs = _runs(_stage(dockerfile, target))
    deps = next(i for i, r in enumerate(runs) if "requirements.py" in r)
    source = next(i for i, r in enumerate(runs) if "/wheels/*.whl" in r)
    assert deps < source, "the dependency layer must come before the source layer"
    assert f"/deps/pyproject.toml {' '.join(extras)}".strip() + " >" in runs[deps]
    assert "pip install -c /deps/constraints.txt -r /deps/requirements.txt" in runs[deps]
    assert "pip install --no-deps /wheels/*.whl" in runs[source]
    for run in runs:
        if "pip install" in run and "--no-deps /wheels" not in run:
            assert "-c /deps/constraints.txt" in run, run


def test_requirements_script_reads_pyproject_extras() -> None:
    spec = importlib.util.spec_from_file_location("requirements", REQUIREMENTS_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    base = module.requirements(str(PYPROJECT), [])
    assert base == project["dependencies"]
    worker = module.requirements(str(PYPROJECT), ["worker", "cuda"])
    assert worker[len(base) :] == [
        *project["optional-dependencies"]["worker"],
        *project["optional-dependencies"]["cuda"],
    ]
    assert not [r for r in module.requirements(str(PYPROJECT), ["dev"]) if r.startswith("inferq")]
    with pytest.raises(SystemExit, match="extras must be among"):
        module.requirements(str(PYPROJECT), ["gpu"])


def test_constraints_pin_every_package_and_agree_with_pyproject() -> None:
    pins = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version and "+" not in version, f"not an exact, label-free pin: {line}"
            pins[name.lower().replace("_", "-")] = version
    worker = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    torch_req = next(r for r in worker["optional-dependencies"]["worker"] if r.startswith("torch"))
    assert torch_req == f"torch=={pins['torch']}"
    for package in ("celery", "kombu", "redis", "numpy", "prometheus-client", "pytest", "ruff"):
        assert package in pins, f"constraints.txt does not pin {package}"
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "pip install -q -c constraints.txt -e '.[dev]'" in makefile


def test_worker_image_lets_a_device_failure_end_the_container(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    env = stage_value(dockerfile[1], "worker", "ENV") or ""
    assert re.search(r"\bINFERQ_SUPERVISE=0\b", env), env
    assert "INFERQ_SUPERVISE" in ENV_VARS


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
    # What the dependency layer copies must reach the build.
    assert "deploy" in entries and "!deploy/docker/requirements.py" in entries
    assert not {"constraints.txt", "pyproject.toml"} & entries
