"""python -m inferq.worker.optimize.compare: variants of one model side by side, each checked
against the first; a combination a worker would refuse is refused with the worker's message.
``inferq bench --version``: the copy benched is that version, under its own config.toml."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inferq.shared.errors import ConfigError
from inferq.worker.optimize.compare import compare, load_runners, parse_variant, profile
from inferq.worker.repository import ModelRepository
from inferq.worker.tools.bench import BenchConfig, bench_repo
from tests.models import config_text, write_model

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


def _bench_config(root: Path, version: int | None) -> BenchConfig:
    return BenchConfig("tiny", 8, "cpu", root, root / "out", 10, 10, 1.0, version=version)


def test_bench_copies_the_version_asked_for_with_its_own_config(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny")
    v2 = write_model(tmp_path, "tiny", version=2).parent
    own = config_text(max_batch_size=16) + "[optimize]\nbatch_buckets = [4, 16]\n"
    (v2 / "config.toml").write_text(own)
    copied = ModelRepository(bench_repo(_bench_config(tmp_path, 2), tmp_path / "a"))
    mv = copied.resolve("tiny")
    assert copied.versions("tiny") == [2]
    assert mv.config.optimize.batch_buckets == (4, 16)  # the version's own config.toml
    assert mv.config.batching.max_batch_size == 8  # pinned to the bench's batch size
    first = ModelRepository(bench_repo(_bench_config(tmp_path, 1), tmp_path / "b"))
    assert (
        first.versions("tiny") == [1] and first.resolve("tiny").config.optimize.batch_buckets == ()
    )
    latest = ModelRepository(bench_repo(_bench_config(tmp_path, None), tmp_path / "c"))
    assert latest.versions("tiny") == [2]


def test_profile_prints_each_variants_top_ops(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny")
    repo = ModelRepository(tmp_path)
    variants = [parse_variant("plain=1"), parse_variant("bucketed=1:buckets=8")]
    runners = load_runners(repo, "tiny", variants, 8, CPU, lambda _: None)
    tables: list[str] = []
    profile(runners, 8, 2, 5, tables.append)
    assert [t.splitlines()[0] for t in tables] == [
        "plain, batch 8, 2 calls:",
        "bucketed, batch 8, 2 calls:",
    ]
    assert all("aten::" in t for t in tables)
