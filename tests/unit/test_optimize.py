"""inferq models optimize on tiny models: int8 and bf16 versions match their source within a
stated tolerance, are written with sha256, config and report; a result under the agreement
threshold is refused and nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from inferq.shared.errors import ConfigError
from inferq.worker.optimize.command import OptimizationRejected, OptimizeRequest, optimize
from inferq.worker.repository import ModelRepository, record_sha256, verify
from tests.models import SHAPE, write_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def _request(root: Path, target: str, **kw: object) -> OptimizeRequest:
    return OptimizeRequest(root, "tiny", 1, target, seconds=0.05, images=128, **kw)  # type: ignore[arg-type]


def test_int8_version_is_written_verified_and_close_to_its_source(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny")
    out = tmp_path / "report.json"
    report = optimize(
        _request(tmp_path, "int8", min_agreement=0.9, json_out=out), echo=lambda _: None
    )
    assert report["method"].startswith("static")
    assert report["max_abs_diff"] < 0.05  # int8 against fp32 logits of size ~0.5
    assert 0.9 <= report["agreement_top1"] <= 1.0 and report["speedup"] > 0
    mv = ModelRepository(tmp_path).resolve("tiny")
    assert mv.version == 2 and mv.config.platform == "torchscript"
    verify(mv.path)
    assert json.loads((mv.path.parent / "report.json").read_text())["to_version"] == 2
    assert json.loads(out.read_text())["accepted"] is True


@pytest.mark.skipif(
    not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="CPU without bfloat16 support"
)
def test_bf16_weights_version_matches_within_bf16_tolerance(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny")
    report = optimize(_request(tmp_path, "bf16", min_agreement=0.9), echo=lambda _: None)
    assert report["max_abs_diff"] < 5e-2
    assert "bf16 weights" in report["method"]


def test_fp16_on_cpu_is_refused_with_what_to_do(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny")
    with pytest.raises(ConfigError, match="--device cuda:N, or use --to bf16"):
        optimize(_request(tmp_path, "fp16"), echo=lambda _: None)
    assert ModelRepository(tmp_path).versions("tiny") == [1]


class ChannelMeans(torch.nn.Module):
    """Each channel's mean through an identity 1x1 conv: the top class is the brightest channel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


def test_a_result_under_the_threshold_is_refused_and_not_written(tmp_path: Path) -> None:
    path = write_model(tmp_path, "tiny")
    torch.jit.save(torch.jit.script(ChannelMeans().eval()), str(path))
    record_sha256(path)
    # Calibrated on black images only, int8 saturates on real ones: every row ties.
    calibration = tmp_path / "black.npz"
    np.savez(calibration, inputs=np.zeros((16, *SHAPE), dtype=np.uint8))
    rng = np.random.default_rng(0)
    validation = rng.integers(0, 256, (128, *SHAPE), dtype=np.uint8)
    np.savez(tmp_path / "tiny" / "1" / "validation.npz", inputs=validation)
    out = tmp_path / "report.json"
    request = _request(tmp_path, "int8", calibration=calibration, min_agreement=0.9, json_out=out)
    with pytest.raises(
        OptimizationRejected,
        match=r"must be >= 90.00%, got 37.50% on 128 inputs \(missed by 52.50%\)",
    ):
        optimize(request, echo=lambda _: None)
    assert ModelRepository(tmp_path).versions("tiny") == [1]
    assert not [p for p in (tmp_path / "tiny").iterdir() if p.name.startswith(".optimize")]
    assert json.loads(out.read_text())["accepted"] is False


def test_a_calibration_file_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny")
    calibration = tmp_path / "bad.npz"
    np.savez(calibration, inputs=np.zeros((4, 3, 9, 9), dtype=np.uint8))
    with pytest.raises(ConfigError, match="inputs must be uint8 N x 3 x 8 x 8"):
        optimize(_request(tmp_path, "int8", calibration=calibration), echo=lambda _: None)
