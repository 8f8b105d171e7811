"""producer/preprocess.py: whatever a service holds -> the model's uint8 CHW tensor."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from inferq.producer.preprocess import fit, to_tensor
from inferq.shared.errors import InvalidInput
from inferq.shared.spec import InputSpec

REPO = Path(__file__).resolve().parents[2]
SPEC = InputSpec(model="m", version=1, shape=(3, 32, 32))
GRAY = InputSpec(model="m", version=1, shape=(1, 32, 32), color="L")
MAX = 1_000_000

RED, GREEN, BLUE, BLACK, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0), (255, 255, 255)


def _spec(resize: str, shape: tuple[int, int, int] = (3, 32, 32)) -> InputSpec:
    return InputSpec(model="m", version=1, shape=shape, resize=resize)


def _bands(
    size: tuple[int, int], colors: list[tuple[int, int, int]], vertical: bool = True
) -> Image.Image:
    """An RGB image split into equal bands of ``colors`` (left->right, or top->bottom)."""
    w, h = size
    array = np.zeros((h, w, 3), dtype=np.uint8)
    n = len(colors)
    for i, color in enumerate(colors):
        if vertical:
            array[:, i * w // n : (i + 1) * w // n] = color
        else:
            array[i * h // n : (i + 1) * h // n, :] = color
    return Image.fromarray(array)


def _encoded(img: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _rgb_at(chw: np.ndarray, y: int, x: int) -> tuple[int, ...]:
    return tuple(int(v) for v in chw[:, y, x])


def _png_1bit(width: int, height: int, rows: int | None = None) -> bytes:
    """A real 1-bit PNG of ``width`` x ``height``; a few kilobytes however large it claims to be.

    ``rows`` limits the compressed data to that many rows (a truncated but well-formed file).
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = b"\x00" + bytes((width + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows))
    data += compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


class _FakeTensor:
    """Duck-typed like a CPU torch tensor (``.detach().cpu().numpy()``) without importing torch."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def detach(self) -> _FakeTensor:
        return self

    def cpu(self) -> _FakeTensor:
        return self

    def numpy(self) -> np.ndarray:
        return self.array


# -- output contract ---------------------------------------------------------------------------


def _check_contract(out: np.ndarray, spec: InputSpec = SPEC) -> None:
    assert out.shape == spec.shape
    assert out.dtype == np.uint8
    assert out.flags.c_contiguous


# -- PIL inputs --------------------------------------------------------------------------------


def test_pil_rgb_of_the_right_size_is_transposed_exactly() -> None:
    rng = np.random.default_rng(1)
    hwc = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    out = to_tensor(Image.fromarray(hwc), SPEC, MAX)
    _check_contract(out)
    np.testing.assert_array_equal(out, hwc.transpose(2, 0, 1))


def test_pil_rgba_drops_alpha() -> None:
    img = Image.new("RGBA", (32, 32), (10, 20, 30, 0))
    out = to_tensor(img, SPEC, MAX)
    _check_contract(out)
    assert _rgb_at(out, 5, 5) == (10, 20, 30)
    assert (out == np.array([10, 20, 30], dtype=np.uint8)[:, None, None]).all()


def test_pil_grayscale_is_replicated_to_rgb() -> None:
    gray = np.arange(32 * 32, dtype=np.uint32).reshape(32, 32).astype(np.uint8)
    out = to_tensor(Image.fromarray(gray, mode="L"), SPEC, MAX)
    _check_contract(out)
    for c in range(3):
        np.testing.assert_array_equal(out[c], gray)


def test_pil_image_over_max_pixels_is_refused() -> None:
    img = Image.new("1", (2000, 1000))
    with pytest.raises(InvalidInput, match=r"at most 1000000 pixels, got 2000x1000 = 2000000"):
        to_tensor(img, SPEC, MAX)


def test_empty_pil_image_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"at least 1x1, got 0x0"):
        to_tensor(Image.new("RGB", (0, 0)), SPEC, MAX)


# -- numpy and tensor inputs -------------------------------------------------------------------


def test_hwc_uint8_array() -> None:
    hwc = np.random.default_rng(2).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    out = to_tensor(hwc, SPEC, MAX)
    _check_contract(out)
    np.testing.assert_array_equal(out, hwc.transpose(2, 0, 1))


def test_hwc_rgba_and_hw1_arrays() -> None:
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., :3] = (1, 2, 3)
    assert _rgb_at(to_tensor(rgba, SPEC, MAX), 0, 0) == (1, 2, 3)
    hw1 = np.full((32, 32, 1), 77, dtype=np.uint8)
    assert (to_tensor(hw1, SPEC, MAX) == 77).all()


def test_hxw_array_becomes_gray_rgb() -> None:
    hw = np.random.default_rng(3).integers(0, 256, size=(32, 32), dtype=np.uint8)
    out = to_tensor(hw, SPEC, MAX)
    _check_contract(out)
    for c in range(3):
        np.testing.assert_array_equal(out[c], hw)


def test_chw_array_of_another_size_is_resized_per_channel() -> None:
    chw = np.empty((3, 64, 64), dtype=np.uint8)
    chw[0], chw[1], chw[2] = 11, 22, 33
    out = to_tensor(chw, SPEC, MAX)
    _check_contract(out)
    assert (out[0] == 11).all() and (out[1] == 22).all() and (out[2] == 33).all()


def test_one_channel_chw_array() -> None:
    chw = np.full((1, 16, 16), 200, dtype=np.uint8)
    out = to_tensor(chw, SPEC, MAX)
    _check_contract(out)
    assert (out == 200).all()


def test_already_prepared_uint8_chw_passes_through_unchanged() -> None:
    chw = np.random.default_rng(4).integers(0, 256, size=SPEC.shape, dtype=np.uint8)
    before = chw.copy()
    out = to_tensor(chw, SPEC, MAX)
    np.testing.assert_array_equal(out, before)
    np.testing.assert_array_equal(chw, before)
    assert np.shares_memory(out, chw)  # no resampling, no copy


def test_prepared_but_non_contiguous_array_is_made_contiguous() -> None:
    big = np.random.default_rng(5).integers(0, 256, size=(3, 32, 64), dtype=np.uint8)
    view = big[:, :, ::2]
    out = to_tensor(view, SPEC, MAX)
    _check_contract(out)
    np.testing.assert_array_equal(out, view)


def test_tensor_like_objects_go_through_numpy() -> None:
    chw = np.random.default_rng(6).integers(0, 256, size=SPEC.shape, dtype=np.uint8)
    np.testing.assert_array_equal(to_tensor(_FakeTensor(chw), SPEC, MAX), chw)
    hwc = chw.transpose(1, 2, 0).copy()
    np.testing.assert_array_equal(to_tensor(_FakeTensor(hwc), SPEC, MAX), chw)


def test_float_array_in_unit_range_is_scaled_to_uint8() -> None:
    values = np.array([0.0, 0.2, 0.6, 1.0], dtype=np.float32)
    hwc = np.broadcast_to(np.resize(values, (32, 32))[:, :, None], (32, 32, 3)).copy()
    out = to_tensor(hwc, SPEC, MAX)
    _check_contract(out)
    np.testing.assert_array_equal(out[0, 0, :4], [0, 51, 153, 255])
    np.testing.assert_array_equal(out, np.round(hwc * 255).astype(np.uint8).transpose(2, 0, 1))


def test_float_chw_of_spec_shape_is_converted_not_passed_through() -> None:
    chw = np.full(SPEC.shape, 0.2, dtype=np.float64)
    out = to_tensor(chw, SPEC, MAX)
    _check_contract(out)
    assert (out == 51).all()


@pytest.mark.parametrize("bad", [-0.01, 1.01, 255.0])
def test_out_of_range_float_array_raises(bad: float) -> None:
    hwc = np.full((32, 32, 3), 0.5, dtype=np.float32)
    hwc[3, 4, 1] = bad
    with pytest.raises(InvalidInput, match=r"must lie in \[0, 1\], got"):
        to_tensor(hwc, SPEC, MAX)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_array_raises(bad: float) -> None:
    hwc = np.full((32, 32, 3), 0.5, dtype=np.float32)
    hwc[0, 0, 0] = bad
    with pytest.raises(InvalidInput, match=r"must be finite, got NaN or Inf"):
        to_tensor(hwc, SPEC, MAX)


@pytest.mark.parametrize("dtype", [np.int64, np.uint16, np.bool_])
def test_other_dtypes_raise(dtype: type) -> None:
    with pytest.raises(
        InvalidInput, match=rf"uint8 or float in \[0, 1\], got dtype {np.dtype(dtype)}"
    ):
        to_tensor(np.zeros((32, 32, 3), dtype=dtype), SPEC, MAX)


@pytest.mark.parametrize("shape", [(32,), (32, 32, 2), (2, 32, 32), (5, 5, 5, 3)])
def test_unusable_array_shapes_raise(shape: tuple[int, ...]) -> None:
    with pytest.raises(
        InvalidInput,
        match=rf"HxW, HxWx1/3/4 .*got shape {shape!r}".replace("(", r"\(").replace(")", r"\)"),
    ):
        to_tensor(np.zeros(shape, dtype=np.uint8), SPEC, MAX)


# -- encoded bytes and paths -------------------------------------------------------------------


def _three_colors() -> Image.Image:
    return _bands((32, 32), [RED, GREEN, BLUE], vertical=False)


def test_png_bytes_decode_exactly() -> None:
    img = _three_colors()
    out = to_tensor(_encoded(img, "PNG"), SPEC, MAX)
    _check_contract(out)
    np.testing.assert_array_equal(out, np.asarray(img).transpose(2, 0, 1))


def test_bytearray_and_memoryview_are_accepted() -> None:
    png = _encoded(_three_colors(), "PNG")
    expected = to_tensor(png, SPEC, MAX)
    np.testing.assert_array_equal(to_tensor(bytearray(png), SPEC, MAX), expected)
    np.testing.assert_array_equal(to_tensor(memoryview(png), SPEC, MAX), expected)


def test_jpeg_bytes_decode_close() -> None:
    img = Image.new("RGB", (32, 32), (200, 40, 90))
    out = to_tensor(_encoded(img, "JPEG", quality=95), SPEC, MAX)
    _check_contract(out)
    assert np.abs(out.astype(int) - np.array([200, 40, 90])[:, None, None]).max() <= 4


def test_webp_bytes_decode() -> None:
    img = _three_colors()
    out = to_tensor(_encoded(img, "WEBP", lossless=True), SPEC, MAX)
    np.testing.assert_array_equal(out, np.asarray(img).transpose(2, 0, 1))


def test_16_bit_png_is_scaled_or_refused() -> None:
    png = _encoded(Image.fromarray(np.full((32, 32), 32768, dtype=np.uint16)), "PNG")
    assert Image.open(io.BytesIO(png)).mode == "I;16"
    out = to_tensor(png, SPEC, MAX)
    _check_contract(out)
    assert (out == 128).all()  # 32768 >> 8: scaled, not clipped to 255


_SIXTEEN_BIT = np.array([[0, 255, 256, 32768], [65535, 65280, 511, 1]], dtype=np.uint16)
_GRAY_2X4 = InputSpec(model="m", version=1, shape=(1, 2, 4), color="L")


@pytest.mark.parametrize(("mode", "byte_order"), [("I;16", "<"), ("I;16L", "<"), ("I;16B", ">")])
def test_16_bit_pil_images_are_scaled_to_8_bits(mode: str, byte_order: str) -> None:
    raw = _SIXTEEN_BIT.astype(f"{byte_order}u2").tobytes()
    img = Image.frombytes(mode, (4, 2), raw)
    out = to_tensor(img, _GRAY_2X4, MAX)
    np.testing.assert_array_equal(out[0], _SIXTEEN_BIT >> 8)
    rgb = to_tensor(img, InputSpec(model="m", version=1, shape=(3, 2, 4)), MAX)
    np.testing.assert_array_equal(rgb, np.repeat((_SIXTEEN_BIT >> 8)[None], 3, axis=0))


def test_32_bit_integer_image_with_16_bit_values_is_scaled() -> None:
    img = Image.fromarray(_SIXTEEN_BIT.astype(np.int32))
    assert img.mode == "I"
    out = to_tensor(img, _GRAY_2X4, MAX)
    np.testing.assert_array_equal(out[0], _SIXTEEN_BIT >> 8)


@pytest.mark.parametrize("value", [-1, 65536])
def test_32_bit_integer_image_outside_16_bits_is_refused(value: int) -> None:
    img = Image.fromarray(np.full((4, 4), value, dtype=np.int32))
    with pytest.raises(
        InvalidInput, match=rf"mode 'I' must hold 16-bit values in 0\.\.65535, got \[{value}"
    ):
        to_tensor(img, GRAY, MAX)


def test_float_pil_image_is_refused_naming_the_mode() -> None:
    img = Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32))
    assert img.mode == "F"
    with pytest.raises(InvalidInput, match=r"mode 'F'"):
        to_tensor(img, SPEC, MAX)
    with pytest.raises(InvalidInput, match=r"mode 'F'"):
        to_tensor(_encoded(img, "TIFF"), SPEC, MAX)


def test_path_as_str_and_path(tmp_path: Path) -> None:
    img = _three_colors()
    path = tmp_path / "img.png"
    img.save(path)
    expected = np.asarray(img).transpose(2, 0, 1)
    np.testing.assert_array_equal(to_tensor(path, SPEC, MAX), expected)
    np.testing.assert_array_equal(to_tensor(str(path), SPEC, MAX), expected)


def test_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"must be a readable file, got '.*nope\.png'"):
        to_tensor(tmp_path / "nope.png", SPEC, MAX)


def test_path_to_non_image_raises(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(InvalidInput, match=r"decodable .*got file '.*notes\.txt'"):
        to_tensor(str(path), SPEC, MAX)


def test_corrupt_bytes_raise_mentioning_decodable() -> None:
    with pytest.raises(
        InvalidInput, match=r"decodable PNG/JPEG/WebP.*got 10 bytes .*starting b'not an i'"
    ):
        to_tensor(b"not an img", SPEC, MAX)


def test_truncated_png_raises_mentioning_decodable() -> None:
    png = _encoded(Image.new("RGB", (32, 32), (1, 2, 3)), "PNG")
    with pytest.raises(InvalidInput, match="decodable"):
        to_tensor(png[: len(png) // 2], SPEC, MAX)


def test_zero_bytes_raise() -> None:
    with pytest.raises(InvalidInput, match=r"decodable .*got 0 bytes"):
        to_tensor(b"", SPEC, MAX)


@pytest.mark.parametrize("value", [5, 3.5, None, [1, 2, 3], {"a": 1}])
def test_unsupported_types_raise(value: Any) -> None:
    with pytest.raises(InvalidInput, match=rf"got {type(value).__name__}$"):
        to_tensor(value, SPEC, MAX)


# -- decompression bombs -----------------------------------------------------------------------


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record any attempt to decode pixel data (ImageFile.load)."""
    calls: list[str] = []
    real = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> Any:
        calls.append(self.format or "?")
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


def test_the_decoding_spy_sees_a_normal_decode(no_decoding: list[str]) -> None:
    to_tensor(_encoded(_three_colors(), "PNG"), SPEC, MAX)
    assert no_decoding and set(no_decoding) == {"PNG"}


def test_bomb_under_pils_own_limit_is_refused_before_decoding(no_decoding: list[str]) -> None:
    bomb = _png_1bit(5000, 5000)
    assert len(bomb) < 10_000  # a few KB claiming 25 Mpixel
    with pytest.raises(InvalidInput, match=r"decompression bomb") as info:
        to_tensor(bomb, SPEC, MAX)
    assert "at most 1000000 pixels, got 5000x5000 = 25000000" in str(info.value)
    assert no_decoding == []


@pytest.mark.parametrize(("width", "height", "rows"), [(20000, 20000, None), (100000, 100000, 4)])
def test_huge_bomb_is_refused_before_decoding(
    no_decoding: list[str], width: int, height: int, rows: int | None
) -> None:
    bomb = _png_1bit(width, height, rows)
    assert len(bomb) < 100_000
    with pytest.raises(InvalidInput, match=r"decompression bomb"):
        to_tensor(bomb, SPEC, MAX)
    assert no_decoding == []


def test_huge_bomb_message_names_the_configured_limit() -> None:
    with pytest.raises(InvalidInput, match=r"at most 1000000 pixels") as info:
        to_tensor(_png_1bit(20000, 20000), SPEC, MAX)
    assert "decompression bomb" in str(info.value)
    assert "decodable PNG/JPEG" not in str(info.value)


def test_bomb_warning_raised_as_error_names_the_configured_limit(no_decoding: list[str]) -> None:
    # between PIL's limit and twice it, Image.open only warns; where warnings are errors the
    # warning is what comes out of it, and it must read like the other refusals
    bomb = _png_1bit(10000, 10000)
    assert Image.MAX_IMAGE_PIXELS < 10000 * 10000 < 2 * Image.MAX_IMAGE_PIXELS
    with pytest.warns(Image.DecompressionBombWarning):
        Image.open(io.BytesIO(bomb))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(InvalidInput, match=r"at most 200000000 pixels") as info:
            to_tensor(bomb, SPEC, 200_000_000)
    assert "decompression bomb" in str(info.value)
    assert no_decoding == []


def test_same_bomb_decodes_when_the_limit_allows_it() -> None:
    # proves the file is a real, decodable image and the refusal above is the pixel limit
    out = to_tensor(_png_1bit(1000, 1000), SPEC, max_pixels=1_000_000)
    _check_contract(out)
    assert (out == 0).all()


# -- grayscale models --------------------------------------------------------------------------


def test_grayscale_spec_from_rgb_image() -> None:
    img = _bands((32, 32), [WHITE, RED], vertical=True)
    out = to_tensor(img, GRAY, MAX)
    _check_contract(out, GRAY)
    assert (out[0, :, :16] == 255).all()
    # ITU-R 601-2 luma, as PIL's convert("L"): 255 * 299/1000 = 76.2
    assert (out[0, :, 16:] == 76).all()


def test_grayscale_spec_from_hw_array() -> None:
    hw = np.random.default_rng(7).integers(0, 256, size=(32, 32), dtype=np.uint8)
    np.testing.assert_array_equal(to_tensor(hw, GRAY, MAX), hw[None])


def test_grayscale_prepared_array_passes_through() -> None:
    chw = np.random.default_rng(8).integers(0, 256, size=(1, 32, 32), dtype=np.uint8)
    out = to_tensor(chw, GRAY, MAX)
    np.testing.assert_array_equal(out, chw)


# -- resize modes ------------------------------------------------------------------------------


def test_crop_keeps_the_centre_of_a_wide_image() -> None:
    img = _bands((96, 32), [RED, GREEN, BLUE])
    out = to_tensor(img, _spec("crop"), MAX)
    _check_contract(out)
    assert (out[0] == 0).all() and (out[1] == 255).all() and (out[2] == 0).all()


def test_crop_keeps_the_centre_of_a_tall_image() -> None:
    img = _bands((32, 96), [RED, GREEN, BLUE], vertical=False)
    out = to_tensor(img, _spec("crop"), MAX)
    assert (out[1] == 255).all() and (out[0] == 0).all() and (out[2] == 0).all()


def test_crop_of_two_halves_keeps_both_halves_around_the_centre() -> None:
    img = _bands((64, 32), [RED, BLUE])
    out = to_tensor(img, _spec("crop"), MAX)
    assert _rgb_at(out, 16, 2) == RED
    assert _rgb_at(out, 16, 29) == BLUE
    assert (out[:, :, :16] == np.array(RED, dtype=np.uint8)[:, None, None]).all()
    assert (out[:, :, 16:] == np.array(BLUE, dtype=np.uint8)[:, None, None]).all()


def test_crop_scales_a_small_image_up_to_fill() -> None:
    img = _bands((16, 8), [RED, GREEN, BLUE, WHITE])  # 4 bands of 4 px, scaled x4 -> 64x32
    out = to_tensor(img, _spec("crop"), MAX)
    # the centre 32 columns of the 64-wide upscaled image are the GREEN and BLUE bands
    assert _rgb_at(out, 16, 4) == GREEN
    assert _rgb_at(out, 16, 27) == BLUE


def test_letterbox_pads_a_wide_image_with_black_top_and_bottom() -> None:
    img = Image.new("RGB", (64, 32), WHITE)
    out = to_tensor(img, _spec("letterbox"), MAX)
    _check_contract(out)
    # 64x32 -> 32x16, pasted at y = 8
    assert (out[:, :8, :] == 0).all()
    assert (out[:, 24:, :] == 0).all()
    assert (out[:, 8:24, :] == 255).all()


def test_letterbox_pads_a_tall_image_with_black_left_and_right() -> None:
    img = Image.new("RGB", (16, 64), WHITE)
    out = to_tensor(img, _spec("letterbox"), MAX)
    # 16x64 -> 8x32, pasted at x = 12
    assert (out[:, :, :12] == 0).all()
    assert (out[:, :, 20:] == 0).all()
    assert (out[:, :, 12:20] == 255).all()


def test_letterbox_keeps_the_whole_image() -> None:
    img = _bands((96, 32), [RED, GREEN, BLUE])
    out = to_tensor(img, _spec("letterbox"), MAX)
    # 96x32 -> 32x11 (rounded), centred vertically: all three bands visible in the middle row
    assert _rgb_at(out, 16, 2) == RED
    assert _rgb_at(out, 16, 16) == GREEN
    assert _rgb_at(out, 16, 29) == BLUE
    assert _rgb_at(out, 0, 16) == BLACK
    assert _rgb_at(out, 31, 16) == BLACK


def test_stretch_ignores_aspect_ratio() -> None:
    img = _bands((96, 32), [RED, GREEN, BLUE])
    out = to_tensor(img, _spec("stretch"), MAX)
    _check_contract(out)
    # every band is squeezed to about a third of the width, over the full height, no bars
    for y in (0, 16, 31):
        assert _rgb_at(out, y, 3) == RED
        assert _rgb_at(out, y, 16) == GREEN
        assert _rgb_at(out, y, 28) == BLUE
    assert not (out.sum(axis=0) == 0).any()


def test_resize_to_a_non_square_spec() -> None:
    spec = _spec("crop", shape=(3, 16, 48))  # H=16, W=48
    img = _bands((48, 48), [RED, GREEN, BLUE], vertical=False)
    out = to_tensor(img, spec, MAX)
    assert out.shape == (3, 16, 48)
    assert (out[1] == 255).all()


@pytest.mark.parametrize("mode", ["crop", "letterbox", "stretch"])
def test_fit_returns_the_image_itself_when_already_sized(mode: str) -> None:
    img = Image.new("RGB", (32, 20))
    assert fit(img, (32, 20), mode) is img


@pytest.mark.parametrize("mode", ["crop", "letterbox", "stretch"])
@pytest.mark.parametrize("size", [(1, 500), (500, 1), (33, 31), (1, 1)])
def test_fit_always_produces_the_target_size(mode: str, size: tuple[int, int]) -> None:
    assert fit(Image.new("RGB", size, WHITE), (32, 24), mode).size == (32, 24)


# -- no torch on the producer side -------------------------------------------------------------


def test_producer_never_imports_torch() -> None:
    code = (
        "import sys, producer, inferq.producer.preprocess, inferq.producer.client; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
