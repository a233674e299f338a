"""The paper's six models at full size, built in torch with seeded random weights.

ResNet-50, VGG-19, ConvNeXt-B and ViT-B/16 come from torchvision (`weights=None`, so
nothing is downloaded), RoBERTa-base from transformers (`RobertaConfig()` defaults,
eager attention), YOLOv8n from `torch_yolo` (plain torch). torchvision and transformers
are optional: naming a model that needs one which does not import gives an error saying
what to install. Each model runs only on the torch device; its ModelSpec is declared here,
so no model is built just to learn its signature.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from predlat.errors import PredlatError
from predlat.models.spec import TORCH, ModelSpec, TensorSpec

SEED = 0
SEQ_LEN = 128  # RoBERTa tokens per request
_F32, _I64 = np.dtype(np.float32), np.dtype(np.int64)


def _images(side: int) -> tuple[TensorSpec, ...]:
    return (TensorSpec("images", _F32, (None, 3, side, side)),)


def _logits() -> tuple[TensorSpec, ...]:
    return (TensorSpec("logits", _F32, (None, 1000)),)


@dataclass(frozen=True)
class FullSizeModel:
    name: str
    needs: str | None  # the optional package its definition comes from
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    build: Callable[[], Any]  # an nn.Module: forward(*inputs) -> tuple of outputs


def _vision(factory: str) -> Callable[[], Any]:
    def build() -> Any:
        import torchvision

        model = getattr(torchvision.models, factory)(weights=None)
        if factory == "vit_b_16":  # torchvision zero-initialises ViT's head: outputs all 0
            import torch

            torch.nn.init.normal_(model.heads.head.weight, std=0.02)
            torch.nn.init.normal_(model.heads.head.bias, std=0.02)
        from predlat.models.torch_load import Tupled

        return Tupled(model)

    return build


def _roberta() -> Any:
    from transformers import RobertaConfig, RobertaModel

    from predlat.models.torch_load import RobertaPooled

    # Eager attention: the SDPA path reads `torch.all(mask == 1)` back to the host.
    config = RobertaConfig(attn_implementation="eager")
    return RobertaPooled(RobertaModel(config, add_pooling_layer=True))


def _yolov8n() -> Any:
    from predlat.models.torch_load import Tupled
    from predlat.models.torch_yolo import YOLOv8n

    return Tupled(YOLOv8n())


FULL_SIZE: dict[str, FullSizeModel] = {
    m.name: m
    for m in (
        FullSizeModel("resnet50", "torchvision", _images(224), _logits(), _vision("resnet50")),
        FullSizeModel(
            "yolov8n",
            None,
            _images(640),
            (TensorSpec("detections", _F32, (None, 84, 8400)),),
            _yolov8n,
        ),
        FullSizeModel(
            "roberta_base",
            "transformers",
            (
                TensorSpec("input_ids", _I64, (None, SEQ_LEN)),
                TensorSpec("attention_mask", _I64, (None, SEQ_LEN)),
            ),
            (TensorSpec("pooled", _F32, (None, 768)),),
            _roberta,
        ),
        FullSizeModel("vit_b_16", "torchvision", _images(224), _logits(), _vision("vit_b_16")),
        FullSizeModel("vgg19", "torchvision", _images(224), _logits(), _vision("vgg19")),
        FullSizeModel(
            "convnext_base", "torchvision", _images(224), _logits(), _vision("convnext_base")
        ),
    )
}

# The paper's model set at full size, in the zoo's order (resnet, yolo, roberta, vit, ...).
FULL_SIZE_NAMES: tuple[str, ...] = tuple(FULL_SIZE)


def require(name: str) -> FullSizeModel:
    """The full-size model `name`, checking that what it is built from imports."""
    model = FULL_SIZE[name]
    for package in ("torch", model.needs):
        if package is None:
            continue
        try:
            importlib.import_module(package)
        except Exception as exc:  # a broken install fails with more than ImportError
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            matching = " built for the installed torch" if package == "torchvision" else ""
            raise PredlatError(
                f"model '{name}' needs {package}, which does not import here ({reason}); "
                f"install predlat's 'vision' extra (pip install 'predlat[vision]'), or "
                f"{package}{matching}"
            ) from None
    return model


def _digest(model: FullSizeModel) -> str:
    """Hash of the code and library versions that define the model."""
    import torch

    text = inspect.getsource(inspect.getmodule(_digest)) + torch.__version__  # type: ignore[arg-type]
    if model.name == "yolov8n":
        from predlat.models import torch_yolo

        text += inspect.getsource(torch_yolo)
    if model.needs:
        text += getattr(importlib.import_module(model.needs), "__version__", "")
    return hashlib.sha256(text.encode()).hexdigest()


def full_size_spec(name: str) -> ModelSpec:
    model = require(name)
    return ModelSpec(name, None, model.inputs, model.outputs, _digest(model), format=TORCH)


def build(name: str) -> Any:
    """The model with weights drawn from a fixed seed (the global RNG is left as it was)."""
    import torch

    model = require(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        module = model.build()
    return module.float().eval()
