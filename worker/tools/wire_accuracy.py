"""Top-1 agreement between the ``jpeg`` and ``raw`` wires, and bytes per image, per quality.

    python -m inferq.worker.tools.wire_accuracy [--qualities 75,85,90,95] [--n 300]

Each input goes through the producer's own preprocessing (``to_tensor``) to the model's input,
then through each wire exactly as a request would (``encode_image`` on the producer,
``decode_image`` on the worker), and the model computes every variant in the same batches. The
inputs: the ``shapes`` classifier's held-out images (the seed and frame its training never
saw), and, for ``resnet18`` (fixed random weights, 224x224), the same kind of shape images drawn
at 320x256 and crops of the photograph matplotlib ships (``grace_hopper.jpg``). ``png`` must
agree exactly, pixel for pixel; the tool fails if it does not.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from inferq.producer.preprocess import to_tensor
from inferq.producer.tools.synth import make_images
from inferq.shared.wire import EncodedImage, decode_image, encode_image
from inferq.worker.examples.build import HELDOUT_N, HELDOUT_SEED, HELDOUT_SIZE, build_examples
from inferq.worker.handlers import load_handler
from inferq.worker.outputs import first_output
from inferq.worker.repository import ModelRepository
from inferq.worker.runner import Runner

SUBSAMPLINGS = {"4:4:4": 0, "4:2:0": 2}


@dataclass(frozen=True)
class Row:
    model: str
    inputs: str
    wire: str
    agreement: float
    mean_bytes: float
    raw_bytes: int


def photo_crops(n: int, seed: int = 0) -> Iterator[Image.Image]:
    """Random crops (scale, place, mirror) of the photograph matplotlib ships."""
    from matplotlib import cbook

    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    rng = np.random.default_rng(seed)
    w, h = photo.size
    for _ in range(n):
        side = int(rng.integers(min(w, h) // 4, min(w, h)))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = photo.crop((x, y, x + side, y + side))
        yield crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


def measure(
    runner: Runner, images: list[Image.Image], qualities: list[int], label: str
) -> list[Row]:
    spec = runner.config.input_spec(runner.version)
    tensors = [to_tensor(img, spec, 10**9) for img in images]
    raw_top1 = _top1(runner, tensors)
    raw_bytes = tensors[0].nbytes
    rows = []
    png = [encode_image(t, "png", 0) for t in tensors]
    back = [decode_image(EncodedImage(p, "png"), spec.shape) for p in png]
    if not all(np.array_equal(a, b) for a, b in zip(tensors, back, strict=True)):
        raise SystemExit(f"png wire is not exact for {runner.config.name}")
    rows.append(
        Row(spec.model, label, "png", _agree(raw_top1, _top1(runner, back)), _mean(png), raw_bytes)
    )
    for name, sub in SUBSAMPLINGS.items():
        for q in qualities:
            jpegs = [_jpeg(t, q, sub) for t in tensors]
            decoded = [decode_image(EncodedImage(j, "jpeg"), spec.shape) for j in jpegs]
            top1 = _top1(runner, decoded)
            wire = f"jpeg q{q} {name}"
            rows.append(
                Row(spec.model, label, wire, _agree(raw_top1, top1), _mean(jpegs), raw_bytes)
            )
    return rows


def _jpeg(chw: np.ndarray, quality: int, subsampling: int) -> bytes:
    import io

    out = io.BytesIO()
    hwc = chw.transpose(1, 2, 0)
    Image.fromarray(np.ascontiguousarray(hwc)).save(
        out, "JPEG", quality=quality, subsampling=subsampling
    )
    return out.getvalue()


def _top1(runner: Runner, arrays: list[np.ndarray]) -> np.ndarray:
    x = torch.from_numpy(np.stack(arrays))
    return np.concatenate(
        [first_output(runner.forward(b)).flatten(1).argmax(1).numpy() for b in x.split(32)]
    )


def _agree(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


def _mean(blobs: list[bytes]) -> float:
    return float(np.mean([len(b) for b in blobs]))


def _runner(repo: Path, model: str) -> Runner:
    mv = ModelRepository(repo).resolve(model)
    device = torch.device("cpu")
    return Runner(load_handler(mv, device), mv.config, mv.version, device, "wire-accuracy")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qualities", default="75,85,90,95")
    parser.add_argument("--n", type=int, default=300, help="resnet18 inputs of each kind")
    parser.add_argument("--model-repository", type=Path, default=None)
    args = parser.parse_args(argv)
    qualities = [int(q) for q in args.qualities.split(",")]
    repo = args.model_repository or Path(tempfile.mkdtemp(prefix="inferq-wire-acc-"))
    missing = [m for m in ("shapes", "resnet18") if m not in ModelRepository(repo).models()]
    if missing:
        build_examples(repo, missing, log=lambda _: None)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = measure(
        _runner(repo, "shapes"),
        make_images(HELDOUT_N, HELDOUT_SEED, HELDOUT_SIZE)[0],
        qualities,
        f"held-out shapes ({HELDOUT_N})",
    )
    resnet = _runner(repo, "resnet18")
    rows += measure(
        resnet,
        make_images(args.n, HELDOUT_SEED, (320, 256))[0],
        qualities,
        f"shapes at 224 ({args.n})",
    )
    rows += measure(resnet, list(photo_crops(args.n)), qualities, f"photo crops ({args.n})")
    print(
        f"| model | inputs | wire | top-1 agreement with raw | bytes/image (raw {'/'.join(str(r) for r in sorted({r.raw_bytes for r in rows}))}) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r.model} | {r.inputs} | {r.wire} | {r.agreement:.1%} | {r.mean_bytes:,.0f} ({r.mean_bytes / r.raw_bytes:.1%}) |"
        )


if __name__ == "__main__":
    main()
