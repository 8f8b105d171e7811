"""CUDA paths of the optimised modes: skipped where there is no CUDA (.ci/gpu-check runs them).

An fp16-weights version against its fp32 source; CUDA graphs captured per bucket replaying what
eager CUDA computes, with padded rows and earlier batches never reaching a result; torch.compile
``reduce-overhead`` against eager.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inferq.worker.handlers import load_handler
from inferq.worker.optimize.command import OptimizeRequest, optimize
from inferq.worker.repository import ModelRepository
from inferq.worker.runner import Runner
from inferq.worker.variants import BucketedHandler, CudaGraphs
from tests.models import SHAPE, Tiny, config_text, write_model

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
]
CUDA = torch.device("cuda:0")


def _runner(root: Path, optimize_toml: str = "", version: int | None = None) -> Runner:
    text = config_text() + ("[optimize]\n" + optimize_toml if optimize_toml else "")
    (root / "tiny" / "config.toml").write_text(text)
    mv = ModelRepository(root).resolve("tiny", version)
    return Runner(load_handler(mv, CUDA), mv.config, mv.version, CUDA, "gpu-test")


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE), dtype=np.uint8)


def _cpu_reference(images: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return Tiny().eval()(torch.from_numpy(images).float() / 255.0)


def _forward(runner: Runner, images: np.ndarray) -> torch.Tensor:
    return runner._forward(torch.from_numpy(images).to(CUDA))


def test_fp16_weights_version_matches_its_source_within_fp16_tolerance(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny")
    request = OptimizeRequest(
        tmp_path, "tiny", 1, "fp16", device="cuda:0", seconds=0.1, images=256, min_agreement=0.95
    )
    report = optimize(request, echo=lambda _: None)
    assert report["max_abs_diff"] < 1e-2  # logits of size ~0.5, fp16 has 11 bits of mantissa
    runner = _runner(tmp_path, version=2)
    assert runner.config.precision.mode == "fp32"  # half weights, no autocast on top
    images = _images(16, seed=1)
    got = _forward(runner, images)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, _cpu_reference(images), rtol=1e-2, atol=1e-2)


def test_cuda_graphs_per_bucket_replay_what_eager_computes(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny")
    eager = _runner(tmp_path)
    graphs = _runner(tmp_path, "batch_buckets = [4, 8, 16]\ncuda_graphs = true\n")
    handler = graphs.handler
    assert isinstance(handler, BucketedHandler) and isinstance(handler.forward, CudaGraphs)
    assert sorted(handler.forward.graphs) == [4, 8, 16]
    earlier: list[tuple[np.ndarray, torch.Tensor]] = []
    for seed, n in enumerate((1, 3, 4, 5, 16, 2)):
        images = _images(n, seed)
        got = _forward(graphs, images)
        assert got.shape == (n, 4)  # the padded rows' outputs were dropped
        torch.testing.assert_close(got, _forward(eager, images), rtol=1e-4, atol=1e-4)
        earlier.append((images, got))
    # Every result is a copy: a later replay into the same static buffers changed none of them.
    for images, got in earlier:
        torch.testing.assert_close(got, _forward(eager, images), rtol=1e-4, atol=1e-4)


def test_padding_rows_are_zeros_inside_the_captured_graph(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny")
    graphs = _runner(tmp_path, "batch_buckets = [8, 16]\ncuda_graphs = true\n")
    captured = graphs.handler.forward  # type: ignore[attr-defined]
    _forward(graphs, _images(8, seed=0))  # a full bucket leaves real pixels in the buffer
    _forward(graphs, _images(3, seed=1))
    static_in = captured.graphs[8][1]
    assert float(static_in[3:].abs().sum()) == 0.0  # the last batch's padding, not the earlier rows


@pytest.mark.slow
def test_compile_reduce_overhead_matches_eager(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny")
    eager = _runner(tmp_path)
    cache = tmp_path / "inductor-cache"
    compiled = _runner(
        tmp_path,
        f'batch_buckets = [4, 16]\ncompile = "reduce-overhead"\ncompile_cache_dir = "{cache}"\n',
    )
    for seed, n in enumerate((1, 4, 7, 16)):
        images = _images(n, seed)
        got = _forward(compiled, images)
        assert got.shape == (n, 4)
        torch.testing.assert_close(got, _forward(eager, images), rtol=1e-3, atol=1e-3)
    assert any(cache.iterdir())
