"""deploy/Dockerfile and .dockerignore."""

from __future__ import annotations

import json
import re

from tests.deploy.manifests import (
    DOCKERFILE,
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
