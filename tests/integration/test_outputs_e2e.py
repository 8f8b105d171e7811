"""Structured outputs end to end: a real worker serving the tiny detector and segmenter of
tests/models.py, requests through ``submit_job.delay``, results through ``.get()``, ``gather``
and ``async_get``, and a plain Celery client reading the stored arrays.

The originals are 64x16 with a red rectangle at x 20..40, y 4..12; the models see 32x16. The
detector's boxes are a known function of its input, so the box mapped back to the original must
be exactly the rectangle, in every resize mode.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from celery import Celery

from inferq.producer import gather, submit_job
from inferq.shared.errors import HandlerError, ModelError
from tests.models import write_vision_model

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

MODES = ("crop", "letterbox", "stretch")
BOX = [20.0, 4.0, 40.0, 12.0]


@pytest.fixture(scope="module")
def vision_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vision-repo")
    for mode in MODES:
        write_vision_model(root, f"det-{mode}", "detector", "detection", mode)
        write_vision_model(root, f"seg-{mode}", "segmenter", "segmentation", mode)
    write_vision_model(
        root,
        "det-hooked",
        "detector",
        "detection",
        "letterbox",
        handler="tests.handlers:FailMarked",
    )
    return root


def _image(green: bool = False, marker: int | None = None) -> np.ndarray:
    """HWC 16x64 RGB: the red rectangle; green inside it makes it a "square"; ``marker`` fills
    one channel of the top-left 4x4 corner (full after any of the resizes here)."""
    img = np.zeros((16, 64, 3), dtype=np.uint8)
    img[4:12, 20:40, 0] = 255
    if green:
        img[6:10, 26:34, 1] = 255
    if marker is not None:
        img[0:4, 0:4, marker] = 255
    return img


def _truth() -> np.ndarray:
    mask = np.zeros((16, 64), dtype=np.uint8)
    mask[4:12, 20:40] = 1
    return mask


def test_detection_boxes_come_back_in_the_originals_pixels_in_every_mode(
    stack_factory, vision_repo: Path
) -> None:
    stack = stack_factory(vision_repo)
    stack.worker(*(f"det-{m}" for m in MODES))
    for mode in MODES:
        results = [
            submit_job.delay(_image(green=g), model=f"det-{mode}") for g in (False, True, False)
        ]
        values = [r.get(timeout=60)["outputs"] for r in results]
        for got, label in zip(values, ("circle", "square", "circle"), strict=True):
            assert got == [{"box": BOX, "label": label, "score": pytest.approx(0.9)}], mode
        assert [v["outputs"] for v in gather(results, timeout=30)] == values


def test_segmentation_masks_come_back_as_arrays_at_the_original_size(
    stack_factory, vision_repo: Path
) -> None:
    stack = stack_factory(vision_repo)
    stack.worker(*(f"seg-{m}" for m in MODES))
    truth = _truth()
    for mode in MODES:
        result = submit_job.delay(_image(), model=f"seg-{mode}")
        mask = result.get(timeout=60)["outputs"]
        assert isinstance(mask, np.ndarray) and mask.dtype == np.uint8, mode
        np.testing.assert_array_equal(mask, truth)
        (gathered,) = gather([result.id], timeout=30)
        np.testing.assert_array_equal(gathered["outputs"], truth)

    async def awaited() -> np.ndarray:
        r = await submit_job.async_delay(_image(), model="seg-letterbox")
        return (await r.async_get(timeout=60))["outputs"]

    np.testing.assert_array_equal(asyncio.run(awaited()), truth)

    # A Celery client without inferq reads the documented structure, decoded as the README says.
    plain = Celery(broker=stack.redis.url, backend=stack.redis.url)
    stored = plain.AsyncResult(result.id).get(timeout=30)["outputs"]
    assert set(stored) == {"inferq_array"}
    from tests.unit.test_arrays import _readme_decoder

    np.testing.assert_array_equal(_readme_decoder()(stored), truth)


def test_hooks_and_the_model_fail_only_the_requests_they_fail_on(
    stack_factory, vision_repo: Path
) -> None:
    """One batch of eight: one request the postprocess hook refuses (by task id), one the
    preprocess hook refuses (a green corner), one the model refuses (a blue corner)."""
    stack = stack_factory(vision_repo)
    stack.worker("det-hooked")
    cases = {
        "ok-0": _image(),
        "bad-post": _image(),
        "ok-1": _image(green=True),
        "ok-pre": _image(marker=1),
        "ok-model": _image(marker=2),
        "ok-2": _image(),
        "ok-3": _image(green=True),
        "ok-4": _image(),
    }
    results = {
        task_id: submit_job.apply_async((img,), {"model": "det-hooked"}, task_id=task_id)
        for task_id, img in cases.items()
    }
    outcomes = dict(
        zip(
            results, gather(list(results.values()), timeout=60, return_exceptions=True), strict=True
        )
    )
    kinds = Counter(type(v).__name__ for v in outcomes.values())
    assert kinds == Counter(dict=5, HandlerError=2, ModelError=1)
    assert isinstance(outcomes["bad-post"], HandlerError)
    assert "postprocess must succeed" in outcomes["bad-post"].message
    assert isinstance(outcomes["ok-pre"], HandlerError)
    assert "preprocess must succeed" in outcomes["ok-pre"].message
    assert type(outcomes["ok-model"]) is ModelError
    for task_id in ("ok-0", "ok-1", "ok-2", "ok-3", "ok-4"):
        value = outcomes[task_id]
        assert isinstance(value, dict)
        assert value["outputs"]["task_id"] == task_id
        (detection,) = value["outputs"]["value"]
        assert detection["box"] == BOX
    with pytest.raises(HandlerError):
        results["bad-post"].get(timeout=5)
