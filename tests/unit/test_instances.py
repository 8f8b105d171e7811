"""Instance counts per device kind, and every shipped config against every kind's rules."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch

from inferq.shared.errors import ConfigError
from inferq.shared.spec import parse_config
from inferq.worker.checks import check_model_on, for_device, instances_on
from inferq.worker.examples.build import SPECS, render_config
from inferq.worker.repository import ModelVersion

ROOT = Path(__file__).resolve().parents[2]
DEVICES = ("cpu", "cuda:0")


def _model(name: str, instances: int) -> ModelVersion:
    config = parse_config(name, {"input": {"shape": [3, 8, 8]}, "instances": {"count": instances}})
    return ModelVersion(name, 1, Path("model.pt"), config)


def test_instances_count_on_cpu_and_one_per_gpu_worker() -> None:
    config = _model("a", 3).config
    assert instances_on(config, "cpu") == 3
    assert instances_on(config, "cuda") == 1


def test_for_device_carries_the_instances_of_the_device_kind() -> None:
    models = [_model("a", 2), _model("b", 3)]
    assert [m.config.instances for m in for_device(models, torch.device("cpu"))] == [2, 3]
    assert [m.config.instances for m in for_device(models, torch.device("cuda:0"))] == [1, 1]


def test_cuda_only_options_are_refused_on_cpu_naming_the_key() -> None:
    config = parse_config(
        "g", {"input": {"shape": [3, 8, 8]}, "optimize": {"cudnn_benchmark": True}}
    )
    assert check_model_on(config, torch.device("cuda:0")) == 1
    with pytest.raises(ConfigError, match=r"optimize.cudnn_benchmark must run on a CUDA device"):
        check_model_on(config, torch.device("cpu"))


def _shipped_configs() -> dict[str, dict[str, object]]:
    """Every config the project ships: the examples as build.py writes them, and any under deploy/."""
    shipped = {f"examples/{n}": tomllib.loads(render_config(s)) for n, s in SPECS.items()}
    for path in sorted((ROOT / "deploy").rglob("*.toml")):
        shipped[str(path.relative_to(ROOT))] = tomllib.loads(path.read_text())
    return shipped


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("where", sorted(_shipped_configs()))
def test_every_shipped_config_starts_on_every_device_kind(where: str, device: str) -> None:
    config = parse_config(Path(where).stem, _shipped_configs()[where], where=where)
    assert check_model_on(config, torch.device(device)) >= 1
