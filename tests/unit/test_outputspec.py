"""shared/outputspec.py: the [output] and [handler] tables, read strictly."""

from __future__ import annotations

from typing import Any

import pytest

from inferq.shared.errors import ConfigError
from inferq.shared.outputspec import Detection, HandlerRef, Output
from inferq.shared.spec import InputSpec, ModelConfig, parse_config

LABELS = ["circle", "square", "triangle"]


def _parse(output: dict[str, Any], **top: Any) -> ModelConfig:
    return parse_config("m", {"input": {"shape": [3, 8, 8]}, "output": output, **top})


def test_defaults_keep_existing_configs_as_they_were() -> None:
    config = _parse({})
    assert config.output == Output()
    assert config.handler is None
    assert config.input_spec(1).geometry is False  # classifiers' messages carry nothing more


def test_detection_table_and_the_spec_asks_producers_for_geometry() -> None:
    config = _parse(
        {
            "postprocess": "detection",
            "labels": LABELS,
            "detection": {"score_threshold": 0.25, "iou_threshold": 0.4, "max_detections": 7},
        }
    )
    assert config.output.detection == Detection("boxes", "scores", 0.25, 0.4, 7)
    spec = config.input_spec(1)
    assert spec.geometry is True
    assert InputSpec.from_json(spec.to_json()) == spec


def test_layout_keys() -> None:
    out = _parse(
        {"names": ["a", "b"], "rows": "batch_index", "batch_index": "a", "batch_column": 2}
    )
    assert (out.output.names, out.output.rows, out.output.batch_index, out.output.batch_column) == (
        ("a", "b"),
        "batch_index",
        "a",
        2,
    )
    assert (
        _parse(
            {"postprocess": "segmentation", "segmentation": {"logits": "seg"}}
        ).output.segmentation.logits
        == "seg"
    )


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (
            {"postprocess": "detect"},
            r"output.postprocess must be one of \('topk', 'raw', 'detection', 'segmentation'\)",
        ),
        ({"rows": "ragged"}, r"output.rows must be one of \('dense', 'batch_index', 'list'\)"),
        ({"rows": "batch_index"}, r"needs output.batch_index"),
        ({"batch_index": "i"}, r'apply to rows = "batch_index", got rows = \'dense\''),
        (
            {"rows": "batch_index", "batch_index": "i", "batch_column": -1},
            r"batch_column must be >= 0",
        ),
        ({"names": ["a", "a"]}, r"output.names must be distinct non-empty names"),
        ({"postprocess": "detection"}, r"needs output.labels"),
        (
            {"postprocess": "topk", "detection": {}},
            r'\[output.detection\] applies to postprocess = "detection"',
        ),
        (
            {"postprocess": "detection", "labels": LABELS, "detection": {"iou": 0.5}},
            r"allows only the keys .*got unknown detection.iou",
        ),
        (
            {"postprocess": "detection", "labels": LABELS, "detection": {"score_threshold": 1.5}},
            r"score_threshold must lie in 0..1",
        ),
        (
            {"postprocess": "detection", "labels": LABELS, "detection": {"max_detections": 0}},
            r"max_detections must be >= 1",
        ),
        (
            {"postprocess": "segmentation", "segmentation": []},
            r"\[output.segmentation\] must be a table",
        ),
    ],
)
def test_refusals_name_the_key(output: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _parse(output)


def test_handler_table() -> None:
    config = _parse({}, handler={"name": "score-floor", "options": {"min_score": 0.2}})
    assert config.handler == HandlerRef("score-floor", {"min_score": 0.2})
    assert config.input_spec(1).geometry is True  # a handler's hooks may map results back
    with pytest.raises(ConfigError, match=r"handler\.options must be a table"):
        _parse({}, handler={"name": "score-floor", "options": 3})
    with pytest.raises(ConfigError, match=r"\[handler\] allows only the keys name, options"):
        _parse({}, handler={"name": "x", "path": "models/x.py"})


def test_a_spec_without_geometry_is_published_as_before() -> None:
    import json

    plain = _parse({}).input_spec(1)
    assert "geometry" not in json.loads(plain.to_json())
    assert InputSpec.from_json(plain.to_json()) == plain
