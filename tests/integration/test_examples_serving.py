"""The trained examples served by a real worker through ``submit_job.delay``, scored against what
they were made from exactly as in-process (``inferq.worker.examples.served``)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from inferq.producer import gather, submit_job, submit_many
from inferq.producer.tools.scenes import Scene, make_scenes
from inferq.worker.examples.detector import evaluate_detector
from inferq.worker.examples.scene_data import letterbox_scenes
from inferq.worker.examples.served import score_detections, score_segmentation, text_correct
from inferq.worker.examples.textcls import TEXT_CLASSES, make_sentences, pad_batch
from tests.conftest import ShapesBuild, Stack

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning"),
]
SEED = 5151  # fresh: no training, held-out or test seed
# Non-square, none of them a training size, aspect ratios within the trained 3:2 (README).
SIZES = ((240, 160), (150, 200), (300, 225))


def _serve(factory: Callable[..., Stack], build: ShapesBuild, tmp: Path, *models: str) -> Stack:
    repo = Path(shutil.copytree(build.repo, tmp / "repo"))
    stack = factory(repo)
    stack.worker(*models)
    return stack


def test_textcls_serves_variable_length_sentences(
    stack_factory: Callable[..., Stack], textcls_build: ShapesBuild, tmp_path: Path
) -> None:
    _serve(stack_factory, textcls_build, tmp_path, "textcls")
    sentences, labels = make_sentences(300, seed=SEED)
    values = gather(
        [submit_job.delay({"input_ids": s}, model="textcls") for s in sentences], timeout=120
    )
    assert text_correct(values, labels) / len(labels) >= 0.95
    # Batched and padded by the worker (buckets 16/32/64), each answer is what the model gives
    # the sentence alone.
    model = torch.jit.load(str(textcls_build.repo / "textcls" / "1" / "model.pt"))
    with torch.no_grad():
        alone = [int(model(*pad_batch([s])).argmax()) for s in sentences]
    assert [v["outputs"][0]["label"] for v in values] == [TEXT_CLASSES[i] for i in alone]


def _scenes() -> list[Scene]:
    return [s for i, size in enumerate(SIZES) for s in make_scenes(40, SEED + i, size)]


def test_detector_and_segmenter_answer_in_original_pixels(
    stack_factory: Callable[..., Stack], scenes_build: ShapesBuild, tmp_path: Path
) -> None:
    _serve(stack_factory, scenes_build, tmp_path, "detector", "segmenter")
    scenes = _scenes()
    one = submit_job.delay(scenes[0].image, model="detector").get(timeout=60)
    assert one["outputs"] and all(set(d) == {"box", "label", "score"} for d in one["outputs"])
    images = [s.image for s in scenes]
    boxes = gather(submit_many(images, model="detector"), timeout=180)
    # Scored against the boxes drawn on the original images: a letterbox left un-inverted (or
    # inverted for the wrong aspect) puts every box off by the band and the scale.
    counts = score_detections(boxes, scenes)
    assert counts.recall >= 0.90 and counts.false_rate <= 0.10, counts
    # The same model in-process, boxes mapped back by the reference: the same figures.
    model = torch.jit.load(str(scenes_build.repo / "detector" / "1" / "model.pt"))
    reference = evaluate_detector(model, letterbox_scenes(scenes))
    assert abs(reference.found - counts.found) <= 1 and abs(reference.boxes - counts.boxes) <= 1
    labels = gather(submit_many(images, model="segmenter"), timeout=180)
    for value, scene in zip(labels, scenes, strict=True):
        mask = value["outputs"]
        assert isinstance(mask, np.ndarray) and mask.dtype == np.uint8
        assert mask.shape == scene.mask.shape  # (H, W) of the image sent
    assert score_segmentation(labels, scenes).mean_iou >= 0.80
