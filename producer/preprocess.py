"""Turn whatever a service holds into the model's uint8 CHW tensor, on the producer side.

Accepted inputs: a PIL image, an HWC uint8 array (H x W, H x W x 1, H x W x 3/4), a CHW array
(C in 1 or 3), encoded image bytes (PNG, JPEG, WebP, ...), a path, or a torch tensor (duck-typed:
anything with ``.numpy()``; this module never imports torch). Normalisation to float happens on the
worker's device, so the wire carries one byte per value.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from inferq.shared.errors import InvalidInput
from inferq.shared.geometry import Geometry, fit_geometry
from inferq.shared.spec import InputSpec

ImageLike = Any
#: Grayscale modes holding up to 16 bits per pixel ("I" is 32-bit signed: PNG and TIFF decode
#: 16-bit images to it, so its values are checked to lie in 0..65535).
_16_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
#: A JPEG is decoded no smaller than this many times the model's input on each side.
_DRAFT_MARGIN = 2
#: ``Image.info`` key of a drafted JPEG's full size, for its geometry (the draft shrinks ``size``).
_FULL_SIZE = "inferq_full_size"


def to_tensor(img: ImageLike, spec: InputSpec, max_pixels: int) -> np.ndarray:
    """``img`` as a C-contiguous array of ``spec.shape`` and ``spec.dtype``."""
    source = _source(img, spec, max_pixels)
    return source if isinstance(source, np.ndarray) else image_to_tensor(source, spec)


def fitted_tensor(img: ImageLike, spec: InputSpec, max_pixels: int) -> tuple[np.ndarray, Geometry]:
    """``to_tensor``, with the geometry that maps the original image onto the tensor (for
    models whose results are mapped back to the original: ``spec.geometry``)."""
    _, height, width = spec.shape
    source = _source(img, spec, max_pixels)
    if isinstance(source, np.ndarray):
        return source, Geometry.identity(width, height)
    geometry = fit_geometry(source.size, (width, height), spec.resize)
    full = source.info.get(_FULL_SIZE)
    if full is not None and tuple(full) != source.size:
        geometry = geometry.after_reduction(*full)
    return image_to_tensor(source, spec), geometry


def _source(img: ImageLike, spec: InputSpec, max_pixels: int) -> np.ndarray | Image.Image:
    """An array already prepared for this model as it is, else the image to fit."""
    if isinstance(img, np.ndarray) or hasattr(img, "numpy"):
        array = _as_numpy(img)
        if array.shape == spec.shape and array.dtype == np.dtype(spec.dtype):
            return np.ascontiguousarray(array)
        return _array_to_image(array)
    _, height, width = spec.shape
    return _open_image(img, max_pixels, (width, height))


def image_to_tensor(pil: Image.Image, spec: InputSpec) -> np.ndarray:
    _, height, width = spec.shape
    fitted = fit(_to_8_bit(pil).convert(spec.color), (width, height), spec.resize)
    array = np.asarray(fitted, dtype=np.uint8)
    chw = array[None, :, :] if array.ndim == 2 else array.transpose(2, 0, 1)
    return np.ascontiguousarray(chw).astype(spec.dtype, copy=False)


def _to_8_bit(pil: Image.Image) -> Image.Image:
    """16-bit grayscale scaled to 8 bits: PIL's convert() clips it instead (32768 becomes 255)."""
    if pil.mode == "F":
        raise InvalidInput(
            "image must have 8- or 16-bit integer pixels, got 32-bit float PIL mode 'F' "
            "(pass a float numpy array in [0, 1] instead)"
        )
    if pil.mode not in _16_BIT_MODES:
        return pil
    values = np.asarray(pil)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise InvalidInput(
            f"image in PIL mode {pil.mode!r} must hold 16-bit values in 0..65535, "
            f"got [{low}, {high}]"
        )
    return Image.fromarray((values >> 8).astype(np.uint8))


def fit(img: Image.Image, size: tuple[int, int], mode: str) -> Image.Image:
    """Resize ``img`` to ``size`` (w, h): ``crop`` fills then centre-crops, ``letterbox`` fits then
    pads with black, ``stretch`` ignores the aspect ratio.

    Pillow's ``ImageOps.fit`` crops the exact (sub-pixel) centre box before resizing, so it
    resizes fewer pixels (README, "Preprocessing": 1.5-2x faster than resize-then-crop);
    ``ImageOps.pad`` gives what resize-then-paste gives, byte for byte."""
    if img.size == size:
        return img
    if mode == "stretch":
        return img.resize(size, Image.Resampling.BILINEAR)
    if mode == "crop":
        return ImageOps.fit(img, size, Image.Resampling.BILINEAR)
    return ImageOps.pad(img, size, Image.Resampling.BILINEAR, color=0)


def _as_numpy(img: Any) -> np.ndarray:
    if isinstance(img, np.ndarray):
        return img
    if hasattr(img, "detach"):
        img = img.detach().cpu()
    return np.asarray(img.numpy())


def _array_to_image(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        array = _float_to_uint8(array)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[2] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
        return Image.fromarray(np.ascontiguousarray(array))
    raise InvalidInput(
        "image array must be HxW, HxWx1/3/4 (HWC) or 1/3xHxW (CHW), "
        f"got shape {tuple(array.shape)} dtype {array.dtype}"
    )


def _float_to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind != "f":
        raise InvalidInput(f"image array must be uint8 or float in [0, 1], got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise InvalidInput("image array must be finite, got NaN or Inf values")
    if array.size and (array.min() < 0.0 or array.max() > 1.0):
        raise InvalidInput(
            f"float image array must lie in [0, 1], got [{array.min():.3g}, {array.max():.3g}]"
        )
    return np.round(array * 255.0).astype(np.uint8)


def _open_image(img: Any, max_pixels: int, target: tuple[int, int]) -> Image.Image:
    if isinstance(img, Image.Image):
        _check_pixels(img, max_pixels)
        return img
    if isinstance(img, (bytes, bytearray, memoryview)):
        what = f"{len(img)} bytes of image data"
        return _decode(io.BytesIO(bytes(img)), what, max_pixels, target)
    if isinstance(img, (str, os.PathLike)):
        try:
            with open(img, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise InvalidInput(
                f"image path must be a readable file, got {os.fspath(img)!r}: {exc}"
            ) from None
        return _decode(io.BytesIO(data), f"file {os.fspath(img)!r}", max_pixels, target)
    raise InvalidInput(
        "image must be a PIL image, numpy array, tensor, encoded bytes or a path, "
        f"got {type(img).__name__}"
    )


def _decode(stream: io.BytesIO, what: str, max_pixels: int, target: tuple[int, int]) -> Image.Image:
    try:
        img = Image.open(stream)  # reads the header only: the size is known before decoding
        _check_pixels(img, max_pixels)
        _draft(img, target)
        img.load()
    except InvalidInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Above PIL's own limit Image.open refuses before _check_pixels can; the warning is an
        # exception only where warnings are errors.
        raise InvalidInput(
            f"image must have at most {max_pixels} pixels, got {what} that PIL refused as a "
            f"possible decompression bomb: {exc}"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        head = stream.getvalue()[:8]
        raise InvalidInput(
            f"image bytes must be a decodable PNG/JPEG/WebP/BMP/GIF image, got {what} "
            f"starting {head!r}: {exc}"
        ) from None
    return img


def _draft(img: Image.Image, target: tuple[int, int]) -> None:
    """Decode a JPEG at a reduced DCT scale (1/2, 1/4 or 1/8) when it is still at least
    ``_DRAFT_MARGIN`` times the model's input on each side: far cheaper for photos, and the
    final resize still reduces it with its filter (README, "Preprocessing")."""
    if img.format != "JPEG":
        return
    tw, th = target
    img.info[_FULL_SIZE] = img.size
    img.draft(img.mode, (tw * _DRAFT_MARGIN, th * _DRAFT_MARGIN))


def _check_pixels(img: Image.Image, max_pixels: int) -> None:
    w, h = img.size
    if w * h > max_pixels:
        raise InvalidInput(
            f"image must have at most {max_pixels} pixels, got {w}x{h} = {w * h} "
            "(refused before decoding: possible decompression bomb)"
        )
    if w < 1 or h < 1:
        raise InvalidInput(f"image must be at least 1x1, got {w}x{h}")
