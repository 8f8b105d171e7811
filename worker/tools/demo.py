"""``inferq demo``: start what is missing, classify fresh images, report, stop what it started."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from inferq.shared.redisconn import make_client
from inferq.shared.settings import get_settings, set_settings
from inferq.worker.repository import ModelRepository
from inferq.worker.tools.localredis import LocalRedis, answers
from inferq.worker.tools.procs import start_worker

DEMO_MODEL = "shapes"


def run_demo(count: int, repo: Path | None, examples: bool = False) -> int:
    settings = get_settings()
    if repo is not None:
        settings = settings.replace(model_repository=repo)
    local: LocalRedis | None = None
    if not answers(settings.broker_url):
        click.echo("no Redis answers at INFERQ_BROKER_URL: starting an embedded redis-server")
        local = LocalRedis().start()
        settings = settings.replace(broker_url=local.url, result_backend=local.url)
    set_settings(settings)
    try:
        return _run(settings.model_repository, count, examples)
    finally:
        if local is not None:
            local.stop()


def _run(repo: Path, count: int, examples: bool) -> int:
    from inferq.producer.client import reset_runtime
    from inferq.producer.tools.demo import run_submissions

    settings = get_settings()
    if DEMO_MODEL not in ModelRepository(repo).models():
        from inferq.worker.examples.build import build_examples

        click.echo(f"building the example model {DEMO_MODEL!r} in {repo} (trains in a few seconds)")
        build_examples(repo, [DEMO_MODEL], log=click.echo)
    env = {
        "INFERQ_BROKER_URL": settings.broker_url,
        "INFERQ_RESULT_BACKEND": settings.result_backend,
        "INFERQ_MODEL_REPOSITORY": str(repo.resolve()),
        "INFERQ_METRICS_PORT": "0",
    }
    log_path = Path(tempfile.mkdtemp(prefix="inferq-demo-")) / "worker.log"
    click.echo(f"starting a worker for {DEMO_MODEL!r} (log: {log_path})")
    worker = start_worker([DEMO_MODEL], env, log_path=log_path)
    try:
        worker.wait_ready(make_client(settings.broker_url))
        reset_runtime()
        summary = run_submissions(DEMO_MODEL, count)
    finally:
        click.echo("stopping the worker (warm shutdown)")
        worker.terminate()
    failed = summary.failed
    if examples:
        from inferq.worker.tools.demo_examples import run_examples

        failed += run_examples(repo, min(count, 120), env, settings.broker_url)
    return 0 if failed == 0 else 1
