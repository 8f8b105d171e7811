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
from inferq.shared.servingspec import (
    Batching,
    Optimize,
    Precision,
    Rollout,
    Validation,
    parse_batching,
    parse_instances,
    parse_optimize,
    parse_precision,
    parse_rollout,
)
from inferq.shared.tomlcheck import (
    check_keys,
    choice,
    integer,
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
PLATFORMS = ("torchscript", "onnx", "exported", "aoti")


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
        batching=parse_batching(bat),
        precision=parse_precision(prec),
        instances=parse_instances(inst),
        optimize=parse_optimize(opt),
        validation=Validation(share(val.get("min_agreement", 0.99), "validation.min_agreement")),
        rollout=parse_rollout(roll),
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
