"""The scene networks' decoding and export, with untrained weights (no training here)."""

from __future__ import annotations

import io
import tomllib

import pytest
import torch

from inferq.worker.examples.scene_nets import (
    DETECTOR_STRIDE,
    DetectorNet,
    SceneNet,
    SegmenterNet,
    decode_boxes,
)
from inferq.worker.examples.structured import detector_config, script_bytes, segmenter_config

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


def _scripted(model: torch.nn.Module) -> torch.jit.ScriptModule:
    return torch.jit.load(io.BytesIO(script_bytes(model)))


@pytest.fixture(scope="module")
def net() -> SceneNet:
    torch.manual_seed(0)
    return SceneNet().eval()


def test_scripted_detector_returns_boxes_and_scores_for_any_batch(net: SceneNet) -> None:
    model = _scripted(DetectorNet(net))
    for batch in (1, 5):
        x = torch.randn(batch, 3, 128, 128)
        with torch.no_grad():
            out, eager = model(x), DetectorNet(net)(x)
        assert set(out) == {"boxes", "scores"}
        assert out["boxes"].shape == (batch, 256, 4) and out["scores"].shape == (batch, 256, 3)
        torch.testing.assert_close(out["boxes"], eager["boxes"])
        # One class per cell at most, probabilities in [0, 1].
        assert ((out["scores"] > 0).sum(-1) <= 1).all()
        assert out["scores"].min() >= 0 and out["scores"].max() <= 1


def test_decoded_boxes_sit_on_their_cells() -> None:
    geometry = torch.zeros(1, 4, 2, 3)  # offsets sigmoid(0) = 0.5, sizes exp(0) = 1 cell
    boxes = decode_boxes(geometry, DETECTOR_STRIDE, 6.0)[0]
    s = DETECTOR_STRIDE
    # Cell (row 1, column 2) is index 5: centre ((2.5) * s, (1.5) * s), one cell wide.
    expected = [2.5 * s - s / 2, 1.5 * s - s / 2, 2.5 * s + s / 2, 1.5 * s + s / 2]
    torch.testing.assert_close(boxes[5], torch.tensor(expected))


def test_scripted_segmenter_gives_logits_at_input_size(net: SceneNet) -> None:
    model = _scripted(SegmenterNet(net))
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        logits = model(x)
        torch.testing.assert_close(logits, SegmenterNet(net)(x))
    assert logits.shape == (2, 4, 128, 128)


def test_pixels_take_the_class_of_the_box_that_owns_them(net: SceneNet) -> None:
    seg = SegmenterNet(net, top_k=4, min_score=0.2)
    boxes = torch.tensor([[[0.0, 0.0, 20.0, 20.0], [16.0, 0.0, 40.0, 20.0], [60, 60, 70, 70]]])
    scores = torch.tensor([[[0.9, 0.0, 0.0], [0.0, 0.0, 0.8], [0.0, 0.1, 0.0]]])
    claims = seg._claims(boxes, scores, 80, 80)[0]
    owner = claims.argmax(0)
    assert owner[10, 10] == 0 and owner[10, 30] == 2  # inside one box each
    # In the overlap, column 18 lies deeper inside the second box (relative to its size).
    assert owner[10, 18] == 2 and owner[10, 16] == 0
    assert claims[:, 65, 65].max() == 0  # the third box scores under min_score
    assert claims[:, 50, 50].max() == 0  # no box at all


def test_scene_configs_follow_the_contract() -> None:
    det = tomllib.loads(detector_config())
    assert det["input"] == {"shape": [3, 128, 128], "dtype": "uint8", "color": "RGB"}
    assert det["preprocess"]["resize"] == "letterbox"
    assert det["output"]["postprocess"] == "detection"
    assert det["output"]["labels"] == ["circle", "square", "triangle"]
    assert det["output"]["detection"] == {
        "boxes": "boxes",
        "scores": "scores",
        "score_threshold": 0.3,
        "iou_threshold": 0.5,
        "max_detections": 100,
    }
    seg = tomllib.loads(segmenter_config())
    assert seg["output"]["postprocess"] == "segmentation"
    assert seg["output"]["segmentation"] == {"logits": "logits"}
    assert seg["output"]["labels"][0] == "background"
