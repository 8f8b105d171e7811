"""The ``[optimize]`` runtime options, applied around a loaded handler.

A handler keeps its contract (one output row per input row): :class:`BucketedHandler` pads each
batch up to the next of ``batch_buckets`` and drops the padded rows' outputs, so compiled code
and captured CUDA graphs only ever see the bucket shapes, while the runner's bisection and OOM
split still hand it batches of any size (a half is padded to its own bucket). ``compile`` wraps
the forward in ``torch.compile`` (one graph per bucket, compiled at load, inductor's graph cache on
disk so a restart does not compile from scratch); ``cuda_graphs`` captures the forward per bucket
on static buffers and replays it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from inferq.shared.errors import ConfigError, ModelError
from inferq.shared.logs import get_logger
from inferq.shared.spec import ModelConfig

log = get_logger(__name__)

Forward = Callable[[torch.Tensor], torch.Tensor]
_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def check_device(config: ModelConfig, device: torch.device) -> None:
    """Refuse, before anything loads, the options that need a device this worker lacks."""
    o = config.optimize
    cuda_only = [
        key
        for key, wanted in (
            ("optimize.cuda_graphs", o.cuda_graphs),
            ("optimize.cudnn_benchmark", o.cudnn_benchmark),
        )
        if wanted
    ]
    if cuda_only and device.type != "cuda":
        raise ConfigError(
            f"model {config.name!r}: {', '.join(cuda_only)} must run on a CUDA device, got "
            f"{device}: set {' and '.join(k + ' = false' for k in cuda_only)} for this worker"
        )
    if config.platform == "aoti" and device.type not in ("cpu", "cuda"):
        raise ConfigError(f"platform 'aoti' runs on cpu or cuda, got {device}")


def apply_optimize(handler: Any, config: ModelConfig, device: torch.device) -> Any:
    """``handler`` itself when ``[optimize]`` asks for nothing, else a :class:`BucketedHandler`
    whose buckets are all compiled or captured before it returns."""
    o = config.optimize
    if o.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True  # one model per device: the switch is the process's
    if not (o.batch_buckets or o.compile != "none" or o.cuda_graphs):
        return handler
    forward: Forward = handler.predict
    if o.compile != "none":
        forward = compiled_forward(handler, config, device)
    if o.cuda_graphs:
        forward = CudaGraphs(forward, config, device, o.batch_buckets)
    bucketed = BucketedHandler(forward, o.batch_buckets, config.output.rows == "list")
    if o.compile != "none" and not o.cuda_graphs:  # captured graphs were warmed to capture them
        bucketed.warm(config, device)
    return bucketed


class BucketedHandler:
    """Pads a batch to the next bucket, runs it, and returns only the real rows' outputs."""

    def __init__(self, forward: Forward, buckets: Sequence[int], per_entry: bool = False) -> None:
        self.forward = forward
        self.buckets = tuple(sorted(buckets))
        self.per_entry = per_entry  # the model returns a list with one entry per row

    def setup(self, device: torch.device, channels_last: bool) -> None:
        """Already placed: the handler it wraps was set up before it was wrapped."""

    def bucket(self, n: int) -> int:
        """The size a batch of ``n`` runs at (``n`` itself when there are no buckets)."""
        if not self.buckets:
            return n
        for size in self.buckets:
            if size >= n:
                return size
        raise ModelError(f"batch must fit the largest bucket ({self.buckets[-1]}), got {n} rows")

    def predict(self, batch: torch.Tensor) -> Any:
        n = len(batch)
        size = self.bucket(n)
        out = self.forward(pad_rows(batch, size) if size > n else batch)
        return first_rows(out, n, self.per_entry) if size > n else out

    def warm(self, config: ModelConfig, device: torch.device) -> None:
        """One pass per bucket, under the autocast the runner will use, so that every graph is
        compiled (or captured) before the first request."""
        from inferq.worker.runner import is_oom

        for size in self.buckets:
            x = _example(config, device, size)
            try:
                with torch.inference_mode(), autocast_for(config, device):
                    self.forward(x)
            except Exception as exc:
                if not is_oom(exc):
                    raise
                # Larger buckets compile when first used; the runner lowers its cap on OOM.
                log.warning("bucket does not fit on the device", bucket=size, model=config.name)
                break


def first_rows(out: Any, n: int, per_entry: bool = False) -> Any:
    """The real rows' outputs of a padded batch: a tensor's first ``n`` rows, each member's of a
    tuple or dict of tensors, or, for a list of one entry per row (``per_entry``), its first
    ``n`` entries."""
    if isinstance(out, dict):
        return {k: v[:n] for k, v in out.items()}
    if isinstance(out, (tuple, list)) and not per_entry:
        return type(out)(v[:n] for v in out)
    return out[:n]


def pad_rows(batch: torch.Tensor, size: int) -> torch.Tensor:
    """``batch`` followed by zero rows up to ``size`` rows, in the batch's memory format."""
    fmt = (
        torch.channels_last
        if batch.dim() == 4 and batch.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )
    padded = torch.empty(
        (size, *batch.shape[1:]), dtype=batch.dtype, device=batch.device, memory_format=fmt
    )
    padded[: len(batch)].copy_(batch)
    padded[len(batch) :].zero_()
    return padded


def autocast_for(config: ModelConfig, device: torch.device) -> AbstractContextManager[Any]:
    dtype = _AUTOCAST.get(config.precision.mode)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _example(config: ModelConfig, device: torch.device, size: int) -> torch.Tensor:
    x = torch.zeros((size, *config.shape), device=device)
    return x.contiguous(memory_format=torch.channels_last) if config.precision.channels_last else x


# -- torch.compile --------------------------------------------------------------------------------


def compiled_forward(handler: Any, config: ModelConfig, device: torch.device) -> Forward:
    """``torch.compile`` of the handler's model, specialised per shape (the buckets)."""
    o = config.optimize
    if o.compile_cache_dir:
        use_compile_cache(Path(o.compile_cache_dir).expanduser())
    module = eager_module(handler, config, device)
    mode = None if o.compile == "default" else o.compile
    log.info("compiling model", model=config.name, mode=o.compile, buckets=o.batch_buckets)
    compiled: Forward = torch.compile(module, mode=mode, dynamic=False)
    return compiled


def use_compile_cache(directory: Path) -> None:
    """Point inductor's on-disk caches (FX graphs, kernels) at ``directory``. Inductor reads the
    variable each time it looks for its cache, so setting it before the first compile suffices."""
    import torch._inductor.config as inductor_config

    directory.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory)
    inductor_config.fx_graph_cache = True


def eager_module(handler: Any, config: ModelConfig, device: torch.device) -> Any:
    """What dynamo can trace: the handler's module, or for TorchScript (which dynamo cannot
    trace into) the same graph converted into a ``torch.export`` program's module."""
    module = getattr(handler, "module", None)
    if module is None:
        return handler.predict
    if not isinstance(module, torch.jit.ScriptModule):
        return module
    largest = max((*config.optimize.batch_buckets, config.batching.max_batch_size))
    return export_program(module, _example(config, device, 2), largest).module()


def export_program(
    source: torch.nn.Module, example: torch.Tensor, largest: int
) -> torch.export.ExportedProgram:
    """A ``torch.export`` program of ``source`` (TorchScript or eager) with a dynamic batch
    dimension (``example`` must have 2 rows or more: export specialises a batch of 1)."""
    module: torch.nn.Module = source
    if isinstance(source, torch.jit.ScriptModule):
        # Private in torch 2.13, but the one converter from TorchScript to an exported program.
        from torch._export.converter import TS2EPConverter

        module = TS2EPConverter(source, (example,)).convert().module()
    batch = torch.export.Dim("batch", min=1, max=max(2, largest))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        return torch.export.export(module, (example,), dynamic_shapes=({0: batch},), strict=False)


# -- CUDA graphs ----------------------------------------------------------------------------------


class CudaGraphs:
    """One CUDA graph per bucket, captured on static input and output buffers, then replayed.

    Called only with bucket-sized batches (by :class:`BucketedHandler`). The replay writes into
    the same output buffer each time, so the rows are copied out before the next batch runs.
    """

    def __init__(
        self, forward: Forward, config: ModelConfig, device: torch.device, buckets: Sequence[int]
    ) -> None:
        self.forward = forward
        self.graphs: dict[int, tuple[Any, torch.Tensor, torch.Tensor]] = {}
        for size in buckets:
            self.graphs[size] = self._capture(_example(config, device, size), config, device)

    def _capture(
        self, static_in: torch.Tensor, config: ModelConfig, device: torch.device
    ) -> tuple[Any, torch.Tensor, torch.Tensor]:
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.inference_mode(), autocast_for(config, device):
            with torch.cuda.stream(stream):
                for _ in range(3):  # kernels chosen and workspaces allocated outside the capture
                    self.forward(static_in)
            torch.cuda.current_stream(device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.forward(static_in)
        return graph, static_in, static_out

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        graph, static_in, static_out = self.graphs[len(batch)]
        static_in.copy_(batch)
        graph.replay()
        return static_out.clone()
