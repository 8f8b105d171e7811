from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inferq.shared.errors import ConfigError
from inferq.shared.spec import parse_config
from inferq.worker.checks import check_instances
from inferq.worker.repository import ModelVersion


def _model(name: str, instances: int) -> ModelVersion:
    config = parse_config(name, {"input": {"shape": [3, 8, 8]}, "instances": {"count": instances}})
    return ModelVersion(name, 1, Path("model.pt"), config)


def test_instances_add_up_across_models_on_cpu() -> None:
    assert check_instances(torch.device("cpu"), [_model("a", 2), _model("b", 3)]) == 5


def test_several_instances_are_refused_on_cuda_naming_the_model() -> None:
    with pytest.raises(ConfigError, match=r"instances.count above 1 runs on CPU only, got a \(2\)"):
        check_instances(torch.device("cuda:0"), [_model("a", 2), _model("b", 1)])
    assert check_instances(torch.device("cuda:0"), [_model("b", 1)]) == 1
