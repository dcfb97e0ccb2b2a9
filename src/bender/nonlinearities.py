"""``nn.Module`` forms of the custom-backward activations, for ``nn.Sequential`` and layers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bender.functional.ste import hard_sigmoid, hardtanh_adaste, sign_ste, stoc_sign_ste


class SignSTE(nn.Module):
    """``sign(x)`` forward, identity backward. See :func:`bender.functional.sign_ste`."""

    def forward(self, x: Tensor) -> Tensor:
        return sign_ste(x)


class StocSignSTE(nn.Module):
    """``±1`` drawn with ``P(+1) = hardσ(x)``, identity backward; optional ``generator``."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        return stoc_sign_ste(x, self.generator)


class HardSigmoid(nn.Module):
    """``max(0, min(1, (x + 1) / 2))`` with its exact gradient."""

    def forward(self, x: Tensor) -> Tensor:
        return hard_sigmoid(x)


class HardtanhAdaSTE(nn.Module):
    """``hardtanh`` forward, AdaSTE backward. See :func:`bender.functional.hardtanh_adaste`."""

    def forward(self, x: Tensor) -> Tensor:
        return hardtanh_adaste(x)
