"""worker/custom.py: [handler] classes loaded from installed code only, and their hooks failing
only the requests they fail on (the runner driven in-process with tiny models)."""

from __future__ import annotations

import itertools
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from inferq.shared.errors import ConfigError, HandlerError
from inferq.shared.outputspec import HandlerRef
from inferq.shared.spec import ModelConfig, parse_config
from inferq.worker.custom import load_hooks
from inferq.worker.examples.handlers import ScoreFloor
from inferq.worker.handlers import ModuleHandler
from inferq.worker.intake import InferenceRequest
from inferq.worker.runner import Runner

CPU = torch.device("cpu")
SHAPE = (3, 4, 4)
_ids = itertools.count()


def _config(handler: dict[str, Any] | None, postprocess: str = "raw") -> ModelConfig:
    data: dict[str, Any] = {
        "input": {"shape": list(SHAPE)},
        "output": {"postprocess": postprocess, "top_k": 2, "labels": ["a", "b", "c"]},
        "precision": {"channels_last": False},
    }
    if handler is not None:
        data["handler"] = handler
    return parse_config("m", data)


class Means(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(x))
        return x.mean(dim=(2, 3))


def _runner(config: ModelConfig, module: torch.nn.Module | None = None) -> Runner:
    handler = ModuleHandler(module or Means())
    handler.setup(CPU, False)
    return Runner(handler, config, 1, CPU, "w")


def _request(array: np.ndarray, task_id: str | None = None) -> InferenceRequest:
    return InferenceRequest(
        task_id or f"t{next(_ids)}", "tag", "m", array, 0.0, 0.0, 0.0, 0.0, None, None, 5
    )


def _arrays(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 200, SHAPE, dtype=np.uint8) for _ in range(n)]


# -- loading ---------------------------------------------------------------------------------


def test_the_example_handler_loads_by_entry_point_and_by_path() -> None:
    for name in ("score-floor", "inferq.worker.examples.handlers:ScoreFloor"):
        hooks = load_hooks(HandlerRef(name, {"min_score": 0.4}))
        assert hooks is not None and hooks.preprocess is None  # the no-op is not called
        assert hooks.postprocess is not None
        assert isinstance(hooks.postprocess.__self__, ScoreFloor)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "name",
    ["../models/m/handler.py", "/abs/path.py", "handler.py", "models/m:Handler", "a b:C", ""],
)
def test_names_that_look_like_paths_are_refused_when_the_config_is_read(name: str) -> None:
    with pytest.raises(ConfigError, match="never carry code"):
        _config({"name": name})


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (
            HandlerRef("no-such-handler"),
            r"entry point in group 'inferq.handlers' \(installed: .*score-floor",
        ),
        (HandlerRef("tests.nowhere:Thing"), "importable class of an installed package"),
        (HandlerRef("tests.handlers:Missing"), "importable class"),
        (HandlerRef("tests.handlers:NOT_A_CLASS"), "must name a class, got int"),
        (
            HandlerRef("score-floor", {"min_score": 7}),
            r"must build from handler.options .*min_score must lie in 0..1",
        ),
        (HandlerRef("score-floor", {"bogus": 1}), "must build from handler.options"),
    ],
)
def test_handlers_that_cannot_load_are_config_errors(ref: HandlerRef, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_hooks(ref)


def test_a_class_whose_code_lies_in_the_model_repository_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "models"
    (repo / "m").mkdir(parents=True)
    (repo / "m" / "sneaky.py").write_text(
        textwrap.dedent(
            """
            class Sneaky:
                def postprocess(self, values, requests):
                    return values
            """
        )
    )
    monkeypatch.syspath_prepend(str(repo / "m"))
    try:
        with pytest.raises(ConfigError, match="inside the model repository"):
            load_hooks(HandlerRef("sneaky:Sneaky"), repository=repo)
        assert load_hooks(HandlerRef("sneaky:Sneaky"), repository=tmp_path / "elsewhere")
    finally:
        sys.modules.pop("sneaky", None)


# -- hooks in the runner -----------------------------------------------------------------------


def test_a_postprocess_hook_that_raises_for_one_request_fails_only_that_request() -> None:
    runner = _runner(_config({"name": "tests.handlers:FailMarked"}))
    arrays = _arrays(7)
    ids = [f"ok{i}" for i in range(7)]
    ids[4] = "bad4"
    outcomes = runner.run([_request(a, t) for a, t in zip(arrays, ids, strict=True)])
    assert len(outcomes) == 7
    for outcome, task_id in zip(outcomes, ids, strict=True):
        if task_id == "bad4":
            assert isinstance(outcome.error, HandlerError) and outcome.value is None
            assert "postprocess must succeed for this request" in outcome.error.message
            assert "ValueError: marked request in postprocess" in outcome.error.message
        else:
            assert outcome.error is None and outcome.value is not None
            assert outcome.value["outputs"]["task_id"] == task_id
            assert outcome.value["outputs"]["value"].shape == (3,)


def test_a_preprocess_hook_that_raises_for_one_row_fails_only_that_request() -> None:
    module = Means()
    runner = _runner(_config({"name": "tests.handlers:FailMarked"}), module)
    assert runner._fused is None  # the hook runs between normalisation and the model
    arrays = _arrays(6)
    arrays[2][1, 0, 0], arrays[2][0, 0, 0] = 255, 0  # the marked row: green, not red
    outcomes = runner.run([_request(a) for a in arrays])
    errors = [o.error for o in outcomes]
    assert isinstance(errors[2], HandlerError)
    assert "preprocess must succeed for this request, got ValueError: marked row" in str(errors[2])
    assert [e is None for i, e in enumerate(errors) if i != 2] == [True] * 5
    assert sum(module.calls) == 5  # the model never saw the marked row


def test_preprocess_output_reaches_the_model_and_tensors_come_back_as_arrays() -> None:
    plain = _runner(_config(None)).run([_request(a) for a in _arrays(3)])
    scaled = _runner(_config({"name": "tests.handlers:Scaled", "options": {"factor": 3.0}}))
    got = scaled.run([_request(a) for a in _arrays(3)])
    for p, s in zip(plain, got, strict=True):
        assert p.value is not None and s.value is not None
        assert isinstance(s.value["outputs"], np.ndarray)
        np.testing.assert_allclose(s.value["outputs"], p.value["outputs"] * 3.0, rtol=1e-5)


def test_a_postprocess_returning_the_wrong_count_is_bisected_down_to_single_requests() -> None:
    outcomes = _runner(_config({"name": "tests.handlers:WrongCount"})).run(
        [_request(a) for a in _arrays(4)]
    )
    assert [o.error for o in outcomes] == [None] * 4  # alone, each call returns one value


def test_the_example_handler_drops_labels_under_its_floor() -> None:
    config = _config({"name": "score-floor", "options": {"min_score": 0.34}}, postprocess="topk")
    outcomes = _runner(config).run([_request(a) for a in _arrays(5)])
    bare = _runner(_config(None, postprocess="topk")).run([_request(a) for a in _arrays(5)])
    for o, b in zip(outcomes, bare, strict=True):
        assert o.value is not None and b.value is not None
        assert o.value["outputs"] == [t for t in b.value["outputs"] if t["score"] >= 0.34]
        assert o.value["outputs"] != b.value["outputs"]  # at least one label fell under
