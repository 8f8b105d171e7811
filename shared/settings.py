"""One frozen settings object, built from ``INFERQ_*`` environment variables once.

Nothing else in inferq reads the environment. Every default is documented here and in the README.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from inferq.shared.errors import ConfigError

_URL_SCHEMES = ("redis", "rediss", "unix")
_LOG_FORMATS = ("json", "console")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")
#: Float settings that must be finite and > 0 (NaN fails ``> 0``, which is why it is written so).
_POSITIVE_SECONDS = (
    "visibility_timeout_s",
    "restore_interval_s",
    "idle_poll_s",
    "heartbeat_s",
    "switch_interval_s",
    "liveness_s",
)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: the only form of a URL that may be logged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"  # e.g. an unclosed IPv6 bracket: nothing safe to show
    if parts.password is None:
        return url
    # Splice the raw netloc rather than rebuilding it from .hostname/.port: that would drop the
    # brackets of an IPv6 literal and raise on a malformed port.
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def _check_url(name: str, url: str) -> str:
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError as exc:
        raise ConfigError(
            f"{name} must be a valid URL, got one that does not parse: {exc}"
        ) from None
    if parts.scheme not in _URL_SCHEMES:
        raise ConfigError(
            f"{name} must be a redis://, rediss:// or unix:// URL, got scheme {parts.scheme!r} "
            f"in {redact_url(url)!r}"
        )
    return url


@dataclass(frozen=True)
class Settings:
    """All of inferq's knobs. Build with :meth:`from_env`; never mutate."""

    #: Celery broker, a Redis URL; ``rediss://`` for TLS, ``redis://:password@host`` for auth.
    broker_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    #: Celery result backend; defaults to the broker.
    result_backend: str = field(default="", repr=False)
    #: Other Redis instances models may be placed on (``inferq models place``), as
    #: ``name=url,name=url``; a placement names an instance, and each process finds its URL
    #: (with its password) here. ``home`` is the broker above.
    redis_instances: str = field(default="", repr=False)
    #: Root of the model repository (``<repo>/<model>/config.toml``, ``<repo>/<model>/<v>/model.pt``).
    model_repository: Path = Path("./models")
    log_level: str = "INFO"
    #: ``json`` (structlog JSON lines, for production) or ``console`` (for people).
    log_format: str = "console"
    #: Port of each worker's Prometheus endpoint; 0 disables it.
    metrics_port: int = 9808
    #: Seconds before an unacknowledged message of a dead worker is delivered again.
    visibility_timeout_s: float = 300.0
    #: How often a worker sweeps for expired unacknowledged messages (kombu's default is ~100 s).
    restore_interval_s: float = 5.0
    #: How many batches' worth of messages a worker may hold locally beyond the one running.
    prefetch_batches: int = 4
    #: Largest accepted encoded tensor (bytes); larger payloads fail with PayloadTooLarge.
    max_payload_bytes: int = 64 * 1024 * 1024
    #: Largest decoded image the producer accepts (pixels): guards against decompression bombs.
    max_image_pixels: int = 40_000_000
    #: Seconds a result stays in the backend.
    result_ttl_s: int = 86_400
    #: Seconds a producer caches a model's published input spec.
    spec_cache_ttl_s: float = 30.0
    #: Longest a worker's fetcher blocks on an empty queue before polling every priority again.
    idle_poll_s: float = 0.02
    #: Seconds between a worker's heartbeats (model spec refresh in Redis, and a re-read of each
    #: served model's serving policy, for a rollout broadcast the worker missed).
    heartbeat_s: float = 10.0
    #: ``/live`` answers 503 once the fetch, run or housekeeping loop has made no progress for
    #: this long (a loop waiting for work makes progress; one stuck in a batch or a call does not).
    liveness_s: float = 60.0
    #: Seconds between a worker's scans of the model repository for a new highest version, which
    #: it then publishes and rolls out (Triton's poll mode); 0 turns polling off.
    repository_poll_s: float = 0.0
    #: The worker process's GIL switch interval (Python's default is 0.005 s): shorter keeps the
    #: device fed when a stage returning from it waits for a thread decoding messages.
    switch_interval_s: float = 0.0005
    #: glibc malloc in a worker: one arena, and allocations below this size (MiB) served from
    #: the heap, not mmap; 0 leaves glibc as it is. Without it every CPU forward pass maps,
    #: faults in and unmaps its activations again (see worker/tuning.py).
    malloc_mmap_threshold_mb: int = 256
    #: torch intra-op threads in a worker; 0 keeps torch's default (one per core).
    torch_threads: int = 0
    #: ``inferq worker``'s processes side by side (``--processes``), each its own Celery node.
    worker_processes: int = 1
    #: OpenMP's wait policy in a worker: "" keeps libgomp's default (spin, then sleep),
    #: "passive" (sleep at once: better for cheap models beside busy Python stages), "active".
    omp_wait_policy: str = ""
    #: Models a worker serves when none are given on the command line (comma-separated).
    models: str = ""
    #: The worker's device: ``cpu`` or ``cuda:N``.
    device: str = "cpu"
    #: ``inferq worker`` restarts its Celery worker after a device failure (1), or runs it in its
    #: own place (0) so that the failure ends the container and its orchestrator restarts it.
    supervise: bool = True
    #: The model ``submit_job.delay(img)`` goes to when the call names none; "" means the only
    #: published model, and a clear error listing them when several are published.
    default_model: str = ""
    #: Send Celery's task signals (``task_prerun``, ``task_postrun``, ``task_success``,
    #: ``task_failure``) once per request, so Celery integrations (OpenTelemetry, Sentry) see
    #: inferq's requests; off by default: it costs per request (figures in the README).
    task_signals: bool = False

    def __post_init__(self) -> None:
        if not self.result_backend:
            object.__setattr__(self, "result_backend", self.broker_url)
        _check_url("INFERQ_BROKER_URL", self.broker_url)
        _check_url("INFERQ_RESULT_BACKEND", self.result_backend)
        for name, url in self.instances.items():
            _check_url(f"INFERQ_REDIS_INSTANCES ({name})", url)
        self._check_choices()
        self._check_durations()
        self._check_counts()

    def _check_choices(self) -> None:
        if self.log_format not in _LOG_FORMATS:
            raise ConfigError(
                f"INFERQ_LOG_FORMAT must be one of {_LOG_FORMATS}, got {self.log_format!r}"
            )
        if self.log_level.upper() not in _LOG_LEVELS:
            raise ConfigError(
                f"INFERQ_LOG_LEVEL must be one of {_LOG_LEVELS}, got {self.log_level!r}"
            )
        if self.omp_wait_policy.lower() not in ("", "passive", "active"):
            raise ConfigError(
                "INFERQ_OMP_WAIT_POLICY must be passive, active or empty (libgomp's default), "
                f"got {self.omp_wait_policy!r}"
            )
        if not _DEVICE.fullmatch(self.device):
            raise ConfigError(f"INFERQ_DEVICE must be cpu or cuda:N, got {self.device!r}")

    def _check_durations(self) -> None:
        for name in (*_POSITIVE_SECONDS, "spec_cache_ttl_s"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ConfigError(f"{_described(name)} must be finite, got {value}")
            if name in _POSITIVE_SECONDS and not value > 0:
                raise ConfigError(f"{_described(name)} must be > 0, got {value}")
        if self.spec_cache_ttl_s < 0:
            raise ConfigError(f"INFERQ_SPEC_CACHE_TTL_S must be >= 0, got {self.spec_cache_ttl_s}")
        if not (math.isfinite(self.repository_poll_s) and self.repository_poll_s >= 0):
            raise ConfigError(
                f"INFERQ_REPOSITORY_POLL_S must be >= 0 (0: no polling), got {self.repository_poll_s}"
            )

    def _check_counts(self) -> None:
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(
                f"INFERQ_METRICS_PORT must be 0..65535 (0 disables it), got {self.metrics_port}"
            )
        if self.prefetch_batches < 1:
            raise ConfigError(f"INFERQ_PREFETCH_BATCHES must be >= 1, got {self.prefetch_batches}")
        if not 0 <= self.malloc_mmap_threshold_mb <= 4096:
            raise ConfigError(
                "INFERQ_MALLOC_MMAP_THRESHOLD_MB must be 0..4096 (0 leaves glibc as it is), "
                f"got {self.malloc_mmap_threshold_mb}"
            )
        if not 1 <= self.worker_processes <= 64:
            raise ConfigError(
                f"INFERQ_WORKER_PROCESSES must be from 1 to 64, got {self.worker_processes}"
            )
        if self.torch_threads < 0:
            raise ConfigError(
                f"INFERQ_TORCH_THREADS must be >= 0 (0: torch's default), got {self.torch_threads}"
            )
        if self.max_payload_bytes < 1024:
            raise ConfigError(
                f"INFERQ_MAX_PAYLOAD_BYTES must be >= 1024, got {self.max_payload_bytes}"
            )

    def __repr__(self) -> str:
        # Passwords never reach a log through a repr.
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.repr}
        fields_ = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        return (
            f"Settings(broker_url={redact_url(self.broker_url)!r}, "
            f"result_backend={redact_url(self.result_backend)!r}, "
            f"redis_instances={ {n: redact_url(u) for n, u in self.instances.items()}!r}, {fields_})"
        )

    @property
    def instances(self) -> dict[str, str]:
        """``INFERQ_REDIS_INSTANCES`` as ``{name: url}``."""
        out: dict[str, str] = {}
        for item in self.redis_instances.split(","):
            if not item.strip():
                continue
            name, sep, url = item.partition("=")
            if not sep or not name.strip() or not url.strip():
                raise ConfigError(
                    "INFERQ_REDIS_INSTANCES must be name=url pairs separated by commas, got an "
                    f"item {redact_url(item.strip())!r}"
                )
            out[name.strip()] = url.strip()
        return out

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(_env_name(f.name))
            if raw is not None and raw != "":
                kwargs[f.name] = _parse(f.name, f.type, raw)
        return cls(**kwargs)

    @property
    def model_list(self) -> list[str]:
        return [m.strip() for m in self.models.split(",") if m.strip()]

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


_BOOLEANS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
_ENV_NAMES = {"result_backend": "INFERQ_RESULT_BACKEND", "broker_url": "INFERQ_BROKER_URL"}


def _env_name(field_name: str) -> str:
    return _ENV_NAMES.get(field_name, f"INFERQ_{field_name.upper()}")


def _described(field_name: str) -> str:
    """The variable an operator sets, and the field a caller of ``Settings(...)`` passes."""
    return f"{_env_name(field_name)} ({field_name})"


def _parse(name: str, type_: Any, raw: str) -> Any:
    kind = str(type_)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw)
        if kind == "bool":
            return _BOOLEANS[raw.strip().lower()]
    except KeyError:
        raise ConfigError(
            f"{_env_name(name)} must be 1 or 0 (true or false), got {raw!r}"
        ) from None
    except ValueError:
        raise ConfigError(f"{_env_name(name)} must be a {kind}, got {raw!r}") from None
    if name == "log_level":
        return raw.upper()
    return raw


_settings: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    global _settings
    if _settings is None:
        _settings = Settings.from_env()
    return _settings


def set_settings(settings: Settings | None) -> None:
    """Replace the process-wide settings (CLI flags, tests); ``None`` re-reads the environment."""
    global _settings
    _settings = settings
