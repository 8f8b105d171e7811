"""The producer's resize modes on Pillow's ImageOps, and JPEG draft decoding, against the
hand-written resize-then-crop/paste they replaced, within the README's stated tolerance."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from inferq.producer import preprocess
from inferq.producer.preprocess import fit, to_tensor
from inferq.shared.spec import InputSpec


def _photo(w: int, h: int) -> Image.Image:
    """Smooth shapes with mild noise: what a camera gives, unlike pure noise."""
    img = Image.new("RGB", (w, h), (30, 60, 90))
    draw = ImageDraw.Draw(img)
    draw.ellipse((w * 0.2, h * 0.2, w * 0.7, h * 0.8), fill=(250, 200, 10))
    draw.rectangle((w * 0.5, h * 0.1, w * 0.9, h * 0.5), fill=(10, 220, 120))
    noise = np.random.default_rng(0).integers(0, 20, (h, w, 3))
    blurred = np.asarray(img.filter(ImageFilter.GaussianBlur(3))).astype(int)
    return Image.fromarray(np.clip(blurred + noise, 0, 255).astype(np.uint8))


def _resize_then_crop(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    tw, th = size
    w, h = img.size
    scale = max(tw / w, th / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = img.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - tw) // 2, (nh - th) // 2
    return resized.crop((left, top, left + tw, top + th))


def _resize_then_paste(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    tw, th = size
    w, h = img.size
    scale = min(tw / w, th / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new(img.mode, size)
    canvas.paste(img.resize((nw, nh), Image.Resampling.BILINEAR), ((tw - nw) // 2, (th - nh) // 2))
    return canvas


def _diff(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int))


@pytest.mark.parametrize("size", [(640, 480), (300, 500), (1280, 720), (224, 100)])
def test_letterbox_is_byte_for_byte_the_hand_written_one(size: tuple[int, int]) -> None:
    img = _photo(*size)
    assert _diff(fit(img, (224, 224), "letterbox"), _resize_then_paste(img, (224, 224))).max() == 0


@pytest.mark.parametrize("size", [(640, 480), (300, 500), (1280, 720), (224, 100)])
def test_crop_differs_from_resize_then_crop_by_a_sub_pixel_shift_only(
    size: tuple[int, int],
) -> None:
    diff = _diff(
        fit(_photo(*size), (224, 224), "crop"), _resize_then_crop(_photo(*size), (224, 224))
    )
    assert diff.mean() < 2.5  # README: at most ~2 levels of 255 on average; edges differ more


def test_a_large_jpeg_is_decoded_in_draft_close_to_a_full_decode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    buf = io.BytesIO()
    _photo(2000, 1500).save(buf, "JPEG", quality=90)
    spec = InputSpec(model="m", version=1, shape=(3, 224, 224), resize="crop")
    drafted = to_tensor(buf.getvalue(), spec, 10**8)
    monkeypatch.setattr(preprocess, "_draft", lambda img, target: None)
    full = to_tensor(buf.getvalue(), spec, 10**8)
    diff = np.abs(drafted.astype(int) - full.astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 8


def test_draft_keeps_at_least_twice_the_input_size() -> None:
    buf = io.BytesIO()
    _photo(2000, 1500).save(buf, "JPEG")
    img = Image.open(io.BytesIO(buf.getvalue()))
    preprocess._draft(img, (224, 224))
    img.load()
    assert img.size[0] >= 448 and img.size[1] >= 448 and img.size[0] < 2000
