"""Activations with a custom backward: straight-through estimators and AdaSTE.

Each states its forward, its pseudo-gradient, and where that differs from the exact derivative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bender.functional import native
from bender.functional._apply import _is_compiling, _transforms_active, direct_apply
from bender.functional._uniform import uniform


def hard_sigmoid(x: Tensor) -> Tensor:
    """``hardσ(x) = max(0, min(1, (x + 1) / 2))``; exact gradient: ``1/2`` for ``−1 < x < 1``,
    else 0 (also at the kinks ``x = ±1``, as for ``hardtanh``).

    Computed as ``(hardtanh(x) + 1) / 2``, so the gradient follows ``x`` itself: a clamp after
    the division would see ``(x + 1) / 2`` rounded to exactly 1 for ``x`` one ulp below 1, and
    torch ≥ 2.14 gives a clamp no gradient at its bounds. Note the slope: this is Bender.jl's
    (and BinaryConnect's) hard sigmoid, not :func:`torch.nn.functional.hardsigmoid`, which
    uses ``(x + 3) / 6``.
    """
    return (F.hardtanh(x) + 1) * 0.5


class SignSTEFunction(torch.autograd.Function):
    """Forward ``sign(x)``; backward the identity ``∂x = g`` (straight-through)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.sign(x)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: Tensor) -> None:
        pass

    @staticmethod
    def eager_forward(ctx, x: Tensor) -> Tensor:
        """``forward`` for eager calls, with nothing to set up (see ``ctx_form``)."""
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


_sign_ste_apply = direct_apply(SignSTEFunction)


class StocSignSTEFunction(torch.autograd.Function):
    """Forward ``+1`` with probability ``hardσ(x)``, else ``−1``; backward the identity."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, generator: torch.Generator | None) -> Tensor:
        u = uniform(x.shape, generator, x.dtype, x.device)
        # 2·[u < hardσ(x)] − 1, not torch.where(..., 1.0, -1.0).to(x.dtype): under torch.compile,
        # torch 2.11 gives that form a zero gradient in float32, where the .to returns its input
        return (u < hard_sigmoid(x)).to(x.dtype) * 2 - 1

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


_stoc_sign_ste_apply = direct_apply(StocSignSTEFunction)


class HardtanhAdaSTEFunction(torch.autograd.Function):
    """Forward ``hardtanh(x)``; backward the adaptive straight-through rule (see below)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x.clamp(-1, 1)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: Tensor) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        one = torch.ones((), dtype=x.dtype, device=x.device)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        below, above = x <= -1, x >= 1
        scale = torch.where(below, torch.where(grad < 0, 2 / (1 - x), zero), one)
        scale = torch.where(above, torch.where(grad > 0, 2 / (1 + x), zero), scale)
        return grad * scale


_hardtanh_adaste_apply = direct_apply(HardtanhAdaSTEFunction)


def sign_ste(x: Tensor) -> Tensor:
    """``sign(x)`` with the straight-through estimator: ``∂x = g`` (the exact derivative is 0).

    ``sign(0) = 0`` as in Julia and :func:`torch.sign`. Reference: Bengio, Léonard, Courville,
    "Estimating or propagating gradients through stochastic neurons", arXiv:1308.3432.
    """
    fast = native.native_sign_ste()  # the C++ Function, where enabled (bender.functional.native)
    if fast is not None and not (_is_compiling() or _transforms_active()):
        return fast(x)
    return _sign_ste_apply(x)


def stoc_sign_ste(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Stochastic sign: ``+1`` with probability ``hardσ(x)``, else ``−1``; ``∂x = g``.

    Pass a :class:`torch.Generator` (on ``x``'s device) for reproducible draws. Reference:
    Courbariaux, Bengio, David, "BinaryConnect", arXiv:1511.00363.
    """
    return _stoc_sign_ste_apply(x, generator)


def hardtanh_adaste(x: Tensor) -> Tensor:
    """``hardtanh(x) = clamp(x, −1, 1)`` with the AdaSTE pseudo-gradient.

    With incoming gradient ``g`` the backward returns

    - ``0`` where ``x ≤ −1, g ≥ 0`` or ``x ≥ 1, g ≤ 0`` (the step would push further out);
    - ``g · 2/(1 − x)`` where ``x ≤ −1, g < 0`` and ``g · 2/(1 + x)`` where ``x ≥ 1, g > 0``
      (pulled back towards the interval with a shrinking weight);
    - ``g`` elsewhere (inside ``(−1, 1)``, as the exact derivative).

    Reference: Le, Høier, Lin, Zach, "AdaSTE: An adaptive straight-through estimator to train
    binary neural networks", CVPR 2022, arXiv:2112.02880. Bender.jl's ``hardtanh_AdaSTE`` means
    this rule but computes its "elsewhere" mask wrongly and adds ``g`` to every element; bender
    implements the rule as stated in the paper.
    """
    return _hardtanh_adaste_apply(x)
