"""shared/arrays.py: arrays inside JSON results, as the wire codec; and the README's decoder for
clients without inferq, run on its own (no inferq import inside it)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from inferq.shared import arrays
from inferq.shared.errors import InvalidInput
from inferq.shared.results import InferenceResult, success_meta, value_from_meta

README = Path(__file__).resolve().parents[2] / "README.md"

SAMPLES = [
    np.arange(12, dtype=np.uint8).reshape(3, 4),
    np.linspace(-1, 1, 10, dtype=np.float32).reshape(2, 5),
    np.array([[1.5, -2.25]], dtype=np.float16),
    np.array([-(2**31), 2**31 - 1], dtype=np.int32),
    np.array([[-(2**62), 7]], dtype=np.int64),
    np.array([True, False, True]),
    np.zeros((0, 4), dtype=np.float32),  # no detections
    np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2],  # not contiguous
]


def _result(outputs: Any) -> InferenceResult:
    timing: Any = {"total_ms": 1.0}
    return InferenceResult(model="m", version=1, outputs=outputs, timing=timing)


@pytest.mark.parametrize("array", SAMPLES, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_an_array_comes_back_exactly_through_a_stored_result(array: np.ndarray) -> None:
    meta = success_meta("t", _result({"mask": array, "nested": [array, {"n": 1}]}))
    assert orjson.loads(meta)[arrays.ARRAYS_KEY] is True
    stored = orjson.loads(meta)["result"]["outputs"]
    assert set(stored["mask"]) == {arrays.ARRAY_KEY}  # plain JSON: no pickle, one marker key
    back = value_from_meta(meta)["outputs"]
    for got in (back["mask"], back["nested"][0]):
        assert isinstance(got, np.ndarray) and got.dtype == array.dtype
        np.testing.assert_array_equal(got, array)
        assert got.flags.writeable
    assert back["nested"][1] == {"n": 1}


def test_results_without_arrays_are_unchanged_and_numpy_scalars_become_numbers() -> None:
    topk = [{"index": 2, "label": "c", "score": 0.75}]
    meta = success_meta("t", _result(topk))
    assert arrays.ARRAYS_KEY not in orjson.loads(meta)  # byte for byte what it was before
    assert value_from_meta(meta)["outputs"] == topk
    # a lookalike object in a result without arrays is not taken for one
    lookalike = {arrays.ARRAY_KEY: "not read"}
    assert value_from_meta(success_meta("t", _result(lookalike)))["outputs"] == lookalike
    scalar = value_from_meta(success_meta("t", _result({"count": np.int64(3)})))["outputs"]
    assert scalar == {"count": 3}


def test_decoding_is_idempotent_and_leaves_lookalike_dicts_alone() -> None:
    encoded = arrays.encode_array(np.ones(3, np.uint8))
    once = arrays.decode_outputs({"a": dict(encoded), "b": {"inferq_array": "x", "other": 1}})
    assert isinstance(once["a"], np.ndarray)
    assert once["b"] == {"inferq_array": "x", "other": 1}  # two keys: not a marker
    assert arrays.decode_outputs(once) is once


def test_unencodable_values_and_corrupt_arrays_are_refused() -> None:
    with pytest.raises(TypeError, match="not JSON serializable: object"):
        success_meta("t", _result(object()))
    with pytest.raises(InvalidInput, match="valid base64"):
        arrays.decode_array({arrays.ARRAY_KEY: "@@@"})
    truncated = arrays.encode_array(np.ones(4, np.float32))[arrays.ARRAY_KEY][:-8]
    with pytest.raises(InvalidInput):
        arrays.decode_array({arrays.ARRAY_KEY: truncated})


# -- the README's decoder, for clients without inferq ----------------------------------------


def _readme_decoder() -> Any:
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (snippet,) = [b for b in blocks if "def decode_array(obj)" in b]
    assert "import inferq" not in snippet and "from inferq" not in snippet  # stands alone
    assert len(snippet.strip().splitlines()) <= 12
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    return namespace["decode_array"]


@pytest.mark.parametrize("array", SAMPLES, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_the_readme_decoder_reads_what_workers_store(array: np.ndarray) -> None:
    decode = _readme_decoder()
    stored = orjson.loads(success_meta("t", _result({"x": array})))["result"]["outputs"]["x"]
    got = decode(stored)
    assert got.dtype == array.dtype and got.shape == array.shape
    np.testing.assert_array_equal(got, array)


def test_the_listener_backend_decodes_arrays_on_every_read() -> None:
    """``meta_from_decoded`` is what ``get()``, ``async_get()``, ``.result`` and ``join_native``
    all go through; only flagged metas are walked."""
    from inferq.producer.backend import ListenerBackend
    from inferq.shared.celeryconf import make_celery
    from inferq.shared.settings import Settings

    app = make_celery(Settings(broker_url="redis://127.0.0.1:1/0"))
    backend = app.backend
    assert isinstance(backend, ListenerBackend)
    mask = np.eye(3, dtype=np.uint8)
    flagged = orjson.loads(success_meta("t", _result(mask)))
    assert isinstance(backend.meta_from_decoded(flagged)["result"]["outputs"], np.ndarray)
    plain = orjson.loads(success_meta("t", _result([1, 2])))
    assert backend.meta_from_decoded(plain)["result"]["outputs"] == [1, 2]
