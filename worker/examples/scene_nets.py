"""Networks for the scene examples: a grid detector and a small encoder-decoder segmenter.

Both take normalised float NCHW (the worker normalises per ``[preprocess]``) and share one small
backbone with features at strides 2, 4 and 8; dilated convolutions at stride 8 give a receptive
field wider than the largest shape (40 % of a 128 px side) without another downsampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DETECTOR_STRIDE = 8
_MAX_LOG_SIZE = 6.0  # exp(6) * 8 px, far above any box a 128-256 px input holds


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Backbone(nn.Module):
    """Features at strides 2 (16 ch), 4 (24 ch) and 8 (48 ch), about 18 M MACs at 128x128."""

    def __init__(self) -> None:
        super().__init__()
        self.s2 = _conv(3, 16, stride=2)
        self.s4 = _conv(16, 24, stride=2)
        self.s8 = nn.Sequential(
            _conv(24, 48, stride=2), _conv(48, 48, dilation=2), _conv(48, 48, dilation=4)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f2 = self.s2(x)
        f4 = self.s4(f2)
        return f2, f4, self.s8(f4)


class DetectorNet(nn.Module):
    """CenterNet-like: per stride-8 cell, a heatmap per class (a shape's centre), the centre's
    offset inside the cell and the box's log size; ``forward`` decodes them into boxes.

    ``forward`` returns {"boxes": [B, A, 4] xyxy in input pixels, "scores": [B, A, C]} with one
    candidate per cell (A = H/8 * W/8) scored for its best class only, and zeroed where a cell in
    its 3x3 neighbourhood is surer (a max-pool peak test), so one shape yields one box.
    ``raw`` gives the undecoded maps for training.
    """

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.neck = _conv(48, 48)
        self.head = nn.Conv2d(48, num_classes + 4, 1)
        nn.init.constant_(self.head.bias[:num_classes], -2.2)  # start near p = 0.1 (focal loss)
        self.num_classes = num_classes
        self.stride = DETECTOR_STRIDE
        self.max_log_size = _MAX_LOG_SIZE

    def raw(self, x: Tensor) -> Tensor:
        return self.head(self.neck(self.backbone(x)[2]))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = self.raw(x)
        heat = torch.sigmoid(out[:, : self.num_classes])
        best = heat.amax(1, keepdim=True)
        # One class per cell, and only where no neighbour is surer of any class: shapes never
        # overlap, so a second class or a neighbour's echo would only be a false box.
        keep = (heat == best) & (F.max_pool2d(best, 3, stride=1, padding=1) == best)
        scores = (heat * keep.to(heat.dtype)).flatten(2).transpose(1, 2)
        boxes = decode_boxes(out[:, self.num_classes :], self.stride, self.max_log_size)
        return {"boxes": boxes, "scores": scores}


def cell_centres(h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    ys = torch.arange(h, device=device, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, device=device, dtype=torch.float32).view(1, 1, w)
    return xs, ys


def decode_boxes(geometry: Tensor, stride: int, max_log_size: float) -> Tensor:
    """[B, 4, H, W] (offset x, offset y as logits; log w, log h in cells) -> [B, H*W, 4] xyxy px.

    Constants come in as arguments: TorchScript compiles this and cannot read module globals."""
    b, _, h, w = geometry.shape
    xs, ys = cell_centres(h, w, geometry.device)
    cx = (xs + torch.sigmoid(geometry[:, 0])) * stride
    cy = (ys + torch.sigmoid(geometry[:, 1])) * stride
    half_w = torch.exp(geometry[:, 2].clamp(max=max_log_size)) * (stride / 2)
    half_h = torch.exp(geometry[:, 3].clamp(max=max_log_size)) * (stride / 2)
    boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)
    return boxes.view(b, h * w, 4)


class SegmenterNet(nn.Module):
    """Encoder-decoder working at stride 4: the stride-8 features upsampled, the stride-4 ones and
    the stride-2 ones folded into channels (pixel unshuffle), merged; then per stride-4 cell the
    class logits of its 4x4 input pixels (pixel shuffle). Nothing runs at a finer stride, where a
    CPU would spend most of its time (and bilinear upsampling's backward pass is slow there).

    ``forward`` returns logits [B, num_classes, H, W]; class 0 is background.
    """

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.merge = nn.Sequential(
            nn.Conv2d(48 + 24 + 4 * 16, 48, 1), nn.ReLU(inplace=True), _conv(48, 48)
        )
        self.classify = nn.Conv2d(48, 16 * num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        f2, f4, f8 = self.backbone(x)
        up = F.interpolate(f8, size=f4.shape[-2:], mode="nearest")
        y = self.merge(torch.cat([up, f4, F.pixel_unshuffle(f2, 2)], 1))
        return F.pixel_shuffle(self.classify(y), 4)
