"""The named-tensor input path on CUDA: pinned staging of padded inputs and generated masks on the
collator's copy stream, several batches staged ahead in rotating slots, results equal to CPU's."""

from __future__ import annotations

import textwrap
import tomllib

import numpy as np
import pytest
import torch

from inferq.shared.spec import parse_config
from inferq.worker.handlers import ModuleHandler
from inferq.worker.intake import InferenceRequest
from inferq.worker.runner import Runner
from tests.models import MAX_TOKENS, POISON_ID, TENSOR_CONFIGS, Tokens

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


def _runner(device: torch.device) -> Runner:
    text = textwrap.dedent(TENSOR_CONFIGS["tokens"]) + "[batching]\nmax_batch_size = 16\n"
    handler = ModuleHandler(torch.jit.script(Tokens().eval()))
    handler.setup(device, channels_last=False)
    return Runner(handler, parse_config("tokens", tomllib.loads(text)), 1, device, "w")


def _requests(seed: int, n: int) -> list[InferenceRequest]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ids = rng.integers(0, POISON_ID, rng.integers(1, MAX_TOKENS + 1))
        flags = rng.integers(0, 2, 4).astype(bool)
        out.append(
            InferenceRequest(
                str(i), "t", "tokens", ids, 0.0, 0.0, 0.0, 0.0, None, None, 0, tensors=(ids, flags)
            )
        )
    return out


def test_padded_batches_staged_ahead_on_cuda_equal_cpu() -> None:
    cuda, cpu = _runner(torch.device("cuda:0")), _runner(torch.device("cpu"))
    batches = [_requests(seed, 16) for seed in range(6)]
    prepared = [cuda.prepare(b) for b in batches[:3]]  # three slots staged before any runs
    got = [cuda.execute(p) for p in prepared] + [cuda.run(b) for b in batches[3:]]
    for batch, outcomes in zip(batches, got, strict=True):
        want = cpu.run(batch)
        assert [o.value["outputs"] for o in outcomes] == [  # type: ignore[index]
            o.value["outputs"]
            for o in want  # type: ignore[index]
        ]
