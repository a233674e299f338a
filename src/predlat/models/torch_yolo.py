"""A YOLOv8n-like detector in plain torch (no ultralytics, no torchvision).

The layer graph follows YOLOv8n (depth 0.33, width 0.25): a Conv-BN-SiLU backbone with
C2f blocks and SPPF, a PAN neck (top-down then bottom-up with upsample and concat), and
the decoupled anchor-free head (separate box and class branches per level, DFL box
decoding, sigmoid class scores); 640x640 input, [batch, 84, 8400] output, 3.16 M
parameters. Simplified against ultralytics: BatchNorm is kept beside each convolution
rather than fused into it at inference (same arithmetic shape, a little more memory
traffic), there is no letterbox preprocessing and no NMS (serving benchmarks time the
network), and only inference is modelled (no training-time outputs or losses).
"""

from __future__ import annotations

import torch
from torch import nn

REG_MAX, CLASSES, STRIDES = 16, 80, (8, 16, 32)


class ConvBnSilu(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False),
            nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03),
            nn.SiLU(),
        )


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1, self.cv2 = ConvBnSilu(c, c, 3), ConvBnSilu(c, c, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """Split in two, run n bottlenecks on one half, concatenate every intermediate."""

    def __init__(self, c_in: int, c_out: int, n: int, shortcut: bool) -> None:
        super().__init__()
        self.c = c_out // 2
        self.cv1 = ConvBnSilu(c_in, 2 * self.c)
        self.cv2 = ConvBnSilu((2 + n) * self.c, c_out)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = list(self.cv1(x).split((self.c, self.c), 1))
        for block in self.m:
            ys.append(block(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class SPPF(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.cv1 = ConvBnSilu(c_in, c_in // 2)
        self.cv2 = ConvBnSilu(c_in // 2 * 4, c_out)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = [self.cv1(x)]
        for _ in range(3):
            ys.append(self.pool(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class Detect(nn.Module):
    """Decoupled head: per level a box branch (4 x 16 DFL bins) and a class branch."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        c2, c3 = max(16, channels[0] // 4, 4 * REG_MAX), max(channels[0], min(CLASSES, 100))
        self.box = nn.ModuleList(
            nn.Sequential(
                ConvBnSilu(c, c2, 3), ConvBnSilu(c2, c2, 3), nn.Conv2d(c2, 4 * REG_MAX, 1)
            )
            for c in channels
        )
        self.cls = nn.ModuleList(
            nn.Sequential(ConvBnSilu(c, c3, 3), ConvBnSilu(c3, c3, 3), nn.Conv2d(c3, CLASSES, 1))
            for c in channels
        )
        self.register_buffer("bins", torch.arange(REG_MAX, dtype=torch.float32).view(1, 1, -1, 1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        batch = feats[0].shape[0]
        boxes, scores, anchors, strides = [], [], [], []
        for feat, box, cls, stride in zip(feats, self.box, self.cls, STRIDES, strict=True):
            boxes.append(box(feat).view(batch, 4 * REG_MAX, -1))
            scores.append(cls(feat).view(batch, CLASSES, -1))
            h, w = feat.shape[2:]  # Python ints: anchors are built from shapes only
            ys = torch.arange(h, device=feat.device, dtype=feat.dtype) + 0.5
            xs = torch.arange(w, device=feat.device, dtype=feat.dtype) + 0.5
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            anchors.append(torch.stack((grid_x, grid_y)).view(2, -1))
            strides.append(torch.full((1, h * w), float(stride), device=feat.device))
        # DFL: each side's distance is the expectation of a softmax over 16 bins.
        dist = torch.cat(boxes, 2).view(batch, 4, REG_MAX, -1).softmax(2)
        dist = (dist * self.bins).sum(2)  # [B, 4, A]
        anchor, stride = torch.cat(anchors, 1).unsqueeze(0), torch.cat(strides, 1).unsqueeze(0)
        lt, rb = dist.chunk(2, 1)
        xy, wh = anchor + (rb - lt) / 2, lt + rb  # centre and size, in grid units
        return torch.cat((torch.cat((xy, wh), 1) * stride, torch.cat(scores, 2).sigmoid()), 1)


class YOLOv8n(nn.Module):
    """images [B, 3, 640, 640] -> detections [B, 84, 8400] (xywh pixels, 80 class scores)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(ConvBnSilu(3, 16, 3, 2), ConvBnSilu(16, 32, 3, 2))
        self.stage2 = C2f(32, 32, 1, True)
        self.stage3 = nn.Sequential(ConvBnSilu(32, 64, 3, 2), C2f(64, 64, 2, True))  # P3
        self.stage4 = nn.Sequential(ConvBnSilu(64, 128, 3, 2), C2f(128, 128, 2, True))  # P4
        self.stage5 = nn.Sequential(
            ConvBnSilu(128, 256, 3, 2), C2f(256, 256, 1, True), SPPF(256, 256)
        )  # P5
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.top4 = C2f(384, 128, 1, False)
        self.top3 = C2f(192, 64, 1, False)
        self.down3, self.bottom4 = ConvBnSilu(64, 64, 3, 2), C2f(192, 128, 1, False)
        self.down4, self.bottom5 = ConvBnSilu(128, 128, 3, 2), C2f(384, 256, 1, False)
        self.detect = Detect((64, 128, 256))
        for module in self.modules():  # He init keeps random activations from fading out
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        p3 = self.stage3(self.stage2(self.stem(images)))
        p4 = self.stage4(p3)
        p5 = self.stage5(p4)
        n4 = self.top4(torch.cat((self.up(p5), p4), 1))
        o3 = self.top3(torch.cat((self.up(n4), p3), 1))
        o4 = self.bottom4(torch.cat((self.down3(o3), n4), 1))
        o5 = self.bottom5(torch.cat((self.down4(o4), p5), 1))
        return self.detect([o3, o4, o5])
