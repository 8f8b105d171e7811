"""The runner with structured outputs: one outcome per request, bisection and the OOM split
still isolating requests, detection and segmentation mapped back per request's geometry."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from inferq.shared.errors import ModelError
from inferq.shared.geometry import Geometry, fit_geometry
from inferq.shared.spec import ModelConfig, parse_config
from inferq.worker.handlers import ModuleHandler
from inferq.worker.intake import InferenceRequest
from inferq.worker.runner import Runner
from tests.models import VISION_SHAPE, Detector, Segmenter

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CPU = torch.device("cpu")
SHAPE = (3, 4, 4)
_ids = itertools.count()


def _config(output: dict[str, Any], shape: tuple[int, ...] = SHAPE, **batching: Any) -> ModelConfig:
    return parse_config(
        "m",
        {
            "input": {"shape": list(shape)},
            "output": output,
            "batching": {"max_batch_size": 16, **batching},
            "precision": {"channels_last": False},
        },
    )


def _runner(module: torch.nn.Module, config: ModelConfig, script: bool = False) -> Runner:
    handler = ModuleHandler(torch.jit.script(module.eval()) if script else module)
    handler.setup(CPU, False)
    return Runner(handler, config, 1, CPU, "w")


def _request(array: np.ndarray, geometry: Geometry | None = None) -> InferenceRequest:
    return InferenceRequest(
        f"t{next(_ids)}", "tag", "m", array, 0.0, 0.0, 0.0, 0.0, None, None, 5, geometry=geometry
    )


def _arrays(n: int, shape: tuple[int, ...] = SHAPE) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 200, shape, dtype=np.uint8) for _ in range(n)]


class PairPoisoned(torch.nn.Module):
    """A dict of two outputs; raises for a batch holding a row with a full red pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls.append(len(x))
        if bool((x[:, 0] > 0.99).any()):
            raise RuntimeError("poisoned")
        return {"mean": x.mean(dim=(2, 3)), "max": x.amax(dim=(2, 3))}


class ListOomAbove(torch.nn.Module):
    """A list of one tensor per request (a variable number of rows: row i has i % 3 rows), and
    an out-of-memory error above two inputs."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if len(x) > 2:
            raise RuntimeError("CUDA out of memory (injected)")
        means = x.mean(dim=(1, 2, 3))
        return [means[i].repeat(int(means[i] * 1000) % 3) for i in range(len(x))]


class ListShort(torch.nn.Module):
    """One entry per request, except that a batch of 3 or more forgets its last request."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        n = len(x) if len(x) < 3 else len(x) - 1
        return [x[i].mean().repeat(2) for i in range(n)]


class BatchIndexed(torch.nn.Module):
    """Two rows per request, tagged with its index, except for the last request: none."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.arange(len(x) - 1).repeat_interleave(2)
        return index, x.mean(dim=(1, 2, 3))[index]


def test_a_dict_output_model_that_raises_fails_only_the_guilty_request() -> None:
    module = PairPoisoned()
    runner = _runner(module, _config({"postprocess": "raw"}))
    arrays = _arrays(8)
    arrays[5][0, 1, 1] = 255
    outcomes = runner.run([_request(a) for a in arrays])
    assert len(outcomes) == 8
    assert isinstance(outcomes[5].error, ModelError)
    for i, o in enumerate(outcomes):
        if i != 5:
            assert o.value is not None and sorted(o.value["outputs"]) == ["max", "mean"]
            assert o.value["outputs"]["mean"].shape == (3,)


def test_the_oom_split_works_with_a_list_of_variable_rows() -> None:
    runner = _runner(ListOomAbove(), _config({"postprocess": "raw", "rows": "list"}))
    arrays = _arrays(7)
    outcomes = runner.run([_request(a) for a in arrays])
    assert runner.cap.value <= 3
    for array, o in zip(arrays, outcomes, strict=True):
        assert o.value is not None
        mean = torch.from_numpy(array).float().div(255).mean()
        assert o.value["outputs"].shape == (int(mean * 1000) % 3,)


def test_a_model_that_gives_fewer_parts_than_inputs_is_bisected_to_one_outcome_each() -> None:
    outcomes = _runner(ListShort(), _config({"postprocess": "raw", "rows": "list"})).run(
        [_request(a) for a in _arrays(4)]
    )
    assert len(outcomes) == 4
    assert all(o.error is None for o in outcomes)  # halves of two are whole again
    assert [o.value["outputs"].shape for o in outcomes if o.value] == [(2,)] * 4


def test_batch_index_rows_reach_their_requests_and_a_request_without_rows_gets_none() -> None:
    config = _config({"postprocess": "raw", "rows": "batch_index", "batch_index": "0"})
    arrays = _arrays(3)
    outcomes = _runner(BatchIndexed(), config).run([_request(a) for a in arrays])
    shapes = [o.value["outputs"]["1"].shape for o in outcomes if o.value]
    assert shapes == [(2,), (2,), (0,)]
    first = outcomes[0].value["outputs"]["1"]  # type: ignore[index]
    np.testing.assert_allclose(first, [arrays[0].mean() / 255.0] * 2, rtol=1e-5)


def test_detection_through_the_runner_maps_each_request_by_its_own_geometry() -> None:
    config = _config(
        {"postprocess": "detection", "labels": ["circle", "square", "triangle"]},
        shape=VISION_SHAPE,
    )
    runner = _runner(Detector(), config, script=True)
    assert runner._fused is None  # a dict output: normalisation runs apart
    a, b = np.zeros((2, *VISION_SHAPE), dtype=np.uint8)
    a[0, 6:10, 10:20] = 255  # red box in model pixels
    b[0, 4:12, 4:24] = 255
    b[1, 5, 5] = 255  # green: "square"
    wide = fit_geometry((64, 16), (32, 16), "letterbox")
    crop = fit_geometry((64, 16), (32, 16), "crop")
    outcomes = runner.run([_request(a, wide), _request(b, crop), _request(a)])
    got = [o.value["outputs"] for o in outcomes if o.value]
    assert got[0] == [
        {"box": [20.0, 4.0, 40.0, 12.0], "label": "circle", "score": pytest.approx(0.9)}
    ]
    assert got[1] == [
        {"box": [20.0, 4.0, 40.0, 12.0], "label": "square", "score": pytest.approx(0.9)}
    ]
    assert got[2][0]["box"] == [10.0, 6.0, 20.0, 10.0]  # no geometry: the model input itself


def test_segmentation_through_the_runner_returns_masks_at_each_original_size() -> None:
    config = _config({"postprocess": "segmentation"}, shape=VISION_SHAPE)
    runner = _runner(Segmenter(), config, script=True)
    x = np.zeros(VISION_SHAPE, dtype=np.uint8)
    x[0, 6:10, 10:20] = 255
    g = fit_geometry((64, 16), (32, 16), "letterbox")
    (outcome,) = runner.run([_request(x, g)])
    assert outcome.value is not None
    mask = outcome.value["outputs"]
    truth = np.zeros((16, 64), np.uint8)
    truth[4:12, 20:40] = 1
    np.testing.assert_array_equal(mask, truth)


def test_an_output_config_the_model_does_not_fit_fails_its_requests_with_a_clear_error() -> None:
    config = _config({"postprocess": "detection", "labels": ["a", "b", "c"]})
    outcomes = _runner(PairPoisoned(), config).run([_request(a) for a in _arrays(3)])
    for o in outcomes:
        assert isinstance(o.error, ModelError)
        assert "detection needs the model output 'boxes', got outputs ['max', 'mean']" in str(
            o.error
        )


class MeanAndMax(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.mean(dim=(2, 3)), x.amax(dim=(2, 3))


def test_an_onnx_model_with_two_outputs_gives_them_by_name(tmp_path: Path) -> None:
    from inferq.worker.handlers import OnnxHandler

    path = tmp_path / "model.onnx"
    torch.onnx.export(
        MeanAndMax().eval(),
        (torch.zeros(1, *SHAPE),),
        str(path),
        input_names=["x"],
        output_names=["mean", "max"],
        dynamic_axes={"x": {0: "n"}, "mean": {0: "n"}, "max": {0: "n"}},
        dynamo=False,
    )
    _check_mean_and_max(OnnxHandler(path))


def _check_mean_and_max(handler: Any) -> None:
    """``handler``'s model gives each request ``{"mean", "max"}`` of its normalised input."""
    handler.setup(CPU, False)
    runner = Runner(handler, _config({"postprocess": "raw"}), 1, CPU, "w")
    arrays = _arrays(3)
    for array, o in zip(arrays, runner.run([_request(a) for a in arrays]), strict=True):
        assert o.value is not None and sorted(o.value["outputs"]) == ["max", "mean"]
        x = array.astype(np.float32) / 255.0
        np.testing.assert_allclose(o.value["outputs"]["mean"], x.mean(axis=(1, 2)), rtol=1e-5)
        np.testing.assert_allclose(o.value["outputs"]["max"], x.max(axis=(1, 2)), rtol=1e-6)


class IndexedDetections(torch.nn.Module):
    """Detections for the whole batch: request i gets i boxes (so request 0 none), each a
    10x10 box at (10 * k, 0) scoring 0.8 for class k % 3; the batch index in its own output."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        index = torch.cat([torch.full((i,), i, dtype=torch.long) for i in range(len(x))])
        k = torch.cat([torch.arange(i) for i in range(len(x))]).float()
        boxes = torch.stack([10 * k, torch.zeros_like(k), 10 * k + 10, torch.full_like(k, 10)], 1)
        scores = torch.nn.functional.one_hot(k.long() % 3, 3).float() * 0.8
        return {"batch": index, "boxes": boxes, "scores": scores + 0.0 * x.mean()}


def test_detection_from_batch_indexed_rows() -> None:
    config = _config(
        {
            "postprocess": "detection",
            "labels": ["circle", "square", "triangle"],
            "rows": "batch_index",
            "batch_index": "batch",
        },
        shape=VISION_SHAPE,
    )
    outcomes = _runner(IndexedDetections(), config).run(
        [_request(a) for a in _arrays(4, VISION_SHAPE)]
    )
    got = [o.value["outputs"] for o in outcomes if o.value]
    assert [len(d) for d in got] == [0, 1, 2, 3]
    assert [d["label"] for d in got[3]] == ["circle", "square", "triangle"]
    assert sorted(d["box"][0] for d in got[3]) == [0.0, 10.0, 20.0]


class MeanAndMaxDict(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mean": x.mean(dim=(2, 3)), "max": x.amax(dim=(2, 3))}


def test_a_torch_export_program_returning_a_dict_is_cut_per_request(tmp_path: Path) -> None:
    from inferq.worker.handlers import ExportedHandler

    path = tmp_path / "model.pt2"
    batch = torch.export.Dim("batch", min=1, max=16)
    program = torch.export.export(
        MeanAndMaxDict().eval(), (torch.zeros(2, *SHAPE),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, str(path))
    _check_mean_and_max(ExportedHandler(path))
