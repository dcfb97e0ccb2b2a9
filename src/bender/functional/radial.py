"""Radial similarity: ``D[n, j] = −‖x_n − W_j‖² = 2 x_n·W_j − ‖W_j‖² − ‖x_n‖²``.

With ``δ = ∂L/∂D`` (``N×out``), ``r_n = Σ_j δ[n, j]`` and ``c_j = Σ_n δ[n, j]`` the exact
gradients are ``∂x = 2 δ W − 2 r ⊙ x`` and ``∂W = 2 δᵀ x − 2 c ⊙ W``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bender.functional._apply import direct_apply
from bender.functional._checks import check_features, check_same_shape
from bender.functional._precision import in_grad_dtype


def _radial(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``2 x Wᵀ − ‖W_j‖² − ‖x_n‖² (+ b)`` in native ops (autograd differentiates it exactly)."""
    sim = torch.addmm(weight.pow(2).sum(1).neg(), x, weight.T, alpha=2.0)
    sim = sim - x.pow(2).sum(1, keepdim=True)
    return sim if bias is None else sim + bias


class BentRadial(torch.autograd.Function):
    """Radial similarity (+ optional bias) whose backward uses ``feedback`` in place of ``W``.

    Backward: ``∂x = 2 δ F − 2 r ⊙ x`` and ``∂W = 2 δᵀ x − 2 c ⊙ F`` with ``F = feedback``;
    ``F = W`` is exact. The ``−‖x‖²`` term's gradient is always exact.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, feedback: Tensor, bias: Tensor | None) -> Tensor:
        return _radial(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: Tensor) -> None:
        x, _, feedback, bias = inputs
        ctx.save_for_backward(x, feedback)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, feedback = ctx.saved_tensors
        x, feedback = in_grad_dtype(grad, x, feedback)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = 2.0 * (grad @ feedback - grad.sum(1, keepdim=True) * x)
        if ctx.needs_input_grad[1]:
            grad_w = 2.0 * (grad.T @ x - grad.sum(0).unsqueeze(1) * feedback)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, None, grad_b


_bent_radial_apply = direct_apply(BentRadial)


def bent_radial(x: Tensor, weight: Tensor, feedback: Tensor, bias: Tensor | None = None) -> Tensor:
    """Checked entry point of :class:`BentRadial`; ``x`` is ``N×in``.

    With ``feedback`` the weight itself (the exact rule), or in no-grad mode, the similarity is
    computed by native ops that autograd differentiates itself.
    """
    if x.dim() != 2:
        raise ValueError(f"radial similarity expects a 2-d input (N, in), got {tuple(x.shape)}")
    check_features(x, weight)
    if feedback is not weight:
        check_same_shape("feedback matrix B", feedback, "the weight W", weight)
    if feedback is weight or not torch.is_grad_enabled():
        return _radial(x, weight, bias)
    return _bent_radial_apply(x, weight, feedback, bias)


def radial_sim(x: Tensor, weight: Tensor) -> Tensor:
    """``−‖x_n − W_j‖²`` for every row ``x_n`` and unit ``W_j``, with the exact gradient."""
    return bent_radial(x, weight, weight)


def radial_sim_asym(x: Tensor, weight: Tensor, feedback: Tensor) -> Tensor:
    """``−‖x_n − W_j‖²`` with feedback alignment: ``B`` replaces ``W`` in the backward pass.

    ``∂x = 2 δ B − 2 r ⊙ x`` (the ``2 x·W`` term sends its error through ``B``, as in
    :func:`~bender.functional.matmul_asym_dx`; the ``−‖x‖²`` term is exact) and
    ``∂W = 2 δᵀ x − 2 c ⊙ B`` (the ``−‖W_j‖²`` term uses ``B_j`` in place of ``W_j``).
    """
    if feedback is None:
        raise ValueError(
            "radial_sim_asym needs a feedback matrix B of the weight's shape, got None"
        )
    return bent_radial(x, weight, feedback)
