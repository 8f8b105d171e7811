"""Labelled synthetic images of simple shapes.

Used to train the ``shapes`` example model and by the demo producer to make fresh
test images. Deliberately torch-free (numpy + PIL only) so the producer does not
need torch installed.

Every shape is inscribed in a circle of radius ``r`` around its centre, and that
circle is kept inside the central ``min(w, h)`` square of the image. A
"resize short side, then centre-crop" preprocessing therefore never cuts the shape,
whatever the aspect ratio of ``size``.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "star")

# Shape radius as a fraction of the central square's side. The lower bound keeps the
# ring's hole and the star's points a few pixels wide after downscaling to 32x32.
_MIN_RADIUS = 0.22
_MAX_RADIUS = 0.42
_RING_HOLE = 0.55  # inner / outer radius of the ring
_STAR_INNER = 0.42  # inner / outer radius of the star's concave vertices
_CROSS_HALF_WIDTH = 0.32  # arm half-width / radius
_MIN_LUMA_GAP = 70.0  # minimum |luma(fg) - luma(bg)| so shapes never vanish
_NOISE_SIGMA = 6.0  # per-pixel Gaussian noise, in uint8 units

Point = tuple[float, float]
Geometry = tuple[float, float, float, float]  # centre x, centre y, radius, rotation


def _luma(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _colours(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Random background and shape colours with enough luminance contrast."""
    bg = rng.integers(0, 256, size=3)
    while True:  # rejection sampling; a valid colour exists for any background
        fg = rng.integers(0, 256, size=3)
        if abs(_luma(fg) - _luma(bg)) >= _MIN_LUMA_GAP:
            return tuple(int(v) for v in bg), tuple(int(v) for v in fg)


def _polar(cx: float, cy: float, radii: list[float], angles: np.ndarray) -> list[Point]:
    pairs = zip(radii, angles, strict=True)
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for r, a in pairs]


def _regular(cx: float, cy: float, r: float, n: int, rot: float) -> list[Point]:
    angles = rot + np.arange(n) * (2 * math.pi / n)
    return _polar(cx, cy, [r] * n, angles)


def _star(cx: float, cy: float, r: float, rot: float) -> list[Point]:
    angles = rot + np.arange(10) * (math.pi / 5)
    return _polar(cx, cy, [r, r * _STAR_INNER] * 5, angles)


def _cross(cx: float, cy: float, r: float, rot: float) -> list[Point]:
    # Plus sign whose outermost corners lie exactly on the radius-r circle.
    w = r * _CROSS_HALF_WIDTH
    arm = math.sqrt(r * r - w * w)
    outline = [
        (w, arm),
        (w, w),
        (arm, w),
        (arm, -w),
        (w, -w),
        (w, -arm),
        (-w, -arm),
        (-w, -w),
        (-arm, -w),
        (-arm, w),
        (-w, w),
        (-w, arm),
    ]
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in outline]


def _draw(
    draw: ImageDraw.ImageDraw, label: int, geom: Geometry, fg: tuple[int, ...], bg: tuple[int, ...]
) -> None:
    cx, cy, r, rot = geom
    name = CLASSES[label]
    if name in ("circle", "ring"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)
        if name == "ring":
            h = r * _RING_HOLE
            draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=bg)
    elif name == "square":
        draw.polygon(_regular(cx, cy, r, 4, rot), fill=fg)
    elif name == "triangle":
        draw.polygon(_regular(cx, cy, r, 3, rot), fill=fg)
    elif name == "cross":
        draw.polygon(_cross(cx, cy, r, rot), fill=fg)
    else:
        draw.polygon(_star(cx, cy, r, rot), fill=fg)


def _geometry(rng: np.random.Generator, size: tuple[int, int]) -> Geometry:
    """Centre, radius and rotation of a shape kept inside the central square."""
    w, h = size
    side = min(w, h)
    r = side * rng.uniform(_MIN_RADIUS, _MAX_RADIUS)
    slack = max(side / 2 - r - 1.0, 0.0)  # 1 px margin so edges are never clipped
    dx, dy = rng.uniform(-slack, slack, size=2)
    return w / 2 + float(dx), h / 2 + float(dy), r, rng.uniform(0, 2 * math.pi)


def draw_shape(
    label: int, rng: np.random.Generator, size: tuple[int, int] = (64, 64)
) -> Image.Image:
    """Draw one RGB image of ``CLASSES[label]``; ``size`` is (width, height)."""
    if not 0 <= label < len(CLASSES):
        raise ValueError(f"label must be in [0, {len(CLASSES)}), got {label}")
    bg, fg = _colours(rng)
    img = Image.new("RGB", size, bg)
    _draw(ImageDraw.Draw(img), label, _geometry(rng, size), fg, bg)
    noise = rng.normal(0.0, _NOISE_SIGMA, size=(size[1], size[0], 3))
    pixels = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def make_images(
    n: int, seed: int, size: tuple[int, int] = (64, 64)
) -> tuple[list[Image.Image], np.ndarray]:
    """``n`` images with balanced, shuffled labels (int64), deterministic per ``seed``."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n, dtype=np.int64) % len(CLASSES))
    images = [draw_shape(int(label), rng, size) for label in labels]
    return images, labels
