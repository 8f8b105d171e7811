"""The decode stage: a closed batch's encoded requests (``jpeg``/``png`` wire) become one staged
device batch, in the prepare thread, while the batch before it computes.

* :class:`HostDecoder` decodes with Pillow on a thread pool shared by the process (Pillow
  releases the GIL while it decodes, so the batch spreads over the cores), then stages the
  arrays through the collator as the raw wire does.
* :class:`DeviceJpegDecoder` (CUDA workers) decodes a batch's JPEGs on the device in one call of
  ``torchvision.io.decode_jpeg`` (nvJPEG), on the collator's copy stream; PNGs and raw tensors
  in the same batch go through the host.

An image that does not decode, or is not the model's size and mode, fails alone: it comes back
as :class:`Undecodable` with an ``InvalidInput``, and the rest of the batch is staged. A model on
the raw wire has no decoder (``make_decoder`` gives None), so its path has no step added.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np
import torch

from inferq.shared.errors import InvalidInput
from inferq.shared.logs import get_logger
from inferq.shared.wire import EncodedImage, check_header, decode_image
from inferq.worker.collate import Collator, Staged
from inferq.worker.intake import InferenceRequest
from inferq.worker.tensor_inputs import StagedTensors

log = get_logger(__name__)

#: Host decode threads per worker process: one per core, at most 8 (a 224x224 JPEG takes about
#: 0.3 ms to decode on one core here; 8 threads decode ~25k/s, more than one Redis carries).
DECODE_THREADS = max(1, min(8, os.cpu_count() or 1))

#: ``torchvision.io.decode_jpeg``'s shape: encoded 1-d uint8 tensors in, CHW uint8 tensors out.
DeviceJpeg = Callable[..., list[torch.Tensor]]


@dataclass(frozen=True, slots=True)
class Undecodable:
    request: InferenceRequest
    error: InvalidInput


@dataclass(frozen=True)
class DecodedBatch:
    """The decoded requests, in batch order, staged as one batch; and those that failed."""

    live: list[InferenceRequest]
    staged: Staged | StagedTensors | None  # None: nothing decoded; an [[inputs]] model's tensors
    failed: list[Undecodable]


class Decoder(Protocol):
    def stage(self, requests: Sequence[InferenceRequest], collator: Collator) -> DecodedBatch: ...


@functools.cache
def decode_pool() -> ThreadPoolExecutor:
    """One pool per process, shared by every model and instance (threads are made on demand)."""
    return ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="inferq-decode")


class HostDecoder:
    """Pillow on the decode pool; a batch is cut into one contiguous chunk per thread."""

    def __init__(
        self,
        shape: tuple[int, ...],
        pool: ThreadPoolExecutor | None = None,
        threads: int = DECODE_THREADS,
    ) -> None:
        self.shape = shape
        self._pool = pool or decode_pool()
        self._chunks = threads  # the pool's threads: one chunk of the batch each

    def arrays(self, requests: Sequence[InferenceRequest]) -> list[np.ndarray | InvalidInput]:
        """Each request's array or its error, in order."""
        n = len(requests)
        if n <= 1:
            return [self._one(r) for r in requests]
        step = -(-n // min(n, self._chunks))
        parts = [requests[i : i + step] for i in range(0, n, step)]
        return [a for part in self._pool.map(self._part, parts) for a in part]

    def stage(self, requests: Sequence[InferenceRequest], collator: Collator) -> DecodedBatch:
        live, arrays, failed = _split(requests, self.arrays(requests))
        return DecodedBatch(live, collator.stage(arrays) if live else None, failed)

    def _part(self, requests: Sequence[InferenceRequest]) -> list[np.ndarray | InvalidInput]:
        return [self._one(r) for r in requests]

    def _one(self, r: InferenceRequest) -> np.ndarray | InvalidInput:
        if not isinstance(r.array, EncodedImage):
            return r.array  # a raw codec tensor, checked against the spec at intake
        try:
            return decode_image(r.array, self.shape)
        except InvalidInput as exc:
            return exc


class DeviceJpegDecoder:
    """nvJPEG through ``decode_jpeg``: one call for the batch's JPEGs, on the copy stream.

    A batched call that raises is retried image by image, so that only the images that fail
    alone are refused. Each JPEG's size and mode are read from its header on the host first
    (nothing larger than the model's input reaches the device)."""

    def __init__(
        self, shape: tuple[int, ...], device: torch.device, decode_jpeg: DeviceJpeg
    ) -> None:
        self.shape = shape
        self.device = device
        self._decode_jpeg = decode_jpeg
        self._host = HostDecoder(shape)

    def stage(self, requests: Sequence[InferenceRequest], collator: Collator) -> DecodedBatch:
        jpegs = [i for i, r in enumerate(requests) if _is_jpeg(r)]
        others = sorted(set(range(len(requests))) - set(jpegs))
        out: list[Any] = [None] * len(requests)
        for i, a in zip(others, self._host.arrays([requests[i] for i in others]), strict=True):
            out[i] = a
        with _on(collator.stream):
            for i, t in zip(jpegs, self._device_decode([requests[i] for i in jpegs]), strict=True):
                out[i] = t
            live, values, failed = _split(requests, out)
            if not live:
                return DecodedBatch([], None, failed)
            x = torch.stack([_on_device(v, self.device) for v in values])
            ready = _record(collator.stream)
        return DecodedBatch(live, Staged(x, ready), failed)

    def _device_decode(
        self, requests: Sequence[InferenceRequest]
    ) -> list[torch.Tensor | InvalidInput]:
        errors = [_header_error(r, self.shape) for r in requests]
        todo = [i for i, e in enumerate(errors) if e is None]
        tensors = self._decode_all([_bytes_tensor(requests[i]) for i in todo])
        decoded = dict(zip(todo, tensors, strict=True))
        return [decoded[i] if e is None else e for i, e in enumerate(errors)]

    def _decode_all(self, data: list[torch.Tensor]) -> list[torch.Tensor | InvalidInput]:
        if not data:
            return []
        try:
            return list(self._decode_jpeg(data, device=self.device))
        except RuntimeError as exc:  # one bad image fails the call: find it
            _raise_if_device_broken(exc)
            return [self._decode_alone(d) for d in data]

    def _decode_alone(self, data: torch.Tensor) -> torch.Tensor | InvalidInput:
        try:
            return self._decode_jpeg([data], device=self.device)[0]
        except RuntimeError as exc:
            _raise_if_device_broken(exc)
            return InvalidInput(
                f"encoded image must be a decodable JPEG, got one nvJPEG refuses: {exc}"
            )


def stage_decoded(
    decoder: Decoder | None, collator: Collator, live: list[InferenceRequest]
) -> DecodedBatch:
    """``live`` decoded (by ``decoder``; None: the raw wire) and staged as one batch."""
    if not live:
        return DecodedBatch([], None, [])
    if decoder is None:  # raw wire: intake made every request's array
        return DecodedBatch(
            live, collator.stage(cast("list[np.ndarray]", [r.array for r in live])), []
        )
    return decoder.stage(live, collator)


def make_decoder(
    wire: str,
    shape: tuple[int, ...],
    device: torch.device,
    device_jpeg: Callable[[], DeviceJpeg | None] | None = None,
) -> Decoder | None:
    """The decode stage for a model on ``wire`` served on ``device`` (None on the raw wire)."""
    if wire == "raw":
        return None
    if device.type == "cuda" and wire == "jpeg":
        decode_jpeg = (device_jpeg or torchvision_decode_jpeg)()
        if decode_jpeg is not None:
            return DeviceJpegDecoder(shape, device, decode_jpeg)
        log.warning("torchvision.io.decode_jpeg unavailable: decoding JPEGs on the host")
    return HostDecoder(shape)


def torchvision_decode_jpeg() -> DeviceJpeg | None:
    try:
        from torchvision.io import decode_jpeg
    except Exception:  # not installed, or built for another torch: the host decodes instead
        return None
    return decode_jpeg


# -- helpers -----------------------------------------------------------------------------------


def _split(
    requests: Sequence[InferenceRequest], values: Sequence[Any]
) -> tuple[list[InferenceRequest], list[Any], list[Undecodable]]:
    live, kept, failed = [], [], []
    for r, v in zip(requests, values, strict=True):
        if isinstance(v, InvalidInput):
            failed.append(Undecodable(r, v))
        else:
            live.append(r)
            kept.append(v)
    return live, kept, failed


def _is_jpeg(r: InferenceRequest) -> bool:
    return isinstance(r.array, EncodedImage) and r.array.format == "jpeg"


def _raise_if_device_broken(exc: RuntimeError) -> None:
    """A device error is no bad image: it goes up, and the runner restarts the worker."""
    if isinstance(exc, getattr(torch, "AcceleratorError", ())):
        raise exc


def _header_error(r: InferenceRequest, shape: tuple[int, ...]) -> InvalidInput | None:
    assert isinstance(r.array, EncodedImage)
    try:
        check_header(r.array, shape)
    except InvalidInput as exc:
        return exc
    return None


def _bytes_tensor(r: InferenceRequest) -> torch.Tensor:
    assert isinstance(r.array, EncodedImage)
    return torch.frombuffer(bytearray(r.array.data), dtype=torch.uint8)


def _on_device(value: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
    return t.to(device, non_blocking=True)


def _on(stream: Any) -> Any:
    return torch.cuda.stream(stream) if stream is not None else nullcontext()


def _record(stream: Any) -> Any:
    if stream is None:
        return None
    ready = torch.cuda.Event()
    ready.record(stream)
    return ready
