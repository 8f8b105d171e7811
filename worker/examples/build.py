"""Build the example model repository (Triton-like layout), entirely in-project.

Layout per model::

    <dest>/<name>/config.toml
    <dest>/<name>/1/model.pt          TorchScript, takes normalised float NCHW
    <dest>/<name>/1/model.pt.sha256   "<hex>  model.pt\\n" (sha256sum format)

``shapes`` is a tiny CNN trained here on ``inferq.producer.tools.synth`` images; ``resnet18`` and
``resnet50`` have fixed-seed random weights and exist to exercise realistic sizes; ``null32`` and
``null224`` return their input's first values (no compute), so that ``inferq bench`` on them
gives the ceiling of the worker's own path for 3x32x32 and 3x224x224 inputs. ``detector``,
``segmenter`` and ``textcls`` (``structured``) are trained here too and bring their own configs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pathlib
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from inferq.producer.tools.synth import CLASSES, make_images
from inferq.worker.examples import EXAMPLE_NAMES
from inferq.worker.examples.nets import FirstValues, ShapesNet, resnet18, resnet50
from inferq.worker.examples.structured import BUILDERS

SHAPES_SIZE = 32
SHAPES_MEAN = (0.5, 0.5, 0.5)
SHAPES_STD = (0.25, 0.25, 0.25)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Training data: several frame sizes/aspect ratios so the net sees the different
# downscale factors and crops the producer can produce. Held-out data uses another
# seed and a non-square frame to check that the resize + centre-crop path works.
TRAIN_SETS: tuple[tuple[int, tuple[int, int]], ...] = (
    (1001, (64, 64)),
    (1002, (80, 64)),
    (1003, (64, 80)),
    (1004, (48, 48)),
    (1005, (32, 32)),
)
TRAIN_PER_SET = 1500
HELDOUT_SEED = 9001
HELDOUT_SIZE = (80, 64)
HELDOUT_N = 600
EPOCHS = 8
BATCH = 64
LR = 0.01

Log = Callable[[str], None]


@dataclass(frozen=True)
class ModelSpec:
    """What goes into config.toml; see the module docstring for the file layout."""

    description: str
    shape: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    top_k: int
    max_batch_size: int
    max_wait_ms: float
    preferred_batch_sizes: tuple[int, ...]
    queue_limit: int
    channels_last: bool
    labels: tuple[str, ...] | None = None
    instances: int = 1


_RESNET = ModelSpec(
    description="ResNet-18 with fixed-seed random weights (load/throughput testing)",
    shape=(3, 224, 224),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    top_k=5,
    max_batch_size=32,
    max_wait_ms=10.0,
    preferred_batch_sizes=(8, 16, 32),
    queue_limit=5000,
    channels_last=True,
)

_SHAPES = ModelSpec(
    description="Tiny CNN classifying synthetic shapes (inferq.producer.tools.synth), trained in-project",
    shape=(3, SHAPES_SIZE, SHAPES_SIZE),
    mean=SHAPES_MEAN,
    std=SHAPES_STD,
    top_k=3,
    max_batch_size=64,
    max_wait_ms=5.0,
    preferred_batch_sizes=(16, 32, 64),
    queue_limit=20000,
    # Measured on a 2-core CPU (torch 2.13, traced, eval): channels_last is faster
    # even for this tiny net (batch 64: 2.0 vs 3.7 ms; batch 16: 0.5 vs 1.0 ms;
    # batch 1: 0.13 vs 0.17 ms) because oneDNN's NHWC convs avoid layout reorders.
    channels_last=True,
    labels=CLASSES,
    # Batch 64 on 2 cores: one instance on both cores 24k img/s, one on one core 15k, two
    # side by side on one core each 26-29k; intra-op threads barely help a net this small.
    instances=2,
)

_NULL = "Null model: each input's first 10 values, no compute (the path's ceiling)"

SPECS: dict[str, ModelSpec] = {
    "shapes": _SHAPES,
    "resnet18": _RESNET,
    "resnet50": dataclasses.replace(_RESNET, description=_RESNET.description.replace("18", "50")),
    # The classifier's input and batching, with no labels, one instance and nothing to compute.
    "null32": dataclasses.replace(
        _SHAPES, description=_NULL, channels_last=False, labels=None, instances=1
    ),
    "null224": ModelSpec(
        description=_NULL,
        shape=(3, 224, 224),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        top_k=3,
        max_batch_size=32,
        max_wait_ms=10.0,
        preferred_batch_sizes=(8, 16, 32),
        queue_limit=5000,
        channels_last=False,
    ),
}


# --------------------------------------------------------------------------- config


def _toml_list(values: Sequence[object]) -> str:
    # json.dumps yields valid TOML for ints, floats and plain strings.
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def render_config(spec: ModelSpec) -> str:
    """config.toml text for ``spec`` (plain formatting; no TOML writer dependency)."""
    lines = [
        'platform = "torchscript"',
        f"description = {json.dumps(spec.description)}",
        "",
        "[input]",
        f"shape = {_toml_list(spec.shape)}  # C, H, W",
        'dtype = "uint8"',
        'color = "RGB"',
        "",
        "[preprocess]",
        'resize = "crop"  # crop | letterbox | stretch',
        f"mean = {_toml_list(spec.mean)}",
        f"std = {_toml_list(spec.std)}",
        "",
        "[output]",
        'postprocess = "topk"  # topk | raw',
        f"top_k = {spec.top_k}",
    ]
    if spec.labels is not None:
        lines.append(f"labels = {_toml_list(spec.labels)}")
    lines += [
        "",
        "[batching]",
        f"max_batch_size = {spec.max_batch_size}",
        f"max_wait_ms = {float(spec.max_wait_ms)!r}",
        f"preferred_batch_sizes = {_toml_list(spec.preferred_batch_sizes)}",
        f"queue_limit = {spec.queue_limit}",
        "default_deadline_ms = 0",
        "",
        "[precision]",
        'mode = "fp32"',
        f"channels_last = {'true' if spec.channels_last else 'false'}",
        "",
        "[instances]",
        f"count = {spec.instances}  # run threads computing batches side by side",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ preprocessing


def preprocess_for_training(img: Image.Image, size: int = SHAPES_SIZE) -> np.ndarray:
    """Resize so the short side is ``size`` (bilinear), centre-crop, RGB uint8 CHW.

    Mirrors the producer's "crop" preprocessing for the serving spec; kept as a plain
    PIL resize + crop so the two stay bit-identical.
    """
    img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def normalise(batch: np.ndarray | Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 NCHW -> float (x/255 - mean) / std, as the server runner does."""
    x = torch.as_tensor(batch).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s


def _dataset(images: Sequence[Image.Image]) -> np.ndarray:
    return np.stack([preprocess_for_training(im) for im in images])


# ------------------------------------------------------------------------ training


def _train_data() -> tuple[Tensor, Tensor]:
    xs, ys = [], []
    for seed, size in TRAIN_SETS:
        images, labels = make_images(TRAIN_PER_SET, seed=seed, size=size)
        xs.append(_dataset(images))
        ys.append(labels)
    x = normalise(np.concatenate(xs), SHAPES_MEAN, SHAPES_STD)
    return x, torch.from_numpy(np.concatenate(ys))


def _heldout_data() -> tuple[Tensor, Tensor]:
    images, labels = make_images(HELDOUT_N, seed=HELDOUT_SEED, size=HELDOUT_SIZE)
    return normalise(_dataset(images), SHAPES_MEAN, SHAPES_STD), torch.from_numpy(labels)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on normalised ``x``."""
    was_training = model.training
    model.eval()
    correct = sum(
        int((model(xb).argmax(1) == yb).sum())
        for xb, yb in zip(x.split(256), y.split(256), strict=True)
    )
    model.train(was_training)
    return correct / len(y)


def _augment(x: Tensor) -> Tensor:
    # Random flips / 90-degree turns are label-preserving for every shape class and
    # cost nothing, which stretches the small training set.
    if torch.rand(()) < 0.5:
        x = x.flip(3)
    return torch.rot90(x, int(torch.randint(0, 4, ())), dims=(2, 3))


def train_shapes(seed: int = 0, log: Log = print) -> nn.Module:
    """Train ShapesNet on synthetic shapes; returns the model in eval mode."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    x, y = _train_data()
    x_val, y_val = _heldout_data()
    log(
        f"shapes: {len(y)} training / {len(y_val)} held-out images "
        f"in {time.perf_counter() - start:.1f}s"
    )
    model = ShapesNet(len(CLASSES))
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    steps = EPOCHS * -(-len(y) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(1, EPOCHS + 1):
        model.train()
        perm = torch.randperm(len(y))
        total = 0.0
        for idx in perm.split(BATCH):
            loss = loss_fn(model(_augment(x[idx])), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        log(
            f"shapes: epoch {epoch}/{EPOCHS} loss {total / len(y):.4f} "
            f"held-out acc {accuracy(model, x_val, y_val):.4f}"
        )
    acc = accuracy(model, x_val, y_val)
    log(f"shapes: trained in {time.perf_counter() - start:.1f}s, held-out accuracy {acc:.4f}")
    return model.eval()


# -------------------------------------------------------------------------- export


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    """Write via a temp file in the same directory + rename, so readers never see
    a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; workers may run as another user
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _torchscript_bytes(model: nn.Module, shape: tuple[int, int, int]) -> bytes:
    model.eval()
    example = torch.zeros(1, *shape)
    buf = io.BytesIO()
    # torch 2.13 marks torch.jit as deprecated, but TorchScript is still this repository's
    # serving format (loadable without the Python class); keep build logs free of the noise.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)
        torch.jit.save(torch.jit.trace(model, example), buf)
    return buf.getvalue()


def write_model(dest: pathlib.Path, name: str, model: nn.Module, spec: ModelSpec) -> pathlib.Path:
    """Write config.toml, 1/model.pt and its sha256 sidecar; returns the model dir."""
    return write_files(dest / name, _torchscript_bytes(model, spec.shape), render_config(spec))


def write_files(model_dir: pathlib.Path, blob: bytes, config: str) -> pathlib.Path:
    """``model_dir``/config.toml, 1/model.pt (``blob``) and its sha256 sidecar."""
    version_dir = model_dir / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(blob).hexdigest()
    # Each file is replaced atomically, but not the pair: between the two renames a reader
    # can see the new model.pt with the old sidecar, so a mismatch right after a rebuild
    # means "re-read", not "corrupt".
    _atomic_write(version_dir / "model.pt", blob)
    _atomic_write(version_dir / "model.pt.sha256", f"{digest}  model.pt\n".encode())
    _atomic_write(model_dir / "config.toml", config.encode())
    return model_dir


def _build_module(name: str, seed: int, log: Log) -> nn.Module:
    if name == "shapes":
        return train_shapes(seed, log)
    if name.startswith("null"):
        return FirstValues()
    torch.manual_seed(seed)
    factory = {"resnet18": resnet18, "resnet50": resnet50}[name]
    return factory(num_classes=1000).eval()


def _build_one(dest: pathlib.Path, name: str, seed: int, log: Log) -> pathlib.Path:
    if name in BUILDERS:
        built = BUILDERS[name](seed, log)
        return write_files(dest / name, built.torchscript, built.config)
    return write_model(dest, name, _build_module(name, seed, log), SPECS[name])


def build_examples(
    dest: pathlib.Path, names: Sequence[str] = EXAMPLE_NAMES, log: Log = print, seed: int = 0
) -> list[pathlib.Path]:
    """Build the named example models into the repository at ``dest``."""
    known = (*SPECS, *BUILDERS)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown example model(s) {unknown}; choose from {known}")
    dest = pathlib.Path(dest)
    written = []
    for name in names:
        log(f"building {name} ...")
        model_dir = _build_one(dest, name, seed, log)
        log(f"wrote {model_dir}")
        written.append(model_dir)
    return written
