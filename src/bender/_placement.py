"""Where a model's inputs must be: the device and floating-point dtype of its parameters."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def parameter_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of ``model``'s floating-point parameters when they share one, else ``None``."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


def parameter_device(model: nn.Module) -> torch.device | None:
    """The device of ``model``'s parameters when they share one, else ``None``."""
    devices = {p.device for p in model.parameters()}
    return devices.pop() if len(devices) == 1 else None


def inputs_for(model: nn.Module, x: Tensor) -> Tensor:
    """``x`` on ``model``'s device and, if floating-point, in its parameters' dtype (each only
    where the parameters share one; a tensor already there is returned as it is)."""
    dtype = parameter_dtype(model) if x.is_floating_point() else None
    return x.to(device=parameter_device(model), dtype=dtype)
