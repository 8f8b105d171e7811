"""The resize geometry a producer applied, so that a worker can map results back to the original.

An original image of ``width x height`` pixels became the model input by an axis-aligned affine
map in pixel-edge coordinates: ``input_x = original_x * scale_x + offset_x`` (and so for y).
:func:`fit_geometry` computes it with the same arithmetic as the producer's ``fit()`` (Pillow's
``ImageOps.fit`` for ``crop``, ``ImageOps.pad`` for ``letterbox``, a plain resize for
``stretch``); the worker inverts it for detection boxes and segmentation masks. It travels in
the message as the kwarg ``geometry``: ``{"size": [w, h], "scale": [sx, sy], "offset": [dx, dy]}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from inferq.shared.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class Geometry:
    width: int  # the original image's size, in pixels
    height: int
    scale_x: float
    scale_y: float
    offset_x: float = 0.0
    offset_y: float = 0.0

    @classmethod
    def identity(cls, width: int, height: int) -> Geometry:
        """The geometry of an input sent already at the model's size."""
        return cls(width, height, 1.0, 1.0)

    def to_wire(self) -> dict[str, list[float]]:
        return {
            "size": [self.width, self.height],
            "scale": [self.scale_x, self.scale_y],
            "offset": [self.offset_x, self.offset_y],
        }

    @classmethod
    def from_wire(cls, value: Any) -> Geometry:
        """The geometry a message carries; InvalidInput naming what is wrong with it."""
        if not isinstance(value, dict):
            raise InvalidInput(f"geometry must be an object, got {type(value).__name__}")
        size, scale, offset = (_pair(value, k) for k in ("size", "scale", "offset"))
        if not all(float(v).is_integer() and v >= 1 for v in size) or min(scale) <= 0:
            raise InvalidInput(
                f"geometry must have a size of whole pixels >= 1 and scales > 0, got size "
                f"{size}, scale {scale}"
            )
        return cls(int(size[0]), int(size[1]), scale[0], scale[1], offset[0], offset[1])

    def boxes_to_original(self, boxes: np.ndarray) -> np.ndarray:
        """xyxy boxes in model-input pixels as boxes in the original's pixels (clipped to it)."""
        out = np.empty_like(boxes, dtype=np.float64)
        out[..., 0::2] = (boxes[..., 0::2] - self.offset_x) / self.scale_x
        out[..., 1::2] = (boxes[..., 1::2] - self.offset_y) / self.scale_y
        np.clip(out[..., 0::2], 0.0, self.width, out=out[..., 0::2])
        np.clip(out[..., 1::2], 0.0, self.height, out=out[..., 1::2])
        return out

    def source_pixels(
        self, input_size: tuple[int, int], map_size: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """For each original pixel's centre, the row and column of a ``map_size`` (w, h) map
        over the ``input_size`` (w, h) model input it falls in (nearest, clipped to the map).
        Read a per-pixel map with ``map.take(rows, axis=0).take(cols, axis=1)``."""
        (in_w, in_h), (map_w, map_h) = input_size, map_size
        xs = ((np.arange(self.width) + 0.5) * self.scale_x + self.offset_x) * (map_w / in_w)
        ys = ((np.arange(self.height) + 0.5) * self.scale_y + self.offset_y) * (map_h / in_h)
        cols = np.clip(np.floor(xs), 0, map_w - 1).astype(np.intp)
        rows = np.clip(np.floor(ys), 0, map_h - 1).astype(np.intp)
        return rows, cols

    def after_reduction(self, width: int, height: int) -> Geometry:
        """This geometry, applied to an image first reduced from ``width x height`` to this one's
        original size (a JPEG decoded at a reduced DCT scale): its original is the full size."""
        rx, ry = self.width / width, self.height / height
        return Geometry(
            width, height, self.scale_x * rx, self.scale_y * ry, self.offset_x, self.offset_y
        )


def _pair(value: dict[str, Any], key: str) -> tuple[float, float]:
    pair = value.get(key)
    ok = isinstance(pair, list | tuple) and len(pair) == 2
    if not ok or not all(_finite(v) for v in pair):  # type: ignore[union-attr]
        raise InvalidInput(f"geometry.{key} must be two finite numbers, got {pair!r}")
    return float(pair[0]), float(pair[1])  # type: ignore[index]


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def fit_geometry(size: tuple[int, int], target: tuple[int, int], mode: str) -> Geometry:
    """The geometry of the producer's ``fit(img, target, mode)`` for an image of ``size``
    (both (w, h)), computed as Pillow computes it."""
    (w, h), (tw, th) = size, target
    if (w, h) == (tw, th):
        return Geometry.identity(w, h)
    if mode == "stretch":
        return Geometry(w, h, tw / w, th / h)
    if mode == "crop":
        return _crop(w, h, tw, th)
    return _letterbox(w, h, tw, th)


def _crop(w: int, h: int, tw: int, th: int) -> Geometry:
    """``ImageOps.fit``: the centred box of the target's aspect ratio, resized to the target."""
    ratio, target_ratio = w / h, tw / th
    if ratio == target_ratio:
        box_w, box_h = float(w), float(h)
    elif ratio >= target_ratio:
        box_w, box_h = target_ratio * h, float(h)
    else:
        box_w, box_h = float(w), w / target_ratio
    left, top = (w - box_w) * 0.5, (h - box_h) * 0.5
    sx, sy = tw / box_w, th / box_h
    return Geometry(w, h, sx, sy, -left * sx, -top * sy)


def _letterbox(w: int, h: int, tw: int, th: int) -> Geometry:
    """``ImageOps.pad``: ``contain`` (the aspect kept, the long side rounded to fit), then pasted
    at the rounded centre of a black canvas."""
    rw, rh = tw, th
    ratio, target_ratio = w / h, tw / th
    if ratio > target_ratio:
        rh = round(h / w * tw)
    elif ratio < target_ratio:
        rw = round(w / h * th)
    dx = round((tw - rw) * 0.5) if rw != tw else 0
    dy = round((th - rh) * 0.5) if rw == tw and rh != th else 0
    return Geometry(w, h, rw / w, rh / h, float(dx), float(dy))
