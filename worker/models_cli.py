"""``inferq models publish|remove|rollout|promote|rollback``, ``inferq status``,
``inferq deploy keda`` and ``inferq backlog-exporter``: the registry and the fleet from the shell.

The registry in Redis is the source of truth; a Celery broadcast (``inferq_rollout``) after a
policy change only tells running workers to look now rather than at their next poll, so no answer
is not an error. Every mistake ends in one ``error: ...`` line and exit code 2.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import redis

from inferq.shared.errors import BrokerUnavailable, InferqError, InvalidInput
from inferq.shared.policy import ModelRecord
from inferq.shared.redisconn import CONNECTION_ERRORS, make_client
from inferq.shared.registry import Registry
from inferq.shared.settings import get_settings, redact_url

F = TypeVar("F", bound=Callable[..., Any])

ROLLOUT_COMMAND = "inferq_rollout"
BROADCAST_TIMEOUT_S = 1.0


class Refused(click.ClickException):
    """One line on stderr, exit code 2: what was wrong, what was expected, what came."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def refusing(command: F) -> F:
    """Turn inferq's typed errors and an unreachable Redis into :class:`Refused`."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except InferqError as exc:
            raise Refused(f"{type(exc).__name__}: {exc.message}") from None
        except CONNECTION_ERRORS as exc:
            url = redact_url(get_settings().broker_url)
            raise Refused(
                f"BrokerUnavailable: Redis at {url} must be reachable, got {type(exc).__name__}: {exc}"
            ) from None

    return wrapper  # type: ignore[return-value]


def cli_client() -> redis.Redis:
    return make_client(get_settings().broker_url, retries=2, socket_timeout=10.0)


def _registry() -> Registry:
    return Registry(cli_client())


def policy_line(record: ModelRecord) -> str:
    p = record.policy
    line = f"{record.model}: serving {p.serving}"
    if p.canary is not None:
        line += f", canary {p.canary} ({p.canary_share * 100:g}%)"
    if p.previous is not None:
        line += f", previous {p.previous}"
    return line


def notify_workers(model: str) -> str:
    """Broadcast ``inferq_rollout``; a summary of who answered. Never raises: the registry holds
    the change already, and workers that miss the broadcast find it when they next look."""
    from inferq.shared.celeryconf import make_celery

    try:
        app = make_celery(get_settings())
        replies = app.control.broadcast(
            ROLLOUT_COMMAND, arguments={"model": model}, reply=True, timeout=BROADCAST_TIMEOUT_S
        )
    except Exception as exc:  # any failure to reach workers leaves the registry change in force
        return f"workers not notified ({type(exc).__name__}: {exc}); they follow the registry"
    if not replies:
        return (
            "no worker answered the reload broadcast; workers follow the registry when they start"
        )
    return f"{len(replies)} worker(s) answered the reload broadcast"


def register(main: click.Group, models: click.Group) -> None:
    """Add this module's commands to the ``inferq`` group and its ``models`` subgroup."""
    for command in (publish, remove, rollout, promote, rollback):
        models.add_command(command)
    main.add_command(status)
    main.add_command(deploy)
    main.add_command(backlog_exporter)


@click.command()
@click.option(
    "--repository",
    type=click.Path(path_type=Path),
    default=None,
    help="Model repository (default INFERQ_MODEL_REPOSITORY).",
)
@click.argument("names", nargs=-1)
@refusing
def publish(repository: Path | None, names: tuple[str, ...]) -> None:
    """Record MODELs (default: all in the repository) in the registry, each file's sha256 checked.

    Producers then accept requests for them with no worker running. A model published for the
    first time serves its highest version.
    """
    from inferq.worker.repository import ModelRepository, published_version

    repo = ModelRepository(repository or get_settings().model_repository)
    chosen = list(names) or repo.models()
    if not chosen:
        raise InvalidInput(f"publish needs models, got none in repository {repo.root}")
    # Everything is verified before anything is recorded: one bad file publishes nothing.
    records = {
        name: [published_version(repo.resolve(name, v)) for v in _versions(repo, name)]
        for name in chosen
    }
    registry = _registry()
    for name, versions in records.items():
        record = registry.publish(versions, model=name)
        numbers = [v.version for v in versions]
        click.echo(f"published {name} versions {numbers}; {policy_line(record)}")


def _versions(repo: Any, name: str) -> list[int]:
    repo.config(name)  # ModelUnavailable naming the repository's models when there is no such
    versions: list[int] = repo.versions(name)
    if not versions:
        repo.resolve(name)  # raises, naming the folder that holds no version
    return versions


@click.command()
@click.argument("model")
@refusing
def remove(model: str) -> None:
    """Unpublish MODEL: producers refuse it from now on (queued requests stay queued)."""
    record = _registry().remove(model)
    click.echo(f"removed {model} (versions {list(record.version_numbers)})")


@click.command()
@click.argument("model")
@click.option("--version", "version", type=int, required=True, help="The version to serve.")
@click.option(
    "--canary",
    type=float,
    default=None,
    help="Send only this percentage of requests to it (0 < PCT < 100).",
)
@refusing
def rollout(model: str, version: int, canary: float | None) -> None:
    """Serve VERSION of MODEL, or with --canary PCT send it that share of requests."""
    if canary is not None and not 0 < canary < 100:
        raise InvalidInput(
            f"--canary must be a percentage between 0 and 100 exclusive, got {canary:g}"
        )
    share = None if canary is None else canary / 100.0
    _changed(_registry().rollout(model, version, share))


@click.command()
@click.argument("model")
@refusing
def promote(model: str) -> None:
    """Make MODEL's canary its serving version."""
    _changed(_registry().promote(model))


@click.command()
@click.argument("model")
@refusing
def rollback(model: str) -> None:
    """Drop MODEL's canary, or without one serve its previous version again."""
    _changed(_registry().rollback(model))


def _changed(record: ModelRecord) -> None:
    click.echo(policy_line(record))
    click.echo(notify_workers(record.model))


@click.command()
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
@refusing
def status(names: tuple[str, ...], as_json: bool) -> None:
    """Published versions, serving policy, rollout, workers and backlog of each MODEL (or all)."""
    from inferq.worker.fleet import fleet_status, known_models
    from inferq.worker.status_text import render

    client = cli_client()
    registry = Registry(client)
    fleet = fleet_status(client, registry, list(names) or known_models(client, registry))
    now = time.time()
    if as_json:
        click.echo(json.dumps(fleet.to_dict(now), indent=2, sort_keys=True))
    else:
        click.echo(render(fleet, now))


@click.group()
def deploy() -> None:
    """Deployment manifests generated for this installation."""


@deploy.command("keda")
@click.argument("model")
@click.option("--min-replicas", type=int, default=0, show_default=True)
@click.option("--max-replicas", type=int, default=16, show_default=True)
@click.option(
    "--target-per-replica",
    type=int,
    default=64,
    show_default=True,
    help="Backlog one worker should carry.",
)
@click.option("--deployment", default="inferq-worker", show_default=True)
@click.option(
    "--prometheus",
    default="http://prometheus.monitoring.svc:9090",
    show_default=True,
    help="Prometheus that scrapes `inferq backlog-exporter`.",
)
@refusing
def keda(
    model: str,
    min_replicas: int,
    max_replicas: int,
    target_per_replica: int,
    deployment: str,
    prometheus: str,
) -> None:
    """Print a KEDA ScaledObject scaling MODEL's workers on its whole backlog."""
    from inferq.worker.keda import KedaOptions, scaled_object

    options = KedaOptions(
        model, min_replicas, max_replicas, target_per_replica, deployment, prometheus
    )
    click.echo(scaled_object(options), nl=False)


@click.command("backlog-exporter")
@click.option("--port", type=click.IntRange(1, 65535), default=9809, show_default=True)
@click.option("--address", default="0.0.0.0", show_default=True)
@refusing
def backlog_exporter(port: int, address: str) -> None:
    """Serve inferq_backlog{model} for Prometheus (and KEDA), read from Redis at each scrape."""
    from inferq.worker.backlog_exporter import serve

    client = cli_client()
    try:
        client.ping()
    except CONNECTION_ERRORS as exc:
        raise BrokerUnavailable(
            f"Redis at {redact_url(get_settings().broker_url)} must answer, got {exc}"
        ) from None
    serve(client, port, address)
    click.echo(f"serving inferq_backlog on http://{address}:{port}/metrics")
    threading.Event().wait()  # the HTTP server runs in its own daemon thread until killed
