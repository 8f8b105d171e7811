"""``inferq models place``: put a model's queues (and results) on another Redis, or shard them
over a Redis Cluster; ``--home`` brings it back. The record lives in the home Redis's registry
(``shared/placement.py``); producers follow it within their spec cache's TTL, workers when they
start. Move a model only while its queues are empty: messages already queued stay where they are.
"""

from __future__ import annotations

import click

from inferq.shared.placement import (
    HOME,
    Placement,
    clear_placement,
    make_placement,
    read_placement,
    write_placement,
)
from inferq.shared.settings import get_settings
from inferq.worker.models_cli import cli_client, refusing


@click.command()
@click.argument("model")
@click.option(
    "--instance",
    default=None,
    help="The Redis instance (a name in INFERQ_REDIS_INSTANCES) for the model's queues.",
)
@click.option(
    "--results",
    default=None,
    help="The instance for its results (default: the queues' instance; home for a cluster).",
)
@click.option(
    "--shards",
    type=click.IntRange(0, 1024),
    default=0,
    help="Shard the queue over this many hash slots: --instance is then a Redis Cluster.",
)
@click.option("--home", "go_home", is_flag=True, help="Back to the home Redis.")
@refusing
def place(
    model: str, instance: str | None, results: str | None, shards: int, go_home: bool
) -> None:
    """Place MODEL's queues and results on another Redis (or show where it is)."""
    client = cli_client()
    if go_home:
        clear_placement(client, model)
        click.echo(f"{model}: on the home Redis")
        return
    if instance is None:
        found = read_placement(client, model)
        click.echo(f"{model}: {_line(found) if found else 'on the home Redis'}")
        return
    placement = make_placement(model, get_settings(), instance, results, shards)
    write_placement(client, placement)
    click.echo(f"{model}: {_line(placement)}")


def _line(p: Placement) -> str:
    where = (
        f"sharded {p.shards} ways over cluster {p.broker!r}" if p.cluster else f"on {p.broker!r}"
    )
    results = (
        "" if p.results == (HOME if p.cluster else p.broker) else f", results on {p.results!r}"
    )
    return f"queues {where}{results}"


def register(models: click.Group) -> None:
    models.add_command(place)
