"""Quantizers: a low-bit forward and a pseudo-gradient for the backward pass.

Each states its forward ``q(x)``, its pseudo-gradient ``∂q/∂x`` (what the backward multiplies
the incoming gradient ``g`` by, in place of the derivative of ``q``, which is zero almost
everywhere) and its reference, as Larq's quantizers do. The sign quantizers map ``0`` to ``+1``
(as Larq's), so that their output is always ``±1``; :func:`bender.functional.sign_ste` keeps
Bender.jl's ``sign(0) = 0``.

All are one :class:`Quantize` autograd Function given two plain functions: the forward and the
pseudo-gradient, each of ``x``. For the elementwise ones (``ste_sign``, ``approx_sign``,
``swish_sign``, ``ste_heaviside``, DoReFa's activations) ``*_parts`` gives the pair, which a
layer can fuse into its own product (:mod:`bender.functional.quantized_linear`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from bender.functional._apply import _transforms_active, direct_apply

Elementwise = Callable[[Tensor], Tensor]


class Quantize(torch.autograd.Function):
    """Forward ``quantize(x)``; backward ``g · pseudo_gradient(x)``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, quantize: Elementwise, pseudo_gradient: Elementwise) -> Tensor:
        return quantize(x)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: Tensor) -> None:
        x, _, pseudo_gradient = inputs
        ctx.save_for_backward(x)
        ctx.pseudo_gradient = pseudo_gradient

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        return grad * ctx.pseudo_gradient(x).to(grad.dtype), None, None


_quantize = direct_apply(Quantize)


def _above(v: Tensor, bound: float) -> Tensor:
    """``1{v > bound}`` in ``v``'s dtype, overwriting ``v`` (a temporary).

    An in-place comparison on a float tensor gives 0.0/1.0 in its own dtype: on the CPU it ran
    6-12× faster than a comparison to a bool tensor followed by a cast or a ``torch.where``
    (128×784 floats). torch.func's ``vmap`` has no batching rule for the in-place form, so
    under a transform the out-of-place one is used.
    """
    if _transforms_active():
        return (v > bound).to(v.dtype)
    return v.gt_(bound)


def _at_most(v: Tensor, bound: float) -> Tensor:
    """``1{v ≤ bound}`` in ``v``'s dtype, overwriting ``v`` (a temporary); see :func:`_above`."""
    if _transforms_active():
        return (v <= bound).to(v.dtype)
    return v.le_(bound)


def _sign(x: Tensor) -> Tensor:
    """``+1`` where ``x ≥ 0``, else ``−1``, in ``x``'s dtype: ``sign(sign(x) + ½)``."""
    return torch.sign(x).add_(0.5).sign_()


def _inside(bound: float | None) -> Elementwise:
    """The clipped straight-through pseudo-gradient ``1{|x| ≤ bound}`` (``None``: 1)."""
    if bound is None:
        return torch.ones_like
    return lambda x: _at_most(x.abs(), bound)


def check_clip(clip_value: float | None) -> None:
    """Raise ``ValueError`` unless ``clip_value`` is a positive number or ``None``."""
    if clip_value is not None and (
        isinstance(clip_value, bool)
        or not isinstance(clip_value, (int, float))
        or not clip_value > 0
    ):
        raise ValueError(f"clip_value must be a positive number or None, got {clip_value!r}")


def check_beta(beta: object) -> None:
    """Raise ``ValueError`` unless ``beta`` is a positive number."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        raise ValueError(f"beta must be a positive number, got {beta!r}")


def check_threshold(threshold_value: object) -> None:
    """Raise ``ValueError`` unless ``threshold_value`` is a number ≥ 0."""
    if isinstance(threshold_value, bool) or not (
        isinstance(threshold_value, (int, float)) and threshold_value >= 0
    ):
        raise ValueError(f"threshold_value must be a number ≥ 0, got {threshold_value!r}")


def check_mode(mode: object) -> None:
    """Raise ``ValueError`` unless ``mode`` is DoReFa's ``"activations"`` or ``"weights"``."""
    if mode not in ("activations", "weights"):
        raise ValueError(f"mode must be 'activations' or 'weights', got {mode!r}")


Parts = tuple[Elementwise, Elementwise]  # an elementwise quantizer: forward, pseudo-gradient


def ste_sign_parts(clip_value: float | None = 1.0) -> Parts:
    """:func:`ste_sign`'s forward and pseudo-gradient."""
    check_clip(clip_value)
    return _sign, _inside(clip_value)


def approx_sign_parts() -> Parts:
    """:func:`approx_sign`'s forward and pseudo-gradient."""
    return _sign, _approx_sign_gradient


def swish_sign_parts(beta: float = 5.0) -> Parts:
    """:func:`swish_sign`'s forward and pseudo-gradient."""
    check_beta(beta)

    def pseudo_gradient(v: Tensor) -> Tensor:
        bx = beta * v
        return beta * (2 - bx * torch.tanh(bx / 2)) / (1 + torch.cosh(bx))

    return _sign, pseudo_gradient


def ste_heaviside_parts(clip_value: float | None = 1.0) -> Parts:
    """:func:`ste_heaviside`'s forward and pseudo-gradient."""
    check_clip(clip_value)
    return _heaviside, _inside(clip_value)


def dorefa_activation_parts(k_bit: int = 2) -> Parts:
    """:func:`dorefa`'s forward and pseudo-gradient for activations."""
    n = 2 ** check_bits(k_bit) - 1
    return (lambda v: torch.round(v.clamp(0, 1) * n) / n), _in_unit_interval


def ste_sign(x: Tensor, clip_value: float | None = 1.0) -> Tensor:
    """Sign with the clipped straight-through estimator.

    Forward: ``q(x) = +1`` for ``x ≥ 0``, ``−1`` for ``x < 0``. Pseudo-gradient:
    ``∂q/∂x = 1`` where ``|x| ≤ clip_value``, else ``0`` (``clip_value=None``: ``1`` everywhere,
    the unclipped estimator of :func:`~bender.functional.sign_ste`). Reference: Hubara,
    Courbariaux, Soudry, El-Yaniv, Bengio, "Binarized Neural Networks", arXiv:1602.02830.
    """
    return _quantize(x, *ste_sign_parts(clip_value))


def _approx_sign_gradient(x: Tensor) -> Tensor:
    return (2 - 2 * x.abs()).clamp_min(0)


def approx_sign(x: Tensor) -> Tensor:
    """Sign whose pseudo-gradient is the derivative of a piecewise quadratic.

    Forward: ``q(x) = +1`` for ``x ≥ 0``, ``−1`` for ``x < 0``. Pseudo-gradient:
    ``∂q/∂x = 2 − 2|x|`` where ``|x| ≤ 1``, else ``0``. Reference: Liu, Wu, Luo, Yang, Liu,
    Cheng, "Bi-Real Net", ECCV 2018, arXiv:1808.00278.
    """
    return _quantize(x, *approx_sign_parts())


def swish_sign(x: Tensor, beta: float = 5.0) -> Tensor:
    """Sign whose pseudo-gradient is the derivative of the SignSwish function.

    Forward: ``q(x) = +1`` for ``x ≥ 0``, ``−1`` for ``x < 0``. Pseudo-gradient:
    ``∂q/∂x = β (2 − βx · tanh(βx/2)) / (1 + cosh(βx))``, which approaches the derivative of the
    sign as ``β`` grows. Reference: Darabi, Belbahri, Courbariaux, Nia, "BNN+: Improved binary
    network training", arXiv:1812.11800.
    """
    return _quantize(x, *swish_sign_parts(beta))


def channel_mean_abs(x: Tensor) -> Tensor:
    """``mean |x|`` over every dim but the first (one value per output channel of a kernel
    ``out × in × …``), shaped to broadcast against ``x``; a 1-D ``x`` gives one value."""
    if x.dim() < 2:
        return x.abs().mean()
    return x.abs().mean(dim=tuple(range(1, x.dim())), keepdim=True)


def magnitude_aware_sign(x: Tensor, clip_value: float | None = 1.0) -> Tensor:
    """Sign scaled by the mean magnitude of each output channel, for kernels.

    Forward: ``q(x) = α · sign(x)`` with ``α_j = mean |x_j|`` over output channel ``j`` (every
    dim but the first; a constant for the backward). Pseudo-gradient: ``∂q/∂x = α`` where
    ``|x| ≤ clip_value``, else ``0``. Reference: Liu et al., "Bi-Real Net", arXiv:1808.00278;
    the per-channel scale as in XNOR-Net (Rastegari et al. 2016, arXiv:1603.05279).
    """
    check_clip(clip_value)
    scale = channel_mean_abs(x.detach())
    inside = _inside(clip_value)
    return _quantize(x, lambda v: scale * _sign(v), lambda v: scale * inside(v))


def ternary_threshold(x: Tensor, threshold_value: float, ternary_weight_networks: bool):
    """``Δ``: ``threshold_value``, or ``0.7 · mean |x|`` (TWN) with ``ternary_weight_networks``."""
    if ternary_weight_networks:
        return 0.7 * x.detach().abs().mean()
    return threshold_value


def ste_tern(
    x: Tensor,
    threshold_value: float = 0.05,
    ternary_weight_networks: bool = False,
    clip_value: float | None = 1.0,
    scale: bool = False,
) -> Tensor:
    """Ternarization with the clipped straight-through estimator.

    Forward: ``q(x) = +1`` for ``x > Δ``, ``0`` for ``|x| ≤ Δ``, ``−1`` for ``x < −Δ``, with
    ``Δ = threshold_value``, or ``Δ = 0.7 · mean |x|`` over the whole tensor with
    ``ternary_weight_networks=True``. With ``scale=True`` the ``±1`` are scaled per output
    channel by ``α_j = mean of |x_j| over the entries with |x| > Δ`` (TWN's scale; a constant
    for the backward). Pseudo-gradient: ``∂q/∂x = 1`` (``α`` with ``scale``) where
    ``|x| ≤ clip_value``, else ``0``. Reference: Li, Zhang, Liu, "Ternary weight networks",
    arXiv:1605.04711.
    """
    check_clip(clip_value)
    check_threshold(threshold_value)
    delta = ternary_threshold(x, threshold_value, ternary_weight_networks)
    inside = _inside(clip_value)

    def ternarize(v: Tensor) -> Tensor:
        return torch.sign(v).mul_(_above(v.abs(), delta))

    if not scale:
        return _quantize(x, ternarize, inside)
    above = _above(x.detach().abs(), delta)
    kept = x.detach().abs() * above
    dims = tuple(range(1, x.dim())) if x.dim() >= 2 else tuple(range(x.dim()))
    counts = above.sum(dim=dims, keepdim=x.dim() >= 2).clamp_min(1)
    alpha = kept.sum(dim=dims, keepdim=x.dim() >= 2) / counts
    return _quantize(x, lambda v: alpha * ternarize(v), lambda v: alpha * inside(v))


def _heaviside(x: Tensor) -> Tensor:
    return _above(x.clone(), 0)


def ste_heaviside(x: Tensor, clip_value: float | None = 1.0) -> Tensor:
    """Binarization to ``{0, 1}`` with the clipped straight-through estimator.

    Forward: ``q(x) = 1`` for ``x > 0``, else ``0``. Pseudo-gradient: ``∂q/∂x = 1`` where
    ``|x| ≤ clip_value``, else ``0``. (Larq's ``ste_heaviside``.)
    """
    return _quantize(x, *ste_heaviside_parts(clip_value))


def check_bits(k_bit: object) -> int:
    """``k_bit`` if it is an int from 1 to 8; else a ``ValueError`` naming what was given."""
    if isinstance(k_bit, bool) or not isinstance(k_bit, int) or not 1 <= k_bit <= 8:
        raise ValueError(f"k_bit must be an int from 1 to 8, got {k_bit!r}")
    return k_bit


def _in_unit_interval(x: Tensor) -> Tensor:
    return _at_most((x - 0.5).abs_(), 0.5)  # 1{0 ≤ x ≤ 1}


def dorefa(x: Tensor, k_bit: int = 2, mode: str = "activations") -> Tensor:
    """DoReFa's ``k``-bit quantization, with ``n = 2ᵏ − 1`` levels above zero.

    ``mode="activations"``: forward ``q(x) = round(n · clip(x, 0, 1)) / n``; pseudo-gradient
    ``1`` where ``0 ≤ x ≤ 1``, else ``0``. ``mode="weights"``: forward
    ``q(w) = 2 · round(n · w′) / n − 1`` with ``w′ = tanh(w) / (2 max|tanh(w)|) + 1/2``, the
    rounding passed straight through, so the gradient is that of ``2w′ − 1`` (the maximum
    included). Reference: Zhou, Wu, Ni, Zhou, Wen, Zou, "DoReFa-Net", arXiv:1606.06160.
    """
    check_mode(mode)
    if mode == "activations":
        return _quantize(x, *dorefa_activation_parts(k_bit))
    n = 2 ** check_bits(k_bit) - 1
    t = torch.tanh(x)
    unit = t / (2 * t.abs().max()) + 0.5
    return 2 * _quantize(unit, lambda v: torch.round(v * n) / n, torch.ones_like) - 1
