"""Start-up checks that refuse settings which would silently lose or repeat work, with a
message that says what to change."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

import torch

from inferq.shared.errors import ConfigError
from inferq.shared.logs import get_logger
from inferq.shared.settings import Settings
from inferq.shared.spec import ModelConfig
from inferq.worker.repository import ModelVersion
from inferq.worker.variants import check_device

log = get_logger(__name__)


class Warmed(Protocol):
    """A loaded model and the seconds a batch of each size took at warm-up."""

    @property
    def model(self) -> ModelVersion: ...

    @property
    def warmup_s(self) -> dict[int, float]: ...


def instances_on(config: ModelConfig, device_kind: str) -> int:
    """The run threads ``config`` gets on a device of ``device_kind`` (Triton's instance_group
    kind): ``[instances] count`` on CPU, where instances share the cores out; one on a GPU, where
    a second instance in the same process only queues behind the first (run more workers on the
    device instead)."""
    return config.instances if device_kind == "cpu" else 1


def check_model_on(config: ModelConfig, device: torch.device) -> int:
    """Refuse what ``config`` cannot run on ``device``; the instances it runs there. A pure
    function of the config and the device's kind: building ``torch.device("cuda:0")`` needs no
    CUDA, so every shipped config is checked against every kind anywhere."""
    check_device(config, device)
    return instances_on(config, device.type)


def for_device(models: Sequence[ModelVersion], device: torch.device) -> list[ModelVersion]:
    """``models`` checked for ``device``, each config carrying the instances it runs there."""
    placed = []
    for m in models:
        instances = check_model_on(m.config, device)
        if instances != m.config.instances:
            log.info(
                "instances.count applies on CPU only; one instance per GPU worker",
                model=m.name,
                count=m.config.instances,
                device=str(device),
            )
        placed.append(replace(m, config=replace(m.config, instances=instances)))
    return placed


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
