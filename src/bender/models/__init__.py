"""The model zoo: networks by name, built for a dataset's image shape and class count.

``build_model(name, in_channels=1, image_size=(28, 28), num_classes=10)`` gives plain PyTorch
modules (``nn.Linear``, ``nn.Conv2d``, ``nn.MultiheadAttention``), which
:func:`bender.rules.apply_rule` then bends. Names: those of :data:`MODELS`; any torchvision
classification model as ``torchvision:NAME`` (``torchvision:resnet18``; needs torchvision);
and a builder of your own as ``package.module:function``, called as
``function(in_channels=..., image_size=(h, w), num_classes=...)`` and returning an
``nn.Module``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import Tensor, nn

from bender.models.conv import cnn, lenet5
from bender.models.mlp import mlp
from bender.models.resnet import CifarResNet, cifar_resnet
from bender.models.transformer import VisionTransformer

Builder = Callable[..., nn.Module]  # (in_channels, image_size, num_classes) -> model


@dataclass(frozen=True)
class ModelSpec:
    """A named network: how to build it, what it is, and the image size it needs
    (``None``: any; MNIST-family images are padded to 32×32 for a model that needs it)."""

    name: str
    summary: str
    build: Builder
    image_size: tuple[int, int] | None = None


def _mlp(hidden: tuple[int, ...]) -> Builder:
    def build(in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
        return mlp(in_channels * image_size[0] * image_size[1], hidden, num_classes)

    return build


def _resnet(depth: int) -> Builder:
    def build(in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
        return cifar_resnet(depth, in_channels, num_classes)

    return build


def _rows(in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    return VisionTransformer(
        in_channels, image_size, num_classes, patch=(1, image_size[1]), depth=2
    )


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec("mlp", "MLP 128-64, relu (the Bender.jl tutorials' net)", _mlp((128, 64))),
        ModelSpec("mlp-large", "MLP 512-256, relu", _mlp((512, 256))),
        ModelSpec("cnn", "CNN conv16-conv32 (5×5, max-pooling)-dense, relu", cnn),
        ModelSpec("lenet5", "LeNet-5: conv6-conv16 (5×5)-120-84, relu, 32×32", lenet5, (32, 32)),
        *(
            ModelSpec(
                f"resnet{d}",
                f"CIFAR ResNet-{d}: 16/32/64 channels, {(d - 2) // 6} blocks a stage "
                "(He et al. 2016)",
                _resnet(d),
            )
            for d in (20, 32, 44, 56)
        ),
        ModelSpec(
            "vit",
            "vision transformer: 4×4 patches, dim 64, 4 pre-norm layers, 4 heads",
            partial(VisionTransformer, patch=(4, 4)),
        ),
        ModelSpec(
            "transformer",
            "transformer over image rows (a row a token), dim 64, 2 layers, 4 heads",
            _rows,
        ),
    ]
}


class RepeatChannels(nn.Module):
    """Grey images as ``channels`` equal colour channels, for models made for RGB."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        return x.expand(-1, self.channels, *x.shape[2:])

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


def _torchvision(name: str, in_channels: int, num_classes: int) -> nn.Module:
    try:
        from torchvision import models
    except ImportError:
        raise ValueError(
            f"torchvision:{name} needs torchvision: pip install 'bender-torch[vision]'"
        ) from None
    except RuntimeError as err:  # a torchvision built for another torch
        raise ValueError(f"torchvision:{name}: torchvision does not load here ({err})") from None
    classification = models.list_models(module=models)
    if name not in classification:
        raise ValueError(
            f"torchvision has no classification model {name!r}; it has {', '.join(classification)}"
        )
    model = models.get_model(name, weights=None, num_classes=num_classes)
    if in_channels == 1:
        return nn.Sequential(RepeatChannels(3), model)
    if in_channels != 3:
        raise ValueError(f"torchvision:{name} takes 3-channel images, got {in_channels}")
    return model


def _imported(path: str) -> Builder:
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"model {path!r}: cannot import {module_name} ({err})") from None
    build = getattr(module, attribute, None)
    if not callable(build):
        raise ValueError(f"model {path!r}: {module_name} has no function {attribute!r}")
    return build


def model_image_size(name: str) -> tuple[int, int] | None:
    """The image size the named zoo model needs, or ``None`` (any, or not a zoo name)."""
    spec = MODELS.get(name)
    return None if spec is None else spec.image_size


def build_model(
    name: str,
    *,
    in_channels: int = 1,
    image_size: tuple[int, int] = (28, 28),
    num_classes: int = 10,
) -> nn.Module:
    """The model called ``name`` (see the module docstring), for images of ``in_channels`` ×
    ``image_size`` and ``num_classes`` classes; a ``ValueError`` listing the names otherwise."""
    check_model_name(name)
    if name.startswith("torchvision:"):
        return _torchvision(name.removeprefix("torchvision:"), in_channels, num_classes)
    if name in MODELS:
        spec = MODELS[name]
        if spec.image_size is not None and tuple(image_size) != spec.image_size:
            height, width = spec.image_size
            raise ValueError(
                f"{name} takes {height}×{width} images, got {image_size[0]}×{image_size[1]}"
            )
        return spec.build(in_channels, tuple(image_size), num_classes)
    model = _imported(name)(  # package.module:function
        in_channels=in_channels, image_size=tuple(image_size), num_classes=num_classes
    )
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {name!r} returned {type(model).__name__}, not an nn.Module")
    return model


def check_model_name(name: str) -> None:
    """Raise unless ``name`` has the form of a model name: a zoo name, ``torchvision:NAME`` or
    ``package.module:function`` (whether those exist shows when the model is built)."""
    if not isinstance(name, str):
        raise TypeError(f"a model name must be a string, got {type(name).__name__}")
    if name not in MODELS and ":" not in name:
        raise ValueError(
            f"unknown model {name!r}; choose one of {', '.join(MODELS)}, torchvision:NAME "
            "(a torchvision classification model) or package.module:function (your own builder)"
        )


__all__ = [
    "MODELS",
    "CifarResNet",
    "ModelSpec",
    "VisionTransformer",
    "build_model",
    "check_model_name",
    "cifar_resnet",
    "cnn",
    "lenet5",
    "mlp",
    "model_image_size",
]
