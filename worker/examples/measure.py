"""``python -m inferq.worker.examples.measure``: train the detector/segmenter network and the text
classifier as ``init-examples`` does, and print each one's training time (wall and this process's
CPU seconds, all threads) and held-out figures. The scene net always trains on one thread (see
``detector._one_thread``); OMP_NUM_THREADS sets the text classifier's threads."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import TypeVar

from inferq.worker.examples.detector import evaluate_detector, heldout_scenes, train_scene_net
from inferq.worker.examples.scene_nets import DetectorNet, SegmenterNet
from inferq.worker.examples.segmenter import evaluate_segmenter
from inferq.worker.examples.textcls import heldout_sentences, text_accuracy, train_textcls

T = TypeVar("T")


def _timed(what: str, train: Callable[[], T]) -> T:
    wall, cpu = time.perf_counter(), time.process_time()
    out = train()
    print(
        f"{what}: trained in {time.perf_counter() - wall:.1f} s wall, "
        f"{time.process_time() - cpu:.1f} s CPU"
    )
    return out


def measure_scenes(seed: int) -> None:
    net = _timed(
        "detector + segmenter (one SceneNet)", lambda: train_scene_net(seed=seed, log=_quiet)
    )
    data = heldout_scenes()
    det = evaluate_detector(DetectorNet(net), data)
    print(
        f"detector: {len(data.images)} held-out images {sorted(set(g.size for g in data.geometry))}, "
        f"{det.shapes} shapes: found {det.recall:.1%} (IoU >= 0.5, right label), "
        f"false boxes {det.false_rate:.1%} of {det.boxes}"
    )
    seg = evaluate_segmenter(SegmenterNet(net), data)
    per_class = ", ".join(f"{v:.3f}" for v in seg.class_iou())
    print(
        f"segmenter: mIoU {seg.mean_iou:.3f} over the set (classes bg/circle/square/triangle: "
        f"{per_class}); per-image mean over the shape classes present {seg.mean_image_iou:.3f}"
    )


def measure_textcls(seed: int) -> None:
    model = _timed("textcls", lambda: train_textcls(seed=seed, log=_quiet))
    sentences, labels = heldout_sentences()
    print(
        f"textcls: {len(labels)} held-out sentences: accuracy {text_accuracy(model, sentences, labels):.2%}"
    )


def _quiet(_: str) -> None:
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("which", nargs="*", help="scenes and/or textcls (default: both)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}")
    runs = {"scenes": measure_scenes, "textcls": measure_textcls}
    unknown = set(args.which) - set(runs)
    if unknown:
        parser.error(f"unknown {sorted(unknown)}; choose from {sorted(runs)}")
    for which in args.which or list(runs):
        runs[which](args.seed)


if __name__ == "__main__":
    main()
