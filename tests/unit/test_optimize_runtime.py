"""worker/variants.py: the [optimize] runtime options around a handler, driven through the Runner.

Buckets: outputs equal the unpadded model's, padded rows never reach a result, and the runner's
bisection and OOM split still work (each half is padded to its own bucket). Refused combinations
name their keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from inferq.shared.errors import ConfigError, ModelError
from inferq.shared.spec import ModelConfig, parse_config
from inferq.worker.handlers import load_handler
from inferq.worker.intake import InferenceRequest
from inferq.worker.optimize.convert import export_program
from inferq.worker.repository import ModelRepository, record_sha256
from inferq.worker.runner import Runner
from inferq.worker.variants import BucketedHandler, check_device, pad_rows
from tests.models import SHAPE, Tiny, config_text, write_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
CPU = torch.device("cpu")


def _runner(root: Path, kind: str, optimize: str, **config: Any) -> Runner:
    write_model(root, kind, kind, **config)
    (root / kind / "config.toml").write_text(config_text(**config) + "[optimize]\n" + optimize)
    mv = ModelRepository(root).resolve(kind)
    return Runner(load_handler(mv, CPU), mv.config, mv.version, CPU, "w")


def _requests(n: int, poisoned: tuple[int, ...] = ()) -> list[InferenceRequest]:
    rng = np.random.default_rng(0)
    requests = []
    for i in range(n):
        array = rng.integers(0, 200, SHAPE, dtype=np.uint8)
        if i in poisoned:
            array[0, 0, 0] = 255
        requests.append(
            InferenceRequest(
                task_id=str(i),
                tag="t",
                model="m",
                array=array,
                submitted_at=0.0,
                preprocess_ms=0.0,
                received_at=0.0,
                received_wall=0.0,
                deadline=None,
                eta=None,
                priority=0,
            )
        )
    return requests


def _reference(requests: list[InferenceRequest]) -> torch.Tensor:
    x = torch.from_numpy(np.stack([r.array for r in requests])).float() / 255.0
    with torch.no_grad():
        return Tiny().eval()(x)


def _raw_outputs(runner: Runner, requests: list[InferenceRequest]) -> torch.Tensor:
    x = torch.from_numpy(np.stack([r.array for r in requests]))
    return runner._forward(x)


@pytest.mark.parametrize("n", [1, 3, 4, 5, 16])
def test_a_bucketed_batch_equals_the_unpadded_model(tmp_path: Path, n: int) -> None:
    runner = _runner(tmp_path, "tiny", "batch_buckets = [4, 8, 16]\n")
    requests = _requests(n)
    got = _raw_outputs(runner, requests)
    assert got.shape == (n, 4)
    torch.testing.assert_close(got, _reference(requests), rtol=1e-5, atol=1e-5)


def test_padded_rows_never_reach_the_results() -> None:
    seen: list[torch.Tensor] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return x.flatten(1)[:, :2] + 1000.0 * torch.arange(len(x)).view(-1, 1)

    handler = BucketedHandler(forward, (4, 8))
    batch = torch.ones((5, *SHAPE))
    out = handler.predict(batch)
    assert [len(x) for x in seen] == [8]  # the model saw the bucket
    assert seen[0][5:].abs().sum() == 0  # padding is zeros
    assert out.shape == (5, 2) and float(out.max()) < 5000.0  # rows 5..7 (>= 5000) were dropped


def test_pad_rows_keeps_channels_last() -> None:
    batch = torch.rand(3, *SHAPE).contiguous(memory_format=torch.channels_last)
    padded = pad_rows(batch, 8)
    assert padded.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(padded[:3], batch)


def test_a_batch_over_the_largest_bucket_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="largest bucket"):
        BucketedHandler(lambda x: x, (4,)).predict(torch.zeros(5, 1))


def test_a_poisoned_row_is_bisected_out_with_buckets(tmp_path: Path) -> None:
    runner = _runner(tmp_path, "faulty", "batch_buckets = [4, 16]\n")
    requests = _requests(10, poisoned=(7,))
    outcomes = runner.run(requests)
    assert [i for i, o in enumerate(outcomes) if o.error is not None] == [7]
    assert "poisoned input" in str(outcomes[7].error)
    good = [r for i, r in enumerate(requests) if i != 7]
    got = torch.tensor([[s["score"] for s in o.value["outputs"]] for o in outcomes if o.value])  # type: ignore[index]
    expected = torch.softmax(_reference(good), 1).topk(2, 1).values
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_oom_splits_a_bucketed_batch_and_lowers_the_cap(tmp_path: Path) -> None:
    # "oomy" fails above 4 rows: 16 -> 8 (padded to 8) -> 4 runs; nobody fails.
    runner = _runner(tmp_path, "oomy", "batch_buckets = [4, 8, 16]\n")
    outcomes = runner.run(_requests(16))
    assert all(o.error is None for o in outcomes)
    assert runner.cap.value <= 4


@pytest.mark.slow
def test_torch_compile_default_equals_the_source(tmp_path: Path) -> None:
    cache = tmp_path / "inductor-cache"
    options = f'batch_buckets = [4, 16]\ncompile = "default"\ncompile_cache_dir = "{cache}"\n'
    runner = _runner(tmp_path, "tiny", options)
    requests = _requests(6)
    torch.testing.assert_close(
        _raw_outputs(runner, requests), _reference(requests), rtol=1e-4, atol=1e-4
    )
    assert cache.is_dir() and any(cache.iterdir())  # compiled graphs kept for the next start


def test_an_exported_program_loads_verified_and_matches(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny")
    program = export_program(Tiny().eval(), torch.zeros(2, *SHAPE), 16)
    path = tmp_path / "tiny" / "2" / "model.pt2"
    path.parent.mkdir()
    torch.export.save(program, str(path))
    record_sha256(path)
    (path.parent / "config.toml").write_text(config_text().replace('"torchscript"', '"exported"'))
    mv = ModelRepository(tmp_path).resolve("tiny")
    assert mv.version == 2 and mv.config.platform == "exported"
    runner = Runner(load_handler(mv, CPU), mv.config, 2, CPU, "w")
    requests = _requests(5)
    torch.testing.assert_close(_raw_outputs(runner, requests), _reference(requests))
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(Exception, match="sha256"):
        load_handler(mv, CPU)


def _parse(optimize: dict[str, Any], **top: Any) -> ModelConfig:
    data: dict[str, Any] = {"input": {"shape": [3, 8, 8]}, "optimize": optimize, **top}
    data.setdefault("batching", {"max_batch_size": 16})
    return parse_config("m", data)


@pytest.mark.parametrize(
    ("optimize", "top", "message"),
    [
        (
            {"batch_buckets": [4, 8]},
            {},
            "optimize.batch_buckets must reach batching.max_batch_size",
        ),
        ({"batch_buckets": [0, 16]}, {}, "optimize.batch_buckets must be distinct sizes"),
        ({"batch_buckets": [16, 16]}, {}, "optimize.batch_buckets must be distinct sizes"),
        ({"cuda_graphs": True}, {}, "optimize.cuda_graphs needs optimize.batch_buckets"),
        ({"compile": "fast"}, {}, "optimize.compile must be one of"),
        ({"cuda_graphs": "yes"}, {}, "optimize.cuda_graphs must be true or false"),
        ({"buckets": [16]}, {}, "unknown optimize.buckets"),
        ({"compile": "default"}, {"platform": "onnx"}, "platform 'onnx' runs in onnxruntime"),
        ({}, {"platform": "onnx", "precision": {"mode": "fp16"}}, "precision.mode"),
        ({"compile": "default"}, {"platform": "aoti"}, "optimize.compile must be 'none'"),
        (
            {"batch_buckets": [16], "cuda_graphs": True, "compile": "reduce-overhead"},
            {},
            "captures CUDA graphs itself",
        ),
    ],
)
def test_combinations_that_cannot_work_are_refused_naming_the_keys(
    optimize: dict[str, Any], top: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        _parse(optimize, **top)


@pytest.mark.parametrize("key", ["cuda_graphs", "cudnn_benchmark"])
def test_cuda_only_options_are_refused_on_cpu_at_load(key: str) -> None:
    config = _parse({"batch_buckets": [16], key: True})
    with pytest.raises(ConfigError, match=f"optimize.{key} must run on a CUDA device"):
        check_device(config, CPU)


def test_no_optimize_options_leave_the_handler_as_it_was(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny")
    runner = Runner(
        load_handler(ModelRepository(tmp_path).resolve("tiny"), CPU),
        ModelRepository(tmp_path).resolve("tiny").config,
        1,
        CPU,
        "w",
    )
    assert runner._fused is not None  # the TorchScript fast path is kept
