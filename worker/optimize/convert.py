"""Build an optimised model file from a TorchScript source: int8, fp16/bf16 weights, AOTInductor.

Every function writes the file into ``dest`` (a directory) and says what it built; none decides
whether the result is good enough (``worker/optimize/command.py`` measures that).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from inferq.shared.errors import ConfigError
from inferq.shared.logs import get_logger
from inferq.shared.spec import ModelConfig
from inferq.worker.optimize.cli import TARGETS
from inferq.worker.repository import MODEL_FILES
from inferq.worker.variants import export_program

log = get_logger(__name__)


@dataclass(frozen=True)
class Converted:
    """What a conversion wrote: the platform it runs on, its file, and how it was made."""

    platform: str
    path: Path
    method: str


def convert(
    target: str,
    source: torch.jit.ScriptModule,
    config: ModelConfig,
    device: torch.device,
    calibration: Sequence[torch.Tensor],
    dest: Path,
) -> Converted:
    if target == "int8":
        return to_int8(source, device, calibration, dest)
    if target in ("fp16", "bf16"):
        return to_half(source, target, device, dest)
    if target == "compiled":
        return to_aoti(source, config, device, dest)
    raise ConfigError(f"--to must be one of {TARGETS}, got {target!r}")


# -- int8 -----------------------------------------------------------------------------------------


def to_int8(
    source: torch.jit.ScriptModule,
    device: torch.device,
    calibration: Sequence[torch.Tensor],
    dest: Path,
) -> Converted:
    """Static post-training quantisation of convs and linears (conv+BN folded, activations
    calibrated), falling back to dynamic quantisation of linear weights where static
    quantisation fails or finds nothing to quantise."""
    if device.type != "cpu":
        raise ConfigError(f"--to int8 runs on CPU (quantised kernels are CPU-only), got {device}")
    quantized, method = _static_int8(source, calibration)
    if quantized is None:
        quantized, method = _dynamic_int8(source, why_not_static=method)
    log.info("int8 quantisation", method=method)
    return Converted("torchscript", _save_script(quantized, dest), method)


def _static_int8(
    source: torch.jit.ScriptModule, calibration: Sequence[torch.Tensor]
) -> tuple[torch.jit.ScriptModule | None, str]:
    from torch.ao.quantization import get_default_qconfig, quantize_jit

    engine = torch.backends.quantized.engine
    qconfig = get_default_qconfig(engine)

    def calibrate(model: torch.jit.ScriptModule, batches: Sequence[torch.Tensor]) -> None:
        for batch in batches:
            model(batch)

    try:
        with torch.no_grad(), _quiet():
            quantized = quantize_jit(source, {"": qconfig}, calibrate, [calibration])
    except Exception as exc:  # e.g. an op graph mode quantisation does not know
        return None, f"static failed ({type(exc).__name__}: {str(exc)[:200]})"
    if "quantized::" not in str(quantized.inlined_graph):
        return None, "static found no conv or linear to quantise"
    images = sum(len(b) for b in calibration)
    return quantized, f"static ({engine} engine, per-channel weights, {images} calibration images)"


def _dynamic_int8(
    source: torch.jit.ScriptModule, why_not_static: str
) -> tuple[torch.jit.ScriptModule, str]:
    """Linear weights in int8, activations quantised on the fly. TorchScript's dynamic pass
    quantises ``aten::linear`` only (an LSTM's own weights stay float, its output Linear does
    not): a graph where it finds nothing is refused rather than written as "int8"."""
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic_jit

    with torch.no_grad(), _quiet():
        quantized: torch.jit.ScriptModule = quantize_dynamic_jit(
            source, {"": default_dynamic_qconfig}
        )
    layers = str(quantized.inlined_graph).count("quantized::linear_dynamic")
    if not layers:
        raise ConfigError(
            "--to int8 needs a convolution or linear layer that graph-mode quantisation can "
            f"reach, got none: {why_not_static}; dynamic found no linear layer either"
        )
    method = (
        f"dynamic ({layers} linear layer(s) with int8 weights, activations quantised per "
        f"batch): {why_not_static}"
    )
    return quantized, method


# -- half-precision weights -----------------------------------------------------------------------


class _HalfWeights(torch.nn.Module):
    """Takes the runner's float32 input, runs the model in half precision, gives float32 back."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


def to_half(
    source: torch.jit.ScriptModule, target: str, device: torch.device, dest: Path
) -> Converted:
    if target == "fp16" and device.type == "cpu":
        raise ConfigError(
            "--to fp16 builds fp16 weights for CUDA (CPU kernels for fp16 convs are slow or "
            "missing): run with --device cuda:N, or use --to bf16 on CPU"
        )
    if (
        target == "bf16"
        and device.type == "cpu"
        and not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    ):
        raise ConfigError("--to bf16 on CPU needs bfloat16 support (AVX512-BF16/AMX), got none")
    dtype = torch.float16 if target == "fp16" else torch.bfloat16
    with _quiet():
        scripted = torch.jit.script(_HalfWeights(source.to(dtype), dtype).eval())
    method = f"{target} weights and inputs (outputs float32), for {device.type}"
    return Converted("torchscript", _save_script(scripted, dest), method)


# -- AOTInductor ----------------------------------------------------------------------------------


def to_aoti(
    source: torch.jit.ScriptModule, config: ModelConfig, device: torch.device, dest: Path
) -> Converted:
    """One AOTInductor package with a dynamic batch dimension up to the largest batch."""
    largest = max((*config.optimize.batch_buckets, config.batching.max_batch_size))
    example = torch.zeros((2, *config.shape), device=device)
    if config.precision.channels_last:  # compiled for the layout the runner hands it
        example = example.contiguous(memory_format=torch.channels_last)
    program = export_program(source, example, largest)
    path = dest / MODEL_FILES["aoti"]
    with _quiet():
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    method = f"AOTInductor package for {device.type}, batch 1..{largest}"
    return Converted("aoti", path, method)


def _save_script(module: torch.jit.ScriptModule, dest: Path) -> Path:
    path = dest / MODEL_FILES["torchscript"]
    torch.jit.save(module, str(path))
    return path


@contextmanager
def _quiet() -> Iterator[None]:
    """torch 2.13 deprecates torch.jit and torch.ao.quantization; both still serve here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield
