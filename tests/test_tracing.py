import pytest
import torch
from torch import nn

from bender import GenDense, activations


def test_activations_returns_every_layer_output():
    model = nn.Sequential(GenDense(4, 3, nn.ReLU()), GenDense(3, 2), nn.Softmax(-1))
    x = torch.randn(5, 4)
    outs = activations(model, x)
    assert len(outs) == 3
    h1 = torch.relu(x @ model[0].weight.T + model[0].bias)
    torch.testing.assert_close(outs[0], h1)
    torch.testing.assert_close(outs[1], h1 @ model[1].weight.T + model[1].bias)
    torch.testing.assert_close(outs[2], model(x))
    outs[-1][:, 0].sum().backward()
    assert model[0].weight.grad is not None


def test_activations_needs_sequential():
    with pytest.raises(TypeError, match=r"needs an nn\.Sequential, got GenDense"):
        activations(GenDense(2, 2), torch.randn(1, 2))
