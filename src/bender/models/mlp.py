"""Multi-layer perceptrons over flattened images."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import nn


def mlp(in_features: int, hidden: Sequence[int], num_classes: int) -> nn.Sequential:
    """``Flatten → [Linear → ReLU] per hidden size → Linear``: the Bender.jl tutorials' MLPs
    (784-128-64-10 and 784-512-256-10 on MNIST) as plain PyTorch layers."""
    sizes = [in_features, *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for n_in, n_out in itertools.pairwise(sizes):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], num_classes))
    return nn.Sequential(*layers)
