"""Tiny deterministic TorchScript models for tests, including ones that fail on purpose.

Inputs are 3x8x8 uint8. With mean 0, std 1 and scale 255 a pixel of 255 becomes 1.0, so tests
mark a request by setting pixel [0, 0, 0] (poison), [0, 0, 1] (device assert) to 255.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch
from torch import nn

from inferq.worker.repository import record_sha256

SHAPE = (3, 8, 8)
LABELS = ("a", "b", "c", "d")


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, len(LABELS))

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Faulty(Tiny):
    """Raises for a batch holding any poisoned row (pixel [0,0,0] == 255)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0, 0, 0] > 0.99).any()):
            raise RuntimeError("poisoned input")
        return self.body(x)


class Oomy(Tiny):
    """Behaves as if device memory held at most 4 inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 4:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return self.body(x)


class Crashy(Tiny):
    """A marked row (pixel [0,0,1] == 255) triggers what a device-side assert looks like."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0, 0, 1] > 0.99).any()):
            raise RuntimeError("CUDA error: device-side assert triggered (injected)")
        return self.body(x)


class Slow(Tiny):
    """Tiny, but takes ~15 ms a batch on two cores (for shutdown and redelivery tests)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        # Built from the input, so that no optimisation pass can fold the loop into a constant.
        busy = torch.ones(512, 512) + x.mean() * 0.0
        for _ in range(16):  # the result feeds the output so TorchScript cannot drop the work
            busy = torch.mm(busy, busy) / 512.0
        return y + busy[0, 0] * 0.0


class Sleepy(Tiny):
    """Tiny, but takes about a second a batch (for requests queued behind a busy device)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        busy = torch.ones(512, 512) + x.mean() * 0.0
        for _ in range(800):
            busy = torch.mm(busy, busy) / 512.0
        return y + busy[0, 0] * 0.0


# -- vision models with structured outputs (detection, segmentation) ----------------------------

#: [C, H, W] of the vision test models: a non-square input, so no axis can stand for the other.
VISION_SHAPE = (3, 16, 32)
VISION_LABELS = ("circle", "square", "triangle")


class Detector(nn.Module):
    """Boxes that are a known function of the input, so mapped-back boxes can be asserted.

    Anchor 0 is the bounding box (pixel edges, model-input pixels) of the pixels whose red
    channel is over half; its class is "square" when any green channel is over half, else
    "circle", at 0.9. Anchor 1 is the whole input at 0.1 (under any threshold the tests use).
    A batch holding a row with any full blue pixel raises (the poisoned request).
    Returns ``{"boxes": [B, 2, 4], "scores": [B, 2, 3]}``.
    """

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if bool((x[:, 2] > 0.99).any()):
            raise RuntimeError("poisoned input")
        mask = x[:, 0] > 0.5
        n, height, width = mask.shape
        cols, rows = mask.any(dim=1), mask.any(dim=2)
        xs = torch.arange(width, device=x.device, dtype=torch.float32).expand(n, width)
        ys = torch.arange(height, device=x.device, dtype=torch.float32).expand(n, height)
        far = torch.full_like(xs, 1e9)
        x1 = torch.where(cols, xs, far).amin(dim=1)
        x2 = torch.where(cols, xs + 1, -far).amax(dim=1)
        far_y = torch.full_like(ys, 1e9)
        y1 = torch.where(rows, ys, far_y).amin(dim=1)
        y2 = torch.where(rows, ys + 1, -far_y).amax(dim=1)
        found = torch.stack([x1, y1, x2, y2], dim=1)
        whole = torch.tensor([0.0, 0.0, float(width), float(height)], device=x.device)
        boxes = torch.stack([found, whole.expand(n, 4)], dim=1)
        green = (x[:, 1] > 0.5).flatten(1).any(dim=1).float()
        first = torch.stack([0.9 * (1 - green), 0.9 * green, torch.zeros_like(green)], dim=1)
        scores = torch.stack([first, torch.full_like(first, 0.1)], dim=1)
        return {"boxes": boxes, "scores": scores}


class Segmenter(nn.Module):
    """Labels 1 where the red channel is over half, else 0: logits [B, 2, H, W]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, 0]
        return torch.stack([0.5 - red, red - 0.5], dim=1)


MODULES: dict[str, type[nn.Module]] = {
    "tiny": Tiny,
    "faulty": Faulty,
    "oomy": Oomy,
    "crashy": Crashy,
    "slow": Slow,
    "sleepy": Sleepy,
    "detector": Detector,
    "segmenter": Segmenter,
}


def config_text(
    max_batch_size: int = 16,
    max_wait_ms: float = 5.0,
    queue_limit: int = 10_000,
    default_deadline_ms: float = 0.0,
    precision: str = "fp32",
    dtype: str = "uint8",
    scale: float = 255.0,
    instances: int = 1,
) -> str:
    return textwrap.dedent(
        f"""
        platform = "torchscript"
        [input]
        shape = [3, 8, 8]
        dtype = "{dtype}"
        color = "RGB"
        [preprocess]
        resize = "stretch"
        scale = {scale}
        mean = [0.0, 0.0, 0.0]
        std = [1.0, 1.0, 1.0]
        [output]
        postprocess = "topk"
        top_k = 2
        labels = ["a", "b", "c", "d"]
        [batching]
        max_batch_size = {max_batch_size}
        max_wait_ms = {max_wait_ms}
        preferred_batch_sizes = []
        queue_limit = {queue_limit}
        default_deadline_ms = {default_deadline_ms}
        [precision]
        mode = "{precision}"
        channels_last = false
        [instances]
        count = {instances}
        """
    )


def write_model(
    root: Path, name: str, kind: str = "tiny", version: int = 1, **config: object
) -> Path:
    """Script ``MODULES[kind]`` into ``root/name/version/model.pt`` with config and sha256."""
    model_dir = root / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    path = version_dir / "model.pt"
    torch.jit.save(torch.jit.script(MODULES[kind]().eval()), str(path))
    record_sha256(path)
    (model_dir / "config.toml").write_text(config_text(**config))  # type: ignore[arg-type]
    return path


def write_onnx_model(root: Path, name: str, kind: str = "tiny", version: int = 1) -> Path:
    """Export ``MODULES[kind]`` to ONNX (batch dimension dynamic) with config and sha256."""
    model_dir = root / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    path = version_dir / "model.onnx"
    torch.onnx.export(
        MODULES[kind]().eval(),
        (torch.zeros(1, *SHAPE),),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        dynamo=False,
    )
    record_sha256(path)
    (model_dir / "config.toml").write_text(config_text().replace('"torchscript"', '"onnx"'))
    return path


def vision_config_text(postprocess: str, resize: str, handler: str = "") -> str:
    """Config of a vision test model: VISION_SHAPE, mean 0, std 1, ``resize`` mode."""
    c, h, w = VISION_SHAPE
    handler_table = f'[handler]\nname = "{handler}"\n' if handler else ""
    return (
        textwrap.dedent(
            f"""
        platform = "torchscript"
        [input]
        shape = [{c}, {h}, {w}]
        [preprocess]
        resize = "{resize}"
        mean = [0.0, 0.0, 0.0]
        std = [1.0, 1.0, 1.0]
        [output]
        postprocess = "{postprocess}"
        labels = {list(VISION_LABELS)!r}
        [batching]
        max_batch_size = 8
        max_wait_ms = 20.0
        [precision]
        channels_last = false
        """
        ).replace("'", '"')
        + handler_table
    )


def write_vision_model(
    root: Path, name: str, kind: str, postprocess: str, resize: str, handler: str = ""
) -> Path:
    """``MODULES[kind]`` (detector or segmenter) scripted into ``root/name/1`` with its config."""
    text = vision_config_text(postprocess, resize, handler)
    return script_version(root, name, MODULES[kind](), text)


def script_version(root: Path, name: str, module: nn.Module, config: str) -> Path:
    """``module`` scripted into ``root/name/1/model.pt`` (its sha256 recorded), ``config`` as
    the model's config.toml."""
    version_dir = root / name / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    path = version_dir / "model.pt"
    torch.jit.save(torch.jit.script(module.eval()), str(path))
    record_sha256(path)
    (root / name / "config.toml").write_text(config)
    return path


# -- named tensor inputs ([[inputs]]) --------------------------------------------------------------

VOCAB = 100
POISON_ID = 99  # a request holding this token id makes Tokens raise
MAX_TOKENS = 16


def token_table() -> torch.Tensor:
    """Small integers as floats: every sum of them is exact, so a padded batch must give the
    very bits each request gives alone (and token 0, the pad value, is not a zero row)."""
    return (torch.arange(VOCAB * 4).reshape(VOCAB, 4) % 7 - 3).float()


class Tokens(nn.Module):
    """forward(input_ids int64 [B, L], flags bool [B, 4], attention_mask int64 [B, L]) -> [B, 4]:
    the masked sum of the tokens' rows plus 10 per set flag."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(token_table(), requires_grad=False)

    def forward(
        self, input_ids: torch.Tensor, flags: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        if bool((input_ids == 99).any()):  # POISON_ID (TorchScript reads no globals)
            raise RuntimeError("poisoned token")
        rows = self.table[input_ids] * attention_mask.unsqueeze(-1).float()
        return rows.sum(1) + flags.float() * 10.0


class Tagger(nn.Module):
    """forward(input_ids [B, L], attention_mask bool [B, L]) -> [B, L, 4]: one row per token,
    zero in the padding (the runner cuts each request's rows back to its length)."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(token_table(), requires_grad=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.table[input_ids] * attention_mask.unsqueeze(-1).float()


TENSOR_MODULES: dict[str, type[nn.Module]] = {"tokens": Tokens, "tagger": Tagger}

TENSOR_CONFIGS = {
    "tokens": f"""
        [[inputs]]
        name = "input_ids"
        dtype = "int64"
        shape = [{MAX_TOKENS}]
        variable = 0
        pad_value = 0
        [[inputs]]
        name = "flags"
        dtype = "bool"
        shape = [4]
        [[inputs]]
        name = "attention_mask"
        dtype = "int64"
        mask_of = "input_ids"
        [output]
        postprocess = "raw"
        """,
    "tagger": f"""
        [[inputs]]
        name = "input_ids"
        dtype = "int64"
        shape = [{MAX_TOKENS}]
        variable = 0
        buckets = [4, 8]
        [[inputs]]
        name = "attention_mask"
        dtype = "bool"
        mask_of = "input_ids"
        [output]
        postprocess = "raw"
        follows = "input_ids"
        """,
}


def write_tensor_model(
    root: Path, name: str, kind: str = "tokens", max_batch_size: int = 16, max_wait_ms: float = 20.0
) -> Path:
    """Script ``TENSOR_MODULES[kind]`` with its [[inputs]] config into ``root/name/1``."""
    batching = f"[batching]\nmax_batch_size = {max_batch_size}\nmax_wait_ms = {max_wait_ms}\n"
    text = 'platform = "torchscript"\n' + textwrap.dedent(TENSOR_CONFIGS[kind]) + batching
    return script_version(root, name, TENSOR_MODULES[kind](), text)


def build_test_repo(root: Path) -> Path:
    for kind in MODULES:
        if kind not in ("detector", "segmenter"):
            write_model(root, kind, kind)
    write_model(root, "limited", "slow", queue_limit=20, max_batch_size=4)
    write_model(root, "deadlined", "tiny", default_deadline_ms=1.0)
    write_model(root, "floaty", "tiny", dtype="float32", scale=1.0)
    write_model(root, "twin", "tiny", instances=2)
    write_onnx_model(root, "tiny-onnx")
    for kind in TENSOR_MODULES:
        write_tensor_model(root, kind, kind)
    return root
