"""A leaner ``Function.apply`` for the custom backwards that run once per layer and step."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor

# What ``Function.apply`` itself asks; private, so a torch without it takes the usual path.
_transforms_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: True)
_is_compiling = torch.compiler.is_compiling


def direct_apply(function: type[torch.autograd.Function]) -> Callable[..., Tensor]:
    """``function.apply``, skipping the Python layer of ``Function.apply`` where it does nothing.

    ``torch.autograd.Function.apply`` is a Python method in front of the C ``apply``: it fills
    in default arguments for ``setup_context`` (bender's ``forward`` methods have none, which is
    checked here) and, outside torch.func transforms, unwraps tensors left over from finished
    ones. bender's Functions run for every bent layer on every step, and for the small layers
    of fa-mlp that Python layer costs about 2 % of a CPU epoch (``benchmarks/epoch_time.py``),
    so the returned callable calls the C ``apply`` directly, which runs ``forward`` and
    ``setup_context`` itself. Under a torch.func transform (``grad``, ``vmap``, ...), or while
    torch.compile traces, it calls ``function.apply``, which those need.
    """
    defaults = [
        name
        for name, parameter in inspect.signature(function.forward).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    ]
    if defaults:
        raise TypeError(
            f"{function.__name__}.forward has default arguments ({', '.join(defaults)}), which "
            "only Function.apply fills in; give every argument at the call instead"
        )
    c_apply = super(torch.autograd.Function, function).apply

    def apply(*args) -> Tensor:
        if _is_compiling() or _transforms_active():  # Dynamo 2.4 cannot trace the second
            return function.apply(*args)
        return c_apply(*args)

    return apply
