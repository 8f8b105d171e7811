"""Networks for the scene examples: one ``SceneNet`` trained once, served as two models.

``SceneNet`` is a small backbone (strides 2, 4, 8; dilated convolutions at stride 8 give a
receptive field wider than the largest shape, 40 % of a 128 px side) with two heads: a
CenterNet-like detection head on the stride-8 grid and a per-pixel foreground head. The
``detector`` serves the first (``DetectorNet``); the ``segmenter`` (``SegmenterNet``) labels each
foreground pixel with the class of the detected shape that owns it, so classes come from whole
shapes (what a pixel-wise classifier takes many more training steps to learn on a CPU).
Both take normalised float NCHW (the worker normalises per ``[preprocess]``).
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


class SceneNet(nn.Module):
    """The trained network: ``raw`` gives the detection maps [B, C + 4, H/8, W/8] (class heat
    logits; centre offset logits x, y; log box width, height in cells) and the foreground logit
    [B, 1, H, W]."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.neck = _conv(48, 48)
        self.head = nn.Conv2d(48, num_classes + 4, 1)
        bias = torch.zeros(num_classes + 4)
        bias[:num_classes] = -2.2  # heat starts near p = 0.1, as focal loss wants
        self.head.bias = nn.Parameter(bias)
        # Foreground per stride-4 cell as 4x4 sub-pixel logits (put in place by a pixel shuffle)
        # from all three scales, the stride-2 features and the pixels folded into channels:
        # nothing runs on a finer map, where a CPU's training time would go.
        self.fg = nn.Sequential(
            nn.Conv2d(48 + 24 + 4 * 16 + 16 * 3, 32, 1), nn.ReLU(inplace=True), nn.Conv2d(32, 16, 1)
        )
        self.num_classes = num_classes

    def detect(self, x: Tensor) -> Tensor:
        return self.head(self.neck(self.backbone(x)[2]))

    def raw(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f2, f4, f8 = self.backbone(x)
        det = self.head(self.neck(f8))
        # The cell's own 16 input pixels too: each sub-pixel logit needs its pixel's colour,
        # which the features only summarise.
        pixels = F.pixel_unshuffle(x, 4)
        fused = torch.cat([_upsample_to(f8, f4), f4, F.pixel_unshuffle(f2, 2), pixels], 1)
        return det, F.pixel_shuffle(self.fg(fused), 4)


class DetectorNet(nn.Module):
    """``forward`` returns {"boxes": [B, A, 4] xyxy in input pixels, "scores": [B, A, C]}, one
    candidate per stride-8 cell (A = H/8 * W/8) scored for its best class only, and zeroed where a
    cell in its 3x3 neighbourhood is surer (a max-pool peak test), so one shape yields one box."""

    def __init__(self, net: SceneNet) -> None:
        super().__init__()
        self.net = net
        self.num_classes = net.num_classes
        self.stride = DETECTOR_STRIDE
        self.max_log_size = _MAX_LOG_SIZE

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return decode(self.net.detect(x), self.num_classes, self.stride, self.max_log_size)


def decode(raw: Tensor, num_classes: int, stride: int, max_log_size: float) -> dict[str, Tensor]:
    heat = torch.sigmoid(raw[:, :num_classes])
    best = heat.amax(1, keepdim=True)
    # One class per cell, and only where no neighbour is surer of any class: shapes never
    # overlap, so a second class or a neighbour's echo would only be a false box.
    keep = (heat == best) & (F.max_pool2d(best, 3, stride=1, padding=1) == best)
    scores = (heat * keep.to(heat.dtype)).flatten(2).transpose(1, 2)
    return {"boxes": decode_boxes(raw[:, num_classes:], stride, max_log_size), "scores": scores}


def decode_boxes(geometry: Tensor, stride: int, max_log_size: float) -> Tensor:
    """[B, 4, H, W] (offset x, offset y as logits; log w, log h in cells) -> [B, H*W, 4] xyxy px.

    Constants come in as arguments: TorchScript compiles this and cannot read module globals."""
    b, _, h, w = geometry.shape
    ys = torch.arange(h, device=geometry.device, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, device=geometry.device, dtype=torch.float32).view(1, 1, w)
    cx = (xs + torch.sigmoid(geometry[:, 0])) * stride
    cy = (ys + torch.sigmoid(geometry[:, 1])) * stride
    half_w = torch.exp(geometry[:, 2].clamp(max=max_log_size)) * (stride / 2)
    half_h = torch.exp(geometry[:, 3].clamp(max=max_log_size)) * (stride / 2)
    boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)
    return boxes.view(b, h * w, 4)


class SegmenterNet(nn.Module):
    """``forward`` returns logits [B, C + 1, H, W] (class 0 = background): a pixel is foreground
    by the foreground head, and takes the class of the detected shape that owns it, the best of
    the ``top_k`` surest boxes (score >= ``min_score``) containing it, weighted by how near the
    box's centre the pixel lies (relative to the box's size), so neighbouring boxes that overlap
    at their corners split the overlap between their shapes."""

    def __init__(self, net: SceneNet, top_k: int = 8, min_score: float = 0.2) -> None:
        super().__init__()
        self.net = net
        self.num_classes = net.num_classes
        self.stride = DETECTOR_STRIDE
        self.max_log_size = _MAX_LOG_SIZE
        self.top_k = top_k
        self.min_score = min_score

    def forward(self, x: Tensor) -> Tensor:
        raw, fg = self.net.raw(x)
        det = decode(raw, self.num_classes, self.stride, self.max_log_size)
        claim = self._claims(det["boxes"], det["scores"], x.shape[-2], x.shape[-1])
        # The owning class scores exactly ``fg``, against ``-fg`` for background; the others
        # (and every class where no box claims the pixel) lie far below.
        owner = claim / (claim.amax(1, keepdim=True) + 1e-6)
        return torch.cat([-fg, fg + torch.log(owner + 1e-3)], 1)

    def _claims(self, boxes: Tensor, scores: Tensor, h: int, w: int) -> Tensor:
        """[B, C, H, W]: per class, the strongest claim any of its boxes makes on each pixel."""
        conf, cls = scores.max(-1)
        conf, idx = conf.topk(min(self.top_k, conf.shape[1]), dim=1)
        cls = cls.gather(1, idx)
        box = boxes.gather(1, idx.unsqueeze(-1).expand(-1, -1, 4))
        conf = conf * (conf >= self.min_score).to(conf.dtype)
        xs = torch.arange(w, device=boxes.device, dtype=torch.float32) + 0.5
        ys = torch.arange(h, device=boxes.device, dtype=torch.float32) + 0.5
        half_w = ((box[..., 2] - box[..., 0]) / 2).clamp(min=1.0).unsqueeze(-1)
        half_h = ((box[..., 3] - box[..., 1]) / 2).clamp(min=1.0).unsqueeze(-1)
        dx = (xs - (box[..., 0:1] + box[..., 2:3]) / 2) / half_w  # [B, K, W], inside when |dx| <= 1
        dy = (ys - (box[..., 1:2] + box[..., 3:4]) / 2) / half_h  # [B, K, H]
        near_x = (1 - dx.abs()).clamp(min=0.0)
        near_y = (1 - dy.abs()).clamp(min=0.0)
        claim = conf[..., None, None] * near_y.unsqueeze(-1) * near_x.unsqueeze(-2)  # [B,K,H,W]
        onehot = F.one_hot(cls, self.num_classes).to(claim.dtype)  # [B, K, C]
        return (claim.unsqueeze(2) * onehot[..., None, None]).amax(1)


def _upsample_to(x: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="nearest")
