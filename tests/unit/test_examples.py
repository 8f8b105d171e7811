"""Example model repository: synthetic data, architectures and the exported models."""

from __future__ import annotations

import hashlib
import pathlib
import tomllib
from typing import Any

import numpy as np
import pytest
import torch

from inferq.producer.tools.synth import CLASSES, draw_shape, make_images
from inferq.worker.examples.build import (
    EXAMPLE_NAMES,
    HELDOUT_SEED,
    SPECS,
    TRAIN_SETS,
    build_examples,
    normalise,
    preprocess_for_training,
    write_model,
)
from inferq.worker.examples.nets import ShapesNet, resnet18, resnet50
from tests.conftest import ShapesBuild

FRESH_SEED = 4242  # neither a training seed nor the held-out seed used while training

# torch 2.13 deprecates torch.jit, but TorchScript is the repository's serving format.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


def _load(model_dir: pathlib.Path) -> torch.jit.ScriptModule:
    return torch.jit.load(str(model_dir / "1" / "model.pt"))


def _sidecar_matches(model_dir: pathlib.Path) -> bool:
    version = model_dir / "1"
    digest = hashlib.sha256((version / "model.pt").read_bytes()).hexdigest()
    return (version / "model.pt.sha256").read_text() == f"{digest}  model.pt\n"


def test_synth_is_deterministic_per_seed() -> None:
    a_imgs, a_labels = make_images(24, seed=7)
    b_imgs, b_labels = make_images(24, seed=7)
    c_imgs, _ = make_images(24, seed=8)
    np.testing.assert_array_equal(a_labels, b_labels)
    for a, b in zip(a_imgs, b_imgs, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(
        not np.array_equal(np.asarray(a), np.asarray(c))
        for a, c in zip(a_imgs, c_imgs, strict=True)
    )


def test_synth_is_balanced_and_sized() -> None:
    images, labels = make_images(60, seed=1, size=(80, 64))
    assert labels.dtype == np.int64
    assert np.bincount(labels, minlength=len(CLASSES)).tolist() == [10] * len(CLASSES)
    assert all(im.mode == "RGB" and im.size == (80, 64) for im in images)


def test_synth_shape_stays_in_central_square() -> None:
    # Outside the central 64x64 square of an 80x64 frame there is only background +
    # noise, so a centre crop never cuts the shape.
    rng = np.random.default_rng(3)
    for label in range(len(CLASSES)):
        for _ in range(20):
            px = np.asarray(draw_shape(label, rng, (80, 64)), dtype=np.float32)
            margins = np.concatenate([px[:, :8], px[:, -8:]], axis=1)
            assert margins.std(axis=(0, 1)).max() < 12.0  # noise sigma is 6


def test_draw_shape_rejects_bad_label() -> None:
    with pytest.raises(ValueError):
        draw_shape(len(CLASSES), np.random.default_rng(0))


def test_preprocess_for_training_crops_centre() -> None:
    images, _ = make_images(2, seed=0, size=(80, 64))
    out = preprocess_for_training(images[0])
    assert out.shape == (3, 32, 32) and out.dtype == np.uint8 and out.flags.c_contiguous


def test_resnet18_output_shape() -> None:
    torch.manual_seed(0)
    model = resnet18().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 1000)
    assert torch.isfinite(out).all()


def test_resnet50_parameter_count() -> None:
    n_params = sum(p.numel() for p in resnet50().parameters())
    assert abs(n_params - 25_557_032) < 100_000  # torchvision's resnet50 has 25,557,032


def test_write_model_overwrites_cleanly(tmp_path: pathlib.Path) -> None:
    # Untrained nets: this only checks the file handling, not the model quality.
    for seed in (0, 1):
        torch.manual_seed(seed)
        model_dir = write_model(tmp_path, "shapes", ShapesNet(), SPECS["shapes"])
        assert _sidecar_matches(model_dir)
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["model.pt", "model.pt.sha256"]
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.toml"]
    assert (model_dir / "1" / "model.pt").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_resnet18_export(tmp_path: pathlib.Path) -> None:
    (model_dir,) = build_examples(tmp_path, ["resnet18"], log=lambda _: None)
    cfg = tomllib.loads((model_dir / "config.toml").read_text())
    assert cfg["input"]["shape"] == [3, 224, 224]
    assert cfg["preprocess"]["mean"] == [0.485, 0.456, 0.406]
    assert cfg["output"] == {"postprocess": "topk", "top_k": 5}  # no inline labels
    assert cfg["batching"]["preferred_batch_sizes"] == [8, 16, 32]
    assert cfg["precision"] == {"mode": "fp32", "channels_last": True}
    assert _sidecar_matches(model_dir)
    with torch.no_grad():
        assert _load(model_dir)(torch.randn(2, 3, 224, 224)).shape == (2, 1000)


def test_unknown_example_is_rejected(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="unknown example"):
        build_examples(tmp_path, ["nope"], log=lambda _: None)


# The trained model comes from the session's one build (``shapes_build`` in tests/conftest.py),
# which the integration and e2e tests share: training it is the expensive part.


@pytest.fixture(scope="module")
def shapes_config(shapes_build: ShapesBuild) -> dict[str, Any]:
    return tomllib.loads((shapes_build.repo / "shapes" / "config.toml").read_text())


@pytest.mark.slow
def test_build_writes_only_what_was_asked(shapes_build: ShapesBuild) -> None:
    assert shapes_build.written == (shapes_build.repo / "shapes",)
    assert sorted(p.name for p in shapes_build.repo.iterdir()) == ["shapes"]


@pytest.mark.slow
def test_shapes_config(shapes_config: dict[str, Any]) -> None:
    cfg = shapes_config
    assert cfg["platform"] == "torchscript" and cfg["description"]
    assert cfg["input"] == {"shape": [3, 32, 32], "dtype": "uint8", "color": "RGB"}
    assert cfg["preprocess"] == {"resize": "crop", "mean": [0.5] * 3, "std": [0.25] * 3}
    assert cfg["output"] == {"postprocess": "topk", "top_k": 3, "labels": list(CLASSES)}
    assert cfg["batching"] == {
        "max_batch_size": 64,
        "max_wait_ms": 5.0,
        "preferred_batch_sizes": [16, 32, 64],
        "queue_limit": 20000,
        "default_deadline_ms": 0,
    }
    assert cfg["precision"]["mode"] == "fp32"
    assert isinstance(cfg["precision"]["channels_last"], bool)


@pytest.mark.slow
def test_shapes_checksum_sidecar(shapes_build: ShapesBuild) -> None:
    assert _sidecar_matches(shapes_build.repo / "shapes")


@pytest.mark.slow
def test_shapes_training_logged(shapes_build: ShapesBuild) -> None:
    lines = shapes_build.log
    assert any("epoch 1/" in line and "loss" in line for line in lines)
    assert any("held-out accuracy" in line for line in lines)


@pytest.mark.slow
def test_shapes_model_accuracy_on_fresh_images(
    shapes_build: ShapesBuild, shapes_config: dict[str, Any]
) -> None:
    assert FRESH_SEED != HELDOUT_SEED and FRESH_SEED not in {s for s, _ in TRAIN_SETS}
    model = _load(shapes_build.repo / "shapes")
    images, labels = make_images(300, seed=FRESH_SEED, size=(80, 64))
    batch = np.stack([preprocess_for_training(im) for im in images])
    x = normalise(batch, shapes_config["preprocess"]["mean"], shapes_config["preprocess"]["std"])
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()  # batch of 300: the trace is not fixed to batch 1
    assert (pred == labels).mean() >= 0.95


def test_example_names() -> None:
    assert EXAMPLE_NAMES == (
        "shapes",
        "resnet18",
        "resnet50",
        "null32",
        "null224",
        "detector",
        "segmenter",
        "textcls",
    )


@pytest.mark.parametrize("name", ["null32", "null224"])
def test_null_models_return_each_inputs_first_values(tmp_path: pathlib.Path, name: str) -> None:
    (model_dir,) = build_examples(tmp_path, [name], log=lambda _: None)
    shape = SPECS[name].shape
    x = torch.arange(3 * int(np.prod(shape)), dtype=torch.float32).reshape(3, *shape)
    out = _load(model_dir)(x)  # the trace holds for any batch size, not only the traced one
    assert torch.equal(out, x[:, 0, 0, :10])
    config = tomllib.loads((model_dir / "config.toml").read_text())
    assert config["input"]["shape"] == list(shape)
