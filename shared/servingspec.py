"""A model config's serving tables: ``[batching]``, ``[precision]``, ``[instances]``,
``[optimize]``, ``[validation]`` and ``[rollout]`` (``shared/spec.py`` reads the rest and
re-exports these)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inferq.shared.errors import ConfigError
from inferq.shared.tomlcheck import boolean, choice, integer, integers, number, share, string

PRECISIONS = ("fp32", "fp16", "bf16")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class Batching:
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    preferred_batch_sizes: tuple[int, ...] = ()
    queue_limit: int = 10_000
    default_deadline_ms: float = 0.0


@dataclass(frozen=True)
class Precision:
    mode: str = "fp32"
    channels_last: bool = True


@dataclass(frozen=True)
class Optimize:
    """Runtime options ([optimize]); ``worker/variants.py`` applies them around the handler."""

    #: A batch is padded up to the next of these, so compiled and captured graphs see fixed shapes.
    batch_buckets: tuple[int, ...] = ()
    compile: str = "none"
    #: Inductor's FX graph cache: a restart reuses what an earlier start compiled ("": torch's own).
    compile_cache_dir: str = ""
    cuda_graphs: bool = False
    cudnn_benchmark: bool = False

    @property
    def active(self) -> bool:
        return self != Optimize()


@dataclass(frozen=True)
class Validation:
    """[validation]: what a new version must pass before it takes requests (worker/versions.py)."""

    #: Share of ``validation.npz``'s inputs whose top-1 must match the file's expected ``top1``.
    min_agreement: float = 0.99


@dataclass(frozen=True)
class Rollout:
    """[rollout]: the canary guard. A canary whose server-side failures exceed
    ``canary_max_failure_rate`` over its first ``canary_min_requests`` requests is rolled back;
    1.0 turns the guard off."""

    canary_max_failure_rate: float = 1.0
    canary_min_requests: int = 100


MAX_INSTANCES = 64


def parse_instances(inst: dict[str, Any]) -> int:
    count = integer(inst.get("count", 1), "instances.count")
    if not 1 <= count <= MAX_INSTANCES:
        raise ConfigError(f"instances.count must be from 1 to {MAX_INSTANCES}, got {count}")
    return count


def parse_batching(bat: dict[str, Any]) -> Batching:
    preferred = integers(bat.get("preferred_batch_sizes", []), "batching.preferred_batch_sizes")
    batching = Batching(
        max_batch_size=integer(bat.get("max_batch_size", 32), "batching.max_batch_size"),
        max_wait_ms=number(bat.get("max_wait_ms", 5.0), "batching.max_wait_ms"),
        preferred_batch_sizes=tuple(sorted(preferred)),
        queue_limit=integer(bat.get("queue_limit", 10_000), "batching.queue_limit"),
        default_deadline_ms=number(
            bat.get("default_deadline_ms", 0.0), "batching.default_deadline_ms"
        ),
    )
    _checkbatching(batching)
    return batching


def _checkbatching(b: Batching) -> None:
    if b.max_batch_size < 1:
        raise ConfigError(f"batching.max_batch_size must be >= 1, got {b.max_batch_size}")
    if b.max_wait_ms < 0:
        raise ConfigError(f"batching.max_wait_ms must be >= 0, got {b.max_wait_ms}")
    bad = [s for s in b.preferred_batch_sizes if not 1 <= s <= b.max_batch_size]
    if bad:
        raise ConfigError(
            f"batching.preferred_batch_sizes must lie in 1..{b.max_batch_size}, got {bad}"
        )
    if b.queue_limit < 1:
        raise ConfigError(f"batching.queue_limit must be >= 1, got {b.queue_limit}")
    if b.default_deadline_ms < 0:
        raise ConfigError(
            f"batching.default_deadline_ms must be >= 0 (0: no deadline), got {b.default_deadline_ms}"
        )


def parse_precision(prec: dict[str, Any]) -> Precision:
    return Precision(
        mode=choice(prec.get("mode", "fp32"), PRECISIONS, "precision.mode"),
        channels_last=boolean(prec.get("channels_last", True), "precision.channels_last"),
    )


def parse_optimize(opt: dict[str, Any]) -> Optimize:
    buckets = integers(opt.get("batch_buckets", []), "optimize.batch_buckets")
    if any(b < 1 for b in buckets) or len(set(buckets)) != len(buckets):
        raise ConfigError(
            f"optimize.batch_buckets must be distinct sizes >= 1, got {list(buckets)}"
        )
    return Optimize(
        batch_buckets=tuple(sorted(buckets)),
        compile=choice(opt.get("compile", "none"), COMPILE_MODES, "optimize.compile"),
        compile_cache_dir=string(opt.get("compile_cache_dir", ""), "optimize.compile_cache_dir"),
        cuda_graphs=boolean(opt.get("cuda_graphs", False), "optimize.cuda_graphs"),
        cudnn_benchmark=boolean(opt.get("cudnn_benchmark", False), "optimize.cudnn_benchmark"),
    )


def parse_rollout(roll: dict[str, Any]) -> Rollout:
    least = integer(roll.get("canary_min_requests", 100), "rollout.canary_min_requests")
    if least < 1:
        raise ConfigError(f"rollout.canary_min_requests must be >= 1, got {least}")
    rate = share(roll.get("canary_max_failure_rate", 1.0), "rollout.canary_max_failure_rate")
    return Rollout(canary_max_failure_rate=rate, canary_min_requests=least)
