"""Scene generator, letterbox geometry and the detector's targets, without training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from inferq.producer.preprocess import fit
from inferq.producer.tools.scenes import MAX_SIZE, MIN_SIZE, SCENE_CLASSES, make_scenes
from inferq.worker.examples.detector import _augment, target_maps
from inferq.worker.examples.scene_data import (
    boxes_to_input,
    boxes_to_original,
    letterbox_of,
    letterbox_scenes,
)
from inferq.worker.examples.scene_nets import DETECTOR_STRIDE

SIZES = [(160, 120), (120, 160), (200, 150), (150, 220), (128, 128), (97, 61), (61, 97)]


def test_scenes_are_deterministic_per_seed() -> None:
    a, b, c = (make_scenes(8, seed, (96, 72)) for seed in (5, 5, 6))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x.image), np.asarray(y.image))
        np.testing.assert_array_equal(x.boxes, y.boxes)
    assert any(not np.array_equal(x.boxes, z.boxes) for x, z in zip(a, c, strict=True))


@pytest.mark.parametrize("size", [(160, 120), (90, 200)])
def test_scene_contents_match_their_description(size: tuple[int, int]) -> None:
    w, h = size
    counts = []
    for scene in make_scenes(60, 11, size):
        n = len(scene.labels)
        counts.append(n)
        assert scene.image.size == size and scene.mask.shape == (h, w)
        assert 1 <= n <= 4 and scene.boxes.shape == (n, 4)
        assert (scene.boxes[:, :2] >= 0).all() and (scene.boxes[:, 2] <= w).all()
        assert (scene.boxes[:, 3] <= h).all()
        extent = (scene.boxes[:, 2:] - scene.boxes[:, :2]).max(1) / min(size)
        # A circle's box side is its diameter; polygons inscribed in it are no larger.
        assert (extent <= MAX_SIZE + 1e-4).all() and (extent >= MIN_SIZE * 0.7).all()
        for box, label in zip(scene.boxes, scene.labels, strict=True):
            cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
            if label != 2:  # a triangle's box centre may lie outside it
                assert scene.mask[cy, cx] == label + 1
        # Shapes never overlap: each shape's class fills about its own area.
        present = {int(v) for v in np.unique(scene.mask)} - {0}
        assert present == {int(v) + 1 for v in scene.labels}
    assert set(counts) == {1, 2, 3, 4}


def test_all_classes_and_both_background_kinds_occur() -> None:
    scenes = make_scenes(80, 3, (128, 96))
    labels = np.concatenate([s.labels for s in scenes])
    assert set(labels.tolist()) == set(range(len(SCENE_CLASSES)))
    # Plain backgrounds have (almost) no variation in a corner patch; noisy ones do.
    spread = [np.asarray(s.image, dtype=np.float32)[:6, :6].std(axis=(0, 1)).max() for s in scenes]
    assert min(spread) < 1.0 and max(spread) > 8.0


@pytest.mark.parametrize("size", SIZES)
def test_letterbox_geometry_is_what_fit_does(size: tuple[int, int]) -> None:
    white = Image.new("RGB", size, (255, 255, 255))
    out = np.asarray(fit(white, (128, 128), "letterbox"))[:, :, 0]
    ys, xs = np.nonzero(out)
    box = letterbox_of(size, (128, 128))
    assert (xs.min(), ys.min()) == (box.pad_x, box.pad_y)
    assert (xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()) == box.content


def test_boxes_round_trip_through_the_letterbox() -> None:
    box = letterbox_of((200, 150), (128, 128))
    boxes = np.array([[10.0, 20.0, 60.5, 70.0], [0.0, 0.0, 200.0, 150.0]], dtype=np.float32)
    inside = boxes_to_input(boxes, box)
    np.testing.assert_allclose(inside[1], [0, box.pad_y, 128, box.pad_y + box.content[1]])
    np.testing.assert_allclose(boxes_to_original(inside, box), boxes, atol=1e-4)


def test_letterboxed_masks_follow_the_images() -> None:
    data = letterbox_scenes(make_scenes(6, 2, (200, 150)))
    assert data.images.shape == (6, 3, 128, 128) and data.masks.shape == (6, 128, 128)
    band = data.geometry[0].pad_y
    assert band > 0 and (data.images[:, :, :band] == 0).all()  # fit() pads with black
    for mask, boxes in zip(data.masks, data.boxes, strict=True):
        for x1, y1, x2, y2 in boxes:  # every shape's mask pixels lie inside its moved box
            inside = mask[int(y1) : int(np.ceil(y2)) + 1, int(x1) : int(np.ceil(x2)) + 1]
            assert inside.any()
    assert (data.masks[:, : data.geometry[0].pad_y] == 0).all()  # the band is background


def _decode_targets(maps: np.ndarray) -> list[tuple[int, list[float]]]:
    """Boxes written into target maps, back in pixels (the inverse of ``target_maps``)."""
    out = []
    for i, j in zip(*np.nonzero(maps[-1]), strict=True):
        label = int(np.argmax(maps[:3, i, j]))
        ox, oy, lw, lh = maps[3:7, i, j]
        cx, cy = (j + ox) * DETECTOR_STRIDE, (i + oy) * DETECTOR_STRIDE
        w, h = np.exp(lw) * DETECTOR_STRIDE, np.exp(lh) * DETECTOR_STRIDE
        out.append((label, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]))
    return sorted(out)


def test_target_maps_encode_the_boxes_exactly() -> None:
    data = letterbox_scenes(make_scenes(10, 8, (160, 120)))
    for boxes, labels in zip(data.boxes, data.labels, strict=True):
        decoded = _decode_targets(target_maps(boxes, labels, 128))
        expected = sorted((int(lab), b.tolist()) for b, lab in zip(boxes, labels, strict=True))
        assert [d[0] for d in decoded] == [e[0] for e in expected]
        np.testing.assert_allclose([d[1] for d in decoded], [e[1] for e in expected], atol=1e-3)


def test_augmentation_moves_images_and_targets_together() -> None:
    data = letterbox_scenes(make_scenes(3, 4, (160, 120)))
    checked = 0
    torch.manual_seed(0)
    for mask, boxes, labels in zip(data.masks, data.boxes, data.labels, strict=True):
        # The mask rides as the image channel, so after the transform it says what lies where.
        x = torch.from_numpy(mask)[None, None].float()
        maps = torch.from_numpy(target_maps(boxes, labels, 128))[None]
        for _ in range(8):
            xa, ma = _augment(x, maps)
            moved = xa[0, 0].numpy()
            for label, (x1, y1, x2, y2) in _decode_targets(ma[0].numpy()):
                if label == 2:  # a triangle's box centre may lie outside it
                    continue
                assert moved[int((y1 + y2) / 2), int((x1 + x2) / 2)] == label + 1
                checked += 1
    assert checked > 20


@pytest.mark.parametrize("size", [(200, 150), (150, 220)])
def test_labels_come_back_at_the_original_size(size: tuple[int, int]) -> None:
    from inferq.worker.examples.segmenter import labels_at_original

    data = letterbox_scenes(make_scenes(4, 9, size))
    for mask, scene, box in zip(data.masks, data.scenes, data.geometry, strict=True):
        # Perfect logits in the input frame: the one-hot of the letterboxed mask.
        logits = torch.nn.functional.one_hot(torch.from_numpy(mask).long(), 4).permute(2, 0, 1)
        back = labels_at_original(logits.float(), box)
        assert back.shape == scene.mask.shape and back.dtype == np.uint8
        # Only the shapes' edges differ (two nearest-neighbour resamplings).
        assert (back == scene.mask).mean() > 0.97
