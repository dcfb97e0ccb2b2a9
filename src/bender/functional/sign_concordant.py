"""Sign-concordant feedback: a feedback matrix that shares the weight's signs, not its magnitudes.

Liao, Leibo and Poggio, "How Important Is Weight Symmetry in Backpropagation?", AAAI 2016,
arXiv:1510.05067, train with ``∂x = δ B`` (as feedback alignment does) where ``B`` agrees with
``W`` in sign everywhere:

- uSF (uniform):               ``B = sign(W)``;
- frSF (fixed random magnitude): ``B = |M| ⊙ sign(W)``, ``M`` drawn once;
- brSF (batchwise random magnitude): ``B = |M| ⊙ sign(W)``, ``M`` drawn anew for every batch.

``B`` follows ``W`` as it learns (its signs are read at every forward pass), so, unlike feedback
alignment, these rules transport the sign of each weight. The paper leaves the distribution of
the magnitudes free (its finding is that they do not matter); bender draws them as the feedback
matrices of feedback alignment are drawn, Glorot-uniform, so ``|M| ~ U(0, a)`` with
``a = √(6 / (fan_in + fan_out))``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bender.functional._uniform import uniform


def glorot_bound(weight: Tensor) -> float:
    """``a = √(6 / (fan_in + fan_out))``, the bound of ``nn.init.xavier_uniform_`` for ``weight``.

    For a dense ``out×in`` weight ``fan_in = in``, ``fan_out = out``; for a kernel
    ``out × in/groups × k…`` both are multiplied by the kernel's size ``∏ k``.
    """
    if weight.dim() < 2:
        raise ValueError(f"a weight has at least 2 dims (out, in, ...), got {tuple(weight.shape)}")
    receptive = math.prod(weight.shape[2:])
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    return math.sqrt(6.0 / (fan_in + fan_out))


def random_magnitudes(weight: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``|M|`` for ``M`` Glorot-uniform of ``weight``'s shape: entries ``U(0, a)``, ``a`` as in
    :func:`glorot_bound`; on ``weight``'s device, in its dtype, drawn from ``generator`` (``None``:
    the global generator; a generator on another device draws there)."""
    u = uniform(weight.shape, generator, weight.dtype, weight.device)
    return u * glorot_bound(weight)


def sign_concordant(weight: Tensor, magnitudes: Tensor | None = None) -> Tensor:
    """``B = sign(W)`` (uSF), or ``B = |M| ⊙ sign(W)`` given ``magnitudes = M`` (frSF, brSF).

    Detached: ``B`` only carries the error back and never receives a gradient. A zero weight
    gets a zero feedback entry (``sign(0) = 0``).
    """
    signs = torch.sign(weight.detach())
    if magnitudes is None:
        return signs
    if magnitudes.shape != weight.shape:
        raise ValueError(
            f"magnitudes M must have the weight's shape {tuple(weight.shape)}, got "
            f"{tuple(magnitudes.shape)}"
        )
    return magnitudes.detach().abs() * signs
