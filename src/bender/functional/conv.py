"""N-d convolution (1-, 2- or 3-d) whose input gradient uses a feedback kernel.

Forward is ``torch.nn.functional.conv{1,2,3}d(x, W, b, stride, padding, dilation, groups)``.
Backward: ``∂x`` is the transposed convolution of ``δ`` with the feedback kernel ``F`` (with
``F = None`` the input is detached: no input gradient), ``∂W`` and ``∂b`` are exact, ``F`` never
gets a gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import grad as conv_grad

from bender.functional._apply import direct_apply
from bender.functional._checks import check_same_shape
from bender.functional._precision import in_grad_dtype

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_INPUT = {1: conv_grad.conv1d_input, 2: conv_grad.conv2d_input, 3: conv_grad.conv3d_input}
_CONV_WEIGHT = {1: conv_grad.conv1d_weight, 2: conv_grad.conv2d_weight, 3: conv_grad.conv3d_weight}

IntOrTuple = int | Sequence[int]


def conv_dims(weight: Tensor) -> int:
    """Number of spatial dims of a kernel ``out × in/groups × k₁ × … × k_d``; must be 1 to 3."""
    dims = weight.dim() - 2
    if dims not in _CONV:
        raise ValueError(
            f"convolution kernels must have 1 to 3 spatial dims (3 to 5 dims in all), "
            f"got a kernel of shape {tuple(weight.shape)}"
        )
    return dims


def conv(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
) -> Tensor:
    """Plain convolution with the exact gradient, dispatched on the kernel's dimensionality."""
    return _CONV[conv_dims(weight)](x, weight, bias, stride, padding, dilation, groups)


class BentConv(torch.autograd.Function):
    """Convolution whose input gradient is computed with ``feedback`` in place of ``W``.

    (Blocking ``∂x`` needs no custom backward: see :func:`bent_conv`.)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, feedback, bias, stride, padding, dilation, groups) -> Tensor:
        return _CONV[conv_dims(weight)](x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: Tensor) -> None:
        x, weight, feedback, bias, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(x, weight, feedback)
        ctx.conf = (conv_dims(weight), stride, padding, dilation, groups)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, feedback = ctx.saved_tensors
        x, feedback = in_grad_dtype(grad, x, feedback)
        dims, stride, padding, dilation, groups = ctx.conf
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _CONV_INPUT[dims](x.shape, feedback, grad, stride, padding, dilation, groups)
        if ctx.needs_input_grad[1]:
            grad_w = _CONV_WEIGHT[dims](x, weight.shape, grad, stride, padding, dilation, groups)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_b = grad.sum([d for d in range(grad.dim()) if d != 1])
        return grad_x, grad_w, None, grad_b, None, None, None, None


_bent_conv_apply = direct_apply(BentConv)


def bent_conv(
    x: Tensor,
    weight: Tensor,
    feedback: Tensor | None,
    bias: Tensor | None = None,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
) -> Tensor:
    """Checked entry point of :class:`BentConv`; ``x`` is batched: ``N × C × spatial…``."""
    dims = conv_dims(weight)
    if x.dim() != dims + 2:
        raise ValueError(
            f"a {dims}-d convolution expects a batched input of {dims + 2} dims "
            f"(N, C, then {dims} spatial), got {tuple(x.shape)}"
        )
    if feedback is None:  # blocked: no ∂x; autograd's own exact ∂W, ∂b on a detached input
        return _CONV[dims](x.detach(), weight, bias, stride, padding, dilation, groups)
    if feedback is not weight:
        check_same_shape("feedback kernel B", feedback, "the kernel W", weight)
    if feedback is weight or not (x.requires_grad and torch.is_grad_enabled()):
        # the exact rule, or no ∂x to compute (so the feedback kernel changes nothing)
        return _CONV[dims](x, weight, bias, stride, padding, dilation, groups)
    return _bent_conv_apply(x, weight, feedback, bias, stride, padding, dilation, groups)


def conv_asym_dx(
    x: Tensor,
    weight: Tensor,
    feedback: Tensor,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
) -> Tensor:
    """Convolution with feedback alignment for kernels.

    Forward: ``conv(x, W)``. Backward: ``∂x = conv_transpose(δ, B)`` with the fixed feedback
    kernel ``B`` (shape of ``W``) instead of ``W``; ``∂W`` exact; nothing for ``B``.
    """
    if feedback is None:
        raise ValueError("conv_asym_dx needs a feedback kernel B of the kernel's shape, got None")
    return bent_conv(x, weight, feedback, None, stride, padding, dilation, groups)


def conv_blocked_dx(
    x: Tensor,
    weight: Tensor,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
) -> Tensor:
    """Convolution whose input gets no gradient; ``∂W`` exact (direct feedback alignment)."""
    return bent_conv(x, weight, None, None, stride, padding, dilation, groups)
