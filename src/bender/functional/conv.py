"""N-d convolution (1-, 2- or 3-d) whose input gradient uses a feedback kernel.

Forward is ``torch.nn.functional.conv{1,2,3}d(x, W, b, stride, padding, dilation, groups)``.
Backward: ``∂x`` is the transposed convolution of ``δ`` with the feedback kernel ``F`` (with
``F = None`` the input is detached: no input gradient), ``∂W`` and ``∂b`` are exact. ``F`` gets
no gradient, except in Kolen–Pollack learning (:func:`conv_kp_dx`), where ``∂F = ∂W``.
``padding`` is an int, one int per spatial dim, ``"valid"`` or ``"same"`` (stride 1; for an
even kernel the extra row goes after, as in PyTorch), as in ``F.conv2d``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from bender.functional._apply import direct_apply
from bender.functional._checks import check_same_shape
from bender.functional._precision import in_grad_dtype

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

IntOrTuple = int | Sequence[int]
Padding = str | IntOrTuple  # also "valid" (none) or "same" (the output keeps the input's size)


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
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
) -> Tensor:
    """Plain convolution with the exact gradient, dispatched on the kernel's dimensionality."""
    return _CONV[conv_dims(weight)](x, weight, bias, stride, padding, dilation, groups)


def named_padding(
    padding: str, kernel_size: Sequence[int], stride: Sequence[int], dilation: Sequence[int]
) -> tuple[tuple[int, int], ...]:
    """``(before, after)`` zero-padding widths per spatial dim for ``"valid"`` or ``"same"``.

    ``"valid"`` pads nothing. ``"same"`` (stride 1 only) keeps the size: ``dilation·(k − 1)`` in
    all, and where that is odd the extra one goes after, as PyTorch's ``padding="same"`` does.
    """
    dims = len(kernel_size)
    if padding == "valid":
        return ((0, 0),) * dims
    if padding != "same":
        raise ValueError(
            f"padding must be 'valid', 'same', an int or a tuple of {dims} ints ≥ 0, "
            f"got {padding!r}"
        )
    if any(s != 1 for s in stride):
        raise ValueError(f"padding='same' needs stride 1, got stride {tuple(stride)}")
    totals = [d * (k - 1) for d, k in zip(dilation, kernel_size, strict=True)]
    return tuple((t // 2, t - t // 2) for t in totals)


def pad_input(x: Tensor, widths: Sequence[tuple[int, int]], mode: str = "constant") -> Tensor:
    """``x`` padded by ``(before, after)`` widths per spatial dim (zeros, or ``F.pad``'s
    ``mode``); ``F.pad`` itself takes the last dim's widths first."""
    return F.pad(x, [w for pair in reversed(widths) for w in pair], mode=mode)


def _per_dim(value: IntOrTuple, dims: int) -> list[int]:
    return [value] * dims if isinstance(value, int) else list(value)


class BentConv(torch.autograd.Function):
    """Convolution whose input gradient is computed with ``feedback`` in place of ``W``.

    ``stride``, ``padding`` and ``dilation`` are lists of one int per spatial dim. The backward
    is one call of ATen's ``convolution_backward`` given ``feedback`` as the kernel: its ``∂x``
    then uses ``B``, while its ``∂W`` and ``∂b`` depend only on ``x`` and ``δ``, so they are
    exact. (Blocking ``∂x`` needs no custom backward: see :func:`bent_conv`.)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, feedback, bias, stride, padding, dilation, groups) -> Tensor:
        return _CONV[conv_dims(weight)](x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: Tensor) -> None:
        x, weight, feedback, bias, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(x, feedback)  # not W: neither ∂x nor ∂W reads it
        ctx.conf = (conv_dims(weight), stride, padding, dilation, groups)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad: Tensor):
        needs = ctx.needs_input_grad
        grad_x, grad_w, grad_b = _grads(ctx, grad, needs[0], needs[1], needs[3])
        return grad_x, grad_w, None, grad_b, None, None, None, None


def _grads(ctx, grad: Tensor, need_x: bool, need_w: bool, need_b: bool) -> tuple:
    """``(∂x through the feedback kernel, ∂W, ∂b)``, each only where needed (else ``None``)."""
    x, feedback = ctx.saved_tensors
    x, feedback = in_grad_dtype(grad, x, feedback)
    dims, stride, padding, dilation, groups = ctx.conf
    return torch.ops.aten.convolution_backward(
        grad,
        x,
        feedback,  # the kernel ∂x is computed with; ∂W and ∂b do not read it
        [grad.shape[1]] if ctx.has_bias else None,  # the bias: one per output channel
        stride,
        padding,
        dilation,
        False,  # not transposed
        [0] * dims,  # output padding
        groups,
        [need_x, need_w, ctx.has_bias and need_b],
    )


class KolenPollackConv(BentConv):
    """Convolution with feedback alignment whose feedback kernel learns as ``W`` does.

    Backward: ``∂x`` is the transposed convolution of ``δ`` with ``B``; ``∂W`` and ``∂b`` are
    exact, and ``∂B = ∂W``, so an optimizer with weight decay makes ``B`` converge to ``W``
    (Akrout et al. 2019, arXiv:1904.05391; see :class:`bender.functional.dense.KolenPollackLinear`).
    """

    @staticmethod
    def backward(ctx, grad: Tensor):
        need_x, need_w, need_feedback, need_b = ctx.needs_input_grad[:4]
        grad_x, grad_w, grad_b = _grads(ctx, grad, need_x, need_w or need_feedback, need_b)
        grad_feedback = grad_w if need_feedback else None
        return grad_x, grad_w if need_w else None, grad_feedback, grad_b, None, None, None, None


_bent_conv_apply = direct_apply(BentConv)
_kolen_pollack_apply = direct_apply(KolenPollackConv)


def bent_conv(
    x: Tensor,
    weight: Tensor,
    feedback: Tensor | None,
    bias: Tensor | None = None,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    *,
    feedback_learns: bool = False,
) -> Tensor:
    """Checked entry point of :class:`BentConv`; ``x`` is batched: ``N × C × spatial…``.

    With ``feedback_learns=True`` it is :class:`KolenPollackConv` (``∂B = ∂W``) wherever ``B``
    requires a gradient, also for an input that needs none.
    """
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
    grad_mode = torch.is_grad_enabled()
    if feedback_learns and feedback.requires_grad and grad_mode:
        apply = _kolen_pollack_apply
    elif feedback is weight or not (x.requires_grad and grad_mode):
        # the exact rule, or no ∂x to compute (so the feedback kernel changes nothing)
        return _CONV[dims](x, weight, bias, stride, padding, dilation, groups)
    else:
        apply = _bent_conv_apply
    stride, dilation = _per_dim(stride, dims), _per_dim(dilation, dims)
    if isinstance(padding, str):
        x, padding = _pad_by_name(x, padding, weight, stride, dilation)
    padding = _per_dim(padding, dims)
    return apply(x, weight, feedback, bias, stride, padding, dilation, groups)


def _pad_by_name(
    x: Tensor, padding: str, weight: Tensor, stride: list[int], dilation: list[int]
) -> tuple[Tensor, list[int]]:
    """``x`` and the convolution's symmetric padding for ``"valid"`` or ``"same"``.

    Where ``"same"`` needs one more row after than before (an even kernel), ``x`` is padded
    with that row here, so ``∂x`` flows back through the pad, and the convolution pads the rest.
    """
    widths = named_padding(padding, weight.shape[2:], stride, dilation)
    extra = [(0, after - before) for before, after in widths]
    if any(after for _, after in extra):
        x = pad_input(x, extra)
    return x, [before for before, _ in widths]


def conv_asym_dx(
    x: Tensor,
    weight: Tensor,
    feedback: Tensor,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
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
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
) -> Tensor:
    """Convolution whose input gets no gradient; ``∂W`` exact (direct feedback alignment)."""
    return bent_conv(x, weight, None, None, stride, padding, dilation, groups)


def conv_kp_dx(
    x: Tensor,
    weight: Tensor,
    feedback: Tensor,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
) -> Tensor:
    """Convolution with Kolen–Pollack learning: ``∂x = conv_transpose(δ, B)``, ``∂B = ∂W``
    (exact). With weight decay, ``B`` converges to ``W`` (Akrout et al. 2019)."""
    if feedback is None:
        raise ValueError("conv_kp_dx needs a feedback kernel B of the kernel's shape, got None")
    settings = stride, padding, dilation, groups
    return bent_conv(x, weight, feedback, None, *settings, feedback_learns=True)
