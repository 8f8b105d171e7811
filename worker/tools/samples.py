"""Made-up requests for the bench: an image model's uint8 arrays, an [[inputs]] model's named
tensors (``shared/inputs.py``'s ``sample_request``: lengths spread over 1..max)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from inferq.shared.inputs import sample_request
from inferq.shared.spec import ModelConfig
from inferq.worker.tensor_inputs import TensorCollator


def sample(config: ModelConfig, rng: np.random.Generator) -> Any:
    """One request as a producer passes it to ``submit_job``."""
    if config.inputs:
        return sample_request(config.inputs, rng)
    return rng.integers(0, 256, size=config.shape, dtype=np.uint8)


def sample_batch(config: ModelConfig, size: int) -> Any:
    """A batch as the worker computes it: an image model's uint8 tensor, or an [[inputs]]
    model's sample requests padded and masked by the worker's own collation."""
    if not config.inputs:
        return torch.randint(0, 256, (size, *config.shape), dtype=torch.uint8)
    rng = np.random.default_rng(size)
    rows = [tuple(sample_request(config.inputs, rng).values()) for _ in range(size)]
    collator = TensorCollator(config.inputs, size, torch.device("cpu"), slots=1)
    return collator.claim(collator.stage(rows))
