"""worker/postprocess/nms.py against a plain reference: greedy NMS per class, written in Python
from its definition (torchvision's ``batched_nms`` contract), on random boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inferq.worker.postprocess.nms import batched_nms, box_iou, nms


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _reference(
    boxes: list[list[float]], scores: list[float], classes: list[int], thr: float
) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept: list[int] = []
    for i in order:
        if all(classes[k] != classes[i] or _iou(boxes[i], boxes[k]) <= thr for k in kept):
            kept.append(i)
    return kept


def _random(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (n // 2, 2))
    wh = rng.uniform(1, 40, (n // 2, 2))
    base = np.concatenate([xy, xy + wh], axis=1)
    # the other half: near copies, so that every threshold has boxes to suppress
    near = base + rng.uniform(-1.5, 1.5, base.shape)
    boxes = torch.tensor(np.concatenate([base, near]), dtype=torch.float32)
    scores = torch.tensor(rng.permutation(n) / n + 0.01, dtype=torch.float32)  # distinct
    classes = torch.tensor(rng.integers(0, 3, n))
    return boxes, scores, classes


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("threshold", [0.1, 0.5, 0.8])
def test_batched_nms_keeps_what_the_reference_keeps_in_score_order(
    seed: int, threshold: float
) -> None:
    boxes, scores, classes = _random(60, seed)
    got = batched_nms(boxes, scores, classes, threshold).tolist()
    want = _reference(boxes.tolist(), scores.tolist(), classes.tolist(), threshold)
    assert got == want
    assert 0 < len(got) < 60  # the case exercises suppression


def test_nms_alone_ignores_classes_and_empty_input_keeps_nothing() -> None:
    boxes, scores, _ = _random(40, 99)
    same = torch.zeros(40, dtype=torch.long)
    assert nms(boxes, scores, 0.5).tolist() == _reference(
        boxes.tolist(), scores.tolist(), [0] * 40, 0.5
    )
    assert batched_nms(boxes, scores, same, 0.5).tolist() == nms(boxes, scores, 0.5).tolist()
    assert (
        batched_nms(
            torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5
        ).numel()
        == 0
    )


def test_box_iou_matches_the_reference_and_degenerate_boxes_give_zero() -> None:
    boxes, _, _ = _random(10, 3)
    got = box_iou(boxes.double().numpy(), boxes.double().numpy())
    for i in range(10):
        for j in range(10):
            assert got[i, j] == pytest.approx(_iou(boxes[i].tolist(), boxes[j].tolist()), abs=1e-6)
    point = torch.tensor([[5.0, 5.0, 5.0, 5.0]])
    assert box_iou(point.numpy(), point.numpy()).item() == 0.0
