"""Scenes (``inferq.producer.tools.scenes``) turned into what the detector and segmenter see: the
producer's letterbox to the model's square input, with the boxes and masks moved along, and back.

The letterbox goes through the producer's own ``fit`` (Pillow's ``ImageOps.pad``), so training
images are byte-identical to what a worker receives; ``letterbox_of`` restates its geometry (tested
against ``fit``) to move boxes and masks into the input frame and predictions back out of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from inferq.producer.preprocess import fit
from inferq.producer.tools.scenes import Scene, make_scenes

INPUT_SIDE = 128
SCENE_MEAN = (0.5, 0.5, 0.5)
SCENE_STD = (0.25, 0.25, 0.25)
# Several aspect ratios, both orientations, so the nets see the letterbox bands on every side
# and the downscale factors a producer applies; held-out sets use other sizes and seeds.
TRAIN_SIZES: tuple[tuple[int, int], ...] = (
    (128, 128),
    (160, 120),
    (120, 160),
    (192, 128),
    (128, 192),
    (144, 144),
)
HELDOUT_SIZES: tuple[tuple[int, int], ...] = ((200, 150), (150, 220))


@dataclass(frozen=True)
class Letterbox:
    """Where an image of ``size`` (w, h) lands in a letterboxed frame: x_in = x * scale_x + pad_x."""

    size: tuple[int, int]
    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int
    content: tuple[int, int]  # the resized image's (w, h) inside the frame


def letterbox_of(size: tuple[int, int], target: tuple[int, int]) -> Letterbox:
    """The geometry ``ImageOps.pad(img, target, centering=(0.5, 0.5))`` applies (Pillow 10-12)."""
    (w, h), (tw, th) = size, target
    if w * th == h * tw:
        content = (tw, th)
    elif w * th > h * tw:  # wider than the frame: full width, bands above and below
        content = (tw, round(h / w * tw))
    else:
        content = (round(w / h * th), th)
    pad = (round((tw - content[0]) * 0.5), round((th - content[1]) * 0.5))
    return Letterbox(size, content[0] / w, content[1] / h, pad[0], pad[1], content)


def boxes_to_input(boxes: np.ndarray, box: Letterbox) -> np.ndarray:
    scale = np.array([box.scale_x, box.scale_y] * 2, dtype=np.float32)
    return boxes * scale + np.array([box.pad_x, box.pad_y] * 2, dtype=np.float32)


def boxes_to_original(boxes: np.ndarray, box: Letterbox) -> np.ndarray:
    """Model-input xyxy back to the original image's pixels, clipped to it."""
    pad = np.array([box.pad_x, box.pad_y] * 2, dtype=np.float32)
    scale = np.array([box.scale_x, box.scale_y] * 2, dtype=np.float32)
    out = (boxes - pad) / scale
    w, h = box.size
    return np.clip(out, 0, np.array([w, h, w, h], dtype=np.float32))


def mask_to_input(mask: np.ndarray, box: Letterbox, target: tuple[int, int]) -> np.ndarray:
    resized = Image.fromarray(mask).resize(box.content, Image.Resampling.NEAREST)
    frame = Image.new("L", target, 0)
    frame.paste(resized, (box.pad_x, box.pad_y))
    return np.asarray(frame, dtype=np.uint8)


@dataclass(frozen=True)
class SceneSet:
    """Letterboxed scenes: ``images`` uint8 [N, 3, S, S], ``masks`` uint8 [N, S, S] in the input
    frame; ``boxes``/``labels`` per image in input pixels; ``scenes`` and ``geometry`` as drawn."""

    images: np.ndarray
    masks: np.ndarray
    boxes: tuple[np.ndarray, ...]
    labels: tuple[np.ndarray, ...]
    scenes: tuple[Scene, ...]
    geometry: tuple[Letterbox, ...]


def letterbox_scenes(scenes: Sequence[Scene], side: int = INPUT_SIDE) -> SceneSet:
    target = (side, side)
    geometry = [letterbox_of(s.image.size, target) for s in scenes]
    images = np.stack(
        [np.asarray(fit(s.image, target, "letterbox")).transpose(2, 0, 1) for s in scenes]
    )
    masks = np.stack(
        [mask_to_input(s.mask, g, target) for s, g in zip(scenes, geometry, strict=True)]
    )
    boxes = tuple(boxes_to_input(s.boxes, g) for s, g in zip(scenes, geometry, strict=True))
    return SceneSet(
        np.ascontiguousarray(images),
        masks,
        boxes,
        tuple(s.labels for s in scenes),
        tuple(scenes),
        tuple(geometry),
    )


def scene_set(per_size: int, seed: int, sizes: Sequence[tuple[int, int]]) -> SceneSet:
    """``per_size`` scenes of each size (seeds ``seed``, ``seed + 1``, ...), letterboxed."""
    scenes = [s for i, size in enumerate(sizes) for s in make_scenes(per_size, seed + i, size)]
    return letterbox_scenes(scenes)
