"""Everything the worker reads from a kombu Redis envelope to compute it (the producer's side
builds them in ``producer/envelope.py``; what the broker's bookkeeping reads is in
``worker/delivery.py``).

* :func:`decode_message`: an :class:`InferenceRequest`, or a typed :class:`Rejection`.
  Everything a message carries is checked here, in the fetcher thread, before it can reach a
  batch: the task name, the serializer (pickle is refused and never deserialized), the tensor
  header against the model's spec, finite values for float tensors, and the deadline.
"""

from __future__ import annotations

import binascii
import functools
import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgpack
import numpy as np
import orjson
import pybase64

from inferq.shared import codec, keys
from inferq.shared.errors import InferqError, InvalidInput, ModelUnavailable, PayloadTooLarge
from inferq.shared.geometry import Geometry
from inferq.shared.inputs import decode_request
from inferq.shared.spec import InputSpec
from inferq.shared.trace import TraceContext
from inferq.shared.wire import EncodedImage, format_of

_PICKLE = "application/x-python-serialize"
_MSGPACK = ("application/x-msgpack", "application/msgpack")
_JSON = ("application/json",)


@dataclass(slots=True)
class InferenceRequest:
    """One request between the broker and its result (mutable only in its timing marks)."""

    task_id: str
    tag: str
    model: str
    array: np.ndarray | EncodedImage  # encoded: decoded in the decode stage (worker/decode.py)
    submitted_at: float  # producer wall clock, seconds since the epoch
    preprocess_ms: float
    received_at: float  # worker monotonic clock
    received_wall: float
    deadline: float | None  # wall clock; None: no deadline
    eta: float | None
    priority: int
    redelivered: bool = False
    trace: TraceContext | None = None  # W3C trace context from the message headers
    geometry: Geometry | None = None  # how the producer resized the original (None: it did not say)
    #: An [[inputs]] model's sent inputs in declared order (``array`` is the first of them).
    tensors: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class Rejection:
    """A message that ends in a failure without being computed (``task_id`` None: unanswerable)."""

    tag: str
    task_id: str | None
    error: InferqError


Decoded = InferenceRequest | Rejection


def decode_message(
    tag: str,
    raw: bytes,
    spec: InputSpec,
    *,
    max_bytes: int,
    now: float | None = None,
    wall: float | None = None,
) -> Decoded:
    """Turn one raw envelope from ``spec.model``'s queue into a request or a rejection."""
    split = _split_envelope(raw)
    if split is not None:
        decoded = _decode_envelope(tag, split, spec, max_bytes, now, wall)
        if isinstance(decoded, InferenceRequest):
            return decoded
        # A rejection comes from the full parse below, so that its error reads as it always has.
    return _decode_envelope(tag, raw, spec, max_bytes, now, wall)


def _decode_envelope(
    tag: str,
    source: bytes | dict[str, Any],
    spec: InputSpec,
    max_bytes: int,
    now: float | None,
    wall: float | None,
) -> Decoded:
    task_id: str | None = None
    try:
        envelope = source if isinstance(source, dict) else _load_envelope(source)
        headers = _table(envelope.get("headers"), "headers")
        task_id = _task_id(headers, envelope)
        return _decode(tag, task_id, envelope, headers, spec, max_bytes, now, wall)
    except InferqError as exc:
        return Rejection(tag, task_id, exc)
    except Exception as exc:  # a malformed message must end as a rejection, never kill the fetcher
        error = InvalidInput(
            f"message must be a Celery protocol 2 envelope, got one that fails decoding: {type(exc).__name__}: {exc}"
        )
        return Rejection(tag, task_id, error)


_BODY_FIRST = b'{"body":"'


def _split_envelope(raw: bytes) -> dict[str, Any] | None:
    """The envelope as kombu lays it out (a base64 body first), its body a view of ``raw`` and
    only what follows the body parsed: the body is most of the bytes, and its JSON string needs
    no parsing when it holds no escape. None for any other layout (the full parse reads it)."""
    start = len(_BODY_FIRST)
    if type(raw) is not bytes or not raw.startswith(_BODY_FIRST):
        return None
    end = raw.find(b'"', start)
    if end < 0 or raw[end + 1 : end + 2] != b"," or raw.find(b"\\", start, end) >= 0:
        return None
    try:
        rest = orjson.loads(b"{" + raw[end + 2 :])
    except orjson.JSONDecodeError:
        return None
    props = rest.get("properties") if isinstance(rest, dict) else None
    if "body" in rest or not isinstance(props, dict) or props.get("body_encoding") != "base64":
        return None
    # Valid base64 (checked where it is decoded) is ASCII without quotes or control characters:
    # valid JSON string content, so the envelope is the same document the full parse reads.
    rest["body"] = memoryview(raw)[start:end]
    return rest


def _table(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"message {what} must be an object, got {type(value).__name__}")
    return value


def _decode(
    tag: str,
    task_id: str,
    envelope: dict[str, Any],
    headers: dict[str, Any],
    spec: InputSpec,
    max_bytes: int,
    now: float | None,
    wall: float | None,
) -> InferenceRequest:
    if headers.get("task") != keys.TASK_NAME:
        raise InvalidInput(f"task must be {keys.TASK_NAME!r}, got {headers.get('task')!r}")
    props = _table(envelope.get("properties"), "properties")
    args, kwargs = _load_body(envelope, props, max_bytes)
    _check_target(kwargs, spec)
    array: np.ndarray | EncodedImage
    if spec.inputs:
        tensors = decode_request(_first(args, kwargs), spec.inputs, spec.model, max_bytes)
        array = tensors[0]
    else:
        tensors, array = (), _decode_tensor(args, kwargs, spec, max_bytes)
    if wall is None:
        wall = time.time()
    submitted = _float(kwargs.get("submitted_at"), wall)
    expires = headers.get("expires")
    deadline = None if expires is None else _timestamp(expires)
    if deadline is None and spec.default_deadline_ms > 0:
        deadline = submitted + spec.default_deadline_ms / 1000.0
    eta = headers.get("eta")
    info = _table(props.get("delivery_info"), "properties.delivery_info")
    redelivered = headers.get("redelivered") or info.get("redelivered")
    geometry = kwargs.get("geometry")
    return InferenceRequest(
        task_id,
        tag,
        spec.model,
        array,
        submitted,
        _float(kwargs.get("preprocess_ms"), 0.0),
        time.monotonic() if now is None else now,
        wall,
        deadline,
        None if eta is None else _timestamp(eta),
        _priority(props.get("priority")),
        bool(redelivered),
        TraceContext.from_headers(headers),
        None if geometry is None else Geometry.from_wire(geometry),
        tensors,
    )


def _load_envelope(raw: bytes) -> dict[str, Any]:
    try:
        envelope = orjson.loads(raw)
    except (orjson.JSONDecodeError, ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(
            f"message must be a kombu JSON envelope, got undecodable bytes: {exc}"
        ) from None
    if not isinstance(envelope, dict) or "body" not in envelope:
        raise InvalidInput(
            f"message must be a kombu envelope with a body, got {type(envelope).__name__}"
        )
    return envelope


def _task_id(headers: dict[str, Any], envelope: dict[str, Any]) -> str:
    props = envelope.get("properties")
    task_id = headers.get("id") or (
        props.get("correlation_id") if isinstance(props, dict) else None
    )
    if not isinstance(task_id, str) or not task_id:
        raise InvalidInput("message must carry a Celery task id (protocol 2 'id' header), got none")
    return task_id


def _load_body(
    envelope: dict[str, Any], props: dict[str, Any], max_bytes: int
) -> tuple[list[Any], dict[str, Any]]:
    content_type = envelope.get("content-type")
    if content_type == _PICKLE:
        raise InvalidInput(
            "message serializer must be msgpack or json, got pickle: pickle-serialized messages are "
            "refused and never deserialized"
        )
    body = envelope["body"]
    if not isinstance(body, (str, bytes, memoryview)):  # a view: from _split_envelope
        raise InvalidInput(f"message body must be a string, got {type(body).__name__}")
    if props.get("body_encoding") == "base64":
        if len(body) > max_bytes * 4 // 3 + 4096:
            raise InvalidInput(
                f"message body must be at most ~{max_bytes} bytes, got {len(body) * 3 // 4}"
            )
        try:
            body = pybase64.b64decode(body, validate=True)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise InvalidInput(f"message body must be valid base64, got: {exc}") from None
    decoded = _deserialize(content_type, body)
    if not (isinstance(decoded, (list, tuple)) and len(decoded) >= 2):
        raise InvalidInput("task body must be [args, kwargs, embed] (Celery protocol 2)")
    args, kwargs = decoded[0], decoded[1]
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        raise InvalidInput(
            f"task body must hold a list and a dict, got {type(args).__name__}, {type(kwargs).__name__}"
        )
    return list(args), kwargs


def _deserialize(content_type: Any, body: Any) -> Any:
    try:
        if content_type in _MSGPACK:
            return msgpack.unpackb(body, raw=False, strict_map_key=False)
        if content_type in _JSON:
            return json.loads(body)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise InvalidInput(f"task body must be valid {content_type}, got: {exc}") from None
    raise InvalidInput(
        f"message serializer must be msgpack or json, got content-type {content_type!r}"
    )


def _check_target(kwargs: dict[str, Any], spec: InputSpec) -> None:
    model = kwargs.get("model", spec.model)
    if model != spec.model:
        raise InvalidInput(
            f"model must be {spec.model!r} on queue {keys.queue_name(spec.model)}, got {model!r}"
        )
    version = kwargs.get("version")
    if version is not None and version != spec.version:
        raise ModelUnavailable(
            f"model {spec.model!r} version must be one this worker serves ({spec.version}), got {version!r}"
        )


def _first(args: list[Any], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs.get("tensor")


def _decode_tensor(
    args: list[Any], kwargs: dict[str, Any], spec: InputSpec, max_bytes: int
) -> np.ndarray | EncodedImage:
    payload = args[0] if args else kwargs.get("tensor")
    if isinstance(payload, str):  # JSON clients send the codec bytes base64-encoded
        try:
            payload = pybase64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(
                f"tensor string must be base64 of the codec bytes, got: {exc}"
            ) from None
    if not isinstance(payload, (bytes, bytearray)):
        raise InvalidInput(
            f"first argument must be the encoded tensor (bytes), got {type(payload).__name__}"
        )
    if type(payload) is not bytes:
        payload = bytes(payload)
    expected = _spec_header(spec.dtype, spec.shape)
    if (
        expected is not None
        and len(payload) == expected.size <= max_bytes
        and payload.startswith(expected.prefix)
    ):
        # Byte for byte the header the spec's tensors carry: every check read_header makes has
        # passed once for the spec, so it is not repeated for each message.
        array = codec.array_of(payload, expected.header)
    elif spec.wire != "raw" and (encoded := _encoded(payload, max_bytes)) is not None:
        return encoded  # checked against the spec where it is decoded, in the decode stage
    else:
        array = _checked_array(payload, spec, max_bytes)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"tensor for model {spec.model!r} must be finite, got NaN or Inf values")
    return array


@dataclass(frozen=True, slots=True)
class _SpecHeader:
    prefix: bytes  # the codec header of a tensor of the spec's dtype and shape
    header: codec.TensorHeader
    size: int  # header and data


@functools.cache
def _spec_header(dtype: str, shape: tuple[int, ...]) -> _SpecHeader | None:
    """The exact header of a well-formed tensor for a spec, computed once per spec."""
    np_dtype = codec.BY_NAME.get(dtype)
    if np_dtype is None:
        return None
    try:
        prefix = codec.header_for(np_dtype, shape)
    except InvalidInput:  # a shape the codec cannot carry: every message takes the full check
        return None
    header = codec.TensorHeader(np_dtype, shape, len(prefix))
    return _SpecHeader(prefix, header, len(prefix) + header.nbytes)


def _encoded(payload: bytes, max_bytes: int) -> EncodedImage | None:
    """``payload`` as an encoded image, if it is one (a model with an image wire takes both)."""
    fmt = format_of(payload)
    if fmt is None:
        return None
    if len(payload) > max_bytes:
        raise PayloadTooLarge(f"payload must be at most {max_bytes} bytes, got {len(payload)}")
    return EncodedImage(payload, fmt)


def _checked_array(payload: bytes, spec: InputSpec, max_bytes: int) -> np.ndarray:
    if (fmt := format_of(payload)) is not None:  # only here, past the fast path: no cost to it
        raise InvalidInput(
            f"model {spec.model!r} takes tensors in the codec (input.wire {spec.wire!r}), "
            f"got a {fmt.upper()} image of {len(payload)} bytes"
        )
    header = codec.read_header(payload, max_bytes)
    if header.dtype != codec.BY_NAME.get(spec.dtype) or header.shape != spec.shape:
        raise InvalidInput(
            f"tensor must be {spec.dtype}{list(spec.shape)} for model {spec.model!r}, "
            f"got {header.dtype.name}{list(header.shape)}"
        )
    return codec.array_of(payload, header)


def _priority(value: Any) -> int:
    if type(value) is int:
        return keys.clamp_priority(value)
    if value is None:
        return keys.HIGHEST_PRIORITY  # kombu's default for a message without one
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(
            f"message priority must be an integer {keys.HIGHEST_PRIORITY}..{keys.LOWEST_PRIORITY}, "
            f"got {value!r}"
        )
    return keys.clamp_priority(value)


def _float(value: Any, default: float) -> float:
    if type(value) is float:
        return value
    try:
        return float(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def _timestamp(value: Any) -> float | None:
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        raise InvalidInput(f"expires/eta must be an ISO 8601 time, got {value!r}") from None
