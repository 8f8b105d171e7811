"""Non-maximum suppression per class, in torch.

``torchvision.ops.batched_nms`` is the reference, but torchvision 0.28.0 (the release matching
torch 2.13.0) ships only CUDA-linked builds on the package index: beside the CPU torch its import
fails (``operator torchvision::nms does not exist``: ``_C.so`` needs ``libc10_cuda.so``). So this
is the same algorithm, tested against a plain reference implementation in
``tests/unit/test_nms.py``: boxes sorted by score, a box kept unless it overlaps a kept box of its
class by more than ``iou_threshold``; classes kept apart by offsetting each class's boxes beyond
every other's, as torchvision's ``batched_nms`` does.
"""

from __future__ import annotations

import numpy as np
import torch


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in ``a`` [N, 4] with every box in ``b`` [M, 4]
    (xyxy); 0 where the union is empty. In numpy: for the few hundred boxes a request keeps
    after its score threshold, a dozen torch calls cost more than the arithmetic."""
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(bottom_right - top_left, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes kept, best score first."""
    order = torch.argsort(scores, descending=True, stable=True)
    if order.numel() == 0:
        return order
    ranked = boxes[order].double().numpy()
    overlaps = box_iou(ranked, ranked) > iou_threshold
    keep = np.ones(len(ranked), dtype=bool)
    for i in range(len(ranked) - 1):  # greedy: each kept box silences the lower ones it overlaps
        if keep[i]:
            keep[i + 1 :] &= ~overlaps[i, i + 1 :]
    return order[torch.from_numpy(np.flatnonzero(keep))]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS within each class (``torchvision.ops.batched_nms``'s contract)."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long)
    offsets = classes.to(boxes.dtype) * (boxes.max() - boxes.min() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)
