"""The trained detector, segmenter and text classifier, loaded from the files ``build_examples``
wrote, against the issue's targets on data none of them saw (fresh seeds, other non-square sizes).
The same figures through a real worker are in tests/integration (when the serving side is in)."""

from __future__ import annotations

import pathlib
import tomllib

import pytest
import torch

from inferq.worker.examples.detector import evaluate_detector
from inferq.worker.examples.scene_data import scene_set
from inferq.worker.examples.segmenter import evaluate_segmenter
from inferq.worker.examples.textcls import make_sentences, text_accuracy
from tests.conftest import ShapesBuild

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning"),
]
FRESH_SEED = 7777  # neither a training seed nor the build's held-out seed
FRESH_SIZES = ((240, 180), (170, 230), (270, 180))  # aspect within the trained 3:2


def _load(build: ShapesBuild, name: str) -> torch.jit.ScriptModule:
    return torch.jit.load(str(build.repo / name / "1" / "model.pt"))


def test_one_training_wrote_both_scene_models(scenes_build: ShapesBuild) -> None:
    assert [p.name for p in scenes_build.written] == ["detector", "segmenter"]
    for path in scenes_build.written:
        config = tomllib.loads((pathlib.Path(path) / "config.toml").read_text())
        assert config["preprocess"]["resize"] == "letterbox"
    assert sum("scenes: trained" in line for line in scenes_build.log) == 1


def test_detector_finds_shapes_on_fresh_images(scenes_build: ShapesBuild) -> None:
    counts = evaluate_detector(
        _load(scenes_build, "detector"), scene_set(60, FRESH_SEED, FRESH_SIZES)
    )
    assert counts.shapes > 400
    assert counts.recall >= 0.90, counts
    assert counts.false_rate <= 0.10, counts


def test_segmenter_mean_iou_on_fresh_images(scenes_build: ShapesBuild) -> None:
    counts = evaluate_segmenter(
        _load(scenes_build, "segmenter"), scene_set(60, FRESH_SEED, FRESH_SIZES)
    )
    assert counts.mean_iou >= 0.80, counts.class_iou()


def test_textcls_accuracy_on_fresh_sentences(textcls_build: ShapesBuild) -> None:
    sentences, labels = make_sentences(2000, seed=FRESH_SEED)
    assert text_accuracy(_load(textcls_build, "textcls"), sentences, labels) >= 0.95
