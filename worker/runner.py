"""The runner: one batch in, one outcome per request out. No Celery, no Redis.

It collates uint8 tensors (into pinned memory, copied without blocking on CUDA), normalises them
on the device, runs the model under ``inference_mode`` and autocast, and post-processes per
request. Failures stay with the requests that caused them: expired requests are answered before
compute, a batch whose forward raises is bisected until only the guilty requests fail, and an
out-of-memory error splits the batch and lowers the batch cap instead of failing anyone; a batch
with no room to be staged goes back to the batcher under the lower cap (``stage``). The cap
reports each change (``on_cap_change``), so nothing outside has to watch it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from inferq.shared.errors import (
    ConfigError,
    DeadlineExceeded,
    InferqError,
    ModelError,
    WorkerCrashed,
)
from inferq.shared.logs import get_logger
from inferq.shared.results import InferenceResult, Timing
from inferq.shared.spec import ModelConfig
from inferq.worker.batchcap import BatchCap, DeviceFailure, is_fatal_device_error, is_oom
from inferq.worker.collate import Collator, Staged
from inferq.worker.custom import HandlerHooks, HookFailed, load_hooks
from inferq.worker.decode import DecodedBatch, make_decoder, stage_decoded
from inferq.worker.fused import fuse
from inferq.worker.handlers import ModelHandler
from inferq.worker.intake import InferenceRequest
from inferq.worker.outputs import Chunk, OutputLayout
from inferq.worker.postprocess import BatchPostprocess
from inferq.worker.tensor_inputs import StagedTensors, TensorBatch, TensorSide, zero_batch

__all__ = ["BatchCap", "DeviceFailure", "Outcome", "Runner", "is_fatal_device_error", "is_oom"]

log = get_logger(__name__)

_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}
#: A staged batch: an image model's one tensor, or an [[inputs]] model's named tensors.
Batch = torch.Tensor | TensorBatch
_TORCH_DTYPES = {"uint8": torch.uint8, "float16": torch.float16, "float32": torch.float32}


class Outcome(NamedTuple):
    """Exactly one per request: ``value`` (the result) or ``error``. Immutable; a named tuple
    rather than a frozen dataclass because one is made per request on the run thread, where a
    frozen dataclass's ``__init__`` costs twice as much."""

    request: InferenceRequest
    value: InferenceResult | None = None
    error: InferqError | None = None


class Runner:
    def __init__(
        self,
        handler: ModelHandler,
        config: ModelConfig,
        version: int,
        device: torch.device,
        worker: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        on_cap_change: Callable[[int], None] | None = None,
        handler_hooks: HandlerHooks | None = None,
    ) -> None:
        self.handler = handler
        self.config = config
        self.version = version
        self.device = device
        self.worker = worker
        self.cap = BatchCap(config.batching.max_batch_size, on_change=on_cap_change)
        self._clock = clock
        self._wall = wall
        self._autocast = _AUTOCAST.get(config.precision.mode)
        # Named tensors ([[inputs]], worker/tensor_inputs.py) take no normalisation and no image
        # collator: what follows is built for the image form alone.
        self._tensors = TensorSide(config, handler, device) if config.inputs else None
        channels = config.shape[0] if config.shape else 1
        std = torch.tensor(config.preprocess.std, dtype=torch.float32)
        mean = torch.tensor(config.preprocess.mean, dtype=torch.float32)
        # x / scale - mean) / std  ==  x * a + b, one fused pass on the device
        self._a = (1.0 / (config.preprocess.scale * std)).view(1, channels, 1, 1).to(device)
        self._b = (-mean / std).view(1, channels, 1, 1).to(device)
        self._wire_dtype = _TORCH_DTYPES.get(config.dtype, torch.uint8)
        self._hooks = handler_hooks or load_hooks(config.handler)
        self._preprocess = self._hooks.preprocess if self._hooks is not None else None
        if self._preprocess is not None and self._tensors is not None:
            raise ConfigError(
                f"model {config.name!r}: a handler's preprocess hook takes an [input] image "
                "batch, got an [[inputs]] model (leave preprocess out)"
            )
        # Under AMP the fused call runs inside the same autocast context as the unfused path; a
        # preprocess hook runs between normalisation and the model, so it runs unfused.
        fused = self._preprocess is None and self._tensors is None
        self._fused = (
            fuse(handler, self._a, self._b, config.precision.channels_last) if fused else None
        )
        self._layout = OutputLayout(config.output)
        lengths = self._tensors.lengths if self._tensors is not None else None
        self._postprocess = BatchPostprocess(config, self._hooks, lengths)
        # One slot per instance computing, one waiting, one being staged.
        self.collator = Collator(
            config.shape,
            self._wire_dtype,
            config.batching.max_batch_size,
            device,
            slots=config.instances + 2,
        )
        # jpeg/png wire: the decode stage, run in prepare while the batch before computes.
        self.decoder = make_decoder(config.wire, config.shape, device)
        self._device_name = str(device)

    # -- public -------------------------------------------------------------------------------

    def run(self, batch: Sequence[InferenceRequest]) -> list[Outcome]:
        """One outcome per request in ``batch``, in order."""
        return self.execute(self.prepare(batch))

    def prepare(self, batch: Sequence[InferenceRequest]) -> PreparedBatch:
        """Answer expired requests and stage the rest on the device (may overlap compute)."""
        closed_at = self._clock()
        now = self._wall()
        expired = {id(r): Outcome(r, error=_expired(r, now)) for r in batch if _late(r, now)}
        live = [r for r in batch if id(r) not in expired]
        try:
            decoded = self._stage(live)
        except Exception as exc:
            if is_fatal_device_error(exc):
                raise DeviceFailure(str(exc)) from exc
            raise
        expired.update({id(u.request): Outcome(u.request, error=u.error) for u in decoded.failed})
        collate_ms = (self._clock() - closed_at) * 1e3
        return PreparedBatch(
            list(batch), decoded.live, expired, decoded.staged, closed_at, collate_ms
        )

    def stage(self, batch: list[InferenceRequest]) -> PreparedBatch | Deferred | StagingFailed:
        """``prepare``, with the runner's answer to a batch it cannot stage: out of device
        memory, a smaller cap and the same requests back to the batcher (``Deferred``); any
        other failure, every request answered (``StagingFailed``). Raises ``DeviceFailure``."""
        try:
            return self.prepare(batch)
        except DeviceFailure:
            raise
        except Exception as exc:
            if is_oom(exc) and len(batch) > 1:  # no room to stage it: smaller batches
                self.cap.shrink(len(batch))
                return Deferred(batch)
            log.exception("could not stage a batch", model=self.config.name)
            return StagingFailed(unrecoverable(batch, exc))

    def execute(self, prepared: PreparedBatch) -> list[Outcome]:
        """Compute a prepared batch; one outcome per request, in order."""
        computed = self._run_live(prepared) if prepared.staged is not None else []
        if prepared.expired:  # back in batch order, among the expired
            by_id = {**prepared.expired, **{id(o.request): o for o in computed}}
            computed = [by_id[id(r)] for r in prepared.requests]
        assert len(computed) == len(prepared.requests)
        return computed

    def _stage(self, live: list[InferenceRequest]) -> DecodedBatch:
        """``live`` staged: an [[inputs]] model's named tensors padded (worker/tensor_inputs.py),
        or images, decoded first when they come encoded (worker/decode.py)."""
        if self._tensors is None:
            return stage_decoded(self.decoder, self.collator, live)
        staged = self._tensors.collator.stage([r.tensors for r in live]) if live else None
        return DecodedBatch(live, staged, [])

    def forward(self, x: Batch) -> Chunk:
        """The model's outputs (on the CPU) for a batch of wire tensors: validation."""
        return self._forward(x.to(self.device))

    def warmup(self, sizes: Sequence[int] | None = None, rounds: int = 3) -> dict[int, float]:
        """Run zero batches of each size before serving; returns each size's seconds in the last
        round. The first rounds are slower by design (TorchScript profiles, then optimises;
        allocators and kernels warm up): they say nothing about the time a batch takes."""
        sizes = sorted(
            set(sizes or (1, *self.config.batching.preferred_batch_sizes, self.cap.maximum))
        )
        seconds: dict[int, float] = {}
        for size in sizes:
            x: Any = (
                zero_batch(self.config.inputs, size)
                if self.config.inputs
                else torch.zeros((size, *self.config.shape), dtype=self._wire_dtype)
            )
            try:
                for _ in range(rounds):
                    start = time.perf_counter()
                    self._forward(x.to(self.device))
                    seconds[size] = time.perf_counter() - start
            except Exception as exc:
                if not is_oom(exc) or size == 1:
                    raise
                self.cap.shrink(size)  # serve smaller batches from the start
                break
        return seconds

    # -- one batch ---------------------------------------------------------------------------

    def _run_live(self, prepared: PreparedBatch) -> list[Outcome]:
        assert prepared.staged is not None
        start = self._clock()
        chunks = self._compute(self._claim(prepared.staged))
        if len(chunks) == 1 and not isinstance(chunks[0], InferqError):
            self.cap.ok()  # only a batch that ran whole counts towards raising the cap again
        computed = self._clock()
        values = self._postprocess(chunks, prepared.live)
        done = self._clock()
        times = _BatchTimes(
            start - prepared.collate_ms / 1e3,  # waiting ends where this batch's work began
            prepared.collate_ms,
            (computed - start) * 1e3,
            (done - computed) * 1e3,
        )
        return self._outcomes(prepared.live, values, times)

    def _claim(self, staged: Staged | StagedTensors) -> Batch:
        if isinstance(staged, StagedTensors):
            assert self._tensors is not None
            return self._tensors.collator.claim(staged)
        return self.collator.claim(staged)

    def _compute(self, x: Batch) -> list[Chunk | InferqError]:
        """In row order: output chunks (CPU, one per forward that succeeded) and, for each row
        that alone makes the model fail, its error."""
        try:
            out = self._forward(x)
        except Exception as exc:
            if is_fatal_device_error(exc):
                raise DeviceFailure(str(exc)) from exc
            return self._split(x, exc)
        return [out]

    def _split(self, x: Batch, exc: Exception) -> list[Chunk | InferqError]:
        n = len(x)
        if is_oom(exc):
            self.cap.shrink(n)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if n == 1:
                return [
                    ModelError(f"model must fit in device memory for one input, got OOM: {exc}")
                ]
        elif n == 1 and isinstance(exc, HookFailed) and self._hooks is not None:
            return [self._hooks.error("preprocess", exc)]
        elif n == 1:
            return [ModelError(f"model raised on this input: {type(exc).__name__}: {exc}")]
        half = n // 2
        return self._compute(x[:half]) + self._compute(x[half:])

    def _forward(self, x: Batch) -> Chunk:
        if self._fused is not None:
            with torch.inference_mode(), self._autocast_ctx():
                out = self._fused(x)
        elif isinstance(x, TensorBatch):
            assert self._tensors is not None
            with torch.inference_mode(), self._autocast_ctx():
                out = self._tensors.call(x)
        else:
            out = self._unfused(x)
        return self._layout.collect(out, len(x))

    def _unfused(self, x: torch.Tensor) -> Any:
        with torch.inference_mode(), self._autocast_ctx():
            # A new tensor even when x is already float32: the staged input must stay as it came,
            # because a batch that fails is bisected and its halves run again from it.
            z = x.to(torch.float32, copy=True).mul_(self._a).add_(self._b)
            if self.config.precision.channels_last:
                z = z.contiguous(memory_format=torch.channels_last)
            if self._preprocess is not None:
                z = self._hooks.run_preprocess(z)  # type: ignore[union-attr]
            out = self.handler.predict(z)
        return out.float() if isinstance(out, torch.Tensor) else out

    def _autocast_ctx(self) -> Any:
        if self._autocast is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self._autocast)

    def _outcomes(
        self, live: Sequence[InferenceRequest], values: Sequence[Any], t: _BatchTimes
    ) -> list[Outcome]:
        """One outcome per live request, in order; what the batch shares is computed once."""
        ready = self._wall()
        size = len(live)
        name, version, worker, device = (
            self.config.name,
            self.version,
            self.worker,
            self._device_name,
        )
        collate_ms, infer_ms, post_ms = t.collate_ms, t.infer_ms, t.post_ms
        out: list[Outcome] = []
        for r, value in zip(live, values, strict=True):
            if isinstance(value, InferqError):
                out.append(Outcome(r, error=value))
                continue
            queue_ms = (r.received_wall - r.submitted_at) * 1e3
            wait_ms = (t.waited_until - r.received_at) * 1e3
            since_submit_ms = (ready - r.submitted_at) * 1e3
            timing: Timing = {
                "preprocess_ms": r.preprocess_ms,
                "queue_ms": queue_ms if queue_ms > 0.0 else 0.0,
                "batch_wait_ms": wait_ms if wait_ms > 0.0 else 0.0,
                "collate_ms": collate_ms,
                "infer_ms": infer_ms,
                "post_ms": post_ms,
                "total_ms": r.preprocess_ms + (since_submit_ms if since_submit_ms > 0.0 else 0.0),
                "batch_size": size,
                "worker": worker,
                "device": device,
            }
            result = InferenceResult(model=name, version=version, outputs=value, timing=timing)
            out.append(Outcome(r, result))
        return out


@dataclass(frozen=True)
class _BatchTimes:
    waited_until: float  # compute start minus the collate time: the wait excludes staging
    collate_ms: float
    infer_ms: float
    post_ms: float


@dataclass(frozen=True)
class PreparedBatch:
    """A closed batch whose live requests are staged on the device, ready to compute."""

    requests: list[InferenceRequest]
    live: list[InferenceRequest]
    expired: dict[int, Outcome]  # answered before compute: expired, or an image that won't decode
    staged: Staged | StagedTensors | None
    closed_at: float
    collate_ms: float


@dataclass(frozen=True)
class Deferred:
    """A batch with no room on the device to stage: the cap is lowered, and its requests go
    back to the batcher ahead of the rest, to run in smaller batches."""

    requests: list[InferenceRequest]


@dataclass(frozen=True)
class StagingFailed:
    """A batch that could not be staged for another reason: every request answered."""

    outcomes: list[Outcome]


def _late(r: InferenceRequest, now: float) -> bool:
    return r.deadline is not None and r.deadline <= now


def _expired(r: InferenceRequest, now: float) -> DeadlineExceeded:
    late = (now - (r.deadline or now)) * 1e3
    return DeadlineExceeded(
        f"request must start before its deadline, got there {late:.0f} ms late "
        f"(queued {max(0.0, (now - r.submitted_at) * 1e3):.0f} ms); it was not computed"
    )


def unrecoverable(batch: Sequence[InferenceRequest], exc: BaseException) -> list[Outcome]:
    """Outcomes for a batch lost to a device failure: only these requests fail."""
    error = WorkerCrashed(f"device failed while computing this batch; worker restarting: {exc}")
    return [Outcome(r, error=error) for r in batch]
