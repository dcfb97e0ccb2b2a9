"""Constraints on weights, applied after every optimizer step: ``train(..., after_step=[...])``.

A constraint is any callable ``constraint(model)``; :func:`bender.training.train` calls it
under ``torch.no_grad()`` after each ``optimizer.step()``.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from bender.functional._checks import check_positive_number


def binary_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The submodules (by name) whose forward pass uses 1-bit weights: a mapping registered
    with ``binary_weights=True`` (``linear_binary_weights``, ...), or a 1-bit kernel quantizer
    (``kernel_quantizer="ste_sign"``, ...)."""
    return {
        name: module
        for name, module in model.named_modules()
        if getattr(getattr(module, "mapping", None), "binary_weights", False)
        or getattr(getattr(module, "kernel_quantizer", None), "bits", None) == 1
    }


def kernel_quantized_binary_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The binary layers (see :func:`binary_layers`) whose 1-bit weights come from a kernel
    quantizer: their latent weight is ``layer.latent_weight()``."""
    return {
        name: layer
        for name, layer in binary_layers(model).items()
        if getattr(layer, "kernel_quantizer", None) is not None
    }


class ClipBinaryWeights:
    """Clamp the latent weights of every binary layer to ``[−bound, bound]``.

    BinaryConnect (Courbariaux, Bengio, David 2015, arXiv:1511.00363, Sec. 2.4) clips the real
    weights behind ``sign(W)`` after each update: ``sign`` ignores ``|W|``, so without a bound
    a weight can grow far past 0, where updates no longer change its sign and it stops
    learning; with the bound a few updates the other way can always flip it. Larq's
    ``weight_clip`` constraint, with the same default bound 1. Pass it to
    ``train(..., after_step=[ClipBinaryWeights()])``.

    A pruned layer's ``weight_orig`` is clamped (the mask keeps zeros at zero), and a layer with
    a 1-bit kernel quantizer has its latent weight clamped; a binary layer whose weight is
    parametrized otherwise is refused, since clamping the parametrization's inputs would not
    bound the weight it computes. The latent weights are found at the first call for a model and
    kept, as an optimizer keeps the parameters it is given (this runs after every step).
    """

    def __init__(self, bound: float = 1.0) -> None:
        self.bound = check_positive_number("bound", bound)
        self._model: weakref.ref | None = None
        self._latents: list[Tensor] = []

    def __call__(self, model: nn.Module) -> None:
        if self._model is None or self._model() is not model:
            self._latents = self.latent_weights(model)
            self._model = weakref.ref(model)
        with torch.no_grad():
            for latent in self._latents:
                latent.clamp_(-self.bound, self.bound)

    @staticmethod
    def latent_weights(model: nn.Module) -> list[Tensor]:
        """The latent weights of ``model``'s binary layers; a ``ValueError`` when it has none,
        or when a binary layer's weight is parametrized otherwise than by a kernel quantizer."""
        layers = binary_layers(model)
        if not layers:
            raise ValueError(
                f"ClipBinaryWeights clips the latent weights of binary layers, but no layer of "
                f"this {type(model).__name__} uses binary weights (a mapping such as "
                "linear_binary_weights or conv_binary_weights)"
            )
        for name, layer in layers.items():
            quantized = getattr(layer, "kernel_quantizer", None) is not None
            if not quantized and parametrize.is_parametrized(layer, "weight"):
                raise ValueError(
                    f"layer {name or type(layer).__name__} has a parametrized weight; "
                    "ClipBinaryWeights cannot bound what a parametrization computes"
                )
        latents = []
        for layer in layers.values():
            if getattr(layer, "kernel_quantizer", None) is not None:
                latent = layer.latent_weight()  # what the kernel quantizer quantizes
            else:
                latent = layer._parameters.get("weight")
                if latent is None:  # pruned: the parameter is weight_orig
                    latent = layer._parameters["weight_orig"]
            latents.append(latent)
        return latents

    def __repr__(self) -> str:
        return f"ClipBinaryWeights(bound={self.bound:g})"
