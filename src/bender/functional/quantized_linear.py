"""A dense layer's quantized product in one autograd Function, for eager training steps.

``y = q_in(x) q_w(W)ᵀ + b`` with a straight-through backward:
``∂x = (δ q_w(W)) ⊙ p_in(x)``, ``∂W = (δᵀ q_in(x)) ⊙ p_w(W)``, ``∂b = Σ_n δ_n``, where each
quantizer is a pair of elementwise functions, its forward ``q`` and its pseudo-gradient ``p``
(see :mod:`bender.functional.quantizers`; without an input quantizer ``q_in`` is the identity
and ``p_in = 1``). These are exactly the gradients that the quantizers' own Functions and
``F.linear`` give one after the other (Hubara et al. 2016, arXiv:1602.02830); one Function
instead of three runs one Python backward per layer instead of three, which is most of what
a small binary network's step costs over a float one. :class:`bender.GenDense` uses it in
eager mode for its exact mapping (``linear``) with elementwise quantizers; under autocast,
torch.compile and torch.func transforms it takes the general path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bender.functional.quantizers import Parts


class QuantizedLinear(torch.autograd.Function):
    """``y = q_in(x) q_w(W)ᵀ + b``; backward as in the module docstring. Eager mode only."""

    @staticmethod
    def forward(ctx, x, weight, bias, input_parts, kernel_parts) -> Tensor:  # as quantized_linear
        x_q = x if input_parts is None else input_parts[0](x)
        w_q = kernel_parts[0](weight)
        ctx.save_for_backward(x, weight, x_q, w_q)
        ctx.parts = (input_parts, kernel_parts)
        y = x_q.mm(w_q.t())
        return y if bias is None else y.add_(bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, x_q, w_q = ctx.saved_tensors
        input_parts, kernel_parts = ctx.parts
        need_x, need_w, need_b, _, _ = ctx.needs_input_grad
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = grad.mm(w_q)
            if input_parts is not None:
                grad_x = grad_x.mul_(input_parts[1](x))
        if need_w:
            grad_w = grad.t().mm(x_q).mul_(kernel_parts[1](weight))
        if need_b:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b, None, None


def quantized_linear(
    x: Tensor, weight: Tensor, bias: Tensor | None, input_parts: Parts | None, kernel_parts: Parts
) -> Tensor:
    """``q_in(x) q_w(weight)ᵀ + bias`` for ``x`` of ``N × in`` and the latent ``weight`` of
    ``out × in``, with the straight-through gradients of :class:`QuantizedLinear`."""
    return _apply(x, weight, bias, input_parts, kernel_parts)


# The C apply, without Function.apply's Python layer (see bender.functional._apply): this
# Function runs in eager mode only, where that layer has nothing to do.
_apply = super(torch.autograd.Function, QuantizedLinear).apply
