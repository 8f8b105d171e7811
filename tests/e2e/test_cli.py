"""The CLI as a user runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from inferq.worker.tools.localredis import free_port
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def inferq(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferq.worker.cli", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_lists_the_commands() -> None:
    out = inferq("--help")
    assert out.returncode == 0
    for command in ("worker", "models", "submit", "demo", "bench", "soak"):
        assert command in out.stdout


def test_demo_starts_an_embedded_redis_and_classifies_fresh_images(shapes_repo: Path) -> None:
    """What `make demo` runs, with no Redis answering at the configured URL."""
    unused = f"redis://127.0.0.1:{free_port()}/0"
    out = inferq(
        "demo",
        "--count",
        "150",
        "--model-repository",
        str(shapes_repo),
        env={"INFERQ_BROKER_URL": unused, "INFERQ_METRICS_PORT": "0"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "starting an embedded redis-server" in out.stdout
    accuracy = float(re.search(r"accuracy: ([\d.]+)%", out.stdout).group(1))  # type: ignore[union-attr]
    assert accuracy >= 95.0
    assert re.search(r"throughput: \d+ images/s", out.stdout)
    assert re.search(r"p50 [\d.]+ ms, p95 [\d.]+ ms, p99 [\d.]+ ms", out.stdout)
    assert "succeeded 150, failed 0" in out.stdout


def test_models_list_verifies_sha256(shapes_repo_copy: Path) -> None:
    repo = shapes_repo_copy
    ok = inferq("models", "list", "--repo", str(repo))
    assert ok.returncode == 0 and re.search(r"shapes\tversions=\[1\]\tok", ok.stdout), ok.stdout
    with (repo / "shapes" / "1" / "model.pt").open("ab") as fh:
        fh.write(b"tampered")
    bad = inferq("models", "list", "--repo", str(repo))
    assert "ERROR" in bad.stdout and "sha256" in bad.stdout
    assert bad.returncode == 1 and "1 model(s)" in bad.stderr


def test_worker_refuses_a_tampered_model(shapes_repo_copy: Path) -> None:
    from inferq.worker.tools.localredis import LocalRedis

    repo = shapes_repo_copy
    with (repo / "shapes" / "1" / "model.pt").open("r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02")
    redis = LocalRedis().start()
    try:
        env = {
            "INFERQ_BROKER_URL": redis.url,
            "INFERQ_MODEL_REPOSITORY": str(repo),
            "INFERQ_METRICS_PORT": "0",
        }
        out = inferq("worker", "--model", "shapes", env=env, timeout=120)
    finally:
        redis.stop()
    assert out.returncode != 0
    assert "IntegrityError" in out.stdout + out.stderr
    assert "refusing to load" in out.stdout + out.stderr


@pytest.mark.slow
def test_soak_loses_nothing(shapes_repo: Path) -> None:
    out = inferq(
        "soak",
        "--minutes",
        "0.4",
        "--rate",
        "100",
        "--model-repository",
        str(shapes_repo),
        timeout=400,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    counts = dict(re.findall(r"^(submitted|succeeded|lost|run twice)\s+(\d+)", out.stdout, re.M))
    assert counts["lost"] == "0" and counts["run twice"] == "0"
    assert int(counts["succeeded"]) > 0.8 * int(counts["submitted"])
    assert "SIGKILL worker" in out.stdout and "Redis restarted" in out.stdout


def test_stage_profile_times_every_stage(shapes_repo: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "inferq.worker.tools.stage_profile",
            "--model-repository",
            str(shapes_repo),
            "--redis",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = dict(re.findall(r"^(.+?)\s+([\d.]+) us/message$", out.stdout, re.M))
    assert len(rows) == 11 and {"result metas", "metrics hook", "record (unacked)"} <= set(rows)
    assert all(float(v) > 0 for v in rows.values())


def test_bench_null_model_measures_each_wire(tmp_path: Path) -> None:
    out = inferq(
        "bench", "--null-model", "--drain", "300", "--wire", "raw", "--wire", "jpeg",
        "--out", str(tmp_path), timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    cases = {
        (c["size"], c["wire"]): c for c in json.loads((tmp_path / "wirebench.json").read_text())
    }
    assert set(cases) == {(32, "raw"), (32, "jpeg"), (224, "raw"), (224, "jpeg")}
    assert [cases[(32, w)]["count"] for w in ("raw", "jpeg")] == [300, 300]
    for c in cases.values():
        assert (
            c["drain_per_s"] > 0 and c["redis_us"] > 0 and c["message_bytes"] > c["payload_bytes"]
        )
    raw, jpeg = cases[(224, "raw")], cases[(224, "jpeg")]
    assert raw["payload_bytes"] == 150_528 + 20  # the codec's header and the tensor
    assert jpeg["message_bytes"] < raw["message_bytes"] / 4
    assert "3x224x224 jpeg against raw: bytes per message" in out.stdout


def test_bench_measures_every_figure_side_by_side(shapes_repo: Path, tmp_path: Path) -> None:
    out = inferq(
        "bench",
        "--model-repository",
        str(shapes_repo),
        "--batch-size",
        "16",
        "--instances",
        "2",
        "--drain",
        "400",
        "--burst",
        "200",
        "--steady-seconds",
        "2",
        "--out",
        str(tmp_path),
        timeout=400,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["instances"] == 2
    assert sorted(int(s) for s in data["raw"]) == [1, 2, 4, 8, 16]
    for figure in (data["raw"]["16"], data["raw_after"], data["raw_single"]["16"]):
        assert figure > 0
    limit = max(
        (data["raw"]["16"] + data["raw_after"]) / 2,
        (data["raw_single"]["16"] + data["raw_single_after"]) / 2,
    )
    assert data["drain"]["count"] == 400
    assert data["ratios"]["drain"] == pytest.approx(data["drain"]["throughput"] / limit)
    assert data["ratios"]["end_to_end"] == pytest.approx(data["burst"]["throughput"] / limit)
    assert data["steady"]["latency_ms"]["p99"] >= data["steady"]["latency_ms"]["p50"] > 0
    assert data["steady"]["completed"] == data["steady"]["count"]
    tail = data["steady"]["slowest_1pct_timing_ms"]  # from the slowest results' own timing
    assert set(tail) == {
        "queue_ms",
        "batch_wait_ms",
        "collate_ms",
        "infer_ms",
        "post_ms",
        "batch_size",
    }
    assert 1 <= tail["batch_size"] <= 16 and tail["infer_ms"] > 0
    assert "slowest 1% of (d), mean ms: queue " in out.stdout
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert "(b) drain, 400 queued" in out.stdout and "one instance on all cores" in out.stdout
