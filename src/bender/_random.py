"""Random state that a model's forward pass draws from, and running a block without using it up."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def layer_generators(model: nn.Module) -> dict[str, torch.Generator]:
    """The generators that layers keep for themselves (``GenDense(..., generator=g)``, for
    stochastic mappings), by module name; they are not part of the ``state_dict``."""
    return {
        name: module.generator
        for name, module in model.named_modules()
        if isinstance(getattr(module, "generator", None), torch.Generator)
    }


@contextmanager
def from_current_random_state(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Run a block from the current random state and put that state back afterwards (also
    after an error): the global CPU generator, ``device``'s for an accelerator, and every
    generator a layer of ``model`` keeps. Two such blocks in a row draw the same numbers."""
    generators = list(layer_generators(model).values())
    states = [g.get_state() for g in generators]
    devices = [] if device.type == "cpu" else [device]
    try:
        with torch.random.fork_rng(devices=devices, device_type=device.type):
            yield
    finally:
        for generator, state in zip(generators, states, strict=True):
            generator.set_state(state)
