"""How a result compares with its source: top-1 agreement, largest output difference, accuracy
against labels, and raw in-process throughput of both, measured side by side in one run."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from inferq.shared.spec import ModelConfig
from inferq.worker.outputs import first_output
from inferq.worker.runner import Runner


@dataclass(frozen=True)
class Agreement:
    images: int
    top1: float  # share of inputs whose top class is the same in both (0..1)
    max_abs_diff: float  # largest difference between the two models' raw outputs
    source_accuracy: float | None  # top-1 against labels, where the inputs have them
    result_accuracy: float | None


def normalised(images: np.ndarray, config: ModelConfig) -> torch.Tensor:
    """uint8 NCHW -> the float input the model takes, as the runner computes it."""
    channels = config.shape[0]
    mean = torch.tensor(config.preprocess.mean).view(1, channels, 1, 1)
    std = torch.tensor(config.preprocess.std).view(1, channels, 1, 1)
    x = (torch.from_numpy(images).float() / config.preprocess.scale - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if config.precision.channels_last else x


def outputs(runner: Runner, images: np.ndarray, batch: int) -> torch.Tensor:
    """The runner's forward (normalisation included) over ``images``, ``batch`` at a time."""
    chunks = [
        first_output(runner._forward(torch.from_numpy(images[i : i + batch]).to(runner.device)))
        for i in range(0, len(images), batch)
    ]
    return torch.cat(chunks).flatten(1).float()


def agreement(source: torch.Tensor, result: torch.Tensor, labels: np.ndarray | None) -> Agreement:
    top_s, top_r = source.argmax(1), result.argmax(1)
    accuracy: tuple[float | None, float | None] = (None, None)
    if labels is not None:
        truth = torch.from_numpy(labels.astype(np.int64))
        accuracy = (_share(top_s == truth), _share(top_r == truth))
    return Agreement(
        images=len(source),
        top1=_share(top_s == top_r),
        max_abs_diff=float((source - result).abs().max()) if len(source) else 0.0,
        source_accuracy=accuracy[0],
        result_accuracy=accuracy[1],
    )


def _share(hits: torch.Tensor) -> float:
    return float(hits.float().mean()) if len(hits) else 0.0


def side_by_side(
    runners: dict[str, Runner], shape: Sequence[int], sizes: Sequence[int], seconds: float
) -> dict[str, dict[int, float]]:
    """Images/s of each runner at each size, the runners taking turns at each size so that both
    see the same machine (a noisy neighbour slows both, not one)."""
    speed: dict[str, dict[int, float]] = {name: {} for name in runners}
    for size in sizes:
        x = torch.randint(0, 256, (size, *shape), dtype=torch.uint8)
        for name, runner in runners.items():
            staged = x.to(runner.device)
            speed[name][size] = size * _calls_per_second(runner, staged, seconds)
    return speed


def _calls_per_second(runner: Runner, x: torch.Tensor, seconds: float) -> float:
    for _ in range(3):  # TorchScript profiles, then optimises, over the first calls
        runner._forward(x)
    calls, started = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - started < seconds:
        runner._forward(x)
        calls += 1
    return calls / (time.perf_counter() - started)
