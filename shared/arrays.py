"""Arrays inside JSON results: the wire codec's bytes, base64, under one marker key.

A result's ``outputs`` may hold numpy arrays (raw outputs, segmentation masks). In the stored
JSON each one is the object ``{"inferq_array": "<base64 of the codec bytes>"}`` (and the meta
says ``"inferq_arrays": true`` beside its ``status``): the codec's
header (magic, version, dtype, shape; ``shared/codec.py``) then the C-order little-endian data.
No pickle: any client decodes it with base64 and a 8-byte header read (README, "Arrays in
results"), and inferq's own readers (``AsyncResult.get()``, ``gather``, ``async_get``) turn each
marker back into a numpy array with :func:`decode_outputs`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pybase64

from inferq.shared import codec
from inferq.shared.errors import InvalidInput

#: The one key of an encoded array's JSON object.
ARRAY_KEY = "inferq_array"
#: The meta key saying a result holds arrays (beside Celery's ``status``, ``result``, ...): only
#: such results are walked for them, so a classifier's result costs its readers nothing more.
ARRAYS_KEY = "inferq_arrays"
#: How a meta holding arrays begins (``shared/results.py`` writes it before the Celery keys).
ARRAYS_FLAG = b'{"inferq_arrays":true,'
#: Results are read back from a backend the worker wrote: the header is still checked against
#: the data, only the request-sized limit does not apply.
MAX_RESULT_ARRAY_BYTES = 1 << 31


def encode_array(array: np.ndarray) -> dict[str, str]:
    """The JSON object standing for ``array`` in a stored result."""
    return {ARRAY_KEY: pybase64.b64encode_as_string(codec.encode(array))}


class ArrayDefault:
    """orjson's ``default`` for one result: called only for what JSON has no form for (so a
    result without arrays costs nothing more to encode); ``used`` tells whether it met an array."""

    def __init__(self) -> None:
        self.used = False

    def __call__(self, value: Any) -> Any:
        if isinstance(value, np.ndarray):
            self.used = True
            return encode_array(value)
        if isinstance(value, np.generic):  # a numpy scalar a handler returned: its Python value
            return value.item()
        raise TypeError(
            f"result values must be JSON types or numpy arrays, got {type(value).__name__}"
        )


def decode_array(marker: dict[str, Any]) -> np.ndarray:
    """The numpy array an encoded object stands for (a writable copy)."""
    text = marker[ARRAY_KEY]
    if not isinstance(text, str):
        raise InvalidInput(f"{ARRAY_KEY} must be a base64 string, got {type(text).__name__}")
    try:
        raw = pybase64.b64decode(text, validate=True)
    except ValueError as exc:
        raise InvalidInput(f"{ARRAY_KEY} must be valid base64, got: {exc}") from None
    return codec.decode(raw, MAX_RESULT_ARRAY_BYTES).copy()


def decode_outputs(value: Any) -> Any:
    """``value`` with every encoded array object replaced by its numpy array (in place for
    dicts and lists; idempotent: arrays already decoded are left as they are). Exact type
    checks: JSON gives only dict and list containers, and every result is walked."""
    kind = type(value)
    if kind is dict:
        if len(value) == 1 and ARRAY_KEY in value:
            return decode_array(value)
        for key, item in value.items():
            if type(item) is dict or type(item) is list:
                value[key] = decode_outputs(item)
    elif kind is list:
        for i, item in enumerate(value):
            if type(item) is dict or type(item) is list:
                value[i] = decode_outputs(item)
    return value


def decode_result(result: Any) -> Any:
    """An ``InferenceResult`` dict with the arrays in its ``outputs`` decoded (other values as
    they are): only ``outputs`` can hold arrays, so timing and names are not walked. Readers call
    it for metas flagged ``ARRAYS_KEY``."""
    if isinstance(result, dict):
        outputs = result.get("outputs")
        if isinstance(outputs, (dict, list)):
            result["outputs"] = decode_outputs(outputs)
    return result
