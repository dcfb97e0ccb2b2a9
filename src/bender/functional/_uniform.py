"""Uniform draws from a generator that may live on another device than the tensor they serve."""

from __future__ import annotations

import torch
from torch import Tensor


def uniform(
    shape: torch.Size | tuple[int, ...],
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """``U(0, 1)`` samples of ``shape`` on ``device`` in ``dtype``, drawn from ``generator``
    (``None``: ``device``'s global generator).

    A generator draws on its own device and the numbers are copied to ``device``: a layer keeps
    its CPU generator (``GenDense(..., generator=torch.Generator())``) when ``train`` moves it to
    a GPU, and draws the same numbers there as on the CPU.
    """
    if generator is None or generator.device == torch.device(device):
        return torch.rand(shape, generator=generator, dtype=dtype, device=device)
    drawn = torch.rand(shape, generator=generator, dtype=dtype, device=generator.device)
    return drawn.to(device)
