"""Start-up checks that refuse settings which would silently lose or repeat work, with a
message that says what to change."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from inferq.shared.errors import ConfigError
from inferq.shared.settings import Settings
from inferq.worker.repository import ModelVersion


class Warmed(Protocol):
    """A loaded model and the seconds a batch of each size took at warm-up."""

    @property
    def model(self) -> ModelVersion: ...

    @property
    def warmup_s(self) -> dict[int, float]: ...


def check_instances(device: torch.device, models: Sequence[ModelVersion]) -> int:
    """The run threads the models ask for in all; several per model only on CPU."""
    many = [f"{m.name} ({m.config.instances})" for m in models if m.config.instances > 1]
    if many and device.type != "cpu":
        raise ConfigError(
            f"instances.count above 1 runs on CPU only, got {', '.join(many)} on {device}; "
            f"for more concurrency on one GPU, run more workers on it"
        )
    return sum(m.config.instances for m in models)


def check_settings(settings: Settings, served: Sequence[Warmed]) -> None:
    """Refuse settings that would silently redeliver work that is still being computed.

    A message held by this worker must be acked before the visibility timeout, or another worker
    computes it again. The worst case is every held message ahead of it running at max batch size.
    """
    for s in served:
        b = s.model.config.batching
        worst_batch = max(s.warmup_s.values())
        batches_ahead = settings.prefetch_batches + 1
        worst = batches_ahead * (worst_batch * 3 + b.max_wait_ms / 1e3) + 1.0
        if settings.visibility_timeout_s < worst:
            raise ConfigError(
                f"INFERQ_VISIBILITY_TIMEOUT_S must exceed the worst time a message can be held by "
                f"this worker for model {s.model.name!r}: got {settings.visibility_timeout_s:g} s, "
                f"need at least {worst:.1f} s ({batches_ahead} batches of {b.max_batch_size} at "
                f"{worst_batch:.2f} s measured at warm-up, x3 margin). Raise "
                f"INFERQ_VISIBILITY_TIMEOUT_S, or lower INFERQ_PREFETCH_BATCHES or max_batch_size."
            )
