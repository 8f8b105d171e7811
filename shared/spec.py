"""A model's contract: what it takes, how inputs are prepared, what comes out, how it batches.

:class:`ModelConfig` is read from ``<repo>/<model>/config.toml`` by workers. The part a producer
needs (:class:`InputSpec`) is published by workers into Redis as JSON, so services that only submit
jobs need no copy of the model repository.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import ConfigError

RESIZE_MODES = ("crop", "letterbox", "stretch")
COLOR_MODES = {"RGB": 3, "L": 1}
WIRE_DTYPES = ("uint8", "float16", "float32")
POSTPROCESS = ("topk", "raw")
PRECISIONS = ("fp32", "fp16", "bf16")
PLATFORMS = ("torchscript", "onnx")


@dataclass(frozen=True)
class InputSpec:
    """What one request's tensor must be: published for producers, checked by workers."""

    model: str
    version: int
    shape: tuple[int, ...]
    dtype: str = "uint8"
    color: str = "RGB"
    resize: str = "crop"
    queue_limit: int = 10_000
    default_deadline_ms: float = 0.0

    @property
    def nbytes(self) -> int:
        itemsize = {"uint8": 1, "float16": 2, "float32": 4}[self.dtype]
        return math.prod(self.shape) * itemsize

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> InputSpec:
        data = json.loads(raw)
        data["shape"] = tuple(data["shape"])
        return cls(**data)


@dataclass(frozen=True)
class Preprocess:
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    #: uint8 values are divided by this before mean/std.
    scale: float = 255.0


@dataclass(frozen=True)
class Output:
    postprocess: str = "topk"
    top_k: int = 5
    labels: tuple[str, ...] = ()


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
class ModelConfig:
    name: str
    platform: str
    shape: tuple[int, ...]
    dtype: str = "uint8"
    color: str = "RGB"
    resize: str = "crop"
    description: str = ""
    preprocess: Preprocess = field(default_factory=Preprocess)
    output: Output = field(default_factory=Output)
    batching: Batching = field(default_factory=Batching)
    precision: Precision = field(default_factory=Precision)

    def input_spec(self, version: int) -> InputSpec:
        return InputSpec(
            model=self.name,
            version=version,
            shape=self.shape,
            dtype=self.dtype,
            color=self.color,
            resize=self.resize,
            queue_limit=self.batching.queue_limit,
            default_deadline_ms=self.batching.default_deadline_ms,
        )

    @classmethod
    def load(cls, path: Path) -> ModelConfig:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read model config {path}: {exc}") from exc
        return parse_config(path.parent.name, data, where=str(path))


def _section(data: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{name}] must be a table, got {type(value).__name__}")
    return value


def _choice(value: Any, allowed: tuple[str, ...], what: str, where: str) -> str:
    if value not in allowed:
        raise ConfigError(f"{where}: {what} must be one of {allowed}, got {value!r}")
    return str(value)


def parse_config(name: str, data: dict[str, Any], where: str = "config") -> ModelConfig:
    """Validate a config mapping; every error names the key, what was expected and what came."""
    inp = _section(data, "input", where)
    pre = _section(data, "preprocess", where)
    out = _section(data, "output", where)
    bat = _section(data, "batching", where)
    prec = _section(data, "precision", where)
    shape = tuple(int(d) for d in inp.get("shape", ()))
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(
            f"{where}: input.shape must be [C, H, W] with positive sizes, got {list(shape)}"
        )
    color = _choice(inp.get("color", "RGB"), tuple(COLOR_MODES), "input.color", where)
    if COLOR_MODES[color] != shape[0]:
        raise ConfigError(
            f"{where}: input.color {color!r} has {COLOR_MODES[color]} channel(s), shape says {shape[0]}"
        )
    channels = shape[0]
    mean = tuple(float(v) for v in pre.get("mean", [0.0] * channels))
    std = tuple(float(v) for v in pre.get("std", [1.0] * channels))
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ConfigError(
            f"{where}: preprocess.mean/std must have {channels} values (std > 0), got {mean} / {std}"
        )
    batching = Batching(
        max_batch_size=int(bat.get("max_batch_size", 32)),
        max_wait_ms=float(bat.get("max_wait_ms", 5.0)),
        preferred_batch_sizes=tuple(sorted(int(v) for v in bat.get("preferred_batch_sizes", ()))),
        queue_limit=int(bat.get("queue_limit", 10_000)),
        default_deadline_ms=float(bat.get("default_deadline_ms", 0.0)),
    )
    _check_batching(batching, where)
    output = Output(
        postprocess=_choice(
            out.get("postprocess", "topk"), POSTPROCESS, "output.postprocess", where
        ),
        top_k=int(out.get("top_k", 5)),
        labels=tuple(str(v) for v in out.get("labels", ())),
    )
    if output.top_k < 1:
        raise ConfigError(f"{where}: output.top_k must be >= 1, got {output.top_k}")
    return ModelConfig(
        name=name,
        platform=_choice(data.get("platform", "torchscript"), PLATFORMS, "platform", where),
        shape=shape,
        dtype=_choice(inp.get("dtype", "uint8"), WIRE_DTYPES, "input.dtype", where),
        color=color,
        resize=_choice(pre.get("resize", "crop"), RESIZE_MODES, "preprocess.resize", where),
        description=str(data.get("description", "")),
        preprocess=Preprocess(mean=mean, std=std, scale=float(pre.get("scale", 255.0))),
        output=output,
        batching=batching,
        precision=Precision(
            mode=_choice(prec.get("mode", "fp32"), PRECISIONS, "precision.mode", where),
            channels_last=bool(prec.get("channels_last", True)),
        ),
    )


def _check_batching(b: Batching, where: str) -> None:
    if b.max_batch_size < 1:
        raise ConfigError(f"{where}: batching.max_batch_size must be >= 1, got {b.max_batch_size}")
    if b.max_wait_ms < 0:
        raise ConfigError(f"{where}: batching.max_wait_ms must be >= 0, got {b.max_wait_ms}")
    bad = [s for s in b.preferred_batch_sizes if not 1 <= s <= b.max_batch_size]
    if bad:
        raise ConfigError(
            f"{where}: batching.preferred_batch_sizes must lie in 1..{b.max_batch_size}, got {bad}"
        )
    if b.queue_limit < 1:
        raise ConfigError(f"{where}: batching.queue_limit must be >= 1, got {b.queue_limit}")
