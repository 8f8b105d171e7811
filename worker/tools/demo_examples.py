"""``inferq demo --examples``: after the classifier, the detector, the segmenter and the text
classifier on fresh inputs (built first if the repository lacks them, about two minutes of CPU),
each scored against what was drawn or generated, as in-process."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import click

from inferq.producer import gather, submit_job, submit_many
from inferq.producer.client import reset_runtime
from inferq.producer.tools.scenes import Scene, make_scenes
from inferq.shared.redisconn import make_client
from inferq.worker.examples.served import score_detections, score_segmentation, text_correct
from inferq.worker.examples.textcls import make_sentences
from inferq.worker.repository import ModelRepository
from inferq.worker.tools.procs import start_worker

EXAMPLES = ("detector", "segmenter", "textcls")
_SIZES = ((240, 160), (160, 240), (200, 200))


def run_examples(repo: Path, count: int, env: dict[str, str], broker_url: str) -> int:
    """Serve the three examples with one worker and report each one's figures; 0 if all pass."""
    missing = [m for m in EXAMPLES if m not in ModelRepository(repo).models()]
    if missing:
        from inferq.worker.examples.build import build_examples

        click.echo(f"building {', '.join(missing)} in {repo} (about two CPU minutes in all)")
        build_examples(repo, missing, log=click.echo)
    log_path = Path(tempfile.mkdtemp(prefix="inferq-demo-")) / "examples-worker.log"
    click.echo(f"starting a worker for {', '.join(EXAMPLES)} (log: {log_path})")
    worker = start_worker(list(EXAMPLES), env, log_path=log_path)
    try:
        worker.wait_ready(make_client(broker_url))
        reset_runtime()
        seed = random.SystemRandom().randrange(1 << 30)
        return _scenes(count, seed) + _text(count, seed)
    finally:
        worker.terminate()


def _fresh_scenes(count: int, seed: int) -> list[Scene]:
    per = max(count // len(_SIZES), 1)
    return [s for i, size in enumerate(_SIZES) for s in make_scenes(per, seed + i, size)]


def _scenes(count: int, seed: int) -> int:
    scenes = _fresh_scenes(count, seed)
    images = [s.image for s in scenes]
    det = score_detections(gather(submit_many(images, model="detector"), timeout=300), scenes)
    click.echo(
        f"detector: {len(scenes)} fresh images {sorted(set(s.image.size for s in scenes))}: "
        f"found {det.recall:.1%} of {det.shapes} shapes, false boxes {det.false_rate:.1%}"
    )
    seg = score_segmentation(gather(submit_many(images, model="segmenter"), timeout=300), scenes)
    click.echo(f"segmenter: mean IoU {seg.mean_iou:.3f} at the images' own sizes")
    return int(det.recall < 0.9 or det.false_rate > 0.1) + int(seg.mean_iou < 0.8)


def _text(count: int, seed: int) -> int:
    sentences, labels = make_sentences(count, seed)
    pending = [submit_job.delay({"input_ids": s}, model="textcls") for s in sentences]
    accuracy = text_correct(gather(pending, timeout=300), labels) / len(labels)
    click.echo(f"textcls: accuracy {accuracy:.1%} on {len(labels)} fresh sentences of 4-64 tokens")
    return int(accuracy < 0.95)
