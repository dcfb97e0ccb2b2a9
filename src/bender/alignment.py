"""How close a feedback-alignment network is to backprop: angles between weights and gradients.

Feedback alignment learns because the forward weights come to point roughly the way the fixed
feedback matrices do, so the error each layer receives approaches the one backprop would send
(Lillicrap et al. 2016, arXiv:1411.0247, Fig. 2). Both measures here are angles in degrees
between tensors seen as flat vectors, ``∠(a, b) = arccos(⟨a, b⟩ / (‖a‖ ‖b‖))``: 0° is the same
direction, 90° no relation, 180° opposite.

- :func:`weight_alignment`: ``∠(W, B)`` for every layer with a feedback matrix.
- :func:`gradient_alignment`: ``∠(∂W bent, ∂W backprop)`` for every such layer, on one batch.

"Layers with a feedback matrix" are those whose mapping is registered with
``needs_feedback=True`` (``linear_asym_dx``, ``radial_asym_dx``, ``conv_linear_asym_dx`` and
custom ones) and that hold a ``feedback`` buffer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def angle(a: Tensor, b: Tensor) -> float:
    """``arccos(⟨a, b⟩ / (‖a‖ ‖b‖))`` in degrees, in float64; NaN if either tensor is zero."""
    if a.shape != b.shape:
        raise ValueError(
            f"angle needs two tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    a, b = a.detach().flatten().double(), b.detach().flatten().double()
    norms = (a.norm() * b.norm()).item()
    if norms == 0.0:
        return math.nan
    cosine = min(1.0, max(-1.0, (a @ b).item() / norms))
    return math.degrees(math.acos(cosine))


def feedback_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The submodules (by name) whose mapping uses a fixed feedback matrix in place of ``W``."""
    layers = {
        name: module
        for name, module in model.named_modules()
        if getattr(getattr(module, "mapping", None), "needs_feedback", False)
        and getattr(module, "feedback", None) is not None
    }
    if not layers:
        raise ValueError(
            "no layer of this model uses a feedback matrix: expected GenDense/GenConv layers "
            "with a feedback mapping such as linear_asym_dx and feedback=True, got "
            f"{type(model).__name__} without any"
        )
    return layers


def weight_alignment(model: nn.Module) -> dict[str, float]:
    """``∠(W, B)`` in degrees for each layer with a feedback matrix, keyed by layer name.

    About 90° at initialisation (two independent random matrices); below 90° once the weights
    have aligned with their feedback.
    """
    return {name: angle(m.weight, m.feedback) for name, m in feedback_layers(model).items()}


@contextmanager
def exact_feedback(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every feedback matrix is replaced by (a detached copy of) its ``W``.

    The bent rules then compute backprop's gradient: ``∂x = δ W`` instead of ``δ B`` (and, for
    ``radial_asym_dx``, the ``−‖W‖²`` term's exact gradient). The matrices ``B`` come back when
    the block ends, also after an error.
    """
    layers = feedback_layers(model)
    saved = {name: m.feedback for name, m in layers.items()}
    try:
        for m in layers.values():
            m.register_buffer("feedback", m.weight.detach())
        yield model
    finally:
        for name, m in layers.items():
            m.register_buffer("feedback", saved[name])


def gradient_alignment(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    loss: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
) -> dict[str, float]:
    """``∠(∂W with the model's rule, ∂W with backprop)`` in degrees, on the batch ``(x, target)``.

    Keyed by layer name, for each layer with a feedback matrix. The network's last layer gets the
    true error, so its angle is 0; the layers below show how far the bent error is from the
    true one. Two forward and backward passes; the parameters' ``.grad`` are left untouched.
    With dropout or other randomness, call it in eval mode so both passes see the same network.
    """
    layers = feedback_layers(model)
    weights = [m.weight for m in layers.values()]
    bent = torch.autograd.grad(loss(model(x), target), weights)
    with exact_feedback(model):
        exact = torch.autograd.grad(loss(model(x), target), weights)
    return {name: angle(b, e) for name, b, e in zip(layers, bent, exact, strict=True)}
