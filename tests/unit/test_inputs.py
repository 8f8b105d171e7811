"""shared/inputs.py: [[inputs]] declarations, and one request's named tensors on the wire."""

from __future__ import annotations

import tomllib
from typing import Any

import numpy as np
import pytest

from inferq.shared import codec
from inferq.shared.errors import ConfigError, InvalidInput
from inferq.shared.inputs import TensorInput, decode_request, encode_request
from inferq.shared.spec import InputSpec, ModelConfig, parse_config

TEXT = """
platform = "torchscript"
[[inputs]]
name = "input_ids"
dtype = "int64"
shape = [64]
variable = 0
pad_value = 1
buckets = [32, 16, 64]
[[inputs]]
name = "flags"
dtype = "bool"
shape = [2, 3]
[[inputs]]
name = "attention_mask"
mask_of = "input_ids"
dtype = "int64"
[output]
postprocess = "raw"
follows = "input_ids"
"""


def _config(text: str = TEXT) -> ModelConfig:
    return parse_config("textual", tomllib.loads(text))


def _inputs() -> tuple[TensorInput, ...]:
    return _config().inputs


def test_inputs_parse_in_declared_order_with_masks_shaped_from_their_source() -> None:
    ids, flags, mask = _inputs()
    assert ids == TensorInput("input_ids", "int64", (64,), 0, 1, (16, 32, 64))
    assert flags == TensorInput("flags", "bool", (2, 3))
    assert mask == TensorInput("attention_mask", "int64", (64,), 0, 0, (), "input_ids")
    assert [i.sent for i in (ids, flags, mask)] == [True, True, False]
    assert ids.describe() == "int64[<=64]" and flags.describe() == "bool[2, 3]"
    assert _config().output.follows == "input_ids" and _config().shape == ()


def test_the_image_form_is_unchanged_and_its_spec_json_has_no_inputs_key() -> None:
    cfg = parse_config("img", {"input": {"shape": [3, 8, 8]}})
    assert cfg.inputs == () and cfg.shape == (3, 8, 8) and cfg.dtype == "uint8"
    raw = cfg.input_spec(2).to_json()
    assert "inputs" not in raw
    assert InputSpec.from_json(raw) == cfg.input_spec(2)


def test_the_spec_published_for_producers_carries_the_inputs() -> None:
    spec = _config().input_spec(3)
    assert InputSpec.from_json(spec.to_json()) == spec
    assert InputSpec.from_json(spec.to_json()).inputs == _inputs()


def test_an_older_single_input_spec_json_still_reads() -> None:
    old = (
        '{"model": "m", "version": 1, "shape": [3, 8, 8], "dtype": "uint8", "color": "RGB", '
        '"resize": "crop", "queue_limit": 10, "default_deadline_ms": 0.0}'
    )
    assert InputSpec.from_json(old) == InputSpec("m", 1, (3, 8, 8), queue_limit=10)


def _replace(old: str, new: str) -> str:
    assert old in TEXT
    return TEXT.replace(old, new, 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_replace('dtype = "int64"', 'dtype = "int16"'), r"inputs.input_ids.dtype must be one of"),
        (_replace("shape = [64]", "shape = []"), r"inputs.input_ids.shape must be 1..8"),
        (_replace("shape = [64]", "shape = [0]"), r"inputs.input_ids.shape must be 1..8"),
        (_replace("variable = 0", "variable = 1"), r"inputs.input_ids.variable must be .* 0..0"),
        (_replace("pad_value = 1", "pad_value = 1.5"), r"pad_value must be a value of int64"),
        (
            _replace("buckets = [32, 16, 64]", "buckets = [128]"),
            r"buckets must be distinct .*1..64",
        ),
        (_replace('name = "flags"', 'name = "input_ids"'), r"inputs\[1\].name must be a new"),
        (_replace('mask_of = "input_ids"', 'mask_of = "flags"'), r"mask_of must name .* variable"),
        (_replace('follows = "input_ids"', 'follows = "flags"'), r"output.follows must name"),
        (_replace('postprocess = "raw"', 'postprocess = "topk"'), r"follows .* needs postprocess"),
        (_replace("shape = [2, 3]", "shape = [2, 3]\npad_value = 2"), r"flags.pad_value .* bool"),
        (_replace("shape = [2, 3]", "shape = [2, 3]\nbuckets = [1]"), r"flags.buckets needs a var"),
        (
            _replace('mask_of = "input_ids"', 'mask_of = "input_ids"\nshape = [3]'),
            r"takes no shape",
        ),
        (TEXT + "[input]\nshape = [3, 8, 8]\n", r"\[input\] .* or \[\[inputs\]\], got both"),
        (TEXT + "[preprocess]\nmean = [0.5]\n", r"\[preprocess\] applies to an \[input\] image"),
        (TEXT + "[optimize]\nbatch_buckets = [32]\n", r"\[optimize\] .* \[input\] image model"),
        (_replace("[[inputs]]\nname", "[[inputs]]\nshapes = [1]\nname"), r"unknown inputs.shapes"),
    ],
)
def test_each_bad_declaration_is_refused_naming_it(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(text)


def test_a_mask_is_int64_unless_declared_otherwise() -> None:
    declared = 'mask_of = "input_ids"\ndtype = "int64"'
    omitted = _config(_replace(declared, 'mask_of = "input_ids"')).inputs[2]
    boolean = _config(_replace(declared, 'mask_of = "input_ids"\ndtype = "bool"')).inputs[2]
    assert (omitted.dtype, boolean.dtype) == ("int64", "bool")


def test_a_model_must_have_an_input_that_requests_carry() -> None:
    with pytest.raises(ConfigError, match="must be one or more tables"):
        parse_config("m", {"inputs": []})


# -- one request ------------------------------------------------------------------------------------


def _request(length: int = 5) -> dict[str, Any]:
    return {"input_ids": np.arange(length), "flags": np.ones((2, 3), dtype=bool)}


def test_a_dict_round_trips_through_the_wire_map() -> None:
    wire = encode_request(_request(), _inputs(), "textual")
    assert sorted(wire) == ["flags", "input_ids"]
    ids, flags = decode_request(wire, _inputs(), "textual", 1 << 20)
    np.testing.assert_array_equal(ids, np.arange(5))
    assert ids.dtype == np.int64 and flags.dtype == np.bool_ and flags.all()


def test_lists_and_narrower_ints_become_the_declared_dtype() -> None:
    inputs = (TensorInput("ids", "int32", (8,), 0),)
    decoded = decode_request(encode_request([3, 4], inputs, "m"), inputs, "m", 1 << 20)
    assert decoded[0].dtype == np.int32 and decoded[0].tolist() == [3, 4]
    with pytest.raises(InvalidInput, match=r"'ids' of model 'm' must be int32\[<=8\], got int64"):
        encode_request([2**40], inputs, "m")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.arange(5), r"takes several inputs: pass a dict \{input_ids, flags\}, got ndarray"),
        ({"input_ids": np.arange(5)}, r"missing \['flags'\]"),
        ({**_request(), "attention_mask": np.ones(5)}, r"unknown \['attention_mask'\]"),
        (
            {**_request(), "input_ids": np.arange(65)},
            r"'input_ids' .* int64\[<=64\], got int64\[65\]",
        ),
        ({**_request(), "input_ids": np.arange(0)}, r"int64\[<=64\], got int64\[0\]"),
        ({**_request(), "input_ids": np.ones(5)}, r"int64\[<=64\], got float64\[5\]"),
        ({**_request(), "flags": np.ones((2, 3))}, r"'flags' .* bool\[2, 3\], got float64\[2, 3\]"),
        ({**_request(), "flags": np.ones((3, 2), bool)}, r"bool\[2, 3\], got bool\[3, 2\]"),
    ],
)
def test_the_producer_refuses_what_the_model_cannot_take(value: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        encode_request(value, _inputs(), "textual")


def _wire(**change: Any) -> dict[str, Any]:
    wire: dict[str, Any] = encode_request(_request(), _inputs(), "textual")
    wire.update(change)
    return {k: v for k, v in wire.items() if v is not None}


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        (b"not a map", r"takes a map \{name: codec bytes\} of its inputs"),
        (_wire(flags=None), r"missing \['flags'\]"),
        (_wire(extra=b""), r"unknown \['extra'\]"),
        (_wire(flags=codec.encode(np.ones((2, 3), np.uint8))), r"'flags' .* got uint8\[2, 3\]"),
        (_wire(input_ids=codec.encode(np.arange(70))), r"int64\[<=64\], got int64\[70\]"),
        (_wire(input_ids=codec.encode(np.ones(4, np.float32))), r"got float32\[4\]"),
        (_wire(input_ids=b"IQT"), r"tensor header"),
        (_wire(input_ids=7), r"'input_ids' must be codec bytes, got int"),
        (_wire(input_ids="%%"), r"'input_ids' must be base64"),
        (_wire(flags=codec.encode(np.ones((2, 3), bool))[:-1] + b"\x02"), r"must hold bools"),
    ],
)
def test_the_worker_refuses_what_a_foreign_client_may_send(arg: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_request(arg, _inputs(), "textual", 1 << 20)


def test_float_inputs_must_be_finite_and_one_sent_input_may_come_bare() -> None:
    inputs = (TensorInput("x", "float32", (3,)),)
    bare = codec.encode(np.array([1.0, 2.0, 3.0], np.float32))
    assert decode_request(bare, inputs, "m", 1 << 20)[0].tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(InvalidInput, match="'x' of model 'm' must be finite"):
        decode_request(codec.encode(np.array([1, np.nan, 3], np.float32)), inputs, "m", 1 << 20)


def test_the_input_bench_measures_messages_the_worker_accepts() -> None:
    from inferq.worker.intake import InferenceRequest, decode_message
    from inferq.worker.tools.inputbench import image_messages, token_messages

    for raws, spec in (image_messages(4), token_messages(16)):
        decoded = [decode_message("t", r, spec, max_bytes=1 << 20) for r in raws]
        assert all(isinstance(d, InferenceRequest) for d in decoded)
    lengths = {len(d.tensors[0]) for d in decoded if isinstance(d, InferenceRequest)}
    assert len(lengths) > 4 and max(lengths) <= 64  # lengths spread over 1..64
