"""python -m inferq.worker.optimize.compare: variants of one model side by side, each checked
against the first; a combination a worker would refuse is refused with the worker's message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inferq.shared.errors import ConfigError
from inferq.worker.optimize.compare import compare, parse_variant
from inferq.worker.repository import ModelRepository
from tests.models import write_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
CPU = torch.device("cpu")


def test_variants_are_measured_side_by_side_and_checked_against_the_first(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny")
    variants = [parse_variant("plain=1"), parse_variant("bucketed=1:buckets=4;16")]
    lines: list[str] = []
    report = compare(ModelRepository(tmp_path), "tiny", variants, [1, 16], CPU, 0.02, lines.append)
    bucketed = report["variants"]["bucketed"]
    assert bucketed["overrides"] == {"buckets": "4;16"}
    assert bucketed["top1_vs_first"] == 1.0 and bucketed["max_abs_diff_vs_first"] < 1e-5
    assert all(v > 0 for v in bucketed["images_per_s"].values())
    row = lines[-1].splitlines()[-1].split()  # the table's last row: this variant
    assert (row[0], row[-2]) == ("bucketed", "100.0%")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("plain", "must be NAME=VERSION"),
        ("plain=x", "must be NAME=VERSION"),
        ("fast=1:turbo=yes", r"keys must be among .*got \['turbo'\]"),
    ],
)
def test_a_malformed_variant_is_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_variant(text)


def test_a_variant_a_worker_would_refuse_is_refused_naming_the_keys(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny")
    graphs = parse_variant("graphs=1:buckets=16,cuda_graphs=true")
    with pytest.raises(ConfigError, match=r"optimize\.cuda_graphs must run on a CUDA device"):
        compare(ModelRepository(tmp_path), "tiny", [graphs], [16], CPU, 0.02, lambda _: None)
    short = parse_variant("short=1:buckets=4")
    with pytest.raises(ConfigError, match=r"optimize\.batch_buckets must reach"):
        compare(ModelRepository(tmp_path), "tiny", [short], [16], CPU, 0.02, lambda _: None)
