"""Wire formats: how one request's uint8 CHW tensor travels from producer to worker.

``raw`` is the codec (``shared/codec.py``: header + bytes). ``jpeg`` and ``png`` carry the same
tensor, already resized and cropped to the model's input by the producer, as an encoded image of
exactly the model's size and colour mode; the worker decodes it in its decode stage
(``worker/decode.py``). A model's spec names the wire its producers use; a worker serving a
``jpeg`` or ``png`` model reads either encoding, and the raw codec too (foreign clients).

Encoding and decoding are Pillow's; Pillow releases the GIL while it decodes, so a thread pool
decodes a batch on several cores. A decode checks the image's size and mode from its header
before decoding any pixel (no decompression bomb reaches the decoder), and every failure is an
:class:`InvalidInput` naming what was expected and what came.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from inferq.shared.errors import InvalidInput

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Chroma at half resolution each way (Pillow's subsampling 2, "4:2:0", as most photographs):
#: measured no less accurate than 4:4:4 on the example models and 15-30 % smaller at 224x224
#: (README, "Wire formats").
JPEG_SUBSAMPLING = 2
#: zlib level 1: on 224x224 photographs 8 % larger than level 6 for a third of the producer's
#: CPU (7.5 against 21 ms an image here).
PNG_COMPRESS_LEVEL = 1
_MODES = {1: "L", 3: "RGB"}


@dataclass(frozen=True, slots=True)
class EncodedImage:
    """A request's tensor as it came: encoded bytes, decoded in the worker's decode stage."""

    data: bytes
    format: str  # "jpeg" | "png"


def format_of(payload: bytes | memoryview) -> str | None:
    """ "jpeg" or "png" when ``payload`` starts like one, else None (the raw codec, or junk)."""
    head = bytes(payload[:8])
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head == PNG_MAGIC:
        return "png"
    return None


def encode_image(chw: np.ndarray, wire: str, jpeg_quality: int) -> bytes:
    """``chw`` (uint8, C in 1 or 3) as a JPEG or PNG of the same size and channels."""
    if chw.dtype != np.uint8 or chw.ndim != 3 or chw.shape[0] not in _MODES:
        raise InvalidInput(
            f"wire {wire!r} carries uint8 images of 1 or 3 channels (CHW), "
            f"got {chw.dtype}{list(chw.shape)}"
        )
    hwc = chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0)
    image = Image.fromarray(np.ascontiguousarray(hwc), _MODES[chw.shape[0]])
    out = io.BytesIO()
    if wire == "jpeg":
        image.save(out, "JPEG", quality=jpeg_quality, subsampling=JPEG_SUBSAMPLING)
    elif wire == "png":
        image.save(out, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        raise InvalidInput(f"image wire must be 'jpeg' or 'png', got {wire!r}")
    return out.getvalue()


def check_header(encoded: EncodedImage, shape: tuple[int, ...]) -> None:
    """Raise unless ``encoded``'s header says it is an image of ``shape`` (nothing decoded)."""
    with _opened(encoded, shape):
        pass


def decode_image(encoded: EncodedImage, shape: tuple[int, ...]) -> np.ndarray:
    """The CHW uint8 array of ``shape`` that ``encoded`` holds (a view of a fresh HWC array).

    Size and mode are checked from the header, before any pixel is decoded."""
    with _opened(encoded, shape) as image:
        try:
            hwc = np.asarray(image)  # decodes: Pillow releases the GIL meanwhile
        except (OSError, ValueError, SyntaxError) as exc:
            raise _undecodable(encoded, exc) from None
    return hwc[None] if hwc.ndim == 2 else hwc.transpose(2, 0, 1)


@contextmanager
def _opened(encoded: EncodedImage, shape: tuple[int, ...]) -> Iterator[Image.Image]:
    """The image with its header read and checked against ``shape``."""
    channels, height, width = shape
    mode = _MODES.get(channels)
    try:
        image = Image.open(io.BytesIO(encoded.data), formats=("JPEG", "PNG"))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise _undecodable(encoded, exc) from None
    with image:
        if image.size != (width, height) or image.mode != mode:
            raise InvalidInput(
                f"encoded image must be {mode} {width}x{height} (the model's input), got "
                f"{image.mode} {image.size[0]}x{image.size[1]} in {_what(encoded)}"
            )
        yield image


def _what(encoded: EncodedImage) -> str:
    return f"{encoded.format.upper()} of {len(encoded.data)} bytes"


def _undecodable(encoded: EncodedImage, exc: Exception) -> InvalidInput:
    return InvalidInput(
        f"encoded image must be a decodable JPEG or PNG, got {_what(encoded)} that fails: {exc}"
    )
