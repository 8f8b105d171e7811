"""shared/geometry.py: the resize geometry the producer's ``fit()`` applies, and its inverse.

The geometry is checked against what Pillow really does: a white rectangle drawn on a
non-square original lands, after ``fit()``, where the geometry says (within the one pixel that
bilinear resampling blurs), and mapping a box forward then back gives the box again.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from inferq.producer.preprocess import fit, fitted_tensor
from inferq.shared.errors import InvalidInput
from inferq.shared.geometry import Geometry, fit_geometry
from inferq.shared.spec import InputSpec

# (original w, h), (target w, h): wide and tall originals, square and non-square targets
SIZES = [
    ((200, 100), (64, 64)),
    ((100, 200), (64, 64)),
    ((300, 120), (48, 32)),
    ((120, 300), (48, 32)),
    ((150, 150), (40, 24)),
    ((97, 61), (33, 17)),
]
MODES = ("crop", "letterbox", "stretch")


def _forward(g: Geometry, box: np.ndarray) -> np.ndarray:
    out = box.astype(np.float64).copy()
    out[0::2] = out[0::2] * g.scale_x + g.offset_x
    out[1::2] = out[1::2] * g.scale_y + g.offset_y
    return out


def _white_box(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    array = np.zeros((size[1], size[0]), dtype=np.uint8)
    x1, y1, x2, y2 = box
    array[y1:y2, x1:x2] = 255
    return Image.fromarray(array)


def _found(img: Image.Image) -> tuple[int, int, int, int]:
    """Bounding box (pixel edges) of the pixels at least half white."""
    ys, xs = np.nonzero(np.asarray(img) >= 128)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("size", "target"), SIZES)
def test_a_rectangle_lands_where_the_geometry_says(
    size: tuple[int, int], target: tuple[int, int], mode: str
) -> None:
    w, h = size
    box = (w * 2 // 5, h * 2 // 5, w * 3 // 5, h * 3 // 5)  # central: survives a crop
    fitted = fit(_white_box(size, box), target, mode)
    g = fit_geometry(size, target, mode)
    assert (g.width, g.height) == size
    np.testing.assert_allclose(_found(fitted), _forward(g, np.array(box)), atol=1.01)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("size", "target"), SIZES)
def test_the_whole_image_maps_onto_what_pillow_fills(
    size: tuple[int, int], target: tuple[int, int], mode: str
) -> None:
    """The letterbox padding and the crop window, as Pillow placed them (a white original)."""
    fitted = fit(Image.new("L", size, 255), target, mode)
    g = fit_geometry(size, target, mode)
    whole = _forward(g, np.array([0, 0, *size]))
    visible = np.clip(whole, 0, [target[0], target[1]] * 2)
    np.testing.assert_allclose(_found(fitted), visible, atol=1e-9 if mode != "crop" else 1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("size", "target"), SIZES)
def test_boxes_map_back_exactly_and_are_clipped_to_the_original(
    size: tuple[int, int], target: tuple[int, int], mode: str
) -> None:
    g = fit_geometry(size, target, mode)
    box = np.array([size[0] * 0.25, size[1] * 0.3, size[0] * 0.6, size[1] * 0.7])
    np.testing.assert_allclose(g.boxes_to_original(_forward(g, box)), box, rtol=1e-12)
    outside = g.boxes_to_original(np.array([[-50.0, -50.0, 1e4, 1e4]]))
    assert outside.tolist() == [[0.0, 0.0, float(size[0]), float(size[1])]]


def test_identity_when_the_image_is_already_the_target_size() -> None:
    for mode in MODES:
        assert fit_geometry((40, 30), (40, 30), mode) == Geometry(40, 30, 1.0, 1.0, 0.0, 0.0)


def test_source_pixels_read_a_map_back_at_the_original_size() -> None:
    # a wide original letterboxed into a square input: rows above and below are padding
    g = fit_geometry((20, 10), (8, 8), "letterbox")  # content 8x4 at rows 2..5
    assert (g.scale_x, g.scale_y, g.offset_y) == (0.4, 0.4, 2.0)
    label_map = np.arange(64).reshape(8, 8)
    rows, cols = g.source_pixels((8, 8), (8, 8))
    back = label_map[rows[:, None], cols[None, :]]
    assert back.shape == (10, 20)
    assert set(rows.tolist()) == {2, 3, 4, 5}  # never the padding
    # a map at half the input's resolution is read at the matching place
    rows_half, cols_half = g.source_pixels((8, 8), (4, 4))
    assert rows_half.tolist() == (rows // 2).tolist() and cols_half.tolist() == (cols // 2).tolist()


def test_wire_round_trip_and_refusals() -> None:
    g = fit_geometry((300, 120), (48, 32), "crop")
    assert Geometry.from_wire(g.to_wire()) == g
    for bad, message in [
        ([1, 2], "geometry must be an object"),
        ({"size": [10, 10], "scale": [1.0, 1.0]}, r"geometry\.offset must be two finite numbers"),
        ({"size": [10, 10], "scale": [0.0, 1.0], "offset": [0, 0]}, "scales > 0"),
        ({"size": [10.5, 10], "scale": [1, 1], "offset": [0, 0]}, "whole pixels"),
        ({"size": [10, 10], "scale": [1, float("nan")], "offset": [0, 0]}, "finite"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            Geometry.from_wire(bad)


def _spec(mode: str, shape: tuple[int, int, int] = (1, 24, 32)) -> InputSpec:
    return InputSpec(model="m", version=1, shape=shape, color="L", resize=mode, geometry=True)


@pytest.mark.parametrize("mode", MODES)
def test_fitted_tensor_reports_the_geometry_of_what_it_sent(mode: str) -> None:
    img = _white_box((160, 60), (40, 20, 100, 40))
    tensor, g = fitted_tensor(img, _spec(mode), max_pixels=10**7)
    assert tensor.shape == (1, 24, 32)
    assert g == fit_geometry((160, 60), (32, 24), mode)
    found = _found(Image.fromarray(tensor[0]))
    np.testing.assert_allclose(found, _forward(g, np.array([40, 20, 100, 40])), atol=1.01)


def test_a_prepared_array_is_its_own_original() -> None:
    _, g = fitted_tensor(np.zeros((1, 24, 32), np.uint8), _spec("crop"), max_pixels=10**7)
    assert g == Geometry.identity(32, 24)


def test_a_jpeg_decoded_at_a_reduced_scale_keeps_its_full_size_as_the_original() -> None:
    big = _white_box((1600, 600), (400, 200, 1000, 400)).convert("RGB")
    buffer = io.BytesIO()
    big.save(buffer, format="JPEG", quality=95)
    spec = InputSpec(model="m", version=1, shape=(3, 24, 32), resize="letterbox", geometry=True)
    tensor, g = fitted_tensor(buffer.getvalue(), spec, max_pixels=10**7)
    assert (g.width, g.height) == (1600, 600)
    assert g == fit_geometry((1600, 600), (32, 24), "letterbox")  # 1/8 draft, same mapping
    found = _found(Image.fromarray(tensor[0]))
    np.testing.assert_allclose(found, _forward(g, np.array([400, 200, 1000, 400])), atol=1.01)
