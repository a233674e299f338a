"""The built-in model zoo: six small ONNX graphs whose character mirrors the models used
in interference-prediction studies (ResNet-50, YOLOv8n, RoBERTa-base, ViT-B/16, VGG-19,
ConvNeXt-B), scaled down so one CPU thread runs a batch of 1 in milliseconds.

Each builder is self-contained (its structure lives in its own body, shared blocks in
`layers`), because the cache key is the source of the builder plus the layers module:
editing a builder rebuilds exactly that model. Weights are seeded random, so every build
yields the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto

from predlat.models.layers import GraphBuilder


def resnet() -> onnx.ModelProto:
    """ResNet-50 character: bottleneck blocks [3, 4, 6, 3], dense 1x1/3x3 convolutions
    (compute-bound), residual adds; 5/8 width, 224x224 input."""
    g = GraphBuilder(seed=50)
    x = g.input("images", [3, 224, 224])
    h = g.maxpool(g.relu(g.conv(x, 3, 40, 7, stride=2)), 3, 2, pad=1)  # 40 x 56 x 56

    def bottleneck(h: str, c_in: int, mid: int, stride: int) -> str:
        y = g.relu(g.conv(h, c_in, mid, 1))
        y = g.relu(g.conv(y, mid, mid, 3, stride=stride))
        y = g.conv(y, mid, 4 * mid, 1, gain=0.2)  # small last conv keeps the sum bounded
        skip = h if stride == 1 and c_in == 4 * mid else g.conv(h, c_in, 4 * mid, 1, stride)
        return g.relu(g.add(y, skip))

    c = 40
    for stage, (blocks, mid) in enumerate(zip((3, 4, 6, 3), (20, 40, 80, 160), strict=True)):
        for block in range(blocks):
            h = bottleneck(h, c, mid, 2 if block == 0 and stage > 0 else 1)
            c = 4 * mid
    logits = g.linear(g.flatten(g.global_avg_pool(h)), c, 1000)
    return g.build("resnet", ["images"], [g.named(logits, "logits")])


def yolo() -> onnx.ModelProto:
    """YOLOv8n character: Conv+SiLU, C2f split/concat blocks, SPPF max-pools, an
    upsample+concat neck and a detection head (DFL boxes + sigmoid classes) giving
    [batch, 84, anchors]; 160x160 input."""
    g = GraphBuilder(seed=8)
    x = g.input("images", [3, 160, 160])

    def conv(h: str, c_in: int, c_out: int, k: int = 1, s: int = 1) -> str:
        return g.silu(g.conv(h, c_in, c_out, k, stride=s))

    def c2f(h: str, c_in: int, c_out: int, n: int, shortcut: bool) -> str:
        half = c_out // 2
        ys = g.split(conv(h, c_in, 2 * half), [half, half], axis=1)
        for _ in range(n):
            y = conv(conv(ys[-1], half, half, 3), half, half, 3)
            ys.append(g.add(ys[-1], y) if shortcut else y)
        return conv(g.concat(ys, axis=1), (2 + n) * half, c_out)

    def sppf(h: str, c: int) -> str:
        ys = [conv(h, c, c // 2)]
        for _ in range(3):
            ys.append(g.maxpool(ys[-1], 5, 1, pad=2))
        return conv(g.concat(ys, axis=1), 2 * c, c)

    # Backbone: strides 2..32; P3, P4, P5 feed the neck.
    h = conv(conv(x, 3, 16, 3, 2), 16, 32, 3, 2)
    h = c2f(h, 32, 32, 1, True)
    p3 = c2f(conv(h, 32, 64, 3, 2), 64, 64, 2, True)  # 20 x 20
    p4 = c2f(conv(p3, 64, 128, 3, 2), 128, 128, 2, True)  # 10 x 10
    p5 = sppf(c2f(conv(p4, 128, 256, 3, 2), 256, 256, 1, True), 256)  # 5 x 5
    # Neck: top-down then bottom-up path aggregation.
    n4 = c2f(g.concat([g.upsample(p5), p4], axis=1), 384, 128, 1, False)
    o3 = c2f(g.concat([g.upsample(n4), p3], axis=1), 192, 64, 1, False)
    o4 = c2f(g.concat([conv(o3, 64, 64, 3, 2), n4], axis=1), 192, 128, 1, False)
    o5 = c2f(g.concat([conv(o4, 128, 128, 3, 2), p5], axis=1), 384, 256, 1, False)

    reg_max, classes = 16, 80
    bins = g.const(np.arange(reg_max, dtype=np.float32).reshape(1, 1, reg_max, 1))
    boxes, scores = [], []
    for feat, c in ((o3, 64), (o4, 128), (o5, 256)):
        box = g.conv(conv(conv(feat, c, 64, 3), 64, 64, 3), 64, 4 * reg_max, 1, gain=1.0)
        cls = g.conv(conv(conv(feat, c, 80, 3), 80, 80, 3), 80, classes, 1, gain=1.0)
        # Distribution focal loss decoding: expected bin of a softmax over 16 bins.
        dist = g.softmax(g.reshape(box, [0, 4, reg_max, -1]), axis=2)
        boxes.append(g.op("ReduceSum", [g.mul(dist, bins), g.const([2], np.int64)], keepdims=0))
        scores.append(g.sigmoid(g.reshape(cls, [0, classes, -1])))
    out = g.concat([g.concat(boxes, axis=2), g.concat(scores, axis=2)], axis=1)
    return g.build("yolo", ["images"], [g.named(out, "detections")])


def roberta() -> onnx.ModelProto:
    """RoBERTa-base character: int64 token ids and attention mask, a large token
    embedding table (30k x 256, memory-heavy Gather), post-norm encoder layers with
    masked attention and a GELU MLP, a pooled classification head; sequence 32, so
    streaming the layer weights weighs as much as the arithmetic."""
    vocab, seq, dim, heads, hidden, depth = 30_000, 32, 256, 4, 1024, 4
    g = GraphBuilder(seed=125)
    ids = g.input("input_ids", [seq], TensorProto.INT64)
    mask = g.input("attention_mask", [seq], TensorProto.INT64)
    positions = g.param((1, seq, dim), 0.02)
    h = g.layer_norm(g.add(g.embedding(ids, vocab, dim), positions), dim)
    additive = g.additive_mask(mask)
    for _ in range(depth):
        h = g.encoder_layer(h, dim, heads, hidden, additive, pre_norm=False)
    pooled = g.tanh(g.linear(g.take(h, 0, axis=1), dim, dim))  # first (<s>) token
    logits = g.linear(pooled, dim, 2)
    return g.build("roberta", ["input_ids", "attention_mask"], [g.named(logits, "logits")])


def vit() -> onnx.ModelProto:
    """ViT-B/16 character: a stride-16 patch-embedding convolution, many tokens (196)
    so attention matters, pre-norm encoder layers, mean-pooled head; 224x224 input."""
    dim, heads, hidden, depth, patch, side = 192, 3, 768, 6, 16, 224
    tokens = (side // patch) ** 2
    g = GraphBuilder(seed=16)
    x = g.input("images", [3, side, side])
    patches = g.conv(x, 3, dim, patch, stride=patch, pad=0, gain=1.0)  # [B, D, 14, 14]
    h = g.transpose(g.reshape(patches, [0, dim, -1]), [0, 2, 1])  # [B, 196, D]
    h = g.add(h, g.param((1, tokens, dim), 0.02))
    for _ in range(depth):
        h = g.encoder_layer(h, dim, heads, hidden, pre_norm=True)
    pooled = g.reduce_mean(g.layer_norm(h, dim), [1])
    logits = g.linear(pooled, dim, 1000)
    return g.build("vit", ["images"], [g.named(logits, "logits")])


def vgg() -> onnx.ModelProto:
    """VGG-19 character: stacks of 3x3 convolutions (2, 2, 4, 4, 4) with max-pools
    (compute-bound), then big fully-connected layers whose ~30 MB of weights are
    read on every batch (memory-bound); 64x64 input."""
    g = GraphBuilder(seed=19)
    h = g.input("images", [3, 64, 64])
    c = 3
    for convs, width in zip((2, 2, 4, 4, 4), (64, 128, 192, 192, 192), strict=True):
        for _ in range(convs):
            h = g.relu(g.conv(h, c, width, 3))
            c = width
        h = g.maxpool(h, 2, 2)
    h = g.flatten(h)  # 192 x 2 x 2
    h = g.relu(g.linear(h, c * 4, 2048, gain=2.0))
    h = g.relu(g.linear(h, 2048, 1024, gain=2.0))
    logits = g.linear(h, 1024, 1000)
    return g.build("vgg", ["images"], [g.named(logits, "logits")])


def convnext() -> onnx.ModelProto:
    """ConvNeXt-B character: 4x4 stride-4 patchify stem, depthwise 7x7 convolutions
    (group = channels, memory-bound), LayerNorm over channels, inverted-bottleneck
    pointwise MLP with GELU in channels-last layout; depths [2, 2, 6, 2], 160x160 input."""
    dims, depths = (32, 64, 128, 256), (2, 2, 6, 2)
    g = GraphBuilder(seed=22)
    x = g.input("images", [3, 160, 160])

    def channel_norm(h: str, c: int) -> str:  # LayerNorm over C of an NCHW tensor
        return g.transpose(g.layer_norm(g.transpose(h, [0, 2, 3, 1]), c), [0, 3, 1, 2])

    def block(h: str, c: int) -> str:
        y = g.conv(h, c, c, 7, groups=c, gain=1.0)
        y = g.layer_norm(g.transpose(y, [0, 2, 3, 1]), c)  # NHWC
        y = g.linear(g.gelu(g.linear(y, c, 4 * c, gain=2.0)), 4 * c, c)
        y = g.mul(y, g.const(np.full(c, 0.1, dtype=np.float32)))  # layer scale
        return g.add(h, g.transpose(y, [0, 3, 1, 2]))

    h = channel_norm(g.conv(x, 3, dims[0], 4, stride=4, pad=0, gain=1.0), dims[0])
    for stage, (c, depth) in enumerate(zip(dims, depths, strict=True)):
        if stage > 0:
            h = g.conv(channel_norm(h, dims[stage - 1]), dims[stage - 1], c, 2, 2, 0, gain=1.0)
        for _ in range(depth):
            h = block(h, c)
    pooled = g.layer_norm(g.flatten(g.global_avg_pool(h)), dims[-1])
    logits = g.linear(pooled, dims[-1], 1000)
    return g.build("convnext", ["images"], [g.named(logits, "logits")])


def tiny() -> onnx.ModelProto:
    """A very small MLP ([batch, 16] -> [batch, 4]) for fast server tests; not in the
    default zoo set."""
    g = GraphBuilder(seed=1)
    x = g.input("x", [16])
    y = g.linear(g.relu(g.linear(x, 16, 32, gain=2.0)), 32, 4)
    return g.build("tiny", ["x"], [g.named(y, "y")])


BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "resnet": resnet,
    "yolo": yolo,
    "roberta": roberta,
    "vit": vit,
    "vgg": vgg,
    "convnext": convnext,
    "tiny": tiny,
}

# The default model set (everything but `tiny`), in a fixed order.
ZOO_NAMES: tuple[str, ...] = ("resnet", "yolo", "roberta", "vit", "vgg", "convnext")
