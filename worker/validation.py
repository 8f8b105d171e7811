"""What a new version must pass before it takes requests (a hot rollout's gate).

On sample inputs at each of its batch sizes (zeros for an [[inputs]] model's named tensors), its
outputs must be finite, one part per input (``worker/outputs.py``) and, for a ranked output
(``topk``/``raw``), of the declared shape (as many classes as labels when it declares labels).
When the version directory holds ``validation.npz`` (``inputs``: uint8 NCHW, ``top1``: the
expected class per input), its top-1 must agree with ``top1`` on at least ``[validation]
min_agreement`` of them. Runs on the version's own run thread, after warm-up, before any
request reaches it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from inferq.shared.errors import ValidationFailed
from inferq.worker.outputs import Chunk, first_output
from inferq.worker.repository import ModelVersion
from inferq.worker.runner import Batch, Runner
from inferq.worker.tensor_inputs import zero_batch

VALIDATION_FILE = "validation.npz"
_SAMPLE_SEED = 0
_SAMPLE_BATCH = 8


def validate(runner: Runner, model: ModelVersion) -> None:
    """Raise ValidationFailed naming what was expected and what came, if ``model`` is unfit."""
    ranked = model.config.output.postprocess in ("topk", "raw")  # one row of scores per input
    for size in _sample_sizes(model):
        out = _forward(runner, _samples(model, size), model)
        _check_finite(out, model)
        if ranked:
            _check_output(first_output(out).float(), size, model)
    path = model.path.parent / VALIDATION_FILE
    if path.is_file() and model.config.inputs:
        raise ValidationFailed(
            f"{path} holds image inputs for an [input] model; model {model.name!r} declares "
            "[[inputs]], whose versions are checked on sample inputs only: remove the file"
        )
    if ranked and path.is_file():
        _check_agreement(runner, model, path)


def _sample_sizes(model: ModelVersion) -> list[int]:
    """A single input and a small batch: warm-up already ran every batch size."""
    return sorted({1, min(model.config.batching.max_batch_size, _SAMPLE_BATCH)})


def _samples(model: ModelVersion, size: int) -> Batch:
    if model.config.inputs:
        return zero_batch(model.config.inputs, size)
    rng = np.random.default_rng(_SAMPLE_SEED)
    shape = (size, *model.config.shape)
    if model.config.dtype == "uint8":
        return torch.from_numpy(rng.integers(0, 256, shape, dtype=np.uint8))
    return torch.from_numpy(rng.random(shape).astype(model.config.dtype))


def _forward(runner: Runner, x: Batch, model: ModelVersion) -> Chunk:
    try:
        return runner.forward(x)
    except Exception as exc:
        raise ValidationFailed(
            f"model {model.name!r} version {model.version} must compute a batch of {len(x)} "
            f"sample inputs, got {type(exc).__name__}: {exc}"
        ) from exc


def _check_finite(chunk: Chunk, model: ModelVersion) -> None:
    tensors = [chunk] if isinstance(chunk, torch.Tensor) else [t for p in chunk for t in p.values()]
    bad = sum(int((~torch.isfinite(t)).sum()) for t in tensors if t.is_floating_point())
    if bad:
        raise ValidationFailed(
            f"model {model.name!r} version {model.version} must give finite outputs on sample "
            f"inputs, got {bad} NaN or infinite values"
        )


def _check_output(out: torch.Tensor, size: int, model: ModelVersion) -> None:
    where = f"model {model.name!r} version {model.version}"
    labels = model.config.output.labels
    classes = out.flatten(1).shape[1] if out.dim() > 1 else 1
    if model.config.output.postprocess == "topk" and labels and classes != len(labels):
        raise ValidationFailed(
            f"{where} must output {len(labels)} classes (one per label) per input, "
            f"got output shape {tuple(out.shape)} for {size} inputs"
        )


def _check_agreement(runner: Runner, model: ModelVersion, path: Path) -> None:
    inputs, expected = _read(path, model)
    step = max(1, model.config.batching.max_batch_size)
    top1 = torch.cat(
        [
            first_output(_forward(runner, torch.from_numpy(inputs[i : i + step]), model))
            .flatten(1)
            .argmax(1)
            for i in range(0, len(inputs), step)
        ]
    )
    agreement = float((top1.numpy() == expected).mean())
    wanted = model.config.validation.min_agreement
    if agreement < wanted:
        raise ValidationFailed(
            f"model {model.name!r} version {model.version} must agree with the expected top-1 of "
            f"{VALIDATION_FILE} on at least {wanted:.2%} of its {len(expected)} inputs, "
            f"got {agreement:.2%}"
        )


def _read(path: Path, model: ModelVersion) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            inputs, top1 = data["inputs"], data["top1"]
    except (OSError, KeyError, ValueError) as exc:
        raise ValidationFailed(
            f"{path} must be an npz file with arrays 'inputs' (uint8 NCHW) and 'top1', got: {exc}"
        ) from exc
    shape = (len(inputs), *model.config.shape)
    if inputs.dtype != np.uint8 or inputs.shape != shape or top1.shape != (len(inputs),):
        raise ValidationFailed(
            f"{path} must hold uint8 inputs of shape (N, {', '.join(map(str, model.config.shape))}) "
            f"and N top-1 indices, got inputs {inputs.dtype}{list(inputs.shape)} and top1 "
            f"{list(top1.shape)}"
        )
    return inputs, top1.astype(np.int64)
