"""Loading one model version to serve: its handler on the device, a runner warmed up on every
batch size it will see, a batcher and the bound on the messages held for it."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import torch

from inferq.shared.logs import get_logger
from inferq.worker.batcher import BatchPolicy, MicroBatcher
from inferq.worker.custom import load_hooks
from inferq.worker.handlers import ModelHandler
from inferq.worker.hooks import Hooks
from inferq.worker.inhand import InHand
from inferq.worker.intake import InferenceRequest
from inferq.worker.repository import ModelVersion
from inferq.worker.runner import Runner
from inferq.worker.served import FailureCount, Served

log = get_logger(__name__)

HandlerLoader = Callable[[ModelVersion, torch.device], ModelHandler]


class VersionLoader:
    def __init__(
        self,
        load_handler: HandlerLoader,
        device: torch.device,
        worker_name: str,
        hooks: Hooks,
        prefetch_batches: int,
    ) -> None:
        self._load_handler = load_handler
        self.device = device
        self.worker_name = worker_name
        self.hooks = hooks
        self.prefetch_batches = prefetch_batches

    def load(self, model: ModelVersion) -> Served:
        """``model`` loaded and warmed up, on the calling thread (which will compute it)."""
        started = time.perf_counter()
        handler = self._load_handler(model, self.device)
        runner = Runner(
            handler,
            model.config,
            model.version,
            self.device,
            self.worker_name,
            on_cap_change=partial(self.hooks.on_batch_cap, model.name, model.version),
            # <repository>/<model>/<version>/<file>: a handler's code must come from outside it
            handler_hooks=load_hooks(model.config.handler, repository=model.path.parents[2]),
        )
        warmup = runner.warmup()
        log.info(
            "model loaded",
            model=model.name,
            version=model.version,
            seconds=round(time.perf_counter() - started, 3),
            warmup_s={k: round(v, 4) for k, v in warmup.items()},
        )
        b = model.config.batching
        batcher: MicroBatcher[InferenceRequest] = MicroBatcher(
            BatchPolicy(b.max_batch_size, b.max_wait_ms / 1e3, b.preferred_batch_sizes)
        )
        in_hand = InHand(b.max_batch_size * (self.prefetch_batches + 1))
        spec = model.config.input_spec(model.version)
        failures = FailureCount(model.config.rollout.canary_min_requests)
        return Served(model, spec, runner, batcher, in_hand, warmup, failures)
