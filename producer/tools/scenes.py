"""Synthetic scenes for the detector and segmenter examples: 1-4 filled shapes per image, with
their boxes, labels and a per-pixel class mask.

Torch-free (numpy + PIL only, like ``synth``) so a producer can make fresh images to submit.

A shape's *size* is the diameter of the circle it is inscribed in (as in ``synth``), drawn between
10 % and 40 % of the image's shorter side. Shapes never overlap (their circles are kept apart), so
every shape is fully visible and its box is exact. Backgrounds are plain or noisy (per-pixel
Gaussian noise, sometimes a colour gradient); every shape contrasts with the background in luma.
Any image size works: training uses several aspect ratios, held-out sets use other seeds and sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from inferq.producer.tools.synth import _MIN_LUMA_GAP, _luma, _regular

#: Class names in label order; the segmenter's class ``i + 1`` is ``SCENE_CLASSES[i]`` (0 = background).
SCENE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle")
MIN_SHAPES, MAX_SHAPES = 1, 4
MIN_SIZE, MAX_SIZE = 0.10, 0.40  # shape diameter / image's shorter side
_GAP = 2.0  # px kept free between two shapes' circles
_TRIES = 50  # placement attempts per shape before trying a smaller one
_MAX_NOISE = 24.0  # per-pixel noise sigma of a noisy background, uint8 units


@dataclass(frozen=True)
class Scene:
    """One image with what is in it. ``boxes`` are float xyxy pixel edges (the shape's polygon or
    circle extents), ``labels`` index ``SCENE_CLASSES``, ``mask`` is uint8 (H, W): 0 background,
    ``label + 1`` where a shape was drawn."""

    image: Image.Image
    boxes: np.ndarray  # float32 [N, 4]
    labels: np.ndarray  # int64 [N]
    mask: np.ndarray  # uint8 [H, W]


@dataclass(frozen=True)
class _Shape:
    label: int
    cx: float
    cy: float
    r: float
    rot: float

    def outline(self) -> list[tuple[float, float]]:
        corners = 4 if self.label == 1 else 3
        return _regular(self.cx, self.cy, self.r, corners, self.rot)

    def box(self) -> tuple[float, float, float, float]:
        if self.label == 0:
            return self.cx - self.r, self.cy - self.r, self.cx + self.r, self.cy + self.r
        xs, ys = zip(*self.outline(), strict=True)
        return min(xs), min(ys), max(xs), max(ys)

    def draw(self, draw: ImageDraw.ImageDraw, fill: int | tuple[int, ...]) -> None:
        if self.label == 0:
            draw.ellipse(self.box(), fill=fill)
        else:
            draw.polygon(self.outline(), fill=fill)


def _place(rng: np.random.Generator, size: tuple[int, int], count: int) -> list[_Shape]:
    """Up to ``count`` non-overlapping shapes fully inside the frame (at least one always fits)."""
    w, h = size
    short = min(w, h)
    shapes: list[_Shape] = []
    for _ in range(count):
        for attempt in range(_TRIES):
            # Later attempts draw from the lower part of the size range, so crowded frames fill.
            high = MAX_SIZE - (MAX_SIZE - MIN_SIZE) * attempt / _TRIES
            r = short * rng.uniform(MIN_SIZE, high) / 2
            cx, cy = rng.uniform(r + 1, w - r - 1), rng.uniform(r + 1, h - r - 1)
            if all(math.hypot(cx - s.cx, cy - s.cy) >= r + s.r + _GAP for s in shapes):
                label = int(rng.integers(len(SCENE_CLASSES)))
                shapes.append(_Shape(label, cx, cy, r, rng.uniform(0, 2 * math.pi)))
                break
    return shapes


def _background(rng: np.random.Generator, size: tuple[int, int], bg: np.ndarray) -> np.ndarray:
    """float32 (H, W, 3): plain, noisy, or a noisy gradient around ``bg``."""
    w, h = size
    pixels = np.broadcast_to(bg.astype(np.float32), (h, w, 3)).copy()
    kind = rng.integers(3)
    if kind == 2:  # a gentle linear gradient, never enough to erase the luma gap
        ramp = np.linspace(-1.0, 1.0, w if rng.integers(2) else h, dtype=np.float32)
        ramp = ramp[None, :, None] if ramp.size == w else ramp[:, None, None]
        pixels += ramp * rng.uniform(-20, 20, size=3).astype(np.float32)
    if kind >= 1:
        pixels += _noise(rng, pixels.shape, rng.uniform(4, _MAX_NOISE))
    return pixels


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    noise = rng.standard_normal(shape, dtype=np.float32)  # float32 draws: 2x cheaper than normal()
    noise *= np.float32(sigma)
    return noise


def _shape_colour(rng: np.random.Generator, bg: np.ndarray) -> tuple[int, ...]:
    while True:  # rejection sampling; a valid colour exists for any background
        fg = rng.integers(0, 256, size=3)
        if abs(_luma(fg) - _luma(bg)) >= _MIN_LUMA_GAP:
            return tuple(int(v) for v in fg)


def draw_scene(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    """One scene of ``size`` (width, height)."""
    bg = rng.integers(0, 256, size=3)
    shapes = _place(rng, size, int(rng.integers(MIN_SHAPES, MAX_SHAPES + 1)))
    ids = Image.new("L", size, 0)  # shape i covers the pixels where ids == i + 1
    for i, shape in enumerate(shapes):
        shape.draw(ImageDraw.Draw(ids), i + 1)
    ids_np = np.asarray(ids, dtype=np.uint8)
    pixels = _background(rng, size, bg)
    colours = np.array([_shape_colour(rng, bg) for _ in shapes], dtype=np.float32)
    covered = ids_np > 0
    pixels[covered] = colours.reshape(-1, 3)[ids_np[covered] - 1]
    if rng.integers(2):  # noise over the shapes too, on half of the images
        pixels += _noise(rng, pixels.shape, 6.0)
    np.clip(pixels, 0, 255, out=pixels)
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    classes = np.array([0] + [s.label + 1 for s in shapes], dtype=np.uint8)
    boxes = np.array([s.box() for s in shapes], dtype=np.float32).reshape(-1, 4)
    labels = np.array([s.label for s in shapes], dtype=np.int64)
    return Scene(image, boxes, labels, classes[ids_np])


def make_scenes(n: int, seed: int, size: tuple[int, int]) -> list[Scene]:
    """``n`` scenes of ``size`` (width, height), deterministic per ``seed``."""
    rng = np.random.default_rng(seed)
    return [draw_scene(rng, size) for _ in range(n)]
