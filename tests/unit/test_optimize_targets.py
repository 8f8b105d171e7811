"""inferq models optimize, the paths test_optimize.py leaves out: the int8 fallback to dynamic
quantisation, the AOTInductor (``compiled``) target, and the ``--json`` report against the
figures the command prints."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from inferq.shared.errors import ConfigError
from inferq.worker.handlers import load_handler
from inferq.worker.optimize.cli import optimize_command
from inferq.worker.optimize.command import OptimizeRequest, optimize
from inferq.worker.repository import ModelRepository, record_sha256, verify
from inferq.worker.runner import Runner
from tests.models import SHAPE, Tiny, write_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
CPU = torch.device("cpu")


class LinearOnly(nn.Module):
    """Two linear layers on the flattened image: all dynamic quantisation can reach."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.hidden = nn.Linear(3 * 8 * 8, 32)
        self.out = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x.flatten(1))))


class RowLoop(nn.Module):
    """A linear layer applied row by row in a loop, which neither graph-mode pass rewrites."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.fc(row.flatten()) for row in x.unbind(0)])


def _install(root: Path, module: nn.Module) -> Path:
    """``module`` scripted as tiny version 1 (config from tests/models.py)."""
    path = write_model(root, "tiny")
    torch.jit.save(torch.jit.script(module.eval()), str(path))
    record_sha256(path)
    return path


def _request(root: Path, target: str, **kw: object) -> OptimizeRequest:
    options: dict[str, object] = {"seconds": 0.05, "images": 128, **kw}
    return OptimizeRequest(root, "tiny", 1, target, **options)  # type: ignore[arg-type]


def _failing_static(*args: object, **kwargs: object) -> None:
    raise RuntimeError("unsupported op in graph mode (forced by the test)")


def test_int8_falls_back_to_dynamic_when_static_fails_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install(tmp_path, LinearOnly())
    # Static PTQ handles every graph these tests can build on this torch, so its failure is forced.
    monkeypatch.setattr(torch.ao.quantization, "quantize_jit", _failing_static)
    report = optimize(_request(tmp_path, "int8", min_agreement=0.9), echo=lambda _: None)
    assert report["method"].startswith("dynamic (2 linear layer(s) with int8 weights")
    assert "static failed (RuntimeError: unsupported op in graph mode" in report["method"]
    assert report["max_abs_diff"] < 0.05 and report["agreement_top1"] >= 0.9
    mv = ModelRepository(tmp_path).resolve("tiny", 2)
    graph = str(torch.jit.load(str(mv.path)).inlined_graph)
    assert graph.count("quantized::linear_dynamic") == 2


def test_int8_with_nothing_graph_mode_can_quantise_is_refused(tmp_path: Path) -> None:
    _install(tmp_path, RowLoop())
    with pytest.raises(ConfigError, match="static found no conv or linear to quantise; dynamic"):
        optimize(_request(tmp_path, "int8"), echo=lambda _: None)
    assert ModelRepository(tmp_path).versions("tiny") == [1]
    assert not [p for p in (tmp_path / "tiny").iterdir() if p.name.startswith(".optimize")]


def _printed_speedups(lines: list[str]) -> dict[int, tuple[float, float, float]]:
    """batch -> (source img/s, result img/s, speedup) from the table the command prints."""
    rows = [re.fullmatch(r"\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x", line) for line in lines]
    return {int(m[1]): (float(m[2]), float(m[3]), float(m[4])) for m in rows if m}


def test_json_report_holds_agreement_and_speedup_of_the_printed_figures(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny")
    out = tmp_path / "out.json"
    args = [
        "tiny",
        "--from-version",
        "1",
        "--to",
        "int8",
        "--min-agreement",
        "0.9",
        "--seconds",
        "0.05",
    ]
    result = CliRunner().invoke(
        optimize_command, [*args, "--json", str(out), "--repository", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    lines = result.output.splitlines()
    printed = _printed_speedups(lines)
    assert sorted(printed) == [1, 16]  # the model's batch sizes: 1 and max_batch_size
    source, res, speedup = printed[16]
    assert report["speedup_at"] == 16
    per_s = report["images_per_s"]
    assert report["speedup"] == pytest.approx(per_s["result"]["16"] / per_s["source"]["16"])
    assert (per_s["source"]["16"], per_s["result"]["16"]) == pytest.approx((source, res), abs=0.06)
    assert report["speedup"] == pytest.approx(speedup, abs=0.006)
    assert 0.0 <= report["agreement_top1"] <= 1.0
    shown = re.search(r"top-1 agreement ([\d.]+)%", result.output)
    assert shown is not None
    assert report["agreement_top1"] * 100 == pytest.approx(float(shown[1]), abs=0.006)
    assert "wrote tiny version 2 (torchscript)" in lines[-1]


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("clang++")


@pytest.mark.slow
@pytest.mark.skipif(_compiler() is None, reason="AOTInductor needs a C++ compiler (g++ or clang++)")
def test_compiled_version_is_an_aoti_package_that_matches_its_source(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny")
    report = optimize(_request(tmp_path, "compiled", images=64), echo=lambda _: None)
    assert report["platform"] == "aoti"
    assert report["method"] == "AOTInductor package for cpu, batch 1..16"
    assert report["agreement_top1"] == 1.0 and report["max_abs_diff"] < 1e-4
    mv = ModelRepository(tmp_path).resolve("tiny")
    assert (mv.version, mv.config.platform, mv.path.name) == (2, "aoti", "model.aoti.pt2")
    assert mv.config.optimize.compile == "none"
    verify(mv.path)
    runner = Runner(load_handler(mv, CPU), mv.config, mv.version, CPU, "w")
    rng = np.random.default_rng(3)
    for n in (1, 5, 16):  # the package's batch dimension is dynamic up to max_batch_size
        images = rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8)
        with torch.no_grad():
            expected = Tiny().eval()(torch.from_numpy(images).float() / 255.0)
        got = runner._forward(torch.from_numpy(images))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
