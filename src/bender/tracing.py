"""Looking inside a model: every layer's output in one pass (Flux's ``activations``)."""

from __future__ import annotations

from torch import Tensor, nn


def activations(model: nn.Sequential, x: Tensor) -> list[Tensor]:
    """Return ``[h₁, …, h_L]`` with ``h_i = layer_i(h_{i−1})`` and ``h₀ = x``.

    The list holds every child's output of the ``nn.Sequential``, the last being the model's
    output; the tensors stay in the autograd graph, so a loss on them can be differentiated.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"activations needs an nn.Sequential, got {type(model).__name__}")
    outputs = []
    for layer in model:
        x = layer(x)
        outputs.append(x)
    return outputs
