"""Shared fixtures: a private redis-server per test (or per module), worker processes, models."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from inferq.producer.client import reset_runtime
from inferq.shared.redisconn import make_client
from inferq.shared.settings import Settings, set_settings
from inferq.worker.tools.localredis import LocalRedis
from inferq.worker.tools.procs import WorkerProcess, start_worker

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def test_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.models import build_test_repo

    return build_test_repo(tmp_path_factory.mktemp("repo"))


@dataclass(frozen=True)
class ShapesBuild:
    """Example models as ``build_examples`` left them: what it wrote and what it logged."""

    repo: Path
    written: tuple[Path, ...]
    log: tuple[str, ...]


@pytest.fixture(scope="session")
def shapes_build(tmp_path_factory: pytest.TempPathFactory) -> ShapesBuild:
    """The real example classifier, trained once per session (~12 s) for every test that needs
    it. Shared: a test that changes the repository works on its own copy (``shapes_repo_copy``)."""
    from inferq.worker.examples.build import build_examples

    root = tmp_path_factory.mktemp("shapes-repo")
    lines: list[str] = []
    written = build_examples(root, ["shapes"], log=lines.append, seed=0)
    return ShapesBuild(root, tuple(written), tuple(lines))


def _build(factory: pytest.TempPathFactory, names: list[str]) -> ShapesBuild:
    from inferq.worker.examples.build import build_examples

    root = factory.mktemp("-".join(names))
    lines: list[str] = []
    written = build_examples(root, names, log=lines.append, seed=0)
    return ShapesBuild(root, tuple(written), tuple(lines))


@pytest.fixture(scope="session")
def scenes_build(tmp_path_factory: pytest.TempPathFactory) -> ShapesBuild:
    """The detector and the segmenter as ``build_examples`` writes them (one training, about 70
    CPU seconds), once per session for the tests that need the real ones."""
    return _build(tmp_path_factory, ["detector", "segmenter"])


@pytest.fixture(scope="session")
def textcls_build(tmp_path_factory: pytest.TempPathFactory) -> ShapesBuild:
    """The text classifier as ``build_examples`` writes it (about 50 CPU seconds), once."""
    return _build(tmp_path_factory, ["textcls"])


@pytest.fixture(scope="session")
def shapes_repo(shapes_build: ShapesBuild) -> Path:
    return shapes_build.repo


@pytest.fixture
def shapes_repo_copy(shapes_repo: Path, tmp_path: Path) -> Path:
    """This test's own copy of the trained repository, free to tamper with."""
    return Path(shutil.copytree(shapes_repo, tmp_path / "shapes-repo"))


class Stack:
    """A private Redis plus the workers started against it; the producer is pointed at it."""

    def __init__(self, repo: Path, tmp: Path, **settings: object) -> None:
        self.redis = LocalRedis().start()
        self.repo = repo
        self.tmp = tmp
        self.workers: list[WorkerProcess] = []
        self.extra_env: dict[str, str] = {}
        self.settings = Settings(
            broker_url=self.redis.url, model_repository=repo, metrics_port=0, **settings
        )  # type: ignore[arg-type]
        set_settings(self.settings)
        reset_runtime()
        self.client = make_client(self.redis.url)

    def env(self) -> dict[str, str]:
        s = self.settings
        return {
            "INFERQ_BROKER_URL": s.broker_url,
            "INFERQ_RESULT_BACKEND": s.result_backend,
            "INFERQ_MODEL_REPOSITORY": str(self.repo),
            "INFERQ_METRICS_PORT": "0",
            "INFERQ_VISIBILITY_TIMEOUT_S": str(s.visibility_timeout_s),
            "INFERQ_RESTORE_INTERVAL_S": str(s.restore_interval_s),
            "INFERQ_LOG_FORMAT": "json",
            "PYTHONPATH": str(ROOT),
            **self.extra_env,
        }

    def worker(self, *models: str, ready: bool = True, **kwargs: object) -> WorkerProcess:
        log = self.tmp / f"worker-{len(self.workers)}.log"
        w = start_worker(list(models), self.env(), log_path=log, **kwargs)  # type: ignore[arg-type]
        self.workers.append(w)
        if ready:
            w.wait_ready(self.client)
        return w

    def close(self) -> None:
        for w in self.workers:
            w.terminate(timeout=20)
        self.redis.stop()
        set_settings(None)
        reset_runtime()


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def make(repo: Path, **settings: object) -> Stack:
        stack = Stack(repo, tmp_path, **settings)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()


@pytest.fixture(autouse=True)
def _no_ambient_inferq_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up a developer's INFERQ_* settings by accident."""
    for key in list(os.environ):
        if key.startswith("INFERQ_"):
            monkeypatch.delenv(key)
