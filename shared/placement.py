"""Where a model's requests and results live: its placement.

A fleet spreads models over Redis instances. The directory is the registry on the *home* Redis
(``INFERQ_BROKER_URL``): ``inferq models place`` writes ``inferq:placement:<model>`` there, and
producers read it with the model's record (cached like specs), workers when they start. A model
without a placement lives on the home Redis, as before.

A placement names instances, never credentials: ``broker`` and ``results`` are names that each
process resolves through its own settings (``INFERQ_REDIS_INSTANCES=name=url,...``, passwords
included, redacted in every repr and log). The record also keeps each instance's URL *without*
its password, used when a process has no entry of that name (an instance without auth).

* standalone: the model's queues, bookkeeping and, by default, its results live on ``broker``;
  a foreign Celery client pointed at that Redis works as with the home one.
* cluster: ``broker`` is a Redis Cluster and the model's queue is split into ``shards`` shards
  (``shared/cluster.py``); results live on ``results``, a standalone Redis (home by default):
  Celery's result backend and the result listener need one node, and results are small.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis

from inferq.shared.errors import ConfigError
from inferq.shared.settings import Settings, redact_url

HOME = "home"
PLACEMENT_PREFIX = "inferq:placement:"


def placement_key(model: str) -> str:
    return f"{PLACEMENT_PREFIX}{model}"


@dataclass(frozen=True)
class Placement:
    """What the registry records for one model (names and password-free URLs only)."""

    model: str
    broker: str = HOME
    results: str = HOME
    cluster: bool = False
    shards: int = 0
    broker_url: str = ""  # without password: used where a process has no such instance
    results_url: str = ""

    def __post_init__(self) -> None:
        if self.cluster and self.shards < 1:
            raise ConfigError(f"a cluster placement needs shards >= 1, got {self.shards}")
        if not self.cluster and self.shards:
            raise ConfigError("shards apply to a cluster placement only (pass --cluster)")
        if self.cluster and self.results == self.broker:
            raise ConfigError(
                "a cluster placement's results must live on a standalone Redis (--results NAME, "
                f"default home), got the cluster {self.broker!r} itself"
            )

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Placement:
        return cls(**orjson.loads(raw))


@dataclass(frozen=True)
class Where:
    """A placement resolved by one process: full URLs (secrets included: never log this)."""

    broker_url: str
    results_url: str
    cluster: bool = False
    shards: int = 0

    def __repr__(self) -> str:
        return (
            f"Where(broker_url={redact_url(self.broker_url)!r}, "
            f"results_url={redact_url(self.results_url)!r}, cluster={self.cluster}, "
            f"shards={self.shards})"
        )


def home(settings: Settings) -> Where:
    return Where(settings.broker_url, settings.result_backend)


def resolve(placement: Placement | None, settings: Settings) -> Where:
    """Where ``placement`` is for this process (home when None)."""
    if placement is None:
        return home(settings)
    broker = _url(placement.broker, placement.broker_url, settings, settings.broker_url)
    results = _url(placement.results, placement.results_url, settings, settings.result_backend)
    return Where(broker, results, placement.cluster, placement.shards)


def _url(name: str, stored: str, settings: Settings, home_url: str) -> str:
    if name == HOME:
        return home_url
    found = settings.instances.get(name)
    if found:
        return found
    if stored:
        return stored
    raise ConfigError(
        f"Redis instance {name!r} must be named in INFERQ_REDIS_INSTANCES (name=url,...), got "
        f"only {sorted(settings.instances) or 'none'}"
    )


def without_password(url: str) -> str:
    """``url`` with its password taken out (not masked): what the registry may keep."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}@{hostport}" if user else hostport))


def make_placement(
    model: str,
    settings: Settings,
    broker: str,
    results: str | None = None,
    shards: int = 0,
) -> Placement:
    """The record for ``model`` on instance ``broker`` (a cluster when ``shards`` > 0)."""
    cluster = shards > 0
    results = results or (HOME if cluster else broker)
    urls = {HOME: settings.broker_url, **settings.instances}
    for name in (broker, results):
        if name not in urls:
            raise ConfigError(
                f"instance must be home or one named in INFERQ_REDIS_INSTANCES "
                f"({sorted(settings.instances) or 'none'}), got {name!r}"
            )
    return Placement(
        model,
        broker,
        results,
        cluster,
        shards,
        "" if broker == HOME else without_password(urls[broker]),
        "" if results == HOME else without_password(urls[results]),
    )


def read_placement(client: redis.Redis, model: str) -> Placement | None:
    raw = client.get(placement_key(model))
    return None if raw is None else Placement.from_json(raw)


def write_placement(client: redis.Redis, placement: Placement) -> None:
    client.set(placement_key(placement.model), placement.to_json())


def clear_placement(client: redis.Redis, model: str) -> bool:
    return bool(client.delete(placement_key(model)))
