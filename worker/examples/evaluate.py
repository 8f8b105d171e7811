"""Reference post-processing and scoring for the scene examples, in numpy.

``detections`` is what the worker's ``detection`` post-processing does to a detector's output
(score threshold, per-class greedy NMS, best ``max_detections``); ``match`` scores detections
against the drawn shapes (greedy by score, same label, IoU >= 0.5); ``IoUCounts`` accumulates
per-class intersections and unions for segmentation. Kept here, beside the models, so the
examples' figures are computed the same way in-process and through a worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SCORE_THRESHOLD = 0.3
NMS_IOU = 0.5
MATCH_IOU = 0.5
MAX_DETECTIONS = 100


@dataclass(frozen=True)
class Detections:
    boxes: np.ndarray  # float32 [K, 4] xyxy
    labels: np.ndarray  # int64 [K]
    scores: np.ndarray  # float32 [K]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: [N, 4] x [M, 4] -> [N, M]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy NMS, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best, order = order[0], order[1:]
        keep.append(int(best))
        order = order[box_iou(boxes[best : best + 1], boxes[order])[0] <= iou]
    return np.array(keep, dtype=np.int64)


def detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    score_threshold: float = SCORE_THRESHOLD,
    iou: float = NMS_IOU,
    max_detections: int = MAX_DETECTIONS,
) -> Detections:
    """One image's [A, 4] boxes and [A, C] class scores -> thresholded, per-class NMS'd boxes."""
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for c in range(scores.shape[1]):
        idx = np.flatnonzero(scores[:, c] > score_threshold)
        kept = idx[nms(boxes[idx], scores[idx, c], iou)]
        found.append((boxes[kept], np.full(kept.size, c, np.int64), scores[kept, c]))
    all_boxes, all_labels, all_scores = (
        np.concatenate(parts) for parts in zip(*found, strict=True)
    )
    best = np.argsort(-all_scores, kind="stable")[:max_detections]
    return Detections(
        all_boxes[best].astype(np.float32), all_labels[best], all_scores[best].astype(np.float32)
    )


@dataclass
class MatchCounts:
    """Shapes drawn, shapes found (IoU >= ``MATCH_IOU`` and the right label), boxes reported."""

    shapes: int = 0
    found: int = 0
    boxes: int = 0

    def add(self, det: Detections, gt_boxes: np.ndarray, gt_labels: np.ndarray) -> None:
        self.shapes += len(gt_labels)
        self.boxes += len(det.labels)
        self.found += match(det, gt_boxes, gt_labels)

    @property
    def recall(self) -> float:
        return self.found / max(self.shapes, 1)

    @property
    def false_rate(self) -> float:
        """Reported boxes that match no shape, over all reported boxes."""
        return (self.boxes - self.found) / max(self.boxes, 1)


def match(det: Detections, gt_boxes: np.ndarray, gt_labels: np.ndarray) -> int:
    """How many drawn shapes a detection claims (each shape and each detection used once)."""
    if len(det.labels) == 0 or len(gt_labels) == 0:
        return 0
    ious = box_iou(det.boxes, gt_boxes)
    ious[det.labels[:, None] != gt_labels[None, :]] = 0.0
    taken = np.zeros(len(gt_labels), dtype=bool)
    for row in ious:  # detections are sorted by score
        candidates = np.where(taken, 0.0, row)
        best = int(candidates.argmax())
        if candidates[best] >= MATCH_IOU:
            taken[best] = True
    return int(taken.sum())


@dataclass
class IoUCounts:
    """Per-class pixel intersections and unions over a set of images, plus each image's mean IoU
    over the shape classes present in it (in its truth or its prediction)."""

    num_classes: int
    inter: np.ndarray = field(init=False)
    union: np.ndarray = field(init=False)
    per_image: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.inter = np.zeros(self.num_classes, dtype=np.int64)
        self.union = np.zeros(self.num_classes, dtype=np.int64)

    def add(self, pred: np.ndarray, truth: np.ndarray) -> None:
        classes = np.arange(self.num_classes)[:, None]
        p, t = pred.reshape(1, -1) == classes, truth.reshape(1, -1) == classes
        inter, union = (p & t).sum(1), (p | t).sum(1)
        self.inter += inter
        self.union += union
        present = union[1:] > 0
        if present.any():
            self.per_image.append(float((inter[1:][present] / union[1:][present]).mean()))

    def class_iou(self) -> np.ndarray:
        return self.inter / np.maximum(self.union, 1)

    @property
    def mean_iou(self) -> float:
        """Dataset mIoU: each class's IoU over all pixels of the set, averaged over all classes
        (background included), as in PASCAL VOC."""
        return float(self.class_iou().mean())

    @property
    def mean_image_iou(self) -> float:
        """The stricter per-image figure: shape classes only, averaged over images."""
        return float(np.mean(self.per_image)) if self.per_image else 0.0
