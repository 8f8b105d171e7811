"""The inputs an optimisation is calibrated and validated on, as uint8 NCHW batches.

In order of preference: the source version's ``validation.npz``, the ``--calibration`` file, then
inputs made here (synthetic shapes for the ``shapes`` example, random images otherwise). A file
is an ``.npz`` holding ``inputs`` (uint8, N x C x H x W) and optionally ``labels`` (N integers);
it is read without pickle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inferq.shared.errors import ConfigError
from inferq.shared.spec import ModelConfig

VALIDATION_FILE = "validation.npz"
_CALIBRATION_SEED = 1001  # a training set's seed for the shapes example
_VALIDATION_SEED = 9001  # its held-out set's seed (see worker/examples/build.py)


@dataclass(frozen=True)
class Inputs:
    """uint8 NCHW images, their labels where known, and where they came from."""

    images: np.ndarray
    labels: np.ndarray | None
    source: str


def load_npz(path: Path, config: ModelConfig) -> Inputs:
    try:
        with np.load(path, allow_pickle=False) as data:
            images = data["inputs"]
            labels = data["labels"] if "labels" in data.files else None
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(
            f"{path} must be an .npz holding 'inputs' (uint8 N x C x H x W), got: {exc}"
        ) from None
    expected = tuple(config.shape)
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ConfigError(
            f"{path}: inputs must be uint8 N x {' x '.join(map(str, expected))}, "
            f"got {images.dtype} {'x'.join(map(str, images.shape))}"
        )
    if labels is not None and labels.shape != (len(images),):
        raise ConfigError(f"{path}: labels must be {len(images)} integers, got {labels.shape}")
    return Inputs(images, labels, str(path))


def validation_inputs(
    version_dir: Path, calibration: Path | None, config: ModelConfig, count: int
) -> Inputs:
    own = version_dir / VALIDATION_FILE
    if own.is_file():
        return load_npz(own, config)
    if calibration is not None:
        return load_npz(calibration, config)
    return generated(config, count, _VALIDATION_SEED)


def calibration_inputs(calibration: Path | None, config: ModelConfig, count: int) -> Inputs:
    if calibration is not None:
        return load_npz(calibration, config)
    return generated(config, count, _CALIBRATION_SEED)


def generated(config: ModelConfig, count: int, seed: int) -> Inputs:
    """Synthetic shapes (labelled) for the ``shapes`` example, random images for others."""
    if config.name == "shapes" and config.shape == (3, 32, 32):
        from inferq.producer.tools.synth import make_images
        from inferq.worker.examples.build import HELDOUT_SIZE, preprocess_for_training

        images, labels = make_images(count, seed=seed, size=HELDOUT_SIZE)
        batch = np.stack([preprocess_for_training(im) for im in images])
        return Inputs(batch, np.asarray(labels), f"synthetic shapes (seed {seed})")
    rng = np.random.default_rng(seed)
    batch = rng.integers(0, 256, (count, *config.shape), dtype=np.uint8)
    return Inputs(batch, None, f"random images (seed {seed})")
