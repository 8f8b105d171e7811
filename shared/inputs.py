"""A model's named tensor inputs (``[[inputs]]`` in config.toml) and how a request carries them.

A model declares each input's name, dtype and per-request shape; at most one dimension may vary
per request (a sequence length, its declared size the maximum), padded per batch on the worker
with ``pad_value`` to the batch's longest or to the next of ``buckets``. An input with
``mask_of`` is never sent: the worker generates it from the named input's lengths (1 for a real
position, 0 for padding), of shape ``[padded length]`` per request.

On the wire (README, "Several inputs"), the task's first argument is a map ``{name: codec
bytes}`` holding every sent input (a JSON client base64-encodes each value); a model with one
sent input also takes the codec bytes alone. Both the producer (:func:`encode_request`) and the
worker (:func:`decode_request`) check every tensor against the declaration with the same
function, so a foreign client's mistake reads as a producer's would.
"""

from __future__ import annotations

import binascii
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pybase64

from inferq.shared import codec
from inferq.shared.errors import ConfigError, InvalidInput
from inferq.shared.tomlcheck import check_keys, choice, integer, integers, is_int, is_list, string

TENSOR_DTYPES = ("uint8", "int32", "int64", "bool", "float16", "float32")
_KEYS = {"inputs": ("name", "dtype", "shape", "variable", "pad_value", "buckets", "mask_of")}


@dataclass(frozen=True)
class TensorInput:
    """One declared input; ``shape`` is per request, its ``variable`` dimension the maximum."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    variable: int | None = None
    pad_value: float = 0
    buckets: tuple[int, ...] = ()
    mask_of: str = ""

    @property
    def sent(self) -> bool:
        """Whether a request carries it (a mask is generated on the worker)."""
        return not self.mask_of

    @functools.cached_property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def max_length(self) -> int:
        return self.shape[self.variable] if self.variable is not None else 0

    def describe(self) -> str:
        dims = [f"<={d}" if i == self.variable else str(d) for i, d in enumerate(self.shape)]
        return f"{self.dtype}[{', '.join(dims)}]"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorInput:
        return cls(**{**data, "shape": tuple(data["shape"]), "buckets": tuple(data["buckets"])})


# -- config ---------------------------------------------------------------------------------------


def declared_inputs(data: dict[str, Any], pre: dict[str, Any]) -> tuple[TensorInput, ...]:
    """[[inputs]] when declared. Normalisation and resizing are for the image form alone:
    token ids must reach the model as they were sent."""
    if "inputs" not in data:
        return ()
    if "input" in data:
        raise ConfigError("a config declares [input] (one image) or [[inputs]], got both")
    if pre:
        raise ConfigError(
            f"[preprocess] applies to an [input] image only, got {sorted(pre)} with [[inputs]]"
        )
    return parse_inputs(data["inputs"])


def parse_inputs(value: Any) -> tuple[TensorInput, ...]:
    """``[[inputs]]`` as declared; every refusal names the input, the key and what came."""
    if not (is_list(value) and value and all(isinstance(t, dict) for t in value)):
        raise ConfigError(f"[[inputs]] must be one or more tables, got {value!r}")
    parsed: list[TensorInput] = []
    for i, table in enumerate(value):
        check_keys(table, "inputs", _KEYS)
        name = string(table.get("name", ""), f"inputs[{i}].name")
        if not name or name in {p.name for p in parsed}:
            raise ConfigError(f"inputs[{i}].name must be a new non-empty name, got {name!r}")
        parsed.append(_one(table, f"inputs.{name}"))
    inputs = tuple(_with_masks(parsed))
    if not any(i.sent for i in inputs):
        raise ConfigError("[[inputs]] must declare at least one input that requests carry")
    return inputs


def _one(table: dict[str, Any], where: str) -> TensorInput:
    mask_of = string(table.get("mask_of", ""), f"{where}.mask_of")
    # A mask is int64 unless declared otherwise (what attention masks usually are).
    dtype = choice(table.get("dtype", "int64" if mask_of else ""), TENSOR_DTYPES, f"{where}.dtype")
    if mask_of:
        extra = sorted(set(table) - {"name", "dtype", "mask_of"})
        if extra:
            raise ConfigError(
                f"{where} is a mask_of input: its shape comes from {mask_of!r}, "
                f"so it takes no {', '.join(extra)}"
            )
        return TensorInput(table["name"], dtype, (), mask_of=mask_of)
    shape = table.get("shape", [])
    if not (
        is_list(shape)
        and 1 <= len(shape) <= codec.MAX_NDIM
        and all(is_int(d) and d >= 1 for d in shape)
    ):
        raise ConfigError(
            f"{where}.shape must be 1..{codec.MAX_NDIM} positive integers, got {shape!r}"
        )
    variable = _variable(table.get("variable"), len(shape), where)
    return TensorInput(
        name=table["name"],
        dtype=dtype,
        shape=tuple(shape),
        variable=variable,
        pad_value=_pad_value(table.get("pad_value", 0), dtype, where),
        buckets=_buckets(table.get("buckets", []), variable, shape, where),
    )


def _variable(value: Any, ndim: int, where: str) -> int | None:
    if value is None:
        return None
    index = integer(value, f"{where}.variable")
    if not 0 <= index < ndim:
        raise ConfigError(f"{where}.variable must be a dimension index 0..{ndim - 1}, got {index}")
    return index


def _pad_value(value: Any, dtype: str, where: str) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and dtype != "float16" and dtype != "float32":
        info = np.iinfo(dtype) if dtype != "bool" else None
        ok = float(value).is_integer() and (
            value in (0, 1) if info is None else info.min <= value <= info.max
        )
    if not ok:
        raise ConfigError(f"{where}.pad_value must be a value of {dtype}, got {value!r}")
    return value


def _buckets(value: Any, variable: int | None, shape: list[int], where: str) -> tuple[int, ...]:
    buckets = integers(value, f"{where}.buckets")
    if buckets and variable is None:
        raise ConfigError(f"{where}.buckets needs a variable dimension (set {where}.variable)")
    top = shape[variable] if variable is not None else 0
    if any(not 1 <= b <= top for b in buckets) or len(set(buckets)) != len(buckets):
        raise ConfigError(f"{where}.buckets must be distinct lengths 1..{top}, got {list(buckets)}")
    return tuple(sorted(buckets))


def _with_masks(parsed: list[TensorInput]) -> list[TensorInput]:
    """Each mask_of input given the shape of its source's variable dimension."""
    by_name = {p.name: p for p in parsed}
    out = []
    for p in parsed:
        if p.mask_of:
            source = by_name.get(p.mask_of)
            if source is None or not source.sent or source.variable is None:
                raise ConfigError(
                    f"inputs.{p.name}.mask_of must name a sent input with a variable "
                    f"dimension, got {p.mask_of!r}"
                )
            p = TensorInput(p.name, p.dtype, (source.max_length,), 0, 0, (), p.mask_of)
        out.append(p)
    return out


def check_follows(follows: str, inputs: tuple[TensorInput, ...]) -> None:
    """``[output] follows``: the outputs are cut back along this input's variable dimension."""
    if not follows:
        return
    named = {i.name: i for i in inputs}.get(follows)
    if named is None or not named.sent or named.variable is None:
        variable = [i.name for i in inputs if i.sent and i.variable is not None]
        raise ConfigError(
            f"output.follows must name an input with a variable dimension {variable}, "
            f"got {follows!r}"
        )


def check_tensor_modes(
    output: Any, batch_buckets: tuple[int, ...], compile: str, graphs: bool
) -> None:
    """What an [[inputs]] model cannot combine (yet): [optimize]'s batch padding, compiling and
    graph capture take one image tensor; a top-k over cut-back rows means nothing."""
    if batch_buckets or compile != "none" or graphs:
        raise ConfigError(
            "[optimize] batch_buckets, compile and cuda_graphs take an [input] image model; "
            f"got them with [[inputs]] ({list(batch_buckets)}, {compile!r}, {graphs})"
        )
    if output.follows and output.postprocess != "raw":
        raise ConfigError(
            f"output.follows cuts each request's output rows: it needs postprocess 'raw', "
            f"got {output.postprocess!r}"
        )


# -- one request ------------------------------------------------------------------------------------


def sent_inputs(inputs: tuple[TensorInput, ...]) -> tuple[TensorInput, ...]:
    return tuple(i for i in inputs if i.sent)


def check_array(array: np.ndarray, inp: TensorInput, model: str) -> None:
    """Raise InvalidInput unless ``array`` is a valid value of ``inp`` (dtype exact)."""
    if array.dtype != inp.np_dtype or not _fits(array.shape, inp):
        raise InvalidInput(
            f"input {inp.name!r} of model {model!r} must be {inp.describe()}, got "
            f"{array.dtype.name}{list(array.shape)}"
        )
    if inp.dtype == "bool" and array.size and array.view(np.uint8).max() > 1:
        raise InvalidInput(f"input {inp.name!r} of model {model!r} must hold bools (bytes 0/1)")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"input {inp.name!r} of model {model!r} must be finite, got NaN or Inf")


def _fits(shape: tuple[int, ...], inp: TensorInput) -> bool:
    v, want = inp.variable, inp.shape
    if v is None or len(shape) != len(want):
        return shape == want
    return 1 <= shape[v] <= want[v] and shape[:v] == want[:v] and shape[v + 1 :] == want[v + 1 :]


def encode_request(value: Any, inputs: tuple[TensorInput, ...], model: str) -> dict[str, bytes]:
    """The producer's side: one array (one sent input) or ``{name: array}`` as the wire map."""
    sent = sent_inputs(inputs)
    named = _named(value, sent, model)
    return {inp.name: codec.encode(_coerce(named[inp.name], inp, model)) for inp in sent}


def _named(value: Any, sent: tuple[TensorInput, ...], model: str) -> Mapping[str, Any]:
    names = [i.name for i in sent]
    if not isinstance(value, Mapping):
        if len(sent) == 1:
            return {sent[0].name: value}
        raise InvalidInput(
            f"model {model!r} takes several inputs: pass a dict {{{', '.join(names)}}}, "
            f"got {type(value).__name__}"
        )
    missing = [n for n in names if n not in value]
    unknown = sorted(str(k) for k in value if k not in names)
    if missing or unknown:
        raise InvalidInput(
            f"model {model!r} takes the inputs {names} (masks are generated), got "
            f"{sorted(map(str, value))}: missing {missing}, unknown {unknown}"
        )
    return value


def _coerce(value: Any, inp: TensorInput, model: str) -> np.ndarray:
    """``value`` as ``inp``'s dtype when no value can change (ints that fit, floats to floats)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
    array = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
    want = np.dtype(inp.dtype)
    if array.dtype != want and _safe(array, want):
        array = array.astype(want)
    check_array(array, inp, model)
    return array


def _safe(array: np.ndarray, want: np.dtype) -> bool:
    if np.can_cast(array.dtype, want, "safe"):
        return True
    if array.dtype.kind in "iu" and want.kind in "iu":  # e.g. a list's int64 for an int32 input
        info = np.iinfo(want)
        return not array.size or (info.min <= array.min() and array.max() <= info.max)
    return array.dtype.kind == "f" and want.kind == "f"


def decode_request(
    arg: Any, inputs: tuple[TensorInput, ...], model: str, max_bytes: int
) -> tuple[np.ndarray, ...]:
    """The worker's side: the sent inputs in declared order, each checked; InvalidInput else."""
    sent = sent_inputs(inputs)
    if not isinstance(arg, dict):
        if len(sent) != 1:
            raise InvalidInput(
                f"model {model!r} takes a map {{name: codec bytes}} of its inputs "
                f"{[i.name for i in sent]} as first argument, got {type(arg).__name__}"
            )
        arg = {sent[0].name: arg}
    if len(arg) != len(sent) or any(i.name not in arg for i in sent):
        _named(arg, sent, model)  # raises, naming what is missing or unknown
    arrays = []
    for inp in sent:
        array = codec.decode(_payload(arg[inp.name], inp), max_bytes)
        check_array(array, inp, model)
        arrays.append(array)
    return tuple(arrays)


def _payload(value: Any, inp: TensorInput) -> bytes:
    if isinstance(value, str):  # JSON clients send the codec bytes base64-encoded
        try:
            return pybase64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(f"input {inp.name!r} must be base64 of codec bytes: {exc}") from None
    if not isinstance(value, bytes | bytearray):
        raise InvalidInput(f"input {inp.name!r} must be codec bytes, got {type(value).__name__}")
    return bytes(value)


def sample_request(inputs: tuple[TensorInput, ...], rng: np.random.Generator) -> dict[str, Any]:
    """A request of made-up values (bench and load tools): each variable dimension a length
    drawn from 1..its maximum, integers 0 or 1 (valid token ids for any vocabulary), floats
    from a standard normal."""
    request: dict[str, Any] = {}
    for inp in sent_inputs(inputs):
        shape = list(inp.shape)
        if inp.variable is not None:
            shape[inp.variable] = int(rng.integers(1, inp.max_length + 1))
        kind = np.dtype(inp.dtype).kind
        values = rng.standard_normal(shape) if kind == "f" else rng.integers(0, 2, shape)
        request[inp.name] = values.astype(inp.dtype)
    return request
