"""Training ``SceneNet`` (the ``detector`` and the ``segmenter``) and the detector's evaluation.

Detection targets are CenterNet's: per class a Gaussian bump on the grid cell holding a shape's
centre (focal loss), and at that cell the centre's offset in the cell and the box's log size
(L1); the foreground head learns the drawn mask (binary cross-entropy). Augmentation applies the
eight flips/quarter-turns of the square frame to images, masks and target maps together (every
shape class is symmetric under them, and they turn letterbox bands into bands).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from inferq.producer.tools.scenes import SCENE_CLASSES
from inferq.worker.examples.evaluate import MatchCounts, detections
from inferq.worker.examples.scene_data import (
    HELDOUT_SIZES,
    SCENE_MEAN,
    SCENE_STD,
    TRAIN_SIZES,
    SceneSet,
    boxes_to_original,
    scene_set,
)
from inferq.worker.examples.scene_nets import DETECTOR_STRIDE, SceneNet

Log = Callable[[str], None]
NUM_CLASSES = len(SCENE_CLASSES)
# Map channels: heat per class, offset x/y in [0, 1), log w/h in cells, 1 where a centre is.
_OFF, _SIZE, _POS = NUM_CLASSES, NUM_CLASSES + 2, NUM_CLASSES + 4


@dataclass(frozen=True)
class DetectorTraining:
    # Measured trade-off (README): 7 epochs fall under the detector's 90 % recall, 8 clear it.
    train_per_size: int = 300
    epochs: int = 8
    batch: int = 16
    lr: float = 8e-3
    train_seed: int = 2001
    heldout_per_size: int = 150
    heldout_seed: int = 9101


def normalise(images: np.ndarray | Tensor) -> Tensor:
    x = torch.as_tensor(images).float().div_(255.0)
    mean = torch.tensor(SCENE_MEAN).view(1, -1, 1, 1)
    std = torch.tensor(SCENE_STD).view(1, -1, 1, 1)
    return (x - mean) / std


def _gaussian(grid: int, cx: int, cy: int, sigma: float) -> np.ndarray:
    coords = np.arange(grid, dtype=np.float32)
    gx = np.exp(-((coords - cx) ** 2) / (2 * sigma**2))
    gy = np.exp(-((coords - cy) ** 2) / (2 * sigma**2))
    return gy[:, None] * gx[None, :]


def target_maps(boxes: np.ndarray, labels: np.ndarray, side: int) -> np.ndarray:
    """float32 [C + 5, G, G] for one image's input-pixel boxes (G = side / stride)."""
    grid = side // DETECTOR_STRIDE
    maps = np.zeros((NUM_CLASSES + 5, grid, grid), dtype=np.float32)
    for (x1, y1, x2, y2), label in zip(boxes, labels, strict=True):
        cx, cy = (x1 + x2) / 2 / DETECTOR_STRIDE, (y1 + y2) / 2 / DETECTOR_STRIDE
        i, j = min(int(cy), grid - 1), min(int(cx), grid - 1)
        w, h = (x2 - x1) / DETECTOR_STRIDE, (y2 - y1) / DETECTOR_STRIDE
        sigma = max(min(w, h) / 6, 0.5)
        maps[label] = np.maximum(maps[label], _gaussian(grid, j, i, sigma))
        maps[_OFF:_POS, i, j] = (cx - j, cy - i, np.log(w), np.log(h))
        maps[_POS, i, j] = 1.0
    return maps


def _augment(x: Tensor, maps: Tensor) -> tuple[Tensor, Tensor]:
    """One random element of the square's symmetry group, applied to images and maps alike."""
    if torch.rand(()) < 0.5:  # transpose: swaps x and y, so offsets and sizes swap too
        x, maps = x.transpose(2, 3), maps.transpose(2, 3)
        maps = maps[:, [0, 1, 2, _OFF + 1, _OFF, _SIZE + 1, _SIZE, _POS]]
    for axis, off in ((3, _OFF), (2, _OFF + 1)):
        if torch.rand(()) < 0.5:  # mirror: a centre at offset o in its cell lands at 1 - o
            x, maps = x.flip(axis), maps.flip(axis)
            maps = maps.clone()
            maps[:, off] = 1.0 - maps[:, off]
    return x, maps


def detector_loss(raw: Tensor, maps: Tensor) -> Tensor:
    c = NUM_CLASSES
    pos = maps[:, _POS : _POS + 1]
    n = pos.sum().clamp(min=1.0)
    heat = torch.sigmoid(raw[:, :c]).clamp(1e-4, 1 - 1e-4)
    target = maps[:, :c]
    peak = (target >= 1.0).float()
    focal = -(
        peak * (1 - heat) ** 2 * heat.log()
        + (1 - peak) * (1 - target) ** 4 * heat**2 * (1 - heat).log()
    )
    offset = (torch.sigmoid(raw[:, _OFF:_SIZE]) - maps[:, _OFF:_SIZE]).abs() * pos
    size = (raw[:, _SIZE:_POS] - maps[:, _SIZE:_POS]).abs() * pos
    # Which class, at the centres only: the heat's per-class sigmoids learn "is there a shape"
    # quickly, telling circles from squares slowly; a softmax across classes sharpens that.
    at_centre = pos[:, 0] > 0
    logits = raw[:, :c].permute(0, 2, 3, 1)[at_centre]
    labels = target.permute(0, 2, 3, 1)[at_centre].argmax(-1)
    which = F.cross_entropy(logits, labels, reduction="sum") if len(labels) else raw.sum() * 0
    return (focal.sum() + offset.sum() + 0.5 * size.sum() + which) / n


def _training_tensors(data: SceneSet) -> tuple[Tensor, Tensor]:
    """Images with the foreground mask as a 4th channel (so augmentation moves both), and maps."""
    side = data.images.shape[-1]
    x = torch.cat([normalise(data.images), torch.from_numpy(data.masks > 0)[:, None].float()], 1)
    maps = np.stack(
        [target_maps(b, lab, side) for b, lab in zip(data.boxes, data.labels, strict=True)]
    )
    return x, torch.from_numpy(maps)


def _step_loss(model: SceneNet, x: Tensor, maps: Tensor) -> Tensor:
    x, maps = _augment(x, maps)
    det, fg = model.raw(x[:, :3].contiguous(memory_format=torch.channels_last))
    return detector_loss(det, maps) + F.binary_cross_entropy_with_logits(fg, x[:, 3:])


def train_scene_net(
    cfg: DetectorTraining = DetectorTraining(), seed: int = 0, log: Log = print
) -> SceneNet:
    """The network behind both the detector and the segmenter, trained once, on one thread."""
    with _one_thread():
        return _train_scene_net(cfg, seed, log)


@contextmanager
def _one_thread() -> Iterator[None]:
    """One thread gives the same network on every machine: with more, the order of the float
    reductions in the convolutions' backward pass follows the thread count, and so does the net.
    Measured on held-out scenes: segmenter mIoU 0.854 trained on one thread, 0.809 on two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_scene_net(cfg: DetectorTraining, seed: int, log: Log) -> SceneNet:
    start = time.perf_counter()
    torch.manual_seed(seed)
    x, maps = _training_tensors(scene_set(cfg.train_per_size, cfg.train_seed, TRAIN_SIZES))
    log(f"scenes: {len(x)} training scenes in {time.perf_counter() - start:.1f}s")
    # channels_last: oneDNN's NHWC kernels train these narrow convolutions ~1.5x faster on CPU.
    model = SceneNet(NUM_CLASSES)
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs lack it
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps = cfg.epochs * -(-len(x) // cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        total = 0.0
        for idx in torch.randperm(len(x)).split(cfg.batch):
            loss = _step_loss(model, x[idx], maps[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        log(f"scenes: epoch {epoch}/{cfg.epochs} loss {total / len(x):.4f}")
    log(f"scenes: trained in {time.perf_counter() - start:.1f}s")
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    return model.eval()


def heldout_scenes(cfg: DetectorTraining = DetectorTraining()) -> SceneSet:
    """Scenes the nets never saw: another seed, other (non-square) sizes."""
    return scene_set(cfg.heldout_per_size, cfg.heldout_seed, HELDOUT_SIZES)


@torch.no_grad()
def evaluate_detector(model: torch.nn.Module, data: SceneSet) -> MatchCounts:
    """Recall and false-box rate on ``data``, boxes mapped back to the original images."""
    counts = MatchCounts()
    for start in range(0, len(data.images), 64):
        out = model(normalise(data.images[start : start + 64]))
        for k in range(out["boxes"].shape[0]):
            i = start + k
            det = detections(out["boxes"][k].numpy(), out["scores"][k].numpy())
            original = boxes_to_original(det.boxes, data.geometry[i])
            scene = data.scenes[i]
            counts.add(type(det)(original, det.labels, det.scores), scene.boxes, scene.labels)
    return counts
