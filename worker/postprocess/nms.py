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

import torch


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of every box in ``a`` [N, 4] with every box in ``b`` [M, 4]
    (xyxy); 0 where the union is empty."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes kept, best score first."""
    order = torch.argsort(scores, descending=True, stable=True)
    if order.numel() == 0:
        return order
    overlaps = (box_iou(boxes[order], boxes[order]) > iou_threshold).numpy()
    suppressed = [False] * len(order)
    kept: list[int] = []
    for i in range(len(order)):  # greedy: each kept box silences the lower ones it overlaps
        if suppressed[i]:
            continue
        kept.append(i)
        for j in overlaps[i, i + 1 :].nonzero()[0]:
            suppressed[i + 1 + j] = True
    return order[torch.tensor(kept, dtype=torch.long)]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS within each class (``torchvision.ops.batched_nms``'s contract)."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long)
    offsets = classes.to(boxes.dtype) * (boxes.max() - boxes.min() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)
