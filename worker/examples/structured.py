"""The examples beyond image classification: ``detector`` (dict of boxes and scores),
``segmenter`` (per-pixel logits) and ``textcls`` (token ids + attention mask). Each is trained
here, scripted (TorchScript, so the decoding inside ``forward`` and any batch size or sequence
length carry over), and written with a config in the issue-14 format (``[output.detection]``,
``[output.segmentation]``, ``[[inputs]]``).
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from inferq.producer.tools.scenes import SCENE_CLASSES
from inferq.worker.examples import evaluate
from inferq.worker.examples.scene_data import INPUT_SIDE, SCENE_MEAN, SCENE_STD
from inferq.worker.examples.scene_nets import DetectorNet, SceneNet, SegmenterNet
from inferq.worker.examples.textcls import MAX_LEN, TEXT_CLASSES

Log = Callable[[str], None]


@dataclass(frozen=True)
class Built:
    """A trained example ready to write: its TorchScript bytes and its config.toml text."""

    torchscript: bytes
    config: str


def _list(values: Sequence[object]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def script_bytes(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    # torch 2.13 deprecates torch.jit; TorchScript stays the repository's serving format.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)
        torch.jit.save(torch.jit.script(model.eval()), buf)
    return buf.getvalue()


def _image_input(description: str) -> list[str]:
    return [
        'platform = "torchscript"',
        f"description = {json.dumps(description)}",
        "",
        "[input]",
        f"shape = [3, {INPUT_SIDE}, {INPUT_SIDE}]  # C, H, W",
        'dtype = "uint8"',
        'color = "RGB"',
        "",
        "[preprocess]",
        'resize = "letterbox"  # any image size: fitted inside, black bands; results map back',
        f"mean = {_list(SCENE_MEAN)}",
        f"std = {_list(SCENE_STD)}",
        "",
    ]


def _batching(max_batch: int, preferred: Sequence[int], queue_limit: int) -> list[str]:
    return [
        "",
        "[batching]",
        f"max_batch_size = {max_batch}",
        "max_wait_ms = 5.0",
        f"preferred_batch_sizes = {_list(preferred)}",
        f"queue_limit = {queue_limit}",
        "default_deadline_ms = 0",
        "",
        "[precision]",
        'mode = "fp32"',
        "channels_last = false",
    ]


def detector_config() -> str:
    lines = _image_input(
        "Finds filled circles, squares and triangles (1-4 per image), trained in-project "
        "on inferq.producer.tools.scenes"
    )
    lines += [
        "[output]",
        'postprocess = "detection"',
        f"labels = {_list(SCENE_CLASSES)}",
        "",
        "[output.detection]",
        'boxes = "boxes"    # [B, A, 4] xyxy in model-input pixels',
        'scores = "scores"  # [B, A, 3] per-class probabilities, no background',
        f"score_threshold = {evaluate.SCORE_THRESHOLD}",
        f"iou_threshold = {evaluate.NMS_IOU}",
        f"max_detections = {evaluate.MAX_DETECTIONS}",
    ]
    return "\n".join(lines + _batching(32, (8, 16, 32), 5000)) + "\n"


def segmenter_config() -> str:
    lines = _image_input(
        "Per-pixel background / circle / square / triangle, trained in-project on "
        "inferq.producer.tools.scenes"
    )
    lines += [
        "[output]",
        'postprocess = "segmentation"',
        f"labels = {_list(('background', *SCENE_CLASSES))}",
        "",
        "[output.segmentation]",
        'logits = "logits"  # [B, 4, H, W]; class 0 = background',
    ]
    return "\n".join(lines + _batching(32, (8, 16, 32), 5000)) + "\n"


def textcls_config() -> str:
    lines = [
        'platform = "torchscript"',
        "description = "
        + json.dumps(
            "Orders of the A/B/C words in synthetic token sentences (worker/examples/textcls.py: "
            "0 pad, 1-8 A, 9-16 B, 17-24 C, 25-63 filler), trained in-project"
        ),
        "",
        "[[inputs]]",
        'name = "input_ids"',
        'dtype = "int64"',
        f"shape = [{MAX_LEN}]  # the longest sentence; shorter ones are padded per batch",
        "variable = 0",
        "pad_value = 0",
        "buckets = [16, 32, 64]",
        "",
        "[[inputs]]",
        'name = "attention_mask"',
        'mask_of = "input_ids"',
        'dtype = "int64"',
        "",
        "[output]",
        'postprocess = "topk"',
        "top_k = 3",
        f"labels = {_list(TEXT_CLASSES)}",
    ]
    return "\n".join(lines + _batching(64, (16, 32, 64), 20000)) + "\n"


_SCENE_NETS: dict[int, SceneNet] = {}


def _scene_net(seed: int, log: Log) -> SceneNet:
    """One training serves both scene examples: building both trains once."""
    from inferq.worker.examples.detector import train_scene_net

    if seed not in _SCENE_NETS:
        _SCENE_NETS[seed] = train_scene_net(seed=seed, log=log)
    return _SCENE_NETS[seed]


def build_detector(seed: int, log: Log) -> Built:
    from inferq.worker.examples.detector import evaluate_detector, heldout_scenes

    model = DetectorNet(_scene_net(seed, log))
    counts = evaluate_detector(model, heldout_scenes())
    log(
        f"detector: held-out {counts.shapes} shapes: found {counts.recall:.1%}, "
        f"false boxes {counts.false_rate:.1%} of {counts.boxes}"
    )
    return Built(script_bytes(model), detector_config())


def build_segmenter(seed: int, log: Log) -> Built:
    from inferq.worker.examples.detector import heldout_scenes
    from inferq.worker.examples.segmenter import evaluate_segmenter

    model = SegmenterNet(_scene_net(seed, log))
    counts = evaluate_segmenter(model, heldout_scenes())
    log(
        f"segmenter: held-out mIoU {counts.mean_iou:.3f} (per class "
        f"{', '.join(f'{v:.3f}' for v in counts.class_iou())}), "
        f"per-image shape mIoU {counts.mean_image_iou:.3f}"
    )
    return Built(script_bytes(model), segmenter_config())


def build_textcls(seed: int, log: Log) -> Built:
    from inferq.worker.examples.textcls import heldout_sentences, text_accuracy, train_textcls

    model = train_textcls(seed=seed, log=log)
    sentences, labels = heldout_sentences()
    log(f"textcls: held-out accuracy {text_accuracy(model, sentences, labels):.4f}")
    return Built(script_bytes(model), textcls_config())


BUILDERS: dict[str, Callable[[int, Log], Built]] = {
    "detector": build_detector,
    "segmenter": build_segmenter,
    "textcls": build_textcls,
}
