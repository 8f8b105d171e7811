"""The ``segmenter`` example's evaluation at the original image size (the letterbox undone, as the
worker's ``segmentation`` post-processing does). It is trained with the detector
(``detector.train_scene_net``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from inferq.producer.tools.scenes import SCENE_CLASSES
from inferq.worker.examples.detector import normalise
from inferq.worker.examples.evaluate import IoUCounts
from inferq.worker.examples.scene_data import Letterbox, SceneSet

NUM_CLASSES = len(SCENE_CLASSES) + 1  # 0 = background


def labels_at_original(logits: Tensor, box: Letterbox) -> np.ndarray:
    """One image's [C, S, S] logits -> uint8 class ids (H, W) of the original image: the argmax at
    the model's input size, read at each original pixel's centre (nearest), which is what the
    worker's ``segmentation`` post-processing returns."""
    labels = logits.argmax(0).to(torch.uint8).numpy()
    w, h = box.size
    cols = np.floor((np.arange(w) + 0.5) * box.scale_x + box.pad_x).astype(np.int64)
    rows = np.floor((np.arange(h) + 0.5) * box.scale_y + box.pad_y).astype(np.int64)
    side_h, side_w = labels.shape
    return labels.take(rows.clip(0, side_h - 1), axis=0).take(cols.clip(0, side_w - 1), axis=1)


@torch.no_grad()
def evaluate_segmenter(model: torch.nn.Module, data: SceneSet) -> IoUCounts:
    """Per-class IoU on ``data``, scored at each image's original size against its drawn mask."""
    counts = IoUCounts(NUM_CLASSES)
    for start in range(0, len(data.images), 64):
        logits = model(normalise(data.images[start : start + 64]))
        for k in range(logits.shape[0]):
            i = start + k
            counts.add(labels_at_original(logits[k], data.geometry[i]), data.scenes[i].mask)
    return counts
