"""CUDA paths of the runner: skipped where there is no CUDA (run them on a GPU with .ci/gpu-check).

AMP and channels_last, pinned staging with a copy stream, a real out-of-memory error split into
smaller batches, and a real device-side assert turned into DeviceFailure.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from inferq.shared.spec import parse_config
from inferq.worker.handlers import ModuleHandler
from inferq.worker.intake import InferenceRequest
from inferq.worker.runner import Runner
from tests.conftest import ROOT
from tests.models import Tiny

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CUDA = torch.device("cuda:0")


def _config(precision: str = "fp32", max_batch_size: int = 16, channels_last: bool = True):  # type: ignore[no-untyped-def]
    return parse_config(
        "m",
        {
            "input": {"shape": [3, 8, 8]},
            "preprocess": {"mean": [0.0] * 3, "std": [1.0] * 3},
            "output": {"postprocess": "raw"},
            "batching": {"max_batch_size": max_batch_size},
            "precision": {"mode": precision, "channels_last": channels_last},
        },
    )


def _requests(n: int) -> list[InferenceRequest]:
    rng = np.random.default_rng(0)
    return [
        InferenceRequest(
            task_id=str(i),
            tag=str(i),
            model="m",
            array=rng.integers(0, 256, (3, 8, 8), dtype=np.uint8),
            submitted_at=0.0,
            preprocess_ms=0.0,
            received_at=0.0,
            received_wall=0.0,
            deadline=None,
            eta=None,
            priority=0,
        )
        for i in range(n)
    ]


def _reference(requests: list[InferenceRequest]) -> np.ndarray:
    x = torch.from_numpy(np.stack([r.array for r in requests])).float() / 255.0
    return Tiny().eval()(x).detach().numpy()


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_amp_and_channels_last_match_the_cpu_reference(precision: str) -> None:
    runner = Runner(ModuleHandler(Tiny()), _config(precision), 1, CUDA, "gpu-test")
    runner.handler.setup(CUDA, True)
    requests = _requests(16)
    outcomes = runner.run(requests)
    got = np.array([o.value["outputs"] for o in outcomes])  # type: ignore[index]
    tolerance = 1e-4 if precision == "fp32" else 5e-2
    np.testing.assert_allclose(got, _reference(requests), rtol=tolerance, atol=tolerance)
    assert all(slot.is_pinned() for slot in runner.collator._slots)


class Greedy(Tiny):
    """Really runs out of device memory for batches above 4."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 4:
            torch.empty(int(1e15), dtype=torch.uint8, device=x.device)  # ~1 PB: a real OOM
        return self.body(x)


def test_real_oom_splits_the_batch_and_lowers_the_cap() -> None:
    runner = Runner(ModuleHandler(Greedy()), _config(max_batch_size=16), 1, CUDA, "gpu-test")
    runner.handler.setup(CUDA, True)
    outcomes = runner.run(_requests(16))
    assert all(o.error is None for o in outcomes)
    assert runner.cap.value <= 4


def test_device_side_assert_becomes_device_failure() -> None:
    """A corrupted CUDA context cannot be reused, so this runs in its own process."""
    code = textwrap.dedent(
        """
        import torch
        from tests.conftest import ROOT  # noqa: F401
        from tests.models import Tiny
        from tests.gpu.test_cuda import _config, _requests, CUDA
        from inferq.worker.handlers import ModuleHandler
        from inferq.worker.runner import DeviceFailure, Runner

        class Asserting(Tiny):
            def forward(self, x):
                index = torch.full((1,), 10**6, device=x.device, dtype=torch.long)
                return self.body(x) + torch.zeros(4, device=x.device)[index].sum()

        runner = Runner(ModuleHandler(Asserting()), _config(), 1, CUDA, "gpu-test")
        runner.handler.setup(CUDA, True)
        try:
            runner.run(_requests(4))
        except DeviceFailure as exc:
            print("DeviceFailure:", exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert "DeviceFailure:" in out.stdout, out.stdout + out.stderr
