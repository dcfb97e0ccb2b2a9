"""Dense similarity primitives: ``x Wᵀ`` with an exact, asymmetric (fixed or learned feedback)
or blocked input gradient.

Notation (PyTorch layout): input ``x`` is ``N×in``, weight ``W`` is ``out×in``, the incoming
gradient ``δ = ∂L/∂(x Wᵀ)`` is ``N×out``. Leading dims beyond the batch are allowed: ``x`` may be
``(*, in)``, as for :func:`torch.nn.functional.linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bender.functional import native
from bender.functional._apply import _is_compiling, _transforms_active, direct_apply
from bender.functional._checks import check_features, check_same_shape
from bender.functional._precision import in_grad_dtype


class BentLinear(torch.autograd.Function):
    """``y = x Wᵀ + b`` whose input gradient uses ``feedback`` in place of ``W``.

    Backward: ``∂x = δ · feedback``, ``∂W = δᵀ x``, ``∂b = Σ_n δ_n``; ``feedback`` itself never
    receives a gradient. ``feedback = W`` is ordinary backprop, a fixed random ``B`` is feedback
    alignment (Lillicrap et al. 2016). (Blocking ``∂x`` needs no custom backward: see
    :func:`bent_linear`.)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, feedback: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: Tensor) -> None:
        x, _, feedback, _ = inputs
        ctx.save_for_backward(x, feedback)

    @staticmethod
    def eager_forward(ctx, x: Tensor, weight: Tensor, feedback: Tensor, bias: Tensor | None):
        """``forward`` and ``setup_context`` in one, for eager calls (see ``ctx_form``)."""
        ctx.save_for_backward(x, feedback)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        # Kept lean: this Python backward runs once per layer and step, and its overhead is
        # what feedback alignment costs over backprop when layers are small.
        x, feedback = ctx.saved_tensors
        need_x, need_w, _, need_b = ctx.needs_input_grad
        if grad.dim() == 2 and grad.dtype == x.dtype == feedback.dtype:
            return (
                grad.mm(feedback) if need_x else None,
                grad.t().mm(x) if need_w else None,
                None,
                grad.sum(0) if need_b else None,
            )
        grad_x, grad_w, grad_b = _grads(grad, x, feedback, need_x, need_w, need_b)
        return grad_x, grad_w, None, grad_b


def _grads(grad: Tensor, x: Tensor, feedback: Tensor, need_x: bool, need_w: bool, need_b: bool):
    """``(δ · feedback, δᵀ x, Σ_n δ_n)``, each only where needed (else ``None``), for any
    input shape ``(*, in)`` and any dtypes (a forward under autocast)."""
    x, feedback = in_grad_dtype(grad, x, feedback)
    grad_x = grad.matmul(feedback) if need_x else None
    if grad.dim() != 2:  # (*, out): ∂x keeps the leading dims, ∂W and ∂b sum over them
        grad, x = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])
    grad_w = grad.t().mm(x) if need_w else None
    grad_b = grad.sum(0) if need_b else None
    return grad_x, grad_w, grad_b


class KolenPollackLinear(BentLinear):
    """``y = x Wᵀ + b`` with feedback alignment whose feedback matrix learns as ``W`` does.

    Backward: ``∂x = δ B``, ``∂W = δᵀ x``, ``∂B = δᵀ x`` (the same as ``∂W``), ``∂b = Σ_n δ_n``.
    Given the same gradient, an optimizer moves ``W`` and ``B`` alike, and weight decay shrinks
    their difference: with plain SGD, ``W − B ← (1 − ηλ)(W − B)`` at every step, so ``B`` comes to
    equal ``W`` and ``∂x`` becomes backprop's (Kolen & Pollack 1994; Akrout et al., "Deep
    learning without weight transport", NeurIPS 2019, arXiv:1904.05391).
    """

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, feedback = ctx.saved_tensors
        need_x, need_w, need_feedback, need_b = ctx.needs_input_grad
        grad_x, grad_w, grad_b = _grads(grad, x, feedback, need_x, need_w or need_feedback, need_b)
        return grad_x, grad_w if need_w else None, grad_w if need_feedback else None, grad_b


_bent_linear_apply = direct_apply(BentLinear)
_kolen_pollack_apply = direct_apply(KolenPollackLinear)


def bent_linear(
    x: Tensor,
    weight: Tensor,
    feedback: Tensor | None,
    bias: Tensor | None = None,
    *,
    feedback_learns: bool = False,
) -> Tensor:
    """Checked entry point of :class:`BentLinear` (shapes verified before any compute).

    With ``feedback=None`` the input is detached instead: the same rule (no ``∂x``, exact
    ``∂W``, ``∂b``), computed by autograd's native kernels without a Python backward. With
    ``feedback`` the weight itself (exact backprop), or when no ``∂x`` will be computed at all
    (``x`` needs no grad, e.g. a first layer, or grad mode is off), the rule is the exact one,
    so the plain ``F.linear`` is used as well. With ``feedback_learns=True`` it is
    :class:`KolenPollackLinear` (``∂B = ∂W``) wherever ``B`` requires a gradient, also for an
    input that needs none. With :func:`bender.functional.native.enable`, a fixed ``B``, a 2-D
    input and one dtype, an eager call runs the same Function compiled in C++.
    """
    fast = native.native_linear()
    if fast is not None and not (feedback_learns or _is_compiling() or _transforms_active()):
        y = fast(x, weight, feedback, bias)  # checks in C++: this runs every layer and step
        if y is not None:
            return y
    if x.shape[-1:] != weight.shape[1:]:  # compared inline: this runs every layer and step
        check_features(x, weight)
    if feedback is None:
        return F.linear(x.detach(), weight, bias)
    if feedback is not weight and feedback.shape != weight.shape:
        check_same_shape("feedback matrix B", feedback, "the weight W", weight)
    grad_mode = torch.is_grad_enabled()
    if feedback_learns and feedback.requires_grad and grad_mode:
        return _kolen_pollack_apply(x, weight, feedback, bias)
    if feedback is weight or not (x.requires_grad and grad_mode):
        return F.linear(x, weight, bias)
    return _bent_linear_apply(x, weight, feedback, bias)


def matmul(x: Tensor, weight: Tensor) -> Tensor:
    """``x Wᵀ`` with the exact gradient: ``∂x = δ W``, ``∂W = δᵀ x``."""
    return bent_linear(x, weight, weight)


def matmul_asym_dx(x: Tensor, weight: Tensor, feedback: Tensor) -> Tensor:
    """``x Wᵀ`` with feedback alignment: ``∂x = δ B`` (``B`` fixed, shape of ``W``), ``∂W = δᵀ x``.

    Differs from backprop only in ``∂x``, which uses the fixed random matrix ``B`` instead of
    ``W`` (Lillicrap et al., "Random synaptic feedback weights support error backpropagation
    for deep learning", Nat. Commun. 2016, arXiv:1411.0247). ``B`` gets no gradient.
    """
    if feedback is None:
        raise ValueError("matmul_asym_dx needs a feedback matrix B of the weight's shape, got None")
    return bent_linear(x, weight, feedback)


def matmul_blocked_dx(x: Tensor, weight: Tensor) -> Tensor:
    """``x Wᵀ`` whose input gets no gradient: ``∂x = 0`` (not propagated), ``∂W = δᵀ x``.

    The layer still learns from the error that reaches its output; nothing flows past it.
    Used by direct feedback alignment (Nøkland 2016, arXiv:1609.01596).
    """
    return bent_linear(x, weight, None)


def matmul_kp_dx(x: Tensor, weight: Tensor, feedback: Tensor) -> Tensor:
    """``x Wᵀ`` with Kolen–Pollack learning: ``∂x = δ B``, and ``∂W = ∂B = δᵀ x``.

    Feedback alignment whose ``B`` (shape of ``W``) receives ``W``'s gradient, so an optimizer
    with weight decay makes it converge to ``W`` (see :class:`KolenPollackLinear`). ``B`` gets
    its gradient whenever it requires one, also where ``x`` needs none (a first layer), so
    every layer's ``B`` follows its ``W``. With a ``B`` that requires no gradient this is
    :func:`matmul_asym_dx`.
    """
    if feedback is None:
        raise ValueError("matmul_kp_dx needs a feedback matrix B of the weight's shape, got None")
    return bent_linear(x, weight, feedback, feedback_learns=True)
