"""The model-handler contract and its TorchScript, ONNX and eager implementations.

A handler is loaded in the process that owns the device (never before a fork): ``setup(device)``
loads and places the model, ``predict(batch)`` maps a normalised float NCHW batch to one output row
per input row. Anything that can do that plugs in the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from inferq.shared.errors import ConfigError
from inferq.worker.repository import ModelVersion, verify


class ModelHandler(Protocol):
    def setup(self, device: torch.device, channels_last: bool) -> None: ...

    def predict(self, batch: torch.Tensor) -> torch.Tensor: ...


class ModuleHandler:
    """An eager ``nn.Module`` (also the base of the TorchScript handler)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def setup(self, device: torch.device, channels_last: bool) -> None:
        self.module = self.module.to(device).eval()
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.module(batch)
        return out


class TorchScriptHandler(ModuleHandler):
    def __init__(self, path: Path) -> None:
        self.path = path

    def setup(self, device: torch.device, channels_last: bool) -> None:
        self.module = torch.jit.load(str(self.path), map_location=device)
        super().setup(device, channels_last)


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
        self.input_name = self.session.get_inputs()[0].name
        self.device = device

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        host = batch.detach().float().contiguous().cpu().numpy()
        (out, *_) = self.session.run(None, {self.input_name: host})
        return torch.from_numpy(out).to(self.device)


def load_handler(model: ModelVersion, device: torch.device) -> ModelHandler:
    """Verify the model file's sha256, then load it on ``device``."""
    verify(model.path)
    handler: ModelHandler
    if model.config.platform == "torchscript":
        handler = TorchScriptHandler(model.path)
    elif model.config.platform == "onnx":
        handler = OnnxHandler(model.path)
    else:  # parse_config already refuses others; kept for a clear message if that changes
        raise ConfigError(f"platform must be torchscript or onnx, got {model.config.platform!r}")
    handler.setup(device, model.config.precision.channels_last)
    return handler
