"""shared/spec.py: model config parsing and the InputSpec producers receive."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from inferq.shared.errors import ConfigError
from inferq.shared.spec import InputSpec, ModelConfig, parse_config

FULL = """
platform = "torchscript"
description = "tiny test model"

[input]
shape = [3, 32, 48]
dtype = "uint8"
color = "RGB"

[preprocess]
resize = "letterbox"
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
scale = 255.0

[output]
postprocess = "topk"
top_k = 3
labels = ["cat", "dog", "bird"]

[batching]
max_batch_size = 16
max_wait_ms = 2.5
preferred_batch_sizes = [8, 4]
queue_limit = 500
default_deadline_ms = 1500

[precision]
mode = "bf16"
channels_last = false
"""

MINIMAL = """
[input]
shape = [1, 8, 8]
color = "L"
"""


def _write(tmp_path: Path, text: str, model: str = "m") -> Path:
    path = tmp_path / model / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _parse(text: str) -> ModelConfig:
    return parse_config("m", tomllib.loads(text), where="cfg.toml")


def _with(section: str | None, **values: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"input": {"shape": [3, 8, 8]}}
    if section is None:
        data.update(values)
    else:
        data.setdefault(section, {}).update(values)
    return data


# -- valid configs -----------------------------------------------------------------------------


def test_full_config_loads_every_field(tmp_path: Path) -> None:
    config = ModelConfig.load(_write(tmp_path, FULL, model="mymodel"))
    assert config.name == "mymodel"
    assert config.platform == "torchscript"
    assert config.description == "tiny test model"
    assert config.shape == (3, 32, 48)
    assert config.dtype == "uint8"
    assert config.color == "RGB"
    assert config.resize == "letterbox"
    assert config.preprocess.mean == (0.485, 0.456, 0.406)
    assert config.preprocess.std == (0.229, 0.224, 0.225)
    assert config.preprocess.scale == 255.0
    assert config.output.postprocess == "topk"
    assert config.output.top_k == 3
    assert config.output.labels == ("cat", "dog", "bird")
    assert config.batching.max_batch_size == 16
    assert config.batching.max_wait_ms == 2.5
    assert config.batching.preferred_batch_sizes == (4, 8)  # sorted
    assert config.batching.queue_limit == 500
    assert config.batching.default_deadline_ms == 1500.0
    assert config.precision.mode == "bf16"
    assert config.precision.channels_last is False


def test_minimal_config_takes_documented_defaults(tmp_path: Path) -> None:
    config = ModelConfig.load(_write(tmp_path, MINIMAL))
    assert config.platform == "torchscript"
    assert config.shape == (1, 8, 8)
    assert config.color == "L"
    assert config.dtype == "uint8"
    assert config.resize == "crop"
    assert config.preprocess.mean == (0.0,)
    assert config.preprocess.std == (1.0,)
    assert config.preprocess.scale == 255.0
    assert config.output.postprocess == "topk"
    assert config.output.top_k == 5
    assert config.output.labels == ()
    assert config.batching.max_batch_size == 32
    assert config.batching.max_wait_ms == 5.0
    assert config.batching.preferred_batch_sizes == ()
    assert config.batching.queue_limit == 10_000
    assert config.batching.default_deadline_ms == 0.0
    assert config.precision.mode == "fp32"
    assert config.precision.channels_last is True


def test_default_mean_std_have_one_value_per_channel() -> None:
    config = parse_config("m", {"input": {"shape": [3, 4, 4]}})
    assert config.preprocess.mean == (0.0, 0.0, 0.0)
    assert config.preprocess.std == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("dtype", ["uint8", "float16", "float32"])
@pytest.mark.parametrize("mode", ["fp32", "fp16", "bf16"])
def test_every_wire_dtype_and_precision_is_accepted(dtype: str, mode: str) -> None:
    config = parse_config(
        "m", {"input": {"shape": [3, 4, 4], "dtype": dtype}, "precision": {"mode": mode}}
    )
    assert (config.dtype, config.precision.mode) == (dtype, mode)


def test_onnx_platform_and_raw_postprocess() -> None:
    config = parse_config("m", _with(None, platform="onnx", output={"postprocess": "raw"}))
    assert config.platform == "onnx"
    assert config.output.postprocess == "raw"


def test_config_is_frozen(tmp_path: Path) -> None:
    config = ModelConfig.load(_write(tmp_path, FULL))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.shape = (1, 1, 1)  # type: ignore[misc]


def test_input_spec_from_config() -> None:
    spec = _parse(FULL).input_spec(version=7)
    assert spec == InputSpec(
        model="m",
        version=7,
        shape=(3, 32, 48),
        dtype="uint8",
        color="RGB",
        resize="letterbox",
        queue_limit=500,
        default_deadline_ms=1500.0,
    )


# -- unreadable files --------------------------------------------------------------------------


def test_missing_file_raises_config_error(tmp_path: Path) -> None:
    path = tmp_path / "m" / "config.toml"
    with pytest.raises(ConfigError, match=r"cannot read model config .*config\.toml"):
        ModelConfig.load(path)


def test_bad_toml_raises_config_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "[input\nshape = [")
    with pytest.raises(ConfigError, match=r"cannot read model config"):
        ModelConfig.load(path)


def test_errors_from_load_name_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, '[input]\nshape = [3, 8, 8]\ndtype = "int64"\n')
    with pytest.raises(ConfigError) as info:
        ModelConfig.load(path)
    assert str(path) in str(info.value)
    assert "input.dtype" in str(info.value)


# -- every invalid field -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({}, r"input\.shape must be \[C, H, W\].*got \[\]"),
        ({"input": {"shape": [8, 8]}}, r"input\.shape must be \[C, H, W\].*got \[8, 8\]"),
        ({"input": {"shape": [1, 3, 8, 8]}}, r"input\.shape .*got \[1, 3, 8, 8\]"),
        ({"input": {"shape": [3, 0, 8]}}, r"input\.shape .*positive sizes, got \[3, 0, 8\]"),
        ({"input": {"shape": [3, 8, -1]}}, r"input\.shape .*got \[3, 8, -1\]"),
        (
            {"input": {"shape": [3, 8, 8], "color": "CMYK"}},
            r"input\.color must be one of .*got 'CMYK'",
        ),
        ({"input": {"shape": [1, 8, 8]}}, r"input\.color 'RGB' has 3 channel\(s\), shape says 1"),
        (
            {"input": {"shape": [3, 8, 8], "color": "L"}},
            r"input\.color 'L' has 1 channel\(s\), shape says 3",
        ),
        (
            {"input": {"shape": [3, 8, 8], "dtype": "int8"}},
            r"input\.dtype must be one of .*got 'int8'",
        ),
        (_with(None, platform="tensorflow"), r"platform must be one of .*got 'tensorflow'"),
        (_with("preprocess", resize="squash"), r"preprocess\.resize must be one of .*got 'squash'"),
        (_with("preprocess", mean=[0.5]), r"preprocess\.mean/std must have 3 values"),
        (_with("preprocess", std=[1.0, 1.0]), r"preprocess\.mean/std must have 3 values"),
        (_with("preprocess", std=[1.0, 0.0, 1.0]), r"preprocess\.mean/std .*std > 0"),
        (_with("preprocess", std=[1.0, -0.5, 1.0]), r"preprocess\.mean/std .*std > 0"),
        (
            _with("output", postprocess="argmax"),
            r"output\.postprocess must be one of .*got 'argmax'",
        ),
        (_with("output", top_k=0), r"output\.top_k must be >= 1, got 0"),
        (_with("batching", max_batch_size=0), r"batching\.max_batch_size must be >= 1, got 0"),
        (_with("batching", max_wait_ms=-1), r"batching\.max_wait_ms must be >= 0, got -1"),
        (
            _with("batching", max_batch_size=8, preferred_batch_sizes=[4, 16]),
            r"batching\.preferred_batch_sizes must lie in 1\.\.8, got \[16\]",
        ),
        (
            _with("batching", preferred_batch_sizes=[0]),
            r"preferred_batch_sizes must lie in 1\.\.32, got \[0\]",
        ),
        (_with("batching", queue_limit=0), r"batching\.queue_limit must be >= 1, got 0"),
        (_with("precision", mode="int4"), r"precision\.mode must be one of .*got 'int4'"),
        (_with(None, input=[3, 8, 8]), r"\[input\] must be a table, got list"),
        (_with(None, batching=5), r"\[batching\] must be a table, got int"),
        (_with(None, preprocess="x"), r"\[preprocess\] must be a table, got str"),
        (_with(None, output=[]), r"\[output\] must be a table, got list"),
        (_with(None, precision=True), r"\[precision\] must be a table, got bool"),
    ],
)
def test_each_invalid_field_raises_config_error_naming_it(
    data: dict[str, Any], pattern: str
) -> None:
    with pytest.raises(ConfigError, match=pattern) as info:
        parse_config("m", data, where="models/m/config.toml")
    assert str(info.value).startswith("models/m/config.toml: ")


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"input": {"shape": "3x8x8"}}, "input.shape"),
        ({"input": {"shape": 3}}, "input.shape"),
        ({"input": {"shape": [3, "eight", 8]}}, "input.shape"),
        (_with("preprocess", mean=["a", "b", "c"]), "preprocess.mean"),
        (_with("preprocess", std=1.0), "preprocess"),
        (_with("output", top_k="five"), "output.top_k"),
        (_with("batching", max_batch_size="big"), "batching.max_batch_size"),
        (_with("batching", max_wait_ms="soon"), "batching.max_wait_ms"),
    ],
)
def test_wrongly_typed_values_raise_config_error_naming_the_key(
    data: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config("m", data)


def test_zero_scale_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"preprocess\.scale"):
        parse_config("m", _with("preprocess", scale=0))


def test_channels_last_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match=r"precision\.channels_last"):
        parse_config("m", _with("precision", channels_last="false"))


def test_labels_must_be_a_list() -> None:
    with pytest.raises(ConfigError, match=r"output\.labels"):
        parse_config("m", _with("output", labels="cat"))


def test_fractional_shape_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"input\.shape"):
        parse_config("m", {"input": {"shape": [3, 8.5, 8]}})


@pytest.mark.parametrize(
    "data",
    [
        _with("preprocess", std=[1.0, float("nan"), 1.0]),
        _with("batching", max_wait_ms=float("nan")),
    ],
)
def test_nan_values_are_refused(data: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        parse_config("m", data)


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (_with("preprocess", mean=[0.0, float("inf"), 0.0]), r"preprocess\.mean .*finite.*inf"),
        (_with("preprocess", std=[1.0, float("inf"), 1.0]), r"preprocess\.std .*finite.*inf"),
        (_with("preprocess", scale=-1.0), r"preprocess\.scale must be > 0, got -1\.0"),
        (_with("preprocess", scale=float("nan")), r"preprocess\.scale must be a finite number"),
        (_with("preprocess", scale=float("inf")), r"preprocess\.scale must be a finite number"),
        (_with("batching", max_wait_ms=float("inf")), r"batching\.max_wait_ms .*finite.*inf"),
        (
            _with("batching", default_deadline_ms=float("nan")),
            r"batching\.default_deadline_ms .*finite.*nan",
        ),
        (_with("batching", default_deadline_ms=-1), r"batching\.default_deadline_ms must be >= 0"),
        (_with("batching", max_batch_size=8.0), r"batching\.max_batch_size must be an integer"),
        (_with("batching", queue_limit=True), r"batching\.queue_limit must be an integer"),
        (
            _with("batching", preferred_batch_sizes=8),
            r"batching\.preferred_batch_sizes must be a list of integers, got 8",
        ),
        (_with("output", top_k=2.5), r"output\.top_k must be an integer, got 2\.5"),
        (_with("output", labels=["cat", 1]), r"output\.labels must be a list of strings"),
        (_with("precision", channels_last=1), r"precision\.channels_last must be true or false"),
        (_with(None, description=3), r"description must be a string, got 3"),
        (_with(None, platform=["onnx"]), r"platform must be one of .*got \['onnx'\]"),
        (
            {"input": {"shape": [3, 8, 8], "colour": "RGB"}},
            r"\[input\] allows only the keys shape, dtype, color, wire, jpeg_quality, got unknown input\.colour",
        ),
        (_with("precision", fp16=True), r"\[precision\] allows only .*got unknown precision\.fp16"),
        (
            _with(None, models={}),
            r"the top level allows only the keys platform, .*got unknown models",
        ),
    ],
)
def test_more_invalid_values_raise_config_error_naming_the_key(
    data: dict[str, Any], pattern: str
) -> None:
    with pytest.raises(ConfigError, match=pattern) as info:
        parse_config("m", data, where="models/m/config.toml")
    assert str(info.value).startswith("models/m/config.toml: ")


def test_unknown_key_in_a_file_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, FULL.replace('color = "RGB"', 'colour = "RGB"'))
    with pytest.raises(ConfigError, match=r"input\.colour") as info:
        ModelConfig.load(path)
    assert "shape, dtype, color" in str(info.value)


def test_empty_preferred_batch_sizes_and_labels_are_valid() -> None:
    config = parse_config(
        "m", _with(None, batching={"preferred_batch_sizes": []}, output={"labels": []})
    )
    assert config.batching.preferred_batch_sizes == ()
    assert config.output.labels == ()


# -- InputSpec ---------------------------------------------------------------------------------


def test_input_spec_json_round_trip() -> None:
    spec = InputSpec(
        model="resnet",
        version=3,
        shape=(3, 224, 224),
        dtype="float16",
        color="RGB",
        resize="letterbox",
        queue_limit=42,
        default_deadline_ms=250.0,
    )
    raw = spec.to_json()
    assert json.loads(raw)["shape"] == [3, 224, 224]
    back = InputSpec.from_json(raw)
    assert back == spec
    assert isinstance(back.shape, tuple)
    assert InputSpec.from_json(raw.encode()) == spec


def test_input_spec_json_defaults() -> None:
    back = InputSpec.from_json('{"model": "m", "version": 1, "shape": [1, 2, 3]}')
    assert back == InputSpec(model="m", version=1, shape=(1, 2, 3))
    assert (back.dtype, back.color, back.resize) == ("uint8", "RGB", "crop")


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [("uint8", 3 * 32 * 32), ("float16", 2 * 3 * 32 * 32), ("float32", 4 * 3 * 32 * 32)],
)
def test_input_spec_nbytes(dtype: str, expected: int) -> None:
    assert InputSpec(model="m", version=1, shape=(3, 32, 32), dtype=dtype).nbytes == expected


def test_input_spec_is_frozen_and_hashable() -> None:
    spec = InputSpec(model="m", version=1, shape=(3, 4, 4))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.version = 2  # type: ignore[misc]
    assert {spec: 1}[InputSpec(model="m", version=1, shape=(3, 4, 4))] == 1


def test_instances_count_defaults_to_one_and_is_read_from_its_table() -> None:
    base = {"input": {"shape": [3, 8, 8]}}
    assert parse_config("m", base).instances == 1
    assert parse_config("m", {**base, "instances": {"count": 4}}).instances == 4


@pytest.mark.parametrize(
    ("count", "message"),
    [
        (0, "instances.count must be from 1 to 64, got 0"),
        (65, "instances.count must be from 1 to 64, got 65"),
        ("2", "instances.count must be an integer, got '2'"),
    ],
)
def test_bad_instances_count_is_refused_naming_the_key(count: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config("m", {"input": {"shape": [3, 8, 8]}, "instances": {"count": count}})


def test_unknown_key_in_instances_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"\[instances\] allows only the keys count"):
        parse_config("m", {"input": {"shape": [3, 8, 8]}, "instances": {"kind": "gpu"}})


def test_validation_and_rollout_sections_default_and_parse_strictly() -> None:
    default = parse_config("m", {"input": {"shape": [3, 4, 4]}})
    assert default.validation.min_agreement == 0.99
    assert default.rollout.canary_max_failure_rate == 1.0  # the guard is off
    given = parse_config(
        "m",
        _with(
            None,
            validation={"min_agreement": 0.9},
            rollout={"canary_max_failure_rate": 0.05, "canary_min_requests": 20},
        ),
    )
    assert (given.validation.min_agreement, given.rollout.canary_min_requests) == (0.9, 20)
    with pytest.raises(ConfigError, match=r"validation.min_agreement must lie in 0..1, got 1.5"):
        parse_config("m", _with("validation", min_agreement=1.5))
    with pytest.raises(ConfigError, match=r"\[rollout\] allows only the keys .* got unknown"):
        parse_config("m", _with("rollout", max_failures=3))
    with pytest.raises(ConfigError, match=r"canary_min_requests must be >= 1, got 0"):
        parse_config("m", _with("rollout", canary_min_requests=0))
