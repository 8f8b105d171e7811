"""Structured outputs on CUDA (skipped without it; .ci/gpu-check runs tests/gpu): a dict-output
detector and a segmenter under fp16 autocast and channels_last give what they give on the CPU,
and a poisoned request in a dict-output batch still fails alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inferq.shared.geometry import fit_geometry
from inferq.shared.spec import ModelConfig, parse_config
from inferq.worker.handlers import ModuleHandler
from inferq.worker.intake import InferenceRequest
from inferq.worker.runner import Runner
from tests.models import VISION_LABELS, VISION_SHAPE, Detector, Segmenter

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _config(postprocess: str, precision: str) -> ModelConfig:
    return parse_config(
        "m",
        {
            "input": {"shape": list(VISION_SHAPE)},
            "preprocess": {"resize": "letterbox", "mean": [0.0] * 3, "std": [1.0] * 3},
            "output": {"postprocess": postprocess, "labels": list(VISION_LABELS)},
            "precision": {"mode": precision, "channels_last": True},
        },
    )


def _run(
    module: torch.nn.Module, config: ModelConfig, device: str, arrays: list[np.ndarray]
) -> list:  # type: ignore[type-arg]
    dev = torch.device(device)
    handler = ModuleHandler(torch.jit.script(module.eval()))
    handler.setup(dev, True)
    runner = Runner(handler, config, 1, dev, "w")
    g = fit_geometry((64, 16), (32, 16), "letterbox")
    requests = [
        InferenceRequest(f"t{i}", "tag", "m", a, 0.0, 0.0, 0.0, 0.0, None, None, 5, geometry=g)
        for i, a in enumerate(arrays)
    ]
    return runner.run(requests)


def _images(n: int) -> list[np.ndarray]:
    out = []
    for i in range(n):
        x = np.zeros(VISION_SHAPE, dtype=np.uint8)
        x[0, 6:10, 2 + i : 12 + i] = 255
        out.append(x)
    return out


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_detection_and_segmentation_on_cuda_match_the_cpu(precision: str) -> None:
    arrays = _images(6)
    arrays[3][2] = 255  # blue everywhere: the detector raises for it
    for module, kind in ((Detector(), "detection"), (Segmenter(), "segmentation")):
        gpu = _run(module, _config(kind, precision), "cuda:0", arrays)
        cpu = _run(module, _config(kind, "fp32"), "cpu", arrays)
        for i, (g, c) in enumerate(zip(gpu, cpu, strict=True)):
            if kind == "detection" and i == 3:
                assert g.error is not None and c.error is not None
                continue
            assert g.value is not None and c.value is not None
            if kind == "segmentation":
                np.testing.assert_array_equal(g.value["outputs"], c.value["outputs"])
            else:
                assert g.value["outputs"] == c.value["outputs"]
