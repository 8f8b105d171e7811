"""The ``segmenter`` example: training on the detector's scenes and held-out evaluation at the
original image size (the letterbox undone, as the worker's ``segmentation`` post-processing does)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from inferq.producer.tools.scenes import SCENE_CLASSES
from inferq.worker.examples.detector import normalise
from inferq.worker.examples.evaluate import IoUCounts
from inferq.worker.examples.scene_data import TRAIN_SIZES, Letterbox, SceneSet, scene_set
from inferq.worker.examples.scene_nets import SegmenterNet

Log = Callable[[str], None]
NUM_CLASSES = len(SCENE_CLASSES) + 1  # 0 = background


@dataclass(frozen=True)
class SegmenterTraining:
    train_per_size: int = 400
    epochs: int = 8
    batch: int = 32
    lr: float = 4e-3
    train_seed: int = 4001


def _augment(x: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """A random flip/quarter-turn of the square frame, to images and masks alike."""
    if torch.rand(()) < 0.5:
        x, masks = x.transpose(2, 3), masks.transpose(1, 2)
    for axis in (2, 3):
        if torch.rand(()) < 0.5:
            x, masks = x.flip(axis), masks.flip(axis - 1)
    return x.contiguous(memory_format=torch.channels_last), masks.contiguous()


def train_segmenter(
    cfg: SegmenterTraining = SegmenterTraining(), seed: int = 0, log: Log = print
) -> SegmenterNet:
    start = time.perf_counter()
    torch.manual_seed(seed)
    data = scene_set(cfg.train_per_size, cfg.train_seed, TRAIN_SIZES)
    x, masks = normalise(data.images), torch.from_numpy(data.masks).long()
    log(f"segmenter: {len(x)} training scenes in {time.perf_counter() - start:.1f}s")
    # channels_last: oneDNN's NHWC kernels train these narrow convolutions ~1.3x faster on CPU.
    model = SegmenterNet(NUM_CLASSES).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps = cfg.epochs * -(-len(x) // cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        total = 0.0
        for idx in torch.randperm(len(x)).split(cfg.batch):
            xb, mb = _augment(x[idx], masks[idx])
            loss = F.cross_entropy(model(xb), mb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        log(f"segmenter: epoch {epoch}/{cfg.epochs} loss {total / len(x):.4f}")
    log(f"segmenter: trained in {time.perf_counter() - start:.1f}s")
    return model.eval().to(memory_format=torch.contiguous_format)


def labels_at_original(logits: Tensor, box: Letterbox) -> np.ndarray:
    """One image's [C, S, S] logits -> uint8 class ids (H, W) of the original image: the letterbox
    band cut off, the content's logits resized bilinearly to the original size, argmax."""
    (cw, ch), (w, h) = box.content, box.size
    content = logits[:, box.pad_y : box.pad_y + ch, box.pad_x : box.pad_x + cw]
    resized = F.interpolate(content[None], size=(h, w), mode="bilinear", align_corners=False)
    return resized[0].argmax(0).to(torch.uint8).numpy()


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
