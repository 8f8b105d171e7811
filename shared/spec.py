"""A model's contract: what it takes, how inputs are prepared, what comes out, how it batches.

:class:`ModelConfig` is read from ``<repo>/<model>/config.toml`` by workers. The part a producer
needs (:class:`InputSpec`) is published by workers into Redis as JSON, so services that only submit
jobs need no copy of the model repository.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from inferq.shared.errors import ConfigError
from inferq.shared.inputs import TensorInput, check_follows, check_tensor_modes, declared_inputs
from inferq.shared.outputspec import (
    OUTPUT_KEYS,
    HandlerRef,
    Output,
    parse_handler,
    parse_output,
)
from inferq.shared.tomlcheck import (
    boolean,
    check_keys,
    choice,
    integer,
    integers,
    is_int,
    is_list,
    number,
    numbers,
    section,
    share,
    string,
)

RESIZE_MODES = ("crop", "letterbox", "stretch")
COLOR_MODES = {"RGB": 3, "L": 1}
WIRE_DTYPES = ("uint8", "float16", "float32")
#: How a request's tensor travels (shared/wire.py): the codec's raw bytes, or an encoded image.
WIRE_FORMATS = ("raw", "jpeg", "png")
#: The JPEG quality producers encode at unless a model says otherwise (README, "Wire formats":
#: the measurement that chose it).
DEFAULT_JPEG_QUALITY = 90
PRECISIONS = ("fp32", "fp16", "bf16")
PLATFORMS = ("torchscript", "onnx", "exported", "aoti")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


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
    #: Whether a request carries the resize geometry the producer applied (kwarg ``geometry``),
    #: for results mapped back to the original image (detection boxes, segmentation masks).
    geometry: bool = False
    wire: str = "raw"
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    #: Named tensor inputs ([[inputs]]); empty for the image form ([input]), which ``shape``,
    #: ``dtype``, ``color`` and ``resize`` describe.
    inputs: tuple[TensorInput, ...] = ()

    @property
    def nbytes(self) -> int:
        if self.inputs:  # the most a request carries: every sent input at its maximum
            return sum(math.prod(i.shape) * i.np_dtype.itemsize for i in self.inputs if i.sent)
        itemsize = {"uint8": 1, "float16": 2, "float32": 4}[self.dtype]
        return math.prod(self.shape) * itemsize

    def to_json(self) -> str:
        data = asdict(self)
        if not self.geometry:  # a spec without it reads as it always has, for older producers
            del data["geometry"]
        if not self.inputs:  # an image model's spec reads as it always has, for older producers
            del data["inputs"]
        return json.dumps(data)

    @classmethod
    def from_json(cls, raw: str | bytes) -> InputSpec:
        data = json.loads(raw)
        data["shape"] = tuple(data["shape"])
        data["inputs"] = tuple(TensorInput.from_dict(i) for i in data.get("inputs", ()))
        # Keys a newer worker publishes and this version does not know are left out, so that a
        # producer keeps working beside workers of a later release.
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Preprocess:
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    #: uint8 values are divided by this before mean/std.
    scale: float = 255.0


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


@dataclass(frozen=True)
class ModelConfig:
    name: str
    platform: str
    shape: tuple[int, ...]
    dtype: str = "uint8"
    color: str = "RGB"
    resize: str = "crop"
    wire: str = "raw"
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    description: str = ""
    preprocess: Preprocess = field(default_factory=Preprocess)
    output: Output = field(default_factory=Output)
    batching: Batching = field(default_factory=Batching)
    precision: Precision = field(default_factory=Precision)
    optimize: Optimize = field(default_factory=Optimize)
    validation: Validation = field(default_factory=Validation)
    rollout: Rollout = field(default_factory=Rollout)
    # Run threads computing this model's batches side by side (Triton's instance_group count).
    instances: int = 1
    handler: HandlerRef | None = None
    #: [[inputs]]: named tensor inputs instead of the one image (``shape`` is then empty).
    inputs: tuple[TensorInput, ...] = ()

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
            geometry=self.output.needs_geometry or self.handler is not None,
            wire=self.wire,
            jpeg_quality=self.jpeg_quality,
            inputs=self.inputs,
        )

    @classmethod
    def load(cls, path: Path, name: str | None = None) -> ModelConfig:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read model config {path}: {exc}") from exc
        return parse_config(name or path.parent.name, data, where=str(path))


#: The tables a config may hold, in the order ``_parse`` reads them.
SECTIONS = (
    "input",
    "preprocess",
    "output",
    "batching",
    "precision",
    "instances",
    "optimize",
    "validation",
    "rollout",
    "handler",
)

#: The keys each table may hold ("" is the top level): anything else is a typo, refused.
KNOWN_KEYS: dict[str, tuple[str, ...]] = {
    "": ("platform", "description", "inputs", *SECTIONS),
    "input": ("shape", "dtype", "color", "wire", "jpeg_quality"),
    "preprocess": ("resize", "mean", "std", "scale"),
    "output": OUTPUT_KEYS["output"],
    "batching": (
        "max_batch_size",
        "max_wait_ms",
        "preferred_batch_sizes",
        "queue_limit",
        "default_deadline_ms",
    ),
    "precision": ("mode", "channels_last"),
    "instances": ("count",),
    "optimize": ("batch_buckets", "compile", "compile_cache_dir", "cuda_graphs", "cudnn_benchmark"),
    "validation": ("min_agreement",),
    "rollout": ("canary_max_failure_rate", "canary_min_requests"),
    "handler": OUTPUT_KEYS["handler"],
}


def parse_config(name: str, data: dict[str, Any], where: str = "config") -> ModelConfig:
    """Validate a config mapping; every error names the key, what was expected and what came."""
    try:
        return _parse(name, data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}") from None


def _parse(name: str, data: dict[str, Any]) -> ModelConfig:
    check_keys(data, "", KNOWN_KEYS)
    inp, pre, out, bat, prec, inst, opt, val, roll, hand = (
        section(data, s, KNOWN_KEYS) for s in SECTIONS
    )
    tensors = declared_inputs(data, pre)
    shape, color = _input(inp) if not tensors else ((), "RGB")
    dtype = choice(inp.get("dtype", "uint8"), WIRE_DTYPES, "input.dtype") if shape else ""
    wire, quality = _wire(inp, dtype)
    config = ModelConfig(
        name=name,
        platform=choice(data.get("platform", "torchscript"), PLATFORMS, "platform"),
        shape=shape,
        dtype=dtype,
        color=color,
        resize=choice(pre.get("resize", "crop"), RESIZE_MODES, "preprocess.resize"),
        wire=wire,
        jpeg_quality=quality,
        description=string(data.get("description", ""), "description"),
        preprocess=_preprocess(pre, channels=shape[0]) if shape else Preprocess(),
        output=parse_output(out),
        batching=_batching(bat),
        precision=_precision(prec),
        instances=_instances(inst),
        optimize=_optimize(opt),
        validation=Validation(share(val.get("min_agreement", 0.99), "validation.min_agreement")),
        rollout=_rollout(roll),
        handler=parse_handler(hand),
        inputs=tensors,
    )
    _check_modes(config)
    return config


def _input(inp: dict[str, Any]) -> tuple[tuple[int, ...], str]:
    shape = inp.get("shape", [])
    if not (is_list(shape) and len(shape) == 3 and all(is_int(d) and d >= 1 for d in shape)):
        raise ConfigError(
            f"input.shape must be [C, H, W] of integers with positive sizes, got {shape!r}"
        )
    color = choice(inp.get("color", "RGB"), tuple(COLOR_MODES), "input.color")
    if COLOR_MODES[color] != shape[0]:
        raise ConfigError(
            f"input.color {color!r} has {COLOR_MODES[color]} channel(s), shape says {shape[0]}"
        )
    return tuple(shape), color


def _wire(inp: dict[str, Any], dtype: str) -> tuple[str, int]:
    wire = choice(inp.get("wire", "raw"), WIRE_FORMATS, "input.wire")
    if wire != "raw" and dtype != "uint8":
        raise ConfigError(
            f"input.wire {wire!r} carries 8-bit images: input.dtype must be 'uint8', got {dtype!r}"
        )
    quality = integer(inp.get("jpeg_quality", DEFAULT_JPEG_QUALITY), "input.jpeg_quality")
    if not 1 <= quality <= 100:
        raise ConfigError(f"input.jpeg_quality must be from 1 to 100, got {quality}")
    return wire, quality


def _preprocess(pre: dict[str, Any], channels: int) -> Preprocess:
    mean = numbers(pre.get("mean", [0.0] * channels), "preprocess.mean")
    std = numbers(pre.get("std", [1.0] * channels), "preprocess.std")
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ConfigError(
            f"preprocess.mean/std must have {channels} values (std > 0), got {mean} / {std}"
        )
    scale = number(pre.get("scale", 255.0), "preprocess.scale")
    if scale <= 0:
        raise ConfigError(f"preprocess.scale must be > 0, got {scale}")
    return Preprocess(mean=mean, std=std, scale=scale)


MAX_INSTANCES = 64


def _instances(inst: dict[str, Any]) -> int:
    count = integer(inst.get("count", 1), "instances.count")
    if not 1 <= count <= MAX_INSTANCES:
        raise ConfigError(f"instances.count must be from 1 to {MAX_INSTANCES}, got {count}")
    return count


def _batching(bat: dict[str, Any]) -> Batching:
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
    _check_batching(batching)
    return batching


def _check_batching(b: Batching) -> None:
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


def _precision(prec: dict[str, Any]) -> Precision:
    return Precision(
        mode=choice(prec.get("mode", "fp32"), PRECISIONS, "precision.mode"),
        channels_last=boolean(prec.get("channels_last", True), "precision.channels_last"),
    )


def _optimize(opt: dict[str, Any]) -> Optimize:
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


def _rollout(roll: dict[str, Any]) -> Rollout:
    least = integer(roll.get("canary_min_requests", 100), "rollout.canary_min_requests")
    if least < 1:
        raise ConfigError(f"rollout.canary_min_requests must be >= 1, got {least}")
    rate = share(roll.get("canary_max_failure_rate", 1.0), "rollout.canary_max_failure_rate")
    return Rollout(canary_max_failure_rate=rate, canary_min_requests=least)


def _check_modes(c: ModelConfig) -> None:
    """Refuse the combinations that cannot work (the device-dependent ones are refused at load,
    in ``worker/variants.py``)."""
    o, max_batch = c.optimize, c.batching.max_batch_size
    if o.batch_buckets and c.output.rows == "batch_index":
        raise ConfigError(
            'optimize.batch_buckets pads batches with rows of its own: output.rows = "batch_index" '
            "would give them rows, set one or the other"
        )
    check_follows(c.output.follows, c.inputs)
    if c.inputs:
        check_tensor_modes(c.output, o.batch_buckets, o.compile, o.cuda_graphs)
    if o.batch_buckets and o.batch_buckets[-1] < max_batch:
        raise ConfigError(
            f"optimize.batch_buckets must reach batching.max_batch_size ({max_batch}) so every "
            f"batch has a bucket, got largest {o.batch_buckets[-1]}"
        )
    graphs = o.compile != "none" or o.cuda_graphs
    if c.platform == "onnx" and (graphs or c.precision.mode != "fp32"):
        raise ConfigError(
            "platform 'onnx' runs in onnxruntime: optimize.compile, optimize.cuda_graphs and "
            f"precision.mode must stay none/false/fp32, got {o.compile!r}, {o.cuda_graphs}, "
            f"{c.precision.mode!r}"
        )
    if c.platform == "aoti" and o.compile != "none":
        raise ConfigError("platform 'aoti' is compiled already: optimize.compile must be 'none'")
    if o.cuda_graphs and o.compile == "reduce-overhead":
        raise ConfigError(
            "optimize.compile 'reduce-overhead' captures CUDA graphs itself: "
            "set optimize.cuda_graphs = false or another compile mode"
        )
    if o.cuda_graphs and not o.batch_buckets:
        raise ConfigError(
            "optimize.cuda_graphs needs optimize.batch_buckets: a graph is captured per bucket"
        )
