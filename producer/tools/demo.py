"""Submit fresh synthetic images (or files) and summarise what came back. Torch-free."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from inferq.producer.client import submit_many
from inferq.producer.gather import gather
from inferq.producer.tools.synth import CLASSES, make_images


@dataclass(frozen=True)
class Summary:
    submitted: int
    succeeded: int
    failed: int
    correct: int | None
    wall_s: float
    latency_ms: dict[str, float]
    mean_batch: float

    @property
    def accuracy(self) -> float | None:
        return None if self.correct is None else self.correct / max(1, self.succeeded)

    @property
    def throughput(self) -> float:
        return self.succeeded / self.wall_s if self.wall_s else 0.0


def summarise(values: Sequence[Any], labels: Sequence[int] | None, wall_s: float) -> Summary:
    ok = [v for v in values if isinstance(v, dict)]
    totals = np.array([v["timing"]["total_ms"] for v in ok]) if ok else np.zeros(1)
    correct = None
    if labels is not None:
        correct = sum(
            1
            for v, y in zip(values, labels, strict=True)
            if isinstance(v, dict) and v["outputs"][0]["label"] == CLASSES[int(y)]
        )
    return Summary(
        submitted=len(values),
        succeeded=len(ok),
        failed=len(values) - len(ok),
        correct=correct,
        wall_s=wall_s,
        latency_ms={f"p{q}": float(np.percentile(totals, q)) for q in (50, 95, 99)},
        mean_batch=float(np.mean([v["timing"]["batch_size"] for v in ok])) if ok else 0.0,
    )


def run_submissions(
    model: str, count: int, files: list[str] | None = None, timeout: float = 120.0
) -> Summary:
    if files:
        images: list[Any] = files
        labels = None
    else:
        images, label_array = make_images(
            count, seed=random.SystemRandom().randrange(1 << 30), size=(80, 64)
        )
        labels = [int(v) for v in label_array]
    started = time.perf_counter()
    results = submit_many(images, model=model)
    with tqdm(total=len(results), desc=f"{model}", unit="img") as bar:
        values = gather(
            results, timeout=timeout, return_exceptions=True, on_result=lambda _: bar.update()
        )
    summary = summarise(values, labels, time.perf_counter() - started)
    print_summary(summary)
    return summary


def print_summary(s: Summary) -> None:
    lat = s.latency_ms
    print(f"submitted {s.submitted}, succeeded {s.succeeded}, failed {s.failed}")
    if s.accuracy is not None:
        print(
            f"accuracy: {s.accuracy:.1%} ({s.correct}/{s.succeeded}) on images the model never saw"
        )
    print(f"throughput: {s.throughput:.0f} images/s end to end ({s.wall_s:.2f} s)")
    print(
        f"latency (submit to result): p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, p99 {lat['p99']:.1f} ms"
    )
    print(f"mean batch size: {s.mean_batch:.1f}")
