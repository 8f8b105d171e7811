"""The model-handler contract and its TorchScript, ONNX, torch.export, AOTInductor and eager
implementations.

A handler is loaded in the process that owns the device (never before a fork): ``setup(device)``
loads and places the model, ``predict(batch)`` maps a normalised float NCHW batch to its outputs: one
tensor with a row per input row, or a tuple, list or dict of tensors (``worker/outputs.py`` cuts
them per request). Anything that can do that plugs in the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from inferq.shared.errors import ConfigError
from inferq.worker.repository import ModelVersion, verify


class ModelHandler(Protocol):
    def setup(self, device: torch.device, channels_last: bool) -> None: ...

    def predict(self, *batch: torch.Tensor) -> torch.Tensor: ...


class ModuleHandler:
    """An eager ``nn.Module`` (also the base of the TorchScript handler)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def setup(self, device: torch.device, channels_last: bool) -> None:
        self.module = self.module.to(device).eval()
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def predict(self, *batch: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.module(*batch)
        return out


class TorchScriptHandler(ModuleHandler):
    def __init__(self, path: Path) -> None:
        self.path = path

    def setup(self, device: torch.device, channels_last: bool) -> None:
        self.module = torch.jit.load(str(self.path), map_location=device)
        super().setup(device, channels_last)


class ExportedHandler(ModuleHandler):
    """A ``torch.export`` program (``torch.export.save``); runs as the module it unflattens to."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def setup(self, device: torch.device, channels_last: bool) -> None:
        program = torch.export.load(str(self.path))
        # An exported module ignores .eval(); its graph was captured in the mode it was saved in.
        self.module = program.module().to(device)


class AotiHandler:
    """An AOTInductor package: compiled ahead of time for one device type, loaded as-is."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def setup(self, device: torch.device, channels_last: bool) -> None:
        from torch._inductor import aoti_load_package

        index = device.index if device.type == "cuda" else -1
        self.runner: Any = aoti_load_package(str(self.path), device_index=index or 0)
        self.device = device

    def predict(self, *batch: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.runner(*batch)
        return out


class OnnxHandler:
    """onnxruntime session; inputs go through host memory unless the CUDA provider is present."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def setup(self, device: torch.device, channels_last: bool) -> None:
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))  # type: ignore[arg-type]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.device = device

    def predict(self, *batch: torch.Tensor) -> Any:
        """One output: its tensor; several: ``{output name: tensor}`` (``worker/outputs.py``).
        An image arrives normalised (float32); named tensors keep their declared dtypes."""
        host = [b.detach().contiguous().cpu().numpy() for b in batch]
        outs = self.session.run(None, dict(zip(self.input_names, host, strict=True)))
        if len(outs) == 1:
            return torch.from_numpy(outs[0]).to(self.device)
        return {
            n: torch.from_numpy(o).to(self.device)
            for n, o in zip(self.output_names, outs, strict=True)
        }


HANDLERS: dict[str, Callable[[Path], ModelHandler]] = {
    "torchscript": TorchScriptHandler,
    "onnx": OnnxHandler,
    "exported": ExportedHandler,
    "aoti": AotiHandler,
}


def load_handler(model: ModelVersion, device: torch.device) -> ModelHandler:
    """Verify the model file's sha256, load it on ``device``, then apply the ``[optimize]``
    runtime options (padding to buckets, torch.compile, CUDA graphs) around it."""
    from inferq.worker.variants import apply_optimize, check_device

    config = model.config
    check_device(config, device)
    verify(model.path)
    make = HANDLERS.get(config.platform)
    if make is None:  # parse_config already refuses others; kept for a clear message
        raise ConfigError(f"platform must be one of {tuple(HANDLERS)}, got {config.platform!r}")
    handler = make(model.path)
    handler.setup(device, config.precision.channels_last)
    return apply_optimize(handler, config, device)
