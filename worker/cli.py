"""The ``inferq`` command line. Heavy imports (torch) happen inside the commands that need them."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import click

from inferq.shared.errors import InferqError
from inferq.shared.logs import configure_logging
from inferq.shared.settings import get_settings
from inferq.worker.deadletter_cli import deadletter
from inferq.worker.examples import EXAMPLE_NAMES
from inferq.worker.models_cli import Refused, refusing
from inferq.worker.models_cli import register as register_fleet_commands
from inferq.worker.optimize.cli import optimize_command
from inferq.worker.place_cli import register as register_place_command

_DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="inferq", prog_name="inferq")
def main() -> None:
    """inferq: serve PyTorch models from a Celery + Redis message queue."""


@main.command()
@click.option(
    "--model", "models", multiple=True, help="Model to serve (repeatable; default INFERQ_MODELS)."
)
@click.option(
    "--device",
    default=None,
    callback=lambda _ctx, _param, value: _device_option(value),
    help="cpu or cuda:N (default INFERQ_DEVICE, else cpu).",
)
@click.option(
    "--hostname",
    default=None,
    help="Celery node name (default inferq-<models>-<device>-<pid>@host).",
)
@click.option(
    "--loglevel",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False),
    default=None,
    help="Celery log level (default INFERQ_LOG_LEVEL).",
)
@click.option(
    "--events/--no-events",
    "-E",
    default=False,
    show_default=True,
    help="Send task events (for Flower, `celery events`); off by default, as in Celery.",
)
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=None,
    help="Worker processes side by side, each its own Celery node (name-pK@host) with its own "
    "GIL; torch threads split between them unless INFERQ_TORCH_THREADS is set. More throughput "
    "draining a backlog on CPU, a longer latency tail (default INFERQ_WORKER_PROCESSES, else 1).",
)
def worker(
    models: tuple[str, ...],
    device: str | None,
    hostname: str | None,
    loglevel: str | None,
    events: bool,
    processes: int | None,
) -> None:
    """Run a worker for MODEL on DEVICE (restarted on unrecoverable device errors)."""
    from inferq.worker.supervisor import (
        ProcessGroup,
        celery_argv,
        default_hostname,
        process_env,
        process_hostname,
        run_worker,
    )
    from inferq.worker.tuning import worker_env

    settings = get_settings()
    configure_logging(settings)
    chosen = list(models) or settings.model_list
    if not chosen:
        raise click.UsageError("pass --model NAME (or set INFERQ_MODELS)")
    dev = device or settings.device
    _preflight(settings.broker_url, dev)
    count = processes or settings.worker_processes
    name = hostname or default_hostname(chosen, dev)
    level = loglevel or settings.log_level
    argvs = [
        celery_argv(chosen, dev, process_hostname(name, k, count), level, events)
        for k in range(count)
    ]
    # glibc reads these at the child's first allocation, before any of its threads exist.
    env = {**os.environ, **worker_env(settings)}
    if count == 1:
        sys.exit(run_worker(argvs[0], env, settings.supervise))
    envs = [process_env(env, count, settings.torch_threads)] * count
    sys.exit(ProcessGroup(argvs, envs, restart=settings.supervise).run())


def _device_option(value: str | None) -> str | None:
    if value is not None and not _DEVICE.fullmatch(value):
        raise click.BadParameter(f"must be cpu or cuda:N, got {value!r}")
    return value


def _preflight(broker_url: str, device: str) -> None:
    """Seconds, not a model load, before a wrong device or an unreachable Redis is named."""
    from inferq.worker.preflight import preflight

    try:
        preflight(broker_url, device)
    except InferqError as exc:
        raise Refused(f"{type(exc).__name__}: {exc.message}") from None


@main.group()
def models() -> None:
    """Model repository commands."""


models.add_command(optimize_command)  # inferq models optimize (worker/optimize/cli.py)


@models.command("init-examples")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path), required=False)
@click.option("--only", multiple=True, type=click.Choice(EXAMPLE_NAMES), help="Build only these.")
def init_examples(dest: Path | None, only: tuple[str, ...]) -> None:
    """Write the example models into DEST (default INFERQ_MODEL_REPOSITORY)."""
    from inferq.worker.examples.build import build_examples

    target = dest or get_settings().model_repository
    build_examples(target, list(only) or list(EXAMPLE_NAMES), log=click.echo)


@models.command("list")
@click.option("--repo", type=click.Path(path_type=Path), default=None)
def list_models(repo: Path | None) -> None:
    """List the models and versions in the repository, verifying each file's sha256.

    Exit code 1 when any model fails its checks, 2 when the repository does not exist.
    """
    from inferq.worker.repository import ModelRepository, verify

    root = repo or get_settings().model_repository
    if not root.is_dir():
        raise Refused(
            f"model repository {root} does not exist: write the examples there with "
            f"`inferq models init-examples {root}`, or pass --repo DIR / set INFERQ_MODEL_REPOSITORY"
        )
    repository = ModelRepository(root)
    failed = 0
    for name in repository.models():
        try:
            verify(repository.resolve(name).path)
            status = "ok"
        except InferqError as exc:
            failed += 1
            status = f"ERROR {exc}"
        click.echo(f"{name}\tversions={repository.versions(name)}\t{status}")
    if failed:
        click.echo(f"error: {failed} model(s) in {root} failed their checks", err=True)
        sys.exit(1)
    if not repository.models():
        click.echo(f"no models in {root} (`inferq models init-examples {root}` writes examples)")


@main.command()
@click.option("--model", default="shapes", show_default=True)
@click.option(
    "--synthetic",
    type=click.IntRange(1, 1_000_000),
    default=None,
    metavar="N",
    help="Submit N generated shape images instead of FILES.",
)
@click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), default=120.0, show_default=True
)
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@refusing
def submit(model: str, synthetic: int | None, timeout: float, files: tuple[str, ...]) -> None:
    """Submit image FILES (or --synthetic N generated images) to the workers; print a summary."""
    from inferq.producer.tools.demo import run_submissions

    if bool(files) == (synthetic is not None):
        raise click.UsageError(
            "pass image FILES to submit, or --synthetic N for N generated images (not both)"
        )
    run_submissions(
        model=model, count=synthetic or len(files), files=list(files) or None, timeout=timeout
    )


@main.command()
@click.option("--count", default=300, show_default=True, help="Fresh images to classify.")
@click.option("--model-repository", type=click.Path(path_type=Path), default=None)
@click.option(
    "--examples",
    is_flag=True,
    help="Then the detector, segmenter and text classifier too (builds them if missing: minutes).",
)
def demo(count: int, model_repository: Path | None, examples: bool) -> None:
    """Everything end to end: Redis (embedded if none answers), example model, worker, producer."""
    from inferq.worker.tools.demo import run_demo

    sys.exit(run_demo(count=count, repo=model_repository, examples=examples))


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
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes serving (b)-(d) side by side, as `inferq worker --processes`.",
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
@click.option(
    "--client",
    is_flag=True,
    help="Instead: the client's CPU per call, then --threads callers doing .delay().get() "
    "due at --rate per second for --steady-seconds.",
)
@click.option("--threads", default=32, show_default=True, help="Callers for --client.")
@click.option("--rate", default=300.0, show_default=True, help="Requests/s due for --client.")
@click.option(
    "--null-model",
    is_flag=True,
    help="Instead: the path's ceiling per wire with the null models, --drain requests at "
    "3x32x32 and a fifth as many at 3x224x224: Redis CPU and bytes per message.",
)
@click.option(
    "--wire",
    "wires",
    multiple=True,
    type=click.Choice(["raw", "jpeg", "png"]),
    help="Wires for --null-model (default: all three).",
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
    processes: int,
    version: int | None,
    out: Path,
    client: bool,
    threads: int,
    rate: float,
    null_model: bool,
    wires: tuple[str, ...],
) -> None:
    """Raw model speed vs inferq drain, end-to-end and latency, side by side."""
    if null_model:
        from inferq.worker.tools import wirebench

        counts = {32: drain_count, 224: max(100, drain_count // 5)}
        cases = wirebench.run(counts, wires or wirebench.WIRES, echo=click.echo, device=device)
        out.mkdir(parents=True, exist_ok=True)
        (out / "wirebench.json").write_text(json.dumps(wirebench.as_dicts(cases), indent=2))
        return
    from inferq.worker.repository import ModelRepository
    from inferq.worker.tools.bench import BenchConfig, run_bench

    repo = model_repository or get_settings().model_repository
    if model not in ModelRepository(repo).models():
        from inferq.worker.examples.build import build_examples

        build_examples(repo, [model], log=click.echo)
    if client:
        from inferq.worker.tools import clientbench as cb

        click.echo(cb.render(cb.client_costs(3000)))
        click.echo(
            cb.render_paced(cb.paced_against_worker(repo, model, threads, rate, steady_seconds))
        )
        return
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
        processes=processes,
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
register_place_command(models)
main.add_command(deadletter)


def _entry() -> None:
    try:
        main()
    except InferqError as exc:
        click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    _entry()
