"""worker/postprocess: detection (threshold, NMS per class, boxes back in the original's pixels)
and segmentation (labels at the original's size), driven directly with chunks."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from inferq.producer.preprocess import fitted_tensor
from inferq.shared.errors import ModelError
from inferq.shared.geometry import Geometry, fit_geometry
from inferq.shared.spec import ModelConfig, parse_config
from inferq.worker.outputs import Parts
from inferq.worker.postprocess import make_postprocessor
from inferq.worker.postprocess.detection import Detect
from inferq.worker.postprocess.segmentation import Segment

LABELS = ["circle", "square", "triangle"]


def _config(
    postprocess: str, shape: tuple[int, int, int] = (3, 24, 32), resize: str = "crop", **extra: Any
) -> ModelConfig:
    output: dict[str, Any] = {"postprocess": postprocess, "labels": LABELS, **extra}
    color = "RGB" if shape[0] == 3 else "L"
    data = {
        "input": {"shape": list(shape), "color": color},
        "preprocess": {"resize": resize, "mean": [0.0] * shape[0], "std": [1.0] * shape[0]},
        "output": output,
    }
    return parse_config("m", data)


def _requests(*geometries: Geometry | None) -> Any:
    return [SimpleNamespace(geometry=g, task_id=f"t{i}") for i, g in enumerate(geometries)]


# -- detection -----------------------------------------------------------------------------------


def _part(boxes: list[list[float]], scores: list[list[float]]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes), "scores": torch.tensor(scores)}


def test_detection_thresholds_suppresses_per_class_and_ranks_best_first() -> None:
    detect = Detect(_config("detection"))
    part = _part(
        [[0, 0, 10, 10], [1, 1, 11, 11], [1, 1, 11, 11], [20, 20, 30, 30]],
        [[0.9, 0, 0], [0.8, 0, 0], [0, 0.7, 0], [0, 0, 0.2]],  # last is under 0.3
    )
    got = detect(Parts([part]), _requests(None))[0]
    # box 1 overlaps box 0 in the same class: suppressed; box 2 is another class: kept
    assert got == [
        {"box": [0.0, 0.0, 10.0, 10.0], "label": "circle", "score": pytest.approx(0.9)},
        {"box": [1.0, 1.0, 11.0, 11.0], "label": "square", "score": pytest.approx(0.7)},
    ]


def test_one_box_may_stand_for_several_classes_and_max_detections_caps_the_list() -> None:
    config = _config("detection", detection={"max_detections": 2, "score_threshold": 0.1})
    part = _part([[0, 0, 4, 4], [10, 10, 14, 14]], [[0.5, 0.4, 0.3], [0.2, 0.1, 0.05]])
    got = Detect(config)(Parts([part]), _requests(None))[0]
    assert [(d["label"], round(d["score"], 3)) for d in got] == [("circle", 0.5), ("square", 0.4)]


@pytest.mark.parametrize("mode", ["crop", "letterbox", "stretch"])
def test_detection_boxes_come_back_in_the_original_images_pixels(mode: str) -> None:
    g = fit_geometry((160, 60), (32, 24), mode)
    original = np.array([60.0, 20.0, 100.0, 40.0])
    in_model = original.copy()
    in_model[0::2] = in_model[0::2] * g.scale_x + g.offset_x
    in_model[1::2] = in_model[1::2] * g.scale_y + g.offset_y
    part = _part([in_model.tolist()], [[0.0, 0.95, 0.0]])
    got = Detect(_config("detection"))(Parts([part, part]), _requests(g, None))
    np.testing.assert_allclose(got[0][0]["box"], original, rtol=1e-6)
    np.testing.assert_allclose(got[1][0]["box"], np.clip(in_model, 0, [32, 24, 32, 24]), rtol=1e-6)


def test_detection_refuses_outputs_it_cannot_read() -> None:
    detect = Detect(_config("detection"))
    with pytest.raises(ModelError, match=r"detection needs the model output 'scores'"):
        detect(Parts([{"boxes": torch.zeros(2, 4)}]), _requests(None))
    with pytest.raises(ModelError, match=r"scores must be \[A, 3\] per input .*got \(2, 2\)"):
        detect(Parts([_part([[0, 0, 1, 1]] * 2, [[0.5, 0.5]] * 2)]), _requests(None))
    with pytest.raises(ModelError, match=r"needs the outputs 'boxes' and 'scores', got one tensor"):
        detect(torch.zeros(1, 4), _requests(None))


def test_empty_detections_are_an_empty_list() -> None:
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0, 3)}
    got = Detect(_config("detection"))(Parts([empty]), _requests(None))
    assert got == [[]]


# -- segmentation --------------------------------------------------------------------------------


def _rectangle(size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[box[1] : box[3], box[0] : box[2]] = 1
    return mask


@pytest.mark.parametrize("mode", ["crop", "letterbox", "stretch"])
@pytest.mark.parametrize("size", [(160, 60), (60, 160)])
def test_segmentation_is_returned_at_the_original_size_and_place(
    mode: str, size: tuple[int, int]
) -> None:
    """A 'segmenter' that labels white pixels 1: its mask, read back at the original's pixels,
    is the original's white rectangle (up to the pixel that resampling blurs at each edge)."""
    w, h = size
    box = (w // 3, h // 3, w * 2 // 3, h * 2 // 3)
    truth = _rectangle(size, box)
    config = _config("segmentation", shape=(1, 24, 32), resize=mode)
    spec = config.input_spec(1)
    assert spec.geometry  # producers are told to record it
    tensor, g = fitted_tensor(Image.fromarray(truth * 255), spec, max_pixels=10**7)
    white = torch.from_numpy(tensor[0].astype(np.float32) / 255.0)
    logits = torch.stack([0.5 - white, white - 0.5])[None]  # [1, 2, H, W]
    mask = Segment(config)(logits, _requests(g))[0]
    assert mask.shape == (h, w) and mask.dtype == np.uint8
    # every original pixel at least 2 model pixels from an edge of the rectangle agrees
    edge = 2.0 / min(g.scale_x, g.scale_y)
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    near = np.zeros_like(truth, dtype=bool)
    for x in (box[0], box[2]):
        near |= np.abs(xs - x) < edge
    for y in (box[1], box[3]):
        near |= np.abs(ys - y) < edge
    # what a crop cut away takes its nearest kept pixel's label: compared where it was kept
    in_x, in_y = xs * g.scale_x + g.offset_x, ys * g.scale_y + g.offset_y
    kept = (in_x >= 0) & (in_x < 32) & (in_y >= 0) & (in_y < 24)
    assert kept.mean() > (0.25 if mode == "crop" else 0.999)
    assert np.array_equal(mask[kept & ~near], truth[kept & ~near])
    assert mask.sum() > 0


def test_segmentation_of_a_lower_resolution_map_and_many_classes() -> None:
    config = _config("segmentation", shape=(1, 8, 8))
    logits = torch.zeros(1, 300, 4, 4)
    logits[0, 299, 2:, :] = 1.0  # bottom half: class 299
    mask = Segment(config)(Parts([{"logits": logits[0]}]), _requests(Geometry.identity(8, 8)))[0]
    assert mask.dtype == np.int32 and mask.shape == (8, 8)
    assert (mask[4:] == 299).all() and (mask[:4] == 0).all()


def test_segmentation_refuses_logits_without_classes_and_height() -> None:
    with pytest.raises(ModelError, match=r"logits must be \[C, H, W\] per input, got \(5,\)"):
        Segment(_config("segmentation"))(torch.zeros(2, 5), _requests(None, None))


def test_the_factory_picks_the_configured_kind() -> None:
    assert isinstance(make_postprocessor(_config("detection")), Detect)
    assert isinstance(make_postprocessor(_config("segmentation")), Segment)


def test_segmentation_labels_are_the_first_maximum_like_argmax() -> None:
    logits = torch.randn(3, 5, 6, 7)
    logits[0, :, 0, 0] = 0.0  # a tie everywhere: class 0
    logits[1, 2:4, 1, 1] = 9.0  # a tie between 2 and 3: class 2
    config = _config("segmentation", shape=(3, 6, 7))
    masks = Segment(config)(logits, _requests(None, None, None))
    want = logits.argmax(dim=1).numpy()
    for mask, expected in zip(masks, want, strict=True):
        np.testing.assert_array_equal(mask, expected)
    assert masks[0][0, 0] == 0 and masks[1][1, 1] == 2
