"""Run a block with a model in eval mode, and put its train/eval mode back afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block ``model`` is in eval mode; afterwards, also after an error, its mode is
    what it was before."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
