"""worker/runner.py: one batch in, one outcome per request out (CPU, tiny deterministic models)."""

from __future__ import annotations

import dataclasses
import itertools
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from inferq.shared.errors import DeadlineExceeded, IntegrityError, ModelError, WorkerCrashed
from inferq.shared.results import Timing
from inferq.shared.spec import ModelConfig, parse_config
from inferq.worker.handlers import ModuleHandler, load_handler
from inferq.worker.intake import InferenceRequest
from inferq.worker.repository import ModelVersion, record_sha256
from inferq.worker.runner import (
    BatchCap,
    Deferred,
    DeviceFailure,
    PreparedBatch,
    Runner,
    StagingFailed,
    is_fatal_device_error,
    is_oom,
)

# torch 2.13 deprecates torch.jit, but TorchScript is the repository's serving format.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CPU = torch.device("cpu")
SHAPE = (3, 4, 4)
MEAN = (0.5, 0.25, 0.0)
STD = (0.5, 0.25, 2.0)
SCALE = 255.0
WALL = 1_000_000.0  # the injected wall clock's "now"
MONO = 500.0  # the injected monotonic clock's "now"
TIMING_KEYS = set(typing.get_type_hints(Timing))
_task_ids = itertools.count()


def _config(
    *,
    postprocess: str = "raw",
    top_k: int = 3,
    labels: tuple[str, ...] = (),
    max_batch_size: int = 16,
    preferred: tuple[int, ...] = (),
    mode: str = "fp32",
    channels_last: bool = False,
    dtype: str = "uint8",
    scale: float = SCALE,
) -> ModelConfig:
    return parse_config(
        "tiny",
        {
            "input": {"shape": list(SHAPE), "dtype": dtype},
            "preprocess": {"mean": list(MEAN), "std": list(STD), "scale": scale},
            "output": {"postprocess": postprocess, "top_k": top_k, "labels": list(labels)},
            "batching": {
                "max_batch_size": max_batch_size,
                "preferred_batch_sizes": list(preferred),
            },
            "precision": {"mode": mode, "channels_last": channels_last},
        },
    )


def _runner(module: torch.nn.Module, config: ModelConfig | None = None, **kw: Any) -> Runner:
    config = config or _config()
    handler = ModuleHandler(module)
    handler.setup(CPU, config.precision.channels_last)
    return Runner(handler, config, 3, CPU, "worker-a", clock=lambda: MONO, wall=lambda: WALL, **kw)


def _request(array: np.ndarray, deadline: float | None = None, **kw: Any) -> InferenceRequest:
    fields: dict[str, Any] = {
        "task_id": f"t{next(_task_ids)}",
        "tag": "tag",
        "model": "tiny",
        "array": array,
        "submitted_at": WALL - 2.0,
        "preprocess_ms": 1.5,
        "received_at": MONO - 0.25,
        "received_wall": WALL - 1.0,
        "deadline": deadline,
        "eta": None,
        "priority": 5,
    }
    fields.update(kw)
    return InferenceRequest(**fields)


def _arrays(n: int, seed: int = 0, high: int = 200) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, high, size=SHAPE, dtype=np.uint8) for _ in range(n)]


def _normalised(array: np.ndarray) -> np.ndarray:
    """(x / scale - mean) / std, computed independently of the runner, in float64."""
    mean = np.array(MEAN)[:, None, None]
    std = np.array(STD)[:, None, None]
    return (array.astype(np.float64) / SCALE - mean) / std


# -- tiny models -------------------------------------------------------------------------------


class ChannelMeans(torch.nn.Module):
    """(N, C, H, W) -> (N, C): each channel's mean. Counts calls and rows it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return x.mean(dim=(2, 3))


class TinyNet(torch.nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, kernel_size=3, padding=1)
        self.fc = torch.nn.Linear(4 * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class Poisoned(ChannelMeans):
    """Raises whenever any row holds a pixel of 255 (normalised: channel 0 value 1.0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        if (x[:, 0] > 0.99).any():
            raise ValueError("poisoned pixel")
        return x.mean(dim=(2, 3))


class OomAbove(ChannelMeans):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return x.mean(dim=(2, 3))


class RaisesAlways(torch.nn.Module):
    def __init__(self, exc: Exception) -> None:
        super().__init__()
        self.exc = exc
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        raise self.exc


def _expected_means(array: np.ndarray) -> np.ndarray:
    return _normalised(array).mean(axis=(1, 2))


# -- outputs and normalisation -----------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5, 16])
def test_each_output_is_the_model_applied_to_its_own_normalised_input(n: int) -> None:
    arrays = _arrays(n, seed=n)
    runner = _runner(ChannelMeans())
    outcomes = runner.run([_request(a) for a in arrays])
    assert len(outcomes) == n
    for array, outcome in zip(arrays, outcomes, strict=True):
        assert outcome.error is None
        assert outcome.value is not None
        np.testing.assert_allclose(
            outcome.value["outputs"], _expected_means(array), rtol=1e-5, atol=1e-5
        )


def test_outcomes_keep_request_order_and_identity() -> None:
    requests = [_request(a) for a in _arrays(6)]
    outcomes = _runner(ChannelMeans()).run(requests)
    assert [o.request for o in outcomes] == requests
    assert all(o.request is r for o, r in zip(outcomes, requests, strict=True))


def test_batched_outputs_equal_unbatched_outputs_for_a_conv_net() -> None:
    arrays = _arrays(9, seed=3)
    net = TinyNet().eval()
    batched = _runner(net).run([_request(a) for a in arrays])
    for array, outcome in zip(arrays, batched, strict=True):
        x = torch.from_numpy(_normalised(array)).float()[None]
        with torch.no_grad():
            expected = net(x)[0].numpy()
        assert outcome.value is not None
        np.testing.assert_allclose(outcome.value["outputs"], expected, rtol=1e-4, atol=1e-5)


def test_a_batch_larger_than_the_staging_buffer_still_runs() -> None:
    arrays = _arrays(6, seed=4)
    outcomes = _runner(ChannelMeans(), _config(max_batch_size=4)).run([_request(a) for a in arrays])
    for array, outcome in zip(arrays, outcomes, strict=True):
        assert outcome.value is not None
        np.testing.assert_allclose(
            outcome.value["outputs"], _expected_means(array), rtol=1e-5, atol=1e-5
        )


def test_consecutive_batches_do_not_leak_through_the_staging_buffer() -> None:
    runner = _runner(ChannelMeans())
    first = _arrays(8, seed=5)
    runner.run([_request(a) for a in first])
    second = _arrays(3, seed=6)
    outcomes = runner.run([_request(a) for a in second])
    for array, outcome in zip(second, outcomes, strict=True):
        assert outcome.value is not None
        np.testing.assert_allclose(
            outcome.value["outputs"], _expected_means(array), rtol=1e-5, atol=1e-5
        )


def test_empty_batch_gives_no_outcomes() -> None:
    module = ChannelMeans()
    assert _runner(module).run([]) == []
    assert module.calls == []


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_setting_reaches_the_model(channels_last: bool) -> None:
    seen: list[bool] = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(
                x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            )
            return x.mean(dim=(2, 3))

    _runner(Probe(), _config(channels_last=channels_last)).run([_request(a) for a in _arrays(2)])
    assert seen == [channels_last]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_float_input_models_compute_on_the_float_values(dtype: type) -> None:
    config = _config(dtype=np.dtype(dtype).name, scale=1.0)
    array = np.full(SHAPE, 0.5, dtype=dtype)
    outcomes = _runner(ChannelMeans(), config).run([_request(array)])
    assert outcomes[0].value is not None
    expected = (0.5 - np.array(MEAN)) / np.array(STD)  # scale 1.0: no /255 for float inputs
    np.testing.assert_allclose(outcomes[0].value["outputs"], expected, rtol=1e-3)


# -- post-processing ---------------------------------------------------------------------------


class FixedLogits(torch.nn.Module):
    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1).clone()


def test_topk_gives_sorted_labels_and_softmax_scores() -> None:
    logits = [0.0, 3.0, 1.0, 2.0, -1.0]
    config = _config(postprocess="topk", top_k=3, labels=("a", "b", "c", "d", "e"))
    outcome = _runner(FixedLogits(logits), config).run([_request(_arrays(1)[0])])[0]
    assert outcome.value is not None
    top = outcome.value["outputs"]
    assert [t["index"] for t in top] == [1, 3, 2]
    assert [t["label"] for t in top] == ["b", "d", "c"]
    probs = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose([t["score"] for t in top], probs[[1, 3, 2]], rtol=1e-5)
    scores = [t["score"] for t in top]
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) <= 1.0 + 1e-6


def test_topk_without_enough_labels_uses_the_index_and_caps_k() -> None:
    config = _config(postprocess="topk", top_k=10, labels=("zero",))
    outcome = _runner(FixedLogits([5.0, 1.0, 2.0]), config).run([_request(_arrays(1)[0])])[0]
    assert outcome.value is not None
    top = outcome.value["outputs"]
    assert [t["label"] for t in top] == ["zero", "2", "1"]
    assert sum(t["score"] for t in top) == pytest.approx(1.0, abs=1e-6)


def test_topk_scores_follow_each_rows_own_logits() -> None:
    arrays = _arrays(4, seed=8)
    config = _config(postprocess="topk", top_k=2)
    outcomes = _runner(ChannelMeans(), config).run([_request(a) for a in arrays])
    for array, outcome in zip(arrays, outcomes, strict=True):
        means = _expected_means(array)
        assert outcome.value is not None
        assert [t["index"] for t in outcome.value["outputs"]] == list(np.argsort(-means)[:2])


def test_raw_postprocess_returns_the_output_row_as_an_array() -> None:
    outcome = _runner(FixedLogits([0.5, -1.0, 2.0])).run([_request(_arrays(1)[0])])[0]
    assert outcome.value is not None
    got = outcome.value["outputs"]
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array([0.5, -1.0, 2.0], dtype=np.float32))


# -- result shape and timing -------------------------------------------------------------------


def test_result_dict_and_timing() -> None:
    requests = [_request(a) for a in _arrays(3)]
    outcome = _runner(ChannelMeans()).run(requests)[1]
    assert outcome.error is None and outcome.value is not None
    assert set(outcome.value) == {"model", "version", "outputs", "timing"}
    assert outcome.value["model"] == "tiny"
    assert outcome.value["version"] == 3
    timing = outcome.value["timing"]
    assert set(timing) == TIMING_KEYS
    assert timing["batch_size"] == 3
    assert timing["worker"] == "worker-a"
    assert timing["device"] == "cpu"
    assert timing["preprocess_ms"] == 1.5
    assert timing["queue_ms"] == pytest.approx(1000.0)  # received_wall - submitted_at
    assert timing["batch_wait_ms"] == pytest.approx(250.0)  # closed_at - received_at
    assert timing["total_ms"] == pytest.approx(1.5 + 2000.0)  # preprocess + (ready - submitted)
    for key in ("collate_ms", "infer_ms", "post_ms"):
        assert timing[key] == 0.0  # the injected monotonic clock does not move


def test_timing_is_clamped_at_zero_for_skewed_clocks() -> None:
    request = _request(
        _arrays(1)[0], submitted_at=WALL + 5.0, received_wall=WALL, received_at=MONO + 1
    )
    outcome = _runner(ChannelMeans()).run([request])[0]
    assert outcome.value is not None
    timing = outcome.value["timing"]
    assert timing["queue_ms"] == 0.0
    assert timing["batch_wait_ms"] == 0.0
    assert timing["total_ms"] == 1.5


def test_batch_size_counts_only_live_requests() -> None:
    live = [_request(a) for a in _arrays(2)]
    dead = _request(_arrays(1)[0], deadline=WALL - 1)
    outcomes = _runner(ChannelMeans()).run([live[0], dead, live[1]])
    assert outcomes[0].value is not None
    assert outcomes[0].value["timing"]["batch_size"] == 2


# -- deadlines ---------------------------------------------------------------------------------


def test_expired_requests_get_deadline_exceeded_and_are_not_computed() -> None:
    module = ChannelMeans()
    arrays = _arrays(5, seed=9)
    deadlines = [None, WALL - 0.5, WALL + 10.0, WALL, WALL - 100.0]
    outcomes = _runner(module).run([_request(a, d) for a, d in zip(arrays, deadlines, strict=True)])
    expired = [1, 3, 4]  # deadline <= now is expired
    for i, outcome in enumerate(outcomes):
        if i in expired:
            assert isinstance(outcome.error, DeadlineExceeded)
            assert outcome.value is None
            assert "not computed" in str(outcome.error)
        else:
            assert outcome.error is None and outcome.value is not None
            np.testing.assert_allclose(
                outcome.value["outputs"], _expected_means(arrays[i]), atol=1e-5
            )
    assert module.calls == [2]  # one forward, with the two live rows only
    assert "500 ms late" in str(outcomes[1].error)


def test_all_expired_means_no_forward_at_all() -> None:
    module = ChannelMeans()
    outcomes = _runner(module).run([_request(a, WALL - 1) for a in _arrays(3)])
    assert all(isinstance(o.error, DeadlineExceeded) for o in outcomes)
    assert module.calls == []


# -- failures stay with their request ----------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "guilty"),
    [(1, [0]), (7, [3]), (7, [0, 6]), (16, [5]), (16, [0, 7, 8, 15]), (16, list(range(16)))],
)
def test_a_raising_input_fails_only_its_own_request(n: int, guilty: list[int]) -> None:
    arrays = _arrays(n, seed=n + len(guilty))
    for i in guilty:
        arrays[i][0, 1, 2] = 255
    module = Poisoned()
    outcomes = _runner(module).run([_request(a) for a in arrays])
    assert len(outcomes) == n
    for i, (array, outcome) in enumerate(zip(arrays, outcomes, strict=True)):
        if i in guilty:
            assert isinstance(outcome.error, ModelError), i
            assert "ValueError: poisoned pixel" in str(outcome.error)
            assert outcome.value is None
        else:
            assert outcome.error is None, (i, outcome.error)
            assert outcome.value is not None
            np.testing.assert_allclose(outcome.value["outputs"], _expected_means(array), atol=1e-5)
    # bisection: every single-row forward is for a guilty row or a clean half; never more
    # forwards than a full binary tree over the batch
    assert len(module.calls) <= 2 * n - 1


def test_wrong_output_row_count_fails_each_request_with_model_error() -> None:
    class OneRow(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(1, 3) if x.shape[0] > 1 else torch.zeros(2, 3)

    outcomes = _runner(OneRow()).run([_request(a) for a in _arrays(3)])
    assert all(isinstance(o.error, ModelError) for o in outcomes)
    assert "one row per input" in str(outcomes[0].error)


# -- out of memory -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"),
    ],
)
def test_oom_splits_the_batch_and_lowers_the_cap(error: Exception) -> None:
    class OomOver4(ChannelMeans):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls.append(x.shape[0])
            if x.shape[0] > 4:
                raise error
            return x.mean(dim=(2, 3))

    module = OomOver4()
    runner = _runner(module)
    arrays = _arrays(16, seed=10)
    outcomes = runner.run([_request(a) for a in arrays])
    for array, outcome in zip(arrays, outcomes, strict=True):
        assert outcome.error is None, outcome.error
        assert outcome.value is not None
        np.testing.assert_allclose(outcome.value["outputs"], _expected_means(array), atol=1e-5)
    assert runner.cap.value <= 4
    assert sum(s for s in module.calls if s <= 4) == 16  # every row computed exactly once


def test_oom_on_a_single_input_fails_only_that_request() -> None:
    module = OomAbove(limit=0)
    runner = _runner(module)
    outcomes = runner.run([_request(a) for a in _arrays(2)])
    assert all(isinstance(o.error, ModelError) for o in outcomes)
    assert "fit in device memory" in str(outcomes[0].error)
    assert runner.cap.value == 1


def test_cap_recovers_after_clean_batches_in_the_runner() -> None:
    module = OomAbove(limit=4)
    runner = _runner(module)
    runner.cap = BatchCap(16, recover_after=3)
    runner.run([_request(a) for a in _arrays(8)])
    assert runner.cap.value == 4
    module.limit = 16  # the memory pressure is gone
    clean_runs = 0
    while runner.cap.value < 16 and clean_runs < 20:
        runner.run([_request(a) for a in _arrays(runner.cap.value)])
        clean_runs += 1
    assert runner.cap.value == 16
    assert clean_runs <= 2 * 3  # 4 -> 8 -> 16, three clean batches each


def test_batch_cap_halves_on_oom_and_doubles_back() -> None:
    cap = BatchCap(32, recover_after=3)
    cap.shrink(32)
    assert cap.value == 16
    cap.shrink(7)  # a failure at 7 puts the cap at 3
    assert cap.value == 3
    cap.shrink(40)  # never raised by a shrink
    assert cap.value == 3
    cap.ok()
    cap.ok()
    assert cap.value == 3
    cap.ok()
    assert cap.value == 6
    for _ in range(3):
        cap.ok()
    assert cap.value == 12
    for _ in range(3):
        cap.ok()
    assert cap.value == 24
    for _ in range(3):
        cap.ok()
    assert cap.value == 32  # never above the maximum
    for _ in range(10):
        cap.ok()
    assert cap.value == 32


def test_batch_cap_shrink_resets_the_clean_run_and_floors_at_one() -> None:
    cap = BatchCap(8, recover_after=2)
    cap.shrink(8)
    cap.ok()
    cap.shrink(8)  # interrupts the run of clean batches
    cap.ok()
    assert cap.value == 4
    cap.shrink(1)
    assert cap.value == 1


def test_batch_cap_reports_its_start_and_each_change_only() -> None:
    changes: list[int] = []
    cap = BatchCap(8, recover_after=2, on_change=changes.append)
    cap.shrink(8)
    cap.shrink(9)  # no lower than it is: not a change
    cap.ok()
    cap.ok()
    cap.ok()  # at the maximum already
    assert changes == [8, 4, 8]


def _staging_raises(runner: Runner, exc: Exception) -> None:
    def stage(arrays: Any) -> Any:
        raise exc

    runner.collator.stage = stage  # type: ignore[method-assign]


def test_stage_defers_a_batch_with_no_room_and_lowers_the_cap() -> None:
    changes: list[int] = []
    runner = _runner(ChannelMeans(), on_cap_change=changes.append)
    _staging_raises(runner, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB"))
    batch = [_request(a) for a in _arrays(8)]
    staged = runner.stage(batch)
    assert isinstance(staged, Deferred)
    assert staged.requests == batch  # the same requests, to run in smaller batches
    assert runner.cap.value == 4
    assert changes == [16, 4]


@pytest.mark.parametrize(
    "exc", [torch.OutOfMemoryError("CUDA out of memory"), ValueError("pinned memory exhausted")]
)
def test_stage_answers_every_request_when_a_batch_cannot_be_staged(exc: Exception) -> None:
    runner = _runner(ChannelMeans())
    _staging_raises(runner, exc)
    batch = [_request(a) for a in _arrays(1 if isinstance(exc, torch.OutOfMemoryError) else 3)]
    staged = runner.stage(batch)
    assert isinstance(staged, StagingFailed)
    assert [o.request for o in staged.outcomes] == batch
    assert all(isinstance(o.error, WorkerCrashed) for o in staged.outcomes)
    assert runner.cap.value == 16


def test_stage_raises_a_device_failure() -> None:
    runner = _runner(ChannelMeans())
    _staging_raises(runner, RuntimeError("CUDA error: device-side assert triggered"))
    with pytest.raises(DeviceFailure):
        runner.stage([_request(a) for a in _arrays(2)])


def test_stage_hands_back_a_staged_batch() -> None:
    runner = _runner(ChannelMeans())
    batch = [_request(a) for a in _arrays(3)]
    staged = runner.stage(batch)
    assert isinstance(staged, PreparedBatch)
    assert len(runner.execute(staged)) == 3


def test_error_classifiers() -> None:
    assert is_oom(torch.OutOfMemoryError("x"))
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert is_oom(
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried... out of memory")
    )
    assert not is_oom(ValueError("bad input"))
    assert is_fatal_device_error(RuntimeError("CUDA error: device-side assert triggered"))
    assert is_fatal_device_error(
        RuntimeError("CUDA error: an illegal memory access was encountered")
    )
    assert not is_fatal_device_error(RuntimeError("CUDA out of memory"))
    assert not is_fatal_device_error(ValueError("poisoned pixel"))


# -- fatal device errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        "CUDA error: device-side assert triggered",
        "CUDA error: an illegal memory access was encountered",
    ],
)
def test_fatal_device_error_raises_device_failure_without_bisecting(message: str) -> None:
    module = RaisesAlways(RuntimeError(message))
    runner = _runner(module)
    with pytest.raises(DeviceFailure, match=message):
        runner.run([_request(a) for a in _arrays(8)])
    assert module.calls == 1


# -- precision ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_precision_on_cpu_gives_close_outputs(mode: str, dtype: torch.dtype) -> None:
    seen: list[torch.dtype] = []

    class Recording(TinyNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = super().forward(x)
            seen.append(out.dtype)
            return out

    arrays = _arrays(4, seed=11)
    reference = _runner(Recording()).run([_request(a) for a in arrays])
    low = _runner(Recording(), _config(mode=mode)).run([_request(a) for a in arrays])
    assert seen == [torch.float32, dtype]  # autocast really ran the linear layers in `dtype`
    for ref, got in zip(reference, low, strict=True):
        assert ref.value is not None and got.value is not None
        assert got.value["outputs"].dtype == np.float32  # results in float32 whatever autocast ran
        np.testing.assert_allclose(got.value["outputs"], ref.value["outputs"], rtol=5e-2, atol=5e-2)


# -- warmup ------------------------------------------------------------------------------------


def test_warmup_runs_each_default_size_and_returns_seconds() -> None:
    module = ChannelMeans()
    runner = _runner(module, _config(max_batch_size=8, preferred=(4, 2)))
    seconds = runner.warmup()
    assert sorted(seconds) == [1, 2, 4, 8]
    assert all(isinstance(s, float) and s >= 0.0 for s in seconds.values())
    assert module.calls == [1, 1, 1, 2, 2, 2, 4, 4, 4, 8, 8, 8]


def test_warmup_with_explicit_sizes_and_rounds() -> None:
    module = ChannelMeans()
    seconds = _runner(module).warmup(sizes=[3, 3, 1], rounds=3)
    assert sorted(seconds) == [1, 3]
    assert module.calls == [1, 1, 1, 3, 3, 3]


# -- TorchScript through the repository --------------------------------------------------------


def _write_torchscript(tmp_path: Path, module: torch.nn.Module) -> ModelVersion:
    config = _config(postprocess="raw")
    path = tmp_path / "tiny" / "1" / "model.pt"
    path.parent.mkdir(parents=True)
    torch.jit.save(torch.jit.script(module.eval()), str(path))
    record_sha256(path)
    return ModelVersion("tiny", 1, path, config)


class ScriptableMeans(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) * 2.0 + 1.0


def test_torchscript_handler_through_load_handler(tmp_path: Path) -> None:
    version = _write_torchscript(tmp_path, ScriptableMeans())
    handler = load_handler(version, CPU)
    runner = Runner(handler, version.config, version.version, CPU, "w", wall=lambda: WALL)
    arrays = _arrays(5, seed=12)
    outcomes = runner.run([_request(a) for a in arrays])
    for array, outcome in zip(arrays, outcomes, strict=True):
        assert outcome.value is not None
        assert outcome.value["version"] == 1
        np.testing.assert_allclose(
            outcome.value["outputs"], _expected_means(array) * 2.0 + 1.0, rtol=1e-5, atol=1e-5
        )


def test_load_handler_refuses_a_modified_model_file(tmp_path: Path) -> None:
    version = _write_torchscript(tmp_path, ScriptableMeans())
    with version.path.open("ab") as fh:
        fh.write(b"\x00")
    with pytest.raises(
        IntegrityError, match=r"must have sha256 [0-9a-f]{64} \(recorded\), got [0-9a-f]{64}"
    ):
        load_handler(version, CPU)


def test_load_handler_refuses_a_wrong_recorded_digest(tmp_path: Path) -> None:
    version = _write_torchscript(tmp_path, ScriptableMeans())
    version.path.with_name("model.pt.sha256").write_text("0" * 64 + "  model.pt\n")
    with pytest.raises(IntegrityError, match="refusing to load"):
        load_handler(version, CPU)


def test_load_handler_refuses_a_missing_digest(tmp_path: Path) -> None:
    version = _write_torchscript(tmp_path, ScriptableMeans())
    version.path.with_name("model.pt.sha256").unlink()
    with pytest.raises(IntegrityError, match=r"must have its sha256 recorded in model\.pt\.sha256"):
        load_handler(version, CPU)


def test_float32_inputs_are_normalised_once_even_when_a_batch_is_bisected() -> None:
    """The staged float input must not be changed in place: bisected halves run from it again."""

    class RaisesOnMarker(ChannelMeans):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls.append(x.shape[0])
            if (x[:, 0, 0, 0] > 100).any():  # the marked row, after normalisation
                raise ValueError("marked row")
            return x.mean(dim=(2, 3))

    config = _config(dtype="float32", scale=1.0)
    rng = np.random.default_rng(3)
    arrays = [rng.random(SHAPE, dtype=np.float32) for _ in range(4)]
    arrays[2] = arrays[2].copy()
    arrays[2][0, 0, 0] = 1000.0
    outcomes = _runner(RaisesOnMarker(), config).run([_request(a) for a in arrays])
    assert isinstance(outcomes[2].error, ModelError)
    mean = np.array(MEAN)[:, None, None]
    std = np.array(STD)[:, None, None]
    for i in (0, 1, 3):
        expected = ((arrays[i].astype(np.float64) - mean) / std).mean(axis=(1, 2))
        np.testing.assert_allclose(outcomes[i].value["outputs"], expected, rtol=1e-5)  # type: ignore[index]


class ScriptablePoisoned(torch.nn.Module):
    """Raises on any row holding a pixel of 255 (normalised: channel 0 above 0.99)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0] > 0.99).any()):
            raise ValueError("poisoned pixel")
        return x.mean(dim=(2, 3))


def test_a_torchscript_model_runs_fused_with_its_normalisation(tmp_path: Path) -> None:
    version = _write_torchscript(tmp_path, ScriptableMeans())
    runner = Runner(load_handler(version, CPU), version.config, 1, CPU, "w", wall=lambda: WALL)
    assert runner._fused is not None
    x = torch.from_numpy(np.stack(_arrays(6, seed=4)))
    staged = x.clone()
    fused = runner._forward(x)
    assert torch.equal(x, staged)  # the staged input is left as it came
    torch.testing.assert_close(fused, runner._unfused(x))
    expected = np.stack([_expected_means(a) * 2.0 + 1.0 for a in x.numpy()])
    np.testing.assert_allclose(fused.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_a_fused_batch_that_raises_is_bisected_to_the_guilty_row(tmp_path: Path) -> None:
    version = _write_torchscript(tmp_path, ScriptablePoisoned())
    runner = Runner(load_handler(version, CPU), version.config, 1, CPU, "w", wall=lambda: WALL)
    assert runner._fused is not None
    arrays = _arrays(5, seed=8)
    arrays[3] = arrays[3].copy()
    arrays[3][0, 0, 0] = 255
    outcomes = runner.run([_request(a) for a in arrays])
    assert isinstance(outcomes[3].error, ModelError)
    assert "poisoned pixel" in str(outcomes[3].error)
    for i in (0, 1, 2, 4):
        np.testing.assert_allclose(
            outcomes[i].value["outputs"],  # type: ignore[index]
            _expected_means(arrays[i]),
            rtol=1e-5,
            atol=1e-5,
        )


class ReportsDtype(torch.nn.Module):
    """1.0 per row where its matmul ran in bfloat16 (autocast reached it), 0.0 where not."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x.mean(dim=(2, 3)))
        return torch.zeros(x.shape[0], 1) + (1.0 if y.dtype == torch.bfloat16 else 0.0)


def test_autocast_applies_to_the_fused_call_and_eager_models_run_unfused(tmp_path: Path) -> None:
    version = _write_torchscript(tmp_path, ReportsDtype())
    for mode, flag in (("bf16", 1.0), ("fp32", 0.0)):
        config = dataclasses.replace(
            version.config, precision=dataclasses.replace(version.config.precision, mode=mode)
        )
        runner = Runner(load_handler(version, CPU), config, 1, CPU, "w")
        assert runner._fused is not None
        assert runner._forward(torch.zeros((2, *SHAPE), dtype=torch.uint8)).tolist() == [[flag]] * 2
    assert _runner(ChannelMeans())._fused is None


def test_staging_slots_cover_every_instance_plus_one_waiting_and_one_staging() -> None:
    config = dataclasses.replace(_config(), instances=3)
    runner = _runner(ChannelMeans(), config)
    assert len(runner.collator._slots) == 5


class ReturnsPair(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.mean(dim=(2, 3)), x.amax(dim=(2, 3))


def test_a_model_the_fused_call_cannot_wrap_runs_unfused(tmp_path: Path) -> None:
    version = _write_torchscript(tmp_path, ReturnsPair())
    runner = Runner(load_handler(version, CPU), version.config, 1, CPU, "w")
    assert runner._fused is None
    array = _arrays(1)[0]
    outcome = runner.run([_request(array)])[0]
    assert outcome.value is not None  # a tuple is served: its members by position (raw config)
    got = outcome.value["outputs"]
    assert sorted(got) == ["0", "1"]
    np.testing.assert_allclose(got["0"], _expected_means(array), rtol=1e-5, atol=1e-5)
