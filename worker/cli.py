"""The ``inferq`` command line. Heavy imports (torch) happen inside the commands that need them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from inferq.shared.errors import InferqError
from inferq.shared.logs import configure_logging
from inferq.shared.settings import get_settings
from inferq.worker.models_cli import register as register_fleet_commands
from inferq.worker.optimize.cli import optimize_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """inferq: serve PyTorch models from a Celery + Redis message queue."""


@main.command()
@click.option(
    "--model", "models", multiple=True, help="Model to serve (repeatable; default INFERQ_MODELS)."
)
@click.option("--device", default=None, help="cpu or cuda:N (default INFERQ_DEVICE, else cpu).")
@click.option(
    "--hostname",
    default=None,
    help="Celery node name (default inferq-<models>-<device>-<pid>@host).",
)
@click.option("--loglevel", default=None, help="Celery log level (default INFERQ_LOG_LEVEL).")
@click.option(
    "--events/--no-events", default=True, show_default=True, help="Send task events (Flower)."
)
def worker(
    models: tuple[str, ...],
    device: str | None,
    hostname: str | None,
    loglevel: str | None,
    events: bool,
) -> None:
    """Run a worker for MODEL on DEVICE (restarted on unrecoverable device errors)."""
    from inferq.worker.supervisor import celery_argv, default_hostname, run_worker
    from inferq.worker.tuning import worker_env

    settings = get_settings()
    configure_logging(settings)
    chosen = list(models) or settings.model_list
    if not chosen:
        raise click.UsageError("pass --model NAME (or set INFERQ_MODELS)")
    dev = device or settings.device
    argv = celery_argv(
        chosen,
        dev,
        hostname or default_hostname(chosen, dev),
        loglevel or settings.log_level,
        events,
    )
    # glibc reads these at the child's first allocation, before any of its threads exist.
    env = {**os.environ, **worker_env(settings)}
    sys.exit(run_worker(argv, env, settings.supervise))


@main.group()
def models() -> None:
    """Model repository commands."""


models.add_command(optimize_command)  # inferq models optimize (worker/optimize/cli.py)


@models.command("init-examples")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path), required=False)
@click.option("--only", multiple=True, help="Build only these (shapes, resnet18, resnet50).")
def init_examples(dest: Path | None, only: tuple[str, ...]) -> None:
    """Write the example models into DEST (default INFERQ_MODEL_REPOSITORY)."""
    from inferq.worker.examples.build import EXAMPLE_NAMES, build_examples

    target = dest or get_settings().model_repository
    build_examples(target, list(only) or list(EXAMPLE_NAMES), log=click.echo)


@models.command("list")
@click.option("--repo", type=click.Path(path_type=Path), default=None)
def list_models(repo: Path | None) -> None:
    """List the models and versions in the repository, verifying each file's sha256."""
    from inferq.worker.repository import ModelRepository, verify

    repository = ModelRepository(repo or get_settings().model_repository)
    for name in repository.models():
        try:
            mv = repository.resolve(name)
            verify(mv.path)
            status = "ok"
        except InferqError as exc:
            status = f"ERROR {exc}"
        click.echo(f"{name}\tversions={repository.versions(name)}\t{status}")


@main.command()
@click.option("--model", default="shapes", show_default=True)
@click.option("--count", default=200, show_default=True, help="How many images to submit.")
@click.option("--synthetic/--files", default=True, help="Generate shape images, or read FILES.")
@click.option("--timeout", default=120.0, show_default=True)
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False))
def submit(model: str, count: int, synthetic: bool, timeout: float, files: tuple[str, ...]) -> None:
    """Submit images to a running worker and print the results' summary."""
    from inferq.producer.tools.demo import run_submissions

    run_submissions(
        model=model, count=count, files=list(files) if not synthetic else None, timeout=timeout
    )


@main.command()
@click.option("--count", default=300, show_default=True, help="Fresh images to classify.")
@click.option("--model-repository", type=click.Path(path_type=Path), default=None)
def demo(count: int, model_repository: Path | None) -> None:
    """Everything end to end: Redis (embedded if none answers), example model, worker, producer."""
    from inferq.worker.tools.demo import run_demo

    sys.exit(run_demo(count=count, repo=model_repository))


@main.command()
@click.option("--model", default="shapes", show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--model-repository", type=click.Path(path_type=Path), default=None)
@click.option("--drain", "drain_count", default=20000, show_default=True, help="Requests for (b).")
@click.option("--burst", "burst_count", default=10000, show_default=True, help="Requests for (c).")
@click.option("--steady-seconds", default=10.0, show_default=True, help="Duration of (d).")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16"]),
    default=None,
    help="Override precision.mode.",
)
@click.option(
    "--instances",
    type=click.IntRange(1, 64),
    default=None,
    help="Override the model's [instances] count.",
)
@click.option(
    "--version",
    type=click.IntRange(min=1),
    default=None,
    help="The version to bench, with its own config.toml (default: the highest).",
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("bench-out"), show_default=True
)
def bench(
    model: str,
    batch_size: int,
    device: str,
    model_repository: Path | None,
    drain_count: int,
    burst_count: int,
    steady_seconds: float,
    precision: str | None,
    instances: int | None,
    version: int | None,
    out: Path,
) -> None:
    """Raw model speed vs inferq drain, end-to-end and latency, side by side."""
    from inferq.worker.repository import ModelRepository
    from inferq.worker.tools.bench import BenchConfig, run_bench

    repo = model_repository or get_settings().model_repository
    if model not in ModelRepository(repo).models():
        from inferq.worker.examples.build import build_examples

        build_examples(repo, [model], log=click.echo)
    cfg = BenchConfig(
        model,
        batch_size,
        device,
        repo,
        out,
        drain_count,
        burst_count,
        steady_seconds,
        precision=precision,
        instances=instances,
        version=version,
    )
    run_bench(cfg, echo=click.echo)


@main.command()
@click.option("--minutes", default=3.0, show_default=True, help="How long the load runs.")
@click.option("--rate", default=150.0, show_default=True, help="Requests per second submitted.")
@click.option("--model-repository", type=click.Path(path_type=Path), default=None)
def soak(minutes: float, rate: float, model_repository: Path | None) -> None:
    """Bounded mixed load with injected faults; prints outcomes by type, lost and run twice."""
    from inferq.worker.tools.soak import run_soak

    sys.exit(
        run_soak(
            model_repository or get_settings().model_repository, minutes, rate, echo=click.echo
        )
    )


# Registry, fleet status and deployment commands live in their own module.
register_fleet_commands(main, models)


def _entry() -> None:
    try:
        main()
    except InferqError as exc:
        click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    _entry()
