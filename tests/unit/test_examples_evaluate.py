"""The reference post-processing and scoring the scene examples' figures come from."""

from __future__ import annotations

import numpy as np

from inferq.worker.examples.evaluate import (
    Detections,
    IoUCounts,
    MatchCounts,
    box_iou,
    detections,
    match,
    nms,
)


def test_box_iou_known_values() -> None:
    a = np.array([[0, 0, 10, 10]], dtype=np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]], np.float32)
    np.testing.assert_allclose(box_iou(a, b)[0], [1.0, 50 / 150, 0.0, 0.0])


def test_nms_keeps_the_best_of_each_overlapping_group() -> None:
    boxes = np.array(
        [[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 4]], dtype=np.float32
    )
    scores = np.array([0.5, 0.9, 0.7, 0.8], dtype=np.float32)
    # Box 1 suppresses box 0 (IoU 0.82); box 3 overlaps box 1 by 0.36 only and stays.
    assert nms(boxes, scores, 0.5).tolist() == [1, 3, 2]


def test_detections_threshold_and_nms_per_class() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [40, 40, 50, 50]], dtype=np.float32)
    scores = np.array([[0.9, 0.8, 0.0], [0.6, 0.0, 0.0], [0.2, 0.0, 0.35]], dtype=np.float32)
    det = detections(boxes, scores, score_threshold=0.3, iou=0.5)
    # Class 0: box 1 suppressed by box 0; class 1 keeps its own box 0 (NMS is per class);
    # box 2's class-0 score is under the threshold, its class-2 score is not.
    assert det.labels.tolist() == [0, 1, 2]
    np.testing.assert_allclose(det.scores, [0.9, 0.8, 0.35])
    np.testing.assert_array_equal(det.boxes[2], boxes[2])
    assert len(detections(boxes, scores, max_detections=1).labels) == 1


def _det(boxes: list[list[float]], labels: list[int], scores: list[float]) -> Detections:
    return Detections(
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array(labels, np.int64),
        np.array(scores, np.float32),
    )


def test_match_needs_label_and_iou_and_uses_each_shape_once() -> None:
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=np.float32)
    gt_labels = np.array([0, 1])
    assert match(_det([[0, 0, 10, 10]], [0], [0.9]), gt, gt_labels) == 1
    assert match(_det([[0, 0, 10, 10]], [1], [0.9]), gt, gt_labels) == 0  # wrong label
    assert match(_det([[0, 0, 10, 4]], [0], [0.9]), gt, gt_labels) == 0  # IoU 0.4
    twice = _det([[0, 0, 10, 10], [0, 0, 10, 9]], [0, 0], [0.9, 0.8])
    assert match(twice, gt, gt_labels) == 1
    counts = MatchCounts()
    counts.add(twice, gt, gt_labels)
    assert (counts.shapes, counts.found, counts.boxes) == (2, 1, 2)
    assert counts.recall == 0.5 and counts.false_rate == 0.5


def test_iou_counts_dataset_and_per_image() -> None:
    truth = np.array([[0, 1], [1, 2]], dtype=np.uint8)
    pred = np.array([[0, 1], [2, 2]], dtype=np.uint8)
    counts = IoUCounts(3)
    counts.add(pred, truth)
    counts.add(truth, truth)
    # background: 2/2; class 1: (1 + 2) / (2 + 2); class 2: (1 + 1) / (2 + 1)
    np.testing.assert_allclose(counts.class_iou(), [1.0, 3 / 4, 2 / 3])
    assert abs(counts.mean_iou - np.mean([1.0, 3 / 4, 2 / 3])) < 1e-9
    assert abs(counts.mean_image_iou - np.mean([(1 / 2 + 1 / 2) / 2, 1.0])) < 1e-9


def test_served_results_are_scored_like_in_process_ones() -> None:
    from inferq.producer.tools.scenes import make_scenes
    from inferq.worker.examples.served import score_detections, score_segmentation, text_correct

    scenes = make_scenes(3, 1, (90, 60))
    perfect = [
        {
            "outputs": [
                {"box": b.tolist(), "label": ["circle", "square", "triangle"][lab], "score": 0.9}
                for b, lab in zip(s.boxes, s.labels, strict=True)
            ]
        }
        for s in scenes
    ]
    counts = score_detections(perfect, scenes)
    assert counts.found == counts.shapes == counts.boxes > 0
    first = perfect[0]["outputs"][0]
    first["label"] = "square" if first["label"] != "square" else "circle"
    assert score_detections(perfect, scenes).found == counts.shapes - 1
    masks = [{"outputs": s.mask} for s in scenes]
    assert score_segmentation(masks, scenes).mean_iou == 1.0
    assert (
        text_correct([{"outputs": [{"label": "BCA"}]}, {"outputs": [{"label": "ABC"}]}], [3, 1])
        == 1
    )
